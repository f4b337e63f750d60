//! `config.sh` and `config.sh remove`, run as the runner user with every input in
//! `ACTIONS_RUNNER_INPUT_*` (never in argv, so no token shows in `/proc/PID/cmdline`).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::service::process::{as_user, user_env};
use crate::service::RunAs;

/// Everything `config.sh` is told.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub url: &'a str,
    pub token: &'a str,
    pub name: &'a str,
    /// Labels besides the runner's defaults (`self-hosted`, OS, arch).
    pub labels: &'a [String],
    pub work: &'a Path,
    pub group: Option<&'a str>,
    pub ephemeral: bool,
    pub disable_update: bool,
}

/// How a `config.sh` run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The token exchange answered 404: expired, revoked, or of the wrong kind.
    TokenRefused { output: String },
    /// A 5xx or a connection error: worth another attempt.
    Transient { output: String },
    /// Anything else (the runner's message is in `output`).
    Other { output: String },
    /// It could not be started at all.
    Spawn { program: PathBuf, error: String },
}

impl Failure {
    pub fn output(&self) -> &str {
        match self {
            Failure::TokenRefused { output }
            | Failure::Transient { output }
            | Failure::Other { output } => output,
            Failure::Spawn { error, .. } => error,
        }
    }

    fn classify(output: String) -> Failure {
        let refused = output.contains("Http response code: NotFound from 'POST")
            && output.contains("runner-registration");
        let transient = [
            "InternalServerError",
            "BadGateway",
            "ServiceUnavailable",
            "GatewayTimeout",
            "TooManyRequests",
            "Server Error",
            "Connection refused",
            "connection closed",
            "timed out",
        ]
        .iter()
        .any(|needle| output.contains(needle));
        if refused {
            Failure::TokenRefused { output }
        } else if transient {
            Failure::Transient { output }
        } else {
            Failure::Other { output }
        }
    }
}

fn bool_input(value: bool) -> &'static str {
    if value {
        "true"
    } else {
        "false"
    }
}

/// Run `<dir>/config.sh` (configure) as `run_as`.
pub async fn configure(dir: &Path, run_as: &RunAs, inputs: &Inputs<'_>) -> Result<(), Failure> {
    let mut env: Vec<(String, String)> = vec![
        ("ACTIONS_RUNNER_INPUT_URL".into(), inputs.url.into()),
        ("ACTIONS_RUNNER_INPUT_TOKEN".into(), inputs.token.into()),
        ("ACTIONS_RUNNER_INPUT_NAME".into(), inputs.name.into()),
        (
            "ACTIONS_RUNNER_INPUT_WORK".into(),
            inputs.work.to_string_lossy().into_owned(),
        ),
        ("ACTIONS_RUNNER_INPUT_UNATTENDED".into(), "true".into()),
        ("ACTIONS_RUNNER_INPUT_REPLACE".into(), "true".into()),
        (
            "ACTIONS_RUNNER_INPUT_EPHEMERAL".into(),
            bool_input(inputs.ephemeral).into(),
        ),
        (
            "ACTIONS_RUNNER_INPUT_DISABLEUPDATE".into(),
            bool_input(inputs.disable_update).into(),
        ),
    ];
    if !inputs.labels.is_empty() {
        env.push((
            "ACTIONS_RUNNER_INPUT_LABELS".into(),
            inputs.labels.join(","),
        ));
    }
    if let Some(group) = inputs.group {
        env.push(("ACTIONS_RUNNER_INPUT_RUNNERGROUP".into(), group.into()));
    }
    run(dir, run_as, &[], env).await
}

/// `config.sh remove` with a remove token (`Some`), or `config.sh remove --local` (`None`).
pub async fn remove(dir: &Path, run_as: &RunAs, token: Option<&str>) -> Result<(), Failure> {
    match token {
        Some(token) => {
            let env = vec![("ACTIONS_RUNNER_INPUT_TOKEN".into(), token.to_owned())];
            run(dir, run_as, &["remove"], env).await
        }
        None => run(dir, run_as, &["remove", "--local"], Vec::new()).await,
    }
}

async fn run(
    dir: &Path,
    run_as: &RunAs,
    args: &[&str],
    inputs: Vec<(String, String)>,
) -> Result<(), Failure> {
    let program = dir.join("config.sh");
    let mut command = std::process::Command::new(&program);
    command
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(user_env(run_as))
        .envs(inputs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    as_user(&mut command, run_as, false);
    let output = tokio::process::Command::from(command)
        .output()
        .await
        .map_err(|err| Failure::Spawn {
            program: program.clone(),
            error: err.to_string(),
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        log::debug!("config.sh: {line}");
    }
    if output.status.success() {
        Ok(())
    } else {
        // The runner's own last words are the useful part.
        let useful: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('|') && !line.starts_with("---"))
            .collect();
        let tail = useful[useful.len().saturating_sub(3)..].join("\n");
        Err(Failure::classify(if tail.is_empty() {
            format!("exited with {}", output.status)
        } else {
            tail
        }))
    }
}
