//! `statusd schedule add | ls | rm`: recurring statuses. Everything the
//! scheduler would trip over (cron, time zone, payload, instance) is checked
//! here, before the row exists.

use anyhow::Context;
use serde_json::json;

use super::table::{cells, json_lines, truncate, Table};
use super::ScheduleAddArgs;
use crate::config::{cron_check, Settings};
use crate::model::StatusBody;
use crate::store::{Schedule, Store};

pub async fn add<S: Store>(
    store: &S,
    a: ScheduleAddArgs,
    settings: &Settings,
) -> anyhow::Result<String> {
    if a.name.trim().is_empty() {
        anyhow::bail!("--name must not be empty");
    }
    a.cron.parse::<cron_check::Expr>().map_err(|e| {
        anyhow::anyhow!(
            "--cron: `{}` is not a cron expression with seconds \
             (sec min hour day-of-month month day-of-week, e.g. \"0 0 8 * * *\"): {e}",
            a.cron
        )
    })?;
    a.timezone.parse::<chrono_tz::Tz>().map_err(|_| {
        anyhow::anyhow!(
            "--timezone: `{}` is not an IANA time zone (e.g. Europe/Berlin, UTC)",
            a.timezone
        )
    })?;
    let (kind, payload) = match (&a.text, a.raw.given()) {
        (Some(text), _) => ("text".to_string(), json!({ "text": text }).to_string()),
        (None, Some(given)) => given,
        _ => anyhow::bail!("give --text, or --kind with --payload"),
    };
    StatusBody::parse(&kind, &payload).context("the schedule's status is not valid")?;
    super::outbox::check_instance(store, &a.instance, settings).await?;
    let existing = store.schedules().await.context("reading the schedules")?;
    if existing.iter().any(|s| s.name == a.name) {
        anyhow::bail!(
            "a schedule named `{}` already exists (remove it first with `statusd schedule rm {}`)",
            a.name,
            a.name
        );
    }
    let s = Schedule {
        id: uuid::Uuid::now_v7(),
        name: a.name.clone(),
        cron: a.cron,
        timezone: a.timezone,
        instance: a.instance,
        kind,
        payload,
        enabled: !a.disabled,
    };
    store
        .add_schedule(&s)
        .await
        .with_context(|| format!("adding schedule `{}`", s.name))?;
    Ok(format!(
        "schedule `{}` added ({}): \"{}\" in {}\n",
        s.name, s.id, s.cron, s.timezone
    ))
}

pub async fn ls<S: Store>(store: &S, as_json: bool) -> anyhow::Result<String> {
    let all = store.schedules().await.context("reading the schedules")?;
    if as_json {
        return json_lines(&all);
    }
    let header = vec![
        "NAME", "CRON", "TIMEZONE", "INSTANCE", "KIND", "ENABLED", "PAYLOAD",
    ];
    Ok(Table::listing(header, &all, "no schedules\n", |s| {
        let enabled = if s.enabled { "yes" } else { "no" };
        cells![
            s.name,
            s.cron,
            s.timezone,
            s.instance,
            s.kind,
            enabled,
            truncate(&s.payload, 60),
        ]
    }))
}

pub async fn rm<S: Store>(store: &S, name: &str) -> anyhow::Result<String> {
    let removed = store
        .remove_schedule(name)
        .await
        .with_context(|| format!("removing schedule `{name}`"))?;
    if !removed {
        anyhow::bail!("no schedule named `{name}` (see `statusd schedule ls`)");
    }
    Ok(format!("schedule `{name}` removed\n"))
}
