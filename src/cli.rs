//! The operator's command line. The binary (`src/main.rs`) only calls
//! [`main`]; everything else lives here so that it is documented and tested
//! with the library.
//!
//! # Layout
//!
//! - this module: the argument grammar (clap derive), logging, loading the
//!   settings, picking the backend once from the URL scheme and handing a
//!   concrete store to the generic [`dispatch`];
//! - [`outbox`]: `migrate`, `enqueue`, `ls`, `show`, `stats`, `retry`, `cancel`;
//! - [`schedule`]: `schedule add | ls | rm`;
//! - [`configuration`]: `config check | show`;
//! - [`table`]: plain-text tables, ages and `--since` durations.
//!
//! Errors are `anyhow` with a `.context(…)` per step; [`main`] prints one line
//! per cause and exits non-zero. Usage errors exit 2 (clap's convention).

mod configuration;
mod outbox;
mod schedule;
mod table;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::config::{
    redact_url, redact_url_secrets_in, ConfigError, ConfigSource, Settings, CONFIG_DIR_KEY,
};
use crate::model::State;
use crate::store::{Backend, PgStore, SqliteStore, Store, Timed};

pub use crate::ops::Since;

#[derive(Debug, Parser)]
#[command(
    name = "statusd",
    version,
    about = "Posts WhatsApp statuses from a persistent outbox, exactly once.",
    after_help = "Example:\n  statusd --config-dir /etc/statusd ls --state in_doubt --since 2h"
)]
pub struct Cli {
    /// An extra configuration file, layered over the config directory.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory holding default.toml and {STATUSD_ENV}.toml.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "STATUSD_CONFIG_DIR",
        default_value = "config"
    )]
    pub config_dir: PathBuf,
    /// Overrides database.url (sqlite://FILE or postgres://…).
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// Log line format (logs go to stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `statusd=debug,sqlx=warn`. Default: RUST_LOG,
    /// else `info` for run/sim/demo and `warn` for the other commands.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the database migrations.
    #[command(after_help = "Example:\n  statusd --database-url sqlite://statusd.db migrate")]
    Migrate,
    /// Add a status to the outbox.
    #[command(after_help = "Examples:\n  \
        statusd enqueue --instance main --text \"Open until 8 pm today\" --background-color '#25D366' --font 1\n  \
        statusd enqueue --instance main --image https://cdn.example.com/menu.jpg --caption \"Today's menu\" --dedupe-key menu-2024-06-01\n  \
        statusd enqueue --instance main --kind text --payload '{\"text\":\"hi\"}' --not-before 2024-06-01T08:00:00Z")]
    Enqueue(EnqueueArgs),
    /// List statuses, newest first.
    #[command(
        after_help = "Example:\n  statusd ls --state in_doubt --instance main --since 2h --limit 20"
    )]
    Ls(LsArgs),
    /// Show one status and its attempt history.
    #[command(after_help = "Example:\n  statusd show menu-2024-06-01\n  \
        (ID is the row's UUID, its WhatsApp message id or its dedupe key)")]
    Show(ShowArgs),
    /// Counts per instance and state, and the age of the oldest waiting row.
    #[command(after_help = "Example:\n  statusd stats --json")]
    Stats(JsonFlag),
    /// Send a failed, cancelled, invalid or parked status again.
    #[command(
        after_help = "Examples:\n  statusd retry 0190a5d2-7c4e-7a30-9f1e-3b2d8c6e4f10\n  \
        statusd retry menu-2024-06-01 --force-resend   # in_doubt: re-post although it may be shown already"
    )]
    Retry(RetryArgs),
    /// Cancel a status that has not been posted.
    #[command(after_help = "Example:\n  statusd cancel menu-2024-06-01")]
    Cancel(IdArg),
    /// Take a posted status down at the provider (needs its instance configured).
    #[command(after_help = "Example:\n  statusd delete menu-2024-06-01")]
    Delete(IdArg),
    /// Recurring statuses.
    #[command(
        subcommand,
        after_help = "Example:\n  statusd schedule add --name morning --cron \"0 0 8 * * *\" --timezone Europe/Berlin --instance main --text \"Good morning\""
    )]
    Schedule(ScheduleCommand),
    /// Check or print the configuration.
    #[command(
        subcommand,
        after_help = "Example:\n  statusd --config prod.toml config check"
    )]
    Config(ConfigCommand),
    /// Run the daemon until SIGINT or SIGTERM.
    #[command(
        after_help = "Example:\n  STATUSD__INSTANCES__MAIN__ACCESS_TOKEN=… statusd --config-dir /etc/statusd run"
    )]
    Run,
    /// Ask the running daemon's /healthz, at admin.bind (a container's
    /// HEALTHCHECK: the runtime image has no curl).
    #[command(after_help = "Example:\n  statusd --config-dir /etc/statusd health")]
    Health,
    /// Serve the provider simulator on 127.0.0.1 (tests, demos, benchmarks).
    #[command(after_help = "Example:\n  statusd sim --port 9090 --demo-faults --seed 7")]
    Sim(SimArgs),
    /// Show exactly-once at work: SQLite, the simulator with faults, a table.
    #[command(after_help = "Example:\n  statusd demo --statuses 2000 --seed 42")]
    Demo(DemoArgs),
}

