//! The runner side: token exchange, pools, registration, OAuth, sessions, the message long poll,
//! job completion and removal (see `tests/PROTOCOL.md`).

// Handlers answer early with a ready `Response`; boxing it would only add noise.
#![allow(clippy::result_large_err)]

use std::collections::VecDeque;

use axum::http::Method;
use axum::response::Response;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use time::{Duration, OffsetDateTime};

use super::auth::{self, Credential};
use super::http::{empty, json, ApiError, Ctx};
use super::state::{
    version_cmp, JobEntry, JobStatus, Label, LabelKind, Message, RunnerEntry, RunnerEvent, Scope,
    Session, State, TokenKind,
};
use super::{releases, rest, EmulatorError, EmulatorOptions};

/// An error of the runner service, shaped like Azure DevOps' `{message, typeKey}`.
fn service_error(status: u16, type_key: &str, message: &str) -> Response {
    json(
        status,
        &json!({
            "$id": "1",
            "innerException": null,
            "message": message,
            "typeName": format!("GitHub.DistributedTask.WebApi.{type_key}, GitHub.DistributedTask.WebApi"),
            "typeKey": type_key,
            "errorCode": 0,
            "eventId": 3000,
        }),
    )
}

fn unauthorized() -> Response {
    service_error(
        401,
        "VssUnauthorizedException",
        "VS30063: You are not authorized to access the runner service.",
    )
}

fn agent_not_found(id: u64) -> Response {
    service_error(
        404,
        "TaskAgentNotFoundException",
        &format!("No agent found in pool with ID {id}."),
    )
}

pub(crate) fn online(r: &RunnerEntry, now: OffsetDateTime, options: &EmulatorOptions) -> bool {
    r.session
        .as_ref()
        .is_some_and(|s| (now - s.last_poll).whole_seconds() <= options.session_timeout_secs)
}

/// How long a busy runner may stay silent before GitHub fails its job.
const LOST_COMMUNICATION: Duration = Duration::minutes(10);

/// Expires silent sessions, fails jobs whose runner went silent (10 minutes) and jobs nobody
/// took within 24 hours, and deletes registrations GitHub's cleanup would delete (14 days
/// without connecting, 1 day for ephemeral runners).
pub(crate) fn sweep(st: &mut State, now: OffsetDateTime, options: &EmulatorOptions) {
    let mut lost = Vec::new();
    for r in st.runners.values_mut() {
        if !online(r, now, options) {
            r.session = None;
            if let Some(job) = r.busy_job {
                if now - r.last_seen > LOST_COMMUNICATION {
                    r.busy_job = None;
                    lost.push((job, r.name.clone()));
                }
            }
        }
    }
    for (job, name) in lost {
        if let Some(j) = st.jobs.get_mut(&job) {
            j.status = JobStatus::Completed;
            j.result = Some("failed".to_string());
            j.output = Some(format!(
                "The self-hosted runner: {name} lost communication with the server. Verify the machine is running and has a healthy network connection. Anything in your workflow that terminates the runner process, starves it for CPU/Memory, or blocks its network access can cause this error."
            ));
        }
    }
    // A delivered job whose message the runner never acknowledged goes back to the queue
    // after 60 s, as GitHub re-queues a job an assigned runner did not pick up.
    let unclaimed: Vec<(u64, Option<u64>)> = st
        .jobs
        .values()
        .filter(|j| {
            j.status == JobStatus::InProgress
                && !j.acked
                && j.assigned_at
                    .is_some_and(|t| now - t > Duration::seconds(60))
        })
        .map(|j| (j.id, j.runner_id))
        .collect();
    for (job, runner) in unclaimed {
        if let Some(r) = runner.and_then(|r| st.runners.get_mut(&r)) {
            if r.busy_job == Some(job) {
                r.busy_job = None;
            }
        }
        if let Some(j) = st.jobs.get_mut(&job) {
            j.status = JobStatus::Queued;
            j.runner_id = None;
            j.runner_name = None;
            j.message_id = None;
            j.assigned_at = None;
        }
    }
    for j in st.jobs.values_mut() {
        if j.status == JobStatus::Queued && now - j.queued_at > Duration::hours(24) {
            j.status = JobStatus::Completed;
            j.result = Some("failed".to_string());
            j.output = Some(
                "The job was not started because no runner with the requested labels picked it up within 24 hours."
                    .to_string(),
            );
        }
    }
    let stale: Vec<u64> = st
        .runners
        .values()
        .filter(|r| {
            let limit = if r.ephemeral {
                Duration::days(1)
            } else {
                Duration::days(14)
            };
            r.session.is_none() && r.busy_job.is_none() && now - r.last_seen > limit
        })
        .map(|r| r.id)
        .collect();
    for id in stale {
        st.remove_runner(id);
    }
    st.object_tokens.retain(|_, (_, exp)| *exp > now);
}

