//! Webhook evidence (issue 13, DESIGN.md R8): the inbox of accepted provider
//! events, the viewers of each status, and the confirmations that settle a
//! row as posted without a look-up.
//!
//! [`ViewStore`] is a supertrait of [`Store`], implemented here for both
//! backends and for [`Timed`], so that every store has it and the SQL of the
//! feature lives in this one file.
//!
//! Rules kept by both backends:
//! - a view upsert never lowers a level, and `first_at` / `viewed_at` only
//!   move earlier, `last_at` only later: duplicates, replays and
//!   out-of-order acks change nothing they should not;
//! - a confirmation moves a row to `posted` only from `in_doubt` or
//!   `pending_upload`, in one statement that re-checks the state (the
//!   fence), with an attempt-history line `confirmed by webhook`. It never
//!   moves a row towards a send.
//! - views and confirmations go with their outbox row: once no row holds
//!   their message id and they are older than the retention, the purge
//!   deletes them (ids no row ever held: statuses posted from the phone).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use sqlx::Row;
use uuid::Uuid;

use super::{parse_uuid, PgStore, Result, SqliteStore, Store, StoreError, Timed};

/// The SQLite database clock in milliseconds (as in `sqlite.rs`).
const NOW: &str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";

/// The attempt-history note of a row settled by a provider event.
pub const CONFIRMED_NOTE: &str = "confirmed by webhook";

/// An event to store in the inbox.
#[derive(Debug, Clone, Serialize)]
pub struct NewEvent {
    pub instance: String,
    pub request_id: Option<String>,
    pub body: String,
}

/// An accepted event waiting to be applied.
#[derive(Debug, Clone)]
pub struct InboxEvent {
    pub seq: i64,
    pub instance: String,
    pub body: String,
    pub received_at: DateTime<Utc>,
}

/// One viewer's ack of one status.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewEvent {
    /// The bare message id (`3EB0…`).
    pub message_id: String,
    pub viewer: String,
    pub instance: String,
    /// -1 error, 0 pending, 1 server, 2 delivered, 3 viewed, 4 played.
    pub level: i32,
    pub at: DateTime<Utc>,
}

/// Proof that a status exists at the provider.
#[derive(Debug, Clone, PartialEq)]
pub struct Confirmation {
    pub message_id: String,
    pub instance: String,
    /// The event that proved it (`message.any`, `message.ack`, …).
    pub event: String,
}

/// What one processor pass applies, in one transaction.
#[derive(Debug, Clone, Default)]
pub struct ApplyParams {
    /// Inbox events applied (deleted from the inbox).
    pub done: Vec<i64>,
    pub views: Vec<ViewEvent>,
    pub confirmations: Vec<Confirmation>,
}

/// A row a confirmation moved to `posted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settled {
    pub id: Uuid,
    pub message_id: String,
}

/// What [`ViewStore::webhook_apply`] did.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// View upserts written (after merging duplicates within the pass).
    pub views: u64,
    pub settled: Vec<Settled>,
}

/// One viewer of a status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct View {
    pub viewer: String,
    pub level: i32,
    /// WAHA's name of the level.
    pub level_name: &'static str,
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
    pub viewed_at: Option<DateTime<Utc>>,
}

/// Viewers of one status by the highest level each reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ViewCounts {
    /// Every viewer with an ack, whatever its level.
    pub viewers: i64,
    /// Level 2 or more (the status reached their device).
    pub delivered: i64,
    /// Level 3 or more: they opened it.
    pub viewed: i64,
    /// Level 4: a voice or video status played.
    pub played: i64,
}

/// Views (first reaching level 3) in one bucket `[start, start + bucket)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ViewBucket {
    pub start: DateTime<Utc>,
    pub views: i64,
}

/// WAHA's `ackName` of a level.
pub fn level_name(level: i32) -> &'static str {
    match level {
        -1 => "ERROR",
        0 => "PENDING",
        1 => "SERVER",
        2 => "DEVICE",
        3 => "READ",
        4 => "PLAYED",
        _ => "UNKNOWN",
    }
}

