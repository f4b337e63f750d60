//! Each configured runner: its directory and release, its registration (`.runner`), its systemd
//! unit with our drop-in, and the groups of its running processes. The days left in GitHub's
//! update window need release dates from the network; [`super::github`] reports them.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::as_user::Identity;
use super::user::ProcStatus;
use super::{ticked, Environment, Family, Finding};
use crate::config::{Config, Runner, ServiceKind, Version, VersionReq};

const F: Family = Family::Runner;
/// Our drop-in beside every runner unit.
pub const DROP_IN: &str = "50-runner-agent.conf";

pub fn check(cfg: Option<&Config>, env: &Environment) -> Vec<Finding> {
    let Some(cfg) = cfg else {
        return vec![Finding::skip(
            F,
            "runner.dir",
            "no configuration: no runners to check",
        )];
    };
    if cfg.runners.is_empty() {
        return vec![Finding::skip(F, "runner.dir", "no runners configured")];
    }
    let mut findings = Vec::new();
    for runner in &cfg.runners {
        findings.extend(runner_findings(cfg, runner, env));
    }
    findings
}

pub fn runner_findings(cfg: &Config, runner: &Runner, env: &Environment) -> Vec<Finding> {
    let name = runner.name.as_str();
    let dir = &runner.dir;
    let identity = Identity::lookup(&runner.user).ok().flatten();
    let mut findings = Vec::new();
    let meta = match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => meta,
        _ => {
            findings.push(
                Finding::warn(
                    F,
                    "runner.dir",
                    format!(
                        "{} does not exist: the runner is not installed yet",
                        ticked(dir)
                    ),
                    "the agent installs it when it starts (`agentctl daemon`)",
                )
                .subject(name),
            );
            return findings;
        }
    };
    let owner_ok = identity
        .as_ref()
        .is_some_and(|id| id.uid.as_raw() == meta.uid());
    findings.push(if owner_ok {
        Finding::pass(
            F,
            "runner.dir",
            format!("{} belongs to `{}`", ticked(dir), runner.user),
        )
        .subject(name)
    } else {
        Finding::fail(
            F,
            "runner.dir",
            format!(
                "{} belongs to `{}`, not `{}`: self-updates and job checkouts fail",
                ticked(dir),
                super::kvm::user_name(meta.uid()),
                runner.user
            ),
            format!("chown -R {0}: {1}", runner.user, dir.display()),
        )
        .subject(name)
    });
    findings.push(version_finding(runner, installed_version(dir)).subject(name));
    findings.push(registration_finding(cfg, runner).subject(name));
    findings.extend(env_proxy_findings(dir).into_iter().map(|f| f.subject(name)));
    findings.extend(
        unit_findings(runner, env)
            .into_iter()
            .map(|f| f.subject(name)),
    );
    if let Some(identity) = &identity {
        findings.push(process_finding(&env.proc_root, dir, identity).subject(name));
    }
    findings
}

/// The installed release: from `bin -> bin.X.Y.Z` (what a self-update leaves), else from
/// `bin/Runner.Listener --version`.
pub fn installed_version(dir: &Path) -> Option<Version> {
    if let Ok(target) = std::fs::read_link(dir.join("bin")) {
        if let Some(version) = target
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("bin."))
            .and_then(|v| v.parse().ok())
        {
            return Some(version);
        }
    }
    listener_version(dir)
}

/// `bin/Runner.Listener --version`, run as the owner of the runner directory (never as root:
/// the file is writable by the runner user), bounded to 3 s.
fn listener_version(dir: &Path) -> Option<Version> {
    use std::os::unix::process::CommandExt;
    let listener = dir.join("bin/Runner.Listener");
    let meta = std::fs::metadata(&listener).ok()?;
    if meta.uid() == 0 && meta.mode() & 0o022 != 0 {
        return None;
    }
    let mut command = std::process::Command::new(&listener);
    command
        .arg("--version")
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    if nix::unistd::geteuid().is_root() {
        command.uid(meta.uid()).gid(meta.gid());
    }
    let mut child = command.spawn().ok()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take()?, &mut out).ok()?;
    out.lines().next()?.trim().parse().ok()
}

