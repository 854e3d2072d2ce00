//! Audit benchmark: the request-path cost of writing a record (enqueue and
//! durable group commit, at 1 and 16 concurrent writers) and the shipping
//! rate from the spool into ClickHouse. Prints a Markdown table.
//!
//! Usage: `audit_bench [--clickhouse http://127.0.0.1:8123] [--records 200000]`
//! (`make bench` starts a ClickHouse and passes its URL).

use std::sync::Arc;
use std::time::{Duration, Instant};

use veil_gateway::audit::shipper::{ClickHouse, Shipper};
use veil_gateway::audit::spool::{Spool, SpoolOptions};
use veil_gateway::audit::Record;
use veil_gateway::config::ClickHouseConfig;
use veil_gateway::metrics::Metrics;

fn record(i: usize) -> Record {
    let mut r = Record::new("call", "bench");
    r.subject = format!("agent-{}", i % 50);
    r.issuer = "https://issuer.example".into();
    r.service = "secretsmanager".into();
    r.action = "GetSecretValue".into();
    r.region = "us-east-1".into();
    r.resource = format!("prod/app-{}/db", i % 200);
    r.params = format!("{{\"SecretId\":\"prod/app-{}/db\"}}", i % 200);
    r.verdict = "allow".into();
    r.policy_names = vec!["aws-sensitive".into(), "risky-actions".into(), "secrets-by-team".into()];
    r.policy_versions = vec!["0.1.0".into(); 3];
    r.policy_sha256s = vec!["ab".repeat(32); 3];
    r.status = 200;
    r.response = "{\"ARN\":\"arn:aws:secretsmanager:us-east-1:123456789012:secret:x\",\"Name\":\"x\",\"SecretString\":\"***\"}".into();
    r.masked_fields = 1;
    r.user_agent = "Boto3/1.43.11 md/Botocore#1.43.11 app/bench-agent".into();
    r.app_id = "bench-agent".into();
    r
}

fn pct(mut v: Vec<u64>, p: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

async fn append_latency(dir: &std::path::Path, durable: bool, writers: usize, per_writer: usize) -> (u64, u64, f64) {
    let (spool, _) = Spool::open(SpoolOptions { dir: dir.into(), fsync_interval: Duration::from_millis(5), segment_bytes: 64 << 20, max_bytes: 1 << 40 }).unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_writer);
            for i in 0..per_writer {
                let t = Instant::now();
                let payload = record(w * per_writer + i).encode();
                spool.append(payload, durable, None).await.unwrap();
                lat.push(t.elapsed().as_nanos() as u64);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    (pct(all.clone(), 0.5), pct(all, 0.99), rate)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let clickhouse = arg("--clickhouse");
    let records: usize = arg("--records").and_then(|r| r.parse().ok()).unwrap_or(200_000);

    println!("| audit path | writers | p50 | p99 | records/s |");
    println!("|---|---:|---:|---:|---:|");
    for (durable, writers, n) in [(false, 1, 20_000), (true, 1, 2_000), (true, 16, 1_000)] {
        let d = tempfile::tempdir().unwrap();
        let (p50, p99, rate) = append_latency(d.path(), durable, writers, n).await;
        let what = if durable { "durable (group fsync)" } else { "enqueue (serialise + hand-off)" };
        println!("| {what} | {writers} | {:.1} µs | {:.1} µs | {rate:.0} |", p50 as f64 / 1e3, p99 as f64 / 1e3);
    }

    let Some(url) = clickhouse else {
        println!("\n(shipping rate: pass --clickhouse URL)");
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(SpoolOptions { dir: d.path().into(), fsync_interval: Duration::from_millis(5), segment_bytes: 64 << 20, max_bytes: 1 << 40 }).unwrap();
    for i in 0..records {
        spool.append(record(i).encode(), i + 1 == records, None).await.unwrap();
    }
    let db = format!("veil_bench_{}", std::process::id());
    let cfg = ClickHouseConfig { url, database: db.clone(), user: "default".into(), password_file: None, batch_rows: 50_000, batch_wait_ms: 0 };
    let ch = ClickHouse::new(&cfg, None);
    ch.migrate().await.unwrap();
    let metrics = Arc::new(Metrics::default());
    let shipper = Shipper { ch: ch.clone(), spool: spool.clone(), batch_rows: cfg.batch_rows, batch_wait: Duration::ZERO, metrics: metrics.clone() };
    let started = Instant::now();
    let task = tokio::spawn(shipper.run());
    loop {
        let n = ch.query_tsv(&format!("SELECT count() FROM {db}.audit")).await.map(|s| s.lines().nth(1).and_then(|l| l.trim().parse::<usize>().ok()).unwrap_or(0)).unwrap_or(0);
        if n >= records {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    task.abort();
    let _ = ch.query_tsv(&format!("DROP DATABASE {db}")).await;
    println!("\n| shipping | records | seconds | records/s |");
    println!("|---|---:|---:|---:|");
    println!("| spool → ClickHouse (RowBinary, {} rows/insert) | {records} | {secs:.2} | {:.0} |", cfg.batch_rows, records as f64 / secs);
}
