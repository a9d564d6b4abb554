//! The dispatcher's rows between claim and send, per instance, and the
//! round-robin that hands them to send slots (R7). A slot only ever takes a
//! row whose instance can send *now* (token bucket, in-flight cap, lease):
//! no slot waits on one instance's rate limiter while another instance has
//! a row ready.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::model::OutboxRow;

/// A claimed row waiting for a send slot, and when its lease was taken.
#[derive(Debug)]
pub(crate) struct Waiting {
    pub row: OutboxRow,
    pub claimed: Instant,
}

/// Whether an instance's first waiting row may be sent now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Yes (and a token was taken for it).
    Ready,
    /// Its rate limiter has a token in this long.
    NotUntil(Duration),
    /// Its in-flight cap is reached: when one of its sends finishes.
    Full,
    /// That row waited too long for its lease: give it back unsent.
    Stale,
    /// The instance is paused or no longer served here: give back all its
    /// waiting rows.
    Release,
}

/// What a free send slot gets.
#[derive(Debug)]
pub(crate) enum Next {
    Send(Box<Waiting>),
    /// Rows to give back unsent (attempt refunded).
    Release(Vec<Waiting>),
    /// Nothing can be sent now; a token comes in this long at the soonest
    /// (None: only when rows arrive or a send finishes).
    Wait(Option<Duration>),
}

#[derive(Debug, Default)]
pub(crate) struct FairQueue {
    queues: HashMap<String, VecDeque<Waiting>>,
    /// Instances with waiting rows, in round-robin order.
    ring: VecDeque<String>,
    /// Instances with waiting rows out of the ring until a token comes
    /// (soonest first) or one of their sends finishes (`full`): a slot
    /// looking for a row visits only instances that may be ready, however
    /// many wait on their rate limit.
    sleeping: BinaryHeap<Reverse<(Instant, String)>>,
    full: HashSet<String>,
    /// Names in `sleeping` or `full`.
    parked: HashSet<String>,
    sending: HashMap<String, usize>,
    waiting: usize,
    /// Rows handed to a send slot so far (the claimer sizes what it holds
    /// by this rate).
    sent: u64,
}

impl FairQueue {
    /// Adds a claimed row behind its instance's rows of the same or higher
    /// priority.
    pub fn push(&mut self, row: OutboxRow, claimed: Instant) {
        let name = row.instance.clone();
        let q = self.queues.entry(name.clone()).or_default();
        if q.is_empty() && !self.parked.contains(&name) {
            self.ring.push_back(name);
        }
        let at = q
            .iter()
            .position(|w| w.row.priority < row.priority)
            .unwrap_or(q.len());
        q.insert(at, Waiting { row, claimed });
        self.waiting += 1;
    }

    pub fn waiting(&self, instance: &str) -> usize {
        self.queues.get(instance).map_or(0, VecDeque::len)
    }

    pub fn sending(&self, instance: &str) -> usize {
        self.sending.get(instance).copied().unwrap_or(0)
    }

