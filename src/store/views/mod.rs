//! Webhook evidence (issue 13, DESIGN.md R8): the inbox of accepted provider
//! events, the viewers of each status, and the confirmations that settle a
//! row as posted without a look-up.
//!
//! [`ViewStore`] is a supertrait of [`Store`], implemented here once for
//! both backends (`queries.rs`) and for [`Timed`], so that every store has
//! it and the SQL of the feature lives in this module (the JSON batch
//! inserts, which the backends spell differently, with each backend).
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

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::timed::timed;
use super::{Result, Store, Timed};

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
pub(super) fn merged(views: &[ViewEvent]) -> Vec<serde_json::Value> {
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

pub(super) fn confirmations_json(cs: &[Confirmation]) -> String {
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

mod queries;

/// Each call bounded like every other store call.
impl<S: Store> ViewStore for Timed<S> {
    timed! {
        fn webhook_accept(&self, instance: &str, request_id: Option<&str>, body: &str) -> i64;
        fn webhook_accept_many(&self, events: &[NewEvent]) -> u64;
        fn webhook_inbox(&self, limit: i64) -> Vec<InboxEvent>;
        fn webhook_backlog(&self) -> i64;
        fn webhook_apply(&self, p: &ApplyParams) -> Applied;
        fn settle_confirmed(&self, ids: &[Uuid], message_ids: &[String]) -> Vec<Settled>;
        fn views_of(&self, message_id: &str) -> Vec<View>;
        fn view_counts(&self, message_ids: &[String]) -> BTreeMap<String, ViewCounts>;
        fn views_over_time(&self, since: Duration, bucket: Duration) -> Vec<ViewBucket>;
        fn purge_views(&self, older_than: Duration) -> u64;
    }
}
