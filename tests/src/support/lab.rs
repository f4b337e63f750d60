//! The lab the agent's integration tests run in: the GitHub emulator with a repository (or an
//! organization), the fake runner release published on it, a secret file, an `agent.toml` for
//! process runners as `ra-runner`, and `agentctl` (daemon or one-shot commands) run against it.
//!
//! ```ignore
//! let mut lab = Lab::builder().count(2).start().await;
//! lab.start_daemon();
//! lab.wait_online(&lab.names(2)).await;
//! lab.assert_no_secret_in_log();
//! ```
//!
//! Dropping a [`Lab`] kills what it started: the `agentctl` it spawned, every runner's process
//! group (runners outlive the daemon by design), a tmpfs cache it mounted.

// A test harness: failing loudly at the first thing that does not work is its whole point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsString;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::emulator::{
    generate_app_key, AssetSource, Emulator, EmulatorOptions, HoldRelease, InstallationSpec,
    JobView, PatSpec, ReleaseOptions, RunnerView,
};
use crate::fake_runner::{build_release, listener_binary, ReleaseSpec};
use crate::support::{agentctl, publish_fake_release};

/// The repository runners register to, unless the builder names another scope.
pub const REPO: &str = "octo/hello";
/// The runner version the configuration asks for, published when the lab starts.
pub const VERSION: &str = "2.336.0";
/// The host name `agentctl` runs as (`RUNNER_AGENT_HOSTNAME`), unless the builder names another.
pub const HOST: &str = "labhost";

/// How `agentctl` authenticates to the emulator.
#[derive(Debug, Clone)]
pub enum Auth {
    /// `pat_file = "github-pat"`: a PAT of this spec.
    Pat(PatSpec),
    /// `app = { ... private_key_file = "github-app.pem" }`: an App installed on `octo` (id 42)
    /// with `administration: write`.
    App,
    /// `registration_token_file = "registration-token"`: a token minted for the scope.
    RegistrationToken,
}

/// What `agent.toml` says; [`Config::render`] writes it in the one layout every test knows
/// (tests edit it with `str::replace` on lines such as `count = 2`, `pat_file = "github-pat"`,
/// `version = "2.336.0"` or `labels = ["lab"]`).
#[derive(Debug, Clone)]
pub struct Config {
    /// The credential line(s) of `[github]`.
    pub auth: String,
    /// `[host] kvm`.
    pub kvm: bool,
    /// Tables between `[host]` and `[defaults]` (`[container]`, `[daemon]`).
    pub sections: String,
    /// `[defaults] service`.
    pub service: String,
    /// `[defaults] labels`; `None` leaves the line out.
    pub labels: Option<Vec<String>>,
    /// More lines of `[defaults]`.
    pub defaults: String,
    /// The `[[runner]]` (and `[[board]]`) tables at the end.
    pub runners: String,
}

impl Config {
    /// The configuration text for a lab in `root` against the emulator at `url`.
    pub fn render(&self, root: &Path, url: &str) -> String {
        let root = root.display();
        let labels = match &self.labels {
            Some(labels) => {
                let quoted: Vec<String> = labels.iter().map(|l| format!("\"{l}\"")).collect();
                format!("labels = [{}]\n", quoted.join(", "))
            }
            None => String::new(),
        };
        let sections = if self.sections.is_empty() {
            String::new()
        } else {
            format!("\n{}\n", self.sections.trim_end())
        };
        format!(
            r#"version = 1

[agent]
cache_dir = "{root}/cache"
state_dir = "{root}/state"

[github]
url = "{url}"
{auth}

[host]
kvm = {kvm}
{sections}
[defaults]
user = "ra-runner"
root = "{root}/runners"
version = "{VERSION}"
service = "{service}"
{labels}{defaults}

{runners}"#,
            auth = self.auth,
            kvm = self.kvm,
            service = self.service,
            defaults = self.defaults,
            runners = self.runners,
        )
    }
}

/// The `[[runner]]` table of `count` runners named `{hostname}-{index}`.
pub fn counted(count: u32) -> String {
    format!("[[runner]]\nname_template = \"{{hostname}}-{{index}}\"\ncount = {count}\n")
}