#[derive(Debug, Deserialize)]
struct ExchangeBody {
    url: String,
    runner_event: String,
}

/// `POST /api/v3/actions/runner-registration` with `Authorization: RemoteAuth <token>`.
pub(crate) fn token_exchange(ctx: &Ctx) -> Response {
    let not_found = || ApiError::not_found().into_response();
    let Credential::RemoteAuth(token) = auth::credential(&ctx.headers) else {
        return not_found();
    };
    let Ok(body) = serde_json::from_slice::<ExchangeBody>(&ctx.body) else {
        return ApiError::new(400, "Problems parsing JSON").into_response();
    };
    let now = ctx.shared.clock.now();
    let mut st = ctx.shared.state();
    let (scope, event) = match auth::lookup(&st, now, &token) {
        Some(TokenKind::Registration(scope)) if body.runner_event == "register" => {
            (scope, RunnerEvent::Register)
        }
        Some(TokenKind::Remove(scope)) if body.runner_event == "remove" => {
            (scope, RunnerEvent::Remove)
        }
        _ => return not_found(),
    };
    let url_scope = url::Url::parse(&body.url)
        .ok()
        .and_then(|u| Scope::parse(u.path()));
    if url_scope.as_ref() != Some(&scope) || !st.scope_exists(&scope) {
        return not_found();
    }
    let (tenant, _) = auth::mint_service_token(&mut st, now, TokenKind::Tenant { scope, event });
    json(
        200,
        &json!({
            "url": format!("{}/_services/pipelines/", ctx.shared.base_url),
            "token_schema": "OAuthAccessToken",
            "token": tenant,
            "use_v2_flow": false,
        }),
    )
}

fn bearer(ctx: &Ctx) -> Option<String> {
    match auth::credential(&ctx.headers) {
        Credential::Token(t) => Some(t),
        _ => None,
    }
}

fn tenant(ctx: &Ctx, st: &State, now: OffsetDateTime) -> Option<(Scope, RunnerEvent)> {
    match auth::lookup(st, now, &bearer(ctx)?)? {
        TokenKind::Tenant { scope, event } => Some((scope, event)),
        _ => None,
    }
}

/// The runner an OAuth access token belongs to: `401` for a bad token or replaced
/// credentials, `404 TaskAgentNotFoundException` for a deleted registration.
fn access(ctx: &Ctx, st: &State, now: OffsetDateTime) -> Result<u64, Response> {
    let token = bearer(ctx).ok_or_else(unauthorized)?;
    match auth::lookup(st, now, &token) {
        Some(TokenKind::RunnerAccess {
            runner_id,
            client_id,
        }) => match st.runners.get(&runner_id) {
            None => Err(agent_not_found(runner_id)),
            Some(r) if r.client_id != client_id => Err(unauthorized()),
            Some(_) => Ok(runner_id),
        },
        _ => Err(unauthorized()),
    }
}

