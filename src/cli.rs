//! The operator's command line. The binary (`src/main.rs`) only calls
//! [`main`]; everything else lives here so that it is documented and tested
//! with the library.
//!
//! # Layout
//!
//! - this module: logging, loading the settings, opening the store
//!   ([`crate::store::connect`] picks the backend) and handing the concrete
//!   store to the generic [`dispatch`];
//! - `args`: the argument grammar (clap derive);
//! - `outbox`: `migrate`, `enqueue`, `ls`, `show`, `stats`, `retry`, `cancel`;
//! - `schedule`: `schedule add | ls | rm`;
//! - `instance`: `instance add | ls | set | rm | disable | enable`;
//! - `configuration`: `config check | show`;
//! - `table`: plain-text tables (one `Table::listing` for every `ls`), ages
//!   and `--since` durations;
//! - `views`, `capabilities`: `views`, `capabilities ls | set`;
//! - `webhook`: `webhook url | register` (the provider's events to statusd).
//!
//! Errors are `anyhow` with a `.context(…)` per step; [`main`] prints one line
//! per cause and exits non-zero. Usage errors exit 2 (clap's convention).

mod args;
mod capabilities;
mod configuration;
mod instance;
mod outbox;
mod schedule;
mod table;
mod views;
mod webhook;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, ConfigSource, Settings, CONFIG_DIR_KEY};
use crate::store::{connect, Connected, Patience, Store};

pub use crate::ops::Since;
pub use args::*;

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
            engines: args.engine,
            webhook_loss: args.webhook_loss,
        })
        .await
        .context("the demo failed"),
        // Needs the configuration only, not the database.
        // The configuration, and the database only for a table instance.
        Command::Webhook(WebhookCommand::Url(a)) => {
            let settings = operator_settings(&source)?;
            print_out(&webhook::url(&a.instance, &settings).await?)
        }
        Command::Webhook(WebhookCommand::Register(a)) => {
            let settings = operator_settings(&source)?;
            print_out(&webhook::register(&a, &settings).await?)
        }
        cmd => {
            let settings = operator_settings(&source)?;
            let store = connect(&settings.database, Patience::FailFast).await?;
            // The commonest first-run mistake gets a next step, not SQL jargon.
            if !matches!(cmd, Command::Migrate) {
                store.require_migrated().await?;
            }
            match store {
                Connected::Sqlite(s) => dispatch(s, cmd, &settings).await,
                Connected::Postgres(s) => dispatch(s, cmd, &settings).await,
            }
        }
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

/// The operator commands, written once for every backend.
pub async fn dispatch<S: Store>(store: S, cmd: Command, settings: &Settings) -> anyhow::Result<()> {
    let out = match cmd {
        Command::Migrate => outbox::migrate(&store, settings).await?,
        Command::Enqueue(a) => outbox::enqueue(&store, a, settings).await?,
        Command::Ls(a) => outbox::ls(&store, a).await?,
        Command::Show(a) => outbox::show(&store, a).await?,
        Command::Stats(a) if a.json => outbox::stats(&store, true).await?,
        Command::Stats(_) => {
            let mut out = outbox::stats(&store, false).await?;
            out += &capabilities::stats_section(&store, &settings.instance_names()).await?;
            out
        }
        Command::Capabilities(a) => match a.command {
            None => capabilities::ls(&store, &settings.instance_names(), a.json).await?,
            Some(CapabilitiesCommand::Ls(j)) => {
                capabilities::ls(&store, &settings.instance_names(), j.json || a.json).await?
            }
            Some(CapabilitiesCommand::Set(s)) => {
                capabilities::set(&store, s, &settings.instance_names()).await?
            }
        },
        Command::Retry(a) => outbox::retry(&store, a).await?,
        Command::Cancel(a) => outbox::cancel(&store, &a.ids).await?,
        Command::Confirm(a) => outbox::confirm(&store, &a.ids).await?,
        Command::Delete(a) => outbox::delete(&store, &a.id, settings).await?,
        Command::Schedule(ScheduleCommand::Add(a)) => schedule::add(&store, a, settings).await?,
        Command::Schedule(ScheduleCommand::Ls(a)) => schedule::ls(&store, a.json).await?,
        Command::Schedule(ScheduleCommand::Rm(a)) => schedule::rm(&store, &a.name).await?,
        Command::Instance(c) => instance::dispatch(&store, c, settings).await?,
        Command::Views(a) => views::views(&store, &a.id, a.json).await?,
        Command::Config(_)
        | Command::Run
        | Command::Health
        | Command::Sim(_)
        | Command::Webhook(_)
        | Command::Demo(_) => {
            anyhow::bail!("internal: not an operator command")
        }
    };
    print_out(&out)
}

/// Writes a command's output; a closed pipe (`statusd ls | head`) is not an
/// error.
pub(crate) fn print_out(text: &str) -> anyhow::Result<()> {
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
    match connect(&settings.database, Patience::Wait).await? {
        Connected::Sqlite(s) => start_daemon(s, settings, shutdown).await,
        Connected::Postgres(s) => start_daemon(s, settings, shutdown).await,
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
        .map_err(reqwest::Error::without_url)
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
    if let Some(engine) = args.engine {
        cfg.engine = engine;
    }
    cfg.validate().context("simulator configuration")?;
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
