//! The instance commands that both `statusd instance …` and the admin API
//! (`/v1/instances`) offer, written once: add, set, enable, disable, rm, and
//! the list with each instance's state and rows.
//!
//! Validation happens here, in the process that makes the change: the name's
//! shape, a clash with the configuration file (the file wins, so adding a
//! name it has is refused), the settings as the file would check them, and
//! the token: named by `access_token_env` or `access_token_file` (exactly
//! one), which must be readable and non-empty *here*. Each daemon reads it
//! again from its own environment and holds the instance, with the reason,
//! where it cannot.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::InstanceConfig;
use crate::model::State;
use crate::ops::OpError;
use crate::store::{Added, Capabilities, InstanceRecord, Store};

/// Keys that name the token; exactly one is set.
const TOKEN_KEYS: [&str; 2] = ["access_token_env", "access_token_file"];

/// One instance as operators see it (`statusd instance ls`,
/// `GET /v1/instances`): where it is configured, whether it sends, and its
/// rows. Never holds a token (the table cannot, the file's is not shown).
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    pub instance: String,
    /// `file`, `table`, or `none` (rows name it, nothing configures it).
    pub source: &'static str,
    /// Whether it is configured anywhere (file or table, not removed).
    pub configured: bool,
    /// `active`, `paused`, `disabled`, `removed`, `shadowed` (a table row
    /// hidden by the file's instance of that name) or `unknown`.
    pub state: &'static str,
    /// Why it does not send, when it does not.
    pub reason: Option<String>,
    /// A daemon's pause (401/403, token unreadable, disabled): why and since
    /// when, as recorded in the store by the daemons.
    pub paused: Option<PauseView>,
    /// The table's settings (never a token).
    pub settings: Option<Map<String, Value>>,
    /// Its calls in flight at once (`max_in_flight`, the default applied):
    /// a table instance's from its settings, a file instance's from the
    /// file of the process asking (None where unknown).
    pub max_in_flight: Option<usize>,
    pub enabled: Option<bool>,
    /// Rows not yet sent: `queued` and `pending_upload`.
    pub waiting: i64,
    /// Of those, due now (not scheduled for later).
    pub due: i64,
    /// Rows being sent (`uploading`).
    pub in_flight: i64,
    pub in_doubt: i64,
    pub oldest_due_age_secs: Option<f64>,
    pub posted_last_minute: i64,
    pub updated_at: Option<DateTime<Utc>>,
    /// What its provider does, as learned or set (`statusd capabilities`);
    /// all `unknown` until something is recorded. None for a name only
    /// rows carry.
    pub capabilities: Option<Capabilities>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PauseView {
    pub reason: String,
    pub since: DateTime<Utc>,
}

