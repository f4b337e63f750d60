//! A secret passed with systemd's `LoadCredential=`, rotated without restarting the agent.
//!
//! systemd copies a `LoadCredential=` file into `$CREDENTIALS_DIRECTORY` when the service starts,
//! so a secret replaced at its source (`/etc/runner-agent/github-pat`) is not in the copy the
//! daemon resolved. When the configured secret was found in `$CREDENTIALS_DIRECTORY`, the daemon
//! asks systemd where it came from: its own unit (from `/proc/self/cgroup`) and the unit's
//! `LoadCredential=` and `LoadCredentialEncrypted=` properties, read over D-Bus with `busctl`
//! (`systemctl show` of systemd 252 prints these as `[unprintable]`; when the bus does not answer
//! yet, it is asked again on each pass and secret change). The source file is watched
//! ([`super::secrets`]); once it changes, the secret is read from the source (checked like a
//! secret next to the configuration: a regular file, not empty, mode `0600` or `0400`, owned by
//! the agent's user) and every later reload reads it from there too. A credential systemd cannot
//! give again as it is (`LoadCredentialEncrypted=`, `SetCredential=`, `ImportCredential=`, a
//! socket, a credential of the system) is said once in the log: a new one needs a restart.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::{Auth, Config, ConfigError, SecretFile};

/// Where systemd looks up a relative `LoadCredential=` path, after the system's own credentials
/// (systemd.exec(5)).
pub const CREDSTORE: [&str; 4] = [
    "/etc/credstore",
    "/run/credstore",
    "/usr/local/lib/credstore",
    "/usr/lib/credstore",
];

/// The credentials the service manager itself received (passed on by a relative
/// `LoadCredential=` before the credstore is searched).
pub const SYSTEM_CREDENTIALS: &str = "/run/credentials/@system";

/// Errors of finding where a credential came from.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read `/proc/self/cgroup`")]
    Cgroup {
        #[source]
        source: std::io::Error,
    },
    #[error("this process is not in a systemd service (cgroup `{cgroup}`)")]
    NoUnit { cgroup: String },
    #[error("cannot run `busctl`")]
    Busctl {
        #[source]
        source: std::io::Error,
    },
    #[error("`busctl get-property` of `{property}` of `{unit}` failed: {stderr}")]
    Property {
        unit: String,
        property: &'static str,
        stderr: String,
    },
    #[error("cannot parse `busctl`'s `{property}` of `{unit}`")]
    Parse {
        unit: String,
        property: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// What a path is, for [`origin`] (a seam for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Other,
    Missing,
}

impl Kind {
    /// What `path` is on this host.
    pub fn of(path: &Path) -> Kind {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => Kind::File,
            Ok(meta) if meta.is_dir() => Kind::Dir,
            Ok(_) => Kind::Other,
            Err(_) => Kind::Missing,
        }
    }
}

/// Where a credential came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A file systemd copied: read it again when it changes. `setting` is the unit's line.
    File { path: PathBuf, setting: String },
    /// systemd cannot hand it over again as it is: `setting` says why.
    Fixed { setting: String },
}

/// The unit of a process from its `/proc/PID/cgroup`: the deepest `.service` (or `.scope`) in the
/// unified hierarchy's path (or in systemd's named one on a legacy hierarchy).
pub fn unit_from_cgroup(text: &str) -> Option<String> {
    let path = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .or_else(|| {
            text.lines()
                .find_map(|line| line.split_once(":name=systemd:").map(|(_, p)| p))
        })?;
    path.split('/')
        .rev()
        .find(|part| part.ends_with(".service") || part.ends_with(".scope"))
        .map(str::to_owned)
}

/// The D-Bus object path of `unit` (systemd's `bus_label_escape`).
pub fn object_path(unit: &str) -> String {
    let mut out = String::from("/org/freedesktop/systemd1/unit/");
    if unit.is_empty() {
        out.push('_');
    }
    for (i, byte) in unit.bytes().enumerate() {
        if byte.is_ascii_alphabetic() || (byte.is_ascii_digit() && i > 0) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("_{byte:02x}"));
        }
    }
    out
}

/// The pairs of an `a(ss)` property as `busctl --json=short get-property` prints it.
pub fn parse_pairs(json: &str) -> Result<Vec<(String, String)>, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Property {
        data: Vec<(String, String)>,
    }
    serde_json::from_str::<Property>(json).map(|p| p.data)
}

