//! Configuration: `veil.toml` → a typed, validated [`Config`].
//!
//! Every key is documented in `veil.example.toml`. Unknown keys and wrong
//! types are errors (serde `deny_unknown_fields`); validation names the file,
//! the key and the reason. Validation never changes anything: a bad file is
//! rejected as a whole.
//!
//! Secrets (admin token, session key, hash key, ClickHouse password) are not
//! in the file: each comes from its own file (`*_file` keys) or an
//! environment variable, read by the one loader [`Config::secret`], which
//! holds both sources to the same documented minimum length. A value that is
//! set but empty or short stops the gateway with the key's name: an empty
//! variable left by a compose file or a Helm chart must never mean "no
//! password" or "any token".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A configuration problem: which file, which key, what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    /// The config file.
    pub file: String,
    /// The key (dotted path) or `line N` where parsing failed.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where and how Veil listens.
    pub listener: Listener,
    /// OIDC issuers whose tokens Veil accepts.
    pub identity: IdentityConfig,
    /// STS emulation for standard SDKs.
    #[serde(default)]
    pub sts: StsConfig,
    /// Roles callers may assume, each mapped to an upstream credential.
    #[serde(default)]
    pub roles: Vec<RoleConfig>,
    /// How Veil calls AWS.
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// Policies.
    pub policies: PoliciesConfig,
    /// Masking.
    #[serde(default)]
    pub masking: MaskingConfig,
    /// Metrics endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Audit trail: local spool and ClickHouse.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Admin and reviewer API.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Human approval of calls policies hold.
    #[serde(default)]
    pub approvals: ApprovalsConfig,
    /// The gateway's own log.
    #[serde(default)]
    pub log: LogConfig,
    /// Directory of the file this was loaded from (relative paths resolve against it).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file this was loaded from, for messages.
    #[serde(skip)]
    pub source: PathBuf,
}

/// `[log]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json`, one object per line; `VEIL_LOG_FORMAT`
    /// overrides it. Read at start only.
    #[serde(default)]
    pub format: crate::logging::LogFormat,
}

/// `[listener]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// `host:port` to listen on.
    pub address: String,
    /// PEM certificate chain.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP (no TLS). Only for local development.
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// Largest request or response body Veil buffers, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Time limit for reading a request's headers, in seconds.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_secs: u64,
    /// Time to let in-flight calls finish on SIGTERM, in seconds.
    #[serde(default = "default_drain")]
    pub shutdown_drain_secs: u64,
    /// Open client connections at most; more wait in the accept queue.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Threads serving connections, each with its own runtime; absent: one
    /// per CPU the process may use.
    #[serde(default)]
    pub threads: Option<usize>,
    /// DNS names clients reach Veil by. An S3 request to `<bucket>.<name>`
    /// is virtual-hosted addressing; with names set, an S3 request to any
    /// other host (but an IP address or `localhost`) is refused.
    #[serde(default)]
    pub host_names: Vec<String>,
}

fn default_max_body() -> usize {
    10 << 20
}
fn default_header_timeout() -> u64 {
    10
}
fn default_drain() -> u64 {
    30
}
fn default_max_connections() -> usize {
    4096
}

/// `[identity]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Accepted issuers.
    pub issuers: Vec<IssuerConfig>,
    /// Clock leeway for exp/nbf/iat, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Minimum interval between JWKS refreshes of one issuer, in seconds.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_min_refresh_secs: u64,
}

fn default_leeway() -> u64 {
    30
}
fn default_jwks_refresh() -> u64 {
    30
}

/// `[[identity.issuers]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Issuer URL, exactly as in the tokens' `iss`.
    pub issuer: String,
    /// Audience the tokens must carry in `aud`.
    pub audience: String,
}

/// `[sts]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StsConfig {
    /// File holding the key that authenticates session tokens (any bytes,
    /// ≥ 32 after trimming whitespace). Every replica must share it. Unset:
    /// `VEIL_SESSION_KEY` (≥ 32 bytes), else a random key per process
    /// (sessions then die with the process).
    pub session_key_file: Option<PathBuf>,
    /// Longest session Veil issues, in seconds.
    #[serde(default = "default_max_session")]
    pub max_session_secs: u64,
    /// Clock skew tolerated on signed requests, in seconds.
    #[serde(default = "default_skew")]
    pub max_clock_skew_secs: u64,
}

