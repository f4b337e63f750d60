//! One-job runners under `agentctl daemon` (JIT and plain ephemeral) and `agentctl oneshot`,
//! against the GitHub emulator with the fake runner release, process backend, runners as
//! `ra-runner`, a PAT.

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use runner_agent_tests::emulator::{JobStatus, RunnerView};
use runner_agent_tests::support::lab::{self, REPO};

const WAIT: Duration = Duration::from_secs(30);

/// The shared lab ([`lab::Lab`]); its log is the spawned `agentctl`'s (daemon or oneshot).
struct Lab(lab::Lab);

runner_agent_tests::deref_lab!(Lab.0);

impl Lab {
    /// A lab on repository `octo/hello` whose configuration ends with `runners` (TOML
    /// `[[runner]]` tables).
    async fn new(runners: &str) -> Lab {
        Lab::with(lab::Lab::builder(), runners).await
    }

    /// A lab of `builder` (its scope and PAT) whose configuration ends with `runners`.
    async fn with(builder: lab::LabBuilder, runners: &str) -> Lab {
        Lab(builder
            .runners(runners)
            .log_name("agentctl.log")
            .wait(WAIT)
            .start()
            .await)
    }

    /// The first runner of the scope for which `pred` holds.
    async fn wait_runner(&self, what: &str, pred: impl Fn(&RunnerView) -> bool) -> RunnerView {
        self.0.wait_runner_any(what, pred).await
    }
}

/// The `clientId` in a runner directory's `.credentials` (UTF-8 with a BOM), if there is one.
fn client_id(dir: &Path) -> Option<String> {
    let bytes = std::fs::read(dir.join(".credentials")).ok()?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    value["data"]["clientId"].as_str().map(str::to_owned)
}

/// The value of `name` in the environment of process `pid`.
fn environ(pid: i32, name: &str) -> Option<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    bytes.split(|b| *b == 0).find_map(|entry| {
        let text = String::from_utf8_lossy(entry);
        text.strip_prefix(&format!("{name}=")).map(str::to_owned)
    })
}

/// Every process's command line that contains `needle`.
fn argv_holding(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(bytes) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes).replace('\0', " ");
        if text.contains(needle) {
            found.push(format!("{}: {text}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() && meta.len() < 1 << 20 {
                let bytes = std::fs::read(&path).unwrap_or_default();
                if String::from_utf8_lossy(&bytes).contains(needle) {
                    found.push(path);
                }
            }
        }
    }
    found
}

