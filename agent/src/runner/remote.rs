//! What the agent asks GitHub about runners: fresh registration and remove tokens, the runner
//! list, deletion, labels. A raw registration token (`registration_token_file`) gives only the
//! first: no REST, so no GitHub view in `status`, no label API, no remove token.

use std::time::SystemTime;

use crate::config::{Auth, Config, Scope, SecretFile};
use crate::github::{Client, Credentials, GithubError, LabelKind};

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
    /// A PAT or a GitHub App: the REST API mints tokens and manages runners.
    Rest { client: Box<Client>, scope: Scope },
}

fn github(what: impl Into<String>) -> impl FnOnce(GithubError) -> RunnerError {
    let what = what.into();
    move |source| RunnerError::Github {
        what,
        source: Box::new(source),
    }
}

impl From<crate::github::Runner> for RemoteRunner {
    fn from(runner: crate::github::Runner) -> RemoteRunner {
        RemoteRunner {
            id: runner.id,
            custom_labels: runner
                .labels
                .iter()
                .filter(|l| l.kind == LabelKind::Custom)
                .map(|l| l.name.clone())
                .collect(),
            labels: runner.labels.into_iter().map(|l| l.name).collect(),
            name: runner.name,
            status: runner.status,
            busy: runner.busy,
        }
    }
}

impl Remote {
    pub fn from_config(config: &Config) -> Result<Remote, RunnerError> {
        match &config.github.auth {
            Auth::RegistrationToken { file } => Ok(Remote::RawToken { file: file.clone() }),
            auth => {
                let credentials =
                    Credentials::from_config(auth).map_err(github("read the credentials"))?;
                let client = Client::new(config.github.api_url.clone(), credentials)
                    .map_err(github("build the client"))?;
                Ok(Remote::Rest {
                    client: Box::new(client),
                    scope: config.github.scope.clone(),
                })
            }
        }
    }

    /// Whether GitHub's REST API is available (runner list, labels, remove tokens).
    pub fn has_rest(&self) -> bool {
        match self {
            Remote::RawToken { .. } => false,
            Remote::Rest { .. } => true,
        }
    }

    /// Why there is no GitHub view, for messages.
    pub fn no_rest_reason(&self) -> Option<String> {
        match self {
            Remote::RawToken { .. } => Some(
                "`registration_token_file` gives no access to GitHub's REST API: no GitHub view, no label updates, no deregistration; configure `pat_file` or `app` for those".to_owned(),
            ),
            Remote::Rest { .. } => None,
        }
    }

    /// A registration token, minted now when the credentials allow it.
    pub async fn registration_token(&self) -> Result<Token, RunnerError> {
        match self {
            Remote::RawToken { file } => {
                let value = file.read().map_err(|source| RunnerError::Secret {
                    source: Box::new(source),
                })?;
                // Written more than an hour ago: GitHub will refuse it, say so before trying.
                if let Some((expiry, text)) = raw_token_expiry(file) {
                    if expiry < SystemTime::now() {
                        return Err(RunnerError::TokenExpired {
                            file: file.resolved.clone(),
                            expiry: text,
                        });
                    }
                }
                Ok(Token {
                    value,
                    expires_at: raw_token_expiry(file).map(|(_, text)| text),
                })
            }
            Remote::Rest { client, scope } => {
                let token = client
                    .registration_token(scope)
                    .await
                    .map_err(github("mint a registration token"))?;
                Ok(Token {
                    value: token.token,
                    expires_at: rfc3339(token.expires_at),
                })
            }
        }
    }

    /// A remove token, minted now; `None` when the credentials cannot mint one.
    pub async fn remove_token(&self) -> Result<Option<Token>, RunnerError> {
        match self {
            Remote::RawToken { .. } => Ok(None),
            Remote::Rest { client, scope } => {
                let token = client
                    .remove_token(scope)
                    .await
                    .map_err(github("mint a remove token"))?;
                Ok(Some(Token {
                    value: token.token,
                    expires_at: rfc3339(token.expires_at),
                }))
            }
        }
    }

    /// The scope's runners; `None` without REST access.
    pub async fn runners(&self) -> Result<Option<Vec<RemoteRunner>>, RunnerError> {
        match self {
            Remote::RawToken { .. } => Ok(None),
            Remote::Rest { client, scope } => Ok(Some(
                client
                    .list_runners(scope)
                    .await
                    .map_err(github("list the runners"))?
                    .into_iter()
                    .map(RemoteRunner::from)
                    .collect(),
            )),
        }
    }

    /// Delete a registration (a missing one is not an error).
    pub async fn delete_runner(&self, id: u64) -> Result<(), RunnerError> {
        match self {
            Remote::RawToken { .. } => Err(RunnerError::NoRest {
                what: format!("delete runner {id}"),
            }),
            Remote::Rest { client, scope } => match client.delete_runner(scope, id).await {
                Ok(()) => Ok(()),
                Err(err) if err.status() == Some(404) => Ok(()),
                Err(err) => Err(github(format!("delete runner {id}"))(err)),
            },
        }
    }

    /// Replace a runner's custom labels.
    pub async fn set_labels(&self, id: u64, labels: &[String]) -> Result<(), RunnerError> {
        match self {
            Remote::RawToken { .. } => Err(RunnerError::NoRest {
                what: format!("set the labels of runner {id}"),
            }),
            Remote::Rest { client, scope } => client
                .set_labels(scope, id, labels)
                .await
                .map(|_| ())
                .map_err(github(format!("set the labels of runner {id}"))),
        }
    }
}

fn rfc3339(at: time::OffsetDateTime) -> Option<String> {
    at.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// A raw registration token expires one hour after it was minted; the file's modification time
/// is the best guess of when that was.
fn raw_token_expiry(file: &SecretFile) -> Option<(SystemTime, String)> {
    let modified = std::fs::metadata(&file.resolved).ok()?.modified().ok()?;
    let expiry = modified + std::time::Duration::from_secs(3600);
    let at = time::OffsetDateTime::from(expiry);
    Some((expiry, rfc3339(at)?))
}
