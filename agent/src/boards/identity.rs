//! Resolve a serial identity to the device node it names right now.
//!
//! A [`SerialIdentity::Path`] (a `/dev/serial/by-id/...` or by-path link) is followed to its
//! node. A [`SerialIdentity::Udev`] match is applied to every tty in `/sys/class/tty` using the
//! udev database (`/run/udev/data/c<major>:<minor>`, `E:KEY=value` and `S:symlink` lines), the
//! way labgrid and LAVA match `ID_SERIAL_SHORT`/`ID_PATH`. Every root is a parameter so tests
//! use temporary trees.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Board, Power, SerialIdentity};

/// Where devices, the udev database and sysfs are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// `/dev`
    pub dev: PathBuf,
    /// `/run/udev/data`
    pub udev_data: PathBuf,
    /// `/sys`
    pub sys: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            dev: PathBuf::from("/dev"),
            udev_data: PathBuf::from("/run/udev/data"),
            sys: PathBuf::from("/sys"),
        }
    }
}

impl Roots {
    /// The default roots, each replaced by `RUNNER_AGENT_DEV_ROOT`, `RUNNER_AGENT_UDEV_DATA` or
    /// `RUNNER_AGENT_SYS_ROOT` when set (what `agentctl board` reads too; tests use temporary
    /// trees).
    pub fn from_env() -> Roots {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
        };
        let default = Roots::default();
        Roots {
            dev: var("RUNNER_AGENT_DEV_ROOT").unwrap_or(default.dev),
            udev_data: var("RUNNER_AGENT_UDEV_DATA").unwrap_or(default.udev_data),
            sys: var("RUNNER_AGENT_SYS_ROOT").unwrap_or(default.sys),
        }
    }
}

/// A resolved device: the node it is now, and the path jobs should use (stable across
/// re-enumeration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The current node, e.g. `/dev/ttyUSB3`.
    pub node: PathBuf,
    /// A stable path to it: the configured by-id link, or the best udev symlink, or the node.
    pub stable: PathBuf,
}

/// What an identity resolves to now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Resolution {
    Found(Device),
    Missing { reason: String },
    Ambiguous { candidates: Vec<PathBuf> },
}

impl Resolution {
    /// The device, if exactly one was found.
    pub fn device(&self) -> Option<&Device> {
        match self {
            Resolution::Found(device) => Some(device),
            _ => None,
        }
    }

