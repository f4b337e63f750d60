//! Board serial devices (consoles and relay buses): the configured identity resolves to exactly
//! one device, which is a character device the runner user can open, that takes the configured
//! speed, and that nobody else holds (`flock`, `TIOCEXCL`, UUCP `LCK..` files), with the holder
//! named; ModemManager and brltty, which grab USB serial ports, are reported.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::libc;

use super::as_user::{self, Identity};
use super::kvm::{dev_numbers, group_name, owner_mode};
use super::user::Resolved;
use super::{ticked, DoctorError, Environment, Family, Finding};
use crate::config::{Board, Config, Power, SerialIdentity};

const F: Family = Family::Serial;

/// Where a serial identity led.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Exactly one device: the path as found, and the device node behind it.
    One { found: PathBuf, device: PathBuf },
    /// Nothing matched; the serial devices that do exist.
    Missing { candidates: Vec<String> },
    /// More than one matched.
    Ambiguous(Vec<PathBuf>),
}

/// A tty that udev knows, with its properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdevTty {
    pub device: PathBuf,
    pub props: BTreeMap<String, String>,
}

/// USB serial ttys (`ttyUSB*`, `ttyACM*`) from sysfs, with their udev properties.
pub fn usb_ttys(env: &Environment) -> Vec<UdevTty> {
    let mut ttys = Vec::new();
    let Ok(entries) = std::fs::read_dir(env.sys_root.join("class/tty")) else {
        return ttys;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("ttyUSB") || name.starts_with("ttyACM")) {
            continue;
        }
        let dev = std::fs::read_to_string(entry.path().join("dev")).unwrap_or_default();
        let props = udev_props(&env.udev_data, dev.trim());
        ttys.push(UdevTty {
            device: env.dev_root.join(&name),
            props,
        });
    }
    ttys.sort_by(|a, b| a.device.cmp(&b.device));
    ttys
}

/// `E:KEY=VALUE` lines of `/run/udev/data/c<major>:<minor>`.
pub fn udev_props(udev_data: &Path, dev: &str) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(udev_data.join(format!("c{dev}"))).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("E:"))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Serial devices that exist, for "did you mean" lists.
pub fn candidates(env: &Environment) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["serial/by-id", "serial/by-path"] {
        if let Ok(entries) = std::fs::read_dir(env.dev_root.join(sub)) {
            let mut names: Vec<String> = entries
                .flatten()
                .map(|e| e.path().display().to_string())
                .collect();
            names.sort();
            out.extend(names);
        }
    }
    for tty in usb_ttys(env) {
        let mut desc = tty.device.display().to_string();
        let keys = ["ID_SERIAL_SHORT", "ID_PATH", "ID_USB_INTERFACE_NUM"];
        let props: Vec<String> = keys
            .iter()
            .filter_map(|k| tty.props.get(*k).map(|v| format!("{k}={v}")))
            .collect();
        if !props.is_empty() {
            desc.push_str(&format!(" ({})", props.join(", ")));
        }
        out.push(desc);
    }
    out
}

pub fn resolve(identity: &SerialIdentity, env: &Environment) -> Resolution {
    match identity {
        SerialIdentity::Path(path) => match std::fs::canonicalize(path) {
            Ok(device) => Resolution::One {
                found: path.clone(),
                device,
            },
            Err(_) => Resolution::Missing {
                candidates: candidates(env),
            },
        },
        SerialIdentity::Udev {
            id_serial_short,
            id_path,
            usb_interface_num,
        } => {
            let wanted = [
                ("ID_SERIAL_SHORT", id_serial_short),
                ("ID_PATH", id_path),
                ("ID_USB_INTERFACE_NUM", usb_interface_num),
            ];
            let hits: Vec<PathBuf> = usb_ttys(env)
                .into_iter()
                .filter(|tty| {
                    wanted.iter().all(|(key, value)| match value {
                        Some(value) => tty.props.get(*key) == Some(value),
                        None => true,
                    })
                })
                .map(|tty| tty.device)
                .collect();
            match hits.len() {
                0 => Resolution::Missing {
                    candidates: candidates(env),
                },
                1 => Resolution::One {
                    found: hits[0].clone(),
                    device: hits[0].clone(),
                },
                _ => Resolution::Ambiguous(hits),
            }
        }
    }
}

fn describe_identity(identity: &SerialIdentity) -> String {
    match identity {
        SerialIdentity::Path(path) => ticked(path),
        SerialIdentity::Udev {
            id_serial_short,
            id_path,
            usb_interface_num,
        } => {
            let parts: Vec<String> = [
                ("ID_SERIAL_SHORT", id_serial_short),
                ("ID_PATH", id_path),
                ("ID_USB_INTERFACE_NUM", usb_interface_num),
            ]
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
            .collect();
            format!("udev {}", parts.join(" "))
        }
    }
}

