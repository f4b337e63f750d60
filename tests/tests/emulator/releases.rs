//! Runner releases: release objects, `runners/downloads`, asset downloads with redirects,
//! `Range`, and download faults.

use std::io::Write;
use std::time::{Duration, Instant};

use reqwest::Method;
use runner_agent_tests::emulator::{AssetSource, Emulator, Fault, ReleaseOptions};
use sha2::{Digest, Sha256};

use crate::support::*;

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn publish(emu: &Emulator, version: &str, options: ReleaseOptions) -> (Vec<u8>, Vec<u8>) {
    let x64 = payload(100_000, 1);
    let arm64 = payload(50_000, 2);
    emu.publish_release(
        version,
        vec![
            ("linux-x64".into(), AssetSource::Bytes(x64.clone())),
            ("linux-arm64".into(), AssetSource::Bytes(arm64.clone())),
        ],
        options,
    )
    .await
    .unwrap();
    (x64, arm64)
}

#[tokio::test]
async fn latest_and_tagged_releases_carry_assets_digests_and_body_markers() {
    let emu = start().await;
    publish(&emu, "2.335.0", ReleaseOptions::default()).await;
    let (x64, arm64) = publish(&emu, "2.336.0", ReleaseOptions::default()).await;
    let r = api(
        &emu,
        Method::GET,
        "/repos/actions/runner/releases/latest",
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["tag_name"], "v2.336.0");
    assert_eq!(r.body["name"], "v2.336.0");
    assert_eq!(r.body["draft"], false);
    assert_eq!(r.body["prerelease"], false);
    let assets = r.body["assets"].as_array().unwrap();
    assert_eq!(assets.len(), 2);
    let a = &assets[0];
    assert_eq!(a["name"], "actions-runner-linux-x64-2.336.0.tar.gz");
    assert_eq!(a["size"], x64.len());
    let sha = hex::encode(Sha256::digest(&x64));
    assert_eq!(a["digest"], format!("sha256:{sha}"));
    assert_eq!(a["content_type"], "application/gzip");
    assert_eq!(
        a["browser_download_url"],
        format!(
            "{}/actions/runner/releases/download/v2.336.0/actions-runner-linux-x64-2.336.0.tar.gz",
            emu.url()
        )
    );
    let body = r.body["body"].as_str().unwrap();
    assert!(
        body.contains(&format!(
            "<!-- BEGIN SHA linux-x64 -->{sha}<!-- END SHA linux-x64 -->"
        )),
        "{body}"
    );
    let arm_sha = hex::encode(Sha256::digest(&arm64));
    assert!(body.contains(&format!(
        "<!-- BEGIN SHA linux-arm64 -->{arm_sha}<!-- END SHA linux-arm64 -->"
    )));

    let r = api(
        &emu,
        Method::GET,
        "/repos/actions/runner/releases/tags/v2.335.0",
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["tag_name"], "v2.335.0");
    let r = api(
        &emu,
        Method::GET,
        "/repos/actions/runner/releases/tags/v9.9.9",
        None,
        None,
    )
    .await;
    assert_github_error(&r, 404, "Not Found");
    let r = api(
        &emu,
        Method::GET,
        "/repos/actions/runner/releases",
        None,
        None,
    )
    .await;
    assert_eq!(r.body.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn digests_and_markers_can_be_left_out_as_older_releases_do() {
    let emu = start().await;
    publish(
        &emu,
        "2.300.0",
        ReleaseOptions {
            digest: false,
            body_markers: false,
        },
    )
    .await;
    let r = api(
        &emu,
        Method::GET,
        "/repos/actions/runner/releases/latest",
        None,
        None,
    )
    .await;
    assert!(r.body["assets"][0]["digest"].is_null());
    assert!(!r.body["body"].as_str().unwrap().contains("BEGIN SHA"));
}

#[tokio::test]
async fn no_release_yet_is_404() {
    let emu = start().await;
    let r = api(
        &emu,
        Method::GET,
        "/repos/actions/runner/releases/latest",
        None,
        None,
    )
    .await;
    assert_github_error(&r, 404, "Not Found");
}

#[tokio::test]
async fn assets_download_through_a_302_and_honour_range() {
    let emu = start().await;
    let (x64, _) = publish(&emu, "2.336.0", ReleaseOptions::default()).await;
    let url = format!(
        "{}/actions/runner/releases/download/v2.336.0/actions-runner-linux-x64-2.336.0.tar.gz",
        emu.url()
    );
    let r = send(client().get(&url)).await;
    assert_eq!(r.status, 302);
    let location = r.header("location").unwrap();
    assert!(
        location.starts_with(&format!("{}/_objects/", emu.url())),
        "{location}"
    );

    let full = reqwest::get(&url).await.unwrap();
    assert_eq!(full.status(), 200);
    assert_eq!(full.headers()["accept-ranges"], "bytes");
    assert_eq!(
        full.headers()["content-length"],
        x64.len().to_string().as_str()
    );
    assert_eq!(full.bytes().await.unwrap().as_ref(), x64.as_slice());

    let part = client()
        .get(&location)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 10-19/{}", x64.len()).as_str()
    );
    assert_eq!(part.bytes().await.unwrap().as_ref(), &x64[10..20]);

    let tail = client()
        .get(&location)
        .header("range", "bytes=99990-")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), 206);
    assert_eq!(tail.bytes().await.unwrap().as_ref(), &x64[99990..]);

    let bad = client()
        .get(&location)
        .header("range", "bytes=200000-")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 416);
    assert_eq!(
        bad.headers()["content-range"],
        format!("bytes */{}", x64.len()).as_str()
    );

    let no_token = location.split('?').next().unwrap().to_string();
    assert_eq!(client().get(&no_token).send().await.unwrap().status(), 403);

    let missing = format!(
        "{}/actions/runner/releases/download/v2.336.0/nope.tar.gz",
        emu.url()
    );
    assert_eq!(client().get(&missing).send().await.unwrap().status(), 404);
}

