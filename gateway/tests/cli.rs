//! The `veil` commands (`policy check|eval|test|sign`, `serve`'s checks)
//! driven through the real binary.

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

/// A config that passes validation without any network: its issuer is
/// never contacted because the secrets are read (and refused) first.
fn serve_config(dir: &Path, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    let cfg = dir.join("veil.toml");
    let text = format!(
        "[listener]\naddress = \"127.0.0.1:0\"\ninsecure_plaintext = true\n\
         [identity]\n[[identity.issuers]]\nissuer = \"http://127.0.0.1:9\"\naudience = \"veil\"\n\
         [policies]\ndir = \"policies\"\n{extra}"
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

fn serve_with(cfg: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_veil"));
    cmd.args(["serve", "--config", s(cfg)]).env_clear().env("PATH", "/usr/bin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("veil runs")
}

/// Every secret, from the environment or a file, is held to its minimum:
/// an empty or short one stops the gateway naming the key or variable.
#[test]
fn serve_refuses_empty_or_short_secrets_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let admin = "[admin]\naddress = \"127.0.0.1:0\"\n";
    let clickhouse = "[audit.clickhouse]\nurl = \"http://127.0.0.1:9\"\n";
    let cases: &[(&str, &[(&str, &str)], &str)] = &[
        (admin, &[("VEIL_ADMIN_TOKEN", "")], "environment: VEIL_ADMIN_TOKEN: is set but empty"),
        (admin, &[("VEIL_ADMIN_TOKEN", "x")], "environment: VEIL_ADMIN_TOKEN: is 1 bytes long; at least 32 are required"),
        ("", &[("VEIL_SESSION_KEY", "")], "VEIL_SESSION_KEY: is set but empty"),
        ("", &[("VEIL_SESSION_KEY", "short")], "VEIL_SESSION_KEY: is 5 bytes long"),
        ("", &[("VEIL_HASH_KEY", " \n")], "VEIL_HASH_KEY: is set but empty"),
        (clickhouse, &[("VEIL_CLICKHOUSE_PASSWORD", "")], "VEIL_CLICKHOUSE_PASSWORD: is set but empty"),
        (clickhouse, &[("VEIL_CLICKHOUSE_PASSWORD", "pw")], "VEIL_CLICKHOUSE_PASSWORD: is 2 bytes long; at least 16"),
        ("", &[("VEIL_LOG_FORMAT", "xml")], "VEIL_LOG_FORMAT: \"xml\" is not a log format"),
    ];
    for (i, (extra, env, expect)) in cases.iter().enumerate() {
        let d = dir.path().join(i.to_string());
        let o = serve_with(&serve_config(&d, extra), env);
        assert_eq!(o.status.code(), Some(1), "{env:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(expect), "{env:?}: expected {expect:?} in: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
    // The same minimum for the files.
    for (key, extra) in [
        ("admin.token_file", "[admin]\naddress = \"127.0.0.1:0\"\ntoken_file = \"secret\"\n"),
        ("sts.session_key_file", "[sts]\nsession_key_file = \"secret\"\n"),
        ("masking.hash_key_file", "[masking]\nhash_key_file = \"secret\"\n"),
        ("audit.clickhouse.password_file", "[audit.clickhouse]\nurl = \"http://127.0.0.1:9\"\npassword_file = \"secret\"\n"),
    ] {
        for (content, expect) in [("\n", "is set but empty"), ("abc\n", "is 3 bytes long")] {
            let d = dir.path().join(format!("{key}-{}", content.len()));
            let cfg = serve_config(&d, extra);
            std::fs::write(d.join("secret"), content).unwrap();
            let o = serve_with(&cfg, &[]);
            assert_eq!(o.status.code(), Some(1), "{key}: {}", stderr(&o));
            let err = stderr(&o);
            assert!(err.contains("veil.toml: ") && err.contains(&format!("{key} (")) && err.contains(expect), "{key}: {err}");
        }
    }
}

#[test]
fn keygen_and_sign_write_a_manifest_of_the_directory() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("signer.pem");
    let o = veil(&["policy", "keygen", "--out", s(&key)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    let public = out.lines().find_map(|l| l.strip_prefix("public key:  ")).unwrap().to_string();
    assert_eq!(public.len(), 44, "{out}");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let o = veil(&["policy", "keygen", "--out", s(&key)]);
    assert_eq!(o.status.code(), Some(1), "an existing key is never overwritten");

    let pdir = dir.path().join("policies");
    std::fs::create_dir(&pdir).unwrap();
    let o = veil(&["policy", "sign", s(&pdir), "--key", s(&key)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no *.wasm policy files"), "{}", stderr(&o));
    std::fs::copy(policy("risky-actions.wasm"), pdir.join("risky-actions.wasm")).unwrap();
    std::fs::write(pdir.join(".hidden.wasm"), b"x").unwrap();
    let o = veil(&["policy", "sign", s(&pdir), "--key", s(&key), "--version", "7"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let manifest: Value = serde_json::from_slice(&std::fs::read(pdir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "veil-policy-manifest/1");
    assert_eq!(manifest["version"], 7);
    assert_eq!(manifest["policies"].as_array().unwrap().len(), 1, "{manifest}");
    assert_eq!(manifest["policies"][0]["file"], "risky-actions.wasm");
    assert!(pdir.join("manifest.json.sig").is_file());
    // Without --version: above both the last manifest and the clock.
    let o = veil(&["policy", "sign", s(&pdir), "--key", s(&key)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let manifest: Value = serde_json::from_slice(&std::fs::read(pdir.join("manifest.json")).unwrap()).unwrap();
    assert!(manifest["version"].as_u64().unwrap() > 1_700_000_000, "{manifest}");
    // A key that is not one: refused, naming the file.
    let o = veil(&["policy", "sign", s(&pdir), "--key", s(&pdir.join("manifest.json"))]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("manifest.json: no -----BEGIN PRIVATE KEY----- block"), "{}", stderr(&o));
}

#[test]
fn eval_and_test_show_what_the_policy_printed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let params = write_json(d, "params.json", json!({"UserName": "alice"}));
    let response = write_json(d, "response.json", json!({"Users": []}));
    let config = write_json(d, "config.json", json!({"hostile": {"mode": "print"}}));
    let hostile = policy("fixtures/hostile.wasm");
    let out = eval(&[s(&hostile), "--operation", "iam:ListUsers", "--params", &params, "--response", &response, "--config", &config]);
    assert_eq!(out["verdict"], "allow", "{out}");
    let output = out["output"].as_array().unwrap();
    assert_eq!(output.len(), 2, "{out}");
    assert_eq!((output[0]["policy"].as_str(), output[0]["hook"].as_str()), (Some("hostile"), Some("on-request")));
    // The author's own inputs, as printed: not masked.
    assert_eq!(
        output[0]["text"],
        "hostile on-request stdout: ListUsers for alice\nhostile on-request stderr: \u{1b}[31mred\u{1b}[0m and a second\nline\n"
    );
    assert_eq!(output[1]["hook"], "on-response");

    let config = write_json(d, "config.json", json!({"hostile": {"mode": "panic-request"}}));
    let out = eval(&[s(&hostile), "--operation", "iam:ListUsers", "--config", &config]);
    assert_eq!(out["verdict"], "deny");
    let reason = out["reasons"][0]["message"].as_str().unwrap();
    assert!(reason.contains("hostile panics in on-request on purpose") && !reason.contains('\n'), "{reason}");
    assert!(out["output"][0]["text"].as_str().unwrap().contains("panicked at"), "{out}");

    // `veil policy test`: the output under its case, escaped on one line.
    let cases = d.join("cases");
    std::fs::create_dir(&cases).unwrap();
    write_json(&cases, "prints.json", json!({
        "operation": "iam:ListUsers", "params": {"UserName": "bob"}, "config": {"mode": "print"},
        "response": {"Users": []}, "expect": {"verdict": "allow"}
    }));
    let o = veil(&["policy", "test", s(&hostile), s(&cases)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8(o.stdout).unwrap();
    let printed: Vec<&str> = stdout.lines().filter(|l| l.trim_start().starts_with("on-request printed: ")).collect();
    assert_eq!(printed.len(), 1, "{stdout}");
    assert!(printed[0].contains(r#""hostile on-request stdout: ListUsers for bob\nhostile on-request stderr: \u{1b}[31mred"#), "{stdout}");
    assert!(stdout.contains("on-response printed: "), "{stdout}");
}
