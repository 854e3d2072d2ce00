//! The admin API, on its own address (`admin.address`) with the listener's
//! TLS: JSON over HTTPS.
//!
//! | method | path | who | what |
//! |---|---|---|---|
//! | GET  | `/v1/policies`        | admin token | active policies, last rejected file |
//! | POST | `/v1/policies/reload` | admin token | rebuild and swap the policy set |
//! | GET  | `/v1/approvals`       | reviewer | pending approvals |
//! | GET  | `/v1/approvals/{id}`  | reviewer | one approval |
//! | POST | `/v1/approvals/{id}/approve` | reviewer | approve; body `{"reason": "…"}` (optional) |
//! | POST | `/v1/approvals/{id}/deny`    | reviewer | deny; body `{"reason": "…"}` (required) |
//!
//! `GET /` serves the reviewer page (paste a token; pending list with
//! approve/deny, refreshed every 3 s), which uses the API above.
//!
//! Reviewers authenticate with an OIDC token from a configured issuer
//! (`Authorization: Bearer <token>`) and are authorised by a claim
//! (`approvals.reviewer_claim` including one of `approvals.reviewer_groups`).
//! A requester cannot decide their own approval.
//!
//! The admin token (`admin.token_file` or `VEIL_ADMIN_TOKEN`, ≥ 32 bytes,
//! read by [`crate::config::Config::secret`], which refuses to start on an
//! empty or short one) is sent as `Authorization: Bearer <token>`; the
//! SHA-256 digests of the sent and the configured token are compared in
//! constant time, so neither its bytes nor its length leak through timing.
//! Without a token the policy endpoints answer 403 to everyone. The API is
//! kept apart from the AWS listener so no AWS path (an S3 bucket named like
//! a route) can ever reach it.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use sha2::{Digest, Sha256};

use crate::approvals::{now_ms, ApprovalError, Decision, State};
use crate::config::Secret;
use crate::pipeline::{Gateway, RespBody};

/// The admin API's state.
pub struct Admin {
    gateway: Arc<Gateway>,
    /// SHA-256 of the admin token; `None`: the policy endpoints are off.
    token_digest: Option<[u8; 32]>,
}

impl Admin {
    /// An admin API over `gateway`; without a token the policy endpoints
    /// answer 403. A [`Secret`] comes only from the config's secret loader,
    /// which holds it to the minimum length.
    pub fn new(gateway: Arc<Gateway>, token: Option<Secret>) -> Admin {
        Admin { gateway, token_digest: token.map(|t| Sha256::digest(t.expose()).into()) }
    }

    /// Handle one request.
    pub async fn handle(&self, req: http::Request<Incoming>, remote: SocketAddr) -> Response<RespBody> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        if method == Method::GET && (path == "/" || path == "/review.js") {
            return page(&path);
        }
        let (status, body) = match (method.clone(), path.as_str()) {
            (Method::GET, "/v1/policies") => match self.check_admin(&req) {
                Ok(()) => (StatusCode::OK, self.gateway.policy_status()),
                Err(e) => e,
            },
            (Method::POST, "/v1/policies/reload") => match self.check_admin(&req) {
                Ok(()) => match self.gateway.reload_policies("admin").await {
                    Ok(changed) => (StatusCode::OK, json!({"reloaded": changed, "status": self.gateway.policy_status()})),
                    Err(r) => (StatusCode::UNPROCESSABLE_ENTITY, json!({"error": format!("{}: {}", r.file, r.reason), "rejected": r})),
                },
                Err(e) => e,
            },
            (m, p) if p == "/v1/approvals" || p.starts_with("/v1/approvals/") => self.approvals(m, p, req).await,
            _ => (StatusCode::NOT_FOUND, json!({"error": format!("no route {method} {path}")})),
        };
        tracing::info!(%remote, %method, %path, status = status.as_u16(), "admin request");
        json_response(status, &body)
    }

    async fn approvals(&self, method: Method, path: &str, req: http::Request<Incoming>) -> (StatusCode, Value) {
        let reviewer = match bearer(&req) {
            Some(t) => match self.gateway.reviewer(t).await {
                Ok(id) => id,
                Err(e) => return (StatusCode::FORBIDDEN, json!({"error": e})),
            },
            None => return (StatusCode::UNAUTHORIZED, json!({"error": "a reviewer's OIDC token is required (Authorization: Bearer <token>)"})),
        };
        let ap = self.gateway.approvals();
        let rest: Vec<&str> = path.trim_start_matches("/v1/approvals").split('/').filter(|p| !p.is_empty()).collect();
        match (method, rest.as_slice()) {
            (Method::GET, []) => match ap.store.list(State::Pending).await {
                Ok(pending) => (StatusCode::OK, json!({"pending": pending})),
                Err(err) => (StatusCode::SERVICE_UNAVAILABLE, json!({"error": err.to_string()})),
            },
            (Method::GET, [id]) => match ap.store.get(id).await {
                Ok(Some(e)) => (StatusCode::OK, json!(e)),
                Ok(None) => (StatusCode::NOT_FOUND, json!({"error": format!("no approval {id}")})),
                Err(err) => (StatusCode::SERVICE_UNAVAILABLE, json!({"error": err.to_string()})),
            },
            (Method::POST, [id, verb @ ("approve" | "deny")]) => {
                let body = match Limited::new(req.into_body(), 16 * 1024).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return (StatusCode::BAD_REQUEST, json!({"error": format!("reading the body: {e}")})),
                };
                let reason = if body.is_empty() {
                    String::new()
                } else {
                    match serde_json::from_slice::<Value>(&body) {
                        Ok(v) => v.get("reason").and_then(Value::as_str).unwrap_or_default().chars().take(1000).collect(),
                        Err(e) => return (StatusCode::BAD_REQUEST, json!({"error": format!("body must be JSON like {{\"reason\": \"...\"}}: {e}")})),
                    }
                };
                let decision = Decision { reviewer: reviewer.subject.clone(), issuer: reviewer.issuer.clone(), approve: *verb == "approve", reason, at_ms: now_ms() };
                match ap.decide(id, decision.clone()).await {
                    Ok(e) => {
                        let step = if decision.approve { "approved" } else { "denied" };
                        tracing::info!(approval = %e.id, reviewer = %decision.reviewer, step, "approval decided");
                        self.gateway.approval_event(&e, step, Some(&decision)).await;
                        (StatusCode::OK, json!(e))
                    }
                    Err(err) => {
                        let status = match err {
                            ApprovalError::NotFound(_) => StatusCode::NOT_FOUND,
                            ApprovalError::SelfApproval => StatusCode::FORBIDDEN,
                            ApprovalError::NotPending { .. } | ApprovalError::AlreadyDecided(_) => StatusCode::CONFLICT,
                            ApprovalError::ReasonRequired => StatusCode::BAD_REQUEST,
                            ApprovalError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
                        };
                        (status, json!({"error": err.to_string()}))
                    }
                }
            }
            (m, _) => (StatusCode::NOT_FOUND, json!({"error": format!("no route {m} {path}")})),
        }
    }

    fn check_admin(&self, req: &http::Request<Incoming>) -> Result<(), (StatusCode, Value)> {
        check_token(self.token_digest.as_ref(), bearer(req))
    }
}

