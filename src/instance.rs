//! A configured provider instance as the running process holds it: its
//! client, its rate limiter and whether it is paused. The daemon's services
//! and the operator actions ([`crate::ops`]) both act on it, so it lives
//! below both.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::metrics as names;
use crate::provider::Provider;

/// Every configured instance by name.
pub type Instances<P> = HashMap<String, Arc<Instance<P>>>;

/// One configured provider instance with its rate limiter and pause state.
pub struct Instance<P> {
    pub name: String,
    pub provider: P,
    pub(crate) limiter: DefaultDirectRateLimiter,
    /// The limiter's rate (the dispatcher claims about a second of it ahead).
    pub rate_per_sec: u32,
    /// Calls of this instance in flight at once (see
    /// [`Instance::with_max_in_flight`]).
    pub max_in_flight: usize,
    /// Set after 401/403: no claims for this instance until a probe succeeds.
    paused: Mutex<Option<Pause>>,
}

/// Why and until when an instance is paused (in memory; the prober writes
/// it to the store so that `statusd stats`, another process, can show it).
#[derive(Debug, Clone)]
struct Pause {
    probe_at: Instant,
    reason: String,
}

impl<P: Provider> Instance<P> {
    pub fn new(name: &str, provider: P, rate_per_sec: u32, burst: u32) -> Instance<P> {
        let rate = NonZeroU32::new(rate_per_sec.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
        Instance {
            name: name.to_string(),
            provider,
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            rate_per_sec: rate.get(),
            max_in_flight: crate::config::DEFAULT_MAX_IN_FLIGHT,
            paused: Mutex::new(None),
        }
    }

    /// Caps this instance's calls in flight (at least 1).
    pub fn with_max_in_flight(mut self, n: usize) -> Instance<P> {
        self.max_in_flight = n.max(1);
        self
    }

    pub fn is_paused(&self) -> bool {
        self.pause_reason().is_some()
    }

    /// Why the instance is paused, if it is.
    pub fn pause_reason(&self) -> Option<String> {
        self.paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|p| p.reason.clone())
    }

    pub(crate) fn pause(&self, probe_after: Duration, reason: &str) {
        let mut p = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none() {
            tracing::warn!(instance = %self.name, reason, "instance is down: pausing its rows and probing");
        }
        *p = Some(Pause {
            probe_at: Instant::now() + probe_after,
            reason: reason.to_string(),
        });
        ::metrics::gauge!(names::INSTANCE_PAUSED, names::INSTANCE_LABEL => self.name.clone())
            .set(1.0);
    }

    pub(crate) fn resume(&self) {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner()) = None;
        tracing::info!(instance = %self.name, "instance is back: resuming");
        ::metrics::gauge!(names::INSTANCE_PAUSED, names::INSTANCE_LABEL => self.name.clone())
            .set(0.0);
    }

    pub(crate) fn probe_due(&self) -> bool {
        matches!(&*self.paused.lock().unwrap_or_else(|e| e.into_inner()), Some(p) if p.probe_at <= Instant::now())
    }
}
