//! What each engine answers: the JSON shapes of a post's answer, a
//! delete's answer and a listed message, per [`SimEngine`]. The engine
//! decides the shapes whichever surface (Wawp `/v2/…` or WAHA `/api/…`)
//! asked; the surface decides paths, auth and the error envelope
//! (`server.rs`, `waha.rs`).
//!
//! Sources, all in `devlikeapro/waha`:
//! - NOWEB: `src/core/engines/noweb/session.noweb.core.ts`
//!   (`sendTextStatus` → `sendStatusMessage` returns Baileys'
//!   `sock.sendMessage` result, a `proto.WebMessageInfo`: `key {remoteJid,
//!   fromMe, id}`, `message`, `messageTimestamp`, `status`; the same shape
//!   is in Evolution API's docs of its Baileys status send,
//!   `EvolutionAPI/evolution-docs` `send-status_stories-text_url.md`).
//! - GOWS: `src/core/engines/gows/session.gows.core.ts` (`messageResponse`:
//!   `{id: buildMessageId({ID, IsFromMe: true, IsGroup: true for a
//!   broadcast, Chat, Sender: me.id}), _data: message}`, hence
//!   `true_status@broadcast_<ID>_<me>`).
//! - WEBJS: `src/core/engines/webjs/session.webjs.core.ts` /
//!   `WebjsClientCore.ts` (`sendTextStatus` ignores `id` and answers
//!   `myStatus.msgs.last()` as a whatsapp-web.js `Message`, or `undefined`
//!   — an empty body — when there is none).
//! - Listed messages: `src/structures/message.dto.ts` (`WAMessage`: `id`,
//!   `timestamp`, `from`, `fromMe`, `source`, `to`, `participant`, `body`,
//!   `hasMedia`, `media` — null unless downloaded — `ack`, `ackName`,
//!   `_data`, the engine's raw message; no top-level `type`).
//!
//! Wawp documents "200 with { id }" and no schema
//! (<https://api.wawp.net/en/docs/v2/status/new-message-id>); our model of
//! Wawp answers a post with `{id, timestamp, fromMe, to}`, bare id, unwrapped,
//! and lists messages in WAHA's `WAMessage` shape with NOWEB's `_data` (the
//! docs name no engine; NOWEB's is the shape other Baileys fronts show).

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use super::knobs::SimEngine;
use super::state::{ContactStatus, Listed, PostedStatus, CONTACT_JID};
use crate::model::Kind;
use crate::wire::{serialized_status_id, STATUS_CHAT};

/// The JID the simulated session is logged in as.
pub const OWN_JID: &str = "10000000000@c.us";

/// `true_status@broadcast_<id>` or, where the engine appends the sender,
/// `true_status@broadcast_<id>_<me>`.
pub fn serialized_id(engine: SimEngine, id: &str) -> String {
    match engine {
        SimEngine::Wawp | SimEngine::Noweb => serialized_status_id(id),
        SimEngine::Gows | SimEngine::Webjs => format!("{}_{OWN_JID}", serialized_status_id(id)),
    }
}

/// The answer to a post of `posted`; `latest` is the instance's newest own
/// status when the answer is made (what WEBJS answers with). `None`: an
/// empty 200 body.
pub fn send_answer(
    engine: SimEngine,
    posted: &PostedStatus,
    latest: Option<&PostedStatus>,
) -> Option<Value> {
    Some(match engine {
        SimEngine::Wawp => json!({
            "id": posted.id,
            "timestamp": posted.posted_at.timestamp(),
            "fromMe": true,
            "to": STATUS_CHAT,
        }),
        SimEngine::Noweb => baileys_web_message(&posted.id, raw_message(posted), posted.posted_at),
        SimEngine::Gows => json!({
            "id": serialized_id(engine, &posted.id),
            "_data": raw_message(posted),
        }),
        SimEngine::Webjs => webjs_message(latest?),
    })
}

