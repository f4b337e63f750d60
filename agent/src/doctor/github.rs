//! GitHub, through the proxy the agent would use: the API answers, the credentials are valid and
//! allowed to manage runners in the configured scope, a registration token can be minted, the
//! runner group exists, and the host clock agrees with GitHub's `Date`. With release dates from
//! the API it also reports, per runner with `disable_update`, the days left in GitHub's 30-day
//! update window (findings of the `runner` family).
//!
//! Every request shares one deadline ([`super::Environment::network_budget`]), so an unreachable
//! GitHub costs at most that long. Minting a registration token is harmless (it expires after an
//! hour and registers nothing by itself), and it is the only proof that registration will work,
//! so doctor does it; the token is registered for redaction and dropped.

use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

use super::{DoctorError, Family, Finding, Outcome};
use crate::config::{Auth, Config, Scope, Version};

const F: Family = Family::Github;

/// Skew at which tokens and App JWTs start to fail.
pub const SKEW_FAIL_SECS: i64 = 60;
pub const SKEW_WARN_SECS: i64 = 10;
/// `--disableupdate` runners must update within 30 days of a newer release.
pub const UPDATE_WINDOW_DAYS: i64 = 30;

/// What the github family needs to know besides the configuration.
pub struct Inputs<'a> {
    pub cfg: Option<&'a Config>,
    pub offline: bool,
    pub budget: Duration,
    /// Run the github family itself.
    pub github: bool,
    /// Compute the runner update windows (`runner` family findings).
    pub update_windows: bool,
}

pub async fn check(inputs: Inputs<'_>) -> Result<Vec<Finding>, DoctorError> {
    let Some(cfg) = inputs.cfg else {
        return Ok(vec![Finding::skip(
            F,
            "github.api",
            "no configuration: nothing to check against",
        )]);
    };
    if inputs.offline {
        return Ok(vec![Finding::skip(
            F,
            "github.api",
            "`--offline`: network checks skipped",
        )]);
    }
    let deadline = Instant::now() + inputs.budget;
    let client = reqwest::Client::builder()
        .user_agent(concat!(
            "runner-agent/",
            env!("CARGO_PKG_VERSION"),
            " (doctor)"
        ))
        .connect_timeout(inputs.budget)
        .timeout(inputs.budget)
        .build()
        .map_err(DoctorError::HttpClient)?;
    let mut gh = Session {
        client,
        api: cfg.github.api_url.as_str().trim_end_matches('/').to_owned(),
        deadline,
        budget: inputs.budget,
        token: None,
    };
    let mut findings = Vec::new();
    if inputs.github {
        findings.extend(github_findings(&mut gh, cfg).await);
    }
    if inputs.update_windows {
        findings.extend(update_window_findings(&gh, cfg).await);
    }
    Ok(findings)
}

/// The github family proper; leaves the session's token set when credentials work.
async fn github_findings(gh: &mut Session, cfg: &Config) -> Vec<Finding> {
    let mut findings = Vec::new();
    let prefix = cfg.github.scope.api_prefix();

    // Credentials.
    match credentials(gh, &cfg.github.auth).await {
        Ok(Some(token)) => gh.token = Some(token),
        Ok(None) => {
            findings.push(Finding::skip(
                F,
                "github.auth",
                "a registration token is configured: it is used as is and cannot be checked without spending it",
            ));
        }
        Err(finding) => {
            let unreachable = finding.id == "github.api";
            findings.push(finding);
            if unreachable {
                return findings;
            }
        }
    }

    // Reachability, authentication, permission and clock, from one request.
    let list = gh
        .get(&format!("{prefix}/actions/runners?per_page=1"))
        .await;
    let response = match list {
        Ok(response) => response,
        Err(err) => {
            findings.push(unreachable_finding(&gh.api, &err, gh.budget));
            return findings;
        }
    };
    findings.push(Finding::pass(
        F,
        "github.api",
        format!("`{}` answered {} in time", gh.api, response.status),
    ));
    if let Some(date) = &response.date {
        findings.push(clock_finding(date, response.received));
    }
    if gh.token.is_some() {
        findings.extend(permission_findings(&cfg.github.scope, &response));
        if response.status.is_success() {
            findings.push(registration_token_finding(gh, &prefix).await);
            if let Scope::Org { .. } | Scope::Enterprise { .. } = cfg.github.scope {
                findings.extend(runner_group_findings(gh, cfg, &prefix).await);
            }
            if let Scope::Repo { owner, repo } = &cfg.github.scope {
                if let Some(finding) = public_repo_finding(gh, owner, repo).await {
                    findings.push(finding);
                }
            }
        }
    }
    findings
}

