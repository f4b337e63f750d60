//! `agentctl doctor`: check, as the runner user, that jobs can use the hardware, and say how to
//! fix what they cannot.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Context;

use crate::doctor::{ConfigState, Environment, Family, Options};
use crate::exit::Status;

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print the report as JSON (schema `runner-agent.doctor/1`, see the `doctor` module docs).
    #[arg(long)]
    pub json: bool,
    /// Skip every check that needs the network.
    #[arg(long)]
    pub offline: bool,
    /// Run only one family of checks.
    #[arg(long, value_enum, value_name = "FAMILY")]
    pub only: Option<Family>,
    /// Exit 1 on warnings too.
    #[arg(long)]
    pub strict: bool,
    /// Also run a guest to `HLT` through `KVM_RUN` and start QEMU with `-accel kvm -cpu host`.
    #[arg(long)]
    pub deep: bool,
    /// Check access as this user instead of the configured runner users (repeatable).
    #[arg(long = "user", value_name = "USER")]
    pub users: Vec<String>,
}

pub fn doctor(config_path: &Path, args: &DoctorArgs) -> anyhow::Result<Status> {
    let config = load_config(config_path);
    let options = Options {
        offline: args.offline,
        deep: args.deep,
        only: args.only,
        users: args.users.clone(),
    };
    let env = Environment::system();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime
        .block_on(crate::doctor::run(&config, &options, &env))
        .context("doctor could not run its checks")?;
    let out = if args.json {
        let mut text = serde_json::to_string_pretty(&report.to_json())
            .context("cannot serialise the report")?;
        text.push('\n');
        text
    } else {
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        report.render_table(colour)
    };
    print!("{}", crate::redact::redact(&out));
    Ok(report.exit_status(args.strict))
}

/// The configuration, or why there is none; doctor runs either way.
fn load_config(path: &Path) -> ConfigState {
    if !path.exists() {
        return ConfigState::Missing {
            path: path.to_owned(),
            reason: "no such file".to_owned(),
        };
    }
    match crate::config::load(path) {
        Ok(config) => ConfigState::Loaded(Box::new(config)),
        Err(err) => ConfigState::Invalid {
            path: path.to_owned(),
            message: err.to_string(),
        },
    }
}
