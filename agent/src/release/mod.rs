//! The runner release supply chain: resolve → download → verify → cache → unpack → install.
//!
//! - [`Resolver`] picks the version (`latest` from the releases API, the scope's expected version
//!   from `actions/runners/downloads` when the token may read it, or a pin), the asset for this
//!   host's arch ([`Arch`]), its URL (or the configured mirror) and the expected SHA-256, in the
//!   order of [`checksum`]: asset digest, release-body markers, downloads API, config pin.
//! - [`fetch`] downloads into `<cache>/<version>/<asset>.partial`, hashing while it streams,
//!   resuming with `Range` and retrying with backoff, and renames into place only when the hash
//!   matches. Proxies come from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` (reqwest's own handling).
//! - [`fetch_and_install`] does the same and, when the tarball is not cached yet, unpacks it
//!   *while* it downloads (one pass: download ∥ hash ∥ inflate ∥ file writes) into the cache's
//!   sealed tree; the tree is published only if the hash matches. It then installs the runner
//!   directory from the sealed tree (hard links for `bin/` and `externals/`, see `tree`), which is
//!   what makes every further runner on the host cheap.
//! - [`install`] installs from an already fetched [`CachedRelease`]; [`unpack`] is the plain
//!   transactional extraction of a tarball into a directory (no sharing).
//!
//! A checksum that is missing or does not match is refused ([`ReleaseError::NoChecksum`],
//! [`ReleaseError::ChecksumMismatch`]) before anything is installed: the runner directory keeps
//! whatever verified version it had.

mod arch;
mod cache;
pub mod checksum;
mod download;
mod resolve;
mod tree;
mod unpack;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::unistd::{Gid, Uid};
use sha2::Digest as _;
use url::Url;

pub use arch::{Arch, SHIPPED};
pub use cache::{hash_file, Cache, KEEP_VERSIONS};
pub use checksum::{ChecksumSource, Sha256};
pub use download::TransferError;
pub use resolve::{mirror_url, Resolved, Resolver, DEFAULT_DOWNLOAD_BASE};
pub use unpack::{Entry, Kind, Limits};

use crate::config::{Auth, Config, Runner, Scope, Version, VersionReq};
use crate::github::GithubError;

/// Errors of the release supply chain.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("this host is `{machine}`, and actions/runner ships Linux packages only for {}\n\nhint: run the runner on a supported host, or pass `--arch` to fetch another host's package", SHIPPED)]
    UnsupportedArch { machine: String },
    #[error("cannot read the host's machine name")]
    Uname {
        #[source]
        source: io::Error,
    },
    #[error("cannot read {what} from GitHub")]
    Api {
        what: String,
        #[source]
        source: Box<GithubError>,
    },
    #[error("the release tag `{tag}` is not a runner version like `v2.336.0`")]
    BadTag { tag: String },
    #[error("the sha256 pin for `{asset}` is not 64 hex digits: `{value}`")]
    BadPin { asset: String, value: String },
    #[error("`{url}` is not a valid URL")]
    BadUrl {
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error("no checksum is known for `{url}`, refusing to install it\n\nhint: {hint}")]
    NoChecksum { url: String, hint: String },
    #[error("the sha256 pin for `{asset}` is {pin}, but the {source_name} says {github}, refusing to install it\n\nhint: check where the pin came from; remove it to trust GitHub")]
    PinConflict {
        asset: String,
        pin: String,
        github: String,
        source_name: &'static str,
    },
    #[error("checksum mismatch for `{url}`: expected {expected}, actual {actual}; the download was refused and the installed runner kept")]
    ChecksumMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("cannot download `{url}` (gave up after {attempts} attempts)")]
    Download {
        url: String,
        attempts: u32,
        #[source]
        source: TransferError,
    },
    #[error("`{source_name}` is not a valid runner tarball")]
    Archive {
        source_name: String,
        #[source]
        source: io::Error,
    },
    #[error("refusing to unpack `{path}`: it {reason}")]
    UnsafeEntry { path: String, reason: String },
    #[error("refusing to unpack `{source_name}`: it holds more than {limit}")]
    TooLarge { source_name: String, limit: String },
    #[error("cannot read the GitHub token")]
    Token(#[source] Box<crate::config::ConfigError>),
    #[error("i/o error at `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How often and how patiently a download is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Failed attempts in a row (without progress) before giving up.
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff: `base`, `2·base`, `4·base`, … capped at `max_delay`.
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// Everything [`fetch`] needs to know.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    /// REST base (`https://api.github.com`, GHES `/api/v3`, the emulator).
    pub api_url: Url,
    /// Bearer token for the API (a PAT); without it only public release data is read.
    pub token: Option<String>,
    /// The runners' scope, for `actions/runners/downloads`.
    pub scope: Option<Scope>,
    pub version: VersionReq,
    /// `None`: this host's arch.
    pub arch: Option<Arch>,
    /// Replaces `https://github.com/actions/runner/releases/download`.
    pub mirror: Option<Url>,
    /// SHA-256 pins by asset file name.
    pub pins: BTreeMap<String, String>,
    pub cache_dir: PathBuf,
    pub retry: RetryPolicy,
    /// A progress bar when stderr is a terminal (log lines otherwise).
    pub progress: bool,
    pub limits: Limits,
}

