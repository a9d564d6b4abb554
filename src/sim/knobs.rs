//! The simulator's knobs ([`SimConfig`]), checked as a whole, and the
//! errors of configuring or starting a simulator.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};

use serde::{Deserialize, Serialize};

use crate::config::with_defaults;

with_defaults! {
    /// The simulator's knobs. Every field has a default (no faults, no latency,
    /// any token accepted), so a config file or `POST /_sim/config` body only
    /// names what it changes.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct SimConfig {
        /// Commit the post, then drop the connection without answering.
        pub lost_response: f64 = 0.0,
        /// Answer 503 with the `NOT_PROCESSED` code, posting nothing.
        pub error_5xx_before: f64 = 0.0,
        /// Commit the post, then answer 500.
        pub error_5xx_after: f64 = 0.0,
        /// Sleep `hang_ms` before processing; nothing is posted (the client has
        /// given up by then, and the request is answered 503 `NOT_PROCESSED`).
        pub hang: f64 = 0.0,
        /// Commit the post, then sleep `hang_ms` before answering 200.
        pub hang_after_commit: f64 = 0.0,
        /// Answer 429 with `Retry-After: retry_after_secs`, posting nothing.
        pub rate_limited_429: f64 = 0.0,
        /// Commit the post, then answer 200 with a truncated body.
        pub malformed_body: f64 = 0.0,
        pub retry_after_secs: u64 = 1,
        /// How long a hang lasts; set it above the client's request timeout.
        pub hang_ms: u64 = 35_000,
        /// Latency added to every request, uniform in `[min, max]`.
        pub latency_min_ms: u64 = 0,
        pub latency_max_ms: u64 = 0,
        /// Instance ids answered 401 whatever the token.
        pub unauthorized_instances: BTreeSet<String> = BTreeSet::new(),
        /// Instance ids whose WhatsApp session is not connected: posts are
        /// answered 422 "Session status is not as expected" (WAHA's wording),
        /// session info says `SCAN_QR_CODE`.
        pub disconnected_instances: BTreeSet<String> = BTreeSet::new(),
        /// Valid token per instance id. When empty, any non-empty token is
        /// accepted for any instance; otherwise an unknown instance or a wrong
        /// token gets 401. Never serialized back out.
        #[serde(skip_serializing)]
        pub tokens: SimTokens = SimTokens::default(),
        /// Ignore supplied ids and assign our own. Kept as an alias of
        /// `supplied_ids = false` (`true` here means exactly that; `false`
        /// leaves the choice to `supplied_ids` and the engine).
        pub auto_assign_ids: bool = false,
        /// Which provider the simulator plays: Wawp's hosted API (default) or
        /// one of WAHA's engines, each with its own response shapes, listing
        /// shape, id honouring, message store and error forms (see
        /// [`SimEngine`]). Both surfaces (Wawp `/v2/…` and WAHA `/api/…`) are
        /// served whatever the engine; the engine decides what they answer.
        pub engine: SimEngine = SimEngine::default(),
        /// Honour a supplied `id` on status bodies. `None`: the engine's
        /// default ([`SimEngine::honours_supplied_ids`]).
        pub supplied_ids: Option<bool> = None,
        /// Look-up by id works (a message store is kept). `None`: the engine's
        /// default ([`SimEngine::keeps_message_store`]); without a store a
        /// by-id look-up of a posted status answers 404 `Message not found`,
        /// exactly like a status that was never posted.
        pub message_store: Option<bool> = None,
        /// Share (0..1) of items silently left out of each listing page, as
        /// engines drop reactions, revokes and polls: a page can come back
        /// short without being the last. Applied to any item, our statuses
        /// included (the harsher reading: a page may miss one of ours, and only
        /// reading on past it finds the rest). The dropped item is shown again
        /// on no other page. `None`: the engine's default
        /// ([`SimEngine::listing_drop_share`]).
        pub listing_drop_share: Option<f64> = None,
        /// Share (0..1) of status posts held `hold_ms` before the provider
        /// processes them: the post is made after the hold even if the client
        /// has given up by then (NOWEB retries a failed chunk up to 5 times
        /// over about 20 s under the same id). Drawn after the fault draw, for
        /// posts that drew no fault before processing.
        pub hold_share: f64 = 0.0,
        /// How long a held post waits before it is processed.
        pub hold_ms: u64 = 20_000,
        /// Share (0..1) of look-ups (by id and listing pages) answered 500 by
        /// the engine, nothing read: GOWS surfaces some of its errors so.
        /// `None`: the engine's default ([`SimEngine::engine_error_share`]).
        pub engine_error_share: Option<f64> = None,
        /// Share (0..1) of posts after which a contact's status (`fromMe:
        /// false`) lands in the `status@broadcast` chat, as other people's
        /// stories do. `None`: the engine's default
        /// ([`SimEngine::contact_status_share`]).
        pub contact_status_share: Option<f64> = None,
        /// WEBJS only: share (0..1) of posts answered 200 with an empty body
        /// (whatsapp-web.js found no last own status to answer with).
        pub empty_answer_share: f64 = 0.0,
        /// NOWEB only: share (0..1) of the ids the simulator makes in Baileys'
        /// legacy form, `3EB0` + 36 hex digits, instead of the current 18.
        pub legacy_id_share: f64 = 0.0,
        /// Instance ids (Wawp) or session names (WAHA) whose session has
        /// stopped on an error: posts are answered 422, session info says
        /// `FAILED`.
        pub failed_instances: BTreeSet<String> = BTreeSet::new(),
        /// Seed for the fault and latency draws; `None` seeds from the OS.
        pub seed: Option<u64> = None,
        /// Webhook events to statusd (`sim/webhooks.rs`); None: none sent.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub webhooks: Option<super::webhooks::WebhookKnobs> = None,
    }
}

