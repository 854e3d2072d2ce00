//! The request flow, stage by stage: identify → classify → decide → forward
//! → mask → log. One [`Ctx`] per call; stages return typed [`Failure`]s and
//! [`Failure::to_aws`] is the one place that turns them into AWS-shaped
//! errors. The log phase runs for every call, failed or not.
//!
//! Fail closed: a call that cannot be identified, classified or decided, or
//! whose response cannot be parsed, is refused; a response body is returned
//! only after every policy has seen it and its masks are applied.
//!
//! What is forwarded is what was classified: the forward stage sends
//! [`aws::Forward`], the request classification derived from its own parse
//! (method, path, query, allow-listed headers, a re-serialised body where
//! the protocol allows), never the caller's request as such; the upstream
//! host is built from the checked region and service ([`aws::endpoint`]).
//!
//! Every call ends in an answer and one audit record: [`Gateway::handle`]
//! runs the stages so that a panic anywhere in them (a codec's, the policy
//! host's) becomes [`Failure::Internal`], an AWS-shaped 500, and the log and
//! audit phases still run; the connection stays usable. What policies
//! printed is logged with the request id (target `veil::policy_output`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::FutureExt;
use http::request::Parts;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::approvals::{self, ApprovalError, Approvals, Decision, Entry, Waited};
use crate::audit::{self, Audit, Record, SpoolError};
use crate::aws::endpoint::EndpointError;
use crate::aws::error::AwsError;
use crate::aws::{self, ClassifyError, Protocol, RequestView};
use crate::config::Config;
use crate::identity::{IdentityError, Verifier};
use crate::body::ParsedBody;
use crate::masking::{self, HashKey};
use crate::metrics::{CallLabels, LabelText, Metrics, PolicyLabels, ReloadLabels};
use crate::policy::reload::{self, Loader, Outcome, Rejection};
use crate::policy::{self, CallInput, Identity, Operation, PolicySet, Reason, Verdict};
use crate::sigv4::{self, SigError};
use crate::sts::{self, Session, SessionError, SessionKeys};
use crate::trust::{Roles, TrustError};
use crate::upstream::{self, OutBody, Outgoing, StreamedPayload, Upstream, UpstreamError};

/// Response body type.
pub type RespBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Header naming the service for Bearer-token callers.
pub const SERVICE_HEADER: &str = "x-veil-service";
/// Header naming the region for Bearer-token callers.
pub const REGION_HEADER: &str = "x-veil-region";
/// Header naming the role (ARN) for Bearer-token callers, when several are configured.
pub const ROLE_HEADER: &str = "x-veil-role";
/// Largest STS form body accepted.
const MAX_STS_BODY: usize = 64 * 1024;
/// Longest error message kept in an audit record, in bytes.
const MAX_RECORDED_ERROR: usize = 4096;

/// Streamed response bodies up to this size are read and shown to policies
/// (see `check_stream`); larger ones pass unparsed.
const SHOWN_STREAM_BYTES: usize = 1 << 20;

