//! PostgreSQL backend: claims with `FOR UPDATE SKIP LOCKED` so replicas
//! never wait on each other's rows, batched outcomes through
//! `jsonb_to_recordset`, and wake-ups by `LISTEN status_outbox`.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};
use tokio::sync::watch;
use uuid::Uuid;

mod listen;

use super::row::{self, plain_columns, Columns, Dialect, OperatorAction};
use super::{
    parse_uuid, ActivityBucket, ActivityParams, AssignId, ClaimParams, Completion, EnqueueParams,
    Enqueued, InstancePause, ListParams, Result, Schedule, Store, StoreError, SummaryRow,
    Transition, Unreadable,
};
use crate::model::{Attempt, OutboxRow, State};

const COLS: &str = "id, instance, kind, payload::text AS payload, dedupe_key, message_id, state, \
    priority, not_before, attempts, next_attempt_at, lease_owner, lease_expires_at, \
    claimed_at, reconcile_attempts, parked_at, provider_id, last_error, last_http_status, created_at, \
    updated_at, posted_at";

/// How the statements both backends share are spelled here.
const DIALECT: Dialect = Dialect {
    now: "now()",
    due_now: "now()",
    param: "$",
    id_text: "id::text",
    cols: COLS,
    millis: " * interval '1 millisecond'",
};

/// How long a released connection may take to answer a ping.
const RELEASE_PING: Duration = Duration::from_secs(3);

#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    wake: Arc<watch::Sender<u64>>,
    /// Bumped on `NOTIFY status_instances` (and after a reconnect).
    instances_wake: Arc<watch::Sender<u64>>,
    listener_started: Arc<Mutex<bool>>,
}

