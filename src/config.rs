//! Layered configuration: `config/default.toml`, then `config/{env}.toml`
//! (env from `STATUSD_ENV`, default `local`; the directory from
//! `--config-dir` or `STATUSD_CONFIG_DIR`), then an explicit `--config`
//! file, then `STATUSD__SECTION__KEY` variables, then command-line
//! overrides. Secrets are held in [`SecretString`] and never printed; the
//! admin token and the database URL may also come from files
//! (`admin.token_file`, `database.url_file`: Docker secrets).
//!
//! Loading never stops at the first mistake: the layers are read into a
//! value tree, deserialized with every field optional, and each unknown key
//! or wrong type is recorded with its path and taken out before trying
//! again; required keys and value rules are checked afterwards. So one
//! `statusd config check` lists every problem, each with its key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// A struct whose every field is written once, with its doc and its
/// default (`pub name: Type = default,`), and the `Default` that gathers
/// them: settings, simulator knobs and demo options keep each default
/// beside its field. With `#[serde(default)]` on the struct, a key left
/// out takes its default.
macro_rules! with_defaults {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($(#[$fmeta:meta])* pub $field:ident: $ty:ty = $default:expr,)*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    $($field: $default,)*
                }
            }
        }
    };
}
pub(crate) use with_defaults;

mod instance;
mod load;
mod redact;
mod secret;
mod show;
mod webhooks;

use load::{deserialize_collecting, instance_name_problems, read_layers, resolve};

pub use instance::{
    check_configured, is_env_var_name, InstanceConfig, NotConfigured, ProviderKind,
    DEFAULT_MAX_IN_FLIGHT,
};
pub use redact::{redact_url, redact_url_secrets_in};
use secret::read_secret_file;
pub use secret::SecretError;
pub use webhooks::WebhookSettings;

#[derive(Debug, Clone)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub daemon: DaemonSettings,
    pub admin: AdminSettings,
    pub provider: ProviderSettings,
    pub instances: BTreeMap<String, InstanceConfig>,
    pub webhooks: WebhookSettings,
    /// Files the secrets above were read from (shown by `config show`).
    pub secret_files: SecretFiles,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// `sqlite://path.db` or `postgres://…`.
    pub url: SecretString,
    pub max_connections: u32,
    /// The longest a database call may go unanswered before it fails and is
    /// retried (a black-holed network, a frozen database host); see
    /// `store::Timed`.
    pub call_timeout_ms: u64,
}

impl DatabaseSettings {
    pub fn call_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.call_timeout_ms)
    }
}

/// `admin.token_file` and `database.url_file`, when the secret came from one.
#[derive(Debug, Clone, Default)]
pub struct SecretFiles {
    pub admin_token_file: Option<PathBuf>,
    pub database_url_file: Option<PathBuf>,
}

fn d_max_connections() -> u32 {
    8
}

fn d_call_timeout_ms() -> u64 {
    30_000
}

