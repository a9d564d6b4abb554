//! SQLite backend: one file, WAL mode, `busy_timeout`, multi-statement
//! writes in `BEGIN IMMEDIATE` so two writers never deadlock on a lock
//! upgrade. Times are integer milliseconds of the database clock.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};
use uuid::Uuid;

mod open;
mod wake;

use super::row::{self, column_error, plain_columns, Columns};
use super::sql::{run_methods, Arg, Dialect, Sql, Stmt};
use super::{parse_uuid, AssignId, ClaimParams, Result, Unreadable};
use crate::model::OutboxRow;
use wake::Wake;

/// The database clock in milliseconds (works on every SQLite an upstream app
/// may use, unlike `unixepoch('subsec')`).
const NOW: &str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";

/// `payload` is read as bytes: rows written by other programs may hold text
/// that is not UTF-8, and such a row must still be read to be marked invalid.
const COLS: &str = "id, CAST(id AS BLOB) AS raw_id, instance, kind, CAST(payload AS BLOB) AS payload, dedupe_key, message_id, state, priority, \
    not_before, attempts, next_attempt_at, lease_owner, lease_expires_at, claimed_at, reconcile_attempts, \
    parked_at, provider_id, last_error, last_http_status, created_at, updated_at, posted_at";

/// How the statements both backends share are spelled here.
impl Dialect for SqliteStore {
    const NOW: &'static str = NOW;
    const DUE_NOW: &'static str = "0";
    const ID_TEXT: &'static str = "id";
    const COLS: &'static str = COLS;
    const MILLIS: &'static str = "";
    /// Strictly later than the one read, even within the same millisecond
    /// (the registry's `update_instance` fences on it).
    const TOUCH: &'static str =
        "MAX(CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), updated_at + 1)";
    const FRESH: &'static str = "created_at = updated_at";

    fn typed(p: &str, _ty: &str) -> String {
        p.to_string()
    }

    fn epoch_ms(col: &str) -> String {
        col.to_string()
    }

    fn in_list(col: &str, p: &str, _ty: &str) -> String {
        format!("{col} IN (SELECT value FROM json_each({p}))")
    }

    fn list_table(p: &str, _ty: &str, alias: &str) -> String {
        format!("json_each({p}) AS {alias}")
    }
}

#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Signalled on commits by any process (see `wake`).
    wake: std::sync::Arc<Wake>,
    /// Statements sent through `pool` (the idle-cost figure).
    statements: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// A claim: the rows `picked` selects (`id` and `rn`, their rank: the
/// fresh id `$5[rn - 1]` goes to a `queued` one) leased to `?1` for `?2`
/// milliseconds, the attempt counted.
fn claim_sql(picked: &str) -> String {
    format!(
        "UPDATE status_outbox SET state = 'uploading', attempts = status_outbox.attempts + 1,
                lease_owner = ?1, lease_expires_at = {NOW} + ?2, claimed_at = {NOW},
                updated_at = {NOW},
                message_id = COALESCE(status_outbox.message_id,
                                      json_extract(?5, '$[' || (p.rn - 1) || ']'))
         FROM ({picked}) AS p
         WHERE status_outbox.id = p.id
           AND status_outbox.state IN ('pending_upload', 'queued')
         RETURNING {COLS}"
    )
}

/// The due rows of the instances `which` selects (on `?3`), in priority
/// order, at most `?4`: an ordered scan of each source's partial index.
fn ordered_sql(which: &str) -> String {
    format!(
        "SELECT id, row_number() OVER (ORDER BY priority DESC, created_at) AS rn
            FROM (
                SELECT * FROM (
                    SELECT id, priority, created_at FROM status_outbox
                    WHERE state = 'pending_upload'
                      AND next_attempt_at <= {NOW}
                      AND (not_before IS NULL OR not_before <= {NOW})
                      AND {which}
                    ORDER BY priority DESC, created_at LIMIT ?4)
                UNION ALL
                SELECT * FROM (
                    SELECT id, priority, created_at FROM status_outbox
                    WHERE json_array_length(?5) >= ?4 AND state = 'queued'
                      AND (not_before IS NULL OR not_before <= {NOW})
                      AND {which}
                    ORDER BY priority DESC, created_at LIMIT ?4))
            ORDER BY priority DESC, created_at LIMIT ?4"
    )
}

fn ms(v: Option<i64>) -> Option<DateTime<Utc>> {
    v.and_then(|m| Utc.timestamp_millis_opt(m).single())
}

