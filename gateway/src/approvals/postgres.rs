//! The shared approval store: PostgreSQL, for several gateways behind one
//! address (`[approvals.postgres]`).
//!
//! Invariants, each held by the database rather than by a gateway:
//!
//! - One pending entry per fingerprint: a partial unique index
//!   (`… (fingerprint) WHERE state = 'pending'`). Identical calls on
//!   different gateways race on `INSERT … ON CONFLICT DO NOTHING`; the loser
//!   joins the winner's entry.
//! - A grant admits one call in the cluster: `UPDATE … SET state = 'used'
//!   WHERE … AND state = 'approved' … RETURNING`. Of two gateways racing,
//!   the second re-checks the row after the first commits and gets nothing.
//! - Decisions lock their row (`SELECT … FOR UPDATE`) and apply
//!   [`Entry::decide`], the rules the file store applies, so both stores
//!   agree by construction.
//! - Every transition is returned to exactly one caller (the one whose
//!   statement changed the row), which alone writes its audit record.
//!
//! Waking: a decision or expiry sends `NOTIFY veil_approvals, '<id>'` in its
//! transaction. Each gateway keeps one connection that `LISTEN`s and wakes
//! its own waiting calls ([`Wakeups`]); when that connection drops it is
//! re-opened with backoff and every waiter re-reads its entry, since
//! notifications may have been missed. Waiters re-read every
//! [`super::RECHECK`] anyway.
//!
//! Schema: versioned migrations recorded in `veil_schema_version`, applied at
//! start in one transaction under an advisory lock, so replicas starting
//! together migrate once and a failure leaves nothing half-done. A database
//! whose schema is newer than this binary knows is refused.
//!
//! Failure is closed: every operation is bounded in time, and an unreachable
//! database is an [`ApprovalError::Store`], which refuses the call that needed
//! the approval. Calls that need no approval never reach this module. The
//! pool reconnects by itself once the database is back.
//!
//! TLS to PostgreSQL is not supported yet: URLs asking for it
//! (`sslmode=require`) are refused at start; run the database on a private
//! network or loopback.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use futures_util::StreamExt;
use serde_json::Value;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{AsyncMessage, NoTls, Row};

use super::{now_ms, ApprovalError, Decision, Entry, Opened, State, Store, Wakeups};
use crate::config::{Config, ConfigError, Secret, SecretSpec};

/// The notification channel.
const CHANNEL: &str = "veil_approvals";
/// The key of the advisory lock that serialises migrations ("veilappr").
const MIGRATION_LOCK: i64 = 0x7665_696c_6170_7072;
/// The database password: `approvals.postgres.password_file`, else
/// `VEIL_APPROVALS_PG_PASSWORD`. Veil only presents it; the minimum (as for
/// ClickHouse's) catches an empty or truncated value before it becomes "no
/// password".
pub const PASSWORD: SecretSpec = SecretSpec { key: "approvals.postgres.password_file", env: "VEIL_APPROVALS_PG_PASSWORD", min_len: 16 };
/// The config key of the URL (named in every start-up error).
const URL_KEY: &str = "approvals.postgres.url";

/// The migrations, in order; `veil_schema_version.version` counts those
/// applied. Append only: a released migration never changes.
const MIGRATIONS: &[&str] = &[
    // 1: approvals.
    "CREATE TABLE veil_approvals (
        id text PRIMARY KEY,
        fingerprint text NOT NULL,
        state text NOT NULL CHECK (state IN ('pending', 'approved', 'denied', 'expired', 'used')),
        issuer text NOT NULL,
        subject text NOT NULL,
        role text NOT NULL,
        operation text NOT NULL,
        region text NOT NULL,
        resource text NOT NULL,
        params json NOT NULL,
        request_digest text NOT NULL,
        reasons jsonb NOT NULL,
        created_ms bigint NOT NULL,
        expires_ms bigint NOT NULL,
        decisions jsonb NOT NULL,
        min_approvals integer NOT NULL
    );
    CREATE UNIQUE INDEX veil_approvals_one_pending ON veil_approvals (fingerprint) WHERE state = 'pending';
    CREATE INDEX veil_approvals_grants ON veil_approvals (fingerprint) WHERE state = 'approved';
    CREATE INDEX veil_approvals_by_state ON veil_approvals (state, expires_ms);",
];

/// The columns of an entry, in [`entry`]'s order.
const COLUMNS: &str = "id, fingerprint, state, issuer, subject, role, operation, region, resource, params, \
                       request_digest, reasons, created_ms, expires_ms, decisions, min_approvals";

/// A start-up problem: the config key it concerns and why.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct PgStartError {
    /// The config key (or environment variable).
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

fn start_error(key: &str, reason: impl Into<String>) -> PgStartError {
    PgStartError { key: key.to_string(), reason: reason.into() }
}

/// Check `approvals.postgres.url` as config validation does: a
/// `postgres://user@host[:port]/database` URL without a password and
/// without TLS.
pub fn check_url(url: &str) -> Result<(), String> {
    parse_url(url).map(|_| ())
}