/// The provider a simulator plays. Serialized lowercase: `"wawp"`,
/// `"noweb"`, `"gows"`, `"webjs"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimEngine {
    /// Wawp's hosted API (a front of WAHA). Its docs list no `id` field on
    /// status bodies and say it "currently auto-assigns IDs on send"
    /// (<https://docs.wawp.net>, "24 Hour Status" pages).
    #[default]
    Wawp,
    /// WAHA's NOWEB engine (Baileys).
    Noweb,
    /// WAHA's GOWS engine (whatsmeow).
    Gows,
    /// WAHA's WEBJS engine (whatsapp-web.js in a browser).
    Webjs,
}

impl SimEngine {
    pub const ALL: [SimEngine; 4] = [
        SimEngine::Wawp,
        SimEngine::Noweb,
        SimEngine::Gows,
        SimEngine::Webjs,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SimEngine::Wawp => "wawp",
            SimEngine::Noweb => "noweb",
            SimEngine::Gows => "gows",
            SimEngine::Webjs => "webjs",
        }
    }

    /// The engine name WAHA reports in session info (`engine.engine`).
    pub fn waha_name(self) -> &'static str {
        match self {
            SimEngine::Wawp | SimEngine::Noweb => "NOWEB",
            SimEngine::Gows => "GOWS",
            SimEngine::Webjs => "WEBJS",
        }
    }

    /// WAHA ≥ 2025.3 honours a supplied `id` on NOWEB and GOWS; WEBJS
    /// ignores it; Wawp "currently auto-assigns IDs on send".
    pub fn honours_supplied_ids(self) -> bool {
        matches!(self, SimEngine::Noweb | SimEngine::Gows)
    }

    /// NOWEB keeps no message store unless the session enables it (off by
    /// default); the others can look a message up by id.
    pub fn keeps_message_store(self) -> bool {
        !matches!(self, SimEngine::Noweb)
    }

    /// WAHA's engines leave some items out of a listing page; our model of
    /// Wawp lists every item.
    pub fn listing_drop_share(self) -> f64 {
        match self {
            SimEngine::Wawp => 0.0,
            _ => 0.05,
        }
    }

    /// GOWS answers some engine errors (gRPC failures of its Go process)
    /// as 500 on reads too.
    pub fn engine_error_share(self) -> f64 {
        match self {
            SimEngine::Gows => 0.02,
            _ => 0.0,
        }
    }

    /// Contacts' statuses share the chat on WAHA's engines; our model of
    /// Wawp has none (the simulator's historical behaviour).
    pub fn contact_status_share(self) -> f64 {
        match self {
            SimEngine::Wawp => 0.0,
            _ => 0.05,
        }
    }

    /// Hex digits after `3EB0` in the ids this engine makes: Baileys'
    /// current generator and whatsmeow's give 18; WhatsApp Web's (WEBJS,
    /// and our model of Wawp) 20.
    pub fn id_hex_digits(self) -> usize {
        match self {
            SimEngine::Noweb | SimEngine::Gows => 18,
            SimEngine::Wawp | SimEngine::Webjs => 20,
        }
    }
}

impl fmt::Display for SimEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SimEngine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SimEngine::ALL
            .into_iter()
            .find(|e| e.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown engine `{s}`: expected wawp, noweb, gows or webjs"))
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

    /// The knobs of `engine` with no faults: what `statusd sim --engine`
    /// starts from.
    pub fn for_engine(engine: SimEngine) -> SimConfig {
        SimConfig {
            engine,
            ..SimConfig::default()
        }
    }

    /// Whether a supplied `id` is honoured: `supplied_ids`, else
    /// `auto_assign_ids` (true means not honoured), else the engine's way.
    pub fn honours_supplied_ids(&self) -> bool {
        match self.supplied_ids {
            Some(b) => b,
            None if self.auto_assign_ids => false,
            None => self.engine.honours_supplied_ids(),
        }
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
        for (name, share) in [
            ("hold_share", Some(self.hold_share)),
            ("empty_answer_share", Some(self.empty_answer_share)),
            ("legacy_id_share", Some(self.legacy_id_share)),
            ("engine_error_share", self.engine_error_share),
            ("contact_status_share", self.contact_status_share),
        ] {
            if share.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
                problems.push(format!("{name} must be a share between 0 and 1"));
            }
        }
        if let Some(d) = self.listing_drop_share {
            if !(0.0..1.0).contains(&d) {
                problems.push("listing_drop_share must be a share in [0, 1)".into());
            }
        }
        if self.auto_assign_ids && self.supplied_ids == Some(true) {
            problems.push(
                "auto_assign_ids = true contradicts supplied_ids = true (auto_assign_ids is the old name of supplied_ids = false)".into(),
            );
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

/// The knobs whose `None` means "the engine's default", each read through
/// the method of [`SimEngine`]'s name: `method(knob) -> Type`.
macro_rules! engine_defaults {
    ($($(#[$doc:meta])* $method:ident($knob:ident) -> $ty:ty;)*) => {
        impl SimConfig {
            $(
                $(#[$doc])*
                pub fn $method(&self) -> $ty {
                    self.$knob.unwrap_or_else(|| self.engine.$method())
                }
            )*
        }
    };
}

engine_defaults! {
    /// Whether a look-up by id can find a posted status.
    keeps_message_store(message_store) -> bool;
    /// The share of listing items left out of each page.
    listing_drop_share(listing_drop_share) -> f64;
    /// The share of look-ups answered 500 by the engine.
    engine_error_share(engine_error_share) -> f64;
    /// The share of posts followed by a contact's status in the chat.
    contact_status_share(contact_status_share) -> f64;
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
