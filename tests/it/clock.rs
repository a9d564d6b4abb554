//! Clock trouble (issue 16 §4): the daemon's wall clock jumps forward and
//! back by minutes while it drains rows with lost answers and hangs. Leases,
//! settle delays and backoff are measured on the database's clock (SQL
//! `now()`) or on the monotonic clock, never on the wall clock the daemon
//! reads, so nothing is lost, doubled or parked. The jumps are real to the
//! daemon process: libfaketime (Debian's `faketime`, installed by .ci/run)
//! is preloaded into it and re-reads its offset from a file.
//!
//! On PostgreSQL the database clock is the server's. (On SQLite the database
//! clock is the host's wall clock, shared by every process on the file: a
//! jump forward there expires leases early — rows go `in_doubt` and are
//! reconciled, never blindly re-sent; README, "Clocks".)

use std::time::{Duration, Instant};

use statusd::sim::SimConfig;
use statusd::store::Store;

use crate::support::{live_rows, start_sim, statusd_command, text, TestDb, TEST_TOKEN};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wall_clock_jumps_of_minutes_lose_and_double_nothing_postgres() {
    let db = TestDb::postgres().await;
    let store = db.pg_store().await;
    // The database clock is the server's: any jumps of the daemon's clock.
    clock_jumps(&db, store, &["+10m", "-10m", "+45m", "-3h", "+2m", "+0"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wall_clock_jumps_of_minutes_lose_and_double_nothing_sqlite() {
    let db = TestDb::sqlite().await;
    let store = db.sqlite_store().await;
    // The database clock is this host's wall clock. Jumps back, and forward
    // jumps that stay, cost nothing; a forward excursion that is then set
    // back delays what was scheduled during it by its size (README,
    // "Clocks"), which a test cannot wait for.
    clock_jumps(&db, store, &["-10m", "-3h", "+0", "+10m", "+45m"]).await;
}

async fn clock_jumps<S: Store>(db: &TestDb, store: S, jumps: &[&str]) {
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: install Debian's `faketime` (.ci/run does)"
    );
    let sim = start_sim(SimConfig {
        lost_response: 0.05,
        hang_after_commit: 0.02,
        hang_ms: 1200,
        latency_min_ms: 1,
        latency_max_ms: 8,
        tokens: [("main".to_string(), TEST_TOKEN.to_string())].into(),
        seed: Some(164),
        ..SimConfig::default()
    })
    .await;
    let cfg = tempfile::tempdir().unwrap();
    std::fs::write(
        cfg.path().join("default.toml"),
        format!(
            r#"
[database]
url = "{}"
max_connections = 4

[daemon]
concurrency = 16
batch_size = 32
lease_secs = 4
poll_interval_ms = 50
fallback_poll_ms = 1000
retry_base_ms = 50
retry_max_ms = 1000
settle_delay_ms = 300
reconcile_interval_ms = 200
rescue_interval_ms = 300
reconcile_max_attempts = 1000
instance_probe_ms = 500

[admin]
enabled = false

[provider]
connect_timeout_ms = 500
request_timeout_ms = 800

[instances.main]
base_url = "{}"
instance_id = "main"
supplied_id = true
rate_per_sec = 5000
burst = 500
"#,
            db.url,
            sim.base_url()
        ),
    )
    .unwrap();
    let offset = cfg.path().join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let log_path = cfg.path().join("statusd.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut daemon = statusd_command()
        .arg("--config-dir")
        .arg(cfg.path())
        .args(["--log-format", "json", "--log-level", "info", "run"])
        .env("STATUSD__INSTANCES__MAIN__ACCESS_TOKEN", TEST_TOKEN)
        .env_remove("RUST_LOG")
        .env("LD_PRELOAD", LIBFAKETIME)
        .env("FAKETIME_TIMESTAMP_FILE", &offset)
        .env("FAKETIME_NO_CACHE", "1")
        // Only the wall clock jumps; CLOCK_MONOTONIC stays true.
        .env("DONT_FAKE_MONOTONIC", "1")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn statusd run");

    let rows = 500;
    let app = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..rows {
                store.enqueue(text("main", i)).await.expect("enqueue");
                tokio::time::sleep(Duration::from_millis(12)).await;
            }
        })
    };
    // Forward and back by minutes, several times, while rows flow.
    for j in jumps {
        tokio::time::sleep(Duration::from_millis(900)).await;
        std::fs::write(&offset, format!("{j}\n")).unwrap();
    }
    app.await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    while live_rows(&store).await > 0 {
        assert!(
            Instant::now() < deadline,
            "not drained: {:?}",
            store.summary().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    crate::support::assert_exactly_once_in(&store, &sim, rows).await;

    // The jumps reached the daemon: its log timestamps moved by minutes.
    let logs = std::fs::read_to_string(&log_path).unwrap();
    let stamps: Vec<chrono::DateTime<chrono::Utc>> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["timestamp"].as_str()?.parse().ok())
        .collect();
    let backwards = stamps
        .windows(2)
        .filter(|w| w[1] < w[0] - chrono::Duration::minutes(1))
        .count();
    assert!(
        backwards > 0,
        "the daemon's wall clock never jumped back (is libfaketime working?)"
    );
    // Look-ups settled every unknown outcome: none had to be parked.
    for row in crate::support::all_rows(&store).await {
        assert!(row.parked_at.is_none(), "row {} parked", row.id);
    }
    assert!(daemon.try_wait().unwrap().is_none(), "daemon still running");
    let _ = daemon.start_kill();
}