/// Where credential `name` came from, given the unit's `LoadCredential=` and
/// `LoadCredentialEncrypted=` pairs (id, path) and what paths are on this host.
pub fn origin(
    name: &str,
    load: &[(String, String)],
    encrypted: &[(String, String)],
    kind: &dyn Fn(&Path) -> Kind,
) -> Origin {
    let setting = |key: &str, id: &str, path: &str| {
        if path.is_empty() || path == id {
            format!("{key}={id}")
        } else {
            format!("{key}={id}:{path}")
        }
    };
    for (id, path) in load {
        let line = setting("LoadCredential", id, path);
        let path = if path.is_empty() { id.as_str() } else { path };
        if id == name {
            let source = Path::new(path);
            if source.is_absolute() {
                return match kind(source) {
                    Kind::Other => Origin::Fixed {
                        setting: format!("`{line}` (a socket)"),
                    },
                    _ => Origin::File {
                        path: source.to_owned(),
                        setting: line,
                    },
                };
            }
            if kind(&Path::new(SYSTEM_CREDENTIALS).join(source)) != Kind::Missing {
                return Origin::Fixed {
                    setting: format!("`{line}` (a credential of the system)"),
                };
            }
            return match CREDSTORE
                .iter()
                .map(|dir| Path::new(dir).join(source))
                .find(|candidate| kind(candidate) != Kind::Missing)
            {
                Some(found) => Origin::File {
                    path: found,
                    setting: line,
                },
                None => Origin::Fixed {
                    setting: format!("`{line}` (not found in the credstore)"),
                },
            };
        }
        // A directory: each of its files is the credential `ID_FILE`.
        if let Some(file) = name
            .strip_prefix(id.as_str())
            .and_then(|rest| rest.strip_prefix('_'))
        {
            let dir = Path::new(path);
            if dir.is_absolute() && !file.is_empty() && kind(dir) == Kind::Dir {
                return Origin::File {
                    path: dir.join(file),
                    setting: line,
                };
            }
        }
    }
    let encrypted = encrypted.iter().find(|(id, _)| {
        id == name
            || name
                .strip_prefix(id.as_str())
                .is_some_and(|rest| rest.starts_with('_'))
    });
    match encrypted {
        Some((id, path)) => Origin::Fixed {
            setting: format!("`{}`", setting("LoadCredentialEncrypted", id, path)),
        },
        None => Origin::Fixed {
            setting: "`SetCredential=` or `ImportCredential=`".to_owned(),
        },
    }
}

/// A credential of this service and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The credential's name (the file name in `$CREDENTIALS_DIRECTORY`).
    pub name: String,
    /// This service's unit.
    pub unit: String,
    /// The copy in `$CREDENTIALS_DIRECTORY`.
    pub copy: PathBuf,
    pub origin: Origin,
}