/// The answer to a delete of status `status_id`: the revoke is a message
/// of its own with its own id, `revoke_id` (NOWEB and GOWS answer the
/// revoke message, not the status). WEBJS never gets here (501).
pub fn delete_answer(engine: SimEngine, status_id: &str, revoke_id: &str) -> Value {
    let revoke = json!({
        "protocolMessage": {
            "key": { "remoteJid": STATUS_CHAT, "fromMe": true, "id": status_id },
            "type": "REVOKE",
        }
    });
    match engine {
        SimEngine::Wawp => json!({ "id": status_id, "deleted": true }),
        SimEngine::Noweb => baileys_web_message(revoke_id, revoke, Utc::now()),
        SimEngine::Gows | SimEngine::Webjs => json!({
            "id": serialized_id(engine, revoke_id),
            "_data": revoke,
        }),
    }
}

/// A listed (or looked-up) message in WAHA's `WAMessage` shape, `_data`
/// in the engine's. `media_base` is the simulator's own URL when the
/// caller asked for `downloadMedia`: media then points at the provider's
/// file server (never at the URL that was posted); otherwise `media` is
/// null.
pub fn message(engine: SimEngine, item: &Listed, session: &str, media_base: Option<&str>) -> Value {
    match item {
        Listed::Own(s) => own_message(engine, s, session, media_base),
        Listed::Contact(c) => contact_message(engine, c),
    }
}

fn own_message(
    engine: SimEngine,
    s: &PostedStatus,
    session: &str,
    media_base: Option<&str>,
) -> Value {
    let id = serialized_id(engine, &s.id);
    let has_media = s.kind != Kind::Text;
    let media = match media_base {
        Some(base) if has_media => json!({
            "url": format!("{base}/api/files/{session}/{id}.{}", extension(s.kind)),
            "mimetype": mimetype(s),
            "filename": Value::Null,
            "error": Value::Null,
        }),
        _ => Value::Null,
    };
    let participant = match engine {
        SimEngine::Gows | SimEngine::Webjs => json!(OWN_JID),
        _ => Value::Null,
    };
    json!({
        "id": id,
        "timestamp": s.posted_at.timestamp(),
        "from": OWN_JID,
        "fromMe": true,
        "source": "api",
        "to": STATUS_CHAT,
        "participant": participant,
        "body": body_text(s),
        "hasMedia": has_media,
        "media": media,
        "ack": 1,
        "ackName": "SERVER",
        "replyTo": Value::Null,
        "_data": raw_data(engine, s),
    })
}

fn contact_message(engine: SimEngine, c: &ContactStatus) -> Value {
    let id = format!("false_{STATUS_CHAT}_{}_{}", c.id, c.from);
    let raw = json!({ "extendedTextMessage": { "text": c.text } });
    let data = match engine {
        SimEngine::Gows => json!({
            "Info": {
                "ID": c.id, "Chat": STATUS_CHAT, "Sender": c.from, "IsFromMe": false,
                "Timestamp": rfc3339(c.posted_at), "Type": "text", "MediaType": "",
            },
            "Message": raw,
        }),
        SimEngine::Webjs => json!({
            "id": { "fromMe": false, "remote": STATUS_CHAT, "id": c.id,
                    "participant": c.from, "_serialized": id },
            "type": "chat", "body": c.text, "t": c.posted_at.timestamp(),
            "from": STATUS_CHAT, "author": c.from, "isStatusV3": true,
        }),
        SimEngine::Wawp | SimEngine::Noweb => json!({
            "key": { "remoteJid": STATUS_CHAT, "fromMe": false, "id": c.id, "participant": CONTACT_JID },
            "message": raw,
            "messageTimestamp": c.posted_at.timestamp(),
        }),
    };
    json!({
        "id": id,
        "timestamp": c.posted_at.timestamp(),
        "from": STATUS_CHAT,
        "fromMe": false,
        "to": OWN_JID,
        "participant": c.from,
        "body": c.text,
        "hasMedia": false,
        "media": Value::Null,
        "ack": 3,
        "ackName": "READ",
        "replyTo": Value::Null,
        "_data": data,
    })
}

