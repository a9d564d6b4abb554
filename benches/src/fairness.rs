//! Fair scheduling across instances (issue 14): a noisy neighbour, a slow
//! neighbour, many tenants, several replicas on one instance, and the
//! daemon's own CPU time per status. Sections `noisy`, `slow`, `tenants`,
//! `replicas`, `cpu` of `BENCH_SECTIONS`.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use statusd::app::wawp_instances;
use statusd::config::{InstanceConfig, Settings};
use statusd::daemon::Daemon;
use statusd::sim::{SimConfig, SimHandle, Simulator};
use statusd::store::{EnqueueParams, InstanceLeases, PgStore, Store};
use tokio_util::sync::CancellationToken;

use crate::counting::Counting;
use crate::{Db, Report, CONCURRENCY, POOL, TOKEN};

fn instance(sim: &SimHandle, id: &str, rate: u32, burst: u32) -> InstanceConfig {
    InstanceConfig {
        provider: Default::default(),
        base_url: sim.base_url(),
        instance_id: id.into(),
        access_token: Some(TOKEN.to_string().into()),
        access_token_file: None,
        supplied_id: true,
        rate_per_sec: rate,
        burst,
        max_in_flight: statusd::config::DEFAULT_MAX_IN_FLIGHT,
        ..Default::default()
    }
}

/// Defaults of a production daemon (batch 128, max_in_flight 8), the
/// benchmark's concurrency and pool, `instances` on their simulators.
fn settings(url: &str, instances: Vec<(String, InstanceConfig)>) -> Settings {
    let mut s = Settings::for_database(url);
    s.database.max_connections = POOL;
    s.instances.extend(instances);
    s.daemon.concurrency = CONCURRENCY;
    s.provider.request_timeout_ms = 10_000;
    s.admin.enabled = false;
    s
}

async fn sim_with_latency(min_ms: u64, max_ms: u64) -> anyhow::Result<SimHandle> {
    Ok(Simulator::start(
        "127.0.0.1:0".parse()?,
        SimConfig {
            latency_min_ms: min_ms,
            latency_max_ms: max_ms,
            ..Default::default()
        },
    )
    .await?)
}

/// `n` queued rows for `instance`, one statement (setup, not measured).
async fn fill(db: &Db, instance: &str, n: usize, tag: &str) -> anyhow::Result<()> {
    db.exec(&match db {
        Db::Sqlite(..) => format!(
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {n})
             INSERT INTO status_outbox (instance, kind, payload)
             SELECT '{instance}', 'text', json_object('text', '{tag} ' || n) FROM g"
        ),
        Db::Pg(..) => format!(
            "INSERT INTO status_outbox (instance, kind, payload)
             SELECT '{instance}', 'text', jsonb_build_object('text', '{tag} ' || g)
             FROM generate_series(1, {n}) g"
        ),
    })
    .await
}

fn start<S: Store>(
    store: S,
    settings: &Settings,
) -> anyhow::Result<(
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
)> {
    let daemon = Daemon::new(store, wawp_instances(settings)?, settings.daemon.clone());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(daemon.run(shutdown.clone()));
    Ok((shutdown, task))
}

