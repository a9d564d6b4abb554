//! The provider client: one [`Provider`] implementation over HTTP that
//! speaks Wawp's API (API.md) or, with `provider = "waha"`, WAHA's own
//! (`/api/{session}/…`, which Wawp fronts and self-hosting users run). Its
//! parts, each with one job:
//!
//! - [`classify`]: the one classification of every HTTP outcome
//!   ([`classify_at`], a pure function with its rule table), `Retry-After`,
//!   message ids in bodies, transport errors.
//! - `lookup`: reading look-ups by id and listings in every engine's shape.
//! - `redact`: keeping the token out of everything that leaves the client.
//! - `register`: adding statusd's webhook to a WAHA session's config.
//! - this module: the client itself (requests, the [`Provider`] calls).
//!
//! The paths, field names and id forms it speaks are the
//! [wire vocabulary](crate::wire), shared with the simulator.
//!
//! # Secrets
//!
//! The token travels in a header, never in a URL: Wawp's `access-token`
//! (its OpenAPI export, <https://www.api.wawp.net/api/docs/export?format=openapi>,
//! declares the `AccessToken` scheme as that header), WAHA's `X-Api-Key`.
//! Belt and braces all the same: transport errors are stripped of their URL
//! (`without_url`) and every string built here (reasons, error messages,
//! log fields) goes through [`redact`], which removes both the literal token
//! and any `access_token=` value. Request URLs are never logged; log lines
//! name the path only. Redirects are not followed: a redirect would carry
//! the token to another host.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::RETRY_AFTER;
use reqwest::RequestBuilder;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use crate::config::{InstanceConfig, ProviderKind, ProviderSettings};
use crate::model::Kind;
use crate::provider::contract::{
    ById, Evidence, ListRequest, OutgoingStatus, Page, Provider, ProviderError, SendOutcome,
};
use crate::wire::{
    bare_message_id, field, paths, serialized_status_id, waha, SESSION_WORKING, STATUS_CHAT,
};

mod classify;
mod lookup;
mod redact;
mod register;

pub use classify::{classify, classify_at, parse_retry_after, response_id, Exchange};
pub use redact::redact;
pub use register::{
    redacted_config, with_webhook, Hook, Registered, Registration, EVENTS as WEBHOOK_EVENTS,
};

use classify::{exchange_from_error, provider_message, read_error, shorten};
use redact::Redact;

/// A text status's `backgroundColor` and `font` when the row has none:
/// WEBJS answers 500 to a text status without them (issue 12 §5). The
/// values of WAHA's own example (`src/structures/status.dto.ts`).
pub const DEFAULT_BACKGROUND: &str = "#38b42f";
pub const DEFAULT_FONT: u8 = 1;

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

/// Which API an instance speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Api {
    /// Wawp: `/v2/…`, `instance_id` in the query, `access-token` header.
    Wawp { instance_id: String },
    /// WAHA: `/api/{session}/…`, `X-Api-Key` header.
    Waha { session: String },
}

/// The calls the client makes, to be mapped to each API's path.
#[derive(Debug, Clone, Copy)]
enum Call<'a> {
    NewMessageId,
    Send(Kind),
    Delete,
    ById(&'a str),
    List,
    Session,
}

/// One provider instance (one WhatsApp session), over Wawp's API or WAHA's.
pub struct WawpClient {
    name: String,
    /// `base_url` without a trailing slash; paths are appended to it.
    base: String,
    api: Api,
    token: SecretString,
    supplied_id: bool,
    /// What calls showed about the provider since the reconciler last
    /// asked ([`Provider::take_evidence`]); it records them in the store.
    evidence: Mutex<Vec<Evidence>>,
    http: reqwest::Client,
}

impl fmt::Debug for WawpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WawpClient")
            .field("name", &self.name)
            .field("base_url", &self.base)
            .field("api", &self.api)
            .field("access_token", &"[redacted]")
            .field("supplied_id", &self.supplied_id)
            .finish()
    }
}