impl Command {
    /// Long-running commands say what they do at `info`; the one-shot
    /// operator commands keep stderr quiet unless something is wrong.
    fn default_log_level(&self) -> &'static str {
        match self {
            Command::Run | Command::Sim(_) => "info",
            // The demo's output is its progress bar and table; the faults it
            // survives would otherwise log a line each.
            _ => "warn",
        }
    }
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct IdArg {
    /// The row's UUID, WhatsApp message id or dedupe key.
    pub id: String,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("content").required(true).multiple(false)
    .args(["text", "image", "video", "voice", "kind"])))]
pub struct EnqueueArgs {
    /// Configured instance to post with.
    #[arg(long)]
    pub instance: String,
    /// A text status.
    #[arg(long)]
    pub text: Option<String>,
    /// An image status: https URL of the file.
    #[arg(long, value_name = "URL")]
    pub image: Option<String>,
    /// A video status: https URL of the file.
    #[arg(long, value_name = "URL")]
    pub video: Option<String>,
    /// A voice status: https URL of the file.
    #[arg(long, value_name = "URL")]
    pub voice: Option<String>,
    /// Any kind with a raw JSON payload (see the outbox table's documentation).
    #[arg(long, requires = "payload", value_name = "KIND")]
    pub kind: Option<String>,
    /// The JSON payload for --kind.
    #[arg(long, requires = "kind", value_name = "JSON")]
    pub payload: Option<String>,
    /// Background colour of a text or voice status.
    #[arg(long, value_name = "#RRGGBB", conflicts_with_all = ["image", "video", "kind"])]
    pub background_color: Option<String>,
    /// Font of a text status, 0 to 5.
    #[arg(long, value_name = "N", conflicts_with_all = ["image", "video", "voice", "kind"])]
    pub font: Option<u8>,
    /// Caption of an image or video status.
    #[arg(long, conflicts_with_all = ["text", "voice", "kind"])]
    pub caption: Option<String>,
    /// MIME type of the file; guessed from the URL's extension if absent.
    #[arg(long, conflicts_with_all = ["text", "kind"])]
    pub mimetype: Option<String>,
    /// Show only to this contact (repeatable); default: all contacts.
    #[arg(long = "contact", value_name = "NUMBER", conflicts_with = "kind")]
    pub contacts: Vec<String>,
    /// Idempotency key: enqueuing the same key again does nothing.
    #[arg(long)]
    pub dedupe_key: Option<String>,
    /// Higher is sent first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Do not post before this time (RFC 3339, e.g. 2024-06-01T08:00:00+02:00).
    #[arg(long, value_name = "TIME", value_parser = parse_rfc3339)]
    pub not_before: Option<chrono::DateTime<chrono::Utc>>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only rows in this state.
    #[arg(long, value_parser = parse_state)]
    pub state: Option<State>,
    /// Only rows of this instance.
    #[arg(long)]
    pub instance: Option<String>,
    /// Only rows created since: a duration ago (30m, 1h, 2d, 1w) or an RFC 3339 time.
    #[arg(long, value_parser = Since::parse)]
    pub since: Option<Since>,
    /// At most this many rows.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..))]
    pub limit: i64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The row's UUID, WhatsApp message id or dedupe key.
    pub id: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The row's UUID, WhatsApp message id or dedupe key.
    pub id: String,
    /// For an `in_doubt` row: post it again with the same id although it may
    /// already be shown (only when the provider cannot tell).
    #[arg(long)]
    pub force_resend: bool,
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Add a recurring status.
    #[command(after_help = "Examples:\n  \
        statusd schedule add --name morning --cron \"0 0 8 * * *\" --timezone Europe/Berlin --instance main --text \"Good morning\"\n  \
        statusd schedule add --name menu --cron \"0 30 11 * * Mon-Fri\" --instance main --kind image --payload '{\"file\":{\"url\":\"https://cdn.example.com/menu.jpg\",\"mimetype\":\"image/jpeg\"}}'")]
    Add(ScheduleAddArgs),
    /// List the schedules.
    #[command(after_help = "Example:\n  statusd schedule ls --json")]
    Ls(JsonFlag),
    /// Remove a schedule by name (or id).
    #[command(after_help = "Example:\n  statusd schedule rm morning")]
    Rm(ScheduleRmArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("content").required(true).multiple(false)
    .args(["text", "kind"])))]
