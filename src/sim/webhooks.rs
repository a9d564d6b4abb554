//! The simulator's webhook events (issue 13): when a status is shown, the
//! provider tells the configured URL so — `message.any` with `fromMe` in
//! `status@broadcast` — and simulated viewers then view a share of the
//! statuses (`message.ack` with `participant`, DEVICE then READ, PLAYED for
//! voice and video). Each delivery is signed as WAHA signs it
//! ([`crate::wire::webhook`]) and may be lost, duplicated or delayed (which
//! reorders them), by the knobs of [`WebhookKnobs`]. A failed delivery is
//! retried twice, like the provider's at-least-once delivery.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::model::Kind;
use crate::wire::{serialized_status_id, webhook as w, STATUS_CHAT};

/// Where an instance's events go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookTarget {
    /// e.g. `http://127.0.0.1:8088/v1/webhooks/main`.
    pub url: String,
    /// The HMAC key; never served back.
    #[serde(skip_serializing, default)]
    pub hmac_key: String,
}

/// Where a WAHA session config (`config.webhooks[]`: `url`, `events`,
/// `hmac.key`) sends the status events: its first webhook that asks for
/// `message.any`, `message.ack` or every event (`*`).
pub fn target_in(config: &serde_json::Value) -> Option<WebhookTarget> {
    config["webhooks"]
        .as_array()?
        .iter()
        .find_map(|h| target_of(h, h["hmac"]["key"].as_str()))
}

/// One webhook (`url`, `events`) as a target signed with `key`, if it asks
/// for `message.any`, `message.ack` or every event (`*`).
pub fn target_of(hook: &serde_json::Value, key: Option<&str>) -> Option<WebhookTarget> {
    let wanted = [w::EVENT_MESSAGE_ANY, w::EVENT_MESSAGE_ACK, "*"];
    let asks = hook["events"]
        .as_array()
        .is_some_and(|e| e.iter().any(|e| wanted.contains(&e.as_str().unwrap_or(""))));
    Some(WebhookTarget {
        url: hook["url"].as_str().filter(|_| asks)?.to_string(),
        hmac_key: key.unwrap_or("").to_string(),
    })
}

/// The event knobs (`webhooks` in [`super::SimConfig`]; absent: no events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookKnobs {
    /// Instance id → target. Instances without one emit nothing.
    pub targets: BTreeMap<String, WebhookTarget>,
    /// Probability that an event is never delivered.
    pub loss: f64,
    /// Probability that an event is delivered twice.
    pub duplicate: f64,
    /// Each delivery waits uniformly up to this long: events overtake
    /// each other.
    pub delay_max_ms: u64,
    /// Simulated viewers per instance.
    pub viewers: u32,
    /// Share of statuses each viewer views.
    pub view_share: f64,
}

impl Default for WebhookKnobs {
    fn default() -> Self {
        WebhookKnobs {
            targets: BTreeMap::new(),
            loss: 0.0,
            duplicate: 0.0,
            delay_max_ms: 0,
            viewers: 5,
            view_share: 0.5,
        }
    }
}

/// Counters of the events sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookStats {
    /// Events made (before loss).
    pub events: u64,
    /// Deliveries answered 2xx.
    pub delivered: u64,
    /// Events dropped by the `loss` knob.
    pub lost: u64,
    /// Extra deliveries of the `duplicate` knob.
    pub duplicated: u64,
    /// Deliveries that failed after the retries.
    pub failed: u64,
    /// Views (READ acks) made.
    pub views: u64,
}

/// Deliveries in flight at once.
const MAX_IN_FLIGHT: usize = 64;

/// Sends the events; one per simulator.
pub struct Emitter {
    client: reqwest::Client,
    /// Deliveries in flight at once, like the provider's delivery queue
    /// (and so a handful of kept-alive connections, not one per event).
    in_flight: std::sync::Arc<tokio::sync::Semaphore>,
    cancel: CancellationToken,
    events: AtomicU64,
    delivered: AtomicU64,
    lost: AtomicU64,
    duplicated: AtomicU64,
    failed: AtomicU64,
    views: AtomicU64,
}

