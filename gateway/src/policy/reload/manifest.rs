//! Signed policy sets (`policies.require_signature = true`).
//!
//! Signing each file alone would leave the *set* open: deleting a policy,
//! or putting back an older signed version, needs no key. So what is signed
//! is a manifest of the whole directory:
//!
//! ```json
//! {
//!   "format": "veil-policy-manifest/1",
//!   "version": 1767225600,
//!   "policies": [
//!     { "file": "aws-sensitive.wasm", "sha256": "…64 hex digits…" },
//!     { "file": "risky-actions.wasm", "sha256": "…" }
//!   ]
//! }
//! ```
//!
//! in `manifest.json`, with `manifest.json.sig` beside it: an ed25519
//! signature over the manifest's exact bytes, base64, by one of
//! `policies.signing_keys`. `veil policy sign` writes both.
//!
//! A directory loads only when it is exactly what the newest valid manifest
//! says: every listed file present with its sha256 (of the bytes that are
//! then compiled, so a file swapped after the check is still caught), no
//! other `*.wasm`, and a version at least the last one accepted — the same
//! version only for the same manifest. Anything else (a policy missing, an
//! extra or altered file, an older manifest replayed, a manifest that does
//! not parse, names a file twice or is signed by an unknown key) rejects
//! the whole set; the last good set keeps serving and the reason goes to
//! `veil policy status`, the log and a reload audit record.
//!
//! The last accepted version and the manifest's digest are kept in
//! `policies.state_file` (written atomically), so a restart cannot roll
//! back either. The policies' configuration lives in `veil.toml`, the
//! operator's file, and is not part of the signed set.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest's file name in the policy directory.
pub const MANIFEST: &str = "manifest.json";
/// The signature's file name in the policy directory.
pub const SIGNATURE: &str = "manifest.json.sig";
/// The `format` every manifest names: it also keeps a signature made for
/// anything else (a single policy file) from verifying as a manifest.
pub const FORMAT: &str = "veil-policy-manifest/1";

/// The signed description of a policy set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Only ever increases from one signed set to the next.
    pub version: u64,
    /// Every policy file of the set.
    pub policies: Vec<Entry>,
}

/// One policy file of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// File name in the policy directory (`risky-actions.wasm`).
    pub file: String,
    /// sha256 of the file, lower-case hex.
    pub sha256: String,
}

/// Why a signed set is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The manifest or its signature cannot be read.
    #[error("signature required: cannot read {path}: {cause}")]
    Unreadable {
        /// The file.
        path: String,
        /// The I/O error.
        cause: String,
    },
    /// The signature file is not base64 of 64 bytes.
    #[error("{SIGNATURE}: not a base64 ed25519 signature")]
    SignatureEncoding,
    /// No trusted key made the signature.
    #[error("{MANIFEST}: signature does not verify with any of policies.signing_keys")]
    Untrusted,
    /// The manifest is not valid JSON of the right shape.
    #[error("{MANIFEST}: does not parse: {0}")]
    Parse(String),
    /// The manifest is of another format.
    #[error("{MANIFEST}: format {0:?} is not {FORMAT:?}")]
    Format(String),
    /// A name that cannot be a policy file of the directory.
    #[error("{MANIFEST}: {0:?} is not a policy file name (a *.wasm file directly in the policy directory)")]
    BadName(String),
    /// A digest that is not 64 hex digits.
    #[error("{MANIFEST}: the sha256 of {0:?} is not 64 lower-case hex digits")]
    BadDigest(String),
    /// A file named twice.
    #[error("{MANIFEST}: {0:?} is listed twice")]
    Duplicate(String),
    /// A `*.wasm` in the directory that the manifest does not list.
    #[error("{file} is not in the signed manifest (version {version}): an unsigned policy")]
    Unlisted {
        /// The file.
        file: String,
        /// The manifest's version.
        version: u64,
    },
    /// A file whose bytes are not the signed ones.
    #[error("{file}: sha256 {got} is not the signed manifest's {want} (version {version})")]
    Mismatch {
        /// The file.
        file: String,
        /// Its sha256.
        got: String,
        /// The manifest's.
        want: String,
        /// The manifest's version.
        version: u64,
    },
    /// A listed file that is not in the directory.
    #[error("{file} is in the signed manifest (version {version}) but not in the policy directory")]
    Missing {
        /// The file.
        file: String,
        /// The manifest's version.
        version: u64,
    },
    /// An older manifest than one already accepted.
    #[error("{MANIFEST}: version {got} is older than version {accepted}, already accepted: a rollback is refused")]
    Rollback {
        /// This manifest's version.
        got: u64,
        /// The accepted one.
        accepted: u64,
    },
    /// The accepted version with other contents.
    #[error("{MANIFEST}: version {0} was already accepted for a different manifest; sign the new set with a higher version")]
    Reused(u64),
    /// The state file cannot be read or written.
    #[error("policies.state_file {path}: {cause}")]
    State {
        /// The file.
        path: String,
        /// What went wrong.
        cause: String,
    },
}

