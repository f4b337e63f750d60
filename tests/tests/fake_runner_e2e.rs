//! The fake runner release against the GitHub emulator: configure with the real flags, run,
//! take jobs as the runner user, and end the real ways (deleted registration, session conflict,
//! deprecation, ephemeral, self-update).

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::BufRead as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use runner_agent_tests::emulator::{Emulator, EmulatorOptions, RunnerView};
use runner_agent_tests::fake_runner::{build_release, listener_binary, BuiltRelease, ReleaseSpec};

const REPO: &str = "octo/hello";
const WAIT: Duration = Duration::from_secs(60);

async fn emulator() -> Emulator {
    let emu = Emulator::start(EmulatorOptions {
        long_poll: Duration::from_secs(1),
        ..EmulatorOptions::default()
    })
    .await
    .unwrap();
    emu.create_repo(REPO, false).unwrap();
    emu
}

fn release(version: &str, out: &Path) -> BuiltRelease {
    build_release(
        &ReleaseSpec {
            version: version.into(),
            arch: "x64".into(),
            listener: listener_binary(),
            pad_bytes: 0,
            pad_files: 0,
        },
        out,
    )
    .unwrap()
}

/// A release unpacked into a directory owned by `ra-runner`.
struct Install {
    dir: tempfile::TempDir,
    root: PathBuf,
}

fn install(version: &str) -> Install {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let built = release(version, &dir.path().join("out"));
    let root = dir.path().join("actions-runner");
    std::fs::create_dir(&root).unwrap();
    assert!(Command::new("tar")
        .arg("-xzf")
        .arg(&built.path)
        .arg("-C")
        .arg(&root)
        .status()
        .unwrap()
        .success());
    assert!(Command::new("chown")
        .args(["-R", "ra-runner:ra-runner"])
        .arg(&root)
        .status()
        .unwrap()
        .success());
    Install { dir, root }
}

/// `program` run as `ra-runner` in `cwd` with a clean environment.
fn as_runner(program: &str, cwd: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=ra-runner",
        "--regid=ra-runner",
        "--init-groups",
        "--",
        program,
    ])
    .current_dir(cwd)
    .env_clear()
    .env("PATH", "/usr/local/bin:/usr/bin:/bin")
    .env("HOME", "/var/lib/ra-runner")
    .env("FAKE_RUNNER_RETRY_DELAY_SECONDS", "0")
    .stdin(Stdio::null());
    c
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn configure(emu: &Emulator, root: &Path, name: &str, extra: &[&str]) -> Output {
    let token = emu.registration_token(REPO).unwrap();
    as_runner("./config.sh", root)
        .args([
            "--unattended",
            "--url",
            &emu.web_url_for(REPO),
            "--name",
            name,
        ])
        .args(extra)
        .env("ACTIONS_RUNNER_INPUT_TOKEN", &token)
        .output()
        .unwrap()
}

