//! Board leases: one job at a time holds a board, whichever runner (repo, org) it came from.
//!
//! A lease is `<state_dir>/boards/<name>.lease` (JSON: board, runner, job, pid, the pid's start
//! time, since), changed only under a short `flock` on `<name>.lock`. The job hooks call
//! `agentctl board acquire` (`ACTIONS_RUNNER_HOOK_JOB_STARTED`) and `agentctl board release`
//! (`..._COMPLETED`). The holder pid is the runner process that lives exactly as long as the job
//! (`Runner.Worker`), so a lease whose holder died (job killed, runner crashed, run cancelled
//! and the worker gone) is stale and the next acquirer frees it. The pid's start time guards
//! against pid reuse.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{boards_dir, ensure_boards_dir, write_atomic, BoardError, FileLock};

/// How long a lease transition may wait for the lock (transitions take milliseconds).
const TRANSITION_LOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a waiting acquirer looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Who asks for a board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub runner: String,
    pub job: String,
    /// The process whose life bounds the lease.
    pub pid: u32,
}

/// A granted lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub board: String,
    pub runner: String,
    pub job: String,
    pub pid: u32,
    /// Start time of `pid` in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub pid_start: Option<u64>,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
}

impl Lease {
    /// `runner `R` job `J` (pid P) since T`, for messages.
    pub fn describe(&self) -> String {
        let since = self
            .since
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        format!(
            "runner `{}` job `{}` (pid {}) since {since}",
            self.runner, self.job, self.pid
        )
    }

    /// Whether the holder process is still the one that took the lease.
    pub fn holder_alive(&self) -> bool {
        match process_start(self.pid) {
            Some(start) => self.pid_start.is_none_or(|recorded| recorded == start),
            None => false,
        }
    }
}

/// What `release` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// The caller's lease was freed.
    Freed(Lease),
    /// Nobody held the board (or only a stale holder, now cleared).
    NotHeld,
}

/// `<state_dir>/boards/<name>.lease`
pub fn lease_path(state_dir: &Path, board: &str) -> PathBuf {
    boards_dir(state_dir).join(format!("{board}.lease"))
}

fn lock_path(state_dir: &Path, board: &str) -> PathBuf {
    boards_dir(state_dir).join(format!("{board}.lock"))
}

/// Start time of a live, non-zombie process, from `/proc/<pid>/stat`.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`: comm may contain spaces and parentheses; split after the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); starttime is field 22.
    let state = *fields.first()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// The process name (`comm`) and parent of a process.
fn process_comm_and_parent(pid: u32) -> Option<(String, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let ppid = stat
        .get(close + 1..)?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((comm, ppid))
}

/// The process a hook's lease should be bound to: the nearest ancestor named `Runner.Worker`
/// (the runner's per-job process, which runs the hooks and ends with the job), else
/// `Runner.Listener`, else our parent.
pub fn default_holder_pid() -> u32 {
    let parent = std::os::unix::process::parent_id();
    let mut listener = None;
    let mut pid = parent;
    for _ in 0..32 {
        let Some((comm, ppid)) = process_comm_and_parent(pid) else {
            break;
        };
        if comm == "Runner.Worker" {
            return pid;
        }
        if comm == "Runner.Listener" && listener.is_none() {
            listener = Some(pid);
        }
        if ppid <= 1 {
            break;
        }
        pid = ppid;
    }
    listener.unwrap_or(parent)
}

fn read_lease(state_dir: &Path, board: &str) -> Result<Option<Lease>, BoardError> {
    let path = lease_path(state_dir, board);
    match fs::read(&path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(None),
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| BoardError::Format { path, source }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(BoardError::Read { path, source }),
    }
}

fn write_lease(state_dir: &Path, lease: &Lease) -> Result<(), BoardError> {
    let path = lease_path(state_dir, &lease.board);
    let mut bytes = serde_json::to_vec_pretty(lease).map_err(|source| BoardError::Format {
        path: path.clone(),
        source,
    })?;
    bytes.push(b'\n');
    write_atomic(&path, &bytes, 0o644)
}

fn remove_lease(state_dir: &Path, board: &str) -> Result<(), BoardError> {
    let path = lease_path(state_dir, board);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BoardError::Write { path, source }),
    }
}

/// The live lease on a board, if any. A stale lease (dead holder) is freed on the way.
pub fn current(state_dir: &Path, board: &str) -> Result<Option<Lease>, BoardError> {
    if !lease_path(state_dir, board).exists() {
        return Ok(None);
    }
    ensure_boards_dir(state_dir)?;
    let _lock = FileLock::acquire(&lock_path(state_dir, board), TRANSITION_LOCK_TIMEOUT)?;
    live_lease(state_dir, board)
}

/// Under the lock: the lease if its holder lives; a stale one is removed.
fn live_lease(state_dir: &Path, board: &str) -> Result<Option<Lease>, BoardError> {
    match read_lease(state_dir, board)? {
        Some(lease) if lease.holder_alive() => Ok(Some(lease)),
        Some(stale) => {
            log::info!(
                "freeing board `{board}`: its holder {} is gone",
                stale.describe()
            );
            remove_lease(state_dir, board)?;
            Ok(None)
        }
        None => Ok(None),
    }
}

