//! The model's named values: each an enum whose stored and shown text is
//! [`as_str`](State::as_str), parsed back by `FromStr` with a message that
//! lists what it accepts. One macro writes the parts they share.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An enum of named values, each written `Variant => "text",`: `ALL`,
/// `as_str`, `Display`, and `FromStr` refusing other text with "unknown
/// <what> `<text>` (expected <expected>)".
macro_rules! named {
    // Without `expected`: every value's text ("one of: a, b, c").
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $($(#[$vmeta:meta])* $variant:ident => $text:literal,)*
        }
    ) => {
        named! {
            $(#[$meta])*
            pub enum $name ($what, expected: one_of($name::ALL.iter().map(|v| v.as_str()))) {
                $($(#[$vmeta])* $variant => $text,)*
            }
        }
    };
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal, expected: $expected:expr) {
            $($(#[$vmeta:meta])* $variant:ident => $text:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            pub const ALL: [$name; [$($text,)*].len()] = [$($name::$variant,)*];

            /// The stored (and shown) text.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| format!("unknown {} `{s}` (expected {})", $what, $expected))
            }
        }
    };
}

/// The variant of `$to` named like `$value`'s variant of `$from`, whatever
/// its fields: `namesake!(self, StatusBody => Kind: Text, Image, Voice, Video)`
/// (the match stays exhaustive: a new variant must be named here).
macro_rules! namesake {
    ($value:expr, $from:ident => $to:ident: $($variant:ident),+ $(,)?) => {
        match $value {
            $($from::$variant { .. } => $to::$variant,)+
        }
    };
}
pub(crate) use namesake;

/// "one of: a, b, c", from every value's text.
fn one_of(names: impl Iterator<Item = &'static str>) -> String {
    format!("one of: {}", names.collect::<Vec<_>>().join(", "))
}

named! {
    /// Where a row is in its life. See DESIGN.md §4 and the README's state table.
    #[derive(PartialOrd, Ord)]
    pub enum State ("state") {
        Queued => "queued",
        PendingUpload => "pending_upload",
        Uploading => "uploading",
        InDoubt => "in_doubt",
        Posted => "posted",
        Failed => "failed",
        Invalid => "invalid",
        Cancelled => "cancelled",
        Deleted => "deleted",
    }
}

impl State {
    /// Rows the pipeline still works on (every state not in [`State::TERMINAL`]).
    pub const LIVE: [State; 4] = [
        State::Queued,
        State::PendingUpload,
        State::Uploading,
        State::InDoubt,
    ];

    /// [`State::LIVE`] rows that no worker holds a lease on (all but
    /// `uploading`): an operator may cancel them, and an unreadable one is
    /// set aside (it was not sent yet, or it may be posted and is parked).
    pub const IDLE: [State; 3] = [State::Queued, State::PendingUpload, State::InDoubt];

    /// Rows the pipeline never touches again (only `posted` can still be
    /// deleted by an operator); `purge` removes them once old.
    pub const TERMINAL: [State; 5] = [
        State::Posted,
        State::Failed,
        State::Invalid,
        State::Cancelled,
        State::Deleted,
    ];

    /// Terminal rows an operator's retry sends again (`posted` and `deleted`
    /// reached the viewers; a parked `in_doubt` row can be retried too).
    pub const RETRYABLE: [State; 3] = [State::Failed, State::Invalid, State::Cancelled];

    /// Whether the state is in [`State::TERMINAL`].
    pub fn is_terminal(self) -> bool {
        State::TERMINAL.contains(&self)
    }
}

named! {
    /// How one send attempt ended, as its history line stores it
    /// (`status_attempts.outcome`).
    pub enum AttemptOutcome ("attempt outcome") {
        Posted => "posted",
        /// Failed in a way worth retrying; the attempt counts.
        Retryable => "retryable",
        /// Refused with Retry-After: retried then, the attempt given back.
        RateLimited => "rate_limited",
        /// Maybe posted: the reconciler looks it up.
        InDoubt => "in_doubt",
        /// Refused as invalid by the provider.
        Permanent => "permanent",
        /// The instance is unusable (401/403, session down): the attempt
        /// given back.
        InstanceDown => "instance_down",
        /// Claimed but given back unsent (its lease was too old to send on).
        Released => "released",
        /// Claimed straight from `queued` and found invalid before any send.
        Invalid => "invalid",
    }
}

named! {
    /// The four kinds of status the provider accepts.
    pub enum Kind ("kind", expected: "text, image, voice or video") {
        Text => "text",
        Image => "image",
        Voice => "voice",
        Video => "video",
    }
}
