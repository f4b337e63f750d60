//! A GitHub emulator on loopback: the REST API for self-hosted runners (repo, org and enterprise
//! scopes), GitHub's auth and rate limits, runner releases and their downloads, the internal
//! runner service the `Runner.Listener` talks to, and a control API for tests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), runner_agent_tests::emulator::EmulatorError> {
//! use runner_agent_tests::emulator::{Emulator, EmulatorOptions, PatSpec};
//! let emu = Emulator::start(EmulatorOptions::default()).await?;
//! emu.create_repo("octo/repo", true)?;
//! let pat = emu.add_pat(PatSpec::classic(&["repo"]));
//! println!("{} {pat}", emu.api_url());
//! # Ok(()) }
//! ```
//!
//! The wire contract is `tests/PROTOCOL.md`.

mod auth;
mod clock;
mod control;
mod faults;
mod http;
pub mod keys;
mod releases;
mod rest;
mod runner_service;
mod state;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

pub use faults::{Fault, FaultRequest, HoldPoint, HoldRelease, RateLimitKind};
pub use keys::{app_jwt, generate_app_key, AppKey};
pub use state::{JobStatus, RequestCount, Scope};

use state::{State, TokenEntry, TokenKind};

/// Errors of the emulator library and its control operations.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("cannot listen on `{addr}`")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{scope}` is not a repository (`owner/repo`), organization or `enterprises/slug`")]
    InvalidScope { scope: String },
    #[error("the scope `{scope}` does not exist in the emulator")]
    UnknownScope { scope: String },
    #[error("the scope `{scope}` already exists")]
    ScopeExists { scope: String },
    #[error("the app public key is not an RSA public key in PEM form")]
    BadPublicKey {
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    #[error("cannot read the release asset `{path}`")]
    Asset {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("release `{version}` has no assets")]
    EmptyRelease { version: String },
    #[error("job `{id}` does not exist")]
    NoSuchJob { id: u64 },
    #[error("job `{id}` did not complete within {timeout:?}")]
    JobTimeout { id: u64, timeout: Duration },
    #[error("cannot generate an RSA key")]
    KeyGeneration,
    #[error("cannot start a runtime for the background emulator")]
    Runtime {
        #[source]
        source: std::io::Error,
    },
}

/// How the emulator behaves; the defaults are GitHub's.
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Longest wait of a runner's message long poll (GitHub: about 50 s; tests use 1-2 s).
    pub long_poll: Duration,
    /// Primary rate limit per token per hour.
    pub rate_limit: u64,
    /// Primary rate limit per hour for unauthenticated requests.
    pub unauthenticated_rate_limit: u64,
    /// A runner is online while it polled within this many seconds; a session dies after it.
    pub session_timeout_secs: i64,
    /// GitHub's secondary limit on REST points per token per minute (GET 1, other methods 5;
    /// GitHub: 900). `None` (the default) leaves it to injected faults.
    pub secondary_points_per_minute: Option<u64>,
    /// An injected primary rate limit resets after this many seconds instead of at the end of
    /// the hour's window (so a test can wait for a real reset without advancing the clock).
    pub exhausted_primary_reset_secs: Option<i64>,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        EmulatorOptions {
            port: 0,
            long_poll: Duration::from_secs(50),
            rate_limit: 5000,
            unauthenticated_rate_limit: 60,
            session_timeout_secs: 90,
            secondary_points_per_minute: None,
            exhausted_primary_reset_secs: None,
        }
    }
}

/// What kind of personal access token [`PatSpec`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatKind {
    #[default]
    Classic,
    FineGrained,
}

/// A personal access token to mint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PatSpec {
    #[serde(default)]
    pub kind: PatKind,
    /// Classic OAuth scopes (`repo`, `admin:org`, `manage_runners:enterprise`, ...).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Fine-grained permissions (`administration`, `organization_self_hosted_runners`) →
    /// `read` | `write`.
    #[serde(default)]
    pub permissions: BTreeMap<String, String>,
    /// Fine-grained: the orgs/users (`octo`) and repositories (`octo/repo`) the token may see;
    /// `None` = all.
    #[serde(default)]
    pub resources: Option<Vec<String>>,
    /// Lifetime in seconds; `None` = never expires.
    #[serde(default)]
    pub expires_in: Option<i64>,
    /// Whether the token's user administers the scopes (classic); `false` answers
    /// `Must have admin rights to Repository.`.
    #[serde(default = "yes")]
    pub admin: bool,
}

