//! What both backends share around their queries: reading a row into the
//! model's types (column by column, so that a bad column is named), setting
//! an unreadable row aside, and the operator's updates (retry, force-resend,
//! cancel, delete), whose SQL differs between the two only in its dialect.

use std::future::Future;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::sql::Dialect;
use super::{ActivityBucket, Attempt, InstancePause, Result, Schedule, StoreError, SummaryRow};
use crate::model::{OutboxRow, State};

/// A row that could not be read (a column of the wrong type or out of
/// range, text that is not UTF-8): its id as stored, and why, naming the
/// column. One such row never fails the batch it came in: the others go on,
/// and it is set aside by [`QUARANTINE_NOTE`]'s rule.
#[derive(Debug, Clone)]
pub struct Unreadable {
    pub id: String,
    pub error: String,
}

/// What becomes of an unreadable row, the same on both backends: not yet
/// sent (`queued`, `pending_upload`, or `uploading` under the lease just
/// taken by the claim that read it) → `invalid`; `in_doubt` (maybe posted)
/// → parked for an operator; anything else is left as it is. The reason goes
/// to `last_error`.
pub(crate) const QUARANTINE_NOTE: &str = "cannot be read";

/// Splits decoded rows into readable ones and unreadable ones.
pub(crate) fn split_rows<R>(
    rows: &[R],
    decode: impl Fn(&R) -> std::result::Result<OutboxRow, Unreadable>,
) -> (Vec<OutboxRow>, Vec<Unreadable>) {
    let mut good = Vec::with_capacity(rows.len());
    let mut bad = Vec::new();
    for r in rows {
        match decode(r) {
            Ok(row) => good.push(row),
            Err(u) => bad.push(u),
        }
    }
    (good, bad)
}

/// The message for a column that could not be decoded.
pub(crate) fn column_error(column: &str, e: impl std::fmt::Display) -> String {
    format!("{column}: {QUARANTINE_NOTE} ({e})")
}

/// Operator input naming a row: its UUID, message id or dedupe key.
pub(crate) fn parse_uuid(s: &str) -> Option<Uuid> {
    Uuid::parse_str(s.trim()).ok()
}

/// What an operator action may do from each state (shared by both backends
/// so that they refuse the same things with the same message).
pub fn not_allowed(row: &OutboxRow, action: &'static str) -> StoreError {
    StoreError::NotAllowed {
        id: row.id,
        state: row.state,
        action,
    }
}

/// `IN ('queued', …)`: a state set of [`State`]'s as SQL, so that both
/// backends' statements name the same states.
pub(crate) fn in_list(states: &[State]) -> String {
    let names: Vec<String> = states.iter().map(|s| format!("'{}'", s.as_str())).collect();
    format!("IN ({})", names.join(", "))
}

/// One column of a row of either backend, or a message naming it.
pub(crate) fn col<'r, R, T>(r: &'r R, c: &str) -> std::result::Result<T, String>
where
    R: sqlx::Row,
    T: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    r.try_get(c).map_err(|e| match e {
        sqlx::Error::ColumnDecode { source, .. } => column_error(c, source),
        e => column_error(c, e),
    })
}

/// A row as the shared mapping reads it. The plain columns (text, integers)
/// come through [`col`] alike on both backends (`plain_columns!`); ids,
/// times and the payload are stored differently and each backend reads them
/// its own way.
pub trait Columns {
    fn text(&self, c: &str) -> std::result::Result<String, String>;
    fn opt_text(&self, c: &str) -> std::result::Result<Option<String>, String>;
    fn int(&self, c: &str) -> std::result::Result<i32, String>;
    fn opt_int(&self, c: &str) -> std::result::Result<Option<i32>, String>;
    fn big(&self, c: &str) -> std::result::Result<i64, String>;
    fn opt_big(&self, c: &str) -> std::result::Result<Option<i64>, String>;
    fn opt_real(&self, c: &str) -> std::result::Result<Option<f64>, String>;
    fn flag(&self, c: &str) -> std::result::Result<bool, String>;
    /// A UUID (SQLite keeps it as text).
    fn uuid(&self, c: &str) -> std::result::Result<Uuid, String>;
    /// A time (SQLite: milliseconds since the epoch; PostgreSQL:
    /// `timestamptz`); out of range is an error.
    fn time(&self, c: &str) -> std::result::Result<Option<DateTime<Utc>>, String>;
    /// The payload as text (SQLite may hold bytes that are not UTF-8).
    fn payload(&self) -> std::result::Result<String, String>;
    /// Epoch milliseconds computed by a query (bucket starts).
    fn millis(&self, c: &str) -> std::result::Result<DateTime<Utc>, String> {
        let m = self.big(c)?;
        DateTime::from_timestamp_millis(m).ok_or_else(|| column_error(c, "out of range"))
    }
}

