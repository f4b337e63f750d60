//! The job environment of a board runner: the variables the arceos workflows read
//! (`uboot.toml`'s `${env:BOARD_*}`), resolved to stable paths, written as a file that both the
//! runner's `.env` and a systemd `EnvironmentFile=` understand (`KEY=value` lines, no quoting).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{Board, Power, DEFAULT_CONFIG_PATH};

use super::identity::Resolution;
use super::{write_atomic, BoardError};

/// How jobs reach the agent for power commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvContext {
    /// Absolute path of `agentctl` (jobs may have a different `PATH`).
    pub agentctl: PathBuf,
    /// The configuration file, passed on as `--config` when it is not the default.
    pub config: PathBuf,
}

/// The job environment of `board`, given its console's current resolution.
///
/// Profile and instance `env` come first; the values the agent derives (console, baud, power
/// commands, DTB, network interface, TFTP directory) override them. `RUNNER_AGENT_BOARD` names
/// the board, for the job hooks.
pub fn job_env(
    board: &Board,
    console: Option<&Resolution>,
    ctx: &EnvContext,
) -> BTreeMap<String, String> {
    let mut env = board.env.clone();
    env.insert("RUNNER_AGENT_BOARD".to_owned(), board.name.clone());
    if let Some(console_config) = &board.console {
        let stable = match console.and_then(Resolution::device) {
            Some(device) => Some(device.stable.clone()),
            None => match &console_config.identity {
                crate::config::SerialIdentity::Path(path) => Some(path.clone()),
                crate::config::SerialIdentity::Udev { .. } => None,
            },
        };
        if let Some(stable) = stable {
            env.insert(
                "BOARD_COMM_UART_DEV".to_owned(),
                stable.to_string_lossy().into_owned(),
            );
        }
        env.insert(
            "BOARD_COMM_UART_BAUD".to_owned(),
            console_config.baud.to_string(),
        );
    }
    if board.power.is_some() {
        let mut agentctl = ctx.agentctl.to_string_lossy().into_owned();
        if ctx.config != Path::new(DEFAULT_CONFIG_PATH) {
            agentctl = format!("{agentctl} --config {}", ctx.config.display());
        }
        env.insert(
            "BOARD_POWER_RESET".to_owned(),
            format!("{agentctl} board power cycle {}", board.name),
        );
        env.insert(
            "BOARD_POWER_OFF".to_owned(),
            format!("{agentctl} board power off {}", board.name),
        );
    }
    if let Some(dtb) = &board.dtb {
        env.insert("BOARD_DTB".to_owned(), dtb.to_string_lossy().into_owned());
    }
    if let Some(iface) = &board.net_iface {
        env.insert("BOARD_COMM_NET_IFACE".to_owned(), iface.clone());
    }
    if let Some(tftp) = &board.tftp_dir {
        env.insert("TFTP_DIR".to_owned(), tftp.to_string_lossy().into_owned());
    }
    env
}

/// Whether the power method needs the agent at all (kept for callers that print the method).
pub fn power_kind(board: &Board) -> &'static str {
    match &board.power {
        Some(Power::ModbusRtu { .. }) => "modbus-rtu",
        Some(Power::Command { .. }) => "command",
        None => "none",
    }
}

/// Render `KEY=value` lines. Values are written unquoted, which both the runner's `.env` reader
/// (split at the first `=`) and systemd's `EnvironmentFile=` take literally as long as they hold
/// no newline, quote or backslash and no surrounding blanks; anything else is refused.
pub fn render(env: &BTreeMap<String, String>) -> Result<String, BoardError> {
    let mut text = String::from("# written by agentctl: the board's job environment\n");
    for (key, value) in env {
        let mut chars = key.chars();
        let key_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !key_ok {
            return Err(BoardError::EnvValue {
                key: key.clone(),
                reason: "is not a valid variable name",
            });
        }
        if value.contains(['\n', '\r', '"', '\'', '\\']) {
            return Err(BoardError::EnvValue {
                key: key.clone(),
                reason: "holds a newline, quote or backslash",
            });
        }
        if value.trim() != value {
            return Err(BoardError::EnvValue {
                key: key.clone(),
                reason: "starts or ends with blanks",
            });
        }
        text.push_str(key);
        text.push('=');
        text.push_str(value);
        text.push('\n');
    }
    Ok(text)
}

/// Write the environment file atomically, mode 0644 (it holds no secrets).
pub fn write_env_file(path: &Path, env: &BTreeMap<String, String>) -> Result<(), BoardError> {
    let text = render(env)?;
    write_atomic(path, text.as_bytes(), 0o644)
}
