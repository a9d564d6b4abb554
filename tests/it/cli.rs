//! The operator CLI, run as the real binary against a temporary config
//! directory and a fresh SQLite file or PostgreSQL database.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::support::{TestDb, TEST_TOKEN};

/// A config directory and the environment the binary runs with.
struct Cli {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

/// What one run printed, with its exit code.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Fails (non-zero) with `needle` in stderr.
    fn fails_with(self, needle: &str) -> Run {
        assert_ne!(self.code, 0, "expected failure\nstdout:\n{}", self.stdout);
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.stderr
        );
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.stdout))
    }

    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl Cli {
    /// A config directory whose default.toml is `toml`.
    fn new(toml: &str) -> Cli {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("default.toml"), toml).expect("write default.toml");
        Cli {
            dir,
            env: Vec::new(),
        }
    }

    /// Config for `db_url` with one instance, `main`, whose token comes from
    /// the environment as documented.
    fn with_db(db_url: &str) -> Cli {
        let mut cli = Cli::new(&format!(
            "[database]\nurl = {db_url:?}\n\n[instances.main]\ninstance_id = \"main\"\n"
        ));
        cli.env("STATUSD__INSTANCES__MAIN__ACCESS_TOKEN", TEST_TOKEN);
        cli
    }

    fn env(&mut self, k: &str, v: &str) {
        self.env.push((k.into(), v.into()));
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `statusd --config-dir DIR ARGS…` with this test's environment only.
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = crate::support::statusd_command();
        cmd.arg("--config-dir").arg(self.path()).args(args);
        // The developer's own STATUSD_* variables must not leak into the test.
        for (k, _) in std::env::vars() {
            if k.starts_with("STATUSD") {
                cmd.env_remove(k);
            }
        }
        cmd.env("STATUSD_ENV", "cli-test").env_remove("RUST_LOG");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// [`Cli::run`] with `input` on standard input.
    async fn run_with_stdin(&self, args: &[&str], input: &str) -> Run {
        use tokio::io::AsyncWriteExt;
        let mut child = self
            .command(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run statusd");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).await.unwrap();
        drop(stdin);
        let Output {
            status,
            stdout,
            stderr,
        } = child.wait_with_output().await.unwrap();
        Run {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    async fn run(&self, args: &[&str]) -> Run {
        let Output {
            status,
            stdout,
            stderr,
        } = self.command(args).output().await.expect("run statusd");
        Run {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }
}

/// migrate → enqueue → ls → show → cancel → retry → stats → schedules, and
/// the refusals along the way.
async fn lifecycle(db: &TestDb) {
    let cli = Cli::with_db(&db.url);
    let out = cli.run(&["migrate"]).await.ok();
    assert!(out.stdout.contains("migrations applied"), "{}", out.stdout);
    // Twice is fine: migrations are idempotent.
    cli.run(&["migrate"]).await.ok();

    let first = cli
        .run(&[
            "enqueue",
            "--instance",
            "main",
            "--text",
            "Open until 8 pm",
            "--background-color",
            "#25D366",
            "--dedupe-key",
            "evening-1",
            "--json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(first["inserted"], true);
    let id = first["id"].as_str().expect("id").to_string();

    let again = cli
        .run(&[
            "enqueue",
            "--instance",
            "main",
            "--text",
            "Open until 8 pm",
            "--dedupe-key",
            "evening-1",
        ])
        .await
        .ok();
    assert!(again.stdout.contains("deduplicated"), "{}", again.stdout);
    assert!(again.stdout.contains(&id), "{}", again.stdout);

    cli.run(&[
        "enqueue",
        "--instance",
        "main",
        "--image",
        "https://cdn.example.com/menu.jpg",
        "--caption",
        "Menu",
        "--priority",
        "5",
        "--not-before",
        "2030-01-01T08:00:00+01:00",
    ])
    .await
    .ok();

    let ls = cli.run(&["ls"]).await.ok();
    assert!(ls.stdout.contains(&id), "{}", ls.stdout);
    assert!(ls.stdout.contains("queued"), "{}", ls.stdout);
    assert!(ls.stdout.contains("image"), "{}", ls.stdout);
    let rows = cli
        .run(&[
            "ls",
            "--state",
            "queued",
            "--instance",
            "main",
            "--since",
            "1h",
            "--json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(rows.as_array().map(Vec::len), Some(2), "{rows}");
    let filtered = cli.run(&["ls", "--state", "posted"]).await.ok();
    assert!(filtered.stdout.contains("no statuses match"));
    let later = cli
        .run(&["ls", "--since", "2999-01-01T00:00:00Z", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(later.as_array().map(Vec::len), Some(0));

    let show = cli.run(&["show", "evening-1"]).await.ok();
    assert!(show.stdout.contains(&id), "{}", show.stdout);
    assert!(show.stdout.contains("Open until 8 pm"), "{}", show.stdout);
    assert!(show.stdout.contains("no attempts yet"), "{}", show.stdout);
    let shown = cli.run(&["show", &id, "--json"]).await.ok().json();
    assert_eq!(shown["status"]["id"], id.as_str());
    assert_eq!(shown["status"]["payload"]["backgroundColor"], "#25D366");
    assert_eq!(shown["attempts"].as_array().map(Vec::len), Some(0));

    let cancel = cli.run(&["cancel", "evening-1"]).await.ok();
    assert!(
        cancel.stdout.contains("queued -> cancelled"),
        "{}",
        cancel.stdout
    );
    cli.run(&["cancel", &id])
        .await
        .fails_with("is `cancelled`: cancel is not allowed");
    let retry = cli.run(&["retry", &id]).await.ok();
    assert!(
        retry.stdout.contains("cancelled -> queued"),
        "{}",
        retry.stdout
    );
    cli.run(&["retry", &id])
        .await
        .fails_with("is `queued`: retry is not allowed");

    for cmd in ["show", "retry", "cancel"] {
        cli.run(&[cmd, "no-such-row"])
            .await
            .fails_with("no status with id, message id or dedupe key `no-such-row`");
    }

    let stats = cli.run(&["stats", "--json"]).await.ok().json();
    assert_eq!(stats["instances"][0]["instance"], "main");
    assert_eq!(stats["instances"][0]["counts"]["queued"], 2);
    assert_eq!(stats["instances"][0]["total"], 2);
    let table = cli.run(&["stats"]).await.ok();
    assert!(table.stdout.contains("OLDEST_PENDING"), "{}", table.stdout);

    cli.run(&[
        "schedule",
        "add",
        "--name",
        "morning",
        "--cron",
        "0 0 8 * * *",
        "--timezone",
        "Europe/Berlin",
        "--instance",
        "main",
        "--text",
        "Good morning",
    ])
    .await
    .ok();
    cli.run(&[
        "schedule",
        "add",
        "--name",
        "morning",
        "--cron",
        "0 0 9 * * *",
        "--instance",
        "main",
        "--text",
        "again",
    ])
    .await
    .fails_with("schedule named `morning` already exists");
    let list = cli.run(&["schedule", "ls", "--json"]).await.ok().json();
    assert_eq!(list[0]["name"], "morning");
    assert_eq!(list[0]["timezone"], "Europe/Berlin");
    cli.run(&["schedule", "rm", "morning"]).await.ok();
    cli.run(&["schedule", "rm", "morning"])
        .await
        .fails_with("no schedule named `morning`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_on_sqlite() {
    lifecycle(&TestDb::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_on_postgres() {
    lifecycle(&TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_the_field_named() {
    let db = TestDb::sqlite().await;
    let cli = Cli::with_db(&db.url);
    cli.run(&["migrate"]).await.ok();

    // Usage errors exit 2, like every clap program.
    let r = cli.run(&["ls", "--state", "done"]).await;
    assert_eq!(r.code, 2);
    r.fails_with("unknown state `done`");
    cli.run(&["ls", "--since", "yesterday"])
        .await
        .fails_with("`yesterday` is not a duration");
    cli.run(&["ls", "--limit", "0"]).await.fails_with("--limit");
    cli.run(&[
        "enqueue",
        "--instance",
        "main",
        "--text",
        "x",
        "--not-before",
        "tomorrow",
    ])
    .await
    .fails_with("--not-before");
    cli.run(&[
        "enqueue",
        "--instance",
        "main",
        "--text",
        "x",
        "--image",
        "https://a/b.jpg",
    ])
    .await
    .fails_with("cannot be used with");

    cli.run(&[
        "enqueue",
        "--instance",
        "main",
        "--kind",
        "text",
        "--payload",
        r#"{"text":5}"#,
    ])
    .await
    .fails_with("payload.text: must be a string");
    cli.run(&[
        "enqueue",
        "--instance",
        "main",
        "--kind",
        "text",
        "--payload",
        "{oops",
    ])
    .await
    .fails_with("payload: not valid JSON");
    cli.run(&[
        "enqueue",
        "--instance",
        "main",
        "--kind",
        "gif",
        "--payload",
        "{}",
    ])
    .await
    .fails_with("kind: unknown kind `gif`");
    cli.run(&[
        "enqueue",
        "--instance",
        "main",
        "--text",
        "x",
        "--background-color",
        "red",
    ])
    .await
    .fails_with("payload.backgroundColor (flag --background-color)");
    cli.run(&[
        "enqueue",
        "--instance",
        "main",
        "--image",
        "http://insecure/a.jpg",
    ])
    .await
    .fails_with("payload.file.url (flag --image): must be an https:// URL");
    cli.run(&[
        "enqueue",
        "--instance",
        "main",
        "--video",
        "https://cdn/clip",
    ])
    .await
    .fails_with("--mimetype is required");
    cli.run(&["enqueue", "--instance", "other", "--text", "x"])
        .await
        .fails_with("`other` is not a configured instance (configured: main)");
    cli.run(&[
        "schedule",
        "add",
        "--name",
        "n",
        "--cron",
        "0 8 * * *",
        "--instance",
        "main",
        "--text",
        "x",
    ])
    .await
    .fails_with("--cron: `0 8 * * *` is not a cron expression");
    cli.run(&[
        "schedule",
        "add",
        "--name",
        "n",
        "--cron",
        "0 0 8 * * *",
        "--timezone",
        "Mars/Base",
        "--instance",
        "main",
        "--text",
        "x",
    ])
    .await
    .fails_with("--timezone: `Mars/Base` is not an IANA time zone");

    // Nothing of the above reached the table.
    let rows = cli.run(&["ls", "--json"]).await.ok().json();
    assert_eq!(rows.as_array().map(Vec::len), Some(0), "{rows}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_or_unmigrated_databases_are_named_without_passwords() {
    let cli = Cli::with_db("sqlite://unused.db");
    let r = cli
        .run(&[
            "--database-url",
            "postgres://statusd:hunter2@127.0.0.1:1/statusd",
            "ls",
        ])
        .await
        .fails_with(
            "cannot connect to the database at postgres://statusd:[redacted]@127.0.0.1:1/statusd",
        );
    assert!(!r.all().contains("hunter2"), "{}", r.all());

    let missing = cli
        .run(&["--database-url", "sqlite:///no/such/dir/statusd.db", "ls"])
        .await
        .fails_with("cannot open the database at sqlite:///no/such/dir/statusd.db");
    assert!(!missing.all().contains(TEST_TOKEN));

    let db = TestDb::sqlite().await;
    cli.run(&["--database-url", &db.url, "ls"])
        .await
        .fails_with("run `statusd migrate` first");

    cli.run(&["--database-url", "mysql://x/y", "ls"])
        .await
        .fails_with("database.url: must start with sqlite:, postgres:// or postgresql://");
}

/// An operator command on an empty PostgreSQL database says what to do, as
/// on SQLite; `migrate` then makes the same command work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmigrated_postgres_database_asks_for_migrate() {
    let db = TestDb::postgres().await;
    let cli = Cli::with_db(&db.url);
    cli.run(&["stats"])
        .await
        .fails_with("run `statusd migrate` first");
    cli.run(&["migrate"]).await.ok();
    cli.run(&["stats"]).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_work_without_instances_but_run_needs_them() {
    let db = TestDb::sqlite().await;
    let cli = Cli::new(&format!("[database]\nurl = {:?}\n", db.url));
    cli.run(&["migrate"]).await.ok();
    let r = cli
        .run(&["enqueue", "--instance", "main", "--text", "hi"])
        .await
        .ok();
    assert!(r.stdout.contains("enqueued"), "{}", r.stdout);
    cli.run(&["ls"]).await.ok();
    cli.run(&["stats"]).await.ok();
    cli.run(&["run"])
        .await
        .fails_with("instances: at least one instance must be configured");
    cli.run(&["config", "check"])
        .await
        .fails_with("1 configuration problem");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_reports_every_problem_and_no_secret() {
    let token_file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(token_file.path(), "file-SECRET-77aa\n").expect("write token file");
    let mut cli = Cli::new(&format!(
        r#"
[database]
url = "postgres://statusd:dbpass-SECRET@127.0.0.1:5432/statusd"
max_connections = 0

[daemon]
concurrency = 0
lease_secs = 1
purge_cron = "every night"

[admin]
bind = "everywhere"
token = "admin-SECRET-1234"

[instances.main]
instance_id = ""
base_url = "ftp://api.example"
rate_per_sec = 0

[instances.files]
instance_id = "f"
access_token_file = {:?}
"#,
        token_file.path()
    ));
    cli.env("STATUSD__INSTANCES__MAIN__ACCESS_TOKEN", TEST_TOKEN);

    let check = cli
        .run(&["config", "check"])
        .await
        .fails_with("configuration problems");
    for key in [
        "database.max_connections",
        "daemon.concurrency",
        "daemon.lease_secs",
        "daemon.purge_cron",
        "admin.bind",
        "instances.main.base_url",
        "instances.main.instance_id",
        "instances.main.rate_per_sec",
    ] {
        assert!(
            check
                .stdout
                .lines()
                .any(|l| l.starts_with(&format!("{key}: "))),
            "no problem reported for {key}:\n{}",
            check.stdout
        );
    }

    let show = cli.run(&["config", "show"]).await.ok();
    assert!(show.stdout.contains("[instances.main]"), "{}", show.stdout);
    assert!(show.stdout.contains("[redacted]"), "{}", show.stdout);

    // The operator commands refuse the bad database section, and say why.
    let ls = cli
        .run(&["ls"])
        .await
        .fails_with("database.max_connections");

    for out in [&check, &show, &ls] {
        for secret in [
            TEST_TOKEN,
            "file-SECRET-77aa",
            "admin-SECRET-1234",
            "dbpass-SECRET",
        ] {
            assert!(
                !out.all().contains(secret),
                "{secret} leaked:\n{}",
                out.all()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_tokens_come_from_the_environment() {
    let toml = "[database]\nurl = \"sqlite://x.db\"\n\n[instances.main]\ninstance_id = \"m1\"\n";
    let mut cli = Cli::new(toml);
    // Without the variable the instance has no token, and the key says so.
    cli.run(&["config", "check"])
        .await
        .fails_with("1 configuration problem");
    let missing = cli.run(&["config", "check"]).await;
    assert!(
        missing.stdout.contains("instances.main.access_token:"),
        "{}",
        missing.stdout
    );

    cli.env("STATUSD__INSTANCES__MAIN__ACCESS_TOKEN", TEST_TOKEN);
    cli.env("STATUSD__INSTANCES__MAIN__RATE_PER_SEC", "7");
    let ok = cli.run(&["config", "check"]).await.ok();
    assert!(ok.stdout.contains("configuration OK"), "{}", ok.stdout);
    let show = cli.run(&["config", "show"]).await.ok();
    assert!(show.stdout.contains("rate_per_sec = 7"), "{}", show.stdout);
    assert!(!show.all().contains(TEST_TOKEN));

    // The loader lowercases variable names: an upper-case instance in a file
    // can never get its token from the environment. Say so, by key.
    let mut upper = Cli::new(&toml.replace("[instances.main]", "[instances.Main]"));
    upper.env("STATUSD__INSTANCES__MAIN__ACCESS_TOKEN", TEST_TOKEN);
    let r = upper
        .run(&["config", "check"])
        .await
        .fails_with("configuration problem");
    assert!(
        r.stdout
            .contains("instances.Main: instance names must be lowercase"),
        "{}",
        r.stdout
    );
    assert!(!r.all().contains(TEST_TOKEN));
}

fn repo_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_config_files_parse() {
    // default.toml alone: valid except that no instance is configured.
    let mut cli = Cli::new("");
    std::fs::copy(
        repo_config().join("default.toml"),
        cli.path().join("default.toml"),
    )
    .expect("copy default.toml");
    let r = cli
        .run(&["config", "check"])
        .await
        .fails_with("1 configuration problem");
    assert_eq!(
        r.stdout.trim(),
        "instances: at least one instance must be configured"
    );

    // example.toml on top, with its tokens from the environment as documented.
    let example = repo_config().join("example.toml");
    let example = example.to_str().expect("utf-8 path");
    cli.env("STATUSD__INSTANCES__MAIN__ACCESS_TOKEN", TEST_TOKEN);
    cli.env("STATUSD__INSTANCES__PROMO__ACCESS_TOKEN", "promo-SECRET-9");
    let ok = cli
        .run(&["--config", example, "config", "check"])
        .await
        .ok();
    assert!(
        ok.stdout.contains("instances: 2 (main, promo)"),
        "{}",
        ok.stdout
    );
    let show = cli.run(&["--config", example, "config", "show"]).await.ok();
    assert!(!show.all().contains(TEST_TOKEN) && !show.all().contains("promo-SECRET-9"));
}

/// A parked in-doubt row that the operator saw on the phone: `statusd
/// confirm` records it posted (never sent again); every other state is
/// refused with why.
async fn confirm_flow<S: statusd::store::Store>(store: S, db: &TestDb) {
    use statusd::model::State;
    use statusd::store::{Completion, Effect, Transition};
    let cli = Cli::with_db(&db.url);
    cli.run(&["migrate"]).await.ok();
    for key in ["seen-1", "waiting-1"] {
        cli.run(&[
            "enqueue",
            "--instance",
            "main",
            "--text",
            key,
            "--dedupe-key",
            key,
        ])
        .await
        .ok();
    }
    let seen = store.find("seen-1").await.unwrap().unwrap();
    // As a daemon leaves it: claimed, answer lost, look-ups gave up.
    let fresh = vec![
        "3EB0C0FFEE0000000001".to_string(),
        "3EB0C0FFEE0000000002".into(),
    ];
    let claimed = store
        .claim(statusd::store::ClaimParams {
            owner: "test".into(),
            limit: 1,
            lease: std::time::Duration::from_secs(60),
            fresh_ids: fresh,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, seen.id, "the older row is claimed first");
    let mut t = Transition::new(seen.id, 1, State::InDoubt);
    t.effect = Effect::Park;
    let c = Completion {
        transition: t,
        started_at: chrono::Utc::now(),
        latency: std::time::Duration::from_millis(5),
        outcome: statusd::model::AttemptOutcome::InDoubt,
    };
    assert_eq!(store.complete(&[c]).await.unwrap(), 1);

    let out = cli.run(&["confirm", "seen-1"]).await.ok();
    assert!(out.stdout.contains("in_doubt -> posted"), "{}", out.stdout);
    let shown = cli.run(&["show", "seen-1", "--json"]).await.ok().json();
    assert_eq!(shown["status"]["state"], "posted");
    assert_eq!(
        shown["status"]["last_error"],
        statusd::store::CONFIRMED_BY_OPERATOR
    );
    assert!(shown["status"]["parked_at"].is_null());
    cli.run(&["confirm", "seen-1"])
        .await
        .fails_with("confirm is not allowed");
    let r = cli.run(&["confirm", "waiting-1"]).await;
    assert!(r.stderr.contains("only a status in doubt"), "{}", r.stderr);
    r.fails_with("is `queued`: confirm is not allowed");
    cli.run(&["confirm", "no-such-row"])
        .await
        .fails_with("no status with id, message id or dedupe key `no-such-row`");
    assert_eq!(
        store.find("waiting-1").await.unwrap().unwrap().state,
        State::Queued,
        "a refused confirm changes nothing"
    );

    // Several rows at once: a refusal does not stop the others, is named,
    // and fails the command; `-` reads the keys from standard input.
    let waiting = store.find("waiting-1").await.unwrap().unwrap().id;
    let r = cli
        .run(&["cancel", "no-such-row", "waiting-1", "seen-1"])
        .await;
    assert!(
        r.stdout
            .contains(&format!("{waiting}: queued -> cancelled")),
        "{}",
        r.stdout
    );
    assert!(r.stderr.contains("2 of 3 not done"), "{}", r.stderr);
    assert!(
        r.stderr.contains("no-such-row") && r.stderr.contains("seen-1"),
        "{}",
        r.stderr
    );
    r.fails_with("is `posted`: cancel is not allowed");
    let r = cli
        .run_with_stdin(&["retry", "-"], "\nwaiting-1\n\n")
        .await
        .ok();
    assert!(r.stdout.contains("cancelled -> queued"), "{}", r.stdout);
    cli.run_with_stdin(&["confirm", "-"], "\n")
        .await
        .fails_with("no row given");
}

crate::both_backends!(confirm_flow);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_help_has_an_example() {
    let cli = Cli::new("");
    let commands: &[&[&str]] = &[
        &[],
        &["migrate"],
        &["enqueue"],
        &["ls"],
        &["show"],
        &["stats"],
        &["retry"],
        &["cancel"],
        &["confirm"],
        &["webhook", "register"],
        &["capabilities", "set"],
        &["schedule"],
        &["schedule", "add"],
        &["schedule", "ls"],
        &["schedule", "rm"],
        &["config"],
        &["config", "check"],
        &["config", "show"],
        &["run"],
        &["sim"],
        &["demo"],
    ];
    for cmd in commands {
        let mut args = cmd.to_vec();
        args.push("--help");
        let r = cli.run(&args).await.ok();
        assert!(
            r.stdout.contains("Example"),
            "`statusd {}` has no example:\n{}",
            args.join(" "),
            r.stdout
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_refuses_the_daemon_config_and_bad_knobs() {
    let cli = Cli::new("");
    cli.run(&["--config", "x.toml", "sim", "--port", "0"])
        .await
        .fails_with("--sim-config");
    let knobs = cli.path().join("sim.json");
    std::fs::write(&knobs, r#"{"lost_response": 0.9, "error_5xx_after": 0.9}"#)
        .expect("write sim.json");
    cli.run(&[
        "sim",
        "--port",
        "0",
        "--sim-config",
        knobs.to_str().expect("utf-8"),
    ])
    .await
    .fails_with("simulator configuration");
}

impl Cli {
    /// Config for `statusd run` on `db_url` against the simulator at
    /// `sim_url`: one instance `main`, the admin server on a free port.
    fn for_run(db_url: &str, sim_url: &str) -> Cli {
        let mut cli = Cli::new(&format!(
            "[database]\nurl = {db_url:?}\n\n[daemon]\npoll_interval_ms = 20\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n\
             [instances.main]\nbase_url = {sim_url:?}\ninstance_id = \"main\"\n"
        ));
        cli.env("STATUSD__INSTANCES__MAIN__ACCESS_TOKEN", TEST_TOKEN);
        cli
    }

    /// Waits (by `statusd ls`) until `n` rows are in `state`.
    async fn wait_for_rows(&self, state: &str, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let rows = self
                .run(&["ls", "--state", state, "--json"])
                .await
                .ok()
                .json();
            if rows.as_array().map(Vec::len) == Some(n) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{n} rows not `{state}` in time"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// Sends SIGTERM to a running daemon and returns its output once it exits.
async fn sigterm_and_wait(daemon: tokio::process::Child) -> Output {
    let pid = daemon.id().expect("daemon pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(killed.success());
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        daemon.wait_with_output(),
    )
    .await
    .expect("daemon stops after SIGTERM")
    .expect("daemon output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_posts_and_stops_cleanly_on_sigterm() {
    let sim = crate::support::start_sim(statusd::sim::SimConfig::default()).await;
    let db = TestDb::sqlite().await;
    let cli = Cli::for_run(&db.url, &sim.base_url());
    cli.run(&["migrate"]).await.ok();
    cli.run(&["enqueue", "--instance", "main", "--text", "status number 0"])
        .await
        .ok();

    let daemon = cli
        .command(&["run"])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn statusd run");
    cli.wait_for_rows("posted", 1).await;
    let out = sigterm_and_wait(daemon).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stderr}", out.status);
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert!(!stderr.contains(TEST_TOKEN), "token in logs:\n{stderr}");
    crate::support::assert_exactly_once(&sim, 1);
}

/// A row written by an upstream app whose `instance` holds a newline and an
/// ANSI escape must not forge a log line or repaint the operator's terminal:
/// the daemon's text log escapes control characters in every field.
#[tokio::test]
async fn text_logs_escape_control_characters_from_rows() {
    let sim = crate::support::start_sim(statusd::sim::SimConfig::default()).await;
    let db = TestDb::sqlite().await;
    let cli = Cli::for_run(&db.url, &sim.base_url());
    cli.run(&["migrate"]).await.ok();
    let forged = "main\n2026-01-01T00:00:00Z ERROR FORGED line\u{1b}[2J";
    crate::support::exec_raw(
        &db,
        &format!(
            "INSERT INTO status_outbox (instance, kind, payload) VALUES ('{}', 'text', '{{\"text\":\"x\"}}')",
            forged.replace('\'', "''")
        ),
    )
    .await
    .expect("insert the forged row");

    let daemon = cli
        .command(&["--log-format", "text", "--log-level", "info", "run"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn statusd run");
    cli.wait_for_rows("invalid", 1).await;
    let out = sigterm_and_wait(daemon).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("FORGED"),
        "the invalid row is logged with its instance:\n{stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "raw ESC in the log:\n{stderr:?}"
    );
    assert!(
        !stderr
            .lines()
            .any(|l| l.starts_with("2026-01-01T00:00:00Z")),
        "a row forged a log line:\n{stderr}"
    );
}
