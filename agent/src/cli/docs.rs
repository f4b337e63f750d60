//! `agentctl completions SHELL` and `agentctl man`: generated from the clap definition, so they
//! never drift from the real command line.

use std::io::Write;

use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;
use crate::exit::Status;

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// Shell to generate completions for.
    #[arg(value_enum)]
    pub shell: Shell,
}

pub fn completions(args: &CompletionsArgs) -> anyhow::Result<Status> {
    let mut command = Cli::command();
    clap_complete::generate(args.shell, &mut command, "agentctl", &mut std::io::stdout());
    Ok(Status::Success)
}

pub fn man() -> anyhow::Result<Status> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut out)?;
    std::io::stdout().write_all(&out)?;
    Ok(Status::Success)
}
