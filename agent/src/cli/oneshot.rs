//! `agentctl oneshot`: register one ephemeral runner, run one job, deregister, optionally power
//! the host off ([`crate::oneshot`]).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use crate::exit::Status;

#[derive(Debug, Args)]
pub struct OneshotArgs {
    /// The runner is named `<PREFIX>-<instance id>` (cloud-init's, else a UTC timestamp);
    /// default: the name of the first `[[runner]]`, whose settings the runner takes.
    #[arg(long, value_name = "PREFIX")]
    pub name_prefix: Option<String>,
    /// Labels besides the configured ones (comma-separated or repeated).
    #[arg(long = "labels", value_name = "LABEL,...", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Deregister and end when no job came for this many minutes (decimals allowed); default:
    /// wait for a job forever.
    #[arg(long, value_name = "MINUTES")]
    pub idle_timeout: Option<f64>,
    /// Power the host off when done (not after SIGTERM/SIGINT).
    #[arg(long)]
    pub poweroff: bool,
    /// The command `--poweroff` runs (through `sh -c`).
    #[arg(long, value_name = "COMMAND", hide = true, env = "RUNNER_AGENT_POWEROFF_COMMAND", default_value = crate::oneshot::POWEROFF_COMMAND)]
    pub poweroff_command: String,
}

pub fn run(config_path: &Path, args: &OneshotArgs) -> anyhow::Result<Status> {
    let config = match crate::config::load(config_path) {
        Ok(config) => config,
        Err(err) => {
            super::report(&anyhow::Error::new(err));
            return Ok(Status::Config);
        }
    };
    let idle_timeout = match args.idle_timeout {
        None => None,
        Some(minutes) if minutes.is_finite() && minutes > 0.0 => {
            Some(Duration::from_secs_f64(minutes * 60.0))
        }
        Some(minutes) => {
            anyhow::bail!("`--idle-timeout {minutes}` is not a positive number of minutes")
        }
    };
    let hostname = crate::config::LoadOptions::from_env()
        .hostname
        .unwrap_or_else(|| "localhost".to_owned());
    let options = crate::oneshot::Options {
        prefix: args.name_prefix.clone(),
        labels: args
            .labels
            .iter()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect(),
        idle_timeout,
        poweroff: args.poweroff,
        poweroff_command: args.poweroff_command.clone(),
        ..crate::oneshot::Options::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let outcome = runtime.block_on(crate::oneshot::run(&config, &hostname, &options))?;
    log::info!("oneshot done: {outcome:?}");
    Ok(Status::Success)
}
