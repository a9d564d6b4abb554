//! The simulator's knobs ([`SimConfig`]), checked as a whole, and the
//! errors of configuring or starting a simulator.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};

use serde::{Deserialize, Serialize};

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
    /// Webhook events to statusd (`sim/webhooks.rs`); None: none sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<super::webhooks::WebhookKnobs>,
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
            webhooks: None,
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
    /// in [`SimStats::faults`](super::SimStats::faults).
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

/// What can go wrong starting or configuring a simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid simulator config: {0}")]
    Config(#[from] InvalidSimConfig),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Every problem of a [`SimConfig`], each naming its knob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.join("; "))]
pub struct InvalidSimConfig {
    pub problems: Vec<String>,
}

impl InvalidSimConfig {
    pub(super) fn one(problem: impl Into<String>) -> InvalidSimConfig {
        InvalidSimConfig {
            problems: vec![problem.into()],
        }
    }
}
