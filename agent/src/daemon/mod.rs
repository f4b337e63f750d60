//! `agentctl daemon`: keep the configured runners registered and running (issue 6, first slice).
//!
//! One reconcile pass observes (the configuration, each runner's `.runner` and record, its
//! service state, GitHub's runner list when REST access is configured), plans with the pure
//! [`plan::plan`] and applies the actions through [`Lifecycle`]. Passes are triggered by a
//! periodic resync (with ±10 % jitter), by `SIGHUP` (reload the configuration; a bad new one is
//! logged and the old one kept), by `SIGCHLD` (a process-backend runner started by this daemon
//! exited), and by a cheap liveness check every few seconds of the runners' services (the pid
//! file for the process backend; `systemctl` state for systemd units, polled, not subscribed).
//! `SIGTERM`/`SIGINT` end the loop and leave the runners running.
//!
//! Failures back off per runner (exponential with jitter, capped); a deterministic failure (bad
//! credentials, missing permission) opens a circuit for that runner for [`CIRCUIT_OPEN`].

pub mod plan;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};

use crate::config::{self, Config};
use crate::exit::Status;
use crate::github::{Cached, GithubError};
use crate::runner::{self, Lifecycle, Remote, RemoteRunner, RunnerError};

pub use plan::{plan, Action, DesiredRunner, Gate, LocalRunner, Observed};

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
}

impl Default for Options {
    fn default() -> Self {
        Options {
            resync: Duration::from_secs(60),
            check: Duration::from_secs(5),
        }
    }
}

/// Per-runner failure state.
#[derive(Debug, Clone, Default)]
struct Failures {
    count: u32,
    until: Option<Instant>,
    circuit_until: Option<Instant>,
}

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
    let exp = BACKOFF_BASE.saturating_mul(1u32 << count.saturating_sub(1).min(16));
    jitter(exp.min(BACKOFF_CAP), 0.2).min(BACKOFF_CAP)
}

/// Whether retrying cannot help until the secret or the permissions change.
fn deterministic(err: &RunnerError) -> bool {
    match err {
        RunnerError::Github { source, .. } => matches!(
            **source,
            GithubError::BadCredentials { .. } | GithubError::MissingPermission { .. }
        ),
        _ => false,
    }
}

fn load(path: &Path) -> Result<Config, String> {
    config::load(path).map_err(|err| crate::redact::redact(&err.to_string()).into_owned())
}

