//! The job environment of a board runner: the variables the arceos workflows read
//! (`uboot.toml`'s `${env:BOARD_*}`), resolved to stable paths, written as a file that both the
//! runner's `.env` and a systemd `EnvironmentFile=` understand (`KEY=value` lines, no quoting).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{Board, DEFAULT_CONFIG_PATH};

use super::identity::Resolution;
use super::BoardError;

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
    super::write_if_changed(path, text.as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boards::identity::Device;
    use crate::config::{Console, Power, SerialIdentity};
    use std::os::unix::fs::PermissionsExt;

    fn board() -> Board {
        Board {
            name: "roc-1".to_owned(),
            profile: Some("roc-rk3568-pc".to_owned()),
            arch: Some("aarch64".to_owned()),
            labels: vec!["roc-rk3568-pc".to_owned()],
            console: Some(Console {
                identity: SerialIdentity::Udev {
                    id_serial_short: Some("A10K1234".to_owned()),
                    id_path: None,
                    usb_interface_num: None,
                },
                baud: 1_500_000,
            }),
            power: Some(Power::ModbusRtu {
                device: SerialIdentity::Path(PathBuf::from("/dev/serial/by-id/usb-relay")),
                baud: 38_400,
                parity: "none".to_owned(),
                slave: 1,
                coil: 5,
                coil_base: 1,
                cycle_off_secs: 2,
            }),
            boot_prompt: Some("root@firefly:~#".to_owned()),
            tftp_dir: Some(PathBuf::from("/srv/tftp/roc-1")),
            net_iface: Some("eno2np1".to_owned()),
            dtb: None,
            env: BTreeMap::from([
                (
                    "BOARD_DTB".to_owned(),
                    "rk3568-firefly-roc-pc-se.dtb".to_owned(),
                ),
                // Derived values win over configured ones.
                ("BOARD_COMM_UART_BAUD".to_owned(), "9600".to_owned()),
            ]),
            jobs: Default::default(),
        }
    }

    #[test]
    fn job_env_holds_the_arceos_variables_with_stable_paths() {
        let resolution = Resolution::Found(Device {
            node: PathBuf::from("/dev/ttyUSB3"),
            stable: PathBuf::from("/dev/runner-agent/roc-1"),
        });
        let ctx = EnvContext {
            agentctl: PathBuf::from("/usr/bin/agentctl"),
            config: PathBuf::from(DEFAULT_CONFIG_PATH),
        };
        let text = render(&job_env(&board(), Some(&resolution), &ctx)).unwrap();
        assert_eq!(
            text,
            "# written by agentctl: the board's job environment\n\
             BOARD_COMM_NET_IFACE=eno2np1\n\
             BOARD_COMM_UART_BAUD=1500000\n\
             BOARD_COMM_UART_DEV=/dev/runner-agent/roc-1\n\
             BOARD_DTB=rk3568-firefly-roc-pc-se.dtb\n\
             BOARD_POWER_OFF=/usr/bin/agentctl board power off roc-1\n\
             BOARD_POWER_RESET=/usr/bin/agentctl board power cycle roc-1\n\
             RUNNER_AGENT_BOARD=roc-1\n\
             TFTP_DIR=/srv/tftp/roc-1\n"
        );
    }

    #[test]
    fn a_missing_udev_console_has_no_device_and_a_custom_config_is_passed_on() {
        let ctx = EnvContext {
            agentctl: PathBuf::from("/usr/bin/agentctl"),
            config: PathBuf::from("/etc/lab/agent.toml"),
        };
        let missing = Resolution::Missing {
            reason: "gone".to_owned(),
        };
        let env = job_env(&board(), Some(&missing), &ctx);
        assert_eq!(env.get("BOARD_COMM_UART_DEV"), None);
        assert_eq!(
            env.get("BOARD_POWER_RESET").map(String::as_str),
            Some("/usr/bin/agentctl --config /etc/lab/agent.toml board power cycle roc-1")
        );
    }

    #[test]
    fn values_that_the_runner_and_systemd_would_read_differently_are_refused() {
        for (value, reason) in [
            ("a\nb", "holds a newline, quote or backslash"),
            ("\"quoted\"", "holds a newline, quote or backslash"),
            (" padded", "starts or ends with blanks"),
        ] {
            let env = BTreeMap::from([("X".to_owned(), value.to_owned())]);
            let err = render(&env).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("job environment variable `X` {reason}")
            );
        }
        let env = BTreeMap::from([("1X".to_owned(), "v".to_owned())]);
        assert!(render(&env).is_err());
    }

    #[test]
    fn the_env_file_is_written_atomically_world_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("board.env");
        let env = BTreeMap::from([("TFTP_DIR".to_owned(), "/srv/tftp".to_owned())]);
        write_env_file(&path, &env).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .ends_with("TFTP_DIR=/srv/tftp\n"));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
