//! `statusd webhook register`: pointing the provider's webhook at
//! statusd's receiver, so that nobody has to paste JSON.
//!
//! WAHA keeps webhooks in the session's config (`SessionInfo.config`,
//! `config.webhooks[]`: `url`, `events`, `hmac.key`, `retries`) and replaces
//! that config as a whole with `PUT /api/sessions/{session}`
//! (`src/api/sessions.controller.ts`: it stops a running session, saves the
//! config and starts the session again). So the config is read first and
//! only our webhook is added or mended in it: other webhooks and every other
//! key stay as they were, and when ours is already there as it should be
//! nothing is written (and the session is not restarted).
//!
//! Wawp upserts one webhook URL with `POST /v2/webhook/set` (paid tiers).
//! Its docs name its own signature header (`X-Wawp-Signature`), not
//! WAHA's HMAC, so Wawp gets the receiver's URL with the instance's path
//! token, which statusd checks whatever Wawp signs.

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::{redact, Api, Call, WawpClient};
use crate::provider::contract::ProviderError;
use crate::wire::{paths, webhook as w, SESSION_WORKING};

/// What a registration did.
#[derive(Debug, Clone, PartialEq)]
pub enum Registered {
    /// Our webhook was already in the config as it should be: nothing
    /// written, the session not restarted.
    Unchanged,
    /// The config was written; `restarted`: the session was running, so
    /// WAHA restarted it to apply the config.
    Updated { restarted: bool },
    /// `dry_run`: the config that would be written.
    WouldUpdate,
}

/// A registration's outcome and the session config it leaves (or would
/// leave), every `hmac.key` in it redacted, for the operator to read.
#[derive(Debug, Clone)]
pub struct Registration {
    pub registered: Registered,
    pub config: Value,
}

/// The status events statusd uses: our own status going out (proof it was
/// posted) and the viewers' acks.
pub const EVENTS: [&str; 2] = [w::EVENT_MESSAGE_ANY, w::EVENT_MESSAGE_ACK];

/// Our webhook, as WAHA's `WebhookConfig`: signed with the instance's
/// secret, retried by WAHA for about half a minute.
fn our_webhook(url: &str, key: &str) -> Value {
    json!({
        "url": url,
        "events": EVENTS,
        "hmac": { "key": key },
        "retries": { "policy": "constant", "delaySeconds": 2, "attempts": 15 },
    })
}

/// `config` with our webhook in it: a webhook with our URL is mended (its
/// events gain ours, its key becomes ours; its other fields, retries
/// included, are kept), else ours is added. Every other key and webhook is
/// kept. `None` when nothing had to change.
pub fn with_webhook(config: &Value, url: &str, key: &str) -> Option<Value> {
    let mut config = match config {
        Value::Object(_) => config.clone(),
        _ => json!({}),
    };
    let hooks = array_at(&mut config, "webhooks");
    let Some(hook) = hooks.iter_mut().find(|h| h["url"] == url) else {
        hooks.push(our_webhook(url, key));
        return Some(config);
    };
    let before = hook.clone();
    let list = array_at(hook, "events");
    for e in EVENTS {
        if !list
            .iter()
            .any(|x| x.as_str() == Some(e) || x.as_str() == Some("*"))
        {
            list.push(json!(e));
        }
    }
    hook["hmac"] = json!({ "key": key });
    (*hook != before).then_some(config)
}

/// The array under `key` of the object `v`, made an empty one where it is
/// missing or not an array.
fn array_at<'v>(v: &'v mut Value, key: &str) -> &'v mut Vec<Value> {
    let slot = &mut v[key];
    if !slot.is_array() {
        *slot = json!([]);
    }
    slot.as_array_mut().expect("an array")
}

/// `config` with every `hmac.key` in it replaced, for printing.
pub fn redacted_config(config: &Value) -> Value {
    let mut c = config.clone();
    super::redact::hide_hmac_keys(&mut c);
    c
}

/// What a registration has to do.
enum Plan {
    /// Nothing: the provider already has it (the config, redacted).
    Unchanged(Value),
    Write(Write),
}

/// The one write of a registration.
struct Write {
    method: reqwest::Method,
    path: String,
    body: Value,
    /// `body` as it may be printed (secrets redacted).
    shown: Value,
    /// Whether the provider restarts the session to apply it.
    restarts: bool,
    /// What failed, for the error.
    what: String,
}

/// What statusd's receiver needs from the provider for one instance.
pub struct Hook<'a> {
    /// The receiver's URL (`…/v1/webhooks/NAME`).
    pub url: &'a str,
    /// The instance's webhook secret: the HMAC key a provider that signs
    /// (WAHA) signs with.
    pub key: Option<&'a SecretString>,
    /// The instance's path token: for a provider whose signature statusd
    /// cannot check (Wawp), the URL given is `url/<token>`.
    pub path_token: Option<&'a SecretString>,
}

