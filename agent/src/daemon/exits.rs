//! Why a runner's listener stopped, read from its output.
//!
//! `run.sh`/`run-helper.sh` (the process backend) and `runsvc.sh` (systemd) hide most listener
//! exit codes (actions-runner.md §4.2: 0, 1 and 5 all end `run.sh` with 0; `runsvc.sh` stops the
//! unit cleanly), but both print what happened: the listener's own message (the registration was
//! deleted, a session conflict, a deprecated version, an update) and the wrapper's line naming the
//! code. [`classify`] turns the output of the last run into a [`ListenerExit`]; [`last_output`]
//! finds that output (the process backend's log after its last start marker, or the unit's
//! journal after the service last started).

use std::path::Path;
use std::time::SystemTime;

use crate::service::LogSource;

/// What a listener exit means for the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Exit 5: another session for this runner still exists. Wait for it to expire, then start
    /// again; registering again would not help.
    SessionConflict,
    /// The registration is gone on GitHub. `cleaned`: the listener removed its own local
    /// configuration (exit 0, v2.336.0+); otherwise (exit 1) the local files must go before
    /// registering again.
    Deleted { cleaned: bool },
    /// Exit 3/4: a self-update is under way; `run.sh`/`runsvc.sh` start the new version.
    Updating,
    /// The version is too old to receive messages (exit 1, or 7).
    Deprecated,
    /// Exit 1 for another reason (not configured, bad credentials, …).
    Terminated,
    /// Exit 2: `run.sh` and `runsvc.sh` restart it themselves.
    Retryable,
    /// Exit 0: stopped on purpose (a signal) or done.
    Success,
    /// Some other code.
    Other,
}

impl ExitKind {
    /// A few words for `status` and the log.
    pub fn describe(self) -> &'static str {
        match self {
            ExitKind::SessionConflict => "session conflict",
            ExitKind::Deleted { cleaned: true } => {
                "registration deleted on GitHub (local configuration removed by the runner)"
            }
            ExitKind::Deleted { cleaned: false } => "registration deleted on GitHub",
            ExitKind::Updating => "self-update",
            ExitKind::Deprecated => "runner version deprecated",
            ExitKind::Terminated => "terminated error",
            ExitKind::Retryable => "retryable error",
            ExitKind::Success => "stopped",
            ExitKind::Other => "unknown exit",
        }
    }
}

/// A listener exit: its meaning and, when the output says it, its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerExit {
    pub kind: ExitKind,
    pub code: Option<i32>,
}

fn kind_of_code(code: i32) -> ExitKind {
    match code {
        0 => ExitKind::Success,
        1 => ExitKind::Terminated,
        2 => ExitKind::Retryable,
        3 | 4 => ExitKind::Updating,
        5 => ExitKind::SessionConflict,
        7 => ExitKind::Deprecated,
        _ => ExitKind::Other,
    }
}

/// The exit of the last listener run in `output`, if it ended.
pub fn classify(output: &str) -> Option<ListenerExit> {
    let mut specific: Option<ExitKind> = None;
    let mut code: Option<i32> = None;
    for line in output.lines() {
        // A new listener run (run.sh restarting it, runsvc.sh starting it): start over.
        if line.contains("Restarting runner...")
            || line.contains("Starting Runner listener")
            || line.contains("Listening for Jobs")
        {
            specific = None;
            code = None;
            continue;
        }
        if line.contains("Stop retry on SessionConflictException") {
            specific = Some(ExitKind::SessionConflict);
        } else if line.contains("Cleaning up local configuration") {
            specific = Some(ExitKind::Deleted { cleaned: true });
        } else if line.contains("registration has been deleted from the server")
            || line.contains("The runner no longer exists on the server")
        {
            specific = Some(ExitKind::Deleted { cleaned: false });
        } else if line.contains("is deprecated and cannot receive messages") {
            specific = Some(ExitKind::Deprecated);
        } else if line.contains("Runner will exit shortly for update") {
            specific = Some(ExitKind::Updating);
        }
        // The wrappers' lines: runsvc.sh names the code, run-helper.sh describes it.
        if let Some(rest) = line.split("Runner listener exited with error code ").nth(1) {
            code = rest.trim().parse().ok();
        } else if line.contains("Runner listener exit with 0 return code") {
            code = Some(0);
        } else if line.contains("Runner listener exit with terminated error") {
            code = Some(1);
        } else if line.contains("Runner listener exit with retryable error") {
            code = Some(2);
        } else if line.contains("Runner listener exit because of updating") {
            code = code.or(Some(3));
        } else if line.contains("Runner listener exit with Session Conflict error") {
            code = Some(5);
        } else if line.contains("Runner listener exit with deprecated version exit code") {
            code = Some(7);
        } else if let Some(rest) = line.split("Exiting with unknown error code: ").nth(1) {
            code = rest.trim().parse().ok();
        }
    }
    let kind = match (specific, code) {
        (Some(kind), _) => kind,
        (None, Some(code)) => kind_of_code(code),
        (None, None) => return None,
    };
    let code = code.or(match kind {
        ExitKind::SessionConflict => Some(5),
        ExitKind::Deleted { cleaned: true } => Some(0),
        ExitKind::Deleted { cleaned: false } => Some(1),
        _ => None,
    });
    Some(ListenerExit { kind, code })
}

