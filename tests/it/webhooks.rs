//! Webhooks (issue 13): the provider's signed events, as a user relies on
//! them — only signed events get in; views keep their highest level, one row
//! per viewer, even before the status is recorded posted; a status the
//! provider proves posted is settled without a look-up and never re-sent.

use std::sync::Arc;
use std::time::Duration;

use statusd::admin::AdminServer;
use statusd::app::wawp_instances;
use statusd::config::{AdminSettings, WebhookSettings};
use statusd::daemon::{reconciler, Daemon};
use statusd::model::{AttemptOutcome, State};
use statusd::sim::SimConfig;
use statusd::store::{ClaimParams, Completion, Store, Transition, CONFIRMED_NOTE};
use statusd::webhooks::{processor, Receiver};
use statusd::wire::webhook as w;
use tokio_util::sync::CancellationToken;

use crate::support::{
    spawn_daemon, start_sim, test_settings, text, write_daemon_config, TestDb, TEST_TOKEN,
};

const KEY: &str = "whsec-SECRET-3c9d1e";
/// A webhook path token (Wawp's registration carries it in the URL).
const PATH_TOKEN: &str = "path-SECRET-token-0123456789";
const ADMIN_TOKEN: &str = "admin-SECRET-91";

crate::both_backends!(
    signatures_timestamps_and_limits_are_enforced,
    duplicate_and_reordered_acks_keep_the_highest_level,
    an_ack_before_posted_is_attributed_and_changes_nothing,
    an_in_doubt_row_is_settled_by_a_webhook_without_a_lookup,
    a_lost_response_after_a_confirmation_needs_no_lookup,
    unknown_ids_and_unreadable_events_are_stored_or_dropped_never_looped,
);

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A status view as WAHA sends it.
fn ack(message_id: &str, viewer: &str, level: i32) -> String {
    serde_json::json!({
        "id": format!("evt_{}", uuid::Uuid::new_v4().simple()),
        "timestamp": now_ms(),
        "event": "message.ack",
        "session": "default",
        "engine": "NOWEB",
        "payload": {
            "id": format!("true_status@broadcast_{message_id}"),
            "from": "status@broadcast",
            "to": "status@broadcast",
            "participant": viewer,
            "fromMe": true,
            "ack": level,
            "ackName": statusd::store::level_name(level),
        }
    })
    .to_string()
}

/// One's own status going out, as `message.any`.
fn own_status(message_id: &str) -> String {
    serde_json::json!({
        "id": format!("evt_{}", uuid::Uuid::new_v4().simple()),
        "timestamp": now_ms(),
        "event": "message.any",
        "session": "default",
        "payload": {
            "id": format!("true_status@broadcast_{message_id}"),
            "from": "status@broadcast",
            "fromMe": true,
            "body": "x",
        }
    })
    .to_string()
}

/// An admin server over `store` receiving webhooks for `main` (key [`KEY`],
/// path token `path-token-0123456789`); returns its base URL.
async fn receiver<S: Store>(
    store: S,
    db_url: &str,
    window_secs: u64,
) -> (String, Arc<Receiver>, CancellationToken) {
    let sim = start_sim(SimConfig::default()).await;
    let mut settings = test_settings(db_url, &sim, &[("main", true)]);
    let inst = settings.instances.get_mut("main").unwrap();
    inst.webhook_secret = Some(KEY.to_string().into());
    inst.webhook_path_token = Some("path-token-0123456789".to_string().into());
    settings.webhooks = WebhookSettings {
        timestamp_window_secs: window_secs,
        max_body_bytes: 64 * 1024,
        ..WebhookSettings::default()
    };
    let receiver = Arc::new(Receiver::from_settings(&settings).unwrap());
    let daemon = Daemon::new(
        store.clone(),
        wawp_instances(&settings).unwrap(),
        settings.daemon.clone(),
    );
    let server = AdminServer::bind(
        &AdminSettings {
            enabled: true,
            bind: "127.0.0.1:0".into(),
            token: Some(ADMIN_TOKEN.to_string().into()),
        },
        daemon.operator(),
    )
    .await
    .unwrap()
    .with_webhooks(store, receiver.clone());
    let base = format!("http://{}", server.local_addr());
    let shutdown = CancellationToken::new();
    tokio::spawn(server.serve(shutdown.clone()));
    // The simulator is only the instance's base URL here; keep it alive.
    std::mem::forget(sim);
    (base, receiver, shutdown)
}

