//! The dispatcher's claimer: claims due rows into the fair queue, per
//! instance only what its budget allows (R7), for every instance with room
//! in one statement (`ClaimParams::budgets`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::dispatcher::{lock, Shared};
use super::{backoff, Ctx};
use crate::config::IdSource;
use crate::model::OutboxRow;
use crate::provider::{ids, Provider};
use crate::store::{ClaimParams, InstanceBudget, Store};

/// How far ahead an instance's rows are claimed: about this long of its
/// rate. Short, so that a claimed row never waits long for its token, and
/// the other instances' rows are claimed beside it rather than behind it.
const CLAIM_AHEAD: Duration = Duration::from_secs(1);
/// Rows of instances that are not configured here (they end `invalid` or
/// paused, as any row naming an unknown instance) are looked for this often;
/// the budgeted claim only takes configured instances' rows.
const STRAYS_EVERY: Duration = Duration::from_secs(5);
/// An instance whose last claim found nothing is claimed for again after a
/// wake-up, but not more often than this: on SQLite every commit (of this
/// process too) is a wake-up.
const REPROBE: Duration = Duration::from_millis(50);
/// The claimer's plans (a look at every instance's budget) are this far
/// apart at least.
const PLAN_GAP: Duration = Duration::from_millis(5);

/// Claims due rows into the fair queue, per instance only what that
/// instance can send soon: about [`CLAIM_AHEAD`] of its rate not yet
/// waiting, and up to twice its `max_in_flight` held in all. A claim runs
/// when an instance has at least half of that free (or nothing held at
/// all), for every instance with room at once; until shutdown.
pub(super) async fn claim_loop<S: Store, P: Provider>(
    ctx: Arc<Ctx<S, P>>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let mut wake = ctx.store.subscribe();
    let mut failures = 0;
    // At most this many rows wait for a slot, all instances together.
    let prefetch = ctx
        .settings
        .batch_size
        .min(ctx.dispatcher.concurrency * 4)
        .max(1);
    // Instances whose last claim took all their due rows: not claimed for
    // again until a wake-up, a nudge or the idle timer.
    let mut drained: HashSet<String> = HashSet::new();
    let mut woken = false;
    let mut last_probe = Instant::now();
    let mut idle_for = ctx.idle_poll();
    let mut strays_at = Instant::now();
    let mut last_plan = Instant::now();
    while !shutdown.is_cancelled() {
        // Plans are made at most every PLAN_GAP: every finished send wakes
        // the claimer, and with many instances a plan visits each.
        let since = last_plan.elapsed();
        if since < PLAN_GAP {
            tokio::select! {
                _ = tokio::time::sleep(PLAN_GAP - since) => {}
                _ = shutdown.cancelled() => return,
            }
        }
        last_plan = Instant::now();
        if woken && last_probe.elapsed() >= REPROBE {
            drained.clear();
            woken = false;
        }
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let (budgets, waiting, trigger) = {
            let leases = lock(&shared.leases);
            let queue = lock(&shared.queue);
            let mut budgets = Vec::new();
            let mut trigger = false;
            for inst in ctx.instances.values() {
                if inst.is_paused() || !leases.serves(&inst.name) || drained.contains(&inst.name) {
                    continue;
                }
                let (w, s) = (queue.waiting(&inst.name), queue.sending(&inst.name));
                let ahead = ((f64::from(inst.rate_per_sec) * CLAIM_AHEAD.as_secs_f64()).ceil()
                    as usize)
                    .max(1);
                let hold = 2 * inst.max_in_flight;
                let room = ahead.saturating_sub(w).min(hold.saturating_sub(w + s));
                if room == 0 {
                    continue;
                }
                if room * 2 >= ahead.min(hold) || w + s == 0 {
                    trigger = true;
                }
                budgets.push(InstanceBudget {
                    instance: inst.name.clone(),
                    limit: room as i64,
                });
            }
            (budgets, queue.total_waiting(), trigger)
        };
        let limit = prefetch
            .saturating_sub(waiting)
            .min(ctx.dispatcher.batch_size);
        let strays = strays_at.elapsed() >= STRAYS_EVERY && limit > 0;
        if strays {
            strays_at = Instant::now();
            claim_strays(&ctx, &shared, limit.min(16)).await;
        }
        if !trigger || limit == 0 {
            let nap = if woken {
                REPROBE.saturating_sub(last_probe.elapsed())
            } else {
                idle_for
            };
            tokio::select! {
                _ = changed => {}
                _ = wake.changed() => woken = true,
                _ = ctx.work.notified() => woken = true,
                _ = tokio::time::sleep(nap) => {
                    if !woken {
                        drained.clear();
                        idle_for = ctx.idle_poll();
                    }
                }
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        let params = ClaimParams {
            owner: ctx.owner.clone(),
            limit: limit as i64,
            lease: ctx.dispatcher.lease,
            skip_instances: Vec::new(),
            fresh_ids: match ctx.dispatcher.id_source {
                IdSource::Local => (0..limit).map(|_| ids::local_message_id()).collect(),
                IdSource::Api => Vec::new(),
            },
            budgets,
        };
        last_probe = Instant::now();
        let claimed = match ctx.store.claim(params.clone()).await {
            Ok(claimed) => {
                failures = 0;
                claimed
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "dispatcher: claim failed; retrying");
                let d = backoff(failures, Duration::from_millis(100), Duration::from_secs(5));
                tokio::select! { _ = tokio::time::sleep(d) => {}, _ = shutdown.cancelled() => {} }
                continue;
            }
        };
        // An instance that got less than its budget has no more due rows
        // (unless the claim's overall limit cut it short).
        if (claimed.len() as i64) < params.limit {
            let mut got: HashMap<&str, i64> = HashMap::new();
            for r in &claimed {
                *got.entry(r.instance.as_str()).or_default() += 1;
            }
            for b in &params.budgets {
                if got.get(b.instance.as_str()).copied().unwrap_or(0) < b.limit {
                    drained.insert(b.instance.clone());
                }
            }
        }
        if claimed.is_empty() {
            // Sleep until the next row of a drained instance is due (a
            // retry's backoff, a `not_before`) rather than a whole poll
            // interval; instances still busy wake the claimer as they send.
            let skip: Vec<String> = ctx
                .instances
                .keys()
                .into_iter()
                .filter(|n| !drained.contains(n))
                .collect();
            let due = ctx
                .store
                .next_due(&skip, ctx.dispatcher.id_source == IdSource::Local)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "dispatcher: next due time unknown; polling");
                    None
                });
            idle_for = due.map_or(ctx.idle_poll(), |d| {
                ctx.idle_poll()
                    .min(d.max(Duration::from_millis(10)) + Duration::from_millis(2))
            });
            continue;
        }
        queue_claimed(&shared, claimed);
    }
}