/// The marker the process backend writes before each start.
const PROCESS_START: &str = "--- runner-agent: starting";
/// The first line `runsvc.sh` prints.
const SERVICE_START: &str = "Started running service";

/// The output of the runner's last run and when it was last written, if it can be read.
pub fn last_output(source: &LogSource) -> Option<(String, Option<SystemTime>)> {
    match source {
        LogSource::File(path) => {
            let text = tail(path, 64 * 1024)?;
            let modified = std::fs::metadata(path).ok().and_then(|m| m.modified().ok());
            let start = text.rfind(PROCESS_START).unwrap_or(0);
            Some((text[start..].to_owned(), modified))
        }
        LogSource::Journal { unit } => {
            let out = std::process::Command::new("journalctl")
                .args(["--no-pager", "-o", "cat", "-n", "300", "-u", unit])
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let start = text.rfind(SERVICE_START).unwrap_or(0);
            Some((text[start..].to_owned(), None))
        }
        LogSource::Container { engine, container } => {
            // The engine keeps every run's output: the last lines stand for the last run.
            let out = std::process::Command::new(engine)
                .args(["logs", "--tail", "300", container])
                .output()
                .ok()?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            Some((text, None))
        }
        LogSource::None => None,
    }
}

/// The last `max` bytes of a file, as text.
fn tail(path: &Path, max: u64) -> Option<String> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max))).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(kind: ExitKind, code: i32) -> Option<ListenerExit> {
        Some(ListenerExit {
            kind,
            code: Some(code),
        })
    }

    #[test]
    fn run_helper_output_is_classified() {
        let conflict = "√ Connected to GitHub\n\
            2026-01-01 00:00:00Z: Runner connect error: A session for this runner already exists.. Retrying until reconnected.\n\
            Stop retry on SessionConflictException after retried for 240 seconds.\n\
            Runner listener exit with Session Conflict error, stop the service, no retry needed.\n\
            Exiting runner...\n";
        assert_eq!(classify(conflict), exit(ExitKind::SessionConflict, 5));
        let deleted = "Failed to create a session. The runner registration has been deleted from the server, please re-configure. Runner registrations are automatically deleted for runners that have not connected to the service recently.\n\
            Runner listener exit with terminated error, stop the service, no retry needed.\n\
            Exiting runner...\n";
        assert_eq!(
            classify(deleted),
            exit(ExitKind::Deleted { cleaned: false }, 1)
        );
        let cleaned = "2026-01-01 00:00:00Z: Listening for Jobs\n\
            The runner no longer exists on the server. Cleaning up local configuration.\n\
            Runner listener exit with 0 return code, stop the service, no retry needed.\n";
        assert_eq!(
            classify(cleaned),
            exit(ExitKind::Deleted { cleaned: true }, 0)
        );
        let stopped = "2026-01-01 00:00:00Z: Listening for Jobs\nExiting...\n\
            Runner listener exit with 0 return code, stop the service, no retry needed.\n";
        assert_eq!(classify(stopped), exit(ExitKind::Success, 0));
    }

    #[test]
    fn an_update_or_a_restart_by_run_sh_starts_a_new_run() {
        let updated =
            "Runner will exit shortly for update, should be back online within 10 seconds.\n\
            Runner listener exit because of updating, re-launch runner after successful update\n\
            Update finished successfully.\nRestarting runner...\n\
            2026-01-01 00:00:00Z: Listening for Jobs\n";
        assert_eq!(classify(updated), None);
        let updating =
            "Runner will exit shortly for update, should be back online within 10 seconds.\n\
            Runner listener exit because of updating, re-launch runner after successful update\n";
        assert_eq!(classify(updating), exit(ExitKind::Updating, 3));
    }

    #[test]
    fn runsvc_names_the_code() {
        let out = "Started running service\nStarting Runner listener with startup type: service\n\
            Runner version v2.300.0 is deprecated and cannot receive messages.\n\
            Runner listener exited with error code 1\n\
            Runner listener exit with terminated error, stop the service, no retry needed.\n";
        assert_eq!(classify(out), exit(ExitKind::Deprecated, 1));
        let odd = "Runner listener exited with error code 42\n";
        assert_eq!(classify(odd), exit(ExitKind::Other, 42));
        assert_eq!(classify("Listening for Jobs\n"), None);
    }
}
