//! The simulator's memory: what viewers see ([`PostedStatus`]), the counters
//! ([`SimStats`]), the knobs and the random source, behind one std mutex
//! (never held across an await).

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::knobs::{InvalidSimConfig, SimConfig, SimError};
use crate::model::{Kind, StatusBody};
use crate::wire::ids::engine_message_id;
use crate::wire::{SESSION_FAILED, SESSION_SCAN_QR_CODE, SESSION_WORKING};

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
    /// Look-ups by id plus listing pages served.
    pub lookups: u64,
    /// Look-ups by id (`messages/get`, WAHA `…/messages/{id}`).
    #[serde(default)]
    pub lookups_by_id: u64,
    /// Listing pages served (`chats/messages`, WAHA `…/messages`).
    #[serde(default)]
    pub listing_pages: u64,
    /// Posts held before processing (`hold_share`), counted when the hold
    /// starts; each is posted when it ends.
    #[serde(default)]
    pub held: u64,
    /// Session configs replaced (WAHA `PUT /api/sessions/{session}`).
    #[serde(default)]
    pub session_updates: u64,
    /// Webhooks set (Wawp `POST /v2/webhook/set`).
    #[serde(default)]
    pub webhooks_set: u64,
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

/// The one fault drawn for a request, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    RateLimited,
    Error5xxBefore,
    Hang,
    LostResponse,
    Error5xxAfter,
    HangAfterCommit,
    Malformed,
}

impl Fault {
    fn from_name(name: &str) -> Option<Fault> {
        Some(match name {
            "rate_limited_429" => Fault::RateLimited,
            "error_5xx_before" => Fault::Error5xxBefore,
            "hang" => Fault::Hang,
            "lost_response" => Fault::LostResponse,
            "error_5xx_after" => Fault::Error5xxAfter,
            "hang_after_commit" => Fault::HangAfterCommit,
            "malformed_body" => Fault::Malformed,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Fault::RateLimited => "rate_limited_429",
            Fault::Error5xxBefore => "error_5xx_before",
            Fault::Hang => "hang",
            Fault::LostResponse => "lost_response",
            Fault::Error5xxAfter => "error_5xx_after",
            Fault::HangAfterCommit => "hang_after_commit",
            Fault::Malformed => "malformed_body",
        }
    }
}

/// Why a request is refused before anything else happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unauthorized,
}

/// What the handler must do with one request, decided under the lock.
#[derive(Debug, Clone)]
pub struct Plan {
    pub latency: Duration,
    pub fault: Option<Fault>,
    pub hang: Duration,
    pub retry_after_secs: u64,
    /// A post held this long before it is processed (`hold_share`).
    pub hold: Option<Duration>,
    /// A read answered 500 by the engine (`engine_error_share`).
    pub engine_error: bool,
    /// A WEBJS post answered with an empty body (`empty_answer_share`).
    pub empty_answer: bool,
}

/// The result of committing a post: the status as shown (the earlier one
/// when the post was recognised by its supplied id).
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub status: PostedStatus,
}

/// One item of an instance's `status@broadcast` chat, in order of arrival.
#[derive(Debug, Clone)]
enum Entry {
    /// One of our statuses: index in `Inner::statuses`.
    Own(usize),
    /// A contact's status (`fromMe: false`).
    Contact(ContactStatus),
    /// An item engines leave out of listings (a reaction, a revoke): it
    /// takes a place in the chat, so a page that covers it comes back one
    /// short.
    Hidden { at: DateTime<Utc> },
}

/// A contact's status in the chat: never ours, never counted.
#[derive(Debug, Clone, PartialEq)]
pub struct ContactStatus {
    pub id: String,
    pub from: String,
    pub text: String,
    pub posted_at: DateTime<Utc>,
}

/// One listed item.
#[derive(Debug, Clone, PartialEq)]
pub enum Listed {
    Own(PostedStatus),
    Contact(ContactStatus),
}

/// The filters of a listing (WAHA's `GetChatMessagesFilter`), each
/// inclusive; `None` filters nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub from_me: Option<bool>,
    pub timestamp_gte: Option<i64>,
    pub timestamp_lte: Option<i64>,
}

struct Inner {
    config: SimConfig,
    rng: StdRng,
    statuses: Vec<PostedStatus>,
    /// (instance, id) → index in `statuses`.
    by_id: HashMap<(String, String), usize>,
    /// (instance, fingerprint) → times shown.
    shown: HashMap<(String, String), u64>,
    /// instance → its status chat, oldest first.
    chats: HashMap<String, Vec<Entry>>,
    stats: SimStats,
    /// Session configs set by `PUT /api/sessions/{session}`.
    session_configs: HashMap<String, serde_json::Value>,
}

