//! `agentctl config check [--json]`: load the configuration exactly as the daemon does, and
//! either print what it resolves to (nothing with `--quiet`) or every problem in it (exit status
//! 78).
//!
//! `--json` prints one object on stdout, stable for scripts:
//! - valid: `{"config": PATH, "ok": true, "github": {...}, "runners": [...], "boards": [...]}`;
//!   each runner has `name`, `user`, `dir`, `work_dir`, `labels`, `group`, `ephemeral`
//!   (`false`, `true` or `"jit"`), `disable_update`, `version` (`"latest"` or `"2.336.0"`),
//!   `download_mirror`, `sha256`, `board`, `service`; each board has `name`, `profile`, `arch`,
//!   `labels`, `console`, `power`, `boot_prompt`, `tftp_dir`, `net_iface`, `dtb`, `env`;
//! - invalid: `{"config": PATH, "ok": false, "errors": [{"file", "line", "column", "message",
//!   "hint"}]}` (`line` and `column` are `null` for a problem with a whole file), with the human
//!   report on stderr as well.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};

use crate::config::{
    self, Auth, Board, Config, ConfigError, Ephemeral, Power, Runner, Scope, SerialIdentity,
};
use crate::exit::Status;

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Check the configuration and print the runners it defines (exit 78 if it is invalid).
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Print a JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(path: &Path, args: &ConfigArgs) -> anyhow::Result<Status> {
    match &args.command {
        ConfigCommand::Check(check_args) => check(path, check_args),
    }
}

fn check(path: &Path, args: &CheckArgs) -> anyhow::Result<Status> {
    let mut out = std::io::stdout().lock();
    match config::load(path) {
        Ok(config) => {
            if args.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&valid_json(&config))?
                )?;
            } else if log::max_level() >= log::LevelFilter::Info {
                // `--quiet` (the unit's `ExecStartPre`) lowers the log level to warnings: then a
                // valid configuration prints nothing.
                write!(out, "{}", human(&config))?;
            }
            Ok(Status::Success)
        }
        Err(err) => {
            let report = err.to_string();
            eprintln!("{}", crate::redact::redact(report.trim_end()));
            if args.json {
                let text = serde_json::to_string_pretty(&invalid_json(path, &err))?;
                writeln!(out, "{}", crate::redact::redact(&text))?;
            }
            Ok(Status::Config)
        }
    }
}

/// The checklist and the runner table.
fn human(config: &Config) -> String {
    let mut text = format!("configuration `{}` is valid\n", config.path.display());
    let github = &config.github;
    let scope = match &github.scope {
        Scope::Repo { owner, repo } => format!("repository `{owner}/{repo}`"),
        Scope::Org { org } => format!("organisation `{org}`"),
        Scope::Enterprise { slug } => format!("enterprise `{slug}`"),
    };
    text.push_str(&format!(
        "  ok  github: {scope} at {}, API {}\n",
        github.url, github.api_url
    ));
    text.push_str(&format!(
        "  ok  credentials: `{}` from `{}` (readable, no access for group or others)\n",
        github.auth.key(),
        github.auth.secret_file().resolved.display()
    ));
    let board_names: Vec<&str> = config
        .boards
        .iter()
        .map(|board| board.name.as_str())
        .collect();
    text.push_str(&format!(
        "  ok  {} board{}{}\n",
        config.boards.len(),
        plural(config.boards.len()),
        if board_names.is_empty() {
            String::new()
        } else {
            format!(": {}", board_names.join(", "))
        }
    ));
    text.push_str(&format!(
        "  ok  {} runner{}\n",
        config.runners.len(),
        plural(config.runners.len())
    ));
    if config.runners.is_empty() {
        return text;
    }
    let header = [
        "NAME", "USER", "DIR", "LABELS", "BOARD", "VERSION", "SERVICE",
    ]
    .map(String::from);
    let rows: Vec<[String; 7]> = config
        .runners
        .iter()
        .map(|runner| {
            [
                runner.name.clone(),
                runner.user.clone(),
                runner.dir.display().to_string(),
                if runner.labels.is_empty() {
                    "-".to_owned()
                } else {
                    runner.labels.join(",")
                },
                runner.board.clone().unwrap_or_else(|| "-".to_owned()),
                runner.version.to_string(),
                runner.service.as_str().to_owned(),
            ]
        })
        .collect();
    let mut widths = [0usize; 7];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    text.push('\n');
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    text
}

