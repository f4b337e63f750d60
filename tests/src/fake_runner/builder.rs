//! Builds `actions-runner-linux-<arch>-<ver>.tar.gz` with the real layout: root scripts,
//! `bin/` (the fake `Runner.Listener` and its `Runner.Worker`, templates, `runsvc.sh`), `externals/` (optionally padded
//! with many files of incompressible bytes so the archive has the size and file count of a real
//! release). Entries are named `./…` as in the real tarball; modes are kept.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::Digest as _;

/// Errors of the release builder.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot read the listener binary `{}`: {source}\nhint: build it with `cargo build -p runner-agent-tests --bin fake-runner-listener`", path.display())]
    Listener {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write `{}`: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unsupported arch `{arch}`\nhint: use x64, arm64 or arm")]
    Arch { arch: String },
}

/// What to build.
#[derive(Debug, Clone)]
pub struct ReleaseSpec {
    /// Runner version without `v`, e.g. `2.336.0`.
    pub version: String,
    /// `x64`, `arm64` or `arm`.
    pub arch: String,
    /// The compiled `fake-runner-listener` (see [`listener_binary`]).
    pub listener: PathBuf,
    /// Total bytes of padding under `externals/`.
    pub pad_bytes: u64,
    /// Number of padding files.
    pub pad_files: u32,
}

/// The archive written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltRelease {
    pub path: PathBuf,
    /// Lowercase hex SHA-256 of the archive.
    pub sha256: String,
    pub size: u64,
}

/// The layout's text files: (path in the archive, mode, content).
pub const LAYOUT: &[(&str, u32, &str)] = &[
    (
        "config.sh",
        0o755,
        include_str!("../../fake-runner/layout/config.sh"),
    ),
    (
        "env.sh",
        0o755,
        include_str!("../../fake-runner/layout/env.sh"),
    ),
    (
        "run.sh",
        0o755,
        include_str!("../../fake-runner/layout/run.sh"),
    ),
    (
        "run-helper.sh.template",
        0o755,
        include_str!("../../fake-runner/layout/run-helper.sh.template"),
    ),
    (
        "safe_sleep.sh",
        0o755,
        include_str!("../../fake-runner/layout/safe_sleep.sh"),
    ),
    (
        "bin/systemd.svc.sh.template",
        0o644,
        include_str!("../../fake-runner/layout/bin/systemd.svc.sh.template"),
    ),
    (
        "bin/actions.runner.service.template",
        0o644,
        include_str!("../../fake-runner/layout/bin/actions.runner.service.template"),
    ),
    (
        "bin/runsvc.sh",
        0o755,
        include_str!("../../fake-runner/layout/bin/runsvc.sh"),
    ),
];

/// The archive's file name.
pub fn asset_name(version: &str, arch: &str) -> String {
    format!("actions-runner-linux-{arch}-{version}.tar.gz")
}

/// The compiled `fake-runner-listener` of this build: next to the running executable or one
/// directory up (a test binary lives in `target/<profile>/deps/`).
pub fn listener_binary() -> PathBuf {
    crate::support::workspace_binary("fake-runner-listener")
}

/// A deterministic, fast PRNG (SplitMix64) for padding bytes.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Padding file sizes: skewed like a real `externals/` (a few large files, many small), summing
/// exactly to `total`.
fn pad_sizes(total: u64, files: u32, rng: &mut SplitMix) -> Vec<u64> {
    if files == 0 {
        return Vec::new();
    }
    let weights: Vec<u64> = (0..files)
        .map(|_| {
            let r = rng.next();
            // 1 in 32 files is heavy.
            if r.is_multiple_of(32) {
                64 + (r >> 40) % 192
            } else {
                1 + (r >> 40) % 4
            }
        })
        .collect();
    let sum: u64 = weights.iter().sum();
    let mut sizes: Vec<u64> = weights
        .iter()
        .map(|w| (u128::from(total) * u128::from(*w) / u128::from(sum.max(1))) as u64)
        .collect();
    let assigned: u64 = sizes.iter().sum();
    if let Some(first) = sizes.first_mut() {
        *first += total - assigned;
    }
    sizes
}

fn header(path: &str, size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(1001);
    h.set_gid(118);
    h.set_mtime(1_700_000_000);
    let name = format!("./{path}");
    // Written into the raw header so the `./` prefix the real tarball has is kept.
    let raw = &mut h.as_old_mut().name;
    let n = name.len().min(raw.len() - 1);
    raw[..n].copy_from_slice(&name.as_bytes()[..n]);
    h.set_cksum();
    h
}