impl Inner {
    /// Where `instance`'s webhook events go, or that they stop.
    fn set_webhook_target(&mut self, instance: &str, target: Option<super::WebhookTarget>) {
        match target {
            Some(t) => {
                self.config
                    .webhooks
                    .get_or_insert_with(Default::default)
                    .targets
                    .insert(instance.to_string(), t);
            }
            None => {
                if let Some(k) = self.config.webhooks.as_mut() {
                    k.targets.remove(instance);
                }
            }
        }
    }

    /// A fresh id in the engine's shape, never one in use on `instance`.
    fn fresh_id(&mut self, instance: &str) -> String {
        loop {
            let id = self.new_message_id();
            if !self.by_id.contains_key(&(instance.to_string(), id.clone())) {
                break id;
            }
        }
    }

    /// An id as the engine's generator makes it.
    fn new_message_id(&mut self) -> String {
        let engine = self.config.engine;
        let legacy = engine == super::SimEngine::Noweb
            && self.config.legacy_id_share > 0.0
            && self.rng.random::<f64>() < self.config.legacy_id_share;
        engine_message_id(if legacy { 36 } else { engine.id_hex_digits() })
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random::<f64>() < p
    }
}

pub struct Shared {
    inner: Mutex<Inner>,
    pub cancel: CancellationToken,
    /// Webhook events of shown statuses (`sim/webhooks.rs`).
    pub webhooks: std::sync::Arc<super::webhooks::Emitter>,
}

fn rng_for(seed: Option<u64>) -> StdRng {
    match seed {
        Some(s) => StdRng::seed_from_u64(s),
        None => StdRng::from_os_rng(),
    }
}

impl Shared {
    pub fn new(config: SimConfig, cancel: CancellationToken) -> Shared {
        Shared {
            inner: Mutex::new(Inner {
                rng: rng_for(config.seed),
                config,
                statuses: Vec::new(),
                by_id: HashMap::new(),
                shown: HashMap::new(),
                chats: HashMap::new(),
                stats: SimStats::default(),
                session_configs: HashMap::new(),
            }),
            webhooks: std::sync::Arc::new(super::webhooks::Emitter::new(cancel.clone())),
            cancel,
        }
    }