impl Default for StsConfig {
    fn default() -> Self {
        StsConfig { session_key_file: None, max_session_secs: default_max_session(), max_clock_skew_secs: default_skew() }
    }
}

fn default_max_session() -> u64 {
    3600
}
fn default_skew() -> u64 {
    300
}

/// `[[roles]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// The role ARN callers pass as `RoleArn` (AWS_ROLE_ARN).
    pub arn: String,
    /// Name of the `[upstream.credentials.<name>]` Veil uses for this role.
    pub credentials: String,
    /// Issuers whose tokens may use it (default: every configured issuer).
    #[serde(default)]
    pub issuers: Vec<String>,
    /// `conditions` (the default: `[roles.conditions]` must hold) or
    /// `any-token-of-these-issuers`.
    #[serde(default)]
    pub trust: crate::trust::TrustMode,
    /// IAM-style trust conditions on the token's claims (see [`crate::trust`]).
    #[serde(default)]
    pub conditions: crate::trust::ConditionsConfig,
}

/// `[upstream]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Send every call to this URL instead of the regional AWS endpoint
    /// (for emulators and VPC endpoints).
    pub endpoint: Option<String>,
    /// Connect timeout, seconds.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Whole-call timeout, seconds.
    #[serde(default = "default_upstream_timeout")]
    pub timeout_secs: u64,
    /// Named upstream credentials.
    #[serde(default)]
    pub credentials: BTreeMap<String, CredentialConfig>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            endpoint: None,
            connect_timeout_secs: default_connect_timeout(),
            timeout_secs: default_upstream_timeout(),
            credentials: BTreeMap::new(),
        }
    }
}

fn default_connect_timeout() -> u64 {
    5
}
fn default_upstream_timeout() -> u64 {
    60
}

/// `[upstream.credentials.<name>]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// A profile of the shared config/credentials files; unset means the
    /// default chain (environment, shared files, web identity, IMDS …).
    pub profile: Option<String>,
}

/// `[policies]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoliciesConfig {
    /// Directory of `*.wasm` policies.
    pub dir: PathBuf,
    /// CPU deadline per hook call, milliseconds.
    #[serde(default = "default_deadline")]
    pub deadline_ms: u64,
    /// Extra deadline of an `on-response` call per MiB of response body.
    #[serde(default = "default_deadline_per_mib")]
    pub deadline_per_mib_ms: u64,
    /// Memory cap per instance, MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: usize,
    /// Each policy's configuration, by policy name.
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
    /// Reload when files in `dir` or this config file change. Off: only
    /// SIGHUP and `veil policy reload` reload.
    #[serde(default = "default_true")]
    pub watch: bool,
    /// Load only a policy set signed by one of `signing_keys`: the
    /// directory's `manifest.json` lists every policy file with its sha256
    /// and a version, and `manifest.json.sig` holds an ed25519 signature over
    /// it (see [`crate::policy::reload::manifest`]).
    #[serde(default)]
    pub require_signature: bool,
    /// Trusted ed25519 public keys (32 bytes each, base64).
    #[serde(default)]
    pub signing_keys: Vec<String>,
    /// With `require_signature`: where the version of the last accepted
    /// manifest is kept, so that no reload and no restart goes back to an
    /// older one. The gateway must be able to write it.
    #[serde(default = "default_policy_state")]
    pub state_file: PathBuf,
    /// Compiled policies kept between runs; empty: compile at every start.
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
}

fn default_deadline() -> u64 {
    50
}
fn default_policy_state() -> PathBuf {
    PathBuf::from("veil-policy-state.json")
}
fn default_deadline_per_mib() -> u64 {
    150
}
fn default_memory() -> usize {
    64
}

