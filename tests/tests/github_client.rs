//! `runner_agent::github`, the agent's REST client, against the GitHub emulator on loopback:
//! every endpoint, PAT / App / raw registration token credentials, the errors a user sees for
//! missing permissions, revoked and expired tokens, retries of 5xx answers, both rate limits,
//! conditional requests, and `agentctl token`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use runner_agent_tests::support::agentctl;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use runner_agent::config::{Auth, Scope, SecretFile};
use runner_agent::github::{
    Cached, Client, ClientOptions, Clock, Credentials, GithubError, LabelKind,
};
use runner_agent_tests::emulator::{
    keys, AssetSource, Emulator, EmulatorOptions, Fault, InstallationSpec, PatSpec, RateLimitKind,
    ReleaseOptions,
};
use url::Url;

async fn start() -> Emulator {
    Emulator::start(EmulatorOptions {
        long_poll: Duration::from_secs(1),
        ..EmulatorOptions::default()
    })
    .await
    .expect("emulator starts")
}

fn repo() -> Scope {
    Scope::Repo {
        owner: "octo".into(),
        repo: "repo".into(),
    }
}

fn org() -> Scope {
    Scope::Org { org: "octo".into() }
}

/// The emulator's clock seen from outside: real time plus the seconds a test advanced it by
/// (the emulator's clock is exactly that), one cell per emulator (keyed by its port).
static CELLS: LazyLock<Mutex<HashMap<u16, Arc<AtomicI64>>>> = LazyLock::new(Default::default);

/// Advances the emulator's clock and the clients' view of it.
fn advance(emu: &Emulator, seconds: i64) {
    emu.advance_clock(seconds);
    clock_cell(emu).fetch_add(seconds, Ordering::SeqCst);
}

fn clock_cell(emu: &Emulator) -> Arc<AtomicI64> {
    let key = emu.addr().port();
    let mut cells = CELLS.lock().unwrap();
    cells.entry(key).or_default().clone()
}

/// Options for tests: the emulator's clock, quick backoff.
fn options(emu: &Emulator) -> ClientOptions {
    let cell = clock_cell(emu);
    ClientOptions {
        backoff: Duration::from_millis(20),
        clock: Clock::from_fn(move || {
            time::OffsetDateTime::now_utc() + time::Duration::seconds(cell.load(Ordering::SeqCst))
        }),
        ..ClientOptions::default()
    }
}

fn client(emu: &Emulator, credentials: Credentials) -> Client {
    Client::with_options(api(emu), credentials, options(emu)).expect("client")
}

fn api(emu: &Emulator) -> Url {
    Url::parse(&emu.api_url()).unwrap()
}

fn secret_file(dir: &Path, name: &str, value: &str) -> SecretFile {
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    SecretFile {
        configured: PathBuf::from(name),
        resolved: path,
    }
}

fn labels(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_string()).collect()
}

const MINT: &str = "POST /api/v3/app/installations/{installation_id}/access_tokens";
const REPO_REGISTRATION: &str =
    "POST /api/v3/repos/{owner}/{repo}/actions/runners/registration-token";
const REPO_LIST: &str = "GET /api/v3/repos/{owner}/{repo}/actions/runners";

