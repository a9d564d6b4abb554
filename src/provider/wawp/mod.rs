//! The Wawp client: one [`Provider`] implementation over the Wawp HTTP API
//! (API.md). Its parts, each with one job:
//!
//! - [`classify`]: the one classification of every HTTP outcome
//!   ([`classify_at`], a pure function with its rule table), `Retry-After`,
//!   message ids in bodies, transport errors.
//! - `lookup`: the reconciler's question, by id or by content.
//! - `redact`: keeping the token out of everything that leaves the client.
//! - this module: the client itself (requests, the [`Provider`] calls).
//!
//! The paths, field names and id forms it speaks are the
//! [wire vocabulary](crate::wire), shared with the simulator.
//!
//! # Secrets
//!
//! Wawp takes the access token as a query parameter, so every request URL
//! carries it, and reqwest puts the URL into its errors. Nothing that leaves
//! this module may contain it: transport errors are stripped of their URL
//! (`without_url`) and every string built here (reasons, error messages,
//! log fields) goes through [`redact`], which removes both the literal token
//! and any `access_token=` value. Request URLs are never logged; log lines
//! name the path only. Redirects are not followed: a redirect would carry
//! the token to another URL.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::header::RETRY_AFTER;
use reqwest::RequestBuilder;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use crate::config::{InstanceConfig, ProviderSettings};
use crate::provider::contract::{
    Lookup, OutgoingStatus, Provider, ProviderError, SendOutcome, StatusQuery,
};
use crate::wire::{
    bare_message_id, field, paths, serialized_status_id, SESSION_WORKING, STATUS_CHAT,
};

mod classify;
mod lookup;
mod redact;

pub use classify::{classify, classify_at, parse_retry_after, response_id, Exchange};
pub use redact::redact;

use classify::{exchange_from_error, provider_message, read_error, shorten};
use lookup::{ById, LIST_MAX_PAGES, LIST_PAGE};
use redact::Redact;

/// Why a client for a configured instance could not be built. Each message
/// names the instance and the setting at fault, and never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The token could not be had (missing, or its file unreadable).
    #[error("instance {instance}: {reason}")]
    Token { instance: String, reason: String },
    #[error("instance {instance}: access_token is empty")]
    EmptyToken { instance: String },
    #[error("instance {instance}: base_url must be http(s)")]
    BaseUrlScheme { instance: String },
    #[error("instance {instance}: base_url: {reason}")]
    BaseUrl { instance: String, reason: String },
    /// The TLS or HTTP stack could not be set up; `reason` is redacted.
    #[error("instance {instance}: cannot build HTTP client: {reason}")]
    Http { instance: String, reason: String },
}

/// A Wawp instance.
pub struct WawpClient {
    name: String,
    /// `base_url` without a trailing slash; paths are appended to it.
    base: String,
    instance_id: String,
    token: SecretString,
    supplied_id: bool,
    /// Set once a post configured with `supplied_id` came back under another
    /// id: the provider assigns its own (as Wawp documents it may), so
    /// look-ups must search by content too.
    ids_ignored: AtomicBool,
    http: reqwest::Client,
}

impl fmt::Debug for WawpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WawpClient")
            .field("name", &self.name)
            .field("base_url", &self.base)
            .field("instance_id", &self.instance_id)
            .field("access_token", &"[redacted]")
            .field("supplied_id", &self.supplied_id)
            .finish()
    }
}

