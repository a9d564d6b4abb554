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

use super::row::{self, column_error, plain_columns, Columns, Dialect, OperatorAction};
use super::{
    parse_uuid, ActivityBucket, ActivityParams, AssignId, ClaimParams, Completion, EnqueueParams,
    Enqueued, InstancePause, ListParams, Result, Schedule, Store, StoreError, SummaryRow,
    Transition, Unreadable,
};
use crate::model::{Attempt, OutboxRow, State};
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
const DIALECT: Dialect = Dialect {
    now: NOW,
    due_now: "0",
    param: "?",
    id_text: "id",
    cols: COLS,
    millis: "",
};

#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Signalled on commits by any process (see `wake`).
    wake: std::sync::Arc<Wake>,
    /// Statements sent through `pool` (the idle-cost figure).
    statements: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl SqliteStore {
    async fn fetch_rows(&self, sql: &str, binds: Vec<Bind>) -> Result<Vec<OutboxRow>> {
        let mut q = sqlx::query(sql);
        for b in binds {
            q = match b {
                Bind::I(v) => q.bind(v),
                Bind::S(v) => q.bind(v),
            };
        }
        let rows = q.fetch_all(self.db()).await?;
        self.readable(&rows, None).await
    }

    /// Decodes each row on its own; unreadable ones are set aside (see
    /// [`super::QUARANTINE_NOTE`]) and the rest returned. `owner`: the claim
    /// that just leased these rows, whose unreadable ones were never sent.
    async fn readable(&self, rows: &[SqliteRow], owner: Option<&str>) -> Result<Vec<OutboxRow>> {
        let (good, bad) = super::split_rows(rows, readable_row);
        for u in &bad {
            tracing::warn!(row_id = %u.id, error = %u.error, "unreadable row set aside");
            sqlx::query(&DIALECT.quarantine_sql())
                .bind(&u.id)
                .bind(&u.error)
                .bind(owner)
                .execute(self.db())
                .await?;
        }
        Ok(good)
    }

    /// The claim with per-instance budgets ([`ClaimParams::budgets`]).
    /// SQLite has no LATERAL: a correlated `IN` list per budget row is the
    /// per-instance cursor (one ordered probe of the instance's partial
    /// index, at most the largest budget long), then each instance's rows are
    /// ranked and cut to its own budget, and the ranks interleave the
    /// instances. One statement, atomic under SQLite's write lock.
    async fn claim_budgeted(&self, p: &ClaimParams) -> Result<Vec<OutboxRow>> {
        let (budgets, max) = super::budgets_json(&p.budgets);
        let sql = format!(
            "UPDATE status_outbox SET state = 'uploading', attempts = status_outbox.attempts + 1,
                    lease_owner = ?1, lease_expires_at = {NOW} + ?2, claimed_at = {NOW},
                    updated_at = {NOW},
                    message_id = COALESCE(status_outbox.message_id,
                                          json_extract(?5, '$[' || (p.rn - 1) || ']'))
             FROM (
                SELECT id, row_number() OVER (ORDER BY rk, priority DESC, created_at) AS rn
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
                ORDER BY rk, priority DESC, created_at LIMIT ?4) AS p
             WHERE status_outbox.id = p.id
               AND status_outbox.state IN ('pending_upload', 'queued')
             RETURNING {COLS}"
        );
        let ids = serde_json::to_string(&p.fresh_ids).unwrap_or_else(|_| "[]".into());
        let raw = sqlx::query(&sql)
            .bind(&p.owner)
            .bind(p.lease.as_millis() as i64)
            .bind(budgets)
            .bind(p.limit)
            .bind(ids)
            .bind(max)
            .fetch_all(self.db())
            .await?;
        let mut rows = self.readable(&raw, Some(&p.owner)).await?;
        rows.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(a.created_at.cmp(&b.created_at))
        });
        Ok(rows)
    }

    async fn transition(&self, from: State, ts: &[Transition], done: &[Completion]) -> Result<u64> {
        if ts.is_empty() {
            return Ok(0);
        }
        let items = super::transitions_json(ts);
        let sql = format!(
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
             FROM json_each(?1) AS u
             WHERE status_outbox.id = u.value ->> 'id'
               AND status_outbox.state = ?2
               AND status_outbox.attempts = u.value ->> 'attempt'
             RETURNING status_outbox.id"
        );
        let mut tx = self.db().begin_with("BEGIN IMMEDIATE").await?;
        let applied: Vec<String> = sqlx::query_scalar(&sql)
            .bind(items.to_string())
            .bind(from.as_str())
            .fetch_all(&mut *tx)
            .await?;
        let applied: std::collections::HashSet<Uuid> =
            applied.iter().filter_map(|s| parse_uuid(s)).collect();
        // History records the attempts whose fence held; a stale worker's
        // late answer changed nothing and is not an attempt of this row.
        let done: Vec<&Completion> = done
            .iter()
            .filter(|c| applied.contains(&c.transition.id))
            .collect();
        if !done.is_empty() {
            let hist = super::attempts_json(&done);
            sqlx::query(
                "INSERT INTO status_attempts
                    (status_id, attempt, started_at, finished_at, outcome, http_status, latency_ms, error)
                 SELECT h.value ->> 'id', h.value ->> 'attempt', h.value ->> 'started',
                        (h.value ->> 'started') + (h.value ->> 'latency'), h.value ->> 'outcome',
                        h.value ->> 'http', h.value ->> 'latency', h.value ->> 'error'
                 FROM json_each(?1) AS h
                 WHERE EXISTS (SELECT 1 FROM status_outbox o WHERE o.id = h.value ->> 'id')",
            )
            .bind(hist.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(applied.len() as u64)
    }
}

enum Bind {
    I(i64),
    S(String),
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

fn readable_row(r: &SqliteRow) -> std::result::Result<OutboxRow, Unreadable> {
    // The id as stored, read as bytes so that even a mangled one can be named.
    let raw_id: Vec<u8> = r.try_get("raw_id").unwrap_or_default();
    let raw_id = String::from_utf8_lossy(&raw_id).into_owned();
    row::outbox_row(r).map_err(|error| Unreadable { id: raw_id, error })
}

impl Store for SqliteStore {
    async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("migrations/sqlite").run(self.db()).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(self.db()).await?;
        Ok(())
    }

    async fn enqueue(&self, p: EnqueueParams) -> Result<Enqueued> {
        let id = p.id.unwrap_or_else(Uuid::now_v7);
        let inserted = sqlx::query(
            "INSERT INTO status_outbox (id, instance, kind, payload, dedupe_key, priority, not_before)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (dedupe_key) DO NOTHING",
        )
        .bind(id.to_string())
        .bind(&p.instance)
        .bind(&p.kind)
        .bind(&p.payload)
        .bind(&p.dedupe_key)
        .bind(p.priority)
        .bind(p.not_before.map(|t| t.timestamp_millis()))
        .execute(self.db())
        .await?
        .rows_affected()
            == 1;
        if inserted {
            return Ok(Enqueued { id, inserted });
        }
        let existing: Option<String> =
            sqlx::query_scalar("SELECT id FROM status_outbox WHERE dedupe_key = ?1")
                .bind(&p.dedupe_key)
                .fetch_optional(self.db())
                .await?;
        match existing.as_deref().and_then(parse_uuid) {
            Some(id) => Ok(Enqueued {
                id,
                inserted: false,
            }),
            None => Err(StoreError::Invalid(
                "insert ignored but no row holds its dedupe_key".into(),
            )),
        }
    }

    async fn enqueue_many(&self, p: &[EnqueueParams]) -> Result<u64> {
        if p.is_empty() {
            return Ok(0);
        }
        Ok(sqlx::query(
            "INSERT INTO status_outbox (id, instance, kind, payload, dedupe_key, priority, not_before)
             SELECT e.value ->> 'id', e.value ->> 'instance', e.value ->> 'kind',
                    e.value ->> 'payload', e.value ->> 'dedupe_key', e.value ->> 'priority',
                    e.value ->> 'not_before'
             FROM json_each(?1) AS e WHERE true
             ON CONFLICT DO NOTHING",
        )
        .bind(super::enqueue_batch_json(p))
        .execute(self.db())
        .await?
        .rows_affected())
    }

    async fn queued(&self, limit: i64) -> Result<Vec<OutboxRow>> {
        let sql = format!(
            "SELECT {COLS} FROM status_outbox WHERE state = 'queued' ORDER BY created_at LIMIT ?1"
        );
        self.fetch_rows(&sql, vec![Bind::I(limit)]).await
    }

    async fn assign_message_ids(&self, ids: &[AssignId]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
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

    async fn mark_invalid(&self, id: Uuid, error: &str) -> Result<bool> {
        let sql = format!(
            "UPDATE status_outbox SET state = 'invalid', last_error = ?2, updated_at = {NOW}
             WHERE id = ?1 AND state = 'queued'"
        );
        Ok(sqlx::query(&sql)
            .bind(id.to_string())
            .bind(error)
            .execute(self.db())
            .await?
            .rows_affected()
            == 1)
    }

    async fn claim(&self, p: ClaimParams) -> Result<Vec<OutboxRow>> {
        if !p.budgets.is_empty() {
            return self.claim_budgeted(&p).await;
        }
        // One statement: SQLite's write lock makes the select-and-update
        // atomic, so two claimers never lease the same row. Each source is
        // an ordered scan of its own partial index.
        let sql = format!(
            "UPDATE status_outbox SET state = 'uploading', attempts = status_outbox.attempts + 1,
                    lease_owner = ?1, lease_expires_at = {NOW} + ?2, claimed_at = {NOW},
                    updated_at = {NOW},
                    message_id = COALESCE(status_outbox.message_id,
                                          json_extract(?5, '$[' || (p.rn - 1) || ']'))
             FROM (
                SELECT id, row_number() OVER (ORDER BY priority DESC, created_at) AS rn
                FROM (
                    SELECT * FROM (
                        SELECT id, priority, created_at FROM status_outbox
                        WHERE state = 'pending_upload'
                          AND next_attempt_at <= {NOW}
                          AND (not_before IS NULL OR not_before <= {NOW})
                          AND instance NOT IN (SELECT value FROM json_each(?3))
                        ORDER BY priority DESC, created_at LIMIT ?4)
                    UNION ALL
                    SELECT * FROM (
                        SELECT id, priority, created_at FROM status_outbox
                        WHERE json_array_length(?5) >= ?4 AND state = 'queued'
                          AND (not_before IS NULL OR not_before <= {NOW})
                          AND instance NOT IN (SELECT value FROM json_each(?3))
                        ORDER BY priority DESC, created_at LIMIT ?4))
                ORDER BY priority DESC, created_at LIMIT ?4) AS p
             WHERE status_outbox.id = p.id
               AND status_outbox.state IN ('pending_upload', 'queued')
             RETURNING {COLS}"
        );
        let skip = serde_json::to_string(&p.skip_instances).unwrap_or_else(|_| "[]".into());
        let ids = serde_json::to_string(&p.fresh_ids).unwrap_or_else(|_| "[]".into());
        let raw = sqlx::query(&sql)
            .bind(&p.owner)
            .bind(p.lease.as_millis() as i64)
            .bind(skip)
            .bind(p.limit)
            .bind(ids)
            .fetch_all(self.db())
            .await?;
        // Leased and committed: a row that cannot be read was never sent,
        // and becomes `invalid` under this lease; the others go on.
        let mut rows = self.readable(&raw, Some(&p.owner)).await?;
        // RETURNING order is unspecified; keep FIFO within a batch.
        rows.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(a.created_at.cmp(&b.created_at))
        });
        Ok(rows)
    }

    async fn complete(&self, done: &[Completion]) -> Result<u64> {
        let ts: Vec<Transition> = done.iter().map(|c| c.transition.clone()).collect();
        self.transition(State::Uploading, &ts, done).await
    }

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

    async fn due_in_doubt(&self, limit: i64) -> Result<Vec<OutboxRow>> {
        let sql = format!(
            "SELECT {COLS} FROM status_outbox
             WHERE state = 'in_doubt' AND parked_at IS NULL AND next_attempt_at <= {NOW}
             ORDER BY next_attempt_at LIMIT ?1"
        );
        self.fetch_rows(&sql, vec![Bind::I(limit)]).await
    }

    async fn resolve_in_doubt(&self, ts: &[Transition]) -> Result<u64> {
        self.transition(State::InDoubt, ts, &[]).await
    }

    async fn get(&self, id: Uuid) -> Result<Option<OutboxRow>> {
        let sql = format!("SELECT {COLS} FROM status_outbox WHERE id = ?1");
        Ok(self
            .fetch_rows(&sql, vec![Bind::S(id.to_string())])
            .await?
            .pop())
    }

    async fn find(&self, key: &str) -> Result<Option<OutboxRow>> {
        let sql = format!(
            "SELECT {COLS} FROM status_outbox WHERE id = ?1 OR message_id = ?2 OR dedupe_key = ?2 LIMIT 1"
        );
        let id = parse_uuid(key).map(|u| u.to_string()).unwrap_or_default();
        Ok(self
            .fetch_rows(&sql, vec![Bind::S(id), Bind::S(key.trim().to_string())])
            .await?
            .pop())
    }

    async fn attempts(&self, id: Uuid) -> Result<Vec<Attempt>> {
        let rows = sqlx::query(
            "SELECT attempt, started_at, finished_at, outcome, http_status, latency_ms, error
             FROM status_attempts WHERE status_id = ?1 ORDER BY started_at, attempt",
        )
        .bind(id.to_string())
        .fetch_all(self.db())
        .await?;
        row::map_all(&rows, |r| row::attempt(id, r))
    }

    async fn list(&self, p: ListParams) -> Result<Vec<OutboxRow>> {
        let sql = format!(
            "SELECT {COLS} FROM status_outbox
             WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR instance = ?2)
               AND (?3 IS NULL OR created_at >= ?3)
             ORDER BY created_at DESC LIMIT ?4"
        );
        let rows = sqlx::query(&sql)
            .bind(p.state.map(|s| s.as_str()))
            .bind(p.instance)
            .bind(p.since.map(|t| t.timestamp_millis()))
            .bind(p.limit)
            .fetch_all(self.db())
            .await?;
        self.readable(&rows, None).await
    }

    async fn summary(&self) -> Result<Vec<SummaryRow>> {
        let rows = sqlx::query(
            "SELECT instance, state, count, oldest_age_secs, scheduled FROM status_outbox_summary
             ORDER BY instance, state",
        )
        .fetch_all(self.db())
        .await?;
        row::map_all(&rows, row::summary_row)
    }

    async fn operator(&self, id: Uuid, action: OperatorAction) -> Result<OutboxRow> {
        let r = sqlx::query(&action.sql(&DIALECT))
            .bind(id.to_string())
            .fetch_optional(self.db())
            .await?;
        let updated = match r {
            Some(r) => Some(self.readable(std::slice::from_ref(&r), None).await?),
            None => None,
        };
        action.outcome(id, updated, self.get(id)).await
    }

    async fn purge_terminal(&self, older_than: Duration, limit: i64) -> Result<u64> {
        Ok(sqlx::query(&DIALECT.purge_sql())
            .bind(older_than.as_millis() as i64)
            .bind(limit)
            .execute(self.db())
            .await?
            .rows_affected())
    }

    async fn add_schedule(&self, s: &Schedule) -> Result<()> {
        sqlx::query(
            "INSERT INTO status_schedules (id, name, cron, timezone, instance, kind, payload, enabled)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(s.id.to_string())
        .bind(&s.name)
        .bind(&s.cron)
        .bind(&s.timezone)
        .bind(&s.instance)
        .bind(&s.kind)
        .bind(&s.payload)
        .bind(s.enabled)
        .execute(self.db())
        .await?;
        Ok(())
    }

    async fn schedules(&self) -> Result<Vec<Schedule>> {
        let rows = sqlx::query(
            "SELECT id, name, cron, timezone, instance, kind, payload, enabled
             FROM status_schedules ORDER BY name",
        )
        .fetch_all(self.db())
        .await?;
        row::map_all(&rows, row::schedule)
    }

    async fn remove_schedule(&self, name_or_id: &str) -> Result<bool> {
        Ok(
            sqlx::query("DELETE FROM status_schedules WHERE name = ?1 OR id = ?1")
                .bind(name_or_id)
                .execute(self.db())
                .await?
                .rows_affected()
                > 0,
        )
    }

    async fn now(&self) -> Result<DateTime<Utc>> {
        let m: i64 = sqlx::query_scalar(&format!("SELECT {NOW}"))
            .fetch_one(self.db())
            .await?;
        Ok(ms(Some(m)).unwrap_or_default())
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

    async fn activity(&self, p: ActivityParams) -> Result<Vec<ActivityBucket>> {
        let (since, bucket) = p.millis()?;
        // Times are integer milliseconds: integer division floors them.
        let sql = format!(
            "SELECT (finished_at / ?2) * ?2 AS start,
                    SUM(outcome = 'posted') AS posted,
                    SUM(outcome <> 'posted') AS errors
             FROM status_attempts
             WHERE finished_at >= {NOW} - ?1
             GROUP BY 1 ORDER BY 1"
        );
        let rows = sqlx::query(&sql)
            .bind(since)
            .bind(bucket)
            .fetch_all(self.db())
            .await?;
        row::map_all(&rows, row::activity_bucket)
    }

    async fn set_instance_pause(&self, instance: &str, reason: &str) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO status_instance_pauses (instance, reason) VALUES (?1, ?2)
             ON CONFLICT (instance) DO UPDATE SET reason = excluded.reason, updated_at = {NOW}"
        ))
        .bind(instance)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn clear_instance_pause(&self, instance: &str) -> Result<()> {
        sqlx::query("DELETE FROM status_instance_pauses WHERE instance = ?1")
            .bind(instance)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn instance_pauses(&self) -> Result<Vec<InstancePause>> {
        let rows = sqlx::query(
            "SELECT instance, reason, since FROM status_instance_pauses ORDER BY instance",
        )
        .fetch_all(&self.pool)
        .await?;
        row::map_all(&rows, row::instance_pause)
    }
}