/// How a [`Lab`] is set up; [`LabBuilder::start`] makes it.
#[derive(Debug, Clone)]
pub struct LabBuilder {
    emulator: EmulatorOptions,
    org: Option<String>,
    auth: Auth,
    release_env: Option<String>,
    config: Config,
    host: String,
    env: Vec<(OsString, Option<OsString>)>,
    daemon_flags: Vec<String>,
    log_name: String,
    wait: Duration,
    cache_tmpfs: Option<u64>,
    process_group: bool,
}

impl Default for LabBuilder {
    fn default() -> Self {
        LabBuilder {
            emulator: EmulatorOptions {
                long_poll: Duration::from_secs(1),
                ..EmulatorOptions::default()
            },
            org: None,
            auth: Auth::Pat(PatSpec::classic(&["repo"])),
            release_env: None,
            config: Config {
                auth: String::new(),
                kvm: false,
                sections: String::new(),
                service: "process".to_owned(),
                labels: Some(vec!["lab".to_owned()]),
                defaults: String::new(),
                runners: String::new(),
            },
            host: HOST.to_owned(),
            env: Vec::new(),
            daemon_flags: ["--resync-secs", "2", "--check-secs", "1"]
                .map(str::to_owned)
                .to_vec(),
            log_name: "daemon.log".to_owned(),
            wait: Duration::from_secs(30),
            cache_tmpfs: None,
            process_group: false,
        }
    }
}

impl LabBuilder {
    /// The emulator's options (default: a 1 s long poll).
    pub fn emulator(mut self, options: EmulatorOptions) -> Self {
        self.emulator = options;
        self
    }

    /// Runners register to organization `org` (created empty) instead of repository `octo/hello`.
    pub fn org(mut self, org: &str) -> Self {
        self.org = Some(org.to_owned());
        self
    }

    /// How `agentctl` authenticates (default: a classic PAT with `repo`).
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// A classic PAT with `scopes`.
    pub fn pat(self, scopes: &[&str]) -> Self {
        self.auth(Auth::Pat(PatSpec::classic(scopes)))
    }

    /// Publish the release with this `.env` at its root (the fake runner's knobs), built once
    /// per listener build and shared by the test processes.
    pub fn release_env(mut self, env: &str) -> Self {
        self.release_env = Some(env.to_owned());
        self
    }

    /// The `[[runner]]` (and `[[board]]`) tables at the end of the configuration.
    pub fn runners(mut self, tables: &str) -> Self {
        self.config.runners = tables.to_owned();
        self
    }

    /// One `[[runner]]` table of `count` runners named `{hostname}-{index}`, then `extra`.
    pub fn count(self, count: u32, extra: &str) -> Self {
        let tables = format!("{}{extra}", counted(count));
        self.runners(&tables)
    }

    /// More lines of `[defaults]`.
    pub fn defaults(mut self, lines: &str) -> Self {
        self.config.defaults = lines.to_owned();
        self
    }

    /// `[defaults] labels` (`None`: no labels line; default `["lab"]`).
    pub fn labels(mut self, labels: Option<&[&str]>) -> Self {
        self.config.labels = labels.map(|l| l.iter().map(|s| (*s).to_owned()).collect());
        self
    }

    /// `[defaults] service` (default `process`).
    pub fn service(mut self, service: &str) -> Self {
        self.config.service = service.to_owned();
        self
    }

    /// `[host] kvm` (default false).
    pub fn kvm(mut self, kvm: bool) -> Self {
        self.config.kvm = kvm;
        self
    }

    /// Tables between `[host]` and `[defaults]`, such as `[container]`.
    pub fn sections(mut self, tables: &str) -> Self {
        self.config.sections = tables.to_owned();
        self
    }

    /// The host name `agentctl` runs as (default `labhost`).
    pub fn host(mut self, host: &str) -> Self {
        self.host = host.to_owned();
        self
    }

