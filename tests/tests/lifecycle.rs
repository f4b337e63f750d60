//! The runner lifecycle (`agentctl register|start|stop|status|logs|remove|purge`) against the
//! GitHub emulator with the fake runner release, process backend, runners as `ra-runner`.

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runner_agent_tests::emulator::{Fault, PatSpec, RunnerView};
use runner_agent_tests::support::lab::{self, counted, text, HOST, REPO, VERSION};

const WAIT: Duration = Duration::from_secs(60);

/// The shared lab ([`lab::Lab`]): `count` process runners authenticated with a raw
/// registration token, or a PAT.
struct Lab {
    lab: lab::Lab,
    token_file: PathBuf,
}

runner_agent_tests::deref_lab!(Lab.lab);

impl Lab {
    async fn new(count: u32, labels: &[&str]) -> Lab {
        Lab::with(None, &counted(count), labels).await
    }

    /// A lab whose configuration authenticates with a PAT of `spec`.
    async fn with_pat(spec: PatSpec, runners: &str, labels: &[&str]) -> Lab {
        Lab::with(Some(spec), runners, labels).await
    }

    async fn with(pat: Option<PatSpec>, runners: &str, labels: &[&str]) -> Lab {
        let auth = match pat {
            Some(spec) => lab::Auth::Pat(spec),
            None => lab::Auth::RegistrationToken,
        };
        let lab = lab::Lab::builder()
            .auth(auth)
            .runners(runners)
            .labels(Some(labels))
            .wait(WAIT)
            .start()
            .await;
        Lab {
            token_file: lab.path("registration-token"),
            lab,
        }
    }

    fn write_config(&self, runners: &str, labels: &[&str]) {
        self.write_config_with(|config| {
            config.runners = runners.to_owned();
            config.labels = Some(labels.iter().map(|l| (*l).to_owned()).collect());
        });
    }

    fn agentctl(&self, args: &[&str]) -> Output {
        self.run(args)
    }

    /// `agentctl` on a host called `host`.
    fn agentctl_as(&self, host: &str, args: &[&str]) -> Output {
        self.command_as(host, args).output().unwrap()
    }
}

/// Every process's command line, for the token check.
fn all_cmdlines() -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(bytes) = std::fs::read(entry.path().join("cmdline")) {
            lines.push(String::from_utf8_lossy(&bytes).replace('\0', " "));
        }
    }
    lines
}

