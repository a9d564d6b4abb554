//! `[webhooks]`: the receiving side of the provider's events (issue 13).
//! Each instance's secret is its own (`instances.NAME.webhook_secret`,
//! `webhook_secret_file`, `webhook_path_token[_file]`); these settings are
//! shared.

use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::{read_secret_file, InstanceConfig};
use secrecy::SecretString;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// An event whose `X-Webhook-Timestamp` is further than this from our
    /// clock is refused (401): a replayed capture. Keep it above the
    /// provider's retry span (WAHA: 15 tries, 2 s apart); 0 turns the check
    /// off (not recommended).
    pub timestamp_window_secs: u64,
    /// Larger bodies are refused (413) before they are read in full.
    pub max_body_bytes: usize,
    /// Events applied per transaction by the processor.
    pub batch_size: usize,
    /// The processor looks at its inbox this often even when no request
    /// woke it (events accepted by another replica's server).
    pub fallback_poll_ms: u64,
    /// After a wake-up the processor waits this long, so that one
    /// transaction applies a burst of events (an in-doubt row is settled
    /// this much later, still without its settle delay or a look-up).
    pub apply_linger_ms: u64,
    /// The address the provider reaches this server at, for
    /// `statusd webhook url` (e.g. `https://statusd.example.com`); default:
    /// `http://` + `admin.bind`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            timestamp_window_secs: 300,
            max_body_bytes: 1024 * 1024,
            batch_size: 500,
            fallback_poll_ms: 30_000,
            apply_linger_ms: 100,
            public_url: None,
        }
    }
}

impl InstanceConfig {
    /// The instance's webhook HMAC key (file first), if webhooks are set up.
    pub fn webhook_secret(&self) -> Result<Option<SecretString>, String> {
        match (&self.webhook_secret_file, &self.webhook_secret) {
            (Some(p), _) => read_secret_file(p)
                .map(Some)
                .map_err(|e| format!("webhook_secret_file {e}")),
            (None, s) => Ok(s.clone()),
        }
    }

    /// The key its events are checked with: the webhook secret, unless
    /// blank (`config check` reports a blank one).
    pub fn webhook_key(&self) -> Result<Option<SecretString>, String> {
        Ok(self
            .webhook_secret()?
            .filter(|k| !k.expose_secret().trim().is_empty()))
    }

    /// The instance's webhook path token (file first), trimmed, if set.
    pub fn webhook_path_token(&self) -> Result<Option<SecretString>, String> {
        let token = match (&self.webhook_path_token_file, &self.webhook_path_token) {
            (Some(p), _) => read_secret_file(p)
                .map(Some)
                .map_err(|e| format!("webhook_path_token_file {e}"))?,
            (None, t) => t.clone(),
        };
        Ok(token.map(|t| SecretString::from(t.expose_secret().trim().to_string())))
    }
}
