//! The runner user: exists, is not root, has a home, is in the groups its jobs need, and the
//! runner processes already running carry those groups (a process keeps the groups it started
//! with; `usermod -aG` only helps after a restart).

use std::path::Path;

use super::as_user::Identity;
use super::{DoctorError, Environment, Family, Finding};
use crate::config::Config;

const F: Family = Family::User;

/// Process names (`/proc/PID/comm`) that belong to a runner.
pub const RUNNER_COMMS: &[&str] = &["Runner.Listener", "Runner.Worker", "runsvc.sh", "run.sh"];

/// A runner user as found in the user database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    Found(Identity),
    Missing(String),
}

impl Resolved {
    pub fn name(&self) -> &str {
        match self {
            Resolved::Found(identity) => &identity.name,
            Resolved::Missing(name) => name,
        }
    }
}

pub fn resolve_all(names: &[String]) -> Result<Vec<Resolved>, DoctorError> {
    names
        .iter()
        .map(|name| {
            Ok(match Identity::lookup(name)? {
                Some(identity) => Resolved::Found(identity),
                None => Resolved::Missing(name.clone()),
            })
        })
        .collect()
}

/// The user family.
pub fn check(cfg: Option<&Config>, env: &Environment, users: &[Resolved]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for user in users {
        let identity = match user {
            Resolved::Missing(name) => {
                findings.push(
                    Finding::fail(
                        F,
                        "user.exists",
                        format!("user `{name}` does not exist"),
                        format!("useradd --system --create-home --shell /bin/bash {name}"),
                    )
                    .subject(name),
                );
                continue;
            }
            Resolved::Found(identity) => identity,
        };
        findings.push(exists_finding(identity));
        findings.push(home_finding(identity));
        for (group, why) in needed_groups(cfg, env, &identity.name) {
            findings.push(group_finding(identity, &group, &why));
        }
        findings.push(live_groups_finding(&env.proc_root, identity, RUNNER_COMMS));
    }
    findings
}

fn exists_finding(identity: &Identity) -> Finding {
    let name = &identity.name;
    if identity.uid.is_root() {
        Finding::fail(
            F,
            "user.exists",
            format!("runner user `{name}` is root: jobs would own the host"),
            "set `user = \"runner\"` (any unprivileged user) for every runner in the configuration",
        )
        .subject(name)
    } else {
        Finding::pass(
            F,
            "user.exists",
            format!("`{name}` is uid {}, gid {}", identity.uid, identity.gid),
        )
        .subject(name)
    }
}

fn home_finding(identity: &Identity) -> Finding {
    let name = &identity.name;
    let home = &identity.home;
    match std::fs::metadata(home) {
        Ok(meta) if meta.is_dir() => {
            use std::os::unix::fs::MetadataExt;
            if meta.uid() == identity.uid.as_raw() {
                Finding::pass(F, "user.home", format!("home `{}` exists", home.display()))
                    .subject(name)
            } else {
                Finding::warn(
                    F,
                    "user.home",
                    format!(
                        "home `{}` belongs to `{}`, not `{name}`",
                        home.display(),
                        super::kvm::user_name(meta.uid())
                    ),
                    format!("chown {name}: {}", home.display()),
                )
                .subject(name)
            }
        }
        _ => Finding::warn(
            F,
            "user.home",
            format!(
                "home `{}` of `{name}` does not exist (tools that write `~` fail)",
                home.display()
            ),
            format!(
                "mkhomedir_helper {name}  (or: install -d -o {name} -g {name} {})",
                home.display()
            ),
        )
        .subject(name),
    }
}

/// The groups `user` needs, with the reason: `kvm` (the group of the KVM node) when jobs use KVM,
/// `dialout` when one of its runners drives a board.
pub fn needed_groups(cfg: Option<&Config>, env: &Environment, user: &str) -> Vec<(String, String)> {
    let mut groups = Vec::new();
    let kvm = cfg.and_then(|c| c.host.kvm);
    if kvm == Some(true) || (kvm.is_none() && env.kvm_device.exists()) {
        use std::os::unix::fs::MetadataExt;
        let group = match std::fs::metadata(&env.kvm_device) {
            Ok(meta) if meta.gid() != 0 => super::kvm::group_name(meta.gid()),
            _ => "kvm".to_owned(),
        };
        groups.push((group, format!("jobs use `{}`", env.kvm_device.display())));
    }
    if let Some(cfg) = cfg {
        let boards: Vec<&str> = cfg
            .runners
            .iter()
            .filter(|r| r.user == user)
            .filter_map(|r| r.board.as_deref())
            .collect();
        if !boards.is_empty() {
            groups.push((
                "dialout".to_owned(),
                format!("its runners drive board(s) {}", boards.join(", ")),
            ));
        }
    }
    groups
}

fn group_finding(identity: &Identity, group: &str, why: &str) -> Finding {
    let name = &identity.name;
    let found = match nix::unistd::Group::from_name(group) {
        Ok(Some(found)) => found,
        _ => {
            return Finding::fail(
                F,
                "user.groups",
                format!("`{name}` needs group `{group}` ({why}) but it does not exist"),
                format!("groupadd --system {group}; usermod -aG {group} {name}; then give the device to the group (udev rule)"),
            )
            .subject(name)
        }
    };
    if identity.groups.contains(&found.gid) {
        Finding::pass(
            F,
            "user.groups",
            format!("`{name}` is in `{group}` ({why})"),
        )
        .subject(name)
    } else {
        Finding::fail(
            F,
            "user.groups",
            format!("`{name}` is not in `{group}` ({why})"),
            format!("usermod -aG {group} {name}, then restart the runner services"),
        )
        .subject(name)
    }
}

