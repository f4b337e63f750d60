//! `agentctl oneshot`: a throwaway host (a cloud or spot instance) runs one job and goes.
//!
//! The instance boots with the agent's configuration and a credential in its user data
//! (cloud-init `write_files`), then runs `agentctl oneshot`, which:
//! 1. registers one **ephemeral** runner (`config.sh --ephemeral`, as the runner user, inputs
//!    in `ACTIONS_RUNNER_INPUT_*`) named `<prefix>-<instance id>` (cloud-init's
//!    `/run/cloud-init/instance-id` or `/var/lib/cloud/data/instance-id`; a UTC timestamp when
//!    there is none), from the first `[[runner]]` of the configuration (user, labels, group,
//!    version, directory root; its name is the default prefix), and starts it as a `process`
//!    runner;
//! 2. waits until its job is done (GitHub deletes an ephemeral runner after its one job, and the
//!    listener exits), or until it was idle for the idle timeout;
//! 3. deregisters what is left (`config.sh remove` with a fresh remove token, then GitHub's REST
//!    API for anything still registered) and deletes the runner directory;
//! 4. with `--poweroff`, powers the host off (`systemctl poweroff`).
//!
//! `SIGTERM` or `SIGINT` (a spot interruption notice relayed to the process, or a shutdown)
//! deregisters and ends at once when the runner is idle; when it is running a job it says so
//! and lets the job finish (the host may be taken away first). No power-off after a signal:
//! the host is going away anyway.
//!
//! With `registration_token_file` there is no REST access: the job's end is seen locally, and
//! an idle runner cannot be deregistered (no remove token); it stays registered, offline, until
//! GitHub drops it (one day for an ephemeral runner). Use `pat_file` or `app` for a clean exit.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};

use crate::config::{Config, Ephemeral, Runner, ServiceKind, DEFAULT_RUNNER_ROOT};
use crate::runner::{Lifecycle, LocalRegistration, Remote, RunnerError};
use crate::service::Process;

/// Where cloud-init keeps the instance id, in the order they are read.
pub const INSTANCE_ID_FILES: [&str; 2] = [
    "/run/cloud-init/instance-id",
    "/var/lib/cloud/data/instance-id",
];

/// The command `--poweroff` runs (through `sh -c`).
pub const POWEROFF_COMMAND: &str = "systemctl poweroff";

/// The longest runner name GitHub accepts from the agent's configuration rules.
const MAX_NAME: usize = 64;

/// Errors of `agentctl oneshot`.
#[derive(Debug, thiserror::Error)]
pub enum OneshotError {
    #[error("`{label}` is not a valid label\n\nhint: labels have no commas, no whitespace and at most 256 characters")]
    BadLabel { label: String },
    #[error("`{prefix}` is not a valid runner name prefix\n\nhint: use letters, digits, `.`, `_` and `-`")]
    BadPrefix { prefix: String },
    #[error("`{config}` has no `[[runner]]`: `oneshot` takes its user, labels, group, version and directory from the first one\n\nhint: add one, such as `[[runner]]` with `name = \"spot\"` (the name is the default prefix)")]
    NoTemplate { config: PathBuf },
    #[error("cannot install the `{signal}` handler")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Runner(#[from] RunnerError),
    #[error("runner `{runner}` stopped before it ran a job\n\nhint: its output is in `{log}`")]
    Died { runner: String, log: PathBuf },
    #[error("cannot power the host off with `{command}`: {reason}")]
    Poweroff { command: String, reason: String },
}

/// What `oneshot` is told.
#[derive(Debug, Clone)]
pub struct Options {
    /// The runner name's prefix; the template runner's name when `None`.
    pub prefix: Option<String>,
    /// Labels besides the configured ones.
    pub labels: Vec<String>,
    /// Deregister and end after this long without a job; `None`: wait for a job forever.
    pub idle_timeout: Option<Duration>,
    /// Power the host off at the end (not after a signal).
    pub poweroff: bool,
    /// What powers the host off (`sh -c`).
    pub poweroff_command: String,
    /// Where the instance id is looked for.
    pub instance_id_files: Vec<PathBuf>,
    /// How often the listener is checked.
    pub check: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            prefix: None,
            labels: Vec::new(),
            idle_timeout: None,
            poweroff: false,
            poweroff_command: POWEROFF_COMMAND.to_owned(),
            instance_id_files: INSTANCE_ID_FILES.iter().map(PathBuf::from).collect(),
            check: Duration::from_secs(1),
        }
    }
}

/// How a oneshot run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The runner ran its job.
    JobDone,
    /// Nobody sent a job within the idle timeout.
    Idle,
    /// A signal ended it while idle.
    Signalled,
}

