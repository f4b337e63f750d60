//! `agentctl board ...`: list boards, lease them to jobs (from the runner's job hooks), switch
//! their power, probe their health, render their job environment and udev rules.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::boards::identity::{resolve, Resolution, Roots};
use crate::boards::lease::{self, Holder, Lease, Released};
use crate::boards::power::{self, Action, PowerContext};
use crate::boards::probe::{self, Outcome};
use crate::boards::state::{self, BoardState, Health};
use crate::boards::{env, find, udev, BoardError};
use crate::config::{Board, Power};
use crate::exit::Status;

#[derive(Debug, Args)]
pub struct BoardArgs {
    #[command(subcommand)]
    pub command: BoardCommand,

    /// `mbpoll` program for Modbus RTU relays.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "RUNNER_AGENT_MBPOLL",
        default_value = "mbpoll",
        hide = true
    )]
    pub mbpoll: PathBuf,

    /// Device directory (tests use a temporary tree).
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "RUNNER_AGENT_DEV_ROOT",
        default_value = "/dev",
        hide = true
    )]
    pub dev_root: PathBuf,

    /// udev database directory.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "RUNNER_AGENT_UDEV_DATA",
        default_value = "/run/udev/data",
        hide = true
    )]
    pub udev_data: PathBuf,

    /// sysfs mount point.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "RUNNER_AGENT_SYS_ROOT",
        default_value = "/sys",
        hide = true
    )]
    pub sys_root: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum BoardCommand {
    /// Show each board's device, state and lease holder.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Take a board for a job (run from `ACTIONS_RUNNER_HOOK_JOB_STARTED`); waits while another
    /// job holds it.
    Acquire {
        name: String,
        /// Runner name (default: `$RUNNER_NAME`).
        #[arg(long, env = "RUNNER_NAME")]
        runner: Option<String>,
        /// Job id (default: `$GITHUB_RUN_ID/$GITHUB_RUN_ATTEMPT/$GITHUB_JOB`).
        #[arg(long)]
        job: Option<String>,
        /// Process whose life bounds the lease (default: the runner's `Runner.Worker`).
        #[arg(long)]
        pid: Option<u32>,
        /// Seconds to wait for the board.
        #[arg(long, default_value_t = 3600, value_name = "SECS")]
        timeout: u64,
        /// Power-cycle the board once it is ours.
        #[arg(long)]
        reset: bool,
        /// Power-cycle the board and wait for its boot prompt; an unhealthy board is taken
        /// offline and the job fails.
        #[arg(long)]
        probe: bool,
        /// Seconds the board gets to show its prompt.
        #[arg(long, default_value_t = 120, value_name = "SECS")]
        probe_timeout: u64,
    },
    /// Give a board back (run from `ACTIONS_RUNNER_HOOK_JOB_COMPLETED`).
    Release {
        name: String,
        /// Runner name (default: `$RUNNER_NAME`).
        #[arg(long, env = "RUNNER_NAME")]
        runner: Option<String>,
        /// Job id (default: `$GITHUB_RUN_ID/$GITHUB_RUN_ATTEMPT/$GITHUB_JOB`).
        #[arg(long)]
        job: Option<String>,
        /// Switch the board off after the job.
        #[arg(long)]
        power_off: bool,
    },
    /// Switch a board's power (serialised per relay bus).
    Power {
        #[arg(value_enum)]
        action: Action,
        name: String,
    },
    /// Reset a board and wait for its boot prompt; an unhealthy board is taken offline.
    Probe {
        name: String,
        /// Seconds the board gets to show its prompt.
        #[arg(long, default_value_t = 120, value_name = "SECS")]
        timeout: u64,
        /// Do not power-cycle; send a newline and wait for the prompt.
        #[arg(long)]
        no_reset: bool,
    },
    /// Print a board's job environment (`KEY=value`), or write it to a file.
    Env {
        name: String,
        /// Write the file atomically (0644) instead of printing.
        #[arg(long, value_name = "PATH")]
        output: Option<PathBuf>,
    },
    /// Print udev rules for the configured boards.
    UdevRules,
}

struct Context {
    config: PathBuf,
    boards: Vec<Board>,
    state_dir: PathBuf,
    roots: Roots,
    mbpoll: PathBuf,
}

