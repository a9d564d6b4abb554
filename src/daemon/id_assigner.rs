//! Turns `queued` rows into `pending_upload` rows with a durable message id
//! (rule 1), or into `invalid` rows with a message naming the field.
//!
//! With `id_source = "api"` ids are fetched from each row's instance, many
//! in parallel; a row whose id could not be fetched simply stays `queued`
//! and is tried again on the next pass. With `id_source = "local"` this
//! service does not run: the dispatcher's claim takes `queued` rows and
//! gives each a locally made id in the same statement that leases it, and
//! validates what it claimed before sending (one row update fewer per
//! status).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Ctx;
use crate::config::IdSource;
use crate::model::OutboxRow;
use crate::provider::{ids, Provider};
use crate::store::{AssignId, Store};

pub async fn run<S: Store, P: Provider>(
    ctx: Arc<Ctx<S, P>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if ctx.settings.id_source == IdSource::Local {
        // Local ids are given in the claim itself (the dispatcher passes
        // fresh ids), which validates the rows it takes: no separate pass.
        return Ok(());
    }
    let mut wake = ctx.store.subscribe();
    let mut failures = 0;
    while !shutdown.is_cancelled() {
        match pass(&ctx).await {
            Ok(0) => {
                failures = 0;
                ctx.idle(&mut wake, None, &shutdown).await;
            }
            Ok(_) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "id assigner: database error; retrying");
                let d =
                    super::backoff(failures, Duration::from_millis(100), Duration::from_secs(5));
                tokio::select! { _ = tokio::time::sleep(d) => {}, _ = shutdown.cancelled() => {} }
            }
        }
    }
    Ok(())
}

/// One batch; returns how many rows it moved.
pub async fn pass<S: Store, P: Provider>(ctx: &Ctx<S, P>) -> anyhow::Result<usize> {
    let rows = ctx.store.queued(ctx.settings.batch_size as i64).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut moved = 0;
    let mut good = Vec::with_capacity(rows.len());
    for row in rows {
        match ctx.check_row(&row) {
            Some(problem) => {
                tracing::warn!(row_id = %row.id, instance = %row.instance, error = %problem, "invalid row");
                if ctx.store.mark_invalid(row.id, &problem).await? {
                    metrics::counter!("statusd_transitions_total", "to" => "invalid").increment(1);
                    moved += 1;
                }
            }
            None => good.push(row),
        }
    }
    let assign: Vec<AssignId> = match ctx.settings.id_source {
        IdSource::Local => good
            .iter()
            .map(|r| AssignId {
                id: r.id,
                message_id: ids::local_message_id(),
            })
            .collect(),
        IdSource::Api => fetch_ids(ctx, &good).await,
    };
    let n = ctx.store.assign_message_ids(&assign).await? as usize;
    if n > 0 {
        metrics::counter!("statusd_transitions_total", "to" => "pending_upload")
            .increment(n as u64);
        ctx.work.notify_waiters();
    }
    // Rows whose id could not be fetched are not counted: the loop then
    // idles for a poll interval instead of hammering the provider.
    Ok(moved + n)
}

/// Whether an id from the provider can be stored and sent back: any
/// printable ASCII without spaces, 1 to 128 characters. Not only `3EB0` +
/// 16–32 hex: Baileys' legacy generator gives 36 hex digits, other
/// providers other forms, and refusing a shape we did not foresee would
/// re-fetch ids for the row forever (issue 12 §5).
pub fn usable_message_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Fetches one id per row from the row's instance, in parallel.
async fn fetch_ids<S: Store, P: Provider>(ctx: &Ctx<S, P>, rows: &[OutboxRow]) -> Vec<AssignId> {
    use futures_util::stream::{self, StreamExt};
    // Owned (id, instance) pairs: a closure over borrowed rows is not
    // general enough for a spawned future.
    let wanted: Vec<(uuid::Uuid, String)> =
        rows.iter().map(|r| (r.id, r.instance.clone())).collect();
    stream::iter(wanted)
        .map(|(id, instance)| async move {
            let inst = ctx.instances.get(&instance)?;
            match inst.provider.new_message_id().await {
                Ok(mid) if usable_message_id(&mid) => Some(AssignId {
                    id,
                    message_id: mid,
                }),
                Ok(mid) => {
                    tracing::warn!(row_id = %id, %instance, len = mid.len(), "provider returned an unusable message id (empty, over 128 characters, or not printable ASCII); will ask again");
                    None
                }
                Err(e) => {
                    tracing::warn!(row_id = %id, %instance, error = %e, "could not fetch a message id; will ask again");
                    None
                }
            }
        })
        .buffer_unordered(ctx.settings.id_fetch_parallelism)
        .filter_map(|x| async move { x })
        .collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::usable_message_id;

    #[test]
    fn every_documented_id_shape_is_usable() {
        for id in [
            "3EB0A1B2C3D4E5F6A7B8C9", // Baileys/whatsmeow now: 18 hex
            "3EB0A1B2C3D4E5F6A7B8C9D0E1F2A3B4C5D6E7F8A9B0", // Baileys legacy: 36 hex
            "3EB00123456789ABCDEF",   // 16 hex
            "BAE5F4C1D2A3B4C5",       // other providers
            "wamid.HBgLMzE2MTIzNDU2NzgVAgARGBI",
        ] {
            assert!(usable_message_id(id), "{id}");
        }
        for id in ["", "3EB0 1234", "3EB0\n", &"A".repeat(129)] {
            assert!(!usable_message_id(id), "{id:?}");
        }
    }
}