impl FetchRequest {
    /// A request with defaults: latest version, this host's arch, no token.
    pub fn new(api_url: Url, cache_dir: PathBuf) -> FetchRequest {
        FetchRequest {
            api_url,
            token: None,
            scope: None,
            version: VersionReq::Latest,
            arch: None,
            mirror: None,
            pins: BTreeMap::new(),
            cache_dir,
            retry: RetryPolicy::default(),
            progress: true,
            limits: Limits::default(),
        }
    }

    /// The request for `runner` (or the first runner's settings) of a loaded configuration.
    /// Reads the PAT when the configuration authenticates with one.
    pub fn from_config(
        config: &Config,
        runner: Option<&Runner>,
    ) -> Result<FetchRequest, ReleaseError> {
        let mut request = FetchRequest::new(
            config.github.api_url.clone(),
            config.agent.cache_dir.clone(),
        );
        request.scope = Some(config.github.scope.clone());
        if let Auth::Pat { file } = &config.github.auth {
            request.token = Some(
                file.read()
                    .map_err(|err| ReleaseError::Token(Box::new(err)))?,
            );
        }
        if let Some(runner) = runner.or(config.runners.first()) {
            request.version = runner.version.clone();
            request.mirror = runner.download_mirror.clone();
            request.pins = runner.sha256.clone();
        }
        Ok(request)
    }

    fn http(&self) -> Result<reqwest::Client, ReleaseError> {
        reqwest::Client::builder()
            .user_agent(crate::github::USER_AGENT)
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|source| ReleaseError::Api {
                what: "the HTTP client".to_owned(),
                source: Box::new(GithubError::Client(source)),
            })
    }
}

/// A verified tarball in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedRelease {
    pub version: Version,
    pub arch: Arch,
    /// `actions-runner-linux-x64-2.336.0.tar.gz`.
    pub asset: String,
    /// The verified tarball.
    pub path: PathBuf,
    pub sha256: Sha256,
    /// Where it was (or would have been) downloaded from.
    pub url: Url,
    /// Where the expected checksum came from.
    pub source: ChecksumSource,
    /// The cache it lives in.
    pub cache_dir: PathBuf,
}

impl CachedRelease {
    fn new(resolved: &Resolved, cache: &Cache) -> CachedRelease {
        CachedRelease {
            version: resolved.version,
            arch: resolved.arch,
            asset: resolved.asset.clone(),
            path: cache.tarball(resolved.version, &resolved.asset),
            sha256: resolved.sha256,
            url: resolved.url.clone(),
            source: resolved.source,
            cache_dir: cache.root().to_path_buf(),
        }
    }
}

/// Resolve, then download and verify into the cache unless a verified copy is there already.
pub async fn fetch(request: &FetchRequest) -> Result<CachedRelease, ReleaseError> {
    let resolved = Resolver::new(request)?.resolve().await?;
    let cache = Cache::new(&request.cache_dir);
    let _lock = cache.lock(resolved.version)?;
    let cached = CachedRelease::new(&resolved, &cache);
    if cache.check(
        resolved.version,
        resolved.arch,
        &resolved.asset,
        resolved.sha256,
    )? {
        log::info!(
            "runner {} ({}) is cached and verified",
            resolved.version,
            resolved.arch
        );
    } else {
        let actual = download(request, &resolved, &cache, None).await?;
        accept(&resolved, &cache, actual)?;
    }
    prune(&cache, resolved.version);
    Ok(cached)
}

