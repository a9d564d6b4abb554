//! Claims due `pending_upload` rows in batches, per instance only what its
//! budget allows (about a second of its rate, twice its `max_in_flight`),
//! hands them to the send slots round-robin across the instances that can
//! send now (R7), and writes the outcomes in batches. Leases are committed
//! before any HTTP call and outcomes are fenced by attempt (rules 2 and 3).
//! Each instance is served by one replica at a time (instance leases, kept
//! here), so its rate and cap hold for the whole deployment.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use governor::clock::{Clock, DefaultClock};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::claimer::claim_loop;
use super::fair_queue::{FairQueue, Gate, Next, Waiting};
use super::lease_keeper::{keep_leases, LeaseView};
use super::{backoff, Ctx};
use crate::config::{DaemonSettings, IdSource};
use crate::model::{AttemptOutcome, OutboxRow, State, StatusBody};
use crate::provider::{OutgoingStatus, Provider, SendOutcome};
use crate::store::{Completion, Effect, Reason, Store, Transition};

/// The dispatcher's settings, built from `[daemon]` (defaults:
/// [`DaemonSettings::default`]).
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// Provider calls in flight, all instances together.
    pub concurrency: usize,
    /// Most rows claimed in one statement.
    pub batch_size: usize,
    pub lease: Duration,
    pub id_source: IdSource,
    /// Retryable outcomes allowed before a row becomes `failed`, and the
    /// backoff between them.
    pub max_attempts: i32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Wait after an unknown outcome before the first look-up.
    pub settle_delay: Duration,
    /// Pause of an instance that answered 401/403 before it is probed.
    pub instance_probe: Duration,
    /// Time in-flight sends get to finish at shutdown.
    pub shutdown_grace: Duration,
}

impl DispatcherConfig {
    pub fn new(s: &DaemonSettings) -> DispatcherConfig {
        DispatcherConfig {
            concurrency: s.concurrency,
            batch_size: s.batch_size,
            lease: s.lease(),
            id_source: s.id_source,
            max_attempts: s.max_attempts,
            retry_base: Duration::from_millis(s.retry_base_ms),
            retry_max: Duration::from_millis(s.retry_max_ms),
            settle_delay: Duration::from_millis(s.settle_delay_ms),
            instance_probe: Duration::from_millis(s.instance_probe_ms),
            shutdown_grace: Duration::from_secs(s.shutdown_grace_secs),
        }
    }
}

