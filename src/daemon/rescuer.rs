//! Moves `uploading` rows whose lease expired (their daemon died or hung
//! mid-call) to `in_doubt`: they may have been posted (rule 3).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Ctx;
use crate::provider::Provider;
use crate::store::Store;

pub async fn run<S: Store, P: Provider>(
    ctx: Arc<Ctx<S, P>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let every = Duration::from_millis(ctx.settings.rescue_interval_ms);
    let settle = Duration::from_millis(ctx.settings.settle_delay_ms);
    while !shutdown.is_cancelled() {
        match ctx
            .store
            .rescue_expired(ctx.settings.batch_size as i64, settle)
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
