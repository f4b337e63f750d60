//! GitHub's REST API under `/api/v3`: self-hosted runners for repo, org and enterprise scopes,
//! runner releases, GitHub App installation tokens, rate limits and conditional requests.

use axum::http::Method;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Digest;
use time::OffsetDateTime;

use super::auth::{self, Access, ExtraHeaders, Principal};
use super::clock::format_millis;
use super::http::{json, set_header, ApiError, Ctx, DOCS_RATE};
use super::state::{LabelKind, RunnerEntry, Scope, State, TokenKind};
use super::{releases, runner_service, EmulatorOptions};

/// What a scoped runner endpoint does.
#[derive(Debug, Clone)]
enum Op {
    RegistrationToken,
    RemoveToken,
    List,
    Get(u64),
    Delete(u64),
    Downloads,
    Jit,
    ListLabels(u64),
    AddLabels(u64),
    SetLabels(u64),
    RemoveAllLabels(u64),
    RemoveLabel(u64, String),
    ListGroups,
    GetGroup(u64),
    GroupRunners(u64),
}

impl Op {
    fn access(&self) -> Access {
        match self {
            Op::List
            | Op::Get(_)
            | Op::Downloads
            | Op::ListLabels(_)
            | Op::ListGroups
            | Op::GetGroup(_)
            | Op::GroupRunners(_) => Access::Read,
            _ => Access::Write,
        }
    }
}

enum Route {
    Scoped(Scope, Op),
    /// Public endpoints that take an optional token (releases, `/user`).
    Public(PublicOp),
    RateLimit,
    RunnerRegistration,
    App(AppOp),
    NotFound,
}

enum PublicOp {
    LatestRelease,
    ReleaseByTag(String),
    ListReleases,
    User,
    Repo(Scope),
    Org(Scope),
    Root,
    Meta,
}

enum AppOp {
    App,
    Installations,
    AccessToken(u64),
    InstallationFor(Scope),
}

fn parse_id(s: &str) -> Option<u64> {
    s.parse().ok()
}

/// Routes the part after the scope prefix (`runners/...`, `runner-groups`).
fn scoped_op(method: &Method, rest: &[&str], scope: &Scope) -> Option<(Op, &'static str)> {
    let m = method.clone();
    Some(match (m, rest) {
        (Method::POST, ["runners", "registration-token"]) => {
            (Op::RegistrationToken, "/actions/runners/registration-token")
        }
        (Method::POST, ["runners", "remove-token"]) => {
            (Op::RemoveToken, "/actions/runners/remove-token")
        }
        (Method::GET, ["runners"]) => (Op::List, "/actions/runners"),
        (Method::GET, ["runners", "downloads"]) => (Op::Downloads, "/actions/runners/downloads"),
        (Method::POST, ["runners", "generate-jitconfig"]) => {
            (Op::Jit, "/actions/runners/generate-jitconfig")
        }
        (Method::GET, ["runners", id]) => (Op::Get(parse_id(id)?), "/actions/runners/{runner_id}"),
        (Method::DELETE, ["runners", id]) => {
            (Op::Delete(parse_id(id)?), "/actions/runners/{runner_id}")
        }
        (Method::GET, ["runners", id, "labels"]) => (
            Op::ListLabels(parse_id(id)?),
            "/actions/runners/{runner_id}/labels",
        ),
        (Method::POST, ["runners", id, "labels"]) => (
            Op::AddLabels(parse_id(id)?),
            "/actions/runners/{runner_id}/labels",
        ),
        (Method::PUT, ["runners", id, "labels"]) => (
            Op::SetLabels(parse_id(id)?),
            "/actions/runners/{runner_id}/labels",
        ),
        (Method::DELETE, ["runners", id, "labels"]) => (
            Op::RemoveAllLabels(parse_id(id)?),
            "/actions/runners/{runner_id}/labels",
        ),
        (Method::DELETE, ["runners", id, "labels", name]) => (
            Op::RemoveLabel(parse_id(id)?, (*name).to_string()),
            "/actions/runners/{runner_id}/labels/{name}",
        ),
        (Method::GET, ["runner-groups"]) if !matches!(scope, Scope::Repo { .. }) => {
            (Op::ListGroups, "/actions/runner-groups")
        }
        (Method::GET, ["runner-groups", id]) if !matches!(scope, Scope::Repo { .. }) => (
            Op::GetGroup(parse_id(id)?),
            "/actions/runner-groups/{runner_group_id}",
        ),
        (Method::GET, ["runner-groups", id, "runners"]) if !matches!(scope, Scope::Repo { .. }) => {
            (
                Op::GroupRunners(parse_id(id)?),
                "/actions/runner-groups/{runner_group_id}/runners",
            )
        }
        _ => return None,
    })
}

