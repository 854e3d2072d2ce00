//! Identity: OIDC discovery and JWKS (openidconnect), token validation.
//!
//! A token is pre-parsed first (size, shape, `alg`, `crit`, `iss`) so that hostile
//! input is refused before any key lookup: only RS256 and ES256 are accepted,
//! so `alg: none` and HMAC signed with a public key never reach verification.
//! Then openidconnect verifies signature, `iss`, `aud` and `exp` against the
//! issuer's cached JWKS; `nbf` and `iat` are checked here, all with a small
//! leeway. An unknown `kid` refreshes the JWKS, at most once per
//! `jwks_min_refresh_secs` per issuer, so a flood of bad tokens cannot turn
//! Veil into a load generator against the issuer.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::Engine as _;
use openidconnect::core::{CoreIdToken, CoreIdTokenVerifier, CoreJsonWebKeySet, CoreJwsSigningAlgorithm, CoreProviderMetadata};
use openidconnect::{ClaimsVerificationError, ClientId, IssuerUrl, JsonWebKeySetUrl, Nonce, SignatureVerificationError};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::config::IdentityConfig;
use crate::policy::Identity;

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The token is not a well-formed JWT.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The `alg` header is not RS256 or ES256.
    #[error("token algorithm {0:?} is not allowed (RS256 and ES256 only)")]
    Algorithm(String),
    /// The issuer is not configured.
    #[error("token issuer {0:?} is not trusted by this gateway")]
    UnknownIssuer(String),
    /// Expired or not yet valid.
    #[error("token is expired or not yet valid: {0}")]
    Expired(String),
    /// Signature, audience or other claim check failed.
    #[error("token rejected: {0}")]
    Invalid(String),
    /// Discovery or JWKS fetch failed.
    #[error("issuer {issuer}: {reason}")]
    Discovery { issuer: String, reason: String },
}

struct Issuer {
    url: IssuerUrl,
    audience: String,
    jwks_uri: JsonWebKeySetUrl,
    keys: ArcSwap<CoreJsonWebKeySet>,
    last_refresh: Mutex<Instant>,
}

/// Validates tokens of the configured issuers.
pub struct Verifier {
    issuers: Vec<Issuer>,
    http: openidconnect::reqwest::Client,
    leeway: Duration,
    min_refresh: Duration,
}

fn http_client() -> Result<openidconnect::reqwest::Client, IdentityError> {
    openidconnect::reqwest::ClientBuilder::new()
        // Following redirects would let a discovery document point Veil anywhere.
        .redirect(openidconnect::reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| IdentityError::Discovery { issuer: "(client)".into(), reason: e.to_string() })
}

impl Verifier {
    /// Discover every configured issuer and fetch its keys. Fails when any
    /// issuer is unreachable: a gateway that cannot validate tokens must not start.
    pub async fn new(cfg: &IdentityConfig) -> Result<Verifier, IdentityError> {
        let http = http_client()?;
        let mut issuers = Vec::new();
        for i in &cfg.issuers {
            let err = |reason: String| IdentityError::Discovery { issuer: i.issuer.clone(), reason };
            let url = IssuerUrl::new(i.issuer.clone()).map_err(|e| err(e.to_string()))?;
            let meta = CoreProviderMetadata::discover_async(url.clone(), &http)
                .await
                .map_err(|e| err(format!("discovery failed: {}", crate::error_chain(&e))))?;
            issuers.push(Issuer {
                url,
                audience: i.audience.clone(),
                jwks_uri: meta.jwks_uri().clone(),
                keys: ArcSwap::from_pointee(meta.jwks().clone()),
                last_refresh: Mutex::new(Instant::now()),
            });
        }
        Ok(Verifier {
            issuers,
            http,
            leeway: Duration::from_secs(cfg.leeway_secs),
            min_refresh: Duration::from_secs(cfg.jwks_min_refresh_secs),
        })
    }

    /// Validate `token` and return the caller's identity.
    pub async fn verify(&self, token: &str) -> Result<Identity, IdentityError> {
        let (alg, claims) = preparse(token)?;
        if alg != "RS256" && alg != "ES256" {
            return Err(IdentityError::Algorithm(alg));
        }
        let iss = claims.get("iss").and_then(Value::as_str).ok_or_else(|| IdentityError::Malformed("no iss claim".into()))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.url.as_str() == iss)
            .ok_or_else(|| IdentityError::UnknownIssuer(iss.chars().take(200).collect()))?;
        let parsed: CoreIdToken = token.parse().map_err(|e: serde_json::Error| IdentityError::Malformed(e.to_string()))?;
        match self.check(issuer, &parsed) {
            Err(ClaimsVerificationError::SignatureVerification(SignatureVerificationError::NoMatchingKey)) => {
                // Keys may have rotated: refresh (rate limited) and try once more.
                self.refresh(issuer).await?;
                self.check(issuer, &parsed).map_err(claims_error)?;
            }
            other => other.map_err(claims_error)?,
        }
        not_yet_valid(&claims, unix_now(), self.leeway.as_secs() as i64)?;
        let sub = claims.get("sub").and_then(Value::as_str).unwrap_or_default().to_string();
        Ok(Identity { issuer: iss.to_string(), subject: sub, claims })
    }

    fn check(&self, issuer: &Issuer, token: &CoreIdToken) -> Result<(), ClaimsVerificationError> {
        let keys = issuer.keys.load();
        let leeway = chrono::Duration::from_std(self.leeway).unwrap_or_default();
        let verifier = CoreIdTokenVerifier::new_public_client(
            ClientId::new(issuer.audience.clone()),
            issuer.url.clone(),
            CoreJsonWebKeySet::clone(&keys),
        )
        .set_allowed_algs([CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256, CoreJwsSigningAlgorithm::EcdsaP256Sha256])
        // Tokens may name other audiences too; ours must be among them.
        .set_other_audience_verifier_fn(|_| true)
        .set_time_fn(move || chrono::Utc::now() - leeway)
        .set_issue_time_verifier_fn(move |iat| {
            if iat > chrono::Utc::now() + leeway + leeway {
                Err(format!("issued in the future ({iat})"))
            } else {
                Ok(())
            }
        });
        token.claims(&verifier, |_: Option<&Nonce>| Ok(())).map(|_| ())
    }

    async fn refresh(&self, issuer: &Issuer) -> Result<(), IdentityError> {
        let mut last = issuer.last_refresh.lock().await;
        if last.elapsed() < self.min_refresh {
            return Ok(());
        }
        *last = Instant::now();
        let keys = CoreJsonWebKeySet::fetch_async(&issuer.jwks_uri, &self.http).await.map_err(|e| IdentityError::Discovery {
            issuer: issuer.url.to_string(),
            reason: format!("JWKS refresh failed: {}", crate::error_chain(&e)),
        })?;
        issuer.keys.store(Arc::new(keys));
        tracing::info!(issuer = %issuer.url.as_str(), "refreshed JWKS after an unknown key id");
        Ok(())
    }
}

