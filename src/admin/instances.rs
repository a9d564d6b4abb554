//! `/v1/instances`: every instance with its state and rows, and the runtime
//! instance commands (add, change, enable, disable, remove) over
//! [`crate::ops::instances`], audited like the row actions.

use axum::extract::{Extension, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::auth::{audit, Audited, Caller};
use super::{ApiError, Shared};
use crate::ops::capabilities as caps;
use crate::ops::instances::{self as actions, NewInstance};
use crate::provider::Provider;
use crate::store::{Added, Store};

/// The configuration file's instances of this process (the registry's
/// instances that do not come from the table).
fn file_names<S, P: Provider>(app: &Shared<S, P>) -> Vec<String> {
    let snap = app.ctx.instances.snapshot();
    let mut names: Vec<String> = snap
        .running
        .keys()
        .filter(|n| !snap.from_table.contains(*n))
        .cloned()
        .collect();
    names.sort();
    names
}

/// `GET /v1/instances`: every instance (the file's, the table's, and names
/// rows wait for), its state (`active`, `paused`, `disabled`, `removed`,
/// `shadowed`, `unknown`) with the reason, and its rows: waiting, due, in
/// flight (and `max_in_flight`), in doubt, oldest due age, posted in the
/// last minute. Pauses come from the store, so this is true across
/// replicas.
pub(super) async fn list<S: Store, P: Provider>(
    AxState(app): AxState<Shared<S, P>>,
) -> Result<Response, ApiError> {
    let mut views = actions::list(&app.ctx.store, &file_names(&app)).await?;
    for v in views.iter_mut().filter(|v| v.source == "file") {
        v.max_in_flight = app.ctx.instances.get(&v.instance).map(|i| i.max_in_flight);
    }
    Ok(Json(views).into_response())
}

/// The body of `POST /v1/instances`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AddBody {
    name: String,
    /// The keys of an `[instances.NAME]` table; the token named by
    /// `access_token_env` or `access_token_file`.
    settings: Map<String, Value>,
    #[serde(default = "enabled_by_default")]
    enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

/// `POST /v1/instances`: 201 added, 200 a removed one brought back, 400
/// naming the bad setting (a token by value, a variable not set in the
/// daemon's environment, a name the file has).
pub(super) async fn add<S: Store, P: Provider>(
    AxState(app): AxState<Shared<S, P>>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<AddBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let res: Result<Response, ApiError> = async {
        let Json(b) = body.map_err(|e| ApiError(e.status(), e.body_text()))?;
        let name = b.name.clone();
        let added = actions::add(
            &app.ctx.store,
            &file_names(&app),
            NewInstance {
                name: b.name,
                settings: b.settings,
                enabled: b.enabled,
            },
        )
        .await?;
        let code = match added {
            Added::Created => StatusCode::CREATED,
            Added::Restored => StatusCode::OK,
        };
        Ok((code, Json(serde_json::json!({ "instance": name }))).into_response())
    }
    .await;
    audit(&caller, "instance_add", "", "", &res);
    res
}

/// The body of `PATCH /v1/instances/{name}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchBody {
    /// Keys to change; `null` removes one (its default applies).
    #[serde(default)]
    settings: Map<String, Value>,
    enabled: Option<bool>,
}

/// `PATCH /v1/instances/{name}`: changes settings and/or enables or
/// disables; every running daemon picks the change up within seconds.
pub(super) async fn patch<S: Store, P: Provider>(
    a: Audited<S, P>,
    body: Result<Json<PatchBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let (store, name) = (&a.app.ctx.store, &a.target);
    let res: Result<Response, ApiError> = async {
        let Json(b) = body.map_err(|e| ApiError(e.status(), e.body_text()))?;
        if !b.settings.is_empty() {
            actions::set(store, name, b.settings).await?;
        }
        if let Some(enabled) = b.enabled {
            actions::set_enabled(store, name, enabled).await?;
        }
        Ok(Json(serde_json::json!({ "instance": name })).into_response())
    }
    .await;
    a.audit("instance_set", "", res)
}

/// `POST /v1/instances/{name}/enable` and `…/disable`.
pub(super) async fn set_enabled<S: Store, P: Provider>(
    a: Audited<S, P>,
    enabled: bool,
) -> Result<Response, ApiError> {
    let name = &a.target;
    let res = actions::set_enabled(&a.app.ctx.store, name, enabled)
        .await
        .map(|()| Json(serde_json::json!({ "instance": name, "enabled": enabled })).into_response())
        .map_err(ApiError::from);
    let action = if enabled {
        "instance_enable"
    } else {
        "instance_disable"
    };
    a.audit(action, "", res)
}

/// `DELETE /v1/instances/{name}`: removed; its rows are kept, reported as
/// waiting for it (`waiting` in the answer), and go again if it is added
/// back.
pub(super) async fn remove<S: Store, P: Provider>(a: Audited<S, P>) -> Result<Response, ApiError> {
    let res = actions::remove(&a.app.ctx.store, &a.target)
        .await
        .map(|waiting| {
            let name = &a.target;
            Json(serde_json::json!({ "instance": name, "removed": true, "waiting": waiting }))
                .into_response()
        })
        .map_err(ApiError::from);
    a.audit("instance_rm", "", res)
}

/// `GET /v1/capabilities`: what each instance's provider does (as
/// `statusd capabilities ls --json`): `supplied_ids` and `lookup_by_id`
/// (`yes`, `no`, `unknown`), `engine`, the evidence and when.
pub(super) async fn capabilities<S: Store, P: Provider>(
    AxState(app): AxState<Shared<S, P>>,
) -> Result<Response, ApiError> {
    let caps = caps::all(&app.ctx.store, &file_names(&app)).await?;
    Ok(Json(serde_json::json!({ "instances": caps })).into_response())
}

/// `PUT /v1/capabilities/{instance}`: an operator's word on what the
/// instance's provider does (`{"supplied_ids": "no", "lookup_by_id":
/// "unknown", "engine": "WEBJS"}`, any of them); answers what is now
/// recorded. The daemons' evidence may weaken it again later.
pub(super) async fn set_capabilities<S: Store, P: Provider>(
    a: Audited<S, P>,
    body: Result<Json<caps::Setting>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let res: Result<Response, ApiError> = async {
        let Json(setting) = body.map_err(|e| ApiError(e.status(), e.body_text()))?;
        let now = caps::set(
            &a.app.ctx.store,
            &file_names(&a.app),
            &a.target,
            setting,
            str::to_string,
            &format!("admin API, token {}", a.caller.token_fingerprint()),
        )
        .await?;
        Ok(Json(now).into_response())
    }
    .await;
    a.audit("capabilities_set", "", res)
}
