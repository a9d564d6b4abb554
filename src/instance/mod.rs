//! A configured provider instance as the running process holds it: its
//! client, its rate limiter and whether it is paused; and the [`Registry`]
//! of every instance a process knows — the configuration file's, fixed at
//! start, and the `status_instances` table's, added, changed, disabled and
//! removed at runtime. The daemon's services and the operator actions
//! ([`crate::ops`]) both act on it, so it lives below both.
//!
//! # Which instances send
//!
//! - A name in the configuration file wins: a table row of the same name is
//!   *shadowed* (shown by `statusd instance ls`, never used), because the
//!   file is the reviewed deployment and an API call must not redirect its
//!   traffic; `statusd instance add` refuses such a name where it can see
//!   the file.
//! - A table instance that is disabled, removed, whose settings are invalid
//!   or whose token cannot be read in this process is *held*: known (its
//!   rows are valid and wait, never `invalid`), not sending, and reported
//!   as paused with the reason.
//! - A name in neither is unknown: a row naming it becomes `invalid` — but
//!   only once this process's view of the table is newer than the row, so
//!   that a row enqueued right after `statusd instance add` is never judged
//!   by a view from before the add.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::InstanceConfig;
use crate::metrics as names;
use crate::provider::Provider;
use crate::store::{InstanceRecord, InstanceTable, Store};

/// Every configured instance by name.
pub type Instances<P> = HashMap<String, Arc<Instance<P>>>;

/// Builds an instance's provider client from its settings (the token
/// resolved by [`InstanceConfig::token`]); the error names the setting.
pub type MakeProvider<P> = Arc<dyn Fn(&str, &InstanceConfig) -> Result<P, String> + Send + Sync>;

/// What a process knows about instances at one moment. Replaced whole on
/// every change, so a reader never sees half of one.
pub struct Snapshot<P> {
    /// The instances that send, by name.
    pub running: Instances<P>,
    /// Known instances that do not send here, with why (disabled, removed,
    /// invalid settings, unreadable token). Their rows wait.
    pub held: BTreeMap<String, String>,
    /// Table rows hidden by a file instance of the same name.
    pub shadowed: BTreeSet<String>,
    /// Held because an operator removed them (`statusd instance rm`): their
    /// rows wait, but nothing new is enqueued for them through statusd.
    pub removed: BTreeSet<String>,
    /// Names that come from the table (running or held).
    pub from_table: BTreeSet<String>,
    /// Database time of the table read this view reflects; None when the
    /// process does not read the table (then every name is judged as is).
    pub read_at: Option<DateTime<Utc>>,
    /// Per table instance: a digest of its settings and token (in memory
    /// only), to rebuild a client only when one of them changed.
    fingerprints: HashMap<String, [u8; 32]>,
}

impl<P> Snapshot<P> {
    /// Running or held.
    pub fn is_known(&self, name: &str) -> bool {
        self.running.contains_key(name) || self.held.contains_key(name)
    }
}

/// Every instance this process knows (see the module docs), shared by the
/// daemon's services and the admin API. Reads are a lock and an `Arc`
/// clone; a reload swaps the whole [`Snapshot`].
pub struct Registry<P> {
    current: RwLock<Arc<Snapshot<P>>>,
    /// Set when held instances must be reported again (see `forget_held`).
    report_all: std::sync::atomic::AtomicBool,
}

/// What a reload changed, for the caller to record and act on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RegistryChanges {
    /// Instances that began sending (added, enabled, restored, changed).
    pub started: Vec<String>,
    /// Held instances whose reason is new or changed: (name, reason).
    pub held: Vec<(String, String)>,
    /// Instances no longer held (sending again, or gone from the table).
    pub released: Vec<String>,
}

impl RegistryChanges {
    pub fn is_empty(&self) -> bool {
        self.started.is_empty() && self.held.is_empty() && self.released.is_empty()
    }
}

impl<P: Provider> Registry<P> {
    /// The file's instances; nothing from the table until [`Registry::apply`].
    pub fn new(instances: Vec<Instance<P>>) -> Registry<P> {
        Registry {
            current: RwLock::new(Arc::new(Snapshot {
                running: instances
                    .into_iter()
                    .map(|i| (i.name.clone(), Arc::new(i)))
                    .collect(),
                held: BTreeMap::new(),
                shadowed: BTreeSet::new(),
                removed: BTreeSet::new(),
                from_table: BTreeSet::new(),
                read_at: None,
                fingerprints: HashMap::new(),
            })),
            report_all: Default::default(),
        }
    }

