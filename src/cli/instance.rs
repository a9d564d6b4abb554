//! `statusd instance add | ls | set | rm | disable | enable`: instances kept
//! in the database (`status_instances`) beside the configuration file's,
//! picked up by every running daemon within seconds, without a restart.
//! The checks and the writes are [`crate::ops::instances`]'s, shared with
//! the admin API.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Map, Value};

use super::table::{age, cells, json_lines, Table};
use crate::config::Settings;
use crate::ops::instances::{self as actions, NewInstance};
use crate::ops::OpError;
use crate::store::{Added, Store};

#[derive(Debug, Subcommand)]
pub enum InstanceCommand {
    /// Add an instance (or bring back a removed one); every running daemon
    /// starts sending its rows within seconds.
    #[command(after_help = "Examples:\n  \
        export WAWP_SHOP42_TOKEN=…   # in the daemons' environment too\n  \
        statusd instance add shop42 --instance-id 1A2B3C --token-env WAWP_SHOP42_TOKEN --rate-per-sec 5\n  \
        statusd instance add shop43 --instance-id 9F8E --token-file /run/secrets/shop43 --set supplied_id=false")]
    Add(InstanceAddArgs),
    /// List every instance: the file's and the table's, with state and rows.
    #[command(after_help = "Example:\n  statusd instance ls --json")]
    Ls(InstanceLsArgs),
    /// Change a table instance's settings.
    #[command(after_help = "Examples:\n  \
        statusd instance set shop42 --rate-per-sec 10 --burst 10 --max-in-flight 16\n  \
        statusd instance set shop42 --token-file /run/secrets/shop42 --unset max_in_flight")]
    Set(InstanceSetArgs),
    /// Remove a table instance: its rows are kept and wait, reported as
    /// paused; adding the name back sends them.
    #[command(after_help = "Example:\n  statusd instance rm shop42")]
    Rm(InstanceNameArg),
    /// Stop sending a table instance's rows (they wait, reported as paused).
    #[command(after_help = "Example:\n  statusd instance disable shop42")]
    Disable(InstanceNameArg),
    /// Send a disabled instance's rows again.
    #[command(after_help = "Example:\n  statusd instance enable shop42")]
    Enable(InstanceNameArg),
}

/// The settings flags `add` and `set` share; `--set KEY=VALUE` reaches any
/// key of an `[instances.NAME]` table (a value that parses as JSON is
/// taken as such: `--set supplied_id=false`, `--set rate_per_sec=5`).
#[derive(Debug, Args, Default)]
pub struct InstanceSettingsArgs {
    /// The provider's API root (default https://api.wawp.net).
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// The provider's instance id (Wawp `instance_id`).
    #[arg(long, value_name = "ID")]
    pub instance_id: Option<String>,
    /// The environment variable holding the access token, in the
    /// environment of this command and of every daemon (never the token).
    #[arg(long, value_name = "VAR", conflicts_with = "token_file")]
    pub token_env: Option<String>,
    /// A file holding the access token, readable here and by every daemon.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Statuses per second (token bucket).
    #[arg(long, value_name = "N")]
    pub rate_per_sec: Option<u32>,
    /// Statuses that may go at once after a quiet spell (the bucket's size).
    #[arg(long, value_name = "N")]
    pub burst: Option<u32>,
    /// Calls of this instance in flight at once (default 8), so a slow
    /// provider holds at most this many of the daemon's send slots.
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<usize>,
    /// Send our pre-generated id in the body (true) or let the provider
    /// assign it (false).
    #[arg(long, value_name = "BOOL")]
    pub supplied_id: Option<bool>,
    /// Any other setting of an `[instances.NAME]` table, as KEY=VALUE.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(Debug, Args)]
pub struct InstanceAddArgs {
    /// The instance's name (lower-case letters, digits, - or _): what rows
    /// name in `status_outbox.instance`.
    pub name: String,
    #[command(flatten)]
    pub settings: InstanceSettingsArgs,
    /// Add it disabled (its rows wait until `statusd instance enable`).
    #[arg(long)]
    pub disabled: bool,
}

#[derive(Debug, Args)]
pub struct InstanceSetArgs {
    pub name: String,
    #[command(flatten)]
    pub settings: InstanceSettingsArgs,
    /// Remove a setting (its default applies), e.g. `--unset burst`.
    #[arg(long, value_name = "KEY")]
    pub unset: Vec<String>,
}

#[derive(Debug, Args)]
pub struct InstanceLsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InstanceNameArg {
    pub name: String,
}

impl InstanceSettingsArgs {
    /// The flags as settings keys; `--set` first, so a named flag wins.
    fn to_map(&self) -> anyhow::Result<Map<String, Value>> {
        let mut m = Map::new();
        for kv in &self.set {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--set `{kv}`: give KEY=VALUE"))?;
            let k = k.trim();
            if k == "access_token" {
                anyhow::bail!(
                    "--set access_token: a token is never stored in the instance table; \
                     use --token-env VAR or --token-file PATH"
                );
            }
            let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
            m.insert(k.to_string(), v);
        }
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.to_string(), v);
            }
        };
        put("base_url", self.base_url.clone().map(Value::from));
        put("instance_id", self.instance_id.clone().map(Value::from));
        put("access_token_env", self.token_env.clone().map(Value::from));
        put(
            "access_token_file",
            self.token_file
                .as_ref()
                .map(|p| Value::from(p.display().to_string())),
        );
        put("rate_per_sec", self.rate_per_sec.map(Value::from));
        put("burst", self.burst.map(Value::from));
        put("max_in_flight", self.max_in_flight.map(Value::from));
        put("supplied_id", self.supplied_id.map(Value::from));
        Ok(m)
    }
}

