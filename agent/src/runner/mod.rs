//! Runner lifecycle: a verified release turned into registered, running runners, and back.
//!
//! [`Lifecycle`] works on the configured runners of one host:
//! - [`Lifecycle::register`]: lay out `<root>/<name>` from the cached release (owned by the runner
//!   user), mint a fresh registration token right before `config.sh`, run it as the runner user
//!   with every input in `ACTIONS_RUNNER_INPUT_*` (`--unattended --replace`, name, labels, work
//!   dir, group, ephemeral, disableupdate), install and start the service. A runner that is
//!   already registered is left alone (labels that changed in the configuration are applied in
//!   place through the labels API); one GitHub forgot is registered again. A failed configure is
//!   retried when GitHub answered 5xx, and never leaves a half-registered runner: the local
//!   files go (`config.sh remove --local`) and a registration GitHub already made is deleted.
//! - [`Lifecycle::remove`]: stop and uninstall the service, `config.sh remove` with a fresh remove
//!   token, the directory deleted. If GitHub already forgot the runner, local clean-up completes.
//! - [`Lifecycle::purge`]: remove every configured runner, and every runner of this host's that
//!   is no longer configured (GitHub registrations with this host's marker label, runner
//!   directories the agent recorded).
//! - [`Lifecycle::status`]: the local view (directory, service state, pid, version) joined with
//!   GitHub's (id, online/offline, busy, labels).
//!
//! # Ownership marker
//!
//! Every runner this host registers carries the label `host-<hostname>` ([`owner_label`]):
//! names come from templates the administrator writes (two hosts may well both expand
//! `ci-{index}`), a label does not depend on them. GitHub compares labels case-insensitively, so
//! the marker is lower case. Clean-up deletes a GitHub registration only when it carries this
//! host's marker, and registering a name that GitHub already holds *without* the marker is refused
//! ([`RunnerError::NameCollision`]): that is another host's runner.

pub mod configure;
mod remote;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::unistd::{Gid, Group, Uid, User};

pub use remote::{Remote, RemoteRunner, Token};

use crate::boards::env::EnvContext;
use crate::config::{Config, Ephemeral, Runner};
use crate::release::{self, FetchRequest, ReleaseError};
use crate::service::{self, Backend, RunAs, ServiceError, ServiceStatus, Unit};

/// Errors of the runner lifecycle.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("no runner `{name}` in the configuration")]
    UnknownRunner { name: String },
    #[error("runner user `{user}` does not exist\n\nhint: create it (`useradd --system --create-home {user}`) or set `user` in the configuration")]
    NoUser { user: String },
    #[error("cannot look up user `{user}`")]
    UserLookup {
        user: String,
        #[source]
        source: nix::Error,
    },
    #[error("runner `{runner}` would run as root\n\nhint: set `user` to an unprivileged account; the runner refuses to configure as root")]
    RootUser { runner: String },
    #[error("cannot install the runner release into `{dir}`")]
    Release {
        dir: PathBuf,
        #[source]
        source: Box<ReleaseError>,
    },
    #[error("cannot read the GitHub credentials")]
    Secret {
        #[source]
        source: Box<crate::config::ConfigError>,
    },
    #[error("the registration token in `{file}` is refused: it expired at {expiry}, or was revoked\n\nhint: a raw registration token expires one hour after it is minted; configure `pat_file` or `app` so that the agent mints a fresh one whenever it registers")]
    TokenExpired { file: PathBuf, expiry: String },
    #[error("GitHub refused the registration token for runner `{runner}`: {output}")]
    TokenRefused { runner: String, output: String },
    #[error("configuring runner `{runner}` failed after {attempts} attempt(s): {output}\n\nhint: its local registration files were removed; run `agentctl register {runner}` again")]
    Configure {
        runner: String,
        attempts: u32,
        output: String,
    },
    #[error("a runner named `{runner}` is already registered on GitHub (id {id}) and is not this host's: it lacks the label `{marker}`\n\nhint: pick another `name`/`name_template`, or delete that runner on GitHub if it is really gone")]
    NameCollision {
        runner: String,
        id: u64,
        marker: String,
    },
    #[error("runner `{runner}` is not registered\n\nhint: `agentctl register {runner}`")]
    NotRegistered { runner: String },
    #[error("cannot {what}: no access to GitHub's REST API\n\nhint: configure `pat_file` or `app` instead of `registration_token_file`")]
    NoRest { what: String },
    #[error("GitHub API: {what}")]
    Github {
        what: String,
        #[source]
        source: Box<crate::github::GithubError>,
    },
    #[error("service of runner `{runner}`")]
    Service {
        runner: String,
        #[source]
        source: ServiceError,
    },
    #[error("cannot remove runner `{runner}` from GitHub: {output}")]
    Remove { runner: String, output: String },
    #[error("i/o error at `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RunnerError + '_ {
    move |source| RunnerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The label that marks the runners this host registered: `host-<hostname>`, lower case, with
/// anything but letters, digits, `.`, `_` and `-` replaced by `-`.
pub fn owner_label(hostname: &str) -> String {
    let clean: String = hostname
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("host-{clean}")
}

