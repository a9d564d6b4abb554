//! The outbox store: one trait with one method per query, each taking a
//! `…Params` struct where it needs more than an id. Each query that reads
//! the same on both backends ([`SqliteStore`], [`PgStore`]) is written once
//! (`sql.rs`: a backend's dialect and how it runs a statement); each backend
//! owns the SQL that differs and its migrations. The backend is picked once
//! from the URL scheme ([`Backend`]) by [`connect`], the one place a store
//! is opened from settings.
//!
//! Every state transition is one atomic statement (or one transaction), and
//! every completion is fenced by state and attempt number so a stale worker
//! can never overwrite a newer outcome. Times are database time.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::model::{Attempt, AttemptOutcome, OutboxRow, State};

mod capabilities;
mod connect;
mod instance_leases;
mod instances;
mod outbox;
mod postgres;
mod row;
mod sql;
mod sqlite;
mod timed;
mod views;

pub use capabilities::{
    record_capabilities, Capabilities, CapabilityChange, CapabilityStore, Known, KnownId, Source,
};
pub use connect::{connect, Connected, Patience, Scrubbed};
pub use instance_leases::{InstanceLease, InstanceLeases, KeepLeasesParams, LeaseGrant};
pub use instances::{Added, InstanceRecord, InstanceStore, InstanceTable};
pub use postgres::PgStore;
pub use row::{not_allowed, OperatorAction, CONFIRMED_BY_OPERATOR};
pub(crate) use row::{parse_uuid, split_rows, Unreadable, QUARANTINE_NOTE};
pub use sqlite::SqliteStore;
pub use timed::Timed;
pub use views::{
    level_name, Applied, ApplyParams, Confirmation, InboxEvent, NewEvent, Settled, View,
    ViewBucket, ViewCounts, ViewEvent, ViewStore, CONFIRMED_NOTE,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no status with id {0}")]
    NotFound(String),
    #[error("status {id} is `{state}`: {action} is not allowed from that state")]
    NotAllowed {
        id: Uuid,
        state: State,
        action: &'static str,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Opening the database failed: the URL with its passwords redacted,
    /// and the driver's message scrubbed of them.
    #[error("{what} {url}")]
    Connect {
        what: &'static str,
        url: String,
        #[source]
        cause: Scrubbed,
    },
    /// The database has none of statusd's tables yet.
    #[error("the database has no statusd tables: run `statusd migrate` first")]
    NotMigrated,
    #[error("database call `{call}` got no answer within {after:?}")]
    Timeout {
        call: &'static str,
        after: std::time::Duration,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A new status, as `statusd enqueue` and `POST /v1/statuses` write it.
#[derive(Debug, Clone, Default)]
pub struct EnqueueParams {
    /// The row's id; a fresh UUIDv7 when not given.
    pub id: Option<Uuid>,
    /// The configured instance that posts it.
    pub instance: String,
    /// `text`, `image`, `video` or `voice`.
    pub kind: String,
    /// The kind's JSON payload, as the SQL contract describes it.
    pub payload: String,
    /// The upstream app's key: a second enqueue with it is a no-op.
    pub dedupe_key: Option<String>,
    /// Higher is claimed first within an instance.
    pub priority: i32,
    /// Not sent before this time (scheduled statuses).
    pub not_before: Option<DateTime<Utc>>,
}

impl EnqueueParams {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.unwrap_or_else(Uuid::now_v7).to_string(),
            "instance": self.instance,
            "kind": self.kind,
            "payload": self.payload,
            "dedupe_key": self.dedupe_key,
            "priority": self.priority,
            "not_before": self.not_before.map(|t| t.timestamp_millis()),
        })
    }
}

/// Many enqueues as one JSON array, the form both backends insert from.
pub(crate) fn enqueue_batch_json(p: &[EnqueueParams]) -> String {
    serde_json::Value::Array(p.iter().map(EnqueueParams::to_json).collect()).to_string()
}

/// What an enqueue did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Enqueued {
    pub id: Uuid,
    /// False when the `dedupe_key` was already present: the insert was a no-op
    /// and `id` is the existing row's.
    pub inserted: bool,
}

/// A message id for a `queued` row, made durable as `pending_upload`.
#[derive(Debug, Clone)]
pub struct AssignId {
    pub id: Uuid,
    pub message_id: String,
}

