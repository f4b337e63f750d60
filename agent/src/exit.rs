//! Exit statuses shared by every `agentctl` command.
//!
//! 0 ok, 1 "ran, and the answer is no" (a check failed), 2 error, 78 bad configuration
//! (sysexits `EX_CONFIG`; the unit sets `RestartPreventExitStatus=78`).

use std::process::ExitCode;

/// What a command reports to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Everything asked for was done, every check passed.
    Success,
    /// The command ran, and its answer is "no" (a check failed).
    Failure,
    /// The command could not do its work.
    Error,
    /// The configuration is invalid; restarting will not help.
    Config,
}

impl Status {
    /// The numeric exit code of this status.
    pub fn code(self) -> u8 {
        match self {
            Status::Success => 0,
            Status::Failure => 1,
            Status::Error => 2,
            Status::Config => 78,
        }
    }
}

impl From<Status> for ExitCode {
    fn from(status: Status) -> ExitCode {
        ExitCode::from(status.code())
    }
}
