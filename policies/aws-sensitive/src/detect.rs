//! Value detectors: well-known secret formats found inside any string.
//!
//! Formats follow the published ones of each issuer (AWS key id
//! prefixes, GitHub's `ghp_`/`github_pat_` tokens, Slack `xox?-`, Stripe
//! `sk_live_`, Google `AIza`, npm `npm_`, SendGrid `SG.`, PEM armour, JWTs)
//! and the shapes secret scanners such as gitleaks and detect-secrets look
//! for; the cases in `tests/detectors.rs` are our own.

/// What a detector found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finding {
    /// An AWS access key id (an identifier: hashed so it can be correlated).
    AccessKeyId,
    /// Anything that is itself a secret (redacted).
    Secret,
}

// Hand-written matchers in one pass, not regexes: every call runs on a fresh
// instance, so a regex set would be compiled on every call (milliseconds),
// and per-pattern substring searches are slow in wasm. One pass over the
// bytes dispatches on the byte at each position to the few formats that can
// start there; a mismatch costs a comparison or two.

fn alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}
fn b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}
fn word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}
fn base32(b: u8) -> bool {
    b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)
}

/// Length of the run of `class` bytes starting at `i`.
fn run(s: &[u8], i: usize, class: fn(u8) -> bool) -> usize {
    s[i.min(s.len())..].iter().take_while(|b| class(**b)).count()
}

/// At `i`: `lit` then `min..=max` bytes of `class`, starting a word.
fn token_at(s: &[u8], i: usize, lit: &[u8], class: fn(u8) -> bool, min: usize, max: usize) -> bool {
    if !s[i..].starts_with(lit) || (i > 0 && word(s[i - 1])) {
        return false;
    }
    let n = run(s, i + lit.len(), class);
    (min..=max).contains(&n)
}

fn private_key_at(s: &[u8], i: usize) -> bool {
    if !s[i..].starts_with(b"-----BEGIN ") {
        return false;
    }
    let rest = &s[i + 11..];
    let end = rest.windows(5).take(64).position(|w| w == b"-----").unwrap_or(0);
    let label = &rest[..end];
    label.ends_with(b"PRIVATE KEY") || label.ends_with(b"PRIVATE KEY BLOCK")
}

fn jwt_at(s: &[u8], i: usize) -> bool {
    if !s[i..].starts_with(b"eyJ") || (i > 0 && b64url(s[i - 1])) {
        return false;
    }
    let h = run(s, i, b64url);
    let p0 = i + h;
    if h < 11 || s.get(p0) != Some(&b'.') || !s[p0 + 1..].starts_with(b"eyJ") {
        return false;
    }
    let p = run(s, p0 + 1, b64url);
    let p1 = p0 + 1 + p;
    p >= 11 && s.get(p1) == Some(&b'.') && run(s, p1 + 1, b64url) >= 8
}

fn sendgrid_at(s: &[u8], i: usize) -> bool {
    s[i..].starts_with(b"SG.") && run(s, i + 3, b64url) == 22 && s.get(i + 25) == Some(&b'.') && run(s, i + 26, b64url) == 43
}

/// At a `://`: user:password@host follows.
fn url_password_at(s: &[u8], i: usize) -> bool {
    if !s[i..].starts_with(b"://") {
        return false;
    }
    let rest = &s[i + 3..];
    let end = rest.iter().take(512).position(|b| b.is_ascii_whitespace() || *b == b'/').unwrap_or(rest.len().min(512));
    let auth = &rest[..end];
    matches!((auth.iter().position(|b| *b == b':'), auth.iter().rposition(|b| *b == b'@')), (Some(c), Some(a)) if c > 0 && a > c + 3)
}

/// At an `=`: preceded by password/passwd/pwd (any case), followed by a value.
fn assigned_password_at(s: &[u8], i: usize) -> bool {
    let mut k = i;
    while k > 0 && s[k - 1] == b' ' {
        k -= 1;
    }
    let before = &s[..k];
    let named = [&b"password"[..], b"passwd", b"pwd"].iter().any(|name| {
        before.len() >= name.len()
            && before[before.len() - name.len()..].eq_ignore_ascii_case(name)
            && (before.len() == name.len() || !before[before.len() - name.len() - 1].is_ascii_alphabetic())
    });
    if !named {
        return false;
    }
    let mut j = i + 1;
    while j < s.len() && s[j] == b' ' {
        j += 1;
    }
    s[j..].iter().take_while(|b| **b != b';' && !b.is_ascii_whitespace()).count() >= 3
}

