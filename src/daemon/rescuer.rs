//! Moves `uploading` rows whose lease expired (their daemon died or hung
//! mid-call) to `in_doubt`: they may have been posted (rule 3).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Ctx;
use crate::config::DaemonSettings;
use crate::provider::Provider;
use crate::store::Store;

/// The rescuer's settings, built from `[daemon]` (defaults:
/// [`DaemonSettings::default`]).
#[derive(Debug, Clone)]
pub struct RescuerConfig {
    /// How often expired leases are looked for.
    pub interval: Duration,
    /// Wait after a rescue before the first look-up of the row.
    pub settle_delay: Duration,
    /// Most rows rescued in one statement.
    pub batch_size: usize,
}

impl RescuerConfig {
    pub fn new(s: &DaemonSettings) -> RescuerConfig {
        RescuerConfig {
            interval: Duration::from_millis(s.rescue_interval_ms),
            settle_delay: Duration::from_millis(s.settle_delay_ms),
            batch_size: s.batch_size,
        }
    }
}

pub async fn run<S: Store, P: Provider>(
    ctx: Arc<Ctx<S, P>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let cfg = &ctx.rescuer;
    let (every, settle) = (cfg.interval, cfg.settle_delay);
    while !shutdown.is_cancelled() {
        match ctx
            .store
            .rescue_expired(cfg.batch_size as i64, settle)
            .await
        {
            Ok(ids) if !ids.is_empty() => {
                tracing::warn!(rows = ids.len(), first = %ids[0], "leases expired: rows moved to in_doubt");
                metrics::counter!("statusd_transitions_total", "to" => "in_doubt")
                    .increment(ids.len() as u64);
                metrics::counter!("statusd_leases_rescued_total").increment(ids.len() as u64);
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "rescuer: database error; retrying"),
        }
        tokio::select! { _ = tokio::time::sleep(every) => {}, _ = shutdown.cancelled() => {} }
    }
    Ok(())
}
