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

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use sqlx::Row;

use super::{PgStore, Result, SqliteStore, Timed};

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

fn json(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

/// The database clock in milliseconds (as in the SQLite store).
const NOW: &str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";

impl InstanceLeases for SqliteStore {
    async fn keep_instance_leases(&self, p: KeepLeasesParams) -> Result<LeaseGrant> {
        let ttl = p.ttl.as_millis() as i64;
        let (all, release) = (json(&p.instances), json(&p.release));
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(&format!(
            "INSERT INTO status_replicas (owner, seen_at) VALUES (?1, {NOW})
             ON CONFLICT (owner) DO UPDATE SET seen_at = excluded.seen_at"
        ))
        .bind(&p.owner)
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "DELETE FROM status_replicas WHERE seen_at < {NOW} - 3 * ?1"
        ))
        .bind(ttl)
        .execute(&mut *tx)
        .await?;
        let live: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM status_replicas WHERE seen_at >= {NOW} - ?1"
        ))
        .bind(ttl)
        .fetch_one(&mut *tx)
        .await?;
        // Released, and instances this replica no longer serves.
        sqlx::query(
            "DELETE FROM status_instance_leases WHERE owner = ?1
               AND (instance IN (SELECT value FROM json_each(?2))
                    OR instance NOT IN (SELECT value FROM json_each(?3)))",
        )
        .bind(&p.owner)
        .bind(&release)
        .bind(&all)
        .execute(&mut *tx)
        .await?;
        let mut held: Vec<String> = sqlx::query_scalar(&format!(
            "UPDATE status_instance_leases SET expires_at = {NOW} + ?2
             WHERE owner = ?1 RETURNING instance"
        ))
        .bind(&p.owner)
        .bind(ttl)
        .fetch_all(&mut *tx)
        .await?;
        let share = share(p.instances.len(), live);
        if held.len() < share {
            let got: Vec<String> = sqlx::query_scalar(&format!(
                "INSERT INTO status_instance_leases (instance, owner, expires_at)
                 SELECT w.value, ?1, {NOW} + ?2 FROM json_each(?3) AS w
                 WHERE w.value NOT IN (SELECT value FROM json_each(?4))
                   AND NOT EXISTS (SELECT 1 FROM status_instance_leases l
                                   WHERE l.instance = w.value AND l.expires_at >= {NOW})
                 ORDER BY random() LIMIT ?5
                 ON CONFLICT (instance) DO UPDATE SET owner = excluded.owner,
                    expires_at = excluded.expires_at
                 WHERE status_instance_leases.expires_at < {NOW}
                 RETURNING instance"
            ))
            .bind(&p.owner)
            .bind(ttl)
            .bind(&all)
            .bind(&release)
            .bind((share - held.len()) as i64)
            .fetch_all(&mut *tx)
            .await?;
            held.extend(got);
        }
        tx.commit().await?;
        held.sort();
        Ok(LeaseGrant { held, share })
    }

    async fn release_instance_leases(&self, owner: &str) -> Result<()> {
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("DELETE FROM status_instance_leases WHERE owner = ?1")
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM status_replicas WHERE owner = ?1")
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn instance_leases(&self) -> Result<Vec<InstanceLease>> {
        let rows = sqlx::query(
            "SELECT instance, owner, expires_at FROM status_instance_leases ORDER BY instance",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let ms: i64 = r.try_get("expires_at")?;
                Ok(InstanceLease {
                    instance: r.try_get("instance")?,
                    owner: r.try_get("owner")?,
                    expires_at: Utc.timestamp_millis_opt(ms).single().unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn next_lease_expiry(
        &self,
        owner: &str,
        instances: &[String],
    ) -> Result<Option<Duration>> {
        let ms: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT MIN(expires_at) - {NOW} FROM status_instance_leases
             WHERE owner <> ?1 AND expires_at >= {NOW}
               AND instance IN (SELECT value FROM json_each(?2))"
        ))
        .bind(owner)
        .bind(json(instances))
        .fetch_one(self.pool())
        .await?;
        Ok(ms.map(|m| Duration::from_millis(m.max(0) as u64)))
    }
}

impl InstanceLeases for PgStore {
    async fn keep_instance_leases(&self, p: KeepLeasesParams) -> Result<LeaseGrant> {
        let ttl = p.ttl.as_millis() as i64;
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO status_replicas (owner, seen_at) VALUES ($1, now())
             ON CONFLICT (owner) DO UPDATE SET seen_at = excluded.seen_at",
        )
        .bind(&p.owner)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM status_replicas WHERE seen_at < now() - 3 * $1 * interval '1 millisecond'",
        )
        .bind(ttl)
        .execute(&mut *tx)
        .await?;
        let live: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM status_replicas
             WHERE seen_at >= now() - $1 * interval '1 millisecond'",
        )
        .bind(ttl)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM status_instance_leases WHERE owner = $1
               AND (instance = ANY($2::text[]) OR instance <> ALL($3::text[]))",
        )
        .bind(&p.owner)
        .bind(&p.release)
        .bind(&p.instances)
        .execute(&mut *tx)
        .await?;
        let mut held: Vec<String> = sqlx::query_scalar(
            "UPDATE status_instance_leases
             SET expires_at = now() + $2 * interval '1 millisecond'
             WHERE owner = $1 RETURNING instance",
        )
        .bind(&p.owner)
        .bind(ttl)
        .fetch_all(&mut *tx)
        .await?;
        let share = share(p.instances.len(), live);
        if held.len() < share {
            // Two replicas may pick the same free instance: ON CONFLICT lets
            // the first one's fresh lease stand (it is no longer expired).
            let got: Vec<String> = sqlx::query_scalar(
                "INSERT INTO status_instance_leases (instance, owner, expires_at)
                 SELECT w, $1, now() + $2 * interval '1 millisecond' FROM unnest($3::text[]) AS w
                 WHERE w <> ALL($4::text[])
                   AND NOT EXISTS (SELECT 1 FROM status_instance_leases l
                                   WHERE l.instance = w AND l.expires_at >= now())
                 ORDER BY random() LIMIT $5
                 ON CONFLICT (instance) DO UPDATE SET owner = excluded.owner,
                    expires_at = excluded.expires_at
                 WHERE status_instance_leases.expires_at < now()
                 RETURNING instance",
            )
            .bind(&p.owner)
            .bind(ttl)
            .bind(&p.instances)
            .bind(&p.release)
            .bind((share - held.len()) as i64)
            .fetch_all(&mut *tx)
            .await?;
            held.extend(got);
        }
        tx.commit().await?;
        held.sort();
        Ok(LeaseGrant { held, share })
    }

    async fn release_instance_leases(&self, owner: &str) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM status_instance_leases WHERE owner = $1")
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM status_replicas WHERE owner = $1")
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn instance_leases(&self) -> Result<Vec<InstanceLease>> {
        let rows = sqlx::query(
            "SELECT instance, owner, expires_at FROM status_instance_leases ORDER BY instance",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(InstanceLease {
                    instance: r.try_get("instance")?,
                    owner: r.try_get("owner")?,
                    expires_at: r.try_get("expires_at")?,
                })
            })
            .collect()
    }

    async fn next_lease_expiry(
        &self,
        owner: &str,
        instances: &[String],
    ) -> Result<Option<Duration>> {
        let ms: Option<f64> = sqlx::query_scalar(
            "SELECT (EXTRACT(EPOCH FROM MIN(expires_at) - now()) * 1000)::float8
             FROM status_instance_leases
             WHERE owner <> $1 AND expires_at >= now() AND instance = ANY($2::text[])",
        )
        .bind(owner)
        .bind(instances)
        .fetch_one(self.pool())
        .await?;
        Ok(ms.map(|m| Duration::from_millis(m.max(0.0) as u64)))
    }
}

impl<S: InstanceLeases + Sync> InstanceLeases for Timed<S> {
    async fn keep_instance_leases(&self, p: KeepLeasesParams) -> Result<LeaseGrant> {
        self.within("keep_instance_leases", self.inner().keep_instance_leases(p))
            .await
    }

    async fn release_instance_leases(&self, owner: &str) -> Result<()> {
        self.within(
            "release_instance_leases",
            self.inner().release_instance_leases(owner),
        )
        .await
    }

    async fn instance_leases(&self) -> Result<Vec<InstanceLease>> {
        self.within("instance_leases", self.inner().instance_leases())
            .await
    }

    async fn next_lease_expiry(
        &self,
        owner: &str,
        instances: &[String],
    ) -> Result<Option<Duration>> {
        self.within(
            "next_lease_expiry",
            self.inner().next_lease_expiry(owner, instances),
        )
        .await
    }
}
