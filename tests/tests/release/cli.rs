//! `agentctl release …` as a user runs it: output, exit statuses, proxies.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use super::support::*;

fn agentctl_release(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(agentctl());
    command
        .args(["--config", "/nonexistent/agent.toml", "release"])
        .args(args);
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    command.output().unwrap()
}

#[test]
fn an_unsupported_arch_names_the_shipped_ones() {
    let out = agentctl_release(
        &[
            "fetch",
            "--api-url",
            "http://127.0.0.1:9/api/v3",
            "--arch",
            "riscv64",
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("error: this host is `riscv64`, and actions/runner ships Linux packages only for x64 (x86_64), arm64 (aarch64), arm (armv7l)"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_prints_what_it_verified_as_json() {
    let emu = emulator().await;
    let tarball = runner_tarball(V1);
    publish(&emu, V1, tarball.clone(), true, true).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let api = emu.api_url();
    let out = tokio::task::spawn_blocking(move || {
        agentctl_release(
            &[
                "fetch",
                "--api-url",
                &api,
                "--version",
                V1,
                "--arch",
                "x64",
                "--cache-dir",
                cache.to_str().unwrap(),
                "--json",
            ],
            &[],
        )
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["version"], V1);
    assert_eq!(json["sha256"], sha256_hex(&tarball));
    assert_eq!(json["checksum_source"], "asset digest");
    assert_eq!(
        json["path"],
        dir.path()
            .join(format!("cache/{V1}/{}", asset(V1)))
            .display()
            .to_string()
    );
}

/// A forward proxy on loopback: absolute-form requests (`GET http://…`, what a client sends for
/// `http` URLs) and `CONNECT` tunnels (for `https`). Records each request line.
fn proxy() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let log = log.clone();
            std::thread::spawn(move || serve(client, &log));
        }
    });
    (url, seen)
}

fn serve(client: TcpStream, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let request_line = line.trim_end().to_owned();
    let mut head = Vec::new();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).unwrap();
        if header == "\r\n" || header.is_empty() {
            break;
        }
        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        head.push(header);
    }
    log.lock().unwrap().push(request_line.clone());
    let parts: Vec<&str> = request_line.split(' ').collect();
    let (method, target) = (parts[0], parts[1]);
    if method == "CONNECT" {
        let upstream = TcpStream::connect(target).unwrap();
        let mut client = client.try_clone().unwrap();
        client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .unwrap();
        tunnel(reader, client, upstream);
        return;
    }
    // Absolute form: `GET http://host:port/path HTTP/1.1`.
    let rest = target.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut upstream = TcpStream::connect(host).unwrap();
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    let mut forwarded = format!("{method} {path} HTTP/1.1\r\n");
    for header in head.iter().filter(|h| {
        let h = h.to_ascii_lowercase();
        !h.starts_with("proxy-") && !h.starts_with("connection:")
    }) {
        forwarded.push_str(header);
    }
    forwarded.push_str("connection: close\r\n\r\n");
    upstream.write_all(forwarded.as_bytes()).unwrap();
    upstream.write_all(&body).unwrap();
    // Relay the answer, then close: the client opens a new connection for the next request.
    let mut client = client;
    let _ = std::io::copy(&mut upstream, &mut client);
}

fn tunnel(mut reader: BufReader<TcpStream>, mut client: TcpStream, upstream: TcpStream) {
    let mut up_write = upstream.try_clone().unwrap();
    let mut up_read = upstream;
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut reader, &mut up_write);
    });
    let _ = std::io::copy(&mut up_read, &mut client);
    let _ = t.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_from_the_environment_is_used_and_no_proxy_bypasses_it() {
    let emu = emulator().await;
    let tarball = runner_tarball(V1);
    publish(&emu, V1, tarball.clone(), true, true).await;
    let (proxy_url, seen) = proxy();
    let dir = tempfile::tempdir().unwrap();
    let api = emu.api_url();
    let cache = dir.path().join("cache").display().to_string();
    let run = move |env: Vec<(&'static str, String)>, cache: String, api: String| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        agentctl_release(
            &[
                "fetch",
                "--api-url",
                &api,
                "--version",
                V1,
                "--arch",
                "x64",
                "--cache-dir",
                &cache,
            ],
            &env,
        )
    };
    let env = vec![
        ("HTTP_PROXY", proxy_url.clone()),
        ("HTTPS_PROXY", proxy_url.clone()),
    ];
    let (c, a) = (cache.clone(), api.clone());
    let out = tokio::task::spawn_blocking(move || run(env, c, a))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let requests = seen.lock().unwrap().clone();
    let release_line = format!("GET {api}/repos/actions/runner/releases/tags/v{V1} HTTP/1.1");
    let download_line = format!(
        "GET {}/actions/runner/releases/download/v{V1}/{} HTTP/1.1",
        emu.url(),
        asset(V1)
    );
    assert!(requests.contains(&release_line), "{requests:?}");
    assert!(requests.contains(&download_line), "{requests:?}");
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with(&format!("GET {}/_objects/", emu.url()))),
        "{requests:?}"
    );

    // NO_PROXY: the same fetch (from a fresh cache) goes direct.
    seen.lock().unwrap().clear();
    let cache2 = dir.path().join("cache2").display().to_string();
    let env = vec![
        ("HTTP_PROXY", proxy_url.clone()),
        ("NO_PROXY", "127.0.0.1".to_owned()),
    ];
    let out = tokio::task::spawn_blocking(move || run(env, cache2, api))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
}

