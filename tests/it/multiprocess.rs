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
use statusd::store::Store;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use crate::support::{assert_exactly_once, start_sim, TestDb, TEST_TOKEN};

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

/// A config directory for `statusd` against `db_url` and `sim`, with the
/// admin server on `admin_port` (0: disabled).
fn config_dir(dir: &Path, db_url: &str, sim: &SimHandle, admin_port: u16) -> PathBuf {
    let admin = if admin_port == 0 {
        "enabled = false".to_string()
    } else {
        format!("enabled = true\nbind = \"127.0.0.1:{admin_port}\"")
    };
    let cfg = format!(
        r#"
[database]
url = "{db_url}"
max_connections = 4

[daemon]
concurrency = 32
batch_size = 64
lease_secs = 10

[admin]
{admin}

[provider]
connect_timeout_ms = 2000
request_timeout_ms = 5000

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
    crate::support::statusd_isolated(cfg, args, "multiprocess-test")
}

async fn run_ok(cfg: &Path, args: &[&str]) -> String {
    crate::support::statusd_isolated_ok(cfg, args, "multiprocess-test").await
}

fn spawn_daemon(cfg: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    statusd(cfg, &["--log-format", "json", "--log-level", "info", "run"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn statusd run")
}

/// The `sqlite3` tool on `file`, reading statements from its stdin; it dies
/// with the test like every child.
fn spawn_sqlite3(file: &Path) -> Child {
    let mut cmd = Command::new("sqlite3");
    cmd.arg("-bail")
        .arg(file)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    crate::support::die_with_parent(cmd.as_std_mut());
    cmd.spawn()
        .expect("the sqlite3 command-line tool (installed by .ci/run)")
}

fn insert_sql(i: usize) -> String {
    format!(
        "INSERT INTO status_outbox (instance, kind, payload) VALUES ('main', 'text', '{{\"text\":\"status number {i}\"}}');\n"
    )
}

fn db_file(db: &TestDb) -> PathBuf {
    PathBuf::from(db.url.trim_start_matches("sqlite://"))
}

fn daemon_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

async fn beside_other_processes(writer: Writer) {
    let sim = start_sim(SimConfig {
        tokens: [("main".to_string(), TEST_TOKEN.to_string())].into(),
        ..SimConfig::default()
    })
    .await;
    let db = TestDb::sqlite().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config_dir(dir.path(), &db.url, &sim, 0);
    let log = dir.path().join("statusd.log");
    run_ok(&cfg, &["migrate"]).await;
    let mut daemon = spawn_daemon(&cfg, &log);
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
                let mut cli = spawn_sqlite3(&file);
                let mut stdin = cli.stdin.take().expect("stdin");
                stdin
                    .write_all(b".timeout 10000\n")
                    .await
                    .expect("sqlite3 stdin");
                for i in BY_CLI..STATUSES {
                    stdin
                        .write_all(insert_sql(i).as_bytes())
                        .await
                        .expect("sqlite3 stdin");
                    if i % 20 == 0 {
                        stdin.flush().await.expect("flush");
                        tokio::time::sleep(Duration::from_millis(15)).await;
                    }
                }
                drop(stdin);
                let out = cli.wait_with_output().await.expect("sqlite3 exits");
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
        if chunk[0] % 20 == 0 {
            run_ok(&cfg, &["ls", "--limit", "5"]).await;
            run_ok(&cfg, &["stats"]).await;
        }
        assert!(
            daemon.try_wait().expect("poll daemon").is_none(),
            "the daemon died while other processes wrote:\n{}",
            daemon_log(&log)
        );
    }
    other.await.expect("the other writer finished");

    // Every row posted, with the daemon alive throughout.
    let store = db.sqlite_store().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = daemon.try_wait().expect("poll daemon") {
            panic!("the daemon exited ({status}):\n{}", daemon_log(&log));
        }
        let rows = crate::support::all_rows(&store).await;
        let posted = rows
            .iter()
            .filter(|r| r.state == statusd::model::State::Posted)
            .count();
        if posted == STATUSES && rows.len() == STATUSES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{posted} of {} rows posted: {:?}",
            rows.len(),
            store.summary().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let logs = daemon_log(&log);
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
    let row = |instance: &str, kind: &str, payload: &str, priority: &str, not_before: &str| {
        format!("{instance}, {kind}, {payload}, {priority}, {not_before}")
    };
    let main = "'main'";
    let text = "'text'";
    let mut v = vec![
        // Integer columns.
        (
            row(main, text, ok, "0", "1700000000000.5"),
            None,
            Refused("REAL value in INTEGER column status_outbox.not_before"),
        ),
        (
            row(main, text, ok, "0", "'2030-01-01'"),
            None,
            Refused("TEXT value in INTEGER column status_outbox.not_before"),
        ),
        (
            row(main, text, ok, "0", "X'00'"),
            None,
            Refused("BLOB value in INTEGER column status_outbox.not_before"),
        ),
        (
            row(main, text, ok, "0", "99999999999999999"),
            None,
            Refused("not_before BETWEEN"),
        ),
        (
            row(main, text, ok, "1.5", "NULL"),
            None,
            Refused("REAL value in INTEGER column status_outbox.priority"),
        ),
        (
            row(main, text, ok, "'high'", "NULL"),
            None,
            Refused("TEXT value in INTEGER column status_outbox.priority"),
        ),
        (
            row(main, text, ok, "X'01'", "NULL"),
            None,
            Refused("BLOB value in INTEGER column status_outbox.priority"),
        ),
        (
            row(main, text, ok, "9999999999", "NULL"),
            None,
            Refused("priority BETWEEN"),
        ),
        // Text columns.
        (
            row("X'6D61696E'", text, ok, "0", "NULL"),
            None,
            Refused("BLOB value in TEXT column status_outbox.instance"),
        ),
        (
            row(main, text, "X'7B7D'", "0", "NULL"),
            None,
            Refused("BLOB value in TEXT column status_outbox.payload"),
        ),
        (
            row(main, "5", ok, "0", "NULL"),
            None,
            Refused("CHECK constraint failed: kind"),
        ),
        (row("5", text, ok, "0", "NULL"), None, Invalid("instance")),
        (row(main, text, "5", "0", "NULL"), None, Invalid("payload")),
        (
            row(main, text, "12.5", "0", "NULL"),
            None,
            Invalid("payload"),
        ),
        // Text that is not UTF-8.
        (
            row("CAST(X'6D61FF6E' AS TEXT)", text, ok, "0", "NULL"),
            None,
            Invalid("instance"),
        ),
        (
            row(
                main,
                text,
                "CAST(X'7B2274657874223A2263616680227D' AS TEXT)",
                "0",
                "NULL",
            ),
            None,
            Invalid("payload"),
        ),
        // NUL characters.
        (
            row(main, text, r#"'{"text":"a\u0000b"}'"#, "0", "NULL"),
            None,
            Invalid("payload.text"),
        ),
        (
            row(
                main,
                text,
                r#"'{"text":"a' || char(0) || 'b"}'"#,
                "0",
                "NULL",
            ),
            None,
            Invalid("payload"),
        ),
        (
            row("'ma' || char(0) || 'in'", text, ok, "0", "NULL"),
            None,
            Invalid("instance"),
        ),
        // Ids: only the canonical form is accepted.
        (
            row(main, text, ok, "0", "NULL"),
            Some("'0190A2B4-1111-7222-8333-444455556666'"),
            Refused("id_is_a_canonical_uuid"),
        ),
        (
            row(main, text, ok, "0", "NULL"),
            Some("'{0190a2b4-1111-7222-8333-444455556666}'"),
            Refused("id_is_a_canonical_uuid"),
        ),
        (
            row(main, text, ok, "0", "NULL"),
            Some("'0190a2b4111172228333444455556666'"),
            Refused("id_is_a_canonical_uuid"),
        ),
        (
            row(main, text, ok, "0", "NULL"),
            Some("'not-a-uuid'"),
            Refused("id_is_a_canonical_uuid"),
        ),
        (
            row(main, text, ok, "0", "NULL"),
            Some("42"),
            Refused("id_is_a_canonical_uuid"),
        ),
    ];
    v.drain(..)
        .map(|(values, id, expect)| Bad { values, id, expect })
        .collect()
}

/// Runs one statement with the `sqlite3` tool; its error text if it failed.
async fn sqlite3_exec(file: &Path, sql: &str) -> Option<String> {
    let mut cli = spawn_sqlite3(file);
    let mut stdin = cli.stdin.take().expect("stdin");
    stdin
        .write_all(format!(".timeout 10000\n{sql}\n").as_bytes())
        .await
        .expect("sqlite3 stdin");
    drop(stdin);
    let out = cli.wait_with_output().await.expect("sqlite3 exits");
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
    let sim = start_sim(SimConfig {
        tokens: [("main".to_string(), TEST_TOKEN.to_string())].into(),
        ..SimConfig::default()
    })
    .await;
    let db = TestDb::sqlite().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let cfg = config_dir(dir.path(), &db.url, &sim, port);
    let log = dir.path().join("statusd.log");
    run_ok(&cfg, &["migrate"]).await;
    let mut daemon = spawn_daemon(&cfg, &log);
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
            panic!("the daemon exited ({status}):\n{}", daemon_log(&log));
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
            daemon_log(&log)
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
