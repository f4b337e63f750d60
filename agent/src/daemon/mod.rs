//! `agentctl daemon`: keep the configured runners registered, running and healthy (issue 6).
//!
//! One reconcile pass ([`reconcile`]) observes (the configuration, each runner's `.runner` and
//! record, its service state and why it last stopped, drain marks, GitHub's runner list when REST
//! access is configured), plans with the pure [`plan::plan`] and applies the actions through
//! [`Lifecycle`]. Passes are triggered by a periodic resync (with ±10 % jitter), by `SIGHUP`
//! (reload the configuration; a bad new one is logged and the old one kept), by `SIGCHLD` (a
//! process-backend runner started by this daemon exited), by a change of a secret file (inotify,
//! [`secrets`]: the credentials are reloaded and open circuits closed; a `LoadCredential=` copy is
//! read from its source once that changed, [`credentials`]), and by a cheap liveness
//! check every few seconds of the runners' services (the pid file for the process backend;
//! `systemctl` state for systemd units). A systemd runner unit that stops is also told by systemd
//! over D-Bus ([`units`]: the system bus), so it is acted on at once; the liveness check is the
//! fallback (and the only way without a system bus). `SIGTERM`/`SIGINT` end the loop and leave the
//! runners running.
//!
//! Healing: a runner that stopped is started again, except that its output says why
//! ([`exits`]): a session conflict (exit 5) waits [`Options::session_wait`] for the old session to
//! expire; a self-update (exit 3/4) is left to `run.sh`/`runsvc.sh`; a deleted registration
//! (exit 1 with the "deleted" message, or exit 0 after the runner removed its own configuration)
//! is registered again with a fresh token. Runners no longer configured are deregistered and
//! removed. Drained runners ([`drain`]) stay stopped. Runners with `disable_update = true` are
//! upgraded by the daemon while idle ([`upgrade`]; idle on this host, [`busy`], and on GitHub's
//! list when there is one). A board runner follows its board
//! ([`boards`]): stopped, still registered, while the board is missing, ambiguous or unhealthy,
//! and started again with its job environment resolved anew when the board is back.
//!
//! Failures back off per runner (exponential with jitter, capped); a deterministic failure (bad
//! credentials, missing permission) opens a circuit for [`CIRCUIT_OPEN`] or until a secret file
//! changes. Bad credentials on GitHub's runner list open the circuit for every call to GitHub;
//! local starts go on. A list failing for a reason that may pass (5xx, unreachable, timeouts)
//! backs off host-wide ([`outage`]); local starts go on as well. JIT slots ([`jit`]) call GitHub
//! under the same circuit and backoff, through the list's client. The daemon's view is written
//! atomically to `<state_dir>/daemon/state.json` ([`state`]) for `agentctl status`, and as a
//! Prometheus text file when `[daemon] metrics_file` is set ([`metrics`]).

pub mod boards;
pub mod busy;
pub mod credentials;
pub mod drain;
pub mod exits;
pub mod jit;
pub mod metrics;
pub mod outage;
pub mod plan;
pub mod ratelimit;
mod reconcile;
pub mod secrets;
pub mod state;
pub mod units;
pub mod upgrade;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};

use crate::config::{self, Config};
use crate::exit::Status;
use crate::github::{Cached, GithubError};
use crate::runner::{self, Lifecycle, Remote, RemoteRunner, RunnerError};

pub use plan::{plan, Action, DesiredRunner, Gate, LocalRunner, Observed};
use state::{Health, Seen};

/// The first retry delay after a failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(2);
/// The longest retry delay.
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// How long a circuit stays open after a deterministic failure.
pub const CIRCUIT_OPEN: Duration = Duration::from_secs(3600);

/// Errors of the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot install the `{signal}` handler")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Knobs of [`run`].
#[derive(Debug, Clone)]
pub struct Options {
    /// The periodic resync interval (jittered by ±10 %).
    pub resync: Duration,
    /// How often the runners' services are checked for liveness.
    pub check: Duration,
    /// After a session conflict (exit 5), how long to wait for the old session to expire before
    /// starting the runner again.
    pub session_wait: Duration,
    /// After a self-update exit (3/4), how long `run.sh`/`runsvc.sh` get to start the new version
    /// before the daemon starts the runner itself.
    pub update_grace: Duration,
    /// The first retry delay after a failure ([`BACKOFF_BASE`]).
    pub backoff_base: Duration,
    /// The longest retry delay ([`BACKOFF_CAP`]).
    pub backoff_cap: Duration,
    /// How long a deterministic failure (bad credentials, missing permission) keeps GitHub's
    /// circuit open when no secret file changes ([`CIRCUIT_OPEN`]).
    pub circuit_open: Duration,
}

