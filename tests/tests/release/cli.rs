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
    loop {
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
            !h.to_ascii_lowercase().starts_with("proxy-")
                && !h.to_ascii_lowercase().starts_with("connection:")
        }) {
            forwarded.push_str(header);
        }
        forwarded.push_str("connection: close\r\n\r\n");
        upstream.write_all(forwarded.as_bytes()).unwrap();
        upstream.write_all(&body).unwrap();
        // Relay the answer, then close: the client opens a new connection for the next request.
        let mut client = client;
        let _ = std::io::copy(&mut upstream, &mut client);
        return;
    }
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
