//! Unit tests of the loader: the resolved values other modules rely on, and the report's shape.
//! The exact messages of every broken fixture are snapshotted in `agent/tests/config_check.rs`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/config")
}

fn options() -> LoadOptions {
    LoadOptions {
        hostname: Some("testhost".to_owned()),
        credentials_dir: None,
        ..LoadOptions::default()
    }
}

fn private(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A config in a temporary directory with a private `github-pat` next to it.
fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let pat = dir.path().join("github-pat");
    std::fs::write(&pat, "unit-test-token-value\n").unwrap();
    private(&pat);
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

const HEAD: &str = r#"version = 1
[github]
url = "https://github.com/octo-org/octo-repo"
pat_file = "github-pat"
"#;

fn messages(err: &ConfigError) -> Vec<String> {
    err.diagnostics().into_iter().map(|d| d.message).collect()
}

#[test]
fn full_fixture_resolves_defaults_overrides_profiles_and_board_files() {
    let valid = fixtures().join("valid");
    private(&valid.join("github-app.pem"));
    let config = load_with(&valid.join("full.toml"), &options()).unwrap();

    assert_eq!(
        config.github.scope,
        Scope::Enterprise {
            slug: "lab".to_owned()
        }
    );
    assert_eq!(
        config.github.api_url.as_str(),
        "https://ghes.example.com/api/v3"
    );
    match &config.github.auth {
        Auth::App {
            app_id,
            installation_id,
            private_key_file,
        } => {
            assert_eq!((*app_id, *installation_id), (1234, 5678));
            assert_eq!(private_key_file.configured, PathBuf::from("github-app.pem"));
            assert_eq!(private_key_file.resolved, valid.join("github-app.pem"));
        }
        other => panic!("expected an app, got {other:?}"),
    }
    assert_eq!(config.host.kvm, Some(true));

    let names: Vec<&str> = config.runners.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "testhost-kvm-1",
            "testhost-kvm-2",
            "testhost-kvm-3",
            "testhost-rk3568-a",
            "relay-bench"
        ]
    );
    let kvm = config.runner("testhost-kvm-2").unwrap();
    assert_eq!(kvm.labels, ["lab", "fast-disk", "kvm"]);
    assert_eq!(kvm.ephemeral, Ephemeral::Jit);
    assert_eq!(kvm.service, ServiceKind::Process);
    assert_eq!(kvm.user, "ci");
    assert_eq!(kvm.dir, PathBuf::from("/srv/runners/testhost-kvm-2"));
    assert_eq!(kvm.work_dir, PathBuf::from("work"));
    assert_eq!(kvm.group.as_deref(), Some("lab-hosts"));
    assert!(kvm.disable_update);
    assert_eq!(kvm.version.to_string(), "2.336.0");
    assert_eq!(
        kvm.download_mirror.as_ref().map(|u| u.as_str()),
        Some("https://mirror.example/actions-runner")
    );

    let board_runner = config.runner("testhost-rk3568-a").unwrap();
    assert_eq!(board_runner.version, VersionReq::Latest);
    assert_eq!(board_runner.user, "board-ci");
    assert_eq!(board_runner.board.as_deref(), Some("rk3568-a"));

    let bench = config.runner("relay-bench").unwrap();
    assert_eq!(bench.dir, PathBuf::from("/srv/bench/relay-bench"));
    assert_eq!(bench.ephemeral, Ephemeral::Yes);
    assert_eq!(
        bench.sha256.len(),
        2,
        "runner pins are added to the default pins"
    );
    assert_eq!(
        bench
            .sha256
            .get("actions-runner-linux-arm64-2.336.0.tar.gz")
            .map(String::as_str),
        Some("fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210")
    );

    let rk = config.board("rk3568-a").unwrap();
    assert_eq!(
        rk.arch.as_deref(),
        Some("aarch64"),
        "arch comes from the profile"
    );
    assert_eq!(rk.labels, ["roc-rk3568-pc", "rk3568"]);
    assert_eq!(rk.boot_prompt.as_deref(), Some("root@firefly:~#"));
    assert_eq!(
        rk.env.get("BOARD_CONSOLE").map(String::as_str),
        Some("ttyFIQ0"),
        "instance wins"
    );
    assert_eq!(
        rk.env.get("BOARD_DTB").map(String::as_str),
        Some("rk3568-firefly-roc-pc.dtb")
    );
    let console = rk.console.as_ref().unwrap();
    assert_eq!(console.baud, 1_500_000, "baud comes from the profile");
    assert_eq!(
        console.identity,
        SerialIdentity::Udev {
            id_serial_short: Some("A10K1234".to_owned()),
            id_path: None,
            usb_interface_num: Some("00".to_owned()),
        }
    );
    match rk.power.as_ref().unwrap() {
        Power::ModbusRtu {
            parity,
            slave,
            coil,
            coil_base,
            cycle_off_secs,
            ..
        } => {
            assert_eq!(
                (parity.as_str(), *slave, *coil, *coil_base, *cycle_off_secs),
                ("even", 1, 5, 1, 2)
            );
        }
        other => panic!("expected modbus, got {other:?}"),
    }
    let bench_board = config.board("bench-relay").unwrap();
    assert!(matches!(
        bench_board.power,
        Some(Power::Command { cycle: None, .. })
    ));
    assert!(config.board("nope").is_none() && config.runner("nope").is_none());
}