fn push_label(labels: &mut Vec<String>, label: &str) {
    if !labels.iter().any(|known| known.eq_ignore_ascii_case(label)) {
        labels.push(label.to_owned());
    }
}

/// The labels a runner registers with besides the runner's own defaults: configured, then
/// derived (`kvm` when the runner user can use `/dev/kvm` and the host does not say
/// `kvm = false`, the board's name and labels), then this host's marker.
pub fn desired_labels(config: &Config, runner: &Runner, hostname: &str, kvm: bool) -> Vec<String> {
    let mut labels = Vec::new();
    for label in &runner.labels {
        push_label(&mut labels, label);
    }
    if kvm && config.host.kvm != Some(false) {
        push_label(&mut labels, "kvm");
    }
    if let Some(board) = runner.board.as_deref().and_then(|name| config.board(name)) {
        push_label(&mut labels, &board.name);
        for label in &board.labels {
            push_label(&mut labels, label);
        }
    }
    push_label(&mut labels, &owner_label(hostname));
    labels
}

/// Whether `run_as` can open `/dev/kvm` read-write, judged from its mode, owner and group.
pub fn kvm_usable(run_as: &RunAs, node: &Path) -> bool {
    let Ok(meta) = fs::metadata(node) else {
        return false;
    };
    let mode = meta.mode();
    if meta.uid() == run_as.uid {
        return mode & 0o600 == 0o600;
    }
    if run_as.groups.contains(&meta.gid()) || run_as.gid == meta.gid() {
        return mode & 0o060 == 0o060;
    }
    mode & 0o006 == 0o006
}

/// Look a runner user up: uid, gid, `initgroups` groups, home.
pub fn run_as(user: &str) -> Result<RunAs, RunnerError> {
    let found = User::from_name(user)
        .map_err(|source| RunnerError::UserLookup {
            user: user.to_owned(),
            source,
        })?
        .ok_or_else(|| RunnerError::NoUser {
            user: user.to_owned(),
        })?;
    let cname = std::ffi::CString::new(user).map_err(|_| RunnerError::NoUser {
        user: user.to_owned(),
    })?;
    let groups = nix::unistd::getgrouplist(&cname, found.gid)
        .map_err(|source| RunnerError::UserLookup {
            user: user.to_owned(),
            source,
        })?
        .into_iter()
        .map(Gid::as_raw)
        .collect();
    Ok(RunAs {
        user: user.to_owned(),
        uid: found.uid.as_raw(),
        gid: found.gid.as_raw(),
        groups,
        home: found.dir,
    })
}

/// What `.runner` says (UTF-8 with a BOM, camelCase keys, read case-insensitively enough).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LocalRegistration {
    pub id: u64,
    pub name: String,
    pub github_url: String,
    pub pool: String,
}

impl LocalRegistration {
    /// The registration in `dir` (`.runner`, or `.runner_migrated` first), if configured.
    pub fn read(dir: &Path) -> Option<LocalRegistration> {
        let text = [".runner_migrated", ".runner"]
            .iter()
            .find_map(|file| fs::read(dir.join(file)).ok())?;
        let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&text);
        let value: serde_json::Value = serde_json::from_slice(text).ok()?;
        let object = value.as_object()?;
        let get = |key: &str| {
            object
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v)
        };
        Some(LocalRegistration {
            id: get("agentId")?.as_u64()?,
            name: get("agentName")?.as_str()?.to_owned(),
            github_url: get("gitHubUrl")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned(),
            pool: get("poolName")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned(),
        })
    }
}

/// What the agent records per runner in `<state_dir>/runners/<name>.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub name: String,
    pub dir: PathBuf,
    pub user: String,
    pub version: String,
    pub service: String,
    /// The labels it was registered (or last updated) with.
    pub labels: Vec<String>,
}

/// How `register` ended for one runner.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Registered {
    /// Newly registered (or again, after GitHub forgot it).
    Registered { id: u64, version: String },
    /// Already registered: nothing changed.
    Unchanged { id: u64 },
    /// Already registered; its labels were changed in place.
    LabelsUpdated { id: u64, labels: Vec<String> },
}

/// Knobs of [`Lifecycle`].
#[derive(Debug, Clone)]
pub struct Options {
    /// `config.sh` attempts when GitHub answers 5xx.
    pub attempts: u32,
    pub backoff: Duration,
    /// Progress bars for downloads.
    pub progress: bool,
    /// The `/dev/kvm` node checked for the `kvm` label.
    pub kvm_node: PathBuf,
    /// `agentctl` and the configuration, for board job hooks and power commands.
    pub env_context: EnvContext,
    /// Where board devices are looked up (a board runner's job environment names the device
    /// as it is when the runner starts).
    pub roots: crate::boards::identity::Roots,
}

impl Options {
    pub fn new(config: &Config) -> Options {
        Options {
            attempts: 3,
            backoff: Duration::from_secs(2),
            progress: false,
            kvm_node: PathBuf::from("/dev/kvm"),
            env_context: EnvContext {
                agentctl: std::env::current_exe()
                    .unwrap_or_else(|_| PathBuf::from("/usr/bin/agentctl")),
                config: config.path.clone(),
            },
            roots: crate::boards::identity::Roots::from_env(),
        }
    }
}