fn payload_text(raw: Vec<u8>) -> String {
    String::from_utf8(raw).unwrap_or_else(|e| {
        format!(
            "{}{}",
            crate::model::NOT_UTF8_MARKER,
            String::from_utf8_lossy(e.as_bytes())
        )
    })
}

impl Columns for SqliteRow {
    plain_columns!();

    fn uuid(&self, c: &str) -> std::result::Result<Uuid, String> {
        let text: String = self.text(c)?;
        Uuid::parse_str(&text).map_err(|e| column_error(c, e))
    }

    /// Milliseconds since the epoch.
    fn time(&self, c: &str) -> std::result::Result<Option<DateTime<Utc>>, String> {
        match self.opt_big(c)? {
            None => Ok(None),
            Some(m) => ms(Some(m))
                .map(Some)
                .ok_or_else(|| column_error(c, format!("{m} is out of range"))),
        }
    }

    /// Read as bytes (see [`COLS`]).
    fn payload(&self) -> std::result::Result<String, String> {
        row::col(self, "payload").map(payload_text)
    }
}

impl Sql for SqliteStore {
    type Row = SqliteRow;
    type Tx = sqlx::Transaction<'static, sqlx::Sqlite>;

    run_methods!();

    async fn begin(&self, counted: bool) -> Result<Self::Tx> {
        let pool = if counted { self.db() } else { &self.pool };
        Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    fn readable_row(r: &SqliteRow) -> std::result::Result<OutboxRow, Unreadable> {
        // The id as stored, read as bytes so that even a mangled one can be named.
        let raw_id: Vec<u8> = r.try_get("raw_id").unwrap_or_default();
        let raw_id = String::from_utf8_lossy(&raw_id).into_owned();
        row::outbox_row(r).map_err(|error| Unreadable { id: raw_id, error })
    }

    async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("migrations/sqlite").run(self.db()).await?;
        Ok(())
    }

    const ENQUEUE_MANY: &'static str =
        "INSERT INTO status_outbox (id, instance, kind, payload, dedupe_key, priority, not_before)
         SELECT e.value ->> 'id', e.value ->> 'instance', e.value ->> 'kind',
                e.value ->> 'payload', e.value ->> 'dedupe_key', e.value ->> 'priority',
                e.value ->> 'not_before'
         FROM json_each($1) AS e WHERE true
         ON CONFLICT DO NOTHING";

    async fn assign_message_ids(&self, ids: &[AssignId]) -> Result<u64> {
        let items: Vec<serde_json::Value> = ids
            .iter()
            .map(|a| serde_json::json!([a.id.to_string(), a.message_id]))
            .collect();
        let sql = format!(
            "UPDATE status_outbox SET state = 'pending_upload', message_id = u.value ->> 1,
                    next_attempt_at = 0, updated_at = {NOW}
             FROM json_each(?1) AS u
             WHERE status_outbox.id = u.value ->> 0 AND status_outbox.state = 'queued'"
        );
        Ok(sqlx::query(&sql)
            .bind(serde_json::Value::Array(items).to_string())
            .execute(self.db())
            .await?
            .rows_affected())
    }

    /// The claim with per-instance budgets ([`ClaimParams::budgets`]).
    /// SQLite has no LATERAL: a correlated `IN` list per budget row is the
    /// per-instance cursor (one ordered probe of the instance's partial
    /// index, at most the largest budget long), then each instance's rows are
    /// ranked and cut to its own budget, and the ranks interleave the
    /// instances. One statement, atomic under SQLite's write lock.
    async fn claim_budgeted(&self, p: &ClaimParams) -> Result<Vec<OutboxRow>> {
        let (budgets, max) = super::budgets_json(&p.budgets);
        let sql = claim_sql(&format!(
            "SELECT id, row_number() OVER (ORDER BY rk, priority DESC, created_at) AS rn
                FROM (
                    SELECT id, priority, created_at, n, row_number() OVER (
                        PARTITION BY instance ORDER BY priority DESC, created_at) AS rk
                    FROM (
                        SELECT o.id, o.instance, o.priority, o.created_at, b.value ->> 'n' AS n
                        FROM json_each(?3) AS b JOIN status_outbox o ON o.id IN (
                            SELECT id FROM status_outbox
                            WHERE state = 'pending_upload' AND instance = b.value ->> 'i'
                              AND next_attempt_at <= {NOW}
                              AND (not_before IS NULL OR not_before <= {NOW})
                            ORDER BY priority DESC, created_at LIMIT ?6)
                        UNION ALL
                        SELECT o.id, o.instance, o.priority, o.created_at, b.value ->> 'n' AS n
                        FROM json_each(?3) AS b JOIN status_outbox o ON o.id IN (
                            SELECT id FROM status_outbox
                            WHERE json_array_length(?5) >= ?4 AND state = 'queued'
                              AND instance = b.value ->> 'i'
                              AND (not_before IS NULL OR not_before <= {NOW})
                            ORDER BY priority DESC, created_at LIMIT ?6)))
                WHERE rk <= n
                ORDER BY rk, priority DESC, created_at LIMIT ?4"
        ));
        self.claimed(sql, p, Arg::Text(Some(budgets)), Some(max))
            .await
    }

