//! A started emulator with a published runner release, runner-like tarballs, and requests.

#![allow(dead_code)]

pub use runner_agent_tests::support::agentctl;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use runner_agent::config::VersionReq;
use runner_agent::release::{Arch, FetchRequest, RetryPolicy};
use runner_agent_tests::emulator::{AssetSource, Emulator, EmulatorOptions, ReleaseOptions};
use url::Url;

pub const V1: &str = "2.330.0";
pub const V2: &str = "2.331.0";
pub const DOWNLOAD_ROUTE: &str = "GET /actions/runner/releases/download/{tag}/{file}";
pub const OBJECT_ROUTE: &str = "GET /_objects/{sha256}";

pub async fn emulator() -> Emulator {
    Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator starts")
}

/// Publish `tarball` as the linux-x64 asset of `version`.
pub async fn publish(
    emu: &Emulator,
    version: &str,
    tarball: Vec<u8>,
    digest: bool,
    body_markers: bool,
) {
    emu.publish_release(
        version,
        vec![("linux-x64".to_owned(), AssetSource::Bytes(tarball))],
        ReleaseOptions {
            digest,
            body_markers,
        },
    )
    .await
    .expect("release published");
}

pub fn version(text: &str) -> runner_agent::config::Version {
    text.parse().unwrap()
}

/// A request for `version` (x64) against `emu`, with a fresh cache under `dir`, quick retries.
pub fn request(emu: &Emulator, dir: &Path, version_text: &str) -> FetchRequest {
    let mut request = FetchRequest::new(Url::parse(&emu.api_url()).unwrap(), dir.join("cache"));
    request.version = VersionReq::Pinned(version(version_text));
    request.arch = Some(Arch::X64);
    request.progress = false;
    request.retry = RetryPolicy {
        attempts: 4,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
    };
    request
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

pub fn asset(version_text: &str) -> String {
    format!("actions-runner-linux-x64-{version_text}.tar.gz")
}

/// A runner-like tarball: root scripts, `bin/` with a listener that names its version and a
/// 400 KB assembly of noise (so that a download can be cut in the middle), `externals/`.
pub fn runner_tarball(version_text: &str) -> Vec<u8> {
    // xorshift64: incompressible, so that the gzip'd tarball is as large as its content.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let noise: Vec<u8> = (0..400_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let mut builder = TarBuilder::new();
    builder.file("./config.sh", b"#!/bin/bash\necho configure\n", 0o755);
    builder.file("./run.sh", b"#!/bin/bash\necho run\n", 0o755);
    builder.dir("./bin/");
    builder.file(
        "./bin/Runner.Listener",
        format!("listener {version_text}\n").as_bytes(),
        0o755,
    );
    builder.file("./bin/Runner.Worker.dll", &noise, 0o644);
    builder.file("./externals/node20/bin/node", b"node", 0o755);
    builder.symlink("./externals/node20/bin/nodejs", "node");
    builder.gz()
}

/// A tar builder that writes names as given (the tar crate's own path setters refuse `..` and
/// absolute names, which the malicious cases need).
pub struct TarBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl TarBuilder {
    pub fn new() -> TarBuilder {
        TarBuilder {
            tar: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, name: &str, size: u64, mode: u32) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(mode);
        header.set_mtime(1_763_000_000);
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        header
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        let header = Self::header(tar::EntryType::Directory, name, 0, 0o755);
        self.tar.append(&header, std::io::empty()).unwrap();
        self
    }

    pub fn file(&mut self, name: &str, content: &[u8], mode: u32) -> &mut Self {
        let header = Self::header(tar::EntryType::Regular, name, content.len() as u64, mode);
        self.tar.append(&header, content).unwrap();
        self
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut header = Self::header(tar::EntryType::Symlink, name, 0, 0o777);
        header.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        header.set_cksum();
        self.tar.append(&header, std::io::empty()).unwrap();
        self
    }

    pub fn device(&mut self, name: &str) -> &mut Self {
        let mut header = Self::header(tar::EntryType::Char, name, 0, 0o666);
        header.set_device_major(1).unwrap();
        header.set_device_minor(3).unwrap();
        header.set_cksum();
        self.tar.append(&header, std::io::empty()).unwrap();
        self
    }

    pub fn gz(&mut self) -> Vec<u8> {
        let builder = std::mem::replace(&mut self.tar, tar::Builder::new(Vec::new()));
        let tar = builder.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }
}

/// Every path under `root`, relative, sorted (symlinks not followed).
pub fn tree(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(children) = std::fs::read_dir(&dir) else {
            continue;
        };
        for child in children {
            let path = child.unwrap().path();
            found.push(path.strip_prefix(root).unwrap().display().to_string());
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            }
        }
    }
    found.sort();
    found
}
