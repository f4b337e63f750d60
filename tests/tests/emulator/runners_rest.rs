//! REST runners: list with pagination, get, delete, labels, JIT configs, runner groups.

use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn runners_are_listed_30_per_page_with_github_link_headers() {
    let emu = start().await;
    let pat = repo_with_pat(&emu, "octo/repo");
    for i in 0..5 {
        let name = format!("r{i}");
        register(
            &emu,
            "octo/repo",
            RegisterOpts {
                name: &name,
                ..RegisterOpts::default()
            },
        )
        .await;
    }
    let r = api(
        &emu,
        Method::GET,
        "/repos/octo/repo/actions/runners",
        Some(&pat),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["total_count"], 5);
    assert_eq!(r.body["runners"].as_array().unwrap().len(), 5);
    assert!(r.header("link").is_none(), "one page needs no links");
    let first = &r.body["runners"][0];
    let mut keys: Vec<_> = first.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["busy", "ephemeral", "id", "labels", "name", "os", "status"],
        "fields of list-runners.repo.200.json"
    );

    let r = api(
        &emu,
        Method::GET,
        "/repos/octo/repo/actions/runners?per_page=2",
        Some(&pat),
        None,
    )
    .await;
    assert_eq!(r.body["total_count"], 5);
    assert_eq!(r.body["runners"].as_array().unwrap().len(), 2);
    let link = r.header("link").unwrap();
    let next = link_rel(&link, "next").unwrap();
    let last = link_rel(&link, "last").unwrap();
    assert!(
        next.starts_with(&format!("{}/repositories/", emu.api_url())),
        "GitHub links repositories by id: {next}"
    );
    assert!(
        next.ends_with("/actions/runners?per_page=2&page=2"),
        "{next}"
    );
    assert!(last.ends_with("per_page=2&page=3"), "{last}");
    assert!(link_rel(&link, "prev").is_none());

    let names = |v: &Value| {
        v["runners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let mut seen = names(&r.body);
    let mut url = Some(next);
    while let Some(u) = url {
        let page = api(&emu, Method::GET, &u, Some(&pat), None).await;
        assert_eq!(page.status, 200, "{}", page.text);
        seen.extend(names(&page.body));
        url = page.header("link").and_then(|l| link_rel(&l, "next"));
        if url.is_none() {
            let l = page.header("link").unwrap();
            assert!(link_rel(&l, "prev").unwrap().ends_with("page=2"));
            assert!(link_rel(&l, "first").unwrap().ends_with("page=1"));
        }
    }
    assert_eq!(seen, ["r0", "r1", "r2", "r3", "r4"]);

    // Links keep the request's parameters as sent and only set `page`.
    let r = api(
        &emu,
        Method::GET,
        "/repos/octo/repo/actions/runners?page=1&per_page=4",
        Some(&pat),
        None,
    )
    .await;
    let link = r.header("link").unwrap();
    assert!(
        link_rel(&link, "next")
            .unwrap()
            .ends_with("/actions/runners?page=2&per_page=4"),
        "{link}"
    );

    let r = api(
        &emu,
        Method::GET,
        "/repos/octo/repo/actions/runners?per_page=500&page=1",
        Some(&pat),
        None,
    )
    .await;
    assert_eq!(
        r.body["runners"].as_array().unwrap().len(),
        5,
        "per_page is capped at 100, not refused"
    );
    let r = api(
        &emu,
        Method::GET,
        "/repos/octo/repo/actions/runners?name=R3",
        Some(&pat),
        None,
    )
    .await;
    assert_eq!(r.body["total_count"], 1);
    assert_eq!(r.body["runners"][0]["name"], "r3");
    let r = api(
        &emu,
        Method::GET,
        "/repos/octo/repo/actions/runners?page=9",
        Some(&pat),
        None,
    )
    .await;
    assert_eq!(r.body["runners"], json!([]));
}

fn link_rel(header: &str, rel: &str) -> Option<String> {
    header.split(", ").find_map(|part| {
        let (url, r) = part.split_once("; ")?;
        (r == format!("rel=\"{rel}\""))
            .then(|| url.trim_matches(|c| c == '<' || c == '>').to_string())
    })
}

#[tokio::test]
async fn org_and_enterprise_runners_carry_their_group_and_stay_in_their_scope() {
    let emu = start().await;
    emu.create_org("octo").unwrap();
    emu.create_enterprise("big").unwrap();
    emu.create_repo("octo/repo", true).unwrap();
    let org_pat = emu.add_pat(runner_agent_tests::emulator::PatSpec::classic(&[
        "admin:org",
        "repo",
        "manage_runners:enterprise",
    ]));
    let org_runner = register(&emu, "octo", RegisterOpts::default()).await;
    let ent_runner = register(
        &emu,
        "enterprises/big",
        RegisterOpts {
            name: "ent",
            ..RegisterOpts::default()
        },
    )
    .await;
    let r = api(
        &emu,
        Method::GET,
        "/orgs/octo/actions/runners",
        Some(&org_pat),
        None,
    )
    .await;
    assert_eq!(r.body["total_count"], 1);
    assert_eq!(r.body["runners"][0]["runner_group_id"], 1);
    let r = api(
        &emu,
        Method::GET,
        &format!("/enterprises/big/actions/runners/{}", ent_runner.id),
        Some(&org_pat),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["name"], "ent");
    // Another scope's runner is not found.
    let r = api(
        &emu,
        Method::GET,
        &format!("/repos/octo/repo/actions/runners/{}", org_runner.id),
        Some(&org_pat),
        None,
    )
    .await;
    assert_github_error(&r, 404, "Not Found");
    let r = api(
        &emu,
        Method::GET,
        "/repos/octo/repo/actions/runners/notanumber",
        Some(&org_pat),
        None,
    )
    .await;
    assert_github_error(&r, 404, "Not Found");

    emu.create_runner_group("octo", "lab", true).unwrap();
    let r = api(
        &emu,
        Method::GET,
        "/orgs/octo/actions/runner-groups",
        Some(&org_pat),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["total_count"], 2);
    assert_eq!(r.body["runner_groups"][0]["name"], "Default");
    assert_eq!(r.body["runner_groups"][0]["default"], true);
    assert_eq!(r.body["runner_groups"][1]["name"], "lab");
    assert_eq!(
        r.body["runner_groups"][1]["allows_public_repositories"],
        true
    );
    let id = r.body["runner_groups"][1]["id"].as_u64().unwrap();
    let r = api(
        &emu,
        Method::GET,
        &format!("/orgs/octo/actions/runner-groups/{id}"),
        Some(&org_pat),
        None,
    )
    .await;
    assert_eq!(r.body["name"], "lab");
    let r = api(
        &emu,
        Method::GET,
        "/orgs/octo/actions/runner-groups/1/runners",
        Some(&org_pat),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["total_count"], 1);
    assert_eq!(r.body["runners"][0]["id"], org_runner.id);
    let r = api(
        &emu,
        Method::GET,
        &format!("/orgs/octo/actions/runner-groups/{id}/runners"),
        Some(&org_pat),
        None,
    )
    .await;
    assert_eq!(r.body["total_count"], 0);
    let r = api(
        &emu,
        Method::GET,
        "/orgs/octo/actions/runner-groups/999/runners",
        Some(&org_pat),
        None,
    )
    .await;
    assert_github_error(&r, 404, "Not Found");
    let r = api(
        &emu,
        Method::GET,
        "/repos/octo/repo/actions/runner-groups",
        Some(&org_pat),
        None,
    )
    .await;
    assert_github_error(&r, 404, "Not Found");
}

#[tokio::test]
async fn deleting_a_runner_is_204_then_404_and_refused_while_it_runs_a_job() {
    let emu = start().await;
    let pat = repo_with_pat(&emu, "octo/repo");
    let l = register(&emu, "octo/repo", RegisterOpts::default()).await;
    let job = emu.queue_job("octo/repo", &[], "true").unwrap();
    let (_, body) = message_body(&l.poll(&emu).await);
    let path = format!("/repos/octo/repo/actions/runners/{}", l.id);
    let r = api(&emu, Method::DELETE, &path, Some(&pat), None).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.body["message"]
        .as_str()
        .unwrap()
        .contains("is still running a job"));
    l.complete(
        &emu,
        job,
        body["requestId"].as_u64().unwrap(),
        "succeeded",
        0,
        "",
    )
    .await;
    let r = api(&emu, Method::DELETE, &path, Some(&pat), None).await;
    assert_eq!(r.status, 204);
    assert!(r.text.is_empty());
    let r = api(&emu, Method::DELETE, &path, Some(&pat), None).await;
    assert_github_error(&r, 404, "Not Found");
    let read = emu.add_pat(runner_agent_tests::emulator::PatSpec::fine_grained(&[(
        "administration",
        "read",
    )]));
    let r = api(&emu, Method::DELETE, &path, Some(&read), None).await;
    assert_github_error(&r, 403, "Resource not accessible by personal access token");
}

