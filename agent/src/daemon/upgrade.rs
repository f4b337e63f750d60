//! Upgrades of runners with `disable_update = true`: they never update themselves, and GitHub
//! stops sending them jobs 30 days after a newer release (actions-runner.md §5.3), so the daemon
//! upgrades them itself, while they are idle, to the configured version (or the newest release
//! for `version = "latest"`).
//!
//! The upgrade does what the runner's own self-update does (§5.2), keeping the registration: the
//! new release is installed beside the runner directory from the verified cache, its `bin` and
//! `externals` become `bin.<version>` and `externals.<version>` inside the runner directory with
//! `bin` and `externals` as symlinks to them, the shipped root files (`config.sh`, `run.sh`, …)
//! are replaced, a `runsvc.sh` the service installed is refreshed from the new `bin`, and the old
//! versioned directories go. `.runner`, `.credentials*`, `.env`, `.path`, `.service`, `svc.sh`,
//! `_work` and `_diag` stay. The runner is stopped for it and started again.

use std::fs;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};

use crate::config::{Runner, Version, VersionReq};
use crate::release::{self, FetchRequest};
use crate::runner::{self, Lifecycle, RunnerError};

use super::metrics::Published;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunnerError + '_ {
    move |source| RunnerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The version `runner` should run, if the daemon upgrades it: the pinned one, or the newest
/// known release for `latest`.
pub fn target(runner: &Runner, releases: Option<&[Published]>) -> Option<Version> {
    if !runner.disable_update {
        return None;
    }
    match &runner.version {
        VersionReq::Pinned(version) => Some(*version),
        VersionReq::Latest => releases?.iter().map(|r| r.version).max(),
    }
}

/// Whether a runner at `installed` must be upgraded to `target`.
pub fn due(installed: Option<&str>, target: Option<Version>) -> Option<Version> {
    let installed: Version = installed?.parse().ok()?;
    target.filter(|t| *t > installed)
}

/// What [`upgrade`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgraded {
    /// Upgraded and started again.
    Done,
    /// The runner took a job while the release was downloaded: left alone, for a later pass.
    Busy,
}

/// Stop `runner`, upgrade its directory to `version`, record it, start it again; unless it
/// started a job (seen on this host, [`super::busy`]) while the new release was downloaded.
pub async fn upgrade(
    lifecycle: &Lifecycle<'_>,
    runner: &Runner,
    version: Version,
) -> Result<Upgraded, RunnerError> {
    let run_as = runner::run_as(&runner.user)?;
    let dir = &runner.dir;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = dir.with_file_name(format!(".{name}.upgrade-{version}"));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    let mut request = FetchRequest::from_config(lifecycle.config, Some(runner)).map_err(|e| {
        RunnerError::Release {
            dir: dir.clone(),
            source: Box::new(e),
        }
    })?;
    request.version = VersionReq::Pinned(version);
    request.progress = false;
    let owner = Some((Uid::from_raw(run_as.uid), Gid::from_raw(run_as.gid)));
    // Fetched and laid out before the runner stops: it keeps working during the download.
    release::fetch_and_install(&request, &staging, owner)
        .await
        .map_err(|e| RunnerError::Release {
            dir: dir.clone(),
            source: Box::new(e),
        })?;
    if super::busy::job_here(lifecycle, runner) {
        let _ = fs::remove_dir_all(&staging);
        return Ok(Upgraded::Busy);
    }
    lifecycle.stop(runner)?;
    let result = swap_in(dir, &staging, version, run_as.uid, run_as.gid);
    let _ = fs::remove_dir_all(&staging);
    result?;
    if let Some(mut record) = lifecycle.record(&runner.name) {
        record.version = version.to_string();
        lifecycle.write_record(&record)?;
    }
    log::info!("runner `{}` upgraded to {version}", runner.name);
    lifecycle.start(runner).map(|()| Upgraded::Done)
}

