//! The provider simulator (DESIGN.md §7): a fake of the provider's status
//! API that speaks the provider's [wire vocabulary](crate::wire) (paths,
//! query parameters, chat and id forms) — the same module the
//! [`WawpClient`](crate::provider::WawpClient) speaks, and the simulator
//! imports nothing from the client — keeps what a viewer would see, counts
//! duplicates, and injects faults.
//!
//! # Which provider it plays
//!
//! One server answers both Wawp's API (`/v2/…`, `server.rs`) and WAHA's
//! own (`/api/…`, `waha.rs`) over the same statuses. [`SimEngine`] decides
//! what both answer (`engines.rs`, each shape citing its source in
//! `devlikeapro/waha`): Wawp (the default: ignores supplied ids, as its
//! docs say), or WAHA's NOWEB, GOWS or WEBJS engine — their send answers,
//! listing shapes (`_data`, no top-level `type`, items left out of pages,
//! contacts' statuses, newest first, default limit), id honouring, message
//! store, error forms (422, 404 `Message not found`, 500, 501) and retry
//! window (held posts). Each engine default can be overridden by its own
//! knob ([`SimConfig`]).
//!
//! # What viewers see
//!
//! Statuses are kept per instance, by id and by content fingerprint
//! ([`StatusBody::fingerprint`](crate::model::StatusBody::fingerprint) of the
//! body without its `id`). Where supplied ids are honoured, a post carrying
//! an id already posted on that instance is recognised as the same status
//! and not shown again (`deduplicated_by_id`). A post whose content was
//! already shown under another id is shown again and counted in
//! `duplicates`: that is what exactly-once must keep at zero (test
//! workloads make every status's content unique, so this counter is the
//! oracle). Where supplied ids are ignored (Wawp, WEBJS), every repeated
//! content is a duplicate.
//!
//! # Faults
//!
//! Each posting request (and `new-message-id`) draws at most one fault, with
//! the probabilities of [`SimConfig`], in this order: `rate_limited_429`,
//! `error_5xx_before`, `hang` (all three before processing: nothing is
//! posted), then — after the status is committed — `lost_response` (the TCP
//! connection is dropped instead of answering), `error_5xx_after`,
//! `hang_after_commit`, `malformed_body`. The probabilities must sum to at
//! most 1. Independently, a post may be held `hold_ms` before it is
//! processed (`hold_share`); it is posted when the hold ends whatever the
//! client did meanwhile. Look-ups, deletes and session info get latency and
//! auth checks but no random faults, so that the reconciler can always make
//! progress — except the engine's own 500s on reads (`engine_error_share`,
//! GOWS). With a `seed`, the draws are reproducible for a given order of
//! requests.

mod conn;
mod engines;
mod knobs;
mod server;
mod state;
mod waha;
mod wawp;
mod webhooks;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use knobs::{InvalidSimConfig, SimConfig, SimEngine, SimError, SimTokens};
pub use state::{PostedStatus, SimStats};
pub use webhooks::{WebhookKnobs, WebhookStats, WebhookTarget};

/// Starts simulators.
pub struct Simulator;

impl Simulator {
    /// Binds `addr` (use port 0 for any free port) and serves until the
    /// handle is shut down or dropped. Fails when the address can't be bound
    /// or the config is invalid.
    pub async fn start(addr: SocketAddr, config: SimConfig) -> Result<SimHandle, SimError> {
        config.validate()?;
        let bind = |source| SimError::Bind { addr, source };
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(bind)?;
        let local = listener.local_addr().map_err(bind)?;
        let cancel = CancellationToken::new();
        let shared = Arc::new(state::Shared::new(config, cancel.clone()));
        let task = tokio::spawn(server::serve(listener, shared.clone(), cancel.clone()));
        Ok(SimHandle {
            addr: local,
            shared,
            cancel,
            task: Some(task),
        })
    }
}

/// A running simulator. Dropping it stops the server.
pub struct SimHandle {
    addr: SocketAddr,
    shared: Arc<state::Shared>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl SimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`: the `base_url` of an instance.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> SimStats {
        self.shared.stats()
    }

    /// Every status ever posted, in posting order.
    pub fn posted(&self) -> Vec<PostedStatus> {
        self.shared.posted()
    }

    pub fn config(&self) -> SimConfig {
        self.shared.config()
    }

    /// Counters of the webhook events sent (`SimConfig::webhooks`).
    pub fn webhook_stats(&self) -> WebhookStats {
        self.shared.webhooks.stats()
    }

    /// Replaces the knobs; takes effect for the next request.
    pub fn set_config(&self, config: SimConfig) -> Result<(), SimError> {
        self.shared.set_config(config)
    }

    /// Forgets every status and counter; keeps the config.
    pub fn reset(&self) {
        self.shared.reset()
    }

    /// Stops serving: hanging requests end at once (their connections are
    /// dropped), and the listener is closed when this returns.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            // A panic in the server task has nothing left to clean up.
            let _ = task.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.addr)
            .finish()
    }
}

/// `statusd sim --port N [--bind ADDR]`: serves until `shutdown` is
/// cancelled. The CLI binds loopback unless told otherwise: the simulator
/// accepts any token when none are configured and its `/_sim` endpoints are
/// unauthenticated.
pub async fn run_standalone(
    addr: SocketAddr,
    config: SimConfig,
    shutdown: CancellationToken,
) -> Result<(), SimError> {
    let handle = Simulator::start(addr, config).await?;
    tracing::info!(base_url = %handle.base_url(), "simulator listening");
    shutdown.cancelled().await;
    let stats = handle.stats();
    tracing::info!(
        posted = stats.posted,
        duplicates = stats.duplicates,
        requests = stats.requests,
        "simulator stopping"
    );
    handle.shutdown().await;
    Ok(())
}
