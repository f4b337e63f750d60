//! `agentctl doctor` as a user runs it: the real binary on this machine (real `/dev/kvm`, the real
//! `ra-runner` user), and the github family against loopback servers that misbehave in the ways
//! GitHub and networks do (no answer at all, a refused connection, a skewed `Date`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use assert_cmd::Command;
use serde_json::Value;

fn agentctl() -> Command {
    Command::cargo_bin("agentctl").unwrap()
}

fn run_json(args: &[&str]) -> (i32, Value) {
    let out = agentctl().args(args).arg("--json").output().unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
        panic!(
            "not JSON ({err}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), json)
}

fn finding<'a>(json: &'a Value, id: &str) -> &'a Value {
    json["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no finding `{id}` in {json:#}"))
}

#[test]
fn on_this_machine_kvm_works_for_root_and_not_for_the_runner_user() {
    let (code, json) = run_json(&[
        "--config",
        "/nonexistent/agent.toml",
        "doctor",
        "--only",
        "kvm",
        "--user",
        "ra-runner",
    ]);
    assert_eq!(json["schema"], "runner-agent.doctor/1");
    assert_eq!(finding(&json, "kvm.node")["outcome"], "pass");
    assert_eq!(finding(&json, "kvm.api")["outcome"], "pass");
    assert_eq!(finding(&json, "kvm.vm")["outcome"], "pass");
    let open = finding(&json, "kvm.open");
    assert_eq!(open["subject"], "ra-runner");
    assert_eq!(open["outcome"], "fail");
    assert!(open["hint"]
        .as_str()
        .unwrap()
        .contains("usermod -aG kvm ra-runner"));
    assert_eq!(json["status"], "fail");
    assert_eq!(code, 1);
}

#[test]
fn without_a_config_it_still_checks_the_host_and_says_the_config_is_missing() {
    let (code, json) = run_json(&["--config", "/nonexistent/agent.toml", "doctor", "--offline"]);
    let config = finding(&json, "config.load");
    assert_eq!(config["outcome"], "fail");
    assert!(config["hint"].as_str().unwrap().contains("--config PATH"));
    assert_eq!(finding(&json, "host.os")["outcome"], "pass");
    assert_eq!(finding(&json, "kvm.node")["outcome"], "pass");
    assert_eq!(code, 1);
}

#[test]
fn the_table_has_families_hints_and_a_summary() {
    let out = agentctl()
        .args([
            "--config",
            "/nonexistent/agent.toml",
            "doctor",
            "--only",
            "kvm",
            "--user",
            "ra-runner",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("kvm\n"), "{text}");
    assert!(
        text.contains(
            "  fail  kvm.open [ra-runner]  `ra-runner` cannot open `/dev/kvm` read-write"
        ),
        "{text}"
    );
    assert!(text.contains("hint: "), "{text}");
    assert!(
        !text.contains('\x1b'),
        "no colour when stdout is not a terminal: {text}"
    );
    assert!(text.lines().last().unwrap().starts_with("pass "), "{text}");
}

#[test]
fn strict_turns_warnings_into_failure() {
    // `--only host` on this machine: no systemd and an unsynchronised clock are warnings.
    let (code, json) = run_json(&[
        "--config",
        "/nonexistent/agent.toml",
        "doctor",
        "--only",
        "host",
    ]);
    assert_eq!(json["status"], "warn", "{json:#}");
    assert_eq!(code, 0);
    let (strict, _) = run_json(&[
        "--config",
        "/nonexistent/agent.toml",
        "doctor",
        "--only",
        "host",
        "--strict",
    ]);
    assert_eq!(strict, 1);
}

/// A configuration whose GitHub is `api` (a loopback URL), with a PAT file.
fn config_for(dir: &Path, web: &str, pat: &str) -> PathBuf {
    let pat_file = dir.join("github-pat");
    std::fs::write(&pat_file, format!("{pat}\n")).unwrap();
    std::fs::set_permissions(&pat_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!("version = 1\n\n[github]\nurl = \"{web}\"\npat_file = \"github-pat\"\n"),
    )
    .unwrap();
    path
}

/// Accepts connections and never answers, like a firewall that drops packets after the handshake.
fn black_hole() -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let mut held = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let until = Instant::now() + Duration::from_secs(8);
        while Instant::now() < until {
            match listener.accept() {
                Ok((stream, _)) => held.push(stream),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    (port, handle)
}

#[test]
fn an_unanswering_github_costs_less_than_three_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let (port, _hole) = black_hole();
    let config = config_for(
        dir.path(),
        &format!("http://127.0.0.1:{port}/octo/repo"),
        "ghp_0123456789abcdefghijABCDEFGHIJ012345",
    );
    let started = Instant::now();
    let (code, json) = run_json(&["--config", config.to_str().unwrap(), "doctor"]);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "the whole run took {took:?}");
    let api = finding(&json, "github.api");
    assert_eq!(api["outcome"], "fail");
    assert_eq!(
        api["detail"],
        format!("`http://127.0.0.1:{port}/api/v3` did not answer within 2000 ms (no proxy set)")
    );
    assert_eq!(code, 1);
}

