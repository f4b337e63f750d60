//! Whether a runner is running a job, seen on this host.
//!
//! GitHub's runner list says `busy`, but only with REST access (a PAT or an App; a plain
//! `registration_token_file` has none) and only while GitHub answers. The host itself knows
//! better: the real listener runs each job in a child process it starts as
//! `<bin>/Runner.Worker spawnclient <out> <in>` (actions/runner `JobDispatcher.cs`, `<bin>` being
//! the directory of the listener's own assembly: `<dir>/bin`, or `<dir>/bin.<version>` after a
//! self-update turned `bin` into a link), and that process lives exactly as long as the job. So a
//! runner is busy here while a live process whose `argv[0]` (or executable) is
//! `<dir>/bin*/Runner.Worker` exists.
//!
//! `argv[0]` comes from `/proc/<pid>/cmdline`, which every user may read (`ProtectProc=default`);
//! the executable link `/proc/<pid>/exe` needs `CAP_SYS_PTRACE` for another user's process, which
//! the packaged unit does not have, so it is only a second way to match (a worker started through
//! a relative path). Zombies have no command line and do not count.
//!
//! The listener announces each job before it starts the worker (`<time>: Running job: <name>`,
//! then, after the first renewal of the job request, the worker; `<time>: Job <name> completed
//! with result: <result>` once it ended), so [`job_here`] also counts a job its output announced
//! and has not reported done, for [`ANNOUNCED_GRACE`]: the moments before the worker appears.
//! A lost line (a listener killed mid-job, a journal that dropped lines) holds nobody longer.
//!
//! [`busy`] combines both views: busy if either says so. Without REST access, or while the list
//! cannot be read, the local view is the only one.
//!
//! # Container runners
//!
//! A container runner (`service = "container"`) runs in its own mount (and, unless it has a
//! board, PID) namespace, yet its processes are host processes: `/proc` of the host lists them
//! with host pids, and `argv[0]` is the string the listener passed, in the container's view of
//! the file system. The backend bind-mounts the runner directory at the same path, so what the
//! host reads is `<dir>/bin/Runner.Worker`, both as `argv[0]` and as the executable link (whose
//! path the kernel gives relative to the container's root): the path match above finds it (shown
//! by `tests/tests/container.rs` against a real Docker engine). That holds while the container
//! resolves `<dir>` to itself. The listener names its worker by the directory of its own
//! assembly as the container sees it, resolved (`/proc/self/exe` for the fake runner; .NET's host
//! resolves its executable's path too), and the executable link is resolved anyway: both name
//! another path when the image has a symbolic link on the way (say `/var/run`, `/home`), the
//! engine following it when it mounts (the test moves the image's `/tmp`). So for a container runner the host also asks
//! the engine for the container's id (`<engine> container inspect`, only when the path match found
//! nothing) and counts a `Runner.Worker` process whose control group names that id
//! (`/proc/<pid>/cgroup`, readable by everybody: `/docker/<id>`, `docker-<id>.scope`,
//! `libpod-<id>.scope`, for either cgroup driver and version): a job of that runner whatever the
//! paths inside say. The `Running job:` line above comes from the container's output
//! (`<engine> logs`), which holds it as the journal does.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::Runner;
use crate::runner::{Lifecycle, LocalRegistration, RemoteRunner};
use crate::service::container::Engine;
use crate::service::LogSource;

/// How long the engine may take to name a container.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a job the listener announced counts as running without a worker process (the real
/// worker gives up after 30 s without its job message).
pub const ANNOUNCED_GRACE: Duration = Duration::from_secs(60);

/// The name of the real runner's job process.
pub const WORKER: &str = "Runner.Worker";

/// Whether `path` is `<dir>/bin*/Runner.Worker`.
fn is_worker_of(path: &Path, dir: &Path, canonical_dir: Option<&Path>) -> bool {
    if path.file_name() != Some(OsStr::new(WORKER)) {
        return false;
    }
    let Some(bin) = path.parent() else {
        return false;
    };
    if !bin
        .file_name()
        .is_some_and(|n| n.as_bytes().starts_with(b"bin"))
    {
        return false;
    }
    let Some(root) = bin.parent() else {
        return false;
    };
    if root == dir {
        return true;
    }
    let Some(canonical_dir) = canonical_dir else {
        return false;
    };
    root == canonical_dir || std::fs::canonicalize(root).is_ok_and(|r| r == canonical_dir)
}

/// A process's `argv[0]`, from `<proc_dir>/cmdline`.
fn argv0(proc_dir: &Path) -> Option<PathBuf> {
    let cmdline = std::fs::read(proc_dir.join("cmdline")).ok()?;
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    Some(PathBuf::from(OsStr::from_bytes(argv0)))
}