impl WawpClient {
    /// A client for one configured instance. Redirects are not followed: a
    /// redirect would carry the token to another URL.
    pub fn new(
        name: &str,
        inst: &InstanceConfig,
        settings: &ProviderSettings,
    ) -> Result<WawpClient, ClientError> {
        let instance = || name.to_string();
        // The config's error is kept as text (this error is `Clone`): it
        // names a file, never the token.
        let token = inst.token().map_err(|e| ClientError::Token {
            instance: instance(),
            reason: e.to_string(),
        })?;
        if token.expose_secret().is_empty() {
            return Err(ClientError::EmptyToken {
                instance: instance(),
            });
        }
        let base = inst.base_url.trim_end_matches('/').to_string();
        match reqwest::Url::parse(&base) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            Ok(_) => {
                return Err(ClientError::BaseUrlScheme {
                    instance: instance(),
                })
            }
            Err(e) => {
                return Err(ClientError::BaseUrl {
                    instance: instance(),
                    reason: e.to_string(),
                })
            }
        }
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_millis(settings.connect_timeout_ms.max(1)))
            .timeout(Duration::from_millis(settings.request_timeout_ms.max(1)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("statusd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Http {
                instance: instance(),
                reason: redact(&e.without_url().to_string(), token.expose_secret()),
            })?;
        Ok(WawpClient {
            name: name.to_string(),
            base,
            instance_id: inst.instance_id.clone(),
            token,
            supplied_id: inst.supplied_id,
            ids_ignored: AtomicBool::new(false),
            http,
        })
    }

    /// The configured instance name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.base, path))
            .query(&[
                (field::INSTANCE_ID, self.instance_id.as_str()),
                (field::ACCESS_TOKEN, self.token.expose_secret()),
            ])
    }

    async fn exchange(&self, path: &str, rb: RequestBuilder) -> Exchange {
        let ex = match rb.send().await {
            Err(e) => exchange_from_error(e),
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = match resp.text().await {
                    Ok(t) => Ok(t),
                    Err(e) => match exchange_from_error(e) {
                        Exchange::NotSent { detail } | Exchange::Broken { detail } => Err(detail),
                        Exchange::Response { .. } => Err("body read failed".into()),
                    },
                };
                Exchange::Response {
                    status,
                    retry_after,
                    body,
                }
            }
        };
        tracing::trace!(
            instance = %self.name,
            path,
            exchange = ?self.scrub(ex.clone()),
            "provider exchange"
        );
        ex
    }

    /// `value` with the token removed from its strings.
    fn scrub<T: Redact>(&self, value: T) -> T {
        value.redacted(self.token.expose_secret())
    }

    fn log_outcome(&self, path: &str, outcome: &SendOutcome) {
        tracing::debug!(
            instance = %self.name,
            path,
            outcome = outcome.label(),
            http_status = outcome.http_status(),
            reason = outcome.reason().unwrap_or(""),
            "provider call"
        );
    }

    /// Asks for the message by its id in the status chat.
    async fn lookup_by_id(&self, message_id: &str) -> ById {
        let rb = self
            .request(reqwest::Method::POST, paths::GET_MESSAGE)
            .json(&json!({
                (field::CHAT_ID): STATUS_CHAT,
                (field::MESSAGE_ID): serialized_status_id(message_id),
                (field::DOWNLOAD_MEDIA): false,
            }));
        let ex = self.exchange(paths::GET_MESSAGE, rb).await;
        lookup::read_by_id(&ex, message_id)
    }

    /// Searches the instance's recent own statuses for one of the query's
    /// kind and fingerprint, posted at or after `sent_after`, page by page.
    async fn lookup_in_recent(&self, q: &StatusQuery<'_>) -> Lookup {
        let limit = LIST_PAGE.to_string();
        for page in 0..LIST_MAX_PAGES {
            let offset = (page * LIST_PAGE).to_string();
            let rb = self
                .request(reqwest::Method::GET, paths::CHAT_MESSAGES)
                .query(&[
                    (field::CHAT_ID, STATUS_CHAT),
                    (field::LIMIT, limit.as_str()),
                    (field::OFFSET, offset.as_str()),
                    (field::DOWNLOAD_MEDIA, "false"),
                ]);
            let ex = self.exchange(paths::CHAT_MESSAGES, rb).await;
            if let Some(answer) = lookup::read_page(&ex, q) {
                return answer;
            }
        }
        lookup::window_too_full(q)
    }
}

impl Provider for WawpClient {
    async fn new_message_id(&self) -> Result<String, ProviderError> {
        let rb = self.request(reqwest::Method::GET, paths::NEW_MESSAGE_ID);
        let ex = self.exchange(paths::NEW_MESSAGE_ID, rb).await;
        let result = match &ex {
            Exchange::Response {
                status: 200..=299,
                body: Ok(body),
                ..
            } => serde_json::from_str::<Value>(body)
                .ok()
                .and_then(|v| response_id(&v))
                .ok_or_else(|| {
                    ProviderError::Malformed(format!(
                        "new-message-id without an id: {}",
                        provider_message(body)
                    ))
                }),
            _ => Err(read_error(&ex)),
        }
        .map_err(|e| self.scrub(e));
        if let Err(e) = &result {
            tracing::debug!(instance = %self.name, error = %e, "new-message-id failed");
        }
        result
    }

    async fn send_status(&self, status: &OutgoingStatus<'_>) -> SendOutcome {
        let path = paths::status(status.body.kind());
        let mut body = status.body.to_provider_json();
        if self.supplied_id {
            body.insert(
                field::ID.into(),
                Value::String(status.message_id.to_string()),
            );
        }
        let rb = self.request(reqwest::Method::POST, path).json(&body);
        let outcome = self.scrub(classify(&self.exchange(path, rb).await));
        if let SendOutcome::Posted { provider_id } = &outcome {
            if self.supplied_id
                && bare_message_id(provider_id) != status.message_id
                && !self.ids_ignored.swap(true, Ordering::Relaxed)
            {
                tracing::warn!(instance = %self.name, "the provider assigned its own id although supplied_id = true; look-ups will also search by content (set supplied_id = false)");
            }
        }
        self.log_outcome(path, &outcome);
        outcome
    }

