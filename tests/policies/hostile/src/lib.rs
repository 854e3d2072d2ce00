//! A policy that misbehaves on purpose, for the host's tests. The policy
//! config's `mode` picks the misbehaviour; `trigger` (when set) makes it
//! misbehave only for calls whose action equals it, allowing everything else;
//! `modes` (when set) maps actions to modes instead, allowing other actions.
//! `scope` (when set) is what `scope` returns: `"trap"`, `"spin"`, or an
//! object `{"on_request": [...], "on_response": [...]}` returned as is.
//!
//! Output modes, in both hooks unless named for one: `print` (a line on
//! stdout and one on stderr, then allow), `print-mb` (a megabyte, then
//! allow), `panic-request` / `panic-response` (a panic with a message in
//! that hook), `panic-with-body` (on-response panics quoting the response
//! body), `sleep` (waits on a timer).
//!
//! State modes, in both hooks: `remember` denies saying which caller (`sub`
//! claim) the instance served last, then remembers this one: the host must
//! never let it name another caller; `leak` keeps 2 MiB more memory on every
//! call and allows: the host must replace the instance before it reaches its
//! memory limit; `handles` keeps 8 more WASI resources (clock pollables)
//! on every call and allows: the host must replace the instance rather
//! than let them pile up.

use serde_json::Value;
use veil_policy_sdk::{export_policy, Config, Mask, Policy, Request, Response, ResponseDecision, Scope, Verdict};

struct Hostile;

/// What `remember` and `leak` keep between calls on one instance.
static LAST_CALLER: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
static LEAKED: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// `remember`'s and `leak`'s work; for `remember`, the deny reason.
fn keep_state(m: &str, req: &Request) -> Option<String> {
    match m {
        "remember" => {
            let me = req.claim_str("sub").unwrap_or("-").to_string();
            let mut last = LAST_CALLER.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let before = last.replace(me).unwrap_or_else(|| "none".into());
            Some(format!("previous caller on this instance: {before}"))
        }
        "handles" => {
            for _ in 0..8 {
                std::mem::forget(wasip2::clocks::monotonic_clock::subscribe_duration(0));
            }
            None
        }
        "leak" => {
            // Touched, so the pages are really used.
            LEAKED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(vec![1u8; 2 << 20]);
            None
        }
        _ => None,
    }
}

fn mode(req: &Request) -> &str {
    // `modes` maps actions to modes: one gateway runs every mode.
    if let Some(modes) = req.config().get("modes") {
        return modes.get(req.action()).and_then(Value::as_str).unwrap_or("allow");
    }
    let triggered = match req.config().get("trigger").and_then(Value::as_str) {
        Some(action) => action == req.action(),
        None => true,
    };
    if !triggered {
        return "allow";
    }
    req.config().get("mode").and_then(Value::as_str).unwrap_or("allow")
}

#[inline(never)]
fn recurse(n: u64) -> u64 {
    let buf = std::hint::black_box([n; 64]);
    if n == u64::MAX { return 0; }
    recurse(n + 1).wrapping_add(buf[(n % 64) as usize])
}

fn config_scope(config: &Config, hook: &str) -> Vec<String> {
    let patterns = config.get()["scope"][hook].as_array().cloned().unwrap_or_default();
    patterns.iter().filter_map(|p| p.as_str().map(String::from)).collect()
}

/// What the output modes do in `hook`; the request's action goes into the
/// printed text so tests can tell calls apart.
fn speak(m: &str, hook: &str, req: &Request) {
    match m {
        "print" => {
            println!("hostile {hook} stdout: {} for {}", req.action(), req.param_str("UserName").unwrap_or("-"));
            eprintln!("hostile {hook} stderr: \u{1b}[31mred\u{1b}[0m and a second\nline");
        }
        "print-mb" => {
            let line = "m".repeat(1023);
            for _ in 0..1024 {
                println!("{line}");
            }
            eprintln!("hostile {hook} printed a megabyte");
        }
        "sleep" => std::thread::sleep(std::time::Duration::from_millis(5)),
        _ => {}
    }
}

fn misbehave(m: &str) {
    match m {
        "trap" => panic!("hostile policy traps on purpose"),
        "panic-request" => panic!("hostile panics in on-request on purpose"),
        "spin" => {
            let mut x = 0u64;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "membomb" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                // Reserve without touching: reaches the cap in a few steps, not on CPU time.
                hoard.push(Vec::with_capacity(16 << 20));
                std::hint::black_box(&hoard);
            }
        }
        "recursion" => {
            std::hint::black_box(recurse(0));
        }
        // The detectors exist only for on-response: anywhere else this traps.
        "scan" => {
            std::hint::black_box(veil_policy_sdk::bindings::veil::policy::scan::findings());
        }
        "filesystem" => {
            let read = std::fs::read_to_string("/etc/passwd");
            if read.is_ok() {
                panic!("filesystem access was granted");
            }
        }
        _ => {}
    }
}

impl Policy for Hostile {
    const NAME: &'static str = "hostile";
    const VERSION: &'static str = "0.0.1";

    fn scope(config: &Config) -> Scope {
        match config.get().get("scope") {
            None => Scope::all(),
            Some(Value::String(m)) => {
                misbehave(m);
                Scope::all()
            }
            Some(_) => Scope { on_request: config_scope(config, "on_request"), on_response: config_scope(config, "on_response") },
        }
    }

    fn on_request(req: &Request) -> Verdict {
        let m = mode(req);
        speak(m, "on-request", req);
        misbehave(m);
        if let Some(reason) = keep_state(m, req) {
            return Verdict::Deny(reason);
        }
        match m {
            "deny" => Verdict::Deny("hostile denies".into()),
            "approval" => Verdict::ApprovalRequired("hostile wants approval".into()),
            "filesystem" => Verdict::Deny("filesystem access refused as expected".into()),
            _ => Verdict::Allow,
        }
    }

    fn on_response(req: &Request, resp: &Response) -> ResponseDecision {
        let m = mode(req);
        speak(m, "on-response", req);
        if let Some(reason) = keep_state(m, req) {
            return ResponseDecision::deny(reason);
        }
        match m {
            "panic-response" => panic!("hostile panics in on-response on purpose"),
            "panic-with-body" => panic!("hostile cannot handle {}", resp.body()),
            "bad-selector" => ResponseDecision::masks(vec![Mask::redact("Secret[[")]),
            "many-masks" => ResponseDecision::masks((0..20_000).map(|i| Mask::redact(format!("a{i}"))).collect()),
            "huge-reason" => ResponseDecision::deny("x".repeat(100 << 20)),
            "mask-all" => ResponseDecision::masks(vec![Mask::hash("**.Value"), Mask::partial("**.Id")]),
            _ => ResponseDecision::allow(),
        }
    }
}

export_policy!(Hostile);
