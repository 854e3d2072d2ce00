//! Where compiled policies are kept: between runs, wasmtime's compilation
//! cache (keyed by the component's bytes and the engine's settings and
//! version), so a restart or a reload of an unchanged file skips Cranelift —
//! 10–20 s of CPU for a Python or JavaScript component; within a run,
//! Cranelift's per-function results ([`FunctionCache`]), so a changed policy
//! compiles only the functions that changed.
//!
//! Invariant: the cache holds native code the gateway will run, so it is
//! trusted like the binary. The directory is created private (0700) and is
//! refused when another user owns it or could write to it. A cache that
//! cannot be read or written never fails a load: wasmtime compiles instead.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a cache directory is refused.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// It could not be created or inspected.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// Someone other than this process's user could put code in it.
    #[error("{path}: {reason}; the compiled-policy cache holds code the gateway runs, so it must be private to the gateway's user")]
    Unsafe { path: PathBuf, reason: String },
    /// wasmtime refused its settings.
    #[error("{path}: {reason}")]
    Wasmtime { path: PathBuf, reason: String },
}

/// Create (if needed) and check `dir`; the wasmtime cache over it.
pub fn open(dir: &Path) -> Result<wasmtime::Cache, CacheError> {
    let io = |source| CacheError::Io { path: dir.into(), source };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
    let meta = std::fs::symlink_metadata(dir).map_err(io)?;
    let refuse = |reason: String| Err(CacheError::Unsafe { path: dir.into(), reason });
    if !meta.is_dir() {
        return refuse("not a directory (a symbolic link is not followed)".into());
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return refuse(format!("owned by uid {}, not by this process's uid {me}", meta.uid()));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return refuse(format!("writable by group or others (mode {:o})", meta.permissions().mode() & 0o777));
    }
    // wasmtime wants an absolute path.
    let dir = std::fs::canonicalize(dir).map_err(io)?;
    let mut config = wasmtime::CacheConfig::new();
    config.with_directory(&dir);
    wasmtime::Cache::new(config).map_err(|e| CacheError::Wasmtime { path: dir, reason: format!("{e:#}") })
}

/// Cranelift's per-function results, in memory, up to [`FUNCTION_CACHE_BYTES`]
/// (then it starts afresh). A new version of a policy mostly recompiles
/// functions this process has compiled before — its SDK, serde, the
/// standard library — which then cost a lookup instead of code generation:
/// what makes a reload fast. Keys are Cranelift's hashes of the function's
/// IR and settings, so a hit is the same code.
#[derive(Debug, Default)]
pub struct FunctionCache {
    entries: std::sync::Mutex<(std::collections::HashMap<Vec<u8>, Vec<u8>>, usize)>,
}

/// Most bytes of compiled functions kept in memory.
pub const FUNCTION_CACHE_BYTES: usize = 64 << 20;

impl wasmtime::CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.0.get(key).map(|v| std::borrow::Cow::Owned(v.clone()))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let size = key.len() + value.len();
        if size > FUNCTION_CACHE_BYTES {
            return false;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.1 + size > FUNCTION_CACHE_BYTES {
            *entries = Default::default();
        }
        entries.1 += size;
        if let Some(old) = entries.0.insert(key.to_vec(), value) {
            entries.1 -= key.len() + old.len();
        }
        true
    }
}

/// The per-user cache directory of the `veil policy` commands:
/// `$XDG_CACHE_HOME/veil`, else `~/.cache/veil`.
pub fn user_dir() -> Option<PathBuf> {
    let nonempty = |k| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    nonempty("XDG_CACHE_HOME").or_else(|| nonempty("HOME").map(|h| h.join(".cache"))).map(|d| d.join("veil"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_function_cache_stays_within_its_bound() {
        use wasmtime::CacheStore;
        let c = FunctionCache::default();
        assert!(c.insert(b"k1", vec![1; 10]));
        assert_eq!(c.get(b"k1").as_deref(), Some(&[1u8; 10][..]));
        assert!(c.insert(b"k1", vec![2; 20]));
        assert_eq!(c.entries.lock().unwrap().1, 22);
        assert!(!c.insert(b"huge", vec![0; FUNCTION_CACHE_BYTES]));
        assert!(c.insert(b"big", vec![0; FUNCTION_CACHE_BYTES - 10]));
        assert!(c.get(b"k1").is_none(), "full: started afresh");
        assert!(c.entries.lock().unwrap().1 <= FUNCTION_CACHE_BYTES);
    }

    #[test]
    fn a_new_directory_is_private_and_accepted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        open(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = open(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("writable by group or others (mode 777)"), "{e}");
    }

    #[test]
    fn a_symlink_or_a_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(open(&file).is_err());
        let link = tmp.path().join("l");
        std::os::unix::fs::symlink(tmp.path(), &link).unwrap();
        assert!(open(&link).unwrap_err().to_string().contains("not a directory"));
    }
}
