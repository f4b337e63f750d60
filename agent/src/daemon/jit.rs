//! One-job runners in the daemon: `ephemeral = "jit"` and plain `ephemeral = true`.
//!
//! A **JIT runner** is never configured with `config.sh`. For each job slot the daemon:
//! 1. asks GitHub for a just-in-time configuration (`POST …/actions/runners/generate-jitconfig`,
//!    the runner group id resolved from its configured name, the runner's labels plus the
//!    defaults `config.sh` would add: `self-hosted`, `Linux`, the arch). The slot's
//!    registration id is kept at once in `<state_dir>/runners/<name>.jit.json` (no secret in it);
//! 2. resets the runner directory to the verified release (a fresh directory built from the
//!    release cache's sealed tree and swapped into place, so nothing of the last job stays:
//!    no work files, no `.runner`, no `.credentials`); the release resolved for the runner's
//!    first slot is reused for the next ones ([`Releases`]);
//! 3. starts `run.sh` through the `process` backend with the configuration in
//!    `ACTIONS_RUNNER_INPUT_JITCONFIG` (in its environment, never in argv: `run.sh` passes its
//!    arguments on to `Runner.Listener run`, which reads the input from the environment and
//!    removes it from its own before any job starts);
//! 4. when the listener exits (its one job done, or it failed), power-cycles the runner's board
//!    if it has power control and no job holds it, deletes the slot's registration if GitHub
//!    still has it, and starts the next slot.
//!
//! GitHub is asked first, so that while it fails a slot costs one call and no download. The
//! slots call it through the daemon's list client (one attempt per call) and under its rules
//! ([`Github`], [`super::outage`]): nothing while its circuit is open (a rate limit, refused
//! credentials) or its host-wide backoff waits (GitHub unreachable), and their failures open
//! the one or feed the other: one outage, one backoff, one line in the log and in `status`,
//! however many slots wait; the loop never waits in a retry, so other runners are started
//! again meanwhile. Other failures (an unknown group, a name taken, the release) back off per
//! runner.
//!
//! A slot whose listener outlives the daemon (`SIGTERM` leaves runners running) is adopted by
//! the next daemon through its pid file and state file.
//!
//! The reconcile loop counts a JIT runner as desired (so that its registration is never taken
//! for a ghost) but leaves its actions to this module.
//!
//! A plain **ephemeral runner** (`ephemeral = true`, `config.sh --ephemeral`) runs under the
//! normal reconcile loop; after its job GitHub deletes the registration and the listener deletes
//! its local files. This module then asks for a reconcile pass at once, which registers it
//! again; for the `process` backend it first resets the directory to the release.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Uid};

use crate::config::{Config, Ephemeral, Runner, Scope, ServiceKind};
use crate::github::{Client, GithubError};
use crate::release::{self, Arch, FetchRequest};
use crate::runner::{self, Lifecycle, LocalRegistration, Record, Remote, RunnerError};
use crate::service::{Backend as _, Process, RunAs};

/// The environment variable the listener reads its JIT configuration from.
pub const JIT_INPUT: &str = "ACTIONS_RUNNER_INPUT_JITCONFIG";

