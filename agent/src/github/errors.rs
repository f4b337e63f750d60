//! Wording of the errors that explain what the credentials lack.

/// `the credentials lack ... on `scope``, GitHub's message, and the token's scopes if known.
pub(crate) fn missing_permission(
    needed: &str,
    scope: &str,
    have: Option<&str>,
    message: &str,
) -> String {
    let have = match have {
        Some("") => "; the token has no scopes".to_owned(),
        Some(have) => format!("; the token has the scopes `{have}`"),
        None => String::new(),
    };
    format!(
        "GitHub refused access to the runners of `{scope}`: {message}\n\nhint: the credentials need {needed}{have}"
    )
}

impl super::GithubError {
    /// When a rate-limited request may be tried again, if this is a rate limit.
    pub fn retry_at(&self) -> Option<time::OffsetDateTime> {
        match self {
            super::GithubError::RateLimited { reset_at, .. } => Some(*reset_at),
            _ => None,
        }
    }

    /// Whether the credentials themselves were refused (revoked, expired, wrong App key): retrying
    /// will not help until the secret is replaced.
    pub fn is_bad_credentials(&self) -> bool {
        matches!(
            self,
            super::GithubError::BadCredentials { .. }
                | super::GithubError::RegistrationTokenExpired { .. }
        )
    }
}
