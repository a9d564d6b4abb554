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
use statusd::model::State;
use statusd::sim::{SimConfig, SimHandle};
use statusd::store::Store;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use crate::support::{all_rows, assert_exactly_once, start_sim, TestDb, TEST_TOKEN};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The daemon's config: many rows in flight against a provider with some
/// latency (so outcomes arrive together and are written in batches), short
/// leases and settle delay (so rows killed mid-call are reconciled quickly).
fn config_dir(dir: &Path, db_url: &str, sim: &SimHandle) -> PathBuf {
    let cfg = format!(
        r#"
[database]
url = "{db_url}"
max_connections = 4

[daemon]
concurrency = 48
batch_size = 64
lease_secs = 2
poll_interval_ms = 50
fallback_poll_ms = 500
retry_base_ms = 50
retry_max_ms = 1000
settle_delay_ms = 300
reconcile_interval_ms = 200
rescue_interval_ms = 300
instance_probe_ms = 500
shutdown_grace_secs = 3

[admin]
enabled = false

[provider]
connect_timeout_ms = 500
request_timeout_ms = 1000

[instances.main]
base_url = "{base}"
instance_id = "main"
supplied_id = true
rate_per_sec = 5000
burst = 500
"#,
        base = sim.base_url()
    );
    std::fs::write(dir.join("default.toml"), cfg).expect("write config");
    dir.to_path_buf()
}

/// `statusd --config-dir DIR ARGS…` with only this test's environment.
fn statusd(cfg: &Path, args: &[&str]) -> Command {
    crate::support::statusd_isolated(cfg, args, "sqlite-kill-test")
}

async fn run_ok(cfg: &Path, args: &[&str]) -> String {
    crate::support::statusd_isolated_ok(cfg, args, "sqlite-kill-test").await
}

fn spawn_daemon(cfg: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    statusd(cfg, &["--log-format", "json", "--log-level", "info", "run"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn statusd run")
}

/// The `sqlite3` tool on `file` reading statements from its stdin.
fn spawn_sqlite3(file: &Path) -> Child {
    let mut cmd = Command::new("sqlite3");
    cmd.arg("-bail")
        .arg(file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    crate::support::die_with_parent(cmd.as_std_mut());
    cmd.spawn()
        .expect("the sqlite3 command-line tool (installed by .ci/run)")
}

/// Runs `sql` with a fresh `sqlite3` process; its output, trimmed.
async fn sqlite3_query(file: &Path, sql: &str) -> String {
    let mut cli = spawn_sqlite3(file);
    let mut stdin = cli.stdin.take().expect("stdin");
    stdin
        .write_all(format!(".timeout 10000\n{sql}\n").as_bytes())
        .await
        .expect("sqlite3 stdin");
    drop(stdin);
    let out = cli.wait_with_output().await.expect("sqlite3 exits");
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

fn daemon_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
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
    let cfg = config_dir(dir.path(), &db.url, &sim);
    let log = dir.path().join("statusd.log");
    run_ok(&cfg, &["migrate"]).await;
    assert_eq!(
        sqlite3_query(&file, "PRAGMA journal_mode;").await,
        "wal",
        "the daemon's SQLite file is in WAL mode"
    );
    let mut daemon = spawn_daemon(&cfg, &log);
    let started = Instant::now();
    let writers_done = Arc::new(AtomicBool::new(false));

    // Writer 1: the `sqlite3` tool, rows by_cli..statuses per the SQL
    // contract, one statement (one transaction) per row, in small bursts.
    // Paced to last about as long as the kills, so the load stays steady.
    let pace_ms = (kills as u64 * 1100) / ((statuses - by_cli) as u64 / 10).max(1);
    let sql_writer = {
        let file = file.clone();
        tokio::spawn(async move {
            let mut cli = spawn_sqlite3(&file);
            let mut stdin = cli.stdin.take().expect("stdin");
            stdin
                .write_all(b".timeout 10000\n")
                .await
                .expect("sqlite3 stdin");
            for i in by_cli..statuses {
                stdin
                    .write_all(insert_sql(i).as_bytes())
                    .await
                    .expect("sqlite3 stdin");
                if i % 10 == 0 {
                    stdin.flush().await.expect("flush");
                    tokio::time::sleep(Duration::from_millis(pace_ms)).await;
                }
            }
            drop(stdin);
            let out = cli.wait_with_output().await.expect("sqlite3 exits");
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
                let runs: Vec<_> = chunk
                    .iter()
                    .map(|i| {
                        let text = format!("status number {i}");
                        let cfg = cfg.clone();
                        async move {
                            run_ok(&cfg, &["enqueue", "--instance", "main", "--text", &text]).await;
                        }
                    })
                    .collect();
                futures_util::future::join_all(runs).await;
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
                daemon_log(&log)
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
        daemon = spawn_daemon(&cfg, &log);
    }
    sql_writer.await.expect("the sqlite3 writer finished");
    cli_writer
        .await
        .expect("the statusd enqueue writer finished");

    // Let the last daemon drain.
    let store = db.sqlite_store().await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = daemon.try_wait().expect("poll daemon") {
            panic!("the daemon exited ({status}):\n{}", daemon_log(&log));
        }
        let rows = all_rows(&store).await;
        let posted = rows.iter().filter(|r| r.state == State::Posted).count();
        if posted == statuses && rows.len() == statuses {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{posted} of {} rows posted ({statuses} enqueued): {:?}",
            rows.len(),
            store.summary().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let logs = daemon_log(&log);
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
