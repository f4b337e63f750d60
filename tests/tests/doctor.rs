//! The github family of `agentctl doctor` against the GitHub emulator: valid and bad credentials,
//! missing permissions, runner groups, App installations, an API too slow to answer, and the
//! update window of pinned runners. (A skewed `Date` header is tested in
//! `agent/tests/doctor.rs` with a loopback server: the emulator's `Date` is the real clock.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use runner_agent::doctor::{self, ConfigState, Environment, Family, Finding, Options, Outcome};
use runner_agent_tests::emulator::{
    keys, AssetSource, Emulator, EmulatorOptions, Fault, InstallationSpec, PatSpec, ReleaseOptions,
};

async fn start() -> Emulator {
    Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator starts")
}

/// Write `agent.toml` (and its secret) into `dir` and load it with the real loader.
fn config(dir: &Path, github: &str, extra: &str) -> ConfigState {
    let path = dir.join("agent.toml");
    std::fs::write(&path, format!("version = 1\n\n[github]\n{github}\n{extra}")).unwrap();
    for name in ["github-pat", "github-app.pem"] {
        let secret = dir.join(name);
        if secret.exists() {
            std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    ConfigState::Loaded(Box::new(
        runner_agent::config::load(&path).expect("config loads"),
    ))
}

fn pat_config(dir: &Path, web: &str, pat: &str, extra: &str) -> ConfigState {
    std::fs::write(dir.join("github-pat"), format!("{pat}\n")).unwrap();
    config(
        dir,
        &format!("url = \"{web}\"\npat_file = \"github-pat\""),
        extra,
    )
}

async fn run(config: &ConfigState, only: Family) -> Vec<Finding> {
    let options = Options {
        only: Some(only),
        ..Options::default()
    };
    doctor::run(config, &options, &Environment::system())
        .await
        .expect("doctor runs")
        .findings
}

fn get<'a>(findings: &'a [Finding], id: &str) -> &'a Finding {
    findings
        .iter()
        .find(|f| f.id == id)
        .unwrap_or_else(|| panic!("no {id} in {findings:#?}"))
}

#[tokio::test]
async fn a_repo_admin_token_passes_everything() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    let pat = emu.add_pat(PatSpec::classic(&["repo", "workflow"]));
    let dir = tempfile::tempdir().unwrap();
    let cfg = pat_config(dir.path(), &emu.web_url_for("octo/repo"), &pat, "");
    let findings = run(&cfg, Family::Github).await;
    for id in [
        "github.api",
        "github.auth",
        "github.permission",
        "github.token",
        "github.clock",
    ] {
        assert_eq!(
            get(&findings, id).outcome,
            Outcome::Pass,
            "{id}: {findings:#?}"
        );
    }
    assert!(get(&findings, "github.permission")
        .detail
        .contains("classic PAT scopes: repo, workflow"));
    assert_eq!(
        emu.request_count("POST /api/v3/repos/{owner}/{repo}/actions/runners/registration-token"),
        1
    );
}

#[tokio::test]
async fn a_bad_token_is_rejected_with_a_hint() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    let pat = emu.add_pat(PatSpec::classic(&["repo"]));
    assert!(emu.revoke_token(&pat));
    let dir = tempfile::tempdir().unwrap();
    let cfg = pat_config(dir.path(), &emu.web_url_for("octo/repo"), &pat, "");
    let findings = run(&cfg, Family::Github).await;
    let auth = get(&findings, "github.auth");
    assert_eq!(auth.outcome, Outcome::Fail);
    assert_eq!(
        auth.detail,
        "the token is rejected: 401 Unauthorized (Bad credentials)"
    );
    assert!(auth.hint.as_deref().unwrap().contains("create a new one"));
    assert!(
        findings.iter().all(|f| f.id != "github.token"),
        "no token minting with a bad token"
    );
}

