//! `veil serve`: the server's wiring. Load and check the config and every
//! secret, start the policy host, audit, approvals, upstream and listeners
//! (gateway, admin, metrics), watch the policy directory and SIGHUP, and
//! serve until SIGTERM/SIGINT.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::admin::Admin;
use crate::approvals::{Approvals, FileStore, PgSettings, PgStore, Store, Webhook};
use crate::audit::shipper::{ClickHouse, Shipper};
use crate::audit::Audit;
use crate::config::{self, Config, Secret};
use crate::identity::Verifier;
use crate::listener;
use crate::masking::HashKey;
use crate::metrics::Metrics;
use crate::pipeline::{Gateway, GatewayParts};
use crate::policy::reload::{self, Loader};
use crate::policy::{self, cache, Host, Limits, PolicySet};
use crate::sts::SessionKeys;
use crate::upstream::Upstream;

/// The secrets `veil serve` reads, all through [`Config::secret`].
struct ServeSecrets {
    admin_token: Option<Secret>,
    session_key: Secret,
    hash_key: Secret,
    clickhouse_password: Option<String>,
}

impl ServeSecrets {
    /// Read every secret before anything else starts, so that a bad one
    /// stops the gateway at once, naming its key.
    fn load(cfg: &Config) -> Result<ServeSecrets> {
        let random = |spec: &config::SecretSpec, found: Option<Secret>| {
            found.unwrap_or_else(|| {
                tracing::warn!(key = spec.key, env = spec.env, "neither is set: using a random key for this process only");
                Secret::random(32)
            })
        };
        let admin_token = match &cfg.admin.address {
            Some(_) => cfg.secret(&config::ADMIN_TOKEN, cfg.admin.token_file.as_deref())?,
            None => None,
        };
        let session_key = random(&config::SESSION_KEY, cfg.secret(&config::SESSION_KEY, cfg.sts.session_key_file.as_deref())?);
        let hash_key = random(&config::HASH_KEY, cfg.secret(&config::HASH_KEY, cfg.masking.hash_key_file.as_deref())?);
        Ok(ServeSecrets { admin_token, session_key, hash_key, clickhouse_password: clickhouse_password(cfg)? })
    }
}

