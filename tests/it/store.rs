//! The `Store` contract, run against SQLite and PostgreSQL alike.

use std::collections::HashSet;
use std::time::Duration;

use statusd::model::{AttemptOutcome, State, StatusBody};
use statusd::store::{
    AssignId, ClaimParams, Completion, Effect, EnqueueParams, ListParams, Schedule, Store,
    StoreError, Transition,
};
use uuid::Uuid;

use crate::support::{exec_raw, text, TestDb};

crate::both_backends!(
    dedupe_key_makes_second_enqueue_a_noop,
    ids_are_assigned_once_and_claims_lease,
    claim_honours_priority_not_before_and_paused_instances,
    completion_is_fenced_by_state_and_attempt,
    retry_waits_for_its_backoff,
    in_doubt_rows_are_reconciled_parked_and_unparked,
    expired_leases_are_rescued_and_stale_workers_fenced_out,
    operator_actions_follow_the_state_machine,
    an_operator_confirms_an_in_doubt_row_and_late_look_ups_are_fenced_out,
    concurrent_claimers_never_share_a_row,
    upstream_sql_insert_is_the_public_contract,
    bad_rows_are_readable_and_stay_queued_until_marked,
    summary_purge_and_schedules,
    activity_counts_finished_attempts_per_bucket,
    claims_with_fresh_ids_lease_queued_rows_with_their_id,
    next_due_tells_an_idle_dispatcher_how_long_to_sleep,
);

fn claim(owner: &str, limit: i64) -> ClaimParams {
    ClaimParams {
        budgets: Vec::new(),
        owner: owner.into(),
        limit,
        lease: Duration::from_secs(60),
        skip_instances: vec![],
        fresh_ids: vec![],
    }
}

/// Enqueues `n` rows and gives each a message id; returns their ids.
async fn pending<S: Store>(s: &S, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(s.enqueue(text("main", i)).await.unwrap().id);
    }
    let assign: Vec<AssignId> = ids
        .iter()
        .map(|id| AssignId {
            id: *id,
            message_id: statusd::provider::ids::local_message_id(),
        })
        .collect();
    assert_eq!(s.assign_message_ids(&assign).await.unwrap(), n as u64);
    ids
}

fn done(t: Transition) -> Completion {
    Completion {
        transition: t,
        started_at: chrono::Utc::now(),
        latency: Duration::from_millis(12),
        // Not read back by these tests.
        outcome: AttemptOutcome::Retryable,
    }
}

async fn dedupe_key_makes_second_enqueue_a_noop<S: Store>(s: S, _db: &TestDb) {
    let mut p = text("main", 1);
    p.dedupe_key = Some("order-42".into());
    let a = s.enqueue(p.clone()).await.unwrap();
    assert!(a.inserted);
    p.payload = r#"{"text":"different"}"#.into();
    let b = s.enqueue(p.clone()).await.unwrap();
    assert!(!b.inserted);
    assert_eq!(a.id, b.id);
    let row = s.get(a.id).await.unwrap().unwrap();
    assert!(row.payload.contains("status number 1"), "first insert wins");
    // The batch insert skips present keys too.
    let mut q = text("main", 2);
    q.dedupe_key = Some("order-43".into());
    assert_eq!(s.enqueue_many(&[p, q.clone()]).await.unwrap(), 1);
    assert_eq!(s.enqueue_many(&[q]).await.unwrap(), 0);
    assert_eq!(
        s.find("order-43").await.unwrap().unwrap().state,
        State::Queued
    );
}

async fn ids_are_assigned_once_and_claims_lease<S: Store>(s: S, _db: &TestDb) {
    let id = s.enqueue(text("main", 1)).await.unwrap().id;
    assert!(
        s.claim(claim("w1", 10)).await.unwrap().is_empty(),
        "no id, no claim"
    );
    let q = s.queued(10).await.unwrap();
    assert_eq!(q.len(), 1);
    let a = AssignId {
        id,
        message_id: "3EB0AAAAAAAAAAAAAAAAAAAA".into(),
    };
    assert_eq!(
        s.assign_message_ids(std::slice::from_ref(&a))
            .await
            .unwrap(),
        1
    );
    let again = AssignId {
        id,
        message_id: "3EB0BBBBBBBBBBBBBBBBBBBB".into(),
    };
    assert_eq!(
        s.assign_message_ids(&[again]).await.unwrap(),
        0,
        "an id is assigned once"
    );
    let rows = s.claim(claim("w1", 10)).await.unwrap();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.state, State::Uploading);
    assert_eq!(r.attempts, 1);
    assert_eq!(r.message_id.as_deref(), Some("3EB0AAAAAAAAAAAAAAAAAAAA"));
    assert_eq!(r.lease_owner.as_deref(), Some("w1"));
    let now = s.now().await.unwrap();
    let exp = r.lease_expires_at.unwrap();
    assert!(
        exp > now + chrono::Duration::seconds(50) && exp <= now + chrono::Duration::seconds(61)
    );
    assert!(
        s.claim(claim("w2", 10)).await.unwrap().is_empty(),
        "leased rows are not claimed twice"
    );
    // A second row may not reuse the id.
    let other = s.enqueue(text("main", 2)).await.unwrap().id;
    let dup = AssignId {
        id: other,
        message_id: "3EB0AAAAAAAAAAAAAAAAAAAA".into(),
    };
    assert!(
        s.assign_message_ids(&[dup]).await.is_err(),
        "message ids are unique"
    );
}