/// Errors of one JIT slot.
#[derive(Debug, thiserror::Error)]
pub enum JitError {
    #[error("JIT runners need GitHub's REST API\n\nhint: configure `pat_file` or `app` instead of `registration_token_file`")]
    NoRest,
    #[error("no runner group named `{group}` in `{scope}` (groups: {known})\n\nhint: fix `group` of runner `{runner}`, or create the group on GitHub")]
    UnknownGroup {
        runner: String,
        group: String,
        scope: String,
        known: String,
    },
    #[error("runner `{runner}` would run as root\n\nhint: set `user` to an unprivileged account")]
    RootUser { runner: String },
    #[error("cannot reset `{dir}` to the runner release")]
    Release {
        dir: PathBuf,
        #[source]
        source: Box<release::ReleaseError>,
    },
    #[error("GitHub API: {what}")]
    Github {
        what: String,
        #[source]
        source: Box<GithubError>,
    },
    #[error(transparent)]
    Runner(#[from] RunnerError),
    #[error("cannot start runner `{runner}`")]
    Service {
        runner: String,
        #[source]
        source: crate::service::ServiceError,
    },
    #[error("i/o error at `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl JitError {
    /// The GitHub error underneath, if GitHub's answer (or its silence) is why.
    fn github_source(&self) -> Option<&GithubError> {
        match self {
            JitError::Github { source, .. } => Some(source),
            JitError::Runner(RunnerError::Github { source, .. }) => Some(source),
            _ => None,
        }
    }

    /// Whether retrying cannot help until the secret, the permissions or the configuration
    /// change.
    fn deterministic(&self) -> bool {
        match self {
            JitError::NoRest | JitError::UnknownGroup { .. } | JitError::RootUser { .. } => true,
            JitError::Github { source, .. } => matches!(
                **source,
                GithubError::BadCredentials { .. } | GithubError::MissingPermission { .. }
            ),
            _ => false,
        }
    }
}

fn github_err(what: impl Into<String>) -> impl FnOnce(GithubError) -> JitError {
    let what = what.into();
    move |source| JitError::Github {
        what,
        source: Box::new(source),
    }
}

/// What `<state_dir>/runners/<name>.jit.json` holds: the current slot's registration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlotState {
    /// The JIT registration's runner id.
    pub id: u64,
}

/// The state file of `name`'s current slot.
pub fn state_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("runners").join(format!("{name}.jit.json"))
}

