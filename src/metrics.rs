//! The Prometheus metric families: their names, help texts and label sets in
//! one place, so that every family is described (`# HELP`, `# TYPE`), every
//! counter exists at 0 from start (an `increase()` alert sees the first
//! event), and label values taken from table data stay bounded.
//!
//! The per-instance label is `wa_instance`, not `instance`: Prometheus adds
//! `instance` (the scrape target) to every series itself.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

use crate::model::State;

pub const TRANSITIONS: &str = "statusd_transitions_total";
pub const PROVIDER_REQUEST_DURATION: &str = "statusd_provider_request_duration_seconds";
pub const OUTBOX_ROWS: &str = "statusd_outbox_rows";
pub const OUTBOX_SCHEDULED: &str = "statusd_outbox_scheduled_rows";
pub const OLDEST_PENDING_AGE: &str = "statusd_outbox_oldest_pending_age_seconds";
pub const INSTANCE_PAUSED: &str = "statusd_instance_paused";
pub const INSTANCE_DUE: &str = "statusd_instance_due_rows";
pub const INSTANCE_IN_FLIGHT: &str = "statusd_instance_in_flight_rows";
pub const INSTANCE_POSTED_PER_MINUTE: &str = "statusd_instance_posted_last_minute";
pub const RECONCILED: &str = "statusd_reconciled_total";
pub const LEASES_RESCUED: &str = "statusd_leases_rescued_total";
pub const PURGED: &str = "statusd_purged_total";
/// Provider calls the reconciler made (`call` = by_id, listing), and the
/// rows it settled: their ratio is look-up calls per reconciled row.
pub const LOOKUP_CALLS: &str = "statusd_reconcile_lookup_calls_total";
pub const RECONCILE_ROWS: &str = "statusd_reconcile_rows_total";

/// The label of a row's instance.
pub const INSTANCE_LABEL: &str = "wa_instance";
/// The label value for an instance name that is not configured here (a row
/// written by someone else may hold anything: 500 characters, a newline).
pub const UNKNOWN_INSTANCE: &str = "unknown";

/// The reconciler's results (`statusd_reconciled_total{result}`).
pub const RECONCILE_RESULTS: [&str; 4] = ["present", "absent", "unavailable", "parked"];

/// `name` as a label value if it is one of `configured`, else `unknown`.
pub fn instance_label<'a>(configured: impl IntoIterator<Item = &'a String>, name: &str) -> String {
    if configured.into_iter().any(|c| c == name) {
        name.to_string()
    } else {
        UNKNOWN_INSTANCE.to_string()
    }
}

/// Describes every family to the installed recorder. Cheap and idempotent;
/// called by every daemon and admin server at start, so a description is
/// never lost to a recorder installed after it.
pub fn describe() {
    {
        describe_counter!(
            TRANSITIONS,
            "Rows moved into a state, by target state (`to`)."
        );
        describe_histogram!(
            PROVIDER_REQUEST_DURATION,
            Unit::Seconds,
            "Duration of status sends to the provider, by instance and outcome."
        );
        describe_gauge!(
            OUTBOX_ROWS,
            "Rows in the outbox by instance and state (instances not configured here as `unknown`)."
        );
        describe_gauge!(
            OUTBOX_SCHEDULED,
            "Queued or pending rows whose not_before is still in the future (waiting by design)."
        );
        describe_gauge!(
            OLDEST_PENDING_AGE,
            Unit::Seconds,
            "Age of the oldest queued or pending row that is due (rows scheduled for later are not counted)."
        );
        describe_gauge!(
            INSTANCE_PAUSED,
            "1 while an instance is paused (401/403, session not working), else 0."
        );
        describe_gauge!(
            INSTANCE_DUE,
            "Queued or pending rows of an instance that are due now (scheduled ones not counted)."
        );
        describe_gauge!(
            INSTANCE_IN_FLIGHT,
            "Rows of an instance being sent now (`uploading`, every replica)."
        );
        describe_gauge!(
            INSTANCE_POSTED_PER_MINUTE,
            "Statuses of an instance posted in the last 60 s (every replica)."
        );
        describe_counter!(
            RECONCILED,
            "Look-ups of in-doubt rows by result (present, absent, unavailable, parked)."
        );
        describe_counter!(
            LEASES_RESCUED,
            "Uploading rows whose lease expired and were moved to in_doubt."
        );
        describe_counter!(PURGED, "Terminal rows deleted by the retention purge.");
        describe_counter!(
            LOOKUP_CALLS,
            "Provider calls made by the reconciler, by instance and call (by_id, listing)."
        );
        describe_counter!(
            RECONCILE_ROWS,
            "In-doubt rows the reconciler looked at, by instance (look-up calls per row = LOOKUP_CALLS / this)."
        );
    }
}

/// Describes the families and registers every counter and per-instance
/// gauge at 0 for the configured `instances`. `increment(0)` rather than
/// `absolute(0)`: a counter another daemon in this process already counted
/// keeps its value.
pub fn register(instances: &[String]) {
    describe();
    for s in State::ALL {
        metrics::counter!(TRANSITIONS, "to" => s.as_str()).increment(0);
    }
    for r in RECONCILE_RESULTS {
        metrics::counter!(RECONCILED, "result" => r).increment(0);
    }
    metrics::counter!(LEASES_RESCUED).increment(0);
    metrics::counter!(PURGED).increment(0);
    for name in instances {
        metrics::gauge!(INSTANCE_PAUSED, INSTANCE_LABEL => name.clone()).set(0.0);
        register_instance(name);
    }
}

/// Creates an instance's series (at 0 until the next refresh) so that they
/// exist from when the instance is known: at start for the file's, when a
/// daemon first sees it for the table's. Values already set are kept
/// (`increment(0)`).
pub fn register_instance(name: &str) {
    let n = || name.to_string();
    for call in ["by_id", "listing"] {
        metrics::counter!(LOOKUP_CALLS, INSTANCE_LABEL => n(), "call" => call).increment(0);
    }
    metrics::counter!(RECONCILE_ROWS, INSTANCE_LABEL => n()).increment(0);
    metrics::gauge!(INSTANCE_PAUSED, INSTANCE_LABEL => n()).increment(0.0);
    metrics::gauge!(OLDEST_PENDING_AGE, INSTANCE_LABEL => n()).increment(0.0);
    metrics::gauge!(OUTBOX_SCHEDULED, INSTANCE_LABEL => n()).increment(0.0);
    metrics::gauge!(INSTANCE_DUE, INSTANCE_LABEL => n()).increment(0.0);
    metrics::gauge!(INSTANCE_IN_FLIGHT, INSTANCE_LABEL => n()).increment(0.0);
    metrics::gauge!(INSTANCE_POSTED_PER_MINUTE, INSTANCE_LABEL => n()).increment(0.0);
    for s in State::ALL {
        metrics::gauge!(OUTBOX_ROWS, INSTANCE_LABEL => n(), "state" => s.as_str()).increment(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unconfigured_names_become_unknown() {
        let configured = vec!["main".to_string()];
        assert_eq!(instance_label(&configured, "main"), "main");
        assert_eq!(instance_label(&configured, "main\nx"), "unknown");
        assert_eq!(instance_label(&configured, &"a".repeat(500)), "unknown");
    }
}
