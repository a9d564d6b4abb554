//! A `Store` that counts the SQL statements its inner store executes, by
//! method (each method's statement count is fixed by its SQL; see the
//! weights below). Used for "statements per status" and "queries per second
//! while idle".

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use statusd::model::{Attempt, OutboxRow};
use statusd::store::{
    ActivityBucket, ActivityParams, AssignId, ClaimParams, Completion, EnqueueParams, Enqueued,
    ListParams, OperatorAction, Result, Schedule, Store, SummaryRow, Transition,
};
use uuid::Uuid;

#[derive(Clone)]
pub struct Counting<S> {
    inner: S,
    statements: Arc<AtomicU64>,
}

impl<S> Counting<S> {
    pub fn new(inner: S) -> Self {
        Counting {
            inner,
            statements: Arc::new(AtomicU64::new(0)),
        }
    }
    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }
    fn add(&self, n: u64) {
        self.statements.fetch_add(n, Ordering::Relaxed);
    }
}

impl<S: Store> Store for Counting<S> {
    async fn migrate(&self) -> Result<()> {
        self.inner.migrate().await
    }
    async fn ping(&self) -> Result<()> {
        self.add(1);
        self.inner.ping().await
    }
    async fn enqueue(&self, p: EnqueueParams) -> Result<Enqueued> {
        let r = self.inner.enqueue(p).await?;
        // A dedupe hit costs a second statement to find the existing id.
        self.add(if r.inserted { 1 } else { 2 });
        Ok(r)
    }
    async fn enqueue_many(&self, p: &[EnqueueParams]) -> Result<u64> {
        self.add(u64::from(!p.is_empty()));
        self.inner.enqueue_many(p).await
    }
    async fn queued(&self, limit: i64) -> Result<Vec<OutboxRow>> {
        self.add(1);
        self.inner.queued(limit).await
    }
    async fn assign_message_ids(&self, ids: &[AssignId]) -> Result<u64> {
        self.add(u64::from(!ids.is_empty()));
        self.inner.assign_message_ids(ids).await
    }
    async fn mark_invalid(&self, id: Uuid, error: &str) -> Result<bool> {
        self.add(1);
        self.inner.mark_invalid(id, error).await
    }
    async fn claim(&self, p: ClaimParams) -> Result<Vec<OutboxRow>> {
        self.add(1);
        self.inner.claim(p).await
    }
    async fn complete(&self, done: &[Completion]) -> Result<u64> {
        // UPDATE … RETURNING and the attempts INSERT (BEGIN/COMMIT not counted).
        self.add(if done.is_empty() { 0 } else { 2 });
        self.inner.complete(done).await
    }
    async fn rescue_expired(&self, limit: i64, settle: Duration) -> Result<Vec<Uuid>> {
        self.add(1);
        self.inner.rescue_expired(limit, settle).await
    }
    async fn due_in_doubt(&self, limit: i64) -> Result<Vec<OutboxRow>> {
        self.add(1);
        self.inner.due_in_doubt(limit).await
    }
    async fn resolve_in_doubt(&self, t: &[Transition]) -> Result<u64> {
        self.add(u64::from(!t.is_empty()));
        self.inner.resolve_in_doubt(t).await
    }
    async fn get(&self, id: Uuid) -> Result<Option<OutboxRow>> {
        self.add(1);
        self.inner.get(id).await
    }
    async fn find(&self, key: &str) -> Result<Option<OutboxRow>> {
        self.add(1);
        self.inner.find(key).await
    }
    async fn attempts(&self, id: Uuid) -> Result<Vec<Attempt>> {
        self.add(1);
        self.inner.attempts(id).await
    }
    async fn list(&self, p: ListParams) -> Result<Vec<OutboxRow>> {
        self.add(1);
        self.inner.list(p).await
    }
    async fn summary(&self) -> Result<Vec<SummaryRow>> {
        self.add(1);
        self.inner.summary().await
    }
    async fn set_instance_pause(&self, instance: &str, reason: &str) -> Result<()> {
        self.add(1);
        self.inner.set_instance_pause(instance, reason).await
    }
    async fn clear_instance_pause(&self, instance: &str) -> Result<()> {
        self.add(1);
        self.inner.clear_instance_pause(instance).await
    }
    async fn instance_pauses(&self) -> Result<Vec<statusd::store::InstancePause>> {
        self.add(1);
        self.inner.instance_pauses().await
    }
    async fn operator(&self, id: Uuid, action: OperatorAction) -> Result<OutboxRow> {
        self.add(1);
        self.inner.operator(id, action).await
    }
    async fn purge_terminal(&self, older_than: Duration, limit: i64) -> Result<u64> {
        self.add(1);
        self.inner.purge_terminal(older_than, limit).await
    }
    async fn add_schedule(&self, s: &Schedule) -> Result<()> {
        self.add(1);
        self.inner.add_schedule(s).await
    }
    async fn schedules(&self) -> Result<Vec<Schedule>> {
        self.add(1);
        self.inner.schedules().await
    }
    async fn remove_schedule(&self, name_or_id: &str) -> Result<bool> {
        self.add(1);
        self.inner.remove_schedule(name_or_id).await
    }
    async fn now(&self) -> Result<DateTime<Utc>> {
        self.add(1);
        self.inner.now().await
    }
    async fn activity(&self, p: ActivityParams) -> Result<Vec<ActivityBucket>> {
        self.add(1);
        self.inner.activity(p).await
    }
    async fn next_due(&self, skip: &[String], with_queued: bool) -> Result<Option<Duration>> {
        self.add(1);
        self.inner.next_due(skip, with_queued).await
    }
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.subscribe()
    }
    fn notifies(&self) -> bool {
        self.inner.notifies()
    }
}

