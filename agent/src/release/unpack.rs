//! Safe, pipelined extraction of a runner tarball.
//!
//! One thread inflates and parses the tar stream and checks every entry; a second thread creates
//! the files, so inflating overlaps with the writes that are the real cost (performance-floor.md).
//! Refused: absolute paths, `..`, writes through a link, links whose target leaves the tree,
//! device nodes and fifos, more than [`Limits::max_bytes`] of content. Modes are kept without
//! setuid, setgid and sticky bits. Symlinks are created last, after every other entry, and only
//! once the whole tree is known, so a later entry cannot turn an earlier link into an escape.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use bytes::Bytes;
use nix::unistd::{Gid, Uid};

use super::ReleaseError;

/// Bytes per data message between the two threads.
const CHUNK: usize = 128 << 10;
/// Messages in flight between the two threads (bounds memory to about `CHUNK * DEPTH`).
const DEPTH: usize = 16;

/// What an archive may contain.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Total size of all files.
    pub max_bytes: u64,
    /// Number of entries.
    pub max_entries: usize,
}

impl Default for Limits {
    /// The runner unpacks to about 0.5 GB in about 3,000 entries; four times that is plenty.
    fn default() -> Limits {
        Limits {
            max_bytes: 2 << 30,
            max_entries: 50_000,
        }
    }
}

/// How files are created.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub limits: Limits,
    /// Remove every write bit (the shared, read-only tree of the cache).
    pub read_only: bool,
    /// Owner of everything created.
    pub owner: Option<(Uid, Gid)>,
}

/// One entry of an extracted tree, in archive order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// Relative, normal path (UTF-8).
    pub path: String,
    pub kind: Kind,
    /// Permission bits as created.
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Dir,
    File { size: u64 },
    Symlink { target: String },
}

/// Extract the gzip-compressed tar `gz` into the existing, empty directory `dest`.
pub fn extract<R: BufRead>(
    gz: R,
    dest: &Path,
    source: &str,
    options: &Options,
) -> Result<Vec<Entry>, ReleaseError> {
    let (sender, receiver) = sync_channel::<Op>(DEPTH);
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| write_ops(receiver, dest, options));
        let parsed = parse(gz, source, options, &sender);
        drop(sender);
        let written = writer.join().unwrap_or_else(|_| {
            Err(ReleaseError::Io {
                path: dest.to_path_buf(),
                source: io::Error::other("the file writer thread panicked"),
            })
        });
        // A parse error explains a writer that stopped early; a writer error explains a parse
        // that could not send.
        match (parsed, written) {
            (Err(err @ ReleaseError::UnsafeEntry { .. }), _)
            | (Err(err @ ReleaseError::TooLarge { .. }), _) => Err(err),
            (_, Err(err)) => Err(err),
            (Err(err), Ok(())) => Err(err),
            (Ok(parsed), Ok(())) => Ok(parsed),
        }
    })
    .and_then(|parsed| finish(parsed, dest, options))
}

/// What the parser found; symlinks and directory modes are applied by [`finish`].
struct Parsed {
    entries: Vec<Entry>,
}

