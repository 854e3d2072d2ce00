//! A minimal, fast AWS-shaped upstream for benchmarks: answers every request
//! with a fixed GetSecretValue-shaped JSON body of `--size` bytes (default
//! 4096), or a ListSecrets-shaped body of `--list-size` bytes (default
//! 200 KB) when the request body asks for `ListSecrets`. Prints
//! `listening <addr>` once bound.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

fn list_body(size: usize) -> Bytes {
    let mut items = Vec::new();
    let mut len = 40;
    let mut i = 0;
    while len < size {
        let item = format!(
            r#"{{"ARN":"arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/app-{i}-AbCdEf","Name":"prod/app-{i}","Description":"credentials of app {i}","LastChangedDate":1523477145.713,"Tags":[{{"Key":"team","Value":"payments"}}],"SecretVersionsToStages":{{"EXAMPLE1-90ab-cdef-fedc-ba987EXAMPLE":["AWSCURRENT"]}}}}"#
        );
        len += item.len() + 1;
        items.push(item);
        i += 1;
    }
    Bytes::from(format!(r#"{{"SecretList":[{}],"NextToken":null}}"#, items.join(",")))
}

fn body(size: usize) -> Bytes {
    let head = r#"{"ARN":"arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/search/db-AbCdEf","Name":"prod/search/db","VersionId":"EXAMPLE1-90ab-cdef-fedc-ba987EXAMPLE","VersionStages":["AWSCURRENT"],"CreatedDate":1523477145.713,"SecretString":""#;
    let tail = r#""}"#;
    let fill = size.saturating_sub(head.len() + tail.len());
    Bytes::from(format!("{head}{}{tail}", "x".repeat(fill)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: usize| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|s| s.parse().ok()).unwrap_or(default);
    let payload = body(arg("--size", 4096));
    let list = list_body(arg("--list-size", 200 << 10));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let (payload, list) = (payload.clone(), list.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (payload, list) = (payload.clone(), list.clone());
                async move {
                    let listing = req.headers().get("x-amz-target").is_some_and(|t| t.as_bytes().ends_with(b".ListSecrets"));
                    let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                    let payload = if listing { list } else { payload };
                    Ok::<_, Infallible>(
                        http::Response::builder()
                            .header("content-type", "application/x-amz-json-1.1")
                            .header("x-amzn-requestid", "bench")
                            .body(Full::new(payload))
                            .expect("static response"),
                    )
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}
