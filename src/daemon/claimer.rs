//! The dispatcher's claimer: claims due rows into the fair queue, per
//! instance only what its budget allows (R7), in one statement per batch
//! (`ClaimParams::budgets`) for the instances that need rows, taken in turn.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

use super::dispatcher::{lock, Shared};
use super::{backoff, Ctx};
use crate::config::IdSource;
use crate::instance::{Instance, Snapshot};
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
/// Claimed rows held (waiting for a slot), all instances together, at most
/// this many per send slot: a bound on memory and on how long a claimed row
/// can wait (well under half its lease at any plausible send rate).
const MAX_HELD_PER_SLOT: usize = 64;
/// The send rate that sizes the held rows is measured over this long.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// How many claimed rows may wait for a send slot, all instances together:
/// `floor` (a few batches), raised to one row per instance with due rows
/// (an instance can use its next token only if a row of it waits: with
/// 1,000 instances a fixed 128 would leave 872 idle) and to two seconds of
/// the recent send rate, and capped at `ceiling`.
fn held_bound(floor: usize, due_instances: usize, sends_per_sec: f64, ceiling: usize) -> usize {
    floor
        .max(due_instances)
        .max((2.0 * sends_per_sec) as usize)
        .min(ceiling.max(floor))
}

/// The sending instances in name order (the claimer's round-robin order),
/// rebuilt only when the registry's view changes.
struct Order<P> {
    of: Option<Arc<Snapshot<P>>>,
    instances: Vec<Arc<Instance<P>>>,
    /// Where the next plan starts.
    cursor: usize,
}

impl<P> Order<P> {
    fn refresh(&mut self, snap: Arc<Snapshot<P>>) {
        if self.of.as_ref().is_some_and(|o| Arc::ptr_eq(o, &snap)) {
            return;
        }
        let mut v: Vec<Arc<Instance<P>>> = snap.running.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        self.instances = v;
        self.cursor %= self.instances.len().max(1);
        self.of = Some(snap);
    }
}

/// The recent rate of sends started, for [`held_bound`].
struct SendRate {
    at: Instant,
    count: u64,
    per_sec: f64,
}

impl SendRate {
    fn update(&mut self, sent: u64) -> f64 {
        let dt = self.at.elapsed();
        if dt >= RATE_WINDOW {
            self.per_sec = sent.saturating_sub(self.count) as f64 / dt.as_secs_f64();
            self.at = Instant::now();
            self.count = sent;
        }
        self.per_sec
    }
}