fn claims_error(e: ClaimsVerificationError) -> IdentityError {
    match e {
        ClaimsVerificationError::Expired(m) => IdentityError::Expired(m),
        other => IdentityError::Invalid(crate::error_chain(&other)),
    }
}

/// `nbf` (a NumericDate: integer or not) later than `now` plus the leeway;
/// an `nbf` that is not a number makes the token malformed.
fn not_yet_valid(claims: &Value, now: i64, leeway: i64) -> Result<(), IdentityError> {
    let Some(nbf) = claims.get("nbf") else { return Ok(()) };
    let nbf = nbf.as_f64().ok_or_else(|| IdentityError::Malformed("nbf is not a number".into()))?;
    if nbf > (now + leeway) as f64 {
        return Err(IdentityError::Expired(format!("not valid before {nbf} (now {now})")));
    }
    Ok(())
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Split and decode a JWT without trusting it: returns its `alg` and claims.
pub fn preparse(token: &str) -> Result<(String, Value), IdentityError> {
    let m = |s: &str| IdentityError::Malformed(s.to_string());
    if token.len() > MAX_TOKEN_LEN {
        return Err(m("token longer than 16 KiB"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(m("expected three dot-separated parts"));
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: Value = serde_json::from_slice(&b64.decode(h).map_err(|_| m("header is not base64url"))?)
        .map_err(|_| m("header is not JSON"))?;
    let claims: Value = serde_json::from_slice(&b64.decode(p).map_err(|_| m("payload is not base64url"))?)
        .map_err(|_| m("payload is not JSON"))?;
    if !claims.is_object() {
        return Err(m("payload is not a JSON object"));
    }
    let alg = header.get("alg").and_then(Value::as_str).ok_or_else(|| m("header has no alg"))?;
    // RFC 7515 4.1.11: a recipient must refuse a JWS whose `crit` names an
    // extension it does not understand, and Veil understands none (such as
    // RFC 7797's unencoded payload, which would change what was signed).
    if header.get("crit").is_some() {
        return Err(m("header has crit: critical JWS extensions are not supported"));
    }
    Ok((alg.to_string(), claims))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: &Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn nbf_is_checked_whatever_its_number_form() {
        let now = 1_700_000_000;
        let check = |nbf: Value| not_yet_valid(&serde_json::json!({ "nbf": nbf }), now, 60);
        assert!(check(serde_json::json!(now + 60)).is_ok());
        assert!(check(serde_json::json!(now - 5)).is_ok());
        assert!(matches!(check(serde_json::json!(now + 61)), Err(IdentityError::Expired(_))));
        assert!(matches!(check(serde_json::json!((now + 3600) as f64 + 0.5)), Err(IdentityError::Expired(_))));
        assert!(matches!(check(serde_json::json!(9.9e99)), Err(IdentityError::Expired(_))));
        assert!(matches!(check(serde_json::json!("tomorrow")), Err(IdentityError::Malformed(_))));
        assert!(not_yet_valid(&serde_json::json!({}), now, 60).is_ok());
    }

    #[test]
    fn preparse_refuses_garbage() {
        for bad in ["", "a", "a.b", "a.b.c.d", "!!.??.x", &"x".repeat(MAX_TOKEN_LEN + 1)] {
            assert!(preparse(bad).is_err(), "{bad:.20}");
        }
        let t = format!("{}.{}.", b64(&serde_json::json!({"alg": "none"})), b64(&serde_json::json!({"iss": "x"})));
        assert_eq!(preparse(&t).unwrap().0, "none");
        let t = format!("{}.{}.sig", b64(&serde_json::json!({"alg": "HS256"})), b64(&serde_json::json!([1])));
        assert!(preparse(&t).is_err());
        let t = format!("{}.{}.sig", b64(&serde_json::json!({"alg": "RS256", "b64": false, "crit": ["b64"]})), b64(&serde_json::json!({"iss": "x"})));
        assert!(matches!(preparse(&t), Err(IdentityError::Malformed(r)) if r.contains("crit")));
    }
}
