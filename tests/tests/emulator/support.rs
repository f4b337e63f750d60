//! Helpers shared by the emulator tests: a started emulator, a reqwest client, and a minimal
//! runner-side client speaking `tests/PROTOCOL.md`.

#![allow(dead_code)]

use std::time::Duration;

use reqwest::{Method, StatusCode};
use runner_agent_tests::emulator::{Emulator, EmulatorOptions, PatSpec};
use serde_json::{json, Value};

pub async fn start() -> Emulator {
    start_with(EmulatorOptions {
        long_poll: Duration::from_secs(1),
        ..EmulatorOptions::default()
    })
    .await
}

pub async fn start_with(options: EmulatorOptions) -> Emulator {
    Emulator::start(options).await.expect("emulator starts")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header").to_string())
    }
}

/// One REST call: `path` is relative to the API URL (`/repos/o/r/...`).
pub async fn api(
    emu: &Emulator,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let url = if path.starts_with("http") {
        path.to_string()
    } else {
        format!("{}{path}", emu.api_url())
    };
    let mut req = client()
        .request(method, url)
        .header("accept", "application/vnd.github+json")
        .header("x-github-api-version", "2022-11-28");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    send(req).await
}

pub async fn send(req: reqwest::RequestBuilder) -> Reply {
    let resp = req.send().await.expect("request is answered");
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
        text,
    }
}

/// A scope plus an admin classic PAT for it.
pub fn repo_with_pat(emu: &Emulator, name: &str) -> String {
    emu.create_repo(name, true).expect("repo");
    emu.add_pat(PatSpec::classic(&["repo"]))
}

pub fn assert_github_error(reply: &Reply, status: u16, message: &str) {
    assert_eq!(reply.status.as_u16(), status, "body: {}", reply.text);
    assert_eq!(reply.body["message"], message, "body: {}", reply.text);
    assert_eq!(reply.body["status"], status.to_string());
    assert!(
        reply.body["documentation_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://docs.github.com/")),
        "documentation_url in {}",
        reply.text
    );
}

/// A minimal runner-side client, doing what `config.sh` and `Runner.Listener` do.
pub struct Listener {
    pub base: String,
    pub tenant: String,
    pub id: u64,
    pub client_id: String,
    pub public_key: String,
    pub access: String,
    pub session: String,
    pub pool: u64,
}

pub async fn exchange(emu: &Emulator, token: &str, scope: &str, event: &str) -> Reply {
    send(
        client()
            .post(format!("{}/actions/runner-registration", emu.api_url()))
            .header("authorization", format!("RemoteAuth {token}"))
            .json(&json!({"url": emu.web_url_for(scope), "runner_event": event})),
    )
    .await
}

pub async fn service(
    emu: &Emulator,
    method: Method,
    path: &str,
    bearer: &str,
    body: Option<Value>,
) -> Reply {
    let mut req = client()
        .request(
            method,
            format!("{}/_services/pipelines/_apis/{path}", emu.url()),
        )
        .bearer_auth(bearer);
    if let Some(b) = body {
        req = req.json(&b);
    }
    send(req).await
}

pub async fn oauth(emu: &Emulator, client_id: &str, secret: &str) -> Reply {
    send(
        client()
            .post(format!(
                "{}/_services/pipelines/_apis/oauth2/token",
                emu.url()
            ))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("grant_type", "client_credentials")
                    .append_pair("client_id", client_id)
                    .append_pair("client_secret", secret)
                    .finish(),
            ),
    )
    .await
}

pub struct RegisterOpts<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub labels: &'a [&'a str],
    pub ephemeral: bool,
    pub disable_update: bool,
    pub replace: bool,
}

impl Default for RegisterOpts<'_> {
    fn default() -> Self {
        RegisterOpts {
            name: "runner-1",
            version: "2.336.0",
            labels: &[],
            ephemeral: false,
            disable_update: false,
            replace: false,
        }
    }
}

