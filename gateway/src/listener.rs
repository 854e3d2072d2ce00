//! Listener: TCP + rustls TLS (ALPN h2 and http/1.1), HTTP/1.1 and HTTP/2
//! via hyper, graceful shutdown, and the metrics endpoint.
//!
//! Limits live here because they protect the process before a call has a
//! context: header read timeout and header size (slowloris, oversize
//! headers), HTTP/2 stream and reset limits (stream floods, rapid reset),
//! and a whole-call timeout. A handler that panics answers 500 and its
//! connection keeps serving.
//!
//! The gateway's own listener is served by [`serve_threads`]: one thread
//! per core, each with a current-thread tokio runtime accepting on the same
//! socket. A connection's calls then run start to end on the thread that
//! accepted it, with no hand-off between workers: the multi-thread
//! scheduler's wake-ups and work stealing cost the bare proxy a fifth of
//! its CPU per call (bench/results.md). The admin API, the metrics endpoint
//! and the background tasks stay on the multi-thread runtime.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::FutureExt;
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

/// What protects a listener before a call has a context.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time to finish the TLS handshake, and then to send a request head.
    pub header_timeout: Duration,
    /// Time in-flight calls get to finish at shutdown.
    pub drain: Duration,
    /// Open connections (including TLS handshakes in progress); at the
    /// limit, further connections wait in the kernel's accept queue.
    pub max_connections: usize,
}

impl Limits {
    /// The `[listener]` protections, shared by the gateway, admin and
    /// metrics listeners.
    pub fn of(cfg: &crate::config::Listener) -> Limits {
        Limits {
            header_timeout: Duration::from_secs(cfg.header_timeout_secs),
            drain: Duration::from_secs(cfg.shutdown_drain_secs),
            max_connections: cfg.max_connections,
        }
    }
}

/// What a listener serves: a request and the peer's address in, its
/// response out. Every `Fn` closure of that shape is one.
pub trait Handler: Clone + Send + Sync + 'static {
    /// The response, once ready.
    type Answer: std::future::Future<Output = http::Response<RespBody>> + Send + 'static;
    /// Answer one request from `remote`.
    fn answer(&self, req: http::Request<hyper::body::Incoming>, remote: SocketAddr) -> Self::Answer;
}

impl<H, F> Handler for H
where
    H: Fn(http::Request<hyper::body::Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = http::Response<RespBody>> + Send + 'static,
{
    type Answer = F;

    fn answer(&self, req: http::Request<hyper::body::Incoming>, remote: SocketAddr) -> F {
        self(req, remote)
    }
}

/// Serve `handler` until `shutdown` resolves, then drain in-flight calls
/// for up to `limits.drain`. The gateway, the admin API and the metrics
/// endpoint share this. Each connection, its TLS handshake included, runs in
/// its own task: a client that stalls its handshake holds one connection
/// slot for at most the header timeout and never the accept loop.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: impl Handler,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    serve_with(listener, tls, handler, limits, slots, shutdown).await
}

/// The serving threads when none are configured: one per CPU the process
/// may use (its affinity mask and cgroup CPU quota count).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// [`serve`] on `threads` threads, each running a current-thread runtime
/// that accepts on its own handle of `listener` (see the module docs); the
/// connection limit is shared. Returns once `shutdown` has resolved and
/// every thread has drained, or as soon as one thread fails.
pub async fn serve_threads(
    listener: std::net::TcpListener,
    threads: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: impl Handler,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    listener.set_nonblocking(true)?;
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (ended, mut ends) = tokio::sync::mpsc::unbounded_channel::<Result<()>>();
    for i in 0..threads.max(1) {
        let (listener, tls, handler, slots, mut stopped, ended) =
            (listener.try_clone()?, tls.clone(), handler.clone(), slots.clone(), stopped.clone(), ended.clone());
        std::thread::Builder::new().name(format!("veil-serve-{i}")).spawn(move || {
            let served = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(anyhow::Error::from).and_then(|rt| {
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener)?;
                    serve_with(listener, tls, handler, limits, slots, async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    })
                    .await
                })
            });
            let _ = ended.send(served);
        })?;
    }
    drop((listener, ended));
    let mut result = tokio::select! {
        () = shutdown => Ok(()),
        end = ends.recv() => Err(match end {
            Some(Err(e)) => e,
            _ => anyhow::anyhow!("a listener thread stopped"),
        }),
    };
    let _ = stop.send(true);
    // Every thread drains before this returns.
    while let Some(end) = ends.recv().await {
        result = result.and(end);
    }
    result
}

