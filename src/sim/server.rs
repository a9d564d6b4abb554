//! The simulator's HTTP surface: the provider paths the client uses, plus
//! `/_sim/*` for tests and operators.
//!
//! Error bodies follow Wawp's `ErrorResponse` schema (`status`, `error`,
//! `message`; <https://www.api.wawp.net/api/docs/export?format=openapi>).
//! Message objects follow WAHA's (`id` serialized as
//! `true_status@broadcast_<id>`, `timestamp` in seconds, `fromMe`, `body`,
//! `hasMedia`, `media {url, mimetype}`).

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::state::{Committed, Fault, Plan, PostedStatus, Refusal, Shared};
use crate::model::{Kind, StatusBody};
use crate::wire::ids::local_message_id;
use crate::wire::{
    bare_message_id, field, paths, serialized_status_id, NOT_PROCESSED, SESSION_SCAN_QR_CODE,
    SESSION_WORKING, STATUS_CHAT,
};

type Sh = State<Arc<Shared>>;
type Params = Query<HashMap<String, String>>;
/// A provider endpoint's answer; `Err` is an answer given early (refused,
/// faulted before processing, bad request), and axum sends either.
type Answer = Result<Response, Response>;

/// The JID the simulated session is logged in as.
const OWN_JID: &str = "10000000000@c.us";

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, cancel: CancellationToken) {
    let app = router(shared);
    let result = axum::serve(
        SimListener { inner: listener },
        app.into_make_service_with_connect_info::<Conn>(),
    )
    .with_graceful_shutdown(cancel.cancelled_owned())
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "simulator server stopped with an error");
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let mut r = Router::new()
        .route(paths::NEW_MESSAGE_ID, get(new_message_id))
        .route(paths::DELETE, post(delete_status))
        .route(paths::GET_MESSAGE, get(get_message).post(get_message))
        .route(paths::CHAT_MESSAGES, get(chat_messages))
        .route(paths::SESSION_INFO, get(session_info).post(session_info))
        .route("/_sim/stats", get(sim_stats))
        .route("/_sim/config", get(sim_config).post(sim_set_config))
        .route("/_sim/reset", post(sim_reset))
        .route("/_sim/posted", get(sim_posted));
    for (path, kind) in paths::STATUS {
        r = r.route(
            path,
            post(
                move |sh: Sh, conn: ConnectInfo<Conn>, q: Params, body: Bytes| {
                    post_status(kind, sh, conn, q, body)
                },
            ),
        );
    }
    r.with_state(shared)
}

// ---------------------------------------------------------------------------
// Connections that can be dropped mid-exchange

/// Accepts TCP connections wrapped in [`SimStream`].
struct SimListener {
    inner: TcpListener,
}

impl axum::serve::Listener for SimListener {
    type Io = SimStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    // Latency of small responses matters more than throughput.
                    let _ = stream.set_nodelay(true);
                    return (
                        SimStream {
                            inner: stream,
                            dropped: Arc::new(AtomicBool::new(false)),
                        },
                        addr,
                    );
                }
                // E.g. too many open files: back off rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A TCP stream that fails every read and write once `dropped` is set, so
/// the server closes the connection instead of sending the response: the
/// "lost response".
struct SimStream {
    inner: TcpStream,
    dropped: Arc<AtomicBool>,
}

fn lost() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "simulated lost response")
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.dropped.load(Ordering::SeqCst) {
            return Poll::Ready(Err(lost()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.dropped.load(Ordering::SeqCst) {
            return Poll::Ready(Err(lost()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.dropped.load(Ordering::SeqCst) {
            return Poll::Ready(Err(lost()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The handler's grip on its connection.
#[derive(Clone)]
struct Conn(Arc<AtomicBool>);

impl Conn {
    /// Nothing more is sent on this connection; it is closed.
    fn drop_now(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Connected<IncomingStream<'_, SimListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, SimListener>) -> Self {
        Conn(stream.io().dropped.clone())
    }
}

// ---------------------------------------------------------------------------
// Helpers

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({
            "status": status.as_u16(),
            "error": status.canonical_reason().unwrap_or(""),
            "message": message,
        })),
    )
        .into_response()
}

fn refused(r: Refusal) -> Response {
    match r {
        Refusal::Unauthorized => error(
            StatusCode::UNAUTHORIZED,
            "invalid instance_id or access_token",
        ),
        Refusal::Disconnected => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Session status is not as expected: SCAN_QR_CODE, expected WORKING",
        ),
    }
}

fn not_processed(retry_after_secs: u64) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, retry_after_secs.to_string())],
        Json(json!({
            "status": 503,
            "error": "Service Unavailable",
            "code": NOT_PROCESSED,
            "message": "overloaded: the request was not processed",
        })),
    )
        .into_response()
}

/// Sleeps, or returns false at once when the simulator shuts down.
async fn sleep_unless_stopped(sh: &Shared, d: Duration) -> bool {
    if d.is_zero() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = sh.cancel.cancelled() => false,
    }
}