fn route(ctx: &mut Ctx, st: &State) -> Route {
    let segs = ctx.segments();
    let s: Vec<&str> = segs.iter().skip(2).map(String::as_str).collect();
    let method = ctx.method.clone();
    let scoped = |ctx: &mut Ctx, scope: Scope, prefix: &str, rest: &[&str]| match scoped_op(
        &method, rest, &scope,
    ) {
        Some((op, tail)) => {
            ctx.route(&format!("/api/v3{prefix}{tail}"));
            Route::Scoped(scope, op)
        }
        None => Route::NotFound,
    };
    match (method.clone(), s.as_slice()) {
        (Method::GET, ["repos", "actions", "runner", "releases", "latest"]) => {
            ctx.route("/api/v3/repos/actions/runner/releases/latest");
            Route::Public(PublicOp::LatestRelease)
        }
        (Method::GET, ["repos", "actions", "runner", "releases", "tags", tag]) => {
            ctx.route("/api/v3/repos/actions/runner/releases/tags/{tag}");
            Route::Public(PublicOp::ReleaseByTag((*tag).to_string()))
        }
        (Method::GET, ["repos", "actions", "runner", "releases"]) => {
            ctx.route("/api/v3/repos/actions/runner/releases");
            Route::Public(PublicOp::ListReleases)
        }
        (Method::GET, ["user"]) => {
            ctx.route("/api/v3/user");
            Route::Public(PublicOp::User)
        }
        (Method::GET, ["repos", owner, repo]) => {
            ctx.route("/api/v3/repos/{owner}/{repo}");
            match Scope::parse(&format!("{owner}/{repo}")) {
                Some(scope) => Route::Public(PublicOp::Repo(scope)),
                None => Route::NotFound,
            }
        }
        (Method::GET, ["orgs", org]) => {
            ctx.route("/api/v3/orgs/{org}");
            match Scope::parse(org) {
                Some(scope @ Scope::Org(_)) => Route::Public(PublicOp::Org(scope)),
                _ => Route::NotFound,
            }
        }
        (Method::GET, []) => {
            ctx.route("/api/v3");
            Route::Public(PublicOp::Root)
        }
        (Method::GET, ["meta"]) => {
            ctx.route("/api/v3/meta");
            Route::Public(PublicOp::Meta)
        }
        (Method::GET, ["rate_limit"]) => {
            ctx.route("/api/v3/rate_limit");
            Route::RateLimit
        }
        (Method::POST, ["actions", "runner-registration"]) => {
            ctx.route("/api/v3/actions/runner-registration");
            Route::RunnerRegistration
        }
        (Method::GET, ["app"]) => {
            ctx.route("/api/v3/app");
            Route::App(AppOp::App)
        }
        (Method::GET, ["app", "installations"]) => {
            ctx.route("/api/v3/app/installations");
            Route::App(AppOp::Installations)
        }
        (Method::POST, ["app", "installations", id, "access_tokens"]) => match parse_id(id) {
            Some(id) => {
                ctx.route("/api/v3/app/installations/{installation_id}/access_tokens");
                Route::App(AppOp::AccessToken(id))
            }
            None => Route::NotFound,
        },
        (Method::GET, ["repos", owner, repo, "installation"]) => {
            ctx.route("/api/v3/repos/{owner}/{repo}/installation");
            match Scope::parse(&format!("{owner}/{repo}")) {
                Some(scope) => Route::App(AppOp::InstallationFor(scope)),
                None => Route::NotFound,
            }
        }
        (Method::GET, ["orgs", org, "installation"]) => {
            ctx.route("/api/v3/orgs/{org}/installation");
            match Scope::parse(org) {
                Some(scope) => Route::App(AppOp::InstallationFor(scope)),
                None => Route::NotFound,
            }
        }
        (_, ["repos", owner, repo, "actions", rest @ ..]) => {
            match Scope::parse(&format!("{owner}/{repo}")) {
                Some(scope) => scoped(ctx, scope, "/repos/{owner}/{repo}", rest),
                None => Route::NotFound,
            }
        }
        // GitHub's own pagination links address repositories and orgs by id.
        (_, ["repositories", id, "actions", rest @ ..]) => {
            let found = parse_id(id).and_then(|id| {
                st.repos
                    .iter()
                    .find(|(_, r)| r.id == id)
                    .map(|((o, r), _)| Scope::Repo {
                        owner: o.clone(),
                        repo: r.clone(),
                    })
            });
            match found {
                Some(scope) => scoped(ctx, scope, "/repositories/{repository_id}", rest),
                None => Route::NotFound,
            }
        }
        (_, ["organizations", id, "actions", rest @ ..]) => {
            let found = parse_id(id).and_then(|id| {
                st.orgs
                    .iter()
                    .find(|(_, o)| o.id == id)
                    .map(|(name, _)| Scope::Org(name.clone()))
            });
            match found {
                Some(scope) => scoped(ctx, scope, "/organizations/{organization_id}", rest),
                None => Route::NotFound,
            }
        }
        (_, ["orgs", org, "actions", rest @ ..]) => match Scope::parse(org) {
            Some(scope @ Scope::Org(_)) => scoped(ctx, scope, "/orgs/{org}", rest),
            _ => Route::NotFound,
        },
        (_, ["enterprises", e, "actions", rest @ ..]) => {
            match Scope::parse(&format!("enterprises/{e}")) {
                Some(scope) => scoped(ctx, scope, "/enterprises/{enterprise}", rest),
                None => Route::NotFound,
            }
        }
        _ => Route::NotFound,
    }
}

