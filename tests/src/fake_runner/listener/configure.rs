//! `configure` and `remove` (actions-runner.md §1.4, §1.5, §1.7, §1.8).

use std::io::BufRead as _;

use serde_json::json;

use super::args::Settings;
use super::client::{api_base, CallError, Client};
use super::store::{self, CredentialData, Root, RsaParams, RunnerSettings};
use super::{say, ListenerError};

const ALREADY_CONFIGURED: &str = "Cannot configure the runner because it is already configured. \
To reconfigure the runner, run 'config.cmd remove' or './config.sh remove' first.";

/// Reads a value: the arg/env input, else (unattended) the default or the real error, else a
/// prompt on stdin.
fn arg_or_prompt(
    settings: &Settings,
    name: &str,
    description: &str,
    default: Option<&str>,
    valid: &dyn Fn(&str) -> bool,
) -> Result<String, ListenerError> {
    let invalid = || {
        ListenerError::config(format!(
            "Invalid configuration provided for {name}. Terminating unattended configuration."
        ))
    };
    if let Some(value) = settings.arg(name) {
        if valid(value) {
            return Ok(value.to_string());
        }
    }
    if settings.flag("unattended") {
        return match default {
            Some(d) if valid(d) => Ok(d.to_string()),
            _ => Err(invalid()),
        };
    }
    // Interactive: one attempt per line of stdin; end of input is a failure.
    let stdin = std::io::stdin();
    loop {
        match default {
            Some(d) if !d.is_empty() => say(format!("{description} [press Enter for {d}]")),
            _ => say(description),
        }
        let mut line = String::new();
        let read = stdin
            .lock()
            .read_line(&mut line)
            .map_err(|source| ListenerError::Io {
                path: "/dev/stdin".into(),
                source,
            })?;
        if read == 0 {
            return Err(invalid());
        }
        let line = line.trim();
        let value = if line.is_empty() {
            default.unwrap_or_default()
        } else {
            line
        };
        if valid(value) {
            return Ok(value.to_string());
        }
        say(format!("Enter a valid value for {name}."));
    }
}

fn bool_or_prompt(settings: &Settings, name: &str, description: &str) -> bool {
    if settings.flag(name) {
        return true;
    }
    if settings.flag("unattended") {
        return false;
    }
    say(format!("{description} [press Enter for N]"));
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

fn valid_url(value: &str) -> bool {
    url::Url::parse(value).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
}

fn non_empty(value: &str) -> bool {
    !value.trim().is_empty()
}

/// The arch label of this release (`bin/runnerarch`: `x64`, `arm64`, `arm`).
pub fn arch_label(root: &Root) -> String {
    let arch = std::fs::read_to_string(root.bin().join("runnerarch"))
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_else(|_| "x64".to_string());
    match arch.as_str() {
        "arm64" => "ARM64".to_string(),
        "arm" => "ARM".to_string(),
        _ => "X64".to_string(),
    }
}

/// The path of `--url` relative to its host: `owner/repo`, `org`, `enterprises/slug`.
fn scope_path(github_url: &url::Url) -> String {
    let path = github_url.path().trim_matches('/');
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["enterprises", slug] => format!("enterprises/{slug}"),
        [owner, repo] => format!("repos/{owner}/{repo}"),
        [org] => format!("orgs/{org}"),
        _ => path.to_string(),
    }
}

async fn registration_token(
    client: &Client,
    settings: &Settings,
    api: &str,
    github_url: &url::Url,
    kind: &str,
    description: &str,
) -> Result<String, ListenerError> {
    if settings.arg("token").is_none() {
        if let Some(pat) = settings.arg("pat") {
            return client
                .token_from_pat(api, &scope_path(github_url), pat, kind)
                .await
                .map_err(http_error);
        }
    }
    arg_or_prompt(settings, "token", description, None, &non_empty)
}

fn http_error(e: CallError) -> ListenerError {
    match e {
        CallError::Http(h) if h.message().is_empty() || h.status == 404 => ListenerError::Service {
            message: h.http_line(),
        },
        other => other.into(),
    }
}

/// Writes `svc.sh` from `bin/systemd.svc.sh.template` with the unit name and description.
pub fn generate_svc_sh(root: &Root, runner: &RunnerSettings) -> Result<(), ListenerError> {
    let template_path = root.bin().join("systemd.svc.sh.template");
    let template = std::fs::read_to_string(&template_path).map_err(|source| ListenerError::Io {
        path: template_path.clone(),
        source,
    })?;
    let text = template
        .replace("{{SvcDescription}}", &store::service_description(runner))
        .replace("{{SvcNameVar}}", &store::service_name(runner));
    store::write_file(&root.path("svc.sh"), text.as_bytes(), 0o755)
}