/// The first line of the first instance id file that has one.
pub fn instance_id(files: &[PathBuf]) -> Option<String> {
    files.iter().find_map(|file| {
        let text = std::fs::read_to_string(file).ok()?;
        let id = text.lines().next()?.trim().to_owned();
        (!id.is_empty()).then_some(id)
    })
}

/// `<prefix>-<instance id>`, or `<prefix>-<UTC timestamp>` without an instance id; characters a
/// runner name cannot hold become `-`, and the result is cut to 64 characters.
pub fn runner_name(prefix: &str, instance: Option<&str>, now: time::OffsetDateTime) -> String {
    let suffix = match instance {
        Some(id) => id.to_owned(),
        None => format!(
            "{:04}{:02}{:02}t{:02}{:02}{:02}",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second()
        ),
    };
    let name: String = format!("{prefix}-{suffix}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(MAX_NAME)
        .collect();
    name
}

fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 256
        && !label.contains([',', '，'])
        && !label.chars().any(char::is_whitespace)
}

/// The runner `oneshot` registers: the first configured runner (its template) renamed,
/// ephemeral, run as a process, with `labels` added.
pub fn oneshot_runner(config: &Config, name: &str, labels: &[String]) -> Option<Runner> {
    let mut runner = config.runners.first()?.clone();
    // The template's directory is `<root>/<its name>`.
    let root = runner
        .dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNNER_ROOT));
    runner.dir = root.join(name);
    runner.name = name.to_owned();
    runner.ephemeral = Ephemeral::Yes;
    runner.service = ServiceKind::Process;
    for label in labels {
        if !runner.labels.iter().any(|l| l.eq_ignore_ascii_case(label)) {
            runner.labels.push(label.clone());
        }
    }
    Some(runner)
}

/// Whether the runner is running a job: GitHub's `busy` with REST access; else whether a
/// `Runner.Worker` (the real runner's job process) runs in the listener's session.
async fn busy(lifecycle: &Lifecycle<'_>, id: u64, session: Option<u32>) -> bool {
    if let Ok(Some(list)) = lifecycle.remote.runners().await {
        return list.iter().any(|r| r.id == id && r.busy);
    }
    let Some(session) = session else {
        return false;
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let path = entry.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // Field 6 of `/proc/PID/stat` is the session id.
        let sid = stat
            .rfind(')')
            .and_then(|at| stat[at + 1..].split_whitespace().nth(3))
            .and_then(|s| s.parse::<u32>().ok());
        comm.trim() == "Runner.Worker" && sid == Some(session)
    })
}

/// Reap `pid` if it is a child of this process that exited (so it no longer looks alive).
fn reap(pid: u32) {
    use nix::sys::wait::{waitpid, WaitPidFlag};
    let _ = waitpid(
        nix::unistd::Pid::from_raw(pid as i32),
        Some(WaitPidFlag::WNOHANG),
    );
}