/// `[masking]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskingConfig {
    /// File holding the key of the `hash` mask style (≥ 32 bytes). Unset:
    /// `VEIL_HASH_KEY` (≥ 32 bytes), else a random key per process (hashes
    /// then do not correlate across restarts).
    pub hash_key_file: Option<PathBuf>,
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` of the Prometheus endpoint (`/metrics`); unset: off.
    pub address: Option<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { address: None }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port` of the admin API (policy status/reload, approvals),
    /// served with the listener's TLS. Unset: off.
    pub address: Option<String>,
    /// File holding the bearer token of `veil policy reload|status` (≥ 32
    /// bytes). Unset: `VEIL_ADMIN_TOKEN` (≥ 32 bytes), else the policy
    /// endpoints are off.
    pub token_file: Option<PathBuf>,
}

/// `[approvals]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// How long a held call waits for a decision, seconds.
    #[serde(default = "default_approval_wait")]
    pub wait_secs: u64,
    /// How long an approval (pending, or granted but unused) lives, seconds.
    #[serde(default = "default_approval_ttl")]
    pub ttl_secs: u64,
    /// Token claim that makes a reviewer.
    #[serde(default = "default_reviewer_claim")]
    pub reviewer_claim: String,
    /// Values of that claim (it may be a string or a list) that make a reviewer.
    #[serde(default = "default_reviewer_groups")]
    pub reviewer_groups: Vec<String>,
    /// Distinct reviewers who must approve (two-person rule: 2).
    #[serde(default = "default_min_approvals")]
    pub min_approvals: u32,
    /// File persisting approvals across restarts.
    #[serde(default = "default_approvals_file")]
    pub store_file: PathBuf,
    /// Slack-compatible webhook told of requests and decisions. Unset: none.
    pub webhook_url: Option<String>,
    /// Approvals shared by several gateways through PostgreSQL. Unset: the
    /// embedded `store_file`, for one gateway.
    pub postgres: Option<ApprovalsPostgresConfig>,
}

/// `[approvals.postgres]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsPostgresConfig {
    /// `postgres://user@host:port/database`, without a password.
    pub url: String,
    /// File holding the password. Unset: `VEIL_APPROVALS_PG_PASSWORD`, else none.
    pub password_file: Option<PathBuf>,
    /// Connections per gateway (calls that need an approval and the reviewer
    /// API share them; one more is kept for notifications).
    #[serde(default = "default_pg_pool_size")]
    pub pool_size: usize,
    /// Time to connect, and to wait for a free connection, seconds.
    #[serde(default = "default_pg_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Longest a statement may run (PostgreSQL's `statement_timeout`), milliseconds.
    #[serde(default = "default_pg_statement_timeout")]
    pub statement_timeout_ms: u64,
}

fn default_pg_pool_size() -> usize {
    8
}
fn default_pg_connect_timeout() -> u64 {
    5
}
fn default_pg_statement_timeout() -> u64 {
    5000
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("every [approvals] key has a default"))
    }
}

fn default_approval_wait() -> u64 {
    50
}
fn default_approval_ttl() -> u64 {
    900
}
fn default_reviewer_claim() -> String {
    "groups".into()
}
fn default_reviewer_groups() -> Vec<String> {
    vec!["security-reviewers".into()]
}
fn default_min_approvals() -> u32 {
    1
}
fn default_approvals_file() -> PathBuf {
    PathBuf::from("veil-approvals.json")
}

/// `[audit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Directory of the durable spool.
    #[serde(default = "default_spool_dir")]
    pub spool_dir: PathBuf,
    /// Release a response only after its record is fsynced.
    #[serde(default = "default_true")]
    pub require_durable: bool,
    /// Longest time a record stays unsynced, milliseconds.
    #[serde(default = "default_fsync_interval")]
    pub fsync_interval_ms: u64,
    /// Segment file size before rotation, bytes.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Unshipped bytes the spool may hold before calls are refused.
    #[serde(default = "default_max_spool")]
    pub max_spool_bytes: u64,
    /// When the spool cannot take a record: `"reject"` the call (fail
    /// closed) or `"log"` the loss and answer anyway.
    #[serde(default = "default_on_failure")]
    pub on_failure: String,
    /// Largest masked response body, and request parameters, kept in a
    /// record, bytes (each cut there and marked).
    #[serde(default = "default_response_cap")]
    pub response_cap_bytes: usize,
    /// Token claims copied into each record (besides iss and sub).
    #[serde(default = "default_audit_claims")]
    pub claims: Vec<String>,
    /// Name of this gateway in records. Unset: the host name.
    pub instance: Option<String>,
    /// ClickHouse to ship records to. Unset: records stay in the spool.
    pub clickhouse: Option<ClickHouseConfig>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("every [audit] key has a default"))
    }
}