/// Why a call was refused; rendered by [`Failure::to_aws`].
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// No authentication at all.
    #[error("request carries no authentication (SigV4 with Veil session credentials, or Authorization: Bearer <OIDC token>)")]
    MissingAuth,
    /// The signature did not verify.
    #[error(transparent)]
    Signature(#[from] SigError),
    /// The session token did not verify.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The OIDC token did not verify.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A request field is missing or wrong.
    #[error("{0}")]
    BadRequest(String),
    /// The caller may not use the role (unknown role, issuer or condition).
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// STS refused to mint a session: the caller may not use the role.
    #[error("Not authorized to perform sts:AssumeRoleWithWebIdentity: {0}")]
    NotAuthorizedToAssume(TrustError),
    /// The operation could not be determined.
    #[error(transparent)]
    Classify(#[from] ClassifyError),
    /// A region or service name is not AWS's, or the endpoint built from
    /// them is not the service's.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// A body was larger than the configured cap.
    #[error("{0} body is larger than the gateway's limit of {1} bytes")]
    TooLarge(&'static str, usize),
    /// Policies denied the call or its response.
    #[error("denied by policy: {}", reasons_text(.0))]
    Denied(Vec<Reason>),
    /// Policies want a human's approval and none came within the wait.
    #[error("approval pending, id {id}: {}. A reviewer must approve it (veil approvals approve {id}); then retry exactly the same call, which will go through once", reasons_text(.reasons))]
    ApprovalRequired { id: String, reasons: Vec<Reason> },
    /// A reviewer denied the call.
    #[error("denied by reviewer {reviewer} (approval id {id}): {reason}")]
    ApprovalDenied { id: String, reviewer: String, reason: String },
    /// The approval store failed.
    #[error("approvals are unavailable: {0}")]
    ApprovalStore(#[from] ApprovalError),
    /// AWS could not be reached.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// AWS's response could not be parsed, so it cannot be checked.
    #[error("the upstream response could not be checked by policy and was withheld: {0}")]
    Unparseable(String),
    /// Reading the caller's body failed or timed out.
    #[error("reading the request body failed: {0}")]
    BodyRead(String),
    /// The call cannot be recorded, so it is not made (fail closed).
    #[error("the audit trail cannot record calls, so none are served: {0}")]
    Audit(#[from] SpoolError),
    /// Processing the call panicked (a bug in Veil): the caller gets a
    /// generic message, the audit record and the log get `detail`.
    #[error("Veil failed internally while processing this call; it was stopped and audited")]
    Internal {
        /// The panic's message.
        detail: String,
    },
}

fn reasons_text(r: &[Reason]) -> String {
    r.iter().map(Reason::to_string).collect::<Vec<_>>().join("; ")
}

impl Failure {
    /// The one mapping from failures to AWS-shaped errors.
    pub fn to_aws(&self) -> AwsError {
        use StatusCode as S;
        let msg = self.to_string();
        match self {
            Failure::MissingAuth => AwsError::new(S::FORBIDDEN, "MissingAuthenticationToken", msg),
            Failure::Signature(SigError::Unsupported(_)) => AwsError::new(S::NOT_IMPLEMENTED, "NotImplemented", msg),
            Failure::Signature(SigError::Skew(_)) => AwsError::new(S::FORBIDDEN, "SignatureDoesNotMatch", format!("Signature expired: {msg}")),
            Failure::Signature(SigError::Malformed { .. }) => AwsError::new(S::BAD_REQUEST, "IncompleteSignature", msg),
            Failure::Signature(_) => AwsError::new(S::FORBIDDEN, "SignatureDoesNotMatch", msg),
            Failure::Session(SessionError::Expired) => AwsError::new(S::FORBIDDEN, "ExpiredToken", msg),
            Failure::Session(_) => AwsError::new(S::FORBIDDEN, "InvalidClientTokenId", msg),
            Failure::Identity(IdentityError::Expired(_)) => AwsError::new(S::FORBIDDEN, "ExpiredTokenException", msg),
            Failure::Identity(IdentityError::Discovery { .. }) => AwsError::new(S::SERVICE_UNAVAILABLE, "IDPCommunicationError", msg),
            Failure::Identity(_) => AwsError::new(S::FORBIDDEN, "InvalidIdentityToken", msg),
            Failure::BadRequest(_) => AwsError::new(S::BAD_REQUEST, "InvalidParameterValue", msg),
            Failure::Trust(_) | Failure::NotAuthorizedToAssume(_) => AwsError::new(S::FORBIDDEN, "AccessDenied", msg),
            Failure::Classify(ClassifyError::Ambiguous(_)) => AwsError::new(S::BAD_REQUEST, "InvalidRequest", msg),
            Failure::Classify(_) => AwsError::new(S::BAD_REQUEST, "InvalidAction", msg),
            Failure::Endpoint(EndpointError::Host(_)) => AwsError::new(S::INTERNAL_SERVER_ERROR, "InternalFailure", msg),
            Failure::Endpoint(_) => AwsError::new(S::BAD_REQUEST, "InvalidParameterValue", msg),
            Failure::TooLarge(..) => AwsError::new(S::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge", msg),
            Failure::Denied(_) => AwsError::new(S::FORBIDDEN, "AccessDenied", msg),
            Failure::ApprovalRequired { .. } => AwsError::new(S::FORBIDDEN, "ApprovalRequired", msg),
            Failure::ApprovalDenied { .. } => AwsError::new(S::FORBIDDEN, "AccessDenied", msg),
            Failure::ApprovalStore(_) => AwsError::new(S::SERVICE_UNAVAILABLE, "ServiceUnavailable", msg),
            Failure::Upstream(UpstreamError::Timeout(_)) => AwsError::new(S::GATEWAY_TIMEOUT, "RequestTimeout", msg),
            Failure::Upstream(_) => AwsError::new(S::BAD_GATEWAY, "ServiceUnavailable", msg),
            Failure::Unparseable(_) => AwsError::new(S::BAD_GATEWAY, "InternalFailure", msg),
            Failure::BodyRead(_) => AwsError::new(S::BAD_REQUEST, "IncompleteBody", msg),
            Failure::Audit(_) => AwsError::new(S::SERVICE_UNAVAILABLE, "ServiceUnavailable", msg),
            Failure::Internal { .. } => AwsError::new(S::INTERNAL_SERVER_ERROR, "InternalFailure", msg),
        }
    }

    fn verdict(&self) -> &'static str {
        match self {
            Failure::Denied(_) | Failure::ApprovalDenied { .. } => "deny",
            Failure::ApprovalRequired { .. } => "approval-required",
            Failure::MissingAuth | Failure::Signature(_) | Failure::Session(_) | Failure::Identity(_) => "unauthenticated",
            Failure::Trust(_) | Failure::NotAuthorizedToAssume(_) => "deny",
            _ => "error",
        }
    }
}

/// Per-call context, filled in stage by stage.
struct Ctx {
    request_id: String,
    started: Instant,
    remote: SocketAddr,
    identity: Option<Identity>,
    credential: Option<String>,
    /// The role ARN the call runs under.
    role: Option<String>,
    service: Option<String>,
    region: Option<String>,
    action: Option<String>,
    protocol: Option<Protocol>,
    verdict: &'static str,
    /// The Veil session, for callers using session credentials.
    session: Option<Arc<sts::Verified>>,
    /// SQS calls: the origin the caller reached Veil by, which queue URLs
    /// in the response are rewritten to.
    queue_origin: Option<aws::sqs::Origin>,
    /// S3 virtual-hosted calls: their path-style path.
    virtual_path: Option<String>,
    /// The audit record, filled in stage by stage.
    rec: Record,
    /// The record announced to the spool once the answer is known.
    coming: Option<audit::spool::Coming>,
}

/// The loaded parts a gateway is assembled from.
pub struct GatewayParts {
    /// OIDC verification.
    pub verifier: Verifier,
    /// Session credentials.
    pub sessions: SessionKeys,
    /// The initial policy set.
    pub policies: PolicySet,
    /// Rebuilds the set on reload.
    pub loader: Loader,
    /// The AWS client.
    pub upstream: Upstream,
    /// Key of the `hash` mask style.
    pub hash_key: HashKey,
    /// The audit writer.
    pub audit: Audit,
    /// Pending approvals and grants.
    pub approvals: Approvals,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// Everything a running gateway holds.
pub struct Gateway {
    verifier: Verifier,
    sessions: SessionKeys,
    policies: ArcSwap<PolicySet>,
    upstream: Upstream,
    hash_key: HashKey,
    audit: Audit,
    loader: Arc<Loader>,
    reload_lock: tokio::sync::Mutex<()>,
    approvals: Approvals,
    reviewer_claim: String,
    reviewer_groups: Vec<String>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// role ARN → credential name
    roles: ArcSwap<Roles>,
    /// issuer → audience
    audiences: HashMap<String, String>,
    max_body: usize,
    /// `listener.host_names`: S3 virtual-hosted addressing.
    host_names: Vec<String>,
    /// `https`, or `http` with `listener.insecure_plaintext`.
    scheme: &'static str,
    max_session: Duration,
    max_skew: Duration,
}

impl Gateway {
    /// Assemble a gateway from validated config and loaded parts.
    pub fn new(cfg: &Config, parts: GatewayParts) -> Gateway {
        let GatewayParts { verifier, sessions, policies, loader, upstream, hash_key, audit, approvals, metrics } = parts;
        loader.mark_loaded(&policies);
        Gateway {
            verifier,
            sessions,
            policies: ArcSwap::from_pointee(policies),
            upstream,
            hash_key,
            audit,
            loader: Arc::new(loader),
            reload_lock: tokio::sync::Mutex::new(()),
            approvals,
            reviewer_claim: cfg.approvals.reviewer_claim.clone(),
            reviewer_groups: cfg.approvals.reviewer_groups.clone(),
            metrics,
            // Validated with the config; an empty set (no role usable) if not.
            roles: ArcSwap::from_pointee(cfg.trust_roles().unwrap_or_default()),
            audiences: cfg.identity.issuers.iter().map(|i| (i.issuer.clone(), i.audience.clone())).collect(),
            max_body: cfg.listener.max_body_bytes,
            scheme: if cfg.listener.insecure_plaintext { "http" } else { "https" },
            host_names: cfg.listener.host_names.clone(),
            max_session: Duration::from_secs(cfg.sts.max_session_secs),
            max_skew: Duration::from_secs(cfg.sts.max_clock_skew_secs),
        }
    }

    /// Rebuild the policy set from its files and config (off the request
    /// path), and swap it in if it changed and passed every check; in-flight
    /// calls keep the set they started with. `Ok(true)`: a new set is active.
    /// A rejection leaves the last good set serving. Either way the attempt
    /// is logged, counted and audited.
    pub async fn reload_policies(&self, trigger: &str) -> Result<bool, Rejection> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let current = self.policies.load_full();
        let loader = self.loader.clone();
        let started = Instant::now();
        let built = reload::build_in_background(move || loader.build(&current)).await.unwrap_or_else(|e| {
            Err(Rejection { file: self.loader.dir().display().to_string(), reason: e, at_ms: 0 })
        });
        let mut rec = Record::new("reload", &self.audit.instance);
        rec.action = trigger.to_string();
        let result = match built {
            Ok(Outcome::Unchanged) => return Ok(false),
            Ok(Outcome::Loaded(set)) => {
                let refs = set.references();
                for r in &refs {
                    tracing::info!(name = %r.name, version = %r.version, sha256 = %r.sha256, trigger, build_ms = started.elapsed().as_millis() as u64, "policy active");
                }
                rec.verdict = "loaded".into();
                rec.set_policies(refs);
                self.policies.store(Arc::new(set));
                self.metrics.policy_reloads.get_or_create(&ReloadLabels { result: "loaded" }).inc();
                Ok(true)
            }
            Err(r) => {
                tracing::warn!(file = %r.file, reason = %r.reason, trigger, "policy reload rejected; the last good set keeps serving");
                rec.verdict = "rejected".into();
                rec.resource.clone_from(&r.file);
                rec.error.clone_from(&r.reason);
                self.metrics.policy_reloads.get_or_create(&ReloadLabels { result: "rejected" }).inc();
                Err(r)
            }
        };
        if self.audit.write(&rec, None).await.is_err() {
            self.metrics.audit_write_failures.inc();
        }
        result
    }

    /// Re-read `[[roles]]` from the config file and swap them in if they
    /// changed and check out: new sessions and every call on an existing
    /// session are judged by the new conditions at once. A config that
    /// does not load keeps the last good roles serving. Logged and audited.
    pub async fn reload_roles(&self, trigger: &str) {
        let Some(path) = self.loader.config_file().map(std::path::Path::to_path_buf) else { return };
        let file = path.display().to_string();
        let loaded = tokio::task::spawn_blocking(move || {
            let cfg = Config::load(&path).map_err(|e| e.to_string())?;
            cfg.trust_roles().map_err(|(key, reason)| format!("{key}: {reason}"))
        })
        .await
        .unwrap_or_else(|e| Err(format!("the reload task failed: {e}")));
        let mut rec = Record::new("reload", &self.audit.instance);
        rec.action = trigger.to_string();
        rec.resource = "roles".into();
        match loaded {
            Ok(roles) if roles == **self.roles.load() => return,
            Ok(roles) => {
                tracing::info!(roles = roles.len(), trigger, "roles reloaded");
                rec.verdict = "loaded".into();
                self.roles.store(Arc::new(roles));
            }
            Err(reason) => {
                tracing::warn!(file = %file, reason = ?reason, trigger, "roles reload rejected; the last good roles keep serving");
                rec.verdict = "rejected".into();
                rec.error = reason;
            }
        }
        if self.audit.write(&rec, None).await.is_err() {
            self.metrics.audit_write_failures.inc();
        }
    }

    /// Hold a call for approval: a matching unused grant admits it at once;
    /// otherwise it joins (or opens) a pending approval and waits.
    async fn await_approval(&self, ctx: &mut Ctx, call: &CallInput, request_digest: &str, reasons: Vec<Reason>) -> Result<(), Failure> {
        let ap = &self.approvals;
        let id = &call.identity;
        let op = format!("{}:{}", call.operation.service, call.operation.action);
        let requested = approvals::Requested {
            issuer: &id.issuer,
            subject: &id.subject,
            role: ctx.role.as_deref().unwrap_or_default(),
            operation: &op,
            region: &call.operation.region,
            params: &call.params,
            request_digest,
        };
        let fp = requested.fingerprint();
        // The store is consulted only here, on calls that need an approval.
        let granted = match ap.store.take_grant(&fp, approvals::now_ms()).await? {
            Some(g) => g,
            None => {
                let texts: Vec<String> = reasons.iter().map(Reason::to_string).collect();
                let resource = call.operation.resource.clone().unwrap_or_default();
                let new = ap.entry(&requested, &resource, audit::redact(&call.params), texts);
                let opened = ap.store.request(new).await?;
                for stale in &opened.expired {
                    tracing::info!(approval = %stale.id, "approval expired");
                    self.approval_event(stale, "expired", None).await;
                }
                let entry = opened.entry;
                ctx.rec.approval_id.clone_from(&entry.id);
                // Only the call that created the entry (on whichever gateway) announces it.
                if opened.created {
                    tracing::info!(approval = %entry.id, subject = %id.subject, operation = %op, "approval requested");
                    self.approval_event(&entry, "requested", None).await;
                }
                match ap.wait_for(&entry.id, &fp).await? {
                    Waited::Granted(g) => g,
                    Waited::Denied(e) => {
                        let d = e.decisions.iter().rfind(|d| !d.approve);
                        return Err(Failure::ApprovalDenied {
                            id: e.id.clone(),
                            reviewer: d.map(|d| d.reviewer.clone()).unwrap_or_default(),
                            reason: d.map(|d| d.reason.clone()).unwrap_or_default(),
                        });
                    }
                    Waited::TimedOut(e) => return Err(Failure::ApprovalRequired { id: e.id, reasons }),
                }
            }
        };
        ctx.rec.approval_id.clone_from(&granted.id);
        ctx.rec.approval_reviewers = granted.approvers();
        ctx.rec.approval_decided_ms = granted.decided_ms();
        self.approval_event(&granted, "used", None).await;
        Ok(())
    }

    /// One audit record of an approval step (requested, approved, denied,
    /// expired, used); all but `used` also go to the webhook.
    pub async fn approval_event(&self, e: &Entry, step: &str, decision: Option<&Decision>) {
        if let (Some(hook), false) = (&self.approvals.webhook, step == "used") {
            hook.notify(step, e);
        }
        let mut rec = Record::new("approval", &self.audit.instance);
        rec.verdict = step.to_string();
        rec.approval_id.clone_from(&e.id);
        rec.issuer.clone_from(&e.issuer);
        rec.subject.clone_from(&e.subject);
        let (service, action) = e.operation.split_once(':').unwrap_or((&e.operation, ""));
        rec.service = service.to_string();
        rec.action = action.to_string();
        rec.region.clone_from(&e.region);
        rec.resource.clone_from(&e.resource);
        rec.set_params_doc(&e.params, self.audit.response_cap);
        rec.reasons.clone_from(&e.reasons);
        rec.approval_reviewers = e.approvers();
        rec.approval_decided_ms = e.decided_ms();
        if let Some(d) = decision {
            rec.approval_reviewers = vec![d.reviewer.clone()];
            rec.approval_decided_ms = d.at_ms;
            rec.reasons.push(format!("reviewer {}: {}", d.reviewer, d.reason));
        }
        if self.audit.write(&rec, None).await.is_err() {
            self.metrics.audit_write_failures.inc();
        }
    }

    /// The approvals (for the reviewer API).
    pub fn approvals(&self) -> &Approvals {
        &self.approvals
    }

    /// Verify a reviewer's OIDC token and check the reviewer claim.
    pub async fn reviewer(&self, token: &str) -> Result<Identity, String> {
        let identity = self.verifier.verify(token).await.map_err(|e| e.to_string())?;
        let claim = identity.claims.get(&self.reviewer_claim);
        let values: Vec<&str> = match claim {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if values.iter().any(|v| self.reviewer_groups.iter().any(|g| g == v)) {
            Ok(identity)
        } else {
            Err(format!("{} is not a reviewer: claim {:?} must include one of {:?}", identity.subject, self.reviewer_claim, self.reviewer_groups))
        }
    }

    /// Expire stale approvals and audit each one. With a shared store every
    /// gateway sweeps; each expiry is returned to (and audited by) one.
    pub async fn expire_approvals(&self) {
        match self.approvals.store.expire(approvals::now_ms()).await {
            Ok(expired) => {
                for e in expired {
                    tracing::info!(approval = %e.id, "approval expired");
                    self.approval_event(&e, "expired", None).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "expiring approvals failed"),
        }
    }

    /// Active policies and the last rejected file, for the admin API.
    pub fn policy_status(&self) -> Value {
        self.loader.status(&self.policies.load())
    }
    /// The scheme, host and port the caller used to reach the gateway (the
    /// HTTP/2 authority, else the Host header).
    fn origin(&self, parts: &Parts) -> Option<aws::sqs::Origin> {
        let authority = match parts.uri.authority() {
            Some(a) => a.clone(),
            None => parts.headers.get(http::header::HOST)?.to_str().ok()?.parse::<http::uri::Authority>().ok()?,
        };
        if authority.as_str().contains('@') {
            return None;
        }
        Some(aws::sqs::Origin { scheme: self.scheme.to_string(), authority: authority.as_str().to_string() })
    }

    /// S3 virtual-hosted addressing (`<bucket>.<host name>`): the path of the
    /// path-style call it is, classified and forwarded as that. Checked as
    /// soon as the service is known, before identity; the signature is
    /// verified over the Host and path the client signed.
    fn s3_virtual_path(&self, ctx: &mut Ctx, service: &str, parts: &Parts) -> Result<(), Failure> {
        let (true, Some(o)) = (service == "s3", self.origin(parts)) else { return Ok(()) };
        let host = o.authority.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(o.authority.as_str(), |(h, _)| h);
        let bucket = aws::endpoint::virtual_bucket(host, &self.host_names).map_err(Failure::BadRequest)?;
        ctx.virtual_path = bucket.map(|b| format!("/{b}{}", parts.uri.path()));
        Ok(())
    }

    /// Handle one HTTP request end to end.
    pub async fn handle(&self, req: http::Request<Incoming>, remote: SocketAddr) -> Response<RespBody> {
        let mut rec = Record::new("call", &self.audit.instance);
        rec.source_ip = remote.ip().to_string();
        rec.set_client(req.headers());
        let mut ctx = Ctx {
            request_id: rec.id.clone(),
            started: Instant::now(),
            remote,
            identity: None,
            credential: None,
            role: None,
            service: None,
            region: None,
            action: None,
            protocol: None,
            verdict: "allow",
            session: None,
            queue_origin: None,
            virtual_path: None,
            rec,
            coming: None,
        };
        // The stages' state is large (about 12 KB: every stage's locals); on
        // the heap, it is written once, and the futures around it that the
        // runtime and hyper move stay small.
        let resp = match guarded(Box::pin(self.run(&mut ctx, req))).await {
            Ok(resp) => resp,
            Err(f) => self.refuse(&mut ctx, f),
        };
        self.log(&ctx, &resp);
        self.record(ctx, resp).await
    }

    /// Turn a failure into the caller's AWS-shaped error, noting it for the log and audit.
    fn refuse(&self, ctx: &mut Ctx, f: Failure) -> Response<RespBody> {
        ctx.verdict = f.verdict();
        if let Failure::Denied(reasons) | Failure::ApprovalRequired { reasons, .. } = &f {
            for r in reasons.iter().filter(|r| r.message.starts_with("on-")) {
                self.metrics.policy_errors.get_or_create(&PolicyLabels { policy: LabelText::new(&r.policy) }).inc();
            }
            ctx.rec.reasons = reasons.iter().map(Reason::to_string).collect();
        }
        if ctx.verdict == "unauthenticated" {
            self.metrics.auth_failures.inc();
        }
        let error = if let Failure::Internal { detail } = &f {
            tracing::error!(request_id = %ctx.request_id, panic = detail.as_str(), "call processing panicked; answered InternalFailure");
            format!("{f}: panicked: {detail}")
        } else {
            tracing::info!(request_id = %ctx.request_id, error = %f, "call refused");
            f.to_string()
        };
        // Messages can quote what the caller sent (a name, a header): capped,
        // so a record always fits the spool.
        ctx.rec.error = policy::host::truncate(&error, MAX_RECORDED_ERROR).to_string();
        if let Failure::ApprovalRequired { id, .. } | Failure::ApprovalDenied { id, .. } = &f {
            ctx.rec.approval_id.clone_from(id);
        }
        let r = f.to_aws().render(ctx.protocol, &ctx.request_id);
        r.map(full)
    }

    /// The audit phase: complete the call's record and make it durable
    /// before the response is released. A call that cannot be recorded is
    /// answered with an error instead (fail closed).
    async fn record(&self, ctx: Ctx, resp: Response<RespBody>) -> Response<RespBody> {
        let mut rec = ctx.rec;
        if let Some(id) = &ctx.identity {
            rec.issuer.clone_from(&id.issuer);
            rec.subject.clone_from(&id.subject);
            rec.claims = audit::select_claims(&id.claims, &self.audit.claims);
        }
        rec.service = ctx.service.unwrap_or_default();
        rec.action = ctx.action.unwrap_or_default();
        rec.region = ctx.region.unwrap_or_default();
        rec.verdict = ctx.verdict.to_string();
        if let Some(s) = ctx.session {
            rec.role_session.clone_from(&s.session.name);
        }
        rec.role = ctx.role.unwrap_or_default();
        rec.status = resp.status().as_u16();
        if rec.bytes_out == 0 {
            rec.bytes_out = http_body::Body::size_hint(resp.body()).exact().unwrap_or(0);
        }
        rec.total_us = ctx.started.elapsed().as_micros() as u64;
        match self.audit.write(&rec, ctx.coming).await {
            Ok(()) => resp,
            Err(e) => {
                self.metrics.audit_write_failures.inc();
                Failure::Audit(e).to_aws().render(ctx.protocol, &rec.id).map(full)
            }
        }
    }

    /// The log phase: metrics and one structured line per call, at debug:
    /// the audit trail already has every call, and writing a line from the
    /// worker is a tenth of a call's CPU. Metric labels are closed sets
    /// ([`CallLabels::of`]); the line shows what the caller sent, which
    /// the log formatter escapes and caps ([`crate::logging`]).
    fn log(&self, ctx: &Ctx, resp: &Response<RespBody>) {
        let labels = CallLabels::of(ctx.identity.is_some(), ctx.service.as_deref(), ctx.action.as_deref(), ctx.verdict);
        let elapsed = ctx.started.elapsed();
        self.metrics.requests.get_or_create(&labels).inc();
        self.metrics.latency.get_or_create(&labels).observe(elapsed.as_secs_f64());
        tracing::debug!(
            request_id = %ctx.request_id,
            remote = %ctx.remote,
            subject = ctx.identity.as_ref().map(|i| i.subject.as_str()).unwrap_or("-"),
            service = ctx.service.as_deref().unwrap_or("-"),
            action = ctx.action.as_deref().unwrap_or("-"),
            region = ctx.region.as_deref().unwrap_or("-"),
            verdict = ctx.verdict,
            status = resp.status().as_u16(),
            micros = elapsed.as_micros() as u64,
            "call"
        );
    }

    async fn run(&self, ctx: &mut Ctx, req: http::Request<Incoming>) -> Result<Response<RespBody>, Failure> {
        if let Some(e) = self.audit.blocking_error() {
            return Err(Failure::Audit(e));
        }
        let (parts, body) = req.into_parts();
        let auth_started = Instant::now();
        // Stage 1: identify.
        let bearer = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        if sigv4::is_sigv2(&parts) {
            ctx.protocol = Some(Protocol::RestXml);
            return Err(Failure::Signature(SigError::Unsupported(
                "Signature Version 2 (configure the SDK for SigV4, e.g. signature_version='s3v4')".into(),
            )));
        }
        let (mut body, mut payload_mode) = if sigv4::is_sigv4(&parts) {
            self.identify_sigv4(ctx, &parts, body).await?
        } else if let Some(token) = bearer {
            self.identify_bearer(ctx, &parts, &token).await?;
            (Some(read_body(body, self.max_body, "request").await?), None)
        } else if parts.method == http::Method::POST || parts.method == http::Method::GET {
            let body = read_body(body, MAX_STS_BODY, "request").await.map_err(|_| Failure::MissingAuth)?;
            return self.sts_web_identity(ctx, &parts, &body).await;
        } else {
            return Err(Failure::MissingAuth);
        };
        ctx.rec.auth_us = auth_started.elapsed().as_micros() as u64;
        ctx.rec.bytes_in = body.as_ref().map_or(0, |b| b.len() as u64);
        // Stage 2: classify.
        let service = ctx.service.clone().unwrap_or_default();
        let region = ctx.region.clone().unwrap_or_default();
        let virtual_path = ctx.virtual_path.take();
        let classify = |ctx: &mut Ctx, body: Option<&[u8]>| {
            let view = RequestView {
                service: &service,
                method: parts.method.as_str(),
                path: virtual_path.as_deref().unwrap_or(parts.uri.path()),
                query: parts.uri.query().unwrap_or(""),
                body,
                headers: &parts.headers,
            };
            aws::classify(&view).map_err(|e| {
                // The audit trail and the log name what the caller asked for.
                if let ClassifyError::NotAnOperation { action, .. } = &e {
                    ctx.action = Some(action.clone());
                }
                e
            })
        };
        let mut classified = classify(ctx, body.as_deref())?;
        if let Some(streamed) = payload_mode.take_if(|_| !classified.model.streams_input(&classified.action)) {
            // Only data for AWS to keep streams past policies; any other
            // body is input they must see (S3 DeleteObjects' keys, a bucket
            // policy), however the caller signed it.
            let read = self.read_streamed(&classified.action, streamed).await?;
            ctx.rec.bytes_in = read.len() as u64;
            classified = classify(ctx, Some(&read))?;
            body = Some(read);
        }
        let upstream_host = aws::endpoint::host(classified.model, &region)?;
        if service == "sqs" {
            // Queue URLs: the caller's name for a queue is the gateway's, AWS's its own.
            let gateway = self.origin(&parts).ok_or_else(|| Failure::BadRequest("the request names no Host".into()))?;
            let upstream = self.upstream.origin(&upstream_host);
            let upstream = aws::sqs::Origin { scheme: upstream.0.to_string(), authority: upstream.1.to_string() };
            aws::sqs::map_request(&mut classified, &gateway, &upstream).map_err(Failure::BadRequest)?;
            ctx.queue_origin = Some(gateway);
        }
        ctx.protocol = Some(classified.protocol);
        ctx.action = Some(classified.action.clone());
        ctx.rec.resource = classified.resource.clone().unwrap_or_default();
        ctx.rec.set_params_doc(&classified.params, self.audit.response_cap);
        let call = CallInput {
            identity: ctx.identity.clone().ok_or(Failure::MissingAuth)?,
            operation: Operation { service: service.clone(), action: classified.action.clone(), region: region.clone(), resource: classified.resource.clone() },
            params: classified.params,
        };
        // Stage 3: decide. The set is loaded once so the whole call sees one version.
        let policies = self.policies.load_full();
        ctx.rec.set_policies(policies.references());
        let policy_started = Instant::now();
        let decision = policies.on_request(&call);
        ctx.rec.policy_us = policy_started.elapsed().as_micros() as u64;
        policy::output::log(&ctx.request_id, &decision.output);
        match decision.verdict {
            Verdict::Allow => {}
            Verdict::Deny => return Err(Failure::Denied(decision.reasons)),
            Verdict::ApprovalRequired => {
                let digest = classified.forward.digest(body.as_deref());
                self.await_approval(ctx, &call, &digest, decision.reasons).await?
            }
        }
        // The caller's identity is the role session Veil issued, not Veil's
        // own upstream principal: answer "who am I" from the session.
        if let (Some(session), "sts", "GetCallerIdentity") = (&ctx.session, service.as_str(), classified.action.as_str()) {
            let xml = sts::caller_identity_response(&session.session, &ctx.request_id);
            return Response::builder()
                .header(http::header::CONTENT_TYPE, "text/xml")
                .header("x-amzn-requestid", &ctx.request_id)
                .body(full(Bytes::from(xml)))
                .map_err(|e| Failure::BadRequest(e.to_string()));
        }
        // Stage 4: forward what was classified (see aws::Forward): its
        // method, path, query, headers and, where re-serialised, its body.
        let forward = classified.forward;
        let payload_check = payload_mode.as_ref().and_then(|s| s.check.clone());
        let out_body = match (forward.body, body, payload_mode) {
            (Some(b), _, _) | (None, Some(b), _) => OutBody::Buffered(b),
            (None, None, Some(s)) => OutBody::Streaming { body: s.body, payload: s.payload },
            (None, None, None) => OutBody::Buffered(Bytes::new()),
        };
        let out = Outgoing {
            method: forward.method,
            path_and_query: forward.path_and_query,
            headers: forward.headers,
            service: service.clone(),
            region: region.clone(),
            default_host: upstream_host,
            credential: ctx.credential.clone().ok_or_else(|| Failure::Trust(TrustError::UnknownRole(String::new())))?,
            body: out_body,
        };
        let upstream_started = Instant::now();
        // Its record follows the answer: the spool's writer may wait for it
        // before its next sync (group commit, see `audit::spool`).
        ctx.coming = Some(self.audit.spool().coming());
        let resp = self.upstream.send(out).await;
        // A streamed body unlike its signed hash was cut short upstream.
        if payload_check.is_some_and(|c| c.failed()) {
            return Err(Failure::Signature(SigError::PayloadMismatch));
        }
        let resp = resp?;
        // Stage 5: check and mask the response.
        let (rparts, rbody) = resp.into_parts();
        let status = rparts.status.as_u16();
        ctx.rec.aws_request_id = ["x-amzn-requestid", "x-amz-request-id", "x-amzn-request-id"]
            .iter()
            .find_map(|h| rparts.headers.get(*h).and_then(|v| v.to_str().ok()))
            .unwrap_or_default()
            .to_string();
        let mut builder = Response::builder().status(rparts.status);
        for (k, v) in rparts.headers.iter() {
            if upstream::pass_response_header(k) && k != http::header::CONTENT_LENGTH {
                builder = builder.header(k, v);
            }
        }
        if classified.model.streams_output(&classified.action) && rparts.status.is_success() {
            ctx.rec.upstream_us = upstream_started.elapsed().as_micros() as u64;
            let length = rparts.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|l| l.parse::<u64>().ok());
            // A small stream of bytes (an S3 object, a function's result) is
            // read whole and shown to policies, as text under its member's
            // name, so the detectors see a secret in it; larger ones and
            // streams of events pass unparsed.
            if let (Some(member), Some(n)) = (classified.model.stream_member(&classified.action), length) {
                if n <= SHOWN_STREAM_BYTES as u64 {
                    let raw = tokio::time::timeout(self.upstream.timeout(), read_body(rbody, SHOWN_STREAM_BYTES, "response"))
                        .await
                        .map_err(|_| Failure::Upstream(UpstreamError::Timeout(self.upstream.timeout())))??;
                    return self.check_stream(ctx, &call, &policies, status, builder, member, raw);
                }
            }
            // Streamed bodies pass unparsed; policies still see the call and may deny it.
            let d = policies.on_response(&call, status, &json!({}));
            policy::output::log(&ctx.request_id, &d.output);
            if !d.deny.is_empty() {
                return Err(Failure::Denied(d.deny));
            }
            if let Some(len) = rparts.headers.get(http::header::CONTENT_LENGTH) {
                ctx.rec.bytes_out = len.to_str().ok().and_then(|l| l.parse().ok()).unwrap_or(0);
                builder = builder.header(http::header::CONTENT_LENGTH, len);
            }
            ctx.rec.response = "(streamed, not recorded)".into();
            let body = rbody.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>).boxed();
            return builder.body(body).map_err(|e| Failure::Unparseable(e.to_string()));
        }
        let raw = tokio::time::timeout(self.upstream.timeout(), read_body(rbody, self.max_body, "response"))
            .await
            .map_err(|_| Failure::Upstream(UpstreamError::Timeout(self.upstream.timeout())))??;
        ctx.rec.upstream_us = upstream_started.elapsed().as_micros() as u64;
        let mask_started = Instant::now();
        let protocol = classified.protocol;
        let query_action = (protocol == Protocol::Query).then_some(classified.action.as_str());
        let mut parsed = ParsedBody::parse(protocol, &raw, query_action).map_err(Failure::Unparseable)?;
        let parse_us = mask_started.elapsed().as_micros() as u64;
        let policy_started = Instant::now();
        let d = parsed.decide(&policies, &call, status);
        ctx.rec.policy_us += policy_started.elapsed().as_micros() as u64;
        policy::output::log(&ctx.request_id, &d.output);
        if !d.deny.is_empty() {
            return Err(Failure::Denied(d.deny));
        }
        let mask_started = Instant::now();
        let digested = (aws::sqs::has_digests(&call.operation.service, &call.operation.action) && !d.masks.is_empty()).then(|| parsed.view());
        let masked = parsed.mask(&d.masks, classified.model.blob_outputs(&classified.action), &self.hash_key);
        ctx.rec.masked_fields = masked as u32;
        let changed = masked > 0;
        if let (Some(original), true) = (&digested, changed) {
            parsed.refresh_sqs_digests(original);
        }
        // The record keeps the queue URLs AWS gave; the caller gets Veil's.
        parsed.audit(&mut ctx.rec, self.audit.response_cap);
        let rewritten = ctx.queue_origin.as_ref().map_or(0, |o| parsed.rewrite_queue_urls(o));
        let out = if changed || rewritten > 0 {
            if changed {
                builder = builder.header("x-veil-masked", HeaderValue::from_static("true"));
            }
            parsed.to_bytes()
        } else {
            // Unchanged: keep AWS's length (a HEAD response has none of its body).
            if let Some(len) = rparts.headers.get(http::header::CONTENT_LENGTH) {
                builder = builder.header(http::header::CONTENT_LENGTH, len);
            }
            raw
        };
        ctx.rec.mask_us = parse_us + mask_started.elapsed().as_micros() as u64;
        let mut resp = builder.body(full(out)).map_err(|e| Failure::Unparseable(e.to_string()))?;
        if changed || rewritten > 0 {
            drop_body_checksums(resp.headers_mut());
        }
        Ok(resp)
    }

    /// Decide and mask a streamed body read whole: policies see
    /// `{member: text}` when it is UTF-8 (`{}` otherwise, and it passes
    /// as it came unless denied); a masked text is what the caller gets.
    #[allow(clippy::too_many_arguments)]
    fn check_stream(
        &self,
        ctx: &mut Ctx,
        call: &CallInput,
        policies: &PolicySet,
        status: u16,
        mut builder: http::response::Builder,
        member: &str,
        raw: Bytes,
    ) -> Result<Response<RespBody>, Failure> {
        let policy_started = Instant::now();
        let mut doc = match std::str::from_utf8(&raw) {
            Ok(text) => json!({ member: text }),
            Err(_) => json!({}),
        };
        let d = policies.on_response(call, status, &doc);
        ctx.rec.policy_us += policy_started.elapsed().as_micros() as u64;
        policy::output::log(&ctx.request_id, &d.output);
        if !d.deny.is_empty() {
            return Err(Failure::Denied(d.deny));
        }
        let mask_started = Instant::now();
        let masked = masking::apply(&mut doc, &d.masks, &[], &self.hash_key);
        ctx.rec.masked_fields = masked as u32;
        ctx.rec.set_response_doc(&doc, self.audit.response_cap);
        let out = if masked == 0 {
            raw
        } else {
            builder = builder.header("x-veil-masked", HeaderValue::from_static("true"));
            match doc.get_mut(member).map(Value::take) {
                Some(Value::String(text)) => Bytes::from(text.into_bytes()),
                // A mask on a body shown as `{}` (not text) withholds it whole.
                _ => Bytes::from_static(masking::REDACTED.as_bytes()),
            }
        };
        ctx.rec.mask_us = mask_started.elapsed().as_micros() as u64;
        let mut resp = builder
            .header(http::header::CONTENT_LENGTH, out.len())
            .body(full(out))
            .map_err(|e| Failure::Unparseable(e.to_string()))?;
        if masked > 0 {
            drop_body_checksums(resp.headers_mut());
        }
        Ok(resp)
    }

    async fn identify_sigv4(
        &self,
        ctx: &mut Ctx,
        parts: &Parts,
        body: Incoming,
    ) -> Result<(Option<Bytes>, Option<Streamed>), Failure> {
        let signed = sigv4::parse(parts)?;
        ctx.protocol = aws::protocol_of(&signed.service, &parts.headers);
        ctx.service = Some(signed.service.clone());
        ctx.region = Some(signed.region.clone());
        self.s3_virtual_path(ctx, &signed.service, parts)?;
        let token = signed.security_token.as_deref().ok_or(Failure::Session(SessionError::Invalid))?;
        let verified = self.sessions.verify(&signed.access_key, token, SystemTime::now())?;
        // Trust is checked again on every call against the roles as they are
        // now: a reload that revokes an identity ends its sessions at once.
        let roles = self.roles.load();
        let admitted = roles.admit(&verified.session.role, &verified.identity).map(|(admitted, _)| admitted.credentials.clone());
        ctx.identity = Some(verified.identity.clone());
        ctx.role = Some(verified.session.role.clone());
        let secret = &verified.secret;
        ctx.session = Some(verified.clone());
        ctx.credential = Some(admitted?);
        let hashed = sigv4::payload_is_hashed(&signed)?;
        if !hashed && signed.service == "s3" {
            // Unsigned S3 payloads (uploads) stream through without buffering.
            sigv4::verify(parts, &signed, secret, None, SystemTime::now(), self.max_skew)?;
            let payload = if signed.payload_hash == sigv4::STREAMING_UNSIGNED_TRAILER {
                StreamedPayload::UnsignedTrailer
            } else {
                StreamedPayload::Unsigned
            };
            let stream = body.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>).boxed();
            return Ok((None, Some(Streamed { body: stream, payload, check: None })));
        }
        let declared_len = parts.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if signed.service == "s3" && signed.payload_hash.len() == 64 && declared_len.is_some_and(|n| n > self.max_body as u64) {
            // An S3 upload too large to buffer whose payload hash is signed
            // (the JavaScript SDK signs a body it holds in memory): streamed,
            // checked against that hash on the way, which AWS checks again.
            sigv4::verify(parts, &signed, secret, Some(&signed.payload_hash), SystemTime::now(), self.max_skew)?;
            let (checked, check) = sigv4::CheckedPayload::new(body, &signed.payload_hash);
            let payload = StreamedPayload::Sha256(signed.payload_hash.to_ascii_lowercase());
            return Ok((None, Some(Streamed { body: checked.boxed(), payload, check: Some(check) })));
        }
        let bytes = read_body(body, self.max_body, "request").await?;
        let hash = hex::encode(Sha256::digest(&bytes));
        sigv4::verify(parts, &signed, secret, Some(&hash), SystemTime::now(), self.max_skew)?;
        Ok((Some(bytes), None))
    }

    /// Read a streamed S3 body that is input, not data (see
    /// [`aws::Model::streams_input`]).
    async fn read_streamed(&self, action: &str, streamed: Streamed) -> Result<Bytes, Failure> {
        match streamed.payload {
            StreamedPayload::Unsigned => {
                // Frame by frame, not through `read_body`: a boxed body's
                // error type there makes the request future not `Send`.
                let (mut stream, mut read) = (streamed.body, bytes::BytesMut::new());
                while let Some(frame) = stream.frame().await {
                    let frame = frame.map_err(|e| Failure::BodyRead(e.to_string()))?;
                    if let Ok(data) = frame.into_data() {
                        if read.len() + data.len() > self.max_body {
                            return Err(Failure::TooLarge("request", self.max_body));
                        }
                        read.extend_from_slice(&data);
                    }
                }
                Ok(read.freeze())
            }
            StreamedPayload::UnsignedTrailer => Err(Failure::Classify(
                aws::wire::Ambiguous(format!(
                    "the body of s3 {action} is sent aws-chunked with a trailer, which Veil does not read; sign it with its SHA-256 or UNSIGNED-PAYLOAD"
                ))
                .into(),
            )),
            // Streamed only when declared larger than a body may be.
            StreamedPayload::Sha256(_) => Err(Failure::TooLarge("request", self.max_body)),
        }
    }

    async fn identify_bearer(&self, ctx: &mut Ctx, parts: &Parts, token: &str) -> Result<(), Failure> {
        let header = |n: &'static str| -> Result<String, Failure> {
            let v = parts.headers.get(n).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty() && v.len() <= 64);
            v.map(str::to_owned).ok_or_else(|| Failure::BadRequest(format!("header {n} is required with Bearer authentication")))
        };
        // Checked before the token, so a bad value is refused before any
        // identity work, and even the token's errors are in the service's shape.
        let service = header(SERVICE_HEADER)?;
        aws::endpoint::check_service(&service)?;
        ctx.protocol = aws::protocol_of(&service, &parts.headers);
        let region = header(REGION_HEADER)?;
        aws::endpoint::check_region(&region)?;
        ctx.region = Some(region);
        self.s3_virtual_path(ctx, &service, parts)?;
        ctx.service = Some(service);
        let identity = self.verifier.verify(token).await?;
        let roles = self.roles.load();
        let role = match parts.headers.get(ROLE_HEADER) {
            // An IAM role ARN is at most 2048 characters.
            Some(r) if r.len() > 2048 => return Err(Failure::BadRequest(format!("header {ROLE_HEADER} is longer than a role ARN may be"))),
            Some(r) => r.to_str().map_err(|_| Failure::BadRequest(format!("header {ROLE_HEADER} is not visible ASCII")))?.to_string(),
            None => match roles.only() {
                Some(only) => only.arn.clone(),
                None => return Err(Failure::BadRequest(format!("header {ROLE_HEADER} is required: several roles are configured"))),
            },
        };
        let admitted = roles.admit(&role, &identity).map(|(admitted, _)| admitted.credentials.clone());
        ctx.identity = Some(identity);
        ctx.role = Some(role);
        ctx.credential = Some(admitted?);
        Ok(())
    }

    /// STS `AssumeRoleWithWebIdentity`, the unsigned form SDKs send.
    async fn sts_web_identity(&self, ctx: &mut Ctx, parts: &Parts, body: &[u8]) -> Result<Response<RespBody>, Failure> {
        // Read as strictly as any other query-protocol call: a field given
        // twice (in the query, the body or both) is refused, not guessed.
        let mut pairs = aws::wire::form_pairs(parts.uri.query().unwrap_or("").as_bytes(), "query").map_err(|_| Failure::MissingAuth)?;
        pairs.extend(aws::wire::form_pairs(body, "body").map_err(|_| Failure::MissingAuth)?);
        if !pairs.iter().any(|(k, v)| k == "Action" && v == "AssumeRoleWithWebIdentity") {
            return Err(Failure::MissingAuth);
        }
        aws::wire::check_unique(&pairs, "form").map_err(|e| Failure::Classify(e.into()))?;
        let form: HashMap<String, String> = pairs.into_iter().collect();
        ctx.protocol = Some(Protocol::Query);
        ctx.service = Some("sts".into());
        ctx.action = Some("AssumeRoleWithWebIdentity".into());
        let field = |k: &str| form.get(k).cloned().ok_or_else(|| Failure::BadRequest(format!("{k} is required")));
        // Token files often end with a newline (`echo "$TOKEN" > file`), and
        // SDKs send the file as it is.
        let token = field("WebIdentityToken")?.trim_matches(|c: char| c.is_ascii_whitespace()).to_string();
        let role = field("RoleArn")?;
        let name = field("RoleSessionName")?;
        if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"=,.@_-".contains(&b)) {
            return Err(Failure::BadRequest("RoleSessionName must be 2-64 characters of [\\w+=,.@-]".into()));
        }
        let duration = match form.get("DurationSeconds") {
            Some(d) => d.parse::<u64>().ok().filter(|d| (900..=43200).contains(d)).ok_or_else(|| Failure::BadRequest("DurationSeconds must be 900..43200".into()))?,
            None => 3600,
        };
        ctx.rec.role_session.clone_from(&name);
        ctx.role = Some(role.clone());
        let identity = self.verifier.verify(&token).await?;
        ctx.identity = Some(identity.clone());
        // Trust is checked before any credential is minted.
        ctx.rec.resource.clone_from(&role);
        let because = match self.roles.load().admit(&role, &identity) {
            Ok((_, because)) => because,
            Err(e) => return Err(Failure::NotAuthorizedToAssume(e)),
        };
        ctx.rec.reasons.push(format!("trust: {role} admitted by {because}"));
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let token_exp = identity.claims.get("exp").and_then(Value::as_u64).unwrap_or(now);
        let exp = (now + duration).min(now + self.max_session.as_secs()).min(token_exp);
        let session = Session {
            akid: String::new(),
            iss: identity.issuer.clone(),
            sub: identity.subject.clone(),
            claims: identity.claims.clone(),
            role,
            name,
            exp,
        };
        let creds = self.sessions.issue(session.clone())?;
        let audience = self.audiences.get(&identity.issuer).cloned().unwrap_or_default();
        let xml = sts::assume_role_response(&creds, &session, &audience, &ctx.request_id);
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "text/xml")
            .header("x-amzn-requestid", &ctx.request_id)
            .body(full(Bytes::from(xml)))
            .map_err(|e| Failure::BadRequest(e.to_string()))
    }
}