/// The serial family.
pub fn check(
    cfg: Option<&Config>,
    env: &Environment,
    users: &[Resolved],
) -> Result<Vec<Finding>, DoctorError> {
    let boards: &[Board] = cfg.map(|c| c.boards.as_slice()).unwrap_or(&[]);
    if boards.is_empty() {
        return Ok(vec![Finding::skip(
            F,
            "serial.resolve",
            "no boards configured",
        )]);
    }
    let mut findings = Vec::new();
    for board in boards {
        // The users of the runners bound to this board (all runner users if none is bound).
        let bound: Vec<&str> = cfg
            .map(|c| {
                c.runners
                    .iter()
                    .filter(|r| r.board.as_deref() == Some(board.name.as_str()))
                    .map(|r| r.user.as_str())
                    .collect()
            })
            .unwrap_or_default();
        let identities: Vec<&Identity> = users
            .iter()
            .filter_map(|u| match u {
                Resolved::Found(identity) => Some(identity),
                Resolved::Missing(_) => None,
            })
            .filter(|i| bound.is_empty() || bound.contains(&i.name.as_str()))
            .collect();
        if let Some(console) = &board.console {
            let subject = format!("{}/console", board.name);
            findings.extend(device_findings(
                &subject,
                &console.identity,
                console.baud,
                env,
                &identities,
            )?);
        }
        match &board.power {
            Some(Power::ModbusRtu { device, baud, .. }) => {
                let subject = format!("{}/relay", board.name);
                findings.extend(device_findings(&subject, device, *baud, env, &identities)?);
                findings.push(tool_finding(
                    &board.name,
                    "mbpoll",
                    "apt-get install mbpoll",
                ));
            }
            Some(Power::Command { on, .. }) => {
                if let Some(program) = on.split_whitespace().next() {
                    findings.push(tool_finding(
                        &board.name,
                        program,
                        "install it or fix `power.on`",
                    ));
                }
            }
            None => {}
        }
    }
    findings.extend(interference_findings(
        &env.proc_root,
        env,
        &boards_devices(boards, env),
    ));
    Ok(findings)
}

fn boards_devices(boards: &[Board], env: &Environment) -> Vec<PathBuf> {
    boards
        .iter()
        .filter_map(|b| b.console.as_ref())
        .filter_map(|c| match resolve(&c.identity, env) {
            Resolution::One { device, .. } => Some(device),
            _ => None,
        })
        .collect()
}

fn tool_finding(board: &str, program: &str, hint: &str) -> Finding {
    let subject = format!("{board}/power");
    if program.contains('/') {
        return if Path::new(program).exists() {
            Finding::pass(F, "serial.power-tool", format!("`{program}` exists")).subject(subject)
        } else {
            Finding::fail(
                F,
                "serial.power-tool",
                format!("`{program}` does not exist"),
                hint,
            )
            .subject(subject)
        };
    }
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false);
    if found {
        Finding::pass(F, "serial.power-tool", format!("`{program}` is on PATH")).subject(subject)
    } else {
        Finding::fail(
            F,
            "serial.power-tool",
            format!("`{program}` is not on PATH: the board cannot be power-cycled"),
            hint,
        )
        .subject(subject)
    }
}

/// Every check of one serial device: resolve, node, holders, open as each user, baud.
pub fn device_findings(
    subject: &str,
    identity: &SerialIdentity,
    baud: u32,
    env: &Environment,
    users: &[&Identity],
) -> Result<Vec<Finding>, DoctorError> {
    let mut findings = Vec::new();
    let wanted = describe_identity(identity);
    let (found, device) = match resolve(identity, env) {
        Resolution::One { found, device } => (found, device),
        Resolution::Missing { candidates } => {
            let list = if candidates.is_empty() {
                "no serial devices on this host".to_owned()
            } else {
                format!("present: {}", candidates.join("; "))
            };
            findings.push(
                Finding::fail(
                    F,
                    "serial.resolve",
                    format!("{wanted} matches no device ({list})"),
                    "plug the board in (check the hub's power and `dmesg | tail`: brltty may have claimed it) or fix the identity; prefer `/dev/serial/by-path/...`",
                )
                .subject(subject),
            );
            return Ok(findings);
        }
        Resolution::Ambiguous(hits) => {
            let list: Vec<String> = hits.iter().map(|p| p.display().to_string()).collect();
            findings.push(
                Finding::fail(
                    F,
                    "serial.resolve",
                    format!("{wanted} matches {} devices: {}", hits.len(), list.join(", ")),
                    "make the identity unique: add `id_path` (the USB port) or `usb_interface_num`, or use `/dev/serial/by-path/...`",
                )
                .subject(subject),
            );
            return Ok(findings);
        }
    };
    let arrow = if found == device {
        ticked(&device)
    } else {
        format!("{} -> {}", ticked(&found), ticked(&device))
    };
    findings.push(Finding::pass(F, "serial.resolve", arrow).subject(subject));

    let meta = match std::fs::metadata(&device) {
        Ok(meta) => meta,
        Err(err) => {
            findings.push(
                Finding::fail(
                    F,
                    "serial.node",
                    format!("{} vanished: {err}", ticked(&device)),
                    "the device was unplugged or reset; check `dmesg | tail`",
                )
                .subject(subject),
            );
            return Ok(findings);
        }
    };
    if !meta.file_type().is_char_device() {
        findings.push(
            Finding::fail(
                F,
                "serial.node",
                format!("{} is not a character device", ticked(&device)),
                "point the identity at the tty (`/dev/serial/by-path/...`)",
            )
            .subject(subject),
        );
        return Ok(findings);
    }
    let (major, minor) = dev_numbers(meta.rdev());
    findings.push(
        Finding::pass(
            F,
            "serial.node",
            format!("char device {major}:{minor}, {}", owner_mode(&meta)),
        )
        .subject(subject),
    );

    let root = probe_port(&device, None, Some(baud))?;
    let holders = holders_finding(&device, &meta, &root, env);
    let busy = holders.outcome == super::Outcome::Fail;
    findings.push(holders.subject(subject));

    for identity in users {
        let probe = probe_port(&device, Some(identity), None)?;
        findings.push(open_finding(&device, &meta, identity, &probe, env).subject(subject));
    }

    findings.push(baud_finding(&device, baud, &root, busy).subject(subject));
    Ok(findings)
}