/// The status of one runner: local view and GitHub's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunnerStatus {
    pub name: String,
    pub local: LocalView,
    /// `None` without REST access or when GitHub does not know the runner.
    pub github: Option<RemoteRunner>,
    /// Why `github` is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub github_note: Option<String>,
    /// A board runner's board: online, or offline with the reason (which keeps the runner
    /// offline under the daemon).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub board: Option<crate::boards::state::BoardSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LocalView {
    pub dir: PathBuf,
    pub exists: bool,
    pub registered: bool,
    /// The id in `.runner`.
    pub id: Option<u64>,
    pub version: Option<String>,
    pub service: ServiceStatus,
}

/// The lifecycle of the configured runners of this host.
pub struct Lifecycle<'a> {
    pub config: &'a Config,
    pub hostname: String,
    pub remote: Remote,
    pub options: Options,
    /// Backends by kind (replaceable in tests).
    pub backends: BTreeMap<&'static str, Box<dyn Backend>>,
}

impl<'a> Lifecycle<'a> {
    pub fn new(config: &'a Config, hostname: String, remote: Remote) -> Lifecycle<'a> {
        let mut backends: BTreeMap<&'static str, Box<dyn Backend>> = BTreeMap::new();
        backends.insert("systemd", Box::new(service::Systemd::system()));
        backends.insert(
            "process",
            Box::new(service::Process::new(&config.agent.state_dir)),
        );
        let options = Options::new(config);
        backends.insert(
            "container",
            Box::new(service::Container::new(
                config,
                &hostname,
                &options.env_context.agentctl,
            )),
        );
        Lifecycle {
            options,
            config,
            hostname,
            remote,
            backends,
        }
    }

    /// The runners named (all configured runners when `names` is empty).
    pub fn select(&self, names: &[String]) -> Result<Vec<&'a Runner>, RunnerError> {
        if names.is_empty() {
            return Ok(self.config.runners.iter().collect());
        }
        names
            .iter()
            .map(|name| {
                self.config
                    .runner(name)
                    .ok_or_else(|| RunnerError::UnknownRunner { name: name.clone() })
            })
            .collect()
    }

    pub fn marker(&self) -> String {
        owner_label(&self.hostname)
    }

    fn backend(&self, runner: &Runner) -> Result<&dyn Backend, RunnerError> {
        // A JIT runner's listener is always a process of the daemon (`daemon::jit`).
        let kind = match runner.ephemeral {
            Ephemeral::Jit => crate::config::ServiceKind::Process,
            _ => runner.service,
        };
        self.backends
            .get(kind.as_str())
            .map(|b| b.as_ref())
            .ok_or_else(|| RunnerError::Service {
                runner: runner.name.clone(),
                source: ServiceError::Unsupported {
                    kind: runner.service.as_str(),
                },
            })
    }

    fn runners_dir(&self) -> PathBuf {
        self.config.agent.state_dir.join("runners")
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.runners_dir().join(format!("{name}.json"))
    }

    fn env_path(&self, name: &str) -> PathBuf {
        self.runners_dir().join(format!("{name}.env"))
    }

    pub fn record(&self, name: &str) -> Option<Record> {
        let text = fs::read_to_string(self.record_path(name)).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn write_record(&self, record: &Record) -> Result<(), RunnerError> {
        let dir = self.runners_dir();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(io_err(&dir))?;
        let path = self.record_path(&record.name);
        let text = serde_json::to_string_pretty(record)
            .map_err(|err| io_err(&path)(std::io::Error::other(err)))?;
        // A power cut leaves the old record or the new one, never an empty file.
        crate::atomic::write(&path, text.as_bytes(), 0o644).map_err(io_err(&path))
    }

    /// The board job environment and hooks of a board runner, written to `<name>.env` (mode
    /// 0644: no secrets) for systemd's `EnvironmentFile=`; empty for other runners.
    fn board_env(&self, runner: &Runner) -> Result<BTreeMap<String, String>, RunnerError> {
        let Some(board) = runner.board.as_deref().and_then(|b| self.config.board(b)) else {
            return Ok(BTreeMap::new());
        };
        let ctx = &self.options.env_context;
        let run_as = run_as(&runner.user)?;
        crate::boards::prepare_boards_dir(&self.config.agent.state_dir, run_as.gid).map_err(
            |err| RunnerError::Io {
                path: crate::boards::boards_dir(&self.config.agent.state_dir),
                source: std::io::Error::other(err.to_string()),
            },
        )?;
        let console = board.console.as_ref().map(|console| {
            crate::boards::identity::resolve(&console.identity, &board.name, &self.options.roots)
        });
        let mut env = crate::boards::env::job_env(board, console.as_ref(), ctx);
        let hooks = self.runners_dir().join(format!("{}.hooks", runner.name));
        fs::create_dir_all(&hooks).map_err(io_err(&hooks))?;
        // The runner user runs the hooks: whatever the umask (the service's is 0027).
        fs::set_permissions(&hooks, fs::Permissions::from_mode(0o755)).map_err(io_err(&hooks))?;
        let options = crate::boards::hooks::HookOptions::for_board(board);
        let started = hooks.join("job-started.sh");
        let completed = hooks.join("job-completed.sh");
        for (path, text) in [
            (
                &started,
                crate::boards::hooks::job_started(&board.name, ctx, &options),
            ),
            (
                &completed,
                crate::boards::hooks::job_completed(&board.name, ctx, &options),
            ),
        ] {
            // Atomically: the runner may be starting a hook right now.
            crate::boards::write_if_changed(path, text.as_bytes(), 0o755).map_err(|err| {
                RunnerError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(err.to_string()),
                }
            })?;
        }
        env.extend(crate::boards::hooks::hook_env(&started, &completed));
        let path = self.env_path(&runner.name);
        crate::boards::env::write_env_file(&path, &env).map_err(|err| RunnerError::Io {
            path: path.clone(),
            source: std::io::Error::other(err.to_string()),
        })?;
        Ok(env)
    }

