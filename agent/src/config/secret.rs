//! Secret files: where a configured name is found, the checks `config check` runs on them, and
//! [`SecretFile::read`], the only place a secret value is read.
//!
//! A relative name is looked up in `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`) first,
//! then next to the configuration file. A secret file must be a regular, non-empty file that
//! grants group and others no access at all (mode `0600` or `0400`): anything else is an error,
//! not a warning, because a token readable by every local user is already leaked. Files in
//! `$CREDENTIALS_DIRECTORY` are systemd's to keep private and skip the mode check.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::error::ConfigError;
use super::model::SecretFile;
use super::rules::Problem;

/// Where `configured` is read from, given the configuration file's directory.
pub fn resolve(configured: &Path, config_dir: &Path, credentials_dir: Option<&Path>) -> PathBuf {
    if configured.is_absolute() {
        return configured.to_owned();
    }
    if let Some(credentials) = credentials_dir {
        let candidate = credentials.join(configured);
        if candidate.exists() {
            return candidate;
        }
    }
    config_dir.join(configured)
}

/// Why a secret file is refused.
enum Refusal {
    Unreadable(std::io::Error),
    Permissions(u32),
    Empty,
}

impl Refusal {
    fn into_error(self, path: &Path) -> ConfigError {
        let path = path.to_owned();
        match self {
            Refusal::Unreadable(source) => ConfigError::SecretUnreadable { path, source },
            Refusal::Permissions(mode) => ConfigError::SecretPermissions { path, mode },
            Refusal::Empty => ConfigError::SecretEmpty { path },
        }
    }
}

/// Whether `path` is a credential systemd provides. Those are exempt from the mode check: systemd
/// keeps them private to the service (mode `0400`), and the ACL it adds for a non-root service
/// user shows up as group read bits in the mode.
fn is_credential(path: &Path, credentials_dir: Option<&Path>) -> bool {
    credentials_dir.is_some_and(|dir| path.starts_with(dir))
}

/// `$CREDENTIALS_DIRECTORY`, if set.
fn credentials_dir_from_env() -> Option<PathBuf> {
    std::env::var_os("CREDENTIALS_DIRECTORY")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
}

/// Open the secret and check its kind and (unless systemd provides it) its mode, without reading
/// the value.
fn open(path: &Path, credentials_dir: Option<&Path>) -> Result<File, Refusal> {
    let file = File::open(path).map_err(Refusal::Unreadable)?;
    let metadata = file.metadata().map_err(Refusal::Unreadable)?;
    if !metadata.is_file() {
        return Err(Refusal::Unreadable(std::io::Error::other(
            "not a regular file",
        )));
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 && !is_credential(path, credentials_dir) {
        return Err(Refusal::Permissions(mode));
    }
    if metadata.len() == 0 {
        return Err(Refusal::Empty);
    }
    Ok(file)
}

/// What `config check` says about a secret file (its value is not read).
pub fn check(secret: &SecretFile, credentials_dir: Option<&Path>) -> Result<(), Problem> {
    let path = secret.resolved.display();
    match open(&secret.resolved, credentials_dir) {
        Ok(_) => Ok(()),
        Err(Refusal::Unreadable(source)) if source.kind() == std::io::ErrorKind::NotFound => {
            let hint = match credentials_dir {
                Some(dir) if secret.configured.is_relative() => format!(
                    "put it in `{}` (systemd `LoadCredential=`) or next to the configuration file, readable by the agent only",
                    dir.display()
                ),
                _ => "create it, readable by the agent only (`chmod 600`); a relative name is looked up in `$CREDENTIALS_DIRECTORY`, then next to the configuration file".to_owned(),
            };
            Err(Problem {
                message: format!("secret file `{path}` does not exist"),
                hint,
            })
        }
        Err(Refusal::Unreadable(source)) => Err(Problem {
            message: format!("cannot read secret file `{path}`: {source}"),
            hint: "the agent must be able to read it: check its owner and mode, and those of its directory".to_owned(),
        }),
        Err(Refusal::Permissions(mode)) => Err(Problem {
            message: format!(
                "secret file `{path}` is accessible by group or others (mode {mode:04o})"
            ),
            hint: format!("chmod 600 {path}"),
        }),
        Err(Refusal::Empty) => Err(Problem {
            message: format!("secret file `{path}` is empty"),
            hint: "write the secret into it".to_owned(),
        }),
    }
}

impl SecretFile {
    /// Read the secret: checked like `config check` does, trimmed, and registered with
    /// [`crate::redact::register`] before it is returned. The value is never logged.
    pub fn read(&self) -> Result<String, ConfigError> {
        let credentials_dir = credentials_dir_from_env();
        let mut file = open(&self.resolved, credentials_dir.as_deref())
            .map_err(|refusal| refusal.into_error(&self.resolved))?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(|source| ConfigError::SecretUnreadable {
                path: self.resolved.clone(),
                source,
            })?;
        let value = text.trim();
        if value.is_empty() {
            return Err(ConfigError::SecretEmpty {
                path: self.resolved.clone(),
            });
        }
        crate::redact::register(value);
        Ok(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_in(dir: &Path, name: &str, content: &str, mode: u32) -> SecretFile {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap_or_default();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap_or_default();
        SecretFile {
            configured: PathBuf::from(name),
            resolved: path,
        }
    }

    #[test]
    fn read_trims_and_registers_the_value() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let secret = secret_in(dir.path(), "pat", "  s3cret-pat-value-123\n", 0o600);
        assert_eq!(secret.read()?, "s3cret-pat-value-123");
        assert_eq!(
            crate::redact::redact("token s3cret-pat-value-123 used"),
            "token *** used"
        );
        Ok(())
    }

    #[test]
    fn read_refuses_group_readable_and_empty_files() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let open = secret_in(dir.path(), "open", "value-value", 0o640);
        let err = open.read().err().map(|err| err.to_string());
        assert_eq!(
            err,
            Some(format!(
                "secret file `{0}` is accessible by group or others (mode 0640)\n\nhint: chmod 600 {0}",
                open.resolved.display()
            ))
        );
        let empty = secret_in(dir.path(), "empty", " \n", 0o600);
        assert!(matches!(empty.read(), Err(ConfigError::SecretEmpty { .. })));
        Ok(())
    }

    #[test]
    fn relative_names_prefer_the_credentials_directory() -> Result<(), Box<dyn std::error::Error>> {
        let creds = tempfile::tempdir()?;
        let config_dir = Path::new("/etc/runner-agent");
        std::fs::write(creds.path().join("pat"), "x")?;
        assert_eq!(
            resolve(Path::new("pat"), config_dir, Some(creds.path())),
            creds.path().join("pat")
        );
        assert_eq!(
            resolve(Path::new("other"), config_dir, Some(creds.path())),
            config_dir.join("other")
        );
        assert_eq!(
            resolve(Path::new("/abs/pat"), config_dir, Some(creds.path())),
            PathBuf::from("/abs/pat")
        );
        Ok(())
    }
}
