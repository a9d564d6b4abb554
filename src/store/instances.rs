//! The runtime instance registry's table, `status_instances` (migration
//! 0006): instances added, changed, disabled and removed while daemons run,
//! beside the ones in the configuration file.
//!
//! `settings` is a JSON object with the keys of an `[instances.NAME]` table
//! of the file (so [`crate::config::InstanceConfig`] reads both, and a key
//! added there needs no migration); a CHECK refuses an `access_token` in it:
//! a token is named (`access_token_env`, `access_token_file`), never stored.
//! A removed instance keeps its row with `removed_at` set, so that its name
//! stays known and its rows wait instead of becoming `invalid`.
//!
//! Change signals: PostgreSQL `NOTIFY status_instances` (a statement
//! trigger), heard by the same `LISTEN` connection as the outbox's; SQLite:
//! the store's commit signal (directory notifications and `PRAGMA
//! data_version`), which fires on any commit — the registry rate-limits its
//! reloads.

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;

use super::row::{self, Columns};
use super::sql::{Sql, Stmt};
use super::timed::timed;
use super::{Result, StoreError, Timed};

/// An instance's settings: the keys of an `[instances.NAME]` table.
type Settings = serde_json::Map<String, serde_json::Value>;

/// One row of `status_instances`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceRecord {
    pub name: String,
    /// The instance's settings: the keys of an `[instances.NAME]` table.
    pub settings: serde_json::Map<String, serde_json::Value>,
    pub enabled: bool,
    /// Set by `statusd instance rm`: its rows wait, reported as paused.
    pub removed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Every row of `status_instances`, and the database time of the read.
#[derive(Debug, Clone)]
pub struct InstanceTable {
    pub rows: Vec<InstanceRecord>,
    pub read_at: DateTime<Utc>,
}

/// What `add_instance` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// A new name.
    Created,
    /// The name had been removed: it is back, with the new settings, and its
    /// waiting rows go again.
    Restored,
}

/// The queries of the instance registry, one method each. A supertrait of
/// [`super::Store`], so every store has them.
pub trait InstanceStore: Send + Sync {
    /// Every row, removed ones included, ordered by name.
    fn instance_table(&self) -> impl Future<Output = Result<InstanceTable>> + Send;
    /// Inserts an instance, or brings back a removed one of that name; a
    /// present (not removed) one is refused, naming it.
    fn add_instance(
        &self,
        name: &str,
        settings: &serde_json::Map<String, serde_json::Value>,
        enabled: bool,
    ) -> impl Future<Output = Result<Added>> + Send;
    /// Replaces the settings of a present instance, fenced by the
    /// `updated_at` the caller read (two concurrent `set`s cannot silently
    /// undo each other). False: absent, removed, or changed since.
    fn update_instance(
        &self,
        name: &str,
        settings: &serde_json::Map<String, serde_json::Value>,
        seen_updated_at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Enables or disables a present instance; false if absent or removed.
    fn set_instance_enabled(
        &self,
        name: &str,
        enabled: bool,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Marks a present instance removed; false if absent or already removed.
    fn remove_instance(&self, name: &str) -> impl Future<Output = Result<bool>> + Send;
    /// `pending_upload` rows of `names` that wait for a later attempt
    /// become due now: called when those instances start sending (added,
    /// enabled, restored), whose rows may have been turned back while they
    /// were unknown or held. Never `in_doubt` rows: their settle delay keeps
    /// a look-up from racing a request still in flight. Returns how many.
    fn make_instance_rows_due(&self, names: &[String]) -> impl Future<Output = Result<u64>> + Send;
    /// Statuses posted per instance within `window` before the database's
    /// `now` (the dashboard's and the metrics' posted per minute).
    fn posted_per_instance(
        &self,
        window: std::time::Duration,
    ) -> impl Future<Output = Result<Vec<(String, i64)>>> + Send;
    /// A signal that changes when `status_instances` may have changed.
    fn subscribe_instances(&self) -> watch::Receiver<u64>;
}

/// `window` in whole milliseconds, capped at a day.
fn window_ms(window: std::time::Duration) -> i64 {
    i64::try_from(window.as_millis())
        .unwrap_or(i64::MAX)
        .min(86_400_000)
}

fn settings_text(s: &Settings) -> String {
    serde_json::Value::Object(s.clone()).to_string()
}

fn settings_object(text: &str) -> Result<Settings> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err(StoreError::Invalid(
            "status_instances.settings: not a JSON object".into(),
        )),
    }
}

/// A refused insert or update as the operator's error: the table's CHECKs
/// name what is wrong (`settings_hold_no_token`, `instance_name_shape`).
fn refused(name: &str, e: StoreError) -> StoreError {
    if let StoreError::Database(sqlx::Error::Database(d)) = &e {
        let c = d.constraint().map(str::to_string).unwrap_or_default();
        let text = format!("{c} {}", d.message());
        if text.contains("settings_hold_no_token") {
            return StoreError::Invalid(format!(
                "instance `{name}`: settings must not hold an access token; \
                 name it with access_token_env or access_token_file"
            ));
        }
        if text.contains("instance_name_shape") {
            return StoreError::Invalid(format!(
                "instance name `{name}`: must be 1-64 lower-case letters, digits, - or _"
            ));
        }
    }
    e
}

