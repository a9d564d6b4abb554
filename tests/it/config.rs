//! Configuration as a user meets it: the real `statusd` binary run with a
//! config directory (or none), environment variables and secret files —
//! `config check`, `config show`, `run`, `health`, `demo --help`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::support::{TestDb, TEST_TOKEN};

/// A working directory, an optional config directory in it, and the
/// environment the binary runs with (nothing inherited from `STATUSD*`).
struct Env {
    dir: tempfile::TempDir,
    config_dir: Option<PathBuf>,
    vars: Vec<(String, String)>,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    fn ok(self) -> Out {
        assert_eq!(self.code, 0, "expected success:\n{}", self.all());
        self
    }

    fn failed(self) -> Out {
        assert_ne!(self.code, 0, "expected failure:\n{}", self.all());
        self
    }

    /// Lines `key: …` of `config check`.
    fn has_problem(&self, key: &str) -> bool {
        self.all().lines().any(|l| {
            let l = l.trim_start();
            l.strip_prefix("- ")
                .unwrap_or(l)
                .starts_with(&format!("{key}: "))
        })
    }
}

impl Env {
    /// A config directory `config/` in a fresh working directory, holding
    /// `default.toml` = `toml`; the binary is pointed at it by flag.
    fn new(toml: &str) -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_dir = dir.path().join("config");
        std::fs::create_dir(&config_dir).expect("mkdir config");
        std::fs::write(config_dir.join("default.toml"), toml).expect("write default.toml");
        Env {
            dir,
            config_dir: Some(config_dir),
            vars: Vec::new(),
        }
    }

    /// A working directory without any `config/`, and no `--config-dir`.
    fn bare() -> Env {
        Env {
            dir: tempfile::tempdir().expect("temp dir"),
            config_dir: None,
            vars: Vec::new(),
        }
    }

    fn set(&mut self, k: &str, v: &str) -> &mut Env {
        self.vars.push((k.into(), v.into()));
        self
    }

    fn file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).expect("write file");
        p
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = crate::support::statusd_command();
        cmd.current_dir(self.dir.path());
        if let Some(d) = &self.config_dir {
            cmd.arg("--config-dir").arg(d);
        }
        cmd.args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("STATUSD") {
                cmd.env_remove(k);
            }
        }
        cmd.env("STATUSD_ENV", "config-test").env_remove("RUST_LOG");
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        cmd
    }

    async fn run(&self, args: &[&str]) -> Out {
        let out = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("statusd {args:?} did not finish within 60 s"))
            .expect("run statusd");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// A valid configuration on a fresh SQLite file, one instance `main` whose