fn default_cache_dir() -> PathBuf {
    PathBuf::from("veil-cache")
}
fn default_spool_dir() -> PathBuf {
    PathBuf::from("veil-spool")
}
fn default_true() -> bool {
    true
}
fn default_fsync_interval() -> u64 {
    5
}
fn default_segment_bytes() -> u64 {
    16 << 20
}
fn default_max_spool() -> u64 {
    1 << 30
}
fn default_on_failure() -> String {
    "reject".into()
}
fn default_response_cap() -> usize {
    64 << 10
}
fn default_audit_claims() -> Vec<String> {
    vec!["email".into(), "groups".into(), "client_id".into()]
}

/// `[audit.clickhouse]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Database holding the `audit` table (created at start).
    #[serde(default = "default_ch_database")]
    pub database: String,
    /// User.
    #[serde(default = "default_ch_user")]
    pub user: String,
    /// File holding the password (≥ 16 bytes). Unset:
    /// `VEIL_CLICKHOUSE_PASSWORD` (≥ 16 bytes), else none.
    pub password_file: Option<PathBuf>,
    /// Ship when this many records are waiting.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// Ship records at most this long after they were spooled, milliseconds.
    #[serde(default = "default_batch_wait")]
    pub batch_wait_ms: u64,
}

fn default_ch_database() -> String {
    "veil".into()
}
fn default_ch_user() -> String {
    "default".into()
}
fn default_batch_rows() -> usize {
    10_000
}
fn default_batch_wait() -> u64 {
    1000
}