#[tokio::test]
async fn file_assets_are_streamed_from_disk() {
    let emu = start().await;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let data = payload(3 * 1024 * 1024 + 17, 9);
    file.write_all(&data).unwrap();
    emu.publish_release(
        "2.400.0",
        vec![(
            "linux-x64".into(),
            AssetSource::Path(file.path().to_path_buf()),
        )],
        ReleaseOptions::default(),
    )
    .await
    .unwrap();
    let r = api(
        &emu,
        Method::GET,
        "/repos/actions/runner/releases/tags/v2.400.0",
        None,
        None,
    )
    .await;
    assert_eq!(r.body["assets"][0]["size"], data.len());
    let url = r.body["assets"][0]["browser_download_url"]
        .as_str()
        .unwrap()
        .to_string();
    let got = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&got)),
        hex::encode(Sha256::digest(&data))
    );
    let part = reqwest::Client::new()
        .get(&url)
        .header("range", "bytes=3145728-")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap().as_ref(), &data[3145728..]);
}

#[tokio::test]
async fn a_dropped_connection_cuts_the_body_and_the_next_download_works() {
    let emu = start().await;
    let (x64, _) = publish(&emu, "2.336.0", ReleaseOptions::default()).await;
    let url = format!(
        "{}/actions/runner/releases/download/v2.336.0/actions-runner-linux-x64-2.336.0.tar.gz",
        emu.url()
    );
    emu.inject(Fault::DropAfterBytes {
        bytes: 1000,
        count: 1,
        path_prefix: Some("/_objects/".into()),
    });
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.is_err(), "a body cut short is an error");
    let again = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    assert_eq!(again.as_ref(), x64.as_slice());
    // Without a prefix the fault skips the bodiless redirect and cuts the download itself.
    emu.inject(Fault::DropAfterBytes {
        bytes: 10,
        count: 1,
        path_prefix: None,
    });
    assert!(reqwest::get(&url).await.unwrap().bytes().await.is_err());
    assert_eq!(
        reqwest::get(&url)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .len(),
        x64.len()
    );
    // `0` drops the connection before any answer.
    emu.inject(Fault::DropAfterBytes {
        bytes: 0,
        count: 1,
        path_prefix: Some("/api/".into()),
    });
    let latest = format!("{}/repos/actions/runner/releases/latest", emu.api_url());
    let err = reqwest::get(&latest).await;
    assert!(err.is_err(), "no status line: {err:?}");
    assert_eq!(reqwest::get(&latest).await.unwrap().status(), 200);
}

