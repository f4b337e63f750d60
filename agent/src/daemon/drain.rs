//! `agentctl drain [NAME…]`: runners stop taking jobs, finish the one they run, and stay stopped.
//!
//! The real listener has no "finish the job, take no new one" signal: `SIGINT`/`SIGTERM` cancel
//! the running job (`runsvc.sh` forwards SIGINT, the listener cancels its workers;
//! actions-runner.md §3.4). So a drain waits for each runner to be idle and stops it then; an
//! idle runner stops at once. Idle means: no job of the runner on this host ([`super::busy`]:
//! the listener's `Runner.Worker` child lives as long as the job, and the listener announces
//! the job just before it starts that child) and, with REST access, `busy: false` on GitHub's
//! runner list. Without REST access (`registration_token_file`), or while the list cannot be
//! read, the host's view decides alone.
//! A drain mark, `<state_dir>/daemon/drain/<name>`, is written first: the daemon does not start a
//! marked runner again, and stops one it finds running once it is idle (an enabled systemd unit
//! starts it at boot; `svc.sh stop` does not disable it, actions/runner#2060). `agentctl stop`
//! sets the same mark (a runner stopped on purpose stays stopped); `agentctl start`,
//! `agentctl register` and `agentctl undrain` remove it.
//!
//! A job may still be assigned in the instant between the last look and the stop (GitHub itself
//! says persistent runners may be assigned jobs while shutting down); the listener then cancels
//! it and GitHub reports it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::Runner;
use crate::runner::{Lifecycle, LocalRegistration, RunnerError};

/// How often GitHub's list is read while waiting for busy runners.
pub const POLL: Duration = Duration::from_secs(2);

fn marks(state_dir: &Path) -> PathBuf {
    super::state::dir(state_dir).join("drain")
}

/// The drain mark of `name`.
pub fn mark_path(state_dir: &Path, name: &str) -> PathBuf {
    marks(state_dir).join(name)
}

/// Whether `name` is drained (the daemon leaves it stopped).
pub fn is_marked(state_dir: &Path, name: &str) -> bool {
    mark_path(state_dir, name).exists()
}

/// Mark `name` drained.
pub fn mark(state_dir: &Path, name: &str) -> std::io::Result<()> {
    let path = mark_path(state_dir, name);
    let stamp = super::state::rfc3339(std::time::SystemTime::now()).unwrap_or_default();
    crate::atomic::write(&path, format!("{stamp}\n").as_bytes(), 0o644)
}

/// Remove the mark of `name`; whether there was one.
pub fn unmark(state_dir: &Path, name: &str) -> std::io::Result<bool> {
    match std::fs::remove_file(mark_path(state_dir, name)) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

/// How a drain ended for one runner.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Drained {
    /// Idle: stopped at once.
    Stopped,
    /// Busy: stopped after its job finished, `waited` seconds later.
    StoppedAfterJob { waited: u64 },
    /// Still busy when the time ran out: marked, not stopped.
    StillBusy,
    /// Stopping failed.
    Failed { error: String },
}

/// Drain `runners`: mark each, stop the idle ones, wait up to `timeout` for the busy ones.
pub async fn drain(
    lifecycle: &Lifecycle<'_>,
    runners: &[&Runner],
    timeout: Duration,
) -> Result<Vec<(String, Drained)>, RunnerError> {
    let state_dir = &lifecycle.config.agent.state_dir;
    for runner in runners {
        mark(state_dir, &runner.name).map_err(|source| RunnerError::Io {
            path: mark_path(state_dir, &runner.name),
            source,
        })?;
    }
    let started = Instant::now();
    let deadline = started + timeout;
    let mut left: Vec<&Runner> = runners.to_vec();
    let mut out = Vec::new();
    let mut first = true;
    loop {
        let list = match lifecycle.remote.runners().await {
            Ok(list) => list,
            Err(err) => {
                log::warn!(
                    "cannot read GitHub's runner list, going by the jobs seen on this host: {}",
                    crate::redact::redact(&err.to_string())
                );
                None
            }
        };
        let mut still = Vec::new();
        for runner in left {
            let busy = super::busy::job_here(lifecycle, runner)
                || list.as_ref().is_some_and(|list| {
                    let id = LocalRegistration::read(&runner.dir).map(|l| l.id);
                    list.iter()
                        .any(|r| Some(r.id) == id && r.busy && r.status == "online")
                });
            if busy {
                still.push(runner);
                continue;
            }
            let waited = started.elapsed().as_secs();
            let outcome = match lifecycle.stop(runner) {
                Ok(()) if first => Drained::Stopped,
                Ok(()) => Drained::StoppedAfterJob { waited },
                Err(err) => Drained::Failed {
                    error: crate::redact::redact(&err.to_string()).into_owned(),
                },
            };
            out.push((runner.name.clone(), outcome));
        }
        left = still;
        first = false;
        if left.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for runner in left {
                out.push((runner.name.clone(), Drained::StillBusy));
            }
            break;
        }
        tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_set_seen_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_marked(dir.path(), "r1"));
        mark(dir.path(), "r1").unwrap();
        assert!(is_marked(dir.path(), "r1"));
        assert!(!is_marked(dir.path(), "r2"));
        assert!(unmark(dir.path(), "r1").unwrap());
        assert!(!unmark(dir.path(), "r1").unwrap());
        assert!(!is_marked(dir.path(), "r1"));
    }
}
