//! Secret detectors: well-known secret formats found inside any string of a
//! response, run natively by the host and offered to policies through the
//! WIT `scan` interface (`findings`), so scanning a large body costs native
//! time once per response, not guest time per policy.
//!
//! Formats follow the published ones of each issuer (AWS key id
//! prefixes, GitHub's `ghp_`/`github_pat_` tokens, Slack `xox?-`, Stripe
//! `sk_live_`, Google `AIza`, npm `npm_`, SendGrid `SG.`, PEM armour, JWTs)
//! and the shapes secret scanners such as gitleaks and detect-secrets look
//! for; the labelled cases in `tests/detector-corpus.tsv` are our own.
//!
//! Hand-written matchers in one pass, not regexes: one pass over the bytes
//! dispatches on the byte at each position to the few formats that can start
//! there; a mismatch costs a comparison or two.

use crate::doc::{Look, Tree};
use crate::runs::run_len;

/// What a detector found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An AWS access key id (an identifier: policies hash it so it can be correlated).
    AccessKeyId,
    /// Anything that is itself a secret (policies redact it).
    Secret,
}

/// One string of a document that holds a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Where, in the selector language (keys quoted, `[i]` for elements).
    pub path: String,
    /// What kind of value.
    pub kind: Kind,
    /// The detector that matched: `private-key`, `jwt`, `aws-secret-key` …
    pub detector: &'static str,
}

/// Most findings one document may yield, and most bytes of their paths: a
/// document past either cannot be scanned safely and the caller fails closed.
pub const MAX_FINDINGS: usize = 100_000;
/// See [`MAX_FINDINGS`].
pub const MAX_FINDING_PATH_BYTES: usize = 8 << 20;

/// Why a document's findings cannot be reported; the caller fails closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("the response holds more secrets than can be reported ({MAX_FINDINGS} findings or {MAX_FINDING_PATH_BYTES} bytes of paths)")]
    TooMany,
    #[error("a secret sits under a key path of {0} bytes, longer than a selector may be ({max})", max = crate::masking::MAX_SELECTOR_LEN)]
    PathTooLong(usize),
}

fn alnum(b: u8) -> bool {
    // `is_ascii_alphanumeric` as compares the compiler can vectorise.
    ((b | 0x20).wrapping_sub(b'a') < 26) | (b.wrapping_sub(b'0') < 10)
}
fn b64url(b: u8) -> bool {
    alnum(b) | (b == b'-') | (b == b'_')
}
fn word(b: u8) -> bool {
    alnum(b) | (b == b'_')
}
/// A character of an AWS secret key or of base64 (`=` padding aside).
fn key_char(b: u8) -> bool {
    alnum(b) | (b == b'/') | (b == b'+')
}
fn hex(b: u8) -> bool {
    b.is_ascii_hexdigit()
}
fn base32(b: u8) -> bool {
    b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)
}

/// Length of the run of `class` bytes starting at `i`.
fn run(s: &[u8], i: usize, class: impl Fn(u8) -> bool) -> usize {
    run_len(&s[i.min(s.len())..], class)
}