async fn until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while !done() {
        anyhow::ensure!(t0.elapsed() < limit, "{what}: not done after {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

fn count(sim: &SimHandle, instance: &str) -> usize {
    sim.posted()
        .iter()
        .filter(|p| p.instance == instance)
        .count()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Posts of `instance` per second in its steady state: from 2 s after its
/// first post (its burst spent) to its last.
fn steady_rate(sim: &SimHandle, instance: &str) -> f64 {
    let mut t: Vec<_> = sim
        .posted()
        .iter()
        .filter(|p| p.instance == instance)
        .map(|p| p.posted_at)
        .collect();
    t.sort();
    let Some(first) = t.first().copied() else {
        return 0.0;
    };
    let from = first + chrono::Duration::seconds(2);
    let after: Vec<_> = t.iter().filter(|x| **x >= from).collect();
    match (after.first(), after.last()) {
        (Some(a), Some(b)) if b > a => {
            (after.len() - 1) as f64 / ((**b - **a).num_milliseconds() as f64 / 1000.0)
        }
        _ => 0.0,
    }
}

/// Figure 1: `a` and `b` at 20/s, the simulator at 30–60 ms; a backlog on `a`,
/// then 20 rows on `b`: `b`'s pickup and `a`'s steady throughput.
pub async fn noisy<S: Store>(store: S, db: &Db, rows: usize, r: &mut Report) -> anyhow::Result<()> {
    let sim = sim_with_latency(30, 60).await?;
    let s = settings(
        db.url(),
        vec![
            ("a".into(), instance(&sim, "a", 20, 20)),
            ("b".into(), instance(&sim, "b", 20, 20)),
        ],
    );
    fill(db, "a", rows, "noisy").await?;
    let (shutdown, task) = start(store.clone(), &s)?;
    until(Duration::from_secs(60), "a's first posts", || {
        count(&sim, "a") >= 60
    })
    .await?;
    let committed = chrono::Utc::now();
    store
        .enqueue_many(
            &(0..20)
                .map(|i| EnqueueParams {
                    instance: "b".into(),
                    kind: "text".into(),
                    payload: serde_json::json!({ "text": format!("b {i}") }).to_string(),
                    ..Default::default()
                })
                .collect::<Vec<_>>(),
        )
        .await?;
    let committed = committed.max(chrono::Utc::now());
    until(Duration::from_secs(120), "b's 20 rows", || {
        count(&sim, "b") >= 20
    })
    .await?;
    let a_then = count(&sim, "a");
    let limit = Duration::from_secs(rows as u64 / 10 + 60);
    until(limit, "a's backlog", || count(&sim, "a") >= rows).await?;
    shutdown.cancel();
    task.await??;
    let mut pickup: Vec<f64> = sim
        .posted()
        .iter()
        .filter(|p| p.instance == "b")
        .map(|p| (p.posted_at - committed).num_microseconds().unwrap_or(0) as f64 / 1000.0)
        .collect();
    let (p50, p99) = (pct(&mut pickup, 0.5), pct(&mut pickup, 0.99));
    r.add(
        format!(
            "noisy neighbour, {}: b's pickup p50 / p99 behind {rows} of a's (ms)",
            db.label()
        ),
        format!(
            "{p50:.0} / {p99:.0}  (target p99 <= 1000; {} of a's sent by then)",
            a_then
        ),
    );
    let rate = steady_rate(&sim, "a");
    r.add(
        format!(
            "noisy neighbour, {}: a's steady throughput (/s; of its 20/s)",
            db.label()
        ),
        format!("{rate:.1}  ({:.0}%, target >= 95%)", 100.0 * rate / 20.0),
    );
    anyhow::ensure!(sim.stats().duplicates == 0, "duplicates");
    Ok(())
}

/// Figure 2: Ten instances at 20/s answered in 30 ms and one, `s`, answered in 2 s,
/// all with backlogs: the ten's aggregate throughput with `s` and without.
pub async fn slow(rows: usize, r: &mut Report) -> anyhow::Result<()> {
    let mut rates = Vec::new();
    for with_slow in [true, false] {
        let db = Db::pg().await?;
        let store = PgStore::connect(db.url(), POOL).await?;
        store.migrate().await?;
        let fast = sim_with_latency(30, 30).await?;
        let slow = sim_with_latency(2_000, 2_000).await?;
        let mut instances: Vec<(String, InstanceConfig)> = (0..10)
            .map(|i| (format!("f{i}"), instance(&fast, &format!("f{i}"), 20, 20)))
            .collect();
        for (name, _) in &instances {
            fill(&db, name, rows, "fast").await?;
        }
        if with_slow {
            instances.push(("s".into(), instance(&slow, "s", 20, 20)));
            fill(&db, "s", rows, "slow").await?;
        }
        let s = settings(db.url(), instances);
        let t0 = Instant::now();
        let (shutdown, task) = start(store, &s)?;
        let limit = Duration::from_secs(rows as u64 + 60);
        until(limit, "the fast instances' backlogs", || {
            fast.stats().posted as usize >= 10 * rows
        })
        .await?;
        let took = t0.elapsed();
        shutdown.cancel();
        task.await??;
        db.drop_pg().await;
        rates.push((10 * rows) as f64 / took.as_secs_f64());
    }
    r.add(
        "slow neighbour, PostgreSQL: 10 instances' throughput with a 2 s instance / without (/s)",
        format!(
            "{:.0} / {:.0} = {:.2}  (target >= 0.9)",
            rates[0],
            rates[1],
            rates[0] / rates[1]
        ),
    );
    Ok(())
}

/// Figure 3: 1,000 instances at 5/s (burst 1), 20 rows each, one daemon on
/// PostgreSQL: drain time against the ideal, statements per status, and the
/// slowest instance's finish against the median's.
pub async fn tenants(tenants: usize, r: &mut Report) -> anyhow::Result<()> {
    let since = Instant::now();
    let db = Db::pg().await?;
    let store = PgStore::connect(db.url(), POOL).await?;
    store.migrate().await?;
    let sim = crate::sim().await?;
    let per = 20;
    let instances: Vec<(String, InstanceConfig)> = (0..tenants)
        .map(|i| {
            let name = format!("t{i:04}");
            let c = instance(&sim, &name, 5, 1);
            (name, c)
        })
        .collect();
    db.exec(&format!(
        "INSERT INTO status_outbox (instance, kind, payload)
         SELECT 't' || lpad((g % {tenants})::text, 4, '0'), 'text', jsonb_build_object('text', 'tenant ' || g)
         FROM generate_series(1, {}) g",
        tenants * per
    ))
    .await?;
    eprintln!("tenants: set up in {:.1} s", since.elapsed().as_secs_f64());
    let s = settings(db.url(), instances);
    let store = Counting::new(store);
    let n = tenants * per;
    let t0 = Instant::now();
    let started = chrono::Utc::now();
    let (shutdown, task) = start(store.clone(), &s)?;
    eprintln!(
        "tenants: daemon built in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    until(Duration::from_secs(600), "the tenants' rows", || {
        sim.stats().posted as usize >= n
    })
    .await?;
    let took = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stmts = store.statements();
    shutdown.cancel();
    task.await??;
    eprintln!(
        "tenants: drained in {:.1} s, stopped at {:.1} s",
        took.as_secs_f64(),
        since.elapsed().as_secs_f64()
    );
    let mut finish: HashMap<String, f64> = HashMap::new();
    for p in sim.posted() {
        let t = (p.posted_at - started).num_milliseconds() as f64 / 1000.0;
        let e = finish.entry(p.instance.clone()).or_insert(0.0);
        *e = e.max(t);
    }
    let mut f: Vec<f64> = finish.values().copied().collect();
    let (median, slowest) = (pct(&mut f, 0.5), pct(&mut f, 1.0));
    let ideal = (per - 1) as f64 / 5.0;
    r.add(
        format!("many tenants: {tenants} instances at 5/s x {per} rows, PostgreSQL: drain (s; / ideal {ideal:.1} s)"),
        format!("{:.1}  ({:.2}, target <= 1.5)", took.as_secs_f64(), took.as_secs_f64() / ideal),
    );
    r.add(
        "many tenants: SQL statements per status (1 enqueue + daemon's)",
        format!("{:.2}  (target <= 3)", 1.0 + stmts as f64 / n as f64),
    );
    r.add(
        "many tenants: slowest instance's finish / median's (s)",
        format!("{slowest:.1} / {median:.1} = {:.2}", slowest / median),
    );
    anyhow::ensure!(sim.stats().duplicates == 0, "duplicates");
    db.drop_pg().await;
    Ok(())
}

/// A `statusd run` as its own process (this binary in daemon mode).
fn spawn_child(cfg: &Path) -> anyhow::Result<tokio::process::Child> {
    Ok(tokio::process::Command::new(std::env::current_exe()?)
        .arg("--daemon-child")
        .arg(cfg)
        .kill_on_drop(true)
        .spawn()?)
}

fn child_config(
    dir: &Path,
    name: &str,
    url: &str,
    extra: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[database]\nurl = \"{url}\"\nmax_connections = {POOL}\n[daemon]\nconcurrency = {CONCURRENCY}\n{extra}\n[admin]\nenabled = false\n"
        ),
    )?;
    Ok(cfg)
}