/// Every instance: the file's (`file`), the table's, and names that rows
/// still wait for although nothing configures them.
pub async fn list<S: Store>(store: &S, file: &[String]) -> Result<Vec<InstanceView>, OpError> {
    let table = store.instance_table().await?;
    let pauses = store.instance_pauses().await?;
    let summary = store.summary().await?;
    let posted = store
        .posted_per_instance(std::time::Duration::from_secs(60))
        .await?;
    let file: BTreeSet<&String> = file.iter().collect();
    let mut views: BTreeMap<String, InstanceView> = BTreeMap::new();
    let blank = |name: &str, source| InstanceView {
        instance: name.to_string(),
        source,
        configured: false,
        state: "unknown",
        reason: None,
        paused: None,
        settings: None,
        max_in_flight: None,
        enabled: None,
        waiting: 0,
        due: 0,
        in_flight: 0,
        in_doubt: 0,
        oldest_due_age_secs: None,
        posted_last_minute: 0,
        updated_at: None,
        capabilities: None,
    };
    for name in &file {
        let mut v = blank(name, "file");
        v.configured = true;
        v.state = "active";
        views.insert(name.to_string(), v);
    }
    // A shadowed table row is listed under its own key so that both show.
    for rec in &table.rows {
        let shadowed = file.contains(&rec.name);
        let key = if shadowed {
            format!("{} (table)", rec.name)
        } else {
            rec.name.clone()
        };
        let mut v = blank(&rec.name, "table");
        v.settings = Some(rec.settings.clone());
        v.max_in_flight = Some(
            rec.settings
                .get("max_in_flight")
                .and_then(Value::as_u64)
                .map_or(crate::config::DEFAULT_MAX_IN_FLIGHT, |n| n as usize),
        );
        v.enabled = Some(rec.enabled);
        v.updated_at = Some(rec.updated_at);
        (v.state, v.reason, v.configured) = table_state(rec, shadowed);
        views.insert(key, v);
    }
    for p in &pauses {
        let v = views
            .entry(p.instance.clone())
            .or_insert_with(|| blank(&p.instance, "none"));
        v.paused = Some(PauseView {
            reason: p.reason.clone(),
            since: p.since,
        });
        if v.state == "active" {
            v.state = "paused";
            v.reason = Some(p.reason.clone());
        }
    }
    for r in &summary {
        let waiting = matches!(r.state, State::Queued | State::PendingUpload);
        let open = waiting || matches!(r.state, State::Uploading | State::InDoubt);
        if !views.contains_key(&r.instance) && !open {
            continue;
        }
        let v = views
            .entry(r.instance.clone())
            .or_insert_with(|| blank(&r.instance, "none"));
        if v.source == "none" && v.reason.is_none() {
            v.reason = Some(
                "not configured in this process's file nor in the instance table: \
                 rows naming it become invalid"
                    .into(),
            );
        }
        match r.state {
            State::Queued | State::PendingUpload => {
                v.waiting += r.count;
                v.due += r.count - r.scheduled;
                if let Some(age) = r.oldest_age_secs {
                    v.oldest_due_age_secs = Some(v.oldest_due_age_secs.unwrap_or(0.0).max(age));
                }
            }
            State::Uploading => v.in_flight += r.count,
            State::InDoubt => v.in_doubt += r.count,
            _ => {}
        }
    }
    for (name, n) in posted {
        if let Some(v) = views.get_mut(&name) {
            v.posted_last_minute = n;
        }
    }
    let known = store.capabilities().await?;
    for v in views.values_mut().filter(|v| v.source != "none") {
        v.capabilities = Some(
            known
                .iter()
                .find(|c| c.instance == v.instance)
                .cloned()
                .unwrap_or_else(|| Capabilities::unknown(&v.instance)),
        );
    }
    Ok(views.into_values().collect())
}

/// A table row's state, reason, and whether it configures the instance.
fn table_state(rec: &InstanceRecord, shadowed: bool) -> (&'static str, Option<String>, bool) {
    let name = &rec.name;
    if shadowed {
        return (
            "shadowed",
            Some(format!(
                "the configuration file has an instance `{name}`: the file wins, this row is not used"
            )),
            true,
        );
    }
    if rec.removed_at.is_some() {
        return (
            "removed",
            Some(format!(
                "removed by an operator: its rows wait (`statusd instance add {name} …` sends them again)"
            )),
            false,
        );
    }
    if !rec.enabled {
        return (
            "disabled",
            Some(format!(
                "disabled by an operator: its rows wait (`statusd instance enable {name}` sends them again)"
            )),
            true,
        );
    }
    ("active", None, true)
}

/// What `add` was asked to create.
#[derive(Debug, Clone)]
pub struct NewInstance {
    pub name: String,
    /// The keys of an `[instances.NAME]` table; the token named by
    /// `access_token_env` or `access_token_file`.
    pub settings: Map<String, Value>,
    pub enabled: bool,
}

/// Adds an instance to the table (or brings back a removed one) after
/// checking it as described in the module docs. `file` names the
/// configuration file's instances, which win: a clash is refused.
pub async fn add<S: Store>(store: &S, file: &[String], new: NewInstance) -> Result<Added, OpError> {
    check_name(&new.name)?;
    if file.iter().any(|f| f == &new.name) {
        return Err(OpError::Invalid(format!(
            "instance `{}` is in the configuration file, which wins on a name clash: \
             choose another name, or change it in the file",
            new.name
        )));
    }
    check_settings(&new.settings)?;
    Ok(store
        .add_instance(&new.name, &new.settings, new.enabled)
        .await?)
}

