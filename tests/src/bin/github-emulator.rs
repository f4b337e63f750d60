//! `github-emulator`: the GitHub emulator as a standalone server, for demos and bash tests.
//!
//! ```sh
//! cargo run -p runner-agent-tests --bin github-emulator -- --seed-repo octo/demo
//! ```
//! prints `url=…`, `api_url=…` and, per seeded repository, its web URL and a classic PAT, then
//! serves until interrupted. Drive it with the control API under `/_emulator/`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use runner_agent_tests::emulator::{
    AssetSource, Emulator, EmulatorOptions, PatSpec, ReleaseOptions,
};

#[derive(Debug, Parser)]
#[command(
    name = "github-emulator",
    about = "Emulated GitHub (REST, runner service, releases) on 127.0.0.1"
)]
struct Args {
    /// Port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Create this repository (`OWNER/REPO`, private) and print a classic PAT with `repo` scope.
    #[arg(long = "seed-repo", value_name = "OWNER/REPO")]
    seed_repo: Vec<String>,
    /// Create this organization and print a classic PAT with `admin:org` scope.
    #[arg(long = "seed-org", value_name = "ORG")]
    seed_org: Vec<String>,
    /// Publish every `actions-runner-<platform>-<version>.tar.gz` (or `.zip`) found here.
    #[arg(long = "release-dir", value_name = "DIR")]
    release_dir: Option<PathBuf>,
    /// Longest wait of a runner's message long poll, in seconds.
    #[arg(long, default_value_t = 50)]
    long_poll_secs: u64,
    /// Primary rate limit per token per hour.
    #[arg(long, default_value_t = 5000)]
    rate_limit: u64,
    /// Enforce GitHub's secondary limit: REST points per token per minute (GET 1, others 5;
    /// GitHub uses 900). Off unless given.
    #[arg(long, value_name = "POINTS")]
    secondary_points_per_minute: Option<u64>,
}

/// `actions-runner-linux-x64-2.336.0.tar.gz` → (`linux-x64`, `2.336.0`).
fn parse_asset_name(name: &str) -> Option<(String, String)> {
    let stem = name
        .strip_prefix("actions-runner-")?
        .strip_suffix(".tar.gz")
        .or_else(|| name.strip_prefix("actions-runner-")?.strip_suffix(".zip"))?;
    let (platform, version) = stem.rsplit_once('-')?;
    if !version.chars().next()?.is_ascii_digit() || !platform.contains('-') {
        return None;
    }
    Some((platform.to_string(), version.to_string()))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let emu = Emulator::start(EmulatorOptions {
        port: args.port,
        long_poll: Duration::from_secs(args.long_poll_secs),
        rate_limit: args.rate_limit,
        secondary_points_per_minute: args.secondary_points_per_minute,
        ..EmulatorOptions::default()
    })
    .await
    .context("cannot start the github emulator")?;
    println!("url={}", emu.url());
    println!("api_url={}", emu.api_url());
    println!("control_url={}/_emulator", emu.url());
    for repo in &args.seed_repo {
        emu.create_repo(repo, true)
            .with_context(|| format!("cannot create the repository `{repo}`"))?;
        let pat = emu.add_pat(PatSpec::classic(&["repo"]));
        println!("repo={repo} web_url={} pat={pat}", emu.web_url_for(repo));
    }
    for org in &args.seed_org {
        emu.create_org(org)
            .with_context(|| format!("cannot create the organization `{org}`"))?;
        let pat = emu.add_pat(PatSpec::classic(&["admin:org", "repo"]));
        println!("org={org} web_url={} pat={pat}", emu.web_url_for(org));
    }
    if let Some(dir) = &args.release_dir {
        let mut versions: BTreeMap<String, Vec<(String, AssetSource)>> = BTreeMap::new();
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read the release directory `{}`", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot read `{}`", dir.display()))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some((platform, version)) = parse_asset_name(&name) {
                versions
                    .entry(version)
                    .or_default()
                    .push((platform, AssetSource::Path(entry.path())));
            }
        }
        if versions.is_empty() {
            anyhow::bail!(
                "no `actions-runner-<platform>-<version>.tar.gz` in `{}`\nhint: build a fake release first",
                dir.display()
            );
        }
        for (version, assets) in versions {
            emu.publish_release(&version, assets, ReleaseOptions::default())
                .await
                .with_context(|| format!("cannot publish release `v{version}`"))?;
            println!("release=v{version}");
        }
    }
    eprintln!("github emulator ready; press Ctrl-C to stop");
    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for Ctrl-C")?;
    emu.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_asset_name;

    #[test]
    fn asset_names_give_platform_and_version() {
        assert_eq!(
            parse_asset_name("actions-runner-linux-x64-2.336.0.tar.gz"),
            Some(("linux-x64".into(), "2.336.0".into()))
        );
        assert_eq!(
            parse_asset_name("actions-runner-win-arm64-2.1.0.zip"),
            Some(("win-arm64".into(), "2.1.0".into()))
        );
        assert_eq!(parse_asset_name("README.md"), None);
    }
}