/// The engine's raw message, as `_data` of a listed message.
fn raw_data(engine: SimEngine, s: &PostedStatus) -> Value {
    match engine {
        // Baileys' `proto.WebMessageInfo`.
        SimEngine::Wawp | SimEngine::Noweb => json!({
            "key": { "remoteJid": STATUS_CHAT, "fromMe": true, "id": s.id },
            "message": raw_message(s),
            "messageTimestamp": s.posted_at.timestamp(),
            "status": 2,
        }),
        // whatsmeow's `events.Message`: `Info` and the `Message` proto.
        SimEngine::Gows => json!({
            "Info": {
                "ID": s.id,
                "Chat": STATUS_CHAT,
                "Sender": OWN_JID,
                "IsFromMe": true,
                "IsGroup": false,
                "Timestamp": rfc3339(s.posted_at),
                "Type": if s.kind == Kind::Text { "text" } else { "media" },
                "MediaType": match s.kind {
                    Kind::Text => "",
                    Kind::Image => "image",
                    Kind::Voice => "ptt",
                    Kind::Video => "video",
                },
            },
            "Message": raw_message(s),
        }),
        // whatsapp-web.js's message model.
        SimEngine::Webjs => webjs_data(s),
    }
}

/// The message proto (Baileys and whatsmeow share WhatsApp's field
/// names): `extendedTextMessage` for a text status (it carries the
/// background and font), `imageMessage`, `audioMessage` (ptt),
/// `videoMessage`. Media URLs are WhatsApp's CDN, never the posted URL.
fn raw_message(s: &PostedStatus) -> Value {
    let cdn = format!("https://mmg.whatsapp.net/v/t62.7118-24/{}.enc", s.id);
    match s.kind {
        Kind::Text => {
            let mut m = json!({ "text": text(&s.body, "text") });
            if let Some(argb) = s
                .body
                .get("backgroundColor")
                .and_then(Value::as_str)
                .and_then(argb)
            {
                m["backgroundArgb"] = json!(argb);
            }
            if let Some(font) = s.body.get("font").and_then(Value::as_i64) {
                m["font"] = json!(font);
            }
            json!({ "extendedTextMessage": m })
        }
        Kind::Image => json!({ "imageMessage": {
            "url": cdn, "mimetype": mimetype(s), "caption": text(&s.body, "caption"),
        }}),
        Kind::Voice => json!({ "audioMessage": {
            "url": cdn, "mimetype": mimetype(s), "ptt": true,
        }}),
        Kind::Video => json!({ "videoMessage": {
            "url": cdn, "mimetype": mimetype(s), "caption": text(&s.body, "caption"),
        }}),
    }
}

/// Baileys' `proto.WebMessageInfo` of a message we sent, as NOWEB answers
/// a send (`messageTimestamp` a string: a protobuf Long).
fn baileys_web_message(id: &str, message: Value, at: DateTime<Utc>) -> Value {
    json!({
        "key": { "remoteJid": STATUS_CHAT, "fromMe": true, "id": id },
        "message": message,
        "messageTimestamp": at.timestamp().to_string(),
        "status": "PENDING",
    })
}

/// whatsapp-web.js's `Message` as WAHA serializes it (WEBJS's answer to a
/// post): `id` is an object whose `_serialized` carries the full id.
fn webjs_message(s: &PostedStatus) -> Value {
    let data = webjs_data(s);
    json!({
        "_data": data.clone(),
        "id": data["id"].clone(),
        "ack": 0,
        "hasMedia": s.kind != Kind::Text,
        "body": body_text(s),
        "type": data["type"].clone(),
        "timestamp": s.posted_at.timestamp(),
        "from": OWN_JID,
        "to": STATUS_CHAT,
        "isStatus": true,
        "isForwarded": false,
        "fromMe": true,
    })
}

