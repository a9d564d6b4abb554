//! One home for each query that reads the same on both backends: a backend
//! says how it spells what differs ([`Dialect`]: its clock, its time spans,
//! its list parameters) and how it runs a statement ([`Sql`]: a [`Stmt`] of
//! SQL and [`Arg`]s, bound the way its columns store them), and the queries
//! are written once over any [`Sql`] (`store::outbox`, `store::instances`,
//! `store::capabilities`, `store::instance_leases`, `store::views`).
//!
//! What genuinely differs stays with its backend: the claims, the batched
//! outcomes, the JSON batch inserts, wake-ups (`LISTEN`, wake files).
//! Placeholders are `$1`, `$2`… on both (sqlx reads `$N` on SQLite too).

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::row::{in_list, Columns, Unreadable};
use super::{AssignId, ClaimParams, Result};
use crate::model::{OutboxRow, State};

/// A value bound to a statement. Ids, times and lists are stored
/// differently by the two backends, and each binds them its own way.
#[derive(Debug, Clone)]
pub enum Arg {
    Text(Option<String>),
    Int(Option<i64>),
    Int32(Option<i32>),
    Bool(bool),
    /// SQLite: text; PostgreSQL: `uuid`.
    Id(Option<Uuid>),
    /// SQLite: epoch milliseconds; PostgreSQL: `timestamptz`.
    Time(Option<DateTime<Utc>>),
    /// SQLite: a JSON array (read by `json_each`); PostgreSQL: `text[]`.
    Texts(Vec<String>),
    /// SQLite: a JSON array of texts; PostgreSQL: `uuid[]`.
    Ids(Vec<Uuid>),
    /// SQLite: a JSON array; PostgreSQL: `bigint[]`.
    Ints(Vec<i64>),
}

impl From<&str> for Arg {
    fn from(v: &str) -> Arg {
        Arg::Text(Some(v.to_string()))
    }
}
impl From<&String> for Arg {
    fn from(v: &String) -> Arg {
        Arg::Text(Some(v.clone()))
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Arg {
        Arg::Text(Some(v))
    }
}
impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Arg {
        Arg::Text(v.map(str::to_string))
    }
}
impl From<&Option<String>> for Arg {
    fn from(v: &Option<String>) -> Arg {
        Arg::Text(v.clone())
    }
}
impl From<i64> for Arg {
    fn from(v: i64) -> Arg {
        Arg::Int(Some(v))
    }
}
impl From<i32> for Arg {
    fn from(v: i32) -> Arg {
        Arg::Int32(Some(v))
    }
}
impl From<bool> for Arg {
    fn from(v: bool) -> Arg {
        Arg::Bool(v)
    }
}
impl From<Uuid> for Arg {
    fn from(v: Uuid) -> Arg {
        Arg::Id(Some(v))
    }
}
impl From<Option<Uuid>> for Arg {
    fn from(v: Option<Uuid>) -> Arg {
        Arg::Id(v)
    }
}
impl From<DateTime<Utc>> for Arg {
    fn from(v: DateTime<Utc>) -> Arg {
        Arg::Time(Some(v))
    }
}
impl From<Option<DateTime<Utc>>> for Arg {
    fn from(v: Option<DateTime<Utc>>) -> Arg {
        Arg::Time(v)
    }
}
impl From<&[String]> for Arg {
    fn from(v: &[String]) -> Arg {
        Arg::Texts(v.to_vec())
    }
}
impl From<&[Uuid]> for Arg {
    fn from(v: &[Uuid]) -> Arg {
        Arg::Ids(v.to_vec())
    }
}
impl From<&[i64]> for Arg {
    fn from(v: &[i64]) -> Arg {
        Arg::Ints(v.to_vec())
    }
}

