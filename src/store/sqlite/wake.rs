//! Wake-ups on commits to a SQLite file by any process, by SQLite's own
//! means and the kernel's, never by opening, reading, stat-ing or locking
//! SQLite's files behind its back (DESIGN R9): closing any descriptor of a
//! file drops all of this process's POSIX locks on it, so another process's
//! connection believes it is alone and reinitialises the wal-index this
//! process has mapped (SIGBUS, "database disk image is malformed").
//!
//! Two sources bump one counter:
//! - **Directory notifications** (inotify, through `notify`) on the
//!   database's *directory*, filtered to the database and `-wal` names. A
//!   commit appends its frames to the WAL with `write(2)` (a checkpoint or a
//!   rollback-journal commit writes the database file), which the kernel
//!   reports at once. Watching the directory opens none of SQLite's files.
//!   This is the fast path: pickup within milliseconds, no query when idle.
//! - **`PRAGMA data_version`** on a dedicated connection: its value changes
//!   whenever any other connection (this process's pool included) commits.
//!   The slow, always-correct fallback for what notifications miss (a full
//!   event queue, file systems without them such as NFS): every 2 s, or
//!   every 100 ms when notifications could not be set up. It is counted in
//!   the statement counter like every other statement.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tokio::sync::watch;

/// `PRAGMA data_version` period while directory notifications work.
const DATA_VERSION_EVERY: Duration = Duration::from_secs(2);
/// … and when they could not be set up (the only signal left).
const DATA_VERSION_ALONE_EVERY: Duration = Duration::from_millis(100);

/// The wake signal of one database file, shared by a store's clones.
#[derive(Debug)]
pub(super) struct Wake {
    tx: watch::Sender<u64>,
    /// The database file; None for an in-memory database (nothing to watch:
    /// only this process writes it, and idle workers poll).
    file: Option<PathBuf>,
    opts: SqliteConnectOptions,
    /// Started on first subscription, so that one-shot CLI commands open no
    /// watcher and no extra connection.
    started: Mutex<Option<Option<notify::RecommendedWatcher>>>,
    /// Statements run by the `data_version` poller.
    pub(super) statements: AtomicU64,
}

impl Wake {
    pub(super) fn new(file: Option<PathBuf>, opts: SqliteConnectOptions) -> Arc<Wake> {
        Arc::new(Wake {
            tx: watch::Sender::new(0),
            file,
            opts,
            started: Mutex::new(None),
            statements: AtomicU64::new(0),
        })
    }

    pub(super) fn watched(&self) -> bool {
        self.file.is_some()
    }

    fn bump(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver of the signal; the first call starts both sources.
    pub(super) fn subscribe(self: &Arc<Wake>) -> watch::Receiver<u64> {
        if let Some(file) = &self.file {
            let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
            if started.is_none() {
                let watcher = watch_directory(file, Arc::downgrade(self));
                let every = if watcher.is_some() {
                    DATA_VERSION_EVERY
                } else {
                    DATA_VERSION_ALONE_EVERY
                };
                poll_data_version(Arc::downgrade(self), every);
                *started = Some(watcher);
            }
        }
        self.tx.subscribe()
    }
}

/// Watches `db`'s directory; None (logged) if notifications are unavailable.
fn watch_directory(db: &Path, wake: Weak<Wake>) -> Option<notify::RecommendedWatcher> {
    use notify::event::{EventKind, ModifyKind};
    use notify::Watcher;
    let dir = match db.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = db.file_name()?.to_os_string();
    let mut wal = name.clone();
    wal.push("-wal");
    let handler = move |res: notify::Result<notify::Event>| {
        let Some(wake) = wake.upgrade() else { return };
        let Ok(event) = res else {
            // An overflowed queue or a watch error: something may have
            // changed; look.
            wake.bump();
            return;
        };
        // Data writes only: a commit always writes the WAL (or, without
        // one, the database file). Opening, reading, closing or a new
        // connection's fchown of the files (SQLite does that as root) are
        // no commit, and waking on them would let readers wake the workers.
        let write = matches!(
            event.kind,
            EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any | ModifyKind::Other)
        );
        let ours = event
            .paths
            .iter()
            .any(|p| p.file_name().is_some_and(|f| f == name || f == wal));
        if write && ours {
            wake.bump();
        }
    };
    let watcher = notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(&dir, notify::RecursiveMode::NonRecursive)?;
        Ok(w)
    });
    match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(
                error = %e,
                dir = %dir.display(),
                "no directory notifications for the SQLite file; polling PRAGMA data_version every 100 ms"
            );
            None
        }
    }
}

/// Polls `PRAGMA data_version` on a connection of its own until every store
/// holding `wake` is dropped.
fn poll_data_version(wake: Weak<Wake>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut conn: Option<sqlx::SqliteConnection> = None;
        let mut last: Option<i64> = None;
        loop {
            tick.tick().await;
            let Some(w) = wake.upgrade() else { break };
            if conn.is_none() {
                match w.opts.connect().await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "data_version connection failed; retrying");
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            w.statements.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("statusd_db_statements_total", "source" => "wake").increment(1);
            match sqlx::query_scalar::<_, i64>("PRAGMA data_version")
                .fetch_one(&mut *c)
                .await
            {
                Ok(v) => {
                    if last.is_some_and(|l| l != v) {
                        w.bump();
                    }
                    last = Some(v);
                }
                Err(e) => {
                    // A new connection starts a new sequence: look once.
                    tracing::warn!(error = %e, "PRAGMA data_version failed; reconnecting");
                    conn = None;
                    last = None;
                    w.bump();
                }
            }
        }
        if let Some(c) = conn {
            let _ = c.close().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    /// The fallback alone (no directory notifications): a commit by another
    /// connection changes `data_version`, and only a commit does.
    #[tokio::test]
    async fn data_version_alone_sees_other_connections_commits() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("w.db");
        let url = format!("sqlite://{}", file.display());
        let opts = SqliteConnectOptions::from_str(&url)
            .expect("url")
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let mut other = opts.connect().await.expect("connect");
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(&mut other)
            .await
            .expect("create");
        let wake = Wake::new(Some(file), opts);
        let mut rx = wake.tx.subscribe();
        poll_data_version(Arc::downgrade(&wake), Duration::from_millis(20));
        let quiet = tokio::time::timeout(Duration::from_millis(300), rx.changed()).await;
        assert!(quiet.is_err(), "no signal without a commit");
        sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut other)
            .await
            .expect("insert");
        tokio::time::timeout(Duration::from_secs(2), rx.changed())
            .await
            .expect("the commit is seen")
            .expect("sender alive");
        assert!(
            wake.statements.load(Ordering::Relaxed) > 0,
            "PRAGMAs counted"
        );
    }
}
