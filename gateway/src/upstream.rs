//! Upstream: re-sign a call with Veil's own credential ([`sigv4::Signer`]) and send
//! it to AWS (or the configured endpoint) over a pooled HTTPS client.
//!
//! Invariants: nothing of the caller's authentication (Authorization,
//! security token, its x-amz-date) reaches AWS; hop-by-hop headers are not
//! forwarded; every call has a connect timeout and a whole-call timeout.
//!
//! Each thread sends through a connection pool of its own: a pooled
//! connection is driven by a task on the runtime that opened it, so a pool
//! shared by the listener's threads (each its own runtime) would hand every
//! call's I/O to another thread and back.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::Digest;

use crate::config::{CredentialConfig, UpstreamConfig};
use crate::sigv4;

/// Body type sent upstream.
pub type UpBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Why an upstream call failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No credential could be loaded.
    #[error("upstream credential {name:?} is unavailable: {reason}")]
    Credentials { name: String, reason: String },
    /// Signing failed.
    #[error("signing the upstream request failed: {0}")]
    Sign(String),
    /// Connect, send or timeout.
    #[error("upstream call failed: {0}")]
    Send(String),
    /// The call took too long.
    #[error("upstream call timed out after {0:?}")]
    Timeout(Duration),
}

struct Credential {
    name: String,
    provider: SharedCredentialsProvider,
    cached: ArcSwapOption<(Credentials, SystemTime)>,
}

impl Credential {
    /// The credentials, fetched again 5 minutes before they expire (or every
    /// 15 minutes when they do not say), with when they were fetched: shared,
    /// not copied per call.
    async fn get(&self) -> Result<Arc<(Credentials, SystemTime)>, UpstreamError> {
        if let Some(c) = self.cached.load_full() {
            let (creds, fetched) = &*c;
            let fresh = match creds.expiry() {
                Some(exp) => exp > SystemTime::now() + Duration::from_secs(300),
                None => fetched.elapsed().map(|e| e < Duration::from_secs(900)).unwrap_or(false),
            };
            if fresh {
                return Ok(c);
            }
        }
        let creds = self
            .provider
            .provide_credentials()
            .await
            .map_err(|e| UpstreamError::Credentials { name: self.name.clone(), reason: e.to_string() })?;
        let fetched = Arc::new((creds, SystemTime::now()));
        self.cached.store(Some(fetched.clone()));
        Ok(fetched)
    }
}

/// The pooled client and Veil's credentials.
pub struct Upstream {
    /// Tells this upstream's pools apart in [`POOLS`].
    id: u64,
    connector: hyper_rustls::HttpsConnector<HttpConnector>,
    /// The configured `upstream.endpoint`: every call goes there instead.
    endpoint: Option<(Scheme, Authority)>,
    timeout: Duration,
    credentials: BTreeMap<String, Credential>,
}

/// What to send.
pub struct Outgoing {
    /// Method.
    pub method: Method,
    /// Path and query exactly as the caller sent them.
    pub path_and_query: String,
    /// Caller's headers (filtered here).
    pub headers: HeaderMap,
    /// Signing name.
    pub service: String,
    /// Region.
    pub region: String,
    /// The service's endpoint host in the region ([`crate::aws::endpoint::host`]),
    /// used when no override is configured.
    pub default_host: Authority,
    /// Name of the credential to sign with.
    pub credential: String,
    /// The body: buffered bytes, or a stream with its payload mode.
    pub body: OutBody,
}

/// Request body going upstream.
pub enum OutBody {
    /// Fully read; signed with its hash.
    Buffered(Bytes),
    /// Streamed; signed with the caller's payload form.
    Streaming { body: UpBody, payload: StreamedPayload },
}

/// The payload form of a streamed body, as the caller signed it and so as
/// it is signed upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamedPayload {
    /// `UNSIGNED-PAYLOAD`.
    Unsigned,
    /// `STREAMING-UNSIGNED-PAYLOAD-TRAILER` (aws-chunked, checksum trailer).
    UnsignedTrailer,
    /// The body's hex SHA-256, which AWS checks again.
    Sha256(String),
}

const HOP_BY_HOP: &[&str] = &[
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host",
    "authorization", "x-amz-security-token", "x-amz-date", "x-amz-content-sha256", "content-length",
    "x-veil-service", "x-veil-region", "expect",
];

type Pool = Client<hyper_rustls::HttpsConnector<HttpConnector>, UpBody>;

