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
//! Storage is behind [`Store`], with two implementations of the same
//! semantics (one pending entry per fingerprint, a grant consumed once, the
//! decision rules of [`Entry::decide`]):
//!
//! - [`FileStore`] (the default, one gateway): entries in memory, every
//!   change persisted to one JSON file (write, fsync, rename), so pending
//!   approvals survive a restart.
//! - [`PgStore`] (`[approvals.postgres]`, several gateways): entries in a
//!   PostgreSQL table. A partial unique index keeps one pending entry per
//!   fingerprint, a conditional `UPDATE … WHERE state = 'approved' …
//!   RETURNING` hands a grant to exactly one call in the cluster, and
//!   `NOTIFY` tells every gateway's waiting calls that an entry changed.
//!
//! Each store owns the [`Wakeups`] its waiting calls sleep on: the file
//! store wakes them itself, the PostgreSQL store also from the
//! notifications of other gateways. Waiters re-read their entry every
//! [`RECHECK`] as well, a safety net for a lost notification, never a tight
//! poll. Only calls that need an approval touch a store.
//!
//! Every transition is reported once, by whoever made it: the store
//! operation that succeeds returns the entry, and only its caller writes the
//! audit record and posts the webhook.

mod file;
pub mod postgres;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

pub use file::FileStore;
pub use postgres::{PgSettings, PgStartError, PgStore};

/// How often a waiting call re-reads its entry even without a wake-up: the
/// safety net for a notification lost with a dropped connection. Wake-ups
/// make a decision visible at once; this only bounds how late a lost one is.
pub const RECHECK: Duration = Duration::from_secs(5);

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

impl State {
    /// The name used in JSON and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Used => "used",
        }
    }

    /// The state named `s`.
    pub fn parse(s: &str) -> Option<State> {
        [State::Pending, State::Approved, State::Denied, State::Expired, State::Used].into_iter().find(|st| st.as_str() == s)
    }
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

    /// Apply a reviewer's decision: the rules every store enforces, in one
    /// place. Only a pending, unexpired entry takes decisions; the requester
    /// cannot decide their own call; each reviewer decides once; a denial
    /// needs a reason and ends it; `min_approvals` distinct approvals grant it.
    pub fn decide(&mut self, d: Decision) -> Result<(), ApprovalError> {
        if self.state != State::Pending || self.expires_ms <= d.at_ms {
            let state = if self.state == State::Pending { State::Expired } else { self.state };
            return Err(ApprovalError::NotPending { id: self.id.clone(), state });
        }
        if d.reviewer == self.subject && d.issuer == self.issuer {
            return Err(ApprovalError::SelfApproval);
        }
        if self.decisions.iter().any(|x| x.reviewer == d.reviewer && x.issuer == d.issuer) {
            return Err(ApprovalError::AlreadyDecided(d.reviewer));
        }
        if !d.approve && d.reason.trim().is_empty() {
            return Err(ApprovalError::ReasonRequired);
        }
        let approve = d.approve;
        self.decisions.push(d);
        if !approve {
            self.state = State::Denied;
        } else if self.approvers().len() as u32 >= self.min_approvals.max(1) {
            self.state = State::Approved;
        }
        Ok(())
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

/// What [`Store::request`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The pending entry the call now waits on.
    pub entry: Entry,
    /// Whether this call created it (false: it joined an existing one).
    pub created: bool,
    /// Entries for the same fingerprint still marked pending past their
    /// expiry, expired here to make room (the caller audits the expiry).
    pub expired: Vec<Entry>,
}

/// The storage operations approvals need. Every operation is atomic, also
/// across the gateways sharing a store: of several callers racing for one
/// transition, exactly one gets the entry back.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// Join the pending entry for `new.fingerprint`, or store `new` as the
    /// one (a stale pending entry of that fingerprint is expired first).
    async fn request(&self, new: Entry) -> Result<Opened, ApprovalError>;
    /// One entry.
    async fn get(&self, id: &str) -> Result<Option<Entry>, ApprovalError>;
    /// Every entry in `state`, oldest first.
    async fn list(&self, state: State) -> Result<Vec<Entry>, ApprovalError>;
    /// Record a reviewer's decision ([`Entry::decide`]); returns the updated
    /// entry and wakes the calls waiting on it.
    async fn decide(&self, id: &str, decision: Decision) -> Result<Entry, ApprovalError>;
    /// Consume the unexpired approved grant for `fingerprint`, once.
    async fn take_grant(&self, fingerprint: &str, now_ms: u64) -> Result<Option<Entry>, ApprovalError>;
    /// Mark pending and approved entries past their expiry as expired and
    /// return them; forget finished entries a day after they expired.
    async fn expire(&self, now_ms: u64) -> Result<Vec<Entry>, ApprovalError>;
    /// Where the calls waiting on this store's entries sleep.
    fn wakeups(&self) -> &Arc<Wakeups>;
}