/// A manifest whose signature verified, with the sha256 of its bytes.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The manifest.
    pub manifest: Manifest,
    /// sha256 of the manifest file, hex: what [`Accepted`] remembers.
    pub digest: String,
}

/// What the state file remembers: the newest manifest accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accepted {
    /// Its version.
    pub version: u64,
    /// sha256 of its bytes.
    pub digest: String,
}

fn read(path: &Path) -> Result<Vec<u8>, ManifestError> {
    // A manifest of a few thousand policies is well under this.
    const MAX: u64 = 1 << 20;
    let unreadable = |cause: String| ManifestError::Unreadable { path: path.display().to_string(), cause };
    let len = std::fs::metadata(path).map_err(|e| unreadable(e.to_string()))?.len();
    if len > MAX {
        return Err(unreadable(format!("{len} bytes; the limit is {MAX}")));
    }
    std::fs::read(path).map_err(|e| unreadable(e.to_string()))
}

/// Whether `name` can be the file name of a policy of the directory: what
/// [`super::policy_files`] would load.
fn is_policy_name(name: &str) -> bool {
    name.ends_with(".wasm")
        && name.len() > ".wasm".len()
        && !name.contains(['/', '\\', '\0'])
        && super::super::is_policy_dir_entry(std::ffi::OsStr::new(name))
}

/// Parse and check a manifest's shape (not its signature).
pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| ManifestError::Parse(e.to_string()))?;
    if m.format != FORMAT {
        return Err(ManifestError::Format(m.format));
    }
    let mut seen = std::collections::HashSet::new();
    for e in &m.policies {
        if !is_policy_name(&e.file) {
            return Err(ManifestError::BadName(e.file.clone()));
        }
        if e.sha256.len() != 64 || !e.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(ManifestError::BadDigest(e.file.clone()));
        }
        if !seen.insert(e.file.as_str()) {
            return Err(ManifestError::Duplicate(e.file.clone()));
        }
    }
    Ok(m)
}

/// Read `dir`'s manifest and signature; the signature must verify with one
/// of `keys` before the manifest is even parsed.
pub fn load(dir: &Path, keys: &[[u8; 32]]) -> Result<Verified, ManifestError> {
    let bytes = read(&dir.join(MANIFEST))?;
    let sig_text = read(&dir.join(SIGNATURE))?;
    let sig = base64::engine::general_purpose::STANDARD.decode(sig_text.trim_ascii()).map_err(|_| ManifestError::SignatureEncoding)?;
    if sig.len() != 64 {
        return Err(ManifestError::SignatureEncoding);
    }
    let trusted = keys.iter().any(|k| ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, k).verify(&bytes, &sig).is_ok());
    if !trusted {
        return Err(ManifestError::Untrusted);
    }
    let manifest = parse(&bytes)?;
    Ok(Verified { manifest, digest: hex::encode(Sha256::digest(&bytes)) })
}