fn random_request_id() -> String {
    let h = |n| auth::random_string(b"0123456789ABCDEF", n);
    format!("{}:{}:{}:{}:{}", h(4), h(4), h(6), h(6), h(8))
}

/// The GitHub Enterprise Server version the emulator claims to be.
pub(crate) const GHES_VERSION: &str = "3.17.0";

fn common_headers(resp: &mut Response) {
    set_header(resp, "x-github-enterprise-version", GHES_VERSION);
    set_header(resp, "x-github-api-version-selected", "2022-11-28");
    set_header(resp, "x-github-media-type", "github.v3; format=json");
    set_header(resp, "x-github-request-id", &random_request_id());
    set_header(resp, "server", "GitHub.com");
}

fn rate_headers(resp: &mut Response, view: &auth::RateView) {
    set_header(resp, "x-ratelimit-limit", &view.limit.to_string());
    set_header(resp, "x-ratelimit-remaining", &view.remaining().to_string());
    set_header(resp, "x-ratelimit-used", &view.used.to_string());
    set_header(resp, "x-ratelimit-reset", &view.reset.to_string());
    set_header(resp, "x-ratelimit-resource", "core");
}

pub(crate) async fn handle(ctx: &mut Ctx) -> Response {
    let mut resp = handle_inner(ctx);
    common_headers(&mut resp);
    resp
}