pub struct ScheduleAddArgs {
    /// Unique name of the schedule.
    #[arg(long)]
    pub name: String,
    /// Cron expression with seconds: sec min hour day-of-month month day-of-week.
    #[arg(long)]
    pub cron: String,
    /// IANA time zone the cron expression is read in.
    #[arg(long, default_value = "UTC")]
    pub timezone: String,
    /// Configured instance to post with.
    #[arg(long)]
    pub instance: String,
    /// A text status.
    #[arg(long)]
    pub text: Option<String>,
    /// Any kind with a raw JSON payload.
    #[arg(long, requires = "payload")]
    pub kind: Option<String>,
    /// The JSON payload for --kind.
    #[arg(long, requires = "kind", value_name = "JSON")]
    pub payload: Option<String>,
    /// Add it disabled.
    #[arg(long)]
    pub disabled: bool,
}

#[derive(Debug, Args)]
pub struct ScheduleRmArgs {
    /// The schedule's name or id.
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load the configuration and report every problem with its key.
    #[command(after_help = "Example:\n  statusd --config-dir /etc/statusd config check")]
    Check,
    /// Print the effective configuration, secrets redacted.
    #[command(after_help = "Example:\n  STATUSD_ENV=production statusd config show")]
    Show,
}

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 9090)]
    pub port: u16,
    /// Address to listen on. Loopback by default: the simulator's /_sim
    /// endpoints have no authentication (0.0.0.0 only inside a container).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: std::net::IpAddr,
    /// Simulator knobs (TOML or JSON, fields of SimConfig). The global
    /// --config is the daemon's configuration and is not read by `sim`.
    #[arg(long, value_name = "FILE")]
    pub sim_config: Option<PathBuf>,
    /// Start from the demo's fault mix.
    #[arg(long, conflicts_with = "sim_config")]
    pub demo_faults: bool,
    /// Seed for the fault draws.
    #[arg(long)]
    pub seed: Option<u64>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many statuses to enqueue.
    #[arg(long, default_value_t = 3000)]
    pub statuses: usize,
    /// Seed for the simulator's faults.
    #[arg(long)]
    pub seed: Option<u64>,
}

fn parse_state(s: &str) -> Result<State, String> {
    s.parse()
}

fn parse_rfc3339(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("`{s}` is not an RFC 3339 time like 2024-06-01T08:00:00Z ({e})"))
}