pub(crate) async fn handle(ctx: &mut Ctx) -> Response {
    let segs = ctx.segments();
    let s: Vec<&str> = segs.iter().skip(3).map(String::as_str).collect();
    if segs.get(2).map(String::as_str) != Some("_apis") {
        ctx.route("/_services/pipelines/{other}");
        return service_error(404, "NotFoundException", "Not found");
    }
    let p = "/_services/pipelines/_apis/distributedtask";
    let method = ctx.method.clone();
    let route = match (method, s.as_slice()) {
        (Method::GET, ["distributedtask", "pools"]) => {
            ctx.route(&format!("{p}/pools"));
            Route::Pools
        }
        (Method::POST, ["distributedtask", "pools", pool, "agents"]) => {
            ctx.route(&format!("{p}/pools/{{poolId}}/agents"));
            Route::Register(pool.parse().unwrap_or(0))
        }
        (Method::GET, ["distributedtask", "pools", pool, "agents"]) => {
            ctx.route(&format!("{p}/pools/{{poolId}}/agents"));
            Route::ListAgents(pool.parse().unwrap_or(0))
        }
        (Method::DELETE, ["distributedtask", "pools", _, "agents", id]) => {
            ctx.route(&format!("{p}/pools/{{poolId}}/agents/{{agentId}}"));
            Route::RemoveAgent(id.parse().unwrap_or(0))
        }
        (Method::POST, ["oauth2", "token"]) => {
            ctx.route("/_services/pipelines/_apis/oauth2/token");
            Route::OAuth
        }
        (Method::POST, ["distributedtask", "pools", _, "sessions"]) => {
            ctx.route(&format!("{p}/pools/{{poolId}}/sessions"));
            Route::CreateSession
        }
        (Method::DELETE, ["distributedtask", "pools", _, "sessions", id]) => {
            ctx.route(&format!("{p}/pools/{{poolId}}/sessions/{{sessionId}}"));
            Route::DeleteSession((*id).to_string())
        }
        (Method::GET, ["distributedtask", "pools", _, "messages"]) => {
            ctx.route(&format!("{p}/pools/{{poolId}}/messages"));
            Route::Poll
        }
        (Method::DELETE, ["distributedtask", "pools", _, "messages", id]) => {
            ctx.route(&format!("{p}/pools/{{poolId}}/messages/{{messageId}}"));
            Route::Ack(id.parse().unwrap_or(0))
        }
        (Method::POST, ["distributedtask", "jobs", id, "complete"]) => {
            ctx.route(&format!("{p}/jobs/{{jobId}}/complete"));
            Route::Complete(id.parse().unwrap_or(0))
        }
        _ => {
            ctx.route("/_services/pipelines/{other}");
            Route::NotFound
        }
    };
    if let Some(r) = ctx.injected_status() {
        return r;
    }
    match route {
        Route::Poll => poll(ctx).await,
        other => {
            let now = ctx.shared.clock.now();
            let resp = {
                let mut st = ctx.shared.state();
                sweep(&mut st, now, &ctx.shared.options);
                sync_route(ctx, &mut st, now, other)
            };
            ctx.shared.changed.notify_waiters();
            resp
        }
    }
}

enum Route {
    Pools,
    Register(u64),
    ListAgents(u64),
    RemoveAgent(u64),
    OAuth,
    CreateSession,
    DeleteSession(String),
    Poll,
    Ack(u64),
    Complete(u64),
    NotFound,
}