/// What the claimer, the send loop and the lease keeper share.
pub(super) struct Shared {
    pub(super) queue: Mutex<FairQueue>,
    pub(super) leases: Mutex<LeaseView>,
    /// Rows arrived, a send finished, leases changed.
    pub(super) changed: Notify,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub async fn run<S: Store, P: Provider>(
    ctx: Arc<Ctx<S, P>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(ctx.dispatcher.concurrency));
    let (tx, rx) = mpsc::channel::<Completion>(ctx.dispatcher.concurrency * 4);
    // Two writers take turns: one gathers the next batch while the other's
    // statement runs (fenced per row, so their order does not matter).
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let writers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(outcome_writer(ctx.clone(), rx.clone())))
        .collect();
    let prober = tokio::spawn(probe_paused(ctx.clone(), shutdown.clone()));
    let in_flight = TaskTracker::new();
    // Cancelled after the grace period: in-flight calls stop and their rows
    // are recorded as in doubt.
    let hard_stop = CancellationToken::new();
    let shared = Arc::new(Shared {
        queue: Mutex::new(FairQueue::default()),
        leases: Mutex::new(LeaseView::default()),
        changed: Notify::new(),
    });
    let keeper = tokio::spawn(keep_leases(ctx.clone(), shared.clone(), shutdown.clone()));
    // Claimed rows wait in the fair queue, per instance: the next claim
    // runs while the slots are busy sending, so a claim's round trip never
    // leaves them idle. A slot takes the next instance in turn that can send
    // now; a row that waited past half its lease is released, not sent.
    let claimer = tokio::spawn(claim_loop(ctx.clone(), shared.clone(), shutdown.clone()));

    'slots: loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p?,
            _ = shutdown.cancelled() => break,
        };
        let w = loop {
            let changed = shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let next = {
                let leases = lock(&shared.leases);
                let mut queue = lock(&shared.queue);
                queue.next(|name, sending, head| gate(&ctx, &leases, name, sending, head))
            };
            match next {
                Next::Send(w) => break w,
                Next::Release(rows) => {
                    for w in rows {
                        if w.claimed.elapsed() > ctx.dispatcher.lease / 2 {
                            tracing::warn!(
                                row_id = %w.row.id,
                                waited_ms = w.claimed.elapsed().as_millis() as u64,
                                "claimed row waited past half its lease for a send slot; released unsent"
                            );
                        }
                        let _ = tx.send(released_unsent(&w.row)).await;
                    }
                    shared.changed.notify_waiters();
                }
                Next::Wait(soonest) => {
                    let nap = soonest.unwrap_or(Duration::from_secs(1));
                    tokio::select! {
                        _ = changed => {}
                        _ = tokio::time::sleep(nap) => {}
                        _ = shutdown.cancelled() => break 'slots,
                    }
                }
            }
        };
        let (row, claimed) = (w.row, w.claimed);
        let span = tracing::info_span!("send", row_id = %row.id, message_id = row.message_id.as_deref().unwrap_or(""), instance = %row.instance, attempt = row.attempts);
        let (ctx, tx, hard_stop, shared) =
            (ctx.clone(), tx.clone(), hard_stop.clone(), shared.clone());
        in_flight.spawn(
            async move {
                let c = send_one(&ctx, &row, claimed, &hard_stop).await;
                // The writer outlives every sender; if it is gone the
                // row stays leased and is rescued, never lost.
                let _ = tx.send(c).await;
                // The slot (and the instance's in-flight place) is freed
                // only once the outcome is queued for the writer: when
                // writes lag, sending waits (bounded memory, outcomes
                // recorded well within the lease) instead of finished sends
                // piling up.
                lock(&shared.queue).done(&row.instance);
                shared.changed.notify_waiters();
                drop(permit);
            }
            .instrument(span),
        );
    }

    // Rows claimed but never sent go straight back, their attempt refunded:
    // nothing was sent, so there is nothing to doubt.
    let _ = claimer.await;
    let unsent = lock(&shared.queue).take_all();
    let released = unsent.len();
    for w in unsent {
        let _ = tx.send(released_unsent(&w.row)).await;
    }
    if released > 0 {
        tracing::info!(released, "claimed rows not yet sent were released");
    }
    in_flight.close();
    let grace = ctx.dispatcher.shutdown_grace;
    if !in_flight.is_empty() {
        tracing::info!(
            in_flight = in_flight.len(),
            grace_secs = grace.as_secs(),
            "waiting for in-flight sends"
        );
    }
    if tokio::time::timeout(grace, in_flight.wait()).await.is_err() {
        tracing::warn!(
            in_flight = in_flight.len(),
            "grace period over: cancelling in-flight sends (their rows go to in_doubt)"
        );
        hard_stop.cancel();
        in_flight.wait().await;
    }
    drop(tx);
    for w in writers {
        let _ = w.await;
    }
    // Nothing of ours is in flight any more: our instances go to another
    // replica at its next renewal rather than when the leases expire.
    let _ = keeper.await;
    if let Err(e) = ctx.store.release_instance_leases(&ctx.owner).await {
        tracing::warn!(error = %e, "releasing the instance leases failed; they expire on their own");
    }
    prober.abort();
    Ok(())
}

/// Whether `name`'s first waiting row may be sent now; takes a token from
/// its rate limiter if so.
fn gate<S, P: Provider>(
    ctx: &Ctx<S, P>,
    leases: &LeaseView,
    name: &str,
    sending: usize,
    head: &Waiting,
) -> Gate {
    // Not configured here: sent at once, `send_one` reports it.
    let Some(inst) = ctx.instances.get(name) else {
        return Gate::Ready;
    };
    if inst.is_paused() || !leases.serves(name) {
        return Gate::Release;
    }
    // Checked before the rate limit, so a released row never uses up one
    // of its instance's sends.
    if head.claimed.elapsed() > ctx.dispatcher.lease / 2 {
        return Gate::Stale;
    }
    if sending >= inst.max_in_flight {
        return Gate::Full;
    }
    match inst.limiter.check() {
        Ok(()) => Gate::Ready,
        Err(not_until) => Gate::NotUntil(not_until.wait_time_from(DefaultClock::default().now())),
    }
}

/// A claimed row given back unsent: `pending_upload` again, its attempt
/// refunded, its last error kept. Nothing was sent, so nothing is in doubt.
fn released_unsent(row: &OutboxRow) -> Completion {
    let mut t = Transition::new(row.id, row.attempts, State::PendingUpload);
    t.effect = Effect::RefundAttempt;
    t.reason = Reason::last_of(row);
    Completion {
        transition: t,
        started_at: chrono::Utc::now(),
        latency: Duration::ZERO,
        outcome: AttemptOutcome::Released,
    }
}