    async fn claim_one(&self, p: &ClaimParams, instance: &str) -> Result<Vec<OutboxRow>> {
        let sql = claim_sql(&ordered_sql("instance = ?3"));
        self.claimed(sql, p, instance.into(), None).await
    }

    async fn claim_fifo(&self, p: &ClaimParams) -> Result<Vec<OutboxRow>> {
        // One statement: SQLite's write lock makes the select-and-update
        // atomic, so two claimers never lease the same row. Each source is
        // an ordered scan of its own partial index.
        let sql = claim_sql(&ordered_sql(
            "instance NOT IN (SELECT value FROM json_each(?3))",
        ));
        self.claimed(sql, p, p.skip_instances.as_slice().into(), None)
            .await
    }

    fn transition_sql() -> String {
        format!(
            "UPDATE status_outbox SET
                state = u.value ->> 'to',
                provider_id = COALESCE(u.value ->> 'provider_id', status_outbox.provider_id),
                last_error = u.value ->> 'error',
                last_http_status = u.value ->> 'http',
                next_attempt_at = {NOW} + (u.value ->> 'delay'),
                attempts = status_outbox.attempts - (u.value ->> 'refund'),
                reconcile_attempts = CASE WHEN u.value ->> 'to' = 'in_doubt'
                    THEN status_outbox.reconcile_attempts + (u.value ->> 'bump') ELSE 0 END,
                parked_at = CASE WHEN u.value ->> 'park' = 1 THEN {NOW} END,
                posted_at = CASE WHEN u.value ->> 'to' = 'posted' THEN {NOW}
                    ELSE status_outbox.posted_at END,
                lease_owner = NULL,
                lease_expires_at = NULL,
                updated_at = {NOW}
             FROM json_each($1) AS u
             WHERE status_outbox.id = u.value ->> 'id'
               AND status_outbox.state = $2
               AND status_outbox.attempts = u.value ->> 'attempt'
             RETURNING status_outbox.id AS id"
        )
    }

    const HISTORY: &'static str = "INSERT INTO status_attempts
            (status_id, attempt, started_at, finished_at, outcome, http_status, latency_ms, error)
         SELECT h.value ->> 'id', h.value ->> 'attempt', h.value ->> 'started',
                (h.value ->> 'started') + (h.value ->> 'latency'), h.value ->> 'outcome',
                h.value ->> 'http', h.value ->> 'latency', h.value ->> 'error'
         FROM json_each($1) AS h
         WHERE EXISTS (SELECT 1 FROM status_outbox o WHERE o.id = h.value ->> 'id')";

    async fn rescue_expired(&self, limit: i64, settle: Duration) -> Result<Vec<Uuid>> {
        let sql = format!(
            "UPDATE status_outbox SET state = 'in_doubt',
                    last_error = 'lease expired (the daemon stopped mid-call)',
                    next_attempt_at = {NOW} + ?2, reconcile_attempts = 0,
                    lease_owner = NULL, lease_expires_at = NULL, updated_at = {NOW}
             WHERE id IN (SELECT id FROM status_outbox
                          WHERE state = 'uploading' AND lease_expires_at < {NOW}
                          ORDER BY lease_expires_at LIMIT ?1)
               AND state = 'uploading' AND lease_expires_at < {NOW}
             RETURNING id"
        );
        let ids: Vec<String> = sqlx::query_scalar(&sql)
            .bind(limit)
            .bind(settle.as_millis() as i64)
            .fetch_all(self.db())
            .await?;
        Ok(ids.iter().filter_map(|s| parse_uuid(s)).collect())
    }

