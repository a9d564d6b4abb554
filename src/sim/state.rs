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
use crate::wire::ids::local_message_id;

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
    Disconnected,
}

/// What the handler must do with one request, decided under the lock.
#[derive(Debug, Clone)]
pub struct Plan {
    pub latency: Duration,
    pub fault: Option<Fault>,
    pub hang: Duration,
    pub retry_after_secs: u64,
}

/// The result of committing a post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub id: String,
    pub timestamp: i64,
}

struct Inner {
    config: SimConfig,
    rng: StdRng,
    statuses: Vec<PostedStatus>,
    /// (instance, id) → index in `statuses`.
    by_id: HashMap<(String, String), usize>,
    /// (instance, fingerprint) → times shown.
    shown: HashMap<(String, String), u64>,
    stats: SimStats,
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
                stats: SimStats::default(),
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
        self.lock().config.disconnected_instances.contains(instance)
    }

    /// Counts a refusal of a post because the session is down.
    pub fn count_disconnected(&self) {
        *self
            .lock()
            .stats
            .faults
            .entry("disconnected".into())
            .or_default() += 1;
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
        Plan {
            latency,
            fault,
            hang: Duration::from_millis(g.config.hang_ms),
            retry_after_secs: g.config.retry_after_secs,
        }
    }

    pub fn count_fault(&self, fault: Fault) {
        *self
            .lock()
            .stats
            .faults
            .entry(fault.name().into())
            .or_default() += 1;
    }

    /// Posts a validated status: a known supplied id is recognised (not
    /// shown again); otherwise the status is shown, and counted as a
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
        let use_supplied = supplied_id.clone().filter(|_| !g.config.auto_assign_ids);
        if let Some(id) = &use_supplied {
            if let Some(&i) = g.by_id.get(&(instance.to_string(), id.clone())) {
                g.stats.deduplicated_by_id += 1;
                return Committed {
                    id: id.clone(),
                    timestamp: g.statuses[i].posted_at.timestamp(),
                };
            }
        }
        let id = use_supplied.unwrap_or_else(|| {
            // A fresh id, never one already in use on this instance.
            loop {
                let id = local_message_id();
                if !g.by_id.contains_key(&(instance.to_string(), id.clone())) {
                    break id;
                }
            }
        });
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
        g.statuses.push(PostedStatus {
            id: id.clone(),
            supplied_id,
            instance: instance.to_string(),
            kind,
            fingerprint,
            body: raw_body,
            posted_at: now,
            deleted: false,
        });
        g.by_id.insert((instance.to_string(), id.clone()), index);
        self.webhooks
            .on_posted(g.config.webhooks.as_ref(), instance, &id, kind);
        Committed {
            id,
            timestamp: now.timestamp(),
        }
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
        let i = g
            .by_id
            .get(&(instance.to_string(), id.to_string()))
            .copied()?;
        g.statuses.get(i).cloned()
    }

    /// The instance's statuses, newest first, one page; counted as a
    /// look-up.
    pub fn list(&self, instance: &str, offset: usize, limit: usize) -> Vec<PostedStatus> {
        let mut g = self.lock();
        g.stats.lookups += 1;
        g.statuses
            .iter()
            .rev()
            .filter(|s| s.instance == instance)
            .skip(offset)
            .take(limit)
            .cloned()
            .collect()
    }
}
