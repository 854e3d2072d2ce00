//! A minimal, fast AWS-shaped upstream for benchmarks: answers every request
//! with a fixed GetSecretValue-shaped JSON body of `--size` bytes (default
//! 4096). Prints `listening <addr>` once bound.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

fn body(size: usize) -> Bytes {
    let head = r#"{"ARN":"arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/search/db-AbCdEf","Name":"prod/search/db","VersionId":"EXAMPLE1-90ab-cdef-fedc-ba987EXAMPLE","VersionStages":["AWSCURRENT"],"CreatedDate":1523477145.713,"SecretString":""#;
    let tail = r#""}"#;
    let fill = size.saturating_sub(head.len() + tail.len());
    Bytes::from(format!("{head}{}{tail}", "x".repeat(fill)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let size = args.iter().position(|a| a == "--size").and_then(|i| args.get(i + 1)).and_then(|s| s.parse().ok()).unwrap_or(4096);
    let payload = body(size);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let payload = payload.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let payload = payload.clone();
                async move {
                    let _ = http_body_util::BodyExt::collect(req.into_body()).await;
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