#[tokio::test]
async fn a_classic_pat_drives_every_runner_endpoint_of_a_repository() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    emu.publish_release(
        "2.336.0",
        vec![("linux-x64".into(), AssetSource::Bytes(b"runner".to_vec()))],
        ReleaseOptions::default(),
    )
    .await
    .unwrap();
    let pat = emu.add_pat(PatSpec::classic(&["repo"]));
    let gh = client(&emu, Credentials::pat(pat));
    let scope = repo();

    let registration = gh.registration_token(&scope).await.unwrap();
    assert_eq!(registration.token.len(), 29);
    assert!(registration.expires_at > emu.now() + time::Duration::minutes(59));
    assert!(!registration.is_expired_at(emu.now()));
    let remove = gh.remove_token(&scope).await.unwrap();
    assert_ne!(remove.token, registration.token);

    let jit = gh
        .generate_jitconfig(&scope, "lab-a-1", 1, &labels(&["kvm"]), Some("_work"))
        .await
        .unwrap();
    assert_eq!(jit.runner.name, "lab-a-1");
    assert!(!jit.encoded_jit_config.is_empty());
    let id = jit.runner.id;

    let runners = gh.list_runners(&scope).await.unwrap();
    assert_eq!(runners.len(), 1);
    assert_eq!(runners[0].id, id);
    assert_eq!(runners[0].status, "offline");
    assert!(!runners[0].busy);
    assert_eq!(runners[0].custom_labels(), vec!["kvm"]);
    assert!(runners[0]
        .labels
        .iter()
        .any(|l| l.name == "self-hosted" && l.kind == LabelKind::ReadOnly));

    assert_eq!(gh.get_runner(&scope, id).await.unwrap().name, "lab-a-1");
    let all = gh.runner_labels(&scope, id).await.unwrap();
    assert!(all
        .iter()
        .any(|l| l.name == "kvm" && l.kind == LabelKind::Custom));

    let custom = |ls: Vec<runner_agent::github::Label>| {
        let mut names: Vec<String> = ls
            .into_iter()
            .filter(|l| l.kind == LabelKind::Custom)
            .map(|l| l.name)
            .collect();
        names.sort();
        names
    };
    let set = gh
        .set_labels(&scope, id, &labels(&["a", "b"]))
        .await
        .unwrap();
    assert_eq!(custom(set), vec!["a", "b"]);
    let added = gh.add_labels(&scope, id, &labels(&["c"])).await.unwrap();
    assert_eq!(custom(added), vec!["a", "b", "c"]);
    let removed = gh.remove_label(&scope, id, "a").await.unwrap();
    assert_eq!(custom(removed), vec!["b", "c"]);
    let cleared = gh.clear_labels(&scope, id).await.unwrap();
    assert!(custom(cleared).is_empty());
    assert_eq!(
        custom(gh.get_runner(&scope, id).await.unwrap().labels),
        Vec::<String>::new()
    );

    let downloads = gh.runner_downloads(&scope).await.unwrap();
    assert_eq!(downloads.len(), 1);
    assert_eq!(
        (downloads[0].os.as_str(), downloads[0].architecture.as_str()),
        ("linux", "x64")
    );

    assert!(gh.runner_groups(&scope).await.unwrap().is_empty());

    gh.delete_runner(&scope, id).await.unwrap();
    assert!(gh.list_runners(&scope).await.unwrap().is_empty());
    let gone = gh.get_runner(&scope, id).await.unwrap_err();
    assert!(
        matches!(gone, GithubError::RunnerNotFound { id: gone_id, .. } if gone_id == id),
        "{gone:?}"
    );
    assert!(
        gone.to_string().contains(&format!(
            "hint: runner {id} is not registered in `octo/repo`"
        )),
        "{gone}"
    );
}

#[tokio::test]
async fn list_runners_follows_pagination_links() {
    let emu = start().await;
    emu.create_repo("octo/repo", false).unwrap();
    let gh = client(
        &emu,
        Credentials::pat(emu.add_pat(PatSpec::classic(&["repo"]))),
    );
    for i in 0..130 {
        gh.generate_jitconfig(&repo(), &format!("r-{i:03}"), 1, &labels(&["x"]), None)
            .await
            .unwrap();
    }
    let runners = gh.list_runners(&repo()).await.unwrap();
    let mut names: Vec<_> = runners.iter().map(|r| r.name.clone()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 130);
    assert_eq!(
        emu.request_count(REPO_LIST),
        1,
        "{:#?}",
        emu.request_counts()
    );
    assert_eq!(
        emu.request_count("GET /api/v3/repositories/{repository_id}/actions/runners"),
        1,
        "{:#?}",
        emu.request_counts()
    );
}

#[tokio::test]
async fn a_second_conditional_list_is_a_free_304() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    let gh = client(
        &emu,
        Credentials::pat(emu.add_pat(PatSpec::classic(&["repo"]))),
    );
    gh.generate_jitconfig(&repo(), "one", 1, &labels(&["x"]), None)
        .await
        .unwrap();
    let first = gh.list_runners_cached(&repo()).await.unwrap();
    assert!(
        matches!(&first, Cached::Modified(r) if r.len() == 1),
        "{first:?}"
    );
    let second = gh.list_runners_cached(&repo()).await.unwrap();
    assert_eq!(second, Cached::NotModified);
    let counts = emu.request_counts();
    let list = counts.get(REPO_LIST).expect("list counted");
    assert_eq!((list.count, list.not_modified), (2, 1));

    // A change makes the next conditional request fetch again.
    gh.generate_jitconfig(&repo(), "two", 1, &labels(&["x"]), None)
        .await
        .unwrap();
    let third = gh.list_runners_cached(&repo()).await.unwrap();
    assert!(
        matches!(&third, Cached::Modified(r) if r.len() == 2),
        "{third:?}"
    );
}