fn read_state(state_dir: &Path, name: &str) -> Option<SlotState> {
    let text = fs::read_to_string(state_path(state_dir, name)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_state(state_dir: &Path, name: &str, state: &SlotState) -> Result<(), JitError> {
    let path = state_path(state_dir, name);
    let io = |source| JitError::Io {
        path: path.clone(),
        source,
    };
    // `atomic::write` makes `<state_dir>/runners` when it is missing.
    let text = serde_json::to_string(state).map_err(|err| io(std::io::Error::other(err)))?;
    crate::atomic::write(&path, text.as_bytes(), 0o644).map_err(io)
}

/// Whether `runner` is run by this module as one JIT slot after another.
pub fn is_jit(runner: &Runner) -> bool {
    runner.ephemeral == Ephemeral::Jit
}

/// The labels a JIT runner registers with: the defaults `config.sh` would add (JIT
/// registrations get none of their own), then the runner's own ([`runner::desired_labels`]).
pub fn jit_labels(config: &Config, runner: &Runner, hostname: &str, kvm: bool) -> Vec<String> {
    let arch = Arch::host()
        .map(|arch| arch.as_str().to_ascii_uppercase())
        .unwrap_or_else(|_| "X64".to_owned());
    let mut labels: Vec<String> = vec!["self-hosted".to_owned(), "Linux".to_owned(), arch];
    for label in runner::desired_labels(config, runner, hostname, kvm) {
        if !labels
            .iter()
            .any(|known| known.eq_ignore_ascii_case(&label))
        {
            labels.push(label);
        }
    }
    labels
}

/// The id of runner group `group` of `scope` (`None`: the default group). A repository has
/// only the default group, id 1.
pub async fn group_id(
    client: &Client,
    scope: &Scope,
    runner: &str,
    group: Option<&str>,
) -> Result<u64, JitError> {
    if let Scope::Repo { .. } = scope {
        return match group {
            None => Ok(1),
            Some(name) if name.eq_ignore_ascii_case("default") => Ok(1),
            Some(name) => Err(JitError::UnknownGroup {
                runner: runner.to_owned(),
                group: name.to_owned(),
                scope: scope.api_prefix(),
                known: "Default (a repository has no other)".to_owned(),
            }),
        };
    }
    let groups = client
        .runner_groups(scope)
        .await
        .map_err(github_err("list the runner groups"))?;
    let found = match group {
        Some(name) => groups.iter().find(|g| g.name.eq_ignore_ascii_case(name)),
        None => groups.iter().find(|g| g.default),
    };
    match (found, group) {
        (Some(found), _) => Ok(found.id),
        (None, None) => Ok(1),
        (None, Some(name)) => Err(JitError::UnknownGroup {
            runner: runner.to_owned(),
            group: name.to_owned(),
            scope: scope.api_prefix(),
            known: groups
                .iter()
                .map(|g| format!("`{}`", g.name))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// How long a `version = "latest"` release resolved for one-job runners is used before GitHub
/// is asked again (a newer release is picked up after at most this).
pub const LATEST_REUSED_FOR: Duration = Duration::from_secs(3600);

/// The release each one-job runner's directory was last reset to, reused for its next jobs:
/// resolving it asks GitHub twice (`runners/downloads` and the release), which a job slot need
/// not pay each time. A pinned version is reused while the configuration asks for it, `latest`
/// for [`LATEST_REUSED_FOR`]. The reuse installs from the cache's sealed tree, which was
/// verified against GitHub's checksum when it was downloaded.
#[derive(Debug, Default)]
pub struct Releases {
    known: BTreeMap<String, (crate::config::VersionReq, Instant, release::CachedRelease)>,
}

impl Releases {
    fn reusable(&self, runner: &Runner, now: Instant) -> Option<&release::CachedRelease> {
        let (wanted, resolved_at, cached) = self.known.get(&runner.name)?;
        let fresh = match wanted {
            crate::config::VersionReq::Pinned(_) => true,
            crate::config::VersionReq::Latest => {
                now.saturating_duration_since(*resolved_at) < LATEST_REUSED_FOR
            }
        };
        (*wanted == runner.version && fresh).then_some(cached)
    }
}

/// Reset `runner`'s directory to the verified release: a fresh tree from the release cache
/// (hard links to the sealed tree, directories owned by the runner user) swapped into place.
/// A work directory outside the runner directory is emptied too. Returns the version.
pub async fn reset_dir(
    config: &Config,
    runner: &Runner,
    run_as: &RunAs,
    releases: &mut Releases,
) -> Result<String, JitError> {
    let release_err = |source| JitError::Release {
        dir: runner.dir.clone(),
        source: Box::new(source),
    };
    if let Some(parent) = runner.dir.parent() {
        fs::create_dir_all(parent).map_err(|source| JitError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let owner = Some((Uid::from_raw(run_as.uid), Gid::from_raw(run_as.gid)));
    let reused = match releases.reusable(runner, Instant::now()) {
        Some(cached) => match release::install(cached, &runner.dir, owner) {
            Ok(()) => Some(cached.clone()),
            Err(err) => {
                log::info!(
                    "cannot reset `{}` from the cached release {}, fetching it again: {err}",
                    runner.dir.display(),
                    cached.version
                );
                None
            }
        },
        None => None,
    };
    let cached = match reused {
        Some(cached) => cached,
        None => {
            let mut request =
                FetchRequest::from_config(config, Some(runner)).map_err(release_err)?;
            request.progress = false;
            let cached = release::fetch_and_install(&request, &runner.dir, owner)
                .await
                .map_err(release_err)?;
            releases.known.insert(
                runner.name.clone(),
                (runner.version.clone(), Instant::now(), cached.clone()),
            );
            cached
        }
    };
    let work = &runner.work_dir;
    if work.is_absolute() && !work.starts_with(&runner.dir) && work.components().count() > 2 {
        match fs::remove_dir_all(work) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(JitError::Io {
                    path: work.clone(),
                    source,
                })
            }
        }
        let io = |source| JitError::Io {
            path: work.clone(),
            source,
        };
        fs::create_dir_all(work).map_err(io)?;
        std::os::unix::fs::chown(work, Some(run_as.uid), Some(run_as.gid)).map_err(io)?;
    }
    Ok(cached.version.to_string())
}

/// Delete a runner directory's registration and credentials (the listener's JIT files).
fn drop_local(dir: &Path) {
    for file in [
        ".runner",
        ".runner_migrated",
        ".credentials",
        ".credentials_migrated",
        ".credentials_rsaparams",
    ] {
        let _ = fs::remove_file(dir.join(file));
    }
}

/// Power-cycle `runner`'s board between jobs, when it has power control and no live job holds
/// it. Best effort: a failure is logged (the next job's hooks check the board anyway).
fn reset_board(config: &Config, runner: &Runner) {
    let Some(board) = runner.board.as_deref().and_then(|name| config.board(name)) else {
        return;
    };
    if board.power.is_none() {
        return;
    }
    let state_dir = &config.agent.state_dir;
    match crate::boards::lease::current(state_dir, &board.name) {
        Ok(Some(lease)) => {
            log::info!(
                "board `{}` is held by {}: not resetting it between jobs",
                board.name,
                lease.describe()
            );
            return;
        }
        Ok(None) => {}
        Err(err) => {
            log::warn!("cannot read the lease of board `{}`: {err}", board.name);
            return;
        }
    }
    let ctx = crate::boards::power::PowerContext {
        mbpoll: PathBuf::from("mbpoll"),
        roots: crate::boards::identity::Roots::default(),
        state_dir: state_dir.clone(),
    };
    match crate::boards::power::run(board, crate::boards::power::Action::Cycle, &ctx) {
        Ok(()) => log::info!(
            "board `{}` power-cycled between jobs of `{}`",
            board.name,
            runner.name
        ),
        Err(err) => log::warn!(
            "cannot power-cycle board `{}` between jobs: {err}",
            board.name
        ),
    }
}

/// Per-runner failure state of a slot.
#[derive(Debug, Clone, Default)]
struct Failures {
    count: u32,
    until: Option<Instant>,
    /// Why the slot has no listener, for `agentctl status` (redacted).
    last_error: Option<String>,
}

/// The daemon's GitHub state that JIT slots share with its runner list ([`super::outage`]): a
/// slot calls GitHub only while the circuit is closed and the host-wide backoff is not waiting,
/// and its failures open the one or feed the other.
pub(super) struct Github<'a> {
    /// The list's client (one attempt per call: the host-wide backoff is the retry; one
    /// installation token for all), when it could be made.
    pub remote: Option<&'a Remote>,
    pub circuit: &'a mut Option<super::Circuit>,
    pub backoff: &'a mut super::outage::ListBackoff,
    pub options: &'a super::Options,
}

impl Github<'_> {
    /// Why no slot may call GitHub at `now`, if it may not.
    fn blocked(&self, now: Instant) -> Option<String> {
        if let Some(circuit) = self.circuit.as_ref().filter(|c| c.until > now) {
            return Some(format!("waiting for GitHub: {}", circuit.reason));
        }
        if self.backoff.waiting(now) {
            return Some(format!(
                "waiting for GitHub: it fails ({}); next try {}",
                self.backoff.reason().unwrap_or_default(),
                self.backoff
                    .next()
                    .and_then(|at| super::state::wall(at, now))
                    .unwrap_or_default()
            ));
        }
        None
    }

    /// Book a failed call for the whole host; whether it took it (otherwise the slot backs off
    /// on its own).
    fn failed(&mut self, err: &GithubError, reason: &str) -> bool {
        super::outage::shared_failure(
            err,
            reason.to_owned(),
            false,
            self.circuit,
            self.backoff,
            self.options,
            Instant::now(),
        ) != super::outage::Shared::NotShared
    }

    /// The REST client and scope of the slots: the list's, or one made from `config`.
    fn rest(&self, config: &Config) -> Result<(Client, Scope), JitError> {
        let owned;
        let remote = match self.remote {
            Some(remote) => remote,
            None => {
                owned = Remote::from_config(config)?;
                &owned
            }
        };
        match remote {
            Remote::Rest { client, scope } => Ok(((**client).clone(), scope.clone())),
            Remote::RawToken { .. } => Err(JitError::NoRest),
        }
    }
}

/// The one-job runners of the daemon. Kept across passes; reset when the configuration is
/// reloaded (its state lives on disk: pid files and slot state files).
#[derive(Debug, Default)]
pub struct Jit {
    failures: BTreeMap<String, Failures>,
    /// Ephemeral runners whose directory was reset since their last registration.
    reset: BTreeSet<String>,
    /// JIT runners seen drained (said once).
    drained: BTreeSet<String>,
    /// JIT runners seen with a board that cannot take jobs (said once).
    board_gated: BTreeSet<String>,
    /// JIT runners whose slot ended and whose registration is still to be deleted (the end
    /// said and the board reset once).
    ending: BTreeSet<String>,
    /// The release each one-job runner was last reset to.
    releases: Releases,
}

impl Jit {
    /// Look after the one-job runners: end finished slots and start new ones (JIT), reset the
    /// directory of an ephemeral runner whose job is done. Returns whether a reconcile pass is
    /// wanted now (an ephemeral runner to register again).
    ///
    /// `board_gated` says whether a runner's board keeps it offline (missing, ambiguous or
    /// unhealthy): such a JIT runner takes no new slot.
    pub(super) async fn tick(
        &mut self,
        config: &Config,
        hostname: &str,
        board_gated: impl Fn(&str) -> bool,
        github: &mut Github<'_>,
    ) -> bool {
        let mut wants_pass = false;
        for runner in &config.runners {
            match runner.ephemeral {
                Ephemeral::Jit => {
                    let gated = board_gated(&runner.name);
                    self.tick_jit(config, hostname, runner, gated, github).await;
                }
                Ephemeral::Yes => wants_pass |= self.tick_ephemeral(config, runner).await,
                _ => {}
            }
        }
        wants_pass
    }

    /// Why runner `name`'s slot has no listener, if it failed or waits for GitHub.
    pub(super) fn last_error(&self, name: &str) -> Option<String> {
        self.failures.get(name).and_then(|f| f.last_error.clone())
    }

    /// How long until the first slot's own backoff ends (the loop wakes then).
    pub(super) fn wake_in(&self) -> Duration {
        let now = Instant::now();
        self.failures
            .values()
            .filter_map(|f| f.until)
            .filter(|at| *at > now)
            .map(|at| at - now)
            .min()
            .unwrap_or(Duration::MAX)
    }

    /// Runner `name` waits for GitHub (`why`): said in its status, not in the log (the circuit
    /// or the backoff said it once for the host).
    fn waiting(&mut self, name: &str, why: String) {
        let entry = self.failures.entry(name.to_owned()).or_default();
        entry.last_error = Some(why);
    }

    async fn tick_jit(
        &mut self,
        config: &Config,
        hostname: &str,
        runner: &Runner,
        gated: bool,
        github: &mut Github<'_>,
    ) {
        let state_dir = &config.agent.state_dir;
        let process = Process::new(state_dir);
        if process.running(&runner.name).is_some() {
            return;
        }
        // No listener: no registration or credentials of a slot stay on disk until the next.
        drop_local(&runner.dir);
        if let Some(state) = read_state(state_dir, &runner.name) {
            if self.ending.insert(runner.name.clone()) {
                log::info!(
                    "JIT runner `{}` (id {}) ended its slot",
                    runner.name,
                    state.id
                );
                reset_board(config, runner);
            }
            // Its registration goes first, when GitHub may be called.
            if let Some(why) = github.blocked(Instant::now()) {
                self.waiting(&runner.name, why);
                return;
            }
            if !self.end_slot(config, runner, &state, github).await {
                return;
            }
        }
        self.ending.remove(&runner.name);
        if super::drain::is_marked(state_dir, &runner.name) {
            // Drained (`agentctl drain`): no new slot until `agentctl undrain`.
            if self.drained.insert(runner.name.clone()) {
                log::info!(
                    "JIT runner `{}` is drained: no new slot until `agentctl undrain`",
                    runner.name
                );
            }
            return;
        }
        self.drained.remove(&runner.name);
        if gated {
            if self.board_gated.insert(runner.name.clone()) {
                log::info!(
                    "JIT runner `{}` takes no new slot while its board cannot take jobs",
                    runner.name
                );
            }
            return;
        }
        self.board_gated.remove(&runner.name);
        let now = Instant::now();
        if self
            .failures
            .get(&runner.name)
            .and_then(|f| f.until)
            .is_some_and(|until| until > now)
        {
            return;
        }
        // GitHub's circuit open (a rate limit, refused credentials) or the host backing off
        // from an outage: no slot calls, however many wait.
        if let Some(why) = github.blocked(now) {
            self.waiting(&runner.name, why);
            return;
        }
        match self.start_slot(config, hostname, runner, github).await {
            Ok(id) => {
                log::info!(
                    "JIT runner `{}` is waiting for a job (id {id})",
                    runner.name
                );
                self.failures.remove(&runner.name);
                github.backoff.succeeded_with(
                    &format!("GitHub (the JIT configuration of `{}`)", runner.name),
                    Instant::now(),
                );
            }
            Err(err) => {
                let text = super::error_chain(&err);
                let shared = err
                    .github_source()
                    .is_some_and(|source| github.failed(source, &text));
                let entry = self.failures.entry(runner.name.clone()).or_default();
                entry.last_error = Some(text.clone());
                if shared {
                    // The host's circuit or backoff holds every slot; said once, there.
                    entry.until = None;
                } else if err.deterministic() {
                    // A deterministic failure of the slot's own (an unknown runner group): it
                    // waits as long as GitHub's circuit would, unless the configuration is
                    // reloaded.
                    entry.until = Some(Instant::now() + github.options.circuit_open);
                    log::error!(
                        "JIT runner `{}`: {text}; not trying again for {} (or until the configuration is reloaded)",
                        runner.name,
                        super::for_how_long(github.options.circuit_open)
                    );
                } else {
                    entry.count += 1;
                    let delay = github.options.backoff(entry.count);
                    entry.until = Some(Instant::now() + delay);
                    log::warn!(
                        "JIT runner `{}`: {text}; retrying in {} ms",
                        runner.name,
                        delay.as_millis()
                    );
                }
            }
        }
    }

    /// The listener of a slot exited: its registration goes (GitHub deletes a JIT runner after
    /// its job; one that never got a job would stay). Whether it is gone; a failure on the way
    /// to GitHub keeps the slot's state file, to try again when GitHub may be called.
    async fn end_slot(
        &mut self,
        config: &Config,
        runner: &Runner,
        state: &SlotState,
        github: &mut Github<'_>,
    ) -> bool {
        let deleted = match github.rest(config) {
            Ok((client, scope)) => match client.delete_runner(&scope, state.id).await {
                Ok(()) => Ok(()),
                Err(err) if err.status() == Some(404) => Ok(()),
                Err(err) => Err(err),
            },
            // Without REST access there is nothing to delete.
            Err(_) => Ok(()),
        };
        if let Err(err) = deleted {
            let text = format!(
                "cannot delete the registration {} of JIT runner `{}`: {}",
                state.id,
                runner.name,
                super::error_chain(&err)
            );
            if github.failed(&err, &text) {
                self.waiting(&runner.name, text);
                return false;
            }
            log::warn!("{text}");
        } else {
            github.backoff.succeeded_with(
                &format!("GitHub (the deletion of JIT runner `{}`)", runner.name),
                Instant::now(),
            );
        }
        let _ = fs::remove_file(state_path(&config.agent.state_dir, &runner.name));
        true
    }

    /// A JIT configuration, a fresh directory, the listener started. Returns the runner id.
    /// GitHub is asked first: while it fails, a slot costs one call and no download.
    async fn start_slot(
        &mut self,
        config: &Config,
        hostname: &str,
        runner: &Runner,
        github: &mut Github<'_>,
    ) -> Result<u64, JitError> {
        let run_as = runner::run_as(&runner.user)?;
        if run_as.uid == 0 {
            return Err(JitError::RootUser {
                runner: runner.name.clone(),
            });
        }
        if runner.service != ServiceKind::Process && !self.failures.contains_key(&runner.name) {
            log::info!(
                "JIT runner `{}` runs as a process of the daemon (`service = \"{}\"` does not apply to JIT runners)",
                runner.name,
                runner.service.as_str()
            );
        }
        let (client, scope) = github.rest(config)?;
        let group = group_id(&client, &scope, &runner.name, runner.group.as_deref()).await?;
        let lifecycle = Lifecycle::new(config, hostname.to_owned(), Remote::from_config(config)?);
        let kvm = runner::kvm_usable(&run_as, &lifecycle.options.kvm_node);
        let labels = jit_labels(config, runner, hostname, kvm);
        let work = runner.work_dir.to_string_lossy().into_owned();
        let jit = match client
            .generate_jitconfig(&scope, &runner.name, group, &labels, Some(&work))
            .await
        {
            Err(GithubError::NameTaken { .. }) => {
                // A slot of an earlier daemon that never got its job, or one GitHub has not
                // deleted yet: ours (marker label) and idle, so it goes.
                self.free_name(&client, &scope, &lifecycle.marker(), &runner.name)
                    .await?;
                client
                    .generate_jitconfig(&scope, &runner.name, group, &labels, Some(&work))
                    .await
                    .map_err(github_err(format!(
                        "generate a JIT config for `{}`",
                        runner.name
                    )))?
            }
            other => other.map_err(github_err(format!(
                "generate a JIT config for `{}`",
                runner.name
            )))?,
        };
        let id = jit.runner.id;
        // Kept at once: a daemon killed from here on leaves a registration the next one
        // deletes (`end_slot`), not an orphan.
        write_state(&config.agent.state_dir, &runner.name, &SlotState { id })?;
        let started = async {
            let version = reset_dir(config, runner, &run_as, &mut self.releases).await?;
            lifecycle.write_record(&Record {
                name: runner.name.clone(),
                dir: runner.dir.clone(),
                user: runner.user.clone(),
                version,
                service: ServiceKind::Process.as_str().to_owned(),
                labels,
            })?;
            let mut unit = lifecycle.unit(runner)?;
            unit.env
                .insert(JIT_INPUT.to_owned(), jit.encoded_jit_config.clone());
            Process::new(&config.agent.state_dir)
                .start(&unit)
                .map_err(|source| JitError::Service {
                    runner: runner.name.clone(),
                    source,
                })
        }
        .await;
        if started.is_err() {
            // The registration of a slot that never started goes now (once GitHub answers
            // again otherwise: the state file stays for `end_slot`).
            if client.delete_runner(&scope, id).await.is_ok() {
                let _ = fs::remove_file(state_path(&config.agent.state_dir, &runner.name));
            }
        }
        started?;
        Ok(id)
    }

    async fn free_name(
        &self,
        client: &Client,
        scope: &Scope,
        marker: &str,
        name: &str,
    ) -> Result<(), JitError> {
        let taken = client
            .runner_named(scope, name)
            .await
            .map_err(github_err(format!("look up runner `{name}`")))?;
        let Some(taken) = taken else {
            return Ok(());
        };
        let ours = taken
            .labels
            .iter()
            .any(|l| l.name.eq_ignore_ascii_case(marker));
        if !ours || taken.busy {
            return Err(JitError::Github {
                what: format!("register JIT runner `{name}`"),
                source: Box::new(GithubError::NameTaken {
                    url: String::new(),
                    name: name.to_owned(),
                    message: if ours {
                        format!("runner {} of this host is still running a job", taken.id)
                    } else {
                        format!(
                            "runner {} is another host's (it lacks the label `{marker}`)",
                            taken.id
                        )
                    },
                }),
            });
        }
        log::info!(
            "deleting the stale JIT registration `{name}` (id {}) of this host",
            taken.id
        );
        match client.delete_runner(scope, taken.id).await {
            Ok(()) => Ok(()),
            Err(err) if err.status() == Some(404) => Ok(()),
            Err(err) => Err(github_err(format!("delete runner {}", taken.id))(err)),
        }
    }

    /// An ephemeral runner that has registered before and has no registration left: its job is
    /// done. Ask for a pass at once (which registers it again); a `process` runner's directory is
    /// reset to the release first, once its listener ended (a systemd unit's files live in its
    /// directory, so those keep theirs).
    async fn tick_ephemeral(&mut self, config: &Config, runner: &Runner) -> bool {
        let registered = LocalRegistration::read(&runner.dir).is_some();
        if registered {
            self.reset.remove(&runner.name);
            return false;
        }
        let recorded = config
            .agent
            .state_dir
            .join("runners")
            .join(format!("{}.json", runner.name))
            .exists();
        if self.reset.contains(&runner.name) || !recorded || !runner.dir.join("config.sh").exists()
        {
            return false;
        }
        if runner.service != ServiceKind::Process {
            log::info!(
                "ephemeral runner `{}` finished its job: registering it again",
                runner.name
            );
            self.reset.insert(runner.name.clone());
            return true;
        }
        let process = Process::new(&config.agent.state_dir);
        if process.running(&runner.name).is_some() {
            return false;
        }
        let run_as = match runner::run_as(&runner.user) {
            Ok(run_as) => run_as,
            Err(err) => {
                log::warn!("ephemeral runner `{}`: {err}", runner.name);
                return false;
            }
        };
        // The pid file of the finished listener.
        let _ = process.stop(&crate::service::Unit {
            name: runner.name.clone(),
            dir: runner.dir.clone(),
            run_as: run_as.clone(),
            env: BTreeMap::new(),
            env_file: None,
            extra_groups: Vec::new(),
        });
        match reset_dir(config, runner, &run_as, &mut self.releases).await {
            Ok(_) => {
                log::info!(
                    "ephemeral runner `{}` finished its job: directory reset to the release, registering it again",
                    runner.name
                );
                reset_board(config, runner);
                self.reset.insert(runner.name.clone());
                true
            }
            Err(err) => {
                log::warn!(
                    "ephemeral runner `{}`: {}; registering it again in its old directory",
                    runner.name,
                    super::error_chain(&err)
                );
                self.reset.insert(runner.name.clone());
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_is_reused_while_the_runner_wants_it_and_latest_for_an_hour() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::load_for_test(
            dir.path(),
            "https://github.com/o/r",
            "[[runner]]\nname = \"pinned\"\nephemeral = \"jit\"\nversion = \"2.336.0\"\n\
             [[runner]]\nname = \"latest\"\nephemeral = \"jit\"\nversion = \"latest\"\n",
        );
        let version: crate::config::Version = "2.336.0".parse().unwrap();
        let cached = release::CachedRelease {
            version,
            arch: Arch::X64,
            asset: Arch::X64.asset_name(version),
            path: dir.path().join("tarball"),
            sha256: release::Sha256::parse(&"ab".repeat(32)).unwrap(),
            url: "https://github.com/actions/runner/releases/download/v2.336.0/x"
                .parse()
                .unwrap(),
            source: release::ChecksumSource::AssetDigest,
            cache_dir: dir.path().to_path_buf(),
        };
        let now = Instant::now();
        let mut releases = Releases::default();
        for name in ["pinned", "latest"] {
            let runner = config.runner(name).unwrap();
            assert!(
                releases.reusable(runner, now).is_none(),
                "nothing known yet"
            );
            releases.known.insert(
                name.to_owned(),
                (runner.version.clone(), now, cached.clone()),
            );
        }
        let pinned = config.runner("pinned").unwrap();
        let latest = config.runner("latest").unwrap();
        let later = now + LATEST_REUSED_FOR;
        assert!(releases.reusable(pinned, later).is_some());
        assert!(releases
            .reusable(latest, later - Duration::from_secs(1))
            .is_some());
        assert!(
            releases.reusable(latest, later).is_none(),
            "latest asked again"
        );

        // The configuration now asks for another version: resolved anew.
        let mut moved = pinned.clone();
        moved.version = crate::config::VersionReq::Pinned("2.337.0".parse().unwrap());
        assert!(releases.reusable(&moved, now).is_none());
    }

    #[test]
    fn jit_labels_start_with_the_defaults_config_sh_would_add() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::load_for_test(
            dir.path(),
            "https://github.com/o/r",
            "[[runner]]\nname = \"j1\"\nephemeral = \"jit\"\nlabels = [\"linux\", \"lab\"]\n",
        );
        let runner = config.runner("j1").unwrap();
        assert!(is_jit(runner));
        let labels = jit_labels(&config, runner, "h1", false);
        assert_eq!(labels[0], "self-hosted");
        assert_eq!(labels[1], "Linux");
        assert_eq!(labels.last().map(String::as_str), Some("host-h1"));
        assert!(labels.iter().any(|l| l == "lab"));
        // `linux` is the default label already: no duplicate in another case.
        assert_eq!(
            labels
                .iter()
                .filter(|l| l.eq_ignore_ascii_case("linux"))
                .count(),
            1
        );
    }

    #[test]
    fn slot_state_round_trips_and_holds_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        write_state(dir.path(), "j1", &SlotState { id: 42 }).unwrap();
        assert_eq!(read_state(dir.path(), "j1"), Some(SlotState { id: 42 }));
        let text = fs::read_to_string(state_path(dir.path(), "j1")).unwrap();
        assert_eq!(text, r#"{"id":42}"#);
    }
}
