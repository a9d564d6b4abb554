//! Shared test fixtures: a fresh SQLite file or a fresh PostgreSQL database
//! per test. PostgreSQL is real: `STATUSD_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432`) must reach a server; tests fail,
//! never skip, when it does not.

use statusd::store::{EnqueueParams, PgStore, SqliteStore, Store};

pub fn pg_base() -> String {
    std::env::var("STATUSD_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A throwaway database; the SQLite file lives in a temporary directory,
/// the PostgreSQL database is dropped when the test ends normally.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("statusd.db").display());
        TestDb {
            url,
            _dir: Some(dir),
            pg_name: None,
        }
    }

    pub async fn postgres() -> TestDb {
        use sqlx::Connection;
        let name = format!("statusd_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&format!("{}/postgres", pg_base()))
            .await
            .expect("PostgreSQL must be running for the tests (see .ci/run)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        TestDb {
            url: format!("{}/{name}", pg_base()),
            _dir: None,
            pg_name: Some(name),
        }
    }

    pub async fn sqlite_store(&self) -> SqliteStore {
        let s = SqliteStore::connect(&self.url, 8)
            .await
            .expect("open sqlite");
        s.migrate().await.expect("migrate sqlite");
        s
    }

    pub async fn pg_store(&self) -> PgStore {
        let s = PgStore::connect(&self.url, 16).await.expect("connect pg");
        s.migrate().await.expect("migrate pg");
        s
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            // Best effort, outside the test's runtime; leftovers are dropped by .ci/run.
            let base = pg_base();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(rt) = rt {
                    rt.block_on(async move {
                        use sqlx::Connection;
                        if let Ok(mut c) =
                            sqlx::PgConnection::connect(&format!("{base}/postgres")).await
                        {
                            let _ = sqlx::query(&format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            ))
                            .execute(&mut c)
                            .await;
                        }
                    })
                }
            })
            .join();
        }
    }
}

/// The number in the environment variable `name`, or `default` when it is
/// unset or not a number (the long variants of the tests).
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A valid text status with unique content.
pub fn text(instance: &str, n: usize) -> EnqueueParams {
    EnqueueParams {
        instance: instance.into(),
        kind: "text".into(),
        payload: serde_json::json!({ "text": format!("status number {n}") }).to_string(),
        ..Default::default()
    }
}

/// Runs each listed generic test `fn name<S: Store>(s: S)` against SQLite
/// and against PostgreSQL.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = $crate::support::TestDb::sqlite().await;
                    super::$name(db.sqlite_store().await, &db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = $crate::support::TestDb::postgres().await;
                    super::$name(db.pg_store().await, &db).await;
                }
            )*
        }
    };
}

/// Runs SQL as an upstream app would, straight on the database.
pub async fn exec_raw(db: &TestDb, sql: &str) -> Result<u64, sqlx::Error> {
    use sqlx::Connection;
    if db.url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(&db.url).await?;
        Ok(sqlx::raw_sql(sql).execute(&mut c).await?.rows_affected())
    } else {
        let mut c = sqlx::PgConnection::connect(&db.url).await?;
        Ok(sqlx::raw_sql(sql).execute(&mut c).await?.rows_affected())
    }
}

use statusd::admin::AdminServer;
use statusd::app::wawp_instances;
use statusd::config::{AdminSettings, InstanceConfig, Settings};
use statusd::daemon::Daemon;
use statusd::provider::WawpClient;
use statusd::sim::{SimConfig, SimHandle, Simulator};
use tokio_util::sync::CancellationToken;

/// The access token every test instance uses; tests assert it never leaks.
pub const TEST_TOKEN: &str = "tok-SECRET-5f1c2a9e";

