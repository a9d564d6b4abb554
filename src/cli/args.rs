//! The argument grammar (clap derive): every command, flag and its help.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::model::State;
use crate::ops::Since;

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
        statusd retry menu-2024-06-01 --force-resend   # in_doubt: re-post although it may be shown already\n  \
        statusd ls --state failed --instance shop42 --json | jq -r '.[].id' | statusd retry -"
    )]
    Retry(RetryArgs),
    /// Cancel a status that has not been posted.
    #[command(after_help = "Examples:\n  statusd cancel menu-2024-06-01 menu-2024-06-02")]
    Cancel(KeysArg),
    /// Mark an in-doubt status posted: you saw it shown (a parked row the
    /// provider could not prove either way). Nothing is sent.
    #[command(
        after_help = "Example:\n  statusd confirm menu-2024-06-01   # seen on the phone: posted, never re-sent"
    )]
    Confirm(KeysArg),
    /// Take a posted status down at the provider (needs its instance configured).
    #[command(after_help = "Example:\n  statusd delete menu-2024-06-01")]
    Delete(IdArg),
    /// Recurring statuses.
    #[command(
        subcommand,
        after_help = "Example:\n  statusd schedule add --name morning --cron \"0 0 8 * * *\" --timezone Europe/Berlin --instance main --text \"Good morning\""
    )]
    Schedule(ScheduleCommand),
    /// Instances kept in the database, added and changed while daemons run.
    #[command(
        subcommand,
        after_help = "Example:\n  statusd instance add shop42 --instance-id 1A2B3C --token-env WAWP_SHOP42_TOKEN"
    )]
    Instance(super::instance::InstanceCommand),
    /// What each instance's provider does (honours supplied ids, look-up by
    /// id works, engine), as learned from evidence; set it by hand.
    #[command(after_help = "Examples:\n  statusd capabilities\n  \
        statusd capabilities set main --supplied-ids no --lookup-by-id unknown\n  \
        (until supplied ids are proven honoured, statusd behaves as if the provider assigned its own)")]
    Capabilities(CapabilitiesArgs),
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
    #[command(
        after_help = "Examples:\n  statusd sim --port 9090 --demo-faults --seed 7\n  statusd sim --port 9090 --engine noweb"
    )]
    Sim(SimArgs),
    /// Show exactly-once at work: SQLite, the simulator with faults, a table.
    #[command(
        after_help = "Examples:\n  statusd demo --statuses 2000 --seed 42\n  statusd demo --engine noweb --engine webjs"
    )]
    Demo(DemoArgs),
    /// Who viewed a status: counts by level and the viewers (from the
    /// provider's webhook events).
    #[command(after_help = "Example:\n  statusd views menu-2024-06-01 --json\n  \
        (ID is the row's UUID, its WhatsApp message id or its dedupe key)")]
    Views(ViewsArgs),
    /// Set up the provider's webhook events for an instance.
    #[command(subcommand, after_help = "Example:\n  statusd webhook url main")]
    Webhook(WebhookCommand),
}

#[derive(Debug, Args)]
pub struct ViewsArgs {
    /// Row id, message id or dedupe key.
    pub id: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Print the URL to give the provider, how to set the secret, and the
    /// WAHA session config snippet.
    #[command(after_help = "Example:\n  statusd webhook url main")]
    Url(WebhookUrlArgs),
    /// Add statusd's receiver to the WAHA session's webhooks (its config is
    /// read and only this webhook added or mended; WAHA restarts a running
    /// session to apply a changed config). Not for Wawp: set it in Wawp's
    /// dashboard.
    #[command(
        after_help = "Examples:\n  statusd webhook register main --dry-run\n  statusd webhook register main"
    )]
    Register(WebhookRegisterArgs),
}

#[derive(Debug, Args)]
pub struct WebhookRegisterArgs {
    /// The instance (of the configuration file or the instance table).
    pub instance: String,
    /// Print the session config it would write (keys redacted), and write
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct WebhookUrlArgs {
    /// The instance (of the configuration file or the instance table).
    pub instance: String,
}

impl Command {
    /// Long-running commands say what they do at `info`; the one-shot
    /// operator commands keep stderr quiet unless something is wrong.
    pub(crate) fn default_log_level(&self) -> &'static str {
        match self {
            Command::Run | Command::Sim(_) => "info",
            // The demo's output is its progress bar and table; the faults it
            // survives would otherwise log a line each.
            _ => "warn",
        }
    }
}

