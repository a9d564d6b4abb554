//! SQLite shared with other programs (issue 11 §1, §1b; DESIGN R9, R10):
//! the real `statusd run` as a child process on a SQLite file while other
//! processes write and read the same file — `statusd enqueue`, `statusd ls`
//! and `statusd stats` children, a second connection inserting in a loop,
//! and the `sqlite3` command-line tool (installed by `.ci/run`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::Connection;
use statusd::sim::{SimConfig, SimHandle};

use crate::support::{
    assert_exactly_once, enqueue_children, read_log, spawn_run_isolated, spawn_sqlite3,
    sqlite3_feed, sqlite3_run, start_sim, wait_all_posted, ConfigFile, TestDb, TEST_TOKEN,
};

/// How many statuses each run enqueues, and how many of them by `statusd
/// enqueue` children (the rest by the other writer).
const STATUSES: usize = 1000;
const BY_CLI: usize = 100;

/// Which second process writes rows while the daemon runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Writer {
    /// A sqlx connection of this test process, one transaction per row.
    Connection,
    /// The `sqlite3` command-line tool, one statement per row.
    Sqlite3Cli,
}

const LABEL: &str = "multiprocess-test";

async fn run_ok(cfg: &Path, args: &[&str]) -> String {
    crate::support::statusd_isolated_ok(cfg, args, LABEL).await
}

fn insert_sql(i: usize) -> String {
    format!(
        "INSERT INTO status_outbox (instance, kind, payload) VALUES ('main', 'text', '{{\"text\":\"status number {i}\"}}');\n"
    )
}

fn db_file(db: &TestDb) -> PathBuf {
    PathBuf::from(db.url.trim_start_matches("sqlite://"))
}

/// What each test starts from: the simulator (knowing `main`'s token), a
/// SQLite database migrated by `statusd migrate`, and `statusd run` on it;
/// its config (the admin server on `admin_port` if `admin`) and log in `dir`.
struct Started {
    daemon: tokio::process::Child,
    log: PathBuf,
    cfg: PathBuf,
    admin_port: u16,
    dir: tempfile::TempDir,
    db: TestDb,
    sim: SimHandle,
}

async fn start(admin: bool) -> Started {
    let sim = start_sim(SimConfig {
        tokens: [("main".to_string(), TEST_TOKEN.to_string())].into(),
        ..SimConfig::default()
    })
    .await;
    let db = TestDb::sqlite().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let admin_port = if admin { free_port() } else { 0 };
    let mut cfg = ConfigFile::new(&db.url, &sim.base_url())
        .daemon(&[("concurrency", 32), ("batch_size", 64), ("lease_secs", 10)])
        .provider_timeouts(2000, 5000);
    if admin {
        cfg = cfg.admin(&format!("127.0.0.1:{admin_port}"));
    }
    let cfg = cfg.write(dir.path());
    let log = dir.path().join("statusd.log");
    run_ok(&cfg, &["migrate"]).await;
    let daemon = spawn_run_isolated(&cfg, &log, LABEL);
    Started {
        daemon,
        log,
        cfg,
        admin_port,
        dir,
        db,
        sim,
    }
}

