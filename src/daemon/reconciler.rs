//! Settles `in_doubt` rows (rule 4) by asking the provider, a batch per
//! instance at a time (issue 12 §3).
//!
//! - Present → `posted`.
//! - Absent, with positive evidence only (DESIGN.md R5) → `pending_upload`,
//!   re-sent with the same id. Evidence is a documented not-found by id on
//!   an instance whose supplied ids *and* look-up by id are proven
//!   ([`Capabilities::by_id_miss_is_absence`]), or one read of the status
//!   chat that reached past every row's window with each own status in it
//!   classified ([`provider::search`](crate::provider::search)) — and in
//!   both cases only once the provider can no longer be about to post it:
//!   the row's claim + lease (no call outlives its lease) + the engine's
//!   retry window (`daemon.engine_retry_window_ms`). Before that, the row
//!   simply waits ("not yet").
//! - Anything else is unavailable → asked again with backoff; after
//!   `reconcile_max_attempts` the row is parked for an operator, never
//!   re-posted blindly.
//!
//! What an instance's provider does is read from the store's
//! `provider_capabilities` (shared by replicas, kept across restarts) with
//! a short cache, and what the look-ups and sends show is recorded there
//! ([`record_capabilities`]). Every look-up call waits for the instance's
//! rate limiter, so reconciling cannot flood the provider.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;

use super::{backoff, Ctx};
use crate::config::DaemonSettings;
use crate::instance::Instance;
use crate::metrics as names;
use crate::model::{OutboxRow, State, StatusBody};
use crate::provider::search::{self, Verdict};
use crate::provider::{ById, Evidence, Provider, StatusQuery};
use crate::store::{
    record_capabilities, Capabilities, CapabilityChange, Effect, Known, Reason, Store, Transition,
};

/// Statuses posted before the row's latest claim, minus this, are not
/// candidates for a content match (clock skew between us and the provider).
const MATCH_SLACK: chrono::Duration = chrono::Duration::minutes(2);
/// How long capabilities read from the store are trusted before being read
/// again (another replica may have learned something).
const CAPABILITY_CACHE: Duration = Duration::from_secs(5);

/// The reconciler's settings, built from `[daemon]`
/// (defaults: [`DaemonSettings::default`]).
#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    /// How often due in-doubt rows are looked for.
    pub interval: Duration,
    /// Most rows looked at in one pass.
    pub batch_size: usize,
    /// Instances reconciled at once.
    pub parallelism: usize,
    /// Failed look-ups before a row is parked for an operator.
    pub max_attempts: i32,
    /// Backoff between failed look-ups: from `settle_delay` (at least
    /// 100 ms, never a busy loop) up to `retry_max`.
    pub settle_delay: Duration,
    pub retry_max: Duration,
    /// A claim's lease: no call outlives it.
    pub lease: Duration,
    /// How long the provider may still post after our call ended.
    pub engine_retry_window: Duration,
}

impl ReconcilerConfig {
    pub fn new(s: &DaemonSettings) -> ReconcilerConfig {
        ReconcilerConfig {
            interval: Duration::from_millis(s.reconcile_interval_ms),
            batch_size: s.batch_size,
            parallelism: s.reconcile_parallelism.max(1),
            max_attempts: s.reconcile_max_attempts,
            settle_delay: Duration::from_millis(s.settle_delay_ms.max(100)),
            retry_max: Duration::from_millis(s.retry_max_ms),
            lease: s.lease(),
            engine_retry_window: Duration::from_millis(s.engine_retry_window_ms),
        }
    }

    /// The earliest time a status claimed at `claimed` can be taken as
    /// absent: its call ended by the lease's end, and the provider may post
    /// for one more retry window after that.
    fn absent_from(&self, claimed: DateTime<Utc>) -> DateTime<Utc> {
        let wait = chrono::Duration::from_std(self.lease + self.engine_retry_window)
            .unwrap_or(chrono::Duration::MAX);
        claimed + wait
    }
}

/// What the reconciler keeps between passes.
#[derive(Default)]
pub struct ReconcilerState {
    /// Capabilities per instance and when they were read.
    caps: HashMap<String, (Capabilities, Instant)>,
    /// Instances whose engine was asked for by this process.
    engine_asked: HashSet<String>,
    /// Per instance, an id a post was answered under (our own): looked up
    /// once to prove that supplied ids are honoured.
    echoed: HashMap<String, String>,
}

