//! Wawp's endpoints (`/v2/…`), beside WAHA's (`waha.rs`) on the same server:
//! each names its caller the Wawp way ([`WawpCall`]) and calls the
//! shared operations ([`Call`]'s methods).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::engines::OWN_JID;
use super::knobs::SimEngine;
use super::server::{error, Answer, Call, Caller, Gate, ListQuery, Params};
use super::state::Shared;
use crate::model::Kind;
use crate::wire::field;

/// A call on Wawp's surface, with its query parameters: the caller is named
/// by `instance_id` and the token ([`Caller::wawp`]).
pub(super) struct WawpCall {
    call: Call,
    q: HashMap<String, String>,
}

impl FromRequestParts<Arc<Shared>> for WawpCall {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, sh: &Arc<Shared>) -> Result<Self, Response> {
        let (call, Query(q)) =
            Call::extract(parts, sh, |Query(q): &Params, h| Caller::wawp(q, h)).await?;
        Ok(WawpCall { call, q })
    }
}

pub(super) async fn new_message_id(w: WawpCall) -> Answer {
    w.call.new_message_id().await
}

pub(super) async fn post_status(kind: Kind, w: WawpCall, body: Bytes) -> Answer {
    w.call.post(kind, &body).await
}

pub(super) async fn delete_status(w: WawpCall, body: Bytes) -> Answer {
    w.call.delete(&body).await
}

/// `chatId` and `messageId` from the JSON body, else from the query (the
/// docs show both).
pub(super) async fn get_message(w: WawpCall, body: Bytes) -> Answer {
    let from_body = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
    let param = |k: &str| {
        from_body
            .get(k)
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .or_else(|| w.q.get(k).cloned())
    };
    let (Some(chat), Some(id)) = (param(field::CHAT_ID), param(field::MESSAGE_ID)) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "chatId and messageId are required",
        ));
    };
    let download = param(field::DOWNLOAD_MEDIA).is_none_or(|v| v != "false");
    w.call.get_message(&chat, &id, download).await
}

pub(super) async fn chat_messages(w: WawpCall) -> Answer {
    let chat = w.q.get(field::CHAT_ID).cloned().unwrap_or_default();
    let query = ListQuery::from_params(chat, &w.q, false)
        .map_err(|m| error(StatusCode::BAD_REQUEST, &m))?;
    w.call.list(&query).await
}

pub(super) async fn session_info(w: WawpCall) -> Answer {
    let (engine, _) = w.call.admit(Gate::Read).await?;
    let (sh, caller) = (&w.call.sh, &w.call.caller);
    let mut info = json!({
        "name": caller.instance,
        "status": sh.session_status(&caller.instance),
        "me": { "id": OWN_JID, "pushName": "statusd simulator" },
    });
    // Wawp names no engine; a Wawp front of a WAHA engine passes WAHA's
    // `engine` object through.
    if engine != SimEngine::Wawp {
        info["engine"] = json!({ "engine": engine.waha_name() });
    }
    Ok(Json(info).into_response())
}

/// `POST /v2/webhook/set` (`{url, events, is_active, retries, hmac}`): the
/// instance's webhook, added or updated in place; an active one asking for
/// the status events gets them (signed, as WAHA signs, with `hmac` as the
/// key). Answers the webhook without its `hmac`.
pub(super) async fn webhook_set(w: WawpCall, body: Bytes) -> Answer {
    w.call.admit(Gate::Read).await?;
    let hook: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(url) = hook["url"].as_str().filter(|u| !u.is_empty()) else {
        return Err(error(StatusCode::BAD_REQUEST, "url is required"));
    };
    if !hook["events"].is_array() {
        return Err(error(StatusCode::BAD_REQUEST, "events must be an array"));
    }
    let active = match &hook["is_active"] {
        Value::Null => true,
        Value::Bool(b) => *b,
        v => v.as_i64() != Some(0),
    };
    let target = active
        .then(|| super::webhooks::target_of(&hook, hook["hmac"].as_str()))
        .flatten();
    w.call.sh.set_webhook(&w.call.caller.instance, target);
    Ok(Json(json!({
        "success": true,
        "webhook": { "url": url, "events": hook["events"], "is_active": active },
    }))
    .into_response())
}
