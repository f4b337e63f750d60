//! Where the expected SHA-256 of a runner package comes from, and in which order.
//!
//! 1. the release asset's `digest` (`sha256:<hex>`, current GitHub);
//! 2. the `<!-- BEGIN SHA linux-x64 -->HEX<!-- END SHA linux-x64 -->` markers in the release body;
//! 3. `sha256_checksum` of `actions/runners/downloads`;
//! 4. a `sha256` pin in the configuration (the only source a mirror without API access has).
//!
//! The first one present is expected. A pin is also compared with whichever source won: a pin
//! that disagrees with GitHub is refused rather than silently ignored.

use std::fmt;

use sha2::Digest as _;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256([u8; 32]);

impl Sha256 {
    /// Parse 64 hex digits (either case), optionally prefixed `sha256:`.
    pub fn parse(text: &str) -> Option<Sha256> {
        let text = text.trim();
        let hex_text = text.strip_prefix("sha256:").unwrap_or(text);
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_text, &mut bytes).ok()?;
        Some(Sha256(bytes))
    }

    /// Lowercase hex, as `sha256sum` prints it.
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// The digest of a finished hasher.
    pub fn from_hasher(hasher: sha2::Sha256) -> Sha256 {
        Sha256(hasher.finalize().into())
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({})", self.to_hex())
    }
}

/// Which source an expected checksum came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumSource {
    /// The release asset's `digest`.
    AssetDigest,
    /// The `BEGIN SHA` markers of the release body.
    ReleaseBody,
    /// `sha256_checksum` of `actions/runners/downloads`.
    DownloadsApi,
    /// A `sha256` pin in the configuration.
    ConfigPin,
    /// The checksum recorded when the cached file was first verified (GitHub unreachable).
    Cache,
}

impl ChecksumSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ChecksumSource::AssetDigest => "asset digest",
            ChecksumSource::ReleaseBody => "release body",
            ChecksumSource::DownloadsApi => "downloads api",
            ChecksumSource::ConfigPin => "config pin",
            ChecksumSource::Cache => "cache record",
        }
    }
}

impl fmt::Display for ChecksumSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The checksum `platform` (`linux-x64`) has in a release body, if its markers are there.
pub fn from_body(body: &str, platform: &str) -> Option<Sha256> {
    let begin = format!("<!-- BEGIN SHA {platform} -->");
    let end = format!("<!-- END SHA {platform} -->");
    let start = body.find(&begin)? + begin.len();
    let length = body[start..].find(&end)?;
    Sha256::parse(&body[start..start + length])
}

/// Every checksum found for one asset; [`Candidates::choose`] applies the order.
#[derive(Debug, Clone, Default)]
pub struct Candidates {
    pub asset_digest: Option<Sha256>,
    pub release_body: Option<Sha256>,
    pub downloads_api: Option<Sha256>,
    pub config_pin: Option<Sha256>,
    pub cache: Option<Sha256>,
}

/// What [`Candidates::choose`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Expected(Sha256, ChecksumSource),
    /// The pin disagrees with what GitHub says.
    PinConflict {
        pin: Sha256,
        github: Sha256,
        source: ChecksumSource,
    },
    None,
}

impl Candidates {
    pub fn choose(&self) -> Choice {
        let github = [
            (self.asset_digest, ChecksumSource::AssetDigest),
            (self.release_body, ChecksumSource::ReleaseBody),
            (self.downloads_api, ChecksumSource::DownloadsApi),
        ]
        .into_iter()
        .find_map(|(sum, source)| sum.map(|sum| (sum, source)));
        match (github, self.config_pin) {
            (Some((github, source)), Some(pin)) if github != pin => Choice::PinConflict {
                pin,
                github,
                source,
            },
            (Some((sum, source)), _) => Choice::Expected(sum, source),
            (None, Some(pin)) => Choice::Expected(pin, ChecksumSource::ConfigPin),
            (None, None) => match self.cache {
                Some(sum) => Choice::Expected(sum, ChecksumSource::Cache),
                None => Choice::None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "a3b1c2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
    const B: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    #[test]
    fn body_markers_are_read_per_platform() {
        let body = format!(
            "## Notes\r\n- linux x64 <!-- BEGIN SHA linux-x64 -->{A}<!-- END SHA linux-x64 -->\n\
             - linux arm64 <!-- BEGIN SHA linux-arm64 -->{B}<!-- END SHA linux-arm64 -->\n"
        );
        assert_eq!(from_body(&body, "linux-x64").unwrap().to_hex(), A);
        assert_eq!(from_body(&body, "linux-arm64").unwrap().to_hex(), B);
        assert_eq!(from_body(&body, "linux-arm"), None);
        assert_eq!(
            from_body(
                "<!-- BEGIN SHA linux-x64 -->nothex<!-- END SHA linux-x64 -->",
                "linux-x64"
            ),
            None
        );
    }

    #[test]
    fn digests_parse_with_prefix_and_case() {
        assert_eq!(Sha256::parse(&format!("sha256:{A}")).unwrap().to_hex(), A);
        assert_eq!(Sha256::parse(&A.to_uppercase()).unwrap().to_hex(), A);
        assert_eq!(Sha256::parse("sha256:abc"), None);
    }

    #[test]
    fn the_first_source_present_wins() {
        let a = Sha256::parse(A).unwrap();
        let b = Sha256::parse(B).unwrap();
        let mut all = Candidates {
            asset_digest: Some(a),
            release_body: Some(b),
            downloads_api: Some(b),
            config_pin: None,
            cache: Some(b),
        };
        assert_eq!(
            all.choose(),
            Choice::Expected(a, ChecksumSource::AssetDigest)
        );
        all.asset_digest = None;
        assert_eq!(
            all.choose(),
            Choice::Expected(b, ChecksumSource::ReleaseBody)
        );
        all.release_body = None;
        assert_eq!(
            all.choose(),
            Choice::Expected(b, ChecksumSource::DownloadsApi)
        );
        all.downloads_api = None;
        all.config_pin = Some(a);
        assert_eq!(all.choose(), Choice::Expected(a, ChecksumSource::ConfigPin));
        all.config_pin = None;
        assert_eq!(all.choose(), Choice::Expected(b, ChecksumSource::Cache));
        all.cache = None;
        assert_eq!(all.choose(), Choice::None);
    }

    #[test]
    fn a_pin_that_disagrees_with_github_is_a_conflict() {
        let a = Sha256::parse(A).unwrap();
        let b = Sha256::parse(B).unwrap();
        let candidates = Candidates {
            release_body: Some(a),
            config_pin: Some(b),
            ..Candidates::default()
        };
        assert_eq!(
            candidates.choose(),
            Choice::PinConflict {
                pin: b,
                github: a,
                source: ChecksumSource::ReleaseBody
            }
        );
    }
}
