//! The Prometheus text file (`[daemon] metrics_file`) for node_exporter's textfile collector,
//! written atomically after each change of the daemon's view.
//!
//! Per runner (label `runner`): `registered`, `online` and `busy` (GitHub's view; absent without
//! REST access), `restarts_total`, `last_exit_code`, `info{version}` and, for runners with
//! `disable_update = true`, `update_window_days_left`: GitHub stops sending jobs to such a runner
//! 30 days after the first release newer than its version (actions-runner.md §5.3).

use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use super::state::DaemonState;
use crate::config::{Config, Version};
use crate::runner::{LocalRegistration, RemoteRunner};

/// GitHub's window for updating a runner that does not update itself.
pub const UPDATE_WINDOW_DAYS: f64 = 30.0;

/// A release and when it was published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub version: Version,
    pub at: SystemTime,
}

/// Days left to update a runner at `version`: 30 days after the oldest release newer than it;
/// the whole window when none is newer. Negative once the window closed.
pub fn days_left(version: Version, releases: &[Published], now: SystemTime) -> f64 {
    let start = releases
        .iter()
        .filter(|r| r.version > version)
        .map(|r| r.at)
        .min();
    match start {
        None => UPDATE_WINDOW_DAYS,
        Some(start) => {
            let age = now
                .duration_since(start)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            UPDATE_WINDOW_DAYS - age / 86_400.0
        }
    }
}

/// The version a runner directory runs: the real self-update turns `bin` into a symlink to
/// `bin.<version>`; otherwise the version it was installed with.
pub fn installed_version(dir: &Path, recorded: Option<&str>) -> Option<String> {
    if let Ok(target) = std::fs::read_link(dir.join("bin")) {
        if let Some(version) = target
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("bin."))
        {
            return Some(version.to_owned());
        }
    }
    recorded.map(str::to_owned)
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(String, f64)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }
}

/// The text file for `config`'s runners.
pub fn render(
    config: &Config,
    state: &DaemonState,
    remote: Option<&[RemoteRunner]>,
    releases: Option<&[Published]>,
    now: SystemTime,
) -> String {
    let mut registered = Family::new(
        "runner_agent_runner_registered",
        "gauge",
        "Whether the runner has a local registration.",
    );
    let mut online = Family::new(
        "runner_agent_runner_online",
        "gauge",
        "Whether GitHub lists the runner as online.",
    );
    let mut busy = Family::new(
        "runner_agent_runner_busy",
        "gauge",
        "Whether GitHub lists the runner as running a job.",
    );
    let mut restarts = Family::new(
        "runner_agent_runner_restarts_total",
        "counter",
        "How often the daemon started the runner again after it stopped.",
    );
    let mut exit = Family::new(
        "runner_agent_runner_last_exit_code",
        "gauge",
        "The listener's last exit code.",
    );
    let mut info = Family::new(
        "runner_agent_runner_info",
        "gauge",
        "The runner's version and daemon state.",
    );
    let mut window = Family::new(
        "runner_agent_runner_update_window_days_left",
        "gauge",
        "Days left before GitHub stops sending jobs to a runner with disable_update that was not updated.",
    );
    for runner in &config.runners {
        let label = format!("runner=\"{}\"", escape(&runner.name));
        let local = LocalRegistration::read(&runner.dir);
        registered
            .samples
            .push((label.clone(), f64::from(u8::from(local.is_some()))));
        if let (Some(list), Some(local)) = (remote, &local) {
            let seen = list.iter().find(|r| r.id == local.id);
            online.samples.push((
                label.clone(),
                f64::from(u8::from(seen.is_some_and(|r| r.status == "online"))),
            ));
            busy.samples.push((
                label.clone(),
                f64::from(u8::from(seen.is_some_and(|r| r.busy))),
            ));
        }
        let daemon = state.runners.get(&runner.name);
        restarts.samples.push((
            label.clone(),
            f64::from(daemon.map(|d| d.restarts).unwrap_or(0)),
        ));
        if let Some(code) = daemon.and_then(|d| d.last_exit_code) {
            exit.samples.push((label.clone(), f64::from(code)));
        }
        let recorded = std::fs::read_to_string(
            config
                .agent
                .state_dir
                .join("runners")
                .join(format!("{}.json", runner.name)),
        )
        .ok()
        .and_then(|t| serde_json::from_str::<crate::runner::Record>(&t).ok())
        .map(|r| r.version);
        let version = installed_version(&runner.dir, recorded.as_deref());
        info.samples.push((
            format!(
                "{label},version=\"{}\",state=\"{}\"",
                escape(version.as_deref().unwrap_or("")),
                escape(daemon.map(|d| d.state.as_str()).unwrap_or(""))
            ),
            1.0,
        ));
        if runner.disable_update {
            if let (Some(releases), Some(version)) =
                (releases, version.and_then(|v| v.parse::<Version>().ok()))
            {
                window
                    .samples
                    .push((label.clone(), days_left(version, releases, now)));
            }
        }
    }
    let mut out = String::new();
    for family in [registered, online, busy, restarts, exit, info, window] {
        if family.samples.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
        for (labels, value) in family.samples {
            let _ = writeln!(out, "{}{{{labels}}} {value}", family.name);
        }
    }
    let _ = writeln!(
        out,
        "# HELP runner_agent_github_circuit_open Whether the daemon stopped calling GitHub (bad credentials).\n# TYPE runner_agent_github_circuit_open gauge\nrunner_agent_github_circuit_open {}",
        u8::from(state.github_circuit.is_some())
    );
    let _ = writeln!(
        out,
        "# HELP runner_agent_github_list_failures GitHub's runner list failures in a row (an outage: listed again on a backoff).\n# TYPE runner_agent_github_list_failures gauge\nrunner_agent_github_list_failures {}",
        state.github_unreachable.as_ref().map_or(0, |o| o.failures)
    );
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn v(text: &str) -> Version {
        text.parse().unwrap()
    }

    #[test]
    fn the_window_starts_with_the_oldest_newer_release() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100 * 86_400);
        let releases = [
            Published {
                version: v("2.336.0"),
                at: now - Duration::from_secs(2 * 86_400),
            },
            Published {
                version: v("2.335.0"),
                at: now - Duration::from_secs(10 * 86_400),
            },
            Published {
                version: v("2.334.0"),
                at: now - Duration::from_secs(40 * 86_400),
            },
        ];
        assert_eq!(days_left(v("2.336.0"), &releases, now), 30.0);
        assert_eq!(days_left(v("2.335.0"), &releases, now), 28.0);
        assert_eq!(days_left(v("2.334.0"), &releases, now), 20.0);
        assert_eq!(days_left(v("2.333.0"), &releases, now), -10.0);
    }

    #[test]
    fn a_self_updated_runner_reports_its_new_version() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            installed_version(dir.path(), Some("2.335.0")).as_deref(),
            Some("2.335.0")
        );
        std::os::unix::fs::symlink(dir.path().join("bin.2.336.0"), dir.path().join("bin")).unwrap();
        assert_eq!(
            installed_version(dir.path(), Some("2.335.0")).as_deref(),
            Some("2.336.0")
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