#[derive(Debug, Clone, Default)]
pub struct ClaimParams {
    /// Who takes the lease (`hostname:pid:uuid`); written to `locked_by`.
    pub owner: String,
    /// At most this many rows in all.
    pub limit: i64,
    /// How long the lease holds before a rescuer may take the rows back.
    pub lease: Duration,
    /// Instances whose rows must not be claimed (paused after 401/403).
    pub skip_instances: Vec<String>,
    /// Fresh message ids (`id_source = "local"`): when given (at least
    /// `limit` of them), `queued` rows are claimed too, each getting one of
    /// these ids in the same statement that leases it — the id is still
    /// committed before any send (rule 1), one row update sooner. Empty: only
    /// `pending_upload` rows are claimed.
    pub fresh_ids: Vec<String>,
    /// Per-instance budgets (R7). Empty: one FIFO over every instance not in
    /// `skip_instances`. Given: only the listed instances' rows, at most
    /// `limit` of each instance's in priority order (an index probe per
    /// instance, so a backlog elsewhere costs nothing), interleaved
    /// round-robin (every instance's first row, then every second row…) up
    /// to `limit` in all.
    pub budgets: Vec<InstanceBudget>,
}

/// How many rows of one instance a claim may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceBudget {
    pub instance: String,
    pub limit: i64,
}

/// Budgets as the JSON array both backends read (`[{"i": name, "n": limit}]`),
/// and the largest limit.
pub(crate) fn budgets_json(b: &[InstanceBudget]) -> (String, i64) {
    let items: Vec<serde_json::Value> = b
        .iter()
        .filter(|b| b.limit > 0)
        .map(|b| serde_json::json!({ "i": b.instance, "n": b.limit }))
        .collect();
    let max = b.iter().map(|b| b.limit).max().unwrap_or(0);
    (serde_json::Value::Array(items).to_string(), max)
}

/// A fenced move of one row out of `uploading` or `in_doubt`.
#[derive(Debug, Clone)]
pub struct Transition {
    pub id: Uuid,
    /// The attempt number the caller saw: the fence.
    pub attempt: i32,
    pub to: State,
    /// The id the provider answered with, where it assigns its own.
    pub provider_id: Option<String>,
    /// Why: the row's `last_error` / `last_http_status` after the move, and
    /// the attempt's history line.
    pub reason: Reason,
    /// `next_attempt_at = now + delay` (retry backoff, settle delay).
    pub delay: Duration,
    /// What else the move does to the row's counters and parking.
    pub effect: Effect,
}

/// Why a row moved: what its `last_error` and `last_http_status` columns
/// hold afterwards, and its attempt line records. The two go together: a
/// move that keeps the row's last error keeps both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reason {
    /// Why the send failed or is in doubt, or how it was settled.
    pub error: Option<String>,
    /// The provider's HTTP status, when an answer came at all.
    pub http_status: Option<i32>,
}

impl Reason {
    /// A reason with no HTTP status (a time-out, a look-up, a local check).
    pub fn text(error: impl Into<String>) -> Reason {
        Reason {
            error: Some(error.into()),
            http_status: None,
        }
    }

    /// The row's current `last_error` / `last_http_status`, kept as they are.
    pub fn last_of(row: &crate::model::OutboxRow) -> Reason {
        Reason {
            error: row.last_error.clone(),
            http_status: row.last_http_status,
        }
    }
}

/// What a [`Transition`] does besides moving the row. The dispatcher refunds
/// attempts; the reconciler counts failed look-ups and parks: no transition
/// does both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Effect {
    #[default]
    None,
    /// Give back the claim's attempt (instance down, Retry-After, released
    /// unsent, invalid before any send: not the row's fault).
    RefundAttempt,
    /// One more failed look-up (reconciler); `park`: it was the last one
    /// allowed, and the row is parked for an operator.
    FailedLookup { park: bool },
    /// Park the row for an operator (stays `in_doubt`, not retried) without
    /// a look-up: it cannot be looked up.
    Park,
}

impl Effect {
    fn refunds(self) -> bool {
        self == Effect::RefundAttempt
    }

    fn counts_lookup(self) -> bool {
        matches!(self, Effect::FailedLookup { .. })
    }

