//! The pipeline services (DESIGN.md §5), started and stopped together:
//!
//! - [`id_assigner`]: `queued` → `pending_upload` (or `invalid`);
//! - [`dispatcher`]: claims per instance within its budget (`claimer`),
//!   sends round-robin across the instances that can send now
//!   (`fair_queue`), writes outcomes in batches; holds this replica's
//!   instance leases (`lease_keeper`);
//! - [`reconciler`]: settles `in_doubt` rows by asking the provider;
//! - [`rescuer`]: expired leases → `in_doubt`;
//! - [`scheduler`]: recurring statuses and the retention purge.
//!
//! Shutdown is passed in as a [`CancellationToken`]: every loop selects on
//! it. In-flight sends get `shutdown_grace_secs` to finish; then they are
//! cancelled and their rows recorded as `in_doubt`, so a cancelled call is
//! settled by the reconciler and never re-posted blindly.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::DaemonSettings;
pub use crate::instance::Instance;
use crate::instance::Registry;
use crate::ops::Operator;
use crate::provider::Provider;
use crate::store::Store;

mod claimer;
pub mod dispatcher;
mod fair_queue;
pub mod id_assigner;
mod lease_keeper;
#[cfg(test)]
mod protocol_model;
pub mod reconciler;
pub mod rescuer;
pub mod scheduler;

/// What every service shares.
pub struct Ctx<S, P> {
    pub store: S,
    /// Every instance this process knows; the table's part changes at
    /// runtime (see [`crate::instance::keep_in_step`]).
    pub instances: Arc<Registry<P>>,
    pub settings: DaemonSettings,
    /// Each service's own settings, built from `settings` once.
    pub dispatcher: dispatcher::DispatcherConfig,
    pub reconciler: reconciler::ReconcilerConfig,
    pub rescuer: rescuer::RescuerConfig,
    /// `lease_owner` of this replica.
    pub owner: String,
    /// In-process nudge: rows just became claimable (ids assigned, absent
    /// in-doubt rows sent back). Complements the database's notifications.
    pub work: Arc<Notify>,
}

impl<S: Store, P: Provider> Ctx<S, P> {
    /// Why a row cannot be posted (unknown instance, or a payload that fails
    /// validation, the message naming the field), or None if it can. Every
    /// stage that takes a row written by someone else asks this first.
    pub fn check_row(&self, row: &crate::model::OutboxRow) -> Option<String> {
        // A row of a held instance (disabled, removed) is valid and waits;
        // one of a name this process has not seen yet is judged only by a
        // view of the instances newer than the row.
        if let Some(e) = self.instances.check_known(&row.instance, row.created_at) {
            return Some(e);
        }
        crate::model::StatusBody::parse(&row.kind, &row.payload)
            .err()
            .map(|e| e.to_string())
    }

    /// Instances whose rows must not be claimed: paused (401/403) or held
    /// (disabled, removed, token unreadable here).
    pub fn paused_instances(&self) -> Vec<String> {
        self.instances.not_sending()
    }

    /// How long an idle worker sleeps when nothing wakes it: a fallback
    /// poll where the store signals new work (PostgreSQL, a SQLite file),
    /// else the poll interval.
    fn idle_poll(&self) -> Duration {
        if self.store.notifies() {
            Duration::from_millis(self.settings.fallback_poll_ms)
        } else {
            self.settings.poll_interval()
        }
    }

    /// Waits until a notification, a nudge, the poll interval (or `due`, if
    /// sooner), or shutdown.
    async fn idle(
        &self,
        wake: &mut watch::Receiver<u64>,
        due: Option<Duration>,
        shutdown: &CancellationToken,
    ) {
        // A little past the due time, so that the row is due by the
        // database's clock too; never a busy loop.
        let sleep = due.map_or(self.idle_poll(), |d| {
            self.idle_poll()
                .min(d.max(Duration::from_millis(10)) + Duration::from_millis(2))
        });
        tokio::select! {
            _ = wake.changed() => {}
            _ = self.work.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// Exponential backoff with equal jitter: half fixed, half random, so that
/// rows failing together do not retry together.
pub fn backoff(attempt: i32, base: Duration, max: Duration) -> Duration {
    let exp = attempt.clamp(1, 30) as u32 - 1;
    let d = base.saturating_mul(2u32.saturating_pow(exp)).min(max);
    let half = d / 2;
    half + Duration::from_millis(rand::rng().random_range(0..=half.as_millis() as u64))
}

/// The daemon: all services over one store and a set of instances.
pub struct Daemon<S, P> {
    ctx: Arc<Ctx<S, P>>,
}

impl<S: Store, P: Provider> Daemon<S, P> {
    pub fn new(store: S, instances: Vec<Instance<P>>, settings: DaemonSettings) -> Daemon<S, P> {
        let owner = settings.owner.clone().unwrap_or_else(default_owner);
        Daemon {
            ctx: Arc::new(Ctx {
                store,
                instances: Arc::new(Registry::new(instances)),
                dispatcher: dispatcher::DispatcherConfig::new(&settings),
                reconciler: reconciler::ReconcilerConfig::new(&settings),
                rescuer: rescuer::RescuerConfig::new(&settings),
                settings,
                owner,
                work: Arc::new(Notify::new()),
            }),
        }
    }

    pub fn ctx(&self) -> Arc<Ctx<S, P>> {
        self.ctx.clone()
    }

    /// The operator actions over this daemon's store and instances; rows
    /// they make claimable wake this daemon's workers.
    pub fn operator(&self) -> Arc<Operator<S, P>> {
        Arc::new(Operator::new(
            self.ctx.store.clone(),
            self.ctx.instances.clone(),
            self.ctx.work.clone(),
        ))
    }

    /// Runs every service until `shutdown`; returns once in-flight work is
    /// finished or recorded as in doubt.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let ctx = self.ctx;
        tracing::info!(owner = %ctx.owner, instances = ctx.instances.len(), "statusd daemon starting");
        crate::metrics::register(&ctx.instances.known_names());
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(id_assigner::run(ctx.clone(), shutdown.clone()));
        tasks.spawn(dispatcher::run(ctx.clone(), shutdown.clone()));
        tasks.spawn(reconciler::run(ctx.clone(), shutdown.clone()));
        tasks.spawn(rescuer::run(ctx.clone(), shutdown.clone()));
        tasks.spawn(scheduler::run(ctx.clone(), shutdown.clone()));
        let mut result = Ok(());
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = ?e, "a daemon service failed; stopping");
                    shutdown.cancel();
                    result = Err(e);
                }
                Err(e) => {
                    tracing::error!(error = %e, "a daemon service panicked; stopping");
                    shutdown.cancel();
                    result = Err(anyhow::Error::new(e).context("a daemon service panicked"));
                }
            }
        }
        tracing::info!("statusd daemon stopped");
        result
    }
}

fn default_owner() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "statusd".into());
    format!(
        "{host}:{}:{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}
