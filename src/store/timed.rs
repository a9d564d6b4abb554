//! A bound on every database call. A connection whose peer vanished without
//! a reset (a black-holed network, a half-open TCP connection, a database
//! host that froze) never answers, and sqlx has no socket timeout: without
//! this bound the daemon's workers would wait forever. A call that outlasts
//! `limit` fails with [`StoreError::Timeout`] like any database error; the
//! caller retries, and its connection is dropped mid-call, which makes the
//! pool test it on release and close it when it does not answer (see
//! `PgStore::connect`).
//!
//! Safe by construction: every store call is either a read or a fenced,
//! idempotent write, so a call that committed but whose answer was lost is
//! harmless to repeat (a claim that committed unseen expires to `in_doubt`
//! and is reconciled, never blindly re-sent).

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    ActivityBucket, ActivityParams, AssignId, ClaimParams, Completion, EnqueueParams, Enqueued,
    InstancePause, ListParams, OperatorAction, Result, Schedule, Store, StoreError, SummaryRow,
    Transition,
};
use crate::model::{Attempt, OutboxRow};

#[derive(Clone, Debug)]
pub struct Timed<S> {
    inner: S,
    limit: Duration,
}

impl<S> Timed<S> {
    pub fn new(inner: S, limit: Duration) -> Self {
        Timed { inner, limit }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub(super) async fn within<T>(
        &self,
        call: &'static str,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.limit, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout {
                call,
                after: self.limit,
            }),
        }
    }
}

/// Each listed method delegates to the inner store within the limit (the
/// store traits' impls for [`Timed`]).
macro_rules! timed {
    ($( fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $ret:ty; )*) => {
        $(
            async fn $name(&self $(, $arg: $ty)*) -> Result<$ret> {
                self.within(stringify!($name), self.inner().$name($($arg),*)).await
            }
        )*
    };
}
pub(super) use timed;

impl<S: Store> Store for Timed<S> {
    /// Not bounded: a migration may rightly take long on a big table.
    async fn migrate(&self) -> Result<()> {
        self.inner.migrate().await
    }

    timed! {
        fn ping(&self) -> ();
        fn enqueue(&self, p: EnqueueParams) -> Enqueued;
        fn enqueue_many(&self, p: &[EnqueueParams]) -> u64;
        fn queued(&self, limit: i64) -> Vec<OutboxRow>;
        fn assign_message_ids(&self, ids: &[AssignId]) -> u64;
        fn mark_invalid(&self, id: Uuid, error: &str) -> bool;
        fn claim(&self, p: ClaimParams) -> Vec<OutboxRow>;
        fn complete(&self, done: &[Completion]) -> u64;
        fn rescue_expired(&self, limit: i64, settle: Duration) -> Vec<Uuid>;
        fn due_in_doubt(&self, limit: i64) -> Vec<OutboxRow>;
        fn resolve_in_doubt(&self, t: &[Transition]) -> u64;
        fn get(&self, id: Uuid) -> Option<OutboxRow>;
        fn find(&self, key: &str) -> Option<OutboxRow>;
        fn attempts(&self, id: Uuid) -> Vec<Attempt>;
        fn list(&self, p: ListParams) -> Vec<OutboxRow>;
        fn summary(&self) -> Vec<SummaryRow>;
        fn purge_terminal(&self, older_than: Duration, limit: i64) -> u64;
        fn add_schedule(&self, s: &Schedule) -> ();
        fn schedules(&self) -> Vec<Schedule>;
        fn remove_schedule(&self, name_or_id: &str) -> bool;
        fn now(&self) -> DateTime<Utc>;
        fn next_due(&self, skip_instances: &[String], with_queued: bool) -> Option<Duration>;
        fn activity(&self, p: ActivityParams) -> Vec<ActivityBucket>;
        fn set_instance_pause(&self, instance: &str, reason: &str) -> ();
        fn clear_instance_pause(&self, instance: &str) -> ();
        fn instance_pauses(&self) -> Vec<InstancePause>;
    }

    /// Named in a timeout by the call the caller made (`retry`, …).
    async fn operator(&self, id: Uuid, action: OperatorAction) -> Result<OutboxRow> {
        self.within(action.call(), self.inner.operator(id, action))
            .await
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.subscribe()
    }

    fn notifies(&self) -> bool {
        self.inner.notifies()
    }
}