impl Context {
    fn power(&self) -> PowerContext {
        PowerContext {
            mbpoll: self.mbpoll.clone(),
            roots: self.roots.clone(),
            state_dir: self.state_dir.clone(),
        }
    }

    fn board(&self, name: &str) -> anyhow::Result<&Board> {
        find(&self.boards, name).map_err(|err| {
            let known: Vec<String> = self
                .boards
                .iter()
                .map(|b| format!("`{}`", b.name))
                .collect();
            anyhow::Error::new(err).context(format!(
                "hint: configured boards: {}",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ))
        })
    }
}

pub fn run(config: &Path, args: BoardArgs) -> anyhow::Result<Status> {
    // Job hooks run this as the runner user, who cannot (and must not) read the GitHub secret.
    let options = crate::config::LoadOptions {
        skip_secret_checks: true,
        ..crate::config::LoadOptions::from_env()
    };
    let loaded = match crate::config::load_with(config, &options) {
        Ok(loaded) => loaded,
        Err(err) => {
            // The report carries its own `error:` lines, file positions and hints.
            eprintln!("{}", crate::redact::redact(err.to_string().trim_end()));
            return Ok(Status::Config);
        }
    };
    let ctx = Context {
        config: config.to_owned(),
        boards: loaded.boards,
        state_dir: loaded.agent.state_dir,
        roots: Roots {
            dev: args.dev_root,
            udev_data: args.udev_data,
            sys: args.sys_root,
        },
        mbpoll: args.mbpoll,
    };
    match args.command {
        BoardCommand::List { json } => list(&ctx, json),
        BoardCommand::Acquire {
            name,
            runner,
            job,
            pid,
            timeout,
            reset,
            probe,
            probe_timeout,
        } => acquire(
            &ctx,
            &name,
            Holder {
                runner: runner_name(runner)?,
                job: job_id(job)?,
                pid: pid.unwrap_or_else(lease::default_holder_pid),
            },
            Duration::from_secs(timeout),
            reset,
            probe.then_some(Duration::from_secs(probe_timeout)),
        ),
        BoardCommand::Release {
            name,
            runner,
            job,
            power_off,
        } => release(&ctx, &name, &runner_name(runner)?, &job_id(job)?, power_off),
        BoardCommand::Power { action, name } => {
            let board = ctx.board(&name)?;
            power::run(board, action, &ctx.power())?;
            println!("board `{name}`: power {} done", action.name());
            Ok(Status::Success)
        }
        BoardCommand::Probe {
            name,
            timeout,
            no_reset,
        } => probe_command(&ctx, &name, Duration::from_secs(timeout), !no_reset),
        BoardCommand::Env { name, output } => {
            let board = ctx.board(&name)?;
            let console = board
                .console
                .as_ref()
                .map(|console| resolve(&console.identity, &board.name, &ctx.roots));
            let agentctl = std::env::current_exe().context("cannot find the `agentctl` binary")?;
            let vars = env::job_env(
                board,
                console.as_ref(),
                &env::EnvContext {
                    agentctl,
                    config: std::path::absolute(&ctx.config).unwrap_or(ctx.config.clone()),
                },
            );
            match output {
                Some(path) => env::write_env_file(&path, &vars)?,
                None => print!("{}", env::render(&vars)?),
            }
            Ok(Status::Success)
        }
        BoardCommand::UdevRules => {
            print!("{}", udev::rules(&ctx.boards));
            Ok(Status::Success)
        }
    }
}

fn runner_name(runner: Option<String>) -> anyhow::Result<String> {
    runner.filter(|name| !name.is_empty()).ok_or_else(|| {
        anyhow::anyhow!(
            "no runner name\nhint: pass `--runner` or run from a job hook (`RUNNER_NAME`)"
        )
    })
}

fn job_id(job: Option<String>) -> anyhow::Result<String> {
    if let Some(job) = job.filter(|job| !job.is_empty()) {
        return Ok(job);
    }
    let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    match (
        var("GITHUB_RUN_ID"),
        var("GITHUB_RUN_ATTEMPT"),
        var("GITHUB_JOB"),
    ) {
        (Some(run), attempt, job) => Ok(format!(
            "{run}/{}/{}",
            attempt.unwrap_or_else(|| "1".to_owned()),
            job.unwrap_or_default()
        )),
        _ => {
            anyhow::bail!("no job id\nhint: pass `--job` or run from a job hook (`GITHUB_RUN_ID`)")
        }
    }
}