/// Sends one claimed row (its instance's token already taken, see
/// [`gate`]) and turns the outcome into a fenced transition.
async fn send_one<S: Store, P: Provider>(
    ctx: &Ctx<S, P>,
    row: &OutboxRow,
    claimed: Instant,
    hard_stop: &CancellationToken,
) -> Completion {
    let started_at = chrono::Utc::now();
    let t0 = Instant::now();
    // Rows claimed straight from `queued` are validated here, before any
    // send; a bad row becomes `invalid` and its claim is given back.
    if let Some(problem) = ctx.check_row(row) {
        tracing::warn!(error = %problem, "invalid row");
        let mut t = Transition::new(row.id, row.attempts, State::Invalid);
        t.reason = Reason::text(problem);
        t.effect = Effect::RefundAttempt;
        return Completion {
            transition: t,
            started_at,
            latency: t0.elapsed(),
            outcome: AttemptOutcome::Invalid,
        };
    }
    let outcome = match (ctx.instances.get(&row.instance), row.message_id.as_deref()) {
        (None, _) => SendOutcome::InstanceDown {
            reason: format!("instance `{}` is not configured", row.instance),
            http_status: None,
        },
        (_, None) => SendOutcome::Permanent {
            reason: "row has no message id".into(),
            http_status: 0,
        },
        (Some(inst), Some(mid)) => match StatusBody::parse(&row.kind, &row.payload) {
            Err(e) => SendOutcome::Permanent {
                reason: e.to_string(),
                http_status: 0,
            },
            Ok(body) => {
                let status = OutgoingStatus {
                    message_id: mid,
                    body: &body,
                };
                // Its token was taken when a slot picked it (`gate`), which
                // also released it had it waited past half its lease; the
                // call is bounded by the lease left, so no call outlives it.
                let Some(lease_left) = ctx
                    .dispatcher
                    .lease
                    .checked_sub(claimed.elapsed())
                    .filter(|l| *l >= ctx.dispatcher.lease / 2)
                else {
                    return released_unsent(row);
                };
                let call = async {
                    let t = Instant::now();
                    let out = inst.provider.send_status_within(&status, lease_left).await;
                    let label = ctx.instances.label(&row.instance);
                    metrics::histogram!(crate::metrics::PROVIDER_REQUEST_DURATION, crate::metrics::INSTANCE_LABEL => label, "outcome" => out.label())
                        .record(t.elapsed().as_secs_f64());
                    out
                };
                tokio::select! {
                    out = call => out,
                    _ = hard_stop.cancelled() => SendOutcome::InDoubt {
                        reason: "the call was cancelled at shutdown".into(),
                        http_status: None,
                    },
                }
            }
        },
    };
    let latency = t0.elapsed();
    let transition = transition_for(ctx, row, &outcome);
    match &outcome {
        SendOutcome::Posted { .. } => {
            tracing::debug!(latency_ms = latency.as_millis() as u64, "posted")
        }
        other => {
            tracing::info!(outcome = other.label(), http_status = other.http_status(), error = other.reason().unwrap_or(""), next = %transition.to, "send did not post")
        }
    }
    // A Retry-After refusal gives the attempt back: its history line says
    // so (`statusd show`), unlike a retryable error that counts.
    let outcome = match &outcome {
        SendOutcome::Retryable { .. } if transition.effect == Effect::RefundAttempt => {
            AttemptOutcome::RateLimited
        }
        other => other.attempt_outcome(),
    };
    Completion {
        transition,
        started_at,
        latency,
        outcome,
    }
}

/// The state machine's send edges (DESIGN.md §4), in one place.
pub fn transition_for<S, P: Provider>(
    ctx: &Ctx<S, P>,
    row: &OutboxRow,
    outcome: &SendOutcome,
) -> Transition {
    let s = &ctx.dispatcher;
    let mut t = Transition::new(row.id, row.attempts, State::Failed);
    t.reason = Reason {
        error: outcome.reason().map(str::to_string),
        http_status: outcome.http_status().map(i32::from),
    };
    match outcome {
        SendOutcome::Posted { provider_id } => {
            t.to = State::Posted;
            t.provider_id = Some(provider_id.clone());
        }
        SendOutcome::Retryable {
            retry_after: Some(after),
            ..
        } => {
            // Rate limited: honour Retry-After; not the row's fault, so the
            // attempt does not count towards max_attempts.
            t.to = State::PendingUpload;
            t.effect = Effect::RefundAttempt;
            t.delay = *after + backoff(1, Duration::from_millis(50), Duration::from_millis(50));
        }
        SendOutcome::Retryable { .. } => {
            if row.attempts >= s.max_attempts {
                t.reason.error = Some(format!(
                    "gave up after {} attempts: {}",
                    row.attempts,
                    outcome.reason().unwrap_or("")
                ));
            } else {
                t.to = State::PendingUpload;
                t.delay = backoff(row.attempts, s.retry_base, s.retry_max);
            }
        }
        SendOutcome::InDoubt { .. } => {
            t.to = State::InDoubt;
            t.delay = s.settle_delay;
        }
        SendOutcome::Permanent { .. } => t.to = State::Failed,
        SendOutcome::InstanceDown {
            reason,
            http_status,
        } => {
            // Not the row's fault: it waits for the instance, it does not fail.
            t.to = State::PendingUpload;
            t.effect = Effect::RefundAttempt;
            t.delay = s.instance_probe;
            if let Some(inst) = ctx.instances.get(&row.instance) {
                let why = match http_status {
                    Some(h) => format!("HTTP {h}: {reason}"),
                    None => reason.clone(),
                };
                inst.pause(s.instance_probe, &why);
            }
        }
    }
    t
}