/// A process's executable, from the `<proc_dir>/exe` link.
fn exe(proc_dir: &Path) -> Option<PathBuf> {
    let exe = std::fs::read_link(proc_dir.join("exe")).ok()?;
    // A binary replaced while it runs reads `<path> (deleted)`.
    let bytes = exe.as_os_str().as_bytes();
    let bytes = bytes.strip_suffix(b" (deleted)").unwrap_or(bytes);
    Some(PathBuf::from(OsStr::from_bytes(bytes)))
}

/// The paths a process was started from: its `argv[0]` when absolute, and its executable.
fn process_paths(proc_dir: &Path) -> Vec<PathBuf> {
    argv0(proc_dir)
        .filter(|p| p.is_absolute())
        .into_iter()
        .chain(exe(proc_dir))
        .collect()
}

/// The ids, in order, of the processes under `proc_root` (`/proc`, or a tree shaped like it)
/// whose directory satisfies `pred`.
fn pids_where(proc_root: &Path, pred: impl Fn(&Path) -> bool) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut out: Vec<u32> = entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            pred(&entry.path()).then_some(pid)
        })
        .collect();
    out.sort_unstable();
    out
}

/// The ids of the live `Runner.Worker` processes of the runner in `dir`, found under
/// `proc_root` (`/proc`, or a tree shaped like it).
pub fn workers_in(proc_root: &Path, dir: &Path) -> Vec<u32> {
    let canonical_dir = std::fs::canonicalize(dir).ok();
    pids_where(proc_root, |proc_dir| {
        process_paths(proc_dir)
            .iter()
            .any(|p| is_worker_of(p, dir, canonical_dir.as_deref()))
    })
}

/// The ids of the live job processes of the runner in `dir` on this host.
pub fn workers(dir: &Path) -> Vec<u32> {
    workers_in(Path::new("/proc"), dir)
}

/// Whether the process in `proc_dir` is a `Runner.Worker`, by the file name of its `argv[0]` or
/// of its executable, wherever that lies.
fn is_worker(proc_dir: &Path) -> bool {
    let named = |path: &PathBuf| path.file_name() == Some(OsStr::new(WORKER));
    argv0(proc_dir).is_some_and(|p| named(&p)) || exe(proc_dir).is_some_and(|p| named(&p))
}

/// Whether the control groups in a `/proc/<pid>/cgroup` text name container `id`.
fn in_container(cgroup: &str, id: &str) -> bool {
    cgroup
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .any(|path| path.contains(id))
}

/// The ids of the live `Runner.Worker` processes in the container whose full id is `id` (at
/// least 12 hexadecimal digits, else none), found under `proc_root`.
pub fn container_workers_in(proc_root: &Path, id: &str) -> Vec<u32> {
    if id.len() < 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Vec::new();
    }
    pids_where(proc_root, |proc_dir| {
        std::fs::read_to_string(proc_dir.join("cgroup"))
            .is_ok_and(|cgroup| in_container(&cgroup, id))
            && is_worker(proc_dir)
    })
}

/// The ids of the live job processes in container `container` of `engine` (none when the
/// engine does not know it or does not answer).
pub fn container_workers(engine: &Path, container: &str) -> Vec<u32> {
    let engine = Engine {
        program: engine.to_path_buf(),
    };
    let args = ["container", "inspect", "--format", "{{.Id}}", container].map(str::to_owned);
    match engine.run_for(&args, ENGINE_TIMEOUT) {
        Ok(id) => container_workers_in(Path::new("/proc"), id.trim()),
        Err(err) => {
            log::debug!("cannot look for jobs in container `{container}`: {err}");
            Vec::new()
        }
    }
}

/// When the job the listener's `output` (of its current run) announced and has not reported
/// done started: the time on its last `Running job:` line, if no `completed with result:` line
/// follows it.
pub fn announced_job(output: &str) -> Option<SystemTime> {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let mut open = None;
    for line in output.lines() {
        // `DateTime.UtcNow:u`: `2026-11-23 05:59:01Z: ...`
        let Some((stamp, rest)) = line.trim_start().split_once("Z: ") else {
            continue;
        };
        if rest.starts_with("Running job: ") {
            open = time::PrimitiveDateTime::parse(stamp, &format)
                .ok()
                .map(|at| SystemTime::from(at.assume_utc()));
        } else if rest.starts_with("Job ") && rest.contains(" completed with result: ") {
            open = None;
        }
    }
    open
}

