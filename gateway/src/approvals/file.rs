//! The embedded approval store, for a single gateway: entries in memory,
//! every change persisted to one JSON file (write, fsync, rename) before it
//! is visible, so pending approvals survive a restart. One process owns the
//! file; several gateways need [`super::PgStore`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::{ApprovalError, Decision, Entry, Opened, State, Store, Wakeups};

/// The embedded store: memory + one JSON file.
pub struct FileStore {
    path: PathBuf,
    entries: Mutex<BTreeMap<String, Entry>>,
    wakeups: Arc<Wakeups>,
}

impl FileStore {
    /// Open (or create) the store at `path`.
    pub fn open(path: PathBuf) -> Result<FileStore, ApprovalError> {
        let entries = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ApprovalError::Store(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(ApprovalError::Store(format!("{}: {e}", path.display()))),
        };
        Ok(FileStore { path, entries: Mutex::new(entries), wakeups: Arc::default() })
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

#[async_trait::async_trait]
impl Store for FileStore {
    async fn request(&self, new: Entry) -> Result<Opened, ApprovalError> {
        self.with(|m| {
            let live = |e: &Entry| e.fingerprint == new.fingerprint && e.state == State::Pending;
            if let Some(e) = m.values().find(|e| live(e) && e.expires_ms > new.created_ms) {
                return Ok((Opened { entry: e.clone(), created: false, expired: Vec::new() }, false));
            }
            // Past their expiry but not yet swept: one pending entry per
            // fingerprint, so they expire now and the new one takes their place.
            let mut expired = Vec::new();
            for e in m.values_mut().filter(|e| live(e)) {
                e.state = State::Expired;
                expired.push(e.clone());
            }
            m.insert(new.id.clone(), new.clone());
            Ok((Opened { entry: new, created: true, expired }, true))
        })
    }

    async fn get(&self, id: &str) -> Result<Option<Entry>, ApprovalError> {
        Ok(self.entries.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned())
    }

    async fn list(&self, state: State) -> Result<Vec<Entry>, ApprovalError> {
        Ok(self.entries.lock().unwrap_or_else(|p| p.into_inner()).values().filter(|e| e.state == state).cloned().collect())
    }

    async fn decide(&self, id: &str, d: Decision) -> Result<Entry, ApprovalError> {
        let e = self.with(|m| {
            let e = m.get_mut(id).ok_or_else(|| ApprovalError::NotFound(id.into()))?;
            e.decide(d)?;
            Ok((e.clone(), true))
        })?;
        self.wakeups.wake(id);
        Ok(e)
    }

    async fn take_grant(&self, fingerprint: &str, now_ms: u64) -> Result<Option<Entry>, ApprovalError> {
        self.with(|m| {
            let Some(e) = m.values_mut().find(|e| e.fingerprint == fingerprint && e.state == State::Approved && e.expires_ms > now_ms) else {
                return Ok((None, false));
            };
            e.state = State::Used;
            Ok((Some(e.clone()), true))
        })
    }

    async fn expire(&self, now_ms: u64) -> Result<Vec<Entry>, ApprovalError> {
        let expired = self.with(|m| {
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
        })?;
        for e in &expired {
            self.wakeups.wake(&e.id);
        }
        Ok(expired)
    }

    fn wakeups(&self) -> &Arc<Wakeups> {
        &self.wakeups
    }
}
