//! Where compiled policies are kept between runs: wasmtime's compilation
//! cache (keyed by the component's bytes and the engine's settings and
//! version), so a restart or a reload of an unchanged file skips Cranelift —
//! 10–20 s of CPU for a Python or JavaScript component.
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
