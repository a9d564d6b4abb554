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

use super::{Lookup, OutgoingStatus, Provider, ProviderError, SendOutcome, StatusQuery};
use crate::config::{InstanceConfig, ProviderSettings};
use crate::wire::{bare_message_id, field, paths, SESSION_WORKING};

mod classify;
mod lookup;
mod redact;

pub use classify::{classify, classify_at, parse_retry_after, response_id, Exchange};
pub use redact::redact;

use classify::{exchange_from_error, provider_message, shorten};
use lookup::ById;
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
        // The config's error is kept as text: it names a file, never the
        // token, and its type is the config module's business.
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

    /// Maps an exchange of a call that posts nothing to a [`ProviderError`].
    fn read_error(&self, ex: &Exchange) -> ProviderError {
        match classify(ex) {
            SendOutcome::InstanceDown { reason, .. } => ProviderError::InstanceDown(reason),
            other => ProviderError::Unavailable(
                other.reason().unwrap_or("unexpected response").to_string(),
            ),
        }
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
            _ => Err(self.read_error(&ex)),
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
            _ => Err(self.read_error(&ex)),
        }
    }
}
