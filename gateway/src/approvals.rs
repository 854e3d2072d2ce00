//! Approvals: calls a policy marks approval-required wait for a human.
//!
//! A pending entry is keyed by a fingerprint of identity (issuer, subject),
//! role, operation, region, the canonical parameters and a digest of the
//! request that goes upstream (path, query, forwarded headers, body), so SDK
//! retries of the same call join one approval and any change needs a new one. A reviewer's
//! approval turns the entry into a grant that admits exactly one call with
//! that fingerprint before it expires (`approvals.ttl_secs`); used, denied
//! and expired entries never admit anything.
//!
//! Storage is behind [`Store`]. The embedded [`FileStore`] keeps entries in
//! memory and persists every change to one JSON file (write, fsync, rename),
//! so pending approvals survive a restart. Several gateways need a shared
//! store: an implementation over a database with a conditional update
//! (`UPDATE … WHERE id = ? AND state = 'approved'` to consume a grant
//! exactly once, e.g. PostgreSQL, or ClickHouse's KeeperMap engine) would
//! provide the same five operations; waiters on other gateways then poll
//! [`Store::get`] instead of being woken by the in-process notifier.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

/// Where an approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Waiting for reviewers.
    Pending,
    /// Approved: admits one call.
    Approved,
    /// Denied by a reviewer.
    Denied,
    /// Its time ran out.
    Expired,
    /// Its one call went through.
    Used,
}

/// One reviewer's decision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Decision {
    /// Reviewer subject.
    pub reviewer: String,
    /// Reviewer issuer.
    pub issuer: String,
    /// approve or deny.
    pub approve: bool,
    /// Why.
    pub reason: String,
    /// When, Unix ms.
    pub at_ms: u64,
}

/// A request for approval.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// `apr-…`
    pub id: String,
    /// Identity + operation + canonical parameters hash.
    pub fingerprint: String,
    /// Requester issuer.
    pub issuer: String,
    /// Requester subject.
    pub subject: String,
    /// The role the call runs under (entries from before roles were bound: empty).
    #[serde(default)]
    pub role: String,
    /// `service:Action`.
    pub operation: String,
    /// Region.
    pub region: String,
    /// Main resource.
    pub resource: String,
    /// Parameters, redacted as in audit records.
    pub params: Value,
    /// Digest of the exact request that goes upstream once approved.
    #[serde(default)]
    pub request_digest: String,
    /// The policies' reasons.
    pub reasons: Vec<String>,
    /// Created, Unix ms.
    pub created_ms: u64,
    /// Expires, Unix ms (pending or approved-but-unused).
    pub expires_ms: u64,
    /// State.
    pub state: State,
    /// Decisions so far.
    pub decisions: Vec<Decision>,
    /// Approvals needed.
    pub min_approvals: u32,
}

impl Entry {
    /// Reviewers who approved.
    pub fn approvers(&self) -> Vec<String> {
        self.decisions.iter().filter(|d| d.approve).map(|d| d.reviewer.clone()).collect()
    }

    /// The latest decision time (0 if none).
    pub fn decided_ms(&self) -> u64 {
        self.decisions.iter().map(|d| d.at_ms).max().unwrap_or(0)
    }
}

/// Why an approval operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApprovalError {
    /// No such id.
    #[error("no approval {0}")]
    NotFound(String),
    /// It is no longer pending.
    #[error("approval {id} is {state:?}, not pending")]
    NotPending { id: String, state: State },
    /// The requester tried to approve their own call.
    #[error("a requester cannot decide their own approval")]
    SelfApproval,
    /// The reviewer already decided.
    #[error("reviewer {0} already decided this approval")]
    AlreadyDecided(String),
    /// A denial needs a reason.
    #[error("a denial needs a reason")]
    ReasonRequired,
    /// Persisting failed.
    #[error("approval store: {0}")]
    Store(String),
}

