//! The policy host driven through the library with real components built by
//! `make policies` (shipped policies and hostile fixtures).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use veil_gateway::masking::{self, HashKey};
use veil_gateway::policy::{CallInput, Host, Identity, Limits, LoadedPolicy, Operation, PolicySet, Verdict, MAX_KEPT_HANDLES, MAX_USES, WARM_TOTAL};

fn policy_path(rel: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/policies").join(rel);
    assert!(p.exists(), "{} is missing: run `make policies` first", p.display());
    p
}

fn host() -> Host {
    Host::new(Limits::default(), None).expect("engine")
}

fn load(host: &Host, rel: &str, config: Value) -> Arc<LoadedPolicy> {
    let compiled = host.load(&policy_path(rel)).expect("policy loads");
    Arc::new(LoadedPolicy::new(compiled, config.to_string()).unwrap())
}

fn call(op: &str, claims: Value, params: Value) -> CallInput {
    call_by("https://issuer.test", "agent-1", op, claims, params)
}

fn call_by(issuer: &str, subject: &str, op: &str, claims: Value, params: Value) -> CallInput {
    CallInput {
        identity: Identity::new(issuer, subject, claims),
        operation: Operation::parse_qualified(op).unwrap(),
        params,
    }
}

#[test]
fn risky_actions_decides_by_action_and_parameters() {
    let h = host();
    let set = PolicySet::new(vec![load(&h, "risky-actions.wasm", json!({}))]);
    let v = |op: &str, params: Value| set.on_request(&call(op, json!({}), params));
    assert_eq!(v("s3:ListBuckets", json!({})).verdict, Verdict::Allow);
    assert_eq!(v("iam:ListUsers", json!({})).verdict, Verdict::Allow);
    let d = v("iam:CreateUser", json!({"UserName": "x"}));
    assert_eq!(d.verdict, Verdict::ApprovalRequired);
    assert_eq!(d.reasons[0].policy, "risky-actions");
    assert!(d.reasons[0].message.contains("iam:CreateUser"), "{d:?}");
    assert_eq!(v("organizations:LeaveOrganization", json!({})).verdict, Verdict::Deny);
    assert_eq!(v("cloudtrail:StopLogging", json!({"Name": "t"})).verdict, Verdict::Deny);
    assert_eq!(
        v("sts:AssumeRole", json!({"RoleArn": "arn:aws:iam::123456789012:role/OrgAdmin"})).verdict,
        Verdict::ApprovalRequired
    );
    assert_eq!(
        v("sts:AssumeRole", json!({"RoleArn": "arn:aws:iam::123456789012:role/reader"})).verdict,
        Verdict::Allow
    );
    let ingress = |cidr: &str| {
        v(
            "ec2:AuthorizeSecurityGroupIngress",
            json!({"GroupId": "sg-1", "IpPermissions": [{"IpRanges": [{"CidrIp": cidr}]}]}),
        )
        .verdict
    };
    assert_eq!(ingress("0.0.0.0/0"), Verdict::ApprovalRequired);
    assert_eq!(ingress("10.0.0.0/8"), Verdict::Allow);
    // Lists come from the config and replace the defaults.
    let set = PolicySet::new(vec![load(&h, "risky-actions.wasm", json!({"deny": ["s3:Delete*"], "approval": []}))]);
    assert_eq!(set.on_request(&call("s3:DeleteObject", json!({}), json!({}))).verdict, Verdict::Deny);
    assert_eq!(set.on_request(&call("iam:CreateUser", json!({}), json!({}))).verdict, Verdict::Allow);
    // A config of the wrong type traps in `scope`: the policy is refused at load.
    let compiled = h.load(&policy_path("risky-actions.wasm")).unwrap();
    for bad in [json!({"deny": "s3:*"}), json!({"open_cidrs": [0]})] {
        let e = LoadedPolicy::new(compiled.clone(), bad.to_string()).err().expect("refused");
        assert!(e.starts_with("scope trapped"), "{e}");
    }
}

