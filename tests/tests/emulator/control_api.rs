//! The control API over HTTP (what bash end-to-end tests and demos use) and the
//! `github-emulator` binary.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::*;

async fn control(emu_url: &str, method: Method, path: &str, body: Option<Value>) -> Reply {
    let mut req = client().request(method, format!("{emu_url}/_emulator{path}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    send(req).await
}

#[tokio::test]
async fn the_control_api_drives_scopes_tokens_jobs_faults_clock_and_counts() {
    let emu = start().await;
    let u = emu.url();
    let r = control(
        &u,
        Method::POST,
        "/repos",
        Some(json!({"name": "octo/repo", "private": true})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["url"], emu.web_url_for("octo/repo"));
    assert_eq!(
        control(
            &u,
            Method::POST,
            "/repos",
            Some(json!({"name": "octo/repo"}))
        )
        .await
        .status,
        422
    );
    let r = control(&u, Method::POST, "/orgs", Some(json!({"name": "octo", "runner_groups": [{"name": "lab", "allows_public_repositories": false}]}))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["runner_groups"][0]["name"], "lab");
    assert_eq!(
        control(
            &u,
            Method::POST,
            "/enterprises",
            Some(json!({"slug": "big"}))
        )
        .await
        .status,
        200
    );

    let r = control(
        &u,
        Method::POST,
        "/tokens",
        Some(json!({"kind": "classic", "scopes": ["repo"]})),
    )
    .await;
    let pat = r.body["token"].as_str().unwrap().to_string();
    assert!(pat.starts_with("ghp_"));
    let r = control(
        &u,
        Method::POST,
        "/tokens",
        Some(json!({"kind": "fine_grained", "permissions": {"administration": "write"}})),
    )
    .await;
    let fg = r.body["token"].as_str().unwrap().to_string();
    assert!(fg.starts_with("github_pat_"));
    assert_eq!(
        api(
            &emu,
            Method::GET,
            "/repos/octo/repo/actions/runners",
            Some(&fg),
            None
        )
        .await
        .status,
        200
    );
    let r = control(
        &u,
        Method::POST,
        "/tokens/rotate",
        Some(json!({"token": fg})),
    )
    .await;
    let fg2 = r.body["token"].as_str().unwrap().to_string();
    assert_eq!(
        api(
            &emu,
            Method::GET,
            "/repos/octo/repo/actions/runners",
            Some(&fg),
            None
        )
        .await
        .status,
        401
    );
    assert_eq!(
        api(
            &emu,
            Method::GET,
            "/repos/octo/repo/actions/runners",
            Some(&fg2),
            None
        )
        .await
        .status,
        200
    );
    let r = control(
        &u,
        Method::POST,
        "/tokens/revoke",
        Some(json!({"token": fg2})),
    )
    .await;
    assert_eq!(r.body["revoked"], true);

    let key = runner_agent_tests::emulator::keys::generate_app_key().unwrap();
    let r = control(&u, Method::POST, "/apps", Some(json!({"public_key_pem": key.public_key_pem, "installations": [{"id": 5, "account": "octo", "permissions": {"organization_self_hosted_runners": "write"}}]}))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body["app_id"].as_u64().is_some());
    assert_eq!(
        control(
            &u,
            Method::POST,
            "/apps",
            Some(json!({"public_key_pem": "nope"}))
        )
        .await
        .status,
        400
    );

    // Jobs: queue, a runner takes it, read back the result.
    let l = register(&emu, "octo/repo", RegisterOpts::default()).await;
    let r = control(&u, Method::GET, "/runners?scope=octo/repo", None).await;
    assert_eq!(r.body[0]["name"], "runner-1");
    assert_eq!(r.body[0]["status"], "online");
    let r = control(
        &u,
        Method::POST,
        "/jobs",
        Some(json!({"scope": "octo/repo", "labels": ["self-hosted"], "script": "exit 3"})),
    )
    .await;
    let job = r.body["id"].as_u64().unwrap();
    assert_eq!(
        control(&u, Method::GET, &format!("/jobs/{job}"), None)
            .await
            .body["status"],
        "queued"
    );
    let (_, body) = message_body(&l.poll(&emu).await);
    l.complete(
        &emu,
        job,
        body["requestId"].as_u64().unwrap(),
        "failed",
        3,
        "boom",
    )
    .await;
    let r = control(
        &u,
        Method::GET,
        &format!("/jobs/{job}/wait?timeout=5"),
        None,
    )
    .await;
    assert_eq!(r.body["status"], "completed");
    assert_eq!(r.body["result"], "failed");
    assert_eq!(r.body["exit_code"], 3);
    assert_eq!(r.body["output"], "boom");
    assert_eq!(r.body["runner_name"], "runner-1");
    let r = control(
        &u,
        Method::POST,
        "/jobs",
        Some(json!({"scope": "octo/repo", "labels": ["nothing"], "script": "true"})),
    )
    .await;
    let queued = r.body["id"].as_u64().unwrap();
    assert_eq!(
        control(&u, Method::POST, &format!("/jobs/{queued}/cancel"), None)
            .await
            .status,
        200
    );
    assert_eq!(
        control(&u, Method::GET, &format!("/jobs/{queued}"), None)
            .await
            .body["result"],
        "cancelled"
    );
    assert_eq!(
        control(&u, Method::GET, "/jobs/424242", None).await.status,
        404
    );

    // Faults.
    assert_eq!(
        control(
            &u,
            Method::POST,
            "/faults",
            Some(json!({"status": 500, "count": 1}))
        )
        .await
        .status,
        200
    );
    assert_eq!(
        api(
            &emu,
            Method::GET,
            "/repos/octo/repo/actions/runners",
            Some(&pat),
            None
        )
        .await
        .status,
        500
    );
    control(
        &u,
        Method::POST,
        "/faults",
        Some(json!({"rate_limit": "secondary", "count": 1})),
    )
    .await;
    let r = api(
        &emu,
        Method::GET,
        "/repos/octo/repo/actions/runners",
        Some(&pat),
        None,
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("retry-after").unwrap(), "60");
    control(
        &u,
        Method::POST,
        "/faults",
        Some(json!({"status": 502, "count": 9})),
    )
    .await;
    assert_eq!(
        control(&u, Method::DELETE, "/faults", None).await.status,
        200
    );
    assert_eq!(
        api(
            &emu,
            Method::GET,
            "/repos/octo/repo/actions/runners",
            Some(&pat),
            None
        )
        .await
        .status,
        200
    );
    assert_eq!(
        control(&u, Method::POST, "/faults", Some(json!({"count": 1})))
            .await
            .status,
        400
    );

    // Clock, runner deletion, versions, counts.
    let before = emu.now().unix_timestamp();
    let r = control(
        &u,
        Method::POST,
        "/clock/advance",
        Some(json!({"seconds": 100})),
    )
    .await;
    assert!(r.body["now"].as_i64().unwrap() >= before + 100);
    assert_eq!(
        control(&u, Method::DELETE, &format!("/runners/{}", l.id), None)
            .await
            .status,
        200
    );
    assert_eq!(
        control(&u, Method::DELETE, &format!("/runners/{}", l.id), None)
            .await
            .status,
        404
    );
    let r = control(
        &u,
        Method::POST,
        "/runner-version",
        Some(json!({"expected": "2.330.0", "deprecated_below": "2.300.0"})),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = control(&u, Method::GET, "/requests", None).await;
    assert_eq!(
        r.body["GET /api/v3/repos/{owner}/{repo}/actions/runners"]["count"],
        6
    );
    assert_eq!(
        r.body["POST /_services/pipelines/_apis/distributedtask/jobs/{jobId}/complete"]["count"],
        1
    );
    assert_eq!(control(&u, Method::GET, "/nope", None).await.status, 404);

    let r = control(&u, Method::GET, "", None).await;
    assert_eq!(r.body["api_url"], emu.api_url());
    let r = control(
        &u,
        Method::POST,
        "/registration-token",
        Some(json!({"scope": "octo/repo"})),
    )
    .await;
    let token = r.body["token"].as_str().unwrap().to_string();
    assert_eq!(
        exchange(&emu, &token, "octo/repo", "register").await.status,
        200
    );
    let r = control(
        &u,
        Method::POST,
        "/registration-token",
        Some(json!({"scope": "no/where"})),
    )
    .await;
    assert_eq!(r.status, 404);
    let r = control(
        &u,
        Method::POST,
        "/jobs",
        Some(json!({"scope": "octo/repo", "labels": ["nobody"], "script": "true"})),
    )
    .await;
    let stuck = r.body["id"].as_u64().unwrap();
    let r = control(
        &u,
        Method::GET,
        &format!("/jobs/{stuck}/wait?timeout=0"),
        None,
    )
    .await;
    assert_eq!(r.status, 408);
}

#[tokio::test]
async fn releases_are_published_from_files_through_the_control_api() {
    let emu = start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runner.tar.gz");
    std::fs::write(&path, b"tarball bytes").unwrap();
    let r = control(
        &emu.url(),
        Method::POST,
        "/releases",
        Some(json!({"version": "2.336.0", "assets": {"linux-x64": path}})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = control(
        &emu.url(),
        Method::POST,
        "/releases",
        Some(json!({"version": "2.337.0", "assets": {"linux-x64": "/nonexistent"}})),
    )
    .await;
    assert_eq!(r.status, 422);
    let r = api(
        &emu,
        Method::GET,
        "/repos/actions/runner/releases/latest",
        None,
        None,
    )
    .await;
    assert_eq!(r.body["tag_name"], "v2.336.0");
    let url = r.body["assets"][0]["browser_download_url"]
        .as_str()
        .unwrap();
    assert_eq!(
        reqwest::get(url)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        b"tarball bytes"
    );
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_binary_serves_a_seeded_repo_and_a_release_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("actions-runner-linux-x64-2.336.0.tar.gz"),
        b"x64",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_github-emulator"))
            .args(["--seed-repo", "octo/demo", "--release-dir"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.starts_with("release=");
            out.push(line);
            if done {
                break;
            }
        }
        out
    });
    let lines = tokio::time::timeout(Duration::from_secs(60), lines)
        .await
        .unwrap()
        .unwrap();
    let field = |key: &str| {
        lines
            .iter()
            .flat_map(|l| l.split(' '))
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
            .unwrap_or_else(|| panic!("no {key} in {lines:?}"))
    };
    let api_url = field("api_url");
    let pat = field("pat");
    assert_eq!(field("repo"), "octo/demo");
    assert_eq!(field("release"), "v2.336.0");
    let r = send(
        client()
            .post(format!(
                "{api_url}/repos/octo/demo/actions/runners/registration-token"
            ))
            .bearer_auth(&pat),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = send(
        client()
            .get(format!(
                "{api_url}/repos/octo/demo/actions/runners/downloads"
            ))
            .bearer_auth(&pat),
    )
    .await;
    assert_eq!(
        r.body[0]["filename"],
        "actions-runner-linux-x64-2.336.0.tar.gz"
    );
}

#[test]
fn a_background_emulator_serves_synchronous_tests() {
    use std::io::{Read, Write};
    let bg = runner_agent_tests::emulator::BackgroundEmulator::start(Default::default()).unwrap();
    bg.create_repo("octo/repo", true).unwrap();
    let addr = bg.emulator().addr();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /api/v3/meta HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.contains("installed_version"));
    let job = bg.queue_job("octo/repo", &[], "true").unwrap();
    bg.cancel_job(job).unwrap();
    let view = bg
        .block_on(bg.wait_job(job, Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    assert_eq!(view.result.as_deref(), Some("cancelled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_fault_fails_that_share_and_a_hold_stops_a_request_at_its_step() {
    let emu = start().await;
    let u = emu.url();
    let pat = repo_with_pat(&emu, "octo/repo");
    let list = "/repos/octo/repo/actions/runners";

    // 30 % of 20 requests: exactly 6 fail, spread out.
    control(
        &u,
        Method::POST,
        "/faults",
        Some(json!({"status": 503, "percent": 30, "count": 1000, "path_prefix": "/api/v3/"})),
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(api(&emu, Method::GET, list, Some(&pat), None).await.status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        6,
        "{statuses:?}"
    );
    assert!(
        !statuses.windows(2).any(|w| w == [503, 503]),
        "{statuses:?}"
    );
    control(&u, Method::DELETE, "/faults", None).await;

    // Held after: the registration token is minted, its answer waits for the release.
    let token_path = "/api/v3/repos/octo/repo/actions/runners/registration-token";
    control(
        &u,
        Method::POST,
        "/faults",
        Some(json!({"hold": "after", "method": "POST", "path_prefix": token_path})),
    )
    .await;
    let pending = {
        let emu_url = emu.api_url();
        let pat = pat.clone();
        tokio::spawn(async move {
            send(
                client()
                    .post(format!(
                        "{emu_url}/repos/octo/repo/actions/runners/registration-token"
                    ))
                    .bearer_auth(pat),
            )
            .await
        })
    };
    assert!(emu.wait_held(1, Duration::from_secs(10)).await);
    assert_eq!(
        control(&u, Method::GET, "/holds", None).await.body["held"],
        1
    );
    // Other requests pass meanwhile.
    assert_eq!(
        api(&emu, Method::GET, list, Some(&pat), None).await.status,
        200
    );
    let released = control(
        &u,
        Method::POST,
        "/holds/release",
        Some(json!({"how": "proceed"})),
    )
    .await;
    assert_eq!(released.body["released"], 1);
    let reply = pending.await.unwrap();
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    assert_eq!(emu.held(), 0);

    // Held before and dropped: the connection closes and the request never took effect.
    control(
        &u,
        Method::POST,
        "/faults",
        Some(json!({"hold": "before", "method": "DELETE", "path_prefix": "/api/v3/repos/octo/repo/actions/runners/"})),
    )
    .await;
    let url = format!("{}/repos/octo/repo/actions/runners/12345", emu.api_url());
    let pat2 = pat.clone();
    let pending = tokio::spawn(async move { client().delete(url).bearer_auth(pat2).send().await });
    assert!(emu.wait_held(1, Duration::from_secs(10)).await);
    control(
        &u,
        Method::POST,
        "/holds/release",
        Some(json!({"how": "drop"})),
    )
    .await;
    assert!(
        pending.await.unwrap().is_err(),
        "a dropped request got an answer"
    );
    let deletes: u64 = emu
        .request_counts()
        .iter()
        .filter(|(route, _)| route.starts_with("DELETE "))
        .map(|(_, c)| c.count)
        .sum();
    assert_eq!(deletes, 0, "the dropped request was handled");
}