/// Claims due rows into the fair queue, per instance only what that
/// instance can send soon: about [`CLAIM_AHEAD`] of its rate not yet
/// waiting, and up to twice its `max_in_flight` held in all. An instance
/// needs rows when at least half of that is free (or nothing is held at
/// all); a claim takes such instances in turn (name order, from where the
/// last claim stopped) until their budgets fill one batch, so a statement
/// probes only the instances it can serve, however many are configured.
/// Until shutdown.
pub(super) async fn claim_loop<S: Store, P: Provider>(
    ctx: Arc<Ctx<S, P>>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let mut wake = ctx.store.subscribe();
    let mut failures = 0;
    // Held rows, all instances together: at least this many (see
    // `held_bound` for when more).
    let floor = ctx
        .settings
        .batch_size
        .min(ctx.dispatcher.concurrency * 4)
        .max(1);
    let ceiling = ctx.dispatcher.concurrency * MAX_HELD_PER_SLOT;
    // Instances whose last claim found none of their rows due: not claimed
    // for again until a wake-up, a nudge, or the idle poll interval since
    // the set was last cleared (a bound that busy neighbours' sends, which
    // wake the claimer all the time, cannot put off).
    let mut drained: HashSet<String> = HashSet::new();
    let mut drained_cleared = Instant::now();
    let mut woken = false;
    let mut last_probe = Instant::now();
    let mut idle_for = ctx.idle_poll();
    let mut strays_at = Instant::now();
    let mut last_plan = Instant::now();
    let mut order = Order {
        of: None,
        instances: Vec::new(),
        cursor: 0,
    };
    let mut rate = SendRate {
        at: Instant::now(),
        count: 0,
        per_sec: 0.0,
    };
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
        if (woken && last_probe.elapsed() >= REPROBE)
            || drained_cleared.elapsed() >= ctx.idle_poll()
        {
            drained.clear();
            drained_cleared = Instant::now();
            woken = false;
        }
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        order.refresh(ctx.instances.snapshot());
        let (budgets, free, limit) = {
            let leases = lock(&shared.leases);
            let queue = lock(&shared.queue);
            let may_claim = |inst: &Instance<P>| {
                !inst.is_paused() && leases.serves(&inst.name) && !drained.contains(&inst.name)
            };
            let due_instances = order.instances.iter().filter(|i| may_claim(i)).count();
            let bound = held_bound(floor, due_instances, rate.update(queue.sent()), ceiling);
            // Each instance's part of the bound: with many instances due,
            // a few rows each rather than a second's worth for some of them
            // and none for the rest.
            let share = (bound / due_instances.max(1)).max(1);
            let free = bound.saturating_sub(queue.total_waiting());
            let limit = free.min(ctx.dispatcher.batch_size);
            let n = order.instances.len();
            let mut budgets = Vec::new();
            let mut covered = 0;
            for k in 0..n {
                if covered >= limit {
                    break;
                }
                let at = (order.cursor + k) % n;
                let inst = &order.instances[at];
                if !may_claim(inst) {
                    continue;
                }
                let (w, s) = (queue.waiting(&inst.name), queue.sending(&inst.name));
                let ahead = ((f64::from(inst.rate_per_sec) * CLAIM_AHEAD.as_secs_f64()).ceil()
                    as usize)
                    .max(1);
                let ahead = ahead.min(share);
                let hold = 2 * inst.max_in_flight;
                let room = ahead.saturating_sub(w).min(hold.saturating_sub(w + s));
                // Topped up once half of its budget is free, not per row.
                if room == 0 || (room * 2 < ahead.min(hold) && w + s > 0) {
                    continue;
                }
                covered += room;
                budgets.push(InstanceBudget {
                    instance: inst.name.clone(),
                    limit: room as i64,
                });
                order.cursor = (at + 1) % n;
            }
            (budgets, free, limit.min(covered))
        };
        if strays_at.elapsed() >= STRAYS_EVERY && free > 0 {
            strays_at = Instant::now();
            claim_strays(&ctx, &shared, free.min(ctx.dispatcher.batch_size)).await;
        }
        if budgets.is_empty() || limit == 0 {
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
                        drained_cleared = Instant::now();
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
        // An instance that got none of its budget has no due rows (unless
        // the claim's overall limit cut it short); one that got some is
        // asked again, which costs one index probe in the next claim.
        if (claimed.len() as i64) < params.limit {
            let got: HashSet<&str> = claimed.iter().map(|r| r.instance.as_str()).collect();
            for b in &params.budgets {
                if !got.contains(b.instance.as_str()) {
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

#[cfg(test)]
mod tests {
    use super::{held_bound, SendRate};
    use std::time::Duration;
    use tokio::time::Instant;

    /// The rate is the sends of the last whole window (paused time: the
    /// windows are exact).
    #[tokio::test(start_paused = true)]
    async fn the_send_rate_is_measured_over_whole_windows() {
        let mut r = SendRate {
            at: Instant::now(),
            count: 0,
            per_sec: 0.0,
        };
        assert_eq!(r.update(10), 0.0, "no window has passed yet");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(r.update(50), 0.0);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(r.update(100), 100.0);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(r.update(160), 30.0, "60 sends over 2 s");
        assert_eq!(r.update(400), 30.0, "until the next window ends");
    }

    #[test]
    fn held_rows_scale_with_instances_and_the_send_rate_within_the_ceiling() {
        // One busy instance: the batch floor.
        assert_eq!(held_bound(128, 1, 20.0, 4096), 128);
        // 1,000 instances with due rows: one row each at least.
        assert_eq!(held_bound(128, 1_000, 0.0, 4096), 1_000);
        // Sending 1,500/s: two seconds of it.
        assert_eq!(held_bound(128, 10, 1_500.0, 4096), 3_000);
        // Never past the ceiling, never under the floor.
        assert_eq!(held_bound(128, 100_000, 50_000.0, 4096), 4096);
        assert_eq!(held_bound(128, 0, 0.0, 64), 128);
    }
}
