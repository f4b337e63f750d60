//! `agentctl register|start|stop|restart|status|logs|remove|purge [NAME…]`: the runner
//! lifecycle (`runner`, `service`) for the configured runners; no name means all of them.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::Path;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::config;
use crate::exit::Status;
use crate::runner::{Lifecycle, Registered, Remote, RunnerStatus};
use crate::service::LogSource;

#[derive(Debug, Subcommand)]
pub enum RunnerCommand {
    /// Register runners (lay out, configure, install and start the service); a no-op for
    /// registered ones, whose changed labels are applied in place.
    Register(Names),
    /// Start runners.
    Start(Names),
    /// Stop runners (a running job is cancelled); the daemon leaves them stopped until `start`.
    Stop(Names),
    /// Stop, then start runners.
    Restart(Names),
    /// Local state (directory, service, pid, version) and GitHub's (id, online, busy, labels).
    Status(StatusArgs),
    /// Show a runner's log.
    Logs(LogsArgs),
    /// Deregister runners, uninstall their service and delete their directory.
    Remove(Destructive),
    /// Remove every runner of this host: configured ones, recorded ones no longer configured,
    /// and GitHub registrations carrying this host's label.
    Purge(Confirm),
}

#[derive(Debug, Args)]
pub struct Names {
    /// Runner names (default: every configured runner).
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub names: Names,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The runner.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Lines from the end.
    #[arg(short = 'n', long, default_value_t = 200)]
    pub lines: usize,
}

#[derive(Debug, Args)]
pub struct Confirm {
    /// Do not ask for confirmation.
    #[arg(short = 'y', long = "yes")]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct Destructive {
    #[command(flatten)]
    pub names: Names,
    #[command(flatten)]
    pub confirm: Confirm,
}

/// The JSON schema `status --json` prints.
pub const STATUS_SCHEMA: &str = "runner-agent.status/1";

