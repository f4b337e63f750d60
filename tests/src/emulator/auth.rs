//! Tokens, who they belong to, what they may see and do, and the rate limits they spend.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use base64::Engine;
use time::{Duration, OffsetDateTime};

use super::http::ApiError;
use super::state::{RateBucket, Scope, State, TokenEntry, TokenKind};
use super::{EmulatorOptions, PatKind, PatSpec};

const ALNUM_UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

pub(crate) fn random_string(alphabet: &[u8], len: usize) -> String {
    (0..len)
        .map(|_| alphabet[rand::random_range(0..alphabet.len())] as char)
        .collect()
}

pub(crate) fn guid() -> String {
    let hex = random_string(b"0123456789abcdef", 32);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// What a PAT minted from `spec` may do.
fn pat_kind(spec: &PatSpec) -> TokenKind {
    match spec.kind {
        PatKind::Classic => TokenKind::Classic {
            scopes: spec.scopes.clone(),
            admin: spec.admin,
        },
        PatKind::FineGrained => TokenKind::FineGrained {
            permissions: spec.permissions.clone(),
            resources: spec
                .resources
                .as_ref()
                .map(|r| r.iter().filter_map(|s| Scope::parse(s)).collect()),
        },
    }
}

pub(crate) fn mint_pat(st: &mut State, now: OffsetDateTime, spec: PatSpec) -> String {
    let token = match spec.kind {
        PatKind::Classic => format!("ghp_{}", random_string(ALNUM, 36)),
        PatKind::FineGrained => format!(
            "github_pat_{}_{}",
            random_string(ALNUM, 22),
            random_string(ALNUM, 59)
        ),
    };
    st.tokens.insert(
        token.clone(),
        TokenEntry {
            kind: pat_kind(&spec),
            expires_at: spec.expires_in.map(|s| now + Duration::seconds(s)),
            spec: Some(spec),
        },
    );
    token
}

/// Give an existing PAT what `spec` says (scopes, permissions, resources, admin), as its owner
/// can on GitHub's settings page: the token's value, kind and expiry stay. `false` when `token`
/// is no PAT or `spec` is of the other kind.
pub(crate) fn edit_pat(st: &mut State, token: &str, spec: PatSpec) -> bool {
    let Some(entry) = st.tokens.get_mut(token) else {
        return false;
    };
    if entry.spec.as_ref().is_none_or(|old| old.kind != spec.kind) {
        return false;
    }
    entry.kind = pat_kind(&spec);
    entry.spec = Some(PatSpec {
        expires_in: entry.spec.as_ref().and_then(|old| old.expires_in),
        ..spec
    });
    true
}

/// Registration/remove tokens: 29 uppercase alphanumerics, one hour.
pub(crate) fn mint_runner_token(
    st: &mut State,
    now: OffsetDateTime,
    kind: TokenKind,
) -> (String, OffsetDateTime) {
    let token = random_string(ALNUM_UPPER, 29);
    let expires_at = now + Duration::hours(1);
    st.tokens.insert(
        token.clone(),
        TokenEntry {
            kind,
            expires_at: Some(expires_at),
            spec: None,
        },
    );
    (token, expires_at)
}

/// Opaque bearer tokens of the runner service (tenant and OAuth access tokens).
pub(crate) fn mint_service_token(
    st: &mut State,
    now: OffsetDateTime,
    kind: TokenKind,
) -> (String, OffsetDateTime) {
    let token = random_string(ALNUM, 64);
    let expires_at = now + Duration::hours(1);
    st.tokens.insert(
        token.clone(),
        TokenEntry {
            kind,
            expires_at: Some(expires_at),
            spec: None,
        },
    );
    (token, expires_at)
}

pub(crate) fn mint_installation_token(
    st: &mut State,
    now: OffsetDateTime,
    kind: TokenKind,
) -> (String, OffsetDateTime) {
    let token = format!("ghs_{}", random_string(ALNUM, 36));
    let expires_at = now + Duration::hours(1);
    st.tokens.insert(
        token.clone(),
        TokenEntry {
            kind,
            expires_at: Some(expires_at),
            spec: None,
        },
    );
    (token, expires_at)
}

/// The credential a request carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Credential {
    None,
    Token(String),
    RemoteAuth(String),
}