impl Hook<'_> {
    /// Every secret the registration carries, to keep out of what it says.
    fn secrets(&self) -> Vec<&str> {
        [self.key, self.path_token]
            .into_iter()
            .flatten()
            .map(|s| s.expose_secret())
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// `s` with every secret of the registration replaced.
    fn hide(&self, s: &str) -> String {
        self.secrets()
            .into_iter()
            .fold(s.to_string(), |s, secret| redact(&s, secret))
    }
}

impl WawpClient {
    /// Registers statusd's receiver for this instance with the provider:
    /// WAHA signs with the instance's secret, so the session's config gets
    /// the plain URL and the key; Wawp documents its own signature header
    /// (`X-Wawp-Signature`), which statusd does not check, so it gets the
    /// URL with the instance's path token. Errors name what failed, never
    /// the token, the key or the path token.
    pub async fn register_webhook(
        &self,
        hook: &Hook<'_>,
        dry_run: bool,
    ) -> Result<Registration, String> {
        let plan = match &self.api {
            Api::Waha { session } => self.plan_waha(session, hook).await?,
            Api::Wawp { instance_id } => self.plan_wawp(instance_id, hook)?,
        };
        match plan {
            Plan::Unchanged(config) => Ok(Registration {
                registered: Registered::Unchanged,
                config,
            }),
            Plan::Write(w) => self.write_registration(hook, w, dry_run).await,
        }
    }

    /// WAHA: the session's config with our webhook, read first.
    async fn plan_waha(&self, session: &str, hook: &Hook<'_>) -> Result<Plan, String> {
        let Some(key) = hook.key else {
            return Err(format!(
                "instance {}: WAHA signs its events: set the instance's webhook secret first",
                self.name
            ));
        };
        let scrub = |e: ProviderError| hook.hide(&self.scrub(e).to_string());
        let info = self
            .session_info()
            .await
            .map_err(|e| format!("reading WAHA session `{session}`: {}", scrub(e)))?;
        if !info.is_object() {
            return Err(format!(
                "reading WAHA session `{session}`: the answer is not a session"
            ));
        }
        let Some(config) = with_webhook(&info["config"], hook.url, key.expose_secret()) else {
            return Ok(Plan::Unchanged(redacted_config(&info["config"])));
        };
        Ok(Plan::Write(Write {
            method: reqwest::Method::PUT,
            path: self.path(Call::Session),
            body: json!({ "config": config }),
            shown: redacted_config(&config),
            restarts: info["status"] == SESSION_WORKING,
            what: format!("updating WAHA session `{session}`"),
        }))
    }

    /// A registration's one write, or (`dry_run`) what it would send.
    async fn write_registration(
        &self,
        hook: &Hook<'_>,
        w: Write,
        dry_run: bool,
    ) -> Result<Registration, String> {
        if dry_run {
            return Ok(Registration {
                registered: Registered::WouldUpdate,
                config: w.shown,
            });
        }
        let rb = self.request(w.method, &w.path).json(&w.body);
        let ex = self.exchange_hiding(&w.path, rb, &hook.secrets()).await;
        match &ex {
            super::Exchange::Response {
                status: 200..=299, ..
            } => Ok(Registration {
                registered: Registered::Updated {
                    restarted: w.restarts,
                },
                config: w.shown,
            }),
            _ => Err(format!(
                "{}: {}",
                w.what,
                hook.hide(&self.scrub(super::read_error(&ex)).to_string())
            )),
        }
    }

