//! SIGKILL on SQLite while other processes share the file (issue 16 §2):
//! the real `statusd run` on a SQLite file (WAL) under a steady load,
//! SIGKILLed at random moments while the provider is answering (so its
//! outcome writer is committing batches of outcomes) and restarted, while
//! other processes use the same file at the same time: `statusd enqueue`
//! children, the `sqlite3` tool inserting rows per the SQL contract, the
//! `sqlite3` tool reading (`SELECT count(*)`), and `statusd ls` / `stats`
//! children. The oracle is the simulator's record of what viewers saw.
//!
//! CI runs a short variant (about 600 statuses, 6 SIGKILLs). The full run
//! is the same test with more load:
//!
//! ```text
//! STATUSD_SQLKILL_STATUSES=5000 STATUSD_SQLKILL_BY_CLI=500 STATUSD_SQLKILL_KILLS=30 \
//!   cargo test --test it sqlite_kill -- --nocapture
//! ```

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use statusd::sim::SimConfig;

use crate::support::{
    assert_exactly_once, enqueue_children, env_or, read_log, spawn_run_isolated, spawn_sqlite3,
    sqlite3_feed, sqlite3_run, start_sim, wait_all_posted, ConfigFile, TestDb, TEST_TOKEN,
};

const LABEL: &str = "sqlite-kill-test";

async fn run_ok(cfg: &Path, args: &[&str]) -> String {
    crate::support::statusd_isolated_ok(cfg, args, LABEL).await
}