/// Merges the views of one pass by (message id, viewer) with the upsert's
/// own rules, so that one statement never touches a row twice (PostgreSQL
/// refuses that) and both backends see the same input.
fn merged(views: &[ViewEvent]) -> Vec<serde_json::Value> {
    /// One (message id, viewer) after merging: level, first, last, viewed.
    struct Merged<'a> {
        level: i32,
        first: i64,
        last: i64,
        viewed: Option<i64>,
        instance: &'a str,
    }
    let mut by: BTreeMap<(&str, &str), Merged> = BTreeMap::new();
    for v in views {
        let at = v.at.timestamp_millis();
        let viewed = (v.level >= 3).then_some(at);
        by.entry((&v.message_id, &v.viewer))
            .and_modify(|e| {
                e.level = e.level.max(v.level);
                e.first = e.first.min(at);
                e.last = e.last.max(at);
                e.viewed = match (e.viewed, viewed) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            })
            .or_insert(Merged {
                level: v.level,
                first: at,
                last: at,
                viewed,
                instance: &v.instance,
            });
    }
    by.into_iter()
        .map(|((m, viewer), e)| {
            serde_json::json!({
                "m": m, "v": viewer, "i": e.instance, "l": e.level,
                "first": e.first, "last": e.last, "viewed": e.viewed,
            })
        })
        .collect()
}

fn confirmations_json(cs: &[Confirmation]) -> String {
    serde_json::Value::Array(
        cs.iter()
            .map(|c| serde_json::json!({"m": c.message_id, "i": c.instance, "e": c.event}))
            .collect(),
    )
    .to_string()
}

/// The webhook queries. See the module docs for the rules.
pub trait ViewStore: Send + Sync {
    /// Stores an accepted event; returns its inbox sequence number.
    fn webhook_accept(
        &self,
        instance: &str,
        request_id: Option<&str>,
        body: &str,
    ) -> impl Future<Output = Result<i64>> + Send;
    /// Stores many accepted events in one statement (the server's group
    /// commit: one fsync for every event that arrived meanwhile).
    fn webhook_accept_many(&self, events: &[NewEvent]) -> impl Future<Output = Result<u64>> + Send;
    /// The oldest accepted events not yet applied.
    fn webhook_inbox(&self, limit: i64) -> impl Future<Output = Result<Vec<InboxEvent>>> + Send;
    /// Events waiting in the inbox.
    fn webhook_backlog(&self) -> impl Future<Output = Result<i64>> + Send;
    /// Upserts the views, records the confirmations, settles the rows they
    /// prove posted and deletes the applied events, in one transaction.
    fn webhook_apply(&self, p: &ApplyParams) -> impl Future<Output = Result<Applied>> + Send;
    /// Settles the given rows (by id) or rows holding the given message ids
    /// that a confirmation proves posted: `in_doubt` / `pending_upload` →
    /// `posted`. The reconciler asks this before spending look-ups.
    fn settle_confirmed(
        &self,
        ids: &[Uuid],
        message_ids: &[String],
    ) -> impl Future<Output = Result<Vec<Settled>>> + Send;
    /// The viewers of one status, highest level first.
    fn views_of(&self, message_id: &str) -> impl Future<Output = Result<Vec<View>>> + Send;
    /// View counts per message id, for the given ids (missing: none).
    fn view_counts(
        &self,
        message_ids: &[String],
    ) -> impl Future<Output = Result<BTreeMap<String, ViewCounts>>> + Send;
    /// Views (level 3 reached) per bucket over a recent window, oldest
    /// first; only buckets with views.
    fn views_over_time(
        &self,
        since: Duration,
        bucket: Duration,
    ) -> impl Future<Output = Result<Vec<ViewBucket>>> + Send;
    /// Deletes views and confirmations older than `older_than` whose message
    /// id no outbox row holds (the row was purged, or never ours).
    fn purge_views(&self, older_than: Duration) -> impl Future<Output = Result<u64>> + Send;
}

