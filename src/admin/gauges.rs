//! The outbox-depth gauges of the metrics page, refreshed from the store.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics as m;
use crate::model::State;
use crate::ops::Operator;
use crate::provider::Provider;
use crate::store::Store;

/// Keeps the outbox-depth gauges current. Every known instance's gauges
/// (the file's and the table's, held ones included; the set is read again
/// on every pass, so instances added at runtime get theirs) are set on
/// every pass (a state that emptied reads 0, not its last count); rows of
/// instances not known here are summed under `wa_instance="unknown"`, so
/// table data cannot mint label values. Per instance also: rows due now,
/// rows in flight and statuses posted in the last minute.
pub(super) async fn refresh_gauges<S: Store, P: Provider>(
    ctx: Arc<Operator<S, P>>,
    shutdown: CancellationToken,
) {
    use std::collections::HashMap;
    let every = Duration::from_secs(15);
    loop {
        let mut names = ctx.instances.known_names();
        names.push(m::UNKNOWN_INSTANCE.to_string());
        if let Ok(rows) = ctx.store.summary().await {
            let mut counts: HashMap<(String, State), f64> = HashMap::new();
            let mut oldest: HashMap<String, f64> = HashMap::new();
            let mut scheduled: HashMap<String, f64> = HashMap::new();
            let mut due: HashMap<String, f64> = HashMap::new();
            for r in &rows {
                let label = ctx.instances.label(&r.instance);
                *counts.entry((label.clone(), r.state)).or_default() += r.count as f64;
                *scheduled.entry(label.clone()).or_default() += r.scheduled as f64;
                if matches!(r.state, State::Queued | State::PendingUpload) {
                    *due.entry(label.clone()).or_default() += (r.count - r.scheduled) as f64;
                }
                if let Some(age) = r.oldest_age_secs {
                    let e = oldest.entry(label).or_insert(0.0);
                    *e = e.max(age);
                }
            }
            let posted: HashMap<String, f64> = ctx
                .store
                .posted_per_instance(Duration::from_secs(60))
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|(n, c)| (ctx.instances.label(&n), c as f64))
                .collect();
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
                let get = |map: &HashMap<String, f64>| map.get(name).copied().unwrap_or(0.0);
                let label = || name.clone();
                metrics::gauge!(m::OLDEST_PENDING_AGE, m::INSTANCE_LABEL => label())
                    .set(get(&oldest));
                metrics::gauge!(m::OUTBOX_SCHEDULED, m::INSTANCE_LABEL => label())
                    .set(get(&scheduled));
                metrics::gauge!(m::INSTANCE_DUE, m::INSTANCE_LABEL => label()).set(get(&due));
                metrics::gauge!(m::INSTANCE_IN_FLIGHT, m::INSTANCE_LABEL => label()).set(
                    counts
                        .get(&(name.clone(), State::Uploading))
                        .copied()
                        .unwrap_or(0.0),
                );
                metrics::gauge!(m::INSTANCE_POSTED_PER_MINUTE, m::INSTANCE_LABEL => label())
                    .set(get(&posted));
            }
        }
        tokio::select! { _ = tokio::time::sleep(every) => {}, _ = shutdown.cancelled() => return }
    }
}
