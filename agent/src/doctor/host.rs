//! The host itself: an OS and arch the runner ships for, systemd, disk space where runners and
//! jobs write, a synchronised clock, and proxy variables a runner can use.

use std::path::{Path, PathBuf};

use super::{Environment, Family, Finding};
use crate::config::Config;

const F: Family = Family::Host;

/// Below this, a runner update or a job checkout fails.
pub const DISK_FAIL_BYTES: u64 = 1 << 30;
/// Below this, warn.
pub const DISK_WARN_BYTES: u64 = 5 << 30;

pub fn check(cfg: Option<&Config>, env: &Environment) -> Vec<Finding> {
    let mut findings = vec![
        os_finding(
            &env.os_release,
            std::env::consts::OS,
            std::env::consts::ARCH,
        ),
        systemd_finding(cfg, env),
    ];
    for (what, path) in disk_paths(cfg) {
        findings.push(disk_finding(&what, &path));
    }
    findings.push(clock_finding());
    findings.extend(proxy_findings(|name| std::env::var(name).ok()));
    findings
}

/// The runner asset for an arch: `linux-x64`, `linux-arm64`, `linux-arm`.
pub fn runner_asset(os: &str, arch: &str) -> Option<&'static str> {
    match (os, arch) {
        ("linux", "x86_64") => Some("linux-x64"),
        ("linux", "aarch64") => Some("linux-arm64"),
        ("linux", "arm") => Some("linux-arm"),
        _ => None,
    }
}

pub fn os_finding(os_release: &Path, os: &str, arch: &str) -> Finding {
    let pretty = std::fs::read_to_string(os_release)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| os.to_owned());
    match runner_asset(os, arch) {
        Some("linux-arm") => Finding::warn(
            F,
            "host.os",
            format!("{pretty} on {arch}: the runner's `linux-arm` (32-bit) build is deprecated"),
            "run a 64-bit (arm64) OS on this board",
        ),
        Some(asset) => Finding::pass(
            F,
            "host.os",
            format!("{pretty} on {arch} (runner asset `{asset}`)"),
        ),
        None => Finding::fail(
            F,
            "host.os",
            format!("{pretty} on {arch}: GitHub ships no runner for this platform"),
            "use an x86_64 or arm64 Linux host",
        ),
    }
}

fn systemd_finding(cfg: Option<&Config>, env: &Environment) -> Finding {
    if env.has_systemd() {
        return Finding::pass(F, "host.systemd", "systemd is the init system");
    }
    let pid1 = std::fs::read_to_string(env.proc_root.join("1/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let wants_units = cfg.is_some_and(|c| {
        c.runners
            .iter()
            .any(|r| r.service == crate::config::ServiceKind::Systemd)
    });
    let detail = format!(
        "systemd is not running (`{}` missing; PID 1 is `{pid1}`)",
        env.systemd_marker.display()
    );
    if wants_units {
        Finding::fail(
            F,
            "host.systemd",
            format!("{detail}, but runners use `service = \"systemd\"`"),
            "set `service = \"process\"` for these runners, or boot the host with systemd",
        )
    } else {
        Finding::warn(
            F,
            "host.systemd",
            format!("{detail}: runner units cannot be installed"),
            "runners must use `service = \"process\"` here",
        )
    }
}

/// Where runners and jobs write: the runner root and every distinct work dir.
fn disk_paths(cfg: Option<&Config>) -> Vec<(String, PathBuf)> {
    let mut paths = Vec::new();
    match cfg {
        Some(cfg) if !cfg.runners.is_empty() => {
            for runner in &cfg.runners {
                let root = runner
                    .dir
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| runner.dir.clone());
                let work = if runner.work_dir.is_absolute() {
                    runner.work_dir.clone()
                } else {
                    runner.dir.join(&runner.work_dir)
                };
                for (what, path) in [("runner root", root), ("work dir", work)] {
                    if !paths.iter().any(|(_, p)| *p == path) {
                        paths.push((what.to_owned(), path));
                    }
                }
            }
        }
        _ => paths.push((
            "runner root".to_owned(),
            PathBuf::from(crate::config::DEFAULT_RUNNER_ROOT),
        )),
    }
    paths
}

/// Free space where `path` (or its nearest existing ancestor) lives.
pub fn disk_finding(what: &str, path: &Path) -> Finding {
    let mut probe = path;
    while !probe.exists() {
        match probe.parent() {
            Some(parent) => probe = parent,
            None => break,
        }
    }
    let stat = match nix::sys::statvfs::statvfs(probe) {
        Ok(stat) => stat,
        Err(err) => {
            return Finding::fail(
                F,
                "host.disk",
                format!("cannot statvfs `{}`: {}", probe.display(), err.desc()),
                "check that the path is readable",
            )
        }
    };
    let free = stat.blocks_available() * stat.fragment_size();
    let shown = format!(
        "{what} `{}`: {} free{}",
        path.display(),
        human_bytes(free),
        if probe != path {
            format!(" (on `{}`, the path does not exist yet)", probe.display())
        } else {
            String::new()
        }
    );
    if free < DISK_FAIL_BYTES {
        Finding::fail(
            F,
            "host.disk",
            shown,
            "free space (old `_work` dirs, `docker system prune`) or move `root`/`work_dir` to a larger disk",
        )
    } else if free < DISK_WARN_BYTES {
        Finding::warn(
            F,
            "host.disk",
            shown,
            "less than 5 GiB: a runner update plus one checkout may not fit",
        )
    } else {
        Finding::pass(F, "host.disk", shown)
    }
}

