//! Operator actions offered by both the CLI and the admin API: find a row by
//! any of its keys, validated enqueue, retry / force-resend, cancel, delete.
//! One implementation each, so that `statusd retry` and
//! `POST /v1/statuses/{id}/retry` cannot disagree on what is allowed.
//!
//! The state rules themselves are the store's (fenced updates that refuse a
//! row in the wrong state); this module resolves keys, validates input and
//! asks the provider where an action needs it (delete).

use std::sync::Arc;

pub mod capabilities;
pub mod instances;

use chrono::{DateTime, Utc};

use tokio::sync::Notify;

use crate::config::check_configured;
use crate::instance::{Instances, Registry};
use crate::model::{OutboxRow, State, StatusBody};
use crate::provider::{Provider, SendOutcome};
use crate::store::{EnqueueParams, Enqueued, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("no status with id, message id or dedupe key `{0}`")]
    NotFound(String),
    /// Bad input; the message names the field at fault.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the provider did not delete the status: {0}")]
    Provider(String),
    /// An instance command named an instance the table does not have.
    #[error("{0}")]
    NoInstance(String),
}

/// A row before and after an operator action.
#[derive(Debug, Clone)]
pub struct Change {
    pub before: OutboxRow,
    pub after: OutboxRow,
}

/// The instances configured here: the configuration file's (`file`) and
/// the instance table's that are not removed.
pub async fn configured<S: Store>(
    store: &S,
    file: &[String],
) -> Result<std::collections::BTreeSet<String>, OpError> {
    let table = store.instance_table().await?;
    let mut names: std::collections::BTreeSet<String> = file.iter().cloned().collect();
    names.extend(
        table
            .rows
            .into_iter()
            .filter(|r| r.removed_at.is_none())
            .map(|r| r.name),
    );
    Ok(names)
}

/// Operator input (row id, message id or dedupe key) → row.
pub async fn find<S: Store>(store: &S, key: &str) -> Result<OutboxRow, OpError> {
    store
        .find(key)
        .await?
        .ok_or_else(|| OpError::NotFound(key.to_string()))
}

/// Enqueues a status after the checks the daemon would make: the instance
/// is one of `configured` (None: not known here, the daemon decides) and
/// the payload is valid for its kind.
pub async fn enqueue<'a, S: Store>(
    store: &S,
    configured: Option<impl IntoIterator<Item = &'a String>>,
    p: EnqueueParams,
) -> Result<Enqueued, OpError> {
    if let Some(names) = configured {
        check_configured(&p.instance, names).map_err(|e| OpError::Invalid(e.to_string()))?;
    }
    StatusBody::parse(&p.kind, &p.payload).map_err(|e| OpError::Invalid(e.to_string()))?;
    Ok(store.enqueue(p).await?)
}

/// Sends a failed (or, with `force_resend`, an in-doubt) row back to the
/// queue.
pub async fn retry<S: Store>(
    store: &S,
    before: OutboxRow,
    force_resend: bool,
) -> Result<Change, OpError> {
    let after = if force_resend {
        store.force_resend(before.id).await?
    } else {
        store.retry(before.id).await?
    };
    Ok(Change { before, after })
}

/// Marks an in-doubt row `posted`: the operator saw it shown (the
/// provider could not prove it either way). Nothing is sent.
pub async fn confirm<S: Store>(store: &S, before: OutboxRow) -> Result<Change, OpError> {
    let after = store.confirm_posted(before.id).await?;
    Ok(Change { before, after })
}

pub async fn cancel<S: Store>(store: &S, before: OutboxRow) -> Result<Change, OpError> {
    let after = store.cancel(before.id).await?;
    Ok(Change { before, after })
}