/// At `i`: `lit` then `min..=max` bytes of `class`, starting a word.
fn token_at(s: &[u8], i: usize, lit: &[u8], class: impl Fn(u8) -> bool, min: usize, max: usize) -> bool {
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

/// Whether `s` ends with `name`, ASCII case ignored.
fn ends_with_ignore_case(s: &[u8], name: &[u8]) -> bool {
    s.len() >= name.len() && s[s.len() - name.len()..].eq_ignore_ascii_case(name)
}

/// At an `=` or `:`: a secret-like name, bare or quoted (`password=…`,
/// `"client_secret": "…"`, `DB_PASSWORD: …`), assigned a value that
/// [`named_secret`] judges a secret. The value ends at a closing quote, or
/// unquoted at whitespace or a separator.
fn assignment_at(s: &[u8], i: usize) -> bool {
    if s[i] == b':' && matches!(s.get(i + 1), Some(b':' | b'/')) {
        return false;
    }
    let mut k = i;
    while k > 0 && s[k - 1] == b' ' {
        k -= 1;
    }
    let closing = k.checked_sub(1).map(|q| s[q]).filter(|q| matches!(q, b'"' | b'\''));
    if closing.is_some() {
        k -= 1;
    } else if s[i] == b':' && !matches!(s.get(i + 1), Some(b' ' | b'\t')) {
        // YAML wants a blank after the colon; without one this is an ARN or a time.
        return false;
    }
    let end = k;
    let name_byte = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.');
    while k > 0 && end - k < 64 && name_byte(s[k - 1]) {
        k -= 1;
    }
    if k == end || (k > 0 && name_byte(s[k - 1])) {
        return false;
    }
    // ASCII by construction.
    let name = std::str::from_utf8(&s[k..end]).unwrap_or_default();
    // The name decides first: the value is read only under a secret-like one,
    // so text dense with `=` and `:` costs a look back each, not a scan ahead.
    let name = Name::of(name);
    if !name.secret {
        return false;
    }
    let mut j = i + 1;
    while j < s.len() && s[j] == b' ' {
        j += 1;
    }
    let value_at = |j: usize| -> &[u8] {
        match s.get(j) {
            Some(q @ (b'"' | b'\'')) => {
                let rest = s.get(j + 1..).unwrap_or_default();
                &rest[..rest.iter().take(1024).position(|b| b == q).unwrap_or(rest.len().min(1024))]
            }
            _ => {
                let rest = s.get(j..).unwrap_or_default();
                let stop = |b: &u8| b.is_ascii_whitespace() || matches!(b, b';' | b',' | b'&' | b'"' | b'\'' | b'}' | b')' | b']');
                &rest[..rest.iter().take(1024).position(stop).unwrap_or(rest.len().min(1024))]
            }
        }
    };
    let quoted = |j: usize| matches!(s.get(j), Some(b'"' | b'\''));
    let mut value = value_at(j);
    // `Authorization: Bearer <token>`: the credential is the second word.
    if !quoted(j) && ["bearer", "basic", "token", "digest"].iter().any(|w| value.eq_ignore_ascii_case(w.as_bytes())) {
        j = (j + value.len() + 1).min(s.len());
        value = value_at(j);
    }
    // After a colon, an unquoted value is a YAML-style one only when the
    // line or item ends with it: `Password: must contain a digit` is prose.
    if s[i] == b':' && !quoted(j) {
        let after = (j + value.len()).min(s.len());
        let next = s[after..].iter().find(|b| **b != b' ' && **b != b'\t');
        if !matches!(next, None | Some(b'\n' | b'\r' | b',' | b';' | b'}' | b']' | b'"' | b'\'')) {
            return false;
        }
    }
    std::str::from_utf8(value).is_ok_and(|v| named_secret(name, v).is_some())
}

/// At an `=`: an Azure connection string's `AccountKey` or `SharedAccessKey`
/// (any case), followed by a base64 key.
fn azure_key_at(s: &[u8], i: usize) -> bool {
    let before = &s[..i];
    let named = [&b"accountkey"[..], b"sharedaccesskey"].iter().any(|name| ends_with_ignore_case(before, name));
    let b64 = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
    named && run(s, i + 1, b64) >= 32
}

/// At a name of the AWS secret key, followed within a few bytes by 40 key characters.
fn aws_secret_assignment_at(s: &[u8], i: usize) -> bool {
    ["aws_secret_access_key", "secretaccesskey"].iter().any(|k| {
        let k = k.as_bytes();
        if s.len() < i + k.len() || !s[i..i + k.len()].eq_ignore_ascii_case(k) {
            return false;
        }
        let j = i + k.len();
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

/// An AWS secret access key standing alone: a run of exactly 40 key
/// characters (`A-Za-z0-9/+`) with upper and lower case and digits and the
/// entropy of random bytes (random keys: 4.48 bits per character at the
/// first percentile; paths and names of that length stay near 4.3).
fn bare_secret_key(s: &[u8]) -> bool {
    let mut i = 0;
    while i + 40 <= s.len() {
        let n = run(s, i, key_char);
        if n == 40 && (i == 0 || !matches!(s[i - 1], b'=' | b'-' | b'_' | b'.')) && !matches!(s.get(i + 40), Some(b'=' | b'-' | b'_' | b'.')) {
            let k = &s[i..i + 40];
            let classes = [u8::is_ascii_uppercase, u8::is_ascii_lowercase, u8::is_ascii_digit].iter().all(|c| k.iter().any(|b| c(b)));
            let slashes = k.iter().filter(|b| **b == b'/').count();
            if classes && slashes < 4 && entropy(k) >= 4.45 {
                return true;
            }
        }
        i += n.max(1);
    }
    false
}

/// `name` when `hit`.
fn hit(hit: bool, name: &'static str) -> Option<&'static str> {
    hit.then_some(name)
}

/// One pass: the first secret format `s` holds (the detector's name), and
/// where the first key id is.
fn detect(s: &[u8]) -> (Option<&'static str>, Option<(usize, usize)>) {
    let mut key = None;
    let mut i = 0;
    // Skip, in a tight loop, the positions no format starts at.
    while let Some(at) = next_start(s, i) {
        i = at;
        let found = match s[i] {
            b'-' => hit(private_key_at(s, i), "private-key"),
            b'e' => hit(jwt_at(s, i), "jwt"),
            b'g' => hit(
                [&b"ghp_"[..], b"gho_", b"ghu_", b"ghs_", b"ghr_"].iter().any(|p| token_at(s, i, p, alnum, 36, 36))
                    || token_at(s, i, b"github_pat_", word, 60, usize::MAX),
                "github-token",
            )
            .or_else(|| hit(token_at(s, i, b"glpat-", b64url, 20, usize::MAX), "gitlab-token")),
            b'x' => hit(
                s[i..].starts_with(b"xox") && s.get(i + 4) == Some(&b'-') && matches!(s.get(i + 3), Some(b'a' | b'b' | b'p' | b'o' | b's' | b'r'))
                    && token_at(s, i, &s[i..i + 5], |b| alnum(b) || b == b'-', 10, usize::MAX),
                "slack-token",
            ),
            b'h' => hit(s[i..].starts_with(b"hooks.slack.com/services/"), "slack-webhook")
                .or_else(|| hit([&b"hvs."[..], b"hvb."].iter().any(|p| token_at(s, i, p, b64url, 24, usize::MAX)), "vault-token"))
                .or_else(|| hit(token_at(s, i, b"hf_", alnum, 34, 34), "huggingface-token")),
            b'd' => hit(token_at(s, i, b"dckr_pat_", b64url, 20, usize::MAX), "docker-token").or_else(|| {
                hit([&b"dop_v1_"[..], b"doo_v1_", b"dor_v1_"].iter().any(|p| token_at(s, i, p, hex, 64, 64)), "digitalocean-token")
            }),
            b's' => hit(token_at(s, i, b"sk_live_", alnum, 20, usize::MAX), "stripe-key")
                .or_else(|| hit([&b"sk-proj-"[..], b"sk-ant-", b"sk-"].iter().any(|p| token_at(s, i, p, b64url, 32, usize::MAX)), "ai-api-key"))
                .or_else(|| hit(aws_secret_assignment_at(s, i), "aws-secret-key"))
                .or_else(|| hit([&b"shpat_"[..], b"shpca_", b"shppa_", b"shpss_"].iter().any(|p| token_at(s, i, p, hex, 32, 32)), "shopify-token")),
            b'r' => hit(token_at(s, i, b"rk_live_", alnum, 20, usize::MAX), "stripe-key"),
            b'A' => {
                if key.is_none() {
                    key = key_id_at(s, i).map(|end| (i, end));
                }
                hit(token_at(s, i, b"AIza", b64url, 35, 35), "google-api-key").or_else(|| hit(aws_secret_assignment_at(s, i), "aws-secret-key"))
            }
            b'a' | b'S' => hit(aws_secret_assignment_at(s, i), "aws-secret-key").or_else(|| hit(s[i] == b'S' && sendgrid_at(s, i), "sendgrid-key")),
            b'n' => hit(token_at(s, i, b"npm_", alnum, 36, 36), "npm-token"),
            b'p' => hit(token_at(s, i, b"pypi-AgE", b64url, 50, usize::MAX), "pypi-token"),
            b':' => hit(url_password_at(s, i), "url-password").or_else(|| hit(assignment_at(s, i), "secret-assignment")),
            b'=' => hit(azure_key_at(s, i), "azure-storage-key").or_else(|| hit(assignment_at(s, i), "secret-assignment")),
            _ => None,
        };
        if found.is_some() {
            return (found, key);
        }
        i += 1;
    }
    (None, key)
}

/// The first position from `i` where a format of `detect` can start, judged
/// by its first two bytes (the last byte of `s` is paired with 0).
fn next_start(s: &[u8], i: usize) -> Option<usize> {
    let starts = |a: u8, b: u8| {
        let pair = (a as usize) << 8 | b as usize;
        STARTS[pair >> 6] & (1 << (pair & 63)) != 0
    };
    let rest = s.get(i..)?;
    match rest.iter().zip(&rest[1.min(rest.len())..]).position(|(a, b)| starts(*a, *b)) {
        Some(k) => Some(i + k),
        None => rest.last().filter(|last| starts(**last, 0)).map(|_| s.len() - 1),
    }
}

/// The byte pairs a detected format can start with (the arms of `detect`),
/// as a bitset indexed by `first << 8 | second`. `:` and `=` start an
/// assignment whatever follows.
static STARTS: [u64; 1024] = {
    let mut t = [0u64; 1024];
    let pairs: &[(u8, &[u8])] = &[
        (b'-', b"-"),         // -----BEGIN
        (b'e', b"y"),         // eyJ (JWT)
        (b'g', b"hil"),       // ghp_ gho_ ghu_ ghs_ ghr_, github_pat_, glpat-
        (b'x', b"o"),         // xox?-
        (b'h', b"ovf"),       // hooks.slack.com, hvs. hvb., hf_
        (b'd', b"co"),        // dckr_pat_, dop_ doo_ dor_
        (b's', b"keEh"),      // sk_live_ sk-, secretaccesskey (any case), shpat_ …
        (b'r', b"k"),         // rk_live_
        (b'A', b"KSBCRIWw"),  // AKIA ASIA ABIA ACCA AROA AIDA, AIza, AWS_SECRET_ACCESS_KEY
        (b'a', b"wW"),        // aws_secret_access_key
        (b'S', b"eEG"),       // SecretAccessKey, SG.
        (b'n', b"p"),         // npm_
        (b'p', b"y"),         // pypi-
    ];
    let mut k = 0;
    while k < pairs.len() {
        let (first, seconds) = pairs[k];
        let mut j = 0;
        while j < seconds.len() {
            let pair = (first as usize) << 8 | seconds[j] as usize;
            t[pair >> 6] |= 1 << (pair & 63);
            j += 1;
        }
        k += 1;
    }
    // Every pair starting `:` or `=`: four whole words each.
    let mut w = 0;
    while w < 4 {
        t[((b':' as usize) << 2) + w] = u64::MAX;
        t[((b'=' as usize) << 2) + w] = u64::MAX;
        w += 1;
    }
    t
};

/// Parts of names that say what a value is about, not that it is a secret.
const NOT_SECRET_NAMES: &[&str] = &[
    "tokentype", "token_type", "secretarn", "secretid", "secretname", "secret_arn", "passwordpolicy", "passwordlastused", "authtype",
    "authorizer", "authentication_type", "expiration", "expires", "lastchanged", "kmskeyid", "length", "enabled", "required", "nexttoken",
    "clienttoken", "continuationtoken", "paginationtoken", "idempotency", "sessiontokenexpir",
];

/// Parts of password names: any value under them is a secret, however short
/// or plain (and `pwd` at the end of a name: [`Name::of`]).
const PASSWORD_WORDS: &[&str] = &["password", "passwd"];

/// Parts of names under which a high-entropy value is a secret.
const SECRET_WORDS: &[&str] =
    &["secret", "password", "passwd", "pwd", "token", "apikey", "api_key", "api-key", "privatekey", "private_key", "credential", "auth"];

/// Parts of the names of pagination tokens.
const PAGING_WORDS: &[&str] = &["nexttoken", "continuationtoken", "paginationtoken", "marker", "cursor"];

/// What a word found in a name says (bits of [`NameWords`]).
const PASSWORD: u8 = 1;
const SECRET: u8 = 2;
const NOT_SECRET: u8 = 4;
const PAGING: u8 = 8;

/// Every word above in one automaton (ASCII case ignored), with what each
/// says: a name is judged in one pass over it.
struct NameWords {
    words: aho_corasick::AhoCorasick,
    says: Vec<u8>,
}

fn name_words() -> &'static NameWords {
    static WORDS: std::sync::OnceLock<NameWords> = std::sync::OnceLock::new();
    WORDS.get_or_init(|| {
        let mut says = std::collections::BTreeMap::<&str, u8>::new();
        for (list, bit) in [(PASSWORD_WORDS, PASSWORD), (SECRET_WORDS, SECRET), (NOT_SECRET_NAMES, NOT_SECRET), (PAGING_WORDS, PAGING)] {
            for w in list {
                *says.entry(w).or_default() |= bit;
            }
        }
        let words = aho_corasick::AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(says.keys())
            .expect("a few short literal words build an automaton");
        NameWords { words, says: says.into_values().collect() }
    })
}

/// Values that stand for a secret without being one.
fn is_placeholder(v: &str) -> bool {
    let first = v.as_bytes().first().copied().unwrap_or(b'*');
    (matches!(first, b'*' | b'x' | b'X' | b'.' | b'-' | b'#') && run_len(v.as_bytes(), |b| b == first) == v.len())
        || v.starts_with("${")
        || v.starts_with("{{")
        || v.starts_with('<')
        || v.starts_with('{')
        || v.starts_with('[')
        || ["true", "false", "null", "none", "nil", "yes", "no", "required", "optional", "redacted"].iter().any(|w| v.eq_ignore_ascii_case(w))
}

/// A value under a name: a secret when the name is a password's and the
/// value is not a placeholder, or the name is secret-like and the value
/// has the entropy of a key (and is no ARN or URL). The detector's name.
fn named_secret(name: Name, value: &str) -> Option<&'static str> {
    if !name.secret {
        return None;
    }
    let v = value.trim();
    if v.len() < 3 || is_placeholder(v) {
        return None;
    }
    if name.password {
        return Some("password-under-secret-name");
    }
    if v.len() < 12 || v.contains(' ') || is_arn_or_url(v) {
        return None;
    }
    // Judged on the first KiB: random bytes show it as well as the whole,
    // and a long value costs no more than that.
    let sample = &v.as_bytes()[..v.len().min(1024)];
    // Hex has at most 4 bits per character, so it gets a lower bar.
    let bar = if sample.iter().all(u8::is_ascii_hexdigit) { 3.0 } else { 3.5 };
    (entropy(sample) >= bar).then_some("high-entropy-under-secret-name")
}

/// What a name says about the values under it. Judged once per distinct
/// name in a walk: listings repeat the same few names thousands of times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Name {
    /// Any value is a secret (`password`, `DB_PWD` …).
    password: bool,
    /// A high-entropy value is a secret (`token`, `api_key` …; password names too).
    secret: bool,
    /// A pagination token: opaque, and must go back as it came.
    paging: bool,
}

impl Name {
    /// Classify `name` (ASCII case ignored).
    fn of(name: &str) -> Name {
        let words = name_words();
        let says = words.words.find_overlapping_iter(name).fold(0, |says, m| says | words.says[m.pattern()]);
        let k = name.as_bytes();
        let pwd = ends_with_ignore_case(k, b"pwd") && (k.len() == 3 || !k[k.len() - 4].is_ascii_alphabetic());
        let plain = says & NOT_SECRET == 0;
        let password = (says & PASSWORD != 0 || pwd) && plain;
        Name { password, secret: password || (says & SECRET != 0 && plain), paging: says & PAGING != 0 }
    }
}

/// Shannon entropy in bits per character.
fn entropy(s: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for b in s {
        counts[*b as usize] += 1;
    }
    let n = s.len() as f64;
    counts.iter().filter(|c| **c > 0).map(|c| {
        let p = *c as f64 / n;
        -p * p.log2()
    }).sum()
}

/// Look at one string value found under `key` (the nearest object key):
/// what it holds and which detector said so.
pub fn scan(key: &str, value: &str) -> Option<(Kind, &'static str)> {
    if value.len() < 3 {
        return None;
    }
    scan_under(Name::of(key), value)
}

/// [`scan`] with the key already classified.
fn scan_under(key: Name, value: &str) -> Option<(Kind, &'static str)> {
    let (secret, key_id) = detect(value.as_bytes());
    if let Some(name) = secret {
        return Some((Kind::Secret, name));
    }
    // A pagination token is opaque but must go back as it came.
    if value.len() >= 40 && !key.paging && bare_secret_key(value.as_bytes()) {
        return Some((Kind::Secret, "aws-secret-key-shape"));
    }
    // A long base64 value may be encoded user data or a script: look inside.
    if value.len() >= 24 && value.len() <= 1 << 20 && looks_base64(value) {
        use base64::Engine as _;
        if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(value.trim()) {
            match detect(&decoded) {
                (Some(_), _) | (None, Some(_)) => return Some((Kind::Secret, "base64-encoded-secret")),
                (None, None) => {}
            }
        }
    }
    if let Some(name) = named_secret(key, value) {
        return Some((Kind::Secret, name));
    }
    if let Some((start, end)) = key_id {
        // A key id alone is an identifier; inside a longer string (a script,
        // an environment dump) the secret usually sits beside it.
        return Some(if end - start == value.trim().len() { (Kind::AccessKeyId, "aws-access-key-id") } else { (Kind::Secret, "aws-access-key-id-in-text") });
    }
    None
}

/// Every string of `doc` that holds a secret, in document order, each with
/// its selector path. The key a string is judged under is its nearest object
/// key, except that the `value`/`Value` of an environment-style entry
/// (`{"name": "DB_PASSWORD", "value": "…"}`) is judged under that name.
pub fn findings<'a>(doc: impl Tree<'a>) -> Result<Vec<Finding>, ScanError> {
    let mut walk = Walk { out: Vec::new(), path_bytes: 0, steps: Vec::new(), names: Default::default() };
    walk.value(doc, "")?;
    Ok(walk.out)
}

/// One step from the root to a value.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

struct Walk<'a> {
    out: Vec<Finding>,
    path_bytes: usize,
    /// Where the walk is; written out as a path only at a finding.
    steps: Vec<Step<'a>>,
    /// Names already classified (a fast hash: the keys are the document's own).
    names: foldhash::HashMap<&'a str, Name>,
}

