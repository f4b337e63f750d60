//! A simulated board behind a pty, for the board tests.
//!
//! It opens a pty pair and keeps its own slave fd open (so the master never sees EIO when the
//! program under test closes and reopens the port), publishes a symlink to the slave with an
//! atomic rename (like a udev `SYMLINK+=`), and prints `READY <slave>` on stdout. Its power is a
//! FIFO: a `1` line switches it on (it prints a boot banner and, unless `--broken`, the prompt),
//! a `0` line switches it off. The fake `mbpoll` of the tests writes the coil value there. When
//! powered and healthy, a carriage return or newline from the port gets the prompt again.

use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use nix::fcntl::{open, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::stat::Mode;
use nix::sys::termios;

#[derive(Debug, Parser)]
struct Args {
    /// Symlink to publish, pointing at the pty slave.
    #[arg(long)]
    link: PathBuf,
    /// FIFO that receives `1`/`0` power lines (created if missing).
    #[arg(long)]
    power: PathBuf,
    /// The prompt printed after the banner.
    #[arg(long)]
    prompt: String,
    /// Banner printed at power-on.
    #[arg(
        long,
        default_value = "U-Boot SPL board-sim\r\nStarting kernel ...\r\n"
    )]
    banner: String,
    /// Never print the prompt (a board whose boot hangs).
    #[arg(long)]
    broken: bool,
}

fn write_all(fd: &OwnedFd, mut bytes: &[u8]) -> anyhow::Result<()> {
    while !bytes.is_empty() {
        let n = nix::unistd::write(fd, bytes).context("cannot write the pty master")?;
        bytes = &bytes[n..];
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pty = nix::pty::openpty(None, None).context("cannot open a pty pair")?;
    let slave_name = nix::unistd::ttyname(&pty.slave).context("cannot name the pty slave")?;
    let mut attrs = termios::tcgetattr(&pty.slave)?;
    termios::cfmakeraw(&mut attrs);
    termios::tcsetattr(&pty.slave, termios::SetArg::TCSANOW, &attrs)?;
    fs::set_permissions(&slave_name, fs::Permissions::from_mode(0o660))?;
    if let Ok(Some(group)) = nix::unistd::Group::from_name("dialout") {
        let _ = nix::unistd::chown(&slave_name, None, Some(group.gid));
    }
    let tmp = args.link.with_extension("new");
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&slave_name, &tmp)?;
    fs::rename(&tmp, &args.link)?;

    if !args.power.exists() {
        nix::unistd::mkfifo(&args.power, Mode::from_bits_truncate(0o666))
            .with_context(|| format!("cannot create FIFO `{}`", args.power.display()))?;
    }
    // Read-write: the FIFO never reports EOF when a writer goes away.
    let power = open(
        &args.power,
        OFlag::O_RDWR | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .with_context(|| format!("cannot open `{}`", args.power.display()))?;

    let mut stdout = std::io::stdout();
    writeln!(stdout, "READY {}", slave_name.display())?;
    stdout.flush()?;

    let prompt = format!("\r\n{} ", args.prompt);
    let mut powered = false;
    let mut power_buf = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let (master_ready, power_ready) = {
            let mut fds = [
                PollFd::new(pty.master.as_fd(), PollFlags::POLLIN),
                PollFd::new(power.as_fd(), PollFlags::POLLIN),
            ];
            poll(&mut fds, PollTimeout::NONE).context("poll failed")?;
            let ready = |fd: &PollFd| {
                fd.revents()
                    .is_some_and(|r| r.intersects(PollFlags::POLLIN))
            };
            (ready(&fds[0]), ready(&fds[1]))
        };
        if power_ready {
            match nix::unistd::read(&power, &mut buf) {
                Ok(n) => power_buf.extend_from_slice(&buf[..n]),
                Err(nix::errno::Errno::EAGAIN) => {}
                Err(err) => return Err(err).context("cannot read the power FIFO"),
            }
            while let Some(end) = power_buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = power_buf.drain(..=end).collect();
                let value = String::from_utf8_lossy(&line).trim().to_owned();
                writeln!(stdout, "POWER {value}")?;
                stdout.flush()?;
                match value.as_str() {
                    "1" if !powered => {
                        powered = true;
                        write_all(&pty.master, args.banner.as_bytes())?;
                        if args.broken {
                            write_all(&pty.master, b"Kernel panic - not syncing: board-sim\r\n")?;
                        } else {
                            write_all(&pty.master, prompt.as_bytes())?;
                        }
                    }
                    "0" => powered = false,
                    _ => {}
                }
            }
        }
        if master_ready {
            let n = match nix::unistd::read(&pty.master, &mut buf) {
                Ok(n) => n,
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => 0,
                Err(err) => return Err(err).context("cannot read the pty master"),
            };
            let input = &buf[..n];
            if powered && !args.broken && input.iter().any(|&b| b == b'\r' || b == b'\n') {
                write_all(&pty.master, prompt.as_bytes())?;
            }
        }
    }
}