#[derive(Debug, Deserialize)]
struct LabelBody {
    name: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterBody {
    name: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    labels: Vec<LabelBody>,
    #[serde(default)]
    ephemeral: bool,
    #[serde(default)]
    disable_update: bool,
    #[serde(default)]
    replace: bool,
    #[serde(default)]
    public_key: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CompleteBody {
    #[serde(default)]
    result: String,
    #[serde(default)]
    exit_code: Option<i64>,
    #[serde(default)]
    output: Option<String>,
}

fn agent_json(base: &str, r: &RunnerEntry) -> Value {
    json!({
        "id": r.id,
        "name": r.name,
        "version": r.version,
        "osDescription": r.os,
        "enabled": true,
        "status": if r.session.is_some() { "online" } else { "offline" },
        "provisioningState": "Provisioned",
        "ephemeral": r.ephemeral,
        "disableUpdate": r.disable_update,
        "labels": r.labels.iter().map(|l| json!({
            "id": l.id,
            "name": l.name,
            "type": if l.kind == LabelKind::ReadOnly { "system" } else { "user" },
        })).collect::<Vec<_>>(),
        "authorization": {
            "clientId": r.client_id,
            "authorizationUrl": format!("{base}/_services/pipelines/_apis/oauth2/token"),
        },
    })
}

fn os_from_labels(labels: &[Label]) -> String {
    for l in labels {
        match l.name.to_ascii_lowercase().as_str() {
            "linux" => return "linux".to_string(),
            "macos" => return "macos".to_string(),
            "windows" => return "windows".to_string(),
            _ => {}
        }
    }
    "unknown".to_string()
}

fn sync_route(ctx: &Ctx, st: &mut State, now: OffsetDateTime, route: Route) -> Response {
    let base = ctx.shared.base_url.clone();
    match route {
        Route::Pools => {
            let Some((scope, _)) = tenant(ctx, st, now) else {
                return unauthorized();
            };
            let name = ctx.query.get("poolName");
            let pools: Vec<Value> = st
                .groups(&scope)
                .iter()
                .filter(|g| name.is_none_or(|n| g.name.eq_ignore_ascii_case(n)))
                .map(|g| {
                    json!({"id": g.id, "name": g.name, "isHosted": false,
                        "poolType": "automation", "isInternal": g.default})
                })
                .collect();
            json(200, &json!({"count": pools.len(), "value": pools}))
        }
        Route::ListAgents(pool) => {
            let Some((scope, _)) = tenant(ctx, st, now) else {
                return unauthorized();
            };
            let name = ctx.query.get("agentName");
            let agents: Vec<Value> = st
                .runners
                .values()
                .filter(|r| r.scope == scope && r.group_id == pool)
                .filter(|r| name.is_none_or(|n| r.name.eq_ignore_ascii_case(n)))
                .map(|r| agent_json(&base, r))
                .collect();
            json(200, &json!({"count": agents.len(), "value": agents}))
        }
        Route::Register(pool) => register(ctx, st, now, pool),
        Route::RemoveAgent(id) => {
            let Some((scope, _)) = tenant(ctx, st, now) else {
                return unauthorized();
            };
            match st.runners.get(&id) {
                Some(r) if r.scope == scope => {
                    st.remove_runner(id);
                    empty(204)
                }
                _ => agent_not_found(id),
            }
        }
        Route::OAuth => {
            let form: std::collections::HashMap<String, String> =
                url::form_urlencoded::parse(&ctx.body)
                    .into_owned()
                    .collect();
            let invalid = || json(400, &json!({"error": "invalid_client"}));
            if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
                return json(400, &json!({"error": "unsupported_grant_type"}));
            }
            let (Some(client_id), Some(secret)) =
                (form.get("client_id"), form.get("client_secret"))
            else {
                return invalid();
            };
            let Some(r) = st.runners.values().find(|r| &r.client_id == client_id) else {
                return invalid();
            };
            if &r.public_key != secret {
                return invalid();
            }
            let kind = TokenKind::RunnerAccess {
                runner_id: r.id,
                client_id: client_id.clone(),
            };
            let (token, _) = auth::mint_service_token(st, now, kind);
            json(
                200,
                &json!({"access_token": token, "token_type": "bearer", "expires_in": 3600}),
            )
        }
        Route::CreateSession => {
            let id = match access(ctx, st, now) {
                Ok(id) => id,
                Err(r) => return r,
            };
            let owner = serde_json::from_slice::<Value>(&ctx.body)
                .ok()
                .and_then(|v| v.get("ownerName").cloned())
                .unwrap_or(Value::Null);
            let Some(r) = st.runners.get_mut(&id) else {
                return agent_not_found(id);
            };
            if r.session.is_some() {
                return service_error(
                    409,
                    "TaskAgentSessionConflictException",
                    "A session for this runner already exists.",
                );
            }
            let session_id = auth::guid();
            r.session = Some(Session {
                id: session_id.clone(),
                last_poll: now,
                refresh_sent: None,
            });
            r.last_seen = now;
            json(
                200,
                &json!({
                    "sessionId": session_id,
                    "ownerName": owner,
                    "agent": {"id": r.id, "name": r.name, "version": r.version},
                }),
            )
        }
        Route::DeleteSession(session_id) => {
            let id = match access(ctx, st, now) {
                Ok(id) => id,
                Err(r) => return r,
            };
            if let Some(r) = st.runners.get_mut(&id) {
                if r.session.as_ref().is_some_and(|s| s.id == session_id) {
                    r.session = None;
                }
            }
            empty(204)
        }
        Route::Ack(message_id) => match access(ctx, st, now) {
            Ok(id) => {
                if let Some(job) = st
                    .jobs
                    .values_mut()
                    .find(|j| j.message_id == Some(message_id) && j.runner_id == Some(id))
                {
                    job.acked = true;
                }
                empty(204)
            }
            Err(r) => r,
        },
        Route::Complete(job_id) => {
            let id = match access(ctx, st, now) {
                Ok(id) => id,
                Err(r) => return r,
            };
            let body: CompleteBody = match serde_json::from_slice(&ctx.body) {
                Ok(b) => b,
                Err(e) => {
                    return service_error(400, "ArgumentException", &format!("bad body: {e}"))
                }
            };
            let Some(job) = st.jobs.get_mut(&job_id) else {
                return service_error(
                    404,
                    "TaskOrchestrationJobNotFoundException",
                    &format!("Job {job_id} was not found."),
                );
            };
            if job.runner_id != Some(id) || job.status != JobStatus::InProgress {
                return service_error(
                    404,
                    "TaskOrchestrationJobNotFoundException",
                    &format!("Job {job_id} is not running on this runner."),
                );
            }
            job.status = JobStatus::Completed;
            job.result = Some(body.result);
            job.exit_code = body.exit_code;
            job.output = body.output;
            let ephemeral = st.runners.get(&id).is_some_and(|r| r.ephemeral);
            if let Some(r) = st.runners.get_mut(&id) {
                r.busy_job = None;
                r.last_seen = now;
            }
            if ephemeral {
                // The service de-registers an ephemeral runner after its job.
                st.remove_runner(id);
            }
            json(200, &json!({}))
        }
        Route::Poll | Route::NotFound => service_error(
            404,
            "NotFoundException",
            "The requested resource was not found.",
        ),
    }
}

fn register(ctx: &Ctx, st: &mut State, now: OffsetDateTime, pool: u64) -> Response {
    let base = ctx.shared.base_url.clone();
    let Some((scope, event)) = tenant(ctx, st, now) else {
        return unauthorized();
    };
    if event != RunnerEvent::Register {
        return service_error(
            403,
            "AccessDeniedException",
            "The token is not valid for registering runners.",
        );
    }
    let body: RegisterBody = match serde_json::from_slice(&ctx.body) {
        Ok(b) => b,
        Err(e) => return service_error(400, "ArgumentException", &format!("bad body: {e}")),
    };
    if !st.groups(&scope).iter().any(|g| g.id == pool) {
        return service_error(
            404,
            "TaskAgentPoolNotFoundException",
            &format!("Agent pool {pool} was not found."),
        );
    }
    let labels: Vec<Label> = body
        .labels
        .iter()
        .filter(|l| !l.name.trim().is_empty())
        .map(|l| {
            let kind = if l.kind.as_deref() == Some("system") {
                LabelKind::ReadOnly
            } else {
                LabelKind::Custom
            };
            st.label(l.name.trim(), kind)
        })
        .fold(Vec::new(), |mut acc: Vec<Label>, l| {
            if !acc.iter().any(|x| x.name.eq_ignore_ascii_case(&l.name)) {
                acc.push(l);
            }
            acc
        });
    let existing = st.runner_by_name(&scope, &body.name);
    let id = match existing {
        Some(_) if !body.replace => {
            return service_error(
                409,
                "TaskAgentExistsException",
                &format!("A runner exists with the same name {}.", body.name),
            )
        }
        Some(id) => {
            // Replacing keeps the id; the old session, credentials and running job die.
            if let Some(old) = st.runners.get(&id).cloned() {
                if old.busy_job.is_some() {
                    st.remove_runner(id);
                } else {
                    st.runners.remove(&id);
                }
            }
            id
        }
        None => st.id(),
    };
    let os = os_from_labels(&labels);
    let runner = RunnerEntry {
        id,
        name: body.name,
        scope,
        group_id: pool,
        version: body.version,
        os,
        labels,
        ephemeral: body.ephemeral,
        disable_update: body.disable_update,
        client_id: auth::guid(),
        public_key: body.public_key,
        last_seen: now,
        session: None,
        busy_job: None,
        messages: VecDeque::new(),
    };
    let resp = json(200, &agent_json(&base, &runner));
    st.runners.insert(id, runner);
    resp
}

fn is_true(v: Option<&String>) -> Option<bool> {
    v.map(|v| v.eq_ignore_ascii_case("true"))
}

/// `GET …/messages`: the long poll. Wakes as soon as something for this runner happens.
async fn poll(ctx: &Ctx) -> Response {
    let shared = ctx.shared.clone();
    let deadline = tokio::time::Instant::now() + shared.options.long_poll;
    let session_id = ctx.query.get("sessionId").cloned().unwrap_or_default();
    let reported_version = ctx.query.get("runnerVersion").cloned();
    let disable_update = is_true(ctx.query.get("disableUpdate"));
    let mut waiting: Option<PollGuard<'_>> = None;
    loop {
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let now = shared.clock.now();
            let mut st = shared.state();
            let id = match access(ctx, &st, now) {
                Ok(id) => id,
                Err(r) => return r,
            };
            let Some(r) = st.runners.get_mut(&id) else {
                return agent_not_found(id);
            };
            let session_ok = r.session.as_ref().is_some_and(|s| {
                s.id == session_id
                    && (now - s.last_poll).whole_seconds() <= shared.options.session_timeout_secs
            });
            if !session_ok {
                if r.session.as_ref().is_some_and(|s| s.id == session_id) {
                    r.session = None;
                }
                return service_error(
                    404,
                    "TaskAgentSessionExpiredException",
                    &format!("The session {session_id} has expired."),
                );
            }
            if let Some(v) = &reported_version {
                r.version = v.trim_start_matches('v').to_string();
            }
            if let Some(session) = r.session.as_mut() {
                session.last_poll = now;
            }
            r.last_seen = now;
            let version = r.version.clone();
            if let Some(floor) = st.deprecated_below.clone() {
                if version_cmp(&version, &floor) == std::cmp::Ordering::Less {
                    let message = format!(
                        "Runner version v{version} is deprecated and cannot receive messages."
                    );
                    return json(
                        403,
                        &json!({
                            "$id": "1",
                            "innerException": null,
                            "message": message,
                            "typeName": "GitHub.DistributedTask.WebApi.AccessDeniedException, GitHub.DistributedTask.WebApi",
                            "typeKey": "AccessDeniedException",
                            "errorCode": 1,
                            "eventId": 3000,
                        }),
                    );
                }
            }
            if let Some(msg) = next_message(&mut st, now, &shared.base_url, id, disable_update) {
                drop(st);
                shared.changed.notify_waiters();
                return json(
                    200,
                    &json!({
                        "messageId": msg.id,
                        "messageType": msg.kind,
                        "body": msg.body.to_string(),
                    }),
                );
            }
        }
        if waiting.is_none() {
            // Its own wake-up makes this loop check once more; later rounds do not notify.
            waiting = Some(PollGuard::new(&shared));
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return empty(202);
        }
    }
}