pub(crate) fn credential(headers: &HeaderMap) -> Credential {
    let Some(value) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Credential::None;
    };
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim().to_string();
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" | "token" => Credential::Token(rest),
        "remoteauth" => Credential::RemoteAuth(rest),
        "basic" => {
            // `config.sh --pat` sends Basic `github:<PAT>`.
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest.as_bytes())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default();
            Credential::Token(
                decoded
                    .split_once(':')
                    .map(|(_, p)| p.to_string())
                    .unwrap_or_default(),
            )
        }
        _ => Credential::Token(String::new()),
    }
}

/// A valid, unexpired token's kind, or `None`.
pub(crate) fn lookup(st: &State, now: OffsetDateTime, token: &str) -> Option<TokenKind> {
    let entry = st.tokens.get(token)?;
    if entry.expires_at.is_some_and(|e| e <= now) {
        return None;
    }
    Some(entry.kind.clone())
}

/// Who is calling the REST API.
#[derive(Debug, Clone)]
pub(crate) enum Principal {
    Anonymous,
    Classic {
        token: String,
        scopes: Vec<String>,
        admin: bool,
    },
    FineGrained {
        token: String,
        permissions: BTreeMap<String, String>,
        resources: Option<Vec<Scope>>,
    },
    Installation {
        token: String,
        account: String,
        permissions: BTreeMap<String, String>,
    },
}

impl Principal {
    /// The rate-limit bucket key.
    pub(crate) fn bucket(&self) -> String {
        match self {
            Principal::Anonymous => "anonymous:127.0.0.1".to_string(),
            Principal::Classic { token, .. }
            | Principal::FineGrained { token, .. }
            | Principal::Installation { token, .. } => token.clone(),
        }
    }
}