    /// What a backend needs for `runner`.
    pub fn unit(&self, runner: &Runner) -> Result<Unit, RunnerError> {
        let run_as = run_as(&runner.user)?;
        let env = self.board_env(runner)?;
        let env_file = (!env.is_empty()).then(|| self.env_path(&runner.name));
        let mut extra_groups = Vec::new();
        let kvm =
            kvm_usable(&run_as, &self.options.kvm_node) || (self.config.host.kvm == Some(true));
        if kvm && self.config.host.kvm != Some(false) {
            extra_groups.push("kvm");
        }
        if runner.board.is_some() {
            extra_groups.push("dialout");
        }
        let extra_groups = extra_groups
            .into_iter()
            .filter(|g| Group::from_name(g).ok().flatten().is_some())
            .map(str::to_owned)
            .collect();
        Ok(Unit {
            name: runner.name.clone(),
            dir: runner.dir.clone(),
            run_as,
            env,
            env_file,
            extra_groups,
        })
    }

    fn labels_for(&self, runner: &Runner, run_as: &RunAs) -> Vec<String> {
        let kvm = if runner.service == crate::config::ServiceKind::Container {
            // The container gets the configured node and its group (numeric `--group-add`).
            let node = &self.config.container.kvm_device;
            let mut inside = run_as.clone();
            if let Ok(meta) = fs::metadata(node) {
                inside.groups.push(meta.gid());
            }
            kvm_usable(&inside, node)
        } else {
            kvm_usable(run_as, &self.options.kvm_node)
        };
        desired_labels(self.config, runner, &self.hostname, kvm)
    }

    /// Register (if needed), install and start each runner.
    pub async fn register(&self, runner: &Runner) -> Result<Registered, RunnerError> {
        let run_as = run_as(&runner.user)?;
        if run_as.uid == 0 {
            return Err(RunnerError::RootUser {
                runner: runner.name.clone(),
            });
        }
        let labels = self.labels_for(runner, &run_as);
        let remote_list = self.remote.runners().await?;
        let local = LocalRegistration::read(&runner.dir);
        if let Some(local) = &local {
            if let Some(outcome) = self
                .existing(runner, local, &labels, remote_list.as_deref(), &run_as)
                .await?
            {
                self.install_and_start(runner)?;
                return Ok(outcome);
            }
        }
        if let Some(list) = &remote_list {
            let marker = self.marker();
            if let Some(other) = list.iter().find(|r| {
                r.name.eq_ignore_ascii_case(&runner.name)
                    && !r.labels.iter().any(|l| l.eq_ignore_ascii_case(&marker))
            }) {
                return Err(RunnerError::NameCollision {
                    runner: runner.name.clone(),
                    id: other.id,
                    marker,
                });
            }
        }
        // A listener still running from the old registration would find it deleted and wipe the
        // new one's files: stop it first (`install_and_start` starts the new one).
        self.stop(runner)?;
        let version = self.lay_out(runner, &run_as).await?;
        self.configure(runner, &run_as, &labels).await?;
        let id = LocalRegistration::read(&runner.dir)
            .map(|l| l.id)
            .unwrap_or_default();
        self.write_record(&Record {
            name: runner.name.clone(),
            dir: runner.dir.clone(),
            user: runner.user.clone(),
            version: version.clone(),
            service: runner.service.as_str().to_owned(),
            labels: labels.clone(),
        })?;
        log::info!("registered runner `{}` (id {id})", runner.name);
        self.install_and_start(runner)?;
        Ok(Registered::Registered { id, version })
    }

