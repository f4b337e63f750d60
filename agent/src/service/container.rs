//! The `container` backend: each runner in its own Docker or Podman container.
//!
//! # What runs where
//!
//! Registration stays on the host, exactly as for the other backends: the agent lays out
//! `<root>/<name>` from the verified release and runs `config.sh` there as the runner user, with
//! the same token minting, retries and healing ([`crate::runner::Lifecycle`]). The container then
//! runs that very directory: it is bind-mounted at the same path and the container's command is
//! its `run.sh`. So the engine is never given a registration token, a PAT or the runner's
//! `.credentials`: they stay in files of the runner directory (mode 0600, owned by the runner
//! user), and neither `docker inspect` nor the container's argv holds a secret. The price: the
//! host runs `config.sh`, so it needs the runner's own dependencies (the release's
//! `bin/installdependencies.sh`), and the image only provides the job's userland (toolchains,
//! QEMU, …). The default image is the official `ghcr.io/actions/actions-runner:<version>`
//! ([`crate::config::DEFAULT_CONTAINER_IMAGE`]); its own runner copy is not used.
//!
//! # The container
//!
//! `runner-agent-<name>`, created by `<engine> create` with:
//! - `--user <uid>:<gid>` of the runner user, and one numeric `--group-add` per group the user
//!   has on the host (`initgroups`), per named extra group (`kvm`, `dialout`) and per device node's
//!   owning group: the image's group names and numbers differ from the host's, numbers do not lie.
//! - `--device <kvm_device>:/dev/kvm` when jobs want KVM (`[host] kvm` not `false` and the node
//!   exists); the board's console, resolved from its stable identity, at its stable path
//!   (`BOARD_COMM_UART_DEV`): `--device <node>:<stable>` for a real tty, but a bind mount for a
//!   pty (a `ser2net`/`socat` bridge, or the tests' fake board), because a pty slave only opens
//!   through its own devpts (a copied node answers `EIO`); engines allow ptys by default.
//! - a named volume `runner-agent-<name>-work` on the runner's work directory (also `HOME`), owned
//!   by the runner user; `agentctl remove`/`purge` delete it.
//! - `--restart <[container] restart>` (default `unless-stopped`: back after a reboot or an engine
//!   restart, but `agentctl stop` stays stopped; unlike systemd's `Restart=on-failure`, it also
//!   restarts a listener that exited 0 on a terminal error such as a deleted registration, with
//!   the engine's growing back-off, until the agent re-registers it), `--init` with `--stop-signal SIGINT` and
//!   `RUNNER_MANUALLY_TRAP_SIG=1`, so that `run.sh` passes the interrupt to the listener, which
//!   cancels its job as under the other backends; `--stop-timeout 45`.
//! - labels `runner-agent.runner=<name>`, `runner-agent.owner=host-<hostname>` (the same marker
//!   as on GitHub) and `runner-agent.spec=<sha256 of this whole list>`: `start` recreates the
//!   container when its spec changed (new image, board re-enumerated, other groups).
//! - `--network <[container] network>`, `host` by default: the listener reaches GitHub (or a
//!   proxy) as the host does, a job can reach lab equipment on the host's networks, and no NAT
//!   or bridge is needed (engines here may run with `--bridge=none --iptables=false`). Another
//!   network name is passed as is.
//! - the board's job environment (`BOARD_*`, `RUNNER_AGENT_BOARD`, the job hooks), `PATH`,
//!   `LANG`, the proxy variables and `RUNNER_AGENT_HOSTNAME`. They are passed as `--env NAME` with
//!   the value in the engine client's environment, so argv never holds one; the engine keeps them
//!   in the container's configuration, where `docker inspect` shows them to whoever may use the
//!   engine (root or the `docker` group, who own the host anyway): that is why only
//!   non-secret values go there (a proxy URL with a password would be visible; prefer a proxy
//!   that authenticates by address).
//! - for a board runner, what its job hooks (`agentctl board acquire|release`) need, each at its
//!   host path: `agentctl` and the configuration file (read-only), the hooks directory
//!   (read-only), the board profiles directory (read-only, if present) and the leases directory
//!   `<state_dir>/boards` (read-write); and `--pid host`, because a lease records the pid of the
//!   job and the host's `agentctl board list` checks it. `agentctl` is the host's binary, so the
//!   image must offer a compatible glibc (bookworm's 2.36 or newer for a bookworm build).
//!
//! Engine: `[container] engine` (`docker`, `podman` or a path), else `docker` on `PATH`, else
//! `podman`. Everything goes through its CLI (`create`, `start`, `stop`, `rm`, `volume`,
//! `inspect`, `logs`), which both engines share.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest as _;

