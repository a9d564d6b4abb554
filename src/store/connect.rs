//! The backend picked once: `database.url`'s scheme names it, [`connect`]
//! opens it, and the caller matches on [`Connected`] once to hand the
//! concrete store to generic code (no `dyn`, no `sqlx::Any`).

use std::time::Duration;

use secrecy::ExposeSecret;

use super::{Backend, PgStore, Result, SqliteStore, StoreError, Timed};
use crate::config::{redact_url, redact_url_secrets_in, DatabaseSettings};

/// The store named by `database.url`.
#[derive(Debug, Clone)]
pub enum Connected {
    Sqlite(SqliteStore),
    /// Every call bounded by `database.call_timeout_ms` (see [`Timed`]).
    Postgres(Timed<PgStore>),
}

/// How [`connect`] treats a database that does not answer yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patience {
    /// A one-shot operator command: one connection attempt within 10 s, so
    /// that the real cause is reported rather than the pool's "timed out".
    FailFast,
    /// The daemon: the pool's own retries, so that a daemon started
    /// alongside its database waits for it.
    Wait,
}

/// How long a [`Patience::FailFast`] probe waits for PostgreSQL.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the database named by `db.url`. A failure names the URL with its
/// passwords redacted, and the driver's own message is scrubbed of them too
/// (a driver may quote the URL or a parameter).
pub async fn connect(db: &DatabaseSettings, patience: Patience) -> Result<Connected> {
    let url = db.url.expose_secret();
    let failed = |what: &'static str, e: &dyn std::error::Error| StoreError::Connect {
        what,
        url: redact_url(url),
        cause: Scrubbed(redact_url_secrets_in(&chain(e), url)),
    };
    match Backend::from_url(url)? {
        Backend::Sqlite => SqliteStore::connect(url, db.max_connections)
            .await
            .map(Connected::Sqlite)
            .map_err(|e| failed("cannot open the database at", &e)),
        Backend::Postgres => {
            let what = "cannot connect to the database at";
            if patience == Patience::FailFast {
                probe_postgres(url).await.map_err(|e| failed(what, &e))?;
            }
            let store = PgStore::connect(url, db.max_connections)
                .await
                .map_err(|e| failed(what, &e))?;
            Ok(Connected::Postgres(Timed::new(store, db.call_timeout())))
        }
    }
}

/// One attempt to reach PostgreSQL: the pool retries refused connections
/// until its acquire timeout and then reports only "pool timed out".
async fn probe_postgres(url: &str) -> Result<()> {
    use sqlx::Connection;
    match tokio::time::timeout(PROBE_TIMEOUT, sqlx::PgConnection::connect(url)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(StoreError::Timeout {
            call: "connect",
            after: PROBE_TIMEOUT,
        }),
    }
}

/// An error and its causes on one line, each cause once.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text = format!("{text}: {s_text}");
        }
        source = s.source();
    }
    text
}

/// A driver's message with the database URL's secrets taken out.
#[derive(Debug)]
pub struct Scrubbed(String);

impl std::fmt::Display for Scrubbed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Scrubbed {}

impl Connected {
    /// Fails with [`StoreError::NotMigrated`] unless `statusd migrate` (or a
    /// daemon) has applied the migrations: an operator command on a fresh
    /// database gets the next step, not a missing table's SQL error.
    pub async fn require_migrated(&self) -> Result<()> {
        let migrated = match self {
            Connected::Sqlite(s) => s.migrated().await?,
            Connected::Postgres(s) => s.inner().migrated().await?,
        };
        if migrated {
            Ok(())
        } else {
            Err(StoreError::NotMigrated)
        }
    }
}

/// The table sqlx records applied migrations in: present once `statusd
/// migrate` (or a daemon) has run.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

impl SqliteStore {
    /// Whether the migrations have been applied to this database.
    pub async fn migrated(&self) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        )
        .bind(MIGRATIONS_TABLE)
        .fetch_one(self.pool())
        .await?)
    }
}

impl PgStore {
    /// Whether the migrations have been applied (in a schema of the
    /// connection's `search_path`).
    pub async fn migrated(&self) -> Result<bool> {
        Ok(sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(MIGRATIONS_TABLE)
            .fetch_one(self.pool())
            .await?)
    }
}