const JIT_RUNNER: &str = "[[runner]]\nname = \"jit-1\"\nephemeral = \"jit\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jit_runner_takes_two_jobs_each_on_a_fresh_directory_and_never_shows_its_config() {
    let mut lab = Lab::new(JIT_RUNNER).await;
    lab.start_daemon();
    let dir = lab.runner_dir("jit-1");
    let first = lab
        .wait_runner("jit-1 online", |r| {
            r.name == "jit-1" && r.status == "online"
        })
        .await;
    assert!(first.ephemeral, "{first:?}");
    // GitHub was asked which release to install for the first slot (`runners/downloads`, the
    // release); the next slots reuse it from the cache.
    let release_lookups =
        |lab: &Lab| lab.requests("runners/downloads") + lab.requests("/releases/tags/");
    let lookups_first_slot = release_lookups(&lab);
    assert!(lookups_first_slot > 0);
    for label in ["self-hosted", "Linux", "lab", "host-labhost"] {
        assert!(
            first.labels.iter().any(|l| l.eq_ignore_ascii_case(label)),
            "{label} missing: {first:?}"
        );
    }

    // The configuration reached the listener through run.sh's environment, nowhere else.
    let run_sh = lab.pid("jit-1").unwrap();
    let blob1 = environ(run_sh, "ACTIONS_RUNNER_INPUT_JITCONFIG")
        .expect("JIT config in run.sh's environment");
    assert!(blob1.len() > 100);
    assert_eq!(argv_holding(&blob1), Vec::<String>::new());
    assert_eq!(argv_holding("--jitconfig"), Vec::<String>::new());
    let client1 = client_id(&dir).expect("the JIT config's .credentials");
    assert!(argv_holding(&client1).is_empty());

    let job1 = lab
        .run_job(
            &["self-hosted", "lab"],
            "echo one > \"$RUNNER_WORKSPACE/../job1-marker\"\n\
             echo one > \"$RUNNER_WORKSPACE/../../job1-root-marker\"\n\
             env\n",
        )
        .await;
    assert_eq!(job1.status, JobStatus::Completed);
    assert_eq!(job1.result.as_deref(), Some("succeeded"), "{job1:?}");
    assert_eq!(job1.runner_id, Some(first.id));
    let output = job1.output.clone().unwrap_or_default();
    assert!(output.contains("RUNNER_NAME=jit-1"), "{output}");
    assert!(!output.contains(&blob1), "the job saw the JIT config");
    assert!(!output.contains("ACTIONS_RUNNER_INPUT"), "{output}");

    // The next slot: a new registration in a fresh directory, the old one gone everywhere.
    let second = lab
        .wait_runner("jit-1 online again", |r| {
            r.name == "jit-1" && r.id != first.id && r.status == "online"
        })
        .await;
    assert!(!lab.emu.runners(Some(REPO)).iter().any(|r| r.id == first.id));
    assert!(!dir.join("job1-root-marker").exists());
    assert!(!dir.join("_work/job1-marker").exists());
    let client2 = client_id(&dir).expect("the second slot's .credentials");
    assert_ne!(client1, client2, "the first slot's credentials were left");
    let blob2 = environ(lab.pid("jit-1").unwrap(), "ACTIONS_RUNNER_INPUT_JITCONFIG").unwrap();
    assert_ne!(blob1, blob2);
    assert!(argv_holding(&blob2).is_empty());
    assert_eq!(
        release_lookups(&lab),
        lookups_first_slot,
        "the second slot looked the release up again"
    );

    let job2 = lab
        .run_job(
            &["self-hosted", "lab"],
            "test ! -e \"$RUNNER_WORKSPACE/../job1-marker\"\n\
             test ! -e \"$RUNNER_WORKSPACE/../../job1-root-marker\"\n\
             echo fresh-directory\n",
        )
        .await;
    assert_eq!(job2.result.as_deref(), Some("succeeded"), "{job2:?}");
    assert_eq!(job2.runner_id, Some(second.id));
    assert!(job2.output.unwrap_or_default().contains("fresh-directory"));

    // Never in a log or a file of the agent (state, records, runner output).
    let log = lab.log();
    assert!(log.contains("JIT runner `jit-1`"), "{log}");
    for blob in [&blob1, &blob2] {
        assert!(!log.contains(blob.as_str()), "JIT config in the daemon log");
        assert_eq!(
            files_holding(&lab.dir.path().join("state"), blob),
            Vec::<PathBuf>::new()
        );
        assert_eq!(
            files_holding(&dir.join("_diag"), blob),
            Vec::<PathBuf>::new()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ephemeral_runner_is_registered_again_in_a_fresh_directory_after_its_job() {
    let mut lab = Lab::new("[[runner]]\nname = \"eph-1\"\nephemeral = true\n").await;
    lab.start_daemon();
    let dir = lab.runner_dir("eph-1");
    let first = lab
        .wait_runner("eph-1 online", |r| {
            r.name == "eph-1" && r.status == "online"
        })
        .await;
    assert!(first.ephemeral, "{first:?}");
    let job = lab
        .run_job(
            &["self-hosted", "lab"],
            "echo one > \"$RUNNER_WORKSPACE/../../job-marker\"\n",
        )
        .await;
    assert_eq!(job.result.as_deref(), Some("succeeded"), "{job:?}");
    assert_eq!(job.runner_id, Some(first.id));
    let second = lab
        .wait_runner("eph-1 registered again", |r| {
            r.name == "eph-1" && r.id != first.id && r.status == "online"
        })
        .await;
    assert!(second.ephemeral);
    assert!(
        !dir.join("job-marker").exists(),
        "the directory was not reset"
    );
    assert_eq!(lab.emu.runners(Some(REPO)).len(), 1);
    assert!(
        lab.log().contains("finished its job: directory reset"),
        "{}",
        lab.log()
    );
}

const ONESHOT_TEMPLATE: &str = "[[runner]]\nname = \"spot\"\n";

impl Lab {
    fn powered_off(&self) -> PathBuf {
        self.dir.path().join("powered-off")
    }

    fn start_oneshot(&mut self, extra: &[&str]) {
        let mut args = vec!["oneshot", "--labels", "throwaway,extra", "--poweroff"];
        args.extend_from_slice(extra);
        let mut command = self.command(&args);
        command.env(
            "RUNNER_AGENT_POWEROFF_COMMAND",
            format!("touch '{}'", self.powered_off().display()),
        );
        self.spawn(command);
    }

    async fn oneshot_online(&self) -> RunnerView {
        let view = self
            .wait_runner("spot-* online", |r| {
                r.name.starts_with("spot-") && r.status == "online"
            })
            .await;
        assert!(view.ephemeral, "{view:?}");
        for label in ["lab", "throwaway", "extra", "host-labhost"] {
            assert!(view.labels.iter().any(|l| l == label), "{label}: {view:?}");
        }
        view
    }

    fn assert_gone(&self, view: &RunnerView) {
        assert_eq!(
            self.emu.runners(Some(REPO)),
            Vec::<RunnerView>::new(),
            "{}",
            self.log()
        );
        assert!(!self.runner_dir(&view.name).exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oneshot_registers_runs_one_job_deregisters_powers_off_and_exits_0() {
    let mut lab = Lab::new(ONESHOT_TEMPLATE).await;
    lab.start_oneshot(&[]);
    let view = lab.oneshot_online().await;
    let job = lab
        .run_job(
            &["self-hosted", "throwaway"],
            "echo hello from the spot host\n",
        )
        .await;
    assert_eq!(job.result.as_deref(), Some("succeeded"), "{job:?}");
    assert_eq!(job.runner_id, Some(view.id));
    assert_eq!(lab.wait_exit(), Some(0), "{}", lab.log());
    lab.assert_gone(&view);
    assert!(lab.powered_off().exists(), "no power-off:\n{}", lab.log());
    // One job only: a second one finds no runner.
    let second = lab
        .emu
        .queue_job(REPO, &["self-hosted", "throwaway"], "true")
        .unwrap();
    assert_eq!(lab.emu.job(second).unwrap().status, JobStatus::Queued);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oneshot_deregisters_and_exits_0_on_sigterm_while_idle_without_powering_off() {
    let mut lab = Lab::new(ONESHOT_TEMPLATE).await;
    lab.start_oneshot(&["--name-prefix", "spot"]);
    let view = lab.oneshot_online().await;
    let pid = lab.daemon.as_ref().unwrap().id() as i32;
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    assert_eq!(lab.wait_exit(), Some(0), "{}", lab.log());
    lab.assert_gone(&view);
    assert!(
        lab.log().contains("idle: deregistering on the signal"),
        "{}",
        lab.log()
    );
    assert!(!lab.powered_off().exists(), "powered off after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oneshot_deregisters_after_its_idle_timeout() {
    let mut lab = Lab::new(ONESHOT_TEMPLATE).await;
    // 0.05 minutes: 3 s.
    lab.start_oneshot(&["--idle-timeout", "0.05"]);
    let view = lab.oneshot_online().await;
    assert_eq!(lab.wait_exit(), Some(0), "{}", lab.log());
    lab.assert_gone(&view);
    assert!(
        lab.log().contains("no job for the idle timeout"),
        "{}",
        lab.log()
    );
    assert!(lab.powered_off().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jit_runner_of_an_organization_joins_its_runner_group_by_name() {
    let runners = "[[runner]]\nname = \"jit-org\"\nephemeral = \"jit\"\ngroup = \"LAB-kvm\"\n\n\
                   [[runner]]\nname = \"jit-nogroup\"\nephemeral = \"jit\"\ngroup = \"nope\"\n";
    let builder = lab::Lab::builder().org("octo-lab").pat(&["admin:org"]);
    let mut lab = Lab::with(builder, runners).await;
    let group = lab
        .emu
        .create_runner_group("octo-lab", "lab-kvm", true)
        .unwrap();
    lab.start_daemon();
    let view = lab
        .wait_runner("jit-org online", |r| {
            r.name == "jit-org" && r.status == "online"
        })
        .await;
    assert_eq!(view.runner_group_id, group, "{view:?}");
    let job = lab
        .run_job(&["self-hosted", "lab"], "echo in the group\n")
        .await;
    assert_eq!(job.result.as_deref(), Some("succeeded"), "{job:?}");
    assert_eq!(job.runner_id, Some(view.id));
    let deadline = Instant::now() + WAIT;
    while !lab.log().contains("no runner group named `nope`") {
        assert!(
            Instant::now() < deadline,
            "no report of the unknown group:\n{}",
            lab.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(lab.log().contains("`lab-kvm`"), "{}", lab.log());
    assert!(!lab
        .emu
        .runners(Some("octo-lab"))
        .iter()
        .any(|r| r.name == "jit-nogroup"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jit_runners_board_is_power_cycled_between_jobs() {
    let out = tempfile::tempdir().unwrap();
    let cycles = out.path().join("cycles");
    let runners = format!(
        "[[runner]]\nname = \"jit-board\"\nephemeral = \"jit\"\nboard = \"b1\"\n\n\
         [[board]]\nname = \"b1\"\n\n[board.power]\nkind = \"command\"\non = \"true\"\noff = \"true\"\n\
         cycle = \"echo cycle >> '{}'\"\n",
        cycles.display()
    );
    let mut lab = Lab::new(&runners).await;
    lab.start_daemon();
    let first = lab
        .wait_runner("jit-board online", |r| {
            r.name == "jit-board" && r.status == "online"
        })
        .await;
    assert!(first.labels.iter().any(|l| l == "b1"), "{first:?}");
    assert!(!cycles.exists(), "power-cycled before any job");
    // The job takes the board through the runner's hooks, and gives it back.
    let job = lab
        .run_job(
            &["self-hosted", "b1"],
            "echo \"board=$RUNNER_AGENT_BOARD\"\n",
        )
        .await;
    assert_eq!(job.result.as_deref(), Some("succeeded"), "{job:?}");
    let output = job.output.unwrap_or_default();
    assert!(output.contains("board=b1"), "{output}");
    assert!(output.contains("A job started hook"), "{output}");
    lab.wait_runner("jit-board online again", |r| {
        r.name == "jit-board" && r.id != first.id && r.status == "online"
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(&cycles).unwrap_or_default(),
        "cycle\n",
        "{}",
        lab.log()
    );
    assert!(
        lab.log().contains("board `b1` power-cycled between jobs"),
        "{}",
        lab.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oneshot_works_with_a_registration_token_from_the_user_data() {
    let mut lab = Lab::new(ONESHOT_TEMPLATE).await;
    let token = lab.emu.registration_token(REPO).unwrap();
    lab::write_secret(&lab.path("registration-token"), &format!("{token}\n"));
    lab.edit_config(
        "pat_file = \"github-pat\"",
        "registration_token_file = \"registration-token\"",
    );
    lab.start_oneshot(&[]);
    let view = lab.oneshot_online().await;
    let job = lab
        .run_job(
            &["self-hosted", "throwaway"],
            "echo with a registration token\n",
        )
        .await;
    assert_eq!(job.result.as_deref(), Some("succeeded"), "{job:?}");
    assert_eq!(lab.wait_exit(), Some(0), "{}", lab.log());
    // GitHub deleted the ephemeral runner after its job; nothing is left on the host.
    lab.assert_gone(&view);
    assert!(!lab.log().contains(&token), "{}", lab.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oneshot_on_sigterm_during_a_job_says_so_and_deregisters_when_the_job_ends() {
    let mut lab = Lab::new(ONESHOT_TEMPLATE).await;
    lab.start_oneshot(&[]);
    let view = lab.oneshot_online().await;
    let go = lab.dir.path().join("go");
    let script = format!(
        "while [ ! -e '{}' ]; do sleep 0.1; done\necho finished\n",
        go.display()
    );
    let id = lab
        .emu
        .queue_job(REPO, &["self-hosted", "throwaway"], &script)
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while lab.emu.job(id).unwrap().status != JobStatus::InProgress {
        assert!(
            Instant::now() < deadline,
            "job never started: {}",
            lab.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = lab.daemon.as_ref().unwrap().id() as i32;
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    while !lab.log().contains("is running a job") {
        assert!(
            Instant::now() < deadline,
            "busy not reported: {}",
            lab.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(lab.daemon.as_mut().unwrap().try_wait().unwrap().is_none());
    std::fs::write(&go, "").unwrap();
    let job = lab.emu.wait_job(id, WAIT).await.unwrap();
    assert_eq!(job.result.as_deref(), Some("succeeded"), "{job:?}");
    assert_eq!(lab.wait_exit(), Some(0), "{}", lab.log());
    lab.assert_gone(&view);
    assert!(!lab.powered_off().exists(), "powered off after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_jit_runner_takes_no_new_slot_until_undrained() {
    let mut lab = Lab::new(JIT_RUNNER).await;
    lab.start_daemon();
    let first = lab
        .wait_runner("jit-1 online", |r| {
            r.name == "jit-1" && r.status == "online"
        })
        .await;
    let out = lab.command(&["drain", "jit-1"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The idle slot stops, its registration goes, and the daemon starts no other.
    let deadline = Instant::now() + WAIT;
    while !lab.emu.runners(Some(REPO)).is_empty() {
        assert!(Instant::now() < deadline, "slot not ended: {}", lab.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while !lab.log().contains("JIT runner `jit-1` is drained") {
        assert!(Instant::now() < deadline, "{}", lab.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ended = format!("(id {}) ended its slot", first.id);
    assert!(lab.log().contains(&ended), "{}", lab.log());
    assert_eq!(lab.emu.runners(Some(REPO)), Vec::<RunnerView>::new());
    assert!(lab.pid("jit-1").is_none());
    let out = lab.command(&["undrain", "jit-1"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.wait_runner("jit-1 online after undrain", |r| {
        r.name == "jit-1" && r.id != first.id && r.status == "online"
    })
    .await;
}
