//! Masking throughput: a response body parsed in its protocol's codec,
//! masked by selectors, and serialised back, as the gateway does for every
//! response (`ParsedBody::parse` → `mask` → `to_bytes`).
//! JSON (Secrets Manager ListSecrets-shaped, awsJson) and XML (IAM
//! ListAccessKeys-shaped, query protocol) at 4 KB, 200 KB and 1 MB.
//! Then the secret detectors alone (`detect::findings` over a parsed
//! document), which the gateway runs once per response for policies that
//! import `scan`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use veil_gateway::aws::Protocol;
use veil_gateway::masking::{HashKey, Mask, MaskStyle, Selector};
use veil_gateway::body::ParsedBody;

fn json_body(size: usize) -> Vec<u8> {
    let mut items = Vec::new();
    let mut len = 20;
    let mut i = 0;
    while len < size {
        let item = format!(
            r#"{{"ARN":"arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/app-{i}-AbCdEf","Name":"prod/app-{i}","Description":"database credentials for app {i}","SecretString":"{{\"username\":\"app{i}\",\"password\":\"pw-{i}-Zq8t\"}}","Tags":[{{"Key":"team","Value":"payments"}}]}}"#
        );
        len += item.len() + 1;
        items.push(item);
        i += 1;
    }
    format!(r#"{{"SecretList":[{}]}}"#, items.join(",")).into_bytes()
}

fn xml_body(size: usize) -> Vec<u8> {
    let mut members = String::new();
    let mut i = 0;
    while members.len() + 300 < size {
        members.push_str(&format!(
            "<member><UserName>user-{i}</UserName><AccessKeyId>AKIAIOSFODNN7EX{i:05}</AccessKeyId><Status>Active</Status><SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCY{i:010}</SecretAccessKey><CreateDate>2024-01-01T00:00:00Z</CreateDate></member>"
        ));
        i += 1;
    }
    format!(
        r#"<ListAccessKeysResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/"><ListAccessKeysResult><AccessKeyMetadata>{members}</AccessKeyMetadata><IsTruncated>false</IsTruncated></ListAccessKeysResult><ResponseMetadata><RequestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</RequestId></ResponseMetadata></ListAccessKeysResponse>"#
    )
    .into_bytes()
}

fn masks(paths: &[(&str, MaskStyle)]) -> Vec<Mask> {
    paths.iter().map(|(p, style)| Mask { selector: Selector::parse(p).expect("selector"), style: *style }).collect()
}

fn bench(c: &mut Criterion) {
    let key = HashKey::new(b"bench".to_vec());
    let cases = [
        ("json", Protocol::Json, None, json_body as fn(usize) -> Vec<u8>, masks(&[("SecretList[*].SecretString", MaskStyle::Redact), ("**.Description", MaskStyle::Partial)])),
        (
            "xml",
            Protocol::Query,
            Some("ListAccessKeys"),
            xml_body as fn(usize) -> Vec<u8>,
            masks(&[("AccessKeyMetadata[*].SecretAccessKey", MaskStyle::Redact), ("**.AccessKeyId", MaskStyle::Hash)]),
        ),
    ];
    let mut g = c.benchmark_group("masking");
    for (name, protocol, action, make, masks) in &cases {
        for (label, size) in [("4KB", 4 << 10), ("200KB", 200 << 10), ("1MB", 1 << 20)] {
            let raw = make(size);
            g.throughput(Throughput::Bytes(raw.len() as u64));
            g.bench_with_input(BenchmarkId::new(*name, label), &raw, |b, raw| {
                b.iter(|| {
                    let mut parsed = ParsedBody::parse(*protocol, raw, *action).expect("parses");
                    assert!(parsed.mask(masks, &[], &key) > 0);
                    parsed.to_bytes()
                })
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("detectors");
    for (label, size) in [("4KB", 4 << 10), ("200KB", 200 << 10), ("1MB", 1 << 20)] {
        let raw = json_body(size);
        let doc = veil_gateway::json::JsonDoc::parse(&raw).expect("parses");
        g.throughput(Throughput::Bytes(doc.text().len() as u64));
        g.bench_with_input(BenchmarkId::new("json", label), &doc, |b, doc| {
            b.iter(|| assert!(!veil_gateway::detect::findings(doc.root()).expect("scans").is_empty()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