#[tokio::test]
async fn an_org_token_without_admin_org_says_which_scope_is_missing() {
    let emu = start().await;
    emu.create_org("octo").unwrap();
    let gh = client(
        &emu,
        Credentials::pat(emu.add_pat(PatSpec::classic(&["repo"]))),
    );
    let err = gh.registration_token(&org()).await.unwrap_err();
    match &err {
        GithubError::MissingPermission {
            needed,
            scope,
            have,
            status,
            ..
        } => {
            assert_eq!(*status, 403);
            assert!(needed.contains("`admin:org`"), "{needed}");
            assert_eq!(scope, "org octo");
            assert_eq!(have.as_deref(), Some("repo"));
        }
        other => panic!("expected MissingPermission, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("Must have admin rights"), "{text}");
    assert!(
        text.contains("hint: the credentials need the `admin:org` scope"),
        "{text}"
    );
    assert!(text.contains("the token has the scopes `repo`"), "{text}");

    // With the scope, the same call works, and so do runner groups.
    let gh = client(
        &emu,
        Credentials::pat(emu.add_pat(PatSpec::classic(&["admin:org"]))),
    );
    gh.registration_token(&org()).await.unwrap();
    let groups = gh.runner_groups(&org()).await.unwrap();
    assert!(
        groups.iter().any(|g| g.default && g.name == "Default"),
        "{groups:?}"
    );
}

#[tokio::test]
async fn an_enterprise_needs_manage_runners_enterprise() {
    let emu = start().await;
    emu.create_enterprise("acme").unwrap();
    let enterprise = Scope::Enterprise {
        slug: "acme".into(),
    };
    let gh = client(
        &emu,
        Credentials::pat(emu.add_pat(PatSpec::classic(&["admin:org"]))),
    );
    let err = gh.registration_token(&enterprise).await.unwrap_err();
    assert!(
        err.to_string().contains(
            "hint: the credentials need the `manage_runners:enterprise` scope and enterprise owner rights; the token has the scopes `admin:org`"
        ),
        "{err}"
    );
    let gh = client(
        &emu,
        Credentials::pat(emu.add_pat(PatSpec::classic(&["manage_runners:enterprise"]))),
    );
    gh.registration_token(&enterprise).await.unwrap();
    let groups = gh.runner_groups(&enterprise).await.unwrap();
    assert!(!groups.is_empty());
}

#[tokio::test]
async fn a_fine_grained_token_without_administration_write_names_the_permission() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    let pat = emu.add_pat(PatSpec::fine_grained(&[("administration", "read")]));
    let gh = client(&emu, Credentials::pat(pat));
    // Reading is allowed...
    assert!(gh.list_runners(&repo()).await.unwrap().is_empty());
    // ...writing is not.
    let err = gh.registration_token(&repo()).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("Resource not accessible by personal access token"),
        "{text}"
    );
    assert!(
        text.contains(
            "hint: the credentials need the repository permission \"Administration: write\""
        ),
        "{text}"
    );

    // Enterprise runners cannot be managed with it at all, and no request is sent.
    let enterprise = Scope::Enterprise {
        slug: "acme".into(),
    };
    let err = gh.registration_token(&enterprise).await.unwrap_err();
    assert!(
        matches!(err, GithubError::EnterpriseNeedsClassicPat { .. }),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .starts_with("enterprise runners need a classic PAT with `manage_runners:enterprise`"));
}