    async fn next_due(&self, skip: &[String], with_queued: bool) -> Result<Option<Duration>> {
        // Called after a claim found nothing: a row claimable for more than
        // a second (since it was due and last changed) is then one the
        // claim cannot take, and waiting "0 ms"
        // for it would spin the dispatcher (as a TEXT `not_before` did before
        // the tables were STRICT). Such rows are left out; rows due within
        // the last second (due between the claim and this query) count.
        let sql = format!(
            "SELECT MIN(due) - {NOW} FROM (
                SELECT MAX(next_attempt_at, COALESCE(not_before, 0)) AS due, updated_at
                FROM status_outbox
                WHERE state = 'pending_upload'
                  AND instance NOT IN (SELECT value FROM json_each(?1))
                UNION ALL
                SELECT COALESCE(not_before, 0), updated_at FROM status_outbox
                WHERE ?2 AND state = 'queued'
                  AND instance NOT IN (SELECT value FROM json_each(?1)))
             WHERE typeof(due) = 'integer' AND MAX(due, updated_at) > {NOW} - 1000"
        );
        let skip = serde_json::to_string(skip).unwrap_or_else(|_| "[]".into());
        let ms: Option<i64> = sqlx::query_scalar(&sql)
            .bind(skip)
            .bind(with_queued)
            .fetch_one(self.db())
            .await?;
        Ok(ms.map(|m| Duration::from_millis(m.max(0) as u64)))
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.wake.subscribe()
    }

    fn notifies(&self) -> bool {
        self.wake.watched()
    }

    fn subscribe_instances(&self) -> tokio::sync::watch::Receiver<u64> {
        // Any commit: the registry rate-limits its reloads.
        self.wake.subscribe()
    }

    const ACCEPT_MANY: &'static str =
        "INSERT INTO status_webhook_inbox (instance, request_id, body)
         SELECT e.value ->> 'instance', e.value ->> 'request_id', e.value ->> 'body'
         FROM json_each($1) AS e ORDER BY e.key";

    const UPSERT_VIEWS: &'static str = "INSERT INTO status_views
            (message_id, viewer, instance, level, first_at, last_at, viewed_at)
         SELECT v.value ->> 'm', v.value ->> 'v', v.value ->> 'i', v.value ->> 'l',
                v.value ->> 'first', v.value ->> 'last', v.value ->> 'viewed'
         FROM json_each($1) AS v WHERE true
         ON CONFLICT (message_id, viewer) DO UPDATE SET
            level = max(status_views.level, excluded.level),
            first_at = min(status_views.first_at, excluded.first_at),
            last_at = max(status_views.last_at, excluded.last_at),
            viewed_at = CASE
                WHEN excluded.viewed_at IS NULL THEN status_views.viewed_at
                WHEN status_views.viewed_at IS NULL THEN excluded.viewed_at
                ELSE min(status_views.viewed_at, excluded.viewed_at) END";

    const INSERT_CONFIRMATIONS: &'static str =
        "INSERT INTO status_confirmations (message_id, instance, event)
         SELECT c.value ->> 'm', c.value ->> 'i', c.value ->> 'e'
         FROM json_each($1) AS c WHERE true
         ON CONFLICT (message_id) DO NOTHING";

    fn settled_history_sql() -> String {
        format!(
            "INSERT INTO status_attempts
                (status_id, attempt, started_at, finished_at, outcome, http_status, latency_ms, error)
             SELECT h.value ->> 'id', h.value ->> 'attempt', {NOW}, {NOW}, 'posted', NULL, 0, $2
             FROM json_each($1) AS h"
        )
    }
}

/// `s` with its arguments bound as SQLite stores them.
fn bound(s: &Stmt) -> sqlx::query::Query<'_, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'_>> {
    fn json<T: serde::Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
    }
    s.args.iter().fold(sqlx::query(&s.sql), |q, a| match a {
        Arg::Text(v) => q.bind(v.as_deref()),
        Arg::Int(v) => q.bind(*v),
        Arg::Int32(v) => q.bind(*v),
        Arg::Bool(v) => q.bind(*v),
        Arg::Id(v) => q.bind(v.map(|u| u.to_string())),
        Arg::Time(v) => q.bind(v.map(|t| t.timestamp_millis())),
        Arg::Texts(v) => q.bind(json(v)),
        Arg::Ids(v) => q.bind(json(&v.iter().map(Uuid::to_string).collect::<Vec<_>>())),
        Arg::Ints(v) => q.bind(json(v)),
    })
}
