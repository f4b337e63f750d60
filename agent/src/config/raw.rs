//! The TOML as written: strict serde structs (`deny_unknown_fields` everywhere) whose values keep
//! their spans, so that the rules in `resolve` can point at them. Nothing here is checked beyond
//! its TOML type.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// `agent.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub version: Option<Spanned<i64>>,
    pub boards: Option<Vec<Spanned<String>>>,
    pub agent: Option<RawAgent>,
    pub github: Option<Spanned<RawGitHub>>,
    pub host: Option<RawHost>,
    pub container: Option<RawContainer>,
    pub daemon: Option<RawDaemon>,
    pub defaults: Option<Spanned<RawSettings>>,
    #[serde(default)]
    pub runner: Vec<Spanned<RawRunner>>,
    #[serde(default)]
    pub board: Vec<Spanned<RawBoard>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    pub cache_dir: Option<Spanned<String>>,
    pub state_dir: Option<Spanned<String>>,
    pub profiles_dir: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    pub metrics_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGitHub {
    pub url: Spanned<String>,
    pub api_url: Option<Spanned<String>>,
    pub pat_file: Option<Spanned<String>>,
    pub app: Option<Spanned<RawApp>>,
    pub registration_token_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApp {
    pub app_id: u64,
    pub installation_id: u64,
    pub private_key_file: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHost {
    pub kvm: Option<bool>,
    pub nested_virt: Option<bool>,
    pub qemu: Option<Vec<String>>,
    pub binfmt: Option<Vec<String>>,
}

/// `[container]`: how `service = "container"` runners are run.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawContainer {
    pub engine: Option<Spanned<String>>,
    pub image: Option<Spanned<String>>,
    pub network: Option<Spanned<String>>,
    pub restart: Option<Spanned<String>>,
    pub kvm_device: Option<Spanned<String>>,
}

/// `[defaults]`; a `[[runner]]` may set every one of these too.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    pub user: Option<Spanned<String>>,
    pub root: Option<Spanned<String>>,
    pub work_dir: Option<Spanned<String>>,
    pub labels: Option<Vec<Spanned<String>>>,
    pub group: Option<Spanned<String>>,
    /// `false`, `true` or `"jit"`.
    pub ephemeral: Option<Spanned<toml::Value>>,
    pub disable_update: Option<bool>,
    pub version: Option<Spanned<String>>,
    pub download_mirror: Option<Spanned<String>>,
    pub service: Option<Spanned<String>>,
    pub sha256: Option<BTreeMap<String, Spanned<String>>>,
}

/// `[[runner]]`: its identity plus any of [`RawSettings`] (serde's `flatten` would lose
/// `deny_unknown_fields`, hence the repetition).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRunner {
    pub name: Option<Spanned<String>>,
    pub name_template: Option<Spanned<String>>,
    pub count: Option<Spanned<i64>>,
    pub board: Option<Spanned<String>>,

    pub user: Option<Spanned<String>>,
    pub root: Option<Spanned<String>>,
    pub work_dir: Option<Spanned<String>>,
    pub labels: Option<Vec<Spanned<String>>>,
    pub group: Option<Spanned<String>>,
    pub ephemeral: Option<Spanned<toml::Value>>,
    pub disable_update: Option<bool>,
    pub version: Option<Spanned<String>>,
    pub download_mirror: Option<Spanned<String>>,
    pub service: Option<Spanned<String>>,
    pub sha256: Option<BTreeMap<String, Spanned<String>>>,
}

impl RawRunner {
    /// The settings part, leaving the identity behind.
    pub fn settings(&mut self) -> RawSettings {
        RawSettings {
            user: self.user.take(),
            root: self.root.take(),
            work_dir: self.work_dir.take(),
            labels: self.labels.take(),
            group: self.group.take(),
            ephemeral: self.ephemeral.take(),
            disable_update: self.disable_update.take(),
            version: self.version.take(),
            download_mirror: self.download_mirror.take(),
            service: self.service.take(),
            sha256: self.sha256.take(),
        }
    }
}

/// A file named by `boards = [...]`: `[[board]]` tables only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBoardFile {
    pub version: Option<Spanned<i64>>,
    #[serde(default)]
    pub board: Vec<Spanned<RawBoard>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBoard {
    pub name: Spanned<String>,
    pub profile: Option<Spanned<String>>,
    pub arch: Option<Spanned<String>>,
    pub labels: Option<Vec<Spanned<String>>>,
    pub boot_prompt: Option<String>,
    pub tftp_dir: Option<String>,
    pub net_iface: Option<String>,
    pub dtb: Option<String>,
    pub env: Option<BTreeMap<Spanned<String>, String>>,
    pub console: Option<Spanned<RawConsole>>,
    pub power: Option<Spanned<RawPower>>,
    pub reset_before_job: Option<Spanned<bool>>,
    pub probe_after_reset: Option<Spanned<bool>>,
    pub probe_timeout_secs: Option<Spanned<i64>>,
    pub power_off_after_job: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsole {
    pub path: Option<Spanned<String>>,
    pub udev: Option<Spanned<RawUdev>>,
    pub baud: Option<Spanned<u32>>,
}

/// udev properties, spelled as udev spells them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub struct RawUdev {
    pub ID_SERIAL_SHORT: Option<String>,
    pub ID_PATH: Option<String>,
    pub ID_USB_INTERFACE_NUM: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPower {
    pub kind: Spanned<String>,
    // modbus-rtu
    pub device: Option<Spanned<String>>,
    pub device_udev: Option<Spanned<RawUdev>>,
    pub baud: Option<Spanned<u32>>,
    pub parity: Option<Spanned<String>>,
    pub slave: Option<Spanned<i64>>,
    pub coil: Option<Spanned<i64>>,
    pub coil_base: Option<Spanned<i64>>,
    pub cycle_off_secs: Option<Spanned<u32>>,
    // command
    pub on: Option<Spanned<String>>,
    pub off: Option<Spanned<String>>,
    pub cycle: Option<Spanned<String>>,
}

/// `<profiles_dir>/<name>.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfileFile {
    pub version: Option<Spanned<i64>>,
    pub profile: Spanned<RawProfile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    pub name: Spanned<String>,
    pub description: Option<String>,
    pub arch: Option<Spanned<String>>,
    pub labels: Option<Vec<Spanned<String>>>,
    pub baud: Option<u32>,
    pub boot_prompt: Option<String>,
    pub power: Option<Spanned<String>>,
    pub env: Option<BTreeMap<Spanned<String>, String>>,
}
