//! The `systemd` backend: the runner's own `svc.sh` unit plus our drop-in.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Backend, LogSource, ServiceError, ServiceStatus, Unit};

/// The drop-in's file name inside `<unit>.d/`.
pub const DROP_IN_NAME: &str = "50-runner-agent.conf";

/// Seconds systemd waits before restarting a failed runner.
pub const RESTART_SEC: u32 = 15;

/// Runs external commands; the one place the systemd backend touches the system, so that tests
/// can put a fake `systemctl` first on `PATH` (or use another directory for units).
#[derive(Debug, Clone)]
pub struct Commands {
    /// `systemctl` (looked up on `PATH`).
    pub systemctl: PathBuf,
}

impl Default for Commands {
    fn default() -> Self {
        Commands {
            systemctl: PathBuf::from("systemctl"),
        }
    }
}

impl Commands {
    /// Run `program args` in `cwd`, failing with its output when it fails.
    pub fn run(
        &self,
        program: &Path,
        args: &[&str],
        cwd: Option<&Path>,
    ) -> Result<String, ServiceError> {
        let shown = format!("{} {}", program.display(), args.join(" "));
        let mut command = Command::new(program);
        command.args(args);
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        log::debug!("running `{shown}`");
        let output = command.output().map_err(|source| ServiceError::Spawn {
            command: shown.clone(),
            source,
        })?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if !output.status.success() {
            return Err(ServiceError::Failed {
                command: shown,
                status: output.status.to_string(),
                output: text.trim().to_owned(),
            });
        }
        Ok(text)
    }

    pub fn systemctl(&self, args: &[&str]) -> Result<String, ServiceError> {
        self.run(&self.systemctl, args, None)
    }
}

/// The `systemd` backend.
#[derive(Debug, Clone)]
pub struct Systemd {
    /// Where units live (`/etc/systemd/system`); the drop-in goes to `<unit_dir>/<unit>.d/`.
    pub unit_dir: PathBuf,
    pub commands: Commands,
}

/// What the drop-in adds to the runner's unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropIn {
    pub supplementary_groups: Vec<String>,
    pub restart_sec: u32,
    pub environment_file: Option<PathBuf>,
}

/// The drop-in's text.
///
/// `svc.sh`'s unit has `User=` and no `Group=`, so the groups of the user database apply at
/// start; `SupplementaryGroups=` makes `kvm`/`dialout` explicit, so a job has them even before
/// the user's membership is fixed and `doctor` can tell. `Restart=on-failure`: `runsvc.sh` exits
/// 0 on the listener's terminal errors (deleted registration, deprecated version), which must not
/// loop, and non-zero only when something crashed. `Before=runner-agent.service` (ordering only):
/// at shutdown systemd stops the agent before the runners, so the agent never tries to start a
/// runner that the shutdown is stopping; at boot the runners start first.
pub fn render_drop_in(drop_in: &DropIn) -> String {
    let mut text = String::from(
        "# written by runner-agent (agentctl register): additions to the unit of the runner's svc.sh\n\
         [Unit]\n\
         Before=runner-agent.service\n\
         [Service]\n",
    );
    if !drop_in.supplementary_groups.is_empty() {
        text.push_str(&format!(
            "SupplementaryGroups={}\n",
            drop_in.supplementary_groups.join(" ")
        ));
    }
    text.push_str("Restart=on-failure\n");
    text.push_str(&format!("RestartSec={}s\n", drop_in.restart_sec));
    if let Some(file) = &drop_in.environment_file {
        // `-`: a missing file is not fatal (the board env is rewritten by the agent).
        text.push_str(&format!("EnvironmentFile=-{}\n", file.display()));
    }
    text
}

impl Systemd {
    /// `/etc/systemd/system` and the `systemctl` on `PATH`.
    pub fn system() -> Systemd {
        Systemd {
            unit_dir: PathBuf::from("/etc/systemd/system"),
            commands: Commands::default(),
        }
    }

    /// The unit `svc.sh install` wrote, from the runner's `.service` file.
    pub fn unit_name(dir: &Path) -> Option<String> {
        let text = fs::read_to_string(dir.join(".service")).ok()?;
        let text = text.trim_start_matches('\u{feff}').trim();
        (!text.is_empty()).then(|| text.to_owned())
    }

    fn require_unit(unit: &Unit) -> Result<String, ServiceError> {
        Systemd::unit_name(&unit.dir).ok_or_else(|| ServiceError::NoUnit {
            runner: unit.name.clone(),
        })
    }

