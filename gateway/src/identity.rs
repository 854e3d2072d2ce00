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
//!
//! A token that passed is remembered by its SHA-256 digest until its `exp`
//! ([`TokenCache`]): its signature and claims cannot change, so the next
//! call with it skips the RSA check (most of a Bearer call's CPU). An entry
//! is dropped when its issuer's keys are refreshed, so a token signed with
//! a key the issuer withdrew is checked again against the keys as they are.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::Engine as _;
use openidconnect::core::{CoreIdToken, CoreIdTokenVerifier, CoreJsonWebKeySet, CoreJwsSigningAlgorithm, CoreProviderMetadata};
use openidconnect::{ClaimsVerificationError, ClientId, IssuerUrl, JsonWebKeySetUrl, Nonce, SignatureVerificationError};
use serde_json::Value;
use sha2::{Digest, Sha256};
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
    /// Bumped whenever `keys` is replaced: cached tokens of an older
    /// generation are checked again.
    generation: AtomicU64,
    last_refresh: Mutex<Instant>,
}

/// Validates tokens of the configured issuers.
pub struct Verifier {
    issuers: Vec<Issuer>,
    http: openidconnect::reqwest::Client,
    leeway: Duration,
    min_refresh: Duration,
    cache: TokenCache,
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
                generation: AtomicU64::new(0),
                last_refresh: Mutex::new(Instant::now()),
            });
        }
        Ok(Verifier {
            issuers,
            http,
            leeway: Duration::from_secs(cfg.leeway_secs),
            min_refresh: Duration::from_secs(cfg.jwks_min_refresh_secs),
            cache: TokenCache::default(),
        })
    }

    /// Validate `token` and return the caller's identity.
    pub async fn verify(&self, token: &str) -> Result<Identity, IdentityError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let generation = |i: usize| self.issuers.get(i).map(|i| i.generation.load(Ordering::Acquire));
        if let Some(identity) = self.cache.get(&digest, unix_now(), generation) {
            return Ok(identity);
        }
        let (alg, claims) = preparse(token)?;
        if alg != "RS256" && alg != "ES256" {
            return Err(IdentityError::Algorithm(alg));
        }
        let iss = claims.get("iss").and_then(Value::as_str).ok_or_else(|| IdentityError::Malformed("no iss claim".into()))?;
        let index = self
            .issuers
            .iter()
            .position(|i| i.url.as_str() == iss)
            .ok_or_else(|| IdentityError::UnknownIssuer(iss.chars().take(200).collect()))?;
        let issuer = &self.issuers[index];
        // Read before the check: a refresh during it makes the entry stale.
        let generation = issuer.generation.load(Ordering::Acquire);
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
        let exp = claims.get("exp").and_then(Value::as_f64);
        let identity = Identity::new(iss.to_string(), sub, claims);
        if let Some(exp) = exp {
            self.cache.insert(digest, &identity, exp, index, generation, unix_now());
        }
        Ok(identity)
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
        issuer.generation.fetch_add(1, Ordering::AcqRel);
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

/// Most tokens remembered: past this, expired entries are dropped, and all
/// of them if none had expired.
const MAX_CACHED_TOKENS: usize = 4096;

/// Tokens that passed every check, by SHA-256 digest, until their `exp`.
#[derive(Default)]
struct TokenCache(std::sync::Mutex<HashMap<[u8; 32], Cached>>);

struct Cached {
    identity: Identity,
    /// Unix seconds: a hit needs `now < exp` (no leeway: a token close to
    /// its end gets the full check, leeway and all).
    exp: i64,
    issuer: usize,
    generation: u64,
}

impl TokenCache {
    /// The identity of a remembered token, unless it has expired or its
    /// issuer's keys changed since (`generation` of an issuer index).
    fn get(&self, digest: &[u8; 32], now: i64, generation: impl Fn(usize) -> Option<u64>) -> Option<Identity> {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let hit = map.get(digest)?;
        if now < hit.exp && generation(hit.issuer) == Some(hit.generation) {
            return Some(hit.identity.clone());
        }
        map.remove(digest);
        None
    }

    fn insert(&self, digest: [u8; 32], identity: &Identity, exp: f64, issuer: usize, generation: u64, now: i64) {
        // `as` saturates: a huge or non-finite `exp` is capped, never wraps.
        let exp = exp.floor() as i64;
        if exp <= now {
            return;
        }
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_CACHED_TOKENS {
            map.retain(|_, c| c.exp > now);
            if map.len() >= MAX_CACHED_TOKENS {
                map.clear();
            }
        }
        map.insert(digest, Cached { identity: identity.clone(), exp, issuer, generation });
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
    fn cached_tokens_end_at_exp_at_a_key_refresh_and_at_the_bound() {
        let cache = TokenCache::default();
        let id = Identity::new("i", "s", serde_json::json!({"sub": "s"}));
        let now = 1_700_000_000;
        let gen0 = |_: usize| Some(0);
        cache.insert([1; 32], &id, (now + 10) as f64, 0, 0, now);
        assert_eq!(cache.get(&[1; 32], now + 9, gen0).map(|i| i.subject.clone()), Some("s".into()));
        assert!(cache.get(&[2; 32], now, gen0).is_none(), "another token");
        // Keys refreshed: checked again, and the entry is gone.
        assert!(cache.get(&[1; 32], now, |_| Some(1)).is_none());
        assert!(cache.get(&[1; 32], now, gen0).is_none());
        cache.insert([1; 32], &id, (now + 10) as f64, 0, 0, now);
        assert!(cache.get(&[1; 32], now + 10, gen0).is_none(), "expired");
        // Already expired, or an exp no clock reaches: never a wrap.
        cache.insert([3; 32], &id, (now - 1) as f64, 0, 0, now);
        assert!(cache.get(&[3; 32], now, gen0).is_none());
        cache.insert([4; 32], &id, f64::INFINITY, 0, 0, now);
        assert!(cache.get(&[4; 32], now, gen0).is_some());
        cache.insert([5; 32], &id, f64::NAN, 0, 0, now);
        assert!(cache.get(&[5; 32], now, gen0).is_none());
        // Bounded: a full cache drops what expired, then everything.
        for i in 0..MAX_CACHED_TOKENS as u32 + 10 {
            let mut d = [0u8; 32];
            d[..4].copy_from_slice(&i.to_le_bytes());
            d[31] = 9;
            cache.insert(d, &id, (now + 100) as f64, 0, 0, now);
        }
        assert!(cache.0.lock().unwrap().len() <= MAX_CACHED_TOKENS);
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