/// The runtime instance registry's queries, one statement each.
impl<S: Store> statusd::store::InstanceStore for Counting<S> {
    async fn instance_table(&self) -> Result<statusd::store::InstanceTable> {
        self.add(1);
        self.inner.instance_table().await
    }
    async fn add_instance(
        &self,
        name: &str,
        settings: &serde_json::Map<String, serde_json::Value>,
        enabled: bool,
    ) -> Result<statusd::store::Added> {
        self.add(1);
        self.inner.add_instance(name, settings, enabled).await
    }
    async fn update_instance(
        &self,
        name: &str,
        settings: &serde_json::Map<String, serde_json::Value>,
        seen_updated_at: DateTime<Utc>,
    ) -> Result<bool> {
        self.add(1);
        self.inner
            .update_instance(name, settings, seen_updated_at)
            .await
    }
    async fn set_instance_enabled(&self, name: &str, enabled: bool) -> Result<bool> {
        self.add(1);
        self.inner.set_instance_enabled(name, enabled).await
    }
    async fn remove_instance(&self, name: &str) -> Result<bool> {
        self.add(1);
        self.inner.remove_instance(name).await
    }
    async fn make_instance_rows_due(&self, names: &[String]) -> Result<u64> {
        self.add(u64::from(!names.is_empty()));
        self.inner.make_instance_rows_due(names).await
    }
    async fn posted_per_instance(&self, window: Duration) -> Result<Vec<(String, i64)>> {
        self.add(1);
        self.inner.posted_per_instance(window).await
    }
    fn subscribe_instances(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.subscribe_instances()
    }
}

/// The provider capabilities' queries, one statement each.
impl<S: Store> statusd::store::CapabilityStore for Counting<S> {
    async fn capabilities_of(
        &self,
        instance: Option<&str>,
    ) -> Result<Vec<statusd::store::Capabilities>> {
        self.add(1);
        self.inner.capabilities_of(instance).await
    }
    async fn put_capabilities(&self, new: &statusd::store::Capabilities) -> Result<bool> {
        self.add(1);
        self.inner.put_capabilities(new).await
    }
    async fn known_message_ids(
        &self,
        instance: &str,
        ids: &[String],
        except: &[Uuid],
    ) -> Result<Vec<statusd::store::KnownId>> {
        self.add(1);
        self.inner.known_message_ids(instance, ids, except).await
    }
}

/// The webhook inbox and views' queries, one statement each (the bench
/// posts nothing to them; forwarded so the counting store is a full store).
impl<S: Store> statusd::store::ViewStore for Counting<S> {
    async fn webhook_accept(
        &self,
        instance: &str,
        request_id: Option<&str>,
        body: &str,
    ) -> Result<i64> {
        self.add(1);
        self.inner.webhook_accept(instance, request_id, body).await
    }
    async fn webhook_accept_many(&self, events: &[statusd::store::NewEvent]) -> Result<u64> {
        self.add(1);
        self.inner.webhook_accept_many(events).await
    }
    async fn webhook_inbox(&self, limit: i64) -> Result<Vec<statusd::store::InboxEvent>> {
        self.add(1);
        self.inner.webhook_inbox(limit).await
    }
    async fn webhook_backlog(&self) -> Result<i64> {
        self.add(1);
        self.inner.webhook_backlog().await
    }
    async fn webhook_apply(
        &self,
        p: &statusd::store::ApplyParams,
    ) -> Result<statusd::store::Applied> {
        self.add(1);
        self.inner.webhook_apply(p).await
    }
    async fn settle_confirmed(
        &self,
        ids: &[Uuid],
        message_ids: &[String],
    ) -> Result<Vec<statusd::store::Settled>> {
        self.add(1);
        self.inner.settle_confirmed(ids, message_ids).await
    }
    async fn views_of(&self, message_id: &str) -> Result<Vec<statusd::store::View>> {
        self.add(1);
        self.inner.views_of(message_id).await
    }
    async fn view_counts(
        &self,
        message_ids: &[String],
    ) -> Result<std::collections::BTreeMap<String, statusd::store::ViewCounts>> {
        self.add(1);
        self.inner.view_counts(message_ids).await
    }
    async fn views_over_time(
        &self,
        since: Duration,
        bucket: Duration,
    ) -> Result<Vec<statusd::store::ViewBucket>> {
        self.add(1);
        self.inner.views_over_time(since, bucket).await
    }
    async fn purge_views(&self, older_than: Duration) -> Result<u64> {
        self.add(1);
        self.inner.purge_views(older_than).await
    }
}

impl<S: statusd::store::InstanceLeases + Sync> statusd::store::InstanceLeases for Counting<S> {
    async fn keep_instance_leases(
        &self,
        p: statusd::store::KeepLeasesParams,
    ) -> Result<statusd::store::LeaseGrant> {
        // Heartbeat, clean-up, count, release, renew (+ take, when short),
        // and BEGIN / COMMIT.
        let r = self.inner.keep_instance_leases(p).await?;
        self.add(5 + u64::from(r.held.len() < r.share) + 2);
        Ok(r)
    }
    async fn release_instance_leases(&self, owner: &str) -> Result<()> {
        self.add(4);
        self.inner.release_instance_leases(owner).await
    }
    async fn instance_leases(&self) -> Result<Vec<statusd::store::InstanceLease>> {
        self.add(1);
        self.inner.instance_leases().await
    }
    async fn next_lease_expiry(
        &self,
        owner: &str,
        instances: &[String],
    ) -> Result<Option<Duration>> {
        self.add(1);
        self.inner.next_lease_expiry(owner, instances).await
    }
}
