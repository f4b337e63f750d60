//! Registration and remove tokens for `config.sh`, and just-in-time runner configurations.

use std::fmt;

use reqwest::Method;
use serde::Deserialize;
use time::OffsetDateTime;

use super::credentials::Credentials;
use super::runners::Runner;
use super::transport::{Access, Purpose};
use super::{Client, GithubError};
use crate::config::Scope;

/// A registration token lives one hour after GitHub mints it.
const REGISTRATION_TOKEN_LIFETIME: time::Duration = time::Duration::hours(1);

/// A short-lived token (`POST …/registration-token`, `…/remove-token`, installation tokens).
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct Token {
    pub token: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl Token {
    /// Whether the token is expired at `now`.
    pub fn is_expired_at(&self, now: OffsetDateTime) -> bool {
        self.expires_at <= now
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("token", &"***")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A just-in-time runner: its registration and the configuration `run.sh --jitconfig` takes.
#[derive(Clone, Deserialize)]
pub struct JitConfig {
    pub runner: Runner,
    pub encoded_jit_config: String,
}

impl fmt::Debug for JitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JitConfig")
            .field("runner", &self.runner)
            .field("encoded_jit_config", &"***")
            .finish()
    }
}

impl Client {
    /// A registration token for `config.sh` on `scope`. With a raw registration token configured,
    /// that token is returned, its expiry estimated as one hour after its file was written (an
    /// already expired one is an error saying so).
    pub async fn registration_token(&self, scope: &Scope) -> Result<Token, GithubError> {
        if let Credentials::RegistrationToken(secret) = &self.credentials {
            let token = secret.value()?;
            let written = secret
                .modified()
                .map(OffsetDateTime::from)
                .unwrap_or_else(|| self.options.clock.now());
            let expires_at = written + REGISTRATION_TOKEN_LIFETIME;
            if expires_at <= self.options.clock.now() {
                return Err(GithubError::RegistrationTokenExpired {
                    path: secret.path().map(ToOwned::to_owned).unwrap_or_default(),
                    expired_at: expires_at,
                });
            }
            return Ok(Token { token, expires_at });
        }
        self.mint(scope, "/actions/runners/registration-token")
            .await
    }

    /// A remove token for `config.sh remove` on `scope`.
    pub async fn remove_token(&self, scope: &Scope) -> Result<Token, GithubError> {
        if let Credentials::RegistrationToken(_) = &self.credentials {
            return Err(GithubError::RegistrationTokenOnly {
                what: "a remove token".to_owned(),
            });
        }
        self.mint(scope, "/actions/runners/remove-token").await
    }

    async fn mint(&self, scope: &Scope, path: &str) -> Result<Token, GithubError> {
        let token: Token = self
            .scoped_json(Method::POST, scope, Access::Write, path, None)
            .await?;
        crate::redact::register(&token.token);
        Ok(token)
    }

    /// Registers an ephemeral just-in-time runner `name` in runner group `group_id` (`1` is the
    /// default group; repositories only have it) with custom `labels`. A name already taken (by
    /// another host, say) is [`GithubError::NameTaken`].
    pub async fn generate_jitconfig(
        &self,
        scope: &Scope,
        name: &str,
        group_id: u64,
        labels: &[String],
        work_folder: Option<&str>,
    ) -> Result<JitConfig, GithubError> {
        let mut body = serde_json::json!({
            "name": name,
            "runner_group_id": group_id,
            "labels": labels,
        });
        if let (Some(folder), Some(map)) = (work_folder, body.as_object_mut()) {
            map.insert("work_folder".to_owned(), serde_json::json!(folder));
        }
        let url = self.endpoint(&format!(
            "{}/actions/runners/generate-jitconfig",
            scope.api_prefix()
        ))?;
        let result = self
            .call(
                Method::POST,
                url,
                Some(body),
                None,
                Purpose::Scoped {
                    scope,
                    access: Access::Write,
                },
            )
            .await;
        match result {
            Ok(reply) => {
                let config: JitConfig = reply.json()?;
                crate::redact::register(&config.encoded_jit_config);
                Ok(config)
            }
            Err(GithubError::Status {
                url,
                status: 409,
                message,
            }) => Err(GithubError::NameTaken {
                url: url.to_string(),
                name: name.to_owned(),
                message,
            }),
            Err(err) => Err(err),
        }
    }
}