fn ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v).single().unwrap_or_default()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl ViewStore for SqliteStore {
    async fn webhook_accept(
        &self,
        instance: &str,
        request_id: Option<&str>,
        body: &str,
    ) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO status_webhook_inbox (instance, request_id, body) VALUES (?1, ?2, ?3)
             RETURNING seq",
        )
        .bind(instance)
        .bind(request_id)
        .bind(body)
        .fetch_one(self.pool())
        .await?)
    }

    async fn webhook_accept_many(&self, events: &[NewEvent]) -> Result<u64> {
        if events.is_empty() {
            return Ok(0);
        }
        Ok(sqlx::query(
            "INSERT INTO status_webhook_inbox (instance, request_id, body)
             SELECT e.value ->> 'instance', e.value ->> 'request_id', e.value ->> 'body'
             FROM json_each(?1) AS e ORDER BY e.key",
        )
        .bind(serde_json::to_string(events).unwrap_or_else(|_| "[]".into()))
        .execute(self.pool())
        .await?
        .rows_affected())
    }

    async fn webhook_inbox(&self, limit: i64) -> Result<Vec<InboxEvent>> {
        let rows = sqlx::query(
            "SELECT seq, instance, body, received_at FROM status_webhook_inbox
             ORDER BY seq LIMIT ?1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(InboxEvent {
                    seq: r.try_get("seq")?,
                    instance: r.try_get("instance")?,
                    body: r.try_get("body")?,
                    received_at: ms(r.try_get("received_at")?),
                })
            })
            .collect()
    }

    async fn webhook_backlog(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM status_webhook_inbox")
                .fetch_one(self.pool())
                .await?,
        )
    }

    async fn webhook_apply(&self, p: &ApplyParams) -> Result<Applied> {
        let views = merged(&p.views);
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        if !views.is_empty() {
            sqlx::query(
                "INSERT INTO status_views (message_id, viewer, instance, level, first_at, last_at, viewed_at)
                 SELECT v.value ->> 'm', v.value ->> 'v', v.value ->> 'i', v.value ->> 'l',
                        v.value ->> 'first', v.value ->> 'last', v.value ->> 'viewed'
                 FROM json_each(?1) AS v WHERE true
                 ON CONFLICT (message_id, viewer) DO UPDATE SET
                    level = max(status_views.level, excluded.level),
                    first_at = min(status_views.first_at, excluded.first_at),
                    last_at = max(status_views.last_at, excluded.last_at),
                    viewed_at = CASE
                        WHEN excluded.viewed_at IS NULL THEN status_views.viewed_at
                        WHEN status_views.viewed_at IS NULL THEN excluded.viewed_at
                        ELSE min(status_views.viewed_at, excluded.viewed_at) END",
            )
            .bind(serde_json::Value::Array(views.clone()).to_string())
            .execute(&mut *tx)
            .await?;
        }
        let mut settled = Vec::new();
        if !p.confirmations.is_empty() {
            sqlx::query(
                "INSERT INTO status_confirmations (message_id, instance, event)
                 SELECT c.value ->> 'm', c.value ->> 'i', c.value ->> 'e'
                 FROM json_each(?1) AS c WHERE true
                 ON CONFLICT (message_id) DO NOTHING",
            )
            .bind(confirmations_json(&p.confirmations))
            .execute(&mut *tx)
            .await?;
            let mids: Vec<String> = p
                .confirmations
                .iter()
                .map(|c| c.message_id.clone())
                .collect();
            settled = sqlite_settle(&mut tx, &[], &mids).await?;
        }
        if !p.done.is_empty() {
            sqlx::query(
                "DELETE FROM status_webhook_inbox WHERE seq IN (SELECT value FROM json_each(?1))",
            )
            .bind(serde_json::to_string(&p.done).unwrap_or_else(|_| "[]".into()))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Applied {
            views: views.len() as u64,
            settled,
        })
    }

    async fn settle_confirmed(&self, ids: &[Uuid], message_ids: &[String]) -> Result<Vec<Settled>> {
        if ids.is_empty() && message_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        let settled = sqlite_settle(&mut tx, ids, message_ids).await?;
        tx.commit().await?;
        Ok(settled)
    }

    async fn views_of(&self, message_id: &str) -> Result<Vec<View>> {
        let rows = sqlx::query(
            "SELECT viewer, level, first_at, last_at, viewed_at FROM status_views
             WHERE message_id = ?1 ORDER BY level DESC, COALESCE(viewed_at, first_at), viewer",
        )
        .bind(message_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let level: i32 = r.try_get("level")?;
                Ok(View {
                    viewer: r.try_get("viewer")?,
                    level,
                    level_name: level_name(level),
                    first_at: ms(r.try_get("first_at")?),
                    last_at: ms(r.try_get("last_at")?),
                    viewed_at: r.try_get::<Option<i64>, _>("viewed_at")?.map(ms),
                })
            })
            .collect()
    }

    async fn view_counts(&self, message_ids: &[String]) -> Result<BTreeMap<String, ViewCounts>> {
        if message_ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let rows = sqlx::query(
            "SELECT message_id, COUNT(*) AS viewers, SUM(level >= 2) AS delivered,
                    SUM(level >= 3) AS viewed, SUM(level >= 4) AS played
             FROM status_views WHERE message_id IN (SELECT value FROM json_each(?1))
             GROUP BY message_id",
        )
        .bind(serde_json::to_string(message_ids).unwrap_or_else(|_| "[]".into()))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("message_id")?,
                    ViewCounts {
                        viewers: r.try_get("viewers")?,
                        delivered: r.try_get("delivered")?,
                        viewed: r.try_get("viewed")?,
                        played: r.try_get("played")?,
                    },
                ))
            })
            .collect()
    }

    async fn views_over_time(&self, since: Duration, bucket: Duration) -> Result<Vec<ViewBucket>> {
        let bucket = millis(bucket);
        if bucket < 1 {
            return Err(StoreError::Invalid(
                "views over time: bucket must be at least 1 ms".into(),
            ));
        }
        let rows = sqlx::query(&format!(
            "SELECT (viewed_at / ?2) * ?2 AS start, COUNT(*) AS views FROM status_views
             WHERE viewed_at >= {NOW} - ?1 GROUP BY 1 ORDER BY 1"
        ))
        .bind(millis(since).min(100 * 366 * 86_400_000))
        .bind(bucket)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ViewBucket {
                    start: ms(r.try_get("start")?),
                    views: r.try_get("views")?,
                })
            })
            .collect()
    }

    async fn purge_views(&self, older_than: Duration) -> Result<u64> {
        let cutoff = format!("{NOW} - ?1");
        let mut n = 0;
        for sql in [
            format!(
                "DELETE FROM status_views WHERE last_at < {cutoff} AND NOT EXISTS
                    (SELECT 1 FROM status_outbox o WHERE o.message_id = status_views.message_id)"
            ),
            format!(
                "DELETE FROM status_confirmations WHERE confirmed_at < {cutoff} AND NOT EXISTS
                    (SELECT 1 FROM status_outbox o WHERE o.message_id = status_confirmations.message_id)"
            ),
        ] {
            n += sqlx::query(&sql)
                .bind(millis(older_than))
                .execute(self.pool())
                .await?
                .rows_affected();
        }
        Ok(n)
    }
}