/// Authenticates a REST request (`401 Bad credentials` for anything unknown or expired).
pub(crate) fn authenticate(
    st: &State,
    now: OffsetDateTime,
    headers: &HeaderMap,
) -> Result<Principal, ApiError> {
    let token = match credential(headers) {
        Credential::None => return Ok(Principal::Anonymous),
        Credential::Token(t) => t,
        Credential::RemoteAuth(_) => return Err(ApiError::bad_credentials()),
    };
    match lookup(st, now, &token) {
        Some(TokenKind::Classic { scopes, admin }) => Ok(Principal::Classic {
            token,
            scopes,
            admin,
        }),
        Some(TokenKind::FineGrained {
            permissions,
            resources,
        }) => Ok(Principal::FineGrained {
            token,
            permissions,
            resources,
        }),
        Some(TokenKind::Installation {
            account,
            permissions,
            ..
        }) => Ok(Principal::Installation {
            token,
            account,
            permissions,
        }),
        _ => Err(ApiError::bad_credentials()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
}

/// Headers that explain a decision (`x-accepted-oauth-scopes`, `x-accepted-github-permissions`).
pub(crate) type ExtraHeaders = Vec<(&'static str, String)>;

fn level_ok(have: Option<&String>, need: Access) -> bool {
    matches!(
        (have.map(String::as_str), need),
        (Some("write" | "admin"), _) | (Some("read"), Access::Read)
    )
}

/// Whether `principal` may see `scope` at all (a hidden scope answers `404`) and may do `need`
/// on its self-hosted runners (`403` otherwise).
pub(crate) fn authorize(
    st: &State,
    principal: &Principal,
    scope: &Scope,
    need: Access,
    extra: &mut ExtraHeaders,
) -> Result<(), ApiError> {
    if !st.scope_exists(scope) {
        return Err(ApiError::not_found());
    }
    let private = st.repo_private(scope);
    let permission = match scope {
        Scope::Repo { .. } => "administration",
        Scope::Org(_) | Scope::Enterprise(_) => "organization_self_hosted_runners",
    };
    let level = match need {
        Access::Read => "read",
        Access::Write => "write",
    };
    match principal {
        Principal::Anonymous => {
            if private {
                Err(ApiError::not_found())
            } else {
                Err(ApiError::new(401, "Requires authentication"))
            }
        }
        Principal::Classic { scopes, admin, .. } => {
            let has = |s: &str| scopes.iter().any(|x| x == s);
            let (accepted, ok) = match scope {
                Scope::Repo { .. } => {
                    if private && !has("repo") {
                        return Err(ApiError::not_found());
                    }
                    ("repo", has("repo") || (!private && has("public_repo")))
                }
                Scope::Org(_) => (
                    "admin:org, manage_runners:org",
                    has("admin:org") || has("manage_runners:org"),
                ),
                Scope::Enterprise(_) => (
                    "manage_runners:enterprise",
                    has("manage_runners:enterprise") || has("admin:enterprise"),
                ),
            };
            extra.push(("x-accepted-oauth-scopes", accepted.to_string()));
            if ok && *admin {
                Ok(())
            } else {
                Err(ApiError::new(
                    403,
                    &format!("Must have admin rights to {}.", scope.kind_word()),
                ))
            }
        }
        Principal::FineGrained {
            permissions,
            resources,
            ..
        } => {
            if let Scope::Enterprise(_) = scope {
                return Err(ApiError::new(
                    403,
                    "Resource not accessible by personal access token",
                ));
            }
            let visible = match resources {
                None => true,
                Some(list) => list.iter().any(|r| {
                    r == scope
                        || matches!((r, scope), (Scope::Org(o), Scope::Repo { owner, .. }) if o == owner)
                }),
            };
            if !visible {
                return Err(ApiError::not_found());
            }
            extra.push((
                "x-accepted-github-permissions",
                format!("{permission}={level}"),
            ));
            if level_ok(permissions.get(permission), need) {
                Ok(())
            } else {
                Err(ApiError::new(
                    403,
                    "Resource not accessible by personal access token",
                ))
            }
        }
        Principal::Installation {
            account,
            permissions,
            ..
        } => {
            let visible = match scope {
                Scope::Repo { owner, .. } => owner == account,
                Scope::Org(o) => o == account,
                Scope::Enterprise(_) => {
                    return Err(ApiError::new(403, "Resource not accessible by integration"))
                }
            };
            if !visible {
                return Err(ApiError::not_found());
            }
            extra.push((
                "x-accepted-github-permissions",
                format!("{permission}={level}"),
            ));
            if level_ok(permissions.get(permission), need) {
                Ok(())
            } else {
                Err(ApiError::new(403, "Resource not accessible by integration"))
            }
        }
    }
}

/// Whether `principal` can see `scope` at all (GitHub answers `404` otherwise).
pub(crate) fn can_see(st: &State, principal: &Principal, scope: &Scope) -> bool {
    if !st.scope_exists(scope) {
        return false;
    }
    let private = st.repo_private(scope);
    match principal {
        Principal::Anonymous => !private,
        Principal::Classic { scopes, .. } => !private || scopes.iter().any(|s| s == "repo"),
        Principal::FineGrained { resources, .. } => match resources {
            None => true,
            Some(list) => list.iter().any(|r| {
                r == scope
                    || matches!((r, scope), (Scope::Org(o), Scope::Repo { owner, .. }) if o == owner)
            }),
        },
        Principal::Installation { account, .. } => match scope {
            Scope::Repo { owner, .. } => owner == account,
            Scope::Org(o) => o == account,
            Scope::Enterprise(_) => false,
        },
    }
}

/// The state of one rate-limit bucket after a request, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone)]
pub(crate) struct RateView {
    pub limit: u64,
    pub used: u64,
    pub reset: i64,
}

impl RateView {
    pub(crate) fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }
}

fn bucket<'a>(st: &'a mut State, now: OffsetDateTime, key: &str, limit: u64) -> &'a mut RateBucket {
    let b = st.rate.entry(key.to_string()).or_insert(RateBucket {
        limit,
        used: 0,
        reset_at: now + Duration::hours(1),
    });
    if b.reset_at <= now {
        b.used = 0;
        b.reset_at = now + Duration::hours(1);
    }
    b
}

