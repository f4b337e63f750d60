//! `agentctl daemon` with board runners: the GitHub emulator, the fake runner release (process
//! backend, runners as `ra-runner`), boards on real ptys behind a temporary by-id tree, the board
//! simulator and a fake `mbpoll` that records the relay coil writes.
//!
//! - a board whose by-id link vanishes takes its runner offline (stopped, still registered) with
//!   the reason in `status`; when the link comes back pointing at another pty the runner is
//!   online again and a queued job gets the device as it is now;
//! - `reset_before_job`/`probe_after_reset`/`power_off_after_job` make the job hooks reset,
//!   probe and switch off the board; a board that fails its probe is taken offline with the
//!   reason and the job does not get it; a passing `agentctl board probe` brings it back.

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader};
use std::os::fd::AsFd as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runner_agent_tests::emulator::JobStatus;
use runner_agent_tests::support::lab::{self, text, REPO};

const WAIT: Duration = Duration::from_secs(45);
const PROMPT: &str = "root@sim:~#";

/// The shared lab ([`lab::Lab`]) with a fake `mbpoll` path in `agentctl`'s environment.
struct Lab(lab::Lab);

runner_agent_tests::deref_lab!(Lab.0);

impl Lab {
    /// An emulator with the fake release and a PAT; [`Lab::write_config`] writes the runners.
    async fn new() -> Lab {
        let mut lab = lab::Lab::builder()
            .env_remove("RUNNER_NAME")
            .env_remove("GITHUB_RUN_ID")
            .wait(WAIT)
            .start()
            .await;
        let mbpoll = lab.path("mbpoll");
        lab.set_env("RUNNER_AGENT_MBPOLL", mbpoll);
        Lab(lab)
    }

    /// The configuration with `runners_and_boards` at its end.
    fn write_config(&self, runners_and_boards: &str) {
        self.write_config_with(|config| config.runners = runners_and_boards.to_owned());
    }

