//! What each instance's provider does, learned from evidence and kept in
//! the database (`provider_capabilities`, DESIGN.md R6): does it post under
//! the id we supply, does a look-up by id find a posted status, which
//! engine runs the session. Kept here so that it survives restarts and is
//! shared by every replica; an operator can set it (`statusd capabilities
//! set`).
//!
//! The rule for changing it has one home, [`Capabilities::merged`]:
//! evidence of the weaker behaviour (`no`) always wins, evidence of the
//! stronger one (`yes`) only replaces `unknown`, and an operator's word
//! replaces anything. Writers compare and set on `version`, so a `no`
//! learned by one process is never overwritten by another's stale read.
//!
//! Also here: the look-up the reconciler needs to leave out listed statuses
//! that belong to other rows ([`CapabilityStore::known_message_ids`]).

use std::fmt;
use std::future::Future;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::row::{self, Columns};
use super::sql::{Sql, Stmt};
use super::timed::timed;
use super::{Result, StoreError, Timed};

/// A capability as far as it is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Known {
    #[default]
    Unknown,
    Yes,
    No,
}

impl Known {
    pub fn as_str(self) -> &'static str {
        match self {
            Known::Unknown => "unknown",
            Known::Yes => "yes",
            Known::No => "no",
        }
    }
}

impl fmt::Display for Known {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Known {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "unknown" => Ok(Known::Unknown),
            "yes" | "true" => Ok(Known::Yes),
            "no" | "false" => Ok(Known::No),
            other => Err(format!("`{other}` is not one of yes, no, unknown")),
        }
    }
}

/// One instance's provider capabilities.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Capabilities {
    pub instance: String,
    /// Does the provider post under the id we supply?
    pub supplied_ids: Known,
    /// Does a look-up by id find a posted status?
    pub lookup_by_id: Known,
    pub engine: Option<String>,
    /// The evidence behind the values (or who set them).
    pub evidence: String,
    /// Compare-and-set counter; 0 = no row yet.
    #[serde(skip)]
    pub version: i64,
    pub updated_at: Option<DateTime<Utc>>,
}

/// Who says what a change says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Seen on the provider: may only weaken a proven capability, or prove
    /// an unknown one.
    Evidence,
    /// An operator's setting: replaces whatever was known.
    Operator,
}

/// A change to one instance's capabilities; `None` leaves a field as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct CapabilityChange {
    pub instance: String,
    pub supplied_ids: Option<Known>,
    pub lookup_by_id: Option<Known>,
    pub engine: Option<String>,
    pub evidence: String,
    pub source: Source,
}

impl CapabilityChange {
    /// Evidence about `instance`, changing nothing yet.
    pub fn evidence(instance: &str, evidence: impl Into<String>) -> CapabilityChange {
        CapabilityChange {
            instance: instance.to_string(),
            supplied_ids: None,
            lookup_by_id: None,
            engine: None,
            evidence: evidence.into(),
            source: Source::Evidence,
        }
    }
}

impl Capabilities {
    /// Nothing known about `instance`: statusd assumes the weaker behaviour.
    pub fn unknown(instance: &str) -> Capabilities {
        Capabilities {
            instance: instance.to_string(),
            supplied_ids: Known::Unknown,
            lookup_by_id: Known::Unknown,
            engine: None,
            evidence: String::new(),
            version: 0,
            updated_at: None,
        }
    }

    /// Whether a documented "not found" by id proves absence: only where
    /// supplied ids are proven honoured *and* look-up by id proven to find
    /// posted statuses (DESIGN.md R5).
    pub fn by_id_miss_is_absence(&self) -> bool {
        self.supplied_ids == Known::Yes && self.lookup_by_id == Known::Yes
    }