fn yes() -> bool {
    true
}

impl PatSpec {
    pub fn classic(scopes: &[&str]) -> PatSpec {
        PatSpec {
            kind: PatKind::Classic,
            scopes: scopes.iter().map(|s| (*s).to_string()).collect(),
            admin: true,
            ..PatSpec::default()
        }
    }

    pub fn fine_grained(permissions: &[(&str, &str)]) -> PatSpec {
        PatSpec {
            kind: PatKind::FineGrained,
            permissions: permissions
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            admin: true,
            ..PatSpec::default()
        }
    }
}

/// An installation of a GitHub App on an account (org or user).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstallationSpec {
    pub id: u64,
    pub account: String,
    #[serde(default)]
    pub permissions: BTreeMap<String, String>,
}

/// Where a release asset's bytes come from.
#[derive(Debug, Clone)]
pub enum AssetSource {
    Bytes(Vec<u8>),
    Path(PathBuf),
}

/// How a release is published.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseOptions {
    /// Give every asset a `digest: "sha256:..."` field.
    pub digest: bool,
    /// Put `<!-- BEGIN SHA platform -->HEX<!-- END SHA platform -->` markers in the body.
    pub body_markers: bool,
}

impl Default for ReleaseOptions {
    fn default() -> Self {
        ReleaseOptions {
            digest: true,
            body_markers: true,
        }
    }
}

/// A job as tests see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    pub id: u64,
    pub scope: String,
    pub labels: Vec<String>,
    pub status: JobStatus,
    pub runner_name: Option<String>,
    pub runner_id: Option<u64>,
    pub result: Option<String>,
    pub exit_code: Option<i64>,
    pub output: Option<String>,
}

/// A runner registration as tests see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerView {
    pub id: u64,
    pub name: String,
    pub scope: String,
    pub runner_group_id: u64,
    pub version: String,
    pub status: String,
    pub busy: bool,
    pub ephemeral: bool,
    pub disable_update: bool,
    pub labels: Vec<String>,
    pub session_open: bool,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    pub(crate) clock: clock::Clock,
    /// Woken on every change a long poll or a job waiter may care about.
    pub(crate) changed: Notify,
    pub(crate) options: EmulatorOptions,
    pub(crate) base_url: String,
    /// Message long polls waiting right now.
    pub(crate) polls_waiting: std::sync::atomic::AtomicUsize,
    /// Requests held by [`Fault::Hold`] right now.
    pub(crate) held: std::sync::atomic::AtomicUsize,
    /// Bumped by every release of held requests, with how they go on.
    pub(crate) releases: tokio::sync::watch::Sender<(u64, HoldRelease)>,
}