/// Counts a waiting long poll (also when the client goes away mid-wait).
struct PollGuard<'a>(&'a super::Shared);

impl<'a> PollGuard<'a> {
    fn new(shared: &'a super::Shared) -> PollGuard<'a> {
        shared
            .polls_waiting
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        shared.changed.notify_waiters();
        PollGuard(shared)
    }
}

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        self.0
            .polls_waiting
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn platform_of(r: &RunnerEntry) -> &'static str {
    let has = |n: &str| r.labels.iter().any(|l| l.name.eq_ignore_ascii_case(n));
    if has("ARM64") {
        "linux-arm64"
    } else if has("ARM") {
        "linux-arm"
    } else {
        "linux-x64"
    }
}

fn eligible(st: &State, job: &JobEntry, r: &RunnerEntry) -> bool {
    let labels_ok = job
        .labels
        .iter()
        .all(|want| r.labels.iter().any(|l| l.name.eq_ignore_ascii_case(want)));
    if !labels_ok {
        return false;
    }
    match (&job.scope, &r.scope) {
        (a, b) if a == b => true,
        (Scope::Repo { owner, .. }, Scope::Org(org)) if owner == org => {
            let private = st.repo_private(&job.scope);
            st.groups(&r.scope)
                .iter()
                .find(|g| g.id == r.group_id)
                .is_some_and(|g| private || g.allows_public_repositories)
        }
        _ => false,
    }
}

