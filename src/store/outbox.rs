//! The outbox's queries, written once for both backends (see `store::sql`);
//! the claims, the batched outcomes and the wake-ups are each backend's own
//! ([`Sql`]).

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::row::{self, Columns, OperatorAction};
use super::sql::{activity_sql, purge_sql, Sql, Stmt};
use super::{
    parse_uuid, ActivityBucket, ActivityParams, AssignId, ClaimParams, Completion, EnqueueParams,
    Enqueued, InstancePause, ListParams, Result, Schedule, Store, StoreError, SummaryRow,
    Transition,
};
use crate::model::{Attempt, OutboxRow, State};

/// `SELECT {COLS} FROM status_outbox {rest}`.
fn select<S: Sql>(rest: &str) -> Stmt {
    Stmt::new(format!("SELECT {} FROM status_outbox {rest}", S::COLS))
}

/// A fenced batch of transitions out of `from`, with the history lines of
/// `done` whose fence held, in one transaction.
async fn transition<S: Sql>(
    s: &S,
    from: State,
    ts: &[Transition],
    done: &[Completion],
) -> Result<u64> {
    if ts.is_empty() {
        return Ok(0);
    }
    let items = super::transitions_json(ts);
    let mut tx = s.begin(true).await?;
    let moved = Stmt::new(S::transition_sql())
        .bind(items)
        .bind(from.as_str());
    let moved = S::fetch_in(&mut tx, moved).await?;
    let applied: HashSet<Uuid> = row::map_all(&moved, |r| r.text("id"))?
        .iter()
        .filter_map(|id| parse_uuid(id))
        .collect();
    // History records the attempts whose fence held; a stale worker's
    // late answer changed nothing and is not an attempt of this row.
    let done: Vec<&Completion> = done
        .iter()
        .filter(|c| applied.contains(&c.transition.id))
        .collect();
    if !done.is_empty() {
        let hist = super::attempts_json(&done);
        S::execute_in(&mut tx, Stmt::new(S::HISTORY).bind(hist)).await?;
    }
    S::commit(tx).await?;
    Ok(applied.len() as u64)
}

impl<S: Sql> Store for S {
    async fn migrate(&self) -> Result<()> {
        Sql::migrate(self).await
    }

    async fn ping(&self) -> Result<()> {
        self.execute(Stmt::new("SELECT 1")).await?;
        Ok(())
    }