/// Whether `runner` runs a job, as this host sees it: a live worker process (under its
/// directory, or in its container for `service = "container"`), or a job its listener announced
/// less than [`ANNOUNCED_GRACE`] ago and has not reported done. Says at debug level which.
pub fn job_here(lifecycle: &Lifecycle<'_>, runner: &Runner) -> bool {
    let name = &runner.name;
    let seen = workers(&runner.dir);
    if !seen.is_empty() {
        log::debug!(
            "runner `{name}` runs a job: `{WORKER}` {seen:?} under `{}`",
            runner.dir.display()
        );
        return true;
    }
    let Ok(source) = lifecycle.log_source(runner) else {
        return false;
    };
    if let LogSource::Container { engine, container } = &source {
        let seen = container_workers(engine, container);
        if !seen.is_empty() {
            log::debug!(
                "runner `{name}` runs a job: `{WORKER}` {seen:?} in container `{container}`"
            );
            return true;
        }
    }
    let Some((output, _)) = super::exits::last_output(&source) else {
        return false;
    };
    let open = announced_job(&output).is_some_and(|at| {
        SystemTime::now().duration_since(at).unwrap_or_default() < ANNOUNCED_GRACE
    });
    if open {
        log::debug!("runner `{name}` runs a job its listener announced, no `{WORKER}` seen yet");
    }
    open
}

/// Whether GitHub's list says the runner registered in `dir` is busy (`false` without a list).
pub fn busy_on_github(list: Option<&[RemoteRunner]>, dir: &Path) -> bool {
    let Some(id) = LocalRegistration::read(dir).map(|l| l.id) else {
        return false;
    };
    list.is_some_and(|list| list.iter().any(|r| r.id == id && r.busy))
}