impl Shared {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough data for a test double.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The operations of the control API; [`Emulator`] derefs to it.
pub struct Control {
    pub(crate) shared: Arc<Shared>,
}

/// A running emulator. Dropping it stops the server.
pub struct Emulator {
    control: Control,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::ops::Deref for Emulator {
    type Target = Control;
    fn deref(&self) -> &Control {
        &self.control
    }
}

impl Emulator {
    /// Binds 127.0.0.1 (port from the options, 0 = any) and serves until dropped.
    pub async fn start(options: EmulatorOptions) -> Result<Emulator, EmulatorError> {
        let addr = format!("127.0.0.1:{}", options.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| EmulatorError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let local = listener
            .local_addr()
            .map_err(|source| EmulatorError::Bind { addr, source })?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new()),
            clock: clock::Clock::default(),
            changed: Notify::new(),
            options,
            base_url: format!("http://{local}"),
            polls_waiting: std::sync::atomic::AtomicUsize::new(0),
            held: std::sync::atomic::AtomicUsize::new(0),
            releases: tokio::sync::watch::Sender::new((0, HoldRelease::Proceed)),
        });
        let app = axum::Router::new()
            .fallback(http::dispatch)
            .with_state(shared.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = rx.await;
            });
            if let Err(e) = serve.await {
                log::error!("github emulator stopped: {e}");
            }
        });
        Ok(Emulator {
            control: Control { shared },
            addr: local,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections and waits for the server task (open long polls are cut).
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.control.shared.changed.notify_waiters();
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

/// An emulator on its own runtime threads, for synchronous tests (for example ones that run
/// `agentctl` with `std::process::Command`, which would block a single-threaded test runtime
/// and with it an in-process emulator). Derefs to [`Control`]; async operations go through
/// [`BackgroundEmulator::block_on`].
pub struct BackgroundEmulator {
    emulator: Emulator,
    runtime: Option<tokio::runtime::Runtime>,
}

impl BackgroundEmulator {
    /// Starts an emulator on a new two-thread runtime. Call it outside any async context.
    pub fn start(options: EmulatorOptions) -> Result<BackgroundEmulator, EmulatorError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("github-emulator")
            .enable_all()
            .build()
            .map_err(|source| EmulatorError::Runtime { source })?;
        let emulator = runtime.block_on(Emulator::start(options))?;
        Ok(BackgroundEmulator {
            emulator,
            runtime: Some(runtime),
        })
    }

    /// Runs a future (e.g. `publish_release`, `wait_job`) on the emulator's runtime.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> Option<F::Output> {
        self.runtime.as_ref().map(|rt| rt.block_on(future))
    }

    pub fn emulator(&self) -> &Emulator {
        &self.emulator
    }
}

impl std::ops::Deref for BackgroundEmulator {
    type Target = Control;
    fn deref(&self) -> &Control {
        &self.emulator.control
    }
}