    async fn enqueue(&self, p: EnqueueParams) -> Result<Enqueued> {
        let id = p.id.unwrap_or_else(Uuid::now_v7);
        // The payload goes in as text (cast on PostgreSQL), so malformed
        // JSON is a clear insert error naming the column.
        let sql = format!(
            "INSERT INTO status_outbox (id, instance, kind, payload, dedupe_key, priority, not_before)
             VALUES ($1, $2, $3, {}, $5, $6, $7)
             ON CONFLICT (dedupe_key) DO NOTHING",
            S::typed("$4", "jsonb")
        );
        let s = Stmt::new(sql)
            .bind(id)
            .bind(&p.instance)
            .bind(&p.kind)
            .bind(&p.payload)
            .bind(&p.dedupe_key)
            .bind(p.priority)
            .bind(p.not_before);
        if self.execute(s).await? == 1 {
            return Ok(Enqueued { id, inserted: true });
        }
        let sql = format!(
            "SELECT {} AS id FROM status_outbox WHERE dedupe_key = $1",
            S::ID_TEXT
        );
        let existing = self.fetch(Stmt::new(sql).bind(&p.dedupe_key)).await?;
        let id = row::map_all(&existing, |r| r.text("id"))?;
        match id.first().and_then(|id| parse_uuid(id)) {
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
        self.execute(Stmt::new(S::ENQUEUE_MANY).bind(super::enqueue_batch_json(p)))
            .await
    }

    async fn queued(&self, limit: i64) -> Result<Vec<OutboxRow>> {
        let s = select::<S>("WHERE state = 'queued' ORDER BY created_at LIMIT $1");
        self.outbox_rows(s.bind(limit)).await
    }

    async fn assign_message_ids(&self, ids: &[AssignId]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        Sql::assign_message_ids(self, ids).await
    }

    async fn mark_invalid(&self, id: Uuid, error: &str) -> Result<bool> {
        let sql = format!(
            "UPDATE status_outbox SET state = 'invalid', last_error = $2, updated_at = {}
             WHERE id = $1 AND state = 'queued'",
            S::NOW
        );
        Ok(self.execute(Stmt::new(sql).bind(id).bind(error)).await? == 1)
    }

    async fn claim(&self, p: ClaimParams) -> Result<Vec<OutboxRow>> {
        match p.budgets.as_slice() {
            [] => self.claim_fifo(&p).await,
            [only] => {
                let limited = ClaimParams {
                    limit: p.limit.min(only.limit),
                    ..p.clone()
                };
                self.claim_one(&limited, &only.instance).await
            }
            _ => self.claim_budgeted(&p).await,
        }
    }

    async fn complete(&self, done: &[Completion]) -> Result<u64> {
        let ts: Vec<Transition> = done.iter().map(|c| c.transition.clone()).collect();
        transition(self, State::Uploading, &ts, done).await
    }

    async fn rescue_expired(&self, limit: i64, settle: Duration) -> Result<Vec<Uuid>> {
        Sql::rescue_expired(self, limit, settle).await
    }

    async fn due_in_doubt(&self, limit: i64) -> Result<Vec<OutboxRow>> {
        let s = select::<S>(&format!(
            "WHERE state = 'in_doubt' AND parked_at IS NULL AND next_attempt_at <= {}
             ORDER BY next_attempt_at LIMIT $1",
            S::NOW
        ));
        self.outbox_rows(s.bind(limit)).await
    }

    async fn resolve_in_doubt(&self, ts: &[Transition]) -> Result<u64> {
        transition(self, State::InDoubt, ts, &[]).await
    }

    async fn get(&self, id: Uuid) -> Result<Option<OutboxRow>> {
        let s = select::<S>("WHERE id = $1").bind(id);
        Ok(self.outbox_rows(s).await?.pop())
    }

    async fn find(&self, key: &str) -> Result<Option<OutboxRow>> {
        let s = select::<S>("WHERE id = $1 OR message_id = $2 OR dedupe_key = $2 LIMIT 1")
            .bind(parse_uuid(key))
            .bind(key.trim());
        Ok(self.outbox_rows(s).await?.pop())
    }

    async fn attempts(&self, id: Uuid) -> Result<Vec<Attempt>> {
        let s = Stmt::new(
            "SELECT attempt, started_at, finished_at, outcome, http_status, latency_ms, error
             FROM status_attempts WHERE status_id = $1 ORDER BY started_at, attempt",
        );
        let rows = self.fetch(s.bind(id)).await?;
        row::map_all(&rows, |r| row::attempt(id, r))
    }

    async fn list(&self, p: ListParams) -> Result<Vec<OutboxRow>> {
        let (state, instance, since) = (
            S::typed("$1", "text"),
            S::typed("$2", "text"),
            S::typed("$3", "timestamptz"),
        );
        let s = select::<S>(&format!(
            "WHERE ({state} IS NULL OR state = $1) AND ({instance} IS NULL OR instance = $2)
               AND ({since} IS NULL OR created_at >= $3)
             ORDER BY created_at DESC LIMIT $4"
        ));
        let s = s
            .bind(p.state.map(|s| s.as_str()))
            .bind(&p.instance)
            .bind(p.since)
            .bind(p.limit);
        self.outbox_rows(s).await
    }

    async fn summary(&self) -> Result<Vec<SummaryRow>> {
        let s = Stmt::new(
            "SELECT instance, state, count, oldest_age_secs, scheduled FROM status_outbox_summary
             ORDER BY instance, state",
        );
        row::map_all(&self.fetch(s).await?, row::summary_row)
    }

    async fn operator(&self, id: Uuid, action: OperatorAction) -> Result<OutboxRow> {
        let r = self.fetch(Stmt::new(action.sql::<S>()).bind(id)).await?;
        let updated = match r.is_empty() {
            false => Some(self.readable(&r, None).await?),
            true => None,
        };
        action.outcome(id, updated, self.get(id)).await
    }

    async fn purge_terminal(&self, older_than: Duration, limit: i64) -> Result<u64> {
        let s = Stmt::new(purge_sql::<S>()).bind(older_than.as_millis() as i64);
        self.execute(s.bind(limit)).await
    }

    async fn add_schedule(&self, s: &Schedule) -> Result<()> {
        let sql = format!(
            "INSERT INTO status_schedules (id, name, cron, timezone, instance, kind, payload, enabled)
             VALUES ($1, $2, $3, $4, $5, $6, {}, $8)",
            S::typed("$7", "jsonb")
        );
        let q = Stmt::new(sql)
            .bind(s.id)
            .bind(&s.name)
            .bind(&s.cron)
            .bind(&s.timezone)
            .bind(&s.instance)
            .bind(&s.kind)
            .bind(&s.payload)
            .bind(s.enabled);
        self.execute(q).await?;
        Ok(())
    }

    async fn schedules(&self) -> Result<Vec<Schedule>> {
        let s = Stmt::new(
            "SELECT id, name, cron, timezone, instance, kind, CAST(payload AS TEXT) AS payload,
                    enabled
             FROM status_schedules ORDER BY name",
        );
        row::map_all(&self.fetch(s).await?, row::schedule)
    }

    async fn remove_schedule(&self, name_or_id: &str) -> Result<bool> {
        let s = Stmt::new("DELETE FROM status_schedules WHERE name = $1 OR id = $2")
            .bind(name_or_id)
            .bind(parse_uuid(name_or_id));
        Ok(self.execute(s).await? > 0)
    }

    async fn now(&self) -> Result<DateTime<Utc>> {
        let rows = self
            .fetch(Stmt::new(format!("SELECT {} AS now", S::NOW)))
            .await?;
        let now = row::map_all(&rows, |r| r.time("now"))?;
        Ok(now.into_iter().flatten().next().unwrap_or_default())
    }

    async fn next_due(&self, skip: &[String], with_queued: bool) -> Result<Option<Duration>> {
        Sql::next_due(self, skip, with_queued).await
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        Sql::subscribe(self)
    }

    fn notifies(&self) -> bool {
        Sql::notifies(self)
    }

    async fn activity(&self, p: ActivityParams) -> Result<Vec<ActivityBucket>> {
        let (since, bucket) = p.millis()?;
        let rows = self
            .fetch(Stmt::new(activity_sql::<S>()).bind(since).bind(bucket))
            .await?;
        row::map_all(&rows, row::activity_bucket)
    }

    async fn set_instance_pause(&self, instance: &str, reason: &str) -> Result<()> {
        let sql = format!(
            "INSERT INTO status_instance_pauses (instance, reason) VALUES ($1, $2)
             ON CONFLICT (instance) DO UPDATE SET reason = excluded.reason, updated_at = {}",
            S::NOW
        );
        self.execute(Stmt::uncounted(sql).bind(instance).bind(reason))
            .await?;
        Ok(())
    }

    async fn clear_instance_pause(&self, instance: &str) -> Result<()> {
        let s = Stmt::uncounted("DELETE FROM status_instance_pauses WHERE instance = $1");
        self.execute(s.bind(instance)).await?;
        Ok(())
    }

    async fn instance_pauses(&self) -> Result<Vec<InstancePause>> {
        let s = Stmt::uncounted(
            "SELECT instance, reason, since FROM status_instance_pauses ORDER BY instance",
        );
        row::map_all(&self.fetch(s).await?, row::instance_pause)
    }
}