fn parse_url(url: &str) -> Result<tokio_postgres::Config, String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("must be a URL like postgres://veil@db.internal:5432/veil".into());
    }
    // The driver's message for a bad URL is generic and could echo the
    // URL: say what is expected instead.
    let cfg = tokio_postgres::Config::from_str(url)
        .map_err(|_| "is not a valid PostgreSQL URL (expected postgres://user@host:port/database)".to_string())?;
    if cfg.get_password().is_some() {
        return Err(format!("must not contain a password: put it in {} or {}", PASSWORD.key, PASSWORD.env));
    }
    if cfg.get_user().is_none_or(str::is_empty) {
        return Err("names no user (postgres://USER@host:port/database)".into());
    }
    if cfg.get_hosts().is_empty() {
        return Err("names no host (postgres://user@HOST:port/database)".into());
    }
    if cfg.get_ssl_mode() == SslMode::Require {
        return Err("sslmode=require: TLS to PostgreSQL is not supported yet; reach the database over a private network".into());
    }
    Ok(cfg)
}

/// `user@host:port/database`, for messages: never the password.
fn describe(cfg: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = cfg.get_ports().get(i).or(cfg.get_ports().first()).copied().unwrap_or(5432);
            match h {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(dir) => format!("{}:{port}", dir.display()),
            }
        })
        .collect();
    let user = cfg.get_user().unwrap_or_default();
    format!("{user}@{}/{}", hosts.join(","), cfg.get_dbname().unwrap_or(user))
}

/// How to reach the database, from `[approvals.postgres]`.
pub struct PgSettings {
    pg: tokio_postgres::Config,
    target: String,
    password_from: String,
    pool_size: usize,
    connect_timeout: Duration,
    statement_timeout: Duration,
}

impl PgSettings {
    /// The settings of `cfg`'s `[approvals.postgres]`, with the password
    /// read by the config's secret loader ([`PASSWORD`]); `None` when the
    /// table is absent (the file store serves).
    pub fn from_config(cfg: &Config) -> Result<Option<PgSettings>, ConfigError> {
        let Some(p) = &cfg.approvals.postgres else { return Ok(None) };
        let password = cfg.secret(&PASSWORD, p.password_file.as_deref())?;
        let password_from = match (&password, &p.password_file) {
            (Some(_), Some(_)) => format!("the password from {}", PASSWORD.key),
            (Some(_), None) => format!("the password from {}", PASSWORD.env),
            (None, _) => format!("no password ({} and {} are unset)", PASSWORD.key, PASSWORD.env),
        };
        let settings = PgSettings::new(
            &p.url,
            password.as_ref().map(Secret::expose),
            password_from,
            p.pool_size,
            Duration::from_secs(p.connect_timeout_secs),
            Duration::from_millis(p.statement_timeout_ms),
        );
        settings
            .map(Some)
            .map_err(|e| ConfigError { file: cfg.source.display().to_string(), key: e.key, reason: e.reason })
    }

    /// Settings from their parts; `password_from` says where the password
    /// came from, for authentication errors.
    pub fn new(
        url: &str,
        password: Option<&[u8]>,
        password_from: String,
        pool_size: usize,
        connect_timeout: Duration,
        statement_timeout: Duration,
    ) -> Result<PgSettings, PgStartError> {
        let mut pg = parse_url(url).map_err(|r| start_error(URL_KEY, r))?;
        if let Some(pw) = password {
            pg.password(pw);
        }
        pg.connect_timeout(connect_timeout)
            .application_name("veil")
            .options(format!("-c statement_timeout={}", statement_timeout.as_millis()))
            // A silent network failure ends the notification connection
            // within ~30 s instead of the system default's two hours.
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(15))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
        Ok(PgSettings { target: describe(&pg), pg, password_from, pool_size, connect_timeout, statement_timeout })
    }
}