#[test]
fn profile_fixture_loads_on_its_own() {
    let profile = load_profile(&fixtures().join("profiles/roc-rk3568-pc.toml")).unwrap();
    assert_eq!(profile.name, "roc-rk3568-pc");
    assert_eq!(profile.baud, Some(1_500_000));
    assert_eq!(profile.power, Some(PowerMethod::ModbusRtu));
    assert_eq!(profile.labels, ["roc-rk3568-pc"]);
}

#[test]
fn profile_name_must_match_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.toml");
    std::fs::write(&path, "version = 1\n[profile]\nname = \"roc\"\n").unwrap();
    let err = load_profile(&path).unwrap_err();
    assert_eq!(
        messages(&err),
        ["profile `roc` is in a file named `other.toml`"]
    );
}

#[test]
fn relative_secret_names_are_found_in_the_credentials_directory() {
    let (_dir, path) = write_config(&HEAD.replace("github-pat", "from-systemd"));
    let credentials = tempfile::tempdir().unwrap();
    let secret = credentials.path().join("from-systemd");
    std::fs::write(&secret, "credential-value-1234").unwrap();
    private(&secret);
    let options = LoadOptions {
        credentials_dir: Some(credentials.path().to_owned()),
        ..options()
    };
    let config = load_with(&path, &options).unwrap();
    let file = config.github.auth.secret_file();
    assert_eq!(file.resolved, secret);
    assert_eq!(file.read().unwrap(), "credential-value-1234");
}

#[test]
fn systemd_credentials_skip_the_mode_check_but_other_files_do_not() {
    // systemd adds an ACL for a non-root service user, which shows as group bits in the mode.
    let (dir, path) = write_config(&HEAD.replace("github-pat", "from-systemd"));
    let credentials = tempfile::tempdir().unwrap();
    let secret = credentials.path().join("from-systemd");
    std::fs::write(&secret, "credential-value-1234").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o440)).unwrap();
    let options = LoadOptions {
        credentials_dir: Some(credentials.path().to_owned()),
        ..options()
    };
    assert!(load_with(&path, &options).is_ok());

    let beside = dir.path().join("from-systemd");
    std::fs::write(&beside, "credential-value-1234").unwrap();
    std::fs::set_permissions(&beside, std::fs::Permissions::from_mode(0o440)).unwrap();
    let err = load_with(&path, &self::options()).unwrap_err();
    assert_eq!(
        messages(&err),
        [format!(
            "secret file `{}` is accessible by group or others (mode 0440)",
            beside.display()
        )]
    );
}

#[test]
fn hostname_template_without_a_hostname_is_an_error() {
    let (_dir, path) = write_config(&format!(
        "{HEAD}[[runner]]\nname_template = \"{{hostname}}\"\n"
    ));
    let options = LoadOptions {
        hostname: None,
        credentials_dir: None,
        ..LoadOptions::default()
    };
    let err = load_with(&path, &options).unwrap_err();
    assert_eq!(
        messages(&err),
        ["cannot tell this host's name for `{hostname}`"]
    );
}

#[test]
fn emulator_urls_are_accepted_and_get_a_ghes_api() {
    let text = HEAD.replace(
        "https://github.com/octo-org/octo-repo",
        "http://127.0.0.1:41234/octo-org/octo-repo",
    );
    let (_dir, path) = write_config(&text);
    let config = load_with(&path, &options()).unwrap();
    assert_eq!(
        config.github.url.as_str(),
        "http://127.0.0.1:41234/octo-org/octo-repo"
    );
    assert_eq!(
        config.github.api_url.as_str(),
        "http://127.0.0.1:41234/api/v3"
    );
}

#[test]
fn every_cross_field_problem_is_reported_at_once() {
    let text = format!(
        "{HEAD}registration_token_file = \"github-pat\"\n\
         [[runner]]\nname = \"a\"\nboard = \"x\"\n\
         [[runner]]\nname = \"a\"\n\
         [[runner]]\nname_template = \"{{board}}-{{index}}\"\ncount = 2\n\
         [[board]]\nname = \"b\"\nprofile = \"none-such\"\n"
    );
    let (_dir, path) = write_config(&text);
    let err = load_with(&path, &options()).unwrap_err();
    assert_eq!(
        messages(&err),
        [
            "`[github]` sets both `pat_file` and `registration_token_file`",
            "unknown board `x`",
            "runner name `a` is used twice",
            "`{board}` in `name_template`, but the runner has no `board`",
            "unknown board profile `none-such`",
        ]
    );
    let report = err.to_string();
    assert!(report.ends_with("5 problems found"), "{report}");
    assert_eq!(report.matches("\nhint: ").count(), 5, "{report}");
}

