//! `agentctl`: the command-line interface. Each subcommand lives in its own file and is a thin
//! wrapper over the domain modules; this file holds the shared flags and the dispatch.

mod board;
mod config;
mod daemon;
mod docs;
mod doctor;
mod drain;
mod oneshot;
mod release;
mod runners;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;
use crate::exit::Status;

/// Keep GitHub Actions self-hosted runners on lab hosts registered, healthy and able to reach
/// their hardware.
#[derive(Debug, Parser)]
#[command(name = "agentctl", version, about, propagate_version = true)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, value_name = "PATH", env = "RUNNER_AGENT_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boards: list, lease to jobs, power, health probe, job environment, udev rules.
    Board(board::BoardArgs),
    /// Check the configuration file.
    Config(config::ConfigArgs),
    /// Keep the configured runners registered and running (what `runner-agent.service` runs).
    Daemon(daemon::DaemonArgs),
    /// Stop runners from taking new jobs: idle ones stop now, busy ones after their job; the
    /// daemon leaves them stopped until `undrain` or `start`.
    Drain(drain::DrainArgs),
    /// Let the daemon start drained runners again.
    Undrain(drain::UndrainArgs),
    /// Print shell completions for `agentctl`.
    Completions(docs::CompletionsArgs),
    /// Print the `agentctl(1)` man page (roff).
    Man,
    /// Check, as the runner user, that jobs can use this host's hardware, and how to fix it.
    Doctor(doctor::DoctorArgs),
    /// Throwaway host: register one ephemeral runner, run one job, deregister, power off.
    Oneshot(oneshot::OneshotArgs),
    /// Runner releases: download, verify, cache, install.
    Release(Box<release::ReleaseArgs>),
    #[command(flatten)]
    Runners(runners::RunnerCommand),
    /// Print a fresh registration or remove token for the configured scope.
    Token(token::TokenArgs),
}

/// Parse the command line, run the command, and map its outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::logging::init(cli.verbose, cli.quiet);
    let status = match run(cli) {
        Ok(status) => status,
        Err(err) => {
            report(&err);
            Status::Error
        }
    };
    status.into()
}

fn run(cli: Cli) -> anyhow::Result<Status> {
    match cli.command {
        Command::Board(args) => board::run(&cli.config, args),
        Command::Config(args) => config::run(&cli.config, &args),
        Command::Daemon(args) => daemon::run(&cli.config, &args),
        Command::Drain(args) => drain::drain(&cli.config, &args),
        Command::Undrain(args) => drain::undrain(&cli.config, &args),
        Command::Completions(args) => docs::completions(&args),
        Command::Man => docs::man(),
        Command::Doctor(args) => doctor::doctor(&cli.config, &args),
        Command::Oneshot(args) => oneshot::run(&cli.config, &args),
        Command::Release(args) => release::run(*args, &cli.config),
        Command::Runners(command) => runners::run(&cli.config, command),
        Command::Token(args) => token::run(&cli.config, &args),
    }
}

/// Print an error and its causes once, on stderr, redacted.
pub fn report(err: &anyhow::Error) {
    let text = format!("error: {err:#}");
    eprintln!("{}", crate::redact::redact(&text));
}
