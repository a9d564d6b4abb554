//! This replica's instance leases, as the dispatcher sees them: which
//! instances it may claim for and send now (R7: one replica per instance,
//! so that an instance's rate and in-flight cap hold for the deployment;
//! see `store::instance_leases` for the database side).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::dispatcher::{lock, Shared};
use super::Ctx;
use crate::provider::Provider;
use crate::store::{KeepLeasesParams, Store};

/// A renewal aimed at another replica's lease expiry comes this long after
/// it (the database's clock and ours tick apart a little).
const LEASE_MARGIN: Duration = Duration::from_millis(50);

/// The instances this replica may serve now (R7: one replica per instance).
#[derive(Debug, Default)]
pub(super) struct LeaseView {
    /// Held instances and until when (this process's clock, a margin short
    /// of the database's expiry).
    pub(super) held: HashMap<String, Instant>,
    /// Held but being handed over: not claimed for nor sent, released once
    /// nothing of theirs is in flight.
    pub(super) draining: HashSet<String>,
}

impl LeaseView {
    pub(super) fn serves(&self, instance: &str) -> bool {
        self.held
            .get(instance)
            .is_some_and(|until| *until > Instant::now())
            && !self.draining.contains(instance)
    }
}

/// Keeps this replica's instance leases (see `store::instance_leases`):
/// renews every quarter lease, takes free ones up to its fair share, hands
/// the excess over once nothing of theirs is in flight here. Until shutdown.
pub(super) async fn keep_leases<S: Store, P: Provider>(
    ctx: Arc<Ctx<S, P>>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let ttl = ctx.settings.instance_lease();
    let every = ttl / 4;
    loop {
        let release: Vec<String> = {
            let leases = lock(&shared.leases);
            let queue = lock(&shared.queue);
            leases
                .draining
                .iter()
                .filter(|n| queue.waiting(n) + queue.sending(n) == 0)
                .cloned()
                .collect()
        };
        let started = Instant::now();
        let params = KeepLeasesParams {
            owner: ctx.owner.clone(),
            instances: ctx.instances.keys(),
            ttl,
            release,
        };
        let mut room = false;
        match ctx.store.keep_instance_leases(params).await {
            Ok(grant) => {
                room = grant.held.len() < grant.share;
                let until = started + ttl - ttl / 10;
                let mut leases = lock(&shared.leases);
                let before: HashSet<String> = leases.held.keys().cloned().collect();
                // Taken just now (at start or from another replica, which
                // may have sent up to the rate until a moment ago): begin
                // with an empty bucket, before any send, so the instance's
                // rate holds across the hand-over with no extra burst.
                for name in grant.held.iter().filter(|n| !before.contains(*n)) {
                    if let Some(inst) = ctx.instances.get(name) {
                        inst.empty_bucket();
                    }
                }
                leases.held = grant.held.iter().map(|n| (n.clone(), until)).collect();
                leases.draining.retain(|n| grant.held.contains(n));
                let serving: Vec<&String> = grant
                    .held
                    .iter()
                    .filter(|n| !leases.draining.contains(*n))
                    .collect();
                let excess: Vec<String> = serving
                    .iter()
                    .rev()
                    .take(serving.len().saturating_sub(grant.share))
                    .map(|n| n.to_string())
                    .collect();
                if !excess.is_empty() {
                    tracing::info!(instances = ?excess, share = grant.share, "handing instances over to other replicas");
                }
                leases.draining.extend(excess);
                let now: HashSet<String> = grant.held.iter().cloned().collect();
                if now != before {
                    tracing::info!(held = ?grant.held, share = grant.share, "instance leases");
                }
                drop(leases);
                shared.changed.notify_waiters();
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing the instance leases failed; retrying")
            }
        }
        // With room in its share, renew again as soon as another replica's
        // lease on one of our instances expires (its holder may have died):
        // the instance is then served again within one lease.
        let mut next = every;
        if room {
            match ctx
                .store
                .next_lease_expiry(&ctx.owner, &ctx.instances.keys())
                .await
            {
                Ok(Some(d)) => next = next.min(d + LEASE_MARGIN),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "reading other replicas' instance leases failed")
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
