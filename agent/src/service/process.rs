//! The `process` backend: `run.sh` as a detached child under the runner user.
//!
//! On a host run by systemd, a child of the packaged `runner-agent.service` would share its
//! cgroup, and `systemctl stop|restart runner-agent` (which every package upgrade runs) would
//! kill the runners and their jobs with it. So there, when run as root, `run.sh` is started in a
//! transient scope unit of its own (`systemd-run --scope`, which moves itself into the scope and
//! then execs, so the pid stays the one recorded) and switches to the runner user through
//! `setpriv` (uid, gid and the supplementary groups given, nothing inherited). Whether
//! `systemd-run` can make scopes here is tried once per process; where it cannot (no systemd,
//! not root, its socket unreachable), runners start as plain children, as before.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{Gid, Pid, Uid};

use super::{Backend, LogSource, RunAs, ServiceError, ServiceStatus, Unit};

/// The search path runners get (the runner's own `env.sh` records it in `.path`).
pub const RUNNER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long `stop` waits after `SIGINT` before `SIGKILL` (the listener itself gives a cancelled
/// job 30 s).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(45);

/// The `process` backend.
#[derive(Debug, Clone)]
pub struct Process {
    /// `<state_dir>/runners`: pid files.
    pub pid_dir: PathBuf,
    pub stop_timeout: Duration,
}

/// A recorded child: pid and its start time (clock ticks since boot, `/proc/PID/stat` field 22),
/// so that a recycled pid is never taken for the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessState {
    pub pid: u32,
    pub start_time: u64,
}

impl Process {
    pub fn new(state_dir: &Path) -> Process {
        Process {
            pid_dir: state_dir.join("runners"),
            stop_timeout: STOP_TIMEOUT,
        }
    }

    fn pid_file(&self, name: &str) -> PathBuf {
        self.pid_dir.join(format!("{name}.pid"))
    }

    /// The log file of a runner started by this backend.
    pub fn log_file(dir: &Path) -> PathBuf {
        dir.join("_diag").join("agent-run.log")
    }

    /// The command that runs the runner (`<dir>/run.sh`) as its user, in a new session, with a
    /// clean environment (in a scope of its own where systemd can make one: [`Scopes`]): what
    /// `start` spawns, and what a supervising daemon can spawn itself.
    pub fn command(unit: &Unit) -> Command {
        Process::command_in(unit, Scopes::here())
    }

    /// [`Process::command`] with the scope tools given (`None`: a plain child).
    pub fn command_in(unit: &Unit, scopes: Option<&Scopes>) -> Command {
        let run_sh = unit.dir.join("run.sh");
        let mut command = match scopes {
            Some(scopes) => {
                let mut command = scopes.wrap(&unit.name);
                command.args(setpriv_args(&unit.run_as)).arg(&run_sh);
                command
            }
            None => Command::new(&run_sh),
        };
        command.current_dir(&unit.dir);
        command.env_clear();
        for (key, value) in user_env(&unit.run_as) {
            command.env(key, value);
        }
        for (key, value) in &unit.env {
            command.env(key, value);
        }
        if scopes.is_some() {
            // setpriv switches the user once the process is in its scope.
            new_session(&mut command);
        } else {
            as_user(&mut command, &unit.run_as, true);
        }
        command
    }

    /// The recorded child of `name`, if it is still running.
    pub fn running(&self, name: &str) -> Option<ProcessState> {
        let text = fs::read_to_string(self.pid_file(name)).ok()?;
        let state: ProcessState = serde_json::from_str(&text).ok()?;
        (start_time(state.pid) == Some(state.start_time)).then_some(state)
    }

    /// Write the pid file whole ([`crate::atomic::write`], which also makes the pid
    /// directory): a reader never sees half of one, which would read as "not running".
    fn write_state(&self, name: &str, state: ProcessState) -> Result<(), ServiceError> {
        let path = self.pid_file(name);
        let io = |source| ServiceError::Io {
            path: path.clone(),
            source,
        };
        let text = serde_json::to_string(&state).map_err(|err| io(std::io::Error::other(err)))?;
        crate::atomic::write(&path, text.as_bytes(), 0o644).map_err(io)
    }

    /// An exclusive `flock` on the runner's directory, held while a start looks at the pid file,
    /// spawns and records the child (and while a stop looks at it and signals): the daemon and
    /// `agentctl start` starting the same runner at the same moment must not both spawn it (two
    /// listeners of one registration: one exits 5 on a session conflict, the other is an orphan
    /// no pid file names). Released when dropped; the child does not inherit it (`O_CLOEXEC`).
    fn lock(unit: &Unit) -> Result<Flock<fs::File>, ServiceError> {
        let io = |source| ServiceError::Io {
            path: unit.dir.clone(),
            source,
        };
        let dir = fs::File::open(&unit.dir).map_err(io)?;
        Flock::lock(dir, FlockArg::LockExclusive).map_err(|(_, errno)| io(errno.into()))
    }
}

