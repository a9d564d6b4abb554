//! `statusd demo` (DESIGN.md §8): an embedded SQLite file, the simulator
//! in-process with faults switched on, a few thousand statuses, the daemon
//! draining them, and a table whose duplicates and lost counts come from
//! the simulator (what viewers saw), not from the daemon.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::app::wawp_instances;
use crate::config::{InstanceConfig, Settings};
use crate::daemon::Daemon;
use crate::model::{State, StatusBody};
use crate::sim::{SimConfig, Simulator};
use crate::store::{EnqueueParams, SqliteStore, Store};

/// Options of `statusd demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub statuses: usize,
    /// `--database-url`, a `sqlite://` URL; default: a fresh file in the
    /// temp directory.
    pub database: Option<String>,
    pub seed: Option<u64>,
}

/// What the demo measured.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub enqueued: usize,
    pub posted_rows: usize,
    pub shown: usize,
    pub duplicates: u64,
    pub lost: usize,
    pub faults: Vec<(String, u64)>,
    pub reconciled: usize,
    pub elapsed: Duration,
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
    let report = execute(&opts, true).await?;
    print_report(&report);
    if report.duplicates > 0 || report.lost > 0 {
        anyhow::bail!(
            "exactly-once violated: {} duplicates, {} lost",
            report.duplicates,
            report.lost
        );
    }
    Ok(())
}

/// Runs the demo and returns its figures (used by `run` and by the tests).
pub async fn execute(opts: &DemoOptions, progress: bool) -> anyhow::Result<DemoReport> {
    let _tmp;
    let url = match &opts.database {
        Some(u) => u.clone(),
        None => {
            let dir = std::env::temp_dir().join(format!("statusd-demo-{}", std::process::id()));
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

    let sim = Simulator::start(
        "127.0.0.1:0".parse()?,
        SimConfig {
            seed: opts.seed,
            ..SimConfig::with_demo_faults()
        },
    )
    .await?;
    let mut settings = Settings::for_database(&url);
    for name in INSTANCES {
        settings.instances.insert(
            name.into(),
            InstanceConfig {
                provider: Default::default(),
                base_url: sim.base_url(),
                instance_id: format!("demo-{name}"),
                access_token: Some(format!("demo-token-{name}").into()),
                access_token_file: None,
                supplied_id: true,
                rate_per_sec: 5_000,
                burst: 500,
                max_in_flight: 64,
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

    let batch: Vec<EnqueueParams> = (0..opts.statuses).map(demo_status).collect();
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
    let deadline = started + Duration::from_secs(600);
    loop {
        let sum = store.summary().await?;
        let count = |st: State| {
            sum.iter()
                .filter(|r| r.state == st)
                .map(|r| r.count)
                .sum::<i64>()
        };
        let live = count(State::Queued)
            + count(State::PendingUpload)
            + count(State::Uploading)
            + count(State::InDoubt);
        bar.set_position(count(State::Posted) as u64);
        bar.set_message(format!(
            "in doubt {}  retrying {}",
            count(State::InDoubt),
            count(State::PendingUpload)
        ));
        if live == 0 || Instant::now() > deadline {
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
    let rows = store
        .list(crate::store::ListParams {
            limit: opts.statuses as i64 + 10,
            ..Default::default()
        })
        .await?;
    for r in &rows {
        let body = StatusBody::parse(&r.kind, &r.payload)?;
        let inst = format!("demo-{}", r.instance);
        if !shown.contains_key(&(inst, body.fingerprint())) {
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
    Ok(DemoReport {
        enqueued: opts.statuses,
        posted_rows,
        shown: shown.len(),
        duplicates: stats.duplicates,
        lost,
        faults: stats.faults.into_iter().collect(),
        reconciled,
        elapsed,
    })
}

pub fn print_report(r: &DemoReport) {
    let secs = r.elapsed.as_secs_f64().max(0.001);
    println!("statusd demo: SQLite + in-process simulator with faults\n");
    println!("  {:<34} {:>8}", "statuses enqueued", r.enqueued);
    println!(
        "  {:<34} {:>8}",
        "rows posted (daemon's view)", r.posted_rows
    );
    println!(
        "  {:<34} {:>8}",
        "statuses shown (simulator's view)", r.shown
    );
    println!("  {:<34} {:>8}", "duplicates seen by viewers", r.duplicates);
    println!("  {:<34} {:>8}", "lost", r.lost);
    println!(
        "  {:<34} {:>8}",
        "rows reconciled after in-doubt", r.reconciled
    );
    println!(
        "  {:<34} {:>8.0}",
        "throughput (statuses/s)",
        r.enqueued as f64 / secs
    );
    println!("  {:<34} {:>8.1}", "wall time (s)", secs);
    println!("\n  faults survived, by kind:");
    for (k, n) in &r.faults {
        println!("    {k:<32} {n:>8}");
    }
}

/// Removes the demo's scratch directory when the demo ends.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
