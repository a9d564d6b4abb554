//! The Wawp client: one [`Provider`] implementation over the Wawp HTTP API
//! (API.md), and the one place where HTTP outcomes are classified
//! ([`classify`]).
//!
//! # Secrets
//!
//! Wawp takes the access token as a query parameter, so every request URL
//! carries it, and reqwest puts the URL into its errors. Nothing that leaves
//! this module may contain it: transport errors are stripped of their URL
//! (`without_url`) and every string built here (reasons, error messages,
//! log fields) goes through [`redact`], which removes both the literal token
//! and any `access_token=` value. Request URLs are never logged; log lines
//! name the path only.

use std::error::Error as _;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::RETRY_AFTER;
use reqwest::RequestBuilder;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::{Lookup, OutgoingStatus, Provider, ProviderError, SendOutcome, StatusQuery};
use crate::config::{InstanceConfig, ProviderSettings};
use crate::model::{fingerprint_of, Kind};

/// Paths of the Wawp API, each with the public page it was taken from. The
/// simulator serves exactly these.
pub mod paths {
    use crate::model::Kind;

    /// `GET`, answers `{"id": "3EB0…"}`.
    /// Source: <https://api.wawp.net/en/docs/v2/status/new-message-id>.
    pub const NEW_MESSAGE_ID: &str = "/v2/status/new-message-id";
    /// `POST /v2/status/{text,image,voice,video}`, JSON body as in API.md.
    /// Source: <https://api.wawp.net/en/docs/v2/status/text> and the image,
    /// voice and video pages of the "24 Hour Status" section of
    /// <https://docs.wawp.net>.
    pub const TEXT: &str = "/v2/status/text";
    pub const IMAGE: &str = "/v2/status/image";
    pub const VOICE: &str = "/v2/status/voice";
    pub const VIDEO: &str = "/v2/status/video";
    /// `POST`, JSON body `{"id", "contacts"}`. Source: "Delete status" in the
    /// "24 Hour Status" section of <https://docs.wawp.net> (API.md).
    pub const DELETE: &str = "/v2/status/delete";
    /// `POST`, JSON body `{"chatId", "messageId", "downloadMedia"}`: one
    /// message by id. Source: <https://api.wawp.net/en/docs/v2/messages/get>
    /// (its example `messageId` is the serialized `true_<chat>_<id>` form).
    pub const GET_MESSAGE: &str = "/v2/messages/get";
    /// `GET`, query `chatId`, `limit`, `offset`, `downloadMedia`: a chat's
    /// messages. Source: <https://api.wawp.net/en/docs/v2/chats/messages>;
    /// the WAHA equivalent is `GET /api/{session}/chats/{chatId}/messages`
    /// (<https://waha.devlike.pro/docs/how-to/chats/>).
    pub const CHAT_MESSAGES: &str = "/v2/chats/messages";
    /// Session state (`status: "WORKING"` when usable). Source:
    /// <https://api.wawp.net/en/docs/v2/session/info>, which documents
    /// `POST`; <https://docs.wawp.net> lists it as `GET`. The client uses
    /// `POST`; the simulator answers both.
    pub const SESSION_INFO: &str = "/v2/session/info";

    /// The posting path of a kind.
    pub fn status(kind: Kind) -> &'static str {
        match kind {
            Kind::Text => TEXT,
            Kind::Image => IMAGE,
            Kind::Voice => VOICE,
            Kind::Video => VIDEO,
        }
    }
}

/// The chat that holds one's own statuses (WhatsApp's status broadcast list).
pub const STATUS_CHAT: &str = "status@broadcast";

/// Error code meaning "rejected before processing: nothing was posted".
///
/// Neither Wawp nor WAHA documents such a code, so this is our convention:
/// a 5xx is taken as *not processed* only when its JSON body carries
/// `"code": "NOT_PROCESSED"` (or `"error": "NOT_PROCESSED"`). The simulator
/// emits it for its `error_5xx_before` fault. Against the real provider no
/// 5xx carries it, so every real 5xx stays `InDoubt` — the safe reading.
pub const NOT_PROCESSED: &str = "NOT_PROCESSED";

/// Messages listed per page when searching recent statuses.
const LIST_PAGE: usize = 100;
/// Pages searched before giving up with `Unavailable` (never `Absent`: a
/// status we did not get to see may still be there).
const LIST_MAX_PAGES: usize = 10;
/// Longest `Retry-After` honoured; longer values are clamped.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Longest provider message quoted in a reason.
const MAX_QUOTE: usize = 300;

