//! Switch a board's power: a Modbus RTU relay coil through `mbpoll`, or any shell commands.
//!
//! Relay controllers cannot take concurrent requests (PDUDaemon's reason to exist), so every
//! command on one relay bus holds an `flock` on `<state_dir>/boards/bus-<node>.lock`; boards
//! whose relays share a tty share the lock. `mbpoll`'s defaults are TCP mode, even parity,
//! 19200 baud and 1-based references, so every one of them is stated explicitly.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::config::{Board, Power};

use super::identity::{resolve, Roots};
use super::{boards_dir, ensure_boards_dir, BoardError, FileLock};

/// Seconds off during a cycle when the power method does not say.
pub const DEFAULT_CYCLE_OFF_SECS: u32 = 2;
/// The longest a power command waits for its relay bus.
const BUS_LOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// What to do with the power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    On,
    Off,
    /// Off, wait, on.
    Cycle,
}

impl Action {
    /// `on`, `off` or `cycle`.
    pub fn name(self) -> &'static str {
        match self {
            Action::On => "on",
            Action::Off => "off",
            Action::Cycle => "cycle",
        }
    }
}

/// How power commands are run.
#[derive(Debug, Clone)]
pub struct PowerContext {
    /// The `mbpoll` program (tests use a fake that records its arguments).
    pub mbpoll: PathBuf,
    pub roots: Roots,
    pub state_dir: PathBuf,
}

/// The `mbpoll` arguments that set one relay coil:
/// `-m rtu -a SLAVE -r COIL -t 0 -b BAUD -P PARITY [-0] DEVICE 1|0`.
pub fn mbpoll_args(power: &Power, device: &Path, on: bool) -> Option<Vec<OsString>> {
    let Power::ModbusRtu {
        baud,
        parity,
        slave,
        coil,
        coil_base,
        ..
    } = power
    else {
        return None;
    };
    let mut args: Vec<OsString> = [
        "-m".to_owned(),
        "rtu".to_owned(),
        "-a".to_owned(),
        slave.to_string(),
        "-r".to_owned(),
        coil.to_string(),
        "-t".to_owned(),
        "0".to_owned(),
        "-b".to_owned(),
        baud.to_string(),
        "-P".to_owned(),
        parity.clone(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    if *coil_base == 0 {
        // mbpoll counts references from 1 unless told `-0` (PDU addressing).
        args.push("-0".into());
    }
    args.push(device.as_os_str().to_owned());
    args.push(if on { "1" } else { "0" }.into());
    Some(args)
}

/// A lock-file name for a relay bus node: `bus-dev-ttyUSB1.lock`.
fn bus_lock_path(state_dir: &Path, node: &Path) -> PathBuf {
    let flat: String = node
        .to_string_lossy()
        .trim_start_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    boards_dir(state_dir).join(format!("bus-{flat}.lock"))
}

/// Switch `board`'s power.
pub fn run(board: &Board, action: Action, ctx: &PowerContext) -> Result<(), BoardError> {
    let power = board
        .power
        .as_ref()
        .ok_or_else(|| BoardError::NotConfigured {
            board: board.name.clone(),
            what: "power control",
        })?;
    ensure_boards_dir(&ctx.state_dir)?;
    match power {
        Power::ModbusRtu {
            device,
            cycle_off_secs,
            ..
        } => {
            let resolved = resolve(device, &board.name, &ctx.roots);
            let device = resolved.device().ok_or_else(|| BoardError::Device {
                board: board.name.clone(),
                what: "relay bus",
                reason: resolved.problem().unwrap_or_default(),
            })?;
            let lock = bus_lock_path(&ctx.state_dir, &device.node);
            let set = |on: bool| -> Result<(), BoardError> {
                let args = mbpoll_args(power, &device.stable, on).unwrap_or_default();
                let _bus = FileLock::acquire(&lock, BUS_LOCK_TIMEOUT)?;
                let mut command = Command::new(&ctx.mbpoll);
                command.args(&args);
                run_command(board, action, command, &display_argv(&ctx.mbpoll, &args))
            };
            match action {
                Action::On => set(true),
                Action::Off => set(false),
                Action::Cycle => {
                    set(false)?;
                    // The bus is free while the board stays off.
                    std::thread::sleep(Duration::from_secs(u64::from(*cycle_off_secs)));
                    set(true)
                }
            }
        }
        Power::Command { on, off, cycle } => {
            let lock = boards_dir(&ctx.state_dir).join(format!("power-{}.lock", board.name));
            let _serial = FileLock::acquire(&lock, BUS_LOCK_TIMEOUT)?;
            let shell = |script: &str| -> Result<(), BoardError> {
                let mut command = Command::new("sh");
                command.arg("-c").arg(script);
                run_command(board, action, command, script)
            };
            match (action, cycle) {
                (Action::On, _) => shell(on),
                (Action::Off, _) => shell(off),
                (Action::Cycle, Some(cycle)) => shell(cycle),
                (Action::Cycle, None) => {
                    shell(off)?;
                    std::thread::sleep(Duration::from_secs(u64::from(DEFAULT_CYCLE_OFF_SECS)));
                    shell(on)
                }
            }
        }
    }
}

fn display_argv(program: &Path, args: &[OsString]) -> String {
    std::iter::once(program.as_os_str())
        .chain(args.iter().map(OsString::as_os_str))
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn run_command(
    board: &Board,
    action: Action,
    mut command: Command,
    shown: &str,
) -> Result<(), BoardError> {
    log::info!("power {} board `{}`: {shown}", action.name(), board.name);
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| BoardError::Spawn {
            program: shown.split(' ').next().unwrap_or_default().to_owned(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    Err(BoardError::PowerFailed {
        board: board.name.clone(),
        action: action.name(),
        command: shown.to_owned(),
        status: output.status.to_string(),
        stderr: if stderr.is_empty() {
            String::new()
        } else {
            format!(": {stderr}")
        },
    })
}