    /// These capabilities after `change` (the one rule, see the module
    /// docs), or None when nothing would change.
    pub fn merged(&self, change: &CapabilityChange) -> Option<Capabilities> {
        let merge = |now: Known, new: Option<Known>| match (change.source, new) {
            (_, None) => now,
            (Source::Operator, Some(v)) => v,
            (Source::Evidence, Some(Known::No)) => Known::No,
            (Source::Evidence, Some(Known::Yes)) if now == Known::Unknown => Known::Yes,
            (Source::Evidence, Some(_)) => now,
        };
        let next = Capabilities {
            instance: self.instance.clone(),
            supplied_ids: merge(self.supplied_ids, change.supplied_ids),
            lookup_by_id: merge(self.lookup_by_id, change.lookup_by_id),
            engine: change.engine.clone().or_else(|| self.engine.clone()),
            evidence: change.evidence.clone(),
            version: self.version,
            updated_at: self.updated_at,
        };
        let same = next.supplied_ids == self.supplied_ids
            && next.lookup_by_id == self.lookup_by_id
            && next.engine == self.engine;
        // An operator's word is recorded even when it changes no value (its
        // evidence line says who set it).
        (!same || (change.source == Source::Operator && self.evidence != next.evidence))
            .then_some(next)
    }
}

/// A listed status's id that belongs to a row (its message id or the id the
/// provider answered with), with that row's kind and payload: the caller
/// compares contents, since a provider that answers with another status's
/// id (WEBJS: "the latest own status") can give a row a wrong one.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownId {
    pub id: String,
    pub kind: String,
    pub payload: String,
}

/// The capability queries, one method per query; implemented by both
/// backends and by [`Timed`].
pub trait CapabilityStore {
    /// Every instance's recorded capabilities, by name.
    fn capabilities(&self) -> impl Future<Output = Result<Vec<Capabilities>>> + Send {
        self.capabilities_of(None)
    }
    /// One instance's (`Some(name)`; none recorded: an empty list) or every
    /// instance's, by name.
    fn capabilities_of(
        &self,
        instance: Option<&str>,
    ) -> impl Future<Output = Result<Vec<Capabilities>>> + Send;
    /// Writes `new` if the stored version is still `new.version` (0: no
    /// row yet); returns whether it did.
    fn put_capabilities(&self, new: &Capabilities) -> impl Future<Output = Result<bool>> + Send;
    /// Which of `ids` are the message id or provider id of a row of
    /// `instance` other than `except` (the rows being reconciled), with the
    /// owning row's kind and payload: listed statuses that belong to them
    /// are not candidates for a content match.
    fn known_message_ids(
        &self,
        instance: &str,
        ids: &[String],
        except: &[uuid::Uuid],
    ) -> impl Future<Output = Result<Vec<KnownId>>> + Send;
}

/// Applies `change` to `instance`'s capabilities (compare and set, retried
/// on a concurrent write); returns what is recorded afterwards.
pub async fn record_capabilities<S: CapabilityStore>(
    store: &S,
    change: &CapabilityChange,
) -> Result<Capabilities> {
    for _ in 0..8 {
        let now = store
            .capabilities_of(Some(&change.instance))
            .await?
            .into_iter()
            .next()
            .unwrap_or_else(|| Capabilities::unknown(&change.instance));
        let Some(next) = now.merged(change) else {
            return Ok(now);
        };
        if store.put_capabilities(&next).await? {
            return Ok(next);
        }
    }
    Err(StoreError::Invalid(format!(
        "capabilities of {}: too many concurrent writes",
        change.instance
    )))
}

fn parse_known(r: &impl Columns, column: &str) -> std::result::Result<Known, String> {
    r.text(column)?
        .parse()
        .map_err(|e| format!("provider_capabilities.{column}: {e}"))
}

impl<S: Sql> CapabilityStore for S {
    async fn capabilities_of(&self, instance: Option<&str>) -> Result<Vec<Capabilities>> {
        let s = Stmt::uncounted(
            "SELECT instance, supplied_ids, lookup_by_id, engine, evidence, version, updated_at
             FROM provider_capabilities WHERE $1 IS NULL OR instance = $1 ORDER BY instance",
        )
        .bind(instance);
        row::map_all(&self.fetch(s).await?, |r| {
            Ok(Capabilities {
                instance: r.text("instance")?,
                supplied_ids: parse_known(r, "supplied_ids")?,
                lookup_by_id: parse_known(r, "lookup_by_id")?,
                engine: r.opt_text("engine")?,
                evidence: r.text("evidence")?,
                version: r.big("version")?,
                updated_at: r.time("updated_at")?,
            })
        })
    }