fn next_message(
    st: &mut State,
    now: OffsetDateTime,
    base: &str,
    runner_id: u64,
    disable_update: Option<bool>,
) -> Option<Message> {
    if let Some(m) = st
        .runners
        .get_mut(&runner_id)
        .and_then(|r| r.messages.pop_front())
    {
        return Some(m);
    }
    let r = st.runners.get(&runner_id)?.clone();
    if r.busy_job.is_some() {
        return None;
    }
    // Self-update first, as GitHub does before handing an outdated runner a job.
    let updates_disabled = disable_update.unwrap_or(r.disable_update);
    if !updates_disabled {
        if let Some(target) = releases::expected_version(st, &r.scope) {
            let already =
                r.session.as_ref().and_then(|s| s.refresh_sent.as_deref()) == Some(target.as_str());
            if version_cmp(&target, &r.version) == std::cmp::Ordering::Greater && !already {
                if let Some((url, sha)) = releases::asset_for(st, base, &target, platform_of(&r)) {
                    let id = st.id();
                    if let Some(session) = st
                        .runners
                        .get_mut(&runner_id)
                        .and_then(|r| r.session.as_mut())
                    {
                        session.refresh_sent = Some(target.clone());
                    }
                    return Some(Message {
                        id,
                        kind: "AgentRefresh",
                        body: json!({
                            "agentId": runner_id,
                            "targetVersion": target,
                            "downloadUrl": url,
                            "sha256Checksum": sha,
                        }),
                    });
                }
            }
        }
    }
    let job_id = st
        .jobs
        .values()
        .filter(|j| j.status == JobStatus::Queued)
        .find(|j| eligible(st, j, &r))
        .map(|j| j.id)?;
    let message_id = st.id();
    let job = st.jobs.get_mut(&job_id)?;
    job.status = JobStatus::InProgress;
    job.message_id = Some(message_id);
    job.acked = false;
    job.assigned_at = Some(now);
    job.runner_id = Some(runner_id);
    job.runner_name = Some(r.name.clone());
    let body = json!({
        "jobId": job.id,
        "requestId": job.request_id,
        "jobDisplayName": format!("job {}", job.id),
        "steps": [{"name": "Run script", "script": job.script}],
        "variables": {
            "system.github.job": format!("job-{}", job.id),
            "system.github.repository": job.scope.to_string(),
            "system.github.run_id": job.id.to_string(),
            "system.github.run_attempt": "1",
            "system.github.run_number": job.id.to_string(),
        },
    });
    if let Some(r) = st.runners.get_mut(&runner_id) {
        r.busy_job = Some(job_id);
    }
    Some(Message {
        id: message_id,
        kind: "PipelineAgentJobRequest",
        body,
    })
}