impl Config {
    /// Load and validate `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError { file: path.display().to_string(), key: "(file)".into(), reason: format!("cannot read: {e}") })?;
        Config::from_text(&text, path)
    }

    /// Parse and validate `text`, the contents of the config file at `path`
    /// (errors name it; relative paths resolve against its directory).
    pub fn from_text(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let err = |key: &str, reason: String| ConfigError { file: file.clone(), key: key.to_string(), reason };
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let key = match e.span() {
                Some(span) => format!("line {}", text[..span.start].lines().count().max(1)),
                None => "(file)".into(),
            };
            err(&key, e.message().to_string())
        })?;
        config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        config.source = path.to_path_buf();
        config.validate().map_err(|(key, reason)| err(&key, reason))?;
        Ok(config)
    }

    /// Where compiled policies are cached, if anywhere.
    pub fn policy_cache_dir(&self) -> Option<PathBuf> {
        (!self.policies.cache_dir.as_os_str().is_empty()).then(|| self.resolve(&self.policies.cache_dir))
    }

    /// The roles with their trust conditions, checked against the issuers.
    pub fn trust_roles(&self) -> Result<crate::trust::Roles, (String, String)> {
        let issuers: Vec<String> = self.identity.issuers.iter().map(|i| i.issuer.clone()).collect();
        crate::trust::Roles::from_config(&self.roles, &issuers)
    }

    /// Resolve a path from the config against the config file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() { p.to_path_buf() } else { self.base_dir.join(p) }
    }

    fn validate(&mut self) -> Result<(), (String, String)> {
        let e = |k: &str, r: &str| Err((k.to_string(), r.to_string()));
        if self.listener.address.parse::<std::net::SocketAddr>().is_err() {
            return e("listener.address", "expected host:port with a numeric IP, e.g. 0.0.0.0:8443");
        }
        match (&self.listener.tls_cert, &self.listener.tls_key, self.listener.insecure_plaintext) {
            (Some(cert), Some(key), false) => {
                for (k, p) in [("listener.tls_cert", cert), ("listener.tls_key", key)] {
                    if !self.resolve(p).is_file() {
                        return Err((k.into(), format!("file {} does not exist", self.resolve(p).display())));
                    }
                }
            }
            (None, None, true) => {}
            (_, _, true) => return e("listener.insecure_plaintext", "set either TLS files or insecure_plaintext, not both"),
            _ => return e("listener.tls_cert", "tls_cert and tls_key are required (or insecure_plaintext = true for local development)"),
        }
        if self.listener.max_body_bytes == 0 || self.listener.max_body_bytes > 1 << 30 {
            return e("listener.max_body_bytes", "must be between 1 and 1073741824");
        }
        if !(1..=300).contains(&self.listener.header_timeout_secs) {
            return e("listener.header_timeout_secs", "must be between 1 and 300");
        }
        for (i, name) in self.listener.host_names.iter().enumerate() {
            if !crate::aws::endpoint::is_dns_name(name) {
                return Err((format!("listener.host_names[{i}]"), format!("{name:?} is not a lower-case DNS name")));
            }
        }
        if !(1..=1_000_000).contains(&self.listener.max_connections) {
            return e("listener.max_connections", "must be between 1 and 1000000");
        }
        if self.listener.threads.is_some_and(|t| !(1..=1024).contains(&t)) {
            return e("listener.threads", "must be between 1 and 1024");
        }
        if self.identity.issuers.is_empty() {
            return e("identity.issuers", "at least one issuer is required");
        }
        for (i, iss) in self.identity.issuers.iter().enumerate() {
            let url = iss.issuer.trim_end_matches('/');
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err((format!("identity.issuers[{i}].issuer"), "must be an http(s) URL".into()));
            }
            if iss.audience.is_empty() {
                return Err((format!("identity.issuers[{i}].audience"), "must not be empty".into()));
            }
        }
        if !(60..=43200).contains(&self.sts.max_session_secs) {
            return e("sts.max_session_secs", "must be between 60 and 43200");
        }
        if let Some(f) = &self.sts.session_key_file {
            if !self.resolve(f).is_file() {
                return e("sts.session_key_file", "file does not exist");
            }
        }
        for (i, role) in self.roles.iter().enumerate() {
            if !role.arn.starts_with("arn:") {
                return Err((format!("roles[{i}].arn"), "must be an ARN (arn:aws:iam::<account>:role/<name>)".into()));
            }
            if !self.upstream.credentials.contains_key(&role.credentials) {
                return Err((
                    format!("roles[{i}].credentials"),
                    format!("no [upstream.credentials.{}] is defined", role.credentials),
                ));
            }
        }
        self.trust_roles()?;
        if let Some(ep) = &self.upstream.endpoint {
            if ep.parse::<http::Uri>().ok().and_then(|u| u.scheme_str().map(str::to_owned)).is_none() {
                return e("upstream.endpoint", "must be a URL like https://host:port");
            }
        }
        if !self.resolve(&self.policies.dir).is_dir() {
            return e("policies.dir", "directory does not exist");
        }
        if self.policies.deadline_ms == 0 || self.policies.deadline_ms > 10_000 {
            return e("policies.deadline_ms", "must be between 1 and 10000");
        }
        if self.policies.deadline_per_mib_ms > 10_000 {
            return e("policies.deadline_per_mib_ms", "must be between 0 and 10000");
        }
        if self.policies.require_signature && self.policies.signing_keys.is_empty() {
            return e("policies.signing_keys", "require_signature needs at least one key");
        }
        for (i, k) in self.policies.signing_keys.iter().enumerate() {
            if decode_key(k).is_none() {
                return Err((format!("policies.signing_keys[{i}]"), "must be a base64 ed25519 public key (32 bytes)".into()));
            }
        }
        if !(1..=4096).contains(&self.policies.memory_mib) {
            return e("policies.memory_mib", "must be between 1 and 4096");
        }
        if let Some(f) = &self.masking.hash_key_file {
            if !self.resolve(f).is_file() {
                return e("masking.hash_key_file", "file does not exist");
            }
        }
        if let Some(a) = &self.metrics.address {
            if a.parse::<std::net::SocketAddr>().is_err() {
                return e("metrics.address", "expected host:port with a numeric IP");
            }
        }
        if let Some(addr) = &self.admin.address {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return e("admin.address", "expected host:port with a numeric IP");
            }
        }
        if let Some(f) = &self.admin.token_file {
            if !self.resolve(f).is_file() {
                return e("admin.token_file", "file does not exist");
            }
        }
        let ap = &self.approvals;
        if ap.wait_secs > 600 {
            return e("approvals.wait_secs", "must be at most 600 (SDK read timeouts are shorter still)");
        }
        if !(1..=7 * 86400).contains(&ap.ttl_secs) {
            return e("approvals.ttl_secs", "must be between 1 and 604800");
        }
        if !(1..=5).contains(&ap.min_approvals) {
            return e("approvals.min_approvals", "must be between 1 and 5");
        }
        if ap.reviewer_groups.is_empty() || ap.reviewer_claim.is_empty() {
            return e("approvals.reviewer_groups", "name the claim and at least one value that make a reviewer");
        }
        if let Some(u) = &ap.webhook_url {
            if u.parse::<http::Uri>().ok().and_then(|u| u.scheme_str().map(str::to_owned)).is_none() {
                return e("approvals.webhook_url", "must be a URL like https://hooks.example/...");
            }
        }
        if let Some(pg) = &ap.postgres {
            crate::approvals::postgres::check_url(&pg.url).map_err(|r| ("approvals.postgres.url".to_string(), r))?;
            if let Some(f) = &pg.password_file {
                if !self.resolve(f).is_file() {
                    return e("approvals.postgres.password_file", "file does not exist");
                }
            }
            if !(1..=256).contains(&pg.pool_size) {
                return e("approvals.postgres.pool_size", "must be between 1 and 256");
            }
            if !(1..=60).contains(&pg.connect_timeout_secs) {
                return e("approvals.postgres.connect_timeout_secs", "must be between 1 and 60");
            }
            if !(100..=60_000).contains(&pg.statement_timeout_ms) {
                return e("approvals.postgres.statement_timeout_ms", "must be between 100 and 60000");
            }
        }
        let a = &self.audit;
        if !(1..=1000).contains(&a.fsync_interval_ms) {
            return e("audit.fsync_interval_ms", "must be between 1 and 1000");
        }
        if a.segment_bytes < 4096 {
            return e("audit.segment_bytes", "must be at least 4096");
        }
        if a.max_spool_bytes < a.segment_bytes {
            return e("audit.max_spool_bytes", "must be at least audit.segment_bytes");
        }
        if a.on_failure != "reject" && a.on_failure != "log" {
            return e("audit.on_failure", "must be \"reject\" or \"log\"");
        }
        if a.response_cap_bytes > 1 << 20 {
            return e("audit.response_cap_bytes", "must be at most 1048576");
        }
        if let Some(ch) = &a.clickhouse {
            if ch.url.parse::<http::Uri>().ok().and_then(|u| u.scheme_str().map(str::to_owned)).is_none() {
                return e("audit.clickhouse.url", "must be a URL like http://127.0.0.1:8123");
            }
            if ch.database.is_empty() || !ch.database.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return e("audit.clickhouse.database", "must be a plain identifier ([A-Za-z0-9_]+)");
            }
            if !(1..=1_000_000).contains(&ch.batch_rows) {
                return e("audit.clickhouse.batch_rows", "must be between 1 and 1000000");
            }
            if let Some(f) = &ch.password_file {
                if !self.resolve(f).is_file() {
                    return e("audit.clickhouse.password_file", "file does not exist");
                }
            }
        }
        Ok(())
    }

    /// The extra `on-response` deadline per MiB of response body.
    pub fn policy_deadline_per_mib(&self) -> Duration {
        Duration::from_millis(self.policies.deadline_per_mib_ms)
    }

    /// The policy CPU deadline per hook call.
    pub fn policy_deadline(&self) -> Duration {
        Duration::from_millis(self.policies.deadline_ms)
    }

    /// The keys policies must be signed with; None when signatures are not required.
    pub fn signing_keys(&self) -> Option<Vec<[u8; 32]>> {
        self.policies
            .require_signature
            .then(|| self.policies.signing_keys.iter().filter_map(|k| decode_key(k)).collect())
    }

    /// Each policy's config as JSON, by name.
    pub fn policy_configs(&self) -> serde_json::Value {
        serde_json::to_value(&self.policies.config).unwrap_or_default()
    }
}

