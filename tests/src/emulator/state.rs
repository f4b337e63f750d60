//! Everything the emulated GitHub knows, behind one mutex (never held across an await).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::path::PathBuf;

use bytes::Bytes;
use time::OffsetDateTime;

use super::faults::FaultEntry;

/// A runner scope: a repository, an organization or an enterprise. Names are case-insensitive
/// on GitHub; the emulator keeps them lowercased.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Repo { owner: String, repo: String },
    Org(String),
    Enterprise(String),
}

impl Scope {
    /// `octo/repo`, `octo`, `enterprises/slug`.
    pub fn parse(text: &str) -> Option<Scope> {
        let text = text.trim_matches('/').to_ascii_lowercase();
        let parts: Vec<&str> = text.split('/').collect();
        let ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        match parts.as_slice() {
            ["enterprises", slug] if ok(slug) => Some(Scope::Enterprise((*slug).to_string())),
            [owner, repo] if ok(owner) && ok(repo) => Some(Scope::Repo {
                owner: (*owner).to_string(),
                repo: (*repo).to_string(),
            }),
            [org] if ok(org) => Some(Scope::Org((*org).to_string())),
            _ => None,
        }
    }

    /// The path part of the web URL (`config.sh --url`).
    pub fn web_path(&self) -> String {
        format!("/{self}")
    }

    /// The REST prefix: `/repos/o/r`, `/orgs/o`, `/enterprises/e`.
    pub fn api_prefix(&self) -> String {
        match self {
            Scope::Repo { owner, repo } => format!("/repos/{owner}/{repo}"),
            Scope::Org(org) => format!("/orgs/{org}"),
            Scope::Enterprise(e) => format!("/enterprises/{e}"),
        }
    }

