//! The real provider client against the in-process simulator, over
//! loopback: every fault kind must come out as its documented class, and
//! the look-ups the reconciler makes (by id, one read of the status chat)
//! answer as the simulator recorded.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use statusd::config::{InstanceConfig, ProviderSettings};
use statusd::model::{Kind, StatusBody};
use statusd::provider::search::{self, Verdict};
use statusd::provider::{
    ById, OutgoingStatus, Provider, ProviderError, SendOutcome, StatusQuery, WawpClient,
};
use statusd::sim::{SimConfig, SimHandle, Simulator};
use statusd::wire::ids::{is_well_formed, local_message_id};

const INSTANCE: &str = "inst-1";
const TOKEN: &str = "test-token-1";

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A simulator that knows `INSTANCE`/`TOKEN`, hangs for 1.5 s, and honours
/// supplied ids with a message store unless the test says otherwise.
async fn sim(tweak: impl FnOnce(&mut SimConfig)) -> SimHandle {
    let mut cfg = SimConfig {
        hang_ms: 1_500,
        retry_after_secs: 7,
        seed: Some(1),
        ..SimConfig::default()
    };
    cfg.tokens.insert(INSTANCE.into(), TOKEN.into());
    tweak(&mut cfg);
    if !cfg.auto_assign_ids && cfg.supplied_ids.is_none() {
        cfg.supplied_ids = Some(true);
    }
    Simulator::start(any_port(), cfg).await.expect("simulator")
}

/// A client with 300 ms timeouts.
fn client_for(base_url: &str, instance: &str, token: &str, supplied_id: bool) -> WawpClient {
    let inst: InstanceConfig = serde_json::from_value(json!({
        "base_url": base_url,
        "instance_id": instance,
        "access_token": token,
        "supplied_id": supplied_id,
    }))
    .expect("instance config");
    let settings: ProviderSettings = serde_json::from_value(json!({
        "connect_timeout_ms": 300,
        "request_timeout_ms": 300,
    }))
    .expect("provider settings");
    WawpClient::new("main", &inst, &settings).expect("client")
}

fn client(sim: &SimHandle, supplied_id: bool) -> WawpClient {
    client_for(&sim.base_url(), INSTANCE, TOKEN, supplied_id)
}

fn text(s: &str) -> StatusBody {
    StatusBody::parse("text", &json!({ "text": s }).to_string()).expect("valid text")
}

async fn send(c: &WawpClient, id: &str, body: &StatusBody) -> SendOutcome {
    c.send_status(&OutgoingStatus {
        message_id: id,
        body,
    })
    .await
}

/// What one read of the status chat says about a status (the reconciler's
/// content search), with no other rows' ids to leave out.
async fn search(c: &WawpClient, id: &str, body: &StatusBody, sent_after: DateTime<Utc>) -> Verdict {
    let q = StatusQuery {
        message_id: id.to_string(),
        kind: body.kind(),
        fingerprint: body.fingerprint(),
        sent_after,
    };
    let listing = search::read_listing(c, sent_after, || async {}).await;
    search::settle(&[q], &listing, &Default::default())
        .pop()
        .expect("one verdict")
}

fn present(provider_id: &str, by_our_id: bool) -> Verdict {
    Verdict::Present {
        provider_id: provider_id.to_string(),
        by_our_id,
    }
}

fn a_minute_ago() -> DateTime<Utc> {
    Utc::now() - chrono::Duration::minutes(1)
}

/// A loopback port with nothing listening.
fn unused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    port
}

#[tokio::test]
async fn a_clean_post_is_posted_under_the_supplied_id() {
    let sim = sim(|_| {}).await;
    let c = client(&sim, true);
    let id = local_message_id();
    let body = text("hello");
    assert_eq!(
        send(&c, &id, &body).await,
        SendOutcome::Posted {
            provider_id: id.clone()
        }
    );
    let posted = sim.posted();
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0].id, id);
    assert_eq!(posted[0].kind, Kind::Text);
    assert_eq!(posted[0].fingerprint, body.fingerprint());
    // A text status always carries backgroundColor and font (WEBJS answers
    // 500 without them).
    assert_eq!(
        posted[0].body,
        json!({ "text": "hello", "backgroundColor": "#38b42f", "font": 1 })
    );
}

