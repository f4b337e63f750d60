//! Keeps secrets out of every line the agent writes.
//!
//! Two rules, applied together by [`redact`]:
//! - every secret value the agent has read (PAT, App key, registration, remove and installation
//!   tokens, JIT configs) is [`register`]ed the moment it is read, and replaced wherever it shows up;
//! - anything shaped like a GitHub token is replaced even if nobody registered it: classic and
//!   fine-grained PATs (`ghp_…`, `github_pat_…`), OAuth, user, server and refresh tokens
//!   (`gho_`, `ghu_`, `ghs_`, `ghr_`), 29-character registration/remove tokens, and the value
//!   after `Authorization`-style schemes (`Bearer`, `token`, `RemoteAuth`, `Basic`).
//!
//! The logger runs every record through [`redact`], so a mistake elsewhere cannot leak a token.

use std::borrow::Cow;
use std::sync::{OnceLock, RwLock};

use regex::Regex;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Secrets shorter than this are not registered: masking `a` everywhere would wreck every line.
const MIN_SECRET_LEN: usize = 8;

/// How many registered secrets are kept. Short-lived ones (JIT configs, one per job) would
/// otherwise grow the registry for as long as the daemon runs; the oldest go first, and
/// registering a secret again makes it the newest.
const MAX_SECRETS: usize = 512;

#[derive(Default)]
struct Registry {
    /// Oldest first.
    order: Vec<String>,
    /// The same secrets, longest first.
    by_length: Vec<String>,
}

impl Registry {
    fn insert(&mut self, secret: &str, cap: usize) {
        self.order.retain(|known| known != secret);
        self.order.push(secret.to_owned());
        if self.order.len() > cap {
            let excess = self.order.len() - cap;
            self.order.drain(..excess);
        }
        // Longest first, so a secret that contains another is masked whole.
        let mut by_length = self.order.clone();
        by_length.sort_by_key(|known| std::cmp::Reverse(known.len()));
        self.by_length = by_length;
    }
}

fn registry() -> &'static RwLock<Registry> {
    static SECRETS: OnceLock<RwLock<Registry>> = OnceLock::new();
    SECRETS.get_or_init(|| RwLock::new(Registry::default()))
}

fn patterns() -> &'static Regex {
    static PATTERNS: OnceLock<Regex> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        // The pattern is a literal checked by the unit tests below, so it always compiles.
        #[allow(clippy::expect_used)]
        Regex::new(concat!(
            r"(?P<tok>\bgithub_pat_[A-Za-z0-9_]{20,}|\bgh[pousr]_[A-Za-z0-9]{20,}",
            r"|\b[A-Z0-9]{29}\b)",
            r"|(?P<scheme>(?i:\b(?:bearer|token|remoteauth|basic))\s+)(?P<cred>[A-Za-z0-9._~+/=-]{8,})",
        ))
        .expect("redaction pattern is a valid regex")
    })
}

/// Remember `secret` so that it is masked wherever it appears from now on.
///
/// Surrounding whitespace is ignored (secret files usually end with a newline). Values too short
/// to mask safely are ignored, and so are values the token shapes already mask whole (PATs,
/// installation and registration tokens), so that hourly tokens do not pile up.
pub fn register(secret: &str) {
    let secret = secret.trim();
    if secret.len() < MIN_SECRET_LEN || masked_by_shape(secret) {
        return;
    }
    let mut secrets = match registry().write() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    secrets.insert(secret, MAX_SECRETS);
}

/// Whether the token shapes alone mask all of `secret`.
fn masked_by_shape(secret: &str) -> bool {
    patterns()
        .find(secret)
        .is_some_and(|found| found.start() == 0 && found.end() == secret.len())
}

/// `text` with every registered secret and every token-shaped string replaced by [`MASK`].
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    {
        let secrets = match registry().read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        for secret in &secrets.by_length {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), MASK));
            }
        }
    }
    let re = patterns();
    if re.is_match(&out) {
        let replaced = re
            .replace_all(&out, |caps: &regex::Captures<'_>| {
                match caps.name("scheme") {
                    Some(scheme) => format!("{}{MASK}", scheme.as_str()),
                    None => MASK.to_owned(),
                }
            })
            .into_owned();
        out = Cow::Owned(replaced);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_token_shapes_nobody_registered() {
        let pat = "ghp_16C7e42F292c6912E7710c838347Ae178B4a";
        let fine = "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJ";
        let reg = "LLBF3JGZDX3P5PMEXLND6TS6FCWO6";
        let inst = "ghs_0123456789abcdefABCDEFabcdef012345";
        let line = format!("pat={pat} fine={fine} reg={reg} inst={inst}");
        let red = redact(&line);
        for secret in [pat, fine, reg, inst] {
            assert!(!red.contains(secret), "{secret} leaked in {red}");
        }
        assert_eq!(red, "pat=*** fine=*** reg=*** inst=***");
    }

    #[test]
    fn masks_authorization_values_and_keeps_the_scheme() {
        let red = redact(
            "Authorization: RemoteAuth abcdEFGH1234.xyz and Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig",
        );
        assert_eq!(red, "Authorization: RemoteAuth *** and Bearer ***");
    }

    #[test]
    fn masks_registered_secrets_of_any_shape() {
        register("  s3cr3t-value-without-a-known-shape\n");
        let red = redact("read s3cr3t-value-without-a-known-shape from file");
        assert_eq!(red, "read *** from file");
    }

    #[test]
    fn keeps_a_bounded_number_of_secrets_and_evicts_the_oldest() {
        // A registry of its own: the global one is shared with the other tests.
        let mut secrets = Registry::default();
        secrets.insert("pat-read-at-start", 3);
        secrets.insert("first-jit-config", 3);
        secrets.insert("second-jit-config", 3);
        secrets.insert("pat-read-at-start", 3);
        secrets.insert("third-jit-config", 3);
        assert_eq!(
            secrets.order,
            ["second-jit-config", "pat-read-at-start", "third-jit-config"]
        );
        assert_eq!(secrets.by_length[0], "second-jit-config");
        assert_eq!(secrets.by_length.len(), 3);
    }

    #[test]
    fn token_shaped_secrets_are_masked_without_being_kept() {
        let token = "ghs_registeredInstallationToken0123456789";
        register(token);
        let secrets = match registry().read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        assert!(!secrets.order.iter().any(|known| known == token));
        drop(secrets);
        assert_eq!(redact(&format!("token {token}")), "token ***");
    }

    #[test]
    fn leaves_ordinary_text_alone() {
        let text = "runner `lab-kvm-1` registered with id 42 at https://github.com/octo/repo";
        assert!(matches!(redact(text), Cow::Borrowed(_)));
    }
}