/// An action's error as the operator reads it.
fn op(e: OpError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

pub async fn dispatch<S: Store>(
    store: &S,
    cmd: InstanceCommand,
    settings: &Settings,
) -> anyhow::Result<String> {
    let file = settings.instance_names();
    match cmd {
        InstanceCommand::Add(a) => {
            let name = a.name.clone();
            let added = actions::add(
                store,
                &file,
                NewInstance {
                    name: a.name,
                    settings: a.settings.to_map()?,
                    enabled: !a.disabled,
                },
            )
            .await
            .map_err(op)?;
            let what = match added {
                Added::Created => "added",
                Added::Restored => "added back (its waiting rows go again)",
            };
            let state = if a.disabled {
                "disabled: `statusd instance enable` starts it"
            } else {
                "running daemons start sending within seconds"
            };
            Ok(format!("instance `{name}` {what}; {state}\n"))
        }
        InstanceCommand::Set(a) => {
            let mut changes = a.settings.to_map()?;
            for k in a.unset {
                changes.insert(k, Value::Null);
            }
            if changes.is_empty() {
                anyhow::bail!(
                    "nothing to change: give a setting flag, --set KEY=VALUE or --unset KEY"
                );
            }
            actions::set(store, &a.name, changes).await.map_err(op)?;
            Ok(format!(
                "instance `{}` changed; running daemons use the new settings within seconds\n",
                a.name
            ))
        }
        InstanceCommand::Rm(a) => {
            let waiting = actions::remove(store, &a.name).await.map_err(op)?;
            let rows = if waiting == 0 {
                "no rows wait for it".to_string()
            } else {
                format!(
                    "{waiting} of its rows are kept and wait (reported as paused); \
                     `statusd instance add {}` sends them again, `statusd ls --instance {}` lists them",
                    a.name, a.name
                )
            };
            Ok(format!("instance `{}` removed; {rows}\n", a.name))
        }
        InstanceCommand::Disable(a) => set_enabled(store, &a.name, false).await,
        InstanceCommand::Enable(a) => set_enabled(store, &a.name, true).await,
        InstanceCommand::Ls(a) => ls(store, settings, a.json).await,
    }
}

/// `statusd instance enable | disable NAME`.
async fn set_enabled<S: Store>(store: &S, name: &str, enabled: bool) -> anyhow::Result<String> {
    actions::set_enabled(store, name, enabled)
        .await
        .map_err(op)?;
    Ok(if enabled {
        format!("instance `{name}` enabled; running daemons send its rows within seconds\n")
    } else {
        format!(
            "instance `{name}` disabled: its rows wait (reported as paused) until \
             `statusd instance enable {name}`\n"
        )
    })
}

async fn ls<S: Store>(store: &S, settings: &Settings, as_json: bool) -> anyhow::Result<String> {
    let file = settings.instance_names();
    let mut views = actions::list(store, &file).await.map_err(op)?;
    for v in views.iter_mut().filter(|v| v.source == "file") {
        v.max_in_flight = settings.instances.get(&v.instance).map(|i| i.max_in_flight);
    }
    if as_json {
        return json_lines(&views);
    }
    let header = vec![
        "INSTANCE",
        "SOURCE",
        "STATE",
        "WAITING",
        "DUE",
        "IN_FLIGHT",
        "MAX_IN_FLIGHT",
        "IN_DOUBT",
        "OLDEST_DUE",
        "POSTED/MIN",
        "SETTINGS",
        "REASON",
    ];
    let none = "no instances: configure one in the file or `statusd instance add`\n";
    Ok(Table::listing(header, &views, none, |v| {
        let settings = v
            .settings
            .as_ref()
            .map(|s| {
                s.iter()
                    .map(|(k, v)| match v {
                        Value::String(s) => format!("{k}={s}"),
                        other => format!("{k}={other}"),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let oldest_due = v.oldest_due_age_secs.map(age);
        let max_in_flight = v.max_in_flight.map_or("-".to_string(), |n| n.to_string());
        cells![
            v.instance,
            v.source,
            v.state,
            v.waiting,
            v.due,
            v.in_flight,
            max_in_flight,
            v.in_doubt,
            oldest_due.as_deref().unwrap_or("-"),
            v.posted_last_minute,
            settings,
            v.reason.as_deref().unwrap_or_default(),
        ]
    }))
}
