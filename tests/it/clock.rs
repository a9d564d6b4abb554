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

use std::time::Duration;

use statusd::sim::SimConfig;
use statusd::store::Store;

use crate::support::{
    app_enqueuing, drain_within, spawn_run, start_sim, write_daemon_config, TestDb, TEST_TOKEN,
};

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
    write_daemon_config(cfg.path(), &db.url, &sim.base_url());
    let offset = cfg.path().join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let log_path = cfg.path().join("statusd.log");
    let offset_file = offset.display().to_string();
    let mut daemon = spawn_run(
        cfg.path(),
        &log_path,
        "info",
        &[
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME_TIMESTAMP_FILE", &offset_file),
            ("FAKETIME_NO_CACHE", "1"),
            // Only the wall clock jumps; CLOCK_MONOTONIC stays true.
            ("DONT_FAKE_MONOTONIC", "1"),
        ],
    );

    let rows = 500;
    let app = app_enqueuing(&store, rows, 12);
    // Forward and back by minutes, several times, while rows flow.
    for j in jumps {
        tokio::time::sleep(Duration::from_millis(900)).await;
        std::fs::write(&offset, format!("{j}\n")).unwrap();
    }
    app.await.unwrap();

    drain_within(&store, 60, 100, "not drained").await;
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
