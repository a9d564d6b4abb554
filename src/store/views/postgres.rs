//! The PostgreSQL implementation of [`ViewStore`].

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::Row;
use uuid::Uuid;

use super::super::{PgStore, Result, StoreError};
use super::*;

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