#[tokio::test]
async fn status_and_latency_faults_hit_the_next_requests() {
    let emu = start().await;
    let pat = repo_with_pat(&emu, "octo/repo");
    let path = "/repos/octo/repo/actions/runners";
    emu.inject(Fault::Status {
        status: 502,
        count: 2,
        path_prefix: Some("/api/v3/repos/".into()),
    });
    // Another prefix is not affected.
    assert_eq!(
        api(&emu, Method::GET, "/rate_limit", Some(&pat), None)
            .await
            .status,
        200
    );
    assert_eq!(
        api(&emu, Method::GET, path, Some(&pat), None).await.status,
        502
    );
    assert_eq!(
        api(&emu, Method::GET, path, Some(&pat), None).await.status,
        502
    );
    assert_eq!(
        api(&emu, Method::GET, path, Some(&pat), None).await.status,
        200
    );
    emu.inject(Fault::Status {
        status: 500,
        count: 1,
        path_prefix: None,
    });
    let r = api(&emu, Method::GET, path, Some(&pat), None).await;
    assert_github_error(&r, 500, "Server Error");

    emu.inject(Fault::Latency {
        ms: 400,
        count: 1,
        path_prefix: None,
    });
    let t = Instant::now();
    assert_eq!(
        api(&emu, Method::GET, path, Some(&pat), None).await.status,
        200
    );
    assert!(t.elapsed() >= Duration::from_millis(400));
    emu.inject(Fault::Status {
        status: 500,
        count: 5,
        path_prefix: None,
    });
    emu.clear_faults();
    assert_eq!(
        api(&emu, Method::GET, path, Some(&pat), None).await.status,
        200
    );
    // Faulted requests are counted like any other.
    assert_eq!(
        emu.request_count("GET /api/v3/repos/{owner}/{repo}/actions/runners"),
        6
    );
}

#[tokio::test]
async fn runner_downloads_offer_the_version_github_expects_for_the_scope() {
    let emu = start().await;
    let pat = repo_with_pat(&emu, "octo/repo");
    emu.create_repo("octo/other", true).unwrap();
    let r = api(
        &emu,
        Method::GET,
        "/repos/octo/repo/actions/runners/downloads",
        Some(&pat),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, serde_json::json!([]));

    let (old_x64, _) = publish(&emu, "2.335.0", ReleaseOptions::default()).await;
    let (x64, _) = publish(&emu, "2.336.0", ReleaseOptions::default()).await;
    let r = api(
        &emu,
        Method::GET,
        "/repos/octo/repo/actions/runners/downloads",
        Some(&pat),
        None,
    )
    .await;
    let list = r.body.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let linux = &list[0];
    let mut keys: Vec<_> = linux.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "architecture",
            "download_url",
            "filename",
            "os",
            "sha256_checksum"
        ]
    );
    assert_eq!(linux["os"], "linux");
    assert_eq!(linux["architecture"], "x64");
    assert_eq!(linux["filename"], "actions-runner-linux-x64-2.336.0.tar.gz");
    assert_eq!(linux["sha256_checksum"], hex::encode(Sha256::digest(&x64)));
    assert_eq!(list[1]["architecture"], "arm64");

    // Progressive rollout: one repository is still expected to run the older version.
    emu.set_expected_runner_version(Some("octo/repo"), "2.335.0");
    let r = api(
        &emu,
        Method::GET,
        "/repos/octo/repo/actions/runners/downloads",
        Some(&pat),
        None,
    )
    .await;
    assert_eq!(
        r.body[0]["sha256_checksum"],
        hex::encode(Sha256::digest(&old_x64))
    );
    let r = api(
        &emu,
        Method::GET,
        "/repos/octo/other/actions/runners/downloads",
        Some(&pat),
        None,
    )
    .await;
    assert_eq!(
        r.body[0]["filename"],
        "actions-runner-linux-x64-2.336.0.tar.gz"
    );
    let got = reqwest::get(r.body[0]["download_url"].as_str().unwrap())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), x64.as_slice());
}
