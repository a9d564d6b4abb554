//! Instance leases: the rate limit and the in-flight cap of an instance hold
//! for the whole deployment because each instance is served by one replica
//! at a time (R7, issue 14). The same discipline as rows: a lease in the
//! database (database time), renewed by its holder, taken over by another
//! replica once it expires, so a replica that dies leaves its instances
//! unserved for at most one lease.
//!
//! Instances are spread evenly: every replica sends a heartbeat with its
//! renewal, and holds at most its fair share, `ceil(instances / live
//! replicas)`. A replica above its share hands the excess over in two
//! steps, so that a hand-over never puts two replicas' sends of one instance
//! side by side: first it stops claiming and sending for them (the
//! dispatcher), then, with none of their rows in flight, it releases them
//! here (`release`).
//!
//! Why leases and not a token budget in the database: a shared budget costs
//! a write per send (or per batch of tokens) on a hot row that every replica
//! contends for; a lease costs one small transaction per replica every
//! quarter lease, whatever the traffic. The price: one instance's sends
//! cannot be spread over several replicas, which its rate limit (tens per
//! second) never needs.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::row::{self, Columns};
use super::sql::{Sql, Stmt};
use super::timed::timed;
use super::{Result, Timed};

/// One renewal round of a replica.
#[derive(Debug, Clone)]
pub struct KeepLeasesParams {
    /// This replica (`lease_owner`).
    pub owner: String,
    /// The instances this replica can serve (its configured ones).
    pub instances: Vec<String>,
    pub ttl: Duration,
    /// Held instances to give up now (handed over: nothing of theirs is in
    /// flight here any more). Not taken again in the same round.
    pub release: Vec<String>,
}

/// What a renewal round left this replica with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseGrant {
    /// Instances this replica holds, by name.
    pub held: Vec<String>,
    /// Its fair share: instances over live replicas, rounded up.
    pub share: usize,
}

/// An instance lease as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceLease {
    pub instance: String,
    pub owner: String,
    pub expires_at: DateTime<Utc>,
}

pub trait InstanceLeases {
    /// Heartbeat, renew what this replica holds, release `release`, take
    /// free or expired leases up to the fair share; one transaction.
    fn keep_instance_leases(
        &self,
        p: KeepLeasesParams,
    ) -> impl Future<Output = Result<LeaseGrant>> + Send;
    /// Gives up every lease of `owner` and its heartbeat (clean shutdown:
    /// another replica takes its instances at its next renewal).
    fn release_instance_leases(&self, owner: &str) -> impl Future<Output = Result<()>> + Send;
    /// Every instance lease, expired or not, by instance.
    fn instance_leases(&self) -> impl Future<Output = Result<Vec<InstanceLease>>> + Send;
    /// How soon the first unexpired lease that another replica holds on one
    /// of `instances` expires (None: there is none). A replica with room in
    /// its share renews right then, so that an instance whose holder died
    /// is served again within one lease, not one lease and a renewal period.
    fn next_lease_expiry(
        &self,
        owner: &str,
        instances: &[String],
    ) -> impl Future<Output = Result<Option<Duration>>> + Send;
}

fn share(instances: usize, live: i64) -> usize {
    let live = live.max(1) as usize;
    instances.div_ceil(live)
}

