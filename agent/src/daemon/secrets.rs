//! Secret rotation without a restart: inotify on the directories holding the secret files.
//!
//! Watched: the directory of the configured secret (`pat_file`, the App's `private_key_file`,
//! `registration_token_file`; for a relative name both next to the configuration and in
//! `$CREDENTIALS_DIRECTORY`), `$CREDENTIALS_DIRECTORY` itself when systemd passes
//! credentials with `LoadCredential=`, and the file systemd copied the credential from
//! ([`super::credentials`]). Directories, not files: an atomic replace (write a new
//! file, rename it over the old one) gives the file a new inode that a watch on the old one would
//! never see. [`SecretWatch::changed`] resolves when a watched file was written, renamed into
//! place, created, removed or had its mode changed; the daemon then reloads the credentials,
//! closes open circuits and runs a pass at once.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt as _;
use inotify::{EventStream, Inotify, WatchDescriptor, WatchMask};

use crate::config::Config;

/// Events that arrive this soon after the first one belong to the same change.
const SETTLE: Duration = Duration::from_millis(30);

/// What is watched: directories, and in each the file names that matter (`None`: every file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub dir: PathBuf,
    pub names: Option<Vec<OsString>>,
}

/// The directories and names to watch for `config`.
pub fn watched(config: &Config, credentials_dir: Option<&Path>) -> Vec<Watched> {
    watched_with(config, credentials_dir, &[])
}

/// [`watched`], and `sources` too: the files systemd copied credentials from
/// ([`super::credentials`]).
pub fn watched_with(
    config: &Config,
    credentials_dir: Option<&Path>,
    sources: &[&Path],
) -> Vec<Watched> {
    let secret = config.github.auth.secret_file();
    let mut files = vec![secret.resolved.clone()];
    files.extend(sources.iter().map(|s| s.to_path_buf()));
    if secret.configured.is_relative() {
        let config_dir = config.path.parent().unwrap_or(Path::new(""));
        files.push(config_dir.join(&secret.configured));
        if let Some(dir) = credentials_dir {
            files.push(dir.join(&secret.configured));
        }
    }
    let mut out: Vec<Watched> = Vec::new();
    if let Some(dir) = credentials_dir {
        out.push(Watched {
            dir: dir.to_owned(),
            names: None,
        });
    }
    for file in files {
        let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
            continue;
        };
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir.to_owned()
        };
        match out.iter_mut().find(|w| w.dir == dir) {
            Some(Watched { names: None, .. }) => {}
            Some(Watched {
                names: Some(names), ..
            }) => {
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_owned());
                }
            }
            None => out.push(Watched {
                dir,
                names: Some(vec![name.to_owned()]),
            }),
        }
    }
    out
}

/// An inotify watch on the secret files' directories.
pub struct SecretWatch {
    stream: EventStream<Vec<u8>>,
    watches: Vec<(WatchDescriptor, Watched)>,
    /// A change seen, and when its events have settled: kept across a cancelled
    /// [`SecretWatch::changed`] (the daemon's `select!` drops it when another branch wins).
    pending: Option<(PathBuf, tokio::time::Instant)>,
}

impl SecretWatch {
    /// Watch the secrets of `config`. Directories that do not exist are skipped (logged).
    pub fn new(config: &Config) -> std::io::Result<SecretWatch> {
        SecretWatch::with_sources(config, &[])
    }

    /// [`SecretWatch::new`], and the files systemd copied credentials from.
    pub fn with_sources(config: &Config, sources: &[&Path]) -> std::io::Result<SecretWatch> {
        let credentials_dir = std::env::var_os("CREDENTIALS_DIRECTORY")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        let inotify = Inotify::init()?;
        let mask = WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_TO
            | WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::ATTRIB;
        let mut watches = Vec::new();
        for watched in watched_with(config, credentials_dir.as_deref(), sources) {
            match inotify.watches().add(&watched.dir, mask) {
                Ok(wd) => {
                    log::debug!("watching `{}` for secret changes", watched.dir.display());
                    watches.push((wd, watched));
                }
                Err(err) => log::warn!(
                    "cannot watch `{}` for secret changes, a new secret there needs `systemctl reload runner-agent`: {err}",
                    watched.dir.display()
                ),
            }
        }
        let stream = inotify.into_event_stream(vec![0u8; 4096])?;
        Ok(SecretWatch {
            stream,
            watches,
            pending: None,
        })
    }