    async fn put_capabilities(&self, c: &Capabilities) -> Result<bool> {
        let s = if c.version == 0 {
            Stmt::uncounted(
                "INSERT INTO provider_capabilities (instance, supplied_ids, lookup_by_id, engine, evidence, version)
                 VALUES ($1, $2, $3, $4, $5, 1) ON CONFLICT (instance) DO NOTHING",
            )
        } else {
            Stmt::uncounted(format!(
                "UPDATE provider_capabilities SET supplied_ids = $2, lookup_by_id = $3, engine = $4,
                    evidence = $5, version = version + 1, updated_at = {}
                 WHERE instance = $1 AND version = $6",
                S::NOW
            ))
        };
        let s = s
            .bind(&c.instance)
            .bind(c.supplied_ids.as_str())
            .bind(c.lookup_by_id.as_str())
            .bind(&c.engine)
            .bind(&c.evidence);
        let s = if c.version == 0 { s } else { s.bind(c.version) };
        Ok(self.execute(s).await? == 1)
    }

    async fn known_message_ids(
        &self,
        instance: &str,
        ids: &[String],
        except: &[uuid::Uuid],
    ) -> Result<Vec<KnownId>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // By our id, or by the provider's where it assigned its own (the
        // partial index holds only those): one index probe per listed id.
        let by = |on: &str| {
            format!(
                "SELECT j.value AS id, o.kind AS kind, CAST(o.payload AS TEXT) AS payload
                 FROM {} JOIN status_outbox o ON {on}
                 WHERE o.instance = $1 AND {}",
                S::list_table("$2", "text", "j"),
                S::not_in_list("o.id", "$3", "uuid"),
            )
        };
        let sql = format!(
            "{} UNION ALL {}",
            by("o.message_id = j.value"),
            by("o.provider_id = j.value AND o.provider_id <> o.message_id"),
        );
        let s = Stmt::uncounted(sql).bind(instance).bind(ids).bind(except);
        row::map_all(&self.fetch(s).await?, |r| {
            Ok(KnownId {
                id: r.text("id")?,
                kind: r.text("kind")?,
                payload: r.text("payload")?,
            })
        })
    }
}

impl<S: CapabilityStore + Sync> CapabilityStore for Timed<S> {
    timed! {
        fn capabilities_of(&self, instance: Option<&str>) -> Vec<Capabilities>;
        fn put_capabilities(&self, c: &Capabilities) -> bool;
        fn known_message_ids(&self, instance: &str, ids: &[String], except: &[uuid::Uuid]) -> Vec<KnownId>;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(source: Source, supplied: Option<Known>) -> CapabilityChange {
        CapabilityChange {
            supplied_ids: supplied,
            source,
            ..CapabilityChange::evidence("main", "seen")
        }
    }

    #[test]
    fn evidence_weakens_always_and_proves_only_the_unknown() {
        let unknown = Capabilities::unknown("main");
        let yes = unknown
            .merged(&change(Source::Evidence, Some(Known::Yes)))
            .unwrap();
        assert_eq!(yes.supplied_ids, Known::Yes);
        let no = yes
            .merged(&change(Source::Evidence, Some(Known::No)))
            .unwrap();
        assert_eq!(no.supplied_ids, Known::No);
        // A stale "yes" never undoes a learned "no".
        assert!(no
            .merged(&change(Source::Evidence, Some(Known::Yes)))
            .is_none());
        // Nothing new: nothing to write.
        assert!(no
            .merged(&change(Source::Evidence, Some(Known::No)))
            .is_none());
        // An operator may set anything.
        let set = no
            .merged(&change(Source::Operator, Some(Known::Yes)))
            .unwrap();
        assert_eq!(set.supplied_ids, Known::Yes);
        assert!(!set.by_id_miss_is_absence(), "look-up by id still unknown");
    }

    #[test]
    fn known_parses_what_operators_type() {
        assert_eq!("YES".parse::<Known>(), Ok(Known::Yes));
        assert_eq!("no".parse::<Known>(), Ok(Known::No));
        assert_eq!("unknown".parse::<Known>(), Ok(Known::Unknown));
        assert!("maybe".parse::<Known>().unwrap_err().contains("maybe"));
    }
}