/// Registers a runner (token exchange, pool, register) and opens a session.
pub async fn register(emu: &Emulator, scope: &str, opts: RegisterOpts<'_>) -> Listener {
    let token = emu.registration_token(scope).expect("registration token");
    let ex = exchange(emu, &token, scope, "register").await;
    assert_eq!(ex.status, 200, "{}", ex.text);
    let tenant = ex.body["token"].as_str().expect("tenant token").to_string();
    let pools = service(
        emu,
        Method::GET,
        "distributedtask/pools?poolName=Default",
        &tenant,
        None,
    )
    .await;
    assert_eq!(pools.status, 200, "{}", pools.text);
    let pool = pools.body["value"][0]["id"].as_u64().expect("pool id");
    let mut labels = vec![
        json!({"name": "self-hosted", "type": "system"}),
        json!({"name": "Linux", "type": "system"}),
        json!({"name": "X64", "type": "system"}),
    ];
    labels.extend(
        opts.labels
            .iter()
            .map(|l| json!({"name": l, "type": "user"})),
    );
    let public_key = format!("pk-{}", opts.name);
    let reg = service(
        emu,
        Method::POST,
        &format!("distributedtask/pools/{pool}/agents"),
        &tenant,
        Some(json!({
            "name": opts.name, "version": opts.version, "labels": labels,
            "ephemeral": opts.ephemeral, "disableUpdate": opts.disable_update,
            "replace": opts.replace, "publicKey": public_key,
        })),
    )
    .await;
    assert_eq!(reg.status, 200, "{}", reg.text);
    let id = reg.body["id"].as_u64().expect("agent id");
    let client_id = reg.body["authorization"]["clientId"]
        .as_str()
        .expect("client id")
        .to_string();
    let tok = oauth(emu, &client_id, &public_key).await;
    assert_eq!(tok.status, 200, "{}", tok.text);
    let access = tok.body["access_token"]
        .as_str()
        .expect("access token")
        .to_string();
    let mut l = Listener {
        base: emu.url(),
        tenant,
        id,
        client_id,
        public_key,
        access,
        session: String::new(),
        pool,
    };
    let s = l.create_session(emu).await;
    assert_eq!(s.status, 200, "{}", s.text);
    l.session = s.body["sessionId"]
        .as_str()
        .expect("session id")
        .to_string();
    l
}

impl Listener {
    pub async fn create_session(&self, emu: &Emulator) -> Reply {
        service(
            emu,
            Method::POST,
            &format!("distributedtask/pools/{}/sessions", self.pool),
            &self.access,
            Some(json!({"ownerName": "test", "agent": {"id": self.id, "name": "x", "version": "2.336.0"}})),
        )
        .await
    }

    /// Polls and, like the real listener, acknowledges a message at once.
    pub async fn poll_with(&self, emu: &Emulator, version: &str, disable_update: bool) -> Reply {
        let reply = self.poll_no_ack(emu, version, disable_update).await;
        if reply.status == 200 {
            let id = reply.body["messageId"].as_u64().expect("messageId");
            let ack = service(
                emu,
                Method::DELETE,
                &format!(
                    "distributedtask/pools/{}/messages/{id}?sessionId={}",
                    self.pool, self.session
                ),
                &self.access,
                None,
            )
            .await;
            assert_eq!(ack.status, 204, "{}", ack.text);
        }
        reply
    }

    pub async fn poll_no_ack(&self, emu: &Emulator, version: &str, disable_update: bool) -> Reply {
        service(
            emu,
            Method::GET,
            &format!(
                "distributedtask/pools/{}/messages?sessionId={}&status=Online&runnerVersion={version}&disableUpdate={disable_update}",
                self.pool, self.session
            ),
            &self.access,
            None,
        )
        .await
    }

    pub async fn poll(&self, emu: &Emulator) -> Reply {
        self.poll_with(emu, "2.336.0", false).await
    }

    pub async fn complete(
        &self,
        emu: &Emulator,
        job_id: u64,
        request_id: u64,
        result: &str,
        exit_code: i64,
        output: &str,
    ) -> Reply {
        service(
            emu,
            Method::POST,
            &format!("distributedtask/jobs/{job_id}/complete"),
            &self.access,
            Some(json!({"requestId": request_id, "result": result, "exitCode": exit_code, "output": output})),
        )
        .await
    }
}

/// The message body of a `200` poll.
pub fn message_body(reply: &Reply) -> (String, Value) {
    assert_eq!(reply.status, 200, "{}", reply.text);
    let kind = reply.body["messageType"]
        .as_str()
        .expect("messageType")
        .to_string();
    let body: Value =
        serde_json::from_str(reply.body["body"].as_str().expect("body text")).expect("body json");
    (kind, body)
}
