//! `statusd config show`: the effective settings as TOML, secrets redacted.

use std::collections::BTreeMap;
use std::path::Path;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use super::redact::{redact_url, REDACTED};
use super::{DaemonSettings, ProviderKind, ProviderSettings, Settings};

impl Settings {
    /// The effective settings as TOML (`statusd config show`): every secret
    /// that is set reads `"[redacted]"`, database passwords included.
    pub fn redacted(&self) -> String {
        let url = self.database.url.expose_secret();
        let shown = Shown {
            database: ShownDatabase {
                url: (!url.is_empty()).then(|| redact_url(url)),
                url_file: self.secret_files.database_url_file.as_deref(),
                max_connections: self.database.max_connections,
                call_timeout_ms: self.database.call_timeout_ms,
            },
            daemon: &self.daemon,
            admin: ShownAdmin {
                enabled: self.admin.enabled,
                bind: &self.admin.bind,
                token: self.admin.token.as_ref().map(shown_secret),
                token_file: self.secret_files.admin_token_file.as_deref(),
            },
            provider: &self.provider,
            webhooks: &self.webhooks,
            instances: self
                .instances
                .iter()
                .map(|(name, i)| {
                    let shown = ShownInstance {
                        provider: i.provider,
                        base_url: &i.base_url,
                        instance_id: &i.instance_id,
                        access_token: i.access_token.as_ref().map(shown_secret),
                        access_token_file: i.access_token_file.as_deref(),
                        access_token_env: i.access_token_env.as_deref(),
                        supplied_id: i.supplied_id,
                        rate_per_sec: i.rate_per_sec,
                        burst: i.burst,
                        webhook_secret: i.webhook_secret.as_ref().map(shown_secret),
                        webhook_secret_file: i.webhook_secret_file.as_deref(),
                        webhook_path_token: i.webhook_path_token.as_ref().map(shown_secret),
                        webhook_path_token_file: i.webhook_path_token_file.as_deref(),
                    };
                    (name.as_str(), shown)
                })
                .collect(),
        };
        // Plain data with string keys: serializing it cannot fail; say so
        // in the output rather than panic if it ever does.
        toml::to_string(&shown)
            .unwrap_or_else(|e| format!("# cannot print the configuration as TOML: {e}\n"))
    }
}

/// `"[redacted]"` for a secret that is set; an empty one is shown empty,
/// since that is the mistake an operator is looking for.
fn shown_secret(s: &SecretString) -> &'static str {
    if s.expose_secret().is_empty() {
        ""
    } else {
        REDACTED
    }
}

/// What `config show` prints. TOML has no null: the serializer leaves a
/// `None` out (a secret not set, a file not named), as the shown settings
/// want.
#[derive(Serialize)]
struct Shown<'a> {
    database: ShownDatabase<'a>,
    daemon: &'a DaemonSettings,
    admin: ShownAdmin<'a>,
    provider: &'a ProviderSettings,
    webhooks: &'a super::WebhookSettings,
    instances: BTreeMap<&'a str, ShownInstance<'a>>,
}

#[derive(Serialize)]
struct ShownDatabase<'a> {
    url: Option<String>,
    url_file: Option<&'a Path>,
    max_connections: u32,
    call_timeout_ms: u64,
}

#[derive(Serialize)]
struct ShownAdmin<'a> {
    enabled: bool,
    bind: &'a str,
    token: Option<&'static str>,
    token_file: Option<&'a Path>,
}

#[derive(Serialize)]
struct ShownInstance<'a> {
    provider: ProviderKind,
    base_url: &'a str,
    instance_id: &'a str,
    access_token: Option<&'static str>,
    access_token_file: Option<&'a Path>,
    access_token_env: Option<&'a str>,
    supplied_id: bool,
    rate_per_sec: u32,
    burst: u32,
    webhook_secret: Option<&'static str>,
    webhook_secret_file: Option<&'a Path>,
    webhook_path_token: Option<&'static str>,
    webhook_path_token_file: Option<&'a Path>,
}
