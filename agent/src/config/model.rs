//! The resolved configuration: what every other module consumes.
//!
//! These types are the contract between `config` and the rest of the agent. They hold values that
//! were already checked (parse, don't validate): a [`Runner`] has a unique, valid name and labels,
//! its board exists, its version string is well formed. Nothing here holds a secret value; auth
//! points at files, read when needed through [`SecretFile::read`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use url::Url;

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/runner-agent/agent.toml";
/// Default parent of every runner directory (`<root>/<name>`).
pub const DEFAULT_RUNNER_ROOT: &str = "/var/lib/runner-agent/runners";
/// Default state directory of the agent itself (leases, daemon state).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/runner-agent";
/// Default cache of verified runner releases.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/runner-agent";
/// Default directory of board profiles (the package installs `boards/*.toml` here).
pub const DEFAULT_PROFILES_DIR: &str = "/usr/share/runner-agent/boards";
/// Default user the runners run as.
pub const DEFAULT_RUNNER_USER: &str = "runner";

/// The whole, resolved configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from (for messages).
    pub path: PathBuf,
    pub agent: Agent,
    pub github: GitHub,
    pub host: Host,
    /// `[container]`: the engine and image of `service = "container"` runners.
    pub container: Container,
    pub daemon: Daemon,
    /// Every runner, with `count`/`name_template` expanded and defaults applied.
    pub runners: Vec<Runner>,
    /// Every board, inline or from `boards = [...]` files, with its profile applied.
    pub boards: Vec<Board>,
}

/// `[agent]`: where the agent keeps its own files.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    /// Verified runner tarballs, one directory per version.
    pub cache_dir: PathBuf,
    /// Daemon state, board leases.
    pub state_dir: PathBuf,
    /// Where board profiles (`<profile>.toml`) are looked up.
    pub profiles_dir: PathBuf,
}

/// `[daemon]`: what `agentctl daemon` writes besides its state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Daemon {
    /// A Prometheus text file for node_exporter's textfile collector, written atomically.
    pub metrics_file: Option<PathBuf>,
}

/// `[github]`: which GitHub, which scope, which credentials.
#[derive(Debug, Clone, PartialEq)]
pub struct GitHub {
    /// The URL runners register against (what `config.sh --url` gets).
    pub url: Url,
    pub scope: Scope,
    /// REST base: `https://api.github.com`, `https://HOST/api/v3` for GHES, or the emulator.
    pub api_url: Url,
    pub auth: Auth,
}

/// What the runners are registered to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Repo { owner: String, repo: String },
    Org { org: String },
    Enterprise { slug: String },
}

impl Scope {
    /// The REST path prefix of this scope: `/repos/o/r`, `/orgs/o`, `/enterprises/e`.
    pub fn api_prefix(&self) -> String {
        match self {
            Scope::Repo { owner, repo } => format!("/repos/{owner}/{repo}"),
            Scope::Org { org } => format!("/orgs/{org}"),
            Scope::Enterprise { slug } => format!("/enterprises/{slug}"),
        }
    }
}

/// Exactly one way to get registration tokens. Secrets live in files, never in the TOML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// A classic or fine-grained personal access token.
    Pat { file: SecretFile },
    /// A GitHub App installation.
    App {
        app_id: u64,
        installation_id: u64,
        private_key_file: SecretFile,
    },
    /// A registration token handed over as is (expires after one hour).
    RegistrationToken { file: SecretFile },
}

/// A secret read from a file. Under systemd's `LoadCredential=`, a relative name is looked up in
/// `$CREDENTIALS_DIRECTORY` first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFile {
    /// The path as configured (for messages).
    pub configured: PathBuf,
    /// The path actually read.
    pub resolved: PathBuf,
}

/// `[host]`: what the host must offer its jobs (drives labels and `doctor`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Host {
    /// Whether jobs need `/dev/kvm`: `None` means "if the host has it".
    pub kvm: Option<bool>,
    /// Jobs need nested virtualisation (a hypervisor under test inside a KVM guest).
    pub nested_virt: bool,
    /// `qemu-system-*` (or other) binaries jobs need, by name or path.
    pub qemu: Vec<String>,
    /// Foreign arches whose `binfmt_misc` handler jobs need (`aarch64`, `riscv64`, …).
    pub binfmt: Vec<String>,
}

/// The image runners of `service = "container"` use unless `[container] image` says otherwise;
/// `{version}` becomes the runner's release version.
pub const DEFAULT_CONTAINER_IMAGE: &str = "ghcr.io/actions/actions-runner:{version}";

