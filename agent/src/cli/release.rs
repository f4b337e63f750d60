//! `agentctl release fetch` and `agentctl release install`: the runner package, downloaded,
//! verified and cached, and a runner directory installed from it.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use url::Url;

use crate::config::{Version, VersionReq};
use crate::exit::Status;
use crate::release::{self, Arch, CachedRelease, FetchRequest};

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    #[command(subcommand)]
    pub command: ReleaseCommand,
}

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Download and verify the runner package into the cache (reused when already verified).
    #[command(disable_version_flag = true)]
    Fetch(FetchArgs),
    /// Fetch (unpacking while downloading) and install a runner directory from the cache.
    #[command(disable_version_flag = true)]
    Install(InstallArgs),
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// `latest`, or a version like `2.336.0` (default: the runner's configured version).
    #[arg(long, value_name = "VERSION")]
    pub version: Option<String>,
    /// `x64`, `arm64` or `arm` (default: this host's).
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,
    /// Take version, mirror and pins of this runner (default: the first runner).
    #[arg(long, value_name = "NAME")]
    pub runner: Option<String>,
    /// Cache directory (default: `[agent] cache_dir`).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// GitHub REST base; with it, the configuration file is optional.
    #[arg(long, value_name = "URL")]
    pub api_url: Option<Url>,
    /// Download base replacing `https://github.com/actions/runner/releases/download`.
    #[arg(long, value_name = "URL")]
    pub mirror: Option<Url>,
    /// Expected SHA-256 of the package (a pin).
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    #[command(flatten)]
    pub fetch: FetchArgs,
    /// The runner directory to create or replace.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Owner of the runner's own files and directories.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
}

pub fn run(args: ReleaseArgs, config_path: &Path) -> anyhow::Result<Status> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match args.command {
        ReleaseCommand::Fetch(args) => {
            let request = match request(&args, config_path)? {
                Ok(request) => request,
                Err(status) => return Ok(status),
            };
            let cached = runtime.block_on(release::fetch(&request))?;
            print(&cached, args.json, None)?;
        }
        ReleaseCommand::Install(args) => {
            let request = match request(&args.fetch, config_path)? {
                Ok(request) => request,
                Err(status) => return Ok(status),
            };
            let owner = match &args.user {
                Some(name) => {
                    let user = nix::unistd::User::from_name(name)
                        .with_context(|| format!("cannot look up user `{name}`"))?
                        .with_context(|| format!("there is no user `{name}`"))?;
                    Some((user.uid, user.gid))
                }
                None => None,
            };
            let cached =
                runtime.block_on(release::fetch_and_install(&request, &args.dir, owner))?;
            print(&cached, args.fetch.json, Some(&args.dir))?;
        }
    }
    Ok(Status::Success)
}

/// The request from the configuration (when there is one) and the flags.
fn request(args: &FetchArgs, config_path: &Path) -> anyhow::Result<Result<FetchRequest, Status>> {
    let mut request = if args.api_url.is_some() && !config_path.exists() {
        FetchRequest::new(
            Url::parse("https://api.github.com")?,
            PathBuf::from(crate::config::DEFAULT_CACHE_DIR),
        )
    } else {
        let config = match crate::config::load(config_path) {
            Ok(config) => config,
            Err(err) => {
                super::report(&anyhow::Error::new(err));
                return Ok(Err(Status::Config));
            }
        };
        let runner =
            match &args.runner {
                Some(name) => Some(config.runner(name).with_context(|| {
                    format!("there is no runner `{name}` in the configuration")
                })?),
                None => None,
            };
        FetchRequest::from_config(&config, runner)?
    };
    if let Some(url) = &args.api_url {
        request.api_url = url.clone();
    }
    if let Some(dir) = &args.cache_dir {
        request.cache_dir = dir.clone();
    }
    if let Some(mirror) = &args.mirror {
        request.mirror = Some(mirror.clone());
    }
    if let Some(version) = &args.version {
        request.version = match version.as_str() {
            "latest" => VersionReq::Latest,
            text => VersionReq::Pinned(
                text.parse::<Version>()
                    .map_err(anyhow::Error::msg)
                    .context("invalid `--version`")?,
            ),
        };
    }
    if let Some(arch) = &args.arch {
        request.arch = Some(arch.parse::<Arch>()?);
    }
    if let Some(sha256) = &args.sha256 {
        // A pin for whichever asset this request resolves to.
        let arch = match request.arch {
            Some(arch) => arch,
            None => Arch::host()?,
        };
        let VersionReq::Pinned(version) = request.version else {
            anyhow::bail!("`--sha256` needs `--version`: a pin is for one file\n\nhint: add `--version X.Y.Z`");
        };
        request
            .pins
            .insert(arch.asset_name(version), sha256.clone());
    }
    Ok(Ok(request))
}

fn print(cached: &CachedRelease, json: bool, installed: Option<&Path>) -> anyhow::Result<()> {
    if json {
        let mut value = serde_json::json!({
            "version": cached.version.to_string(),
            "arch": cached.arch.as_str(),
            "asset": cached.asset,
            "path": cached.path,
            "sha256": cached.sha256.to_hex(),
            "checksum_source": cached.source.as_str(),
            "url": cached.url.as_str(),
        });
        if let Some(dir) = installed {
            value["installed"] = serde_json::json!(dir);
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!(
            "runner {} ({}) verified: {}\nsha256 {} (from the {})",
            cached.version,
            cached.arch,
            cached.path.display(),
            cached.sha256,
            cached.source
        );
        if let Some(dir) = installed {
            println!("installed into {}", dir.display());
        }
    }
    Ok(())
}