    /// Marks this registry as one the table feeds, before its first read:
    /// until a read succeeds, no row is judged by its instance name (a row
    /// of a table instance must not become `invalid` because the database
    /// did not answer the first read).
    pub fn expect_table(&self) {
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        if cur.read_at.is_none() {
            let s = &**cur;
            *cur = Arc::new(Snapshot {
                running: s.running.clone(),
                held: s.held.clone(),
                shadowed: s.shadowed.clone(),
                removed: s.removed.clone(),
                from_table: s.from_table.clone(),
                read_at: Some(DateTime::<Utc>::UNIX_EPOCH),
                fingerprints: s.fingerprints.clone(),
            });
        }
    }

    /// Makes the next [`Registry::apply`] report every held instance
    /// again (after recording them in the store failed).
    pub fn forget_held(&self) {
        self.report_all
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Arc<Snapshot<P>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A sending instance by name.
    pub fn get(&self, name: &str) -> Option<Arc<Instance<P>>> {
        self.snapshot().running.get(name).cloned()
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.snapshot().running.contains_key(name)
    }

    /// The sending instances' names.
    pub fn keys(&self) -> Vec<String> {
        self.snapshot().running.keys().cloned().collect()
    }

    /// The sending instances.
    pub fn values(&self) -> Vec<Arc<Instance<P>>> {
        self.snapshot().running.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.snapshot().running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Running or held: a row naming it is valid and waits for it.
    pub fn is_known(&self, name: &str) -> bool {
        self.snapshot().is_known(name)
    }

    /// Known instances that do not send here, with why.
    pub fn held(&self) -> BTreeMap<String, String> {
        self.snapshot().held.clone()
    }

    /// Names whose rows must not be claimed: paused after 401/403, or held.
    pub fn not_sending(&self) -> Vec<String> {
        let s = self.snapshot();
        s.running
            .values()
            .filter(|i| i.is_paused())
            .map(|i| i.name.clone())
            .chain(s.held.keys().cloned())
            .collect()
    }

    /// Every known name (running and held), sorted: the bounded label set
    /// of the per-instance metrics.
    pub fn known_names(&self) -> Vec<String> {
        let s = self.snapshot();
        let mut v: Vec<String> = s.running.keys().chain(s.held.keys()).cloned().collect();
        v.sort_unstable();
        v
    }

    /// The names statusd accepts new rows for (`POST /v1/statuses`): known
    /// and not removed; disabled ones included (their rows wait).
    pub fn enqueue_names(&self) -> Vec<String> {
        let s = self.snapshot();
        let mut v: Vec<String> = s
            .running
            .keys()
            .chain(s.held.keys())
            .filter(|n| !s.removed.contains(*n))
            .cloned()
            .collect();
        v.sort_unstable();
        v
    }

    /// `name` as a metric label: itself if known, else `unknown`.
    pub fn label(&self, name: &str) -> String {
        if self.is_known(name) {
            name.to_string()
        } else {
            names::UNKNOWN_INSTANCE.to_string()
        }
    }

    /// Why a row naming `instance`, written at `written_at` (database
    /// time), cannot be posted here, or None. Unknown is judged only by a
    /// view of the table newer than the row (see the module docs); until
    /// then the row is not judged (None) and, having no client, waits.
    pub fn check_known(&self, instance: &str, written_at: DateTime<Utc>) -> Option<String> {
        let s = self.snapshot();
        if s.is_known(instance) {
            return None;
        }
        if s.read_at.is_some_and(|read| read <= written_at) {
            return None;
        }
        let mut known: Vec<&String> = s.running.keys().chain(s.held.keys()).collect();
        known.sort_unstable();
        crate::config::check_configured(instance, known)
            .err()
            .map(|e| e.to_string())
    }

    /// Replaces the table's part of the view with `table` (the file's
    /// instances stay as they are); `make` builds the client of an instance
    /// that is new or whose settings or token changed. Returns what changed.
    pub fn apply(&self, table: &InstanceTable, make: &MakeProvider<P>) -> RegistryChanges {
        let old = self.snapshot();
        let report_all = self
            .report_all
            .swap(false, std::sync::atomic::Ordering::Relaxed);
        let file: BTreeSet<&String> = old
            .running
            .keys()
            .filter(|n| !old.from_table.contains(*n))
            .collect();
        let mut running: Instances<P> = old
            .running
            .iter()
            .filter(|(n, _)| file.contains(n))
            .map(|(n, i)| (n.clone(), i.clone()))
            .collect();
        let mut held = BTreeMap::new();
        let mut shadowed = BTreeSet::new();
        let mut removed = BTreeSet::new();
        let mut from_table = BTreeSet::new();
        let mut fingerprints = HashMap::new();
        let mut changes = RegistryChanges::default();
        for rec in &table.rows {
            if file.contains(&rec.name) {
                if !old.shadowed.contains(&rec.name) {
                    tracing::warn!(instance = %rec.name, "the table's instance of this name is shadowed by the configuration file's (the file wins)");
                }
                shadowed.insert(rec.name.clone());
                continue;
            }
            from_table.insert(rec.name.clone());
            if rec.removed_at.is_some() {
                removed.insert(rec.name.clone());
            }
            match build(
                rec,
                old.running.get(&rec.name),
                old.fingerprints.get(&rec.name),
                make,
            ) {
                Built::Kept(inst, fp) => {
                    fingerprints.insert(rec.name.clone(), fp);
                    running.insert(rec.name.clone(), inst);
                }
                Built::New(inst, fp) => {
                    tracing::info!(instance = %rec.name, "instance from the table starts sending");
                    fingerprints.insert(rec.name.clone(), fp);
                    running.insert(rec.name.clone(), Arc::new(inst));
                    changes.started.push(rec.name.clone());
                }
                Built::Held(reason) => {
                    if report_all || old.held.get(&rec.name) != Some(&reason) {
                        tracing::warn!(instance = %rec.name, reason = %reason, "instance from the table does not send; its rows wait");
                        changes.held.push((rec.name.clone(), reason.clone()));
                    }
                    held.insert(rec.name.clone(), reason);
                }
            }
        }
        for name in old.held.keys() {
            if !held.contains_key(name) {
                changes.released.push(name.clone());
            }
        }
        let next = Snapshot {
            running,
            held,
            shadowed,
            removed,
            from_table,
            read_at: Some(table.read_at),
            fingerprints,
        };
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        changes
    }
}

enum Built<P> {
    Kept(Arc<Instance<P>>, [u8; 32]),
    New(Instance<P>, [u8; 32]),
    Held(String),
}

/// A table row as an instance of this process: the same one as before if
/// neither its settings nor its token changed (its rate limiter and pause
/// carry on), a new one if they did, or held with the reason.
fn build<P: Provider>(
    rec: &InstanceRecord,
    before: Option<&Arc<Instance<P>>>,
    before_fp: Option<&[u8; 32]>,
    make: &MakeProvider<P>,
) -> Built<P> {
    let name = &rec.name;
    if rec.removed_at.is_some() {
        return Built::Held(format!(
            "removed by an operator: its rows wait (`statusd instance add {name} …` sends them again)"
        ));
    }
    if !rec.enabled {
        return Built::Held(format!(
            "disabled by an operator: its rows wait (`statusd instance enable {name}` sends them again)"
        ));
    }
    let cfg = match InstanceConfig::from_table(&rec.settings) {
        Ok(c) => c,
        Err(e) => return Built::Held(format!("its settings in status_instances are invalid: {e}")),
    };
    let problems = cfg.problems("");
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        return Built::Held(format!("cannot send from this daemon: {}", list.join("; ")));
    }
    let token = match cfg.token() {
        Ok(t) => t,
        Err(e) => return Built::Held(format!("cannot send from this daemon: {e}")),
    };
    let mut h = Sha256::new();
    h.update(serde_json::Value::Object(rec.settings.clone()).to_string());
    h.update([0u8]);
    h.update(token.expose_secret().as_bytes());
    let fp: [u8; 32] = h.finalize().into();
    if let (Some(inst), Some(old)) = (before, before_fp) {
        if *old == fp {
            return Built::Kept(inst.clone(), fp);
        }
    }
    match make(name, &cfg) {
        Ok(p) => Built::New(
            Instance::new(name, p, cfg.rate_per_sec, cfg.burst)
                .with_max_in_flight(cfg.max_in_flight),
            fp,
        ),
        Err(e) => Built::Held(format!("cannot send from this daemon: {e}")),
    }
}

/// Keeps `registry` in step with the `status_instances` table until
/// `shutdown`: reloads on the store's change signal (PostgreSQL `NOTIFY`,
/// SQLite commits; at most once per `min_gap`) and every `every` regardless
/// (a token file rotated, a missed signal). Records held instances as
/// paused in the store (so `statusd stats`, the dashboard and other
/// processes show why their rows wait), clears that when they send again,
/// makes the waiting rows of a starting instance due now, and nudges the
/// daemon's workers through `work`.
pub async fn keep_in_step<S: Store, P: Provider>(
    store: S,
    registry: Arc<Registry<P>>,
    make: MakeProvider<P>,
    work: Arc<Notify>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut signal = store.subscribe_instances();
    let min_gap = Duration::from_millis(250).min(every);
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        match refresh(&store, &registry, &make).await {
            Ok(changes) => {
                failures = 0;
                if !changes.is_empty() {
                    work.notify_waiters();
                }
            }
            Err(e) => {
                failures += 1;
                // A pause that was not recorded is reported again next time.
                registry.forget_held();
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::warn!(error = %e, "reading the instances table failed; keeping the current instances");
                }
            }
        }
        let rest = min_gap.saturating_sub(started.elapsed());
        tokio::select! { _ = tokio::time::sleep(rest) => {}, _ = shutdown.cancelled() => return }
        tokio::select! {
            _ = signal.changed() => {}
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One reload of the table into `registry`, with the records and nudges
/// of [`keep_in_step`]. The first call of a process (by `statusd run`
/// before the services start) also writes every held instance's pause.
pub async fn refresh<S: Store, P: Provider>(
    store: &S,
    registry: &Registry<P>,
    make: &MakeProvider<P>,
) -> crate::store::Result<RegistryChanges> {
    let table = store.instance_table().await?;
    let changes = registry.apply(&table, make);
    for name in &changes.started {
        names::register_instance(name);
    }
    for (name, reason) in &changes.held {
        names::register_instance(name);
        ::metrics::gauge!(names::INSTANCE_PAUSED, names::INSTANCE_LABEL => name.clone()).set(1.0);
        store.set_instance_pause(name, reason).await?;
    }
    for name in &changes.released {
        if registry.contains_key(name) {
            ::metrics::gauge!(names::INSTANCE_PAUSED, names::INSTANCE_LABEL => name.clone())
                .set(0.0);
        }
        store.clear_instance_pause(name).await?;
    }
    if !changes.started.is_empty() {
        let n = store.make_instance_rows_due(&changes.started).await?;
        if n > 0 {
            tracing::info!(rows = n, instances = ?changes.started, "rows of starting instances are due now");
        }
    }
    Ok(changes)
}

/// One configured provider instance with its rate limiter and pause state.
pub struct Instance<P> {
    pub name: String,
    pub provider: P,
    pub(crate) limiter: DefaultDirectRateLimiter,
    /// The limiter's rate (the dispatcher claims about a second of it ahead).
    pub rate_per_sec: u32,
    /// The limiter's bucket size.
    burst: u32,
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
            burst: burst.get(),
            max_in_flight: crate::config::DEFAULT_MAX_IN_FLIGHT,
            paused: Mutex::new(None),
        }
    }

    /// Caps this instance's calls in flight (at least 1).
    pub fn with_max_in_flight(mut self, n: usize) -> Instance<P> {
        self.max_in_flight = n.max(1);
        self
    }

    /// Empties the token bucket: this replica has just taken the instance
    /// (at start, or from another replica). Its sends begin at the rate, not
    /// with a burst on top of what the previous holder sent within the
    /// window, so the rate holds across a hand-over (R7).
    pub(crate) fn empty_bucket(&self) {
        // Greedy halving: a few calls whatever the burst (bounded: at a
        // rate of millions per second tokens come back as fast as taken).
        let mut n = self.burst;
        for _ in 0..128 {
            let Some(k) = NonZeroU32::new(n) else { break };
            if !matches!(self.limiter.check_n(k), Ok(Ok(()))) {
                n /= 2;
            }
        }
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

#[cfg(test)]
mod tests;