/// Takes a posted status down through its instance, then records `deleted`.
pub async fn delete<S: Store, P: Provider>(
    store: &S,
    instances: &Instances<P>,
    before: OutboxRow,
) -> Result<Change, OpError> {
    if before.state != State::Posted {
        return Err(crate::store::not_allowed(&before, "delete").into());
    }
    let inst = instances.get(&before.instance).ok_or_else(|| {
        OpError::Provider(format!(
            "instances.{}: not configured; deleting needs the instance's base_url and access token",
            before.instance
        ))
    })?;
    let id = before
        .provider_id
        .as_deref()
        .or(before.message_id.as_deref())
        .unwrap_or_default();
    match inst.provider.delete_status(id).await {
        SendOutcome::Posted { .. } => {
            let after = store.mark_deleted(before.id).await?;
            Ok(Change { before, after })
        }
        other => Err(OpError::Provider(format!(
            "{} ({})",
            other.reason().unwrap_or(other.label()),
            other.label()
        ))),
    }
}

/// The operator actions over one process's store and instances, nudging
/// the daemon's workers (if one runs here) when rows become claimable.
pub struct Operator<S, P> {
    pub store: S,
    pub instances: Arc<Registry<P>>,
    /// The daemon's in-process wake-up; a fresh one when no daemon runs.
    pub work: Arc<Notify>,
}

impl<S: Store, P: Provider> Operator<S, P> {
    pub fn new(store: S, instances: Arc<Registry<P>>, work: Arc<Notify>) -> Operator<S, P> {
        Operator {
            store,
            instances,
            work,
        }
    }

    pub async fn find(&self, key: &str) -> Result<OutboxRow, OpError> {
        find(&self.store, key).await
    }

    pub async fn enqueue(&self, p: EnqueueParams) -> Result<Enqueued, OpError> {
        let done = enqueue(&self.store, Some(&self.instances.enqueue_names()), p).await?;
        self.work.notify_waiters();
        Ok(done)
    }

    pub async fn retry(&self, row: OutboxRow, force_resend: bool) -> Result<Change, OpError> {
        let c = retry(&self.store, row, force_resend).await?;
        self.work.notify_waiters();
        Ok(c)
    }

    pub async fn cancel(&self, row: OutboxRow) -> Result<Change, OpError> {
        cancel(&self.store, row).await
    }

    pub async fn confirm(&self, row: OutboxRow) -> Result<Change, OpError> {
        confirm(&self.store, row).await
    }

    pub async fn delete(&self, row: OutboxRow) -> Result<Change, OpError> {
        delete(&self.store, &self.instances.snapshot().running, row).await
    }
}

/// `--since`: a duration before now (database time), or a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    Ago(chrono::Duration),
    At(DateTime<Utc>),
}

impl Since {
    /// Parses `30s`, `30m`, `1h`, `2d`, `1w` or an RFC 3339 time.
    pub fn parse(s: &str) -> Result<Since, String> {
        let bad = || {
            format!("`{s}` is not a duration like 30m, 1h, 2d or an RFC 3339 time like 2024-06-01T08:00:00Z")
        };
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Ok(Since::At(t.with_timezone(&Utc)));
        }
        let s = s.trim();
        let unit_at = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (num, unit) = s.split_at(unit_at);
        let n: i64 = num.parse().map_err(|_| bad())?;
        let d = match unit {
            "s" => chrono::Duration::try_seconds(n),
            "m" => chrono::Duration::try_minutes(n),
            "h" => chrono::Duration::try_hours(n),
            "d" => chrono::Duration::try_days(n),
            "w" => chrono::Duration::try_weeks(n),
            _ => None,
        };
        d.map(Since::Ago).ok_or_else(bad)
    }

    /// The point in time, given the database's clock.
    pub fn resolve(self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Since::Ago(d) => now - d,
            Since::At(t) => t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_durations_and_times() {
        assert_eq!(
            Since::parse("30m"),
            Ok(Since::Ago(chrono::Duration::minutes(30)))
        );
        assert_eq!(
            Since::parse("2d"),
            Ok(Since::Ago(chrono::Duration::days(2)))
        );
        assert!(matches!(
            Since::parse("2024-06-01T08:00:00Z"),
            Ok(Since::At(_))
        ));
        for bad in ["", "h", "5", "5y", "-5m", "yesterday", "99999999999999999w"] {
            assert!(Since::parse(bad).is_err(), "{bad}");
        }
    }
}
