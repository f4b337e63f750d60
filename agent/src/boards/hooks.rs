//! The runner job hooks of a board runner: `ACTIONS_RUNNER_HOOK_JOB_STARTED` takes the board
//! (`agentctl board acquire`), `ACTIONS_RUNNER_HOOK_JOB_COMPLETED` gives it back. The runner
//! runs them as the runner user, synchronously; a failing started hook fails the job (so a board
//! that stays busy or fails its probe never runs the job), and the completed hook always runs.
//! The runner name and job id come from the hook's environment (`RUNNER_NAME`,
//! `GITHUB_RUN_ID`/`GITHUB_RUN_ATTEMPT`/`GITHUB_JOB`).

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::{Board, DEFAULT_CONFIG_PATH};

use super::env::EnvContext;

/// What the hooks do around each job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookOptions {
    /// Seconds the started hook waits for the board.
    pub acquire_timeout_secs: u64,
    /// Power-cycle the board before the job.
    pub reset_before: bool,
    /// Power-cycle and wait for the boot prompt before the job (implies a reset).
    pub probe_before: bool,
    /// Switch the board off after the job.
    pub power_off_after: bool,
    /// Seconds the board gets to show its prompt when probed.
    pub probe_timeout_secs: u32,
}

impl HookOptions {
    /// The options a board's configuration asks for (`reset_before_job`, `probe_after_reset`,
    /// `probe_timeout_secs`, `power_off_after_job`).
    pub fn for_board(board: &Board) -> HookOptions {
        HookOptions {
            reset_before: board.jobs.reset_before_job,
            probe_before: board.jobs.reset_before_job && board.jobs.probe_after_reset,
            power_off_after: board.jobs.power_off_after_job,
            probe_timeout_secs: board.jobs.probe_timeout_secs,
            ..HookOptions::default()
        }
    }
}

impl Default for HookOptions {
    fn default() -> Self {
        HookOptions {
            acquire_timeout_secs: 3600,
            reset_before: false,
            probe_before: false,
            power_off_after: false,
            probe_timeout_secs: crate::config::DEFAULT_PROBE_TIMEOUT_SECS,
        }
    }
}

/// Quote for `sh`: `'...'` with embedded quotes as `'\''`.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn agentctl(ctx: &EnvContext) -> String {
    let mut command = quote(&ctx.agentctl.to_string_lossy());
    if ctx.config != Path::new(DEFAULT_CONFIG_PATH) {
        command.push_str(" --config ");
        command.push_str(&quote(&ctx.config.to_string_lossy()));
    }
    command
}

/// The `ACTIONS_RUNNER_HOOK_JOB_STARTED` script for `board`.
pub fn job_started(board: &str, ctx: &EnvContext, options: &HookOptions) -> String {
    let mut flags = format!(" --timeout {}", options.acquire_timeout_secs);
    if options.probe_before {
        flags.push_str(&format!(
            " --probe --probe-timeout {}",
            options.probe_timeout_secs
        ));
    } else if options.reset_before {
        flags.push_str(" --reset");
    }
    format!(
        "#!/bin/sh\n# runner-agent: take board `{board}` for this job (ACTIONS_RUNNER_HOOK_JOB_STARTED)\n\
         exec {} board acquire {}{flags}\n",
        agentctl(ctx),
        quote(board)
    )
}

/// The `ACTIONS_RUNNER_HOOK_JOB_COMPLETED` script for `board`.
pub fn job_completed(board: &str, ctx: &EnvContext, options: &HookOptions) -> String {
    let flags = if options.power_off_after {
        " --power-off"
    } else {
        ""
    };
    format!(
        "#!/bin/sh\n# runner-agent: give board `{board}` back (ACTIONS_RUNNER_HOOK_JOB_COMPLETED)\n\
         exec {} board release {}{flags}\n",
        agentctl(ctx),
        quote(board)
    )
}

/// The runner environment entries that install the hooks (for the runner's `.env`).
pub fn hook_env(started: &Path, completed: &Path) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "ACTIONS_RUNNER_HOOK_JOB_STARTED".to_owned(),
            started.to_string_lossy().into_owned(),
        ),
        (
            "ACTIONS_RUNNER_HOOK_JOB_COMPLETED".to_owned(),
            completed.to_string_lossy().into_owned(),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn hooks_call_agentctl_with_the_board_and_options() {
        let ctx = EnvContext {
            agentctl: PathBuf::from("/usr/bin/agentctl"),
            config: PathBuf::from("/etc/lab's/agent.toml"),
        };
        let options = HookOptions {
            acquire_timeout_secs: 600,
            probe_before: true,
            power_off_after: true,
            ..HookOptions::default()
        };
        assert_eq!(
            job_started("roc-1", &ctx, &options),
            "#!/bin/sh\n# runner-agent: take board `roc-1` for this job (ACTIONS_RUNNER_HOOK_JOB_STARTED)\n\
             exec '/usr/bin/agentctl' --config '/etc/lab'\\''s/agent.toml' board acquire 'roc-1' --timeout 600 --probe --probe-timeout 120\n"
        );
        assert_eq!(
            job_completed("roc-1", &ctx, &options),
            "#!/bin/sh\n# runner-agent: give board `roc-1` back (ACTIONS_RUNNER_HOOK_JOB_COMPLETED)\n\
             exec '/usr/bin/agentctl' --config '/etc/lab'\\''s/agent.toml' board release 'roc-1' --power-off\n"
        );
    }
}