use super::{Backend, LogSource, RunAs, ServiceError, ServiceStatus, Unit};
use crate::config::{self, Config, ServiceKind};

/// The prefix of container and volume names.
pub const PREFIX: &str = "runner-agent-";
/// Label keys.
pub const LABEL_RUNNER: &str = "runner-agent.runner";
pub const LABEL_OWNER: &str = "runner-agent.owner";
pub const LABEL_SPEC: &str = "runner-agent.spec";
/// Seconds `stop` gives the listener to cancel its job (as the `process` backend).
pub const STOP_TIMEOUT_SECS: u64 = 45;

/// The container of runner `name`.
pub fn container_name(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// The work volume of runner `name`.
pub fn volume_name(name: &str) -> String {
    format!("{PREFIX}{name}-work")
}

/// Which engine CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engine {
    pub program: PathBuf,
}

impl Engine {
    /// `configured` (a name looked up on `PATH`, or a path), else `docker`, else `podman`.
    pub fn detect(configured: Option<&str>, path_var: Option<&std::ffi::OsStr>) -> Option<Engine> {
        let find = |name: &str| -> Option<PathBuf> {
            if name.contains('/') {
                return Path::new(name).is_file().then(|| PathBuf::from(name));
            }
            std::env::split_paths(path_var?)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        };
        match configured {
            Some(name) => find(name),
            None => find("docker").or_else(|| find("podman")),
        }
        .map(|program| Engine { program })
    }

    /// The engine of this host (`PATH` of this process).
    pub fn system(configured: Option<&str>) -> Option<Engine> {
        Engine::detect(configured, std::env::var_os("PATH").as_deref())
    }

    fn shown(&self, args: &[String]) -> String {
        format!("{} {}", self.program.display(), args.join(" "))
    }