/// Builds the release into `out_dir`.
pub fn build_release(spec: &ReleaseSpec, out_dir: &Path) -> Result<BuiltRelease, BuildError> {
    if !matches!(spec.arch.as_str(), "x64" | "arm64" | "arm") {
        return Err(BuildError::Arch {
            arch: spec.arch.clone(),
        });
    }
    let listener = std::fs::read(&spec.listener).map_err(|source| BuildError::Listener {
        path: spec.listener.clone(),
        source,
    })?;
    let path = out_dir.join(asset_name(&spec.version, &spec.arch));
    let werr = |source| BuildError::Write {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(out_dir).map_err(werr)?;
    let file = std::fs::File::create(&path).map_err(werr)?;
    let hashing = HashingWriter {
        inner: std::io::BufWriter::with_capacity(1 << 20, file),
        hasher: sha2::Sha256::new(),
        size: 0,
    };
    let gz = flate2::write::GzEncoder::new(hashing, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let dir = |tar: &mut tar::Builder<_>, p: &str| {
        tar.append(
            &header(&format!("{p}/"), 0, 0o755, tar::EntryType::Directory),
            std::io::empty(),
        )
    };
    let file_entry = |tar: &mut tar::Builder<_>, p: &str, mode: u32, data: &[u8]| {
        tar.append(
            &header(p, data.len() as u64, mode, tar::EntryType::Regular),
            data,
        )
    };
    (|| -> std::io::Result<()> {
        tar.append(
            &header("", 0, 0o755, tar::EntryType::Directory),
            std::io::empty(),
        )?;
        dir(&mut tar, "bin")?;
        dir(&mut tar, "externals")?;
        for (p, mode, text) in LAYOUT {
            file_entry(&mut tar, p, *mode, text.as_bytes())?;
        }
        file_entry(&mut tar, "bin/Runner.Listener", 0o755, &listener)?;
        // The per-job process: the same program, which dispatches on its name (a hard link, so
        // that its executable, `comm` and `argv[0]` all say `Runner.Worker`, as the real one's).
        let mut worker = header("bin/Runner.Worker", 0, 0o755, tar::EntryType::Link);
        worker.set_link_name("./bin/Runner.Listener")?;
        worker.set_cksum();
        tar.append(&worker, std::io::empty())?;
        file_entry(
            &mut tar,
            "bin/runnerversion",
            0o644,
            format!("{}\n", spec.version).as_bytes(),
        )?;
        file_entry(
            &mut tar,
            "bin/runnerarch",
            0o644,
            format!("{}\n", spec.arch).as_bytes(),
        )?;
        let mut rng = SplitMix(0x5EED ^ u64::from(spec.pad_files) ^ spec.pad_bytes);
        let sizes = pad_sizes(spec.pad_bytes, spec.pad_files, &mut rng);
        let mut buf = vec![0u8; 1 << 20];
        for (i, size) in sizes.iter().enumerate() {
            if i % 100 == 0 {
                dir(&mut tar, &format!("externals/pad{:03}", i / 100))?;
            }
            let name = format!("externals/pad{:03}/f{i:05}.bin", i / 100);
            let h = header(&name, *size, 0o644, tar::EntryType::Regular);
            let reader = PadReader {
                rng: &mut rng,
                left: *size,
                buf: &mut buf,
            };
            tar.append(&h, reader)?;
        }
        Ok(())
    })()
    .map_err(werr)?;
    let gz = tar.into_inner().map_err(werr)?;
    let mut hashing = gz.finish().map_err(werr)?;
    hashing.inner.flush().map_err(werr)?;
    Ok(BuiltRelease {
        path: path.clone(),
        sha256: hex::encode(hashing.hasher.finalize()),
        size: hashing.size,
    })
}

struct PadReader<'a> {
    rng: &'a mut SplitMix,
    left: u64,
    buf: &'a mut [u8],
}

impl std::io::Read for PadReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = (out.len() as u64).min(self.left).min(self.buf.len() as u64) as usize;
        self.rng.fill(&mut out[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

struct HashingWriter<W> {
    inner: W,
    hasher: sha2::Sha256,
    size: u64,
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hasher.update(&data[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_sizes_sum_exactly_and_are_deterministic() {
        let a = pad_sizes(200 << 20, 3000, &mut SplitMix(7));
        let b = pad_sizes(200 << 20, 3000, &mut SplitMix(7));
        assert_eq!(a, b);
        assert_eq!(a.len(), 3000);
        assert_eq!(a.iter().sum::<u64>(), 200 << 20);
        assert!(a.iter().max().unwrap() > &(a.iter().min().unwrap() * 10));
    }
}
