//! Value detectors: well-known secret formats found inside any string.
//!
//! Patterns follow the published formats of each issuer (AWS key id
//! prefixes, GitHub's `ghp_`/`github_pat_` tokens, Slack `xox?-`, Stripe
//! `sk_live_`, Google `AIza`, npm `npm_`, SendGrid `SG.`, PEM armour, JWTs)
//! and the shapes secret scanners such as gitleaks and detect-secrets look
//! for; the cases in `tests/detectors.rs` are our own.

use std::sync::OnceLock;

use regex::{Regex, RegexSet};

/// What a detector found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finding {
    /// An AWS access key id (an identifier: hashed so it can be correlated).
    AccessKeyId,
    /// Anything that is itself a secret (redacted).
    Secret,
}

fn patterns() -> &'static (RegexSet, Regex) {
    static P: OnceLock<(RegexSet, Regex)> = OnceLock::new();
    P.get_or_init(|| {
        let secrets = RegexSet::new([
            // PEM private keys of any kind.
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----",
            // JWTs: base64url JSON header and payload, then a signature.
            r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
            // GitHub tokens.
            r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{60,})\b",
            // Slack tokens and webhooks.
            r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
            r"https://hooks\.slack\.com/services/[A-Za-z0-9/]{20,}",
            // Stripe secret and restricted keys.
            r"\b(?:sk|rk)_live_[A-Za-z0-9]{20,}\b",
            // Google API keys.
            r"\bAIza[0-9A-Za-z_-]{35}\b",
            // npm, PyPI and OpenAI-style keys.
            r"\bnpm_[A-Za-z0-9]{36}\b",
            r"\bpypi-AgE[A-Za-z0-9_-]{50,}",
            r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{32,}",
            // SendGrid.
            r"\bSG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}\b",
            // Passwords in URLs: scheme://user:password@host.
            r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:[^/\s@]{3,}@[^\s/]+",
            // Passwords in connection strings: Password=...; pwd=...
            r"(?i)\b(?:password|passwd|pwd)\s*=\s*[^;\s]{3,}",
            // An AWS secret access key next to its name.
            r"(?i)aws_?secret_?access_?key\W{0,5}[A-Za-z0-9/+]{40}\b",
        ])
        .expect("detector patterns compile");
        let key_id = Regex::new(r"\b(?:AKIA|ASIA|ABIA|ACCA|AROA|AIDA)[A-Z2-7]{16}\b").expect("key id pattern compiles");
        (secrets, key_id)
    })
}

/// Key names under which a high-entropy value is a secret.
fn key_is_secret_like(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["secret", "password", "passwd", "pwd", "token", "apikey", "api_key", "api-key", "privatekey", "private_key", "credential", "auth"]
        .iter()
        .any(|w| k.contains(w))
        && !["tokentype", "token_type", "secretarn", "secretid", "secretname", "passwordpolicy", "passwordlastused", "authtype", "authorizer", "authentication_type", "secret_arn", "expiration", "expires", "lastchanged", "kmskeyid", "length", "enabled", "required", "nexttoken", "clienttoken", "continuationtoken", "paginationtoken", "idempotency", "sessiontokenexpir"]
            .iter()
            .any(|w| k.contains(w))
}

/// Shannon entropy in bits per character.
fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts.iter().filter(|c| **c > 0).map(|c| {
        let p = *c as f64 / n;
        -p * p.log2()
    }).sum()
}

/// Look at one string value found under `key` (the nearest object key).
pub fn scan(key: &str, value: &str) -> Option<Finding> {
    if value.len() < 8 {
        return None;
    }
    let (secrets, key_id) = patterns();
    if secrets.is_match(value) {
        return Some(Finding::Secret);
    }
    // A long base64 value may be encoded user data or a script: look inside.
    if value.len() >= 24 && value.len() <= 1 << 20 && looks_base64(value) {
        use base64::Engine as _;
        if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(value.trim()) {
            if let Ok(text) = std::str::from_utf8(&decoded) {
                if secrets.is_match(text) || key_id.is_match(text) {
                    return Some(Finding::Secret);
                }
            }
        }
    }
    let trimmed = value.trim();
    // Hex has at most 4 bits per character, so it gets a lower bar.
    let bar = if trimmed.bytes().all(|b| b.is_ascii_hexdigit()) { 3.0 } else { 3.5 };
    if key_is_secret_like(key) && trimmed.len() >= 12 && !trimmed.contains(' ') && entropy(trimmed) >= bar && !is_arn_or_url(trimmed) {
        return Some(Finding::Secret);
    }
    if key_id.is_match(value) {
        // A key id alone is an identifier; inside a longer string (a script,
        // an environment dump) the secret usually sits beside it.
        return Some(if key_id.find(value).is_some_and(|m| m.as_str().len() == value.trim().len()) { Finding::AccessKeyId } else { Finding::Secret });
    }
    None
}

fn looks_base64(s: &str) -> bool {
    let s = s.trim();
    s.len() % 4 == 0 && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}

fn is_arn_or_url(s: &str) -> bool {
    s.starts_with("arn:") || s.starts_with("https://") || s.starts_with("http://")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recall and precision over the labelled corpus; the floors are the
    /// figures reached when the corpus was written, so a regression fails.
    #[test]
    fn corpus_recall_and_precision() {
        let (mut tp, mut fp, mut fn_, mut tn) = (0, 0, 0, 0);
        let mut misses = Vec::new();
        for line in include_str!("../tests/corpus.tsv").lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let mut cols = line.splitn(3, '\t');
            let (label, key, value) = (cols.next().unwrap(), cols.next().unwrap(), cols.next().unwrap());
            let value = value.replace("\\n", "\n");
            let found = scan(key, &value) == Some(Finding::Secret);
            match (label, found) {
                ("S", true) => tp += 1,
                ("S", false) => { fn_ += 1; misses.push(format!("missed: {key}={value}")) }
                ("N", true) => { fp += 1; misses.push(format!("false positive: {key}={value}")) }
                ("N", false) => tn += 1,
                _ => panic!("bad corpus line {line:?}"),
            }
        }
        let recall = tp as f64 / (tp + fn_) as f64;
        let precision = tp as f64 / (tp + fp) as f64;
        println!("detectors: recall {recall:.3} precision {precision:.3} (tp {tp} fp {fp} fn {fn_} tn {tn})");
        assert!(recall >= 0.95 && precision >= 0.95, "recall {recall:.3} precision {precision:.3}\n{}", misses.join("\n"));
    }

    #[test]
    fn key_ids_alone_are_identifiers() {
        assert_eq!(scan("AccessKeyId", "AKIAIOSFODNN7EXAMPLE"), Some(Finding::AccessKeyId));
    }
}
