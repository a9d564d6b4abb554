//! `statusd capabilities [ls] | set`: what each instance's provider does
//! (honours supplied ids, look-up by id works, engine), as learned by the
//! daemons from evidence and kept in `provider_capabilities`, and the
//! operator's override.

use serde_json::json;

use super::table::{truncate, Table};
use super::CapabilitiesSetArgs;
use crate::ops::capabilities::{self as caps, Setting};
use crate::store::{Capabilities, Store};

/// `file`: the configuration file's instances.
pub async fn ls<S: Store>(store: &S, file: &[String], as_json: bool) -> anyhow::Result<String> {
    let caps = caps::all(store, file).await?;
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
pub async fn stats_section<S: Store>(store: &S, file: &[String]) -> anyhow::Result<String> {
    let caps = caps::all(store, file).await?;
    if caps.is_empty() {
        return Ok(String::new());
    }
    Ok(format!("\nprovider capabilities:\n{}", table(&caps)))
}

pub async fn set<S: Store>(
    store: &S,
    a: CapabilitiesSetArgs,
    file: &[String],
) -> anyhow::Result<String> {
    let setting = Setting {
        supplied_ids: a.supplied_ids,
        lookup_by_id: a.lookup_by_id,
        engine: a.engine,
    };
    let flag = |name: &str| format!("--{}", name.replace('_', "-"));
    let now = caps::set(
        store,
        file,
        &a.instance,
        setting,
        flag,
        "statusd capabilities set",
    )
    .await?;
    Ok(table(&[now]))
}