fn version_finding(runner: &Runner, installed: Option<Version>) -> Finding {
    match (installed, &runner.version) {
        (None, _) => Finding::warn(
            F,
            "runner.version",
            format!("cannot tell which release is in {}", ticked(&runner.dir)),
            format!("check `{}/bin/Runner.Listener --version`", runner.dir.display()),
        ),
        (Some(have), VersionReq::Pinned(want)) if have != *want => Finding::warn(
            F,
            "runner.version",
            format!("release {have} is installed, {want} is configured"),
            "the agent replaces it on its next reconcile; restart `runner-agent.service` to do it now",
        ),
        (Some(have), _) => Finding::pass(F, "runner.version", format!("release {have}")),
    }
}

/// `.runner` (UTF-8 with BOM, camelCase JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub agent_id: Option<u64>,
    pub agent_name: Option<String>,
    pub github_url: Option<String>,
}

pub fn read_registration(dir: &Path) -> Option<Result<Registration, String>> {
    let path = [".runner_migrated", ".runner"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.exists())?;
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) => return Some(Err(format!("cannot read `{}`: {err}", path.display()))),
    };
    let bytes = bytes.strip_prefix(&[0xef, 0xbb, 0xbf]).unwrap_or(&bytes);
    let value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(err) => return Some(Err(format!("`{}` is not JSON: {err}", path.display()))),
    };
    // The runner reads these case-insensitively.
    let get = |key: &str| {
        value.as_object().and_then(|o| {
            o.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.clone())
        })
    };
    Some(Ok(Registration {
        agent_id: get("agentId").and_then(|v| v.as_u64()),
        agent_name: get("agentName").and_then(|v| v.as_str().map(str::to_owned)),
        github_url: get("gitHubUrl").and_then(|v| v.as_str().map(str::to_owned)),
    }))
}

fn registration_finding(cfg: &Config, runner: &Runner) -> Finding {
    match read_registration(&runner.dir) {
        None => Finding::warn(
            F,
            "runner.registration",
            "not registered (no `.runner`)",
            "the agent registers it when it starts (`agentctl daemon`)",
        ),
        Some(Err(err)) => Finding::fail(
            F,
            "runner.registration",
            err,
            "remove the broken registration (`./config.sh remove --local` in the runner dir) and let the agent register it again",
        ),
        Some(Ok(reg)) => {
            let want = cfg.github.url.as_str().trim_end_matches('/');
            let have = reg.github_url.as_deref().unwrap_or("").trim_end_matches('/');
            if reg.agent_name.as_deref() != Some(runner.name.as_str()) {
                Finding::fail(
                    F,
                    "runner.registration",
                    format!(
                        "registered as `{}`, configured as `{}`",
                        reg.agent_name.unwrap_or_default(),
                        runner.name
                    ),
                    "remove it (`./config.sh remove`) and let the agent register it under its configured name",
                )
            } else if have != want {
                Finding::fail(
                    F,
                    "runner.registration",
                    format!("registered to `{have}`, configured for `{want}`"),
                    "remove it (`./config.sh remove`) and let the agent register it again",
                )
            } else {
                Finding::pass(
                    F,
                    "runner.registration",
                    format!(
                        "registered as `{}` (id {}) at `{have}`",
                        runner.name,
                        reg.agent_id.map(|id| id.to_string()).unwrap_or_else(|| "?".to_owned())
                    ),
                )
            }
        }
    }
}

/// Proxy lines in the runner's `.env` (the only environment the service sees; a value without
/// `http://` is silently ignored by the runner).
pub fn env_proxy_findings(dir: &Path) -> Vec<Finding> {
    let env_file = dir.join(".env");
    let Ok(text) = std::fs::read_to_string(&env_file) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(key, _)| {
            matches!(
                key.trim(),
                "https_proxy" | "HTTPS_PROXY" | "http_proxy" | "HTTP_PROXY"
            )
        })
        .map(|(key, value)| {
            let key = key.trim();
            super::host::proxy_check(F, "runner.proxy", key, value.trim(), |fixed| {
                format!(
                    "write `{key}={fixed}` in `{}`, then restart the runner",
                    env_file.display()
                )
            })
        })
        .collect()
}

