//! STS emulation: `AssumeRoleWithWebIdentity` turns a validated OIDC token
//! into short-lived Veil session credentials that standard SDKs sign with.
//!
//! Stateless by design, so any replica can verify a session: the session
//! token carries the identity, the role and the expiry, authenticated with
//! the gateway's session key (HMAC-SHA256); the secret access key is derived
//! from the same key and the token, so it never needs storing. Changing the
//! session key revokes every session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::policy::Identity;

const TOKEN_PREFIX: &str = "veil1.";
/// Largest session token issued (SDKs send it on every request).
const MAX_SESSION_TOKEN: usize = 12 * 1024;

/// Why a session was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    /// Not a Veil session token, or tampered with.
    #[error("the security token included in the request is invalid")]
    Invalid,
    /// Past its expiry.
    #[error("the security token included in the request is expired")]
    Expired,
    /// The claims do not fit a session token.
    #[error("the web identity token's claims are too large for a session ({0} bytes)")]
    TooLarge(usize),
}

/// What a session token says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Session {
    /// Access key id bound to this token.
    pub akid: String,
    /// Token issuer.
    pub iss: String,
    /// Token subject.
    pub sub: String,
    /// All token claims.
    pub claims: Value,
    /// Role ARN assumed.
    pub role: String,
    /// Session name given by the caller.
    pub name: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

/// Credentials handed to the caller.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// `ASIA…`
    pub access_key_id: String,
    /// Derived secret.
    pub secret_access_key: String,
    /// The session token.
    pub session_token: String,
    /// Expiry.
    pub expiration: SystemTime,
}

/// Issues and verifies sessions with one key. Clones share the sessions
/// already verified.
#[derive(Clone)]
pub struct SessionKeys {
    key: Vec<u8>,
    verified: Arc<VerifiedSessions>,
}

/// A session token that verified: what it says, the secret its requests
/// are signed with, and the caller's identity (made once per session, not
/// per call).
pub struct Verified {
    /// The session.
    pub session: Session,
    /// The secret access key of its requests.
    pub secret: String,
    /// The caller.
    pub identity: Identity,
}

/// Most sessions remembered: past this, expired entries are dropped, and
/// all of them if none had expired.
const MAX_VERIFIED_SESSIONS: usize = 4096;

/// Session tokens that verified, by SHA-256 digest, until their expiry: a
/// token's payload cannot change without its MAC failing, so the next call
/// with it needs only its digest.
#[derive(Default)]
struct VerifiedSessions(Mutex<HashMap<[u8; 32], Arc<Verified>>>);

impl VerifiedSessions {
    fn get(&self, digest: &[u8; 32]) -> Option<Arc<Verified>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).get(digest).cloned()
    }

    fn insert(&self, digest: [u8; 32], verified: &Arc<Verified>, now: u64) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_VERIFIED_SESSIONS {
            map.retain(|_, v| v.session.exp > now);
            if map.len() >= MAX_VERIFIED_SESSIONS {
                map.clear();
            }
        }
        map.insert(digest, verified.clone());
    }
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
        m.update(b"|");
    }
    m.finalize().into_bytes().to_vec()
}

impl SessionKeys {
    /// Keys from secret bytes (≥ 32 bytes recommended).
    pub fn new(key: Vec<u8>) -> Self {
        SessionKeys { key, verified: Default::default() }
    }