    fn matters(&self, wd: &WatchDescriptor, name: Option<&OsString>) -> Option<PathBuf> {
        let (_, watched) = self.watches.iter().find(|(w, _)| w == wd)?;
        let name = name?;
        let hit = watched
            .names
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == name));
        hit.then(|| watched.dir.join(name))
    }

    /// Wait for a change of a watched secret; the path that changed. Cancel-safe: a change seen
    /// by a call that was dropped is returned by the next one.
    pub async fn changed(&mut self) -> PathBuf {
        loop {
            if let Some((path, settled)) = self.pending.clone() {
                // A writer's create + write + close, or several files at once: one change.
                let settle = tokio::time::sleep_until(settled);
                tokio::pin!(settle);
                loop {
                    tokio::select! {
                        _ = &mut settle => break,
                        next = self.stream.next() => if next.is_none() { break },
                    }
                }
                self.pending = None;
                return path;
            }
            let Some(event) = self.stream.next().await else {
                return std::future::pending().await;
            };
            let Ok(event) = event else { continue };
            if let Some(path) = self.matters(&event.wd, event.name.as_ref()) {
                self.pending = Some((path, tokio::time::Instant::now() + SETTLE));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, pat: &str) -> Config {
        let path = dir.join("agent.toml");
        std::fs::write(
            &path,
            format!(
                "version = 1\n[github]\nurl = \"https://github.com/o/r\"\npat_file = \"{pat}\"\n"
            ),
        )
        .unwrap();
        std::fs::write(dir.join("pat"), "ghp_x").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.join("pat"), std::fs::Permissions::from_mode(0o600)).unwrap();
        crate::config::load_with(&path, &crate::config::LoadOptions::default()).unwrap()
    }

    #[test]
    fn a_relative_secret_is_watched_next_to_the_config_and_in_the_credentials_dir() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), "pat");
        let creds = dir.path().join("creds");
        let seen = watched(&config, Some(&creds));
        assert_eq!(
            seen,
            vec![
                Watched {
                    dir: creds.clone(),
                    names: None
                },
                Watched {
                    dir: dir.path().to_owned(),
                    names: Some(vec![OsString::from("pat")])
                },
            ]
        );
        let seen = watched(&config, None);
        assert_eq!(
            seen,
            vec![Watched {
                dir: dir.path().to_owned(),
                names: Some(vec![OsString::from("pat")])
            }]
        );
    }

    #[tokio::test]
    async fn an_atomic_replace_of_the_secret_is_seen_and_other_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), "pat");
        let mut watch = SecretWatch::new(&config).unwrap();
        std::fs::write(dir.path().join("unrelated"), "x").unwrap();
        std::fs::write(dir.path().join(".pat.new"), "ghp_new").unwrap();
        std::fs::rename(dir.path().join(".pat.new"), dir.path().join("pat")).unwrap();
        let changed = tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .unwrap();
        assert_eq!(changed, dir.path().join("pat"));
    }

    #[tokio::test]
    async fn a_change_seen_by_a_cancelled_wait_is_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), "pat");
        let mut watch = SecretWatch::new(&config).unwrap();
        std::fs::write(dir.path().join(".pat.new"), "ghp_new").unwrap();
        std::fs::rename(dir.path().join(".pat.new"), dir.path().join("pat")).unwrap();
        // The wait is dropped while the change settles (another branch of a `select!` won).
        let cancelled = tokio::time::timeout(Duration::from_millis(10), watch.changed()).await;
        assert!(cancelled.is_err());
        let changed = tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .unwrap();
        assert_eq!(changed, dir.path().join("pat"));
    }
}