fn handle_inner(ctx: &mut Ctx) -> Response {
    let shared = ctx.shared.clone();
    let now = shared.clock.now();
    let options = &shared.options;
    let mut st = shared.state();
    runner_service::sweep(&mut st, now, options);
    let route = route(ctx, &st);
    if let Some(resp) = ctx.injected_status() {
        return resp;
    }
    match route {
        Route::RunnerRegistration => {
            drop(st);
            return runner_service::token_exchange(ctx);
        }
        Route::App(op) => return app_op(ctx, &mut st, now, op),
        _ => {}
    }
    let principal = match auth::authenticate(&st, now, &ctx.headers) {
        Ok(p) => p,
        Err(e) => {
            let view = auth::spend(
                &mut st,
                now,
                "anonymous:127.0.0.1",
                options.unauthenticated_rate_limit,
            );
            let mut resp = e.into_response();
            rate_headers(&mut resp, &view);
            return resp;
        }
    };
    let key = principal.bucket();
    let limit = auth::limit_for(&principal, options);
    if let Route::RateLimit = route {
        let view = auth::peek(&mut st, now, &key, limit);
        let core = json!({"limit": view.limit, "used": view.used,
            "remaining": view.remaining(), "reset": view.reset, "resource": "core"});
        let mut resp = json(200, &json!({"resources": {"core": core}, "rate": core}));
        rate_headers(&mut resp, &view);
        return resp;
    }
    let mut extra: ExtraHeaders = Vec::new();
    if let Principal::Classic { scopes, .. } = &principal {
        extra.push(("x-oauth-scopes", scopes.join(", ")));
    }
    if matches!(
        principal,
        Principal::Classic { .. } | Principal::FineGrained { .. }
    ) {
        if let Some(expires) = st.tokens.get(&key).and_then(|t| t.expires_at) {
            let f = time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
            );
            if let Ok(text) = expires.format(&f) {
                extra.push(("github-authentication-token-expiration", text));
            }
        }
    }
    let finish = |mut resp: Response, view: &auth::RateView, extra: &ExtraHeaders| {
        rate_headers(&mut resp, view);
        for (name, value) in extra {
            set_header(&mut resp, name, value);
        }
        resp
    };
    // Primary limit: refuse once the window's budget is spent.
    let view = auth::peek(&mut st, now, &key, limit);
    if view.remaining() == 0 {
        let message = match &principal {
            Principal::Anonymous => "API rate limit exceeded for 127.0.0.1. (But here's the good news: Authenticated requests get a higher rate limit. Check out the documentation for more details.)".to_string(),
            _ => "API rate limit exceeded for user ID 1.".to_string(),
        };
        let resp = ApiError::new(403, &message).docs(DOCS_RATE).into_response();
        return finish(resp, &view, &extra);
    }
    let mut secondary = ctx.secondary;
    if let Some(max) = options.secondary_points_per_minute {
        let cost = if ctx.method == Method::GET { 1 } else { 5 };
        let window = st.points.entry(key.clone()).or_insert((now, 0));
        if now - window.0 >= time::Duration::minutes(1) {
            *window = (now, 0);
        }
        if window.1 + cost > max {
            let left = 60 - (now - window.0).whole_seconds();
            secondary = Some((403, left.clamp(1, 60) as u64));
        } else {
            window.1 += cost;
        }
    }
    if let Some((status, retry_after)) = secondary {
        let view = auth::spend(&mut st, now, &key, limit);
        let mut err = ApiError::new(
            status,
            &format!("You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you reach out to GitHub Support for help, please include the request ID {}.", random_request_id()),
        )
        .docs("https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits");
        err.headers.push(("retry-after", retry_after.to_string()));
        return finish(err.into_response(), &view, &extra);
    }
    let result = match route {
        Route::Scoped(scope, op) => {
            match auth::authorize(&st, &principal, &scope, op.access(), &mut extra) {
                Ok(()) => scoped(ctx, &mut st, now, options, &scope, op),
                Err(e) => Err(e),
            }
        }
        Route::Public(op) => public_op(&st, &principal, &shared.base_url, op),
        _ => Err(ApiError::not_found()),
    };
    let resp = match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    drop(st);
    conditional(ctx, resp, &key, limit, extra, finish)
}

