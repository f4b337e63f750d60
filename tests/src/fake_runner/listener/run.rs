//! `Runner.Listener run`: session, long poll, jobs, cancellation, self-update, and the real
//! exit codes and messages of actions-runner.md §4.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::task::JoinHandle;

use super::args::Settings;
use super::client::{CallError, Client, Message};
use super::configure::arch_label;
use super::job::{JobContext, JobOutcome, JobRequest};
use super::store::{self, CredentialData, Root, RunnerSettings};
use super::update::{self, Refresh};
use super::worker::{self, WorkerCancel};
use super::{code, say, say_error, usage, utc_now};

const REGISTRATION_DELETED: &str = "Failed to create a session. The runner registration has been \
deleted from the server, please re-configure. Runner registrations are automatically deleted for \
runners that have not connected to the service recently.";

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Writes the files of a `--jitconfig` into the root.
fn write_jit_config(root: &Root, encoded: &str) -> Result<(), String> {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    let decoded = engine.decode(encoded.trim()).map_err(|e| e.to_string())?;
    let files: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&decoded).map_err(|e| e.to_string())?;
    for (name, content) in files {
        if name.contains('/') || name == ".." || name == "." {
            return Err(format!("invalid file name `{name}` in the jit config"));
        }
        let bytes = engine.decode(content).map_err(|e| e.to_string())?;
        let mode = if name.starts_with(".credentials") {
            0o600
        } else {
            0o644
        };
        store::write_file(&root.path(&name), &bytes, mode).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `Runner.Listener run`; returns the exit code.
pub async fn run(root: &Root, settings: &Settings) -> i32 {
    let jit = settings.arg("jitconfig").map(str::to_string);
    if let Some(encoded) = &jit {
        if let Err(e) = write_jit_config(root, encoded) {
            say_error(e);
            return code::TERMINATED_ERROR;
        }
    }
    if !root.is_configured() {
        say_error("Runner is not configured.");
        say(usage(root));
        return code::TERMINATED_ERROR;
    }
    let run_once = settings.flag("once");
    if run_once {
        say("Warning: '--once' is going to be deprecated in the future, please consider using '--ephemeral' during runner registration.");
        say("https://docs.github.com/en/actions/hosting-your-own-runners/autoscaling-with-self-hosted-runners#using-ephemeral-runners-for-autoscaling");
    }
    let loaded = (|| {
        Ok::<_, super::ListenerError>((
            root.load_settings()?,
            root.load_credentials()?,
            root.load_rsa()?,
        ))
    })();
    let (runner, credentials, rsa) = match loaded {
        Ok(v) => v,
        Err(e) => {
            say_error(e.to_string());
            return code::TERMINATED_ERROR;
        }
    };
    let client = match Client::new() {
        Ok(c) => c,
        Err(e) => {
            say_error(e.to_string());
            return code::TERMINATED_ERROR;
        }
    };
    let once = run_once || runner.ephemeral || jit.is_some();
    let mut listener = Listener {
        root: root.clone(),
        version: root.version(),
        secret: rsa.modulus.clone(),
        runner,
        credentials,
        client,
        once,
        access_token: String::new(),
        session: None,
    };
    listener.main_loop().await
}

struct Listener {
    root: Root,
    runner: RunnerSettings,
    credentials: CredentialData,
    secret: String,
    client: Client,
    version: String,
    once: bool,
    access_token: String,
    session: Option<String>,
}

struct RunningJob {
    request: JobRequest,
    cancel: WorkerCancel,
}

async fn join_opt<T>(handle: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match handle {
        Some(h) => h.await,
        None => std::future::pending().await,
    }
}

impl Listener {
    fn tenant(&self) -> String {
        let mut url = self.runner.server_url.clone();
        if !url.ends_with('/') {
            url.push('/');
        }
        url
    }

    fn work_dir(&self) -> std::path::PathBuf {
        self.root.dir.join(&self.runner.work_folder)
    }

    /// Refreshes the OAuth access token. `Err(code)` when the listener must stop.
    async fn refresh_token(&mut self) -> Result<(), Option<i32>> {
        let client_id = self
            .credentials
            .data
            .get("clientId")
            .cloned()
            .unwrap_or_default();
        let auth_url = self
            .credentials
            .data
            .get("authorizationUrl")
            .cloned()
            .unwrap_or_default();
        match self
            .client
            .access_token(&auth_url, &client_id, &self.secret)
            .await
        {
            Ok(token) => {
                self.access_token = token;
                Ok(())
            }
            Err(CallError::Http(h))
                if h.body.get("error").and_then(Value::as_str) == Some("invalid_client") =>
            {
                Err(Some(code::TERMINATED_ERROR))
            }
            Err(CallError::Http(h)) if h.status == 401 || h.status == 403 => {
                Err(Some(code::TERMINATED_ERROR))
            }
            Err(_) => Err(None),
        }
    }

    /// Creates a session with the real retry rules. `Err(code)` to exit.
    async fn create_session(&mut self) -> Result<(), i32> {
        let conflict_limit = env_secs("FAKE_RUNNER_SESSION_CONFLICT_SECONDS", 240);
        let retry = Duration::from_secs(env_secs("FAKE_RUNNER_SESSION_RETRY_SECONDS", 30));
        let mut conflict_since: Option<Instant> = None;
        let mut reported_error = false;
        loop {
            if self.access_token.is_empty() {
                match self.refresh_token().await {
                    Ok(()) => {}
                    Err(Some(code)) => {
                        say_error(REGISTRATION_DELETED);
                        return Err(code);
                    }
                    Err(None) => {
                        if !reported_error {
                            say_error(format!("{}: Runner connect error: cannot get an access token. Retrying until reconnected.", utc_now()));
                            reported_error = true;
                        }
                        tokio::time::sleep(retry).await;
                        continue;
                    }
                }
            }
            let body = json!({
                "ownerName": format!("{} (PID: {})", super::hostname(), std::process::id()),
                "agent": {"id": self.runner.agent_id, "name": self.runner.agent_name, "version": self.version},
            });
            match self
                .client
                .create_session(
                    &self.tenant(),
                    &self.access_token,
                    self.runner.pool_id,
                    &body,
                )
                .await
            {
                Ok(id) => {
                    if reported_error {
                        say(format!("{}: Runner reconnected.", utc_now()));
                    }
                    self.session = Some(id);
                    return Ok(());
                }
                Err(CallError::Http(h)) if h.status == 409 => {
                    let since = *conflict_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_secs(conflict_limit) {
                        say_error(format!(
                            "Stop retry on SessionConflictException after retried for {conflict_limit} seconds."
                        ));
                        return Err(code::SESSION_CONFLICT);
                    }
                    if !reported_error {
                        let message = if h.message().is_empty() {
                            "A session for this runner already exists."
                        } else {
                            h.message()
                        };
                        say_error(format!(
                            "{}: Runner connect error: {message}. Retrying until reconnected.",
                            utc_now()
                        ));
                        reported_error = true;
                    }
                    let left = Duration::from_secs(conflict_limit).saturating_sub(since.elapsed());
                    tokio::time::sleep(retry.min(left)).await;
                }
                Err(CallError::Http(h))
                    if h.type_key() == "TaskAgentNotFoundException" || h.status == 404 =>
                {
                    say_error(
                        "The runner no longer exists on the server. Please reconfigure the runner.",
                    );
                    return Err(code::TERMINATED_ERROR);
                }
                Err(CallError::Http(h)) if h.status == 401 => {
                    // The token may have expired: get a new one; a dead client is the deleted
                    // registration.
                    match self.refresh_token().await {
                        Ok(()) => continue,
                        Err(Some(code)) => {
                            say_error(REGISTRATION_DELETED);
                            return Err(code);
                        }
                        Err(None) => tokio::time::sleep(retry).await,
                    }
                }
                Err(CallError::Http(h)) if h.status == 403 => {
                    say_error(if h.message().is_empty() {
                        h.http_line()
                    } else {
                        h.message().to_string()
                    });
                    return Err(code::TERMINATED_ERROR);
                }
                Err(e) => {
                    if !reported_error {
                        say_error(format!(
                            "{}: Runner connect error: {e}. Retrying until reconnected.",
                            utc_now()
                        ));
                        reported_error = true;
                    }
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }

    async fn delete_session(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = self
                .client
                .delete_session(
                    &self.tenant(),
                    &self.access_token,
                    self.runner.pool_id,
                    &session,
                )
                .await;
        }
    }

    fn spawn_poll(&self) -> JoinHandle<Result<Option<Message>, CallError>> {
        let client = self.client.clone();
        let tenant = self.tenant();
        let token = self.access_token.clone();
        let pool = self.runner.pool_id;
        let query = vec![
            ("sessionId", self.session.clone().unwrap_or_default()),
            ("status", "Online".to_string()),
            ("runnerVersion", self.version.clone()),
            ("disableUpdate", self.runner.disable_update.to_string()),
        ];
        tokio::spawn(async move { client.get_message(&tenant, &token, pool, &query).await })
    }

    async fn complete(&self, job: &JobRequest, outcome: &JobOutcome) {
        let body = json!({
            "requestId": job.request_id,
            "result": outcome.result,
            "exitCode": outcome.exit_code,
            "output": outcome.output,
        });
        for _ in 0..5 {
            match self
                .client
                .complete_job(
                    &self.tenant(),
                    &self.access_token,
                    &job.job_id_text(),
                    &body,
                )
                .await
            {
                Ok(()) => break,
                Err(CallError::Http(h)) if h.status < 500 => {
                    say_error(format!("cannot report job completion: {}", h.http_line()));
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
        let result = match outcome.result.as_str() {
            "succeeded" => "Succeeded",
            "cancelled" => "Canceled",
            _ => "Failed",
        };
        say(format!(
            "{}: Job {} completed with result: {result}",
            utc_now(),
            job.job_display_name
        ));
    }

    fn start_job(&self, request: JobRequest) -> (RunningJob, JoinHandle<JobOutcome>) {
        say(format!(
            "{}: Running job: {}",
            utc_now(),
            request.job_display_name
        ));
        let ctx = JobContext {
            runner_name: self.runner.agent_name.clone(),
            arch_label: arch_label(&self.root),
            work_dir: self.work_dir(),
        };
        let cancel = WorkerCancel::default();
        let c2 = cancel.clone();
        let r2 = request.clone();
        let github_url = self.runner.git_hub_url.clone();
        // The worker sits beside the running listener (`bin`, or `bin.<version>` after an update).
        let bin = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(std::path::Path::to_path_buf))
            .unwrap_or_else(|| self.root.path("bin"));
        let handle =
            tokio::task::spawn_blocking(move || worker::run(&bin, ctx, r2, github_url, &c2));
        (RunningJob { request, cancel }, handle)
    }

    /// Listens until an exit code is decided; the session is always deleted on the way out, as
    /// the real listener does in its `finally`.
    async fn main_loop(&mut self) -> i32 {
        let code = self.listen().await;
        self.delete_session().await;
        code
    }

    async fn listen(&mut self) -> i32 {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut sigint), Ok(mut sigterm)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            say_error("cannot install signal handlers");
            return code::TERMINATED_ERROR;
        };
        if let Err(code) = self.create_session().await {
            return code;
        }
        say("√ Connected to GitHub");
        say("");
        say(format!("Current runner version: '{}'", self.version));
        say(format!("{}: Listening for Jobs", utc_now()));

        let retry_override = std::env::var("FAKE_RUNNER_POLL_RETRY_SECONDS")
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok());
        let mut poll: Option<JoinHandle<Result<Option<Message>, CallError>>> = None;
        let mut running: Option<RunningJob> = None;
        let mut job_handle: Option<JoinHandle<JobOutcome>> = None;
        let mut took_job = false;
        let mut pending_update: Option<String> = None;
        let mut errors = 0u32;
        let mut unauthorized = 0u32;
        loop {
            if poll.is_none() && pending_update.is_none() {
                poll = Some(self.spawn_poll());
            }
            tokio::select! {
                _ = sigint.recv() => return self.shutdown(running, job_handle, poll).await,
                _ = sigterm.recv() => return self.shutdown(running, job_handle, poll).await,
                outcome = join_opt(&mut job_handle) => {
                    job_handle = None;
                    let outcome = outcome.unwrap_or_else(|e| JobOutcome {
                        result: "failed".into(),
                        exit_code: 1,
                        output: format!("the job panicked: {e}"),
                    });
                    if let Some(job) = running.take() {
                        self.complete(&job.request, &outcome).await;
                    }
                    if let Some(new) = pending_update.take() {
                        return self.finish_update(&new, poll).await;
                    }
                    if self.once && took_job {
                        if let Some(p) = poll.take() { p.abort(); }
                        self.delete_session().await;
                        // An ephemeral runner's registration is gone after its job: its
                        // local configuration goes too (a `--once` runner keeps it).
                        if self.runner.ephemeral {
                            self.root.delete_local_config();
                        }
                        return code::SUCCESS;
                    }
                }
                result = join_opt(&mut poll) => {
                    poll = None;
                    let result = match result {
                        Ok(r) => r,
                        Err(e) => Err(CallError::Http(super::client::HttpFailure {
                            method: "GET".into(), url: String::new(), status: 599,
                            body: json!({"message": e.to_string()}),
                        })),
                    };
                    match result {
                        Ok(message) => {
                            if errors > 0 {
                                say(format!("{}: Runner reconnected.", utc_now()));
                            }
                            errors = 0;
                            unauthorized = 0;
                            let Some(message) = message else { continue };
                            if let Some(session) = self.session.clone() {
                                let _ = self.client.ack_message(&self.tenant(), &self.access_token, self.runner.pool_id, &message.message_id, &session).await;
                            }
                            match message.message_type.as_str() {
                                "PipelineAgentJobRequest" => {
                                    if running.is_some() || (self.once && took_job) {
                                        continue;
                                    }
                                    match serde_json::from_str::<JobRequest>(&message.body) {
                                        Ok(request) => {
                                            let (job, handle) = self.start_job(request);
                                            job_handle = Some(handle);
                                            running = Some(job);
                                            took_job = true;
                                        }
                                        Err(e) => say_error(format!("cannot read a job message: {e}")),
                                    }
                                }
                                "JobCancellation" => {
                                    let id = serde_json::from_str::<Value>(&message.body).ok()
                                        .and_then(|v| v.get("jobId").cloned());
                                    if let (Some(job), Some(id)) = (&running, id) {
                                        if job.request.job_id == id || job.request.job_id_text() == id.as_str().unwrap_or_default() {
                                            job.cancel.cancel();
                                        }
                                    }
                                }
                                "AgentRefresh" => {
                                    if self.runner.disable_update {
                                        continue;
                                    }
                                    let refresh: Refresh = match serde_json::from_str(&message.body) {
                                        Ok(r) => r,
                                        Err(e) => { say_error(format!("cannot read a refresh message: {e}")); continue; }
                                    };
                                    match update::prepare(&self.root, &self.work_dir(), &self.client, &refresh, &self.version).await {
                                        Ok(Some(new)) => {
                                            if running.is_some() {
                                                pending_update = Some(new);
                                            } else {
                                                return self.finish_update(&new, poll).await;
                                            }
                                        }
                                        Ok(None) => {}
                                        Err(e) => say_error(format!("Runner update failed: {e}")),
                                    }
                                }
                                _ => {}
                            }
                        }
                        Err(CallError::Http(h)) if h.status == 404 && h.type_key() == "TaskAgentSessionExpiredException" => {
                            self.session = None;
                            if let Err(code) = self.create_session().await {
                                return code;
                            }
                        }
                        Err(CallError::Http(h)) if h.status == 404 && (h.type_key() == "TaskAgentNotFoundException" || h.type_key() == "RunnerNotFoundException") => {
                            if let Some(job) = &running { job.cancel.cancel(); }
                            say_error("The runner no longer exists on the server. Cleaning up local configuration.");
                            self.root.delete_local_config();
                            return code::SUCCESS;
                        }
                        Err(CallError::Http(h)) if h.status == 403 && h.body.get("errorCode").and_then(Value::as_i64) == Some(1) => {
                            say_error(h.message());
                            let deprecated_code = std::env::var("ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE")
                                .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "$true"))
                                .unwrap_or(false);
                            return if deprecated_code { code::RUNNER_VERSION_DEPRECATED } else { code::TERMINATED_ERROR };
                        }
                        Err(CallError::Http(h)) if h.status == 401 && unauthorized == 0 => {
                            unauthorized += 1;
                            match self.refresh_token().await {
                                Ok(()) => {}
                                // The real listener only traces "Runner OAuth token has been
                                // revoked. Shutting down." and exits with success.
                                Err(Some(_)) => return code::SUCCESS,
                                Err(None) => {}
                            }
                        }
                        Err(CallError::Http(h)) if h.status == 401 || h.status == 403 || (h.status == 404 && h.type_key() == "TaskAgentPoolNotFoundException") => {
                            say_error(if h.message().is_empty() { h.http_line() } else { h.message().to_string() });
                            return code::RETRYABLE_ERROR;
                        }
                        Err(e) => {
                            errors += 1;
                            if errors == 1 {
                                say_error(format!("{}: Runner connect error: {e}. Retrying until reconnected.", utc_now()));
                            }
                            let wait = match retry_override {
                                Some(s) => Duration::from_secs_f64(s.max(0.0)),
                                None if errors <= 5 => Duration::from_secs(rand::random_range(15..=30)),
                                None => Duration::from_secs(rand::random_range(30..=60)),
                            };
                            tokio::select! {
                                _ = tokio::time::sleep(wait) => {}
                                _ = sigint.recv() => return self.shutdown(running, job_handle, None).await,
                                _ = sigterm.recv() => return self.shutdown(running, job_handle, None).await,
                            }
                        }
                    }
                }
            }
        }
    }

    /// SIGINT/SIGTERM: cancel the running job, report it, close the session, exit 0.
    async fn shutdown(
        &mut self,
        running: Option<RunningJob>,
        job_handle: Option<JoinHandle<JobOutcome>>,
        poll: Option<JoinHandle<Result<Option<Message>, CallError>>>,
    ) -> i32 {
        say("Exiting...");
        if let Some(p) = poll {
            p.abort();
        }
        if let (Some(job), Some(handle)) = (running, job_handle) {
            job.cancel.cancel();
            if let Ok(outcome) = handle.await {
                self.complete(&job.request, &outcome).await;
            }
        }
        self.delete_session().await;
        code::SUCCESS
    }

    async fn finish_update(
        &mut self,
        new: &str,
        poll: Option<JoinHandle<Result<Option<Message>, CallError>>>,
    ) -> i32 {
        if let Some(p) = poll {
            p.abort();
        }
        self.delete_session().await;
        match update::launch(&self.root, &self.work_dir(), &self.version, new) {
            Ok(_) => {
                if self.once {
                    code::RUN_ONCE_RUNNER_UPDATING
                } else {
                    code::RUNNER_UPDATING
                }
            }
            Err(e) => {
                say_error(format!("Runner update failed: {e}"));
                code::RETRYABLE_ERROR
            }
        }
    }
}
