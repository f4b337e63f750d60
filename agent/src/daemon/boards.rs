//! The daemon's half of boards: keep every board runner's board resolved and healthy, or keep
//! the runner offline with the reason.
//!
//! [`BoardWatch::rescan`] resolves the identities of the boards that runners serve (the
//! [`Watcher`] of [`crate::boards::identity`]), records each change in the board's state file
//! (where `agentctl board list` and `status` read it) and reads back the health that the job
//! hooks' probes wrote there. A runner whose board is missing, ambiguous or unhealthy gets a
//! [`Gate::Board`] with the reason: [`super::plan`] stops it (after its running job) and starts
//! it again once the board is back; its start re-resolves the job environment, so the `BOARD_*`
//! values point at the device as it is now. A board whose console moved to another stable path
//! while its runners ran restarts them once, for the same reason.
//!
//! Event-driven: [`BoardWatch::changed`] wakes the loop on inotify events in the directories the
//! identities live in (the by-id/by-path link's directory, the udev database, or the nearest
//! existing parent when a directory is gone, as `/dev/serial/by-id` is without USB-serial
//! devices) and in `<state_dir>/boards` (health written by the hooks). The loop also rescans on
//! every liveness check, for what inotify cannot see (sysfs).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;

use crate::boards::identity::{Resolution, Roots, Watcher};
use crate::boards::{boards_dir, state, watch};
use crate::config::{Board, Config, Power, Runner, SerialIdentity};
use crate::runner::{self, Lifecycle};

use super::plan::Gate;

/// The inotify instance, as tokio polls it.
struct InotifyFd(Inotify);

impl std::os::fd::AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd as _;
        self.0.as_fd().as_raw_fd()
    }
}

/// A watched directory: its descriptor and the inode it had (a directory deleted and made
/// again is watched again).
struct Watched {
    wd: WatchDescriptor,
    ino: u64,
}

/// Board state as the daemon sees it, and the inotify watches that wake it.
pub struct BoardWatch {
    /// The boards that configured runners serve.
    boards: Vec<Board>,
    /// `(runner, board)` for every board runner.
    runners: Vec<(String, String)>,
    /// The runner user's group, for `<state_dir>/boards` (the hooks write there too).
    group: Option<u32>,
    prepared: bool,
    state_dir: PathBuf,
    roots: Roots,
    watcher: Watcher,
    /// Per runner, why its board keeps it offline.
    reasons: BTreeMap<String, String>,
    /// Boards whose console moved to another stable path, with the message: their running
    /// runners restart once to pick up the new job environment.
    moved: BTreeMap<String, String>,
    /// Set when something outside [`BoardWatch::rescan`] changed the reasons.
    dirty: bool,
    inotify: Option<AsyncFd<InotifyFd>>,
    watches: BTreeMap<PathBuf, Watched>,
}

impl BoardWatch {
    /// Watch the boards of `config`'s board runners, with devices under `roots`.
    pub fn new(config: &Config, roots: Roots) -> BoardWatch {
        let runners: Vec<(String, String)> = config
            .runners
            .iter()
            .filter_map(|r| r.board.clone().map(|board| (r.name.clone(), board)))
            .collect();
        let boards: Vec<Board> = config
            .boards
            .iter()
            .filter(|board| runners.iter().any(|(_, name)| *name == board.name))
            .cloned()
            .collect();
        let group = config
            .runners
            .iter()
            .filter(|r| r.board.is_some())
            .find_map(|r| runner::run_as(&r.user).ok())
            .map(|run_as| run_as.gid);
        // tokio polls the descriptor: only inside a runtime (the daemon's).
        let inotify = if boards.is_empty() || tokio::runtime::Handle::try_current().is_err() {
            None
        } else {
            Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
                .map_err(|err| log::warn!("no inotify for board devices, rescanning only: {err}"))
                .ok()
                .and_then(|inotify| {
                    // SAFETY: the descriptor belongs to the `Inotify` inside, which the
                    // `AsyncFd` owns and never closes or replaces while it lives.
                    unsafe { AsyncFd::register(InotifyFd(inotify)) }
                        .map_err(|err| log::warn!("no inotify for board devices: {err}"))
                        .ok()
                })
        };
        BoardWatch {
            watcher: Watcher::new(&boards, roots.clone()),
            boards,
            runners,
            group,
            prepared: false,
            state_dir: config.agent.state_dir.clone(),
            roots,
            reasons: BTreeMap::new(),
            moved: BTreeMap::new(),
            dirty: false,
            inotify,
            watches: BTreeMap::new(),
        }
    }

