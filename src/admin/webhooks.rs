//! The provider's side of the admin server, `POST /v1/webhooks/{instance}`
//! (and `/{instance}/{token}` for providers that cannot sign), and the
//! operators' views of what the events recorded: `GET
//! /v1/statuses/{id}/views` and `GET /v1/views` (the dashboard's).
//!
//! The ingestion route never takes the admin token and is never open: each
//! instance's own webhook secret authenticates it ([`Receiver::check`]).
//! An event we use is stored in the inbox before the answer (200); an event
//! we do not use is answered 200 and dropped, so that the provider does not
//! retry it forever.

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{DefaultBodyLimit, Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{bad, parse_span, ApiError, Shared};
use crate::provider::Provider;
use crate::store::{level_name, NewEvent, Store, View, ViewBucket, ViewCounts};
use crate::webhooks::inbox::InboxWriter;
use crate::webhooks::{events, Receiver, Rejection, EVENTS_TOTAL};
use crate::wire::webhook as w;

struct Ingest {
    inbox: InboxWriter,
    receiver: Arc<Receiver>,
}

/// The ingestion routes, with their own state; merged into the admin
/// server by [`super::AdminServer::with_webhooks`].
pub fn router<S: Store>(store: S, receiver: Arc<Receiver>) -> Router {
    let inbox = InboxWriter::start(store.clone(), receiver.wake.clone());
    let state = Arc::new(Ingest { inbox, receiver });
    tokio::spawn(keep_table_keys(store, Arc::downgrade(&state)));
    Router::new()
        .route("/v1/webhooks/{instance}", post(ingest))
        .route("/v1/webhooks/{instance}/{token}", post(ingest_token))
        // The limit is ours (webhooks.max_body_bytes), read as a stream.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// How often the instance table's webhook secrets are read again: an
/// instance added with `statusd instance add … --set webhook_secret_file=…`
/// receives its events within this long.
const TABLE_KEYS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads the instance table's webhook keys into the receiver, now and every
/// [`TABLE_KEYS_EVERY`], while the routes exist. A failed read keeps the
/// keys as they were.
async fn keep_table_keys<S: Store>(store: S, state: std::sync::Weak<Ingest>) {
    loop {
        let Some(st) = state.upgrade() else { return };
        match store.instance_table().await {
            Ok(table) => st.receiver.set_table(&table),
            Err(e) => {
                tracing::debug!(error = %e, "reading the instance table's webhook secrets failed")
            }
        }
        drop(st);
        tokio::time::sleep(TABLE_KEYS_EVERY).await;
    }
}

fn refuse(r: Rejection) -> Response {
    metrics::counter!(EVENTS_TOTAL, "result" => "rejected", "reason" => r.reason()).increment(1);
    tracing::debug!(reason = r.reason(), "webhook refused");
    let code = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    (code, Json(serde_json::json!({ "error": r.to_string() }))).into_response()
}

async fn ingest(
    AxState(st): AxState<Arc<Ingest>>,
    Path(instance): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    receive(&st, &instance, None, &headers, body).await
}

async fn ingest_token(
    AxState(st): AxState<Arc<Ingest>>,
    Path((instance, token)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    receive(&st, &instance, Some(&token), &headers, body).await
}

async fn receive(
    st: &Ingest,
    instance: &str,
    token: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = st.receiver.knows(instance) {
        return refuse(r);
    }
    let limit = st.receiver.settings.max_body_bytes;
    let Ok(bytes) = to_bytes(body, limit).await else {
        return refuse(Rejection::TooLarge(limit));
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let now = chrono::Utc::now().timestamp_millis();
    if let Err(r) = st.receiver.check(instance, token, header, &bytes, now) {
        return refuse(r);
    }
    let event: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return refuse(Rejection::BadJson(e.to_string())),
    };
    if !events::is_used(&event) {
        metrics::counter!(EVENTS_TOTAL, "result" => "ignored", "reason" => "event_type")
            .increment(1);
        return Json(serde_json::json!({ "ignored": "not an event about the status chat that statusd uses" }))
            .into_response();
    }
    // Valid JSON is UTF-8 (serde_json refuses anything else).
    let text = String::from_utf8_lossy(&bytes);
    let event = NewEvent {
        instance: instance.to_string(),
        request_id: header(w::REQUEST_ID),
        body: text.into_owned(),
    };
    match st.inbox.accept(event).await {
        Ok(()) => {
            metrics::counter!(EVENTS_TOTAL, "result" => "accepted", "reason" => "stored")
                .increment(1);
            Json(serde_json::json!({ "accepted": true })).into_response()
        }
        Err(e) => {
            // Not stored: a 5xx makes the provider deliver it again.
            tracing::warn!(error = %e, instance, "webhook event could not be stored; the provider will retry");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "error": "the event could not be stored; retry" })),
            )
                .into_response()
        }
    }
}

