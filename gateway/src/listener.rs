//! Listener: TCP + rustls TLS (ALPN h2 and http/1.1), HTTP/1.1 and HTTP/2
//! via hyper, graceful shutdown, and the metrics endpoint.
//!
//! Limits live here because they protect the process before a call has a
//! context: header read timeout and header size (slowloris, oversize
//! headers), HTTP/2 stream and reset limits (stream floods, rapid reset),
//! and a whole-call timeout.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use std::net::SocketAddr;

use crate::pipeline::{Gateway, RespBody};

/// Build a rustls server config from PEM files.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("listener.tls_cert {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("listener.tls_cert {}: not a PEM certificate chain", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("listener.tls_cert {}: no certificate in the file", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("listener.tls_key {}: no PEM private key", key.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("listener: certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serve `handler` until `shutdown` resolves, then drain in-flight calls
/// for up to `drain`. The gateway and the admin API share this.
pub async fn serve<H, F>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: H,
    header_timeout: Duration,
    drain: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()>
where
    H: Fn(http::Request<hyper::body::Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = http::Response<RespBody>> + Send + 'static,
{
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Slowloris: the whole header block must arrive in time.
        .header_read_timeout(header_timeout)
        // Oversize headers: hyper refuses a head larger than this.
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        // Stream floods and rapid reset: bound concurrent and reset streams.
        .max_concurrent_streams(128)
        .max_pending_accept_reset_streams(Some(32))
        .max_header_list_size(64 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let handler = handler.clone();
                let service = service_fn(move |req| {
                    let fut = handler(req, remote);
                    async move { Ok::<_, std::convert::Infallible>(fut.await) }
                });
                match &acceptor {
                    Some(acceptor) => {
                        // The TLS handshake gets the header timeout too.
                        let tls = match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => { tracing::debug!(%remote, error = %e, "TLS handshake failed"); continue; }
                            Err(_) => { tracing::debug!(%remote, "TLS handshake timed out"); continue; }
                        };
                        let conn = builder.serve_connection(TokioIo::new(tls), service).into_owned();
                        let fut = graceful.watch(conn);
                        tokio::spawn(async move { if let Err(e) = fut.await { tracing::debug!(error = %e, "connection ended with an error"); } });
                    }
                    None => {
                        let conn = builder.serve_connection(TokioIo::new(tcp), service).into_owned();
                        let fut = graceful.watch(conn);
                        tokio::spawn(async move { if let Err(e) = fut.await { tracing::debug!(error = %e, "connection ended with an error"); } });
                    }
                }
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: draining in-flight calls");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(drain) => tracing::warn!("drain timeout reached; closing remaining connections"),
    }
    Ok(())
}

/// Serve Prometheus metrics on plain HTTP at `/metrics`.
pub async fn serve_metrics(listener: TcpListener, gateway: Arc<Gateway>) -> Result<()> {
    loop {
        let (tcp, _) = listener.accept().await?;
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let gateway = gateway.clone();
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        http::Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(http_body_util::Full::new(bytes::Bytes::from(gateway.metrics.render())))
                    } else {
                        http::Response::builder().status(404).body(http_body_util::Full::new(bytes::Bytes::from_static(b"not found\n")))
                    };
                    Ok::<_, http::Error>(resp?)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}
