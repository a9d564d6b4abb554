//! `statusd config check | show`. Neither prints a secret: `show` prints
//! [`Settings::redacted`], `check` prints keys and problems only.

use std::io::Write;

use secrecy::ExposeSecret;

use super::print_out;
use crate::config::{describe_source, redact_url, ConfigError, ConfigSource, Settings};

/// Prints every problem as `key: problem`; fails if there is any.
pub fn check(source: &ConfigSource) -> anyhow::Result<()> {
    let from = describe_source(source);
    match Settings::load(source) {
        Ok(s) => {
            let url = s.database.url.expose_secret();
            let backend = if url.starts_with("sqlite:") {
                "SQLite"
            } else {
                "PostgreSQL"
            };
            let names: Vec<&str> = s.instances.keys().map(String::as_str).collect();
            print_out(&format!(
                "configuration OK ({from})\n  database: {backend} at {}\n  instances: {} ({})\n  id source: {}, concurrency {}\n  admin: {}\n",
                redact_url(url),
                names.len(),
                names.join(", "),
                match s.daemon.id_source {
                    crate::config::IdSource::Api => "api",
                    crate::config::IdSource::Local => "local",
                },
                s.daemon.concurrency,
                if s.admin.enabled {
                    format!(
                        "http://{} (token {})",
                        s.admin.bind,
                        if s.admin.token.is_some() { "set" } else { "not set" }
                    )
                } else {
                    "disabled".into()
                },
            ))
        }
        Err(ConfigError::Invalid(problems)) => {
            let mut out = String::new();
            for p in &problems {
                out += &format!("{p}\n");
            }
            print_out(&out)?;
            anyhow::bail!(
                "{} configuration problem{} in {from}",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            )
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("configuration from {from}"))),
    }
}

/// Prints the effective settings with secrets redacted. Loads leniently so
/// that an operator can see what was read even while `check` complains.
/// The TOML goes to stdout (it parses as a config file); problems go to
/// stderr, so `config show > effective.toml` stays valid.
pub fn show(source: &ConfigSource) -> anyhow::Result<()> {
    let (s, problems) = Settings::load_report(source).map_err(|e| {
        anyhow::Error::new(e).context(format!("configuration from {}", describe_source(source)))
    })?;
    if !problems.is_empty() {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "warning: {} configuration problem{} (keys at fault show their defaults;              see `statusd config check`):",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
        for p in &problems {
            let _ = writeln!(err, "  {p}");
        }
    }
    print_out(&s.redacted())
}
