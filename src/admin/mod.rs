//! The admin HTTP server (axum): `/healthz`, `/readyz`, `/metrics`
//! (Prometheus), the JSON API under `/v1` and the dashboard. It binds
//! loopback by default; everything but health and metrics needs the bearer
//! token `admin.token`.

use anyhow::Context;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State as AxState};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

mod auth;
mod gauges;
mod instances;
pub mod webhooks;

pub use auth::fingerprint;
use auth::{audit, require_token, Audited, Caller, TokenCheck};
use gauges::refresh_gauges;

use crate::config::AdminSettings;
use crate::metrics as m;
use crate::model::State;
use crate::ops::Since;
use crate::ops::{OpError, Operator};
use crate::provider::Provider;
use crate::store::{ActivityBucket, ActivityParams, EnqueueParams, ListParams, Store, StoreError};

/// The process-wide Prometheus recorder (installed once, shared by every
/// server in the process, e.g. in tests).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("duration_seconds".into()),
                    &[
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ],
                )
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then our
            // page is empty but nothing breaks.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

pub struct AdminServer<S, P> {
    listener: tokio::net::TcpListener,
    app: Router,
    ctx: Arc<Operator<S, P>>,
}

struct App<S, P> {
    ctx: Arc<Operator<S, P>>,
    token: Option<TokenCheck>,
    metrics: PrometheusHandle,
    shutting_down: CancellationToken,
}

type Shared<S, P> = Arc<App<S, P>>;

impl<S: Store, P: Provider> AdminServer<S, P> {
    pub async fn bind(settings: &AdminSettings, ctx: Arc<Operator<S, P>>) -> anyhow::Result<Self> {
        let addr: SocketAddr = settings
            .bind
            .parse()
            .with_context(|| format!("admin.bind `{}`", settings.bind))?;
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(e).with_context(|| {
                    format!(
                        "admin.bind {addr} is in use (another process listens there, e.g. a \
                         second replica on this host: give each replica its own admin.bind, \
                         e.g. STATUSD__ADMIN__BIND=127.0.0.1:9092, or set admin.enabled = false)"
                    )
                })
            }
            Err(e) => return Err(e).with_context(|| format!("admin.bind {addr}")),
        };
        if !addr.ip().is_loopback() {
            tracing::warn!(
                addr = %addr,
                "the admin server binds a non-loopback address: the API and the dashboard are \
                 reachable from the network; keep admin.token secret and put TLS in front"
            );
        }
        // The recorder first: descriptions go to the recorder installed.
        let metrics = metrics_handle();
        m::describe();
        let app = Arc::new(App {
            ctx: ctx.clone(),
            token: settings.token.as_ref().map(TokenCheck::new),
            metrics,
            shutting_down: CancellationToken::new(),
        });
        Ok(AdminServer {
            listener,
            app: router(app),
            ctx,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Adds the provider's webhook routes (`POST /v1/webhooks/{instance}`),
    /// authenticated by each instance's webhook secret, not the admin token.
    pub fn with_webhooks(mut self, store: S, receiver: Arc<crate::webhooks::Receiver>) -> Self {
        self.app = self.app.merge(webhooks::router(store, receiver));
        self
    }

    pub async fn serve(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let gauges = tokio::spawn(refresh_gauges(self.ctx.clone(), shutdown.clone()));
        // With the peer address, for the audit lines.
        let app = self.app.into_make_service_with_connect_info::<SocketAddr>();
        let res = axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        gauges.abort();
        res.map_err(Into::into)
    }
}

fn router<S: Store, P: Provider>(app: Shared<S, P>) -> Router {
    let api = Router::new()
        .route("/v1/statuses", get(list::<S, P>).post(enqueue::<S, P>))
        .route("/v1/statuses/{id}", get(show::<S, P>))
        .route(
            "/v1/statuses/{id}/retry",
            post(|a: Audited<S, P>, Query(q): Query<RetryQuery>| {
                act(
                    a,
                    RowAction::Retry {
                        force_resend: q.force_resend,
                    },
                )
            }),
        )
        .route(
            "/v1/statuses/{id}/cancel",
            post(|a: Audited<S, P>| act(a, RowAction::Cancel)),
        )
        .route(
            "/v1/statuses/{id}/confirm",
            post(|a: Audited<S, P>| act(a, RowAction::Confirm)),
        )
        .route(
            "/v1/statuses/{id}/delete",
            post(|a: Audited<S, P>| act(a, RowAction::Delete)),
        )
        .route("/v1/stats", get(stats::<S, P>))
        .route(
            "/v1/instances",
            get(instances::list::<S, P>).post(instances::add::<S, P>),
        )
        .route(
            "/v1/instances/{name}",
            patch(instances::patch::<S, P>).delete(instances::remove::<S, P>),
        )
        .route(
            "/v1/instances/{name}/enable",
            post(|a: Audited<S, P>| instances::set_enabled(a, true)),
        )
        .route(
            "/v1/instances/{name}/disable",
            post(|a: Audited<S, P>| instances::set_enabled(a, false)),
        )
        .route("/v1/capabilities", get(instances::capabilities::<S, P>))
        .route(
            "/v1/capabilities/{instance}",
            put(instances::set_capabilities::<S, P>),
        )
        .route("/v1/activity", get(activity::<S, P>))
        .route("/v1/statuses/{id}/views", get(webhooks::views::<S, P>))
        .route("/v1/views", get(webhooks::recent::<S, P>))
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            require_token::<S, P>,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz::<S, P>))
        .route("/metrics", get(metrics_page::<S, P>))
        .route("/", get(dashboard))
        .route("/dashboard.css", get(dashboard_css))
        .route("/dashboard.js", get(dashboard_js))
        .merge(api)
        .with_state(app)
}

