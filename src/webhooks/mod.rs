//! The provider's events as evidence (issue 13, DESIGN.md R8): who viewed
//! each status, and proof that a status exists, which settles a row as
//! posted without a look-up. Never a reason to send.
//!
//! - [`Receiver`]: the per-instance keys and the checks every request to
//!   `POST /v1/webhooks/{instance}` passes (signature, timestamp window,
//!   body limit), used by the admin server's handler;
//! - [`events`]: what an event proves (views, confirmations);
//! - [`processor`]: drains the inbox the handler writes to, in order, one
//!   transaction per batch.
//!
//! Accepting and applying are split so that the provider is answered as
//! soon as the event is durable: an accepted event survives a restart, and
//! a slow database never makes the provider's deliveries time out and pile
//! up as retries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::config::{Settings, WebhookSettings};
use crate::wire::webhook as w;

pub mod events;
pub mod inbox;
pub mod processor;

/// Events received, by result and reason.
pub const EVENTS_TOTAL: &str = "statusd_webhook_events_total";
/// View upserts applied.
pub const VIEWS_TOTAL: &str = "statusd_webhook_views_total";
/// Rows settled as posted by an event (from `in_doubt` or `pending_upload`).
pub const SETTLED_TOTAL: &str = "statusd_webhook_settled_total";

/// Why a request was refused, with its HTTP status and the metric reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("instance `{0}` does not receive webhooks (not configured, or no webhook_secret / webhook_path_token)")]
    UnknownInstance(String),
    #[error("body larger than {0} bytes (webhooks.max_body_bytes)")]
    TooLarge(usize),
    #[error("missing X-Webhook-Hmac header (the instance's webhook_secret signs every event)")]
    MissingSignature,
    #[error("X-Webhook-Hmac-Algorithm `{0}` is not sha512")]
    WrongAlgorithm(String),
    #[error("X-Webhook-Hmac does not match the body under the instance's webhook_secret")]
    BadSignature,
    #[error("wrong webhook path token")]
    BadPathToken,
    #[error("missing or unreadable X-Webhook-Timestamp (Unix milliseconds)")]
    BadTimestamp,
    #[error("X-Webhook-Timestamp is {0} s away from this server's clock (webhooks.timestamp_window_secs): a replay or a late retry")]
    StaleTimestamp(i64),
    #[error("body is not JSON: {0}")]
    BadJson(String),
}

impl Rejection {
    pub fn status(&self) -> u16 {
        match self {
            Rejection::UnknownInstance(_) => 404,
            Rejection::TooLarge(_) => 413,
            Rejection::BadJson(_) => 400,
            _ => 401,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::UnknownInstance(_) => "unknown_instance",
            Rejection::TooLarge(_) => "too_large",
            Rejection::MissingSignature => "missing_signature",
            Rejection::WrongAlgorithm(_) => "wrong_algorithm",
            Rejection::BadSignature => "bad_signature",
            Rejection::BadPathToken => "bad_path_token",
            Rejection::BadTimestamp => "bad_timestamp",
            Rejection::StaleTimestamp(_) => "stale_timestamp",
            Rejection::BadJson(_) => "bad_json",
        }
    }

    pub const ALL_REASONS: [&'static str; 9] = [
        "unknown_instance",
        "too_large",
        "missing_signature",
        "wrong_algorithm",
        "bad_signature",
        "bad_path_token",
        "bad_timestamp",
        "stale_timestamp",
        "bad_json",
    ];
}

/// One instance's keys.
#[derive(Clone)]
struct Keys {
    hmac: Option<SecretString>,
    /// SHA-256 of the path token: compared digest to digest, no early exit.
    path_token: Option<[u8; 32]>,
}

impl Keys {
    /// An instance's keys (its secret files read), None when it has
    /// neither a secret nor a path token; the error names the setting.
    fn of(inst: &crate::config::InstanceConfig) -> Result<Option<Keys>, String> {
        let hmac = inst.webhook_key()?;
        let path_token = inst
            .webhook_path_token()?
            .map(|t| Sha256::digest(t.expose_secret().as_bytes()).into());
        Ok((hmac.is_some() || path_token.is_some()).then_some(Keys { hmac, path_token }))
    }
}

