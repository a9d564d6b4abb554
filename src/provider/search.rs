//! Settling a batch of in-doubt statuses of one instance against one read
//! of its status chat (issue 12 §3): the reconciler pages through the
//! instance's own statuses once and matches every in-doubt row against
//! what it read, instead of one search per row.
//!
//! No false absence, by construction (DESIGN.md R5): a row is
//! [`Verdict::NotListed`] only when the read reached past the row's window
//! (paged until an older status or the end, never stopped by a short page)
//! and every own status in that window was classified — its kind known and,
//! for the row's kind, a comparable fingerprint. Anything short of that is
//! [`Verdict::Unknown`]. Whether "not listed" is absence yet is the
//! reconciler's call (the provider may still be about to post it).
//!
//! Pure functions over what was read; the calls are the reconciler's.

use std::collections::HashSet;
use std::future::Future;

use chrono::{DateTime, Utc};

use super::contract::{ListRequest, ListedStatus, Provider, StatusQuery};

/// Pages read before a listing is given up as incomplete.
pub const MAX_PAGES: usize = 50;
/// Messages asked for per page.
pub const PAGE_SIZE: usize = 100;

/// What one read of the status chat found.
#[derive(Debug, Clone)]
pub struct Listing {
    /// Every item read, newest first.
    pub items: Vec<ListedStatus>,
    /// `Ok` when the read reached past the start of the window (an older
    /// status, or an empty page past the last one); otherwise why not.
    pub complete: Result<(), String>,
    /// Pages asked for.
    pub calls: usize,
}

impl Default for Listing {
    /// Nothing read yet: not complete.
    fn default() -> Self {
        Listing {
            items: Vec::new(),
            complete: Err("nothing read".into()),
            calls: 0,
        }
    }
}

impl Listing {
    /// Whether the read can stop after a page: an item older than `since`
    /// was seen (the listing is newest first), or the page was empty (past
    /// the last message: engines drop items from a page, which makes pages
    /// short, never empty while messages remain).
    pub fn reached(page: &[ListedStatus], since: DateTime<Utc>) -> bool {
        page.is_empty() || page.iter().any(|i| i.at.is_some_and(|t| older(t, since)))
    }
}

/// Reads the instance's own statuses from the newest back past `since`,
/// page by page (offset += limit, never stopping on a short page: engines
/// drop items from pages), at most [`MAX_PAGES`]. `pace` is awaited before
/// each page (the instance's rate limiter).
pub async fn read_listing<P: Provider, F: Future<Output = ()>>(
    provider: &P,
    since: DateTime<Utc>,
    mut pace: impl FnMut() -> F,
) -> Listing {
    let mut listing = Listing {
        complete: Err(format!(
            "more than {MAX_PAGES} pages of statuses since {since}"
        )),
        ..Listing::default()
    };
    for page in 0..MAX_PAGES {
        pace().await;
        listing.calls += 1;
        let req = ListRequest {
            offset: page * PAGE_SIZE,
            limit: PAGE_SIZE,
            since,
        };
        match provider.list_statuses(&req).await {
            Ok(p) => {
                let done = Listing::reached(&p.items, since);
                listing.items.extend(p.items);
                if done {
                    listing.complete = Ok(());
                    break;
                }
            }
            Err(e) => {
                listing.complete = Err(format!("page {} failed: {e}", page + 1));
                break;
            }
        }
    }
    listing
}

/// Listings carry whole seconds: a time within the second of `since`
/// counts as inside the window.
fn older(t: DateTime<Utc>, since: DateTime<Utc>) -> bool {
    t.timestamp() < since.timestamp()
}

/// What one read says about one query.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// On the provider, under `provider_id`; `by_our_id` when it was listed
    /// under the id we supplied (so the provider honours supplied ids).
    Present {
        provider_id: String,
        by_our_id: bool,
    },
    /// The read was complete and classified, and nothing in the window is
    /// this status.
    NotListed,
    /// The read cannot tell.
    Unknown { reason: String },
}

