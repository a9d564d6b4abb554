//! The disk fills up under a running daemon on SQLite (issue 16 §2): the
//! database lives on a small tmpfs that the test fills to the last byte
//! while rows are being posted. Writes fail with SQLITE_FULL (ENOSPC): the
//! daemon keeps running and says so, rows the app could commit are kept,
//! nothing is sent twice; when space returns it resumes, every row ends
//! posted, and `PRAGMA integrity_check` is `ok`. Needs root (to mount the
//! tmpfs), as CI runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use statusd::sim::SimConfig;
use statusd::store::{SqliteStore, Store};

use crate::support::{
    drain_within_or, spawn_run, start_sim, statusd_in, text, write_daemon_config, TEST_TOKEN,
};

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a {size} tmpfs needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a filler file until the disk is full; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).expect("create filler");
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        // The last partial page too.
        while f.write_all(&[0u8]).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_loses_and_doubles_nothing_and_the_daemon_resumes() {
    let disk = SmallDisk::mount("6m");
    let db_path = disk.path().join("statusd.db");
    let db_url = format!("sqlite://{}", db_path.display());
    let sim = start_sim(SimConfig {
        lost_response: 0.05,
        latency_min_ms: 1,
        latency_max_ms: 5,
        tokens: [("main".to_string(), TEST_TOKEN.to_string())].into(),
        seed: Some(162),
        ..SimConfig::default()
    })
    .await;
    let cfg = tempfile::tempdir().unwrap();
    write_daemon_config(cfg.path(), &db_url, &sim.base_url());
    let log_path = cfg.path().join("statusd.log");
    let migrated = statusd_in(cfg.path(), &log_path, &[])
        .arg("migrate")
        .status()
        .await
        .unwrap();
    assert!(migrated.success(), "statusd migrate: {migrated}");
    let mut daemon = spawn_run(cfg.path(), &log_path, "info", &[]);

    // The app: a separate connection, as an upstream app's would be.
    let app = SqliteStore::connect(&db_url, 2)
        .await
        .expect("app connection");
    let mut accepted = 0usize;
    let mut refused = 0usize;
    let mut next = 0usize;
    let mut enqueue = |n: usize| {
        let app = app.clone();
        let start = next;
        next += n;
        async move {
            let mut ok = 0;
            for i in start..start + n {
                if app.enqueue(text("main", i)).await.is_ok() {
                    ok += 1;
                }
            }
            (start, ok, n - ok)
        }
    };
    // Before: a normal drain.
    let (_, ok, bad) = enqueue(150).await;
    assert_eq!((ok, bad), (150, 0), "the disk is not full yet");
    accepted += ok;

    // Full: keep enqueuing while the daemon works.
    let filler = disk.fill();
    let mut full_rounds = Vec::new();
    for _ in 0..5 {
        let (start, ok, bad) = enqueue(40).await;
        full_rounds.push((start, ok));
        accepted += ok;
        refused += bad;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the daemon exited on a full disk; log {}",
        log_path.display()
    );
    assert!(
        refused > 0,
        "the app should have been refused on a full disk"
    );

    // Space returns.
    std::fs::remove_file(&filler).unwrap();
    let (_, ok, bad) = enqueue(50).await;
    assert_eq!(bad, 0, "space is back");
    accepted += ok;

    let last_warnings = || {
        let logs = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = logs
            .lines()
            .filter(|l| !l.contains("\"level\":\"INFO\""))
            .collect();
        format!(
            "\n{} rows accepted\nlog (last warnings):\n{}",
            accepted,
            tail[tail.len().saturating_sub(15)..].join("\n")
        )
    };
    drain_within_or(
        &app,
        60,
        100,
        "not drained after space returned",
        last_warnings,
    )
    .await;
    let rows = crate::support::all_rows(&app).await;
    assert_eq!(rows.len(), accepted, "every row the app committed is kept");
    // Every committed row shown once, none of the refused ones.
    let stats = sim.stats();
    assert_eq!(stats.duplicates, 0, "viewers saw duplicates: {stats:?}");
    let shown: std::collections::HashSet<String> = sim
        .posted()
        .iter()
        .filter_map(|p| Some(p.body.get("text")?.as_str()?.to_string()))
        .collect();
    for row in &rows {
        let v: serde_json::Value = serde_json::from_str(&row.payload).unwrap();
        let t = v["text"].as_str().unwrap().to_string();
        assert!(shown.contains(&t), "{t} was committed but never shown");
    }
    assert_eq!(shown.len(), accepted, "only committed rows were shown");

    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.contains("full"),
        "the daemon should say the disk is full"
    );
    let check: (String,) = sqlx::query_as("PRAGMA integrity_check")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(check.0, "ok");
    println!(
        "disk full: {accepted} rows committed, {refused} refused while full ({full_rounds:?}), all shown once"
    );
    assert!(daemon.try_wait().unwrap().is_none(), "daemon still running");
    let _ = daemon.start_kill();
}