struct Session {
    client: reqwest::Client,
    api: String,
    deadline: Instant,
    budget: Duration,
    token: Option<String>,
}

struct Answer {
    status: reqwest::StatusCode,
    date: Option<String>,
    received: SystemTime,
    headers: reqwest::header::HeaderMap,
    body: String,
}

#[derive(Debug)]
enum NetError {
    /// The shared deadline passed.
    Deadline,
    Request(reqwest::Error),
}

impl std::fmt::Display for NetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetError::Deadline => f.write_str("no answer in time"),
            NetError::Request(err) => {
                // reqwest's own text repeats the URL; the causes say what went wrong.
                let mut causes = Vec::new();
                let mut source = std::error::Error::source(err);
                while let Some(inner) = source {
                    causes.push(inner.to_string());
                    source = inner.source();
                }
                let text = if causes.is_empty() {
                    err.to_string()
                } else {
                    causes.join(": ")
                };
                f.write_str(&crate::redact::redact(&text))
            }
        }
    }
}

impl Session {
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Answer, NetError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(NetError::Deadline);
        }
        let mut request = request
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let work = async {
            let response = request.send().await.map_err(NetError::Request)?;
            let received = SystemTime::now();
            let status = response.status();
            let headers = response.headers().clone();
            let date = headers
                .get(reqwest::header::DATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response.text().await.map_err(NetError::Request)?;
            Ok(Answer {
                status,
                date,
                received,
                headers,
                body,
            })
        };
        match tokio::time::timeout(left, work).await {
            // reqwest's own timeout (the same budget) may fire first under load: same meaning.
            Ok(Err(NetError::Request(err))) if err.is_timeout() => Err(NetError::Deadline),
            Ok(result) => result,
            Err(_) => Err(NetError::Deadline),
        }
    }

    async fn get(&self, path: &str) -> Result<Answer, NetError> {
        self.send(self.client.get(format!("{}{path}", self.api)))
            .await
    }

    async fn post(&self, path: &str) -> Result<Answer, NetError> {
        self.send(self.client.post(format!("{}{path}", self.api)))
            .await
    }
}

fn unreachable_finding(api: &str, err: &NetError, budget: Duration) -> Finding {
    let proxy = ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"]
        .iter()
        .find_map(|name| std::env::var(name).ok().map(|v| format!("{name}={v}")));
    let via = match &proxy {
        Some(proxy) => format!(" (through proxy `{}`)", crate::redact::redact(proxy)),
        None => " (no proxy set)".to_owned(),
    };
    let detail = match err {
        NetError::Deadline => format!(
            "`{api}` did not answer within {} ms{via}",
            budget.as_millis()
        ),
        NetError::Request(_) => format!("cannot reach `{api}`{via}: {err}"),
    };
    Finding::fail(
        F,
        "github.api",
        detail,
        "check DNS, firewall and proxy: `curl -sv https://api.github.com/` as the runner user; a proxy must be set as `https_proxy=http://HOST:PORT` (with the scheme) in the unit's environment",
    )
}