    /// A runner with a local registration: `Some` when it stays (labels fixed in place), `None`
    /// when it must be registered again (GitHub forgot it, or it is another runner's).
    async fn existing(
        &self,
        runner: &Runner,
        local: &LocalRegistration,
        labels: &[String],
        remote_list: Option<&[RemoteRunner]>,
        run_as: &RunAs,
    ) -> Result<Option<Registered>, RunnerError> {
        let same = local.name == runner.name
            && local.github_url.trim_end_matches('/')
                == self.config.github.url.as_str().trim_end_matches('/');
        if !same {
            log::warn!(
                "`{}` holds the registration of `{}` at `{}`, not this runner's: configuring it again",
                runner.dir.display(),
                local.name,
                local.github_url
            );
            self.drop_local(runner, run_as).await;
            return Ok(None);
        }
        let Some(list) = remote_list else {
            self.adopt(runner, labels)?;
            let recorded = self.record(&runner.name).map(|r| r.labels);
            if recorded.is_some_and(|recorded| !same_labels(&recorded, labels)) {
                log::warn!(
                    "the labels of runner `{}` changed in the configuration, but {}",
                    runner.name,
                    self.remote.no_rest_reason().unwrap_or_default()
                );
            }
            return Ok(Some(Registered::Unchanged { id: local.id }));
        };
        let Some(remote) = list.iter().find(|r| r.id == local.id) else {
            log::warn!(
                "GitHub no longer knows runner `{}` (id {}): registering it again",
                runner.name,
                local.id
            );
            self.drop_local(runner, run_as).await;
            return Ok(None);
        };
        if same_labels(&remote.custom_labels, labels) {
            self.adopt(runner, labels)?;
            return Ok(Some(Registered::Unchanged { id: local.id }));
        }
        self.adopt(runner, &remote.custom_labels)?;
        self.remote.set_labels(local.id, labels).await?;
        if let Some(mut record) = self.record(&runner.name) {
            record.labels = labels.to_vec();
            self.write_record(&record)?;
        }
        log::info!(
            "runner `{}`: labels set to {} in place",
            runner.name,
            labels.join(",")
        );
        Ok(Some(Registered::LabelsUpdated {
            id: local.id,
            labels: labels.to_vec(),
        }))
    }

    /// Record a registration the agent has no record of: `config.sh` registered it, then the
    /// agent died before writing its record (`kill -9`, power cut). Without it the daemon would
    /// see unknown labels on every pass.
    fn adopt(&self, runner: &Runner, labels: &[String]) -> Result<(), RunnerError> {
        if self.record(&runner.name).is_some() {
            return Ok(());
        }
        let version = match &runner.version {
            crate::config::VersionReq::Pinned(version) => version.to_string(),
            crate::config::VersionReq::Latest => "unknown".to_owned(),
        };
        log::info!(
            "runner `{}` is registered but the agent has no record of it (interrupted registration): recording it",
            runner.name
        );
        self.write_record(&Record {
            name: runner.name.clone(),
            dir: runner.dir.clone(),
            user: runner.user.clone(),
            version,
            service: runner.service.as_str().to_owned(),
            labels: labels.to_vec(),
        })
    }

    /// `<root>/<name>` from the cached release, unless it already holds a runner.
    async fn lay_out(&self, runner: &Runner, run_as: &RunAs) -> Result<String, RunnerError> {
        if runner.dir.join("config.sh").exists() {
            if let Some(record) = self.record(&runner.name) {
                return Ok(record.version);
            }
        }
        let mut request = FetchRequest::from_config(self.config, Some(runner)).map_err(|e| {
            RunnerError::Release {
                dir: runner.dir.clone(),
                source: Box::new(e),
            }
        })?;
        request.progress = self.options.progress;
        if let Some(parent) = runner.dir.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let owner = Some((Uid::from_raw(run_as.uid), Gid::from_raw(run_as.gid)));
        let cached = release::fetch_and_install(&request, &runner.dir, owner)
            .await
            .map_err(|e| RunnerError::Release {
                dir: runner.dir.clone(),
                source: Box::new(e),
            })?;
        Ok(cached.version.to_string())
    }

