//! statusd's benchmark: throughput, latency and cost against the physical
//! limits (HTTP alone, SQL alone) and a peer (apalis), in one run, on this
//! machine, with the simulator at zero added latency on loopback.
//!
//! ```text
//! cargo run --release -p statusd-bench
//! ```
//!
//! Sizes can be lowered for a quick look: BENCH_BACKLOG (100000),
//! BENCH_RSS_ROWS (1000000), BENCH_SCALE_ROWS (5000000), BENCH_APALIS (20000),
//! and for fair scheduling (sections noisy, slow, tenants, replicas, cpu):
//! BENCH_NOISY_ROWS (1000), BENCH_SLOW_ROWS (200), BENCH_TENANTS (1000),
//! BENCH_REPLICA_ROWS (2000; the run with a SIGKILL: BENCH_REPLICA_KILL_ROWS,
//! 400), BENCH_CPU_ROWS (min(backlog, 50000)); BENCH_SIM_ENGINE (wawp, the
//! default, or noweb, gows, webjs) for the sections on a zero-latency simulator.
//! PostgreSQL: BENCH_PG (postgres://postgres@127.0.0.1:5432).

mod counting;
mod fairness;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use counting::Counting;
use statusd::app::wawp_instances;
use statusd::config::{IdSource, InstanceConfig, Settings};
use statusd::daemon::Daemon;
use statusd::model::{AttemptOutcome, State, StatusBody};
use statusd::provider::{OutgoingStatus, Provider, SendOutcome, WawpClient};
use statusd::sim::{SimConfig, SimHandle, Simulator};
use statusd::store::{
    ClaimParams, Completion, EnqueueParams, PgStore, SqliteStore, Store, Transition,
};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "bench-token";
const CONCURRENCY: usize = 64;
const POOL: u32 = 8;