async fn serve_with(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: impl Handler,
    limits: Limits,
    slots: Arc<tokio::sync::Semaphore>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Slowloris: the whole header block must arrive in time.
        .header_read_timeout(limits.header_timeout)
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
    // At the limit under a flood, say so every 10 s, not per connection.
    let mut last_warned: Option<std::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(max_connections = limits.max_connections, "connection limit reached; new connections wait");
                    last_warned = Some(std::time::Instant::now());
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                    _ = &mut shutdown => break,
                }
            }
        };
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |req| {
            // On the heap at once: hyper and the runtime move the request's
            // future, and a handler's state can be kilobytes (the gateway's
            // stages).
            let fut = Box::pin(handler.answer(req, remote));
            // A handler that panics answers 500 instead of ending the
            // connection's task (and every request on the connection with
            // it). The gateway's own handler already turns its stages'
            // panics into audited AWS errors; this guards the rest.
            async move {
                let resp = AssertUnwindSafe(fut).catch_unwind().await.unwrap_or_else(|_| {
                    tracing::error!(%remote, "request handler panicked; answered 500");
                    let mut resp = http::Response::new(crate::pipeline::full(bytes::Bytes::from_static(b"internal error\n")));
                    *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                    resp
                });
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let (builder, acceptor, watcher) = (builder.clone(), acceptor.clone(), graceful.watcher());
        tokio::spawn(async move {
            let _slot = slot;
            let result = match acceptor {
                Some(acceptor) => match tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => watcher.watch(builder.serve_connection(TokioIo::new(tls), service).into_owned()).await,
                    Ok(Err(e)) => return tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%remote, "TLS handshake timed out"),
                },
                None => watcher.watch(builder.serve_connection(TokioIo::new(tcp), service).into_owned()).await,
            };
            if let Err(e) = result {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: draining in-flight calls");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(limits.drain) => tracing::warn!("drain timeout reached; closing remaining connections"),
    }
    Ok(())
}

/// Serve Prometheus metrics on plain HTTP at `/metrics`, with the
/// listener's limits.
pub async fn serve_metrics(listener: TcpListener, gateway: Arc<Gateway>, limits: Limits) -> Result<()> {
    let handler = move |req: http::Request<hyper::body::Incoming>, _remote| {
        let gateway = gateway.clone();
        async move {
            let (status, content_type, body) = if req.uri().path() == "/metrics" {
                // What prometheus-client writes is OpenMetrics (`_total`
                // samples under a `counter` family, `# EOF`): say so, or
                // a 0.0.4 text parser files the samples as untyped.
                (http::StatusCode::OK, crate::metrics::CONTENT_TYPE, bytes::Bytes::from(gateway.metrics.render()))
            } else {
                (http::StatusCode::NOT_FOUND, "text/plain", bytes::Bytes::from_static(b"not found\n"))
            };
            let mut resp = http::Response::new(crate::pipeline::full(body));
            *resp.status_mut() = status;
            resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
            resp
        }
    };
    serve(listener, None, handler, limits, std::future::pending()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: veil\r\n\r\n";

    /// Read one small response (the whole of it arrives in one segment here).
    async fn response(conn: &mut TcpStream) -> String {
        let mut buf = vec![0; 4096];
        let n = conn.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// With `first` holding the only connection slot, a second connection
    /// to `addr` is accepted by the kernel but not served; once `first`
    /// closes, it is.
    async fn second_waits_for_the_slot(first: TcpStream, addr: SocketAddr) {
        let mut second = TcpStream::connect(addr).await.unwrap();
        second.write_all(REQUEST).await.unwrap();
        let mut buf = [0; 64];
        assert!(tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await.is_err(), "served beyond max_connections");
        drop(first);
        let answer = tokio::time::timeout(Duration::from_secs(10), response(&mut second)).await.expect("served once a slot is free");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_for_a_slot() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let limits = Limits { header_timeout: Duration::from_secs(30), drain: Duration::ZERO, max_connections: 1 };
        let handler = |_req, _remote| async { http::Response::new(crate::pipeline::full(bytes::Bytes::from_static(b"ok"))) };
        tokio::spawn(serve(tcp, None, handler, limits, std::future::pending()));

        let mut first = TcpStream::connect(addr).await.unwrap();
        first.write_all(REQUEST).await.unwrap();
        assert!(response(&mut first).await.starts_with("HTTP/1.1 200"));
        // The first connection stays open (keep-alive).
        second_waits_for_the_slot(first, addr).await;
    }

    #[tokio::test]
    async fn a_handler_that_panics_answers_500_and_the_connection_keeps_serving() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let limits = Limits { header_timeout: Duration::from_secs(30), drain: Duration::ZERO, max_connections: 4 };
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let handler = move |_req, _remote| {
            let first = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            async move {
                if first {
                    panic!("a handler bug");
                }
                http::Response::new(crate::pipeline::full(bytes::Bytes::from_static(b"ok")))
            }
        };
        tokio::spawn(serve(tcp, None, handler, limits, std::future::pending()));
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(REQUEST).await.unwrap();
        let answer = response(&mut conn).await;
        assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
        conn.write_all(REQUEST).await.unwrap();
        let answer = response(&mut conn).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "same connection: {answer}");
    }

    #[tokio::test]
    async fn threads_serve_on_their_own_runtimes_share_the_limit_and_stop_together() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let limits = Limits { header_timeout: Duration::from_secs(30), drain: Duration::from_secs(5), max_connections: 1 };
        let handler = |_req, _remote| async {
            // Which thread and which kind of runtime served the call.
            let flavor = format!("{:?}", tokio::runtime::Handle::current().runtime_flavor());
            let name = std::thread::current().name().unwrap_or("-").to_string();
            http::Response::new(crate::pipeline::full(bytes::Bytes::from(format!("{name} {flavor}"))))
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(serve_threads(tcp, 2, None, handler, limits, async move {
            let _ = stopped.await;
        }));

        let mut first = TcpStream::connect(addr).await.unwrap();
        first.write_all(REQUEST).await.unwrap();
        let answer = response(&mut first).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("veil-serve-") && answer.ends_with("CurrentThread"), "{answer}");
        // One slot across both threads: whichever accepts the second
        // connection waits for the first to close.
        second_waits_for_the_slot(first, addr).await;
        // Shutdown stops every thread; then nothing accepts.
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), served).await.expect("all threads stopped").unwrap().unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
    }
}
