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

/// `<state_dir>/boards`: leases, locks and board states. Runner users (possibly several, one
/// per org) take and free leases from their job hooks, so the directory is world-writable
/// without the sticky bit (like tbot's lock directory: one user must be able to free a lease
/// another wrote); it never holds secrets.
pub fn boards_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("boards")
}

/// Create `<state_dir>/boards` if needed.
pub(crate) fn ensure_boards_dir(state_dir: &Path) -> Result<PathBuf, BoardError> {
    let dir = boards_dir(state_dir);
    if !dir.is_dir() {
        fs::create_dir_all(&dir).map_err(|source| BoardError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).map_err(|source| {
            BoardError::CreateDir {
                path: dir.clone(),
                source,
            }
        })?;
    }
    Ok(dir)
}

/// An exclusive `flock` on a lock file, released when dropped.
pub(crate) struct FileLock {
    _lock: Flock<fs::File>,
}

impl FileLock {
    /// Take an exclusive lock on `path` (created 0666 so every runner user can lock it), waiting
    /// at most `timeout`.
    pub(crate) fn acquire(path: &Path, timeout: Duration) -> Result<FileLock, BoardError> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o666)
            .open(path)
            .map_err(|source| BoardError::Write {
                path: path.to_owned(),
                source,
            })?;
        // The umask may have taken bits away; lock files are shared between users.
        let _ = file.set_permissions(fs::Permissions::from_mode(0o666));
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

/// Write `contents` to `path` atomically (temp file in the same directory, then rename).
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), BoardError> {
    use std::io::Write as _;
    let write_err = |source| BoardError::Write {
        path: path.to_owned(),
        source,
    };
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(&tmp)
        .map_err(write_err)?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(write_err)?;
    file.write_all(contents).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        write_err(source)
    })
}
