//! A property test of the state machine on a real store: random sequences of
//! enqueue, id assignment, claims (with live or already-expired leases, the
//! latter standing in for a clock jump past the lease), outcomes (also from
//! stale workers), crashes, rescues, reconciliations and cancels. Whatever
//! the sequence, a row never has two live leases, a posted row never leaves
//! `posted`, a (row, attempt) outcome applies at most once, and no row is lost.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;
use statusd::model::{AttemptOutcome, State};
use statusd::store::{
    AssignId, ClaimParams, Completion, ListParams, SqliteStore, Store, Transition,
};
use uuid::Uuid;

use crate::support::{text, TestDb};

#[derive(Debug, Clone)]
enum Op {
    Enqueue,
    Assign,
    Claim { worker: usize, expired: bool },
    Outcome { worker: usize, pick: usize, to: u8 },
    Crash { worker: usize },
    Rescue,
    Reconcile { pick: usize, present: bool },
    Cancel { pick: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Enqueue),
        2 => Just(Op::Assign),
        3 => (0..3usize, any::<bool>()).prop_map(|(worker, expired)| Op::Claim { worker, expired }),
        4 => (0..3usize, any::<usize>(), 0..4u8).prop_map(|(worker, pick, to)| Op::Outcome { worker, pick, to }),
        1 => (0..3usize).prop_map(|worker| Op::Crash { worker }),
        2 => Just(Op::Rescue),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, present)| Op::Reconcile { pick, present }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
    ]
}

async fn all_rows(s: &SqliteStore) -> HashMap<Uuid, statusd::model::OutboxRow> {
    s.list(ListParams {
        limit: 100_000,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r.id, r))
    .collect()
}

async fn run_ops(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let db = TestDb::sqlite().await;
    let s = db.sqlite_store().await;
    let mut enqueued: Vec<Uuid> = Vec::new();
    // What each worker believes it holds: row → attempt number of its claim.
    let mut held: Vec<HashMap<Uuid, i32>> = vec![HashMap::new(); 3];
    let mut posted: HashSet<Uuid> = HashSet::new();
    let mut applied: HashSet<(Uuid, i32)> = HashSet::new();
    for (n, op) in ops.into_iter().enumerate() {
        match op {
            Op::Enqueue => enqueued.push(s.enqueue(text("main", n)).await.unwrap().id),
            Op::Assign => {
                let q = s.queued(100).await.unwrap();
                let a: Vec<AssignId> = q
                    .iter()
                    .map(|r| AssignId {
                        id: r.id,
                        message_id: statusd::provider::ids::local_message_id(),
                    })
                    .collect();
                s.assign_message_ids(&a).await.unwrap();
            }
            Op::Claim { worker, expired } => {
                let lease = if expired {
                    Duration::ZERO
                } else {
                    Duration::from_secs(3600)
                };
                let rows = s
                    .claim(ClaimParams {
                        budgets: Vec::new(),
                        owner: format!("w{worker}"),
                        limit: 3,
                        lease,
                        skip_instances: vec![],
                        fresh_ids: vec![],
                    })
                    .await
                    .unwrap();
                for r in rows {
                    held[worker].insert(r.id, r.attempts);
                }
            }
            Op::Outcome { worker, pick, to } => {
                if held[worker].is_empty() {
                    continue;
                }
                let mut keys: Vec<Uuid> = held[worker].keys().copied().collect();
                keys.sort();
                let id = keys[pick % keys.len()];
                let attempt = held[worker].remove(&id).unwrap_or_default();
                let before = s.get(id).await.unwrap().unwrap();
                let to = [
                    State::Posted,
                    State::PendingUpload,
                    State::InDoubt,
                    State::Failed,
                ][to as usize];
                let mut t = Transition::new(id, attempt, to);
                t.provider_id = Some("p".into());
                let c = Completion {
                    transition: t,
                    started_at: chrono::Utc::now(),
                    latency: Duration::ZERO,
                    // Not read back by this test.
                    outcome: AttemptOutcome::Retryable,
                };
                let n = s.complete(&[c]).await.unwrap();
                let should = before.state == State::Uploading && before.attempts == attempt;
                prop_assert_eq!(
                    n == 1,
                    should,
                    "fence: row {:?} attempt {} worker attempt {}",
                    before.state,
                    before.attempts,
                    attempt
                );
                if n == 1 {
                    prop_assert!(
                        applied.insert((id, attempt)),
                        "an outcome applied twice for one attempt"
                    );
                }
            }
            Op::Crash { worker } => held[worker].clear(),
            Op::Rescue => {
                s.rescue_expired(100, Duration::ZERO).await.unwrap();
            }
            Op::Reconcile { pick, present } => {
                let due = s.due_in_doubt(100).await.unwrap();
                if due.is_empty() {
                    continue;
                }
                let r = &due[pick % due.len()];
                let mut t = Transition::new(
                    r.id,
                    r.attempts,
                    if present {
                        State::Posted
                    } else {
                        State::PendingUpload
                    },
                );
                t.provider_id = Some("p".into());
                prop_assert_eq!(s.resolve_in_doubt(&[t]).await.unwrap(), 1);
            }
            Op::Cancel { pick } => {
                if !enqueued.is_empty() {
                    let _ = s.cancel(enqueued[pick % enqueued.len()]).await;
                }
            }
        }
        // Invariants after every step.
        let rows = all_rows(&s).await;
        prop_assert_eq!(rows.len(), enqueued.len(), "a row was lost");
        for id in &posted {
            prop_assert_eq!(rows[id].state, State::Posted, "a posted row left posted");
        }
        for (id, r) in &rows {
            if r.state == State::Posted {
                posted.insert(*id);
            }
            let live_holders = held
                .iter()
                .filter(|h| r.state == State::Uploading && h.get(id) == Some(&r.attempts))
                .count();
            prop_assert!(live_holders <= 1, "two live leases on {}", id);
            if r.state == State::Uploading {
                prop_assert!(r.lease_expires_at.is_some() && r.lease_owner.is_some());
            }
            if r.state != State::Queued && r.state != State::Cancelled {
                prop_assert!(
                    r.message_id.is_some(),
                    "rule 1: no id from pending_upload on"
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn the_state_machine_keeps_its_promises(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run_ops(ops))?;
    }
}