/// `agentctl release install` killed (SIGKILL) at many points while it replaces a v1 runner
/// directory with v2: the directory is always exactly v1 or exactly v2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_point_leaves_the_old_tree_or_the_new_one() {
    let emu = emulator().await;
    // A larger release, so that the kill lands inside the download, the unpack and the install.
    let big = |v: &str| {
        let mut t = TarBuilder::new();
        t.file("./config.sh", b"#!/bin/bash\n", 0o755);
        t.file(
            "./bin/Runner.Listener",
            format!("listener {v}\n").as_bytes(),
            0o755,
        );
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for i in 0..200 {
            let noise: Vec<u8> = (0..40_000)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 24) as u8
                })
                .collect();
            t.file(&format!("./externals/lib/f{i:03}.bin"), &noise, 0o644);
        }
        t.file("./bin/zz-last", v.as_bytes(), 0o644);
        t.gz()
    };
    publish(&emu, V1, big(V1), true, true).await;
    publish(&emu, V2, big(V2), true, true).await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("runner");
    let cache = dir.path().join("cache");
    let api = emu.api_url();
    let install = {
        let (target, cache, api) = (target.clone(), cache.clone(), api.clone());
        move |version: &str| {
            let mut command = Command::new(agentctl());
            command
                .args([
                    "--config",
                    "/nonexistent/agent.toml",
                    "-q",
                    "release",
                    "install",
                ])
                .args(["--api-url", &api, "--arch", "x64", "--version", version])
                .args([
                    "--cache-dir",
                    cache.to_str().unwrap(),
                    target.to_str().unwrap(),
                ]);
            command
        }
    };
    let out = tokio::task::spawn_blocking({
        let install = install.clone();
        move || install(V1).output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v1_tree = tree(&target);
    assert_eq!(v1_tree.len(), 206);

    // How long a whole v2 install takes here, from an empty and from a filled cache.
    let mut kills = 0;
    for round in 0..12u64 {
        if round % 2 == 0 {
            let _ = std::fs::remove_dir_all(cache.join(V2));
        }
        let delay = std::time::Duration::from_millis(15 * round + 5);
        let install_v2 = install.clone();
        let killed = tokio::task::spawn_blocking(move || {
            let mut child = install_v2(V2).spawn().unwrap();
            std::thread::sleep(delay);
            let killed = child.try_wait().unwrap().is_none();
            let _ = child.kill();
            let _ = child.wait();
            killed
        })
        .await
        .unwrap();
        kills += u32::from(killed);
        let now = tree(&target);
        let listener = std::fs::read_to_string(target.join("bin/Runner.Listener")).unwrap();
        let last = std::fs::read_to_string(target.join("bin/zz-last")).unwrap();
        assert_eq!(now, v1_tree, "round {round}: the file list changed");
        assert!(
            (listener == format!("listener {V1}\n") && last == V1)
                || (listener == format!("listener {V2}\n") && last == V2),
            "round {round}: a mix of versions ({listener:?}, {last:?})"
        );
        if listener.contains(V2) {
            // Back to v1 for the next round (a clean install, not killed).
            let install = install.clone();
            let out = tokio::task::spawn_blocking(move || install(V1).output().unwrap())
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    assert!(
        kills >= 3,
        "only {kills} installs were killed while running"
    );
    // A later install cleans up what the killed ones left beside the target.
    let out = tokio::task::spawn_blocking(move || install(V2).output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let beside: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != "cache")
        .collect();
    assert_eq!(beside, ["runner"]);
}

/// The configuration drives `agentctl release fetch`: API, PAT, scope, cache, version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_reads_the_configuration() {
    use std::os::unix::fs::PermissionsExt;
    let emu = emulator().await;
    emu.create_repo("octo/repo", true).unwrap();
    let token = emu.add_pat(runner_agent_tests::emulator::PatSpec::classic(&["repo"]));
    publish(&emu, V1, runner_tarball(V1), true, true).await;
    publish(&emu, V2, runner_tarball(V2), true, true).await;
    emu.set_expected_runner_version(Some("octo/repo"), V1);
    let dir = tempfile::tempdir().unwrap();
    let pat = dir.path().join("github-pat");
    std::fs::write(&pat, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&pat, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\n\n[agent]\ncache_dir = \"{cache}\"\nstate_dir = \"{state}\"\n\n\
             [github]\nurl = \"{web}\"\napi_url = \"{api}\"\npat_file = \"github-pat\"\n\n\
             [defaults]\nuser = \"ra-runner\"\nroot = \"{root}\"\nversion = \"latest\"\n\n\
             [[runner]]\nname = \"r1\"\n",
            cache = dir.path().join("cache").display(),
            state = dir.path().join("state").display(),
            root = dir.path().join("runners").display(),
            web = emu.web_url_for("octo/repo"),
            api = emu.api_url(),
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(agentctl());
        command
            .args([
                "--config",
                config.to_str().unwrap(),
                "release",
                "fetch",
                "--arch",
                "x64",
            ])
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy");
        command.output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains(&token), "the token leaked: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = dir.path().join(format!("cache/{V1}/{}", asset(V1)));
    assert_eq!(
        stdout,
        format!(
            "runner {V1} (x64) verified: {}\nsha256 {} (from the asset digest)\n",
            path.display(),
            sha256_hex(&runner_tarball(V1))
        )
    );
    assert_eq!(
        emu.request_count("GET /api/v3/repos/{owner}/{repo}/actions/runners/downloads"),
        1
    );
}