/// Move the new release from `staging` into `dir` the way the runner's self-update does.
fn swap_in(
    dir: &Path,
    staging: &Path,
    version: Version,
    uid: u32,
    gid: u32,
) -> Result<(), RunnerError> {
    for part in ["bin", "externals"] {
        let versioned = dir.join(format!("{part}.{version}"));
        if versioned.exists() {
            fs::remove_dir_all(&versioned).map_err(io(&versioned))?;
        }
        let new = staging.join(part);
        fs::rename(&new, &versioned).map_err(io(&new))?;
        let link = dir.join(part);
        let old: Option<PathBuf> = match fs::symlink_metadata(&link) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(&link).map_err(io(&link))?;
                fs::remove_file(&link).map_err(io(&link))?;
                Some(dir.join(target))
            }
            Ok(_) => {
                // The first upgrade: the real directory becomes `bin.old`, then goes.
                let aside = dir.join(format!("{part}.old"));
                if aside.exists() {
                    fs::remove_dir_all(&aside).map_err(io(&aside))?;
                }
                fs::rename(&link, &aside).map_err(io(&link))?;
                Some(aside)
            }
            Err(_) => None,
        };
        std::os::unix::fs::symlink(format!("{part}.{version}"), &link).map_err(io(&link))?;
        let _ = std::os::unix::fs::lchown(&link, Some(uid), Some(gid));
        if let Some(old) = old.filter(|o| *o != versioned) {
            let _ = fs::remove_dir_all(&old);
        }
    }
    // The shipped root files (scripts, templates): replaced; the runner's own files stay.
    for entry in fs::read_dir(staging).map_err(io(staging))?.flatten() {
        let from = entry.path();
        let to = dir.join(entry.file_name());
        if from.is_dir() {
            continue;
        }
        fs::rename(&from, &to).map_err(io(&from))?;
    }
    // A service's `runsvc.sh` is a copy of `bin/runsvc.sh` (`svc.sh install`): refresh it.
    let runsvc = dir.join("runsvc.sh");
    if runsvc.exists() {
        let shipped = dir.join("bin").join("runsvc.sh");
        let staged = dir.join(".runsvc.sh.new");
        fs::copy(&shipped, &staged).map_err(io(&shipped))?;
        let _ = std::os::unix::fs::chown(&staged, Some(uid), Some(gid));
        fs::rename(&staged, &runsvc).map_err(io(&runsvc))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        text.parse().unwrap()
    }

    #[test]
    fn only_an_older_installed_version_is_due() {
        assert_eq!(due(Some("2.336.0"), Some(v("2.337.0"))), Some(v("2.337.0")));
        assert_eq!(due(Some("2.337.0"), Some(v("2.337.0"))), None);
        assert_eq!(due(Some("2.338.0"), Some(v("2.337.0"))), None);
        assert_eq!(due(None, Some(v("2.337.0"))), None);
        assert_eq!(due(Some("2.336.0"), None), None);
    }

    #[test]
    fn the_first_upgrade_links_bin_and_keeps_the_registration() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("r1");
        let staging = root.path().join(".r1.upgrade");
        for (base, version) in [(&dir, "old"), (&staging, "new")] {
            fs::create_dir_all(base.join("bin")).unwrap();
            fs::create_dir_all(base.join("externals")).unwrap();
            fs::write(base.join("bin/runnerversion"), version).unwrap();
            fs::write(base.join("bin/runsvc.sh"), version).unwrap();
            fs::write(base.join("run.sh"), version).unwrap();
        }
        fs::write(dir.join(".runner"), "registration").unwrap();
        fs::write(dir.join("runsvc.sh"), "old").unwrap();
        fs::create_dir_all(dir.join("_work/keep")).unwrap();
        swap_in(&dir, &staging, v("2.337.0"), 0, 0).unwrap();
        assert_eq!(
            fs::read_link(dir.join("bin")).unwrap(),
            Path::new("bin.2.337.0")
        );
        assert_eq!(
            fs::read_to_string(dir.join("bin/runnerversion")).unwrap(),
            "new"
        );
        assert_eq!(fs::read_to_string(dir.join("run.sh")).unwrap(), "new");
        assert_eq!(fs::read_to_string(dir.join("runsvc.sh")).unwrap(), "new");
        assert_eq!(
            fs::read_to_string(dir.join(".runner")).unwrap(),
            "registration"
        );
        assert!(dir.join("_work/keep").is_dir());
        assert!(!dir.join("bin.old").exists());
    }
}
