//! HTTP calls to the GitHub side: the token exchange on the API host and the runner service
//! ("tenant") of tests/PROTOCOL.md.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::ListenerError;

/// A non-success HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpFailure {
    pub method: String,
    pub url: String,
    pub status: u16,
    pub body: Value,
}

impl HttpFailure {
    pub fn type_key(&self) -> &str {
        self.body
            .get("typeKey")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    pub fn message(&self) -> &str {
        self.body
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// The server's message, else the HTTP line.
    pub fn describe(&self) -> String {
        if self.message().is_empty() {
            self.http_line()
        } else {
            self.message().to_string()
        }
    }

    /// The line the real runner prints for an HTTP failure without a typed error:
    /// `Http response code: NotFound from 'POST https://…'`.
    pub fn http_line(&self) -> String {
        format!(
            "Http response code: {} from '{} {}'",
            status_name(self.status),
            self.method,
            self.url
        )
    }
}

/// .NET `HttpStatusCode` names for the statuses the emulator uses.
pub fn status_name(status: u16) -> String {
    match status {
        400 => "BadRequest".into(),
        401 => "Unauthorized".into(),
        403 => "Forbidden".into(),
        404 => "NotFound".into(),
        409 => "Conflict".into(),
        422 => "UnprocessableEntity".into(),
        429 => "TooManyRequests".into(),
        500 => "InternalServerError".into(),
        502 => "BadGateway".into(),
        503 => "ServiceUnavailable".into(),
        504 => "GatewayTimeout".into(),
        other => other.to_string(),
    }
}

/// The API base the real runner derives from `--url`: `https://api.github.com` for
/// github.com, `{scheme}://{host}/api/v3` for a GitHub Enterprise Server.
pub fn api_base(github_url: &url::Url) -> String {
    let host = github_url
        .host_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if host == "github.com" || host == "www.github.com" {
        return "https://api.github.com".to_string();
    }
    if host.ends_with(".ghe.com") {
        return format!("{}://api.{host}", github_url.scheme());
    }
    let port = github_url
        .port()
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    format!("{}://{host}{port}/api/v3", github_url.scheme())
}

#[derive(Debug, Clone, Deserialize)]
pub struct TenantToken {
    pub url: String,
    pub token: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub is_hosted: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    pub client_id: String,
    pub authorization_url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    pub id: u64,
    pub name: String,
    pub authorization: Authorization,
}

/// A message from the long poll.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub message_id: Value,
    pub message_type: String,
    #[serde(default)]
    pub body: String,
}

/// The outcome of one HTTP call: transport failures and HTTP failures are kept apart so the
/// listener can apply the real retry rules.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("error sending request for url ({url}): {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{}", .0.describe())]
    Http(HttpFailure),
}

impl From<CallError> for ListenerError {
    fn from(e: CallError) -> ListenerError {
        ListenerError::Service {
            message: e.to_string(),
        }
    }
}

/// A thin client; every call names its URL in errors.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
}