/// `ETag` on GETs; a matching `If-None-Match` gets `304` without spending the budget.
fn conditional(
    ctx: &Ctx,
    resp: Response,
    key: &str,
    limit: u64,
    extra: ExtraHeaders,
    finish: impl Fn(Response, &auth::RateView, &ExtraHeaders) -> Response,
) -> Response {
    let now = ctx.shared.clock.now();
    if ctx.method != Method::GET || resp.status() != 200 {
        let view = auth::spend(&mut ctx.shared.state(), now, key, limit);
        return finish(resp, &view, &extra);
    }
    let (parts, body) = resp.into_parts();
    // Bodies here are JSON we built in memory; reading them back cannot block.
    let bytes = futures_util::FutureExt::now_or_never(axum::body::to_bytes(body, usize::MAX))
        .and_then(Result::ok)
        .unwrap_or_default();
    let etag = format!("W/\"{}\"", hex::encode(sha2::Sha256::digest(&bytes)));
    let matches = ctx
        .headers
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',').any(|t| {
                t.trim() == etag || t.trim() == etag.trim_start_matches("W/") || t.trim() == "*"
            })
        });
    if matches {
        let view = auth::peek(&mut ctx.shared.state(), now, key, limit);
        let mut resp = super::http::empty(304);
        set_header(&mut resp, "etag", &etag);
        return finish(resp, &view, &extra);
    }
    let view = auth::spend(&mut ctx.shared.state(), now, key, limit);
    let mut resp = Response::from_parts(parts, axum::body::Body::from(bytes));
    set_header(&mut resp, "etag", &etag);
    set_header(
        &mut resp,
        "cache-control",
        "private, max-age=60, s-maxage=60",
    );
    set_header(
        &mut resp,
        "vary",
        "Accept, Authorization, Cookie, X-GitHub-OTP",
    );
    finish(resp, &view, &extra)
}

fn public_op(
    st: &State,
    principal: &Principal,
    base: &str,
    op: PublicOp,
) -> Result<Response, ApiError> {
    match op {
        PublicOp::LatestRelease => releases::latest(st, base)
            .map(|v| json(200, &v))
            .ok_or_else(ApiError::not_found),
        PublicOp::ReleaseByTag(tag) => releases::by_tag(st, base, &tag)
            .map(|v| json(200, &v))
            .ok_or_else(ApiError::not_found),
        PublicOp::ListReleases => Ok(json(200, &releases::list(st, base))),
        PublicOp::Repo(scope) => {
            if !auth::can_see(st, principal, &scope) {
                return Err(ApiError::not_found());
            }
            let Scope::Repo { owner, repo } = &scope else {
                return Err(ApiError::not_found());
            };
            let entry = st
                .repos
                .get(&(owner.clone(), repo.clone()))
                .ok_or_else(ApiError::not_found)?;
            let admin = match principal {
                Principal::Classic { admin, .. } => *admin,
                Principal::FineGrained { permissions, .. }
                | Principal::Installation { permissions, .. } => permissions
                    .get("administration")
                    .is_some_and(|l| l == "write"),
                Principal::Anonymous => false,
            };
            let mut v = json!({
                "id": entry.id,
                "node_id": format!("R_{}", entry.id),
                "name": repo,
                "full_name": format!("{owner}/{repo}"),
                "private": entry.private,
                "visibility": if entry.private { "private" } else { "public" },
                "owner": {"login": owner, "type": if st.orgs.contains_key(owner) { "Organization" } else { "User" }},
                "html_url": format!("{base}/{owner}/{repo}"),
                "url": format!("{base}/api/v3/repos/{owner}/{repo}"),
            });
            if !matches!(principal, Principal::Anonymous) {
                v["permissions"] = json!({"admin": admin, "maintain": admin, "push": true, "triage": true, "pull": true});
            }
            Ok(json(200, &v))
        }
        PublicOp::Root => Ok(json(
            200,
            &json!({
                "current_user_url": format!("{base}/api/v3/user"),
                "organization_url": format!("{base}/api/v3/orgs/{{org}}"),
                "repository_url": format!("{base}/api/v3/repos/{{owner}}/{{repo}}"),
                "rate_limit_url": format!("{base}/api/v3/rate_limit"),
            }),
        )),
        PublicOp::Meta => Ok(json(
            200,
            &json!({
                "verifiable_password_authentication": false,
                "installed_version": GHES_VERSION,
            }),
        )),
        PublicOp::Org(scope) => {
            let Scope::Org(org) = &scope else {
                return Err(ApiError::not_found());
            };
            let entry = st.orgs.get(org).ok_or_else(ApiError::not_found)?;
            Ok(json(
                200,
                &json!({
                    "login": org,
                    "id": entry.id,
                    "node_id": format!("O_{}", entry.id),
                    "url": format!("{base}/api/v3/orgs/{org}"),
                    "html_url": format!("{base}/{org}"),
                    "type": "Organization",
                }),
            ))
        }
        PublicOp::User => match principal {
            Principal::Anonymous => Err(ApiError::new(401, "Requires authentication")),
            Principal::Installation { .. } => {
                Err(ApiError::new(403, "Resource not accessible by integration"))
            }
            _ => Ok(json(
                200,
                &json!({"login": "emulator-admin", "id": 1, "type": "User", "site_admin": false}),
            )),
        },
    }
}

