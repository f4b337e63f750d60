//! The `container` service backend against a real Docker engine: `agentctl register` of a board
//! runner with `service = "container"`, a job inside the container that opens `/dev/kvm` (a
//! private node) and the board's pty as the runner user through numeric groups only, then
//! `stop`/`start` and `purge` leaving no container, volume or registration behind.
//!
//! Needs root and Docker: `tests/container/prepare` starts dockerd by hand when none answers and
//! imports the test image from tests/e2e's cached bookworm rootfs. With `CI=true` anything
//! missing fails the test; elsewhere it is skipped with a loud message.

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use runner_agent::daemon::busy;
use runner_agent_tests::emulator::RunnerView;
use runner_agent_tests::support::lab::{self, text, REPO};

const HOST: &str = "ctrhost";
const WAIT: Duration = Duration::from_secs(60);
/// Groups only the container's `--group-add` gives the runner user: the KVM node's, the pty's.
const KVM_GID: u32 = 64_231;
const TTY_GID: u32 = 64_232;

/// The test image, with an engine up; `None` (after saying why, loudly) when Docker cannot run
/// here and this is not CI.
fn prepare() -> Option<String> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let fail = |why: String| -> Option<String> {
        assert!(!ci, "the container backend test cannot run on CI: {why}");
        eprintln!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !!! SKIPPED: container backend test: {why}\n\
             !!! (hint: run as root after `bash scripts/setup`; on CI this fails instead)\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
        None
    };
    if !nix::unistd::Uid::effective().is_root() {
        return fail("needs root".to_owned());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("container/prepare");
    let out = match Command::new("bash").arg(&script).output() {
        Ok(out) => out,
        Err(err) => return fail(format!("cannot run `{}`: {err}", script.display())),
    };
    if !out.status.success() {
        return fail(format!("`{}` failed: {}", script.display(), text(&out)));
    }
    let image = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned();
    assert!(!image.is_empty(), "{}", text(&out));
    Some(image)
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", "unix:///run/docker.sock")
        .output()
        .unwrap()
}

