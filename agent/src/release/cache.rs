//! `/var/cache/runner-agent`: verified tarballs, one directory per version, shared by every
//! runner of the host.
//!
//! ```text
//! <cache>/<version>/<asset>                  verified tarball (re-hashed before every use)
//! <cache>/<version>/<asset>.sha256           the checksum it was verified against
//! <cache>/<version>/<asset>.partial          a download in progress (resumed next time)
//! <cache>/<version>/tree-linux-<arch>/       the extracted, sealed tree (see `tree`)
//! <cache>/<version>/.lock                    flock held while a version is fetched or unpacked
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use sha2::Digest as _;

use super::arch::Arch;
use super::checksum::Sha256;
use super::ReleaseError;
use crate::config::Version;

/// How many versions survive a prune.
pub const KEEP_VERSIONS: usize = 2;

/// The cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn new(root: &Path) -> Cache {
        Cache {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn version_dir(&self, version: Version) -> PathBuf {
        self.root.join(version.to_string())
    }

    pub fn tarball(&self, version: Version, asset: &str) -> PathBuf {
        self.version_dir(version).join(asset)
    }

    pub fn partial(&self, version: Version, asset: &str) -> PathBuf {
        self.version_dir(version).join(format!("{asset}.partial"))
    }

    fn record(&self, version: Version, asset: &str) -> PathBuf {
        self.version_dir(version).join(format!("{asset}.sha256"))
    }

    pub fn tree(&self, version: Version, arch: Arch) -> PathBuf {
        self.version_dir(version)
            .join(format!("tree-{}", arch.platform()))
    }

    /// Create the version's directory and hold its lock until the guard drops.
    pub fn lock(&self, version: Version) -> Result<Flock<File>, ReleaseError> {
        let dir = self.version_dir(version);
        fs::create_dir_all(&dir).map_err(|source| ReleaseError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| ReleaseError::Io {
                path: path.clone(),
                source,
            })?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| ReleaseError::Io {
            path,
            source: io::Error::from(errno),
        })
    }

    /// Whether the cached tarball exists and re-hashes to `expected`. A file that does not is
    /// removed (with its extracted tree), so that it is downloaded again.
    pub fn check(
        &self,
        version: Version,
        arch: Arch,
        asset: &str,
        expected: Sha256,
    ) -> Result<bool, ReleaseError> {
        let path = self.tarball(version, asset);
        let actual = match hash_file(&path) {
            Ok(actual) => actual,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(ReleaseError::Io { path, source }),
        };
        if actual == expected {
            return Ok(true);
        }
        log::warn!(
            "cached `{}` no longer matches its checksum (expected {expected}, actual {actual}); downloading it again",
            path.display()
        );
        remove_file_if_exists(&path)?;
        remove_tree(&self.tree(version, arch))?;
        Ok(false)
    }

    /// Move a verified partial file into place and record what it was verified against.
    pub fn commit(
        &self,
        version: Version,
        asset: &str,
        sha256: Sha256,
    ) -> Result<PathBuf, ReleaseError> {
        let record = self.record(version, asset);
        fs::write(&record, format!("{sha256}  {asset}\n")).map_err(|source| ReleaseError::Io {
            path: record,
            source,
        })?;
        let partial = self.partial(version, asset);
        let path = self.tarball(version, asset);
        fs::rename(&partial, &path).map_err(|source| ReleaseError::Io {
            path: partial,
            source,
        })?;
        Ok(path)
    }

    /// Remove every version directory but the [`KEEP_VERSIONS`] newest and `keep`.
    pub fn prune(&self, keep: Version) -> Result<Vec<Version>, ReleaseError> {
        let io_err = |source| ReleaseError::Io {
            path: self.root.clone(),
            source,
        };
        let mut versions: Vec<Version> = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            if let Some(version) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<Version>().ok())
            {
                versions.push(version);
            }
        }
        versions.sort_unstable_by(|a, b| b.cmp(a));
        let mut removed = Vec::new();
        for version in versions.into_iter().skip(KEEP_VERSIONS) {
            if version == keep {
                continue;
            }
            let dir = self.version_dir(version);
            // Never prune a version another process is fetching or unpacking right now.
            let Ok(file) = File::open(dir.join(".lock")) else {
                remove_tree(&dir)?;
                removed.push(version);
                continue;
            };
            if let Ok(_guard) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                remove_tree(&dir)?;
                log::info!("pruned runner {version} from the cache");
                removed.push(version);
            }
        }
        Ok(removed)
    }
}

/// The checksum a cached tarball was verified against when it was downloaded, if recorded.
pub fn recorded_sha256(root: &Path, version: Version, asset: &str) -> Option<Sha256> {
    let text = fs::read_to_string(Cache::new(root).record(version, asset)).ok()?;
    Sha256::parse(text.split_whitespace().next()?)
}

/// SHA-256 of a file's content.
pub fn hash_file(path: &Path) -> io::Result<Sha256> {
    let mut file = File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(Sha256::from_hasher(hasher));
        }
        hasher.update(&buffer[..read]);
    }
}

pub(super) fn remove_file_if_exists(path: &Path) -> Result<(), ReleaseError> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(ReleaseError::Io {
            path: path.to_path_buf(),
            source: err,
        }),
        _ => Ok(()),
    }
}

/// Remove a tree, read-only directories included.
pub(super) fn remove_tree(path: &Path) -> Result<(), ReleaseError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::PermissionDenied => {
            make_writable(path);
            fs::remove_dir_all(path).map_err(|source| ReleaseError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(source) => Err(ReleaseError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::symlink_metadata(path) {
        if meta.is_dir() {
            let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
            if let Ok(children) = fs::read_dir(path) {
                for child in children.flatten() {
                    make_writable(&child.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        text.parse().unwrap()
    }

    #[test]
    fn prune_keeps_the_two_newest_and_the_one_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        for version in ["2.300.0", "2.310.1", "2.320.0", "2.330.0", "2.9.0"] {
            fs::create_dir_all(cache.version_dir(v(version)).join("tree-linux-x64/bin")).unwrap();
        }
        fs::create_dir(dir.path().join("not-a-version")).unwrap();
        let mut removed = cache.prune(v("2.300.0")).unwrap();
        removed.sort();
        assert_eq!(removed, vec![v("2.9.0"), v("2.310.1")]);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["2.300.0", "2.320.0", "2.330.0", "not-a-version"]);
    }

    #[test]
    fn a_flipped_byte_in_a_cached_tarball_is_caught_and_the_file_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let version = v("2.336.0");
        let asset = Arch::X64.asset_name(version);
        fs::create_dir_all(cache.version_dir(version)).unwrap();
        let content = b"runner tarball bytes".repeat(1000);
        fs::write(cache.partial(version, &asset), &content).unwrap();
        let sha = Sha256::from_hasher(sha2::Sha256::new_with_prefix(&content));
        let path = cache.commit(version, &asset, sha).unwrap();
        assert!(cache.check(version, Arch::X64, &asset, sha).unwrap());
        assert_eq!(recorded_sha256(dir.path(), version, &asset), Some(sha));

        let mut flipped = content.clone();
        flipped[5000] ^= 0x01;
        fs::write(&path, &flipped).unwrap();
        assert!(!cache.check(version, Arch::X64, &asset, sha).unwrap());
        assert!(!path.exists(), "a corrupt cached file must not be reused");
    }
}