/// The environment a runner process starts with.
pub fn user_env(run_as: &RunAs) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_owned(), RUNNER_PATH.to_owned()),
        (
            "HOME".to_owned(),
            run_as.home.to_string_lossy().into_owned(),
        ),
        ("USER".to_owned(), run_as.user.clone()),
        ("LOGNAME".to_owned(), run_as.user.clone()),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
    ];
    // The runner reaches GitHub through the same proxy as the agent.
    for key in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        if let Ok(value) = std::env::var(key) {
            env.push((key.to_owned(), value));
        }
    }
    env
}

/// Make `command` run with `run_as`'s uid, gid and supplementary groups (and, with `session`, in
/// a new session, detached from any terminal).
pub fn as_user(command: &mut Command, run_as: &RunAs, session: bool) {
    let uid = Uid::from_raw(run_as.uid);
    let gid = Gid::from_raw(run_as.gid);
    let groups: Vec<Gid> = run_as.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    // `pre_exec` closures run in the order they were added: the session first.
    if session {
        new_session(command);
    }
    // SAFETY: the closure runs between fork and exec and only makes system calls on data
    // prepared before the fork (no allocation, no locks).
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setgroups(&groups).map_err(std::io::Error::from)?;
            nix::unistd::setgid(gid).map_err(std::io::Error::from)?;
            nix::unistd::setuid(uid).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}

/// `systemd-run` and `setpriv`, found and able to make a transient scope on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scopes {
    pub systemd_run: PathBuf,
    pub setpriv: PathBuf,
}

impl Scopes {
    /// The tools, once systemd runs this host, this process is root, both are installed and a
    /// trial scope (`systemd-run --scope -- true`) worked; tried once per process.
    pub fn here() -> Option<&'static Scopes> {
        static HERE: OnceLock<Option<Scopes>> = OnceLock::new();
        HERE.get_or_init(|| {
            if !nix::unistd::geteuid().is_root() || !Path::new("/run/systemd/system").is_dir() {
                return None;
            }
            let find = |name: &str| {
                ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
                    .iter()
                    .map(|dir| Path::new(dir).join(name))
                    .find(|path| path.is_file())
            };
            let scopes = Scopes {
                systemd_run: find("systemd-run")?,
                setpriv: find("setpriv")?,
            };
            let mut trial = scopes.wrap("trial");
            trial.arg(find("true")?);
            match trial.stdin(Stdio::null()).output() {
                Ok(out) if out.status.success() => {
                    log::debug!("process runners start in scopes of their own (systemd-run)");
                    Some(scopes)
                }
                Ok(out) => {
                    log::warn!(
                        "process runners share this service's cgroup (stopping it stops them): `systemd-run --scope` failed: {}\nhint: runners under `service = \"systemd\"` are their own units",
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                    None
                }
                Err(err) => {
                    log::warn!("cannot run `{}`: {err}", scopes.systemd_run.display());
                    None
                }
            }
        })
        .as_ref()
    }

    /// `systemd-run --scope … -- setpriv`, for runner `name`; the caller adds setpriv's
    /// arguments and the command.
    fn wrap(&self, name: &str) -> Command {
        let mut command = Command::new(&self.systemd_run);
        command
            .args(["--scope", "--quiet", "--collect"])
            .arg(format!("--description=runner-agent: runner {name}"))
            .arg("--")
            .arg(&self.setpriv);
        command
    }
}

/// `setpriv`'s arguments that make `run_as` of root, up to the `--` before the command.
fn setpriv_args(run_as: &RunAs) -> Vec<String> {
    let groups = if run_as.groups.is_empty() {
        "--clear-groups".to_owned()
    } else {
        let list: Vec<String> = run_as.groups.iter().map(u32::to_string).collect();
        format!("--groups={}", list.join(","))
    };
    vec![
        format!("--reuid={}", run_as.uid),
        format!("--regid={}", run_as.gid),
        groups,
        "--".to_owned(),
    ]
}

/// Make `command` start a new session, detached from any terminal.
fn new_session(command: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only makes one system call.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}