/// A secret the gateway reads: the config key of its file, the environment
/// variable read when no file is configured, and the shortest value accepted.
#[derive(Debug, Clone, Copy)]
pub struct SecretSpec {
    /// The config key naming its file, e.g. `admin.token_file`.
    pub key: &'static str,
    /// The environment variable read when the key is unset.
    pub env: &'static str,
    /// Shortest value accepted, in bytes (after trimming whitespace).
    pub min_len: usize,
}

/// The admin API's bearer token: guessing it must be hopeless.
pub const ADMIN_TOKEN: SecretSpec = SecretSpec { key: "admin.token_file", env: "VEIL_ADMIN_TOKEN", min_len: 32 };
/// The HMAC key of session credentials: 256 bits, like the HMAC-SHA256 it keys.
pub const SESSION_KEY: SecretSpec = SecretSpec { key: "sts.session_key_file", env: "VEIL_SESSION_KEY", min_len: 32 };
/// The key of the `hash` mask style: 256 bits, like the HMAC-SHA256 it keys.
pub const HASH_KEY: SecretSpec = SecretSpec { key: "masking.hash_key_file", env: "VEIL_HASH_KEY", min_len: 32 };
/// The ClickHouse password. Veil only presents it; the minimum catches an
/// empty or truncated value before it becomes "no password".
pub const CLICKHOUSE_PASSWORD: SecretSpec =
    SecretSpec { key: "audit.clickhouse.password_file", env: "VEIL_CLICKHOUSE_PASSWORD", min_len: 16 };