impl Options {
    /// [`backoff`] with these options' base and cap.
    pub fn backoff(&self, count: u32) -> Duration {
        backoff_with(self.backoff_base, self.backoff_cap, count)
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            resync: Duration::from_secs(60),
            check: Duration::from_secs(5),
            session_wait: Duration::from_secs(120),
            update_grace: Duration::from_secs(60),
            backoff_base: BACKOFF_BASE,
            backoff_cap: BACKOFF_CAP,
            circuit_open: CIRCUIT_OPEN,
        }
    }
}

/// `d` for a log line: in minutes, or in seconds when under two.
pub(crate) fn for_how_long(d: Duration) -> String {
    if d >= Duration::from_secs(120) {
        format!("{} min", d.as_secs() / 60)
    } else {
        format!("{} s", d.as_secs())
    }
}

/// The circuit in front of every GitHub call.
#[derive(Debug, Clone)]
struct Circuit {
    until: Instant,
    reason: String,
}

/// What the loop keeps between passes.
struct Daemon {
    config: Config,
    hostname: String,
    options: Options,
    health: BTreeMap<String, Health>,
    github_circuit: Option<Circuit>,
    /// GitHub's runner list failing for a reason that may pass: listed again on a backoff.
    list_backoff: outage::ListBackoff,
    listing: Listing,
    last_written: Option<state::DaemonState>,
    /// Recent runner releases and when they were read (for the update window).
    releases: Option<(Instant, Vec<metrics::Published>)>,
    /// The boards of board runners: a runner whose board cannot take jobs stays offline.
    boards: boards::BoardWatch,
    /// After a pass that started, registered or upgraded runners: GitHub's list is read once
    /// more then, so that `online` in the metrics file follows without waiting for the resync.
    relist_at: Option<Instant>,
}

/// How long after starting runners their `online` is read again from GitHub's list.
const RELIST_AFTER: Duration = Duration::from_secs(10);

/// How long the runner list waits for a connection to GitHub (an outage that drops packets must
/// not hold the pass, and the local restarts in it, for long).
const LIST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the release list is read again (only with `disable_update` runners).
const RELEASES_EVERY: Duration = Duration::from_secs(6 * 3600);

fn hostname() -> String {
    config::LoadOptions::from_env()
        .hostname
        .unwrap_or_else(|| "localhost".to_owned())
}

fn jitter(base: Duration, fraction: f64) -> Duration {
    let factor = 1.0 + rand::random_range(-fraction..=fraction);
    base.mul_f64(factor.max(0.0))
}

/// The backoff after `count` consecutive failures: exponential, jittered, capped.
pub fn backoff(count: u32) -> Duration {
    backoff_with(BACKOFF_BASE, BACKOFF_CAP, count)
}

/// [`backoff`] from another base and cap.
pub fn backoff_with(base: Duration, cap: Duration, count: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << count.saturating_sub(1).min(16));
    jitter(exp.min(cap), 0.2).min(cap)
}

/// Whether retrying cannot help until the secret or the permissions change.
fn deterministic(err: &RunnerError) -> bool {
    match err {
        RunnerError::Github { source, .. } => deterministic_github(source),
        _ => false,
    }
}

fn deterministic_github(err: &GithubError) -> bool {
    matches!(
        err,
        GithubError::BadCredentials { .. } | GithubError::MissingPermission { .. }
    )
}

fn load(path: &Path) -> Result<Config, String> {
    config::load(path).map_err(|err| crate::redact::redact(&err.to_string()).into_owned())
}

fn watch(config: &Config, rotation: &credentials::Rotation) -> Option<secrets::SecretWatch> {
    let sources: Vec<&Path> = rotation.source().into_iter().collect();
    match secrets::SecretWatch::with_sources(config, &sources) {
        Ok(watch) => Some(watch),
        Err(err) => {
            log::warn!("cannot watch the secret files, a new secret needs `systemctl reload runner-agent`: {err}");
            None
        }
    }
}