impl Verified {
    /// The file `name` with sha256 `sha256` must be listed with that digest.
    pub fn check_file(&self, name: &str, sha256: &str) -> Result<(), ManifestError> {
        let version = self.manifest.version;
        match self.manifest.policies.iter().find(|e| e.file == name) {
            None => Err(ManifestError::Unlisted { file: name.into(), version }),
            Some(e) if e.sha256 != sha256 => {
                Err(ManifestError::Mismatch { file: name.into(), got: sha256.into(), want: e.sha256.clone(), version })
            }
            Some(_) => Ok(()),
        }
    }

    /// Every listed file must be among `present` (file names).
    pub fn check_complete<'a>(&self, present: impl IntoIterator<Item = &'a str> + Clone) -> Result<(), ManifestError> {
        for e in &self.manifest.policies {
            if !present.clone().into_iter().any(|p| p == e.file) {
                return Err(ManifestError::Missing { file: e.file.clone(), version: self.manifest.version });
            }
        }
        Ok(())
    }

    /// This manifest may follow `accepted`: a higher version, or the same
    /// manifest again.
    pub fn check_version(&self, accepted: Option<&Accepted>) -> Result<(), ManifestError> {
        let Some(a) = accepted else { return Ok(()) };
        let got = self.manifest.version;
        if got < a.version {
            return Err(ManifestError::Rollback { got, accepted: a.version });
        }
        if got == a.version && self.digest != a.digest {
            return Err(ManifestError::Reused(got));
        }
        Ok(())
    }

    /// What the state file records once this set is accepted.
    pub fn accepted(&self) -> Accepted {
        Accepted { version: self.manifest.version, digest: self.digest.clone() }
    }
}

/// The state file's record; `None` when the file does not exist yet. A file
/// that exists but cannot be read or parsed is an error: silently starting
/// over would re-open rollbacks.
pub fn read_state(path: &Path) -> Result<Option<Accepted>, ManifestError> {
    let err = |cause: String| ManifestError::State { path: path.display().to_string(), cause };
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| err(format!("does not parse ({e}); it records the last accepted manifest version: restore it, or delete it to accept any signed version"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(format!("cannot read: {e}"))),
    }
}

/// Record `accepted` in the state file: written to a temporary file, synced
/// and renamed into place, so a crash leaves the old or the new record.
pub fn write_state(path: &Path, accepted: &Accepted) -> Result<(), ManifestError> {
    use std::io::Write;
    let err = |cause: String| ManifestError::State { path: path.display().to_string(), cause };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let text = serde_json::to_vec(accepted).map_err(|e| err(e.to_string()))?;
    let mut f = std::fs::File::create(&tmp).map_err(|e| err(format!("cannot write {}: {e}", tmp.display())))?;
    f.write_all(&text).and_then(|()| f.sync_all()).map_err(|e| err(format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| err(format!("cannot rename {} into place: {e}", tmp.display())))?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        // The rename is durable once the directory is synced.
        std::fs::File::open(parent).and_then(|d| d.sync_all()).map_err(|e| err(format!("cannot sync {}: {e}", parent.display())))?;
    }
    Ok(())
}