/// The kind of endpoint a request is for, which decides what is asked of
/// it before it is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    NewId,
    Post,
    Delete,
    Read,
}

impl Gate {
    /// Whether a random fault is drawn: posts and `new-message-id` only, so
    /// that look-ups always make progress.
    fn faults(self) -> bool {
        matches!(self, Gate::NewId | Gate::Post)
    }

    /// Whether a down WhatsApp session refuses the request: posts and
    /// deletes need the session; reads are answered from memory.
    fn needs_session(self) -> bool {
        matches!(self, Gate::Post | Gate::Delete)
    }
}

/// Auth check, latency and the session check, common to every provider
/// endpoint; answers the instance id and the plan for the request.
async fn admit(
    sh: &Shared,
    q: &HashMap<String, String>,
    conn: &Conn,
    gate: Gate,
) -> Result<(String, Plan), Response> {
    let instance = q.get(field::INSTANCE_ID).cloned().unwrap_or_default();
    let token = q.get(field::ACCESS_TOKEN).map(String::as_str).unwrap_or("");
    sh.admit(&instance, token).map_err(refused)?;
    let plan = sh.plan(gate.faults());
    if !sleep_unless_stopped(sh, plan.latency).await {
        conn.drop_now();
        return Err(error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"));
    }
    if gate.needs_session() && sh.disconnected(&instance) {
        sh.count_disconnected();
        return Err(refused(Refusal::Disconnected));
    }
    Ok((instance, plan))
}

/// Applies a fault drawn for *before* processing; `Err` is the answer.
async fn fault_before(sh: &Shared, plan: &Plan, conn: &Conn) -> Result<(), Response> {
    let Some(fault) = plan.fault else {
        return Ok(());
    };
    let answer = match fault {
        Fault::RateLimited => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, plan.retry_after_secs.to_string())],
            Json(json!({"status": 429, "error": "Too Many Requests", "message": "rate limit exceeded"})),
        )
            .into_response(),
        Fault::Error5xxBefore => not_processed(plan.retry_after_secs),
        Fault::Hang => {
            sh.count_fault(fault);
            if !sleep_unless_stopped(sh, plan.hang).await {
                conn.drop_now();
            }
            return Err(not_processed(plan.retry_after_secs));
        }
        _ => return Ok(()),
    };
    sh.count_fault(fault);
    Err(answer)
}

/// Applies a fault drawn for *after* processing to the success answer `ok`.
async fn fault_after(sh: &Shared, plan: &Plan, conn: &Conn, ok: Value) -> Response {
    let Some(fault) = plan.fault else {
        return Json(ok).into_response();
    };
    let answer = match fault {
        Fault::LostResponse => {
            conn.drop_now();
            Json(ok).into_response()
        }
        Fault::Error5xxAfter => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error after the request was processed",
        ),
        Fault::HangAfterCommit => {
            // Counted before the sleep: hyper drops this future when the
            // client gives up, so code after the sleep may never run.
            sh.count_fault(fault);
            if !sleep_unless_stopped(sh, plan.hang).await {
                conn.drop_now();
            }
            return Json(ok).into_response();
        }
        Fault::Malformed => {
            let text = ok.to_string();
            let cut: String = text.chars().take(text.chars().count() / 2).collect();
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                cut,
            )
                .into_response()
        }
        _ => return Json(ok).into_response(),
    };
    sh.count_fault(fault);
    answer
}

/// A status as a WAHA-style message of the `status@broadcast` chat.
fn message_json(s: &PostedStatus) -> Value {
    let b = &s.body;
    let text = |k: &str| b.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let (body, media) = match s.kind {
        Kind::Text => (text("text"), Value::Null),
        kind => {
            let f = b.get("file").cloned().unwrap_or(Value::Null);
            let media = json!({
                "url": f.get("url").cloned().unwrap_or(Value::Null),
                "data": f.get("data").cloned().unwrap_or(Value::Null),
                "mimetype": f.get("mimetype").cloned().unwrap_or(Value::Null),
                "filename": f.get("filename").cloned().unwrap_or(Value::Null),
            });
            let body = if kind == Kind::Voice {
                String::new()
            } else {
                text("caption")
            };
            (body, media)
        }
    };
    json!({
        "id": serialized_status_id(&s.id),
        "timestamp": s.posted_at.timestamp(),
        "from": OWN_JID,
        "fromMe": true,
        "to": STATUS_CHAT,
        "body": body,
        "hasMedia": s.kind != Kind::Text,
        "media": media,
        "ack": 1,
        "revoked": s.deleted,
    })
}

fn posted_answer(c: &Committed) -> Value {
    json!({
        "id": c.id,
        "timestamp": c.timestamp,
        "fromMe": true,
        "to": STATUS_CHAT,
    })
}

