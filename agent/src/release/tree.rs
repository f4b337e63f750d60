//! The sealed tree in the cache, and the transactional install of a runner directory from it.
//!
//! A verified tarball is extracted once per host into `<cache>/<version>/tree-linux-<arch>/`:
//! owned by root, every write bit removed, with a manifest of what the archive held (kinds, modes,
//! sizes, inode numbers and mtimes at sealing time). A runner directory is then built beside its
//! target and renamed into place:
//! - files under `bin/` and `externals/` (~460 MB, ~3,000 files) are **hard links** to the sealed
//!   tree. The runner never writes inside them (its self-update creates new `bin.<ver>` and
//!   `externals.<ver>` directories and deletes old ones, which only needs write access to the
//!   directories, which are the runner's own). A runner user cannot change a shared file: it is
//!   root's, mode `0444`/`0555`, and neither the runner nor `svc.sh` chowns inside `bin/`. So one
//!   runner cannot change another's files, and a second runner costs a few thousand `link(2)`
//!   calls instead of 460 MB of writes. Across file systems (`EXDEV`) the file is copied instead
//!   (`copy_file_range`, which reflinks where the file system can).
//! - everything else (`config.sh`, `run.sh`, `env.sh`, … which the runner's self-update replaces
//!   in place) is copied and owned by the runner user, as are all directories.
//!
//! Before reuse, the tree is checked against its manifest (every entry present with the same
//! kind, mode, size, inode and mtime, owned by root); a tree that fails is removed and extracted
//! again from the (re-hashed) tarball.
//!
//! The target is replaced with `renameat2(RENAME_EXCHANGE)` (or a plain rename when it did not
//! exist), after `syncfs`: a crash at any point leaves the old tree or the new one at `target`,
//! never a mix. Leftovers of an interrupted install (`.<name>.new-*`) are removed next time.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
use nix::unistd::{Gid, Uid};

use super::cache::remove_tree;
use super::unpack::{Entry, Kind};
use super::ReleaseError;

/// The manifest's file name inside a sealed tree.
pub const MANIFEST: &str = ".runner-agent-manifest.json";

/// Top-level directories whose files are shared by hard link.
const SHARED: [&str; 2] = ["bin", "externals"];

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub entries: Vec<Sealed>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sealed {
    #[serde(flatten)]
    pub entry: Entry,
    pub ino: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ReleaseError + '_ {
    move |source| ReleaseError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Record what `dir` holds after extraction, write the manifest into it, and make it read-only.
pub fn seal(dir: &Path, entries: Vec<Entry>) -> Result<Manifest, ReleaseError> {
    let mut sealed = Vec::with_capacity(entries.len());
    for entry in entries {
        let path = dir.join(&entry.path);
        let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
        sealed.push(Sealed {
            entry,
            ino: meta.ino(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        });
    }
    let manifest = Manifest { entries: sealed };
    let path = dir.join(MANIFEST);
    let text = serde_json::to_vec(&manifest).map_err(|err| ReleaseError::Io {
        path: path.clone(),
        source: io::Error::other(err),
    })?;
    fs::write(&path, text).map_err(io_err(&path))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o444)).map_err(io_err(&path))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).map_err(io_err(dir))?;
    Ok(manifest)
}

/// The manifest of a sealed tree, if the tree is still exactly what was sealed.
pub fn verify(dir: &Path) -> Option<Manifest> {
    let text = fs::read(dir.join(MANIFEST)).ok()?;
    let manifest: Manifest = serde_json::from_slice(&text).ok()?;
    let root = nix::unistd::geteuid().as_raw();
    for sealed in &manifest.entries {
        let path = dir.join(&sealed.entry.path);
        let Ok(meta) = fs::symlink_metadata(&path) else {
            log::warn!("sealed tree lost `{}`", path.display());
            return None;
        };
        let kind_ok = match &sealed.entry.kind {
            Kind::Dir => meta.is_dir(),
            Kind::File { size } => meta.is_file() && meta.len() == *size,
            Kind::Symlink { target } => {
                meta.file_type().is_symlink()
                    && fs::read_link(&path).ok().as_deref() == Some(Path::new(target))
            }
        };
        let mode_ok = matches!(sealed.entry.kind, Kind::Symlink { .. })
            || meta.mode() & 0o7777 == sealed.entry.mode;
        if !kind_ok
            || !mode_ok
            || meta.ino() != sealed.ino
            || meta.mtime() != sealed.mtime
            || meta.mtime_nsec() != sealed.mtime_nsec
            || meta.uid() != root
        {
            log::warn!("sealed tree changed at `{}`", path.display());
            return None;
        }
    }
    Some(manifest)
}