#[tokio::test]
async fn a_scope_the_token_cannot_see_is_not_found_with_a_hint() {
    let emu = start().await;
    emu.create_repo("octo/secret", true).unwrap();
    let gh = client(
        &emu,
        Credentials::pat(emu.add_pat(PatSpec::classic(&["public_repo"]))),
    );
    let scope = Scope::Repo {
        owner: "octo".into(),
        repo: "secret".into(),
    };
    let err = gh.list_runners(&scope).await.unwrap_err();
    assert!(matches!(err, GithubError::ScopeNotFound { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("answered 404: Not Found"), "{text}");
    assert!(
        text.contains("hint: `octo/secret` does not exist or these credentials cannot see it (a classic PAT needs the `repo` scope"),
        "{text}"
    );
}

#[tokio::test]
async fn a_revoked_pat_is_bad_credentials_naming_the_file_and_a_rotated_one_is_picked_up() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    let pat = emu.add_pat(PatSpec::classic(&["repo"]));
    let dir = tempfile::tempdir().unwrap();
    let file = secret_file(dir.path(), "github-pat", &pat);
    let credentials = Credentials::from_config(&Auth::Pat { file: file.clone() }).unwrap();
    let gh = client(&emu, credentials);
    gh.list_runners(&repo()).await.unwrap();

    let rotated = emu.rotate_token(&pat).expect("rotated");
    let err = gh.list_runners(&repo()).await.unwrap_err();
    assert!(err.is_bad_credentials(), "{err:?}");
    assert_eq!(err.status(), Some(401));
    let text = err.to_string();
    assert!(text.contains("answered 401: Bad credentials"), "{text}");
    assert!(
        text.ends_with(&format!(
            "hint: the token was revoked or expired: replace `{}`",
            file.resolved.display()
        )),
        "{text}"
    );
    // No token value in the message.
    assert!(!text.contains(&pat));

    // The operator writes the new token into the file: the next call uses it.
    std::fs::write(&file.resolved, format!("{rotated}\n")).unwrap();
    assert!(gh.list_runners(&repo()).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_raw_registration_token_is_handed_out_until_it_expires_and_cannot_call_rest() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    let raw = emu.registration_token("octo/repo").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = secret_file(dir.path(), "registration-token", &raw);
    let credentials =
        Credentials::from_config(&Auth::RegistrationToken { file: file.clone() }).unwrap();
    let gh = Client::with_options(
        api(&emu),
        credentials,
        ClientOptions {
            clock: Clock::system(),
            ..ClientOptions::default()
        },
    )
    .unwrap();

    let token = gh.registration_token(&repo()).await.unwrap();
    assert_eq!(token.token, raw);
    let err = gh.list_runners(&repo()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "a raw registration token cannot call the REST API (`the runners REST API`)\n\nhint: configure `pat_file` or `[github.app]` in the configuration so the agent can ask GitHub for tokens itself"
    );
    assert!(gh.remove_token(&repo()).await.is_err());
    assert_eq!(emu.request_counts().len(), 0, "no request was sent");

    // Written more than an hour ago: expired, and GitHub agrees once its clock passes the hour.
    let written = std::time::SystemTime::now() - Duration::from_secs(61 * 60);
    std::fs::File::options()
        .write(true)
        .open(&file.resolved)
        .unwrap()
        .set_modified(written)
        .unwrap();
    let err = gh.registration_token(&repo()).await.unwrap_err();
    assert!(
        matches!(err, GithubError::RegistrationTokenExpired { .. }),
        "{err:?}"
    );
    assert!(err.to_string().starts_with(&format!(
        "the registration token in `{}` expired at",
        file.resolved.display()
    )));
    advance(&emu, 61 * 60);
    let exchange = reqwest::Client::new()
        .post(format!("{}/actions/runner-registration", emu.api_url()))
        .header("Authorization", format!("RemoteAuth {raw}"))
        .json(&serde_json::json!({"url": emu.web_url_for("octo/repo"), "runner_event": "register"}))
        .send()
        .await
        .unwrap();
    assert_eq!(exchange.status().as_u16(), 404);
}

#[tokio::test]
async fn server_errors_are_retried_and_counted() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    let gh = client(
        &emu,
        Credentials::pat(emu.add_pat(PatSpec::classic(&["repo"]))),
    );
    emu.inject(Fault::Status {
        status: 502,
        count: 2,
        path_prefix: None,
    });
    gh.registration_token(&repo()).await.unwrap();
    assert_eq!(emu.request_count(REPO_REGISTRATION), 3);

    // A GitHub that keeps failing: bounded attempts, then an error saying so.
    emu.inject(Fault::Status {
        status: 500,
        count: 100,
        path_prefix: None,
    });
    let gh = Client::with_options(
        api(&emu),
        Credentials::pat(emu.add_pat(PatSpec::classic(&["repo"]))),
        ClientOptions {
            max_attempts: 3,
            ..options(&emu)
        },
    )
    .unwrap();
    let err = gh.registration_token(&repo()).await.unwrap_err();
    assert!(
        matches!(err, GithubError::GaveUp { attempts: 3, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("gave up after 3 attempts"),
        "{err}"
    );
    assert_eq!(emu.request_count(REPO_REGISTRATION), 6);
    emu.clear_faults();
}

#[tokio::test]
async fn the_primary_rate_limit_returns_its_reset_and_is_obeyed_after_it() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    let gh = client(
        &emu,
        Credentials::pat(emu.add_pat(PatSpec::classic(&["repo"]))),
    );
    gh.list_runners(&repo()).await.unwrap();
    emu.inject(Fault::RateLimit {
        kind: RateLimitKind::Primary,
        count: 1,
        status: 403,
        retry_after: 0,
    });
    let err = gh.list_runners(&repo()).await.unwrap_err();
    let Some(reset_at) = err.retry_at() else {
        panic!("expected RateLimited, got {err:?}");
    };
    let wait = reset_at - emu.now();
    assert!(
        wait > time::Duration::minutes(50) && wait <= time::Duration::seconds(3602),
        "{wait}"
    );
    assert!(err.to_string().contains("rate limit"), "{err}");
    // Not retried: waiting an hour is the caller's decision.
    assert_eq!(emu.request_count(REPO_LIST), 2);
    advance(&emu, 3601);
    assert!(gh.list_runners(&repo()).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_primary_rate_limit_resetting_soon_is_waited_for() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    let gh = client(
        &emu,
        Credentials::pat(emu.add_pat(PatSpec::classic(&["repo"]))),
    );
    // The first request opens the token's one-hour window; move to its last seconds.
    gh.list_runners(&repo()).await.unwrap();
    advance(&emu, 3597);
    emu.inject(Fault::RateLimit {
        kind: RateLimitKind::Primary,
        count: 1,
        status: 403,
        retry_after: 0,
    });
    let started = std::time::Instant::now();
    assert!(gh.list_runners(&repo()).await.unwrap().is_empty());
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited for x-ratelimit-reset: {:?}",
        started.elapsed()
    );
    assert_eq!(
        emu.request_count(REPO_LIST),
        3,
        "one refused, one after the reset"
    );
}

#[tokio::test]
async fn a_connection_dropped_mid_answer_is_retried() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    let gh = client(
        &emu,
        Credentials::pat(emu.add_pat(PatSpec::classic(&["repo"]))),
    );
    for i in 0..5 {
        gh.generate_jitconfig(&repo(), &format!("r{i}"), 1, &labels(&["x"]), None)
            .await
            .unwrap();
    }
    emu.inject(Fault::DropAfterBytes {
        bytes: 20,
        count: 1,
        path_prefix: Some("/api/v3/repos/octo/repo/actions/runners".into()),
    });
    assert_eq!(gh.list_runners(&repo()).await.unwrap().len(), 5);
    assert_eq!(emu.request_count(REPO_LIST), 2);
}

#[tokio::test]
async fn the_secondary_rate_limit_is_obeyed_with_retry_after() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    let gh = client(
        &emu,
        Credentials::pat(emu.add_pat(PatSpec::classic(&["repo"]))),
    );
    emu.inject(Fault::RateLimit {
        kind: RateLimitKind::Secondary,
        count: 1,
        status: 429,
        retry_after: 1,
    });
    let started = std::time::Instant::now();
    gh.list_runners(&repo()).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "retry-after obeyed"
    );
    assert_eq!(emu.request_count(REPO_LIST), 2);

    // A wait longer than the client accepts is returned to the caller.
    emu.inject(Fault::RateLimit {
        kind: RateLimitKind::Secondary,
        count: 1,
        status: 403,
        retry_after: 600,
    });
    let err = gh.list_runners(&repo()).await.unwrap_err();
    let GithubError::RateLimited { reset_at, .. } = &err else {
        panic!("expected RateLimited, got {err:?}");
    };
    let wait = *reset_at - emu.now();
    assert!(wait > time::Duration::seconds(590), "{wait}");
}

