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

use super::row::{self, plain_columns, Columns};
use super::sql::{run_methods, Arg, Dialect, Sql, Stmt};
use super::{AssignId, ClaimParams, Result, Unreadable};
use crate::model::OutboxRow;

const COLS: &str = "id, instance, kind, payload::text AS payload, dedupe_key, message_id, state, \
    priority, not_before, attempts, next_attempt_at, lease_owner, lease_expires_at, \
    claimed_at, reconcile_attempts, parked_at, provider_id, last_error, last_http_status, created_at, \
    updated_at, posted_at";

/// How the statements both backends share are spelled here.
impl Dialect for PgStore {
    const NOW: &'static str = "now()";
    const DUE_NOW: &'static str = "now()";
    const ID_TEXT: &'static str = "id::text";
    const COLS: &'static str = COLS;
    const MILLIS: &'static str = " * interval '1 millisecond'";
    const TOUCH: &'static str = "now()";
    const FRESH: &'static str = "(xmax = 0)";

    fn typed(p: &str, ty: &str) -> String {
        format!("{p}::{ty}")
    }

    fn epoch_ms(col: &str) -> String {
        format!("floor(extract(epoch FROM {col}) * 1000)::bigint")
    }

    fn in_list(col: &str, p: &str, ty: &str) -> String {
        format!("{col} = ANY({p}::{ty}[])")
    }

    fn list_table(p: &str, ty: &str, alias: &str) -> String {
        format!("unnest({p}::{ty}[]) AS {alias}(value)")
    }
}

/// The claim of the due rows of the instances `which` selects (on `$3`), in
/// priority order, at most `$4`: each source is an ordered scan of its own
/// partial index; rows locked by another replica are skipped, never waited
/// for.
fn ordered_claim_sql(which: &str) -> String {
    format!(
        "WITH pending AS (
            SELECT id, priority, created_at FROM status_outbox
            WHERE state = 'pending_upload'
              AND next_attempt_at <= now()
              AND (not_before IS NULL OR not_before <= now())
              AND {which}
            ORDER BY priority DESC, created_at
            LIMIT $4
            FOR UPDATE SKIP LOCKED),
         fresh AS (
            SELECT id, priority, created_at FROM status_outbox
            WHERE cardinality($5::text[]) >= $4 AND state = 'queued'
              AND (not_before IS NULL OR not_before <= now())
              AND {which}
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
    )
}

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

    /// The pool for any statement (nothing is counted here).
    fn pool_for(&self, _s: &Stmt) -> &PgPool {
        &self.pool
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

impl Sql for PgStore {
    type Row = PgRow;
    type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

    run_methods!();

    async fn begin(&self, _counted: bool) -> Result<Self::Tx> {
        Ok(self.pool.begin().await?)
    }

    /// A decoder that panics (chrono on a time past its range) is an
    /// unreadable row too, never a dead worker.
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

    async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    const ENQUEUE_MANY: &'static str =
        "INSERT INTO status_outbox (id, instance, kind, payload, dedupe_key, priority, not_before)
         SELECT e.id, e.instance, e.kind, e.payload::jsonb, e.dedupe_key, e.priority,
                to_timestamp(e.not_before / 1000.0)
         FROM jsonb_to_recordset($1::jsonb) AS e(id uuid, instance text, kind text,
              payload text, dedupe_key text, priority int, not_before bigint)
         ON CONFLICT DO NOTHING";

    async fn assign_message_ids(&self, ids: &[AssignId]) -> Result<u64> {
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
        self.claimed(sql, p, Arg::Text(Some(budgets)), None).await
    }

    async fn claim_one(&self, p: &ClaimParams, instance: &str) -> Result<Vec<OutboxRow>> {
        let sql = ordered_claim_sql("instance = $3");
        self.claimed(sql, p, instance.into(), None).await
    }

    async fn claim_fifo(&self, p: &ClaimParams) -> Result<Vec<OutboxRow>> {
        let sql = ordered_claim_sql("instance <> ALL($3::text[])");
        self.claimed(sql, p, p.skip_instances.as_slice().into(), None)
            .await
    }

    fn transition_sql() -> String {
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
         RETURNING o.id::text AS id"
            .to_string()
    }

    const HISTORY: &'static str = "INSERT INTO status_attempts
            (status_id, attempt, started_at, finished_at, outcome, http_status, latency_ms, error)
         SELECT h.id, h.attempt, to_timestamp(h.started / 1000.0),
                to_timestamp((h.started + h.latency) / 1000.0),
                h.outcome, h.http, h.latency, h.error
         FROM jsonb_to_recordset($1::jsonb) AS h(id uuid, attempt int, started bigint,
              latency bigint, outcome text, http int, error text)
         WHERE EXISTS (SELECT 1 FROM status_outbox o WHERE o.id = h.id)";

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

    /// Changes on `NOTIFY status_instances` (and after a reconnect).
    fn subscribe_instances(&self) -> watch::Receiver<u64> {
        self.start_listener();
        self.instances_wake.subscribe()
    }

    const ACCEPT_MANY: &'static str =
        "INSERT INTO status_webhook_inbox (instance, request_id, body)
         SELECT e.x ->> 'instance', e.x ->> 'request_id', e.x ->> 'body'
         FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS e(x, n)
         ORDER BY e.n";

    const UPSERT_VIEWS: &'static str = "INSERT INTO status_views
            (message_id, viewer, instance, level, first_at, last_at, viewed_at)
         SELECT v.m, v.v, v.i, v.l, to_timestamp(v.first / 1000.0),
                to_timestamp(v.last / 1000.0), to_timestamp(v.viewed / 1000.0)
         FROM jsonb_to_recordset($1::jsonb) AS v(m text, v text, i text, l int,
              first bigint, last bigint, viewed bigint)
         ON CONFLICT (message_id, viewer) DO UPDATE SET
            level = GREATEST(status_views.level, excluded.level),
            first_at = LEAST(status_views.first_at, excluded.first_at),
            last_at = GREATEST(status_views.last_at, excluded.last_at),
            viewed_at = LEAST(status_views.viewed_at, excluded.viewed_at)";

    const INSERT_CONFIRMATIONS: &'static str =
        "INSERT INTO status_confirmations (message_id, instance, event)
         SELECT c.m, c.i, c.e FROM jsonb_to_recordset($1::jsonb) AS c(m text, i text, e text)
         ON CONFLICT (message_id) DO NOTHING";

    fn settled_history_sql() -> String {
        "INSERT INTO status_attempts
            (status_id, attempt, started_at, finished_at, outcome, http_status, latency_ms, error)
         SELECT h.id, h.attempt, now(), now(), 'posted', NULL, 0, $2
         FROM jsonb_to_recordset($1::jsonb) AS h(id uuid, attempt int)"
            .to_string()
    }
}

/// `s` with its arguments bound as PostgreSQL stores them.
fn bound(s: &Stmt) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
    s.args.iter().fold(sqlx::query(&s.sql), |q, a| match a {
        Arg::Text(v) => q.bind(v.as_deref()),
        Arg::Int(v) => q.bind(*v),
        Arg::Int32(v) => q.bind(*v),
        Arg::Bool(v) => q.bind(*v),
        Arg::Id(v) => q.bind(*v),
        Arg::Time(v) => q.bind(*v),
        Arg::Texts(v) => q.bind(v.as_slice()),
        Arg::Ids(v) => q.bind(v.as_slice()),
        Arg::Ints(v) => q.bind(v.as_slice()),
    })
}
