//! The `veil` command line: `veil serve`, `veil policy
//! check|test|eval|sign|keygen|reload|status`, `veil audit …` and `veil
//! approvals …`. Errors surface here as `anyhow` chains printed on stderr
//! with exit code 1.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};


use crate::audit::shipper::{self, ClickHouse, QueryArgs};
use crate::body::ParsedBody;
use crate::policy::reload::{self};
use crate::audit::{self as audit_mod};
use crate::config::Config;
use crate::aws;
use crate::masking::HashKey;
use crate::policy::{self, cache, CallInput, Host, Identity, Limits, LoadedPolicy, Operation, PolicySet, Verdict};

/// Veil: a policy gateway between AI agents and the AWS API.
#[derive(Parser, Debug)]
#[command(name = "veil", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The configuration file (see veil.example.toml).
        #[arg(long, default_value = "veil.toml")]
        config: PathBuf,
    },
    /// Work with policy components.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The audit trail: schema, compliance queries, the local spool.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Review calls held for approval (reviewer token: --token-file or VEIL_REVIEWER_TOKEN).
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
}

#[derive(Subcommand, Debug)]
enum ApprovalsCommand {
    /// Pending approvals.
    List(AdminArgs),
    /// One approval.
    Show {
        /// Approval id (apr-…).
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Approve a held call: the waiting call (or its retry) goes through once.
    Approve {
        /// Approval id.
        id: String,
        /// Why (recorded in the audit trail).
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Deny a held call.
    Deny {
        /// Approval id.
        id: String,
        /// Why (required; the agent sees it).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Create the ClickHouse database and table (the gateway also does this at start).
    Migrate {
        /// The gateway's configuration file.
        #[arg(long, default_value = "veil.toml")]
        config: PathBuf,
    },
    /// Run a compliance query against ClickHouse, or the local spool when none is configured.
    Query {
        /// secrets-accessed, denials-by-policy, approvals, masked-by-identity,
        /// calls-by-identity, policy-for-call or agent-session.
        name: String,
        /// The gateway's configuration file.
        #[arg(long, default_value = "veil.toml")]
        config: PathBuf,
        /// Window start: RFC 3339 time, Unix seconds, or an age like 15m, 24h, 7d.
        #[arg(long)]
        since: Option<String>,
        /// Window end (exclusive), same forms; default now.
        #[arg(long)]
        until: Option<String>,
        /// Identity subject.
        #[arg(long)]
        subject: Option<String>,
        /// Agent session header, trace id, SDK app id or role session name.
        #[arg(long)]
        session: Option<String>,
        /// Record id (policy-for-call).
        #[arg(long)]
        id: Option<String>,
        /// Print TSV with a header line instead of an aligned table.
        #[arg(long)]
        tsv: bool,
    },
    /// Print the records in the local spool (not yet shipped) as JSON lines.
    Export {
        /// The gateway's configuration file.
        #[arg(long, default_value = "veil.toml")]
        config: PathBuf,
    },
}

/// How to reach a running gateway's admin API.
#[derive(clap::Args, Debug)]
struct AdminArgs {
    /// The admin API's URL (`admin.address`), e.g. https://127.0.0.1:9443.
    #[arg(long, env = "VEIL_ADMIN_URL")]
    admin: String,
    /// File holding the token (admin token, or a reviewer's OIDC token);
    /// default: VEIL_ADMIN_TOKEN (policy commands) or VEIL_REVIEWER_TOKEN (approvals).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// PEM CA bundle that signed the gateway's certificate (default: the system roots).
    #[arg(long, env = "VEIL_CA_BUNDLE")]
    ca: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Make a running gateway reload its policies and their config now.
    Reload(AdminArgs),
    /// List a running gateway's active policies and the last rejected file.
    Status(AdminArgs),
    /// Sign the policy set of a directory: write its `manifest.json` (every
    /// `*.wasm` with its sha256, and a version) and `manifest.json.sig`, for
    /// gateways with `policies.require_signature = true`.
    Sign {
        /// The policy directory, as it will be deployed.
        dir: PathBuf,
        /// The ed25519 private key, PKCS#8 PEM (`veil policy keygen` or
        /// `openssl genpkey -algorithm ed25519`).
        #[arg(long)]
        key: PathBuf,
        /// The set's version; it must be higher than any the gateways have
        /// accepted. Default: the current Unix time, or one more than the
        /// directory's manifest when that is higher.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Make an ed25519 signing key: writes the private key (PKCS#8 PEM, mode
    /// 0600) and prints the public key for `policies.signing_keys`.
    Keygen {
        /// Where to write the private key (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Compile and validate a policy component; print its name, version and sha256.
    Check {
        /// The component file (`.wasm`).
        file: PathBuf,
    },
    /// Run one policy against a directory of conformance cases (`*.json`:
    /// operation, claims, params, config, response → expected verdict and
    /// masked body); prints a pass/fail table, exits 1 on any failure.
    Test {
        /// The component file (`.wasm`), in any language.
        policy: PathBuf,
        /// Directory of case files.
        cases: PathBuf,
    },
    /// Run policies on a sample call and print the combined decision and the masked response as JSON.
    Eval {
        /// Policy files, or directories of `*.wasm` policies.
        #[arg(required = true)]
        policies: Vec<PathBuf>,
        /// The operation, `service:Action` (e.g. `secretsmanager:GetSecretValue`).
        #[arg(long)]
        operation: String,
        /// Region of the call.
        #[arg(long, default_value = "us-east-1")]
        region: String,
        /// The operation's main resource (secret id, bucket/key …).
        #[arg(long)]
        resource: Option<String>,
        /// JSON file of the caller's token claims (`iss` and `sub` are used as issuer and subject).
        #[arg(long)]
        claims: Option<PathBuf>,
        /// JSON file of the request parameters.
        #[arg(long)]
        params: Option<PathBuf>,
        /// JSON file of the upstream response body; without it only on-request runs.
        #[arg(long)]
        response: Option<PathBuf>,
        /// HTTP status of the upstream response.
        #[arg(long, default_value_t = 200)]
        status: u16,
        /// JSON file mapping policy name to that policy's configuration.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// Run the CLI; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` sets up logging once its config (`[log] format`) is read.
    if !matches!(cli.command, Command::Serve { .. }) {
        if let Err(e) = crate::logging::LogFormat::from_env_or(Default::default()).map(|f| crate::logging::init(f, "warn")) {
            eprintln!("veil: error: {e}");
            return ExitCode::from(1);
        }
    }
    let result = match cli.command {
        Command::Serve { config } => crate::serve::serve(&config),
        Command::Policy(cmd) => run_policy(cmd),
        Command::Audit(cmd) => run_audit(cmd),
        Command::Approvals(cmd) => {
            use http::Method;
            let reason = |r: &str| Some(json!({ "reason": r }).to_string());
            match cmd {
                ApprovalsCommand::List(a) => admin_call(&a, "VEIL_REVIEWER_TOKEN", Method::GET, "/v1/approvals", None),
                ApprovalsCommand::Show { id, admin } => admin_call(&admin, "VEIL_REVIEWER_TOKEN", Method::GET, &format!("/v1/approvals/{id}"), None),
                ApprovalsCommand::Approve { id, reason: r, admin } => {
                    admin_call(&admin, "VEIL_REVIEWER_TOKEN", Method::POST, &format!("/v1/approvals/{id}/approve"), reason(&r))
                }
                ApprovalsCommand::Deny { id, reason: r, admin } => {
                    admin_call(&admin, "VEIL_REVIEWER_TOKEN", Method::POST, &format!("/v1/approvals/{id}/deny"), reason(&r))
                }
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("veil: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Call the admin API of a running gateway and print its JSON answer.
fn admin_call(a: &AdminArgs, token_env: &str, method: http::Method, path: &str, body: Option<String>) -> Result<()> {
    let token = match &a.token_file {
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("--token-file {}", f.display()))?.trim().to_string(),
        None => std::env::var(token_env).with_context(|| format!("no token: pass --token-file or set {token_env}"))?.trim().to_string(),
    };
    if token.is_empty() {
        bail!("the token is empty: check --token-file or {token_env}");
    }
    let (status, body) = crate::client::request(&a.admin, a.ca.as_deref(), method, path, &token, body)?;
    println!("{}", body.trim_end());
    if !status.is_success() {
        bail!("the gateway answered {status}");
    }
    Ok(())
}

fn run_audit(cmd: AuditCommand) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match cmd {
        AuditCommand::Migrate { config } => {
            let cfg = Config::load(&config)?;
            let ch = cfg.audit.clickhouse.as_ref().with_context(|| format!("{}: audit.clickhouse: not configured", config.display()))?;
            let client = ClickHouse::new(ch, crate::serve::clickhouse_password(&cfg)?);
            rt.block_on(client.migrate()).with_context(|| format!("ClickHouse at {}", ch.url))?;
            println!("ok: {}.audit is ready at {}", ch.database, ch.url);
            Ok(())
        }
        AuditCommand::Query { name, config, since, until, subject, session, id, tsv } => {
            let cfg = Config::load(&config)?;
            let sql = shipper::QUERIES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, q)| *q)
                .with_context(|| format!("no query named {name:?}; known: {}", shipper::QUERIES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")))?;
            let now = unix_now();
            let args = QueryArgs {
                since: since.as_deref().map(|s| parse_time(s, now, "--since")).transpose()?.unwrap_or(0),
                until: until.as_deref().map(|s| parse_time(s, now, "--until")).transpose()?.unwrap_or(now + 1),
                subject: subject.unwrap_or_default(),
                session: session.unwrap_or_default(),
                id: id.unwrap_or_default(),
            };
            let needs = |flag: &str, v: &str| if v.is_empty() { bail!("query {name} needs {flag}") } else { Ok(()) };
            match name.as_str() {
                "calls-by-identity" => needs("--subject", &args.subject)?,
                "policy-for-call" => needs("--id", &args.id)?,
                "agent-session" => needs("--session", &args.session)?,
                _ => {}
            }
            let table = match &cfg.audit.clickhouse {
                Some(ch) => {
                    let client = ClickHouse::new(ch, crate::serve::clickhouse_password(&cfg)?);
                    rt.block_on(client.query_tsv(&shipper::render(sql, &ch.database, &args))).with_context(|| format!("ClickHouse at {}", ch.url))?
                }
                None => {
                    let records = audit_mod::local::spool_records(&cfg.resolve(&cfg.audit.spool_dir))?;
                    audit_mod::local::query(&name, &records, &args)
                }
            };
            print!("{}", if tsv { table } else { audit_mod::local::align(&table) });
            Ok(())
        }
        AuditCommand::Export { config } => {
            let cfg = Config::load(&config)?;
            for r in audit_mod::local::spool_records(&cfg.resolve(&cfg.audit.spool_dir))? {
                println!("{}", serde_json::to_string(&r)?);
            }
            Ok(())
        }
    }
}

fn unix_now() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as u32).unwrap_or(0)
}

/// RFC 3339, Unix seconds, or an age (`15m`, `24h`, `7d`) before `now`.
fn parse_time(s: &str, now: u32, flag: &str) -> Result<u32> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    if let Some((num, unit)) = s.split_at_checked(s.len().saturating_sub(1)) {
        if let (Ok(n), Some(mult)) = (num.parse::<u32>(), match unit { "s" => Some(1), "m" => Some(60), "h" => Some(3600), "d" => Some(86400), _ => None }) {
            return Ok(now.saturating_sub(n.saturating_mul(mult)));
        }
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("{flag} {s:?}: expected RFC 3339 (2026-11-25T10:00:00Z), Unix seconds, or an age like 24h"))?;
    u32::try_from(t.unix_timestamp()).with_context(|| format!("{flag} {s:?}: out of range"))
}

/// The policy host of the `veil policy` commands, compiling through the
/// user's cache directory when it can be used (a warning when not).
fn tool_host() -> Result<Host> {
    let cache = cache::user_dir().and_then(|d| cache::open(&d).map_err(|e| tracing::warn!("compiled-policy cache not used: {e}")).ok());
    Host::new(Limits::default(), cache)
}

fn run_policy(cmd: PolicyCommand) -> Result<()> {
    match cmd {
        PolicyCommand::Reload(a) => admin_call(&a, "VEIL_ADMIN_TOKEN", http::Method::POST, "/v1/policies/reload", None),
        PolicyCommand::Status(a) => admin_call(&a, "VEIL_ADMIN_TOKEN", http::Method::GET, "/v1/policies", None),
        PolicyCommand::Sign { dir, key, version } => sign(&dir, &key, version),
        PolicyCommand::Keygen { out } => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let (pem, public) = reload::manifest::generate_key();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .with_context(|| format!("--out {}", out.display()))?;
            f.write_all(pem.as_bytes()).with_context(|| format!("--out {}", out.display()))?;
            println!("private key: {} (keep it off the gateway's hosts)", out.display());
            println!("public key:  {public}");
            println!("in veil.toml: [policies] require_signature = true, signing_keys = [\"{public}\"]");
            Ok(())
        }
        PolicyCommand::Test { policy, cases } => conformance(&policy, &cases),
        PolicyCommand::Check { file } => {
            let host = tool_host()?;
            let c = host.load(&file)?;
            println!("ok: {}", file.display());
            println!("name:    {}", c.name);
            println!("version: {}", c.version);
            println!("sha256:  {}", c.sha256);
            // The scope under an empty configuration (a configured policy may
            // widen or narrow it; `veil policy status` shows the live one).
            let p = LoadedPolicy::new(c, "{}".into()).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            println!("on-request:  {}", p.on_request);
            println!("on-response: {}", p.on_response);
            println!("detectors:   {}", if p.compiled.uses_scan() { "used (scan.findings)" } else { "not used" });
            Ok(())
        }
        PolicyCommand::Eval { policies, operation, region, resource, claims, params, response, status, config } => {
            let mut op = Operation::parse_qualified(&operation)
                .with_context(|| format!("--operation {operation:?}: expected service:Action, e.g. secretsmanager:GetSecretValue"))?;
            op.region = region;
            op.resource = resource;
            let claims = read_json_object(claims.as_deref(), "--claims")?;
            let params = read_json_object(params.as_deref(), "--params")?;
            let configs = read_json_object(config.as_deref(), "--config")?;
            let mut response = response
                .as_deref()
                .map(|p| -> Result<ParsedBody> {
                    let raw = std::fs::read(p).with_context(|| format!("--response {}", p.display()))?;
                    ParsedBody::parse(crate::aws::Protocol::Json, &raw, None).map_err(|e| anyhow::anyhow!("--response {}: not valid {e}", p.display()))
                })
                .transpose()?;

            let host = tool_host()?;
            let set = load_set(&host, &policies, &configs)?.for_authors();
            let identity = Identity::new(
                claims.get("iss").and_then(Value::as_str).unwrap_or("https://issuer.example").to_string(),
                claims.get("sub").and_then(Value::as_str).unwrap_or("eval").to_string(),
                claims,
            );
            let call = CallInput { identity, operation: op, params };
            let out = evaluate(&set, &call, status, response.as_mut(), &eval_hash_key());
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
    }
}

/// `veil policy sign`: write the signed manifest of `dir`.
fn sign(dir: &Path, key: &Path, version: Option<u64>) -> Result<()> {
    use reload::manifest;
    let pair = manifest::signing_key(key).context("--key")?;
    let previous = manifest::current_version(dir);
    let version = match version {
        Some(v) => {
            if let Some(p) = previous.filter(|p| v <= *p) {
                eprintln!("veil: warning: version {v} is not above the directory's current manifest ({p}); gateways that accepted {p} will refuse it");
            }
            v
        }
        None => previous.map_or(0, |p| p + 1).max(u64::from(unix_now())),
    };
    let m = manifest::describe(dir, version)?;
    manifest::write_signed(dir, &m, &pair)?;
    for e in &m.policies {
        println!("{}  {}", e.sha256, e.file);
    }
    println!("signed {} policies as version {version} with key {}", m.policies.len(), manifest::public_key(&pair));
    println!("wrote {} and {}", dir.join(manifest::MANIFEST).display(), dir.join(manifest::SIGNATURE).display());
    Ok(())
}

/// One conformance case (see `tests/conformance/README.md`).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    #[serde(default)]
    description: String,
    operation: String,
    #[serde(default = "default_region")]
    region: String,
    resource: Option<String>,
    #[serde(default)]
    claims: serde_json::Map<String, Value>,
    #[serde(default)]
    params: serde_json::Map<String, Value>,
    #[serde(default)]
    config: serde_json::Map<String, Value>,
    response: Option<Value>,
    /// The upstream body exactly as AWS sends it (JSON or XML text), parsed
    /// and written back with the gateway's codec for the service's protocol.
    response_wire: Option<String>,
    #[serde(default = "default_status")]
    status: u16,
    expect: Expect,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// allow, deny or approval-required; or rejected: the policy refuses
    /// this configuration at load (its `scope` fails), as the gateway would.
    verdict: String,
    /// The masked response body, exactly.
    body: Option<Value>,
    /// A substring at least one reason must contain.
    reason_contains: Option<String>,
    /// Every reason's message, exactly and in order.
    reasons: Option<Vec<String>>,
    /// Every mask the policy returned (`{"path", "style"}`), exactly and in order.
    masks: Option<Vec<Value>>,
    /// The masked body as the caller receives it on the wire, exactly
    /// (with `response_wire`).
    wire: Option<String>,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_status() -> u16 {
    200
}

/// `veil policy test`: run a policy against every case in a directory.
fn conformance(policy: &Path, dir: &Path) -> Result<()> {
    let host = tool_host()?;
    let compiled = host.load(policy)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no *.json cases", dir.display());
    }
    println!("{} {} ({})", compiled.name, compiled.version, policy.display());
    println!("{:<40} {:<18} {:<18} result", "case", "expected", "got");
    let mut failed = 0;
    for file in &files {
        let name = file.file_stem().and_then(|n| n.to_str()).unwrap_or("?").to_string();
        let text = std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
        let case: Case = serde_json::from_str(&text).with_context(|| format!("{}: not a valid case", file.display()))?;
        let mut op = Operation::parse_qualified(&case.operation).with_context(|| format!("{}: operation {:?}", file.display(), case.operation))?;
        op.region = case.region;
        op.resource = case.resource;
        let claims = Value::Object(case.claims);
        let identity = Identity::new(
            claims.get("iss").and_then(Value::as_str).unwrap_or("https://issuer.example").to_string(),
            claims.get("sub").and_then(Value::as_str).unwrap_or("conformance").to_string(),
            claims,
        );
        let wired = case.response_wire.is_some();
        let mut response = match (case.response, &case.response_wire) {
            (Some(_), Some(_)) => bail!("{}: give `response` or `response_wire`, not both", file.display()),
            (_, Some(raw)) => {
                let protocol = crate::aws::protocol_of(&op.service, &http::HeaderMap::new())
                    .with_context(|| format!("{}: no AWS protocol known for service {:?}", file.display(), op.service))?;
                let query_action = (protocol == crate::aws::Protocol::Query).then_some(op.action.as_str());
                let parsed = ParsedBody::parse(protocol, raw.as_bytes(), query_action)
                    .map_err(|e| anyhow::anyhow!("{}: response_wire: {e}", file.display()))?;
                Some(parsed)
            }
            (Some(response), None) => Some(
                ParsedBody::parse(crate::aws::Protocol::Json, response.to_string().as_bytes(), None)
                    .map_err(|e| anyhow::anyhow!("{}: response: {e}", file.display()))?,
            ),
            (None, None) => None,
        };
        let out = match LoadedPolicy::new(compiled.clone(), Value::Object(case.config).to_string()) {
            Ok(policy) => {
                let set = PolicySet::new(vec![Arc::new(policy)]).for_authors();
                let call = CallInput { identity, operation: op, params: Value::Object(case.params) };
                evaluate(&set, &call, case.status, response.as_mut(), &HashKey::new(b"veil-conformance".to_vec()))
            }
            Err(e) => json!({"verdict": "rejected", "reasons": [{"policy": compiled.name, "message": e}], "masks": [], "body": null}),
        };
        let got = out["verdict"].as_str().unwrap_or("?").to_string();
        let mut problems = Vec::new();
        if got != case.expect.verdict {
            problems.push(format!("verdict {got}, want {}", case.expect.verdict));
        }
        if let Some(want) = &case.expect.body {
            if &out["body"] != want {
                problems.push(format!("body {}, want {}", out["body"], want));
            }
        }
        if let Some(sub) = &case.expect.reason_contains {
            let reasons = out["reasons"].to_string();
            if !reasons.contains(sub.as_str()) {
                problems.push(format!("no reason contains {sub:?}: {reasons}"));
            }
        }
        if let Some(want) = &case.expect.reasons {
            let got: Vec<&str> = out["reasons"].as_array().into_iter().flatten().filter_map(|r| r["message"].as_str()).collect();
            if &got != want {
                problems.push(format!("reasons {got:?}, want {want:?}"));
            }
        }
        if let Some(want) = &case.expect.masks {
            if out["masks"] != json!(want) {
                problems.push(format!("masks {}, want {}", out["masks"], json!(want)));
            }
        }
        if let Some(want) = &case.expect.wire {
            match (response.as_mut().filter(|_| wired), &out["body"]) {
                (None, _) => problems.push("expect.wire needs response_wire".to_string()),
                (Some(_), Value::Null) => problems.push("no body reached the caller".to_string()),
                (Some(parsed), _) => {
                    let got = String::from_utf8_lossy(&parsed.to_bytes()).into_owned();
                    if &got != want {
                        problems.push(format!("wire {got:?}, want {want:?}"));
                    }
                }
            }
        }
        let result = if problems.is_empty() { "pass".to_string() } else { format!("FAIL: {}", problems.join("; ")) };
        if !problems.is_empty() {
            failed += 1;
        }
        println!("{:<40} {:<18} {:<18} {result}", name, case.expect.verdict, got);
        if !case.description.is_empty() && !problems.is_empty() {
            println!("    ({})", case.description);
        }
        // What the policy printed, under its case: the author's debugging
        // loop. Escaped (`{:?}`), one line per hook.
        for o in out["output"].as_array().into_iter().flatten() {
            let dropped = o["dropped_bytes"].as_u64().unwrap_or(0);
            let more = if dropped > 0 { format!(" (+{dropped} bytes not kept)") } else { String::new() };
            println!("    {} printed: {:?}{more}", o["hook"].as_str().unwrap_or("?"), o["text"].as_str().unwrap_or(""));
        }
    }
    println!("{} cases, {} passed, {} failed", files.len(), files.len() - failed, failed);
    if failed > 0 {
        bail!("{failed} conformance case(s) failed");
    }
    Ok(())
}

/// The key for `hash` masks in `veil policy eval`: `VEIL_HASH_KEY` when set,
/// else a fixed key (eval output is for testing, not for production).
fn eval_hash_key() -> HashKey {
    HashKey::new(std::env::var("VEIL_HASH_KEY").unwrap_or_else(|_| "veil-eval".into()).into_bytes())
}

/// Load every policy file named by `paths` (files or directories) into a set,
/// configuring each from `configs[name]`. Unknown names in `configs` are an
/// error: a typo there would otherwise silently leave a policy unconfigured.
pub fn load_set(host: &Host, paths: &[PathBuf], configs: &Value) -> Result<PolicySet> {
    let mut loaded = Vec::new();
    for path in paths {
        let files = policy::policy_files(path).with_context(|| format!("{}", path.display()))?;
        if files.is_empty() {
            bail!("{}: no *.wasm policy files in this directory", path.display());
        }
        for file in files {
            let compiled = host.load(&file)?;
            let config = configs.get(&compiled.name).cloned().unwrap_or_else(|| json!({}));
            let policy = LoadedPolicy::new(compiled, config.to_string()).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            loaded.push(Arc::new(policy));
        }
    }
    if let Some(map) = configs.as_object() {
        for name in map.keys() {
            if !loaded.iter().any(|p| &p.compiled.name == name) {
                bail!("--config: no loaded policy is named {name:?}");
            }
        }
    }
    Ok(PolicySet::new(loaded))
}

/// Run both hooks as the gateway would and describe the result, with what
/// the policies printed (`output`).
fn evaluate(set: &PolicySet, call: &CallInput, status: u16, response: Option<&mut ParsedBody>, key: &HashKey) -> Value {
    let req = set.on_request(call);
    let mut verdict = req.verdict;
    let mut reasons = req.reasons;
    let mut output = req.output;
    let mut masks = Vec::new();
    let mut body = Value::Null;
    if let (Some(parsed), false) = (response, verdict == Verdict::Deny) {
        let resp = parsed.decide(set, call, status);
        output.extend(resp.output);
        if resp.deny.is_empty() {
            parsed.mask(&resp.masks, aws::blob_outputs(&call.operation.service, &call.operation.action), key);
            body = parsed.view();
        } else {
            verdict = Verdict::Deny;
            reasons.extend(resp.deny);
        }
        masks = resp.masks.iter().map(|m| json!({"path": m.selector.as_str(), "style": m.style})).collect();
    }
    json!({
        "verdict": verdict,
        "reasons": reasons,
        "masks": masks,
        "body": body,
        "policies": set.references(),
        "output": output,
    })
}

fn read_json(path: &Path, flag: &str) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{flag} {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{flag} {}: not valid JSON", path.display()))
}

fn read_json_object(path: Option<&Path>, flag: &str) -> Result<Value> {
    let Some(path) = path else { return Ok(json!({})) };
    let v = read_json(path, flag)?;
    if !v.is_object() {
        bail!("{flag} {}: expected a JSON object", path.display());
    }
    Ok(v)
}