    async fn configure(
        &self,
        runner: &Runner,
        run_as: &RunAs,
        labels: &[String],
    ) -> Result<(), RunnerError> {
        if runner.ephemeral == Ephemeral::Jit {
            log::warn!(
                "runner `{}` is a JIT runner: it is configured per job by the daemon; registering it as an ephemeral runner",
                runner.name
            );
        }
        let url = self.config.github.url.to_string();
        let url = url.trim_end_matches('/');
        let attempts = self.options.attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Fresh for every attempt: a token minted before a retry may be near its end.
            let token = self.remote.registration_token().await?;
            let inputs = configure::Inputs {
                url,
                token: &token.value,
                name: &runner.name,
                labels,
                work: &runner.work_dir,
                group: runner.group.as_deref(),
                ephemeral: runner.ephemeral != Ephemeral::No,
                disable_update: runner.disable_update,
            };
            let failure = match configure::configure(&runner.dir, run_as, &inputs).await {
                Ok(()) => return Ok(()),
                Err(failure) => failure,
            };
            // Never leave a half-registered runner behind.
            self.drop_local(runner, run_as).await;
            if self.remote.has_rest() {
                self.delete_remote_named(runner).await;
            } else if failure.output().contains("successfully added")
                || failure.output().contains("successfully replaced")
            {
                log::warn!(
                    "GitHub may keep the registration of `{}` that failed half-way; the next `agentctl register` replaces it ({})",
                    runner.name,
                    self.remote.no_rest_reason().unwrap_or_default()
                );
            }
            match failure {
                configure::Failure::TokenRefused { output } => {
                    return Err(match &self.remote {
                        Remote::RawToken { file } => RunnerError::TokenExpired {
                            file: file.resolved.clone(),
                            expiry: token
                                .expires_at
                                .unwrap_or_else(|| "an unknown time".to_owned()),
                        },
                        Remote::Rest { .. } => RunnerError::TokenRefused {
                            runner: runner.name.clone(),
                            output,
                        },
                    })
                }
                configure::Failure::Transient { output } if attempt < attempts => {
                    log::warn!(
                        "configuring runner `{}` failed (attempt {attempt} of {attempts}), retrying: {output}",
                        runner.name
                    );
                    tokio::time::sleep(self.options.backoff * attempt).await;
                }
                other => {
                    return Err(RunnerError::Configure {
                        runner: runner.name.clone(),
                        attempts: attempt,
                        output: other.output().to_owned(),
                    })
                }
            }
        }
    }

    /// Delete the local registration files (`config.sh remove --local`, or by hand).
    async fn drop_local(&self, runner: &Runner, run_as: &RunAs) {
        if runner.dir.join("config.sh").exists() {
            if let Err(failure) = configure::remove(&runner.dir, run_as, None).await {
                log::debug!("`config.sh remove --local` failed: {}", failure.output());
            }
        }
        for file in [
            ".runner",
            ".runner_migrated",
            ".credentials",
            ".credentials_migrated",
            ".credentials_rsaparams",
        ] {
            let _ = fs::remove_file(runner.dir.join(file));
        }
    }

    /// Delete every GitHub registration named like `runner` that carries this host's marker
    /// (a registration a failed configure made). Best effort: logged, not returned.
    async fn delete_remote_named(&self, runner: &Runner) {
        let marker = self.marker();
        let Ok(Some(list)) = self.remote.runners().await else {
            return;
        };
        for remote in list.iter().filter(|r| {
            r.name.eq_ignore_ascii_case(&runner.name)
                && r.labels.iter().any(|l| l.eq_ignore_ascii_case(&marker))
        }) {
            match self.remote.delete_runner(remote.id).await {
                Ok(()) => log::info!(
                    "deleted the half-registered runner `{}` (id {}) on GitHub",
                    remote.name,
                    remote.id
                ),
                Err(err) => log::warn!("cannot delete runner {} on GitHub: {err}", remote.id),
            }
        }
    }

    fn install_and_start(&self, runner: &Runner) -> Result<(), RunnerError> {
        let backend = self.backend(runner)?;
        let unit = self.unit(runner)?;
        let service_err = |source| RunnerError::Service {
            runner: runner.name.clone(),
            source,
        };
        backend.install(&unit).map_err(service_err)?;
        backend.start(&unit).map_err(service_err)
    }

    pub fn start(&self, runner: &Runner) -> Result<(), RunnerError> {
        if LocalRegistration::read(&runner.dir).is_none() {
            return Err(RunnerError::NotRegistered {
                runner: runner.name.clone(),
            });
        }
        let unit = self.unit(runner)?;
        self.backend(runner)?
            .start(&unit)
            .map_err(|source| RunnerError::Service {
                runner: runner.name.clone(),
                source,
            })
    }

    pub fn stop(&self, runner: &Runner) -> Result<(), RunnerError> {
        let unit = self.unit(runner)?;
        self.backend(runner)?
            .stop(&unit)
            .map_err(|source| RunnerError::Service {
                runner: runner.name.clone(),
                source,
            })
    }

    pub fn log_source(&self, runner: &Runner) -> Result<service::LogSource, RunnerError> {
        let unit = self.unit(runner)?;
        Ok(self.backend(runner)?.log_source(&unit))
    }

    /// Stop, uninstall, deregister (with a fresh remove token) and delete the runner directory.
    pub async fn remove(&self, runner: &Runner) -> Result<(), RunnerError> {
        let run_as = run_as(&runner.user)?;
        if let Ok(unit) = self.unit(runner) {
            self.backend(runner)?
                .uninstall(&unit)
                .map_err(|source| RunnerError::Service {
                    runner: runner.name.clone(),
                    source,
                })?;
        }
        self.deregister(&runner.name, &runner.dir, &run_as).await?;
        self.forget(&runner.name, &runner.dir)
    }

    async fn deregister(&self, name: &str, dir: &Path, run_as: &RunAs) -> Result<(), RunnerError> {
        let local = LocalRegistration::read(dir);
        if let Some(local) = &local {
            match self.remote.remove_token().await? {
                Some(token) if dir.join("config.sh").exists() => {
                    if let Err(failure) =
                        configure::remove(dir, run_as, Some(&token.value)).await
                    {
                        // GitHub may have forgotten it, or the runner files are broken: the
                        // REST delete below settles it.
                        log::warn!("`config.sh remove` of `{name}` failed: {}", failure.output());
                    }
                }
                Some(_) => {}
                None => log::warn!(
                    "runner `{name}` (id {}) stays registered on GitHub until it is deleted there (GitHub drops offline runners after 14 days): {}",
                    local.id,
                    self.remote.no_rest_reason().unwrap_or_default()
                ),
            }
        }
        if let Some(list) = self.remote.runners().await? {
            let marker = self.marker();
            for remote in list.iter().filter(|r| {
                (local.as_ref().is_some_and(|l| l.id == r.id) || r.name.eq_ignore_ascii_case(name))
                    && r.labels.iter().any(|l| l.eq_ignore_ascii_case(&marker))
            }) {
                self.remote.delete_runner(remote.id).await?;
            }
        }
        Ok(())
    }

    /// Delete the runner directory and the agent's records of it. The record (`<name>.json`)
    /// goes last: until then a removal cut short (a crash, a power loss) is found again and
    /// finished by the next `purge` or daemon pass, and once it is gone nothing of the runner
    /// is left, so a reader that sees no record sees the removal done.
    fn forget(&self, name: &str, dir: &Path) -> Result<(), RunnerError> {
        let _ = fs::remove_file(self.runners_dir().join(format!("{name}.pid")));
        let _ = fs::remove_file(self.env_path(name));
        let _ = fs::remove_dir_all(self.runners_dir().join(format!("{name}.hooks")));
        match fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_err(dir)(err)),
        }
        let record = self.record_path(name);
        match fs::remove_file(&record) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_err(&record)(err)),
        }
        log::info!("removed runner `{name}`");
        Ok(())
    }

    /// Remove every configured runner, then every runner of this host's that is no longer
    /// configured: recorded directories, and GitHub registrations with this host's marker.
    pub async fn purge(&self) -> Result<(), RunnerError> {
        for runner in &self.config.runners {
            self.remove(runner).await?;
        }
        if let Ok(entries) = fs::read_dir(self.runners_dir()) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_none_or(|e| e != "json") {
                    continue;
                }
                let Some(record) = fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| serde_json::from_str::<Record>(&t).ok())
                else {
                    continue;
                };
                log::info!("purging runner `{}`, no longer configured", record.name);
                let pid_holder = service::Process::new(&self.config.agent.state_dir);
                if let Ok(run_as) = run_as(&record.user) {
                    let unit = Unit {
                        name: record.name.clone(),
                        dir: record.dir.clone(),
                        run_as: run_as.clone(),
                        env: BTreeMap::new(),
                        env_file: None,
                        extra_groups: Vec::new(),
                    };
                    let backend: Option<&dyn Backend> = match record.service.as_str() {
                        "process" => Some(&pid_holder),
                        other => self.backends.get(other).map(|b| b.as_ref()),
                    };
                    if let Some(backend) = backend {
                        if let Err(err) = backend.uninstall(&unit) {
                            log::warn!("cannot uninstall `{}`: {err}", record.name);
                        }
                    }
                    self.deregister(&record.name, &record.dir, &run_as).await?;
                }
                self.forget(&record.name, &record.dir)?;
            }
        }
        if let Some(list) = self.remote.runners().await? {
            let marker = self.marker();
            for remote in list
                .iter()
                .filter(|r| r.labels.iter().any(|l| l.eq_ignore_ascii_case(&marker)))
            {
                log::info!(
                    "deleting runner `{}` (id {}) of this host on GitHub",
                    remote.name,
                    remote.id
                );
                self.remote.delete_runner(remote.id).await?;
            }
        }
        Ok(())
    }

    /// A board runner's board as it is now: its devices resolved again, its last probe's health.
    fn board_summary(&self, runner: &Runner) -> Option<crate::boards::state::BoardSummary> {
        let board = self.config.board(runner.board.as_deref()?)?;
        let roots = &self.options.roots;
        let mut state = crate::boards::state::load(&self.config.agent.state_dir, &board.name)
            .unwrap_or_else(|_| crate::boards::state::BoardState::unknown(&board.name));
        state.console = board
            .console
            .as_ref()
            .map(|console| crate::boards::identity::resolve(&console.identity, &board.name, roots));
        state.relay = match &board.power {
            Some(crate::config::Power::ModbusRtu { device, .. }) => {
                Some(crate::boards::identity::resolve(device, &board.name, roots))
            }
            _ => None,
        };
        Some(crate::boards::state::BoardSummary::of(&state))
    }

    /// Local and GitHub views of the runners.
    pub async fn status(&self, runners: &[&Runner]) -> Result<Vec<RunnerStatus>, RunnerError> {
        // GitHub refusing (revoked credentials, an outage) must not hide the local view.
        let (remote_list, remote_error) = match self.remote.runners().await {
            Ok(list) => (list, None),
            Err(err) => (
                None,
                Some(crate::redact::redact(&error_text(&err)).into_owned()),
            ),
        };
        let mut out = Vec::new();
        for runner in runners {
            let local = LocalRegistration::read(&runner.dir);
            let service =
                match self.unit(runner) {
                    Ok(unit) => self.backend(runner)?.status(&unit).map_err(|source| {
                        RunnerError::Service {
                            runner: runner.name.clone(),
                            source,
                        }
                    })?,
                    Err(_) => ServiceStatus {
                        backend: runner.service.as_str(),
                        state: "unknown".to_owned(),
                        pid: None,
                        unit: None,
                    },
                };
            let (github, github_note) = match &remote_list {
                None if remote_error.is_some() => (
                    None,
                    remote_error
                        .as_ref()
                        .map(|e| format!("cannot read GitHub's runner list: {e}")),
                ),
                None => (None, self.remote.no_rest_reason()),
                Some(list) => {
                    let found = list
                        .iter()
                        .find(|r| local.as_ref().is_some_and(|l| l.id == r.id))
                        .or_else(|| {
                            list.iter()
                                .find(|r| r.name.eq_ignore_ascii_case(&runner.name))
                        })
                        .cloned();
                    let note = found
                        .is_none()
                        .then(|| "not registered on GitHub".to_owned());
                    (found, note)
                }
            };
            out.push(RunnerStatus {
                name: runner.name.clone(),
                local: LocalView {
                    dir: runner.dir.clone(),
                    exists: runner.dir.is_dir(),
                    registered: local.is_some(),
                    id: local.map(|l| l.id),
                    version: self.record(&runner.name).map(|r| r.version),
                    service,
                },
                github,
                github_note,
                board: self.board_summary(runner),
            });
        }
        Ok(out)
    }
}

