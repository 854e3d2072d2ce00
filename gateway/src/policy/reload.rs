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
//!
//! With `policies.require_signature`, the directory must match a signed
//! manifest of the whole set before anything is compiled ([`manifest`]): a
//! missing, extra or altered file, or an older manifest, rejects the set.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Value};

use super::host::MAX_POLICY_FILE;
use super::{policy_files, CallInput, HookScope, Host, Identity, LoadedPolicy, Operation, PolicySet};
use crate::config::Config;

pub mod manifest;
use manifest::{Accepted, ManifestError, Verified};

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
    /// Where the last accepted manifest is recorded (signed sets only).
    state_file: Option<PathBuf>,
}

struct State {
    configs: Value,
    keys: Option<Vec<[u8; 32]>>,
    loaded_at: Vec<(String, u64)>,
    last_rejected: Option<Rejection>,
    /// The newest signed manifest accepted, in this process or (through the
    /// state file) before it.
    accepted: Option<Accepted>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Loader {
    /// A loader for `dir`, re-reading policy configuration from `config_file` on each reload.
    /// `keys`: when set, only files signed by one of them load.
    pub fn new(host: Host, dir: PathBuf, config_file: Option<PathBuf>, configs: Value, keys: Option<Vec<[u8; 32]>>) -> Loader {
        let state = State { configs, keys, loaded_at: Vec::new(), last_rejected: None, accepted: None };
        Loader { host, dir, config_file, build_lock: Mutex::new(()), state: Mutex::new(state), state_file: None }
    }

    /// Remember accepted manifests in `path` (`policies.state_file`), and
    /// start from the one it records: no later build may load an older one.
    pub fn with_state_file(mut self, path: PathBuf) -> Result<Loader, ManifestError> {
        let accepted = manifest::read_state(&path)?;
        self.state.get_mut().unwrap_or_else(|p| p.into_inner()).accepted = accepted;
        self.state_file = Some(path);
        Ok(self)
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
        let (mut configs, mut keys, accepted) = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            (state.configs.clone(), state.keys.clone(), state.accepted.clone())
        };
        let result = self.build_inputs(&mut configs, &mut keys, accepted.as_ref(), current).and_then(|(outcome, verified)| {
            // Record a newer manifest before its set serves, so that no
            // restart can go back behind it; a set whose version cannot be
            // recorded is not loaded. The same manifest again (a restart, a
            // config change) writes nothing.
            let newer = verified.map(|v| v.accepted()).filter(|a| accepted.as_ref() != Some(a));
            if let (Some(a), Some(path)) = (&newer, &self.state_file) {
                manifest::write_state(path, a).map_err(|e| Rejection { file: path.display().to_string(), reason: e.to_string(), at_ms: now_ms() })?;
            }
            Ok((outcome, newer))
        });
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let result = match result {
            Ok((outcome, newer)) => {
                state.configs = configs;
                state.keys = keys;
                if newer.is_some() {
                    state.accepted = newer;
                }
                Ok(outcome)
            }
            Err(r) => Err(r),
        };
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
        let manifest = state.accepted.as_ref().map(|a| json!({ "version": a.version, "sha256": a.digest }));
        json!({
            "dir": self.dir.display().to_string(),
            "policies": active,
            "signed_manifest": manifest,
            "last_rejected": state.last_rejected,
        })
    }

    fn build_inputs(
        &self,
        configs: &mut Value,
        keys: &mut Option<Vec<[u8; 32]>>,
        accepted: Option<&Accepted>,
        current: &PolicySet,
    ) -> Result<(Outcome, Option<Verified>), Rejection> {
        let reject = |file: &Path, reason: String| Rejection { file: file.display().to_string(), reason, at_ms: now_ms() };
        if let Some(cfg_file) = &self.config_file {
            let cfg = Config::load(cfg_file).map_err(|e| reject(cfg_file, e.to_string()))?;
            *configs = cfg.policy_configs();
            *keys = cfg.signing_keys();
        }
        let files = policy_files(&self.dir).map_err(|e| reject(&self.dir, e.to_string()))?;
        let file_name = |f: &Path| f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // A signed set is checked as a whole before anything is compiled.
        let verified = match keys.as_ref() {
            Some(keys) => {
                let manifest_file = self.dir.join(manifest::MANIFEST);
                let v = manifest::load(&self.dir, keys).map_err(|e| reject(&manifest_file, e.to_string()))?;
                v.check_version(accepted).map_err(|e| reject(&manifest_file, e.to_string()))?;
                let present: Vec<String> = files.iter().map(|f| file_name(f)).collect();
                for (file, name) in files.iter().zip(&present) {
                    if !v.manifest.policies.iter().any(|e| &e.file == name) {
                        return Err(reject(file, ManifestError::Unlisted { file: name.clone(), version: v.manifest.version }.to_string()));
                    }
                }
                v.check_complete(present.iter().map(String::as_str)).map_err(|e| reject(&manifest_file, e.to_string()))?;
                Some(v)
            }
            None => None,
        };
        let mut loaded: Vec<Arc<LoadedPolicy>> = Vec::with_capacity(files.len());
        let mut names = HashSet::new();
        for file in &files {
            let bytes = read_capped(file).map_err(|e| reject(file, e))?;
            let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            // The digest of the very bytes compiled below: a file replaced
            // after the manifest was read is caught here.
            if let Some(v) = &verified {
                v.check_file(&file_name(file), &sha).map_err(|e| reject(file, e.to_string()))?;
            }
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
            return Ok((Outcome::Unchanged, verified));
        }
        Ok((Outcome::Loaded(PolicySet::new(loaded)), verified))
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
        warm: Default::default(),
    })]);
    let call = CallInput {
        identity: Identity::new("https://issuer.veil.self-check", "veil-self-check", json!({"sub": "veil-self-check", "groups": []})),
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