/// Where message ids come from (DESIGN.md §5, id assigner).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum IdSource {
    /// `GET /v2/status/new-message-id` on the row's instance.
    Api,
    /// Generated here, in the provider's shape, from the OS's CSPRNG.
    #[default]
    Local,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSettings {
    /// Name of this replica in `lease_owner`; default host name + pid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub id_source: IdSource,
    /// Ids fetched in parallel by the `api` source.
    pub id_fetch_parallelism: usize,
    /// In-flight provider calls, all instances together.
    pub concurrency: usize,
    /// Most rows claimed or assigned in one statement.
    pub batch_size: usize,
    pub lease_secs: u64,
    /// An instance lease: each instance is served by one replica at a time
    /// (its rate and in-flight cap hold for the whole deployment); renewed
    /// every quarter of this, taken over by another replica this long after
    /// its holder died.
    pub instance_lease_secs: u64,
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
    /// Look-ups of in-doubt rows in flight at once (the reconciler's own,
    /// not the id fetcher's `id_fetch_parallelism`).
    pub reconcile_parallelism: usize,
    /// How often expired leases are rescued.
    pub rescue_interval_ms: u64,
    /// Retryable outcomes allowed before a row becomes `failed`.
    pub max_attempts: i32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Wait after an unknown outcome before the first look-up, counted from
    /// when the call ended: at least the request timeout plus the engine's
    /// retry window (NOWEB retries a failed send for ~20 s under the same
    /// id), so that a first look-up does not come before the post.
    pub settle_delay_ms: u64,
    /// Failed look-ups before an in-doubt row is parked for an operator.
    pub reconcile_max_attempts: i32,
    /// The longest the provider may still post a request after our call
    /// ended (its own retries of a held or failed send: NOWEB retries a
    /// chunk up to 5 times over ~20 s). A status not found before its
    /// claim + lease + this window is not yet taken as absent (DESIGN.md R5).
    pub engine_retry_window_ms: u64,
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
            instance_lease_secs: 10,
            poll_interval_ms: 500,
            fallback_poll_ms: 5000,
            reconcile_interval_ms: 2000,
            reconcile_parallelism: 16,
            rescue_interval_ms: 5000,
            max_attempts: 10,
            retry_base_ms: 1000,
            retry_max_ms: 300_000,
            settle_delay_ms: 60_000,
            reconcile_max_attempts: 10,
            engine_retry_window_ms: 30_000,
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
    pub fn instance_lease(&self) -> Duration {
        Duration::from_secs(self.instance_lease_secs)
    }
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub enabled: bool,
    /// Address of the admin HTTP server; loopback by default.
    pub bind: String,
    /// Bearer token for everything but /healthz, /readyz and /metrics.
    /// Absent: the admin API answers only those; empty or blank is refused
    /// by [`Settings::problems`] (it would match an empty bearer).
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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderSettings {
    pub connect_timeout_ms: u64,
    /// The longest a call may take; a send's is also bounded by the lease
    /// it has left, so a call never outlives its lease.
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

impl ConfigProblem {
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> ConfigProblem {
        ConfigProblem {
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// The same key, or a key inside it (`instances.Main` covers
    /// `instances.Main.access_token`).
    fn covers(&self, key: &str) -> bool {
        key == self.key
            || key
                .strip_prefix(self.key.as_str())
                .is_some_and(|rest| rest.starts_with('.'))
    }
}

/// The key of the problem that says where configuration was looked for.
pub const CONFIG_DIR_KEY: &str = "--config-dir";

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

impl ConfigSource {
    fn dir(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| PathBuf::from("config"))
    }

    fn env_name() -> String {
        std::env::var("STATUSD_ENV").unwrap_or_else(|_| "local".into())
    }

    /// When no layer file exists at all, where they were looked for and how
    /// to point at them: the first thing a user running from another
    /// directory needs to know.
    fn nothing_found_hint(&self) -> Option<String> {
        if self.file.is_some() {
            return None;
        }
        let dir = self.dir();
        let env = ConfigSource::env_name();
        let candidates = [dir.join("default.toml"), dir.join(format!("{env}.toml"))];
        if candidates.iter().any(|f| f.exists()) {
            return None;
        }
        let shown = std::path::absolute(&dir).unwrap_or(dir);
        Some(format!(
            "no configuration file found: looked for default.toml and {env}.toml in {}; \
             point at your config directory with --config-dir DIR or STATUSD_CONFIG_DIR=DIR, \
             or give a file with --config FILE",
            shown.display()
        ))
    }
}

/// The file layer: the public settings with every field optional or
/// defaulted, so that one bad key does not hide the others. Required keys
/// and the `*_file` secrets are resolved by [`resolve`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSettings {
    database: RawDatabase,
    daemon: DaemonSettings,
    admin: RawAdmin,
    provider: ProviderSettings,
    instances: BTreeMap<String, InstanceConfig>,
    webhooks: WebhookSettings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDatabase {
    url: Option<SecretString>,
    /// A file holding the URL (a Docker secret); wins over `url`, which
    /// `config/default.toml` always sets.
    url_file: Option<PathBuf>,
    max_connections: u32,
    call_timeout_ms: u64,
}

impl Default for RawDatabase {
    fn default() -> Self {
        RawDatabase {
            url: None,
            url_file: None,
            max_connections: d_max_connections(),
            call_timeout_ms: d_call_timeout_ms(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    enabled: bool,
    bind: String,
    token: Option<SecretString>,
    /// A file holding the token (a Docker secret); wins over `token`.
    token_file: Option<PathBuf>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        let d = AdminSettings::default();
        RawAdmin {
            enabled: d.enabled,
            bind: d.bind,
            token: None,
            token_file: None,
        }
    }
}

impl Settings {
    /// The configuration file's instance names, in order.
    pub fn instance_names(&self) -> Vec<String> {
        self.instances.keys().cloned().collect()
    }

    /// Loads and validates the layers; every problem is reported, each with
    /// its key.
    pub fn load(src: &ConfigSource) -> Result<Settings, ConfigError> {
        let (settings, problems) = Settings::load_report(src)?;
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Loads the layers and returns the settings together with every
    /// problem found (a key at fault is replaced by its default in the
    /// settings). Fails only when a layer cannot be read at all (a TOML
    /// syntax error, a missing `--config` file). The operator commands use
    /// this: they need a database, not instances.
    pub fn load_report(src: &ConfigSource) -> Result<(Settings, Vec<ConfigProblem>), ConfigError> {
        let mut tree = read_layers(src)?;
        // Found in order of trust: a structural problem explains the
        // semantic ones on the same key, which are then left out.
        let mut found = instance_name_problems(&tree);
        let raw = deserialize_collecting(&mut tree, &mut found);
        let settings = resolve(raw, &mut found);
        found.extend(settings.problems());
        let mut problems: Vec<ConfigProblem> = Vec::new();
        for p in found {
            if !problems.iter().any(|q| q.covers(&p.key)) {
                problems.push(p);
            }
        }
        problems.sort_by(|a, b| a.key.cmp(&b.key));
        if !problems.is_empty() {
            if let Some(hint) = src.nothing_found_hint() {
                problems.insert(0, ConfigProblem::new(CONFIG_DIR_KEY, hint));
            }
        }
        Ok((settings, problems))
    }

    /// Settings for tests and the demo, built in code.
    pub fn for_database(url: &str) -> Settings {
        Settings {
            database: DatabaseSettings {
                url: SecretString::from(url.to_string()),
                max_connections: d_max_connections(),
                call_timeout_ms: d_call_timeout_ms(),
            },
            daemon: DaemonSettings::default(),
            admin: AdminSettings::default(),
            provider: ProviderSettings::default(),
            instances: BTreeMap::new(),
            webhooks: WebhookSettings::default(),
            secret_files: SecretFiles::default(),
        }
    }

    /// Every semantic problem, each with its key.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let mut p = |key: &str, problem: &str| out.push(ConfigProblem::new(key, problem));
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
        if self.database.call_timeout_ms < 100 {
            p("database.call_timeout_ms", "must be at least 100");
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
        if d.instance_lease_secs < 2 {
            p("daemon.instance_lease_secs", "must be at least 2");
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
        if d.reconcile_parallelism == 0 {
            p("daemon.reconcile_parallelism", "must be at least 1");
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
        // An empty bearer would match an empty token: that opened the whole
        // admin API. Absent is the way to say "no token".
        if let Some(t) = &self.admin.token {
            if t.expose_secret().trim().is_empty() {
                p(
                    "admin.token",
                    "must not be empty or blank: set a long random token, or remove it \
                     (the admin API then answers only /healthz, /readyz and /metrics)",
                );
            }
        }
        if self.webhooks.max_body_bytes < 1024 {
            p("webhooks.max_body_bytes", "must be at least 1024");
        }
        if self.webhooks.batch_size == 0 {
            p("webhooks.batch_size", "must be at least 1");
        }
        if self.provider.request_timeout_ms == 0 {
            p("provider.request_timeout_ms", "must be at least 1");
        }
        if self.provider.connect_timeout_ms == 0 {
            p("provider.connect_timeout_ms", "must be at least 1");
        }
        // A send may start as late as half its lease (later, the claimed row
        // is released unsent); its call must end before the lease does, or
        // the rescuer could take the row back while the call still runs.
        if self.provider.request_timeout_ms > d.lease_secs.saturating_mul(1000) / 2 {
            p(
                "provider.request_timeout_ms",
                &format!(
                    "must be at most half of daemon.lease_secs ({} ms): a call could outlive its lease",
                    d.lease_secs.saturating_mul(1000) / 2
                ),
            );
        }
        for name in self.instances.keys() {
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
        }
        if self.instances.is_empty() {
            p("instances", "at least one instance must be configured");
        }
        for (name, inst) in &self.instances {
            out.extend(inst.problems(&format!("instances.{name}")));
        }
        out
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
    use super::instance::check_base_url;
    use super::load::without_source_lines;
    use super::*;

    #[test]
    fn syntax_errors_do_not_quote_the_line() {
        let msg = "TOML parse error at line 3, column 9\n  |\n3 | token = \"abc\n  |         ^\n\
                   invalid basic string\n in config/default.toml";
        assert_eq!(
            without_source_lines(msg),
            "TOML parse error at line 3, column 9: invalid basic string: in config/default.toml"
        );
    }

    /// A send may start as late as half its lease; a request timeout above
    /// that half could let a call outlive its lease (issue 12 §4).
    #[test]
    fn a_call_that_could_outlive_its_lease_is_refused() {
        let mut s = Settings::for_database("sqlite://x.db");
        let key = |s: &Settings| {
            s.problems()
                .into_iter()
                .find(|p| p.key == "provider.request_timeout_ms")
        };
        assert!(key(&s).is_none(), "the defaults fit: 30 s within 60 s / 2");
        s.provider.request_timeout_ms = 30_001;
        let p = key(&s).expect("refused");
        assert!(p.problem.contains("outlive its lease"), "{p}");
        s.daemon.lease_secs = 120;
        assert!(key(&s).is_none());
    }

    #[test]
    fn base_url_needs_http_and_a_host() {
        assert!(check_base_url("https://api.wawp.net").is_ok());
        assert!(check_base_url("http://127.0.0.1:9090").is_ok());
        assert!(check_base_url("https://").is_err());
        assert!(check_base_url("ftp://api.example").is_err());
        assert!(check_base_url("api.wawp.net").is_err());
    }

    /// `config/default.toml` documents every setting with its default; the
    /// built-in defaults apply when a key is left out. The two must agree,
    /// key for key, or an operator reading the file is misled.
    #[test]
    fn default_toml_and_built_in_defaults_agree() {
        let file: toml::Table =
            toml::from_str(include_str!("../config/default.toml")).expect("default.toml parses");
        let section = |name: &str| -> serde_json::Value {
            serde_json::to_value(file.get(name).expect("section present")).expect("to JSON")
        };
        assert_eq!(
            section("daemon"),
            serde_json::to_value(DaemonSettings::default()).expect("to JSON"),
            "[daemon] in config/default.toml vs DaemonSettings::default()"
        );
        assert_eq!(
            section("provider"),
            serde_json::to_value(ProviderSettings::default()).expect("to JSON"),
            "[provider] in config/default.toml vs ProviderSettings::default()"
        );
        assert_eq!(
            section("webhooks"),
            serde_json::to_value(WebhookSettings::default()).expect("to JSON"),
            "[webhooks] in config/default.toml vs WebhookSettings::default()"
        );
    }
}
