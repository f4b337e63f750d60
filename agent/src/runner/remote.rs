//! What the agent asks GitHub about runners: fresh registration and remove tokens, the runner
//! list, deletion, labels. A raw registration token (`registration_token_file`) gives only the
//! first: no REST, so no GitHub view in `status`, no label API, no remove token.

use std::time::SystemTime;

use crate::config::{Auth, Config, SecretFile};

use super::RunnerError;

/// A runner as GitHub lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RemoteRunner {
    pub id: u64,
    pub name: String,
    /// `online` or `offline`.
    pub status: String,
    pub busy: bool,
    /// Every label, the runner's defaults (`self-hosted`, OS, arch) included.
    pub labels: Vec<String>,
    /// The labels that can be changed (not the read-only defaults).
    #[serde(skip)]
    pub custom_labels: Vec<String>,
}

/// A token and, when known, when it expires.
#[derive(Debug, Clone)]
pub struct Token {
    pub value: String,
    pub expires_at: Option<String>,
}

/// How this host talks to GitHub about runners.
pub enum Remote {
    /// `registration_token_file`: a token minted by someone else, valid for one hour.
    RawToken { file: SecretFile },
}

impl Remote {
    pub fn from_config(config: &Config) -> Result<Remote, RunnerError> {
        match &config.github.auth {
            Auth::RegistrationToken { file } => Ok(Remote::RawToken { file: file.clone() }),
            other => Err(RunnerError::AuthUnsupported { key: other.key() }),
        }
    }

    /// Whether GitHub's REST API is available (runner list, labels, remove tokens).
    pub fn has_rest(&self) -> bool {
        match self {
            Remote::RawToken { .. } => false,
        }
    }

    /// Why there is no GitHub view, for messages.
    pub fn no_rest_reason(&self) -> Option<String> {
        match self {
            Remote::RawToken { .. } => Some(
                "`registration_token_file` gives no access to GitHub's REST API: no GitHub view, no label updates, no deregistration; configure `pat_file` or `app` for those".to_owned(),
            ),
        }
    }

    /// A registration token, minted now when the credentials allow it.
    pub async fn registration_token(&self) -> Result<Token, RunnerError> {
        match self {
            Remote::RawToken { file } => {
                let value = file.read().map_err(|source| RunnerError::Secret {
                    source: Box::new(source),
                })?;
                Ok(Token {
                    value,
                    expires_at: raw_token_expiry(file),
                })
            }
        }
    }

    /// A remove token, minted now; `None` when the credentials cannot mint one.
    pub async fn remove_token(&self) -> Result<Option<Token>, RunnerError> {
        match self {
            Remote::RawToken { .. } => Ok(None),
        }
    }

    /// The scope's runners; `None` without REST access.
    pub async fn runners(&self) -> Result<Option<Vec<RemoteRunner>>, RunnerError> {
        match self {
            Remote::RawToken { .. } => Ok(None),
        }
    }

    /// Delete a registration (a missing one is not an error).
    pub async fn delete_runner(&self, id: u64) -> Result<(), RunnerError> {
        match self {
            Remote::RawToken { .. } => Err(RunnerError::NoRest {
                what: format!("delete runner {id}"),
            }),
        }
    }

    /// Replace a runner's custom labels.
    pub async fn set_labels(&self, id: u64, labels: &[String]) -> Result<(), RunnerError> {
        let _ = labels;
        match self {
            Remote::RawToken { .. } => Err(RunnerError::NoRest {
                what: format!("set the labels of runner {id}"),
            }),
        }
    }
}

/// A raw registration token expires one hour after it was minted; the file's modification time
/// is the best guess of when that was.
fn raw_token_expiry(file: &SecretFile) -> Option<String> {
    let modified = std::fs::metadata(&file.resolved).ok()?.modified().ok()?;
    let expiry = modified + std::time::Duration::from_secs(3600);
    let since = expiry.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    let at = time::OffsetDateTime::from_unix_timestamp(since.as_secs() as i64).ok()?;
    at.format(&time::format_description::well_known::Rfc3339)
        .ok()
}