/// POSTs `body` to `url` signed with `key` (None: unsigned) and timestamp
/// `ts`; returns the status and the body.
async fn post(url: &str, key: Option<&str>, body: &str, ts: Option<i64>) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header(w::REQUEST_ID, uuid::Uuid::new_v4().to_string());
    if let Some(k) = key {
        req = req
            .header(w::HMAC, w::sign(k.as_bytes(), body.as_bytes()))
            .header(w::HMAC_ALGORITHM, "sha512");
    }
    if let Some(ts) = ts {
        req = req.header(w::TIMESTAMP, ts.to_string());
    }
    let r = req.body(body.to_string()).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn signatures_timestamps_and_limits_are_enforced<S: Store>(s: S, db: &TestDb) {
    let (base, _rx, stop) = receiver(s.clone(), &db.url, 300).await;
    let url = format!("{base}/v1/webhooks/main");
    let ev = ack("3EB0AAAABBBBCCCCDDDD0001", "111@c.us", 3);
    let now = Some(now_ms());

    let (code, body) = post(&url, Some(KEY), &ev, now).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("accepted"), "{body}");
    assert_eq!(s.webhook_backlog().await.unwrap(), 1);

    // Refused, each with a message naming what is wrong, never the secret.
    let cases: Vec<(&str, (u16, String), &str)> = vec![
        (
            "wrong key",
            post(&url, Some("another-key"), &ev, now).await,
            "does not match",
        ),
        (
            "body tampered",
            {
                let sig = w::sign(KEY.as_bytes(), ev.as_bytes());
                let tampered = ev.replace("111@c.us", "999@c.us");
                let r = reqwest::Client::new()
                    .post(&url)
                    .header(w::HMAC, sig)
                    .header(w::TIMESTAMP, now_ms().to_string())
                    .body(tampered)
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            },
            "does not match",
        ),
        (
            "missing signature",
            post(&url, None, &ev, now).await,
            "missing X-Webhook-Hmac",
        ),
        (
            "replayed with a stale timestamp",
            post(&url, Some(KEY), &ev, Some(now_ms() - 10 * 60 * 1000)).await,
            "replay",
        ),
        (
            "missing timestamp",
            post(&url, Some(KEY), &ev, None).await,
            "X-Webhook-Timestamp",
        ),
        (
            "a signed envelope too old, with a fresh header",
            {
                let mut old: serde_json::Value = serde_json::from_str(&ev).unwrap();
                old["timestamp"] = (now_ms() - 3_600_000).into();
                post(&url, Some(KEY), &old.to_string(), now).await
            },
            "replay",
        ),
        (
            "the path token route with a wrong token",
            post(&format!("{url}/wrong-token-000000000"), None, &ev, None).await,
            "path token",
        ),
    ];
    for (what, (code, body), says) in &cases {
        assert_eq!(*code, 401, "{what}: {body}");
        assert!(body.contains(says), "{what}: {body}");
        assert!(!body.contains(KEY), "{what}: the secret leaked: {body}");
    }
    let (code, body) = post(&format!("{base}/v1/webhooks/nosuch"), Some(KEY), &ev, now).await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("nosuch"), "{body}");
    let (code, body) = post(&url, Some(KEY), "{not json", now).await;
    assert_eq!(code, 400, "{body}");
    let big = format!(
        r#"{{"event":"message.ack","pad":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let (code, body) = post(&url, Some(KEY), &big, now).await;
    assert_eq!(code, 413, "{body}");
    // An event type we do not use: 200, so the provider stops retrying, not stored.
    let other = serde_json::json!({"event": "session.status", "timestamp": now_ms(), "payload": {"status": "WORKING"}}).to_string();
    let (code, body) = post(&url, Some(KEY), &other, now).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("ignored"), "{body}");
    // The admin token is not a webhook key.
    let (code, _) = post(&url, Some(ADMIN_TOKEN), &ev, now).await;
    assert_eq!(code, 401);
    // A provider that cannot sign: the path token is the key.
    let (code, body) = post(&format!("{url}/path-token-0123456789"), None, &ev, None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        s.webhook_backlog().await.unwrap(),
        2,
        "only the two accepted events are stored"
    );

    // The metrics count them by result and reason.
    let page = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        r#"statusd_webhook_events_total{result="rejected",reason="bad_signature"}"#,
        r#"statusd_webhook_events_total{result="rejected",reason="stale_timestamp"}"#,
        r#"statusd_webhook_events_total{result="accepted",reason="stored"}"#,
    ] {
        assert!(page.contains(needle), "{needle} missing from /metrics");
    }
    stop.cancel();
}

