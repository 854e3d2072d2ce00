//! Hot reload: build a new policy set off the request path, check it, and
//! only then let the gateway swap it in (the caller holds the ArcSwap).
//!
//! A reload reads every `*.wasm` in the policy directory (hidden files and
//! editors' temporaries are skipped by [`policy_files`]), reuses policies
//! whose file sha256 and configuration are unchanged, compiles the rest,
//! and runs each new one's self-check: a smoke call of both hooks on a
//! sample input, which must not trap, time out or return malformed output.
//! Any failure rejects the whole new set — the last good set keeps serving —
//! and is remembered with the file and the reason for `veil policy status`.
//! A file caught mid-copy fails to compile and is rejected; the write that
//! completes it triggers the next reload.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Value};

use super::host::MAX_POLICY_FILE;
use super::{policy_files, CallInput, HookScope, Host, Identity, LoadedPolicy, Operation, PolicySet};
use crate::config::Config;

/// Lower the calling thread's CPU priority (nice 10; Linux's nice is per
/// thread), so that compiling a new policy set yields to calls being served
/// (a compile takes every core it is given). Best effort.
fn lower_thread_priority() {
    if let Err(e) = rustix::process::setpriority_process(None, 10) {
        tracing::debug!(error = %e, "cannot lower the priority of a compile thread");
    }
}

/// Compile on low-priority threads: wasmtime compiles a component's
/// functions in parallel on rayon's global pool, whose threads this makes
/// `veil-compile-N` at lowered priority. Call before the first compile.
pub fn use_low_priority_compile_threads() {
    let built = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("veil-compile-{i}"))
        .start_handler(|_| lower_thread_priority())
        .build_global();
    if let Err(e) = built {
        tracing::debug!(error = %e, "rayon's global pool was already set up");
    }
}

/// Run a reload's build on a thread of its own at lowered priority; `Err`
/// when it panicked.
pub async fn build_in_background<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("veil-reload".into())
        .spawn(move || {
            lower_thread_priority();
            let _ = tx.send(f());
        })
        .map_err(|e| format!("cannot start the reload thread: {e}"))?;
    rx.await.map_err(|_| "the reload thread panicked".to_string())
}

/// Why a reload was refused.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Rejection {
    /// The file at fault (policy or config).
    pub file: String,
    /// What was wrong.
    pub reason: String,
    /// When, Unix ms.
    pub at_ms: u64,
}

/// What a reload did.
pub enum Outcome {
    /// Files and configuration are as loaded: nothing to swap.
    Unchanged,
    /// A new, checked set to swap in.
    Loaded(PolicySet),
}

/// One active policy, as `veil policy status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ActivePolicy {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// sha256 of the file.
    pub sha256: String,
    /// File.
    pub file: String,
    /// When this version was loaded, Unix ms.
    pub loaded_at_ms: u64,
    /// Operations its `on-request` runs for (`scope`).
    pub on_request: String,
    /// Operations its `on-response` runs for.
    pub on_response: String,
}

/// Builds policy sets from the policy directory and the config file.
pub struct Loader {
    host: Host,
    dir: PathBuf,
    config_file: Option<PathBuf>,
    /// Serialises builds; `state` is only held briefly, so status queries
    /// never wait for a compile.
    build_lock: Mutex<()>,
    state: Mutex<State>,
}

