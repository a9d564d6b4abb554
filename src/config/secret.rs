//! Secrets given as files (`access_token_file`, `admin.token_file`,
//! `database.url_file`): read, trimmed, and refused when empty, with errors
//! that name the file and never its content.

use std::path::{Path, PathBuf};

use secrecy::SecretString;

use super::InstanceConfig;

impl InstanceConfig {
    /// The token, read from the file when configured that way.
    pub fn token(&self) -> Result<SecretString, SecretError> {
        if let Some(t) = &self.access_token {
            return Ok(t.clone());
        }
        match &self.access_token_file {
            Some(p) => read_secret_file(p).map_err(|e| SecretError::TokenFile(Box::new(e))),
            None => Err(SecretError::NoToken),
        }
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
    #[error("access_token (or access_token_file) is required")]
    NoToken,
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