pub async fn run<S: Store, P: Provider>(
    ctx: Arc<Ctx<S, P>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let every = ctx.reconciler.interval;
    let mut state = ReconcilerState::default();
    while !shutdown.is_cancelled() {
        // A pass is given up at shutdown (with a thousand instances its
        // first one records each one's capabilities, a commit each): every
        // write in it is a single fenced statement or a transaction, so a
        // pass cut short leaves its rows in doubt for the next daemon to
        // look up, never half-settled.
        let done = tokio::select! {
            r = pass_with(&ctx, &mut state) => r,
            _ = shutdown.cancelled() => break,
        };
        match done {
            Ok(n) if n >= ctx.reconciler.batch_size => continue,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reconciler: database error; retrying"),
        }
        tokio::select! { _ = tokio::time::sleep(every) => {}, _ = shutdown.cancelled() => {} }
    }
    Ok(())
}

/// Looks up one batch of due rows with no state kept; returns how many it
/// looked at.
pub async fn pass<S: Store, P: Provider>(ctx: &Ctx<S, P>) -> anyhow::Result<usize> {
    pass_with(ctx, &mut ReconcilerState::default()).await
}

/// One pass: records what the providers showed, then settles one batch of
/// due rows, instance by instance.
pub async fn pass_with<S: Store, P: Provider>(
    ctx: &Ctx<S, P>,
    state: &mut ReconcilerState,
) -> anyhow::Result<usize> {
    learn_from_calls(ctx, state).await;
    let rows = ctx
        .store
        .due_in_doubt(ctx.reconciler.batch_size as i64)
        .await?;
    let n = rows.len();
    if n == 0 {
        return Ok(0);
    }
    // A provider event that proved a row posted settles it here, with no
    // look-up (issue 13; `store/views.rs`).
    let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.id).collect();
    let settled = ctx.store.settle_confirmed(&ids, &[]).await?;
    let rows: Vec<OutboxRow> = rows
        .into_iter()
        .filter(|r| !settled.iter().any(|s| s.id == r.id))
        .collect();
    let now = ctx.store.now().await?;
    let mut transitions = Vec::with_capacity(n);
    let mut groups: HashMap<String, Vec<OutboxRow>> = HashMap::new();
    for row in rows {
        match unsettleable(ctx, &row) {
            Some(t) => transitions.push(t),
            None => groups.entry(row.instance.clone()).or_default().push(row),
        }
    }
    let mut jobs = Vec::new();
    for (name, rows) in groups {
        let Some(inst) = ctx.instances.get(&name) else {
            continue;
        };
        let caps = capabilities(ctx, state, &name).await;
        jobs.push((inst, caps, rows));
    }
    let settled: Vec<(Vec<Transition>, Vec<CapabilityChange>)> =
        stream::iter(jobs)
            .map(|(inst, caps, rows)| async move {
                settle_instance(ctx, &inst, &caps, &rows, now).await
            })
            .buffer_unordered(ctx.reconciler.parallelism)
            .collect()
            .await;
    let mut changes = Vec::new();
    for (ts, cs) in settled {
        transitions.extend(ts);
        changes.extend(cs);
    }
    for c in changes {
        record(ctx, state, &c).await;
    }
    ctx.store.resolve_in_doubt(&transitions).await?;
    for t in &transitions {
        metrics::counter!(names::RECONCILED, "result" => match (t.to, t.effect.parks()) {
            (State::Posted, _) => "present",
            (State::PendingUpload, _) => "absent",
            (_, true) => "parked",
            _ => "unavailable",
        })
        .increment(1);
    }
    if transitions.iter().any(|t| t.to == State::PendingUpload) {
        ctx.work.notify_waiters();
    }
    Ok(n)
}

/// A row that cannot be looked up at all: invalid (never sent), or its
/// instance not configured here / unreadable (parked for an operator).
fn unsettleable<S: Store, P: Provider>(ctx: &Ctx<S, P>, row: &OutboxRow) -> Option<Transition> {
    let mut t = Transition::new(row.id, row.attempts, State::InDoubt);
    // A row that fails validation was never sent (the dispatcher validates
    // before sending), so it cannot be on the provider: it is invalid. This
    // happens when a daemon died between claiming a bad `queued` row and
    // recording it invalid.
    if let Some(problem) = ctx.check_row(row) {
        t.to = State::Invalid;
        t.reason = Reason::text(problem);
        return Some(t);
    }
    if ctx.instances.contains_key(&row.instance) && row.message_id.is_some() {
        return None;
    }
    // An instance held here (disabled, removed, token unreadable) cannot be
    // asked: the row stays in doubt and is looked at again later, not
    // parked — it is looked up once the instance sends again.
    if ctx.instances.snapshot().held.contains_key(&row.instance) {
        t.delay = ctx.reconciler.settle_delay;
        t.reason = Reason::last_of(row);
        return Some(t);
    }
    t.effect = Effect::Park;
    t.reason = Reason::text(format!(
        "cannot look this status up (instance `{}` not configured or row unreadable); an operator must decide: `statusd confirm` if it is shown, `statusd retry --force-resend` if not",
        row.instance
    ));
    Some(t)
}