pub(crate) fn limit_for(principal: &Principal, options: &EmulatorOptions) -> u64 {
    match principal {
        Principal::Anonymous => options.unauthenticated_rate_limit,
        _ => options.rate_limit,
    }
}

/// The bucket's state without spending from it.
pub(crate) fn peek(st: &mut State, now: OffsetDateTime, key: &str, limit: u64) -> RateView {
    let b = bucket(st, now, key, limit);
    RateView {
        limit: b.limit,
        used: b.used,
        reset: b.reset_at.unix_timestamp(),
    }
}

/// Spends one request.
pub(crate) fn spend(st: &mut State, now: OffsetDateTime, key: &str, limit: u64) -> RateView {
    let b = bucket(st, now, key, limit);
    b.used = b.used.saturating_add(1);
    RateView {
        limit: b.limit,
        used: b.used,
        reset: b.reset_at.unix_timestamp(),
    }
}

/// Uses up every bucket's budget for its current window (the primary-limit fault).
pub(crate) fn exhaust_primary(st: &mut State, now: OffsetDateTime, options: &EmulatorOptions) {
    // Make sure the buckets of every known API token exist, so tokens that have not been used
    // yet are exhausted too.
    let keys: Vec<String> = st
        .tokens
        .iter()
        .filter(|(_, t)| {
            matches!(
                t.kind,
                TokenKind::Classic { .. }
                    | TokenKind::FineGrained { .. }
                    | TokenKind::Installation { .. }
            )
        })
        .map(|(k, _)| k.clone())
        .collect();
    for key in keys {
        bucket(st, now, &key, options.rate_limit);
    }
    bucket(
        st,
        now,
        "anonymous:127.0.0.1",
        options.unauthenticated_rate_limit,
    );
    for b in st.rate.values_mut() {
        b.used = b.limit;
        if let Some(secs) = options.exhausted_primary_reset_secs {
            b.reset_at = now + Duration::seconds(secs);
        }
    }
}

#[derive(Debug, serde::Deserialize)]
struct AppClaims {
    iss: serde_json::Value,
    iat: i64,
    exp: i64,
}

/// Checks a GitHub App JWT (RS256, `iss` = app id, at most 10 minutes long, not expired on the
/// emulator clock); returns the app id.
pub(crate) fn verify_app_jwt(
    st: &State,
    now: OffsetDateTime,
    headers: &HeaderMap,
) -> Result<u64, ApiError> {
    let Credential::Token(jwt) = credential(headers) else {
        return Err(ApiError::new(401, "A JSON web token could not be decoded"));
    };
    let undecodable = || ApiError::new(401, "A JSON web token could not be decoded");
    let header = jsonwebtoken::decode_header(&jwt).map_err(|_| undecodable())?;
    if header.alg != jsonwebtoken::Algorithm::RS256 {
        return Err(undecodable());
    }
    let claims: AppClaims = {
        let mut parts = jwt.split('.');
        let payload = parts.nth(1).ok_or_else(undecodable)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|_| undecodable())?;
        serde_json::from_slice(&bytes).map_err(|_| undecodable())?
    };
    let app_id: u64 = match &claims.iss {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| ApiError::new(401, "'Issuer' claim ('iss') must be an Integer"))?;
    let app = st
        .apps
        .get(&app_id)
        .ok_or_else(|| ApiError::new(401, "Integration not found"))?;
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(app.public_key_pem.as_bytes())
        .map_err(|_| undecodable())?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    // Times are checked below against the emulator's clock, not the system's.
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<serde_json::Value>(&jwt, &key, &validation)
        .map_err(|_| undecodable())?;
    let now = now.unix_timestamp();
    if claims.exp <= now {
        return Err(ApiError::new(
            401,
            "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires",
        ));
    }
    if claims.exp - claims.iat > 600 || claims.exp > now + 600 {
        return Err(ApiError::new(
            401,
            "'Expiration time' claim ('exp') is too far in the future",
        ));
    }
    if claims.iat > now + 60 {
        return Err(ApiError::new(
            401,
            "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued",
        ));
    }
    Ok(app_id)
}
