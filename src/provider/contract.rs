//! The contract between the daemon and any provider: the [`Provider`]
//! trait, what goes into a call and what comes out of it. Provider
//! implementations import this module; it imports none of them.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::{namesake, AttemptOutcome, Kind, StatusBody};

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

/// The `reason` of every outcome but `Posted`, borrowed as `$outcome` is
/// (shared or mutable): one match for `reason` and `reason_mut`.
macro_rules! reason_of {
    ($outcome:expr) => {
        match $outcome {
            SendOutcome::Posted { .. } => None,
            SendOutcome::Retryable { reason, .. }
            | SendOutcome::InDoubt { reason, .. }
            | SendOutcome::Permanent { reason, .. }
            | SendOutcome::InstanceDown { reason, .. } => Some(reason),
        }
    };
}

impl SendOutcome {
    /// The attempt history's outcome for this answer (a rate-limited
    /// refusal is told apart by the dispatcher, which refunds it).
    pub fn attempt_outcome(&self) -> AttemptOutcome {
        namesake!(
            self,
            SendOutcome => AttemptOutcome: Posted, Retryable, InDoubt, Permanent, InstanceDown
        )
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
        reason_of!(self).map(String::as_str)
    }

    /// The reason, to rewrite in place (redaction).
    pub fn reason_mut(&mut self) -> Option<&mut String> {
        reason_of!(self)
    }
}

/// One status to post.
#[derive(Debug, Clone)]
pub struct OutgoingStatus<'a> {
    /// The pre-generated WhatsApp message id (committed before this call).
    pub message_id: &'a str,
    pub body: &'a StatusBody,
}

/// What the reconciler asks about one in-doubt row: is this status on the
/// provider?
#[derive(Debug, Clone)]
pub struct StatusQuery {
    /// The row's pre-generated WhatsApp message id.
    pub message_id: String,
    pub kind: Kind,
    /// [`StatusBody::fingerprint`](crate::model::StatusBody::fingerprint) of
    /// the status, for providers that assign their own ids.
    pub fingerprint: String,
    /// The latest claim's start, minus slack: statuses older than this are
    /// not candidates for a content match.
    pub sent_after: DateTime<Utc>,
}

/// The answer to a [`StatusQuery`].
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Present {
        provider_id: String,
    },
    /// Positive evidence of absence (DESIGN.md R5): a documented not-found
    /// where ids are proven honoured, or a complete, classified read of
    /// every own status in the window.
    Absent,
    /// Nothing is known (the look-up failed, or it could not prove
    /// absence): asked again with backoff, then parked.
    Unavailable {
        reason: String,
    },
}

/// What a look-up by id found.
#[derive(Debug, Clone, PartialEq)]
pub enum ById {
    /// The message, under this (bare) id.
    Found { provider_id: String },
    /// The provider's documented not-found (HTTP 404). Proves absence only
    /// where supplied ids and look-up by id are both proven (see
    /// [`Capabilities::by_id_miss_is_absence`](crate::store::Capabilities::by_id_miss_is_absence)).
    NotFound,
    /// Anything else: nothing is known.
    Failed { reason: String },
}

/// One page of the status chat's listing, newest first.
#[derive(Debug, Clone, Copy)]
pub struct ListRequest {
    pub offset: usize,
    pub limit: usize,
    /// Only statuses at or after this time are wanted (sent as
    /// `filter.timestamp.gte` where the provider supports it; the reader
    /// stops past it either way).
    pub since: DateTime<Utc>,
}

/// One listed message of the status chat, as far as it could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedStatus {
    /// The bare message id.
    pub id: String,
    /// When it was sent; None when the item carries no readable time.
    pub at: Option<DateTime<Utc>>,
    /// Whether it is our own status; None when the item does not say.
    pub from_me: Option<bool>,
    /// Its kind, from the engine's raw message (`_data`); None when no
    /// known kind could be read.
    pub kind: Option<Kind>,
    /// The content fingerprint, when the listing carries everything it is
    /// made of (text: the text; media: the URL we posted, which listings
    /// without downloaded media do not carry).
    pub fingerprint: Option<String>,
}

/// A page as read: its items, and how many came back (engines drop some,
/// so a short page is not the end).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page {
    pub items: Vec<ListedStatus>,
}

/// Something a provider call showed about the provider (DESIGN.md R6),
/// collected by the client and recorded by the reconciler.
#[derive(Debug, Clone, PartialEq)]
pub enum Evidence {
    /// A post that carried our id was answered under another id.
    IdReplaced { supplied: String, got: String },
    /// A post that carried our id was answered under that id: suggestive,
    /// proven once the status is then found by that id.
    IdEchoed { id: String },
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
/// [`WawpClient`](super::WawpClient), which speaks Wawp's API or WAHA's own.
pub trait Provider: Send + Sync + 'static {
    /// `GET …/status/new-message-id`.
    fn new_message_id(&self) -> impl Future<Output = Result<String, ProviderError>> + Send;
    /// `POST …/status/{kind}`, within the client's request timeout.
    fn send_status(&self, status: &OutgoingStatus<'_>) -> impl Future<Output = SendOutcome> + Send;
    /// The same, within `timeout` at most: the dispatcher passes the lease
    /// left, so that a call never outlives its lease.
    fn send_status_within(
        &self,
        status: &OutgoingStatus<'_>,
        timeout: Duration,
    ) -> impl Future<Output = SendOutcome> + Send;
    /// `POST …/status/delete`.
    fn delete_status(&self, message_id: &str) -> impl Future<Output = SendOutcome> + Send;
    /// One message of the status chat by its id.
    fn lookup_by_id(&self, message_id: &str) -> impl Future<Output = ById> + Send;
    /// One page of the status chat's own messages, newest first.
    fn list_statuses(
        &self,
        req: &ListRequest,
    ) -> impl Future<Output = Result<Page, ProviderError>> + Send;
    /// Cheap health check used while an instance is paused.
    fn probe(&self) -> impl Future<Output = Result<(), ProviderError>> + Send;
    /// The engine the session runs, when the provider says (session info).
    fn session_engine(&self) -> impl Future<Output = Option<String>> + Send;
    /// Evidence gathered by calls since the last call of this (drained).
    fn take_evidence(&self) -> Vec<Evidence>;
    /// Whether this instance sends our pre-generated id (`supplied_id`).
    fn supplies_id(&self) -> bool;
}
