//! Which version, which file, which URL and which checksum: everything decided before a byte of
//! the package is downloaded.

use url::Url;

use super::arch::Arch;
use super::checksum::{self, Candidates, ChecksumSource, Choice, Sha256};
use super::{cache, FetchRequest, ReleaseError};
use crate::config::{Version, VersionReq};
use crate::github::{self, GithubError, Release, RunnerApplication};

/// Where `https://github.com/actions/runner/releases/download` would be, used when neither the
/// API nor a mirror names the file's URL.
pub const DEFAULT_DOWNLOAD_BASE: &str = "https://github.com/actions/runner/releases/download";

/// A package chosen and its expected checksum.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub version: Version,
    pub arch: Arch,
    /// `actions-runner-linux-x64-2.336.0.tar.gz`.
    pub asset: String,
    pub url: Url,
    /// The `temp_download_token` of the downloads API, sent as a bearer token.
    pub download_token: Option<String>,
    pub sha256: Sha256,
    pub source: ChecksumSource,
}

/// Decides what to download for one [`FetchRequest`].
pub struct Resolver<'a> {
    request: &'a FetchRequest,
    client: github::Client,
}

impl<'a> Resolver<'a> {
    pub fn new(request: &'a FetchRequest) -> Result<Resolver<'a>, ReleaseError> {
        let client = github::Client::new(request.api_url.clone(), request.token.clone()).map_err(
            |source| ReleaseError::Api {
                what: "the GitHub client".to_owned(),
                source: Box::new(source),
            },
        )?;
        Ok(Resolver { request, client })
    }

    pub async fn resolve(&self) -> Result<Resolved, ReleaseError> {
        let request = self.request;
        let arch = match request.arch {
            Some(arch) => arch,
            None => Arch::host()?,
        };

        // The scope's expected package (progressive rollout: it may lag the newest release).
        let scope_app = match (&request.scope, &request.token) {
            (Some(scope), Some(_)) => match self.client.runner_downloads(scope).await {
                Ok(apps) => apps
                    .into_iter()
                    .find(|app| app.os == "linux" && app.architecture == arch.as_str()),
                Err(err) => {
                    log::info!("cannot ask GitHub which runner version this scope expects: {err}");
                    None
                }
            },
            _ => None,
        };

        let (version, release) =
            match request.version {
                VersionReq::Pinned(version) => {
                    let release = self.release_for(version).await;
                    (version, release)
                }
                VersionReq::Latest => match scope_app.as_ref().and_then(app_version) {
                    Some(version) => (version, self.release_for(version).await),
                    None => {
                        let release = self.client.latest_release().await.map_err(|source| {
                            ReleaseError::Api {
                                what: "the latest runner release".to_owned(),
                                source: Box::new(source),
                            }
                        })?;
                        let version = release.tag_name.parse::<Version>().map_err(|_| {
                            ReleaseError::BadTag {
                                tag: release.tag_name.clone(),
                            }
                        })?;
                        (version, Ok(release))
                    }
                },
            };
        let asset = arch.asset_name(version);
        let release = match release {
            Ok(release) => Some(release),
            Err(err) => {
                log::info!("cannot read release `v{version}` from GitHub: {err}");
                None
            }
        };
        let release_asset = release
            .as_ref()
            .and_then(|release| release.assets.iter().find(|a| a.name == asset));
        let app = scope_app.filter(|app| app.filename == asset);

        let mut candidates = Candidates {
            asset_digest: release_asset
                .and_then(|a| a.digest.as_deref())
                .and_then(Sha256::parse),
            release_body: release
                .as_ref()
                .and_then(|release| release.body.as_deref())
                .and_then(|body| checksum::from_body(body, &arch.platform())),
            downloads_api: app
                .as_ref()
                .and_then(|app| app.sha256_checksum.as_deref())
                .and_then(Sha256::parse),
            config_pin: None,
            cache: None,
        };
        if let Some(pin) = request.pins.get(&asset) {
            candidates.config_pin =
                Some(Sha256::parse(pin).ok_or_else(|| ReleaseError::BadPin {
                    asset: asset.clone(),
                    value: pin.clone(),
                })?);
        }
        if release.is_none() && app.is_none() {
            candidates.cache = cache::recorded_sha256(&request.cache_dir, version, &asset);
        }

        let (url, download_token) = match (&request.mirror, release_asset, &app) {
            (Some(mirror), _, _) => (mirror_url(mirror, version, &asset)?, None),
            (None, _, Some(app)) => (app.download_url.clone(), app.temp_download_token.clone()),
            (None, Some(release_asset), None) => (release_asset.browser_download_url.clone(), None),
            (None, None, None) => {
                let base =
                    Url::parse(DEFAULT_DOWNLOAD_BASE).map_err(|source| ReleaseError::BadUrl {
                        url: DEFAULT_DOWNLOAD_BASE.to_owned(),
                        source,
                    })?;
                (mirror_url(&base, version, &asset)?, None)
            }
        };
        if let Some(token) = &download_token {
            crate::redact::register(token);
        }

        match candidates.choose() {
            Choice::Expected(sha256, source) => {
                log::debug!("`{asset}`: expecting sha256 {sha256} from the {source}");
                Ok(Resolved {
                    version,
                    arch,
                    asset,
                    url,
                    download_token,
                    sha256,
                    source,
                })
            }
            Choice::PinConflict {
                pin,
                github,
                source,
            } => Err(ReleaseError::PinConflict {
                asset,
                pin: pin.to_hex(),
                github: github.to_hex(),
                source_name: source.as_str(),
            }),
            Choice::None => Err(ReleaseError::NoChecksum {
                url: url.to_string(),
                hint: if release.is_none() {
                    format!("GitHub's API could not be read, so pin the checksum: `sha256 = {{ \"{asset}\" = \"<hex>\" }}`")
                } else {
                    format!("the release has neither a digest nor `BEGIN SHA` markers for `{asset}`; pin it with `sha256 = {{ \"{asset}\" = \"<hex>\" }}`")
                },
            }),
        }
    }

    async fn release_for(&self, version: Version) -> Result<Release, GithubError> {
        self.client.release_by_tag(&format!("v{version}")).await
    }
}

/// The version of a downloads-API package, from its file name.
fn app_version(app: &RunnerApplication) -> Option<Version> {
    let stem = app.filename.strip_suffix(".tar.gz")?;
    let (_, version) = stem.rsplit_once('-')?;
    version.parse().ok()
}

/// `<base>/v<version>/<asset>`.
pub fn mirror_url(base: &Url, version: Version, asset: &str) -> Result<Url, ReleaseError> {
    let text = format!("{}/v{version}/{asset}", base.as_str().trim_end_matches('/'));
    Url::parse(&text).map_err(|source| ReleaseError::BadUrl { url: text, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_urls_replace_the_download_base() {
        let base = Url::parse("http://mirror.lab:8080/runner/").unwrap();
        let version = "2.336.0".parse().unwrap();
        assert_eq!(
            mirror_url(&base, version, "actions-runner-linux-x64-2.336.0.tar.gz")
                .unwrap()
                .as_str(),
            "http://mirror.lab:8080/runner/v2.336.0/actions-runner-linux-x64-2.336.0.tar.gz"
        );
    }

    #[test]
    fn downloads_api_versions_come_from_the_file_name() {
        let app: RunnerApplication = serde_json::from_str(
            r#"{"os":"linux","architecture":"x64","download_url":"http://h/x",
                "filename":"actions-runner-linux-x64-2.164.0.tar.gz"}"#,
        )
        .unwrap();
        assert_eq!(app_version(&app), Some("2.164.0".parse().unwrap()));
    }
}