/// The instance's capabilities: from the cache while fresh, else from the
/// store (unknown when it has none, or cannot be read).
async fn capabilities<S: Store, P: Provider>(
    ctx: &Ctx<S, P>,
    state: &mut ReconcilerState,
    instance: &str,
) -> Capabilities {
    if let Some((c, at)) = state.caps.get(instance) {
        if at.elapsed() < CAPABILITY_CACHE {
            return c.clone();
        }
    }
    // This instance's row only: with a thousand instances, reading every
    // row at each one's first look was quadratic.
    match ctx.store.capabilities_of(Some(instance)).await {
        Ok(found) => {
            let c = found
                .into_iter()
                .next()
                .unwrap_or_else(|| Capabilities::unknown(instance));
            state
                .caps
                .insert(instance.to_string(), (c.clone(), Instant::now()));
            c
        }
        Err(e) => {
            tracing::warn!(instance, error = %e, "capabilities unreadable: assuming nothing is proven");
            Capabilities::unknown(instance)
        }
    }
}

/// Records a change and refreshes the cache; a failure is logged (the
/// evidence will show again).
async fn record<S: Store, P: Provider>(
    ctx: &Ctx<S, P>,
    state: &mut ReconcilerState,
    change: &CapabilityChange,
) {
    let before = state.caps.get(&change.instance).map(|(c, _)| c.clone());
    match record_capabilities(&ctx.store, change).await {
        Ok(now) => {
            if before.as_ref().is_none_or(|b| {
                b.supplied_ids != now.supplied_ids || b.lookup_by_id != now.lookup_by_id
            }) {
                tracing::info!(
                    instance = %change.instance,
                    supplied_ids = %now.supplied_ids,
                    lookup_by_id = %now.lookup_by_id,
                    engine = now.engine.as_deref().unwrap_or(""),
                    evidence = %change.evidence,
                    "provider capabilities recorded"
                );
            }
            state
                .caps
                .insert(change.instance.clone(), (now, Instant::now()));
        }
        Err(e) => {
            tracing::warn!(instance = %change.instance, error = %e, "recording provider capabilities failed")
        }
    }
}

/// Records what sends showed (an id replaced: ids are not honoured), asks
/// each instance's engine once, and proves honoured ids by looking an
/// echoed id up (one call per instance, until proven).
async fn learn_from_calls<S: Store, P: Provider>(ctx: &Ctx<S, P>, state: &mut ReconcilerState) {
    let instances: Vec<Arc<Instance<P>>> = ctx.instances.values();
    for inst in instances {
        let name = inst.name.clone();
        let mut changes = Vec::new();
        for e in inst.provider.take_evidence() {
            match e {
                Evidence::IdReplaced { supplied, got } => changes.push(CapabilityChange {
                    supplied_ids: Some(Known::No),
                    ..CapabilityChange::evidence(
                        &name,
                        format!("a post supplying id {supplied} was answered as {got}"),
                    )
                }),
                Evidence::IdEchoed { id } => {
                    state.echoed.insert(name.clone(), id);
                }
            }
        }
        if inst.provider.supplies_id() && !state.engine_asked.contains(&name) {
            state.engine_asked.insert(name.clone());
            if let Some(engine) = inst.provider.session_engine().await {
                let mut c = CapabilityChange {
                    engine: Some(engine.clone()),
                    ..CapabilityChange::evidence(&name, format!("session info: engine {engine}"))
                };
                if engine == "WEBJS" {
                    // WAHA documents that WEBJS ignores a supplied id and
                    // answers with the latest own status.
                    c.supplied_ids = Some(Known::No);
                    c.evidence = "session info: engine WEBJS, which ignores supplied ids".into();
                }
                changes.push(c);
            }
        }
        for c in changes {
            record(ctx, state, &c).await;
        }
        // Only with an echoed id to check: an idle daemon reads nothing.
        let Some(id) = state.echoed.remove(&name) else {
            continue;
        };
        let caps = capabilities(ctx, state, &name).await;
        if caps.supplied_ids != Known::Unknown || caps.lookup_by_id == Known::No {
            continue;
        }
        inst.limiter.until_ready().await;
        count_call(&name, "by_id");
        if let ById::Found { provider_id } = inst.provider.lookup_by_id(&id).await {
            if provider_id == id {
                let c = CapabilityChange {
                    supplied_ids: Some(Known::Yes),
                    lookup_by_id: Some(Known::Yes),
                    ..CapabilityChange::evidence(
                        &name,
                        format!(
                            "a post supplying id {id} was answered under it and then found by it"
                        ),
                    )
                };
                record(ctx, state, &c).await;
            }
        }
    }
}