/// Whether `runner` runs a job: on this host ([`job_here`]), or on GitHub's list when there is
/// one.
pub fn busy(lifecycle: &Lifecycle<'_>, runner: &Runner, list: Option<&[RemoteRunner]>) -> bool {
    job_here(lifecycle, runner) || busy_on_github(list, &runner.dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn process(proc_root: &Path, pid: u32, argv: &[&str], exe: Option<&Path>) {
        let dir = proc_root.join(pid.to_string());
        fs::create_dir_all(&dir).unwrap();
        let mut cmdline = Vec::new();
        for arg in argv {
            cmdline.extend_from_slice(arg.as_bytes());
            cmdline.push(0);
        }
        fs::write(dir.join("cmdline"), cmdline).unwrap();
        if let Some(exe) = exe {
            std::os::unix::fs::symlink(exe, dir.join("exe")).unwrap();
        }
    }

    #[test]
    fn only_a_worker_under_the_runner_directory_counts() {
        let tmp = tempfile::tempdir().unwrap();
        let proc_root = tmp.path().join("proc");
        let r1 = tmp.path().join("runners/r1");
        let r2 = tmp.path().join("runners/r2");
        fs::create_dir_all(r1.join("bin.2.337.0")).unwrap();
        fs::create_dir_all(&r2).unwrap();
        std::os::unix::fs::symlink("bin.2.337.0", r1.join("bin")).unwrap();
        let s = |p: PathBuf| p.display().to_string();
        // The listener itself, another runner's worker, a worker of a runner named like it, a
        // zombie (no command line) and something that is not a process.
        process(
            &proc_root,
            10,
            &[&s(r1.join("bin/Runner.Listener")), "run"],
            None,
        );
        process(
            &proc_root,
            11,
            &[&s(r2.join("bin/Runner.Worker")), "spawnclient", "1", "2"],
            None,
        );
        process(
            &proc_root,
            12,
            &[&s(tmp.path().join("runners/r10/bin/Runner.Worker"))],
            None,
        );
        process(&proc_root, 13, &[], None);
        fs::create_dir_all(proc_root.join("self")).unwrap();
        assert_eq!(workers_in(&proc_root, &r1), Vec::<u32>::new());
        assert_eq!(workers_in(&proc_root, &r2), vec![11]);

        // r1's worker through the `bin` link, through the versioned directory, and one started
        // by a relative path seen only by its executable (deleted since).
        process(
            &proc_root,
            20,
            &[&s(r1.join("bin/Runner.Worker")), "spawnclient", "3", "4"],
            None,
        );
        process(
            &proc_root,
            21,
            &[&s(r1.join("bin.2.337.0/Runner.Worker"))],
            None,
        );
        let deleted = PathBuf::from(format!(
            "{} (deleted)",
            s(r1.join("bin.2.336.0/Runner.Worker"))
        ));
        process(
            &proc_root,
            22,
            &["./Runner.Worker", "spawnclient"],
            Some(&deleted),
        );
        assert_eq!(workers_in(&proc_root, &r1), vec![20, 21, 22]);
        // The runner directory named through a link of its own.
        let alias = tmp.path().join("alias");
        std::os::unix::fs::symlink(&r1, &alias).unwrap();
        assert_eq!(workers_in(&proc_root, &alias), vec![20, 21, 22]);
        assert_eq!(
            workers_in(&tmp.path().join("nothing"), &r1),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn a_worker_in_the_runners_container_counts_whatever_its_path() {
        let tmp = tempfile::tempdir().unwrap();
        let proc_root = tmp.path().join("proc");
        let id = "82c0d81d6e680134cbf53b386dc97ed8cb68bf4b943e498f53ce5d6f7877601b";
        let other = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let cgroup = |pid: u32, text: &str| {
            fs::write(proc_root.join(pid.to_string()).join("cgroup"), text).unwrap();
        };
        // cgroup v1 with the cgroupfs driver: the worker (its directory seen elsewhere inside),
        // its listener, and another container's worker.
        process(
            &proc_root,
            30,
            &[
                "/home/runner/bin.2.337.0/Runner.Worker",
                "spawnclient",
                "1",
                "2",
            ],
            None,
        );
        cgroup(30, &format!("4:memory:/docker/{id}\n0::/docker/{id}\n"));
        process(
            &proc_root,
            31,
            &["/home/runner/bin/Runner.Listener", "run"],
            None,
        );
        cgroup(31, &format!("0::/docker/{id}\n"));
        process(
            &proc_root,
            32,
            &["/srv/r/bin/Runner.Worker", "spawnclient"],
            None,
        );
        cgroup(32, &format!("0::/docker/{other}\n"));
        // cgroup v2 with the systemd driver (docker, podman), one seen by its executable only.
        process(&proc_root, 33, &["/x/bin/Runner.Worker"], None);
        cgroup(33, &format!("0::/system.slice/docker-{id}.scope\n"));
        process(
            &proc_root,
            34,
            &["Runner.Worker"],
            Some(Path::new("/opt/r/bin/Runner.Worker")),
        );
        cgroup(
            34,
            &format!("0::/machine.slice/libpod-{id}.scope/container\n"),
        );
        // A worker of the host, in no container.
        process(&proc_root, 35, &["/srv/r/bin/Runner.Worker"], None);
        cgroup(35, "0::/system.slice/runner-agent-r.service\n");
        assert_eq!(container_workers_in(&proc_root, id), vec![30, 33, 34]);
        assert_eq!(container_workers_in(&proc_root, other), vec![32]);
        // A short or empty id names nothing (it would be part of every path).
        assert_eq!(container_workers_in(&proc_root, ""), Vec::<u32>::new());
        assert_eq!(
            container_workers_in(&proc_root, "docker"),
            Vec::<u32>::new()
        );
        assert_eq!(
            container_workers_in(&proc_root, "82c0d8"),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn a_real_worker_process_is_seen_while_it_lives() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("r1");
        fs::create_dir_all(dir.join("bin")).unwrap();
        let worker = dir.join("bin").join(WORKER);
        fs::copy("/bin/sleep", &worker).unwrap();
        assert!(workers(&dir).is_empty());
        let mut child = std::process::Command::new(&worker)
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !workers(&dir).contains(&pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "worker {pid} not seen"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!workers(&dir).is_empty());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!workers(&dir).contains(&pid));
        assert!(workers(&dir).is_empty());
    }

    #[test]
    fn a_job_announced_and_not_reported_done_is_open_since_its_line() {
        let at = |text: &str| {
            let format =
                time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
            SystemTime::from(
                time::PrimitiveDateTime::parse(text, &format)
                    .unwrap()
                    .assume_utc(),
            )
        };
        let listening = "√ Connected to GitHub\n\nCurrent runner version: '2.336.0'\n\
                         2026-11-23 11:47:44Z: Listening for Jobs\n";
        assert_eq!(announced_job(listening), None);
        let running = format!("{listening}2026-11-23 11:47:45Z: Running job: build (x64)\n");
        assert_eq!(announced_job(&running), Some(at("2026-11-23 11:47:45")));
        let done = format!(
            "{running}2026-11-23 11:50:02Z: Job build (x64) completed with result: Succeeded\n"
        );
        assert_eq!(announced_job(&done), None);
        let next = format!("{done}2026-11-23 11:51:00Z: Running job: test\n");
        assert_eq!(announced_job(&next), Some(at("2026-11-23 11:51:00")));
        assert_eq!(announced_job("garbage Z: Running job: x\n"), None);
    }
}