/// [`fetch`] and [`install`] in one: a tarball that is not cached yet is unpacked while it
/// downloads. Blocks on file system work (run it where that is fine, as `agentctl` does).
pub async fn fetch_and_install(
    request: &FetchRequest,
    target: &Path,
    owner: Option<(Uid, Gid)>,
) -> Result<CachedRelease, ReleaseError> {
    let started = std::time::Instant::now();
    let resolved = Resolver::new(request)?.resolve().await?;
    log::debug!("resolved in {} ms", started.elapsed().as_millis());
    let cache = Cache::new(&request.cache_dir);
    let lock = cache.lock(resolved.version)?;
    let cached = CachedRelease::new(&resolved, &cache);
    let tree_dir = cache.tree(resolved.version, resolved.arch);
    let manifest = if cache.check(
        resolved.version,
        resolved.arch,
        &resolved.asset,
        resolved.sha256,
    )? {
        ensure_tree(&cached, &tree_dir, &request.limits)?
    } else {
        let staging = tree_staging(&cache, &tree_dir)?;
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        let options = unpack::Options {
            limits: request.limits,
            read_only: true,
            owner: None,
        };
        let source_name = resolved.url.to_string();
        let extract_into = staging.clone();
        let extractor = std::thread::spawn(move || {
            unpack::extract(
                unpack::ChannelReader::new(receiver),
                &extract_into,
                &source_name,
                &options,
            )
        });
        let downloaded = download(request, &resolved, &cache, Some(sender)).await;
        let extracted = extractor.join().unwrap_or_else(|_| {
            Err(ReleaseError::Io {
                path: staging.clone(),
                source: io::Error::other("the unpack thread panicked"),
            })
        });
        let verified = downloaded.and_then(|actual| accept(&resolved, &cache, actual));
        if let Err(err) = verified {
            let _ = cache::remove_tree(&staging);
            return Err(err);
        }
        match extracted {
            Ok(entries) => {
                let manifest = tree::seal(&staging, entries)?;
                fs::rename(&staging, &tree_dir).map_err(|source| ReleaseError::Io {
                    path: tree_dir.clone(),
                    source,
                })?;
                manifest
            }
            Err(err @ (ReleaseError::UnsafeEntry { .. } | ReleaseError::TooLarge { .. })) => {
                let _ = cache::remove_tree(&staging);
                return Err(err);
            }
            Err(err) => {
                log::info!(
                    "unpacking while downloading stopped ({err}); unpacking the cached file"
                );
                let _ = cache::remove_tree(&staging);
                ensure_tree(&cached, &tree_dir, &request.limits)?
            }
        }
    };
    log::debug!(
        "verified tarball and tree after {} ms",
        started.elapsed().as_millis()
    );
    tree::install(&tree_dir, &manifest, target, owner)?;
    log::debug!(
        "installed `{}` after {} ms",
        target.display(),
        started.elapsed().as_millis()
    );
    drop(lock);
    prune(&cache, resolved.version);
    Ok(cached)
}

/// Install the runner directory `target` from a fetched release: built beside `target` from the
/// cache's sealed tree (extracted first if needed) and swapped into place. `owner` gets the
/// directories and the files the runner may rewrite; see the `tree` module for what is shared.
pub fn install(
    cached: &CachedRelease,
    target: &Path,
    owner: Option<(Uid, Gid)>,
) -> Result<(), ReleaseError> {
    let cache = Cache::new(&cached.cache_dir);
    let _lock = cache.lock(cached.version)?;
    let tree_dir = cache.tree(cached.version, cached.arch);
    let manifest = ensure_tree(cached, &tree_dir, &Limits::default())?;
    tree::install(&tree_dir, &manifest, target, owner)
}

/// Unpack `tarball` into `target` transactionally (a directory beside it, then a swap), with the
/// same checks as every install, without any sharing: for tarballs that are not runner releases
/// from the cache.
pub fn unpack(
    tarball: &Path,
    target: &Path,
    owner: Option<(Uid, Gid)>,
    limits: Limits,
) -> Result<Vec<Entry>, ReleaseError> {
    let file = fs::File::open(tarball).map_err(|source| ReleaseError::Io {
        path: tarball.to_path_buf(),
        source,
    })?;
    let staging = tree::staging_dir(target)?;
    let options = unpack::Options {
        limits,
        read_only: false,
        owner,
    };
    let source_name = tarball.display().to_string();
    let result = unpack::extract(
        BufReader::with_capacity(1 << 20, file),
        &staging,
        &source_name,
        &options,
    )
    .and_then(|entries| tree::swap_into_place(&staging, target, true).map(|()| entries));
    if result.is_err() {
        let _ = cache::remove_tree(&staging);
    }
    result
}