fn hostname() -> String {
    config::LoadOptions::from_env()
        .hostname
        .unwrap_or_else(|| "localhost".to_owned())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn confirm(what: &str, yes: bool) -> anyhow::Result<bool> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("{what} needs confirmation\n\nhint: pass `-y` to confirm without a terminal");
    }
    eprint!("{what}? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

pub fn run(config_path: &Path, command: RunnerCommand) -> anyhow::Result<Status> {
    let config = match config::load(config_path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{}", crate::redact::redact(&err.to_string()));
            return Ok(Status::Config);
        }
    };
    let remote = Remote::from_config(&config)?;
    let lifecycle = Lifecycle::new(&config, hostname(), remote);
    let runtime = runtime()?;
    match command {
        RunnerCommand::Register(names) => {
            let mut failed = false;
            for runner in lifecycle.select(&names.names)? {
                // Registering starts it: no longer held stopped.
                if let Err(err) =
                    crate::daemon::drain::unmark(&config.agent.state_dir, &runner.name)
                {
                    log::warn!("cannot remove the drain mark of `{}`: {err}", runner.name);
                }
                match runtime.block_on(lifecycle.register(runner)) {
                    Ok(Registered::Registered { id, version }) => {
                        println!("{}: registered (id {id}, runner {version})", runner.name)
                    }
                    Ok(Registered::Unchanged { id }) => {
                        println!("{}: already registered (id {id})", runner.name)
                    }
                    Ok(Registered::LabelsUpdated { id, labels }) => println!(
                        "{}: already registered (id {id}), labels set to {}",
                        runner.name,
                        labels.join(",")
                    ),
                    Err(err) => {
                        failed = true;
                        crate::cli::report(
                            &anyhow::Error::new(err)
                                .context(format!("cannot register runner `{}`", runner.name)),
                        );
                    }
                }
            }
            Ok(if failed {
                Status::Error
            } else {
                Status::Success
            })
        }
        RunnerCommand::Start(names) => each(&lifecycle, &names, "start", |r| {
            // A drained runner started by hand is no longer drained.
            if let Err(err) = crate::daemon::drain::unmark(&config.agent.state_dir, &r.name) {
                log::warn!("cannot remove the drain mark of `{}`: {err}", r.name);
            }
            lifecycle.start(r)
        }),
        RunnerCommand::Stop(names) => each(&lifecycle, &names, "stop", |r| {
            // Stopped on purpose: the daemon must not start it again (until `start`).
            crate::daemon::drain::mark(&config.agent.state_dir, &r.name).map_err(|source| {
                crate::runner::RunnerError::Io {
                    path: crate::daemon::drain::mark_path(&config.agent.state_dir, &r.name),
                    source,
                }
            })?;
            lifecycle.stop(r)
        }),
        RunnerCommand::Restart(names) => each(&lifecycle, &names, "restart", |r| {
            lifecycle.stop(r)?;
            lifecycle.start(r)
        }),
        RunnerCommand::Status(args) => {
            let runners = lifecycle.select(&args.names.names)?;
            let statuses = runtime.block_on(lifecycle.status(&runners))?;
            let daemon = crate::daemon::state::read(&config.agent.state_dir);
            if args.json {
                let mut list = Vec::new();
                for status in &statuses {
                    let mut value = serde_json::to_value(status)?;
                    if let (Some(object), Some(state)) = (
                        value.as_object_mut(),
                        daemon.as_ref().and_then(|d| d.runners.get(&status.name)),
                    ) {
                        object.insert("daemon".to_owned(), serde_json::to_value(state)?);
                    }
                    list.push(value);
                }
                let value = serde_json::json!({
                    "schema": STATUS_SCHEMA,
                    "host_label": lifecycle.marker(),
                    "daemon": daemon.as_ref().map(|d| serde_json::json!({
                        "pid": d.pid,
                        "running": d.daemon_alive(),
                        "updated_at": d.updated_at,
                        "github_circuit": d.github_circuit,
                        "github_circuit_until": d.github_circuit_until,
                        "github_unreachable": d.github_unreachable,
                    })),
                    "runners": list,
                });
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!("{}", render_status(&statuses));
                if let Some(daemon) = &daemon {
                    print!("{}", render_daemon(daemon, &statuses));
                }
            }
            Ok(Status::Success)
        }
        RunnerCommand::Logs(args) => {
            let runner = lifecycle.select(std::slice::from_ref(&args.name))?[0];
            logs(&lifecycle, runner, args.lines)
        }
        RunnerCommand::Remove(args) => {
            let runners = lifecycle.select(&args.names.names)?;
            let list: Vec<&str> = runners.iter().map(|r| r.name.as_str()).collect();
            if !confirm(
                &format!("deregister and delete runner(s) {}", list.join(", ")),
                args.confirm.yes,
            )? {
                return Ok(Status::Failure);
            }
            let mut failed = false;
            for runner in runners {
                match runtime.block_on(lifecycle.remove(runner)) {
                    Ok(()) => println!("{}: removed", runner.name),
                    Err(err) => {
                        failed = true;
                        crate::cli::report(
                            &anyhow::Error::new(err)
                                .context(format!("cannot remove runner `{}`", runner.name)),
                        );
                    }
                }
            }
            Ok(if failed {
                Status::Error
            } else {
                Status::Success
            })
        }
        RunnerCommand::Purge(args) => {
            if !confirm(
                &format!(
                    "deregister and delete every runner of this host (label `{}`)",
                    lifecycle.marker()
                ),
                args.yes,
            )? {
                return Ok(Status::Failure);
            }
            runtime.block_on(lifecycle.purge())?;
            println!("purged every runner of this host");
            Ok(Status::Success)
        }
    }
}

fn each(
    lifecycle: &Lifecycle<'_>,
    names: &Names,
    verb: &str,
    action: impl Fn(&crate::config::Runner) -> Result<(), crate::runner::RunnerError>,
) -> anyhow::Result<Status> {
    let mut failed = false;
    for runner in lifecycle.select(&names.names)? {
        match action(runner) {
            Ok(()) => println!("{}: {verb} done", runner.name),
            Err(err) => {
                failed = true;
                crate::cli::report(
                    &anyhow::Error::new(err)
                        .context(format!("cannot {verb} runner `{}`", runner.name)),
                );
            }
        }
    }
    Ok(if failed {
        Status::Error
    } else {
        Status::Success
    })
}

fn logs(
    lifecycle: &Lifecycle<'_>,
    runner: &crate::config::Runner,
    lines: usize,
) -> anyhow::Result<Status> {
    match lifecycle.log_source(runner)? {
        LogSource::File(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read `{}`", path.display()))?;
            let all: Vec<&str> = text.lines().collect();
            for line in &all[all.len().saturating_sub(lines)..] {
                println!("{}", crate::redact::redact(line));
            }
            Ok(Status::Success)
        }
        LogSource::Journal { unit } => {
            let status = std::process::Command::new("journalctl")
                .args(["--no-pager", "-n", &lines.to_string(), "-u", &unit])
                .status()
                .context("cannot run `journalctl`")?;
            Ok(if status.success() {
                Status::Success
            } else {
                Status::Error
            })
        }
        LogSource::Container { engine, container } => {
            let status = std::process::Command::new(&engine)
                .args(["logs", "--tail", &lines.to_string(), &container])
                .status()
                .with_context(|| format!("cannot run `{}`", engine.display()))?;
            Ok(if status.success() {
                Status::Success
            } else {
                Status::Error
            })
        }
        LogSource::None => {
            anyhow::bail!(
                "runner `{}` has no service installed\n\nhint: `agentctl register {}`",
                runner.name,
                runner.name
            )
        }
    }
}

