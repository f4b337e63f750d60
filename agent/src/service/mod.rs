//! How a registered runner is run: a [`Backend`] per [`ServiceKind`].
//!
//! - [`Systemd`] (the default): the runner's own `svc.sh install <user>` writes and enables the
//!   unit `actions.runner.<scope>.<name>.service`, whose real name is read back from the runner's
//!   `.service` file (it is not reproducible, actions-runner.md §3.1); the agent adds the drop-in
//!   `<unit>.d/50-runner-agent.conf` ([`render_drop_in`]: `SupplementaryGroups=` for `kvm` and
//!   `dialout` as needed, `Restart=on-failure` with `RestartSec=`, the board's
//!   `EnvironmentFile=`), reloads, enables and starts it. Every external command goes through a
//!   [`Commands`] runner, so tests can record the sequence with a fake `systemctl`.
//! - [`Container`]: each runner in its own Docker or Podman container running the runner
//!   directory the agent registered on the host (see [`container`] for what the container gets).
//! - [`Process`]: the runner's `run.sh` as a detached child (a new session) with the runner user's
//!   uid, gid and supplementary groups, its output appended to `<dir>/_diag/agent-run.log`, its
//!   pid and start time recorded in `<state_dir>/runners/<name>.pid`. Stop sends `SIGINT` to the
//!   whole session (as `runsvc.sh` does), then `SIGKILL` after a timeout. The daemon (issue 6)
//!   can supervise the same command directly through [`Process::command`].

pub mod container;
pub mod process;
mod systemd;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use container::Container;
pub use process::{Process, ProcessState};
pub use systemd::{render_drop_in, Commands, DropIn, Systemd, DROP_IN_NAME};

use crate::config::ServiceKind;

/// Errors of the service backends.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {output}")]
    Failed {
        command: String,
        status: String,
        output: String,
    },
    #[error("runner `{runner}` has no `.service` file after `svc.sh install`\n\nhint: run `agentctl register {runner}` again; `svc.sh` must be run as root from the runner directory")]
    NoUnit { runner: String },
    #[error("i/o error at `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the `{kind}` service backend is not supported yet\n\nhint: use `service = \"systemd\"` or `service = \"process\"`")]
    Unsupported { kind: &'static str },
    #[error("no container engine{}\n\nhint: install `docker.io` or `podman`, or set `[container] engine` to its path", configured.as_ref().map(|c| format!(" `{c}`")).unwrap_or_default())]
    NoEngine { configured: Option<String> },
    #[error("runner `{runner}` did not stop within {secs} s, killed it")]
    Killed { runner: String, secs: u64 },
}

/// Who runs a runner: name, uid, gid and the supplementary groups `initgroups` would set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: PathBuf,
}

/// What a backend needs to know about one runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// The runner's name.
    pub name: String,
    /// The runner directory (holds `run.sh`, `svc.sh`, `.service`).
    pub dir: PathBuf,
    pub run_as: RunAs,
    /// Extra environment of the listener (board job environment, job hooks).
    pub env: BTreeMap<String, String>,
    /// The file holding `env` (for systemd's `EnvironmentFile=`), if any.
    pub env_file: Option<PathBuf>,
    /// Supplementary groups the jobs need (`kvm`, `dialout`), that exist on this host.
    pub extra_groups: Vec<String>,
}

/// What a backend reports about a runner.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServiceStatus {
    /// `process` or `systemd`.
    pub backend: &'static str,
    /// `active`, `inactive`, `failed`, `not-installed`, … (systemd's words; the process backend
    /// says `active` or `inactive`).
    pub state: String,
    pub pid: Option<u32>,
    /// The systemd unit, if installed.
    pub unit: Option<String>,
}

/// A way to run a registered runner.
pub trait Backend {
    /// Make the runner start at boot (systemd) — nothing for a process.
    fn install(&self, unit: &Unit) -> Result<(), ServiceError>;
    fn start(&self, unit: &Unit) -> Result<(), ServiceError>;
    /// Stop it, waiting for the listener to end (a running job is cancelled, as the runner does).
    fn stop(&self, unit: &Unit) -> Result<(), ServiceError>;
    /// Undo [`Backend::install`] (stopping it first).
    fn uninstall(&self, unit: &Unit) -> Result<(), ServiceError>;
    fn status(&self, unit: &Unit) -> Result<ServiceStatus, ServiceError>;
    /// The command that shows the runner's log (`journalctl -u …`), or the log file.
    fn log_source(&self, unit: &Unit) -> LogSource;
}

/// Where a runner's output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogSource {
    File(PathBuf),
    Journal {
        unit: String,
    },
    /// `<engine> logs <container>`.
    Container {
        engine: PathBuf,
        container: String,
    },
    None,
}

/// The backend for `kind`, with the system defaults (the `container` backend needs the
/// configuration: [`Container::new`]).
pub fn backend(kind: ServiceKind, state_dir: &Path) -> Result<Box<dyn Backend>, ServiceError> {
    match kind {
        ServiceKind::Systemd => Ok(Box::new(Systemd::system())),
        ServiceKind::Process => Ok(Box::new(Process::new(state_dir))),
        ServiceKind::Container => Err(ServiceError::Unsupported { kind: "container" }),
    }
}