/// A row with its message id committed (`pending_upload`), as the id
/// assigner leaves it.
async fn pending_row<S: Store>(s: &S, n: usize) -> (uuid::Uuid, String) {
    let mut p = text("main", n);
    p.dedupe_key = Some(format!("key-{n}"));
    let id = s.enqueue(p).await.unwrap().id;
    let mid = statusd::wire::ids::local_message_id();
    s.assign_message_ids(&[statusd::store::AssignId {
        id,
        message_id: mid.clone(),
    }])
    .await
    .unwrap();
    (id, mid)
}

async fn claim_all<S: Store>(s: &S) -> Vec<statusd::model::OutboxRow> {
    s.claim(ClaimParams {
        budgets: Vec::new(),
        owner: "test".into(),
        limit: 100,
        lease: Duration::from_secs(60),
        skip_instances: vec![],
        fresh_ids: vec![],
    })
    .await
    .unwrap()
}

async fn duplicate_and_reordered_acks_keep_the_highest_level<S: Store>(s: S, db: &TestDb) {
    let (id, mid) = pending_row(&s, 1).await;
    claim_all(&s).await;
    s.complete(&[Completion {
        transition: Transition::new(id, 1, State::Posted),
        started_at: chrono::Utc::now(),
        latency: Duration::from_millis(5),
        outcome: AttemptOutcome::Posted,
    }])
    .await
    .unwrap();
    let (base, _rx, stop) = receiver(s.clone(), &db.url, 300).await;
    let url = format!("{base}/v1/webhooks/main");
    // Viewer A: READ, then a late DEVICE, then READ again (a retry), then
    // PLAYED; viewer B: DEVICE only, delivered twice; viewer C: READ.
    let events = [
        ack(&mid, "A@c.us", 3),
        ack(&mid, "A@c.us", 2),
        ack(&mid, "B@c.us", 2),
        ack(&mid, "A@c.us", 3),
        ack(&mid, "B@c.us", 2),
        ack(&mid, "C@lid", 3),
    ];
    for e in &events {
        assert_eq!(post(&url, Some(KEY), e, Some(now_ms())).await.0, 200);
    }
    // Applied in two passes, so that the duplicates meet stored rows too.
    processor::pass(&s, 3).await.unwrap();
    processor::pass(&s, 3).await.unwrap();
    let late = ack(&mid, "A@c.us", 4);
    assert_eq!(post(&url, Some(KEY), &late, Some(now_ms())).await.0, 200);
    let replay = ack(&mid, "A@c.us", 1);
    assert_eq!(post(&url, Some(KEY), &replay, Some(now_ms())).await.0, 200);
    processor::pass(&s, 100).await.unwrap();
    assert_eq!(s.webhook_backlog().await.unwrap(), 0);

    let views = s.views_of(&mid).await.unwrap();
    let levels: Vec<(String, i32)> = views.iter().map(|v| (v.viewer.clone(), v.level)).collect();
    assert_eq!(
        levels,
        vec![
            ("A@c.us".to_string(), 4),
            ("C@lid".to_string(), 3),
            ("B@c.us".to_string(), 2)
        ],
        "one row per viewer, each at its highest level"
    );
    let a = &views[0];
    assert!(a.viewed_at.is_some() && a.first_at <= a.last_at);
    let counts = s.view_counts(std::slice::from_ref(&mid)).await.unwrap()[&mid];
    assert_eq!(
        (
            counts.viewers,
            counts.delivered,
            counts.viewed,
            counts.played
        ),
        (3, 3, 2, 1)
    );

    // The API and the row's other keys show the same.
    let r = reqwest::Client::new()
        .get(format!("{base}/v1/statuses/key-1/views"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["counts"]["viewed"], 2);
    assert_eq!(v["viewers"].as_array().unwrap().len(), 3);
    let r = reqwest::Client::new()
        .get(format!("{base}/v1/statuses/{id}/views"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "views need the admin token");
    stop.cancel();
}

async fn an_ack_before_posted_is_attributed_and_changes_nothing<S: Store>(s: S, db: &TestDb) {
    let (id, mid) = pending_row(&s, 2).await;
    // The row is being sent: the provider's events overtake our response.
    let claimed = claim_all(&s).await;
    assert_eq!(claimed[0].state, State::Uploading);
    let (base, _rx, stop) = receiver(s.clone(), &db.url, 300).await;
    let url = format!("{base}/v1/webhooks/main");
    post(&url, Some(KEY), &own_status(&mid), Some(now_ms())).await;
    post(&url, Some(KEY), &ack(&mid, "V@c.us", 3), Some(now_ms())).await;
    processor::pass(&s, 100).await.unwrap();
    let row = s.get(id).await.unwrap().unwrap();
    assert_eq!(
        row.state,
        State::Uploading,
        "an event never takes over a send in flight"
    );
    assert_eq!(row.attempts, 1);
    let v = statusd::admin::webhooks::status_views(&s, &mid)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v.id, id, "attributed by the pre-generated id");
    assert_eq!(v.counts.viewed, 1);
    // The dispatcher's answer still lands: the fence holds.
    let applied = s
        .complete(&[Completion {
            transition: Transition::new(id, 1, State::Posted),
            started_at: chrono::Utc::now(),
            latency: Duration::from_millis(5),
            outcome: AttemptOutcome::Posted,
        }])
        .await
        .unwrap();
    assert_eq!(applied, 1);
    stop.cancel();
}

async fn an_in_doubt_row_is_settled_by_a_webhook_without_a_lookup<S: Store>(s: S, db: &TestDb) {
    // Every response is lost: the row goes in_doubt; the settle delay is
    // long, so only the webhook can settle it within the test.
    let sim = start_sim(SimConfig {
        lost_response: 1.0,
        ..SimConfig::default()
    })
    .await;
    let mut settings = test_settings(&db.url, &sim, &[("main", true)]);
    settings.daemon.settle_delay_ms = 120_000;
    let d = spawn_daemon(s.clone(), &settings);
    let mut p = text("main", 3);
    p.dedupe_key = Some("doubt".into());
    let id = s.enqueue(p).await.unwrap().id;
    let row = wait_state(&s, id, State::InDoubt, 10).await;
    let mid = row.message_id.clone().unwrap();
    let (base, rx, stop) = receiver(s.clone(), &db.url, 300).await;
    let proc_stop = CancellationToken::new();
    let proc = tokio::spawn(processor::run(
        s.clone(),
        rx.wake.clone(),
        processor::ProcessorConfig::new(&settings),
        proc_stop.clone(),
    ));
    let (code, _) = post(
        &format!("{base}/v1/webhooks/main"),
        Some(KEY),
        &own_status(&mid),
        Some(now_ms()),
    )
    .await;
    assert_eq!(code, 200);
    let row = wait_state(&s, id, State::Posted, 5).await;
    assert_eq!(row.provider_id.as_deref(), Some(mid.as_str()));
    let history = s.attempts(id).await.unwrap();
    assert!(
        history
            .iter()
            .any(|a| a.error.as_deref() == Some(CONFIRMED_NOTE)),
        "history says it: {history:?}"
    );
    // A second (replayed) event changes nothing and sends nothing.
    post(
        &format!("{base}/v1/webhooks/main"),
        Some(KEY),
        &ack(&mid, "V@c.us", 3),
        Some(now_ms()),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = sim.stats();
    assert_eq!(stats.lookups, 0, "no look-up was spent: {stats:?}");
    assert_eq!(stats.posted, 1, "shown once: {stats:?}");
    assert_eq!(s.get(id).await.unwrap().unwrap().state, State::Posted);
    d.stop().await;
    proc_stop.cancel();
    proc.await.unwrap().unwrap();
    stop.cancel();
}

async fn a_lost_response_after_a_confirmation_needs_no_lookup<S: Store>(s: S, db: &TestDb) {
    let sim = start_sim(SimConfig::default()).await;
    let settings = test_settings(&db.url, &sim, &[("main", true)]);
    let (id, mid) = pending_row(&s, 4).await;
    claim_all(&s).await;
    // The event arrives while the row is uploading...
    let (base, _rx, stop) = receiver(s.clone(), &db.url, 300).await;
    post(
        &format!("{base}/v1/webhooks/main"),
        Some(KEY),
        &own_status(&mid),
        Some(now_ms()),
    )
    .await;
    processor::pass(&s, 100).await.unwrap();
    assert_eq!(s.get(id).await.unwrap().unwrap().state, State::Uploading);
    // ...then the response is lost: in_doubt, due for a look-up at once.
    s.complete(&[Completion {
        transition: Transition::new(id, 1, State::InDoubt),
        started_at: chrono::Utc::now(),
        latency: Duration::from_millis(5),
        outcome: AttemptOutcome::InDoubt,
    }])
    .await
    .unwrap();
    let daemon = Daemon::new(
        s.clone(),
        wawp_instances(&settings).unwrap(),
        settings.daemon.clone(),
    );
    reconciler::pass(&daemon.ctx()).await.unwrap();
    assert_eq!(s.get(id).await.unwrap().unwrap().state, State::Posted);
    assert_eq!(sim.stats().lookups, 0, "settled with no look-up");
    assert_eq!(sim.stats().posted, 0, "and never sent again");
    stop.cancel();
}

async fn unknown_ids_and_unreadable_events_are_stored_or_dropped_never_looped<S: Store>(
    s: S,
    db: &TestDb,
) {
    let (base, _rx, stop) = receiver(s.clone(), &db.url, 300).await;
    let (id, _) = pending_row(&s, 5).await;
    // A status posted from the phone: no row holds its id.
    let phone = "3EB0FFFFEEEEDDDDCCCC0000";
    post(
        &format!("{base}/v1/webhooks/main"),
        Some(KEY),
        &ack(phone, "X@c.us", 3),
        Some(now_ms()),
    )
    .await;
    // An event that passed the checks but cannot be read (written straight
    // into the inbox, as a damaged row would be).
    s.webhook_accept("main", None, "{\"event\": ")
        .await
        .unwrap();
    let (_, n) = processor::pass(&s, 100).await.unwrap();
    assert_eq!(n, 2);
    assert_eq!(
        s.webhook_backlog().await.unwrap(),
        0,
        "nothing left to retry"
    );
    let (_, n) = processor::pass(&s, 100).await.unwrap();
    assert_eq!(n, 0);
    // Kept for the retention period, attributed to no row.
    assert_eq!(s.views_of(phone).await.unwrap().len(), 1);
    assert_eq!(
        s.get(id).await.unwrap().unwrap().state,
        State::PendingUpload,
        "other rows untouched"
    );
    // The purge drops what no row holds, once old enough.
    assert_eq!(s.purge_views(Duration::from_secs(3600)).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(s.purge_views(Duration::from_millis(1)).await.unwrap() >= 1);
    assert!(s.views_of(phone).await.unwrap().is_empty());
    stop.cancel();
}

async fn wait_state<S: Store>(
    s: &S,
    id: uuid::Uuid,
    state: State,
    secs: u64,
) -> statusd::model::OutboxRow {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let row = s.get(id).await.unwrap().unwrap();
        if row.state == state {
            return row;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "row {id} not {state} after {secs}s: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops a `statusd run` with SIGTERM and reads its log, in which the
/// webhook secret must not appear.
async fn stop_and_read_log(daemon: &mut tokio::process::Child, log: &std::path::Path) -> String {
    let pid = daemon.id().unwrap() as i32;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let _ = tokio::time::timeout(Duration::from_secs(10), daemon.wait()).await;
    let text = std::fs::read_to_string(log).unwrap();
    assert!(
        !text.contains(KEY),
        "the webhook secret leaked into the log"
    );
    text
}

/// The key promise as a user runs it: the real `statusd run` receives
/// signed events on its admin port, and `statusd views` (another process)
/// shows the viewers; the secret appears in no log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_binary_records_views_from_signed_events() {
    let db = TestDb::sqlite().await;
    let sim = start_sim(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    write_daemon_config(dir.path(), &db.url, &sim.base_url());
    let log = dir.path().join("daemon.log");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let bind = format!("127.0.0.1:{port}");
    let env = [
        ("STATUSD__ADMIN__ENABLED", "true"),
        ("STATUSD__ADMIN__BIND", bind.as_str()),
        ("STATUSD__INSTANCES__MAIN__WEBHOOK_SECRET", KEY),
    ];
    let cli = |args: &[&str]| {
        let mut c = crate::support::statusd_in(dir.path(), &dir.path().join("cli.log"), &[]);
        c.args(args).stdout(std::process::Stdio::piped());
        c
    };
    let cli_log = || std::fs::read_to_string(dir.path().join("cli.log")).unwrap_or_default();
    // Migrated first: the enqueue must not race the daemon's own migration.
    assert!(
        cli(&["migrate"]).status().await.unwrap().success(),
        "{}",
        cli_log()
    );
    let mut daemon = crate::support::spawn_run(dir.path(), &log, "info", &env);
    let out = cli(&[
        "enqueue",
        "--instance",
        "main",
        "--text",
        "viewed",
        "--dedupe-key",
        "v1",
    ])
    .output()
    .await
    .unwrap();
    assert!(out.status.success(), "{}", cli_log());
    // Wait for it to be posted, then read its message id.
    let mut mid = String::new();
    for _ in 0..200 {
        let out = cli(&["show", "v1", "--json"]).output().await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["status"]["state"] == "posted" {
            mid = v["status"]["message_id"].as_str().unwrap().to_string();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!mid.is_empty(), "the status was not posted");
    let url = format!("http://{bind}/v1/webhooks/main");
    for (viewer, level) in [("A@c.us", 3), ("B@c.us", 2), ("A@c.us", 2)] {
        let (code, body) = post(&url, Some(KEY), &ack(&mid, viewer, level), Some(now_ms())).await;
        assert_eq!(code, 200, "{body}");
    }
    let (code, _) = post(&url, Some("wrong"), &ack(&mid, "C@c.us", 3), Some(now_ms())).await;
    assert_eq!(code, 401);
    let mut counts = serde_json::Value::Null;
    for _ in 0..100 {
        let out = cli(&["views", "v1", "--json"]).output().await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["counts"]["viewers"] == 2 {
            counts = v["counts"].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counts["viewed"], 1, "{counts}");
    assert_eq!(counts["delivered"], 2, "{counts}");
    let table = cli(&["views", "v1"]).output().await.unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("A@c.us") && table.contains("READ"),
        "{table}"
    );
    let ls = cli(&["ls"]).output().await.unwrap();
    assert!(String::from_utf8_lossy(&ls.stdout).contains("VIEWS"));
    let url_out = cli(&["webhook", "url", "main"]).output().await.unwrap();
    let url_text = String::from_utf8_lossy(&url_out.stdout);
    assert!(url_text.contains("/v1/webhooks/main"), "{url_text}");
    assert!(!url_text.contains(KEY), "the secret is never printed");
    let shown = crate::support::statusd_in(dir.path(), &dir.path().join("cli.log"), &env)
        .args(["config", "show"])
        .stdout(std::process::Stdio::piped())
        .output()
        .await
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("webhook_secret = \"[redacted]\""), "{shown}");
    assert!(
        !shown.contains(KEY),
        "config show leaked the webhook secret"
    );
    // SIGTERM, then no secret anywhere in the daemon's log.
    let text = stop_and_read_log(&mut daemon, &log).await;
    assert!(
        !text.contains(TEST_TOKEN),
        "the access token leaked into the log"
    );
}

/// `statusd webhook register` as an operator runs it against a WAHA
/// session (the simulator's WAHA surface): a dry run writes nothing and
/// shows no key; registering adds statusd's receiver to the session's
/// config, signed with the instance's secret; registering again changes
/// nothing (WAHA restarts a session on every config write); the session's
/// events then reach the real `statusd run` and its viewers are recorded.
/// An instance of the table registers the same way; a Wawp instance is
/// refused with what to do instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_register_points_a_waha_session_at_the_daemon() {
    let db = TestDb::sqlite().await;
    let sim = start_sim(SimConfig {
        engine: statusd::sim::SimEngine::Noweb,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    write_daemon_config(dir.path(), &db.url, &sim.base_url());
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let bind = format!("127.0.0.1:{port}");
    let public = format!("http://{bind}");
    let shop_key = dir.path().join("shop.whsec");
    std::fs::write(&shop_key, "shop-SECRET-hmac-key\n").unwrap();
    let waha = [
        ("STATUSD__ADMIN__ENABLED", "true"),
        ("STATUSD__ADMIN__BIND", bind.as_str()),
        ("STATUSD__WEBHOOKS__PUBLIC_URL", public.as_str()),
        ("STATUSD__INSTANCES__MAIN__PROVIDER", "waha"),
        ("STATUSD__INSTANCES__MAIN__WEBHOOK_SECRET", KEY),
        ("SHOP_TOKEN", TEST_TOKEN),
    ];
    let cli_log = dir.path().join("cli.log");
    let cli = async |args: &[&str], env: &[(&str, &str)]| {
        let out = crate::support::statusd_in(dir.path(), &cli_log, env)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!text.contains(KEY), "a webhook secret was printed: {text}");
        assert!(
            !text.contains("shop-SECRET"),
            "a webhook secret was printed: {text}"
        );
        assert!(!text.contains(TEST_TOKEN), "the token was printed: {text}");
        assert!(
            !text.contains(PATH_TOKEN),
            "the path token was printed: {text}"
        );
        (out.status.success(), text)
    };
    let session_config = async |session: &str| -> serde_json::Value {
        let r = reqwest::Client::new()
            .get(format!("{}/api/sessions/{session}", sim.base_url()))
            .header("X-Api-Key", TEST_TOKEN)
            .send()
            .await
            .unwrap();
        r.json::<serde_json::Value>().await.unwrap()["config"].clone()
    };
    let hook_url = format!("{public}/v1/webhooks/main");

    let (ok, out) = cli(&["webhook", "register", "main", "--dry-run"], &waha).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("dry run") && out.contains(&hook_url) && out.contains("[redacted]"),
        "{out}"
    );
    assert_eq!(sim.stats().session_updates, 0, "a dry run writes nothing");

    let (ok, out) = cli(&["webhook", "register", "main"], &waha).await;
    assert!(ok, "{out}");
    assert!(out.starts_with("registered"), "{out}");
    assert_eq!(sim.stats().session_updates, 1);
    let hooks = session_config("main").await["webhooks"].clone();
    assert_eq!(hooks[0]["url"], hook_url.as_str(), "{hooks}");
    assert_eq!(
        hooks[0]["hmac"]["key"], KEY,
        "signed with the instance's secret"
    );
    assert_eq!(
        hooks[0]["events"],
        serde_json::json!(["message.any", "message.ack"])
    );

    let (ok, out) = cli(&["webhook", "register", "main"], &waha).await;
    assert!(ok, "{out}");
    assert!(out.starts_with("already registered"), "{out}");
    assert_eq!(
        sim.stats().session_updates,
        1,
        "nothing written the second time (no session restart)"
    );

    // An instance of the table: `webhook url` and `register` find it.
    assert!(cli(&["migrate"], &waha).await.0);
    let shop_key_setting = format!("webhook_secret_file={}", shop_key.display());
    let (ok, out) = cli(
        &[
            "instance",
            "add",
            "shop",
            "--base-url",
            &sim.base_url(),
            "--instance-id",
            "shop",
            "--token-env",
            "SHOP_TOKEN",
            "--set",
            "provider=waha",
            "--set",
            &shop_key_setting,
        ],
        &waha,
    )
    .await;
    assert!(ok, "{out}");
    let (ok, out) = cli(&["webhook", "url", "shop"], &waha).await;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("{public}/v1/webhooks/shop")) && out.contains("secret: configured"),
        "{out}"
    );
    let (ok, out) = cli(&["webhook", "register", "shop"], &waha).await;
    assert!(ok, "{out}");
    assert!(out.starts_with("registered"), "{out}");
    let shop_hooks = session_config("shop").await["webhooks"].clone();
    assert_eq!(
        shop_hooks[0]["hmac"]["key"], "shop-SECRET-hmac-key",
        "{shop_hooks}"
    );
    assert_eq!(sim.stats().session_updates, 2);

    // Both sessions' events reach the daemon, the file's instance and the
    // table's (its secret read from the table's settings): every view the
    // simulated viewers made is recorded.
    let log = dir.path().join("daemon.log");
    let mut daemon = crate::support::spawn_run(dir.path(), &log, "info", &waha);
    let rows: Vec<(String, &str)> = (0..4)
        .map(|i| (format!("reg-{i}"), if i % 2 == 0 { "main" } else { "shop" }))
        .collect();
    for (key, instance) in &rows {
        let (ok, out) = cli(
            &[
                "enqueue",
                "--instance",
                instance,
                "--text",
                key,
                "--dedupe-key",
                key,
            ],
            &waha,
        )
        .await;
        assert!(ok, "{out}");
    }
    let mut recorded = 0;
    for _ in 0..200 {
        recorded = 0;
        for (key, _) in &rows {
            let (_, out) = cli(&["views", key, "--json"], &waha).await;
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            recorded += v["counts"]["viewed"].as_u64().unwrap_or(0);
        }
        let made = sim.webhook_stats().views;
        if made > 0 && recorded == made && sim.posted().len() == rows.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let made = sim.webhook_stats();
    assert!(
        made.views > 0,
        "the simulated viewers viewed nothing: {made:?}"
    );
    assert_eq!(
        recorded, made.views,
        "every view the sessions sent is recorded: {made:?}"
    );
    assert_eq!(made.failed, 0, "every event was accepted: {made:?}");
    let shop_views: u64 = {
        let (_, out) = cli(&["views", "reg-1", "--json"], &waha).await;
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v["counts"]["viewers"].as_u64().unwrap_or(0)
    };
    let (_, out) = cli(&["views", "reg-3", "--json"], &waha).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let shop_views = shop_views + v["counts"]["viewers"].as_u64().unwrap_or(0);
    stop_and_read_log(&mut daemon, &log).await;
    // Each of shop's two statuses is viewed by each of 5 viewers with
    // probability 1/2: none viewed at all is 1 in 1,024.
    assert!(shop_views > 0, "the table instance's events were refused");

    let (ok, out) = cli(&["webhook", "register", "nope"], &waha).await;
    assert!(
        !ok && out.contains("nope") && out.contains("instance table"),
        "{out}"
    );

    // Wawp (main without `provider = "waha"`): it gets the URL with the
    // instance's path token; without one it is refused, saying what to set.
    let wawp = [("STATUSD__INSTANCES__MAIN__WEBHOOK_SECRET", KEY)];
    let (ok, out) = cli(&["webhook", "register", "main"], &wawp).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("Wawp") && out.contains("webhook_path_token"),
        "{out}"
    );
    let with_token = [
        ("STATUSD__WEBHOOKS__PUBLIC_URL", public.as_str()),
        ("STATUSD__INSTANCES__MAIN__WEBHOOK_PATH_TOKEN", PATH_TOKEN),
    ];
    let (ok, out) = cli(&["webhook", "register", "main", "--dry-run"], &with_token).await;
    assert!(ok && out.contains("/v2/webhook/set"), "{out}");
    assert_eq!(sim.stats().webhooks_set, 0, "a dry run writes nothing");
    let (ok, out) = cli(&["webhook", "register", "main"], &with_token).await;
    assert!(ok, "{out}");
    assert!(out.starts_with("registered: Wawp instance `main`"), "{out}");
    let target = sim.config().webhooks.unwrap().targets["main"].clone();
    assert_eq!(target.url, format!("{hook_url}/{PATH_TOKEN}"));
    assert_eq!(sim.stats().webhooks_set, 1);
    // No secret: refused before anything is written.
    let (ok, out) = cli(
        &["webhook", "register", "main"],
        &[("STATUSD__INSTANCES__MAIN__PROVIDER", "waha")],
    )
    .await;
    assert!(!ok && out.contains("no webhook secret"), "{out}");
    assert_eq!(sim.stats().session_updates, 2);
}
