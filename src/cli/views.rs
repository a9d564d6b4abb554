//! `statusd views` (who viewed a status, from the provider's events), the
//! view counts `ls` and `show` print, and `statusd webhook url`.

use std::collections::BTreeMap;

use anyhow::Context;
use secrecy::ExposeSecret;
use serde_json::Value;

use super::table::Table;
use crate::admin::webhooks::status_views;
use crate::config::Settings;
use crate::model::OutboxRow;
use crate::store::{Store, ViewCounts};
use crate::wire::webhook as w;

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

/// `statusd webhook url INSTANCE`: what to paste into the provider. The
/// secret itself is never printed: it is the operator's to set on both sides.
pub fn webhook_url(instance: &str, settings: &Settings) -> anyhow::Result<String> {
    crate::config::check_configured(instance, settings.instances.keys())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let inst = &settings.instances[instance];
    let base = settings
        .webhooks
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", settings.admin.bind));
    let url = format!("{}/v1/webhooks/{instance}", base.trim_end_matches('/'));
    let has_secret = inst
        .webhook_secret()
        .map_err(|e| anyhow::anyhow!("instances.{instance}.{e}"))?
        .is_some_and(|s| !s.expose_secret().trim().is_empty());
    let env = format!(
        "STATUSD__INSTANCES__{}__WEBHOOK_SECRET",
        instance.to_uppercase().replace('-', "_")
    );
    let mut out = format!("webhook URL for instance `{instance}`:\n  {url}\n\n");
    if has_secret {
        out += "secret: configured (instances.";
        out += instance;
        out += ".webhook_secret[_file]); give the provider the same value as its HMAC key.\n";
    } else {
        out += &format!(
            "secret: NOT configured: events for `{instance}` are refused until you set one:\n  \
             openssl rand -hex 32 > /run/secrets/statusd_webhook_{instance}\n  \
             then instances.{instance}.webhook_secret_file = \"/run/secrets/statusd_webhook_{instance}\" \
             (or {env}=…) and restart statusd.\n"
        );
    }
    if settings.webhooks.public_url.is_none() {
        out += "\nnote: webhooks.public_url is not set; the URL above is admin.bind, which the provider \
                must be able to reach (put TLS in front).\n";
    }
    out += &format!(
        "\nWAHA: the session's config (POST /api/sessions/{{session}} or at start), with the same key:\n\
         {{\n  \"config\": {{\n    \"webhooks\": [{{\n      \"url\": \"{url}\",\n      \
         \"events\": [\"{}\", \"{}\"],\n      \"hmac\": {{\"key\": \"<the secret>\"}},\n      \
         \"retries\": {{\"policy\": \"constant\", \"delaySeconds\": 2, \"attempts\": 15}}\n    }}]\n  }}\n}}\n",
        w::EVENT_MESSAGE_ANY,
        w::EVENT_MESSAGE_ACK
    );
    out += &format!(
        "\nWawp (paid tiers): set the webhook URL and the events {} and {} with POST /v2/session/webhook \
         or in the dashboard. If it cannot sign, set instances.{instance}.webhook_path_token and use\n  \
         {url}/<token>\n\
         Events must arrive within webhooks.timestamp_window_secs ({} s) of their X-Webhook-Timestamp.\n",
        w::EVENT_MESSAGE_ANY,
        w::EVENT_MESSAGE_ACK,
        settings.webhooks.timestamp_window_secs
    );
    Ok(out)
}