#[tokio::test]
async fn a_classic_token_without_the_org_scope_names_the_scope() {
    let emu = start().await;
    emu.create_org("octo").unwrap();
    let pat = emu.add_pat(PatSpec::classic(&["repo"]));
    let dir = tempfile::tempdir().unwrap();
    let cfg = pat_config(dir.path(), &emu.web_url_for("octo"), &pat, "");
    let findings = run(&cfg, Family::Github).await;
    let permission = get(&findings, "github.permission");
    assert_eq!(permission.outcome, Outcome::Fail, "{findings:#?}");
    assert_eq!(
        permission.detail,
        "the classic PAT has scopes `repo`, managing runners of `/orgs/octo` needs `admin:org`"
    );
    assert!(permission
        .hint
        .as_deref()
        .unwrap()
        .contains("add the `admin:org` scope"));
}

#[tokio::test]
async fn a_fine_grained_token_that_may_only_read_cannot_mint_tokens() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    let none = emu.add_pat(PatSpec::fine_grained(&[("contents", "read")]));
    let read = emu.add_pat(PatSpec::fine_grained(&[("administration", "read")]));
    let dir = tempfile::tempdir().unwrap();

    let cfg = pat_config(dir.path(), &emu.web_url_for("octo/repo"), &none, "");
    let findings = run(&cfg, Family::Github).await;
    let permission = get(&findings, "github.permission");
    assert_eq!(permission.outcome, Outcome::Fail, "{findings:#?}");
    assert!(permission.detail.contains("403"), "{}", permission.detail);
    assert_eq!(
        permission.hint.as_deref(),
        Some("grant the token `administration=read` on `/repos/octo/repo` (or install the App there)")
    );

    let cfg = pat_config(dir.path(), &emu.web_url_for("octo/repo"), &read, "");
    let findings = run(&cfg, Family::Github).await;
    assert_eq!(get(&findings, "github.permission").outcome, Outcome::Pass);
    let token = get(&findings, "github.token");
    assert_eq!(token.outcome, Outcome::Fail, "{findings:#?}");
    assert!(
        token
            .detail
            .starts_with("minting a registration token gave 403"),
        "{}",
        token.detail
    );
}

#[tokio::test]
async fn runner_groups_must_exist_and_say_whether_public_repos_may_use_them() {
    let emu = start().await;
    emu.create_org("octo").unwrap();
    emu.create_runner_group("octo", "lab", false).unwrap();
    let pat = emu.add_pat(PatSpec::classic(&["admin:org"]));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("runners");
    let runners = format!(
        "[defaults]\nuser = \"ra-runner\"\nroot = \"{}\"\nservice = \"process\"\n\n\
         [[runner]]\nname = \"a\"\ngroup = \"lab\"\n\n[[runner]]\nname = \"b\"\ngroup = \"missing\"\n",
        root.display()
    );
    let cfg = pat_config(dir.path(), &emu.web_url_for("octo"), &pat, &runners);
    let findings = run(&cfg, Family::Github).await;
    let groups: Vec<&Finding> = findings.iter().filter(|f| f.id == "github.group").collect();
    assert_eq!(groups.len(), 2, "{findings:#?}");
    assert_eq!(groups[0].subject.as_deref(), Some("lab"));
    assert_eq!(groups[0].outcome, Outcome::Pass);
    assert!(groups[0]
        .detail
        .contains("public repositories may not use it"));
    assert_eq!(groups[1].subject.as_deref(), Some("missing"));
    assert_eq!(groups[1].outcome, Outcome::Fail);
    assert_eq!(groups[1].detail, "runner group `missing` does not exist");
}