    /// Issue credentials for `session` (its `akid` is set here).
    pub fn issue(&self, mut session: Session) -> Result<Credentials, SessionError> {
        const B32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        let mut rng = rand::rng();
        session.akid = format!("ASIA{}", (0..16).map(|_| B32[rng.random_range(0..32)] as char).collect::<String>());
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&session).unwrap_or_default());
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac(&self.key, &[b"token", payload.as_bytes()]));
        let session_token = format!("{TOKEN_PREFIX}{payload}.{tag}");
        if session_token.len() > MAX_SESSION_TOKEN {
            return Err(SessionError::TooLarge(session_token.len()));
        }
        Ok(Credentials {
            secret_access_key: self.secret_for(&session.akid, &session_token),
            access_key_id: session.akid,
            session_token,
            expiration: UNIX_EPOCH + Duration::from_secs(session.exp),
        })
    }

    fn secret_for(&self, akid: &str, token: &str) -> String {
        let raw = mac(&self.key, &[b"secret", akid.as_bytes(), token.as_bytes()]);
        base64::engine::general_purpose::STANDARD.encode(raw)[..40].to_string()
    }

    /// Verify a session token presented with access key `akid`, at `now`:
    /// the session, the secret the request must be signed with, and the
    /// caller. A token verified before is found by its digest; its access
    /// key and expiry are checked on every call.
    pub fn verify(&self, akid: &str, token: &str, now: SystemTime) -> Result<Arc<Verified>, SessionError> {
        if token.len() > MAX_SESSION_TOKEN {
            return Err(SessionError::Invalid);
        }
        let now = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let verified = match self.verified.get(&digest) {
            Some(hit) => hit,
            None => {
                let session = self.authenticate(token)?;
                let secret = self.secret_for(&session.akid, token);
                let identity = Identity::new(session.iss.clone(), session.sub.clone(), session.claims.clone());
                let verified = Arc::new(Verified { session, secret, identity });
                if now < verified.session.exp {
                    self.verified.insert(digest, &verified, now);
                }
                verified
            }
        };
        if verified.session.akid != akid {
            return Err(SessionError::Invalid);
        }
        if now >= verified.session.exp {
            return Err(SessionError::Expired);
        }
        Ok(verified)
    }

    /// The session a token carries, if its MAC is this key's.
    fn authenticate(&self, token: &str) -> Result<Session, SessionError> {
        let rest = token.strip_prefix(TOKEN_PREFIX).ok_or(SessionError::Invalid)?;
        let (payload, tag) = rest.split_once('.').ok_or(SessionError::Invalid)?;
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(tag).map_err(|_| SessionError::Invalid)?;
        let expected = mac(&self.key, &[b"token", payload.as_bytes()]);
        if !bool::from(expected.ct_eq(&tag)) {
            return Err(SessionError::Invalid);
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).map_err(|_| SessionError::Invalid)?;
        serde_json::from_slice(&raw).map_err(|_| SessionError::Invalid)
    }
}

/// ISO 8601 with seconds, as STS writes `Expiration`.
pub fn iso8601(t: SystemTime) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from(t).format(&fmt).unwrap_or_default()
}

/// Escape text for XML element content.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

impl Session {
    /// Account id of the role.
    pub fn account(&self) -> &str {
        self.role.split(':').nth(4).filter(|a| !a.is_empty()).unwrap_or("000000000000")
    }

    /// `arn:aws:sts::<account>:assumed-role/<role>/<session>`.
    pub fn assumed_role_arn(&self) -> String {
        let role_name = self.role.rsplit('/').next().unwrap_or("role");
        format!("arn:aws:sts::{}:assumed-role/{role_name}/{}", self.account(), self.name)
    }

    /// `AROA…` id derived from the access key id.
    pub fn role_id(&self) -> String {
        format!("AROA{}", self.akid.get(4..).unwrap_or_default())
    }
}

/// The STS XML response for `GetCallerIdentity` of a Veil session.
pub fn caller_identity_response(session: &Session, request_id: &str) -> String {
    format!(
        "<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><GetCallerIdentityResult>\
<Arn>{arn}</Arn><UserId>{rid}:{name}</UserId><Account>{account}</Account>\
</GetCallerIdentityResult><ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></GetCallerIdentityResponse>",
        arn = xml_escape(&session.assumed_role_arn()),
        rid = session.role_id(),
        name = xml_escape(&session.name),
        account = xml_escape(session.account()),
    )
}

