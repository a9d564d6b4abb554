//! Wawp's endpoints (`/v2/…`), beside WAHA's (`waha.rs`) on the same server:
//! each names its caller the Wawp way and calls the shared `op_*`.

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::engines::OWN_JID;
use super::knobs::SimEngine;
use super::server::{
    admit, error, op_delete, op_get_message, op_list, op_new_message_id, op_post, Answer, Caller,
    Conn, Gate, ListQuery, Params, Sh,
};
use crate::model::Kind;
use crate::wire::field;

pub(super) async fn new_message_id(
    State(sh): Sh,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Query(q): Params,
    h: HeaderMap,
) -> Answer {
    op_new_message_id(&sh, &Caller::wawp(&q, &h), &conn).await
}

pub(super) async fn post_status(
    kind: Kind,
    State(sh): Sh,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Query(q): Params,
    h: HeaderMap,
    body: Bytes,
) -> Answer {
    op_post(kind, &sh, &Caller::wawp(&q, &h), &conn, &body).await
}

pub(super) async fn delete_status(
    State(sh): Sh,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Query(q): Params,
    h: HeaderMap,
    body: Bytes,
) -> Answer {
    op_delete(&sh, &Caller::wawp(&q, &h), &conn, &body).await
}

/// `chatId` and `messageId` from the JSON body, else from the query (the
/// docs show both).
pub(super) async fn get_message(
    State(sh): Sh,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Query(q): Params,
    h: HeaderMap,
    body: Bytes,
) -> Answer {
    let caller = Caller::wawp(&q, &h);
    let from_body = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
    let param = |k: &str| {
        from_body
            .get(k)
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .or_else(|| q.get(k).cloned())
    };
    let (Some(chat), Some(id)) = (param(field::CHAT_ID), param(field::MESSAGE_ID)) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "chatId and messageId are required",
        ));
    };
    let download = param(field::DOWNLOAD_MEDIA).is_none_or(|v| v != "false");
    op_get_message(&sh, &caller, &conn, &chat, &id, download).await
}

pub(super) async fn chat_messages(
    State(sh): Sh,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Query(q): Params,
    h: HeaderMap,
) -> Answer {
    let caller = Caller::wawp(&q, &h);
    let chat = q.get(field::CHAT_ID).cloned().unwrap_or_default();
    let query =
        ListQuery::from_params(chat, &q, false).map_err(|m| error(StatusCode::BAD_REQUEST, &m))?;
    op_list(&sh, &caller, &conn, &query).await
}

pub(super) async fn session_info(
    State(sh): Sh,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Query(q): Params,
    h: HeaderMap,
) -> Answer {
    let caller = Caller::wawp(&q, &h);
    let (engine, _) = admit(&sh, &caller, &conn, Gate::Read).await?;
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