fn webjs_data(s: &PostedStatus) -> Value {
    let kind = match s.kind {
        Kind::Text => "chat",
        Kind::Image => "image",
        Kind::Voice => "ptt",
        Kind::Video => "video",
    };
    let mut d = json!({
        "id": {
            "fromMe": true,
            "remote": STATUS_CHAT,
            "id": s.id,
            "participant": OWN_JID,
            "_serialized": serialized_id(SimEngine::Webjs, &s.id),
        },
        "type": kind,
        "body": body_text(s),
        "t": s.posted_at.timestamp(),
        "from": OWN_JID,
        "to": STATUS_CHAT,
        "isStatusV3": true,
    });
    if s.kind != Kind::Text {
        d["mimetype"] = json!(mimetype(s));
        d["caption"] = json!(text(&s.body, "caption"));
    }
    d
}

/// `body` of a listed message: the text, or a media status's caption.
fn body_text(s: &PostedStatus) -> String {
    match s.kind {
        Kind::Text => text(&s.body, "text"),
        Kind::Voice => String::new(),
        Kind::Image | Kind::Video => text(&s.body, "caption"),
    }
}

fn text(body: &Value, key: &str) -> String {
    body.get(key)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn mimetype(s: &PostedStatus) -> String {
    let posted = s
        .body
        .get("file")
        .and_then(|f| f.get("mimetype"))
        .and_then(Value::as_str);
    posted
        .unwrap_or(match s.kind {
            Kind::Image => "image/jpeg",
            Kind::Voice => "audio/ogg; codecs=opus",
            Kind::Video => "video/mp4",
            Kind::Text => "",
        })
        .to_string()
}

fn extension(kind: Kind) -> &'static str {
    match kind {
        Kind::Image => "jpeg",
        Kind::Voice => "oga",
        Kind::Video => "mp4",
        Kind::Text => "txt",
    }
}

