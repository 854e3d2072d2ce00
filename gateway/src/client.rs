//! A small HTTPS JSON client for the CLI's calls to a running gateway's
//! admin API (`veil policy reload|status`, `veil approvals …`).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Send one request; returns the status and the body text. `ca` is a PEM
/// bundle to trust instead of the system roots.
pub fn request(base: &str, ca: Option<&Path>, method: http::Method, path: &str, token: &str, body: Option<String>) -> Result<(http::StatusCode, String)> {
    let https = match ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("--ca {}", ca.display()))? {
                roots.add(cert.with_context(|| format!("--ca {}: not a PEM certificate", ca.display()))?)?;
            }
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls)
        }
        None => hyper_rustls::HttpsConnectorBuilder::new().with_native_roots()?,
    }
    .https_or_http()
    .enable_http1()
    .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let url = format!("{}{}", base.trim_end_matches('/'), path);
    let req = http::Request::builder()
        .method(method)
        .uri(&url)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .with_context(|| format!("bad URL {url}"))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let resp = tokio::time::timeout(Duration::from_secs(120), client.request(req))
            .await
            .with_context(|| format!("{url}: no answer within 120 s"))?
            .with_context(|| format!("cannot reach {url}"))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.with_context(|| format!("{url}: reading the answer"))?.to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    })
}
