//! The pipeline services (DESIGN.md §5), started and stopped together:
//!
//! - [`id_assigner`]: `queued` → `pending_upload` (or `invalid`);
//! - [`dispatcher`]: claims, sends, writes outcomes in batches;
//! - [`reconciler`]: settles `in_doubt` rows by asking the provider;
//! - [`rescuer`]: expired leases → `in_doubt`;
//! - [`scheduler`]: recurring statuses and the retention purge.
//!
//! Shutdown is passed in as a [`CancellationToken`]: every loop selects on
//! it. In-flight sends get `shutdown_grace_secs` to finish; then they are
//! cancelled and their rows recorded as `in_doubt`, so a cancelled call is
//! settled by the reconciler and never re-posted blindly.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::{DaemonSettings, Settings};
use crate::provider::{Provider, WawpClient};
use crate::store::Store;

pub mod dispatcher;
pub mod id_assigner;
pub mod metrics;
#[cfg(test)]
mod protocol_model;
pub mod reconciler;
pub mod rescuer;
pub mod scheduler;

/// One configured provider instance with its rate limiter and pause state.
pub struct Instance<P> {
    pub name: String,
    pub provider: P,
    limiter: DefaultDirectRateLimiter,
    /// Set after 401/403: no claims for this instance until a probe succeeds.
    paused: Mutex<Option<Pause>>,
}

/// Why and until when an instance is paused (in memory; the prober writes
/// it to the store so that `statusd stats`, another process, can show it).
#[derive(Debug, Clone)]
struct Pause {
    probe_at: Instant,
    reason: String,
}

impl<P: Provider> Instance<P> {
    pub fn new(name: &str, provider: P, rate_per_sec: u32, burst: u32) -> Instance<P> {
        let rate = NonZeroU32::new(rate_per_sec.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
        Instance {
            name: name.to_string(),
            provider,
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            paused: Mutex::new(None),
        }
    }

    pub fn is_paused(&self) -> bool {
        self.pause_reason().is_some()
    }

    /// Why the instance is paused, if it is.
    pub fn pause_reason(&self) -> Option<String> {
        self.paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|p| p.reason.clone())
    }

    fn pause(&self, probe_after: Duration, reason: &str) {
        let mut p = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none() {
            tracing::warn!(instance = %self.name, reason, "instance is down: pausing its rows and probing");
        }
        *p = Some(Pause {
            probe_at: Instant::now() + probe_after,
            reason: reason.to_string(),
        });
        ::metrics::gauge!(metrics::INSTANCE_PAUSED, metrics::INSTANCE_LABEL => self.name.clone())
            .set(1.0);
    }

    fn resume(&self) {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner()) = None;
        tracing::info!(instance = %self.name, "instance is back: resuming");
        ::metrics::gauge!(metrics::INSTANCE_PAUSED, metrics::INSTANCE_LABEL => self.name.clone())
            .set(0.0);
    }

    fn probe_due(&self) -> bool {
        matches!(&*self.paused.lock().unwrap_or_else(|e| e.into_inner()), Some(p) if p.probe_at <= Instant::now())
    }
}

/// What every service shares.
pub struct Ctx<S, P> {
    pub store: S,
    pub instances: HashMap<String, Arc<Instance<P>>>,
    pub settings: DaemonSettings,
    /// `lease_owner` of this replica.
    pub owner: String,
    /// In-process nudge: rows just became claimable (ids assigned, absent
    /// in-doubt rows sent back). Complements the database's notifications.
    pub work: Notify,
}

impl<S: Store, P: Provider> Ctx<S, P> {
    /// Why a row cannot be posted (unknown instance, or a payload that fails
    /// validation, the message naming the field), or None if it can. Every
    /// stage that takes a row written by someone else asks this first.
    pub fn check_row(&self, row: &crate::model::OutboxRow) -> Option<String> {
        if !self.instances.contains_key(&row.instance) {
            let mut known: Vec<&str> = self.instances.keys().map(String::as_str).collect();
            known.sort();
            return Some(format!(
                "instance: `{}` is not a configured instance (configured: {})",
                row.instance,
                known.join(", ")
            ));
        }
        crate::model::StatusBody::parse(&row.kind, &row.payload)
            .err()
            .map(|e| e.to_string())
    }

    pub fn paused_instances(&self) -> Vec<String> {
        self.instances
            .values()
            .filter(|i| i.is_paused())
            .map(|i| i.name.clone())
            .collect()
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
                instances: instances
                    .into_iter()
                    .map(|i| (i.name.clone(), Arc::new(i)))
                    .collect(),
                settings,
                owner,
                work: Notify::new(),
            }),
        }
    }

    pub fn ctx(&self) -> Arc<Ctx<S, P>> {
        self.ctx.clone()
    }

    /// Runs every service until `shutdown`; returns once in-flight work is
    /// finished or recorded as in doubt.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let ctx = self.ctx;
        tracing::info!(owner = %ctx.owner, instances = ctx.instances.len(), "statusd daemon starting");
        metrics::register(&ctx.instances.keys().cloned().collect::<Vec<_>>());
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
                    result = Err(anyhow::anyhow!("a daemon service panicked: {e}"));
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

/// Builds the Wawp clients of every configured instance.
pub fn wawp_instances(settings: &Settings) -> anyhow::Result<Vec<Instance<WawpClient>>> {
    settings
        .instances
        .iter()
        .map(|(name, inst)| {
            let client = WawpClient::new(name, inst, &settings.provider)
                .map_err(|e| anyhow::anyhow!("instances.{name}: {e}"))?;
            Ok(Instance::new(name, client, inst.rate_per_sec, inst.burst))
        })
        .collect()
}

/// `statusd run`: the daemon and its admin server over `store`.
pub async fn run<S: Store>(
    store: S,
    settings: Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let daemon = Daemon::new(store, wawp_instances(&settings)?, settings.daemon.clone());
    let admin = if settings.admin.enabled {
        let server = crate::admin::AdminServer::bind(&settings.admin, daemon.ctx())
            .await
            .context("starting the admin HTTP server")?;
        tracing::info!(addr = %server.local_addr(), "admin HTTP listening");
        Some(tokio::spawn(server.serve(shutdown.clone())))
    } else {
        None
    };
    let result = daemon.run(shutdown.clone()).await;
    shutdown.cancel();
    if let Some(a) = admin {
        let _ = a.await;
    }
    result
}

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the provider did not delete the status: {0}")]
    Provider(String),
}

/// Takes a posted status down (`statusd delete`, `POST /v1/statuses/{id}/delete`).
pub async fn delete_status<S: Store, P: Provider>(
    ctx: &Ctx<S, P>,
    key: &str,
) -> Result<crate::model::OutboxRow, DeleteError> {
    use crate::store::StoreError;
    let row = ctx
        .store
        .find(key)
        .await?
        .ok_or_else(|| StoreError::NotFound(key.to_string()))?;
    if row.state != crate::model::State::Posted {
        return Err(crate::store::not_allowed(&row, "delete").into());
    }
    let inst = ctx.instances.get(&row.instance).ok_or_else(|| {
        DeleteError::Provider(format!("instance `{}` is not configured", row.instance))
    })?;
    let id = row
        .provider_id
        .as_deref()
        .or(row.message_id.as_deref())
        .unwrap_or_default();
    match inst.provider.delete_status(id).await {
        crate::provider::SendOutcome::Posted { .. } => Ok(ctx.store.mark_deleted(row.id).await?),
        other => Err(DeleteError::Provider(format!(
            "{} ({})",
            other.reason().unwrap_or(other.label()),
            other.label()
        ))),
    }
}
