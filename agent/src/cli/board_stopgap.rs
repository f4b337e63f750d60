//! STOPGAP until `config::load` lands (branch `config`): reads only `[agent]` and `[[board]]`
//! of the agreed agent.toml schema into the model types, without profiles or strict checks.
//! Delete this file and call `crate::config::load` in `board.rs` once the loader is merged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

use crate::config::{
    Board, Console, Power, SerialIdentity, DEFAULT_PROFILES_DIR, DEFAULT_STATE_DIR,
};

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    agent: AgentSection,
    #[serde(default)]
    board: Vec<BoardSection>,
}

#[derive(Deserialize, Default)]
struct AgentSection {
    state_dir: Option<PathBuf>,
    profiles_dir: Option<PathBuf>,
}

#[derive(Deserialize)]
struct BoardSection {
    name: String,
    profile: Option<String>,
    arch: Option<String>,
    #[serde(default)]
    labels: Vec<String>,
    boot_prompt: Option<String>,
    tftp_dir: Option<PathBuf>,
    net_iface: Option<String>,
    dtb: Option<PathBuf>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    console: Option<ConsoleSection>,
    power: Option<PowerSection>,
}

#[derive(Deserialize)]
struct UdevMatch {
    #[serde(rename = "ID_SERIAL_SHORT")]
    id_serial_short: Option<String>,
    #[serde(rename = "ID_PATH")]
    id_path: Option<String>,
    #[serde(rename = "ID_USB_INTERFACE_NUM")]
    usb_interface_num: Option<String>,
}

#[derive(Deserialize)]
struct ConsoleSection {
    path: Option<PathBuf>,
    udev: Option<UdevMatch>,
    baud: Option<u32>,
}

#[derive(Deserialize)]
struct PowerSection {
    kind: String,
    device: Option<PathBuf>,
    device_udev: Option<UdevMatch>,
    baud: Option<u32>,
    parity: Option<String>,
    slave: Option<u8>,
    coil: Option<u16>,
    coil_base: Option<u8>,
    cycle_off_secs: Option<u32>,
    on: Option<String>,
    off: Option<String>,
    cycle: Option<String>,
}

fn identity(path: Option<PathBuf>, udev: Option<UdevMatch>) -> Option<SerialIdentity> {
    match (path, udev) {
        (Some(path), _) => Some(SerialIdentity::Path(path)),
        (None, Some(udev)) => Some(SerialIdentity::Udev {
            id_serial_short: udev.id_serial_short,
            id_path: udev.id_path,
            usb_interface_num: udev.usb_interface_num,
        }),
        (None, None) => None,
    }
}

/// The boards and the state directory of the configuration at `path`.
pub fn load(path: &Path) -> anyhow::Result<(Vec<Board>, PathBuf)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    let file: File =
        toml::from_str(&text).with_context(|| format!("cannot parse `{}`", path.display()))?;
    let _profiles = file
        .agent
        .profiles_dir
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PROFILES_DIR));
    let state_dir = file
        .agent
        .state_dir
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let mut boards = Vec::new();
    for section in file.board {
        let console = match section.console {
            Some(console) => Some(Console {
                identity: identity(console.path, console.udev).with_context(|| {
                    format!("board `{}`: console needs `path` or `udev`", section.name)
                })?,
                baud: console.baud.unwrap_or(115_200),
            }),
            None => None,
        };
        let power = match section.power {
            None => None,
            Some(power) if power.kind == "modbus-rtu" => Some(Power::ModbusRtu {
                device: identity(power.device, power.device_udev).with_context(|| {
                    format!("board `{}`: power needs `device` or `device_udev`", section.name)
                })?,
                baud: power.baud.unwrap_or(9600),
                parity: power.parity.unwrap_or_else(|| "none".to_owned()),
                slave: power.slave.unwrap_or(1),
                coil: power.coil.unwrap_or(1),
                coil_base: power.coil_base.with_context(|| {
                    format!("board `{}`: power needs `coil_base`", section.name)
                })?,
                cycle_off_secs: power.cycle_off_secs.unwrap_or(2),
            }),
            Some(power) if power.kind == "command" => Some(Power::Command {
                on: power.on.unwrap_or_default(),
                off: power.off.unwrap_or_default(),
                cycle: power.cycle,
            }),
            Some(power) => anyhow::bail!("board `{}`: unknown power kind `{}`", section.name, power.kind),
        };
        boards.push(Board {
            name: section.name,
            profile: section.profile,
            arch: section.arch,
            labels: section.labels,
            console,
            power,
            boot_prompt: section.boot_prompt,
            tftp_dir: section.tftp_dir,
            net_iface: section.net_iface,
            dtb: section.dtb,
            env: section.env,
        });
    }
    Ok((boards, state_dir))
}