/// `[container]`: how `service = "container"` runners are run (see `service::container`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// `docker`, `podman`, or a path to either; `None`: whichever is on `PATH` (docker first).
    pub engine: Option<String>,
    /// The image, `{version}` replaced by the runner's release version.
    pub image: String,
    /// `--network`: `host` (the default), or the name of a network the administrator made.
    pub network: String,
    /// `--restart`: `unless-stopped` (the default), `always`, `on-failure[:N]` or `no`.
    pub restart: String,
    /// The host's KVM node, passed as `--device <it>:/dev/kvm` when jobs want KVM.
    pub kvm_device: PathBuf,
}

impl Default for Container {
    fn default() -> Self {
        Container {
            engine: None,
            image: DEFAULT_CONTAINER_IMAGE.to_owned(),
            network: "host".to_owned(),
            restart: "unless-stopped".to_owned(),
            kvm_device: PathBuf::from("/dev/kvm"),
        }
    }
}

/// One runner, fully resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Runner {
    /// Unique on this host and stable across restarts.
    pub name: String,
    /// System user the runner runs as (never root).
    pub user: String,
    /// The runner's own directory: `<defaults.root>/<name>`.
    pub dir: PathBuf,
    /// `--work`; relative paths are relative to `dir`.
    pub work_dir: PathBuf,
    /// Configured labels (defaults + runner's own), without the runner's automatic ones.
    pub labels: Vec<String>,
    /// Runner group name (`--runnergroup`); `None` means the default group.
    pub group: Option<String>,
    pub ephemeral: Ephemeral,
    pub disable_update: bool,
    pub version: VersionReq,
    /// Base URL that replaces `https://github.com/actions/runner/releases/download`.
    pub download_mirror: Option<Url>,
    /// SHA-256 pins, keyed by asset file name (`actions-runner-linux-x64-2.336.0.tar.gz`).
    pub sha256: BTreeMap<String, String>,
    /// Name of the board this runner serves.
    pub board: Option<String>,
    pub service: ServiceKind,
}

/// How a runner treats jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ephemeral {
    /// A persistent runner (the default).
    #[default]
    No,
    /// `--ephemeral`: registered for one job, then de-registered by GitHub.
    Yes,
    /// A just-in-time config per job slot.
    Jit,
}

/// Which runner release a runner wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionReq {
    Latest,
    /// A pinned `MAJOR.MINOR.PATCH`.
    Pinned(Version),
}

/// A runner release version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl std::str::FromStr for Version {
    type Err = String;

    /// `2.336.0`, optionally with a leading `v`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bare = text.strip_prefix('v').unwrap_or(text);
        let parts: Vec<&str> = bare.split('.').collect();
        let number = |part: &str| -> Option<u32> {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        };
        match parts.as_slice() {
            [major, minor, patch] => match (number(major), number(minor), number(patch)) {
                (Some(major), Some(minor), Some(patch)) => Ok(Version {
                    major,
                    minor,
                    patch,
                }),
                _ => Err(format!("`{text}` is not a version like `2.336.0`")),
            },
            _ => Err(format!("`{text}` is not a version like `2.336.0`")),
        }
    }
}

/// How a runner is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServiceKind {
    /// The runner's own `svc.sh install <user>` unit plus our drop-in (the default).
    #[default]
    Systemd,
    /// The listener as a child of the agent (containers, one-job JIT runners, tests).
    Process,
    /// A container per runner (Docker or Podman).
    Container,
}

/// A board instance bound on this host.
#[derive(Debug, Clone, PartialEq)]
pub struct Board {
    /// The board's name; also a label of every runner bound to it.
    pub name: String,
    /// The profile it was built from (`roc-rk3568-pc`), if any.
    pub profile: Option<String>,
    /// Target architecture (`aarch64`, `x86_64`, …).
    pub arch: Option<String>,
    /// Extra labels for runners bound to this board.
    pub labels: Vec<String>,
    pub console: Option<Console>,
    pub power: Option<Power>,
    /// Shell prompt (or banner) that proves the board booted, for the health probe.
    pub boot_prompt: Option<String>,
    pub tftp_dir: Option<PathBuf>,
    pub net_iface: Option<String>,
    pub dtb: Option<PathBuf>,
    /// Extra job environment (`BOARD_*` and anything the profile needs).
    pub env: BTreeMap<String, String>,
    /// What the job hooks do with the board around each job.
    pub jobs: BoardJobs,
}

