//! The exactly-once protocol as a model, checked exhaustively with
//! `stateright` (`cargo test --lib protocol_model`).
//!
//! One status row, two replicas (each a dispatcher worker with its own
//! memory, plus a reconciler and a rescuer acting on the shared database),
//! and a provider that holds requests for a while before it processes them.
//! Every interleaving of these steps is explored, with crashes at every step:
//!
//! | model step      | implemented by                                                        |
//! |-----------------|-----------------------------------------------------------------------|
//! | `AssignId`      | `daemon::id_assigner` → `Store::assign_message_ids` (rule 1)          |
//! | `Claim`         | `daemon::dispatcher` → `Store::claim` (lease committed before the call) |
//! | `Release`       | `daemon::dispatcher` releases a row that waited past half its lease, attempt refunded |
//! | `Send`          | `daemon::dispatcher` → `Provider::send` (only on a live lease of this attempt) |
//! | `Process*`      | the provider: posts (maybe much later), answers, or loses the answer  |
//! | `Reject`        | the provider refuses before processing (429, 5xx-before) → `Retryable` |
//! | `Timeout`       | the client's timeout / reset → `SendOutcome::InDoubt`                 |
//! | `Complete`      | the dispatcher's outcome writer → `Store::complete`, fenced by `attempts` |
//! | `Crash`         | `kill -9` of a replica: its memory is gone, its requests stay out     |
//! | `LeaseExpires`  | database time passes the lease                                        |
//! | `Rescue`        | `daemon::rescuer` → `Store::rescue_expired` (uploading → in_doubt)    |
//! | `Reconcile*`    | `daemon::reconciler::decide` → `Provider::find_status` → `Store::resolve_in_doubt` |
//!
//! Properties: no status is ever shown twice; when nothing more can happen,
//! the status was shown exactly once or the row is parked for an operator;
//! a `posted` row was shown. Budgets (crashes, lost answers, refusals,
//! hangs, failed look-ups) keep the space finite.
//!
//! Two assumptions are explicit guards, and each has a variant showing the
//! duplicate when it is dropped:
//! - **A1 settle**: a look-up that answers "absent" is made after every
//!   request of that row the provider will ever process has been processed
//!   (settle delay ≥ request timeout + the engine's retry window, and no call
//!   outlives its lease). [`Variant::RacyLookup`] drops it.
//! - **A2 capability**: a by-id "not found" counts as absence only when the
//!   provider is *proven* to honour supplied ids, and that knowledge is kept
//!   in the database (R6). [`Variant::CapabilityInMemory`] keeps it in a
//!   replica's memory, trusted until this process has seen ids ignored (the
//!   field defect of issue 12), and the checker finds the duplicate. Until
//!   the persisted capability of issue 12 lands, `provider::wawp` keeps
//!   `ids_ignored` in memory: the code is this variant, not `Design`, on a
//!   provider that ignores supplied ids.

use stateright::{Checker, Model, Property};

/// Bounds that keep the state space finite.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub crashes: u8,
    pub lost_answers: u8,
    pub refusals: u8,
    /// Client timeouts while the provider still holds the request.
    pub hangs: u8,
    pub failed_lookups: u8,
}

/// Which protocol is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// The protocol as designed (DESIGN.md §4, R5, R6).
    Design,
    /// Look-ups may answer "absent" while the provider still holds a request.
    RacyLookup,
    /// The ids-ignored evidence lives in memory; after a restart a replica
    /// trusts by-id look-ups again.
    CapabilityInMemory,
    /// A worker sends on a claim whose lease has already expired.
    SendOnExpiredLease,
}

