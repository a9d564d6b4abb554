//! Settles `in_doubt` rows (rule 4): asks the provider whether the status
//! exists. Present → `posted`. Absent (after the settle delay the row
//! already waited) → `pending_upload`, re-sent with the same id. Look-up
//! unavailable → asked again with backoff; after `reconcile_max_attempts`
//! the row is parked for an operator, never re-posted blindly.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{backoff, Ctx};
use crate::config::DaemonSettings;
use crate::model::{OutboxRow, State, StatusBody};
use crate::provider::{Lookup, Provider, StatusQuery};
use crate::store::{Effect, Store, Transition};

/// Statuses posted before the row's latest claim, minus this, are not
/// candidates for a content match (clock skew between us and the provider).
const MATCH_SLACK: chrono::Duration = chrono::Duration::minutes(2);

/// The reconciler's settings, built from `[daemon]` (defaults:
/// [`DaemonSettings::default`]).
#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    /// How often due in-doubt rows are looked for.
    pub interval: Duration,
    /// Most rows looked at in one pass.
    pub batch_size: usize,
    /// Look-ups in flight at once.
    pub parallelism: usize,
    /// Failed look-ups before a row is parked for an operator.
    pub max_attempts: i32,
    /// Backoff between failed look-ups: from `settle_delay` (at least
    /// 100 ms, never a busy loop) up to `retry_max`.
    pub settle_delay: Duration,
    pub retry_max: Duration,
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
        }
    }
}

pub async fn run<S: Store, P: Provider>(
    ctx: Arc<Ctx<S, P>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let every = ctx.reconciler.interval;
    while !shutdown.is_cancelled() {
        match pass(&ctx).await {
            Ok(n) if n >= ctx.reconciler.batch_size => continue,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reconciler: database error; retrying"),
        }
        tokio::select! { _ = tokio::time::sleep(every) => {}, _ = shutdown.cancelled() => {} }
    }
    Ok(())
}

/// Looks up one batch of due rows; returns how many it looked at.
pub async fn pass<S: Store, P: Provider>(ctx: &Ctx<S, P>) -> anyhow::Result<usize> {
    let rows = ctx
        .store
        .due_in_doubt(ctx.reconciler.batch_size as i64)
        .await?;
    let n = rows.len();
    if n == 0 {
        return Ok(0);
    }
    let transitions: Vec<Transition> = stream::iter(rows)
        .map(|row| async move { decide(ctx, &row).await })
        .buffer_unordered(ctx.reconciler.parallelism)
        .collect()
        .await;
    ctx.store.resolve_in_doubt(&transitions).await?;
    for t in &transitions {
        metrics::counter!("statusd_reconciled_total", "result" => match (t.to, t.effect.parks()) {
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

async fn decide<S: Store, P: Provider>(ctx: &Ctx<S, P>, row: &OutboxRow) -> Transition {
    let mut t = Transition::new(row.id, row.attempts, State::InDoubt);
    let s = &ctx.reconciler;
    // A row that fails validation was never sent (the dispatcher validates
    // before sending), so it cannot be on the provider: it is invalid. This
    // happens when a daemon died between claiming a bad `queued` row and
    // recording it invalid.
    if let Some(problem) = ctx.check_row(row) {
        t.to = State::Invalid;
        t.error = Some(problem);
        return t;
    }
    let (Some(inst), Some(mid), Ok(body)) = (
        ctx.instances.get(&row.instance),
        row.message_id.as_deref(),
        StatusBody::parse(&row.kind, &row.payload),
    ) else {
        t.effect = Effect::Park;
        t.error = Some(format!(
            "cannot look this status up (instance `{}` not configured or row unreadable); an operator must decide",
            row.instance
        ));
        return t;
    };
    let fingerprint = body.fingerprint();
    let query = StatusQuery {
        message_id: mid,
        kind: body.kind(),
        fingerprint: &fingerprint,
        sent_after: row.claimed_at.unwrap_or(row.created_at) - MATCH_SLACK,
    };
    let span = tracing::info_span!("reconcile", row_id = %row.id, message_id = mid, instance = %row.instance, attempt = row.attempts);
    async move {
        match inst.provider.find_status(&query).await {
            Lookup::Present { provider_id } => {
                tracing::info!("in-doubt status is on the provider: posted");
                t.to = State::Posted;
                t.provider_id = Some(provider_id);
                t.error = None;
            }
            Lookup::Absent => {
                tracing::info!(
                    "in-doubt status is not on the provider: sending again with the same id"
                );
                t.to = State::PendingUpload;
                t.error = Some("reconciled: absent, sent again".into());
            }
            Lookup::Unavailable { reason } => {
                let tries = row.reconcile_attempts + 1;
                t.effect = Effect::FailedLookup { park: false };
                if tries >= s.max_attempts {
                    tracing::warn!(tries, error = %reason, "look-up keeps failing: parking the row for an operator");
                    t.effect = Effect::FailedLookup { park: true };
                    t.error = Some(format!(
                        "parked after {tries} failed look-ups (last: {reason}); `statusd retry` looks again, `statusd retry --force-resend` sends again"
                    ));
                } else {
                    t.delay = backoff(tries, s.settle_delay, s.retry_max);
                    t.error = Some(format!("look-up failed: {reason}"));
                }
            }
        }
        t
    }
    .instrument(span)
    .await
}