    /// `<unit_dir>/<unit>.d/50-runner-agent.conf`.
    pub fn drop_in_path(&self, unit_name: &str) -> PathBuf {
        self.unit_dir
            .join(format!("{unit_name}.d"))
            .join(DROP_IN_NAME)
    }

    fn write_drop_in(&self, unit: &Unit, unit_name: &str) -> Result<(), ServiceError> {
        let path = self.drop_in_path(unit_name);
        let io = |source| ServiceError::Io {
            path: path.clone(),
            source,
        };
        let text = render_drop_in(&DropIn {
            supplementary_groups: unit.extra_groups.clone(),
            restart_sec: RESTART_SEC,
            environment_file: unit.env_file.clone(),
        });
        crate::atomic::write(&path, text.as_bytes(), 0o644).map_err(io)
    }
}

impl Backend for Systemd {
    fn install(&self, unit: &Unit) -> Result<(), ServiceError> {
        let svc = unit.dir.join("svc.sh");
        if Systemd::unit_name(&unit.dir).is_none() {
            // The runner's own script renders its unit template as root, for the runner user.
            self.commands
                .run(&svc, &["install", &unit.run_as.user], Some(&unit.dir))?;
        }
        let unit_name = Systemd::require_unit(unit)?;
        self.write_drop_in(unit, &unit_name)?;
        self.commands.systemctl(&["daemon-reload"])?;
        self.commands.systemctl(&["enable", &unit_name])?;
        Ok(())
    }

    fn start(&self, unit: &Unit) -> Result<(), ServiceError> {
        let unit_name = Systemd::require_unit(unit)?;
        self.commands.systemctl(&["start", &unit_name])?;
        Ok(())
    }

    fn stop(&self, unit: &Unit) -> Result<(), ServiceError> {
        let Some(unit_name) = Systemd::unit_name(&unit.dir) else {
            return Ok(());
        };
        self.commands.systemctl(&["stop", &unit_name])?;
        Ok(())
    }

    fn uninstall(&self, unit: &Unit) -> Result<(), ServiceError> {
        let Some(unit_name) = Systemd::unit_name(&unit.dir) else {
            return Ok(());
        };
        let drop_in = self.drop_in_path(&unit_name);
        if drop_in.exists() {
            fs::remove_file(&drop_in).map_err(|source| ServiceError::Io {
                path: drop_in.clone(),
                source,
            })?;
            if let Some(dir) = drop_in.parent() {
                let _ = fs::remove_dir(dir);
            }
        }
        // stop, disable, delete the unit, remove `.service`, daemon-reload.
        self.commands
            .run(&unit.dir.join("svc.sh"), &["uninstall"], Some(&unit.dir))?;
        Ok(())
    }

    fn status(&self, unit: &Unit) -> Result<ServiceStatus, ServiceError> {
        let Some(unit_name) = Systemd::unit_name(&unit.dir) else {
            return Ok(ServiceStatus {
                backend: "systemd",
                state: "not-installed".to_owned(),
                pid: None,
                unit: None,
            });
        };
        // `systemctl show` exits 0 for unknown units too; its answer is what counts. It prints
        // the properties in its own order (a service's `MainPID` before the unit's
        // `ActiveState`), not in the order asked: read them by name.
        let text =
            self.commands
                .systemctl(&["show", "--property=ActiveState,MainPID", &unit_name])?;
        let property = |name: &str| {
            text.lines()
                .find_map(|line| line.trim().strip_prefix(name)?.strip_prefix('='))
                .map(str::to_owned)
        };
        let state = property("ActiveState").unwrap_or_else(|| "unknown".to_owned());
        let pid = property("MainPID")
            .and_then(|pid| pid.parse::<u32>().ok())
            .filter(|pid| *pid != 0);
        Ok(ServiceStatus {
            backend: "systemd",
            state,
            pid,
            unit: Some(unit_name),
        })
    }