/// Secret bytes. `Debug` shows the length only, so a secret cannot reach a
/// log or an error message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// The bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Random bytes, for a key this process alone uses.
    pub fn random(len: usize) -> Secret {
        let mut k = vec![0u8; len];
        rand::Rng::fill(&mut rand::rng(), &mut k[..]);
        Secret(k)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl Config {
    /// The one loader of secrets: the file at `file` (the config's value of
    /// `spec.key`) when set, else the variable `spec.env` when set, else
    /// `None`. Either source is trimmed of surrounding whitespace (a trailing
    /// newline is not part of a key) and must then hold `spec.min_len` bytes:
    /// an empty or short value is an error naming the key or variable, never
    /// a missing secret.
    pub fn secret(&self, spec: &SecretSpec, file: Option<&Path>) -> Result<Option<Secret>, ConfigError> {
        self.secret_from(spec, file, std::env::var_os(spec.env))
    }

    /// [`Config::secret`] with the environment variable's value given.
    fn secret_from(&self, spec: &SecretSpec, file: Option<&Path>, env: Option<std::ffi::OsString>) -> Result<Option<Secret>, ConfigError> {
        use std::os::unix::ffi::OsStringExt;
        let (bytes, file_err, key) = match (file, env) {
            (Some(f), _) => {
                let path = self.resolve(f);
                let bytes = std::fs::read(&path).map_err(|e| ConfigError {
                    file: self.source.display().to_string(),
                    key: spec.key.into(),
                    reason: format!("cannot read {}: {e}", path.display()),
                })?;
                (bytes, self.source.display().to_string(), format!("{} ({})", spec.key, path.display()))
            }
            (None, Some(v)) => (v.into_vec(), "environment".to_string(), spec.env.to_string()),
            (None, None) => return Ok(None),
        };
        let trimmed = bytes.trim_ascii();
        let reason = if trimmed.is_empty() {
            Some(format!("is set but empty; give at least {} bytes, or unset it", spec.min_len))
        } else if trimmed.len() < spec.min_len {
            Some(format!("is {} bytes long; at least {} are required", trimmed.len(), spec.min_len))
        } else {
            None
        };
        match reason {
            Some(reason) => Err(ConfigError { file: file_err, key, reason }),
            None => Ok(Some(Secret(trimmed.to_vec()))),
        }
    }
}

/// A base64 ed25519 public key (`policies.signing_keys`).
pub fn decode_key(text: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text.trim()).ok()?.try_into().ok()
}

