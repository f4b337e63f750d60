//! GitHub's REST API: a small typed client, one method per endpoint the agent needs.
//!
//! [`Client`] speaks to `api.github.com`, a GHES `https://HOST/api/v3`, or the test emulator; it
//! sends the headers GitHub documents (`Accept: application/vnd.github+json`,
//! `X-GitHub-Api-Version: 2022-11-28`, a `User-Agent`) and turns every non-2xx answer into a
//! [`GithubError`] that carries GitHub's own `message` and says what to do: a `401` is
//! [`GithubError::BadCredentials`] naming the secret file, a `403` on a scope
//! [`GithubError::MissingPermission`] naming the classic scope or fine-grained permission, a `404`
//! [`GithubError::ScopeNotFound`] or [`GithubError::RunnerNotFound`], anything else
//! [`GithubError::Status`]. The DTOs never use `deny_unknown_fields`: GitHub adds fields.
//!
//! - `credentials`: [`Credentials`] (PAT, App, raw registration token), re-read on change.
//! - `transport`: retries (5xx, dropped connections, `Retry-After`), rate limits, ETags.
//! - `runners`: list (paginated, conditional), get, delete, labels, runner groups.
//! - `tokens`: registration and remove tokens, JIT configurations.

mod credentials;
mod errors;
mod runners;
mod tokens;
mod transport;

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use url::Url;

use crate::config::Scope;

pub use credentials::{Clock, Credentials};
pub use runners::{Cached, Label, LabelKind, Runner, RunnerGroup};
pub use tokens::{JitConfig, Token};
pub use transport::{ClientOptions, RateLimit};

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
    #[error("cannot decode the answer of `{url}`")]
    Json {
        url: Url,
        #[source]
        source: serde_json::Error,
    },
    #[error("`{url}` answered {status}: {message}\n\nhint: {hint}")]
    BadCredentials {
        url: String,
        status: u16,
        message: String,
        hint: String,
    },
    #[error("{}", errors::missing_permission(needed, scope, have.as_deref(), message))]
    MissingPermission {
        url: String,
        status: u16,
        /// What the credentials lack: `admin:org`, `Administration: write`, ...
        needed: String,
        /// The scope asked about (`octo/repo`, `org octo`, `enterprise acme`).
        scope: String,
        /// The classic PAT's scopes (`x-oauth-scopes`), when GitHub said them.
        have: Option<String>,
        message: String,
    },
    #[error("`{url}` answered 404: {message}\n\nhint: `{scope}` does not exist or these credentials cannot see it ({hint})")]
    ScopeNotFound {
        url: String,
        scope: String,
        message: String,
        hint: String,
    },
    #[error("`{url}` answered 404: {message}\n\nhint: runner {id} is not registered in `{scope}` (any more), or these credentials cannot see it")]
    RunnerNotFound {
        url: String,
        scope: String,
        id: u64,
        message: String,
    },
    #[error("a runner named `{name}` is already registered: {message}\n\nhint: another host may use the same runner name; give each host's runners unique names, or delete the old registration")]
    NameTaken {
        url: String,
        name: String,
        message: String,
    },
    #[error("GitHub's rate limit is exhausted until {reset_at}: {message}\n\nhint: the request can be retried after {reset_at}")]
    RateLimited {
        url: String,
        status: u16,
        reset_at: time::OffsetDateTime,
        message: String,
    },
    #[error("a raw registration token cannot call the REST API (`{what}`)\n\nhint: configure `pat_file` or `[github.app]` in the configuration so the agent can ask GitHub for tokens itself")]
    RegistrationTokenOnly { what: String },
    #[error("the registration token in `{path}` expired at {expired_at}\n\nhint: registration tokens live one hour: write a fresh one into `{path}`, or configure `pat_file` or `[github.app]` so the agent mints its own")]
    RegistrationTokenExpired {
        path: std::path::PathBuf,
        expired_at: time::OffsetDateTime,
    },
    #[error("enterprise runners need a classic PAT with `manage_runners:enterprise`\n\nhint: GitHub Apps and fine-grained tokens cannot manage enterprise runners; set `pat_file` to a classic token")]
    EnterpriseNeedsClassicPat { scope: String },
    #[error("cannot read the secret `{path}`")]
    Secret {
        path: std::path::PathBuf,
        #[source]
        source: Box<crate::config::ConfigError>,
    },
    #[error("cannot sign a GitHub App token with the private key `{path}`\n\nhint: the key must be the App's RSA private key in PEM form, as GitHub downloads it")]
    AppKey {
        path: std::path::PathBuf,
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    #[error("`{url}` gave up after {attempts} attempts in {elapsed:?}: {last}")]
    GaveUp {
        url: String,
        attempts: u32,
        elapsed: Duration,
        last: String,
    },
}