#[tokio::test]
async fn an_app_installation_is_checked_through_its_own_token() {
    let emu = start().await;
    emu.create_org("octo").unwrap();
    let key = keys::generate_app_key().unwrap();
    let permissions = [(
        "organization_self_hosted_runners".to_owned(),
        "write".to_owned(),
    )]
    .into_iter()
    .collect();
    let app_id = emu
        .add_app(
            &key.public_key_pem,
            vec![InstallationSpec {
                id: 77,
                account: "octo".to_owned(),
                permissions,
            }],
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("github-app.pem"), &key.private_key_pem).unwrap();
    let github = format!(
        "url = \"{}\"\napp = {{ app_id = {app_id}, installation_id = 77, private_key_file = \"github-app.pem\" }}",
        emu.web_url_for("octo")
    );
    let findings = run(&config(dir.path(), &github, ""), Family::Github).await;
    for id in [
        "github.api",
        "github.auth",
        "github.permission",
        "github.token",
    ] {
        assert_eq!(
            get(&findings, id).outcome,
            Outcome::Pass,
            "{id}: {findings:#?}"
        );
    }
    // A wrong installation id fails at the token exchange, before anything else.
    let github = github.replace("installation_id = 77", "installation_id = 78");
    let findings = run(&config(dir.path(), &github, ""), Family::Github).await;
    let auth = get(&findings, "github.auth");
    assert_eq!(auth.outcome, Outcome::Fail, "{findings:#?}");
    assert!(
        auth.detail
            .contains("cannot get a token for installation 78"),
        "{}",
        auth.detail
    );
}

#[tokio::test]
async fn a_github_too_slow_to_answer_is_bounded() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    let pat = emu.add_pat(PatSpec::classic(&["repo"]));
    emu.inject(Fault::Latency {
        ms: 10_000,
        count: 10,
        path_prefix: None,
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = pat_config(dir.path(), &emu.web_url_for("octo/repo"), &pat, "");
    let started = Instant::now();
    let findings = run(&cfg, Family::Github).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let api = get(&findings, "github.api");
    assert_eq!(api.outcome, Outcome::Fail);
    assert!(
        api.detail.contains("did not answer within 2000 ms"),
        "{}",
        api.detail
    );
}

#[tokio::test]
async fn a_pinned_runner_is_told_the_days_left_in_the_update_window() {
    let emu = start().await;
    emu.create_repo("octo/repo", true).unwrap();
    let pat = emu.add_pat(PatSpec::classic(&["repo"]));
    let asset = || {
        vec![(
            "linux-x64".to_owned(),
            AssetSource::Bytes(b"not a tarball".to_vec()),
        )]
    };
    // Releases get the emulator clock's date: 2.330.0 forty days ago, 2.331.0 twenty-six.
    emu.advance_clock(-40 * 86_400);
    emu.publish_release("2.330.0", asset(), ReleaseOptions::default())
        .await
        .unwrap();
    emu.advance_clock(14 * 86_400);
    emu.publish_release("2.331.0", asset(), ReleaseOptions::default())
        .await
        .unwrap();
    emu.advance_clock(26 * 86_400);
    let dir = tempfile::tempdir().unwrap();
    let runner_dir = dir.path().join("runners/pinned");
    std::fs::create_dir_all(runner_dir.join("bin.2.330.0")).unwrap();
    std::os::unix::fs::symlink("bin.2.330.0", runner_dir.join("bin")).unwrap();
    let runners = format!(
        "[defaults]\nuser = \"ra-runner\"\nroot = \"{}\"\nservice = \"process\"\ndisable_update = true\n\n[[runner]]\nname = \"pinned\"\n",
        dir.path().join("runners").display()
    );
    let cfg = pat_config(dir.path(), &emu.web_url_for("octo/repo"), &pat, &runners);
    let findings = run(&cfg, Family::Runner).await;
    let window = get(&findings, "runner.update-window");
    assert_eq!(window.subject.as_deref(), Some("pinned"));
    assert_eq!(window.outcome, Outcome::Warn, "{findings:#?}");
    assert!(
        window
            .detail
            .starts_with("2.330.0 with `disable_update`: 2.331.0 came out"),
        "{}",
        window.detail
    );
    assert!(
        window
            .detail
            .ends_with("came out 26 days ago: 4 days left before GitHub stops sending it jobs"),
        "{}",
        window.detail
    );
    // `--only runner` asks GitHub for release dates only: no token is minted.
    assert_eq!(
        emu.request_count("POST /api/v3/repos/{owner}/{repo}/actions/runners/registration-token"),
        0
    );
    assert!(
        findings.iter().all(|f| f.family == Family::Runner),
        "--only runner: {findings:#?}"
    );
}