/// An API error: status code and a message naming what is wrong.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let code = match &e {
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::NotAllowed { .. } => StatusCode::CONFLICT,
            StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(code, e.to_string())
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::NotFound(_) => ApiError(StatusCode::NOT_FOUND, e.to_string()),
            OpError::NoInstance(m) => ApiError(StatusCode::NOT_FOUND, m),
            OpError::Invalid(m) => bad(m),
            OpError::Store(e) => e.into(),
            OpError::Provider(_) => ApiError(StatusCode::BAD_GATEWAY, e.to_string()),
        }
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// The largest request body the API reads; a larger one is answered 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

async fn readyz<S: Store, P: Provider>(AxState(app): AxState<Shared<S, P>>) -> Response {
    if app.shutting_down.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    match tokio::time::timeout(Duration::from_secs(2), app.ctx.store.ping()).await {
        Ok(Ok(())) => "ready".into_response(),
        // The cause goes to the log, not to an anonymous caller: database
        // errors can name hosts, users and schemas.
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readyz: the database does not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
        }
        Err(_) => {
            tracing::warn!("readyz: the database ping timed out");
            (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
        }
    }
}

async fn metrics_page<S: Store, P: Provider>(AxState(app): AxState<Shared<S, P>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

/// The dashboard's page. Its script and style are separate embedded files
/// so that the policy can forbid every inline script: even if some row text
/// slipped past the page's escaping, it could not run.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; \
    base-uri 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The assets change with the binary; always revalidate.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CONTENT_SECURITY_POLICY, DASHBOARD_CSP),
        ],
        body,
    )
        .into_response()
}

async fn dashboard() -> Response {
    asset("text/html; charset=utf-8", include_str!("dashboard.html"))
}

async fn dashboard_css() -> Response {
    asset("text/css; charset=utf-8", include_str!("dashboard.css"))
}

async fn dashboard_js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("dashboard.js"),
    )
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
    instance: Option<String>,
    since: Option<String>,
    limit: Option<i64>,
}

/// `since=`: a duration ago or an RFC 3339 time, parsed as `ls --since`
/// parses it (one grammar, [`Since::parse`]).
pub fn parse_since(
    s: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<chrono::DateTime<chrono::Utc>, String> {
    Since::parse(s)
        .map(|since| since.resolve(now))
        .map_err(|e| format!("since: {e}"))
}

/// A span (`window=`, `bucket=`): the duration part of the same grammar.
fn parse_span(s: &str) -> Option<chrono::Duration> {
    match Since::parse(s) {
        Ok(Since::Ago(d)) => Some(d),
        _ => None,
    }
}

async fn list<S: Store, P: Provider>(
    AxState(app): AxState<Shared<S, P>>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let state = q
        .state
        .as_deref()
        .map(State::from_str)
        .transpose()
        .map_err(|e| bad(format!("state: {e}")))?;
    let since = q
        .since
        .as_deref()
        .map(|s| parse_since(s, chrono::Utc::now()))
        .transpose()
        .map_err(bad)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(bad("limit: must be from 1 to 10000"));
    }
    let rows = app
        .ctx
        .store
        .list(ListParams {
            state,
            instance: q.instance,
            since,
            limit,
        })
        .await?;
    Ok(Json(rows).into_response())
}