// ---------------------------------------------------------------------------
// Provider endpoints

async fn new_message_id(
    State(sh): Sh,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Query(q): Params,
) -> Answer {
    let (_, plan) = admit(&sh, &q, &conn, Gate::NewId).await?;
    fault_before(&sh, &plan, &conn).await?;
    let id = json!({ (field::ID): local_message_id() });
    Ok(fault_after(&sh, &plan, &conn, id).await)
}

async fn post_status(
    kind: Kind,
    State(sh): Sh,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Query(q): Params,
    body: Bytes,
) -> Answer {
    let (instance, plan) = admit(&sh, &q, &conn, Gate::Post).await?;
    fault_before(&sh, &plan, &conn).await?;
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(&body) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
        ));
    };
    let supplied = match obj.remove(field::ID) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        Some(_) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "id must be a non-empty string",
            ))
        }
    };
    let raw = Value::Object(obj);
    let parsed = StatusBody::parse(kind.as_str(), &raw.to_string())
        .map_err(|e| error(StatusCode::BAD_REQUEST, &e.to_string()))?;
    let committed = sh.commit(&instance, kind, &parsed, raw, supplied);
    Ok(fault_after(&sh, &plan, &conn, posted_answer(&committed)).await)
}

async fn delete_status(
    State(sh): Sh,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Query(q): Params,
    body: Bytes,
) -> Answer {
    let (instance, _) = admit(&sh, &q, &conn, Gate::Delete).await?;
    let id = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get(field::ID).and_then(Value::as_str).map(str::to_string));
    let Some(id) = id.filter(|i| !i.is_empty()) else {
        return Err(error(StatusCode::BAD_REQUEST, "id is required"));
    };
    let bare = bare_message_id(&id);
    if !sh.delete(&instance, bare) {
        return Err(error(StatusCode::NOT_FOUND, "status not found"));
    }
    Ok(Json(json!({ "id": bare, "deleted": true })).into_response())
}

/// `chatId` and `messageId` from the JSON body, else from the query (the
/// docs show both).
async fn get_message(
    State(sh): Sh,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Query(q): Params,
    body: Bytes,
) -> Answer {
    let (instance, _) = admit(&sh, &q, &conn, Gate::Read).await?;
    let from_body = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
    let param = |k: &str| {
        from_body
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| q.get(k).cloned())
    };
    let (Some(chat), Some(id)) = (param(field::CHAT_ID), param(field::MESSAGE_ID)) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "chatId and messageId are required",
        ));
    };
    let found = (chat == STATUS_CHAT)
        .then(|| sh.find(&instance, bare_message_id(&id)))
        .flatten();
    match found {
        Some(s) => Ok(Json(message_json(&s)).into_response()),
        None => Err(error(StatusCode::NOT_FOUND, "message not found")),
    }
}

async fn chat_messages(
    State(sh): Sh,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Query(q): Params,
) -> Answer {
    let (instance, _) = admit(&sh, &q, &conn, Gate::Read).await?;
    let num = |k: &str, d: usize| q.get(k).and_then(|v| v.parse::<usize>().ok()).unwrap_or(d);
    let limit = num(field::LIMIT, 100).min(1000);
    let offset = num(field::OFFSET, 0);
    if q.get(field::CHAT_ID).map(String::as_str) != Some(STATUS_CHAT) {
        return Ok(Json(json!([])).into_response());
    }
    let list: Vec<Value> = sh
        .list(&instance, offset, limit)
        .iter()
        .map(message_json)
        .collect();
    Ok(Json(Value::Array(list)).into_response())
}

async fn session_info(
    State(sh): Sh,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Query(q): Params,
) -> Answer {
    let (instance, _) = admit(&sh, &q, &conn, Gate::Read).await?;
    let status = if sh.disconnected(&instance) {
        SESSION_SCAN_QR_CODE
    } else {
        SESSION_WORKING
    };
    Ok(Json(json!({
        "name": instance,
        "status": status,
        "me": { "id": OWN_JID, "pushName": "statusd simulator" },
    }))
    .into_response())
}

// ---------------------------------------------------------------------------
// /_sim

async fn sim_stats(State(sh): Sh) -> Response {
    Json(sh.stats()).into_response()
}

async fn sim_posted(State(sh): Sh) -> Response {
    Json(sh.posted()).into_response()
}

async fn sim_config(State(sh): Sh) -> Response {
    Json(sh.config()).into_response()
}

/// Changes the knobs named in the JSON body; answers the new config.
async fn sim_set_config(State(sh): Sh, body: Bytes) -> Response {
    let patch = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("not JSON: {e}")),
    };
    match sh.patch_config(&patch) {
        Ok(c) => Json(c).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

async fn sim_reset(State(sh): Sh) -> Response {
    sh.reset();
    StatusCode::NO_CONTENT.into_response()
}