impl<'a> Walk<'a> {
    fn value(&mut self, v: impl Tree<'a>, key: &'a str) -> Result<(), ScanError> {
        match v.look() {
            Look::Str(s) if s.len() >= 3 => {
                if let Some((kind, detector)) = scan_under(self.name(key), s) {
                    // The whole document is a string: nothing to select.
                    if !self.steps.is_empty() {
                        let path = self.path();
                        if path.len() > crate::masking::MAX_SELECTOR_LEN {
                            return Err(ScanError::PathTooLong(path.len()));
                        }
                        self.path_bytes += path.len();
                        if self.out.len() >= MAX_FINDINGS || self.path_bytes > MAX_FINDING_PATH_BYTES {
                            return Err(ScanError::TooMany);
                        }
                        self.out.push(Finding { path, kind, detector });
                    }
                }
            }
            Look::Array => {
                for (i, item) in v.items().enumerate() {
                    self.steps.push(Step::Index(i));
                    self.value(item, key)?;
                    self.steps.pop();
                }
            }
            Look::Object => {
                for (k, child) in v.entries() {
                    let effective = judged_under(v, k, key);
                    self.steps.push(Step::Key(k));
                    self.value(child, effective)?;
                    self.steps.pop();
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// `key` classified, once per distinct name (up to a bound).
    fn name(&mut self, key: &'a str) -> Name {
        if let Some(n) = self.names.get(key) {
            return *n;
        }
        let n = Name::of(key);
        if self.names.len() < 4096 {
            self.names.insert(key, n);
        }
        n
    }

    /// The current position in the selector language.
    fn path(&self) -> String {
        use std::fmt::Write as _;
        let mut path = String::new();
        for step in &self.steps {
            match step {
                Step::Key(k) => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    push_quoted(&mut path, k);
                }
                Step::Index(i) => {
                    let _ = write!(path, "[{i}]");
                }
            }
        }
        path
    }
}

/// The key a child `k` of `map` (itself under `parent`) is judged under:
/// - the `…Value` of a name/value pair is judged under its name:
///   `{"Name": "DB_PASSWORD", "Value": …}`, `{"ParameterKey": "DbPassword",
///   "ParameterValue": …}`, `{"OutputKey": …, "OutputValue": …}`;
/// - a DynamoDB attribute value (`{"S": …}`, `{"SS": […]}`) is judged under
///   the attribute's name: `{"password": {"S": …}}`;
/// - anything else under its own key.
fn judged_under<'m>(map: impl Tree<'m>, k: &'m str, parent: &'m str) -> &'m str {
    // One entry (written once or repeated): a DynamoDB attribute value.
    if matches!(k, "S" | "SS") && map.entries().all(|(other, _)| other == k) {
        return parent;
    }
    let Some(stem) = k.strip_suffix("Value").or_else(|| k.strip_suffix("value")) else { return k };
    let mut name = String::with_capacity(stem.len() + 4);
    for suffix in ["Name", "Key", "name", "key"] {
        name.clear();
        name.push_str(stem);
        name.push_str(suffix);
        if let Some(n) = map.get(&name).and_then(|v| v.as_str()) {
            return n;
        }
    }
    k
}

/// `key` as a quoted selector step.
fn push_quoted(path: &mut String, key: &str) {
    path.push('"');
    for c in key.chars() {
        if c == '"' || c == '\\' {
            path.push('\\');
        }
        path.push(c);
    }
    path.push('"');
}

fn looks_base64(s: &str) -> bool {
    let s = s.trim();
    s.len() % 4 == 0 && run_len(s.as_bytes(), |b| key_char(b) | (b == b'=')) == s.len()
}

fn is_arn_or_url(s: &str) -> bool {
    s.starts_with("arn:") || s.starts_with("https://") || s.starts_with("http://")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Recall and precision over the labelled corpus; the floors are the
    /// figures reached when the corpus was written, so a regression fails.
    #[test]
    fn corpus_recall_and_precision() {
        let (mut tp, mut fp, mut fn_, mut tn) = (0, 0, 0, 0);
        let mut misses = Vec::new();
        for line in include_str!("../tests/detector-corpus.tsv").lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let mut cols = line.splitn(3, '\t');
            let (label, key, value) = (cols.next().unwrap(), cols.next().unwrap(), cols.next().unwrap());
            let value = value.replace("\\n", "\n");
            let found = matches!(scan(key, &value), Some((Kind::Secret, _)));
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
    fn classes_are_those_of_the_standard_library() {
        assert!((0..=255u8).all(|b| alnum(b) == b.is_ascii_alphanumeric()));
        assert!((0..=255u8).all(|b| key_char(b) == (b.is_ascii_alphanumeric() || b == b'/' || b == b'+')));
    }

    #[test]
    fn names_are_judged_by_the_words_they_contain() {
        let judged = |n: &str| {
            let k = Name::of(n);
            (k.password, k.secret, k.paging)
        };
        for (name, want) in [
            ("DB_PASSWORD", (true, true, false)),
            ("password", (true, true, false)),
            ("MasterUserPassword", (true, true, false)),
            ("passwd", (true, true, false)),
            ("db_pwd", (true, true, false)),
            ("PWD", (true, true, false)),
            ("cwd_apwd", (false, true, false)),
            ("PasswordPolicy", (false, false, false)),
            ("PasswordLastUsed", (false, false, false)),
            ("SecretString", (false, true, false)),
            ("SecretId", (false, false, false)),
            ("ClientSecret", (false, true, false)),
            ("x-api-key", (false, true, false)),
            ("SessionToken", (false, true, false)),
            ("Authorization", (false, true, false)),
            ("AuthType", (false, false, false)),
            ("NextToken", (false, false, true)),
            ("Marker", (false, false, true)),
            ("NextMarker", (false, false, true)),
            ("TokenType", (false, false, false)),
            ("Name", (false, false, false)),
            ("", (false, false, false)),
            ("pässwörd", (false, false, false)),
        ] {
            assert_eq!(judged(name), want, "{name}");
        }
    }

    #[test]
    fn an_assignment_cut_short_at_the_end_of_a_string_is_no_panic() {
        // Found by fuzzing: the credential word after `Bearer` lay past the end.
        for s in ["Authorization: Bearer", "Authorization: Bearer ", "token=basic", "password: '", "password=\""] {
            let _ = scan("note", s);
        }
    }

    #[test]
    fn an_assignment_after_many_harmless_ones_is_found() {
        // Harmless names cost a look back each, and do not hide what follows.
        let dense = format!("{}password=hunter2", "a=".repeat(100_000));
        assert_eq!(scan("note", &dense), Some((Kind::Secret, "secret-assignment")));
        assert_eq!(scan("note", &"a=".repeat(100_000)), None);
    }

    #[test]
    fn key_ids_alone_are_identifiers() {
        assert_eq!(scan("AccessKeyId", "AKIAIOSFODNN7EXAMPLE"), Some((Kind::AccessKeyId, "aws-access-key-id")));
    }

    #[test]
    fn values_are_judged_under_the_name_they_belong_to() {
        let doc = serde_json::json!({
            "Parameters": [{"ParameterKey": "DbPassword", "ParameterValue": "q8Zr2LmX0vTw7KpN"}, {"ParameterKey": "Env", "ParameterValue": "q8Zr2LmX0vTw7KpN"}],
            "Outputs": [{"OutputKey": "ApiToken", "OutputValue": "Zx8q2LkP0vRt7mWn4bYc"}],
            "Item": {"password": {"S": "pQ7vK2mZx9LwR4tB"}, "tokens": {"SS": ["Zx8q2LkP0vRt7mWn4bYc"]}, "note": {"S": "pQ7vK2mZx9LwR4tB"}},
            "Environment": [{"name": "API_KEY", "value": "Zx8q2LkP0vRt7mWn4bYc"}],
            "Tags": [{"Key": "db_password", "Value": "letmein"}, {"Key": "owner", "Value": "letmein"}],
        });
        let paths: Vec<String> = findings(&doc).unwrap().into_iter().map(|f| f.path).collect();
        assert_eq!(
            paths,
            vec![
                r#""Environment"[0]."value""#,
                r#""Item"."password"."S""#,
                r#""Item"."tokens"."SS"[0]"#,
                r#""Outputs"[0]."OutputValue""#,
                r#""Parameters"[0]."ParameterValue""#,
                r#""Tags"[0]."Value""#,
            ]
        );
    }

    #[test]
    fn each_saas_format_is_named_by_its_detector() {
        let cases = [
            ("glpat-xK9pQ2mZ7vR4tW8yB3nC", "gitlab-token"),
            ("hvs.CAESIJlU9JMYEhOPYv4igdhm9PnZDrab", "vault-token"),
            ("hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567", "huggingface-token"),
            ("dckr_pat_2b3e36beeb386dfdaacb9b46004", "docker-token"),
            ("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", "shopify-token"),
            ("dop_v1_1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a7988", "digitalocean-token"),
            ("AccountName=x;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq==", "azure-storage-key"),
            ("secretaccesskey = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws-secret-key"),
            (r#"{"client_secret": "9fK2xQ7vL3mN8pR4tW6yZ1bC5dE0gH2j"}"#, "secret-assignment"),
            ("db:\n  password: hunter2\n", "secret-assignment"),
            // One of each format that starts with other byte pairs (the
            // prefilter of `next_start` must let every one through).
            ("token ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", "github-token"),
            ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV", "github-token"),
            ("xoxb-1234567890-abcdefghij", "slack-token"),
            ("https://hooks.slack.com/services/T000/B000/XXXX", "slack-webhook"),
            ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "stripe-key"),
            ("rk_live_4eC39HqLyjWDarjtT1zdp7dc", "stripe-key"),
            ("sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", "ai-api-key"),
            ("AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q", "google-api-key"),
            ("SG.abcdefghijklmnopqrstuv.abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ", "sendgrid-key"),
            ("npm_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", "npm-token"),
            ("pypi-AgEIcHlwaS5vcmcCJDAwMDAwMDAwLTAwMDAtMDAwMC0wMDAwLTAwMDAwMDAwMDAwMAACKl", "pypi-token"),
            ("-----BEGIN OPENSSH PRIVATE KEY-----", "private-key"),
            ("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJlLWJ5dGVz", "jwt"),
            ("export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws-secret-key"),
            ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws-secret-key"),
            ("SecretAccessKey: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws-secret-key"),
            ("postgres://app:hunter2pass@db:5432/app", "url-password"),
        ];
        for (value, name) in cases {
            assert_eq!(scan("note", value), Some((Kind::Secret, name)), "{value}");
        }
        for id in ["AKIAIOSFODNN7EXAMPLE", "ASIAIOSFODNN7EXAMPLE", "AROAIOSFODNN7EXAMPLE", "AIDAIOSFODNN7EXAMPLE", "ABIAIOSFODNN7EXAMPLE", "ACCAIOSFODNN7EXAMPLE"] {
            assert_eq!(scan("note", id), Some((Kind::AccessKeyId, "aws-access-key-id")), "{id}");
        }
    }

    #[test]
    fn findings_name_paths_in_the_selector_language() {
        let doc = serde_json::json!({
            "Environment": {"Variables": {"DB.URL": "postgres://app:hunter2pass@db:5432/app", "MODE": "prod"}},
            "Tags": [{"Key": "api_token", "Value": "Zx8q2LkP0vRt7mWn4bYc"}, {"Key": "team", "Value": "search"}],
            "Owner": {"AccessKeyId": "AKIAIOSFODNN7EXAMPLE"},
            "Note": "-----BEGIN PRIVATE KEY-----\nMIIB",
        });
        let f = findings(&doc).unwrap();
        let got: Vec<(&str, Kind, &str)> = f.iter().map(|f| (f.path.as_str(), f.kind, f.detector)).collect();
        assert_eq!(
            got,
            vec![
                (r#""Environment"."Variables"."DB.URL""#, Kind::Secret, "url-password"),
                (r#""Note""#, Kind::Secret, "private-key"),
                (r#""Owner"."AccessKeyId""#, Kind::AccessKeyId, "aws-access-key-id"),
                (r#""Tags"[0]."Value""#, Kind::Secret, "high-entropy-under-secret-name"),
            ]
        );
        for f in &f {
            crate::masking::Selector::parse(&f.path).unwrap();
        }
        assert_eq!(findings(&Value::String("AKIAIOSFODNN7EXAMPLE".into())).unwrap(), Vec::new());
    }

    #[test]
    fn too_many_findings_is_an_error_not_an_unbounded_list() {
        let many = Value::Array(vec![Value::String("-----BEGIN PRIVATE KEY-----".into()); MAX_FINDINGS + 1]);
        assert_eq!(findings(&many), Err(ScanError::TooMany));
        // Many long paths make their bytes, not their number, the limit.
        let key = "k".repeat(1000);
        let doc = serde_json::json!({ key: vec!["-----BEGIN PRIVATE KEY-----"; 10_000] });
        assert_eq!(findings(&doc), Err(ScanError::TooMany));
        // A path no selector can name (found by fuzzing): an error, not a mask that fails later.
        let doc = serde_json::json!({ "k".repeat(2000): "-----BEGIN PRIVATE KEY-----" });
        assert_eq!(findings(&doc), Err(ScanError::PathTooLong(2002)));
    }
}
