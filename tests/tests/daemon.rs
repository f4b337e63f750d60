//! `agentctl daemon` against the GitHub emulator with the fake runner release, process backend,
//! runners as `ra-runner`, a PAT (so the daemon sees GitHub's runner list).

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use runner_agent_tests::support::agentctl;
use runner_agent_tests::support::lab::{self, text, REPO, VERSION};
use runner_agent_tests::support::publish_fake_release;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use runner_agent_tests::emulator::PatSpec;

const WAIT: Duration = Duration::from_secs(30);

/// The shared lab ([`lab::Lab`]) of `count` counted runners, with this file's PAT at hand.
struct Lab {
    lab: lab::Lab,
    pat: String,
}

runner_agent_tests::deref_lab!(Lab.lab);

impl Lab {
    async fn new(count: u32) -> Lab {
        Lab::with(count, "", "").await
    }

    /// A lab whose configuration has `defaults` added to `[defaults]` and `extra` at the end.
    async fn with(count: u32, defaults: &str, extra: &str) -> Lab {
        let lab = lab::Lab::builder()
            .defaults(defaults)
            .count(count, extra)
            .wait(WAIT)
            .start()
            .await;
        let pat = lab.pat.clone().unwrap();
        Lab { lab, pat }
    }

    /// The daemon's view of runner `name` in `status --json`.
    fn daemon_view(status: &serde_json::Value, name: &str) -> serde_json::Value {
        lab::Lab::daemon_view(status, name)
    }

