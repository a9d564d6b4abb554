//! The settings of one provider instance (one WhatsApp session) and the
//! checks of instance names and API roots.

use super::*;

/// Which provider API an instance speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Wawp's API (`/v2/…`, `instance_id`, `access-token` header).
    #[default]
    Wawp,
    /// WAHA's own API (`/api/{session}/…`, `X-Api-Key` header).
    Waha,
}

with_defaults! {
    /// One provider instance (one WhatsApp session).
    ///
    /// Every key left out of an `[instances.NAME]` table takes its default
    /// (no token, no instance id: both are required).
    #[derive(Debug, Clone, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct InstanceConfig {
        pub provider: ProviderKind = ProviderKind::default(),
        pub base_url: String = "https://api.wawp.net".into(),
        /// Required with `provider = "wawp"`; defaulted here only so that its
        /// absence is reported with the instance's other problems (see
        /// [`Settings::problems`]). With `provider = "waha"` it is the WAHA
        /// session, also spelled `session` (default `default`, WAHA's own).
        #[serde(alias = "session")]
        pub instance_id: String = String::new(),
        /// The access token; or use `access_token_file`.
        pub access_token: Option<SecretString> = None,
        pub access_token_file: Option<PathBuf> = None,
        /// The name of an environment variable holding the token, read by each
        /// daemon from its own environment (instances added at runtime name
        /// their token this way or by `access_token_file`, never by value).
        pub access_token_env: Option<String> = None,
        /// Send our pre-generated id in the body (API.md).
        pub supplied_id: bool = true,
        /// Token-bucket rate: statuses per second, and burst.
        pub rate_per_sec: u32 = 20,
        pub burst: u32 = 20,
        /// Provider calls of this instance in flight at once, across every
        /// replica: a slow provider for one instance cannot hold every send slot.
        pub max_in_flight: usize = DEFAULT_MAX_IN_FLIGHT,
        /// HMAC-SHA512 key of the provider's webhook events for this instance
        /// (`POST /v1/webhooks/NAME`); or `webhook_secret_file`. Absent (and no
        /// `webhook_path_token`): the instance's events are refused.
        pub webhook_secret: Option<SecretString> = None,
        pub webhook_secret_file: Option<PathBuf> = None,
        /// For a provider that cannot sign: events to
        /// `POST /v1/webhooks/NAME/TOKEN` are accepted without a signature;
        /// or `webhook_path_token_file` (an instance of the table names it
        /// that way).
        pub webhook_path_token: Option<SecretString> = None,
        pub webhook_path_token_file: Option<PathBuf> = None,
    }
}

/// 8 calls at once carry 20 statuses/s (the default rate) at up to 400 ms
/// a call; raise it for a provider that answers slower at a higher rate.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 8;

impl InstanceConfig {
    /// The WAHA session name (`session`, default `default`).
    pub fn session_name(&self) -> &str {
        match self.instance_id.trim() {
            "" => "default",
            s => s,
        }
    }

    /// An instance added at runtime, from its `status_instances.settings`
    /// (the keys of an `[instances.NAME]` table, defaults for the rest). An
    /// access token by value is refused: the table names it, never holds it.
    pub fn from_table(
        settings: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<InstanceConfig, String> {
        if settings.contains_key("access_token") {
            return Err(
                "access_token must not be stored in the table: name the token with \
                        access_token_env or access_token_file"
                    .into(),
            );
        }
        let value = serde_json::Value::Object(settings.clone());
        serde_path_to_error::deserialize::<_, InstanceConfig>(value).map_err(|e| {
            let path = e.path().to_string();
            if path == "." || path.is_empty() {
                e.inner().to_string()
            } else {
                format!("{path}: {}", e.inner())
            }
        })
    }

    /// Every problem of this instance's settings, each with its key under
    /// `prefix` (`instances.NAME` for the file; the table's own prefix for an
    /// instance added at runtime).
    pub fn problems(&self, prefix: &str) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        // Without a prefix (an instance of the table) the token's key is
        // named for what it is: the table names a token, never holds one.
        let mut p = |k: &str, problem: &str| {
            let key = match (prefix.is_empty(), k) {
                (true, "access_token") => "token".to_string(),
                (true, k) => k.to_string(),
                (false, k) => format!("{prefix}.{k}"),
            };
            out.push(ConfigProblem::new(key, problem))
        };
        if let Err(e) = check_base_url(&self.base_url) {
            p("base_url", e);
        }
        match self.provider {
            ProviderKind::Wawp if self.instance_id.trim().is_empty() => {
                p("instance_id", "is required and must not be empty")
            }
            _ => {}
        }
        match self.token() {
            Err(e) => p("access_token", &e.to_string()),
            Ok(t) if t.expose_secret().trim().is_empty() => {
                p("access_token", "must not be empty or blank")
            }
            Ok(_) => {}
        }
        if self.rate_per_sec == 0 {
            p("rate_per_sec", "must be at least 1");
        }
        if self.burst == 0 {
            p("burst", "must be at least 1");
        }
        if self.max_in_flight == 0 {
            p("max_in_flight", "must be at least 1");
        }
        // The instance table names secrets, never holds them (as tokens).
        if prefix.is_empty() && (self.webhook_secret.is_some() || self.webhook_path_token.is_some())
        {
            p(
                "webhook_secret",
                "an instance of the table names its webhook secret and path token with \
                 webhook_secret_file and webhook_path_token_file; it never holds them",
            );
        }
        match self.webhook_secret() {
            Err(e) => p("webhook_secret", &e),
            Ok(Some(s)) if s.expose_secret().trim().is_empty() => {
                p("webhook_secret", "must not be empty or blank")
            }
            Ok(_) => {}
        }
        match self.webhook_path_token() {
            Err(e) => p("webhook_path_token", &e),
            Ok(Some(t)) if t.expose_secret().len() < 16 => p(
                "webhook_path_token",
                "must be at least 16 characters (it is the only key of unsigned events)",
            ),
            Ok(_) => {}
        }
        out
    }
}

/// Whether `name` is a usable environment variable name (shown in errors;
/// anything else may be a token pasted by mistake and is never echoed).
pub fn is_env_var_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An instance that is not configured here, with the ones that are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("instance: `{instance}` is not a configured instance (configured: {})", configured.join(", "))]
pub struct NotConfigured {
    pub instance: String,
    /// Sorted.
    pub configured: Vec<String>,
}

/// An instance's API root: http(s) with a host (`https://` alone is not).
pub(crate) fn check_base_url(base: &str) -> Result<(), &'static str> {
    let url = url::Url::parse(base).map_err(|_| "must be an http(s) URL with a host")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http(s) URL");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must name a host, like https://api.wawp.net");
    }
    Ok(())
}

/// The one check of "is `instance` configured here", with the one message
/// (naming the instances that are), for the CLI, the admin API and the
/// daemon's validation of rows written by others.
pub fn check_configured<'a>(
    instance: &str,
    configured: impl IntoIterator<Item = &'a String>,
) -> Result<(), NotConfigured> {
    let mut known: Vec<String> = configured.into_iter().cloned().collect();
    if known.iter().any(|k| k == instance) {
        return Ok(());
    }
    known.sort_unstable();
    Err(NotConfigured {
        instance: instance.to_string(),
        configured: known,
    })
}
