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

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde_json::json;

use super::engines::OWN_JID;
use super::knobs::SimEngine;
use super::server::{
    op_delete, op_get_message, op_list, op_new_message_id, op_post, Answer, Caller, Conn,
    ListQuery, Params, Refuse, Sh, Surface,
};
use super::state::Shared;
use crate::model::Kind;
use crate::wire::waha as wire;
use crate::wire::{field, SESSION_WORKING};

/// Adds WAHA's routes to the router.
pub(super) fn routes(mut r: Router<std::sync::Arc<Shared>>) -> Router<std::sync::Arc<Shared>> {
    for (path, kind) in wire::STATUS {
        r = r.route(
            path,
            post(
                move |sh: Sh,
                      conn: ConnectInfo<Conn>,
                      session: Path<String>,
                      h: HeaderMap,
                      body: Bytes| {
                    post_status(kind, sh, conn, session, h, body)
                },
            ),
        );
    }
    r.route(wire::DELETE, post(delete_status))
        .route(wire::NEW_MESSAGE_ID, get(new_message_id))
        .route(wire::CHAT_MESSAGES, get(chat_messages))
        .route(wire::CHAT_MESSAGE, get(chat_message))
        .route(wire::SESSION, get(session))
}

/// A WAHA caller: the session from the path, the key from `X-Api-Key`
/// (WAHA takes no key in the URL).
fn caller(session: String, h: &HeaderMap) -> Caller {
    Caller {
        surface: Surface::Waha,
        instance: session,
        token: h
            .get(wire::API_KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        host: super::server::host(h),
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

async fn post_status(
    kind: Kind,
    State(sh): Sh,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Path(session): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Answer {
    op_post(kind, &sh, &caller(session, &h), &conn, &body).await
}

async fn delete_status(
    State(sh): Sh,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Path(session): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Answer {
    op_delete(&sh, &caller(session, &h), &conn, &body).await
}

async fn new_message_id(
    State(sh): Sh,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Path(session): Path<String>,
    h: HeaderMap,
) -> Answer {
    op_new_message_id(&sh, &caller(session, &h), &conn).await
}

async fn chat_messages(
    State(sh): Sh,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Path((session, chat)): Path<(String, String)>,
    Query(q): Params,
    h: HeaderMap,
) -> Answer {
    let caller = caller(session, &h);
    let query = ListQuery::from_params(chat, &q, true).map_err(|m| {
        let r = Refuse::BadRequest(m);
        r.render(Surface::Waha, sh.engine(), &caller.instance)
    })?;
    op_list(&sh, &caller, &conn, &query).await
}

async fn chat_message(
    State(sh): Sh,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Path((session, chat, message)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    h: HeaderMap,
) -> Answer {
    let download = q.get(field::DOWNLOAD_MEDIA).is_none_or(|v| v != "false");
    op_get_message(&sh, &caller(session, &h), &conn, &chat, &message, download).await
}

/// `GET /api/sessions/{session}`: WAHA's `SessionInfo` (`name`, `status`,
/// `config`, `me` — null unless working — and `engine.engine`).
async fn session(State(sh): Sh, Path(session): Path<String>, h: HeaderMap) -> Answer {
    let caller = caller(session, &h);
    let engine = sh.engine();
    sh.admit(&caller.instance, &caller.token)
        .map_err(|_| Refuse::Unauthorized.render(Surface::Waha, engine, &caller.instance))?;
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
        "config": { "metadata": null, "webhooks": [] },
        "me": me,
        "engine": engine_info,
    }))
    .into_response())
}
