//! QEMU: the configured `qemu-system-*` binaries are there (with their versions), the
//! `binfmt_misc` handlers for foreign arches are registered (with the `F` flag, so they work in
//! containers and chroots), and with `--deep`, QEMU really starts with `-accel kvm -cpu host`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::user::Resolved;
use super::{DoctorError, Environment, Family, Finding};
use crate::config::Config;

const F: Family = Family::Qemu;

pub fn check(
    cfg: Option<&Config>,
    env: &Environment,
    _users: &[Resolved],
    deep: bool,
) -> Result<Vec<Finding>, DoctorError> {
    let (qemu, binfmt) = match cfg {
        Some(cfg) => (cfg.host.qemu.clone(), cfg.host.binfmt.clone()),
        None => (Vec::new(), Vec::new()),
    };
    let mut findings = Vec::new();
    if qemu.is_empty() {
        findings.push(Finding::skip(
            F,
            "qemu.binary",
            "no QEMU binaries configured (`[host] qemu`)",
        ));
    }
    for name in &qemu {
        let (finding, path) = binary_finding(name, std::env::var_os("PATH").as_deref());
        findings.push(finding);
        if deep {
            if let Some(path) = path {
                if path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("qemu-system-x86_64"))
                {
                    findings.push(
                        accel_finding(&path, &env.kvm_device, Duration::from_millis(1500))
                            .subject(name),
                    );
                }
            }
        }
    }
    if binfmt.is_empty() {
        findings.push(Finding::skip(
            F,
            "qemu.binfmt",
            "no foreign arches configured (`[host] binfmt`)",
        ));
    } else {
        for arch in &binfmt {
            findings.push(binfmt_finding(&env.binfmt_dir, arch));
        }
    }
    Ok(findings)
}

/// The Debian package that ships `qemu-system-<arch>`.
pub fn package_of(binary: &str) -> &'static str {
    match binary.rsplit('/').next().unwrap_or(binary) {
        "qemu-system-x86_64" | "qemu-system-i386" => "qemu-system-x86",
        "qemu-system-aarch64" | "qemu-system-arm" => "qemu-system-arm",
        "qemu-system-ppc64" | "qemu-system-ppc" => "qemu-system-ppc",
        "qemu-system-mips" | "qemu-system-mips64" | "qemu-system-mipsel" => "qemu-system-mips",
        _ => "qemu-system-misc",
    }
}

fn find_in_path(name: &str, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return path.is_file().then_some(path);
    }
    let paths = path_var?;
    std::env::split_paths(paths)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `qemu.binary`: found on PATH and `--version` answers.
pub fn binary_finding(
    name: &str,
    path_var: Option<&std::ffi::OsStr>,
) -> (Finding, Option<PathBuf>) {
    let Some(path) = find_in_path(name, path_var) else {
        return (
            Finding::fail(
                F,
                "qemu.binary",
                format!("`{name}` is not installed (not on PATH)"),
                format!(
                    "apt-get install --no-install-recommends {}",
                    package_of(name)
                ),
            )
            .subject(name),
            None,
        );
    };
    let finding = match run_bounded(Command::new(&path).arg("--version"), Duration::from_secs(2)) {
        Ok((true, out)) => {
            let line = out.lines().next().unwrap_or("").trim().to_owned();
            Finding::pass(F, "qemu.binary", format!("`{}`: {line}", path.display())).subject(name)
        }
        Ok((false, out)) => Finding::fail(
            F,
            "qemu.binary",
            format!(
                "`{} --version` failed: {}",
                path.display(),
                out.lines().last().unwrap_or("").trim()
            ),
            format!(
                "reinstall it: apt-get install --reinstall {}",
                package_of(name)
            ),
        )
        .subject(name),
        Err(err) => Finding::fail(
            F,
            "qemu.binary",
            format!("cannot run `{}`: {err}", path.display()),
            format!(
                "reinstall it: apt-get install --reinstall {}",
                package_of(name)
            ),
        )
        .subject(name),
    };
    (finding, Some(path))
}