    /// Run `<engine> args` with `env` added to the client's environment; its stdout, or a
    /// [`ServiceError::Failed`] with its output.
    pub fn run(&self, args: &[String], env: &[(String, String)]) -> Result<String, ServiceError> {
        let shown = self.shown(args);
        log::debug!("running `{shown}`");
        let output = Command::new(&self.program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|source| ServiceError::Spawn {
                command: shown.clone(),
                source,
            })?;
        if !output.status.success() {
            return Err(ServiceError::Failed {
                command: shown,
                status: output.status.to_string(),
                output: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Engine {
    /// Like [`Engine::run`], but killed after `timeout` (a hung engine must not hang `doctor`).
    pub fn run_for(
        &self,
        args: &[String],
        timeout: std::time::Duration,
    ) -> Result<String, ServiceError> {
        let shown = self.shown(args);
        let spawn_err = |source| ServiceError::Spawn {
            command: shown.clone(),
            source,
        };
        let mut child = Command::new(&self.program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if child.try_wait().map_err(spawn_err)?.is_some() {
                break;
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ServiceError::Failed {
                    command: shown,
                    status: format!("no answer within {} s", timeout.as_secs()),
                    output: String::new(),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let output = child.wait_with_output().map_err(spawn_err)?;
        if !output.status.success() {
            return Err(ServiceError::Failed {
                command: shown,
                status: output.status.to_string(),
                output: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// Whether an engine's error says the object does not exist.
fn not_found(err: &ServiceError) -> bool {
    match err {
        ServiceError::Failed { output, .. } => {
            let output = output.to_ascii_lowercase();
            output.contains("no such") || output.contains("not found")
        }
        _ => false,
    }
}

/// A bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Everything a runner's container is made of; [`Spec::create_args`] renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub name: String,
    pub image: String,
    pub uid: u32,
    pub gid: u32,
    /// Numeric supplementary groups, sorted, without duplicates.
    pub groups: Vec<u32>,
    /// `--device host:container`.
    pub devices: Vec<(PathBuf, PathBuf)>,
    pub binds: Vec<Bind>,
    /// The work volume and where it is mounted.
    pub volume: (String, PathBuf),
    /// Passed by name; the values go to the engine client's environment.
    pub env: BTreeMap<String, String>,
    pub network: String,
    pub restart: String,
    pub pid_host: bool,
    pub labels: BTreeMap<String, String>,
    pub workdir: PathBuf,
    pub command: Vec<String>,
}

fn mount_arg(kind: &str, source: &str, target: &Path, read_only: bool) -> String {
    let mut arg = format!("type={kind},source={source},target={}", target.display());
    if read_only {
        arg.push_str(",readonly");
    }
    arg
}

impl Spec {
    /// `create …` up to and including the command, without the spec label.
    fn body_args(&self) -> Vec<String> {
        let mut args = strings(&["--name"]);
        args.push(container_name(&self.name));
        for (key, value) in &self.labels {
            args.push("--label".to_owned());
            args.push(format!("{key}={value}"));
        }
        args.push("--user".to_owned());
        args.push(format!("{}:{}", self.uid, self.gid));
        for group in &self.groups {
            args.push("--group-add".to_owned());
            args.push(group.to_string());
        }
        args.extend(strings(&["--network"]));
        args.push(self.network.clone());
        if self.pid_host {
            args.extend(strings(&["--pid", "host"]));
        }
        args.extend(strings(&["--restart"]));
        args.push(self.restart.clone());
        args.extend(strings(&[
            "--init",
            "--stop-signal",
            "SIGINT",
            "--stop-timeout",
        ]));
        args.push(STOP_TIMEOUT_SECS.to_string());
        for (host, inside) in &self.devices {
            args.push("--device".to_owned());
            args.push(format!("{}:{}", host.display(), inside.display()));
        }
        for bind in &self.binds {
            args.push("--mount".to_owned());
            args.push(mount_arg(
                "bind",
                &bind.source.to_string_lossy(),
                &bind.target,
                bind.read_only,
            ));
        }
        args.push("--mount".to_owned());
        args.push(mount_arg("volume", &self.volume.0, &self.volume.1, false));
        for key in self.env.keys() {
            args.push("--env".to_owned());
            args.push(key.clone());
        }
        args.push("--workdir".to_owned());
        args.push(self.workdir.to_string_lossy().into_owned());
        args.push(self.image.clone());
        args.extend(self.command.iter().cloned());
        args
    }

    /// The hash of everything that makes the container (values of the environment included).
    pub fn digest(&self) -> String {
        let mut hasher = sha2::Sha256::new();
        for arg in self.body_args() {
            hasher.update(arg.as_bytes());
            hasher.update([0]);
        }
        for (key, value) in &self.env {
            hasher.update(format!("{key}={value}").as_bytes());
            hasher.update([0]);
        }
        hex::encode(hasher.finalize())
    }

    /// The arguments of `<engine> create`.
    pub fn create_args(&self) -> Vec<String> {
        let mut args = strings(&["create", "--label"]);
        args.push(format!("{LABEL_SPEC}={}", self.digest()));
        args.extend(self.body_args());
        args
    }

    /// The environment the engine client gets for `create`.
    pub fn client_env(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// What the backend knows of one configured runner besides its [`Unit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerInfo {
    /// The work directory, absolute.
    pub work_dir: PathBuf,
    /// The board's name and console identity, if it has one.
    pub board: Option<(String, Option<config::SerialIdentity>)>,
}

/// The `container` backend.
#[derive(Debug, Clone)]
pub struct Container {
    pub settings: config::Container,
    /// `<state_dir>`: records (for the release version) and board leases.
    pub state_dir: PathBuf,
    /// The owner marker (`host-<hostname>`).
    pub owner: String,
    pub hostname: String,
    /// The configured runners (those of other backends too: cheap, and purge may need them).
    pub runners: BTreeMap<String, RunnerInfo>,
    /// Whether jobs want KVM (`[host] kvm` not `false`).
    pub kvm_wanted: bool,
    /// Read-only files board hooks need inside: `agentctl`, the configuration, profiles.
    pub hook_files: Vec<PathBuf>,
    /// Where board devices are looked up.
    pub roots: crate::boards::identity::Roots,
}

impl Container {
    /// The backend for `config` on host `hostname`; `agentctl` is what board hooks call.
    pub fn new(config: &Config, hostname: &str, agentctl: &Path) -> Container {
        let runners = config
            .runners
            .iter()
            .map(|runner| {
                let work_dir = if runner.work_dir.is_absolute() {
                    runner.work_dir.clone()
                } else {
                    runner.dir.join(&runner.work_dir)
                };
                let board = runner.board.as_deref().map(|name| {
                    let identity = config
                        .board(name)
                        .and_then(|b| b.console.as_ref())
                        .map(|c| c.identity.clone());
                    (name.to_owned(), identity)
                });
                (runner.name.clone(), RunnerInfo { work_dir, board })
            })
            .collect();
        let mut hook_files = vec![agentctl.to_path_buf(), config.path.clone()];
        if config.agent.profiles_dir.is_dir() {
            hook_files.push(config.agent.profiles_dir.clone());
        }
        Container {
            settings: config.container.clone(),
            state_dir: config.agent.state_dir.clone(),
            owner: crate::runner::owner_label(hostname),
            hostname: hostname.to_owned(),
            runners,
            kvm_wanted: config.host.kvm != Some(false),
            hook_files,
            roots: crate::boards::identity::Roots::default(),
        }
    }

    /// Whether any runner of `config` uses this backend.
    pub fn used_by(config: &Config) -> bool {
        config
            .runners
            .iter()
            .any(|r| r.service == ServiceKind::Container)
    }

    pub fn engine(&self) -> Result<Engine, ServiceError> {
        Engine::system(self.settings.engine.as_deref()).ok_or_else(|| ServiceError::NoEngine {
            configured: self.settings.engine.clone(),
        })
    }

    /// The image of runner `name`: `{version}` from the agent's record of it (`latest` without).
    pub fn image(&self, name: &str) -> String {
        let version =
            fs::read_to_string(self.state_dir.join("runners").join(format!("{name}.json")))
                .ok()
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                .and_then(|record| record["version"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "latest".to_owned());
        self.settings.image.replace("{version}", &version)
    }

    /// The devices (and pty binds) of runner `name` and the numeric groups that open them.
    pub fn devices(
        &self,
        name: &str,
        run_as: &RunAs,
    ) -> (Vec<(PathBuf, PathBuf)>, Vec<Bind>, Vec<u32>) {
        let mut devices = Vec::new();
        let mut binds = Vec::new();
        let mut groups = Vec::new();
        let kvm = &self.settings.kvm_device;
        if self.kvm_wanted {
            if let Ok(meta) = fs::metadata(kvm) {
                if meta.file_type().is_char_device() {
                    devices.push((kvm.clone(), PathBuf::from("/dev/kvm")));
                    groups.push(meta.gid());
                }
            }
        }
        let identity = self
            .runners
            .get(name)
            .and_then(|info| info.board.as_ref())
            .and_then(|(board, identity)| Some((board, identity.as_ref()?)));
        if let Some((board, identity)) = identity {
            let resolution = crate::boards::identity::resolve(identity, board, &self.roots);
            match resolution.device() {
                Some(device) => {
                    let node = fs::canonicalize(&device.node).unwrap_or(device.node.clone());
                    if let Ok(meta) = fs::metadata(&node) {
                        groups.push(meta.gid());
                        if is_pty(meta.rdev()) {
                            binds.push(Bind {
                                source: node,
                                target: device.stable.clone(),
                                read_only: false,
                            });
                        } else {
                            devices.push((node, device.stable.clone()));
                        }
                    }
                }
                None => log::warn!(
                    "the console of board `{board}` is not there ({}): runner `{name}`'s container starts without it",
                    crate::boards::identity::describe(identity)
                ),
            }
        }
        groups.extend(run_as.groups.iter().copied());
        (devices, binds, groups)
    }

    /// The whole spec of `unit`'s container.
    pub fn spec(&self, unit: &Unit) -> Spec {
        let info = self.runners.get(&unit.name);
        let work_dir = info
            .map(|i| i.work_dir.clone())
            .unwrap_or_else(|| unit.dir.join("_work"));
        let (devices, mut binds, mut groups) = self.devices(&unit.name, &unit.run_as);
        for group in &unit.extra_groups {
            if let Ok(Some(found)) = nix::unistd::Group::from_name(group) {
                groups.push(found.gid.as_raw());
            }
        }
        groups.sort_unstable();
        groups.dedup();
        binds.insert(
            0,
            Bind {
                source: unit.dir.clone(),
                target: unit.dir.clone(),
                read_only: false,
            },
        );
        let board = info.is_some_and(|i| i.board.is_some()) || !unit.env.is_empty();
        if board {
            for file in &self.hook_files {
                binds.push(Bind {
                    source: file.clone(),
                    target: file.clone(),
                    read_only: true,
                });
            }
            let runners = self.state_dir.join("runners");
            let hooks = runners.join(format!("{}.hooks", unit.name));
            if hooks.is_dir() {
                binds.push(Bind {
                    source: hooks.clone(),
                    target: hooks,
                    read_only: true,
                });
            }
            let leases = crate::boards::boards_dir(&self.state_dir);
            binds.push(Bind {
                source: leases.clone(),
                target: leases,
                read_only: false,
            });
        }
        let mut env: BTreeMap<String, String> = super::process::user_env(&unit.run_as)
            .into_iter()
            .filter(|(key, _)| !matches!(key.as_str(), "USER" | "LOGNAME"))
            .collect();
        env.insert("HOME".to_owned(), work_dir.to_string_lossy().into_owned());
        env.insert("RUNNER_MANUALLY_TRAP_SIG".to_owned(), "1".to_owned());
        env.insert(
            crate::config::HOSTNAME_ENV.to_owned(),
            self.hostname.clone(),
        );
        env.extend(unit.env.clone());
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_RUNNER.to_owned(), unit.name.clone());
        labels.insert(LABEL_OWNER.to_owned(), self.owner.clone());
        Spec {
            name: unit.name.clone(),
            image: self.image(&unit.name),
            uid: unit.run_as.uid,
            gid: unit.run_as.gid,
            groups,
            devices,
            binds,
            volume: (volume_name(&unit.name), work_dir),
            env,
            network: self.settings.network.clone(),
            restart: self.settings.restart.clone(),
            pid_host: board,
            labels,
            workdir: unit.dir.clone(),
            command: vec![unit.dir.join("run.sh").to_string_lossy().into_owned()],
        }
    }

    /// The `<engine> run` arguments of a throwaway container that opens every device runner
    /// `name`'s container gets, as `run_as` with the same numeric groups, printing `ok PATH` or
    /// `fail PATH` per device (what `agentctl doctor` runs), and the devices' paths inside; `None`
    /// when the runner gets no device.
    pub fn probe_args(
        &self,
        name: &str,
        run_as: &RunAs,
        extra_groups: &[String],
    ) -> Option<(Vec<String>, Vec<PathBuf>)> {
        let (devices, binds, mut groups) = self.devices(name, run_as);
        for group in extra_groups {
            if let Ok(Some(found)) = nix::unistd::Group::from_name(group) {
                groups.push(found.gid.as_raw());
            }
        }
        groups.sort_unstable();
        groups.dedup();
        let inside: Vec<PathBuf> = devices
            .iter()
            .map(|(_, inside)| inside.clone())
            .chain(binds.iter().map(|b| b.target.clone()))
            .collect();
        if inside.is_empty() {
            return None;
        }
        let mut args = strings(&["run", "--rm", "--network", "none", "--user"]);
        args.push(format!("{}:{}", run_as.uid, run_as.gid));
        for group in &groups {
            args.push("--group-add".to_owned());
            args.push(group.to_string());
        }
        for (host, inside) in &devices {
            args.push("--device".to_owned());
            args.push(format!("{}:{}", host.display(), inside.display()));
        }
        for bind in &binds {
            args.push("--mount".to_owned());
            args.push(mount_arg(
                "bind",
                &bind.source.to_string_lossy(),
                &bind.target,
                false,
            ));
        }
        args.extend(strings(&["--entrypoint", "/bin/sh"]));
        args.push(self.image(name));
        args.push("-c".to_owned());
        args.push(
            "for p in \"$@\"; do if (exec 3<>\"$p\") 2>/dev/null; then echo \"ok $p\"; else echo \"fail $p\"; fi; done"
                .to_owned(),
        );
        args.push("probe".to_owned());
        args.extend(inside.iter().map(|p| p.to_string_lossy().into_owned()));
        Some((args, inside))
    }

    /// `(status, pid, spec digest)` of the container, `None` when there is none.
    fn inspect(
        &self,
        engine: &Engine,
        name: &str,
    ) -> Result<Option<(String, u32, String)>, ServiceError> {
        let format = format!(
            "{{{{.State.Status}}}}|{{{{.State.Pid}}}}|{{{{index .Config.Labels \"{LABEL_SPEC}\"}}}}"
        );
        let args = vec![
            "container".to_owned(),
            "inspect".to_owned(),
            "--format".to_owned(),
            format,
            container_name(name),
        ];
        match engine.run(&args, &[]) {
            Ok(text) => {
                let mut parts = text.trim().splitn(3, '|');
                let status = parts.next().unwrap_or_default().to_owned();
                let pid = parts
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_default();
                let spec = parts.next().unwrap_or_default().to_owned();
                Ok(Some((status, pid, spec)))
            }
            Err(err) if not_found(&err) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The work volume, owned by the runner user.
    fn ensure_volume(&self, engine: &Engine, unit: &Unit) -> Result<(), ServiceError> {
        let volume = volume_name(&unit.name);
        let inspect = vec![
            "volume".to_owned(),
            "inspect".to_owned(),
            "--format".to_owned(),
            "{{.Mountpoint}}".to_owned(),
            volume.clone(),
        ];
        let mountpoint = match engine.run(&inspect, &[]) {
            Ok(text) => text,
            Err(err) if not_found(&err) => {
                let create = vec![
                    "volume".to_owned(),
                    "create".to_owned(),
                    "--label".to_owned(),
                    format!("{LABEL_RUNNER}={}", unit.name),
                    "--label".to_owned(),
                    format!("{LABEL_OWNER}={}", self.owner),
                    volume.clone(),
                ];
                engine.run(&create, &[])?;
                engine.run(&inspect, &[])?
            }
            Err(err) => return Err(err),
        };
        // A new volume is root's: hand it to the runner user (the engine is local and root's).
        let mountpoint = PathBuf::from(mountpoint.trim());
        if let Ok(meta) = fs::metadata(&mountpoint) {
            if (meta.uid(), meta.gid()) != (unit.run_as.uid, unit.run_as.gid) {
                std::os::unix::fs::chown(&mountpoint, Some(unit.run_as.uid), Some(unit.run_as.gid))
                    .map_err(|source| ServiceError::Io {
                        path: mountpoint.clone(),
                        source,
                    })?;
            }
        }
        Ok(())
    }

    /// The container as `unit` wants it: created, or recreated when its spec changed. Returns
    /// whether it is running.
    fn ensure(&self, engine: &Engine, unit: &Unit) -> Result<bool, ServiceError> {
        self.ensure_volume(engine, unit)?;
        let spec = self.spec(unit);
        let digest = spec.digest();
        let name = container_name(&unit.name);
        match self.inspect(engine, &unit.name)? {
            Some((status, _, current)) if current == digest => return Ok(status == "running"),
            Some(_) => {
                log::info!(
                    "the container of runner `{}` changed: recreating it",
                    unit.name
                );
                engine.run(&strings(&["stop", &name]), &[])?;
                engine.run(&strings(&["rm", "--force", &name]), &[])?;
            }
            None => {}
        }
        engine.run(&spec.create_args(), &spec.client_env())?;
        log::info!("created container `{name}` from `{}`", spec.image);
        Ok(false)
    }
}

/// Unix98 pty slaves: majors 136-143.
fn is_pty(rdev: u64) -> bool {
    (136..=143).contains(&nix::sys::stat::major(rdev))
}

impl Backend for Container {
    fn install(&self, unit: &Unit) -> Result<(), ServiceError> {
        let engine = self.engine()?;
        self.ensure(&engine, unit)?;
        Ok(())
    }

    fn start(&self, unit: &Unit) -> Result<(), ServiceError> {
        let engine = self.engine()?;
        if self.ensure(&engine, unit)? {
            log::info!("runner `{}` already runs", unit.name);
            return Ok(());
        }
        engine.run(&strings(&["start", &container_name(&unit.name)]), &[])?;
        log::info!(
            "started runner `{}` (container `{}`)",
            unit.name,
            container_name(&unit.name)
        );
        Ok(())
    }

    fn stop(&self, unit: &Unit) -> Result<(), ServiceError> {
        let Ok(engine) = self.engine() else {
            return Ok(());
        };
        match engine.run(&strings(&["stop", &container_name(&unit.name)]), &[]) {
            Ok(_) => {
                log::info!("stopped runner `{}`", unit.name);
                Ok(())
            }
            Err(err) if not_found(&err) => Ok(()),
            Err(err) => Err(err),
        }
    }

    fn uninstall(&self, unit: &Unit) -> Result<(), ServiceError> {
        let engine = match self.engine() {
            Ok(engine) => engine,
            Err(err) => {
                log::warn!(
                    "cannot remove the container of runner `{}`: {err}",
                    unit.name
                );
                return Ok(());
            }
        };
        self.stop(unit)?;
        let name = container_name(&unit.name);
        if let Err(err) = engine.run(&strings(&["rm", "--force", &name]), &[]) {
            if self.inspect(&engine, &unit.name)?.is_some() {
                return Err(err);
            }
        }
        match engine.run(
            &strings(&["volume", "rm", "--force", &volume_name(&unit.name)]),
            &[],
        ) {
            Ok(_) => Ok(()),
            Err(err) if not_found(&err) => Ok(()),
            Err(err) => Err(err),
        }
    }

    fn status(&self, unit: &Unit) -> Result<ServiceStatus, ServiceError> {
        let engine = self.engine()?;
        let (state, pid) = match self.inspect(&engine, &unit.name)? {
            None => ("not-installed".to_owned(), None),
            Some((status, pid, _)) => {
                let state = match status.as_str() {
                    "running" => "active",
                    "restarting" => "activating",
                    "created" | "exited" | "paused" | "stopped" | "configured" => "inactive",
                    "dead" => "failed",
                    other => other,
                };
                (state.to_owned(), (pid != 0).then_some(pid))
            }
        };
        Ok(ServiceStatus {
            backend: "container",
            state,
            pid,
            unit: Some(container_name(&unit.name)),
        })
    }

    fn log_source(&self, unit: &Unit) -> LogSource {
        match self.engine() {
            Ok(engine) => LogSource::Container {
                engine: engine.program,
                container: container_name(&unit.name),
            },
            Err(_) => LogSource::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(dir: &Path) -> Unit {
        let mut env = BTreeMap::new();
        env.insert("BOARD_DTB".to_owned(), "sim.dtb".to_owned());
        Unit {
            name: "lab-1".to_owned(),
            dir: dir.to_path_buf(),
            run_as: RunAs {
                user: "runner".to_owned(),
                uid: 990,
                gid: 990,
                groups: vec![990, 20],
                home: PathBuf::from("/var/lib/runner-agent/home"),
            },
            env,
            env_file: None,
            extra_groups: Vec::new(),
        }
    }

    fn backend() -> Container {
        let mut runners = BTreeMap::new();
        runners.insert(
            "lab-1".to_owned(),
            RunnerInfo {
                work_dir: PathBuf::from("/srv/runners/lab-1/_work"),
                board: None,
            },
        );
        Container {
            settings: config::Container {
                image: "example/runner:{version}".to_owned(),
                kvm_device: PathBuf::from("/nonexistent/kvm"),
                ..config::Container::default()
            },
            state_dir: PathBuf::from("/nonexistent/state"),
            owner: "host-lab".to_owned(),
            hostname: "lab".to_owned(),
            runners,
            kvm_wanted: true,
            hook_files: vec![PathBuf::from("/usr/bin/agentctl")],
            roots: crate::boards::identity::Roots::default(),
        }
    }

    #[test]
    fn create_args_hold_names_of_the_environment_never_values() {
        let backend = backend();
        let unit = unit(Path::new("/srv/runners/lab-1"));
        let spec = backend.spec(&unit);
        let args = spec.create_args();
        let joined = args.join(" ");
        assert!(joined.contains("--env BOARD_DTB "), "{joined}");
        assert!(!joined.contains("sim.dtb"), "{joined}");
        assert!(spec
            .client_env()
            .contains(&("BOARD_DTB".to_owned(), "sim.dtb".to_owned())));
        assert!(
            joined.contains("--user 990:990 --group-add 20 --group-add 990 "),
            "{joined}"
        );
        assert!(joined.contains(
            "--mount type=volume,source=runner-agent-lab-1-work,target=/srv/runners/lab-1/_work"
        ));
        assert!(joined.contains(
            "--mount type=bind,source=/usr/bin/agentctl,target=/usr/bin/agentctl,readonly"
        ));
        assert!(
            joined.ends_with("example/runner:latest /srv/runners/lab-1/run.sh"),
            "{joined}"
        );
        // No KVM node here: no device.
        assert!(!joined.contains("--device"), "{joined}");
    }

    #[test]
    fn the_spec_label_follows_every_change() {
        let backend = backend();
        let unit1 = unit(Path::new("/srv/runners/lab-1"));
        let mut unit2 = unit1.clone();
        unit2
            .env
            .insert("BOARD_DTB".to_owned(), "other.dtb".to_owned());
        assert_eq!(backend.spec(&unit1).digest(), backend.spec(&unit1).digest());
        assert_ne!(backend.spec(&unit1).digest(), backend.spec(&unit2).digest());
    }

    #[test]
    fn engines_are_found_on_path_docker_first_unless_configured() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["docker", "podman"] {
            fs::write(dir.path().join(name), "").unwrap();
        }
        let path = dir.path().as_os_str();
        assert_eq!(
            Engine::detect(None, Some(path)).unwrap().program,
            dir.path().join("docker")
        );
        assert_eq!(
            Engine::detect(Some("podman"), Some(path)).unwrap().program,
            dir.path().join("podman")
        );
        fs::remove_file(dir.path().join("docker")).unwrap();
        assert_eq!(
            Engine::detect(None, Some(path)).unwrap().program,
            dir.path().join("podman")
        );
        assert_eq!(
            Engine::detect(Some("/nonexistent/docker"), Some(path)),
            None
        );
    }

    #[test]
    fn ptys_are_recognised_by_major() {
        assert!(is_pty(nix::sys::stat::makedev(136, 3)));
        assert!(!is_pty(nix::sys::stat::makedev(188, 0)));
        assert!(!is_pty(nix::sys::stat::makedev(10, 232)));
    }
}