fn unit_findings(runner: &Runner, env: &Environment) -> Vec<Finding> {
    if runner.service != ServiceKind::Systemd {
        return vec![Finding::skip(
            F,
            "runner.unit",
            format!(
                "`service = \"{}\"`: no systemd unit",
                service_name(runner.service)
            ),
        )];
    }
    let unit = match std::fs::read_to_string(runner.dir.join(".service")) {
        Ok(text) => text.trim().to_owned(),
        Err(_) => {
            return vec![Finding::warn(
                F,
                "runner.unit",
                "no unit installed (no `.service` in the runner dir)",
                "the agent installs it (`svc.sh install` plus our drop-in) when it starts",
            )]
        }
    };
    let mut findings = Vec::new();
    let unit_file = env.unit_dir.join(&unit);
    let drop_in = env.unit_dir.join(format!("{unit}.d")).join(DROP_IN);
    if !unit_file.exists() {
        findings.push(Finding::fail(
            F,
            "runner.unit",
            format!(
                "`.service` names `{unit}` but {} does not exist",
                ticked(&unit_file)
            ),
            format!(
                "reinstall it: `cd {} && ./svc.sh install {}`",
                runner.dir.display(),
                runner.user
            ),
        ));
        return findings;
    }
    findings.push(if drop_in.exists() {
        drop_in_finding(&unit, &drop_in)
    } else {
        Finding::fail(
            F,
            "runner.unit",
            format!(
                "`{unit}` lacks our drop-in {} (groups, restart policy)",
                ticked(&drop_in)
            ),
            "restart `runner-agent.service`: the agent writes the drop-in and reloads systemd",
        )
    });
    if !env.has_systemd() {
        findings.push(Finding::skip(
            F,
            "runner.active",
            "systemd is not running here: cannot ask whether the unit is enabled and active",
        ));
        return findings;
    }
    let ask = |verb: &str| {
        std::process::Command::new("systemctl")
            .args([verb, &unit])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned())
    };
    let enabled = ask("is-enabled");
    let active = ask("is-active");
    findings.push(if enabled == "enabled" && active == "active" {
        Finding::pass(
            F,
            "runner.active",
            format!("`{unit}` is enabled and active"),
        )
    } else {
        Finding::fail(
            F,
            "runner.active",
            format!("`{unit}` is {enabled} and {active}"),
            format!(
                "systemctl enable --now {unit}; journalctl -u {unit} -n 50 tells why it stopped"
            ),
        )
    });
    findings
}

/// Our drop-in exists; one that sets `Group=` without `SupplementaryGroups=` loses the user's
/// other groups (`kvm`, `dialout`; systemd/systemd#33654).
fn drop_in_finding(unit: &str, drop_in: &Path) -> Finding {
    let text = std::fs::read_to_string(drop_in).unwrap_or_default();
    let sets = |key: &str| {
        text.lines().any(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.starts_with('='))
        })
    };
    if sets("Group") && !sets("SupplementaryGroups") {
        Finding::warn(
            F,
            "runner.unit",
            format!(
                "{} sets `Group=` without `SupplementaryGroups=`: the runner may lose the user's other groups",
                ticked(drop_in)
            ),
            "list the groups jobs need in `SupplementaryGroups=kvm dialout` (restart `runner-agent.service` to rewrite the drop-in)",
        )
    } else {
        Finding::pass(
            F,
            "runner.unit",
            format!("`{unit}` with drop-in {}", ticked(drop_in)),
        )
    }
}

fn service_name(kind: ServiceKind) -> &'static str {
    match kind {
        ServiceKind::Systemd => "systemd",
        ServiceKind::Process => "process",
        ServiceKind::Container => "container",
    }
}