/// The one settling statement of SQLite, with its history lines.
async fn sqlite_settle(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    ids: &[Uuid],
    message_ids: &[String],
) -> Result<Vec<Settled>> {
    let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    let rows = sqlx::query(&format!(
        "UPDATE status_outbox SET state = 'posted', posted_at = {NOW}, updated_at = {NOW},
            provider_id = COALESCE(provider_id, message_id), last_error = NULL,
            last_http_status = NULL, parked_at = NULL, reconcile_attempts = 0,
            lease_owner = NULL, lease_expires_at = NULL
         WHERE (id IN (SELECT value FROM json_each(?1))
                OR message_id IN (SELECT value FROM json_each(?2)))
           AND state IN ('in_doubt', 'pending_upload')
           AND EXISTS (SELECT 1 FROM status_confirmations c
                       WHERE c.message_id = status_outbox.message_id)
         RETURNING id, message_id, attempts"
    ))
    .bind(serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into()))
    .bind(serde_json::to_string(message_ids).unwrap_or_else(|_| "[]".into()))
    .fetch_all(&mut **tx)
    .await?;
    let mut settled = Vec::with_capacity(rows.len());
    let mut hist = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: String = r.try_get("id")?;
        let attempt: i32 = r.try_get("attempts")?;
        hist.push(serde_json::json!({"id": id, "attempt": attempt}));
        if let Some(id) = parse_uuid(&id) {
            settled.push(Settled {
                id,
                message_id: r.try_get("message_id")?,
            });
        }
    }
    if !hist.is_empty() {
        sqlx::query(&format!(
            "INSERT INTO status_attempts
                (status_id, attempt, started_at, finished_at, outcome, http_status, latency_ms, error)
             SELECT h.value ->> 'id', h.value ->> 'attempt', {NOW}, {NOW}, 'posted', NULL, 0, ?2
             FROM json_each(?1) AS h"
        ))
        .bind(serde_json::Value::Array(hist).to_string())
        .bind(CONFIRMED_NOTE)
        .execute(&mut **tx)
        .await?;
    }
    Ok(settled)
}