/// The bearer token to test, `None` for a bare registration token, or the finding that says why
/// there is none.
async fn credentials(gh: &mut Session, auth: &Auth) -> Result<Option<String>, Finding> {
    match auth {
        Auth::RegistrationToken { .. } => Ok(None),
        Auth::Pat { file } => {
            let token = read_secret(&file.resolved)?;
            Ok(Some(token))
        }
        Auth::App {
            app_id,
            installation_id,
            private_key_file,
        } => {
            let pem = read_secret(&private_key_file.resolved)?;
            let jwt = app_jwt(*app_id, &pem).map_err(|err| {
                Finding::fail(
                    F,
                    "github.auth",
                    format!(
                        "cannot sign an App JWT with `{}`: {err}",
                        private_key_file.configured.display()
                    ),
                    "download a new private key for the App (Settings → Developer settings → GitHub Apps → Private keys)",
                )
            })?;
            crate::redact::register(&jwt);
            gh.token = Some(jwt);
            let answer = gh
                .post(&format!(
                    "/app/installations/{installation_id}/access_tokens"
                ))
                .await;
            gh.token = None;
            let answer = answer.map_err(|err| unreachable_finding(&gh.api, &err, gh.budget))?;
            if answer.status.as_u16() != 201 {
                return Err(Finding::fail(
                    F,
                    "github.auth",
                    format!(
                        "App {app_id} cannot get a token for installation {installation_id}: {} {}",
                        answer.status,
                        message_of(&answer.body)
                    ),
                    "check `app_id`, `installation_id` and the private key; a skewed clock also breaks App JWTs",
                ));
            }
            #[derive(Deserialize)]
            struct Token {
                token: String,
            }
            let token: Token = serde_json::from_str(&answer.body).map_err(|err| {
                Finding::fail(
                    F,
                    "github.auth",
                    format!("unexpected installation token answer: {err}"),
                    "is `api_url` really a GitHub API?",
                )
            })?;
            crate::redact::register(&token.token);
            Ok(Some(token.token))
        }
    }
}

fn read_secret(path: &std::path::Path) -> Result<String, Finding> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            crate::redact::register(&text);
            let text = text.trim().to_owned();
            if text.is_empty() {
                Err(Finding::fail(
                    F,
                    "github.auth",
                    format!("secret file `{}` is empty", path.display()),
                    "write the token into it (mode 0600)",
                ))
            } else {
                Ok(text)
            }
        }
        Err(err) => Err(Finding::fail(
            F,
            "github.auth",
            format!("cannot read secret file `{}`: {err}", path.display()),
            "doctor reads it as root; check the path in `[github]`",
        )),
    }
}

fn app_jwt(app_id: u64, pem: &str) -> Result<String, jsonwebtoken::errors::Error> {
    #[derive(serde::Serialize)]
    struct Claims {
        iat: i64,
        exp: i64,
        iss: String,
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = Claims {
        iat: now - 60,
        exp: now + 540,
        iss: app_id.to_string(),
    };
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes())?;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &key,
    )
}

fn message_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .map(|m| format!("({m})"))
        .unwrap_or_default()
}

/// The classic PAT scope that manages runners in `scope`.
pub fn needed_scope(scope: &Scope) -> &'static str {
    match scope {
        Scope::Repo { .. } => "repo",
        Scope::Org { .. } => "admin:org",
        Scope::Enterprise { .. } => "manage_runners:enterprise",
    }
}

/// The fine-grained permission that manages runners in `scope`.
pub fn needed_permission(scope: &Scope) -> &'static str {
    match scope {
        Scope::Repo { .. } => "administration: write",
        Scope::Org { .. } => "self_hosted_runners: write (organization)",
        Scope::Enterprise { .. } => "manage_runners:enterprise",
    }
}

