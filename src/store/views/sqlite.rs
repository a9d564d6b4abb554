//! The SQLite implementation of [`ViewStore`].

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::Row;
use uuid::Uuid;

use super::super::{parse_uuid, Result, SqliteStore, StoreError};
use super::*;

/// The SQLite database clock in milliseconds (as in `sqlite.rs`).
const NOW: &str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";

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