#[test]
fn a_refused_connection_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = config_for(
        dir.path(),
        &format!("http://127.0.0.1:{port}/octo/repo"),
        "ghp_0123456789abcdefghijABCDEFGHIJ012345",
    );
    let (_, json) = run_json(&[
        "--config",
        config.to_str().unwrap(),
        "doctor",
        "--only",
        "github",
    ]);
    let api = finding(&json, "github.api");
    assert_eq!(api["outcome"], "fail");
    let detail = api["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(&format!(
            "cannot reach `http://127.0.0.1:{port}/api/v3` (no proxy set)"
        )),
        "{detail}"
    );
    assert!(
        detail.to_lowercase().contains("connection refused"),
        "{detail}"
    );
    // The token never shows up anywhere.
    assert!(!json.to_string().contains("ghp_0123456789"));
}

#[test]
fn offline_skips_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(
        dir.path(),
        "http://127.0.0.1:9/octo/repo",
        "ghp_0123456789abcdefghijABCDEFGHIJ012345",
    );
    let (_, json) = run_json(&[
        "--config",
        config.to_str().unwrap(),
        "doctor",
        "--only",
        "github",
        "--offline",
    ]);
    assert_eq!(json["findings"].as_array().unwrap().len(), 1, "{json:#}");
    assert_eq!(finding(&json, "github.api")["outcome"], "skip");
}

/// A one-route-per-request HTTP server on loopback answering with `respond(method, path)`.
fn tiny_github(
    respond: impl Fn(&str, &str) -> (u16, Vec<(String, String)>, String) + Send + 'static,
) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let _ = serve(stream, &respond);
        }
    });
    port
}

fn serve(
    stream: TcpStream,
    respond: &impl Fn(&str, &str) -> (u16, Vec<(String, String)>, String),
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let (status, headers, body) = respond(&method, &path);
    let mut out = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\ncontent-type: application/json\r\n", body.len());
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&body);
    let mut stream = stream;
    stream.write_all(out.as_bytes())
}

fn date_in(offset_secs: i64) -> String {
    let now = SystemTime::now();
    let at = if offset_secs >= 0 {
        now + Duration::from_secs(offset_secs as u64)
    } else {
        now - Duration::from_secs((-offset_secs) as u64)
    };
    httpdate::fmt_http_date(at)
}

