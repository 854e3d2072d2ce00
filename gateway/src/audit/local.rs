//! The compliance queries evaluated over the local spool, for gateways
//! without ClickHouse: same names, arguments and columns as the SQL files
//! (the embedded default keeps records on disk until shipped; with no
//! shipper they stay there, capped by `audit.max_spool_bytes`).

use std::collections::BTreeMap;
use std::path::Path;

use super::shipper::{QueryArgs, Shipper};
use super::spool::{self, Pos};
use super::Record;

/// Every readable record in the spool at `dir` (from the shipped position on).
pub fn spool_records(dir: &Path) -> std::io::Result<Vec<Record>> {
    if !dir.is_dir() {
        return Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("audit spool {} does not exist", dir.display())));
    }
    let (payloads, _) = spool::read(dir, Shipper::load_pos(dir), Pos { seq: u64::MAX, offset: u64::MAX }, usize::MAX)?;
    Ok(payloads.iter().filter_map(|p| Record::decode(p).ok()).collect())
}

fn time(r: &Record) -> String {
    time::OffsetDateTime::from_unix_timestamp(i64::from(r.time))
        .ok()
        .and_then(|t| t.format(time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]")).ok())
        .unwrap_or_default()
}

fn op(r: &Record) -> String {
    format!("{}:{}", r.service, r.action)
}

fn array(v: &[String]) -> String {
    format!("[{}]", v.iter().map(|s| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))).collect::<Vec<_>>().join(","))
}

/// ClickHouse's TSV escaping.
fn tsv_field(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\t', "\\t").replace('\n', "\\n")
}

fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut out = header.join("\t");
    out.push('\n');
    for row in rows {
        out.push_str(&row.iter().map(|f| tsv_field(f)).collect::<Vec<_>>().join("\t"));
        out.push('\n');
    }
    out
}

/// Run query `name` over `records`; TSV with a header line.
pub fn query(name: &str, records: &[Record], a: &QueryArgs) -> String {
    let in_window = |r: &&Record| r.time >= a.since && r.time < a.until;
    let subject_ok = |r: &&Record| a.subject.is_empty() || r.subject == a.subject;
    let mut calls: Vec<&Record> = records.iter().filter(|r| r.kind == "call").filter(in_window).collect();
    calls.sort_by(|x, y| (x.time, &x.id).cmp(&(y.time, &y.id)));
    match name {
        "secrets-accessed" => {
            let secret_read = |r: &Record| match r.service.as_str() {
                "secretsmanager" => ["GetSecretValue", "BatchGetSecretValue"].contains(&r.action.as_str()),
                "ssm" => ["GetParameter", "GetParameters", "GetParametersByPath", "GetParameterHistory"].contains(&r.action.as_str()),
                "kms" => ["Decrypt", "GenerateDataKey"].contains(&r.action.as_str()),
                _ => false,
            };
            let rows = calls
                .into_iter()
                .filter(subject_ok)
                .filter(|r| secret_read(r))
                .map(|r| vec![time(r), r.subject.clone(), op(r), r.resource.clone(), r.verdict.clone(), r.masked_fields.to_string(), r.approval_id.clone(), r.agent_session.clone(), r.app_id.clone()])
                .collect();
            table(&["at", "subject", "operation", "resource", "verdict", "masked_fields", "approval_id", "agent_session", "app_id"], rows)
        }
        "denials-by-policy" => {
            let mut by: BTreeMap<String, (u64, std::collections::BTreeSet<&str>, u32)> = BTreeMap::new();
            for r in calls.iter().copied().filter(subject_ok).filter(|r| r.verdict == "deny") {
                for reason in &r.reasons {
                    let policy = reason.split(':').next().unwrap_or_default().to_string();
                    let e = by.entry(policy).or_default();
                    e.0 += 1;
                    e.1.insert(&r.subject);
                    e.2 = e.2.max(r.time);
                }
            }
            let mut rows: Vec<_> = by.into_iter().collect();
            rows.sort_by(|x, y| y.1 .0.cmp(&x.1 .0).then(x.0.cmp(&y.0)));
            let rows = rows
                .into_iter()
                .map(|(p, (n, ids, last))| vec![p, n.to_string(), ids.len().to_string(), time(&Record { time: last, ..Record::default() })])
                .collect();
            table(&["policy", "denials", "identities", "last_denial"], rows)
        }
        "approvals" => {
            let mut by: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
            for r in records.iter().filter(|r| r.kind == "approval").filter(in_window) {
                by.entry(&r.approval_id).or_default().push(r);
            }
            let mut rows = Vec::new();
            for (id, evs) in by {
                if !(a.subject.is_empty() || evs.iter().any(|r| r.subject == a.subject || r.approval_reviewers.contains(&a.subject))) {
                    continue;
                }
                let requested = evs.iter().find(|r| r.verdict == "requested");
                let decided = evs.iter().filter(|r| r.verdict == "approved" || r.verdict == "denied").max_by_key(|r| r.approval_decided_ms);
                let decision = evs.iter().find(|r| ["approved", "denied", "expired"].contains(&r.verdict.as_str()));
                let requested_ms = requested.map_or(0, |r| r.ts_ms);
                let decided_ms = decided.map_or(0, |r| r.approval_decided_ms);
                let latency = if decided_ms > requested_ms && requested_ms > 0 { (decided_ms - requested_ms) as f64 / 1000.0 } else { 0.0 };
                rows.push((
                    requested_ms,
                    vec![
                        id.to_string(),
                        requested.map(|r| r.subject.clone()).unwrap_or_default(),
                        requested.map(|r| op(r)).unwrap_or_default(),
                        decided.map(|r| r.approval_reviewers.join(",")).unwrap_or_default(),
                        decision.map(|r| r.verdict.clone()).unwrap_or_default(),
                        evs.iter().filter(|r| r.verdict == "used").count().to_string(),
                        requested_ms.to_string(),
                        decided_ms.to_string(),
                        latency.to_string(),
                    ],
                ));
            }
            rows.sort_by(|x, y| (x.0, &x.1[0]).cmp(&(y.0, &y.1[0])));
            table(
                &["approval_id", "requester", "operation", "reviewers", "decision", "used", "requested_ms", "decided_ms", "latency_s"],
                rows.into_iter().map(|(_, r)| r).collect(),
            )
        }
        "masked-by-identity" => {
            let mut by: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
            for r in calls.iter().copied().filter(subject_ok) {
                let e = by.entry(&r.subject).or_default();
                e.0 += u64::from(r.masked_fields);
                e.1 += u64::from(r.masked_fields > 0);
                e.2 += 1;
            }
            let mut rows: Vec<_> = by.into_iter().collect();
            rows.sort_by(|x, y| y.1 .0.cmp(&x.1 .0).then(x.0.cmp(y.0)));
            table(
                &["subject", "masked_total", "calls_with_masks", "calls"],
                rows.into_iter().map(|(s, (m, c, n))| vec![s.to_string(), m.to_string(), c.to_string(), n.to_string()]).collect(),
            )
        }
        "calls-by-identity" => {
            let rows = calls
                .into_iter()
                .filter(|r| r.subject == a.subject)
                .map(|r| vec![time(r), r.id.clone(), op(r), r.resource.clone(), r.verdict.clone(), r.status.to_string(), r.masked_fields.to_string(), r.role.clone(), r.app_id.clone(), r.agent_session.clone(), r.source_ip.clone()])
                .collect();
            table(&["at", "id", "operation", "resource", "verdict", "status", "masked_fields", "role", "app_id", "agent_session", "source_ip"], rows)
        }
        "policy-for-call" => {
            let rows = records
                .iter()
                .filter(|r| r.id == a.id)
                .map(|r| vec![r.id.clone(), time(r), r.subject.clone(), op(r), r.verdict.clone(), array(&r.policy_names), array(&r.policy_versions), array(&r.policy_sha256s), array(&r.reasons)])
                .collect();
            table(&["id", "at", "subject", "operation", "verdict", "policy_names", "policy_versions", "policy_sha256s", "reasons"], rows)
        }
        "agent-session" => {
            let s = a.session.as_str();
            let rows = calls
                .into_iter()
                .filter(|r| !s.is_empty() && (r.agent_session == s || r.trace_id == s || r.app_id == s || r.role_session == s))
                .map(|r| {
                    vec![
                        time(r),
                        r.id.clone(),
                        r.subject.clone(),
                        op(r),
                        r.resource.clone(),
                        r.verdict.clone(),
                        r.status.to_string(),
                        r.masked_fields.to_string(),
                        r.agent_session.clone(),
                        r.trace_id.clone(),
                        r.app_id.clone(),
                        r.role.clone(),
                        r.role_session.clone(),
                    ]
                })
                .collect();
            table(&["at", "id", "subject", "operation", "resource", "verdict", "status", "masked_fields", "agent_session", "trace_id", "app_id", "role", "role_session"], rows)
        }
        _ => table(&["error"], vec![vec![format!("no query named {name}")]]),
    }
}

