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

/// For unit tests elsewhere in the crate: the configuration `version = 1`, `[github]` on
/// `github_url` with a PAT file (`<dir>/pat`, mode 0600), then `rest` (runners, boards, other
/// sections), written to `<dir>/agent.toml` and loaded without looking at the environment.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn load_for_test(dir: &Path, github_url: &str, rest: &str) -> Config {
    use std::os::unix::fs::PermissionsExt as _;
    let pat = dir.join("pat");
    std::fs::write(&pat, "ghp_not_a_real_token_000000000000000000\n").unwrap();
    std::fs::set_permissions(&pat, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!("version = 1\n[github]\nurl = \"{github_url}\"\npat_file = \"pat\"\n{rest}"),
    )
    .unwrap();
    load_with(&path, &LoadOptions::default()).unwrap()
}

#[cfg(test)]
mod tests;
