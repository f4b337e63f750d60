//! How the client authenticates: a personal access token, a GitHub App installation, a raw
//! registration token (which cannot call the REST API), or nothing.
//!
//! Secrets are read from their files through [`SecretFile::read`] (which registers them for
//! redaction) and re-read when the file changes (same path, new mtime, size or inode), so a daemon
//! picks up a rotated token without restarting. An App's installation token is minted with an
//! RS256 JWT, cached, and minted again five minutes before it expires.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;

use super::GithubError;
use crate::config::{Auth, SecretFile};

/// Mint a new installation token this long before the cached one expires.
pub(crate) const INSTALLATION_REFRESH_MARGIN: time::Duration = time::Duration::minutes(5);

/// The clock the client reads for token expiry, JWT times and rate-limit resets (sleeps use
/// `tokio::time`). Tests pass the emulator's clock.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> OffsetDateTime + Send + Sync>);

impl Clock {
    /// The system's UTC clock.
    pub fn system() -> Clock {
        Clock(Arc::new(OffsetDateTime::now_utc))
    }

    /// A clock read from `now`.
    pub fn from_fn(now: impl Fn() -> OffsetDateTime + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now))
    }

    pub fn now(&self) -> OffsetDateTime {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

/// What identifies a version of a secret file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    ino: u64,
}

/// A secret value: given as is, or read from a file and re-read when the file changes.
#[derive(Clone)]
pub struct Secret(Source);

#[derive(Clone)]
enum Source {
    Literal(String),
    File {
        file: SecretFile,
        cache: Arc<Mutex<Option<(Stamp, String)>>>,
    },
}

impl Secret {
    fn literal(value: String) -> Secret {
        crate::redact::register(&value);
        Secret(Source::Literal(value))
    }

    fn file(file: &SecretFile) -> Secret {
        Secret(Source::File {
            file: file.clone(),
            cache: Arc::new(Mutex::new(None)),
        })
    }

    /// The configured path, for messages.
    pub(crate) fn path(&self) -> Option<&std::path::Path> {
        match &self.0 {
            Source::Literal(_) => None,
            Source::File { file, .. } => Some(&file.resolved),
        }
    }

    /// The file's modification time, if the secret comes from a file.
    pub(crate) fn modified(&self) -> Option<std::time::SystemTime> {
        match &self.0 {
            Source::Literal(_) => None,
            Source::File { file, .. } => std::fs::metadata(&file.resolved)
                .ok()
                .and_then(|m| m.modified().ok()),
        }
    }

    /// The value, re-read when the file changed since the last read.
    pub(crate) fn value(&self) -> Result<String, GithubError> {
        let (file, cache) = match &self.0 {
            Source::Literal(value) => return Ok(value.clone()),
            Source::File { file, cache } => (file, cache),
        };
        let stamp = std::fs::metadata(&file.resolved).ok().map(|m| Stamp {
            modified: m.modified().ok(),
            len: m.len(),
            ino: m.ino(),
        });
        let mut cached = cache.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(stamp), Some((seen, value))) = (stamp, cached.as_ref()) {
            if stamp == *seen {
                return Ok(value.clone());
            }
        }
        let value = file.read().map_err(|source| GithubError::Secret {
            path: file.resolved.clone(),
            source: Box::new(source),
        })?;
        if let Some(stamp) = stamp {
            *cached = Some((stamp, value.clone()));
        }
        Ok(value)
    }

    fn forget(&self) {
        if let Source::File { cache, .. } = &self.0 {
            *cache.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}

/// A minted installation token and when it expires (GitHub's clock).
#[derive(Clone)]
pub(crate) struct InstallationToken {
    pub token: String,
    pub expires_at: OffsetDateTime,
}

/// A GitHub App installation.
#[derive(Clone)]
pub struct AppCredentials {
    pub(crate) app_id: u64,
    pub(crate) installation_id: u64,
    pub(crate) key: Secret,
    /// The cached installation token; a tokio mutex so concurrent callers mint once.
    pub(crate) token: Arc<tokio::sync::Mutex<Option<InstallationToken>>>,
}

impl AppCredentials {
    /// An RS256 JWT for the App: `iat` 60 s in the past (clock drift), `exp` 9 minutes ahead
    /// (GitHub allows at most 10), `iss` = the App id.
    pub(crate) fn jwt(&self, now: OffsetDateTime) -> Result<String, GithubError> {
        let pem = self.key.value()?;
        let path = self.key.path().map(ToOwned::to_owned).unwrap_or_default();
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|source| {
            GithubError::AppKey {
                path: path.clone(),
                source,
            }
        })?;
        let now = now.unix_timestamp();
        let claims = serde_json::json!({
            "iat": now - 60,
            "exp": now + 9 * 60,
            "iss": self.app_id.to_string(),
        });
        let jwt = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &key,
        )
        .map_err(|source| GithubError::AppKey { path, source })?;
        crate::redact::register(&jwt);
        Ok(jwt)
    }
}

