//! ClickHouse: schema, the shipper that moves spooled records there, and the
//! compliance queries.
//!
//! The shipper reads synced records from the spool in batches (up to
//! `batch_rows`, or whatever is there once the oldest waited `batch_wait`),
//! inserts them with the `clickhouse` crate (RowBinary), then records the
//! acknowledged position in `shipped.pos` (write, fsync, rename) and deletes
//! segments wholly before it. Failures retry with exponential backoff and
//! jitter, never skipping a record. A crash between insert and
//! acknowledgement replays that batch; the table's ReplacingMergeTree key
//! includes the record id, so the replay collapses and queries (FINAL) count
//! each record once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;

use super::spool::{self, Pos, Spool};
use super::Record;
use crate::config::ClickHouseConfig;
use crate::metrics::Metrics;

/// The schema, run statement by statement.
pub const SCHEMA: &str = include_str!("../../sql/schema.sql");

/// Columns added to the table since it was first released, appended by
/// [`ClickHouse::migrate`] to a table that lacks them (ClickHouse 18.16 has
/// no `ADD COLUMN IF NOT EXISTS`); `schema.sql` creates new tables with them.
const ADDED_COLUMNS: &[(&str, &str)] = &[("role", "String"), ("params_truncated", "UInt8")];

/// The compliance queries: name, SQL.
pub const QUERIES: &[(&str, &str)] = &[
    ("secrets-accessed", include_str!("../../sql/queries/secrets-accessed.sql")),
    ("denials-by-policy", include_str!("../../sql/queries/denials-by-policy.sql")),
    ("approvals", include_str!("../../sql/queries/approvals.sql")),
    ("masked-by-identity", include_str!("../../sql/queries/masked-by-identity.sql")),
    ("calls-by-identity", include_str!("../../sql/queries/calls-by-identity.sql")),
    ("policy-for-call", include_str!("../../sql/queries/policy-for-call.sql")),
    ("agent-session", include_str!("../../sql/queries/agent-session.sql")),
];

/// Arguments of a compliance query.
#[derive(Debug, Clone, Default)]
pub struct QueryArgs {
    /// Window start, Unix seconds.
    pub since: u32,
    /// Window end (exclusive), Unix seconds.
    pub until: u32,
    /// Identity subject ('' = any, where the query allows).
    pub subject: String,
    /// Agent session / trace / app id.
    pub session: String,
    /// Record id.
    pub id: String,
}

/// A ClickHouse string literal.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Fill a query's placeholders; values are quoted or numeric, never raw text.
pub fn render(sql: &str, db: &str, a: &QueryArgs) -> String {
    sql.replace("{db}", db)
        .replace("{since}", &a.since.to_string())
        .replace("{until}", &a.until.to_string())
        .replace("{subject}", &quote(&a.subject))
        .replace("{session}", &quote(&a.session))
        .replace("{id}", &quote(&a.id))
}

/// The SQL statements of the schema for database `db`.
pub fn schema_statements(db: &str) -> Vec<String> {
    let text: String = SCHEMA.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
    text.split(';').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.replace("{db}", db)).collect()
}

/// A connection to the audit database.
#[derive(Clone)]
pub struct ClickHouse {
    client: clickhouse::Client,
    /// Database name.
    pub db: String,
}

impl ClickHouse {
    /// A client for `cfg`, with the password already resolved.
    pub fn new(cfg: &ClickHouseConfig, password: Option<String>) -> ClickHouse {
        let mut client = clickhouse::Client::default()
            .with_url(cfg.url.trim_end_matches('/'))
            .with_user(cfg.user.clone())
            .with_database(cfg.database.clone())
            // The Debian server (18.16) predates the metadata the validation needs.
            .with_validation(false);
        if let Some(p) = password {
            client = client.with_password(p);
        }
        ClickHouse { client, db: cfg.database.clone() }
    }