impl<S: Sql> InstanceStore for S {
    async fn instance_table(&self) -> Result<InstanceTable> {
        // One statement, so that the clock reading and the rows are one
        // snapshot; the join keeps a row (of NULLs) when the table is empty.
        let sql = format!(
            "SELECT {} AS read_at, i.name, CAST(i.settings AS TEXT) AS settings, i.enabled,
                    i.removed_at, i.created_at, i.updated_at
             FROM (SELECT 1) one LEFT JOIN status_instances i ON true ORDER BY i.name",
            S::NOW
        );
        let rows = self.fetch(Stmt::new(sql)).await?;
        let mut read_at = DateTime::<Utc>::default();
        let mut out = Vec::new();
        for r in &rows {
            read_at = r
                .time("read_at")
                .map_err(StoreError::Invalid)?
                .unwrap_or_default();
            if let Some(name) = r.opt_text("name").map_err(StoreError::Invalid)? {
                out.push(instance_record(name, r)?);
            }
        }
        Ok(InstanceTable { rows: out, read_at })
    }

    async fn add_instance(&self, name: &str, settings: &Settings, enabled: bool) -> Result<Added> {
        // One statement: a new name is inserted, a removed one restored; a
        // present one is left alone (no row returned).
        let sql = format!(
            "INSERT INTO status_instances (name, settings, enabled) VALUES ($1, {}, $3)
             ON CONFLICT (name) DO UPDATE SET settings = excluded.settings,
                 enabled = excluded.enabled, removed_at = NULL, updated_at = {}
               WHERE status_instances.removed_at IS NOT NULL
             RETURNING {} AS fresh",
            S::typed("$2", "jsonb"),
            S::NOW,
            S::FRESH
        );
        let s = Stmt::new(sql)
            .bind(name)
            .bind(settings_text(settings))
            .bind(enabled);
        let r = self.fetch(s).await.map_err(|e| refused(name, e))?;
        match row::map_all(&r, |r| r.flag("fresh"))?.first() {
            Some(true) => Ok(Added::Created),
            Some(false) => Ok(Added::Restored),
            None => Err(StoreError::Invalid(format!(
                "instance `{name}` already exists: change it with `statusd instance set {name} …`"
            ))),
        }
    }

    async fn update_instance(
        &self,
        name: &str,
        settings: &Settings,
        seen_updated_at: DateTime<Utc>,
    ) -> Result<bool> {
        let sql = format!(
            "UPDATE status_instances SET settings = {}, updated_at = {}
             WHERE name = $1 AND removed_at IS NULL AND updated_at = $3",
            S::typed("$2", "jsonb"),
            S::TOUCH
        );
        let s = Stmt::new(sql)
            .bind(name)
            .bind(settings_text(settings))
            .bind(seen_updated_at);
        Ok(self.execute(s).await.map_err(|e| refused(name, e))? > 0)
    }

    async fn set_instance_enabled(&self, name: &str, enabled: bool) -> Result<bool> {
        let sql = format!(
            "UPDATE status_instances SET enabled = $2, updated_at = {}
             WHERE name = $1 AND removed_at IS NULL",
            S::TOUCH
        );
        Ok(self
            .execute(Stmt::new(sql).bind(name).bind(enabled))
            .await?
            > 0)
    }

    async fn remove_instance(&self, name: &str) -> Result<bool> {
        let sql = format!(
            "UPDATE status_instances SET removed_at = {}, updated_at = {}
             WHERE name = $1 AND removed_at IS NULL",
            S::NOW,
            S::TOUCH
        );
        Ok(self.execute(Stmt::new(sql).bind(name)).await? > 0)
    }

    async fn make_instance_rows_due(&self, names: &[String]) -> Result<u64> {
        if names.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "UPDATE status_outbox SET next_attempt_at = {now}
             WHERE state = 'pending_upload' AND next_attempt_at > {now}
               AND {}",
            S::in_list("instance", "$1", "text"),
            now = S::NOW
        );
        self.execute(Stmt::new(sql).bind(names)).await
    }

    async fn posted_per_instance(&self, window: std::time::Duration) -> Result<Vec<(String, i64)>> {
        // `updated_at` first: the partial index on terminal rows finds them.
        let sql = format!(
            "SELECT instance, COUNT(*) AS n FROM status_outbox
             WHERE state IN ('posted', 'failed', 'invalid', 'cancelled', 'deleted')
               AND updated_at >= {ago}
               AND state = 'posted' AND posted_at >= {ago}
             GROUP BY instance ORDER BY instance",
            ago = S::ago("$1")
        );
        let rows = self.fetch(Stmt::new(sql).bind(window_ms(window))).await?;
        row::map_all(&rows, |r| Ok((r.text("instance")?, r.big("n")?)))
    }

    fn subscribe_instances(&self) -> watch::Receiver<u64> {
        Sql::subscribe_instances(self)
    }
}

fn instance_record(name: String, r: &impl Columns) -> Result<InstanceRecord> {
    let col = |e: String| StoreError::Invalid(e);
    Ok(InstanceRecord {
        name,
        settings: settings_object(&r.text("settings").map_err(col)?)?,
        enabled: r.flag("enabled").map_err(col)?,
        removed_at: r.time("removed_at").map_err(col)?,
        created_at: r.time("created_at").map_err(col)?.unwrap_or_default(),
        updated_at: r.time("updated_at").map_err(col)?.unwrap_or_default(),
    })
}

impl<S: InstanceStore> InstanceStore for Timed<S> {
    timed! {
        fn instance_table(&self) -> InstanceTable;
        fn add_instance(&self, name: &str, settings: &Settings, enabled: bool) -> Added;
        fn update_instance(&self, name: &str, settings: &Settings, seen_updated_at: DateTime<Utc>) -> bool;
        fn set_instance_enabled(&self, name: &str, enabled: bool) -> bool;
        fn remove_instance(&self, name: &str) -> bool;
        fn make_instance_rows_due(&self, names: &[String]) -> u64;
        fn posted_per_instance(&self, window: std::time::Duration) -> Vec<(String, i64)>;
    }

    fn subscribe_instances(&self) -> watch::Receiver<u64> {
        self.inner().subscribe_instances()
    }
}
