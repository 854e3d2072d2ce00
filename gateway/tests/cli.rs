//! `veil policy check` and `veil policy eval` driven through the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn policy(rel: &str) -> PathBuf {
    let p = root().join("target/policies").join(rel);
    assert!(p.exists(), "{} is missing: run `make policies` first", p.display());
    p
}

fn veil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_veil")).args(args).output().expect("veil runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn check_prints_name_version_sha256_and_scope() {
    for (file, name, version) in [
        ("risky-actions.wasm", "risky-actions", "1.1.0"),
        ("secrets-by-team.wasm", "secrets-by-team", "1.0.0"),
        ("aws-sensitive.wasm", "aws-sensitive", "1.3.0"),
    ] {
        let o = veil(&["policy", "check", s(&policy(file))]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = String::from_utf8(o.stdout).unwrap();
        assert!(out.contains(&format!("name:    {name}")), "{out}");
        assert!(out.contains(&format!("version: {version}")), "{out}");
        let sha = out.lines().find_map(|l| l.strip_prefix("sha256:  ")).unwrap();
        assert_eq!(sha.len(), 64);
        let scope = |hook: &str| out.lines().find_map(|l| l.strip_prefix(hook)).unwrap().trim().to_string();
        assert_eq!(scope("detectors:"), if name == "aws-sensitive" { "used (scan.findings)" } else { "not used" }, "{out}");
        if name == "risky-actions" {
            assert!(scope("on-request:").contains("iam:createuser, "), "{out}");
            assert_eq!(scope("on-response:"), "(none)", "{out}");
        } else if name == "aws-sensitive" {
            assert_eq!((scope("on-request:").as_str(), scope("on-response:").as_str()), ("(none)", "*"), "{out}");
        } else {
            assert_eq!(scope("on-request:"), "(none)", "{out}");
            assert!(scope("on-response:").starts_with("secretsmanager:getsecretvalue, "), "{out}");
        }
    }
}

fn check_fails(bytes: &[u8], expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.wasm");
    std::fs::write(&f, bytes).unwrap();
    let o = veil(&["policy", "check", s(&f)]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("bad.wasm") && err.contains(expect), "expected {expect:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn check_rejects_bad_inputs_with_a_reason() {
    check_fails(b"this is not wasm at all", "not a valid WebAssembly component");
    check_fails(&wat::parse_str("(module (func (export \"f\")))").unwrap(), "core WebAssembly module");
    check_fails(&std::fs::read(policy("fixtures/other-world.wasm")).unwrap(), "does not implement world veil:policy/policy");
    let good = std::fs::read(policy("risky-actions.wasm")).unwrap();
    check_fails(&good[..good.len() / 2], "not a valid WebAssembly component");
    check_fails(b"", "not a valid WebAssembly component");
    let o = veil(&["policy", "check", "/nonexistent/policy.wasm"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot read"), "{}", stderr(&o));
}

fn write_json(dir: &Path, name: &str, v: Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, v.to_string()).unwrap();
    p.to_str().unwrap().to_string()
}

fn eval(args: &[&str]) -> Value {
    let mut all = vec!["policy", "eval"];
    all.extend_from_slice(args);
    let o = veil(&all);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("eval prints one JSON object")
}

#[test]
fn eval_runs_both_hooks_and_prints_the_masked_body() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let claims = write_json(d, "claims.json", json!({"sub": "agent-7", "groups": ["search"]}));
    let params = write_json(d, "params.json", json!({"SecretId": "prod/payments/db"}));
    let response = write_json(
        d,
        "response.json",
        json!({"Name": "prod/payments/db", "SecretString": "{\"password\":\"hunter2\"}", "VersionId": "v1"}),
    );
    let config = write_json(d, "config.json", json!({"secrets-by-team": {"owners": {"payments": ["prod/payments/"]}}}));
    let policies = root().join("target/policies");
    let out = eval(&[
        s(&policies), "--operation", "secretsmanager:GetSecretValue", "--claims", &claims, "--params", &params,
        "--response", &response, "--config", &config,
    ]);
    assert_eq!(out["verdict"], "allow");
    assert_eq!(out["body"]["SecretString"], "***");
    assert_eq!(out["body"]["Name"], "prod/payments/db");
    assert!(out["masks"].as_array().unwrap().iter().any(|m| m["path"] == "SecretString"), "{out}");
    let names: Vec<&str> = out["policies"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["aws-sensitive", "risky-actions", "secrets-by-team"]);

    let out = eval(&[s(&policy("risky-actions.wasm")), "--operation", "iam:CreateUser", "--params", &params]);
    assert_eq!(out["verdict"], "approval-required");
    assert_eq!(out["reasons"][0]["policy"], "risky-actions");
    let out = eval(&[s(&policy("risky-actions.wasm")), "--operation", "cloudtrail:StopLogging", "--response", &response]);
    assert_eq!(out["verdict"], "deny");
    assert_eq!(out["body"], Value::Null, "a denied call shows no body");
}

#[test]
fn eval_rejects_bad_arguments_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bad_json = d.join("bad.json");
    std::fs::write(&bad_json, "{not json").unwrap();
    let risky = policy("risky-actions.wasm");
    for (args, expect) in [
        (vec![s(&risky), "--operation", "CreateUser"], "expected service:Action"),
        (vec![s(&risky), "--operation", "iam:CreateUser", "--claims", s(&bad_json)], "--claims"),
        (vec![s(&risky), "--operation", "iam:CreateUser", "--params", "/nonexistent.json"], "--params /nonexistent.json"),
        (vec![s(d), "--operation", "iam:CreateUser"], "no *.wasm policy files"),
    ] {
        let mut all = vec!["policy", "eval"];
        all.extend_from_slice(&args);
        let o = veil(&all);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(stderr(&o).contains(expect), "{args:?}: {}", stderr(&o));
    }
    let cfg = write_json(d, "cfg.json", json!({"risky-actoins": {}}));
    let o = veil(&["policy", "eval", s(&risky), "--operation", "iam:CreateUser", "--config", &cfg]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("risky-actoins"), "{}", stderr(&o));
}