    fn log_source(&self, unit: &Unit) -> LogSource {
        match Systemd::unit_name(&unit.dir) {
            Some(unit) => LogSource::Journal { unit },
            None => LogSource::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::RunAs;
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt as _;

    fn script(path: &Path, body: &str) {
        fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A runner directory whose `svc.sh` and a `systemctl` record what they are asked, in order.
    fn fixture(dir: &Path) -> (Systemd, Unit, PathBuf) {
        let log = dir.join("calls.log");
        let runner = dir.join("runner");
        fs::create_dir(&runner).unwrap();
        script(
            &runner.join("svc.sh"),
            &format!(
                "echo \"svc.sh $* (cwd $(pwd))\" >> {log}\n\
                 case $1 in\n\
                 install) echo actions.runner._services.r1.service > .service ;;\n\
                 uninstall) rm -f .service ;;\n\
                 esac\n",
                log = log.display()
            ),
        );
        let systemctl = dir.join("systemctl");
        script(
            &systemctl,
            &format!(
                "echo \"systemctl $*\" >> {log}\n\
                 if [ \"$1\" = show ]; then printf 'MainPID=4242\\nActiveState=active\\n'; fi\n",
                log = log.display()
            ),
        );
        let systemd = Systemd {
            unit_dir: dir.join("units"),
            commands: Commands { systemctl },
        };
        let unit = Unit {
            name: "r1".to_owned(),
            dir: runner,
            run_as: RunAs {
                user: "ra-runner".to_owned(),
                uid: 1000,
                gid: 1000,
                groups: vec![1000],
                home: PathBuf::from("/home/ra-runner"),
            },
            env: BTreeMap::new(),
            env_file: Some(PathBuf::from("/var/lib/runner-agent/runners/r1.env")),
            extra_groups: vec!["kvm".to_owned()],
        };
        (systemd, unit, log)
    }

    #[test]
    fn install_start_status_uninstall_run_svc_sh_and_systemctl_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let (systemd, unit, log) = fixture(tmp.path());
        systemd.install(&unit).unwrap();
        systemd.start(&unit).unwrap();
        // A second install keeps the unit svc.sh made (svc.sh refuses an existing one).
        systemd.install(&unit).unwrap();
        let status = systemd.status(&unit).unwrap();
        assert_eq!(
            status,
            ServiceStatus {
                backend: "systemd",
                state: "active".to_owned(),
                pid: Some(4242),
                unit: Some("actions.runner._services.r1.service".to_owned()),
            }
        );
        let drop_in = tmp
            .path()
            .join("units/actions.runner._services.r1.service.d/50-runner-agent.conf");
        assert_eq!(
            fs::read_to_string(&drop_in).unwrap(),
            render_drop_in(&DropIn {
                supplementary_groups: vec!["kvm".to_owned()],
                restart_sec: RESTART_SEC,
                environment_file: Some(PathBuf::from("/var/lib/runner-agent/runners/r1.env")),
            })
        );
        assert_eq!(
            systemd.log_source(&unit),
            LogSource::Journal {
                unit: "actions.runner._services.r1.service".to_owned()
            }
        );
        systemd.stop(&unit).unwrap();
        systemd.uninstall(&unit).unwrap();
        assert!(!drop_in.exists());
        assert!(!drop_in.parent().unwrap().exists());
        let calls = fs::read_to_string(&log).unwrap();
        let dir = unit.dir.display();
        assert_eq!(
            calls,
            format!(
                "svc.sh install ra-runner (cwd {dir})\n\
                 systemctl daemon-reload\n\
                 systemctl enable actions.runner._services.r1.service\n\
                 systemctl start actions.runner._services.r1.service\n\
                 systemctl daemon-reload\n\
                 systemctl enable actions.runner._services.r1.service\n\
                 systemctl show --property=ActiveState,MainPID actions.runner._services.r1.service\n\
                 systemctl stop actions.runner._services.r1.service\n\
                 svc.sh uninstall (cwd {dir})\n"
            )
        );
        // Without a unit, status says so and nothing is called.
        assert_eq!(systemd.status(&unit).unwrap().state, "not-installed");
    }

    #[test]
    fn a_failing_svc_sh_is_an_error_with_its_output() {
        let tmp = tempfile::tempdir().unwrap();
        let (systemd, unit, _) = fixture(tmp.path());
        script(
            &unit.dir.join("svc.sh"),
            "echo 'Must run as sudo'\nexit 1\n",
        );
        let err = systemd.install(&unit).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("svc.sh install ra-runner` failed (exit status: 1): Must run as sudo"),
            "{err}"
        );
    }

    #[test]
    fn drop_in_for_a_board_runner_on_a_kvm_host() {
        let text = render_drop_in(&DropIn {
            supplementary_groups: vec!["kvm".to_owned(), "dialout".to_owned()],
            restart_sec: RESTART_SEC,
            environment_file: Some(PathBuf::from("/var/lib/runner-agent/runners/roc-1.env")),
        });
        insta::assert_snapshot!(text);
    }

    #[test]
    fn drop_in_without_groups_or_board() {
        let text = render_drop_in(&DropIn {
            supplementary_groups: Vec::new(),
            restart_sec: 30,
            environment_file: None,
        });
        insta::assert_snapshot!(text);
    }
}