async fn show<S: Store, P: Provider>(
    AxState(app): AxState<Shared<S, P>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let store = &app.ctx.store;
    let Some(row) = store.find(&id).await? else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no status with id {id}"),
        ));
    };
    let attempts = store.attempts(row.id).await?;
    Ok(Json(serde_json::json!({ "status": row, "attempts": attempts })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnqueueBody {
    instance: String,
    kind: String,
    payload: serde_json::Value,
    dedupe_key: Option<String>,
    #[serde(default)]
    priority: i32,
    not_before: Option<chrono::DateTime<chrono::Utc>>,
}

async fn enqueue<S: Store, P: Provider>(
    AxState(app): AxState<Shared<S, P>>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<EnqueueBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let mut row = String::from("-");
    let res = enqueue_inner(&app, body, &mut row).await;
    audit(&caller, "enqueue", "-", &row, &res);
    res
}

async fn enqueue_inner<S: Store, P: Provider>(
    app: &App<S, P>,
    body: Result<Json<EnqueueBody>, axum::extract::rejection::JsonRejection>,
    row: &mut String,
) -> Result<Response, ApiError> {
    // The rejection's own status: 413 for a body over the limit, 415 for a
    // wrong content type, 400/422 for bad JSON.
    let Json(b) = body.map_err(|e| ApiError(e.status(), e.body_text()))?;
    let e = app
        .ctx
        .enqueue(EnqueueParams {
            id: None,
            instance: b.instance,
            kind: b.kind,
            payload: b.payload.to_string(),
            dedupe_key: b.dedupe_key,
            priority: b.priority,
            not_before: b.not_before,
        })
        .await?;
    *row = e.id.to_string();
    let code = if e.inserted {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(e)).into_response())
}

#[derive(Deserialize)]
struct RetryQuery {
    #[serde(default)]
    force_resend: bool,
}

/// An operator action on one row, as the API offers it.
#[derive(Clone, Copy)]
enum RowAction {
    Retry { force_resend: bool },
    Cancel,
    Delete,
    Confirm,
}

impl RowAction {
    fn name(self) -> &'static str {
        match self {
            RowAction::Retry {
                force_resend: false,
            } => "retry",
            RowAction::Retry { force_resend: true } => "force-resend",
            RowAction::Cancel => "cancel",
            RowAction::Delete => "delete",
            RowAction::Confirm => "confirm",
        }
    }
}

/// Runs `action` on the row the path's key names (one of [`crate::ops`]'s
/// actions) and writes the audit line, with the row's id once it is known.
/// `POST /v1/statuses/{id}/retry` (`?force_resend=true`), `…/cancel`,
/// `…/delete`.
async fn act<S: Store, P: Provider>(
    a: Audited<S, P>,
    action: RowAction,
) -> Result<Response, ApiError> {
    let mut row_id = String::from("-");
    let res = async {
        let ctx = &a.app.ctx;
        let row = ctx.find(&a.target).await?;
        row_id = row.id.to_string();
        let change = match action {
            RowAction::Retry { force_resend } => ctx.retry(row, force_resend).await?,
            RowAction::Cancel => ctx.cancel(row).await?,
            RowAction::Delete => ctx.delete(row).await?,
            RowAction::Confirm => ctx.confirm(row).await?,
        };
        Ok(Json(change.after).into_response())
    }
    .await;
    a.audit(action.name(), &row_id, res)
}

async fn stats<S: Store, P: Provider>(
    AxState(app): AxState<Shared<S, P>>,
) -> Result<Response, ApiError> {
    Ok(Json(app.ctx.store.summary().await?).into_response())
}

#[derive(Deserialize)]
struct ActivityQuery {
    window: Option<String>,
    bucket: Option<String>,
}

/// The answer of `GET /v1/activity?window=1h&bucket=1m` (the defaults).
#[derive(serde::Serialize)]
struct ActivityBody {
    /// The database's clock when the window was read.
    now: chrono::DateTime<chrono::Utc>,
    window_secs: i64,
    bucket_secs: i64,
    /// Every bucket of the window, oldest first, empty ones included, so a
    /// chart can draw them as they come; the first may be partly outside.
    buckets: Vec<ActivityBucket>,
}

