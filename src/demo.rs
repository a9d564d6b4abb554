//! `statusd demo` (DESIGN.md §8): an embedded SQLite file, the simulator
//! in-process with faults switched on, a few thousand statuses, the daemon
//! draining them, and a table whose duplicates and lost counts come from
//! the simulator (what viewers saw), not from the daemon.
//!
//! The workload runs once per engine the simulator plays (Wawp, NOWEB,
//! GOWS, WEBJS: issue 12 §6), each on a fresh database and simulator, and
//! the table has a row per engine: each engine honours ids, answers and
//! lists differently, and exactly-once must hold against every one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::app::wawp_instances;
use crate::config::{with_defaults, InstanceConfig, ProviderKind, Settings};
use crate::daemon::Daemon;
use crate::model::{State, StatusBody};
use crate::sim::{SimConfig, SimEngine, Simulator, WebhookKnobs, WebhookStats, WebhookTarget};
use crate::store::{EnqueueParams, SqliteStore, Store};
use crate::webhooks::processor::ProcessorConfig;
use crate::webhooks::Receiver;

with_defaults! {
    /// Options of `statusd demo`.
    #[derive(Debug, Clone)]
    pub struct DemoOptions {
        /// Statuses enqueued per engine.
        pub statuses: usize = 2000,
        /// `--database-url`, a `sqlite://` URL; default: a fresh file in the
        /// temp directory. With several engines, each run starts by emptying
        /// it (a fresh file per engine when none is given).
        pub database: Option<String> = None,
        pub seed: Option<u64> = None,
        /// The engines to run against, in order; empty means all four.
        pub engines: Vec<SimEngine> = Vec::new(),
        /// Share (0..=1) of the simulator's webhook events lost on the way:
        /// with 1 none arrives and look-ups settle every in-doubt row.
        pub webhook_loss: f64 = 0.0,
    }
}

/// What the demo measured against one engine.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub engine: SimEngine,
    pub enqueued: usize,
    pub posted_rows: usize,
    pub shown: usize,
    pub duplicates: u64,
    pub lost: usize,
    pub faults: Vec<(String, u64)>,
    pub reconciled: usize,
    /// Rows left `in_doubt` (parked for an operator) when the run ended.
    pub parked: usize,
    /// Look-up calls the simulator served (by id and listing pages).
    pub lookups: u64,
    pub elapsed: Duration,
    /// Webhook events, views recorded, in-doubt rows settled by an event
    /// and by a look-up.
    pub webhooks: WebhookFigures,
}

const INSTANCES: [&str; 3] = ["alpha", "beta", "gamma"];

/// The demo's workload: unique content, all four kinds.
pub fn demo_status(i: usize) -> EnqueueParams {
    let instance = INSTANCES[i % INSTANCES.len()];
    let (kind, payload) = match i % 10 {
        0..=5 => (
            "text",
            serde_json::json!({"text": format!("Daily special #{i}"), "backgroundColor": "#25D366", "font": (i % 6)}),
        ),
        6 | 7 => (
            "image",
            serde_json::json!({"file": {"url": format!("https://cdn.example.com/menu/{i}.jpg"), "mimetype": "image/jpeg"}, "caption": format!("Menu {i}")}),
        ),
        8 => (
            "video",
            serde_json::json!({"file": {"url": format!("https://cdn.example.com/clips/{i}.mp4"), "mimetype": "video/mp4"}, "caption": format!("Clip {i}")}),
        ),
        _ => (
            "voice",
            serde_json::json!({"file": {"url": format!("https://cdn.example.com/voice/{i}.opus"), "mimetype": "audio/ogg; codecs=opus"}}),
        ),
    };
    EnqueueParams {
        instance: instance.into(),
        kind: kind.into(),
        payload: payload.to_string(),
        dedupe_key: Some(format!("demo-{i}")),
        ..Default::default()
    }
}

pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&opts.webhook_loss) {
        anyhow::bail!(
            "--webhook-loss: {} is not a share between 0 and 1",
            opts.webhook_loss
        );
    }
    let mut reports = Vec::new();
    for engine in engines_of(&opts) {
        if opts.database.is_none() {
            eprintln!("engine {engine}:");
        }
        reports.push(execute(&opts, engine, true).await?);
    }
    print_reports(&reports);
    let bad: Vec<String> = reports
        .iter()
        .filter(|r| r.duplicates > 0 || r.lost > 0)
        .map(|r| format!("{}: {} duplicates, {} lost", r.engine, r.duplicates, r.lost))
        .collect();
    if !bad.is_empty() {
        anyhow::bail!("exactly-once violated: {}", bad.join("; "));
    }
    Ok(())
}

/// The engines a demo runs against: the ones asked for, or all four.
pub fn engines_of(opts: &DemoOptions) -> Vec<SimEngine> {
    if opts.engines.is_empty() {
        SimEngine::ALL.to_vec()
    } else {
        opts.engines.clone()
    }
}

/// The simulator's knobs for a demo run against `engine`: the demo's fault
/// mix, and the engine's own ways (ids, store, dropped listing items,
/// contacts' statuses, GOWS's engine errors on reads) at their defaults —
/// except NOWEB's message store, switched on as a NOWEB operator running
/// statusd must (without it NOWEB can neither look a status up nor list
/// them, and an in-doubt row can only be parked).
pub fn demo_sim_config(engine: SimEngine, seed: Option<u64>) -> SimConfig {
    SimConfig {
        engine,
        seed,
        message_store: (engine == SimEngine::Noweb).then_some(true),
        ..SimConfig::with_demo_faults()
    }
}

/// The API the demo's client speaks to an engine: Wawp's to Wawp, WAHA's
/// own (as self-hosting users run it) to WAHA's engines.
fn provider_of(engine: SimEngine) -> ProviderKind {
    match engine {
        SimEngine::Wawp => ProviderKind::Wawp,
        SimEngine::Noweb | SimEngine::Gows | SimEngine::Webjs => ProviderKind::Waha,
    }
}