    /// The lock; a panic elsewhere while holding it leaves data that is
    /// still consistent enough for a test double, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stats(&self) -> SimStats {
        self.lock().stats.clone()
    }

    pub fn posted(&self) -> Vec<PostedStatus> {
        self.lock().statuses.clone()
    }

    pub fn config(&self) -> SimConfig {
        self.lock().config.clone()
    }

    pub fn set_config(&self, config: SimConfig) -> Result<(), SimError> {
        config.validate()?;
        let mut g = self.lock();
        if config.seed.is_some() && config.seed != g.config.seed {
            g.rng = rng_for(config.seed);
        }
        g.config = config;
        Ok(())
    }

    /// Applies a partial JSON config (the body of `POST /_sim/config`):
    /// named knobs change, the rest (tokens included) stay.
    pub fn patch_config(&self, patch: &Value) -> Result<SimConfig, SimError> {
        let Value::Object(patch) = patch else {
            return Err(InvalidSimConfig::one("the body must be a JSON object").into());
        };
        let current = self.config();
        let mut merged = match serde_json::to_value(&current) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        for (k, v) in patch {
            merged.insert(k.clone(), v.clone());
        }
        let mut next: SimConfig = serde_json::from_value(Value::Object(merged))
            .map_err(|e| InvalidSimConfig::one(e.to_string()))?;
        if !patch.contains_key("tokens") {
            next.tokens = current.tokens;
        }
        self.set_config(next.clone())?;
        Ok(next)
    }

    pub fn reset(&self) {
        let mut g = self.lock();
        g.statuses.clear();
        g.by_id.clear();
        g.shown.clear();
        g.chats.clear();
        g.stats = SimStats::default();
        let seed = g.config.seed;
        g.rng = rng_for(seed);
    }

    /// Counts the request and checks its credentials.
    pub fn admit(&self, instance: &str, token: &str) -> Result<(), Refusal> {
        let mut g = self.lock();
        g.stats.requests += 1;
        let c = &g.config;
        let token_ok = !instance.is_empty()
            && !token.is_empty()
            && !c.unauthorized_instances.contains(instance)
            && (c.tokens.is_empty() || c.tokens.get(instance).map(String::as_str) == Some(token));
        if !token_ok {
            *g.stats.faults.entry("unauthorized".into()).or_default() += 1;
            return Err(Refusal::Unauthorized);
        }
        Ok(())
    }

    /// Whether the instance's session is (configured as) not connected.
    pub fn disconnected(&self, instance: &str) -> bool {
        self.session_status(instance) != SESSION_WORKING
    }

    /// A session's config as WAHA keeps it (`SessionInfo.config`): what
    /// the last `PUT /api/sessions/{session}` set, else an empty one.
    pub fn session_config(&self, session: &str) -> serde_json::Value {
        self.lock()
            .session_configs
            .get(session)
            .cloned()
            .unwrap_or_else(|| serde_json::json!({ "metadata": null, "webhooks": [] }))
    }

    /// Replaces a session's config, as WAHA's session update does; its
    /// first webhook that asks for the status events becomes where this
    /// session's events go (with its `hmac.key`), and none stops them.
    pub fn set_session_config(&self, session: &str, config: serde_json::Value) {
        let mut g = self.lock();
        g.stats.session_updates += 1;
        let target = super::webhooks::target_in(&config);
        g.session_configs.insert(session.to_string(), config);
        g.set_webhook_target(session, target);
    }

    /// Wawp's `POST /v2/webhook/set`: the instance's events go to `target`
    /// (None: a webhook switched off or without the status events).
    pub fn set_webhook(&self, instance: &str, target: Option<super::WebhookTarget>) {
        let mut g = self.lock();
        g.stats.webhooks_set += 1;
        g.set_webhook_target(instance, target);
    }

    /// The session's `status` as session info reports it.
    pub fn session_status(&self, instance: &str) -> &'static str {
        let g = self.lock();
        if g.config.failed_instances.contains(instance) {
            SESSION_FAILED
        } else if g.config.disconnected_instances.contains(instance) {
            SESSION_SCAN_QR_CODE
        } else {
            SESSION_WORKING
        }
    }

    /// Counts a refusal of a post because the session is down.
    pub fn count_disconnected(&self) {
        self.count("disconnected");
    }

    /// Draws latency, and a fault when `with_faults`.
    pub fn plan(&self, with_faults: bool) -> Plan {
        let mut g = self.lock();
        let (lo, hi) = (g.config.latency_min_ms, g.config.latency_max_ms);
        let latency = if hi > lo {
            Duration::from_millis(g.rng.random_range(lo..=hi))
        } else {
            Duration::from_millis(lo)
        };
        let fault = if with_faults {
            let u: f64 = g.rng.random();
            let mut acc = 0.0;
            let mut chosen = None;
            for (name, p) in g.config.fault_table() {
                acc += p;
                if p > 0.0 && u < acc {
                    chosen = Fault::from_name(name);
                    break;
                }
            }
            chosen
        } else {
            None
        };
        // Drawn for every request, used by the endpoints they apply to, so
        // that a seed gives the same sequence whatever the endpoint mix.
        let (hold_share, error_share, empty_share) = (
            g.config.hold_share,
            g.config.engine_error_share(),
            g.config.empty_answer_share,
        );
        let hold = g
            .chance(hold_share)
            .then(|| Duration::from_millis(g.config.hold_ms));
        let engine_error = g.chance(error_share);
        let empty_answer = g.chance(empty_share);
        Plan {
            latency,
            fault,
            hang: Duration::from_millis(g.config.hang_ms),
            retry_after_secs: g.config.retry_after_secs,
            hold,
            engine_error,
            empty_answer,
        }
    }

    /// Counts a post whose hold starts.
    pub fn count_held(&self) {
        self.lock().stats.held += 1;
    }

    /// A fresh id from the engine's generator (`new-message-id`).
    pub fn new_message_id(&self) -> String {
        self.lock().new_message_id()
    }

    /// The engine the simulator plays now.
    pub fn engine(&self) -> super::SimEngine {
        self.lock().config.engine
    }

    /// Counts a read answered 500 by the engine (`engine_error_share`).
    pub fn count_engine_error(&self) {
        self.count("engine_error");
    }

    pub fn count_fault(&self, fault: Fault) {
        self.count(fault.name());
    }

    /// Adds one to the count `name` in [`SimStats::faults`](super::SimStats::faults).
    fn count(&self, name: &str) {
        *self.lock().stats.faults.entry(name.into()).or_default() += 1;
    }

    /// Posts a validated status: a supplied id already shown on this
    /// instance is recognised (not shown again) when the engine honours
    /// supplied ids; otherwise the status is shown, and counted as a
    /// duplicate if its content was already shown on this instance.
    pub fn commit(
        &self,
        instance: &str,
        kind: Kind,
        body: &StatusBody,
        raw_body: Value,
        supplied_id: Option<String>,
    ) -> Committed {
        let mut g = self.lock();
        let now = Utc::now();
        let honoured = g.config.honours_supplied_ids();
        let use_supplied = supplied_id.clone().filter(|_| honoured);
        if let Some(id) = &use_supplied {
            if let Some(&i) = g.by_id.get(&(instance.to_string(), id.clone())) {
                g.stats.deduplicated_by_id += 1;
                return Committed {
                    status: g.statuses[i].clone(),
                };
            }
        }
        let id = match use_supplied {
            Some(id) => id,
            None => g.fresh_id(instance),
        };
        let fingerprint = body.fingerprint();
        let seen = g
            .shown
            .entry((instance.to_string(), fingerprint.clone()))
            .or_default();
        *seen += 1;
        if *seen > 1 {
            g.stats.duplicates += 1;
        }
        g.stats.posted += 1;
        let index = g.statuses.len();
        let status = PostedStatus {
            id: id.clone(),
            supplied_id,
            instance: instance.to_string(),
            kind,
            fingerprint,
            body: raw_body,
            posted_at: now,
            deleted: false,
        };
        g.statuses.push(status.clone());
        self.webhooks
            .on_posted(g.config.webhooks.as_ref(), instance, &id, kind);
        g.by_id.insert((instance.to_string(), id), index);
        // The chat around it: now and then a hidden item (a reaction) and a
        // contact's status, each drawn with its share.
        let (hidden_share, contact_share) = (
            g.config.listing_drop_share(),
            g.config.contact_status_share(),
        );
        let hidden = g.chance(hidden_share);
        let contact = g.chance(contact_share);
        let chat = g.chats.entry(instance.to_string()).or_default();
        if hidden {
            chat.push(Entry::Hidden { at: now });
        }
        chat.push(Entry::Own(index));
        if contact {
            let n = chat.len();
            let id = engine_message_id(20);
            g.chats
                .entry(instance.to_string())
                .or_default()
                .push(Entry::Contact(ContactStatus {
                    id,
                    from: CONTACT_JID.to_string(),
                    text: format!("a contact's story #{n}"),
                    posted_at: now,
                }));
        }
        Committed { status }
    }

    /// The newest own status of the instance (what WEBJS answers a post
    /// with: `myStatus.msgs.last()`).
    pub fn latest(&self, instance: &str) -> Option<PostedStatus> {
        let g = self.lock();
        g.statuses
            .iter()
            .rev()
            .find(|s| s.instance == instance)
            .cloned()
    }

    /// Marks a status deleted; false when the id is unknown.
    pub fn delete(&self, instance: &str, id: &str) -> bool {
        let mut g = self.lock();
        match g
            .by_id
            .get(&(instance.to_string(), id.to_string()))
            .copied()
        {
            Some(i) => {
                if !g.statuses[i].deleted {
                    g.statuses[i].deleted = true;
                    g.stats.deleted += 1;
                    // The revoke is a message of its own in the chat, one
                    // that listings leave out.
                    g.chats
                        .entry(instance.to_string())
                        .or_default()
                        .push(Entry::Hidden { at: Utc::now() });
                }
                true
            }
            None => false,
        }
    }

    /// One status by id, counted as a look-up.
    pub fn find(&self, instance: &str, id: &str) -> Option<PostedStatus> {
        let mut g = self.lock();
        g.stats.lookups += 1;
        g.stats.lookups_by_id += 1;
        let i = g
            .by_id
            .get(&(instance.to_string(), id.to_string()))
            .copied()?;
        g.statuses.get(i).cloned()
    }

    /// One page of the instance's status chat, newest first: the items
    /// that pass `filter`, from `offset`, `limit` of them — less the hidden
    /// ones among them, so a page can come back short without being the
    /// last. Counted as a look-up.
    pub fn list(
        &self,
        instance: &str,
        filter: ListFilter,
        offset: usize,
        limit: usize,
    ) -> Vec<Listed> {
        let mut g = self.lock();
        g.stats.lookups += 1;
        g.stats.listing_pages += 1;
        let Some(chat) = g.chats.get(instance) else {
            return Vec::new();
        };
        let keep = |from_me: bool, at: DateTime<Utc>| {
            let t = at.timestamp();
            filter.from_me.is_none_or(|f| f == from_me)
                && filter.timestamp_gte.is_none_or(|gte| t >= gte)
                && filter.timestamp_lte.is_none_or(|lte| t <= lte)
        };
        chat.iter()
            .rev()
            .filter(|e| match e {
                Entry::Own(i) => keep(true, g.statuses[*i].posted_at),
                Entry::Contact(c) => keep(false, c.posted_at),
                Entry::Hidden { at } => keep(true, *at),
            })
            .skip(offset)
            .take(limit)
            .filter_map(|e| match e {
                Entry::Own(i) => Some(Listed::Own(g.statuses[*i].clone())),
                Entry::Contact(c) => Some(Listed::Contact(c.clone())),
                Entry::Hidden { .. } => None,
            })
            .collect()
    }
}

/// The JID of the contact whose statuses share the chat.
pub const CONTACT_JID: &str = "20000000000@c.us";
