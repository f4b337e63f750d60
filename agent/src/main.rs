//! `agentctl`: parse the command line, set up logging, run, map the outcome to an exit code.

use std::process::ExitCode;

fn main() -> ExitCode {
    runner_agent::cli::main()
}