impl ViewStore for PgStore {
    async fn webhook_accept(
        &self,
        instance: &str,
        request_id: Option<&str>,
        body: &str,
    ) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO status_webhook_inbox (instance, request_id, body) VALUES ($1, $2, $3)
             RETURNING seq",
        )
        .bind(instance)
        .bind(request_id)
        .bind(body)
        .fetch_one(self.pool())
        .await?)
    }

    async fn webhook_accept_many(&self, events: &[NewEvent]) -> Result<u64> {
        if events.is_empty() {
            return Ok(0);
        }
        Ok(sqlx::query(
            "INSERT INTO status_webhook_inbox (instance, request_id, body)
             SELECT e.x ->> 'instance', e.x ->> 'request_id', e.x ->> 'body'
             FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS e(x, n)
             ORDER BY e.n",
        )
        .bind(serde_json::to_value(events).unwrap_or_default())
        .execute(self.pool())
        .await?
        .rows_affected())
    }

    async fn webhook_inbox(&self, limit: i64) -> Result<Vec<InboxEvent>> {
        let rows = sqlx::query(
            "SELECT seq, instance, body, received_at FROM status_webhook_inbox
             ORDER BY seq LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(InboxEvent {
                    seq: r.try_get("seq")?,
                    instance: r.try_get("instance")?,
                    body: r.try_get("body")?,
                    received_at: r.try_get("received_at")?,
                })
            })
            .collect()
    }

    async fn webhook_backlog(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM status_webhook_inbox")
                .fetch_one(self.pool())
                .await?,
        )
    }

    async fn webhook_apply(&self, p: &ApplyParams) -> Result<Applied> {
        let views = merged(&p.views);
        let mut tx = self.pool().begin().await?;
        if !views.is_empty() {
            sqlx::query(
                "INSERT INTO status_views (message_id, viewer, instance, level, first_at, last_at, viewed_at)
                 SELECT v.m, v.v, v.i, v.l, to_timestamp(v.first / 1000.0),
                        to_timestamp(v.last / 1000.0), to_timestamp(v.viewed / 1000.0)
                 FROM jsonb_to_recordset($1::jsonb) AS v(m text, v text, i text, l int,
                      first bigint, last bigint, viewed bigint)
                 ON CONFLICT (message_id, viewer) DO UPDATE SET
                    level = GREATEST(status_views.level, excluded.level),
                    first_at = LEAST(status_views.first_at, excluded.first_at),
                    last_at = GREATEST(status_views.last_at, excluded.last_at),
                    viewed_at = LEAST(status_views.viewed_at, excluded.viewed_at)",
            )
            .bind(serde_json::Value::Array(views.clone()))
            .execute(&mut *tx)
            .await?;
        }
        let mut settled = Vec::new();
        if !p.confirmations.is_empty() {
            sqlx::query(
                "INSERT INTO status_confirmations (message_id, instance, event)
                 SELECT c.m, c.i, c.e FROM jsonb_to_recordset($1::jsonb) AS c(m text, i text, e text)
                 ON CONFLICT (message_id) DO NOTHING",
            )
            .bind(confirmations_json(&p.confirmations))
            .execute(&mut *tx)
            .await?;
            let mids: Vec<String> = p
                .confirmations
                .iter()
                .map(|c| c.message_id.clone())
                .collect();
            settled = pg_settle(&mut tx, &[], &mids).await?;
        }
        if !p.done.is_empty() {
            sqlx::query("DELETE FROM status_webhook_inbox WHERE seq = ANY($1)")
                .bind(&p.done)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Applied {
            views: views.len() as u64,
            settled,
        })
    }

    async fn settle_confirmed(&self, ids: &[Uuid], message_ids: &[String]) -> Result<Vec<Settled>> {
        if ids.is_empty() && message_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool().begin().await?;
        let settled = pg_settle(&mut tx, ids, message_ids).await?;
        tx.commit().await?;
        Ok(settled)
    }

    async fn views_of(&self, message_id: &str) -> Result<Vec<View>> {
        let rows = sqlx::query(
            "SELECT viewer, level, first_at, last_at, viewed_at FROM status_views
             WHERE message_id = $1 ORDER BY level DESC, COALESCE(viewed_at, first_at), viewer",
        )
        .bind(message_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let level: i32 = r.try_get("level")?;
                Ok(View {
                    viewer: r.try_get("viewer")?,
                    level,
                    level_name: level_name(level),
                    first_at: r.try_get("first_at")?,
                    last_at: r.try_get("last_at")?,
                    viewed_at: r.try_get("viewed_at")?,
                })
            })
            .collect()
    }

    async fn view_counts(&self, message_ids: &[String]) -> Result<BTreeMap<String, ViewCounts>> {
        if message_ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let rows = sqlx::query(
            "SELECT message_id, COUNT(*) AS viewers,
                    COUNT(*) FILTER (WHERE level >= 2) AS delivered,
                    COUNT(*) FILTER (WHERE level >= 3) AS viewed,
                    COUNT(*) FILTER (WHERE level >= 4) AS played
             FROM status_views WHERE message_id = ANY($1) GROUP BY message_id",
        )
        .bind(message_ids)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("message_id")?,
                    ViewCounts {
                        viewers: r.try_get("viewers")?,
                        delivered: r.try_get("delivered")?,
                        viewed: r.try_get("viewed")?,
                        played: r.try_get("played")?,
                    },
                ))
            })
            .collect()
    }

    async fn views_over_time(&self, since: Duration, bucket: Duration) -> Result<Vec<ViewBucket>> {
        let bucket = millis(bucket);
        if bucket < 1 {
            return Err(StoreError::Invalid(
                "views over time: bucket must be at least 1 ms".into(),
            ));
        }
        let rows = sqlx::query(
            "SELECT (floor(extract(epoch FROM viewed_at) * 1000 / $2)::bigint * $2) AS start,
                    COUNT(*) AS views
             FROM status_views
             WHERE viewed_at >= now() - $1 * interval '1 millisecond'
             GROUP BY 1 ORDER BY 1",
        )
        .bind(millis(since).min(100 * 366 * 86_400_000))
        .bind(bucket)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ViewBucket {
                    start: ms(r.try_get("start")?),
                    views: r.try_get("views")?,
                })
            })
            .collect()
    }

    async fn purge_views(&self, older_than: Duration) -> Result<u64> {
        let mut n = 0;
        for sql in [
            "DELETE FROM status_views v WHERE last_at < now() - $1 * interval '1 millisecond'
               AND NOT EXISTS (SELECT 1 FROM status_outbox o WHERE o.message_id = v.message_id)",
            "DELETE FROM status_confirmations c WHERE confirmed_at < now() - $1 * interval '1 millisecond'
               AND NOT EXISTS (SELECT 1 FROM status_outbox o WHERE o.message_id = c.message_id)",
        ] {
            n += sqlx::query(sql)
                .bind(millis(older_than))
                .execute(self.pool())
                .await?
                .rows_affected();
        }
        Ok(n)
    }
}