enum Op {
    Dir { path: PathBuf },
    Begin { path: PathBuf, mode: u32 },
    Data(Vec<u8>),
    End,
    HardLink { path: PathBuf, target: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Dir,
    File,
    Symlink,
}

fn unsafe_entry(path: impl Into<String>, reason: impl Into<String>) -> ReleaseError {
    ReleaseError::UnsafeEntry {
        path: path.into(),
        reason: reason.into(),
    }
}

fn parse<R: BufRead>(
    gz: R,
    source: &str,
    options: &Options,
    sender: &SyncSender<Op>,
) -> Result<Parsed, ReleaseError> {
    let archive_err = |source_err: io::Error| ReleaseError::Archive {
        source_name: source.to_owned(),
        source: source_err,
    };
    let send = |op: Op| sender.send(op).map_err(|_| writer_gone());
    let mut archive = tar::Archive::new(flate2::bufread::GzDecoder::new(gz));
    let mut nodes: HashMap<PathBuf, Node> = HashMap::new();
    let mut entries: Vec<Entry> = Vec::new();
    let mut total: u64 = 0;
    for item in archive.entries().map_err(archive_err)? {
        let mut item = item.map_err(archive_err)?;
        let raw = item.path().map_err(archive_err)?.into_owned();
        let shown = raw.to_string_lossy().into_owned();
        let Some(path) = normal_path(&raw).map_err(|reason| unsafe_entry(&shown, reason))? else {
            continue; // `./` itself
        };
        let Some(text) = path.to_str().map(str::to_owned) else {
            return Err(unsafe_entry(shown, "the name is not valid UTF-8"));
        };
        if entries.len() >= options.limits.max_entries {
            return Err(ReleaseError::TooLarge {
                source_name: source.to_owned(),
                limit: format!("{} entries", options.limits.max_entries),
            });
        }
        let entry_type = item.header().entry_type();
        let header_mode = match entry_type {
            // Links have no mode of their own.
            tar::EntryType::Symlink | tar::EntryType::Link => 0o777,
            _ => item.header().mode().map_err(archive_err)? & 0o777,
        };

        // Every ancestor must be a directory of this archive (created on demand), never a link.
        let mut ancestor = PathBuf::new();
        let parents: Vec<_> = path
            .parent()
            .map(|p| p.components().collect())
            .unwrap_or_default();
        for component in parents {
            ancestor.push(component);
            match nodes.get(&ancestor) {
                Some(Node::Dir) => {}
                Some(_) => {
                    return Err(unsafe_entry(
                        &text,
                        format!("`{}` is not a directory", ancestor.display()),
                    ))
                }
                None => {
                    nodes.insert(ancestor.clone(), Node::Dir);
                    let mode = dir_mode(0o755, options);
                    send(Op::Dir {
                        path: ancestor.clone(),
                    })?;
                    entries.push(Entry {
                        path: ancestor.to_string_lossy().into_owned(),
                        kind: Kind::Dir,
                        mode,
                    });
                }
            }
        }
        let existing = nodes.get(&path).copied();
        if existing.is_some() && !(existing == Some(Node::Dir) && entry_type.is_dir()) {
            return Err(unsafe_entry(text, "appears twice in the archive"));
        }

        match entry_type {
            tar::EntryType::Directory => {
                let mode = dir_mode(header_mode, options);
                if existing.is_none() {
                    nodes.insert(path.clone(), Node::Dir);
                    send(Op::Dir { path: path.clone() })?;
                    entries.push(Entry {
                        path: text,
                        kind: Kind::Dir,
                        mode,
                    });
                } else if let Some(entry) = entries.iter_mut().find(|e| e.path == text) {
                    entry.mode = mode;
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = item.header().size().map_err(archive_err)?;
                total = total.saturating_add(size);
                if total > options.limits.max_bytes {
                    return Err(ReleaseError::TooLarge {
                        source_name: source.to_owned(),
                        limit: format!("{} MB of content", options.limits.max_bytes >> 20),
                    });
                }
                let mode = file_mode(header_mode, options);
                nodes.insert(path.clone(), Node::File);
                send(Op::Begin {
                    path: path.clone(),
                    mode,
                })?;
                let mut remaining = size;
                while remaining > 0 {
                    let length = remaining.min(CHUNK as u64) as usize;
                    let mut buffer = vec![0u8; length];
                    item.read_exact(&mut buffer).map_err(archive_err)?;
                    remaining -= length as u64;
                    send(Op::Data(buffer))?;
                }
                send(Op::End)?;
                entries.push(Entry {
                    path: text,
                    kind: Kind::File { size },
                    mode,
                });
            }
            tar::EntryType::Link => {
                let target_raw = item
                    .link_name()
                    .map_err(archive_err)?
                    .ok_or_else(|| unsafe_entry(&text, "a hard link without a target"))?
                    .into_owned();
                let target = normal_path(&target_raw)
                    .ok()
                    .flatten()
                    .filter(|target| nodes.get(target) == Some(&Node::File))
                    .ok_or_else(|| {
                        unsafe_entry(
                            &text,
                            format!(
                                "hard link to `{}`, which is not a file of this archive",
                                target_raw.display()
                            ),
                        )
                    })?;
                let size = entries
                    .iter()
                    .find_map(|e| match &e.kind {
                        Kind::File { size } if Path::new(&e.path) == target => Some(*size),
                        _ => None,
                    })
                    .unwrap_or(0);
                let mode = entries
                    .iter()
                    .find(|e| Path::new(&e.path) == target)
                    .map_or(0o644, |e| e.mode);
                nodes.insert(path.clone(), Node::File);
                send(Op::HardLink {
                    path: path.clone(),
                    target,
                })?;
                entries.push(Entry {
                    path: text,
                    kind: Kind::File { size },
                    mode,
                });
            }
            tar::EntryType::Symlink => {
                let target = item
                    .link_name()
                    .map_err(archive_err)?
                    .ok_or_else(|| unsafe_entry(&text, "a symlink without a target"))?;
                let Some(target) = target.to_str().map(str::to_owned) else {
                    return Err(unsafe_entry(text, "the link target is not valid UTF-8"));
                };
                nodes.insert(path.clone(), Node::Symlink);
                entries.push(Entry {
                    path: text,
                    kind: Kind::Symlink { target },
                    mode: 0o777,
                });
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(unsafe_entry(text, "is a device node"))
            }
            tar::EntryType::Fifo => return Err(unsafe_entry(text, "is a fifo")),
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            other => {
                return Err(unsafe_entry(
                    text,
                    format!("has an unsupported entry type ({other:?})"),
                ))
            }
        }
    }
    // Every symlink must resolve inside the tree, following the other links of the archive.
    for entry in &entries {
        if let Kind::Symlink { target } = &entry.kind {
            check_link(&entry.path, target, &entries)?;
        }
    }
    Ok(Parsed { entries })
}

fn writer_gone() -> ReleaseError {
    ReleaseError::Io {
        path: PathBuf::new(),
        source: io::Error::other("the file writer stopped"),
    }
}

/// The relative path of an entry: normal components only (`./` prefixes dropped). `None` for the
/// archive root itself.
fn normal_path(raw: &Path) -> Result<Option<PathBuf>, &'static str> {
    let mut path = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(name) => path.push(name),
            Component::CurDir => {}
            Component::ParentDir => return Err("contains `..`"),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
        }
    }
    Ok((!path.as_os_str().is_empty()).then_some(path))
}