/// `Runner.Listener configure`.
pub async fn configure(root: &Root, settings: &Settings) -> Result<(), ListenerError> {
    if settings.flag("generateserviceconfig") {
        if !root.is_configured() {
            return Err(ListenerError::config("Runner is not configured."));
        }
        let runner = root.load_settings()?;
        return generate_svc_sh(root, &runner);
    }
    if root.is_configured() {
        return Err(ListenerError::config(ALREADY_CONFIGURED));
    }
    say("");
    say("--------------------------------------------------------------------------------");
    say("|                  Self-hosted runner registration (fake runner)               |");
    say("--------------------------------------------------------------------------------");
    say("");
    say("# Authentication");
    say("");
    let url_text = arg_or_prompt(
        settings,
        "url",
        "What is the URL of your repository?",
        None,
        &valid_url,
    )?;
    let github_url = url::Url::parse(&url_text).map_err(|_| {
        ListenerError::config(
            "Invalid configuration provided for url. Terminating unattended configuration.",
        )
    })?;
    let client = Client::new()?;
    let api = api_base(&github_url);
    let token = registration_token(
        &client,
        settings,
        &api,
        &github_url,
        "registration-token",
        "What is your runner register token?",
    )
    .await?;
    let tenant = client
        .exchange_token(&api, &token, &url_text, "register")
        .await
        .map_err(http_error)?;
    say("");
    say("√ Connected to GitHub");
    say("");

    let pools = client
        .pools(&tenant.url, &tenant.token)
        .await
        .map_err(http_error)?;
    let pool = match settings.arg("runnergroup") {
        Some(name) => pools
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                ListenerError::config(format!(
                    "Could not find any self-hosted runner group named \"{name}\"."
                ))
            })?,
        None => pools
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case("default") && !p.is_hosted)
            .or_else(|| pools.iter().find(|p| !p.is_hosted))
            .ok_or_else(|| {
                ListenerError::config(
                    "Could not find any self-hosted runner group named \"Default\".",
                )
            })?,
    }
    .clone();

    say("# Runner Registration");
    say("");
    let name = arg_or_prompt(
        settings,
        "name",
        "Enter the name of runner:",
        Some(&super::hostname()),
        &non_empty,
    )?;
    let labels_text = if settings.arg("labels").is_some() || settings.flag("unattended") {
        settings.arg("labels").unwrap_or_default().to_string()
    } else {
        arg_or_prompt(
            settings,
            "labels",
            &format!("This runner will have the following labels: 'self-hosted', 'Linux', '{}' \nEnter any additional labels (ex. label-1,label-2):", arch_label(root)),
            Some(""),
            &|_| true,
        )?
    };
    let mut user_labels: Vec<String> = Vec::new();
    for label in labels_text.split(',').filter(|l| !l.is_empty()) {
        if label.chars().count() > 256 {
            return Err(ListenerError::config(
                "Invalid configuration provided for labels. Terminating unattended configuration.",
            ));
        }
        if !user_labels.iter().any(|l| l.eq_ignore_ascii_case(label)) {
            user_labels.push(label.to_string());
        }
    }
    let no_default = settings.flag("no-default-labels");
    if no_default && user_labels.is_empty() {
        return Err(ListenerError::config(
            "Disabling default labels via --no-default-labels without specifying --labels is not supported",
        ));
    }
    let mut labels = Vec::new();
    if !no_default {
        for system in [
            "self-hosted".to_string(),
            "Linux".to_string(),
            arch_label(root),
        ] {
            labels.push(json!({"name": system, "type": "system"}));
        }
    }
    for label in &user_labels {
        labels.push(json!({"name": label, "type": "user"}));
    }
    let work = arg_or_prompt(
        settings,
        "work",
        "Enter name of work folder:",
        Some("_work"),
        &non_empty,
    )?;
    let ephemeral = settings.flag("ephemeral");
    let disable_update = settings.flag("disableupdate");

    let rsa_path = root.path(".credentials_rsaparams");
    let rsa = if rsa_path.exists() {
        root.load_rsa()?
    } else {
        let rsa = RsaParams::generate();
        store::write_json(&rsa_path, &rsa, 0o600)?;
        rsa
    };
    let version = root.version();
    let mut replace = settings.flag("replace");
    let agent = loop {
        let body = json!({
            "name": name,
            "version": version,
            "labels": labels,
            "ephemeral": ephemeral,
            "disableUpdate": disable_update,
            "replace": replace,
            "publicKey": rsa.modulus,
        });
        match client
            .register(&tenant.url, &tenant.token, pool.id, &body)
            .await
        {
            Ok(agent) => break agent,
            Err(CallError::Http(h)) if h.status == 409 && !replace => {
                if bool_or_prompt(
                    settings,
                    "replace",
                    "Would you like to replace the existing runner? (Y/N)",
                ) {
                    replace = true;
                    continue;
                }
                return Err(ListenerError::config(format!(
                    "A runner exists with the same name {name}."
                )));
            }
            Err(e) => return Err(http_error(e)),
        }
    };
    say("");
    say(if replace {
        "√ Runner successfully replaced"
    } else {
        "√ Runner successfully added"
    });

    client
        .access_token(
            &agent.authorization.authorization_url,
            &agent.authorization.client_id,
            &rsa.modulus,
        )
        .await
        .map_err(http_error)?;
    say("√ Runner connection is good");
    say("");
    say("# Runner settings");
    say("");

    let mut data = std::collections::BTreeMap::new();
    data.insert(
        "clientId".to_string(),
        agent.authorization.client_id.clone(),
    );
    data.insert(
        "authorizationUrl".to_string(),
        agent.authorization.authorization_url.clone(),
    );
    data.insert("requireFipsCryptography".to_string(), "False".to_string());
    let credentials = CredentialData {
        scheme: "OAuth".to_string(),
        data,
    };
    store::write_json(&root.path(".credentials"), &credentials, 0o644)?;
    let runner = RunnerSettings {
        agent_id: agent.id,
        agent_name: agent.name.clone(),
        pool_id: pool.id,
        pool_name: pool.name.clone(),
        server_url: tenant.url.clone(),
        git_hub_url: url_text.clone(),
        work_folder: work,
        ephemeral,
        disable_update,
        monitor_socket_address: settings.arg("monitorsocketaddress").map(str::to_string),
    };
    store::write_json(&root.path(".runner"), &runner, 0o644)?;
    generate_svc_sh(root, &runner)?;
    say("");
    say("√ Settings Saved.");
    say("");
    Ok(())
}