/// The storage operations approvals need (see the module docs for a shared store).
pub trait Store: Send + Sync {
    /// The entry for `fingerprint` that is still pending, or a new one from `new`.
    /// Returns the entry and whether it was created.
    fn request(&self, new: Entry) -> Result<(Entry, bool), ApprovalError>;
    /// One entry.
    fn get(&self, id: &str) -> Option<Entry>;
    /// Every entry in `state`.
    fn list(&self, state: State) -> Vec<Entry>;
    /// Record a reviewer's decision; returns the updated entry.
    fn decide(&self, id: &str, decision: Decision) -> Result<Entry, ApprovalError>;
    /// Consume the unexpired approved grant for `fingerprint`, once.
    fn take_grant(&self, fingerprint: &str, now_ms: u64) -> Result<Option<Entry>, ApprovalError>;
    /// Mark pending and approved entries past their expiry as expired; returns them.
    fn expire(&self, now_ms: u64) -> Result<Vec<Entry>, ApprovalError>;
}

/// The embedded store: memory + one JSON file.
pub struct FileStore {
    path: PathBuf,
    entries: Mutex<BTreeMap<String, Entry>>,
}

impl FileStore {
    /// Open (or create) the store at `path`.
    pub fn open(path: PathBuf) -> Result<FileStore, ApprovalError> {
        let entries = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ApprovalError::Store(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(ApprovalError::Store(format!("{}: {e}", path.display()))),
        };
        Ok(FileStore { path, entries: Mutex::new(entries) })
    }

    fn save(&self, entries: &BTreeMap<String, Entry>) -> Result<(), ApprovalError> {
        use std::io::Write;
        let err = |e: std::io::Error| ApprovalError::Store(format!("{}: {e}", self.path.display()));
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&serde_json::to_vec(entries).unwrap_or_default()).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Entry>) -> Result<(R, bool), ApprovalError>) -> Result<R, ApprovalError> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut copy = entries.clone();
        let (r, changed) = f(&mut copy)?;
        if changed {
            // Persist first: memory changes only once the file has them.
            self.save(&copy)?;
            *entries = copy;
        }
        Ok(r)
    }
}

impl Store for FileStore {
    fn request(&self, new: Entry) -> Result<(Entry, bool), ApprovalError> {
        self.with(|m| {
            if let Some(e) = m.values().find(|e| e.fingerprint == new.fingerprint && e.state == State::Pending && e.expires_ms > new.created_ms) {
                return Ok(((e.clone(), false), false));
            }
            m.insert(new.id.clone(), new.clone());
            Ok(((new, true), true))
        })
    }

    fn get(&self, id: &str) -> Option<Entry> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    fn list(&self, state: State) -> Vec<Entry> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).values().filter(|e| e.state == state).cloned().collect()
    }

    fn decide(&self, id: &str, d: Decision) -> Result<Entry, ApprovalError> {
        self.with(|m| {
            let e = m.get_mut(id).ok_or_else(|| ApprovalError::NotFound(id.into()))?;
            if e.state != State::Pending || e.expires_ms <= d.at_ms {
                let state = if e.state == State::Pending { State::Expired } else { e.state };
                return Err(ApprovalError::NotPending { id: id.into(), state });
            }
            if d.reviewer == e.subject && d.issuer == e.issuer {
                return Err(ApprovalError::SelfApproval);
            }
            if e.decisions.iter().any(|x| x.reviewer == d.reviewer && x.issuer == d.issuer) {
                return Err(ApprovalError::AlreadyDecided(d.reviewer));
            }
            if !d.approve && d.reason.trim().is_empty() {
                return Err(ApprovalError::ReasonRequired);
            }
            let approve = d.approve;
            e.decisions.push(d);
            if !approve {
                e.state = State::Denied;
            } else if e.approvers().len() as u32 >= e.min_approvals.max(1) {
                e.state = State::Approved;
            }
            Ok((e.clone(), true))
        })
    }

    fn take_grant(&self, fingerprint: &str, now_ms: u64) -> Result<Option<Entry>, ApprovalError> {
        self.with(|m| {
            let Some(e) = m.values_mut().find(|e| e.fingerprint == fingerprint && e.state == State::Approved && e.expires_ms > now_ms) else {
                return Ok((None, false));
            };
            e.state = State::Used;
            Ok((Some(e.clone()), true))
        })
    }

    fn expire(&self, now_ms: u64) -> Result<Vec<Entry>, ApprovalError> {
        self.with(|m| {
            let mut out = Vec::new();
            for e in m.values_mut() {
                if matches!(e.state, State::Pending | State::Approved) && e.expires_ms <= now_ms {
                    e.state = State::Expired;
                    out.push(e.clone());
                }
            }
            // Forget finished entries a day after they expired.
            let before = m.len();
            m.retain(|_, e| matches!(e.state, State::Pending | State::Approved) || e.expires_ms + 86_400_000 > now_ms);
            let changed = !out.is_empty() || m.len() != before;
            Ok((out, changed))
        })
    }
}