#[tokio::test]
async fn labels_can_be_listed_added_set_and_removed() {
    let emu = start().await;
    let pat = repo_with_pat(&emu, "octo/repo");
    let l = register(
        &emu,
        "octo/repo",
        RegisterOpts {
            labels: &["gpu"],
            ..RegisterOpts::default()
        },
    )
    .await;
    let path = format!("/repos/octo/repo/actions/runners/{}/labels", l.id);
    let names = |v: &Value| {
        v["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };

    let r = api(&emu, Method::GET, &path, Some(&pat), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["total_count"], 4);
    assert_eq!(names(&r.body), ["self-hosted", "Linux", "X64", "gpu"]);
    let label = &r.body["labels"][3];
    assert!(label["id"].as_u64().is_some());
    assert_eq!(label["type"], "custom");

    let r = api(
        &emu,
        Method::POST,
        &path,
        Some(&pat),
        Some(json!({"labels": ["kvm", "GPU"]})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        names(&r.body),
        ["self-hosted", "Linux", "X64", "gpu", "kvm"]
    );
    let r = api(
        &emu,
        Method::POST,
        &path,
        Some(&pat),
        Some(json!({"labels": []})),
    )
    .await;
    assert_eq!(r.status, 422);
    let r = api(&emu, Method::POST, &path, Some(&pat), Some(json!({}))).await;
    assert_eq!(r.status, 422);
    let long = "x".repeat(257);
    let r = api(
        &emu,
        Method::POST,
        &path,
        Some(&pat),
        Some(json!({"labels": [long]})),
    )
    .await;
    assert_eq!(r.status, 422);

    let r = api(
        &emu,
        Method::PUT,
        &path,
        Some(&pat),
        Some(json!({"labels": ["board-a"]})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(names(&r.body), ["self-hosted", "Linux", "X64", "board-a"]);

    let r = api(
        &emu,
        Method::DELETE,
        &format!("{path}/board-a"),
        Some(&pat),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(names(&r.body), ["self-hosted", "Linux", "X64"]);
    let r = api(
        &emu,
        Method::DELETE,
        &format!("{path}/board-a"),
        Some(&pat),
        None,
    )
    .await;
    assert_github_error(&r, 404, "Not Found");
    let r = api(
        &emu,
        Method::DELETE,
        &format!("{path}/Linux"),
        Some(&pat),
        None,
    )
    .await;
    assert_eq!(r.status, 422);

    api(
        &emu,
        Method::POST,
        &path,
        Some(&pat),
        Some(json!({"labels": ["a", "b"]})),
    )
    .await;
    let r = api(&emu, Method::DELETE, &path, Some(&pat), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(names(&r.body), ["self-hosted", "Linux", "X64"]);

    // Labels set through REST route jobs.
    api(
        &emu,
        Method::PUT,
        &path,
        Some(&pat),
        Some(json!({"labels": ["hil"]})),
    )
    .await;
    let job = emu.queue_job("octo/repo", &["hil"], "true").unwrap();
    let (_, body) = message_body(&l.poll(&emu).await);
    assert_eq!(body["jobId"], job);

    let r = api(
        &emu,
        Method::GET,
        "/repos/octo/repo/actions/runners/999999/labels",
        Some(&pat),
        None,
    )
    .await;
    assert_github_error(&r, 404, "Not Found");
}

#[tokio::test]
async fn jit_configs_register_an_ephemeral_runner_with_the_files_config_sh_writes() {
    let emu = start().await;
    let pat = repo_with_pat(&emu, "octo/repo");
    let path = "/repos/octo/repo/actions/runners/generate-jitconfig";
    let body = json!({"name": "jit-1", "runner_group_id": 1, "labels": ["self-hosted", "kvm"], "work_folder": "_work"});
    let r = api(&emu, Method::POST, path, Some(&pat), Some(body.clone())).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["runner"]["name"], "jit-1");
    assert_eq!(r.body["runner"]["status"], "offline");
    assert_eq!(r.body["runner"]["ephemeral"], true);
    let b64 = base64::engine::general_purpose::STANDARD;
    let files: Value = serde_json::from_slice(
        &b64.decode(r.body["encoded_jit_config"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let file = |name: &str| -> Value {
        let raw = b64.decode(files[name].as_str().unwrap()).unwrap();
        assert_eq!(&raw[..3], b"\xEF\xBB\xBF", "{name} has a UTF-8 BOM");
        serde_json::from_slice(&raw[3..]).unwrap()
    };
    let runner = file(".runner");
    assert_eq!(runner["agentName"], "jit-1");
    assert_eq!(runner["agentId"], r.body["runner"]["id"]);
    assert_eq!(runner["poolId"], 1);
    assert_eq!(
        runner["serverUrl"],
        format!("{}/_services/pipelines/", emu.url())
    );
    assert_eq!(runner["gitHubUrl"], emu.web_url_for("octo/repo"));
    assert_eq!(runner["ephemeral"], true);
    let creds = file(".credentials");
    assert_eq!(creds["scheme"], "OAuth");
    let rsa = file(".credentials_rsaparams");
    for k in ["d", "dp", "dq", "exponent", "inverseQ", "modulus", "p", "q"] {
        assert!(rsa[k].is_string(), "{k}");
    }
    // The JIT runner's credentials work: client id + the key's modulus.
    let tok = oauth(
        &emu,
        creds["data"]["clientId"].as_str().unwrap(),
        rsa["modulus"].as_str().unwrap(),
    )
    .await;
    assert_eq!(tok.status, 200, "{}", tok.text);

    let r = api(&emu, Method::POST, path, Some(&pat), Some(body)).await;
    assert_eq!(r.status, 409);
    assert!(r.body["message"]
        .as_str()
        .unwrap()
        .contains("already exists"));
    let r = api(
        &emu,
        Method::POST,
        path,
        Some(&pat),
        Some(json!({"name": "jit-2", "runner_group_id": 1})),
    )
    .await;
    assert_eq!(r.status, 422);
    let r = api(
        &emu,
        Method::POST,
        path,
        Some(&pat),
        Some(json!({"name": "jit-2", "runner_group_id": 1, "labels": []})),
    )
    .await;
    assert_eq!(r.status, 422);
    let r = api(
        &emu,
        Method::POST,
        path,
        Some(&pat),
        Some(json!({"name": "jit-2", "runner_group_id": 77, "labels": ["a"]})),
    )
    .await;
    assert_github_error(&r, 404, "Not Found");
}