/// How the client authenticates.
#[derive(Clone, Default)]
pub enum Credentials {
    /// No `Authorization` header (public data only; 60 requests per hour).
    #[default]
    Anonymous,
    /// A classic (`ghp_…`) or fine-grained (`github_pat_…`) personal access token, or any other
    /// bearer token.
    Pat(Secret),
    /// A GitHub App installation.
    App(AppCredentials),
    /// A registration token handed over as is: only `config.sh` can use it.
    RegistrationToken(Secret),
}

/// What kind of token the credentials are, for naming missing permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenFlavor {
    Classic,
    FineGrained,
    App,
    None,
}

impl Credentials {
    /// The credentials `[github]` configures. Nothing is read yet: secret files are read on first
    /// use and re-read when they change.
    pub fn from_config(auth: &Auth) -> Result<Credentials, GithubError> {
        Ok(match auth {
            Auth::Pat { file } => Credentials::Pat(Secret::file(file)),
            Auth::App {
                app_id,
                installation_id,
                private_key_file,
            } => Credentials::App(AppCredentials {
                app_id: *app_id,
                installation_id: *installation_id,
                key: Secret::file(private_key_file),
                token: Arc::new(tokio::sync::Mutex::new(None)),
            }),
            Auth::RegistrationToken { file } => Credentials::RegistrationToken(Secret::file(file)),
        })
    }

    /// A personal access token given as a value (registered for redaction).
    pub fn pat(token: impl Into<String>) -> Credentials {
        Credentials::Pat(Secret::literal(token.into()))
    }

    /// A GitHub App installation whose private key (PEM) is given as a value.
    pub fn app(app_id: u64, installation_id: u64, key_pem: impl Into<String>) -> Credentials {
        Credentials::App(AppCredentials {
            app_id,
            installation_id,
            key: Secret::literal(key_pem.into()),
            token: Arc::new(tokio::sync::Mutex::new(None)),
        })
    }

    /// A raw registration token given as a value.
    pub fn registration_token(token: impl Into<String>) -> Credentials {
        Credentials::RegistrationToken(Secret::literal(token.into()))
    }

    /// Forget every cached secret and installation token: the next request reads the files and
    /// mints again.
    pub async fn reload(&self) {
        match self {
            Credentials::Anonymous => {}
            Credentials::Pat(secret) | Credentials::RegistrationToken(secret) => secret.forget(),
            Credentials::App(app) => {
                app.key.forget();
                *app.token.lock().await = None;
            }
        }
    }

    /// `pat`, `app`, `registration token` or `none`, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Credentials::Anonymous => "none",
            Credentials::Pat(_) => "pat",
            Credentials::App(_) => "app",
            Credentials::RegistrationToken(_) => "registration token",
        }
    }

    /// The file holding the secret, if any.
    pub fn secret_path(&self) -> Option<&std::path::Path> {
        match self {
            Credentials::Anonymous => None,
            Credentials::Pat(s) | Credentials::RegistrationToken(s) => s.path(),
            Credentials::App(app) => app.key.path(),
        }
    }

    pub(crate) fn flavor(&self) -> Result<TokenFlavor, GithubError> {
        Ok(match self {
            Credentials::Anonymous | Credentials::RegistrationToken(_) => TokenFlavor::None,
            Credentials::App(_) => TokenFlavor::App,
            Credentials::Pat(secret) => {
                if secret.value()?.starts_with("github_pat_") {
                    TokenFlavor::FineGrained
                } else {
                    TokenFlavor::Classic
                }
            }
        })
    }

    /// The hint of a `401`: which secret to replace.
    pub(crate) fn bad_credentials_hint(&self) -> String {
        match self {
            Credentials::Anonymous => "this request needs credentials: configure `pat_file` or `[github.app]`".to_owned(),
            Credentials::Pat(secret) => match secret.path() {
                Some(path) => format!("the token was revoked or expired: replace `{}`", path.display()),
                None => "the token was revoked or expired: replace it".to_owned(),
            },
            Credentials::App(app) => format!(
                "GitHub refused the App credentials: check `app_id` ({}), `installation_id` ({}) and that the private key{} belongs to the App",
                app.app_id,
                app.installation_id,
                app.key
                    .path()
                    .map(|p| format!(" `{}`", p.display()))
                    .unwrap_or_default()
            ),
            Credentials::RegistrationToken(secret) => match secret.path() {
                Some(path) => format!("the registration token expired: replace `{}`", path.display()),
                None => "the registration token expired".to_owned(),
            },
        }
    }
}

impl From<Option<String>> for Credentials {
    /// A bearer token, or none.
    fn from(token: Option<String>) -> Credentials {
        match token {
            Some(token) => Credentials::pat(token),
            None => Credentials::Anonymous,
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::Literal(_) => f.write_str("Secret(***)"),
            Source::File { file, .. } => write!(f, "Secret({})", file.resolved.display()),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Pat(s) => f.debug_tuple("Pat").field(s).finish(),
            Credentials::App(app) => f
                .debug_struct("App")
                .field("app_id", &app.app_id)
                .field("installation_id", &app.installation_id)
                .field("key", &app.key)
                .finish(),
            Credentials::RegistrationToken(s) => {
                f.debug_tuple("RegistrationToken").field(s).finish()
            }
        }
    }
}