#[test]
fn a_skewed_date_header_fails_the_clock_check() {
    let port = tiny_github(|method, path| {
        let date = ("date".to_owned(), date_in(-600));
        match (method, path) {
            ("GET", p) if p.starts_with("/api/v3/repos/octo/repo/actions/runners") => (
                200,
                vec![
                    date,
                    ("x-oauth-scopes".to_owned(), "repo, workflow".to_owned()),
                ],
                r#"{"total_count":0,"runners":[]}"#.to_owned(),
            ),
            ("POST", "/api/v3/repos/octo/repo/actions/runners/registration-token") => (
                201,
                vec![date],
                r#"{"token":"AABF3JGZDX3P5PMEXLND6TS6FCWO6","expires_at":"2026-11-23T07:00:00Z"}"#
                    .to_owned(),
            ),
            _ => (404, vec![date], r#"{"message":"Not Found"}"#.to_owned()),
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(
        dir.path(),
        &format!("http://127.0.0.1:{port}/octo/repo"),
        "ghp_0123456789abcdefghijABCDEFGHIJ012345",
    );
    let out = agentctl()
        .args([
            "--config",
            config.to_str().unwrap(),
            "doctor",
            "--only",
            "github",
            "--json",
        ])
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let clock = finding(&json, "github.clock");
    assert_eq!(clock["outcome"], "fail", "{json:#}");
    let detail = clock["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("this host's clock is 600 s ahead of GitHub's `Date`")
            || detail.starts_with("this host's clock is 599 s ahead")
            || detail.starts_with("this host's clock is 601 s ahead"),
        "{detail}"
    );
    assert_eq!(finding(&json, "github.permission")["outcome"], "pass");
    assert_eq!(finding(&json, "github.token")["outcome"], "pass");
    // The minted registration token is never printed.
    assert!(!String::from_utf8_lossy(&out.stdout).contains("AABF3JGZDX3P5PMEXLND6TS6FCWO6"));
    assert_eq!(out.status.code(), Some(1));
}

/// A board whose console is a real pty behind a stable link, served by a runner of `ra-runner`.
fn board_config(dir: &Path, console: &Path) -> PathBuf {
    let pat_file = dir.join("github-pat");
    std::fs::write(&pat_file, "ghp_0123456789abcdefghijABCDEFGHIJ012345\n").unwrap();
    std::fs::set_permissions(&pat_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "version = 1\n\n[github]\nurl = \"http://127.0.0.1:9/octo/repo\"\npat_file = \"github-pat\"\n\n\
             [defaults]\nuser = \"ra-runner\"\nroot = \"{root}\"\nservice = \"process\"\n\n\
             [[runner]]\nname = \"board-1\"\nboard = \"bench\"\n\n\
             [[board]]\nname = \"bench\"\n\n[board.console]\npath = \"{console}\"\nbaud = 115200\n",
            root = dir.join("runners").display(),
            console = console.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_board_console_is_checked_as_the_runner_user_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let pty = nix::pty::openpty(None, None).unwrap();
    // openpty(3) leaves both ends inheritable: agentctl must see this process as the one other
    // holder, not itself through an inherited descriptor.
    for fd in [&pty.master, &pty.slave] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .unwrap();
    }
    let slave = nix::unistd::ttyname(&pty.slave).unwrap();
    let link = dir.path().join("usb-FTDI_bench-if00-port0");
    std::os::unix::fs::symlink(&slave, &link).unwrap();
    let config = board_config(dir.path(), &link);

    // A fresh pty is the opener's, group tty, 0620: the runner user cannot open it.
    std::fs::set_permissions(&slave, std::fs::Permissions::from_mode(0o620)).unwrap();
    let (code, json) = run_json(&[
        "--config",
        config.to_str().unwrap(),
        "doctor",
        "--only",
        "serial",
    ]);
    assert_eq!(
        finding(&json, "serial.resolve")["detail"],
        format!("`{}` -> `{}`", link.display(), slave.display())
    );
    let open = finding(&json, "serial.open");
    assert_eq!(open["subject"], "bench/console");
    assert_eq!(open["outcome"], "fail", "{json:#}");
    assert!(
        open["detail"]
            .as_str()
            .unwrap()
            .starts_with("`ra-runner` cannot open"),
        "{open}"
    );
    assert_eq!(finding(&json, "serial.baud")["outcome"], "pass");
    assert_eq!(code, 1);

    // This test process still has the slave open: another reader of the console, named.
    let holders = finding(&json, "serial.holders");
    assert_eq!(holders["outcome"], "warn", "{json:#}");
    assert!(
        holders["detail"].as_str().unwrap().contains(&format!(
            "is open (without a lock) by pid {}",
            std::process::id()
        )),
        "{holders}"
    );

    // Closed by us, opened up (what a udev rule with MODE="0666" would do): everything passes.
    drop(pty.slave);
    std::fs::set_permissions(&slave, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, json) = run_json(&[
        "--config",
        config.to_str().unwrap(),
        "doctor",
        "--only",
        "serial",
    ]);
    assert_eq!(finding(&json, "serial.open")["outcome"], "pass", "{json:#}");
    assert_eq!(
        finding(&json, "serial.holders")["outcome"],
        "pass",
        "{json:#}"
    );
    assert_eq!(json["summary"]["fail"], 0, "{json:#}");
    assert_eq!(code, 0);
}

#[test]
fn run_by_the_runner_user_itself_it_checks_that_users_access() {
    // A copy of the binary the unprivileged user can reach (the build tree may be private).
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("agentctl");
    std::fs::copy(assert_cmd::cargo::cargo_bin("agentctl"), &bin).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=ra-runner", "--regid=ra-runner", "--init-groups"])
        .arg(&bin)
        .args([
            "--config",
            "/nonexistent/agent.toml",
            "doctor",
            "--only",
            "kvm",
            "--json",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
        panic!("{err}: {}", String::from_utf8_lossy(&out.stderr));
    });
    let api = finding(&json, "kvm.api");
    assert_eq!(api["outcome"], "skip", "{json:#}");
    let open = finding(&json, "kvm.open");
    assert_eq!(open["subject"], "ra-runner");
    assert_eq!(open["outcome"], "fail");
    assert_eq!(out.status.code(), Some(1));
}
