//! The simulator's HTTP surfaces: Wawp's (`/v2/…`, token in the
//! `access_token` query parameter or the `access-token` header) and WAHA's
//! (`/api/…`, in `waha.rs`), both over the same statuses, plus `/_sim/*`
//! for tests and operators (the exactly-once oracle).
//!
//! The endpoints of both surfaces share one implementation per operation
//! (`op_*` below): auth, latency, the session check, faults, holds, the
//! engine's answer. The surface decides how the caller is named and how
//! an error is enveloped: Wawp's `ErrorResponse` schema (`status`,
//! `error`, `message`; <https://www.api.wawp.net/api/docs/export?format=openapi>)
//! or WAHA's NestJS one (`statusCode`, `message`, `error`). The engine
//! decides the shapes of the answers (`engines.rs`). Wawp's handlers are in
//! `wawp.rs`; the connections that can be dropped mid-exchange in `conn.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub(super) use super::conn::Conn;
use super::conn::SimListener;
use super::engines;
use super::knobs::SimEngine;
use super::state::{Fault, ListFilter, Listed, Plan, Refusal, Shared};
use super::waha;
use super::wawp::{
    chat_messages, delete_status, get_message, new_message_id, post_status, session_info,
    webhook_set, WawpCall,
};
use crate::model::{Kind, StatusBody};
use crate::wire::{
    bare_message_id, field, paths, waha as waha_wire, MESSAGE_NOT_FOUND, NOT_PROCESSED, STATUS_CHAT,
};

pub(super) type Sh = State<Arc<Shared>>;
pub(super) type Params = Query<HashMap<String, String>>;
/// A provider endpoint's answer; `Err` is an answer given early (refused,
/// faulted before processing, bad request), and axum sends either.
pub(super) type Answer = Result<Response, Response>;

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
        .route(paths::WEBHOOK_SET, post(webhook_set))
        .route("/_sim/stats", get(sim_stats))
        .route("/_sim/config", get(sim_config).post(sim_set_config))
        .route("/_sim/reset", post(sim_reset))
        .route("/_sim/posted", get(sim_posted));
    for (path, kind) in paths::STATUS {
        r = r.route(
            path,
            post(move |call: WawpCall, body: Bytes| post_status(kind, call, body)),
        );
    }
    waha::routes(r).with_state(shared)
}

// ---------------------------------------------------------------------------
// Callers, errors and their envelopes

/// Which API a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Surface {
    Wawp,
    Waha,
}

/// Who asks: the instance (Wawp `instance_id`, WAHA session name), the
/// token or API key as given, and the `Host` the request was sent to (for
/// the URLs of downloaded media).
#[derive(Debug, Clone)]
pub(super) struct Caller {
    pub surface: Surface,
    pub instance: String,
    pub token: String,
    pub host: String,
}

impl Caller {
    /// A Wawp caller: `instance_id` from the query; the token from the
    /// `access-token` header, else the `access_token` query parameter.
    pub(super) fn wawp(q: &HashMap<String, String>, h: &HeaderMap) -> Caller {
        let header_token = h
            .get(field::ACCESS_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.is_empty());
        Caller {
            surface: Surface::Wawp,
            instance: q.get(field::INSTANCE_ID).cloned().unwrap_or_default(),
            token: header_token
                .map(str::to_string)
                .or_else(|| q.get(field::ACCESS_TOKEN).cloned())
                .unwrap_or_default(),
            host: host(h),
        }
    }

    /// A WAHA caller: the session from the path, the key from `X-Api-Key`
    /// (WAHA takes no key in the URL).
    pub(super) fn waha(session: String, h: &HeaderMap) -> Caller {
        Caller {
            surface: Surface::Waha,
            instance: session,
            token: h
                .get(waha_wire::API_KEY_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
            host: host(h),
        }
    }
}

/// One call of a provider endpoint: the simulator, who asks (named the
/// way of the surface it came through) and the connection, which a fault
/// may drop. The operations below are its methods, shared by both surfaces.
pub(super) struct Call {
    pub sh: Arc<Shared>,
    pub caller: Caller,
    pub conn: Conn,
}

impl Call {
    /// The call of a request and `E`, what names its caller (the query, the
    /// path), made into the caller by `caller` with the headers.
    pub(super) async fn extract<E>(
        parts: &mut Parts,
        sh: &Arc<Shared>,
        caller: impl FnOnce(&E, &HeaderMap) -> Caller,
    ) -> Result<(Call, E), Response>
    where
        E: FromRequestParts<Arc<Shared>> + Send,
    {
        let (e, ConnectInfo(conn)) =
            <(E, ConnectInfo<Conn>)>::from_request_parts(parts, sh).await?;
        let caller = caller(&e, &parts.headers);
        let call = Call {
            sh: sh.clone(),
            caller,
            conn,
        };
        Ok((call, e))
    }