/// Runs `sql` with a fresh `sqlite3` process; its output, trimmed.
async fn sqlite3_query(file: &Path, sql: &str) -> String {
    let out = sqlite3_run(spawn_sqlite3(file, Stdio::piped()), sql).await;
    assert!(
        out.status.success(),
        "sqlite3 {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The SQL contract's insert, with the app's idempotency key.
fn insert_sql(i: usize) -> String {
    format!(
        "INSERT INTO status_outbox (instance, kind, payload, dedupe_key) \
         VALUES ('main', 'text', '{{\"text\":\"status number {i}\"}}', 'app-{i}') \
         ON CONFLICT (dedupe_key) DO NOTHING;\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_kill_during_batched_writes_with_other_processes() {
    let statuses = env_or("STATUSD_SQLKILL_STATUSES", 600);
    let by_cli = env_or("STATUSD_SQLKILL_BY_CLI", 60).min(statuses);
    let kills = env_or("STATUSD_SQLKILL_KILLS", 6).max(5);
    let mut rng = rand::rngs::StdRng::seed_from_u64(env_or("STATUSD_SQLKILL_SEED", 16) as u64);

    // A provider with latency (outcomes pile up and are written in batches)
    // and some lost answers (rows in doubt across the kills).
    let sim = start_sim(SimConfig {
        latency_min_ms: 20,
        latency_max_ms: 120,
        lost_response: 0.05,
        tokens: [("main".to_string(), TEST_TOKEN.to_string())].into(),
        seed: Some(16),
        ..SimConfig::default()
    })
    .await;
    let db = TestDb::sqlite().await;
    let file = PathBuf::from(db.url.trim_start_matches("sqlite://"));
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = ConfigFile::killed(&db.url, &sim.base_url()).write(dir.path());
    let log = dir.path().join("statusd.log");
    run_ok(&cfg, &["migrate"]).await;
    assert_eq!(
        sqlite3_query(&file, "PRAGMA journal_mode;").await,
        "wal",
        "the daemon's SQLite file is in WAL mode"
    );
    let mut daemon = spawn_run_isolated(&cfg, &log, LABEL);
    let started = Instant::now();
    let writers_done = Arc::new(AtomicBool::new(false));

    // Writer 1: the `sqlite3` tool, rows by_cli..statuses per the SQL
    // contract, one statement (one transaction) per row, in small bursts.
    // Paced to last about as long as the kills, so the load stays steady.
    let pace_ms = (kills as u64 * 1100) / ((statuses - by_cli) as u64 / 10).max(1);
    let sql_writer = {
        let file = file.clone();
        tokio::spawn(async move {
            let cli = spawn_sqlite3(&file, Stdio::piped());
            let pace = Duration::from_millis(pace_ms);
            let out = sqlite3_feed(cli, by_cli..statuses, insert_sql, 10, pace).await;
            assert!(
                out.status.success(),
                "the sqlite3 writer failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        })
    };

    // Writer 2: `statusd enqueue` children, rows 0..by_cli, two at a time,
    // with `statusd ls` and `statusd stats` children between them.
    let cli_writer = {
        let cfg = cfg.clone();
        tokio::spawn(async move {
            for chunk in (0..by_cli).collect::<Vec<_>>().chunks(2) {
                enqueue_children(&cfg, LABEL, chunk).await;
                if chunk[0] % 10 == 0 {
                    run_ok(&cfg, &["ls", "--limit", "5"]).await;
                    let stats = run_ok(&cfg, &["stats"]).await;
                    assert!(!stats.trim().is_empty(), "statusd stats printed nothing");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // A reader: the `sqlite3` tool counting rows. Rows are never deleted,
    // so the count never goes down, whatever is killed meanwhile.
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let file = file.clone();
        let done = writers_done.clone();
        let reads = reads.clone();
        tokio::spawn(async move {
            let mut last = 0usize;
            while !done.load(Ordering::Relaxed) {
                let n: usize = sqlite3_query(&file, "SELECT count(*) FROM status_outbox;")
                    .await
                    .parse()
                    .expect("a count");
                assert!(n >= last, "the row count went down: {last} -> {n}");
                last = n;
                reads.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };

    // The killer: at a random moment, once the provider has just answered
    // (so outcomes are being written), SIGKILL the daemon and restart it.
    let mut in_flight_at_kill = Vec::new();
    for k in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.random_range(400..1500))).await;
        // Wait (briefly) until the provider is answering right now.
        let wait_until = Instant::now() + Duration::from_secs(2);
        let before = sim.posted().len();
        while sim.posted().len() == before && Instant::now() < wait_until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..30))).await;
        if let Some(status) = daemon.try_wait().expect("poll daemon") {
            panic!(
                "the daemon exited by itself before kill {k} ({status}):\n{}",
                read_log(&log)
            );
        }
        daemon.start_kill().expect("SIGKILL");
        daemon.wait().await.expect("reap");
        let uploading = sqlite3_query(
            &file,
            "SELECT count(*) FROM status_outbox WHERE state = 'uploading';",
        )
        .await;
        in_flight_at_kill.push(uploading);
        daemon = spawn_run_isolated(&cfg, &log, LABEL);
    }
    sql_writer.await.expect("the sqlite3 writer finished");
    cli_writer
        .await
        .expect("the statusd enqueue writer finished");

    // Let the last daemon drain.
    let store = db.sqlite_store().await;
    wait_all_posted(&store, &mut daemon, &log, statuses, Duration::from_secs(90)).await;
    writers_done.store(true, Ordering::Relaxed);
    reader
        .await
        .expect("the sqlite3 reader never saw rows vanish");
    let wall = started.elapsed();
    let stats = sim.stats();

    println!("\nSQLite SIGKILL run with other processes on the file:");
    println!(
        "  statuses            {statuses} ({by_cli} by `statusd enqueue`, the rest by sqlite3)"
    );
    println!("  SIGKILLs            {kills}, rows `uploading` at each: {in_flight_at_kill:?}");
    println!("  sqlite3 reads       {}", reads.load(Ordering::Relaxed));
    println!("  faults injected     {:?}", stats.faults);
    println!("  duplicates          {}", stats.duplicates);
    println!("  wall time           {:.1}s", wall.as_secs_f64());

    // What users rely on: every status shown exactly once, none lost.
    assert_exactly_once(&sim, statuses);
    // The file is sound, and nothing is left leased.
    assert_eq!(
        sqlite3_query(&file, "PRAGMA integrity_check;").await,
        "ok",
        "PRAGMA integrity_check"
    );
    assert_eq!(
        sqlite3_query(
            &file,
            "SELECT count(*) FROM status_outbox WHERE state = 'uploading' \
             AND (lease_owner IS NULL OR lease_expires_at IS NULL);"
        )
        .await,
        "0",
        "rows left uploading without an owner lease"
    );
    assert_eq!(
        sqlite3_query(
            &file,
            "SELECT count(*) FROM status_outbox WHERE state = 'uploading';"
        )
        .await,
        "0",
        "rows left uploading after the drain"
    );
    assert!(
        in_flight_at_kill.iter().any(|n| n != "0"),
        "no kill landed while rows were in flight: {in_flight_at_kill:?}"
    );
    let logs = read_log(&log);
    assert!(
        !logs.contains("malformed") && !logs.contains("disk image"),
        "the daemon saw a damaged file:\n{logs}"
    );
    assert!(
        !logs.contains(TEST_TOKEN),
        "the access token appeared in the logs"
    );
    daemon.start_kill().expect("stop the daemon");
    let _ = daemon.wait().await;
}