/// A valid config in `dir` (its policy directory created) with `extra`
/// TOML appended, for unit tests.
#[cfg(test)]
pub(crate) fn minimal(dir: &Path, extra: &str) -> Config {
    std::fs::create_dir_all(dir.join("p")).unwrap();
    let text = format!(
        "[listener]\naddress = \"127.0.0.1:0\"\ninsecure_plaintext = true\n\
         [identity]\n[[identity.issuers]]\nissuer = \"https://issuer.example\"\naudience = \"veil\"\n\
         [policies]\ndir = \"p\"\n{extra}"
    );
    Config::from_text(&text, &dir.join("veil.toml")).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: SecretSpec = SecretSpec { key: "admin.token_file", env: "VEIL_TEST_TOKEN", min_len: 32 };

    #[test]
    fn file_and_environment_meet_the_same_minimum() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = minimal(dir.path(), "");
        let good = "t".repeat(32);
        std::fs::write(dir.path().join("tok"), format!("{good}\n")).unwrap();
        let from_file = cfg.secret_from(&SPEC, Some(Path::new("tok")), None).unwrap().unwrap();
        assert_eq!(from_file.expose(), good.as_bytes(), "trailing newline trimmed");
        let from_env = cfg.secret_from(&SPEC, None, Some(good.clone().into())).unwrap().unwrap();
        assert_eq!(from_env, from_file);
        // The file wins over the variable.
        let both = cfg.secret_from(&SPEC, Some(Path::new("tok")), Some("x".repeat(40).into())).unwrap().unwrap();
        assert_eq!(both, from_file);
        assert!(cfg.secret_from(&SPEC, None, None).unwrap().is_none());

        for bad in ["", "  \n", "x", &"y".repeat(31)] {
            let e = cfg.secret_from(&SPEC, None, Some(bad.into())).unwrap_err().to_string();
            assert!(e.starts_with("environment: VEIL_TEST_TOKEN: "), "{e}");
            assert!(e.contains("at least 32"), "{e}");
            std::fs::write(dir.path().join("tok"), bad).unwrap();
            let e = cfg.secret_from(&SPEC, Some(Path::new("tok")), None).unwrap_err().to_string();
            assert!(e.contains("veil.toml: admin.token_file (") && e.contains("tok)") && e.contains("at least 32"), "{e}");
            assert!(!bad.trim().is_empty() || e.contains("empty"), "{e}");
        }
        let e = cfg.secret_from(&SPEC, Some(Path::new("missing")), None).unwrap_err().to_string();
        assert!(e.contains("admin.token_file") && e.contains("cannot read"), "{e}");
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let s = minimal(dir.path(), "").secret_from(&SPEC, None, Some("hunter2-hunter2-hunter2-hunter2-x".into())).unwrap().unwrap();
        assert_eq!(format!("{s:?}"), "Secret(33 bytes)");
    }

    #[test]
    fn log_format_is_a_closed_set() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("p")).unwrap();
        let base = "[listener]\naddress = \"127.0.0.1:0\"\ninsecure_plaintext = true\n\
                    [identity]\n[[identity.issuers]]\nissuer = \"https://issuer.example\"\naudience = \"veil\"\n\
                    [policies]\ndir = \"p\"\n";
        let path = dir.path().join("veil.toml");
        let cfg = Config::from_text(&format!("{base}[log]\nformat = \"json\"\n"), &path).unwrap();
        assert_eq!(cfg.log.format, crate::logging::LogFormat::Json);
        let e = Config::from_text(&format!("{base}[log]\nformat = \"xml\"\n"), &path).unwrap_err().to_string();
        assert!(e.contains("unknown variant `xml`"), "{e}");
    }
}
