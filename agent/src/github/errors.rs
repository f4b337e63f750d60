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