/// TSV with a header → a space-aligned table.
pub fn align(tsv: &str) -> String {
    let rows: Vec<Vec<&str>> = tsv.lines().map(|l| l.split('\t').collect()).collect();
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|f| f.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r.iter().enumerate().map(|(i, f)| format!("{f:<w$}", w = widths[i])).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(subject: &str, service: &str, action: &str, verdict: &str, masked: u32) -> Record {
        let mut r = Record::new("call", "t");
        r.subject = subject.into();
        r.service = service.into();
        r.action = action.into();
        r.verdict = verdict.into();
        r.masked_fields = masked;
        r
    }

    #[test]
    fn local_queries_match_the_sql_columns() {
        let mut deny = call("bob", "cloudtrail", "StopLogging", "deny", 0);
        deny.reasons = vec!["risky-actions: audit trails stay on".into()];
        let mut sess = call("alice", "s3", "ListBuckets", "allow", 0);
        sess.agent_session = "prompt-9".into();
        let recs = vec![call("alice", "secretsmanager", "GetSecretValue", "allow", 1), deny, sess];
        let a = QueryArgs { until: u32::MAX, ..Default::default() };
        let out = query("secrets-accessed", &recs, &a);
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(out.contains("alice\tsecretsmanager:GetSecretValue"));
        let out = query("denials-by-policy", &recs, &a);
        assert!(out.lines().nth(1).unwrap().starts_with("risky-actions\t1\t1\t"), "{out}");
        let out = query("masked-by-identity", &recs, &a);
        assert!(out.lines().nth(1).unwrap().starts_with("alice\t1\t1\t2"), "{out}");
        let out = query("agent-session", &recs, &QueryArgs { session: "prompt-9".into(), ..a.clone() });
        assert_eq!(out.lines().count(), 2);
        assert!(out.contains("s3:ListBuckets"));
        let out = query("calls-by-identity", &recs, &QueryArgs { since: u32::MAX - 1, subject: "alice".into(), ..a });
        assert_eq!(out.lines().count(), 1, "the window excludes them: {out}");
    }

    #[test]
    fn align_pads_columns() {
        assert_eq!(align("a\tbb\nccc\td\n"), "a    bb\nccc  d\n");
    }
}