/// Matches every query against `listing`. `foreign` holds ids that belong
/// to other rows (posted before): those statuses are nobody's match. Each
/// listed status settles at most one query: two in-doubt rows with the same
/// content need two listed statuses.
pub fn settle(
    queries: &[StatusQuery],
    listing: &Listing,
    foreign: &HashSet<String>,
) -> Vec<Verdict> {
    let mut used = vec![false; listing.items.len()];
    let mut out: Vec<Option<Verdict>> = vec![None; queries.len()];
    let usable = |i: &ListedStatus| i.from_me != Some(false) && !foreign.contains(&i.id);
    // Our own id first: exact, whatever the content.
    for (q, slot) in queries.iter().zip(out.iter_mut()) {
        if let Some(k) = listing
            .items
            .iter()
            .position(|i| i.id == q.message_id && i.from_me != Some(false))
        {
            used[k] = true;
            *slot = Some(Verdict::Present {
                provider_id: listing.items[k].id.clone(),
                by_our_id: true,
            });
        }
    }
    // Then by kind, content and time, oldest candidate first.
    for (q, slot) in queries.iter().zip(out.iter_mut()) {
        if slot.is_some() {
            continue;
        }
        let found = (0..listing.items.len()).rev().find(|&k| {
            let i = &listing.items[k];
            !used[k]
                && usable(i)
                && i.from_me == Some(true)
                && i.kind == Some(q.kind)
                && i.fingerprint.as_deref() == Some(q.fingerprint.as_str())
                && i.at.is_some_and(|t| !older(t, q.sent_after))
        });
        if let Some(k) = found {
            used[k] = true;
            *slot = Some(Verdict::Present {
                provider_id: listing.items[k].id.clone(),
                by_our_id: false,
            });
        }
    }
    queries
        .iter()
        .zip(out)
        .map(|(q, v)| {
            v.unwrap_or_else(|| match &listing.complete {
                Err(why) => Verdict::Unknown {
                    reason: format!("the recent statuses were not all read: {why}"),
                },
                Ok(()) => match unclassified(q, listing, &used, &usable) {
                    0 => Verdict::NotListed,
                    n => Verdict::Unknown {
                        reason: format!(
                            "{n} listed status(es) in the window could not be compared \
                             (unknown kind or owner, or {} without a comparable fingerprint)",
                            q.kind
                        ),
                    },
                },
            })
        })
        .collect()
}