    /// `agentctl status --json`'s entry for `runner`.
    fn status(&self, runner: &str) -> serde_json::Value {
        let out = self.run(&["status", "--json", runner]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        value["runners"][0].clone()
    }

    /// `agentctl status --json`'s entry for `runner`, once `pred` holds.
    fn wait_status(
        &self,
        runner: &str,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = self.status(runner);
            if pred(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "runner {runner} never {what}: {status}\ndaemon log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `agentctl board list --json`'s entry for `board`.
    fn board(&self, board: &str) -> serde_json::Value {
        let out = self.run(&["board", "list", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .find(|entry| entry["board"] == board)
            .cloned()
            .unwrap()
    }
}

/// A pty whose slave only the runner user may open (as a udev rule for the board would set).
fn board_pty() -> (nix::pty::OpenptyResult, PathBuf) {
    let (pty, slave) = runner_agent_tests::support::console_pty();
    give_to_runner(&slave);
    (pty, slave)
}

fn give_to_runner(path: &Path) {
    let ra = nix::unistd::User::from_name("ra-runner").unwrap().unwrap();
    nix::unistd::chown(path, Some(ra.uid), Some(ra.gid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Read from a pty master until `needle` shows up (5 s at most).
fn read_until(master: &std::os::fd::OwnedFd, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = String::new();
    while !seen.contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no `{needle}` on the pty: {seen:?}"
        );
        let mut fds = [nix::poll::PollFd::new(
            master.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if nix::poll::poll(&mut fds, 200u16).unwrap() == 1 {
            let mut buf = [0u8; 256];
            let n = nix::unistd::read(master, &mut buf).unwrap();
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_runner_is_offline_while_its_board_is_missing_and_back_on_the_new_device() {
    let mut lab = Lab::new().await;
    let (_pty1, slave1) = board_pty();
    let by_id = lab.path("dev/serial/by-id");
    std::fs::create_dir_all(&by_id).unwrap();
    let link = by_id.join("usb-Sim_Board_0001-if00-port0");
    std::os::unix::fs::symlink(&slave1, &link).unwrap();
    lab.write_config(&format!(
        "[[runner]]\nname = \"board-1\"\nboard = \"sim-1\"\n\n\
         [[board]]\nname = \"sim-1\"\n[board.console]\npath = \"{}\"\nbaud = 115200\n",
        link.display()
    ));
    lab.start_daemon();
    let first = lab
        .wait_runner("board-1", "online", |r| r.status == "online")
        .await;
    assert_eq!(lab.status("board-1")["board"]["state"], "online");

    // Unplugged: udev removes the link and the by-id directory with it.
    std::fs::remove_file(&link).unwrap();
    std::fs::remove_dir(&by_id).unwrap();
    let offline = lab
        .wait_runner("board-1", "offline", |r| r.status == "offline")
        .await;
    assert_eq!(offline.id, first.id, "the registration is kept");
    // The session ends before the listener has exited, and the daemon writes its view after
    // the pass: wait for both.
    let status = lab.wait_status("board-1", "stopped", |status| {
        status["local"]["service"]["state"] == "inactive"
            && status["daemon"]["state"] == "board-offline"
    });
    assert_eq!(status["board"]["state"], "offline", "{status}");
    let reason = status["board"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!(
            "board `sim-1` missing: console: `{}` does not resolve to a device",
            link.display()
        )),
        "{reason}"
    );
    let out = lab.run(&["status", "board-1"]);
    assert!(
        text(&out).contains("  board: sim-1 offline: board `sim-1` missing: console: `"),
        "{}",
        text(&out)
    );
    let entry = lab.board("sim-1");
    assert_eq!(entry["state"], "offline");
    assert!(
        entry["reason"]
            .as_str()
            .unwrap()
            .contains("does not resolve to a device"),
        "{entry}"
    );
    assert!(
        lab.log()
            .contains("taking runner `board-1` offline: board `sim-1` missing"),
        "{}",
        lab.log()
    );

    // A job queued meanwhile waits for the board.
    let script = "echo \"uart=$BOARD_COMM_UART_DEV baud=$BOARD_COMM_UART_BAUD node=$(readlink -f \"$BOARD_COMM_UART_DEV\")\"\n\
                  exec 3<>\"$BOARD_COMM_UART_DEV\"\nprintf 'hello-new-board\\n' >&3\n";
    let job = lab
        .emu
        .queue_job(REPO, &["self-hosted", "sim-1"], script)
        .unwrap();
    assert_eq!(lab.emu.job(job).unwrap().status, JobStatus::Queued);

    // Plugged in again, on another port: a new pty behind the same by-id link.
    let (pty2, slave2) = board_pty();
    assert_ne!(slave1, slave2);
    std::fs::create_dir_all(&by_id).unwrap();
    std::os::unix::fs::symlink(&slave2, &link).unwrap();
    let back = lab
        .wait_runner("board-1", "online again", |r| r.status == "online")
        .await;
    assert_eq!(back.id, first.id, "started again, not registered again");
    let done = lab.wait_job(job).await;
    let output = done.output.clone().unwrap_or_default();
    assert_eq!(done.result.as_deref(), Some("succeeded"), "{output}");
    assert!(
        output.contains(&format!(
            "uart={} baud=115200 node={}",
            link.display(),
            slave2.display()
        )),
        "{output}"
    );
    read_until(&pty2.master, "hello-new-board");
    assert_eq!(lab.status("board-1")["board"]["state"], "online");
}

/// A running board simulator; killed when dropped.
struct Sim {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Sim {
    fn start(lab: &Lab, board: &str, broken: bool) -> Sim {
        let mut command = Command::new(env!("CARGO_BIN_EXE_board-sim"));
        command
            .arg("--link")
            .arg(lab.path(&format!("{board}.console")))
            .arg("--power")
            .arg(lab.path(&format!("{board}.power")))
            .arg("--prompt")
            .arg(PROMPT)
            .stdout(Stdio::piped())
            .stdin(Stdio::null());
        if broken {
            command.arg("--broken");
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let sim = Sim { child, lines };
        let deadline = Instant::now() + Duration::from_secs(10);
        let slave = loop {
            if let Some(slave) = sim
                .lines()
                .iter()
                .find_map(|line| line.strip_prefix("READY ").map(PathBuf::from))
            {
                break slave;
            }
            assert!(Instant::now() < deadline, "the simulator never got ready");
            std::thread::sleep(Duration::from_millis(20));
        };
        // The job hooks probe the console as the runner user.
        give_to_runner(&slave);
        sim
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn power(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|line| line.starts_with("POWER"))
            .collect()
    }

    /// Wait until the board has seen `count` power changes (it reports them as it reads them);
    /// return them.
    fn wait_power(&self, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let power = self.power();
            if power.len() >= count {
                return power;
            }
            assert!(Instant::now() < deadline, "power changes seen: {power:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `[[board]]` on relay coil `coil` (0-based) of the lab's relay bus, with the job routine.
fn sim_board(lab: &Lab, name: &str, coil: u16, probe_timeout_secs: u32) -> String {
    format!(
        "[[board]]\nname = \"{name}\"\nboot_prompt = \"{PROMPT}\"\n\
         reset_before_job = true\nprobe_after_reset = true\nprobe_timeout_secs = {probe_timeout_secs}\n\
         power_off_after_job = true\n\
         env = {{ RUNNER_AGENT_MBPOLL = \"{mbpoll}\" }}\n\
         [board.console]\npath = \"{console}\"\nbaud = 115200\n\
         [board.power]\nkind = \"modbus-rtu\"\ndevice = \"{relay}\"\nbaud = 38400\nparity = \"none\"\n\
         slave = 1\ncoil = {coil}\ncoil_base = 0\ncycle_off_secs = 0\n",
        mbpoll = lab.path("mbpoll").display(),
        console = lab.path(&format!("{name}.console")).display(),
        relay = lab.path("relay-bus").display(),
    )
}

/// The fake `mbpoll` (run by the job hooks as the runner user): records its arguments, then
/// hands the coil value to the board whose coil it is, through the simulator's power FIFO.
fn fake_mbpoll(lab: &Lab, boards: &[(&str, u16)]) {
    let root = lab.dir.path();
    std::fs::write(lab.path("relay-bus"), b"").unwrap();
    let log = lab.path("mbpoll.log");
    std::fs::write(&log, b"").unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
    let script = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{root}/mbpoll.log'\n\
         coil=''; prev=''\nfor arg; do [ \"$prev\" = -r ] && coil=$arg; prev=$arg; last=$arg; done\n\
         fifo=$(cat '{root}/coil-'\"$coil\" 2>/dev/null) || exit 0\n\
         printf '%s\\n' \"$last\" > \"$fifo\"\n",
        root = root.display()
    );
    std::fs::write(lab.path("mbpoll"), script).unwrap();
    std::fs::set_permissions(lab.path("mbpoll"), std::fs::Permissions::from_mode(0o755)).unwrap();
    for (board, coil) in boards {
        let fifo = lab.path(&format!("{board}.power"));
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
        // The umask took bits away; the runner user writes the coil value here.
        std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::write(
            lab.path(&format!("coil-{coil}")),
            fifo.display().to_string(),
        )
        .unwrap();
    }
}

/// The recorded writes to coil `coil`: `-m rtu -a 1 -r COIL ... VALUE`, values only.
fn coil_writes(lab: &Lab, coil: u16) -> Vec<String> {
    let relay = lab.path("relay-bus").display().to_string();
    let prefix = format!("-m rtu -a 1 -r {coil} -t 0 -b 38400 -P none -0 {relay} ");
    std::fs::read_to_string(lab.path("mbpoll.log"))
        .unwrap()
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix).map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_routine_resets_and_probes_the_board_and_a_board_that_fails_is_taken_offline() {
    let mut lab = Lab::new().await;
    fake_mbpoll(&lab, &[("good", 5), ("bad", 6)]);
    let good_sim = Sim::start(&lab, "good", false);
    let bad_sim = Sim::start(&lab, "bad", true);
    lab.write_config(&format!(
        "[[runner]]\nname = \"good-1\"\nboard = \"good\"\n\n\
         [[runner]]\nname = \"bad-1\"\nboard = \"bad\"\n\n{}\n{}",
        sim_board(&lab, "good", 5, 10),
        sim_board(&lab, "bad", 6, 2),
    ));
    lab.start_daemon();
    lab.wait_runner("good-1", "online", |r| r.status == "online")
        .await;
    let bad = lab
        .wait_runner("bad-1", "online", |r| r.status == "online")
        .await;

    // `reset_before_job` + `probe_after_reset`: the started hook power-cycles the board through
    // the relay and waits for its prompt; `power_off_after_job`: the completed hook switches it off.
    let job = lab
        .emu
        .queue_job(
            REPO,
            &["self-hosted", "good"],
            "echo \"good job on $RUNNER_AGENT_BOARD\"\n",
        )
        .unwrap();
    let done = lab.wait_job(job).await;
    let output = done.output.clone().unwrap_or_default();
    assert_eq!(done.result.as_deref(), Some("succeeded"), "{output}");
    assert!(output.contains("good job on good"), "{output}");
    let hooks = lab.path("state/runners/good-1.hooks");
    let started = std::fs::read_to_string(hooks.join("job-started.sh")).unwrap();
    assert!(
        started.contains(" board acquire 'good' --timeout 3600 --probe --probe-timeout 10\n"),
        "{started}"
    );
    let completed = std::fs::read_to_string(hooks.join("job-completed.sh")).unwrap();
    assert!(
        completed.contains(" board release 'good' --power-off\n"),
        "{completed}"
    );
    assert_eq!(coil_writes(&lab, 5), ["0", "1", "0"], "off, on; then off");
    assert_eq!(good_sim.wait_power(3), ["POWER 0", "POWER 1", "POWER 0"]);
    assert_eq!(lab.board("good")["health"]["health"], "healthy");

    // A board that never shows its prompt after the reset: the job fails without running its
    // steps, and the board and its runner go offline with the reason.
    let job = lab
        .emu
        .queue_job(REPO, &["self-hosted", "bad"], "echo 'bad job ran'\n")
        .unwrap();
    let done = lab.wait_job(job).await;
    let output = done.output.clone().unwrap_or_default();
    assert_eq!(done.result.as_deref(), Some("failed"), "{output}");
    assert!(!output.contains("bad job ran"), "{output}");
    assert!(
        output.contains(&format!(
            "board `bad` is offline: health probe failed: no `{PROMPT}`"
        )),
        "{output}"
    );
    assert_eq!(&coil_writes(&lab, 6)[..2], ["0", "1"]);
    let offline = lab
        .wait_runner("bad-1", "offline", |r| r.status == "offline")
        .await;
    assert_eq!(offline.id, bad.id, "the registration is kept");
    let status = lab.wait_status("bad-1", "stopped", |status| {
        status["local"]["service"]["state"] == "inactive"
    });
    let reason = status["board"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!(
            "board `bad` unhealthy: health probe failed: no `{PROMPT}`"
        )),
        "{reason}"
    );
    assert!(reason.contains("Kernel panic"), "{reason}");
    assert!(
        reason.contains("hint: `agentctl board probe bad`"),
        "{reason}"
    );
    assert_eq!(lab.board("bad")["state"], "offline");
    // The other board's runner is not affected.
    assert_eq!(lab.status("good-1")["board"]["state"], "online");

    // The next job for the board waits: nobody takes it.
    let next = lab
        .emu
        .queue_job(REPO, &["self-hosted", "bad"], "echo 'next job ran'\n")
        .unwrap();
    assert_eq!(lab.emu.job(next).unwrap().status, JobStatus::Queued);

    // Repaired: a board that boots again passes `agentctl board probe`, and its runner returns
    // and takes the job (resetting and probing the board first).
    drop(bad_sim);
    let fixed = Sim::start(&lab, "bad", false);
    let out = lab.run(&["board", "probe", "bad", "--timeout", "10"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    lab.wait_runner("bad-1", "online again", |r| r.status == "online")
        .await;
    let done = lab.wait_job(next).await;
    let output = done.output.clone().unwrap_or_default();
    assert_eq!(done.result.as_deref(), Some("succeeded"), "{output}");
    assert!(output.contains("next job ran"), "{output}");
    assert!(fixed
        .wait_power(2)
        .starts_with(&["POWER 0".to_owned(), "POWER 1".to_owned()]));
}