/// At a name of the AWS secret key, followed within a few bytes by 40 key characters.
fn aws_secret_assignment_at(s: &[u8], i: usize) -> bool {
    ["aws_secret_access_key", "secretaccesskey"].iter().any(|k| {
        let k = k.as_bytes();
        if s.len() < i + k.len() || !s[i..i + k.len()].eq_ignore_ascii_case(k) {
            return false;
        }
        let j = i + k.len();
        let key_char = |b: u8| b.is_ascii_alphanumeric() || b == b'/' || b == b'+';
        let gap = s[j..].iter().take(5).take_while(|b| !key_char(**b)).count();
        run(s, j + gap, key_char) == 40
    })
}

/// An AWS access key id at `i`: a known prefix and 16 base32 characters, a whole word.
fn key_id_at(s: &[u8], i: usize) -> Option<usize> {
    let prefix = s.get(i..i + 4)?;
    if !matches!(prefix, b"AKIA" | b"ASIA" | b"ABIA" | b"ACCA" | b"AROA" | b"AIDA") || (i > 0 && word(s[i - 1])) {
        return None;
    }
    let end = i + 4 + run(s, i + 4, base32);
    (end - i == 20 && (end == s.len() || !word(s[end]))).then_some(end)
}

/// One pass: does `s` hold a secret format, and where is the first key id?
fn detect(s: &[u8]) -> (bool, Option<(usize, usize)>) {
    let mut key = None;
    for i in 0..s.len() {
        let hit = match s[i] {
            b'-' => private_key_at(s, i),
            b'e' => jwt_at(s, i),
            b'g' => {
                [&b"ghp_"[..], b"gho_", b"ghu_", b"ghs_", b"ghr_"].iter().any(|p| token_at(s, i, p, alnum, 36, 36))
                    || token_at(s, i, b"github_pat_", word, 60, usize::MAX)
            }
            b'x' => s[i..].starts_with(b"xox") && s.get(i + 4) == Some(&b'-') && matches!(s.get(i + 3), Some(b'a' | b'b' | b'p' | b'o' | b's' | b'r'))
                && token_at(s, i, &s[i..i + 5], |b| alnum(b) || b == b'-', 10, usize::MAX),
            b'h' => s[i..].starts_with(b"hooks.slack.com/services/"),
            b's' => token_at(s, i, b"sk_live_", alnum, 20, usize::MAX)
                || [&b"sk-proj-"[..], b"sk-ant-", b"sk-"].iter().any(|p| token_at(s, i, p, b64url, 32, usize::MAX)),
            b'r' => token_at(s, i, b"rk_live_", alnum, 20, usize::MAX),
            b'A' => {
                if key.is_none() {
                    key = key_id_at(s, i).map(|end| (i, end));
                }
                token_at(s, i, b"AIza", b64url, 35, 35) || aws_secret_assignment_at(s, i)
            }
            b'a' | b'S' => aws_secret_assignment_at(s, i) || (s[i] == b'S' && sendgrid_at(s, i)),
            b'n' => token_at(s, i, b"npm_", alnum, 36, 36),
            b'p' => token_at(s, i, b"pypi-AgE", b64url, 50, usize::MAX),
            b':' => url_password_at(s, i),
            b'=' => assigned_password_at(s, i),
            _ => false,
        };
        if hit {
            return (true, key);
        }
    }
    (false, key)
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
    let (secret, key_id) = detect(value.as_bytes());
    if secret {
        return Some(Finding::Secret);
    }
    // A long base64 value may be encoded user data or a script: look inside.
    if value.len() >= 24 && value.len() <= 1 << 20 && looks_base64(value) {
        use base64::Engine as _;
        if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(value.trim()) {
            let (secret, key) = detect(&decoded);
            if secret || key.is_some() {
                return Some(Finding::Secret);
            }
        }
    }
    let trimmed = value.trim();
    // Hex has at most 4 bits per character, so it gets a lower bar.
    let bar = if trimmed.bytes().all(|b| b.is_ascii_hexdigit()) { 3.0 } else { 3.5 };
    if key_is_secret_like(key) && trimmed.len() >= 12 && !trimmed.contains(' ') && entropy(trimmed) >= bar && !is_arn_or_url(trimmed) {
        return Some(Finding::Secret);
    }
    if let Some((start, end)) = key_id {
        // A key id alone is an identifier; inside a longer string (a script,
        // an environment dump) the secret usually sits beside it.
        return Some(if end - start == value.trim().len() { Finding::AccessKeyId } else { Finding::Secret });
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
        assert!(recall >= 1.0 && precision >= 1.0, "recall {recall:.3} precision {precision:.3}\n{}", misses.join("\n"));
    }

    #[test]
    fn key_ids_alone_are_identifiers() {
        assert_eq!(scan("AccessKeyId", "AKIAIOSFODNN7EXAMPLE"), Some(Finding::AccessKeyId));
    }
}
