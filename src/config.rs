//! Layered configuration: `config/default.toml`, then `config/{env}.toml`
//! (env from `STATUSD_ENV`, default `local`), then an explicit `--config`
//! file, then `STATUSD__SECTION__KEY` variables. Secrets are held in
//! [`SecretString`] and never printed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    #[serde(default)]
    pub daemon: DaemonSettings,
    #[serde(default)]
    pub admin: AdminSettings,
    #[serde(default)]
    pub provider: ProviderSettings,
    #[serde(default)]
    pub instances: BTreeMap<String, InstanceConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://path.db` or `postgres://…`.
    pub url: SecretString,
    #[serde(default = "d_max_connections")]
    pub max_connections: u32,
}

fn d_max_connections() -> u32 {
    8
}

/// Where message ids come from (DESIGN.md §5, id assigner).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum IdSource {
    /// `GET /v2/status/new-message-id` on the row's instance.
    Api,
    /// Generated here, in the provider's shape, from the OS's CSPRNG.
    #[default]
    Local,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSettings {
    /// Name of this replica in `lease_owner`; default host name + pid.
    pub owner: Option<String>,
    pub id_source: IdSource,
    /// Ids fetched in parallel by the `api` source.
    pub id_fetch_parallelism: usize,
    /// In-flight provider calls, all instances together.
    pub concurrency: usize,
    /// Most rows claimed or assigned in one statement.
    pub batch_size: usize,
    pub lease_secs: u64,
    /// How often idle workers look for work when the store cannot signal it
    /// (an in-memory SQLite database).
    pub poll_interval_ms: u64,
    /// PostgreSQL (`LISTEN`) and SQLite files (watched): poll this often in
    /// case a signal was missed. Rows due later (`not_before`, a retry's
    /// backoff) are claimed on time regardless: idle workers sleep until
    /// the next one is due.
    pub fallback_poll_ms: u64,
    /// How often the reconciler looks for due in-doubt rows.
    pub reconcile_interval_ms: u64,
    /// How often expired leases are rescued.
    pub rescue_interval_ms: u64,
    /// Retryable outcomes allowed before a row becomes `failed`.
    pub max_attempts: i32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Wait after an unknown outcome before the first look-up.
    pub settle_delay_ms: u64,
    /// Failed look-ups before an in-doubt row is parked for an operator.
    pub reconcile_max_attempts: i32,
    /// Pause of an instance that answered 401/403 before it is probed again.
    pub instance_probe_ms: u64,
    pub shutdown_grace_secs: u64,
    /// Terminal rows older than this are purged (0 keeps them forever).
    pub retention_days: u64,
    /// Cron expression (with seconds) for the retention purge.
    pub purge_cron: String,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        DaemonSettings {
            owner: None,
            id_source: IdSource::Local,
            id_fetch_parallelism: 16,
            concurrency: 64,
            batch_size: 128,
            lease_secs: 60,
            poll_interval_ms: 500,
            fallback_poll_ms: 5000,
            reconcile_interval_ms: 2000,
            rescue_interval_ms: 5000,
            max_attempts: 10,
            retry_base_ms: 1000,
            retry_max_ms: 300_000,
            settle_delay_ms: 5000,
            reconcile_max_attempts: 10,
            instance_probe_ms: 30_000,
            shutdown_grace_secs: 20,
            retention_days: 30,
            purge_cron: "0 17 3 * * *".into(),
        }
    }
}

impl DaemonSettings {
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    pub enabled: bool,
    /// Address of the admin HTTP server; loopback by default.
    pub bind: String,
    /// Bearer token for everything but /healthz, /readyz and /metrics.
    pub token: Option<SecretString>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            enabled: true,
            bind: "127.0.0.1:8088".into(),
            token: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderSettings {
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        ProviderSettings {
            connect_timeout_ms: 5_000,
            request_timeout_ms: 30_000,
        }
    }
}

/// Which provider API an instance speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    #[default]
    Wawp,
}

/// One provider instance (one WhatsApp session).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    #[serde(default)]
    pub provider: ProviderKind,
    #[serde(default = "d_base_url")]
    pub base_url: String,
    pub instance_id: String,
    /// The access token; or use `access_token_file`.
    #[serde(default)]
    pub access_token: Option<SecretString>,
    #[serde(default)]
    pub access_token_file: Option<PathBuf>,
    /// Send our pre-generated id in the body (API.md).
    #[serde(default = "d_true")]
    pub supplied_id: bool,
    /// Token-bucket rate: statuses per second, and burst.
    #[serde(default = "d_rate")]
    pub rate_per_sec: u32,
    #[serde(default = "d_burst")]
    pub burst: u32,
}

fn d_base_url() -> String {
    "https://api.wawp.net".into()
}
fn d_true() -> bool {
    true
}
fn d_rate() -> u32 {
    20
}
fn d_burst() -> u32 {
    20
}

