//! The `agentctl` command line as a user meets it: the real binary, its help, exit statuses,
//! JSON output, shell completions and man page.

// Test helpers may fail loudly: a failing helper is a failing test.
#![allow(clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use assert_cmd::Command;
use predicates::prelude::*;

fn agentctl() -> Command {
    let mut command = Command::cargo_bin("agentctl").expect("agentctl is built for tests");
    command
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("RUNNER_AGENT_CONFIG")
        .env_remove("JOURNAL_STREAM")
        .env("RUNNER_AGENT_HOSTNAME", "testhost");
    command
}

/// A valid configuration with one templated runner, in a fresh directory.
fn valid_config() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let pat = dir.path().join("github-pat");
    std::fs::write(&pat, "fixture-token-not-a-real-secret\n").expect("write secret");
    std::fs::set_permissions(&pat, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        r#"version = 1
[github]
url = "https://github.com/octo-org/octo-repo"
pat_file = "github-pat"

[defaults]
labels = ["lab"]

[[runner]]
name_template = "{hostname}-kvm-{index}"
count = 2
labels = ["kvm"]
"#,
    )
    .expect("write config");
    (dir, config)
}

#[test]
fn help_lists_the_real_subcommands() {
    let output = agentctl().arg("--help").assert().success();
    let stdout = String::from_utf8_lossy(&output.get_output().stdout).into_owned();
    let commands: Vec<&str> = stdout
        .split("Commands:")
        .nth(1)
        .and_then(|rest| rest.split("Options:").next())
        .expect("help has a Commands section")
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    for expected in ["config", "completions", "man", "help"] {
        assert!(
            commands.contains(&expected),
            "`{expected}` missing from {commands:?}"
        );
    }
    assert!(stdout.contains("--config <PATH>"), "{stdout}");
}