/// Run a call's stages so that a panic in any of them (a codec's, the
/// policy host's) becomes [`Failure::Internal`] instead of taking the
/// connection's task down without an answer or an audit record. The stages'
/// context is only read afterwards, to log and audit the call, so whatever
/// a stage left half-written there is harmless (hence `AssertUnwindSafe`).
async fn guarded<T>(stages: impl std::future::Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
    match AssertUnwindSafe(stages).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => Err(Failure::Internal { detail: panic_message(panic.as_ref()) }),
    }
}

/// The message of a caught panic (its payload is a `&str` or a `String`
/// for `panic!` with a message), cut to 512 bytes, with anything the secret
/// detectors recognise masked: it goes to the log and the audit record, and
/// a bug's message may quote a value.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    policy::output::redact(policy::host::truncate(text, 512), &Value::Null, None::<&Value>)
}

/// Remove the checksums of a body Veil changed: the original's would fail
/// the SDK's check (JSON protocols' CRC32, S3's flexible checksums, MD5).
fn drop_body_checksums(headers: &mut http::HeaderMap) {
    let names: Vec<http::HeaderName> = headers
        .keys()
        .filter(|k| matches!(k.as_str(), "x-amz-crc32" | "content-md5") || k.as_str().starts_with("x-amz-checksum-"))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// A complete in-memory response body.
pub(crate) fn full(b: Bytes) -> RespBody {
    Full::new(b).map_err(|never| match never {}).boxed()
}

/// A request body that streams upstream instead of being read.
struct Streamed {
    body: upstream::UpBody,
    payload: StreamedPayload,
    /// For a signed payload hash: whether the body turned out unlike it.
    check: Option<sigv4::PayloadCheck>,
}

async fn read_body<B>(body: B, max: usize, what: &'static str) -> Result<Bytes, Failure>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match Limited::new(body, max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(Failure::TooLarge(what, max)),
        Err(e) => Err(Failure::BodyRead(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_in_the_stages_becomes_an_aws_shaped_internal_failure() {
        let f = guarded(async { panic!("a codec bug at byte {}", 7) }).await.map(|()| ()).unwrap_err();
        assert!(matches!(&f, Failure::Internal { detail } if detail == "a codec bug at byte 7"), "{f:?}");
        let e = f.to_aws();
        assert_eq!((e.status, e.code), (StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure"));
        assert!(!e.message.contains("codec bug"), "the caller gets no internals: {}", e.message);
        let r = e.render(Some(Protocol::Json), "req-1");
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        // Failures and answers pass through as they are.
        assert!(matches!(guarded(async { Err::<(), _>(Failure::MissingAuth) }).await, Err(Failure::MissingAuth)));
        assert_eq!(guarded(async { Ok::<_, Failure>(5) }).await.unwrap(), 5);
    }
}