/// Whether a runner of `config` runs as a systemd unit (and the D-Bus watch is of use).
fn uses_units(config: &Config) -> bool {
    config
        .runners
        .iter()
        .any(|r| r.service == config::ServiceKind::Systemd && !jit::is_jit(r))
}

async fn unit_stopped(watch: &mut Option<units::UnitWatch>) -> units::UnitStop {
    match watch {
        Some(watch) => watch.next().await,
        None => std::future::pending().await,
    }
}

async fn secret_changed(watch: &mut Option<secrets::SecretWatch>) -> PathBuf {
    match watch {
        Some(watch) => watch.changed().await,
        None => std::future::pending().await,
    }
}

/// Run the daemon until `SIGTERM`/`SIGINT`. A bad configuration at start is [`Status::Config`].
pub async fn run(config_path: &Path, options: &Options) -> Result<Status, DaemonError> {
    let config = match load(config_path) {
        Ok(config) => config,
        Err(report) => {
            log::error!("{report}");
            return Ok(Status::Config);
        }
    };
    let sig = |kind: SignalKind, name: &'static str| {
        signal(kind).map_err(|source| DaemonError::Signal {
            signal: name,
            source,
        })
    };
    let mut term = sig(SignalKind::terminate(), "SIGTERM")?;
    let mut int = sig(SignalKind::interrupt(), "SIGINT")?;
    let mut hup = sig(SignalKind::hangup(), "SIGHUP")?;
    let mut chld = sig(SignalKind::child(), "SIGCHLD")?;
    // A secret systemd copied (`LoadCredential=`): where from, to pick up a new one there.
    let mut rotation = credentials::Rotation::new(&config);
    let mut secrets = watch(&config, &rotation);
    let mut unit_watch = uses_units(&config).then(units::UnitWatch::start);
    log::info!(
        "daemon started with {} runner(s), resync every {} s",
        config.runners.len(),
        options.resync.as_secs()
    );
    let mut daemon = Daemon {
        listing: Listing::new(&config),
        boards: boards::BoardWatch::new(&config, crate::boards::identity::Roots::from_env()),
        config,
        hostname: hostname(),
        options: options.clone(),
        health: BTreeMap::new(),
        github_circuit: None,
        list_backoff: outage::ListBackoff::default(),
        last_written: None,
        releases: None,
        relist_at: None,
    };
    let mut resync_at = Instant::now();
    let mut one_job = jit::Jit::default();
    loop {
        reap();
        // One-job runners: JIT slots, ephemeral runners to register again at once.
        let board_gated = |name: &str| daemon.boards.gated(name);
        // The slots call GitHub through the list's client, behind its circuit and backoff.
        let mut github = jit::Github {
            remote: daemon.listing.remote.as_ref(),
            circuit: &mut daemon.github_circuit,
            backoff: &mut daemon.list_backoff,
            options: &daemon.options,
        };
        if one_job
            .tick(&daemon.config, &daemon.hostname, board_gated, &mut github)
            .await
        {
            resync_at = Instant::now();
        }
        for runner in daemon.config.runners.iter().filter(|r| jit::is_jit(r)) {
            let health = daemon.health.entry(runner.name.clone()).or_default();
            health.last_error = one_job.last_error(&runner.name);
        }
        let now = Instant::now();
        let boards_changed = daemon.boards.rescan();
        let pass = now >= resync_at || boards_changed || daemon.needs_pass();
        if pass {
            if rotation.retry(&daemon.config) {
                secrets = watch(&daemon.config, &rotation);
            }
            daemon.reconcile().await;
            resync_at = Instant::now() + jitter(options.resync, 0.1);
        }
        let relist = !pass && daemon.relist_at.is_some_and(|at| at <= Instant::now());
        if relist {
            daemon.relist().await;
        }
        if !pass {
            daemon.refresh_states();
        }
        daemon.write_state(pass || relist);
        let wait = options
            .check
            .min(resync_at.saturating_duration_since(Instant::now()))
            .min(daemon.next_gate_end())
            .min(daemon.relist_at.map_or(Duration::MAX, |at| {
                at.saturating_duration_since(Instant::now())
            }))
            .min(one_job.wake_in());
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                match load(config_path) {
                    Ok(mut new) => {
                        rotation = std::mem::take(&mut rotation).renew(&new);
                        rotation.apply(&mut new);
                        log::info!("configuration reloaded from `{}`", config_path.display());
                        daemon.listing = Listing::new(&new);
                        daemon.boards = boards::BoardWatch::new(
                            &new,
                            crate::boards::identity::Roots::from_env(),
                        );
                        daemon.config = new;
                        // Backoffs and circuits start afresh with the new configuration; what
                        // happened so far (restarts, the last exit) stays in `status`.
                        for health in daemon.health.values_mut() {
                            *health = state::Health {
                                restarts: health.restarts,
                                last_exit_code: health.last_exit_code,
                                last_exit: health.last_exit.take(),
                                ..state::Health::default()
                            };
                        }
                        daemon.github_circuit = None;
                        daemon.list_backoff.reset();
                        daemon.releases = None;
                        one_job = jit::Jit::default();
                        secrets = watch(&daemon.config, &rotation);
                        if unit_watch.is_none() && uses_units(&daemon.config) {
                            unit_watch = Some(units::UnitWatch::start());
                        }
                        resync_at = Instant::now();
                    }
                    Err(report) => log::error!(
                        "keeping the previous configuration, the new one is invalid: {report}"
                    ),
                }
            }
            path = secret_changed(&mut secrets) => {
                log::info!("secret `{}` changed: reloading the credentials", path.display());
                // The source of a `LoadCredential=` copy: read the secret from there from now on.
                let watched_source = rotation.source().map(Path::to_owned);
                rotation.changed(&path, &mut daemon.config);
                if rotation.source() != watched_source.as_deref() {
                    secrets = watch(&daemon.config, &rotation);
                }
                // Where a relative secret is read may have changed (a file that appeared in
                // `$CREDENTIALS_DIRECTORY`): resolve it again, nothing else of the configuration.
                if let Ok(mut new) = load(config_path) {
                    rotation = std::mem::take(&mut rotation).renew(&new);
                    rotation.apply(&mut new);
                    if new.github.auth != daemon.config.github.auth {
                        daemon.config.github.auth = new.github.auth;
                        secrets = watch(&daemon.config, &rotation);
                    }
                }
                daemon.listing = Listing::new(&daemon.config);
                daemon.github_circuit = None;
                daemon.list_backoff.reset();
                for health in daemon.health.values_mut() {
                    health.close_circuit();
                }
                resync_at = Instant::now();
            }
            _ = chld.recv() => {}
            stop = unit_stopped(&mut unit_watch) => {
                // The next turn's liveness check sees it and runs a pass.
                log::info!("runner unit `{}` stopped: {}", stop.unit, stop.describe());
            }
            () = daemon.boards.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    daemon.write_state(true);
    log::info!("daemon stopping; the runners keep running");
    Ok(Status::Success)
}

