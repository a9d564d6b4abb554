//! Applies the events the admin server accepted: drains the inbox in order,
//! one transaction per batch (views upserted, confirmations recorded, rows
//! they prove posted settled, events deleted). Effects are idempotent, so an
//! event applied twice (two replicas draining one PostgreSQL inbox, a crash
//! between commit and the next batch) changes nothing more.
//!
//! An event that cannot be read (it passed the signature check, so the
//! provider sent it) is dropped with a warning rather than retried forever.
//! Idle, the processor sleeps until the server rings
//! [`Receiver::wake`](super::Receiver::wake), or `webhooks.fallback_poll_ms`;
//! it also purges old views once an hour.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::events::effects;
use super::{SETTLED_TOTAL, VIEWS_TOTAL};
use crate::store::{Applied, ApplyParams, Store};

/// The processor's settings.
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    pub batch_size: usize,
    pub fallback_poll: Duration,
    /// Wait after a wake-up before applying (`webhooks.apply_linger_ms`).
    pub linger: Duration,
    /// Views and confirmations of ids no row holds are purged after this
    /// (`daemon.retention_days`); zero keeps them.
    pub retention: Duration,
}

impl ProcessorConfig {
    pub fn new(settings: &crate::config::Settings) -> ProcessorConfig {
        ProcessorConfig {
            batch_size: settings.webhooks.batch_size.max(1),
            fallback_poll: super::fallback_poll(&settings.webhooks),
            linger: Duration::from_millis(settings.webhooks.apply_linger_ms),
            retention: Duration::from_secs(settings.daemon.retention_days * 86_400),
        }
    }
}

/// Applies one batch; returns what it did and how many events it read.
pub async fn pass<S: Store>(store: &S, batch: usize) -> anyhow::Result<(Applied, usize)> {
    let events = store.webhook_inbox(batch as i64).await?;
    let n = events.len();
    if n == 0 {
        return Ok((Applied::default(), 0));
    }
    let mut p = ApplyParams::default();
    for e in &events {
        p.done.push(e.seq);
        match serde_json::from_str::<serde_json::Value>(&e.body) {
            Ok(v) => {
                let fx = effects(&e.instance, &v, e.received_at);
                p.views.extend(fx.views);
                p.confirmations.extend(fx.confirmations);
            }
            Err(err) => {
                tracing::warn!(seq = e.seq, instance = %e.instance, error = %err, "webhook event cannot be read; dropped")
            }
        }
    }
    let applied = store.webhook_apply(&p).await?;
    metrics::counter!(VIEWS_TOTAL).increment(applied.views);
    if !applied.settled.is_empty() {
        metrics::counter!(SETTLED_TOTAL).increment(applied.settled.len() as u64);
        metrics::counter!("statusd_transitions_total", "to" => "posted")
            .increment(applied.settled.len() as u64);
        for s in &applied.settled {
            tracing::info!(row_id = %s.id, message_id = %s.message_id, "status confirmed by webhook: posted (no look-up)");
        }
    }
    Ok((applied, n))
}

pub async fn run<S: Store>(
    store: S,
    wake: Arc<Notify>,
    cfg: ProcessorConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut last_purge = Instant::now();
    while !shutdown.is_cancelled() {
        // Drain: a full batch means there may be more.
        loop {
            match pass(&store, cfg.batch_size).await {
                Ok((_, n)) if n >= cfg.batch_size => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "webhook processor: database error; retrying"),
            }
            break;
        }
        if !cfg.retention.is_zero() && last_purge.elapsed() >= Duration::from_secs(3600) {
            last_purge = Instant::now();
            match store.purge_views(cfg.retention).await {
                Ok(n) if n > 0 => tracing::info!(
                    rows = n,
                    "purged views and confirmations of purged statuses"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "purging old views failed; retrying in an hour")
                }
            }
        }
        tokio::select! {
            // Woken by a commit, it lingers so that one transaction applies
            // a burst: a flood of events costs the database a few commits
            // a second, not one per delivery.
            _ = wake.notified() => {
                tokio::select! {
                    _ = tokio::time::sleep(cfg.linger) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            _ = tokio::time::sleep(cfg.fallback_poll) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    Ok(())
}
