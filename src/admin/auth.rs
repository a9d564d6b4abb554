//! Who may call the API (the admin token, compared in constant time) and
//! the audit line every operator action writes.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Extension, FromRequestParts, Path, Request, State as AxState};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::{ApiError, Shared};
use crate::provider::Provider;
use crate::store::Store;

/// The configured admin token, kept as its SHA-256 digest: a request's token
/// is hashed and the digests compared without an early exit, so neither the
/// token's bytes nor its length can be learnt from timing. An empty or blank
/// token never authenticates (config refuses it too; this is the second
/// line).
pub(super) struct TokenCheck {
    digest: Option<[u8; 32]>,
    fingerprint: String,
}

impl TokenCheck {
    pub(super) fn new(token: &SecretString) -> TokenCheck {
        let t = token.expose_secret();
        TokenCheck {
            digest: (!t.trim().is_empty()).then(|| Sha256::digest(t.as_bytes()).into()),
            fingerprint: fingerprint(t),
        }
    }

    fn accepts(&self, given: &str) -> bool {
        let Some(want) = &self.digest else {
            return false;
        };
        let got: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        let diff = want.iter().zip(&got).fold(0u8, |acc, (x, y)| acc | (x ^ y));
        // Both sides of `&` are evaluated: no branch on the comparison.
        (diff == 0) & !given.trim().is_empty()
    }
}

/// Who made an audited request: the token's fingerprint (the first 8 hex
/// digits of its SHA-256, never the token) and the peer address.
#[derive(Clone)]
pub(super) struct Caller {
    fingerprint: String,
    remote: String,
}

impl Caller {
    /// The token's fingerprint, for records of who did what.
    pub(super) fn token_fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// First 8 hex digits of the SHA-256 of `token`: enough to tell tokens apart
/// in an audit log, useless for guessing one.
pub fn fingerprint(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(super) async fn require_token<S: Store, P: Provider>(
    AxState(app): AxState<Shared<S, P>>,
    mut req: Request,
    next: Next,
) -> Response {
    let refuse = |status, message: &str| ApiError(status, message.into()).into_response();
    let Some(token) = &app.token else {
        let message = "the admin API is disabled until admin.token is configured";
        return refuse(StatusCode::FORBIDDEN, message);
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !token.accepts(given) {
        return refuse(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let remote = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| "unknown".into());
    req.extensions_mut().insert(Caller {
        fingerprint: token.fingerprint.clone(),
        remote,
    });
    next.run(req).await
}

/// An audited action on one named thing (a row's key, an instance's name):
/// the app, who asks ([`require_token`] named them) and the name, the
/// path's one parameter. Rejections are those of `Path` and `Extension`.
pub(super) struct Audited<S, P> {
    pub app: Shared<S, P>,
    pub caller: Caller,
    pub target: String,
}

impl<S: Store, P: Provider> FromRequestParts<Shared<S, P>> for Audited<S, P> {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Shared<S, P>,
    ) -> Result<Self, Self::Rejection> {
        let (Path(target), Extension(caller)) =
            <(Path<String>, Extension<Caller>)>::from_request_parts(parts, app).await?;
        Ok(Audited {
            app: app.clone(),
            caller,
            target,
        })
    }
}

impl<S, P> Audited<S, P> {
    /// Writes the audit line of `action` on the target (`row`: the id it
    /// resolved to, or `""`) and hands the result on.
    pub(super) fn audit(
        &self,
        action: &str,
        row: &str,
        res: Result<Response, ApiError>,
    ) -> Result<Response, ApiError> {
        audit(&self.caller, action, &self.target, row, &res);
        res
    }
}

/// One INFO line per mutating admin action: who, what, which row (`key` as
/// given; `row` the id it resolved to, `-` if none), and how it ended.
pub(super) fn audit(
    caller: &Caller,
    action: &str,
    key: &str,
    row: &str,
    result: &Result<Response, ApiError>,
) {
    let outcome = match result {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.0.as_u16(),
    };
    tracing::info!(
        target: "statusd::audit",
        token = %caller.fingerprint,
        remote = %caller.remote,
        action,
        key,
        row,
        http_status = outcome,
        "admin action"
    );
}