async fn claim_honours_priority_not_before_and_paused_instances<S: Store>(s: S, _db: &TestDb) {
    let low = s.enqueue(text("main", 1)).await.unwrap().id;
    let mut hp = text("main", 2);
    hp.priority = 5;
    let high = s.enqueue(hp).await.unwrap().id;
    let mut later = text("main", 3);
    later.not_before = Some(chrono::Utc::now() + chrono::Duration::hours(1));
    let later = s.enqueue(later).await.unwrap().id;
    let paused = s.enqueue(text("other", 4)).await.unwrap().id;
    let assign: Vec<AssignId> = [low, high, later, paused]
        .iter()
        .map(|id| AssignId {
            id: *id,
            message_id: statusd::provider::ids::local_message_id(),
        })
        .collect();
    s.assign_message_ids(&assign).await.unwrap();
    let mut p = claim("w", 10);
    p.skip_instances = vec!["other".into()];
    let got: Vec<Uuid> = s.claim(p).await.unwrap().iter().map(|r| r.id).collect();
    assert_eq!(
        got,
        vec![high, low],
        "priority first, then FIFO; not_before and paused skipped"
    );
    let got: Vec<Uuid> = s
        .claim(claim("w", 10))
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(got, vec![paused]);
}

async fn completion_is_fenced_by_state_and_attempt<S: Store>(s: S, _db: &TestDb) {
    let ids = pending(&s, 2).await;
    let rows = s.claim(claim("w", 10)).await.unwrap();
    assert_eq!(rows.len(), 2);
    let mut posted = Transition::new(ids[0], 1, State::Posted);
    posted.provider_id = Some("3EB0PROV".into());
    let mut stale = Transition::new(ids[1], 7, State::Posted);
    stale.provider_id = Some("nope".into());
    assert_eq!(
        s.complete(&[done(posted.clone()), done(stale)])
            .await
            .unwrap(),
        1
    );
    let r0 = s.get(ids[0]).await.unwrap().unwrap();
    assert_eq!(r0.state, State::Posted);
    assert_eq!(r0.provider_id.as_deref(), Some("3EB0PROV"));
    assert!(r0.posted_at.is_some() && r0.lease_owner.is_none());
    assert_eq!(
        s.get(ids[1]).await.unwrap().unwrap().state,
        State::Uploading
    );
    // Completing a posted row again changes nothing: posted is final.
    let mut failed = posted.clone();
    failed.to = State::Failed;
    assert_eq!(s.complete(&[done(failed)]).await.unwrap(), 0);
    assert_eq!(s.get(ids[0]).await.unwrap().unwrap().state, State::Posted);
    let hist = s.attempts(ids[0]).await.unwrap();
    assert_eq!(hist.len(), 1);
    assert_eq!(hist[0].attempt, 1);
    assert_eq!(hist[0].latency_ms, 12);
}

async fn retry_waits_for_its_backoff<S: Store>(s: S, _db: &TestDb) {
    let ids = pending(&s, 1).await;
    s.claim(claim("w", 1)).await.unwrap();
    let mut t = Transition::new(ids[0], 1, State::PendingUpload);
    t.delay = Duration::from_millis(400);
    t.reason.error = Some("429 rate limited".into());
    t.reason.http_status = Some(429);
    assert_eq!(s.complete(&[done(t)]).await.unwrap(), 1);
    assert!(
        s.claim(claim("w", 1)).await.unwrap().is_empty(),
        "not before its backoff"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = s.claim(claim("w", 1)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 2);
    assert_eq!(again[0].last_http_status, Some(429));
    // Instance down gives the attempt back.
    let mut t = Transition::new(ids[0], 2, State::PendingUpload);
    t.effect = Effect::RefundAttempt;
    s.complete(&[done(t)]).await.unwrap();
    assert_eq!(s.get(ids[0]).await.unwrap().unwrap().attempts, 1);
}

async fn in_doubt_rows_are_reconciled_parked_and_unparked<S: Store>(s: S, _db: &TestDb) {
    let ids = pending(&s, 3).await;
    s.claim(claim("w", 10)).await.unwrap();
    let to_doubt: Vec<Completion> = ids
        .iter()
        .map(|id| {
            let mut t = Transition::new(*id, 1, State::InDoubt);
            t.reason.error = Some("timeout".into());
            done(t)
        })
        .collect();
    assert_eq!(s.complete(&to_doubt).await.unwrap(), 3);
    let due = s.due_in_doubt(10).await.unwrap();
    assert_eq!(due.len(), 3);
    // Present → posted; absent → pending_upload with the same id; failed look-up → bumped.
    let mut present = Transition::new(ids[0], 1, State::Posted);
    present.provider_id = Some("P".into());
    let absent = Transition::new(ids[1], 1, State::PendingUpload);
    let mut unknown = Transition::new(ids[2], 1, State::InDoubt);
    unknown.effect = Effect::FailedLookup { park: false };
    unknown.delay = Duration::from_secs(60);
    assert_eq!(
        s.resolve_in_doubt(&[present, absent, unknown])
            .await
            .unwrap(),
        3
    );
    assert_eq!(s.get(ids[0]).await.unwrap().unwrap().state, State::Posted);
    let r1 = s.get(ids[1]).await.unwrap().unwrap();
    assert_eq!(r1.state, State::PendingUpload);
    let again = s.claim(claim("w", 10)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].message_id, r1.message_id,
        "re-sent with the same id"
    );
    let r2 = s.get(ids[2]).await.unwrap().unwrap();
    assert_eq!((r2.state, r2.reconcile_attempts), (State::InDoubt, 1));
    assert!(
        s.due_in_doubt(10).await.unwrap().is_empty(),
        "waits for its look-up backoff"
    );
    // Park, then an operator retry un-parks it for another look-up.
    let mut park = Transition::new(ids[2], 1, State::InDoubt);
    park.effect = Effect::Park;
    park.reason.error = Some("look-up unavailable 10 times".into());
    assert_eq!(s.resolve_in_doubt(&[park]).await.unwrap(), 1);
    let parked = s.get(ids[2]).await.unwrap().unwrap();
    assert!(parked.parked_at.is_some());
    let retried = s.retry(ids[2]).await.unwrap();
    assert_eq!(retried.state, State::InDoubt);
    assert!(retried.parked_at.is_none());
    assert_eq!(s.due_in_doubt(10).await.unwrap().len(), 1);
    let forced = s.force_resend(ids[2]).await.unwrap();
    assert_eq!(forced.state, State::PendingUpload);
    assert_eq!(forced.message_id, parked.message_id);
}