/// Unix ms now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// What an approval is for: exactly one forwarded request, by whom, under
/// which role.
#[derive(Debug, Clone, Copy)]
pub struct Requested<'a> {
    /// Requester issuer.
    pub issuer: &'a str,
    /// Requester subject.
    pub subject: &'a str,
    /// The role (hence account) the call runs under.
    pub role: &'a str,
    /// `service:Action`.
    pub operation: &'a str,
    /// Region.
    pub region: &'a str,
    /// Canonical parameters, as policies saw them.
    pub params: &'a Value,
    /// Digest of the request that goes upstream: method, path, query, the
    /// forwarded headers and the body ([`crate::aws::Forward::digest`]).
    pub request_digest: &'a str,
}

impl Requested<'_> {
    /// The fingerprint: every part above, so a different body, header,
    /// role or region needs a new approval (serde_json maps are sorted, so
    /// equal parameters serialise equally).
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for part in [self.issuer, self.subject, self.role, self.operation, self.region, self.request_digest] {
            h.update(part.len().to_be_bytes());
            h.update(part.as_bytes());
        }
        h.update(self.params.to_string().as_bytes());
        hex::encode(h.finalize())
    }
}

/// Notifications to a chat webhook (Slack-compatible JSON: a `text` field,
/// plus the approval's fields for other receivers).
pub struct Webhook {
    url: http::Uri,
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        http_body_util::Full<bytes::Bytes>,
    >,
}

impl Webhook {
    /// A webhook posting to `url`.
    pub fn new(url: &str) -> Result<Webhook, String> {
        let url: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| e.to_string())?
            .https_or_http()
            .enable_http1()
            .build();
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
        Ok(Webhook { url, client })
    }

    /// Post one event, in the background (5 s timeout; failures are logged).
    pub fn notify(&self, step: &str, e: &Entry) {
        let text = format!(
            "Veil approval {step}: {} — {} by {} ({}){}",
            e.id,
            e.operation,
            e.subject,
            e.reasons.join("; "),
            match e.decisions.last() {
                Some(d) if step != "requested" => format!(" — {} by {}: {}", if d.approve { "approved" } else { "denied" }, d.reviewer, d.reason),
                _ => String::new(),
            }
        );
        let body = serde_json::json!({
            "text": text,
            "approval_id": e.id,
            "step": step,
            "operation": e.operation,
            "requester": e.subject,
            "reasons": e.reasons,
            "reviewers": e.approvers(),
            "expires_ms": e.expires_ms,
        });
        let req = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())));
        let Ok(req) = req else { return };
        let client = self.client.clone();
        let id = e.id.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
                Ok(Ok(r)) if r.status().is_success() => {}
                Ok(Ok(r)) => tracing::warn!(approval = %id, status = r.status().as_u16(), "approval webhook refused the notification"),
                Ok(Err(err)) => tracing::warn!(approval = %id, error = %err, "approval webhook unreachable"),
                Err(_) => tracing::warn!(approval = %id, "approval webhook timed out"),
            }
        });
    }
}

