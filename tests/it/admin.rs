//! The admin HTTP API over a running daemon: health, auth, metrics, and the
//! operator actions an on-call engineer uses.

use std::time::Duration;

use statusd::admin::AdminServer;
use statusd::app::wawp_instances;
use statusd::config::AdminSettings;
use statusd::daemon::Daemon;
use statusd::model::State;
use statusd::sim::SimConfig;
use statusd::store::Store;
use tokio_util::sync::CancellationToken;

use crate::api::Api;
use crate::support::{spawn_app, start_sim, test_settings, wait_drained, TestDb};

const ADMIN_TOKEN: &str = "admin-SECRET-77";

crate::both_backends!(
    admin_api_drives_the_outbox,
    scheduled_rows_and_pauses_in_the_store
);

async fn admin_api_drives_the_outbox<S: Store>(s: S, db: &TestDb) {
    let mut app = spawn_app(
        s,
        &db.url,
        SimConfig::default(),
        &[("main", true)],
        ADMIN_TOKEN,
    )
    .await;
    let run = app.run_daemon();
    let (s, api, sim) = (app.store.clone(), app.api(ADMIN_TOKEN), &app.sim);
    let anonymous = api.anonymous();

    // Health and metrics need no token; the API does.
    assert_eq!(anonymous.get("/healthz").await.code, 200);
    assert_eq!(anonymous.get("/readyz").await.code, 200);
    assert_eq!(anonymous.get("/v1/stats").await.code, 401);
    assert_eq!(api.with_token("nope").get("/v1/stats").await.code, 401);

    // Enqueue, with dedupe; a bad payload is refused naming its field.
    let body = serde_json::json!({"instance": "main", "kind": "text", "payload": {"text": "from the API"}, "dedupe_key": "api-1"});
    let r = api.post("/v1/statuses", &body).await;
    assert_eq!(r.code, 201);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let again = api.post("/v1/statuses", &body).await;
    assert_eq!(again.code, 200, "same dedupe key: no new row");
    let bad = serde_json::json!({"instance": "main", "kind": "image", "payload": {"file": {"url": "http://x/a.jpg", "mimetype": "image/jpeg"}}});
    let r = api.post("/v1/statuses", &bad).await;
    assert_eq!(r.code, 400);
    assert!(r.text.contains("payload.file.url"));
    let r = api.post_raw("/v1/statuses", "{not json").await;
    assert_eq!(r.code, 400);

    wait_drained(&s, 30).await;
    let shown = api.get(&format!("/v1/statuses/{id}")).await.json();
    assert_eq!(shown["status"]["state"], "posted");
    assert_eq!(shown["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(sim.stats().posted, 1);

    // Cancel and confirm refuse a posted row (its outcome is known);
    // delete takes it down at the provider.
    let r = api.post_empty(&format!("/v1/statuses/{id}/cancel")).await;
    assert_eq!(r.code, 409);
    let r = api.post_empty(&format!("/v1/statuses/{id}/confirm")).await;
    assert_eq!(r.code, 409, "{}", r.text);
    assert!(r.text.contains("posted"), "{}", r.text);
    let r = api.post_empty(&format!("/v1/statuses/{id}/delete")).await;
    assert_eq!(r.code, 200, "{}", r.text);
    assert_eq!(
        s.get(id.parse().unwrap()).await.unwrap().unwrap().state,
        State::Deleted
    );
    assert_eq!(sim.stats().deleted, 1);
    let r = api
        .post_empty(&format!("/v1/statuses/{}/retry", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(r.code, 404);

    // Listing with filters, and a clear error for a bad one.
    let r = api.get("/v1/statuses?state=deleted&since=1h").await;
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    let r = api.get("/v1/statuses?state=done").await;
    assert_eq!(r.code, 400);
    assert!(r.text.contains("state"));

    // Metrics carry transitions and latencies, and no secret.
    let m = anonymous.get("/metrics").await.text;
    assert!(m.contains("statusd_transitions_total"), "{m}");
    assert!(
        m.contains("statusd_provider_request_duration_seconds_bucket"),
        "{m}"
    );
    assert!(!m.contains(crate::support::TEST_TOKEN) && !m.contains(ADMIN_TOKEN));

    app.shutdown.cancel();
    run.await.unwrap().unwrap();
    app.stop().await;
}

/// A config directory for `statusd` run as a separate process, with the
/// environment it runs with (the developer's own `STATUSD_*` removed).
struct Deployment {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Deployment {
    fn new(db_url: &str, sim_url: &str, admin_bind: &str) -> Deployment {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("default.toml"),
            format!(
                "[database]\nurl = {db_url:?}\n\n[daemon]\npoll_interval_ms = 20\ninstance_probe_ms = 300\n\n\
                 [admin]\nbind = {admin_bind:?}\n\n\
                 [instances.main]\nbase_url = {sim_url:?}\ninstance_id = \"main\"\n"
            ),
        )
        .expect("write default.toml");
        Deployment {
            dir,
            env: vec![
                (
                    "STATUSD__INSTANCES__MAIN__ACCESS_TOKEN".into(),
                    crate::support::TEST_TOKEN.into(),
                ),
                ("STATUSD__ADMIN__TOKEN".into(), ADMIN_TOKEN.into()),
            ],
        }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = crate::support::statusd_command();
        cmd.arg("--config-dir").arg(self.dir.path()).args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("STATUSD") {
                cmd.env_remove(k);
            }
        }
        cmd.env("STATUSD_ENV", "admin-test").env_remove("RUST_LOG");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs a short command; (exit code, stdout, stderr).
    async fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.command(args).output().await.expect("run statusd");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args).await;
        assert_eq!(code, 0, "statusd {args:?}\nstdout:\n{out}\nstderr:\n{err}");
        out
    }

    /// `statusd run` in the background, its log collected as it comes.
    async fn start(&self) -> Running {
        use tokio::io::AsyncBufReadExt;
        let mut child = self
            .command(&["--log-format", "text", "--log-level", "info", "run"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn statusd run");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr piped");
        let sink = log.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let mut s = sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        let mut running = Running {
            _child: child,
            log,
            base: String::new(),
        };
        let line = running
            .wait_log(|l| l.contains("admin HTTP listening"), "the admin server")
            .await;
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .expect("addr= in the listening line")
            .trim_matches('"')
            .to_string();
        let port = addr.rsplit(':').next().unwrap().to_string();
        running.base = format!("http://127.0.0.1:{port}");
        running
    }
}

struct Running {
    /// Held: the daemon is killed when this drops.
    _child: tokio::process::Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    base: String,
}

impl Running {
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The first log line matching `pred`, waiting up to 20 s for it.
    async fn wait_log(&self, pred: impl Fn(&str) -> bool, what: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(l) = self.log().lines().find(|l| pred(l)) {
                return l.to_string();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no log line for {what}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn poll<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The admin API as an operator deploys it: a separate `statusd run` bound
/// to every interface. It warns about that once; the token is checked in
/// constant time (a blank one never passes); every mutating action leaves an
/// audit line naming the token's fingerprint (never the token), the peer and
/// the row; `/readyz` says ready; a body over the limit is answered 413; and
/// `since=1w` is understood as `ls --since 1w` is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_server_warns_audits_and_limits_as_deployed() {
    let sim = start_sim(SimConfig::default()).await;
    let db = TestDb::sqlite().await;
    let d = Deployment::new(&db.url, &sim.base_url(), "0.0.0.0:0");
    d.ok(&["migrate"]).await;
    d.ok(&["enqueue", "--instance", "main", "--text", "status number 0"])
        .await;
    let daemon = d.start().await;
    let base = daemon.base.clone();
    let api = Api::new(&base, ADMIN_TOKEN);
    let auth = format!("Bearer {ADMIN_TOKEN}");

    let warn = daemon
        .wait_log(|l| l.contains("non-loopback"), "the non-loopback warning")
        .await;
    assert!(warn.contains("WARN"), "{warn}");

    // Readiness in words, no database details.
    let r = api.anonymous().get("/readyz").await;
    assert_eq!(r.code, 200);
    assert_eq!(r.text, "ready");

    // A blank or near-miss token is refused like a wrong one.
    for given in [
        "",
        " ",
        "admin-SECRET-7",
        "admin-SECRET-777",
        "ADMIN-SECRET-77",
    ] {
        let r = api.with_token(given).get("/v1/stats").await;
        assert_eq!(r.code, 401, "token {given:?}");
    }

    // since=1w: the same grammar as `ls --since 1w`.
    let r = api.get("/v1/statuses?since=1w").await;
    assert_eq!(r.code, 200, "{}", r.text);
    assert_eq!(r.json().as_array().unwrap().len(), 1);

    // A body over the limit: 413, and nothing enqueued.
    let big = serde_json::json!({"instance": "main", "kind": "text",
        "payload": {"text": "x".repeat(2 * statusd::admin::MAX_BODY_BYTES)}});
    assert_eq!(post_raw(&base, &auth, &big.to_string()).await, 413);

    // Mutating actions are audited: enqueue, then cancel that row.
    let r = api
        .post(
            "/v1/statuses",
            &serde_json::json!({"instance": "main", "kind": "text",
                "payload": {"text": "audited"}, "not_before": "2099-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(r.code, 201);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let r = api.post_empty(&format!("/v1/statuses/{id}/cancel")).await;
    assert_eq!(r.code, 200);
    let fp = statusd::admin::fingerprint(ADMIN_TOKEN);
    assert_eq!(fp.len(), 8);
    for action in ["enqueue", "cancel"] {
        let line = daemon
            .wait_log(
                |l| {
                    l.contains("admin action")
                        && l.contains(&format!("action=\"{action}\""))
                        && l.contains(&id)
                },
                action,
            )
            .await;
        assert!(line.contains(" INFO "), "{line}");
        assert!(line.contains(&format!("token={fp}")), "{line}");
        assert!(line.contains("remote=127.0.0.1:"), "{line}");
        assert!(line.contains(&format!("row=\"{id}\"")), "{line}");
        assert!(line.contains("http_status=20"), "{line}");
    }
    // The refused oversized enqueue is audited too, with its answer.
    daemon
        .wait_log(
            |l| l.contains("admin action") && l.contains("http_status=413"),
            "the refused enqueue",
        )
        .await;
    let log = daemon.log();
    assert_eq!(
        log.matches("non-loopback").count(),
        1,
        "one warning:\n{log}"
    );
    assert!(!log.contains(ADMIN_TOKEN), "admin token in the log:\n{log}");
}

/// A second replica on the same host with the same `admin.bind` exits and
/// says which setting to change.
#[tokio::test]
async fn a_taken_admin_port_names_the_setting_to_change() {
    let sim = start_sim(SimConfig::default()).await;
    let db = TestDb::sqlite().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let d = Deployment::new(&db.url, &sim.base_url(), &addr);
    d.ok(&["migrate"]).await;
    let (code, _, err) = tokio::time::timeout(Duration::from_secs(30), d.run(&["run"]))
        .await
        .expect("statusd run exits when its admin port is taken");
    assert_ne!(code, 0, "{err}");
    for needle in ["admin.bind", "STATUSD__ADMIN__BIND", &addr] {
        assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    }
}

/// Every metric family a freshly started daemon serves: described (`# HELP`,
/// `# TYPE`), its counters present at 0, no label named `instance` (that is
/// Prometheus' scrape target), and a row with a garbage instance name (a
/// newline, 500 characters) counted under `wa_instance="unknown"` rather
/// than minting a label value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_described_zeroed_and_bounded() {
    use statusd::metrics as m;
    let sim = start_sim(SimConfig::default()).await;
    let db = TestDb::sqlite().await;
    let d = Deployment::new(&db.url, &sim.base_url(), "127.0.0.1:0");
    d.ok(&["migrate"]).await;
    let garbage = format!("evil\n{}", "x".repeat(500));
    crate::support::exec_raw(
        &db,
        &format!(
            "INSERT INTO status_outbox (instance, kind, payload) VALUES ('{garbage}', 'text', '{{\"text\":\"g\"}}')"
        ),
    )
    .await
    .expect("insert the garbage row");
    d.ok(&["enqueue", "--instance", "main", "--text", "status number 0"])
        .await;
    let daemon = d.start().await;
    let http = reqwest::Client::new();
    poll("the status to be posted", async || {
        (sim.stats().posted == 1).then_some(())
    })
    .await;
    // The histogram appears with its first sample; wait for it.
    let page = poll("the send's histogram", async || {
        let page = http
            .get(format!("{}/metrics", daemon.base))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        page.contains(m::PROVIDER_REQUEST_DURATION).then_some(page)
    })
    .await;

    for family in [
        m::TRANSITIONS,
        m::PROVIDER_REQUEST_DURATION,
        m::OUTBOX_ROWS,
        m::OUTBOX_SCHEDULED,
        m::OLDEST_PENDING_AGE,
        m::INSTANCE_PAUSED,
        m::RECONCILED,
        m::LEASES_RESCUED,
        m::PURGED,
    ] {
        for kind in ["# HELP", "# TYPE"] {
            assert!(
                page.lines()
                    .any(|l| l.starts_with(&format!("{kind} {family} "))),
                "no `{kind} {family}`:\n{page}"
            );
        }
    }
    for zero in [
        "statusd_transitions_total{to=\"failed\"} 0",
        "statusd_transitions_total{to=\"in_doubt\"} 0",
        "statusd_reconciled_total{result=\"parked\"} 0",
        "statusd_leases_rescued_total 0",
        "statusd_purged_total 0",
        "statusd_instance_paused{wa_instance=\"main\"} 0",
    ] {
        assert!(page.lines().any(|l| l == zero), "no `{zero}`:\n{page}");
    }
    for l in page.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !l.contains("{instance=") && !l.contains(",instance="),
            "a label named instance: {l}"
        );
    }
    assert!(
        !page.contains("xxxxxxxxxx") && !page.contains("evil"),
        "{page}"
    );
    let unknown: f64 = page
        .lines()
        .filter(|l| l.starts_with(m::OUTBOX_ROWS) && l.contains("wa_instance=\"unknown\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(unknown, 1.0, "the garbage row as unknown:\n{page}");
    assert!(!page.contains(ADMIN_TOKEN) && !page.contains(crate::support::TEST_TOKEN));
}

/// What an operator sees from another process while the provider refuses
/// an instance (401): `statusd stats` and `GET /v1/instances` name the
/// paused instance, why and since when, until it resumes; a row scheduled
/// for later is counted apart and does not age "oldest pending".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_paused_instances_and_scheduled_rows() {
    let sim = start_sim(SimConfig {
        unauthorized_instances: ["main".to_string()].into(),
        ..SimConfig::default()
    })
    .await;
    let db = TestDb::sqlite().await;
    let d = Deployment::new(&db.url, &sim.base_url(), "127.0.0.1:0");
    d.ok(&["migrate"]).await;
    // Created two hours ago, due next year: waiting by design.
    crate::support::exec_raw(
        &db,
        "INSERT INTO status_outbox (instance, kind, payload, created_at, not_before)
         VALUES ('main', 'text', '{\"text\":\"next year\"}',
                 CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) - 7200000,
                 CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) + 31536000000)",
    )
    .await
    .expect("insert the scheduled row");
    d.ok(&["enqueue", "--instance", "main", "--text", "status number 0"])
        .await;
    let daemon = d.start().await;

    let main = |v: &serde_json::Value| -> serde_json::Value {
        v["instances"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["instance"] == "main").cloned())
            .unwrap_or_default()
    };
    // Paused, and its refused row back to waiting: the pause is recorded
    // before the row's outcome, so for a moment the row is still in flight
    // and nothing due is pending.
    let paused = poll("stats to show main paused, its row waiting", async || {
        let v: serde_json::Value = serde_json::from_str(&d.ok(&["stats", "--json"]).await).ok()?;
        let m = main(&v);
        (!m["paused"].is_null() && !m["oldest_pending_age_secs"].is_null()).then_some(m)
    })
    .await;
    assert!(
        paused["paused"]["reason"].as_str().unwrap().contains("401"),
        "{paused}"
    );
    let since: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(paused["paused"]["since"].clone()).unwrap();
    assert!(
        (chrono::Utc::now() - since).num_seconds().abs() < 60,
        "{since}"
    );
    assert_eq!(paused["scheduled"], 1, "{paused}");
    let oldest = paused["oldest_pending_age_secs"].as_f64().unwrap();
    assert!(
        oldest < 600.0,
        "the scheduled row is not the oldest pending: {paused}"
    );

    let text = d.ok(&["stats"]).await;
    assert!(
        text.contains("PAUSED INSTANCE") && text.contains("401") && text.contains("SCHEDULED"),
        "{text}"
    );
    let r = Api::new(&daemon.base, ADMIN_TOKEN)
        .get("/v1/instances")
        .await;
    assert_eq!(r.code, 200);
    let v = r.json();
    assert!(
        v[0]["paused"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("401"),
        "{v}"
    );

    // The provider takes the instance back: the pause is cleared.
    let mut cfg = sim.config();
    cfg.unauthorized_instances.clear();
    sim.set_config(cfg).unwrap();
    poll("main to resume and post", async || {
        let v: serde_json::Value = serde_json::from_str(&d.ok(&["stats", "--json"]).await).ok()?;
        (main(&v)["paused"].is_null() && sim.stats().posted == 1).then_some(())
    })
    .await;
    assert!(!d.ok(&["stats"]).await.contains("PAUSED INSTANCE"));
    drop(daemon);
}

/// `statusd show` lists a row's attempts in time order, even though an
/// operator's retry starts the numbering again and a released attempt's
/// number is used again, and says which attempts did not count.
#[tokio::test]
async fn show_lists_attempts_in_time_order_with_refunds() {
    use statusd::store::{AssignId, ClaimParams, Completion, Effect, Transition};
    let db = TestDb::sqlite().await;
    let s = db.sqlite_store().await;
    let id = s.enqueue(crate::support::text("main", 0)).await.unwrap().id;
    s.assign_message_ids(&[AssignId {
        id,
        message_id: statusd::provider::ids::local_message_id(),
    }])
    .await
    .unwrap();
    let t0 = s.now().await.unwrap() - chrono::Duration::minutes(10);
    let claim = ClaimParams {
        budgets: Vec::new(),
        owner: "test".into(),
        limit: 1,
        lease: Duration::from_secs(60),
        skip_instances: vec![],
        fresh_ids: vec![],
    };
    let steps: [(State, &str, bool); 4] = [
        (State::PendingUpload, "released", true),
        (State::PendingUpload, "retryable", false),
        (State::Failed, "permanent", false),
        (State::Posted, "posted", false),
    ];
    for (k, (to, outcome, refund)) in steps.into_iter().enumerate() {
        if to == State::Posted {
            s.retry(id).await.unwrap();
        }
        let row = s
            .claim(claim.clone())
            .await
            .unwrap()
            .pop()
            .expect("claimed");
        let mut t = Transition::new(id, row.attempts, to);
        if refund {
            t.effect = Effect::RefundAttempt;
        }
        t.provider_id = row.message_id.clone();
        let done = Completion {
            transition: t,
            started_at: t0 + chrono::Duration::minutes(k as i64),
            latency: Duration::from_millis(5),
            outcome: outcome.parse().unwrap(),
        };
        assert_eq!(s.complete(&[done]).await.unwrap(), 1);
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("default.toml"),
        format!("[database]\nurl = {:?}\n", db.url),
    )
    .unwrap();
    let out = crate::support::statusd_command()
        .arg("--config-dir")
        .arg(dir.path())
        .args(["show", &id.to_string()])
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let history: Vec<&str> = text
        .lines()
        .skip_while(|l| l.trim() != "attempts")
        .skip(2)
        .collect();
    let outcomes: Vec<&str> = history
        .iter()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(
        outcomes,
        ["released", "retryable", "permanent", "posted"],
        "in time order:\n{text}"
    );
    let numbers: Vec<&str> = history
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(numbers, ["1", "1", "2", "1"], "{text}");
    assert!(history[0].contains("refunded"), "{text}");
    assert!(!history[1].contains("refunded"), "{text}");
    let json = crate::support::statusd_command()
        .arg("--config-dir")
        .arg(dir.path())
        .args(["show", &id.to_string(), "--json"])
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let counted: Vec<(&str, bool)> = v["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["outcome"].as_str().unwrap(),
                a["counted"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        counted,
        [
            ("released", false),
            ("retryable", true),
            ("permanent", true),
            ("posted", true)
        ]
    );
}

/// POSTs `body` to `/v1/statuses` over a plain socket and returns the
/// answer's status code. The body is written by a separate task whose write
/// errors are ignored: a server refusing an oversized body may answer and
/// close before reading it all (an HTTP client library then reports the
/// broken write instead of the answer).
async fn post_raw(base: &str, auth: &str, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST /v1/statuses HTTP/1.1\r\nhost: {addr}\r\nauthorization: {auth}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let body = body.to_string();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(body.as_bytes()).await;
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => break,
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    writer.abort();
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"))
}

/// Defence in depth: even if a blank `admin.token` got past the config
/// check, it opens nothing — with no header, an empty bearer or blanks.
#[tokio::test]
async fn a_blank_admin_token_never_authenticates() {
    let sim = start_sim(SimConfig::default()).await;
    let db = TestDb::sqlite().await;
    let s = db.sqlite_store().await;
    let settings = test_settings(&db.url, &sim, &[("main", true)]);
    let daemon = Daemon::new(
        s,
        wawp_instances(&settings).unwrap(),
        settings.daemon.clone(),
    );
    for configured in ["", "   "] {
        let admin = AdminServer::bind(
            &AdminSettings {
                enabled: true,
                bind: "127.0.0.1:0".into(),
                token: Some(configured.to_string().into()),
            },
            daemon.operator(),
        )
        .await
        .unwrap();
        let base = format!("http://{}", admin.local_addr());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(admin.serve(shutdown.clone()));
        let api = Api::new(&base, configured);
        // No header, an empty bearer, blanks.
        for bearer in [None, Some(""), Some("   ")] {
            let caller = match bearer {
                Some(t) => api.with_token(t),
                None => api.anonymous(),
            };
            let r = caller
                .post(
                    "/v1/statuses",
                    &serde_json::json!({"instance": "main", "kind": "text", "payload": {"text": "x"}}),
                )
                .await;
            assert_eq!(r.code, 401, "token {configured:?}, bearer {bearer:?}");
        }
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}

/// Both backends: a row scheduled for later is counted as `scheduled` and
/// does not age "oldest pending", while a due row does, from when it became
/// due; paused instances are kept with their first `since` until cleared.
async fn scheduled_rows_and_pauses_in_the_store<S: Store>(s: S, db: &TestDb) {
    let (created, due_at, later) = if db.url.starts_with("sqlite:") {
        let now = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";
        (
            format!("{now} - 7200000"),
            format!("{now} - 600000"),
            format!("{now} + 3600000"),
        )
    } else {
        (
            "now() - interval '2 hours'".to_string(),
            "now() - interval '10 minutes'".to_string(),
            "now() + interval '1 hour'".to_string(),
        )
    };
    crate::support::exec_raw(
        db,
        &format!(
            "INSERT INTO status_outbox (instance, kind, payload, created_at, not_before) VALUES
             ('main', 'text', '{{\"text\":\"later\"}}', {created}, {later}),
             ('main', 'text', '{{\"text\":\"due\"}}', {created}, {due_at}),
             ('other', 'text', '{{\"text\":\"only later\"}}', {created}, {later})"
        ),
    )
    .await
    .expect("insert rows");
    let sum = s.summary().await.unwrap();
    let row = |inst: &str| {
        sum.iter()
            .find(|r| r.instance == inst && r.state == State::Queued)
            .cloned()
            .unwrap_or_else(|| panic!("no queued row for {inst}: {sum:?}"))
    };
    let main = row("main");
    assert_eq!((main.count, main.scheduled), (2, 1), "{main:?}");
    let age = main.oldest_age_secs.unwrap();
    assert!((590.0..900.0).contains(&age), "due 10 minutes ago: {age}");
    let other = row("other");
    assert_eq!((other.count, other.scheduled), (1, 1), "{other:?}");
    assert_eq!(
        other.oldest_age_secs, None,
        "only scheduled rows: {other:?}"
    );

    assert!(s.instance_pauses().await.unwrap().is_empty());
    s.set_instance_pause("main", "HTTP 401: first")
        .await
        .unwrap();
    let first = s.instance_pauses().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.set_instance_pause("main", "HTTP 403: second")
        .await
        .unwrap();
    let second = s.instance_pauses().await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].reason, "HTTP 403: second");
    assert_eq!(second[0].since, first[0].since, "since is kept");
    s.clear_instance_pause("main").await.unwrap();
    assert!(s.instance_pauses().await.unwrap().is_empty());
}

/// `/readyz` is public: when the database is gone it answers 503 "not
/// ready" and keeps the database's error (host, user, database name) for
/// the log.
#[tokio::test]
async fn readyz_says_not_ready_without_database_details() {
    let db = TestDb::postgres().await;
    let app = spawn_app(
        db.pg_store().await,
        &db.url,
        SimConfig::default(),
        &[("main", true)],
        ADMIN_TOKEN,
    )
    .await;
    let anonymous = app.api(ADMIN_TOKEN).anonymous();
    let r = anonymous.get("/readyz").await;
    assert_eq!((r.code, r.text.as_str()), (200, "ready"));

    let name = app.db_url.rsplit('/').next().unwrap().to_string();
    {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&format!("{}/postgres", crate::support::pg_base()))
            .await
            .unwrap();
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&mut c)
            .await
            .expect("drop the database under the daemon");
    }
    let r = anonymous.get("/readyz").await;
    assert_eq!(r.code, 503);
    let body = r.text;
    assert_eq!(body, "not ready");
    assert!(!body.contains(&name));
    app.stop().await;
}