/// The one settling statement of PostgreSQL, with its history lines. Row
/// locks make it wait for a concurrent claim or look-up outcome, and the
/// state is re-checked on the row it then sees (the fence).
async fn pg_settle(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ids: &[Uuid],
    message_ids: &[String],
) -> Result<Vec<Settled>> {
    let rows = sqlx::query(
        "UPDATE status_outbox o SET state = 'posted', posted_at = now(), updated_at = now(),
            provider_id = COALESCE(o.provider_id, o.message_id), last_error = NULL,
            last_http_status = NULL, parked_at = NULL, reconcile_attempts = 0,
            lease_owner = NULL, lease_expires_at = NULL
         WHERE (o.id = ANY($1) OR o.message_id = ANY($2))
           AND o.state IN ('in_doubt', 'pending_upload')
           AND EXISTS (SELECT 1 FROM status_confirmations c WHERE c.message_id = o.message_id)
         RETURNING o.id, o.message_id, o.attempts",
    )
    .bind(ids)
    .bind(message_ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut settled = Vec::with_capacity(rows.len());
    let mut hist = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: Uuid = r.try_get("id")?;
        let attempt: i32 = r.try_get("attempts")?;
        hist.push(serde_json::json!({"id": id, "attempt": attempt}));
        settled.push(Settled {
            id,
            message_id: r.try_get("message_id")?,
        });
    }
    if !hist.is_empty() {
        sqlx::query(
            "INSERT INTO status_attempts
                (status_id, attempt, started_at, finished_at, outcome, http_status, latency_ms, error)
             SELECT h.id, h.attempt, now(), now(), 'posted', NULL, 0, $2
             FROM jsonb_to_recordset($1::jsonb) AS h(id uuid, attempt int)",
        )
        .bind(serde_json::Value::Array(hist))
        .bind(CONFIRMED_NOTE)
        .execute(&mut **tx)
        .await?;
    }
    Ok(settled)
}

