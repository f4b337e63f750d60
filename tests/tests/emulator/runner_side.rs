//! The runner service of `tests/PROTOCOL.md`, driven as `config.sh` and `Runner.Listener` do.

use std::time::{Duration, Instant};

use reqwest::Method;
use runner_agent_tests::emulator::{AssetSource, EmulatorOptions, JobStatus, ReleaseOptions};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn token_exchange_gives_a_tenant_and_refuses_bad_tokens_with_404() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    emu.create_repo("octo/other", true).unwrap();
    let token = emu.registration_token("octo/repo").unwrap();
    let r = exchange(&emu, &token, "octo/repo", "register").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["url"], format!("{}/_services/pipelines/", emu.url()));
    assert_eq!(r.body["token_schema"], "OAuthAccessToken");
    assert_eq!(r.body["use_v2_flow"], false);
    // A registration token may register several runners until it expires.
    assert_eq!(
        exchange(&emu, &token, "octo/repo", "register").await.status,
        200
    );
    // Another scope's URL, the wrong event, an unknown token: 404.
    assert_github_error(
        &exchange(&emu, &token, "octo/other", "register").await,
        404,
        "Not Found",
    );
    assert_github_error(
        &exchange(&emu, &token, "octo/repo", "remove").await,
        404,
        "Not Found",
    );
    assert_github_error(
        &exchange(&emu, "NOTATOKEN", "octo/repo", "register").await,
        404,
        "Not Found",
    );
    emu.advance_clock(3601);
    assert_github_error(
        &exchange(&emu, &token, "octo/repo", "register").await,
        404,
        "Not Found",
    );
}

#[tokio::test]
async fn a_registered_runner_polls_gets_a_job_and_reports_its_result() {
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

    // Until it polls, a fresh session already counts as online.
    let r = api(
        &emu,
        Method::GET,
        &format!("/repos/octo/repo/actions/runners/{}", l.id),
        Some(&pat),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "online");
    assert_eq!(r.body["busy"], false);
    assert_eq!(r.body["os"], "linux");
    let labels: Vec<_> = r.body["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap().to_string(),
                l["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        labels,
        [
            ("self-hosted".into(), "read-only".into()),
            ("Linux".into(), "read-only".into()),
            ("X64".into(), "read-only".into()),
            ("gpu".to_string(), "custom".to_string())
        ]
    );

    let job = emu
        .queue_job("octo/repo", &["self-hosted", "LINUX", "gpu"], "echo hello")
        .unwrap();
    let (kind, body) = message_body(&l.poll(&emu).await);
    assert_eq!(kind, "PipelineAgentJobRequest");
    assert_eq!(body["jobId"], job);
    assert_eq!(body["steps"][0]["script"], "echo hello");
    let request_id = body["requestId"].as_u64().unwrap();
    assert_eq!(emu.job(job).unwrap().status, JobStatus::InProgress);
    let r = api(
        &emu,
        Method::GET,
        &format!("/repos/octo/repo/actions/runners/{}", l.id),
        Some(&pat),
        None,
    )
    .await;
    assert_eq!(r.body["busy"], true);

    let done = l
        .complete(&emu, job, request_id, "succeeded", 0, "hello\n")
        .await;
    assert_eq!(done.status, 200, "{}", done.text);
    let view = emu.wait_job(job, Duration::from_secs(5)).await.unwrap();
    assert_eq!(view.status, JobStatus::Completed);
    assert_eq!(view.result.as_deref(), Some("succeeded"));
    assert_eq!(view.exit_code, Some(0));
    assert_eq!(view.output.as_deref(), Some("hello\n"));
    assert_eq!(view.runner_id, Some(l.id));
    assert_eq!(view.runner_name.as_deref(), Some("runner-1"));
    let r = api(
        &emu,
        Method::GET,
        &format!("/repos/octo/repo/actions/runners/{}", l.id),
        Some(&pat),
        None,
    )
    .await;
    assert_eq!(r.body["busy"], false);

    // Completing twice is refused.
    let again = l.complete(&emu, job, request_id, "succeeded", 0, "").await;
    assert_eq!(again.status, 404);
    assert_eq!(
        again.body["typeKey"],
        "TaskOrchestrationJobNotFoundException"
    );
}

#[tokio::test]
async fn an_empty_poll_is_202_after_the_long_poll_and_a_queued_job_wakes_it_at_once() {
    let emu = start_with(EmulatorOptions {
        long_poll: Duration::from_secs(1),
        ..EmulatorOptions::default()
    })
    .await;
    emu.create_repo("octo/repo", true).unwrap();
    let l = register(&emu, "octo/repo", RegisterOpts::default()).await;
    let t = Instant::now();
    let r = l.poll(&emu).await;
    assert_eq!(r.status, 202);
    assert!(r.text.is_empty());
    assert!(t.elapsed() >= Duration::from_millis(900));

    let slow = start_with(EmulatorOptions {
        long_poll: Duration::from_secs(30),
        ..EmulatorOptions::default()
    })
    .await;
    slow.create_repo("octo/repo", true).unwrap();
    let l = register(&slow, "octo/repo", RegisterOpts::default()).await;
    let t = Instant::now();
    let (reply, job) = tokio::join!(l.poll(&slow), async {
        assert!(slow.wait_for_polls(1, Duration::from_secs(10)).await);
        slow.queue_job("octo/repo", &["self-hosted"], "true")
            .unwrap()
    });
    let (kind, body) = message_body(&reply);
    assert_eq!(kind, "PipelineAgentJobRequest");
    assert_eq!(body["jobId"], job);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the poll woke up at once"
    );
}

