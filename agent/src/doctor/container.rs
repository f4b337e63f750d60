//! The `container` service backend: the engine is installed and answers, each container runner's
//! image is there, and a throwaway container of that image opens the runner's devices (`/dev/kvm`,
//! the board's console) as the runner user with the numeric groups its container gets. Only runs
//! when a runner has `service = "container"` (or `--only container` asks).

use std::time::Duration;

use super::{Family, Finding};
use crate::config::{Config, ServiceKind};
use crate::service::container::{Container, Engine};
use crate::service::ServiceError;

const F: Family = Family::Container;
/// How long one engine command may take (a throwaway container starts in about a second).
const ENGINE_TIMEOUT: Duration = Duration::from_secs(30);

fn first_line(err: &ServiceError) -> String {
    match err {
        ServiceError::Failed { output, status, .. } => output
            .lines()
            .find(|l| !l.trim().is_empty())
            .map_or_else(|| status.clone(), |l| l.trim().to_owned()),
        other => other.to_string(),
    }
}

pub fn check(cfg: Option<&Config>, asked: bool) -> Vec<Finding> {
    let runners: Vec<_> = cfg
        .map(|cfg| {
            cfg.runners
                .iter()
                .filter(|r| r.service == ServiceKind::Container)
                .collect()
        })
        .unwrap_or_default();
    let (Some(cfg), false) = (cfg, runners.is_empty()) else {
        return if asked {
            vec![Finding::skip(
                F,
                "container.engine",
                "no runner has `service = \"container\"`",
            )]
        } else {
            Vec::new()
        };
    };
    let mut findings = Vec::new();
    let configured = cfg.container.engine.as_deref();
    let Some(engine) = Engine::system(configured) else {
        findings.push(Finding::fail(
            F,
            "container.engine",
            match configured {
                Some(name) => format!("the configured engine `{name}` is not there"),
                None => "neither `docker` nor `podman` is on `PATH`".to_owned(),
            },
            "install one (`apt-get install --no-install-recommends docker.io`, or `podman`), or set `[container] engine` to its path",
        ));
        return findings;
    };
    findings.push(Finding::pass(
        F,
        "container.engine",
        format!("`{}`", engine.program.display()),
    ));
    let version = [
        "version".to_owned(),
        "--format".to_owned(),
        "{{.Server.Version}}".to_owned(),
    ];
    match engine.run_for(&version, ENGINE_TIMEOUT) {
        Ok(server) => findings.push(Finding::pass(
            F,
            "container.reachable",
            format!("the engine answers (server {})", server.trim()),
        )),
        Err(err) => {
            findings.push(Finding::fail(
                F,
                "container.reachable",
                format!("the engine does not answer: {}", first_line(&err)),
                "start it (`systemctl enable --now docker`, or `dockerd &` where no systemd runs); the agent runs as root, so a missing `docker` group is not the reason",
            ));
            return findings;
        }
    }
    let backend = Container::new(cfg, "", &std::path::PathBuf::from("/usr/bin/agentctl"));
    for runner in runners {
        let name = runner.name.as_str();
        let image = backend.image(name);
        let inspect = [
            "image".to_owned(),
            "inspect".to_owned(),
            "--format".to_owned(),
            "{{.Id}}".to_owned(),
            image.clone(),
        ];
        if let Err(err) = engine.run_for(&inspect, ENGINE_TIMEOUT) {
            findings.push(
                Finding::fail(
                    F,
                    "container.image",
                    format!("image `{image}` is not on this host: {}", first_line(&err)),
                    format!(
                        "`{} pull {image}` (offline: `docker load` or `docker import` it), or set `[container] image`",
                        engine.program.display()
                    ),
                )
                .subject(name),
            );
            continue;
        }
        findings.push(Finding::pass(F, "container.image", format!("`{image}`")).subject(name));
        let Ok(run_as) = crate::runner::run_as(&runner.user) else {
            findings.push(
                Finding::skip(
                    F,
                    "container.devices",
                    format!("runner user `{}` does not exist", runner.user),
                )
                .subject(name),
            );
            continue;
        };
        let mut extra = Vec::new();
        if runner.board.is_some() {
            extra.push("dialout".to_owned());
        }
        let Some((args, _)) = backend.probe_args(name, &run_as, &extra) else {
            findings.push(
                Finding::skip(
                    F,
                    "container.devices",
                    "no device to pass (no KVM wanted or present, no board console found)",
                )
                .subject(name),
            );
            continue;
        };
        let groups = args
            .windows(2)
            .filter(|w| w[0] == "--group-add")
            .map(|w| w[1].clone())
            .collect::<Vec<_>>()
            .join(",");
        let who = format!("uid {} with groups {groups}", run_as.uid);
        match engine.run_for(&args, ENGINE_TIMEOUT) {
            Err(err) => findings.push(
                Finding::fail(
                    F,
                    "container.devices",
                    format!("a throwaway container did not run: {}", first_line(&err)),
                    "check the engine's log; a device that vanished since the configuration was written also stops it",
                )
                .subject(name),
            ),
            Ok(out) => {
                let failed: Vec<&str> = out
                    .lines()
                    .filter_map(|l| l.strip_prefix("fail "))
                    .collect();
                let opened: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("ok ")).collect();
                if failed.is_empty() && !opened.is_empty() {
                    findings.push(
                        Finding::pass(
                            F,
                            "container.devices",
                            format!("opened {} in a container as {who}", opened.join(", ")),
                        )
                        .subject(name),
                    );
                } else {
                    findings.push(
                        Finding::fail(
                            F,
                            "container.devices",
                            format!(
                                "cannot open {} in a container as {who}",
                                if failed.is_empty() { "the devices".to_owned() } else { failed.join(", ") }
                            ),
                            "give each device node a group and mode 0660 on the host (udev: `GROUP=\"kvm\", MODE=\"0660\"`; `[container] kvm_device` for another KVM node): the container gets the node's group by number",
                        )
                        .subject(name),
                    );
                }
            }
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Outcome;
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::Path;

    fn config(dir: &Path, engine: &Path) -> Config {
        let pat = dir.join("github-pat");
        std::fs::write(&pat, "unit-test-token-value\n").unwrap();
        std::fs::set_permissions(&pat, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = dir.join("agent.toml");
        std::fs::write(
            &path,
            format!(
                "version = 1\n[github]\nurl = \"https://github.com/o/r\"\npat_file = \"github-pat\"\n\
                 [container]\nengine = \"{}\"\nimage = \"lab/runner:{{version}}\"\n\
                 [[runner]]\nname = \"c1\"\nservice = \"container\"\n",
                engine.display()
            ),
        )
        .unwrap();
        crate::config::load_with(
            &path,
            &crate::config::LoadOptions {
                hostname: Some("h".to_owned()),
                ..crate::config::LoadOptions::default()
            },
        )
        .unwrap()
    }

    fn outcome(findings: &[Finding], id: &str) -> (Outcome, String, Option<String>) {
        let f = findings.iter().find(|f| f.id == id).unwrap();
        (f.outcome, f.detail.clone(), f.hint.clone())
    }

    #[test]
    fn a_missing_engine_fails_with_how_to_install_one() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &dir.path().join("docker"));
        let findings = check(Some(&cfg), false);
        let (outcome, detail, hint) = outcome(&findings, "container.engine");
        assert_eq!(outcome, Outcome::Fail);
        assert!(detail.contains("is not there"), "{detail}");
        assert!(hint.unwrap().contains("docker.io"));
        assert_eq!(findings.len(), 1);
    }

    #[test]
    fn a_missing_image_fails_with_the_pull_command() {
        let dir = tempfile::tempdir().unwrap();
        let engine = dir.path().join("docker");
        std::fs::write(
            &engine,
            "#!/bin/sh\ncase $1 in\nversion) echo 27.0.1 ;;\n\
             image) echo \"Error: No such image: $5\" >&2; exit 1 ;;\nesac\n",
        )
        .unwrap();
        std::fs::set_permissions(&engine, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg = config(dir.path(), &engine);
        let findings = check(Some(&cfg), false);
        assert_eq!(outcome(&findings, "container.engine").0, Outcome::Pass);
        let (reachable, detail, _) = outcome(&findings, "container.reachable");
        assert_eq!(reachable, Outcome::Pass);
        assert!(detail.contains("27.0.1"), "{detail}");
        let (image, detail, hint) = outcome(&findings, "container.image");
        assert_eq!(image, Outcome::Fail);
        assert!(
            detail.contains("`lab/runner:latest` is not on this host: Error: No such image"),
            "{detail}"
        );
        assert!(hint.unwrap().contains("pull lab/runner:latest"));
        assert!(!findings.iter().any(|f| f.id == "container.devices"));
    }

    #[test]
    fn without_container_runners_there_is_nothing_to_say_unless_asked() {
        assert!(check(None, false).is_empty());
        assert_eq!(check(None, true)[0].outcome, Outcome::Skip);
    }
}
