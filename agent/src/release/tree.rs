//! The sealed tree in the cache, and the transactional install of a runner directory from it.
//!
//! A verified tarball is extracted once per host into `<cache>/<version>/tree-linux-<arch>/`:
//! owned by root, every write bit removed, with a manifest of what the archive held (kinds, modes,
//! sizes, inode numbers and mtimes at sealing time). A runner directory is then built beside its
//! target and renamed into place:
//! - every **directory** is created afresh and owned by the runner user, so the runner can add,
//!   delete and rename anything in its own tree;
//! - every **file** the package ships (`bin/` and `externals/`, ~460 MB in ~3,000 files, and the
//!   root scripts) is a **hard link** to the sealed tree: root's, mode `0444`/`0555`. The runner
//!   never writes into shipped files: its self-update creates new `bin.<ver>`/`externals.<ver>`
//!   directories, deletes the old ones and replaces the root scripts by delete-then-copy, all of
//!   which only need write access to the directories, which are its own. What it creates
//!   (`.runner`, `.credentials`, `.env`, `_diag/`, `_work/`, `runsvc.sh`, ...) is its own too.
//!   A runner user cannot write to, chmod or chown a shared file (not its owner, no write bit),
//!   so one runner cannot change another's files, and a second runner costs a few thousand
//!   `link(2)` calls and no data writes instead of 460 MB. Across file systems (`EXDEV`) a file
//!   is copied instead (`copy_file_range`, which reflinks where the file system can) and owned by
//!   the runner.
//!
//! Before reuse, the tree is checked against its manifest (every entry present with the same
//! kind, mode, size, inode and mtime, owned by root); a tree that fails is removed and extracted
//! again from the (re-hashed) tarball.
//!
//! The target is replaced with `renameat2(RENAME_EXCHANGE)` (or a plain rename when it did not
//! exist): a crash at any point leaves the old tree or the new one at `target`, never a mix.
//! Durability: the sealed tree's data is flushed (`syncfs`) once, before it is published; a
//! runner directory adds only directories and links (journaled metadata, committed in order
//! before the rename; copies made across file systems are `fsync`ed), so it needs no flush of
//! its own. Leftovers of an interrupted install (`.<name>.new-*`) are removed next time.

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
    // The tree's data reaches the disk before the rename that publishes it, once per version:
    // every runner directory made from it afterwards only adds metadata.
    sync_fs(dir);
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
    let swapped = built.and_then(|()| swap_into_place(&staging, target, false));
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
    let mut copied = Vec::new();
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
            Kind::File { .. } => match fs::hard_link(&from, &to) {
                Ok(()) => {}
                Err(err) if err.raw_os_error() == Some(nix::libc::EXDEV) => {
                    // Another file system: a copy of its own (a reflink where the file system
                    // can), which the runner may own.
                    fs::copy(&from, &to).map_err(io_err(&to))?;
                    chown(&to)?;
                    copied.push(to.clone());
                }
                Err(err) => return Err(io_err(&to)(err)),
            },
            Kind::Symlink { target } => {
                std::os::unix::fs::symlink(target, &to).map_err(io_err(&to))?;
                chown(&to)?;
            }
        }
    }
    // All at the end: the first commits the journal for all of them.
    for path in &copied {
        fs::File::open(path)
            .and_then(|file| file.sync_all())
            .map_err(io_err(path))?;
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

/// Make `staging` the content of `target`: exchange atomically when `target` exists, rename
/// otherwise; then remove what `target` held before. With `sync_data`, every file's data is
/// flushed first (`syncfs`), so that after a power loss the rename never points at files whose
/// data was not written; without it, the caller has made the data durable itself (directories and
/// links are journaled metadata, committed in order before the rename).
pub(super) fn swap_into_place(
    staging: &Path,
    target: &Path,
    sync_data: bool,
) -> Result<(), ReleaseError> {
    if sync_data {
        sync_fs(staging);
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
            if sync_data {
                sync_parent(target);
            }
            remove_tree(staging)
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            fs::rename(staging, target).map_err(io_err(target))?;
            if sync_data {
                sync_parent(target);
            }
            Ok(())
        }
        Err(err) => Err(io_err(target)(err)),
    }
}

fn sync_fs(dir: &Path) {
    if let Ok(dir) = fs::File::open(dir) {
        if let Err(errno) = nix::unistd::syncfs(&dir) {
            log::warn!("cannot sync the file system: {errno}");
        }
    }
}