impl InstanceConfig {
    /// The token, read from the file when configured that way.
    pub fn token(&self) -> Result<SecretString, String> {
        if let Some(t) = &self.access_token {
            return Ok(t.clone());
        }
        match &self.access_token_file {
            Some(p) => std::fs::read_to_string(p)
                .map(|s| SecretString::from(s.trim().to_string()))
                .map_err(|e| format!("cannot read access_token_file {}: {e}", p.display())),
            None => Err("access_token (or access_token_file) is required".into()),
        }
    }
}

/// A problem in the configuration, with the key at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub problem: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load configuration: {0}")]
    Load(String),
    #[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigProblem>),
}

/// Where to read configuration from.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// Directory holding `default.toml` and `{env}.toml`; default `config`.
    pub dir: Option<PathBuf>,
    /// An extra file layered on top.
    pub file: Option<PathBuf>,
    /// Overrides given on the command line (e.g. `--database-url`).
    pub overrides: Vec<(String, String)>,
}

impl Settings {
    /// Loads and validates the layers; every problem is reported, each with
    /// its key.
    pub fn load(src: &ConfigSource) -> Result<Settings, ConfigError> {
        let settings = Settings::load_unchecked(src)?;
        let problems = settings.problems();
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Loads the layers without the checks of [`Settings::problems`]: the
    /// operator commands (`ls`, `retry`, …) need a database, not instances,
    /// and check what they use themselves.
    pub fn load_unchecked(src: &ConfigSource) -> Result<Settings, ConfigError> {
        let dir = src.dir.clone().unwrap_or_else(|| PathBuf::from("config"));
        let env = std::env::var("STATUSD_ENV").unwrap_or_else(|_| "local".into());
        let mut b = config::Config::builder()
            .add_source(config::File::from(dir.join("default.toml")).required(false))
            .add_source(config::File::from(dir.join(format!("{env}.toml"))).required(false));
        if let Some(f) = &src.file {
            if !f.exists() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist",
                    f.display()
                )));
            }
            b = b.add_source(config::File::from(f.as_path()));
        }
        b = b.add_source(
            config::Environment::with_prefix("STATUSD")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        for (k, v) in &src.overrides {
            b = b
                .set_override(k.as_str(), v.as_str())
                .map_err(|e| ConfigError::Load(e.to_string()))?;
        }
        let raw = b.build().map_err(|e| ConfigError::Load(e.to_string()))?;
        let problems = instance_name_problems(&raw);
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        raw.try_deserialize()
            .map_err(|e| ConfigError::Invalid(vec![problem_from_serde(&e.to_string())]))
    }

    /// Settings for tests and the demo, built in code.
    pub fn for_database(url: &str) -> Settings {
        Settings {
            database: DatabaseSettings {
                url: SecretString::from(url.to_string()),
                max_connections: d_max_connections(),
            },
            daemon: DaemonSettings::default(),
            admin: AdminSettings::default(),
            provider: ProviderSettings::default(),
            instances: BTreeMap::new(),
        }
    }

    /// Every semantic problem, each with its key.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let mut p = |key: &str, problem: &str| {
            out.push(ConfigProblem {
                key: key.into(),
                problem: problem.into(),
            })
        };
        let url = self.database.url.expose_secret();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            p(
                "database.url",
                "must start with sqlite:, postgres:// or postgresql://",
            );
        }
        if self.database.max_connections == 0 {
            p("database.max_connections", "must be at least 1");
        }
        let d = &self.daemon;
        if d.concurrency == 0 {
            p("daemon.concurrency", "must be at least 1");
        }
        if d.batch_size == 0 {
            p("daemon.batch_size", "must be at least 1");
        }
        if d.lease_secs < 2 {
            p("daemon.lease_secs", "must be at least 2");
        }
        if d.poll_interval_ms == 0 {
            p("daemon.poll_interval_ms", "must be at least 1");
        }
        if d.max_attempts < 1 {
            p("daemon.max_attempts", "must be at least 1");
        }
        if d.retry_base_ms == 0 || d.retry_base_ms > d.retry_max_ms {
            p(
                "daemon.retry_base_ms",
                "must be at least 1 and not above daemon.retry_max_ms",
            );
        }
        if d.reconcile_max_attempts < 1 {
            p("daemon.reconcile_max_attempts", "must be at least 1");
        }
        if d.id_fetch_parallelism == 0 {
            p("daemon.id_fetch_parallelism", "must be at least 1");
        }
        if d.purge_cron.parse::<cron_check::Expr>().is_err() {
            p(
                "daemon.purge_cron",
                "is not a cron expression (sec min hour day month weekday)",
            );
        }
        if self.admin.bind.parse::<std::net::SocketAddr>().is_err() {
            p("admin.bind", "must be an address like 127.0.0.1:8088");
        }
        if self.provider.request_timeout_ms == 0 {
            p("provider.request_timeout_ms", "must be at least 1");
        }
        if self.provider.connect_timeout_ms == 0 {
            p("provider.connect_timeout_ms", "must be at least 1");
        }
        for (name, inst) in &self.instances {
            let key = |k: &str| format!("instances.{name}.{k}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                p(
                    &format!("instances.{name}"),
                    "name must be letters, digits, - or _",
                );
            }
            if !(inst.base_url.starts_with("https://") || inst.base_url.starts_with("http://")) {
                p(&key("base_url"), "must be an http(s) URL");
            }
            if inst.instance_id.trim().is_empty() {
                p(&key("instance_id"), "must not be empty");
            }
            if let Err(e) = inst.token() {
                p(&key("access_token"), &e);
            } else if inst.token().map(|t| t.expose_secret().is_empty()) == Ok(true) {
                p(&key("access_token"), "must not be empty");
            }
            if inst.rate_per_sec == 0 {
                p(&key("rate_per_sec"), "must be at least 1");
            }
            if inst.burst == 0 {
                p(&key("burst"), "must be at least 1");
            }
        }
        if self.instances.is_empty() {
            p("instances", "at least one instance must be configured");
        }
        out
    }

    /// A printable view with every secret replaced by `[redacted]`.
    pub fn redacted(&self) -> String {
        let mut s = String::new();
        let url = redact_url(self.database.url.expose_secret());
        s += &format!(
            "[database]\nurl = {url:?}\nmax_connections = {}\n\n",
            self.database.max_connections
        );
        s += &format!("[daemon]\n{:#?}\n\n", self.daemon);
        s += &format!(
            "[admin]\nenabled = {}\nbind = {:?}\ntoken = {}\n\n",
            self.admin.enabled,
            self.admin.bind,
            if self.admin.token.is_some() {
                "\"[redacted]\""
            } else {
                "(none)"
            }
        );
        s += &format!(
            "[provider]\nconnect_timeout_ms = {}\nrequest_timeout_ms = {}\n",
            self.provider.connect_timeout_ms, self.provider.request_timeout_ms
        );
        for (name, i) in &self.instances {
            s += &format!(
                "\n[instances.{name}]\nprovider = {:?}\nbase_url = {:?}\ninstance_id = {:?}\naccess_token = \"[redacted]\"\nsupplied_id = {}\nrate_per_sec = {}\nburst = {}\n",
                i.provider, i.base_url, i.instance_id, i.supplied_id, i.rate_per_sec, i.burst
            );
        }
        s
    }
}

