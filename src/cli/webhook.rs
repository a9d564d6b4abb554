//! `statusd webhook url | register`: pointing the provider's events at
//! statusd's receiver (`POST /v1/webhooks/NAME` on the admin server), for
//! an instance of the configuration file or of the instance table.

use anyhow::Context;
use secrecy::SecretString;

use super::WebhookRegisterArgs;
use crate::config::{InstanceConfig, ProviderKind, Settings};
use crate::provider::wawp::{redacted_config, Hook, Registered, WawpClient, WEBHOOK_EVENTS};
use crate::store::{connect, Connected, InstanceStore, Patience};
use crate::wire::webhook as w;

/// An instance's settings: the file's, else the instance table's (read
/// from the database only then). The error names where it looked.
async fn instance_config(settings: &Settings, name: &str) -> anyhow::Result<InstanceConfig> {
    if let Some(i) = settings.instances.get(name) {
        return Ok(i.clone());
    }
    let mut known: Vec<&str> = settings.instances.keys().map(String::as_str).collect();
    known.sort_unstable();
    let in_file = match known.join(", ") {
        k if k.is_empty() => "none there".to_string(),
        k => k,
    };
    let store = connect(&settings.database, Patience::FailFast)
        .await
        .with_context(|| {
            format!(
                "instance `{name}` is not in the configuration file ({in_file}); \
                 reading the instance table"
            )
        })?;
    if store.require_migrated().await.is_err() {
        anyhow::bail!(
            "instance `{name}` is not in the configuration file ({in_file}), and the database \
             has no instance table yet (`statusd migrate`, then `statusd instance add`)"
        );
    }
    let table = match &store {
        Connected::Sqlite(s) => s.instance_table().await,
        Connected::Postgres(s) => s.instance_table().await,
    }
    .context("reading the instance table")?;
    let Some(rec) = table
        .rows
        .into_iter()
        .find(|r| r.name == name && r.removed_at.is_none())
    else {
        anyhow::bail!(
            "instance `{name}` is configured neither in the configuration file ({in_file}) nor in \
             the instance table (`statusd instance ls`)"
        );
    };
    InstanceConfig::from_table(&rec.settings)
        .map_err(|e| anyhow::anyhow!("instance `{name}`: its settings in the table: {e}"))
}

/// The receiver's URL for `instance`: `webhooks.public_url`, else the admin
/// server's bind address.
fn receiver_url(settings: &Settings, instance: &str) -> String {
    let base = settings
        .webhooks
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", settings.admin.bind));
    format!("{}/v1/webhooks/{instance}", base.trim_end_matches('/'))
}

/// The instance's webhook secret, if one is set and not blank.
fn secret_of(inst: &InstanceConfig, instance: &str) -> anyhow::Result<Option<SecretString>> {
    inst.webhook_key()
        .map_err(|e| anyhow::anyhow!("instances.{instance}.{e}"))
}

