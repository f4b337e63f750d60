//! `agentctl drain [NAME…]` and `agentctl undrain [NAME…]` ([`crate::daemon::drain`]).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use crate::config;
use crate::daemon::drain::{self, Drained};
use crate::exit::Status;
use crate::runner::{Lifecycle, Remote};

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// Runner names (default: every configured runner).
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    /// Give up waiting for busy runners after this many seconds (they stay marked drained and
    /// stop when the drain is run again).
    #[arg(long, value_name = "SECS", default_value_t = 6 * 3600)]
    pub timeout: u64,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UndrainArgs {
    /// Runner names (default: every configured runner).
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
}

fn hostname() -> String {
    config::LoadOptions::from_env()
        .hostname
        .unwrap_or_else(|| "localhost".to_owned())
}

fn load(config_path: &Path) -> Result<config::Config, Status> {
    config::load(config_path).map_err(|err| {
        eprintln!("{}", crate::redact::redact(&err.to_string()));
        Status::Config
    })
}

pub fn drain(config_path: &Path, args: &DrainArgs) -> anyhow::Result<Status> {
    let config = match load(config_path) {
        Ok(config) => config,
        Err(status) => return Ok(status),
    };
    let lifecycle = Lifecycle::new(&config, hostname(), Remote::from_config(&config)?);
    let runners = lifecycle.select(&args.names)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let outcomes = runtime.block_on(drain::drain(
        &lifecycle,
        &runners,
        Duration::from_secs(args.timeout),
    ))?;
    let mut status = Status::Success;
    for (_, outcome) in &outcomes {
        match outcome {
            Drained::Failed { .. } => status = Status::Error,
            Drained::StillBusy if status == Status::Success => status = Status::Failure,
            _ => {}
        }
    }
    if args.json {
        let list: Vec<_> = outcomes
            .iter()
            .map(|(name, outcome)| serde_json::json!({"name": name, "drain": outcome}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        for (name, outcome) in &outcomes {
            match outcome {
                Drained::Stopped => println!("{name}: drained (was idle, stopped)"),
                Drained::StoppedAfterJob { waited } => {
                    println!("{name}: drained (stopped after its job, {waited} s)")
                }
                Drained::StillBusy => println!(
                    "{name}: still busy after {} s; marked drained, not stopped",
                    args.timeout
                ),
                Drained::Failed { error } => println!("{name}: cannot stop: {error}"),
            }
        }
        eprintln!("hint: the daemon leaves drained runners stopped; `agentctl undrain` or `agentctl start` brings them back");
    }
    Ok(status)
}

pub fn undrain(config_path: &Path, args: &UndrainArgs) -> anyhow::Result<Status> {
    let config = match load(config_path) {
        Ok(config) => config,
        Err(status) => return Ok(status),
    };
    let lifecycle = Lifecycle::new(&config, hostname(), Remote::from_config(&config)?);
    for runner in lifecycle.select(&args.names)? {
        let was = drain::unmark(&config.agent.state_dir, &runner.name)
            .with_context(|| format!("cannot remove the drain mark of `{}`", runner.name))?;
        if was {
            println!("{}: undrained; the daemon starts it again", runner.name);
        } else {
            println!("{}: was not drained", runner.name);
        }
    }
    Ok(Status::Success)
}