struct State {
    configs: Value,
    keys: Option<Vec<[u8; 32]>>,
    loaded_at: Vec<(String, u64)>,
    last_rejected: Option<Rejection>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Loader {
    /// A loader for `dir`, re-reading policy configuration from `config_file` on each reload.
    /// `keys`: when set, only files signed by one of them load.
    pub fn new(host: Host, dir: PathBuf, config_file: Option<PathBuf>, configs: Value, keys: Option<Vec<[u8; 32]>>) -> Loader {
        Loader { host, dir, config_file, build_lock: Mutex::new(()), state: Mutex::new(State { configs, keys, loaded_at: Vec::new(), last_rejected: None }) }
    }

    /// The policy directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The config file reloads re-read, if any.
    pub fn config_file(&self) -> Option<&Path> {
        self.config_file.as_deref()
    }

    /// Build the set the files describe now. `current` lends unchanged policies.
    pub fn build(&self, current: &PolicySet) -> Result<Outcome, Rejection> {
        let _one_build = self.build_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (mut configs, mut keys) = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            (state.configs.clone(), state.keys.clone())
        };
        let result = self.build_inputs(&mut configs, &mut keys, current);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if result.is_ok() {
            state.configs = configs;
            state.keys = keys;
        }
        match &result {
            Err(r) => state.last_rejected = Some(r.clone()),
            Ok(Outcome::Loaded(set)) => {
                let now = now_ms();
                let old = std::mem::take(&mut state.loaded_at);
                state.loaded_at = set
                    .policies()
                    .iter()
                    .map(|p| {
                        let sha = &p.compiled.sha256;
                        (sha.clone(), old.iter().find(|(s, _)| s == sha).map_or(now, |(_, t)| *t))
                    })
                    .collect();
            }
            Ok(Outcome::Unchanged) => {}
        }
        result
    }

    /// Record the load time of the initial set.
    pub fn mark_loaded(&self, set: &PolicySet) {
        let now = now_ms();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.loaded_at = set.policies().iter().map(|p| (p.compiled.sha256.clone(), now)).collect();
    }

    /// Active policies and the last rejection.
    pub fn status(&self, set: &PolicySet) -> Value {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let active: Vec<ActivePolicy> = set
            .policies()
            .iter()
            .map(|p| ActivePolicy {
                name: p.compiled.name.clone(),
                version: p.compiled.version.clone(),
                sha256: p.compiled.sha256.clone(),
                file: p.compiled.path.display().to_string(),
                loaded_at_ms: state.loaded_at.iter().find(|(s, _)| *s == p.compiled.sha256).map_or(0, |(_, t)| *t),
                on_request: p.on_request.to_string(),
                on_response: p.on_response.to_string(),
            })
            .collect();
        json!({ "dir": self.dir.display().to_string(), "policies": active, "last_rejected": state.last_rejected })
    }

    fn build_inputs(&self, configs: &mut Value, keys: &mut Option<Vec<[u8; 32]>>, current: &PolicySet) -> Result<Outcome, Rejection> {
        let reject = |file: &Path, reason: String| Rejection { file: file.display().to_string(), reason, at_ms: now_ms() };
        if let Some(cfg_file) = &self.config_file {
            let cfg = Config::load(cfg_file).map_err(|e| reject(cfg_file, e.to_string()))?;
            *configs = cfg.policy_configs();
            *keys = cfg.signing_keys();
        }
        let files = policy_files(&self.dir).map_err(|e| reject(&self.dir, e.to_string()))?;
        let mut loaded: Vec<Arc<LoadedPolicy>> = Vec::with_capacity(files.len());
        let mut names = HashSet::new();
        for file in &files {
            let bytes = read_capped(file).map_err(|e| reject(file, e))?;
            if let Some(keys) = keys.as_ref() {
                check_signature(file, &bytes, keys).map_err(|e| reject(file, e))?;
            }
            let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            let reused = current.policies().iter().find(|p| p.compiled.sha256 == sha).cloned();
            let policy = match reused {
                Some(p) => {
                    let config = config_for(configs, &p.compiled.name);
                    if config == p.config_json {
                        p
                    } else {
                        Arc::new(LoadedPolicy::new(p.compiled.clone(), config).map_err(|e| reject(file, e))?)
                    }
                }
                None => {
                    let compiled = self.host.compile(file, &bytes).map_err(|e| reject(file, e.to_string()))?;
                    let config = config_for(configs, &compiled.name);
                    let p = Arc::new(LoadedPolicy::new(compiled, config).map_err(|e| reject(file, e))?);
                    self_check(&p).map_err(|e| reject(file, e))?;
                    p
                }
            };
            if !names.insert(policy.compiled.name.clone()) {
                return Err(reject(file, format!("another file already provides the policy named {:?}", policy.compiled.name)));
            }
            loaded.push(policy);
        }
        if let Some(map) = configs.as_object() {
            for name in map.keys() {
                if !names.contains(name) {
                    let file = self.config_file.clone().unwrap_or_else(|| self.dir.clone());
                    return Err(reject(&file, format!("policies.config.{name}: no loaded policy is named {name:?}")));
                }
            }
        }
        let same = loaded.len() == current.policies().len()
            && loaded.iter().zip(current.policies()).all(|(a, b)| Arc::ptr_eq(a, b));
        if same {
            return Ok(Outcome::Unchanged);
        }
        Ok(Outcome::Loaded(PolicySet::new(loaded)))
    }
}