/// Entry point of the `statusd` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report_error(&e);
            ExitCode::FAILURE
        }
    }
}

/// One line per cause. Causes whose text the previous line already contains
/// are skipped: `thiserror` wrappers often print their source too.
fn report_error(e: &anyhow::Error) {
    let mut lines: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if lines.last().is_some_and(|prev| prev.contains(&text)) {
            continue;
        }
        lines.push(text);
    }
    let mut err = std::io::stderr().lock();
    for (i, line) in lines.iter().enumerate() {
        let prefix = if i == 0 { "error: " } else { "  caused by: " };
        // A multi-line cause (a list of config problems) keeps its lines.
        let _ = writeln!(err, "{prefix}{line}");
    }
}

fn init_tracing(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let filter = match &cli.log_level {
        Some(level) => EnvFilter::try_new(level).unwrap_or_else(|e| {
            eprintln!("warning: --log-level `{level}` is not a valid filter ({e}); using `info`");
            EnvFilter::new("info")
        }),
        None => EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new(cli.command.default_log_level())),
    };
    // sqlx logs every connect parameter it does not know with its value
    // (`sslpassword=…` from a libpq-style URL) at WARN: keep that target
    // to errors so a database password never reaches the log.
    let filter = match "sqlx_postgres::options::parse=error".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a person at a terminal, not for log files.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests calling `run` twice) is harmless: keep the first.
    let _ = match cli.log_format {
        LogFormat::Text => builder.fmt_fields(escaped_fields()).try_init(),
        // JSON escapes control characters itself.
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Text-log fields with every control character escaped: values come from
/// rows, requests and provider bodies, and a newline or an ANSI escape in
/// one of them must not forge a log line or repaint the operator's terminal.
fn escaped_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let raw = format!("{value:?}");
        let text = escape_controls(&raw);
        if field.name() == "message" {
            write!(w, "{text}")
        } else {
            write!(w, "{field}={text}")
        }
    })
    .delimited(" ")
}

/// `a\nb` for a newline, `\u{1b}` for ESC: printable text is left alone.
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().collect::<String>()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let source = ConfigSource {
        dir: Some(cli.config_dir.clone()),
        file: cli.config.clone(),
        overrides: cli
            .database_url
            .iter()
            .map(|u| ("database.url".to_string(), u.clone()))
            .collect(),
    };
    match cli.command {
        Command::Config(ConfigCommand::Check) => configuration::check(&source),
        Command::Config(ConfigCommand::Show) => configuration::show(&source),
        Command::Run => run_daemon(&source).await,
        Command::Health => health(&source).await,
        Command::Sim(args) => run_sim(args, cli.config.is_some()).await,
        // The demo takes its database from the global --database-url only
        // (a sqlite:// URL; default a fresh file): one flag, not two.
        Command::Demo(args) => crate::demo::run(crate::demo::DemoOptions {
            statuses: args.statuses,
            database: cli.database_url.clone(),
            seed: args.seed,
        })
        .await
        .context("the demo failed"),
        cmd => {
            let settings = operator_settings(&source)?;
            let result = match connect(&settings, false).await? {
                StoreHandle::Sqlite(s) => dispatch(s, cmd, &settings).await,
                StoreHandle::Postgres(s) => dispatch(s, cmd, &settings).await,
            };
            result.map_err(hint_unmigrated)
        }
    }
}

/// The commonest first-run mistake gets a next step, not just SQL jargon.
fn hint_unmigrated(e: anyhow::Error) -> anyhow::Error {
    let text = format!("{e:#}");
    let missing_table = text.contains("no such table")
        || (text.contains("relation") && text.contains("does not exist"));
    if missing_table {
        e.context("the database has no statusd tables: run `statusd migrate` first")
    } else {
        e
    }
}