/// Runs the demo's workload against one engine and returns its figures
/// (used by `run` and by the tests).
pub async fn execute(
    opts: &DemoOptions,
    engine: SimEngine,
    progress: bool,
) -> anyhow::Result<DemoReport> {
    let _tmp;
    let url = match &opts.database {
        Some(u) => u.clone(),
        None => {
            let dir =
                std::env::temp_dir().join(format!("statusd-demo-{}-{engine}", std::process::id()));
            std::fs::create_dir_all(&dir).context("creating the demo's directory")?;
            let path = dir.join("demo.db");
            let _ = std::fs::remove_file(&path);
            _tmp = TempDir(dir);
            format!("sqlite://{}", path.display())
        }
    };
    if !url.starts_with("sqlite:") {
        anyhow::bail!("--database-url: the demo runs on SQLite; give a sqlite:// URL");
    }
    let store = SqliteStore::connect(&url, 8)
        .await
        .context("opening the demo database")?;
    store
        .migrate()
        .await
        .context("migrating the demo database")?;

    // Instance names carry the engine, so that runs against several
    // engines in one given database never touch each other's rows.
    let instance = |name: &str| format!("{engine}-{name}");
    let names: Vec<String> = INSTANCES.iter().map(|n| instance(n)).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    // The webhook receiver and processor (signed events, views, in-doubt
    // rows confirmed by events); the simulator sends each instance's
    // events there, losing `--webhook-loss` of them, duplicating, delaying
    // and so reordering some.
    let hooks_stop = CancellationToken::new();
    let _hooks_guard = hooks_stop.clone().drop_guard();
    let knobs = demo_webhooks(&store, &name_refs, opts.webhook_loss, hooks_stop.clone())
        .await
        .context("starting the demo's webhook receiver")?;
    let sim = Simulator::start(
        "127.0.0.1:0".parse()?,
        SimConfig {
            webhooks: Some(knobs),
            ..demo_sim_config(engine, opts.seed)
        },
    )
    .await?;
    let mut settings = Settings::for_database(&url);
    for name in INSTANCES {
        settings.instances.insert(
            instance(name),
            InstanceConfig {
                provider: provider_of(engine),
                base_url: sim.base_url(),
                // `demo_webhooks` sends `demo-NAME`'s events to `NAME`.
                instance_id: format!("demo-{}", instance(name)),
                access_token: Some(format!("demo-token-{name}").into()),
                access_token_file: None,
                supplied_id: true,
                rate_per_sec: 5_000,
                burst: 500,
                max_in_flight: 64,
                ..Default::default()
            },
        );
    }
    // Timings for a short run: the simulator's hangs (1.5 s) outlast the
    // 500 ms request timeout, so they really are unknown outcomes.
    settings.provider.request_timeout_ms = 500;
    let d = &mut settings.daemon;
    d.concurrency = 64;
    d.lease_secs = 5;
    d.poll_interval_ms = 50;
    d.retry_base_ms = 50;
    d.retry_max_ms = 1_000;
    d.settle_delay_ms = 300;
    d.reconcile_interval_ms = 200;
    d.rescue_interval_ms = 500;
    d.shutdown_grace_secs = 5;

    let batch: Vec<EnqueueParams> = (0..opts.statuses)
        .map(|i| {
            let mut p = demo_status(i);
            p.instance = instance(&p.instance);
            p.dedupe_key = Some(format!("demo-{engine}-{i}"));
            p
        })
        .collect();
    let ours: std::collections::HashSet<String> = INSTANCES.iter().map(|n| instance(n)).collect();
    for chunk in batch.chunks(1000) {
        store.enqueue_many(chunk).await?;
    }
    let started = Instant::now();
    let daemon = Daemon::new(
        store.clone(),
        wawp_instances(&settings)?,
        settings.daemon.clone(),
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(daemon.run(shutdown.clone()));

    let bar = if progress {
        let b = ProgressBar::new(opts.statuses as u64);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} posted  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let deadline = started + Duration::from_secs(300);
    loop {
        let sum = store.summary().await?;
        let count = |st: State| {
            sum.iter()
                .filter(|r| r.state == st && ours.contains(&r.instance))
                .map(|r| r.count)
                .sum::<i64>()
        };
        let in_doubt = count(State::InDoubt);
        // Parked rows wait for an operator: the run is over without them.
        let parked = if in_doubt > 0 {
            parked_rows(&store)
                .await?
                .iter()
                .filter(|r| ours.contains(&r.instance))
                .count() as i64
        } else {
            0
        };
        let live =
            count(State::Queued) + count(State::PendingUpload) + count(State::Uploading) + in_doubt
                - parked;
        bar.set_position(count(State::Posted) as u64);
        bar.set_message(format!(
            "in doubt {in_doubt} (parked {parked})  retrying {}",
            count(State::PendingUpload)
        ));
        if live <= 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    shutdown.cancel();
    task.await??;

    // The oracle: the simulator's record of what viewers saw.
    let stats = sim.stats();
    let shown: HashMap<(String, String), usize> =
        sim.posted().into_iter().fold(HashMap::new(), |mut m, p| {
            *m.entry((p.instance, p.fingerprint)).or_default() += 1;
            m
        });
    let mut lost = 0;
    let mut posted_rows = 0;
    let mut reconciled = 0;
    let mut parked = 0;
    let mut rows = Vec::new();
    for name in INSTANCES {
        rows.extend(
            store
                .list(crate::store::ListParams {
                    instance: Some(instance(name)),
                    limit: opts.statuses as i64 + 10,
                    ..Default::default()
                })
                .await?,
        );
    }
    for r in &rows {
        let body = StatusBody::parse(&r.kind, &r.payload)?;
        let inst = format!("demo-{}", r.instance);
        let is_parked = r.state == State::InDoubt && r.parked_at.is_some();
        if is_parked {
            parked += 1;
        } else if !shown.contains_key(&(inst, body.fingerprint())) {
            // Not shown, and not set aside for an operator either.
            lost += 1;
        }
        if r.state == State::Posted {
            posted_rows += 1;
        }
        if store
            .attempts(r.id)
            .await?
            .iter()
            .any(|a| a.outcome == "in_doubt")
        {
            reconciled += 1;
        }
    }
    lost += opts.statuses.saturating_sub(rows.len());
    // Rows are re-read after the events still on their way have landed
    // (their message ids, views and confirmations).
    let webhooks = webhook_figures(&store, &rows, || sim.webhook_stats()).await?;
    hooks_stop.cancel();
    Ok(DemoReport {
        engine,
        enqueued: opts.statuses,
        posted_rows,
        shown: shown.len(),
        duplicates: stats.duplicates,
        lost,
        faults: stats.faults.into_iter().collect(),
        reconciled,
        parked,
        lookups: stats.lookups,
        elapsed,
        webhooks,
    })
}

/// The demo's table: a row per engine, then the faults survived.
pub fn print_reports(reports: &[DemoReport]) {
    println!("statusd demo: SQLite + in-process simulator with faults, per engine\n");
    println!(
        "  {:<7} {:>8} {:>8} {:>8} {:>10} {:>5} {:>7} {:>10} {:>8} {:>9} {:>6}",
        "engine",
        "enqueued",
        "posted",
        "shown",
        "duplicates",
        "lost",
        "parked",
        "reconciled",
        "look-ups",
        "status/s",
        "wall s"
    );
    for r in reports {
        let secs = r.elapsed.as_secs_f64().max(0.001);
        println!(
            "  {:<7} {:>8} {:>8} {:>8} {:>10} {:>5} {:>7} {:>10} {:>8} {:>9.0} {:>6.1}",
            r.engine.as_str(),
            r.enqueued,
            r.posted_rows,
            r.shown,
            r.duplicates,
            r.lost,
            r.parked,
            r.reconciled,
            r.lookups,
            r.enqueued as f64 / secs,
            secs
        );
    }
    println!(
        "\n  posted: rows the daemon marked posted; shown: distinct statuses viewers saw\n  \
         (the simulator's count); parked: in-doubt rows set aside for an operator\n  \
         because absence could not be proven; reconciled: rows that went through in_doubt."
    );
    let mut faults: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
    for (i, r) in reports.iter().enumerate() {
        for (k, n) in &r.faults {
            faults.entry(k).or_insert_with(|| vec![0; reports.len()])[i] = *n;
        }
    }
    println!("\n  webhooks (signed provider events; views and in-doubt rows settled):\n");
    println!(
        "  {:<7} {:>7} {:>6} {:>10} {:>7} {:>12} {:>12}",
        "engine", "events", "lost", "duplicated", "views", "by webhook", "by look-up"
    );
    for r in reports {
        let w = &r.webhooks;
        println!(
            "  {:<7} {:>7} {:>6} {:>10} {:>7} {:>12} {:>12}",
            r.engine.as_str(),
            w.sim.events,
            w.sim.lost,
            w.sim.duplicated,
            w.views,
            w.settled_by_webhook,
            w.settled_by_lookup
        );
    }
    println!(
        "\n  events: sent by the simulator (lost on the way, duplicated); views: viewers\n  \
         who opened a status, as recorded from the events; by webhook / by look-up:\n  \
         in-doubt rows settled by a provider event, or by looking the status up."
    );
    println!("\n  faults survived, by kind:");
    print!("    {:<24}", "");
    for r in reports {
        print!(" {:>8}", r.engine.as_str());
    }
    println!();
    for (k, ns) in faults {
        print!("    {k:<24}");
        for n in ns {
            print!(" {n:>8}");
        }
        println!();
    }
}

/// The in-doubt rows of the store that are parked for an operator.
async fn parked_rows(store: &SqliteStore) -> anyhow::Result<Vec<crate::model::OutboxRow>> {
    Ok(store
        .list(crate::store::ListParams {
            state: Some(State::InDoubt),
            limit: 100_000,
            ..Default::default()
        })
        .await?
        .into_iter()
        .filter(|r| r.parked_at.is_some())
        .collect())
}

/// Removes the demo's scratch directory when the demo ends.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The demo's webhook receiver: every demo instance (`NAME`, the simulator's
/// instance id `demo-NAME`) receives signed events on a port of its own;
/// returns the simulator's knobs that send them there, losing `loss` of
/// them, duplicating and delaying some.
async fn demo_webhooks<S: Store>(
    store: &S,
    instances: &[&str],
    loss: f64,
    shutdown: CancellationToken,
) -> anyhow::Result<WebhookKnobs> {
    let key = crate::wire::ids::local_message_id();
    let keys: Vec<(&str, &str)> = instances.iter().map(|n| (*n, key.as_str())).collect();
    let receiver = std::sync::Arc::new(Receiver::with_keys(
        &keys,
        crate::config::WebhookSettings::default(),
    ));
    let cfg = ProcessorConfig {
        batch_size: 500,
        fallback_poll: std::time::Duration::from_secs(1),
        linger: std::time::Duration::from_millis(100),
        retention: std::time::Duration::ZERO,
    };
    let addr = crate::app::serve_webhooks(
        store.clone(),
        receiver,
        cfg,
        "127.0.0.1:0".parse()?,
        shutdown,
    )
    .await?;
    Ok(WebhookKnobs {
        targets: instances
            .iter()
            .map(|n| {
                (
                    format!("demo-{n}"),
                    WebhookTarget {
                        url: format!("http://{addr}/v1/webhooks/{n}"),
                        hmac_key: key.clone(),
                    },
                )
            })
            .collect(),
        loss: loss.clamp(0.0, 1.0),
        duplicate: 0.05,
        delay_max_ms: 50,
        viewers: 4,
        view_share: 0.4,
    })
}

/// What the demo prints about webhooks.
#[derive(Debug, Clone, Default)]
pub struct WebhookFigures {
    pub sim: WebhookStats,
    /// Viewers who opened a status (level 3 or more), over the demo's rows.
    pub views: i64,
    /// In-doubt rows settled by a provider event, without a look-up.
    pub settled_by_webhook: usize,
    /// In-doubt rows settled by a look-up (posted or sent again).
    pub settled_by_lookup: usize,
}

/// The demo's webhook figures over its rows (`sim` reads the simulator's
/// event counts).
pub async fn webhook_figures<S: Store>(
    store: &S,
    rows: &[crate::model::OutboxRow],
    sim: impl Fn() -> WebhookStats,
) -> anyhow::Result<WebhookFigures> {
    // Events still on their way (the drain can outrun them) are waited for,
    // up to 10 s, so that the views counted are the views sent.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = sim();
        let due = s.events - s.lost + s.duplicated;
        if (s.delivered + s.failed >= due && store.webhook_backlog().await? == 0)
            || Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sim = sim();
    let ids: Vec<String> = rows
        .iter()
        .filter_map(|r| r.event_id().map(str::to_owned))
        .collect();
    let mut views = 0;
    for chunk in ids.chunks(500) {
        views += store
            .view_counts(chunk)
            .await?
            .values()
            .map(|c| c.viewed)
            .sum::<i64>();
    }
    let mut f = WebhookFigures {
        sim,
        views,
        ..WebhookFigures::default()
    };
    for r in rows {
        let history = store.attempts(r.id).await?;
        if !history
            .iter()
            .any(|a| a.outcome == crate::model::AttemptOutcome::InDoubt.as_str())
        {
            continue;
        }
        if history
            .iter()
            .any(|a| a.error.as_deref() == Some(crate::store::CONFIRMED_NOTE))
        {
            f.settled_by_webhook += 1;
        } else {
            f.settled_by_lookup += 1;
        }
    }
    Ok(f)
}

impl WebhookFigures {
    pub fn print(&self) {
        let s = &self.sim;
        println!("\n  webhooks (signed provider events):");
        println!(
            "    {:<32} {:>8}",
            "events sent / lost / duplicated",
            format!("{} / {} / {}", s.events, s.lost, s.duplicated)
        );
        println!("    {:<32} {:>8}", "views recorded", self.views);
        println!(
            "    {:<32} {:>8}",
            "in-doubt rows settled by webhook", self.settled_by_webhook
        );
        println!(
            "    {:<32} {:>8}",
            "in-doubt rows settled by look-up", self.settled_by_lookup
        );
    }
}
