//! What a provider event proves: views of our statuses and their existence.
//! Pure functions over the event's JSON, so that the HTTP handler (which
//! decides what to store) and the processor (which applies it) agree.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

use crate::store::{Confirmation, ViewEvent};
use crate::wire::{bare_message_id, webhook as w, STATUS_CHAT};

/// Whether an event is one we use: a `message`, `message.any` or
/// `message.ack` about the status chat. Everything else is answered 200 and
/// dropped, so that the provider does not retry it.
pub fn is_used(event: &Value) -> bool {
    let Some(name) = event.get("event").and_then(Value::as_str) else {
        return false;
    };
    matches!(
        name,
        w::EVENT_MESSAGE | w::EVENT_MESSAGE_ANY | w::EVENT_MESSAGE_ACK
    ) && event.get("payload").is_some_and(about_status_chat)
}

/// The chat of a payload is the status broadcast list (by `from`, `to`,
/// or the serialized id).
fn about_status_chat(p: &Value) -> bool {
    let field = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("");
    field("from") == STATUS_CHAT
        || field("to") == STATUS_CHAT
        || field("id").contains(&format!("_{STATUS_CHAT}_"))
}

/// Our own message: `fromMe`, or a serialized id starting `true_`.
fn from_me(p: &Value) -> bool {
    match p.get("fromMe").and_then(Value::as_bool) {
        Some(b) => b,
        None => p
            .get("id")
            .and_then(Value::as_str)
            .is_some_and(|id| id.starts_with("true_")),
    }
}

/// The effects of one event.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Effects {
    pub views: Vec<ViewEvent>,
    pub confirmations: Vec<Confirmation>,
}

/// When the event happened: its envelope `timestamp` (ms) if plausible
/// (not after `received` by more than a minute, not a week before it),
/// else when it was received.
fn event_time(event: &Value, received: DateTime<Utc>) -> DateTime<Utc> {
    event
        .get("timestamp")
        .and_then(Value::as_i64)
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .filter(|t| {
            *t <= received + chrono::Duration::minutes(1)
                && *t >= received - chrono::Duration::days(7)
        })
        .unwrap_or(received)
}

/// What an accepted event proves. `instance` is the statusd instance whose
/// endpoint received it (the URL names it; the body's `session` is the
/// provider's name for it and not trusted for routing).
pub fn effects(instance: &str, event: &Value, received: DateTime<Utc>) -> Effects {
    let mut out = Effects::default();
    if !is_used(event) {
        return out;
    }
    let name = event.get("event").and_then(Value::as_str).unwrap_or("");
    let Some(p) = event.get("payload") else {
        return out;
    };
    // Only our own statuses: an ack or a copy of a contact's status is not
    // evidence about ours.
    if !from_me(p) {
        return out;
    }
    let Some(raw_id) = p.get("id").and_then(Value::as_str) else {
        return out;
    };
    let message_id = bare_message_id(raw_id).trim();
    if message_id.is_empty() || message_id == raw_id && raw_id.contains('@') {
        return out;
    }
    out.confirmations.push(Confirmation {
        message_id: message_id.to_string(),
        instance: instance.to_string(),
        event: name.to_string(),
    });
    if name == w::EVENT_MESSAGE_ACK {
        let viewer = p
            .get("participant")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| participant_suffix(raw_id));
        let level = p
            .get("ack")
            .and_then(Value::as_i64)
            .or_else(|| p.get("ackName").and_then(Value::as_str).and_then(ack_level));
        if let (Some(viewer), Some(level)) = (viewer.filter(|v| !v.trim().is_empty()), level) {
            out.views.push(ViewEvent {
                message_id: message_id.to_string(),
                viewer: viewer.trim().to_string(),
                instance: instance.to_string(),
                level: level.clamp(-1, 4) as i32,
                at: event_time(event, received),
            });
        }
    }
    out
}

/// Some engines append `_<participant>` to a status ack's serialized id.
fn participant_suffix(raw_id: &str) -> Option<String> {
    let rest = raw_id.strip_prefix("true_")?.strip_prefix(STATUS_CHAT)?;
    let mut parts = rest.trim_start_matches('_').splitn(2, '_');
    let _id = parts.next()?;
    parts.next().filter(|p| p.contains('@')).map(str::to_string)
}

fn ack_level(name: &str) -> Option<i64> {
    Some(match name {
        "ERROR" => -1,
        "PENDING" => 0,
        "SERVER" => 1,
        "DEVICE" => 2,
        "READ" => 3,
        "PLAYED" => 4,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at() -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_700_000_000_000).unwrap()
    }

    #[test]
    fn a_view_ack_is_a_view_and_a_confirmation() {
        let e = json!({"event": "message.ack", "session": "s", "timestamp": 1_699_999_999_000i64, "payload": {
            "id": "true_status@broadcast_3EB0AAAABBBBCCCCDDDD0000", "from": "status@broadcast",
            "to": "status@broadcast", "participant": "111@c.us", "fromMe": true, "ack": 3, "ackName": "READ"}});
        let fx = effects("main", &e, at());
        assert_eq!(fx.confirmations.len(), 1);
        assert_eq!(fx.confirmations[0].message_id, "3EB0AAAABBBBCCCCDDDD0000");
        assert_eq!(fx.views.len(), 1);
        assert_eq!(fx.views[0].viewer, "111@c.us");
        assert_eq!(fx.views[0].level, 3);
        assert_eq!(fx.views[0].at.timestamp_millis(), 1_699_999_999_000);
    }

    #[test]
    fn a_participant_suffix_names_the_viewer() {
        let e = json!({"event": "message.ack", "payload": {
            "id": "true_status@broadcast_3EB0AAAABBBBCCCCDDDD0000_222@lid", "to": "status@broadcast", "ackName": "PLAYED"}});
        let fx = effects("main", &e, at());
        assert_eq!(fx.views[0].message_id, "3EB0AAAABBBBCCCCDDDD0000");
        assert_eq!(fx.views[0].viewer, "222@lid");
        assert_eq!(fx.views[0].level, 4);
    }

    #[test]
    fn own_status_events_confirm_and_others_are_ignored() {
        let own = json!({"event": "message.any", "payload": {
            "id": "true_status@broadcast_3EB0AAAABBBBCCCCDDDD0000", "from": "status@broadcast", "fromMe": true}});
        assert_eq!(effects("main", &own, at()).confirmations.len(), 1);
        let theirs = json!({"event": "message", "payload": {
            "id": "false_status@broadcast_3EB0AAAABBBBCCCCDDDD0000_333@c.us", "from": "status@broadcast", "fromMe": false}});
        assert_eq!(effects("main", &theirs, at()), Effects::default());
        let chat = json!({"event": "message.any", "payload": {"id": "true_111@c.us_ABC", "from": "111@c.us", "fromMe": true}});
        assert!(!is_used(&chat));
        let other = json!({"event": "session.status", "payload": {"status": "WORKING"}});
        assert!(!is_used(&other));
    }
}