    /// Set `key` in every `agentctl`'s environment.
    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), Some(value.into())));
        self
    }

    /// Remove `key` from every `agentctl`'s environment.
    pub fn env_remove(mut self, key: &str) -> Self {
        self.env.push((key.into(), None));
        self
    }

    /// The flags [`Lab::start_daemon`] gives `agentctl daemon` (default
    /// `--resync-secs 2 --check-secs 1`).
    pub fn daemon_flags(mut self, flags: &[&str]) -> Self {
        self.daemon_flags = flags.iter().map(|f| (*f).to_owned()).collect();
        self
    }

    /// The spawned `agentctl`'s stderr file in the lab directory (default `daemon.log`).
    pub fn log_name(mut self, name: &str) -> Self {
        self.log_name = name.to_owned();
        self
    }

    /// How long the lab's waits wait (default 30 s).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Mount a tmpfs of `bytes` as the cache directory (root needed).
    pub fn cache_tmpfs(mut self, bytes: u64) -> Self {
        self.cache_tmpfs = Some(bytes);
        self
    }

    /// Spawn `agentctl` in its own process group (and kill the group when the lab drops), as
    /// systemd kills a unit's cgroup.
    pub fn process_group(mut self) -> Self {
        self.process_group = true;
        self
    }

    /// Start the emulator, publish the release, write the secret and the configuration.
    pub async fn start(self) -> Lab {
        let emu = Emulator::start(self.emulator.clone()).await.unwrap();
        let scope = match &self.org {
            Some(org) => {
                emu.create_org(org).unwrap();
                org.clone()
            }
            None => {
                emu.create_repo(REPO, false).unwrap();
                REPO.to_owned()
            }
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = dir.path().to_path_buf();
        match &self.release_env {
            Some(env) => publish_with_env(&emu, VERSION, env).await,
            None => {
                publish_fake_release(&emu, VERSION, &root.join("release"))
                    .await
                    .unwrap();
            }
        }
        let mut secrets = Vec::new();
        let mut pat = None;
        let mut app = None;
        let auth = match &self.auth {
            Auth::Pat(spec) => {
                let token = emu.add_pat(spec.clone());
                write_secret(&root.join("github-pat"), &token);
                secrets.push(token.clone());
                pat = Some(token);
                "pat_file = \"github-pat\"".to_owned()
            }
            Auth::App => {
                let key = generate_app_key().unwrap();
                let id = emu
                    .add_app(
                        &key.public_key_pem,
                        vec![InstallationSpec {
                            id: 42,
                            account: "octo".into(),
                            permissions: [("administration".to_owned(), "write".to_owned())]
                                .into_iter()
                                .collect(),
                        }],
                    )
                    .unwrap();
                write_secret(&root.join("github-app.pem"), &key.private_key_pem);
                secrets.extend(pem_lines(&key.private_key_pem));
                app = Some(id);
                format!(
                    "app = {{ app_id = {id}, installation_id = 42, private_key_file = \"github-app.pem\" }}"
                )
            }
            Auth::RegistrationToken => {
                let token = emu.registration_token(&scope).unwrap();
                write_secret(&root.join("registration-token"), &token);
                secrets.push(token);
                "registration_token_file = \"registration-token\"".to_owned()
            }
        };
        let cache_mount = self.cache_tmpfs.map(|size| {
            let mount = root.join("cache");
            std::fs::create_dir_all(&mount).unwrap();
            let status = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&mount)
                .status()
                .unwrap();
            assert!(status.success(), "cannot mount a tmpfs (root needed)");
            mount
        });
        let lab = Lab {
            config: root.join("agent.toml"),
            settings: Config {
                auth,
                ..self.config
            },
            emu,
            dir,
            scope,
            host: self.host,
            env: self.env,
            daemon_flags: self.daemon_flags,
            log_name: self.log_name,
            wait: self.wait,
            process_group: self.process_group,
            daemon: None,
            pat,
            app,
            secrets,
            cache_mount,
        };
        lab.write_config();
        lab
    }
}

