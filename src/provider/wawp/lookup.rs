//! Reading the answers to the reconciler's questions: a message by id
//! (Wawp `messages/get`, WAHA `GET /api/{session}/chats/{chatId}/messages/{id}`)
//! and a page of the status chat (Wawp `chats/messages`, WAHA
//! `/api/{session}/chats/{chatId}/messages`). The client makes the
//! requests; this module reads what came back, in every engine's shape.
//!
//! A listed message has no top-level `type` (WAHA's `WAMessage` DTO,
//! devlikeapro/waha `src/structures/responses.dto.ts`): its kind is read
//! from `_data`, the engine's raw message —
//!
//! | engine | `_data` | kinds |
//! |---|---|---|
//! | NOWEB (Baileys) | `{key, message: {conversation \| extendedTextMessage \| imageMessage \| audioMessage \| videoMessage …}, messageTimestamp}` | the first content key |
//! | GOWS (whatsmeow) | `{Info, Message: {conversation \| extendedTextMessage \| imageMessage …}}` (proto field names, either case) | the same |
//! | WEBJS (whatsapp-web.js) | `{type: "chat" \| "image" \| "ptt" \| "audio" \| "video", …}` | `type` |
//!
//! (devlikeapro/waha `src/core/engines/noweb/session.noweb.core.ts`
//! `toWAMessage`, `src/core/engines/gows/session.gows.core.ts`,
//! `src/core/engines/webjs/session.webjs.core.ts`.) Other providers may
//! give a top-level `type`; a message with neither and `hasMedia: false` is
//! read as text. Anything else is left unclassified, which the search
//! treats as "cannot tell" (never as absence).

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::classify::{read_error, response_id, Exchange};
use crate::model::{fingerprint_of, Kind};
use crate::provider::contract::{ById, ListedStatus, Page, ProviderError};
use crate::wire::bare_message_id;

/// Reads the answer to a look-up of `message_id`: the message, the
/// documented not-found (HTTP 404: WAHA's `Message not found`), or a
/// failure. A 2xx without the message (`null`, `{}`) is not the documented
/// not-found: it is a failure, never evidence of absence.
pub(super) fn read_by_id(ex: &Exchange, message_id: &str) -> ById {
    match ex {
        Exchange::Response {
            status: 200..=299,
            body: Ok(body),
            ..
        } => match serde_json::from_str::<Value>(body) {
            Ok(v) if v.is_object() && v.as_object().is_some_and(|o| !o.is_empty()) => {
                match response_id(&v) {
                    Some(id) if id == message_id => ById::Found { provider_id: id },
                    Some(other) => ById::Failed {
                        reason: format!(
                            "look-up of {message_id} answered with another message ({other})"
                        ),
                    },
                    None => ById::Failed {
                        reason: "look-up answered without a message id".into(),
                    },
                }
            }
            Ok(_) => ById::Failed {
                reason: "look-up answered 2xx without a message (not the documented not-found)"
                    .into(),
            },
            Err(_) => ById::Failed {
                reason: "look-up answered with a malformed body".into(),
            },
        },
        Exchange::Response { status: 404, .. } => ById::NotFound,
        ex => ById::Failed {
            reason: format!("look-up by id failed: {}", read_error(ex)),
        },
    }
}

/// Reads one page of the status chat's listing (an array, or an object
/// holding it under `messages` or `data`).
pub(super) fn read_page(ex: &Exchange) -> Result<Page, ProviderError> {
    let body = match ex {
        Exchange::Response {
            status: 200..=299,
            body: Ok(body),
            ..
        } => body,
        ex => return Err(read_error(ex)),
    };
    let messages = match serde_json::from_str::<Value>(body) {
        Ok(Value::Array(a)) => a,
        Ok(Value::Object(mut o)) => match o.remove("messages").or_else(|| o.remove("data")) {
            Some(Value::Array(a)) => a,
            _ => {
                return Err(ProviderError::Malformed(
                    "listing: no message list in the body".into(),
                ))
            }
        },
        _ => return Err(ProviderError::Malformed("listing: malformed body".into())),
    };
    Ok(Page {
        items: messages.iter().map(read_listed).collect(),
    })
}

/// One listed message, as far as it can be read.
pub(crate) fn read_listed(m: &Value) -> ListedStatus {
    let raw_id = m
        .get("id")
        .and_then(|i| {
            i.as_str()
                .or_else(|| i.get("_serialized").and_then(Value::as_str))
                .or_else(|| i.get("id").and_then(Value::as_str))
        })
        .or_else(|| {
            m.get("key")
                .and_then(|k| k.get("id"))
                .and_then(Value::as_str)
        })
        .unwrap_or("");
    let from_me = m
        .get("fromMe")
        .and_then(Value::as_bool)
        .or_else(|| {
            m.get("id")
                .and_then(|i| i.get("fromMe"))
                .and_then(Value::as_bool)
        })
        .or_else(|| {
            if raw_id.starts_with("true_") {
                Some(true)
            } else if raw_id.starts_with("false_") {
                Some(false)
            } else {
                None
            }
        });
    let kind = listed_kind(m);
    ListedStatus {
        id: bare_message_id(raw_id).to_string(),
        at: listed_time(m),
        from_me,
        kind,
        fingerprint: kind.and_then(|k| listed_fingerprint(k, m)),
    }
}