    /// Write a file the way secret managers do: a new file renamed over the old one.
    fn replace_secret(&self, path: &std::path::Path, value: &str) {
        lab::write_secret(path, value);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_makes_the_daemon_exit_78_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "version = 1\n[github]\nurl = 5\n").unwrap();
    let started = Instant::now();
    let out: Output = Command::new(agentctl())
        .arg("--config")
        .arg(&config)
        .arg("daemon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("agent.toml"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_registers_restarts_dead_runners_and_re_registers_deleted_ones() {
    let mut lab = Lab::new(2).await;
    lab.start_daemon();
    let names = lab.names(2);
    let mut ids = Vec::new();
    for name in &names {
        let view = lab
            .wait_runner(name, "online", |r| r.status == "online")
            .await;
        assert!(view.labels.iter().any(|l| l == "host-labhost"));
        ids.push(view.id);
    }

    // A killed runner is started again, with the same registration.
    let old = lab.pid(&names[0]).unwrap();
    kill(Pid::from_raw(-old), Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + WAIT;
    while lab.pid(&names[0]).is_none_or(|pid| pid == old) {
        assert!(
            Instant::now() < deadline,
            "runner not restarted:\n{}",
            lab.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let view = lab
        .wait_runner(&names[0], "online again", |r| r.status == "online")
        .await;
    assert_eq!(view.id, ids[0], "re-registered instead of restarted");
    assert_eq!(lab.emu.runners(Some(REPO)).len(), 2);

    // A registration deleted on GitHub is registered again, under a new id.
    assert!(lab.emu.delete_runner(ids[1]));
    let view = lab
        .wait_runner(&names[1], "registered again", |r| {
            r.id != ids[1] && r.status == "online"
        })
        .await;
    assert_ne!(view.id, ids[1]);
    assert_eq!(lab.emu.runners(Some(REPO)).len(), 2, "{}", lab.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_and_keeps_the_old_one_when_the_new_one_is_bad() {
    let mut lab = Lab::new(1).await;
    let good = std::fs::read_to_string(&lab.config).unwrap();
    lab.start_daemon();
    let names = lab.names(2);
    lab.wait_runner(&names[0], "online", |r| r.status == "online")
        .await;
    let pid = Pid::from_raw(lab.daemon.as_ref().unwrap().id() as i32);

    std::fs::write(&lab.config, "version = 1\n[github]\nurl = 5\n").unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + WAIT;
    while !lab
        .log()
        .contains("keeping the previous configuration, the new one is invalid")
    {
        assert!(
            Instant::now() < deadline,
            "no reload report:\n{}",
            lab.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(lab.daemon.as_mut().unwrap().try_wait().unwrap().is_none());

    std::fs::write(&lab.config, good.replace("count = 1", "count = 2")).unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    lab.wait_runner(&names[1], "online", |r| r.status == "online")
        .await;
    assert!(
        lab.log().contains("configuration reloaded"),
        "{}",
        lab.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_daemon_and_leaves_the_runners_running() {
    let mut lab = Lab::new(1).await;
    lab.start_daemon();
    let name = &lab.names(1)[0];
    let view = lab
        .wait_runner(name, "online", |r| r.status == "online")
        .await;
    let pid = lab.daemon.as_ref().unwrap().id() as i32;
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    assert_eq!(lab.wait_exit(), Some(0), "{}", lab.log());
    // Its last word is in the state file, and `status` knows it is gone.
    let status = lab.status_json();
    assert_eq!(status["daemon"]["running"], false, "{status:#}");
    assert_eq!(Lab::daemon_view(&status, name)["state"], "running");
    let runner = lab.pid(name).unwrap();
    assert!(kill(Pid::from_raw(runner), None).is_ok(), "runner died");
    let after = lab
        .wait_runner(name, "online", |r| r.status == "online")
        .await;
    assert_eq!(after.id, view.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_pat_opens_the_circuit_and_a_new_pat_file_heals_without_a_restart() {
    let mut lab = Lab::new(1).await;
    lab.start_daemon();
    let name = lab.names(1)[0].clone();
    let view = lab
        .wait_runner(&name, "online", |r| r.status == "online")
        .await;

    // Revoked: the daemon stops calling GitHub and `status` says why.
    assert!(lab.emu.revoke_token(&lab.pat));
    let status = lab
        .wait_status("the open circuit", |s| {
            s["daemon"]["github_circuit"].is_string()
        })
        .await;
    let reason = status["daemon"]["github_circuit"].as_str().unwrap();
    assert!(reason.contains("401"), "{reason}");
    assert!(!reason.contains(&lab.pat), "secret in status: {reason}");
    let out = lab.command(&["status"]).output().unwrap();
    assert!(
        text(&out).contains("github: not called until a secret file changes"),
        "{}",
        text(&out)
    );

    // Meanwhile GitHub forgets the runner: without credentials it cannot come back.
    assert!(lab.emu.delete_runner(view.id));
    lab.wait_status("the runner waiting for GitHub", |s| {
        Lab::daemon_view(s, &name)["state"] == "circuit-open"
    })
    .await;
    assert!(lab.emu.runners(Some(REPO)).is_empty());

    // A new PAT file: picked up at once, no restart.
    let new_pat = lab.emu.add_pat(PatSpec::classic(&["repo"]));
    let written = Instant::now();
    lab.replace_secret(&lab.dir.path().join("github-pat"), &new_pat);
    let back = lab
        .wait_runner(&name, "registered again", |r| r.status == "online")
        .await;
    let took = written.elapsed();
    println!("recovery after a new PAT file: {} ms", took.as_millis());
    assert_ne!(back.id, view.id);
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(lab.daemon.as_mut().unwrap().try_wait().unwrap().is_none());
    let log = lab.log();
    assert!(log.contains("changed: reloading the credentials"), "{log}");
    for secret in [&lab.pat, &new_pat] {
        assert!(!log.contains(secret.as_str()), "secret in the log");
    }
    let status = lab
        .wait_status("the circuit closed", |s| {
            s["daemon"]["github_circuit"].is_null()
        })
        .await;
    assert_eq!(status["daemon"]["running"], true);
    assert_eq!(Lab::daemon_view(&status, &name)["state"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_dropped_from_the_config_is_deregistered_and_removed_on_sighup() {
    let mut lab = Lab::new(2).await;
    let config = std::fs::read_to_string(&lab.config).unwrap();
    lab.start_daemon();
    let names = lab.names(2);
    let mut views = Vec::new();
    for name in &names {
        views.push(
            lab.wait_runner(name, "online", |r| r.status == "online")
                .await,
        );
    }
    let kept_pid = lab.pid(&names[0]).unwrap();
    assert!(lab.runner_dir(&names[1]).join(".runner").exists());

    std::fs::write(&lab.config, config.replace("count = 2", "count = 1")).unwrap();
    kill(lab.daemon_pid(), Signal::SIGHUP).unwrap();
    // The agent's record goes last (what is left of a removal cut short is found by it): the
    // removal is done once it is gone, not when the directory is.
    let record = lab
        .dir
        .path()
        .join("state/runners")
        .join(format!("{}.json", names[1]));
    let deadline = Instant::now() + WAIT;
    while lab
        .emu
        .runners(Some(REPO))
        .iter()
        .any(|r| r.name == names[1])
        || record.exists()
    {
        assert!(
            Instant::now() < deadline,
            "runner not removed:\n{}",
            lab.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!lab.runner_dir(&names[1]).exists());
    // The other one is untouched: same registration, same process.
    let left = lab.emu.runners(Some(REPO));
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].id, views[0].id);
    assert_eq!(lab.pid(&names[0]), Some(kept_pid));
    assert!(lab.alive(&names[0]));
    assert!(lab.log().contains("no longer configured"), "{}", lab.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_conflict_waits_for_the_old_session_and_starts_the_same_registration() {
    let metrics = "[daemon]\nmetrics_file = \"METRICS\"\n";
    let mut lab = Lab::with(1, "disable_update = true", "").await;
    let metrics_file = lab.dir.path().join("metrics/runner_agent.prom");
    let config = std::fs::read_to_string(&lab.config).unwrap();
    std::fs::write(
        &lab.config,
        format!(
            "{config}\n{}",
            metrics.replace("METRICS", &metrics_file.display().to_string())
        ),
    )
    .unwrap();
    lab.start_daemon_with(&["--session-wait-secs", "4"]);
    let name = lab.names(1)[0].clone();
    let view = lab
        .wait_runner(&name, "online", |r| r.status == "online")
        .await;
    // The listener reads `.env` at start: shorten its 240 s of session-conflict retries.
    std::fs::write(
        lab.runner_dir(&name).join(".env"),
        "FAKE_RUNNER_SESSION_CONFLICT_SECONDS=1\nFAKE_RUNNER_SESSION_RETRY_SECONDS=1\n",
    )
    .unwrap();

    // Killed without closing its session: the next listener meets that session and exits 5.
    let old = lab.pid(&name).unwrap();
    kill(Pid::from_raw(-old), Signal::SIGKILL).unwrap();
    let status = lab
        .wait_status("the session conflict", |s| {
            let d = Lab::daemon_view(s, &name);
            d["state"] == "session-conflict" && d["last_exit_code"] == 5
        })
        .await;
    let daemon = Lab::daemon_view(&status, &name);
    assert!(daemon["next_retry"].is_string(), "{daemon}");
    assert!(!lab.alive(&name), "started during the wait");

    // The old session expires on GitHub; the same registration comes back.
    lab.emu.advance_clock(120);
    let back = lab
        .wait_runner(&name, "online again", |r| {
            r.status == "online" && r.session_open
        })
        .await;
    assert_eq!(back.id, view.id, "registered again instead of waiting");
    let status = lab
        .wait_status("running again", |s| {
            Lab::daemon_view(s, &name)["state"] == "running"
        })
        .await;
    assert!(
        Lab::daemon_view(&status, &name)["restarts"]
            .as_u64()
            .unwrap()
            >= 2
    );

    // The metrics file says the same.
    let deadline = Instant::now() + WAIT;
    let metrics = loop {
        let text = std::fs::read_to_string(&metrics_file).unwrap_or_default();
        if text.contains(&format!(
            "runner_agent_runner_online{{runner=\"{name}\"}} 1"
        )) {
            break text;
        }
        assert!(Instant::now() < deadline, "metrics: {text}\n{}", lab.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let sample = |family: &str| -> f64 {
        let prefix = format!("{family}{{runner=\"{name}\"");
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {family} in {metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(sample("runner_agent_runner_registered"), 1.0);
    assert_eq!(sample("runner_agent_runner_busy"), 0.0);
    assert_eq!(sample("runner_agent_runner_last_exit_code"), 5.0);
    assert!(sample("runner_agent_runner_restarts_total") >= 2.0);
    // The only release is the runner's own: the whole window is left.
    assert_eq!(sample("runner_agent_runner_update_window_days_left"), 30.0);
    assert!(
        metrics.contains(&format!("version=\"{VERSION}\"")),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE runner_agent_runner_restarts_total counter"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_stops_an_idle_runner_at_once_and_a_busy_one_after_its_job() {
    let mut lab = Lab::new(2).await;
    lab.start_daemon();
    let names = lab.names(2);
    for name in &names {
        lab.wait_runner(name, "online", |r| r.status == "online")
            .await;
    }
    // A job that runs until the test lets it finish.
    let go = lab.dir.path().join("go");
    let job = lab
        .emu
        .queue_job(
            REPO,
            &["lab"],
            &format!(
                "while [ ! -e {} ]; do sleep 0.1; done; echo done",
                go.display()
            ),
        )
        .unwrap();
    let busy = lab.wait_runner_any("busy", |r| r.busy).await;
    let idle = names.iter().find(|n| **n != busy.name).unwrap().clone();

    let mut drain = lab
        .command(&["drain"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The idle one stops at once; the busy one keeps its job.
    let deadline = Instant::now() + WAIT;
    while lab.alive(&idle) {
        assert!(Instant::now() < deadline, "idle runner not stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(lab.alive(&busy.name), "busy runner stopped during its job");
    assert!(drain.try_wait().unwrap().is_none(), "drain did not wait");

    lab.let_job_finish(job, &go).await;
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = drain.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "drain never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let out = drain.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(0), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("{idle}: drained (was idle")),
        "{said}"
    );
    assert!(
        said.contains(&format!("{}: drained (stopped after its job", busy.name)),
        "{said}"
    );
    assert!(!lab.alive(&busy.name));

    // The daemon leaves both stopped (it has run passes since: its state says drained).
    let status = lab
        .wait_status("both drained", |s| {
            names
                .iter()
                .all(|n| Lab::daemon_view(s, n)["state"] == "drained")
        })
        .await;
    assert!(names.iter().all(|n| !lab.alive(n)), "{status:#}");

    // Undrained: the daemon starts it again, same registration.
    let out = lab.command(&["undrain", &idle]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    lab.wait_status("undrained runner running", |s| {
        Lab::daemon_view(s, &idle)["state"] == "running"
    })
    .await;
    assert!(lab.alive(&idle));
    assert!(!lab.alive(&busy.name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_update_is_left_to_the_runner_scripts() {
    let mut lab = Lab::new(1).await;
    lab.start_daemon();
    let name = lab.names(1)[0].clone();
    let view = lab
        .wait_runner(&name, "online", |r| r.status == "online")
        .await;
    let pid = lab.pid(&name).unwrap();
    publish_fake_release(&lab.emu, "2.337.0", &lab.dir.path().join("release-new"))
        .await
        .unwrap();
    lab.emu.set_expected_runner_version(None, "2.337.0");
    // The listener updates itself and exits 3; run.sh waits for the update and starts the new
    // version. The daemon neither restarts nor registers it.
    let updated = lab
        .wait_runner(&name, "updated", |r| {
            r.version == "2.337.0" && r.status == "online"
        })
        .await;
    assert_eq!(updated.id, view.id);
    assert_eq!(lab.pid(&name), Some(pid), "the daemon restarted it");
    let status = lab.status_json();
    assert_eq!(
        Lab::daemon_view(&status, &name)["restarts"],
        0,
        "{status:#}"
    );
    assert!(!lab.log().contains("starting runner"), "{}", lab.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_rest_a_registration_deleted_while_the_host_was_down_is_registered_again() {
    let mut lab = Lab::new(1).await;
    let token = lab.emu.registration_token(REPO).unwrap();
    lab.replace_secret(&lab.path("registration-token"), &token);
    lab.edit_config(
        "pat_file = \"github-pat\"",
        "registration_token_file = \"registration-token\"",
    );
    lab.start_daemon();
    let name = lab.names(1)[0].clone();
    let view = lab
        .wait_runner(&name, "online", |r| r.status == "online")
        .await;

    // The host goes down (daemon and runner killed); GitHub deletes the registration meanwhile.
    lab.daemon.as_mut().unwrap().kill().unwrap();
    lab.wait_exit();
    let pid = lab.pid(&name).unwrap();
    kill(Pid::from_raw(-pid), Signal::SIGKILL).unwrap();
    assert!(lab.emu.delete_runner(view.id));

    // Back up: the runner starts, the listener says the registration was deleted (exit 1), and
    // the daemon clears its local files and registers it again with the token file.
    lab.start_daemon();
    let back = lab
        .wait_runner(&name, "registered again", |r| r.status == "online")
        .await;
    assert_ne!(back.id, view.id);
    let status = lab
        .wait_status("the exit read", |s| {
            Lab::daemon_view(s, &name)["state"] == "running"
        })
        .await;
    let daemon = Lab::daemon_view(&status, &name);
    assert_eq!(daemon["last_exit_code"], 1, "{daemon}");
    assert_eq!(daemon["last_exit"], "registration deleted on GitHub");
    assert!(lab.log().contains("its registration was deleted on GitHub"));
    assert!(!lab.log().contains(&token), "secret in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disable_update_runner_is_upgraded_by_the_daemon_once_idle() {
    let mut lab = Lab::with(1, "disable_update = true", "").await;
    lab.start_daemon();
    let name = lab.names(1)[0].clone();
    let view = lab
        .wait_runner(&name, "online", |r| r.status == "online")
        .await;
    assert!(view.disable_update);
    // Busy with a job the test holds.
    let go = lab.dir.path().join("go");
    let job = lab
        .emu
        .queue_job(
            REPO,
            &["lab"],
            &format!("while [ ! -e {} ]; do sleep 0.1; done", go.display()),
        )
        .unwrap();
    lab.wait_runner(&name, "busy", |r| r.busy).await;

    // A newer release, configured: not while the job runs.
    publish_fake_release(&lab.emu, "2.337.0", &lab.dir.path().join("release-new"))
        .await
        .unwrap();
    lab.edit_config(&format!("version = \"{VERSION}\""), "version = \"2.337.0\"");
    kill(lab.daemon_pid(), Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + WAIT;
    while !lab.log().contains("configuration reloaded") {
        assert!(Instant::now() < deadline, "{}", lab.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Passes after the reload (the state is written at least every resync, 2 s), the runner
    // still busy.
    lab.wait_state_written_after("a pass after the reload", 2)
        .await;
    assert!(lab.emu.runners(Some(REPO))[0].busy);
    assert!(!lab.log().contains("upgrading it"), "{}", lab.log());

    lab.let_job_finish(job, &go).await;
    lab.wait_upgraded_in_place(&name, view.id, "2.337.0").await;
    let status = lab.status_json();
    assert_eq!(
        status["runners"][0]["local"]["version"], "2.337.0",
        "{status:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_runner_found_running_is_stopped_by_the_daemon_once_idle() {
    let mut lab = Lab::new(1).await;
    lab.start_daemon();
    let name = lab.names(1)[0].clone();
    lab.wait_runner(&name, "online", |r| r.status == "online")
        .await;
    // As after a reboot: marked drained, yet its (enabled) service started it.
    let mark = lab.dir.path().join("state/daemon/drain").join(&name);
    std::fs::create_dir_all(mark.parent().unwrap()).unwrap();
    std::fs::write(&mark, "").unwrap();
    let deadline = Instant::now() + WAIT;
    while lab.alive(&name) {
        assert!(Instant::now() < deadline, "not stopped:\n{}", lab.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lab.wait_status("drained", |s| {
        Lab::daemon_view(s, &name)["state"] == "drained"
    })
    .await;
    assert!(!lab.alive(&name));
    // `agentctl start` ends the drain.
    let out = lab.command(&["start", &name]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!mark.exists());
    lab.wait_status("running", |s| {
        Lab::daemon_view(s, &name)["state"] == "running"
    })
    .await;
    // `agentctl stop` while the daemon runs: stays stopped.
    let out = lab.command(&["stop", &name]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    lab.wait_status("held stopped", |s| {
        Lab::daemon_view(s, &name)["state"] == "drained"
    })
    .await;
    assert!(!lab.alive(&name), "the daemon started a stopped runner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_registration_token_file_cuts_the_backoff_short() {
    let mut lab = Lab::new(1).await;
    let file = lab.path("registration-token");
    lab.replace_secret(&file, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    lab.edit_config(
        "pat_file = \"github-pat\"",
        "registration_token_file = \"registration-token\"",
    );
    lab.start_daemon();
    let name = lab.names(1)[0].clone();
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    // Refused again and again, until the next retry is a while away.
    let status = lab
        .wait_status("a long backoff", |s| {
            let daemon = Lab::daemon_view(s, &name);
            daemon["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("refused"))
                && daemon["next_retry"]
                    .as_str()
                    .and_then(|t| time::OffsetDateTime::parse(t, rfc3339).ok())
                    .is_some_and(|t| {
                        t - time::OffsetDateTime::now_utc() >= time::Duration::seconds(4)
                    })
        })
        .await;
    let next = Lab::daemon_view(&status, &name)["next_retry"]
        .as_str()
        .and_then(|t| time::OffsetDateTime::parse(t, rfc3339).ok())
        .unwrap();

    let token = lab.emu.registration_token(REPO).unwrap();
    let written = Instant::now();
    lab.replace_secret(&file, &token);
    lab.wait_runner(&name, "registered", |r| r.status == "online")
        .await;
    println!(
        "registered {} ms after the new token file",
        written.elapsed().as_millis()
    );
    assert!(
        time::OffsetDateTime::now_utc() < next,
        "waited for the backoff ({next}) instead of acting on the new file:\n{}",
        lab.log()
    );
    assert!(!lab.log().contains(&token), "secret in the log");
}

/// Replace runner `name`'s `bin/Runner.Listener` by one that exits 1 at once (renamed in, so the
/// release's shared hard link is untouched); the original is kept as `Runner.Listener.orig`.
fn break_listener(lab: &Lab, name: &str) {
    let bin = lab.runner_dir(name).join("bin");
    let broken = bin.join("Runner.Listener.broken");
    std::fs::write(
        &broken,
        "#!/bin/sh\necho 'An error occurred: broken on purpose'\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(
        bin.join("Runner.Listener"),
        bin.join("Runner.Listener.orig"),
    )
    .unwrap();
    std::fs::rename(&broken, bin.join("Runner.Listener")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_dies_at_each_start_is_never_shown_running_while_dead() {
    // A slow resync: between passes only the daemon's own events and its liveness check tell.
    let mut lab = Lab::new(1).await;
    lab.start_daemon_exact(&[
        "--resync-secs",
        "60",
        "--check-secs",
        "1",
        "--backoff-base-ms",
        "2000",
        "--backoff-cap-secs",
        "4",
    ]);
    let name = lab.names(1)[0].clone();
    lab.wait_runner(&name, "online", |r| r.status == "online")
        .await;
    let status = lab
        .wait_status("running", |s| {
            Lab::daemon_view(s, &name)["state"] == "running"
        })
        .await;
    assert!(
        Lab::daemon_view(&status, &name)["next_retry"].is_null(),
        "a healthy runner with a next retry: {status:#}"
    );

    break_listener(&lab, &name);
    let pid = lab.pid(&name).unwrap();
    kill(Pid::from_raw(-pid), Signal::SIGKILL).unwrap();
    // Watch the crash loop: whenever the runner's process has been dead for a while, `status`
    // must not call it running.
    let mut dead_since: Option<(i32, Instant)> = None;
    let mut seen_backing_off = None;
    let deadline = Instant::now() + WAIT;
    loop {
        let status = lab.status_json();
        let view = Lab::daemon_view(&status, &name);
        let pid = lab.pid(&name);
        let alive = lab.alive(&name);
        dead_since = match (alive, dead_since, pid) {
            (true, _, _) | (_, _, None) => None,
            (false, Some((p, at)), Some(now)) if p == now => Some((p, at)),
            (false, _, Some(now)) => Some((now, Instant::now())),
        };
        if let Some((_, at)) = dead_since {
            if at.elapsed() > Duration::from_millis(1800) {
                assert_ne!(
                    view["state"],
                    "running",
                    "runner dead for {:?} but shown running: {view:#}\nlog:\n{}",
                    at.elapsed(),
                    lab.log()
                );
            }
        }
        if view["state"] == "backing-off" && !alive {
            seen_backing_off = Some(view.clone());
        }
        if view["restarts"].as_u64().unwrap_or(0) >= 3 && seen_backing_off.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "crash loop not seen: {view:#}\nlog:\n{}",
            lab.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let view = seen_backing_off.unwrap();
    assert_eq!(view["last_exit_code"], 1, "{view:#}");
    assert!(view["next_retry"].is_string(), "{view:#}");
    // The human form says the same (the runner still dies at each start: seen again).
    let mut human = String::new();
    lab.wait_until("`status` with the next retry", || {
        human = text(&lab.ok(&["status"]));
        human.contains("backing-off") && human.contains("next retry: ")
    })
    .await;
    assert!(!human.contains("+00:00:00"), "{human}");

    // Fixed: the next start after the backoff stays up, and is shown running without a retry.
    let bin = lab.runner_dir(&name).join("bin");
    std::fs::rename(
        bin.join("Runner.Listener.orig"),
        bin.join("Runner.Listener"),
    )
    .unwrap();
    let status = lab
        .wait_status("running again", |s| {
            Lab::daemon_view(s, &name)["state"] == "running"
                && lab.alive(&name)
                && lab
                    .runners()
                    .iter()
                    .any(|r| r.name == name && r.status == "online")
        })
        .await;
    assert!(
        Lab::daemon_view(&status, &name)["next_retry"].is_null(),
        "{status:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_changed_on_sighup_is_set_in_place_on_the_same_registrations() {
    let mut lab = Lab::new(2).await;
    lab.start_daemon();
    let names = lab.names(2);
    let before = lab.wait_online(&names).await;
    let pids: Vec<Option<i32>> = names.iter().map(|n| lab.pid(n)).collect();
    let tokens = lab.requests("registration-token");

    lab.edit_config("labels = [\"lab\"]", "labels = [\"lab\", \"gpu\"]");
    lab.sighup();
    for (name, old) in names.iter().zip(&before) {
        let view = lab
            .wait_runner(name, "relabelled", |r| r.labels.iter().any(|l| l == "gpu"))
            .await;
        assert_eq!(view.id, old.id, "registered again for a label");
        assert_eq!(view.status, "online");
        assert!(view.labels.iter().any(|l| l == "lab"), "{view:?}");
        assert!(view.labels.iter().any(|l| l == "host-labhost"), "{view:?}");
    }
    // Same processes, no new registration token, and nobody else on GitHub.
    let after: Vec<Option<i32>> = names.iter().map(|n| lab.pid(n)).collect();
    assert_eq!(after, pids, "runners restarted for a label");
    assert!(names.iter().all(|n| lab.alive(n)));
    assert_eq!(lab.requests("registration-token"), tokens, "{}", lab.log());
    assert_eq!(lab.runners().len(), 2, "{:?}", lab.runners());

    // A label dropped goes too.
    lab.edit_config("labels = [\"lab\", \"gpu\"]", "labels = [\"gpu\"]");
    lab.sighup();
    for name in &names {
        lab.wait_runner(name, "without `lab`", |r| {
            r.labels.iter().any(|l| l == "gpu") && !r.labels.iter().any(|l| l == "lab")
        })
        .await;
    }
    assert_eq!(lab.requests("registration-token"), tokens, "{}", lab.log());
    // The log says what happened: registered once, labels updated since.
    let log = lab.log();
    for name in &names {
        assert_eq!(
            log.matches(&format!("registering runner `{name}`")).count(),
            1,
            "{log}"
        );
        assert!(
            log.contains(&format!("updating the labels of runner `{name}` on GitHub")),
            "{log}"
        );
    }
    lab.assert_no_secret_in_log();
}

/// One runner and a PAT without `repo`: GitHub refuses every runner call with a 403.
async fn without_repo_scope() -> lab::Lab {
    lab::Lab::builder()
        .pat(&["read:org"])
        .count(1, "")
        .wait(WAIT)
        .start()
        .await
}

/// The daemon's status once GitHub's circuit is open and runner `name` waits for it.
async fn wait_circuit_open(lab: &lab::Lab, name: &str) -> serde_json::Value {
    lab.wait_status("the open circuit", |s| {
        s["daemon"]["github_circuit"].is_string()
            && lab::Lab::daemon_view(s, name)["state"] == "circuit-open"
    })
    .await
}

/// Runner `name` registered and online, GitHub's circuit closed.
async fn wait_circuit_closed(lab: &lab::Lab, name: &str) {
    lab.wait_runner(name, "registered", |r| r.status == "online")
        .await;
    lab.wait_status("the circuit closed", |s| {
        s["daemon"]["github_circuit"].is_null()
            && lab::Lab::daemon_view(s, name)["state"] == "running"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_permission_opens_the_circuit_without_a_hot_loop_until_a_new_pat_file() {
    // A PAT without `repo`: GitHub refuses every runner call with a 403.
    let mut lab = without_repo_scope().await;
    lab.start_daemon();
    let name = lab.names(1)[0].clone();
    let status = wait_circuit_open(&lab, &name).await;
    let reason = status["daemon"]["github_circuit"].as_str().unwrap();
    assert!(
        reason.contains("admin rights") && reason.contains("`repo`"),
        "{reason}"
    );
    let view = lab::Lab::daemon_view(&status, &name);
    assert!(
        view["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("admin rights")),
        "{view:#}"
    );
    // It says when it tries again by itself: in an hour, unless a secret file changes first.
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    let in_an_hour = |field: &serde_json::Value| {
        field
            .as_str()
            .and_then(|t| time::OffsetDateTime::parse(t, rfc3339).ok())
            .is_some_and(|t| {
                let left = t - time::OffsetDateTime::now_utc();
                left > time::Duration::minutes(55) && left <= time::Duration::minutes(60)
            })
    };
    assert!(
        in_an_hour(&status["daemon"]["github_circuit_until"]),
        "{status:#}"
    );
    assert!(in_an_hour(&view["next_retry"]), "{view:#}");
    let human = text(&lab.ok(&["status"]));
    assert!(human.contains("circuit-open"), "{human}");
    let github = human
        .lines()
        .find(|l| l.contains("github: not called until a secret file changes or "))
        .unwrap_or_else(|| panic!("no circuit line: {human}"));
    assert!(github.contains(" min): "), "{github}");
    // The `hint:` under each message is indented under it, not at the start of a line.
    assert!(human.contains("\n    hint: "), "{human}");
    assert!(!human.lines().any(|l| l.starts_with("hint:")), "{human}");
    assert!(human.contains("next retry: "), "{human}");
    assert!(
        lab.log().contains("GitHub refuses the credentials"),
        "{}",
        lab.log()
    );

    // No hot loop: the daemon (resync every 2 s, liveness check every 1 s) stops calling GitHub.
    let before = lab.requests("/api/v3/");
    let window = Instant::now();
    lab.wait_until("a 5 s window", || {
        window.elapsed() >= Duration::from_secs(5)
    })
    .await;
    let during = lab.requests("/api/v3/") - before;
    println!("API requests in 5 s with the circuit open: {during}");
    assert_eq!(
        during,
        0,
        "called GitHub with the circuit open\n{}",
        lab.log()
    );
    assert!(lab.runners().is_empty());

    // A PAT with `repo` in the file: used at once, the circuit closes.
    let pat = lab.emu.add_pat(PatSpec::classic(&["repo"]));
    lab.secrets.push(pat.clone());
    lab::write_secret(&lab.path("github-pat"), &pat);
    wait_circuit_closed(&lab, &name).await;
    lab.assert_no_secret_in_log();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permission_granted_on_github_is_used_once_the_circuit_closes_by_itself() {
    // A PAT without `repo` whose owner then adds the scope on GitHub's settings page: the token
    // and its file stay the same, so nothing tells the daemon; only the circuit's interval
    // (`--circuit-secs`, an hour by default) ends the wait.
    const CIRCUIT_SECS: i64 = 4;
    let mut lab = without_repo_scope().await;
    lab.start_daemon_with(&["--circuit-secs", &CIRCUIT_SECS.to_string()]);
    let name = lab.names(1)[0].clone();
    let status = wait_circuit_open(&lab, &name).await;
    let until = status["daemon"]["github_circuit_until"]
        .as_str()
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .unwrap_or_else(|| panic!("no github_circuit_until: {status:#}"));
    assert!(
        until - time::OffsetDateTime::now_utc() <= time::Duration::seconds(CIRCUIT_SECS),
        "{status:#}"
    );
    let pat = lab.pat.clone().unwrap();
    let secret = std::fs::read(lab.path("github-pat")).unwrap();
    let before = lab.requests("/api/v3/");
    assert!(lab
        .emu
        .edit_pat(&pat, PatSpec::classic(&["read:org", "repo"])));

    // GitHub would say yes now, but the circuit is open: no call until it closes.
    lab.wait_until("the circuit's end (less a margin)", || {
        time::OffsetDateTime::now_utc() >= until - time::Duration::milliseconds(300)
    })
    .await;
    assert_eq!(
        lab.requests("/api/v3/"),
        before,
        "called GitHub with the circuit open\n{}",
        lab.log()
    );
    // Then it tries again by itself: registered and online, the circuit closed, the same token.
    wait_circuit_closed(&lab, &name).await;
    assert_eq!(std::fs::read(lab.path("github-pat")).unwrap(), secret);
    let log = lab.log();
    assert!(
        log.contains(&format!(
            "no call to GitHub until a secret file changes or {CIRCUIT_SECS} s passed"
        )),
        "{log}"
    );
    lab.assert_no_secret_in_log();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_missing_from_github_list_after_a_reboot_is_registered_again_alone() {
    let mut lab = Lab::new(2).await;
    lab.start_daemon();
    let names = lab.names(2);
    let before = lab.wait_online(&names).await;
    // Power cut: the daemon and the runners die; meanwhile GitHub forgets the first runner.
    lab.signal(Signal::SIGKILL);
    lab.wait_exit();
    lab.kill_runners();
    lab.wait_until("the runners to die", || names.iter().all(|n| !lab.alive(n)))
        .await;
    lab.emu.advance_clock(91);
    assert!(lab.emu.delete_runner(before[0].id));
    let tokens = lab.requests("registration-token");

    lab.start_daemon();
    let after = lab.wait_online(&names).await;
    assert_ne!(
        after[0].id, before[0].id,
        "the forgotten runner was not registered again"
    );
    assert_eq!(
        after[1].id, before[1].id,
        "the other runner was registered again"
    );
    assert_eq!(lab.runners().len(), 2, "{:?}", lab.runners());
    assert_eq!(
        lab.requests("registration-token"),
        tokens + 1,
        "one registration expected\n{}",
        lab.log()
    );
    assert_eq!(lab.local_id(&names[0]), Some(after[0].id));
    lab.assert_no_secret_in_log();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disable_update_runner_on_latest_is_upgraded_to_a_new_release_without_a_config_change() {
    let mut lab = Lab::with(1, "disable_update = true", "").await;
    lab.edit_config(&format!("version = \"{VERSION}\""), "version = \"latest\"");
    lab.start_daemon();
    let name = lab.names(1)[0].clone();
    let view = lab
        .wait_runner(&name, "online", |r| r.status == "online")
        .await;
    assert_eq!(view.version, VERSION);
    assert!(view.disable_update);

    // GitHub publishes a newer release; the configuration stays as it is. The daemon reads the
    // release list every few hours, and again on a reload: the newest release is the target.
    publish_fake_release(&lab.emu, "2.337.0", &lab.dir.path().join("release-new"))
        .await
        .unwrap();
    lab.sighup();
    let upgraded = lab
        .wait_runner(&name, "upgraded", |r| {
            r.version == "2.337.0" && r.status == "online"
        })
        .await;
    assert_eq!(upgraded.id, view.id, "registered again instead of upgraded");
    assert_eq!(
        std::fs::read_link(lab.runner_dir(&name).join("bin")).unwrap(),
        std::path::PathBuf::from("bin.2.337.0")
    );
    assert!(
        lab.log()
            .contains("upgrading it to 2.337.0 while it is idle"),
        "{}",
        lab.log()
    );
    lab.assert_no_secret_in_log();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_restart_count_and_the_last_exit_in_status() {
    let mut lab = Lab::new(1).await;
    lab.start_daemon();
    let name = lab.names(1)[0].clone();
    lab.wait_runner(&name, "online", |r| r.status == "online")
        .await;
    // The listener alone is killed: `run.sh` reports its exit code.
    let listener = lab.runner_dir(&name).join("bin/Runner.Listener");
    let out = Command::new("pgrep")
        .arg("-f")
        .arg(format!("^{}", listener.display()))
        .output()
        .unwrap();
    let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 1, "{pids:?}");
    kill(Pid::from_raw(pids[0]), Signal::SIGKILL).unwrap();
    let status = lab
        .wait_status("the restart", |s| {
            let d = Lab::daemon_view(s, &name);
            d["restarts"] == 1 && d["last_exit_code"] == 137
        })
        .await;
    let before = Lab::daemon_view(&status, &name);

    lab.sighup();
    lab.wait_until("the reload", || {
        lab.log().contains("configuration reloaded")
    })
    .await;
    // Passes after the reload (a resync every 2 s), then the same counters.
    let status = lab
        .wait_state_written_after("a pass after the reload", 2)
        .await;
    let after = Lab::daemon_view(&status, &name);
    assert_eq!(after["restarts"], before["restarts"], "{status:#}");
    assert_eq!(after["last_exit_code"], 137, "{status:#}");
    assert_eq!(after["state"], "running", "{status:#}");
}

/// The value of `family{runner="name"}` in a metrics text, if there.
fn sample(metrics: &str, family: &str, name: &str) -> Option<f64> {
    let prefix = format!("{family}{{runner=\"{name}\"");
    metrics
        .lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_file_shows_a_started_runner_online_without_waiting_for_the_resync() {
    let mut lab = Lab::new(1).await;
    let metrics_file = lab.path("metrics.prom");
    let config = std::fs::read_to_string(&lab.config).unwrap();
    std::fs::write(
        &lab.config,
        format!(
            "{config}\n[daemon]\nmetrics_file = \"{}\"\n",
            metrics_file.display()
        ),
    )
    .unwrap();
    // The production resync (60 s): only the read after the start can tell.
    lab.start_daemon_exact(&["--resync-secs", "60", "--check-secs", "1"]);
    let name = lab.names(1)[0].clone();
    lab.wait_runner(&name, "online", |r| r.status == "online")
        .await;
    let started = Instant::now();
    lab.wait_until("`online 1` in the metrics file", || {
        let text = std::fs::read_to_string(&metrics_file).unwrap_or_default();
        sample(&text, "runner_agent_runner_online", &name) == Some(1.0)
    })
    .await;
    println!(
        "metrics online {} ms after GitHub showed the runner online",
        started.elapsed().as_millis()
    );
    let text = std::fs::read_to_string(&metrics_file).unwrap();
    assert_eq!(
        sample(&text, "runner_agent_runner_registered", &name),
        Some(1.0)
    );
    // One more list for it, not a loop of them.
    let lists = lab.requests("/actions/runners");
    let window = Instant::now();
    lab.wait_until("a 3 s window", || {
        window.elapsed() >= Duration::from_secs(3)
    })
    .await;
    assert_eq!(lab.requests("/actions/runners"), lists, "{}", lab.log());
}