/// A base64 ed25519 public key.
pub fn decode_key(text: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text.trim()).ok()?.try_into().ok()
}

/// The file's `<file>.sig` must hold a base64 ed25519 signature over the
/// file's bytes by one of `keys`.
fn check_signature(file: &Path, bytes: &[u8], keys: &[[u8; 32]]) -> Result<(), String> {
    use base64::Engine;
    let mut sig_path = file.as_os_str().to_owned();
    sig_path.push(".sig");
    let text = std::fs::read_to_string(&sig_path).map_err(|e| format!("signature required: cannot read {}: {e}", Path::new(&sig_path).display()))?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| format!("{}: not a base64 signature", Path::new(&sig_path).display()))?;
    let valid = keys.iter().any(|k| ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, k).verify(bytes, &sig).is_ok());
    if valid {
        Ok(())
    } else {
        Err("signature does not verify with any of policies.signing_keys".into())
    }
}

fn config_for(configs: &Value, name: &str) -> String {
    configs.get(name).cloned().unwrap_or_else(|| json!({})).to_string()
}

fn read_capped(file: &Path) -> Result<Vec<u8>, String> {
    let size = std::fs::metadata(file).map_err(|e| format!("cannot read: {e}"))?.len();
    if size > MAX_POLICY_FILE {
        return Err(format!("file is {size} bytes; the limit is {MAX_POLICY_FILE}"));
    }
    std::fs::read(file).map_err(|e| format!("cannot read: {e}"))
}

/// The built-in smoke call: both hooks on a sample input must run cleanly
/// (any verdict is fine; a trap, timeout or malformed output is not), whatever
/// the policy's scope.
pub fn self_check(p: &LoadedPolicy) -> Result<(), String> {
    let set = PolicySet::new(vec![Arc::new(LoadedPolicy {
        compiled: p.compiled.clone(),
        config_json: p.config_json.clone(),
        on_request: HookScope::all(),
        on_response: HookScope::all(),
    })]);
    let call = CallInput {
        identity: Identity {
            issuer: "https://issuer.veil.self-check".into(),
            subject: "veil-self-check".into(),
            claims: json!({"sub": "veil-self-check", "groups": []}),
        },
        operation: Operation {
            service: "secretsmanager".into(),
            action: "GetSecretValue".into(),
            region: "us-east-1".into(),
            resource: Some("veil/self-check".into()),
        },
        params: json!({"SecretId": "veil/self-check"}),
    };
    let failed = |reasons: &[super::Reason]| reasons.iter().find(|r| r.message.starts_with("on-")).map(|r| format!("self-check failed: {}", r.message));
    let req = set.on_request(&call);
    if let Some(e) = failed(&req.reasons) {
        return Err(e);
    }
    let body = json!({"ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:veil/self-check", "Name": "veil/self-check", "SecretString": "self-check"});
    let resp = set.on_response(&call, 200, &body);
    if let Some(e) = failed(&resp.deny) {
        return Err(e);
    }
    Ok(())
}