    /// Whether the row ends parked.
    pub fn parks(self) -> bool {
        matches!(self, Effect::Park | Effect::FailedLookup { park: true })
    }
}

impl Transition {
    pub fn new(id: Uuid, attempt: i32, to: State) -> Transition {
        Transition {
            id,
            attempt,
            to,
            provider_id: None,
            reason: Reason::default(),
            delay: Duration::ZERO,
            effect: Effect::None,
        }
    }
}

/// A batch of transitions as the JSON array both backends read in one
/// statement (`json_each` / `jsonb_to_recordset`). The effect goes as three
/// 0/1 flags, which the statements add and test.
pub(crate) fn transitions_json(ts: &[Transition]) -> String {
    /// One item, serialized straight to text (no `Value` tree: this runs
    /// for every status).
    #[derive(Serialize)]
    struct Item<'a> {
        id: Uuid,
        attempt: i32,
        to: &'a str,
        provider_id: Option<&'a str>,
        error: Option<&'a str>,
        http: Option<i32>,
        delay: i64,
        bump: i32,
        park: i32,
        refund: i32,
    }
    let items: Vec<Item<'_>> = ts
        .iter()
        .map(|t| Item {
            id: t.id,
            attempt: t.attempt,
            to: t.to.as_str(),
            provider_id: t.provider_id.as_deref(),
            error: t.reason.error.as_deref(),
            http: t.reason.http_status,
            delay: t.delay.as_millis() as i64,
            bump: t.effect.counts_lookup() as i32,
            park: t.effect.parks() as i32,
            refund: t.effect.refunds() as i32,
        })
        .collect();
    serde_json::to_string(&items).unwrap_or_else(|_| "[]".into())
}

/// Attempt-history lines as one JSON array; `started` is milliseconds since
/// the epoch.
pub(crate) fn attempts_json(done: &[&Completion]) -> String {
    #[derive(Serialize)]
    struct Line<'a> {
        id: Uuid,
        attempt: i32,
        started: i64,
        latency: i64,
        outcome: &'a str,
        http: Option<i32>,
        error: Option<&'a str>,
    }
    let lines: Vec<Line<'_>> = done
        .iter()
        .map(|c| Line {
            id: c.transition.id,
            attempt: c.transition.attempt,
            started: c.started_at.timestamp_millis(),
            latency: c.latency.as_millis() as i64,
            outcome: c.outcome.as_str(),
            http: c.transition.reason.http_status,
            error: c.transition.reason.error.as_deref(),
        })
        .collect();
    serde_json::to_string(&lines).unwrap_or_else(|_| "[]".into())
}

/// One finished send: the row's transition and the attempt's history line.
#[derive(Debug, Clone)]
pub struct Completion {
    pub transition: Transition,
    pub started_at: DateTime<Utc>,
    pub latency: Duration,
    pub outcome: AttemptOutcome,
}

#[derive(Debug, Clone, Default)]
pub struct ListParams {
    /// Only rows in this state.
    pub state: Option<State>,
    /// Only this instance's rows.
    pub instance: Option<String>,
    /// Only rows created at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// At most this many rows, newest first.
    pub limit: i64,
}

/// One row of the `status_outbox_summary` view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryRow {
    pub instance: String,
    pub state: State,
    pub count: i64,
    /// Age of the oldest due `queued`/`pending_upload` row, from when it
    /// became due; rows scheduled for later (`not_before` ahead) are not
    /// counted.
    pub oldest_age_secs: Option<f64>,
    /// `queued`/`pending_upload` rows whose `not_before` is still ahead.
    pub scheduled: i64,
}

/// An instance a daemon paused (401/403, session not working): why, and
/// since when (database time).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstancePause {
    pub instance: String,
    pub reason: String,
    pub since: DateTime<Utc>,
}

/// A recurring status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Schedule {
    pub id: Uuid,
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub instance: String,
    pub kind: String,
    pub payload: String,
    pub enabled: bool,
}

/// Which stretch of the attempts' history [`Store::activity`] counts.
#[derive(Debug, Clone, Copy)]
pub struct ActivityParams {
    /// Attempts finished within this long before the database's `now`.
    pub since: Duration,
    /// Bucket width; buckets are aligned to the Unix epoch (whole minutes
    /// for 60 s), so that two calls agree on their edges.
    pub bucket: Duration,
}

