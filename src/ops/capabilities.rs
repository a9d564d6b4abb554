//! The provider capabilities that both `statusd capabilities` and the admin
//! API (`/v1/capabilities`, and each instance of `/v1/instances`) show and
//! set, written once: what each instance's provider does (posts under the
//! id we supply, finds a posted status by id, which engine), as the daemons
//! learned it from evidence, and an operator's override.
//!
//! The rule for changing a capability is the store's
//! ([`crate::store::Capabilities::merged`]): an operator's word replaces
//! anything, and the daemons' evidence may later weaken it again.

use std::collections::BTreeSet;

use crate::config::check_configured;
use crate::ops::{configured, OpError};
use crate::store::{record_capabilities, Capabilities, CapabilityChange, Known, Source, Store};

/// Every instance configured here (the file's `file` names and the table's
/// instances not removed) or recorded in the store, with what is known of
/// it, by name.
pub async fn all<S: Store>(store: &S, file: &[String]) -> Result<Vec<Capabilities>, OpError> {
    let mut caps = store.capabilities().await?;
    let recorded: BTreeSet<String> = caps.iter().map(|c| c.instance.clone()).collect();
    for name in configured(store, file).await? {
        if !recorded.contains(&name) {
            caps.push(Capabilities::unknown(&name));
        }
    }
    caps.sort_by(|a, b| a.instance.cmp(&b.instance));
    Ok(caps)
}

/// An operator's setting, as typed (`yes`, `no`, `unknown`); `None` leaves
/// a capability as it is.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setting {
    pub supplied_ids: Option<String>,
    pub lookup_by_id: Option<String>,
    pub engine: Option<String>,
}

/// Sets what `s` names on a configured instance and returns what is now
/// recorded. `field` names an input the way the caller's user typed it
/// (`--supplied-ids` on the CLI, `supplied_ids` in the API); `who` is kept
/// as the evidence.
pub async fn set<S: Store>(
    store: &S,
    file: &[String],
    instance: &str,
    s: Setting,
    field: impl Fn(&str) -> String,
    who: &str,
) -> Result<Capabilities, OpError> {
    let known = configured(store, file).await?;
    check_configured(instance, &known).map_err(|e| OpError::NoInstance(e.to_string()))?;
    let parse = |name: &str, v: Option<String>| -> Result<Option<Known>, OpError> {
        v.map(|v| {
            v.parse::<Known>()
                .map_err(|e| OpError::Invalid(format!("{}: {e}", field(name))))
        })
        .transpose()
    };
    let supplied_ids = parse("supplied_ids", s.supplied_ids)?;
    let lookup_by_id = parse("lookup_by_id", s.lookup_by_id)?;
    let engine = s
        .engine
        .map(|e| e.trim().to_ascii_uppercase())
        .filter(|e| !e.is_empty());
    if supplied_ids.is_none() && lookup_by_id.is_none() && engine.is_none() {
        return Err(OpError::Invalid(format!(
            "give at least one of {}, {}, {}",
            field("supplied_ids"),
            field("lookup_by_id"),
            field("engine")
        )));
    }
    let change = CapabilityChange {
        instance: instance.to_string(),
        supplied_ids,
        lookup_by_id,
        engine,
        evidence: format!("set by an operator ({who})"),
        source: Source::Operator,
    };
    Ok(record_capabilities(store, &change).await?)
}
