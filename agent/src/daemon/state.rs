//! What the daemon knows about each runner, kept in memory between passes and written
//! atomically to `<state_dir>/daemon/state.json` for `agentctl status` and for the next start.
//!
//! The file is written to a temporary name in the same directory, `fsync`ed, renamed over the old
//! one and the directory `fsync`ed: a reader (or a daemon restarted after `kill -9` or a power
//! loss) sees the old or the new state, never half of one. Errors are redacted before they are
//! stored. Mode 0644: it holds no secrets, and `agentctl status` may run as another user.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// The schema name in the file.
pub const SCHEMA: &str = "runner-agent.daemon-state/1";

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DaemonState {
    pub schema: String,
    /// The daemon's pid.
    pub pid: u32,
    /// When this was written (RFC 3339, UTC).
    pub updated_at: String,
    /// Why the daemon does not call GitHub at all for now (bad credentials, missing permission).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github_circuit: Option<String>,
    /// When that circuit closes by itself (RFC 3339, UTC): the rate limit's reset, or the long
    /// wait after bad credentials (a changed secret file closes it earlier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github_circuit_until: Option<String>,
    /// GitHub's runner list failing for a reason that may pass (an outage): listed again on a
    /// backoff, runners with a registration keep running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github_unreachable: Option<GithubOutage>,
    pub runners: BTreeMap<String, RunnerState>,
}

/// GitHub's runner list failing in a row ([`super::outage`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GithubOutage {
    /// A 5xx, a connection or a timeout (GitHub unreachable), not an answer about the request.
    pub unreachable: bool,
    /// Since when (RFC 3339, UTC).
    pub since: String,
    /// Failed lists in a row.
    pub failures: u32,
    /// When the list is tried again (RFC 3339, UTC).
    pub next_try: String,
    /// The last failure, redacted.
    pub reason: String,
}

/// One runner as the daemon sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunnerState {
    /// `running`, `stopped`, `backing-off`, `circuit-open`, `session-conflict`, `drained`,
    /// `draining`, `updating`, `unregistered`.
    pub state: String,
    /// The last failure, redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the daemon tries again (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry: Option<String>,
    /// Why the circuit is open: no call for this runner until the secret changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit: Option<String>,
    /// How often the daemon started it again after it stopped.
    #[serde(default)]
    pub restarts: u32,
    /// The listener's last exit code, as its output tells it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit_code: Option<i32>,
    /// What that exit meant (`session conflict`, `registration deleted`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
}

/// The in-memory health of one runner: backoff, circuit, counters.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// Consecutive failures (drives the backoff).
    pub count: u32,
    /// No action before this instant.
    pub until: Option<Instant>,
    /// A deterministic failure: no call before this instant (or a secret change).
    pub circuit_until: Option<Instant>,
    pub circuit_reason: Option<String>,
    pub last_error: Option<String>,
    pub restarts: u32,
    pub last_exit_code: Option<i32>,
    pub last_exit: Option<String>,
    /// The service was seen running at the last look.
    pub was_running: bool,
    /// Why it last stopped was read already.
    pub exit_seen: bool,
    /// What the last pass decided to call it.
    pub state: String,
    /// Why `until` is set, when it is not a failure (`session-conflict`, `updating`).
    pub waiting: Option<&'static str>,
}

/// What the daemon sees of a runner besides its [`Health`], to name its state.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen {
    /// Marked by `agentctl drain`.
    pub drained: bool,
    /// Its service is active.
    pub running: bool,
    /// Its board is missing or failed its probe.
    pub board_offline: bool,
    /// It has a local registration.
    pub registered: bool,
    /// GitHub's host-wide circuit is open.
    pub host_circuit: bool,
}

impl Health {
    /// What `status` calls the runner: `draining`, `drained`, `board-offline`, `circuit-open`,
    /// what it waits for (`session-conflict`, `updating`, else `backing-off`), `running`,
    /// `unregistered` or `stopped`, the first that applies.
    pub fn state_name(&self, seen: Seen, now: Instant) -> &'static str {
        if seen.drained {
            if seen.running {
                "draining"
            } else {
                "drained"
            }
        } else if seen.board_offline && !seen.running {
            "board-offline"
        } else if self.circuit_until.is_some_and(|t| t > now)
            || (!seen.registered && seen.host_circuit)
        {
            "circuit-open"
        } else if self.until.is_some_and(|t| t > now) && !seen.running {
            self.waiting.unwrap_or("backing-off")
        } else if seen.running {
            "running"
        } else if !seen.registered {
            "unregistered"
        } else {
            "stopped"
        }
    }

    /// Whether nothing may be done for this runner at `now`.
    pub fn gated(&self, now: Instant) -> bool {
        self.until.is_some_and(|t| t > now) || self.circuit_until.is_some_and(|t| t > now)
    }

    /// A success: the backoff and the error are forgotten (counters stay).
    pub fn succeeded(&mut self) {
        self.count = 0;
        self.until = None;
        self.circuit_until = None;
        self.circuit_reason = None;
        self.last_error = None;
        self.waiting = None;
    }

    /// Close the circuit (the secret changed): try again at once.
    pub fn close_circuit(&mut self) {
        self.circuit_until = None;
        self.circuit_reason = None;
        self.count = 0;
        self.until = None;
    }

    /// The persisted form.
    pub fn snapshot(&self, now: Instant) -> RunnerState {
        let next = match (self.circuit_until, self.until) {
            (Some(c), _) if c > now => Some(c),
            (_, Some(u)) if u > now => Some(u),
            _ => None,
        };
        RunnerState {
            state: self.state.clone(),
            last_error: self.last_error.clone(),
            // A runner that runs is not retried: the wait after its start only keeps a runner
            // that dies at once from a restart loop.
            next_retry: next
                .filter(|_| self.state != "running")
                .and_then(|at| wall(at, now)),
            circuit: self
                .circuit_until
                .is_some_and(|c| c > now)
                .then(|| self.circuit_reason.clone())
                .flatten(),
            restarts: self.restarts,
            last_exit_code: self.last_exit_code,
            last_exit: self.last_exit.clone(),
        }
    }
}