/// When a listed message was sent (`timestamp`, seconds or milliseconds).
fn listed_time(m: &Value) -> Option<DateTime<Utc>> {
    let t = m.get("timestamp").or_else(|| m.get("messageTimestamp"))?;
    let n = t
        .as_i64()
        .or_else(|| t.as_str().and_then(|s| s.parse().ok()))?;
    if n > 100_000_000_000 {
        DateTime::from_timestamp_millis(n)
    } else {
        DateTime::from_timestamp(n, 0)
    }
}

/// A key of `o`, matched without regard to the case of its first letter
/// (GOWS marshals whatsmeow's proto with Go field names).
fn key<'a>(o: &'a Value, name: &str) -> Option<&'a Value> {
    let obj = o.as_object()?;
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// The kind of a proto-style message content (`conversation`,
/// `imageMessage`, …): the first key that names one.
fn proto_kind(message: &Value) -> Option<Kind> {
    let obj = message.as_object()?;
    for (k, _) in obj {
        let k = k.to_ascii_lowercase();
        let kind = match k.as_str() {
            "conversation" | "extendedtextmessage" => Kind::Text,
            "imagemessage" => Kind::Image,
            "audiomessage" => Kind::Voice,
            "videomessage" => Kind::Video,
            _ => continue,
        };
        return Some(kind);
    }
    None
}