/// Register, run one job (or wait out the idle timeout, or a signal), deregister, and power off
/// if asked. `hostname` names the host's marker label.
pub async fn run(
    config: &Config,
    hostname: &str,
    options: &Options,
) -> Result<Outcome, OneshotError> {
    for label in &options.labels {
        if !valid_label(label) {
            return Err(OneshotError::BadLabel {
                label: label.clone(),
            });
        }
    }
    let Some(template) = config.runners.first() else {
        return Err(OneshotError::NoTemplate {
            config: config.path.clone(),
        });
    };
    let prefix = options
        .prefix
        .clone()
        .unwrap_or_else(|| template.name.clone());
    if prefix.is_empty()
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(OneshotError::BadPrefix { prefix });
    }
    let sig = |kind: SignalKind, name: &'static str| {
        signal(kind).map_err(|source| OneshotError::Signal {
            signal: name,
            source,
        })
    };
    let mut term = sig(SignalKind::terminate(), "SIGTERM")?;
    let mut int = sig(SignalKind::interrupt(), "SIGINT")?;

    let instance = instance_id(&options.instance_id_files);
    let name = runner_name(
        &prefix,
        instance.as_deref(),
        time::OffsetDateTime::now_utc(),
    );
    let Some(runner) = oneshot_runner(config, &name, &options.labels) else {
        return Err(OneshotError::NoTemplate {
            config: config.path.clone(),
        });
    };
    let mut config = config.clone();
    config.runners = vec![runner.clone()];
    let config = &config;
    let lifecycle = Lifecycle::new(config, hostname.to_owned(), Remote::from_config(config)?);

    // A signal during registration is kept by the streams above and seen by the loop below,
    // which then deregisters the idle runner.
    if let Err(err) = lifecycle.register(&runner).await {
        cleanup(&lifecycle, &runner).await;
        poweroff(options, false)?;
        return Err(err.into());
    }
    let id = LocalRegistration::read(&runner.dir)
        .map(|l| l.id)
        .unwrap_or_default();
    log::info!(
        "oneshot runner `{name}` (id {id}) is waiting for a job{}",
        options
            .idle_timeout
            .map(|t| format!(" (idle timeout {} s)", t.as_secs()))
            .unwrap_or_default()
    );

    let process = Process::new(&config.agent.state_dir);
    let idle_deadline = options.idle_timeout.map(|t| Instant::now() + t);
    let mut job_seen = false;
    let mut signalled = false;
    let outcome = loop {
        let pid = process.running(&name).map(|state| state.pid);
        if let Some(pid) = pid {
            reap(pid);
        }
        let Some(pid) = process.running(&name).map(|state| state.pid) else {
            // The listener ended: an ephemeral runner whose job is done has no local
            // registration left (the listener deletes it) and is gone from GitHub.
            let done = LocalRegistration::read(&runner.dir).is_none() || job_seen;
            if done {
                log::info!("oneshot runner `{name}` finished its job");
                break Ok(Outcome::JobDone);
            }
            break Err(OneshotError::Died {
                runner: name.clone(),
                log: Process::log_file(&runner.dir),
            });
        };
        let idle_over = !job_seen && idle_deadline.is_some_and(|t| Instant::now() >= t);
        if signalled || idle_over {
            if busy(&lifecycle, id, Some(pid)).await {
                if !job_seen {
                    log::warn!(
                        "oneshot runner `{name}` is running a job: it deregisters when the job ends{}",
                        if signalled {
                            " (the host may be taken away first)"
                        } else {
                            ""
                        }
                    );
                }
                job_seen = true;
            } else if signalled {
                log::info!("oneshot runner `{name}` is idle: deregistering on the signal");
                break Ok(Outcome::Signalled);
            } else {
                log::info!(
                    "oneshot runner `{name}` had no job for the idle timeout: deregistering"
                );
                break Ok(Outcome::Idle);
            }
        }
        tokio::select! {
            _ = term.recv() => signalled = true,
            _ = int.recv() => signalled = true,
            _ = tokio::time::sleep(options.check) => {}
        }
    };
    cleanup(&lifecycle, &runner).await;
    let poweroff_now = match &outcome {
        Ok(Outcome::Signalled) => false,
        Ok(_) => !signalled,
        Err(_) => true,
    };
    poweroff(options, !poweroff_now)?;
    outcome
}

/// Stop the listener, deregister with a fresh remove token, delete what GitHub still holds
/// under this name and this host's label, delete the runner directory. Logged, not returned:
/// the host is thrown away either way.
async fn cleanup(lifecycle: &Lifecycle<'_>, runner: &Runner) {
    match lifecycle.remove(runner).await {
        Ok(()) => log::info!("oneshot runner `{}` deregistered", runner.name),
        Err(err) => log::warn!(
            "cannot deregister oneshot runner `{}`: {}",
            runner.name,
            crate::redact::redact(&error_chain(&err))
        ),
    }
    if !lifecycle.remote.has_rest() {
        log::warn!(
            "oneshot runner `{}` may stay registered on GitHub until GitHub drops it: {}",
            runner.name,
            lifecycle.remote.no_rest_reason().unwrap_or_default()
        );
    }
}

fn poweroff(options: &Options, skip: bool) -> Result<(), OneshotError> {
    if !options.poweroff || skip {
        return Ok(());
    }
    log::info!("powering the host off: `{}`", options.poweroff_command);
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(&options.poweroff_command)
        .status()
        .map_err(|err| OneshotError::Poweroff {
            command: options.poweroff_command.clone(),
            reason: err.to_string(),
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(OneshotError::Poweroff {
            command: options.poweroff_command.clone(),
            reason: status.to_string(),
        })
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
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_take_the_instance_id_or_a_timestamp_and_stay_valid() {
        let now = time::macros::datetime!(2026-11-23 08:05:09 UTC);
        assert_eq!(
            runner_name("spot", Some("i-0abc123"), now),
            "spot-i-0abc123"
        );
        assert_eq!(runner_name("spot", None, now), "spot-20261123t080509");
        assert_eq!(runner_name("spot", Some("a b/c"), now), "spot-a-b-c");
        assert_eq!(runner_name("p", Some(&"x".repeat(100)), now).len(), 64);
    }

    #[test]
    fn the_instance_id_is_the_first_non_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let real = dir.path().join("id");
        std::fs::write(&real, "i-0123456789abcdef0\n").unwrap();
        let missing = dir.path().join("missing");
        assert_eq!(
            instance_id(&[missing.clone(), empty, real]),
            Some("i-0123456789abcdef0".to_owned())
        );
        assert_eq!(instance_id(&[missing]), None);
    }

    #[test]
    fn labels_are_checked() {
        assert!(valid_label("spot"));
        assert!(!valid_label("a,b"));
        assert!(!valid_label("a b"));
        assert!(!valid_label(""));
    }
}
