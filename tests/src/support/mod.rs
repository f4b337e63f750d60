//! What the integration tests share: the binaries of this build, a lab emulator with the
//! fake runner release published on it, and [`lab`], the whole lab of the agent's tests.

pub mod lab;

use std::path::{Path, PathBuf};

use crate::emulator::{AssetSource, Emulator, ReleaseOptions};
use crate::fake_runner::{build_release, listener_binary, BuiltRelease, ReleaseSpec};

/// The compiled binary `name` of this build: next to the running executable or a directory up
/// (a test binary lives in `target/<profile>/deps/`), else `target/debug/`.
pub fn workspace_binary(name: &str) -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        let mut dir = exe.parent().map(Path::to_path_buf);
        while let Some(d) = dir {
            let candidate = d.join(name);
            if candidate.is_file() {
                return candidate;
            }
            if d.file_name().is_some_and(|n| n == "target") {
                break;
            }
            dir = d.parent().map(Path::to_path_buf);
        }
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/debug")
        .join(name)
}

/// A pty pair standing in for a board's USB-serial console, and the slave's path. Both ends are
/// close-on-exec (openpty(3) leaves them inheritable): a daemon or job the test starts must not
/// hold the console open by accident, or it shows up as another holder of the board.
#[allow(clippy::unwrap_used)] // test set-up: a failure is the test's failure
pub fn console_pty() -> (nix::pty::OpenptyResult, PathBuf) {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let pty = nix::pty::openpty(None, None).unwrap();
    for fd in [&pty.master, &pty.slave] {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).unwrap();
    }
    let slave = nix::unistd::ttyname(&pty.slave).unwrap();
    (pty, slave)
}

/// `agentctl` of this build; a clear failure when it was not built.
pub fn agentctl() -> PathBuf {
    let path = workspace_binary("agentctl");
    assert!(
        path.exists(),
        "`{}` is missing: build it first (`cargo build -p runner-agent --bin agentctl`)",
        path.display()
    );
    path
}

/// Build the fake runner release `version` (x64, no padding) in `dir` and publish it on `emu`
/// with an asset digest and the release-body checksum markers, as GitHub does.
pub async fn publish_fake_release(
    emu: &Emulator,
    version: &str,
    dir: &Path,
) -> Result<BuiltRelease, Box<dyn std::error::Error>> {
    let built = build_release(
        &ReleaseSpec {
            version: version.into(),
            arch: "x64".into(),
            listener: listener_binary(),
            pad_bytes: 0,
            pad_files: 0,
        },
        dir,
    )?;
    emu.publish_release(
        version,
        vec![(
            "linux-x64".to_owned(),
            AssetSource::Path(built.path.clone()),
        )],
        ReleaseOptions {
            digest: true,
            body_markers: true,
        },
    )
    .await?;
    Ok(built)
}