#[tokio::test]
async fn one_session_per_runner_and_a_deleted_session_frees_the_slot() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    let l = register(&emu, "octo/repo", RegisterOpts::default()).await;
    let r = l.create_session(&emu).await;
    assert_eq!(r.status, 409);
    assert_eq!(
        r.body["message"],
        "A session for this runner already exists."
    );
    assert_eq!(r.body["typeKey"], "TaskAgentSessionConflictException");
    let del = service(
        &emu,
        Method::DELETE,
        &format!("distributedtask/pools/{}/sessions/{}", l.pool, l.session),
        &l.access,
        None,
    )
    .await;
    assert_eq!(del.status, 204);
    // The old session is gone: polling with it asks for a new one.
    let r = l.poll(&emu).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["typeKey"], "TaskAgentSessionExpiredException");
    assert_eq!(l.create_session(&emu).await.status, 200);
}

#[tokio::test]
async fn a_silent_session_expires_after_90_seconds_and_the_runner_goes_offline() {
    let emu = start().await;
    let pat = repo_with_pat(&emu, "octo/repo");
    let l = register(&emu, "octo/repo", RegisterOpts::default()).await;
    emu.advance_clock(91);
    let r = api(
        &emu,
        Method::GET,
        &format!("/repos/octo/repo/actions/runners/{}", l.id),
        Some(&pat),
        None,
    )
    .await;
    assert_eq!(r.body["status"], "offline");
    let r = l.poll(&emu).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["typeKey"], "TaskAgentSessionExpiredException");
    let s = l.create_session(&emu).await;
    assert_eq!(s.status, 200, "a new session may be opened");
}

#[tokio::test]
async fn a_deleted_registration_answers_invalid_client_and_task_agent_not_found() {
    let emu = start().await;
    let pat = repo_with_pat(&emu, "octo/repo");
    let l = register(&emu, "octo/repo", RegisterOpts::default()).await;
    let r = api(
        &emu,
        Method::DELETE,
        &format!("/repos/octo/repo/actions/runners/{}", l.id),
        Some(&pat),
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = oauth(&emu, &l.client_id, &l.public_key).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body, json!({"error": "invalid_client"}));
    let r = l.poll(&emu).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["typeKey"], "TaskAgentNotFoundException");
}

#[tokio::test]
async fn github_cleanup_deletes_runners_offline_for_14_days() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    let l = register(&emu, "octo/repo", RegisterOpts::default()).await;
    emu.advance_clock(13 * 86400);
    assert_eq!(emu.runners(Some("octo/repo")).len(), 1);
    emu.advance_clock(2 * 86400);
    assert!(emu.runners(Some("octo/repo")).is_empty());
    assert_eq!(
        oauth(&emu, &l.client_id, &l.public_key).await.body["error"],
        "invalid_client"
    );
}