/// A board's power and health routine around each job, run by the runner's job hooks
/// (`agentctl board acquire --reset|--probe`, `agentctl board release --power-off`). Set on the
/// board instance: `reset_before_job`, `probe_after_reset`, `probe_timeout_secs`,
/// `power_off_after_job`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoardJobs {
    /// Power-cycle the board once the job holds it (needs `[board.power]`).
    pub reset_before_job: bool,
    /// After that reset, wait for the boot prompt; a board that does not show it is taken
    /// offline and the job fails (needs `reset_before_job`, a console and a `boot_prompt`).
    pub probe_after_reset: bool,
    /// Seconds the board gets to show its prompt.
    pub probe_timeout_secs: u32,
    /// Switch the board off when the job ends (needs `[board.power]`).
    pub power_off_after_job: bool,
}

/// Seconds a board gets to show its boot prompt after a reset, unless `probe_timeout_secs` says.
pub const DEFAULT_PROBE_TIMEOUT_SECS: u32 = 120;

impl Default for BoardJobs {
    fn default() -> Self {
        BoardJobs {
            reset_before_job: false,
            probe_after_reset: false,
            probe_timeout_secs: DEFAULT_PROBE_TIMEOUT_SECS,
            power_off_after_job: false,
        }
    }
}

/// A board's serial console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Console {
    pub identity: SerialIdentity,
    pub baud: u32,
}

/// How a serial device is found, never by `/dev/ttyUSBn` alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialIdentity {
    /// A stable path: `/dev/serial/by-id/...`, `/dev/serial/by-path/...`, or a udev symlink.
    Path(PathBuf),
    /// udev properties; every given one must match.
    Udev {
        id_serial_short: Option<String>,
        id_path: Option<String>,
        usb_interface_num: Option<String>,
    },
}

/// How a board's power is switched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Power {
    /// A Modbus RTU relay coil driven through `mbpoll`.
    ModbusRtu {
        /// The relay bus's serial device.
        device: SerialIdentity,
        baud: u32,
        /// `none`, `even` or `odd`.
        parity: String,
        slave: u8,
        coil: u16,
        /// Whether `coil` counts from 0 or 1 (mbpoll's `-0` flag); stated explicitly.
        coil_base: u8,
        /// Seconds off during a power cycle.
        cycle_off_secs: u32,
    },
    /// Any commands (run with `sh -c`).
    Command {
        on: String,
        off: String,
        cycle: Option<String>,
    },
}

impl Config {
    /// The runner called `name`, if any.
    pub fn runner(&self, name: &str) -> Option<&Runner> {
        self.runners.iter().find(|runner| runner.name == name)
    }

    /// The board called `name`, if any.
    pub fn board(&self, name: &str) -> Option<&Board> {
        self.boards.iter().find(|board| board.name == name)
    }
}

impl Auth {
    /// The secret file this auth reads.
    pub fn secret_file(&self) -> &SecretFile {
        match self {
            Auth::Pat { file } | Auth::RegistrationToken { file } => file,
            Auth::App {
                private_key_file, ..
            } => private_key_file,
        }
    }

    /// The TOML key this auth is configured with (`pat_file`, `app`, `registration_token_file`).
    pub fn key(&self) -> &'static str {
        match self {
            Auth::Pat { .. } => "pat_file",
            Auth::App { .. } => "app",
            Auth::RegistrationToken { .. } => "registration_token_file",
        }
    }
}

impl std::fmt::Display for VersionReq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionReq::Latest => f.write_str("latest"),
            VersionReq::Pinned(version) => version.fmt(f),
        }
    }
}

impl ServiceKind {
    /// The configured spelling: `systemd`, `process`, `container`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Systemd => "systemd",
            ServiceKind::Process => "process",
            ServiceKind::Container => "container",
        }
    }
}

/// A board profile, `<profiles_dir>/<name>.toml`: the facts every instance of a board type
/// shares. A [`Board`] with `profile = "<name>"` takes these unless it sets them itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Equal to the file's stem.
    pub name: String,
    pub description: Option<String>,
    pub arch: Option<String>,
    /// Put before the instance's own labels.
    pub labels: Vec<String>,
    /// Console speed.
    pub baud: Option<u32>,
    pub boot_prompt: Option<String>,
    /// The power method the board expects.
    pub power: Option<PowerMethod>,
    /// Job environment; the instance's `env` wins on conflicts.
    pub env: BTreeMap<String, String>,
}

/// How a board type expects to be powered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerMethod {
    ModbusRtu,
    Command,
    /// Always on (or switched by hand).
    None,
}
