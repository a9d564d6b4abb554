//! Provider capabilities (issue 12 §2, DESIGN.md R6): kept in the database
//! on both backends, learned only in the safe direction, and used by the
//! reconciler so that a by-id "not found" is never taken for absence where
//! supplied ids are not proven honoured — across restarts.

use statusd::store::{record_capabilities, CapabilityChange, Known, Source, Store};

use crate::support::{
    all_rows, assert_exactly_once_in, spawn_daemon, start_sim, test_settings, text, TestDb,
    TEST_TOKEN,
};

fn evidence(supplied: Option<Known>, lookup: Option<Known>) -> CapabilityChange {
    CapabilityChange {
        supplied_ids: supplied,
        lookup_by_id: lookup,
        ..CapabilityChange::evidence("main", "seen in a test")
    }
}

async fn caps_of<S: Store>(store: &S) -> statusd::store::Capabilities {
    store
        .capabilities()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.instance == "main")
        .expect("recorded")
}

/// The learning rule holds in the database: "no" wins over a stale "yes",
/// an operator's word replaces anything, and what is recorded is read back
/// by another connection (a restarted daemon, another replica).
async fn capabilities_are_kept_and_only_weakened_by_evidence<S: Store>(store: S, db: &TestDb) {
    assert!(store.capabilities().await.unwrap().is_empty());
    let c = record_capabilities(&store, &evidence(Some(Known::Yes), Some(Known::Yes)))
        .await
        .unwrap();
    assert!(c.by_id_miss_is_absence());
    let c = record_capabilities(&store, &evidence(Some(Known::No), None))
        .await
        .unwrap();
    assert_eq!(c.supplied_ids, Known::No);
    assert_eq!(c.lookup_by_id, Known::Yes);
    // Another process's stale "yes" does not undo it.
    record_capabilities(&store, &evidence(Some(Known::Yes), None))
        .await
        .unwrap();
    assert_eq!(caps_of(&store).await.supplied_ids, Known::No);
    assert!(caps_of(&store).await.evidence.contains("seen in a test"));
    // A fresh connection to the same database sees it (survives restarts).
    let again = if db.url.starts_with("sqlite:") {
        let s = db.sqlite_store().await;
        caps_of(&s).await
    } else {
        let s = db.pg_store().await;
        caps_of(&s).await
    };
    assert_eq!(again.supplied_ids, Known::No);
    // The operator may say anything.
    let set = CapabilityChange {
        supplied_ids: Some(Known::Yes),
        engine: Some("GOWS".into()),
        source: Source::Operator,
        ..CapabilityChange::evidence("main", "set by an operator")
    };
    let c = record_capabilities(&store, &set).await.unwrap();
    assert_eq!(c.supplied_ids, Known::Yes);
    assert_eq!(c.engine.as_deref(), Some("GOWS"));
    assert!(c.updated_at.is_some());
}