#[test]
fn secrets_by_team_masks_what_the_caller_does_not_own() {
    let h = host();
    let config = json!({"owners": {"payments": ["prod/payments/", "/payments/"]}});
    let set = PolicySet::new(vec![load(&h, "secrets-by-team.wasm", config)]);
    let key = HashKey::new(b"k".to_vec());
    let secret = json!({
        "ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/payments/db-AbCdEf",
        "Name": "prod/payments/db", "VersionId": "v1",
        "SecretString": "{\"password\":\"hunter2\"}", "CreatedDate": 1700000000.0
    });
    let run = |groups: Value, op: &str, params: Value, body: &Value| {
        let c = call(op, json!({"groups": groups}), params);
        let d = set.on_response(&c, 200, body);
        assert!(d.deny.is_empty(), "{d:?}");
        let mut out = body.clone();
        masking::apply(&mut out, &d.masks, &[], &key);
        out
    };
    let owner = run(json!(["payments"]), "secretsmanager:GetSecretValue", json!({"SecretId": "prod/payments/db"}), &secret);
    assert_eq!(owner["SecretString"], secret["SecretString"]);
    let other = run(json!(["search"]), "secretsmanager:GetSecretValue", json!({"SecretId": "prod/payments/db"}), &secret);
    assert_eq!(other["SecretString"], "***");
    assert_eq!(other["Name"], "prod/payments/db");
    // Asking by ARN does not dodge the check: the name comes from the response.
    let by_arn = run(json!([]), "secretsmanager:GetSecretValue", json!({"SecretId": secret["ARN"]}), &secret);
    assert_eq!(by_arn["SecretString"], "***");
    let admin = run(json!(["secrets-admin"]), "secretsmanager:GetSecretValue", json!({}), &secret);
    assert_eq!(admin["SecretString"], secret["SecretString"]);

    let params = json!({"Parameters": [
        {"Name": "/payments/api-key", "Type": "SecureString", "Value": "pay-123456789", "Version": 1},
        {"Name": "/search/api-key", "Type": "SecureString", "Value": "search-123456789", "Version": 3}
    ], "InvalidParameters": []});
    let out = run(json!("payments"), "ssm:GetParameters", json!({"Names": ["/payments/api-key", "/search/api-key"]}), &params);
    assert_eq!(out["Parameters"][0]["Value"], "pay-123456789");
    assert_eq!(out["Parameters"][1]["Value"], "***");
    let single = json!({"Parameter": {"Name": "/search/x", "Type": "SecureString", "Value": "v-123456789"}});
    let out = run(json!(["payments"]), "ssm:GetParameter", json!({"Name": "/search/x"}), &single);
    assert_eq!(out["Parameter"]["Value"], "***");
}

fn hostile(h: &Host, mode: &str) -> Arc<LoadedPolicy> {
    load(h, "fixtures/hostile.wasm", json!({"mode": mode}))
}

#[test]
fn a_trap_denies_naming_the_policy() {
    let h = host();
    let set = PolicySet::new(vec![hostile(&h, "trap")]);
    let d = set.on_request(&call("s3:ListBuckets", json!({}), json!({})));
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.reasons[0].policy, "hostile");
    assert!(d.reasons[0].message.contains("on-request trapped"), "{d:?}");
}

#[test]
fn hooks_run_only_for_the_operations_in_their_scope() {
    let h = host();
    let requests = json!({"on_request": ["iam:Create*"], "on_response": []});
    let responses = json!({"on_request": [], "on_response": ["secretsmanager:GetSecretValue"]});
    let set = PolicySet::new(vec![
        load(&h, "fixtures/hostile.wasm", json!({"mode": "deny", "scope": requests})),
        load(&h, "fixtures/hostile.wasm", json!({"mode": "mask-all", "scope": responses})),
    ]);
    // Inside its scope a hook runs; outside it, it never starts.
    let d = set.on_request(&call("iam:CreateUser", json!({}), json!({})));
    assert_eq!((d.verdict, d.reasons.len()), (Verdict::Deny, 1), "{d:?}");
    assert_eq!(set.on_request(&call("IAM:createuser", json!({}), json!({}))).verdict, Verdict::Deny);
    assert_eq!(set.on_request(&call("iam:ListUsers", json!({}), json!({}))).verdict, Verdict::Allow);
    let get = call("secretsmanager:GetSecretValue", json!({}), json!({}));
    assert_eq!(set.on_request(&get).verdict, Verdict::Allow);
    let d = set.on_response(&get, 200, &json!({}));
    assert_eq!((d.deny.len(), d.masks.len()), (0, 2), "{d:?}");
    let d = set.on_response(&call("iam:CreateUser", json!({}), json!({})), 200, &json!({}));
    assert!(d.deny.is_empty() && d.masks.is_empty());
}