fn app_op(ctx: &Ctx, st: &mut State, now: OffsetDateTime, op: AppOp) -> Response {
    let app_id = match auth::verify_app_jwt(st, now, &ctx.headers) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let Some(app) = st.apps.get(&app_id).cloned() else {
        return ApiError::new(401, "Integration not found").into_response();
    };
    let installation_json = |i: &super::state::Installation| {
        json!({
            "id": i.id,
            "app_id": app_id,
            "account": {"login": i.account, "type": "Organization"},
            "target_type": "Organization",
            "permissions": i.permissions,
            "repository_selection": "all",
        })
    };
    match op {
        AppOp::App => json(
            200,
            &json!({"id": app_id, "slug": format!("emulated-app-{app_id}"),
                "name": format!("Emulated App {app_id}")}),
        ),
        AppOp::Installations => json(
            200,
            &Value::Array(app.installations.iter().map(installation_json).collect()),
        ),
        AppOp::InstallationFor(scope) => {
            let account = match &scope {
                Scope::Repo { owner, .. } => owner.clone(),
                Scope::Org(o) => o.clone(),
                Scope::Enterprise(e) => e.clone(),
            };
            match app.installations.iter().find(|i| i.account == account) {
                Some(i) if st.scope_exists(&scope) => json(200, &installation_json(i)),
                _ => ApiError::not_found().into_response(),
            }
        }
        AppOp::AccessToken(id) => {
            let Some(inst) = app.installations.iter().find(|i| i.id == id) else {
                return ApiError::not_found().into_response();
            };
            let (token, expires_at) = auth::mint_installation_token(
                st,
                now,
                TokenKind::Installation {
                    account: inst.account.clone(),
                    permissions: inst.permissions.clone(),
                },
            );
            json(
                201,
                &json!({
                    "token": token,
                    "expires_at": super::clock::format_seconds(expires_at),
                    "permissions": inst.permissions,
                    "repository_selection": "all",
                }),
            )
        }
    }
}

pub(crate) fn runner_json(
    r: &RunnerEntry,
    now: OffsetDateTime,
    options: &EmulatorOptions,
) -> Value {
    let mut v = json!({
        "id": r.id,
        "name": r.name,
        "os": r.os,
        "status": if runner_service::online(r, now, options) { "online" } else { "offline" },
        "busy": r.busy_job.is_some(),
        "ephemeral": r.ephemeral,
        "labels": labels_json(r),
    });
    if !matches!(r.scope, Scope::Repo { .. }) {
        v["runner_group_id"] = json!(r.group_id);
    }
    v
}

fn labels_json(r: &RunnerEntry) -> Value {
    Value::Array(
        r.labels
            .iter()
            .map(|l| {
                json!({"id": l.id, "name": l.name,
                    "type": if l.kind == LabelKind::ReadOnly { "read-only" } else { "custom" }})
            })
            .collect(),
    )
}

fn labels_response(r: &RunnerEntry) -> Response {
    json(
        200,
        &json!({"total_count": r.labels.len(), "labels": labels_json(r)}),
    )
}

#[derive(Debug, Deserialize)]
struct LabelsBody {
    labels: Option<Vec<String>>,
}

fn validate_labels(labels: &[String], allow_empty: bool) -> Result<(), ApiError> {
    if labels.is_empty() && !allow_empty {
        return Err(ApiError::validation(
            "Validation Failed: `labels` must contain at least one label",
        ));
    }
    if labels.len() > 100 {
        return Err(ApiError::validation(
            "Validation Failed: a runner can have at most 100 labels",
        ));
    }
    if let Some(bad) = labels
        .iter()
        .find(|l| l.trim().is_empty() || l.len() > 256 || l.contains(','))
    {
        return Err(ApiError::validation(&format!(
            "Validation Failed: invalid label name `{bad}`"
        )));
    }
    Ok(())
}