/// A process of the user that lacks some of the user's groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleProcess {
    pub pid: u32,
    pub comm: String,
    /// Groups the user has now that the process does not.
    pub missing: Vec<u32>,
}

/// Processes of `identity` named one of `comms`, with their groups compared against the user
/// database. Returns (processes seen, stale ones).
pub fn stale_processes(
    proc_root: &Path,
    identity: &Identity,
    comms: &[&str],
) -> (usize, Vec<StaleProcess>) {
    let mut seen = 0;
    let mut stale = Vec::new();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return (0, stale);
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        let comm = comm.trim_end().to_owned();
        if !comms.contains(&comm.as_str()) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let Some(status) = ProcStatus::parse(&status) else {
            continue;
        };
        if status.uid != identity.uid.as_raw() {
            continue;
        }
        seen += 1;
        let missing: Vec<u32> = identity
            .groups
            .iter()
            .map(|g| g.as_raw())
            .filter(|g| !status.groups.contains(g) && *g != status.gid)
            .collect();
        if !missing.is_empty() {
            stale.push(StaleProcess { pid, comm, missing });
        }
    }
    stale.sort_by_key(|p| p.pid);
    (seen, stale)
}

/// The fields of `/proc/PID/status` doctor reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStatus {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl ProcStatus {
    pub fn parse(text: &str) -> Option<ProcStatus> {
        let mut uid = None;
        let mut gid = None;
        let mut groups = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("Uid:") {
                uid = rest.split_whitespace().next().and_then(|v| v.parse().ok());
            } else if let Some(rest) = line.strip_prefix("Gid:") {
                gid = rest.split_whitespace().next().and_then(|v| v.parse().ok());
            } else if let Some(rest) = line.strip_prefix("Groups:") {
                groups = rest
                    .split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect();
            }
        }
        Some(ProcStatus {
            uid: uid?,
            gid: gid?,
            groups,
        })
    }
}

/// `user.live-groups`: running runner processes have the groups the user has now.
pub fn live_groups_finding(proc_root: &Path, identity: &Identity, comms: &[&str]) -> Finding {
    let name = &identity.name;
    let (seen, stale) = stale_processes(proc_root, identity, comms);
    if seen == 0 {
        return Finding::skip(
            F,
            "user.live-groups",
            format!("no runner process runs as `{name}`"),
        )
        .subject(name);
    }
    if stale.is_empty() {
        return Finding::pass(
            F,
            "user.live-groups",
            format!("{seen} runner process(es) of `{name}` carry all of its groups"),
        )
        .subject(name);
    }
    let list: Vec<String> = stale
        .iter()
        .map(|p| {
            let groups: Vec<String> = p
                .missing
                .iter()
                .map(|g| super::kvm::group_name(*g))
                .collect();
            format!(
                "pid {} (`{}`) lacks `{}`",
                p.pid,
                p.comm,
                groups.join("`, `")
            )
        })
        .collect();
    Finding::fail(
        F,
        "user.live-groups",
        format!(
            "{}: started before `{name}` joined the group",
            list.join("; ")
        ),
        "restart the service to pick up the new group: `systemctl restart <the runner's unit>` (see `cat <runner dir>/.service`)",
    )
    .subject(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let status =
            "Name:\tsleep\nUid:\t999\t999\t999\t999\nGid:\t995\t995\t995\t995\nGroups:\t20 995 \n";
        assert_eq!(
            ProcStatus::parse(status),
            Some(ProcStatus {
                uid: 999,
                gid: 995,
                groups: vec![20, 995]
            })
        );
    }

    #[test]
    fn a_process_started_before_a_group_change_is_named() {
        // A real process running as `ra-runner` with its database groups...
        let base = Identity::lookup("ra-runner").unwrap().unwrap();
        let mut child = std::process::Command::new("setpriv")
            .args([
                "--reuid=ra-runner",
                "--regid=ra-runner",
                "--init-groups",
                "sleep",
                "30",
            ])
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
        // ...then the user "joins" dialout (what the database would say after `usermod -aG`).
        let mut now = base.clone();
        now.groups.push(nix::unistd::Gid::from_raw(20));
        let finding = live_groups_finding(Path::new("/proc"), &now, &["sleep"]);
        let current = live_groups_finding(Path::new("/proc"), &base, &["sleep"]);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(finding.outcome, super::super::Outcome::Fail, "{finding:?}");
        assert!(
            finding
                .detail
                .contains(&format!("pid {pid} (`sleep`) lacks `dialout`")),
            "{}",
            finding.detail
        );
        assert!(finding.hint.unwrap().contains("restart the service"));
        assert_eq!(current.outcome, super::super::Outcome::Pass, "{current:?}");
    }

    #[test]
    fn group_membership_comes_from_the_user_database() {
        let user = Identity::lookup("ra-runner").unwrap().unwrap();
        let outside = group_finding(&user, "dialout", "its runners drive board(s) b1");
        assert_eq!(outside.outcome, super::super::Outcome::Fail);
        assert_eq!(
            outside.hint.as_deref(),
            Some("usermod -aG dialout ra-runner, then restart the runner services")
        );
        let own = group_finding(&user, "ra-runner", "test");
        assert_eq!(own.outcome, super::super::Outcome::Pass);
        let missing = group_finding(&user, "ra-no-such-group", "test");
        assert!(
            missing.detail.ends_with("but it does not exist"),
            "{}",
            missing.detail
        );
        assert!(missing
            .hint
            .unwrap()
            .starts_with("groupadd --system ra-no-such-group"));
    }
}