/// The serialized id WAHA-style APIs use for a message of ours in the status
/// chat: `true_status@broadcast_<id>`.
pub fn serialized_status_id(message_id: &str) -> String {
    format!("true_{STATUS_CHAT}_{message_id}")
}

/// The bare message id of a serialized one (`true_<chat>_<id>` → `<id>`);
/// a bare id is returned unchanged.
pub fn bare_message_id(id: &str) -> &str {
    if id.starts_with("true_") || id.starts_with("false_") {
        let mut parts = id.splitn(3, '_');
        let _from_me = parts.next();
        let _chat = parts.next();
        if let Some(rest) = parts.next() {
            // A group message may carry a trailing `_<participant>`.
            return rest.split('_').next().unwrap_or(rest);
        }
    }
    id
}

/// What came back from one HTTP exchange, before classification.
#[derive(Debug, Clone, PartialEq)]
pub enum Exchange {
    /// The request was never written: connection refused, DNS failure,
    /// connect timeout.
    NotSent { detail: String },
    /// The request may have been written but no complete response arrived:
    /// request timeout, connection reset or closed mid-exchange.
    Broken { detail: String },
    /// A status line arrived. `body` is `Err` when reading it failed.
    Response {
        status: u16,
        retry_after: Option<String>,
        body: Result<String, String>,
    },
}

/// Classifies one exchange of a call that may post something
/// (DESIGN.md §4 rule 5). See [`classify_at`].
pub fn classify(ex: &Exchange) -> SendOutcome {
    classify_at(ex, Utc::now())
}

/// The classification, with the clock given (for `Retry-After` dates):
///
/// | exchange | outcome |
/// |---|---|
/// | never sent (refused, DNS, connect timeout) | `Retryable` |
/// | timeout / reset after write / body unreadable | `InDoubt` |
/// | 2xx with a JSON body carrying an id | `Posted` |
/// | 2xx otherwise | `InDoubt` |
/// | 429, 408 | `Retryable` (with `Retry-After`) |
/// | 401, 403, or a body saying the session is not connected | `InstanceDown` |
/// | other 4xx | `Permanent`, with the provider's message |
/// | 5xx with [`NOT_PROCESSED`] | `Retryable` |
/// | other 5xx | `InDoubt` |
/// | 3xx (redirects are not followed) | `InstanceDown`: `base_url` is wrong |
pub fn classify_at(ex: &Exchange, now: DateTime<Utc>) -> SendOutcome {
    let (status, retry_after, body) = match ex {
        Exchange::NotSent { detail } => {
            return SendOutcome::Retryable {
                reason: format!("request not sent: {detail}"),
                http_status: None,
                retry_after: None,
            }
        }
        Exchange::Broken { detail } => {
            return SendOutcome::InDoubt {
                reason: format!("no complete response: {detail}"),
                http_status: None,
            }
        }
        Exchange::Response {
            status,
            retry_after,
            body,
        } => (*status, retry_after.as_deref(), body),
    };
    let http_status = Some(status);
    let text = body.as_ref().ok().map(String::as_str);
    let message = match body {
        Ok(t) => provider_message(t),
        Err(e) => format!("response body unreadable: {e}"),
    };
    match status {
        200..=299 => match body {
            Ok(t) => match serde_json::from_str::<Value>(t)
                .ok()
                .and_then(|v| response_id(&v))
            {
                Some(provider_id) => SendOutcome::Posted { provider_id },
                None => SendOutcome::InDoubt {
                    reason: format!("HTTP {status} without a message id in the body: {message}"),
                    http_status,
                },
            },
            Err(e) => SendOutcome::InDoubt {
                reason: format!("HTTP {status} but the body could not be read: {e}"),
                http_status,
            },
        },
        429 | 408 => SendOutcome::Retryable {
            reason: format!("HTTP {status}: {message}"),
            http_status,
            retry_after: retry_after.and_then(|h| parse_retry_after(h, now)),
        },
        401 | 403 => SendOutcome::InstanceDown {
            reason: format!("HTTP {status}: {message}"),
            http_status,
        },
        400..=599 if text.is_some_and(says_session_down) => SendOutcome::InstanceDown {
            reason: format!("HTTP {status}: session not usable: {message}"),
            http_status,
        },
        400..=499 => SendOutcome::Permanent {
            reason: format!("HTTP {status}: {message}"),
            http_status: status,
        },
        500..=599 if text.is_some_and(is_not_processed) => SendOutcome::Retryable {
            reason: format!("HTTP {status} before processing: {message}"),
            http_status,
            retry_after: retry_after.and_then(|h| parse_retry_after(h, now)),
        },
        500..=599 => SendOutcome::InDoubt {
            reason: format!("HTTP {status}, may have been processed: {message}"),
            http_status,
        },
        300..=399 => SendOutcome::InstanceDown {
            reason: format!(
                "HTTP {status}: redirected (redirects are not followed; check base_url)"
            ),
            http_status,
        },
        _ => SendOutcome::InDoubt {
            reason: format!("unexpected HTTP {status}: {message}"),
            http_status,
        },
    }
}