impl Client {
    pub fn new() -> Result<Client, ListenerError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!(
                "GitHubActionsRunner-fake/",
                env!("CARGO_PKG_VERSION")
            ))
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|source| ListenerError::Service {
                message: format!("cannot build an http client: {source}"),
            })?;
        Ok(Client { http })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<(u16, Value), CallError> {
        let response =
            request
                .timeout(timeout)
                .send()
                .await
                .map_err(|source| CallError::Transport {
                    url: url.to_string(),
                    source,
                })?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|source| CallError::Transport {
                url: url.to_string(),
                source,
            })?;
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if (200..300).contains(&status) {
            Ok((status, body))
        } else {
            Err(CallError::Http(HttpFailure {
                method: method.to_string(),
                url: url.to_string(),
                status,
                body,
            }))
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(url: &str, body: Value) -> Result<T, CallError> {
        serde_json::from_value(body.clone()).map_err(|e| {
            CallError::Http(HttpFailure {
                method: "GET".into(),
                url: url.to_string(),
                status: 200,
                body: json!({"message": format!("unexpected answer from {url}: {e}")}),
            })
        })
    }

    /// `POST {api}/actions/runner-registration` with `RemoteAuth <token>`.
    pub async fn exchange_token(
        &self,
        api: &str,
        token: &str,
        github_url: &str,
        event: &str,
    ) -> Result<TenantToken, CallError> {
        let url = format!("{api}/actions/runner-registration");
        let req = self
            .http
            .post(&url)
            .header("Authorization", format!("RemoteAuth {token}"))
            .json(&json!({"url": github_url, "runner_event": event}));
        let (_, body) = self
            .send(reqwest::Method::POST, &url, req, Duration::from_secs(100))
            .await?;
        Self::decode(&url, body)
    }

    /// A registration or remove token from the REST API with a PAT (HTTP Basic `github:<PAT>`).
    pub async fn token_from_pat(
        &self,
        api: &str,
        scope_path: &str,
        pat: &str,
        kind: &str,
    ) -> Result<String, CallError> {
        use base64::Engine as _;
        let url = format!("{api}/{scope_path}/actions/runners/{kind}");
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("github:{pat}"));
        let req = self
            .http
            .post(&url)
            .header("Authorization", format!("Basic {basic}"))
            .header("Accept", "application/vnd.github.v3+json");
        let (_, body) = self
            .send(reqwest::Method::POST, &url, req, Duration::from_secs(100))
            .await?;
        Ok(body
            .get("token")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string())
    }

    /// `GET {api}/user` with a PAT: the reachability check of `--check`.
    pub async fn check_user(&self, api: &str, pat: &str) -> Result<(), CallError> {
        let url = format!("{api}/user");
        let req = self
            .http
            .get(&url)
            .header("Authorization", format!("token {pat}"))
            .header("Accept", "application/vnd.github+json");
        self.send(reqwest::Method::GET, &url, req, Duration::from_secs(100))
            .await
            .map(|_| ())
    }

    pub async fn pools(&self, tenant: &str, token: &str) -> Result<Vec<Pool>, CallError> {
        let url = format!("{tenant}_apis/distributedtask/pools");
        let req = self.http.get(&url).bearer_auth(token);
        let (_, body) = self
            .send(reqwest::Method::GET, &url, req, Duration::from_secs(100))
            .await?;
        let value = body.get("value").cloned().unwrap_or(Value::Array(vec![]));
        Self::decode(&url, value)
    }

    pub async fn register(
        &self,
        tenant: &str,
        token: &str,
        pool_id: u64,
        body: &Value,
    ) -> Result<Agent, CallError> {
        let url = format!("{tenant}_apis/distributedtask/pools/{pool_id}/agents");
        let req = self.http.post(&url).bearer_auth(token).json(body);
        let (_, body) = self
            .send(reqwest::Method::POST, &url, req, Duration::from_secs(100))
            .await?;
        Self::decode(&url, body)
    }

    pub async fn delete_agent(
        &self,
        tenant: &str,
        token: &str,
        pool_id: u64,
        agent_id: u64,
    ) -> Result<(), CallError> {
        let url = format!("{tenant}_apis/distributedtask/pools/{pool_id}/agents/{agent_id}");
        let req = self.http.delete(&url).bearer_auth(token);
        self.send(reqwest::Method::DELETE, &url, req, Duration::from_secs(100))
            .await
            .map(|_| ())
    }

    /// The OAuth client-credentials exchange; the answer's `access_token`.
    pub async fn access_token(
        &self,
        authorization_url: &str,
        client_id: &str,
        secret: &str,
    ) -> Result<String, CallError> {
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", client_id)
            .append_pair("client_secret", secret)
            .finish();
        let req = self
            .http
            .post(authorization_url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form);
        let (_, body) = self
            .send(
                reqwest::Method::POST,
                authorization_url,
                req,
                Duration::from_secs(100),
            )
            .await?;
        Ok(body
            .get("access_token")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string())
    }

    pub async fn create_session(
        &self,
        tenant: &str,
        token: &str,
        pool_id: u64,
        body: &Value,
    ) -> Result<String, CallError> {
        let url = format!("{tenant}_apis/distributedtask/pools/{pool_id}/sessions");
        let req = self.http.post(&url).bearer_auth(token).json(body);
        let (_, body) = self
            .send(reqwest::Method::POST, &url, req, Duration::from_secs(100))
            .await?;
        Ok(body
            .get("sessionId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string())
    }

    pub async fn delete_session(
        &self,
        tenant: &str,
        token: &str,
        pool_id: u64,
        session: &str,
    ) -> Result<(), CallError> {
        let url = format!("{tenant}_apis/distributedtask/pools/{pool_id}/sessions/{session}");
        let req = self.http.delete(&url).bearer_auth(token);
        self.send(reqwest::Method::DELETE, &url, req, Duration::from_secs(10))
            .await
            .map(|_| ())
    }

    /// One long poll: `Ok(None)` on `202`.
    pub async fn get_message(
        &self,
        tenant: &str,
        token: &str,
        pool_id: u64,
        query: &[(&str, String)],
    ) -> Result<Option<Message>, CallError> {
        let url = format!("{tenant}_apis/distributedtask/pools/{pool_id}/messages");
        let req = self.http.get(&url).bearer_auth(token).query(query);
        let (status, body) = self
            .send(reqwest::Method::GET, &url, req, Duration::from_secs(120))
            .await?;
        if status == 202 || body.is_null() {
            return Ok(None);
        }
        Self::decode(&url, body).map(Some)
    }

    pub async fn ack_message(
        &self,
        tenant: &str,
        token: &str,
        pool_id: u64,
        message_id: &Value,
        session: &str,
    ) -> Result<(), CallError> {
        let id = match message_id {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let url = format!("{tenant}_apis/distributedtask/pools/{pool_id}/messages/{id}");
        let req = self
            .http
            .delete(&url)
            .bearer_auth(token)
            .query(&[("sessionId", session)]);
        self.send(reqwest::Method::DELETE, &url, req, Duration::from_secs(30))
            .await
            .map(|_| ())
    }

    pub async fn complete_job(
        &self,
        tenant: &str,
        token: &str,
        job_id: &str,
        body: &Value,
    ) -> Result<(), CallError> {
        let url = format!("{tenant}_apis/distributedtask/jobs/{job_id}/complete");
        let req = self.http.post(&url).bearer_auth(token).json(body);
        self.send(reqwest::Method::POST, &url, req, Duration::from_secs(100))
            .await
            .map(|_| ())
    }

    /// Downloads `url` to `dest`, following redirects, and returns the SHA-256 (lowercase hex).
    pub async fn download(
        &self,
        url: &str,
        dest: &std::path::Path,
    ) -> Result<String, ListenerError> {
        use sha2::Digest as _;
        use tokio::io::AsyncWriteExt as _;
        let fail = |message: String| ListenerError::Service { message };
        let timeout = std::env::var("GITHUB_ACTIONS_RUNNER_DOWNLOAD_TIMEOUT")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(15 * 60);
        let mut response = self
            .http
            .get(url)
            .timeout(Duration::from_secs(timeout))
            .send()
            .await
            .map_err(|e| fail(format!("failed to download {url}: {e}")))?;
        if !response.status().is_success() {
            return Err(fail(format!(
                "Http response code: {} from 'GET {url}'",
                status_name(response.status().as_u16())
            )));
        }
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(|source| ListenerError::Io {
                path: dest.to_path_buf(),
                source,
            })?;
        let mut hasher = sha2::Sha256::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| fail(format!("failed to download {url}: {e}")))?
        {
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|source| ListenerError::Io {
                    path: dest.to_path_buf(),
                    source,
                })?;
        }
        file.flush().await.map_err(|source| ListenerError::Io {
            path: dest.to_path_buf(),
            source,
        })?;
        Ok(hex::encode(hasher.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_base_follows_the_host_kind() {
        let u = |s: &str| url::Url::parse(s).unwrap();
        assert_eq!(
            api_base(&u("https://github.com/o/r")),
            "https://api.github.com"
        );
        assert_eq!(
            api_base(&u("http://127.0.0.1:4321/o/r")),
            "http://127.0.0.1:4321/api/v3"
        );
        assert_eq!(
            api_base(&u("https://ghes.example/enterprises/e")),
            "https://ghes.example/api/v3"
        );
    }
}
