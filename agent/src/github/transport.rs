//! Sending one REST request: authentication, retries with backoff, rate limits, conditional
//! requests, and turning GitHub's error answers into [`GithubError`]s that say what to fix.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use url::Url;

use super::credentials::{Clock, Credentials, InstallationToken, TokenFlavor};
use super::{Client, ErrorBody, GithubError, API_VERSION};
use crate::config::Scope;

/// Retry, rate-limit and clock settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Attempts per request, the first included (5xx, connection errors, rate limits).
    pub max_attempts: u32,
    /// Give up retrying once this much time has passed since the first attempt.
    pub max_retry_time: Duration,
    /// First backoff delay; doubled each attempt (with jitter), capped at 30 s.
    pub backoff: Duration,
    /// Longest wait for a rate limit to reset; a longer one returns
    /// [`GithubError::RateLimited`] so the caller can schedule the retry.
    pub max_rate_limit_wait: Duration,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// The clock for token expiry, JWTs and rate-limit resets.
    pub clock: Clock,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            max_attempts: 5,
            max_retry_time: Duration::from_secs(120),
            backoff: Duration::from_millis(500),
            max_rate_limit_wait: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            clock: Clock::system(),
        }
    }
}

/// The permission level an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
}

/// Why a request is made, which decides its credentials and how a `404` reads.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Purpose<'a> {
    /// Public data: a raw registration token is not sent.
    Public,
    /// Minting an App installation token, with the App's JWT.
    AppJwt,
    /// A scope's runners.
    Scoped { scope: &'a Scope, access: Access },
}

/// ETags and first pages of conditional GETs, per URL.
#[derive(Debug, Clone, Default)]
pub(crate) struct EtagCache(Arc<Mutex<HashMap<String, String>>>);

impl EtagCache {
    pub(crate) fn get(&self, url: &Url) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(url.as_str())
            .cloned()
    }

    pub(crate) fn remove(&self, url: &Url) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(url.as_str());
    }

    pub(crate) fn put(&self, url: &Url, etag: String) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(url.as_str().to_owned(), etag);
    }
}

/// A successful (2xx or 304) answer.
#[derive(Debug)]
pub(crate) struct Reply {
    pub url: Url,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub(crate) fn json<T: DeserializeOwned>(&self) -> Result<T, GithubError> {
        serde_json::from_slice(&self.body).map_err(|source| GithubError::Json {
            url: self.url.clone(),
            source,
        })
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// An answer that is not a success, before it is turned into an error.
struct Failure {
    status: StatusCode,
    headers: HeaderMap,
    message: String,
}

impl Failure {
    /// When a rate limit says to retry, if this is one.
    fn rate_limit(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        if !matches!(self.status.as_u16(), 403 | 429) {
            return None;
        }
        if let Some(secs) = header(&self.headers, "retry-after").and_then(|v| v.parse::<i64>().ok())
        {
            return Some(now + time::Duration::seconds(secs.max(0)));
        }
        if header(&self.headers, "x-ratelimit-remaining") == Some("0") {
            let reset = header(&self.headers, "x-ratelimit-reset")
                .and_then(|v| v.parse::<i64>().ok())
                .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok());
            // `x-ratelimit-reset` is in whole seconds: retry one second after it.
            return Some(reset.map_or(now + time::Duration::minutes(1), |r| {
                r + time::Duration::seconds(1)
            }));
        }
        if self
            .message
            .to_ascii_lowercase()
            .contains("secondary rate limit")
        {
            return Some(now + time::Duration::minutes(1));
        }
        None
    }
}

/// Exponential backoff with jitter: `base * 2^(attempt-1)`, capped at 30 s, times 0.5..1.0.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let capped = exp.min(Duration::from_secs(30));
    let jitter: f64 = rand::random_range(0.5..1.0);
    capped.mul_f64(jitter)
}

fn retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// `octo/repo`, `org octo`, `enterprise acme`.
pub(crate) fn scope_name(scope: &Scope) -> String {
    match scope {
        Scope::Repo { owner, repo } => format!("{owner}/{repo}"),
        Scope::Org { org } => format!("org {org}"),
        Scope::Enterprise { slug } => format!("enterprise {slug}"),
    }
}