#[test]
fn config_help_describes_check() {
    agentctl()
        .args(["config", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("check"));
    agentctl()
        .args(["config", "check", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("--json"));
}

#[test]
fn exit_status_0_for_a_valid_config() {
    let (_dir, config) = valid_config();
    agentctl()
        .args(["config", "check", "--config"])
        .arg(&config)
        .assert()
        .code(0)
        .stdout(predicate::str::contains("testhost-kvm-2"))
        .stderr("");
}

#[test]
fn quiet_check_of_a_valid_config_prints_nothing() {
    let (_dir, config) = valid_config();
    agentctl()
        .args(["config", "check", "--quiet", "--config"])
        .arg(&config)
        .assert()
        .code(0)
        .stdout("")
        .stderr("");
    let text = std::fs::read_to_string(&config).expect("read config");
    std::fs::write(&config, text.replace("count = 2", "count = 0")).expect("write config");
    agentctl()
        .args(["config", "check", "--quiet", "--config"])
        .arg(&config)
        .assert()
        .code(78)
        .stdout("")
        .stderr(predicate::str::contains(
            "error: `count = 0` is out of range",
        ));
}

#[test]
fn config_path_comes_from_the_environment_too() {
    let (_dir, config) = valid_config();
    agentctl()
        .env("RUNNER_AGENT_CONFIG", &config)
        .args(["config", "check"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains(config.display().to_string()));
}

#[test]
fn exit_status_2_for_a_usage_error() {
    agentctl()
        .arg("--no-such-flag")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unexpected argument"));
    agentctl()
        .args(["completions", "no-such-shell"])
        .assert()
        .code(2);
    agentctl()
        .assert()
        .code(2)
        .stderr(predicate::str::contains("Usage:"));
}

#[test]
fn exit_status_78_for_a_missing_config_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("agent.toml");
    agentctl()
        .args(["config", "check", "--config"])
        .arg(&missing)
        .assert()
        .code(78)
        .stdout("")
        .stderr(predicate::str::contains(format!(
            "error: `{}` does not exist",
            missing.display()
        )))
        .stderr(predicate::str::contains("hint: pass `--config PATH`"));
}

#[test]
fn default_config_path_is_etc_runner_agent() {
    agentctl()
        .args(["config", "check", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("[env: RUNNER_AGENT_CONFIG=]"))
        .stdout(predicate::str::contains(
            "[default: /etc/runner-agent/agent.toml]",
        ));
}

#[test]
fn config_check_json_has_the_documented_shape() {
    let (_dir, config) = valid_config();
    let output = agentctl()
        .args(["config", "check", "--json", "--config"])
        .arg(&config)
        .output()
        .expect("agentctl runs");
    assert_eq!(output.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    assert_eq!(json["config"], config.display().to_string());
    assert_eq!(json["ok"], true);
    assert!(
        json["boards"].as_array().is_some_and(Vec::is_empty),
        "{json}"
    );
    let runners = json["runners"].as_array().expect("runners is an array");
    let names: Vec<&str> = runners
        .iter()
        .filter_map(|runner| runner["name"].as_str())
        .collect();
    assert_eq!(names, ["testhost-kvm-1", "testhost-kvm-2"]);
    let first = &runners[0];
    assert_eq!(first["user"], "runner");
    assert_eq!(first["dir"], "/var/lib/runner-agent/runners/testhost-kvm-1");
    assert_eq!(first["labels"], serde_json::json!(["lab", "kvm"]));
    assert_eq!(first["version"], "latest");
    assert_eq!(first["ephemeral"], false);
    assert_eq!(first["service"], "systemd");
    assert_eq!(first["board"], serde_json::Value::Null);
    assert_eq!(json["github"]["scope"]["kind"], "repo");
    assert_eq!(json["github"]["api_url"], "https://api.github.com/");
}

#[test]
fn config_check_json_on_a_bad_config_reports_errors_on_stdout() {
    let (dir, config) = valid_config();
    let text = std::fs::read_to_string(&config).expect("read config");
    std::fs::write(&config, text.replace("count = 2", "count = 0")).expect("write config");
    let output = agentctl()
        .args(["config", "check", "--json", "--config"])
        .arg(&config)
        .output()
        .expect("agentctl runs");
    assert_eq!(output.status.code(), Some(78));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    assert_eq!(
        json,
        serde_json::json!({
            "config": config,
            "ok": false,
            "errors": [{
                "file": config,
                "line": 11,
                "column": 9,
                "message": "`count = 0` is out of range",
                "hint": "`count` is how many runners this template makes, from 1 to 1000; remove the `[[runner]]` to have none",
            }],
        })
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: `count = 0` is out of range"),
        "{stderr}"
    );
    drop(dir);
}

#[test]
fn a_secret_pasted_into_the_config_is_masked_in_the_report() {
    let (_dir, config) = valid_config();
    let token = "ghp_16C7e42F292c6912E7710c838347Ae178B4a";
    let text = std::fs::read_to_string(&config).expect("read config");
    std::fs::write(
        &config,
        text.replace("\"github-pat\"", &format!("\"{token}\"")),
    )
    .expect("write");
    let output = agentctl()
        .args(["config", "check", "--json", "--config"])
        .arg(&config)
        .output()
        .expect("agentctl runs");
    assert_eq!(output.status.code(), Some(78));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(
        !stderr.contains(token) && !stdout.contains(token),
        "{stderr}{stdout}"
    );
    assert!(stderr.contains("pat_file = \"***\""), "{stderr}");
}

#[test]
fn bash_completions_mention_agentctl_and_its_subcommands() {
    let output = agentctl().args(["completions", "bash"]).assert().success();
    let script = String::from_utf8_lossy(&output.get_output().stdout).into_owned();
    assert!(script.contains("_agentctl()"), "{script}");
    assert!(script.contains("complete -F _agentctl"), "{script}");
    assert!(script.contains("config"), "{script}");
}

#[test]
fn man_page_renders_as_roff() {
    let output = agentctl().arg("man").assert().success();
    let page = String::from_utf8_lossy(&output.get_output().stdout).into_owned();
    assert!(page.contains(".TH agentctl"), "{page}");
    assert!(page.contains("config"), "{page}");
}

#[test]
fn secret_the_agent_user_cannot_read_is_reported_with_the_os_error() {
    // Root reads any file, so run the check as the unprivileged test user (`scripts/setup`).
    let (dir, config) = valid_config();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let secret = dir.path().join("github-pat");
    let output = Command::new("setpriv")
        .args([
            "--reuid",
            "ra-runner",
            "--regid",
            "ra-runner",
            "--init-groups",
            "--",
        ])
        .arg(assert_cmd::cargo::cargo_bin("agentctl"))
        .args(["config", "check", "--config"])
        .arg(&config)
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("RUNNER_AGENT_CONFIG")
        .env_remove("JOURNAL_STREAM")
        .output()
        .expect("setpriv runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: cannot read secret file `{}`: Permission denied (os error 13)\n",
            secret.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("\nhint: the agent must be able to read it"),
        "{stderr}"
    );
}