/// `veil serve`: load and check everything, then serve until SIGTERM/SIGINT.
pub fn serve(path: &Path) -> Result<()> {
    let cfg = Config::load(path)?;
    crate::logging::init(crate::logging::LogFormat::from_env_or(cfg.log.format)?, "info");
    let secrets = ServeSecrets::load(&cfg)?;
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
        let sessions = SessionKeys::new(secrets.session_key.expose().to_vec());
        let hash_key = HashKey::new(secrets.hash_key.expose().to_vec());
        let cache = cfg.policy_cache_dir().map(|d| cache::open(&d)).transpose().with_context(|| format!("{}: policies.cache_dir", path.display()))?;
        let host = Host::new(
            Limits {
                deadline: cfg.policy_deadline(),
                deadline_per_mib: cfg.policy_deadline_per_mib(),
                memory_bytes: cfg.policies.memory_mib << 20,
                ..Limits::default()
            },
            cache,
        )?;
        reload::use_low_priority_compile_threads();
        let policy_dir = cfg.resolve(&cfg.policies.dir);
        // Watch before the first load, so that no change made while starting
        // is missed: events queue until the reload task runs.
        let watch = PolicyWatch::start(&policy_dir, path, cfg.policies.watch)?;
        let mut loader = Loader::new(host, policy_dir.clone(), Some(path.to_path_buf()), cfg.policy_configs(), cfg.signing_keys());
        if cfg.policies.require_signature {
            loader = loader.with_state_file(cfg.resolve(&cfg.policies.state_file)).with_context(|| format!("{}", path.display()))?;
        }
        // The same build as a reload: signatures, compile, world, self-check.
        let policies = match loader.build(&PolicySet::default()) {
            Ok(reload::Outcome::Loaded(set)) => set,
            Ok(reload::Outcome::Unchanged) => bail!("{}: policies.dir {}: no *.wasm policy files in this directory", path.display(), policy_dir.display()),
            Err(r) => bail!("{}: policies: {}: {}", path.display(), r.file, r.reason),
        };
        for p in policies.policies() {
            tracing::info!(name = %p.compiled.name, version = %p.compiled.version, sha256 = %p.compiled.sha256, cached = p.compiled.from_cache, "policy loaded");
        }
        if let Some(m) = loader.status(&policies).get("signed_manifest").filter(|m| !m.is_null()) {
            tracing::info!(version = %m["version"], sha256 = %m["sha256"].as_str().unwrap_or_default(), "signed policy set verified");
        }
        let upstream = Upstream::new(&cfg.upstream).await.with_context(|| format!("{}: upstream", path.display()))?;
        let audit = Audit::open(&cfg).with_context(|| format!("{}: audit.spool_dir", path.display()))?;
        let metrics = Arc::new(Metrics::default());
        let store: Box<dyn Store> = match PgSettings::from_config(&cfg)? {
            Some(pg) => Box::new(PgStore::connect(pg).await.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?),
            None => Box::new(FileStore::open(cfg.resolve(&cfg.approvals.store_file)).with_context(|| format!("{}: approvals.store_file", path.display()))?),
        };
        let mut approvals = Approvals::new(
            store,
            Duration::from_secs(cfg.approvals.wait_secs),
            Duration::from_secs(cfg.approvals.ttl_secs),
            cfg.approvals.min_approvals,
        );
        if let Some(url) = &cfg.approvals.webhook_url {
            approvals.webhook = Some(Webhook::new(url).map_err(|e| anyhow::anyhow!("{}: approvals.webhook_url: {e}", path.display()))?);
        }
        if let Some(ch) = &cfg.audit.clickhouse {
            let shipper = Shipper {
                ch: ClickHouse::new(ch, secrets.clickhouse_password.clone()),
                spool: audit.spool().clone(),
                batch_rows: ch.batch_rows,
                batch_wait: Duration::from_millis(ch.batch_wait_ms),
                metrics: metrics.clone(),
            };
            tokio::spawn(shipper.run());
        }
        let gateway = Arc::new(Gateway::new(
            &cfg,
            GatewayParts { verifier, sessions, policies, loader, upstream, hash_key, audit, approvals, metrics },
        ));
        let sweeper = gateway.clone();
        tokio::spawn(async move {
            loop {
                sweeper.expire_approvals().await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        tokio::spawn(watch.run(gateway.clone()));
        if let Some(addr) = &cfg.admin.address {
            let addr: std::net::SocketAddr = addr.parse()?;
            if secrets.admin_token.is_none() {
                tracing::warn!("no admin token (admin.token_file or VEIL_ADMIN_TOKEN): the admin API's policy endpoints are off; the reviewer API is on");
            }
            let admin = Arc::new(Admin::new(gateway.clone(), secrets.admin_token));
            let atcp = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("{}: admin.address {addr}", path.display()))?;
            tracing::info!(address = %atcp.local_addr()?, "admin API is listening");
            let (atls, limits) = (tls.clone(), listener::Limits { drain: Duration::ZERO, ..listener::Limits::of(&cfg.listener) });
            tokio::spawn(async move {
                let handler = move |req, remote| {
                    let admin = admin.clone();
                    async move { admin.handle(req, remote).await }
                };
                if let Err(e) = listener::serve(atcp, atls, handler, limits, std::future::pending()).await {
                    tracing::error!(error = %e, "admin API stopped");
                }
            });
        }
        let addr: std::net::SocketAddr = cfg.listener.address.parse()?;
        let tcp = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("{}: listener.address {addr}", path.display()))?;
        tracing::info!(address = %tcp.local_addr()?, tls = tls.is_some(), "veil is listening");
        if let Some(m) = &cfg.metrics.address {
            let m: std::net::SocketAddr = m.parse()?;
            let (gw, limits) = (gateway.clone(), listener::Limits::of(&cfg.listener));
            let mtcp = tokio::net::TcpListener::bind(m).await.with_context(|| format!("{}: metrics.address {m}", path.display()))?;
            tracing::info!(address = %mtcp.local_addr()?, "metrics endpoint is listening");
            tokio::spawn(async move {
                if let Err(e) = listener::serve_metrics(mtcp, gw, limits).await {
                    tracing::error!(error = %e, "metrics endpoint stopped");
                }
            });
        }
        let handler = move |req, remote| {
            let gateway = gateway.clone();
            async move { gateway.handle(req, remote).await }
        };
        let threads = cfg.listener.threads.unwrap_or_else(listener::default_threads);
        listener::serve_threads(tcp.into_std()?, threads, tls, handler, listener::Limits::of(&cfg.listener), shutdown_signal()).await
    })
}