/// A span in whole milliseconds (the unit both backends' statements take).
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// One statement and its arguments, in order (`$1`, `$2`…).
#[derive(Debug, Clone)]
pub struct Stmt {
    pub(crate) sql: String,
    pub(crate) args: Vec<Arg>,
    /// Counted in SQLite's `statusd_db_statements_total` (the outbox's and
    /// the instance registry's statements; not the capability, lease and
    /// webhook ones, as before they were shared).
    pub(crate) counted: bool,
}

impl Stmt {
    /// A counted statement.
    pub(crate) fn new(sql: impl Into<String>) -> Stmt {
        Stmt {
            sql: sql.into(),
            args: Vec::new(),
            counted: true,
        }
    }

    /// A statement left out of SQLite's statement counter.
    pub(crate) fn uncounted(sql: impl Into<String>) -> Stmt {
        Stmt {
            counted: false,
            ..Stmt::new(sql)
        }
    }

    pub(crate) fn bind(mut self, a: impl Into<Arg>) -> Stmt {
        self.args.push(a.into());
        self
    }
}

/// How a backend spells what its statements need.
pub trait Dialect {
    /// The database clock, as the backend stores times.
    const NOW: &'static str;
    /// A `next_attempt_at` that makes a row due at once.
    const DUE_NOW: &'static str;
    /// `id` as text (compared with a text parameter, read as text).
    const ID_TEXT: &'static str;
    /// The columns an outbox row is read from.
    const COLS: &'static str;
    /// What turns a number of milliseconds into a span of [`Dialect::NOW`]
    /// (nothing where times are milliseconds).
    const MILLIS: &'static str;
    /// `updated_at` of a changed `status_instances` row.
    const TOUCH: &'static str;
    /// `fresh`: whether an upsert into `status_instances` inserted.
    const FRESH: &'static str;

    /// `$p` given a type (`$p::jsonb`) where the backend needs one.
    fn typed(p: &str, ty: &str) -> String;
    /// A time column as epoch milliseconds.
    fn epoch_ms(col: &str) -> String;
    /// `col` is in the list parameter `p` of SQL type `ty` ([`Arg::Texts`],
    /// [`Arg::Ids`], [`Arg::Ints`]).
    fn in_list(col: &str, p: &str, ty: &str) -> String;
    /// The list parameter `p` as a table `alias` with one column `value`.
    fn list_table(p: &str, ty: &str, alias: &str) -> String;

    /// `col` is not in the list parameter `p`.
    fn not_in_list(col: &str, p: &str, ty: &str) -> String {
        format!("NOT ({})", Self::in_list(col, p, ty))
    }

    /// `$p` milliseconds before now.
    fn ago(p: &str) -> String {
        format!("{} - {p}{}", Self::NOW, Self::MILLIS)
    }
}