fn sync_parent(target: &Path) {
    if let Some(parent) = target.parent() {
        if let Ok(dir) = fs::File::open(parent) {
            let _ = dir.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write};
    use std::process::Command;

    use super::*;
    use crate::release::unpack::{extract, Options};

    fn tarball() -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut add = |path: &str, content: &[u8], mode: u32| {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(mode);
            header.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut header, path, content).unwrap();
        };
        add("config.sh", b"#!/bin/sh\necho config\n", 0o755);
        add("bin/Runner.Listener", b"listener v2", 0o755);
        add("bin/runner.json", b"{}", 0o644);
        add("externals/node20/bin/node", b"node", 0o755);
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        tar.append_link(&mut header, "externals/node20/bin/nodejs", "node")
            .unwrap();
        let tar = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    fn sealed_tree(dir: &Path) -> (PathBuf, Manifest) {
        let tree = dir.join("tree");
        fs::create_dir(&tree).unwrap();
        let options = Options {
            read_only: true,
            ..Options::default()
        };
        let entries = extract(Cursor::new(tarball()), &tree, "t", &options).unwrap();
        let manifest = seal(&tree, entries).unwrap();
        (tree, manifest)
    }

    fn runner_user() -> (Uid, Gid) {
        let user = nix::unistd::User::from_name("ra-runner")
            .unwrap()
            .expect("ra-runner exists (scripts/setup)");
        (user.uid, user.gid)
    }

    fn as_runner(script: &str) -> bool {
        Command::new("runuser")
            .args(["-u", "ra-runner", "--", "/bin/sh", "-c", script])
            .status()
            .unwrap()
            .success()
    }

    #[test]
    fn runners_share_bin_and_externals_but_cannot_change_them() {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let (tree, manifest) = sealed_tree(tmp.path());
        assert!(verify(&tree).is_some());
        let owner = runner_user();
        let one = tmp.path().join("runners/one");
        let two = tmp.path().join("runners/two");
        install(&tree, &manifest, &one, Some(owner)).unwrap();
        install(&tree, &manifest, &two, Some(owner)).unwrap();

        let meta = |p: &Path| fs::symlink_metadata(p).unwrap();
        let shared = meta(&one.join("bin/Runner.Listener"));
        assert_eq!(
            shared.ino(),
            meta(&two.join("bin/Runner.Listener")).ino(),
            "hard-linked"
        );
        assert_eq!(shared.ino(), meta(&tree.join("bin/Runner.Listener")).ino());
        assert_eq!((shared.uid(), shared.mode() & 0o777), (0, 0o555));
        let script = meta(&one.join("config.sh"));
        assert_eq!(
            script.ino(),
            meta(&two.join("config.sh")).ino(),
            "hard-linked"
        );
        assert_eq!((script.uid(), script.mode() & 0o777), (0, 0o555));
        assert_eq!(meta(&one).uid(), owner.0.as_raw());
        assert_eq!(meta(&one.join("bin")).uid(), owner.0.as_raw());
        assert_eq!(
            fs::read_link(one.join("externals/node20/bin/nodejs")).unwrap(),
            Path::new("node")
        );

        let listener = one.join("bin/Runner.Listener");
        let l = listener.display();
        assert!(
            !as_runner(&format!("echo evil >> {l}")),
            "the runner user wrote a shared file"
        );
        assert!(
            !as_runner(&format!("chmod u+w {l}")),
            "the runner user chmod'ed a shared file"
        );
        assert_eq!(
            fs::read(two.join("bin/Runner.Listener")).unwrap(),
            b"listener v2"
        );
        // The runner's own files, and what its self-update does to the root scripts.
        assert!(as_runner(&format!("echo x > {}/.runner", one.display())));
        assert!(as_runner(&format!(
            "cd {} && rm -f config.sh && echo new > config.sh",
            one.display()
        )));
        assert_eq!(fs::read(one.join("config.sh")).unwrap(), b"new\n");
        assert_eq!(
            fs::read(two.join("config.sh")).unwrap(),
            b"#!/bin/sh\necho config\n"
        );
        // What the runner's self-update does: new versioned dirs, old ones deleted.
        assert!(as_runner(&format!(
            "cd {} && cp -r bin bin.2.999.0 && rm -rf bin && mv bin.2.999.0 bin",
            one.display()
        )));
        assert_eq!(
            fs::read(two.join("bin/Runner.Listener")).unwrap(),
            b"listener v2"
        );
        assert!(verify(&tree).is_some(), "the sealed tree is untouched");
    }

    #[test]
    fn an_existing_target_is_swapped_whole_and_leftovers_are_cleaned() {
        let tmp = tempfile::tempdir().unwrap();
        let (tree, manifest) = sealed_tree(tmp.path());
        let target = tmp.path().join("runner");
        fs::create_dir_all(target.join("bin")).unwrap();
        fs::write(target.join("bin/old-only"), b"old").unwrap();
        let stale = tmp.path().join(".runner.new-4194999");
        fs::create_dir(&stale).unwrap();
        install(&tree, &manifest, &target, None).unwrap();
        assert!(!target.join("bin/old-only").exists());
        assert_eq!(fs::read(target.join("bin/runner.json")).unwrap(), b"{}");
        let left: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            !left.iter().any(|name| name.starts_with(".runner.new-")),
            "{left:?}"
        );
    }

    #[test]
    fn a_changed_sealed_tree_fails_verification() {
        let tmp = tempfile::tempdir().unwrap();
        let (tree, _) = sealed_tree(tmp.path());
        let file = tree.join("bin/runner.json");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&file, b"[]").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o444)).unwrap();
        assert!(verify(&tree).is_none());
        let (tree2, _) = sealed_tree(&tmp.path().join("x").tap_mkdir());
        fs::remove_file(tree2.join("externals/node20/bin/nodejs")).unwrap();
        assert!(verify(&tree2).is_none());
    }

    trait TapMkdir {
        fn tap_mkdir(self) -> Self;
    }

    impl TapMkdir for PathBuf {
        fn tap_mkdir(self) -> Self {
            fs::create_dir_all(&self).unwrap();
            self
        }
    }
}