    /// `r` in the caller's surface's envelope.
    pub(super) fn refuse(&self, engine: SimEngine, r: Refuse) -> Response {
        r.render(self.caller.surface, engine, &self.caller.instance)
    }
}

/// The `Host` header, or a placeholder.
pub(super) fn host(h: &HeaderMap) -> String {
    h.get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost")
        .to_string()
}

/// A documented error of the provider, rendered in the caller's surface's
/// envelope.
#[derive(Debug, Clone)]
pub(super) enum Refuse {
    Unauthorized,
    /// The session is not `WORKING` (its status given): WAHA's 422.
    SessionDown(&'static str),
    /// 404 `Message not found`.
    NotFound,
    /// 501: the engine does not implement the call; nothing was done.
    NotImplemented(&'static str),
    /// 500: an engine error (whatsapp-web.js evaluation, GOWS gRPC).
    Engine(String),
    /// 400 naming what is wrong.
    BadRequest(String),
    /// 400: NOWEB without its store cannot read chats.
    StoreDisabled,
}

/// NOWEB's message when its store is off (`NowebInMemoryStore.errorMessage`
/// in devlikeapro/waha, thrown as `BadRequestException` by every store read).
const STORE_DISABLED: &str = "Enable NOWEB store \"config.noweb.store.enabled=True\" and \"config.noweb.store.full_sync=True\" when starting a new session. Read more: https://waha.devlike.pro/docs/engines/noweb#store";

impl Refuse {
    fn status(&self) -> StatusCode {
        match self {
            Refuse::Unauthorized => StatusCode::UNAUTHORIZED,
            Refuse::SessionDown(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Refuse::NotFound => StatusCode::NOT_FOUND,
            Refuse::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Refuse::Engine(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Refuse::BadRequest(_) | Refuse::StoreDisabled => StatusCode::BAD_REQUEST,
        }
    }

    fn message(&self, engine: SimEngine) -> String {
        match self {
            Refuse::Unauthorized => "invalid instance_id or access_token".into(),
            Refuse::SessionDown(status) => {
                format!("Session status is not as expected: {status}, expected WORKING")
            }
            Refuse::NotFound => MESSAGE_NOT_FOUND.into(),
            // WAHA's `NotImplementedByEngineError` (src/core/exceptions.ts).
            Refuse::NotImplemented(what) => format!(
                "{what} The method is not implemented by '{}' engine. Check the docs and try another engine: https://waha.devlike.pro/",
                engine.waha_name()
            ),
            Refuse::Engine(m) | Refuse::BadRequest(m) => m.clone(),
            Refuse::StoreDisabled => STORE_DISABLED.into(),
        }
    }

    /// The response in `surface`'s envelope.
    pub(super) fn render(&self, surface: Surface, engine: SimEngine, instance: &str) -> Response {
        let status = self.status();
        let message = self.message(engine);
        match surface {
            Surface::Wawp => error(status, &message),
            Surface::Waha => waha::error(status, self, &message, instance),
        }
    }
}

pub(super) fn error(status: StatusCode, message: &str) -> Response {
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

/// A 200 with the JSON body, or with an empty body.
fn ok(body: Option<Value>) -> Response {
    match body {
        Some(v) => Json(v).into_response(),
        None => StatusCode::OK.into_response(),
    }
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
pub(super) enum Gate {
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

impl Call {
    /// Auth check, latency and the session check, common to every provider
    /// endpoint of both surfaces; answers the engine and the plan.
    pub(super) async fn admit(&self, gate: Gate) -> Result<(SimEngine, Plan), Response> {
        let (sh, caller) = (&self.sh, &self.caller);
        let engine = sh.engine();
        sh.admit(&caller.instance, &caller.token)
            .map_err(|Refusal::Unauthorized| self.refuse(engine, Refuse::Unauthorized))?;
        let plan = sh.plan(gate.faults());
        if !sleep_unless_stopped(sh, plan.latency).await {
            self.conn.drop_now();
            return Err(error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"));
        }
        if gate.needs_session() && sh.disconnected(&caller.instance) {
            sh.count_disconnected();
            let status = sh.session_status(&caller.instance);
            return Err(self.refuse(engine, Refuse::SessionDown(status)));
        }
        Ok((engine, plan))
    }
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

/// Applies a fault drawn for *after* processing to the success answer `ok`
/// (`None`: an empty body).
async fn fault_after(sh: &Shared, plan: &Plan, conn: &Conn, body: Option<Value>) -> Response {
    let Some(fault) = plan.fault else {
        return ok(body);
    };
    let answer = match fault {
        Fault::LostResponse => {
            conn.drop_now();
            ok(body)
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
            return ok(body);
        }
        Fault::Malformed => {
            let text = body.map(|b| b.to_string()).unwrap_or_default();
            let cut: String = text.chars().take(text.chars().count() / 2).collect();
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                cut,
            )
                .into_response()
        }
        _ => return ok(body),
    };
    sh.count_fault(fault);
    answer
}

// ---------------------------------------------------------------------------
// The operations, one per provider call, shared by both surfaces

impl Call {
    /// `new-message-id`: an id from the engine's generator. WEBJS: 501.
    pub(super) async fn new_message_id(&self) -> Answer {
        let (engine, plan) = self.admit(Gate::NewId).await?;
        if engine == SimEngine::Webjs {
            return Err(self.refuse(engine, Refuse::NotImplemented("new-message-id:")));
        }
        let (sh, conn) = (&self.sh, &self.conn);
        fault_before(sh, &plan, conn).await?;
        let id = json!({ (field::ID): sh.new_message_id() });
        Ok(fault_after(sh, &plan, conn, Some(id)).await)
    }

    /// A status post: faults, the engine's checks, the hold, the commit and
    /// the engine's answer.
    pub(super) async fn post(&self, kind: Kind, body: &[u8]) -> Answer {
        let (engine, plan) = self.admit(Gate::Post).await?;
        let (sh, caller, conn) = (&self.sh, &self.caller, &self.conn);
        let refuse = |r: Refuse| self.refuse(engine, r);
        fault_before(sh, &plan, conn).await?;
        let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(body) else {
            return Err(refuse(Refuse::BadRequest(
                "the body must be a JSON object".into(),
            )));
        };
        let supplied = match obj.remove(field::ID) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            Some(_) => {
                return Err(refuse(Refuse::BadRequest(
                    "id must be a non-empty string".into(),
                )))
            }
        };
        // whatsapp-web.js needs both to build a text status; WAHA passes the
        // failure through as a 500 and nothing is posted.
        if engine == SimEngine::Webjs
            && kind == Kind::Text
            && (obj.get("backgroundColor").is_none_or(Value::is_null)
                || obj.get("font").is_none_or(Value::is_null))
        {
            return Err(refuse(Refuse::Engine(
                "Evaluation failed: a text status needs backgroundColor and font".into(),
            )));
        }
        let raw = Value::Object(obj);
        let parsed = StatusBody::parse(kind.as_str(), &raw.to_string())
            .map_err(|e| refuse(Refuse::BadRequest(e.to_string())))?;
        let instance = caller.instance.clone();
        let committed = match plan.hold {
            None => sh.commit(&instance, kind, &parsed, raw, supplied),
            Some(hold) => {
                // Processed after the hold even if the client has given up by
                // then (hyper drops this handler, not the task).
                sh.count_held();
                let (tx, rx) = tokio::sync::oneshot::channel();
                let held = sh.clone();
                tokio::spawn(async move {
                    if sleep_unless_stopped(&held, hold).await {
                        let _ = tx.send(held.commit(&instance, kind, &parsed, raw, supplied));
                    }
                });
                match rx.await {
                    Ok(c) => c,
                    Err(_) => {
                        conn.drop_now();
                        return Err(error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"));
                    }
                }
            }
        };
        let latest = if engine == SimEngine::Webjs {
            // WEBJS reads the last own status after sending, a round trip to
            // the browser later: another post may have landed in between.
            if !sleep_unless_stopped(sh, plan.latency).await {
                conn.drop_now();
            }
            sh.latest(&caller.instance).filter(|_| !plan.empty_answer)
        } else {
            None
        };
        let answer = engines::send_answer(engine, &committed.status, latest.as_ref());
        Ok(fault_after(sh, &plan, conn, answer).await)
    }

    /// A status delete. WEBJS: 501, nothing deleted.
    pub(super) async fn delete(&self, body: &[u8]) -> Answer {
        let (engine, _) = self.admit(Gate::Delete).await?;
        let refuse = |r: Refuse| self.refuse(engine, r);
        if engine == SimEngine::Webjs {
            return Err(refuse(Refuse::NotImplemented("Deleting a status:")));
        }
        let id = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get(field::ID).and_then(Value::as_str).map(str::to_string));
        let Some(id) = id.filter(|i| !i.is_empty()) else {
            return Err(refuse(Refuse::BadRequest("id is required".into())));
        };
        let bare = bare_message_id(&id);
        if !self.sh.delete(&self.caller.instance, bare) {
            return Err(refuse(Refuse::NotFound));
        }
        let revoke_id = self.sh.new_message_id();
        Ok(Json(engines::delete_answer(engine, bare, &revoke_id)).into_response())
    }

    /// A look-up by id. Without a message store (NOWEB's default) a posted
    /// status is answered 404 `Message not found`, exactly like one that was
    /// never posted: the not-found proves nothing there.
    pub(super) async fn get_message(&self, chat: &str, id: &str, download_media: bool) -> Answer {
        let (engine, plan) = self.admit(Gate::Read).await?;
        let (sh, caller) = (&self.sh, &self.caller);
        if plan.engine_error {
            sh.count_engine_error();
            let failed = Refuse::Engine("2 UNKNOWN: failed to get message".into());
            return Err(self.refuse(engine, failed));
        }
        let store = sh.config().keeps_message_store();
        let found = sh
            .find(&caller.instance, bare_message_id(id))
            .filter(|_| chat == STATUS_CHAT && store);
        let Some(s) = found else {
            return Err(self.refuse(engine, Refuse::NotFound));
        };
        let media_base = download_media.then(|| format!("http://{}", caller.host));
        let message = engines::message(
            engine,
            &Listed::Own(s),
            &caller.instance,
            media_base.as_deref(),
        );
        Ok(Json(message).into_response())
    }

    /// One page of the chat's messages, newest first; hidden items leave the
    /// page short. NOWEB without its store: 400, nothing read.
    pub(super) async fn list(&self, q: &ListQuery) -> Answer {
        let (engine, plan) = self.admit(Gate::Read).await?;
        let (sh, caller) = (&self.sh, &self.caller);
        if !sh.config().keeps_message_store() {
            return Err(self.refuse(engine, Refuse::StoreDisabled));
        }
        if plan.engine_error {
            sh.count_engine_error();
            let failed = Refuse::Engine("2 UNKNOWN: failed to get chat messages".into());
            return Err(self.refuse(engine, failed));
        }
        if q.chat != STATUS_CHAT {
            return Ok(Json(json!([])).into_response());
        }
        let base = q.download_media.then(|| format!("http://{}", caller.host));
        let list: Vec<Value> = sh
            .list(&caller.instance, q.filter, q.offset, q.limit)
            .iter()
            .map(|item| engines::message(engine, item, &caller.instance, base.as_deref()))
            .collect();
        Ok(Json(Value::Array(list)).into_response())
    }
}

/// What a listing asks for.
#[derive(Debug, Clone)]
pub(super) struct ListQuery {
    pub chat: String,
    pub limit: usize,
    pub offset: usize,
    pub download_media: bool,
    pub filter: ListFilter,
}

impl ListQuery {
    /// From query parameters: `limit` (default 10, WAHA's), `offset`,
    /// `downloadMedia` (default true, WAHA's), and the filters when
    /// `filters` (WAHA's surface; Wawp documents none).
    pub(super) fn from_params(
        chat: String,
        q: &HashMap<String, String>,
        filters: bool,
    ) -> Result<ListQuery, String> {
        let num = |k: &str| -> Result<Option<i64>, String> {
            q.get(k)
                .map(|v| {
                    v.parse::<i64>()
                        .map_err(|_| format!("{k} must be a number, not `{v}`"))
                })
                .transpose()
        };
        let flag = |k: &str| -> Result<Option<bool>, String> {
            q.get(k)
                .map(|v| match v.as_str() {
                    "true" | "1" => Ok(true),
                    "false" | "0" => Ok(false),
                    _ => Err(format!("{k} must be true or false, not `{v}`")),
                })
                .transpose()
        };
        let count = |k: &str, d: usize| -> Result<usize, String> {
            match num(k)? {
                None => Ok(d),
                Some(n) if n >= 0 => Ok(n as usize),
                Some(n) => Err(format!("{k} must not be negative, not {n}")),
            }
        };
        let filter = if filters {
            ListFilter {
                from_me: flag(waha_wire::FILTER_FROM_ME)?,
                timestamp_gte: num(waha_wire::FILTER_TIMESTAMP_GTE)?,
                timestamp_lte: num(waha_wire::FILTER_TIMESTAMP_LTE)?,
            }
        } else {
            ListFilter::default()
        };
        Ok(ListQuery {
            chat,
            limit: count(field::LIMIT, waha_wire::DEFAULT_LIMIT)?,
            offset: count(field::OFFSET, 0)?,
            download_media: flag(field::DOWNLOAD_MEDIA)?.unwrap_or(true),
            filter,
        })
    }
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
