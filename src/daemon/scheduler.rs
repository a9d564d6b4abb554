//! Recurring statuses from `status_schedules`, and the retention purge, on
//! tokio-cron-scheduler. Each fire enqueues with
//! `dedupe_key = schedule:<id>:<fire time>`, where the fire time is the
//! schedule's own occurrence (not the clock at the callback), so restarts
//! and replicas firing the same occurrence insert one row.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Ctx;
use crate::provider::Provider;
use crate::store::{EnqueueParams, Schedule, Store};

/// How often the schedules table is read again for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(30);

/// The occurrence of `cron` in `tz` at or just before `now`.
pub fn fire_time(cron: &str, tz: Tz, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let c = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(cron)
        .ok()?;
    // Cron has whole seconds; croner would keep the clock's fraction.
    let now = chrono::Timelike::with_nanosecond(&now, 0)?;
    c.find_previous_occurrence(&now.with_timezone(&tz), true)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The row a schedule's occurrence enqueues.
pub fn occurrence(s: &Schedule, fired: DateTime<Utc>) -> EnqueueParams {
    EnqueueParams {
        id: None,
        instance: s.instance.clone(),
        kind: s.kind.clone(),
        payload: s.payload.clone(),
        dedupe_key: Some(format!(
            "schedule:{}:{}",
            s.id,
            fired.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )),
        priority: 0,
        not_before: None,
    }
}

pub async fn run<S: Store, P: Provider>(
    ctx: Arc<Ctx<S, P>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut sched = JobScheduler::new().await?;
    if ctx.settings.retention_days > 0 {
        let c = ctx.clone();
        let keep = Duration::from_secs(ctx.settings.retention_days * 86_400);
        sched
            .add(Job::new_async(
                ctx.settings.purge_cron.as_str(),
                move |_, _| {
                    let c = c.clone();
                    Box::pin(async move { purge(&c, keep).await })
                },
            )?)
            .await?;
    }
    sched.start().await?;
    // schedule id → (its definition, the cron job's id)
    let mut loaded: HashMap<Uuid, (Schedule, Uuid)> = HashMap::new();
    loop {
        if let Err(e) = reload(&ctx, &sched, &mut loaded).await {
            tracing::warn!(error = %e, "could not load schedules; keeping the current ones");
        }
        tokio::select! {
            _ = tokio::time::sleep(RELOAD_EVERY) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    sched.shutdown().await?;
    Ok(())
}

async fn reload<S: Store, P: Provider>(
    ctx: &Arc<Ctx<S, P>>,
    sched: &JobScheduler,
    loaded: &mut HashMap<Uuid, (Schedule, Uuid)>,
) -> anyhow::Result<()> {
    let current: HashMap<Uuid, Schedule> = ctx
        .store
        .schedules()
        .await?
        .into_iter()
        .filter(|s| s.enabled)
        .map(|s| (s.id, s))
        .collect();
    let stale: Vec<Uuid> = loaded
        .iter()
        .filter(|(id, (s, _))| current.get(id) != Some(s))
        .map(|(id, _)| *id)
        .collect();
    for id in stale {
        if let Some((_, job)) = loaded.remove(&id) {
            sched.remove(&job).await?;
        }
    }
    for (id, s) in current {
        if loaded.contains_key(&id) {
            continue;
        }
        let tz = match Tz::from_str(&s.timezone) {
            Ok(tz) => tz,
            Err(_) => {
                tracing::warn!(schedule = %s.name, timezone = %s.timezone, "schedule has an unknown timezone; skipped");
                continue;
            }
        };
        let (c, def) = (ctx.clone(), s.clone());
        let job = Job::new_async_tz(s.cron.as_str(), tz, move |_, _| {
            let (c, def) = (c.clone(), def.clone());
            Box::pin(async move {
                let Some(fired) = fire_time(&def.cron, tz, Utc::now()) else {
                    return;
                };
                match c.store.enqueue(occurrence(&def, fired)).await {
                    Ok(e) if e.inserted => {
                        tracing::info!(schedule = %def.name, row_id = %e.id, %fired, "scheduled status enqueued");
                        c.work.notify_waiters();
                    }
                    Ok(_) => {
                        tracing::debug!(schedule = %def.name, %fired, "occurrence already enqueued (another replica or a restart)")
                    }
                    Err(e) => {
                        tracing::warn!(schedule = %def.name, error = %e, "could not enqueue scheduled status")
                    }
                }
            })
        });
        match job {
            Ok(job) => {
                let job_id = sched.add(job).await?;
                loaded.insert(id, (s, job_id));
            }
            Err(e) => {
                tracing::warn!(schedule = %s.name, cron = %s.cron, error = %e, "schedule has a bad cron expression; skipped")
            }
        }
    }
    Ok(())
}

async fn purge<S: Store, P: Provider>(ctx: &Ctx<S, P>, keep: Duration) {
    let mut total = 0;
    loop {
        match ctx.store.purge_terminal(keep, 10_000).await {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) => {
                tracing::warn!(error = %e, "retention purge failed; will try at the next run");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(rows = total, "retention purge removed old terminal rows");
        metrics::counter!("statusd_purged_total").increment(total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fire_time_is_the_occurrence_not_the_clock() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let now = DateTime::parse_from_rfc3339("2026-11-25T07:00:00.730Z")
            .unwrap()
            .with_timezone(&Utc);
        // 08:00 Berlin is 07:00 UTC in winter.
        let f = fire_time("0 0 8 * * *", tz, now).unwrap();
        assert_eq!(f.to_rfc3339(), "2026-11-25T07:00:00+00:00");
        let later = now + chrono::Duration::seconds(3);
        assert_eq!(
            fire_time("0 0 8 * * *", tz, later),
            Some(f),
            "a late callback keeps the same key"
        );
    }
}
