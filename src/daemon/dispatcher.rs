//! Claims due `pending_upload` rows in batches sized to the free send slots,
//! sends each through its instance's rate limiter, and writes the outcomes
//! in batches. Leases are committed before any HTTP call and outcomes are
//! fenced by attempt (rules 2 and 3).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::{backoff, Ctx};
use crate::config::{DaemonSettings, IdSource};
use crate::model::{AttemptOutcome, OutboxRow, State, StatusBody};
use crate::provider::{ids, OutgoingStatus, Provider, SendOutcome};
use crate::store::{ClaimParams, Completion, Effect, Store, Transition};

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
    // Claimed rows wait here for a free slot: the next claim runs while the
    // slots are busy sending, so a claim's round trip never leaves them
    // idle, and claims and outcomes come in large batches. At most one batch
    // waits; a row that waited too long for its lease is released, not sent
    // (see `send_one`).
    let prefetch = ctx
        .settings
        .batch_size
        .min(ctx.dispatcher.concurrency * 4)
        .max(1);
    let (rows_tx, mut rows_rx) = mpsc::channel::<(OutboxRow, Instant)>(prefetch);
    let claimer = tokio::spawn(claim_loop(ctx.clone(), rows_tx, shutdown.clone()));

    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p?,
            _ = shutdown.cancelled() => break,
        };
        let (row, claimed) = tokio::select! {
            r = rows_rx.recv() => match r {
                Some(r) => r,
                None => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let span = tracing::info_span!("send", row_id = %row.id, message_id = row.message_id.as_deref().unwrap_or(""), instance = %row.instance, attempt = row.attempts);
        let (ctx, tx, hard_stop) = (ctx.clone(), tx.clone(), hard_stop.clone());
        in_flight.spawn(
            async move {
                let c = send_one(&ctx, &row, claimed, &hard_stop).await;
                // The writer outlives every sender; if it is gone the
                // row stays leased and is rescued, never lost.
                let _ = tx.send(c).await;
                // The slot is freed only once the outcome is queued for the
                // writer: when writes lag, sending waits (bounded memory,
                // outcomes recorded well within the lease) instead of
                // finished sends piling up.
                drop(permit);
            }
            .instrument(span),
        );
    }

    // Rows claimed but never sent go straight back, their attempt refunded:
    // nothing was sent, so there is nothing to doubt.
    let _ = claimer.await;
    rows_rx.close();
    let mut released = 0;
    while let Some((row, _)) = rows_rx.recv().await {
        let _ = tx.send(released_unsent(&row)).await;
        released += 1;
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
    prober.abort();
    Ok(())
}

/// Claims due rows into `rows` whenever it has room for a batch, until
/// shutdown; idles until the next row is due when there is none.
async fn claim_loop<S: Store, P: Provider>(
    ctx: Arc<Ctx<S, P>>,
    rows: mpsc::Sender<(OutboxRow, Instant)>,
    shutdown: CancellationToken,
) {
    let mut wake = ctx.store.subscribe();
    let mut failures = 0;
    // Claim in batches: wait for room for half the buffer rather than
    // claiming one row per statement.
    let refill_at = (rows.max_capacity() / 2).max(1);
    while !shutdown.is_cancelled() {
        if rows.capacity() < refill_at {
            // Returns once `refill_at` places are free; the permits go back
            // at once (this task is the only sender).
            tokio::select! {
                r = rows.reserve_many(refill_at) => if r.is_err() { return },
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        let limit = rows.capacity().min(ctx.dispatcher.batch_size);
        let skip = ctx.paused_instances();
        let params = ClaimParams {
            owner: ctx.owner.clone(),
            limit: limit as i64,
            lease: ctx.dispatcher.lease,
            skip_instances: skip.clone(),
            fresh_ids: match ctx.dispatcher.id_source {
                IdSource::Local => (0..limit).map(|_| ids::local_message_id()).collect(),
                IdSource::Api => Vec::new(),
            },
        };
        let claimed = match ctx.store.claim(params).await {
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
        if claimed.is_empty() {
            // Sleep until the next row is due (a retry's backoff, a
            // `not_before`) rather than a whole poll interval.
            let due = ctx
                .store
                .next_due(&skip, ctx.dispatcher.id_source == IdSource::Local)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "dispatcher: next due time unknown; polling");
                    None
                });
            ctx.idle(&mut wake, due, &shutdown).await;
            continue;
        }
        metrics::counter!("statusd_transitions_total", "to" => "uploading")
            .increment(claimed.len() as u64);
        let at = Instant::now();
        for row in claimed {
            // There is room: no more rows were claimed than places were free.
            if rows.send((row, at)).await.is_err() {
                return;
            }
        }
    }
}

/// A claimed row given back unsent: `pending_upload` again, its attempt
/// refunded, its last error kept. Nothing was sent, so nothing is in doubt.
fn released_unsent(row: &OutboxRow) -> Completion {
    let mut t = Transition::new(row.id, row.attempts, State::PendingUpload);
    t.effect = Effect::RefundAttempt;
    t.error = row.last_error.clone();
    t.http_status = row.last_http_status;
    Completion {
        transition: t,
        started_at: chrono::Utc::now(),
        latency: Duration::ZERO,
        outcome: AttemptOutcome::Released,
    }
}

/// Sends one claimed row and turns the outcome into a fenced transition.
/// `claimed` is when its lease was taken: a row that waited for a send slot
/// past half its lease is released unsent rather than sent on a lease the
/// rescuer may soon take back.
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
        t.error = Some(problem);
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
                // Not sent yet: an old lease or a shutdown while waiting for
                // the rate limit gives the row back, it does not put it in
                // doubt. (The lease is checked before the rate limit, so a
                // released row never uses up one of its instance's sends.)
                if claimed.elapsed() > ctx.dispatcher.lease / 2 {
                    tracing::warn!(
                        waited_ms = claimed.elapsed().as_millis() as u64,
                        "claimed row waited past half its lease for a send slot; released unsent"
                    );
                    return released_unsent(row);
                }
                tokio::select! {
                    _ = inst.limiter.until_ready() => {}
                    _ = hard_stop.cancelled() => return released_unsent(row),
                }
                // The rate limit may have kept it long: checked again, and the
                // call bounded by the lease left, so no call outlives its lease.
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
    t.http_status = outcome.http_status().map(i32::from);
    t.error = outcome.reason().map(str::to_string);
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
                t.error = Some(format!(
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