pub(crate) fn cancel_job(st: &mut State, id: u64) -> Result<(), EmulatorError> {
    let message_id = st.id();
    let job = st
        .jobs
        .get_mut(&id)
        .ok_or(EmulatorError::NoSuchJob { id })?;
    match job.status {
        JobStatus::Queued => {
            job.status = JobStatus::Completed;
            job.result = Some("cancelled".to_string());
        }
        JobStatus::InProgress if !job.cancel_requested => {
            job.cancel_requested = true;
            let runner = job.runner_id;
            if let Some(r) = runner.and_then(|rid| st.runners.get_mut(&rid)) {
                r.messages.push_back(Message {
                    id: message_id,
                    kind: "JobCancellation",
                    body: json!({"jobId": id}),
                });
            }
        }
        _ => {}
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct JitBody {
    name: Option<String>,
    runner_group_id: Option<u64>,
    labels: Option<Vec<String>>,
    work_folder: Option<String>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A state file as the runner writes it: indented JSON with a UTF-8 BOM, then base64.
fn state_file(value: &Value) -> String {
    let mut bytes = vec![0xEF, 0xBB, 0xBF];
    bytes.extend(serde_json::to_vec_pretty(value).unwrap_or_default());
    b64(&bytes)
}

fn random_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|_| rand::random::<u8>()).collect()
}

/// `POST …/actions/runners/generate-jitconfig`.
pub(crate) fn generate_jitconfig(
    ctx: &Ctx,
    st: &mut State,
    now: OffsetDateTime,
    options: &EmulatorOptions,
    scope: &Scope,
) -> Result<Response, ApiError> {
    let body: JitBody = ctx.json_body()?;
    let missing =
        |f: &str| ApiError::validation(&format!("Invalid request.\n\n\"{f}\" wasn't supplied."));
    let name = body.name.ok_or_else(|| missing("name"))?;
    let group_id = body
        .runner_group_id
        .ok_or_else(|| missing("runner_group_id"))?;
    let labels = body.labels.ok_or_else(|| missing("labels"))?;
    if labels.is_empty() || labels.len() > 100 {
        return Err(ApiError::validation(
            "Invalid request.\n\nFor 'properties/labels', the array must contain between 1 and 100 items.",
        ));
    }
    if name.trim().is_empty() {
        return Err(ApiError::validation(
            "Invalid request.\n\n\"name\" must not be empty.",
        ));
    }
    let Some(group) = st.groups(scope).into_iter().find(|g| g.id == group_id) else {
        return Err(ApiError::not_found());
    };
    if st.runner_by_name(scope, &name).is_some() {
        return Err(ApiError::new(
            409,
            &format!("Already exists - A runner with the name {name} already exists."),
        ));
    }
    let id = st.id();
    let mut runner_labels = vec![st.label("self-hosted", LabelKind::ReadOnly)];
    for l in &labels {
        if !runner_labels.iter().any(|x| x.name.eq_ignore_ascii_case(l)) {
            runner_labels.push(st.label(l, LabelKind::Custom));
        }
    }
    let base = &ctx.shared.base_url;
    let modulus = b64(&random_bytes(256));
    let client_id = auth::guid();
    let runner = RunnerEntry {
        id,
        name: name.clone(),
        scope: scope.clone(),
        group_id,
        version: String::new(),
        os: "unknown".to_string(),
        labels: runner_labels,
        ephemeral: true,
        disable_update: false,
        client_id: client_id.clone(),
        public_key: modulus.clone(),
        last_seen: now,
        session: None,
        busy_job: None,
        messages: VecDeque::new(),
    };
    let dot_runner = json!({
        "agentId": id,
        "agentName": name,
        "poolId": group_id,
        "poolName": group.name,
        "serverUrl": format!("{base}/_services/pipelines/"),
        "gitHubUrl": format!("{base}{}", scope.web_path()),
        "workFolder": body.work_folder.unwrap_or_else(|| "_work".to_string()),
        "ephemeral": true,
    });
    let credentials = json!({
        "scheme": "OAuth",
        "data": {
            "clientId": client_id,
            "authorizationUrl": format!("{base}/_services/pipelines/_apis/oauth2/token"),
            "requireFipsCryptography": "False",
        },
    });
    let rsa = json!({
        "d": b64(&random_bytes(256)),
        "dp": b64(&random_bytes(128)),
        "dq": b64(&random_bytes(128)),
        "exponent": b64(&[1, 0, 1]),
        "inverseQ": b64(&random_bytes(128)),
        "modulus": modulus,
        "p": b64(&random_bytes(128)),
        "q": b64(&random_bytes(128)),
    });
    let files = json!({
        ".runner": state_file(&dot_runner),
        ".credentials": state_file(&credentials),
        ".credentials_rsaparams": state_file(&rsa),
    });
    let encoded = b64(files.to_string().as_bytes());
    let runner_view = rest::runner_json(&runner, now, options);
    st.runners.insert(id, runner);
    Ok(json(
        201,
        &json!({"runner": runner_view, "encoded_jit_config": encoded}),
    ))
}