/// Whether `sent` is the admin token whose digest is `want`.
fn check_token(want: Option<&[u8; 32]>, sent: Option<&str>) -> Result<(), (StatusCode, Value)> {
    let Some(want) = want else {
        return Err((StatusCode::FORBIDDEN, json!({"error": "no admin token is configured (admin.token_file or VEIL_ADMIN_TOKEN)"})));
    };
    let wrong = || (StatusCode::UNAUTHORIZED, json!({"error": "missing or wrong admin token (Authorization: Bearer <token>)"}));
    let Some(sent) = sent.filter(|s| !s.is_empty()) else { return Err(wrong()) };
    let got: [u8; 32] = Sha256::digest(sent.as_bytes()).into();
    if bool::from(got.ct_eq(want)) {
        Ok(())
    } else {
        Err(wrong())
    }
}

/// The reviewer page and its script, with headers that keep it from being
/// framed or running anything but its own script.
fn page(path: &str) -> Response<RespBody> {
    let (body, kind) = if path == "/" {
        (include_str!("../static/review.html"), "text/html; charset=utf-8")
    } else {
        (include_str!("../static/review.js"), "text/javascript; charset=utf-8")
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())).map_err(|never| match never {}).boxed());
    let h = resp.headers_mut();
    h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(kind));
    h.insert("content-security-policy", http::HeaderValue::from_static("default-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'"));
    h.insert("x-frame-options", http::HeaderValue::from_static("DENY"));
    h.insert("x-content-type-options", http::HeaderValue::from_static("nosniff"));
    h.insert("cache-control", http::HeaderValue::from_static("no-store"));
    resp
}

/// The bearer token of a request.
pub fn bearer<B>(req: &http::Request<B>) -> Option<&str> {
    req.headers().get(http::header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &Value) -> Response<RespBody> {
    let mut text = serde_json::to_vec_pretty(body).unwrap_or_default();
    text.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(text)).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_endpoints_need_the_exact_token() {
        let token = "t".repeat(40);
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        assert!(check_token(Some(&digest), Some(&token)).is_ok());
        for sent in [None, Some(""), Some("t"), Some(&token[..39]), Some("u".repeat(40).as_str())] {
            assert_eq!(check_token(Some(&digest), sent).unwrap_err().0, StatusCode::UNAUTHORIZED, "{sent:?}");
        }
        // No token configured: off for everyone, whatever is sent.
        for sent in [None, Some(""), Some(token.as_str())] {
            assert_eq!(check_token(None, sent).unwrap_err().0, StatusCode::FORBIDDEN);
        }
    }
}
