//! Self-update on `AgentRefresh` (actions-runner.md §5.2): download, verify, unpack into
//! `bin.<ver>`/`externals.<ver>`, replace the root-level files, then hand over to a detached
//! `<work>/_update.sh` that swaps the `bin`/`externals` symlinks once the listener has exited.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::client::Client;
use super::store::Root;
use super::{say, ListenerError};

/// The body of an `AgentRefresh` message.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refresh {
    pub target_version: String,
    pub download_url: String,
    #[serde(default)]
    pub sha256_checksum: Option<String>,
}

/// Whether `target` is a newer dotted version than `current`.
pub fn is_newer(target: &str, current: &str) -> bool {
    let parse = |v: &str| -> Vec<u64> {
        v.trim_start_matches('v')
            .split('.')
            .map(|p| p.parse().unwrap_or(0))
            .collect()
    };
    parse(target) > parse(current)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ListenerError + '_ {
    move |source| ListenerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Stages the new version. `Ok(None)` when the target is not newer.
pub async fn prepare(
    root: &Root,
    work_dir: &Path,
    client: &Client,
    refresh: &Refresh,
    current: &str,
) -> Result<Option<String>, ListenerError> {
    let target = refresh.target_version.trim_start_matches('v').to_string();
    if !is_newer(&target, current) {
        return Ok(None);
    }
    say("Runner update in progress, do not shutdown runner.");
    say(format!("Downloading {target} runner"));
    let update_dir = work_dir.join("_update");
    std::fs::create_dir_all(&update_dir).map_err(io(&update_dir))?;
    let archive = update_dir.join("runner1.tar.gz");
    let mut last_error = None;
    let mut sha = None;
    for _attempt in 0..3 {
        match client.download(&refresh.download_url, &archive).await {
            Ok(hash) => {
                sha = Some(hash);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let Some(sha) = sha else {
        return Err(last_error.unwrap_or_else(|| ListenerError::Service {
            message: "download failed".into(),
        }));
    };
    if let Some(expected) = refresh.sha256_checksum.as_deref().filter(|s| !s.is_empty()) {
        if !expected.eq_ignore_ascii_case(&sha) {
            let _ = std::fs::remove_file(&archive);
            return Err(ListenerError::Service {
                message: format!(
                    "Runner package '{}' failed hash validation: expected {expected}, actual {sha}",
                    archive.display()
                ),
            });
        }
    }
    let extract = update_dir.join(format!("runner.{target}"));
    let _ = std::fs::remove_dir_all(&extract);
    std::fs::create_dir_all(&extract).map_err(io(&extract))?;
    let status = tokio::process::Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&extract)
        .status()
        .await
        .map_err(io(&archive))?;
    if !status.success() {
        return Err(ListenerError::Service {
            message: format!("tar -xzf {} failed: {status}", archive.display()),
        });
    }
    for dir in ["bin", "externals"] {
        let versioned = root.path(&format!("{dir}.{target}"));
        if versioned.exists() {
            std::fs::remove_dir_all(&versioned).map_err(io(&versioned))?;
        }
        let source = extract.join(dir);
        if source.is_dir() {
            std::fs::rename(&source, &versioned).map_err(io(&versioned))?;
        } else {
            std::fs::create_dir_all(&versioned).map_err(io(&versioned))?;
        }
    }
    // Root-level files shipped in the package: delete, then copy.
    for entry in std::fs::read_dir(&extract).map_err(io(&extract))? {
        let entry = entry.map_err(io(&extract))?;
        if entry.file_type().map_err(io(&extract))?.is_file() {
            let dest = root.dir.join(entry.file_name());
            let _ = std::fs::remove_file(&dest);
            std::fs::rename(entry.path(), &dest).map_err(io(&dest))?;
        }
    }
    // Older versioned copies other than the running one and the new one.
    if let Ok(entries) = std::fs::read_dir(&root.dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            for dir in ["bin.", "externals."] {
                if let Some(ver) = name.strip_prefix(dir) {
                    let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                    if is_dir && ver != target && ver != current {
                        let _ = std::fs::remove_dir_all(entry.path());
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&extract);
    let _ = std::fs::remove_file(&archive);
    say("Runner will exit shortly for update, should be back online within 10 seconds.");
    Ok(Some(target))
}

/// The update script the listener leaves behind.
pub fn update_script(root: &Path, pid: u32, old: &str, new: &str, stamp: &str) -> String {
    let root = root.display();
    format!(
        r#"#!/bin/bash
# Written by the fake Runner.Listener before it exits for a self-update; the steps follow the
# real update.sh.template: wait for the listener to exit, point bin/externals at the new
# version, refresh runsvc.sh, signal run-helper.sh with update.finished.
runnerpid={pid}
rootfolder="{root}"
existrunnerversion="{old}"
downloadrunnerversion="{new}"
logfile="$rootfolder/_diag/SelfUpdate-{stamp}.log"
mkdir -p "$rootfolder/_diag"
exec >>"$logfile" 2>&1
fail() {{ echo "update failed: $*"; mv "$logfile" "$logfile.failed"; exit 1; }}
echo "waiting for runner listener $runnerpid to exit"
while kill -0 "$runnerpid" 2>/dev/null; do sleep 0.1; done
cd "$rootfolder" || fail "cannot cd to $rootfolder"
for d in bin externals; do
    if [ -L "$d" ]; then
        rm "$d" || fail "cannot remove the $d symlink"
    elif [ -d "$d" ]; then
        mv "$d" "$d.$existrunnerversion" || fail "cannot rename $d to $d.$existrunnerversion"
    fi
    ln -s "$d.$downloadrunnerversion" "$d" || fail "cannot link $d to $d.$downloadrunnerversion"
done
if [ -f runsvc.sh ]; then
    cp -f bin/runsvc.sh runsvc.sh.new && chmod 755 runsvc.sh.new && mv -f runsvc.sh.new runsvc.sh || fail "cannot refresh runsvc.sh"
fi
echo "update from $existrunnerversion to $downloadrunnerversion finished"
touch update.finished
mv "$logfile" "$logfile.succeed"
"#
    )
}

/// Writes `<work>/_update.sh` and starts it detached (its own process group, no stdio).
pub fn launch(
    root: &Root,
    work_dir: &Path,
    old: &str,
    new: &str,
) -> Result<PathBuf, ListenerError> {
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
    let script = work_dir.join("_update.sh");
    let text = update_script(&root.dir, std::process::id(), old, new, &stamp);
    super::store::write_file(&script, text.as_bytes(), 0o755)?;
    use std::os::unix::process::CommandExt as _;
    std::process::Command::new("bash")
        .arg(&script)
        .current_dir(&root.dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(io(&script))?;
    Ok(script)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert!(is_newer("2.336.0", "2.99.9"));
        assert!(is_newer("v2.10.1", "2.10.0"));
        assert!(!is_newer("2.10.0", "2.10.0"));
        assert!(!is_newer("2.9.0", "2.10.0"));
    }
}