    /// Resolve every board again, record the changes, read the boards' health; true when a
    /// runner's gate changed (a pass should run now).
    pub fn rescan(&mut self) -> bool {
        if self.boards.is_empty() {
            return false;
        }
        if !self.prepared {
            self.prepared = true;
            if let Some(gid) = self.group {
                if let Err(err) = crate::boards::prepare_boards_dir(&self.state_dir, gid) {
                    log::warn!("{err}");
                }
            }
        }
        // Watch first: a change after the scan then wakes the loop for the next one.
        self.rearm();
        for change in self.watcher.rescan() {
            if let (Some(Resolution::Found(old)), Resolution::Found(new)) =
                (&change.before, &change.after)
            {
                if change.what == "console" && old.stable != new.stable {
                    self.moved.insert(
                        change.board.clone(),
                        format!(
                            "board `{}` moved from `{}` to `{}`: restarting its runners with the new job environment",
                            change.board,
                            old.stable.display(),
                            new.stable.display()
                        ),
                    );
                }
            }
            if let Err(err) = watch::apply(&self.state_dir, &change) {
                log::warn!("cannot record the state of board `{}`: {err}", change.board);
                self.watcher.forget(&change.board, change.what);
            }
        }
        let reasons = self.reasons();
        let changed = reasons != self.reasons || std::mem::take(&mut self.dirty);
        if changed {
            for (runner, board) in &self.runners {
                match (self.reasons.get(runner), reasons.get(runner)) {
                    (None, Some(reason)) => {
                        log::warn!("runner `{runner}` must go offline: {}", first_line(reason))
                    }
                    (Some(_), None) => {
                        log::info!("runner `{runner}`: board `{board}` is back")
                    }
                    _ => {}
                }
            }
        }
        self.reasons = reasons;
        changed
    }

    /// Per runner, why its board keeps it offline now.
    fn reasons(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for board in &self.boards {
            let reason = match state::load(&self.state_dir, &board.name) {
                Ok(state) => state.runner_reason(),
                Err(err) => Some(format!("board `{}` state unknown: {err}", board.name)),
            }
            .or_else(|| self.moved.get(&board.name).cloned());
            if let Some(reason) = reason {
                for (runner, _) in self.runners.iter().filter(|(_, b)| *b == board.name) {
                    out.insert(runner.clone(), reason.clone());
                }
            }
        }
        out
    }

    /// The gates of the runners whose board keeps them offline.
    pub fn gates(&self) -> impl Iterator<Item = (String, Gate)> + '_ {
        self.reasons
            .iter()
            .map(|(runner, reason)| (runner.clone(), Gate::Board(reason.clone())))
    }

    /// Whether `runner`'s board keeps it offline.
    pub fn gated(&self, runner: &str) -> bool {
        self.reasons.contains_key(runner)
    }

    /// After a pass: a moved board whose runners all stopped needs no more restarts.
    pub fn settle(&mut self, lifecycle: &Lifecycle<'_>) {
        if self.moved.is_empty() {
            return;
        }
        let active = |name: &str| {
            lifecycle.config.runner(name).is_some_and(|runner| {
                lifecycle
                    .unit(runner)
                    .ok()
                    .and_then(|unit| {
                        let backend = lifecycle.backends.get(runner.service.as_str())?;
                        backend.status(&unit).ok()
                    })
                    .is_some_and(|status| status.state == "active")
            })
        };
        let runners = &self.runners;
        let before = self.moved.len();
        self.moved.retain(|board, _| {
            runners
                .iter()
                .any(|(runner, b)| b == board && active(runner))
        });
        if self.moved.len() != before {
            self.dirty = true;
        }
    }

    /// Wait until a watched directory changes (forever without inotify).
    pub async fn changed(&self) {
        let Some(fd) = &self.inotify else {
            return std::future::pending().await;
        };
        loop {
            let Ok(mut guard) = fd.readable().await else {
                return std::future::pending().await;
            };
            match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(std::io::Error::from)) {
                Ok(Ok(events)) if events.is_empty() => {}
                Ok(_) => return,
                Err(_would_block) => {}
            }
        }
    }

    /// Watch the directories the identities live in now.
    fn rearm(&mut self) {
        let Some(fd) = &self.inotify else {
            return;
        };
        let wanted = self.directories();
        let inotify = &fd.get_ref().0;
        self.watches.retain(|path, watched| {
            let same = wanted.contains(path)
                && std::fs::metadata(path).is_ok_and(|meta| meta.ino() == watched.ino);
            if !same {
                let _ = inotify.rm_watch(watched.wd);
            }
            same
        });
        for path in wanted {
            if self.watches.contains_key(&path) {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let flags = AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_DELETE_SELF
                | AddWatchFlags::IN_MOVE_SELF
                | AddWatchFlags::IN_ONLYDIR;
            match inotify.add_watch(&path, flags) {
                Ok(wd) => {
                    log::debug!("watching `{}` for board devices", path.display());
                    self.watches.insert(
                        path,
                        Watched {
                            wd,
                            ino: meta.ino(),
                        },
                    );
                }
                Err(err) => log::debug!("cannot watch `{}`: {err}", path.display()),
            }
        }
    }

    /// The directories to watch: each link's directory (or its nearest existing parent), the
    /// udev database for udev matches, and `<state_dir>/boards`.
    fn directories(&self) -> BTreeSet<PathBuf> {
        let mut dirs = BTreeSet::new();
        let mut add = |path: &Path| {
            if let Some(dir) = nearest_dir(path) {
                dirs.insert(dir);
            }
        };
        add(&boards_dir(&self.state_dir));
        for board in &self.boards {
            let console = board.console.as_ref().map(|c| &c.identity);
            let relay = match &board.power {
                Some(Power::ModbusRtu { device, .. }) => Some(device),
                _ => None,
            };
            for identity in console.into_iter().chain(relay) {
                match identity {
                    SerialIdentity::Path(path) => {
                        if let Some(parent) = path.parent() {
                            add(parent);
                        }
                    }
                    SerialIdentity::Udev { .. } => add(&self.roots.udev_data),
                }
            }
        }
        dirs
    }
}