/// Run the daemon until `SIGTERM`/`SIGINT`. A bad configuration at start is [`Status::Config`].
pub async fn run(config_path: &Path, options: &Options) -> Result<Status, DaemonError> {
    let mut config = match load(config_path) {
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
    let hostname = hostname();
    let mut failures: BTreeMap<String, Failures> = BTreeMap::new();
    let mut listing = Listing::new(&config);
    log::info!(
        "daemon started with {} runner(s), resync every {} s",
        config.runners.len(),
        options.resync.as_secs()
    );
    let mut resync_at = Instant::now();
    loop {
        reap();
        let now = Instant::now();
        if now >= resync_at || needs_pass(&config, &hostname, &failures) {
            reconcile(&config, &hostname, &mut failures, &mut listing).await;
            resync_at = Instant::now() + jitter(options.resync, 0.1);
        }
        let wait = options
            .check
            .min(resync_at.saturating_duration_since(Instant::now()));
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                match load(config_path) {
                    Ok(new) => {
                        log::info!("configuration reloaded from `{}`", config_path.display());
                        config = new;
                        listing = Listing::new(&config);
                        failures.clear();
                        resync_at = Instant::now();
                    }
                    Err(report) => log::error!(
                        "keeping the previous configuration, the new one is invalid: {report}"
                    ),
                }
            }
            _ = chld.recv() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
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

/// A cheap local check: is a registered runner not running, out of backoff?
fn needs_pass(config: &Config, hostname: &str, failures: &BTreeMap<String, Failures>) -> bool {
    let Ok(remote) = Remote::from_config(config) else {
        return false;
    };
    let lifecycle = Lifecycle::new(config, hostname.to_owned(), remote);
    let now = Instant::now();
    config.runners.iter().any(|runner| {
        let gated = failures.get(&runner.name).is_some_and(|f| {
            f.until.is_some_and(|t| t > now) || f.circuit_until.is_some_and(|t| t > now)
        });
        // A listener that finds its registration deleted on GitHub removes `.runner` before it
        // exits (v2.336.0, actions-runner.md §4.3): the agent's record still says it is ours.
        !gated
            && (runner::LocalRegistration::read(&runner.dir).is_some()
                || lifecycle.record(&runner.name).is_some())
            && lifecycle
                .unit(runner)
                .ok()
                .and_then(|unit| {
                    lifecycle
                        .backends
                        .get(runner.service.as_str())
                        .and_then(|b| b.status(&unit).ok())
                })
                .is_some_and(|status| status.state != "active")
    })
}

/// The service state of `runner` (`active`, `inactive`, …), if it can be asked.
fn service_state(lifecycle: &Lifecycle<'_>, runner: &config::Runner) -> Option<String> {
    let unit = lifecycle.unit(runner).ok()?;
    let backend = lifecycle.backends.get(runner.service.as_str())?;
    backend.status(&unit).ok().map(|status| status.state)
}

/// GitHub's runner list, read conditionally (ETag): `304 Not Modified` reuses the last list.
/// One client per configuration, so its ETag cache lives across passes.
struct Listing {
    remote: Option<Remote>,
    last: Option<Vec<RemoteRunner>>,
}

impl Listing {
    fn new(config: &Config) -> Listing {
        Listing {
            remote: Remote::from_config(config).ok(),
            last: None,
        }
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
}

async fn reconcile(
    config: &Config,
    hostname: &str,
    failures: &mut BTreeMap<String, Failures>,
    listing: &mut Listing,
) {
    let remote = match Remote::from_config(config) {
        Ok(remote) => remote,
        Err(err) => {
            log::error!(
                "cannot reach GitHub: {}",
                crate::redact::redact(&format!("{err}"))
            );
            return;
        }
    };
    let lifecycle = Lifecycle::new(config, hostname.to_owned(), remote);
    let now = Instant::now();
    let remote_list = match listing.list().await {
        Ok(list) => list,
        Err(err) => {
            log::warn!("cannot list the runners on GitHub: {}", error_chain(&err));
            return;
        }
    };
    let mut observed = Observed {
        local: Vec::new(),
        remote: remote_list,
        marker: lifecycle.marker(),
        gates: BTreeMap::new(),
    };
    let mut desired = Vec::new();
    for runner in &config.runners {
        let id = runner::LocalRegistration::read(&runner.dir).map(|l| l.id);
        let running = service_state(&lifecycle, runner).as_deref() == Some("active");
        let kvm = runner::run_as(&runner.user)
            .map(|r| runner::kvm_usable(&r, &lifecycle.options.kvm_node))
            .unwrap_or(false);
        desired.push(DesiredRunner {
            name: runner.name.clone(),
            labels: runner::desired_labels(config, runner, hostname, kvm),
        });
        if runner.dir.is_dir() || id.is_some() {
            observed.local.push(LocalRunner {
                name: runner.name.clone(),
                id,
                running,
                labels: lifecycle
                    .record(&runner.name)
                    .map(|r| r.labels)
                    .unwrap_or_default(),
            });
        }
        // A runner seen running after its restart backoff ran out is healthy again.
        if running
            && failures
                .get(&runner.name)
                .is_some_and(|f| f.circuit_until.is_none() && f.until.is_none_or(|t| t <= now))
        {
            failures.remove(&runner.name);
        }
        if let Some(f) = failures.get(&runner.name) {
            if f.circuit_until.is_some_and(|t| t > now) {
                observed.gates.insert(runner.name.clone(), Gate::Circuit);
            } else if let Some(until) = f.until {
                observed
                    .gates
                    .insert(runner.name.clone(), Gate::Until(until));
            }
        }
    }
    for action in plan(&desired, &observed, now) {
        let name = match &action {
            Action::Register(n) | Action::Start(n) | Action::UpdateLabels(n) => n.clone(),
            Action::Remove(name) => {
                log::warn!("runner `{name}` is no longer configured; `agentctl purge` removes it");
                continue;
            }
            Action::DeleteGhost(id, name) => {
                log::info!("deleting ghost runner `{name}` (id {id}) of this host on GitHub");
                if let Err(err) = lifecycle.remote.delete_runner(*id).await {
                    log::warn!("cannot delete runner `{name}`: {}", error_chain(&err));
                }
                continue;
            }
            Action::Wait(name, until) => {
                log::debug!(
                    "runner `{name}`: backing off for {} s",
                    until.saturating_duration_since(now).as_secs()
                );
                continue;
            }
        };
        let Some(runner) = config.runners.iter().find(|r| r.name == name) else {
            continue;
        };
        let outcome = match &action {
            Action::Start(_) => {
                log::info!("starting runner `{name}`");
                lifecycle.start(runner)
            }
            _ => {
                log::info!("registering runner `{name}`");
                lifecycle.register(runner).await.map(|outcome| {
                    log::info!("runner `{name}`: {outcome:?}");
                })
            }
        };
        match outcome {
            Ok(()) if matches!(action, Action::Start(_)) => {
                // No restart loop for a runner that dies at once: the next start waits.
                let entry = failures.entry(name.clone()).or_default();
                entry.count += 1;
                entry.until = Some(Instant::now() + backoff(entry.count));
            }
            Ok(()) => {
                failures.remove(&name);
            }
            Err(err) => {
                let entry = failures.entry(name.clone()).or_default();
                if deterministic(&err) {
                    entry.circuit_until = Some(Instant::now() + CIRCUIT_OPEN);
                    log::error!(
                        "runner `{name}`: {}; not trying again for {} min (or until the configuration is reloaded)",
                        error_chain(&err),
                        CIRCUIT_OPEN.as_secs() / 60
                    );
                } else {
                    entry.count += 1;
                    let delay = backoff(entry.count);
                    entry.until = Some(Instant::now() + delay);
                    log::warn!(
                        "runner `{name}`: {}; retrying in {} s",
                        error_chain(&err),
                        delay.as_secs()
                    );
                }
            }
        }
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