#[tokio::test]
async fn media_kinds_go_to_their_paths() {
    let sim = sim(|_| {}).await;
    let c = client(&sim, true);
    let bodies = [
        StatusBody::parse(
            "image",
            r#"{"file":{"url":"https://x/a.jpg","mimetype":"image/jpeg"},"caption":"c"}"#,
        ),
        StatusBody::parse(
            "voice",
            r#"{"file":{"url":"https://x/a.ogg","mimetype":"audio/ogg; codecs=opus"}}"#,
        ),
        StatusBody::parse(
            "video",
            r#"{"file":{"url":"https://x/a.mp4","mimetype":"video/mp4"}}"#,
        ),
    ];
    for b in bodies {
        let b = b.expect("valid body");
        let out = send(&c, &local_message_id(), &b).await;
        assert_eq!(out.label(), "posted", "{out:?}");
        // A listing without downloaded media carries no URL to compare
        // (`media: null`): by content, a media status can be neither
        // found nor proven absent — only by id.
        let auto = client(&sim, false);
        assert!(matches!(
            search(&auto, "unknown", &b, a_minute_ago()).await,
            Verdict::Unknown { .. }
        ));
    }
    let kinds: Vec<Kind> = sim.posted().iter().map(|p| p.kind).collect();
    assert_eq!(kinds, [Kind::Image, Kind::Voice, Kind::Video]);
}

