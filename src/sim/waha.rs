//! WAHA's own API surface, beside Wawp's on the same server and over the
//! same statuses: what self-hosting users run (`provider = "waha"`), and
//! what Wawp fronts.
//!
//! Paths and auth from `devlikeapro/waha`: `src/api/status.controller.ts`
//! (`api/:session/status/{text,image,voice,video,delete,new-message-id}`),
//! `src/api/chats.controller.ts` (`api/:session/chats/:chatId/messages`,
//! `…/messages/:messageId`, `GetChatMessagesQuery`: `limit` default 10,
//! `offset`, `downloadMedia` default true, `filter.fromMe`,
//! `filter.timestamp.gte|lte`), `src/api/sessions.controller.ts`
//! (`GET api/sessions/:session`), and the API-key guard (`X-Api-Key`;
//! <https://waha.devlike.pro/docs/how-to/security/>). Errors are NestJS
//! exceptions: `{statusCode, message, error}`; the working-session pipe's
//! 422 carries `{error, session, status, expected}`; an unhandled engine
//! error is a 500 with `{statusCode, timestamp, exception}`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde_json::json;

use super::engines::OWN_JID;
use super::knobs::SimEngine;
use super::server::{Answer, Call, Caller, ListQuery, Params, Refuse, Surface};
use super::state::Shared;
use crate::model::Kind;
use crate::wire::waha as wire;
use crate::wire::{field, SESSION_WORKING};

/// Adds WAHA's routes to the router.
pub(super) fn routes(mut r: Router<Arc<Shared>>) -> Router<Arc<Shared>> {
    for (path, kind) in wire::STATUS {
        r = r.route(
            path,
            post(move |call: WahaCall, body: Bytes| post_status(kind, call, body)),
        );
    }
    r.route(wire::DELETE, post(delete_status))
        .route(wire::NEW_MESSAGE_ID, get(new_message_id))
        .route(wire::CHAT_MESSAGES, get(chat_messages))
        .route(wire::CHAT_MESSAGE, get(chat_message))
        .route(wire::SESSION, get(session).put(update_session))
}

/// A call on WAHA's surface, with the path's parameters (`session`,
/// `chatId`, `messageId`): the caller is the session from the path, the
/// key from `X-Api-Key` (WAHA takes no key in the URL).
struct WahaCall {
    call: Call,
    path: HashMap<String, String>,
}

type WahaPath = Path<HashMap<String, String>>;

impl FromRequestParts<Arc<Shared>> for WahaCall {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, sh: &Arc<Shared>) -> Result<Self, Response> {
        let (call, Path(path)) = Call::extract(parts, sh, |Path(p): &WahaPath, h| {
            Caller::waha(p.get("session").cloned().unwrap_or_default(), h)
        })
        .await?;
        Ok(WahaCall { call, path })
    }
}

impl WahaCall {
    /// A path parameter (`chatId`, `messageId`).
    fn param(&self, name: &str) -> String {
        self.path.get(name).cloned().unwrap_or_default()
    }
}

/// An error in WAHA's envelope.
pub(super) fn error(status: StatusCode, r: &Refuse, message: &str, session: &str) -> Response {
    let body = match r {
        // The API-key guard's answer.
        Refuse::Unauthorized => json!({ "message": "Unauthorized", "statusCode": 401 }),
        // `WorkingSessionParam`'s UnprocessableEntityException.
        Refuse::SessionDown(status) => json!({
            "error": "Session status is not as expected. Try again later or restart the session",
            "session": session,
            "status": status,
            "expected": [SESSION_WORKING],
        }),
        // An unhandled engine error, as WAHA's exception filter shows it.
        Refuse::Engine(_) => json!({
            "statusCode": 500,
            "timestamp": Utc::now().to_rfc3339(),
            "exception": { "message": message, "name": "Error" },
        }),
        _ => json!({
            "statusCode": status.as_u16(),
            "message": message,
            "error": status.canonical_reason().unwrap_or(""),
        }),
    };
    (status, Json(body)).into_response()
}

async fn post_status(kind: Kind, w: WahaCall, body: Bytes) -> Answer {
    w.call.post(kind, &body).await
}

async fn delete_status(w: WahaCall, body: Bytes) -> Answer {
    w.call.delete(&body).await
}

async fn new_message_id(w: WahaCall) -> Answer {
    w.call.new_message_id().await
}

async fn chat_messages(w: WahaCall, Query(q): Params) -> Answer {
    let query = ListQuery::from_params(w.param(field::CHAT_ID), &q, true).map_err(|m| {
        let r = Refuse::BadRequest(m);
        r.render(Surface::Waha, w.call.sh.engine(), &w.call.caller.instance)
    })?;
    w.call.list(&query).await
}

async fn chat_message(w: WahaCall, Query(q): Params) -> Answer {
    let download = q.get(field::DOWNLOAD_MEDIA).is_none_or(|v| v != "false");
    let (chat, message) = (w.param(field::CHAT_ID), w.param(field::MESSAGE_ID));
    w.call.get_message(&chat, &message, download).await
}

/// `GET /api/sessions/{session}`: WAHA's `SessionInfo` (`name`, `status`,
/// `config`, `me` — null unless working — and `engine.engine`).
async fn session(w: WahaCall) -> Answer {
    let (sh, caller) = (&w.call.sh, &w.call.caller);
    let engine = sh.engine();
    sh.admit(&caller.instance, &caller.token)
        .map_err(|_| w.call.refuse(engine, Refuse::Unauthorized))?;
    let status = sh.session_status(&caller.instance);
    let me = (status == SESSION_WORKING)
        .then(|| json!({ "id": OWN_JID, "pushName": "statusd simulator" }));
    let mut engine_info = json!({ "engine": engine.waha_name() });
    if engine == SimEngine::Webjs {
        engine_info["WWebVersion"] = json!("2.3000.1017054665");
        engine_info["state"] = json!("CONNECTED");
    }
    Ok(Json(json!({
        "name": caller.instance,
        "status": status,
        "config": sh.session_config(&caller.instance),
        "me": me,
        "engine": engine_info,
    }))
    .into_response())
}

/// `PUT /api/sessions/{session}` (`SessionUpdateRequest`: `{config}`):
/// replaces the session's config — WAHA stops a running session, saves the
/// config and starts it again — and answers the session's info. Its
/// webhooks take effect: the status events go where they say.
async fn update_session(w: WahaCall, body: Bytes) -> Answer {
    let (sh, caller) = (&w.call.sh, &w.call.caller);
    let engine = sh.engine();
    sh.admit(&caller.instance, &caller.token)
        .map_err(|_| w.call.refuse(engine, Refuse::Unauthorized))?;
    let config = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) if v.get("config").is_none_or(|c| c.is_object() || c.is_null()) => {
            v["config"].clone()
        }
        _ => {
            let r = Refuse::BadRequest("body must be {\"config\": {…}}".into());
            return Err(w.call.refuse(engine, r));
        }
    };
    let config = if config.is_null() { json!({}) } else { config };
    sh.set_session_config(&caller.instance, config);
    session(w).await
}