/// A multi-line message (an error and its `hint:`) on one item of `status`: the lines after
/// the first indented by `indent`, blank ones dropped.
fn continued(text: &str, indent: usize) -> String {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let mut out = lines.next().unwrap_or_default().to_owned();
    for line in lines {
        out.push('\n');
        out.push_str(&" ".repeat(indent));
        out.push_str(line);
    }
    out
}

/// The daemon's view in `status`: per runner its state, last error and next retry.
pub fn render_daemon(
    daemon: &crate::daemon::state::DaemonState,
    statuses: &[RunnerStatus],
) -> String {
    use crate::daemon::state::until_text;
    let mut out = format!(
        "daemon (pid {}{}, as of {}):\n",
        daemon.pid,
        if daemon.daemon_alive() {
            ""
        } else {
            ", not running"
        },
        daemon.updated_at
    );
    if let Some(reason) = &daemon.github_circuit {
        let until = daemon
            .github_circuit_until
            .as_deref()
            .map(|at| format!(" or {}", until_text(at)))
            .unwrap_or_default();
        out.push_str(&format!(
            "  github: not called until a secret file changes{until}: {}\n",
            continued(reason, 4)
        ));
    }
    if let Some(outage) = &daemon.github_unreachable {
        out.push_str(&format!(
            "  github: {} since {} ({} failed list(s)): {}\n    next try: {}\n",
            if outage.unreachable {
                "unreachable"
            } else {
                "runner list failing"
            },
            outage.since,
            outage.failures,
            continued(&outage.reason, 4),
            until_text(&outage.next_try)
        ));
    }
    for status in statuses {
        let Some(state) = daemon.runners.get(&status.name) else {
            continue;
        };
        out.push_str(&format!(
            "  {}: {}, {} restart(s)",
            status.name, state.state, state.restarts
        ));
        if let Some(code) = state.last_exit_code {
            out.push_str(&format!(
                ", last exit {code} ({})",
                state.last_exit.as_deref().unwrap_or("?")
            ));
        }
        out.push('\n');
        if let Some(circuit) = &state.circuit {
            out.push_str(&format!("    circuit open: {}\n", continued(circuit, 6)));
        }
        if let Some(error) = &state.last_error {
            out.push_str(&format!("    last error: {}\n", continued(error, 6)));
        }
        if let Some(next) = &state.next_retry {
            out.push_str(&format!("    next retry: {}\n", until_text(next)));
        }
    }
    out
}

/// The human form of `status`.
pub fn render_status(statuses: &[RunnerStatus]) -> String {
    let mut out = String::new();
    for status in statuses {
        let local = &status.local;
        let registration = match local.id {
            Some(id) => format!("registered (id {id})"),
            None if local.exists => "not registered".to_owned(),
            None => "not installed".to_owned(),
        };
        out.push_str(&format!(
            "{}  {}  {} {}{}  runner {}\n",
            status.name,
            registration,
            local.service.backend,
            local.service.state,
            local
                .service
                .pid
                .map(|pid| format!(" (pid {pid})"))
                .unwrap_or_default(),
            local.version.as_deref().unwrap_or("-"),
        ));
        match (&status.github, &status.github_note) {
            (Some(github), _) => out.push_str(&format!(
                "  github: id {} {}{}  labels {}\n",
                github.id,
                github.status,
                if github.busy { " busy" } else { "" },
                github.labels.join(",")
            )),
            (None, Some(note)) => out.push_str(&format!("  github: {}\n", continued(note, 4))),
            (None, None) => {}
        }
        if let Some(board) = &status.board {
            match &board.reason {
                Some(reason) => {
                    let mut lines = reason.lines();
                    out.push_str(&format!(
                        "  board: {} offline: {}\n",
                        board.name,
                        lines.next().unwrap_or_default()
                    ));
                    for line in lines {
                        out.push_str(&format!("    {line}\n"));
                    }
                }
                None => out.push_str(&format!("  board: {} online\n", board.name)),
            }
        }
        out.push_str(&format!("  dir: {}\n", local.dir.display()));
    }
    out
}