/// Three `statusd run` replicas on `db`, one instance `main` at 20/s
/// (burst 20) on `sim`.
fn spawn_replicas(
    dir: &Path,
    db: &Db,
    sim: &SimHandle,
) -> anyhow::Result<Vec<(String, tokio::process::Child)>> {
    let mut children = Vec::new();
    for i in 0..3 {
        let cfg = child_config(
            dir,
            &format!("replica-{i}"),
            db.url(),
            &format!(
                "owner = \"replica-{i}\"\n[instances.main]\nbase_url = \"{}\"\ninstance_id = \"main\"\naccess_token = \"{TOKEN}\"\nrate_per_sec = 20\nburst = 20\n",
                sim.base_url()
            ),
        )?;
        children.push((format!("replica-{i}"), spawn_child(&cfg)?));
    }
    Ok(children)
}

async fn stop(children: Vec<(String, tokio::process::Child)>) {
    for (_, mut c) in children {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
}

/// Figure 4: Three daemons on one PostgreSQL, one instance at 20/s with a
/// backlog of `rows`: the busiest 10 s the simulator saw and the drain time
/// against rows / 20 s, with no kill; then, on a fresh database with
/// `kill_rows`, the lease holder SIGKILLed mid-run: the time from the kill
/// to the instance's next post by another replica, and (separately) when
/// the killed replica's own claimed rows were posted — they wait out their
/// row lease and a look-up (exactly-once), as expected.
pub async fn replicas(rows: usize, kill_rows: usize, r: &mut Report) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("statusd-bench-replicas-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // No kill: rate and drain.
    {
        let db = Db::pg().await?;
        let store = PgStore::connect(db.url(), 4).await?;
        store.migrate().await?;
        let sim = crate::sim().await?;
        fill(&db, "main", rows, "replica").await?;
        let t0 = Instant::now();
        let children = spawn_replicas(&dir, &db, &sim)?;
        let limit = Duration::from_secs(rows as u64 / 5 + 120);
        until(limit, "the backlog", || sim.stats().posted as usize >= rows).await?;
        let took = t0.elapsed();
        stop(children).await;
        let mut t: Vec<_> = sim.posted().iter().map(|p| p.posted_at).collect();
        t.sort();
        let w = chrono::Duration::seconds(10);
        let busiest = (0..t.len())
            .map(|i| t[i..].iter().take_while(|x| **x - t[i] < w).count())
            .max()
            .unwrap_or(0);
        let ideal = rows as f64 / 20.0;
        r.add(
            format!(
                "replicas: 3 daemons, one instance at 20/s, {rows} rows, PostgreSQL: busiest 10 s (/s)"
            ),
            format!("{:.1}  (target <= 21)", busiest as f64 / 10.0),
        );
        r.add(
            format!("replicas: drain, no kill (s; / ideal {ideal:.0} s)"),
            format!(
                "{:.1}  ({:.2}, target <= 1.1)",
                took.as_secs_f64(),
                took.as_secs_f64() / ideal
            ),
        );
        anyhow::ensure!(sim.stats().duplicates == 0, "duplicates");
        db.drop_pg().await;
    }
    // SIGKILL of the lease holder.
    let db = Db::pg().await?;
    let store = PgStore::connect(db.url(), 4).await?;
    store.migrate().await?;
    let sim = crate::sim().await?;
    fill(&db, "main", kill_rows, "replica").await?;
    let mut children = spawn_replicas(&dir, &db, &sim)?;
    let limit = Duration::from_secs(kill_rows as u64 / 5 + 180);
    until(limit, "a third of the backlog", || {
        sim.stats().posted as usize >= kill_rows / 3
    })
    .await?;
    let holder = store
        .instance_leases()
        .await?
        .first()
        .map(|l| l.owner.clone())
        .context("no instance lease")?;
    let at = children
        .iter()
        .position(|(o, _)| *o == holder)
        .context("holder")?;
    let (_, mut killed) = children.remove(at);
    killed.start_kill()?;
    let _ = killed.wait().await;
    let killed_at = chrono::Utc::now();
    // The killed replica's claimed rows: posted only after their row lease
    // and a look-up; every other post after the kill is another replica's.
    let orphans: std::collections::HashSet<String> = sqlx::query_scalar::<_, String>(
        "SELECT message_id FROM status_outbox WHERE state = 'uploading' AND lease_owner = $1",
    )
    .bind(&holder)
    .fetch_all(store.pool())
    .await?
    .into_iter()
    .collect();
    until(limit, "the backlog", || {
        sim.stats().posted as usize >= kill_rows
    })
    .await?;
    stop(children).await;
    let _ = std::fs::remove_dir_all(&dir);
    let posted = sim.posted();
    let after = |orphan: bool| -> Vec<i64> {
        posted
            .iter()
            .filter(|p| p.posted_at > killed_at)
            .filter(|p| {
                p.supplied_id
                    .as_ref()
                    .is_some_and(|id| orphans.contains(id))
                    == orphan
            })
            .map(|p| (p.posted_at - killed_at).num_milliseconds())
            .collect()
    };
    let next = after(false).into_iter().min().unwrap_or(-1);
    let orphans_done = after(true).into_iter().max().unwrap_or(0);
    r.add(
        "replicas: SIGKILL of the lease holder: to the instance's next post by another replica (ms; instance lease 10 s)",
        format!("{next}  (target <= 10000 + renewal 2500)"),
    );
    r.add(
        "replicas: the killed replica's own claimed rows: posted by (s after the kill; row lease 60 s + look-up)",
        format!("{} rows, {:.1}", orphans.len(), orphans_done as f64 / 1000.0),
    );
    anyhow::ensure!(sim.stats().duplicates == 0, "duplicates");
    db.drop_pg().await;
    Ok(())
}

/// User + system CPU time of a process so far, from /proc (µs).
fn cpu_micros(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): 14 and 15.
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let hz = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    Some(ticks * 1e6 / hz)
}