/// Build `target` from the sealed tree `tree` and swap it into place.
pub fn install(
    tree: &Path,
    manifest: &Manifest,
    target: &Path,
    owner: Option<(Uid, Gid)>,
) -> Result<(), ReleaseError> {
    let staging = staging_dir(target)?;
    let built = build(tree, manifest, &staging, owner);
    let swapped = built.and_then(|()| swap_into_place(&staging, target));
    if swapped.is_err() {
        let _ = remove_tree(&staging);
    }
    swapped
}

/// A fresh, empty directory beside `target`; stale ones of earlier, interrupted runs are removed.
pub(super) fn staging_dir(target: &Path) -> Result<PathBuf, ReleaseError> {
    let parent = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| ReleaseError::Io {
            path: target.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a directory name"),
        })?;
    fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let prefix = format!(".{name}.new-");
    if let Ok(children) = fs::read_dir(&parent) {
        for child in children.flatten() {
            let stale = child.file_name();
            let Some(pid) = stale.to_str().and_then(|s| s.strip_prefix(&prefix)) else {
                continue;
            };
            // Another install of the same target that is still running keeps its directory.
            if Path::new(&format!("/proc/{pid}")).exists() && pid != std::process::id().to_string()
            {
                continue;
            }
            {
                log::info!(
                    "removing `{}` left by an interrupted install",
                    child.path().display()
                );
                remove_tree(&child.path())?;
            }
        }
    }
    let staging = parent.join(format!("{prefix}{}", std::process::id()));
    fs::DirBuilder::new()
        .mode(0o755)
        .create(&staging)
        .map_err(io_err(&staging))?;
    Ok(staging)
}

fn build(
    tree: &Path,
    manifest: &Manifest,
    staging: &Path,
    owner: Option<(Uid, Gid)>,
) -> Result<(), ReleaseError> {
    let chown = |path: &Path| -> Result<(), ReleaseError> {
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::lchown(path, Some(uid.as_raw()), Some(gid.as_raw()))
                .map_err(io_err(path))?;
        }
        Ok(())
    };
    chown(staging)?;
    for sealed in &manifest.entries {
        let entry = &sealed.entry;
        let from = tree.join(&entry.path);
        let to = staging.join(&entry.path);
        match &entry.kind {
            Kind::Dir => {
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&to)
                    .map_err(io_err(&to))?;
                chown(&to)?;
            }
            Kind::File { .. } if is_shared(&entry.path) => match fs::hard_link(&from, &to) {
                Ok(()) => {}
                Err(err) if err.raw_os_error() == Some(nix::libc::EXDEV) => {
                    fs::copy(&from, &to).map_err(io_err(&to))?;
                }
                Err(err) => return Err(io_err(&to)(err)),
            },
            Kind::File { .. } => {
                fs::copy(&from, &to).map_err(io_err(&to))?;
                // The runner's self-update rewrites these: they are the runner's own.
                let mode = entry.mode | 0o200;
                fs::set_permissions(&to, fs::Permissions::from_mode(mode)).map_err(io_err(&to))?;
                chown(&to)?;
            }
            Kind::Symlink { target } => {
                std::os::unix::fs::symlink(target, &to).map_err(io_err(&to))?;
                chown(&to)?;
            }
        }
    }
    // Directory modes as the archive has them, plus the owner's write bit (self-update needs it).
    for sealed in manifest.entries.iter().rev() {
        if sealed.entry.kind == Kind::Dir {
            let to = staging.join(&sealed.entry.path);
            let mode = sealed.entry.mode | 0o700;
            fs::set_permissions(&to, fs::Permissions::from_mode(mode)).map_err(io_err(&to))?;
        }
    }
    Ok(())
}

fn is_shared(path: &str) -> bool {
    let top = path.split('/').next().unwrap_or_default();
    SHARED.contains(&top) && path.contains('/')
}

/// Make `staging` the content of `target`: exchange atomically when `target` exists, rename
/// otherwise; then remove what `target` held before.
pub(super) fn swap_into_place(staging: &Path, target: &Path) -> Result<(), ReleaseError> {
    // Data first, then the rename that publishes it: after a power loss the rename never points
    // at files whose data was not written.
    if let Ok(dir) = fs::File::open(staging) {
        let _ = nix::unistd::syncfs(&dir);
    }
    match fs::symlink_metadata(target) {
        Ok(_) => {
            renameat2(
                AT_FDCWD,
                staging,
                AT_FDCWD,
                target,
                RenameFlags::RENAME_EXCHANGE,
            )
            .map_err(|errno| ReleaseError::Io {
                path: target.to_path_buf(),
                source: io::Error::from(errno),
            })?;
            // `staging` now holds the old tree.
            sync_parent(target);
            remove_tree(staging)
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            fs::rename(staging, target).map_err(io_err(target))?;
            sync_parent(target);
            Ok(())
        }
        Err(err) => Err(io_err(target)(err)),
    }
}

fn sync_parent(target: &Path) {
    if let Some(parent) = target.parent() {
        if let Ok(dir) = fs::File::open(parent) {
            let _ = dir.sync_all();
        }
    }
}