/// Reap exited children: process-backend runners started by this daemon are its children, and
/// a dead one left a zombie would still look alive. Only called between passes, when no command
/// of the lifecycle is running.
fn reap() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    while let Ok(status) = waitpid(nix::unistd::Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        match status {
            WaitStatus::StillAlive => break,
            WaitStatus::Exited(pid, code) => log::info!("process {pid} exited ({code})"),
            WaitStatus::Signaled(pid, signal, _) => log::info!("process {pid} killed by {signal}"),
            _ => {}
        }
    }
}

/// The service state of `runner` (`active`, `inactive`, …), if it can be asked.
fn service_state(lifecycle: &Lifecycle<'_>, runner: &config::Runner) -> Option<String> {
    let unit = lifecycle.unit(runner).ok()?;
    // A JIT runner's listener is always a process of the daemon.
    let kind = if jit::is_jit(runner) {
        config::ServiceKind::Process
    } else {
        runner.service
    };
    let backend = lifecycle.backends.get(kind.as_str())?;
    backend.status(&unit).ok().map(|status| status.state)
}

impl Daemon {
    /// How long until the first runner's wait (backoff, session conflict, update, circuit) ends;
    /// the loop wakes then even when its liveness check is slow.
    fn next_gate_end(&self) -> Duration {
        let now = Instant::now();
        self.health
            .values()
            .flat_map(|h| [h.until, h.circuit_until])
            .chain([self.list_backoff.next()])
            .flatten()
            .filter(|at| *at > now)
            .map(|at| at - now)
            .min()
            .unwrap_or(Duration::MAX)
    }