/// Removes a password from a database URL.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{}://{}:[redacted]{}", &url[..scheme_end], user, &url[at..])
            } else {
                url.to_string()
            }
        }
        _ => url.to_string(),
    }
}

/// The environment source lowercases its keys, so
/// `STATUSD__INSTANCES__MAIN__ACCESS_TOKEN` can only reach `[instances.main]`:
/// an upper-case name in a file would silently become a second, incomplete
/// instance, reported as a puzzling missing field. Say what is wrong instead.
fn instance_name_problems(raw: &config::Config) -> Vec<ConfigProblem> {
    let Ok(table) = raw.get_table("instances") else {
        return Vec::new();
    };
    table
        .keys()
        .filter(|k| k.chars().any(char::is_uppercase))
        .map(|k| ConfigProblem {
            key: format!("instances.{k}"),
            problem: format!(
                "instance names must be lowercase: STATUSD__INSTANCES__… variables are \
                 lowercased and would configure `{}` instead; rename it",
                k.to_lowercase()
            ),
        })
        .collect()
}

fn problem_from_serde(msg: &str) -> ConfigProblem {
    // config 0.15 reports an absent required key as
    // `missing configuration field "instances.main.instance_id"`.
    if let Some(key) = msg
        .strip_prefix("missing configuration field \"")
        .and_then(|r| r.strip_suffix('"'))
    {
        return ConfigProblem {
            key: key.to_string(),
            problem: "is required".into(),
        };
    }
    // The config crate reports e.g. "missing field `url` for key `database`"
    // or "invalid type: ... for key `daemon.concurrency` in config/x.toml".
    let key = msg
        .split("for key `")
        .nth(1)
        .and_then(|r| r.split('`').next())
        .map(str::to_string);
    let field = msg
        .split("field `")
        .nth(1)
        .and_then(|r| r.split('`').next());
    let key = match (key, field) {
        (Some(k), Some(f))
            if msg.starts_with("missing field") || msg.starts_with("unknown field") =>
        {
            format!("{k}.{f}")
        }
        (Some(k), _) => k,
        (None, Some(f)) => f.to_string(),
        (None, None) => "(configuration)".into(),
    };
    ConfigProblem {
        key,
        problem: msg.to_string(),
    }
}

/// Validation of cron expressions without starting a scheduler.
pub mod cron_check {
    use std::str::FromStr;

    /// A parsed cron expression (croner, the parser tokio-cron-scheduler uses).
    pub struct Expr;

    impl FromStr for Expr {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, Self::Err> {
            tokio_cron_scheduler::Job::new_async(s, |_, _| Box::pin(async {}))
                .map(|_| Expr)
                .map_err(|e| e.to_string())
        }
    }
}

/// Directory the settings were loaded from, for messages.
pub fn describe_source(src: &ConfigSource) -> String {
    let dir = src
        .dir
        .clone()
        .unwrap_or_else(|| Path::new("config").to_path_buf());
    match &src.file {
        Some(f) => format!("{} + {}", dir.display(), f.display()),
        None => dir.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_database_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:[redacted]@h:5432/db"
        );
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
