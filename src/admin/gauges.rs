//! The outbox-depth gauges of the metrics page, refreshed from the store.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics as m;
use crate::model::State;
use crate::ops::Operator;
use crate::provider::Provider;
use crate::store::Store;

/// Keeps the outbox-depth gauges current. Every configured instance's
/// gauges are set on every pass (a state that emptied reads 0, not its last
/// count); rows of instances not configured here are summed under
/// `wa_instance="unknown"`, so table data cannot mint label values.
pub(super) async fn refresh_gauges<S: Store, P: Provider>(
    ctx: Arc<Operator<S, P>>,
    shutdown: CancellationToken,
) {
    use std::collections::HashMap;
    let every = Duration::from_secs(15);
    let mut names: Vec<String> = ctx.instances.keys().cloned().collect();
    names.push(m::UNKNOWN_INSTANCE.to_string());
    loop {
        if let Ok(rows) = ctx.store.summary().await {
            let mut counts: HashMap<(String, State), f64> = HashMap::new();
            let mut oldest: HashMap<String, f64> = HashMap::new();
            let mut scheduled: HashMap<String, f64> = HashMap::new();
            for r in &rows {
                let label = m::instance_label(ctx.instances.keys(), &r.instance);
                *counts.entry((label.clone(), r.state)).or_default() += r.count as f64;
                *scheduled.entry(label.clone()).or_default() += r.scheduled as f64;
                if let Some(age) = r.oldest_age_secs {
                    let e = oldest.entry(label).or_insert(0.0);
                    *e = e.max(age);
                }
            }
            for name in &names {
                // `unknown` appears only once such rows exist.
                let seen = name != m::UNKNOWN_INSTANCE
                    || counts.keys().any(|(n, _)| n == m::UNKNOWN_INSTANCE);
                if !seen {
                    continue;
                }
                for s in State::ALL {
                    let n = counts.get(&(name.clone(), s)).copied().unwrap_or(0.0);
                    metrics::gauge!(m::OUTBOX_ROWS, m::INSTANCE_LABEL => name.clone(), "state" => s.as_str())
                        .set(n);
                }
                metrics::gauge!(m::OLDEST_PENDING_AGE, m::INSTANCE_LABEL => name.clone())
                    .set(oldest.get(name).copied().unwrap_or(0.0));
                metrics::gauge!(m::OUTBOX_SCHEDULED, m::INSTANCE_LABEL => name.clone())
                    .set(scheduled.get(name).copied().unwrap_or(0.0));
            }
        }
        tokio::select! { _ = tokio::time::sleep(every) => {}, _ = shutdown.cancelled() => return }
    }
}