impl Emitter {
    pub fn new(cancel: CancellationToken) -> Emitter {
        Emitter {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            in_flight: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
            cancel,
            events: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            views: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> WebhookStats {
        WebhookStats {
            events: self.events.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            lost: self.lost.load(Relaxed),
            duplicated: self.duplicated.load(Relaxed),
            failed: self.failed.load(Relaxed),
            views: self.views.load(Relaxed),
        }
    }

    /// A status was shown: emit its events (called by the simulator's
    /// commit; needs a Tokio runtime, which the server's handlers run on).
    pub fn on_posted(
        self: &std::sync::Arc<Self>,
        knobs: Option<&WebhookKnobs>,
        instance: &str,
        id: &str,
        kind: Kind,
    ) {
        let Some(k) = knobs else { return };
        let Some(target) = k.targets.get(instance) else {
            return;
        };
        let serialized = serialized_status_id(id);
        let mut events = vec![serde_json::json!({
            "event": w::EVENT_MESSAGE_ANY,
            "payload": {"id": serialized, "from": STATUS_CHAT, "to": STATUS_CHAT,
                        "fromMe": true, "ack": 1, "ackName": "SERVER"},
        })];
        let mut rng = rand::rng();
        for v in 0..k.viewers {
            if !rng.random_bool(k.view_share.clamp(0.0, 1.0)) {
                continue;
            }
            let viewer = format!("{}@c.us", 491_500_000_000u64 + u64::from(v));
            let mut levels = vec![w::ACK_DEVICE, w::ACK_READ];
            if matches!(kind, Kind::Voice | Kind::Video) {
                levels.push(w::ACK_PLAYED);
            }
            self.views.fetch_add(1, Relaxed);
            for level in levels {
                events.push(serde_json::json!({
                    "event": w::EVENT_MESSAGE_ACK,
                    "payload": {"id": serialized, "from": STATUS_CHAT, "to": STATUS_CHAT,
                                "participant": viewer, "fromMe": true, "ack": level,
                                "ackName": crate::store::level_name(level)},
                }));
            }
        }
        for mut event in events {
            self.events.fetch_add(1, Relaxed);
            if rng.random_bool(k.loss.clamp(0.0, 1.0)) {
                self.lost.fetch_add(1, Relaxed);
                continue;
            }
            let copies = if rng.random_bool(k.duplicate.clamp(0.0, 1.0)) {
                self.duplicated.fetch_add(1, Relaxed);
                2
            } else {
                1
            };
            if let Some(o) = event.as_object_mut() {
                o.insert("session".into(), instance.into());
                o.insert("engine".into(), "NOWEB".into());
                o.insert(
                    "id".into(),
                    format!("evt_{}", uuid::Uuid::new_v4().simple()).into(),
                );
            }
            for _ in 0..copies {
                let delay = Duration::from_millis(rng.random_range(0..=k.delay_max_ms));
                let me = self.clone();
                let (url, key, event) =
                    (target.url.clone(), target.hmac_key.clone(), event.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => me.deliver(&url, &key, event).await,
                        _ = me.cancel.cancelled() => {}
                    }
                });
            }
        }
    }

    async fn deliver(&self, url: &str, key: &str, mut event: serde_json::Value) {
        let Ok(_permit) = self.in_flight.clone().acquire_owned().await else {
            return;
        };
        // The event's time is when it is sent (WAHA stamps it when made;
        // the delay here stands for the network, not for the event).
        let ts = chrono::Utc::now().timestamp_millis();
        if let Some(o) = event.as_object_mut() {
            o.insert("timestamp".into(), ts.into());
        }
        let body = event.to_string();
        let sig = w::sign(key.as_bytes(), body.as_bytes());
        for attempt in 0..3 {
            let r = self
                .client
                .post(url)
                .header("content-type", "application/json")
                .header(w::HMAC, &sig)
                .header(w::HMAC_ALGORITHM, w::ALGORITHM_SHA512)
                .header(w::REQUEST_ID, uuid::Uuid::new_v4().to_string())
                .header(w::TIMESTAMP, ts.to_string())
                .body(body.clone())
                .send()
                .await;
            if matches!(&r, Ok(r) if r.status().is_success()) {
                self.delivered.fetch_add(1, Relaxed);
                return;
            }
            if self.cancel.is_cancelled() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
        }
        self.failed.fetch_add(1, Relaxed);
    }
}
