//! The contract between the daemon and any provider: the [`Provider`]
//! trait, what goes into a call and what comes out of it. Provider
//! implementations import this module; it imports none of them.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::{AttemptOutcome, Kind, StatusBody};

/// What became of one request that may have changed the provider's state.
#[derive(Debug, Clone, PartialEq)]
pub enum SendOutcome {
    /// 2xx with a parsable body carrying the posted message's id.
    Posted { provider_id: String },
    /// Provably not processed: connect refused, 429, documented
    /// pre-processing errors. Safe to send again with the same id.
    Retryable {
        reason: String,
        http_status: Option<u16>,
        /// Honoured from `Retry-After` when the provider sent one.
        retry_after: Option<Duration>,
    },
    /// Maybe processed: timeout, reset after the request was written, a 5xx
    /// that may have been processed, an unparsable 2xx body.
    InDoubt {
        reason: String,
        http_status: Option<u16>,
    },
    /// The provider refused the request as invalid; sending again won't help.
    Permanent { reason: String, http_status: u16 },
    /// 401/403 or session not connected: the instance is unusable right now.
    InstanceDown {
        reason: String,
        http_status: Option<u16>,
    },
}

impl SendOutcome {
    /// The attempt history's outcome for this answer (a rate-limited
    /// refusal is told apart by the dispatcher, which refunds it).
    pub fn attempt_outcome(&self) -> AttemptOutcome {
        match self {
            SendOutcome::Posted { .. } => AttemptOutcome::Posted,
            SendOutcome::Retryable { .. } => AttemptOutcome::Retryable,
            SendOutcome::InDoubt { .. } => AttemptOutcome::InDoubt,
            SendOutcome::Permanent { .. } => AttemptOutcome::Permanent,
            SendOutcome::InstanceDown { .. } => AttemptOutcome::InstanceDown,
        }
    }

    /// A short label for metrics and logs (the attempt outcome's text).
    pub fn label(&self) -> &'static str {
        self.attempt_outcome().as_str()
    }

    pub fn http_status(&self) -> Option<u16> {
        match self {
            SendOutcome::Posted { .. } => None,
            SendOutcome::Retryable { http_status, .. }
            | SendOutcome::InDoubt { http_status, .. }
            | SendOutcome::InstanceDown { http_status, .. } => *http_status,
            SendOutcome::Permanent { http_status, .. } => Some(*http_status),
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            SendOutcome::Posted { .. } => None,
            SendOutcome::Retryable { reason, .. }
            | SendOutcome::InDoubt { reason, .. }
            | SendOutcome::Permanent { reason, .. }
            | SendOutcome::InstanceDown { reason, .. } => Some(reason),
        }
    }

    /// The reason, to rewrite in place (redaction).
    pub fn reason_mut(&mut self) -> Option<&mut String> {
        match self {
            SendOutcome::Posted { .. } => None,
            SendOutcome::Retryable { reason, .. }
            | SendOutcome::InDoubt { reason, .. }
            | SendOutcome::Permanent { reason, .. }
            | SendOutcome::InstanceDown { reason, .. } => Some(reason),
        }
    }
}

/// One status to post.
#[derive(Debug, Clone)]
pub struct OutgoingStatus<'a> {
    /// The pre-generated WhatsApp message id (committed before this call).
    pub message_id: &'a str,
    pub body: &'a StatusBody,
}

/// What the reconciler asks: is this status on the provider?
#[derive(Debug, Clone)]
pub struct StatusQuery<'a> {
    pub message_id: &'a str,
    pub kind: Kind,
    /// [`StatusBody::fingerprint`] of the status, for providers that assign
    /// their own ids.
    pub fingerprint: &'a str,
    /// The first attempt's start, minus slack: statuses older than this are
    /// not candidates for a content match.
    pub sent_after: DateTime<Utc>,
}

/// The answer to a [`StatusQuery`].
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Present {
        provider_id: String,
    },
    Absent,
    /// The look-up itself failed; nothing is known.
    Unavailable {
        reason: String,
    },
}

/// Errors of calls that don't post anything (fetching an id, probing).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    #[error("instance is down: {0}")]
    InstanceDown(String),
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    #[error("provider returned a malformed response: {0}")]
    Malformed(String),
}

/// One provider instance (one WhatsApp session). Implemented by
/// [`WawpClient`](super::WawpClient); a WAHA-style client can be added beside it.
pub trait Provider: Send + Sync + 'static {
    /// `GET /v2/status/new-message-id`.
    fn new_message_id(&self) -> impl Future<Output = Result<String, ProviderError>> + Send;
    /// `POST /v2/status/{kind}`.
    fn send_status(&self, status: &OutgoingStatus<'_>) -> impl Future<Output = SendOutcome> + Send;
    /// `POST /v2/status/delete`.
    fn delete_status(&self, message_id: &str) -> impl Future<Output = SendOutcome> + Send;
    /// Is the status on the provider (by id, or by content when the provider
    /// assigns ids)?
    fn find_status(&self, query: &StatusQuery<'_>) -> impl Future<Output = Lookup> + Send;
    /// Cheap health check used while an instance is paused.
    fn probe(&self) -> impl Future<Output = Result<(), ProviderError>> + Send;
    /// Whether this instance sends our pre-generated id (`supplied_id`).
    fn supplies_id(&self) -> bool;
}