/// Approvals: the store plus in-process wake-ups for waiting calls.
pub struct Approvals {
    /// Storage.
    pub store: Box<dyn Store>,
    changed: Notify,
    /// How long a call waits for a decision.
    pub wait: Duration,
    /// How long an approval (pending or granted) lives.
    pub ttl: Duration,
    /// Approvals needed per call.
    pub min_approvals: u32,
    /// Where requests and decisions are announced.
    pub webhook: Option<Webhook>,
}

/// How a wait ended.
#[derive(Debug)]
pub enum Waited {
    /// Approved: the grant was consumed for this call.
    Granted(Entry),
    /// Denied.
    Denied(Entry),
    /// Still pending (or expired) after the wait.
    TimedOut(Entry),
}

impl Approvals {
    /// Approvals over `store`.
    pub fn new(store: Box<dyn Store>, wait: Duration, ttl: Duration, min_approvals: u32) -> Approvals {
        Approvals { store, changed: Notify::new(), wait, ttl, min_approvals, webhook: None }
    }

    /// A new entry (not stored).
    #[allow(clippy::too_many_arguments)]
    pub fn entry(&self, r: &Requested<'_>, resource: &str, shown_params: Value, reasons: Vec<String>) -> Entry {
        let now = now_ms();
        Entry {
            // The whole UUIDv7: its counter bits (past the first 20 hex digits) keep
            // two requests within one millisecond apart.
            id: format!("apr-{}", uuid::Uuid::now_v7().simple()),
            fingerprint: r.fingerprint(),
            issuer: r.issuer.into(),
            subject: r.subject.into(),
            role: r.role.into(),
            operation: r.operation.into(),
            region: r.region.into(),
            resource: resource.into(),
            params: shown_params,
            request_digest: r.request_digest.into(),
            reasons,
            created_ms: now,
            expires_ms: now + self.ttl.as_millis() as u64,
            state: State::Pending,
            decisions: Vec::new(),
            min_approvals: self.min_approvals,
        }
    }

    /// Record a decision and wake waiting calls.
    pub fn decide(&self, id: &str, d: Decision) -> Result<Entry, ApprovalError> {
        let e = self.store.decide(id, d)?;
        self.changed.notify_waiters();
        Ok(e)
    }

