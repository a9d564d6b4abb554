//! `statusd views` (who viewed a status, from the provider's events) and the
//! view counts `ls` and `show` print.

use std::collections::BTreeMap;

use anyhow::Context;
use serde_json::Value;

use super::table::Table;
use crate::admin::webhooks::status_views;
use crate::model::OutboxRow;
use crate::store::{Store, ViewCounts};

/// View counts of the rows' message ids.
pub async fn counts_of<S: Store>(
    store: &S,
    rows: &[OutboxRow],
) -> anyhow::Result<BTreeMap<String, ViewCounts>> {
    let ids: Vec<String> = rows
        .iter()
        .filter_map(|r| r.event_id().map(str::to_owned))
        .collect();
    store.view_counts(&ids).await.context("reading view counts")
}

fn counts(r: &OutboxRow, views: &BTreeMap<String, ViewCounts>) -> ViewCounts {
    r.event_id()
        .and_then(|m| views.get(m).copied())
        .unwrap_or_default()
}

/// A row's JSON with its `views` counts added.
pub fn with_counts(mut v: Value, r: &OutboxRow, views: &BTreeMap<String, ViewCounts>) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "views".into(),
            serde_json::to_value(counts(r, views)).unwrap_or(Value::Null),
        );
    }
    v
}

/// The `VIEWS` cell of `ls`: viewers who opened it, `-` when none acked.
pub fn cell(r: &OutboxRow, views: &BTreeMap<String, ViewCounts>) -> String {
    let c = counts(r, views);
    if c.viewers == 0 {
        "-".into()
    } else {
        c.viewed.to_string()
    }
}

/// The `views` line of `show`.
pub fn line(r: &OutboxRow, views: &BTreeMap<String, ViewCounts>) -> String {
    let c = counts(r, views);
    if c.viewers == 0 {
        return "none recorded (statusd views shows them as the provider's events come in)".into();
    }
    format!(
        "{} viewed, {} delivered, {} played, {} viewers in all (statusd views {})",
        c.viewed, c.delivered, c.played, c.viewers, r.id
    )
}

/// `statusd views ID [--json]`.
pub async fn views<S: Store>(store: &S, key: &str, json: bool) -> anyhow::Result<String> {
    let v = status_views(store, key)
        .await
        .with_context(|| format!("reading the views of `{key}`"))?
        .ok_or_else(|| anyhow::anyhow!("no status with id, message id or dedupe key `{key}`"))?;
    if json {
        return Ok(serde_json::to_string_pretty(&v).unwrap_or_default() + "\n");
    }
    let c = v.counts;
    let mut out = format!(
        "status {} ({}), message id {}\nviewed {}   delivered {}   played {}   viewers {}\n",
        v.id,
        v.state,
        v.message_id.as_deref().unwrap_or("-"),
        c.viewed,
        c.delivered,
        c.played,
        c.viewers
    );
    if v.viewers.is_empty() {
        out += "\nno viewer events recorded (are the provider's webhooks set up? statusd webhook url INSTANCE)\n";
        return Ok(out);
    }
    let mut t = Table::new(vec![
        "VIEWER",
        "LEVEL",
        "FIRST_SEEN",
        "VIEWED_AT",
        "LAST_SEEN",
    ]);
    for viewer in &v.viewers {
        t.row(vec![
            viewer.viewer.clone(),
            format!("{} ({})", viewer.level_name, viewer.level),
            viewer.first_at.to_rfc3339(),
            viewer
                .viewed_at
                .map(|t| t.to_rfc3339())
                .unwrap_or_else(|| "-".into()),
            viewer.last_at.to_rfc3339(),
        ]);
    }
    out += "\n";
    out += &t.render();
    Ok(out)
}
