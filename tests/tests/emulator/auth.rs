//! Tokens and GitHub's auth answers: classic PAT scopes, fine-grained permissions, GitHub App
//! JWTs and installation tokens, `401`/`403`/`404`.

use std::collections::BTreeMap;

use reqwest::Method;
use runner_agent_tests::emulator::keys::{app_jwt, generate_app_key};
use runner_agent_tests::emulator::{InstallationSpec, PatKind, PatSpec};
use time::OffsetDateTime;

use crate::support::*;

fn is_runner_token(t: &str) -> bool {
    t.len() == 29
        && t.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

#[tokio::test]
async fn registration_and_remove_tokens_are_201_and_expire_in_one_hour_for_every_scope() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    emu.create_org("octo").unwrap();
    emu.create_enterprise("big").unwrap();
    let repo_pat = emu.add_pat(PatSpec::classic(&["repo"]));
    let org_pat = emu.add_pat(PatSpec::classic(&["admin:org"]));
    let ent_pat = emu.add_pat(PatSpec::classic(&["manage_runners:enterprise"]));
    for (prefix, pat) in [
        ("/repos/octo/repo", &repo_pat),
        ("/orgs/octo", &org_pat),
        ("/enterprises/big", &ent_pat),
    ] {
        for kind in ["registration-token", "remove-token"] {
            let before = OffsetDateTime::now_utc();
            let r = api(
                &emu,
                Method::POST,
                &format!("{prefix}/actions/runners/{kind}"),
                Some(pat),
                None,
            )
            .await;
            assert_eq!(r.status, 201, "{prefix} {kind}: {}", r.text);
            let obj = r.body.as_object().unwrap();
            assert_eq!(obj.keys().collect::<Vec<_>>(), ["expires_at", "token"]);
            assert!(
                is_runner_token(r.body["token"].as_str().unwrap()),
                "{}",
                r.text
            );
            let expires = OffsetDateTime::parse(
                r.body["expires_at"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap();
            let lifetime = (expires - before).whole_seconds();
            assert!((3590..=3610).contains(&lifetime), "lifetime {lifetime}");
            assert_eq!(
                r.header("content-type").unwrap(),
                "application/json; charset=utf-8"
            );
            assert!(r.header("x-github-request-id").is_some());
            assert_eq!(
                r.header("x-github-api-version-selected").unwrap(),
                "2022-11-28"
            );
        }
    }
}

#[tokio::test]
async fn classic_pats_report_their_scopes_and_need_the_right_one() {
    let emu = start().await;
    emu.create_repo("octo/private", true).unwrap();
    emu.create_repo("octo/public", false).unwrap();
    emu.create_org("octo").unwrap();
    emu.create_enterprise("big").unwrap();
    let weak = emu.add_pat(PatSpec::classic(&["read:user", "workflow"]));

    let r = api(
        &emu,
        Method::POST,
        "/repos/octo/private/actions/runners/registration-token",
        Some(&weak),
        None,
    )
    .await;
    assert_github_error(&r, 404, "Not Found");

    let r = api(
        &emu,
        Method::POST,
        "/repos/octo/public/actions/runners/registration-token",
        Some(&weak),
        None,
    )
    .await;
    assert_github_error(&r, 403, "Must have admin rights to Repository.");
    assert_eq!(r.header("x-oauth-scopes").unwrap(), "read:user, workflow");
    assert_eq!(r.header("x-accepted-oauth-scopes").unwrap(), "repo");

    let r = api(
        &emu,
        Method::POST,
        "/orgs/octo/actions/runners/registration-token",
        Some(&weak),
        None,
    )
    .await;
    assert_github_error(&r, 403, "Must have admin rights to Organization.");
    assert!(r
        .header("x-accepted-oauth-scopes")
        .unwrap()
        .contains("admin:org"));

    let r = api(
        &emu,
        Method::GET,
        "/enterprises/big/actions/runners",
        Some(&weak),
        None,
    )
    .await;
    assert_github_error(&r, 403, "Must have admin rights to Enterprise.");
    assert_eq!(
        r.header("x-accepted-oauth-scopes").unwrap(),
        "manage_runners:enterprise"
    );

    // A user without admin rights on the repository, even with the `repo` scope.
    let not_admin = emu.add_pat(PatSpec {
        admin: false,
        ..PatSpec::classic(&["repo"])
    });
    let r = api(
        &emu,
        Method::GET,
        "/repos/octo/private/actions/runners",
        Some(&not_admin),
        None,
    )
    .await;
    assert_github_error(&r, 403, "Must have admin rights to Repository.");

    let r = api(
        &emu,
        Method::GET,
        "/repos/octo/nope/actions/runners",
        Some(&weak),
        None,
    )
    .await;
    assert_github_error(&r, 404, "Not Found");
}

#[tokio::test]
async fn a_pat_edited_by_its_owner_keeps_its_value_and_gets_what_it_was_given() {
    let emu = start().await;
    emu.create_repo("octo/public", false).unwrap();
    let path = "/repos/octo/public/actions/runners";
    let pat = emu.add_pat(PatSpec::classic(&["read:org"]));
    let r = api(&emu, Method::GET, path, Some(&pat), None).await;
    assert_github_error(&r, 403, "Must have admin rights to Repository.");

    // The owner adds `repo` on GitHub's settings page: the same token now may.
    assert!(emu.edit_pat(&pat, PatSpec::classic(&["read:org", "repo"])));
    let r = api(&emu, Method::GET, path, Some(&pat), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-oauth-scopes").unwrap(), "read:org, repo");

    // A classic token cannot become a fine-grained one, and an unknown token is no PAT.
    let fine = PatSpec {
        kind: PatKind::FineGrained,
        permissions: BTreeMap::from([("administration".to_owned(), "write".to_owned())]),
        ..PatSpec::classic(&[])
    };
    assert!(!emu.edit_pat(&pat, fine));
    assert!(!emu.edit_pat(
        "ghp_notatokenatall0000000000000000000",
        PatSpec::classic(&["repo"])
    ));
    assert_eq!(
        api(&emu, Method::GET, path, Some(&pat), None).await.status,
        200
    );
}

#[tokio::test]
async fn unknown_revoked_rotated_and_expired_tokens_are_bad_credentials() {
    let emu = start().await;
    let pat = repo_with_pat(&emu, "octo/repo");
    let path = "/repos/octo/repo/actions/runners";
    assert_eq!(
        api(&emu, Method::GET, path, Some(&pat), None).await.status,
        200
    );

    let r = api(
        &emu,
        Method::GET,
        path,
        Some("ghp_notatokenatall0000000000000000000"),
        None,
    )
    .await;
    assert_github_error(&r, 401, "Bad credentials");
    assert!(r.header("x-ratelimit-limit").is_some());

    let rotated = emu.rotate_token(&pat).unwrap();
    assert_github_error(
        &api(&emu, Method::GET, path, Some(&pat), None).await,
        401,
        "Bad credentials",
    );
    assert_eq!(
        api(&emu, Method::GET, path, Some(&rotated), None)
            .await
            .status,
        200
    );
    assert!(emu.revoke_token(&rotated));
    assert_github_error(
        &api(&emu, Method::GET, path, Some(&rotated), None).await,
        401,
        "Bad credentials",
    );

    let short = emu.add_pat(PatSpec {
        expires_in: Some(60),
        ..PatSpec::classic(&["repo"])
    });
    let r = api(&emu, Method::GET, path, Some(&short), None).await;
    assert_eq!(r.status, 200);
    let expiry = r.header("github-authentication-token-expiration").unwrap();
    let expected = emu.now() + time::Duration::seconds(60);
    let parsed = time::PrimitiveDateTime::parse(
        &expiry,
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC"),
    )
    .unwrap()
    .assume_utc();
    assert!((parsed - expected).whole_seconds().abs() <= 2, "{expiry}");
    let forever = emu.add_pat(PatSpec::classic(&["repo"]));
    let r = api(&emu, Method::GET, path, Some(&forever), None).await;
    assert!(r.header("github-authentication-token-expiration").is_none());
    emu.advance_clock(61);
    assert_github_error(
        &api(&emu, Method::GET, path, Some(&short), None).await,
        401,
        "Bad credentials",
    );
}

#[tokio::test]
async fn anonymous_requests_need_authentication_and_private_repos_hide() {
    let emu = start().await;
    emu.create_repo("octo/public", false).unwrap();
    emu.create_repo("octo/private", true).unwrap();
    let r = api(
        &emu,
        Method::GET,
        "/repos/octo/public/actions/runners",
        None,
        None,
    )
    .await;
    assert_github_error(&r, 401, "Requires authentication");
    assert_eq!(r.header("x-ratelimit-limit").unwrap(), "60");
    let r = api(
        &emu,
        Method::GET,
        "/repos/octo/private/actions/runners",
        None,
        None,
    )
    .await;
    assert_github_error(&r, 404, "Not Found");
}

#[tokio::test]
async fn basic_auth_with_a_pat_works_as_config_sh_pat_sends_it() {
    let emu = start().await;
    let pat = repo_with_pat(&emu, "octo/repo");
    let r = send(
        client()
            .post(format!(
                "{}/repos/octo/repo/actions/runners/registration-token",
                emu.api_url()
            ))
            .basic_auth("github", Some(&pat)),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

#[tokio::test]
async fn fine_grained_pats_need_administration_or_self_hosted_runner_permissions() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    emu.create_repo("other/repo", true).unwrap();
    emu.create_org("octo").unwrap();
    emu.create_enterprise("big").unwrap();

    let write = emu.add_pat(PatSpec::fine_grained(&[("administration", "write")]));
    assert!(write.starts_with("github_pat_"));
    let r = api(
        &emu,
        Method::POST,
        "/repos/octo/repo/actions/runners/registration-token",
        Some(&write),
        None,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(r.header("x-oauth-scopes").is_none());

    let read = emu.add_pat(PatSpec::fine_grained(&[("administration", "read")]));
    assert_eq!(
        api(
            &emu,
            Method::GET,
            "/repos/octo/repo/actions/runners",
            Some(&read),
            None
        )
        .await
        .status,
        200
    );
    let r = api(
        &emu,
        Method::POST,
        "/repos/octo/repo/actions/runners/registration-token",
        Some(&read),
        None,
    )
    .await;
    assert_github_error(&r, 403, "Resource not accessible by personal access token");
    assert_eq!(
        r.header("x-accepted-github-permissions").unwrap(),
        "administration=write"
    );

    // Administration is a repository permission; the org needs its own.
    let r = api(
        &emu,
        Method::POST,
        "/orgs/octo/actions/runners/registration-token",
        Some(&write),
        None,
    )
    .await;
    assert_github_error(&r, 403, "Resource not accessible by personal access token");
    let org = emu.add_pat(PatSpec::fine_grained(&[(
        "organization_self_hosted_runners",
        "write",
    )]));
    let r = api(
        &emu,
        Method::POST,
        "/orgs/octo/actions/runners/registration-token",
        Some(&org),
        None,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);

    // Enterprise endpoints do not accept fine-grained tokens at all.
    let r = api(
        &emu,
        Method::GET,
        "/enterprises/big/actions/runners",
        Some(&org),
        None,
    )
    .await;
    assert_github_error(&r, 403, "Resource not accessible by personal access token");

    // A token limited to some resources cannot see the others.
    let limited = emu.add_pat(PatSpec {
        resources: Some(vec!["octo/repo".into()]),
        ..PatSpec::fine_grained(&[("administration", "write")])
    });
    assert_eq!(
        api(
            &emu,
            Method::GET,
            "/repos/octo/repo/actions/runners",
            Some(&limited),
            None
        )
        .await
        .status,
        200
    );
    let r = api(
        &emu,
        Method::GET,
        "/repos/other/repo/actions/runners",
        Some(&limited),
        None,
    )
    .await;
    assert_github_error(&r, 404, "Not Found");
    assert_eq!(PatKind::default(), PatKind::Classic);
}

#[tokio::test]
async fn github_app_jwt_mints_one_hour_installation_tokens() {
    let emu = start().await;
    emu.create_org("octo").unwrap();
    emu.create_org("else").unwrap();
    emu.create_repo("octo/repo", true).unwrap();
    emu.create_enterprise("big").unwrap();
    let key = generate_app_key().unwrap();
    assert!(key
        .private_key_pem
        .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let mut perms = BTreeMap::new();
    perms.insert(
        "organization_self_hosted_runners".to_string(),
        "write".to_string(),
    );
    perms.insert("administration".to_string(), "read".to_string());
    let app_id = emu
        .add_app(
            &key.public_key_pem,
            vec![InstallationSpec {
                id: 42,
                account: "octo".into(),
                permissions: perms,
            }],
        )
        .unwrap();
    let now = emu.now().unix_timestamp();
    let jwt = app_jwt(&key.private_key_pem, app_id, now - 60, now + 540).unwrap();

    let r = api(
        &emu,
        Method::GET,
        "/orgs/octo/installation",
        Some(&jwt),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["id"], 42);
    let r = api(
        &emu,
        Method::GET,
        "/orgs/else/installation",
        Some(&jwt),
        None,
    )
    .await;
    assert_github_error(&r, 404, "Not Found");

    let r = api(
        &emu,
        Method::POST,
        "/app/installations/42/access_tokens",
        Some(&jwt),
        None,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let token = r.body["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("ghs_"));
    let expires = OffsetDateTime::parse(
        r.body["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(((expires - emu.now()).whole_seconds() - 3600).abs() <= 5);

    let r = api(
        &emu,
        Method::POST,
        "/orgs/octo/actions/runners/registration-token",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = api(
        &emu,
        Method::GET,
        "/repos/octo/repo/actions/runners",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = api(
        &emu,
        Method::POST,
        "/repos/octo/repo/actions/runners/registration-token",
        Some(&token),
        None,
    )
    .await;
    assert_github_error(&r, 403, "Resource not accessible by integration");
    let r = api(
        &emu,
        Method::GET,
        "/orgs/else/actions/runners",
        Some(&token),
        None,
    )
    .await;
    assert_github_error(&r, 404, "Not Found");
    let r = api(
        &emu,
        Method::GET,
        "/enterprises/big/actions/runners",
        Some(&token),
        None,
    )
    .await;
    assert_github_error(&r, 403, "Resource not accessible by integration");

    let r = api(
        &emu,
        Method::POST,
        "/app/installations/7/access_tokens",
        Some(&jwt),
        None,
    )
    .await;
    assert_github_error(&r, 404, "Not Found");

    // JWTs signed with another key, expired, or longer than ten minutes are refused.
    let other = generate_app_key().unwrap();
    let forged = app_jwt(&other.private_key_pem, app_id, now - 60, now + 540).unwrap();
    let r = api(
        &emu,
        Method::POST,
        "/app/installations/42/access_tokens",
        Some(&forged),
        None,
    )
    .await;
    assert_github_error(&r, 401, "A JSON web token could not be decoded");
    let expired = app_jwt(&key.private_key_pem, app_id, now - 700, now - 100).unwrap();
    let r = api(
        &emu,
        Method::POST,
        "/app/installations/42/access_tokens",
        Some(&expired),
        None,
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("'Expiration time' claim ('exp')"),
        "{}",
        r.text
    );
    let long = app_jwt(&key.private_key_pem, app_id, now, now + 3600).unwrap();
    let r = api(
        &emu,
        Method::POST,
        "/app/installations/42/access_tokens",
        Some(&long),
        None,
    )
    .await;
    assert_github_error(
        &r,
        401,
        "'Expiration time' claim ('exp') is too far in the future",
    );
    let r = api(
        &emu,
        Method::POST,
        "/app/installations/42/access_tokens",
        Some(&token),
        None,
    )
    .await;
    assert_github_error(&r, 401, "A JSON web token could not be decoded");

    // Installation tokens expire after an hour.
    emu.advance_clock(3601);
    let r = api(
        &emu,
        Method::GET,
        "/orgs/octo/actions/runners",
        Some(&token),
        None,
    )
    .await;
    assert_github_error(&r, 401, "Bad credentials");

    // The PKCS#8 form of the key signs just as well.
    let now = emu.now().unix_timestamp();
    let jwt8 = app_jwt(&key.private_key_pkcs8_pem, app_id, now - 30, now + 300).unwrap();
    let r = api(
        &emu,
        Method::POST,
        "/app/installations/42/access_tokens",
        Some(&jwt8),
        None,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

#[tokio::test]
async fn repositories_and_orgs_are_visible_only_to_tokens_that_may_see_them() {
    let emu = start().await;
    emu.create_org("octo").unwrap();
    emu.create_repo("octo/private", true).unwrap();
    emu.create_repo("octo/public", false).unwrap();
    let repo = emu.add_pat(PatSpec::classic(&["repo"]));
    let weak = emu.add_pat(PatSpec::classic(&["read:user"]));
    let r = api(&emu, Method::GET, "/repos/octo/private", Some(&repo), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["full_name"], "octo/private");
    assert_eq!(r.body["private"], true);
    assert_eq!(r.body["owner"]["type"], "Organization");
    assert_eq!(r.body["permissions"]["admin"], true);
    assert_github_error(
        &api(&emu, Method::GET, "/repos/octo/private", Some(&weak), None).await,
        404,
        "Not Found",
    );
    assert_github_error(
        &api(&emu, Method::GET, "/repos/octo/private", None, None).await,
        404,
        "Not Found",
    );
    let r = api(&emu, Method::GET, "/repos/octo/public", None, None).await;
    assert_eq!(r.status, 200);
    assert!(r.body.get("permissions").is_none());
    let r = api(&emu, Method::GET, "/orgs/octo", Some(&weak), None).await;
    assert_eq!(r.body["login"], "octo");
    assert_github_error(
        &api(&emu, Method::GET, "/orgs/nope", Some(&weak), None).await,
        404,
        "Not Found",
    );
    let r = api(&emu, Method::GET, "/user", Some(&weak), None).await;
    assert_eq!(r.status, 200);
    assert!(r.body["login"].is_string());
}

#[tokio::test]
async fn the_api_root_and_meta_say_github_enterprise_server() {
    let emu = start().await;
    let r = api(&emu, Method::GET, "", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.body["current_user_url"],
        format!("{}/user", emu.api_url())
    );
    let r = api(&emu, Method::GET, "/meta", None, None).await;
    let version = r.body["installed_version"].as_str().unwrap().to_string();
    assert_eq!(r.header("x-github-enterprise-version").unwrap(), version);
}

#[tokio::test]
async fn unknown_api_routes_are_404_with_rate_limit_headers() {
    let emu = start().await;
    let pat = repo_with_pat(&emu, "octo/repo");
    let r = api(&emu, Method::GET, "/no/such/route", Some(&pat), None).await;
    assert_github_error(&r, 404, "Not Found");
    assert_eq!(r.header("x-ratelimit-used").unwrap(), "1");
    let r = api(
        &emu,
        Method::PATCH,
        "/repos/octo/repo/actions/runners",
        Some(&pat),
        None,
    )
    .await;
    assert_github_error(&r, 404, "Not Found");
}