impl Drop for BackgroundEmulator {
    fn drop(&mut self) {
        if let Some(task) = self.emulator.task.take() {
            task.abort();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Control {
    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// `http://127.0.0.1:PORT/api/v3`
    pub fn api_url(&self) -> String {
        format!("{}/api/v3", self.shared.base_url)
    }

    /// The web URL of a scope (`config.sh --url`): `http://127.0.0.1:PORT/octo/repo`.
    pub fn web_url_for(&self, scope: &str) -> String {
        match Scope::parse(scope) {
            Some(s) => format!("{}{}", self.shared.base_url, s.web_path()),
            None => format!("{}/{}", self.shared.base_url, scope.trim_matches('/')),
        }
    }

    /// The emulator's current time (real time plus every [`Control::advance_clock`]).
    pub fn now(&self) -> time::OffsetDateTime {
        self.shared.clock.now()
    }

    fn parse_scope(scope: &str) -> Result<Scope, EmulatorError> {
        Scope::parse(scope).ok_or_else(|| EmulatorError::InvalidScope {
            scope: scope.to_string(),
        })
    }

    /// Creates `owner/repo` (its owner need not exist, as for a user's repository).
    pub fn create_repo(&self, full_name: &str, private: bool) -> Result<(), EmulatorError> {
        let Scope::Repo { owner, repo } = Self::parse_scope(full_name)? else {
            return Err(EmulatorError::InvalidScope {
                scope: full_name.to_string(),
            });
        };
        let mut st = self.shared.state();
        if st.repos.contains_key(&(owner.clone(), repo.clone())) {
            return Err(EmulatorError::ScopeExists {
                scope: full_name.to_string(),
            });
        }
        let id = st.id();
        st.repos
            .insert((owner, repo), state::RepoEntry { private, id });
        Ok(())
    }

    /// Creates an organization with its `Default` runner group.
    pub fn create_org(&self, name: &str) -> Result<(), EmulatorError> {
        let Scope::Org(org) = Self::parse_scope(name)? else {
            return Err(EmulatorError::InvalidScope {
                scope: name.to_string(),
            });
        };
        let mut st = self.shared.state();
        if st.orgs.contains_key(&org) {
            return Err(EmulatorError::ScopeExists {
                scope: name.to_string(),
            });
        }
        let id = st.id();
        st.orgs.insert(
            org,
            state::OrgEntry {
                id,
                groups: vec![state::default_group()],
            },
        );
        Ok(())
    }

    /// Creates an enterprise (`slug` or `enterprises/slug`).
    pub fn create_enterprise(&self, slug: &str) -> Result<(), EmulatorError> {
        let text = if slug.starts_with("enterprises/") {
            slug.to_string()
        } else {
            format!("enterprises/{slug}")
        };
        let Scope::Enterprise(e) = Self::parse_scope(&text)? else {
            return Err(EmulatorError::InvalidScope {
                scope: slug.to_string(),
            });
        };
        let mut st = self.shared.state();
        if st.enterprises.contains_key(&e) {
            return Err(EmulatorError::ScopeExists {
                scope: slug.to_string(),
            });
        }
        st.enterprises.insert(
            e,
            state::EnterpriseEntry {
                groups: vec![state::default_group()],
            },
        );
        Ok(())
    }

    /// Adds a runner group to an organization or enterprise; returns its id.
    pub fn create_runner_group(
        &self,
        scope: &str,
        name: &str,
        allows_public_repositories: bool,
    ) -> Result<u64, EmulatorError> {
        let scope = Self::parse_scope(scope)?;
        let mut st = self.shared.state();
        let id = st.id();
        let group = state::RunnerGroup {
            id,
            name: name.to_string(),
            default: false,
            allows_public_repositories,
            visibility: "all".to_string(),
        };
        let groups = match &scope {
            Scope::Org(o) => st.orgs.get_mut(o).map(|o| &mut o.groups),
            Scope::Enterprise(e) => st.enterprises.get_mut(e).map(|e| &mut e.groups),
            Scope::Repo { .. } => None,
        };
        match groups {
            Some(groups) => {
                groups.push(group);
                Ok(id)
            }
            None => Err(EmulatorError::UnknownScope {
                scope: scope.to_string(),
            }),
        }
    }

    /// Mints a personal access token (`ghp_…` classic, `github_pat_…` fine-grained).
    pub fn add_pat(&self, spec: PatSpec) -> String {
        let now = self.shared.clock.now();
        let mut st = self.shared.state();
        auth::mint_pat(&mut st, now, spec)
    }

    /// Mints a registration token for a scope, as the REST endpoint would.
    pub fn registration_token(&self, scope: &str) -> Result<String, EmulatorError> {
        let scope = Self::parse_scope(scope)?;
        let now = self.shared.clock.now();
        let mut st = self.shared.state();
        if !st.scope_exists(&scope) {
            return Err(EmulatorError::UnknownScope {
                scope: scope.to_string(),
            });
        }
        Ok(auth::mint_runner_token(&mut st, now, TokenKind::Registration(scope)).0)
    }

    /// Edits a PAT's scopes or permissions in place, as its owner can on GitHub: the token's
    /// value and expiry stay. `false` when `token` is no PAT or `spec` is of the other kind.
    pub fn edit_pat(&self, token: &str, spec: PatSpec) -> bool {
        let edited = auth::edit_pat(&mut self.shared.state(), token, spec);
        self.shared.changed.notify_waiters();
        edited
    }

    /// Revokes any token; later uses answer `401 Bad credentials` (or `404` for runner tokens).
    pub fn revoke_token(&self, token: &str) -> bool {
        let removed = self.shared.state().tokens.remove(token).is_some();
        self.shared.changed.notify_waiters();
        removed
    }

    /// Revokes a PAT and mints a replacement with the same scopes and permissions.
    pub fn rotate_token(&self, token: &str) -> Option<String> {
        let spec = {
            let mut st = self.shared.state();
            let entry: TokenEntry = st.tokens.remove(token)?;
            entry.spec?
        };
        Some(self.add_pat(spec))
    }

    /// Registers a GitHub App (RS256 JWTs are checked against `public_key_pem`); returns its id.
    pub fn add_app(
        &self,
        public_key_pem: &str,
        installations: Vec<InstallationSpec>,
    ) -> Result<u64, EmulatorError> {
        jsonwebtoken::DecodingKey::from_rsa_pem(public_key_pem.as_bytes())
            .map_err(|source| EmulatorError::BadPublicKey { source })?;
        let mut st = self.shared.state();
        let id = st.id();
        st.apps.insert(
            id,
            state::AppEntry {
                public_key_pem: public_key_pem.to_string(),
                installations: installations
                    .into_iter()
                    .map(|i| state::Installation {
                        id: i.id,
                        account: i.account.to_ascii_lowercase(),
                        permissions: i.permissions,
                    })
                    .collect(),
            },
        );
        Ok(id)
    }

    /// Replaces an app's key (the old one deleted on GitHub) and revokes the installation
    /// tokens of its installations' accounts, as an administrator does after a key leaked.
    pub fn rotate_app_key(&self, app_id: u64, public_key_pem: &str) -> Result<(), EmulatorError> {
        jsonwebtoken::DecodingKey::from_rsa_pem(public_key_pem.as_bytes())
            .map_err(|source| EmulatorError::BadPublicKey { source })?;
        let mut st = self.shared.state();
        let Some(app) = st.apps.get_mut(&app_id) else {
            return Err(EmulatorError::UnknownScope {
                scope: format!("app {app_id}"),
            });
        };
        app.public_key_pem = public_key_pem.to_string();
        let accounts: Vec<String> = app
            .installations
            .iter()
            .map(|i| i.account.clone())
            .collect();
        st.tokens.retain(|_, entry| {
            !matches!(&entry.kind, TokenKind::Installation { account, .. } if accounts.contains(account))
        });
        Ok(())
    }

    /// Every token the emulator minted and still knows (PATs, installation, registration and
    /// remove tokens, runner service tokens): what must never appear in a log.
    pub fn minted_tokens(&self) -> Vec<String> {
        self.shared.state().tokens.keys().cloned().collect()
    }

    /// Moves the emulator's clock forward (token expiry, sessions, rate-limit windows, cleanup).
    pub fn advance_clock(&self, seconds: i64) {
        self.shared.clock.advance(seconds);
        let now = self.shared.clock.now();
        runner_service::sweep(&mut self.shared.state(), now, &self.shared.options);
        self.shared.changed.notify_waiters();
    }

    /// Arms a fault.
    pub fn inject(&self, fault: Fault) {
        let now = self.shared.clock.now();
        let mut st = self.shared.state();
        match fault {
            Fault::RateLimit {
                kind: RateLimitKind::Primary,
                ..
            } => auth::exhaust_primary(&mut st, now, &self.shared.options),
            Fault::Status { count, .. }
            | Fault::StatusShare { count, .. }
            | Fault::Hold { count, .. }
            | Fault::Latency { count, .. }
            | Fault::DropAfterBytes { count, .. }
            | Fault::RateLimit { count, .. } => st.faults.push(faults::FaultEntry {
                fault,
                remaining: count,
                seen: 0,
            }),
        }
    }

    /// Disarms every fault (an exhausted primary limit still waits for its reset). Requests
    /// held right now stay held until [`Control::release_held`].
    pub fn clear_faults(&self) {
        self.shared.state().faults.clear();
    }

    /// How many requests a [`Fault::Hold`] holds right now.
    pub fn held(&self) -> usize {
        self.shared.held.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until at least `n` requests are held; `false` on timeout.
    pub async fn wait_held(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.held() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.held() >= n;
            }
        }
    }

    /// Lets every held request go on (or drops their connections); returns how many there were.
    pub fn release_held(&self, how: HoldRelease) -> usize {
        let held = self.held();
        self.shared.releases.send_modify(|(generation, mode)| {
            *generation += 1;
            *mode = how;
        });
        held
    }

    /// Requests per `METHOD /route/{template}` since start.
    pub fn request_counts(&self) -> BTreeMap<String, RequestCount> {
        self.shared.state().counts.clone()
    }

    /// How often one route was requested (`"GET /api/v3/repos/{owner}/{repo}/actions/runners"`).
    pub fn request_count(&self, route: &str) -> u64 {
        self.shared
            .state()
            .counts
            .get(route)
            .map(|c| c.count)
            .unwrap_or(0)
    }

    /// Publishes a runner release `v<version>`; `assets` maps a platform (`linux-x64`) to bytes.
    pub async fn publish_release(
        &self,
        version: &str,
        assets: Vec<(String, AssetSource)>,
        options: ReleaseOptions,
    ) -> Result<(), EmulatorError> {
        releases::publish(&self.shared, version, assets, options).await
    }

    /// The version GitHub "expects" runners of a scope (all scopes with `None`) to run: the one
    /// `runners/downloads` offers and `AgentRefresh` pushes. Defaults to the latest release.
    pub fn set_expected_runner_version(&self, scope: Option<&str>, version: &str) {
        let mut st = self.shared.state();
        match scope.and_then(Scope::parse) {
            Some(scope) => {
                st.expected_version_by_scope
                    .insert(scope, version.to_string());
            }
            None => st.expected_version = Some(version.to_string()),
        }
        drop(st);
        self.shared.changed.notify_waiters();
    }

    /// Runners older than this get `403 … is deprecated and cannot receive messages`.
    pub fn set_deprecated_below(&self, version: Option<&str>) {
        self.shared.state().deprecated_below = version.map(str::to_string);
        self.shared.changed.notify_waiters();
    }

    /// Queues a job for `labels` with `script` as its only step; returns the job id.
    pub fn queue_job(
        &self,
        scope: &str,
        labels: &[&str],
        script: &str,
    ) -> Result<u64, EmulatorError> {
        let scope = Self::parse_scope(scope)?;
        let now = self.shared.clock.now();
        let mut st = self.shared.state();
        if !st.scope_exists(&scope) {
            return Err(EmulatorError::UnknownScope {
                scope: scope.to_string(),
            });
        }
        let id = st.id();
        let request_id = st.id();
        st.jobs.insert(
            id,
            state::JobEntry {
                id,
                request_id,
                scope,
                labels: labels.iter().map(|l| (*l).to_string()).collect(),
                script: script.to_string(),
                status: JobStatus::Queued,
                runner_id: None,
                runner_name: None,
                result: None,
                exit_code: None,
                output: None,
                cancel_requested: false,
                queued_at: now,
                message_id: None,
                acked: false,
                assigned_at: None,
            },
        );
        drop(st);
        self.shared.changed.notify_waiters();
        Ok(id)
    }

    pub fn job(&self, id: u64) -> Option<JobView> {
        self.shared.state().jobs.get(&id).map(control::job_view)
    }

    /// Waits until the job is completed (woken by state changes, not by sleeping).
    pub async fn wait_job(&self, id: u64, timeout: Duration) -> Result<JobView, EmulatorError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.job(id) {
                None => return Err(EmulatorError::NoSuchJob { id }),
                Some(j) if j.status == JobStatus::Completed => return Ok(j),
                Some(_) => {}
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(EmulatorError::JobTimeout { id, timeout });
            }
        }
    }