/// Resolve `target` of the link at `link` inside the tree, following the archive's other links;
/// refuse it when it leaves the tree or is absolute.
fn check_link(link: &str, target: &str, entries: &[Entry]) -> Result<(), ReleaseError> {
    let links: HashMap<&str, &str> = entries
        .iter()
        .filter_map(|e| match &e.kind {
            Kind::Symlink { target } => Some((e.path.as_str(), target.as_str())),
            _ => None,
        })
        .collect();
    let escape = || {
        unsafe_entry(
            link,
            format!("is a link to `{target}`, which is outside the tree"),
        )
    };
    if target.starts_with('/') {
        return Err(escape());
    }
    // A stack of normal components from the tree root; each pending item is (path parts to walk).
    let mut resolved: Vec<String> = link
        .split('/')
        .filter(|part| !part.is_empty())
        .map(str::to_owned)
        .collect();
    resolved.pop();
    let mut pending: Vec<String> = target.rsplit('/').map(str::to_owned).collect();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "" | "." => {}
            ".." => {
                if resolved.pop().is_none() {
                    return Err(escape());
                }
            }
            name => {
                resolved.push(name.to_owned());
                let here = resolved.join("/");
                if let Some(next) = links.get(here.as_str()) {
                    hops += 1;
                    if hops > 40 || next.starts_with('/') {
                        return Err(escape());
                    }
                    resolved.pop();
                    pending.extend(next.rsplit('/').map(str::to_owned));
                }
            }
        }
    }
    Ok(())
}

fn file_mode(mode: u32, options: &Options) -> u32 {
    if options.read_only {
        mode & 0o555
    } else {
        mode
    }
}

fn dir_mode(mode: u32, options: &Options) -> u32 {
    // Always searchable and writable by its owner while it is filled; final bits come at the end.
    if options.read_only {
        (mode & 0o555) | 0o500
    } else {
        mode | 0o700
    }
}

