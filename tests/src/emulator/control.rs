//! The test control API under `/_emulator` (JSON in, JSON out, no auth): the same operations
//! as the methods of [`super::Control`], for bash scripts and demos.

// Handlers answer early with a ready `Response`; boxing it would only add noise.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::to_bytes;
use axum::extract::Request;
use axum::http::Method;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::http::json;
use super::state::{JobEntry, RunnerEntry};
use super::{
    runner_service, AssetSource, Control, EmulatorOptions, FaultRequest, InstallationSpec, JobView,
    PatSpec, ReleaseOptions, RunnerView, Shared,
};

pub(crate) fn job_view(j: &JobEntry) -> JobView {
    JobView {
        id: j.id,
        scope: j.scope.to_string(),
        labels: j.labels.clone(),
        status: j.status,
        runner_name: j.runner_name.clone(),
        runner_id: j.runner_id,
        result: j.result.clone(),
        exit_code: j.exit_code,
        output: j.output.clone(),
    }
}

pub(crate) fn runner_view(r: &RunnerEntry, now: OffsetDateTime, o: &EmulatorOptions) -> RunnerView {
    let online = runner_service::online(r, now, o);
    RunnerView {
        id: r.id,
        name: r.name.clone(),
        scope: r.scope.to_string(),
        runner_group_id: r.group_id,
        version: r.version.clone(),
        status: if online { "online" } else { "offline" }.to_string(),
        busy: r.busy_job.is_some(),
        ephemeral: r.ephemeral,
        disable_update: r.disable_update,
        labels: r.labels.iter().map(|l| l.name.clone()).collect(),
        session_open: r.session.is_some(),
    }
}

fn error(status: u16, message: impl std::fmt::Display) -> Response {
    json(status, &json!({"error": message.to_string()}))
}

#[derive(Deserialize)]
struct TokenBody {
    token: String,
}

#[derive(Deserialize)]
struct AppBody {
    public_key_pem: String,
    #[serde(default)]
    installations: Vec<InstallationSpec>,
}

#[derive(Deserialize)]
struct RepoBody {
    name: String,
    #[serde(default)]
    private: bool,
}

#[derive(Deserialize)]
struct GroupBody {
    name: String,
    #[serde(default)]
    allows_public_repositories: bool,
}

#[derive(Deserialize)]
struct OrgBody {
    name: String,
    #[serde(default)]
    runner_groups: Vec<GroupBody>,
}

#[derive(Deserialize)]
struct EnterpriseBody {
    #[serde(alias = "name")]
    slug: String,
}

#[derive(Deserialize)]
struct ScopeBody {
    scope: String,
}

#[derive(Deserialize)]
struct JobBody {
    scope: String,
    #[serde(default)]
    labels: Vec<String>,
    script: String,
}

#[derive(Deserialize)]
struct ReleaseHoldBody {
    #[serde(default)]
    how: super::HoldRelease,
}

#[derive(Deserialize)]
struct ClockBody {
    seconds: i64,
}

#[derive(Deserialize)]
struct ReleaseBody {
    version: String,
    assets: BTreeMap<String, String>,
    #[serde(default = "yes")]
    digest: bool,
    #[serde(default = "yes")]
    body_markers: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct VersionBody {
    #[serde(default)]
    expected: Option<String>,
    #[serde(default)]
    deprecated_below: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| error(400, format!("bad request body: {e}")))
}

pub(crate) async fn handle(shared: Arc<Shared>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let body = match to_bytes(req.into_body(), 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => return error(400, e),
    };
    let control = Control { shared };
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).skip(1).collect();
    match run(&control, method, &segs, &query, &body).await {
        Ok(r) | Err(r) => r,
    }
}