/// Changes a table instance's settings: each key of `changes` replaces the
/// old value, a `null` removes the key (its default applies); naming the
/// token one way drops the other. The result is checked as by `add`.
pub async fn set<S: Store>(
    store: &S,
    name: &str,
    changes: Map<String, Value>,
) -> Result<Map<String, Value>, OpError> {
    let rec = present(store, name).await?;
    let mut settings = rec.settings.clone();
    for key in TOKEN_KEYS {
        if changes.get(key).is_some_and(|v| !v.is_null()) {
            for other in TOKEN_KEYS.iter().filter(|k| **k != key) {
                settings.remove(*other);
            }
        }
    }
    for (k, v) in changes {
        if v.is_null() {
            settings.remove(&k);
        } else {
            settings.insert(k, v);
        }
    }
    check_settings(&settings)?;
    if store
        .update_instance(name, &settings, rec.updated_at)
        .await?
    {
        Ok(settings)
    } else {
        Err(OpError::Invalid(format!(
            "instance `{name}` was changed or removed by someone else meanwhile: look again (`statusd instance ls`) and retry"
        )))
    }
}

/// Enables (`true`) or disables a table instance. Disabled: its rows wait,
/// reported as paused; nothing is lost.
pub async fn set_enabled<S: Store>(store: &S, name: &str, enabled: bool) -> Result<(), OpError> {
    if store.set_instance_enabled(name, enabled).await? {
        Ok(())
    } else {
        Err(not_in_table(store, name).await)
    }
}

/// Removes a table instance; returns how many of its rows wait (not yet
/// sent or in doubt). They are kept, reported as paused, and sent again if
/// the name is added back.
pub async fn remove<S: Store>(store: &S, name: &str) -> Result<i64, OpError> {
    if !store.remove_instance(name).await? {
        return Err(not_in_table(store, name).await);
    }
    let waiting = store
        .summary()
        .await?
        .iter()
        .filter(|r| r.instance == name)
        .filter(|r| {
            matches!(
                r.state,
                State::Queued | State::PendingUpload | State::Uploading | State::InDoubt
            )
        })
        .map(|r| r.count)
        .sum();
    Ok(waiting)
}

async fn present<S: Store>(store: &S, name: &str) -> Result<InstanceRecord, OpError> {
    let table = store.instance_table().await?;
    match table.rows.into_iter().find(|r| r.name == name) {
        Some(r) if r.removed_at.is_none() => Ok(r),
        _ => Err(not_in_table(store, name).await),
    }
}

async fn not_in_table<S: Store>(store: &S, name: &str) -> OpError {
    let removed = match store.instance_table().await {
        Ok(t) => t
            .rows
            .iter()
            .any(|r| r.name == name && r.removed_at.is_some()),
        Err(_) => false,
    };
    if removed {
        OpError::NoInstance(format!(
            "instance `{name}` was removed (`statusd instance add {name} …` brings it back)"
        ))
    } else {
        OpError::NoInstance(format!(
            "no instance `{name}` in the instance table (instances of the configuration file are changed there)"
        ))
    }
}

/// 1-64 lower-case letters, digits, `-` or `_` (the table's CHECK; the
/// file's names are lower-case for the same reason: `STATUSD__INSTANCES__…`).
pub fn check_name(name: &str) -> Result<(), OpError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(OpError::Invalid(
            "name: must be 1-64 lower-case letters, digits, - or _".into(),
        ))
    }
}

/// The settings as the configuration file's are checked, and the token
/// rule: never by value, named exactly one way, readable here.
pub fn check_settings(settings: &Map<String, Value>) -> Result<(), OpError> {
    if settings.contains_key("access_token") {
        return Err(OpError::Invalid(
            "access_token: a token is never stored in the instance table; name an environment \
             variable (access_token_env / --token-env) or a file (access_token_file / --token-file) \
             that holds it"
                .into(),
        ));
    }
    let named = TOKEN_KEYS
        .iter()
        .filter(|k| settings.get(**k).is_some_and(|v| !v.is_null()))
        .count();
    if named != 1 {
        return Err(OpError::Invalid(
            "token: name it exactly one way: an environment variable (--token-env VAR) or a \
             file (--token-file PATH)"
                .into(),
        ));
    }
    let cfg = InstanceConfig::from_table(settings).map_err(OpError::Invalid)?;
    if let Ok(url) = url::Url::parse(&cfg.base_url) {
        if url.query().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err(OpError::Invalid(
                "base_url: must not carry a query or credentials (the token is named by \
                 --token-env or --token-file)"
                    .into(),
            ));
        }
    }
    let problems = cfg.problems("");
    if problems.is_empty() {
        Ok(())
    } else {
        Err(OpError::Invalid(
            problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        ))
    }
}