/// The [`Columns`] methods that read alike on both backends.
macro_rules! plain_columns {
    () => {
        fn text(&self, c: &str) -> std::result::Result<String, String> {
            crate::store::row::col(self, c)
        }
        fn opt_text(&self, c: &str) -> std::result::Result<Option<String>, String> {
            crate::store::row::col(self, c)
        }
        fn int(&self, c: &str) -> std::result::Result<i32, String> {
            crate::store::row::col(self, c)
        }
        fn opt_int(&self, c: &str) -> std::result::Result<Option<i32>, String> {
            crate::store::row::col(self, c)
        }
        fn big(&self, c: &str) -> std::result::Result<i64, String> {
            crate::store::row::col(self, c)
        }
        fn opt_big(&self, c: &str) -> std::result::Result<Option<i64>, String> {
            crate::store::row::col(self, c)
        }
        fn opt_real(&self, c: &str) -> std::result::Result<Option<f64>, String> {
            crate::store::row::col(self, c)
        }
        fn flag(&self, c: &str) -> std::result::Result<bool, String> {
            crate::store::row::col(self, c)
        }
    };
}
pub(crate) use plain_columns;

fn state(r: &impl Columns, c: &str) -> std::result::Result<State, String> {
    r.text(c)?.parse().map_err(|e| column_error(c, e))
}

/// A `status_outbox` row, or the message naming its first bad column.
pub(crate) fn outbox_row(r: &impl Columns) -> std::result::Result<OutboxRow, String> {
    Ok(OutboxRow {
        id: r.uuid("id")?,
        instance: r.text("instance")?,
        kind: r.text("kind")?,
        payload: r.payload()?,
        dedupe_key: r.opt_text("dedupe_key")?,
        message_id: r.opt_text("message_id")?,
        state: state(r, "state")?,
        priority: r.int("priority")?,
        not_before: r.time("not_before")?,
        attempts: r.int("attempts")?,
        next_attempt_at: r.time("next_attempt_at")?,
        lease_owner: r.opt_text("lease_owner")?,
        lease_expires_at: r.time("lease_expires_at")?,
        claimed_at: r.time("claimed_at")?,
        reconcile_attempts: r.int("reconcile_attempts")?,
        parked_at: r.time("parked_at")?,
        provider_id: r.opt_text("provider_id")?,
        last_error: r.opt_text("last_error")?,
        last_http_status: r.opt_int("last_http_status")?,
        created_at: r.time("created_at")?.unwrap_or_default(),
        updated_at: r.time("updated_at")?.unwrap_or_default(),
        posted_at: r.time("posted_at")?,
    })
}

/// Maps every row with `f`; the first bad column fails the whole read (the
/// tables other than the outbox are written only by statusd).
pub(crate) fn map_all<R: Columns, T>(
    rows: &[R],
    f: impl Fn(&R) -> std::result::Result<T, String>,
) -> Result<Vec<T>> {
    rows.iter()
        .map(|r| f(r).map_err(StoreError::Invalid))
        .collect()
}

/// A `status_attempts` row of status `id`.
pub(crate) fn attempt(id: Uuid, r: &impl Columns) -> std::result::Result<Attempt, String> {
    Ok(Attempt {
        status_id: id,
        attempt: r.int("attempt")?,
        started_at: r.time("started_at")?.unwrap_or_default(),
        finished_at: r.time("finished_at")?.unwrap_or_default(),
        outcome: r.text("outcome")?,
        http_status: r.opt_int("http_status")?,
        latency_ms: r.big("latency_ms")?,
        error: r.opt_text("error")?,
    })
}

/// A `status_outbox_summary` row.
pub(crate) fn summary_row(r: &impl Columns) -> std::result::Result<SummaryRow, String> {
    Ok(SummaryRow {
        instance: r.text("instance")?,
        state: state(r, "state")?,
        count: r.big("count")?,
        oldest_age_secs: r.opt_real("oldest_age_secs")?,
        scheduled: r.opt_big("scheduled")?.unwrap_or(0),
    })
}

/// A `status_schedules` row.
pub(crate) fn schedule(r: &impl Columns) -> std::result::Result<Schedule, String> {
    Ok(Schedule {
        id: r.uuid("id")?,
        name: r.text("name")?,
        cron: r.text("cron")?,
        timezone: r.text("timezone")?,
        instance: r.text("instance")?,
        kind: r.text("kind")?,
        payload: r.text("payload")?,
        enabled: r.flag("enabled")?,
    })
}

/// A `status_instance_pauses` row.
pub(crate) fn instance_pause(r: &impl Columns) -> std::result::Result<InstancePause, String> {
    Ok(InstancePause {
        instance: r.text("instance")?,
        reason: r.text("reason")?,
        since: r.time("since")?.unwrap_or_default(),
    })
}