    pub fn total_waiting(&self) -> usize {
        self.waiting
    }

    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// The next row to send, taking instances in turn: an instance that
    /// sent goes to the back of the ring. `gate(instance, sending, first
    /// row)` decides for each instance visited.
    pub fn next(&mut self, mut gate: impl FnMut(&str, usize, &Waiting) -> Gate) -> Next {
        let now = Instant::now();
        while let Some(Reverse((at, _))) = self.sleeping.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, name))) = self.sleeping.pop() else {
                break;
            };
            self.parked.remove(&name);
            if self.queues.get(&name).is_some_and(|q| !q.is_empty()) {
                self.ring.push_back(name);
            }
        }
        for _ in 0..self.ring.len() {
            let Some(name) = self.ring.pop_front() else {
                break;
            };
            let Some(q) = self.queues.get_mut(&name) else {
                continue;
            };
            let Some(head) = q.front() else {
                self.queues.remove(&name);
                continue;
            };
            let sending = self.sending.get(&name).copied().unwrap_or(0);
            match gate(&name, sending, head) {
                g @ (Gate::Ready | Gate::Stale) => {
                    let w = q.pop_front().expect("the head was just seen");
                    self.waiting -= 1;
                    if q.is_empty() {
                        self.queues.remove(&name);
                    } else {
                        self.ring.push_back(name.clone());
                    }
                    if g == Gate::Stale {
                        return Next::Release(vec![w]);
                    }
                    *self.sending.entry(name).or_default() += 1;
                    self.sent += 1;
                    return Next::Send(Box::new(w));
                }
                Gate::NotUntil(d) => {
                    self.parked.insert(name.clone());
                    self.sleeping.push(Reverse((now + d, name)));
                }
                Gate::Full => {
                    self.parked.insert(name.clone());
                    self.full.insert(name);
                }
                Gate::Release => {
                    let rows: Vec<Waiting> =
                        self.queues.remove(&name).map(Vec::from).unwrap_or_default();
                    self.waiting -= rows.len();
                    return Next::Release(rows);
                }
            }
        }
        Next::Wait(
            self.sleeping
                .peek()
                .map(|Reverse((at, _))| at.saturating_duration_since(now)),
        )
    }

    /// A send of `instance` finished (its outcome is queued).
    pub fn done(&mut self, instance: &str) {
        if let Some(n) = self.sending.get_mut(instance) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.sending.remove(instance);
            }
        }
        if self.full.remove(instance) {
            self.parked.remove(instance);
            if self.queues.get(instance).is_some_and(|q| !q.is_empty()) {
                self.ring.push_back(instance.to_string());
            }
        }
    }

    /// Every waiting row (shutdown: they go back unsent).
    pub fn take_all(&mut self) -> Vec<Waiting> {
        self.ring.clear();
        self.sleeping.clear();
        self.full.clear();
        self.parked.clear();
        self.waiting = 0;
        self.queues.drain().flat_map(|(_, q)| q).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::State;

    fn row(instance: &str, priority: i32, n: u32) -> OutboxRow {
        let mut r: OutboxRow = serde_json::from_value(serde_json::json!({
            "id": uuid::Uuid::now_v7(), "instance": instance, "kind": "text",
            "payload": format!("{{\"text\":\"{n}\"}}"), "state": State::Uploading,
            "priority": priority, "attempts": 1, "reconcile_attempts": 0,
            "created_at": chrono::Utc::now(), "updated_at": chrono::Utc::now(),
        }))
        .expect("row");
        r.payload = n.to_string();
        r
    }

    fn sent(q: &mut FairQueue, gate: impl FnMut(&str, usize, &Waiting) -> Gate) -> String {
        match q.next(gate) {
            Next::Send(w) => format!("{}{}", w.row.instance, w.row.payload),
            other => panic!("expected a send, got {other:?}"),
        }
    }

    #[test]
    fn instances_take_turns_and_priority_holds_within_one() {
        let mut q = FairQueue::default();
        let now = Instant::now();
        for n in 0..3 {
            q.push(row("a", 0, n), now);
        }
        q.push(row("b", 0, 0), now);
        q.push(row("b", 5, 1), now);
        let order: Vec<String> = (0..5)
            .map(|_| sent(&mut q, |_, _, _| Gate::Ready))
            .collect();
        assert_eq!(order, ["a0", "b1", "a1", "b0", "a2"]);
        assert_eq!(q.total_waiting(), 0);
        assert_eq!(q.sending("a"), 3);
        q.done("a");
        assert_eq!(q.sending("a"), 2);
    }

    // Paused time: the token's wait below passes at once, exactly.
    #[tokio::test(start_paused = true)]
    async fn a_rate_limited_or_full_instance_never_holds_the_slot() {
        let mut q = FairQueue::default();
        let now = Instant::now();
        q.push(row("a", 0, 0), now);
        q.push(row("b", 0, 0), now);
        q.push(row("c", 0, 0), now);
        let gate = |i: &str, _: usize, _: &Waiting| match i {
            "a" => Gate::NotUntil(Duration::from_millis(40)),
            "b" => Gate::Full,
            _ => Gate::Ready,
        };
        assert_eq!(sent(&mut q, gate), "c0");
        match q.next(gate) {
            Next::Wait(Some(d)) => assert_eq!(d, Duration::from_millis(40)),
            other => panic!("{other:?}"),
        }
        // b is visited again once one of its sends finishes, a once its
        // token is due; until then a slot does not look at them.
        q.done("b");
        match q.next(|i, _, _| if i == "b" { Gate::Release } else { Gate::Full }) {
            Next::Release(rows) => assert_eq!(rows.len(), 1),
            other => panic!("{other:?}"),
        }
        assert_eq!(q.total_waiting(), 1);
        // Before a's token is due, a slot still does not look at it.
        tokio::time::advance(Duration::from_millis(39)).await;
        assert!(matches!(q.next(|_, _, _| Gate::Ready), Next::Wait(_)));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(sent(&mut q, |_, _, _| Gate::Ready), "a0");
    }
}