impl GithubError {
    /// The HTTP status GitHub answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            GithubError::Status { status, .. }
            | GithubError::BadCredentials { status, .. }
            | GithubError::MissingPermission { status, .. }
            | GithubError::RateLimited { status, .. } => Some(*status),
            GithubError::ScopeNotFound { .. } | GithubError::RunnerNotFound { .. } => Some(404),
            GithubError::NameTaken { .. } => Some(409),
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
    /// When it was published (the start of a `disable_update` runner's 30-day window).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub published_at: Option<time::OffsetDateTime>,
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
    credentials: Credentials,
    options: ClientOptions,
    etags: transport::EtagCache,
    rate: transport::RateState,
}

impl Client {
    /// A client for `api_url` (`https://api.github.com`, `https://HOST/api/v3`, …), authenticated
    /// with `credentials` ([`Credentials`], or `Option<String>`: a bearer token or none). Token
    /// values are registered for redaction.
    pub fn new(api_url: Url, credentials: impl Into<Credentials>) -> Result<Client, GithubError> {
        Client::with_options(api_url, credentials, ClientOptions::default())
    }

    /// [`Client::new`] with retry, rate-limit and clock settings.
    pub fn with_options(
        api_url: Url,
        credentials: impl Into<Credentials>,
        options: ClientOptions,
    ) -> Result<Client, GithubError> {
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            .build()
            .map_err(GithubError::Client)?;
        Ok(Client {
            http,
            api_url,
            credentials: credentials.into(),
            options,
            etags: transport::EtagCache::default(),
            rate: transport::RateState::default(),
        })
    }

    /// The credentials this client authenticates with.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The API base this client talks to.
    pub fn api_url(&self) -> &Url {
        &self.api_url
    }

    /// The newest release of `actions/runner`.
    pub async fn latest_release(&self) -> Result<Release, GithubError> {
        self.get_public(&format!("/repos/{RUNNER_REPO}/releases/latest"))
            .await
    }

    /// The newest releases of `actions/runner` (one page of 30), newest first.
    pub async fn releases(&self) -> Result<Vec<Release>, GithubError> {
        self.get_public(&format!("/repos/{RUNNER_REPO}/releases?per_page=30"))
            .await
    }

    /// The release of `actions/runner` tagged `tag` (`v2.336.0`).
    pub async fn release_by_tag(&self, tag: &str) -> Result<Release, GithubError> {
        self.get_public(&format!("/repos/{RUNNER_REPO}/releases/tags/{tag}"))
            .await
    }

    /// The runner packages GitHub wants `scope` to run (needs auth with read access to runners).
    pub async fn runner_downloads(
        &self,
        scope: &Scope,
    ) -> Result<Vec<RunnerApplication>, GithubError> {
        self.scoped_json(
            reqwest::Method::GET,
            scope,
            transport::Access::Read,
            "/actions/runners/downloads",
            None,
        )
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

    /// A GET that needs no particular permission (public data); a raw registration token is not
    /// sent.
    async fn get_public<T: DeserializeOwned>(&self, path: &str) -> Result<T, GithubError> {
        let url = self.endpoint(path)?;
        let reply = self
            .call(
                reqwest::Method::GET,
                url,
                None,
                None,
                transport::Purpose::Public,
            )
            .await?;
        reply.json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_keeps_the_ghes_prefix() {
        let client = Client::new(
            Url::parse("http://127.0.0.1:9/api/v3/").unwrap(),
            None::<String>,
        )
        .unwrap();
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