/// One bucket of [`super::Store::activity`] (`start` in epoch milliseconds).
pub(crate) fn activity_bucket(r: &impl Columns) -> std::result::Result<ActivityBucket, String> {
    Ok(ActivityBucket {
        start: r.millis("start")?,
        posted: r.big("posted")?,
        errors: r.big("errors")?,
    })
}

/// The last error of a row an operator confirmed as shown.
pub const CONFIRMED_BY_OPERATOR: &str = "confirmed shown by an operator";

/// An operator's update of one row, refused (with the row's state named)
/// where its state does not allow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorAction {
    /// `failed`/`cancelled` (with an id) → `pending_upload`, a parked
    /// `in_doubt` row → looked up again, `invalid`/`cancelled` (without an
    /// id) → `queued` (validated again).
    Retry,
    /// `in_doubt` → `pending_upload` even though it may be posted.
    ForceResend,
    /// Any non-terminal state except `uploading` → `cancelled`.
    Cancel,
    /// `posted` → `deleted` once the provider took the status down.
    Delete,
    /// `in_doubt` → `posted`: an operator saw the status shown (a parked
    /// row the provider could not prove either way). Never sends.
    Confirm,
}

impl OperatorAction {
    /// The action's name in refusals (`… retry is not allowed …`).
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorAction::Retry => "retry",
            OperatorAction::ForceResend => "force-resend",
            OperatorAction::Cancel => "cancel",
            OperatorAction::Delete => "delete",
            OperatorAction::Confirm => "confirm",
        }
    }

    /// The store call's name (in timeouts).
    pub(crate) fn call(self) -> &'static str {
        match self {
            OperatorAction::Retry => "retry",
            OperatorAction::ForceResend => "force_resend",
            OperatorAction::Cancel => "cancel",
            OperatorAction::Delete => "mark_deleted",
            OperatorAction::Confirm => "confirm_posted",
        }
    }

    /// The update; parameter 1 is the row's id, and it returns the row.
    pub(crate) fn sql<D: Dialect>(self) -> String {
        let (now, due, cols) = (D::NOW, D::DUE_NOW, D::COLS);
        let (retryable, idle) = (in_list(&State::RETRYABLE), in_list(&State::IDLE));
        let (set, allowed) = match self {
            OperatorAction::Retry => (
                format!(
                    "state = CASE
                        WHEN state = 'in_doubt' THEN 'in_doubt'
                        WHEN message_id IS NULL THEN 'queued'
                        ELSE 'pending_upload' END,
                    parked_at = NULL, reconcile_attempts = 0,
                    attempts = CASE WHEN state = 'in_doubt' THEN attempts ELSE 0 END,
                    next_attempt_at = {due}, last_error = NULL"
                ),
                format!("(state {retryable} OR (state = 'in_doubt' AND parked_at IS NOT NULL))"),
            ),
            OperatorAction::ForceResend => (
                format!(
                    "state = 'pending_upload', parked_at = NULL,
                    reconcile_attempts = 0, next_attempt_at = {due},
                    last_error = 'operator forced a re-send'"
                ),
                "state = 'in_doubt'".to_string(),
            ),
            OperatorAction::Cancel => (
                "state = 'cancelled', parked_at = NULL,
                    last_error = 'cancelled by an operator'"
                    .to_string(),
                format!("state {idle}"),
            ),
            OperatorAction::Delete => ("state = 'deleted'".to_string(), "state = 'posted'".into()),
            // As a webhook confirmation settles a row (the provider id,
            // unknown where the provider assigns its own, falls back to
            // ours); a look-up still running is fenced out by the state.
            OperatorAction::Confirm => (
                format!(
                    "state = 'posted', posted_at = {now}, parked_at = NULL,
                    provider_id = COALESCE(provider_id, message_id),
                    reconcile_attempts = 0, lease_owner = NULL, lease_expires_at = NULL,
                    last_http_status = NULL, last_error = '{CONFIRMED_BY_OPERATOR}'"
                ),
                "state = 'in_doubt'".into(),
            ),
        };
        format!(
            "UPDATE status_outbox SET {set}, updated_at = {now}
             WHERE id = $1 AND {allowed}
             RETURNING {cols}"
        )
    }

    /// The action's answer: the updated row (`updated`, read back), or why
    /// not, by the row as it is now (`current`, read only on a refusal).
    pub(crate) async fn outcome(
        self,
        id: Uuid,
        updated: Option<Vec<OutboxRow>>,
        current: impl Future<Output = Result<Option<OutboxRow>>>,
    ) -> Result<OutboxRow> {
        match updated {
            Some(mut rows) => rows
                .pop()
                .ok_or_else(|| StoreError::Invalid(format!("row {id} {QUARANTINE_NOTE}"))),
            None => match current.await? {
                Some(current) => Err(not_allowed(&current, self.as_str())),
                None => Err(StoreError::NotFound(id.to_string())),
            },
        }
    }
}
