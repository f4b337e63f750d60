//! Run a probe as the runner user: uid, primary gid and supplementary groups from the user
//! database, exactly what a systemd unit with `User=` gets. Root can open every device, so an
//! access check run as root proves nothing.
//!
//! # Why fork with a syscall-only child, not re-exec
//!
//! `agentctl` is multi-threaded (tokio). After `fork` only the calling thread exists in the child,
//! so any lock another thread held (the allocator's, stdio's, the logger's) stays locked forever;
//! the child may therefore only do async-signal-safe work. Re-executing `agentctl` with a hidden
//! probe subcommand would avoid that, but needs the path of a binary that matches this one (not
//! true in tests, nor during a package upgrade) and a second argument parser.
//!
//! We fork and keep the child to raw system calls instead:
//! - everything that allocates or takes a lock (user lookup, `getgrouplist`, `CString`s of paths,
//!   the group vector) is prepared in the parent, before `fork`;
//! - the child calls `setgroups`, `setgid`, `setuid`, then the probe, which must itself only make
//!   system calls (`open`, `ioctl`, `flock`, `mmap`, `tcsetattr`, …) on data prepared before the
//!   fork, and returns a fixed-size array of integers;
//! - the child writes that array to a pipe with one `write` and leaves with `_exit` (no
//!   destructors, no atexit handlers, no stdio flush); the probe closure is only borrowed, so
//!   nothing it captured is freed in the child.
//!
//! The parent waits with a deadline and kills the child if it hangs (a `KVM_RUN` that never
//! exits, a tty open that blocks).

use std::ffi::CString;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, pipe2, ForkResult, Gid, Pid, Uid, User};

use super::DoctorError;

/// Who a probe runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    /// Supplementary groups (including the primary one), as `initgroups` would set them.
    pub groups: Vec<Gid>,
    pub home: std::path::PathBuf,
}

impl Identity {
    /// Look `name` up in the user database; `None` when there is no such user.
    pub fn lookup(name: &str) -> Result<Option<Identity>, DoctorError> {
        let user = User::from_name(name).map_err(|source| DoctorError::UserLookup {
            user: name.to_owned(),
            source,
        })?;
        let Some(user) = user else {
            return Ok(None);
        };
        let cname = CString::new(name).map_err(|_| DoctorError::UserLookup {
            user: name.to_owned(),
            source: Errno::EINVAL,
        })?;
        let groups = nix::unistd::getgrouplist(&cname, user.gid).map_err(|source| {
            DoctorError::UserLookup {
                user: name.to_owned(),
                source,
            }
        })?;
        Ok(Some(Identity {
            name: name.to_owned(),
            uid: user.uid,
            gid: user.gid,
            groups,
            home: user.dir,
        }))
    }
}

/// Why a probe gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeFailure {
    /// `setgroups`/`setgid`/`setuid` failed in the child (doctor not run as root?).
    CannotBecome { user: String, errno: Errno },
    /// The probe did not answer before the deadline; the child was killed.
    TimedOut(Duration),
    /// The child died without answering (killed by a signal, or crashed).
    Died(String),
}

impl std::fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeFailure::CannotBecome { user, errno } => {
                write!(f, "cannot switch to user `{user}`: {}", errno.desc())
            }
            ProbeFailure::TimedOut(after) => {
                write!(f, "no answer after {} ms", after.as_millis())
            }
            ProbeFailure::Died(how) => write!(f, "the probe process {how}"),
        }
    }
}

#[repr(C)]
struct Answer<const N: usize> {
    /// 0, or the errno of a failed identity switch.
    switch_errno: i64,
    values: [i64; N],
}

/// Run `probe` in a forked child as `identity` (or as the current user when `None`) and return
/// what it returned.
///
/// `probe` runs after `fork` in a multi-threaded process: it must only make system calls on data
/// prepared before the call (no allocation, no locks, no logging, no panics). It is only borrowed
/// in the child, so what it captured is never dropped (freed) there.
pub fn run<const N: usize>(
    identity: Option<&Identity>,
    timeout: Duration,
    probe: impl Fn() -> [i64; N],
) -> Result<Result<[i64; N], ProbeFailure>, DoctorError> {
    // Not root and already that user (doctor run by the runner user itself): nothing to switch,
    // and no privilege to do it with.
    let euid = nix::unistd::geteuid();
    let identity = identity.filter(|id| euid.is_root() || id.uid != euid);
    let (reader, writer) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(DoctorError::Pipe)?;
    let groups: Vec<nix::libc::gid_t> = identity
        .map(|id| id.groups.iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default();
    let ids = identity.map(|id| (id.uid.as_raw(), id.gid.as_raw()));

    // SAFETY: the child only makes async-signal-safe system calls on data prepared above (see the
    // module documentation) and leaves through `_exit`.
    match unsafe { fork() }.map_err(DoctorError::Fork)? {
        ForkResult::Child => {
            let mut answer = Answer::<N> {
                switch_errno: 0,
                values: [0; N],
            };
            if let Some((uid, gid)) = ids {
                // SAFETY: plain system calls with a pointer/length pair that outlives them.
                let switched = unsafe {
                    nix::libc::setgroups(groups.len(), groups.as_ptr()) == 0
                        && nix::libc::setgid(gid) == 0
                        && nix::libc::setuid(uid) == 0
                };
                if !switched {
                    answer.switch_errno = i64::from(Errno::last_raw());
                }
            }
            if answer.switch_errno == 0 {
                answer.values = probe();
            }
            // SAFETY: writes the plain-old-data answer from a live stack object, then leaves
            // without running any destructor.
            unsafe {
                let bytes = std::ptr::addr_of!(answer).cast::<u8>();
                let _ = nix::libc::write(
                    std::os::fd::AsRawFd::as_raw_fd(&writer),
                    bytes.cast(),
                    std::mem::size_of::<Answer<N>>(),
                );
                nix::libc::_exit(0)
            }
        }
        ForkResult::Parent { child } => {
            drop(writer);
            let answer = read_answer::<N>(&reader, child, timeout);
            let answer = match answer {
                Ok(answer) => answer,
                Err(err) => {
                    let _ = kill(child, Signal::SIGKILL);
                    let _ = waitpid(child, None);
                    return Err(err);
                }
            };
            match answer {
                Some(answer) => {
                    let _ = waitpid(child, None);
                    if answer.switch_errno != 0 {
                        return Ok(Err(ProbeFailure::CannotBecome {
                            user: identity.map(|id| id.name.clone()).unwrap_or_default(),
                            errno: Errno::from_raw(answer.switch_errno as i32),
                        }));
                    }
                    Ok(Ok(answer.values))
                }
                None => {
                    // Either the deadline passed or the child closed the pipe without answering.
                    let status = match waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::StillAlive) => {
                            let _ = kill(child, Signal::SIGKILL);
                            let _ = waitpid(child, None);
                            return Ok(Err(ProbeFailure::TimedOut(timeout)));
                        }
                        Ok(status) => status,
                        Err(_) => WaitStatus::StillAlive,
                    };
                    Ok(Err(ProbeFailure::Died(describe(status))))
                }
            }
        }
    }
}

fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with status {code} without answering"),
        WaitStatus::Signaled(_, signal, _) => format!("was killed by {signal}"),
        other => format!("ended unexpectedly ({other:?})"),
    }
}

/// Read one answer, or `None` on deadline or end of file.
fn read_answer<const N: usize>(
    reader: &std::os::fd::OwnedFd,
    child: Pid,
    timeout: Duration,
) -> Result<Option<Answer<N>>, DoctorError> {
    let size = std::mem::size_of::<Answer<N>>();
    let mut buf = vec![0u8; size];
    let mut filled = 0;
    let deadline = Instant::now() + timeout;
    while filled < size {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let wait = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(reader.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, wait) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(source) => {
                return Err(DoctorError::ProbeRead {
                    pid: child.as_raw(),
                    source,
                })
            }
        }
        match nix::unistd::read(reader.as_fd(), &mut buf[filled..]) {
            Ok(0) => return Ok(None),
            Ok(n) => filled += n,
            Err(Errno::EINTR) => continue,
            Err(source) => {
                return Err(DoctorError::ProbeRead {
                    pid: child.as_raw(),
                    source,
                })
            }
        }
    }
    let mut answer = Answer::<N> {
        switch_errno: 0,
        values: [0; N],
    };
    let word = std::mem::size_of::<i64>();
    let mut words = buf.chunks_exact(word).map(|chunk| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        i64::from_ne_bytes(bytes)
    });
    answer.switch_errno = words.next().unwrap_or(0);
    for (slot, value) in answer.values.iter_mut().zip(words) {
        *slot = value;
    }
    Ok(Some(answer))
}

/// `open(2)` for a probe: the fd, or `-errno`.
pub(crate) fn raw_open(path: &std::ffi::CStr, flags: nix::libc::c_int) -> i64 {
    // SAFETY: `path` is a valid NUL-terminated string prepared before the fork.
    let fd = unsafe { nix::libc::open(path.as_ptr(), flags) };
    if fd < 0 {
        -i64::from(Errno::last_raw())
    } else {
        i64::from(fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_child_runs_with_the_users_ids_and_groups() {
        let Some(user) = Identity::lookup("ra-runner").unwrap() else {
            panic!("user `ra-runner` is missing: run scripts/setup");
        };
        let answer = run(Some(&user), Duration::from_secs(5), || {
            // SAFETY: plain system calls.
            unsafe {
                let mut groups = [0 as nix::libc::gid_t; 4];
                let n = nix::libc::getgroups(4, groups.as_mut_ptr());
                [
                    i64::from(nix::libc::getuid()),
                    i64::from(nix::libc::getgid()),
                    i64::from(n),
                    i64::from(groups[0]),
                ]
            }
        })
        .unwrap()
        .unwrap();
        assert_eq!(answer[0], i64::from(user.uid.as_raw()));
        assert_eq!(answer[1], i64::from(user.gid.as_raw()));
        assert_eq!(answer[2], user.groups.len() as i64);
        assert_eq!(answer[3], i64::from(user.groups[0].as_raw()));
    }

    #[test]
    fn a_hanging_probe_is_killed_at_the_deadline() {
        let started = Instant::now();
        let answer = run(None, Duration::from_millis(300), || {
            // SAFETY: pause(2) is a plain system call; the parent kills us.
            unsafe { nix::libc::pause() };
            [0i64; 1]
        })
        .unwrap();
        assert_eq!(
            answer,
            Err(ProbeFailure::TimedOut(Duration::from_millis(300)))
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn a_missing_user_is_none() {
        assert_eq!(Identity::lookup("ra-no-such-user-xyz").unwrap(), None);
    }
}
