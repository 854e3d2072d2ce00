//! Cost of one policy hook with a 4 KB response, per language. Run `make
//! policies` first. Prints criterion's figures for: instantiation alone, then
//! on-request (risky-actions deciding iam:CreateUser: the shipped policy whose
//! scope has requests), on-response (secrets-by-team, 4 KB GetSecretValue
//! body) and on-response + masking, each on a never-used instance from the
//! ready pool (freeing it is the background thread's, as in the gateway,
//! unless too many wait). Then the default masking end to end
//! (issue 5's measure): a raw response body parsed, decided by aws-sensitive,
//! masked and serialised, at 4 KB and 1 MB.

use std::path::PathBuf;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use serde_json::{json, Value};
use veil_gateway::masking::HashKey;
use veil_gateway::aws::Protocol;
use veil_gateway::body::ParsedBody;
use veil_gateway::policy::{CallInput, Host, Identity, Limits, LoadedPolicy, Operation, PolicySet};

fn secret_4k() -> Value {
    let filler: String = "x".repeat(3800);
    json!({
        "ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/search/db-AbCdEf",
        "Name": "prod/search/db",
        "VersionId": "EXAMPLE1-90ab-cdef-fedc-ba987EXAMPLE",
        "SecretString": format!("{{\"username\":\"admin\",\"password\":\"{filler}\"}}"),
        "VersionStages": ["AWSCURRENT"],
        "CreatedDate": 1523477145.713
    })
}

fn call_of(operation: &str) -> CallInput {
    CallInput {
        identity: Identity::new("https://issuer.test", "agent", json!({"sub": "agent", "groups": ["search"]})),
        operation: Operation::parse_qualified(operation).unwrap(),
        params: json!({"SecretId": "prod/search/db"}),
    }
}