/// Why signing failed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The key file cannot be read or is not an ed25519 private key.
    #[error("{path}: {reason}")]
    Key {
        /// The key file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The policy directory or a file in it cannot be read or written.
    #[error("{path}: {cause}")]
    Io {
        /// The file or directory.
        path: String,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// There is nothing to sign.
    #[error("{0}: no *.wasm policy files in this directory")]
    Empty(String),
}

/// An ed25519 private key from a PEM file (`-----BEGIN PRIVATE KEY-----`,
/// PKCS#8 as `openssl genpkey -algorithm ed25519` or `veil policy keygen`
/// write it).
pub fn signing_key(path: &Path) -> Result<ring::signature::Ed25519KeyPair, SignError> {
    let bad = |reason: &str| SignError::Key { path: path.display().to_string(), reason: reason.into() };
    let text = std::fs::read_to_string(path).map_err(|e| SignError::Key { path: path.display().to_string(), reason: format!("cannot read: {e}") })?;
    let body: String = text
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "-----BEGIN PRIVATE KEY-----")
        .skip(1)
        .take_while(|l| *l != "-----END PRIVATE KEY-----")
        .collect();
    if body.is_empty() {
        return Err(bad("no -----BEGIN PRIVATE KEY----- block (PKCS#8 PEM, e.g. from `openssl genpkey -algorithm ed25519`)"));
    }
    let der = base64::engine::general_purpose::STANDARD.decode(body).map_err(|_| bad("the PEM block is not base64"))?;
    ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|_| bad("not an ed25519 private key"))
}

/// A new ed25519 key as PKCS#8 PEM, and its public key in base64 (the form
/// `policies.signing_keys` takes).
pub fn generate_key() -> (String, String) {
    let rng = ring::rand::SystemRandom::new();
    let der = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("the system's random source works");
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(der.as_ref()).expect("a key ring just generated parses");
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    (pem, public_key(&pair))
}

/// The base64 public key of `pair`.
pub fn public_key(pair: &ring::signature::Ed25519KeyPair) -> String {
    use ring::signature::KeyPair;
    base64::engine::general_purpose::STANDARD.encode(pair.public_key().as_ref())
}

/// The manifest of `dir` as it is now, at `version`.
pub fn describe(dir: &Path, version: u64) -> Result<Manifest, SignError> {
    let io = |path: &Path, cause| SignError::Io { path: path.display().to_string(), cause };
    let files = super::super::policy_files(dir).map_err(|e| io(dir, e))?;
    if files.is_empty() {
        return Err(SignError::Empty(dir.display().to_string()));
    }
    let mut policies = Vec::with_capacity(files.len());
    for f in files {
        let bytes = std::fs::read(&f).map_err(|e| io(&f, e))?;
        let file = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        policies.push(Entry { file, sha256: hex::encode(Sha256::digest(&bytes)) });
    }
    Ok(Manifest { format: FORMAT.into(), version, policies })
}

/// The version of the manifest in `dir` now, if one parses (unverified: it
/// only helps pick the next version).
pub fn current_version(dir: &Path) -> Option<u64> {
    std::fs::read(dir.join(MANIFEST)).ok().and_then(|b| parse(&b).ok()).map(|m| m.version)
}