    /// Wawp's `POST /v2/webhook/set` upserts one URL in the instance's
    /// webhook list, leaving the others (paid tiers; 403 otherwise).
    fn plan_wawp(&self, instance_id: &str, hook: &Hook<'_>) -> Result<Plan, String> {
        let Some(token) = hook.path_token else {
            return Err(format!(
                "instance {}: Wawp documents its own signature header (X-Wawp-Signature), which \
                 statusd does not check: set instances.{}.webhook_path_token (16 characters or \
                 more; an instance of the table: `statusd instance set {} --set \
                 webhook_path_token_file=PATH`) and register again; statusd then gives Wawp \
                 the URL with that token",
                self.name, self.name, self.name
            ));
        };
        let url = format!("{}/{}", hook.url, token.expose_secret());
        let mut body = json!({
            "url": url,
            "events": EVENTS,
            "is_active": 1,
            "retries": { "delay": 2, "attempts": 15 },
        });
        if let Some(key) = hook.key {
            body["hmac"] = json!(key.expose_secret());
        }
        Ok(Plan::Write(Write {
            method: reqwest::Method::POST,
            path: paths::WEBHOOK_SET.to_string(),
            shown: serde_json::from_str(&hook.hide(&body.to_string())).unwrap_or(Value::Null),
            body,
            restarts: false,
            what: format!("setting the webhook of Wawp instance `{instance_id}`"),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{InstanceConfig, ProviderSettings};

    const URL: &str = "https://statusd.example.com/v1/webhooks/main";

    #[test]
    fn ours_is_added_and_everything_else_kept() {
        let config = json!({
            "metadata": {"user.id": "7"},
            "proxy": null,
            "webhooks": [{"url": "https://crm.example.com/hook", "events": ["message"],
                          "hmac": {"key": "theirs"}}],
        });
        let new = with_webhook(&config, URL, "k1").expect("changed");
        assert_eq!(new["metadata"], config["metadata"]);
        assert_eq!(new["webhooks"][0], config["webhooks"][0]);
        assert_eq!(new["webhooks"][1], our_webhook(URL, "k1"));
        // Already there: nothing to write (no needless session restart).
        assert_eq!(with_webhook(&new, URL, "k1"), None);
        // A new secret mends it in place.
        let mended = with_webhook(&new, URL, "k2").expect("changed");
        assert_eq!(mended["webhooks"].as_array().unwrap().len(), 2);
        assert_eq!(mended["webhooks"][1]["hmac"]["key"], "k2");
    }

    #[test]
    fn an_existing_hook_of_ours_gains_our_events_and_keeps_its_own() {
        let config = json!({"webhooks": [{"url": URL, "events": ["session.status"],
            "retries": {"policy": "exponential", "delaySeconds": 5, "attempts": 3},
            "customHeaders": [{"name": "X-Env", "value": "prod"}]}]});
        let new = with_webhook(&config, URL, "k").expect("changed");
        let hook = &new["webhooks"][0];
        assert_eq!(
            hook["events"],
            json!(["session.status", "message.any", "message.ack"])
        );
        assert_eq!(hook["retries"]["policy"], "exponential");
        assert_eq!(
            hook["customHeaders"],
            config["webhooks"][0]["customHeaders"]
        );
        assert_eq!(hook["hmac"]["key"], "k");
        // Every event (`*`) covers ours.
        let all = json!({"webhooks": [{"url": URL, "events": ["*"], "hmac": {"key": "k"}}]});
        assert_eq!(with_webhook(&all, URL, "k"), None);
    }

    #[test]
    fn a_missing_or_odd_config_becomes_one_with_our_hook() {
        for config in [
            Value::Null,
            json!({"webhooks": null}),
            json!({"webhooks": {}}),
        ] {
            let new = with_webhook(&config, URL, "k").expect("changed");
            assert_eq!(new["webhooks"], json!([our_webhook(URL, "k")]), "{config}");
        }
    }

    #[test]
    fn printed_configs_never_hold_a_key() {
        let config = with_webhook(
            &json!({"webhooks": [{"url": "x", "hmac": {"key": "theirs"}}]}),
            URL,
            "ours-SECRET",
        )
        .unwrap();
        let shown = redacted_config(&config).to_string();
        assert!(
            !shown.contains("ours-SECRET") && !shown.contains("theirs"),
            "{shown}"
        );
        assert!(shown.contains("[redacted]"));
    }

    /// A WAHA that quotes what it was sent in its errors (the request's
    /// API key on a refused read, the body on a refused write): the
    /// registration's errors carry neither the token nor the webhook key.
    #[tokio::test(flavor = "current_thread")]
    async fn errors_never_carry_the_token_or_the_key() {
        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::get;
        const TOKEN: &str = "waha-SECRET-token-77";
        const KEY: &str = "whsec-SECRET-key-88";
        let app = axum::Router::new().route(
            "/api/sessions/{session}",
            get(|h: HeaderMap| async move {
                let key = h
                    .get("x-api-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if key == "refused" {
                    return (StatusCode::UNAUTHORIZED, format!("bad key {key}"));
                }
                let info =
                    json!({"name": "default", "status": "WORKING", "config": {"webhooks": []}});
                (StatusCode::OK, info.to_string())
            })
            .put(|body: String| async move {
                (StatusCode::BAD_REQUEST, format!("invalid config: {body}"))
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        let client = |token: &str| {
            let inst: InstanceConfig = serde_json::from_value(json!({
                "provider": "waha", "base_url": base, "access_token": token,
            }))
            .unwrap();
            WawpClient::new("main", &inst, &ProviderSettings::default()).unwrap()
        };
        let key = SecretString::from(KEY);
        let hook = Hook {
            url: URL,
            key: Some(&key),
            path_token: None,
        };
        let err = client(TOKEN)
            .register_webhook(&hook, false)
            .await
            .expect_err("the write is refused");
        assert!(err.contains("updating WAHA session `default`"), "{err}");
        assert!(
            err.contains("invalid config"),
            "the provider's words are kept: {err}"
        );
        assert!(!err.contains(KEY) && !err.contains(TOKEN), "{err}");
        let err = client("refused")
            .register_webhook(&hook, false)
            .await
            .expect_err("the read is refused");
        assert!(err.contains("reading WAHA session"), "{err}");
        assert!(!err.contains(KEY), "{err}");
    }
}