/// Processes running from `dir` (cwd or executable inside it).
pub fn processes_in(proc_root: &Path, dir: &Path) -> Vec<(u32, String, ProcStatus)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let inside = |link: &str| -> bool {
            std::fs::read_link(entry.path().join(link))
                .map(|p: PathBuf| p.starts_with(dir))
                .unwrap_or(false)
        };
        if !(inside("cwd") || inside("exe")) {
            continue;
        }
        let Some(status) = std::fs::read_to_string(entry.path().join("status"))
            .ok()
            .and_then(|s| ProcStatus::parse(&s))
        else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm"))
            .map(|c| c.trim_end().to_owned())
            .unwrap_or_default();
        found.push((pid, comm, status));
    }
    found.sort_by_key(|(pid, _, _)| *pid);
    found
}

fn process_finding(proc_root: &Path, dir: &Path, identity: &Identity) -> Finding {
    let processes = processes_in(proc_root, dir);
    if processes.is_empty() {
        return Finding::skip(F, "runner.process", "not running");
    }
    let names = |groups: &[u32]| -> String {
        groups
            .iter()
            .map(|g| super::kvm::group_name(*g))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut stale = Vec::new();
    for (pid, comm, status) in &processes {
        let missing: Vec<u32> = identity
            .groups
            .iter()
            .map(|g| g.as_raw())
            .filter(|g| !status.groups.contains(g) && *g != status.gid)
            .collect();
        if !missing.is_empty() {
            stale.push(format!("pid {pid} (`{comm}`) lacks `{}`", names(&missing)));
        }
    }
    let (pid, comm, status) = &processes[0];
    if stale.is_empty() {
        Finding::pass(
            F,
            "runner.process",
            format!(
                "pid {pid} (`{comm}`) runs with groups {}",
                names(&status.groups)
            ),
        )
    } else {
        Finding::fail(
            F,
            "runner.process",
            format!("{}: started before `{}` joined the group", stale.join("; "), identity.name),
            "restart the service to pick up the new group: `systemctl restart $(cat <runner dir>/.service)`",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_bom_registration_case_insensitively() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = vec![0xef, 0xbb, 0xbf];
        bytes.extend_from_slice(
            br#"{"AgentId": 42, "agentName": "lab-1", "gitHubUrl": "https://github.com/octo/repo", "workFolder": "_work"}"#,
        );
        std::fs::write(dir.path().join(".runner"), bytes).unwrap();
        assert_eq!(
            read_registration(dir.path()),
            Some(Ok(Registration {
                agent_id: Some(42),
                agent_name: Some("lab-1".to_owned()),
                github_url: Some("https://github.com/octo/repo".to_owned()),
            }))
        );
        std::fs::write(dir.path().join(".runner"), b"\xef\xbb\xbfnot json").unwrap();
        assert!(matches!(read_registration(dir.path()), Some(Err(_))));
    }

    #[test]
    fn version_from_the_bin_symlink() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin.2.330.0")).unwrap();
        std::os::unix::fs::symlink("bin.2.330.0", dir.path().join("bin")).unwrap();
        assert_eq!(
            installed_version(dir.path()),
            Some(Version {
                major: 2,
                minor: 330,
                patch: 0
            })
        );
    }

    #[test]
    fn version_from_the_listener_run_as_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        let listener = dir.path().join("bin/Runner.Listener");
        std::fs::write(
            &listener,
            "#!/bin/sh\n[ \"$1\" = --version ] && echo 2.331.0\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&listener, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            installed_version(dir.path()),
            Some(Version {
                major: 2,
                minor: 331,
                patch: 0
            })
        );
    }

    fn runner(dir: &Path) -> Runner {
        Runner {
            name: "lab-1".to_owned(),
            user: "ra-runner".to_owned(),
            dir: dir.to_path_buf(),
            work_dir: PathBuf::from("_work"),
            labels: Vec::new(),
            group: None,
            ephemeral: crate::config::Ephemeral::No,
            disable_update: false,
            version: VersionReq::Latest,
            download_mirror: None,
            sha256: Default::default(),
            board: None,
            service: ServiceKind::Systemd,
        }
    }

    #[test]
    fn the_unit_needs_its_drop_in() {
        let dir = tempfile::tempdir().unwrap();
        let units = tempfile::tempdir().unwrap();
        let env = Environment {
            unit_dir: units.path().to_path_buf(),
            systemd_marker: dir.path().join("no-systemd-here"),
            ..Environment::system()
        };
        let r = runner(dir.path());
        let none = unit_findings(&r, &env);
        assert_eq!(none[0].outcome, super::super::Outcome::Warn);
        assert!(none[0].detail.contains("no `.service`"));

        let unit = "actions.runner._services.lab-1.service";
        std::fs::write(dir.path().join(".service"), format!("{unit}\n")).unwrap();
        let missing = unit_findings(&r, &env);
        assert_eq!(missing[0].outcome, super::super::Outcome::Fail);
        assert!(missing[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("./svc.sh install ra-runner"));

        std::fs::write(units.path().join(unit), "[Service]\n").unwrap();
        let no_drop_in = unit_findings(&r, &env);
        assert_eq!(no_drop_in[0].outcome, super::super::Outcome::Fail);
        assert!(
            no_drop_in[0].detail.contains("lacks our drop-in"),
            "{}",
            no_drop_in[0].detail
        );

        std::fs::create_dir(units.path().join(format!("{unit}.d"))).unwrap();
        std::fs::write(
            units.path().join(format!("{unit}.d")).join(DROP_IN),
            "[Service]\n",
        )
        .unwrap();
        let ok = unit_findings(&r, &env);
        assert_eq!(ok[0].outcome, super::super::Outcome::Pass, "{ok:?}");
        std::fs::write(
            units.path().join(format!("{unit}.d")).join(DROP_IN),
            "[Service]\nGroup=ra-runner\n",
        )
        .unwrap();
        let group_only = unit_findings(&r, &env);
        assert_eq!(
            group_only[0].outcome,
            super::super::Outcome::Warn,
            "{group_only:?}"
        );
        assert!(group_only[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("SupplementaryGroups="));
        // Without systemd as init, enabled/active cannot be asked, and doctor says so.
        assert_eq!(ok[1].id, "runner.active");
        assert_eq!(ok[1].outcome, super::super::Outcome::Skip);
    }

    #[test]
    fn a_running_listener_without_the_new_group_is_named() {
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let base = Identity::lookup("ra-runner").unwrap().unwrap();
        let mut child = std::process::Command::new("setpriv")
            .args([
                "--reuid=ra-runner",
                "--regid=ra-runner",
                "--init-groups",
                "sleep",
                "30",
            ])
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim() == "sleep")
        {
            assert!(std::time::Instant::now() < deadline, "sleep never started");
            std::thread::yield_now();
        }
        let same = process_finding(Path::new("/proc"), dir.path(), &base);
        let mut joined = base.clone();
        joined.groups.push(nix::unistd::Gid::from_raw(20));
        let stale = process_finding(Path::new("/proc"), dir.path(), &joined);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(same.outcome, super::super::Outcome::Pass, "{same:?}");
        assert!(
            same.detail
                .starts_with(&format!("pid {pid} (`sleep`) runs with groups")),
            "{}",
            same.detail
        );
        assert_eq!(stale.outcome, super::super::Outcome::Fail);
        assert!(
            stale
                .detail
                .contains(&format!("pid {pid} (`sleep`) lacks `dialout`")),
            "{}",
            stale.detail
        );
        assert!(stale
            .hint
            .unwrap()
            .contains("restart the service to pick up the new group"));
    }

    #[test]
    fn proxies_in_the_runner_env_need_a_scheme() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(".env"),
            "LANG=C.UTF-8\nhttps_proxy=proxy.corp:3128\nhttp_proxy=http://proxy.corp:3128\n",
        )
        .unwrap();
        let findings = env_proxy_findings(dir.path());
        assert_eq!(findings.len(), 2);
        assert_eq!(findings[0].outcome, super::super::Outcome::Fail);
        assert_eq!(
            findings[0].hint.as_deref().unwrap(),
            format!(
                "write `https_proxy=http://proxy.corp:3128` in `{}`, then restart the runner",
                dir.path().join(".env").display()
            )
        );
        assert_eq!(findings[1].outcome, super::super::Outcome::Pass);
    }
}
