//! `agentctl daemon` against the GitHub emulator with the fake runner release, process backend,
//! runners as `ra-runner`, a PAT (so the daemon sees GitHub's runner list).

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use runner_agent_tests::support::{agentctl, publish_fake_release};
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use runner_agent_tests::emulator::{Emulator, EmulatorOptions, PatSpec, RunnerView};

const REPO: &str = "octo/hello";
const VERSION: &str = "2.336.0";
const HOST: &str = "labhost";
const WAIT: Duration = Duration::from_secs(30);

struct Lab {
    emu: Emulator,
    dir: tempfile::TempDir,
    config: PathBuf,
    daemon: Option<Child>,
}

impl Lab {
    async fn new(count: u32) -> Lab {
        let emu = Emulator::start(EmulatorOptions {
            long_poll: Duration::from_secs(1),
            ..EmulatorOptions::default()
        })
        .await
        .unwrap();
        emu.create_repo(REPO, false).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        publish_fake_release(&emu, VERSION, &dir.path().join("release"))
            .await
            .unwrap();
        let pat = emu.add_pat(PatSpec::classic(&["repo"]));
        let file = dir.path().join("github-pat");
        std::fs::write(&file, pat).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let root = dir.path();
        let text = format!(
            r#"version = 1

[agent]
cache_dir = "{root}/cache"
state_dir = "{root}/state"

[github]
url = "{url}"
pat_file = "github-pat"

[host]
kvm = false

[defaults]
user = "ra-runner"
root = "{root}/runners"
version = "{VERSION}"
service = "process"
labels = ["lab"]

[[runner]]
name_template = "{{hostname}}-{{index}}"
count = {count}
"#,
            root = root.display(),
            url = emu.web_url_for(REPO),
        );
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, text).unwrap();
        Lab {
            emu,
            dir,
            config,
            daemon: None,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(agentctl());
        command
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("RUNNER_AGENT_HOSTNAME", HOST)
            .env_remove("CREDENTIALS_DIRECTORY");
        command
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    fn start_daemon(&mut self) {
        let log = std::fs::File::create(self.log_path()).unwrap();
        let child = self
            .command(&["daemon", "--resync-secs", "2", "--check-secs", "1"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn names(&self, count: u32) -> Vec<String> {
        (1..=count).map(|i| format!("{HOST}-{i}")).collect()
    }

    fn pid(&self, name: &str) -> Option<i32> {
        let path = self
            .dir
            .path()
            .join("state/runners")
            .join(format!("{name}.pid"));
        let text = std::fs::read_to_string(path).ok()?;
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        value["pid"].as_i64().map(|p| p as i32)
    }

    async fn wait_runner(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&RunnerView) -> bool,
    ) -> RunnerView {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self
                .emu
                .runners(Some(REPO))
                .into_iter()
                .find(|r| r.name == name);
            if let Some(r) = &found {
                if pred(r) {
                    return r.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "runner {name} never {what}: {found:?}\ndaemon log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait for the daemon to exit, with a deadline.
    fn wait_exit(&mut self) -> Option<i32> {
        let child = self.daemon.as_mut().unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.daemon = None;
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(child) = &mut self.daemon {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The runners outlive the daemon by design: end their sessions.
        if let Ok(entries) = std::fs::read_dir(self.dir.path().join("state/runners")) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_suffix(".pid").and_then(|n| self.pid(n)) {
                    let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
                }
            }
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
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
    let runner = lab.pid(name).unwrap();
    assert!(kill(Pid::from_raw(runner), None).is_ok(), "runner died");
    let after = lab
        .wait_runner(name, "online", |r| r.status == "online")
        .await;
    assert_eq!(after.id, view.id);
}