fn scoped(
    ctx: &Ctx,
    st: &mut State,
    now: OffsetDateTime,
    options: &EmulatorOptions,
    scope: &Scope,
    op: Op,
) -> Result<Response, ApiError> {
    let base = ctx.shared.base_url.clone();
    let runner_in_scope = |st: &State, id: u64| -> Result<(), ApiError> {
        match st.runners.get(&id) {
            Some(r) if &r.scope == scope => Ok(()),
            _ => Err(ApiError::not_found()),
        }
    };
    match op {
        Op::RegistrationToken | Op::RemoveToken => {
            let kind = if matches!(op, Op::RegistrationToken) {
                TokenKind::Registration(scope.clone())
            } else {
                TokenKind::Remove(scope.clone())
            };
            let (token, expires_at) = auth::mint_runner_token(st, now, kind);
            Ok(json(
                201,
                &json!({"token": token, "expires_at": format_millis(expires_at)}),
            ))
        }
        Op::List => {
            let per_page = ctx
                .query
                .get("per_page")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(30)
                .clamp(1, 100);
            let page = ctx
                .query
                .get("page")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(1)
                .max(1);
            let name = ctx.query.get("name");
            let all: Vec<Value> = st
                .runners
                .values()
                .filter(|r| &r.scope == scope)
                .filter(|r| name.is_none_or(|n| r.name.eq_ignore_ascii_case(n)))
                .map(|r| runner_json(r, now, options))
                .collect();
            let total = all.len();
            let items: Vec<Value> = all
                .into_iter()
                .skip((page - 1) * per_page)
                .take(per_page)
                .collect();
            let mut resp = json(200, &json!({"total_count": total, "runners": items}));
            let last = total.div_ceil(per_page).max(1);
            if last > 1 {
                let prefix = match scope {
                    Scope::Repo { owner, repo } => {
                        let id = st
                            .repos
                            .get(&(owner.clone(), repo.clone()))
                            .map(|r| r.id)
                            .unwrap_or(0);
                        format!("/repositories/{id}")
                    }
                    Scope::Org(o) => {
                        let id = st.orgs.get(o).map(|o| o.id).unwrap_or(0);
                        format!("/organizations/{id}")
                    }
                    Scope::Enterprise(e) => format!("/enterprises/{e}"),
                };
                // GitHub keeps the request's parameters in their order and sets `page`.
                let sent: Vec<(String, String)> =
                    url::form_urlencoded::parse(ctx.raw_query.as_bytes())
                        .into_owned()
                        .collect();
                let link = |p: usize| {
                    let mut q = url::form_urlencoded::Serializer::new(String::new());
                    let mut has_page = false;
                    for (k, v) in &sent {
                        if k == "page" {
                            has_page = true;
                            q.append_pair("page", &p.to_string());
                        } else {
                            q.append_pair(k, v);
                        }
                    }
                    if !has_page {
                        q.append_pair("page", &p.to_string());
                    }
                    format!("<{base}/api/v3{prefix}/actions/runners?{}>", q.finish())
                };
                let mut rels = Vec::new();
                if page > 1 {
                    rels.push(format!("{}; rel=\"prev\"", link(page - 1)));
                }
                if page < last {
                    rels.push(format!("{}; rel=\"next\"", link(page + 1)));
                    rels.push(format!("{}; rel=\"last\"", link(last)));
                }
                if page > 1 {
                    rels.push(format!("{}; rel=\"first\"", link(1)));
                }
                set_header(&mut resp, "link", &rels.join(", "));
            }
            Ok(resp)
        }
        Op::Get(id) => {
            runner_in_scope(st, id)?;
            let r = st.runners.get(&id).ok_or_else(ApiError::not_found)?;
            Ok(json(200, &runner_json(r, now, options)))
        }
        Op::Delete(id) => {
            runner_in_scope(st, id)?;
            let r = st.runners.get(&id).ok_or_else(ApiError::not_found)?;
            if r.busy_job.is_some() {
                return Err(ApiError::validation(&format!(
                    "Bad request - Runner \"{}\" is still running a job\"",
                    r.name
                )));
            }
            st.remove_runner(id);
            ctx.shared.changed.notify_waiters();
            Ok(super::http::empty(204))
        }
        Op::Downloads => Ok(json(200, &releases::downloads(st, &base, scope))),
        Op::Jit => runner_service::generate_jitconfig(ctx, st, now, options, scope),
        Op::ListLabels(id) => {
            runner_in_scope(st, id)?;
            let r = st.runners.get(&id).ok_or_else(ApiError::not_found)?;
            Ok(labels_response(r))
        }
        Op::AddLabels(id) | Op::SetLabels(id) => {
            runner_in_scope(st, id)?;
            let body: LabelsBody = ctx.json_body()?;
            let Some(labels) = body.labels else {
                return Err(ApiError::validation(
                    "Invalid request.\n\n\"labels\" wasn't supplied.",
                ));
            };
            let set = matches!(op, Op::SetLabels(_));
            validate_labels(&labels, set)?;
            let new: Vec<_> = labels
                .iter()
                .map(|l| st.label(l.trim(), LabelKind::Custom))
                .collect();
            let r = st.runners.get_mut(&id).ok_or_else(ApiError::not_found)?;
            if set {
                r.labels.retain(|l| l.kind == LabelKind::ReadOnly);
            }
            for l in new {
                if !r
                    .labels
                    .iter()
                    .any(|x| x.name.eq_ignore_ascii_case(&l.name))
                {
                    r.labels.push(l);
                }
            }
            let resp = labels_response(r);
            ctx.shared.changed.notify_waiters();
            Ok(resp)
        }
        Op::RemoveAllLabels(id) => {
            runner_in_scope(st, id)?;
            let r = st.runners.get_mut(&id).ok_or_else(ApiError::not_found)?;
            r.labels.retain(|l| l.kind == LabelKind::ReadOnly);
            Ok(labels_response(r))
        }
        Op::RemoveLabel(id, name) => {
            runner_in_scope(st, id)?;
            let r = st.runners.get_mut(&id).ok_or_else(ApiError::not_found)?;
            let Some(pos) = r
                .labels
                .iter()
                .position(|l| l.name.eq_ignore_ascii_case(&name))
            else {
                return Err(ApiError::not_found());
            };
            if r.labels[pos].kind == LabelKind::ReadOnly {
                return Err(ApiError::validation(&format!(
                    "Validation Failed: the label `{name}` is read-only"
                )));
            }
            r.labels.remove(pos);
            Ok(labels_response(r))
        }
        Op::ListGroups => {
            let groups: Vec<Value> = st
                .groups(scope)
                .iter()
                .map(|g| group_json(&base, scope, g))
                .collect();
            Ok(json(
                200,
                &json!({"total_count": groups.len(), "runner_groups": groups}),
            ))
        }
        Op::GroupRunners(id) => {
            if !st.groups(scope).iter().any(|g| g.id == id) {
                return Err(ApiError::not_found());
            }
            let runners: Vec<Value> = st
                .runners
                .values()
                .filter(|r| &r.scope == scope && r.group_id == id)
                .map(|r| runner_json(r, now, options))
                .collect();
            Ok(json(
                200,
                &json!({"total_count": runners.len(), "runners": runners}),
            ))
        }
        Op::GetGroup(id) => st
            .groups(scope)
            .iter()
            .find(|g| g.id == id)
            .map(|g| json(200, &group_json(&base, scope, g)))
            .ok_or_else(ApiError::not_found),
    }
}

fn group_json(base: &str, scope: &Scope, g: &super::state::RunnerGroup) -> Value {
    let prefix = scope.api_prefix();
    json!({
        "id": g.id,
        "name": g.name,
        "visibility": g.visibility,
        "default": g.default,
        "runners_url": format!("{base}/api/v3{prefix}/actions/runner-groups/{}/runners", g.id),
        "inherited": false,
        "allows_public_repositories": g.allows_public_repositories,
        "restricted_to_workflows": false,
        "selected_workflows": [],
        "workflow_restrictions_read_only": false,
    })
}