/// Take the board for `holder`, waiting up to `timeout` while another live holder has it.
/// Taking it again for the same runner and job renews the lease (the hook may be retried).
pub fn acquire(
    state_dir: &Path,
    board: &str,
    holder: &Holder,
    timeout: Duration,
) -> Result<Lease, BoardError> {
    ensure_boards_dir(state_dir)?;
    let started = Instant::now();
    let mut announced = false;
    loop {
        {
            let _lock = FileLock::acquire(&lock_path(state_dir, board), TRANSITION_LOCK_TIMEOUT)?;
            let existing = live_lease(state_dir, board)?;
            match existing {
                Some(lease) if !(lease.runner == holder.runner && lease.job == holder.job) => {
                    if started.elapsed() >= timeout {
                        return Err(BoardError::Busy {
                            board: board.to_owned(),
                            holder: lease.describe(),
                            waited_secs: started.elapsed().as_secs(),
                        });
                    }
                    if !announced {
                        log::info!("waiting for board `{board}`: held by {}", lease.describe());
                        announced = true;
                    }
                }
                _ => {
                    let lease = Lease {
                        board: board.to_owned(),
                        runner: holder.runner.clone(),
                        job: holder.job.clone(),
                        pid: holder.pid,
                        pid_start: process_start(holder.pid),
                        since: OffsetDateTime::now_utc(),
                    };
                    write_lease(state_dir, &lease)?;
                    log::info!("board `{board}` leased to {}", lease.describe());
                    return Ok(lease);
                }
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Free the board if `runner`/`job` hold it. Someone else's live lease is left alone (error).
pub fn release(
    state_dir: &Path,
    board: &str,
    runner: &str,
    job: &str,
) -> Result<Released, BoardError> {
    if !lease_path(state_dir, board).exists() {
        return Ok(Released::NotHeld);
    }
    let _lock = FileLock::acquire(&lock_path(state_dir, board), TRANSITION_LOCK_TIMEOUT)?;
    match live_lease(state_dir, board)? {
        None => Ok(Released::NotHeld),
        Some(lease) if lease.runner == runner && lease.job == job => {
            remove_lease(state_dir, board)?;
            log::info!("board `{board}` released by {}", lease.describe());
            Ok(Released::Freed(lease))
        }
        Some(lease) => Err(BoardError::NotHolder {
            board: board.to_owned(),
            holder: lease.describe(),
            runner: runner.to_owned(),
            job: job.to_owned(),
        }),
    }
}

/// Free the board whoever holds it (the daemon, on a cancelled run); returns the old lease.
pub fn force_release(state_dir: &Path, board: &str) -> Result<Option<Lease>, BoardError> {
    if !lease_path(state_dir, board).exists() {
        return Ok(None);
    }
    let _lock = FileLock::acquire(&lock_path(state_dir, board), TRANSITION_LOCK_TIMEOUT)?;
    let old = read_lease(state_dir, board)?;
    remove_lease(state_dir, board)?;
    if let Some(lease) = &old {
        log::warn!("board `{board}` force-released from {}", lease.describe());
    }
    Ok(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(runner: &str, job: &str) -> Holder {
        Holder {
            runner: runner.to_owned(),
            job: job.to_owned(),
            pid: std::process::id(),
        }
    }

    #[test]
    fn a_recycled_pid_does_not_keep_a_lease() {
        let dir = tempfile::tempdir().unwrap();
        let lease = acquire(dir.path(), "b", &holder("r", "1"), Duration::ZERO).unwrap();
        assert!(lease.holder_alive());
        // The same pid number, but a process that started at another time.
        let mut recycled = lease.clone();
        recycled.pid_start = lease.pid_start.map(|start| start + 1);
        write_lease(dir.path(), &recycled).unwrap();
        assert_eq!(current(dir.path(), "b").unwrap(), None);
        assert!(
            !lease_path(dir.path(), "b").exists(),
            "the stale lease is removed"
        );
    }

    #[test]
    fn the_same_job_may_take_its_board_again_and_another_must_wait() {
        let dir = tempfile::tempdir().unwrap();
        acquire(dir.path(), "b", &holder("r", "1"), Duration::ZERO).unwrap();
        acquire(dir.path(), "b", &holder("r", "1"), Duration::ZERO).unwrap();
        let err = acquire(dir.path(), "b", &holder("r2", "2"), Duration::ZERO).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("board `b` is still held by runner `r` job `1`"),
            "{err}"
        );
        assert_eq!(
            release(dir.path(), "b", "r2", "2").unwrap_err().to_string(),
            format!(
                "board `b` is held by {}, not by runner `r2` job `2`",
                current(dir.path(), "b").unwrap().unwrap().describe()
            )
        );
        assert!(matches!(
            release(dir.path(), "b", "r", "1").unwrap(),
            Released::Freed(_)
        ));
        assert_eq!(
            release(dir.path(), "b", "r", "1").unwrap(),
            Released::NotHeld
        );
    }
}
