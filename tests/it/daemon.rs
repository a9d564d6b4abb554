//! End-to-end: the real daemon, the real Wawp client, the simulator over
//! loopback HTTP and a real database. The simulator's record is the oracle.

use std::time::Duration;

use statusd::config::Settings;
use statusd::model::OutboxRow;
use statusd::model::State;
use statusd::provider::{OutgoingStatus, Provider, WawpClient};
use statusd::sim::{SimConfig, SimHandle};
use statusd::store::{ClaimParams, EnqueueParams, ListParams, Store};

use crate::support::{
    assert_exactly_once_in, exec_raw, spawn_daemon, start_sim, test_settings, text, wait_drained,
    TestDb,
};

crate::both_backends!(
    every_fault_ends_posted_exactly_once,
    auto_assigned_ids_are_reconciled_by_content,
    expired_leases_of_a_dead_daemon_are_reconciled,
    instance_down_pauses_rows_instead_of_failing_them,
    bad_rows_become_invalid_and_good_rows_still_post,
    shutdown_mid_drain_loses_nothing,
    api_id_source_fetches_ids_before_sending,
    rows_that_wait_past_half_their_lease_are_released_not_sent,
);

fn faulty() -> SimConfig {
    SimConfig {
        lost_response: 0.10,
        error_5xx_after: 0.08,
        hang_after_commit: 0.04,
        hang: 0.04,
        error_5xx_before: 0.05,
        rate_limited_429: 0.05,
        malformed_body: 0.05,
        retry_after_secs: 1,
        hang_ms: 700,
        latency_max_ms: 3,
        seed: Some(7),
        ..SimConfig::default()
    }
}

async fn enqueue_n<S: Store>(s: &S, instance: &str, n: usize) {
    let batch: Vec<EnqueueParams> = (0..n).map(|i| text(instance, i)).collect();
    assert_eq!(s.enqueue_many(&batch).await.unwrap(), n as u64);
}

async fn all_posted<S: Store>(s: &S, n: usize) {
    let posted = list_rows(s, Some(State::Posted), 1_000_000).await;
    assert_eq!(posted.len(), n, "summary: {:?}", s.summary().await.unwrap());
}

