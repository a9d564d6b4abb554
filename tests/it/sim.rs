//! The simulator's own behaviour: what viewers see, the duplicate counter
//! (the exactly-once oracle), the control endpoints, reproducibility.

use std::net::SocketAddr;

use serde_json::{json, Value};
use statusd::config::{InstanceConfig, ProviderSettings};
use statusd::model::StatusBody;
use statusd::provider::{OutgoingStatus, Provider, WawpClient};
use statusd::sim::{SimConfig, SimHandle, SimStats, Simulator};
use statusd::wire::ids::local_message_id;

const INSTANCE: &str = "sim-inst";
const TOKEN: &str = "sim-token";

async fn start(cfg: SimConfig) -> SimHandle {
    Simulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), cfg)
        .await
        .expect("simulator")
}

fn client(sim: &SimHandle, supplied_id: bool) -> WawpClient {
    let inst: InstanceConfig = serde_json::from_value(json!({
        "base_url": sim.base_url(),
        "instance_id": INSTANCE,
        "access_token": TOKEN,
        "supplied_id": supplied_id,
    }))
    .expect("instance config");
    let settings: ProviderSettings = serde_json::from_value(json!({
        "connect_timeout_ms": 300,
        "request_timeout_ms": 300,
    }))
    .expect("settings");
    WawpClient::new("sim", &inst, &settings).expect("client")
}

fn text(s: &str) -> StatusBody {
    StatusBody::parse("text", &json!({ "text": s }).to_string()).expect("valid")
}

async fn post(c: &WawpClient, id: &str, body: &StatusBody) -> &'static str {
    c.send_status(&OutgoingStatus {
        message_id: id,
        body,
    })
    .await
    .label()
}

#[tokio::test]
async fn same_content_under_two_ids_is_one_duplicate() {
    let sim = start(SimConfig::default()).await;
    let c = client(&sim, true);
    let body = text("shown twice");
    assert_eq!(post(&c, &local_message_id(), &body).await, "posted");
    assert_eq!(post(&c, &local_message_id(), &body).await, "posted");
    let s = sim.stats();
    assert_eq!((s.posted, s.duplicates, s.deduplicated_by_id), (2, 1, 0));
    assert_eq!(sim.posted().len(), 2);
}

#[tokio::test]
async fn same_id_twice_is_recognised_not_duplicated() {
    let sim = start(SimConfig::default()).await;
    let c = client(&sim, true);
    let id = local_message_id();
    let body = text("sent twice, shown once");
    assert_eq!(post(&c, &id, &body).await, "posted");
    assert_eq!(post(&c, &id, &body).await, "posted");
    let s = sim.stats();
    assert_eq!((s.posted, s.duplicates, s.deduplicated_by_id), (1, 0, 1));
    assert_eq!(sim.posted().len(), 1);
}

#[tokio::test]
async fn in_auto_assign_mode_every_repeat_is_a_duplicate() {
    let sim = start(SimConfig {
        auto_assign_ids: true,
        ..SimConfig::default()
    })
    .await;
    let c = client(&sim, true);
    let id = local_message_id();
    let body = text("repeated");
    for _ in 0..3 {
        assert_eq!(post(&c, &id, &body).await, "posted");
    }
    let s = sim.stats();
    assert_eq!((s.posted, s.duplicates, s.deduplicated_by_id), (3, 2, 0));
    let ids: std::collections::HashSet<_> = sim.posted().into_iter().map(|p| p.id).collect();
    assert_eq!(ids.len(), 3, "each post got its own id");
    assert!(!ids.contains(&id));
}

#[tokio::test]
async fn duplicates_are_counted_per_instance() {
    let sim = start(SimConfig::default()).await;
    let a = client(&sim, true);
    let inst: InstanceConfig = serde_json::from_value(json!({
        "base_url": sim.base_url(), "instance_id": "other", "access_token": "t",
    }))
    .expect("config");
    let b = WawpClient::new("b", &inst, &ProviderSettings::default()).expect("client");
    let body = text("same words, two audiences");
    assert_eq!(post(&a, &local_message_id(), &body).await, "posted");
    let out = b
        .send_status(&OutgoingStatus {
            message_id: &local_message_id(),
            body: &body,
        })
        .await;
    assert_eq!(out.label(), "posted", "{out:?}");
    assert_eq!(sim.stats().duplicates, 0);
}