#[derive(Clone, Debug)]
pub struct Protocol {
    /// Whether the provider honours supplied message ids (NOWEB/GOWS do,
    /// Wawp documents that it auto-assigns).
    pub provider_honours_ids: bool,
    pub variant: Variant,
    pub budget: Budget,
    /// Failed look-ups before a row is parked (`reconcile_max_attempts`).
    pub max_lookups: u8,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RowState {
    Queued,
    PendingUpload,
    Uploading,
    InDoubt,
    Posted,
    Parked,
}

/// What is known of the provider's id handling (persisted, R6).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Capability {
    Unknown,
    Honoured,
    Ignored,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Answer {
    /// 2xx; `echoed` when the answer carries the id we supplied.
    Posted {
        echoed: bool,
    },
    Retryable,
    InDoubt,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Worker {
    Idle,
    Claimed { attempt: u8 },
    Sending { attempt: u8 },
    Answered { attempt: u8, answer: Answer },
}

/// A request the provider holds and has not processed yet.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Request {
    pub worker: u8,
    pub attempt: u8,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct State {
    pub row: RowState,
    pub attempts: u8,
    pub lease_live: bool,
    pub failed_lookups: u8,
    /// In the database (shared by replicas, survives restarts).
    pub capability: Capability,
    /// Per replica: "the provider ignores ids" seen since this process
    /// started ([`Variant::CapabilityInMemory`] only).
    pub memory_ignored: [bool; 2],
    pub workers: [Worker; 2],
    /// Requests held by the provider, sorted.
    pub held: Vec<Request>,
    /// How many times viewers were shown the status.
    pub shown: u8,
    pub budget: [u8; 5],
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Action {
    AssignId,
    Claim(u8),
    Release(u8),
    Send(u8),
    /// The provider processes request `i` of `held`; the answer reaches the
    /// worker, is a 5xx after processing, or is lost.
    ProcessAnswered(usize),
    ProcessThen5xx(usize),
    ProcessAnswerLost(usize),
    Reject(usize),
    Timeout(u8),
    Complete(u8),
    Crash(u8),
    LeaseExpires,
    Rescue,
    ReconcilePresent(u8),
    ReconcileAbsent(u8),
    ReconcileUnavailable(u8),
}

const CRASH: usize = 0;
const LOST: usize = 1;
const REFUSE: usize = 2;
const HANG: usize = 3;
const LOOKUP: usize = 4;

impl Protocol {
    /// The answer a look-up by replica `r` can give that says "absent":
    /// by id when the capability says ids are honoured, else by a complete
    /// read of the recent statuses matched by content.
    fn absence_claimed(&self, s: &State, r: u8) -> bool {
        let trusts_by_id = match self.variant {
            // After a restart the replica has not seen ids ignored yet.
            Variant::CapabilityInMemory => !s.memory_ignored[r as usize],
            _ => s.capability == Capability::Honoured,
        };
        if trusts_by_id {
            // A by-id look-up: found only if the provider stored our id.
            !(self.provider_honours_ids && s.shown > 0)
        } else {
            // A content search that read every own status in the window.
            s.shown == 0
        }
    }

    fn settled(&self, s: &State) -> bool {
        self.variant == Variant::RacyLookup || s.held.is_empty()
    }
}

impl Model for Protocol {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let b = self.budget;
        vec![State {
            row: RowState::Queued,
            attempts: 0,
            lease_live: false,
            failed_lookups: 0,
            capability: Capability::Unknown,
            memory_ignored: [false; 2],
            workers: [Worker::Idle; 2],
            held: Vec::new(),
            shown: 0,
            budget: [
                b.crashes,
                b.lost_answers,
                b.refusals,
                b.hangs,
                b.failed_lookups,
            ],
        }]
    }

    fn actions(&self, s: &State, out: &mut Vec<Action>) {
        if s.row == RowState::Queued {
            out.push(Action::AssignId);
        }
        for w in 0..2u8 {
            match s.workers[w as usize] {
                Worker::Idle if s.row == RowState::PendingUpload => out.push(Action::Claim(w)),
                Worker::Claimed { attempt } => {
                    out.push(Action::Release(w));
                    let live =
                        s.row == RowState::Uploading && s.attempts == attempt && s.lease_live;
                    if live || self.variant == Variant::SendOnExpiredLease {
                        out.push(Action::Send(w));
                    }
                }
                Worker::Sending { attempt } => {
                    let held = s.held.contains(&Request { worker: w, attempt });
                    // A timeout while the provider still holds the request is
                    // a hang; after a lost answer it is the only way out.
                    if !held || s.budget[HANG] > 0 {
                        out.push(Action::Timeout(w));
                    }
                }
                Worker::Answered { .. } => out.push(Action::Complete(w)),
                Worker::Idle => {}
            }
            if s.workers[w as usize] != Worker::Idle && s.budget[CRASH] > 0 {
                out.push(Action::Crash(w));
            }
        }
        for i in 0..s.held.len() {
            out.push(Action::ProcessAnswered(i));
            out.push(Action::ProcessThen5xx(i));
            if s.budget[LOST] > 0 {
                out.push(Action::ProcessAnswerLost(i));
            }
            if s.budget[REFUSE] > 0 {
                out.push(Action::Reject(i));
            }
        }
        if s.row == RowState::Uploading {
            if s.lease_live {
                out.push(Action::LeaseExpires);
            } else {
                out.push(Action::Rescue);
            }
        }
        if s.row == RowState::InDoubt {
            for r in 0..2u8 {
                // A look-up finds the status when it is there (by id only if
                // the provider stored our id, by content always).
                let by_id_only = match self.variant {
                    Variant::CapabilityInMemory => !s.memory_ignored[r as usize],
                    _ => s.capability == Capability::Honoured,
                };
                if s.shown > 0 && (!by_id_only || self.provider_honours_ids) {
                    out.push(Action::ReconcilePresent(r));
                }
                if self.absence_claimed(s, r) && self.settled(s) {
                    out.push(Action::ReconcileAbsent(r));
                }
                if s.budget[LOOKUP] > 0 {
                    out.push(Action::ReconcileUnavailable(r));
                }
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::AssignId => s.row = RowState::PendingUpload,
            Action::Claim(w) => {
                s.row = RowState::Uploading;
                s.attempts += 1;
                s.lease_live = true;
                s.workers[w as usize] = Worker::Claimed {
                    attempt: s.attempts,
                };
            }
            Action::Release(w) => {
                let Worker::Claimed { attempt } = s.workers[w as usize] else {
                    return None;
                };
                // Fenced: only the claim it still holds, with the attempt refunded.
                if s.row == RowState::Uploading && s.attempts == attempt {
                    s.row = RowState::PendingUpload;
                    s.attempts -= 1;
                    s.lease_live = false;
                }
                s.workers[w as usize] = Worker::Idle;
            }
            Action::Send(w) => {
                let Worker::Claimed { attempt } = s.workers[w as usize] else {
                    return None;
                };
                s.workers[w as usize] = Worker::Sending { attempt };
                s.held.push(Request { worker: w, attempt });
                s.held.sort();
            }
            Action::ProcessAnswered(i)
            | Action::ProcessThen5xx(i)
            | Action::ProcessAnswerLost(i) => {
                let req = s.held.remove(i);
                s.shown += 1;
                let answer = match action {
                    Action::ProcessAnswered(_) => Some(Answer::Posted {
                        echoed: self.provider_honours_ids,
                    }),
                    Action::ProcessThen5xx(_) => Some(Answer::InDoubt),
                    _ => {
                        s.budget[LOST] -= 1;
                        None
                    }
                };
                let worker = &mut s.workers[req.worker as usize];
                if let (Some(answer), Worker::Sending { attempt }) = (answer, *worker) {
                    if attempt == req.attempt {
                        *worker = Worker::Answered { attempt, answer };
                    }
                }
            }
            Action::Reject(i) => {
                let req = s.held.remove(i);
                s.budget[REFUSE] -= 1;
                let worker = &mut s.workers[req.worker as usize];
                if *worker
                    == (Worker::Sending {
                        attempt: req.attempt,
                    })
                {
                    *worker = Worker::Answered {
                        attempt: req.attempt,
                        answer: Answer::Retryable,
                    };
                }
            }
            Action::Timeout(w) => {
                let Worker::Sending { attempt } = s.workers[w as usize] else {
                    return None;
                };
                if s.held.contains(&Request { worker: w, attempt }) {
                    s.budget[HANG] -= 1;
                }
                s.workers[w as usize] = Worker::Answered {
                    attempt,
                    answer: Answer::InDoubt,
                };
            }
            Action::Complete(w) => {
                let Worker::Answered { attempt, answer } = s.workers[w as usize] else {
                    return None;
                };
                s.workers[w as usize] = Worker::Idle;
                // Evidence about the provider is kept whatever the fence says.
                if let Answer::Posted { echoed } = answer {
                    let learned = if echoed {
                        Capability::Honoured
                    } else {
                        Capability::Ignored
                    };
                    if s.capability == Capability::Unknown {
                        s.capability = learned;
                    }
                    if !echoed {
                        s.memory_ignored[w as usize] = true;
                    }
                }
                // The fence: `WHERE state = 'uploading' AND attempts = ?`.
                if s.row == RowState::Uploading && s.attempts == attempt {
                    s.lease_live = false;
                    s.row = match answer {
                        Answer::Posted { .. } => RowState::Posted,
                        Answer::Retryable => RowState::PendingUpload,
                        Answer::InDoubt => {
                            s.failed_lookups = 0;
                            RowState::InDoubt
                        }
                    };
                }
            }
            Action::Crash(w) => {
                s.budget[CRASH] -= 1;
                s.workers[w as usize] = Worker::Idle;
                s.memory_ignored[w as usize] = false;
            }
            Action::LeaseExpires => s.lease_live = false,
            Action::Rescue => {
                s.row = RowState::InDoubt;
                s.failed_lookups = 0;
            }
            Action::ReconcilePresent(_) => s.row = RowState::Posted,
            // Sent again with the same id.
            Action::ReconcileAbsent(_) => s.row = RowState::PendingUpload,
            Action::ReconcileUnavailable(_) => {
                s.budget[LOOKUP] -= 1;
                s.failed_lookups += 1;
                if s.failed_lookups >= self.max_lookups {
                    s.row = RowState::Parked;
                }
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("never shown twice", |_, s: &State| s.shown <= 1),
            Property::always("a posted row was shown", |_, s: &State| {
                s.row != RowState::Posted || s.shown == 1
            }),
            Property::always(
                "at rest: shown exactly once, or parked for an operator",
                |m: &Protocol, s: &State| {
                    let mut next = Vec::new();
                    m.actions(s, &mut next);
                    !next.is_empty() || s.shown == 1 || s.row == RowState::Parked
                },
            ),
            // Reachability: the model is not vacuous.
            Property::sometimes(
                "a lost answer is settled as posted by a look-up",
                |_, s: &State| s.row == RowState::Posted && s.budget[LOST] == 0,
            ),
            Property::sometimes("a proven absence is sent again", |_, s: &State| {
                s.row == RowState::Posted && s.attempts >= 2 && s.shown == 1
            }),
        ]
    }

    fn within_boundary(&self, s: &State) -> bool {
        s.attempts <= 8 && s.shown <= 2
    }
}

/// Explores every state of `model`; returns the checker for its verdicts.
pub fn check(model: Protocol) -> impl Checker<Protocol> {
    model.checker().threads(2).spawn_bfs().join()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> Budget {
        Budget {
            crashes: 2,
            lost_answers: 1,
            refusals: 1,
            hangs: 1,
            failed_lookups: 2,
        }
    }

    fn protocol(provider_honours_ids: bool, variant: Variant) -> Protocol {
        Protocol {
            provider_honours_ids,
            variant,
            budget: budget(),
            max_lookups: 2,
        }
    }

    fn holds(p: Protocol) {
        let checker = check(p.clone());
        println!(
            "{p:?}: {} states explored, {} unique",
            checker.state_count(),
            checker.unique_state_count()
        );
        checker.assert_properties();
        assert!(
            checker.unique_state_count() > 1_000,
            "the model explored too little"
        );
    }

    #[test]
    fn exactly_once_when_the_provider_honours_ids() {
        holds(protocol(true, Variant::Design));
    }

    #[test]
    fn exactly_once_when_the_provider_ignores_ids() {
        holds(protocol(false, Variant::Design));
    }

    fn duplicate_found(p: Protocol) -> String {
        let checker = check(p);
        let path = checker
            .discovery("never shown twice")
            .expect("the checker finds the duplicate this variant allows");
        format!("{path}")
    }

    /// Documents the residual window of R5: a look-up that races a request
    /// the provider still holds cannot prove absence.
    #[test]
    fn a_lookup_racing_a_held_request_duplicates() {
        let trace = duplicate_found(protocol(true, Variant::RacyLookup));
        assert!(trace.contains("ReconcileAbsent"), "{trace}");
    }

    /// Issue 12's field defect: capability evidence kept in memory (lost on
    /// restart, or not learned yet because the first answer was lost) turns
    /// a by-id "not found" into a false absence.
    #[test]
    fn capability_kept_in_memory_duplicates() {
        let trace = duplicate_found(protocol(false, Variant::CapabilityInMemory));
        assert!(trace.contains("ReconcileAbsent"), "{trace}");
    }

    /// Why a claim that waited past its lease is released, never sent.
    #[test]
    fn sending_on_an_expired_lease_duplicates() {
        duplicate_found(protocol(true, Variant::SendOnExpiredLease));
    }
}