#[tokio::test]
async fn a_github_app_mints_caches_and_refreshes_its_installation_token() {
    let emu = start().await;
    emu.create_org("octo").unwrap();
    emu.create_repo("octo/repo", true).unwrap();
    let key = keys::generate_app_key().unwrap();
    let app_id = emu
        .add_app(
            &key.public_key_pem,
            vec![InstallationSpec {
                id: 42,
                account: "octo".into(),
                permissions: [
                    ("administration".to_string(), "write".to_string()),
                    (
                        "organization_self_hosted_runners".to_string(),
                        "write".to_string(),
                    ),
                ]
                .into_iter()
                .collect(),
            }],
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pem = secret_file(dir.path(), "app.pem", &key.private_key_pem);
    let credentials = Credentials::from_config(&Auth::App {
        app_id,
        installation_id: 42,
        private_key_file: pem,
    })
    .unwrap();
    let gh = client(&emu, credentials);

    gh.registration_token(&org()).await.unwrap();
    gh.registration_token(&repo()).await.unwrap();
    gh.list_runners(&org()).await.unwrap();
    assert_eq!(emu.request_count(MINT), 1, "one installation token, cached");

    // 56 minutes later the token has less than five minutes left: a new one is minted.
    advance(&emu, 56 * 60);
    gh.list_runners(&org()).await.unwrap();
    assert_eq!(emu.request_count(MINT), 2);
    gh.list_runners(&org()).await.unwrap();
    assert_eq!(emu.request_count(MINT), 2);

    // `reload` (the daemon's SIGHUP) forgets the token and re-reads the key.
    gh.credentials().reload().await;
    gh.list_runners(&org()).await.unwrap();
    assert_eq!(emu.request_count(MINT), 3);

    // Missing permission for an App names the fine-grained permission.
    let err = Client::with_options(
        api(&emu),
        Credentials::app(app_id, 42, key.private_key_pem.clone()),
        options(&emu),
    )
    .unwrap()
    .registration_token(&Scope::Repo {
        owner: "other".into(),
        repo: "repo".into(),
    })
    .await
    .unwrap_err();
    assert!(matches!(err, GithubError::ScopeNotFound { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("the App must be installed on its owner"),
        "{err}"
    );

    // A wrong key is refused with a hint about the App settings.
    let other = keys::generate_app_key().unwrap();
    let err = client(&emu, Credentials::app(app_id, 42, other.private_key_pem))
        .registration_token(&org())
        .await
        .unwrap_err();
    assert!(matches!(err, GithubError::BadCredentials { .. }), "{err:?}");
    assert!(err.to_string().contains("check `app_id`"), "{err}");
}

#[tokio::test]
async fn an_app_without_self_hosted_runners_write_names_the_permission() {
    let emu = start().await;
    emu.create_org("octo").unwrap();
    let key = keys::generate_app_key().unwrap();
    let app_id = emu
        .add_app(
            &key.public_key_pem,
            vec![InstallationSpec {
                id: 7,
                account: "octo".into(),
                permissions: [(
                    "organization_self_hosted_runners".to_string(),
                    "read".to_string(),
                )]
                .into_iter()
                .collect(),
            }],
        )
        .unwrap();
    let gh = client(&emu, Credentials::app(app_id, 7, key.private_key_pem));
    let err = gh.remove_token(&org()).await.unwrap_err();
    assert!(
        err.to_string().contains(
            "hint: the credentials need the organization permission \"Self-hosted runners: write\""
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_runner_name_taken_by_another_host_is_a_name_collision() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    let pat = emu.add_pat(PatSpec::classic(&["repo"]));
    let host_a = client(&emu, Credentials::pat(pat.clone()));
    let host_b = client(&emu, Credentials::pat(pat));
    host_a
        .generate_jitconfig(&repo(), "lab-1", 1, &labels(&["kvm"]), None)
        .await
        .unwrap();
    let err = host_b
        .generate_jitconfig(&repo(), "lab-1", 1, &labels(&["kvm"]), None)
        .await
        .unwrap_err();
    assert!(matches!(err, GithubError::NameTaken { .. }), "{err:?}");
    assert_eq!(err.status(), Some(409));
    let text = err.to_string();
    assert!(
        text.starts_with("a runner named `lab-1` is already registered: Already exists"),
        "{text}"
    );
    assert!(
        text.contains("hint: another host may use the same runner name"),
        "{text}"
    );
}

#[tokio::test]
async fn agentctl_token_registration_prints_a_token_github_accepts() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    let pat = emu.add_pat(PatSpec::classic(&["repo"]));
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "github-pat", &pat);
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\n\n[github]\nurl = \"{}\"\npat_file = \"github-pat\"\n",
            emu.web_url_for("octo/repo")
        ),
    )
    .unwrap();

    let run = |args: &'static [&'static str]| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(agentctl())
                .arg("--config")
                .arg(&config)
                .args(args)
                .output()
                .expect("agentctl runs")
        })
    };
    let out = run(&["token", "registration"]).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains(&pat), "{stderr}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(token.len(), 29, "{token}");
    assert!(!stderr.contains(&token), "{stderr}");

    // The token registers a runner: the exchange config.sh does first succeeds.
    let exchange = reqwest::Client::new()
        .post(format!("{}/actions/runner-registration", emu.api_url()))
        .header("Authorization", format!("RemoteAuth {token}"))
        .json(&serde_json::json!({"url": emu.web_url_for("octo/repo"), "runner_event": "register"}))
        .send()
        .await
        .unwrap();
    assert_eq!(exchange.status().as_u16(), 200);

    let out = run(&["token", "remove", "--json"]).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["token"].as_str().map(str::len), Some(29));
    let expires_at = time::OffsetDateTime::parse(
        json["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(expires_at > emu.now() + time::Duration::minutes(59));

    // A configuration that does not load: exit 78, as for every command.
    let missing = std::process::Command::new(agentctl())
        .args([
            "--config",
            "/nonexistent/agent.toml",
            "token",
            "registration",
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(78));
    assert!(missing.stdout.is_empty());

    // Missing permission: exit 2 and the hint on stderr.
    let weak = emu.add_pat(PatSpec::classic(&["read:org"]));
    secret_file(dir.path(), "github-pat", &weak);
    let out = run(&["token", "registration"]).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot get a registration token"),
        "{stderr}"
    );
}

#[tokio::test]
async fn concurrent_calls_of_an_app_mint_one_installation_token() {
    let emu = start().await;
    emu.create_org("octo").unwrap();
    let key = keys::generate_app_key().unwrap();
    let app_id = emu
        .add_app(
            &key.public_key_pem,
            vec![InstallationSpec {
                id: 9,
                account: "octo".into(),
                permissions: [(
                    "organization_self_hosted_runners".to_string(),
                    "write".to_string(),
                )]
                .into_iter()
                .collect(),
            }],
        )
        .unwrap();
    let gh = client(&emu, Credentials::app(app_id, 9, key.private_key_pem));
    let scope = org();
    let calls = (0..6).map(|_| gh.list_runners(&scope));
    for result in futures_util::future::join_all(calls).await {
        assert!(result.unwrap().is_empty());
    }
    assert_eq!(emu.request_count(MINT), 1);
    assert_eq!(
        emu.request_count("GET /api/v3/orgs/{org}/actions/runners"),
        6
    );
}

/// A server answering `503` with `retry-after: 1` once, then an empty runner list.
#[tokio::test]
async fn retry_after_on_a_server_error_is_obeyed() {
    use std::sync::atomic::AtomicUsize;
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/repos/octo/repo/actions/runners",
        axum::routing::get(move || {
            let counter = counter.clone();
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                    (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        [("retry-after", "1")],
                        r#"{"message":"try later"}"#,
                    )
                } else {
                    (
                        axum::http::StatusCode::OK,
                        [("etag", "\"x\"")],
                        r#"{"total_count":0,"runners":[]}"#,
                    )
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let gh = Client::with_options(
        Url::parse(&format!("http://{addr}")).unwrap(),
        Credentials::pat("ghp_test"),
        ClientOptions {
            backoff: Duration::from_millis(1),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let started = std::time::Instant::now();
    assert!(gh.list_runners(&repo()).await.unwrap().is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "retried after {:?}, not after retry-after",
        started.elapsed()
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}