/// A running lab; see the [module](self) documentation.
pub struct Lab {
    pub emu: Emulator,
    pub dir: tempfile::TempDir,
    /// `agent.toml`.
    pub config: PathBuf,
    /// What `agent.toml` says (as written by [`Lab::write_config`]).
    pub settings: Config,
    /// The scope runners register to (`octo/hello`, or an organization).
    pub scope: String,
    pub host: String,
    /// The spawned `agentctl` (daemon or one-shot), if any.
    pub daemon: Option<Child>,
    /// The PAT in `github-pat`, with [`Auth::Pat`].
    pub pat: Option<String>,
    /// The App's id, with [`Auth::App`].
    pub app: Option<u64>,
    /// Secrets that must never show in the log, besides the tokens the emulator minted (the
    /// PAT, the App key's lines, a registration token; tests add rotated ones).
    pub secrets: Vec<String>,
    /// The tmpfs mounted as the cache directory, if any.
    pub cache_mount: Option<PathBuf>,
    /// How long the lab's waits wait.
    pub wait: Duration,
    env: Vec<(OsString, Option<OsString>)>,
    daemon_flags: Vec<String>,
    log_name: String,
    process_group: bool,
}

impl Lab {
    /// The default lab set-up, to adjust before [`LabBuilder::start`].
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    /// The lab directory (`agent.toml`, secrets, `cache/`, `state/`, `runners/`).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `name` in the lab directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root().join(name)
    }

    /// Write `agent.toml` from [`Lab::settings`].
    pub fn write_config(&self) {
        self.write_config_with(|_| {});
    }

    /// Write `agent.toml` from [`Lab::settings`] changed by `change` (the settings are kept).
    pub fn write_config_with(&self, change: impl FnOnce(&mut Config)) {
        let mut config = self.settings.clone();
        change(&mut config);
        let text = config.render(self.root(), &self.emu.web_url_for(&self.scope));
        std::fs::write(&self.config, text).unwrap();
    }

    /// Replace every `from` in `agent.toml` with `to`, checking there was one.
    pub fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains(from), "no `{from}` in agent.toml:\n{text}");
        std::fs::write(&self.config, text.replace(from, to)).unwrap();
    }

    /// Set `key` in every later `agentctl`'s environment (a value naming a lab file).
    pub fn set_env(&mut self, key: &str, value: impl Into<OsString>) {
        self.env.push((key.into(), Some(value.into())));
    }

    /// `agentctl --config agent.toml <args>` on this lab's host.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_as(&self.host, args)
    }

    /// `agentctl --config agent.toml <args>` on a host called `host`.
    pub fn command_as(&self, host: &str, args: &[&str]) -> Command {
        let mut command = Command::new(agentctl());
        command
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("RUNNER_AGENT_HOSTNAME", host)
            .env_remove("CREDENTIALS_DIRECTORY");
        for (key, value) in &self.env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        command
    }

    /// Run `agentctl <args>` to its end.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Run `agentctl <args>`, asserting it exits 0.
    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "agentctl {args:?}: {}",
            text(&out)
        );
        out
    }

    /// The spawned `agentctl`'s stderr.
    pub fn log_path(&self) -> PathBuf {
        self.path(&self.log_name)
    }

    /// What the spawned `agentctl`s wrote to stderr so far (every start appends).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Spawn `command` (stdin and stdout null, stderr appended to the log) as the lab's child.
    pub fn spawn(&mut self, mut command: Command) {
        assert!(self.daemon.is_none(), "an agentctl is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if self.process_group {
            command.process_group(0);
        }
        self.daemon = Some(command.spawn().unwrap());
    }

    /// `agentctl daemon` with the builder's flags.
    pub fn start_daemon(&mut self) {
        self.start_daemon_with(&[]);
    }

    /// `agentctl daemon` with the builder's flags, then `extra`.
    pub fn start_daemon_with(&mut self, extra: &[&str]) {
        let mut args = vec!["daemon"];
        args.extend(self.daemon_flags.iter().map(String::as_str));
        args.extend_from_slice(extra);
        let command = self.command(&args);
        self.spawn(command);
    }

    /// `agentctl daemon <flags>`, without the builder's flags.
    pub fn start_daemon_exact(&mut self, flags: &[&str]) {
        let mut args = vec!["daemon"];
        args.extend_from_slice(flags);
        let command = self.command(&args);
        self.spawn(command);
    }

    /// The spawned `agentctl`'s pid.
    pub fn daemon_pid(&self) -> Pid {
        Pid::from_raw(self.daemon.as_ref().expect("agentctl running").id() as i32)
    }

    /// Send `signal` to the spawned `agentctl`.
    pub fn signal(&self, signal: Signal) {
        kill(self.daemon_pid(), signal).unwrap();
    }

    /// `kill -HUP` of the spawned `agentctl`.
    pub fn sighup(&self) {
        self.signal(Signal::SIGHUP);
    }

    /// `kill -9` of the spawned `agentctl`: with `group`, of its process group (its
    /// `config.sh` too; needs [`LabBuilder::process_group`]).
    pub fn kill_daemon(&mut self, group: bool) {
        let mut child = self.daemon.take().expect("agentctl running");
        let pid = child.id() as i32;
        let target = if group { -pid } else { pid };
        kill(Pid::from_raw(target), Signal::SIGKILL).unwrap();
        child.wait().unwrap();
    }

    /// Wait for the spawned `agentctl` to exit; its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let child = self.daemon.as_mut().expect("agentctl running");
        let deadline = Instant::now() + self.wait;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.daemon = None;
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "agentctl did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The names of `count` counted runners of this host.
    pub fn names(&self, count: u32) -> Vec<String> {
        (1..=count).map(|i| format!("{}-{i}", self.host)).collect()
    }

    /// Runner `name`'s directory.
    pub fn runner_dir(&self, name: &str) -> PathBuf {
        self.root().join("runners").join(name)
    }

    /// The pid the agent recorded for runner `name`.
    pub fn pid(&self, name: &str) -> Option<i32> {
        let path = self
            .root()
            .join("state/runners")
            .join(format!("{name}.pid"));
        let text = std::fs::read_to_string(path).ok()?;
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        value["pid"].as_i64().map(|p| p as i32)
    }

    /// Whether runner `name`'s recorded process is alive.
    pub fn alive(&self, name: &str) -> bool {
        self.pid(name)
            .is_some_and(|pid| kill(Pid::from_raw(pid), None).is_ok())
    }

    /// The id in runner `name`'s `.runner` file (UTF-8 with a BOM).
    pub fn local_id(&self, name: &str) -> Option<u64> {
        let raw = std::fs::read(self.runner_dir(name).join(".runner")).ok()?;
        let raw = raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&raw);
        let value: serde_json::Value = serde_json::from_slice(raw).ok()?;
        value["agentId"].as_u64()
    }

    /// `kill -9` of every recorded runner's process group, as a power cut does.
    pub fn kill_runners(&self) {
        let Ok(entries) = std::fs::read_dir(self.root().join("state/runners")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_suffix(".pid").and_then(|n| self.pid(n)) {
                let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
            }
        }
    }

    /// GitHub's runner list of the lab's scope.
    pub fn runners(&self) -> Vec<RunnerView> {
        self.emu.runners(Some(&self.scope))
    }

    /// Poll until `ok` holds, failing with `what` and the log at the deadline.
    pub async fn wait_until(&self, what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + self.wait;
        while !ok() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\nlog:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Poll GitHub's list until runner `name` is there and `pred` holds for it.
    pub async fn wait_runner(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&RunnerView) -> bool,
    ) -> RunnerView {
        let deadline = Instant::now() + self.wait;
        loop {
            let found = self.runners().into_iter().find(|r| r.name == name);
            if let Some(r) = &found {
                if pred(r) {
                    return r.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "runner {name} never {what}: {found:?}\nlog:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Poll GitHub's list until some runner satisfies `pred`.
    pub async fn wait_runner_any(
        &self,
        what: &str,
        pred: impl Fn(&RunnerView) -> bool,
    ) -> RunnerView {
        let deadline = Instant::now() + self.wait;
        loop {
            let runners = self.runners();
            if let Some(found) = runners.iter().find(|r| pred(r)) {
                return found.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no runner {what}: {runners:?}\nlog:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until every runner of `names` is online on GitHub; their views.
    pub async fn wait_online(&self, names: &[String]) -> Vec<RunnerView> {
        let mut views = Vec::new();
        for name in names {
            views.push(
                self.wait_runner(name, "online", |r| r.status == "online")
                    .await,
            );
        }
        views
    }

    /// `agentctl status --json`, asserting it exits 0.
    pub fn status_json(&self) -> serde_json::Value {
        let out = self.ok(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The daemon's view of runner `name` in a `status --json` answer.
    pub fn daemon_view(status: &serde_json::Value, name: &str) -> serde_json::Value {
        status["runners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| r["daemon"].clone())
            .unwrap_or_default()
    }

    /// Poll `agentctl status --json` until `pred` holds.
    pub async fn wait_status(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + self.wait;
        loop {
            let status = self.status_json();
            if pred(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "status never showed {what}: {status:#}\nlog:\n{}\nrunner logs:\n{}",
                self.log(),
                self.runner_logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the daemon wrote its state `secs` seconds or more after now (with a resync
    /// every `secs` or less: a whole pass ran since) and returns that `status --json`.
    pub async fn wait_state_written_after(&self, what: &str, secs: i64) -> serde_json::Value {
        let after = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
        self.wait_status(what, |s| {
            s["daemon"]["updated_at"]
                .as_str()
                .and_then(|t| {
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .is_some_and(|t| t >= after)
        })
        .await
    }

    /// Every runner's own output (the process backend's log).
    pub fn runner_logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.root().join("runners")) {
            for entry in entries.flatten() {
                let log = entry.path().join("_diag/agent-run.log");
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                out.push_str(&format!("--- {}\n{text}", log.display()));
            }
        }
        out
    }

    /// Wait for job `id` to complete.
    pub async fn wait_job(&self, id: u64) -> JobView {
        match self.emu.wait_job(id, self.wait).await {
            Ok(view) => view,
            Err(err) => panic!("job {id} did not complete: {err}\nlog:\n{}", self.log()),
        }
    }

    /// Queues a job for label `lab` on the lab's scope that runs `prelude`, signals it started
    /// (a file in `signals`, a directory made writable for the runner user) and runs until the
    /// test lets it end ([`Lab::let_job_finish`] with the "go" file); waits until it started.
    /// Returns the job id, the "started" file and the "go" file.
    pub async fn held_job_in(&self, signals: &Path, prelude: &str) -> (u64, PathBuf, PathBuf) {
        std::fs::create_dir_all(signals).unwrap();
        std::fs::set_permissions(signals, std::fs::Permissions::from_mode(0o777)).unwrap();
        let started = signals.join("started");
        let go = signals.join("go");
        let job = self
            .emu
            .queue_job(
                &self.scope,
                &["lab"],
                &format!(
                    "{prelude}touch {}; while [ ! -e {} ]; do sleep 0.1; done; echo done",
                    started.display(),
                    go.display()
                ),
            )
            .unwrap();
        self.wait_until("the job started", || started.exists())
            .await;
        (job, started, go)
    }

    /// Lets a held job go on (`go`: the file its step waits for) and waits until it succeeded
    /// (finished on its own, not cancelled by a restart).
    pub async fn let_job_finish(&self, id: u64, go: &Path) -> JobView {
        std::fs::write(go, "").unwrap();
        let done = self.wait_job(id).await;
        assert_eq!(done.result.as_deref(), Some("succeeded"), "{done:?}");
        done
    }

    /// Waits until runner `name` is online at `version` under registration `id`, upgraded in
    /// place: the same registration, `bin` a link to `bin.<version>` as the real self-update
    /// leaves it.
    pub async fn wait_upgraded_in_place(&self, name: &str, id: u64, version: &str) {
        let upgraded = self
            .wait_runner(name, "upgraded", |r| {
                r.version == version && r.status == "online"
            })
            .await;
        assert_eq!(upgraded.id, id, "registered again instead of upgraded");
        let link = std::fs::read_link(self.runner_dir(name).join("bin")).unwrap();
        assert_eq!(link, PathBuf::from(format!("bin.{version}")));
    }

    /// Queue a job for `labels` running `script` on the lab's scope and wait for it.
    pub async fn run_job(&self, labels: &[&str], script: &str) -> JobView {
        let id = self.emu.queue_job(&self.scope, labels, script).unwrap();
        self.wait_job(id).await
    }

    /// How many requests the emulator answered on routes containing `route_part`.
    pub fn requests(&self, route_part: &str) -> u64 {
        self.emu
            .request_counts()
            .iter()
            .filter(|(route, _)| route.contains(route_part))
            .map(|(_, c)| c.count)
            .sum()
    }

    /// No secret in the log: no token the emulator minted, none of [`Lab::secrets`] (those of
    /// 16 bytes or more), no private key.
    pub fn assert_no_secret_in_log(&self) {
        let log = self.log();
        let mut secrets = self.emu.minted_tokens();
        secrets.extend(self.secrets.iter().cloned());
        for secret in secrets.iter().filter(|s| s.len() >= 16) {
            assert!(
                !log.contains(secret.as_str()),
                "a secret is in the daemon's log:\n{log}"
            );
        }
        assert!(!log.contains("PRIVATE KEY"), "{log}");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(child) = &mut self.daemon {
            if self.process_group {
                let _ = kill(Pid::from_raw(-(child.id() as i32)), Signal::SIGKILL);
            } else {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        self.emu.release_held(HoldRelease::Drop);
        // The runners outlive the daemon by design: end their sessions.
        self.kill_runners();
        if let Some(mount) = &self.cache_mount {
            let _ = Command::new("umount").arg("-l").arg(mount).status();
        }
    }
}

/// A command's stdout and stderr, for failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Write a secret file (mode 0600) the way secret managers do: a new file renamed over the old.
pub fn write_secret(path: &Path, value: &str) {
    let staging = path.with_extension("new");
    std::fs::write(&staging, value).unwrap();
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

/// The base64 lines of a PEM key: any of them in a log is a leak.
pub fn pem_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 32)
        .map(str::to_owned)
        .collect()
}

/// Rewrite a release tarball with `.env` added at its root.
fn add_env(tarball: &Path, env: &str) {
    let mut raw = Vec::new();
    std::fs::File::open(tarball)
        .unwrap()
        .read_to_end(&mut raw)
        .unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&raw[..]));
    let out = std::fs::File::create(tarball).unwrap();
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        out,
        flate2::Compression::fast(),
    ));
    let mut dot = false;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        dot |= path.starts_with("./");
        let mut header = entry.header().clone();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        builder.append_data(&mut header, &path, &data[..]).unwrap();
    }
    let mut header = tar::Header::new_gnu();
    header.set_size(env.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    let name = if dot { "./.env" } else { ".env" };
    builder
        .append_data(&mut header, name, env.as_bytes())
        .unwrap();
    builder.into_inner().unwrap().finish().unwrap();
}

/// Build the fake release `version` with `env` as its `.env` once per listener build and
/// `env` (shared by the test processes: building and repacking it takes seconds), and publish
/// it on `emu` with an asset digest and the release-body checksum markers.
pub async fn publish_with_env(emu: &Emulator, version: &str, env: &str) {
    let listener = listener_binary();
    let meta = std::fs::metadata(&listener).unwrap();
    let stamp = meta
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(env, &mut hasher);
    let shared = std::env::temp_dir().join(format!(
        "runner-agent-faults-{version}-{stamp}-{}-{:x}",
        meta.len(),
        std::hash::Hasher::finish(&hasher)
    ));
    let tarball = shared.join(format!("actions-runner-linux-x64-{version}.tar.gz"));
    if !tarball.is_file() {
        let staging = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let built = build_release(
            &ReleaseSpec {
                version: version.into(),
                arch: "x64".into(),
                listener,
                pad_bytes: 0,
                pad_files: 0,
            },
            staging.path(),
        )
        .unwrap();
        add_env(&built.path, env);
        // Another test process may have won the race: then its copy is used.
        let _ = std::fs::rename(staging.path(), &shared);
    }
    emu.publish_release(
        version,
        vec![("linux-x64".to_owned(), AssetSource::Path(tarball))],
        ReleaseOptions {
            digest: true,
            body_markers: true,
        },
    )
    .await
    .unwrap();
}

/// `Deref` and `DerefMut` from a test file's own lab type to the shared [`Lab`] it holds in
/// `field`, so the file's tests call the shared methods as their own:
/// `runner_agent_tests::deref_lab!(Lab.lab);` (or `(Lab.0)` for a tuple struct).
#[macro_export]
macro_rules! deref_lab {
    ($ty:ident . $field:tt) => {
        impl ::std::ops::Deref for $ty {
            type Target = $crate::support::lab::Lab;
            fn deref(&self) -> &Self::Target {
                &self.$field
            }
        }

        impl ::std::ops::DerefMut for $ty {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.$field
            }
        }
    };
}