/// `Retry-After` as delay-seconds or an HTTP date, clamped to an hour.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = value.trim();
    let d = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
        (at - now).to_std().unwrap_or(Duration::ZERO)
    };
    Some(d.min(MAX_RETRY_AFTER))
}

/// The message id in a provider response: `id` (bare or serialized, or a
/// whatsapp-web.js style `{id: {id, _serialized}}`), `key.id`, `messageId`,
/// `message_id`, or the same inside `data`.
pub fn response_id(v: &Value) -> Option<String> {
    let candidates = [
        v.get("id"),
        v.get("id").and_then(|i| i.get("id")),
        v.get("id").and_then(|i| i.get("_serialized")),
        v.get("key").and_then(|k| k.get("id")),
        v.get("messageId"),
        v.get("message_id"),
    ];
    for c in candidates.into_iter().flatten() {
        if let Some(s) = c.as_str() {
            let bare = bare_message_id(s.trim());
            if !bare.is_empty() {
                return Some(bare.to_string());
            }
        }
    }
    match v.get("data") {
        Some(d) if d.is_object() => response_id(d),
        _ => None,
    }
}

/// Whether a 5xx body carries the [`NOT_PROCESSED`] code.
fn is_not_processed(body: &str) -> bool {
    match serde_json::from_str::<Value>(body) {
        Ok(v) => ["code", "error"]
            .iter()
            .any(|k| v.get(*k).and_then(Value::as_str) == Some(NOT_PROCESSED)),
        Err(_) => false,
    }
}

/// Whether an error body says the WhatsApp session can't send right now
/// (WAHA answers 422 "Session status is not as expected…"; others say "not
/// connected"). Requires the word session or instance, so a validation
/// message that happens to say "not working" stays `Permanent`.
fn says_session_down(body: &str) -> bool {
    let l = body.to_lowercase();
    (l.contains("session") || l.contains("instance"))
        && [
            "not connected",
            "not working",
            "not as expected",
            "scan_qr_code",
            "disconnected",
            "not logged in",
        ]
        .iter()
        .any(|m| l.contains(m))
}

/// The provider's own words from an error body: `message`, else `error`,
/// else the (shortened) raw text.
fn provider_message(body: &str) -> String {
    let from_json = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        ["message", "error"]
            .iter()
            .find_map(|k| v.get(*k).and_then(Value::as_str).map(str::to_string))
    });
    let msg = from_json.unwrap_or_else(|| body.trim().to_string());
    if msg.is_empty() {
        return "(empty body)".into();
    }
    shorten(&msg)
}

fn shorten(s: &str) -> String {
    if s.chars().count() <= MAX_QUOTE {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(MAX_QUOTE).collect();
        t.push('…');
        t
    }
}

/// Removes the token from `s`: its literal occurrences and the value of any
/// `access_token=` parameter.
pub fn redact(s: &str, token: &str) -> String {
    let mut out = if token.is_empty() {
        s.to_string()
    } else {
        s.replace(token, "[redacted]")
    };
    const KEY: &str = "access_token=";
    let mut from = 0;
    while let Some(pos) = out[from..].find(KEY) {
        let start = from + pos + KEY.len();
        let end = out[start..]
            .find(['&', ' ', ')', '"', '\'', '#'])
            .map(|e| start + e)
            .unwrap_or(out.len());
        if &out[start..end] != "[redacted]" {
            out.replace_range(start..end, "[redacted]");
        }
        from = start + "[redacted]".len();
    }
    out
}

