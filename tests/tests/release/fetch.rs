//! `release::fetch`: where the checksum comes from, refusals, resume, retries, mirror, cache.

use runner_agent::config::{Scope, VersionReq};
use runner_agent::release::{self, ChecksumSource, ReleaseError};
use runner_agent_tests::emulator::{Fault, PatSpec};
use url::Url;

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_asset_digest_comes_first() {
    let emu = emulator().await;
    let tarball = runner_tarball(V1);
    publish(&emu, V1, tarball.clone(), true, true).await;
    let dir = tempfile::tempdir().unwrap();
    let cached = release::fetch(&request(&emu, dir.path(), V1))
        .await
        .unwrap();
    assert_eq!(cached.source, ChecksumSource::AssetDigest);
    assert_eq!(cached.sha256.to_hex(), sha256_hex(&tarball));
    assert_eq!(std::fs::read(&cached.path).unwrap(), tarball);
    assert_eq!(
        cached.path,
        dir.path().join(format!("cache/{V1}/{}", asset(V1)))
    );
    assert!(!dir
        .path()
        .join(format!("cache/{V1}/{}.partial", asset(V1)))
        .exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_release_body_markers_are_used_without_a_digest() {
    let emu = emulator().await;
    let tarball = runner_tarball(V1);
    publish(&emu, V1, tarball.clone(), false, true).await;
    let dir = tempfile::tempdir().unwrap();
    let cached = release::fetch(&request(&emu, dir.path(), V1))
        .await
        .unwrap();
    assert_eq!(cached.source, ChecksumSource::ReleaseBody);
    assert_eq!(std::fs::read(&cached.path).unwrap(), tarball);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_downloads_api_gives_the_scopes_version_and_checksum() {
    let emu = emulator().await;
    emu.create_repo("octo/repo", true).unwrap();
    let token = emu.add_pat(PatSpec::classic(&["repo"]));
    publish(&emu, V1, runner_tarball(V1), false, false).await;
    publish(&emu, V2, runner_tarball(V2), false, false).await;
    // Progressive rollout: the newest release is not yet what this scope should run.
    emu.set_expected_runner_version(Some("octo/repo"), V1);
    let dir = tempfile::tempdir().unwrap();
    let mut request = request(&emu, dir.path(), V1);
    request.version = VersionReq::Latest;
    request.token = Some(token);
    request.scope = Some(Scope::Repo {
        owner: "octo".into(),
        repo: "repo".into(),
    });
    let cached = release::fetch(&request).await.unwrap();
    assert_eq!(cached.version, version(V1));
    assert_eq!(cached.source, ChecksumSource::DownloadsApi);
    assert_eq!(cached.sha256.to_hex(), sha256_hex(&runner_tarball(V1)));
    assert_eq!(
        emu.request_count("GET /api/v3/repos/{owner}/{repo}/actions/runners/downloads"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_without_a_token_is_the_newest_release() {
    let emu = emulator().await;
    publish(&emu, V1, runner_tarball(V1), true, true).await;
    publish(&emu, V2, runner_tarball(V2), true, true).await;
    let dir = tempfile::tempdir().unwrap();
    let mut request = request(&emu, dir.path(), V1);
    request.version = VersionReq::Latest;
    let cached = release::fetch(&request).await.unwrap();
    assert_eq!(cached.version, version(V2));
    assert_eq!(cached.asset, asset(V2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_pin_is_used_when_github_has_no_checksum() {
    let emu = emulator().await;
    let tarball = runner_tarball(V1);
    publish(&emu, V1, tarball.clone(), false, false).await;
    let dir = tempfile::tempdir().unwrap();
    let mut request = request(&emu, dir.path(), V1);
    request.pins.insert(asset(V1), sha256_hex(&tarball));
    let cached = release::fetch(&request).await.unwrap();
    assert_eq!(cached.source, ChecksumSource::ConfigPin);
    assert_eq!(std::fs::read(&cached.path).unwrap(), tarball);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_checksum_at_all_is_refused_before_downloading() {
    let emu = emulator().await;
    publish(&emu, V1, runner_tarball(V1), false, false).await;
    let dir = tempfile::tempdir().unwrap();
    let err = release::fetch(&request(&emu, dir.path(), V1))
        .await
        .unwrap_err();
    let url = format!(
        "{}/actions/runner/releases/download/v{V1}/{}",
        emu.url(),
        asset(V1)
    );
    assert!(
        matches!(&err, ReleaseError::NoChecksum { url: u, .. } if *u == url),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with(&format!(
            "no checksum is known for `{url}`, refusing to install it\n\nhint: "
        )),
        "{err}"
    );
    assert_eq!(emu.request_count(DOWNLOAD_ROUTE), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_that_contradicts_github_is_refused() {
    let emu = emulator().await;
    publish(&emu, V1, runner_tarball(V1), true, true).await;
    let dir = tempfile::tempdir().unwrap();
    let mut request = request(&emu, dir.path(), V1);
    request.pins.insert(asset(V1), "ab".repeat(32));
    let err = release::fetch(&request).await.unwrap_err();
    assert!(matches!(err, ReleaseError::PinConflict { .. }), "{err:?}");
    assert!(
        err.to_string().contains("but the asset digest says"),
        "{err}"
    );
    assert_eq!(emu.request_count(DOWNLOAD_ROUTE), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_connection_is_resumed() {
    let emu = emulator().await;
    let tarball = runner_tarball(V1);
    assert!(
        tarball.len() > 250_000,
        "the tarball must be larger than the cut"
    );
    publish(&emu, V1, tarball.clone(), true, true).await;
    emu.inject(Fault::DropAfterBytes {
        bytes: 100_000,
        count: 2,
        path_prefix: Some("/_objects".into()),
    });
    let dir = tempfile::tempdir().unwrap();
    let cached = release::fetch(&request(&emu, dir.path(), V1))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&cached.path).unwrap(), tarball);
    assert_eq!(
        emu.request_count(OBJECT_ROUTE),
        3,
        "two cut transfers, then the rest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_with_backoff() {
    let emu = emulator().await;
    let tarball = runner_tarball(V1);
    publish(&emu, V1, tarball.clone(), true, true).await;
    emu.inject(Fault::Status {
        status: 503,
        count: 2,
        path_prefix: Some("/actions/runner/releases/download".into()),
    });
    let dir = tempfile::tempdir().unwrap();
    let cached = release::fetch(&request(&emu, dir.path(), V1))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&cached.path).unwrap(), tarball);
    assert_eq!(emu.request_count(DOWNLOAD_ROUTE), 3);

    // A server that keeps failing: the error names the url and the last status.
    emu.inject(Fault::Status {
        status: 502,
        count: 100,
        path_prefix: Some("/actions/runner/releases/download".into()),
    });
    let dir = tempfile::tempdir().unwrap();
    let err = release::fetch(&request(&emu, dir.path(), V1))
        .await
        .unwrap_err();
    let chain = format!("{:#}", anyhow::Error::new(err));
    assert!(
        chain.contains("(gave up after 4 attempts): the server answered 502 Bad Gateway"),
        "{chain}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_mirror_replaces_github_downloads() {
    let github = emulator().await;
    let mirror = emulator().await;
    let tarball = runner_tarball(V1);
    publish(&github, V1, tarball.clone(), true, true).await;
    publish(&mirror, V1, tarball.clone(), true, true).await;
    let dir = tempfile::tempdir().unwrap();
    let mut request = request(&github, dir.path(), V1);
    request.mirror = Some(
        Url::parse(&format!(
            "{}/actions/runner/releases/download",
            mirror.url()
        ))
        .unwrap(),
    );
    let cached = release::fetch(&request).await.unwrap();
    assert!(
        cached.url.as_str().starts_with(&mirror.url()),
        "{}",
        cached.url
    );
    assert_eq!(
        cached.source,
        ChecksumSource::AssetDigest,
        "checksums still come from GitHub"
    );
    assert_eq!(mirror.request_count(DOWNLOAD_ROUTE), 1);
    assert_eq!(github.request_count(DOWNLOAD_ROUTE), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_without_api_access_needs_a_pin() {
    let mirror = emulator().await;
    let tarball = runner_tarball(V1);
    publish(&mirror, V1, tarball.clone(), true, true).await;
    let dir = tempfile::tempdir().unwrap();
    // GitHub's API is unreachable (nothing listens on the discard port).
    let mut request = request(&mirror, dir.path(), V1);
    request.api_url = Url::parse("http://127.0.0.1:9/api/v3").unwrap();
    request.mirror = Some(
        Url::parse(&format!(
            "{}/actions/runner/releases/download",
            mirror.url()
        ))
        .unwrap(),
    );
    let err = release::fetch(&request).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("GitHub's API could not be read, so pin the checksum"),
        "{err}"
    );
    request.pins.insert(asset(V1), sha256_hex(&tarball));
    let cached = release::fetch(&request).await.unwrap();
    assert_eq!(cached.source, ChecksumSource::ConfigPin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_tarball_is_reverified_and_a_flipped_byte_downloads_it_again() {
    let emu = emulator().await;
    let tarball = runner_tarball(V1);
    publish(&emu, V1, tarball.clone(), true, true).await;
    let dir = tempfile::tempdir().unwrap();
    let request = request(&emu, dir.path(), V1);
    let cached = release::fetch(&request).await.unwrap();
    release::fetch(&request).await.unwrap();
    assert_eq!(
        emu.request_count(DOWNLOAD_ROUTE),
        1,
        "a verified cached file is reused"
    );

    let mut bytes = std::fs::read(&cached.path).unwrap();
    bytes[1234] ^= 0x40;
    std::fs::write(&cached.path, &bytes).unwrap();
    release::fetch(&request).await.unwrap();
    assert_eq!(
        emu.request_count(DOWNLOAD_ROUTE),
        2,
        "the corrupt file was not reused"
    );
    assert_eq!(std::fs::read(&cached.path).unwrap(), tarball);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_versions_are_pruned_keeping_the_two_newest() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    for v in ["2.320.0", "2.321.0", "2.322.0"] {
        publish(&emu, v, runner_tarball(v), true, true).await;
        release::fetch(&request(&emu, dir.path(), v)).await.unwrap();
    }
    let mut versions: Vec<String> = std::fs::read_dir(dir.path().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    versions.sort();
    assert_eq!(versions, ["2.321.0", "2.322.0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_partial_file_left_by_a_killed_run_is_verified_and_kept() {
    let emu = emulator().await;
    let tarball = runner_tarball(V1);
    publish(&emu, V1, tarball.clone(), true, true).await;
    let dir = tempfile::tempdir().unwrap();
    let partial = dir.path().join(format!("cache/{V1}/{}.partial", asset(V1)));
    std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
    std::fs::write(&partial, &tarball).unwrap();
    let cached = release::fetch(&request(&emu, dir.path(), V1))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&cached.path).unwrap(), tarball);

    // A partial longer than the asset is not this asset: downloaded again from the start.
    let dir = tempfile::tempdir().unwrap();
    let partial = dir.path().join(format!("cache/{V1}/{}.partial", asset(V1)));
    std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
    std::fs::write(&partial, [tarball.as_slice(), b"trailing junk"].concat()).unwrap();
    let cached = release::fetch(&request(&emu, dir.path(), V1))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&cached.path).unwrap(), tarball);
}