    /// Create the database and table if missing, and add the columns a
    /// table created by an older release lacks.
    pub async fn migrate(&self) -> Result<(), clickhouse::error::Error> {
        let plain = self.client.clone().with_database("default");
        for stmt in schema_statements(&self.db) {
            plain.query(&stmt).execute().await?;
        }
        for (name, ty) in ADDED_COLUMNS {
            if self.has_column(&plain, name).await? {
                continue;
            }
            let added = plain.query(&format!("ALTER TABLE {}.audit ADD COLUMN {name} {ty}", self.db)).execute().await;
            // Another replica starting at the same time may have added it.
            if let Err(e) = added {
                if !self.has_column(&plain, name).await? {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    async fn has_column(&self, client: &clickhouse::Client, name: &str) -> Result<bool, clickhouse::error::Error> {
        let sql = "SELECT count() FROM system.columns WHERE database = ? AND table = 'audit' AND name = ?";
        Ok(client.query(sql).bind(self.db.as_str()).bind(name).fetch_one::<u64>().await? > 0)
    }

    /// Insert rows in one INSERT.
    pub async fn insert(&self, rows: &[Record]) -> Result<(), clickhouse::error::Error> {
        let mut insert = self.client.insert::<Record>("audit").await?;
        for r in rows {
            insert.write(r).await?;
        }
        insert.end().await
    }

    /// Run `sql`, returning TSVWithNames text.
    pub async fn query_tsv(&self, sql: &str) -> Result<String, clickhouse::error::Error> {
        let mut cursor = self.client.query(sql).fetch_bytes("TSVWithNames")?;
        let bytes = cursor.collect().await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// Moves records from the spool to ClickHouse.
pub struct Shipper {
    /// Destination.
    pub ch: ClickHouse,
    /// Source.
    pub spool: Spool,
    /// Records per insert at most.
    pub batch_rows: usize,
    /// Longest a record waits for a fuller batch.
    pub batch_wait: Duration,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

impl Shipper {
    fn pos_file(&self) -> PathBuf {
        Path::new(&self.spool.dir()).join("shipped.pos")
    }

    /// The acknowledged position (start of the spool when none).
    pub fn load_pos(dir: &Path) -> Pos {
        std::fs::read_to_string(dir.join("shipped.pos"))
            .ok()
            .and_then(|s| {
                let mut it = s.split_whitespace().map(|x| x.parse::<u64>());
                Some(Pos { seq: it.next()?.ok()?, offset: it.next()?.ok()? })
            })
            .unwrap_or_default()
    }

    fn save_pos(&self, pos: Pos) -> std::io::Result<()> {
        use std::io::Write;
        let path = self.pos_file();
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{} {}", pos.seq, pos.offset)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(Path::new(&self.spool.dir()))?.sync_all()
    }

    /// Ship forever. A reader task prepares the next batch (read, decode)
    /// while the current one is being inserted.
    pub async fn run(self) {
        let dir = PathBuf::from(self.spool.dir());
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Vec<Record>, Pos)>(1);
        let reader = tokio::spawn(read_batches(self.spool.clone(), Self::load_pos(&dir), self.batch_rows, self.batch_wait, tx));
        let mut backoff = Backoff::default();
        loop {
            match self.ch.migrate().await {
                Ok(()) => break,
                Err(e) => {
                    self.metrics.audit_ship_failures.inc();
                    tracing::warn!(error = %crate::error_chain(&e), "audit: ClickHouse schema not ready; retrying");
                    backoff.wait().await;
                }
            }
        }
        backoff.reset();
        tracing::info!(db = %self.ch.db, "audit: ClickHouse schema ready");
        while let Some((rows, next)) = rx.recv().await {
            if !rows.is_empty() {
                // The batch is kept until ClickHouse acknowledges it: nothing is skipped.
                while let Err(e) = self.ch.insert(&rows).await {
                    self.metrics.audit_ship_failures.inc();
                    tracing::warn!(error = %crate::error_chain(&e), rows = rows.len(), "audit: insert into ClickHouse failed; retrying");
                    backoff.wait().await;
                }
                backoff.reset();
                self.metrics.audit_shipped.inc_by(rows.len() as u64);
                tracing::debug!(rows = rows.len(), "audit: shipped");
            }
            if let Err(e) = self.save_pos(next) {
                tracing::error!(error = %e, "audit: saving the shipped position failed; the batch may be replayed (deduplicated by id)");
            }
            if let Err(e) = self.spool.release_before(next) {
                tracing::warn!(error = %e, "audit: deleting shipped segments failed");
            }
        }
        reader.abort();
    }
}

/// Read and decode batches from `pos` on: full batches at once, a partial
/// one once its oldest record waited `batch_wait`.
async fn read_batches(spool: Spool, mut pos: Pos, batch_rows: usize, batch_wait: Duration, tx: tokio::sync::mpsc::Sender<(Vec<Record>, Pos)>) {
    let dir = PathBuf::from(spool.dir());
    let mut backoff = Backoff::default();
    loop {
        let durable = spool.durable();
        let d = dir.clone();
        let read = tokio::task::spawn_blocking(move || {
            spool::read(&d, pos, durable, batch_rows).map(|(payloads, next)| {
                let mut rows = Vec::with_capacity(payloads.len());
                for p in &payloads {
                    match Record::decode(p) {
                        Ok(r) => rows.push(r),
                        Err(e) => tracing::error!(error = %e, "audit: unreadable record in the spool skipped"),
                    }
                }
                (rows, payloads.len(), next)
            })
        })
        .await;
        let (rows, read_count, next) = match read {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "audit: reading the spool failed");
                backoff.wait().await;
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "audit: spool reader failed");
                backoff.wait().await;
                continue;
            }
        };
        backoff.reset();
        if read_count == 0 {
            if next != pos {
                // Moved past an empty or finished segment.
                if tx.send((Vec::new(), next)).await.is_err() {
                    return;
                }
                pos = next;
            }
            spool.wait_written(batch_wait.max(Duration::from_millis(50))).await;
            continue;
        }
        if read_count < batch_rows {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
            let oldest = rows.iter().map(|r| r.ts_ms).min().unwrap_or(now);
            let age = Duration::from_millis(now.saturating_sub(oldest));
            if age < batch_wait {
                tokio::time::sleep(batch_wait - age).await;
                continue;
            }
        }
        if tx.send((rows, next)).await.is_err() {
            return;
        }
        pos = next;
    }
}

/// Exponential backoff with full jitter, 100 ms to 30 s.
#[derive(Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn reset(&mut self) {
        self.attempt = 0;
    }

    async fn wait(&mut self) {
        let cap = (100u64 << self.attempt.min(9)).min(30_000);
        self.attempt += 1;
        let ms = rand::rng().random_range(cap / 2..=cap);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_cannot_break_out() {
        assert_eq!(quote("a'b\\c"), "'a\\'b\\\\c'");
        let sql = render("SELECT 1 WHERE s = {subject} AND t >= toDateTime({since})", "veil", &QueryArgs { subject: "x' OR 1=1 --".into(), since: 5, ..Default::default() });
        assert_eq!(sql, "SELECT 1 WHERE s = 'x\\' OR 1=1 --' AND t >= toDateTime(5)");
    }

    #[test]
    fn schema_splits_into_statements() {
        let s = schema_statements("audit_db");
        assert_eq!(s.len(), 2);
        assert!(s[0].starts_with("CREATE DATABASE IF NOT EXISTS audit_db"));
        assert!(s[1].contains("ORDER BY (time, subject, id)"));
    }

    #[test]
    fn every_query_names_only_known_placeholders() {
        for (name, sql) in QUERIES {
            let r = render(sql, "veil", &QueryArgs::default());
            assert!(!r.contains('{'), "{name}: unreplaced placeholder in {r}");
        }
    }
}