fn property(unit: &str, property: &'static str) -> Result<Vec<(String, String)>, CredentialsError> {
    let output = Command::new("busctl")
        .args(["--json=short", "get-property", "org.freedesktop.systemd1"])
        .arg(object_path(unit))
        .args(["org.freedesktop.systemd1.Service", property])
        .output()
        .map_err(|source| CredentialsError::Busctl { source })?;
    if !output.status.success() {
        return Err(CredentialsError::Property {
            unit: unit.to_owned(),
            property,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    parse_pairs(&String::from_utf8_lossy(&output.stdout)).map_err(|source| {
        CredentialsError::Parse {
            unit: unit.to_owned(),
            property,
            source,
        }
    })
}

/// Where `secret` came from, if it was read from `credentials_dir`: asks systemd.
pub fn lookup(
    secret: &SecretFile,
    credentials_dir: &Path,
) -> Result<Option<Found>, CredentialsError> {
    let Ok(name) = secret.resolved.strip_prefix(credentials_dir) else {
        return Ok(None);
    };
    let name = name.to_string_lossy().into_owned();
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|source| CredentialsError::Cgroup { source })?;
    let unit = unit_from_cgroup(&cgroup).ok_or_else(|| CredentialsError::NoUnit {
        cgroup: cgroup.trim().to_owned(),
    })?;
    let load = property(&unit, "LoadCredential")?;
    let encrypted = property(&unit, "LoadCredentialEncrypted")?;
    let origin = origin(&name, &load, &encrypted, &Kind::of);
    Ok(Some(Found {
        name,
        copy: secret.resolved.clone(),
        unit,
        origin,
    }))
}

/// The configured secret, to point it at another file.
pub fn secret_mut(auth: &mut Auth) -> &mut SecretFile {
    match auth {
        Auth::Pat { file } | Auth::RegistrationToken { file } => file,
        Auth::App {
            private_key_file, ..
        } => private_key_file,
    }
}

/// Read a credential's source: checked like a secret next to the configuration, and owned by the
/// agent's user (root), since whoever owns it chooses the agent's GitHub identity.
pub fn read_source(secret: &SecretFile) -> Result<String, ConfigError> {
    let meta =
        std::fs::metadata(&secret.resolved).map_err(|source| ConfigError::SecretUnreadable {
            path: secret.resolved.clone(),
            source,
        })?;
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(ConfigError::SecretUnreadable {
            path: secret.resolved.clone(),
            source: std::io::Error::other(format!(
                "owned by uid {}, not by the agent's uid {euid}",
                meta.uid()
            )),
        });
    }
    secret.read()
}

/// The daemon's view of its credential: where it came from, and whether the source changed since
/// the service started (then the secret is read from the source).
#[derive(Debug, Default)]
pub struct Rotation {
    found: Option<Found>,
    rotated: bool,
    /// Asking systemd failed (early in boot the bus may not answer yet): ask again later.
    unknown: bool,
}

impl Rotation {
    /// Find where the secret of `config` came from (logged; a credential that cannot be read
    /// again is said once).
    pub fn new(config: &Config) -> Rotation {
        Rotation::find(config, true)
    }

    fn find(config: &Config, warn: bool) -> Rotation {
        let Some(credentials_dir) = std::env::var_os("CREDENTIALS_DIRECTORY")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
        else {
            return Rotation::default();
        };
        let secret = config.github.auth.secret_file();
        let found = match lookup(secret, &credentials_dir) {
            Ok(found) => found,
            Err(err) if !warn => {
                log::debug!(
                    "still cannot tell where systemd loaded the credential `{}` from: {}",
                    secret.resolved.display(),
                    super::error_chain(&err)
                );
                return Rotation {
                    unknown: true,
                    ..Rotation::default()
                };
            }
            Err(err) => {
                log::warn!(
                    "cannot tell where systemd loaded the credential `{}` from, a new secret is only seen after a restart: {}; hint: after replacing it, `systemctl restart runner-agent.service`",
                    secret.resolved.display(),
                    super::error_chain(&err)
                );
                return Rotation {
                    unknown: true,
                    ..Rotation::default()
                };
            }
        };
        match &found {
            Some(Found {
                name,
                unit,
                origin: Origin::File { path, setting },
                ..
            }) => log::info!(
                "credential `{name}` comes from `{}` (`{setting}` of `{unit}`): a new secret there is picked up without a restart",
                path.display()
            ),
            Some(Found {
                name,
                unit,
                origin: Origin::Fixed { setting },
                ..
            }) => log::warn!(
                "credential `{name}` is passed with {setting} of `{unit}`, which systemd only reads when the service starts: a new secret is only seen after a restart; hint: use `LoadCredential={name}:/etc/runner-agent/{name}` to rotate it without one, or `systemctl restart {unit}` after changing it"
            ),
            None => {}
        }
        Rotation {
            found,
            rotated: false,
            unknown: false,
        }
    }

    /// If asking systemd failed before, ask again (quietly unless it answers). Whether the
    /// source to watch changed.
    pub fn retry(&mut self, config: &Config) -> bool {
        if !self.unknown {
            return false;
        }
        *self = Rotation::find(config, false);
        self.source().is_some()
    }

    /// [`Rotation::new`] for a reloaded configuration: a source that already changed stays the
    /// one read, and an unchanged origin is not logged again.
    pub fn renew(self, config: &Config) -> Rotation {
        let copy = &config.github.auth.secret_file().resolved;
        if self.found.as_ref().is_some_and(|f| &f.copy == copy) {
            return self;
        }
        Rotation::new(config)
    }

    /// The source file to watch, if the credential can be read again.
    pub fn source(&self) -> Option<&Path> {
        match &self.found {
            Some(Found {
                origin: Origin::File { path, .. },
                ..
            }) => Some(path),
            _ => None,
        }
    }

    /// Point a freshly loaded `config` at the source once it changed (the copy is stale).
    pub fn apply(&self, config: &mut Config) {
        let (Some(found), Some(source)) = (&self.found, self.source()) else {
            return;
        };
        let secret = secret_mut(&mut config.github.auth);
        if self.rotated && secret.resolved == found.copy {
            secret.resolved = source.to_owned();
        }
    }

    /// A watched file changed: if it is the credential's source, read the new secret from it and
    /// point `config` at it. Whether the secret was picked up from the source.
    pub fn changed(&mut self, path: &Path, config: &mut Config) -> bool {
        self.retry(config);
        let (Some(found), Some(source)) = (&self.found, self.source()) else {
            return false;
        };
        if path != source {
            return false;
        }
        let candidate = SecretFile {
            configured: config.github.auth.secret_file().configured.clone(),
            resolved: source.to_owned(),
        };
        match read_source(&candidate) {
            Ok(_) => {
                log::info!(
                    "picked up the rotated secret `{}` from `{}` without a restart (the copy in `{}` is from the service's start)",
                    found.name,
                    source.display(),
                    found.copy.display()
                );
                self.rotated = true;
                self.apply(config);
                true
            }
            Err(err) => {
                log::error!(
                    "the new secret in `{}` is refused, keeping the previous one: {}",
                    source.display(),
                    crate::redact::redact(&err.to_string())
                );
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn the_unit_comes_from_the_unified_or_the_named_hierarchy() {
        assert_eq!(
            unit_from_cgroup("0::/system.slice/runner-agent.service\n").as_deref(),
            Some("runner-agent.service")
        );
        // The probe in the e2e rootfs (systemd 252 in nspawn, hybrid hierarchy).
        let hybrid = "9:name=systemd:/system.slice/probe.service\n8:pids:/\n1:cpu:/\n0::/system.slice/probe.service\n";
        assert_eq!(unit_from_cgroup(hybrid).as_deref(), Some("probe.service"));
        let legacy = "2:cpu:/\n1:name=systemd:/system.slice/runner-agent.service\n";
        assert_eq!(
            unit_from_cgroup(legacy).as_deref(),
            Some("runner-agent.service")
        );
        // Delegate=yes: a sub-cgroup of the service.
        assert_eq!(
            unit_from_cgroup("0::/system.slice/runner-agent.service/main\n").as_deref(),
            Some("runner-agent.service")
        );
        assert_eq!(
            unit_from_cgroup("0::/user.slice/user-0.slice/session-3.scope\n").as_deref(),
            Some("session-3.scope")
        );
        assert_eq!(unit_from_cgroup("0::/\n"), None);
        assert_eq!(unit_from_cgroup(""), None);
    }

    #[test]
    fn object_paths_escape_like_systemd() {
        assert_eq!(
            object_path("runner-agent.service"),
            "/org/freedesktop/systemd1/unit/runner_2dagent_2eservice"
        );
        assert_eq!(
            object_path("probe.service"),
            "/org/freedesktop/systemd1/unit/probe_2eservice"
        );
        assert_eq!(
            object_path("9p@x.service"),
            "/org/freedesktop/systemd1/unit/_39p_40x_2eservice"
        );
    }

    #[test]
    fn busctl_json_is_parsed() {
        // What busctl of systemd 252 printed in the e2e rootfs.
        let out = r#"{"type":"a(ss)","data":[["we\"ird","/etc/ra/pat"],["d","/etc/ra/dir"],["github-pat","/etc/ra/pat"],["c","c"]]}"#;
        assert_eq!(
            parse_pairs(out).unwrap(),
            pairs(&[
                ("we\"ird", "/etc/ra/pat"),
                ("d", "/etc/ra/dir"),
                ("github-pat", "/etc/ra/pat"),
                ("c", "c")
            ])
        );
        assert_eq!(
            parse_pairs(r#"{"type":"a(ss)","data":[]}"#).unwrap(),
            vec![]
        );
        assert!(parse_pairs("a(ss) 1 \"x\" \"/y\"").is_err());
    }

    fn host(path: &Path) -> Kind {
        match path.to_str() {
            Some("/etc/runner-agent/github-pat" | "/usr/lib/credstore/pat") => Kind::File,
            Some("/etc/runner-agent/keys" | "/etc/credstore") => Kind::Dir,
            Some("/run/credentials/@system/from-host") => Kind::File,
            Some("/run/agent.sock") => Kind::Other,
            _ => Kind::Missing,
        }
    }

    #[test]
    fn an_absolute_load_credential_is_its_source() {
        let load = pairs(&[
            ("other", "/etc/other"),
            ("github-pat", "/etc/runner-agent/github-pat"),
        ]);
        assert_eq!(
            origin("github-pat", &load, &[], &host),
            Origin::File {
                path: PathBuf::from("/etc/runner-agent/github-pat"),
                setting: "LoadCredential=github-pat:/etc/runner-agent/github-pat".to_owned()
            }
        );
    }

    #[test]
    fn a_directory_gives_id_underscore_file() {
        let load = pairs(&[("keys", "/etc/runner-agent/keys")]);
        assert_eq!(
            origin("keys_app.pem", &load, &[], &host),
            Origin::File {
                path: PathBuf::from("/etc/runner-agent/keys/app.pem"),
                setting: "LoadCredential=keys:/etc/runner-agent/keys".to_owned()
            }
        );
    }

    #[test]
    fn a_relative_path_is_searched_in_the_system_credentials_then_the_credstore() {
        let load = pairs(&[("pat", "pat"), ("from-host", "from-host"), ("gone", "gone")]);
        assert_eq!(
            origin("pat", &load, &[], &host),
            Origin::File {
                path: PathBuf::from("/usr/lib/credstore/pat"),
                setting: "LoadCredential=pat".to_owned()
            }
        );
        assert_eq!(
            origin("from-host", &load, &[], &host),
            Origin::Fixed {
                setting: "`LoadCredential=from-host` (a credential of the system)".to_owned()
            }
        );
        assert_eq!(
            origin("gone", &load, &[], &host),
            Origin::Fixed {
                setting: "`LoadCredential=gone` (not found in the credstore)".to_owned()
            }
        );
    }

    #[test]
    fn encrypted_set_and_socket_credentials_cannot_be_read_again() {
        let encrypted = pairs(&[("github-pat", "/etc/credstore.encrypted/github-pat")]);
        assert_eq!(
            origin("github-pat", &[], &encrypted, &host),
            Origin::Fixed {
                setting: "`LoadCredentialEncrypted=github-pat:/etc/credstore.encrypted/github-pat`"
                    .to_owned()
            }
        );
        assert_eq!(
            origin("github-pat", &pairs(&[("x", "/etc/x")]), &[], &host),
            Origin::Fixed {
                setting: "`SetCredential=` or `ImportCredential=`".to_owned()
            }
        );
        assert_eq!(
            origin("pat", &pairs(&[("pat", "/run/agent.sock")]), &[], &host),
            Origin::Fixed {
                setting: "`LoadCredential=pat:/run/agent.sock` (a socket)".to_owned()
            }
        );
    }

    fn config_with_copy(dir: &Path) -> (Config, PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt as _;
        let creds = dir.join("creds");
        let etc = dir.join("etc");
        std::fs::create_dir_all(&creds).unwrap();
        std::fs::create_dir_all(&etc).unwrap();
        let path = etc.join("agent.toml");
        std::fs::write(
            &path,
            "version = 1\n[github]\nurl = \"https://github.com/o/r\"\npat_file = \"github-pat\"\n",
        )
        .unwrap();
        let copy = creds.join("github-pat");
        let source = etc.join("github-pat");
        for (file, value) in [
            (&copy, "ghp_copy_from_the_start"),
            (&source, "ghp_copy_from_the_start"),
        ] {
            std::fs::write(file, value).unwrap();
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let options = crate::config::LoadOptions {
            credentials_dir: Some(creds.clone()),
            ..Default::default()
        };
        let config = crate::config::load_with(&path, &options).unwrap();
        assert_eq!(config.github.auth.secret_file().resolved, copy);
        (config, copy, source)
    }

    #[test]
    fn a_changed_source_is_read_from_then_on_and_a_refused_one_is_not() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (mut config, copy, source) = config_with_copy(dir.path());
        let mut rotation = Rotation {
            found: Some(Found {
                name: "github-pat".to_owned(),
                unit: "runner-agent.service".to_owned(),
                copy: copy.clone(),
                origin: Origin::File {
                    path: source.clone(),
                    setting: format!("LoadCredential=github-pat:{}", source.display()),
                },
            }),
            rotated: false,
            unknown: false,
        };
        // Nothing changed yet: the copy is read.
        let mut fresh = config.clone();
        rotation.apply(&mut fresh);
        assert_eq!(fresh.github.auth.secret_file().resolved, copy);

        // Another file in the watched directory: nothing happens.
        assert!(!rotation.changed(&dir.path().join("etc/other"), &mut config));

        // A new secret readable by the group is refused, the copy stays.
        std::fs::write(&source, "ghp_rotated_but_open").unwrap();
        std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(!rotation.changed(&source, &mut config));
        assert_eq!(config.github.auth.secret_file().resolved, copy);

        // Mode 0600: picked up, read from the source, registered for redaction.
        std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&source, "ghp_rotated_secret_value\n").unwrap();
        assert!(rotation.changed(&source, &mut config));
        assert_eq!(config.github.auth.secret_file().resolved, source);
        assert_eq!(
            config.github.auth.secret_file().read().unwrap(),
            "ghp_rotated_secret_value"
        );
        assert_eq!(
            crate::redact::redact("token ghp_rotated_secret_value"),
            "token ***"
        );

        // A reloaded configuration resolves to the stale copy again: pointed at the source.
        let mut reloaded = fresh.clone();
        let rotation = rotation.renew(&reloaded);
        rotation.apply(&mut reloaded);
        assert_eq!(reloaded.github.auth.secret_file().resolved, source);
    }
}