/// A transport error as an exchange: the URL stripped, the cause chain kept.
fn exchange_from_error(err: reqwest::Error) -> Exchange {
    let never_written = err.is_connect() || err.is_builder();
    let timed_out = err.is_timeout();
    let err = err.without_url();
    let mut detail = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    if timed_out && !detail.contains("timed out") {
        detail.push_str(" (timed out)");
    }
    if never_written {
        Exchange::NotSent { detail }
    } else {
        Exchange::Broken { detail }
    }
}

/// What a look-up by id found.
enum ById {
    Found(String),
    NotFound,
    Failed(String),
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
    ids_ignored: std::sync::atomic::AtomicBool,
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
    ) -> Result<WawpClient, String> {
        let token = inst.token().map_err(|e| format!("instance {name}: {e}"))?;
        if token.expose_secret().is_empty() {
            return Err(format!("instance {name}: access_token is empty"));
        }
        let base = inst.base_url.trim_end_matches('/').to_string();
        match reqwest::Url::parse(&base) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            Ok(_) => return Err(format!("instance {name}: base_url must be http(s)")),
            Err(e) => return Err(format!("instance {name}: base_url: {e}")),
        }
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_millis(settings.connect_timeout_ms.max(1)))
            .timeout(Duration::from_millis(settings.request_timeout_ms.max(1)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("statusd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                format!(
                    "instance {name}: cannot build HTTP client: {}",
                    redact(&e.without_url().to_string(), token.expose_secret())
                )
            })?;
        Ok(WawpClient {
            name: name.to_string(),
            base,
            instance_id: inst.instance_id.clone(),
            token,
            supplied_id: inst.supplied_id,
            ids_ignored: std::sync::atomic::AtomicBool::new(false),
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
                ("instance_id", self.instance_id.as_str()),
                ("access_token", self.token.expose_secret()),
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
            exchange = ?self.scrub_exchange(ex.clone()),
            "provider exchange"
        );
        ex
    }

    fn scrub(&self, s: &str) -> String {
        redact(s, self.token.expose_secret())
    }

    /// Redacts the strings of an outcome. Classification itself works on
    /// the raw exchange (redacting a body first could corrupt it); what it
    /// produces is scrubbed before it leaves the client.
    fn scrub_outcome(&self, o: SendOutcome) -> SendOutcome {
        match o {
            SendOutcome::Posted { provider_id } => SendOutcome::Posted { provider_id },
            SendOutcome::Retryable {
                reason,
                http_status,
                retry_after,
            } => SendOutcome::Retryable {
                reason: self.scrub(&reason),
                http_status,
                retry_after,
            },
            SendOutcome::InDoubt {
                reason,
                http_status,
            } => SendOutcome::InDoubt {
                reason: self.scrub(&reason),
                http_status,
            },
            SendOutcome::Permanent {
                reason,
                http_status,
            } => SendOutcome::Permanent {
                reason: self.scrub(&reason),
                http_status,
            },
            SendOutcome::InstanceDown {
                reason,
                http_status,
            } => SendOutcome::InstanceDown {
                reason: self.scrub(&reason),
                http_status,
            },
        }
    }

    fn scrub_error(&self, e: ProviderError) -> ProviderError {
        match e {
            ProviderError::InstanceDown(s) => ProviderError::InstanceDown(self.scrub(&s)),
            ProviderError::Unavailable(s) => ProviderError::Unavailable(self.scrub(&s)),
            ProviderError::Malformed(s) => ProviderError::Malformed(self.scrub(&s)),
        }
    }

    fn scrub_lookup(&self, l: Lookup) -> Lookup {
        match l {
            Lookup::Unavailable { reason } => Lookup::Unavailable {
                reason: self.scrub(&reason),
            },
            other => other,
        }
    }

    /// An exchange with every string redacted, for the trace log.
    fn scrub_exchange(&self, ex: Exchange) -> Exchange {
        match ex {
            Exchange::NotSent { detail } => Exchange::NotSent {
                detail: self.scrub(&detail),
            },
            Exchange::Broken { detail } => Exchange::Broken {
                detail: self.scrub(&detail),
            },
            Exchange::Response {
                status,
                retry_after,
                body,
            } => Exchange::Response {
                status,
                retry_after,
                body: body.map(|b| self.scrub(&b)).map_err(|e| self.scrub(&e)),
            },
        }
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

    async fn lookup_by_id(&self, message_id: &str) -> ById {
        let rb = self
            .request(reqwest::Method::POST, paths::GET_MESSAGE)
            .json(&json!({
                "chatId": STATUS_CHAT,
                "messageId": serialized_status_id(message_id),
                "downloadMedia": false,
            }));
        match self.exchange(paths::GET_MESSAGE, rb).await {
            Exchange::Response {
                status: 200..=299,
                body: Ok(body),
                ..
            } => match serde_json::from_str::<Value>(&body) {
                Ok(Value::Null) => ById::NotFound,
                Ok(v) if v.as_object().is_some_and(|o| o.is_empty()) => ById::NotFound,
                Ok(v) => match response_id(&v) {
                    Some(id) if id == message_id => ById::Found(id),
                    Some(other) => ById::Failed(format!(
                        "look-up of {message_id} answered with another message ({other})"
                    )),
                    None => ById::Failed("look-up answered without a message id".into()),
                },
                Err(_) => ById::Failed("look-up answered with a malformed body".into()),
            },
            Exchange::Response { status: 404, .. } => ById::NotFound,
            ex => ById::Failed(format!("look-up by id failed: {}", self.read_error(&ex))),
        }
    }

    /// Searches the instance's recent own statuses for one of the query's
    /// kind and fingerprint, posted at or after `sent_after`.
    async fn lookup_in_recent(&self, q: &StatusQuery<'_>) -> Lookup {
        for page in 0..LIST_MAX_PAGES {
            let offset = (page * LIST_PAGE).to_string();
            let limit = LIST_PAGE.to_string();
            let rb = self
                .request(reqwest::Method::GET, paths::CHAT_MESSAGES)
                .query(&[
                    ("chatId", STATUS_CHAT),
                    ("limit", limit.as_str()),
                    ("offset", offset.as_str()),
                    ("downloadMedia", "false"),
                ]);
            let body = match self.exchange(paths::CHAT_MESSAGES, rb).await {
                Exchange::Response {
                    status: 200..=299,
                    body: Ok(body),
                    ..
                } => body,
                ex => {
                    return Lookup::Unavailable {
                        reason: format!("listing recent statuses failed: {}", self.read_error(&ex)),
                    }
                }
            };
            let messages = match serde_json::from_str::<Value>(&body) {
                Ok(Value::Array(a)) => a,
                Ok(Value::Object(mut o)) => match o.remove("messages").or_else(|| o.remove("data"))
                {
                    Some(Value::Array(a)) => a,
                    _ => {
                        return Lookup::Unavailable {
                            reason: "listing recent statuses: no message list in the body".into(),
                        }
                    }
                },
                _ => {
                    return Lookup::Unavailable {
                        reason: "listing recent statuses: malformed body".into(),
                    }
                }
            };
            if let Some(provider_id) = messages.iter().find_map(|m| listed_match(m, q)) {
                return Lookup::Present { provider_id };
            }
            let any_in_window = messages
                .iter()
                .any(|m| listed_time(m).is_none_or(|t| in_window(t, q)));
            if messages.len() < LIST_PAGE || !any_in_window {
                return Lookup::Absent;
            }
        }
        Lookup::Unavailable {
            reason: format!(
                "more than {} recent statuses since {}: not all could be searched",
                LIST_PAGE * LIST_MAX_PAGES,
                q.sent_after
            ),
        }
    }
}

