//! `/etc/runner-agent/agent.toml`: strict parsing into the resolved [`Config`].
//!
//! The model in [`model`] is what the rest of the agent uses; parsing (`raw`), the single-value
//! rules (`rules`), secret files (`secret`), the cross-field rules (`resolve`) and the error
//! report (`error`: file:line:column, caret, `hint:`) live beside it.
//!
//! Relative paths in the file (secret files, `boards` patterns, `profiles_dir`) are relative to
//! the configuration file's directory; secret files are looked up in `$CREDENTIALS_DIRECTORY`
//! first.

mod error;
mod model;
mod raw;
mod resolve;
mod rules;
mod secret;

use std::path::{Path, PathBuf};

pub use error::{ConfigError, Diagnostic, Location, Report};
pub use model::*;

/// What loading takes from the process environment, explicit so that tests need not set
/// environment variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// What `{hostname}` expands to; `None` makes templates that use it an error.
    pub hostname: Option<String>,
    /// systemd's `$CREDENTIALS_DIRECTORY`, where relative secret file names are looked up first.
    pub credentials_dir: Option<PathBuf>,
    /// Do not open secret files. For commands that never use a secret and run as a user that
    /// cannot read them (the runner's job hooks call `agentctl board ...`); the secrets are
    /// still checked by `config check`, the daemon and everything that talks to GitHub.
    pub skip_secret_checks: bool,
}

/// Environment variable that overrides the host name `{hostname}` expands to.
pub const HOSTNAME_ENV: &str = "RUNNER_AGENT_HOSTNAME";

impl LoadOptions {
    /// `$RUNNER_AGENT_HOSTNAME` (else the host name) and `$CREDENTIALS_DIRECTORY`.
    pub fn from_env() -> Self {
        let hostname = std::env::var(HOSTNAME_ENV)
            .ok()
            .filter(|name| !name.is_empty())
            .or_else(|| {
                nix::unistd::gethostname()
                    .ok()
                    .and_then(|name| name.into_string().ok())
            });
        let credentials_dir = std::env::var_os("CREDENTIALS_DIRECTORY")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from);
        LoadOptions {
            hostname,
            credentials_dir,
            skip_secret_checks: false,
        }
    }
}

/// Read, check and resolve the configuration at `path`, with the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with(path, &LoadOptions::from_env())
}

/// Read, check and resolve the configuration at `path`. Every problem found is in the error.
pub fn load_with(path: &Path, options: &LoadOptions) -> Result<Config, ConfigError> {
    resolve::config(path, options)
}

/// Read and check the board profile at `path` (`<profiles_dir>/<name>.toml`).
pub fn load_profile(path: &Path) -> Result<Profile, ConfigError> {
    resolve::profile(path)
}

#[cfg(test)]
mod tests;
