//! One reconcile pass: observe, plan ([`super::plan`]), apply.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use super::busy;
use super::exits::{self, ExitKind};
use super::{
    deterministic, drain, error_chain, plan, service_state, Action, Daemon, DesiredRunner, Gate,
    LocalRunner, Observed,
};
use super::{metrics, upgrade, Seen};
use crate::config::{self, Config, Ephemeral, ServiceKind, VersionReq};
use crate::runner::{self, Lifecycle, Record, Remote, RemoteRunner};

/// The files of a local registration (what `config.sh remove --local` deletes).
const REGISTRATION_FILES: [&str; 5] = [
    ".runner",
    ".runner_migrated",
    ".credentials",
    ".credentials_migrated",
    ".credentials_rsaparams",
];

/// The runners this host recorded (`<state_dir>/runners/<name>.json`) that are no longer
/// configured.
fn unconfigured_records(config: &Config) -> Vec<Record> {
    let dir = config.agent.state_dir.join("runners");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<Record> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|t| serde_json::from_str::<Record>(&t).ok())
        .filter(|r| config.runner(&r.name).is_none())
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// A runner as configured once, rebuilt from its record (to remove it).
fn runner_from_record(record: &Record) -> config::Runner {
    config::Runner {
        name: record.name.clone(),
        user: record.user.clone(),
        dir: record.dir.clone(),
        work_dir: "_work".into(),
        labels: record.labels.clone(),
        group: None,
        ephemeral: Ephemeral::No,
        disable_update: false,
        version: VersionReq::Latest,
        download_mirror: None,
        sha256: BTreeMap::new(),
        board: None,
        service: match record.service.as_str() {
            "process" => ServiceKind::Process,
            "container" => ServiceKind::Container,
            _ => ServiceKind::Systemd,
        },
    }
}

/// Whether an action needs GitHub (tokens, the REST API).
fn needs_github(action: &Action) -> bool {
    matches!(
        action,
        Action::Register(_) | Action::UpdateLabels(_) | Action::Remove(_) | Action::DeleteGhost(..)
    )
}

impl Daemon {
    /// Read why a runner that is not running stopped, once per stop, and act on it.
    pub(super) fn observe_exit(
        &mut self,
        runner: &config::Runner,
        lifecycle: &Lifecycle<'_>,
        now: Instant,
    ) {
        let health = self.health.entry(runner.name.clone()).or_default();
        health.exit_seen = true;
        health.was_running = false;
        let Some((exit, modified)) = lifecycle
            .log_source(runner)
            .ok()
            .and_then(|source| exits::last_output(&source))
            .and_then(|(out, modified)| exits::classify(&out).map(|e| (e, modified)))
        else {
            return;
        };
        let name = &runner.name;
        health.last_exit_code = exit.code;
        health.last_exit = Some(exit.kind.describe().to_owned());
        let age = modified
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .unwrap_or_default();
        match exit.kind {
            ExitKind::SessionConflict => {
                let wait = self.options.session_wait.saturating_sub(age);
                if !wait.is_zero() {
                    health.until = Some(now + wait);
                    health.waiting = Some("session-conflict");
                    log::warn!(
                        "runner `{name}`: another session of it still exists (exit 5); starting it again in {} s, once that session expired",
                        wait.as_secs()
                    );
                }
            }
            ExitKind::Deleted { cleaned } => {
                // An ephemeral runner's registration goes after its one job (`jit` says so).
                if runner.ephemeral == Ephemeral::No {
                    log::warn!(
                        "runner `{name}`: its registration was deleted on GitHub; registering it again with a fresh token"
                    );
                }
                if !cleaned {
                    for file in REGISTRATION_FILES {
                        let _ = std::fs::remove_file(runner.dir.join(file));
                    }
                }
                health.until = None;
                health.count = 0;
            }
            ExitKind::Updating => {
                let wait = self.options.update_grace.saturating_sub(age);
                if !wait.is_zero() {
                    health.until = Some(now + wait);
                    health.waiting = Some("updating");
                    log::info!("runner `{name}` is updating itself; leaving it to its scripts");
                }
            }
            ExitKind::Deprecated => log::error!(
                "runner `{name}`: GitHub refuses its version as deprecated{}",
                if runner.disable_update {
                    "; it has `disable_update = true`: set `version` to a newer release"
                } else {
                    ""
                }
            ),
            _ => log::info!(
                "runner `{name}` stopped ({}{})",
                exit.kind.describe(),
                exit.code.map(|c| format!(", exit {c}")).unwrap_or_default()
            ),
        }
    }