fn queue_claimed(shared: &Shared, claimed: Vec<OutboxRow>) {
    metrics::counter!("statusd_transitions_total", "to" => "uploading")
        .increment(claimed.len() as u64);
    let at = Instant::now();
    {
        let mut queue = lock(&shared.queue);
        for row in claimed {
            queue.push(row, at);
        }
    }
    shared.changed.notify_waiters();
}

/// Claims a few rows of instances not configured here, which the budgeted
/// claim never takes, so that they are reported (`invalid`: unknown
/// instance) as before rather than left waiting unseen.
async fn claim_strays<S: Store, P: Provider>(ctx: &Ctx<S, P>, shared: &Shared, limit: usize) {
    let params = ClaimParams {
        owner: ctx.owner.clone(),
        limit: limit as i64,
        lease: ctx.dispatcher.lease,
        skip_instances: ctx.instances.keys(),
        fresh_ids: match ctx.dispatcher.id_source {
            IdSource::Local => (0..limit).map(|_| ids::local_message_id()).collect(),
            IdSource::Api => Vec::new(),
        },
        budgets: Vec::new(),
    };
    match ctx.store.claim(params).await {
        Ok(rows) if !rows.is_empty() => queue_claimed(shared, rows),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "dispatcher: claiming rows of unknown instances failed")
        }
    }
}