impl<S: Sql> InstanceLeases for S {
    async fn keep_instance_leases(&self, p: KeepLeasesParams) -> Result<LeaseGrant> {
        let ttl = p.ttl.as_millis() as i64;
        let (now, expires) = (S::NOW, format!("{} + $2{}", S::NOW, S::MILLIS));
        let mut tx = self.begin(false).await?;
        let s = Stmt::uncounted(format!(
            "INSERT INTO status_replicas (owner, seen_at) VALUES ($1, {now})
             ON CONFLICT (owner) DO UPDATE SET seen_at = excluded.seen_at"
        ));
        S::execute_in(&mut tx, s.bind(&p.owner)).await?;
        let s = Stmt::uncounted(format!(
            "DELETE FROM status_replicas WHERE seen_at < {now} - 3 * $1{}",
            S::MILLIS
        ));
        S::execute_in(&mut tx, s.bind(ttl)).await?;
        let s = Stmt::uncounted(format!(
            "SELECT COUNT(*) AS n FROM status_replicas WHERE seen_at >= {}",
            S::ago("$1")
        ));
        let live = row::map_all(&S::fetch_in(&mut tx, s.bind(ttl)).await?, |r| r.big("n"))?;
        // Released, and instances this replica no longer serves.
        let s = Stmt::uncounted(format!(
            "DELETE FROM status_instance_leases WHERE owner = $1 AND ({} OR {})",
            S::in_list("instance", "$2", "text"),
            S::not_in_list("instance", "$3", "text"),
        ));
        let s = s.bind(&p.owner).bind(&p.release[..]).bind(&p.instances[..]);
        S::execute_in(&mut tx, s).await?;
        let s = Stmt::uncounted(format!(
            "UPDATE status_instance_leases SET expires_at = {expires}
             WHERE owner = $1 RETURNING instance"
        ));
        let held = S::fetch_in(&mut tx, s.bind(&p.owner).bind(ttl)).await?;
        let mut held = row::map_all(&held, |r| r.text("instance"))?;
        let share = share(p.instances.len(), live.into_iter().sum());
        if held.len() < share {
            // Two replicas may pick the same free instance: ON CONFLICT lets
            // the first one's fresh lease stand (it is no longer expired).
            let s = Stmt::uncounted(format!(
                "INSERT INTO status_instance_leases (instance, owner, expires_at)
                 SELECT w.value, $1, {expires} FROM {}
                 WHERE {}
                   AND NOT EXISTS (SELECT 1 FROM status_instance_leases l
                                   WHERE l.instance = w.value AND l.expires_at >= {now})
                 ORDER BY random() LIMIT $5
                 ON CONFLICT (instance) DO UPDATE SET owner = excluded.owner,
                    expires_at = excluded.expires_at
                 WHERE status_instance_leases.expires_at < {now}
                 RETURNING instance",
                S::list_table("$3", "text", "w"),
                S::not_in_list("w.value", "$4", "text"),
            ));
            let s = s
                .bind(&p.owner)
                .bind(ttl)
                .bind(&p.instances[..])
                .bind(&p.release[..])
                .bind((share - held.len()) as i64);
            let got = S::fetch_in(&mut tx, s).await?;
            held.extend(row::map_all(&got, |r| r.text("instance"))?);
        }
        S::commit(tx).await?;
        held.sort();
        Ok(LeaseGrant { held, share })
    }

    async fn release_instance_leases(&self, owner: &str) -> Result<()> {
        let mut tx = self.begin(false).await?;
        for table in ["status_instance_leases", "status_replicas"] {
            let s = Stmt::uncounted(format!("DELETE FROM {table} WHERE owner = $1"));
            S::execute_in(&mut tx, s.bind(owner)).await?;
        }
        S::commit(tx).await?;
        Ok(())
    }

    async fn instance_leases(&self) -> Result<Vec<InstanceLease>> {
        let s = Stmt::uncounted(
            "SELECT instance, owner, expires_at FROM status_instance_leases ORDER BY instance",
        );
        row::map_all(&self.fetch(s).await?, |r| {
            Ok(InstanceLease {
                instance: r.text("instance")?,
                owner: r.text("owner")?,
                expires_at: r.time("expires_at")?.unwrap_or_default(),
            })
        })
    }

    async fn next_lease_expiry(
        &self,
        owner: &str,
        instances: &[String],
    ) -> Result<Option<Duration>> {
        let now = S::NOW;
        let s = Stmt::uncounted(format!(
            "SELECT MIN(expires_at) AS at, {now} AS now_at FROM status_instance_leases
             WHERE owner <> $1 AND expires_at >= {now} AND {}",
            S::in_list("instance", "$2", "text"),
        ));
        let rows = self.fetch(s.bind(owner).bind(instances)).await?;
        let at = row::map_all(&rows, |r| Ok((r.time("at")?, r.time("now_at")?)))?;
        Ok(at.into_iter().next().and_then(|(at, now)| {
            let (at, now) = (at?, now?);
            Some((at - now).to_std().unwrap_or_default())
        }))
    }
}

impl<S: InstanceLeases + Sync> InstanceLeases for Timed<S> {
    timed! {
        fn keep_instance_leases(&self, p: KeepLeasesParams) -> LeaseGrant;
        fn release_instance_leases(&self, owner: &str) -> ();
        fn instance_leases(&self) -> Vec<InstanceLease>;
        fn next_lease_expiry(&self, owner: &str, instances: &[String]) -> Option<Duration>;
    }
}