/// How a backend runs a [`Stmt`], and the queries it spells its own way.
/// The store traits are implemented once for every `Sql`.
pub trait Sql: Dialect + Clone + Send + Sync + 'static {
    type Row: Columns + Send + Sync + 'static;
    /// A write transaction (SQLite: `BEGIN IMMEDIATE`).
    type Tx: Send;

    fn fetch(&self, s: Stmt) -> impl Future<Output = Result<Vec<Self::Row>>> + Send;
    /// Rows affected.
    fn execute(&self, s: Stmt) -> impl Future<Output = Result<u64>> + Send;
    /// A write transaction; `counted`: its `BEGIN` counts as a statement.
    fn begin(&self, counted: bool) -> impl Future<Output = Result<Self::Tx>> + Send;
    fn fetch_in(tx: &mut Self::Tx, s: Stmt) -> impl Future<Output = Result<Vec<Self::Row>>> + Send;
    fn execute_in(tx: &mut Self::Tx, s: Stmt) -> impl Future<Output = Result<u64>> + Send;
    fn commit(tx: Self::Tx) -> impl Future<Output = Result<()>> + Send;

    /// One outbox row, or why it cannot be read.
    fn readable_row(r: &Self::Row) -> std::result::Result<OutboxRow, Unreadable>;

    // What differs, each in its backend's module.
    fn migrate(&self) -> impl Future<Output = Result<()>> + Send;
    /// `INSERT … SELECT` of a batch from the JSON array `$1`
    /// (`enqueue_batch_json`).
    const ENQUEUE_MANY: &'static str;
    fn assign_message_ids(&self, ids: &[AssignId]) -> impl Future<Output = Result<u64>> + Send;
    /// One FIFO over every instance not in `skip_instances` (no budgets).
    fn claim_fifo(&self, p: &ClaimParams) -> impl Future<Output = Result<Vec<OutboxRow>>> + Send;
    /// Only `instance`'s rows, at most `p.limit`: the FIFO's shape on that
    /// instance's partial indexes, without the budgeted claim's ranking
    /// across instances (one instance needing rows: a single-instance
    /// deployment, always).
    fn claim_one(
        &self,
        p: &ClaimParams,
        instance: &str,
    ) -> impl Future<Output = Result<Vec<OutboxRow>>> + Send;
    /// Only the budgeted instances' rows ([`ClaimParams::budgets`]).
    fn claim_budgeted(
        &self,
        p: &ClaimParams,
    ) -> impl Future<Output = Result<Vec<OutboxRow>>> + Send;
    fn next_due(
        &self,
        skip: &[String],
        with_queued: bool,
    ) -> impl Future<Output = Result<Option<Duration>>> + Send;
    /// The fenced batch of transitions from the JSON array `$1`
    /// (`transitions_json`) out of state `$2`, returning the moved rows'
    /// `id` as text.
    fn transition_sql() -> String;
    /// Attempt-history lines from the JSON array `$1` (`attempts_json`).
    const HISTORY: &'static str;
    fn rescue_expired(
        &self,
        limit: i64,
        settle: Duration,
    ) -> impl Future<Output = Result<Vec<Uuid>>> + Send;
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;
    fn notifies(&self) -> bool;
    fn subscribe_instances(&self) -> tokio::sync::watch::Receiver<u64>;
    /// `INSERT … SELECT` of webhook events from the JSON array `$1`, in order.
    const ACCEPT_MANY: &'static str;
    /// The views upsert from the JSON array `$1` (see `views::merged`).
    const UPSERT_VIEWS: &'static str;
    /// The confirmations insert from the JSON array `$1`.
    const INSERT_CONFIRMATIONS: &'static str;
    /// Attempt-history lines of settled rows from the JSON array `$1`
    /// (`id`, `attempt`), with the note `$2`.
    fn settled_history_sql() -> String;

    /// Decodes each row on its own; unreadable ones are set aside (see
    /// [`super::QUARANTINE_NOTE`]) and the rest returned. `owner`: the claim that
    /// just leased these rows, whose unreadable ones were never sent.
    fn readable(
        &self,
        rows: &[Self::Row],
        owner: Option<&str>,
    ) -> impl Future<Output = Result<Vec<OutboxRow>>> + Send {
        let (good, bad) = super::split_rows(rows, Self::readable_row);
        let owner = owner.map(str::to_string);
        async move {
            for u in &bad {
                tracing::warn!(row_id = %u.id, error = %u.error, "unreadable row set aside");
                let s = Stmt::new(quarantine_sql::<Self>())
                    .bind(&u.id)
                    .bind(&u.error)
                    .bind(&owner);
                self.execute(s).await?;
            }
            Ok(good)
        }
    }

    /// Runs a claim statement and returns the rows it leased, readable ones
    /// in priority order (RETURNING's order is unspecified). Its parameters:
    /// `$1` the lease owner, `$2` the lease in milliseconds, `$3` the
    /// instances (skipped, or the budgets as JSON), `$4` the limit, `$5` the
    /// fresh message ids, then `extra`. Leased and committed: a row that
    /// cannot be read was never sent, and is set aside under this lease.
    fn claimed(
        &self,
        sql: String,
        p: &ClaimParams,
        instances: Arg,
        extra: Option<i64>,
    ) -> impl Future<Output = Result<Vec<OutboxRow>>> + Send {
        let mut s = Stmt::new(sql)
            .bind(&p.owner)
            .bind(millis(p.lease))
            .bind(instances)
            .bind(p.limit)
            .bind(p.fresh_ids.as_slice());
        if let Some(x) = extra {
            s = s.bind(x);
        }
        let owner = p.owner.clone();
        async move {
            let raw = self.fetch(s).await?;
            let mut rows = self.readable(&raw, Some(&owner)).await?;
            rows.sort_by(|a, b| {
                b.priority
                    .cmp(&a.priority)
                    .then(a.created_at.cmp(&b.created_at))
            });
            Ok(rows)
        }
    }

    /// Outbox rows of a query selecting [`Dialect::COLS`].
    fn outbox_rows(&self, s: Stmt) -> impl Future<Output = Result<Vec<OutboxRow>>> + Send {
        async move {
            let rows = self.fetch(s).await?;
            self.readable(&rows, None).await
        }
    }
}

