//! Knowing a runner runs a job without GitHub's runner list: `disable_update` upgrades and
//! `agentctl drain` with a registration token only (no REST access), and with REST access while
//! the list fails. Against the GitHub emulator and the fake runner release (whose listener runs
//! each job in a `bin/Runner.Worker` child, as the real one), process backend, runners as
//! `ra-runner`.

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use runner_agent_tests::emulator::{EmulatorOptions, Fault, PatSpec};
use runner_agent_tests::support::lab::{self, text, Auth, REPO, VERSION};
use runner_agent_tests::support::publish_fake_release;

const WAIT: Duration = Duration::from_secs(30);

/// How the daemon and `agentctl` reach GitHub.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// A PAT: GitHub's runner list is there.
    Pat,
    /// `registration_token_file` only: no REST access, no runner list.
    RegistrationToken,
}

/// The shared lab ([`lab::Lab`]) of `count` counted runners, with this file's job helpers.
struct Lab {
    lab: lab::Lab,
}

runner_agent_tests::deref_lab!(Lab.lab);

impl Lab {
    async fn new(count: u32, access: Access, defaults: &str) -> Lab {
        let auth = match access {
            Access::Pat => Auth::Pat(PatSpec::classic(&["repo"])),
            Access::RegistrationToken => Auth::RegistrationToken,
        };
        let lab = lab::Lab::builder()
            .emulator(EmulatorOptions {
                long_poll: Duration::from_secs(1),
                ..EmulatorOptions::default()
            })
            .auth(auth)
            .defaults(defaults)
            .count(count, "")
            .wait(WAIT)
            .start()
            .await;
        Lab { lab }
    }

    async fn wait_for(&self, what: &str, pred: impl FnMut() -> bool) {
        self.wait_until(what, pred).await;
    }

    /// Waits until the daemon wrote its state at least twice after now (two full passes).
    async fn wait_two_passes(&self) {
        self.wait_state_written_after("two daemon passes", 2).await;
    }

    /// Queues a job that signals it started (a file) and runs until the test lets it finish.
    /// Returns the job id, the "started" file and the "go" file.
    async fn held_job(&self) -> (u64, PathBuf, PathBuf) {
        // Written by the job, as the runner user.
        self.held_job_in(&self.dir.path().join("signals"), "").await
    }
}

/// The `Runner.Worker` processes whose `argv[0]` lies under `dir` (what the daemon looks for).
fn workers_of(dir: &Path) -> usize {
    runner_agent::daemon::busy::workers(dir).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_rest_a_disable_update_runner_is_upgraded_after_its_job_not_during_it() {
    let mut lab = Lab::new(1, Access::RegistrationToken, "disable_update = true").await;
    lab.start_daemon();
    let name = lab.names(1)[0].clone();
    let view = lab
        .wait_runner(&name, "online", |r| r.status == "online")
        .await;
    assert!(view.disable_update);
    let (job, _started, go) = lab.held_job().await;
    // The job runs in the listener's `Runner.Worker` child, as with the real runner.
    assert_eq!(
        workers_of(&lab.runner_dir(&name)),
        1,
        "{}",
        lab.runner_logs()
    );
    let diag = std::fs::read_dir(lab.runner_dir(&name).join("_diag"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("Worker_"));
    assert!(diag, "no _diag/Worker_*.log");
    let pid = lab.pid(&name).unwrap();

    // A newer release is published and configured while the job runs.
    publish_fake_release(&lab.emu, "2.337.0", &lab.dir.path().join("release-new"))
        .await
        .unwrap();
    let config = std::fs::read_to_string(&lab.config).unwrap();
    std::fs::write(
        &lab.config,
        config.replace(&format!("version = \"{VERSION}\""), "version = \"2.337.0\""),
    )
    .unwrap();
    kill(
        Pid::from_raw(lab.daemon.as_ref().unwrap().id() as i32),
        Signal::SIGHUP,
    )
    .unwrap();
    lab.wait_for("the configuration reloaded", || {
        lab.log().contains("configuration reloaded")
    })
    .await;
    // Passes after the reload: the daemon has no GitHub view of `busy`, yet leaves the job alone.
    lab.wait_two_passes().await;
    assert!(!lab.log().contains("upgrading it"), "{}", lab.log());
    assert_eq!(lab.pid(&name), Some(pid), "the runner was restarted");
    assert!(lab.alive(&name));
    assert_eq!(
        lab.emu.job(job).unwrap().result,
        None,
        "the job ended early"
    );

    // The job ends on its own: succeeded, not cancelled; then the runner is upgraded in place.
    lab.let_job_finish(job, &go).await;
    lab.wait_upgraded_in_place(&name, view.id, "2.337.0").await;
    assert!(lab
        .log()
        .contains("upgrading it to 2.337.0 while it is idle"));
}

/// Drains two runners, one of them running a job the test holds: the idle one stops at once,
/// the busy one only after its job, which succeeds. Returns the drain's output.
async fn drain_waits_for_the_job(lab: &Lab) -> String {
    let names = lab.names(2);
    for name in &names {
        lab.wait_runner(name, "online", |r| r.status == "online")
            .await;
    }
    let (job, _started, go) = lab.held_job().await;
    let busy = lab
        .emu
        .job(job)
        .unwrap()
        .runner_name
        .expect("no runner runs the job");
    let idle = names.iter().find(|n| **n != busy).unwrap().clone();

    let mut drain = lab
        .command(&["drain"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The idle one stops (the drain has looked at both), the busy one keeps its job.
    lab.wait_for("the idle runner stopped", || !lab.alive(&idle))
        .await;
    assert!(lab.alive(&busy), "busy runner stopped during its job");
    assert_eq!(workers_of(&lab.runner_dir(&busy)), 1);
    assert!(drain.try_wait().unwrap().is_none(), "drain did not wait");
    // The daemon, which sees the drain mark, leaves it running too.
    lab.wait_two_passes().await;
    assert!(lab.alive(&busy), "busy runner stopped during its job");
    assert_eq!(
        lab.emu.job(job).unwrap().result,
        None,
        "the job ended early"
    );

    lab.let_job_finish(job, &go).await;
    lab.wait_for("the drain ended", || drain.try_wait().unwrap().is_some())
        .await;
    let out = drain.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains(&format!("{idle}: drained (was idle")),
        "{said}"
    );
    assert!(
        said.contains(&format!("{busy}: drained (stopped after its job")),
        "{said}"
    );
    assert!(!lab.alive(&busy));
    text(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_rest_drain_waits_for_the_running_job() {
    let mut lab = Lab::new(2, Access::RegistrationToken, "").await;
    lab.start_daemon();
    let said = drain_waits_for_the_job(&lab).await;
    assert!(!said.contains("cancelled"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_the_running_job_while_github_runner_list_fails() {
    let mut lab = Lab::new(2, Access::Pat, "").await;
    lab.start_daemon();
    for name in lab.names(2) {
        lab.wait_runner(&name, "online", |r| r.status == "online")
            .await;
    }
    // GitHub's runner list answers 502 from now on (the runners' own protocol is unaffected).
    lab.emu.inject(Fault::Status {
        status: 502,
        count: 100_000,
        path_prefix: Some(format!("/api/v3/repos/{REPO}/actions/runners")),
    });
    let said = drain_waits_for_the_job(&lab).await;
    assert!(
        said.contains("cannot read GitHub's runner list, going by the jobs seen on this host"),
        "{said}"
    );
}