    /// A 2xx is success even without an id in the body: deleting is
    /// idempotent, nothing is doubled by repeating it.
    async fn delete_status(&self, message_id: &str) -> SendOutcome {
        let rb = self
            .request(reqwest::Method::POST, paths::DELETE)
            .json(&json!({ (field::ID): message_id }));
        let ex = self.exchange(paths::DELETE, rb).await;
        let outcome = match (&ex, classify(&ex)) {
            (_, SendOutcome::Posted { provider_id }) => SendOutcome::Posted { provider_id },
            (
                Exchange::Response {
                    status: 200..=299, ..
                },
                _,
            ) => SendOutcome::Posted {
                provider_id: message_id.to_string(),
            },
            (_, other) => self.scrub(other),
        };
        self.log_outcome(paths::DELETE, &outcome);
        outcome
    }

    /// With `supplied_id`, asks for the message by id. "Not found" is the
    /// answer unless this client has seen the provider ignore our ids (Wawp
    /// documents that it may): then the recent statuses are searched by
    /// content too, and only when both say absent is the status absent.
    /// Searching by content on every look-up would not scale: at volume the
    /// window holds more statuses than a listing returns.
    async fn find_status(&self, query: &StatusQuery<'_>) -> Lookup {
        let lookup = if self.supplied_id {
            match self.lookup_by_id(query.message_id).await {
                ById::Found(provider_id) => Lookup::Present { provider_id },
                ById::Failed(reason) => Lookup::Unavailable { reason },
                ById::NotFound if self.ids_ignored.load(Ordering::Relaxed) => {
                    self.lookup_in_recent(query).await
                }
                ById::NotFound => Lookup::Absent,
            }
        } else {
            self.lookup_in_recent(query).await
        };
        let lookup = self.scrub(lookup);
        tracing::debug!(instance = %self.name, message_id = query.message_id, lookup = ?lookup, "status look-up");
        lookup
    }

    async fn probe(&self) -> Result<(), ProviderError> {
        self.probe_raw().await.map_err(|e| self.scrub(e))
    }

    fn supplies_id(&self) -> bool {
        self.supplied_id
    }
}

impl WawpClient {
    async fn probe_raw(&self) -> Result<(), ProviderError> {
        let rb = self
            .request(reqwest::Method::POST, paths::SESSION_INFO)
            .json(&json!({}));
        let ex = self.exchange(paths::SESSION_INFO, rb).await;
        match &ex {
            Exchange::Response {
                status: 200..=299,
                body: Ok(body),
                ..
            } => match serde_json::from_str::<Value>(body) {
                Ok(v) => match v.get("status").and_then(Value::as_str) {
                    None | Some(SESSION_WORKING) => Ok(()),
                    Some(other) => Err(ProviderError::InstanceDown(format!(
                        "session status is {}",
                        shorten(other)
                    ))),
                },
                Err(_) => Err(ProviderError::Malformed("session info is not JSON".into())),
            },
            _ => Err(read_error(&ex)),
        }
    }
}

