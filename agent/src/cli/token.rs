//! `agentctl token registration|remove`: a fresh registration or remove token for the configured
//! scope, minted with the configured PAT or App (for workflows that start spot instances).
//! The token goes to stdout only.

use std::path::Path;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::exit::Status;
use crate::github::{Client, Credentials, Token};

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a registration token (`config.sh --token`), valid one hour.
    Registration(TokenOutput),
    /// Print a remove token (`config.sh remove --token`), valid one hour.
    Remove(TokenOutput),
}

#[derive(Debug, Args)]
pub struct TokenOutput {
    /// Print `{"token": ..., "expires_at": ...}` instead of the bare token.
    #[arg(long)]
    pub json: bool,
}

pub fn run(config_path: &Path, args: &TokenArgs) -> anyhow::Result<Status> {
    let config = match crate::config::load(config_path) {
        Ok(config) => config,
        Err(err) => {
            super::report(&anyhow::Error::new(err));
            return Ok(Status::Config);
        }
    };
    let credentials = Credentials::from_config(&config.github.auth)?;
    let client = Client::new(config.github.api_url.clone(), credentials)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let scope = &config.github.scope;
    let (token, output, what) = match &args.command {
        TokenCommand::Registration(output) => (
            runtime.block_on(client.registration_token(scope)),
            output,
            "registration",
        ),
        TokenCommand::Remove(output) => (
            runtime.block_on(client.remove_token(scope)),
            output,
            "remove",
        ),
    };
    let token: Token = token.with_context(|| format!("cannot get a {what} token"))?;
    if output.json {
        let expires_at = token
            .expires_at
            .format(&time::format_description::well_known::Rfc3339)
            .context("cannot format the expiry time")?;
        println!(
            "{}",
            serde_json::json!({"token": token.token, "expires_at": expires_at})
        );
    } else {
        println!("{}", token.token);
    }
    Ok(Status::Success)
}