/// Run a command to completion within `timeout`; (success, stdout+stderr).
fn run_bounded(command: &mut Command, timeout: Duration) -> std::io::Result<(bool, String)> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            let mut out = String::new();
            if let Some(mut stdout) = child.stdout.take() {
                let _ = stdout.read_to_string(&mut out);
            }
            if let Some(mut stderr) = child.stderr.take() {
                let _ = stderr.read_to_string(&mut out);
            }
            return Ok((status.success(), out));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} ms", timeout.as_millis()),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `qemu.accel` (`--deep`): QEMU starts with `-accel kvm -cpu host` and is still running after
/// `alive_for` (a host whose KVM cannot run guests makes it abort at once, e.g. `failed to set
/// MSR` on a paravirtual KVM).
pub fn accel_finding(qemu: &Path, kvm_device: &Path, alive_for: Duration) -> Finding {
    if !kvm_device.exists() {
        return Finding::skip(
            F,
            "qemu.accel",
            format!("`{}` is missing", kvm_device.display()),
        );
    }
    let spawned = Command::new(qemu)
        .args([
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-machine",
            "q35",
            "-m",
            "64",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "none",
            "-monitor",
            "none",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => {
            return Finding::fail(
                F,
                "qemu.accel",
                format!("cannot start `{}`: {err}", qemu.display()),
                format!(
                    "reinstall it: apt-get install --reinstall {}",
                    package_of(&qemu.to_string_lossy())
                ),
            )
        }
    };
    let deadline = Instant::now() + alive_for;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => break None,
        }
    };
    let command = format!("`{} -accel kvm -cpu host`", qemu.display());
    match status {
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Finding::pass(
                F,
                "qemu.accel",
                format!(
                    "{command} ran for {} ms without aborting",
                    alive_for.as_millis()
                ),
            )
        }
        Some(status) => {
            let mut err = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                let _ = stderr.read_to_string(&mut err);
            }
            let first = err
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no message")
                .trim()
                .to_owned();
            Finding::fail(
                F,
                "qemu.accel",
                format!("{command} exited at once ({status}): {first}"),
                "this KVM cannot run QEMU's `-cpu host` guests (paravirtual or nested KVM without full VT-x/AMD-V); use a host that exposes VT-x/AMD-V, or jobs must use `-accel tcg`",
            )
        }
    }
}

/// `qemu.binfmt`: a `qemu-<arch>` handler is registered, enabled and has the `F` flag.
pub fn binfmt_finding(binfmt_dir: &Path, arch: &str) -> Finding {
    let status = std::fs::read_to_string(binfmt_dir.join("status"));
    match status.as_deref().map(str::trim) {
        Ok("enabled") => {}
        Ok(other) => {
            return Finding::fail(
                F,
                "qemu.binfmt",
                format!("binfmt_misc is {other}"),
                format!("echo 1 > {}/status", binfmt_dir.display()),
            )
            .subject(arch)
        }
        Err(_) => {
            return Finding::fail(
                F,
                "qemu.binfmt",
                format!("binfmt_misc is not mounted at `{}`", binfmt_dir.display()),
                format!(
                    "systemctl start proc-sys-fs-binfmt_misc.mount (or `mount -t binfmt_misc binfmt_misc {}`)",
                    binfmt_dir.display()
                ),
            )
            .subject(arch)
        }
    }
    let entry = binfmt_dir.join(format!("qemu-{arch}"));
    let Ok(text) = std::fs::read_to_string(&entry) else {
        return Finding::fail(
            F,
            "qemu.binfmt",
            format!("no `qemu-{arch}` handler in `{}`", binfmt_dir.display()),
            "apt-get install qemu-user-static binfmt-support (registers every arch with the F flag)",
        )
        .subject(arch);
    };
    let enabled = text.lines().next().map(str::trim) == Some("enabled");
    let interpreter = text
        .lines()
        .find_map(|l| l.strip_prefix("interpreter "))
        .unwrap_or("?")
        .to_owned();
    let flags = text
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .unwrap_or("")
        .trim()
        .to_owned();
    if !enabled {
        return Finding::fail(
            F,
            "qemu.binfmt",
            format!("handler `qemu-{arch}` is disabled"),
            format!("echo 1 > {}", entry.display()),
        )
        .subject(arch);
    }
    if !flags.contains('F') {
        return Finding::warn(
            F,
            "qemu.binfmt",
            format!("`qemu-{arch}` -> `{interpreter}` lacks the F flag (flags: {flags}): it fails inside containers and chroots"),
            "install qemu-user-static (its handlers use F), or re-register with `F` in the flags",
        )
        .subject(arch);
    }
    Finding::pass(
        F,
        "qemu.binfmt",
        format!("`qemu-{arch}` -> `{interpreter}`, flags {flags}"),
    )
    .subject(arch)
}