#[test]
fn a_dir_as_secret_file_is_unreadable() {
    let (dir, path) = write_config(&HEAD.replace("\"github-pat\"", "\"secrets\""));
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    let err = load_with(&path, &options()).unwrap_err();
    assert_eq!(
        messages(&err),
        [format!(
            "cannot read secret file `{}`: not a regular file",
            dir.path().join("secrets").display()
        )]
    );
}

#[test]
fn dangling_symlink_as_secret_file_does_not_exist() {
    let (dir, path) = write_config(&HEAD.replace("\"github-pat\"", "\"dangling\""));
    std::os::unix::fs::symlink(dir.path().join("nowhere"), dir.path().join("dangling")).unwrap();
    let err = load_with(&path, &options()).unwrap_err();
    assert_eq!(
        messages(&err),
        [format!(
            "secret file `{}` does not exist",
            dir.path().join("dangling").display()
        )]
    );
}

#[test]
fn version_latest_and_ephemeral_defaults() {
    let (_dir, path) = write_config(&format!("{HEAD}[[runner]]\nname = \"solo\"\n"));
    let config = load_with(&path, &options()).unwrap();
    let runner = config.runner("solo").unwrap();
    assert_eq!(runner.version, VersionReq::Latest);
    assert_eq!(runner.ephemeral, Ephemeral::No);
    assert_eq!(runner.user, DEFAULT_RUNNER_USER);
    assert_eq!(runner.dir, Path::new(DEFAULT_RUNNER_ROOT).join("solo"));
    assert_eq!(runner.work_dir, PathBuf::from("_work"));
    assert!(runner.labels.is_empty());
    assert_eq!(
        config.agent.profiles_dir,
        PathBuf::from(DEFAULT_PROFILES_DIR)
    );
}

#[test]
fn skipping_secret_checks_loads_a_config_whose_secret_is_unreadable() {
    // What `agentctl board ...` sees when a job hook runs it as the runner user: the PAT is
    // root's 0600 file. Here the file is simply missing, which the normal load refuses.
    let (dir, path) = write_config(HEAD);
    std::fs::remove_file(dir.path().join("github-pat")).unwrap();
    let err = load_with(&path, &options()).unwrap_err();
    assert!(
        messages(&err).iter().any(|m| m.contains("github-pat")),
        "{err}"
    );
    let skipping = LoadOptions {
        skip_secret_checks: true,
        ..options()
    };
    let config = load_with(&path, &skipping).unwrap();
    assert!(matches!(config.github.auth, Auth::Pat { .. }));
}

#[test]
fn container_settings_default_and_are_checked() {
    let (_dir, path) = write_config(HEAD);
    let config = load_with(&path, &options()).unwrap();
    assert_eq!(config.container, Container::default());
    assert_eq!(config.container.image, DEFAULT_CONTAINER_IMAGE);

    let (_dir, path) = write_config(&format!(
        "{HEAD}[container]\nengine = \"podman\"\nimage = \"lab/runner:{{version}}-qemu\"\n\
         network = \"lab-net\"\nrestart = \"on-failure:5\"\nkvm_device = \"/srv/kvm\"\n"
    ));
    let config = load_with(&path, &options()).unwrap();
    assert_eq!(
        config.container,
        Container {
            engine: Some("podman".to_owned()),
            image: "lab/runner:{version}-qemu".to_owned(),
            network: "lab-net".to_owned(),
            restart: "on-failure:5".to_owned(),
            kvm_device: PathBuf::from("/srv/kvm"),
        }
    );

    let (_dir, path) = write_config(&format!(
        "{HEAD}[container]\nengine = \"lxc\"\nimage = \"a b\"\nrestart = \"sometimes\"\n\
         kvm_device = \"kvm\"\nnetwork = \"--privileged\"\n"
    ));
    let err = load_with(&path, &options()).unwrap_err();
    assert_eq!(
        messages(&err),
        [
            "unknown container engine `lxc`",
            "`a b` is not an image reference",
            "unknown restart policy `sometimes`",
            "`kvm_device` must be an absolute path",
            "`--privileged` is not a container network",
        ]
    );
}

#[test]
fn a_boards_job_routine_is_off_unless_set_and_its_keys_resolve() {
    let (_dir, path) = write_config(&format!(
        "{HEAD}\n[[board]]\nname = \"plain\"\n\n\
         [[board]]\nname = \"rk\"\nboot_prompt = \"=>\"\n\
         reset_before_job = true\nprobe_after_reset = true\nprobe_timeout_secs = 45\n\
         power_off_after_job = true\n\
         console = {{ path = \"/dev/serial/by-id/usb-rk\", baud = 1500000 }}\n\
         power = {{ kind = \"command\", on = \"pdu on 1\", off = \"pdu off 1\" }}\n"
    ));
    let config = load_with(&path, &options()).unwrap();
    assert_eq!(config.board("plain").unwrap().jobs, BoardJobs::default());
    assert_eq!(
        config.board("rk").unwrap().jobs,
        BoardJobs {
            reset_before_job: true,
            probe_after_reset: true,
            probe_timeout_secs: 45,
            power_off_after_job: true,
        }
    );
}
