//! Wake-ups on PostgreSQL: one `LISTEN status_outbox, status_instances` connection per
//! store (shared by its clones), whose notifications bump the store's wake
//! signal. The migration's trigger sends them on every insert or update that
//! may make work due.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;

use super::PgStore;

/// The channel the migration's trigger notifies.
pub const CHANNEL: &str = "status_outbox";

/// The channel migration 0006's trigger notifies when `status_instances`
/// changes (see `store::instances`); the same connection hears it and bumps
/// the store's instances signal instead.
pub const INSTANCES_CHANNEL: &str = "status_instances";

impl PgStore {
    /// Keeps one `LISTEN` connection open and bumps the wake signal on every
    /// notification. `PgListener::recv` reconnects after a dropped
    /// connection; the bump after a reconnect makes workers look for work
    /// they may have missed while it was down.
    pub(super) fn start_listener(&self) {
        let mut started = self
            .listener_started
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *started {
            return;
        }
        *started = true;
        let pool = self.pool.clone();
        let wake = Arc::downgrade(&self.wake);
        let instances_wake = Arc::downgrade(&self.instances_wake);
        let bump =
            |tx: &tokio::sync::watch::Sender<u64>| tx.send_modify(|n| *n = n.wrapping_add(1));
        tokio::spawn(async move {
            loop {
                let mut listener = match PgListener::connect_with(&pool).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection failed; polling until it is back");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if wake.strong_count() == 0 {
                            return;
                        }
                        continue;
                    }
                };
                if let Err(e) = listener.listen_all([CHANNEL, INSTANCES_CHANNEL]).await {
                    tracing::warn!(error = %e, "LISTEN failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                loop {
                    let got = listener.try_recv().await;
                    let Some(tx) = wake.upgrade() else { return };
                    match got {
                        Ok(Some(n)) if n.channel() == INSTANCES_CHANNEL => {
                            if let Some(i) = instances_wake.upgrade() {
                                bump(&i);
                            }
                        }
                        Ok(Some(_)) => bump(&tx),
                        Ok(None) => {
                            // Connection lost; the next try_recv reconnects.
                            tracing::warn!("LISTEN connection lost; reconnecting");
                            bump(&tx);
                            if let Some(i) = instances_wake.upgrade() {
                                bump(&i);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "LISTEN connection failed; reconnecting");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            break;
                        }
                    }
                }
            }
        });
    }
}