#[test]
fn a_scope_that_traps_spins_or_lists_bad_patterns_rejects_the_policy() {
    let h = host();
    let compiled = h.load(&policy_path("fixtures/hostile.wasm")).unwrap();
    let cases = [
        (json!({"scope": "trap"}), "scope trapped"),
        (json!({"scope": "spin"}), "scope exceeded its 50 ms CPU deadline"),
        (json!({"scope": {"on_request": [""]}}), "on-request pattern \"\" must be"),
        (json!({"scope": {"on_response": vec!["*"; 1001]}}), "1001 on-response patterns, more than the limit"),
    ];
    for (config, want) in cases {
        let e = LoadedPolicy::new(compiled.clone(), config.to_string()).err().expect("rejected");
        assert!(e.contains(want), "{config}: {e}");
    }
}

#[test]
fn an_infinite_loop_denies_within_the_deadline_while_other_calls_succeed() {
    let h = host();
    let spin = PolicySet::new(vec![hostile(&h, "spin")]);
    let ok = PolicySet::new(vec![hostile(&h, "allow")]);
    let spinner = std::thread::spawn(move || {
        let started = Instant::now();
        let d = spin.on_request(&call("s3:ListBuckets", json!({}), json!({})));
        (d, started.elapsed())
    });
    // Calls on other policies keep being answered while the loop runs.
    for _ in 0..20 {
        assert_eq!(ok.on_request(&call("s3:ListBuckets", json!({}), json!({}))).verdict, Verdict::Allow);
    }
    let (d, took) = spinner.join().unwrap();
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(d.reasons[0].message.contains("deadline"), "{d:?}");
    // Generous bound: the deadline is 50 ms; a loaded machine may be slow to stop it.
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn a_memory_bomb_and_deep_recursion_deny() {
    let h = host();
    for (mode, expect) in [("membomb", "memory"), ("recursion", "trapped")] {
        let set = PolicySet::new(vec![hostile(&h, mode)]);
        let d = set.on_request(&call("s3:ListBuckets", json!({}), json!({})));
        assert_eq!(d.verdict, Verdict::Deny, "{mode}");
        assert!(d.reasons[0].message.contains(expect), "{mode}: {d:?}");
    }
}

#[test]
fn bad_outputs_deny_on_response() {
    let h = host();
    for (mode, expect) in [("bad-selector", "invalid selector"), ("many-masks", "masks"), ("huge-reason", "memory")] {
        let set = PolicySet::new(vec![hostile(&h, mode)]);
        let d = set.on_response(&call("s3:ListBuckets", json!({}), json!({})), 200, &json!({"a": 1}));
        assert!(!d.deny.is_empty(), "{mode}");
        assert!(d.deny[0].message.contains(expect), "{mode}: {d:?}");
        assert!(d.deny[0].message.len() <= 1024);
    }
}

#[test]
fn policies_see_no_filesystem() {
    let h = host();
    let set = PolicySet::new(vec![hostile(&h, "filesystem")]);
    let d = set.on_request(&call("s3:ListBuckets", json!({}), json!({})));
    assert_eq!(d.reasons[0].message, "filesystem access refused as expected");
}

#[test]
fn python_and_js_policies_get_the_same_limits_and_fail_closed() {
    let h = host();
    let cases: &[(&str, &[(&str, &[&str])])] = &[
        (
            "fixtures/hostile-python.wasm",
            &[
                ("trap", &["trapped"]),
                ("spin", &["deadline"]),
                // CPython turns a failed allocation into MemoryError, which
                // escapes the hook: a trap, or the cap itself (on a loaded
                // machine the deadline may come first: still a deny).
                ("membomb", &["memory", "trapped", "deadline"]),
                // Python calls do not use the wasm stack: deep recursion
                // grows the heap until the cap, the deadline or CPython's
                // own limit stops it.
                ("recursion", &["trapped", "deadline", "memory"]),
            ],
        ),
        ("fixtures/hostile-js.wasm", &[("trap", &["trapped"]), ("spin", &["deadline"]), ("membomb", &["memory", "trapped", "deadline"]), ("recursion", &["trapped", "deadline"])]),
    ];
    for (file, modes) in cases {
        // Compile once (10-20 s for an interpreter component), configure per mode.
        let compiled = h.load(&policy_path(file)).expect("policy loads");
        let with = |mode: &str| {
            PolicySet::new(vec![Arc::new(LoadedPolicy::new(compiled.clone(), json!({"mode": mode}).to_string()).unwrap())])
        };
        for (mode, expect) in *modes {
            let started = Instant::now();
            let d = with(mode).on_request(&call("s3:ListBuckets", json!({}), json!({})));
            assert_eq!(d.verdict, Verdict::Deny, "{file} {mode}: {d:?}");
            assert_eq!(d.reasons[0].policy, compiled.name, "{file} {mode}");
            assert!(expect.iter().any(|e| d.reasons[0].message.contains(e)), "{file} {mode}: {d:?}");
            assert!(started.elapsed() < Duration::from_secs(10), "{file} {mode} took {:?}", started.elapsed());
        }
        // The same component still serves well-behaved calls afterwards.
        assert_eq!(with("allow").on_request(&call("s3:ListBuckets", json!({}), json!({}))).verdict, Verdict::Allow, "{file}");
        if file.contains("python") {
            // open() gets no filesystem: WASI has nothing preopened.
            let d = with("filesystem").on_request(&call("s3:ListBuckets", json!({}), json!({})));
            assert_eq!(d.reasons[0].message, "filesystem access refused as expected", "{d:?}");
        }
    }
}

#[test]
fn a_policy_that_traps_on_some_inputs_only_denies_those() {
    let h = host();
    let set = PolicySet::new(vec![load(&h, "fixtures/hostile.wasm", json!({"mode": "trap", "trigger": "DeleteBucket"}))]);
    assert_eq!(set.on_request(&call("s3:ListBuckets", json!({}), json!({}))).verdict, Verdict::Allow);
    assert_eq!(set.on_request(&call("s3:DeleteBucket", json!({}), json!({}))).verdict, Verdict::Deny);
    assert_eq!(set.on_request(&call("s3:ListBuckets", json!({}), json!({}))).verdict, Verdict::Allow);
}

#[test]
fn policies_combine_most_restrictive_first_and_masks_union() {
    let h = host();
    let risky = load(&h, "risky-actions.wasm", json!({}));
    let approve = hostile(&h, "approval");
    let set = PolicySet::new(vec![risky.clone(), approve.clone()]);
    let d = set.on_request(&call("s3:ListBuckets", json!({}), json!({})));
    assert_eq!(d.verdict, Verdict::ApprovalRequired);
    let d = set.on_request(&call("cloudtrail:DeleteTrail", json!({}), json!({})));
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.reasons.len(), 2, "both policies' reasons are kept: {d:?}");
    assert_eq!(PolicySet::new(vec![]).on_request(&call("s3:ListBuckets", json!({}), json!({}))).verdict, Verdict::Deny);

    let masker = hostile(&h, "mask-all");
    let teams = load(&h, "secrets-by-team.wasm", json!({}));
    let set = PolicySet::new(vec![masker, teams]);
    let body = json!({"Parameter": {"Name": "/x", "Value": "secret-value-1", "Id": "identifier-1234"}});
    let c = call("ssm:GetParameter", json!({}), json!({"Name": "/x"}));
    let d = set.on_response(&c, 200, &body);
    let mut out = body.clone();
    masking::apply(&mut out, &d.masks, &[], &HashKey::new(b"k".to_vec()));
    // redact (secrets-by-team) beats hash (hostile) on the same value.
    assert_eq!(out["Parameter"]["Value"], "***");
    assert_eq!(out["Parameter"]["Id"], "***1234");
    assert_eq!(set.references().len(), 2);
    assert_eq!(set.references()[1].sha256.len(), 64);
}

