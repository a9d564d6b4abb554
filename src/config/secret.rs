//! Secrets given as files (`access_token_file`, `admin.token_file`,
//! `database.url_file`): read, trimmed, and refused when empty, with errors
//! that name the file and never its content.

use std::path::{Path, PathBuf};

use secrecy::SecretString;

use super::InstanceConfig;

impl InstanceConfig {
    /// The token: given by value, or read from the file or the environment
    /// variable named (`access_token_env`, how instances added at runtime
    /// name theirs), when configured that way.
    pub fn token(&self) -> Result<SecretString, SecretError> {
        if let Some(t) = &self.access_token {
            return Ok(t.clone());
        }
        match (&self.access_token_file, &self.access_token_env) {
            (Some(p), _) => read_secret_file(p).map_err(|e| SecretError::TokenFile(Box::new(e))),
            (None, Some(var)) => read_secret_env(var),
            (None, None) => Err(SecretError::NoToken),
        }
    }
}

/// Reads a secret from the environment variable `var`, trimmed. Errors name
/// the variable if it looks like one (anything else may be a token pasted
/// in its place and is never echoed), never the value.
fn read_secret_env(var: &str) -> Result<SecretString, SecretError> {
    if !super::is_env_var_name(var) {
        return Err(SecretError::EnvNotAName);
    }
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(SecretString::from(v.trim().to_string())),
        Ok(_) => Err(SecretError::EnvEmpty(var.to_string())),
        Err(std::env::VarError::NotPresent) => Err(SecretError::EnvNotSet(var.to_string())),
        Err(std::env::VarError::NotUnicode(_)) => Err(SecretError::EnvNotUnicode(var.to_string())),
    }
}

/// Why a secret could not be had. Names the file and the I/O failure, never
/// the content.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is empty", .0.display())]
    Empty(PathBuf),
    #[error("access_token (or access_token_file, or access_token_env) is required")]
    NoToken,
    #[error(
        "access_token_env must name an environment variable (letters, digits and _), not hold the token itself"
    )]
    EnvNotAName,
    #[error("access_token_env: the environment variable {0} is not set")]
    EnvNotSet(String),
    #[error("access_token_env: the environment variable {0} is empty")]
    EnvEmpty(String),
    #[error("access_token_env: the environment variable {0} is not valid UTF-8")]
    EnvNotUnicode(String),
    /// `access_token_file` could not be read (the message names the key).
    #[error("access_token_file {0}")]
    TokenFile(Box<SecretError>),
}

/// Reads a secret from a file, trimmed (files end with a newline). Errors
/// name the path and the I/O failure, never the content.
pub(super) fn read_secret_file(path: &Path) -> Result<SecretString, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(SecretError::Empty(path.to_path_buf()));
    }
    Ok(SecretString::from(secret.to_string()))
}