/// A running process whose stdout and stderr lines are collected.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(mut command: Command) -> Running {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for stream in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Running {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle`.
    fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        if self.seen.iter().any(|l| l.contains(needle)) {
            return;
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!("no line with {needle:?}; saw:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Waits for the process to exit; returns its code and every line it printed.
    fn wait_exit(&mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            assert!(
                Instant::now() < deadline,
                "still running; saw:\n{}",
                self.seen.join("\n")
            );
        };
        // Drain what the readers still hold.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
            self.seen.push(line);
        }
        (status.code(), self.seen.join("\n"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls the emulator's runner list until `pred` holds for the runner named `name`.
async fn wait_runner(
    emu: &Emulator,
    name: &str,
    what: &str,
    pred: impl Fn(&RunnerView) -> bool,
) -> RunnerView {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(r) = emu.runners(Some(REPO)).into_iter().find(|r| r.name == name) {
            if pred(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "runner {name} never {what}: {r:?}"
            );
        } else {
            assert!(Instant::now() < deadline, "runner {name} not registered");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A directory next to the install that jobs (as `ra-runner`) may write to.
fn shared_dir(inst: &Install) -> PathBuf {
    let dir = inst.dir.path().join("shared");
    if !dir.exists() {
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    dir
}

async fn wait_file(path: &Path) {
    let deadline = Instant::now() + WAIT;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_run_take_a_job_and_exit_when_deleted() {
    let emu = emulator().await;
    let inst = install("2.336.0");
    let root = &inst.root;
    let out = configure(&emu, root, "r1", &["--labels", "a,b"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("√ Settings Saved."), "{}", text(&out));

    // Files as the real runner writes them.
    let dot_runner = std::fs::read(root.join(".runner")).unwrap();
    assert!(dot_runner.starts_with(b"\xEF\xBB\xBF"));
    let settings: serde_json::Value = serde_json::from_slice(&dot_runner[3..]).unwrap();
    assert_eq!(settings["agentName"], "r1");
    assert_eq!(settings["gitHubUrl"], emu.web_url_for(REPO));
    assert_eq!(settings["workFolder"], "_work");
    assert_eq!(
        settings["serverUrl"],
        format!("{}/_services/pipelines/", emu.url())
    );
    assert!(settings.get("ephemeral").is_none());
    let creds = std::fs::read(root.join(".credentials")).unwrap();
    assert!(creds.starts_with(b"\xEF\xBB\xBF"));
    let creds: serde_json::Value = serde_json::from_slice(&creds[3..]).unwrap();
    assert_eq!(creds["scheme"], "OAuth");
    assert_eq!(creds["data"]["requireFipsCryptography"], "False");
    let rsa_mode = std::fs::metadata(root.join(".credentials_rsaparams"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(rsa_mode & 0o777, 0o600);
    let svc = std::fs::read_to_string(root.join("svc.sh")).unwrap();
    assert!(svc.contains("SVC_NAME=\"actions.runner._services.r1.service\""));

    // Run it (with a runner input in its environment, which jobs must never see); it comes
    // online with its labels.
    let secret = emu.registration_token(REPO).unwrap();
    let mut run = Running::start({
        let mut c = as_runner("./run.sh", root);
        c.env("ACTIONS_RUNNER_INPUT_TOKEN", &secret);
        c
    });
    run.wait_for("Current runner version: '2.336.0'");
    run.wait_for("Listening for Jobs");
    let view = wait_runner(&emu, "r1", "online", |r| r.status == "online").await;
    assert!(!view.busy);
    let mut labels = view.labels.clone();
    labels.sort();
    assert_eq!(labels, ["Linux", "X64", "a", "b", "self-hosted"]);

    // A job: runs as ra-runner, never sees the token, is busy while it runs, exits 3.
    let gate = inst.dir.path().join("gate");
    std::fs::create_dir(&gate).unwrap();
    let pid_file = gate.join("job.pid");
    std::fs::set_permissions(&gate, std::fs::Permissions::from_mode(0o777)).unwrap();
    let script = format!(
        "id -un\necho \"token=${{ACTIONS_RUNNER_INPUT_TOKEN:-absent}}\"\necho \"ws=$GITHUB_WORKSPACE\"\necho $$ > {pid}\nwhile [ ! -e {gate}/go ]; do sleep 0.05; done\nexit 3\n",
        pid = pid_file.display(),
        gate = gate.display()
    );
    let job = emu.queue_job(REPO, &["self-hosted", "a"], &script).unwrap();
    wait_file(&pid_file).await;
    wait_runner(&emu, "r1", "busy", |r| r.busy).await;
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_string();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains("ACTIONS_RUNNER_INPUT_"), "{environ}");
    assert!(!environ.contains(&secret), "{environ}");
    assert!(environ.contains("GITHUB_ACTIONS=true"), "{environ}");
    assert!(environ.contains("RUNNER_NAME=r1"), "{environ}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = String::from_utf8(
        Command::new("id")
            .args(["-u", "ra-runner"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(uid.trim())),
        "{status}"
    );
    std::fs::write(gate.join("go"), "").unwrap();
    let done = emu.wait_job(job, WAIT).await.unwrap();
    assert_eq!(done.result.as_deref(), Some("failed"));
    assert_eq!(done.exit_code, Some(3));
    let output = done.output.unwrap_or_default();
    assert!(
        output.starts_with("ra-runner\ntoken=absent\nws="),
        "{output}"
    );
    assert!(
        output.contains(&format!("ws={}/_work/hello/hello", root.display())),
        "{output}"
    );
    run.wait_for(&format!("Job job {job} completed with result: Failed"));
    wait_runner(&emu, "r1", "idle again", |r| !r.busy).await;

    // GitHub deletes the registration: the listener cleans up and exits 0; run.sh stops.
    assert!(emu.delete_runner(view.id));
    let (code, lines) = run.wait_exit();
    assert_eq!(code, Some(0), "{lines}");
    assert!(
        lines.contains(
            "The runner no longer exists on the server. Cleaning up local configuration."
        ),
        "{lines}"
    );
    assert!(
        lines.contains(
            "Runner listener exit with 0 return code, stop the service, no retry needed."
        ),
        "{lines}"
    );
    assert!(!root.join(".runner").exists());
    assert!(!root.join(".credentials").exists());
    assert!(!root.join(".credentials_rsaparams").exists());
}

fn listener(root: &Path) -> Command {
    let mut c = as_runner("./bin/Runner.Listener", root);
    c.arg("run");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_deleted_while_offline_stops_session_creation() {
    let emu = emulator().await;
    let inst = install("2.336.0");
    let root = &inst.root;
    let out = configure(&emu, root, "gone", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let id = emu
        .runners(Some(REPO))
        .into_iter()
        .find(|r| r.name == "gone")
        .unwrap()
        .id;
    assert!(emu.delete_runner(id));
    let out = listener(root).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "Failed to create a session. The runner registration has been deleted from the server, please re-configure. Runner registrations are automatically deleted for runners that have not connected to the service recently.\n"
    );
    // The local files stay, so configuring again is refused until `remove --local`.
    assert!(root.join(".runner").exists());
    let out = configure(&emu, root, "gone", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("Cannot configure the runner because it is already configured."));
    let out = as_runner("./config.sh", root)
        .args(["remove", "--local"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = configure(&emu, root, "gone", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_listener_gives_up_on_the_session_conflict_with_exit_5() {
    let emu = emulator().await;
    let inst = install("2.336.0");
    let root = &inst.root;
    let out = configure(&emu, root, "twice", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut first = Running::start(listener(root));
    first.wait_for("Listening for Jobs");
    let started = Instant::now();
    let out = listener(root)
        .env("FAKE_RUNNER_SESSION_CONFLICT_SECONDS", "2")
        .env("FAKE_RUNNER_SESSION_RETRY_SECONDS", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Runner connect error: A session for this runner already exists.. Retrying until reconnected.") || stderr.contains("Runner connect error: A session for this runner already exists. Retrying until reconnected."), "{stderr}");
    assert!(
        stderr.ends_with("Stop retry on SessionConflictException after retried for 2 seconds.\n"),
        "{stderr}"
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    // The first listener is unaffected; SIGINT stops it with 0.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    // setpriv execs the listener, so the child pid is the listener's.
    let (code, lines) = first.wait_exit();
    assert_eq!(code, Some(0), "{lines}");
    assert!(lines.contains("Exiting..."), "{lines}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deprecated_version_exits_1_or_7_with_the_servers_message() {
    let emu = emulator().await;
    let inst = install("2.300.0");
    let root = &inst.root;
    let out = configure(&emu, root, "old", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    emu.set_deprecated_below(Some("2.320.0"));
    let out = listener(root).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("Runner version v2.300.0 is deprecated and cannot receive messages."),
        "{}",
        text(&out)
    );
    let out = listener(root)
        .env("ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE", "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    // run.sh maps 7 only for the exact string "1".
    let out = as_runner("./run.sh", root)
        .env("ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert!(
        text(&out).contains("Runner listener exit with deprecated version exit code: 7."),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_name_is_refused_unless_replace() {
    let emu = emulator().await;
    let a = install("2.336.0");
    let b = install("2.336.0");
    assert_eq!(configure(&emu, &a.root, "dup", &[]).status.code(), Some(0));
    let out = configure(&emu, &b.root, "dup", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).ends_with("A runner exists with the same name dup.\n"),
        "{}",
        text(&out)
    );
    assert!(!b.root.join(".runner").exists());
    // `--replace true` makes `replace` an arg, so it is still refused (actions/runner#2538).
    let out = configure(&emu, &b.root, "dup", &["--replace", "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = configure(&emu, &b.root, "dup", &["--replace"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("√ Runner successfully replaced"),
        "{}",
        text(&out)
    );
    assert_eq!(
        emu.runners(Some(REPO))
            .iter()
            .filter(|r| r.name == "dup")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ephemeral_runner_takes_one_job_and_exits_0() {
    let emu = emulator().await;
    let inst = install("2.336.0");
    let root = &inst.root;
    let out = configure(&emu, root, "eph", &["--ephemeral"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let dot_runner = std::fs::read(root.join(".runner")).unwrap();
    let settings: serde_json::Value = serde_json::from_slice(&dot_runner[3..]).unwrap();
    assert_eq!(settings["ephemeral"], true);
    let mut run = Running::start(listener(root));
    run.wait_for("Listening for Jobs");
    let job = emu.queue_job(REPO, &["self-hosted"], "echo one").unwrap();
    let done = emu.wait_job(job, WAIT).await.unwrap();
    assert_eq!(
        (done.result.as_deref(), done.exit_code),
        (Some("succeeded"), Some(0))
    );
    assert_eq!(done.output.as_deref(), Some("one\n"));
    let (code, lines) = run.wait_exit();
    assert_eq!(code, Some(0), "{lines}");
    // The service de-registers it, and the runner drops its local configuration.
    assert!(emu.runners(Some(REPO)).iter().all(|r| r.name != "eph"));
    assert!(!root.join(".runner").exists() && !root.join(".credentials").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_is_killed_and_reported_cancelled() {
    let emu = emulator().await;
    let inst = install("2.336.0");
    let root = &inst.root;
    assert_eq!(configure(&emu, root, "cx", &[]).status.code(), Some(0));
    let mut run = Running::start(listener(root));
    run.wait_for("Listening for Jobs");
    let marker = shared_dir(&inst).join("started");
    let script = format!(
        "echo begin\ntouch {}\nsleep 300\necho never",
        marker.display()
    );
    let job = emu.queue_job(REPO, &["self-hosted"], &script).unwrap();
    run.wait_for(&format!("Running job: job {job}"));
    wait_runner(&emu, "cx", "busy", |r| r.busy).await;
    wait_file(&marker).await;
    emu.cancel_job(job).unwrap();
    let done = emu.wait_job(job, WAIT).await.unwrap();
    assert_eq!(done.result.as_deref(), Some("cancelled"));
    assert_eq!(done.output.as_deref(), Some("begin\n"));
    run.wait_for(&format!("Job job {job} completed with result: Canceled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_hooks_from_dot_env_run_around_the_steps_and_devices_open_as_the_runner_user() {
    let emu = emulator().await;
    let inst = install("2.336.0");
    let root = &inst.root;
    assert_eq!(configure(&emu, root, "hooks", &[]).status.code(), Some(0));
    let hooks = inst.dir.path().join("hooks");
    std::fs::create_dir(&hooks).unwrap();
    std::fs::write(hooks.join("started.sh"), "echo started-hook $RUNNER_NAME\n").unwrap();
    std::fs::write(hooks.join("completed.sh"), "echo completed-hook\n").unwrap();
    // A private /dev/kvm-like node the runner's group may open, and the host's root-only one.
    let dev = hooks.join("kvm");
    assert!(Command::new("mknod")
        .arg(&dev)
        .args(["c", "10", "232"])
        .status()
        .unwrap()
        .success());
    assert!(Command::new("chgrp")
        .arg("ra-runner")
        .arg(&dev)
        .status()
        .unwrap()
        .success());
    std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(0o660)).unwrap();
    let env = std::fs::read_to_string(root.join(".env")).unwrap();
    std::fs::write(
        root.join(".env"),
        format!(
            "{env}ACTIONS_RUNNER_HOOK_JOB_STARTED={}\nACTIONS_RUNNER_HOOK_JOB_COMPLETED={}\n",
            hooks.join("started.sh").display(),
            hooks.join("completed.sh").display()
        ),
    )
    .unwrap();
    let mut run = Running::start(listener(root));
    run.wait_for("Listening for Jobs");
    let script = format!(
        "exec 3<>{dev} && echo private-kvm-opened\nif exec 4<>/dev/kvm; then echo host-kvm-opened; else echo host-kvm-denied; fi 2>/dev/null\n",
        dev = dev.display()
    );
    let job = emu.queue_job(REPO, &["self-hosted"], &script).unwrap();
    let done = emu.wait_job(job, WAIT).await.unwrap();
    let output = done.output.unwrap_or_default();
    assert_eq!(done.result.as_deref(), Some("succeeded"), "{output}");
    let lines: Vec<&str> = output
        .lines()
        .filter(|l| !l.starts_with("A job") && !l.starts_with("Run '"))
        .collect();
    assert_eq!(
        lines,
        [
            "started-hook hooks",
            "private-kvm-opened",
            "host-kvm-denied",
            "completed-hook"
        ],
        "{output}"
    );

    // A failing started hook fails the job before its steps; the completed hook still runs.
    std::fs::write(hooks.join("started.sh"), "echo no; exit 4\n").unwrap();
    let job = emu
        .queue_job(REPO, &["self-hosted"], "echo step-ran")
        .unwrap();
    let done = emu.wait_job(job, WAIT).await.unwrap();
    let output = done.output.unwrap_or_default();
    assert_eq!(
        (done.result.as_deref(), done.exit_code),
        (Some("failed"), Some(4)),
        "{output}"
    );
    assert!(
        !output.contains("step-ran") && output.contains("completed-hook"),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_and_remove_with_a_pat() {
    let emu = emulator().await;
    let inst = install("2.336.0");
    let root = &inst.root;
    let pat = emu.add_pat(runner_agent_tests::emulator::PatSpec::classic(&["repo"]));
    // `--pat` instead of `--token`: the listener gets the registration token itself.
    let out = as_runner("./config.sh", root)
        .args([
            "--unattended",
            "--url",
            &emu.web_url_for(REPO),
            "--name",
            "rm",
        ])
        .env("ACTIONS_RUNNER_INPUT_PAT", &pat)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(emu.runners(Some(REPO)).iter().any(|r| r.name == "rm"));
    let out = as_runner("./config.sh", root)
        .arg("remove")
        .env("ACTIONS_RUNNER_INPUT_PAT", &pat)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("√ Runner removed successfully"),
        "{}",
        text(&out)
    );
    assert!(emu.runners(Some(REPO)).iter().all(|r| r.name != "rm"));
    assert!(!root.join(".runner").exists() && !root.join(".credentials").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jit_config_from_the_environment_runs_one_job() {
    let emu = emulator().await;
    let inst = install("2.336.0");
    let root = &inst.root;
    let pat = emu.add_pat(runner_agent_tests::emulator::PatSpec::classic(&["repo"]));
    let response: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/repos/{REPO}/actions/runners/generate-jitconfig", emu.api_url()))
        .bearer_auth(&pat)
        .json(&serde_json::json!({"name": "jit1", "runner_group_id": 1, "labels": ["jit"], "work_folder": "_work"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let encoded = response["encoded_jit_config"]
        .as_str()
        .unwrap_or_else(|| panic!("{response}"))
        .to_string();
    let mut run = Running::start({
        let mut c = listener(root);
        c.env("ACTIONS_RUNNER_INPUT_JITCONFIG", &encoded);
        c
    });
    run.wait_for("Listening for Jobs");
    assert!(root.join(".runner").exists());
    let job = emu.queue_job(REPO, &["jit"], "echo jit-job").unwrap();
    let done = emu.wait_job(job, WAIT).await.unwrap();
    assert_eq!(done.output.as_deref(), Some("jit-job\n"));
    let (code, lines) = run.wait_exit();
    assert_eq!(code, Some(0), "{lines}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_update_swaps_in_the_new_version_and_run_sh_relaunches_it() {
    let emu = emulator().await;
    let inst = install("2.336.0");
    let root = &inst.root;
    assert_eq!(configure(&emu, root, "upd", &[]).status.code(), Some(0));
    let newer = release("2.337.0", &inst.dir.path().join("new"));
    emu.publish_release(
        "2.337.0",
        vec![(
            "linux-x64".to_string(),
            runner_agent_tests::emulator::AssetSource::Path(newer.path.clone()),
        )],
        runner_agent_tests::emulator::ReleaseOptions::default(),
    )
    .await
    .unwrap();
    let mut run = Running::start(as_runner("./run.sh", root));
    run.wait_for("Current runner version: '2.336.0'");
    run.wait_for("Runner update in progress, do not shutdown runner.");
    run.wait_for("Downloading 2.337.0 runner");
    run.wait_for("Runner will exit shortly for update, should be back online within 10 seconds.");
    run.wait_for(
        "Runner listener exit because of updating, re-launch runner after successful update",
    );
    run.wait_for("Update finished successfully.");
    run.wait_for("Restarting runner...");
    run.wait_for("Current runner version: '2.337.0'");
    wait_runner(&emu, "upd", "on 2.337.0", |r| {
        r.version == "2.337.0" && r.status == "online"
    })
    .await;
    assert_eq!(
        std::fs::read_link(root.join("bin")).unwrap(),
        Path::new("bin.2.337.0")
    );
    assert_eq!(
        std::fs::read_link(root.join("externals")).unwrap(),
        Path::new("externals.2.337.0")
    );
    assert!(root.join("bin.2.336.0/Runner.Listener").is_file());
    assert!(
        !root.join("update.finished").exists(),
        "run-helper consumes it"
    );
    let logs: Vec<String> = std::fs::read_dir(root.join("_diag"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        logs.iter()
            .any(|l| l.starts_with("SelfUpdate-") && l.ends_with(".log.succeed")),
        "{logs:?}"
    );
    let out = Command::new(root.join("bin/Runner.Listener"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2.337.0\n");
    // The updated runner takes jobs.
    let job = emu
        .queue_job(REPO, &["self-hosted"], "echo after-update")
        .unwrap();
    let done = emu.wait_job(job, WAIT).await.unwrap();
    assert_eq!(done.output.as_deref(), Some("after-update\n"));
}

fn pool_id(root: &Path) -> u64 {
    let bytes = std::fs::read(root.join(".runner")).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes[3..]).unwrap();
    v["poolId"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_errors_are_retried_and_an_expired_session_is_replaced() {
    let emu = emulator().await;
    let inst = install("2.336.0");
    let root = &inst.root;
    assert_eq!(configure(&emu, root, "flaky", &[]).status.code(), Some(0));
    let mut run = Running::start({
        let mut c = listener(root);
        c.env("FAKE_RUNNER_POLL_RETRY_SECONDS", "0.2");
        c
    });
    run.wait_for("Listening for Jobs");
    emu.inject(runner_agent_tests::emulator::Fault::Status {
        status: 502,
        count: 3,
        path_prefix: Some(format!(
            "/_services/pipelines/_apis/distributedtask/pools/{}/messages",
            pool_id(root)
        )),
    });
    run.wait_for("Runner connect error:");
    run.wait_for("Runner reconnected.");
    let connect_errors = run
        .seen
        .iter()
        .filter(|l| l.contains("Runner connect error:"))
        .count();
    assert_eq!(
        connect_errors, 1,
        "only the first error is printed: {:?}",
        run.seen
    );
    // GitHub forgets a session that was not polled for 90 s: the listener opens a new one.
    let sessions = "POST /_services/pipelines/_apis/distributedtask/pools/{poolId}/sessions";
    assert_eq!(emu.request_count(sessions), 1);
    emu.advance_clock(120);
    wait_runner(&emu, "flaky", "online again", |r| {
        r.status == "online" && r.session_open
    })
    .await;
    assert_eq!(emu.request_count(sessions), 2);
    let job = emu
        .queue_job(REPO, &["self-hosted"], "echo still-here")
        .unwrap();
    let done = emu.wait_job(job, WAIT).await.unwrap();
    assert_eq!(done.output.as_deref(), Some("still-here\n"));
    assert!(
        run.child.try_wait().unwrap().is_none(),
        "the listener kept running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_warns_takes_one_job_and_keeps_its_configuration() {
    let emu = emulator().await;
    let inst = install("2.336.0");
    let root = &inst.root;
    assert_eq!(configure(&emu, root, "once", &[]).status.code(), Some(0));
    let mut run = Running::start({
        let mut c = listener(root);
        c.arg("--once");
        c
    });
    run.wait_for("Warning: '--once' is going to be deprecated in the future, please consider using '--ephemeral' during runner registration.");
    run.wait_for("Listening for Jobs");
    let job = emu.queue_job(REPO, &["self-hosted"], "echo once").unwrap();
    assert_eq!(
        emu.wait_job(job, WAIT).await.unwrap().output.as_deref(),
        Some("once\n")
    );
    let (code, lines) = run.wait_exit();
    assert_eq!(code, Some(0), "{lines}");
    assert!(root.join(".runner").exists());
    assert!(emu.runners(Some(REPO)).iter().any(|r| r.name == "once"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_registration_token_fails_with_the_real_http_line() {
    let emu = emulator().await;
    let inst = install("2.336.0");
    let root = &inst.root;
    let out = as_runner("./config.sh", root)
        .args([
            "--unattended",
            "--url",
            &emu.web_url_for(REPO),
            "--token",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "Http response code: NotFound from 'POST {}/actions/runner-registration'\n",
            emu.api_url()
        )
    );
    assert!(!root.join(".runner").exists());
    // Other defaults: --no-default-labels needs --labels.
    let token = emu.registration_token(REPO).unwrap();
    let out = as_runner("./config.sh", root)
        .args([
            "--unattended",
            "--url",
            &emu.web_url_for(REPO),
            "--no-default-labels",
        ])
        .env("ACTIONS_RUNNER_INPUT_TOKEN", &token)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).ends_with("Disabling default labels via --no-default-labels without specifying --labels is not supported\n"), "{}", text(&out));
    let out = as_runner("./config.sh", root)
        .args([
            "--unattended",
            "--url",
            &emu.web_url_for(REPO),
            "--no-default-labels",
            "--labels",
            "only",
            "--name",
            "nd",
            "--runnergroup",
            "default",
        ])
        .env("ACTIONS_RUNNER_INPUT_TOKEN", &token)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let view = emu
        .runners(Some(REPO))
        .into_iter()
        .find(|r| r.name == "nd")
        .unwrap();
    assert_eq!(view.labels, ["only"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ephemeral_runner_exits_4_for_an_update_and_3_otherwise() {
    let emu = emulator().await;
    let newer_dir = tempfile::tempdir().unwrap();
    let newer = release("2.340.0", newer_dir.path());
    emu.publish_release(
        "2.340.0",
        vec![(
            "linux-x64".to_string(),
            runner_agent_tests::emulator::AssetSource::Path(newer.path.clone()),
        )],
        runner_agent_tests::emulator::ReleaseOptions::default(),
    )
    .await
    .unwrap();
    for (flags, expected) in [(&["--ephemeral"][..], 4), (&[][..], 3)] {
        let inst = install("2.336.0");
        let root = &inst.root;
        let name = format!("u{expected}");
        let out = configure(&emu, root, &name, flags);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let out = listener(root).output().unwrap();
        assert_eq!(out.status.code(), Some(expected), "{}", text(&out));
        assert!(text(&out).contains(
            "Runner will exit shortly for update, should be back online within 10 seconds."
        ));
        // The detached update script finishes the swap after the listener is gone.
        wait_file(&root.join("update.finished")).await;
        assert_eq!(
            std::fs::read_link(root.join("bin")).unwrap(),
            Path::new("bin.2.340.0")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runsvc_supervises_the_real_listener_and_stops_when_it_exits_0() {
    let emu = emulator().await;
    let inst = install("2.336.0");
    let root = &inst.root;
    assert_eq!(configure(&emu, root, "svc", &[]).status.code(), Some(0));
    // What `svc.sh install` does before systemd starts the unit.
    std::fs::copy(root.join("bin/runsvc.sh"), root.join("runsvc.sh")).unwrap();
    let mut run = Running::start(as_runner("./runsvc.sh", root));
    run.wait_for(".path=/usr/local/bin:/usr/bin:/bin");
    run.wait_for("Starting Runner listener with startup type: service");
    run.wait_for("Listening for Jobs");
    let id = wait_runner(&emu, "svc", "online", |r| r.status == "online")
        .await
        .id;
    assert!(emu.delete_runner(id));
    let (code, lines) = run.wait_exit();
    assert_eq!(code, Some(0), "{lines}");
    assert!(
        lines.contains("Runner listener exited with error code 0"),
        "{lines}"
    );
    assert!(
        lines.contains(
            "Runner listener exit with 0 return code, stop the service, no retry needed."
        ),
        "{lines}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cancels_the_running_job_and_exits_0() {
    let emu = emulator().await;
    let inst = install("2.336.0");
    let root = &inst.root;
    assert_eq!(configure(&emu, root, "term", &[]).status.code(), Some(0));
    let mut run = Running::start(listener(root));
    run.wait_for("Listening for Jobs");
    let marker = shared_dir(&inst).join("started");
    let script = format!("echo working\ntouch {}\nsleep 300", marker.display());
    let job = emu.queue_job(REPO, &["self-hosted"], &script).unwrap();
    run.wait_for(&format!("Running job: job {job}"));
    wait_runner(&emu, "term", "busy", |r| r.busy).await;
    wait_file(&marker).await;
    // setpriv execs the listener, so the child's pid is the listener's.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (code, lines) = run.wait_exit();
    assert_eq!(code, Some(0), "{lines}");
    assert!(lines.contains("Exiting..."), "{lines}");
    let done = emu.wait_job(job, WAIT).await.unwrap();
    assert_eq!(done.result.as_deref(), Some("cancelled"));
    assert_eq!(done.output.as_deref(), Some("working\n"));
    // Its session is closed: the runner is offline at once.
    wait_runner(&emu, "term", "without a session", |r| !r.session_open).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_pass_or_fail_and_exits_0() {
    let emu = emulator().await;
    let inst = install("2.336.0");
    let root = &inst.root;
    let pat = emu.add_pat(runner_agent_tests::emulator::PatSpec::classic(&["repo"]));
    for (token, verdict) in [(pat.as_str(), "P A S S"), ("ghp_notatoken", "F A I L")] {
        let out = as_runner("./run.sh", root)
            .args(["--check", "--url", &emu.web_url_for(REPO)])
            .env("ACTIONS_RUNNER_INPUT_PAT", token)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("**  Check:               GitHub connection"),
            "{stdout}"
        );
        assert!(stdout.contains(verdict), "{verdict}: {stdout}");
        assert!(!text(&out).contains("Unrecognized"), "{}", text(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disableupdate_is_stored_and_keeps_the_old_version_running() {
    let emu = emulator().await;
    let inst = install("2.336.0");
    let root = &inst.root;
    let newer = release("2.341.0", &inst.dir.path().join("new"));
    emu.publish_release(
        "2.341.0",
        vec![(
            "linux-x64".to_string(),
            runner_agent_tests::emulator::AssetSource::Path(newer.path.clone()),
        )],
        runner_agent_tests::emulator::ReleaseOptions::default(),
    )
    .await
    .unwrap();
    let out = configure(&emu, root, "pinned", &["--disableupdate"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let bytes = std::fs::read(root.join(".runner")).unwrap();
    let settings: serde_json::Value = serde_json::from_slice(&bytes[3..]).unwrap();
    assert_eq!(settings["disableUpdate"], true);
    let mut run = Running::start(listener(root));
    run.wait_for("Listening for Jobs");
    let view = wait_runner(&emu, "pinned", "online", |r| r.status == "online").await;
    assert!(view.disable_update);
    let job = emu
        .queue_job(REPO, &["self-hosted"], "echo pinned")
        .unwrap();
    assert_eq!(
        emu.wait_job(job, WAIT).await.unwrap().output.as_deref(),
        Some("pinned\n")
    );
    assert!(
        run.seen
            .iter()
            .all(|l| !l.contains("Runner update in progress")),
        "{:?}",
        run.seen
    );
    assert!(root.join("bin").is_dir() && !root.join("bin").is_symlink());
    assert_eq!(
        emu.runners(Some(REPO))
            .into_iter()
            .find(|r| r.name == "pinned")
            .unwrap()
            .version,
        "2.336.0"
    );
}

/// The processes whose parent is `parent`: (pid, argv).
fn children_of(parent: u32) -> Vec<(u32, Vec<String>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rfind(')')
            .and_then(|at| stat[at + 1..].split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let argv = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        out.push((pid, argv));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_job_runs_in_a_runner_worker_child_that_lives_as_long_as_the_job() {
    let emu = emulator().await;
    let inst = install("2.336.0");
    let root = &inst.root;
    assert_eq!(configure(&emu, root, "worker", &[]).status.code(), Some(0));
    let mut command = listener(root);
    // Its own process group, as under the process backend (which signals the whole group).
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut run = Running::start(command);
    run.wait_for("Listening for Jobs");
    let listener_pid = run.child.id();
    assert!(children_of(listener_pid).is_empty());

    // A job that runs until the test lets it finish.
    let shared = shared_dir(&inst);
    let (started, go) = (shared.join("started"), shared.join("go"));
    let script = format!(
        "touch {}; while [ ! -e {} ]; do sleep 0.1; done; echo done",
        started.display(),
        go.display()
    );
    let job = emu.queue_job(REPO, &["self-hosted"], &script).unwrap();
    run.wait_for(&format!("Running job: job {job}"));
    wait_file(&started).await;
    // `<root>/bin/Runner.Worker spawnclient <in> <out>`, a child of the listener, in `bin`.
    let workers = children_of(listener_pid);
    let [(worker, argv)] = workers.as_slice() else {
        panic!("not one child of the listener: {workers:?}");
    };
    let bin = root.join("bin");
    assert_eq!(
        argv,
        &[
            bin.join("Runner.Worker").display().to_string(),
            "spawnclient".to_owned(),
            "0".to_owned(),
            "1".to_owned()
        ]
    );
    let proc_dir = PathBuf::from(format!("/proc/{worker}"));
    assert_eq!(
        std::fs::read_to_string(proc_dir.join("comm"))
            .unwrap()
            .trim(),
        "Runner.Worker"
    );
    assert_eq!(
        std::fs::read_link(proc_dir.join("exe")).unwrap(),
        bin.join("Runner.Worker")
    );
    assert_eq!(std::fs::read_link(proc_dir.join("cwd")).unwrap(), bin);
    let log = std::fs::read_dir(root.join("_diag"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("Worker_") && name.ends_with("-utc.log")
        })
        .expect("no _diag/Worker_*-utc.log");
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains(&format!("Job message received: job {job}")));

    // The job ends: the worker with it, and the listener says so.
    std::fs::write(&go, "").unwrap();
    let done = emu.wait_job(job, WAIT).await.unwrap();
    assert_eq!(done.result.as_deref(), Some("succeeded"), "{done:?}");
    assert_eq!(done.output.as_deref(), Some("done\n"));
    run.wait_for(&format!("Job job {job} completed with result: Succeeded"));
    let deadline = Instant::now() + WAIT;
    while !children_of(listener_pid).is_empty() {
        assert!(Instant::now() < deadline, "the worker outlived its job");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains(&format!("Job job {job} completed with result: succeeded")));

    // SIGINT to the whole group (what a stopped service gets) cancels a running job.
    std::fs::remove_file(&started).unwrap();
    let job = emu
        .queue_job(
            REPO,
            &["self-hosted"],
            &format!("touch {}; sleep 300", started.display()),
        )
        .unwrap();
    wait_file(&started).await;
    assert_eq!(children_of(listener_pid).len(), 1);
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(listener_pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let (code, lines) = run.wait_exit();
    assert_eq!(code, Some(0), "{lines}");
    assert!(
        lines.contains(&format!("Job job {job} completed with result: Canceled")),
        "{lines}"
    );
    let done = emu.wait_job(job, WAIT).await.unwrap();
    assert_eq!(done.result.as_deref(), Some("cancelled"), "{done:?}");
}
