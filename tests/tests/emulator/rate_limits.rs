//! `x-ratelimit-*` on every response, the primary and secondary limits, conditional requests.

use std::time::Duration;

use reqwest::Method;
use runner_agent_tests::emulator::{EmulatorOptions, Fault, RateLimitKind};

use crate::support::*;

#[tokio::test]
async fn every_api_response_carries_rate_limit_headers_and_the_budget_runs_out() {
    let emu = start_with(EmulatorOptions {
        rate_limit: 3,
        long_poll: Duration::from_secs(1),
        ..EmulatorOptions::default()
    })
    .await;
    let pat = repo_with_pat(&emu, "octo/repo");
    let path = "/repos/octo/repo/actions/runners/registration-token";
    let mut reset = String::new();
    for used in 1..=3u64 {
        let r = api(&emu, Method::POST, path, Some(&pat), None).await;
        assert_eq!(r.status, 201);
        assert_eq!(r.header("x-ratelimit-limit").unwrap(), "3");
        assert_eq!(r.header("x-ratelimit-used").unwrap(), used.to_string());
        assert_eq!(
            r.header("x-ratelimit-remaining").unwrap(),
            (3 - used).to_string()
        );
        assert_eq!(r.header("x-ratelimit-resource").unwrap(), "core");
        reset = r.header("x-ratelimit-reset").unwrap();
    }
    let reset_at: i64 = reset.parse().unwrap();
    assert!((reset_at - emu.now().unix_timestamp() - 3600).abs() <= 5);

    let r = api(&emu, Method::POST, path, Some(&pat), None).await;
    assert_github_error(&r, 403, "API rate limit exceeded for user ID 1.");
    assert_eq!(r.header("x-ratelimit-remaining").unwrap(), "0");
    assert_eq!(r.header("x-ratelimit-reset").unwrap(), reset);

    // Another token has its own budget.
    let other = emu.add_pat(runner_agent_tests::emulator::PatSpec::classic(&["repo"]));
    assert_eq!(
        api(&emu, Method::POST, path, Some(&other), None)
            .await
            .status,
        201
    );

    // `/rate_limit` does not count.
    let r = api(&emu, Method::GET, "/rate_limit", Some(&pat), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["resources"]["core"]["remaining"], 0);

    emu.advance_clock(3601);
    let r = api(&emu, Method::POST, path, Some(&pat), None).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.header("x-ratelimit-remaining").unwrap(), "2");
}

#[tokio::test]
async fn the_primary_limit_fault_exhausts_every_token_until_the_window_resets() {
    let emu = start().await;
    let pat = repo_with_pat(&emu, "octo/repo");
    let path = "/repos/octo/repo/actions/runners";
    assert_eq!(
        api(&emu, Method::GET, path, Some(&pat), None).await.status,
        200
    );
    emu.inject(Fault::RateLimit {
        kind: RateLimitKind::Primary,
        count: 1,
        status: 403,
        retry_after: 0,
    });
    let r = api(&emu, Method::GET, path, Some(&pat), None).await;
    assert_github_error(&r, 403, "API rate limit exceeded for user ID 1.");
    assert_eq!(r.header("x-ratelimit-remaining").unwrap(), "0");
    assert_eq!(r.header("x-ratelimit-limit").unwrap(), "5000");
    emu.advance_clock(3600);
    assert_eq!(
        api(&emu, Method::GET, path, Some(&pat), None).await.status,
        200
    );
}

#[tokio::test]
async fn the_secondary_limit_answers_with_retry_after() {
    let emu = start().await;
    let pat = repo_with_pat(&emu, "octo/repo");
    let path = "/repos/octo/repo/actions/runners";
    emu.inject(Fault::RateLimit {
        kind: RateLimitKind::Secondary,
        count: 2,
        status: 429,
        retry_after: 30,
    });
    for _ in 0..2 {
        let r = api(&emu, Method::GET, path, Some(&pat), None).await;
        assert_eq!(r.status, 429, "{}", r.text);
        assert_eq!(r.header("retry-after").unwrap(), "30");
        assert!(r.body["message"]
            .as_str()
            .unwrap()
            .starts_with("You have exceeded a secondary rate limit"));
        assert!(r.header("x-ratelimit-remaining").is_some());
    }
    assert_eq!(
        api(&emu, Method::GET, path, Some(&pat), None).await.status,
        200
    );
}

#[tokio::test]
async fn a_matching_if_none_match_gets_304_without_spending_the_budget() {
    let emu = start().await;
    let pat = repo_with_pat(&emu, "octo/repo");
    let path = "/repos/octo/repo/actions/runners";
    let first = api(&emu, Method::GET, path, Some(&pat), None).await;
    assert_eq!(first.status, 200);
    let etag = first.header("etag").unwrap();
    assert_eq!(first.header("x-ratelimit-used").unwrap(), "1");

    let url = format!("{}{path}", emu.api_url());
    let second = send(
        client()
            .get(&url)
            .bearer_auth(&pat)
            .header("if-none-match", &etag),
    )
    .await;
    assert_eq!(second.status, 304);
    assert!(second.text.is_empty());
    assert_eq!(second.header("etag").unwrap(), etag);
    assert_eq!(second.header("x-ratelimit-used").unwrap(), "1");
    assert_eq!(second.header("x-ratelimit-remaining").unwrap(), "4999");

    let counts = emu.request_counts();
    let c = &counts["GET /api/v3/repos/{owner}/{repo}/actions/runners"];
    assert_eq!((c.count, c.not_modified), (2, 1));

    // A change gives a new ETag and a full answer again.
    let _listener = register(&emu, "octo/repo", RegisterOpts::default()).await;
    let third = send(
        client()
            .get(&url)
            .bearer_auth(&pat)
            .header("if-none-match", &etag),
    )
    .await;
    assert_eq!(third.status, 200);
    assert_ne!(third.header("etag").unwrap(), etag);
    assert_eq!(third.body["total_count"], 1);
}

#[tokio::test]
async fn the_secondary_point_budget_refuses_bursts_of_mutating_requests() {
    let emu = start_with(EmulatorOptions {
        secondary_points_per_minute: Some(11),
        ..EmulatorOptions::default()
    })
    .await;
    let pat = repo_with_pat(&emu, "octo/repo");
    let post = "/repos/octo/repo/actions/runners/registration-token";
    // Two POSTs (5 points each) and one GET (1 point) fit; the next POST does not.
    assert_eq!(
        api(&emu, Method::POST, post, Some(&pat), None).await.status,
        201
    );
    assert_eq!(
        api(&emu, Method::POST, post, Some(&pat), None).await.status,
        201
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
    let r = api(&emu, Method::POST, post, Some(&pat), None).await;
    assert_eq!(r.status, 403, "{}", r.text);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert!(r.body["message"]
        .as_str()
        .unwrap()
        .contains("secondary rate limit"));
    emu.advance_clock(60);
    assert_eq!(
        api(&emu, Method::POST, post, Some(&pat), None).await.status,
        201
    );
}