#[derive(Debug, Args)]
pub struct CapabilitiesArgs {
    #[command(subcommand)]
    pub command: Option<CapabilitiesCommand>,
    /// Print JSON instead of a table (for `ls`, the default).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum CapabilitiesCommand {
    /// List every instance's capabilities with their evidence.
    #[command(after_help = "Example:\n  statusd capabilities ls --json")]
    Ls(JsonFlag),
    /// Set an instance's capabilities (an operator's word replaces the
    /// learned one; evidence that ids are ignored still overrides a "yes").
    #[command(
        after_help = "Example:\n  statusd capabilities set main --supplied-ids yes --lookup-by-id yes --engine GOWS"
    )]
    Set(CapabilitiesSetArgs),
}

#[derive(Debug, Args)]
pub struct CapabilitiesSetArgs {
    /// The configured instance.
    pub instance: String,
    /// Does the provider post under the id we supply: yes, no or unknown.
    #[arg(long, value_name = "yes|no|unknown")]
    pub supplied_ids: Option<String>,
    /// Does a look-up by id find a posted status: yes, no or unknown.
    #[arg(long, value_name = "yes|no|unknown")]
    pub lookup_by_id: Option<String>,
    /// The engine (NOWEB, GOWS, WEBJS, …), for the record.
    #[arg(long)]
    pub engine: Option<String>,
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
pub struct KeysArg {
    /// The rows: UUIDs, WhatsApp message ids or dedupe keys; `-` reads
    /// them from standard input, one per line.
    #[arg(required = true, num_args = 1.., value_name = "ID")]
    pub ids: Vec<String>,
}

/// `--kind KIND --payload JSON`: a status of any kind as the outbox table
/// holds it (`enqueue` and `schedule add`).
#[derive(Debug, Args)]
pub struct RawStatusArgs {
    /// Any kind with a raw JSON payload (see the outbox table's documentation).
    #[arg(long, requires = "payload", value_name = "KIND")]
    pub kind: Option<String>,
    /// The JSON payload for --kind.
    #[arg(long, requires = "kind", value_name = "JSON")]
    pub payload: Option<String>,
}

impl RawStatusArgs {
    /// The kind and payload when both are given (clap requires them together).
    pub fn given(&self) -> Option<(String, String)> {
        self.kind.clone().zip(self.payload.clone())
    }
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
    #[command(flatten)]
    pub raw: RawStatusArgs,
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
    /// The rows: UUIDs, WhatsApp message ids or dedupe keys; `-` reads
    /// them from standard input, one per line.
    #[arg(required = true, num_args = 1.., value_name = "ID")]
    pub ids: Vec<String>,
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
    #[command(flatten)]
    pub raw: RawStatusArgs,
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
    /// The provider to play: wawp, noweb, gows or webjs (WAHA's engines).
    /// Overrides `engine` in --sim-config; the engine's defaults apply to
    /// the knobs the file leaves unset.
    #[arg(long, value_name = "ENGINE")]
    pub engine: Option<crate::sim::SimEngine>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many statuses to enqueue, per engine.
    #[arg(long, default_value_t = 2000)]
    pub statuses: usize,
    /// Run against this engine only (repeat for several): wawp, noweb,
    /// gows, webjs. Default: all four, one table row each.
    #[arg(long, value_name = "ENGINE")]
    pub engine: Vec<crate::sim::SimEngine>,
    /// Seed for the simulator's faults.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Share of the simulator's webhook events lost on the way, 0 to 1
    /// (with 1 none arrives: look-ups settle every in-doubt row).
    #[arg(long, value_name = "SHARE", default_value_t = 0.0, value_parser = parse_share)]
    pub webhook_loss: f64,
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a share between 0 and 1 (e.g. 0.2)")),
    }
}

fn parse_state(s: &str) -> Result<State, String> {
    s.parse()
}

fn parse_rfc3339(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("`{s}` is not an RFC 3339 time like 2024-06-01T08:00:00Z ({e})"))
}