#[tokio::test]
async fn the_control_api_deletes_a_runner_while_it_long_polls() {
    let emu = start_with(EmulatorOptions {
        long_poll: Duration::from_secs(30),
        ..EmulatorOptions::default()
    })
    .await;
    emu.create_repo("octo/repo", true).unwrap();
    let l = register(&emu, "octo/repo", RegisterOpts::default()).await;
    let t = Instant::now();
    let (reply, deleted) = tokio::join!(l.poll(&emu), async {
        assert!(emu.wait_for_polls(1, Duration::from_secs(10)).await);
        emu.delete_runner(l.id)
    });
    assert!(deleted);
    assert_eq!(reply.status, 404, "{}", reply.text);
    assert_eq!(reply.body["typeKey"], "TaskAgentNotFoundException");
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn same_name_conflicts_unless_replace_which_keeps_the_id_and_kills_old_credentials() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    let old = register(&emu, "octo/repo", RegisterOpts::default()).await;
    let token = emu.registration_token("octo/repo").unwrap();
    let tenant = exchange(&emu, &token, "octo/repo", "register").await.body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let body =
        json!({"name": "RUNNER-1", "version": "2.336.0", "labels": [], "publicKey": "pk-new"});
    let r = service(
        &emu,
        Method::POST,
        "distributedtask/pools/1/agents",
        &tenant,
        Some(body.clone()),
    )
    .await;
    assert_eq!(r.status, 409);
    assert_eq!(
        r.body["message"],
        "A runner exists with the same name RUNNER-1."
    );
    assert_eq!(r.body["typeKey"], "TaskAgentExistsException");

    let mut replace = body;
    replace["replace"] = json!(true);
    let r = service(
        &emu,
        Method::POST,
        "distributedtask/pools/1/agents",
        &tenant,
        Some(replace),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["id"], old.id);
    assert_ne!(r.body["authorization"]["clientId"], old.client_id.as_str());
    assert_eq!(
        oauth(&emu, &old.client_id, &old.public_key).await.body["error"],
        "invalid_client"
    );
    assert_eq!(old.poll(&emu).await.status, 401);
    let new_client = r.body["authorization"]["clientId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(oauth(&emu, &new_client, "pk-new").await.status, 200);
    assert_eq!(
        oauth(&emu, &new_client, "wrong").await.body["error"],
        "invalid_client"
    );
    assert_eq!(emu.runners(None).len(), 1);
}

#[tokio::test]
async fn a_remove_token_deletes_the_registration() {
    let emu = start().await;
    let pat = repo_with_pat(&emu, "octo/repo");
    let l = register(&emu, "octo/repo", RegisterOpts::default()).await;
    let r = api(
        &emu,
        Method::POST,
        "/repos/octo/repo/actions/runners/remove-token",
        Some(&pat),
        None,
    )
    .await;
    let remove = r.body["token"].as_str().unwrap().to_string();
    let ex = exchange(&emu, &remove, "octo/repo", "remove").await;
    assert_eq!(ex.status, 200);
    let tenant = ex.body["token"].as_str().unwrap().to_string();
    let found = service(
        &emu,
        Method::GET,
        "distributedtask/pools/1/agents?agentName=runner-1",
        &tenant,
        None,
    )
    .await;
    assert_eq!(found.body["count"], 1);
    assert_eq!(found.body["value"][0]["id"], l.id);
    let path = format!("distributedtask/pools/1/agents/{}", l.id);
    assert_eq!(
        service(&emu, Method::DELETE, &path, &tenant, None)
            .await
            .status,
        204
    );
    let again = service(&emu, Method::DELETE, &path, &tenant, None).await;
    assert_eq!(again.status, 404);
    assert_eq!(again.body["typeKey"], "TaskAgentNotFoundException");
    assert!(emu.runners(None).is_empty());
}

#[tokio::test]
async fn a_cancelled_job_reaches_its_runner_as_a_cancellation_message() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    let l = register(&emu, "octo/repo", RegisterOpts::default()).await;
    let queued = emu
        .queue_job("octo/repo", &["no-such-label"], "true")
        .unwrap();
    emu.cancel_job(queued).unwrap();
    assert_eq!(
        emu.job(queued).unwrap().result.as_deref(),
        Some("cancelled")
    );

    let job = emu
        .queue_job("octo/repo", &["self-hosted"], "sleep 100")
        .unwrap();
    let (_, body) = message_body(&l.poll(&emu).await);
    let request_id = body["requestId"].as_u64().unwrap();
    emu.cancel_job(job).unwrap();
    let (kind, body) = message_body(&l.poll(&emu).await);
    assert_eq!(kind, "JobCancellation");
    assert_eq!(body["jobId"], job);
    let ack = service(
        &emu,
        Method::DELETE,
        &format!("distributedtask/pools/1/messages/1?sessionId={}", l.session),
        &l.access,
        None,
    )
    .await;
    assert_eq!(ack.status, 204);
    l.complete(&emu, job, request_id, "cancelled", 143, "")
        .await;
    let view = emu.wait_job(job, Duration::from_secs(5)).await.unwrap();
    assert_eq!(view.result.as_deref(), Some("cancelled"));
}