/// Starts an in-process simulator on a free loopback port.
/// The simulator as the tests were written for: a provider that honours
/// supplied ids (its historical default), unless the config says otherwise
/// (`supplied_ids`, `auto_assign_ids`, or an engine other than `wawp`,
/// whose model ignores them as Wawp documents).
pub async fn start_sim(mut cfg: SimConfig) -> SimHandle {
    if cfg.supplied_ids.is_none()
        && !cfg.auto_assign_ids
        && cfg.engine == statusd::sim::SimEngine::Wawp
    {
        cfg.supplied_ids = Some(true);
    }
    Simulator::start("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .expect("start simulator")
}

/// Settings for a daemon against `sim`, with timings shortened for tests.
/// `instances` are (name, supplied_id) pairs; each instance's id is its name.
pub fn test_settings(db_url: &str, sim: &SimHandle, instances: &[(&str, bool)]) -> Settings {
    let mut s = Settings::for_database(db_url);
    for (name, supplied) in instances {
        s.instances.insert(
            name.to_string(),
            InstanceConfig {
                provider: Default::default(),
                base_url: sim.base_url(),
                instance_id: name.to_string(),
                access_token: Some(TEST_TOKEN.to_string().into()),
                access_token_file: None,
                supplied_id: *supplied,
                rate_per_sec: 10_000,
                burst: 10_000,
                max_in_flight: 32,
                ..Default::default()
            },
        );
    }
    s.provider.request_timeout_ms = 400;
    s.provider.connect_timeout_ms = 400;
    let d = &mut s.daemon;
    d.concurrency = 32;
    d.batch_size = 64;
    d.lease_secs = 3;
    d.instance_lease_secs = 2;
    d.poll_interval_ms = 30;
    d.fallback_poll_ms = 500;
    d.retry_base_ms = 20;
    d.retry_max_ms = 300;
    d.settle_delay_ms = 150;
    // The simulator posts nothing after answering (no engine retries unless
    // a test holds requests): a short window keeps absence quick.
    d.engine_retry_window_ms = 300;
    d.reconcile_interval_ms = 100;
    d.rescue_interval_ms = 200;
    d.instance_probe_ms = 300;
    d.shutdown_grace_secs = 2;
    // Look-ups at a 400 ms timeout can fail many times in a row on a loaded
    // 2-core CI machine; these tests check exactly-once, not parking (the
    // store tests cover parking), so allow a few seconds of failures.
    d.reconcile_max_attempts = 40;
    s
}

/// A daemon running in this process until `stop`.
pub struct RunningDaemon {
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningDaemon {
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("daemon task panicked")
            .expect("daemon returned an error");
    }
}

pub fn spawn_daemon<S: Store>(store: S, settings: &Settings) -> RunningDaemon {
    let daemon = Daemon::new(
        store,
        wawp_instances(settings).expect("instances"),
        settings.daemon.clone(),
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(daemon.run(shutdown.clone()));
    RunningDaemon { shutdown, task }
}

/// Rows the pipeline still has to move (parked in-doubt rows excluded).
/// One query, so one snapshot: counting state by state could miss a row
/// moving back (in_doubt → pending_upload) between two queries.
pub async fn live_rows<S: Store>(store: &S) -> i64 {
    all_rows(store)
        .await
        .iter()
        .filter(|r| !r.state.is_terminal() && r.parked_at.is_none())
        .count() as i64
}

/// Every row of the outbox, in one query.
pub async fn all_rows<S: Store>(store: &S) -> Vec<statusd::model::OutboxRow> {
    store
        .list(statusd::store::ListParams {
            limit: 1_000_000,
            ..Default::default()
        })
        .await
        .unwrap()
}

/// An upstream app as a task: enqueues `text("main", i)` for each `i` of
/// `0..n`, sleeping `gap_ms` after each.
pub fn app_enqueuing<S: Store>(store: &S, n: usize, gap_ms: u64) -> tokio::task::JoinHandle<()> {
    let store = store.clone();
    tokio::spawn(async move {
        for i in 0..n {
            store.enqueue(text("main", i)).await.expect("enqueue");
            tokio::time::sleep(std::time::Duration::from_millis(gap_ms)).await;
        }
    })
}

/// Waits until every row is terminal (or parked); panics after `secs`.
pub async fn wait_drained<S: Store>(store: &S, secs: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let live = live_rows(store).await;
        if live == 0 {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "{live} rows still live after {secs}s: {:?}",
                store.summary().await.unwrap()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `assert_exactly_once`, and on failure the rows of the statuses viewers
/// did not see: their state, last error and attempt history.
pub async fn assert_exactly_once_in<S: Store>(store: &S, sim: &SimHandle, n: usize) {
    let shown: std::collections::HashSet<String> = sim
        .posted()
        .iter()
        .filter_map(|p| Some(p.body.get("text")?.as_str()?.to_string()))
        .collect();
    let mut report = String::new();
    for row in all_rows(store).await {
        let text = serde_json::from_str::<serde_json::Value>(&row.payload)
            .ok()
            .and_then(|v| v.get("text").and_then(|t| t.as_str()).map(str::to_string));
        let expected = |t: &String| {
            t.strip_prefix("status number ")
                .and_then(|i| i.parse::<usize>().ok())
                .is_some_and(|i| i < n)
        };
        if let Some(text) = text.filter(|t| expected(t) && !shown.contains(t)) {
            let history = store.attempts(row.id).await.unwrap();
            report.push_str(&format!(
                "\n{text}: state {} message_id {:?} provider_id {:?} attempts {} reconcile {} parked {:?} error {:?}\n  history {history:?}",
                row.state, row.message_id, row.provider_id, row.attempts, row.reconcile_attempts, row.parked_at, row.last_error
            ));
        }
    }
    if !report.is_empty() {
        panic!("statuses viewers never saw:{report}\nsim {:?}", sim.stats());
    }
    assert_exactly_once(sim, n);
}

/// The oracle: what viewers saw, per the simulator. Every enqueued text
/// `status number i` (i in 0..n) shown exactly once, no duplicates.
pub fn assert_exactly_once(sim: &SimHandle, n: usize) {
    let stats = sim.stats();
    assert_eq!(stats.duplicates, 0, "viewers saw duplicates: {stats:?}");
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for p in sim.posted() {
        if let Some(t) = p.body.get("text").and_then(|t| t.as_str()) {
            *seen.entry(t.to_string()).or_default() += 1;
        }
    }
    let mut lost = Vec::new();
    for i in 0..n {
        match seen.get(&format!("status number {i}")) {
            Some(1) => {}
            Some(k) => panic!("status {i} shown {k} times"),
            None => lost.push(i),
        }
    }
    assert!(
        lost.is_empty(),
        "{} statuses never shown, e.g. {:?}; sim {stats:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert_eq!(seen.len(), n, "statuses shown that nobody enqueued");
}

/// `statusd` as a child process, the way a user runs it. The child dies with
/// the test: killed when its handle drops (a failed assertion unwinds) and,
/// through `PR_SET_PDEATHSIG`, when the test binary itself dies (a signal,
/// an abort), so no daemon outlives the test holding database connections.
pub fn statusd_command() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_statusd"));
    cmd.kill_on_drop(true);
    die_with_parent(cmd.as_std_mut());
    cmd
}

/// Makes `cmd`'s process receive SIGKILL when the thread that spawned it
/// (and so the test) exits.
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `[daemon]` timings shortened for the multi-process tests, shared by
/// [`ConfigFile::short`] and [`ConfigFile::killed`].
const SHORT_TIMINGS: [(&str, u64); 8] = [
    ("poll_interval_ms", 50),
    ("retry_base_ms", 50),
    ("retry_max_ms", 1000),
    ("settle_delay_ms", 300),
    ("reconcile_interval_ms", 200),
    ("rescue_interval_ms", 300),
    ("instance_probe_ms", 500),
    ("shutdown_grace_secs", 3),
];

/// The config file (`default.toml`) the `statusd` processes of a test read:
/// the database at `db_url`, one instance `main` on the simulator at
/// `sim_url` (its token comes from the environment), the admin server off
/// unless [`ConfigFile::admin`] binds it, and only the `[daemon]` keys set
/// here (the others keep the daemon's defaults; a misspelt key makes the
/// daemon refuse the file).
pub struct ConfigFile {
    db_url: String,
    sim_url: String,
    max_connections: u32,
    daemon: Vec<(&'static str, u64)>,
    admin_bind: Option<String>,
    connect_timeout_ms: u64,
    request_timeout_ms: u64,
}

impl ConfigFile {
    /// Four database connections, no `[daemon]` key, the admin server off,
    /// provider timeouts 500 ms (connect) and 800 ms (request).
    pub fn new(db_url: &str, sim_url: &str) -> ConfigFile {
        ConfigFile {
            db_url: db_url.to_string(),
            sim_url: sim_url.to_string(),
            max_connections: 4,
            daemon: Vec::new(),
            admin_bind: None,
            connect_timeout_ms: 500,
            request_timeout_ms: 800,
        }
    }

    /// What every multi-process test's daemon starts from
    /// ([`write_daemon_config`]): short timings throughout.
    pub fn short(db_url: &str, sim_url: &str) -> ConfigFile {
        ConfigFile::new(db_url, sim_url)
            .daemon(&[
                ("concurrency", 16),
                ("batch_size", 32),
                ("lease_secs", 4),
                ("instance_lease_secs", 2),
                ("fallback_poll_ms", 1000),
                ("engine_retry_window_ms", 300),
                ("reconcile_max_attempts", 1000),
            ])
            .daemon(&SHORT_TIMINGS)
    }

    /// For daemons SIGKILLed mid-work: many rows in flight, short leases and
    /// settle delay (rows killed mid-call are reconciled quickly), a 1 s
    /// request timeout.
    pub fn killed(db_url: &str, sim_url: &str) -> ConfigFile {
        ConfigFile::new(db_url, sim_url)
            .daemon(&[
                ("concurrency", 48),
                ("batch_size", 64),
                ("lease_secs", 2),
                ("fallback_poll_ms", 500),
            ])
            .daemon(&SHORT_TIMINGS)
            .provider_timeouts(500, 1000)
    }

    pub fn max_connections(mut self, n: u32) -> ConfigFile {
        self.max_connections = n;
        self
    }

    /// Sets these `[daemon]` keys (a key set again takes the new value).
    pub fn daemon(mut self, keys: &[(&'static str, u64)]) -> ConfigFile {
        for &(key, value) in keys {
            match self.daemon.iter_mut().find(|(k, _)| *k == key) {
                Some(kv) => kv.1 = value,
                None => self.daemon.push((key, value)),
            }
        }
        self
    }

    /// The admin server on, bound to `bind`.
    pub fn admin(mut self, bind: &str) -> ConfigFile {
        self.admin_bind = Some(bind.to_string());
        self
    }

    pub fn provider_timeouts(mut self, connect_ms: u64, request_ms: u64) -> ConfigFile {
        self.connect_timeout_ms = connect_ms;
        self.request_timeout_ms = request_ms;
        self
    }

    /// Writes `dir/default.toml`; `dir`, for `--config-dir`.
    pub fn write(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let daemon: String = self
            .daemon
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect();
        let admin = match &self.admin_bind {
            None => "enabled = false".to_string(),
            Some(bind) => format!("enabled = true\nbind = \"{bind}\""),
        };
        let cfg = format!(
            r#"
[database]
url = "{}"
max_connections = {}

[daemon]
{daemon}
[admin]
{admin}

[provider]
connect_timeout_ms = {}
request_timeout_ms = {}

[instances.main]
base_url = "{}"
instance_id = "main"
supplied_id = true
rate_per_sec = 5000
burst = 500
"#,
            self.db_url,
            self.max_connections,
            self.connect_timeout_ms,
            self.request_timeout_ms,
            self.sim_url
        );
        std::fs::write(dir.join("default.toml"), cfg).expect("write default.toml");
        dir.to_path_buf()
    }
}

/// Writes the config every multi-process test's daemon starts from into
/// `dir/default.toml` ([`ConfigFile::short`]): short timings, the admin
/// server off, one instance `main` on the simulator at `sim_url`. A test
/// changes single settings with `STATUSD__…` variables, as an operator would.
pub fn write_daemon_config(dir: &std::path::Path, db_url: &str, sim_url: &str) {
    ConfigFile::short(db_url, sim_url).write(dir);
}

/// `statusd --config-dir CFG ARGS…` with none of the caller's `STATUSD*`
/// variables: only the tests' instance and admin tokens, and
/// `STATUSD_ENV=label`.
pub fn statusd_isolated(
    cfg: &std::path::Path,
    args: &[&str],
    label: &str,
) -> tokio::process::Command {
    let mut cmd = statusd_command();
    cmd.arg("--config-dir").arg(cfg).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("STATUSD") {
            cmd.env_remove(k);
        }
    }
    cmd.env("STATUSD_ENV", label)
        .env("STATUSD__INSTANCES__MAIN__ACCESS_TOKEN", TEST_TOKEN)
        .env("STATUSD__ADMIN__TOKEN", "admin-token-for-tests")
        .env_remove("RUST_LOG");
    cmd
}

/// [`statusd_isolated`] run to the end, stdin closed; panics with its
/// stderr unless it exits 0; its stdout.
pub async fn statusd_isolated_ok(cfg: &std::path::Path, args: &[&str], label: &str) -> String {
    let out = statusd_isolated(cfg, args, label)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run statusd");
    assert!(
        out.status.success(),
        "statusd {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `statusd enqueue --instance main --text "status number i"` for each `i`
/// of `chunk`, as [`statusd_isolated_ok`] children all at once.
pub async fn enqueue_children(cfg: &std::path::Path, label: &str, chunk: &[usize]) {
    let runs: Vec<_> = chunk
        .iter()
        .map(|i| {
            let text = format!("status number {i}");
            async move {
                let args = ["enqueue", "--instance", "main", "--text", &text];
                statusd_isolated_ok(cfg, &args, label).await;
            }
        })
        .collect();
    futures_util::future::join_all(runs).await;
}

/// `log`, opened for appending (created if need be).
fn append_to(log: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file")
}

/// `statusd --config-dir CFG …` with the instance token from the
/// environment and `env` on top, its output appended to `log`.
pub fn statusd_in(
    cfg: &std::path::Path,
    log: &std::path::Path,
    env: &[(&str, &str)],
) -> tokio::process::Command {
    let log = append_to(log);
    let mut cmd = statusd_command();
    cmd.arg("--config-dir")
        .arg(cfg)
        .env("STATUSD__INSTANCES__MAIN__ACCESS_TOKEN", TEST_TOKEN)
        .env_remove("RUST_LOG")
        .stdout(log.try_clone().expect("log file"))
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// `statusd run` with JSON logs at `level` (see [`statusd_in`]).
pub fn spawn_run(
    cfg: &std::path::Path,
    log: &std::path::Path,
    level: &str,
    env: &[(&str, &str)],
) -> tokio::process::Child {
    statusd_in(cfg, log, env)
        .args(["--log-format", "json", "--log-level", level, "run"])
        .spawn()
        .expect("spawn statusd run")
}

/// `statusd run` with JSON logs at info, as [`statusd_isolated`] runs it
/// (`label`), stdin closed, its output appended to `log`.
pub fn spawn_run_isolated(
    cfg: &std::path::Path,
    log: &std::path::Path,
    label: &str,
) -> tokio::process::Child {
    let log = append_to(log);
    statusd_isolated(
        cfg,
        &["--log-format", "json", "--log-level", "info", "run"],
        label,
    )
    .stdin(std::process::Stdio::null())
    .stdout(log.try_clone().expect("log"))
    .stderr(log)
    .spawn()
    .expect("spawn statusd run")
}

/// What the daemons wrote to `log` so far (nothing if it does not exist).
pub fn read_log(log: &std::path::Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Waits until the store holds exactly `n` rows, all posted, with `daemon`
/// running throughout: panics with its log if it exits, and with the count
/// after `within`. Polls every 100 ms.
pub async fn wait_all_posted<S: Store>(
    store: &S,
    daemon: &mut tokio::process::Child,
    log: &std::path::Path,
    n: usize,
    within: std::time::Duration,
) {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = daemon.try_wait().expect("poll daemon") {
            panic!("the daemon exited ({status}):\n{}", read_log(log));
        }
        let rows = all_rows(store).await;
        let posted = rows
            .iter()
            .filter(|r| r.state == statusd::model::State::Posted)
            .count();
        if posted == n && rows.len() == n {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{posted} of {} rows posted ({n} enqueued): {:?}",
            rows.len(),
            store.summary().await.unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Polls every `every_ms` until no row is live ([`live_rows`]); once `secs`
/// have passed, panics with `what` and the store's summary.
pub async fn drain_within<S: Store>(store: &S, secs: u64, every_ms: u64, what: &str) {
    drain_within_or(store, secs, every_ms, what, String::new).await
}

/// [`drain_within`], its panic message followed by `context()`.
pub async fn drain_within_or<S: Store>(
    store: &S,
    secs: u64,
    every_ms: u64,
    what: &str,
    context: impl Fn() -> String,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while live_rows(store).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {:?}{}",
            store.summary().await,
            context()
        );
        tokio::time::sleep(std::time::Duration::from_millis(every_ms)).await;
    }
}

/// The `sqlite3` command-line tool on `file`, reading statements from its
/// stdin (piped, as is its stderr); it dies with the test like every child.
pub fn spawn_sqlite3(file: &std::path::Path, stdout: std::process::Stdio) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new("sqlite3");
    cmd.arg("-bail")
        .arg(file)
        .stdin(std::process::Stdio::piped())
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    die_with_parent(cmd.as_std_mut());
    cmd.spawn()
        .expect("the sqlite3 command-line tool (installed by .ci/run)")
}

/// Feeds `cli` (a [`spawn_sqlite3`]) `.timeout 10000` and then `insert(i)`
/// for each `i` of `rows`, flushing and pausing `pause` after every row whose
/// `i` is a multiple of `every`; closes its stdin and waits for it.
pub async fn sqlite3_feed(
    mut cli: tokio::process::Child,
    rows: std::ops::Range<usize>,
    insert: fn(usize) -> String,
    every: usize,
    pause: std::time::Duration,
) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut stdin = cli.stdin.take().expect("stdin");
    stdin
        .write_all(b".timeout 10000\n")
        .await
        .expect("sqlite3 stdin");
    for i in rows {
        stdin
            .write_all(insert(i).as_bytes())
            .await
            .expect("sqlite3 stdin");
        if i % every == 0 {
            stdin.flush().await.expect("flush");
            tokio::time::sleep(pause).await;
        }
    }
    drop(stdin);
    cli.wait_with_output().await.expect("sqlite3 exits")
}

/// Runs `sql` with `cli` (a [`spawn_sqlite3`]) after `.timeout 10000`;
/// what it printed and how it exited.
pub async fn sqlite3_run(mut cli: tokio::process::Child, sql: &str) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut stdin = cli.stdin.take().expect("stdin");
    stdin
        .write_all(format!(".timeout 10000\n{sql}\n").as_bytes())
        .await
        .expect("sqlite3 stdin");
    drop(stdin);
    cli.wait_with_output().await.expect("sqlite3 exits")
}

/// An app as the admin and dashboard tests need it (zero-to-production's
/// `spawn_app`): the store, a simulator, the daemon built over both (not
/// yet running: [`TestApp::run_daemon`]), and its admin server on a free
/// port with a client.
pub struct TestApp<S: Store> {
    pub db_url: String,
    pub store: S,
    pub sim: SimHandle,
    pub daemon: Option<Daemon<S, WawpClient>>,
    /// `http://127.0.0.1:<port>` of the admin server.
    pub base: String,
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts [`TestApp`] over `store` (of the database at `db_url`), with a
/// simulator configured by `sim`, the given instances (name, supplied id)
/// and admin token.
pub async fn spawn_app<S: Store>(
    store: S,
    db_url: &str,
    sim: SimConfig,
    instances: &[(&str, bool)],
    admin_token: &str,
) -> TestApp<S> {
    let sim = start_sim(sim).await;
    let settings = test_settings(db_url, &sim, instances);
    let daemon = Daemon::new(
        store.clone(),
        wawp_instances(&settings).expect("instances"),
        settings.daemon.clone(),
    );
    let admin = AdminServer::bind(
        &AdminSettings {
            enabled: true,
            bind: "127.0.0.1:0".into(),
            token: Some(admin_token.to_string().into()),
        },
        daemon.operator(),
    )
    .await
    .expect("bind the admin server");
    let base = format!("http://{}", admin.local_addr());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(admin.serve(shutdown.clone()));
    TestApp {
        db_url: db_url.to_string(),
        store,
        sim,
        daemon: Some(daemon),
        base,
        http: reqwest::Client::new(),
        shutdown,
        server,
    }
}

impl<S: Store> TestApp<S> {
    /// Runs the daemon's services until [`TestApp::stop`].
    pub fn run_daemon(&mut self) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        let daemon = self.daemon.take().expect("the daemon runs once");
        tokio::spawn(daemon.run(self.shutdown.clone()))
    }

    /// A client for the admin API, calling it with `token`.
    pub fn api(&self, token: &str) -> crate::api::Api {
        crate::api::Api::with_client(self.http.clone(), &self.base, token)
    }

    /// Shuts down; the admin server must stop within 5 s.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), self.server)
            .await
            .expect("the admin server stops")
            .expect("the admin server task")
            .expect("the admin server");
    }
}
