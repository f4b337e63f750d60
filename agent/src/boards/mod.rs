//! Boards as first-class resources: a board's serial console and power relay are found by a
//! stable identity (never by `/dev/ttyUSBn` alone), its jobs get the `BOARD_*` environment the
//! arceos workflows expect, and one job at a time holds it through a lease.
//!
//! - [`identity`]: a [`SerialIdentity`](crate::config::SerialIdentity) → the current device node
//!   (found, missing, ambiguous), and a [`identity::Watcher`] that notices devices come and go.
//! - [`env`]: the job environment file (`BOARD_COMM_UART_DEV`, …) for `.env`/`EnvironmentFile=`.
//! - [`hooks`]: the job-started/completed hook scripts that take and give back the board.
//! - [`lease`]: one job at a time per board; stale holders (dead pid) are freed.
//! - [`power`]: `mbpoll` (Modbus RTU coil) or shell commands, serialised per relay bus.
//! - [`probe`]: the health probe (the boot prompt appears on the console within a timeout).
//! - [`state`]: a board's persisted device and health state, for `board list` and `status`.
//! - [`watch`]: the periodic rescan that keeps board states current (the daemon runs it).
//! - [`udev`]: udev rules for the configured boards (stable symlinks, group, ModemManager off).

pub mod env;
pub mod hooks;
pub mod identity;
pub mod lease;
pub mod power;
pub mod probe;
pub mod state;
pub mod udev;
pub mod watch;

use std::fs;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use crate::config::Board;

/// Everything that can go wrong with boards.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("no board named `{name}` is configured")]
    UnknownBoard { name: String },
    #[error("cannot read `{path}`")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write `{path}`")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create directory `{path}`")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot lock `{path}`")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("`{path}` is still locked after {secs}s\nhint: another power command on the same relay bus is hanging")]
    LockTimeout { path: PathBuf, secs: u64 },
    #[error("`{path}` is not a valid lease or state file")]
    Format {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("board `{board}` is still held by {holder} after waiting {waited_secs}s")]
    Busy {
        board: String,
        holder: String,
        waited_secs: u64,
    },
    #[error("board `{board}` is held by {holder}, not by runner `{runner}` job `{job}`")]
    NotHolder {
        board: String,
        holder: String,
        runner: String,
        job: String,
    },
    #[error("board `{board}` is offline: {reason}")]
    Offline { board: String, reason: String },
    #[error("board `{board}` has no {what} configured")]
    NotConfigured { board: String, what: &'static str },
    #[error("the {what} of board `{board}` is not available: {reason}")]
    Device {
        board: String,
        what: &'static str,
        reason: String,
    },
    #[error("cannot run `{program}`")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("power {action} of board `{board}` failed: `{command}` {status}{stderr}")]
    PowerFailed {
        board: String,
        action: &'static str,
        command: String,
        status: String,
        stderr: String,
    },
    #[error("job environment variable `{key}` {reason}")]
    EnvValue { key: String, reason: &'static str },
}

/// Find a configured board by name.
pub fn find<'a>(boards: &'a [Board], name: &str) -> Result<&'a Board, BoardError> {
    boards
        .iter()
        .find(|board| board.name == name)
        .ok_or_else(|| BoardError::UnknownBoard {
            name: name.to_owned(),
        })
}

/// `<state_dir>/boards`: leases, locks and board states. Runner users take and free leases from
/// their job hooks, so the directory belongs to root and the runners' group, mode 2770: every
/// member of that group can take a lease another member left behind (a dead job's), nobody
/// else can touch them, and the setgid bit keeps files made inside in the group. Runners that
/// share boards must share that group (the package's single `runner` user does). It never
/// holds secrets.
pub fn boards_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("boards")
}

/// Mode of `<state_dir>/boards`: setgid, owner and group only.
const BOARDS_DIR_MODE: u32 = 0o2770;

/// Create `<state_dir>/boards` if needed (mode 2770, the creator's group).
pub(crate) fn ensure_boards_dir(state_dir: &Path) -> Result<PathBuf, BoardError> {
    let dir = boards_dir(state_dir);
    if !dir.is_dir() {
        let create_err = |source| BoardError::CreateDir {
            path: dir.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(create_err)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(BOARDS_DIR_MODE))
            .map_err(create_err)?;
    }
    Ok(dir)
}

/// Make `<state_dir>/boards` ready for the job hooks of runners whose group is `gid`: create it
/// if needed, owned by root and `gid`, mode 2770 (see [`boards_dir`]). Run as root when a board
/// runner is registered, so the first job hook (run as the runner user, who cannot create
/// directories in the state directory) finds it.
///
/// A directory that is already right (the package makes it) is left alone: under
/// `runner-agent.service`'s `RestrictSUIDSGID=yes` even a `chmod` that keeps the setgid bit is
/// refused (`EPERM`).
pub fn prepare_boards_dir(state_dir: &Path, gid: u32) -> Result<PathBuf, BoardError> {
    use std::os::unix::fs::MetadataExt as _;
    let dir = ensure_boards_dir(state_dir)?;
    let create_err = |source| BoardError::CreateDir {
        path: dir.clone(),
        source,
    };
    let meta = fs::metadata(&dir).map_err(create_err)?;
    if meta.uid() != 0 || meta.gid() != gid {
        std::os::unix::fs::chown(&dir, Some(0), Some(gid)).map_err(create_err)?;
    }
    // chown clears the setgid bit: read the mode again.
    let mode = fs::metadata(&dir).map_err(create_err)?.mode() & 0o7777;
    if mode != BOARDS_DIR_MODE {
        fs::set_permissions(&dir, fs::Permissions::from_mode(BOARDS_DIR_MODE))
            .map_err(create_err)?;
    }
    Ok(dir)
}

/// An exclusive `flock` on a lock file, released when dropped.
pub(crate) struct FileLock {
    _lock: Flock<fs::File>,
}

impl FileLock {
    /// Take an exclusive lock on `path` (created 0660 so every runner user of the group can lock it), waiting
    /// at most `timeout`.
    pub(crate) fn acquire(path: &Path, timeout: Duration) -> Result<FileLock, BoardError> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o660)
            .open(path)
            .map_err(|source| BoardError::Write {
                path: path.to_owned(),
                source,
            })?;
        // The umask may have taken bits away; lock files are shared within the group.
        let _ = file.set_permissions(fs::Permissions::from_mode(0o660));
        let deadline = Instant::now() + timeout;
        let mut file = file;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(FileLock { _lock: lock }),
                Err((back, nix::errno::Errno::EWOULDBLOCK)) => {
                    if Instant::now() >= deadline {
                        return Err(BoardError::LockTimeout {
                            path: path.to_owned(),
                            secs: timeout.as_secs(),
                        });
                    }
                    file = back;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err((_, errno)) => {
                    return Err(BoardError::Lock {
                        path: path.to_owned(),
                        source: errno,
                    })
                }
            }
        }
    }
}

/// Write `contents` to `path` atomically unless it already holds exactly that with `mode`: the
/// runner reads its job hooks and environment at any time, and they are rendered on every look
/// at a board runner.
pub fn write_if_changed(path: &Path, contents: &[u8], mode: u32) -> Result<(), BoardError> {
    let same = fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o7777 == mode)
        && fs::read(path).is_ok_and(|old| old == contents);
    if same {
        return Ok(());
    }
    write_atomic(path, contents, mode)
}

/// Write `contents` to `path` atomically ([`crate::atomic::write`]).
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), BoardError> {
    crate::atomic::write(path, contents, mode).map_err(|source| BoardError::Write {
        path: path.to_owned(),
        source,
    })
}