/// Why a database operation failed, without the SQL driver's generic
/// wrapping ("db error") hiding the server's message.
fn reason(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn pool_reason(e: &PoolError) -> String {
    match e {
        PoolError::Backend(e) => format!("cannot connect: {}", reason(e)),
        PoolError::Timeout(t) => format!("no connection in time ({t:?})"),
        other => other.to_string(),
    }
}

/// Approvals in PostgreSQL, shared by every gateway that points at it.
pub struct PgStore {
    pool: Pool,
    target: String,
    wakeups: Arc<Wakeups>,
    listener: tokio::task::JoinHandle<()>,
    /// Bound on one operation: connecting plus running its statements.
    op_timeout: Duration,
    /// Unix ms of the last failure logged (failures are logged every 10 s
    /// at most: an outage under load would otherwise log once per call).
    last_warned: AtomicU64,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PgStore {
    /// Connect, create or upgrade the schema, and start listening for
    /// other gateways' changes. Any failure names `approvals.postgres.url`
    /// (or the password's source) and the reason.
    pub async fn connect(s: PgSettings) -> Result<PgStore, PgStartError> {
        let err = |what: &str, why: String| start_error(URL_KEY, format!("{what} {}: {why}", s.target));
        let manager = Manager::from_config(s.pg.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(s.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(s.connect_timeout))
            .create_timeout(Some(s.connect_timeout))
            .recycle_timeout(Some(s.connect_timeout))
            .build()
            .map_err(|e| err("cannot build a connection pool for", e.to_string()))?;
        let mut client = pool.get().await.map_err(|e| {
            let mut why = match &e {
                PoolError::Backend(b) => reason(b),
                other => pool_reason(other),
            };
            if matches!(&e, PoolError::Backend(b) if b.code().is_some_and(|c| c.code().starts_with("28"))) {
                why.push_str(&format!(" (with {})", s.password_from));
            }
            err("cannot connect to", why)
        })?;
        let version = migrate(&mut client).await.map_err(|why| err("cannot prepare the approvals schema in", why))?;
        drop(client);
        let wakeups = Arc::<Wakeups>::default();
        // The first LISTEN is part of starting: a gateway that could not
        // hear other gateways' decisions would only learn of them late.
        let first = Listening::start(&s.pg, s.connect_timeout, wakeups.clone())
            .await
            .map_err(|why| err("cannot listen for notifications on", why))?;
        tracing::info!(store = %s.target, schema_version = version, "approvals are shared through PostgreSQL");
        let listener = tokio::spawn(listen(s.pg.clone(), s.connect_timeout, s.target.clone(), wakeups.clone(), first));
        Ok(PgStore {
            pool,
            target: s.target,
            wakeups,
            listener,
            op_timeout: s.connect_timeout + s.statement_timeout * 2,
            last_warned: AtomicU64::new(0),
        })
    }

    /// Run one operation within the time bound, turning every failure into
    /// the error that refuses the call (fail closed).
    async fn run<T>(&self, what: &str, op: impl std::future::Future<Output = Result<T, OpError>>) -> Result<T, ApprovalError> {
        let result = match tokio::time::timeout(self.op_timeout, op).await {
            Ok(r) => r,
            Err(_) => Err(OpError::Db(format!("no answer within {} ms", self.op_timeout.as_millis()))),
        };
        result.map_err(|e| match e {
            OpError::Approval(a) => a,
            OpError::Db(why) => {
                let now = now_ms();
                let last = self.last_warned.load(Ordering::Relaxed);
                if now.saturating_sub(last) >= 10_000 && self.last_warned.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                    tracing::warn!(store = %self.target, operation = what, error = %why, "the PostgreSQL approval store failed; calls that need an approval are refused");
                }
                ApprovalError::Store(format!("PostgreSQL: {what}: {why}"))
            }
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, OpError> {
        self.pool.get().await.map_err(|e| OpError::Db(pool_reason(&e)))
    }
}

/// A failed operation: a rule of approvals, or the database.
enum OpError {
    Approval(ApprovalError),
    Db(String),
}

impl From<tokio_postgres::Error> for OpError {
    fn from(e: tokio_postgres::Error) -> Self {
        OpError::Db(reason(&e))
    }
}

impl From<ApprovalError> for OpError {
    fn from(e: ApprovalError) -> Self {
        OpError::Approval(e)
    }
}

/// Apply the migrations this binary has and the database lacks, in one
/// transaction under an advisory lock; returns the schema version.
async fn migrate(client: &mut deadpool_postgres::Object) -> Result<usize, String> {
    let r = |e: tokio_postgres::Error| reason(&e);
    let tx = client.transaction().await.map_err(r)?;
    // Replicas starting together: the first migrates, the others wait here
    // and then find the work done. Released at commit or rollback.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(r)?;
    // Checked before creating: a gateway whose role may only read and write
    // the tables (an administrator created them) must not need CREATE.
    let exists: bool = tx.query_one("SELECT to_regclass('veil_schema_version') IS NOT NULL", &[]).await.map_err(r)?.get(0);
    if !exists {
        tx.batch_execute(
            "CREATE TABLE veil_schema_version (
                component text PRIMARY KEY,
                version integer NOT NULL,
                updated_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(r)?;
    }
    let row = tx.query_opt("SELECT version FROM veil_schema_version WHERE component = 'approvals'", &[]).await.map_err(r)?;
    let current = row.map(|row| row.get::<_, i32>(0)).unwrap_or(0).max(0) as usize;
    if current > MIGRATIONS.len() {
        return Err(format!(
            "the schema is version {current}, newer than this Veil understands ({}): a newer Veil migrated it; upgrade this gateway",
            MIGRATIONS.len()
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        tx.batch_execute(sql).await.map_err(|e| format!("migration {}: {}", i + 1, reason(&e)))?;
    }
    if current < MIGRATIONS.len() {
        tx.execute(
            "INSERT INTO veil_schema_version (component, version) VALUES ('approvals', $1)
             ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version, updated_at = now()",
            &[&(MIGRATIONS.len() as i32)],
        )
        .await
        .map_err(r)?;
    }
    tx.commit().await.map_err(r)?;
    Ok(MIGRATIONS.len())
}

/// The entry in `row` (selected as [`COLUMNS`]).
fn entry(row: &Row) -> Result<Entry, OpError> {
    let bad = |what: &str, e: String| OpError::Db(format!("a stored approval has a bad {what}: {e}"));
    let text = |i: usize| row.try_get::<_, String>(i).map_err(|e| bad("column", reason(&e)));
    let json = |i: usize| row.try_get::<_, Value>(i).map_err(|e| bad("column", reason(&e)));
    let ms = |i: usize| row.try_get::<_, i64>(i).map(|v| v.max(0) as u64).map_err(|e| bad("column", reason(&e)));
    let state = text(2)?;
    Ok(Entry {
        id: text(0)?,
        fingerprint: text(1)?,
        state: State::parse(&state).ok_or_else(|| bad("state", state.clone()))?,
        issuer: text(3)?,
        subject: text(4)?,
        role: text(5)?,
        operation: text(6)?,
        region: text(7)?,
        resource: text(8)?,
        params: json(9)?,
        request_digest: text(10)?,
        reasons: serde_json::from_value(json(11)?).map_err(|e| bad("reasons", e.to_string()))?,
        created_ms: ms(12)?,
        expires_ms: ms(13)?,
        decisions: serde_json::from_value(json(14)?).map_err(|e| bad("decisions", e.to_string()))?,
        min_approvals: row.try_get::<_, i32>(15).map(|v| v.max(0) as u32).map_err(|e| bad("column", reason(&e)))?,
    })
}

fn entries(rows: &[Row]) -> Result<Vec<Entry>, OpError> {
    rows.iter().map(entry).collect()
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn request(&self, new: Entry) -> Result<Opened, ApprovalError> {
        self.run("request", async {
            let mut c = self.client().await?;
            // Bounded: each pass either inserts or finds the pending entry;
            // another pass is needed only if that entry was decided between
            // the two statements.
            for _ in 0..3 {
                let tx = c.transaction().await?;
                let created_ms = new.created_ms as i64;
                let stale = tx
                    .query(
                        &format!(
                            "UPDATE veil_approvals SET state = 'expired'
                             WHERE fingerprint = $1 AND state = 'pending' AND expires_ms <= $2 RETURNING {COLUMNS}"
                        ),
                        &[&new.fingerprint, &created_ms],
                    )
                    .await?;
                let expired = entries(&stale)?;
                let inserted = tx
                    .query_opt(
                        &format!(
                            "INSERT INTO veil_approvals ({COLUMNS})
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
                             ON CONFLICT (fingerprint) WHERE state = 'pending' DO NOTHING RETURNING {COLUMNS}"
                        ),
                        &[
                            &new.id,
                            &new.fingerprint,
                            &new.state.as_str(),
                            &new.issuer,
                            &new.subject,
                            &new.role,
                            &new.operation,
                            &new.region,
                            &new.resource,
                            &new.params,
                            &new.request_digest,
                            &serde_json::json!(new.reasons),
                            &created_ms,
                            &(new.expires_ms as i64),
                            &serde_json::json!(new.decisions),
                            &(new.min_approvals as i32),
                        ],
                    )
                    .await?;
                let opened = match inserted {
                    Some(row) => Opened { entry: entry(&row)?, created: true, expired },
                    None => {
                        // Another call (on any gateway) holds the pending
                        // entry: join it. This statement's snapshot sees it,
                        // as the conflict waited for its commit.
                        let row = tx
                            .query_opt(&format!("SELECT {COLUMNS} FROM veil_approvals WHERE fingerprint = $1 AND state = 'pending'"), &[&new.fingerprint])
                            .await?;
                        match row {
                            Some(row) => Opened { entry: entry(&row)?, created: false, expired },
                            None => continue,
                        }
                    }
                };
                notify(&tx, opened.expired.iter().map(|e| e.id.as_str())).await?;
                tx.commit().await?;
                for e in &opened.expired {
                    self.wakeups.wake(&e.id);
                }
                return Ok(opened);
            }
            Err(OpError::Db("the pending approval kept changing; try again".into()))
        })
        .await
    }

    async fn get(&self, id: &str) -> Result<Option<Entry>, ApprovalError> {
        self.run("get", async {
            let c = self.client().await?;
            let row = c.query_opt(&format!("SELECT {COLUMNS} FROM veil_approvals WHERE id = $1"), &[&id]).await?;
            row.as_ref().map(entry).transpose()
        })
        .await
    }

    async fn list(&self, state: State) -> Result<Vec<Entry>, ApprovalError> {
        self.run("list", async {
            let c = self.client().await?;
            let rows = c.query(&format!("SELECT {COLUMNS} FROM veil_approvals WHERE state = $1 ORDER BY id"), &[&state.as_str()]).await?;
            entries(&rows)
        })
        .await
    }

    async fn decide(&self, id: &str, d: Decision) -> Result<Entry, ApprovalError> {
        let e = self
            .run("decide", async {
                let mut c = self.client().await?;
                let tx = c.transaction().await?;
                // Locked until commit: two reviewers deciding at once on two
                // gateways are applied one after the other.
                let row = tx.query_opt(&format!("SELECT {COLUMNS} FROM veil_approvals WHERE id = $1 FOR UPDATE"), &[&id]).await?;
                let mut e = entry(&row.ok_or_else(|| ApprovalError::NotFound(id.into()))?)?;
                // A refusal returns here and the transaction rolls back on drop.
                e.decide(d)?;
                tx.execute(
                    "UPDATE veil_approvals SET state = $2, decisions = $3 WHERE id = $1",
                    &[&id, &e.state.as_str(), &serde_json::json!(e.decisions)],
                )
                .await?;
                notify(&tx, [id]).await?;
                tx.commit().await?;
                Ok(e)
            })
            .await?;
        // This gateway's waiters need not wait for the notification's round trip.
        self.wakeups.wake(id);
        Ok(e)
    }

    async fn take_grant(&self, fingerprint: &str, now_ms: u64) -> Result<Option<Entry>, ApprovalError> {
        self.run("take grant", async {
            let c = self.client().await?;
            // The outer condition is what makes the grant one-shot: a second
            // gateway racing for the same row waits for the first to commit,
            // re-checks `state = 'approved'` on the new row, and updates nothing.
            let row = c
                .query_opt(
                    &format!(
                        "UPDATE veil_approvals SET state = 'used'
                         WHERE id = (SELECT id FROM veil_approvals
                                     WHERE fingerprint = $1 AND state = 'approved' AND expires_ms > $2
                                     ORDER BY id LIMIT 1)
                           AND state = 'approved' AND expires_ms > $2
                         RETURNING {COLUMNS}"
                    ),
                    &[&fingerprint, &(now_ms as i64)],
                )
                .await?;
            row.as_ref().map(entry).transpose()
        })
        .await
    }

    async fn expire(&self, now_ms: u64) -> Result<Vec<Entry>, ApprovalError> {
        let expired = self
            .run("expire", async {
                let mut c = self.client().await?;
                let tx = c.transaction().await?;
                let now = now_ms as i64;
                // SKIP LOCKED: rows another gateway's sweeper (or a reviewer)
                // holds are theirs; the next sweep sees what is left.
                let rows = tx
                    .query(
                        &format!(
                            "UPDATE veil_approvals SET state = 'expired'
                             WHERE id IN (SELECT id FROM veil_approvals
                                          WHERE state IN ('pending', 'approved') AND expires_ms <= $1
                                          ORDER BY id FOR UPDATE SKIP LOCKED)
                             RETURNING {COLUMNS}"
                        ),
                        &[&now],
                    )
                    .await?;
                let expired = entries(&rows)?;
                // Forget finished entries a day after they expired.
                tx.execute(
                    "DELETE FROM veil_approvals
                     WHERE id IN (SELECT id FROM veil_approvals
                                  WHERE state IN ('denied', 'expired', 'used') AND expires_ms <= $1
                                  ORDER BY id FOR UPDATE SKIP LOCKED)",
                    &[&(now - 86_400_000)],
                )
                .await?;
                notify(&tx, expired.iter().map(|e| e.id.as_str())).await?;
                tx.commit().await?;
                Ok(expired)
            })
            .await?;
        for e in &expired {
            self.wakeups.wake(&e.id);
        }
        Ok(expired)
    }

    fn wakeups(&self) -> &Arc<Wakeups> {
        &self.wakeups
    }
}

/// Tell every gateway that these entries changed; delivered at commit.
async fn notify<'a>(tx: &deadpool_postgres::Transaction<'_>, ids: impl IntoIterator<Item = &'a str>) -> Result<(), OpError> {
    let ids: Vec<&str> = ids.into_iter().collect();
    if !ids.is_empty() {
        tx.execute("SELECT pg_notify($1, id) FROM unnest($2::text[]) AS id", &[&CHANNEL, &ids]).await?;
    }
    Ok(())
}

/// One connection that LISTENs, and the task reading its notifications.
struct Listening {
    /// Kept so the session (and its LISTEN) lives as long as the reader.
    _client: tokio_postgres::Client,
    reader: tokio::task::JoinHandle<String>,
}

impl Listening {
    async fn start(pg: &tokio_postgres::Config, timeout: Duration, wakeups: Arc<Wakeups>) -> Result<Listening, String> {
        let (client, mut connection) = match tokio::time::timeout(timeout, pg.connect(NoTls)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(reason(&e)),
            Err(_) => return Err(format!("no connection within {} s", timeout.as_secs())),
        };
        // The connection must be driven for LISTEN to complete, so the
        // reader runs before it is sent.
        let reader = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(n)) => wakeups.wake(n.payload()),
                    Ok(_) => {}
                    Err(e) => return reason(&e),
                }
            }
            "the server closed the connection".to_string()
        });
        match tokio::time::timeout(timeout, client.batch_execute(&format!("LISTEN {CHANNEL}"))).await {
            Ok(Ok(())) => Ok(Listening { _client: client, reader }),
            Ok(Err(e)) => {
                reader.abort();
                Err(reason(&e))
            }
            Err(_) => {
                reader.abort();
                Err(format!("LISTEN took longer than {} s", timeout.as_secs()))
            }
        }
    }

    /// Until the connection ends; returns why it did.
    async fn run(self) -> String {
        self.reader.await.unwrap_or_else(|e| format!("the notification reader failed: {e}"))
    }
}

/// Keep a LISTEN connection open for as long as the store lives. Each time
/// it is (re-)established or lost, every waiter re-reads its entry:
/// notifications sent meanwhile were not heard.
async fn listen(pg: tokio_postgres::Config, timeout: Duration, target: String, wakeups: Arc<Wakeups>, first: Listening) {
    let mut current = Some(first);
    let mut backoff = Duration::from_millis(250);
    loop {
        let listening = match current.take() {
            Some(l) => l,
            None => match Listening::start(&pg, timeout, wakeups.clone()).await {
                Ok(l) => {
                    tracing::info!(store = %target, "approval notifications restored");
                    wakeups.wake_all();
                    backoff = Duration::from_millis(250);
                    l
                }
                Err(why) => {
                    tracing::debug!(store = %target, error = %why, "reconnecting for approval notifications failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        let why = listening.run().await;
        tracing::warn!(store = %target, error = %why, "lost the PostgreSQL notification connection; reconnecting");
        wakeups.wake_all();
    }
}

/// A real PostgreSQL server for tests: Debian's PostgreSQL 15 (or
/// `VEIL_PG_BIN`), initialised into a temporary directory and run as the
/// unprivileged `postgres` user when the tests run as root (as CI does), on
/// a free port; stopped when dropped. Missing binaries fail the test loudly:
/// `scripts/deps.sh` installs them.
#[cfg(test)]
pub(crate) mod testpg {
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    pub const SUPERUSER_PASSWORD: &str = "superuser-test-password";
    pub const VEIL_PASSWORD: &str = "veil-test-password";

    pub struct TestPg {
        dir: tempfile::TempDir,
        bin: PathBuf,
        pub port: u16,
        as_postgres: bool,
    }

    impl TestPg {
        pub fn start() -> TestPg {
            let bin = std::env::var_os("VEIL_PG_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
            assert!(
                bin.join("initdb").is_file(),
                "PostgreSQL is not installed ({} has no initdb): run scripts/deps.sh; the approval store is tested against a real server",
                bin.display()
            );
            let dir = tempfile::tempdir().unwrap();
            let as_postgres = rustix::process::geteuid().is_root();
            if as_postgres {
                // PostgreSQL refuses to run as root.
                run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()));
            }
            let pwfile = dir.path().join("pw");
            std::fs::write(&pwfile, SUPERUSER_PASSWORD).unwrap();
            if as_postgres {
                run(Command::new("chown").arg("postgres:postgres").arg(&pwfile));
            }
            let pg = TestPg { port: 0, dir, bin, as_postgres };
            let data = pg.data();
            run(&mut pg.cmd("initdb", &[
                "-D", data.to_str().unwrap(), "-U", "postgres", "--pwfile", pwfile.to_str().unwrap(),
                "--auth-local=trust", "--auth-host=scram-sha-256", "-N", "-E", "UTF8", "--locale=C",
            ]));
            let mut pg = pg;
            pg.port = free_port();
            pg.start_server();
            pg.sql("postgres", &format!("CREATE ROLE veil LOGIN PASSWORD '{VEIL_PASSWORD}'"));
            pg
        }

        fn data(&self) -> PathBuf {
            self.dir.path().join("data")
        }

        fn cmd(&self, tool: &str, args: &[&str]) -> Command {
            let exe = self.bin.join(tool);
            let mut c = if self.as_postgres {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(exe);
                c
            } else {
                Command::new(exe)
            };
            c.args(args);
            c
        }

        /// Start the server (again), on the same port and data.
        pub fn start_server(&self) {
            let opts = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
                self.port,
                self.dir.path().display()
            );
            let log = self.dir.path().join("log");
            run(&mut self.cmd("pg_ctl", &["-D", self.data().to_str().unwrap(), "-o", &opts, "-l", log.to_str().unwrap(), "-w", "-t", "60", "start"]));
        }

        /// Stop the server (clients are disconnected).
        pub fn stop_server(&self) {
            let _ = self.cmd("pg_ctl", &["-D", self.data().to_str().unwrap(), "-m", "fast", "-w", "stop"]).output();
        }

        /// Run SQL as the superuser in `db`.
        pub fn sql(&self, db: &str, sql: &str) -> String {
            let sock = self.dir.path().to_str().unwrap().to_string();
            let port = self.port.to_string();
            let out = run(&mut self.cmd("psql", &["-h", &sock, "-p", &port, "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-Atqc", sql]));
            out.trim().to_string()
        }

        /// A new database owned by `veil`; its URL.
        pub fn database(&self) -> String {
            static N: AtomicUsize = AtomicUsize::new(0);
            let name = format!("t{}", N.fetch_add(1, Ordering::Relaxed));
            self.sql("postgres", &format!("CREATE DATABASE {name} OWNER veil"));
            format!("postgres://veil@127.0.0.1:{}/{name}", self.port)
        }
    }

    impl Drop for TestPg {
        fn drop(&mut self) {
            let _ = self.cmd("pg_ctl", &["-D", self.data().to_str().unwrap(), "-m", "immediate", "-w", "stop"]).output();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    fn run(c: &mut Command) -> String {
        let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
        assert!(out.status.success(), "{c:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Settings for `url` with the test password.
    pub fn settings(url: &str, password: &str) -> super::PgSettings {
        super::PgSettings::new(url, Some(password.as_bytes()), "the test password".into(), 8, Duration::from_secs(2), Duration::from_secs(2)).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testpg::{settings, TestPg, VEIL_PASSWORD};
    use super::*;
    use crate::approvals::conformance::{self, decision, request};
    use crate::approvals::{Approvals, Waited};
    use serde_json::json;

    async fn gateway(url: &str, min: u32, wait: Duration) -> Approvals {
        let store = PgStore::connect(settings(url, VEIL_PASSWORD)).await.unwrap();
        Approvals::new(Box::new(store), wait, Duration::from_secs(60), min)
    }

    /// The file store's scenarios, on two gateways sharing one database.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_store_conformance_across_two_gateways() {
        let pg = TestPg::start();
        for (name, min) in [("join", 1), ("two-person", 2), ("expiry", 1), ("wake", 1), ("race", 1)] {
            let url = pg.database();
            let wait = if name == "wake" { Duration::from_secs(30) } else { Duration::from_millis(200) };
            let (a, b) = (gateway(&url, min, wait).await, gateway(&url, min, wait).await);
            match name {
                "join" => conformance::retries_join_and_a_grant_admits_one_call(&a, &b).await,
                "two-person" => conformance::two_person_rule_and_denials(&a, &b).await,
                "expiry" => conformance::expiry(&a, &b).await,
                "wake" => conformance::a_decision_wakes_waiters_at_once(&a, &b).await,
                _ => conformance::races_have_one_winner(&a, &b).await,
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migrations_run_once_and_refuse_a_newer_schema() {
        let pg = TestPg::start();
        let url = pg.database();
        let db = url.rsplit('/').next().unwrap().to_string();
        // Replicas starting at once: one migrates, the others find it done.
        let started = futures_util::future::join_all((0..4).map(|_| PgStore::connect(settings(&url, VEIL_PASSWORD)))).await;
        assert!(started.iter().all(Result::is_ok), "{:?}", started.iter().filter_map(|r| r.as_ref().err()).collect::<Vec<_>>());
        assert_eq!(pg.sql(&db, "SELECT component || '=' || version FROM veil_schema_version"), "approvals=1");
        drop(started);
        // A schema from a newer Veil is refused, named, and left alone.
        pg.sql(&db, "UPDATE veil_schema_version SET version = 99");
        let e = PgStore::connect(settings(&url, VEIL_PASSWORD)).await.err().unwrap();
        assert_eq!(e.key, "approvals.postgres.url");
        assert!(e.reason.contains("version 99, newer than this Veil understands (1)"), "{e}");
        assert_eq!(pg.sql(&db, "SELECT version FROM veil_schema_version"), "99");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_credentials_and_permissions_stop_the_start_and_change_nothing() {
        let pg = TestPg::start();
        let url = pg.database();
        let db = url.rsplit('/').next().unwrap().to_string();
        let e = PgStore::connect(settings(&url, "wrong")).await.err().unwrap();
        assert_eq!(e.key, "approvals.postgres.url");
        assert!(e.reason.contains("password authentication failed") && e.reason.contains("the test password"), "{e}");
        assert!(!e.to_string().contains("wrong"), "the password is never shown: {e}");
        // A role that may connect but not create tables.
        pg.sql("postgres", "CREATE ROLE reader LOGIN PASSWORD 'reader-test-password'");
        let reader_url = url.replace("veil@", "reader@");
        let e = PgStore::connect(settings(&reader_url, "reader-test-password")).await.err().unwrap();
        assert!(e.reason.contains("cannot prepare the approvals schema") && e.reason.contains("permission denied"), "{e}");
        assert_eq!(pg.sql(&db, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'veil_%'"), "0", "nothing half-migrated");
        // Once an administrator migrated, such a role needs no CREATE.
        drop(PgStore::connect(settings(&url, VEIL_PASSWORD)).await.unwrap());
        pg.sql(&db, "GRANT SELECT, INSERT, UPDATE, DELETE ON veil_approvals, veil_schema_version TO reader");
        let reader = PgStore::connect(settings(&reader_url, "reader-test-password")).await.unwrap();
        assert_eq!(reader.list(State::Pending).await.unwrap(), Vec::new());
        // Nobody listening there.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let e = PgStore::connect(settings(&format!("postgres://veil@127.0.0.1:{port}/x"), VEIL_PASSWORD)).await.err().unwrap();
        assert!(e.reason.starts_with(&format!("cannot connect to veil@127.0.0.1:{port}/x: error connecting to server:")), "{e}");
    }

    #[test]
    fn urls_are_checked_before_anything_connects() {
        assert!(check_url("postgres://veil@db.internal:5432/veil").is_ok());
        assert!(check_url("postgresql://veil@127.0.0.1/veil?connect_timeout=3").is_ok());
        for (url, why) in [
            ("mysql://veil@db/veil", "must be a URL like"),
            ("db.internal:5432", "must be a URL like"),
            ("postgres://veil:hunter2@db/veil", "must not contain a password"),
            ("postgres://veil@db/veil?password=hunter2", "must not contain a password"),
            ("postgres://db/veil", "names no user"),
            ("postgres://veil@db/veil?sslmode=require", "TLS to PostgreSQL is not supported yet"),
            ("postgres://veil@db:notaport/veil", "is not a valid PostgreSQL URL"),
        ] {
            let e = check_url(url).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn the_config_names_the_key_and_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("p")).unwrap();
        let base = "[listener]\naddress = \"127.0.0.1:0\"\ninsecure_plaintext = true\n\
                    [identity]\n[[identity.issuers]]\nissuer = \"https://issuer.example\"\naudience = \"veil\"\n\
                    [policies]\ndir = \"p\"\n[approvals.postgres]\n";
        let load = |keys: &str| Config::from_text(&format!("{base}{keys}"), &dir.path().join("veil.toml"));
        let cfg = load("url = \"postgres://veil@db:5432/veil\"\n").unwrap();
        let pg = cfg.approvals.postgres.clone().unwrap();
        assert_eq!((pg.pool_size, pg.connect_timeout_secs, pg.statement_timeout_ms), (8, 5, 5000));
        let url = "url = \"postgres://veil@db/veil\"\n";
        for (keys, key, why) in [
            ("url = \"postgres://veil:hunter2@db/veil\"\n".to_string(), "approvals.postgres.url", "must not contain a password"),
            (format!("{url}pool_size = 0\n"), "approvals.postgres.pool_size", "between 1 and 256"),
            (format!("{url}connect_timeout_secs = 0\n"), "approvals.postgres.connect_timeout_secs", "between 1 and 60"),
            (format!("{url}statement_timeout_ms = 10\n"), "approvals.postgres.statement_timeout_ms", "between 100 and 60000"),
            (format!("{url}password_file = \"missing\"\n"), "approvals.postgres.password_file", "does not exist"),
            (format!("{url}password = \"hunter2\"\n"), "line 11", "unknown field `password`"),
        ] {
            let e = load(&keys).unwrap_err();
            assert_eq!(e.key, key, "{keys}: {e}");
            assert!(e.reason.contains(why), "{keys}: {e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }

    /// The database goes away: calls needing an approval fail with the
    /// store's error at once; when it is back, the same store works again
    /// (new connections, a new LISTEN) without a restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outage_fails_closed_and_recovers_without_a_restart() {
        let pg = TestPg::start();
        let url = pg.database();
        let (a, b) = (gateway(&url, 1, Duration::from_secs(30)).await, gateway(&url, 1, Duration::from_secs(30)).await);
        let (e, _) = request(&a, json!({"before": 1})).await;
        pg.stop_server();
        let err = a.store.request(conformance::request_entry(&a, "agent", json!({"during": 1}))).await.unwrap_err();
        assert!(matches!(&err, ApprovalError::Store(m) if m.starts_with("PostgreSQL: request: cannot connect")), "{err}");
        assert!(a.store.take_grant(&e.fingerprint, now_ms()).await.is_err());
        assert!(matches!(a.wait_for(&e.id, &e.fingerprint).await, Err(ApprovalError::Store(_))));
        pg.start_server();
        // Pooled connections died with the server; new ones are made.
        let again = a.store.get(&e.id).await.unwrap().unwrap();
        assert_eq!(again.state, State::Pending, "nothing was lost");
        // The notification connections come back too: a decision on b
        // wakes a waiter on a well before the re-check would.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = std::time::Instant::now();
        let waiter = a.wait_for(&e.id, &e.fingerprint);
        let decider = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            b.decide(&e.id, decision("alice", true)).await.unwrap();
        };
        let (waited, ()) = tokio::join!(waiter, decider);
        assert!(matches!(waited.unwrap(), Waited::Granted(_)));
        assert!(started.elapsed() < Duration::from_millis(1500), "woken after {:?}", started.elapsed());
    }
}
