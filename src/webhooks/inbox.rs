//! The server's side of the inbox: a group commit. Each accepted event is
//! handed to one writer task, which stores every event that arrived
//! meanwhile in one statement and only then lets their requests answer 200.
//! Durable before the answer, as before, but one commit (one fsync on
//! SQLite) per burst instead of per event: a flood of deliveries does not
//! take the database's single writer away from the dispatcher.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Notify};

use crate::store::{NewEvent, Store};

/// Most events stored in one statement.
const GROUP: usize = 500;
/// How long the first event of a group waits for others: the price of one
/// commit per burst, paid by the provider's request, never by a send.
const LINGER: std::time::Duration = std::time::Duration::from_millis(25);

struct Pending {
    event: NewEvent,
    done: oneshot::Sender<Result<(), String>>,
}

/// Hands events to the writer task; cheap to clone.
#[derive(Clone)]
pub struct InboxWriter {
    tx: mpsc::Sender<Pending>,
}

impl InboxWriter {
    /// Starts the writer task (on the current Tokio runtime); it ends when
    /// the last `InboxWriter` is dropped. `wake` is rung after each commit.
    pub fn start<S: Store>(store: S, wake: Arc<Notify>) -> InboxWriter {
        let (tx, mut rx) = mpsc::channel::<Pending>(4 * GROUP);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // Linger a moment so that a burst shares one commit.
                tokio::time::sleep(LINGER).await;
                let mut batch = vec![first];
                while batch.len() < GROUP {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                let events: Vec<NewEvent> = batch.iter().map(|p| p.event.clone()).collect();
                let result = store
                    .webhook_accept_many(&events)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                if result.is_ok() {
                    wake.notify_one();
                }
                for p in batch {
                    // A caller that gave up (its connection closed) is fine:
                    // the event is stored and will be applied all the same.
                    let _ = p.done.send(result.clone());
                }
            }
        });
        InboxWriter { tx }
    }

    /// Stores the event; returns once it is committed (or why not).
    pub async fn accept(&self, event: NewEvent) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Pending { event, done })
            .await
            .map_err(|_| "the inbox writer stopped".to_string())?;
        wait.await
            .map_err(|_| "the inbox writer stopped".to_string())?
    }
}