/// The token never leaves the client: not in outcomes, errors, look-ups or
/// logs, whatever the provider answers.
#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;
    use crate::model::{Kind, StatusBody};
    use crate::sim::{SimConfig, Simulator};
    use std::io::Write;
    use std::sync::{Arc, Mutex, OnceLock};
    use tracing_subscriber::util::SubscriberInitExt as _;

    const TOKEN: &str = "tok-SECRET-4f9a2c77e1";
    const OTHER_TOKEN: &str = "tok-OTHER-0b3d9e55a8";

    #[derive(Clone)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Everything logged at any level by anyone (reqwest's `log` records
    /// included, through the log bridge `try_init` installs). Global,
    /// because hyper and reqwest log from their own tasks.
    fn capture() -> (Capture, Option<tracing::subscriber::DefaultGuard>) {
        static GLOBAL: OnceLock<Option<Capture>> = OnceLock::new();
        let global = GLOBAL.get_or_init(|| {
            let cap = Capture(Arc::new(Mutex::new(Vec::new())));
            subscriber(&cap).try_init().ok().map(|_| cap)
        });
        match global {
            Some(cap) => (cap.clone(), None),
            // Another test installed a global subscriber first: capture
            // this thread (the test runs on a current-thread runtime).
            None => {
                let cap = Capture(Arc::new(Mutex::new(Vec::new())));
                let guard = tracing::subscriber::set_default(subscriber(&cap));
                (cap, Some(guard))
            }
        }
    }

    /// Every level, no colours, written into `cap`.
    fn subscriber(cap: &Capture) -> impl tracing::Subscriber + Send + Sync {
        let w = cap.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish()
    }

    fn client(base: &str, token: &str, supplied_id: bool) -> WawpClient {
        let inst: InstanceConfig = serde_json::from_value(json!({
            "base_url": base,
            "instance_id": "inst-1",
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

    #[tokio::test(flavor = "current_thread")]
    async fn the_token_never_leaves_the_module() {
        let (cap, _guard) = capture();
        let mut cfg = SimConfig {
            hang_ms: 1_000,
            seed: Some(7),
            ..SimConfig::default()
        };
        cfg.tokens.insert("inst-1".into(), TOKEN.into());
        let sim = Simulator::start("127.0.0.1:0".parse().unwrap(), cfg.clone())
            .await
            .unwrap();
        let good = client(&sim.base_url(), TOKEN, true);
        let wrong = client(&sim.base_url(), OTHER_TOKEN, true);
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            drop(l);
            client(&format!("http://127.0.0.1:{port}"), TOKEN, true)
        };
        let mut seen: Vec<String> = vec![format!("{good:?}"), format!("{wrong:?}")];
        let faults: [fn(&mut SimConfig); 8] = [
            |_| {},
            |c| c.lost_response = 1.0,
            |c| c.error_5xx_before = 1.0,
            |c| c.error_5xx_after = 1.0,
            |c| c.hang = 1.0,
            |c| c.hang_after_commit = 1.0,
            |c| c.rate_limited_429 = 1.0,
            |c| c.malformed_body = 1.0,
        ];
        let mut labels = Vec::new();
        for (i, set) in faults.iter().enumerate() {
            let mut c = cfg.clone();
            set(&mut c);
            sim.set_config(c).unwrap();
            let body =
                StatusBody::parse("text", &json!({ "text": format!("s{i}") }).to_string()).unwrap();
            let id = crate::wire::ids::local_message_id();
            let status = OutgoingStatus {
                message_id: &id,
                body: &body,
            };
            let out = good.send_status(&status).await;
            labels.push(out.label());
            seen.push(format!("{out:?}"));
            seen.push(format!("{:?}", good.new_message_id().await));
            let q = StatusQuery {
                message_id: &id,
                kind: Kind::Text,
                fingerprint: &body.fingerprint(),
                sent_after: Utc::now() - chrono::Duration::minutes(1),
            };
            seen.push(format!("{:?}", good.find_status(&q).await));
            for other in [&wrong, &refused] {
                seen.push(format!("{:?}", other.send_status(&status).await));
                seen.push(format!("{:?}", other.find_status(&q).await));
            }
        }
        sim.set_config(cfg.clone()).unwrap();
        for r in [
            good.probe().await,
            wrong.probe().await,
            refused.probe().await,
        ] {
            if let Err(e) = r {
                seen.push(e.to_string());
                seen.push(format!("{e:?}"));
            }
        }
        seen.push(format!(
            "{:?}",
            good.delete_status("3EB0000000000000000000FF").await
        ));
        seen.push(format!("{:?}", wrong.new_message_id().await));
        seen.push(format!("{:?}", refused.new_message_id().await));
        sim.shutdown().await;

        // Every class was exercised, so the check below covers them all.
        assert_eq!(
            labels,
            [
                "posted",
                "in_doubt",
                "retryable",
                "in_doubt",
                "in_doubt",
                "in_doubt",
                "retryable",
                "in_doubt"
            ]
        );
        let all = seen.join("\n");
        assert!(
            all.contains("instance_down") || all.contains("InstanceDown"),
            "{all}"
        );
        assert!(all.contains("request not sent"), "{all}");
        for t in [TOKEN, OTHER_TOKEN] {
            assert!(!all.contains(t), "token in an outcome or error:\n{all}");
        }
        let logs =
            String::from_utf8_lossy(&cap.0.lock().unwrap_or_else(|e| e.into_inner())).to_string();
        assert!(
            logs.contains("provider call"),
            "capture is not working:\n{logs}"
        );
        assert!(
            logs.contains("provider exchange"),
            "trace level not captured:\n{logs}"
        );
        assert!(
            logs.contains("hyper_util"),
            "library logs not captured:\n{logs}"
        );
        for t in [TOKEN, OTHER_TOKEN] {
            assert!(!logs.contains(t), "token in the logs:\n{logs}");
        }
    }
}