/// `#RRGGBB` as the opaque ARGB number WhatsApp carries.
fn argb(hex: &str) -> Option<u32> {
    let h = hex.strip_prefix('#')?;
    if h.len() != 6 {
        return None;
    }
    u32::from_str_radix(h, 16).ok().map(|rgb| 0xFF00_0000 | rgb)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::bare_message_id;

    fn status(kind: Kind, body: Value) -> PostedStatus {
        PostedStatus {
            id: "3EB0A1B2C3D4E5F6A7B8C9".into(),
            supplied_id: None,
            instance: "i".into(),
            kind,
            fingerprint: "f".into(),
            body,
            posted_at: DateTime::from_timestamp(1_764_000_000, 0).expect("time"),
            deleted: false,
        }
    }

    fn text_status() -> PostedStatus {
        status(
            Kind::Text,
            json!({"text": "hello", "backgroundColor": "#38b42f", "font": 1}),
        )
    }

    #[test]
    fn noweb_answers_a_post_with_baileys_key() {
        let s = text_status();
        let a = send_answer(SimEngine::Noweb, &s, Some(&s)).expect("a body");
        assert_eq!(a["key"]["remoteJid"], "status@broadcast");
        assert_eq!(a["key"]["fromMe"], true);
        assert_eq!(a["key"]["id"], s.id);
        assert_eq!(a["message"]["extendedTextMessage"]["text"], "hello");
        assert_eq!(
            a["message"]["extendedTextMessage"]["backgroundArgb"],
            0xFF38_B42F_u32
        );
        assert!(a.get("id").is_none(), "no top-level id on NOWEB: {a}");
    }

    #[test]
    fn gows_answers_with_the_participant_suffixed_serialized_id() {
        let s = text_status();
        let a = send_answer(SimEngine::Gows, &s, Some(&s)).expect("a body");
        assert_eq!(
            a["id"],
            format!("true_status@broadcast_{}_10000000000@c.us", s.id)
        );
        assert_eq!(bare_message_id(a["id"].as_str().expect("id")), s.id);
        assert!(a["_data"]["extendedTextMessage"].is_object());
    }

    #[test]
    fn webjs_answers_with_the_latest_status_or_nothing() {
        let mine = text_status();
        let mut other = text_status();
        other.id = "3EB0FFFFFFFFFFFFFFFFFF".into();
        let a = send_answer(SimEngine::Webjs, &mine, Some(&other)).expect("a body");
        assert_eq!(a["id"]["id"], other.id, "the latest, not the one posted");
        assert_eq!(
            a["id"]["_serialized"],
            serialized_id(SimEngine::Webjs, &other.id)
        );
        assert_eq!(a["type"], "chat");
        assert!(send_answer(SimEngine::Webjs, &mine, None).is_none());
    }

    #[test]
    fn wawp_answers_a_bare_id() {
        let s = text_status();
        let a = send_answer(SimEngine::Wawp, &s, None).expect("a body");
        assert_eq!(a["id"], s.id);
    }

    #[test]
    fn listed_messages_have_no_type_and_no_media_unless_downloaded() {
        let img = status(
            Kind::Image,
            json!({"file": {"url": "https://cdn.example.com/a.jpg", "mimetype": "image/jpeg"}, "caption": "menu"}),
        );
        for engine in SimEngine::ALL {
            let m = message(engine, &Listed::Own(img.clone()), "default", None);
            assert!(m.get("type").is_none(), "{engine}: {m}");
            assert_eq!(m["media"], Value::Null, "{engine}");
            assert_eq!(m["hasMedia"], true);
            assert_eq!(m["fromMe"], true);
            assert_eq!(m["body"], "menu");
            assert_eq!(bare_message_id(m["id"].as_str().expect("id")), img.id);
            let downloaded = message(
                engine,
                &Listed::Own(img.clone()),
                "default",
                Some("http://127.0.0.1:1"),
            );
            let url = downloaded["media"]["url"].as_str().expect("url");
            assert!(
                url.starts_with("http://127.0.0.1:1/api/files/default/"),
                "{url}"
            );
            assert!(!url.contains("cdn.example.com"));
        }
    }

    #[test]
    fn raw_data_tells_the_kind_per_engine() {
        let voice = status(
            Kind::Voice,
            json!({"file": {"url": "https://cdn.example.com/v.opus", "mimetype": "audio/ogg; codecs=opus"}}),
        );
        let noweb = message(SimEngine::Noweb, &Listed::Own(voice.clone()), "s", None);
        assert_eq!(noweb["_data"]["message"]["audioMessage"]["ptt"], true);
        let gows = message(SimEngine::Gows, &Listed::Own(voice.clone()), "s", None);
        assert!(gows["_data"]["Message"]["audioMessage"].is_object());
        assert_eq!(gows["_data"]["Info"]["MediaType"], "ptt");
        let webjs = message(SimEngine::Webjs, &Listed::Own(voice), "s", None);
        assert_eq!(webjs["_data"]["type"], "ptt");
    }

    #[test]
    fn a_delete_answers_the_revoke_message_not_the_status() {
        let a = delete_answer(SimEngine::Noweb, "3EB0STATUS", "3EB0REVOKE");
        assert_eq!(a["key"]["id"], "3EB0REVOKE");
        assert_eq!(a["message"]["protocolMessage"]["key"]["id"], "3EB0STATUS");
        let g = delete_answer(SimEngine::Gows, "3EB0STATUS", "3EB0REVOKE");
        assert_eq!(bare_message_id(g["id"].as_str().expect("id")), "3EB0REVOKE");
    }

    #[test]
    fn contact_statuses_are_not_from_me() {
        let c = ContactStatus {
            id: "3EB0C0".into(),
            from: CONTACT_JID.into(),
            text: "theirs".into(),
            posted_at: Utc::now(),
        };
        for engine in SimEngine::ALL {
            let m = message(engine, &Listed::Contact(c.clone()), "s", None);
            assert_eq!(m["fromMe"], false, "{engine}");
            assert!(m["id"].as_str().expect("id").starts_with("false_"));
        }
    }
}