    pub(super) async fn reconcile(&mut self) {
        let now = Instant::now();
        // This pass reads the list: a later read is asked for again by what it starts.
        self.relist_at = None;
        let remote = match Remote::from_config(&self.config) {
            Ok(remote) => remote,
            Err(err) => {
                log::error!("cannot reach GitHub: {}", error_chain(&err));
                return;
            }
        };
        // A clone, so that the pass can update `self` while the lifecycle borrows the config.
        let config = self.config.clone();
        let lifecycle = Lifecycle::new(&config, self.hostname.clone(), remote);
        let state_dir = config.agent.state_dir.clone();

        // GitHub's view, unless its circuit is open or its list is backing off (an outage).
        let circuit_open = self.github_circuit.as_ref().is_some_and(|c| c.until > now);
        let (remote_list, github_ok) = if circuit_open || self.list_backoff.waiting(now) {
            (None, false)
        } else {
            match self.listing.list().await {
                Ok(list) => {
                    self.list_backoff.succeeded(Instant::now());
                    (list, true)
                }
                Err(err) => {
                    let reason = error_chain(&err);
                    let shared = super::outage::shared_failure(
                        &err,
                        reason.clone(),
                        true,
                        &mut self.github_circuit,
                        &mut self.list_backoff,
                        &self.options,
                        Instant::now(),
                    );
                    if shared == super::outage::Shared::NotShared {
                        // Not understood: no list until the host-wide backoff ran out either.
                        self.list_backoff
                            .failed(reason, false, &self.options, Instant::now());
                    }
                    (None, false)
                }
            }
        };

        let stale = self
            .releases
            .as_ref()
            .is_none_or(|(at, _)| now.saturating_duration_since(*at) >= super::RELEASES_EVERY);
        if github_ok && stale && config.runners.iter().any(|r| r.disable_update) {
            match self.listing.releases(&config).await {
                Ok(list) => self.releases = Some((now, list)),
                Err(err) => log::warn!("cannot read the runner releases: {}", error_chain(&err)),
            }
        }

        let mut observed = Observed {
            local: Vec::new(),
            remote: remote_list.clone(),
            marker: lifecycle.marker(),
            gates: BTreeMap::new(),
        };
        let mut desired = Vec::new();
        let mut drained = Vec::new();
        for runner in &config.runners {
            if super::jit::is_jit(runner) {
                // `jit` runs its slots; desired only, so that its registration is no ghost.
                desired.push(DesiredRunner {
                    name: runner.name.clone(),
                    labels: Vec::new(),
                });
                continue;
            }
            let running = service_state(&lifecycle, runner).as_deref() == Some("active");
            if running {
                let health = self.health.entry(runner.name.clone()).or_default();
                health.was_running = true;
                health.exit_seen = false;
            } else if !self.health.get(&runner.name).is_some_and(|h| h.exit_seen) {
                self.observe_exit(runner, &lifecycle, now);
            }
            let id = runner::LocalRegistration::read(&runner.dir).map(|l| l.id);
            let kvm = runner::run_as(&runner.user)
                .map(|r| runner::kvm_usable(&r, &lifecycle.options.kvm_node))
                .unwrap_or(false);
            desired.push(DesiredRunner {
                name: runner.name.clone(),
                labels: runner::desired_labels(&config, runner, &self.hostname, kvm),
            });
            if runner.dir.is_dir() || id.is_some() {
                observed.local.push(LocalRunner {
                    name: runner.name.clone(),
                    id,
                    running,
                    // Only a board gate asks (a /proc scan is not free).
                    busy: running
                        && self.boards.gated(&runner.name)
                        && busy::job_here(&lifecycle, runner),
                    labels: lifecycle
                        .record(&runner.name)
                        .map(|r| r.labels)
                        .unwrap_or_default(),
                });
            }
            if drain::is_marked(&state_dir, &runner.name) {
                drained.push(runner.name.clone());
                observed.gates.insert(runner.name.clone(), Gate::Circuit);
                // Drained but running (its enabled unit started it at boot, or a drain whose
                // command was interrupted): stopped once idle, on this host and on GitHub's list
                // when there is one, never during a job.
                if running && !busy::busy(&lifecycle, runner, remote_list.as_deref()) {
                    log::info!("runner `{}` is drained and idle: stopping it", runner.name);
                    if let Err(err) = lifecycle.stop(runner) {
                        log::warn!(
                            "cannot stop drained runner `{}`: {}",
                            runner.name,
                            error_chain(&err)
                        );
                    }
                }
                continue;
            }
            // A runner seen running after its restart backoff ran out is healthy again.
            if let Some(health) = self.health.get_mut(&runner.name) {
                if running
                    && health.circuit_until.is_none_or(|t| t <= now)
                    && health.until.is_none_or(|t| t <= now)
                {
                    health.succeeded();
                }
                if health.circuit_until.is_some_and(|t| t > now) {
                    observed.gates.insert(runner.name.clone(), Gate::Circuit);
                } else if let Some(until) = health.until {
                    observed
                        .gates
                        .insert(runner.name.clone(), Gate::Until(until));
                }
            }
        }
        let recorded = unconfigured_records(&config);
        for record in &recorded {
            observed.local.push(LocalRunner {
                name: record.name.clone(),
                id: runner::LocalRegistration::read(&record.dir).map(|l| l.id),
                running: false,
                busy: false,
                labels: record.labels.clone(),
            });
        }

        // A board that cannot take jobs keeps its runners offline, whatever else holds.
        observed.gates.extend(self.boards.gates());
        for action in plan(&desired, &observed, now) {
            if let Action::Register(name) | Action::Start(name) | Action::UpdateLabels(name) =
                &action
            {
                if config.runner(name).is_some_and(super::jit::is_jit) {
                    continue;
                }
            }
            if !github_ok && needs_github(&action) {
                if let Action::Register(name) | Action::UpdateLabels(name) = &action {
                    let health = self.health.entry(name.clone()).or_default();
                    health.last_error =
                        Some(match (&self.github_circuit, self.list_backoff.reason()) {
                            (Some(c), _) if c.until > now => {
                                format!("waiting for GitHub: {}", c.reason)
                            }
                            (_, Some(reason)) => format!(
                                "waiting for GitHub: its runner list fails ({reason}); next try {}",
                                self.list_backoff
                                    .next()
                                    .and_then(|at| super::state::wall(at, now))
                                    .unwrap_or_default()
                            ),
                            _ => "waiting for GitHub: its runner list cannot be read".to_owned(),
                        });
                }
                continue;
            }
            let name = match &action {
                Action::Register(n) | Action::Start(n) | Action::UpdateLabels(n) => n.clone(),
                Action::Remove(name) => {
                    self.remove_unconfigured(
                        &lifecycle,
                        &recorded,
                        name,
                        remote_list.as_deref(),
                        now,
                    )
                    .await;
                    continue;
                }
                Action::DeleteGhost(id, name) => {
                    log::info!("deleting ghost runner `{name}` (id {id}) of this host on GitHub");
                    if let Err(err) = lifecycle.remote.delete_runner(*id).await {
                        log::warn!("cannot delete runner `{name}`: {}", error_chain(&err));
                    }
                    continue;
                }
                Action::Stop(name, reason) => {
                    if let Some(runner) = config.runner(name) {
                        super::boards::take_offline(&lifecycle, runner, reason);
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
                    if matches!(action, Action::UpdateLabels(_)) {
                        log::info!("updating the labels of runner `{name}` on GitHub");
                    } else {
                        log::info!("registering runner `{name}`");
                    }
                    lifecycle.register(runner).await.map(|outcome| {
                        log::info!("runner `{name}`: {outcome:?}");
                    })
                }
            };
            if outcome.is_ok() {
                self.relist_soon();
            }
            let health = self.health.entry(name.clone()).or_default();
            match outcome {
                Ok(()) if matches!(action, Action::Start(_)) => {
                    // No restart loop for a runner that dies at once: the next start waits.
                    health.restarts += 1;
                    health.exit_seen = false;
                    // Its exit must wake the loop (`needs_pass`), whatever it leaves behind.
                    health.was_running = true;
                    health.count += 1;
                    health.waiting = None;
                    health.until = Some(Instant::now() + self.options.backoff(health.count));
                }
                Ok(()) => {
                    health.exit_seen = false;
                    health.was_running = true;
                    health.succeeded();
                }
                Err(err) => {
                    let text = error_chain(&err);
                    health.last_error = Some(text.clone());
                    health.waiting = None;
                    if deterministic(&err) {
                        health.circuit_until = Some(Instant::now() + self.options.circuit_open);
                        health.circuit_reason = Some(text.clone());
                        log::error!(
                            "runner `{name}`: {text}; not trying again for {} (or until a secret file changes or the configuration is reloaded)",
                            super::for_how_long(self.options.circuit_open)
                        );
                    } else {
                        health.count += 1;
                        let delay = self
                            .options
                            .backoff(health.count)
                            .max(super::ratelimit::pause(&err).unwrap_or_default());
                        health.until = Some(Instant::now() + delay);
                        log::warn!("runner `{name}`: {text}; retrying in {} s", delay.as_secs());
                    }
                }
            }
        }

        // `disable_update` runners: upgraded by the daemon while idle, on this host and on
        // GitHub's list when it could be read (without REST access, or while the list fails, the
        // host's view alone). Not while GitHub's circuit is open: the upgrade downloads from it.
        if self
            .github_circuit
            .as_ref()
            .is_none_or(|c| c.until <= Instant::now())
        {
            self.upgrade_idle(&lifecycle, &drained, remote_list.as_deref())
                .await;
        }

        // What each runner is now, for `status`.
        let now = Instant::now();
        let circuit = self
            .github_circuit
            .as_ref()
            .filter(|c| c.until > now)
            .map(|c| c.reason.clone());
        for runner in &config.runners {
            let running = service_state(&lifecycle, runner).as_deref() == Some("active");
            let registered = runner::LocalRegistration::read(&runner.dir).is_some();
            let seen = Seen {
                drained: drained.contains(&runner.name),
                running,
                board_offline: self.boards.gated(&runner.name),
                registered,
                host_circuit: circuit.is_some(),
            };
            let health = self.health.entry(runner.name.clone()).or_default();
            health.state = health.state_name(seen, now).to_owned();
            if health.state == "circuit-open" && health.circuit_reason.is_none() {
                health.circuit_reason.clone_from(&circuit);
            }
        }
        self.health.retain(|name, _| {
            config.runner(name).is_some() || recorded.iter().any(|r| &r.name == name)
        });
        self.boards.settle(&lifecycle);
    }

    /// Upgrade the idle `disable_update` runners that run an older version than they should.
    async fn upgrade_idle(
        &mut self,
        lifecycle: &Lifecycle<'_>,
        drained: &[String],
        list: Option<&[RemoteRunner]>,
    ) {
        let now = Instant::now();
        let releases = self.releases.as_ref().map(|(_, r)| r.clone());
        for runner in &lifecycle.config.runners {
            let Some(target) = upgrade::target(runner, releases.as_deref()) else {
                continue;
            };
            if drained.contains(&runner.name)
                || super::jit::is_jit(runner)
                || self.health.get(&runner.name).is_some_and(|h| h.gated(now))
                || runner::LocalRegistration::read(&runner.dir).is_none()
            {
                continue;
            }
            let recorded = lifecycle.record(&runner.name).map(|r| r.version);
            let installed = metrics::installed_version(&runner.dir, recorded.as_deref());
            let Some(version) = upgrade::due(installed.as_deref(), Some(target)) else {
                continue;
            };
            if busy::busy(lifecycle, runner, list) {
                continue;
            }
            let name = &runner.name;
            log::info!(
                "runner `{name}` (disable_update) runs {}; upgrading it to {version} while it is idle",
                installed.as_deref().unwrap_or("?")
            );
            let outcome = upgrade::upgrade(lifecycle, runner, version).await;
            if matches!(outcome, Ok(upgrade::Upgraded::Done)) {
                self.relist_soon();
            }
            let health = self.health.entry(name.clone()).or_default();
            if matches!(outcome, Ok(upgrade::Upgraded::Busy)) {
                log::info!(
                    "runner `{name}` took a job during the download; upgrading it after the job"
                );
                continue;
            }
            health.exit_seen = false;
            if let Err(err) = outcome {
                let text = error_chain(&err);
                health.last_error = Some(format!("upgrade to {version}: {text}"));
                health.count += 1;
                let delay = self.options.backoff(health.count);
                health.until = Some(Instant::now() + delay);
                log::warn!(
                    "runner `{name}`: cannot upgrade to {version}: {text}; retrying in {} s",
                    delay.as_secs()
                );
            }
        }
    }

    /// Deregister and delete a runner that is no longer configured (not while it runs a job).
    async fn remove_unconfigured(
        &mut self,
        lifecycle: &Lifecycle<'_>,
        recorded: &[Record],
        name: &str,
        list: Option<&[RemoteRunner]>,
        now: Instant,
    ) {
        let Some(record) = recorded.iter().find(|r| r.name == name) else {
            return;
        };
        if self.health.get(name).is_some_and(|h| h.gated(now)) {
            return;
        }
        let runner = runner_from_record(record);
        if busy::job_here(lifecycle, &runner) || busy::busy_on_github(list, &record.dir) {
            log::info!("runner `{name}` is no longer configured; removing it once its job is done");
            return;
        }
        log::info!("runner `{name}` is no longer configured: deregistering and removing it");
        match lifecycle.remove(&runner).await {
            Ok(()) => {
                self.health.remove(name);
                let _ = drain::unmark(&lifecycle.config.agent.state_dir, name);
            }
            Err(err) => {
                let health = self.health.entry(name.to_owned()).or_default();
                health.count += 1;
                let delay = self.options.backoff(health.count);
                health.until = Some(Instant::now() + delay);
                log::warn!(
                    "cannot remove runner `{name}`: {}; retrying in {} s",
                    error_chain(&err),
                    delay.as_secs()
                );
            }
        }
    }
}