fn bench(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/policies");
    // The per-user compiled-policy cache spares re-runs compiling Python and JS.
    let cache = veil_gateway::policy::cache::user_dir().and_then(|d| veil_gateway::policy::cache::open(&d).ok());
    let host = Host::new(Limits::default(), cache).unwrap();
    let call = call_of("secretsmanager:GetSecretValue");
    let create_user = call_of("iam:CreateUser");
    // A JSON response reaches policies as AWS's own text, read in place, as in the gateway.
    let wire = secret_4k().to_string().into_bytes();
    assert!(wire.len() >= 3900);
    let parse = || ParsedBody::parse(Protocol::Json, &wire, None).expect("parses");
    let body = parse();
    let key = HashKey::new(b"bench".to_vec());

    // The same policies on the same cases in each language `make policies`
    // builds: Rust, Python (componentize-py), JS (componentize-js).
    for (lang, dir) in [("rust", ""), ("python", "python/"), ("js", "js/")] {
        let load = |name: &str, config: Value| {
            let compiled = host.load(&root.join(format!("{dir}{name}.wasm"))).expect("run `make policies` first");
            Arc::new(LoadedPolicy::new(compiled, config.to_string()).unwrap())
        };
        let policy = load("secrets-by-team", json!({"owners": {"payments": ["prod/payments/"]}}));
        let set = PolicySet::new(vec![policy.clone()]);
        let risky = load("risky-actions", json!({}));
        let risky_set = PolicySet::new(vec![risky.clone()]);
        let mut g = c.benchmark_group(format!("policy-hook/{lang}"));
        // The split: instantiation (what the background pool pays per call,
        // or the call itself when the pool is empty under saturation), and
        // each hook on an instance that was ready and waiting, as below
        // saturation. Setup (refilling the pool) is not timed.
        let ready = || policy.compiled.fill_ready().unwrap();
        // Freeing is the background thread's (dropped outside the timing, in batches the pool can hold).
        g.bench_function("instantiate", |b| b.iter_batched(|| (), |()| policy.compiled.instantiate_inline().unwrap(), BatchSize::NumIterations(100)));
        g.bench_function("on-request", |b| {
            b.iter_batched(|| risky.compiled.fill_ready().unwrap(), |_| risky_set.on_request(&create_user), BatchSize::PerIteration)
        });
        g.bench_function("on-response 4KB", |b| b.iter_batched(ready, |_| body.decide(&set, &call, 200), BatchSize::PerIteration));
        g.bench_function("on-response 4KB + mask", |b| {
            b.iter_batched(
                || (ready(), parse()),
                |(_, mut body)| {
                    let d = body.decide(&set, &call, 200);
                    assert!(d.deny.is_empty() && d.masks.len() == 2, "{lang}: unexpected decision");
                    body.mask(&d.masks, &[], &key);
                    body
                },
                BatchSize::PerIteration,
            )
        });
        g.finish();
    }

    let mut g = c.benchmark_group("policy-hook");
    let compiled = host.load(&root.join("aws-sensitive.wasm")).expect("run `make policies` first");
    let sensitive = Arc::new(LoadedPolicy::new(compiled, "{}".into()).unwrap());
    let sensitive_set = PolicySet::new(vec![sensitive.clone()]);
    let ready = || sensitive.compiled.fill_ready().unwrap();
    g.bench_function("aws-sensitive instantiate", |b| {
        b.iter_batched(|| (), |()| sensitive.compiled.instantiate_inline().unwrap(), BatchSize::NumIterations(100))
    });
    g.bench_function("aws-sensitive on-response 4KB", |b| {
        b.iter_batched(ready, |_| body.decide(&sensitive_set, &call, 200), BatchSize::PerIteration)
    });
    g.finish();

    // Raw bytes in, masked bytes out, as the gateway handles a JSON response.
    let mut g = c.benchmark_group("default-masking");
    let cases = [
        ("secretsmanager:GetSecretValue 4KB", wire.clone()),
        ("secretsmanager:ListSecrets 1MB", list_secrets(1 << 20)),
        ("ssm:GetParametersByPath 1MB", parameters_by_path(2000)),
    ];
    for (name, raw) in &cases {
        let op = name.split(' ').next().unwrap();
        let call = call_of(op);
        g.throughput(Throughput::Bytes(raw.len() as u64));
        g.bench_with_input(BenchmarkId::new("aws-sensitive", name), raw, |b, raw| {
            b.iter_batched(
                ready,
                |_| {
                    let mut parsed = ParsedBody::parse(Protocol::Json, raw, None).expect("parses");
                    let d = parsed.decide(&sensitive_set, &call, 200);
                    assert!(d.deny.is_empty(), "{:?}", d.deny);
                    assert!(parsed.mask(&d.masks, &[], &key) > 0);
                    parsed.to_bytes()
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

/// A ListSecrets-shaped listing of about `size` bytes, one in 50 descriptions
/// holding a connection string with a password.
fn list_secrets(size: usize) -> Vec<u8> {
    let mut items = Vec::new();
    let mut len = 0;
    while len < size {
        let i = items.len();
        let description = if i % 50 == 7 { format!("postgres://app:pw{i}secret@db-{i}.internal:5432/app") } else { format!("credentials of app {i}") };
        let item = json!({
            "ARN": format!("arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/app-{i}-AbCdEf"),
            "Name": format!("prod/app-{i}"), "Description": description,
            "LastChangedDate": 1700000000.0, "Tags": [{"Key": "team", "Value": "payments"}, {"Key": "env", "Value": "prod"}],
            "SecretVersionsToStages": {"EXAMPLE1-90ab-cdef-fedc-ba987EXAMPLE": ["AWSCURRENT"]}
        });
        len += item.to_string().len() + 1;
        items.push(item);
    }
    json!({"SecretList": items}).to_string().into_bytes()
}

/// An ssm GetParametersByPath page of `n` parameters, every third a SecureString.
fn parameters_by_path(n: usize) -> Vec<u8> {
    let params: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "Name": format!("/prod/app-{}/setting-{i}", i % 40), "Type": if i % 3 == 0 { "SecureString" } else { "String" },
                "Value": format!("value-{i}-{}", "v".repeat(380)), "Version": 3, "LastModifiedDate": 1700000000.0,
                "ARN": format!("arn:aws:ssm:us-east-1:123456789012:parameter/prod/app-{}/setting-{i}", i % 40), "DataType": "text"
            })
        })
        .collect();
    json!({"Parameters": params}).to_string().into_bytes()
}

criterion_group!(benches, bench);
criterion_main!(benches);