    /// Wait up to `self.wait` for entry `id` to be decided.
    pub async fn wait_for(&self, id: &str, fingerprint: &str) -> Result<Waited, ApprovalError> {
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let e = self.store.get(id).ok_or_else(|| ApprovalError::NotFound(id.into()))?;
            match e.state {
                State::Approved => {
                    if let Some(g) = self.store.take_grant(fingerprint, now_ms())? {
                        return Ok(Waited::Granted(g));
                    }
                    // Another waiter with the same call took it: this one waits for a new approval.
                    return Ok(Waited::TimedOut(e));
                }
                State::Denied => return Ok(Waited::Denied(e)),
                State::Expired | State::Used => return Ok(Waited::TimedOut(e)),
                State::Pending => {}
            }
            // Poll as well, for stores shared with other gateways.
            let poll = tokio::time::Instant::now() + Duration::from_millis(500);
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(poll.min(deadline)) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                let e = self.store.get(id).ok_or_else(|| ApprovalError::NotFound(id.into()))?;
                if e.state == State::Pending {
                    return Ok(Waited::TimedOut(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn approvals(dir: &std::path::Path, min: u32) -> Approvals {
        Approvals::new(Box::new(FileStore::open(dir.join("a.json")).unwrap()), Duration::from_millis(200), Duration::from_secs(60), min)
    }

    fn request(a: &Approvals, params: Value) -> (Entry, bool) {
        let r = Requested { issuer: "iss", subject: "agent", role: "arn:aws:iam::1:role/r", operation: "iam:CreateUser", region: "us-east-1", params: &params, request_digest: "d" };
        a.store.request(a.entry(&r, "", params.clone(), vec!["r: why".into()])).unwrap()
    }

    fn decision(who: &str, approve: bool) -> Decision {
        Decision { reviewer: who.into(), issuer: "iss".into(), approve, reason: "ok".into(), at_ms: now_ms() }
    }

    #[test]
    fn ids_are_unique_within_a_millisecond() {
        let d = tempfile::tempdir().unwrap();
        let a = approvals(d.path(), 1);
        let ids: std::collections::HashSet<String> =
            (0..1000).map(|_| a.entry(&Requested { issuer: "iss", subject: "agent", role: "", operation: "iam:CreateUser", region: "us-east-1", params: &json!({}), request_digest: "" }, "", json!({}), Vec::new()).id).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[tokio::test]
    async fn retries_join_and_a_grant_admits_one_call() {
        let d = tempfile::tempdir().unwrap();
        let a = approvals(d.path(), 1);
        let (e, created) = request(&a, json!({"UserName": "x"}));
        assert!(created);
        let (again, created) = request(&a, json!({"UserName": "x"}));
        assert!(!created);
        assert_eq!(again.id, e.id);
        let (other, created) = request(&a, json!({"UserName": "y"}));
        assert!(created && other.id != e.id, "changed parameters need a new approval");
        assert_eq!(a.decide(&e.id, decision("agent", true)), Err(ApprovalError::SelfApproval));
        a.decide(&e.id, decision("alice", true)).unwrap();
        assert!(matches!(a.wait_for(&e.id, &e.fingerprint).await.unwrap(), Waited::Granted(_)));
        assert_eq!(a.store.take_grant(&e.fingerprint, now_ms()).unwrap(), None, "used once");
        assert!(matches!(a.decide(&e.id, decision("bob", true)), Err(ApprovalError::NotPending { .. })));
    }

    #[tokio::test]
    async fn two_person_rule_denials_and_persistence() {
        let d = tempfile::tempdir().unwrap();
        let (id, fp) = {
            let a = approvals(d.path(), 2);
            let (e, _) = request(&a, json!({}));
            assert_eq!(a.decide(&e.id, decision("alice", true)).unwrap().state, State::Pending);
            assert_eq!(a.decide(&e.id, decision("alice", true)), Err(ApprovalError::AlreadyDecided("alice".into())));
            (e.id, e.fingerprint)
        };
        let a = approvals(d.path(), 2);
        assert_eq!(a.store.get(&id).unwrap().state, State::Pending, "survives a restart");
        assert!(matches!(a.wait_for(&id, &fp).await.unwrap(), Waited::TimedOut(_)));
        assert_eq!(a.decide(&id, decision("bob", true)).unwrap().state, State::Approved);
        let (e2, _) = request(&a, json!({"n": 1}));
        let mut no_reason = decision("carol", false);
        no_reason.reason = " ".into();
        assert_eq!(a.decide(&e2.id, no_reason), Err(ApprovalError::ReasonRequired));
        assert_eq!(a.decide(&e2.id, decision("carol", false)).unwrap().state, State::Denied);
        assert!(matches!(a.wait_for(&e2.id, &e2.fingerprint).await.unwrap(), Waited::Denied(_)));
    }

    #[test]
    fn expired_entries_cannot_be_used() {
        let d = tempfile::tempdir().unwrap();
        let a = approvals(d.path(), 1);
        let (e, _) = request(&a, json!({}));
        a.decide(&e.id, decision("alice", true)).unwrap();
        let later = e.expires_ms + 1;
        assert_eq!(a.store.take_grant(&e.fingerprint, later).unwrap(), None);
        assert_eq!(a.store.expire(later).unwrap().len(), 1);
        assert_eq!(a.store.get(&e.id).unwrap().state, State::Expired);
    }
}