/// Each call bounded like every other store call.
impl<S: Store> ViewStore for Timed<S> {
    async fn webhook_accept(
        &self,
        instance: &str,
        request_id: Option<&str>,
        body: &str,
    ) -> Result<i64> {
        self.within(
            "webhook_accept",
            self.inner().webhook_accept(instance, request_id, body),
        )
        .await
    }
    async fn webhook_accept_many(&self, events: &[NewEvent]) -> Result<u64> {
        self.within(
            "webhook_accept_many",
            self.inner().webhook_accept_many(events),
        )
        .await
    }
    async fn webhook_inbox(&self, limit: i64) -> Result<Vec<InboxEvent>> {
        self.within("webhook_inbox", self.inner().webhook_inbox(limit))
            .await
    }
    async fn webhook_backlog(&self) -> Result<i64> {
        self.within("webhook_backlog", self.inner().webhook_backlog())
            .await
    }
    async fn webhook_apply(&self, p: &ApplyParams) -> Result<Applied> {
        self.within("webhook_apply", self.inner().webhook_apply(p))
            .await
    }
    async fn settle_confirmed(&self, ids: &[Uuid], message_ids: &[String]) -> Result<Vec<Settled>> {
        self.within(
            "settle_confirmed",
            self.inner().settle_confirmed(ids, message_ids),
        )
        .await
    }
    async fn views_of(&self, message_id: &str) -> Result<Vec<View>> {
        self.within("views_of", self.inner().views_of(message_id))
            .await
    }
    async fn view_counts(&self, message_ids: &[String]) -> Result<BTreeMap<String, ViewCounts>> {
        self.within("view_counts", self.inner().view_counts(message_ids))
            .await
    }
    async fn views_over_time(&self, since: Duration, bucket: Duration) -> Result<Vec<ViewBucket>> {
        self.within(
            "views_over_time",
            self.inner().views_over_time(since, bucket),
        )
        .await
    }
    async fn purge_views(&self, older_than: Duration) -> Result<u64> {
        self.within("purge_views", self.inner().purge_views(older_than))
            .await
    }
}