/// Resolve the board's devices now and record them; returns the new state.
fn refresh(ctx: &Context, board: &Board) -> Result<BoardState, BoardError> {
    let console = board
        .console
        .as_ref()
        .map(|console| resolve(&console.identity, &board.name, &ctx.roots));
    let relay = match &board.power {
        Some(Power::ModbusRtu { device, .. }) => Some(resolve(device, &board.name, &ctx.roots)),
        _ => None,
    };
    state::update(&ctx.state_dir, &board.name, |state| {
        state.console = console;
        state.relay = relay;
    })
}

#[derive(Serialize)]
struct ListEntry<'a> {
    board: &'a str,
    state: &'static str,
    reason: Option<String>,
    console: Option<Resolution>,
    relay: Option<Resolution>,
    health: Health,
    lease: Option<Lease>,
}

fn list(ctx: &Context, json: bool) -> anyhow::Result<Status> {
    let mut entries = Vec::new();
    for board in &ctx.boards {
        let state = refresh(ctx, board)?;
        let lease = lease::current(&ctx.state_dir, &board.name)?;
        let reason = state.offline_reason();
        entries.push(ListEntry {
            board: &board.name,
            state: if reason.is_some() {
                "offline"
            } else if lease.is_some() {
                "leased"
            } else {
                "idle"
            },
            reason,
            console: state.console,
            relay: state.relay,
            health: state.health,
            lease,
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(Status::Success);
    }
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|entry| {
            let device = match &entry.console {
                Some(Resolution::Found(device)) if device.stable != device.node => {
                    format!("{} -> {}", device.stable.display(), device.node.display())
                }
                Some(Resolution::Found(device)) => device.node.display().to_string(),
                Some(Resolution::Missing { .. }) => "missing".to_owned(),
                Some(Resolution::Ambiguous { .. }) => "ambiguous".to_owned(),
                None => "-".to_owned(),
            };
            let (holder, since) = match &entry.lease {
                Some(lease) => (
                    format!("{}/{} (pid {})", lease.runner, lease.job, lease.pid),
                    lease
                        .since
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                ),
                None => ("-".to_owned(), "-".to_owned()),
            };
            let reason = entry
                .reason
                .as_deref()
                .map(|reason| reason.lines().next().unwrap_or_default().to_owned())
                .unwrap_or_else(|| "-".to_owned());
            [
                entry.board.to_owned(),
                entry.state.to_owned(),
                device,
                holder,
                since,
                reason,
            ]
        })
        .collect();
    let header = ["BOARD", "STATE", "DEVICE", "HOLDER", "SINCE", "REASON"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(Status::Success)
}

fn acquire(
    ctx: &Context,
    name: &str,
    holder: Holder,
    timeout: Duration,
    reset: bool,
    probe_timeout: Option<Duration>,
) -> anyhow::Result<Status> {
    let board = ctx.board(name)?;
    let state = refresh(ctx, board)?;
    if let Some(reason) = state.offline_reason() {
        return Err(BoardError::Offline {
            board: name.to_owned(),
            reason,
        }
        .into());
    }
    let lease = match lease::acquire(&ctx.state_dir, name, &holder, timeout) {
        Ok(lease) => lease,
        Err(err @ BoardError::Busy { .. }) => {
            crate::cli::report(&anyhow::Error::new(err));
            return Ok(Status::Failure);
        }
        Err(err) => return Err(err.into()),
    };
    if let Some(probe_timeout) = probe_timeout {
        match health_probe(ctx, board, probe_timeout, true) {
            Ok(Outcome::Healthy { .. }) => {}
            Ok(Outcome::Unhealthy { reason }) => {
                lease::release(&ctx.state_dir, name, &holder.runner, &holder.job)?;
                crate::cli::report(&anyhow::Error::new(BoardError::Offline {
                    board: name.to_owned(),
                    reason: format!("health probe failed: {reason}"),
                }));
                return Ok(Status::Failure);
            }
            Err(err) => {
                lease::release(&ctx.state_dir, name, &holder.runner, &holder.job)?;
                return Err(err.into());
            }
        }
    } else if reset {
        if let Err(err) = power::run(board, Action::Cycle, &ctx.power()) {
            lease::release(&ctx.state_dir, name, &holder.runner, &holder.job)?;
            return Err(err.into());
        }
    }
    println!("board `{name}` leased to {}", lease.describe());
    Ok(Status::Success)
}

fn release(
    ctx: &Context,
    name: &str,
    runner: &str,
    job: &str,
    power_off: bool,
) -> anyhow::Result<Status> {
    let board = ctx.board(name)?;
    if power_off {
        if let Err(err) = power::run(board, Action::Off, &ctx.power()) {
            crate::cli::report(&anyhow::Error::new(err));
        }
    }
    match lease::release(&ctx.state_dir, name, runner, job) {
        Ok(Released::Freed(_)) => {
            println!("board `{name}` released by runner `{runner}` job `{job}`");
            Ok(Status::Success)
        }
        Ok(Released::NotHeld) => {
            println!("board `{name}` was not held");
            Ok(Status::Success)
        }
        Err(err @ BoardError::NotHolder { .. }) => {
            crate::cli::report(&anyhow::Error::new(err));
            Ok(Status::Failure)
        }
        Err(err) => Err(err.into()),
    }
}

/// Run the health probe and record its result in the board's state.
fn health_probe(
    ctx: &Context,
    board: &Board,
    timeout: Duration,
    reset: bool,
) -> Result<Outcome, BoardError> {
    let console = board
        .console
        .as_ref()
        .ok_or_else(|| BoardError::NotConfigured {
            board: board.name.clone(),
            what: "console",
        })?;
    let prompt = board
        .boot_prompt
        .as_deref()
        .ok_or_else(|| BoardError::NotConfigured {
            board: board.name.clone(),
            what: "boot prompt",
        })?;
    let resolved = resolve(&console.identity, &board.name, &ctx.roots);
    let outcome = match resolved.device() {
        None => Outcome::Unhealthy {
            reason: format!("console: {}", resolved.problem().unwrap_or_default()),
        },
        Some(device) => {
            let power_ctx = ctx.power();
            let with_power = reset && board.power.is_some();
            probe::probe(&device.stable, console.baud, prompt, timeout, |port| {
                if with_power {
                    power::run(board, Action::Cycle, &power_ctx)
                } else {
                    port.write_all(b"\r")
                        .and_then(|()| port.flush())
                        .map_err(|source| BoardError::Write {
                            path: device.stable.clone(),
                            source,
                        })
                }
            })?
        }
    };
    let now = time::OffsetDateTime::now_utc();
    state::update(&ctx.state_dir, &board.name, |state| {
        state.health = match &outcome {
            Outcome::Healthy { .. } => Health::Healthy { since: now },
            Outcome::Unhealthy { reason } => Health::Unhealthy {
                reason: reason.clone(),
                since: now,
            },
        };
    })?;
    Ok(outcome)
}

fn probe_command(
    ctx: &Context,
    name: &str,
    timeout: Duration,
    reset: bool,
) -> anyhow::Result<Status> {
    let board = ctx.board(name)?;
    // Never probe a board a job holds: take the lease for the probe's duration.
    let holder = Holder {
        runner: "agentctl".to_owned(),
        job: "probe".to_owned(),
        pid: std::process::id(),
    };
    if let Err(err) = lease::acquire(&ctx.state_dir, name, &holder, Duration::ZERO) {
        crate::cli::report(&anyhow::Error::new(err));
        return Ok(Status::Failure);
    }
    let outcome = health_probe(ctx, board, timeout, reset);
    lease::release(&ctx.state_dir, name, &holder.runner, &holder.job)?;
    match outcome? {
        Outcome::Healthy { after_ms } => {
            println!("board `{name}` is healthy: prompt after {after_ms} ms");
            Ok(Status::Success)
        }
        Outcome::Unhealthy { reason } => {
            println!("board `{name}` is unhealthy and now offline: {reason}");
            Ok(Status::Failure)
        }
    }
}