    /// How many runner message long polls are waiting right now.
    pub fn polls_waiting(&self) -> usize {
        self.shared
            .polls_waiting
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until at least `n` long polls are waiting (so a test can act while a runner
    /// listens, without sleeping); `false` on timeout.
    pub async fn wait_for_polls(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.polls_waiting() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.polls_waiting() >= n;
            }
        }
    }

    /// Cancels a job: a queued one completes as `cancelled`, a running one gets a
    /// `JobCancellation` message.
    pub fn cancel_job(&self, id: u64) -> Result<(), EmulatorError> {
        let mut st = self.shared.state();
        runner_service::cancel_job(&mut st, id)?;
        drop(st);
        self.shared.changed.notify_waiters();
        Ok(())
    }

    /// Runners registered in a scope (`None` = all scopes).
    pub fn runners(&self, scope: Option<&str>) -> Vec<RunnerView> {
        let now = self.shared.clock.now();
        let scope = scope.and_then(Scope::parse);
        let mut st = self.shared.state();
        runner_service::sweep(&mut st, now, &self.shared.options);
        st.runners
            .values()
            .filter(|r| scope.as_ref().is_none_or(|s| &r.scope == s))
            .map(|r| control::runner_view(r, now, &self.shared.options))
            .collect()
    }

    /// Deletes a registration as GitHub's cleanup (or a forced delete) does.
    pub fn delete_runner(&self, id: u64) -> bool {
        let removed = self.shared.state().remove_runner(id).is_some();
        self.shared.changed.notify_waiters();
        removed
    }
}