/// token comes from the environment, the admin API on `port`.
fn daemon_env(db: &TestDb, base_url: &str, port: u16) -> Env {
    let mut env = Env::new(&format!(
        "[database]\nurl = {:?}\n\n[admin]\nbind = \"127.0.0.1:{port}\"\n\n\
         [instances.main]\ninstance_id = \"main\"\nbase_url = {base_url:?}\n",
        db.url
    ));
    env.set("STATUSD__INSTANCES__MAIN__ACCESS_TOKEN", TEST_TOKEN);
    env
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `statusd run` as a child process, up when its /healthz answers.
struct Daemon {
    child: tokio::process::Child,
    base: String,
}

impl Daemon {
    async fn start(env: &Env, port: u16) -> Daemon {
        let mut child = env
            .command(&["run"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn statusd run");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        for _ in 0..300 {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use tokio::io::AsyncReadExt;
                    let _ = e.read_to_string(&mut err).await;
                }
                panic!("statusd run exited ({status}):\n{err}");
            }
            if let Ok(r) = client.get(format!("{base}/healthz")).send().await {
                if r.status().is_success() {
                    return Daemon { child, base };
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("statusd run did not answer /healthz within 30 s");
    }

    /// The HTTP status of GET /v1/stats with this bearer token.
    async fn stats_status(&self, bearer: Option<&str>) -> u16 {
        let mut req = reqwest::Client::new().get(format!("{}/v1/stats", self.base));
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("GET /v1/stats").status().as_u16()
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_blank_admin_token_is_refused_by_check_and_run() {
    let db = TestDb::sqlite().await;
    let sim = crate::support::start_sim(statusd::sim::SimConfig::default()).await;
    let port = free_port();
    for blank in ["", "   "] {
        let mut env = daemon_env(&db, &sim.base_url(), port);
        env.set("STATUSD__ADMIN__TOKEN", blank);
        let check = env.run(&["config", "check"]).await.failed();
        assert!(check.has_problem("admin.token"), "{}", check.all());
        // Before the fix `run` started and served /v1 to anyone; bounded by
        // `Env::run`'s timeout either way.
        let run = env.run(&["run"]).await.failed();
        assert!(run.stderr.contains("admin.token"), "{}", run.all());
        assert!(
            reqwest::get(format!("http://127.0.0.1:{port}/v1/stats"))
                .await
                .is_err(),
            "something answers on the admin port"
        );
    }
    // Absent: valid, the admin API answers health only (unchanged).
    let env = daemon_env(&db, &sim.base_url(), port);
    let check = env.run(&["config", "check"]).await.ok();
    assert!(check.stdout.contains("token not set"), "{}", check.stdout);
    let d = Daemon::start(&env, port).await;
    assert_eq!(d.stats_status(None).await, 403);
    assert_eq!(d.stats_status(Some("")).await, 403);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_from_the_environment_are_taken_exactly_as_written() {
    let db = TestDb::sqlite().await;
    let sim = crate::support::start_sim(statusd::sim::SimConfig::default()).await;
    // A parsing environment layer turns each into a number (0012 → 12);
    // the token must work exactly as written and its numeric reading not.
    for (token, mangled) in [
        ("0012", "12"),
        ("1e3", "1000"),
        ("12345678901234567890123", "12345678901234567000000"),
    ] {
        let port = free_port();
        let mut env = daemon_env(&db, &sim.base_url(), port);
        env.set("STATUSD__ADMIN__TOKEN", token);
        let d = Daemon::start(&env, port).await;
        assert_eq!(d.stats_status(Some(token)).await, 200, "token {token}");
        assert_eq!(d.stats_status(Some(mangled)).await, 401, "token {token}");
        d.stop().await;
    }

    // Numeric settings from the environment still become numbers.
    let mut env = daemon_env(&db, &sim.base_url(), free_port());
    env.set("STATUSD__INSTANCES__MAIN__RATE_PER_SEC", "5")
        .set("STATUSD__DAEMON__CONCURRENCY", "7")
        .set("STATUSD__ADMIN__ENABLED", "false");
    env.run(&["config", "check"]).await.ok();
    let shown: toml::Table = env
        .run(&["config", "show"])
        .await
        .ok()
        .stdout
        .parse()
        .expect("TOML");
    assert_eq!(
        shown["instances"]["main"]["rate_per_sec"].as_integer(),
        Some(5)
    );
    assert_eq!(shown["daemon"]["concurrency"].as_integer(), Some(7));
    assert_eq!(shown["admin"]["enabled"].as_bool(), Some(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_passwords_are_redacted_in_every_form_and_place() {
    let url = "postgres://statusd:pw-SECRET-1@127.0.0.1:1/statusd\
               ?sslmode=disable&password=q-SECRET-2&sslpassword=ssl-SECRET-3&application_name=x";
    let secrets = ["pw-SECRET-1", "q-SECRET-2", "ssl-SECRET-3"];
    let mut env = Env::new(&format!(
        "[database]\nurl = {url:?}\n\n[instances.main]\ninstance_id = \"m\"\n"
    ));
    env.set("STATUSD__INSTANCES__MAIN__ACCESS_TOKEN", TEST_TOKEN);

    let check = env.run(&["config", "check"]).await.ok();
    assert!(
        check
            .stdout
            .contains("postgres://statusd:[redacted]@127.0.0.1:1/statusd?"),
        "{}",
        check.stdout
    );
    let show = env.run(&["config", "show"]).await.ok();
    let shown: toml::Table = show.stdout.parse().expect("config show prints TOML");
    let shown_url = shown["database"]["url"].as_str().expect("url");
    assert!(shown_url.contains("application_name=x"), "{shown_url}");
    assert_eq!(shown_url.matches("[redacted]").count(), 3, "{shown_url}");

    // A connection error (nothing listens on port 1), and a URL that the
    // driver cannot parse, which may be quoted back in its error.
    let ls = env.run(&["ls"]).await.failed();
    assert!(
        ls.stderr
            .contains("cannot connect to the database at postgres://statusd:[redacted]@"),
        "{}",
        ls.stderr
    );
    let bad = env
        .run(&[
            "--database-url",
            "postgres://u:pw-SECRET-1@127.0.0.1:port/db?password=q-SECRET-2",
            "ls",
        ])
        .await
        .failed();
    for out in [&check, &show, &ls, &bad] {
        for s in secrets.iter().chain([&TEST_TOKEN]) {
            assert!(!out.all().contains(s), "{s} leaked:\n{}", out.all());
        }
    }
}

/// One file with a mistake of every kind, in several instances.
const MANY_MISTAKES: &str = r#"
[database]
url = "sqlite://x.db"
max_connections = "lots"

[daemon]
concurency = 4
purge_cron = "every night"

[admin]
token = ""

[instances.main]
base_url = "https://"
rate_per_sec = "fast"
access_token = "main-SECRET-1"

[instances.promo]
instance_id = "p"
acess_token = "promo-SECRET-2"
burst = -1

[instances.Shop]
instance_id = "s"
access_token = "shop-SECRET-3"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_reports_every_problem_in_one_run() {
    let env = Env::new(MANY_MISTAKES);
    let check = env.run(&["config", "check"]).await.failed();
    let expected = [
        "database.max_connections",     // wrong type
        "daemon.concurency",            // unknown key
        "daemon.purge_cron",            // bad cron
        "admin.token",                  // empty token
        "instances.main.base_url",      // no host
        "instances.main.rate_per_sec",  // wrong type
        "instances.main.instance_id",   // missing field
        "instances.promo.acess_token",  // unknown key, second instance
        "instances.promo.burst",        // wrong type, second instance
        "instances.promo.access_token", // missing (the typo above)
        "instances.Shop",               // upper-case name
    ];
    let missing: Vec<_> = expected.iter().filter(|k| !check.has_problem(k)).collect();
    assert!(
        missing.is_empty(),
        "not reported: {missing:?}\n{}",
        check.all()
    );
    assert!(
        check
            .stderr
            .contains(&format!("{} configuration problems", expected.len())),
        "{}",
        check.all()
    );
    for s in ["main-SECRET-1", "promo-SECRET-2", "shop-SECRET-3"] {
        assert!(!check.all().contains(s), "{s} leaked:\n{}", check.all());
    }
    // `run` refuses with the same list.
    let run = env.run(&["run"]).await.failed();
    for k in expected {
        assert!(run.has_problem(k), "run does not name {k}:\n{}", run.all());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_show_prints_toml_with_set_secrets_redacted() {
    let token_file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(token_file.path(), "promo-SECRET-file\n").expect("write");
    let mut env = Env::new(&format!(
        "[database]\nurl = \"sqlite://x.db\"\n\n[daemon]\nowner = \"eu-1\"\n\n\
         [instances.main]\ninstance_id = \"m\"\n\n\
         [instances.promo]\ninstance_id = \"p\"\naccess_token_file = {:?}\n",
        token_file.path()
    ));
    env.set("STATUSD__INSTANCES__MAIN__ACCESS_TOKEN", TEST_TOKEN);
    let show = env.run(&["config", "show"]).await.ok();
    let t: toml::Table = show
        .stdout
        .parse()
        .unwrap_or_else(|e| panic!("not TOML ({e}):\n{}", show.stdout));
    assert_eq!(t["database"]["url"].as_str(), Some("sqlite://x.db"));
    assert_eq!(t["daemon"]["owner"].as_str(), Some("eu-1"));
    assert_eq!(t["daemon"]["lease_secs"].as_integer(), Some(60));
    assert_eq!(t["daemon"]["id_source"].as_str(), Some("local"));
    let main = &t["instances"]["main"];
    assert_eq!(main["access_token"].as_str(), Some("[redacted]"));
    let promo = &t["instances"]["promo"];
    assert!(promo.get("access_token").is_none(), "{promo}");
    assert_eq!(
        promo["access_token_file"].as_str(),
        token_file.path().to_str()
    );
    // No admin token configured: none shown, not a fake "[redacted]".
    assert!(t["admin"].get("token").is_none(), "{}", show.stdout);
    env.set("STATUSD__ADMIN__TOKEN", "admin-SECRET-x");
    let show = env.run(&["config", "show"]).await.ok();
    let t: toml::Table = show.stdout.parse().expect("TOML");
    assert_eq!(t["admin"]["token"].as_str(), Some("[redacted]"));
    for s in [TEST_TOKEN, "promo-SECRET-file", "admin-SECRET-x"] {
        assert!(!show.all().contains(s), "{s} leaked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syntax_error_names_file_and_line_but_never_quotes_it() {
    let env = Env::new(
        "[database]\nurl = \"sqlite://x.db\"\n\n[admin]\ntoken = \"admin-SECRET-unclosed\n",
    );
    for args in [&["config", "check"][..], &["config", "show"], &["run"]] {
        let out = env.run(args).await.failed();
        assert!(out.stderr.contains("line 5"), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("default.toml"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(
            !out.all().contains("admin-SECRET"),
            "{args:?} quotes the secret:\n{}",
            out.all()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_config_directory_the_error_says_where_it_looked() {
    let env = Env::bare();
    let looked = std::fs::canonicalize(env.dir.path())
        .expect("canonical")
        .join("config");
    for args in [&["config", "check"][..], &["run"], &["ls"]] {
        let out = env.run(args).await.failed();
        for needle in [
            looked.to_str().expect("utf-8"),
            "--config-dir",
            "STATUSD_CONFIG_DIR",
        ] {
            assert!(
                out.all().contains(needle),
                "{args:?} lacks {needle}:\n{}",
                out.all()
            );
        }
    }
    // And pointing at one by variable works.
    let conf = env.dir.path().join("etc");
    std::fs::create_dir(&conf).expect("mkdir");
    std::fs::write(
        conf.join("default.toml"),
        "[database]\nurl = \"sqlite://x.db\"\n[instances.main]\ninstance_id = \"m\"\naccess_token = \"t\"\n",
    )
    .expect("write");
    let mut env = env;
    env.set("STATUSD_CONFIG_DIR", conf.to_str().expect("utf-8"));
    let ok = env.run(&["config", "check"]).await.ok();
    assert!(ok.stdout.contains("configuration OK"), "{}", ok.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_and_database_url_come_from_files() {
    let db = TestDb::sqlite().await;
    let sim = crate::support::start_sim(statusd::sim::SimConfig::default()).await;
    let port = free_port();
    let mut env = daemon_env(&db, &sim.base_url(), port);
    // default.toml names a URL; the file wins (Docker secrets).
    std::fs::write(
        env.config_dir.as_ref().expect("dir").join("default.toml"),
        format!(
            "[database]\nurl = \"sqlite:///nonexistent/dir/x.db\"\n\n[admin]\nbind = \"127.0.0.1:{port}\"\n\n\
             [instances.main]\ninstance_id = \"main\"\nbase_url = {:?}\n",
            sim.base_url()
        ),
    )
    .expect("write");
    let url_file = env.file("db_url", &format!("{}\n", db.url));
    let token_file = env.file("admin_token", "file-TOKEN-0099\n");
    env.set(
        "STATUSD__DATABASE__URL_FILE",
        url_file.to_str().expect("utf-8"),
    )
    .set(
        "STATUSD__ADMIN__TOKEN_FILE",
        token_file.to_str().expect("utf-8"),
    );
    env.run(&["config", "check"]).await.ok();
    let shown: toml::Table = env
        .run(&["config", "show"])
        .await
        .ok()
        .stdout
        .parse()
        .expect("TOML");
    assert_eq!(shown["admin"]["token"].as_str(), Some("[redacted]"));
    assert_eq!(shown["admin"]["token_file"].as_str(), token_file.to_str());
    assert_eq!(shown["database"]["url_file"].as_str(), url_file.to_str());
    let d = Daemon::start(&env, port).await;
    assert_eq!(d.stats_status(Some("file-TOKEN-0099")).await, 200);
    assert_eq!(d.stats_status(Some("file-TOKEN-0098")).await, 401);
    d.stop().await;

    // Missing and empty files: the key and the path, never the content.
    let mut bad = daemon_env(&db, &sim.base_url(), port);
    let empty = bad.file("empty", "\n");
    let secret_url = bad.file("url", "postgres://u:pw-SECRET-7@127.0.0.1:1/x");
    bad.set("STATUSD__ADMIN__TOKEN_FILE", "/nonexistent/admin_token")
        .set(
            "STATUSD__DATABASE__URL_FILE",
            empty.to_str().expect("utf-8"),
        );
    let check = bad.run(&["config", "check"]).await.failed();
    assert!(check.has_problem("admin.token_file"), "{}", check.all());
    assert!(
        check.all().contains("/nonexistent/admin_token"),
        "{}",
        check.all()
    );
    assert!(check.has_problem("database.url_file"), "{}", check.all());
    assert!(
        check.all().contains(empty.to_str().expect("utf-8")),
        "{}",
        check.all()
    );
    bad.run(&["run"]).await.failed();
    bad.set(
        "STATUSD__DATABASE__URL_FILE",
        secret_url.to_str().expect("utf-8"),
    );
    let ls = bad.run(&["ls"]).await.failed();
    assert!(ls.stderr.contains("[redacted]"), "{}", ls.stderr);
    assert!(!ls.all().contains("pw-SECRET-7"), "{}", ls.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_has_one_database_flag() {
    let help = Env::bare().run(&["demo", "--help"]).await.ok();
    assert!(help.stdout.contains("--database-url"), "{}", help.stdout);
    assert!(
        !help.stdout.contains("--database "),
        "a second database flag:\n{}",
        help.stdout
    );
    // The flag is honoured: a non-SQLite URL is refused by name.
    let out = Env::bare()
        .run(&[
            "--database-url",
            "postgres://x@127.0.0.1:1/y",
            "demo",
            "--statuses",
            "1",
        ])
        .await
        .failed();
    assert!(out.stderr.contains("--database-url"), "{}", out.stderr);
}

/// `statusd demo --webhook-loss` takes a share: anything else is refused
/// by name, before any work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_refuses_a_webhook_loss_outside_0_to_1() {
    for bad in ["1.5", "-0.1", "lots"] {
        let out = Env::bare()
            .run(&["demo", "--statuses", "1", &format!("--webhook-loss={bad}")])
            .await
            .failed();
        assert!(
            out.stderr.contains("--webhook-loss") && out.stderr.contains(bad),
            "{bad}: {}",
            out.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_command_checks_a_running_daemon() {
    let db = TestDb::sqlite().await;
    let sim = crate::support::start_sim(statusd::sim::SimConfig::default()).await;
    let port = free_port();
    let mut env = daemon_env(&db, &sim.base_url(), port);
    // As in the container: bound to every address, checked on loopback.
    env.set("STATUSD__ADMIN__BIND", &format!("0.0.0.0:{port}"));
    env.run(&["health"]).await.failed();
    let d = Daemon::start(&env, port).await;
    let ok = env.run(&["health"]).await.ok();
    assert!(ok.stdout.contains("ok"), "{}", ok.stdout);
    d.stop().await;
}

/// The container image's files (validated without Docker: no registry here).
#[test]
fn docker_files_keep_secrets_and_build_context_small() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read =
        |f: &str| std::fs::read_to_string(root.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    let ignore = read(".dockerignore");
    for entry in ["target", ".git"] {
        assert!(
            ignore.lines().any(|l| l.trim_matches('/') == entry),
            ".dockerignore lacks {entry}"
        );
    }
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains("HEALTHCHECK"), "no HEALTHCHECK");
    assert!(
        dockerfile.contains("\"health\""),
        "HEALTHCHECK does not run `statusd health`"
    );
    for line in dockerfile.lines().filter(|l| l.starts_with("FROM ")) {
        let image = line.split_whitespace().nth(1).expect("image");
        let tag = image.split(':').nth(1).unwrap_or("");
        assert!(
            tag.chars().next().is_some_and(|c| c.is_ascii_digit()) && tag.matches('.').count() >= 1,
            "base image not pinned to an exact version: {image}"
        );
    }
    let compose = read("docker-compose.yml");
    assert!(
        !compose.contains(":-statusd}"),
        "compose has a default password"
    );
    assert!(
        compose.contains("${POSTGRES_PASSWORD:?"),
        "compose does not require the password"
    );
}
