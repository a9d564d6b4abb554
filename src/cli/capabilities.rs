//! `statusd capabilities [ls] | set`: what each instance's provider does
//! (honours supplied ids, look-up by id works, engine), as learned by the
//! daemons from evidence and kept in `provider_capabilities`, and the
//! operator's override.

use anyhow::Context;
use serde_json::json;

use super::table::{truncate, Table};
use super::CapabilitiesSetArgs;
use crate::config::Settings;
use crate::store::{record_capabilities, Capabilities, CapabilityChange, Known, Source, Store};

/// Every configured or recorded instance, with what is known.
async fn all<S: Store>(store: &S, settings: &Settings) -> anyhow::Result<Vec<Capabilities>> {
    let mut caps = store
        .capabilities()
        .await
        .context("reading the provider capabilities")?;
    for name in settings.instances.keys() {
        if !caps.iter().any(|c| &c.instance == name) {
            caps.push(Capabilities::unknown(name));
        }
    }
    caps.sort_by(|a, b| a.instance.cmp(&b.instance));
    Ok(caps)
}

pub async fn ls<S: Store>(store: &S, settings: &Settings, as_json: bool) -> anyhow::Result<String> {
    let caps = all(store, settings).await?;
    if as_json {
        return Ok(format!("{}\n", json!({ "instances": caps })));
    }
    if caps.is_empty() {
        return Ok("no instances configured or recorded\n".into());
    }
    Ok(table(&caps))
}

/// The capabilities as a table (also printed by `statusd stats`).
pub fn table(caps: &[Capabilities]) -> String {
    let mut t = Table::new(vec![
        "INSTANCE",
        "SUPPLIED_IDS",
        "LOOKUP_BY_ID",
        "ENGINE",
        "UPDATED",
        "EVIDENCE",
    ]);
    for c in caps {
        t.row(vec![
            c.instance.clone(),
            c.supplied_ids.to_string(),
            c.lookup_by_id.to_string(),
            c.engine.clone().unwrap_or_else(|| "-".into()),
            c.updated_at
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_else(|| "-".into()),
            truncate(&c.evidence, 100),
        ]);
    }
    t.render()
}

/// The capabilities section `statusd stats` appends (nothing when none is
/// recorded or configured).
pub async fn stats_section<S: Store>(store: &S, settings: &Settings) -> anyhow::Result<String> {
    let caps = all(store, settings).await?;
    if caps.is_empty() {
        return Ok(String::new());
    }
    Ok(format!("\nprovider capabilities:\n{}", table(&caps)))
}

pub async fn set<S: Store>(
    store: &S,
    a: CapabilitiesSetArgs,
    settings: &Settings,
) -> anyhow::Result<String> {
    super::outbox::check_instance(store, &a.instance, settings).await?;
    let parse = |flag: &str, v: &Option<String>| -> anyhow::Result<Option<Known>> {
        v.as_deref()
            .map(|s| {
                s.parse::<Known>()
                    .map_err(|e| anyhow::anyhow!("{flag}: {e}"))
            })
            .transpose()
    };
    let supplied_ids = parse("--supplied-ids", &a.supplied_ids)?;
    let lookup_by_id = parse("--lookup-by-id", &a.lookup_by_id)?;
    if supplied_ids.is_none() && lookup_by_id.is_none() && a.engine.is_none() {
        anyhow::bail!("give at least one of --supplied-ids, --lookup-by-id, --engine");
    }
    let change = CapabilityChange {
        instance: a.instance.clone(),
        supplied_ids,
        lookup_by_id,
        engine: a.engine.map(|e| e.trim().to_ascii_uppercase()),
        evidence: "set by an operator (statusd capabilities set)".into(),
        source: Source::Operator,
    };
    let now = record_capabilities(store, &change)
        .await
        .context("writing the provider capabilities")?;
    Ok(table(&[now]))
}