/// `Runner.Listener remove` (without `--local`).
pub async fn remove(root: &Root, settings: &Settings) -> Result<(), ListenerError> {
    if root.is_service_configured() {
        return Err(ListenerError::config("Uninstall service first"));
    }
    say("");
    say("# Runner removal");
    say("");
    if root.is_configured() && root.path(".credentials").exists() {
        let runner = root.load_settings()?;
        let github_url = url::Url::parse(&runner.git_hub_url).map_err(|_| {
            ListenerError::config(format!(
                "invalid gitHubUrl `{}` in `.runner`",
                runner.git_hub_url
            ))
        })?;
        let client = Client::new()?;
        let api = api_base(&github_url);
        let token = registration_token(
            &client,
            settings,
            &api,
            &github_url,
            "remove-token",
            "Enter runner remove token:",
        )
        .await?;
        let tenant = client
            .exchange_token(&api, &token, &runner.git_hub_url, "remove")
            .await
            .map_err(http_error)?;
        match client
            .delete_agent(&tenant.url, &tenant.token, runner.pool_id, runner.agent_id)
            .await
        {
            Ok(()) => say("√ Runner removed successfully"),
            Err(CallError::Http(h)) if h.status == 404 => {
                say("Does not exist. Skipping Removing runner from the server")
            }
            Err(e) => return Err(http_error(e)),
        }
    }
    for removed in root.delete_local_config() {
        if removed == ".credentials" || removed == ".runner" {
            say(format!("√ Removed {removed}"));
        }
    }
    say("");
    Ok(())
}

/// `--check --url <url> --pat <pat>`: the real network check's framing with one check (the
/// GitHub API answers `GET /user` with the PAT). Always exits with success, like the real one.
pub async fn check(root: &Root, settings: &Settings) -> Result<(), ListenerError> {
    let url_text = arg_or_prompt(
        settings,
        "url",
        "What is the URL of your repository?",
        None,
        &valid_url,
    )?;
    let pat = arg_or_prompt(
        settings,
        "pat",
        "What is your GitHub personal access token?",
        None,
        &non_empty,
    )?;
    let github_url = url::Url::parse(&url_text)
        .map_err(|_| ListenerError::config("Invalid configuration provided for url."))?;
    let api = api_base(&github_url);
    let client = Client::new()?;
    let passed = client.check_user(&api, &pat).await;
    let stars = "*".repeat(118);
    let blank = format!("**{}**", " ".repeat(114));
    let verdict = |word: &str| format!("**{:^114}**", word);
    say(&stars);
    say("**  Check:               GitHub connection");
    say("**  Description:         Check if the Actions runner has access to the GitHub endpoint.");
    say(&stars);
    say(&blank);
    say(verdict(if passed.is_ok() { "P A S S" } else { "F A I L" }));
    say(&blank);
    say(&stars);
    let log = root.path("_diag").join("InternetCheck.log");
    let _ = std::fs::create_dir_all(root.path("_diag"));
    let detail = match &passed {
        Ok(()) => format!("GET {api}/user succeeded\n"),
        Err(e) => format!("GET {api}/user failed: {e}\n"),
    };
    let _ = std::fs::write(&log, detail);
    say(format!("** Log: {}", log.display()));
    say(&stars);
    say("");
    Ok(())
}