/// The writer thread: create what the parser sends.
fn write_ops(receiver: Receiver<Op>, dest: &Path, options: &Options) -> Result<(), ReleaseError> {
    let mut current: Option<(PathBuf, File)> = None;
    let io_err = |path: &Path, source: io::Error| ReleaseError::Io {
        path: path.to_path_buf(),
        source,
    };
    for op in receiver {
        match op {
            Op::Dir { path } => {
                let full = dest.join(&path);
                match fs::DirBuilder::new().mode(0o700).create(&full) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(err) => return Err(io_err(&full, err)),
                }
                if let Some((uid, gid)) = options.owner {
                    std::os::unix::fs::chown(&full, Some(uid.as_raw()), Some(gid.as_raw()))
                        .map_err(|err| io_err(&full, err))?;
                }
            }
            Op::Begin { path, mode } => {
                let full = dest.join(&path);
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&full)
                    .map_err(|err| io_err(&full, err))?;
                // The umask may have removed bits the archive asks for.
                file.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(|err| io_err(&full, err))?;
                if let Some((uid, gid)) = options.owner {
                    std::os::unix::fs::fchown(&file, Some(uid.as_raw()), Some(gid.as_raw()))
                        .map_err(|err| io_err(&full, err))?;
                }
                current = Some((full, file));
            }
            Op::Data(data) => {
                if let Some((path, file)) = current.as_mut() {
                    file.write_all(&data).map_err(|err| io_err(path, err))?;
                }
            }
            Op::End => current = None,
            Op::HardLink { path, target } => {
                let full = dest.join(&path);
                fs::hard_link(dest.join(target), &full).map_err(|err| io_err(&full, err))?;
            }
        }
    }
    Ok(())
}

/// Create the symlinks and give directories their final modes (deepest first).
fn finish(parsed: Parsed, dest: &Path, options: &Options) -> Result<Vec<Entry>, ReleaseError> {
    let io_err = |path: &Path, source: io::Error| ReleaseError::Io {
        path: path.to_path_buf(),
        source,
    };
    for entry in &parsed.entries {
        if let Kind::Symlink { target } = &entry.kind {
            let full = dest.join(&entry.path);
            std::os::unix::fs::symlink(target, &full).map_err(|err| io_err(&full, err))?;
            if let Some((uid, gid)) = options.owner {
                std::os::unix::fs::lchown(&full, Some(uid.as_raw()), Some(gid.as_raw()))
                    .map_err(|err| io_err(&full, err))?;
            }
        }
    }
    let mut dirs: Vec<&Entry> = parsed
        .entries
        .iter()
        .filter(|e| e.kind == Kind::Dir)
        .collect();
    dirs.sort_by_key(|e| std::cmp::Reverse(e.path.matches('/').count()));
    for entry in dirs {
        let full = dest.join(&entry.path);
        let mode = if options.read_only {
            entry.mode & 0o555
        } else {
            entry.mode
        };
        fs::set_permissions(&full, fs::Permissions::from_mode(mode))
            .map_err(|err| io_err(&full, err))?;
    }
    Ok(parsed.entries)
}