#[test]
fn a_large_response_gets_a_deadline_in_proportion_and_is_masked() {
    // A 1.3 MB listing takes aws-sensitive longer than the base 50 ms on a
    // loaded machine; the per-MiB allowance keeps it from being denied.
    let h = host();
    let set = PolicySet::new(vec![load(&h, "aws-sensitive.wasm", json!({}))]);
    let items: Vec<Value> = (0..8000)
        .map(|i| json!({"Name": format!("prod/app-{i}"), "Description": format!("credentials of app {i}"), "Tags": [{"Key": "team", "Value": "payments"}],
                        "ARN": format!("arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/app-{i}")}))
        .collect();
    let mut body = json!({"SecretList": items});
    body["SecretList"][1234]["Description"] = json!("postgres://app:hunter2hunter2@db.internal:5432/app");
    assert!(body.to_string().len() > 1 << 20);
    let d = set.on_response(&call("secretsmanager:ListSecrets", json!({}), json!({})), 200, &body);
    assert!(d.deny.is_empty(), "{:?}", d.deny);
    assert!(d.masks.iter().any(|m| m.selector.to_string().contains("1234")), "the seeded password is masked");
}

#[test]
fn the_gateways_detectors_serve_policies_in_every_language() {
    // Secrets where no selector of the models or the curated list looks: the
    // detectors (run natively by the host, asked through `scan.findings`) find them.
    let body = json!({
        "Tags": [{"Key": "deploy", "Value": "ghp_0123456789abcdefghijABCDEFGHIJ012345"}, {"Key": "team", "Value": "search"}],
        "Notes": {"ops": {"bootstrap": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA"}},
        "Owner": "AKIAIOSFODNN7EXAMPLE",
        "Name": "plain value"
    });
    let key = HashKey::new(b"k".to_vec());
    let h = host();
    for policy in ["aws-sensitive.wasm", "fixtures/template-python.wasm", "fixtures/template-js.wasm"] {
        let set = PolicySet::new(vec![load(&h, policy, json!({}))]);
        let d = set.on_response(&call("resourcegroupstaggingapi:GetResources", json!({}), json!({})), 200, &body);
        assert!(d.deny.is_empty(), "{policy}: {:?}", d.deny);
        let mut out = body.clone();
        masking::apply(&mut out, &d.masks, &[], &key);
        assert_eq!(out["Tags"][0]["Value"], "***", "{policy}: {out}");
        assert_eq!(out["Notes"]["ops"]["bootstrap"], "***", "{policy}: {out}");
        let owner = out["Owner"].as_str().unwrap();
        assert!(owner != "AKIAIOSFODNN7EXAMPLE" && owner != "***", "{policy}: a lone key id is hashed: {owner}");
        assert_eq!(out["Tags"][1]["Value"], "search", "{policy}");
        assert_eq!(out["Name"], "plain value", "{policy}");
    }
    // More findings than the host reports: the policy's call fails, the response is denied.
    let set = PolicySet::new(vec![load(&h, "aws-sensitive.wasm", json!({}))]);
    let flood = json!({"Items": vec!["-----BEGIN PRIVATE KEY-----"; 100_001]});
    let d = set.on_response(&call("s3:ListBuckets", json!({}), json!({})), 200, &flood);
    assert!(d.deny.iter().any(|r| r.message.contains("more secrets than can be reported")), "{:?}", d.deny);
}

#[test]
fn the_detectors_are_not_available_outside_on_response() {
    let h = host();
    let set = PolicySet::new(vec![hostile(&h, "scan")]);
    let d = set.on_request(&call("s3:ListBuckets", json!({}), json!({})));
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(d.reasons[0].message.contains("only available in on-response"), "{d:?}");
    let e = LoadedPolicy::new(h.load(&policy_path("fixtures/hostile.wasm")).unwrap(), json!({"scope": "scan"}).to_string()).err().unwrap();
    assert!(e.contains("only available in on-response"), "{e}");
}

#[test]
fn calls_in_a_tight_loop_from_many_threads_never_exhaust_the_instance_pool() {
    // Used instances are freed by the background thread up to a bound, then
    // inline: far more calls than pool slots, as fast as they come, all decide.
    // Every call is another caller's, so each takes a fresh instance and
    // pushes the least recently used warm one out to be freed.
    let h = Host::new(Limits { max_concurrent: 8, ..Limits::default() }, None).expect("engine");
    let set = Arc::new(PolicySet::new(vec![load(&h, "risky-actions.wasm", json!({}))]));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let set = set.clone();
            std::thread::spawn(move || {
                for i in 0..1500 {
                    let who = format!("agent-{t}-{i}");
                    let d = set.on_request(&call_by("https://issuer.test", &who, "iam:CreateUser", json!({}), json!({"UserName": "x"})));
                    assert_eq!(d.verdict, Verdict::ApprovalRequired, "{:?}", d.reasons);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("no call failed");
    }
}

/// Every hook that prints or fails, called as the gateway calls it: from a
/// task on a tokio worker thread (and from the runtime's own thread), where
/// WASI's blocking stdio once panicked the thread ("Cannot start a runtime
/// from within a runtime").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_that_print_panic_or_wait_answer_inside_a_tokio_runtime() {
    let h = host();
    let compiled = h.load(&policy_path("fixtures/hostile.wasm")).unwrap();
    let set = |mode: &str| PolicySet::new(vec![Arc::new(LoadedPolicy::new(compiled.clone(), json!({"mode": mode}).to_string()).unwrap())]);
    let c = call("iam:ListUsers", json!({}), json!({"UserName": "alice"}));

    // On the runtime's own thread, as `block_on` runs the test body.
    let d = set("print").on_request(&c);
    assert_eq!(d.verdict, Verdict::Allow, "{d:?}");
    assert_eq!(d.output.len(), 1, "{d:?}");
    let o = &d.output[0];
    assert_eq!((o.policy.as_str(), o.hook, o.dropped_bytes), ("hostile", "on-request", 0));
    assert!(o.text.contains("hostile on-request stdout: ListUsers for alice\n"), "{o:?}");
    assert!(o.text.contains("hostile on-request stderr: \u{1b}[31mred\u{1b}[0m and a second\nline"), "{o:?}");

    // On a worker thread, as the gateway runs its calls.
    let (s, c2) = (set("print"), c.clone());
    let d = tokio::spawn(async move { s.on_response(&c2, 200, &json!({"Users": []})) }).await.unwrap();
    assert!(d.deny.is_empty(), "{d:?}");
    assert!(d.output[0].text.contains("hostile on-response stdout: ListUsers"), "{d:?}");

    let (s, c2) = (set("panic-request"), c.clone());
    let d = tokio::spawn(async move { s.on_request(&c2) }).await.unwrap();
    assert_eq!(d.verdict, Verdict::Deny);
    let m = &d.reasons[0].message;
    assert!(m.starts_with("on-request trapped") && m.contains("hostile panics in on-request on purpose"), "{m}");
    assert!(!m.contains('\n'), "one line: {m}");
    assert!(d.output[0].text.contains("hostile panics in on-request on purpose"), "{d:?}");

    let (s, c2) = (set("panic-response"), c.clone());
    let d = tokio::spawn(async move { s.on_response(&c2, 200, &json!({})) }).await.unwrap();
    assert!(d.deny[0].message.starts_with("on-response trapped") && d.deny[0].message.contains("hostile panics in on-response on purpose"), "{d:?}");

    // A megabyte: the first KiBs and the last words kept, the rest counted.
    let (s, c2) = (set("print-mb"), c.clone());
    let d = tokio::spawn(async move { s.on_request(&c2) }).await.unwrap();
    assert_eq!(d.verdict, Verdict::Allow, "{d:?}");
    let o = &d.output[0];
    assert_eq!(o.text.len(), veil_gateway::policy::output::KEEP_BYTES);
    assert_eq!(o.dropped_bytes, (1 << 20) + "hostile on-request printed a megabyte\n".len() as u64 - o.text.len() as u64);

    // A policy that sleeps waits on a timer: refused at once, not at its deadline.
    let started = Instant::now();
    let (s, c2) = (set("sleep"), c.clone());
    let d = tokio::spawn(async move { s.on_request(&c2) }).await.unwrap();
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(d.reasons[0].message.contains("waited on I/O or a timer"), "{d:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // The same component keeps serving after all of that.
    assert_eq!(set("allow").on_request(&c).verdict, Verdict::Allow);
}

#[test]
fn a_panic_message_quoting_the_response_is_redacted_in_the_reason() {
    let h = host();
    let set = PolicySet::new(vec![hostile(&h, "panic-with-body")]);
    let body = json!({"Name": "prod/db", "SecretString": "{\"password\":\"correct-horse-battery\"}", "ARN": "arn:aws:x"});
    let d = set.on_response(&call("secretsmanager:GetSecretValue", json!({}), json!({"SecretId": "prod/db"})), 200, &body);
    let m = &d.deny[0].message;
    assert!(m.contains("hostile cannot handle") && !m.contains("correct-horse-battery"), "{m}");
    assert!(!d.output[0].text.contains("correct-horse-battery"), "{:?}", d.output);
}

#[test]
fn python_and_js_policies_that_print_or_raise_say_so() {
    let h = host();
    for (file, name, raise) in [("fixtures/hostile-python.wasm", "hostile-python", "raise"), ("fixtures/hostile-js.wasm", "hostile-js", "throw")] {
        let compiled = h.load(&policy_path(file)).expect("policy loads");
        let with = |mode: &str| {
            PolicySet::new(vec![Arc::new(LoadedPolicy::new(compiled.clone(), json!({"mode": mode}).to_string()).unwrap())])
        };
        let c = call("iam:ListUsers", json!({}), json!({}));
        let d = with("print").on_request(&c);
        assert_eq!(d.verdict, Verdict::Allow, "{file}: {d:?}");
        let text = &d.output.first().unwrap_or_else(|| panic!("{file}: nothing printed: {d:?}")).text;
        assert!(text.contains(&format!("{name} on-request stdout: ListUsers")), "{file}: {text:?}");
        assert!(text.contains(&format!("{name} on-request stderr: \u{1b}[31mred")), "{file}: {text:?}");
        let d = with("print").on_response(&c, 200, &json!({}));
        assert!(d.deny.is_empty() && d.output[0].text.contains(&format!("{name} on-response stdout")), "{file}: {d:?}");

        let d = with(&format!("{raise}-request")).on_request(&c);
        assert_eq!(d.verdict, Verdict::Deny, "{file}");
        eprintln!("{file} request: {}", d.reasons[0].message);
        assert!(d.reasons[0].message.contains(&format!("{name} {raise}s in on-request on purpose")), "{file}: {d:?}");
        let d = with(&format!("{raise}-response")).on_response(&c, 200, &json!({}));
        eprintln!("{file} response: {}", d.deny[0].message);
        assert!(d.deny[0].message.contains(&format!("{name} {raise}s in on-response on purpose")), "{file}: {d:?}");

        let d = with("print-mb").on_request(&c);
        assert_eq!(d.verdict, Verdict::Allow, "{file}: {:?}", d.reasons);
        assert!(d.output[0].dropped_bytes >= 1 << 19, "{file}: {:?}", d.output[0].dropped_bytes);
    }
}

/// What the `remember` fixture says the instance served last.
fn previous(set: &PolicySet, issuer: &str, subject: &str) -> String {
    let d = set.on_request(&call_by(issuer, subject, "iam:ListUsers", json!({"sub": subject}), json!({})));
    assert_eq!(d.verdict, Verdict::Deny, "{d:?}");
    let m = &d.reasons[0].message;
    m.strip_prefix("previous caller on this instance: ").unwrap_or_else(|| panic!("{m}")).to_string()
}

#[test]
fn a_policy_that_keeps_state_never_sees_another_callers() {
    let h = host();
    let set = Arc::new(PolicySet::new(vec![hostile(&h, "remember")]));
    let (a, b) = ("https://issuer-a.test", "https://issuer-b.test");
    // One caller's calls share a warm instance; another caller never gets it,
    // nor does the same subject from another issuer.
    assert_eq!(previous(&set, a, "alice"), "none");
    assert_eq!(previous(&set, a, "alice"), "alice");
    assert_eq!(previous(&set, a, "bob"), "none");
    assert_eq!(previous(&set, b, "alice"), "none");
    assert_eq!(previous(&set, a, "alice"), "alice");
    assert_eq!(previous(&set, a, "bob"), "bob");
    // Many callers at once, more than instances are kept warm: an instance
    // is evicted and freed, never handed over.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let set = set.clone();
            std::thread::spawn(move || {
                for i in 0..300 {
                    let who = format!("agent-{}", (t * 7 + i) % 13);
                    let seen = previous(&set, a, &who);
                    assert!(seen == "none" || seen == who, "{who} saw {seen}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("no state crossed callers");
    }
    // A configuration of its own: its instances are not the other's.
    let other = PolicySet::new(vec![hostile(&h, "remember")]);
    assert_eq!(previous(&other, a, "alice"), "none");
}

#[test]
fn a_warm_instance_is_replaced_after_its_last_use_or_a_failure() {
    let h = host();
    let set = PolicySet::new(vec![hostile(&h, "remember")]);
    let fresh = (0..2 * MAX_USES).filter(|_| previous(&set, "https://issuer.test", "alice") == "none").count();
    assert_eq!(fresh, 2, "one fresh instance per {MAX_USES} calls");
    // A failed call frees its instance: the next one starts fresh.
    let trap = PolicySet::new(vec![load(&h, "fixtures/hostile.wasm", json!({"modes": {"ListUsers": "remember", "ListRoles": "trap"}}))]);
    assert_eq!(previous(&trap, "https://issuer.test", "alice"), "none");
    assert_eq!(previous(&trap, "https://issuer.test", "alice"), "alice");
    let d = trap.on_request(&call_by("https://issuer.test", "alice", "iam:ListRoles", json!({"sub": "alice"}), json!({})));
    assert!(d.reasons[0].message.contains("trapped"), "{d:?}");
    assert_eq!(previous(&trap, "https://issuer.test", "alice"), "none");
}

#[test]
fn a_policy_that_leaks_memory_keeps_answering() {
    // 2 MiB kept per call: 40 calls on one instance would pass the 64 MiB
    // limit; the instance is replaced once it has grown by 16 MiB.
    let h = host();
    let set = PolicySet::new(vec![hostile(&h, "leak")]);
    for i in 0..40 {
        let d = set.on_request(&call("iam:ListUsers", json!({}), json!({})));
        assert_eq!(d.verdict, Verdict::Allow, "call {i}: {d:?}");
    }
}

#[test]
fn a_policy_that_leaks_handles_keeps_answering_on_fresh_instances() {
    // ListUsers keeps 8 pollables per call (16 table entries: each is a
    // timer and its pollable); ListRoles says which caller the instance
    // served last. An instance is kept warm only while it holds at most
    // MAX_KEPT_HANDLES entries, so 200 leaking calls (3200 entries, past the
    // per-store cap) all answer, every second pair of calls or so on a fresh
    // instance; were it kept regardless, the 64th call would hit the cap.
    let h = host();
    let set = PolicySet::new(vec![load(&h, "fixtures/hostile.wasm", json!({"modes": {"ListUsers": "handles", "ListRoles": "remember"}}))]);
    let by_alice = |op: &str| set.on_request(&call_by("https://issuer.test", "alice", op, json!({"sub": "alice"}), json!({})));
    let mut fresh = 0;
    for i in 0..200 {
        let d = by_alice("iam:ListUsers");
        assert_eq!(d.verdict, Verdict::Allow, "call {i}: {d:?}");
        let d = by_alice("iam:ListRoles");
        match d.reasons[0].message.strip_prefix("previous caller on this instance: ") {
            Some("none") => fresh += 1,
            Some("alice") => {}
            _ => panic!("call {i}: {d:?}"),
        }
    }
    assert!((40..=150).contains(&fresh), "{fresh} fresh instances in 200 pairs of calls (MAX_KEPT_HANDLES {MAX_KEPT_HANDLES})");
}

#[test]
fn warm_instances_are_bounded_across_all_policies() {
    // 40 configurations with 8 callers each would keep 320 warm: the host
    // keeps at most WARM_TOTAL, so a large policy set cannot take the slots
    // calls need; every call still decides.
    let h = host();
    let compiled = h.load(&policy_path("risky-actions.wasm")).unwrap();
    let set = PolicySet::new((0..40).map(|i| Arc::new(LoadedPolicy::new(compiled.clone(), json!({"n": i}).to_string()).unwrap())).collect());
    for c in 0..8 {
        let d = set.on_request(&call_by("https://issuer.test", &format!("agent-{c}"), "iam:CreateUser", json!({}), json!({"UserName": "x"})));
        assert_eq!(d.verdict, Verdict::ApprovalRequired, "{:?}", d.reasons);
    }
    let warm: usize = set.policies().iter().map(|p| p.warm.len()).sum();
    assert_eq!(warm, WARM_TOTAL);
    // Dropping policies gives their count back.
    drop(set);
    let again = PolicySet::new(vec![Arc::new(LoadedPolicy::new(compiled, "{}".into()).unwrap())]);
    again.on_request(&call("iam:CreateUser", json!({}), json!({"UserName": "x"})));
    assert_eq!(again.policies()[0].warm.len(), 1);
}