/// What makes the gateway reload its policies: changes in the policy
/// directory or to the config file, and SIGHUP. Kubernetes ConfigMaps swap a
/// `..data` symlink: that shows up as a change in the watched directory too.
/// Set up synchronously, before the first load and before the gateway says
/// it is listening, so that neither a file change nor a SIGHUP during
/// start-up is lost (an early SIGHUP would otherwise terminate the process).
///
/// A change is *settled* when the event says the file is whole: a rename
/// into place, a writer closing it, a removal. Settled changes reload at
/// once (after a 2 ms window that gathers a burst); writes still in
/// progress wait for 30 ms of quiet or their closing event. Hidden files
/// (`.name`, a deploy's temporary copy) and editors' `name~` backups are
/// not policies and trigger nothing.
struct PolicyWatch {
    /// One message per relevant event: whether it is settled.
    changes: tokio::sync::mpsc::UnboundedReceiver<bool>,
    hup: tokio::signal::unix::Signal,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl PolicyWatch {
    fn start(dir: &Path, config: &Path, watch_files: bool) -> Result<PolicyWatch> {
        use notify::{event::AccessKind, event::AccessMode, event::ModifyKind, EventKind, RecursiveMode, Watcher};
        use tokio::signal::unix::{signal, SignalKind};
        let hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let (tx, changes) = tokio::sync::mpsc::unbounded_channel::<bool>();
        let config_name = config.file_name().map(|n| n.to_os_string());
        let policy_dir = dir.to_path_buf();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else { return };
            let settled = match ev.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) | EventKind::Modify(ModifyKind::Name(_)) | EventKind::Remove(_) => true,
                EventKind::Access(_) => return,
                _ => false,
            };
            let relevant = ev.paths.iter().any(|p| {
                let Some(name) = p.file_name() else { return false };
                let in_dir = p.parent() == Some(policy_dir.as_path()) && policy::is_policy_dir_entry(name);
                in_dir || Some(name.to_os_string()) == config_name || name == "..data"
            });
            if relevant {
                let _ = tx.send(settled);
            }
        });
        let watcher = match watcher {
            _ if !watch_files => None,
            Ok(mut w) => {
                if let Err(e) = w.watch(dir, RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the policy directory; reload with SIGHUP or `veil policy reload`");
                }
                if let Some(parent) = config.parent().filter(|p| *p != dir) {
                    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
                    if let Err(e) = w.watch(parent, RecursiveMode::NonRecursive) {
                        tracing::warn!(dir = %parent.display(), error = %e, "cannot watch the config file's directory");
                    }
                }
                Some(w)
            }
            Err(e) => {
                tracing::warn!(error = %e, "file watching unavailable; reload with SIGHUP or `veil policy reload`");
                None
            }
        };
        Ok(PolicyWatch { changes, hup, _watcher: watcher })
    }

    /// Reload on every change (once it is settled, see above) or SIGHUP,
    /// for as long as the gateway runs.
    async fn run(mut self, gateway: Arc<Gateway>) {
        loop {
            let (trigger, mut settled) = tokio::select! {
                Some(settled) = self.changes.recv() => ("file-change", settled),
                Some(()) = self.hup.recv() => ("sighup", true),
            };
            loop {
                let window = Duration::from_millis(if settled { 2 } else { 30 });
                match tokio::time::timeout(window, self.changes.recv()).await {
                    Ok(Some(s)) => settled = s,
                    _ => break,
                }
            }
            let _ = gateway.reload_policies(trigger).await;
            gateway.reload_roles(trigger).await;
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else { return std::future::pending().await };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The ClickHouse password (`audit.clickhouse.password_file`, else
/// `VEIL_CLICKHOUSE_PASSWORD`) when ClickHouse is configured; it goes into
/// an HTTP header, so it must be text.
pub(crate) fn clickhouse_password(cfg: &Config) -> Result<Option<String>> {
    let Some(ch) = &cfg.audit.clickhouse else { return Ok(None) };
    let Some(secret) = cfg.secret(&config::CLICKHOUSE_PASSWORD, ch.password_file.as_deref())? else { return Ok(None) };
    let text = String::from_utf8(secret.expose().to_vec()).map_err(|_| {
        anyhow::anyhow!("{}: {} or {}: the password must be UTF-8 text", cfg.source.display(), config::CLICKHOUSE_PASSWORD.key, config::CLICKHOUSE_PASSWORD.env)
    })?;
    Ok(Some(text))
}
