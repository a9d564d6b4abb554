//! Talking to the provider: one trait, one classification of every outcome.
//!
//! Every HTTP outcome is classified exactly once, in the client, into a
//! [`SendOutcome`]; the daemon maps classes to state transitions and never
//! looks at status codes itself (DESIGN.md §4 rule 5).
//!
//! - `contract`: the [`Provider`] trait and its inputs and outputs.
//! - [`search`]: settling a batch of in-doubt statuses against one read of
//!   the status chat (pure: the reconciler makes the calls).
//! - [`wawp`]: the HTTP client, which implements it for Wawp's API and for
//!   WAHA's own (`provider = "waha"`).

mod contract;
pub mod search;
pub mod wawp;

/// Message ids in the provider's shape belong to the [wire
/// vocabulary](crate::wire); here too because the id assigner makes them on
/// the provider's behalf (`id_source = "local"`).
pub use crate::wire::ids;
pub use contract::{
    ById, Evidence, ListRequest, ListedStatus, Lookup, OutgoingStatus, Page, Provider,
    ProviderError, SendOutcome, StatusQuery,
};
pub use wawp::{ClientError, WawpClient};