impl PgStore {
    pub async fn connect(url: &str, max_connections: u32) -> Result<PgStore> {
        let opts = PgConnectOptions::from_str(url)?.application_name("statusd");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(15))
            // sqlx pings every released connection, without a time limit: a
            // connection whose peer went silent (a call cut short by
            // `Timed`, a black-holed network) would hold its pool slot
            // forever. Ping within a bound here and drop it hard if silent.
            .after_release(|conn, _| {
                Box::pin(async move {
                    use sqlx::Connection;
                    match tokio::time::timeout(RELEASE_PING, conn.ping()).await {
                        Ok(Ok(())) => Ok(true),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(sqlx::Error::PoolTimedOut),
                    }
                })
            })
            .connect_with(opts)
            .await?;
        Ok(PgStore {
            pool,
            wake: Arc::new(watch::Sender::new(0)),
            instances_wake: Arc::new(watch::Sender::new(0)),
            listener_started: Arc::new(Mutex::new(false)),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Changes when `status_instances` may have changed (see
    /// `store::instances`).
    pub(super) fn subscribe_instances(&self) -> watch::Receiver<u64> {
        self.start_listener();
        self.instances_wake.subscribe()
    }

    async fn fetch_rows(
        &self,
        q: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<OutboxRow>> {
        let rows = q.fetch_all(&self.pool).await?;
        self.readable(&rows, None).await
    }

    /// Decodes each row on its own; unreadable ones are set aside (see
    /// [`super::QUARANTINE_NOTE`]) and the rest returned.
    async fn readable(&self, rows: &[PgRow], owner: Option<&str>) -> Result<Vec<OutboxRow>> {
        let (good, bad) = super::split_rows(rows, readable_row);
        for u in &bad {
            tracing::warn!(row_id = %u.id, error = %u.error, "unreadable row set aside");
            sqlx::query(&DIALECT.quarantine_sql())
                .bind(&u.id)
                .bind(&u.error)
                .bind(owner)
                .execute(&self.pool)
                .await?;
        }
        Ok(good)
    }

    /// The claim with per-instance budgets ([`ClaimParams::budgets`]): a
    /// `LATERAL` probe of each budgeted instance's partial index, at most
    /// its budget long, ranked and interleaved round-robin. No row locks
    /// while selecting: an instance is served by one replica at a time (its
    /// instance lease), and should two claims meet on a row during a
    /// hand-over, the UPDATE re-checks the row's state after the other's
    /// commit, so a row is leased once.
    async fn claim_budgeted(&self, p: &ClaimParams) -> Result<Vec<OutboxRow>> {
        let (budgets, _) = super::budgets_json(&p.budgets);
        let sql = format!(
            "WITH b AS (SELECT i, n FROM jsonb_to_recordset($3::jsonb) AS b(i text, n int)),
             pending AS (
                SELECT d.*, b.n FROM b CROSS JOIN LATERAL (
                    SELECT id, instance, priority, created_at FROM status_outbox
                    WHERE state = 'pending_upload' AND instance = b.i
                      AND next_attempt_at <= now()
                      AND (not_before IS NULL OR not_before <= now())
                    ORDER BY priority DESC, created_at LIMIT b.n) d),
             fresh AS (
                SELECT d.*, b.n FROM b CROSS JOIN LATERAL (
                    SELECT id, instance, priority, created_at FROM status_outbox
                    WHERE cardinality($5::text[]) >= $4 AND state = 'queued' AND instance = b.i
                      AND (not_before IS NULL OR not_before <= now())
                    ORDER BY priority DESC, created_at LIMIT b.n) d),
             ranked AS (
                SELECT id, priority, created_at, n, row_number() OVER (
                    PARTITION BY instance ORDER BY priority DESC, created_at) AS rk
                FROM (SELECT * FROM pending UNION ALL SELECT * FROM fresh) d),
             picked AS (
                SELECT id, row_number() OVER (ORDER BY rk, priority DESC, created_at) AS rn
                FROM ranked WHERE rk <= n
                ORDER BY rk, priority DESC, created_at LIMIT $4)
             UPDATE status_outbox o SET state = 'uploading', attempts = o.attempts + 1,
                    lease_owner = $1, lease_expires_at = now() + $2 * interval '1 millisecond',
                    claimed_at = now(),
                    updated_at = now(),
                    message_id = COALESCE(o.message_id, ($5::text[])[picked.rn])
             FROM picked WHERE o.id = picked.id AND o.state IN ('pending_upload', 'queued')
             RETURNING {}",
            returning_cols()
        );
        let raw = sqlx::query(&sql)
            .bind(&p.owner)
            .bind(p.lease.as_millis() as i64)
            .bind(budgets)
            .bind(p.limit)
            .bind(&p.fresh_ids)
            .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        let applied: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE status_outbox o SET
                state = u.to,
                provider_id = COALESCE(u.provider_id, o.provider_id),
                last_error = u.error,
                last_http_status = u.http,
                next_attempt_at = now() + u.delay * interval '1 millisecond',
                attempts = o.attempts - u.refund,
                reconcile_attempts = CASE WHEN u.to = 'in_doubt'
                    THEN o.reconcile_attempts + u.bump ELSE 0 END,
                parked_at = CASE WHEN u.park = 1 THEN now() END,
                posted_at = CASE WHEN u.to = 'posted' THEN now() ELSE o.posted_at END,
                lease_owner = NULL,
                lease_expires_at = NULL,
                updated_at = now()
             FROM jsonb_to_recordset($1::jsonb) AS u(id uuid, attempt int, \"to\" text,
                  provider_id text, error text, http int, delay bigint, bump int, park int,
                  refund int)
             WHERE o.id = u.id AND o.state = $2 AND o.attempts = u.attempt
             RETURNING o.id",
        )
        .bind(items)
        .bind(from.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let applied: std::collections::HashSet<Uuid> = applied.into_iter().collect();
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
                 SELECT h.id, h.attempt, to_timestamp(h.started / 1000.0),
                        to_timestamp((h.started + h.latency) / 1000.0),
                        h.outcome, h.http, h.latency, h.error
                 FROM jsonb_to_recordset($1::jsonb) AS h(id uuid, attempt int, started bigint,
                      latency bigint, outcome text, http int, error text)
                 WHERE EXISTS (SELECT 1 FROM status_outbox o WHERE o.id = h.id)",
            )
            .bind(hist)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(applied.len() as u64)
    }
}

impl Columns for PgRow {
    plain_columns!();

    fn uuid(&self, c: &str) -> std::result::Result<Uuid, String> {
        row::col(self, c)
    }

    fn time(&self, c: &str) -> std::result::Result<Option<DateTime<Utc>>, String> {
        row::col(self, c)
    }

    fn payload(&self) -> std::result::Result<String, String> {
        self.text("payload")
    }
}

/// `COLS` qualified by the claim's alias `o`.
fn returning_cols() -> String {
    COLS.split(", ")
        .map(|c| {
            if c.contains(' ') {
                c.replacen("payload", "o.payload", 1)
            } else {
                format!("o.{c}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One row, or why it cannot be read. A decoder that panics (chrono on a
/// time past its range) is an unreadable row too, never a dead worker.
fn readable_row(r: &PgRow) -> std::result::Result<OutboxRow, Unreadable> {
    let id = r
        .try_get::<Uuid, _>("id")
        .map(|u| u.to_string())
        .unwrap_or_default();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| row::outbox_row(r))) {
        Ok(Ok(row)) => Ok(row),
        Ok(Err(error)) => Err(Unreadable { id, error }),
        Err(_) => Err(Unreadable {
            id,
            error: format!("row {}: a value is out of range", super::QUARANTINE_NOTE),
        }),
    }
}

impl Store for PgStore {
    async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn enqueue(&self, p: EnqueueParams) -> Result<Enqueued> {
        let id = p.id.unwrap_or_else(Uuid::now_v7);
        // The payload goes in as text and is cast, so malformed JSON is a
        // clear insert error naming the column, as for upstream apps.
        let inserted: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO status_outbox (id, instance, kind, payload, dedupe_key, priority, not_before)
             VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7)
             ON CONFLICT (dedupe_key) DO NOTHING
             RETURNING id",
        )
        .bind(id)
        .bind(&p.instance)
        .bind(&p.kind)
        .bind(&p.payload)
        .bind(&p.dedupe_key)
        .bind(p.priority)
        .bind(p.not_before)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(id) = inserted {
            return Ok(Enqueued { id, inserted: true });
        }
        let existing: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM status_outbox WHERE dedupe_key = $1")
                .bind(&p.dedupe_key)
                .fetch_optional(&self.pool)
                .await?;
        existing
            .map(|id| Enqueued {
                id,
                inserted: false,
            })
            .ok_or_else(|| {
                StoreError::Invalid("insert ignored but no row holds its dedupe_key".into())
            })
    }

    async fn enqueue_many(&self, p: &[EnqueueParams]) -> Result<u64> {
        if p.is_empty() {
            return Ok(0);
        }
        Ok(sqlx::query(
            "INSERT INTO status_outbox (id, instance, kind, payload, dedupe_key, priority, not_before)
             SELECT e.id, e.instance, e.kind, e.payload::jsonb, e.dedupe_key, e.priority,
                    to_timestamp(e.not_before / 1000.0)
             FROM jsonb_to_recordset($1::jsonb) AS e(id uuid, instance text, kind text,
                  payload text, dedupe_key text, priority int, not_before bigint)
             ON CONFLICT DO NOTHING",
        )
        .bind(super::enqueue_batch_json(p))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn queued(&self, limit: i64) -> Result<Vec<OutboxRow>> {
        let sql = format!(
            "SELECT {COLS} FROM status_outbox WHERE state = 'queued' ORDER BY created_at LIMIT $1"
        );
        self.fetch_rows(sqlx::query(&sql).bind(limit)).await
    }

    async fn assign_message_ids(&self, ids: &[AssignId]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let row_ids: Vec<Uuid> = ids.iter().map(|a| a.id).collect();
        let mids: Vec<&str> = ids.iter().map(|a| a.message_id.as_str()).collect();
        Ok(sqlx::query(
            "UPDATE status_outbox o SET state = 'pending_upload', message_id = u.mid,
                    next_attempt_at = now(), updated_at = now()
             FROM unnest($1::uuid[], $2::text[]) AS u(id, mid)
             WHERE o.id = u.id AND o.state = 'queued'",
        )
        .bind(&row_ids)
        .bind(&mids)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn mark_invalid(&self, id: Uuid, error: &str) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE status_outbox SET state = 'invalid', last_error = $2, updated_at = now()
             WHERE id = $1 AND state = 'queued'",
        )
        .bind(id)
        .bind(error)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    async fn claim(&self, p: ClaimParams) -> Result<Vec<OutboxRow>> {
        if !p.budgets.is_empty() {
            return self.claim_budgeted(&p).await;
        }
        // Each source is an ordered scan of its own partial index; rows
        // locked by another replica are skipped, never waited for.
        let sql = format!(
            "WITH pending AS (
                SELECT id, priority, created_at FROM status_outbox
                WHERE state = 'pending_upload'
                  AND next_attempt_at <= now()
                  AND (not_before IS NULL OR not_before <= now())
                  AND instance <> ALL($3::text[])
                ORDER BY priority DESC, created_at
                LIMIT $4
                FOR UPDATE SKIP LOCKED),
             fresh AS (
                SELECT id, priority, created_at FROM status_outbox
                WHERE cardinality($5::text[]) >= $4 AND state = 'queued'
                  AND (not_before IS NULL OR not_before <= now())
                  AND instance <> ALL($3::text[])
                ORDER BY priority DESC, created_at
                LIMIT $4
                FOR UPDATE SKIP LOCKED),
             due AS (SELECT * FROM pending UNION ALL SELECT * FROM fresh),
             picked AS (
                SELECT id, row_number() OVER (ORDER BY priority DESC, created_at) AS rn
                FROM due ORDER BY priority DESC, created_at LIMIT $4)
             UPDATE status_outbox o SET state = 'uploading', attempts = o.attempts + 1,
                    lease_owner = $1, lease_expires_at = now() + $2 * interval '1 millisecond',
                    claimed_at = now(),
                    updated_at = now(),
                    message_id = COALESCE(o.message_id, ($5::text[])[picked.rn])
             FROM picked WHERE o.id = picked.id
             RETURNING {}",
            returning_cols()
        );
        let raw = sqlx::query(&sql)
            .bind(&p.owner)
            .bind(p.lease.as_millis() as i64)
            .bind(&p.skip_instances)
            .bind(p.limit)
            .bind(&p.fresh_ids)
            .fetch_all(&self.pool)
            .await?;
        // Leased and committed: a row that cannot be read was never sent.
        let mut rows = self.readable(&raw, Some(&p.owner)).await?;
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
        Ok(sqlx::query_scalar(
            "WITH expired AS (
                SELECT id FROM status_outbox
                WHERE state = 'uploading' AND lease_expires_at < now()
                ORDER BY lease_expires_at LIMIT $1
                FOR UPDATE SKIP LOCKED)
             UPDATE status_outbox o SET state = 'in_doubt',
                    last_error = 'lease expired (the daemon stopped mid-call)',
                    next_attempt_at = now() + $2 * interval '1 millisecond',
                    reconcile_attempts = 0, lease_owner = NULL, lease_expires_at = NULL,
                    updated_at = now()
             FROM expired WHERE o.id = expired.id
             RETURNING o.id",
        )
        .bind(limit)
        .bind(settle.as_millis() as i64)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn due_in_doubt(&self, limit: i64) -> Result<Vec<OutboxRow>> {
        let sql = format!(
            "SELECT {COLS} FROM status_outbox
             WHERE state = 'in_doubt' AND parked_at IS NULL AND next_attempt_at <= now()
             ORDER BY next_attempt_at LIMIT $1"
        );
        self.fetch_rows(sqlx::query(&sql).bind(limit)).await
    }

    async fn resolve_in_doubt(&self, ts: &[Transition]) -> Result<u64> {
        self.transition(State::InDoubt, ts, &[]).await
    }

    async fn get(&self, id: Uuid) -> Result<Option<OutboxRow>> {
        let sql = format!("SELECT {COLS} FROM status_outbox WHERE id = $1");
        Ok(self.fetch_rows(sqlx::query(&sql).bind(id)).await?.pop())
    }

    async fn find(&self, key: &str) -> Result<Option<OutboxRow>> {
        let sql = format!(
            "SELECT {COLS} FROM status_outbox
             WHERE id = $1 OR message_id = $2 OR dedupe_key = $2 LIMIT 1"
        );
        Ok(self
            .fetch_rows(sqlx::query(&sql).bind(parse_uuid(key)).bind(key.trim()))
            .await?
            .pop())
    }

    async fn attempts(&self, id: Uuid) -> Result<Vec<Attempt>> {
        let rows = sqlx::query(
            "SELECT attempt, started_at, finished_at, outcome, http_status, latency_ms, error
             FROM status_attempts WHERE status_id = $1 ORDER BY started_at, attempt",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        row::map_all(&rows, |r| row::attempt(id, r))
    }

    async fn list(&self, p: ListParams) -> Result<Vec<OutboxRow>> {
        let sql = format!(
            "SELECT {COLS} FROM status_outbox
             WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR instance = $2)
               AND ($3::timestamptz IS NULL OR created_at >= $3)
             ORDER BY created_at DESC LIMIT $4"
        );
        self.fetch_rows(
            sqlx::query(&sql)
                .bind(p.state.map(|s| s.as_str()))
                .bind(p.instance)
                .bind(p.since)
                .bind(p.limit),
        )
        .await
    }

    async fn summary(&self) -> Result<Vec<SummaryRow>> {
        let rows = sqlx::query(
            "SELECT instance, state, count, oldest_age_secs, scheduled FROM status_outbox_summary
             ORDER BY instance, state",
        )
        .fetch_all(&self.pool)
        .await?;
        row::map_all(&rows, row::summary_row)
    }

    async fn operator(&self, id: Uuid, action: OperatorAction) -> Result<OutboxRow> {
        let r = sqlx::query(&action.sql(&DIALECT))
            .bind(id)
            .fetch_optional(&self.pool)
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
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    async fn add_schedule(&self, s: &Schedule) -> Result<()> {
        sqlx::query(
            "INSERT INTO status_schedules (id, name, cron, timezone, instance, kind, payload, enabled)
             VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8)",
        )
        .bind(s.id)
        .bind(&s.name)
        .bind(&s.cron)
        .bind(&s.timezone)
        .bind(&s.instance)
        .bind(&s.kind)
        .bind(&s.payload)
        .bind(s.enabled)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn schedules(&self) -> Result<Vec<Schedule>> {
        let rows = sqlx::query(
            "SELECT id, name, cron, timezone, instance, kind, payload::text AS payload, enabled
             FROM status_schedules ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        row::map_all(&rows, row::schedule)
    }

    async fn remove_schedule(&self, name_or_id: &str) -> Result<bool> {
        Ok(
            sqlx::query("DELETE FROM status_schedules WHERE name = $1 OR id = $2")
                .bind(name_or_id)
                .bind(parse_uuid(name_or_id))
                .execute(&self.pool)
                .await?
                .rows_affected()
                > 0,
        )
    }

    async fn now(&self) -> Result<DateTime<Utc>> {
        Ok(sqlx::query_scalar("SELECT now()")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn next_due(&self, skip: &[String], with_queued: bool) -> Result<Option<Duration>> {
        // Both sources read their own partial index; few rows wait when idle.
        let ms: Option<i64> = sqlx::query_scalar(
            "SELECT CEIL(EXTRACT(EPOCH FROM MIN(due) - now()) * 1000)::bigint FROM (
                SELECT GREATEST(next_attempt_at, not_before) AS due FROM status_outbox
                WHERE state = 'pending_upload' AND instance <> ALL($1::text[])
                UNION ALL
                SELECT COALESCE(not_before, now()) FROM status_outbox
                WHERE $2 AND state = 'queued' AND instance <> ALL($1::text[])) d",
        )
        .bind(skip)
        .bind(with_queued)
        .fetch_one(&self.pool)
        .await?;
        Ok(ms.map(|m| Duration::from_millis(m.max(0) as u64)))
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.start_listener();
        self.wake.subscribe()
    }

    fn notifies(&self) -> bool {
        true
    }

    async fn activity(&self, p: ActivityParams) -> Result<Vec<ActivityBucket>> {
        let (since, bucket) = p.millis()?;
        // Bucketed in epoch milliseconds, as on SQLite (date_bin needs
        // PostgreSQL 14; this works on every supported version).
        let rows = sqlx::query(
            "SELECT (floor(extract(epoch FROM finished_at) * 1000)::bigint / $2) * $2 AS start,
                    COUNT(*) FILTER (WHERE outcome = 'posted') AS posted,
                    COUNT(*) FILTER (WHERE outcome <> 'posted') AS errors
             FROM status_attempts
             WHERE finished_at >= now() - $1 * interval '1 millisecond'
             GROUP BY 1 ORDER BY 1",
        )
        .bind(since)
        .bind(bucket)
        .fetch_all(&self.pool)
        .await?;
        row::map_all(&rows, row::activity_bucket)
    }

    async fn set_instance_pause(&self, instance: &str, reason: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO status_instance_pauses (instance, reason) VALUES ($1, $2)
             ON CONFLICT (instance) DO UPDATE SET reason = excluded.reason, updated_at = now()",
        )
        .bind(instance)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn clear_instance_pause(&self, instance: &str) -> Result<()> {
        sqlx::query("DELETE FROM status_instance_pauses WHERE instance = $1")
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