/// What a port probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortProbe {
    pub open: Result<(), Errno>,
    /// `TIOCGEXCL`: someone set `TIOCEXCL`.
    pub exclusive: Result<bool, Errno>,
    /// `flock(LOCK_EX|LOCK_NB)`: `Err(EWOULDBLOCK)` when held.
    pub flock: Result<(), Errno>,
    /// Baud set and read back (`None` when not tried: not asked, or the port is held).
    pub baud: Option<Result<(u32, u32), Errno>>,
}

/// Open `device` (`O_RDWR|O_NOCTTY|O_NONBLOCK`) as `identity`; with `baud`, and only when the
/// port is free, set that speed, read it back, and restore the previous settings.
pub fn probe_port(
    device: &Path,
    identity: Option<&Identity>,
    baud: Option<u32>,
) -> Result<Result<PortProbe, as_user::ProbeFailure>, DoctorError> {
    let path = CString::new(device.as_os_str().as_bytes()).map_err(|_| DoctorError::NulInPath {
        path: device.to_path_buf(),
    })?;
    let speed = baud.unwrap_or(0);
    let answer = as_user::run::<6>(identity, Duration::from_secs(3), move || {
        let mut out = [0i64; 6];
        let fd = as_user::raw_open(
            &path,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        );
        if fd < 0 {
            out[0] = fd;
            return out;
        }
        let fd = fd as libc::c_int;
        // SAFETY: ioctls and flock on a descriptor this child owns, with stack structs.
        unsafe {
            let mut excl: libc::c_int = 0;
            out[1] = if libc::ioctl(fd, libc::TIOCGEXCL as _, &mut excl) < 0 {
                -i64::from(Errno::last_raw())
            } else {
                i64::from(excl != 0)
            };
            out[2] = if libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) < 0 {
                -i64::from(Errno::last_raw())
            } else {
                libc::flock(fd, libc::LOCK_UN);
                0
            };
            out[3] = 1; // not tried
            if speed > 0 && out[1] == 0 && out[2] == 0 {
                let mut saved: libc::termios2 = std::mem::zeroed();
                if libc::ioctl(fd, libc::TCGETS2 as _, &mut saved) < 0 {
                    out[3] = -i64::from(Errno::last_raw());
                } else {
                    let mut set = saved;
                    set.c_cflag &= !libc::CBAUD;
                    set.c_cflag |= libc::BOTHER;
                    set.c_ispeed = speed;
                    set.c_ospeed = speed;
                    let mut back: libc::termios2 = std::mem::zeroed();
                    if libc::ioctl(fd, libc::TCSETS2 as _, &set) < 0
                        || libc::ioctl(fd, libc::TCGETS2 as _, &mut back) < 0
                    {
                        out[3] = -i64::from(Errno::last_raw());
                    } else {
                        out[3] = 0;
                        out[4] = i64::from(back.c_ispeed);
                        out[5] = i64::from(back.c_ospeed);
                    }
                    libc::ioctl(fd, libc::TCSETS2 as _, &saved);
                }
            }
            libc::close(fd);
        }
        out
    })?;
    let err = |v: i64| Errno::from_raw(-v as i32);
    Ok(answer.map(|out| {
        if out[0] < 0 {
            return PortProbe {
                open: Err(err(out[0])),
                exclusive: Ok(false),
                flock: Ok(()),
                baud: None,
            };
        }
        PortProbe {
            open: Ok(()),
            exclusive: if out[1] < 0 {
                Err(err(out[1]))
            } else {
                Ok(out[1] == 1)
            },
            flock: if out[2] < 0 { Err(err(out[2])) } else { Ok(()) },
            baud: match out[3] {
                1 => None,
                0 => Some(Ok((out[4] as u32, out[5] as u32))),
                e => Some(Err(err(e))),
            },
        }
    }))
}

/// A process that has a device open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} (`{}`)", self.pid, self.comm)
    }
}

fn comm_of(proc_root: &Path, pid: u32) -> String {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("comm"))
        .map(|c| c.trim_end().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

/// Processes with an fd on `device` (needs root to see other users' fds).
pub fn open_by(proc_root: &Path, device: &Path) -> Vec<Holder> {
    let mut holders = Vec::new();
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return holders;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let has = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == device));
        if has && pid != me {
            holders.push(Holder {
                pid,
                comm: comm_of(proc_root, pid),
            });
        }
    }
    holders.sort_by_key(|h| h.pid);
    holders
}

/// `flock` holders of the inode of `meta` from `/proc/locks`.
pub fn flock_holders(proc_root: &Path, meta: &std::fs::Metadata) -> Vec<Holder> {
    let (major, minor) = dev_numbers(meta.dev());
    let key = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let text = std::fs::read_to_string(proc_root.join("locks")).unwrap_or_default();
    let mut holders = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // `1: FLOCK  ADVISORY  WRITE 1234 00:05:42 0 EOF`; waiters have `->` after the number.
        if fields.get(1) == Some(&"->") || fields.get(1) != Some(&"FLOCK") {
            continue;
        }
        if fields.get(5) != Some(&key.as_str()) {
            continue;
        }
        if let Some(pid) = fields.get(4).and_then(|p| p.parse::<u32>().ok()) {
            if !holders.iter().any(|h: &Holder| h.pid == pid) {
                holders.push(Holder {
                    pid,
                    comm: comm_of(proc_root, pid),
                });
            }
        }
    }
    holders
}

