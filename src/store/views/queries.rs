//! The webhook queries, written once for both backends (see `store::sql`);
//! the JSON batch inserts are each backend's own ([`Sql::UPSERT_VIEWS`]…).

use std::collections::BTreeMap;
use std::time::Duration;

use uuid::Uuid;

use super::super::row::{self, Columns};
use super::super::sql::{millis, Sql, Stmt};
use super::super::{parse_uuid, Result, StoreError};
use super::*;

impl<S: Sql> ViewStore for S {
    async fn webhook_accept(
        &self,
        instance: &str,
        request_id: Option<&str>,
        body: &str,
    ) -> Result<i64> {
        let s = Stmt::uncounted(
            "INSERT INTO status_webhook_inbox (instance, request_id, body) VALUES ($1, $2, $3)
             RETURNING seq",
        );
        let rows = self
            .fetch(s.bind(instance).bind(request_id).bind(body))
            .await?;
        let seq = row::map_all(&rows, |r| r.big("seq"))?;
        seq.first()
            .copied()
            .ok_or_else(|| StoreError::Invalid("webhook_accept: no sequence number".into()))
    }

    async fn webhook_accept_many(&self, events: &[NewEvent]) -> Result<u64> {
        if events.is_empty() {
            return Ok(0);
        }
        let events = serde_json::to_string(events).unwrap_or_else(|_| "[]".into());
        self.execute(Stmt::uncounted(S::ACCEPT_MANY).bind(events))
            .await
    }

    async fn webhook_inbox(&self, limit: i64) -> Result<Vec<InboxEvent>> {
        let s = Stmt::uncounted(
            "SELECT seq, instance, body, received_at FROM status_webhook_inbox
             ORDER BY seq LIMIT $1",
        );
        row::map_all(&self.fetch(s.bind(limit)).await?, |r| {
            Ok(InboxEvent {
                seq: r.big("seq")?,
                instance: r.text("instance")?,
                body: r.text("body")?,
                received_at: r.time("received_at")?.unwrap_or_default(),
            })
        })
    }

    async fn webhook_backlog(&self) -> Result<i64> {
        let s = Stmt::uncounted("SELECT COUNT(*) AS n FROM status_webhook_inbox");
        let n = row::map_all(&self.fetch(s).await?, |r| r.big("n"))?;
        Ok(n.into_iter().sum())
    }

    async fn webhook_apply(&self, p: &ApplyParams) -> Result<Applied> {
        let views = merged(&p.views);
        let mut tx = self.begin(false).await?;
        if !views.is_empty() {
            let json = serde_json::Value::Array(views.clone()).to_string();
            S::execute_in(&mut tx, Stmt::uncounted(S::UPSERT_VIEWS).bind(json)).await?;
        }
        let mut settled = Vec::new();
        if !p.confirmations.is_empty() {
            let json = confirmations_json(&p.confirmations);
            S::execute_in(&mut tx, Stmt::uncounted(S::INSERT_CONFIRMATIONS).bind(json)).await?;
            let mids: Vec<String> = p
                .confirmations
                .iter()
                .map(|c| c.message_id.clone())
                .collect();
            settled = settle::<S>(&mut tx, &[], &mids).await?;
        }
        if !p.done.is_empty() {
            let sql = format!(
                "DELETE FROM status_webhook_inbox WHERE {}",
                S::in_list("seq", "$1", "bigint")
            );
            S::execute_in(&mut tx, Stmt::uncounted(sql).bind(&p.done[..])).await?;
        }
        S::commit(tx).await?;
        Ok(Applied {
            views: views.len() as u64,
            settled,
        })
    }

    async fn settle_confirmed(&self, ids: &[Uuid], message_ids: &[String]) -> Result<Vec<Settled>> {
        if ids.is_empty() && message_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin(false).await?;
        let settled = settle::<S>(&mut tx, ids, message_ids).await?;
        S::commit(tx).await?;
        Ok(settled)
    }

    async fn views_of(&self, message_id: &str) -> Result<Vec<View>> {
        let s = Stmt::uncounted(
            "SELECT viewer, level, first_at, last_at, viewed_at FROM status_views
             WHERE message_id = $1 ORDER BY level DESC, COALESCE(viewed_at, first_at), viewer",
        );
        row::map_all(&self.fetch(s.bind(message_id)).await?, |r| {
            let level = r.int("level")?;
            Ok(View {
                viewer: r.text("viewer")?,
                level,
                level_name: level_name(level),
                first_at: r.time("first_at")?.unwrap_or_default(),
                last_at: r.time("last_at")?.unwrap_or_default(),
                viewed_at: r.time("viewed_at")?,
            })
        })
    }

