//! Soak (issue 16 §6), not in CI: two `statusd run` replicas on one
//! PostgreSQL database for an hour, statuses enqueued at a steady rate, the
//! demo's fault mix in the simulator, one replica SIGKILLed and restarted
//! every few minutes. Every minute it prints RSS and open descriptors of
//! each replica, the database connections, and the enqueue → posted latency
//! of the last minute, so a leak or a slow drift shows as a trend. At the end
//! every status must have been shown exactly once.
//!
//! ```text
//! cargo test --release --test it soak -- --ignored --nocapture
//! STATUSD_SOAK_SECS=3600 STATUSD_SOAK_STATUSES=200000 STATUSD_SOAK_KILL_EVERY_SECS=300 (defaults)
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use statusd::sim::SimConfig;
use statusd::store::Store;
use tokio::process::Child;

use crate::support::{
    drain_within, env_or, spawn_run, start_sim, text, write_daemon_config, TestDb, TEST_TOKEN,
};

fn spawn_replica(cfg: &Path, log: &Path, n: usize) -> Child {
    let owner = format!("soak-{n}");
    spawn_run(
        cfg,
        log,
        "warn",
        &[
            ("STATUSD__DAEMON__OWNER", owner.as_str()),
            ("STATUSD__DATABASE__MAX_CONNECTIONS", "8"),
            ("STATUSD__PROVIDER__REQUEST_TIMEOUT_MS", "2000"),
            ("STATUSD__DAEMON__SETTLE_DELAY_MS", "500"),
        ],
    )
}

/// (RSS in MiB, open descriptors) of a running process.
fn usage(pid: u32) -> (f64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss_kb / 1024.0, fds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "an hour long; run on demand (see the module docs)"]
async fn soak_two_replicas_on_postgres() {
    let secs = env_or("STATUSD_SOAK_SECS", 3600) as u64;
    let total = env_or("STATUSD_SOAK_STATUSES", 200_000);
    let kill_every = env_or("STATUSD_SOAK_KILL_EVERY_SECS", 300) as u64;
    let db = TestDb::postgres().await;
    let store = db.pg_store().await;
    let sim = start_sim(SimConfig {
        tokens: [("main".to_string(), TEST_TOKEN.to_string())].into(),
        seed: Some(6),
        ..SimConfig::with_demo_faults()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    write_daemon_config(dir.path(), &db.url, &sim.base_url());
    let log = dir.path().join("soak.log");
    let mut replicas = [
        spawn_replica(dir.path(), &log, 0),
        spawn_replica(dir.path(), &log, 1),
    ];

    // The app: a steady rate over the whole run.
    let app = {
        let store = store.clone();
        let gap = Duration::from_secs_f64(secs as f64 / total as f64);
        tokio::spawn(async move {
            let started = Instant::now();
            let mut i = 0;
            while i < total {
                let due =
                    ((started.elapsed().as_secs_f64() / gap.as_secs_f64()) as usize + 1).min(total);
                let batch: Vec<_> = (i..due).map(|n| text("main", n)).collect();
                if !batch.is_empty() {
                    store.enqueue_many(&batch).await.expect("enqueue");
                }
                i = due;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    println!("minute  enqueued  posted  rss_a  rss_b  fds_a  fds_b  pg_conns  lat_p50_ms  lat_p99_ms  kills");
    let started = Instant::now();
    let mut kills = 0;
    let mut next_kill = Duration::from_secs(kill_every);
    let mut minute = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if started.elapsed() >= next_kill {
            let k = kills % 2;
            replicas[k].start_kill().expect("SIGKILL");
            let _ = replicas[k].wait().await;
            replicas[k] = spawn_replica(dir.path(), &log, k);
            kills += 1;
            next_kill += Duration::from_secs(kill_every);
        }
        if started.elapsed() >= Duration::from_secs(60 * (minute + 1)) {
            minute += 1;
            let row: (i64, i64, i64, Option<f64>, Option<f64>) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM status_outbox),
                        (SELECT count(*) FROM status_outbox WHERE state = 'posted'),
                        (SELECT count(*) FROM pg_stat_activity WHERE application_name = 'statusd'),
                        percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM posted_at - created_at) * 1000),
                        percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM posted_at - created_at) * 1000)
                 FROM status_outbox WHERE posted_at > now() - interval '1 minute'",
            )
            .fetch_one(store.pool())
            .await
            .expect("minute figures");
            let (ra, fa) = usage(replicas[0].id().unwrap_or(0));
            let (rb, fb) = usage(replicas[1].id().unwrap_or(0));
            println!(
                "{minute:>6}  {:>8}  {:>6}  {ra:>5.1}  {rb:>5.1}  {fa:>5}  {fb:>5}  {:>8}  {:>10.1}  {:>10.1}  {kills:>5}",
                row.0,
                row.1,
                row.2,
                row.3.unwrap_or(0.0),
                row.4.unwrap_or(0.0)
            );
        }
    }
    app.await.unwrap();
    drain_within(&store, 300, 500, "not drained").await;
    crate::support::assert_exactly_once_in(&store, &sim, total).await;
    let stats = sim.stats();
    println!(
        "soak: {total} statuses in {secs} s, 2 replicas, {kills} SIGKILLs, duplicates {}, lost 0, faults {:?}",
        stats.duplicates, stats.faults
    );
    for r in &mut replicas {
        let _ = r.start_kill();
    }
}