/// Field 22 of `/proc/PID/stat`: the start time in clock ticks since boot.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl Backend for Process {
    fn install(&self, _unit: &Unit) -> Result<(), ServiceError> {
        Ok(())
    }

    fn start(&self, unit: &Unit) -> Result<(), ServiceError> {
        let _lock = Process::lock(unit)?;
        if let Some(state) = self.running(&unit.name) {
            log::info!("runner `{}` already runs (pid {})", unit.name, state.pid);
            return Ok(());
        }
        let log_path = Process::log_file(&unit.dir);
        let io = |source| ServiceError::Io {
            path: log_path.clone(),
            source,
        };
        if let Some(diag) = log_path.parent() {
            fs::create_dir_all(diag).map_err(io)?;
            std::os::unix::fs::chown(diag, Some(unit.run_as.uid), Some(unit.run_as.gid))
                .map_err(io)?;
        }
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&log_path)
            .map_err(io)?;
        std::os::unix::fs::chown(&log_path, Some(unit.run_as.uid), Some(unit.run_as.gid))
            .map_err(io)?;
        let _ = writeln!(
            log,
            "--- runner-agent: starting `{}` ---",
            unit.dir.join("run.sh").display()
        );
        let err = log.try_clone().map_err(io)?;
        let mut command = Process::command(unit);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err));
        let child = command.spawn().map_err(|source| ServiceError::Spawn {
            command: unit.dir.join("run.sh").display().to_string(),
            source,
        })?;
        let pid = child.id();
        // The child lives on in its own session; nobody waits for it here (the daemon will),
        // so a zombie only lasts as long as this short-lived `agentctl`.
        drop(child);
        let start = start_time(pid).unwrap_or_default();
        self.write_state(
            &unit.name,
            ProcessState {
                pid,
                start_time: start,
            },
        )?;
        log::info!("started runner `{}` (pid {pid})", unit.name);
        Ok(())
    }

    fn stop(&self, unit: &Unit) -> Result<(), ServiceError> {
        // A start under way finishes first, so that its child is the one stopped (a runner
        // directory already gone has nothing to start).
        let lock = Process::lock(unit).ok();
        let Some(state) = self.running(&unit.name) else {
            let _ = fs::remove_file(self.pid_file(&unit.name));
            return Ok(());
        };
        let group = Pid::from_raw(state.pid as i32);
        // run.sh, run-helper.sh and the listener share the session and process group: SIGINT
        // to all, as runsvc.sh forwards it; the listener cancels its job and exits.
        let _ = killpg(group, Signal::SIGINT);
        drop(lock);
        let deadline = Instant::now() + self.stop_timeout;
        let mut killed = false;
        while start_time(state.pid) == Some(state.start_time) && !is_zombie(state.pid) {
            if Instant::now() >= deadline {
                let _ = killpg(group, Signal::SIGKILL);
                killed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Reap it if it is our own child (a daemon that started it, or a test).
        let _ = nix::sys::wait::waitpid(group, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        let _ = fs::remove_file(self.pid_file(&unit.name));
        if killed {
            return Err(ServiceError::Killed {
                runner: unit.name.clone(),
                secs: self.stop_timeout.as_secs(),
            });
        }
        log::info!("stopped runner `{}`", unit.name);
        Ok(())
    }

    fn uninstall(&self, unit: &Unit) -> Result<(), ServiceError> {
        self.stop(unit)
    }

    fn status(&self, unit: &Unit) -> Result<ServiceStatus, ServiceError> {
        let running = self.running(&unit.name);
        Ok(ServiceStatus {
            backend: "process",
            state: if running.is_some() {
                "active".to_owned()
            } else {
                "inactive".to_owned()
            },
            pid: running.map(|state| state.pid),
            unit: None,
        })
    }

    fn log_source(&self, unit: &Unit) -> LogSource {
        LogSource::File(Process::log_file(&unit.dir))
    }
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = stat[stat.rfind(')')? + 1..].to_owned();
            rest.split_whitespace().next().map(|s| s == "Z")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit() -> Unit {
        Unit {
            name: "lab-1".to_owned(),
            dir: PathBuf::from("/srv/runners/lab-1"),
            run_as: RunAs {
                user: "runner".to_owned(),
                uid: 990,
                gid: 990,
                groups: vec![990, 36, 20],
                home: PathBuf::from("/var/lib/runner"),
            },
            env: std::collections::BTreeMap::new(),
            env_file: None,
            extra_groups: Vec::new(),
        }
    }

    fn argv(command: &Command) -> Vec<String> {
        std::iter::once(command.get_program())
            .chain(command.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn under_systemd_run_sh_starts_in_a_scope_of_its_own_as_the_runner_user() {
        let scopes = Scopes {
            systemd_run: PathBuf::from("/usr/bin/systemd-run"),
            setpriv: PathBuf::from("/usr/bin/setpriv"),
        };
        let command = Process::command_in(&unit(), Some(&scopes));
        assert_eq!(
            argv(&command),
            [
                "/usr/bin/systemd-run",
                "--scope",
                "--quiet",
                "--collect",
                "--description=runner-agent: runner lab-1",
                "--",
                "/usr/bin/setpriv",
                "--reuid=990",
                "--regid=990",
                "--groups=990,36,20",
                "--",
                "/srv/runners/lab-1/run.sh",
            ]
        );
        assert_eq!(
            command.get_current_dir(),
            Some(Path::new("/srv/runners/lab-1"))
        );
    }

    #[test]
    fn without_scopes_run_sh_is_the_program_and_no_groups_are_cleared() {
        let command = Process::command_in(&unit(), None);
        assert_eq!(argv(&command), ["/srv/runners/lab-1/run.sh"]);
        let mut lone = unit().run_as;
        lone.groups.clear();
        assert_eq!(
            setpriv_args(&lone),
            ["--reuid=990", "--regid=990", "--clear-groups", "--"]
        );
    }
}
