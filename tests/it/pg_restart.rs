//! Real PostgreSQL restarts (issue 16 §1): a private cluster (`initdb` into
//! a temporary directory) that the test crashes with `pg_ctl stop -m
//! immediate` (no checkpoint) and starts again, three times, and once leaves
//! down for a long outage, while the real `statusd run` binary drains rows
//! that an upstream app keeps inserting. Expected: the daemon keeps running,
//! `/readyz` goes 503 and back, no row is lost or doubled, and LISTEN is
//! re-established (pickup in milliseconds again, not the fallback poll).
//!
//! The outage lasts `STATUSD_PG_OUTAGE_SECS` (default 60).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use statusd::model::State;
use statusd::sim::SimConfig;
use statusd::store::{EnqueueParams, PgStore, Store};

use crate::support::{
    drain_within, spawn_run, start_sim, statusd_in, text, write_daemon_config, TEST_TOKEN,
};

const ADMIN_TOKEN: &str = "admin-SECRET-93be1f";

/// A PostgreSQL cluster of this test's own, on a free port.
struct PrivatePg {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivatePg {
    fn init() -> PrivatePg {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql (.ci/run installs them)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let pg = PrivatePg { bin, dir, port };
        // initdb refuses to run as root: the cluster belongs to `postgres`.
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(pg.dir.path())
                .status()
                .expect("chown");
            assert!(ok.success(), "chown the cluster directory to postgres");
        }
        pg.pg(
            "initdb",
            &[
                "-D",
                &pg.data(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        );
        pg.start();
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn pg(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd.args(args).output().expect("run a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log").display().to_string();
        self.pg(
            "pg_ctl",
            &["-D", &self.data(), "-o", &opts, "-l", &log, "-w", "start"],
        );
    }

    /// A crash: no checkpoint, the next start replays the WAL.
    fn crash(&self) {
        self.pg(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let exe = self.bin.join("pg_ctl");
        let data = self.data();
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let _ = cmd.args(["-D", &data, "-m", "immediate", "stop"]).output();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

async fn readyz(http: &reqwest::Client, admin: &str) -> Option<u16> {
    http.get(format!("http://{admin}/readyz"))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

async fn wait_ready(http: &reqwest::Client, admin: &str, want: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = readyz(http, admin).await;
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz did not answer {want} within {within:?} (last: {got:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Enqueues as an upstream app should: with a dedupe key, retried until the
/// database takes it (an enqueue whose commit answer was lost is a no-op).
async fn enqueue_retrying(store: &PgStore, i: usize) {
    let p = EnqueueParams {
        dedupe_key: Some(format!("app-{i}")),
        ..text("main", i)
    };
    while store.enqueue(p.clone()).await.is_err() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_crash_restarts_and_an_outage_lose_and_double_nothing() {
    let outage = Duration::from_secs(
        std::env::var("STATUSD_PG_OUTAGE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
    let pg = PrivatePg::init();
    {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&pg.url("postgres"))
            .await
            .expect("connect to the private cluster");
        sqlx::query("CREATE DATABASE statusd")
            .execute(&mut c)
            .await
            .expect("create database");
    }
    let db_url = pg.url("statusd");
    let sim = start_sim(SimConfig {
        lost_response: 0.05,
        hang_after_commit: 0.02,
        hang_ms: 1200,
        latency_min_ms: 1,
        latency_max_ms: 10,
        tokens: [("main".to_string(), TEST_TOKEN.to_string())].into(),
        seed: Some(16),
        ..SimConfig::default()
    })
    .await;
    let cfg = tempfile::tempdir().unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .to_string();
    write_daemon_config(cfg.path(), &db_url, &sim.base_url());
    let log_path = cfg.path().join("statusd.log");
    let env = [
        ("STATUSD__ADMIN__ENABLED", "true"),
        ("STATUSD__ADMIN__BIND", admin.as_str()),
        ("STATUSD__ADMIN__TOKEN", ADMIN_TOKEN),
        // Long on purpose: pickup in milliseconds after a restart proves
        // LISTEN is back.
        ("STATUSD__DAEMON__FALLBACK_POLL_MS", "20000"),
    ];
    let migrated = statusd_in(cfg.path(), &log_path, &env)
        .arg("migrate")
        .status()
        .await
        .expect("statusd migrate");
    assert!(migrated.success(), "statusd migrate: {migrated}");
    let mut daemon = spawn_run(cfg.path(), &log_path, "info", &env);
    // Longer than /readyz's own 2 s database timeout.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    wait_ready(&http, &admin, 200, Duration::from_secs(20)).await;

    // The upstream app: 600 rows at a steady pace across all the restarts.
    let store = PgStore::connect(&db_url, 2).await.expect("app connection");
    let rows = 600;
    let app = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..rows {
                enqueue_retrying(&store, i).await;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };

    let mut crashes = 0;
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        pg.crash();
        crashes += 1;
        wait_ready(&http, &admin, 503, Duration::from_secs(15)).await;
        let down = if round == 3 {
            outage
        } else {
            Duration::from_millis(1000)
        };
        tokio::time::sleep(down).await;
        assert!(
            daemon.try_wait().expect("daemon status").is_none(),
            "the daemon exited while the database was down (round {round}); log: {}",
            log_path.display()
        );
        pg.start();
        wait_ready(&http, &admin, 200, Duration::from_secs(30)).await;
    }
    app.await.expect("the app enqueued every row");

    // Drained, each status shown once.
    drain_within(&store, 120, 100, "not drained after the restarts").await;
    crate::support::assert_exactly_once_in(&store, &sim, rows).await;

    // LISTEN is back: a new row is picked up in milliseconds, far below the
    // 20 s fallback poll.
    let mut pickups = Vec::new();
    for i in 0..20 {
        let enqueued = store
            .enqueue(text("main", 10_000 + i))
            .await
            .expect("enqueue after restart");
        let t0 = Instant::now();
        loop {
            let row = store.get(enqueued.id).await.expect("get").expect("row");
            if row.state == State::Posted {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "row not picked up within 10 s after the restarts: LISTEN was not re-established"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        pickups.push(t0.elapsed());
    }
    pickups.sort();
    println!(
        "pg restarts: {crashes} immediate stops (one down {outage:?}), {rows} rows, \
         pickup after restart p50 {:?} max {:?}",
        pickups[pickups.len() / 2],
        pickups[pickups.len() - 1]
    );
    assert!(
        daemon.try_wait().expect("daemon status").is_none(),
        "the daemon must still be running"
    );
    let _ = daemon.start_kill();
}
