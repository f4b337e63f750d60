//! `agentctl config check` on every fixture in `tests/data/config/`: the real binary, its exit
//! status and its exact output, snapshotted with insta.
//!
//! Each run has its working directory in the fixture's directory and names the file relatively,
//! so paths in the output are the same on every machine. `{hostname}` is pinned with
//! `RUNNER_AGENT_HOSTNAME`; `$CREDENTIALS_DIRECTORY` and `$RUNNER_AGENT_CONFIG` are cleared.

// Test helpers may fail loudly: a failing helper is a failing test.
#![allow(clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use assert_cmd::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/config")
}

/// Git keeps no file modes but the executable bit: set the secret files' modes the fixtures
/// expect (the checks are about exactly these modes).
fn set_secret_modes() {
    let modes = [
        ("valid/github-pat", 0o600),
        ("valid/github-app.pem", 0o600),
        ("invalid/github-pat", 0o600),
        ("invalid/empty-pat", 0o600),
        ("invalid/world-readable-pat", 0o644),
    ];
    for (file, mode) in modes {
        let path = fixtures().join(file);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|err| panic!("chmod {}: {err}", path.display()));
    }
}

fn agentctl(dir: &Path) -> Command {
    set_secret_modes();
    let mut command = Command::cargo_bin("agentctl").expect("agentctl is built for tests");
    command
        .current_dir(dir)
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("RUNNER_AGENT_CONFIG")
        .env_remove("JOURNAL_STREAM")
        .env("RUNNER_AGENT_HOSTNAME", "testhost");
    command
}

/// Exit status, stdout and stderr of `agentctl config check --config FILE [extra]` run in
/// `tests/data/config/DIR`.
fn check(dir: &str, file: &str, extra: &[&str]) -> String {
    let output = agentctl(&fixtures().join(dir))
        .args(["config", "check", "--config", file])
        .args(extra)
        .output()
        .expect("agentctl runs");
    format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        output
            .status
            .code()
            .map_or("signal".to_owned(), |code| code.to_string()),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    )
}

macro_rules! invalid_fixtures {
    ($($test:ident => $file:literal,)*) => {
        $(
            #[test]
            fn $test() {
                let output = check("invalid", $file, &[]);
                assert!(output.starts_with("exit: 78\n--- stdout\n--- stderr\n"), "{output}");
                insta::assert_snapshot!(output);
            }
        )*
        const INVALID: &[&str] = &[$($file),*];
    };
}

invalid_fixtures! {
    unknown_key => "unknown-key.toml",
    unknown_key_in_runner => "unknown-key-runner.toml",
    wrong_type => "wrong-type.toml",
    two_auths => "two-auths.toml",
    missing_auth => "missing-auth.toml",
    missing_github => "missing-github.toml",
    bad_url => "bad-url.toml",
    http_url => "http-url.toml",
    clone_url => "clone-url.toml",
    duplicate_names => "duplicate-names.toml",
    duplicate_board => "duplicate-board.toml",
    unknown_board => "unknown-board.toml",
    unknown_profile => "unknown-profile.toml",
    invalid_profile => "invalid-profile.toml",
    bad_version => "bad-version.toml",
    bad_label => "bad-label.toml",
    label_whitespace => "label-whitespace.toml",
    count_zero => "count-zero.toml",
    board_placeholder_without_board => "board-placeholder.toml",
    template_without_index => "missing-index.toml",
    long_name => "long-name.toml",
    bad_sha256 => "bad-sha256.toml",
    unreadable_secret => "unreadable-secret.toml",
    world_readable_secret => "world-readable-secret.toml",
    empty_secret => "empty-secret.toml",
    missing_version => "missing-version.toml",
    toml_syntax => "toml-syntax.toml",
    runner_as_root => "runner-as-root.toml",
    tty_usb_console => "tty-usb-console.toml",
    modbus_incomplete => "modbus-incomplete.toml",
    several_problems => "several-problems.toml",
    settings_problems => "settings-problems.toml",
    board_problems => "board-problems.toml",
    board_job_routine => "board-job-routine.toml",
    board_job_flag_type => "board-job-flag-type.toml",
}

fn toml_files(dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures().join(dir))
        .expect("fixture directory exists")
        .map(|entry| {
            entry
                .expect("readable entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".toml"))
        .collect();
    names.sort();
    names
}

#[test]
fn every_invalid_fixture_has_a_snapshot_test() {
    let mut listed: Vec<String> = INVALID.iter().map(|name| (*name).to_owned()).collect();
    listed.sort();
    assert_eq!(toml_files("invalid"), listed);
}

#[test]
fn every_valid_fixture_passes() {
    let files = toml_files("valid");
    assert!(files.len() >= 2, "{files:?}");
    for file in files {
        let output = check("valid", &file, &[]);
        assert!(output.starts_with("exit: 0\n"), "{file}: {output}");
        assert!(
            output.ends_with("--- stderr\n"),
            "{file} wrote to stderr: {output}"
        );
    }
}

#[test]
fn minimal_config_resolves_to_no_runners() {
    insta::assert_snapshot!(check("valid", "minimal.toml", &[]));
}

#[test]
fn full_config_prints_the_resolved_runners() {
    insta::assert_snapshot!(check("valid", "full.toml", &[]));
}

#[test]
fn full_config_as_json() {
    let output = agentctl(&fixtures().join("valid"))
        .args(["config", "check", "--json", "--config", "full.toml"])
        .output()
        .expect("agentctl runs");
    assert_eq!(output.status.code(), Some(0));
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    insta::assert_json_snapshot!(json);
}

#[test]
fn invalid_config_as_json_lists_every_problem_with_its_place() {
    let output = agentctl(&fixtures().join("invalid"))
        .args([
            "config",
            "check",
            "--json",
            "--config",
            "several-problems.toml",
        ])
        .output()
        .expect("agentctl runs");
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("6 problems found"), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    insta::assert_json_snapshot!(json);
}

#[test]
fn the_shipped_example_passes_with_its_secret_in_the_credentials_directory() {
    let credentials = tempfile::tempdir().expect("temporary directory");
    let pat = credentials.path().join("github-pat");
    std::fs::write(&pat, "ghp_notarealtokennotarealtokennotareal00\n").expect("write secret");
    std::fs::set_permissions(&pat, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging");
    let output = agentctl(&example)
        .env("CREDENTIALS_DIRECTORY", credentials.path())
        .args(["config", "check", "--config", "agent.toml.example"])
        .output()
        .expect("agentctl runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = stdout.replace(
        &credentials.path().display().to_string(),
        "[CREDENTIALS_DIRECTORY]",
    );
    insta::assert_snapshot!(stdout);
}

#[test]
fn the_shipped_example_without_its_secret_says_where_to_put_it() {
    let credentials = tempfile::tempdir().expect("temporary directory");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging");
    let output = agentctl(&example)
        .env("CREDENTIALS_DIRECTORY", credentials.path())
        .args(["config", "check", "--config", "agent.toml.example"])
        .output()
        .expect("agentctl runs");
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr).replace(
        &credentials.path().display().to_string(),
        "[CREDENTIALS_DIRECTORY]",
    );
    insta::assert_snapshot!(stderr);
}