/// `statusd confirm`: a parked in-doubt row the operator saw shown becomes
/// `posted` (never sent again), as a webhook confirmation would settle it;
/// a look-up outcome that arrives afterwards is fenced out; and only an
/// in-doubt row can be confirmed.
async fn an_operator_confirms_an_in_doubt_row_and_late_look_ups_are_fenced_out<S: Store>(
    s: S,
    _db: &TestDb,
) {
    let ids = pending(&s, 2).await;
    s.claim(claim("w", 10)).await.unwrap();
    let mut doubt = Transition::new(ids[0], 1, State::InDoubt);
    doubt.reason.error = Some("timed out after the request was written".into());
    let mut posted = Transition::new(ids[1], 1, State::Posted);
    posted.provider_id = Some("PROV-1".into());
    assert_eq!(s.complete(&[done(doubt), done(posted)]).await.unwrap(), 2);
    let mut park = Transition::new(ids[0], 1, State::InDoubt);
    park.effect = Effect::Park;
    assert_eq!(s.resolve_in_doubt(&[park]).await.unwrap(), 1);
    let before = s.get(ids[0]).await.unwrap().unwrap();
    assert!(before.parked_at.is_some());

    let after = s.confirm_posted(ids[0]).await.unwrap();
    assert_eq!(after.state, State::Posted);
    assert!(after.posted_at.is_some() && after.parked_at.is_none());
    assert_eq!(after.message_id, before.message_id, "the id is kept");
    assert_eq!(after.provider_id, before.message_id);
    assert_eq!(
        after.last_error.as_deref(),
        Some(statusd::store::CONFIRMED_BY_OPERATOR)
    );
    assert_eq!(after.attempts, before.attempts, "no attempt spent");
    // The reconciler's look-up, begun before, ends after: fenced out.
    let late = Transition::new(ids[0], 1, State::PendingUpload);
    assert_eq!(s.resolve_in_doubt(&[late]).await.unwrap(), 0);
    assert_eq!(s.get(ids[0]).await.unwrap().unwrap().state, State::Posted);
    assert!(
        s.claim(claim("w", 10)).await.unwrap().is_empty(),
        "never sent again"
    );
    // Only a row in doubt: a posted one (twice, or another) is refused.
    for id in [ids[0], ids[1]] {
        assert!(
            matches!(
                s.confirm_posted(id).await,
                Err(StoreError::NotAllowed { .. })
            ),
            "{id}"
        );
    }
    assert_eq!(
        s.get(ids[1]).await.unwrap().unwrap().provider_id.as_deref(),
        Some("PROV-1"),
        "a refused confirm changes nothing"
    );
}

