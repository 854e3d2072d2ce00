//! The floor of Veil's stack, for the bench's cost ladder (bench/gateway.py):
//! Veil's own listener (a current-thread tokio runtime per core, rustls,
//! hyper-util's HTTP/1.1 + HTTP/2 server, the same limits and allocator) in front of a
//! pooled hyper-util client, each body buffered whole as the gateway does.
//! Nothing else: no identity, policy, masking, audit or logging, so what
//! Veil adds over it is what Veil's own work costs.
//!
//! `bench_proxy <upstream host:port> [--tls <cert.pem> <key.pem>] [--threads <n>]`
//! binds a free port on 127.0.0.1 and prints `listening <addr>`; it serves on
//! `n` threads, one per CPU by default (as Veil's `listener.threads`).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use veil_gateway::listener::{self, Limits};
use veil_gateway::pipeline::RespBody;

/// Hop-by-hop headers, not forwarded either way.
const HOP_BY_HOP: &[&str] = &["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host", "content-length"];

fn full(b: Bytes) -> RespBody {
    Full::new(b).map_err(|never| match never {}).boxed()
}

fn copy_headers(from: &http::HeaderMap, to: &mut http::HeaderMap) {
    for (k, v) in from {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            to.append(k, v.clone());
        }
    }
}

async fn forward(client: &Client<HttpConnector, Full<Bytes>>, upstream: &str, req: http::Request<hyper::body::Incoming>) -> Result<http::Response<RespBody>, String> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut out = http::Request::builder().method(parts.method).uri(format!("http://{upstream}{pq}"));
    copy_headers(&parts.headers, out.headers_mut().ok_or("bad request head")?);
    let resp = client.request(out.body(Full::new(body)).map_err(|e| e.to_string())?).await.map_err(|e| e.to_string())?;
    let (rparts, rbody) = resp.into_parts();
    let rbody = rbody.collect().await.map_err(|e| e.to_string())?.to_bytes();
    let mut back = http::Response::builder().status(rparts.status).header(http::header::CONTENT_LENGTH, rbody.len());
    copy_headers(&rparts.headers, back.headers_mut().ok_or("bad response head")?);
    back.body(full(rbody)).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let upstream: &'static str = Box::leak(args.get(1).cloned().ok_or_else(|| anyhow::anyhow!("usage: bench_proxy <upstream host:port> [--tls cert key]"))?.into_boxed_str());
    let tls = match args.iter().position(|a| a == "--tls") {
        Some(i) => Some(listener::tls_config(args.get(i + 1).ok_or_else(|| anyhow::anyhow!("--tls cert key"))?.as_ref(), args.get(i + 2).ok_or_else(|| anyhow::anyhow!("--tls cert key"))?.as_ref())?),
        None => None,
    };
    // Veil's upstream client, minus TLS to the upstream (the bench's is
    // plain HTTP): a pool per thread, as Veil's (upstream.rs).
    thread_local! {
        static POOL: Client<HttpConnector, Full<Bytes>> = {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(connector)
        };
    }
    let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
    println!("listening {}", tcp.local_addr()?);
    let handler = move |req, _remote| {
        let client = POOL.with(Client::clone);
        async move {
            forward(&client, upstream, req).await.unwrap_or_else(|e| {
                let mut r = http::Response::new(full(Bytes::from(e)));
                *r.status_mut() = http::StatusCode::BAD_GATEWAY;
                r
            })
        }
    };
    let limits = Limits { header_timeout: Duration::from_secs(10), drain: Duration::ZERO, max_connections: 4096 };
    let threads = match args.iter().position(|a| a == "--threads") {
        Some(i) => args.get(i + 1).and_then(|n| n.parse().ok()).ok_or_else(|| anyhow::anyhow!("--threads <n>"))?,
        None => listener::default_threads(),
    };
    listener::serve_threads(tcp, threads, tls, handler, limits, std::future::pending()).await
}