/// `at` (monotonic) as an RFC 3339 wall-clock time.
pub fn wall(at: Instant, now: Instant) -> Option<String> {
    let system = SystemTime::now() + at.saturating_duration_since(now);
    rfc3339(system)
}

/// A wall-clock time as RFC 3339, UTC, whole seconds.
pub fn rfc3339(at: SystemTime) -> Option<String> {
    let at = time::OffsetDateTime::from(at);
    let at = at.replace_nanosecond(0).ok()?;
    at.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

impl DaemonState {
    /// Whether the daemon that wrote this still runs.
    pub fn daemon_alive(&self) -> bool {
        i32::try_from(self.pid).is_ok_and(|pid| {
            pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        })
    }
}

/// `<state_dir>/daemon`.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("daemon")
}

/// `<state_dir>/daemon/state.json`.
pub fn path(state_dir: &Path) -> PathBuf {
    dir(state_dir).join("state.json")
}

/// The last state a daemon wrote, if any.
pub fn read(state_dir: &Path) -> Option<DaemonState> {
    let text = fs::read(path(state_dir)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Write `state` atomically.
pub fn write(state_dir: &Path, state: &DaemonState) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    crate::atomic::write(&path(state_dir), &text, 0o644)
}

/// A short human form of how far away `at` is (`in 12 s`, `in 3 min`).
pub fn until_text(at: &str) -> String {
    let Ok(at) = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
    else {
        return at.to_owned();
    };
    let left = at - time::OffsetDateTime::now_utc();
    let secs = left.whole_seconds().max(0) as u64;
    let text = format!("in {}", super::for_how_long(Duration::from_secs(secs)));
    let at = at
        .replace_nanosecond(0)
        .ok()
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| at.to_string());
    format!("{at} ({text})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runners_state_is_named_by_the_first_reason_that_applies() {
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let idle = Health::default();
        let backing_off = Health {
            until: Some(later),
            ..Health::default()
        };
        let conflict = Health {
            waiting: Some("session-conflict"),
            ..backing_off.clone()
        };
        let refused = Health {
            circuit_until: Some(later),
            ..backing_off.clone()
        };
        let registered = Seen {
            registered: true,
            ..Seen::default()
        };
        let running = Seen {
            running: true,
            ..registered
        };
        let cases = [
            (&idle, running, "running"),
            (&idle, registered, "stopped"),
            (&idle, Seen::default(), "unregistered"),
            (&backing_off, registered, "backing-off"),
            // A service running again is running, whatever its backoff.
            (&backing_off, running, "running"),
            (&conflict, registered, "session-conflict"),
            (&refused, registered, "circuit-open"),
            (&refused, running, "circuit-open"),
            // Unregistered while GitHub's circuit is open: it cannot register.
            (
                &idle,
                Seen {
                    host_circuit: true,
                    ..Seen::default()
                },
                "circuit-open",
            ),
            (
                &idle,
                Seen {
                    host_circuit: true,
                    ..registered
                },
                "stopped",
            ),
            (
                &refused,
                Seen {
                    board_offline: true,
                    ..registered
                },
                "board-offline",
            ),
            (
                &idle,
                Seen {
                    board_offline: true,
                    ..running
                },
                "running",
            ),
            (
                &refused,
                Seen {
                    drained: true,
                    board_offline: true,
                    ..registered
                },
                "drained",
            ),
            (
                &idle,
                Seen {
                    drained: true,
                    ..running
                },
                "draining",
            ),
        ];
        for (health, seen, want) in cases {
            assert_eq!(health.state_name(seen, now), want, "{health:?} {seen:?}");
        }
        // Once the backoff is over, the runner is what its service is.
        assert_eq!(backing_off.state_name(registered, later), "stopped");
    }

    #[test]
    fn the_state_round_trips_and_replaces_the_old_file_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = DaemonState {
            schema: SCHEMA.to_owned(),
            pid: 7,
            ..DaemonState::default()
        };
        state.runners.insert(
            "r1".to_owned(),
            RunnerState {
                state: "backing-off".to_owned(),
                last_error: Some("boom".to_owned()),
                restarts: 2,
                last_exit_code: Some(5),
                ..RunnerState::default()
            },
        );
        write(dir.path(), &state).unwrap();
        assert_eq!(read(dir.path()), Some(state.clone()));
        state.runners.clear();
        write(dir.path(), &state).unwrap();
        assert_eq!(read(dir.path()), Some(state));
        // No temporary file left behind.
        let names: Vec<_> = fs::read_dir(super::dir(dir.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn a_snapshot_names_the_next_retry_and_an_open_circuit() {
        let now = Instant::now();
        let health = Health {
            circuit_until: Some(now + Duration::from_secs(60)),
            circuit_reason: Some("bad credentials".to_owned()),
            state: "circuit-open".to_owned(),
            ..Health::default()
        };
        let snap = health.snapshot(now);
        assert_eq!(snap.circuit.as_deref(), Some("bad credentials"));
        assert!(snap.next_retry.is_some());
        let healthy = Health::default().snapshot(now);
        assert_eq!(healthy.circuit, None);
        assert_eq!(healthy.next_retry, None);
    }
}