/// Settings for the operator commands: they need a valid `database` section
/// only. Other problems (no instances yet, a bad daemon knob) do not stop an
/// operator from looking at the outbox; `config check` reports them.
fn operator_settings(source: &ConfigSource) -> anyhow::Result<Settings> {
    let (settings, problems) =
        Settings::load_report(source).map_err(|e| config_error(e, source))?;
    let in_database = |key: &str| key == "database" || key.starts_with("database.");
    if problems.iter().any(|p| in_database(&p.key)) {
        // The where-was-configuration-looked-for hint stays with them.
        let problems = problems
            .into_iter()
            .filter(|p| in_database(&p.key) || p.key == CONFIG_DIR_KEY)
            .collect();
        return Err(config_error(ConfigError::Invalid(problems), source));
    }
    Ok(settings)
}

fn config_error(e: ConfigError, source: &ConfigSource) -> anyhow::Error {
    anyhow::Error::new(e).context(format!(
        "configuration from {} (run `statusd config check`)",
        crate::config::describe_source(source)
    ))
}

/// The store picked once from the URL scheme; callers match on it and hand
/// the concrete store to generic code (no `dyn`).
enum StoreHandle {
    Sqlite(SqliteStore),
    Postgres(Timed<PgStore>),
}

/// Connects to the backend named by `database.url`. Every error names the
/// URL with its passwords redacted, and the driver's own message is
/// scrubbed of them too (a driver may quote the URL or a parameter).
async fn connect(settings: &Settings, wait_for_db: bool) -> anyhow::Result<StoreHandle> {
    let url = settings.database.url.expose_secret();
    let shown = redact_url(url);
    let scrub = |what: &str, e: anyhow::Error| {
        anyhow::anyhow!("{}", redact_url_secrets_in(&format!("{e:#}"), url))
            .context(format!("{what} {shown}"))
    };
    let backend = Backend::from_url(url)?;
    let max = settings.database.max_connections;
    let store = match backend {
        Backend::Sqlite => StoreHandle::Sqlite(
            SqliteStore::connect(url, max)
                .await
                .map_err(|e| scrub("cannot open the database at", e.into()))?,
        ),
        Backend::Postgres => {
            if !wait_for_db {
                probe_postgres(url)
                    .await
                    .map_err(|e| scrub("cannot connect to the database at", e))?;
            }
            StoreHandle::Postgres(Timed::new(
                PgStore::connect(url, max)
                    .await
                    .map_err(|e| scrub("cannot connect to the database at", e.into()))?,
                settings.database.call_timeout(),
            ))
        }
    };
    Ok(store)
}

/// The pool retries refused connections until its acquire timeout and then
/// reports only "pool timed out". A one-shot operator command should fail
/// fast with the real cause instead; `run` keeps the pool's patience, so a
/// daemon started alongside its database waits for it.
async fn probe_postgres(url: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let probe = sqlx::PgConnection::connect(url);
    match tokio::time::timeout(std::time::Duration::from_secs(10), probe).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(e.into()),
        Err(_) => anyhow::bail!("no answer within 10 s"),
    }
}

/// The operator commands, written once for every backend.
pub async fn dispatch<S: Store>(store: S, cmd: Command, settings: &Settings) -> anyhow::Result<()> {
    let out = match cmd {
        Command::Migrate => outbox::migrate(&store, settings).await?,
        Command::Enqueue(a) => outbox::enqueue(&store, a, settings).await?,
        Command::Ls(a) => outbox::ls(&store, a).await?,
        Command::Show(a) => outbox::show(&store, a).await?,
        Command::Stats(a) => outbox::stats(&store, a.json).await?,
        Command::Retry(a) => outbox::retry(&store, a).await?,
        Command::Cancel(a) => outbox::cancel(&store, &a.id).await?,
        Command::Delete(a) => outbox::delete(&store, &a.id, settings).await?,
        Command::Schedule(ScheduleCommand::Add(a)) => schedule::add(&store, a, settings).await?,
        Command::Schedule(ScheduleCommand::Ls(a)) => schedule::ls(&store, a.json).await?,
        Command::Schedule(ScheduleCommand::Rm(a)) => schedule::rm(&store, &a.name).await?,
        Command::Config(_)
        | Command::Run
        | Command::Health
        | Command::Sim(_)
        | Command::Demo(_) => {
            anyhow::bail!("internal: not an operator command")
        }
    };
    print_out(&out)
}