/// When a listed message was sent (`timestamp`, seconds or milliseconds).
fn listed_time(m: &Value) -> Option<DateTime<Utc>> {
    let t = m.get("timestamp")?;
    let n = t
        .as_i64()
        .or_else(|| t.as_str().and_then(|s| s.parse().ok()))?;
    if n > 100_000_000_000 {
        DateTime::from_timestamp_millis(n)
    } else {
        DateTime::from_timestamp(n, 0)
    }
}

/// The kind of a listed message: its `type` when given, else from
/// `hasMedia` and the media's mimetype.
fn listed_kind(m: &Value) -> Option<Kind> {
    if let Some(t) = m.get("type").and_then(Value::as_str) {
        return match t {
            "chat" | "text" | "extended_text" => Some(Kind::Text),
            "image" => Some(Kind::Image),
            "ptt" | "audio" | "voice" => Some(Kind::Voice),
            "video" => Some(Kind::Video),
            _ => None,
        };
    }
    if !m.get("hasMedia").and_then(Value::as_bool).unwrap_or(false) {
        return Some(Kind::Text);
    }
    let mime = m.get("media")?.get("mimetype")?.as_str()?;
    if mime.starts_with("image/") {
        Some(Kind::Image)
    } else if mime.starts_with("audio/") {
        Some(Kind::Voice)
    } else if mime.starts_with("video/") {
        Some(Kind::Video)
    } else {
        None
    }
}