/// `statusd webhook url INSTANCE`: what to paste into the provider. The
/// secret itself is never printed: it is the operator's to set on both sides.
pub async fn url(instance: &str, settings: &Settings) -> anyhow::Result<String> {
    let inst = instance_config(settings, instance).await?;
    let url = receiver_url(settings, instance);
    let env = format!(
        "STATUSD__INSTANCES__{}__WEBHOOK_SECRET",
        instance.to_uppercase().replace('-', "_")
    );
    let mut out = format!("webhook URL for instance `{instance}`:\n  {url}\n\n");
    if secret_of(&inst, instance)?.is_some() {
        out += "secret: configured (instances.";
        out += instance;
        out += ".webhook_secret[_file]); give the provider the same value as its HMAC key.\n";
    } else {
        out += &format!(
            "secret: NOT configured: events for `{instance}` are refused until you set one:\n  \
             openssl rand -hex 32 > /run/secrets/statusd_webhook_{instance}\n  \
             then instances.{instance}.webhook_secret_file = \"/run/secrets/statusd_webhook_{instance}\" \
             (or {env}=…; an instance of the table: `statusd instance set {instance} \
             --set webhook_secret_file=…`) and restart statusd.\n"
        );
    }
    if settings.webhooks.public_url.is_none() {
        out += "\nnote: webhooks.public_url is not set; the URL above is admin.bind, which the provider \
                must be able to reach (put TLS in front).\n";
    }
    out += &format!(
        "\nWAHA: `statusd webhook register {instance}` adds it to the session's config; by hand, \
         PUT /api/sessions/{{session}} with the session's config and this webhook, with the same key:\n\
         {{\n  \"config\": {{\n    \"webhooks\": [{{\n      \"url\": \"{url}\",\n      \
         \"events\": [\"{}\", \"{}\"],\n      \"hmac\": {{\"key\": \"<the secret>\"}},\n      \
         \"retries\": {{\"policy\": \"constant\", \"delaySeconds\": 2, \"attempts\": 15}}\n    }}]\n  }}\n}}\n",
        w::EVENT_MESSAGE_ANY,
        w::EVENT_MESSAGE_ACK
    );
    out += &format!(
        "\nWawp (paid tiers): Wawp documents its own signature header (X-Wawp-Signature), which \
         statusd does not check: set instances.{instance}.webhook_path_token, then \
         `statusd webhook register {instance}` gives Wawp (POST /v2/webhook/set) the URL\n  \
         {url}/<token>\n\
         with the events {} and {}; or set that URL in Wawp's dashboard.\n\
         Events must arrive within webhooks.timestamp_window_secs ({} s) of their X-Webhook-Timestamp.\n",
        w::EVENT_MESSAGE_ANY,
        w::EVENT_MESSAGE_ACK,
        settings.webhooks.timestamp_window_secs
    );
    Ok(out)
}

/// `statusd webhook register INSTANCE [--dry-run]`: points the provider's
/// events at statusd's receiver: a WAHA session's webhooks get it signed
/// with the instance's secret, Wawp's get it with the instance's path token.
pub async fn register(a: &WebhookRegisterArgs, settings: &Settings) -> anyhow::Result<String> {
    let name = &a.instance;
    let inst = instance_config(settings, name).await?;
    let key = secret_of(&inst, name)?;
    let path_token = inst
        .webhook_path_token()
        .map_err(|e| anyhow::anyhow!("instances.{name}.{e}"))?;
    let waha = inst.provider == ProviderKind::Waha;
    if waha && key.is_none() {
        anyhow::bail!(
            "instance `{name}` has no webhook secret: WAHA signs its events with it, and events \
             without it are refused. Set one first (`statusd webhook url {name}` says how), then \
             register"
        );
    }
    let url = receiver_url(settings, name);
    let client = WawpClient::new(name, &inst, &settings.provider)?;
    let hook = Hook {
        url: &url,
        key: key.as_ref(),
        path_token: path_token.as_ref(),
    };
    let done = client
        .register_webhook(&hook, a.dry_run)
        .await
        .map_err(anyhow::Error::msg)?;
    let events = WEBHOOK_EVENTS.join(", ");
    let (target, how) = if waha {
        (
            format!("WAHA session `{}`", inst.session_name()),
            format!("{url}, signed with this instance's secret (HMAC-SHA512)"),
        )
    } else {
        (
            format!("Wawp instance `{}`", inst.instance_id),
            format!("{url}/<webhook_path_token>"),
        )
    };
    let mut out = match done.registered {
        Registered::Unchanged => {
            format!("already registered: {target} sends {events} to {how}; nothing changed\n")
        }
        Registered::Updated { restarted } => format!(
            "registered: {target} now sends {events} to {how}{}\n",
            if restarted {
                "; WAHA restarts a running session to apply a new config"
            } else {
                ""
            }
        ),
        Registered::WouldUpdate => format!(
            "dry run: {target} would be sent this ({}; secrets redacted):\n",
            if waha {
                "PUT /api/sessions/{session}; WAHA restarts a running session to apply it"
            } else {
                "POST /v2/webhook/set"
            }
        ),
    };
    if a.dry_run || matches!(done.registered, Registered::WouldUpdate) {
        out += &serde_json::to_string_pretty(&redacted_config(&done.config))?;
        out.push('\n');
    }
    if settings.webhooks.public_url.is_none() {
        out += "note: webhooks.public_url is not set; the URL is admin.bind, which the provider must be able to reach\n";
    }
    Ok(out)
}