/// Every file under `dir`, read as text.
fn files_text(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_symlink() {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_runners_register_run_jobs_show_status_and_purge() {
    let lab = Lab::new(3, &["lab"]).await;
    let token = std::fs::read_to_string(&lab.token_file).unwrap();

    // Slow the runner service so configure takes a while, and watch every command line.
    lab.emu.inject(Fault::Latency {
        ms: 300,
        count: 6,
        path_prefix: Some("/_services/".to_owned()),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        let token = token.clone();
        std::thread::spawn(move || {
            let mut scans = 0u32;
            let mut saw_config = false;
            while !stop.load(Ordering::SeqCst) {
                for line in all_cmdlines() {
                    assert!(!line.contains(&token), "token in argv: {line}");
                    saw_config |= line.contains("Runner.Listener configure");
                }
                scans += 1;
            }
            (scans, saw_config)
        })
    };
    let out = lab.agentctl(&["register"]);
    stop.store(true, Ordering::SeqCst);
    let (scans, saw_config) = watcher.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(scans > 10, "only {scans} scans of /proc");
    assert!(saw_config, "never saw `Runner.Listener configure` running");
    let names = lab.names(3);
    for name in &names {
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("{name}: registered (id ")),
            "{}",
            text(&out)
        );
    }
    assert!(!text(&out).contains(token.trim()), "{}", text(&out));

    // Online, owned by ra-runner, labelled with the configured and marker labels.
    for name in &names {
        let view = lab
            .wait_runner(name, "online", |r| r.status == "online")
            .await;
        let mut labels = view.labels.clone();
        labels.sort();
        assert_eq!(
            labels,
            ["Linux", "X64", "host-labhost", "lab", "self-hosted"]
        );
        let meta = std::fs::metadata(lab.runner_dir(name).join(".runner")).unwrap();
        use std::os::unix::fs::MetadataExt as _;
        let ra = nix::unistd::User::from_name("ra-runner").unwrap().unwrap();
        assert_eq!(meta.uid(), ra.uid.as_raw());
    }

    // A job each: every job waits for a gate, so a runner busy with one cannot take another.
    let gate = lab.dir.path().join("gate");
    let script = format!(
        "id -un\nwhile [ ! -e {} ]; do sleep 0.05; done\n",
        gate.display()
    );
    let jobs: Vec<u64> = (0..3)
        .map(|_| {
            lab.emu
                .queue_job(REPO, &["self-hosted", "lab"], &script)
                .unwrap()
        })
        .collect();
    let deadline = Instant::now() + WAIT;
    while lab
        .emu
        .runners(Some(REPO))
        .iter()
        .filter(|r| r.busy)
        .count()
        < 3
    {
        assert!(
            Instant::now() < deadline,
            "the three runners never all got a job"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(&gate, "").unwrap();
    let mut ran_on = Vec::new();
    for job in jobs {
        let done = lab.emu.wait_job(job, WAIT).await.unwrap();
        assert_eq!(done.result.as_deref(), Some("succeeded"), "{done:?}");
        assert_eq!(done.output.as_deref().map(str::trim), Some("ra-runner"));
        ran_on.push(done.runner_name.unwrap());
    }
    ran_on.sort();
    assert_eq!(ran_on, names);

    // status --json: both views (raw token: the GitHub view is explained, not faked).
    let out = lab.agentctl(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["schema"], "runner-agent.status/1");
    assert_eq!(status["host_label"], "host-labhost");
    let runners = status["runners"].as_array().unwrap();
    assert_eq!(runners.len(), 3);
    for (entry, name) in runners.iter().zip(&names) {
        assert_eq!(entry["name"], name.as_str());
        assert_eq!(entry["local"]["registered"], true);
        assert_eq!(entry["local"]["version"], VERSION);
        assert_eq!(entry["local"]["service"]["backend"], "process");
        assert_eq!(entry["local"]["service"]["state"], "active");
        let pid = entry["local"]["service"]["pid"].as_u64().unwrap();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        let id = lab
            .emu
            .runners(Some(REPO))
            .into_iter()
            .find(|r| &r.name == name)
            .unwrap()
            .id;
        assert_eq!(entry["local"]["id"], id);
        assert!(entry["github"].is_null());
        assert!(entry["github_note"]
            .as_str()
            .unwrap()
            .contains("`registration_token_file` gives no access to GitHub's REST API"));
    }

    // A second register is a no-op: same ids, no new registration, still running.
    let before = lab.emu.runners(Some(REPO));
    let out = lab.agentctl(&["register"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for name in &names {
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("{name}: already registered")),
            "{}",
            text(&out)
        );
    }
    let after = lab.emu.runners(Some(REPO));
    let ids = |v: &[RunnerView]| {
        let mut ids: Vec<u64> = v.iter().map(|r| r.id).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&before), ids(&after));

    // logs, stop, start.
    let out = lab.agentctl(&["logs", &names[0]]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Listening for Jobs"),
        "{}",
        text(&out)
    );
    let out = lab.agentctl(&["stop", &names[0]]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    lab.wait_runner(&names[0], "offline", |r| !r.session_open)
        .await;
    let out = lab.agentctl(&["status", "--json", &names[0]]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status["runners"][0]["local"]["service"]["state"],
        "inactive"
    );
    let out = lab.agentctl(&["start", &names[0]]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    lab.wait_runner(&names[0], "back online", |r| r.session_open)
        .await;

    // No token in any log line or file the runners and the agent wrote.
    let written =
        files_text(&lab.dir.path().join("runners")) + &files_text(&lab.dir.path().join("state"));
    assert!(!written.contains(token.trim()));

    // Purge: processes stopped, directories gone, state gone.
    let pids: Vec<u64> = runners
        .iter()
        .map(|e| e["local"]["service"]["pid"].as_u64().unwrap())
        .collect();
    let out = lab.agentctl(&["purge"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("hint: pass `-y`"), "{}", text(&out));
    let out = lab.agentctl(&["purge", "-y"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for name in &names {
        assert!(!lab.runner_dir(name).exists());
    }
    for pid in pids.iter().skip(1) {
        let deadline = Instant::now() + WAIT;
        while Path::new(&format!("/proc/{pid}/cmdline")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z")
        {
            assert!(Instant::now() < deadline, "pid {pid} still runs");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let left: Vec<_> = std::fs::read_dir(lab.dir.path().join("state/runners"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_raw_registration_token_names_its_expiry_and_suggests_a_pat() {
    let lab = Lab::new(1, &[]).await;
    // The emulator's hour passes.
    lab.emu.advance_clock(3601);
    let out = lab.agentctl(&["register"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected_file = lab.token_file.display().to_string();
    assert!(
        stderr.contains(&format!(
            "the registration token in `{expected_file}` is refused: it expired at "
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: a raw registration token expires one hour after it is minted; configure `pat_file` or `app`"),
        "{stderr}"
    );
    // Nothing half-registered: no local registration, nothing on GitHub.
    assert!(!lab
        .runner_dir(&format!("{HOST}-1"))
        .join(".runner")
        .exists());
    assert!(lab.emu.runners(Some(REPO)).is_empty());

    // A token file written over an hour ago is refused before GitHub is asked, naming when.
    let file = std::fs::File::options()
        .write(true)
        .open(&lab.token_file)
        .unwrap();
    let written = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
    file.set_modified(written).unwrap();
    let expiry = time::OffsetDateTime::from(written + Duration::from_secs(3600))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let out = lab.agentctl(&["register"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "the registration token in `{expected_file}` is refused: it expired at {expiry}, or was revoked"
        )),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_while_configuring_is_retried() {
    let lab = Lab::new(1, &[]).await;
    // The first registration attempt meets a 502 from the runner service.
    lab.emu.inject(Fault::Status {
        status: 502,
        count: 1,
        path_prefix: Some("/_services/pipelines/_apis/distributedtask/pools/".to_owned()),
    });
    let out = lab.agentctl(&["register", "-v"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("failed (attempt 1 of 3), retrying"),
        "{}",
        text(&out)
    );
    let runners = lab.emu.runners(Some(REPO));
    assert_eq!(runners.len(), 1, "{runners:?}");
    lab.wait_runner(&format!("{HOST}-1"), "online", |r| r.status == "online")
        .await;
    // restart: a new listener process, online again.
    let pid = |lab: &Lab| {
        let out = lab.agentctl(&["status", "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        status["runners"][0]["local"]["service"]["pid"].as_u64()
    };
    let before = pid(&lab).unwrap();
    let out = lab.agentctl(&["restart"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let after = pid(&lab).unwrap();
    assert_ne!(before, after);
    lab.wait_runner(&format!("{HOST}-1"), "online again", |r| r.session_open)
        .await;
    let out = lab.agentctl(&["stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_before_register_says_what_to_do() {
    let lab = Lab::new(1, &[]).await;
    let out = lab.agentctl(&["start"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: cannot start runner `labhost-1`: runner `labhost-1` is not registered\n\nhint: `agentctl register labhost-1`\n"
    );
    let out = lab.agentctl(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("labhost-1  not installed  process inactive  runner -\n  github: `registration_token_file` gives no access"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_5xx_leaves_nothing_registered() {
    let lab = Lab::new(1, &[]).await;
    lab.emu.inject(Fault::Status {
        status: 500,
        count: 100,
        path_prefix: Some("/_services/pipelines/_apis/oauth2/".to_owned()),
    });
    let out = lab.agentctl(&["register"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("configuring runner `labhost-1` failed after 3 attempt(s)"),
        "{}",
        text(&out)
    );
    let dir = lab.runner_dir(&format!("{HOST}-1"));
    assert!(!dir.join(".runner").exists());
    assert!(!dir.join(".credentials").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_pat_labels_change_in_place_remove_deregisters_and_purge_leaves_nothing() {
    let lab = Lab::with_pat(PatSpec::classic(&["repo"]), &counted(2), &["lab"]).await;
    let pat = lab.pat.clone().unwrap();
    let out = lab.agentctl(&["register"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains(&pat));
    let names = lab.names(2);
    let mut ids = Vec::new();
    for name in &names {
        let view = lab
            .wait_runner(name, "online", |r| r.status == "online")
            .await;
        ids.push(view.id);
    }

    // status --json joins both views.
    let out = lab.agentctl(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (entry, id) in status["runners"].as_array().unwrap().iter().zip(&ids) {
        assert_eq!(entry["local"]["id"], *id);
        assert_eq!(entry["local"]["service"]["state"], "active");
        assert_eq!(entry["github"]["id"], *id);
        assert_eq!(entry["github"]["status"], "online");
        assert_eq!(entry["github"]["busy"], false);
        let mut labels: Vec<String> = entry["github"]["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_owned())
            .collect();
        labels.sort();
        assert_eq!(
            labels,
            ["Linux", "X64", "host-labhost", "lab", "self-hosted"]
        );
        assert!(entry.get("github_note").is_none());
    }
    let human = lab.agentctl(&["status"]);
    let human = String::from_utf8_lossy(&human.stdout).into_owned();
    assert!(
        human.contains(&format!("  github: id {} online  labels ", ids[0])),
        "{human}"
    );

    // A label change is applied in place: same ids, new labels, no new registration.
    lab.write_config(&counted(2), &["lab", "fast"]);
    let out = lab.agentctl(&["register"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!(
            "{}: already registered (id {}), labels set to lab,fast,host-labhost",
            names[0], ids[0]
        )),
        "{}",
        text(&out)
    );
    for (name, id) in names.iter().zip(&ids) {
        let view = lab
            .wait_runner(name, "relabelled", |r| r.labels.iter().any(|l| l == "fast"))
            .await;
        assert_eq!(view.id, *id);
    }
    let out = lab.agentctl(&["register"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!(
            "{}: already registered (id {})\n",
            names[0], ids[0]
        )),
        "{}",
        text(&out)
    );

    // remove deregisters on GitHub and deletes the directory.
    let out = lab.agentctl(&["remove", "-y", &names[0]]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!lab.runner_dir(&names[0]).exists());
    let left: Vec<String> = lab
        .emu
        .runners(Some(REPO))
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(left, [names[1].clone()]);

    // A runner GitHub forgot is registered again by `register`.
    lab.emu.delete_runner(ids[1]);
    let out = lab.agentctl(&["register", &names[1]]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{}: registered (id ", names[1])),
        "{}",
        text(&out)
    );
    let again = lab
        .wait_runner(&names[1], "online again", |r| r.status == "online")
        .await;
    assert_ne!(again.id, ids[1]);

    // A runner GitHub forgot is removed locally all the same.
    lab.emu.delete_runner(again.id);
    let out = lab.agentctl(&["remove", "-y", &names[1]]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!lab.runner_dir(&names[1]).exists());

    // Register again, leave an orphan of this host on GitHub, then purge: nothing left.
    let out = lab.agentctl(&["register"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    lab.write_config(&counted(1), &["lab"]);
    let out = lab.agentctl(&["purge", "-y"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(lab.emu.runners(Some(REPO)).is_empty());
    for name in &names {
        assert!(!lab.runner_dir(name).exists(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_hosts_runner_of_the_same_name_is_never_replaced() {
    let runners = "[[runner]]\nname = \"shared-1\"\n";
    let lab = Lab::with_pat(PatSpec::classic(&["repo"]), runners, &[]).await;
    let out = lab.agentctl_as("otherhost", &["register"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let theirs = lab
        .wait_runner("shared-1", "online", |r| r.status == "online")
        .await;
    // This host's directory is the same path in the test; make it look like a fresh host.
    let out = lab.agentctl_as("otherhost", &["stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    std::fs::remove_dir_all(lab.runner_dir("shared-1")).unwrap();

    let out = lab.agentctl(&["register"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "a runner named `shared-1` is already registered on GitHub (id {}) and is not this host's: it lacks the label `host-labhost`",
            theirs.id
        )),
        "{}",
        text(&out)
    );
    let after = lab.emu.runners(Some(REPO));
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].id, theirs.id);
    assert!(after[0].labels.iter().any(|l| l == "host-otherhost"));

    // Purge on this host leaves the other host's runner alone.
    let out = lab.agentctl(&["purge", "-y"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(lab.emu.runners(Some(REPO)).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pat_without_the_scope_or_revoked_is_a_clear_error() {
    let lab = Lab::with_pat(PatSpec::classic(&["read:org"]), &counted(1), &[]).await;
    let out = lab.agentctl(&["register"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.contains("cannot register runner `labhost-1`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: the credentials need the `repo` scope and admin rights on the repository; the token has the scopes `read:org`"),
        "{stderr}"
    );
    assert!(lab.emu.runners(Some(REPO)).is_empty());

    let lab = Lab::with_pat(PatSpec::classic(&["repo"]), &counted(1), &[]).await;
    lab.emu.revoke_token(lab.pat.as_deref().unwrap());
    let out = lab.agentctl(&["register"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains("answered 401: Bad credentials"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "hint: the token was revoked or expired: replace `{}`",
            lab.dir.path().join("github-pat").display()
        )),
        "{stderr}"
    );
    assert!(lab.emu.runners(Some(REPO)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_pat_a_failed_configure_leaves_no_registration_on_github() {
    let lab = Lab::with_pat(PatSpec::classic(&["repo"]), &counted(1), &[]).await;
    // Registered on the service, then the credential check fails every time.
    lab.emu.inject(Fault::Status {
        status: 500,
        count: 100,
        path_prefix: Some("/_services/pipelines/_apis/oauth2/".to_owned()),
    });
    let out = lab.agentctl(&["register"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("configuring runner `labhost-1` failed after 3 attempt(s)"),
        "{}",
        text(&out)
    );
    assert!(lab.emu.runners(Some(REPO)).is_empty());
    assert!(!lab.runner_dir("labhost-1").join(".runner").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_runner_gets_the_board_label_environment_and_hooks() {
    // The board's console: a real pty whose slave only the runner user may open, behind a
    // stable by-id style link, as udev would publish it.
    let (pty, slave) = runner_agent_tests::support::console_pty();
    let ra = nix::unistd::User::from_name("ra-runner").unwrap().unwrap();
    nix::unistd::chown(&slave, Some(ra.uid), Some(ra.gid)).unwrap();
    std::fs::set_permissions(&slave, std::fs::Permissions::from_mode(0o600)).unwrap();
    let by_id = tempfile::tempdir().unwrap();
    let link = by_id.path().join("usb-Sim_Board_0001-if00-port0");
    std::os::unix::fs::symlink(&slave, &link).unwrap();

    let runners = format!(
        "[[runner]]\nname = \"board-1\"\nboard = \"sim-1\"\n\n\
         [[board]]\nname = \"sim-1\"\nlabels = [\"simboard\"]\nenv = {{ BOARD_DTB = \"sim.dtb\" }}\n\
         [board.console]\npath = \"{}\"\nbaud = 115200\n",
        link.display()
    );
    let lab = Lab::with(None, &runners, &["lab"]).await;
    let out = lab.agentctl(&["register"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let view = lab
        .wait_runner("board-1", "online", |r| r.status == "online")
        .await;
    let mut labels = view.labels.clone();
    labels.sort();
    assert_eq!(
        labels,
        [
            "Linux",
            "X64",
            "host-labhost",
            "lab",
            "self-hosted",
            "sim-1",
            "simboard"
        ]
    );
    // The lease directory is ready for the runner user's hooks: root and the runner's group,
    // setgid, nobody else.
    {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(lab.dir.path().join("state/boards")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o2770);
        assert_eq!((meta.uid(), meta.gid()), (0, ra.gid.as_raw()));
    }
    // The listener runs with the board's job environment and the job hooks that take and give
    // back the board.
    let hooks = lab.dir.path().join("state/runners/board-1.hooks");
    let env = std::fs::read_to_string(lab.dir.path().join("state/runners/board-1.env")).unwrap();
    assert!(env.contains("BOARD_DTB=sim.dtb\n"), "{env}");
    assert!(env.contains("RUNNER_AGENT_BOARD=sim-1\n"), "{env}");
    assert!(
        env.contains(&format!(
            "ACTIONS_RUNNER_HOOK_JOB_STARTED={}\n",
            hooks.join("job-started.sh").display()
        )),
        "{env}"
    );

    // A job on the board: it sees the board's values, opens the console as the runner user and
    // writes to it, and holds the board's lease until it ends.
    let gate = lab.dir.path().join("gate");
    let script = format!(
        "echo \"uart=$BOARD_COMM_UART_DEV baud=$BOARD_COMM_UART_BAUD dtb=$BOARD_DTB board=$RUNNER_AGENT_BOARD\"\n\
         exec 3<>\"$BOARD_COMM_UART_DEV\"\necho \"opened as $(id -un)\"\nprintf 'hello-board\\n' >&3\n\
         while [ ! -e {} ]; do sleep 0.05; done\n",
        gate.display()
    );
    let job = lab
        .emu
        .queue_job(REPO, &["self-hosted", "sim-1"], &script)
        .unwrap();
    let leased = |lab: &Lab| -> serde_json::Value {
        let out = lab.agentctl(&["board", "list", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        list[0].clone()
    };
    let deadline = Instant::now() + WAIT;
    let entry = loop {
        let entry = leased(&lab);
        if entry["state"] == "leased" {
            break entry;
        }
        let view = lab.emu.job(job).unwrap();
        assert!(
            view.result.is_none(),
            "the job ended without the board: {view:?}"
        );
        assert!(
            Instant::now() < deadline,
            "the job never took the board: {entry}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(entry["lease"]["runner"], "board-1", "{entry}");
    assert!(
        entry["lease"]["job"]
            .as_str()
            .unwrap()
            .contains(&job.to_string()),
        "{entry}"
    );
    std::fs::write(&gate, "").unwrap();
    let done = lab.emu.wait_job(job, WAIT).await.unwrap();
    let output = done.output.clone().unwrap_or_default();
    assert_eq!(done.result.as_deref(), Some("succeeded"), "{output}");
    assert!(
        output.contains(&format!(
            "uart={} baud=115200 dtb=sim.dtb board=sim-1",
            link.display()
        )),
        "{output}"
    );
    assert!(output.contains("opened as ra-runner"), "{output}");
    for hook in ["job-started.sh", "job-completed.sh"] {
        assert!(
            output.contains(&format!("Run '{}'", hooks.join(hook).display())),
            "{output}"
        );
    }
    // What the job wrote reached the board's side of the pty.
    let mut buf = [0u8; 64];
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&pty.master),
        nix::poll::PollFlags::POLLIN,
    )];
    assert_eq!(nix::poll::poll(&mut fds, 5000u16).unwrap(), 1);
    let n = nix::unistd::read(&pty.master, &mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).contains("hello-board"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // The completed hook gave the board back.
    assert_eq!(leased(&lab)["state"], "idle");
    let out = lab.agentctl(&["stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