/// Writes a command's output; a closed pipe (`statusd ls | head`) is not an
/// error.
fn print_out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    // Every output ends its last line, so the shell prompt starts on a new one.
    let newline: &[u8] = if text.is_empty() || text.ends_with('\n') {
        b""
    } else {
        b"\n"
    };
    match stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.write_all(newline))
        .and_then(|_| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

/// `statusd run`: full settings (instances required), migrations, then the
/// daemon until SIGINT/SIGTERM.
async fn run_daemon(source: &ConfigSource) -> anyhow::Result<()> {
    let settings = Settings::load(source).map_err(|e| config_error(e, source))?;
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;
    match connect(&settings, true).await? {
        StoreHandle::Sqlite(s) => start_daemon(s, settings, shutdown).await,
        StoreHandle::Postgres(s) => start_daemon(s, settings, shutdown).await,
    }
}

async fn start_daemon<S: Store>(
    store: S,
    settings: Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    store
        .migrate()
        .await
        .context("applying the database migrations")?;
    crate::app::run(store, settings, shutdown).await
}

/// `statusd health`: GET /healthz on the configured admin address; an
/// address bound to every interface is asked on loopback.
async fn health(source: &ConfigSource) -> anyhow::Result<()> {
    let (settings, _) = Settings::load_report(source).map_err(|e| config_error(e, source))?;
    if !settings.admin.enabled {
        anyhow::bail!("admin.enabled is false: the daemon serves no /healthz to ask");
    }
    let mut addr: std::net::SocketAddr = settings.admin.bind.parse().with_context(|| {
        format!(
            "admin.bind `{}` is not an address like 127.0.0.1:8088",
            settings.admin.bind
        )
    })?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let url = format!("http://{addr}/healthz");
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .context("building the HTTP client")?;
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.without_url()))
        .with_context(|| format!("no answer from {url}"))?;
    if !resp.status().is_success() {
        anyhow::bail!("{url} answered {}", resp.status());
    }
    print_out(&format!("ok: {url}"))
}

/// First SIGINT/SIGTERM: graceful shutdown. Second: exit at once, which is
/// safe by design (in-flight rows are rescued and reconciled on restart).
fn spawn_signal_handler(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::spawn(async move {
        let mut seen = 0;
        loop {
            let name = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
            seen += 1;
            if seen == 1 {
                tracing::info!(signal = name, "shutting down; send it again to exit now");
                shutdown.cancel();
            } else {
                tracing::warn!(
                    signal = name,
                    "exiting now; in-flight rows will be reconciled"
                );
                std::process::exit(130);
            }
        }
    });
    Ok(())
}

/// `statusd sim`: the simulator on loopback until a signal.
async fn run_sim(args: SimArgs, global_config_given: bool) -> anyhow::Result<()> {
    use crate::sim::SimConfig;
    if global_config_given {
        anyhow::bail!(
            "statusd sim does not read the daemon's --config; give simulator knobs with --sim-config FILE"
        );
    }
    let mut cfg = match &args.sim_config {
        Some(path) => read_sim_config(path)?,
        None if args.demo_faults => SimConfig::with_demo_faults(),
        None => SimConfig::default(),
    };
    if args.seed.is_some() {
        cfg.seed = args.seed;
    }
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("simulator configuration: {e}"))?;
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;
    crate::sim::run_standalone(
        std::net::SocketAddr::new(args.bind, args.port),
        cfg,
        shutdown,
    )
    .await
    .with_context(|| format!("running the simulator on 127.0.0.1:{}", args.port))
}

fn read_sim_config(path: &std::path::Path) -> anyhow::Result<crate::sim::SimConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --sim-config {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    } else {
        config::Config::builder()
            .add_source(config::File::from_str(&text, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .with_context(|| format!("parsing {}", path.display()))
    }
}