pub fn human_bytes(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    let b = bytes as f64;
    if b >= GIB {
        format!("{:.1} GiB", b / GIB)
    } else {
        format!("{:.0} MiB", b / MIB)
    }
}

/// Whether the kernel says its clock is synchronised (`adjtimex`, read only).
fn clock_finding() -> Finding {
    // SAFETY: adjtimex with modes = 0 only reads the kernel's state into our struct.
    let (state, status) = unsafe {
        let mut tx: nix::libc::timex = std::mem::zeroed();
        let state = nix::libc::adjtimex(&mut tx);
        (state, tx.status)
    };
    if state < 0 {
        return Finding::warn(
            F,
            "host.clock",
            "cannot read the kernel clock state (adjtimex failed)",
            "check `timedatectl`",
        );
    }
    if state == nix::libc::TIME_ERROR || status & nix::libc::STA_UNSYNC != 0 {
        Finding::warn(
            F,
            "host.clock",
            "the kernel clock is not marked synchronised (adjtimex: STA_UNSYNC); tokens and App JWTs fail on skew",
            "enable NTP: `systemctl enable --now systemd-timesyncd` (or chrony); the github family measures the actual skew",
        )
    } else {
        Finding::pass(F, "host.clock", "the kernel clock is synchronised (NTP)")
    }
}

/// Proxy variables: a value without a scheme is silently ignored by some clients and breaks
/// others (the runner needs `http://`).
pub fn proxy_findings(get: impl Fn(&str) -> Option<String>) -> Vec<Finding> {
    let mut findings = Vec::new();
    for name in ["https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"] {
        let Some(value) = get(name) else {
            continue;
        };
        if value.trim().is_empty() {
            continue;
        }
        findings.push(proxy_finding(name, &value));
    }
    if findings.is_empty() {
        findings.push(Finding::pass(F, "host.proxy", "no proxy configured"));
    }
    findings
}

pub fn proxy_finding(name: &str, value: &str) -> Finding {
    proxy_check(F, "host.proxy", name, value, |fixed| {
        format!("export {name}={fixed}")
    })
}

/// A proxy value: with a scheme, a host, and a scheme clients know. `fix` turns the corrected
/// value into the hint.
pub fn proxy_check(
    family: Family,
    id: &str,
    name: &str,
    value: &str,
    fix: impl Fn(&str) -> String,
) -> Finding {
    let shown = mask_userinfo(value);
    let has_scheme = value.contains("://");
    match url::Url::parse(value) {
        Ok(url)
            if has_scheme
                && matches!(url.scheme(), "http" | "https" | "socks5" | "socks5h")
                && url.host().is_some() =>
        {
            Finding::pass(family, id, format!("`{name}={shown}`")).subject(name)
        }
        _ if !has_scheme => Finding::fail(
            family,
            id,
            format!(
                "`{name}={shown}` has no scheme: the runner and some clients ignore it silently"
            ),
            fix(&format!("http://{}", shown.trim_start_matches('/'))),
        )
        .subject(name),
        _ => Finding::fail(
            family,
            id,
            format!("`{name}={shown}` is not a proxy URL like `http://proxy.example:3128`"),
            fix("http://HOST:PORT"),
        )
        .subject(name),
    }
}

/// `user:password@host` parts never reach the output.
fn mask_userinfo(value: &str) -> String {
    let (scheme, rest) = match value.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), value),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}{user}:{}@{}", crate::redact::MASK, &rest[at + 1..])
        }
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Outcome;
    use super::*;

    #[test]
    fn a_proxy_without_scheme_fails_with_the_fixed_value() {
        let finding = proxy_finding("HTTPS_PROXY", "proxy.corp:3128");
        assert_eq!(finding.outcome, Outcome::Fail);
        assert_eq!(
            finding.hint.as_deref(),
            Some("export HTTPS_PROXY=http://proxy.corp:3128")
        );
        assert_eq!(
            proxy_finding("https_proxy", "http://proxy.corp:3128").outcome,
            Outcome::Pass
        );
        let secret = proxy_finding("https_proxy", "http://me:hunter22@proxy:3128");
        assert!(!secret.detail.contains("hunter22"), "{}", secret.detail);
        assert_eq!(secret.detail, "`https_proxy=http://me:***@proxy:3128`");
        let bare = proxy_finding("https_proxy", "me:hunter22@proxy:3128");
        assert!(!bare.detail.contains("hunter22"), "{}", bare.detail);
        assert!(!bare.hint.as_deref().unwrap().contains("hunter22"));
    }

    #[test]
    fn unsupported_arch_fails() {
        let os = Path::new("/etc/os-release");
        assert_eq!(os_finding(os, "linux", "x86_64").outcome, Outcome::Pass);
        assert_eq!(os_finding(os, "linux", "arm").outcome, Outcome::Warn);
        assert_eq!(os_finding(os, "linux", "riscv64").outcome, Outcome::Fail);
    }

    #[test]
    fn disk_space_of_a_missing_dir_is_read_from_its_ancestor() {
        let finding = disk_finding("work dir", Path::new("/tmp/ra-doctor-nonexistent/x/y"));
        assert!(finding.detail.contains("on `/tmp`"), "{}", finding.detail);
        assert_ne!(finding.outcome, Outcome::Skip);
    }
}