/// Figure 5: The single-instance unlimited drain by `statusd run` as its own
/// process: statuses per second and the daemon's CPU time per status.
pub async fn cpu(db: &Db, rows: usize, r: &mut Report) -> anyhow::Result<()> {
    let sim = crate::sim().await?;
    match db {
        Db::Sqlite(..) => {
            let s = statusd::store::SqliteStore::connect(db.url(), POOL).await?;
            s.migrate().await?;
        }
        Db::Pg(..) => {
            let s = PgStore::connect(db.url(), POOL).await?;
            s.migrate().await?;
        }
    }
    db.fill_queued(rows, "cpu").await?;
    let dir = std::env::temp_dir().join(format!("statusd-bench-cpu-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg = child_config(
        &dir,
        "cpu",
        db.url(),
        &format!(
            "batch_size = 256\n[instances.main]\nbase_url = \"{}\"\ninstance_id = \"main\"\naccess_token = \"{TOKEN}\"\nrate_per_sec = 1000000\nburst = 1000000\nmax_in_flight = {}\n",
            sim.base_url(),
            2 * CONCURRENCY
        ),
    )?;
    let t0 = Instant::now();
    let mut child = spawn_child(&cfg)?;
    let pid = child.id().context("child pid")?;
    until(Duration::from_secs(900), "the drain", || {
        sim.stats().posted as usize >= rows
    })
    .await?;
    let took = t0.elapsed();
    let cpu = cpu_micros(pid).unwrap_or(0.0);
    child.start_kill()?;
    let _ = child.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
    r.add(
        format!(
            "statusd run (own process) drain of {rows}, {}: /s; daemon CPU per status (us)",
            db.label()
        ),
        format!(
            "{:.0};  {:.0} us",
            rows as f64 / took.as_secs_f64(),
            cpu / rows as f64
        ),
    );
    anyhow::ensure!(sim.stats().duplicates == 0, "duplicates");
    Ok(())
}