#[tokio::test]
async fn jobs_go_to_matching_idle_runners_only() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    emu.create_repo("octo/public", false).unwrap();
    emu.create_org("octo").unwrap();
    let plain = register(
        &emu,
        "octo/repo",
        RegisterOpts {
            name: "plain",
            ..RegisterOpts::default()
        },
    )
    .await;
    let job = emu
        .queue_job("octo/repo", &["self-hosted", "kvm"], "true")
        .unwrap();
    assert_eq!(
        plain.poll(&emu).await.status,
        202,
        "labels are not a superset"
    );
    assert_eq!(emu.job(job).unwrap().status, JobStatus::Queued);
    let kvm = register(
        &emu,
        "octo/repo",
        RegisterOpts {
            name: "kvm",
            labels: &["KVM"],
            ..RegisterOpts::default()
        },
    )
    .await;
    let (_, body) = message_body(&kvm.poll(&emu).await);
    assert_eq!(body["jobId"], job);

    // A busy runner gets no second job.
    let second = emu.queue_job("octo/repo", &["kvm"], "true").unwrap();
    assert_eq!(kvm.poll(&emu).await.status, 202);
    assert_eq!(emu.job(second).unwrap().status, JobStatus::Queued);

    // Org runners take the org's private repo jobs; public repos only through groups that allow them.
    let org_default = register(
        &emu,
        "octo",
        RegisterOpts {
            name: "org-runner",
            labels: &["org"],
            ..RegisterOpts::default()
        },
    )
    .await;
    let private_job = emu.queue_job("octo/repo", &["org"], "true").unwrap();
    let public_job = emu.queue_job("octo/public", &["org"], "true").unwrap();
    let (_, body) = message_body(&org_default.poll(&emu).await);
    assert!(body["jobId"] == private_job || body["jobId"] == public_job);
    let strict = emu
        .create_runner_group("octo", "private-only", false)
        .unwrap();
    let token = emu.registration_token("octo").unwrap();
    let tenant = exchange(&emu, &token, "octo", "register").await.body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = service(&emu, Method::GET, "distributedtask/pools", &tenant, None).await;
    assert_eq!(r.body["count"], 2);
    let r = service(
        &emu,
        Method::POST,
        &format!("distributedtask/pools/{strict}/agents"),
        &tenant,
        Some(json!({"name": "strict", "version": "2.336.0", "labels": [{"name": "org", "type": "user"}], "publicKey": "pk"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let client_id = r.body["authorization"]["clientId"]
        .as_str()
        .unwrap()
        .to_string();
    let access = oauth(&emu, &client_id, "pk").await.body["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let session = service(
        &emu,
        Method::POST,
        &format!("distributedtask/pools/{strict}/sessions"),
        &access,
        Some(json!({"ownerName": "t"})),
    )
    .await;
    let sid = session.body["sessionId"].as_str().unwrap().to_string();
    let poll = service(
        &emu,
        Method::GET,
        &format!("distributedtask/pools/{strict}/messages?sessionId={sid}&runnerVersion=2.336.0"),
        &access,
        None,
    )
    .await;
    let remaining = if body["jobId"] == private_job {
        public_job
    } else {
        private_job
    };
    if remaining == public_job {
        assert_eq!(
            poll.status, 202,
            "a private-only group takes no public repo job"
        );
    } else {
        let (_, b) = message_body(&poll);
        assert_eq!(b["jobId"], private_job);
    }
    let unknown_pool = service(
        &emu,
        Method::POST,
        "distributedtask/pools/999/agents",
        &tenant,
        Some(json!({"name": "x", "publicKey": "pk"})),
    )
    .await;
    assert_eq!(unknown_pool.status, 404);
    assert_eq!(
        unknown_pool.body["typeKey"],
        "TaskAgentPoolNotFoundException"
    );
}

#[tokio::test]
async fn an_ephemeral_runner_is_deregistered_after_its_job() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    let l = register(
        &emu,
        "octo/repo",
        RegisterOpts {
            ephemeral: true,
            ..RegisterOpts::default()
        },
    )
    .await;
    assert!(emu.runners(None)[0].ephemeral);
    let job = emu.queue_job("octo/repo", &[], "true").unwrap();
    let (_, body) = message_body(&l.poll(&emu).await);
    l.complete(
        &emu,
        job,
        body["requestId"].as_u64().unwrap(),
        "succeeded",
        0,
        "",
    )
    .await;
    assert!(emu.runners(None).is_empty());
}

#[tokio::test]
async fn an_outdated_runner_is_told_to_update_unless_it_disabled_updates() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    let bytes = b"new runner".to_vec();
    emu.publish_release(
        "2.337.0",
        vec![("linux-x64".into(), AssetSource::Bytes(bytes.clone()))],
        ReleaseOptions::default(),
    )
    .await
    .unwrap();
    let l = register(&emu, "octo/repo", RegisterOpts::default()).await;
    assert_eq!(
        l.poll_with(&emu, "2.336.0", true).await.status,
        202,
        "updates disabled"
    );
    let (kind, body) = message_body(&l.poll_with(&emu, "2.336.0", false).await);
    assert_eq!(kind, "AgentRefresh");
    assert_eq!(body["targetVersion"], "2.337.0");
    assert_eq!(
        body["sha256Checksum"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes))
    );
    let got = reqwest::get(body["downloadUrl"].as_str().unwrap())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), bytes.as_slice());
    // Sent once per session; an up-to-date runner gets none.
    assert_eq!(l.poll_with(&emu, "2.336.0", false).await.status, 202);
    assert_eq!(l.poll_with(&emu, "2.337.0", false).await.status, 202);
}