/// Statuses in `q`'s window that might be it but cannot be compared: owner
/// or kind unknown, or of its kind without a fingerprint, or without a time.
fn unclassified(
    q: &StatusQuery,
    listing: &Listing,
    used: &[bool],
    usable: &impl Fn(&ListedStatus) -> bool,
) -> usize {
    listing
        .items
        .iter()
        .zip(used)
        .filter(|(i, used)| !**used && usable(i))
        .filter(|(i, _)| i.at.is_none_or(|t| !older(t, q.sent_after)))
        .filter(|(i, _)| {
            i.at.is_none()
                || i.from_me.is_none()
                || match i.kind {
                    None => true,
                    Some(k) => k == q.kind && i.fingerprint.is_none(),
                }
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{fingerprint_of, Kind};
    use chrono::Duration;

    fn t(secs_ago: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 - secs_ago, 0).unwrap()
    }

    fn q(id: &str, text: &str, since: i64) -> StatusQuery {
        StatusQuery {
            message_id: id.into(),
            kind: Kind::Text,
            fingerprint: fingerprint_of(Kind::Text, &[text]),
            sent_after: t(since),
        }
    }

    fn item(id: &str, text: Option<&str>, kind: Option<Kind>, ago: i64) -> ListedStatus {
        ListedStatus {
            id: id.into(),
            at: Some(t(ago)),
            from_me: Some(true),
            kind,
            fingerprint: text.map(|x| fingerprint_of(kind.unwrap_or(Kind::Text), &[x])),
        }
    }

    fn complete(items: Vec<ListedStatus>) -> Listing {
        Listing {
            items,
            complete: Ok(()),
            calls: 1,
        }
    }

    #[test]
    fn one_read_settles_every_row_by_id_or_content() {
        let listing = complete(vec![
            item("OURS1", Some("a"), Some(Kind::Text), 10),
            item("THEIRS", Some("b"), Some(Kind::Text), 20),
            item("OLD", Some("c"), Some(Kind::Text), 500),
        ]);
        let v = settle(
            &[q("OURS1", "a", 100), q("X2", "b", 100), q("X3", "c", 100)],
            &listing,
            &HashSet::new(),
        );
        assert_eq!(
            v,
            [
                Verdict::Present {
                    provider_id: "OURS1".into(),
                    by_our_id: true
                },
                Verdict::Present {
                    provider_id: "THEIRS".into(),
                    by_our_id: false
                },
                // "c" was posted before this row's window: not its post.
                Verdict::NotListed,
            ]
        );
    }

    #[test]
    fn a_status_belonging_to_another_row_matches_nobody() {
        let listing = complete(vec![item("POSTED", Some("same"), Some(Kind::Text), 10)]);
        let foreign: HashSet<String> = ["POSTED".to_string()].into();
        assert_eq!(
            settle(&[q("X", "same", 100)], &listing, &foreign),
            [Verdict::NotListed]
        );
    }

    #[test]
    fn two_rows_with_the_same_content_need_two_statuses() {
        let listing = complete(vec![item("P1", Some("same"), Some(Kind::Text), 10)]);
        let v = settle(
            &[q("X1", "same", 100), q("X2", "same", 100)],
            &listing,
            &HashSet::new(),
        );
        assert!(matches!(v[0], Verdict::Present { .. }));
        assert_eq!(v[1], Verdict::NotListed);
    }

    #[test]
    fn an_incomplete_read_never_says_not_listed() {
        let listing = Listing {
            items: vec![],
            complete: Err("page 3 failed: HTTP 500".into()),
            calls: 3,
        };
        assert!(matches!(
            settle(&[q("X", "a", 100)], &listing, &HashSet::new())[0],
            Verdict::Unknown { .. }
        ));
    }

    #[test]
    fn an_unclassifiable_status_in_the_window_makes_the_answer_unknown() {
        // Unknown kind (an engine shape we cannot read).
        let listing = complete(vec![item("U", None, None, 10)]);
        assert!(matches!(
            settle(&[q("X", "a", 100)], &listing, &HashSet::new())[0],
            Verdict::Unknown { .. }
        ));
        // A text without a comparable fingerprint blocks a text row…
        let listing = complete(vec![item("U", None, Some(Kind::Text), 10)]);
        assert!(matches!(
            settle(&[q("X", "a", 100)], &listing, &HashSet::new())[0],
            Verdict::Unknown { .. }
        ));
        // …but an image without one cannot be a text row.
        let listing = complete(vec![item("U", None, Some(Kind::Image), 10)]);
        assert_eq!(
            settle(&[q("X", "a", 100)], &listing, &HashSet::new()),
            [Verdict::NotListed]
        );
        // Out of the window, it does not matter.
        let listing = complete(vec![item("U", None, None, 1000)]);
        assert_eq!(
            settle(&[q("X", "a", 100)], &listing, &HashSet::new()),
            [Verdict::NotListed]
        );
        // Nor does somebody else's status.
        let mut other = item("U", None, None, 10);
        other.from_me = Some(false);
        assert_eq!(
            settle(&[q("X", "a", 100)], &complete(vec![other]), &HashSet::new()),
            [Verdict::NotListed]
        );
    }

    #[test]
    fn the_read_stops_only_past_the_window_or_at_an_empty_page() {
        let since = t(100);
        assert!(Listing::reached(&[], since));
        assert!(!Listing::reached(
            &[item("A", Some("a"), Some(Kind::Text), 10)],
            since
        ));
        assert!(Listing::reached(
            &[
                item("A", Some("a"), Some(Kind::Text), 10),
                item("B", Some("b"), Some(Kind::Text), 101)
            ],
            since
        ));
        // Same second as the window's start: still inside.
        assert!(!Listing::reached(
            &[item("A", Some("a"), Some(Kind::Text), 100)],
            since + Duration::milliseconds(900)
        ));
    }
}