    /// A cheap local check: did a runner stop (or is a registered one not running), out of
    /// backoff and not drained?
    fn needs_pass(&self) -> bool {
        let Ok(remote) = Remote::from_config(&self.config) else {
            return false;
        };
        let lifecycle = Lifecycle::new(&self.config, self.hostname.clone(), remote);
        let now = Instant::now();
        let state_dir = &self.config.agent.state_dir;
        self.config.runners.iter().any(|runner| {
            let health = self.health.get(&runner.name);
            let gated = health.is_some_and(|h| h.gated(now)) || self.boards.gated(&runner.name);
            let was_running = health.is_some_and(|h| h.was_running);
            !gated
                && !jit::is_jit(runner)
                && !drain::is_marked(state_dir, &runner.name)
                // A listener that finds its registration deleted removes `.runner` before it
                // exits (actions-runner.md §4.3): the agent's record still says it is ours.
                && (was_running
                    || runner::LocalRegistration::read(&runner.dir).is_some()
                    || lifecycle.record(&runner.name).is_some())
                && service_state(&lifecycle, runner).is_some_and(|state| state != "active")
        })
    }

    /// Ask for GitHub's list again after runners were started ([`RELIST_AFTER`]), unless calls
    /// to GitHub wait (circuit, outage backoff); a failure is left to the next pass.
    fn relist_soon(&mut self) {
        if self.options.resync > RELIST_AFTER {
            self.relist_at.get_or_insert(Instant::now() + RELIST_AFTER);
        }
    }

    async fn relist(&mut self) {
        self.relist_at = None;
        let now = Instant::now();
        if self.github_circuit.as_ref().is_some_and(|c| c.until > now)
            || self.list_backoff.waiting(now)
        {
            return;
        }
        if let Err(err) = self.listing.list().await {
            log::debug!("cannot read GitHub's runner list: {}", error_chain(&err));
        }
    }

    /// Between passes: a runner the last pass left `running` whose service stopped since, and
    /// that waits out its restart backoff (which `needs_pass` leaves alone), is shown as what it
    /// is (`backing-off`, `session-conflict`, …) with why it stopped, not as `running` until the
    /// next pass. Only such runners are looked at, so a healthy host checks nothing here.
    fn refresh_states(&mut self) {
        let now = Instant::now();
        let waiting: Vec<config::Runner> = self
            .config
            .runners
            .iter()
            .filter(|r| {
                !jit::is_jit(r)
                    && self
                        .health
                        .get(&r.name)
                        .is_some_and(|h| h.state == "running" && h.gated(now))
            })
            .cloned()
            .collect();
        if waiting.is_empty() {
            return;
        }
        let Ok(remote) = Remote::from_config(&self.config) else {
            return;
        };
        let config = self.config.clone();
        let lifecycle = Lifecycle::new(&config, self.hostname.clone(), remote);
        let host_circuit = self.github_circuit.as_ref().is_some_and(|c| c.until > now);
        for runner in &waiting {
            // Unknown (the backend cannot say): left to the next pass.
            if service_state(&lifecycle, runner).is_none_or(|state| state == "active") {
                continue;
            }
            self.observe_exit(runner, &lifecycle, now);
            let seen = Seen {
                drained: drain::is_marked(&config.agent.state_dir, &runner.name),
                running: false,
                board_offline: self.boards.gated(&runner.name),
                registered: runner::LocalRegistration::read(&runner.dir).is_some(),
                host_circuit,
            };
            let health = self.health.entry(runner.name.clone()).or_default();
            health.state = health.state_name(seen, now).to_owned();
        }
    }