/// Attempts finished in one bucket `[start, start + bucket)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActivityBucket {
    pub start: DateTime<Utc>,
    /// Attempts whose outcome was `posted`.
    pub posted: i64,
    /// Every other outcome (retryable, in doubt, permanent, instance down).
    pub errors: i64,
}

impl ActivityParams {
    /// Both widths in whole milliseconds, refusing a bucket under 1 ms.
    pub(crate) fn millis(&self) -> Result<(i64, i64)> {
        let bucket = i64::try_from(self.bucket.as_millis()).unwrap_or(i64::MAX);
        if bucket < 1 {
            return Err(StoreError::Invalid(
                "activity: bucket must be at least 1 ms".into(),
            ));
        }
        // Capped at a century so that `now - since` stays a valid time.
        let since = i64::try_from(self.since.as_millis())
            .unwrap_or(i64::MAX)
            .min(100 * 366 * 86_400_000);
        Ok((since, bucket))
    }
}

/// The outbox's queries. See the module docs for the rules every backend
/// keeps.
/// Every store has the instance, capability and webhook queries too
/// ([`InstanceStore`], [`CapabilityStore`], [`ViewStore`]).
pub trait Store:
    InstanceStore + CapabilityStore + ViewStore + InstanceLeases + Clone + Send + Sync + 'static
{
    /// Applies the embedded migrations.
    fn migrate(&self) -> impl Future<Output = Result<()>> + Send;
    /// Round trip to the database (readiness).
    fn ping(&self) -> impl Future<Output = Result<()>> + Send;
    /// Inserts a `queued` row; a present `dedupe_key` makes it a no-op.
    fn enqueue(&self, p: EnqueueParams) -> impl Future<Output = Result<Enqueued>> + Send;
    /// Inserts many `queued` rows in one statement (dedupe keys already
    /// present are skipped); returns how many were inserted.
    fn enqueue_many(&self, p: &[EnqueueParams]) -> impl Future<Output = Result<u64>> + Send;
    /// Oldest `queued` rows, for the id assigner.
    fn queued(&self, limit: i64) -> impl Future<Output = Result<Vec<OutboxRow>>> + Send;
    /// `queued` → `pending_upload` with the given ids; returns rows moved.
    fn assign_message_ids(&self, ids: &[AssignId]) -> impl Future<Output = Result<u64>> + Send;
    /// `queued` → `invalid` with a message naming the field.
    fn mark_invalid(&self, id: Uuid, error: &str) -> impl Future<Output = Result<bool>> + Send;
    /// Leases due `pending_upload` rows (and `queued` ones with
    /// `fresh_ids`): `uploading`, `attempts + 1`.
    fn claim(&self, p: ClaimParams) -> impl Future<Output = Result<Vec<OutboxRow>>> + Send;
    /// Fenced `uploading` → outcome, with the attempts' history; returns the
    /// number of rows whose fence held.
    fn complete(&self, done: &[Completion]) -> impl Future<Output = Result<u64>> + Send;
    /// `uploading` rows whose lease expired → `in_doubt` (rule 3).
    fn rescue_expired(
        &self,
        limit: i64,
        settle: Duration,
    ) -> impl Future<Output = Result<Vec<Uuid>>> + Send;
    /// `in_doubt` rows due for a look-up (not parked).
    fn due_in_doubt(&self, limit: i64) -> impl Future<Output = Result<Vec<OutboxRow>>> + Send;
    /// Fenced `in_doubt` → outcome of a look-up.
    fn resolve_in_doubt(&self, t: &[Transition]) -> impl Future<Output = Result<u64>> + Send;
    fn get(&self, id: Uuid) -> impl Future<Output = Result<Option<OutboxRow>>> + Send;
    /// Looks a row up by id, message id or dedupe key (operator input).
    fn find(&self, key: &str) -> impl Future<Output = Result<Option<OutboxRow>>> + Send;
    fn attempts(&self, id: Uuid) -> impl Future<Output = Result<Vec<Attempt>>> + Send;
    fn list(&self, p: ListParams) -> impl Future<Output = Result<Vec<OutboxRow>>> + Send;
    fn summary(&self) -> impl Future<Output = Result<Vec<SummaryRow>>> + Send;
    /// An operator's update of one row (see [`OperatorAction`]), refused
    /// with [`StoreError::NotAllowed`] from a state that does not allow it.
    fn operator(
        &self,
        id: Uuid,
        action: OperatorAction,
    ) -> impl Future<Output = Result<OutboxRow>> + Send;
    /// Operator: [`OperatorAction::Retry`].
    fn retry(&self, id: Uuid) -> impl Future<Output = Result<OutboxRow>> + Send {
        self.operator(id, OperatorAction::Retry)
    }
    /// Operator: [`OperatorAction::ForceResend`].
    fn force_resend(&self, id: Uuid) -> impl Future<Output = Result<OutboxRow>> + Send {
        self.operator(id, OperatorAction::ForceResend)
    }
    /// Operator: [`OperatorAction::Cancel`].
    fn cancel(&self, id: Uuid) -> impl Future<Output = Result<OutboxRow>> + Send {
        self.operator(id, OperatorAction::Cancel)
    }
    /// Operator: [`OperatorAction::Confirm`].
    fn confirm_posted(&self, id: Uuid) -> impl Future<Output = Result<OutboxRow>> + Send {
        self.operator(id, OperatorAction::Confirm)
    }
    /// [`OperatorAction::Delete`], once the provider took the status down.
    fn mark_deleted(&self, id: Uuid) -> impl Future<Output = Result<OutboxRow>> + Send {
        self.operator(id, OperatorAction::Delete)
    }
    /// Deletes terminal rows not updated for `older_than`; returns how many.
    fn purge_terminal(
        &self,
        older_than: Duration,
        limit: i64,
    ) -> impl Future<Output = Result<u64>> + Send;
    fn add_schedule(&self, s: &Schedule) -> impl Future<Output = Result<()>> + Send;
    fn schedules(&self) -> impl Future<Output = Result<Vec<Schedule>>> + Send;
    fn remove_schedule(&self, name_or_id: &str) -> impl Future<Output = Result<bool>> + Send;
    /// The database's clock.
    fn now(&self) -> impl Future<Output = Result<DateTime<Utc>>> + Send;
    /// How long until the earliest `queued` or `pending_upload` row of an
    /// instance not in `skip_instances` becomes claimable (`not_before`,
    /// retry backoff), by the database clock; zero if one already is, None if
    /// there is none. An idle dispatcher sleeps exactly that long.
    /// `queued` rows count only `with_queued` (local ids: the claim takes
    /// them; with ids from the API, the id assigner moves them first).
    fn next_due(
        &self,
        skip_instances: &[String],
        with_queued: bool,
    ) -> impl Future<Output = Result<Option<Duration>>> + Send;
    /// A signal that changes when work may have arrived: PostgreSQL `LISTEN`
    /// (reconnecting on its own); on a SQLite file, any process's commit,
    /// seen by directory notifications and `PRAGMA data_version` on a
    /// connection of its own (never by touching SQLite's files).
    /// Keep the receiver across waits so that a signal between two waits is
    /// not missed.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;
    /// Whether `subscribe` signals at all (false for an in-memory SQLite
    /// database): if not, idle workers poll every `poll_interval_ms`.
    fn notifies(&self) -> bool;
    /// Finished attempts per bucket over a recent window (the dashboard's
    /// throughput and error-rate chart), oldest first. Only buckets with at
    /// least one attempt are returned.
    fn activity(
        &self,
        p: ActivityParams,
    ) -> impl Future<Output = Result<Vec<ActivityBucket>>> + Send;
    /// Records that `instance` is paused for `reason` (the daemon, when it
    /// pauses one); `since` is kept from the first call until it is cleared.
    fn set_instance_pause(
        &self,
        instance: &str,
        reason: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Forgets `instance`'s pause (it resumed).
    fn clear_instance_pause(&self, instance: &str) -> impl Future<Output = Result<()>> + Send;
    /// Paused instances, by name.
    fn instance_pauses(&self) -> impl Future<Output = Result<Vec<InstancePause>>> + Send;
}

/// The backend named by a database URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn from_url(url: &str) -> Result<Backend> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::Invalid(
                "database.url must start with sqlite:, postgres:// or postgresql://".into(),
            ))
        }
    }
}