/// An error and its causes on one line.
fn error_text(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn same_labels(a: &[String], b: &[String]) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|x| b.iter().any(|y| y.eq_ignore_ascii_case(x)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_label_is_lower_case_and_label_safe() {
        assert_eq!(owner_label("Lab-KVM-01.example"), "host-lab-kvm-01.example");
        assert_eq!(owner_label("a b,c"), "host-a-b-c");
    }

    #[test]
    fn local_registration_reads_the_bom_and_any_case() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(".runner"),
            b"\xEF\xBB\xBF{\n  \"AgentId\": 7,\n  \"agentName\": \"r1\",\n  \"poolName\": \"Default\",\n  \"gitHubUrl\": \"https://github.com/o/r\"\n}",
        )
        .unwrap();
        assert_eq!(
            LocalRegistration::read(dir.path()),
            Some(LocalRegistration {
                id: 7,
                name: "r1".to_owned(),
                github_url: "https://github.com/o/r".to_owned(),
                pool: "Default".to_owned(),
            })
        );
    }

    fn config(dir: &Path, host_kvm: &str) -> Config {
        let token = dir.join("token");
        fs::write(&token, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).unwrap();
        let path = dir.join("agent.toml");
        fs::write(
            &path,
            format!(
                "version = 1\n[github]\nurl = \"https://github.com/o/r\"\nregistration_token_file = \"token\"\n\
                 [host]\n{host_kvm}\n[defaults]\nlabels = [\"lab\", \"KVM\"]\n\
                 [[runner]]\nname = \"plain\"\n\
                 [[runner]]\nname = \"board-runner\"\nboard = \"roc-1\"\n\
                 [[board]]\nname = \"roc-1\"\nlabels = [\"rk3568\", \"lab\"]\n"
            ),
        )
        .unwrap();
        crate::config::load_with(&path, &crate::config::LoadOptions::default()).unwrap()
    }

    #[test]
    fn labels_are_configured_then_derived_then_the_marker_without_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), "");
        let plain = config.runner("plain").unwrap();
        let board = config.runner("board-runner").unwrap();
        assert_eq!(
            desired_labels(&config, plain, "Lab1", true),
            ["lab", "KVM", "host-lab1"]
        );
        assert_eq!(
            desired_labels(&config, board, "lab1", false),
            ["lab", "KVM", "roc-1", "rk3568", "host-lab1"]
        );
        let config = crate::runner::tests::config(dir.path(), "kvm = false");
        let plain = config.runner("plain").unwrap();
        // `kvm` comes from the configuration here, never derived on a host that says no.
        assert_eq!(
            desired_labels(&config, plain, "lab1", true),
            ["lab", "KVM", "host-lab1"]
        );
    }

    #[test]
    fn kvm_is_usable_by_owner_group_or_others_bits() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("kvm");
        fs::write(&node, "").unwrap();
        let me = RunAs {
            user: "u".to_owned(),
            uid: 4000,
            gid: 4000,
            groups: vec![4000, 0],
            home: PathBuf::from("/"),
        };
        // root:root (the test runs as root), 0660: usable through group 0.
        fs::set_permissions(&node, fs::Permissions::from_mode(0o660)).unwrap();
        assert!(kvm_usable(&me, &node));
        fs::set_permissions(&node, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(!kvm_usable(&me, &node));
        fs::set_permissions(&node, fs::Permissions::from_mode(0o666)).unwrap();
        let stranger = RunAs {
            groups: vec![4000],
            ..me
        };
        assert!(kvm_usable(&stranger, &node));
        assert!(!kvm_usable(&stranger, &dir.path().join("missing")));
    }

    #[test]
    fn labels_compare_without_case_or_order() {
        let a = vec!["kvm".to_owned(), "Host-x".to_owned()];
        let b = vec!["host-X".to_owned(), "KVM".to_owned()];
        assert!(same_labels(&a, &b));
        assert!(!same_labels(&a, &b[..1]));
    }
}
