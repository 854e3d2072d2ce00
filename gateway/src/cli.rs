//! The `veil` command line: `veil policy check|eval`. Errors surface here as
//! `anyhow` chains printed on stderr with exit code 1.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use std::time::Duration;

use crate::config::Config;
use crate::identity::Verifier;
use crate::listener;
use crate::masking::{self, HashKey};
use crate::pipeline::Gateway;
use crate::sts::SessionKeys;
use crate::upstream::Upstream;
use crate::policy::{self, CallInput, Host, Identity, Limits, LoadedPolicy, Operation, PolicySet, Verdict};

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
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Compile and validate a policy component; print its name, version and sha256.
    Check {
        /// The component file (`.wasm`).
        file: PathBuf,
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
    init_tracing();
    let result = match cli.command {
        Command::Serve { config } => serve(&config),
        Command::Policy(cmd) => run_policy(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("veil: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing() {
    let default = if std::env::args().nth(1).as_deref() == Some("serve") { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VEIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

/// `veil serve`: load and check everything, then serve until SIGTERM/SIGINT.
fn serve(path: &Path) -> Result<()> {
    let cfg = Config::load(path)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let tls = match (&cfg.listener.tls_cert, &cfg.listener.tls_key) {
            (Some(c), Some(k)) if !cfg.listener.insecure_plaintext => Some(listener::tls_config(&cfg.resolve(c), &cfg.resolve(k))?),
            _ => {
                tracing::warn!("listener.insecure_plaintext = true: serving plain HTTP; tokens and credentials cross the network in clear text");
                None
            }
        };
        let verifier = Verifier::new(&cfg.identity).await.with_context(|| format!("{}: identity.issuers", path.display()))?;
        let sessions = SessionKeys::new(secret(&cfg, cfg.sts.session_key_file.as_deref(), "VEIL_SESSION_KEY", "sts.session_key_file")?);
        let hash_key = HashKey::new(secret(&cfg, cfg.masking.hash_key_file.as_deref(), "VEIL_HASH_KEY", "masking.hash_key_file")?);
        let host = Host::new(Limits {
            deadline: cfg.policy_deadline(),
            memory_bytes: cfg.policies.memory_mib << 20,
            ..Limits::default()
        })?;
        let policies = load_set(&host, &[cfg.resolve(&cfg.policies.dir)], &cfg.policy_configs())
            .with_context(|| format!("{}: policies", path.display()))?;
        for p in policies.policies() {
            tracing::info!(name = %p.compiled.name, version = %p.compiled.version, sha256 = %p.compiled.sha256, "policy loaded");
        }
        let upstream = Upstream::new(&cfg.upstream).await.with_context(|| format!("{}: upstream", path.display()))?;
        let gateway = Arc::new(Gateway::new(&cfg, verifier, sessions, policies, upstream, hash_key));
        let addr: std::net::SocketAddr = cfg.listener.address.parse()?;
        let tcp = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("{}: listener.address {addr}", path.display()))?;
        tracing::info!(address = %tcp.local_addr()?, tls = tls.is_some(), "veil is listening");
        if let Some(m) = &cfg.metrics.address {
            let m: std::net::SocketAddr = m.parse()?;
            let gw = gateway.clone();
            let mtcp = tokio::net::TcpListener::bind(m).await.with_context(|| format!("{}: metrics.address {m}", path.display()))?;
            tracing::info!(address = %mtcp.local_addr()?, "metrics endpoint is listening");
            tokio::spawn(async move {
                if let Err(e) = listener::serve_metrics(mtcp, gw).await {
                    tracing::error!(error = %e, "metrics endpoint stopped");
                }
            });
        }
        listener::serve(
            tcp,
            tls,
            gateway,
            Duration::from_secs(cfg.listener.header_timeout_secs),
            Duration::from_secs(cfg.listener.shutdown_drain_secs),
            shutdown_signal(),
        )
        .await
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else { return std::future::pending().await };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// A secret from its configured file, else an environment variable, else
/// random bytes for this process (with a warning: replicas will disagree).
fn secret(cfg: &Config, file: Option<&Path>, env: &str, key: &str) -> Result<Vec<u8>> {
    if let Some(f) = file {
        let bytes = std::fs::read(cfg.resolve(f)).with_context(|| format!("{key} {}", f.display()))?;
        let trimmed = bytes.trim_ascii().to_vec();
        if trimmed.len() < 32 {
            bail!("{key} {}: the key must be at least 32 bytes", f.display());
        }
        return Ok(trimmed);
    }
    if let Ok(v) = std::env::var(env) {
        if v.len() < 32 {
            bail!("{env}: the key must be at least 32 bytes");
        }
        return Ok(v.into_bytes());
    }
    tracing::warn!("{key} is not set and {env} is empty: using a random key for this process only");
    let mut k = vec![0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut k[..]);
    Ok(k)
}

fn run_policy(cmd: PolicyCommand) -> Result<()> {
    match cmd {
        PolicyCommand::Check { file } => {
            let host = Host::new(Limits::default())?;
            let c = host.load(&file)?;
            println!("ok: {}", file.display());
            println!("name:    {}", c.name);
            println!("version: {}", c.version);
            println!("sha256:  {}", c.sha256);
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
            let response = response.as_deref().map(|p| read_json(p, "--response")).transpose()?;

            let host = Host::new(Limits::default())?;
            let set = load_set(&host, &policies, &configs)?;
            let identity = Identity {
                issuer: claims.get("iss").and_then(Value::as_str).unwrap_or("https://issuer.example").to_string(),
                subject: claims.get("sub").and_then(Value::as_str).unwrap_or("eval").to_string(),
                claims,
            };
            let call = CallInput { identity, operation: op, params };
            let out = evaluate(&set, &call, status, response, &eval_hash_key());
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
    }
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
            loaded.push(Arc::new(LoadedPolicy { config_json: config.to_string(), compiled }));
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

/// Run both hooks as the gateway would and describe the result.
fn evaluate(set: &PolicySet, call: &CallInput, status: u16, response: Option<Value>, key: &HashKey) -> Value {
    let req = set.on_request(call);
    let mut verdict = req.verdict;
    let mut reasons = req.reasons;
    let mut masks = Vec::new();
    let mut body = Value::Null;
    if let (Some(mut doc), false) = (response, verdict == Verdict::Deny) {
        let resp = set.on_response(call, status, &doc);
        if resp.deny.is_empty() {
            masking::apply(&mut doc, &resp.masks, key);
            body = doc;
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