fn permission_findings(scope: &Scope, answer: &Answer) -> Vec<Finding> {
    let header = |name: &str| {
        answer
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let scopes = header("x-oauth-scopes");
    let status = answer.status.as_u16();
    let path = scope.api_prefix();
    if status == 401 {
        return vec![Finding::fail(
            F,
            "github.auth",
            format!("the token is rejected: {} {}", answer.status, message_of(&answer.body)),
            "the token is wrong, expired or revoked: create a new one and write it into the secret file",
        )];
    }
    let mut findings = vec![Finding::pass(F, "github.auth", "the token is valid")];
    let need = needed_scope(scope);
    let kind = if scopes.is_some() {
        "classic PAT"
    } else {
        "token"
    };
    if let Some(scopes) = &scopes {
        let have: Vec<&str> = scopes
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let ok = have.contains(&need)
            || (need == "admin:org" && have.contains(&"manage_runners:org"))
            || (need == "manage_runners:enterprise" && have.contains(&"admin:enterprise"));
        if !ok {
            findings.push(Finding::fail(
                F,
                "github.permission",
                format!(
                    "the classic PAT has scopes `{}`, managing runners of `{path}` needs `{need}`",
                    if have.is_empty() { "(none)".to_owned() } else { have.join(", ") }
                ),
                format!("add the `{need}` scope to the token (GitHub → Settings → Developer settings → Personal access tokens)"),
            ));
            return findings;
        }
    }
    if status == 403 || status == 404 {
        let accepted = header("x-accepted-github-permissions")
            .or_else(|| header("x-accepted-oauth-scopes"))
            .unwrap_or_else(|| needed_permission(scope).to_owned());
        findings.push(Finding::fail(
            F,
            "github.permission",
            format!(
                "the {kind} may not list the runners of `{path}`: {status} {}",
                message_of(&answer.body)
            ),
            format!("grant the token `{accepted}` on `{path}` (or install the App there)"),
        ));
    } else if answer.status.is_success() {
        let via = match &scopes {
            Some(scopes) => format!(" (classic PAT scopes: {scopes})"),
            None => String::new(),
        };
        findings.push(Finding::pass(
            F,
            "github.permission",
            format!("the {kind} may manage the runners of `{path}`{via}"),
        ));
    } else {
        findings.push(Finding::fail(
            F,
            "github.permission",
            format!(
                "listing the runners of `{path}` gave {status} {}",
                message_of(&answer.body)
            ),
            "retry later; look at https://www.githubstatus.com/",
        ));
    }
    findings
}

/// `github.clock`: local time against GitHub's `Date` header.
pub fn clock_finding(date: &str, local: SystemTime) -> Finding {
    let Ok(remote) = httpdate::parse_http_date(date) else {
        return Finding::warn(
            F,
            "github.clock",
            format!("cannot parse the `Date` header `{date}`"),
            "compare the clock by hand: `date -u`",
        );
    };
    let skew = match local.duration_since(remote) {
        // `Date` has whole seconds: round, so 299.6 s reads as the 300 s it is.
        Ok(ahead) => ahead.as_secs_f64().round() as i64,
        Err(behind) => -(behind.duration().as_secs_f64().round() as i64),
    };
    let text = if skew >= 0 {
        format!("this host's clock is {skew} s ahead of GitHub's `Date`")
    } else {
        format!("this host's clock is {} s behind GitHub's `Date`", -skew)
    };
    if skew.abs() >= SKEW_FAIL_SECS {
        Finding::fail(
            F,
            "github.clock",
            format!("{text}: App JWTs and runner tokens fail"),
            "synchronise the clock: `systemctl enable --now systemd-timesyncd` (or chrony), then `timedatectl`",
        )
    } else if skew.abs() >= SKEW_WARN_SECS {
        Finding::warn(
            F,
            "github.clock",
            text,
            "synchronise the clock: `systemctl enable --now systemd-timesyncd` (or chrony)",
        )
    } else {
        Finding::pass(
            F,
            "github.clock",
            format!("{text} (within {SKEW_WARN_SECS} s)"),
        )
    }
}

async fn registration_token_finding(gh: &Session, prefix: &str) -> Finding {
    match gh.post(&format!("{prefix}/actions/runners/registration-token")).await {
        Ok(answer) if answer.status.as_u16() == 201 => {
            #[derive(Deserialize)]
            struct Token {
                token: String,
                expires_at: Option<String>,
            }
            match serde_json::from_str::<Token>(&answer.body) {
                Ok(token) => {
                    crate::redact::register(&token.token);
                    Finding::pass(
                        F,
                        "github.token",
                        format!(
                            "a registration token was minted (expires {})",
                            token.expires_at.unwrap_or_else(|| "in an hour".to_owned())
                        ),
                    )
                }
                Err(err) => Finding::fail(
                    F,
                    "github.token",
                    format!("unexpected registration-token answer: {err}"),
                    "is `api_url` really a GitHub API?",
                ),
            }
        }
        Ok(answer) => Finding::fail(
            F,
            "github.token",
            format!(
                "minting a registration token gave {} {}",
                answer.status,
                message_of(&answer.body)
            ),
            "the token may read runners but not create them: it needs write access (`administration: write` for a repo, `self_hosted_runners: write` for an org)",
        ),
        Err(err) => unreachable_finding(&gh.api, &err, gh.budget),
    }
}

async fn runner_group_findings(gh: &Session, cfg: &Config, prefix: &str) -> Vec<Finding> {
    let mut wanted: Vec<String> = cfg
        .runners
        .iter()
        .map(|r| r.group.clone().unwrap_or_else(|| "Default".to_owned()))
        .collect();
    wanted.sort();
    wanted.dedup();
    if wanted.is_empty() {
        return Vec::new();
    }
    let answer = match gh
        .get(&format!("{prefix}/actions/runner-groups?per_page=100"))
        .await
    {
        Ok(answer) if answer.status.is_success() => answer,
        Ok(answer) => {
            return vec![Finding::warn(
                F,
                "github.group",
                format!(
                    "cannot list runner groups: {} {}",
                    answer.status,
                    message_of(&answer.body)
                ),
                "the token needs read access to the organization's runner groups",
            )]
        }
        Err(err) => return vec![unreachable_finding(&gh.api, &err, gh.budget)],
    };
    #[derive(Deserialize)]
    struct Group {
        name: String,
        #[serde(default)]
        allows_public_repositories: bool,
    }
    #[derive(Deserialize)]
    struct Groups {
        runner_groups: Vec<Group>,
    }
    let groups = serde_json::from_str::<Groups>(&answer.body)
        .map(|g| g.runner_groups)
        .unwrap_or_default();
    wanted
        .iter()
        .map(|name| match groups.iter().find(|g| g.name.eq_ignore_ascii_case(name)) {
            None => Finding::fail(
                F,
                "github.group",
                format!("runner group `{name}` does not exist"),
                "create it (Organization settings → Actions → Runner groups) or fix `group` in the configuration",
            )
            .subject(name),
            Some(group) if group.allows_public_repositories => Finding::pass(
                F,
                "github.group",
                format!("runner group `{name}` exists and public repositories may use it"),
            )
            .subject(name),
            Some(_) => Finding::pass(
                F,
                "github.group",
                format!(
                    "runner group `{name}` exists; public repositories may not use it (enable \"Allow public repositories\" if they should)"
                ),
            )
            .subject(name),
        })
        .collect()
}

async fn public_repo_finding(gh: &Session, owner: &str, repo: &str) -> Option<Finding> {
    let answer = gh.get(&format!("/repos/{owner}/{repo}")).await.ok()?;
    if !answer.status.is_success() {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(&answer.body).ok()?;
    let private = value.get("private")?.as_bool()?;
    Some(if private {
        Finding::pass(F, "github.public", format!("`{owner}/{repo}` is private"))
    } else {
        Finding::warn(
            F,
            "github.public",
            format!("`{owner}/{repo}` is public: a pull request from anyone can run code on this host's hardware"),
            "require approval for outside contributors (Settings → Actions → Fork pull request workflows) or use ephemeral runners",
        )
    })
}

#[derive(Debug, Clone, Deserialize)]
struct Release {
    tag_name: String,
    published_at: Option<String>,
}

/// `runner.update-window`: per runner with `disable_update`, the days left before GitHub stops
/// sending it jobs (30 days after the first release newer than the installed one).
async fn update_window_findings(gh: &Session, cfg: &Config) -> Vec<Finding> {
    let pinned: Vec<_> = cfg.runners.iter().filter(|r| r.disable_update).collect();
    if pinned.is_empty() {
        return Vec::new();
    }
    let releases = match gh.get("/repos/actions/runner/releases?per_page=100").await {
        Ok(answer) if answer.status.is_success() => {
            serde_json::from_str::<Vec<Release>>(&answer.body).unwrap_or_default()
        }
        _ => Vec::new(),
    };
    let releases: Vec<(Version, time::OffsetDateTime)> = releases
        .iter()
        .filter_map(|r| {
            let version = r.tag_name.parse().ok()?;
            let at = time::OffsetDateTime::parse(
                r.published_at.as_deref()?,
                &time::format_description::well_known::Rfc3339,
            )
            .ok()?;
            Some((version, at))
        })
        .collect();
    let now = time::OffsetDateTime::now_utc();
    pinned
        .iter()
        .map(|runner| {
            let installed = super::runner::installed_version(&runner.dir);
            update_window_finding(&runner.name, installed, &releases, now)
        })
        .collect()
}

pub fn update_window_finding(
    runner: &str,
    installed: Option<Version>,
    releases: &[(Version, time::OffsetDateTime)],
    now: time::OffsetDateTime,
) -> Finding {
    let rf = Family::Runner;
    let id = "runner.update-window";
    let Some(installed) = installed else {
        return Finding::skip(rf, id, "no installed release to compare").subject(runner);
    };
    if releases.is_empty() {
        return Finding::skip(rf, id, "release dates unavailable from the API").subject(runner);
    }
    let first_newer = releases
        .iter()
        .filter(|(v, _)| *v > installed)
        .min_by_key(|(_, at)| *at);
    let Some((newer, at)) = first_newer else {
        return Finding::pass(rf, id, format!("{installed} is the newest release")).subject(runner);
    };
    let days_left = UPDATE_WINDOW_DAYS - (now - *at).whole_days();
    let latest = releases.iter().map(|(v, _)| *v).max().unwrap_or(*newer);
    let text = format!(
        "{installed} with `disable_update`: {newer} came out {} days ago",
        (now - *at).whole_days()
    );
    let hint =
        format!("pin `version = \"{latest}\"` (the agent updates it), or drop `disable_update`");
    if days_left <= 0 {
        Finding::fail(
            rf,
            id,
            format!("{text}: GitHub no longer sends it jobs"),
            hint,
        )
        .subject(runner)
    } else if days_left <= 7 {
        Finding::warn(
            rf,
            id,
            format!("{text}: {days_left} days left before GitHub stops sending it jobs"),
            hint,
        )
        .subject(runner)
    } else {
        let mut finding = Finding::pass(
            rf,
            id,
            format!("{text}: {days_left} days left in the update window"),
        );
        finding.outcome = Outcome::Pass;
        finding.subject(runner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_skew_thresholds() {
        // `Date` has whole seconds; so does this `now`.
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let date = httpdate::fmt_http_date(now);
        assert_eq!(clock_finding(&date, now).outcome, Outcome::Pass);
        let behind = httpdate::fmt_http_date(now + Duration::from_secs(300));
        let finding = clock_finding(&behind, now);
        assert_eq!(finding.outcome, Outcome::Fail);
        assert!(
            finding
                .detail
                .starts_with("this host's clock is 300 s behind"),
            "{}",
            finding.detail
        );
        let ahead = httpdate::fmt_http_date(now - Duration::from_secs(20));
        assert_eq!(clock_finding(&ahead, now).outcome, Outcome::Warn);
    }

    #[test]
    fn update_window_counts_from_the_first_newer_release() {
        let now = time::macros::datetime!(2026-11-23 06:00 UTC);
        let v = |s: &str| s.parse::<Version>().unwrap();
        let releases = vec![
            (v("2.330.0"), now - time::Duration::days(60)),
            (v("2.331.0"), now - time::Duration::days(25)),
            (v("2.332.0"), now - time::Duration::days(3)),
        ];
        let ok = update_window_finding("r", Some(v("2.332.0")), &releases, now);
        assert_eq!(ok.outcome, Outcome::Pass);
        let soon = update_window_finding("r", Some(v("2.330.0")), &releases, now);
        assert_eq!(soon.outcome, Outcome::Warn, "{soon:?}");
        assert!(soon.detail.contains("5 days left"), "{}", soon.detail);
        let late = update_window_finding("r", Some(v("2.329.0")), &releases, now);
        assert_eq!(late.outcome, Outcome::Fail);
        assert_eq!(
            late.hint.as_deref(),
            Some("pin `version = \"2.332.0\"` (the agent updates it), or drop `disable_update`")
        );
    }
}