/// The kind: a top-level `type` if the provider gives one, else the
/// engine's raw message in `_data`, else (no `_data`) text when
/// `hasMedia` is false or the media's mimetype.
fn listed_kind(m: &Value) -> Option<Kind> {
    if let Some(t) = m.get("type").and_then(Value::as_str) {
        return type_kind(t);
    }
    if let Some(data) = m.get("_data").filter(|d| d.is_object()) {
        // WEBJS: whatsapp-web.js's Message has `type`.
        if let Some(t) = data.get("type").and_then(Value::as_str) {
            return type_kind(t);
        }
        // NOWEB: Baileys' WAMessage has `message`; GOWS: `Message`.
        return key(data, "message").and_then(proto_kind);
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

/// whatsapp-web.js message types (and the plain names other providers use).
fn type_kind(t: &str) -> Option<Kind> {
    match t {
        "chat" | "text" | "extended_text" | "conversation" => Some(Kind::Text),
        "image" => Some(Kind::Image),
        "ptt" | "audio" | "voice" => Some(Kind::Voice),
        "video" => Some(Kind::Video),
        _ => None,
    }
}

/// The text of a listed text status: `body`, else the raw message's
/// `conversation` / `extendedTextMessage.text`.
fn listed_text(m: &Value) -> Option<String> {
    if let Some(b) = m.get("body").and_then(Value::as_str) {
        return Some(b.to_string());
    }
    let msg = key(m.get("_data")?, "message")?;
    key(msg, "conversation")
        .and_then(Value::as_str)
        .or_else(|| {
            key(msg, "extendedTextMessage")
                .and_then(|e| key(e, "text"))
                .and_then(Value::as_str)
        })
        .map(str::to_string)
}

/// The fingerprint of a listed message, from the same pieces
/// [`StatusBody::fingerprint`](crate::model::StatusBody::fingerprint) uses:
/// text = the text; image/video = media URL (or base64 `data`) + caption;
/// voice = media URL (or data). Media listed without the URL we posted
/// (`downloadMedia=false` gives `media: null`; with it, a URL on the
/// provider's own file server) has no comparable fingerprint: None.
fn listed_fingerprint(kind: Kind, m: &Value) -> Option<String> {
    if kind == Kind::Text {
        return listed_text(m).map(|t| fingerprint_of(kind, &[&t]));
    }
    let media = |k: &str| {
        m.get("media")
            .and_then(|x| x.get(k))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let url = media("url").or_else(|| media("data"))?;
    let body = m.get("body").and_then(Value::as_str).unwrap_or("");
    Some(match kind {
        Kind::Image | Kind::Video => fingerprint_of(kind, &[url, body]),
        _ => fingerprint_of(kind, &[url]),
    })
}

/// Each engine's listing item, from its documented shape (the WAHA source
/// files named in the module docs), read the same way.
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ID: &str = "3EB0C431D4E0A1B2C3D4E5";

    fn text_fp(t: &str) -> Option<String> {
        Some(fingerprint_of(Kind::Text, &[t]))
    }

    #[test]
    fn noweb_items_are_read_from_the_baileys_message() {
        // NOWEB: toWAMessage keeps Baileys' WAMessage in _data; no `type`.
        let text = json!({
            "id": format!("true_status@broadcast_{ID}"),
            "timestamp": 1_732_600_000,
            "fromMe": true,
            "body": "Fresh bread",
            "hasMedia": false,
            "media": null,
            "ack": 1,
            "_data": {
                "key": {"remoteJid": "status@broadcast", "fromMe": true, "id": ID},
                "message": {"extendedTextMessage": {"text": "Fresh bread", "backgroundArgb": 4281900079u32, "font": 1}},
                "messageTimestamp": 1_732_600_000
            }
        });
        let l = read_listed(&text);
        assert_eq!(l.id, ID);
        assert_eq!(l.from_me, Some(true));
        assert_eq!(l.kind, Some(Kind::Text));
        assert_eq!(l.fingerprint, text_fp("Fresh bread"));
        assert_eq!(l.at.unwrap().timestamp(), 1_732_600_000);
        // An image listed without downloaded media: its kind is known, its
        // content cannot be compared.
        let image = json!({
            "id": format!("true_status@broadcast_{ID}"),
            "timestamp": 1_732_600_000, "fromMe": true, "body": "Today", "hasMedia": true, "media": null,
            "_data": {"key": {"id": ID}, "message": {"messageContextInfo": {}, "imageMessage": {"caption": "Today", "mimetype": "image/jpeg", "url": "https://mmg.whatsapp.net/x"}}}
        });
        let l = read_listed(&image);
        assert_eq!(l.kind, Some(Kind::Image));
        assert_eq!(l.fingerprint, None);
        // A protocol message (a revoke): no content kind, unclassified.
        let revoke = json!({
            "id": format!("true_status@broadcast_{ID}"), "timestamp": 1, "fromMe": true, "body": "",
            "_data": {"message": {"protocolMessage": {"type": 0}}}
        });
        assert_eq!(read_listed(&revoke).kind, None);
    }

    #[test]
    fn gows_items_are_read_from_the_whatsmeow_message_in_either_case() {
        // GOWS: the id carries the participant suffix; _data.Message holds
        // whatsmeow's proto content.
        let item = json!({
            "id": format!("true_status@broadcast_{ID}_31612345678@c.us"),
            "timestamp": 1_732_600_000, "fromMe": true, "body": "Hi", "hasMedia": false,
            "_data": {"Info": {"ID": ID, "IsFromMe": true}, "Message": {"Conversation": "Hi"}}
        });
        let l = read_listed(&item);
        assert_eq!(l.id, ID);
        assert_eq!(l.kind, Some(Kind::Text));
        assert_eq!(l.fingerprint, text_fp("Hi"));
        let video = json!({
            "id": format!("true_status@broadcast_{ID}"), "timestamp": 1, "fromMe": true, "hasMedia": true, "media": null,
            "_data": {"Message": {"videoMessage": {"caption": "x"}}}
        });
        assert_eq!(read_listed(&video).kind, Some(Kind::Video));
        assert_eq!(read_listed(&video).fingerprint, None);
    }

    #[test]
    fn webjs_items_are_read_from_the_type_in_data() {
        let item = json!({
            "id": {"fromMe": true, "remote": "status@broadcast", "id": ID, "_serialized": format!("true_status@broadcast_{ID}")},
            "timestamp": 1_732_600_000, "body": "Hello",
            "_data": {"type": "chat", "body": "Hello"}
        });
        let l = read_listed(&item);
        assert_eq!(l.id, ID);
        assert_eq!(l.from_me, Some(true));
        assert_eq!(l.kind, Some(Kind::Text));
        assert_eq!(l.fingerprint, text_fp("Hello"));
        let voice = json!({"id": format!("true_status@broadcast_{ID}"), "timestamp": 1, "_data": {"type": "ptt"}});
        assert_eq!(read_listed(&voice).kind, Some(Kind::Voice));
        let sticker = json!({"id": format!("true_status@broadcast_{ID}"), "timestamp": 1, "_data": {"type": "sticker"}});
        assert_eq!(read_listed(&sticker).kind, None);
    }

    #[test]
    fn by_id_absence_is_only_the_documented_404() {
        let resp = |status: u16, body: &str| Exchange::Response {
            status,
            retry_after: None,
            body: Ok(body.into()),
        };
        assert_eq!(
            read_by_id(
                &resp(404, r#"{"statusCode":404,"message":"Message not found"}"#),
                ID
            ),
            ById::NotFound
        );
        for (status, body) in [
            (200, "null"),
            (200, "{}"),
            (200, "<html>"),
            (500, r#"{"message":"engine error"}"#),
        ] {
            assert!(
                matches!(read_by_id(&resp(status, body), ID), ById::Failed { .. }),
                "{status} {body}"
            );
        }
        assert_eq!(
            read_by_id(
                &resp(
                    200,
                    &json!({"id": format!("true_status@broadcast_{ID}"), "fromMe": true})
                        .to_string()
                ),
                ID
            ),
            ById::Found {
                provider_id: ID.into()
            }
        );
    }
}
