//! Instances added, changed, disabled and removed at runtime (issue 14), as
//! an operator does it: the real `statusd run` as a child process, the real
//! `statusd instance …` commands as other processes, an upstream app writing
//! rows with SQL, on SQLite and on PostgreSQL. The oracle is the simulator's
//! record of what viewers saw.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use statusd::sim::{SimConfig, SimHandle};

use crate::support::{
    exec_raw, spawn_run, start_sim, statusd_command, write_daemon_config, TestDb,
};

/// The token of the runtime instance `shop`, in the daemon's environment
/// and the CLI's; never in the table.
const SHOP_TOKEN: &str = "shop-SECRET-77c1d0";
const SHOP_VAR: &str = "STATUSD_TEST_SHOP_TOKEN";

/// The output of one `statusd --config-dir CFG …` run.
struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn statusd(cfg: &Path, args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = statusd_command();
    cmd.arg("--config-dir")
        .arg(cfg)
        .args(args)
        .env_remove("RUST_LOG");
    cmd.env(
        "STATUSD__INSTANCES__MAIN__ACCESS_TOKEN",
        crate::support::TEST_TOKEN,
    );
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().await.expect("run statusd");
    Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

async fn ok(cfg: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let o = statusd(cfg, args, env).await;
    assert!(o.ok, "statusd {args:?} failed:\n{}\n{}", o.stdout, o.stderr);
    o.stdout
}

/// `statusd instance ls --json`, the entry of `name`.
async fn instance_view(cfg: &Path, name: &str) -> Value {
    let out = ok(cfg, &["instance", "ls", "--json"], &[]).await;
    let all: Vec<Value> = serde_json::from_str(&out).expect("instance ls --json");
    all.into_iter()
        .find(|v| v["instance"] == name && v["source"] != "file")
        .unwrap_or(Value::Null)
}

/// Statuses shown on the simulator for the provider instance id `id`.
fn shown(sim: &SimHandle, id: &str) -> usize {
    sim.posted().iter().filter(|p| p.instance == id).count()
}

async fn wait_for(what: &str, secs: u64, mut done: impl AsyncFnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {secs} s waiting for {what}");
}

/// Waits until a daemon has recorded `name` as paused with a reason
/// containing `word` (the daemon's own view, not the table's).
async fn wait_paused(cfg: &Path, name: &str, word: &str) {
    wait_for(&format!("{name} paused ({word})"), 20, async || {
        instance_view(cfg, name).await["paused"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains(word))
    })
    .await;
}

async fn enqueue(cfg: &Path, instance: &str, text: &str) {
    ok(
        cfg,
        &["enqueue", "--instance", instance, "--text", text],
        &[],
    )
    .await;
}

async fn runtime_instances(db: TestDb) {
    let sim = start_sim(SimConfig::default()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("config");
    std::fs::create_dir(&cfg).unwrap();
    write_daemon_config(&cfg, &db.url, &sim.base_url());
    let log = dir.path().join("daemon.log");
    ok(&cfg, &["migrate"], &[]).await;
    let mut daemon = spawn_run(&cfg, &log, "info", &[(SHOP_VAR, SHOP_TOKEN)]);
    let base = sim.base_url();
    let cli_env = [(SHOP_VAR, SHOP_TOKEN)];

    // Added while the daemon runs; rows enqueued at once get posted.
    let add_shop = [
        "instance",
        "add",
        "shop",
        "--base-url",
        &base,
        "--instance-id",
        "shop-1",
        "--token-env",
        SHOP_VAR,
        "--rate-per-sec",
        "1000",
        "--burst",
        "100",
        "--max-in-flight",
        "3",
    ];
    let out = ok(&cfg, &add_shop, &cli_env).await;
    assert!(out.contains("instance `shop` added"), "{out}");
    // Its own in-flight cap, stored with its settings and shown.
    let view = instance_view(&cfg, "shop").await;
    assert_eq!(view["max_in_flight"], 3, "{view}");
    assert_eq!(view["settings"]["max_in_flight"], 3, "{view}");
    for i in 0..5 {
        enqueue(&cfg, "shop", &format!("shop {i}")).await;
    }
    wait_for("5 shop statuses shown", 30, async || {
        shown(&sim, "shop-1") == 5
    })
    .await;

    // Disabled: new rows wait, reported with the reason, never sent.
    ok(&cfg, &["instance", "disable", "shop"], &[]).await;
    wait_paused(&cfg, "shop", "disabled").await;
    for i in 5..8 {
        enqueue(&cfg, "shop", &format!("shop {i}")).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        shown(&sim, "shop-1"),
        5,
        "a disabled instance's rows were sent"
    );
    let v = instance_view(&cfg, "shop").await;
    assert_eq!(v["state"], "disabled", "{v}");
    assert_eq!(v["waiting"], 3, "{v}");
    let stats = ok(&cfg, &["stats"], &[]).await;
    assert!(
        stats.contains("shop") && stats.contains("disabled"),
        "{stats}"
    );

    // Enabled: they go.
    ok(&cfg, &["instance", "enable", "shop"], &[]).await;
    wait_for("8 shop statuses shown", 30, async || {
        shown(&sim, "shop-1") == 8
    })
    .await;

    // Removed with rows pending: the rows are kept and reported, not sent,
    // not invalid; an upstream app's insert for it waits too.
    ok(&cfg, &["instance", "disable", "shop"], &[]).await;
    wait_paused(&cfg, "shop", "disabled").await;
    enqueue(&cfg, "shop", "shop 8").await;
    let out = ok(&cfg, &["instance", "rm", "shop"], &[]).await;
    assert!(out.contains("1 of its rows are kept"), "{out}");
    wait_paused(&cfg, "shop", "removed").await;
    exec_raw(
        &db,
        "INSERT INTO status_outbox (instance, kind, payload) VALUES ('shop', 'text', '{\"text\": \"shop 9\"}')",
    )
    .await
    .expect("upstream insert");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        shown(&sim, "shop-1"),
        8,
        "a removed instance's rows were sent"
    );
    let v = instance_view(&cfg, "shop").await;
    assert_eq!(v["state"], "removed", "{v}");
    assert_eq!(v["waiting"], 2, "rows of a removed instance must wait: {v}");
    let invalid = ok(&cfg, &["ls", "--state", "invalid", "--json"], &[]).await;
    assert!(
        !invalid.contains("shop"),
        "a removed instance's row became invalid: {invalid}"
    );

    // Added back: the waiting rows go.
    let out = ok(&cfg, &add_shop, &cli_env).await;
    assert!(out.contains("added back"), "{out}");
    wait_for("10 shop statuses shown", 30, async || {
        shown(&sim, "shop-1") == 10
    })
    .await;

    // An instance whose token the daemon cannot read: held with the reason,
    // its rows wait, the daemon keeps running and serving the others.
    let ghost_var = "STATUSD_TEST_GHOST_TOKEN";
    ok(
        &cfg,
        &[
            "instance",
            "add",
            "ghost",
            "--base-url",
            &base,
            "--instance-id",
            "ghost-1",
            "--token-env",
            ghost_var,
        ],
        &[(ghost_var, "ghost-SECRET-1")],
    )
    .await;
    wait_paused(&cfg, "ghost", ghost_var).await;
    enqueue(&cfg, "ghost", "ghost 0").await;
    enqueue(&cfg, "main", "main 0").await;
    wait_for("main's status shown", 30, async || shown(&sim, "main") == 1).await;
    assert_eq!(shown(&sim, "ghost-1"), 0);
    assert!(
        daemon.try_wait().expect("daemon status").is_none(),
        "the daemon died"
    );
    let v = instance_view(&cfg, "ghost").await;
    assert_eq!(v["waiting"], 1, "{v}");

    assert_eq!(sim.stats().duplicates, 0, "duplicates seen by viewers");
    let _ = daemon.start_kill();
    let _ = daemon.wait().await;
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !logs.contains(SHOP_TOKEN),
        "the token leaked into the daemon's log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_instances_sqlite() {
    runtime_instances(TestDb::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_instances_postgres() {
    runtime_instances(TestDb::postgres().await).await;
}

/// The table never holds a token, whatever writes it; a token named badly
/// gives a clear error that does not echo what may be a token.
async fn tokens_are_named_never_stored(db: TestDb) {
    let sim = start_sim(SimConfig::default()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("config");
    std::fs::create_dir(&cfg).unwrap();
    write_daemon_config(&cfg, &db.url, &sim.base_url());
    ok(&cfg, &["migrate"], &[]).await;
    let base = sim.base_url();
    let add = |var: &'static str| {
        vec![
            "instance".to_string(),
            "add".into(),
            "shop".into(),
            "--base-url".into(),
            base.clone(),
            "--instance-id".into(),
            "shop-1".into(),
            "--token-env".into(),
            var.to_string(),
        ]
    };
    let args = add("STATUSD_TEST_UNSET_VAR");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = statusd(&cfg, &args, &[]).await;
    assert!(!o.ok);
    assert!(
        o.stderr.contains("STATUSD_TEST_UNSET_VAR is not set"),
        "{}",
        o.stderr
    );

    // A token pasted where a variable name belongs is refused, not echoed.
    let pasted = "EAAB-SECRET/xyz+123";
    let o = statusd(
        &cfg,
        &[
            "instance",
            "add",
            "shop",
            "--instance-id",
            "s",
            "--token-env",
            pasted,
        ],
        &[],
    )
    .await;
    assert!(!o.ok);
    assert!(
        o.stderr.contains("must name an environment variable"),
        "{}",
        o.stderr
    );
    assert!(!o.stderr.contains(pasted), "{}", o.stderr);
    let o = statusd(
        &cfg,
        &[
            "instance",
            "add",
            "shop",
            "--instance-id",
            "s",
            "--set",
            &format!("access_token={pasted}"),
        ],
        &[],
    )
    .await;
    assert!(!o.ok);
    assert!(o.stderr.contains("never stored"), "{}", o.stderr);
    assert!(!o.stderr.contains(pasted), "{}", o.stderr);

    // A name the configuration file has: refused (the file wins).
    let o = statusd(
        &cfg,
        &[
            "instance",
            "add",
            "main",
            "--instance-id",
            "m",
            "--token-env",
            SHOP_VAR,
        ],
        &[(SHOP_VAR, SHOP_TOKEN)],
    )
    .await;
    assert!(!o.ok);
    assert!(o.stderr.contains("configuration file"), "{}", o.stderr);

    let args = add(SHOP_VAR);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&cfg, &args, &[(SHOP_VAR, SHOP_TOKEN)]).await;
    let dump = table_text(&db).await;
    assert!(
        dump.contains(SHOP_VAR),
        "the row names the variable: {dump}"
    );
    assert!(
        !dump.contains(SHOP_TOKEN),
        "the table holds the token: {dump}"
    );

    // Not even a hand-written INSERT can put a token in the table.
    let e = exec_raw(
        &db,
        "INSERT INTO status_instances (name, settings) VALUES ('x', '{\"access_token\": \"t\"}')",
    )
    .await
    .expect_err("a token in the table must be refused");
    assert!(e.to_string().contains("settings_hold_no_token"), "{e}");
}

/// Every cell of `status_instances`, as text.
async fn table_text(db: &TestDb) -> String {
    use sqlx::{Connection, Row};
    let sql = "SELECT name, settings, enabled FROM status_instances";
    let mut out = String::new();
    if db.url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        for r in sqlx::query(sql).fetch_all(&mut c).await.unwrap() {
            out += &format!("{} {} ", r.get::<String, _>(0), r.get::<String, _>(1));
        }
    } else {
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let sql = "SELECT name, settings::text FROM status_instances";
        for r in sqlx::query(sql).fetch_all(&mut c).await.unwrap() {
            out += &format!("{} {} ", r.get::<String, _>(0), r.get::<String, _>(1));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_named_never_stored_sqlite() {
    tokens_are_named_never_stored(TestDb::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_named_never_stored_postgres() {
    tokens_are_named_never_stored(TestDb::postgres().await).await;
}

const ADMIN_TOKEN: &str = "admin-SECRET-instances";

/// The admin API's instance calls: the same checks and answers as the CLI,
/// behind the admin token.
async fn admin_api_manages_instances<S: statusd::store::Store>(store: S, db: &TestDb) {
    let app = crate::support::spawn_app(
        store,
        &db.url,
        SimConfig::default(),
        &[("main", true)],
        ADMIN_TOKEN,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("shop.token");
    std::fs::write(&token_file, format!("{SHOP_TOKEN}\n")).unwrap();
    let api = app.api(ADMIN_TOKEN);
    const INSTANCES: &str = "/v1/instances";
    let enqueue_shop = async || {
        api.post(
            "/v1/statuses",
            &serde_json::json!({"instance": "shop", "kind": "text", "payload": {"text": "hi"}}),
        )
        .await
        .code
    };
    let shop = |settings: Value| serde_json::json!({"name": "shop", "settings": settings});

    let r = api
        .anonymous()
        .post(INSTANCES, &shop(serde_json::json!({})))
        .await;
    assert_eq!(r.code, 401, "the instance API needs the admin token");

    let r = api
        .post(
            INSTANCES,
            &shop(serde_json::json!({"instance_id": "s", "access_token": SHOP_TOKEN})),
        )
        .await;
    assert_eq!(r.code, 400, "{}", r.text);
    let body = r.json();
    assert!(
        body["error"].as_str().unwrap().contains("never stored"),
        "{body}"
    );
    assert!(!body.to_string().contains(SHOP_TOKEN), "{body}");

    let r = api.post(INSTANCES, &shop(serde_json::json!({"instance_id": "s", "access_token_env": "STATUSD_TEST_NOT_SET_EITHER"}))).await;
    assert_eq!(r.code, 400, "{}", r.text);
    let body = r.json();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("STATUSD_TEST_NOT_SET_EITHER is not set"),
        "{body}"
    );

    let main = serde_json::json!({"name": "main", "settings": {"instance_id": "m", "access_token_file": token_file}});
    let r = api.post(INSTANCES, &main).await;
    assert_eq!(r.code, 400, "{}", r.text);
    let body = r.json();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("configuration file"),
        "{body}"
    );

    let good = shop(
        serde_json::json!({"instance_id": "shop-1", "access_token_file": token_file, "base_url": app.sim.base_url()}),
    );
    let r = api.post(INSTANCES, &good).await;
    assert_eq!(r.code, 201, "{}", r.text);
    let r = api.post(INSTANCES, &good).await;
    assert_eq!(r.code, 400, "{}", r.text);
    let body = r.json();
    assert!(
        body["error"].as_str().unwrap().contains("already exists"),
        "{body}"
    );

    let view = async || {
        let r = api.get(INSTANCES).await;
        assert_eq!(r.code, 200);
        r.json()
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["instance"] == "shop")
            .cloned()
            .unwrap()
    };
    let v = view().await;
    assert_eq!(
        (v["source"].as_str(), v["state"].as_str()),
        (Some("table"), Some("active")),
        "{v}"
    );

    let r = api
        .patch(
            "/v1/instances/shop",
            &serde_json::json!({"settings": {"rate_per_sec": 7}, "enabled": false}),
        )
        .await;
    assert_eq!(r.code, 200, "{}", r.text);
    let v = view().await;
    assert_eq!(v["state"], "disabled", "{v}");
    assert_eq!(v["settings"]["rate_per_sec"], 7, "{v}");
    let r = api
        .patch(
            "/v1/instances/shop",
            &serde_json::json!({"settings": {"access_token": "x"}}),
        )
        .await;
    assert_eq!(r.code, 400);
    let r = api.post_empty("/v1/instances/shop/enable").await;
    assert_eq!(r.code, 200);
    assert_eq!(view().await["state"], "active");

    let r = api.delete("/v1/instances/shop").await;
    assert_eq!(r.code, 200, "{}", r.text);
    let body = r.json();
    assert_eq!(body["waiting"], 0, "{body}");
    assert_eq!(view().await["state"], "removed");
    let r = api.delete("/v1/instances/shop").await;
    assert_eq!(r.code, 404);
    // Nothing new is enqueued through statusd for a removed instance (the
    // admin server's registry, reloaded as a daemon's would be).
    let registry = app.daemon.as_ref().unwrap().ctx().instances.clone();
    let make = statusd::app::wawp_maker(&Default::default());
    statusd::instance::refresh(&app.store, &registry, &make)
        .await
        .unwrap();
    assert_eq!(enqueue_shop().await, 400, "enqueue for a removed instance");
    let r = api
        .patch("/v1/instances/nope", &serde_json::json!({"enabled": true}))
        .await;
    assert_eq!(r.code, 404);
    // Added back: 200, not 201; enqueueing works again.
    let r = api.post(INSTANCES, &good).await;
    assert_eq!(r.code, 200);
    statusd::instance::refresh(&app.store, &registry, &make)
        .await
        .unwrap();
    assert_eq!(
        enqueue_shop().await,
        201,
        "enqueue for an instance added back"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_manages_instances_sqlite() {
    let db = TestDb::sqlite().await;
    admin_api_manages_instances(db.sqlite_store().await, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_manages_instances_postgres() {
    let db = TestDb::postgres().await;
    admin_api_manages_instances(db.pg_store().await, &db).await;
}

/// Per-instance metrics for a runtime instance: its series exist once the
/// daemon knows it, its pause follows `disable`, and a name taken from a
/// row never becomes a label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_instances_get_bounded_per_instance_metrics() {
    let db = TestDb::sqlite().await;
    let sim = start_sim(SimConfig::default()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("config");
    std::fs::create_dir(&cfg).unwrap();
    write_daemon_config(&cfg, &db.url, &sim.base_url());
    ok(&cfg, &["migrate"], &[]).await;
    let base = sim.base_url();
    ok(
        &cfg,
        &[
            "instance",
            "add",
            "shop",
            "--base-url",
            &base,
            "--instance-id",
            "shop-1",
            "--token-env",
            SHOP_VAR,
        ],
        &[(SHOP_VAR, SHOP_TOKEN)],
    )
    .await;
    exec_raw(
        &db,
        "INSERT INTO status_outbox (instance, kind, payload) VALUES ('bogus-name', 'text', '{\"text\": \"x\"}')",
    )
    .await
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bind = format!("127.0.0.1:{port}");
    let log = dir.path().join("daemon.log");
    let mut daemon = spawn_run(
        &cfg,
        &log,
        "info",
        &[
            (SHOP_VAR, SHOP_TOKEN),
            ("STATUSD__ADMIN__ENABLED", "true"),
            ("STATUSD__ADMIN__BIND", &bind),
        ],
    );
    let page = async || match reqwest::get(format!("http://{bind}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    wait_for("shop's gauges", 20, async || {
        page()
            .await
            .contains("statusd_instance_due_rows{wa_instance=\"shop\"}")
    })
    .await;
    let text = page().await;
    for family in [
        "statusd_instance_in_flight_rows{wa_instance=\"shop\"}",
        "statusd_instance_posted_last_minute{wa_instance=\"shop\"}",
        "statusd_instance_paused{wa_instance=\"shop\"} 0",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
    assert!(
        !text.contains("bogus-name"),
        "a row's instance became a label"
    );
    ok(&cfg, &["instance", "disable", "shop"], &[]).await;
    wait_for("shop paused in the metrics", 20, async || {
        page()
            .await
            .contains("statusd_instance_paused{wa_instance=\"shop\"} 1")
    })
    .await;
    let _ = daemon.start_kill();
    let _ = daemon.wait().await;
}