    async fn view_counts(&self, message_ids: &[String]) -> Result<BTreeMap<String, ViewCounts>> {
        if message_ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let sql = format!(
            "SELECT message_id, COUNT(*) AS viewers,
                    COUNT(*) FILTER (WHERE level >= 2) AS delivered,
                    COUNT(*) FILTER (WHERE level >= 3) AS viewed,
                    COUNT(*) FILTER (WHERE level >= 4) AS played
             FROM status_views WHERE {} GROUP BY message_id",
            S::in_list("message_id", "$1", "text")
        );
        let rows = self.fetch(Stmt::uncounted(sql).bind(message_ids)).await?;
        let counts = row::map_all(&rows, |r| {
            Ok((
                r.text("message_id")?,
                ViewCounts {
                    viewers: r.big("viewers")?,
                    delivered: r.big("delivered")?,
                    viewed: r.big("viewed")?,
                    played: r.big("played")?,
                },
            ))
        })?;
        Ok(counts.into_iter().collect())
    }

    async fn views_over_time(&self, since: Duration, bucket: Duration) -> Result<Vec<ViewBucket>> {
        let bucket = millis(bucket);
        if bucket < 1 {
            return Err(StoreError::Invalid(
                "views over time: bucket must be at least 1 ms".into(),
            ));
        }
        let sql = format!(
            "SELECT ({} / $2) * $2 AS start, COUNT(*) AS views FROM status_views
             WHERE viewed_at >= {} GROUP BY 1 ORDER BY 1",
            S::epoch_ms("viewed_at"),
            S::ago("$1")
        );
        let s = Stmt::uncounted(sql)
            .bind(millis(since).min(100 * 366 * 86_400_000))
            .bind(bucket);
        row::map_all(&self.fetch(s).await?, |r| {
            Ok(ViewBucket {
                start: r.millis("start")?,
                views: r.big("views")?,
            })
        })
    }

    async fn purge_views(&self, older_than: Duration) -> Result<u64> {
        let mut n = 0;
        for (table, at) in [
            ("status_views", "last_at"),
            ("status_confirmations", "confirmed_at"),
        ] {
            let sql = format!(
                "DELETE FROM {table} WHERE {at} < {} AND NOT EXISTS
                    (SELECT 1 FROM status_outbox o WHERE o.message_id = {table}.message_id)",
                S::ago("$1")
            );
            n += self
                .execute(Stmt::uncounted(sql).bind(millis(older_than)))
                .await?;
        }
        Ok(n)
    }
}

/// The one settling statement, with its history lines. On PostgreSQL, row
/// locks make it wait for a concurrent claim or look-up outcome, and the
/// state is re-checked on the row it then sees (the fence); on SQLite the
/// write lock does.
async fn settle<S: Sql>(
    tx: &mut S::Tx,
    ids: &[Uuid],
    message_ids: &[String],
) -> Result<Vec<Settled>> {
    let sql = format!(
        "UPDATE status_outbox SET state = 'posted', posted_at = {now}, updated_at = {now},
            provider_id = COALESCE(provider_id, message_id), last_error = NULL,
            last_http_status = NULL, parked_at = NULL, reconcile_attempts = 0,
            lease_owner = NULL, lease_expires_at = NULL
         WHERE ({} OR {})
           AND state IN ('in_doubt', 'pending_upload')
           AND EXISTS (SELECT 1 FROM status_confirmations c
                       WHERE c.message_id = status_outbox.message_id)
         RETURNING {} AS id, message_id, attempts",
        S::in_list("id", "$1", "uuid"),
        S::in_list("message_id", "$2", "text"),
        S::ID_TEXT,
        now = S::NOW,
    );
    let s = Stmt::uncounted(sql).bind(ids).bind(message_ids);
    let rows = S::fetch_in(tx, s).await?;
    let rows = row::map_all(&rows, |r| {
        Ok((r.text("id")?, r.int("attempts")?, r.text("message_id")?))
    })?;
    let mut settled = Vec::with_capacity(rows.len());
    let mut hist = Vec::with_capacity(rows.len());
    for (id, attempt, message_id) in rows {
        hist.push(serde_json::json!({"id": id, "attempt": attempt}));
        if let Some(id) = parse_uuid(&id) {
            settled.push(Settled { id, message_id });
        }
    }
    if !hist.is_empty() {
        let s = Stmt::uncounted(S::settled_history_sql())
            .bind(serde_json::Value::Array(hist).to_string())
            .bind(CONFIRMED_NOTE);
        S::execute_in(tx, s).await?;
    }
    Ok(settled)
}