    /// Why the device cannot be used, if it cannot.
    pub fn problem(&self) -> Option<String> {
        match self {
            Resolution::Found(_) => None,
            Resolution::Missing { reason } => Some(reason.clone()),
            Resolution::Ambiguous { candidates } => Some(format!(
                "ambiguous: {} devices match ({})\nhint: add `ID_PATH` or `ID_USB_INTERFACE_NUM` to the match",
                candidates.len(),
                candidates
                    .iter()
                    .map(|path| format!("`{}`", path.display()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

/// Describe an identity for messages.
pub fn describe(identity: &SerialIdentity) -> String {
    match identity {
        SerialIdentity::Path(path) => format!("`{}`", path.display()),
        SerialIdentity::Udev {
            id_serial_short,
            id_path,
            usb_interface_num,
        } => {
            let mut parts = Vec::new();
            if let Some(value) = id_serial_short {
                parts.push(format!("ID_SERIAL_SHORT={value}"));
            }
            if let Some(value) = id_path {
                parts.push(format!("ID_PATH={value}"));
            }
            if let Some(value) = usb_interface_num {
                parts.push(format!("ID_USB_INTERFACE_NUM={value}"));
            }
            format!("udev match `{}`", parts.join(" "))
        }
    }
}

/// Resolve `identity` (of `board`, for the preferred `runner-agent/<board>` symlink).
pub fn resolve(identity: &SerialIdentity, board: &str, roots: &Roots) -> Resolution {
    match identity {
        SerialIdentity::Path(path) => resolve_path(path),
        SerialIdentity::Udev {
            id_serial_short,
            id_path,
            usb_interface_num,
        } => {
            let mut wanted = Vec::new();
            if let Some(value) = id_serial_short {
                wanted.push(("ID_SERIAL_SHORT", value.as_str()));
            }
            if let Some(value) = id_path {
                wanted.push(("ID_PATH", value.as_str()));
            }
            if let Some(value) = usb_interface_num {
                wanted.push(("ID_USB_INTERFACE_NUM", value.as_str()));
            }
            resolve_udev(&wanted, id_path.is_some(), board, roots, identity)
        }
    }
}

fn resolve_path(path: &Path) -> Resolution {
    match fs::canonicalize(path) {
        Ok(node) => Resolution::Found(Device {
            node,
            stable: path.to_owned(),
        }),
        Err(err) => Resolution::Missing {
            reason: format!(
                "`{}` does not resolve to a device ({err})\nhint: is the board's USB-serial adapter plugged in and powered?",
                path.display()
            ),
        },
    }
}

/// One tty as the udev database describes it.
#[derive(Debug, Clone, Default)]
struct TtyRecord {
    name: String,
    properties: BTreeMap<String, String>,
    symlinks: Vec<String>,
}

fn scan_ttys(roots: &Roots) -> Vec<TtyRecord> {
    let class = roots.sys.join("class/tty");
    let Ok(entries) = fs::read_dir(&class) else {
        log::debug!("cannot list `{}`", class.display());
        return Vec::new();
    };
    let mut records = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(dev) = fs::read_to_string(entry.path().join("dev")) else {
            continue;
        };
        let data = roots.udev_data.join(format!("c{}", dev.trim()));
        let Ok(text) = fs::read_to_string(&data) else {
            continue;
        };
        let mut record = TtyRecord {
            name,
            ..TtyRecord::default()
        };
        for line in text.lines() {
            if let Some(property) = line.strip_prefix("E:") {
                if let Some((key, value)) = property.split_once('=') {
                    record.properties.insert(key.to_owned(), value.to_owned());
                }
            } else if let Some(link) = line.strip_prefix("S:") {
                record.symlinks.push(link.to_owned());
            }
        }
        records.push(record);
    }
    records.sort_by(|a, b| a.name.cmp(&b.name));
    records
}

fn resolve_udev(
    wanted: &[(&str, &str)],
    prefer_by_path: bool,
    board: &str,
    roots: &Roots,
    identity: &SerialIdentity,
) -> Resolution {
    let matches: Vec<TtyRecord> = scan_ttys(roots)
        .into_iter()
        .filter(|record| {
            wanted
                .iter()
                .all(|(key, value)| record.properties.get(*key).map(String::as_str) == Some(value))
        })
        .filter(|record| roots.dev.join(&record.name).exists())
        .collect();
    match matches.as_slice() {
        [] => Resolution::Missing {
            reason: format!(
                "no tty matches {}\nhint: is the adapter plugged in? `udevadm info /dev/ttyUSB0` shows a device's properties",
                describe(identity)
            ),
        },
        [record] => {
            let node = roots.dev.join(&record.name);
            let stable = stable_link(record, prefer_by_path, board, roots).unwrap_or(node.clone());
            Resolution::Found(Device { node, stable })
        }
        many => Resolution::Ambiguous {
            candidates: many
                .iter()
                .map(|record| roots.dev.join(&record.name))
                .collect(),
        },
    }
}

/// The best existing udev symlink of a tty: ours, then by-path when the identity is a port,
/// then by-id, then by-path.
fn stable_link(
    record: &TtyRecord,
    prefer_by_path: bool,
    board: &str,
    roots: &Roots,
) -> Option<PathBuf> {
    let ours = format!("runner-agent/{board}");
    let rank = |link: &str| -> Option<u8> {
        if link == ours {
            Some(0)
        } else if link.starts_with("serial/by-path/") {
            Some(if prefer_by_path { 1 } else { 3 })
        } else if link.starts_with("serial/by-id/") {
            Some(2)
        } else {
            None
        }
    };
    record
        .symlinks
        .iter()
        .filter_map(|link| rank(link).map(|rank| (rank, link)))
        .filter(|(_, link)| fs::symlink_metadata(roots.dev.join(link)).is_ok())
        .min()
        .map(|(_, link)| roots.dev.join(link))
}

/// What changed for one board between two scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub board: String,
    /// `console` or `relay bus`.
    pub what: &'static str,
    pub before: Option<Resolution>,
    pub after: Resolution,
}

/// Rescans the identities of a set of boards and reports what changed since the last scan.
/// The daemon calls [`Watcher::rescan`] every few seconds (and on udev events when it has them).
#[derive(Debug)]
pub struct Watcher {
    roots: Roots,
    watched: Vec<(String, &'static str, SerialIdentity)>,
    last: BTreeMap<(String, &'static str), Resolution>,
}

impl Watcher {
    /// Watch the consoles and relay buses of `boards`.
    pub fn new(boards: &[Board], roots: Roots) -> Watcher {
        let mut watched = Vec::new();
        for board in boards {
            if let Some(console) = &board.console {
                watched.push((board.name.clone(), "console", console.identity.clone()));
            }
            if let Some(Power::ModbusRtu { device, .. }) = &board.power {
                watched.push((board.name.clone(), "relay bus", device.clone()));
            }
        }
        Watcher {
            roots,
            watched,
            last: BTreeMap::new(),
        }
    }

    /// Resolve everything again; return the changes (everything, on the first call).
    pub fn rescan(&mut self) -> Vec<Change> {
        let mut changes = Vec::new();
        for (board, what, identity) in &self.watched {
            let after = resolve(identity, board, &self.roots);
            let key = (board.clone(), *what);
            let before = self.last.get(&key).cloned();
            if before.as_ref() != Some(&after) {
                self.last.insert(key, after.clone());
                changes.push(Change {
                    board: board.clone(),
                    what,
                    before,
                    after,
                });
            }
        }
        changes
    }

    /// Forget the last resolution of a board's device, so the next scan reports it again.
    pub fn forget(&mut self, board: &str, what: &'static str) {
        self.last.remove(&(board.to_owned(), what));
    }

    /// The last resolution of a board's console or relay bus.
    pub fn current(&self, board: &str, what: &'static str) -> Option<&Resolution> {
        self.last.get(&(board.to_owned(), what))
    }
}