/// A [`BufRead`] over chunks that arrive on a channel (the download as it streams).
pub struct ChannelReader {
    receiver: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    pub fn new(receiver: tokio::sync::mpsc::Receiver<Bytes>) -> ChannelReader {
        ChannelReader {
            receiver,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let length = available.len().min(buf.len());
        buf[..length].copy_from_slice(&available[..length]);
        self.consume(length);
        Ok(length)
    }
}

impl BufRead for ChannelReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(&[]),
            }
        }
        Ok(&self.current)
    }

    fn consume(&mut self, amount: usize) {
        let _ = self.current.split_to(amount.min(self.current.len()));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// A gzip'd tar built entry by entry, with raw (unchecked) names.
    struct Builder {
        tar: tar::Builder<Vec<u8>>,
    }

    impl Builder {
        fn new() -> Builder {
            Builder {
                tar: tar::Builder::new(Vec::new()),
            }
        }

        fn header(kind: tar::EntryType, name: &str, size: u64, mode: u32) -> tar::Header {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_size(size);
            header.set_mode(mode);
            header.set_mtime(1_700_000_000);
            // Raw bytes: `set_path` itself refuses `..` and absolute names.
            let bytes = name.as_bytes();
            header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            header.set_cksum();
            header
        }

        fn dir(mut self, name: &str) -> Builder {
            let header = Self::header(tar::EntryType::Directory, name, 0, 0o755);
            self.tar.append(&header, io::empty()).unwrap();
            self
        }

        fn file(mut self, name: &str, content: &[u8], mode: u32) -> Builder {
            let header = Self::header(tar::EntryType::Regular, name, content.len() as u64, mode);
            self.tar.append(&header, content).unwrap();
            self
        }

        fn link(mut self, kind: tar::EntryType, name: &str, target: &str) -> Builder {
            let mut header = Self::header(kind, name, 0, 0o777);
            header.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
            header.set_cksum();
            self.tar.append(&header, io::empty()).unwrap();
            self
        }

        fn special(mut self, kind: tar::EntryType, name: &str) -> Builder {
            let header = Self::header(kind, name, 0, 0o644);
            self.tar.append(&header, io::empty()).unwrap();
            self
        }

        fn gz(self) -> Vec<u8> {
            let tar = self.tar.into_inner().unwrap();
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(&tar).unwrap();
            encoder.finish().unwrap()
        }
    }

    /// Unpack into `<tmp>/root/dest` and return the error and every path that exists under
    /// `<tmp>` afterwards besides `root/dest` itself.
    fn refused(archive: Vec<u8>, limits: Limits) -> (ReleaseError, Vec<String>) {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("root/dest");
        fs::create_dir_all(&dest).unwrap();
        let options = Options {
            limits,
            ..Options::default()
        };
        let err = extract(Cursor::new(archive), &dest, "test.tar.gz", &options).unwrap_err();
        let mut found = Vec::new();
        let mut stack = vec![tmp.path().to_path_buf()];
        while let Some(dir) = stack.pop() {
            for child in fs::read_dir(&dir).unwrap() {
                let path = child.unwrap().path();
                let rel = path.strip_prefix(tmp.path()).unwrap().display().to_string();
                if rel != "root" && rel != "root/dest" && !rel.starts_with("root/dest/") {
                    found.push(rel);
                }
                if path.is_dir() && !path.is_symlink() {
                    stack.push(path);
                }
            }
        }
        (err, found)
    }

    fn assert_unsafe(archive: Vec<u8>, path: &str, reason: &str) {
        let (err, outside) = refused(archive, Limits::default());
        let text = err.to_string();
        assert!(
            text.contains(&format!("refusing to unpack `{path}`")) && text.contains(reason),
            "{text}"
        );
        assert!(
            outside.is_empty(),
            "written outside the target: {outside:?}"
        );
    }

    #[test]
    fn parent_components_are_refused() {
        let archive = Builder::new()
            .dir("bin")
            .file("bin/../../evil", b"x", 0o644)
            .gz();
        assert_unsafe(archive, "bin/../../evil", "contains `..`");
    }

    #[test]
    fn absolute_paths_are_refused() {
        let archive = Builder::new()
            .file("/tmp/runner-agent-evil", b"x", 0o644)
            .gz();
        assert_unsafe(archive, "/tmp/runner-agent-evil", "is an absolute path");
        assert!(!Path::new("/tmp/runner-agent-evil").exists());
    }

    #[test]
    fn links_that_leave_the_tree_are_refused() {
        let archive = Builder::new()
            .link(tar::EntryType::Symlink, "bin/out", "../../../etc")
            .gz();
        assert_unsafe(archive, "bin/out", "outside the tree");
        let archive = Builder::new()
            .link(tar::EntryType::Symlink, "abs", "/etc/passwd")
            .gz();
        assert_unsafe(archive, "abs", "outside the tree");
        // Each link alone stays inside; followed together they leave.
        let archive = Builder::new()
            .link(tar::EntryType::Symlink, "a/up", "..")
            .link(tar::EntryType::Symlink, "b", "a/up/..")
            .gz();
        assert_unsafe(archive, "b", "outside the tree");
    }

    #[test]
    fn writes_through_a_link_are_refused() {
        let archive = Builder::new()
            .link(tar::EntryType::Symlink, "lib", "bin")
            .file("lib/x", b"x", 0o644)
            .gz();
        assert_unsafe(archive, "lib/x", "`lib` is not a directory");
        let archive = Builder::new()
            .link(tar::EntryType::Link, "hard", "/etc/passwd")
            .gz();
        assert_unsafe(archive, "hard", "not a file of this archive");
    }

    #[test]
    fn device_nodes_and_fifos_are_refused() {
        let archive = Builder::new().special(tar::EntryType::Char, "bin/tty").gz();
        assert_unsafe(archive, "bin/tty", "is a device node");
        let archive = Builder::new().special(tar::EntryType::Block, "sda").gz();
        assert_unsafe(archive, "sda", "is a device node");
        let archive = Builder::new().special(tar::EntryType::Fifo, "pipe").gz();
        assert_unsafe(archive, "pipe", "is a fifo");
    }

    #[test]
    fn oversized_archives_are_refused() {
        let limits = Limits {
            max_bytes: 1000,
            max_entries: 100,
        };
        let archive = Builder::new()
            .file("a", &[1u8; 600], 0o644)
            .file("b", &[2u8; 600], 0o644)
            .gz();
        let (err, outside) = refused(archive, limits);
        assert!(err.to_string().contains("holds more than"), "{err}");
        assert!(outside.is_empty());
    }

    #[test]
    fn a_runner_like_tree_is_unpacked_with_modes_links_and_without_setuid() {
        let big: Vec<u8> = (0..(CHUNK * 3 + 17)).map(|i| (i % 251) as u8).collect();
        let archive = Builder::new()
            .file("./config.sh", b"#!/bin/bash\n", 0o755)
            .file("bin/Runner.Listener", &big, 0o4755)
            .file("bin/data.json", b"{}", 0o644)
            .link(tar::EntryType::Symlink, "bin/current", "Runner.Listener")
            .link(
                tar::EntryType::Symlink,
                "externals/node/bin/npx",
                "../../../bin/data.json",
            )
            .link(tar::EntryType::Link, "bin/again.json", "bin/data.json")
            .gz();
        let tmp = tempfile::tempdir().unwrap();
        let entries = extract(Cursor::new(archive), tmp.path(), "t", &Options::default()).unwrap();
        assert_eq!(
            fs::read(tmp.path().join("bin/Runner.Listener")).unwrap(),
            big
        );
        let mode = |p: &str| {
            fs::symlink_metadata(tmp.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("bin/Runner.Listener"), 0o755, "setuid must be dropped");
        assert_eq!(mode("config.sh"), 0o755);
        assert_eq!(mode("bin/data.json"), 0o644);
        assert_eq!(
            fs::read_link(tmp.path().join("bin/current")).unwrap(),
            Path::new("Runner.Listener")
        );
        assert_eq!(
            fs::read(tmp.path().join("externals/node/bin/npx")).unwrap(),
            b"{}"
        );
        assert_eq!(fs::read(tmp.path().join("bin/again.json")).unwrap(), b"{}");
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "config.sh",
                "bin",
                "bin/Runner.Listener",
                "bin/data.json",
                "bin/current",
                "externals",
                "externals/node",
                "externals/node/bin",
                "externals/node/bin/npx",
                "bin/again.json"
            ]
        );
    }

    #[test]
    fn read_only_trees_lose_every_write_bit() {
        let archive = Builder::new()
            .dir("bin")
            .file("bin/x", b"x", 0o755)
            .file("y", b"y", 0o664)
            .gz();
        let tmp = tempfile::tempdir().unwrap();
        let options = Options {
            read_only: true,
            ..Options::default()
        };
        extract(Cursor::new(archive), tmp.path(), "t", &options).unwrap();
        let mode = |p: &str| {
            fs::metadata(tmp.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("bin/x"), 0o555);
        assert_eq!(mode("y"), 0o444);
        assert_eq!(mode("bin"), 0o555);
    }
}