#[tokio::test]
async fn a_deprecated_version_cannot_receive_messages() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    let l = register(&emu, "octo/repo", RegisterOpts::default()).await;
    emu.set_deprecated_below(Some("2.330.0"));
    let r = l.poll_with(&emu, "2.329.1", true).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.body["message"],
        "Runner version v2.329.1 is deprecated and cannot receive messages."
    );
    assert_eq!(r.body["typeKey"], "AccessDeniedException");
    assert_eq!(r.body["errorCode"], 1);
    assert_eq!(l.poll_with(&emu, "2.330.0", true).await.status, 202);
}

#[tokio::test]
async fn bad_runner_service_credentials_are_401() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    let r = service(&emu, Method::GET, "distributedtask/pools", "nonsense", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["typeKey"], "VssUnauthorizedException");
    let l = register(&emu, "octo/repo", RegisterOpts::default()).await;
    // The tenant token cannot open sessions; the access token is what does.
    let r = service(
        &emu,
        Method::POST,
        "distributedtask/pools/1/sessions",
        &l.tenant,
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, 401);
    let r = oauth(&emu, "no-such-client", "x").await;
    assert_eq!(r.body["error"], "invalid_client");
}

#[tokio::test]
async fn a_busy_runner_silent_for_ten_minutes_fails_its_job_and_unclaimed_jobs_fail_after_a_day() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    let l = register(&emu, "octo/repo", RegisterOpts::default()).await;
    let job = emu.queue_job("octo/repo", &[], "sleep 1000").unwrap();
    message_body(&l.poll(&emu).await);
    let nobody = emu
        .queue_job("octo/repo", &["no-such-runner"], "true")
        .unwrap();
    emu.advance_clock(9 * 60);
    assert_eq!(emu.job(job).unwrap().status, JobStatus::InProgress);
    emu.advance_clock(2 * 60);
    let view = emu.job(job).unwrap();
    assert_eq!(view.status, JobStatus::Completed);
    assert_eq!(view.result.as_deref(), Some("failed"));
    assert!(view
        .output
        .unwrap()
        .contains("lost communication with the server"));
    assert!(!emu.runners(None)[0].busy);
    assert_eq!(emu.job(nobody).unwrap().status, JobStatus::Queued);
    emu.advance_clock(24 * 3600);
    let view = emu.job(nobody).unwrap();
    assert_eq!(view.status, JobStatus::Completed);
    assert_eq!(view.result.as_deref(), Some("failed"));
}

#[tokio::test]
async fn a_job_whose_message_is_never_acknowledged_is_requeued_after_60_seconds() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    let lost = register(
        &emu,
        "octo/repo",
        RegisterOpts {
            name: "lost",
            ..RegisterOpts::default()
        },
    )
    .await;
    let job = emu.queue_job("octo/repo", &[], "true").unwrap();
    let (_, body) = message_body(&lost.poll_no_ack(&emu, "2.336.0", false).await);
    assert_eq!(body["jobId"], job);
    emu.advance_clock(30);
    assert_eq!(emu.job(job).unwrap().status, JobStatus::InProgress);
    emu.advance_clock(31);
    let view = emu.job(job).unwrap();
    assert_eq!(view.status, JobStatus::Queued);
    assert_eq!(view.runner_id, None);
    let other = register(
        &emu,
        "octo/repo",
        RegisterOpts {
            name: "other",
            ..RegisterOpts::default()
        },
    )
    .await;
    let (_, body) = message_body(&other.poll(&emu).await);
    assert_eq!(body["jobId"], job);
    // Acknowledged, it stays with its runner however long it runs.
    emu.advance_clock(120);
    assert_eq!(emu.job(job).unwrap().runner_name.as_deref(), Some("other"));
}