/// The STS XML response for `AssumeRoleWithWebIdentity`.
pub fn assume_role_response(creds: &Credentials, session: &Session, audience: &str, request_id: &str) -> String {
    let assumed_arn = session.assumed_role_arn();
    let role_id = format!("AROA{}", &creds.access_key_id[4..]);
    format!(
        "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
<AssumeRoleWithWebIdentityResult>\
<SubjectFromWebIdentityToken>{sub}</SubjectFromWebIdentityToken>\
<Audience>{aud}</Audience>\
<AssumedRoleUser><Arn>{arn}</Arn><AssumedRoleId>{rid}:{name}</AssumedRoleId></AssumedRoleUser>\
<Credentials><SessionToken>{tok}</SessionToken><SecretAccessKey>{secret}</SecretAccessKey>\
<Expiration>{exp}</Expiration><AccessKeyId>{akid}</AccessKeyId></Credentials>\
<Provider>{iss}</Provider>\
</AssumeRoleWithWebIdentityResult>\
<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>\
</AssumeRoleWithWebIdentityResponse>",
        sub = xml_escape(&session.sub),
        aud = xml_escape(audience),
        arn = xml_escape(&assumed_arn),
        rid = role_id,
        name = xml_escape(&session.name),
        tok = xml_escape(&creds.session_token),
        secret = xml_escape(&creds.secret_access_key),
        exp = iso8601(creds.expiration),
        akid = creds.access_key_id,
        iss = xml_escape(&session.iss),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(exp: u64) -> Session {
        Session {
            akid: String::new(),
            iss: "https://i".into(),
            sub: "agent".into(),
            claims: serde_json::json!({"groups": ["a"]}),
            role: "arn:aws:iam::123456789012:role/agent".into(),
            name: "s1".into(),
            exp,
        }
    }

    /// Keys, now, an expiry ten minutes on, and a session issued until then.
    fn issued() -> (SessionKeys, SystemTime, u64, Credentials) {
        let keys = SessionKeys::new(vec![7; 32]);
        let now = SystemTime::now();
        let exp = now.duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
        let creds = keys.issue(session(exp)).unwrap();
        (keys, now, exp, creds)
    }

    #[test]
    fn issued_sessions_verify_and_tampering_does_not() {
        let (keys, now, exp, creds) = issued();
        assert!(creds.access_key_id.starts_with("ASIA"));
        let v = keys.verify(&creds.access_key_id, &creds.session_token, now).unwrap();
        assert_eq!(v.secret, creds.secret_access_key);
        assert_eq!((v.session.sub.as_str(), v.identity.subject.as_str(), v.identity.issuer.as_str()), ("agent", "agent", "https://i"));
        // Another replica with the same key verifies it too; another key does not.
        assert!(SessionKeys::new(vec![7; 32]).verify(&creds.access_key_id, &creds.session_token, now).is_ok());
        assert_eq!(SessionKeys::new(vec![8; 32]).verify(&creds.access_key_id, &creds.session_token, now).err(), Some(SessionError::Invalid));
        // Wrong access key, flipped payload byte, expiry: the token is
        // remembered now, and each is still refused.
        assert_eq!(keys.verify("ASIAOTHER", &creds.session_token, now).err(), Some(SessionError::Invalid));
        let mut t = creds.session_token.clone().into_bytes();
        t[10] = if t[10] == b'A' { b'B' } else { b'A' };
        assert_eq!(keys.verify(&creds.access_key_id, &String::from_utf8(t).unwrap(), now).err(), Some(SessionError::Invalid));
        let later = now + Duration::from_secs(601);
        assert_eq!(keys.verify(&creds.access_key_id, &creds.session_token, later).err(), Some(SessionError::Expired));
        assert_eq!(keys.verify(&creds.access_key_id, "garbage", now).err(), Some(SessionError::Invalid));
        // A token first seen after its expiry is refused and not remembered.
        let old = keys.issue(session(exp - 700)).unwrap();
        assert_eq!(keys.verify(&old.access_key_id, &old.session_token, now).err(), Some(SessionError::Expired));
        assert!(keys.verified.get(&Sha256::digest(old.session_token.as_bytes()).into()).is_none());
    }

    #[test]
    fn remembered_sessions_are_bounded() {
        let (keys, now, exp, creds) = issued();
        let v = keys.verify(&creds.access_key_id, &creds.session_token, now).unwrap();
        let cache = VerifiedSessions::default();
        for i in 0..MAX_VERIFIED_SESSIONS as u32 + 1 {
            let mut digest = [0u8; 32];
            digest[..4].copy_from_slice(&i.to_le_bytes());
            cache.insert(digest, &v, exp - 600);
        }
        // Full of live sessions: cleared, then the newest kept.
        assert_eq!(cache.0.lock().unwrap().len(), 1);
    }

    #[test]
    fn oversize_claims_are_refused() {
        let keys = SessionKeys::new(vec![7; 32]);
        let mut s = session(u64::MAX / 2);
        s.claims = serde_json::json!({"big": "x".repeat(20_000)});
        assert!(matches!(keys.issue(s), Err(SessionError::TooLarge(_))));
    }
}
