//! The one classification of every HTTP outcome (DESIGN.md §4 rule 5):
//! what came back from an exchange ([`Exchange`]) becomes a
//! [`SendOutcome`], a pure function of the exchange and the clock
//! ([`classify_at`]). Also the reading of `Retry-After`, of message ids in
//! response bodies, and of transport errors (was the request written?).

use std::error::Error as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::provider::contract::{ProviderError, SendOutcome};
use crate::wire::{bare_message_id, NOT_PROCESSED};

/// Longest `Retry-After` honoured; longer values are clamped.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Longest provider message quoted in a reason.
const MAX_QUOTE: usize = 300;

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
/// | 501 (WAHA: "not implemented by engine") | `Permanent`: nothing was posted, and this engine never will |
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
        501 => SendOutcome::Permanent {
            reason: format!(
                "HTTP 501, not implemented by this engine (nothing was posted): {message}"
            ),
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

/// The exchange of a call that posts nothing (fetching an id, probing,
/// looking up), when it did not succeed, as a [`ProviderError`].
pub(super) fn read_error(ex: &Exchange) -> ProviderError {
    match classify(ex) {
        SendOutcome::InstanceDown { reason, .. } => ProviderError::InstanceDown(reason),
        other => {
            ProviderError::Unavailable(other.reason().unwrap_or("unexpected response").to_string())
        }
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
pub(super) fn provider_message(body: &str) -> String {
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

/// `s`, cut to the longest quote a reason carries.
pub(super) fn shorten(s: &str) -> String {
    if s.chars().count() <= MAX_QUOTE {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(MAX_QUOTE).collect();
        t.push('…');
        t
    }
}

/// A transport error as an exchange: the URL stripped, the cause chain kept.
pub(super) fn exchange_from_error(err: reqwest::Error) -> Exchange {
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

    /// WAHA answers 501 for what an engine does not implement (WEBJS:
    /// new-message-id, delete): nothing was posted, and retrying cannot help.
    #[test]
    fn not_implemented_is_permanent() {
        let o = classify(&resp(
            501,
            r#"{"statusCode":501,"message":"Not implemented by engine WEBJS"}"#,
        ));
        assert_eq!(o.label(), "permanent");
        assert_eq!(o.http_status(), Some(501));
        assert!(o.reason().unwrap().contains("nothing was posted"));
    }

    /// Every engine's send answer, as documented (API.md; devlikeapro/waha
    /// `src/core/engines/*/session.*.core.ts` `sendTextStatus`): NOWEB's
    /// Baileys key, GOWS's serialized id with the participant, WEBJS's
    /// message object, Wawp's wrapper, Baileys' legacy 36-hex ids.
    #[test]
    fn every_engines_send_answer_yields_the_bare_id() {
        let id18 = "3EB0A1B2C3D4E5F6A7B8C9";
        let id36 = "3EB0A1B2C3D4E5F6A7B8C9D0E1F2A3B4C5D6E7F8A9B0";
        for (body, want) in [
            (
                format!(
                    r#"{{"key":{{"remoteJid":"status@broadcast","fromMe":true,"id":"{id18}"}},"message":{{}}}}"#
                ),
                id18,
            ),
            (
                format!(r#"{{"id":"true_status@broadcast_{id18}_31612345678@c.us"}}"#),
                id18,
            ),
            (format!(r#"{{"id":"true_status@broadcast_{id36}"}}"#), id36),
            (
                format!(
                    r#"{{"id":{{"fromMe":true,"remote":"status@broadcast","id":"{id18}","_serialized":"true_status@broadcast_{id18}"}},"body":"x"}}"#
                ),
                id18,
            ),
            (format!(r#"{{"data":{{"id":"{id18}"}}}}"#), id18),
            // Other providers' shapes: an opaque id is kept as it is.
            (
                r#"{"messageId":"BAE5F4C1D2A3"}"#.to_string(),
                "BAE5F4C1D2A3",
            ),
        ] {
            assert_eq!(
                classify(&resp(200, &body)),
                SendOutcome::Posted {
                    provider_id: want.into()
                },
                "{body}"
            );
        }
        // WEBJS may answer with an empty body: not known to be posted.
        assert_eq!(classify(&resp(201, "")).label(), "in_doubt");
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
}