/// Up to `limit` rows of the outbox (those in `state` if given).
async fn list_rows<S: Store>(s: &S, state: Option<State>, limit: i64) -> Vec<OutboxRow> {
    s.list(ListParams {
        state,
        limit,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// A daemon over `s` with `settings` until every row is terminal (within
/// `secs`), stopped; then each of `n` statuses shown exactly once.
async fn drain_exactly_once<S: Store>(
    s: &S,
    sim: &SimHandle,
    settings: &Settings,
    secs: u64,
    n: usize,
) {
    let d = spawn_daemon(s.clone(), settings);
    wait_drained(s, secs).await;
    d.stop().await;
    assert_exactly_once_in(s, sim, n).await;
}

async fn every_fault_ends_posted_exactly_once<S: Store>(s: S, db: &TestDb) {
    let sim = start_sim(faulty()).await;
    let settings = test_settings(&db.url, &sim, &[("main", true)]);
    enqueue_n(&s, "main", 400).await;
    drain_exactly_once(&s, &sim, &settings, 90, 400).await;
    all_posted(&s, 400).await;
    let faults = sim.stats().faults;
    for kind in [
        "lost_response",
        "error_5xx_after",
        "hang_after_commit",
        "hang",
        "error_5xx_before",
        "rate_limited_429",
        "malformed_body",
    ] {
        assert!(
            faults.get(kind).copied().unwrap_or(0) > 0,
            "fault {kind} was never injected: {faults:?}"
        );
    }
    // The posted rows carry the id the provider knows them by.
    let ids: std::collections::HashSet<String> = sim.posted().into_iter().map(|p| p.id).collect();
    let rows = list_rows(&s, None, 1000).await;
    assert!(rows
        .iter()
        .all(|r| ids.contains(r.provider_id.as_deref().unwrap_or("-"))));
    // Some rows went through in_doubt and were reconciled; the history shows it.
    let reconciled = rows
        .iter()
        .filter(|r| r.attempts > 1 || r.last_error.is_some())
        .count();
    assert!(reconciled > 0);
}

async fn auto_assigned_ids_are_reconciled_by_content<S: Store>(s: S, db: &TestDb) {
    let sim = start_sim(SimConfig {
        auto_assign_ids: true,
        ..faulty()
    })
    .await;
    let settings = test_settings(&db.url, &sim, &[("main", false)]);
    enqueue_n(&s, "main", 300).await;
    drain_exactly_once(&s, &sim, &settings, 90, 300).await;
    all_posted(&s, 300).await;
    // The provider's own ids were recorded, not ours.
    let rows = list_rows(&s, None, 1000).await;
    assert!(rows
        .iter()
        .all(|r| r.provider_id.is_some() && r.provider_id != r.message_id));
}

async fn expired_leases_of_a_dead_daemon_are_reconciled<S: Store>(s: S, db: &TestDb) {
    let sim = start_sim(SimConfig::default()).await;
    let settings = test_settings(&db.url, &sim, &[("main", true)]);
    enqueue_n(&s, "main", 40).await;
    // A "previous daemon": assigns ids, claims with a short lease, posts half
    // of the rows and dies before writing any outcome.
    let q = s.queued(100).await.unwrap();
    let assign: Vec<_> = q
        .iter()
        .map(|r| statusd::store::AssignId {
            id: r.id,
            message_id: statusd::provider::ids::local_message_id(),
        })
        .collect();
    s.assign_message_ids(&assign).await.unwrap();
    let claimed = s
        .claim(ClaimParams {
            budgets: Vec::new(),
            owner: "dead".into(),
            limit: 100,
            lease: Duration::from_millis(300),
            skip_instances: vec![],
            fresh_ids: vec![],
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 40);
    let client = WawpClient::new("main", &settings.instances["main"], &settings.provider).unwrap();
    for row in claimed.iter().step_by(2) {
        let body = statusd::model::StatusBody::parse(&row.kind, &row.payload).unwrap();
        let out = client
            .send_status(&OutgoingStatus {
                message_id: row.message_id.as_deref().unwrap(),
                body: &body,
            })
            .await;
        assert!(
            matches!(out, statusd::provider::SendOutcome::Posted { .. }),
            "{out:?}"
        );
    }
    assert_eq!(sim.stats().posted, 20);
    drain_exactly_once(&s, &sim, &settings, 60, 40).await;
    all_posted(&s, 40).await;
    assert_eq!(
        sim.stats().posted,
        40,
        "the 20 already posted were found, not re-posted"
    );
}

async fn instance_down_pauses_rows_instead_of_failing_them<S: Store>(s: S, db: &TestDb) {
    let mut cfg = SimConfig::default();
    cfg.unauthorized_instances.insert("down".into());
    let sim = start_sim(cfg).await;
    let settings = test_settings(&db.url, &sim, &[("main", true), ("down", true)]);
    for i in 0..20 {
        s.enqueue(text(if i % 2 == 0 { "main" } else { "down" }, i))
            .await
            .unwrap();
    }
    let d = spawn_daemon(s.clone(), &settings);
    // main drains; down's rows wait as pending_upload, none failed.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let posted = list_rows(&s, Some(State::Posted), 100).await;
        if posted.len() == 10 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "main did not drain");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let down = s
        .list(ListParams {
            instance: Some("down".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(down.len(), 10);
    assert!(
        down.iter().all(|r| r.state == State::PendingUpload),
        "{:?}",
        down.iter().map(|r| r.state).collect::<Vec<_>>()
    );
    assert!(
        down.iter().all(|r| r.attempts == 0),
        "a paused instance's rows keep their attempts"
    );
    // The session comes back: the probe resumes the instance.
    sim.set_config(SimConfig::default()).unwrap();
    wait_drained(&s, 30).await;
    d.stop().await;
    assert_exactly_once_in(&s, &sim, 20).await;
}

async fn bad_rows_become_invalid_and_good_rows_still_post<S: Store>(s: S, db: &TestDb) {
    let sim = start_sim(SimConfig::default()).await;
    let settings = test_settings(&db.url, &sim, &[("main", true)]);
    enqueue_n(&s, "main", 50).await;
    let bad = [
        (
            r#"('main', 'text', '{"caption":"no text"}')"#,
            "payload.text",
        ),
        (r#"('nowhere', 'text', '{"text":"who?"}')"#, "instance"),
        (
            r#"('main', 'video', '{"file":{"url":"ftp://x/v.mp4","mimetype":"video/mp4"}}')"#,
            "payload.file.url",
        ),
        (
            r#"('main', 'image', '{"file":{"url":"https://x/a.png","mimetype":"image/png"},"caption":5}')"#,
            "payload.caption",
        ),
    ];
    for (values, _) in &bad {
        exec_raw(
            db,
            &format!("INSERT INTO status_outbox (instance, kind, payload) VALUES {values}"),
        )
        .await
        .unwrap();
    }
    drain_exactly_once(&s, &sim, &settings, 60, 50).await;
    let invalid = list_rows(&s, Some(State::Invalid), 100).await;
    assert_eq!(invalid.len(), bad.len());
    for (_, field) in bad {
        assert!(
            invalid.iter().any(|r| r
                .last_error
                .as_deref()
                .unwrap_or("")
                .starts_with(&format!("{field}:"))),
            "no invalid row names {field}: {:?}",
            invalid
                .iter()
                .map(|r| r.last_error.clone())
                .collect::<Vec<_>>()
        );
    }
}

async fn shutdown_mid_drain_loses_nothing<S: Store>(s: S, db: &TestDb) {
    let sim = start_sim(SimConfig {
        latency_min_ms: 20,
        latency_max_ms: 60,
        ..faulty()
    })
    .await;
    let mut settings = test_settings(&db.url, &sim, &[("main", true)]);
    settings.daemon.shutdown_grace_secs = 0;
    // Two send slots against an instance that may hold 2 × 32 rows: the
    // claimer keeps rows waiting for a slot at every moment after its first
    // claim, so the stop always finds some to release (not a race).
    settings.daemon.concurrency = 2;
    enqueue_n(&s, "main", 300).await;
    let d = spawn_daemon(s.clone(), &settings);
    // Stop while sends are in flight.
    loop {
        if sim.stats().posted >= 60 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    d.stop().await;
    assert!(crate::support::live_rows(&s).await > 0, "stopped mid-drain");
    let uploading = list_rows(&s, Some(State::Uploading), 1000).await;
    assert!(
        uploading.is_empty(),
        "cancelled calls were recorded as in_doubt, not left leased"
    );
    // Rows claimed ahead of a free slot and never sent went straight back
    // to pending_upload with their attempt refunded: nothing to doubt.
    let pending = list_rows(&s, Some(State::PendingUpload), 1000).await;
    let mut released = 0;
    for row in &pending {
        let history = s.attempts(row.id).await.unwrap();
        if history.last().is_some_and(|a| a.outcome == "released") {
            released += released_and_refunded(row, &history);
        }
    }
    assert!(
        released > 0,
        "claimed rows waiting for a slot were released"
    );
    settings.daemon.concurrency = 32;
    drain_exactly_once(&s, &sim, &settings, 90, 300).await;
}

async fn api_id_source_fetches_ids_before_sending<S: Store>(s: S, db: &TestDb) {
    // A provider that posts under the supplied id (NOWEB, GOWS); the
    // simulator's default plays Wawp, which assigns its own.
    let sim = start_sim(SimConfig {
        supplied_ids: Some(true),
        ..SimConfig::default()
    })
    .await;
    let mut settings = test_settings(&db.url, &sim, &[("main", true)]);
    settings.daemon.id_source = statusd::config::IdSource::Api;
    enqueue_n(&s, "main", 60).await;
    drain_exactly_once(&s, &sim, &settings, 60, 60).await;
    let rows = list_rows(&s, None, 100).await;
    for r in rows {
        let mid = r.message_id.unwrap();
        assert!(statusd::provider::ids::is_well_formed(&mid));
        assert_eq!(
            r.provider_id.as_deref(),
            Some(mid.as_str()),
            "posted under the id fetched before sending"
        );
    }
}

/// Two daemons on one PostgreSQL database share the work, and no status is
/// shown twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_daemons_on_one_postgres_never_duplicate() {
    let db = TestDb::postgres().await;
    let s = db.pg_store().await;
    let sim = start_sim(SimConfig {
        lost_response: 0.05,
        error_5xx_after: 0.05,
        hang_ms: 700,
        seed: Some(3),
        ..SimConfig::default()
    })
    .await;
    let settings = test_settings(&db.url, &sim, &[("main", true)]);
    enqueue_n(&s, "main", 5000).await;
    let mut a_settings = settings.clone();
    a_settings.daemon.owner = Some("replica-a".into());
    let mut b_settings = settings.clone();
    b_settings.daemon.owner = Some("replica-b".into());
    let s2 = db.pg_store().await;
    let a = spawn_daemon(s.clone(), &a_settings);
    let b = spawn_daemon(s2, &b_settings);
    wait_drained(&s, 240).await;
    a.stop().await;
    b.stop().await;
    assert_exactly_once_in(&s, &sim, 5000).await;
    all_posted(&s, 5000).await;
}

/// The `LISTEN` connection is dropped by the server; the daemon reconnects
/// and still wakes on new rows (and polls meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_wakeup_survives_a_dropped_listener() {
    let db = TestDb::postgres().await;
    let s = db.pg_store().await;
    let mut wake = s.subscribe();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.enqueue(text("main", 0)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), wake.changed())
        .await
        .expect("notified")
        .unwrap();
    let name = db.url.rsplit('/').next().unwrap().to_string();
    let killed = exec_raw(
        &db,
        &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND query ILIKE 'LISTEN%'"),
    )
    .await
    .unwrap();
    assert!(
        killed >= 1,
        "the listener connection was found and terminated"
    );
    // Give the listener time to notice and reconnect, then expect a wake-up
    // for a new row (the reconnect itself also signals).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    wake.borrow_and_update();
    s.enqueue(text("main", 1)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), wake.changed())
        .await
        .expect("notified after reconnect")
        .unwrap();
}

/// A schedule firing every second on two daemons enqueues each occurrence
/// once, and each is posted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schedules_fire_once_per_occurrence_across_replicas() {
    let db = TestDb::postgres().await;
    let s = db.pg_store().await;
    let sim = start_sim(SimConfig::default()).await;
    let settings = test_settings(&db.url, &sim, &[("main", true)]);
    s.add_schedule(&statusd::store::Schedule {
        id: uuid::Uuid::now_v7(),
        name: "every-second".into(),
        cron: "* * * * * *".into(),
        timezone: "Europe/Berlin".into(),
        instance: "main".into(),
        kind: "text".into(),
        payload: r#"{"text":"tick"}"#.into(),
        enabled: true,
    })
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let a = spawn_daemon(s.clone(), &settings);
    let b = spawn_daemon(db.pg_store().await, &settings);
    tokio::time::sleep(Duration::from_millis(4200)).await;
    a.stop().await;
    b.stop().await;
    let secs = started.elapsed().as_secs_f64().ceil() as usize;
    wait_drained(&s, 30).await;
    let rows = list_rows(&s, None, 100).await;
    assert!(
        rows.len() >= 3 && rows.len() <= secs + 1,
        "{} rows in {secs}s",
        rows.len()
    );
    assert!(rows.iter().all(|r| r
        .dedupe_key
        .as_deref()
        .unwrap_or("")
        .starts_with("schedule:")));
    assert_eq!(
        sim.stats().posted as usize,
        rows.len(),
        "each occurrence posted once"
    );
}

/// Claimed rows wait in a one-batch buffer for a send slot; one that waited
/// past half its lease goes back to `pending_upload` unsent (its attempt
/// refunded) and is claimed afresh, so no send starts on a lease the
/// rescuer may be about to take back.
async fn rows_that_wait_past_half_their_lease_are_released_not_sent<S: Store>(s: S, db: &TestDb) {
    // Each send takes 1.2 s; the lease is 2 s, so the second row in the
    // buffer has waited past 1 s when the only slot frees.
    let sim = start_sim(SimConfig {
        latency_min_ms: 1200,
        latency_max_ms: 1200,
        ..SimConfig::default()
    })
    .await;
    let mut settings = test_settings(&db.url, &sim, &[("main", true)]);
    settings.daemon.lease_secs = 2;
    settings.daemon.concurrency = 1;
    settings.provider.request_timeout_ms = 5_000;
    enqueue_n(&s, "main", 3).await;
    drain_exactly_once(&s, &sim, &settings, 60, 3).await;
    let rows = list_rows(&s, None, 10).await;
    let mut released = 0;
    for row in &rows {
        assert_eq!(row.state, State::Posted);
        let history = s.attempts(row.id).await.unwrap();
        released += released_and_refunded(row, &history);
        let sent = history.iter().filter(|a| a.outcome != "released").count();
        assert_eq!(
            row.attempts as usize, sent,
            "released attempts are refunded: {history:?}"
        );
    }
    assert!(
        released > 0,
        "a row that waited past half its lease was released"
    );
    // A released row is never sent. A row sent late in its lease has its
    // call cut at the lease left (1.2 s of latency here, beyond what
    // `config check` allows), goes in doubt and may be sent again under the
    // same id, which the provider deduplicates: viewers see each once.
    let stats = sim.stats();
    assert_eq!(stats.duplicates, 0, "no status shown twice: {stats:?}");
}

/// How many of a row's attempts were `released`, asserting each was
/// refunded: the attempt after it (or the row now) carries the same number.
/// Counting the other attempts would not do: a 429 is refunded too.
fn released_and_refunded(
    row: &statusd::model::OutboxRow,
    history: &[statusd::model::Attempt],
) -> usize {
    let mut released = 0;
    for (i, a) in history.iter().enumerate() {
        if a.outcome != "released" {
            continue;
        }
        released += 1;
        let next = history.get(i + 1).map_or(row.attempts + 1, |n| n.attempt);
        assert_eq!(
            next, a.attempt,
            "a released attempt is refunded: {history:?}"
        );
    }
    released
}
