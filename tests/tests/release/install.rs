//! `release::fetch_and_install`: one pass download + unpack, the shared tree, refusals that keep
//! the installed runner, malicious tarballs.

use std::os::unix::fs::MetadataExt;

use runner_agent::release::{self, Limits, ReleaseError};

use super::support::*;

fn listener(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("bin/Runner.Listener")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_runner_installs_from_the_cache_sharing_bin_and_externals() {
    let emu = emulator().await;
    publish(&emu, V1, runner_tarball(V1), true, true).await;
    let dir = tempfile::tempdir().unwrap();
    let request = request(&emu, dir.path(), V1);
    let one = dir.path().join("runners/one");
    let two = dir.path().join("runners/two");
    release::fetch_and_install(&request, &one, None)
        .await
        .unwrap();
    release::fetch_and_install(&request, &two, None)
        .await
        .unwrap();
    assert_eq!(
        emu.request_count(DOWNLOAD_ROUTE),
        1,
        "downloaded once per host"
    );
    assert_eq!(listener(&one), format!("listener {V1}\n"));
    assert_eq!(tree(&one), tree(&two));
    assert_eq!(
        tree(&one),
        [
            "bin",
            "bin/Runner.Listener",
            "bin/Runner.Worker.dll",
            "config.sh",
            "externals",
            "externals/node20",
            "externals/node20/bin",
            "externals/node20/bin/node",
            "externals/node20/bin/nodejs",
            "run.sh"
        ]
    );
    let ino = |p: std::path::PathBuf| std::fs::metadata(p).unwrap().ino();
    assert_eq!(
        ino(one.join("bin/Runner.Worker.dll")),
        ino(two.join("bin/Runner.Worker.dll"))
    );
    assert_eq!(ino(one.join("config.sh")), ino(two.join("config.sh")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checksum_mismatch_is_refused_and_the_installed_runner_kept() {
    let emu = emulator().await;
    publish(&emu, V1, runner_tarball(V1), true, true).await;
    // v2 has no checksum on GitHub; the pin is not the file's.
    publish(&emu, V2, runner_tarball(V2), false, false).await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("runners/one");
    release::fetch_and_install(&request(&emu, dir.path(), V1), &target, None)
        .await
        .unwrap();
    let before = tree(dir.path());

    let mut request = request(&emu, dir.path(), V2);
    let pin = "0123456789abcdef".repeat(4);
    request.pins.insert(asset(V2), pin.clone());
    let err = release::fetch_and_install(&request, &target, None)
        .await
        .unwrap_err();
    let url = format!(
        "{}/actions/runner/releases/download/v{V2}/{}",
        emu.url(),
        asset(V2)
    );
    let actual = sha256_hex(&runner_tarball(V2));
    match &err {
        ReleaseError::ChecksumMismatch {
            url: u,
            expected,
            actual: a,
        } => {
            assert_eq!((u, expected, a), (&url, &pin, &actual));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!("checksum mismatch for `{url}`: expected {pin}, actual {actual}; the download was refused and the installed runner kept")
    );
    assert_eq!(listener(&target), format!("listener {V1}\n"));
    let mut after = tree(dir.path());
    // Only the new version's (empty but for its lock) cache directory appeared.
    after.retain(|p| !p.starts_with(&format!("cache/{V2}")));
    assert_eq!(after, before);
    assert_eq!(tree(&dir.path().join(format!("cache/{V2}"))), [".lock"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_replaces_the_runner_tree_whole() {
    let emu = emulator().await;
    publish(&emu, V1, runner_tarball(V1), true, true).await;
    publish(&emu, V2, runner_tarball(V2), true, true).await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("runner");
    release::fetch_and_install(&request(&emu, dir.path(), V1), &target, None)
        .await
        .unwrap();
    std::fs::write(target.join("bin/left-over"), b"x").unwrap();
    release::fetch_and_install(&request(&emu, dir.path(), V2), &target, None)
        .await
        .unwrap();
    assert_eq!(listener(&target), format!("listener {V2}\n"));
    assert!(!target.join("bin/left-over").exists());
    assert_eq!(
        tree(dir.path())
            .iter()
            .filter(|p| p.starts_with(".runner"))
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_shared_tree_is_rebuilt_from_the_verified_tarball() {
    let emu = emulator().await;
    publish(&emu, V1, runner_tarball(V1), true, true).await;
    let dir = tempfile::tempdir().unwrap();
    let request = request(&emu, dir.path(), V1);
    release::fetch_and_install(&request, &dir.path().join("one"), None)
        .await
        .unwrap();
    let shared = dir
        .path()
        .join(format!("cache/{V1}/tree-linux-x64/bin/Runner.Listener"));
    std::fs::write(&shared, b"tampered").unwrap();
    release::fetch_and_install(&request, &dir.path().join("two"), None)
        .await
        .unwrap();
    assert_eq!(
        listener(&dir.path().join("two")),
        format!("listener {V1}\n")
    );
    assert_eq!(emu.request_count(DOWNLOAD_ROUTE), 1);
}

/// Publish `tarball` with a correct digest, install it, and check it is refused with `reason`
/// and that nothing was written outside the cache's own staging (which is removed too).
async fn assert_refused(tarball: Vec<u8>, limits: Limits, reason: &str) {
    let emu = emulator().await;
    publish(&emu, V1, tarball, true, true).await;
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let mut request = request(&emu, &work, V1);
    request.limits = limits;
    let target = work.join("runners/one");
    let err = release::fetch_and_install(&request, &target, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ReleaseError::UnsafeEntry { .. } | ReleaseError::TooLarge { .. }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains(reason), "{err}");
    assert_eq!(
        tree(dir.path())
            .iter()
            .filter(|p| !p.starts_with("work"))
            .count(),
        0
    );
    let left: Vec<String> = tree(&work)
        .into_iter()
        .filter(|p| !p.starts_with("cache/") || p.contains("tree") || p.contains(".tmp"))
        .filter(|p| p != "cache")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!target.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malicious_tarballs_are_refused_with_nothing_written_outside() {
    let escape = format!("../../../escaped-{}", std::process::id());
    let mut t = TarBuilder::new();
    t.file("./config.sh", b"x", 0o755)
        .file(&format!("./bin/{escape}"), b"evil", 0o644);
    assert_refused(t.gz(), Limits::default(), "contains `..`").await;

    let absolute = format!("/tmp/runner-agent-escaped-{}", std::process::id());
    let mut t = TarBuilder::new();
    t.file(&absolute, b"evil", 0o644);
    assert_refused(t.gz(), Limits::default(), "is an absolute path").await;
    assert!(!std::path::Path::new(&absolute).exists());

    let mut t = TarBuilder::new();
    t.symlink("./bin/etc", "../../../../../etc")
        .file("./bin/etc/passwd", b"evil", 0o644);
    assert_refused(t.gz(), Limits::default(), "`bin/etc` is not a directory").await;
    let mut t = TarBuilder::new();
    t.symlink("./bin/etc", "../../etc");
    assert_refused(t.gz(), Limits::default(), "outside the tree").await;

    let mut t = TarBuilder::new();
    t.device("./bin/null");
    assert_refused(t.gz(), Limits::default(), "is a device node").await;

    let limits = Limits {
        max_bytes: 300_000,
        max_entries: 1000,
    };
    assert_refused(runner_tarball(V1), limits, "holds more than").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpacking_while_downloading_survives_a_broken_connection() {
    use runner_agent_tests::emulator::Fault;
    let emu = emulator().await;
    publish(&emu, V1, runner_tarball(V1), true, true).await;
    emu.inject(Fault::DropAfterBytes {
        bytes: 150_000,
        count: 1,
        path_prefix: Some("/_objects".into()),
    });
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("runner");
    release::fetch_and_install(&request(&emu, dir.path(), V1), &target, None)
        .await
        .unwrap();
    assert_eq!(emu.request_count(OBJECT_ROUTE), 2);
    assert_eq!(listener(&target), format!("listener {V1}\n"));
    assert_eq!(
        std::fs::read(target.join("bin/Runner.Worker.dll"))
            .unwrap()
            .len(),
        400_000
    );
}