async fn expired_leases_are_rescued_and_stale_workers_fenced_out<S: Store>(s: S, _db: &TestDb) {
    let ids = pending(&s, 1).await;
    let mut p = claim("dead", 1);
    p.lease = Duration::from_millis(50);
    assert_eq!(s.claim(p).await.unwrap().len(), 1);
    assert!(
        s.rescue_expired(10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "lease still live"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(s.rescue_expired(10, Duration::ZERO).await.unwrap(), ids);
    let r = s.get(ids[0]).await.unwrap().unwrap();
    assert_eq!(r.state, State::InDoubt);
    assert!(r.lease_owner.is_none());
    // The dead worker's late answer cannot overwrite the rescue.
    let late = Transition::new(ids[0], 1, State::PendingUpload);
    assert_eq!(s.complete(&[done(late)]).await.unwrap(), 0);
    assert_eq!(s.get(ids[0]).await.unwrap().unwrap().state, State::InDoubt);
}

async fn operator_actions_follow_the_state_machine<S: Store>(s: S, _db: &TestDb) {
    let ids = pending(&s, 2).await;
    let missing = Uuid::now_v7();
    assert!(matches!(
        s.cancel(missing).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.retry(ids[0]).await,
        Err(StoreError::NotAllowed {
            state: State::PendingUpload,
            ..
        })
    ));
    let c = s.cancel(ids[0]).await.unwrap();
    assert_eq!(c.state, State::Cancelled);
    assert!(s
        .claim(claim("w", 10))
        .await
        .unwrap()
        .iter()
        .all(|r| r.id != ids[0]));
    // ids[1] was claimed by the line above; uploading rows are not cancellable.
    let e = s.cancel(ids[1]).await.unwrap_err();
    assert!(e.to_string().contains("uploading"), "{e}");
    let mut f = Transition::new(ids[1], 1, State::Failed);
    f.reason.error = Some("400 caption too long".into());
    s.complete(&[done(f)]).await.unwrap();
    let r = s.retry(ids[1]).await.unwrap();
    assert_eq!((r.state, r.attempts), (State::PendingUpload, 0));
    let r = s.retry(ids[0]).await.unwrap();
    assert_eq!(
        r.state,
        State::PendingUpload,
        "a cancelled row with an id goes back to pending"
    );
    let rows = s.claim(claim("w", 10)).await.unwrap();
    assert_eq!(rows.len(), 2);
    let mut p = Transition::new(ids[0], 1, State::Posted);
    p.provider_id = Some("x".into());
    s.complete(&[done(p)]).await.unwrap();
    assert!(matches!(
        s.cancel(ids[0]).await,
        Err(StoreError::NotAllowed { .. })
    ));
    assert_eq!(s.mark_deleted(ids[0]).await.unwrap().state, State::Deleted);
    assert!(s.mark_deleted(ids[0]).await.is_err());
    // A queued row cancelled without an id is re-validated on retry.
    let q = s.enqueue(text("main", 9)).await.unwrap().id;
    s.cancel(q).await.unwrap();
    assert_eq!(s.retry(q).await.unwrap().state, State::Queued);
}

async fn concurrent_claimers_never_share_a_row<S: Store>(s: S, _db: &TestDb) {
    const N: usize = 10_000;
    let batch: Vec<EnqueueParams> = (0..N).map(|i| text("main", i)).collect();
    assert_eq!(s.enqueue_many(&batch).await.unwrap(), N as u64);
    let queued = s.queued(N as i64).await.unwrap();
    let assign: Vec<AssignId> = queued
        .iter()
        .map(|r| AssignId {
            id: r.id,
            message_id: statusd::provider::ids::local_message_id(),
        })
        .collect();
    assert_eq!(s.assign_message_ids(&assign).await.unwrap(), N as u64);
    let mut tasks = Vec::new();
    for w in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let rows = s.claim(claim(&format!("w{w}"), 50)).await.unwrap();
                if rows.is_empty() {
                    break;
                }
                let comps: Vec<Completion> = rows
                    .iter()
                    .map(|r| {
                        let mut t = Transition::new(r.id, r.attempts, State::Posted);
                        t.provider_id = r.message_id.clone();
                        done(t)
                    })
                    .collect();
                assert_eq!(s.complete(&comps).await.unwrap(), rows.len() as u64);
                mine.extend(rows.into_iter().map(|r| r.id));
            }
            mine
        }));
    }
    let mut all = Vec::new();
    let mut busy = 0;
    for t in tasks {
        let mine = t.await.unwrap();
        busy += usize::from(!mine.is_empty());
        all.extend(mine);
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), N, "every row claimed");
    assert_eq!(unique.len(), N, "no row claimed twice");
    assert!(busy >= 2, "claimers really ran side by side");
    let posted = s
        .list(ListParams {
            state: Some(State::Posted),
            limit: 20_000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(posted.len(), N);
}

async fn upstream_sql_insert_is_the_public_contract<S: Store>(s: S, db: &TestDb) {
    // The README's insert, inside the app's own transaction, run twice.
    let sql = r#"BEGIN;
        INSERT INTO status_outbox (instance, kind, payload, dedupe_key)
        VALUES ('main', 'text', '{"text": "Fresh bread at 7"}', 'bakery-2026-11-25')
        ON CONFLICT (dedupe_key) DO NOTHING;
        COMMIT;"#;
    exec_raw(db, sql).await.unwrap();
    exec_raw(db, sql).await.unwrap();
    let rows = s.queued(10).await.unwrap();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.state, State::Queued);
    assert_eq!(r.dedupe_key.as_deref(), Some("bakery-2026-11-25"));
    assert!(StatusBody::parse(&r.kind, &r.payload).is_ok());
    let age = s.now().await.unwrap() - r.created_at;
    assert!(age < chrono::Duration::seconds(60) && age > chrono::Duration::seconds(-5));
    // A rolled-back insert leaves nothing behind.
    exec_raw(db, r#"BEGIN; INSERT INTO status_outbox (instance, kind, payload) VALUES ('main','text','{"text":"x"}'); ROLLBACK;"#).await.unwrap();
    assert_eq!(s.queued(10).await.unwrap().len(), 1);
    // The schema refuses what it can: unknown kind, unknown state, an id-less pending row.
    assert!(exec_raw(
        db,
        r#"INSERT INTO status_outbox (instance, kind, payload) VALUES ('main','gif','{}')"#
    )
    .await
    .is_err());
    assert!(exec_raw(db, r#"INSERT INTO status_outbox (instance, kind, payload, state) VALUES ('main','text','{}','done')"#).await.is_err());
    assert!(exec_raw(db, r#"INSERT INTO status_outbox (instance, kind, payload, state) VALUES ('main','text','{}','pending_upload')"#).await.is_err());
}

async fn bad_rows_are_readable_and_stay_queued_until_marked<S: Store>(s: S, db: &TestDb) {
    let sqlite = db.url.starts_with("sqlite:");
    let bad = [
        r#"INSERT INTO status_outbox (instance, kind, payload) VALUES ('main','text','{"caption":"no text"}')"#,
        r#"INSERT INTO status_outbox (instance, kind, payload) VALUES ('main','image','{"file":{"url":"http://insecure/x.jpg","mimetype":"image/jpeg"}}')"#,
        r#"INSERT INTO status_outbox (instance, kind, payload) VALUES ('main','text','"just a string"')"#,
    ];
    for b in bad {
        exec_raw(db, b).await.unwrap();
    }
    if sqlite {
        // SQLite stores whatever bytes it is given.
        exec_raw(db, "INSERT INTO status_outbox (instance, kind, payload) VALUES ('main','text',CAST(X'7B2274657874223A22C328227D' AS TEXT))").await.unwrap();
        exec_raw(db, "INSERT INTO status_outbox (instance, kind, payload) VALUES ('main','text','{not json')").await.unwrap();
    } else {
        let e = exec_raw(db, "INSERT INTO status_outbox (instance, kind, payload) VALUES ('main','text','{not json')").await.unwrap_err();
        assert!(
            e.to_string().contains("json"),
            "PostgreSQL rejects malformed JSON at insert: {e}"
        );
    }
    let rows = s.queued(100).await.unwrap();
    assert_eq!(rows.len(), if sqlite { 5 } else { 3 });
    let mut fields = Vec::new();
    for r in &rows {
        let e = StatusBody::parse(&r.kind, &r.payload).unwrap_err();
        fields.push(e.field.clone());
        assert!(s.mark_invalid(r.id, &e.to_string()).await.unwrap());
        let after = s.get(r.id).await.unwrap().unwrap();
        assert_eq!(after.state, State::Invalid);
        assert!(after.last_error.unwrap().starts_with(&e.field));
    }
    assert!(fields.contains(&"payload.text".to_string()));
    assert!(fields.contains(&"payload.file.url".to_string()));
    if sqlite {
        assert!(
            fields.iter().filter(|f| *f == "payload").count() >= 2,
            "{fields:?}"
        );
    }
    assert!(s.queued(100).await.unwrap().is_empty());
}

async fn summary_purge_and_schedules<S: Store>(s: S, _db: &TestDb) {
    let ids = pending(&s, 3).await;
    s.enqueue(text("second", 99)).await.unwrap();
    s.cancel(ids[2]).await.unwrap();
    let sum = s.summary().await.unwrap();
    let get = |inst: &str, st: State| {
        sum.iter()
            .find(|r| r.instance == inst && r.state == st)
            .map(|r| r.count)
    };
    assert_eq!(get("main", State::PendingUpload), Some(2));
    assert_eq!(get("main", State::Cancelled), Some(1));
    assert_eq!(get("second", State::Queued), Some(1));
    let oldest = sum
        .iter()
        .find(|r| r.state == State::PendingUpload)
        .unwrap()
        .oldest_age_secs;
    assert!(oldest.unwrap() >= 0.0);
    assert!(sum
        .iter()
        .find(|r| r.state == State::Cancelled)
        .unwrap()
        .oldest_age_secs
        .is_none());
    assert_eq!(
        s.purge_terminal(Duration::from_secs(3600), 100)
            .await
            .unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(
        s.purge_terminal(Duration::from_millis(10), 100)
            .await
            .unwrap(),
        1
    );
    assert!(s.get(ids[2]).await.unwrap().is_none());
    assert!(
        s.get(ids[0]).await.unwrap().is_some(),
        "live rows are never purged"
    );

    let sched = Schedule {
        id: Uuid::now_v7(),
        name: "morning".into(),
        cron: "0 0 8 * * *".into(),
        timezone: "Europe/Berlin".into(),
        instance: "main".into(),
        kind: "text".into(),
        payload: r#"{"text":"Good morning"}"#.into(),
        enabled: true,
    };
    s.add_schedule(&sched).await.unwrap();
    assert!(s.add_schedule(&sched).await.is_err(), "names are unique");
    let all = s.schedules().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].timezone, "Europe/Berlin");
    assert!(serde_json::from_str::<serde_json::Value>(&all[0].payload).is_ok());
    assert!(s.remove_schedule("morning").await.unwrap());
    assert!(!s.remove_schedule("morning").await.unwrap());
}

async fn activity_counts_finished_attempts_per_bucket<S: Store>(s: S, _db: &TestDb) {
    use statusd::store::{ActivityBucket, ActivityParams};
    let minute = Duration::from_secs(60);
    let hour = ActivityParams {
        since: Duration::from_secs(3600),
        bucket: minute,
    };
    assert!(
        s.activity(hour).await.unwrap().is_empty(),
        "no attempts yet"
    );

    // Whole milliseconds, so both backends store the times exactly.
    let now = s.now().await.unwrap();
    let now = chrono::DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap();
    let ago = |m: i64| now - chrono::Duration::minutes(m);
    let ids = pending(&s, 5).await;
    let rows = s.claim(claim("w1", 10)).await.unwrap();
    assert_eq!(rows.len(), 5);
    // (row, outcome, target state, started minutes ago)
    let plan = [
        (ids[0], "posted", State::Posted, 10),
        (ids[1], "posted", State::Posted, 10),
        (ids[2], "retryable", State::PendingUpload, 10),
        (ids[3], "permanent", State::Failed, 2),
        (ids[4], "posted", State::Posted, 120),
    ];
    let done: Vec<Completion> = plan
        .iter()
        .map(|(id, outcome, to, m)| Completion {
            transition: Transition::new(*id, 1, *to),
            started_at: ago(*m),
            latency: Duration::from_millis(12),
            outcome: outcome.parse().unwrap(),
        })
        .collect();
    assert_eq!(s.complete(&done).await.unwrap(), 5);

    let bucket_of = |m: i64| {
        let t = (ago(m) + chrono::Duration::milliseconds(12)).timestamp_millis();
        chrono::DateTime::from_timestamp_millis(t.div_euclid(60_000) * 60_000).unwrap()
    };
    let got = s.activity(hour).await.unwrap();
    let mut want = vec![
        ActivityBucket {
            start: bucket_of(10),
            posted: 2,
            errors: 1,
        },
        ActivityBucket {
            start: bucket_of(2),
            posted: 0,
            errors: 1,
        },
    ];
    assert_eq!(got, want, "the 2-hour-old attempt is outside the window");
    assert!(got.iter().all(|b| b.start.timestamp() % 60 == 0));

    let wide = s
        .activity(ActivityParams {
            since: Duration::from_secs(3 * 3600),
            bucket: minute,
        })
        .await
        .unwrap();
    want.insert(
        0,
        ActivityBucket {
            start: bucket_of(120),
            posted: 1,
            errors: 0,
        },
    );
    assert_eq!(wide, want);

    // Wider buckets sum the same attempts.
    let coarse = s
        .activity(ActivityParams {
            since: Duration::from_secs(3600),
            bucket: Duration::from_secs(86_400),
        })
        .await
        .unwrap();
    assert_eq!(coarse.iter().map(|b| b.posted).sum::<i64>(), 2);
    assert_eq!(coarse.iter().map(|b| b.errors).sum::<i64>(), 2);

    assert!(matches!(
        s.activity(ActivityParams {
            since: Duration::from_secs(60),
            bucket: Duration::ZERO,
        })
        .await,
        Err(StoreError::Invalid(_))
    ));
}

async fn claims_with_fresh_ids_lease_queued_rows_with_their_id<S: Store>(s: S, _db: &TestDb) {
    // One pending row (id assigned) and three queued rows, one of them urgent.
    let pending = pending(&s, 1).await[0];
    let q1 = s.enqueue(text("main", 10)).await.unwrap().id;
    let mut urgent = text("main", 11);
    urgent.priority = 9;
    let urgent = s.enqueue(urgent).await.unwrap().id;
    let q3 = s.enqueue(text("main", 12)).await.unwrap().id;
    let fresh: Vec<String> = (0..3)
        .map(|_| statusd::provider::ids::local_message_id())
        .collect();
    let mut p = claim("w", 3);
    p.fresh_ids = fresh.clone();
    let got = s.claim(p).await.unwrap();
    let order: Vec<Uuid> = got.iter().map(|r| r.id).collect();
    assert_eq!(
        order,
        vec![urgent, pending, q1],
        "priority first, then FIFO, across both sources"
    );
    for r in &got {
        assert_eq!(r.state, State::Uploading);
        assert_eq!(r.attempts, 1);
        let mid = r.message_id.clone().expect("an id before any send");
        if r.id == pending {
            assert!(!fresh.contains(&mid), "a row keeps the id it already had");
        } else {
            assert!(
                fresh.contains(&mid),
                "a queued row gets one of the fresh ids"
            );
        }
    }
    let mids: HashSet<_> = got.iter().map(|r| r.message_id.clone()).collect();
    assert_eq!(mids.len(), 3, "no id given twice");
    // Without enough fresh ids, queued rows are left to the id assigner.
    let mut p = claim("w", 5);
    p.fresh_ids = vec![statusd::provider::ids::local_message_id()];
    assert!(s.claim(p).await.unwrap().is_empty());
    assert_eq!(s.get(q3).await.unwrap().unwrap().state, State::Queued);
    // The id is durable with the lease: a crash now leaves an in-doubt row
    // with its id, never an id-less upload.
    let row = s.get(q1).await.unwrap().unwrap();
    assert!(row.message_id.is_some() && row.lease_expires_at.is_some());
}

async fn next_due_tells_an_idle_dispatcher_how_long_to_sleep<S: Store>(s: S, _db: &TestDb) {
    assert_eq!(s.next_due(&[], true).await.unwrap(), None, "empty outbox");
    // A status scheduled in ten minutes: due in about ten minutes.
    let mut later = text("main", 1);
    later.not_before = Some(chrono::Utc::now() + chrono::Duration::minutes(10));
    s.enqueue(later).await.unwrap();
    let d = s.next_due(&[], true).await.unwrap().expect("one row waits");
    assert!(
        // Test clock and database clock may differ by a few ms.
        d > Duration::from_secs(590) && d <= Duration::from_secs(601),
        "{d:?}"
    );
    // Queued rows count only when the claim takes them (local ids).
    assert_eq!(s.next_due(&[], false).await.unwrap(), None);
    // A retry backing off for 30 s is sooner; paused instances do not count.
    let ids = pending(&s, 1).await;
    s.claim(claim("w", 1)).await.unwrap();
    let mut t = Transition::new(ids[0], 1, State::PendingUpload);
    t.delay = Duration::from_secs(30);
    assert_eq!(s.complete(&[done(t)]).await.unwrap(), 1);
    let d = s.next_due(&[], false).await.unwrap().expect("the retry");
    assert!(
        d > Duration::from_secs(25) && d <= Duration::from_secs(31),
        "{d:?}"
    );
    let d = s.next_due(&["main".into()], true).await.unwrap();
    assert_eq!(d, None, "rows of paused instances are not waited for");
    // A row claimable now: zero.
    s.enqueue(text("main", 2)).await.unwrap();
    assert_eq!(s.next_due(&[], true).await.unwrap(), Some(Duration::ZERO));
}

/// SQLite has no notifications: a commit by another program (an upstream
/// app inserting a row) is seen by directory notifications and `PRAGMA
/// data_version`, never by touching SQLite's files.
#[tokio::test]
async fn sqlite_signals_commits_by_other_connections() {
    let db = TestDb::sqlite().await;
    let s = db.sqlite_store().await;
    assert!(s.notifies());
    // Let the watcher see the migration's writes first.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut wake = s.subscribe();
    // Nothing happens while nothing is written.
    let quiet = tokio::time::timeout(Duration::from_millis(300), wake.changed()).await;
    assert!(quiet.is_err(), "no signal without a write");
    exec_raw(
        &db,
        "INSERT INTO status_outbox (instance, kind, payload) VALUES ('main', 'text', '{\"text\":\"hi\"}')",
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(5), wake.changed())
        .await
        .expect("a commit by another connection is signalled")
        .unwrap();
    // An in-memory database has no file to watch: workers poll instead.
    let mem = statusd::store::SqliteStore::connect("sqlite::memory:", 1)
        .await
        .unwrap();
    assert!(!mem.notifies());
}

/// Applies only migration 0001 of `backend` (the schema as it was before
/// 0002), as an existing database would have it.
async fn migrate_to_0001(db: &TestDb, backend: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = format!(
        "{}/migrations/{backend}/0001_outbox.sql",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::copy(&src, dir.path().join("0001_outbox.sql")).expect("copy 0001");
    let m = sqlx::migrate::Migrator::new(dir.path())
        .await
        .expect("migrator");
    if backend == "sqlite" {
        let pool = sqlx::SqlitePool::connect(&format!("{}?mode=rwc", db.url))
            .await
            .unwrap();
        m.run(&pool).await.expect("0001");
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        m.run(&pool).await.expect("0001");
        pool.close().await;
    }
}

/// Migration 0002 on SQLite: existing rows are copied, never dropped;
/// unambiguous values are converted (non-canonical UUIDs with their history,
/// '7' as a priority), the others fall back and a row not yet sent becomes
/// `invalid` naming the column. Afterwards the same values are refused at
/// INSERT, with the column named.
#[tokio::test]
async fn sqlite_migration_0002_keeps_every_row_and_makes_tables_strict() {
    let db = TestDb::sqlite().await;
    migrate_to_0001(&db, "sqlite").await;
    exec_raw(
        &db,
        r#"
        INSERT INTO status_outbox (id, instance, kind, payload) VALUES
            ('0190A2B4-1111-7222-8333-444455556666', 'main', 'text', '{"text":"upper"}'),
            ('{0190a2b4-1111-7222-8333-444455556667}', 'main', 'text', '{"text":"braced"}'),
            ('0190a2b4111172228333444455556668', 'main', 'text', '{"text":"bare"}'),
            ('garbage', 'main', 'text', '{"text":"not a uuid"}');
        INSERT INTO status_outbox (instance, kind, payload, priority, not_before, dedupe_key) VALUES
            ('main', 'text', '{"text":"r"}', 0, 1700000000000.5, 'real'),
            ('main', 'text', '{"text":"t"}', 0, '2030-01-01', 'text'),
            ('main', 'text', '{"text":"w"}', '7', 1700000000000.0, 'whole');
        INSERT INTO status_outbox (instance, kind, payload, state, message_id, posted_at, dedupe_key)
            VALUES ('main', 'text', '{"text":"p"}', 'posted', 'M1', 'yesterday', 'posted');
        INSERT INTO status_attempts (status_id, attempt, started_at, finished_at, outcome, latency_ms)
            VALUES ('0190A2B4-1111-7222-8333-444455556666', 1, 1, 2, 'posted', 1);
        "#,
    )
    .await
    .expect("rows of the old schema");
    let s = db.sqlite_store().await;
    let rows = crate::support::all_rows(&s).await;
    assert_eq!(rows.len(), 8, "no row dropped: {rows:?}");
    for suffix in ["6666", "6667", "6668"] {
        let id: Uuid = format!("0190a2b4-1111-7222-8333-44445555{suffix}")
            .parse()
            .unwrap();
        let r = s.get(id).await.unwrap().expect("canonical id");
        assert_eq!(r.state, State::Queued, "{r:?}");
    }
    let history = s
        .attempts("0190a2b4-1111-7222-8333-444455556666".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(history.len(), 1, "history follows its row's id");
    let by_key = |k: &str| {
        rows.iter()
            .find(|r| r.dedupe_key.as_deref() == Some(k))
            .unwrap()
    };
    let real = by_key("real");
    assert_eq!(real.state, State::Invalid);
    assert!(
        real.last_error
            .as_deref()
            .unwrap()
            .contains("not_before: 1700000000000.5"),
        "{real:?}"
    );
    assert_eq!(by_key("text").state, State::Invalid);
    let whole = by_key("whole");
    assert_eq!((whole.state, whole.priority), (State::Queued, 7));
    assert_eq!(
        whole.not_before.map(|t| t.timestamp_millis()),
        Some(1_700_000_000_000)
    );
    let posted = by_key("posted");
    assert_eq!(posted.state, State::Posted, "a posted row stays posted");
    assert!(posted.last_error.as_deref().unwrap().contains("posted_at"));
    let garbage = rows
        .iter()
        .find(|r| r.payload.contains("not a uuid"))
        .unwrap();
    assert_eq!(garbage.state, State::Invalid);
    assert!(garbage.last_error.as_deref().unwrap().contains("'garbage'"));

    for (values, why) in [
        (
            "'main', 'text', '{}', 1700000000000.5",
            "status_outbox.not_before",
        ),
        ("'main', 'text', X'7B7D', NULL", "status_outbox.payload"),
    ] {
        let e = exec_raw(
            &db,
            &format!(
                "INSERT INTO status_outbox (instance, kind, payload, not_before) VALUES ({values})"
            ),
        )
        .await
        .expect_err("refused");
        assert!(e.to_string().contains(why), "{e}");
    }
    let e = exec_raw(
        &db,
        "INSERT INTO status_outbox (id, instance, kind, payload) VALUES ('0190A2B4-1111-7222-8333-444455550000', 'main', 'text', '{}')",
    )
    .await
    .expect_err("refused");
    assert!(e.to_string().contains("id_is_a_canonical_uuid"), "{e}");
}

/// PostgreSQL counterpart: a time PostgreSQL accepts but statusd cannot
/// read ('infinity', year 200000) used to fail every read of its row (a
/// panic in the decoder). Migration 0002 converts existing ones (the row
/// kept, `invalid`, naming the column) and refuses new ones at INSERT; a
/// payload of the wrong JSON shape is read and ends `invalid`.
#[tokio::test]
async fn pg_out_of_range_times_are_refused_and_existing_ones_kept() {
    let db = TestDb::postgres().await;
    migrate_to_0001(&db, "postgres").await;
    exec_raw(
        &db,
        r#"INSERT INTO status_outbox (instance, kind, payload, not_before, dedupe_key) VALUES
             ('main', 'text', '{"text":"never"}', 'infinity', 'inf'),
             ('main', 'text', '{"text":"far"}', '200000-01-01', 'far'),
             ('main', 'text', '{"text":"fine"}', NULL, 'fine'),
             ('main', 'text', '[1, 2]', NULL, 'shape')"#,
    )
    .await
    .expect("rows of the old schema");
    let s = db.pg_store().await;
    let rows = crate::support::all_rows(&s).await;
    assert_eq!(rows.len(), 4, "no row dropped, none unreadable: {rows:?}");
    for key in ["inf", "far"] {
        let r = rows
            .iter()
            .find(|r| r.dedupe_key.as_deref() == Some(key))
            .unwrap();
        assert_eq!(r.state, State::Invalid, "{r:?}");
        assert!(
            r.last_error.as_deref().unwrap().contains("not_before"),
            "{r:?}"
        );
    }
    for v in ["'infinity'", "'200000-01-01'", "'1969-12-31'"] {
        let e = exec_raw(
            &db,
            &format!("INSERT INTO status_outbox (instance, kind, payload, not_before) VALUES ('main', 'text', '{{}}', {v})"),
        )
        .await
        .expect_err("refused");
        assert!(e.to_string().contains("not_before_in_range"), "{v}: {e}");
    }
    let shape = rows
        .iter()
        .find(|r| r.dedupe_key.as_deref() == Some("shape"))
        .unwrap();
    let e = StatusBody::parse(&shape.kind, &shape.payload).expect_err("wrong shape");
    assert_eq!(e.field, "payload");
}