/// Most evidence kept between two reconciler passes (the first of each kind
/// is all that counts).
const MAX_EVIDENCE: usize = 64;

/// The HTTP client the instances' calls go through. Redirects are not
/// followed: a redirect would carry a token to another URL. The error is
/// the builder's, without any URL (it never holds a token).
pub fn http_client(settings: &ProviderSettings) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(Duration::from_millis(settings.connect_timeout_ms.max(1)))
        .timeout(Duration::from_millis(settings.request_timeout_ms.max(1)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("statusd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.without_url().to_string())
}

impl WawpClient {
    /// A client for one configured instance, with an HTTP client of its
    /// own (see [`WawpClient::sharing`]).
    pub fn new(
        name: &str,
        inst: &InstanceConfig,
        settings: &ProviderSettings,
    ) -> Result<WawpClient, ClientError> {
        let http = http_client(settings).map_err(|reason| ClientError::Http {
            instance: name.to_string(),
            reason,
        })?;
        WawpClient::sharing(name, inst, &http)
    }

    /// A client for one configured instance over `http` (from
    /// [`http_client`]), which the daemon shares between all its instances:
    /// one connection pool and one TLS set-up, not one per instance (with a
    /// thousand instances, building a thousand clients took seconds of the
    /// start and kept a thousand pools).
    pub fn sharing(
        name: &str,
        inst: &InstanceConfig,
        http: &reqwest::Client,
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
        let http = http.clone();
        let api = match inst.provider {
            ProviderKind::Wawp => Api::Wawp {
                instance_id: inst.instance_id.clone(),
            },
            ProviderKind::Waha => Api::Waha {
                session: inst.session_name().to_string(),
            },
        };
        Ok(WawpClient {
            name: name.to_string(),
            base,
            api,
            token,
            supplied_id: inst.supplied_id,
            evidence: Mutex::new(Vec::new()),
            http,
        })
    }

    /// The configured instance name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The path of `call` in this instance's API.
    fn path(&self, call: Call<'_>) -> String {
        match &self.api {
            Api::Wawp { .. } => match call {
                Call::NewMessageId => paths::NEW_MESSAGE_ID,
                Call::Send(kind) => paths::status(kind),
                Call::Delete => paths::DELETE,
                Call::ById(_) => paths::GET_MESSAGE,
                Call::List => paths::CHAT_MESSAGES,
                Call::Session => paths::SESSION_INFO,
            }
            .to_string(),
            Api::Waha { session } => {
                let fill = |t: &str, msg: Option<&str>| {
                    waha::session_path(t, session, Some(STATUS_CHAT), msg)
                };
                match call {
                    Call::NewMessageId => fill(waha::NEW_MESSAGE_ID, None),
                    Call::Send(kind) => fill(waha::status(kind), None),
                    Call::Delete => fill(waha::DELETE, None),
                    Call::ById(id) => fill(waha::CHAT_MESSAGE, Some(&serialized_status_id(id))),
                    Call::List => fill(waha::CHAT_MESSAGES, None),
                    Call::Session => fill(waha::SESSION, None),
                }
            }
        }
    }

    /// A request for `call`, authenticated by header. `path` is what log
    /// lines name (the URL itself is never logged).
    fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        let rb = self.http.request(method, format!("{}{}", self.base, path));
        match &self.api {
            Api::Wawp { instance_id } => rb
                .header(field::ACCESS_TOKEN_HEADER, self.token.expose_secret())
                .query(&[(field::INSTANCE_ID, instance_id.as_str())]),
            Api::Waha { .. } => rb.header(waha::API_KEY_HEADER, self.token.expose_secret()),
        }
    }

    async fn exchange(&self, path: &str, rb: RequestBuilder) -> Exchange {
        self.exchange_hiding(path, rb, &[]).await
    }

    /// [`Self::exchange`] for a request that carries other secrets (`also`,
    /// e.g. a webhook key): its trace line hides them too.
    async fn exchange_hiding(&self, path: &str, rb: RequestBuilder, also: &[&str]) -> Exchange {
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
            exchange = ?redact::hide_hmac_keys_in(
                also.iter().fold(self.scrub(ex.clone()), |ex, s| ex.redacted(s))
            ),
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

    fn note(&self, e: Evidence) {
        let mut ev = self.evidence.lock().unwrap_or_else(|p| p.into_inner());
        if ev.len() < MAX_EVIDENCE {
            ev.push(e);
        }
    }

    /// The JSON body of a status post: the row's payload, a text status's
    /// `backgroundColor` and `font` filled in, and our id when configured.
    fn status_body(&self, status: &OutgoingStatus<'_>) -> serde_json::Map<String, Value> {
        let mut body = status.body.to_provider_json();
        if status.body.kind() == Kind::Text {
            let missing = |v: Option<&Value>| v.is_none_or(Value::is_null);
            if missing(body.get("backgroundColor")) {
                body.insert("backgroundColor".into(), json!(DEFAULT_BACKGROUND));
            }
            if missing(body.get("font")) {
                body.insert("font".into(), json!(DEFAULT_FONT));
            }
        }
        if self.supplied_id {
            body.insert(
                field::ID.into(),
                Value::String(status.message_id.to_string()),
            );
        }
        body
    }
}

impl Provider for WawpClient {
    async fn new_message_id(&self) -> Result<String, ProviderError> {
        let path = self.path(Call::NewMessageId);
        let rb = self.request(reqwest::Method::GET, &path);
        let ex = self.exchange(&path, rb).await;
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
        self.send(status, None).await
    }

    async fn send_status_within(
        &self,
        status: &OutgoingStatus<'_>,
        timeout: Duration,
    ) -> SendOutcome {
        self.send(status, Some(timeout)).await
    }

    /// A 2xx is success: deleting is idempotent, nothing is doubled by
    /// repeating it. The answer's id (a revoke message's own id on some
    /// engines) is never taken for the status's: the outcome carries the
    /// status's id.
    async fn delete_status(&self, message_id: &str) -> SendOutcome {
        let path = self.path(Call::Delete);
        let rb = self
            .request(reqwest::Method::POST, &path)
            .json(&json!({ (field::ID): message_id }));
        let ex = self.exchange(&path, rb).await;
        let outcome = match (&ex, classify(&ex)) {
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
        self.log_outcome(&path, &outcome);
        outcome
    }

    async fn lookup_by_id(&self, message_id: &str) -> ById {
        let path = self.path(Call::ById(message_id));
        let rb = match &self.api {
            Api::Wawp { .. } => self.request(reqwest::Method::POST, &path).json(&json!({
                (field::CHAT_ID): STATUS_CHAT,
                (field::MESSAGE_ID): serialized_status_id(message_id),
                (field::DOWNLOAD_MEDIA): false,
            })),
            Api::Waha { .. } => self
                .request(reqwest::Method::GET, &path)
                .query(&[(field::DOWNLOAD_MEDIA, "false")]),
        };
        let ex = self.exchange(&path, rb).await;
        let found = lookup::read_by_id(&ex, message_id);
        let found = match found {
            ById::Failed { reason } => ById::Failed {
                reason: redact(&reason, self.token.expose_secret()),
            },
            other => other,
        };
        tracing::debug!(instance = %self.name, message_id, found = ?found, "look-up by id");
        found
    }

    /// One page, newest first, own statuses only and from `since` on where
    /// the API filters (WAHA's `filter.fromMe`, `filter.timestamp.gte`;
    /// Wawp forwards what it understands): the reader checks both anyway.
    async fn list_statuses(&self, req: &ListRequest) -> Result<Page, ProviderError> {
        let path = self.path(Call::List);
        let (limit, offset, gte) = (
            req.limit.to_string(),
            req.offset.to_string(),
            req.since.timestamp().to_string(),
        );
        let mut q: Vec<(&str, &str)> = vec![
            (field::LIMIT, &limit),
            (field::OFFSET, &offset),
            (field::DOWNLOAD_MEDIA, "false"),
            (waha::FILTER_FROM_ME, "true"),
            (waha::FILTER_TIMESTAMP_GTE, &gte),
        ];
        if let Api::Wawp { .. } = self.api {
            q.push((field::CHAT_ID, STATUS_CHAT));
        }
        let rb = self.request(reqwest::Method::GET, &path).query(&q);
        let ex = self.exchange(&path, rb).await;
        lookup::read_page(&ex).map_err(|e| self.scrub(e))
    }

    async fn probe(&self) -> Result<(), ProviderError> {
        self.session_info()
            .await
            .and_then(|v| match v.get("status").and_then(Value::as_str) {
                None | Some(SESSION_WORKING) => Ok(()),
                Some(other) => Err(ProviderError::InstanceDown(format!(
                    "session status is {}",
                    shorten(other)
                ))),
            })
            .map_err(|e| self.scrub(e))
    }

    /// `engine.engine` (WAHA's session info) or a plain `engine` string.
    async fn session_engine(&self) -> Option<String> {
        let v = self.session_info().await.ok()?;
        let e = v.get("engine")?;
        e.get("engine")
            .and_then(Value::as_str)
            .or_else(|| e.as_str())
            .map(|s| shorten(&s.to_ascii_uppercase()))
    }

    fn take_evidence(&self) -> Vec<Evidence> {
        std::mem::take(&mut *self.evidence.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn supplies_id(&self) -> bool {
        self.supplied_id
    }
}

impl WawpClient {
    /// Posts a status; `timeout` (the lease left) bounds the call below the
    /// client's request timeout.
    async fn send(&self, status: &OutgoingStatus<'_>, timeout: Option<Duration>) -> SendOutcome {
        let path = self.path(Call::Send(status.body.kind()));
        let mut rb = self
            .request(reqwest::Method::POST, &path)
            .json(&self.status_body(status));
        if let Some(t) = timeout {
            rb = rb.timeout(t.max(Duration::from_millis(1)));
        }
        let outcome = self.scrub(classify(&self.exchange(&path, rb).await));
        if let SendOutcome::Posted { provider_id } = &outcome {
            if self.supplied_id {
                if bare_message_id(provider_id) != status.message_id {
                    self.note(Evidence::IdReplaced {
                        supplied: status.message_id.to_string(),
                        got: provider_id.clone(),
                    });
                } else {
                    self.note(Evidence::IdEchoed {
                        id: provider_id.clone(),
                    });
                }
            }
        }
        self.log_outcome(&path, &outcome);
        outcome
    }
}

impl WawpClient {
    /// The session's info (Wawp `POST /v2/session/info`; WAHA
    /// `GET /api/sessions/{session}`).
    async fn session_info(&self) -> Result<Value, ProviderError> {
        let path = self.path(Call::Session);
        let rb = match self.api {
            Api::Wawp { .. } => self.request(reqwest::Method::POST, &path).json(&json!({})),
            Api::Waha { .. } => self.request(reqwest::Method::GET, &path),
        };
        let ex = self.exchange(&path, rb).await;
        match &ex {
            Exchange::Response {
                status: 200..=299,
                body: Ok(body),
                ..
            } => serde_json::from_str::<Value>(body)
                .map_err(|_| ProviderError::Malformed("session info is not JSON".into())),
            _ => Err(read_error(&ex)),
        }
    }
}

/// The token never leaves the client: not in outcomes, errors, look-ups or
/// logs, whatever the provider answers.
#[cfg(test)]
mod tests;