/// What credentials of `flavor` need for `access` on `scope` (actions-runner.md §6).
pub(crate) fn needed_permission(flavor: TokenFlavor, scope: &Scope, access: Access) -> String {
    let level = match access {
        Access::Read => "read",
        Access::Write => "write",
    };
    match (flavor, scope) {
        (TokenFlavor::Classic | TokenFlavor::None, Scope::Repo { .. }) => {
            "the `repo` scope and admin rights on the repository".to_owned()
        }
        (TokenFlavor::Classic | TokenFlavor::None, Scope::Org { .. }) => {
            "the `admin:org` scope and owner rights on the organization".to_owned()
        }
        (TokenFlavor::Classic | TokenFlavor::None, Scope::Enterprise { .. }) => {
            "the `manage_runners:enterprise` scope and enterprise owner rights".to_owned()
        }
        (_, Scope::Enterprise { .. }) => {
            "a classic PAT with `manage_runners:enterprise`".to_owned()
        }
        (TokenFlavor::FineGrained | TokenFlavor::App, Scope::Repo { .. }) => {
            format!("the repository permission \"Administration: {level}\"")
        }
        (TokenFlavor::FineGrained | TokenFlavor::App, Scope::Org { .. }) => {
            format!("the organization permission \"Self-hosted runners: {level}\"")
        }
    }
}

/// Seconds (rounded up) until `at`, as a `Duration`; zero if past.
fn until(now: OffsetDateTime, at: OffsetDateTime) -> Duration {
    let diff = at - now;
    if diff.is_negative() {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(diff.as_seconds_f64())
    }
}

impl Client {
    /// The `Authorization` value for `purpose`, minting an App installation token if needed.
    async fn authorization(&self, purpose: Purpose<'_>) -> Result<Option<String>, GithubError> {
        match (&self.credentials, purpose) {
            (_, Purpose::AppJwt) => match &self.credentials {
                Credentials::App(app) => Ok(Some(app.jwt(self.options.clock.now())?)),
                _ => Ok(None),
            },
            (Credentials::Anonymous, _) => Ok(None),
            (Credentials::Pat(secret), _) => Ok(Some(secret.value()?)),
            (Credentials::RegistrationToken(_), Purpose::Public) => Ok(None),
            (Credentials::RegistrationToken(_), Purpose::Scoped { .. }) => {
                Err(GithubError::RegistrationTokenOnly {
                    what: "the runners REST API".to_owned(),
                })
            }
            (Credentials::App(_), _) => Ok(Some(self.installation_token().await?)),
        }
    }

    /// The cached installation token, minted again when it expires within five minutes.
    pub(crate) async fn installation_token(&self) -> Result<String, GithubError> {
        let Credentials::App(app) = &self.credentials else {
            return Err(GithubError::RegistrationTokenOnly {
                what: "an App installation token".to_owned(),
            });
        };
        let mut cached = app.token.lock().await;
        let now = self.options.clock.now();
        if let Some(token) = cached.as_ref() {
            if token.expires_at - super::credentials::INSTALLATION_REFRESH_MARGIN > now {
                return Ok(token.token.clone());
            }
        }
        let url = self.endpoint(&format!(
            "/app/installations/{}/access_tokens",
            app.installation_id
        ))?;
        log::debug!(
            "minting an installation token for App {} installation {}",
            app.app_id,
            app.installation_id
        );
        let reply = Box::pin(self.call(
            Method::POST,
            url,
            Some(serde_json::json!({})),
            None,
            Purpose::AppJwt,
        ))
        .await?;
        let minted: super::tokens::Token = reply.json()?;
        let token = minted.token.clone();
        *cached = Some(InstallationToken {
            token: minted.token,
            expires_at: minted.expires_at,
        });
        Ok(token)
    }