fn count_call(instance: &str, call: &'static str) {
    metrics::counter!(names::LOOKUP_CALLS, names::INSTANCE_LABEL => instance.to_string(), "call" => call)
        .increment(1);
}

/// What the look-ups say about one row.
enum Answer {
    Present(String),
    /// Positive evidence of absence (the timing is checked afterwards).
    NotThere,
    Unknown(String),
}

/// Settles every due row of one instance: by id where that can answer,
/// then one read of the status chat for the rest.
async fn settle_instance<S: Store, P: Provider>(
    ctx: &Ctx<S, P>,
    inst: &Instance<P>,
    caps: &Capabilities,
    rows: &[OutboxRow],
    now: DateTime<Utc>,
) -> (Vec<Transition>, Vec<CapabilityChange>) {
    let name = inst.name.as_str();
    metrics::counter!(names::RECONCILE_ROWS, names::INSTANCE_LABEL => name.to_string())
        .increment(rows.len() as u64);
    let queries: Vec<StatusQuery> = rows
        .iter()
        .map(|row| {
            // `unsettleable` let through only rows that parse and have an id.
            let body = StatusBody::parse(&row.kind, &row.payload).ok();
            StatusQuery {
                message_id: row.message_id.clone().unwrap_or_default(),
                kind: body
                    .as_ref()
                    .map(StatusBody::kind)
                    .unwrap_or(crate::model::Kind::Text),
                fingerprint: body.map(|b| b.fingerprint()).unwrap_or_default(),
                sent_after: row.claimed_at.unwrap_or(row.created_at) - MATCH_SLACK,
            }
        })
        .collect();
    let mut answers: Vec<Option<Answer>> = (0..rows.len()).map(|_| None).collect();
    let mut changes = Vec::new();
    let mut by_id_missed = vec![false; rows.len()];

    // By id, where supplied ids are not known to be ignored and look-up by
    // id not known to fail.
    if inst.provider.supplies_id()
        && caps.supplied_ids != Known::No
        && caps.lookup_by_id != Known::No
    {
        for (k, q) in queries.iter().enumerate() {
            inst.limiter.until_ready().await;
            count_call(name, "by_id");
            match inst.provider.lookup_by_id(&q.message_id).await {
                ById::Found { provider_id } => {
                    if !caps.by_id_miss_is_absence() && provider_id == q.message_id {
                        changes.push(CapabilityChange {
                            supplied_ids: Some(Known::Yes),
                            lookup_by_id: Some(Known::Yes),
                            ..CapabilityChange::evidence(
                                name,
                                format!("status {} found by the id we supplied", q.message_id),
                            )
                        });
                    }
                    answers[k] = Some(Answer::Present(provider_id));
                }
                ById::NotFound if caps.by_id_miss_is_absence() => {
                    answers[k] = Some(Answer::NotThere)
                }
                ById::NotFound => by_id_missed[k] = true,
                ById::Failed { reason } if caps.by_id_miss_is_absence() => {
                    answers[k] = Some(Answer::Unknown(reason))
                }
                // Not proven: the listing decides.
                ById::Failed { .. } => {}
            }
        }
    }

    // One read of the status chat for every row still open.
    let open: Vec<usize> = (0..rows.len()).filter(|&k| answers[k].is_none()).collect();
    if !open.is_empty() {
        let open_queries: Vec<StatusQuery> = open.iter().map(|&k| queries[k].clone()).collect();
        let since = open_queries
            .iter()
            .map(|q| q.sent_after)
            .min()
            .unwrap_or(now);
        let listing = search::read_listing(&inst.provider, since, || async {
            inst.limiter.until_ready().await;
            count_call(name, "listing");
        })
        .await;
        let ids: Vec<String> = listing.items.iter().map(|i| i.id.clone()).collect();
        let except: Vec<uuid::Uuid> = rows.iter().map(|r| r.id).collect();
        // Listed statuses that belong to other rows are nobody's match here —
        // when the content agrees: a provider answering with another
        // status's id (WEBJS answers with the latest own status) can have
        // given a row a wrong one, which must not hide this row's status.
        let foreign: Result<HashSet<String>, _> = ctx
            .store
            .known_message_ids(name, &ids, &except)
            .await
            .map(|known| {
                known
                    .into_iter()
                    .filter(|k| {
                        let owner = StatusBody::parse(&k.kind, &k.payload).ok();
                        listing.items.iter().any(|i| {
                            i.id == k.id
                                && match (&owner, &i.fingerprint) {
                                    (Some(o), Some(f)) => o.fingerprint() == *f,
                                    (Some(o), None) => Some(o.kind()) == i.kind,
                                    (None, _) => true,
                                }
                        })
                    })
                    .map(|k| k.id)
                    .collect()
            });
        let verdicts = match foreign {
            Ok(foreign) => search::settle(&open_queries, &listing, &foreign),
            Err(e) => open_queries
                .iter()
                .map(|_| Verdict::Unknown {
                    reason: format!("could not tell listed statuses of other rows apart: {e}"),
                })
                .collect(),
        };
        for (&k, v) in open.iter().zip(verdicts) {
            answers[k] = Some(match v {
                Verdict::Present {
                    provider_id,
                    by_our_id,
                } => {
                    if inst.provider.supplies_id() {
                        changes.push(if by_our_id {
                            CapabilityChange {
                                supplied_ids: Some(Known::Yes),
                                lookup_by_id: by_id_missed[k].then_some(Known::No),
                                ..CapabilityChange::evidence(
                                    name,
                                    format!("status {provider_id} listed under the id we supplied"),
                                )
                            }
                        } else {
                            CapabilityChange {
                                supplied_ids: Some(Known::No),
                                ..CapabilityChange::evidence(
                                    name,
                                    format!(
                                        "status supplied as {} listed as {provider_id}",
                                        queries[k].message_id
                                    ),
                                )
                            }
                        });
                    }
                    Answer::Present(provider_id)
                }
                Verdict::NotListed => Answer::NotThere,
                Verdict::Unknown { reason } => Answer::Unknown(reason),
            });
        }
    }

    let s = &ctx.reconciler;
    let transitions = rows
        .iter()
        .zip(answers)
        .map(|(row, answer)| {
            let mut t = Transition::new(row.id, row.attempts, State::InDoubt);
            let mid = row.message_id.as_deref().unwrap_or("");
            match answer.unwrap_or(Answer::Unknown("not looked up".into())) {
                Answer::Present(provider_id) => {
                    tracing::info!(row_id = %row.id, message_id = mid, instance = name, "in-doubt status is on the provider: posted");
                    t.to = State::Posted;
                    t.provider_id = Some(provider_id);
                    // Kept in the row's history: it went through doubt.
                    t.reason = Reason::text("reconciled: found on the provider");
                }
                Answer::NotThere => {
                    let from = s.absent_from(row.claimed_at.unwrap_or(row.created_at));
                    if now >= from {
                        tracing::info!(row_id = %row.id, message_id = mid, instance = name, "in-doubt status is not on the provider: sending again with the same id");
                        t.to = State::PendingUpload;
                        t.reason = Reason::text("reconciled: absent, sent again");
                    } else {
                        // Not yet absence: the provider may still be
                        // posting it. Waiting is not a failed look-up.
                        t.delay = (from - now).to_std().unwrap_or_default()
                            + Duration::from_millis(50);
                        t.reason = Reason::text(format!(
                            "not found yet; the provider may still post it until {from} (claim + lease + engine retry window)"
                        ));
                    }
                }
                Answer::Unknown(reason) => {
                    let tries = row.reconcile_attempts + 1;
                    t.effect = Effect::FailedLookup { park: false };
                    if tries >= s.max_attempts {
                        tracing::warn!(row_id = %row.id, message_id = mid, instance = name, tries, error = %reason, "look-up keeps failing: parking the row for an operator");
                        t.effect = Effect::FailedLookup { park: true };
                        t.reason = Reason::text(format!(
                            "parked after {tries} look-ups that could not prove presence or absence (last: {reason}); check the phone: `statusd confirm` if it is shown, `statusd retry --force-resend` if not, `statusd retry` looks again"
                        ));
                    } else {
                        t.delay = backoff(tries, s.settle_delay, s.retry_max);
                        t.reason = Reason::text(format!("look-up inconclusive: {reason}"));
                    }
                }
            }
            t
        })
        .collect();
    (transitions, changes)
}