/// Sets an unreadable row aside by [`super::QUARANTINE_NOTE`]'s rule; parameters:
/// the id as text, the reason, the claim's lease owner.
fn quarantine_sql<D: Dialect>() -> String {
    let (now, id, idle) = (D::NOW, D::ID_TEXT, in_list(&State::IDLE));
    format!(
        "UPDATE status_outbox SET
            state = CASE WHEN state = 'in_doubt' THEN state ELSE 'invalid' END,
            parked_at = CASE WHEN state = 'in_doubt' THEN {now} END,
            lease_owner = NULL, lease_expires_at = NULL,
            last_error = $2, updated_at = {now}
         WHERE {id} = $1
           AND (state {idle}
                OR (state = 'uploading' AND lease_owner = $3))"
    )
}

/// Deletes terminal rows not updated for a while; parameters: that while in
/// milliseconds, the most rows to delete.
pub(crate) fn purge_sql<D: Dialect>() -> String {
    let (ago, terminal) = (D::ago("$1"), in_list(&State::TERMINAL));
    format!(
        "DELETE FROM status_outbox WHERE id IN (
            SELECT id FROM status_outbox
            WHERE state {terminal} AND updated_at < {ago}
            LIMIT $2)"
    )
}

/// Finished attempts per bucket: parameters: the window and the bucket
/// width, in milliseconds.
pub(crate) fn activity_sql<D: Dialect>() -> String {
    let (start, ago) = (D::epoch_ms("finished_at"), D::ago("$1"));
    format!(
        "SELECT ({start} / $2) * $2 AS start,
                COUNT(*) FILTER (WHERE outcome = 'posted') AS posted,
                COUNT(*) FILTER (WHERE outcome <> 'posted') AS errors
         FROM status_attempts
         WHERE finished_at >= {ago}
         GROUP BY 1 ORDER BY 1"
    )
}

/// The [`Sql`] methods that read alike on both backends, over the
/// backend's own `bound(&Stmt)` (its binding) and `self.pool_for(&Stmt)`.
macro_rules! run_methods {
    () => {
        async fn fetch(&self, s: Stmt) -> Result<Vec<Self::Row>> {
            Ok(bound(&s).fetch_all(self.pool_for(&s)).await?)
        }

        async fn execute(&self, s: Stmt) -> Result<u64> {
            Ok(bound(&s).execute(self.pool_for(&s)).await?.rows_affected())
        }

        async fn fetch_in(tx: &mut Self::Tx, s: Stmt) -> Result<Vec<Self::Row>> {
            Ok(bound(&s).fetch_all(&mut **tx).await?)
        }

        async fn execute_in(tx: &mut Self::Tx, s: Stmt) -> Result<u64> {
            Ok(bound(&s).execute(&mut **tx).await?.rows_affected())
        }

        async fn commit(tx: Self::Tx) -> Result<()> {
            Ok(tx.commit().await?)
        }
    };
}
pub(crate) use run_methods;