/// `path` if it is a directory, else its nearest existing parent directory.
fn nearest_dir(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .find(|dir| dir.is_dir())
        .map(Path::to_path_buf)
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// Take a runner offline: stop its service, keep its registration.
pub fn take_offline(lifecycle: &Lifecycle<'_>, runner: &Runner, reason: &str) {
    log::warn!(
        "taking runner `{}` offline: {}",
        runner.name,
        first_line(reason)
    );
    if let Err(err) = lifecycle.stop(runner) {
        log::warn!("cannot stop runner `{}`: {err}", runner.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::time::{Duration, Instant};

    fn config(dir: &Path, console: &str) -> Config {
        crate::config::load_for_test(
            dir,
            "https://github.com/lab/os",
            &format!(
                "[agent]\nstate_dir = \"{state}\"\n\
                 [defaults]\nuser = \"nobody\"\n\
                 [[runner]]\nname = \"r1\"\nboard = \"sim-1\"\n\
                 [[runner]]\nname = \"plain\"\n\
                 [[board]]\nname = \"sim-1\"\n[board.console]\n{console}\nbaud = 115200\n",
                state = dir.join("state").display(),
            ),
        )
    }

    async fn wakes(watch: &BoardWatch) {
        tokio::time::timeout(Duration::from_secs(10), watch.changed())
            .await
            .expect("an inotify event");
    }

    #[tokio::test]
    async fn a_missing_console_gates_its_runner_with_the_reason_until_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let by_id = dir.path().join("dev/serial/by-id");
        fs::create_dir_all(&by_id).unwrap();
        fs::write(dir.path().join("dev/ttyUSB0"), b"").unwrap();
        fs::write(dir.path().join("dev/ttyUSB5"), b"").unwrap();
        let link = by_id.join("usb-Sim_0001-if00-port0");
        symlink(dir.path().join("dev/ttyUSB0"), &link).unwrap();
        let config = config(dir.path(), &format!("path = \"{}\"", link.display()));
        let mut watch = BoardWatch::new(&config, Roots::default());

        assert!(!watch.rescan(), "a board found at start gates nothing");
        assert_eq!(watch.gates().count(), 0);

        // Unplugged: udev removes the link, and then the empty by-id directory.
        fs::remove_file(&link).unwrap();
        fs::remove_dir(&by_id).unwrap();
        wakes(&watch).await;
        assert!(watch.rescan());
        let gates: Vec<(String, Gate)> = watch.gates().collect();
        assert_eq!(gates.len(), 1, "only the board runner: {gates:?}");
        let Gate::Board(reason) = &gates[0].1 else {
            panic!("{gates:?}")
        };
        assert_eq!(gates[0].0, "r1");
        assert!(
            reason.starts_with(&format!(
                "board `sim-1` missing: console: `{}` does not resolve to a device",
                link.display()
            )),
            "{reason}"
        );
        assert!(!watch.rescan(), "nothing new");

        // Plugged in again, as another ttyUSB: the parent that was watched sees it.
        fs::create_dir_all(&by_id).unwrap();
        wakes(&watch).await;
        symlink(dir.path().join("dev/ttyUSB5"), &link).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !watch.rescan() {
            assert!(Instant::now() < deadline, "the board never came back");
            wakes(&watch).await;
        }
        assert!(!watch.gated("r1"));
        let state = state::load(&config.agent.state_dir, "sim-1").unwrap();
        assert_eq!(
            state.console.unwrap().device().unwrap().node,
            dir.path().join("dev/ttyUSB5")
        );
    }

    /// A tty as udev records it, without symlinks: its node is the only path to it.
    fn bare_tty(root: &Path, name: &str, minor: u32) {
        let sys = root.join("sys/class/tty").join(name);
        fs::create_dir_all(&sys).unwrap();
        fs::write(sys.join("dev"), format!("188:{minor}\n")).unwrap();
        fs::create_dir_all(root.join("udev")).unwrap();
        fs::write(
            root.join(format!("udev/c188:{minor}")),
            "E:ID_SERIAL_SHORT=A10K1234\n",
        )
        .unwrap();
        fs::create_dir_all(root.join("dev")).unwrap();
        fs::write(root.join("dev").join(name), b"").unwrap();
    }

    #[test]
    fn a_console_renumbered_without_a_stable_link_restarts_its_runner_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        bare_tty(root, "ttyUSB0", 0);
        let config = config(root, "udev = { ID_SERIAL_SHORT = \"A10K1234\" }");
        let roots = Roots {
            dev: root.join("dev"),
            udev_data: root.join("udev"),
            sys: root.join("sys"),
        };
        let mut watch = BoardWatch::new(&config, roots);
        assert!(!watch.rescan());

        // Re-plugged as ttyUSB3: the job environment named `/dev/ttyUSB0`.
        fs::remove_dir_all(root.join("sys/class/tty/ttyUSB0")).unwrap();
        fs::remove_file(root.join("udev/c188:0")).unwrap();
        fs::remove_file(root.join("dev/ttyUSB0")).unwrap();
        bare_tty(root, "ttyUSB3", 3);
        assert!(watch.rescan());
        let reason = watch.reasons.get("r1").unwrap();
        assert_eq!(
            reason,
            &format!(
                "board `sim-1` moved from `{}` to `{}`: restarting its runners with the new job environment",
                root.join("dev/ttyUSB0").display(),
                root.join("dev/ttyUSB3").display()
            )
        );
    }

    #[test]
    fn an_ambiguous_or_unhealthy_board_gates_its_runner() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        bare_tty(root, "ttyUSB0", 0);
        bare_tty(root, "ttyUSB1", 1);
        let config = config(root, "udev = { ID_SERIAL_SHORT = \"A10K1234\" }");
        let roots = Roots {
            dev: root.join("dev"),
            udev_data: root.join("udev"),
            sys: root.join("sys"),
        };
        let mut watch = BoardWatch::new(&config, roots);
        assert!(watch.rescan());
        let reason = watch.reasons.get("r1").unwrap().clone();
        assert!(
            reason.starts_with("board `sim-1` ambiguous: console: ambiguous: 2 devices match"),
            "{reason}"
        );

        // One adapter left, but the last probe failed (written by a job hook).
        fs::remove_file(root.join("udev/c188:1")).unwrap();
        state::update(&config.agent.state_dir, "sim-1", |state| {
            state.health = state::Health::Unhealthy {
                reason: "no `=>` on `/dev/ttyUSB0` within 2s; last output: (nothing)".to_owned(),
                since: time::OffsetDateTime::now_utc(),
            };
        })
        .unwrap();
        assert!(watch.rescan());
        let reason = watch.reasons.get("r1").unwrap();
        assert!(
            reason.starts_with(
                "board `sim-1` unhealthy: health probe failed: no `=>` on `/dev/ttyUSB0`"
            ),
            "{reason}"
        );
        assert!(
            reason.contains("hint: `agentctl board probe sim-1`"),
            "{reason}"
        );
    }
}