/// A UUCP lock file for a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockFile {
    pub path: PathBuf,
    pub pid: Option<u32>,
    pub alive: bool,
}

/// `LCK..<name>` where `name` is the device path below `/dev` with `/` turned into `_`.
pub fn lock_name(device: &Path, dev_root: &Path) -> String {
    let rel = device.strip_prefix(dev_root).unwrap_or(device);
    let rel = rel
        .to_string_lossy()
        .trim_start_matches('/')
        .replace('/', "_");
    format!("LCK..{rel}")
}

/// UUCP lock files for `device` in the lock directories, with their owner's state.
pub fn lock_files(device: &Path, env: &Environment) -> Vec<LockFile> {
    let name = lock_name(device, &env.dev_root);
    let mut seen = Vec::new();
    let mut found = Vec::new();
    for dir in &env.lock_dirs {
        let path = dir.join(&name);
        let Ok(real) = std::fs::canonicalize(&path) else {
            continue;
        };
        if seen.contains(&real) {
            continue;
        }
        seen.push(real);
        let bytes = std::fs::read(&path).unwrap_or_default();
        let pid = parse_lock_pid(&bytes);
        let alive = pid.is_some_and(|pid| env.proc_root.join(pid.to_string()).exists());
        found.push(LockFile { path, pid, alive });
    }
    found
}

/// ASCII (HDB, `%10d\n`) or 4-byte binary (Kermit) PID.
pub fn parse_lock_pid(bytes: &[u8]) -> Option<u32> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Ok(pid) = text.trim().parse::<u32>() {
            return Some(pid);
        }
    }
    if bytes.len() == 4 {
        let pid = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        // pid_max is at most 2^22; anything bigger is text that happens to be 4 bytes long.
        return (pid > 0 && pid <= 1 << 22).then_some(pid);
    }
    None
}