    /// Write the state file (and the metrics file) when something changed, or when `force`.
    fn write_state(&mut self, force: bool) {
        let now = Instant::now();
        let open = self.github_circuit.as_ref().filter(|c| c.until > now);
        let github_circuit = open.map(|c| c.reason.clone());
        let github_circuit_until = open.and_then(|c| state::wall(c.until, now));
        let mut runners = BTreeMap::new();
        for runner in &self.config.runners {
            let health = self.health.get(&runner.name).cloned().unwrap_or_default();
            let mut snapshot = health.snapshot(now);
            // Waiting for GitHub's circuit: tried again when it closes (or a secret changes).
            if snapshot.state == "circuit-open" && snapshot.next_retry.is_none() {
                snapshot.next_retry.clone_from(&github_circuit_until);
            }
            runners.insert(runner.name.clone(), snapshot);
        }
        let github_unreachable = self.list_backoff.snapshot(now);
        // `next_try` moves with every failure: compared without it, it is written with them.
        let unchanged = self.last_written.as_ref().is_some_and(|last| {
            last.runners == runners
                && last.github_circuit == github_circuit
                && last
                    .github_unreachable
                    .as_ref()
                    .map(|o| (o.failures, &o.reason))
                    == github_unreachable.as_ref().map(|o| (o.failures, &o.reason))
        });
        if unchanged && !force {
            return;
        }
        let snapshot = state::DaemonState {
            schema: state::SCHEMA.to_owned(),
            pid: std::process::id(),
            updated_at: state::rfc3339(std::time::SystemTime::now()).unwrap_or_default(),
            github_circuit,
            github_circuit_until,
            github_unreachable,
            runners,
        };
        if let Err(err) = state::write(&self.config.agent.state_dir, &snapshot) {
            log::warn!(
                "cannot write `{}`: {err}",
                state::path(&self.config.agent.state_dir).display()
            );
        }
        if let Some(path) = &self.config.daemon.metrics_file {
            let text = metrics::render(
                &self.config,
                &snapshot,
                self.listing.last.as_deref(),
                self.releases.as_ref().map(|(_, r)| r.as_slice()),
                std::time::SystemTime::now(),
            );
            if let Err(err) = crate::atomic::write(path, text.as_bytes(), 0o644) {
                log::warn!("cannot write the metrics file `{}`: {err}", path.display());
            }
        }
        self.last_written = Some(snapshot);
    }
}

/// GitHub's runner list, read conditionally (ETag): `304 Not Modified` reuses the last list.
/// One client per configuration (and per secret), so its ETag cache lives across passes. One
/// attempt per list, no retry inside the call: the daemon's host-wide backoff
/// ([`outage::ListBackoff`]) is the retry, and a pass never waits in a retry loop (or a rate
/// limit) of the client while a runner needs starting.
struct Listing {
    remote: Option<Remote>,
    last: Option<Vec<RemoteRunner>>,
}

impl Listing {
    fn new(config: &Config) -> Listing {
        let remote = match Remote::from_config(config) {
            Ok(Remote::Rest { scope, .. }) => {
                crate::github::Credentials::from_config(&config.github.auth)
                    .and_then(|credentials| {
                        crate::github::Client::with_options(
                            config.github.api_url.clone(),
                            credentials,
                            crate::github::ClientOptions {
                                max_attempts: 1,
                                connect_timeout: LIST_CONNECT_TIMEOUT,
                                ..crate::github::ClientOptions::default()
                            },
                        )
                    })
                    .ok()
                    .map(|client| Remote::Rest {
                        client: Box::new(client),
                        scope,
                    })
            }
            Ok(other) => Some(other),
            Err(_) => None,
        };
        Listing { remote, last: None }
    }

    async fn list(&mut self) -> Result<Option<Vec<RemoteRunner>>, GithubError> {
        let Some(Remote::Rest { client, scope }) = &self.remote else {
            return Ok(None);
        };
        let fresh = match self.last {
            Some(_) => client.list_runners_cached(scope).await?,
            None => Cached::Modified(client.list_runners(scope).await?),
        };
        if let Cached::Modified(list) = fresh {
            self.last = Some(list.into_iter().map(RemoteRunner::from).collect());
        }
        Ok(self.last.clone())
    }

    /// Recent runner releases with their publication times.
    async fn releases(&self, config: &Config) -> Result<Vec<metrics::Published>, GithubError> {
        let list = match &self.remote {
            Some(Remote::Rest { client, .. }) => client.releases().await?,
            _ => {
                crate::github::Client::new(config.github.api_url.clone(), None::<String>)?
                    .releases()
                    .await?
            }
        };
        Ok(list
            .into_iter()
            .filter_map(|r| {
                Some(metrics::Published {
                    version: r.tag_name.parse().ok()?,
                    at: r.published_at?.into(),
                })
            })
            .collect())
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    crate::redact::redact(&text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        assert!(backoff(1) <= BACKOFF_BASE.mul_f64(1.2));
        assert!(backoff(4) >= BACKOFF_BASE.saturating_mul(8).mul_f64(0.8));
        for count in [10, 20, 1000] {
            assert!(backoff(count) <= BACKOFF_CAP);
            assert!(backoff(count) >= BACKOFF_CAP.mul_f64(0.8));
        }
    }
}