    /// One request with retries. `if_none_match` makes it conditional: a `304` is returned as a
    /// reply. An installation token GitHub refuses is minted again once.
    pub(crate) async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<serde_json::Value>,
        if_none_match: Option<String>,
        purpose: Purpose<'_>,
    ) -> Result<Reply, GithubError> {
        if let (Purpose::Scoped { scope, .. }, Ok(TokenFlavor::FineGrained | TokenFlavor::App)) =
            (purpose, self.credentials.flavor())
        {
            if let Scope::Enterprise { .. } = scope {
                return Err(GithubError::EnterpriseNeedsClassicPat {
                    scope: scope_name(scope),
                });
            }
        }
        let mut refreshed = false;
        loop {
            let auth = self.authorization(purpose).await?;
            match self
                .call_once(&method, &url, body.as_ref(), if_none_match.as_deref(), auth)
                .await?
            {
                Ok(reply) => return Ok(reply),
                Err(failure) => {
                    if failure.status == StatusCode::UNAUTHORIZED
                        && !refreshed
                        && matches!(purpose, Purpose::Scoped { .. } | Purpose::Public)
                    {
                        if let Credentials::App(app) = &self.credentials {
                            log::info!("GitHub refused the installation token; minting a new one");
                            *app.token.lock().await = None;
                            refreshed = true;
                            continue;
                        }
                    }
                    return Err(self.classify(url, failure, purpose));
                }
            }
        }
    }

    /// One request, retried on 5xx, connection errors and rate limits within the bounds.
    async fn call_once(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&serde_json::Value>,
        if_none_match: Option<&str>,
        auth: Option<String>,
    ) -> Result<Result<Reply, Failure>, GithubError> {
        let started = tokio::time::Instant::now();
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .header(reqwest::header::ACCEPT, "application/vnd.github+json")
                .header("X-GitHub-Api-Version", API_VERSION);
            if let Some(token) = &auth {
                request = request.bearer_auth(token);
            }
            if let Some(etag) = if_none_match {
                if let Ok(value) = HeaderValue::from_str(etag) {
                    request = request.header(reqwest::header::IF_NONE_MATCH, value);
                }
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            log::debug!("{method} {url}");
            let outcome = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    match response.bytes().await {
                        Ok(body) => Ok((status, headers, body)),
                        Err(source) => Err(source),
                    }
                }
                Err(source) => Err(source),
            };
            let elapsed = started.elapsed();
            let may_retry = attempt < self.options.max_attempts;
            let (status, headers, body) = match outcome {
                Ok(parts) => parts,
                Err(source) => {
                    let wait = backoff(self.options.backoff, attempt);
                    if may_retry && elapsed + wait <= self.options.max_retry_time {
                        log::warn!("{method} {url} failed ({source}); retrying in {wait:?}");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    return Err(GithubError::Request {
                        url: url.clone(),
                        source,
                    });
                }
            };
            if status.is_success() || status == StatusCode::NOT_MODIFIED {
                return Ok(Ok(Reply {
                    url: url.clone(),
                    status,
                    headers,
                    body,
                }));
            }
            let text = String::from_utf8_lossy(&body);
            let message = match serde_json::from_str::<ErrorBody>(&text) {
                Ok(body) => body.message,
                Err(_) => text.chars().take(200).collect(),
            };
            let failure = Failure {
                status,
                headers,
                message,
            };
            if retryable_status(status) {
                let wait = header(&failure.headers, "retry-after")
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_secs)
                    .unwrap_or_else(|| backoff(self.options.backoff, attempt));
                if may_retry && elapsed + wait <= self.options.max_retry_time {
                    log::warn!(
                        "{method} {url} answered {status}: {}; retrying in {wait:?}",
                        failure.message
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
                if attempt > 1 {
                    return Err(GithubError::GaveUp {
                        url: url.to_string(),
                        attempts: attempt,
                        elapsed,
                        last: format!("{status}: {}", failure.message),
                    });
                }
                return Ok(Err(failure));
            }
            let now = self.options.clock.now();
            if let Some(reset_at) = failure.rate_limit(now) {
                let wait = until(now, reset_at);
                if may_retry && wait <= self.options.max_rate_limit_wait {
                    log::warn!(
                        "{method} {url}: rate limited ({}); waiting {wait:?}",
                        failure.message
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
                return Err(GithubError::RateLimited {
                    url: url.to_string(),
                    status: status.as_u16(),
                    reset_at,
                    message: failure.message,
                });
            }
            return Ok(Err(failure));
        }
    }

    /// The error a failed answer means for `purpose`.
    fn classify(&self, url: Url, failure: Failure, purpose: Purpose<'_>) -> GithubError {
        let url_text = url.to_string();
        let status = failure.status.as_u16();
        let message = failure.message;
        match (status, purpose) {
            (401, _) => GithubError::BadCredentials {
                url: url_text,
                status,
                message,
                hint: self.credentials.bad_credentials_hint(),
            },
            (403, Purpose::Scoped { scope, access }) => {
                let flavor = self.credentials.flavor().unwrap_or(TokenFlavor::None);
                // A token with `x-oauth-scopes` is a classic PAT whatever its prefix.
                let have = header(&failure.headers, "x-oauth-scopes").map(str::to_owned);
                let flavor = if have.is_some() {
                    TokenFlavor::Classic
                } else {
                    flavor
                };
                GithubError::MissingPermission {
                    url: url_text,
                    status,
                    needed: needed_permission(flavor, scope, access),
                    scope: scope_name(scope),
                    have,
                    message,
                }
            }
            (404, Purpose::Scoped { scope, .. }) => {
                let flavor = self.credentials.flavor().unwrap_or(TokenFlavor::None);
                let hint = match (flavor, scope) {
                    (TokenFlavor::Classic, Scope::Repo { .. }) => {
                        "a classic PAT needs the `repo` scope to see a private repository"
                    }
                    (TokenFlavor::Classic, _) => "the token's user must be an owner",
                    (TokenFlavor::FineGrained, _) => {
                        "a fine-grained PAT must be granted access to it, and its resource owner must be the scope's owner"
                    }
                    (TokenFlavor::App, _) => "the App must be installed on its owner, with access to it",
                    (TokenFlavor::None, _) => "it may be private: configure credentials",
                };
                GithubError::ScopeNotFound {
                    url: url_text,
                    scope: scope_name(scope),
                    message,
                    hint: hint.to_owned(),
                }
            }
            _ => GithubError::Status {
                url,
                status,
                message,
            },
        }
    }

    /// A request on `scope`'s runners: `path` follows the scope's prefix.
    pub(crate) async fn scoped(
        &self,
        method: Method,
        scope: &Scope,
        access: Access,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Reply, GithubError> {
        let url = self.endpoint(&format!("{}{path}", scope.api_prefix()))?;
        self.call(method, url, body, None, Purpose::Scoped { scope, access })
            .await
    }

    /// [`Client::scoped`], decoding the JSON answer.
    pub(crate) async fn scoped_json<T: DeserializeOwned>(
        &self,
        method: Method,
        scope: &Scope,
        access: Access,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, GithubError> {
        self.scoped(method, scope, access, path, body).await?.json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        assert!(backoff(base, 1) <= Duration::from_millis(100));
        assert!(backoff(base, 1) >= Duration::from_millis(50));
        assert!(backoff(base, 4) >= Duration::from_millis(400));
        assert!(backoff(base, 30) <= Duration::from_secs(30));
    }

    #[test]
    fn permissions_are_named_per_token_kind_and_scope() {
        let repo = Scope::Repo {
            owner: "o".into(),
            repo: "r".into(),
        };
        let org = Scope::Org { org: "o".into() };
        assert!(needed_permission(TokenFlavor::Classic, &org, Access::Write).contains("admin:org"));
        assert!(needed_permission(TokenFlavor::Classic, &repo, Access::Write).contains("`repo`"));
        assert_eq!(
            needed_permission(TokenFlavor::FineGrained, &repo, Access::Write),
            "the repository permission \"Administration: write\""
        );
        assert_eq!(
            needed_permission(TokenFlavor::App, &org, Access::Write),
            "the organization permission \"Self-hosted runners: write\""
        );
    }
}