fn holders_finding(
    device: &Path,
    meta: &std::fs::Metadata,
    root: &Result<PortProbe, as_user::ProbeFailure>,
    env: &Environment,
) -> Finding {
    let dev = ticked(device);
    let openers = open_by(&env.proc_root, device);
    let name_openers = |fallback: &str| {
        if openers.is_empty() {
            fallback.to_owned()
        } else {
            openers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let probe = match root {
        Ok(probe) => probe,
        Err(failure) => {
            return Finding::fail(
                F,
                "serial.holders",
                format!("cannot probe {dev}: {failure}"),
                "the open blocked or crashed; check `dmesg | tail`",
            )
        }
    };
    if let Err(errno) = probe.open {
        return Finding::fail(
            F,
            "serial.holders",
            format!(
                "{dev} does not open even as doctor's user: {}",
                errno.desc()
            ),
            vanished_hint(errno),
        );
    }
    if probe.flock == Err(Errno::EWOULDBLOCK) {
        let holders = flock_holders(&env.proc_root, meta);
        let who = if holders.is_empty() {
            name_openers("an unknown process")
        } else {
            holders
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Finding::fail(
            F,
            "serial.holders",
            format!("{dev} is locked (flock) by {who}"),
            "stop that program (a terminal left open: picocom, tio, ser2net) or wait for its job to end",
        );
    }
    if probe.exclusive == Ok(true) {
        return Finding::fail(
            F,
            "serial.holders",
            format!(
                "{dev} is held exclusively (TIOCEXCL) by {}",
                name_openers("an unknown process")
            ),
            "stop that program; every other open gets EBUSY until it closes the port",
        );
    }
    let locks = lock_files(device, env);
    if let Some(live) = locks.iter().find(|l| l.alive) {
        let pid = live.pid.unwrap_or(0);
        return Finding::fail(
            F,
            "serial.holders",
            format!(
                "{dev} is locked by `{}` of pid {pid} (`{}`)",
                live.path.display(),
                comm_of(&env.proc_root, pid)
            ),
            "stop that program (minicom and other UUCP-locking tools) or wait for its job to end",
        );
    }
    if let Some(stale) = locks.first() {
        let owner = match stale.pid {
            Some(pid) => format!("pid {pid} is gone"),
            None => "it names no pid".to_owned(),
        };
        return Finding::warn(
            F,
            "serial.holders",
            format!(
                "stale lock file `{}` ({owner}): UUCP-locking tools will refuse the port",
                stale.path.display()
            ),
            format!("safe to remove: rm {}", stale.path.display()),
        );
    }
    if !openers.is_empty() {
        return Finding::warn(
            F,
            "serial.holders",
            format!("{dev} is open (without a lock) by {}", name_openers("")),
            "two readers of one console steal each other's bytes: stop the other program",
        );
    }
    Finding::pass(
        F,
        "serial.holders",
        format!(
            "{dev} is free (no flock, no TIOCEXCL, no LCK.. file, no other process has it open)"
        ),
    )
}

fn vanished_hint(errno: Errno) -> &'static str {
    match errno {
        Errno::ENOENT | Errno::ENXIO | Errno::ENODEV | Errno::EIO => {
            "the device vanished (unplugged, reset, or its driver is gone): re-plug it and check `dmesg | tail`"
        }
        _ => "check `dmesg | tail`",
    }
}

fn open_finding(
    device: &Path,
    meta: &std::fs::Metadata,
    identity: &Identity,
    probe: &Result<PortProbe, as_user::ProbeFailure>,
    env: &Environment,
) -> Finding {
    let user = &identity.name;
    let dev = ticked(device);
    let probe = match probe {
        Ok(probe) => probe,
        Err(failure @ as_user::ProbeFailure::CannotBecome { .. }) => {
            return Finding::skip(
                F,
                "serial.open",
                format!(
                    "{failure}: run `agentctl doctor` as root (or as `{user}`) to check its access"
                ),
            )
        }
        Err(failure) => {
            return Finding::fail(
                F,
                "serial.open",
                format!("cannot probe {dev} as `{user}`: {failure}"),
                "the open blocked or crashed; check `dmesg | tail`",
            )
        }
    };
    match probe.open {
        Ok(()) => Finding::pass(F, "serial.open", format!("`{user}` opens {dev} read-write")),
        Err(Errno::EACCES) | Err(Errno::EPERM) => {
            let group = meta.gid();
            let in_group = identity.groups.iter().any(|g| g.as_raw() == group);
            let hint = if group != 0 && meta.mode() & 0o060 == 0o060 && !in_group {
                format!(
                    "usermod -aG {} {user}, then restart the runner services",
                    group_name(group)
                )
            } else {
                "add a udev rule: `SUBSYSTEM==\"tty\", ATTRS{idVendor}==\"VID\", ATTRS{idProduct}==\"PID\", GROUP=\"dialout\", MODE=\"0660\"` in /etc/udev/rules.d/70-boards.rules, then `udevadm control --reload && udevadm trigger`".to_owned()
            };
            Finding::fail(
                F,
                "serial.open",
                format!(
                    "`{user}` cannot open {dev}: permission denied ({}; `{user}` is {}in `{}`)",
                    owner_mode(meta),
                    if in_group { "" } else { "not " },
                    group_name(group)
                ),
                hint,
            )
        }
        Err(Errno::EBUSY) => Finding::fail(
            F,
            "serial.open",
            format!(
                "`{user}` gets EBUSY on {dev}: held exclusively (TIOCEXCL) by {}",
                holders_text(&open_by(&env.proc_root, device))
            ),
            "stop that program; every other open gets EBUSY until it closes the port",
        ),
        Err(errno) => Finding::fail(
            F,
            "serial.open",
            format!("`{user}` cannot open {dev}: {}", errno.desc()),
            vanished_hint(errno),
        ),
    }
}

fn holders_text(holders: &[Holder]) -> String {
    if holders.is_empty() {
        "an unknown process".to_owned()
    } else {
        holders
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn baud_finding(
    device: &Path,
    baud: u32,
    root: &Result<PortProbe, as_user::ProbeFailure>,
    busy: bool,
) -> Finding {
    let dev = ticked(device);
    let probe = match root {
        Ok(probe) if probe.open.is_ok() => probe,
        _ => return Finding::skip(F, "serial.baud", format!("{dev} did not open")),
    };
    match &probe.baud {
        Some(Ok((ispeed, ospeed))) if *ispeed == baud && *ospeed == baud => Finding::pass(
            F,
            "serial.baud",
            format!("{dev} takes {baud} baud (set, read back, restored)"),
        ),
        Some(Ok((ispeed, ospeed))) => Finding::fail(
            F,
            "serial.baud",
            format!("{dev} was set to {baud} baud but reads back {ispeed}/{ospeed}"),
            "the adapter does not support this speed (CH340 and PL2303 limit some rates); use a supported baud or another adapter",
        ),
        Some(Err(errno)) => Finding::fail(
            F,
            "serial.baud",
            format!("{dev} refuses {baud} baud: {}", errno.desc()),
            "the adapter does not support this speed; use a supported baud or another adapter",
        ),
        None if busy => Finding::skip(
            F,
            "serial.baud",
            format!("{dev} is held by someone else; its speed was left alone"),
        ),
        None => Finding::skip(F, "serial.baud", format!("{dev}: speed not checked")),
    }
}

/// ModemManager probes new ttys with AT commands; brltty claims CH340/CP210x adapters.
pub fn interference_findings(
    proc_root: &Path,
    env: &Environment,
    devices: &[PathBuf],
) -> Vec<Finding> {
    let mut running: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(proc_root) {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let comm = comm_of(proc_root, pid);
            for name in ["ModemManager", "brltty"] {
                if comm == name {
                    running.entry(name).or_default().push(pid);
                }
            }
        }
    }
    let mut findings = Vec::new();
    match running.get("ModemManager") {
        Some(pids) => {
            let unprotected: Vec<String> = devices
                .iter()
                .filter(|d| {
                    let dev = std::fs::metadata(d)
                        .map(|m| {
                            let (ma, mi) = dev_numbers(m.rdev());
                            format!("{ma}:{mi}")
                        })
                        .unwrap_or_default();
                    udev_props(&env.udev_data, &dev)
                        .get("ID_MM_DEVICE_IGNORE")
                        .map(String::as_str)
                        != Some("1")
                })
                .map(|d| d.display().to_string())
                .collect();
            if devices.is_empty() {
                findings.push(Finding::warn(
                    F,
                    "serial.modemmanager",
                    format!("ModemManager (pid {}) runs and may probe board ttys with AT commands", pids[0]),
                    "add `ENV{ID_MM_DEVICE_IGNORE}=\"1\"` to the boards' udev rules (or `systemctl disable --now ModemManager`)",
                ));
            } else if unprotected.is_empty() {
                findings.push(Finding::pass(
                    F,
                    "serial.modemmanager",
                    "ModemManager runs, but every board tty has ID_MM_DEVICE_IGNORE=1",
                ));
            } else {
                findings.push(Finding::warn(
                    F,
                    "serial.modemmanager",
                    format!("ModemManager (pid {}) may probe {} with AT commands", pids[0], unprotected.join(", ")),
                    "add `ENV{ID_MM_DEVICE_IGNORE}=\"1\"` to the board's udev rule (or `systemctl disable --now ModemManager`)",
                ));
            }
        }
        None => findings.push(Finding::pass(
            F,
            "serial.modemmanager",
            "ModemManager is not running",
        )),
    }
    match running.get("brltty") {
        Some(pids) => findings.push(Finding::warn(
            F,
            "serial.brltty",
            format!("brltty (pid {}) runs: it claims CH340/CP210x USB serial adapters, and the tty disappears", pids[0]),
            "apt-get remove brltty (or mask its udev rules and `systemctl mask brltty.path`)",
        )),
        None => findings.push(Finding::pass(F, "serial.brltty", "brltty is not running")),
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::super::Outcome;
    use super::*;
    use std::os::fd::OwnedFd;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    /// A real pty pair; the slave path is what a board's tty looks like to doctor.
    struct Pty {
        _master: OwnedFd,
        _slave: OwnedFd,
        path: PathBuf,
    }

    fn pty(mode: u32, gid: u32) -> Pty {
        let pair = nix::pty::openpty(None, None).unwrap();
        let path = nix::unistd::ttyname(&pair.slave).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        nix::unistd::chown(
            &path,
            Some(nix::unistd::Uid::from_raw(0)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .unwrap();
        Pty {
            _master: pair.master,
            _slave: pair.slave,
            path,
        }
    }

    fn env_with_locks(lock_dir: &Path) -> Environment {
        Environment {
            lock_dirs: vec![lock_dir.to_path_buf()],
            ..Environment::system()
        }
    }

    fn ra_runner() -> Identity {
        Identity::lookup("ra-runner")
            .unwrap()
            .expect("user `ra-runner` exists (scripts/setup)")
    }

    fn by_id(findings: &[Finding], id: &str) -> Finding {
        findings
            .iter()
            .find(|f| f.id == id)
            .unwrap_or_else(|| panic!("no {id} in {findings:#?}"))
            .clone()
    }

    const DIALOUT: u32 = 20;

    #[test]
    fn a_free_pty_passes_for_a_member_and_fails_for_an_outsider() {
        let locks = tempfile::tempdir().unwrap();
        let env = env_with_locks(locks.path());
        let port = pty(0o660, DIALOUT);
        let outsider = ra_runner();
        let mut member = outsider.clone();
        member.name = "ra-runner+dialout".to_owned();
        member.groups.push(nix::unistd::Gid::from_raw(DIALOUT));
        let identity = SerialIdentity::Path(port.path.clone());
        let findings = device_findings(
            "b1/console",
            &identity,
            1_500_000,
            &env,
            &[&member, &outsider],
        )
        .unwrap();

        assert_eq!(by_id(&findings, "serial.resolve").outcome, Outcome::Pass);
        assert_eq!(
            by_id(&findings, "serial.holders").outcome,
            Outcome::Pass,
            "{findings:#?}"
        );
        let opens: Vec<&Finding> = findings.iter().filter(|f| f.id == "serial.open").collect();
        assert_eq!(opens[0].outcome, Outcome::Pass, "{:?}", opens[0]);
        assert_eq!(opens[1].outcome, Outcome::Fail, "{:?}", opens[1]);
        assert!(
            opens[1].detail.contains("permission denied"),
            "{}",
            opens[1].detail
        );
        assert_eq!(
            opens[1].hint.as_deref(),
            Some("usermod -aG dialout ra-runner, then restart the runner services")
        );
        let baud = by_id(&findings, "serial.baud");
        assert_eq!(baud.outcome, Outcome::Pass, "{baud:?}");
        assert!(baud.detail.contains("takes 1500000 baud"));
    }

    #[test]
    fn a_pty_locked_with_flock_by_another_process_names_its_pid() {
        let locks = tempfile::tempdir().unwrap();
        let env = env_with_locks(locks.path());
        let port = pty(0o666, 0);
        let mut holder = Command::new("flock")
            .args(["--no-fork", "--exclusive"])
            .arg(&port.path)
            .args(["sleep", "30"])
            .spawn()
            .unwrap();
        let pid = holder.id();
        let meta = std::fs::metadata(&port.path).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !flock_holders(Path::new("/proc"), &meta)
            .iter()
            .any(|h| h.pid == pid)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "flock never took the lock"
            );
            std::thread::yield_now();
        }
        let identity = SerialIdentity::Path(port.path.clone());
        let findings = device_findings("b1/console", &identity, 115_200, &env, &[]).unwrap();
        holder.kill().unwrap();
        holder.wait().unwrap();
        let held = by_id(&findings, "serial.holders");
        assert_eq!(held.outcome, Outcome::Fail);
        assert_eq!(
            held.detail,
            format!(
                "`{}` is locked (flock) by pid {pid} (`sleep`)",
                port.path.display()
            )
        );
        // A held port's speed is left alone.
        assert_eq!(by_id(&findings, "serial.baud").outcome, Outcome::Skip);
    }

    #[test]
    fn tiocexcl_gives_the_runner_user_ebusy_and_names_the_holder() {
        let locks = tempfile::tempdir().unwrap();
        let env = env_with_locks(locks.path());
        let port = pty(0o666, 0);
        // Another process holds the port exclusively (set on its own fd, as serialport-rs does).
        let mut holder = Command::new("/usr/bin/python3")
            .arg("-c")
            .arg("import fcntl,os,sys,termios,time; fd=os.open(sys.argv[1], os.O_RDWR|os.O_NOCTTY); fcntl.ioctl(fd, termios.TIOCEXCL); print('held', flush=True); time.sleep(30)")
            .arg(&port.path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "held");
        let pid = holder.id();
        let identity = SerialIdentity::Path(port.path.clone());
        let findings =
            device_findings("b1/console", &identity, 115_200, &env, &[&ra_runner()]).unwrap();
        holder.kill().unwrap();
        holder.wait().unwrap();
        let held = by_id(&findings, "serial.holders");
        assert_eq!(held.outcome, Outcome::Fail, "{held:?}");
        assert!(
            held.detail.contains("held exclusively (TIOCEXCL)"),
            "{}",
            held.detail
        );
        assert!(
            held.detail.contains(&format!("pid {pid}")),
            "{}",
            held.detail
        );
        let open = by_id(&findings, "serial.open");
        assert!(open.detail.contains("gets EBUSY"), "{}", open.detail);
        assert!(
            open.detail.contains(&format!("pid {pid}")),
            "{}",
            open.detail
        );
    }

    #[test]
    fn uucp_lock_files_live_and_stale() {
        let locks = tempfile::tempdir().unwrap();
        let env = env_with_locks(locks.path());
        let port = pty(0o666, 0);
        let name = lock_name(&port.path, Path::new("/dev"));
        assert!(name.starts_with("LCK..pts_"), "{name}");

        // A dead pid: a process that has exited and been reaped.
        let mut gone = Command::new("true").spawn().unwrap();
        let dead = gone.id();
        gone.wait().unwrap();
        std::fs::write(locks.path().join(&name), format!("{dead:>10}\n")).unwrap();
        let identity = SerialIdentity::Path(port.path.clone());
        let findings = device_findings("b1/console", &identity, 115_200, &env, &[]).unwrap();
        let stale = by_id(&findings, "serial.holders");
        assert_eq!(stale.outcome, Outcome::Warn, "{stale:?}");
        assert!(
            stale.detail.contains(&format!("pid {dead} is gone")),
            "{}",
            stale.detail
        );
        assert_eq!(
            stale.hint.as_deref(),
            Some(format!("safe to remove: rm {}", locks.path().join(&name).display()).as_str())
        );

        // A live pid (binary Kermit style): busy, named.
        std::fs::write(locks.path().join(&name), std::process::id().to_ne_bytes()).unwrap();
        let findings = device_findings("b1/console", &identity, 115_200, &env, &[]).unwrap();
        let live = by_id(&findings, "serial.holders");
        assert_eq!(live.outcome, Outcome::Fail, "{live:?}");
        assert!(
            live.detail
                .contains(&format!("of pid {}", std::process::id())),
            "{}",
            live.detail
        );
    }

    #[test]
    fn a_vanished_device_fails_and_lists_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_with_locks(dir.path());
        let port = pty(0o666, 0);
        // What udev does on plug: a node for the device and a stable link to it.
        let rdev = std::fs::metadata(&port.path).unwrap().rdev();
        let node = dir.path().join("ttyUSB7");
        nix::sys::stat::mknod(
            &node,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            rdev as nix::libc::dev_t,
        )
        .unwrap();
        let link = dir.path().join("usb-FTDI_board-if00-port0");
        std::os::unix::fs::symlink(&node, &link).unwrap();
        let identity = SerialIdentity::Path(link.clone());
        let before = device_findings("b1/console", &identity, 115_200, &env, &[]).unwrap();
        assert_eq!(by_id(&before, "serial.resolve").outcome, Outcome::Pass);
        assert_eq!(
            by_id(&before, "serial.resolve").detail,
            format!("`{}` -> `{}`", link.display(), node.display())
        );
        // Unplug: the device goes away and udev removes its node; the link dangles.
        drop(port);
        std::fs::remove_file(&node).unwrap();
        let after = device_findings("b1/console", &identity, 115_200, &env, &[]).unwrap();
        let gone = by_id(&after, "serial.resolve");
        assert_eq!(gone.outcome, Outcome::Fail);
        assert!(gone.detail.contains("matches no device"), "{}", gone.detail);
        assert!(gone.hint.unwrap().contains("plug the board in"));
    }

    #[test]
    fn a_node_whose_hardware_is_gone_is_called_vanished() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let env = env_with_locks(dir.path());
        // ttyS-style node for a UART this host does not have.
        let node = dir.path().join("ttyS9");
        nix::sys::stat::mknod(
            &node,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(4, 73),
        )
        .unwrap();
        std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o666)).unwrap();
        let findings = device_findings(
            "b1/console",
            &SerialIdentity::Path(node),
            115_200,
            &env,
            &[&ra_runner()],
        )
        .unwrap();
        let open = by_id(&findings, "serial.open");
        assert_eq!(open.outcome, Outcome::Fail, "{open:?}");
        assert!(
            open.hint.as_deref().unwrap().contains("vanished"),
            "{open:?}"
        );
    }

    #[test]
    fn udev_identities_resolve_to_one_or_name_the_candidates() {
        let root = tempfile::tempdir().unwrap();
        let env = Environment {
            sys_root: root.path().join("sys"),
            dev_root: root.path().join("dev"),
            udev_data: root.path().join("udev"),
            ..Environment::system()
        };
        std::fs::create_dir_all(&env.udev_data).unwrap();
        for (i, (serial, path)) in [
            ("A1", "pci-0000:00:14.0-usb-0:1:1.0"),
            ("A1", "pci-0000:00:14.0-usb-0:2:1.0"),
            ("B7", "pci-0000:00:14.0-usb-0:3:1.0"),
        ]
        .iter()
        .enumerate()
        {
            let tty = env.sys_root.join(format!("class/tty/ttyUSB{i}"));
            std::fs::create_dir_all(&tty).unwrap();
            std::fs::write(tty.join("dev"), format!("188:{i}\n")).unwrap();
            std::fs::write(
                env.udev_data.join(format!("c188:{i}")),
                format!("S:serial/by-path/{path}\nE:ID_SERIAL_SHORT={serial}\nE:ID_PATH={path}\nE:ID_USB_INTERFACE_NUM=00\n"),
            )
            .unwrap();
        }
        let udev = |serial: &str, path: Option<&str>| SerialIdentity::Udev {
            id_serial_short: Some(serial.to_owned()),
            id_path: path.map(str::to_owned),
            usb_interface_num: None,
        };
        assert_eq!(
            resolve(&udev("B7", None), &env),
            Resolution::One {
                found: env.dev_root.join("ttyUSB2"),
                device: env.dev_root.join("ttyUSB2")
            }
        );
        assert_eq!(
            resolve(&udev("A1", None), &env),
            Resolution::Ambiguous(vec![
                env.dev_root.join("ttyUSB0"),
                env.dev_root.join("ttyUSB1")
            ])
        );
        assert_eq!(
            resolve(&udev("A1", Some("pci-0000:00:14.0-usb-0:2:1.0")), &env),
            Resolution::One {
                found: env.dev_root.join("ttyUSB1"),
                device: env.dev_root.join("ttyUSB1")
            }
        );
        let findings =
            device_findings("b1/console", &udev("ZZ", None), 115_200, &env, &[]).unwrap();
        let missing = by_id(&findings, "serial.resolve");
        assert_eq!(missing.outcome, Outcome::Fail);
        assert!(
            missing
                .detail
                .contains("udev ID_SERIAL_SHORT=ZZ matches no device"),
            "{}",
            missing.detail
        );
        assert!(missing.detail.contains("ttyUSB2 (ID_SERIAL_SHORT=B7, ID_PATH=pci-0000:00:14.0-usb-0:3:1.0, ID_USB_INTERFACE_NUM=00)"), "{}", missing.detail);
        let ambiguous =
            device_findings("b1/console", &udev("A1", None), 115_200, &env, &[]).unwrap();
        let ambiguous = by_id(&ambiguous, "serial.resolve");
        assert!(
            ambiguous.detail.contains("matches 2 devices"),
            "{}",
            ambiguous.detail
        );
        assert!(ambiguous.hint.unwrap().contains("id_path"));
    }

    #[test]
    fn lock_pids_in_both_formats() {
        assert_eq!(parse_lock_pid(b"      4242\n"), Some(4242));
        assert_eq!(parse_lock_pid(&4242u32.to_ne_bytes()), Some(4242));
        assert_eq!(parse_lock_pid(b"junk"), None);
    }

    #[test]
    fn modemmanager_and_brltty_are_found_by_process_name() {
        let root = tempfile::tempdir().unwrap();
        let env = Environment {
            proc_root: root.path().join("proc"),
            udev_data: root.path().join("udev"),
            ..Environment::system()
        };
        let quiet = interference_findings(&env.proc_root, &env, &[]);
        assert!(
            quiet.iter().all(|f| f.outcome == Outcome::Pass),
            "{quiet:#?}"
        );
        for (pid, comm) in [("412", "ModemManager"), ("977", "brltty")] {
            let dir = env.proc_root.join(pid);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
        }
        // A board tty udev tags for ModemManager to ignore, and one it does not.
        std::fs::create_dir_all(&env.udev_data).unwrap();
        std::fs::write(env.udev_data.join("c5:0"), "E:ID_MM_DEVICE_IGNORE=1\n").unwrap();
        let tty = PathBuf::from("/dev/tty"); // 5:0
        let null = PathBuf::from("/dev/null"); // 1:3
        let ignored = interference_findings(&env.proc_root, &env, std::slice::from_ref(&tty));
        assert_eq!(
            by_id(&ignored, "serial.modemmanager").outcome,
            Outcome::Pass,
            "{ignored:#?}"
        );
        let probed = interference_findings(&env.proc_root, &env, &[tty, null]);
        let mm = by_id(&probed, "serial.modemmanager");
        assert_eq!(mm.outcome, Outcome::Warn);
        assert_eq!(
            mm.detail,
            "ModemManager (pid 412) may probe /dev/null with AT commands"
        );
        let brltty = by_id(&probed, "serial.brltty");
        assert_eq!(brltty.outcome, Outcome::Warn);
        assert!(brltty.detail.starts_with("brltty (pid 977) runs"));
        assert!(brltty.hint.unwrap().contains("apt-get remove brltty"));
    }
}