thread_local! {
    /// This thread's connection pool per upstream (by [`Upstream::id`]).
    static POOLS: std::cell::RefCell<Vec<(u64, Pool)>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Upstream {
    /// This thread's connection pool for this upstream.
    fn pool(&self) -> Pool {
        POOLS.with_borrow_mut(|pools| match pools.iter().find(|(id, _)| *id == self.id) {
            Some((_, pool)) => pool.clone(),
            None => {
                let pool = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(self.connector.clone());
                pools.push((self.id, pool.clone()));
                pool
            }
        })
    }

    /// Build the client and load credential providers (lazily fetched).
    pub async fn new(cfg: &UpstreamConfig) -> anyhow::Result<Upstream> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector({
                let mut c = HttpConnector::new();
                c.set_connect_timeout(Some(Duration::from_secs(cfg.connect_timeout_secs)));
                c.set_nodelay(true);
                c.enforce_http(false);
                c
            });
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut credentials = BTreeMap::new();
        for (name, c) in &cfg.credentials {
            credentials.insert(name.clone(), Credential { name: name.clone(), provider: provider(c).await, cached: ArcSwapOption::empty() });
        }
        Ok(Upstream {
            id: IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            connector: https,
            endpoint: cfg.endpoint.as_deref().map(endpoint_parts).transpose()?,
            timeout: Duration::from_secs(cfg.timeout_secs),
            credentials,
        })
    }

    /// Re-sign and send; returns AWS's response head and streaming body.
    pub async fn send(&self, out: Outgoing) -> Result<Response<Incoming>, UpstreamError> {
        let cred = self
            .credentials
            .get(&out.credential)
            .ok_or_else(|| UpstreamError::Credentials { name: out.credential.clone(), reason: "not configured".into() })?;
        let fetched = cred.get().await?;
        let creds = &fetched.0;
        // The URI is assembled from typed parts: the host is the checked
        // endpoint, and the caller's path can only ever be a path.
        let (scheme, authority) = self.origin(&out.default_host);
        let path_and_query = PathAndQuery::from_str(&out.path_and_query)
            .ok()
            .filter(|p| p.as_str().starts_with('/'))
            .ok_or_else(|| UpstreamError::Sign("the request path is not an absolute path".into()))?;
        let uri = Uri::builder()
            .scheme(scheme)
            .authority(authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| UpstreamError::Sign(format!("bad upstream URI: {e}")))?;
        let mut headers = HeaderMap::new();
        for (k, v) in out.headers.iter() {
            if !HOP_BY_HOP.contains(&k.as_str()) {
                headers.append(k.clone(), v.clone());
            }
        }
        headers.insert(http::header::HOST, HeaderValue::from_str(authority.as_str()).map_err(|e| UpstreamError::Sign(e.to_string()))?);
        let (payload_hash, len) = match &out.body {
            OutBody::Buffered(b) => (hex::encode(sha2::Sha256::digest(b)), Some(b.len())),
            OutBody::Streaming { payload: StreamedPayload::UnsignedTrailer, .. } => (sigv4::STREAMING_UNSIGNED_TRAILER.to_string(), None),
            OutBody::Streaming { payload: StreamedPayload::Unsigned, .. } => (sigv4::UNSIGNED_PAYLOAD.to_string(), None),
            OutBody::Streaming { payload: StreamedPayload::Sha256(hash), .. } => (hash.clone(), None),
        };
        let signer = sigv4::Signer { access_key: creds.access_key_id(), secret: creds.secret_access_key(), session_token: creds.session_token() };
        signer
            .sign(&out.method, &uri, &mut headers, &out.service, &out.region, &payload_hash, SystemTime::now())
            .map_err(|e| UpstreamError::Sign(e.to_string()))?;
        if let Some(len) = len {
            headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
        } else if let Some(len) = out.headers.get(http::header::CONTENT_LENGTH) {
            headers.insert(http::header::CONTENT_LENGTH, len.clone());
        }
        let body: UpBody = match out.body {
            OutBody::Buffered(b) => http_body_util::BodyExt::boxed(http_body_util::Full::new(b).map_err_never()),
            OutBody::Streaming { body, .. } => body,
        };
        let mut req = Request::builder().method(out.method).uri(uri).body(body).map_err(|e| UpstreamError::Sign(e.to_string()))?;
        *req.headers_mut() = headers;
        match tokio::time::timeout(self.timeout, self.pool().request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(UpstreamError::Send(crate::error_chain(&e))),
            Err(_) => Err(UpstreamError::Timeout(self.timeout)),
        }
    }

    /// Where a call goes: the configured endpoint, else `default_host` over HTTPS.
    pub fn origin(&self, default_host: &Authority) -> (Scheme, Authority) {
        match &self.endpoint {
            Some((scheme, authority)) => (scheme.clone(), authority.clone()),
            None => (Scheme::HTTPS, default_host.clone()),
        }
    }

    /// The whole-call timeout (for reading response bodies).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

trait MapErrNever {
    fn map_err_never(self) -> http_body_util::combinators::MapErr<Self, fn(std::convert::Infallible) -> Box<dyn std::error::Error + Send + Sync>>
    where
        Self: Sized;
}

impl MapErrNever for http_body_util::Full<Bytes> {
    fn map_err_never(self) -> http_body_util::combinators::MapErr<Self, fn(std::convert::Infallible) -> Box<dyn std::error::Error + Send + Sync>> {
        http_body_util::BodyExt::map_err(self, |never| match never {})
    }
}

async fn provider(c: &CredentialConfig) -> SharedCredentialsProvider {
    match &c.profile {
        Some(p) => SharedCredentialsProvider::new(aws_config::profile::ProfileFileCredentialsProvider::builder().profile_name(p).build()),
        None => SharedCredentialsProvider::new(aws_config::default_provider::credentials::DefaultCredentialsChain::builder().build().await),
    }
}

/// `upstream.endpoint` as scheme and authority (config validation has
/// already checked it is an http(s) URL).
fn endpoint_parts(url: &str) -> anyhow::Result<(Scheme, Authority)> {
    let uri: Uri = url.parse()?;
    let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTPS);
    let authority = uri.authority().cloned().ok_or_else(|| anyhow::anyhow!("upstream.endpoint {url:?} has no host"))?;
    Ok((scheme, authority))
}

/// Whether a response header may be passed back to the caller.
pub fn pass_response_header(name: &HeaderName) -> bool {
    !matches!(name.as_str(), "connection" | "keep-alive" | "transfer-encoding" | "te" | "trailer" | "upgrade" | "proxy-connection")
}