/// Listed ids that belong to other rows (their message id or the id the
/// provider gave them) are reported, so the reconciler leaves them out.
async fn ids_of_other_rows_are_known<S: Store>(store: S, _db: &TestDb) {
    let a = store.enqueue(text("main", 1)).await.unwrap().id;
    let b = store.enqueue(text("main", 2)).await.unwrap().id;
    let claimed = store
        .claim(statusd::store::ClaimParams {
            budgets: Vec::new(),
            owner: "t".into(),
            limit: 2,
            lease: std::time::Duration::from_secs(30),
            skip_instances: vec![],
            fresh_ids: vec![
                "3EB0AAAAAAAAAAAAAAAAAAAA".into(),
                "3EB0BBBBBBBBBBBBBBBBBBBB".into(),
            ],
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    let row_a = claimed.iter().find(|r| r.id == a).unwrap();
    let mut t = statusd::store::Transition::new(a, row_a.attempts, statusd::model::State::Posted);
    t.provider_id = Some("PROVIDER-A".into());
    store
        .complete(&[statusd::store::Completion {
            transition: t,
            started_at: chrono::Utc::now(),
            latency: std::time::Duration::ZERO,
            outcome: statusd::model::AttemptOutcome::Posted,
        }])
        .await
        .unwrap();
    let mid_a = row_a.message_id.clone().unwrap();
    let mid_b = claimed
        .iter()
        .find(|r| r.id == b)
        .unwrap()
        .message_id
        .clone()
        .unwrap();
    let ids = vec![
        "PROVIDER-A".to_string(),
        mid_a.clone(),
        mid_b.clone(),
        "NOBODY".to_string(),
    ];
    let mut known: Vec<String> = store
        .known_message_ids("main", &ids, &[b])
        .await
        .unwrap()
        .into_iter()
        .map(|k| {
            assert_eq!(k.kind, "text");
            assert!(k.payload.contains("status number 1"), "{}", k.payload);
            k.id
        })
        .collect();
    known.sort();
    let mut want = vec!["PROVIDER-A".to_string(), mid_a];
    want.sort();
    assert_eq!(known, want, "b is being reconciled; NOBODY is nobody's");
    assert!(store
        .known_message_ids("other", &ids, &[])
        .await
        .unwrap()
        .is_empty());
}

const ADMIN_TOKEN: &str = "caps-SECRET-admin";

/// The admin API shows what the daemon learned (`GET /v1/instances`,
/// `GET /v1/capabilities`) and takes an operator's word
/// (`PUT /v1/capabilities/{instance}`), behind the admin token, refusing
/// bad input by name; the record is the one `statusd capabilities` reads.
async fn admin_api_shows_and_sets_capabilities<S: Store>(store: S, db: &TestDb) {
    let mut app = crate::support::spawn_app(
        store.clone(),
        &db.url,
        statusd::sim::SimConfig {
            auto_assign_ids: true,
            ..Default::default()
        },
        &[("main", true)],
        ADMIN_TOKEN,
    )
    .await;
    let api = app.api(ADMIN_TOKEN);
    use serde_json::json;

    let anonymous = api.anonymous().get("/v1/capabilities").await;
    assert_eq!(anonymous.code, 401);
    let r = api.get("/v1/capabilities").await;
    assert_eq!(r.code, 200, "{}", r.text);
    assert_eq!(
        r.json()["instances"],
        json!([{"instance": "main", "supplied_ids": "unknown", "lookup_by_id": "unknown",
                "engine": null, "evidence": "", "updated_at": null}]),
        "nothing learned yet"
    );

    // The daemon posts through a provider that replaces our ids, and
    // learns it; the instance list shows it with the evidence.
    store
        .enqueue_many(&(0..5).map(|i| text("main", i)).collect::<Vec<_>>())
        .await
        .unwrap();
    let daemon = app.run_daemon();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let main = loop {
        let r = api.get("/v1/instances").await;
        assert_eq!(r.code, 200, "{}", r.text);
        let list = r.json();
        let main = list
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["instance"] == "main")
            .cloned()
            .expect("main listed");
        if main["capabilities"]["supplied_ids"] == "no" {
            break main;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "supplied_ids = no never learned: {main}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(
        main["capabilities"]["evidence"]
            .as_str()
            .unwrap()
            .contains("was answered as"),
        "{main}"
    );
    assert!(main["capabilities"]["updated_at"].is_string(), "{main}");

    crate::support::wait_drained(&store, 60).await;

    // An operator's word, kept as the record every reader sees.
    let r = api
        .put(
            "/v1/capabilities/main",
            &json!({"lookup_by_id": "no", "engine": " gows "}),
        )
        .await;
    assert_eq!(r.code, 200, "{}", r.text);
    let now = r.json();
    assert_eq!(now["supplied_ids"], "no", "what was learned stays: {now}");
    assert_eq!(now["lookup_by_id"], "no");
    assert_eq!(now["engine"], "GOWS");
    assert!(
        now["evidence"].as_str().unwrap().contains("admin API"),
        "{now}"
    );
    assert!(!r.text.contains(ADMIN_TOKEN), "the token is never recorded");
    let rec = caps_of(&store).await;
    assert_eq!(
        (rec.lookup_by_id, rec.engine.as_deref()),
        (Known::No, Some("GOWS"))
    );
    let r = api.get("/v1/capabilities").await;
    assert_eq!(r.json()["instances"][0]["engine"], "GOWS", "{}", r.text);

    // Bad input is refused by name and changes nothing.
    for (path, body, code, names) in [
        (
            "main",
            json!({"supplied_ids": "maybe"}),
            400,
            vec!["supplied_ids", "maybe"],
        ),
        ("main", json!({}), 400, vec!["give at least one"]),
        ("main", json!({"supplied": "yes"}), 422, vec!["supplied"]),
        ("nope", json!({"supplied_ids": "yes"}), 404, vec!["nope"]),
    ] {
        let r = api.put(&format!("/v1/capabilities/{path}"), &body).await;
        assert_eq!(r.code, code, "{body} -> {}", r.text);
        assert!(
            names.iter().all(|n| r.text.contains(n)),
            "{body} -> {}",
            r.text
        );
    }
    let after = caps_of(&store).await;
    assert_eq!(
        (after.supplied_ids, after.lookup_by_id, after.engine),
        (Known::No, Known::No, Some("GOWS".to_string())),
        "refused calls changed nothing"
    );

    app.shutdown.cancel();
    daemon.await.unwrap().unwrap();
    assert_exactly_once_in(&store, &app.sim, 5).await;
    app.stop().await;
}

crate::both_backends!(
    capabilities_are_kept_and_only_weakened_by_evidence,
    ids_of_other_rows_are_known,
    admin_api_shows_and_sets_capabilities
);

/// The bug of issue 12: a provider that ignores supplied ids, lost answers,
/// and a daemon restarted after it learned that. Every status is shown
/// exactly once, the instance is recorded as `supplied_ids = no`, and the
/// second daemon (a fresh process state) goes by the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ignored_ids_are_learned_once_and_kept_across_restarts() {
    let db = TestDb::sqlite().await;
    let store = db.sqlite_store().await;
    let sim = start_sim(statusd::sim::SimConfig {
        auto_assign_ids: true,
        lost_response: 0.3,
        tokens: [("main".to_string(), TEST_TOKEN.to_string())].into(),
        seed: Some(3),
        ..Default::default()
    })
    .await;
    let settings = test_settings(&db.url, &sim, &[("main", true)]);
    store
        .enqueue_many(&(0..60).map(|i| text("main", i)).collect::<Vec<_>>())
        .await
        .unwrap();
    let d = spawn_daemon(store.clone(), &settings);
    crate::support::wait_drained(&store, 120).await;
    d.stop().await;
    let c = caps_of(&store).await;
    assert_eq!(c.supplied_ids, Known::No, "{c:?}");
    // A second daemon, its memory empty, with more lost answers.
    store
        .enqueue_many(&(60..120).map(|i| text("main", i)).collect::<Vec<_>>())
        .await
        .unwrap();
    let d = spawn_daemon(store.clone(), &settings);
    crate::support::wait_drained(&store, 120).await;
    d.stop().await;
    assert_exactly_once_in(&store, &sim, 120).await;
    let parked = all_rows(&store)
        .await
        .iter()
        .filter(|r| r.parked_at.is_some())
        .count();
    assert_eq!(
        parked, 0,
        "text statuses are always proven one way or the other"
    );
}

/// `statusd capabilities set | ls` as an operator runs them (the real
/// binary): the setting is kept, shown with who set it, a bad value is
/// refused naming the flag, and `statusd stats` shows the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_set_and_see_capabilities_with_the_binary() {
    let db = TestDb::sqlite().await;
    let _store = db.sqlite_store().await;
    let dir = tempfile::tempdir().unwrap();
    crate::support::write_daemon_config(dir.path(), &db.url, "http://127.0.0.1:9");
    let run = |args: &'static [&'static str]| {
        let dir = dir.path().to_path_buf();
        async move {
            let out = crate::support::statusd_command()
                .arg("--config-dir")
                .arg(&dir)
                .args(args)
                .env("STATUSD__INSTANCES__MAIN__ACCESS_TOKEN", TEST_TOKEN)
                .output()
                .await
                .expect("run statusd");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).to_string()
                    + &String::from_utf8_lossy(&out.stderr),
            )
        }
    };
    let (ok, out) = run(&["capabilities"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("main") && out.contains("unknown"), "{out}");
    let (ok, out) = run(&[
        "capabilities",
        "set",
        "main",
        "--supplied-ids",
        "no",
        "--engine",
        "webjs",
    ])
    .await;
    assert!(ok, "{out}");
    let (ok, out) = run(&["capabilities", "ls", "--json"]).await;
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let main = &v["instances"][0];
    assert_eq!(main["instance"], "main");
    assert_eq!(main["supplied_ids"], "no");
    assert_eq!(main["lookup_by_id"], "unknown");
    assert_eq!(main["engine"], "WEBJS");
    assert!(main["evidence"].as_str().unwrap().contains("operator"));
    let (ok, out) = run(&["capabilities", "set", "main", "--supplied-ids", "maybe"]).await;
    assert!(!ok);
    assert!(
        out.contains("--supplied-ids") && out.contains("maybe"),
        "{out}"
    );
    let (ok, out) = run(&["stats"]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("provider capabilities") && out.contains("WEBJS"),
        "{out}"
    );
}