async fn run(
    c: &Control,
    method: Method,
    segs: &[&str],
    query: &BTreeMap<String, String>,
    body: &[u8],
) -> Result<Response, Response> {
    let ok = |v: Value| Ok(json(200, &v));
    match (method, segs) {
        (Method::GET, []) => {
            ok(json!({"url": c.url(), "api_url": c.api_url(), "now": c.now().unix_timestamp()}))
        }
        (Method::POST, ["tokens"]) => {
            let spec: PatSpec = parse(body)?;
            ok(json!({"token": c.add_pat(spec)}))
        }
        (Method::POST, ["tokens", "revoke"]) => {
            let b: TokenBody = parse(body)?;
            ok(json!({"revoked": c.revoke_token(&b.token)}))
        }
        (Method::POST, ["tokens", "rotate"]) => {
            let b: TokenBody = parse(body)?;
            match c.rotate_token(&b.token) {
                Some(t) => ok(json!({"token": t})),
                None => Err(error(404, "no such personal access token")),
            }
        }
        (Method::POST, ["registration-token"]) => {
            let b: ScopeBody = parse(body)?;
            let t = c.registration_token(&b.scope).map_err(|e| error(404, e))?;
            ok(json!({"token": t}))
        }
        (Method::POST, ["apps"]) => {
            let b: AppBody = parse(body)?;
            let id = c
                .add_app(&b.public_key_pem, b.installations)
                .map_err(|e| error(400, e))?;
            ok(json!({"app_id": id}))
        }
        (Method::POST, ["repos"]) => {
            let b: RepoBody = parse(body)?;
            c.create_repo(&b.name, b.private)
                .map_err(|e| error(422, e))?;
            ok(json!({"name": b.name, "private": b.private, "url": c.web_url_for(&b.name)}))
        }
        (Method::POST, ["orgs"]) => {
            let b: OrgBody = parse(body)?;
            c.create_org(&b.name).map_err(|e| error(422, e))?;
            let mut groups = Vec::new();
            for g in b.runner_groups {
                let id = c
                    .create_runner_group(&b.name, &g.name, g.allows_public_repositories)
                    .map_err(|e| error(422, e))?;
                groups.push(json!({"id": id, "name": g.name}));
            }
            ok(json!({"name": b.name, "url": c.web_url_for(&b.name), "runner_groups": groups}))
        }
        (Method::POST, ["enterprises"]) => {
            let b: EnterpriseBody = parse(body)?;
            c.create_enterprise(&b.slug).map_err(|e| error(422, e))?;
            let scope = format!("enterprises/{}", b.slug.trim_start_matches("enterprises/"));
            ok(json!({"slug": b.slug, "url": c.web_url_for(&scope)}))
        }
        (Method::POST, ["jobs"]) => {
            let b: JobBody = parse(body)?;
            let labels: Vec<&str> = b.labels.iter().map(String::as_str).collect();
            let id = c
                .queue_job(&b.scope, &labels, &b.script)
                .map_err(|e| error(422, e))?;
            ok(json!({"id": id}))
        }
        (Method::GET, ["jobs", id]) => {
            let id: u64 = id.parse().map_err(|_| error(404, "no such job"))?;
            let job = c.job(id).ok_or_else(|| error(404, "no such job"))?;
            ok(serde_json::to_value(job).unwrap_or(Value::Null))
        }
        (Method::GET, ["jobs", id, "wait"]) => {
            let id: u64 = id.parse().map_err(|_| error(404, "no such job"))?;
            let secs: u64 = query
                .get("timeout")
                .and_then(|t| t.parse().ok())
                .unwrap_or(60);
            let job = c
                .wait_job(id, Duration::from_secs(secs))
                .await
                .map_err(|e| error(408, e))?;
            ok(serde_json::to_value(job).unwrap_or(Value::Null))
        }
        (Method::POST, ["jobs", id, "cancel"]) => {
            let id: u64 = id.parse().map_err(|_| error(404, "no such job"))?;
            c.cancel_job(id).map_err(|e| error(404, e))?;
            ok(json!({"cancelled": id}))
        }
        (Method::GET, ["runners"]) => {
            let runners = c.runners(query.get("scope").map(String::as_str));
            ok(serde_json::to_value(runners).unwrap_or(Value::Null))
        }
        (Method::DELETE, ["runners", id]) => {
            let id: u64 = id.parse().map_err(|_| error(404, "no such runner"))?;
            if c.delete_runner(id) {
                ok(json!({"deleted": id}))
            } else {
                Err(error(404, "no such runner"))
            }
        }
        (Method::POST, ["clock", "advance"]) => {
            let b: ClockBody = parse(body)?;
            c.advance_clock(b.seconds);
            ok(json!({"now": c.now().unix_timestamp()}))
        }
        (Method::POST, ["faults"]) => {
            let b: FaultRequest = parse(body)?;
            let fault = b.into_fault().ok_or_else(|| {
                error(
                    400,
                    "a fault needs `status`, `latency_ms`, `drop_after_bytes`, `rate_limit` or `hold`",
                )
            })?;
            c.inject(fault);
            ok(json!({"armed": true}))
        }
        (Method::GET, ["holds"]) => ok(json!({"held": c.held()})),
        (Method::POST, ["holds", "release"]) => {
            let b: ReleaseHoldBody = parse(body)?;
            ok(json!({"released": c.release_held(b.how)}))
        }
        (Method::DELETE, ["faults"]) => {
            c.clear_faults();
            ok(json!({"cleared": true}))
        }
        (Method::POST, ["releases"]) => {
            let b: ReleaseBody = parse(body)?;
            let assets = b
                .assets
                .into_iter()
                .map(|(platform, path)| (platform, AssetSource::Path(path.into())))
                .collect();
            c.publish_release(
                &b.version,
                assets,
                ReleaseOptions {
                    digest: b.digest,
                    body_markers: b.body_markers,
                },
            )
            .await
            .map_err(|e| error(422, e))?;
            ok(json!({"version": b.version}))
        }
        (Method::POST, ["runner-version"]) => {
            let b: VersionBody = parse(body)?;
            if let Some(v) = &b.expected {
                c.set_expected_runner_version(b.scope.as_deref(), v);
            }
            if b.deprecated_below.is_some() {
                c.set_deprecated_below(b.deprecated_below.as_deref());
            }
            ok(json!({"expected": b.expected, "deprecated_below": b.deprecated_below}))
        }
        (Method::GET, ["requests"]) => {
            ok(serde_json::to_value(c.request_counts()).unwrap_or(Value::Null))
        }
        _ => Err(error(404, "unknown control endpoint")),
    }
}
