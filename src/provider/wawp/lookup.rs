//! Is a status on the provider? The reconciler's question (DESIGN.md §4
//! rule 4), asked by id (`messages/get`) or, where the provider assigns its
//! own ids, by content in the recent statuses (`chats/messages`). The
//! client makes the requests; this module reads their answers.
//!
//! "Absent" is answered only on evidence (DESIGN.md R5): a documented
//! not-found, or a listing read to the start of the window with every own
//! status in it compared. Anything short of that is `Unavailable`.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::classify::{read_error, response_id, Exchange};
use crate::model::{fingerprint_of, Kind};
use crate::provider::contract::{Lookup, StatusQuery};
use crate::wire::bare_message_id;

/// Messages listed per page when searching recent statuses.
pub(super) const LIST_PAGE: usize = 100;
/// Pages searched before giving up with `Unavailable` (never `Absent`: a
/// status we did not get to see may still be there).
pub(super) const LIST_MAX_PAGES: usize = 10;

/// What a look-up by id found.
pub(super) enum ById {
    Found(String),
    NotFound,
    Failed(String),
}

/// Reads the answer to a look-up of `message_id` in the status chat
/// (`messages/get`): the message, a documented not-found (404 or an empty
/// body), or a failure.
pub(super) fn read_by_id(ex: &Exchange, message_id: &str) -> ById {
    match ex {
        Exchange::Response {
            status: 200..=299,
            body: Ok(body),
            ..
        } => match serde_json::from_str::<Value>(body) {
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
        ex => ById::Failed(format!("look-up by id failed: {}", read_error(ex))),
    }
}

/// Reads one page (of [`LIST_PAGE`] messages) of the status chat's
/// listing, newest first. `Some` is the answer; `None` asks for the next
/// page: this one was full and still inside the query's window.
pub(super) fn read_page(ex: &Exchange, q: &StatusQuery<'_>) -> Option<Lookup> {
    let body = match ex {
        Exchange::Response {
            status: 200..=299,
            body: Ok(body),
            ..
        } => body,
        ex => {
            return Some(Lookup::Unavailable {
                reason: format!("listing recent statuses failed: {}", read_error(ex)),
            })
        }
    };
    let messages = match serde_json::from_str::<Value>(body) {
        Ok(Value::Array(a)) => a,
        Ok(Value::Object(mut o)) => match o.remove("messages").or_else(|| o.remove("data")) {
            Some(Value::Array(a)) => a,
            _ => {
                return Some(Lookup::Unavailable {
                    reason: "listing recent statuses: no message list in the body".into(),
                })
            }
        },
        _ => {
            return Some(Lookup::Unavailable {
                reason: "listing recent statuses: malformed body".into(),
            })
        }
    };
    if let Some(provider_id) = messages.iter().find_map(|m| listed_match(m, q)) {
        return Some(Lookup::Present { provider_id });
    }
    let any_in_window = messages
        .iter()
        .any(|m| listed_time(m).is_none_or(|t| in_window(t, q)));
    if messages.len() < LIST_PAGE || !any_in_window {
        return Some(Lookup::Absent);
    }
    None
}

/// The answer when [`LIST_MAX_PAGES`] full pages were all inside the
/// window: what was not read may hold the status.
pub(super) fn window_too_full(q: &StatusQuery<'_>) -> Lookup {
    Lookup::Unavailable {
        reason: format!(
            "more than {} recent statuses since {}: not all could be searched",
            LIST_PAGE * LIST_MAX_PAGES,
            q.sent_after
        ),
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
