//! The fake runner release: layout, scripts and listener behaviour that needs no emulator, and
//! (in `fake_runner_e2e`) the whole loop against the GitHub emulator.

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use runner_agent_tests::fake_runner::{build_release, listener_binary, ReleaseSpec};

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A release unpacked into a fresh directory (world-traversable so `ra-runner` can use it).
struct Unpacked {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

fn build(version: &str, arch: &str, out: &Path) -> runner_agent_tests::fake_runner::BuiltRelease {
    build_release(
        &ReleaseSpec {
            version: version.into(),
            arch: arch.into(),
            listener: listener_binary(),
            pad_bytes: 0,
            pad_files: 0,
        },
        out,
    )
    .expect("build the fake release")
}

fn unpack(version: &str) -> Unpacked {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let built = build(version, "x64", &dir.path().join("out"));
    let root = dir.path().join("actions-runner");
    std::fs::create_dir(&root).unwrap();
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&built.path)
        .arg("-C")
        .arg(&root)
        .status()
        .unwrap();
    assert!(status.success());
    Unpacked { _dir: dir, root }
}

fn chown_to_runner(path: &Path) {
    let status = Command::new("chown")
        .args(["-R", "ra-runner:ra-runner"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A command run as `ra-runner` with a clean environment plus `env`.
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
    .stdin(Stdio::null());
    c
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn bom_json(value: serde_json::Value) -> Vec<u8> {
    let mut bytes = BOM.to_vec();
    bytes.extend(serde_json::to_vec_pretty(&value).unwrap());
    bytes
}

/// `.runner` + `.credentials` + `.credentials_rsaparams` as configure writes them.
fn write_configured(root: &Path, name: &str) {
    std::fs::write(
        root.join(".runner"),
        bom_json(serde_json::json!({
            "agentId": 7, "agentName": name, "poolId": 1, "poolName": "Default",
            "serverUrl": "http://127.0.0.1:9/_services/pipelines/",
            "gitHubUrl": "http://127.0.0.1:9/octo/repo", "workFolder": "_work"
        })),
    )
    .unwrap();
    std::fs::write(
        root.join(".credentials"),
        bom_json(serde_json::json!({"scheme": "OAuth", "data": {"clientId": "c", "authorizationUrl": "http://127.0.0.1:9/x", "requireFipsCryptography": "False"}})),
    )
    .unwrap();
    std::fs::write(
        root.join(".credentials_rsaparams"),
        bom_json(serde_json::json!({"publicKey": "k"})),
    )
    .unwrap();
}

#[test]
fn the_tarball_has_the_real_layout_names_and_modes() {
    let dir = tempfile::tempdir().unwrap();
    let built = build("2.336.0", "arm64", dir.path());
    assert_eq!(
        built.path.file_name().unwrap().to_str().unwrap(),
        "actions-runner-linux-arm64-2.336.0.tar.gz"
    );
    let bytes = std::fs::read(&built.path).unwrap();
    assert_eq!(built.size, bytes.len() as u64);
    use sha2::Digest as _;
    assert_eq!(built.sha256, hex::encode(sha2::Sha256::digest(&bytes)));
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut entries = std::collections::BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
        entries.insert(name, entry.header().mode().unwrap());
    }
    for (name, mode) in [
        ("./config.sh", 0o755),
        ("./run.sh", 0o755),
        ("./env.sh", 0o755),
        ("./run-helper.sh.template", 0o755),
        ("./safe_sleep.sh", 0o755),
        ("./bin/Runner.Listener", 0o755),
        ("./bin/runsvc.sh", 0o755),
        ("./bin/systemd.svc.sh.template", 0o644),
        ("./bin/actions.runner.service.template", 0o644),
        ("./externals/", 0o755),
    ] {
        assert_eq!(entries.get(name), Some(&mode), "{name} in {entries:?}");
    }
    assert!(
        !entries.contains_key("./svc.sh"),
        "svc.sh is generated at configure"
    );
}

#[test]
fn padding_makes_a_runner_sized_tarball_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let built = build_release(
        &ReleaseSpec {
            version: "2.336.0".into(),
            arch: "x64".into(),
            listener: listener_binary(),
            pad_bytes: 20 << 20,
            pad_files: 300,
        },
        dir.path(),
    )
    .unwrap();
    // Incompressible padding: the archive is about as large as the padding.
    assert!(built.size > 20 << 20, "{}", built.size);
    let out = Command::new("tar")
        .arg("-tzf")
        .arg(&built.path)
        .output()
        .unwrap();
    let listing = String::from_utf8(out.stdout).unwrap();
    let files = listing
        .lines()
        .filter(|l| l.starts_with("./externals/pad") && l.ends_with(".bin"))
        .count();
    assert_eq!(files, 300);
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

#[test]
fn listener_reports_the_baked_in_version() {
    let u = unpack("2.330.1");
    let out = Command::new(u.root.join("bin/Runner.Listener"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(text(&out).0, "2.330.1\n");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn config_sh_refuses_root_without_runner_allow_runasroot() {
    let u = unpack("2.336.0");
    let out = Command::new("bash")
        .arg(u.root.join("config.sh"))
        .args(["--unattended", "--url", "http://127.0.0.1:9/o/r"])
        .env_remove("RUNNER_ALLOW_RUNASROOT")
        .output()
        .unwrap();
    assert_eq!(text(&out).0, "Must not run with sudo\n");
    assert_eq!(out.status.code(), Some(1));
    let out = Command::new("bash")
        .arg(u.root.join("run.sh"))
        .env_remove("RUNNER_ALLOW_RUNASROOT")
        .output()
        .unwrap();
    assert!(
        text(&out)
            .0
            .starts_with("Must not run interactively with sudo\n"),
        "{:?}",
        text(&out)
    );
}

#[test]
fn unattended_configure_names_the_missing_input_and_reads_env_inputs() {
    let u = unpack("2.336.0");
    chown_to_runner(&u.root);
    // No url at all.
    let out = as_runner("./config.sh", &u.root)
        .arg("--unattended")
        .output()
        .unwrap();
    let (_, err) = text(&out);
    assert!(
        err.contains(
            "Invalid configuration provided for url. Terminating unattended configuration."
        ),
        "{err}"
    );
    assert_eq!(out.status.code(), Some(1));
    // url and unattended from the environment ("true" in any case), token missing.
    let out = as_runner("./config.sh", &u.root)
        .env("ACTIONS_RUNNER_INPUT_URL", "http://127.0.0.1:9/o/r")
        .env("actions_runner_input_UNATTENDED", "True")
        .output()
        .unwrap();
    let (stdout, err) = text(&out);
    assert!(
        err.contains(
            "Invalid configuration provided for token. Terminating unattended configuration."
        ),
        "{err}"
    );
    assert!(
        !stdout.contains("What is your runner register token?"),
        "{stdout}"
    );
    // "1" is not true: the listener is interactive and prompts (stdin is empty, so it fails).
    let out = as_runner("./config.sh", &u.root)
        .env("ACTIONS_RUNNER_INPUT_URL", "http://127.0.0.1:9/o/r")
        .env("ACTIONS_RUNNER_INPUT_UNATTENDED", "1")
        .output()
        .unwrap();
    assert!(
        text(&out).0.contains("What is your runner register token?"),
        "{:?}",
        text(&out)
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn unknown_inputs_only_warn_and_equals_form_is_not_split() {
    let u = unpack("2.336.0");
    chown_to_runner(&u.root);
    let out = as_runner("./config.sh", &u.root)
        .args(["--url=http://127.0.0.1:9/o/r", "--unattended"])
        .output()
        .unwrap();
    let (_, err) = text(&out);
    assert!(
        err.contains("Unrecognized command-line input arguments for command configure: 'url=http://127.0.0.1:9/o/r'. For usage refer to: .\\config.cmd --help or ./config.sh --help"),
        "{err}"
    );
    // It went on, and found no url.
    assert!(
        err.contains("Invalid configuration provided for url."),
        "{err}"
    );
}

#[test]
fn configure_refuses_an_already_configured_runner() {
    let u = unpack("2.336.0");
    write_configured(&u.root, "r1");
    chown_to_runner(&u.root);
    let out = as_runner("./config.sh", &u.root)
        .args([
            "--unattended",
            "--url",
            "http://127.0.0.1:9/o/r",
            "--token",
            "T",
        ])
        .output()
        .unwrap();
    assert_eq!(
        text(&out).1,
        "Cannot configure the runner because it is already configured. To reconfigure the runner, run 'config.cmd remove' or './config.sh remove' first.\n"
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn remove_local_deletes_only_local_state_and_remove_refuses_with_a_service() {
    let u = unpack("2.336.0");
    write_configured(&u.root, "r1");
    std::fs::write(
        u.root.join(".service"),
        "actions.runner._services.r1.service\n",
    )
    .unwrap();
    chown_to_runner(&u.root);
    let out = as_runner("./config.sh", &u.root)
        .args(["remove", "--token", "T"])
        .output()
        .unwrap();
    assert_eq!(text(&out).1, "Uninstall service first\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(u.root.join(".runner").exists());
    std::fs::write(u.root.join(".env"), "LANG=kept\n").unwrap();
    let out = as_runner("./config.sh", &u.root)
        .args(["REMOVE", "--local"])
        .env("LANG", "C.UTF-8")
        .env("JAVA_HOME", "/opt/jdk")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    for gone in [".runner", ".credentials", ".credentials_rsaparams"] {
        assert!(!u.root.join(gone).exists(), "{gone}");
    }
    assert!(u.root.join(".service").exists());
    // env.sh ran: .path is the PATH; .env gains listed variables it does not have yet.
    assert_eq!(
        std::fs::read_to_string(u.root.join(".path")).unwrap(),
        "/usr/local/bin:/usr/bin:/bin\n"
    );
    assert_eq!(
        std::fs::read_to_string(u.root.join(".env")).unwrap(),
        "LANG=kept\nJAVA_HOME=/opt/jdk\n"
    );
}

#[test]
fn run_without_configuration_is_a_terminated_error() {
    let u = unpack("2.336.0");
    chown_to_runner(&u.root);
    let out = as_runner("./bin/Runner.Listener", &u.root)
        .arg("run")
        .output()
        .unwrap();
    assert!(
        text(&out).1.starts_with("Runner is not configured.\n"),
        "{:?}",
        text(&out)
    );
    assert_eq!(out.status.code(), Some(1));
}

/// Replaces the listener with a script that exits with the codes listed in `codes` (one per run)
/// and prints "Listening for Jobs" first when the line says `L<code>`.
fn stub_listener(root: &Path, codes: &[&str]) {
    std::fs::write(root.join("codes"), codes.join("\n") + "\n").unwrap();
    let script = r#"#!/bin/bash
here="$(cd "$(dirname "$0")/.." && pwd)"
echo "args: $*" >>"$here/calls"
n=$(wc -l <"$here/calls")
line=$(sed -n "${n}p" "$here/codes")
if [ -n "$STUB_TRAP" ]; then trap 'echo got SIGINT >>"$here/calls"; exit 0' INT; echo "$(date -u): Listening for Jobs"; while :; do sleep 0.05; done; fi
case $line in L*) echo "$(date -u): Listening for Jobs"; line=${line#L};; esac
exit "${line:-0}"
"#;
    let path = root.join("bin/Runner.Listener");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn run_helper_maps_listener_exit_codes_like_the_real_one() {
    let u = unpack("2.336.0");
    for (listener, helper, message) in [
        (
            "0",
            0,
            "Runner listener exit with 0 return code, stop the service, no retry needed.",
        ),
        (
            "1",
            0,
            "Runner listener exit with terminated error, stop the service, no retry needed.",
        ),
        (
            "2",
            2,
            "Runner listener exit with retryable error, re-launch runner in 5 seconds.",
        ),
        ("3", 2, "Update finished successfully."),
        ("4", 2, "Update finished successfully."),
        (
            "5",
            0,
            "Runner listener exit with Session Conflict error, stop the service, no retry needed.",
        ),
        ("9", 0, "Exiting with unknown error code: 9"),
    ] {
        let _ = std::fs::remove_file(u.root.join("calls"));
        stub_listener(&u.root, &[listener]);
        std::fs::copy(
            u.root.join("run-helper.sh.template"),
            u.root.join("run-helper.sh"),
        )
        .unwrap();
        // The update case finds update.finished at once (it is looked up in the cwd).
        std::fs::write(u.root.join("update.finished"), "").unwrap();
        let out = Command::new("bash")
            .arg(u.root.join("run-helper.sh"))
            .current_dir(&u.root)
            .env("RUNNER_ALLOW_RUNASROOT", "1")
            .env("FAKE_RUNNER_RETRY_DELAY_SECONDS", "0")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(helper),
            "listener {listener}: {:?}",
            text(&out)
        );
        assert!(
            text(&out).0.contains(message),
            "listener {listener}: {:?}",
            text(&out)
        );
        assert_eq!(
            std::fs::read_to_string(u.root.join("calls")).unwrap(),
            "args: run\n"
        );
    }
    // run.sh loops while the helper says 2 and passes its arguments through.
    let _ = std::fs::remove_file(u.root.join("calls"));
    stub_listener(&u.root, &["2", "2", "1"]);
    let out = Command::new("bash")
        .arg(u.root.join("run.sh"))
        .arg("--once")
        .current_dir(&u.root)
        .env("RUNNER_ALLOW_RUNASROOT", "1")
        .env("FAKE_RUNNER_RETRY_DELAY_SECONDS", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let (stdout, _) = text(&out);
    assert_eq!(
        stdout.matches("Restarting runner...").count(),
        2,
        "{stdout}"
    );
    assert!(stdout.ends_with("Exiting runner...\n"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(u.root.join("calls")).unwrap(),
        "args: run --once\nargs: run --once\nargs: run --once\n"
    );
}

#[test]
fn runsvc_relaunches_like_runner_service_js() {
    let u = unpack("2.336.0");
    std::fs::copy(u.root.join("bin/runsvc.sh"), u.root.join("runsvc.sh")).unwrap();
    let run = |codes: &[&str], env: &[(&str, &str)]| {
        let _ = std::fs::remove_file(u.root.join("calls"));
        stub_listener(&u.root, codes);
        let mut c = Command::new(u.root.join("runsvc.sh"));
        c.current_dir(&u.root)
            .env("FAKE_RUNNER_RETRY_DELAY_SECONDS", "0");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        let calls = std::fs::read_to_string(u.root.join("calls")).unwrap();
        (out, calls.lines().count())
    };
    // 2, 3, 4 and unknown codes relaunch; 1 stops.
    let (out, runs) = run(&["2", "3", "4", "42", "1"], &[]);
    assert_eq!(runs, 5, "{:?}", text(&out));
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("Runner listener exit because of updating, re-launch runner in 5 seconds.")
    );
    assert!(stdout.contains(
        "Runner listener exit with undefined return code, re-launch runner in 5 seconds."
    ));
    assert!(stdout.contains(
        "Runner listener exit with terminated error, stop the service, no retry needed."
    ));
    assert!(
        stdout.contains("args: run --startuptype service")
            || std::fs::read_to_string(u.root.join("calls"))
                .unwrap()
                .contains("args: run --startuptype service")
    );
    // 0 and 5 stop at once.
    assert_eq!(run(&["5"], &[]).1, 1);
    assert_eq!(run(&["0"], &[]).1, 1);
    // Ten retryable exits in a row stop the service...
    let (out, runs) = run(&["2"; 12], &[]);
    assert_eq!(runs, 10);
    assert!(text(&out)
        .1
        .contains("Stopping the runner after 10 consecutive re-tryable failures"));
    // ...unless the listener reached "Listening for Jobs" in between.
    let mut codes = vec!["2"; 9];
    codes.push("L2");
    codes.extend(["2", "2", "1"]);
    assert_eq!(run(&codes, &[]).1, 13);
    // GITHUB_ACTIONS_SERVICE_EXIT_AFTER_N_FAILURES bounds unknown codes.
    let (out, runs) = run(
        &["42"; 5],
        &[("GITHUB_ACTIONS_SERVICE_EXIT_AFTER_N_FAILURES", "3")],
    );
    assert_eq!(runs, 3);
    assert!(text(&out).1.contains("Runner listener exit with undefined return code, exiting service after 3 consecutive failures"));
}

#[test]
fn runsvc_forwards_sigterm_to_the_listener_as_sigint() {
    let u = unpack("2.336.0");
    std::fs::copy(u.root.join("bin/runsvc.sh"), u.root.join("runsvc.sh")).unwrap();
    stub_listener(&u.root, &["0"]);
    let mut child = Command::new(u.root.join("runsvc.sh"))
        .current_dir(&u.root)
        .env("STUB_TRAP", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    // Wait for readiness, then stop the "service".
    loop {
        let line = lines.next().expect("runsvc.sh ended early").unwrap();
        if line.contains("Listening for Jobs") {
            break;
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert!(status.success());
    assert!(
        rest.iter()
            .any(|l| l == "Sending SIGINT to runner listener to stop"),
        "{rest:?}"
    );
    assert!(
        rest.iter()
            .any(|l| l == "Runner listener exited with error code 0"),
        "{rest:?}"
    );
    assert!(std::fs::read_to_string(u.root.join("calls"))
        .unwrap()
        .contains("got SIGINT"));
}

#[test]
fn svc_sh_is_generated_with_the_real_unit_name_and_needs_root() {
    let u = unpack("2.336.0");
    write_configured(&u.root, "svc-test-runner");
    chown_to_runner(&u.root);
    let out = as_runner("./config.sh", &u.root)
        .arg("--generateServiceConfig")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let svc = std::fs::read_to_string(u.root.join("svc.sh")).unwrap();
    assert!(
        svc.contains("SVC_NAME=\"actions.runner._services.svc-test-runner.service\"\n"),
        "{svc}"
    );
    assert!(svc.contains("SVC_DESCRIPTION=\"GitHub Actions Runner (_services.svc-test-runner)\"\n"));
    let mode = std::fs::metadata(u.root.join("svc.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    let out = as_runner("./svc.sh", &u.root)
        .arg("install")
        .output()
        .unwrap();
    assert_eq!(text(&out).0, "Must run as sudo\n");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn svc_sh_install_writes_the_unit_and_dot_service_and_uninstall_removes_them() {
    let u = unpack("2.336.0");
    let name = format!("svc-{}", std::process::id());
    write_configured(&u.root, &name);
    chown_to_runner(&u.root);
    let out = as_runner("./config.sh", &u.root)
        .arg("--generateServiceConfig")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    // This machine has no systemd as PID 1: a stand-in systemctl records what svc.sh asks.
    let fake_bin = u.root.parent().unwrap().join("fakebin");
    std::fs::create_dir(&fake_bin).unwrap();
    let log = u.root.parent().unwrap().join("systemctl.log");
    std::fs::write(
        fake_bin.join("systemctl"),
        format!("#!/bin/bash\necho \"$*\" >>{}\n", log.display()),
    )
    .unwrap();
    std::fs::set_permissions(
        fake_bin.join("systemctl"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", fake_bin.display());
    let unit_name = format!("actions.runner._services.{name}.service");
    let unit = PathBuf::from("/etc/systemd/system").join(&unit_name);
    std::fs::create_dir_all("/etc/systemd/system").unwrap();
    let out = Command::new("./svc.sh")
        .arg("status")
        .current_dir(&u.root)
        .env("PATH", &path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    assert_eq!(text(&out).0, "\nnot installed\n\n");
    let out = Command::new("./svc.sh")
        .arg("install")
        .arg("ra-runner")
        .current_dir(&u.root)
        .env("PATH", &path)
        .output()
        .unwrap();
    let cleanup = scopeguard(unit.clone());
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let text_unit = std::fs::read_to_string(&unit).unwrap();
    let root = u.root.display();
    assert_eq!(
        text_unit,
        format!("[Unit]\nDescription=GitHub Actions Runner (_services.{name})\nAfter=network-online.target\n\n[Service]\nExecStart={root}/runsvc.sh\nUser=ra-runner\nWorkingDirectory={root}\nKillMode=process\nKillSignal=SIGTERM\nTimeoutStopSec=5min\n\n[Install]\nWantedBy=multi-user.target\n")
    );
    assert_eq!(
        std::fs::metadata(&unit).unwrap().permissions().mode() & 0o777,
        0o664
    );
    assert_eq!(
        std::fs::read_to_string(u.root.join(".service")).unwrap(),
        format!("{unit_name}\n")
    );
    assert_eq!(
        std::fs::read(u.root.join("runsvc.sh")).unwrap(),
        std::fs::read(u.root.join("bin/runsvc.sh")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        format!("daemon-reload\nenable {unit_name}\n")
    );
    let out = Command::new("./svc.sh")
        .arg("status")
        .current_dir(&u.root)
        .env("PATH", &path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert_eq!(text(&out).0, format!("\n{}\n", unit.display()));
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .ends_with(&format!("--no-pager status {unit_name}\n")));
    let out = Command::new("./svc.sh")
        .arg("uninstall")
        .current_dir(&u.root)
        .env("PATH", &path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert!(!unit.exists());
    assert!(!u.root.join(".service").exists());
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains(&format!("stop {unit_name}\n")));
    drop(cleanup);
}

/// Removes the unit file even when an assertion fails.
fn scopeguard(path: PathBuf) -> impl Drop {
    struct Guard(PathBuf);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    Guard(path)
}