#[cfg(test)]
mod tests {
    use super::super::Outcome;
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn binaries_are_found_with_their_version_or_named_with_a_package() {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "qemu-system-aarch64",
            "echo 'QEMU emulator version 10.0.2 (Debian 1:10.0.2)'",
        );
        let path = dir.path().as_os_str();
        let (found, _) = binary_finding("qemu-system-aarch64", Some(path));
        assert_eq!(found.outcome, Outcome::Pass);
        assert!(
            found
                .detail
                .ends_with("QEMU emulator version 10.0.2 (Debian 1:10.0.2)"),
            "{}",
            found.detail
        );
        let (missing, _) = binary_finding("qemu-system-riscv64", Some(path));
        assert_eq!(missing.outcome, Outcome::Fail);
        assert_eq!(
            missing.hint.as_deref(),
            Some("apt-get install --no-install-recommends qemu-system-misc")
        );
    }

    #[test]
    fn an_aborting_qemu_fails_and_a_running_one_passes() {
        let dir = tempfile::tempdir().unwrap();
        // What QEMU prints on this host's paravirtual KVM (e2e-harness.md §4).
        let aborts = script(
            dir.path(),
            "qemu-aborts",
            "echo 'qemu-system-x86_64: error: failed to set MSR 0x10a to 0xc000069' >&2; exit 134",
        );
        let failed = accel_finding(&aborts, Path::new("/dev/kvm"), Duration::from_millis(1500));
        assert_eq!(failed.outcome, Outcome::Fail, "{failed:?}");
        assert!(
            failed.detail.contains("failed to set MSR 0x10a"),
            "{}",
            failed.detail
        );
        let runs = script(dir.path(), "qemu-runs", "exec sleep 30");
        let ok = accel_finding(&runs, Path::new("/dev/kvm"), Duration::from_millis(300));
        assert_eq!(ok.outcome, Outcome::Pass, "{ok:?}");
    }

    #[test]
    fn binfmt_entries() {
        let dir = tempfile::tempdir().unwrap();
        assert!(binfmt_finding(dir.path(), "aarch64")
            .detail
            .contains("not mounted"));
        std::fs::write(dir.path().join("status"), "enabled\n").unwrap();
        let missing = binfmt_finding(dir.path(), "aarch64");
        assert_eq!(missing.outcome, Outcome::Fail);
        assert!(missing.hint.unwrap().contains("qemu-user-static"));
        std::fs::write(
            dir.path().join("qemu-aarch64"),
            "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\noffset 0\nmagic 7f454c46\n",
        )
        .unwrap();
        assert_eq!(binfmt_finding(dir.path(), "aarch64").outcome, Outcome::Pass);
        std::fs::write(
            dir.path().join("qemu-riscv64"),
            "enabled\ninterpreter /usr/bin/qemu-riscv64\nflags: P\n",
        )
        .unwrap();
        assert_eq!(binfmt_finding(dir.path(), "riscv64").outcome, Outcome::Warn);
    }
}