#[tokio::test]
async fn lost_response_is_in_doubt_and_was_posted() {
    let sim = sim(|c| c.lost_response = 1.0).await;
    let c = client(&sim, true);
    let id = local_message_id();
    let out = send(&c, &id, &text("lost")).await;
    assert!(
        matches!(
            out,
            SendOutcome::InDoubt {
                http_status: None,
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(sim.posted().len(), 1);
    assert_eq!(sim.posted()[0].id, id);
    assert_eq!(sim.stats().faults.get("lost_response"), Some(&1));
}

#[tokio::test]
async fn error_5xx_before_processing_is_retryable_and_not_posted() {
    let sim = sim(|c| c.error_5xx_before = 1.0).await;
    let out = send(&client(&sim, true), &local_message_id(), &text("x")).await;
    assert!(
        matches!(out, SendOutcome::Retryable { http_status: Some(503), retry_after: Some(d), .. } if d == Duration::from_secs(7)),
        "{out:?}"
    );
    assert!(sim.posted().is_empty());
}

#[tokio::test]
async fn error_5xx_after_processing_is_in_doubt_and_was_posted() {
    let sim = sim(|c| c.error_5xx_after = 1.0).await;
    let out = send(&client(&sim, true), &local_message_id(), &text("x")).await;
    assert!(
        matches!(
            out,
            SendOutcome::InDoubt {
                http_status: Some(500),
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(sim.posted().len(), 1);
}

#[tokio::test]
async fn hang_before_processing_is_in_doubt_and_not_posted() {
    let sim = sim(|c| c.hang = 1.0).await;
    let started = std::time::Instant::now();
    let out = send(&client(&sim, true), &local_message_id(), &text("x")).await;
    assert!(
        matches!(
            out,
            SendOutcome::InDoubt {
                http_status: None,
                ..
            }
        ),
        "{out:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1_400),
        "the client timeout did not fire"
    );
    assert!(sim.posted().is_empty());
}

#[tokio::test]
async fn hang_after_commit_is_in_doubt_and_was_posted() {
    let sim = sim(|c| c.hang_after_commit = 1.0).await;
    let out = send(&client(&sim, true), &local_message_id(), &text("x")).await;
    assert!(
        matches!(
            out,
            SendOutcome::InDoubt {
                http_status: None,
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(sim.posted().len(), 1);
}

#[tokio::test]
async fn rate_limited_is_retryable_with_retry_after() {
    let sim = sim(|c| c.rate_limited_429 = 1.0).await;
    let out = send(&client(&sim, true), &local_message_id(), &text("x")).await;
    assert_eq!(out.label(), "retryable", "{out:?}");
    assert_eq!(out.http_status(), Some(429));
    assert!(
        matches!(out, SendOutcome::Retryable { retry_after: Some(d), .. } if d == Duration::from_secs(7)),
        "{out:?}"
    );
    assert!(sim.posted().is_empty());
}

#[tokio::test]
async fn unauthorized_instances_and_wrong_tokens_are_instance_down() {
    let sim = sim(|c| {
        c.unauthorized_instances.insert("banned".into());
        c.tokens.insert("banned".into(), "t".into());
    })
    .await;
    for c in [
        client_for(&sim.base_url(), "banned", "t", true),
        client_for(&sim.base_url(), INSTANCE, "not-the-token", true),
    ] {
        let out = send(&c, &local_message_id(), &text("x")).await;
        assert!(
            matches!(
                out,
                SendOutcome::InstanceDown {
                    http_status: Some(401),
                    ..
                }
            ),
            "{out:?}"
        );
        assert!(matches!(
            c.probe().await,
            Err(ProviderError::InstanceDown(_))
        ));
        assert!(matches!(
            c.new_message_id().await,
            Err(ProviderError::InstanceDown(_))
        ));
    }
    assert!(sim.posted().is_empty());
}

#[tokio::test]
async fn a_disconnected_session_is_instance_down() {
    let sim = sim(|c| {
        c.disconnected_instances.insert(INSTANCE.into());
    })
    .await;
    let c = client(&sim, true);
    let out = send(&c, &local_message_id(), &text("x")).await;
    assert!(
        matches!(
            out,
            SendOutcome::InstanceDown {
                http_status: Some(422),
                ..
            }
        ),
        "{out:?}"
    );
    match c.probe().await {
        Err(ProviderError::InstanceDown(reason)) => {
            assert!(reason.contains("SCAN_QR_CODE"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(sim.posted().is_empty());
}

#[tokio::test]
async fn malformed_body_is_in_doubt_and_was_posted() {
    let sim = sim(|c| c.malformed_body = 1.0).await;
    let out = send(&client(&sim, true), &local_message_id(), &text("x")).await;
    assert!(
        matches!(
            out,
            SendOutcome::InDoubt {
                http_status: Some(200),
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(sim.posted().len(), 1);
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    let c = client_for(
        &format!("http://127.0.0.1:{}", unused_port()),
        INSTANCE,
        TOKEN,
        true,
    );
    let out = send(&c, &local_message_id(), &text("x")).await;
    assert!(
        matches!(
            out,
            SendOutcome::Retryable {
                http_status: None,
                retry_after: None,
                ..
            }
        ),
        "{out:?}"
    );
    assert!(matches!(
        c.probe().await,
        Err(ProviderError::Unavailable(_))
    ));
    assert!(matches!(
        search(&c, "3EB00000000000000000", &text("x"), a_minute_ago()).await,
        Verdict::Unknown { .. }
    ));
    assert!(matches!(
        c.lookup_by_id("3EB00000000000000000").await,
        ById::Failed { .. }
    ));
}

#[tokio::test]
async fn deleting_an_unknown_status_is_permanent_and_a_known_one_is_deleted() {
    let sim = sim(|_| {}).await;
    let c = client(&sim, true);
    let out = c.delete_status("3EB0FFFFFFFFFFFFFFFFFFFF").await;
    assert!(
        matches!(&out, SendOutcome::Permanent { http_status: 404, reason } if reason.contains("not found")),
        "{out:?}"
    );
    let id = local_message_id();
    assert_eq!(send(&c, &id, &text("to delete")).await.label(), "posted");
    assert_eq!(
        c.delete_status(&id).await,
        SendOutcome::Posted {
            provider_id: id.clone()
        }
    );
    assert!(sim.posted()[0].deleted);
    assert_eq!(sim.stats().deleted, 1);
}

#[tokio::test]
async fn new_message_ids_are_fresh_and_well_formed() {
    let sim = sim(|_| {}).await;
    let c = client(&sim, true);
    let a = c.new_message_id().await.expect("id");
    let b = c.new_message_id().await.expect("id");
    assert!(is_well_formed(&a) && is_well_formed(&b), "{a} {b}");
    assert_ne!(a, b);
    assert_eq!(c.probe().await, Ok(()));

    sim.set_config(SimConfig {
        malformed_body: 1.0,
        ..sim.config()
    })
    .expect("config");
    assert!(matches!(
        c.new_message_id().await,
        Err(ProviderError::Malformed(_))
    ));
    sim.set_config(SimConfig {
        malformed_body: 0.0,
        error_5xx_before: 1.0,
        ..sim.config()
    })
    .expect("config");
    assert!(matches!(
        c.new_message_id().await,
        Err(ProviderError::Unavailable(_))
    ));
}

#[tokio::test]
async fn find_status_by_supplied_id() {
    let sim = sim(|_| {}).await;
    let c = client(&sim, true);
    assert!(c.supplies_id());
    let id = local_message_id();
    let body = text("findable");
    let since = Utc::now();
    assert_eq!(send(&c, &id, &body).await.label(), "posted");
    assert_eq!(
        c.lookup_by_id(&id).await,
        ById::Found {
            provider_id: id.clone()
        }
    );
    assert_eq!(search(&c, &id, &body, since).await, present(&id, true));
    // Another id: the documented not-found (absence only where ids and
    // look-ups are proven; the reconciler decides that).
    assert_eq!(c.lookup_by_id(&local_message_id()).await, ById::NotFound);
    assert_eq!(
        search(&c, &local_message_id(), &text("never sent"), since).await,
        Verdict::NotListed
    );
}

#[tokio::test]
async fn find_status_by_content_when_the_provider_assigns_ids() {
    let sim = sim(|c| c.auto_assign_ids = true).await;
    let c = client(&sim, false);
    assert!(!c.supplies_id());
    let ours = local_message_id();
    let body = text("auto-assigned");
    let since = Utc::now();
    let provider_id = match send(&c, &ours, &body).await {
        SendOutcome::Posted { provider_id } => provider_id,
        other => panic!("{other:?}"),
    };
    assert_ne!(provider_id, ours, "the simulator assigns its own id");
    assert_eq!(
        sim.posted()[0].supplied_id,
        None,
        "no id in the body when supplied_id = false"
    );
    assert_eq!(
        search(&c, &ours, &body, since).await,
        present(&provider_id, false)
    );
    assert_eq!(
        search(&c, &ours, &text("other content"), since).await,
        Verdict::NotListed
    );
    // Posted before the window: not a candidate.
    let later = Utc::now() + chrono::Duration::seconds(5);
    assert_eq!(search(&c, &ours, &body, later).await, Verdict::NotListed);
}

#[tokio::test]
async fn a_supplied_id_ignored_by_the_provider_is_still_found_by_content() {
    // Configured as supplying ids, but the provider assigns its own (Wawp's
    // documented current behaviour): a lost response must still be found,
    // or the reconciler would post it again.
    let sim = sim(|c| c.auto_assign_ids = true).await;
    let c = client(&sim, true);
    // A first post comes back under the provider's id: the client reports
    // that this provider ignores supplied ids (the reconciler records it).
    let first = local_message_id();
    assert_eq!(send(&c, &first, &text("first")).await.label(), "posted");
    assert!(matches!(
        c.take_evidence().as_slice(),
        [statusd::provider::Evidence::IdReplaced { supplied, .. }] if *supplied == first
    ));
    let mut cfg = sim.config();
    cfg.lost_response = 1.0;
    sim.set_config(cfg).unwrap();
    let ours = local_message_id();
    let body = text("ignored id");
    let since = Utc::now();
    assert_eq!(send(&c, &ours, &body).await.label(), "in_doubt");
    let theirs = sim.posted()[1].id.clone();
    assert_ne!(theirs, ours);
    // By id: the documented not-found, which proves nothing here.
    assert_eq!(c.lookup_by_id(&ours).await, ById::NotFound);
    assert_eq!(
        search(&c, &ours, &body, since).await,
        present(&theirs, false)
    );
}

#[tokio::test]
async fn a_provider_keeping_supplied_ids_is_answered_by_id_alone() {
    let sim = sim(|c| c.lost_response = 1.0).await;
    let c = client(&sim, true);
    let body = text("kept id");
    let lost = local_message_id();
    assert_eq!(send(&c, &lost, &body).await.label(), "in_doubt");
    assert_eq!(
        c.lookup_by_id(&lost).await,
        ById::Found {
            provider_id: lost.clone()
        }
    );
    // Same content, never sent under this id: the documented not-found.
    assert_eq!(c.lookup_by_id(&local_message_id()).await, ById::NotFound);
}

#[tokio::test]
async fn the_search_pages_through_many_recent_statuses() {
    let sim = sim(|c| c.auto_assign_ids = true).await;
    let c = client(&sim, false);
    let since = Utc::now();
    let first = text("the oldest one");
    assert_eq!(send(&c, "x", &first).await.label(), "posted");
    for i in 0..150 {
        assert_eq!(
            send(&c, "x", &text(&format!("filler {i}"))).await.label(),
            "posted"
        );
    }
    assert!(matches!(
        search(&c, "x", &first, since).await,
        Verdict::Present { .. }
    ));
    assert_eq!(
        search(&c, "x", &text("not there"), since).await,
        Verdict::NotListed
    );
}

#[test]
fn debug_output_hides_the_token() {
    let c = client_for("http://127.0.0.1:9", INSTANCE, "very-secret-token", true);
    let d = format!("{c:?}");
    assert!(!d.contains("very-secret-token"), "{d}");
    assert!(d.contains("[redacted]"), "{d}");
}

#[test]
fn construction_errors_name_the_problem() {
    let settings = ProviderSettings::default();
    let bad_url: InstanceConfig = serde_json::from_value(json!({
        "base_url": "ftp://x", "instance_id": "i", "access_token": "t"
    }))
    .expect("config");
    assert!(WawpClient::new("a", &bad_url, &settings)
        .unwrap_err()
        .to_string()
        .contains("base_url"));
    let no_token: InstanceConfig =
        serde_json::from_value(json!({ "instance_id": "i" })).expect("config");
    assert!(WawpClient::new("a", &no_token, &settings)
        .unwrap_err()
        .to_string()
        .contains("access_token"));
}

/// A client of WAHA's own API (`provider = "waha"`) on the simulator's
/// WAHA surface: session `INSTANCE`, the token as `X-Api-Key`.
fn waha_client(sim: &SimHandle, token: &str) -> WawpClient {
    let inst: InstanceConfig = serde_json::from_value(json!({
        "provider": "waha",
        "base_url": sim.base_url(),
        "session": INSTANCE,
        "access_token": token,
        "supplied_id": true,
    }))
    .expect("instance config");
    let settings: ProviderSettings = serde_json::from_value(json!({
        "connect_timeout_ms": 300,
        "request_timeout_ms": 300,
    }))
    .expect("provider settings");
    WawpClient::new("main", &inst, &settings).expect("client")
}

/// The same conformance as the Wawp client, over WAHA's paths, for each
/// engine the simulator plays: a post under our id (NOWEB, GOWS), a lost
/// answer found by id where the engine keeps a store and by one listing
/// read otherwise, the session's engine, a wrong key.
#[tokio::test]
async fn the_waha_api_conforms_on_every_engine() {
    use statusd::sim::SimEngine;
    for engine in [SimEngine::Noweb, SimEngine::Gows, SimEngine::Webjs] {
        let sim = sim(|c| {
            c.engine = engine;
            c.supplied_ids = Some(engine.honours_supplied_ids());
            c.listing_drop_share = Some(0.0);
            c.engine_error_share = Some(0.0);
        })
        .await;
        let c = waha_client(&sim, TOKEN);
        assert_eq!(
            c.session_engine().await.as_deref(),
            Some(engine.waha_name()),
            "{engine}"
        );
        c.probe().await.expect("session working");
        let id = local_message_id();
        let body = text(&format!("waha {engine}"));
        let since = Utc::now() - chrono::Duration::seconds(2);
        let out = send(&c, &id, &body).await;
        match engine {
            SimEngine::Webjs => assert!(
                matches!(&out, SendOutcome::Posted { provider_id } if *provider_id != id)
                    || out.label() == "in_doubt",
                "{engine}: {out:?}"
            ),
            _ => assert_eq!(
                out,
                SendOutcome::Posted {
                    provider_id: id.clone()
                },
                "{engine}"
            ),
        }
        let posted_id = sim.posted()[0].id.clone();
        if engine == SimEngine::Noweb {
            // NOWEB without its store (the default) can neither list nor
            // find a message by id: nothing can be proven either way.
            assert!(matches!(
                search(&c, &id, &body, since).await,
                Verdict::Unknown { .. }
            ));
            assert_eq!(c.lookup_by_id(&id).await, ById::NotFound);
            let mut cfg = sim.config();
            cfg.message_store = Some(true);
            sim.set_config(cfg).unwrap();
        }
        // Found by one read of the status chat, whatever the engine.
        assert!(
            matches!(
                search(&c, &id, &body, since).await,
                Verdict::Present { provider_id, .. } if provider_id == posted_id
            ),
            "{engine}"
        );
        // By id, where a store is kept.
        assert_eq!(
            c.lookup_by_id(&posted_id).await,
            ById::Found {
                provider_id: posted_id.clone()
            },
            "{engine}"
        );
        if engine == SimEngine::Webjs {
            // Not implemented by WEBJS: nothing posted, never retried.
            let out = c.delete_status(&posted_id).await;
            assert_eq!(out.label(), "permanent", "{out:?}");
            assert_eq!(out.http_status(), Some(501));
        }
        let wrong = waha_client(&sim, "not-the-key");
        assert_eq!(
            send(&wrong, &local_message_id(), &body).await.label(),
            "instance_down"
        );
        sim.shutdown().await;
    }
}