/// The receiving side's settings and keys: the configuration file's,
/// built once from [`Settings`], and the instance table's, read again by
/// [`Receiver::set_table`] as the table changes.
pub struct Receiver {
    keys: HashMap<String, Keys>,
    /// The table's instances with a `webhook_secret_file` or
    /// `webhook_path_token_file` (a file instance of the same name wins).
    table: std::sync::RwLock<HashMap<String, Keys>>,
    /// Why each table instance without keys cannot have them, as last
    /// logged: a file that stays unreadable is logged once, not every read.
    table_errors: std::sync::Mutex<HashMap<String, String>>,
    pub settings: WebhookSettings,
    /// Rung when an event was stored: the processor applies it at once.
    pub wake: Arc<Notify>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("instances", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Receiver {
    /// Instances with a webhook secret or path token; secret files are read
    /// here (an unreadable one names its key, never its content).
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Receiver> {
        let mut keys = HashMap::new();
        for (name, inst) in &settings.instances {
            if let Some(k) = Keys::of(inst).map_err(|e| anyhow::anyhow!("instances.{name}.{e}"))? {
                keys.insert(name.clone(), k);
            }
        }
        Ok(Receiver {
            keys,
            table: Default::default(),
            table_errors: Default::default(),
            settings: settings.webhooks.clone(),
            wake: Arc::new(Notify::new()),
        })
    }

    /// A receiver with the given HMAC keys (tests, the demo).
    pub fn with_keys(keys: &[(&str, &str)], settings: WebhookSettings) -> Receiver {
        Receiver {
            keys: keys
                .iter()
                .map(|(n, k)| {
                    (
                        n.to_string(),
                        Keys {
                            hmac: Some(SecretString::from(k.to_string())),
                            path_token: None,
                        },
                    )
                })
                .collect(),
            table: Default::default(),
            table_errors: Default::default(),
            settings,
            wake: Arc::new(Notify::new()),
        }
    }

    /// The instance table's webhook keys, from its rows (removed ones and
    /// names the file has left out). A row whose secret or path-token file
    /// cannot be read receives nothing, and says why in the log.
    pub fn set_table(&self, table: &crate::store::InstanceTable) {
        let mut keys = HashMap::new();
        let mut errors = HashMap::new();
        for rec in &table.rows {
            if rec.removed_at.is_some() || self.keys.contains_key(&rec.name) {
                continue;
            }
            let Ok(inst) = crate::config::InstanceConfig::from_table(&rec.settings) else {
                continue;
            };
            match Keys::of(&inst) {
                Ok(Some(k)) => {
                    keys.insert(rec.name.clone(), k);
                }
                Ok(None) => {}
                Err(e) => {
                    errors.insert(rec.name.clone(), e);
                }
            }
        }
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = keys;
        let mut logged = self.table_errors.lock().unwrap_or_else(|e| e.into_inner());
        for (name, e) in &errors {
            if logged.get(name) != Some(e) {
                tracing::warn!(instance = %name, error = %e, "the instance's webhook secret cannot be read: its events are refused");
            }
        }
        *logged = errors;
    }

    /// An instance's keys: the file's, else the table's.
    fn keys_of(&self, instance: &str) -> Option<Keys> {
        self.keys.get(instance).cloned().or_else(|| {
            let table = self.table.read().unwrap_or_else(|e| e.into_inner());
            table.get(instance).cloned()
        })
    }

    /// Whether `instance` receives webhooks (checked before the body is read).
    pub fn knows(&self, instance: &str) -> Result<(), Rejection> {
        self.keys_of(instance)
            .map(|_| ())
            .ok_or_else(|| Rejection::UnknownInstance(instance.to_string()))
    }

    /// The checks of one request: `path_token` from the URL if it has one,
    /// the headers' values, the raw body, and our clock (Unix ms).
    pub fn check(
        &self,
        instance: &str,
        path_token: Option<&str>,
        header: impl Fn(&str) -> Option<String>,
        body: &[u8],
        now_ms: i64,
    ) -> Result<(), Rejection> {
        let keys = self
            .keys_of(instance)
            .ok_or_else(|| Rejection::UnknownInstance(instance.to_string()))?;
        if body.len() > self.settings.max_body_bytes {
            return Err(Rejection::TooLarge(self.settings.max_body_bytes));
        }
        if let Some(given) = path_token {
            // A provider that cannot sign: the URL's token is the key.
            let Some(want) = &keys.path_token else {
                return Err(Rejection::BadPathToken);
            };
            let got: [u8; 32] = Sha256::digest(given.as_bytes()).into();
            let diff = want.iter().zip(&got).fold(0u8, |acc, (x, y)| acc | (x ^ y));
            return if diff == 0 {
                Ok(())
            } else {
                Err(Rejection::BadPathToken)
            };
        }
        let Some(key) = &keys.hmac else {
            return Err(Rejection::MissingSignature);
        };
        let sig = header(w::HMAC).ok_or(Rejection::MissingSignature)?;
        if let Some(alg) = header(w::HMAC_ALGORITHM) {
            if !alg.trim().eq_ignore_ascii_case(w::ALGORITHM_SHA512) {
                return Err(Rejection::WrongAlgorithm(alg));
            }
        }
        if !w::verify(key.expose_secret().as_bytes(), body, &sig) {
            return Err(Rejection::BadSignature);
        }
        // The signature covers the body only: the timestamp header alone
        // could be refreshed by a replayer, so the window is checked on it
        // and on the envelope's own `timestamp` (signed) when present.
        let window = self.settings.timestamp_window_secs as i64 * 1000;
        if window > 0 {
            let ts: i64 = header(w::TIMESTAMP)
                .and_then(|t| t.trim().parse().ok())
                .ok_or(Rejection::BadTimestamp)?;
            let signed_ts = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("timestamp").and_then(serde_json::Value::as_i64));
            for t in std::iter::once(ts).chain(signed_ts) {
                let off = now_ms - t;
                if off.abs() > window {
                    return Err(Rejection::StaleTimestamp(off / 1000));
                }
            }
        }
        Ok(())
    }
}

/// Registers the webhook metrics at 0 with their help texts.
pub fn describe_metrics() {
    metrics::describe_counter!(
        EVENTS_TOTAL,
        "Provider webhook requests, by result (accepted, ignored, rejected) and reason"
    );
    metrics::describe_counter!(
        VIEWS_TOTAL,
        "Status view acks applied (one per viewer and status per batch)"
    );
    metrics::describe_counter!(SETTLED_TOTAL, "Rows settled as posted by a provider event");
    metrics::counter!(EVENTS_TOTAL, "result" => "accepted", "reason" => "stored").increment(0);
    metrics::counter!(EVENTS_TOTAL, "result" => "ignored", "reason" => "event_type").increment(0);
    for r in Rejection::ALL_REASONS {
        metrics::counter!(EVENTS_TOTAL, "result" => "rejected", "reason" => r).increment(0);
    }
    metrics::counter!(VIEWS_TOTAL).increment(0);
    metrics::counter!(SETTLED_TOTAL).increment(0);
}

/// How long the processor waits when nothing woke it.
pub fn fallback_poll(s: &WebhookSettings) -> Duration {
    Duration::from_millis(s.fallback_poll_ms.max(100))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{InstanceRecord, InstanceTable};

    /// Instances of the table receive events by their own secret and
    /// path-token files (never stored in the table); a removed one, or a
    /// name the file has, does not take the table's keys.
    #[test]
    fn table_instances_receive_by_their_secret_and_path_token_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let (secret, token) = (
            file("shop.key", "shop-hmac-key\n"),
            file("w.tok", "path-token-0123456789\n"),
        );
        let row = |name: &str, settings: serde_json::Value, removed: bool| InstanceRecord {
            name: name.into(),
            settings: settings.as_object().unwrap().clone(),
            enabled: true,
            removed_at: removed.then(chrono::Utc::now),
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        };
        let (key, path) = ("webhook_secret_file", "webhook_path_token_file");
        let table = InstanceTable {
            rows: [
                ("shop", key, secret.as_str(), false),
                ("wawpy", path, token.as_str(), false),
                ("gone", key, secret.as_str(), true),
                ("main", key, secret.as_str(), false),
                ("broken", key, "/nonexistent/statusd-test.key", false),
            ]
            .into_iter()
            .map(|(name, k, v, removed)| row(name, serde_json::json!({ k: v }), removed))
            .chain([row("plain", serde_json::json!({}), false)])
            .collect(),
            read_at: chrono::Utc::now(),
        };
        let r = Receiver::with_keys(&[("main", "file-key")], WebhookSettings::default());
        assert!(r.knows("shop").is_err(), "nothing before the table is read");
        r.set_table(&table);
        for known in ["shop", "wawpy", "main"] {
            assert!(r.knows(known).is_ok(), "{known}");
        }
        // Read again (as every 2 s): the same answer.
        r.set_table(&table);
        for unknown in ["gone", "plain", "broken", "nope"] {
            assert!(r.knows(unknown).is_err(), "{unknown}");
        }
        let now = chrono::Utc::now().timestamp_millis();
        let body = serde_json::json!({ "event": "message.ack", "timestamp": now }).to_string();
        let signed = |key: &str| {
            let sig = w::sign(key.as_bytes(), body.as_bytes());
            move |h: &str| match h {
                h if h == w::HMAC => Some(sig.clone()),
                h if h == w::TIMESTAMP => Some(now.to_string()),
                _ => None,
            }
        };
        let check = |inst: &str, token: Option<&str>, key: &str| {
            r.check(inst, token, signed(key), body.as_bytes(), now)
        };
        assert!(check("shop", None, "shop-hmac-key").is_ok());
        assert!(check("shop", None, "other").is_err());
        assert!(
            check("main", None, "file-key").is_ok(),
            "the file's key wins"
        );
        assert!(check("main", None, "shop-hmac-key").is_err());
        assert!(check("wawpy", Some("path-token-0123456789"), "").is_ok());
        assert!(check("wawpy", Some("path-token-wrong-0000"), "").is_err());
    }
}