    pub(crate) fn kind_word(&self) -> &'static str {
        match self {
            Scope::Repo { .. } => "Repository",
            Scope::Org(_) => "Organization",
            Scope::Enterprise(_) => "Enterprise",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Repo { owner, repo } => write!(f, "{owner}/{repo}"),
            Scope::Org(org) => write!(f, "{org}"),
            Scope::Enterprise(e) => write!(f, "enterprises/{e}"),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RepoEntry {
    pub private: bool,
    pub id: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct RunnerGroup {
    pub id: u64,
    pub name: String,
    pub default: bool,
    pub allows_public_repositories: bool,
    pub visibility: String,
}

#[derive(Debug, Clone)]
pub(crate) struct OrgEntry {
    pub id: u64,
    pub groups: Vec<RunnerGroup>,
}

#[derive(Debug, Clone)]
pub(crate) struct EnterpriseEntry {
    pub groups: Vec<RunnerGroup>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RunnerEvent {
    Register,
    Remove,
}

#[derive(Debug, Clone)]
pub(crate) enum TokenKind {
    Classic {
        scopes: Vec<String>,
        admin: bool,
    },
    FineGrained {
        permissions: BTreeMap<String, String>,
        resources: Option<Vec<Scope>>,
    },
    Installation {
        account: String,
        permissions: BTreeMap<String, String>,
    },
    Registration(Scope),
    Remove(Scope),
    Tenant {
        scope: Scope,
        event: RunnerEvent,
    },
    RunnerAccess {
        runner_id: u64,
        client_id: String,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct TokenEntry {
    pub kind: TokenKind,
    pub expires_at: Option<OffsetDateTime>,
    /// What the token was minted from, to mint its replacement on rotation.
    pub spec: Option<super::PatSpec>,
}

#[derive(Debug, Clone)]
pub(crate) struct Installation {
    pub id: u64,
    pub account: String,
    pub permissions: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub(crate) struct AppEntry {
    pub public_key_pem: String,
    pub installations: Vec<Installation>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LabelKind {
    ReadOnly,
    Custom,
}

#[derive(Debug, Clone)]
pub(crate) struct Label {
    pub id: u64,
    pub name: String,
    pub kind: LabelKind,
}

#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub id: String,
    pub last_poll: OffsetDateTime,
    pub refresh_sent: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub id: u64,
    pub kind: &'static str,
    pub body: serde_json::Value,
}

#[derive(Debug, Clone)]
pub(crate) struct RunnerEntry {
    pub id: u64,
    pub name: String,
    pub scope: Scope,
    pub group_id: u64,
    pub version: String,
    pub os: String,
    pub labels: Vec<Label>,
    pub ephemeral: bool,
    pub disable_update: bool,
    pub client_id: String,
    pub public_key: String,
    pub last_seen: OffsetDateTime,
    pub session: Option<Session>,
    pub busy_job: Option<u64>,
    pub messages: VecDeque<Message>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    InProgress,
    Completed,
}

#[derive(Debug, Clone)]
pub(crate) struct JobEntry {
    pub id: u64,
    pub request_id: u64,
    pub scope: Scope,
    pub labels: Vec<String>,
    pub script: String,
    pub status: JobStatus,
    pub runner_id: Option<u64>,
    pub runner_name: Option<String>,
    pub result: Option<String>,
    pub exit_code: Option<i64>,
    pub output: Option<String>,
    pub cancel_requested: bool,
    pub queued_at: OffsetDateTime,
    /// The `PipelineAgentJobRequest` message that delivered it, and whether it was acked.
    pub message_id: Option<u64>,
    pub acked: bool,
    pub assigned_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone)]
pub(crate) enum AssetData {
    Bytes(Bytes),
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub(crate) struct AssetEntry {
    pub id: u64,
    pub name: String,
    pub platform: String,
    pub size: u64,
    pub sha256: String,
    pub with_digest: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct ReleaseEntry {
    pub id: u64,
    pub version: String,
    pub published_at: OffsetDateTime,
    pub body: String,
    pub assets: Vec<AssetEntry>,
}

#[derive(Debug, Clone)]
pub(crate) struct RateBucket {
    pub limit: u64,
    pub used: u64,
    pub reset_at: OffsetDateTime,
}

/// How often one route was asked for, and how many of those answers were `304`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RequestCount {
    pub count: u64,
    pub not_modified: u64,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub next_id: u64,
    pub repos: BTreeMap<(String, String), RepoEntry>,
    pub orgs: BTreeMap<String, OrgEntry>,
    pub enterprises: BTreeMap<String, EnterpriseEntry>,
    pub tokens: HashMap<String, TokenEntry>,
    pub apps: BTreeMap<u64, AppEntry>,
    pub runners: BTreeMap<u64, RunnerEntry>,
    pub label_ids: HashMap<String, u64>,
    pub jobs: BTreeMap<u64, JobEntry>,
    pub releases: Vec<ReleaseEntry>,
    pub objects: HashMap<String, AssetData>,
    pub object_tokens: HashMap<String, (String, OffsetDateTime)>,
    pub expected_version: Option<String>,
    pub expected_version_by_scope: HashMap<Scope, String>,
    pub deprecated_below: Option<String>,
    pub faults: Vec<FaultEntry>,
    pub rate: HashMap<String, RateBucket>,
    /// Secondary-limit points per token: (window start, points spent).
    pub points: HashMap<String, (OffsetDateTime, u64)>,
    pub counts: BTreeMap<String, RequestCount>,
}

impl State {
    pub(crate) fn new() -> State {
        State {
            // Ids start high enough to look like GitHub's and never collide with small literals.
            next_id: 100,
            ..State::default()
        }
    }

    pub(crate) fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(crate) fn scope_exists(&self, scope: &Scope) -> bool {
        match scope {
            Scope::Repo { owner, repo } => self.repos.contains_key(&(owner.clone(), repo.clone())),
            Scope::Org(o) => self.orgs.contains_key(o),
            Scope::Enterprise(e) => self.enterprises.contains_key(e),
        }
    }

    pub(crate) fn repo_private(&self, scope: &Scope) -> bool {
        match scope {
            Scope::Repo { owner, repo } => self
                .repos
                .get(&(owner.clone(), repo.clone()))
                .is_some_and(|r| r.private),
            _ => false,
        }
    }

    /// The runner groups ("pools") of a scope; repositories have only `Default`.
    pub(crate) fn groups(&self, scope: &Scope) -> Vec<RunnerGroup> {
        match scope {
            Scope::Repo { .. } => vec![default_group()],
            Scope::Org(o) => self
                .orgs
                .get(o)
                .map(|o| o.groups.clone())
                .unwrap_or_default(),
            Scope::Enterprise(e) => self
                .enterprises
                .get(e)
                .map(|e| e.groups.clone())
                .unwrap_or_default(),
        }
    }

    pub(crate) fn label_id(&mut self, name: &str) -> u64 {
        let key = name.to_ascii_lowercase();
        if let Some(id) = self.label_ids.get(&key) {
            return *id;
        }
        let id = self.id();
        self.label_ids.insert(key, id);
        id
    }

    pub(crate) fn label(&mut self, name: &str, kind: LabelKind) -> Label {
        Label {
            id: self.label_id(name),
            name: name.to_string(),
            kind,
        }
    }

    pub(crate) fn runner_by_name(&self, scope: &Scope, name: &str) -> Option<u64> {
        self.runners
            .values()
            .find(|r| &r.scope == scope && r.name.eq_ignore_ascii_case(name))
            .map(|r| r.id)
    }

    /// Deletes a registration the way GitHub does: its session and client id die with it, a job
    /// it was running fails.
    pub(crate) fn remove_runner(&mut self, id: u64) -> Option<RunnerEntry> {
        // Access tokens stay valid: the service answers their next use with
        // `TaskAgentNotFoundException`, as GitHub does for a deleted registration.
        let runner = self.runners.remove(&id)?;
        if let Some(job_id) = runner.busy_job {
            if let Some(job) = self.jobs.get_mut(&job_id) {
                if job.status != JobStatus::Completed {
                    job.status = JobStatus::Completed;
                    job.result = Some("failed".to_string());
                    job.output = Some(format!(
                        "The runner `{}` was deleted while running this job",
                        runner.name
                    ));
                }
            }
        }
        Some(runner)
    }
}

pub(crate) fn default_group() -> RunnerGroup {
    RunnerGroup {
        id: 1,
        name: "Default".to_string(),
        default: true,
        allows_public_repositories: true,
        visibility: "all".to_string(),
    }
}

/// Compares dotted versions numerically (`2.9.0 < 2.10.0`); a leading `v` is ignored.
pub(crate) fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let parse = |v: &str| -> Vec<u64> {
        v.trim_start_matches('v')
            .split('.')
            .map(|p| {
                p.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .unwrap_or(0)
            })
            .collect()
    };
    parse(a).cmp(&parse(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_like_github_urls() {
        assert_eq!(
            Scope::parse("Octo/Repo"),
            Some(Scope::Repo {
                owner: "octo".into(),
                repo: "repo".into()
            })
        );
        assert_eq!(Scope::parse("octo"), Some(Scope::Org("octo".into())));
        assert_eq!(
            Scope::parse("/enterprises/big/"),
            Some(Scope::Enterprise("big".into()))
        );
        assert_eq!(Scope::parse("a/b/c"), None);
        assert_eq!(Scope::parse(""), None);
    }

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(version_cmp("2.9.0", "2.10.0"), std::cmp::Ordering::Less);
        assert_eq!(
            version_cmp("v2.336.0", "2.336.0"),
            std::cmp::Ordering::Equal
        );
        assert_eq!(
            version_cmp("2.336.1", "2.336.0"),
            std::cmp::Ordering::Greater
        );
    }
}