/// Calls waiting for a decision, by approval id. A store wakes the waiters
/// of an entry when it may have changed; they then re-read it.
#[derive(Default)]
pub struct Wakeups {
    waiting: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Wakeups {
    /// Register a waiter on `id` (unregistered when the [`Watch`] drops).
    pub fn watch(self: &Arc<Self>, id: &str) -> Watch {
        let mut m = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let notify = m.entry(id.to_string()).or_default().clone();
        Watch { wakeups: self.clone(), id: id.to_string(), notify }
    }

    /// Wake the waiters on `id`, if any.
    pub fn wake(&self, id: &str) {
        if let Some(n) = self.waiting.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            n.notify_waiters();
        }
    }

    /// Wake every waiter: notifications may have been missed.
    pub fn wake_all(&self) {
        for n in self.waiting.lock().unwrap_or_else(|p| p.into_inner()).values() {
            n.notify_waiters();
        }
    }

    /// How many approvals have waiters (for tests).
    pub fn watched(&self) -> usize {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// One waiter's registration with [`Wakeups`].
pub struct Watch {
    wakeups: Arc<Wakeups>,
    id: String,
    notify: Arc<Notify>,
}

impl Watch {
    /// The next wake-up (see [`Notify::notified`]: enable it before reading
    /// the entry, so that a wake-up in between is not lost).
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut m = self.wakeups.waiting.lock().unwrap_or_else(|p| p.into_inner());
        // The map holds one reference and every Watch one; all are made and
        // dropped under this lock, so 2 means this is the last waiter.
        if Arc::strong_count(&self.notify) == 2 {
            m.remove(&self.id);
        }
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

/// Approvals: the store, its settings, and how calls wait on it.
pub struct Approvals {
    /// Storage.
    pub store: Box<dyn Store>,
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
    /// Still pending (or expired, or its grant taken by another call) after the wait.
    TimedOut(Entry),
}

impl Approvals {
    /// Approvals over `store`.
    pub fn new(store: Box<dyn Store>, wait: Duration, ttl: Duration, min_approvals: u32) -> Approvals {
        Approvals { store, wait, ttl, min_approvals, webhook: None }
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

    /// Record a decision (the store wakes the calls waiting on it).
    pub async fn decide(&self, id: &str, d: Decision) -> Result<Entry, ApprovalError> {
        self.store.decide(id, d).await
    }

    /// Wait up to `self.wait` for entry `id` to be decided; an approval is
    /// consumed for this call if no other call took it first.
    pub async fn wait_for(&self, id: &str, fingerprint: &str) -> Result<Waited, ApprovalError> {
        let deadline = tokio::time::Instant::now() + self.wait;
        let watch = self.store.wakeups().watch(id);
        loop {
            let notified = watch.notified();
            tokio::pin!(notified);
            // Registered before the read: a wake-up between the read and
            // the select below is kept, not lost.
            notified.as_mut().enable();
            let e = self.store.get(id).await?.ok_or_else(|| ApprovalError::NotFound(id.into()))?;
            match e.state {
                State::Approved => {
                    if let Some(g) = self.store.take_grant(fingerprint, now_ms()).await? {
                        return Ok(Waited::Granted(g));
                    }
                    // Another waiter with the same call took it: this one waits for a new approval.
                    return Ok(Waited::TimedOut(e));
                }
                State::Denied => return Ok(Waited::Denied(e)),
                State::Expired | State::Used => return Ok(Waited::TimedOut(e)),
                State::Pending => {}
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Waited::TimedOut(e));
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until((now + RECHECK).min(deadline)) => {}
            }
        }
    }
}

/// The semantics every store must have, as scenarios over two
/// [`Approvals`] that share one store (two gateways, or one twice for the
/// file store). The file store runs them here, the PostgreSQL store in
/// `postgres::tests` against a real server.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;
    use serde_json::json;

    pub fn request_entry(a: &Approvals, subject: &str, params: Value) -> Entry {
        let r = Requested { issuer: "iss", subject, role: "arn:aws:iam::1:role/r", operation: "iam:CreateUser", region: "us-east-1", params: &params, request_digest: "d" };
        a.entry(&r, "", params.clone(), vec!["r: why".into()])
    }

    pub async fn request(a: &Approvals, params: Value) -> (Entry, bool) {
        let o = a.store.request(request_entry(a, "agent", params)).await.unwrap();
        (o.entry, o.created)
    }

    pub fn decision(who: &str, approve: bool) -> Decision {
        Decision { reviewer: who.into(), issuer: "iss".into(), approve, reason: "ok".into(), at_ms: now_ms() }
    }

    /// Identical calls join one entry on either gateway; a grant admits one.
    pub async fn retries_join_and_a_grant_admits_one_call(a: &Approvals, b: &Approvals) {
        let (e, created) = request(a, json!({"UserName": "x"})).await;
        assert!(created);
        let (again, created) = request(b, json!({"UserName": "x"})).await;
        assert!(!created);
        assert_eq!(again.id, e.id);
        let (other, created) = request(a, json!({"UserName": "y"})).await;
        assert!(created && other.id != e.id, "changed parameters need a new approval");
        assert_eq!(b.decide(&e.id, decision("agent", true)).await, Err(ApprovalError::SelfApproval));
        b.decide(&e.id, decision("alice", true)).await.unwrap();
        assert!(matches!(a.wait_for(&e.id, &e.fingerprint).await.unwrap(), Waited::Granted(_)));
        assert_eq!(b.store.take_grant(&e.fingerprint, now_ms()).await.unwrap(), None, "used once");
        assert_eq!(a.store.get(&e.id).await.unwrap().unwrap().state, State::Used);
        assert!(matches!(b.decide(&e.id, decision("bob", true)).await, Err(ApprovalError::NotPending { .. })));
        assert_eq!(b.decide("apr-none", decision("bob", true)).await, Err(ApprovalError::NotFound("apr-none".into())));
        let pending: Vec<String> = b.store.list(State::Pending).await.unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(pending, vec![other.id]);
    }

    /// `min_approvals` = 2 (both gateways' settings): two distinct reviewers,
    /// each once; a denial needs a reason and ends the entry.
    pub async fn two_person_rule_and_denials(a: &Approvals, b: &Approvals) {
        let (e, _) = request(a, json!({})).await;
        assert_eq!(a.decide(&e.id, decision("alice", true)).await.unwrap().state, State::Pending);
        assert_eq!(b.decide(&e.id, decision("alice", true)).await, Err(ApprovalError::AlreadyDecided("alice".into())));
        assert!(matches!(b.wait_for(&e.id, &e.fingerprint).await.unwrap(), Waited::TimedOut(_)));
        let approved = b.decide(&e.id, decision("bob", true)).await.unwrap();
        assert_eq!(approved.state, State::Approved);
        assert_eq!(approved.approvers(), vec!["alice".to_string(), "bob".to_string()]);
        let (e2, _) = request(b, json!({"n": 1})).await;
        let mut no_reason = decision("carol", false);
        no_reason.reason = " ".into();
        assert_eq!(a.decide(&e2.id, no_reason).await, Err(ApprovalError::ReasonRequired));
        assert_eq!(a.store.get(&e2.id).await.unwrap().unwrap().decisions, Vec::new(), "a refused decision changes nothing");
        assert_eq!(a.decide(&e2.id, decision("carol", false)).await.unwrap().state, State::Denied);
        assert!(matches!(b.wait_for(&e2.id, &e2.fingerprint).await.unwrap(), Waited::Denied(_)));
        assert_eq!(b.store.take_grant(&e2.fingerprint, now_ms()).await.unwrap(), None);
    }

    /// Expired entries admit nothing and take no decisions; each expiry is
    /// reported once; a stale pending entry makes room for a new one.
    pub async fn expiry(a: &Approvals, b: &Approvals) {
        let (e, _) = request(a, json!({"k": "granted"})).await;
        a.decide(&e.id, decision("alice", true)).await.unwrap();
        let later = e.expires_ms + 1;
        assert_eq!(b.store.take_grant(&e.fingerprint, later).await.unwrap(), None);
        let (p, _) = request(b, json!({"k": "pending"})).await;
        let mut late = decision("alice", true);
        late.at_ms = p.expires_ms;
        assert!(matches!(a.decide(&p.id, late).await, Err(ApprovalError::NotPending { state: State::Expired, .. })));
        // The next identical call after the expiry, before any sweep.
        let mut again = request_entry(a, "agent", json!({"k": "pending"}));
        again.created_ms = p.expires_ms;
        again.expires_ms = p.expires_ms + 60_000;
        let opened = b.store.request(again.clone()).await.unwrap();
        assert!(opened.created, "a stale pending entry is not joined");
        assert_eq!(opened.entry.id, again.id);
        assert_eq!(opened.expired.iter().map(|x| x.id.clone()).collect::<Vec<_>>(), vec![p.id.clone()]);
        let (x, y) = tokio::join!(a.store.expire(later), b.store.expire(later));
        let mut swept: Vec<String> = x.unwrap().into_iter().chain(y.unwrap()).map(|e| e.id).collect();
        swept.sort();
        assert_eq!(swept, vec![e.id.clone()], "each expiry reported once");
        assert_eq!(a.store.get(&e.id).await.unwrap().unwrap().state, State::Expired);
        assert_eq!(a.store.get(&p.id).await.unwrap().unwrap().state, State::Expired);
        // A day later, finished entries are forgotten; live ones stay.
        let day = later + 86_400_000;
        a.store.expire(day).await.unwrap();
        assert_eq!(b.store.get(&e.id).await.unwrap(), None);
    }

    /// A call waiting on one gateway is woken by a decision on the other at
    /// once, not at the next re-check.
    pub async fn a_decision_wakes_waiters_at_once(a: &Approvals, b: &Approvals) {
        let (e, _) = request(a, json!({"wake": 1})).await;
        let started = std::time::Instant::now();
        let waiter = a.wait_for(&e.id, &e.fingerprint);
        let decider = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            b.decide(&e.id, decision("alice", true)).await.unwrap();
        };
        let (waited, ()) = tokio::join!(waiter, decider);
        assert!(matches!(waited.unwrap(), Waited::Granted(_)));
        assert!(started.elapsed() < Duration::from_millis(1300), "woken after {:?}", started.elapsed());
        assert_eq!(a.store.wakeups().watched(), 0, "waiters unregister");
    }

    /// Many identical calls at once on both gateways: one entry, and its
    /// grant admits exactly one of them. Several rounds, since a race lost
    /// by a broken store shows only some of the time.
    pub async fn races_have_one_winner(a: &Approvals, b: &Approvals) {
        for round in 0..30 {
            let entries: Vec<Entry> = (0..20).map(|_| request_entry(a, "racer", json!({"race": round}))).collect();
            let opened = futures_util::future::join_all(
                entries.into_iter().enumerate().map(|(i, e)| async move { if i % 2 == 0 { a.store.request(e).await } else { b.store.request(e).await } }),
            )
            .await;
            let opened: Vec<Opened> = opened.into_iter().map(Result::unwrap).collect();
            assert_eq!(opened.iter().filter(|o| o.created).count(), 1, "one pending entry per fingerprint");
            let id = opened[0].entry.id.clone();
            assert!(opened.iter().all(|o| o.entry.id == id));
            let fp = opened[0].entry.fingerprint.clone();
            a.decide(&id, decision("alice", true)).await.unwrap();
            let taken = futures_util::future::join_all((0..20).map(|i| {
                let fp = fp.clone();
                async move { if i % 2 == 0 { a.store.take_grant(&fp, now_ms()).await } else { b.store.take_grant(&fp, now_ms()).await } }
            }))
            .await;
            assert_eq!(taken.into_iter().filter(|t| matches!(t, Ok(Some(_)))).count(), 1, "a grant admits one call (round {round})");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::conformance::{self, request};
    use super::*;
    use serde_json::json;

    fn approvals(dir: &std::path::Path, min: u32) -> Approvals {
        Approvals::new(Box::new(FileStore::open(dir.join("a.json")).unwrap()), Duration::from_millis(200), Duration::from_secs(60), min)
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
    async fn file_store_conformance() {
        for (name, min) in [("join", 1), ("two-person", 2), ("expiry", 1), ("wake", 1), ("race", 1)] {
            let d = tempfile::tempdir().unwrap();
            let mut a = approvals(d.path(), min);
            if name == "wake" {
                a.wait = Duration::from_secs(30);
            }
            match name {
                "join" => conformance::retries_join_and_a_grant_admits_one_call(&a, &a).await,
                "two-person" => conformance::two_person_rule_and_denials(&a, &a).await,
                "expiry" => conformance::expiry(&a, &a).await,
                "wake" => conformance::a_decision_wakes_waiters_at_once(&a, &a).await,
                _ => conformance::races_have_one_winner(&a, &a).await,
            }
        }
    }

    #[tokio::test]
    async fn file_store_keeps_pending_approvals_across_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let (id, fp) = {
            let a = approvals(d.path(), 2);
            let (e, _) = request(&a, json!({})).await;
            assert_eq!(a.decide(&e.id, conformance::decision("alice", true)).await.unwrap().state, State::Pending);
            (e.id, e.fingerprint)
        };
        let a = approvals(d.path(), 2);
        let e = a.store.get(&id).await.unwrap().unwrap();
        assert_eq!((e.state, e.approvers()), (State::Pending, vec!["alice".to_string()]), "survives a restart");
        assert_eq!(a.decide(&id, conformance::decision("bob", true)).await.unwrap().state, State::Approved);
        assert!(matches!(a.wait_for(&id, &fp).await.unwrap(), Waited::Granted(_)));
    }

    #[test]
    fn wakeups_forget_approvals_nobody_waits_for() {
        let w = Arc::<Wakeups>::default();
        let one = w.watch("a");
        let two = w.watch("a");
        let other = w.watch("b");
        assert_eq!(w.watched(), 2);
        drop(one);
        assert_eq!(w.watched(), 2, "a waiter remains on a");
        drop(two);
        drop(other);
        assert_eq!(w.watched(), 0);
    }
}
