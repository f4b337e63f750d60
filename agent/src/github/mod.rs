//! GitHub's REST API: a small typed client, one method per endpoint the agent needs.
//!
//! [`Client`] speaks to `api.github.com`, a GHES `https://HOST/api/v3`, or the test emulator; it
//! sends the headers GitHub documents (`Accept: application/vnd.github+json`,
//! `X-GitHub-Api-Version: 2022-11-28`, a `User-Agent`) and turns every non-2xx answer into a
//! [`GithubError::Status`] that carries the status and GitHub's own `message`. The DTOs never use
//! `deny_unknown_fields`: GitHub adds fields.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use url::Url;

use crate::config::Scope;

/// The REST API version every request asks for.
pub const API_VERSION: &str = "2022-11-28";
/// The `User-Agent` of every request (GitHub rejects requests without one).
pub const USER_AGENT: &str = concat!("runner-agent/", env!("CARGO_PKG_VERSION"));

/// The owner and name of the runner's repository, whose releases are read.
const RUNNER_REPO: &str = "actions/runner";

/// Errors of the REST client.
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("`{url}` is not a valid API address")]
    Url {
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error("request to `{url}` failed")]
    Request {
        url: Url,
        #[source]
        source: reqwest::Error,
    },
    #[error("`{url}` answered {status}: {message}")]
    Status {
        url: Url,
        status: u16,
        /// GitHub's `message`, or the start of the body when it was not GitHub's error JSON.
        message: String,
    },
    #[error("cannot read the answer of `{url}`")]
    Decode {
        url: Url,
        #[source]
        source: reqwest::Error,
    },
}

impl GithubError {
    /// The HTTP status GitHub answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            GithubError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A release of `actions/runner` (`GET /repos/actions/runner/releases/...`).
#[derive(Debug, Clone, Deserialize)]
pub struct Release {
    /// `v2.336.0`.
    pub tag_name: String,
    /// Release notes; carry `<!-- BEGIN SHA linux-x64 -->HEX<!-- END SHA linux-x64 -->` markers.
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub assets: Vec<ReleaseAsset>,
}

/// One file of a release.
#[derive(Debug, Clone, Deserialize)]
pub struct ReleaseAsset {
    pub name: String,
    pub browser_download_url: Url,
    #[serde(default)]
    pub size: Option<u64>,
    /// `sha256:<hex>` on current GitHub; absent on older servers.
    #[serde(default)]
    pub digest: Option<String>,
}

/// One runner package for a scope (`GET {scope}/actions/runners/downloads`).
#[derive(Debug, Clone, Deserialize)]
pub struct RunnerApplication {
    /// `linux`, `osx`, `win`.
    pub os: String,
    /// `x64`, `arm64`, `arm`.
    pub architecture: String,
    pub download_url: Url,
    pub filename: String,
    /// A short-lived bearer token the download needs, if any.
    #[serde(default)]
    pub temp_download_token: Option<String>,
    #[serde(default)]
    pub sha256_checksum: Option<String>,
}

/// GitHub's error body.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    message: String,
}

/// A REST client for one GitHub (or GHES, or emulator) API base.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    api_url: Url,
    auth: Option<String>,
}

impl Client {
    /// A client for `api_url` (`https://api.github.com`, `https://HOST/api/v3`, …), authenticated
    /// with the bearer token `auth` when given. The token is registered for redaction.
    pub fn new(api_url: Url, auth: Option<String>) -> Result<Client, GithubError> {
        if let Some(token) = &auth {
            crate::redact::register(token);
        }
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(GithubError::Client)?;
        Ok(Client {
            http,
            api_url,
            auth,
        })
    }

    /// The API base this client talks to.
    pub fn api_url(&self) -> &Url {
        &self.api_url
    }

    /// The newest release of `actions/runner`.
    pub async fn latest_release(&self) -> Result<Release, GithubError> {
        self.get(&format!("/repos/{RUNNER_REPO}/releases/latest"))
            .await
    }

    /// The release of `actions/runner` tagged `tag` (`v2.336.0`).
    pub async fn release_by_tag(&self, tag: &str) -> Result<Release, GithubError> {
        self.get(&format!("/repos/{RUNNER_REPO}/releases/tags/{tag}"))
            .await
    }

    /// The runner packages GitHub wants `scope` to run (needs auth with read access to runners).
    pub async fn runner_downloads(
        &self,
        scope: &Scope,
    ) -> Result<Vec<RunnerApplication>, GithubError> {
        self.get(&format!("{}/actions/runners/downloads", scope.api_prefix()))
            .await
    }

    /// `api_url` + `path`, keeping the base's own path (`/api/v3`).
    pub fn endpoint(&self, path: &str) -> Result<Url, GithubError> {
        let joined = format!("{}{}", self.api_url.as_str().trim_end_matches('/'), path);
        Url::parse(&joined).map_err(|source| GithubError::Url {
            url: joined,
            source,
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, GithubError> {
        let url = self.endpoint(path)?;
        let mut request = self
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", API_VERSION);
        if let Some(token) = &self.auth {
            request = request.bearer_auth(token);
        }
        log::debug!("GET {url}");
        let response = request
            .send()
            .await
            .map_err(|source| GithubError::Request {
                url: url.clone(),
                source,
            })?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            let message = match serde_json::from_str::<ErrorBody>(&text) {
                Ok(body) => body.message,
                Err(_) => text.chars().take(200).collect(),
            };
            return Err(GithubError::Status {
                url,
                status: status.as_u16(),
                message,
            });
        }
        response
            .json::<T>()
            .await
            .map_err(|source| GithubError::Decode { url, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_keeps_the_ghes_prefix() {
        let client = Client::new(Url::parse("http://127.0.0.1:9/api/v3/").unwrap(), None).unwrap();
        assert_eq!(
            client
                .endpoint("/repos/actions/runner/releases/latest")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:9/api/v3/repos/actions/runner/releases/latest"
        );
    }

    #[test]
    fn release_dto_accepts_unknown_fields_and_missing_digest() {
        let json = r#"{"tag_name":"v2.336.0","body":"x","id":1,"assets":[
            {"name":"a.tar.gz","browser_download_url":"http://h/a.tar.gz","size":3,"uploader":{}}]}"#;
        let release: Release = serde_json::from_str(json).unwrap();
        assert_eq!(release.assets[0].digest, None);
        assert_eq!(release.assets[0].size, Some(3));
    }

    #[test]
    fn runner_downloads_example_parses() {
        let json = r#"[{"os":"linux","architecture":"x64",
            "download_url":"https://github.com/actions/runner/releases/download/v2.164.0/actions-runner-linux-x64-2.164.0.tar.gz",
            "filename":"actions-runner-linux-x64-2.164.0.tar.gz"}]"#;
        let apps: Vec<RunnerApplication> = serde_json::from_str(json).unwrap();
        assert_eq!(apps[0].architecture, "x64");
        assert_eq!(apps[0].sha256_checksum, None);
    }
}
