//! The provider simulator (DESIGN.md §7): a fake of the Wawp status API that
//! speaks the provider's [wire vocabulary](crate::wire) (paths, query
//! parameters, chat and id forms) — the same module the
//! [`WawpClient`](crate::provider::WawpClient) speaks, and the simulator
//! imports nothing from the client — keeps what a viewer would see, counts
//! duplicates, and injects faults.
//!
//! # What viewers see
//!
//! Statuses are kept per instance, by id and by content fingerprint
//! ([`StatusBody::fingerprint`](crate::model::StatusBody::fingerprint) of the
//! body without its `id`). A post carrying an id already posted on that
//! instance is recognised as the same status and not shown again
//! (`deduplicated_by_id`). A post whose content was already shown under
//! another id is shown again and counted in `duplicates`: that is what
//! exactly-once must keep at zero (test workloads make every status's content
//! unique, so this counter is the oracle). With `auto_assign_ids` the
//! supplied id is ignored, as Wawp documents it may do, so every repeated
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
//! most 1. Look-ups, deletes and session info get latency and auth checks
//! but no random faults, so that the reconciler can always make progress.
//! With a `seed`, the draws are reproducible for a given order of requests.

mod server;
mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::model::Kind;

pub use state::{InvalidSimConfig, SimError};

/// The simulator's knobs. Every field has a default (no faults, no latency,
/// any token accepted), so a config file or `POST /_sim/config` body only
/// names what it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Commit the post, then drop the connection without answering.
    pub lost_response: f64,
    /// Answer 503 with the `NOT_PROCESSED` code, posting nothing.
    pub error_5xx_before: f64,
    /// Commit the post, then answer 500.
    pub error_5xx_after: f64,
    /// Sleep `hang_ms` before processing; nothing is posted (the client has
    /// given up by then, and the request is answered 503 `NOT_PROCESSED`).
    pub hang: f64,
    /// Commit the post, then sleep `hang_ms` before answering 200.
    pub hang_after_commit: f64,
    /// Answer 429 with `Retry-After: retry_after_secs`, posting nothing.
    pub rate_limited_429: f64,
    /// Commit the post, then answer 200 with a truncated body.
    pub malformed_body: f64,
    pub retry_after_secs: u64,
    /// How long a hang lasts; set it above the client's request timeout.
    pub hang_ms: u64,
    /// Latency added to every request, uniform in `[min, max]`.
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    /// Instance ids answered 401 whatever the token.
    pub unauthorized_instances: BTreeSet<String>,
    /// Instance ids whose WhatsApp session is not connected: posts are
    /// answered 422 "Session status is not as expected" (WAHA's wording),
    /// session info says `SCAN_QR_CODE`.
    pub disconnected_instances: BTreeSet<String>,
    /// Valid token per instance id. When empty, any non-empty token is
    /// accepted for any instance; otherwise an unknown instance or a wrong
    /// token gets 401. Never serialized back out.
    #[serde(skip_serializing)]
    pub tokens: SimTokens,
    /// Ignore supplied ids and assign our own (Wawp's documented current
    /// behaviour).
    pub auto_assign_ids: bool,
    /// Seed for the fault and latency draws; `None` seeds from the OS.
    pub seed: Option<u64>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            lost_response: 0.0,
            error_5xx_before: 0.0,
            error_5xx_after: 0.0,
            hang: 0.0,
            hang_after_commit: 0.0,
            rate_limited_429: 0.0,
            malformed_body: 0.0,
            retry_after_secs: 1,
            hang_ms: 35_000,
            latency_min_ms: 0,
            latency_max_ms: 0,
            unauthorized_instances: BTreeSet::new(),
            disconnected_instances: BTreeSet::new(),
            tokens: SimTokens::default(),
            auto_assign_ids: false,
            seed: None,
        }
    }
}

/// Valid token per instance id (see [`SimConfig::tokens`]). Tokens are
/// secrets even in the simulator: `Debug` names the instances only, and
/// the config is never served with them.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct SimTokens(BTreeMap<String, String>);

impl Deref for SimTokens {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for SimTokens {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// `[(instance, token), …].into()`, as a `BTreeMap` is built.
impl<const N: usize> From<[(String, String); N]> for SimTokens {
    fn from(pairs: [(String, String); N]) -> Self {
        SimTokens(pairs.into())
    }
}

impl fmt::Debug for SimTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl SimConfig {
    /// A mix of every fault, a few percent each, with a short hang: what the
    /// demo runs against. The client's request timeout must be below
    /// `hang_ms` (1.5 s here) for hangs to look like hangs.
    pub fn with_demo_faults() -> SimConfig {
        SimConfig {
            lost_response: 0.03,
            error_5xx_before: 0.03,
            error_5xx_after: 0.02,
            hang: 0.01,
            hang_after_commit: 0.01,
            rate_limited_429: 0.03,
            malformed_body: 0.02,
            retry_after_secs: 1,
            hang_ms: 1_500,
            latency_min_ms: 1,
            latency_max_ms: 15,
            ..SimConfig::default()
        }
    }

    /// The fault probabilities in draw order, with their names as counted
    /// in [`SimStats::faults`].
    pub fn fault_table(&self) -> [(&'static str, f64); 7] {
        [
            ("rate_limited_429", self.rate_limited_429),
            ("error_5xx_before", self.error_5xx_before),
            ("hang", self.hang),
            ("lost_response", self.lost_response),
            ("error_5xx_after", self.error_5xx_after),
            ("hang_after_commit", self.hang_after_commit),
            ("malformed_body", self.malformed_body),
        ]
    }

    /// Every problem, each naming its knob.
    pub fn validate(&self) -> Result<(), InvalidSimConfig> {
        let mut problems = Vec::new();
        let mut sum = 0.0;
        for (name, p) in self.fault_table() {
            if !(0.0..=1.0).contains(&p) {
                problems.push(format!("{name} must be a probability between 0 and 1"));
            }
            sum += p;
        }
        if sum > 1.0 + 1e-9 {
            problems.push(format!("fault probabilities sum to {sum}, more than 1"));
        }
        if self.latency_min_ms > self.latency_max_ms {
            problems.push("latency_min_ms must not exceed latency_max_ms".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(InvalidSimConfig { problems })
        }
    }
}

/// Counters, as served by `GET /_sim/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SimStats {
    /// Every request to the provider API (not `/_sim`).
    pub requests: u64,
    /// Statuses shown to viewers (a duplicate counts here too).
    pub posted: u64,
    /// Posts whose content was already shown under another id.
    pub duplicates: u64,
    /// Posts recognised by their supplied id as already shown.
    pub deduplicated_by_id: u64,
    pub deleted: u64,
    pub lookups: u64,
    /// Injected faults by knob name; 401s and disconnected sessions are
    /// counted as `unauthorized` and `disconnected`.
    pub faults: BTreeMap<String, u64>,
}

/// One status as the simulator holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostedStatus {
    pub id: String,
    /// The id the client supplied, when it supplied one.
    pub supplied_id: Option<String>,
    pub instance: String,
    pub kind: Kind,
    pub fingerprint: String,
    /// The body as posted, without `id`.
    pub body: serde_json::Value,
    pub posted_at: DateTime<Utc>,
    pub deleted: bool,
}

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