/// `GET /v1/statuses/{id}/views` and `statusd views --json`.
#[derive(Debug, Serialize)]
pub struct StatusViews {
    pub id: uuid::Uuid,
    pub message_id: Option<String>,
    pub state: crate::model::State,
    pub counts: ViewCounts,
    pub viewers: Vec<View>,
}

/// The views of the row named by `key` (row id, message id or dedupe key).
pub async fn status_views<S: Store>(
    store: &S,
    key: &str,
) -> Result<Option<StatusViews>, crate::store::StoreError> {
    let Some(row) = store.find(key).await? else {
        return Ok(None);
    };
    let viewers = match row.event_id() {
        Some(m) => store.views_of(m).await?,
        None => Vec::new(),
    };
    let mut counts = ViewCounts {
        viewers: viewers.len() as i64,
        ..ViewCounts::default()
    };
    for v in &viewers {
        counts.delivered += (v.level >= 2) as i64;
        counts.viewed += (v.level >= 3) as i64;
        counts.played += (v.level >= 4) as i64;
    }
    Ok(Some(StatusViews {
        id: row.id,
        message_id: row.message_id,
        state: row.state,
        counts,
        viewers,
    }))
}

pub(super) async fn views<S: Store, P: Provider>(
    AxState(app): AxState<Shared<S, P>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match status_views(&app.ctx.store, &id).await? {
        Some(v) => Ok(Json(v).into_response()),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no status with id, message id or dedupe key `{id}`"),
        )),
    }
}

#[derive(Deserialize)]
pub(super) struct RecentQuery {
    window: Option<String>,
    bucket: Option<String>,
    limit: Option<i64>,
}

/// One recent status with its view counts (the dashboard's list).
#[derive(Debug, Serialize)]
struct RecentStatus {
    id: uuid::Uuid,
    kind: String,
    instance: String,
    state: crate::model::State,
    created_at: chrono::DateTime<chrono::Utc>,
    counts: ViewCounts,
}

#[derive(Debug, Serialize)]
struct Recent {
    statuses: Vec<RecentStatus>,
    over_time: Vec<ViewBucket>,
    levels: [(&'static str, i32); 4],
}

/// `GET /v1/views?window=24h&bucket=1h&limit=20`: the statuses of the
/// window with their view counts, newest first, and views per bucket.
pub(super) async fn recent<S: Store, P: Provider>(
    AxState(app): AxState<Shared<S, P>>,
    Query(q): Query<RecentQuery>,
) -> Result<Response, ApiError> {
    let span =
        |s: Option<&str>, default: i64, name: &str| -> Result<std::time::Duration, ApiError> {
            match s {
                None => Ok(std::time::Duration::from_secs(default as u64)),
                Some(s) => parse_span(s)
                    .and_then(|d| d.to_std().ok())
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| bad(format!("{name}: a duration like 30m, 1h or 2d"))),
            }
        };
    let window = span(q.window.as_deref(), 86_400, "window")?;
    let bucket = span(q.bucket.as_deref(), 3_600, "bucket")?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=500).contains(&limit) {
        return Err(bad("limit: must be from 1 to 500"));
    }
    let store = &app.ctx.store;
    let since = chrono::Utc::now() - chrono::Duration::from_std(window).unwrap_or_default();
    let rows = store
        .list(crate::store::ListParams {
            state: None,
            instance: None,
            since: Some(since),
            limit,
        })
        .await?;
    let ids: Vec<String> = rows
        .iter()
        .filter_map(|r| r.event_id().map(str::to_owned))
        .collect();
    let counts = store.view_counts(&ids).await?;
    let statuses = rows
        .into_iter()
        .map(|r| RecentStatus {
            counts: r
                .event_id()
                .and_then(|m| counts.get(m).copied())
                .unwrap_or_default(),
            id: r.id,
            kind: r.kind,
            instance: r.instance,
            state: r.state,
            created_at: r.created_at,
        })
        .collect();
    let over_time = store.views_over_time(window, bucket).await?;
    Ok(Json(Recent {
        statuses,
        over_time,
        levels: [
            (level_name(2), 2),
            (level_name(3), 3),
            (level_name(4), 4),
            (level_name(-1), -1),
        ],
    })
    .into_response())
}