async fn download(
    request: &FetchRequest,
    resolved: &Resolved,
    cache: &Cache,
    tap: download::Tap,
) -> Result<Sha256, ReleaseError> {
    let http = request.http()?;
    let partial = cache.partial(resolved.version, &resolved.asset);
    log::info!(
        "downloading `{}` (sha256 from the {})",
        resolved.url,
        resolved.source
    );
    download::Download {
        http: &http,
        url: &resolved.url,
        token: resolved.download_token.as_deref(),
        partial: &partial,
        retry: &request.retry,
        progress: request.progress,
    }
    .run(tap)
    .await
}

/// Compare the downloaded hash; move the file into place when it matches, drop it otherwise.
fn accept(resolved: &Resolved, cache: &Cache, actual: Sha256) -> Result<(), ReleaseError> {
    if actual != resolved.sha256 {
        cache::remove_file_if_exists(&cache.partial(resolved.version, &resolved.asset))?;
        return Err(ReleaseError::ChecksumMismatch {
            url: resolved.url.to_string(),
            expected: resolved.sha256.to_hex(),
            actual: actual.to_hex(),
        });
    }
    cache.commit(resolved.version, &resolved.asset, actual)?;
    log::info!(
        "verified `{}` (sha256 {actual}, from the {})",
        resolved.asset,
        resolved.source
    );
    Ok(())
}

/// The sealed tree of a cached release: reused when it is intact, (re)extracted from the tarball
/// otherwise, hashing the tarball again while it is read.
fn ensure_tree(
    cached: &CachedRelease,
    tree_dir: &Path,
    limits: &Limits,
) -> Result<tree::Manifest, ReleaseError> {
    if let Some(manifest) = tree::verify(tree_dir) {
        return Ok(manifest);
    }
    let cache = Cache::new(&cached.cache_dir);
    cache::remove_tree(tree_dir)?;
    let staging = tree_staging(&cache, tree_dir)?;
    let file = fs::File::open(&cached.path).map_err(|source| ReleaseError::Io {
        path: cached.path.clone(),
        source,
    })?;
    let mut reader = HashingReader::new(BufReader::with_capacity(1 << 20, file));
    let options = unpack::Options {
        limits: *limits,
        read_only: true,
        owner: None,
    };
    let source_name = cached.path.display().to_string();
    let extracted = unpack::extract(&mut reader, &staging, &source_name, &options);
    let actual = reader.finish().map_err(|source| ReleaseError::Io {
        path: cached.path.clone(),
        source,
    });
    let outcome = extracted.and_then(|entries| {
        let actual = actual?;
        if actual != cached.sha256 {
            cache::remove_file_if_exists(&cached.path)?;
            return Err(ReleaseError::ChecksumMismatch {
                url: cached.path.display().to_string(),
                expected: cached.sha256.to_hex(),
                actual: actual.to_hex(),
            });
        }
        let manifest = tree::seal(&staging, entries)?;
        fs::rename(&staging, tree_dir).map_err(|source| ReleaseError::Io {
            path: tree_dir.to_path_buf(),
            source,
        })?;
        Ok(manifest)
    });
    if outcome.is_err() {
        let _ = cache::remove_tree(&staging);
    }
    outcome
}

/// A fresh staging directory for a sealed tree (the version's lock is held, so any older one is
/// stale).
fn tree_staging(cache: &Cache, tree_dir: &Path) -> Result<PathBuf, ReleaseError> {
    let name = tree_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parent = tree_dir.parent().unwrap_or(cache.root());
    let staging = parent.join(format!(".{name}.tmp"));
    cache::remove_tree(&staging)?;
    fs::create_dir(&staging).map_err(|source| ReleaseError::Io {
        path: staging.clone(),
        source,
    })?;
    Ok(staging)
}

fn prune(cache: &Cache, keep: Version) {
    if let Err(err) = cache.prune(keep) {
        log::warn!("cannot prune the runner cache: {err}");
    }
}

/// A [`BufRead`] that hashes what is consumed through it.
struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
}

impl<R: BufRead> HashingReader<R> {
    fn new(inner: R) -> HashingReader<R> {
        HashingReader {
            inner,
            hasher: sha2::Sha256::new(),
        }
    }

    /// Hash the rest of the input (tar stops before the end of the gzip stream) and return the
    /// digest of everything.
    fn finish(mut self) -> io::Result<Sha256> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(Sha256::from_hasher(self.hasher))
    }
}

impl<R: BufRead> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let length = available.len().min(buf.len());
        buf[..length].copy_from_slice(&available[..length]);
        self.consume(length);
        Ok(length)
    }
}

impl<R: BufRead> BufRead for HashingReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        if let Ok(buffer) = self.inner.fill_buf() {
            self.hasher.update(&buffer[..amount.min(buffer.len())]);
        }
        self.inner.consume(amount);
    }
}