fn plural(count: usize) -> &'static str {
    if count == 1 {
        ""
    } else {
        "s"
    }
}

fn valid_json(config: &Config) -> Value {
    let github = &config.github;
    let scope = match &github.scope {
        Scope::Repo { owner, repo } => json!({"kind": "repo", "owner": owner, "repo": repo}),
        Scope::Org { org } => json!({"kind": "org", "org": org}),
        Scope::Enterprise { slug } => json!({"kind": "enterprise", "slug": slug}),
    };
    let app = match &github.auth {
        Auth::App {
            app_id,
            installation_id,
            ..
        } => json!({"app_id": app_id, "installation_id": installation_id}),
        _ => Value::Null,
    };
    json!({
        "config": config.path,
        "ok": true,
        "github": {
            "url": github.url.as_str(),
            "api_url": github.api_url.as_str(),
            "scope": scope,
            "auth": github.auth.key(),
            "app": app,
            "secret_file": github.auth.secret_file().resolved,
        },
        "runners": config.runners.iter().map(runner_json).collect::<Vec<_>>(),
        "boards": config.boards.iter().map(board_json).collect::<Vec<_>>(),
    })
}

fn runner_json(runner: &Runner) -> Value {
    let ephemeral = match runner.ephemeral {
        Ephemeral::No => json!(false),
        Ephemeral::Yes => json!(true),
        Ephemeral::Jit => json!("jit"),
    };
    json!({
        "name": runner.name,
        "user": runner.user,
        "dir": runner.dir,
        "work_dir": runner.work_dir,
        "labels": runner.labels,
        "group": runner.group,
        "ephemeral": ephemeral,
        "disable_update": runner.disable_update,
        "version": runner.version.to_string(),
        "download_mirror": runner.download_mirror.as_ref().map(url::Url::as_str),
        "sha256": runner.sha256,
        "board": runner.board,
        "service": runner.service.as_str(),
    })
}

fn serial_json(identity: &SerialIdentity) -> Value {
    match identity {
        SerialIdentity::Path(path) => json!({"path": path}),
        SerialIdentity::Udev {
            id_serial_short,
            id_path,
            usb_interface_num,
        } => json!({"udev": {
            "ID_SERIAL_SHORT": id_serial_short,
            "ID_PATH": id_path,
            "ID_USB_INTERFACE_NUM": usb_interface_num,
        }}),
    }
}

fn board_json(board: &Board) -> Value {
    let console = board.console.as_ref().map(|console| {
        let mut value = serial_json(&console.identity);
        value["baud"] = json!(console.baud);
        value
    });
    let power = board.power.as_ref().map(|power| match power {
        Power::ModbusRtu {
            device,
            baud,
            parity,
            slave,
            coil,
            coil_base,
            cycle_off_secs,
        } => json!({
            "kind": "modbus-rtu",
            "device": serial_json(device),
            "baud": baud,
            "parity": parity,
            "slave": slave,
            "coil": coil,
            "coil_base": coil_base,
            "cycle_off_secs": cycle_off_secs,
        }),
        Power::Command { on, off, cycle } => json!({
            "kind": "command",
            "on": on,
            "off": off,
            "cycle": cycle,
        }),
    });
    json!({
        "name": board.name,
        "profile": board.profile,
        "arch": board.arch,
        "labels": board.labels,
        "console": console,
        "power": power,
        "boot_prompt": board.boot_prompt,
        "tftp_dir": board.tftp_dir,
        "net_iface": board.net_iface,
        "dtb": board.dtb,
        "env": board.env,
    })
}

fn invalid_json(path: &Path, err: &ConfigError) -> Value {
    let errors: Vec<Value> = err
        .diagnostics()
        .iter()
        .map(|diagnostic| {
            json!({
                "file": diagnostic.file,
                "line": diagnostic.location.as_ref().map(|location| location.line),
                "column": diagnostic.location.as_ref().map(|location| location.column),
                "message": diagnostic.message,
                "hint": diagnostic.hint,
            })
        })
        .collect();
    json!({"config": path, "ok": false, "errors": errors})
}
