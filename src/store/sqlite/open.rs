//! Opening the SQLite store and counting its statements.

use super::*;

impl SqliteStore {
    /// Opens (creating if missing) the database file named by `url`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<SqliteStore> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed message id survives power loss, not just kill -9.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(15))
            // A write that failed at COMMIT (SQLITE_FULL on a full disk, an
            // I/O error) may have been rolled back by SQLite itself; sqlx's
            // own rollback then fails and the connection stays "in a
            // transaction" for sqlx forever: every later BEGIN on it fails
            // and its reads see an old snapshot. Such a connection is closed
            // on release, never reused. The ping first lets the queued
            // rollback run.
            .after_release(|conn, _| {
                Box::pin(async move {
                    use sqlx::Connection;
                    conn.ping().await?;
                    Ok(!conn.is_in_transaction())
                })
            })
            .connect_with(opts.clone())
            .await?;
        let file = opts.get_filename();
        // An in-memory database has no file to watch (only we write it).
        let file = file.is_file().then(|| file.to_path_buf());
        Ok(SqliteStore {
            pool,
            wake: Wake::new(file, opts),
            statements: Default::default(),
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The pool, counting one statement: every query goes through here, so
    /// that an idle daemon's cost (and a spinning one) shows on `/metrics`
    /// as `statusd_db_statements_total`.
    /// The pool for `s`: counted (see [`SqliteStore::db`]) unless `s` is
    /// one of the statements left out of the counter.
    pub(super) fn pool_for(&self, s: &Stmt) -> &SqlitePool {
        if s.counted {
            self.db()
        } else {
            &self.pool
        }
    }

    pub(super) fn db(&self) -> &SqlitePool {
        self.statements
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!("statusd_db_statements_total", "source" => "store").increment(1);
        &self.pool
    }

    /// Statements sent so far: the store's and the wake-up poller's.
    pub fn statements(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        self.statements.load(Relaxed) + self.wake.statements.load(Relaxed)
    }

    /// Statements of the wake-up poller alone (`PRAGMA data_version`).
    pub fn wake_statements(&self) -> u64 {
        self.wake
            .statements
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}