#[tokio::test]
async fn invalid_bodies_are_rejected_and_not_posted() {
    let sim = start(SimConfig::default()).await;
    let http = reqwest::Client::new();
    let url = format!(
        "{}/v2/status/text?instance_id={INSTANCE}&access_token={TOKEN}",
        sim.base_url()
    );
    let r = http
        .post(&url)
        .json(&json!({"font": 1}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = r.json().await.expect("json");
    assert!(
        v["message"].as_str().unwrap_or("").contains("payload.text"),
        "{v}"
    );
    let r = http.post(&url).body("not json").send().await.expect("send");
    assert_eq!(r.status().as_u16(), 400);
    assert!(sim.posted().is_empty());
}

#[tokio::test]
async fn control_endpoints_report_change_and_reset() {
    let sim = start(SimConfig::default()).await;
    let c = client(&sim, true);
    let http = reqwest::Client::new();
    let base = sim.base_url();
    assert_eq!(post(&c, &local_message_id(), &text("one")).await, "posted");

    let stats: SimStats = http
        .get(format!("{base}/_sim/stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats.posted, 1);
    assert_eq!(stats.requests, 1);

    // Switch on rate limiting over HTTP: the next post is refused.
    let r = http
        .post(format!("{base}/_sim/config"))
        .json(&json!({ "rate_limited_429": 1.0, "retry_after_secs": 3 }))
        .send()
        .await
        .expect("config");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(sim.config().rate_limited_429, 1.0);
    assert_eq!(
        post(&c, &local_message_id(), &text("two")).await,
        "retryable"
    );
    assert_eq!(sim.stats().faults.get("rate_limited_429"), Some(&1));

    // Invalid knobs are refused and change nothing.
    let r = http
        .post(format!("{base}/_sim/config"))
        .json(&json!({ "lost_response": 0.5 }))
        .send()
        .await
        .expect("config");
    assert_eq!(r.status().as_u16(), 400, "probabilities summing above 1");
    assert_eq!(sim.config().lost_response, 0.0);
    let r = http
        .post(format!("{base}/_sim/config"))
        .json(&json!({ "no_such_knob": 1 }))
        .send()
        .await
        .expect("config");
    assert_eq!(r.status().as_u16(), 400);

    let r = http
        .post(format!("{base}/_sim/reset"))
        .send()
        .await
        .expect("reset");
    assert!(r.status().is_success());
    assert_eq!(sim.stats(), SimStats::default());
    assert!(sim.posted().is_empty());
    assert_eq!(sim.config().rate_limited_429, 1.0, "reset keeps the knobs");
}

#[tokio::test]
async fn config_patches_keep_the_tokens() {
    let mut cfg = SimConfig::default();
    cfg.tokens.insert(INSTANCE.into(), TOKEN.into());
    let sim = start(cfg).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/_sim/config", sim.base_url()))
        .json(&json!({ "malformed_body": 0.0 }))
        .send()
        .await
        .expect("config");
    let shown = r.text().await.expect("text");
    assert!(!shown.contains(TOKEN), "tokens are never served: {shown}");
    assert_eq!(
        sim.config().tokens.get(INSTANCE).map(String::as_str),
        Some(TOKEN)
    );
    assert!(!format!("{:?}", sim.config()).contains(TOKEN));
    let c = client(&sim, true);
    assert_eq!(
        post(&c, &local_message_id(), &text("still authorised")).await,
        "posted"
    );
}

#[tokio::test]
async fn a_seed_makes_the_faults_reproducible() {
    async fn run() -> Vec<&'static str> {
        let sim = start(SimConfig {
            seed: Some(42),
            rate_limited_429: 0.3,
            error_5xx_before: 0.2,
            error_5xx_after: 0.2,
            malformed_body: 0.1,
            ..SimConfig::default()
        })
        .await;
        let c = client(&sim, true);
        let mut labels = Vec::new();
        for i in 0..30 {
            labels.push(post(&c, &local_message_id(), &text(&format!("seeded {i}"))).await);
        }
        labels
    }
    let a = run().await;
    let b = run().await;
    assert_eq!(a, b);
    assert!(
        a.contains(&"posted") && a.contains(&"retryable") && a.contains(&"in_doubt"),
        "{a:?}"
    );
}

#[tokio::test]
async fn shutdown_stops_serving_even_with_a_hanging_request() {
    let sim = start(SimConfig {
        hang: 1.0,
        hang_ms: 60_000,
        ..SimConfig::default()
    })
    .await;
    let base = sim.base_url();
    let url = format!("{base}/v2/status/text?instance_id={INSTANCE}&access_token={TOKEN}");
    let hanging = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&json!({"text": "hangs"}))
            .send()
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    tokio::time::timeout(std::time::Duration::from_secs(5), sim.shutdown())
        .await
        .expect("shutdown does not wait for the hang");
    let r = hanging.await.expect("join");
    assert!(r.is_err(), "the hanging request gets no answer: {r:?}");
    let after = reqwest::Client::new()
        .get(format!("{base}/_sim/stats"))
        .send()
        .await;
    assert!(after.is_err(), "nothing listens any more");
}

#[tokio::test]
async fn invalid_configs_are_refused_at_start() {
    let r = Simulator::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        SimConfig {
            lost_response: 1.5,
            ..SimConfig::default()
        },
    )
    .await;
    assert!(r.unwrap_err().to_string().contains("lost_response"));
}

#[test]
fn config_reads_from_a_small_json_with_defaults() {
    let cfg: SimConfig =
        serde_json::from_str(r#"{"lost_response":0.1,"auto_assign_ids":true}"#).expect("parse");
    assert_eq!(cfg.lost_response, 0.1);
    assert!(cfg.auto_assign_ids);
    assert_eq!(cfg.error_5xx_after, 0.0);
    assert!(cfg.validate().is_ok());
    assert!(SimConfig::with_demo_faults().validate().is_ok());
}