fn env_n(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pg_base() -> String {
    std::env::var("BENCH_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A fresh database for one measurement.
enum Db {
    // The directory is held only to be removed when the database is dropped.
    Sqlite(#[allow(dead_code)] tempfile_dir::Dir, String),
    Pg(String, String),
}

mod tempfile_dir {
    /// A directory removed on drop (no extra crate for one directory).
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Db {
    async fn sqlite() -> anyhow::Result<Db> {
        let dir =
            std::env::temp_dir().join(format!("statusd-bench-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let url = format!("sqlite://{}", dir.join("bench.db").display());
        Ok(Db::Sqlite(tempfile_dir::Dir(dir), url))
    }
    async fn pg() -> anyhow::Result<Db> {
        use sqlx::Connection;
        let name = format!("statusd_bench_{}", uuid::Uuid::new_v4().simple());
        let mut c = sqlx::PgConnection::connect(&format!("{}/postgres", pg_base()))
            .await
            .context("PostgreSQL must run (see README)")?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut c)
            .await?;
        Ok(Db::Pg(format!("{}/{name}", pg_base()), name))
    }
    fn url(&self) -> &str {
        match self {
            Db::Sqlite(_, u) | Db::Pg(u, _) => u,
        }
    }
    fn label(&self) -> &'static str {
        match self {
            Db::Sqlite(..) => "SQLite",
            Db::Pg(..) => "PostgreSQL",
        }
    }
    async fn drop_pg(&self) {
        if let Db::Pg(_, name) = self {
            use sqlx::Connection;
            if let Ok(mut c) = sqlx::PgConnection::connect(&format!("{}/postgres", pg_base())).await
            {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut c)
                    .await;
            }
        }
    }
    /// Bulk SQL on the raw database (setup, not measured).
    async fn exec(&self, sql: &str) -> anyhow::Result<()> {
        use sqlx::Connection;
        match self {
            Db::Sqlite(_, u) => {
                let mut c = sqlx::SqliteConnection::connect(u).await?;
                sqlx::raw_sql(sql).execute(&mut c).await?;
            }
            Db::Pg(u, _) => {
                let mut c = sqlx::PgConnection::connect(u).await?;
                sqlx::raw_sql(sql).execute(&mut c).await?;
            }
        }
        Ok(())
    }
    /// `n` bad rows written straight into the table, as a buggy upstream app
    /// would: a text status's payload without its text. (Rows naming an
    /// unknown instance are judged on a slower path, a batch every 5 s, see
    /// `claim_strays`; they are not part of this drain.)
    async fn fill_bad(&self, n: usize) -> anyhow::Result<()> {
        self.exec(&match self {
            Db::Sqlite(..) => format!(
                "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {n})
                 INSERT INTO status_outbox (instance, kind, payload)
                 SELECT 'main', 'text', json_object('caption', 'bad ' || n) FROM g"
            ),
            Db::Pg(..) => format!(
                "INSERT INTO status_outbox (instance, kind, payload)
                 SELECT 'main', 'text', jsonb_build_object('caption', 'bad ' || g)
                 FROM generate_series(1, {n}) g"
            ),
        })
        .await
    }
    /// `n` queued text statuses with unique content, inserted in one statement.
    async fn fill_queued(&self, n: usize, tag: &str) -> anyhow::Result<()> {
        self.exec(&match self {
            Db::Sqlite(..) => format!(
                "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {n})
                 INSERT INTO status_outbox (instance, kind, payload)
                 SELECT 'main', 'text', json_object('text', '{tag} ' || n) FROM g"
            ),
            Db::Pg(..) => format!(
                "INSERT INTO status_outbox (instance, kind, payload)
                 SELECT 'main', 'text', jsonb_build_object('text', '{tag} ' || g) FROM generate_series(1, {n}) g"
            ),
        })
        .await
    }
}

fn settings_for(url: &str, sim: &SimHandle, id_source: IdSource) -> Settings {
    let mut s = Settings::for_database(url);
    s.database.max_connections = POOL;
    s.instances.insert(
        "main".into(),
        InstanceConfig {
            provider: Default::default(),
            base_url: sim.base_url(),
            instance_id: "main".into(),
            access_token: Some(TOKEN.to_string().into()),
            access_token_file: None,
            supplied_id: true,
            rate_per_sec: 1_000_000,
            burst: 1_000_000,
            max_in_flight: 2 * CONCURRENCY,
            ..Default::default()
        },
    );
    s.daemon.id_source = id_source;
    s.daemon.concurrency = CONCURRENCY;
    s.daemon.batch_size = 256;
    s.admin.enabled = false;
    s
}

struct Report {
    rows: Vec<(String, String)>,
}

impl Report {
    fn add(&mut self, what: impl Into<String>, value: impl Into<String>) {
        let (w, v) = (what.into(), value.into());
        println!("  {w:<62} {v}");
        self.rows.push((w, v));
    }
}

/// The simulator at zero latency, playing Wawp (which assigns its own ids)
/// or the engine named by BENCH_SIM_ENGINE (noweb, gows, webjs).
async fn sim() -> anyhow::Result<SimHandle> {
    let mut cfg = SimConfig::default();
    if let Ok(e) = std::env::var("BENCH_SIM_ENGINE") {
        cfg.engine = serde_json::from_value(serde_json::Value::String(e.clone()))
            .with_context(|| format!("BENCH_SIM_ENGINE={e}: give wawp, noweb, gows or webjs"))?;
    }
    Ok(Simulator::start("127.0.0.1:0".parse()?, cfg).await?)
}

/// Waits until the simulator has `n` statuses; returns the time it took.
async fn until_posted(
    sim: &SimHandle,
    n: u64,
    since: Instant,
    limit: Duration,
) -> anyhow::Result<Duration> {
    loop {
        if sim.stats().posted >= n {
            return Ok(since.elapsed());
        }
        if since.elapsed() > limit {
            anyhow::bail!("only {} of {n} posted after {limit:?}", sim.stats().posted);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// statusd draining a backlog of `n`: statuses per second, statements per status.
async fn drain<S: Store>(
    store: S,
    url: &str,
    id_source: IdSource,
    n: usize,
) -> anyhow::Result<(f64, f64)> {
    let sim = sim().await?;
    let settings = settings_for(url, &sim, id_source);
    let store = Counting::new(store);
    let daemon = Daemon::new(
        store.clone(),
        wawp_instances(&settings)?,
        settings.daemon.clone(),
    );
    let shutdown = CancellationToken::new();
    let t0 = Instant::now();
    let task = tokio::spawn(daemon.run(shutdown.clone()));
    let took = until_posted(&sim, n as u64, t0, Duration::from_secs(600)).await?;
    // Let the last outcomes land before counting statements.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stmts = store.statements();
    shutdown.cancel();
    task.await??;
    anyhow::ensure!(sim.stats().duplicates == 0, "duplicates in a benchmark run");
    Ok((n as f64 / took.as_secs_f64(), stmts as f64 / n as f64))
}

/// HTTP ceiling: the same client and concurrency, no database.
async fn http_ceiling(n: usize) -> anyhow::Result<f64> {
    let sim = sim().await?;
    let settings = settings_for("sqlite://unused", &sim, IdSource::Local);
    let client = Arc::new(
        WawpClient::new("main", &settings.instances["main"], &settings.provider)
            .map_err(anyhow::Error::msg)?,
    );
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, next) = (client.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let body = StatusBody::parse("text", &format!(r#"{{"text":"ceiling {i}"}}"#))
                    .expect("valid");
                let id = statusd::provider::ids::local_message_id();
                let out = client
                    .send_status(&OutgoingStatus {
                        message_id: &id,
                        body: &body,
                    })
                    .await;
                assert!(matches!(out, SendOutcome::Posted { .. }), "{out:?}");
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// Database ceiling: the bare claim-and-complete loop, no HTTP.
async fn db_ceiling<S: Store>(store: S, db: &Db, n: usize) -> anyhow::Result<f64> {
    db.fill_queued(n, "sql").await?;
    let q = store.queued(n as i64).await?;
    let ids: Vec<_> = q
        .iter()
        .map(|r| statusd::store::AssignId {
            id: r.id,
            message_id: statusd::provider::ids::local_message_id(),
        })
        .collect();
    for c in ids.chunks(10_000) {
        store.assign_message_ids(c).await?;
    }
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let rows = store
                    .claim(ClaimParams {
                        budgets: Vec::new(),
                        owner: format!("w{w}"),
                        limit: 256,
                        lease: Duration::from_secs(60),
                        skip_instances: vec![],
                        fresh_ids: vec![],
                    })
                    .await?;
                if rows.is_empty() {
                    return anyhow::Ok(());
                }
                let done: Vec<Completion> = rows
                    .iter()
                    .map(|r| {
                        let mut t = Transition::new(r.id, r.attempts, State::Posted);
                        t.provider_id = r.message_id.clone();
                        Completion {
                            transition: t,
                            started_at: chrono::Utc::now(),
                            latency: Duration::from_millis(1),
                            outcome: AttemptOutcome::Posted,
                        }
                    })
                    .collect();
                store.complete(&done).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// Pickup latency at a light steady load: insert committed → POST received.
async fn pickup<S: Store>(store: S, url: &str, count: usize) -> anyhow::Result<(f64, f64)> {
    let sim = sim().await?;
    let settings = settings_for(url, &sim, IdSource::Local);
    let daemon = Daemon::new(
        store.clone(),
        wawp_instances(&settings)?,
        settings.daemon.clone(),
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(daemon.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut committed = HashMap::new();
    for i in 0..count {
        let text = format!("pickup {i}");
        store
            .enqueue(EnqueueParams {
                instance: "main".into(),
                kind: "text".into(),
                payload: serde_json::json!({ "text": text }).to_string(),
                ..Default::default()
            })
            .await?;
        committed.insert(text, chrono::Utc::now());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until_posted(&sim, count as u64, Instant::now(), Duration::from_secs(60)).await?;
    shutdown.cancel();
    task.await??;
    let mut lat: Vec<f64> = sim
        .posted()
        .iter()
        .filter_map(|p| {
            let t = p.body.get("text")?.as_str()?;
            let c = committed.get(t)?;
            Some((p.posted_at - *c).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize].max(0.0);
    Ok((pct(0.50), pct(0.99)))
}

/// Statements per second of an idle daemon. `watch` counts statements the
/// store runs outside its methods (SQLite's `PRAGMA data_version` poller),
/// so that the figure includes the wake-up's own cost.
async fn idle_qps<S: Store>(
    store: S,
    url: &str,
    secs: u64,
    watch: impl Fn() -> u64,
) -> anyhow::Result<f64> {
    let sim = sim().await?;
    let settings = settings_for(url, &sim, IdSource::Local);
    let store = Counting::new(store);
    let daemon = Daemon::new(
        store.clone(),
        wawp_instances(&settings)?,
        settings.daemon.clone(),
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(daemon.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = store.statements() + watch();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let n = store.statements() + watch() - before;
    shutdown.cancel();
    task.await??;
    Ok(n as f64 / secs as f64)
}

/// apalis draining the same workload (one POST per job), same database and pool size.
async fn apalis_pg(url: &str, n: usize) -> anyhow::Result<f64> {
    use apalis::prelude::*;
    use apalis_sql::postgres::PostgresStorage;
    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    struct PostJob {
        text: String,
    }
    async fn handle(job: PostJob, client: Data<Arc<WawpClient>>) -> Result<(), Error> {
        let body = StatusBody::parse("text", &serde_json::json!({ "text": job.text }).to_string())
            .map_err(|e| Error::Failed(Arc::new(Box::new(e))))?;
        let id = statusd::provider::ids::local_message_id();
        match client
            .send_status(&OutgoingStatus {
                message_id: &id,
                body: &body,
            })
            .await
        {
            SendOutcome::Posted { .. } => Ok(()),
            other => Err(Error::Failed(Arc::new(format!("{other:?}").into()))),
        }
    }
    let sim = sim().await?;
    let settings = settings_for(url, &sim, IdSource::Local);
    let client = Arc::new(
        WawpClient::new("main", &settings.instances["main"], &settings.provider)
            .map_err(anyhow::Error::msg)?,
    );
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(POOL)
        .connect(url)
        .await?;
    PostgresStorage::setup(&pool).await?;
    // apalis's defaults fetch 10 jobs every 100 ms; give it the same batch
    // size as statusd and a short poll so the comparison is about design.
    let config = apalis_sql::Config::new("bench")
        .set_buffer_size(256)
        .set_poll_interval(Duration::from_millis(10));
    let storage: PostgresStorage<PostJob> = PostgresStorage::new_with_config(pool.clone(), config);
    let mut pushers = Vec::new();
    for k in 0..16 {
        let mut s = storage.clone();
        pushers.push(tokio::spawn(async move {
            for i in (k..n).step_by(16) {
                s.push(PostJob {
                    text: format!("apalis {i}"),
                })
                .await?;
            }
            anyhow::Ok(())
        }));
    }
    for p in pushers {
        p.await??;
    }
    let worker = WorkerBuilder::new("bench")
        .concurrency(CONCURRENCY)
        .data(client)
        .backend(storage)
        .build_fn(handle);
    let t0 = Instant::now();
    let run = tokio::spawn(async move { worker.run().await });
    let took = until_posted(&sim, n as u64, t0, Duration::from_secs(600)).await;
    run.abort();
    pool.close().await;
    Ok(n as f64 / took?.as_secs_f64())
}

/// Peak RSS of a daemon process draining `n` rows (this binary re-executed in
/// daemon mode, so the simulator's memory is not counted).
async fn peak_rss(n: usize) -> anyhow::Result<(f64, f64)> {
    let db = Db::pg().await?;
    let sim = sim().await?;
    let store = PgStore::connect(db.url(), 4).await?;
    store.migrate().await?;
    db.fill_queued(n, "rss").await?;
    let dir = std::env::temp_dir().join(format!("statusd-bench-rss-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("bench.toml");
    std::fs::write(
        &cfg,
        format!(
            "[database]\nurl = \"{}\"\nmax_connections = {POOL}\n[daemon]\nconcurrency = {CONCURRENCY}\nbatch_size = 256\n[admin]\nenabled = false\n[instances.main]\nbase_url = \"{}\"\ninstance_id = \"main\"\naccess_token = \"{TOKEN}\"\nrate_per_sec = 1000000\nburst = 1000000\n",
            db.url(),
            sim.base_url()
        ),
    )?;
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("--daemon-child")
        .arg(&cfg)
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("child pid")?;
    let took = until_posted(&sim, n as u64, t0, Duration::from_secs(1200)).await;
    let hwm = read_hwm(pid).unwrap_or(0.0);
    child.start_kill()?;
    let _ = child.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
    db.drop_pg().await;
    Ok((hwm, n as f64 / took?.as_secs_f64()))
}

fn read_hwm(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

async fn daemon_child(cfg: &Path) -> anyhow::Result<()> {
    let settings = Settings::load(&statusd::config::ConfigSource {
        dir: Some(PathBuf::from("/nonexistent")),
        file: Some(cfg.to_path_buf()),
        overrides: vec![],
    })?;
    if secrecy_url(&settings).starts_with("sqlite:") {
        let store = SqliteStore::connect(secrecy_url(&settings), POOL).await?;
        return statusd::app::run(store, settings, CancellationToken::new()).await;
    }
    let store = PgStore::connect(secrecy_url(&settings), POOL).await?;
    statusd::app::run(store, settings, CancellationToken::new()).await
}

fn secrecy_url(s: &Settings) -> &str {
    use secrecy::ExposeSecret;
    s.database.url.expose_secret()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--daemon-child") {
        return daemon_child(Path::new(args.get(2).context("config path")?)).await;
    }
    let backlog = env_n("BENCH_BACKLOG", 100_000);
    let rss_rows = env_n("BENCH_RSS_ROWS", 1_000_000);
    let scale_rows = env_n("BENCH_SCALE_ROWS", 5_000_000);
    let apalis_n = env_n("BENCH_APALIS", 20_000);
    // BENCH_SECTIONS=drain,pickup,... runs only those sections (quick looks).
    let sections = std::env::var("BENCH_SECTIONS").unwrap_or_default();
    let on = |name: &str| sections.is_empty() || sections.split(',').any(|s| s == name);
    let started = Instant::now();
    let mut r = Report { rows: Vec::new() };
    println!(
        "statusd benchmark — {} cores, backlog {backlog}, simulator at zero added latency on loopback, concurrency {CONCURRENCY}, pool {POOL}\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );

    let mut http = 0.0;
    if on("ceiling") || on("drain") {
        http = http_ceiling(backlog.min(50_000)).await?;
        r.add(
            "HTTP ceiling: client → simulator, no database (statuses/s)",
            format!("{http:.0}"),
        );
    }
    let mut ceilings = HashMap::new();
    for db in [Db::sqlite().await?, Db::pg().await?] {
        if !(on("ceiling") || on("drain")) {
            break;
        }
        let c = match &db {
            Db::Sqlite(_, u) => {
                let s = SqliteStore::connect(u, POOL).await?;
                s.migrate().await?;
                db_ceiling(s, &db, backlog.min(50_000)).await?
            }
            Db::Pg(u, _) => {
                let s = PgStore::connect(u, POOL).await?;
                s.migrate().await?;
                db_ceiling(s, &db, backlog.min(50_000)).await?
            }
        };
        r.add(
            format!(
                "SQL ceiling: claim + complete loop, {} (statuses/s)",
                db.label()
            ),
            format!("{c:.0}"),
        );
        ceilings.insert(db.label(), c);
        db.drop_pg().await;
    }

    let mut pg_rate = 0.0;
    for (label, id_source) in [("local", IdSource::Local), ("api", IdSource::Api)] {
        if !on("drain") {
            break;
        }
        for db in [Db::sqlite().await?, Db::pg().await?] {
            let (rate, stmts) = match &db {
                Db::Sqlite(_, u) => {
                    let s = SqliteStore::connect(u, POOL).await?;
                    s.migrate().await?;
                    db.fill_queued(backlog, "drain").await?;
                    drain(s, u, id_source, backlog).await?
                }
                Db::Pg(u, _) => {
                    let s = PgStore::connect(u, POOL).await?;
                    s.migrate().await?;
                    db.fill_queued(backlog, "drain").await?;
                    drain(s, u, id_source, backlog).await?
                }
            };
            let lower = http.min(ceilings[db.label()]);
            r.add(
                format!(
                    "statusd drain, {}, id_source={label} (statuses/s; share of lower ceiling)",
                    db.label()
                ),
                format!("{rate:.0}  ({:.0}%)", 100.0 * rate / lower),
            );
            if label == "local" {
                r.add(
                    format!(
                        "SQL statements per status, {} (1 enqueue + daemon's)",
                        db.label()
                    ),
                    format!("{:.2}", 1.0 + stmts),
                );
                if db.label() == "PostgreSQL" {
                    pg_rate = rate;
                }
            }
            db.drop_pg().await;
        }
    }

    if on("bad") || on("drain") {
        // The same drain with 1% bad rows mixed in: each must end `invalid`
        // without slowing the good ones.
        let db = Db::pg().await?;
        let s = PgStore::connect(db.url(), POOL).await?;
        s.migrate().await?;
        let bad = (backlog / 100).max(1);
        db.fill_queued(backlog / 2, "drain").await?;
        db.fill_bad(bad).await?;
        db.fill_queued(backlog - backlog / 2, "late").await?;
        let (rate, _) = drain(s.clone(), db.url(), IdSource::Local, backlog).await?;
        let invalid = s
            .summary()
            .await?
            .iter()
            .filter(|r| r.state == State::Invalid)
            .map(|r| r.count)
            .sum::<i64>();
        anyhow::ensure!(
            invalid == bad as i64,
            "{invalid} of {bad} bad rows ended invalid"
        );
        r.add(
            format!("statusd drain, PostgreSQL, with {bad} bad rows mixed in (good statuses/s)"),
            format!(
                "{rate:.0}  ({:.2} of the clean drain)",
                rate / pg_rate.max(1.0)
            ),
        );
        db.drop_pg().await;
    }

    if on("apalis") {
        let db = Db::pg().await?;
        let apalis = apalis_pg(db.url(), apalis_n).await?;
        db.drop_pg().await;
        r.add(
            format!("apalis 0.7 (apalis-sql), PostgreSQL, {apalis_n} jobs (jobs/s)"),
            format!("{apalis:.0}"),
        );
        r.add(
            "statusd / apalis on PostgreSQL",
            format!("{:.1}x", pg_rate / apalis),
        );
    }

    for db in [Db::sqlite().await?, Db::pg().await?] {
        if !on("pickup") {
            break;
        }
        let (p50, p99, qps) = match &db {
            Db::Sqlite(_, u) => {
                let s = SqliteStore::connect(u, POOL).await?;
                s.migrate().await?;
                let (a, b) = pickup(s.clone(), u, 200).await?;
                let watch = s.clone();
                (
                    a,
                    b,
                    idle_qps(s, u, 6, move || watch.wake_statements()).await?,
                )
            }
            Db::Pg(u, _) => {
                let s = PgStore::connect(u, POOL).await?;
                s.migrate().await?;
                let (a, b) = pickup(s.clone(), u, 200).await?;
                // LISTEN costs no statement while idle.
                (a, b, idle_qps(s, u, 6, || 0).await?)
            }
        };
        r.add(
            format!("pickup latency p50 / p99, {} (ms)", db.label()),
            format!("{p50:.1} / {p99:.1}"),
        );
        r.add(
            format!("SQL statements per second while idle, {}", db.label()),
            format!("{qps:.2}"),
        );
        db.drop_pg().await;
    }

    if scale_rows > 0 && on("scale") {
        let db = Db::pg().await?;
        let s = PgStore::connect(db.url(), POOL).await?;
        s.migrate().await?;
        // Enough rows for a steady rate; the 5M terminal rows are the point.
        let n = (backlog / 5).max(1000);
        db.fill_queued(n, "empty").await?;
        let (empty, _) = drain(s.clone(), db.url(), IdSource::Local, n).await?;
        // Two inserts side by side, one per core: the same 5M rows in about
        // half the time (setup, not measured).
        let fill = |from: usize, to: usize| {
            format!(
                "INSERT INTO status_outbox (instance, kind, payload, state, message_id, provider_id, posted_at)
                 SELECT 'main', 'text', jsonb_build_object('text', 'old ' || g), 'posted', 'OLD' || g, 'OLD' || g, now()
                 FROM generate_series({from}, {to}) g"
            )
        };
        let half = scale_rows / 2;
        let (first, second) = (fill(1, half), fill(half + 1, scale_rows));
        let (a, b) = tokio::join!(db.exec(&first), db.exec(&second));
        a?;
        b?;
        db.exec("ANALYZE status_outbox").await?;
        db.fill_queued(n, "full").await?;
        let (full, _) = drain(s, db.url(), IdSource::Local, n).await?;
        r.add(
            format!("throughput with {scale_rows} terminal rows / empty table, PostgreSQL"),
            format!("{:.2}  ({full:.0} vs {empty:.0}/s)", full / empty),
        );
        db.drop_pg().await;
    }

    if rss_rows > 0 && on("rss") {
        let (mib, rate) = peak_rss(rss_rows).await?;
        r.add(
            format!("peak RSS of `statusd run` draining {rss_rows} rows, PostgreSQL (MiB)"),
            format!("{mib:.1}  (at {rate:.0}/s)"),
        );
    }
    // Fair scheduling (issue 14).
    let noisy_rows = env_n("BENCH_NOISY_ROWS", 1_000);
    for db in [Db::sqlite().await?, Db::pg().await?] {
        if !on("noisy") {
            break;
        }
        match &db {
            Db::Sqlite(_, u) => {
                let s = SqliteStore::connect(u, POOL).await?;
                s.migrate().await?;
                fairness::noisy(s, &db, noisy_rows, &mut r).await?;
            }
            Db::Pg(u, _) => {
                let s = PgStore::connect(u, POOL).await?;
                s.migrate().await?;
                fairness::noisy(s, &db, noisy_rows, &mut r).await?;
            }
        }
        db.drop_pg().await;
    }
    if on("slow") {
        fairness::slow(env_n("BENCH_SLOW_ROWS", 200), &mut r).await?;
    }
    if on("tenants") {
        fairness::tenants(env_n("BENCH_TENANTS", 1_000), &mut r).await?;
    }
    if on("replicas") {
        fairness::replicas(
            env_n("BENCH_REPLICA_ROWS", 2_000),
            env_n("BENCH_REPLICA_KILL_ROWS", 400),
            &mut r,
        )
        .await?;
    }
    for db in [Db::sqlite().await?, Db::pg().await?] {
        if !(on("cpu") || on("drain")) {
            break;
        }
        fairness::cpu(&db, env_n("BENCH_CPU_ROWS", backlog.min(50_000)), &mut r).await?;
        db.drop_pg().await;
    }
    println!("\ntotal wall time {:.0}s", started.elapsed().as_secs_f64());
    Ok(())
}