/// Writes outcomes in batches; retries while the database is unreachable.
async fn outcome_writer<S: Store, P: Provider>(
    ctx: Arc<Ctx<S, P>>,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Completion>>>,
) {
    let max_batch = ctx.dispatcher.batch_size.max(1);
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            batch.push(first);
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
        }
        let mut tries = 0;
        loop {
            match ctx.store.complete(&batch).await {
                Ok(applied) => {
                    for c in &batch {
                        metrics::counter!("statusd_transitions_total", "to" => c.transition.to.as_str())
                            .increment(1);
                    }
                    if applied < batch.len() as u64 {
                        tracing::warn!(
                            stale = batch.len() as u64 - applied,
                            "outcomes fenced out (rows moved on meanwhile)"
                        );
                    }
                    if batch
                        .iter()
                        .any(|c| c.transition.to == State::PendingUpload)
                    {
                        ctx.work.notify_waiters();
                    }
                    break;
                }
                Err(e) => {
                    tries += 1;
                    // Unwritten outcomes are not lost: the rows stay leased,
                    // the rescuer moves them to in_doubt, the reconciler
                    // finds what was posted.
                    if tries > 50 {
                        tracing::error!(error = %e, rows = batch.len(), "giving up writing outcomes; the rows will be rescued and reconciled");
                        break;
                    }
                    tracing::warn!(error = %e, rows = batch.len(), "writing outcomes failed; retrying");
                    tokio::time::sleep(backoff(
                        tries,
                        Duration::from_millis(100),
                        Duration::from_secs(3),
                    ))
                    .await;
                }
            }
        }
        batch.clear();
    }
}

/// Probes paused instances and resumes them when they answer, and keeps the
/// store's record of paused instances (`statusd stats`, the dashboard) in
/// step with this process's view: written when an instance pauses, its
/// reason changes or it resumes (and once at start, clearing what a previous
/// run left).
async fn probe_paused<S: Store, P: Provider>(ctx: Arc<Ctx<S, P>>, shutdown: CancellationToken) {
    let every = (ctx.dispatcher.instance_probe / 4)
        .clamp(Duration::from_millis(50), Duration::from_millis(5000));
    // What the store holds per instance, as far as this process wrote it;
    // absent = not yet written by this run. A pause is written again every
    // `REWRITE` while it lasts: another replica starting up clears what it
    // finds for its own healthy instances, and this puts it back.
    const REWRITE: Duration = Duration::from_secs(30);
    let mut written: std::collections::HashMap<String, (Option<String>, Instant)> =
        Default::default();
    loop {
        for inst in ctx.instances.values() {
            let now = inst.pause_reason();
            let fresh = |(w, at): &(Option<String>, Instant)| {
                *w == now && (now.is_none() || at.elapsed() < REWRITE)
            };
            if written.get(&inst.name).is_some_and(fresh) {
                continue;
            }
            let res = match &now {
                Some(reason) => ctx.store.set_instance_pause(&inst.name, reason).await,
                None => ctx.store.clear_instance_pause(&inst.name).await,
            };
            match res {
                Ok(()) => {
                    written.insert(inst.name.clone(), (now, Instant::now()));
                }
                // Tried again next round; only the operators' view lags.
                Err(e) => {
                    tracing::warn!(instance = %inst.name, error = %e, "recording the instance's pause failed")
                }
            }
        }
        tokio::select! { _ = tokio::time::sleep(every) => {}, _ = shutdown.cancelled() => return }
        for inst in ctx.instances.values() {
            if !inst.probe_due() {
                continue;
            }
            match inst.provider.probe().await {
                Ok(()) => {
                    inst.resume();
                    ctx.work.notify_waiters();
                }
                Err(e) => {
                    tracing::warn!(instance = %inst.name, error = %e, "instance still down");
                    let reason = inst.pause_reason().unwrap_or_else(|| e.to_string());
                    inst.pause(ctx.dispatcher.instance_probe, &reason);
                }
            }
        }
    }
}