/// The fingerprint of a listed message, from the same pieces
/// [`StatusBody::fingerprint`](crate::model::StatusBody::fingerprint) uses:
/// text = `body`; image/video = media URL (or base64 `data`) + caption
/// (`body`); voice = media URL (or data).
///
/// Limitation: a real provider may list media under its own CDN URL rather
/// than the URL we posted; such statuses then never match by content and
/// the reconciler parks them (in-doubt, never re-posted blindly). Text
/// statuses, and everything on the simulator, match.
fn listed_fingerprint(kind: Kind, m: &Value) -> String {
    let body = m.get("body").and_then(Value::as_str).unwrap_or("");
    let media = |k: &str| {
        m.get("media")
            .and_then(|x| x.get(k))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let url = media("url").or_else(|| media("data")).unwrap_or("");
    match kind {
        Kind::Text => fingerprint_of(kind, &[body]),
        Kind::Image | Kind::Video => fingerprint_of(kind, &[url, body]),
        Kind::Voice => fingerprint_of(kind, &[url]),
    }
}

/// Whether a listed time is within the query's window. Listings carry
/// whole seconds, so the window starts at the second of `sent_after`.
fn in_window(t: DateTime<Utc>, q: &StatusQuery<'_>) -> bool {
    t.timestamp() >= q.sent_after.timestamp()
}

/// The bare id of a listed message if it is ours and matches the query.
fn listed_match(m: &Value, q: &StatusQuery<'_>) -> Option<String> {
    let id = m.get("id").and_then(|i| {
        i.as_str()
            .or_else(|| i.get("_serialized").and_then(Value::as_str))
    })?;
    let from_me = m
        .get("fromMe")
        .and_then(Value::as_bool)
        .unwrap_or_else(|| id.starts_with("true_"));
    if !from_me || !in_window(listed_time(m)?, q) || listed_kind(m)? != q.kind {
        return None;
    }
    (listed_fingerprint(q.kind, m) == q.fingerprint).then(|| bare_message_id(id).to_string())
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
        .map_err(|e| self.scrub_error(e));
        if let Err(e) = &result {
            tracing::debug!(instance = %self.name, error = %e, "new-message-id failed");
        }
        result
    }

    async fn send_status(&self, status: &OutgoingStatus<'_>) -> SendOutcome {
        let path = paths::status(status.body.kind());
        let mut body = status.body.to_provider_json();
        if self.supplied_id {
            body.insert("id".into(), Value::String(status.message_id.to_string()));
        }
        let rb = self.request(reqwest::Method::POST, path).json(&body);
        let outcome = self.scrub_outcome(classify(&self.exchange(path, rb).await));
        if let SendOutcome::Posted { provider_id } = &outcome {
            if self.supplied_id
                && bare_message_id(provider_id) != status.message_id
                && !self
                    .ids_ignored
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
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
            .json(&json!({ "id": message_id }));
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
            (_, other) => self.scrub_outcome(other),
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
                ById::NotFound if self.ids_ignored.load(std::sync::atomic::Ordering::Relaxed) => {
                    self.lookup_in_recent(query).await
                }
                ById::NotFound => Lookup::Absent,
            }
        } else {
            self.lookup_in_recent(query).await
        };
        let lookup = self.scrub_lookup(lookup);
        tracing::debug!(instance = %self.name, message_id = query.message_id, lookup = ?lookup, "status look-up");
        lookup
    }

    async fn probe(&self) -> Result<(), ProviderError> {
        self.probe_raw().await.map_err(|e| self.scrub_error(e))
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
                    None | Some("WORKING") => Ok(()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, body: &str) -> Exchange {
        Exchange::Response {
            status,
            retry_after: None,
            body: Ok(body.to_string()),
        }
    }

    #[test]
    fn two_xx_with_an_id_is_posted() {
        for body in [
            r#"{"id":"3EB0AAAABBBBCCCCDDDD0000"}"#,
            r#"{"id":"true_status@broadcast_3EB0AAAABBBBCCCCDDDD0000"}"#,
            r#"{"id":{"fromMe":true,"id":"3EB0AAAABBBBCCCCDDDD0000","_serialized":"x"}}"#,
            r#"{"key":{"id":"3EB0AAAABBBBCCCCDDDD0000"}}"#,
            r#"{"data":{"messageId":"3EB0AAAABBBBCCCCDDDD0000"}}"#,
        ] {
            assert_eq!(
                classify(&resp(201, body)),
                SendOutcome::Posted {
                    provider_id: "3EB0AAAABBBBCCCCDDDD0000".into()
                },
                "{body}"
            );
        }
    }

    #[test]
    fn two_xx_without_id_or_unparsable_or_unreadable_is_in_doubt() {
        for body in [
            "<html>ok</html>",
            "{}",
            r#"{"id":""}"#,
            r#"{"ok":true}"#,
            "",
        ] {
            let o = classify(&resp(200, body));
            assert_eq!(o.label(), "in_doubt", "{body}: {o:?}");
            assert_eq!(o.http_status(), Some(200));
        }
        let o = classify(&Exchange::Response {
            status: 200,
            retry_after: None,
            body: Err("connection reset".into()),
        });
        assert_eq!(o.label(), "in_doubt");
    }

    #[test]
    fn rate_limit_honours_retry_after_in_seconds_and_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let with = |h: &str| Exchange::Response {
            status: 429,
            retry_after: Some(h.into()),
            body: Ok(r#"{"message":"slow down"}"#.into()),
        };
        match classify_at(&with("7"), now) {
            SendOutcome::Retryable {
                retry_after,
                http_status,
                reason,
            } => {
                assert_eq!(retry_after, Some(Duration::from_secs(7)));
                assert_eq!(http_status, Some(429));
                assert!(reason.contains("slow down"), "{reason}");
            }
            o => panic!("{o:?}"),
        }
        match classify_at(&with("Wed, 21 Oct 2015 07:28:30 GMT"), now) {
            SendOutcome::Retryable { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(30)))
            }
            o => panic!("{o:?}"),
        }
        match classify_at(&with("Wed, 21 Oct 2015 07:00:00 GMT"), now) {
            SendOutcome::Retryable { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::ZERO))
            }
            o => panic!("{o:?}"),
        }
        match classify_at(&with("99999999"), now) {
            SendOutcome::Retryable { retry_after, .. } => {
                assert_eq!(retry_after, Some(MAX_RETRY_AFTER))
            }
            o => panic!("{o:?}"),
        }
        match classify_at(&resp(429, ""), now) {
            SendOutcome::Retryable { retry_after, .. } => assert_eq!(retry_after, None),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn transport_failures_split_on_whether_the_request_was_written() {
        let o = classify(&Exchange::NotSent {
            detail: "connection refused".into(),
        });
        assert_eq!(o.label(), "retryable");
        assert_eq!(o.http_status(), None);
        let o = classify(&Exchange::Broken {
            detail: "operation timed out".into(),
        });
        assert_eq!(o.label(), "in_doubt");
        assert_eq!(o.http_status(), None);
    }

    #[test]
    fn five_xx_is_in_doubt_unless_marked_not_processed() {
        for s in [500, 502, 503, 504] {
            assert_eq!(
                classify(&resp(s, r#"{"message":"boom"}"#)).label(),
                "in_doubt"
            );
            assert_eq!(classify(&resp(s, "")).label(), "in_doubt");
            let o = classify(&resp(
                s,
                r#"{"code":"NOT_PROCESSED","message":"overloaded"}"#,
            ));
            assert_eq!(o.label(), "retryable", "{s}");
            assert_eq!(o.http_status(), Some(s));
        }
        // The marker only counts as a JSON code, not as free text.
        assert_eq!(classify(&resp(503, "NOT_PROCESSED")).label(), "in_doubt");
    }

    #[test]
    fn auth_failures_and_dead_sessions_are_instance_down() {
        for s in [401, 403] {
            let o = classify(&resp(s, r#"{"message":"Unauthorized"}"#));
            assert_eq!(o.label(), "instance_down");
            assert_eq!(o.http_status(), Some(s));
        }
        let o = classify(&resp(
            422,
            r#"{"message":"Session status is not as expected: SCAN_QR_CODE"}"#,
        ));
        assert_eq!(o.label(), "instance_down");
        let o = classify(&resp(500, r#"{"error":"session not connected"}"#));
        assert_eq!(o.label(), "instance_down");
        assert_eq!(classify(&resp(302, "")).label(), "instance_down");
    }

    #[test]
    fn other_client_errors_are_permanent_with_the_providers_message() {
        for s in [400, 404, 409, 413, 422] {
            match classify(&resp(s, r#"{"status":400,"message":"text is required"}"#)) {
                SendOutcome::Permanent {
                    reason,
                    http_status,
                } => {
                    assert_eq!(http_status, s);
                    assert!(reason.contains("text is required"), "{reason}");
                }
                o => panic!("{s}: {o:?}"),
            }
        }
        // A validation message mentioning "not working" is not a dead session.
        assert_eq!(
            classify(&resp(400, r#"{"message":"link preview not working"}"#)).label(),
            "permanent"
        );
        assert_eq!(classify(&resp(408, "")).label(), "retryable");
    }

    #[test]
    fn redaction_removes_literal_tokens_and_query_values() {
        let t = "s3cr3t-TOKEN";
        let s = "error sending request for url (http://h/v2?instance_id=1&access_token=s3cr3t-TOKEN&x=1)";
        let r = redact(s, t);
        assert!(!r.contains(t), "{r}");
        assert!(r.contains("access_token=[redacted]&x=1"), "{r}");
        let r = redact("http://h/?access_token=other-value", t);
        assert_eq!(r, "http://h/?access_token=[redacted]");
        assert_eq!(
            redact("token s3cr3t-TOKEN leaked", t),
            "token [redacted] leaked"
        );
    }

    mod secrets {
        use super::super::*;
        use crate::model::StatusBody;
        use crate::sim::{SimConfig, Simulator};
        use std::io::Write;
        use std::sync::{Arc, Mutex, OnceLock};

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
                let w = cap.clone();
                tracing_subscriber::fmt()
                    .with_max_level(tracing::Level::TRACE)
                    .with_ansi(false)
                    .with_writer(move || w.clone())
                    .try_init()
                    .ok()
                    .map(|_| cap)
            });
            match global {
                Some(cap) => (cap.clone(), None),
                // Another test installed a global subscriber first: capture
                // this thread (the test runs on a current-thread runtime).
                None => {
                    let cap = Capture(Arc::new(Mutex::new(Vec::new())));
                    let w = cap.clone();
                    let sub = tracing_subscriber::fmt()
                        .with_max_level(tracing::Level::TRACE)
                        .with_ansi(false)
                        .with_writer(move || w.clone())
                        .finish();
                    (cap, Some(tracing::subscriber::set_default(sub)))
                }
            }
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
                    StatusBody::parse("text", &json!({ "text": format!("s{i}") }).to_string())
                        .unwrap();
                let id = crate::provider::ids::local_message_id();
                let out = good
                    .send_status(&OutgoingStatus {
                        message_id: &id,
                        body: &body,
                    })
                    .await;
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
                seen.push(format!(
                    "{:?}",
                    wrong
                        .send_status(&OutgoingStatus {
                            message_id: &id,
                            body: &body
                        })
                        .await
                ));
                seen.push(format!("{:?}", wrong.find_status(&q).await));
                seen.push(format!(
                    "{:?}",
                    refused
                        .send_status(&OutgoingStatus {
                            message_id: &id,
                            body: &body
                        })
                        .await
                ));
                seen.push(format!("{:?}", refused.find_status(&q).await));
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
            let logs = String::from_utf8_lossy(&cap.0.lock().unwrap_or_else(|e| e.into_inner()))
                .to_string();
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

    #[test]
    fn serialized_ids_round_trip() {
        let id = "3EB0AAAABBBBCCCCDDDD0000";
        assert_eq!(bare_message_id(&serialized_status_id(id)), id);
        assert_eq!(bare_message_id(id), id);
        assert_eq!(bare_message_id("false_123@g.us_ABC_999@c.us"), "ABC");
    }
}