fn docker_text(args: &[&str]) -> String {
    let out = docker(args);
    assert!(out.status.success(), "docker {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The shared lab ([`lab::Lab`]) with the name of its one container runner.
struct Lab {
    lab: lab::Lab,
    name: String,
}

runner_agent_tests::deref_lab!(Lab.lab);

impl Lab {
    fn agentctl(&self, args: &[&str]) -> Output {
        self.run(args)
    }

    async fn wait_runner(&self, what: &str, pred: impl Fn(Option<&RunnerView>) -> bool) {
        let what = format!("runner {} {what}", self.name);
        self.lab
            .wait_until(&what, || {
                pred(self.runners().iter().find(|r| r.name == self.name))
            })
            .await;
    }

    fn container_state(&self) -> String {
        docker_text(&[
            "container",
            "inspect",
            "--format",
            "{{.State.Status}}",
            &format!("runner-agent-{}", self.name),
        ])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_runner_registers_runs_a_job_with_the_devices_and_purges_clean() {
    let Some(image) = prepare() else {
        return;
    };
    // Container names are global on the engine: one per test run.
    let name = format!("ctr-{}", std::process::id());
    // A PAT (the default): the agent mints registration and remove tokens with it (and can
    // deregister).
    let mut lab = lab::Lab::builder()
        .host(HOST)
        .env("DOCKER_HOST", "unix:///run/docker.sock")
        .kvm(true)
        .service("container")
        .labels(None)
        .wait(WAIT)
        .start()
        .await;
    let root = lab.root().to_path_buf();
    let token = lab.pat.clone().unwrap();

    // A private KVM node (the host's stays root:root 0600) and the board's console, a real pty,
    // each openable only through a group the runner user does not have on the host.
    let kvm = root.join("kvm");
    nix::sys::stat::mknod(
        &kvm,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o660),
        nix::sys::stat::makedev(10, 232),
    )
    .unwrap();
    nix::unistd::chown(&kvm, Some(0.into()), Some(KVM_GID.into())).unwrap();
    std::fs::set_permissions(&kvm, std::fs::Permissions::from_mode(0o660)).unwrap();
    let (pty, slave) = runner_agent_tests::support::console_pty();
    nix::unistd::chown(&slave, Some(0.into()), Some(TTY_GID.into())).unwrap();
    std::fs::set_permissions(&slave, std::fs::Permissions::from_mode(0o660)).unwrap();
    let link = root.join("usb-Sim_Board_0001-if00-port0");
    std::os::unix::fs::symlink(&slave, &link).unwrap();

    lab.settings.sections = format!(
        "[container]\nimage = \"{image}\"\nkvm_device = \"{}\"\n",
        kvm.display()
    );
    lab.settings.runners = format!(
        r#"[[runner]]
name = "{name}"
board = "sim-1"

[[board]]
name = "sim-1"
env = {{ BOARD_DTB = "sim.dtb" }}
[board.console]
path = "{link}"
baud = 115200
"#,
        link = link.display(),
    );
    lab.write_config();
    let lab = Lab {
        lab,
        name: name.clone(),
    };
    let container = format!("runner-agent-{name}");
    let volume = format!("runner-agent-{name}-work");

    let t0 = Instant::now();
    lab.ok(&["register"]);
    lab.wait_runner("came online", |r| r.is_some_and(|r| r.status == "online"))
        .await;
    eprintln!("register to online: {:?}", t0.elapsed());
    let view = lab
        .emu
        .runners(Some(REPO))
        .into_iter()
        .find(|r| r.name == name)
        .unwrap();
    assert!(view.labels.iter().any(|l| l == "kvm"), "{:?}", view.labels);
    assert!(
        view.labels.iter().any(|l| l == "sim-1"),
        "{:?}",
        view.labels
    );

    // The container: labelled, the runner's own user, no secret anywhere the engine shows.
    assert_eq!(lab.container_state(), "running");
    let inspect = docker_text(&["container", "inspect", &container]);
    assert!(
        inspect.contains(&format!("\"runner-agent.runner\": \"{name}\"")),
        "{inspect}"
    );
    assert!(
        inspect.contains(&format!("\"runner-agent.owner\": \"host-{HOST}\"")),
        "{inspect}"
    );
    assert!(!inspect.contains(&token), "the PAT is visible");
    let credentials = std::fs::read_to_string(
        root_path(&lab)
            .join("runners")
            .join(&name)
            .join(".credentials"),
    )
    .unwrap();
    for line in credentials.lines().filter(|l| l.contains(':')) {
        if let Some(value) = line.split('"').nth(3).filter(|v| v.len() > 8) {
            assert!(!inspect.contains(value), "a credential is visible: {value}");
        }
    }
    let volumes = docker_text(&[
        "volume",
        "ls",
        "--quiet",
        "--filter",
        &format!("label=runner-agent.runner={name}"),
    ]);
    assert_eq!(volumes, volume);

    // A job inside: the board environment, /dev/kvm and the console open as the runner user,
    // whose groups are the numeric ones the container was given.
    let ra = nix::unistd::User::from_name("ra-runner").unwrap().unwrap();
    let script = "test -f /.dockerenv && echo in-container\n\
         echo \"ids=$(id -u):$(id -g) groups=$(id -G)\"\n\
         echo \"uart=$BOARD_COMM_UART_DEV dtb=$BOARD_DTB\"\n\
         exec 3<>/dev/kvm && echo kvm-open\n\
         exec 4<>\"$BOARD_COMM_UART_DEV\" && echo tty-open\n\
         printf 'hello-from-container\\n' >&4\n\
         echo \"work=$PWD\"\n";
    let job = lab
        .emu
        .queue_job(REPO, &["self-hosted", "sim-1"], script)
        .unwrap();
    let done = lab.emu.wait_job(job, WAIT).await.unwrap();
    let output = done.output.clone().unwrap_or_default();
    assert_eq!(done.result.as_deref(), Some("succeeded"), "{output}");
    assert!(output.contains("in-container"), "{output}");
    assert!(
        output.contains(&format!("ids={}:{}", ra.uid, ra.gid)),
        "{output}"
    );
    let groups_line = output
        .lines()
        .find(|l| l.contains("groups="))
        .unwrap_or_default();
    for gid in [KVM_GID, TTY_GID] {
        assert!(
            groups_line.split([' ', '=']).any(|g| g == gid.to_string()),
            "{groups_line}"
        );
    }
    assert!(
        output.contains(&format!("uart={} dtb=sim.dtb", link.display())),
        "{output}"
    );
    assert!(output.contains("kvm-open"), "{output}");
    assert!(output.contains("tty-open"), "{output}");
    // The board hooks ran inside too (agentctl board acquire/release, leases on the host).
    assert!(output.contains("job-started.sh"), "{output}");
    let mut buf = [0u8; 128];
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&pty.master),
        nix::poll::PollFlags::POLLIN,
    )];
    assert_eq!(nix::poll::poll(&mut fds, 5000u16).unwrap(), 1);
    let n = nix::unistd::read(&pty.master, &mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).contains("hello-from-container"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );

    // doctor: engine, image, and a throwaway container that opens both devices; then the KVM
    // node without its group's access fails, with the fix.
    let doctor = |lab: &Lab| -> (Option<i32>, serde_json::Value) {
        let out = lab.agentctl(&["doctor", "--only", "container", "--offline", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|err| panic!("{err}: {}", text(&out)));
        (out.status.code(), report)
    };
    let finding = |report: &serde_json::Value, id: &str| -> serde_json::Value {
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no {id}: {report}"))
    };
    let (code, report) = doctor(&lab);
    assert_eq!(code, Some(0), "{report}");
    for id in ["container.engine", "container.reachable", "container.image"] {
        assert_eq!(finding(&report, id)["outcome"], "pass", "{report}");
    }
    let devices = finding(&report, "container.devices");
    assert_eq!(devices["outcome"], "pass", "{report}");
    let detail = devices["detail"].as_str().unwrap();
    assert!(detail.contains("/dev/kvm"), "{detail}");
    assert!(detail.contains(&link.display().to_string()), "{detail}");
    std::fs::set_permissions(&kvm, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, report) = doctor(&lab);
    std::fs::set_permissions(&kvm, std::fs::Permissions::from_mode(0o660)).unwrap();
    assert_eq!(code, Some(1), "{report}");
    let devices = finding(&report, "container.devices");
    assert_eq!(devices["outcome"], "fail", "{report}");
    assert!(
        devices["detail"]
            .as_str()
            .unwrap()
            .contains("cannot open /dev/kvm"),
        "{devices}"
    );
    assert!(
        devices["hint"].as_str().unwrap().contains("0660"),
        "{devices}"
    );

    // stop, status, start.
    lab.ok(&["stop"]);
    assert_eq!(lab.container_state(), "exited");
    lab.wait_runner("went offline", |r| r.is_some_and(|r| r.status == "offline"))
        .await;
    let status = lab.ok(&["status"]);
    assert!(text(&status).contains("container"), "{}", text(&status));
    lab.ok(&["start"]);
    assert_eq!(lab.container_state(), "running");
    lab.wait_runner("came back online", |r| {
        r.is_some_and(|r| r.status == "online")
    })
    .await;

    // Healing as for host runners: GitHub forgets the runner, `register` registers it again
    // (fresh token, same container and volume) and it comes back online under a new id.
    let old_id = lab
        .emu
        .runners(Some(REPO))
        .into_iter()
        .find(|r| r.name == name)
        .unwrap()
        .id;
    assert!(lab.emu.delete_runner(old_id));
    let out = lab.ok(&["register"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{name}: registered (id ")),
        "{}",
        text(&out)
    );
    lab.wait_runner("came back under a new id", |r| {
        r.is_some_and(|r| r.status == "online" && r.id != old_id)
    })
    .await;
    assert_eq!(lab.container_state(), "running");

    // The job's files went to the work volume, owned by the runner user; the runner directory
    // on the host only holds its mount point.
    let mountpoint = docker_text(&["volume", "inspect", "--format", "{{.Mountpoint}}", &volume]);
    {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(&mountpoint).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (ra.uid.as_raw(), ra.gid.as_raw()));
        assert!(
            std::fs::read_dir(&mountpoint).unwrap().next().is_some(),
            "the work volume is empty"
        );
        let host_work = root_path(&lab).join("runners").join(&name).join("_work");
        assert_eq!(
            std::fs::read_dir(&host_work)
                .map(|d| d.count())
                .unwrap_or(0),
            0
        );
    }

    // purge: no container, no volume, no registration.
    lab.ok(&["purge", "-y"]);
    let left = docker_text(&[
        "ps",
        "--all",
        "--quiet",
        "--filter",
        &format!("label=runner-agent.runner={name}"),
    ]);
    assert_eq!(left, "", "containers left");
    let left = docker_text(&[
        "volume",
        "ls",
        "--quiet",
        "--filter",
        &format!("name={volume}"),
    ]);
    assert_eq!(left, "", "volumes left");
    assert!(lab.emu.runners(Some(REPO)).is_empty());
    let _ = image;
}

fn root_path(lab: &Lab) -> &Path {
    lab.dir.path()
}

/// A lab of one counted container runner on `image`, with `disable_update` and a registration
/// token only (no REST access, so no `busy` from GitHub's list: what the host sees is all the
/// agent has), its daemon running and the runner online.
struct BusyLab {
    lab: lab::Lab,
    name: String,
    container: String,
    _removed: Removed,
}

runner_agent_tests::deref_lab!(BusyLab.lab);

impl BusyLab {
    async fn start(image: &str, tag: &str) -> BusyLab {
        // Container names are global on the engine: one host name per test and run.
        let host = format!("{tag}{}", std::process::id());
        let mut lab = lab::Lab::builder()
            .host(&host)
            .env("DOCKER_HOST", "unix:///run/docker.sock")
            .auth(lab::Auth::RegistrationToken)
            .service("container")
            .defaults("disable_update = true")
            .count(1, "")
            .wait(WAIT)
            .start()
            .await;
        lab.settings.sections = format!("[container]\nimage = \"{image}\"\n");
        lab.write_config();
        let name = lab.names(1)[0].clone();
        let busy = BusyLab {
            container: format!("runner-agent-{name}"),
            _removed: Removed(name.clone()),
            name,
            lab,
        };
        let mut busy = busy;
        busy.lab.start_daemon();
        busy.wait_runner(&busy.name, "online", |r| r.status == "online")
            .await;
        assert_eq!(busy.state(), "running");
        busy
    }

    fn state(&self) -> String {
        docker_text(&[
            "container",
            "inspect",
            "--format",
            "{{.State.Status}}",
            &self.container,
        ])
    }

    /// The container's `StartedAt` (changes when the engine or the agent restarts it).
    fn started_at(&self) -> String {
        docker_text(&[
            "container",
            "inspect",
            "--format",
            "{{.State.StartedAt}}",
            &self.container,
        ])
    }

    /// Queues a job that says it runs in a container, signals it started (a file) and runs
    /// until the test lets it end; waits until it started. Only the runner directory is shared
    /// with the container (at the same path), so the signals live there. The job id and the
    /// "go" file.
    async fn held_job(&self, round: u32) -> (u64, PathBuf) {
        let signals = self
            .runner_dir(&self.name)
            .join(format!("_signals-{round}"));
        let (job, _started, go) = self
            .held_job_in(&signals, "test -f /.dockerenv && echo in-container; ")
            .await;
        (job, go)
    }

    /// The job processes the host sees: by the runner directory's path, and in the runner's
    /// container (what `daemon::busy` looks for).
    fn workers(&self) -> (Vec<u32>, Vec<u32>) {
        let by_path = busy::workers(&self.runner_dir(&self.name));
        let in_container = busy::container_workers(Path::new("docker"), &self.container);
        for pid in by_path.iter().chain(&in_container) {
            let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            eprintln!(
                "worker {pid}: argv {:?}, exe {:?}",
                String::from_utf8_lossy(&argv),
                std::fs::read_link(format!("/proc/{pid}/exe"))
            );
        }
        (by_path, in_container)
    }

    /// `agentctl drain` with the held job `job` running: it waits for the job, which succeeds,
    /// and then stops the container.
    /// Returns what the drain wrote to stderr (with `-v`: which view saw the job).
    async fn drain_waits_for(&self, job: u64, go: &Path) -> String {
        let mut drain = self
            .command(&["drain", "-v"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The daemon, which sees the drain mark, leaves the runner running too.
        wait_two_passes(self).await;
        assert!(drain.try_wait().unwrap().is_none(), "drain did not wait");
        assert_eq!(self.state(), "running");
        assert_eq!(
            self.emu.job(job).unwrap().result,
            None,
            "the job ended early"
        );

        std::fs::write(go, "").unwrap();
        let done = self.emu.wait_job(job, WAIT).await.unwrap();
        let output = done.output.clone().unwrap_or_default();
        assert_eq!(done.result.as_deref(), Some("succeeded"), "{output}");
        assert!(output.contains("in-container"), "{output}");
        self.wait_until("the drain ended", || drain.try_wait().unwrap().is_some())
            .await;
        let out = drain.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .contains(&format!("{}: drained (stopped after its job", self.name)),
            "{}",
            text(&out)
        );
        assert_eq!(self.state(), "exited");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// Removes runner `.0`'s container and work volume when dropped (a failed test leaves neither
/// on the shared engine, where `--restart unless-stopped` would keep the container going).
struct Removed(String);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = docker(&["rm", "--force", &format!("runner-agent-{}", self.0)]);
        let _ = docker(&[
            "volume",
            "rm",
            "--force",
            &format!("runner-agent-{}-work", self.0),
        ]);
    }
}

/// Waits until the daemon wrote its state at least twice after now (two full passes).
async fn wait_two_passes(lab: &lab::Lab) {
    lab.wait_state_written_after("two daemon passes", 2).await;
}

/// While a job runs in the container, a `disable_update` upgrade waits for it and happens after
/// it; then `agentctl drain` waits for the next job and returns once it finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_runner_is_upgraded_and_drained_only_after_its_job() {
    let Some(image) = prepare() else {
        return;
    };
    let lab = BusyLab::start(&image, "cbusy").await;
    let name = lab.name.clone();
    let view = lab
        .wait_runner(&name, "online", |r| r.status == "online")
        .await;
    assert!(view.disable_update);

    let (job, go) = lab.held_job(1).await;
    // The runner directory is mounted at the same path: the host sees the container's worker
    // under it, both as `argv[0]` and as its executable, and in the runner's container.
    let (by_path, in_container) = lab.workers();
    assert_eq!(by_path.len(), 1, "{}", lab.log());
    assert_eq!(in_container, by_path);
    let since = lab.started_at();

    // A newer release is configured while the job runs: the daemon defers the upgrade.
    runner_agent_tests::support::publish_fake_release(
        &lab.emu,
        "2.337.0",
        &lab.dir.path().join("release-new"),
    )
    .await
    .unwrap();
    lab.edit_config(
        &format!("version = \"{}\"", lab::VERSION),
        "version = \"2.337.0\"",
    );
    lab.sighup();
    lab.wait_until("the configuration reloaded", || {
        lab.log().contains("configuration reloaded")
    })
    .await;
    wait_two_passes(&lab).await;
    assert!(!lab.log().contains("upgrading it"), "{}", lab.log());
    assert_eq!(lab.started_at(), since, "the container was restarted");
    assert_eq!(
        lab.emu.job(job).unwrap().result,
        None,
        "the job ended early"
    );

    // The job ends on its own, then the runner is upgraded in place (same registration).
    std::fs::write(&go, "").unwrap();
    let done = lab.emu.wait_job(job, WAIT).await.unwrap();
    let output = done.output.clone().unwrap_or_default();
    assert_eq!(done.result.as_deref(), Some("succeeded"), "{output}");
    assert!(output.contains("in-container"), "{output}");
    let upgraded = lab
        .wait_runner(&name, "upgraded", |r| {
            r.version == "2.337.0" && r.status == "online"
        })
        .await;
    assert_eq!(upgraded.id, view.id, "registered again instead of upgraded");
    assert!(lab
        .log()
        .contains("upgrading it to 2.337.0 while it is idle"));
    assert_ne!(lab.started_at(), since);

    // drain with a job running: it waits for the job.
    let (job, go) = lab.held_job(2).await;
    let (by_path, _) = lab.workers();
    assert_eq!(by_path.len(), 1);
    let said = lab.drain_waits_for(job, &go).await;
    assert!(
        said.contains(&format!(
            "runner `{name}` runs a job: `Runner.Worker` [{}] under `{}`",
            by_path[0],
            lab.runner_dir(&name).display()
        )),
        "{said}"
    );
}

/// An image in which `/tmp` (where the lab's runner directory lies) is a symbolic link to
/// `/moved-tmp`, as images have links on the way (`/var/run`, `/home`): the engine follows it,
/// so the runner directory is mounted at `/moved-tmp/…` inside, and the worker's path names
/// that. Made once per engine from `image`.
fn moved_tmp_image(image: &str) -> String {
    let key = image
        .rsplit('/')
        .next()
        .unwrap_or(image)
        .split(':')
        .next()
        .unwrap_or_default();
    let moved = format!("runner-agent-test/moved-tmp-{key}:latest");
    if docker(&["image", "inspect", &moved]).status.success() {
        return moved;
    }
    let builder = format!("runner-agent-moved-tmp-{}", std::process::id());
    docker_text(&[
        "run",
        "--name",
        &builder,
        "--network",
        "none",
        image,
        "bash",
        "-c",
        "mv /tmp /moved-tmp && ln -s /moved-tmp /tmp",
    ]);
    docker_text(&["commit", &builder, &moved]);
    docker_text(&["rm", &builder]);
    moved
}

/// The container sees the runner directory at another path than the host: the worker's
/// `argv[0]` and executable name no path of the host, the daemon finds it in the runner's
/// container, and `agentctl drain` still waits for the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_runner_whose_directory_has_another_path_inside_is_drained_after_its_job() {
    let Some(image) = prepare() else {
        return;
    };
    let image = moved_tmp_image(&image);
    let lab = BusyLab::start(&image, "cmoved").await;
    let (job, go) = lab.held_job(1).await;
    let (by_path, in_container) = lab.workers();
    assert_eq!(by_path, Vec::<u32>::new());
    assert_eq!(in_container.len(), 1);
    let argv = std::fs::read(format!("/proc/{}/cmdline", in_container[0])).unwrap();
    assert!(
        String::from_utf8_lossy(&argv).starts_with("/moved-tmp/"),
        "{argv:?}"
    );
    // The drain saw it there, not by the listener's `Running job:` line (which only counts for a
    // minute).
    let said = lab.drain_waits_for(job, &go).await;
    assert!(
        said.contains(&format!(
            "runner `{}` runs a job: `Runner.Worker` [{}] in container `{}`",
            lab.name, in_container[0], lab.container
        )),
        "{said}"
    );
}