async fn beside_other_processes(writer: Writer) {
    let Started {
        mut daemon,
        log,
        cfg,
        admin_port: _,
        dir: _dir,
        db,
        sim,
    } = start(false).await;
    let started = Instant::now();

    // The other writer: rows BY_CLI..STATUSES, in small bursts.
    let file = db_file(&db);
    let url = db.url.clone();
    let other = tokio::spawn(async move {
        match writer {
            Writer::Connection => {
                let mut c = sqlx::SqliteConnection::connect(&url)
                    .await
                    .expect("connect");
                sqlx::query("PRAGMA busy_timeout = 10000")
                    .execute(&mut c)
                    .await
                    .expect("busy_timeout");
                for i in BY_CLI..STATUSES {
                    let mut tx = c.begin().await.expect("begin");
                    sqlx::query(&insert_sql(i))
                        .execute(&mut *tx)
                        .await
                        .expect("insert");
                    tx.commit().await.expect("commit");
                    if i % 20 == 0 {
                        tokio::time::sleep(Duration::from_millis(15)).await;
                    }
                }
            }
            Writer::Sqlite3Cli => {
                let cli = spawn_sqlite3(&file, Stdio::null());
                let out = sqlite3_feed(
                    cli,
                    BY_CLI..STATUSES,
                    insert_sql,
                    20,
                    Duration::from_millis(15),
                )
                .await;
                assert!(
                    out.status.success(),
                    "sqlite3 failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    });

    // Meanwhile `statusd enqueue` children, four at a time, with `ls` and
    // `stats` children between them.
    for chunk in (0..BY_CLI).collect::<Vec<_>>().chunks(4) {
        enqueue_children(&cfg, LABEL, chunk).await;
        if chunk[0] % 20 == 0 {
            run_ok(&cfg, &["ls", "--limit", "5"]).await;
            run_ok(&cfg, &["stats"]).await;
        }
        assert!(
            daemon.try_wait().expect("poll daemon").is_none(),
            "the daemon died while other processes wrote:\n{}",
            read_log(&log)
        );
    }
    other.await.expect("the other writer finished");

    // Every row posted, with the daemon alive throughout.
    let store = db.sqlite_store().await;
    wait_all_posted(&store, &mut daemon, &log, STATUSES, Duration::from_secs(60)).await;
    println!(
        "{writer:?}: {STATUSES} statuses from other processes posted in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_exactly_once(&sim, STATUSES);
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(store.pool())
        .await
        .expect("integrity_check");
    assert_eq!(check, "ok");
    assert!(
        daemon.try_wait().expect("poll daemon").is_none(),
        "the daemon is still running"
    );
    let logs = read_log(&log);
    assert!(
        !logs.contains("malformed") && !logs.contains("disk image"),
        "{logs}"
    );
    daemon.start_kill().expect("stop the daemon");
    let _ = daemon.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_daemon_survives_other_processes_writing() {
    beside_other_processes(Writer::Connection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_daemon_survives_the_sqlite3_tool_writing() {
    beside_other_processes(Writer::Sqlite3Cli).await;
}

/// A wrongly typed value written by another program, and what must become
/// of it: refused at INSERT (naming what is wrong), or `invalid` with
/// `last_error` naming the column (or posted, when the value converts
/// without loss).
struct Bad {
    /// `instance, kind, payload, priority, not_before` and an optional id.
    values: String,
    id: Option<&'static str>,
    expect: Expect,
}

enum Expect {
    /// The insert fails and its error contains this.
    Refused(&'static str),
    /// The row ends `invalid` and `last_error` starts with this column.
    Invalid(&'static str),
}

/// Wrong types in every public column: REAL, TEXT and BLOB in integer
/// columns, numbers and BLOBs in text columns, non-canonical UUIDs, text
/// that is not UTF-8, NUL characters.
fn bad_corpus() -> Vec<Bad> {
    use Expect::*;
    let ok = r#"'{"text":"a bad row"}'"#;
    let bad = |instance: &str, kind: &str, payload: &str, priority: &str, not_before: &str| {
        format!("{instance}, {kind}, {payload}, {priority}, {not_before}")
    };
    let mut v = Vec::new();
    // Integer columns: (priority, not_before), refused for this reason.
    let integers = [
        (
            "0",
            "1700000000000.5",
            "REAL value in INTEGER column status_outbox.not_before",
        ),
        (
            "0",
            "'2030-01-01'",
            "TEXT value in INTEGER column status_outbox.not_before",
        ),
        (
            "0",
            "X'00'",
            "BLOB value in INTEGER column status_outbox.not_before",
        ),
        ("0", "99999999999999999", "not_before BETWEEN"),
        (
            "1.5",
            "NULL",
            "REAL value in INTEGER column status_outbox.priority",
        ),
        (
            "'high'",
            "NULL",
            "TEXT value in INTEGER column status_outbox.priority",
        ),
        (
            "X'01'",
            "NULL",
            "BLOB value in INTEGER column status_outbox.priority",
        ),
        ("9999999999", "NULL", "priority BETWEEN"),
    ];
    for (priority, not_before, why) in integers {
        let values = bad("'main'", "'text'", ok, priority, not_before);
        v.push(Bad {
            values,
            id: None,
            expect: Refused(why),
        });
    }
    // Text columns: (instance, kind, payload).
    let texts = [
        (
            ("X'6D61696E'", "'text'", ok),
            Refused("BLOB value in TEXT column status_outbox.instance"),
        ),
        (
            ("'main'", "'text'", "X'7B7D'"),
            Refused("BLOB value in TEXT column status_outbox.payload"),
        ),
        (
            ("'main'", "5", ok),
            Refused("CHECK constraint failed: kind"),
        ),
        (("5", "'text'", ok), Invalid("instance")),
        (("'main'", "'text'", "5"), Invalid("payload")),
        (("'main'", "'text'", "12.5"), Invalid("payload")),
        // Text that is not UTF-8.
        (
            ("CAST(X'6D61FF6E' AS TEXT)", "'text'", ok),
            Invalid("instance"),
        ),
        (
            (
                "'main'",
                "'text'",
                "CAST(X'7B2274657874223A2263616680227D' AS TEXT)",
            ),
            Invalid("payload"),
        ),
        // NUL characters.
        (
            ("'main'", "'text'", r#"'{"text":"a\u0000b"}'"#),
            Invalid("payload.text"),
        ),
        (
            ("'main'", "'text'", r#"'{"text":"a' || char(0) || 'b"}'"#),
            Invalid("payload"),
        ),
        (
            ("'ma' || char(0) || 'in'", "'text'", ok),
            Invalid("instance"),
        ),
    ];
    for ((instance, kind, payload), expect) in texts {
        let values = bad(instance, kind, payload, "0", "NULL");
        v.push(Bad {
            values,
            id: None,
            expect,
        });
    }
    // Ids: only the canonical form is accepted.
    let ids = [
        "'0190A2B4-1111-7222-8333-444455556666'",
        "'{0190a2b4-1111-7222-8333-444455556666}'",
        "'0190a2b4111172228333444455556666'",
        "'not-a-uuid'",
        "42",
    ];
    for id in ids {
        let values = bad("'main'", "'text'", ok, "0", "NULL");
        v.push(Bad {
            values,
            id: Some(id),
            expect: Refused("id_is_a_canonical_uuid"),
        });
    }
    v
}

/// Runs one statement with the `sqlite3` tool; its error text if it failed.
async fn sqlite3_exec(file: &Path, sql: &str) -> Option<String> {
    let out = sqlite3_run(spawn_sqlite3(file, Stdio::null()), sql).await;
    (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `statusd_db_statements_total` summed over its sources, from `/metrics`.
async fn statements(port: u16) -> f64 {
    let body = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    let total: f64 = body
        .lines()
        .filter(|l| l.starts_with("statusd_db_statements_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(total > 0.0, "no statement counter on /metrics:\n{body}");
    total
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Issue 11 §1b: 200 good rows and a corpus of wrongly typed ones, written
/// by the `sqlite3` tool while the daemon runs. Every good row is posted,
/// every bad one is refused at INSERT or ends `invalid` naming its column,
/// and the daemon neither stalls nor spins afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wrongly_typed_rows_never_stall_or_spin_the_daemon() {
    const GOOD: usize = 200;
    let Started {
        mut daemon,
        log,
        cfg: _,
        admin_port: port,
        dir: _dir,
        db,
        sim,
    } = start(true).await;
    let file = db_file(&db);

    let corpus = bad_corpus();
    let per_bad = GOOD / corpus.len();
    let mut next_good = 0;
    for (n, bad) in corpus.iter().enumerate() {
        let goods: String = (next_good..next_good + per_bad).map(insert_sql).collect();
        next_good += per_bad;
        assert_eq!(sqlite3_exec(&file, &goods).await, None, "good rows refused");
        let (cols, id) = match bad.id {
            Some(id) => (", id", format!(", {id}")),
            None => ("", String::new()),
        };
        let sql = format!(
            "INSERT INTO status_outbox (instance, kind, payload, priority, not_before, dedupe_key{cols}) \
             VALUES ({}, 'bad-{n}'{id});",
            bad.values
        );
        let refused = sqlite3_exec(&file, &sql).await;
        match (&bad.expect, refused) {
            (Expect::Refused(why), Some(err)) => {
                assert!(
                    err.contains(why),
                    "bad row {n} ({sql}) refused for another reason: {err}"
                )
            }
            (Expect::Refused(why), None) => {
                panic!("bad row {n} ({sql}) was accepted; expected: {why}")
            }
            (Expect::Invalid(_), Some(err)) => panic!("bad row {n} ({sql}) refused: {err}"),
            (Expect::Invalid(_), None) => {}
        }
    }
    let rest: String = (next_good..GOOD).map(insert_sql).collect();
    assert_eq!(sqlite3_exec(&file, &rest).await, None, "good rows refused");

    // Every good row posted, every accepted bad row invalid.
    let store = db.sqlite_store().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = daemon.try_wait().expect("poll daemon") {
            panic!("the daemon exited ({status}):\n{}", read_log(&log));
        }
        let (posted, live): (i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(state = 'posted'), 0),
                    COALESCE(SUM(state NOT IN ('posted', 'invalid')), 0) FROM status_outbox",
        )
        .fetch_one(store.pool())
        .await
        .expect("count");
        if posted == GOOD as i64 && live == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stalled: {posted} of {GOOD} posted, {live} rows still live\n{}",
            read_log(&log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_exactly_once(&sim, GOOD);
    for (n, bad) in corpus.iter().enumerate() {
        if let Expect::Invalid(column) = bad.expect {
            let (state, error): (String, Option<String>) =
                sqlx::query_as("SELECT state, last_error FROM status_outbox WHERE dedupe_key = ?1")
                    .bind(format!("bad-{n}"))
                    .fetch_one(store.pool())
                    .await
                    .expect("the accepted bad row is kept");
            let error = error.unwrap_or_default();
            assert_eq!(state, "invalid", "bad row {n} ({}): {error}", bad.values);
            assert!(
                error.starts_with(&format!("{column}:")),
                "bad row {n} ({}) must name `{column}`: {error}",
                bad.values
            );
        }
    }

    // Idle: no spinning. A dispatcher looping on an unclaimable row ran ~145
    // statements/s; an idle daemon runs about 2 (its pollers and the
    // wake-up's PRAGMA). The bound catches the loop, not noise.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = statements(port).await;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let per_sec = (statements(port).await - before) / t0.elapsed().as_secs_f64();
    println!("idle: {per_sec:.2} statements/s");
    assert!(
        per_sec <= 10.0,
        "the idle daemon runs {per_sec:.1} statements/s"
    );
    assert!(
        daemon.try_wait().expect("poll daemon").is_none(),
        "the daemon is still running"
    );
    daemon.start_kill().expect("stop the daemon");
    let _ = daemon.wait().await;
}