/// Sign `manifest` with `key` and write it and its signature into `dir`,
/// each through a temporary file renamed into place (signature first: a
/// reload in between sees the old manifest with the new signature and
/// rejects it, and the manifest's rename reloads again).
pub fn write_signed(dir: &Path, manifest: &Manifest, key: &ring::signature::Ed25519KeyPair) -> Result<(), SignError> {
    let mut bytes = serde_json::to_vec_pretty(manifest).unwrap_or_default();
    bytes.push(b'\n');
    let sig = base64::engine::general_purpose::STANDARD.encode(key.sign(&bytes).as_ref());
    for (name, content) in [(SIGNATURE, format!("{sig}\n").into_bytes()), (MANIFEST, bytes)] {
        let path = dir.join(name);
        // Hidden, so the gateway's watcher ignores the temporary file.
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).map_err(|cause| SignError::Io { path: tmp.display().to_string(), cause })?;
        std::fs::rename(&tmp, &path).map_err(|cause| SignError::Io { path: path.display().to_string(), cause })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn key() -> Ed25519KeyPair {
        let (pem, _) = generate_key();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k.pem"), pem).unwrap();
        signing_key(&dir.path().join("k.pem")).unwrap()
    }

    fn pubkey(k: &Ed25519KeyPair) -> [u8; 32] {
        k.public_key().as_ref().try_into().unwrap()
    }

    fn dir_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (n, b) in files {
            std::fs::write(d.path().join(n), b).unwrap();
        }
        d
    }

    #[test]
    fn a_signed_directory_verifies_and_lists_every_file() {
        let k = key();
        let d = dir_with(&[("a.wasm", b"aaa"), ("b.wasm", b"bbb"), (".hidden.wasm", b"x"), ("notes.txt", b"x")]);
        let m = describe(d.path(), 7).unwrap();
        assert_eq!(m.policies.iter().map(|e| e.file.as_str()).collect::<Vec<_>>(), ["a.wasm", "b.wasm"]);
        write_signed(d.path(), &m, &k).unwrap();
        let v = load(d.path(), &[pubkey(&k)]).unwrap();
        assert_eq!(v.manifest, m);
        let sha_a = hex::encode(Sha256::digest(b"aaa"));
        v.check_file("a.wasm", &sha_a).unwrap();
        assert!(matches!(v.check_file("a.wasm", &"0".repeat(64)), Err(ManifestError::Mismatch { .. })));
        assert!(matches!(v.check_file("c.wasm", &sha_a), Err(ManifestError::Unlisted { .. })));
        v.check_complete(["a.wasm", "b.wasm"]).unwrap();
        let e = v.check_complete(["a.wasm"]).unwrap_err();
        assert_eq!(e, ManifestError::Missing { file: "b.wasm".into(), version: 7 });
        assert!(e.to_string().contains("b.wasm is in the signed manifest (version 7) but not in the policy directory"));
        assert_eq!(current_version(d.path()), Some(7));
    }

    #[test]
    fn unknown_keys_and_altered_manifests_are_refused() {
        let (k, other) = (key(), key());
        let d = dir_with(&[("a.wasm", b"aaa")]);
        write_signed(d.path(), &describe(d.path(), 1).unwrap(), &k).unwrap();
        assert_eq!(load(d.path(), &[pubkey(&other)]).unwrap_err(), ManifestError::Untrusted);
        let text = std::fs::read_to_string(d.path().join(MANIFEST)).unwrap();
        std::fs::write(d.path().join(MANIFEST), text.replace("\"version\": 1", "\"version\": 2")).unwrap();
        assert_eq!(load(d.path(), &[pubkey(&k)]).unwrap_err(), ManifestError::Untrusted);
        std::fs::write(d.path().join(SIGNATURE), "not base64!").unwrap();
        assert_eq!(load(d.path(), &[pubkey(&k)]).unwrap_err(), ManifestError::SignatureEncoding);
        std::fs::remove_file(d.path().join(SIGNATURE)).unwrap();
        let e = load(d.path(), &[pubkey(&k)]).unwrap_err().to_string();
        assert!(e.starts_with("signature required: cannot read") && e.contains(SIGNATURE), "{e}");
    }

    /// A manifest that is signed but malformed is refused with the reason.
    #[test]
    fn bad_manifests_are_refused_with_the_reason() {
        let k = key();
        let sha = "a".repeat(64);
        let cases: Vec<(String, fn(&ManifestError) -> bool)> = vec![
            ("not json".into(), |e| matches!(e, ManifestError::Parse(_))),
            (format!(r#"{{"format":"{FORMAT}","version":1,"policies":[],"extra":1}}"#), |e| matches!(e, ManifestError::Parse(_))),
            (r#"{"format":"other/1","version":1,"policies":[]}"#.into(), |e| matches!(e, ManifestError::Format(_))),
            (format!(r#"{{"format":"{FORMAT}","version":-1,"policies":[]}}"#), |e| matches!(e, ManifestError::Parse(_))),
            (format!(r#"{{"format":"{FORMAT}","version":1,"policies":[{{"file":"a.wasm","sha256":"{sha}"}},{{"file":"a.wasm","sha256":"{sha}"}}]}}"#), |e| {
                matches!(e, ManifestError::Duplicate(_))
            }),
            (format!(r#"{{"format":"{FORMAT}","version":1,"policies":[{{"file":"../a.wasm","sha256":"{sha}"}}]}}"#), |e| matches!(e, ManifestError::BadName(_))),
            (format!(r#"{{"format":"{FORMAT}","version":1,"policies":[{{"file":".a.wasm","sha256":"{sha}"}}]}}"#), |e| matches!(e, ManifestError::BadName(_))),
            (format!(r#"{{"format":"{FORMAT}","version":1,"policies":[{{"file":"a.txt","sha256":"{sha}"}}]}}"#), |e| matches!(e, ManifestError::BadName(_))),
            (format!(r#"{{"format":"{FORMAT}","version":1,"policies":[{{"file":"a.wasm","sha256":"ABC"}}]}}"#), |e| matches!(e, ManifestError::BadDigest(_))),
        ];
        for (text, expect) in cases {
            let d = dir_with(&[(MANIFEST, text.as_bytes())]);
            let sig = base64::engine::general_purpose::STANDARD.encode(k.sign(text.as_bytes()).as_ref());
            std::fs::write(d.path().join(SIGNATURE), sig).unwrap();
            let e = load(d.path(), &[pubkey(&k)]).unwrap_err();
            assert!(expect(&e), "{text}: {e}");
            assert!(e.to_string().starts_with(MANIFEST), "{e}");
        }
    }

    #[test]
    fn versions_only_go_up_and_are_remembered() {
        let k = key();
        let d = dir_with(&[("a.wasm", b"aaa")]);
        write_signed(d.path(), &describe(d.path(), 5).unwrap(), &k).unwrap();
        let v5 = load(d.path(), &[pubkey(&k)]).unwrap();
        v5.check_version(None).unwrap();
        v5.check_version(Some(&v5.accepted())).unwrap();
        let state = d.path().join("state").join("veil-policy-state.json");
        std::fs::create_dir(state.parent().unwrap()).unwrap();
        assert_eq!(read_state(&state).unwrap(), None);
        write_state(&state, &v5.accepted()).unwrap();
        assert_eq!(read_state(&state).unwrap(), Some(v5.accepted()));

        std::fs::write(d.path().join("a.wasm"), b"new").unwrap();
        write_signed(d.path(), &describe(d.path(), 4).unwrap(), &k).unwrap();
        let v4 = load(d.path(), &[pubkey(&k)]).unwrap();
        assert_eq!(v4.check_version(Some(&v5.accepted())).unwrap_err(), ManifestError::Rollback { got: 4, accepted: 5 });
        write_signed(d.path(), &describe(d.path(), 5).unwrap(), &k).unwrap();
        let other5 = load(d.path(), &[pubkey(&k)]).unwrap();
        assert_eq!(other5.check_version(Some(&v5.accepted())).unwrap_err(), ManifestError::Reused(5));
        write_signed(d.path(), &describe(d.path(), 6).unwrap(), &k).unwrap();
        load(d.path(), &[pubkey(&k)]).unwrap().check_version(Some(&v5.accepted())).unwrap();

        std::fs::write(&state, "garbage").unwrap();
        let e = read_state(&state).unwrap_err().to_string();
        assert!(e.contains("policies.state_file") && e.contains("does not parse"), "{e}");
    }

    #[test]
    fn keys_from_openssl_load() {
        // `openssl genpkey -algorithm ed25519` (PKCS#8 v1, no public key).
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIPzQbJ2NGkwQ6B+p6ue0W/wuLKuFdvKiAUyJtKhelYma\n-----END PRIVATE KEY-----\n";
        let d = dir_with(&[("k.pem", pem.as_bytes()), ("bad.pem", b"hello")]);
        let k = signing_key(&d.path().join("k.pem")).unwrap();
        assert_eq!(public_key(&k).len(), 44);
        let e = signing_key(&d.path().join("bad.pem")).unwrap_err().to_string();
        assert!(e.contains("bad.pem") && e.contains("BEGIN PRIVATE KEY"), "{e}");
    }
}
