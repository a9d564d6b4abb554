//! The admin HTTP API over a running daemon: health, auth, metrics, and the
//! operator actions an on-call engineer uses.

use std::time::Duration;

use statusd::admin::AdminServer;
use statusd::config::AdminSettings;
use statusd::daemon::{wawp_instances, Daemon};
use statusd::model::State;
use statusd::sim::SimConfig;
use statusd::store::Store;
use tokio_util::sync::CancellationToken;

use crate::support::{start_sim, test_settings, wait_drained, TestDb};

const ADMIN_TOKEN: &str = "admin-SECRET-77";

crate::both_backends!(admin_api_drives_the_outbox);

async fn admin_api_drives_the_outbox<S: Store>(s: S, db: &TestDb) {
    let sim = start_sim(SimConfig::default()).await;
    let settings = test_settings(&db.url, &sim, &[("main", true)]);
    let daemon = Daemon::new(
        s.clone(),
        wawp_instances(&settings).unwrap(),
        settings.daemon.clone(),
    );
    let admin = AdminServer::bind(
        &AdminSettings {
            enabled: true,
            bind: "127.0.0.1:0".into(),
            token: Some(ADMIN_TOKEN.to_string().into()),
        },
        daemon.ctx(),
    )
    .await
    .unwrap();
    let base = format!("http://{}", admin.local_addr());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(admin.serve(shutdown.clone()));
    let run = tokio::spawn(daemon.run(shutdown.clone()));
    let http = reqwest::Client::new();
    let auth = format!("Bearer {ADMIN_TOKEN}");

    // Health and metrics need no token; the API does.
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{base}/v1/stats"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let wrong = http
        .get(format!("{base}/v1/stats"))
        .header("authorization", "Bearer nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    // Enqueue, with dedupe; a bad payload is refused naming its field.
    let body = serde_json::json!({"instance": "main", "kind": "text", "payload": {"text": "from the API"}, "dedupe_key": "api-1"});
    let r = http
        .post(format!("{base}/v1/statuses"))
        .header("authorization", &auth)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let again = http
        .post(format!("{base}/v1/statuses"))
        .header("authorization", &auth)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200, "same dedupe key: no new row");
    let bad = serde_json::json!({"instance": "main", "kind": "image", "payload": {"file": {"url": "http://x/a.jpg", "mimetype": "image/jpeg"}}});
    let r = http
        .post(format!("{base}/v1/statuses"))
        .header("authorization", &auth)
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("payload.file.url"));
    let r = http
        .post(format!("{base}/v1/statuses"))
        .header("authorization", &auth)
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    wait_drained(&s, 30).await;
    let shown = http
        .get(format!("{base}/v1/statuses/{id}"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    let shown: serde_json::Value = shown.json().await.unwrap();
    assert_eq!(shown["status"]["state"], "posted");
    assert_eq!(shown["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(sim.stats().posted, 1);

    // Cancel refuses a posted row; delete takes it down at the provider.
    let r = http
        .post(format!("{base}/v1/statuses/{id}/cancel"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = http
        .post(format!("{base}/v1/statuses/{id}/delete"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(
        s.get(id.parse().unwrap()).await.unwrap().unwrap().state,
        State::Deleted
    );
    assert_eq!(sim.stats().deleted, 1);
    let r = http
        .post(format!("{base}/v1/statuses/{}/retry", uuid::Uuid::now_v7()))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Listing with filters, and a clear error for a bad one.
    let r = http
        .get(format!("{base}/v1/statuses?state=deleted&since=1h"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Vec<serde_json::Value>>().await.unwrap().len(), 1);
    let r = http
        .get(format!("{base}/v1/statuses?state=done"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("state"));

    // Metrics carry transitions and latencies, and no secret.
    let m = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("statusd_transitions_total"), "{m}");
    assert!(
        m.contains("statusd_provider_request_duration_seconds_bucket"),
        "{m}"
    );
    assert!(!m.contains(crate::support::TEST_TOKEN) && !m.contains(ADMIN_TOKEN));

    shutdown.cancel();
    run.await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