/// At most a week of minutes per answer.
const MAX_BUCKETS: i64 = 7 * 24 * 60;

async fn activity<S: Store, P: Provider>(
    AxState(app): AxState<Shared<S, P>>,
    Query(q): Query<ActivityQuery>,
) -> Result<Response, ApiError> {
    let span = |name: &str, v: Option<&str>, default: &str| {
        let v = v.unwrap_or(default);
        parse_span(v)
            .filter(|d| d.num_seconds() >= 1)
            .ok_or_else(|| {
                bad(format!(
                    "{name}: `{v}` is not a duration like 60s, 5m, 1h, 1d"
                ))
            })
    };
    let window = span("window", q.window.as_deref(), "1h")?;
    let bucket = span("bucket", q.bucket.as_deref(), "1m")?;
    let (window_secs, bucket_secs) = (window.num_seconds(), bucket.num_seconds());
    if window_secs / bucket_secs > MAX_BUCKETS {
        return Err(bad(format!(
            "window: {window_secs}s in {bucket_secs}s buckets is more than {MAX_BUCKETS} buckets"
        )));
    }
    let now = app.ctx.store.now().await?;
    let found = app
        .ctx
        .store
        .activity(ActivityParams {
            since: Duration::from_secs(window_secs.unsigned_abs()),
            bucket: Duration::from_secs(bucket_secs.unsigned_abs()),
        })
        .await?;
    Ok(Json(ActivityBody {
        now,
        window_secs,
        bucket_secs,
        buckets: dense_buckets(now, window_secs, bucket_secs, found),
    })
    .into_response())
}

/// Fills the window's empty buckets in (the store returns only non-empty
/// ones), aligned as the store aligns them: to the Unix epoch.
fn dense_buckets(
    now: chrono::DateTime<chrono::Utc>,
    window_secs: i64,
    bucket_secs: i64,
    found: Vec<ActivityBucket>,
) -> Vec<ActivityBucket> {
    let first = (now.timestamp() - window_secs).div_euclid(bucket_secs) * bucket_secs;
    let last = now.timestamp().div_euclid(bucket_secs) * bucket_secs;
    let mut out: Vec<ActivityBucket> = (first..=last)
        .step_by(bucket_secs.unsigned_abs() as usize)
        .map(|t| ActivityBucket {
            start: chrono::DateTime::from_timestamp(t, 0).unwrap_or_default(),
            posted: 0,
            errors: 0,
        })
        .collect();
    let n = out.len() as i64;
    for f in found {
        // Clamped: an attempt stamped ahead of the database clock (another
        // host's clock) is counted in the newest bucket, not dropped.
        let i = (f.start.timestamp() - first)
            .div_euclid(bucket_secs)
            .clamp(0, n - 1);
        if let Some(b) = out.get_mut(i as usize) {
            b.posted += f.posted;
            b.errors += f.errors;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn bucket(start: i64, posted: i64, errors: i64) -> ActivityBucket {
        ActivityBucket {
            start: at(start),
            posted,
            errors,
        }
    }

    #[test]
    fn dense_buckets_fill_the_window_and_keep_every_attempt() {
        // now = 10:00:30 (as epoch seconds), a 3-minute window in minutes.
        let now = at(36_030);
        let found = vec![
            bucket(35_880, 2, 1),
            // Stamped ahead of the database clock: counted in the last bucket.
            bucket(36_120, 1, 0),
        ];
        let got = dense_buckets(now, 180, 60, found);
        assert_eq!(
            got,
            vec![
                bucket(35_820, 0, 0),
                bucket(35_880, 2, 1),
                bucket(35_940, 0, 0),
                bucket(36_000, 1, 0),
            ]
        );
    }

    #[test]
    fn spans_and_since() {
        assert_eq!(parse_span("90s"), Some(chrono::Duration::seconds(90)));
        assert_eq!(parse_span("2h"), Some(chrono::Duration::hours(2)));
        assert_eq!(parse_span("1w"), Some(chrono::Duration::weeks(1)));
        assert_eq!(parse_span("h"), None);
        let now = at(100_000);
        assert_eq!(parse_since("1d", now).unwrap(), at(13_600));
        assert_eq!(parse_since("1w", now).unwrap(), at(100_000 - 604_800));
        assert!(parse_since("soon", now).unwrap_err().starts_with("since:"));
        assert_eq!(parse_since("1970-01-01T00:00:10Z", now).unwrap(), at(10));
    }
}
