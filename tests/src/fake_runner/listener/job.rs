//! Running one job: hooks and steps as `bash -e`, in the runner user's own process group, with
//! the environment a real job gets; output collected as one combined stream.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// The body of a `PipelineAgentJobRequest` message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRequest {
    pub job_id: serde_json::Value,
    #[serde(default)]
    pub request_id: serde_json::Value,
    #[serde(default)]
    pub job_display_name: String,
    #[serde(default)]
    pub steps: Vec<Step>,
    #[serde(default)]
    pub variables: BTreeMap<String, serde_json::Value>,
}

impl JobRequest {
    pub fn job_id_text(&self) -> String {
        match &self.job_id {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    #[serde(default)]
    pub name: String,
    pub script: String,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOutcome {
    /// `succeeded`, `failed` or `cancelled`.
    pub result: String,
    pub exit_code: i32,
    pub output: String,
}

/// What a job needs from the runner.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobContext {
    pub runner_name: String,
    pub arch_label: String,
    /// `<root>/<workFolder>`.
    pub work_dir: PathBuf,
}

/// Cancels a running job: kills its current process group.
#[derive(Debug, Clone, Default)]
pub struct CancelHandle {
    inner: Arc<Mutex<CancelState>>,
}

#[derive(Debug, Default)]
struct CancelState {
    cancelled: bool,
    pgid: Option<i32>,
}

impl CancelHandle {
    pub fn cancel(&self) {
        if let Ok(mut state) = self.inner.lock() {
            state.cancelled = true;
            if let Some(pgid) = state.pgid {
                kill_group(pgid);
            }
        }
    }

    fn is_cancelled(&self) -> bool {
        self.inner.lock().map(|s| s.cancelled).unwrap_or(false)
    }

    fn set_group(&self, pgid: Option<i32>) -> bool {
        match self.inner.lock() {
            Ok(mut state) => {
                state.pgid = pgid;
                if state.cancelled {
                    if let Some(pgid) = pgid {
                        kill_group(pgid);
                    }
                }
                state.cancelled
            }
            Err(_) => false,
        }
    }
}

fn kill_group(pgid: i32) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// The repository name of the job's workspace (`<work>/<repo>/<repo>`).
fn repo_name(job: &JobRequest, github_url: &str) -> String {
    let from_vars = job
        .variables
        .iter()
        .find(|(k, _)| {
            k.eq_ignore_ascii_case("GITHUB_REPOSITORY") || k == &"system.github.repository"
        })
        .and_then(|(_, v)| v.as_str().map(str::to_string));
    let full = from_vars.unwrap_or_else(|| {
        url::Url::parse(github_url)
            .map(|u| u.path().trim_matches('/').to_string())
            .unwrap_or_default()
    });
    full.rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("_fake")
        .to_string()
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Runs the job to the end (blocking; call from `spawn_blocking`).
pub fn run_job(
    ctx: &JobContext,
    job: &JobRequest,
    github_url: &str,
    cancel: &CancelHandle,
) -> JobOutcome {
    let repo = repo_name(job, github_url);
    let runner_workspace = ctx.work_dir.join(&repo);
    let workspace = runner_workspace.join(&repo);
    let temp = ctx.work_dir.join("_temp");
    let mut output = String::new();
    for dir in [&workspace, &temp] {
        if let Err(e) = std::fs::create_dir_all(dir) {
            output.push_str(&format!("cannot create `{}`: {e}\n", dir.display()));
            return JobOutcome {
                result: "failed".into(),
                exit_code: 1,
                output,
            };
        }
    }
    let mut env: Vec<(String, String)> = Vec::new();
    for (k, v) in &job.variables {
        if is_env_name(k) {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            env.push((k.clone(), v));
        }
    }
    // The `github` context the real runner exports to steps and job hooks (`GITHUB_RUN_ID`, ...),
    // from the job message's `system.github.*` variables.
    for (k, v) in &job.variables {
        if let (Some(name), Some(value)) = (k.strip_prefix("system.github."), v.as_str()) {
            if is_env_name(name) {
                env.push((
                    format!("GITHUB_{}", name.to_ascii_uppercase()),
                    value.to_owned(),
                ));
            }
        }
    }
    let tracking = format!("github_{}", super::guid());
    for (k, v) in [
        ("RUNNER_NAME", ctx.runner_name.clone()),
        ("RUNNER_OS", "Linux".to_string()),
        ("RUNNER_ARCH", ctx.arch_label.clone()),
        ("RUNNER_TEMP", temp.display().to_string()),
        ("RUNNER_WORKSPACE", runner_workspace.display().to_string()),
        ("RUNNER_TRACKING_ID", tracking),
        ("GITHUB_ACTIONS", "true".to_string()),
        ("CI", "true".to_string()),
        ("GITHUB_WORKSPACE", workspace.display().to_string()),
    ] {
        env.push((k.to_string(), v));
    }

    let mut outcome = JobOutcome {
        result: "succeeded".into(),
        exit_code: 0,
        output: String::new(),
    };
    let started = std::env::var("ACTIONS_RUNNER_HOOK_JOB_STARTED")
        .ok()
        .filter(|s| !s.is_empty());
    let completed = std::env::var("ACTIONS_RUNNER_HOOK_JOB_COMPLETED")
        .ok()
        .filter(|s| !s.is_empty());

    let mut failed = false;
    if let Some(hook) = &started {
        output.push_str(&format!("A job started hook has been configured by the self-hosted runner administrator\nRun '{hook}'\n"));
        let (code, text) = run_script(Path::new(hook), &workspace, &env, cancel);
        output.push_str(&text);
        if code != 0 {
            failed = true;
            outcome.exit_code = code;
        }
    }
    if !failed {
        for step in &job.steps {
            if cancel.is_cancelled() {
                break;
            }
            let script = temp.join(format!("{}.sh", super::guid()));
            if let Err(e) = std::fs::write(&script, &step.script) {
                output.push_str(&format!("cannot write `{}`: {e}\n", script.display()));
                failed = true;
                outcome.exit_code = 1;
                break;
            }
            let (code, text) = run_script(&script, &workspace, &env, cancel);
            let _ = std::fs::remove_file(&script);
            output.push_str(&text);
            if code != 0 {
                failed = true;
                outcome.exit_code = code;
                break;
            }
        }
    }
    if let Some(hook) = &completed {
        output.push_str(&format!("A job completed hook has been configured by the self-hosted runner administrator\nRun '{hook}'\n"));
        let (code, text) = run_script(Path::new(hook), &workspace, &env, &CancelHandle::default());
        output.push_str(&text);
        if code != 0 && !failed {
            failed = true;
            outcome.exit_code = code;
        }
    }
    outcome.output = output;
    if cancel.is_cancelled() {
        outcome.result = "cancelled".into();
        if outcome.exit_code == 0 {
            outcome.exit_code = 137;
        }
    } else if failed {
        outcome.result = "failed".into();
    }
    outcome
}

/// Runs `bash -e <script>` in its own process group with stdout and stderr on one pipe; kills
/// what is left of the group when bash ends (the real runner's orphan cleanup). Returns the exit
/// code (128+signal when killed) and the combined output.
fn run_script(
    script: &Path,
    cwd: &Path,
    env: &[(String, String)],
    cancel: &CancelHandle,
) -> (i32, String) {
    let (read_end, write_end): (OwnedFd, OwnedFd) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => return (1, format!("cannot create a pipe: {e}\n")),
    };
    let stderr_end = match write_end.try_clone() {
        Ok(fd) => fd,
        Err(e) => return (1, format!("cannot duplicate a pipe: {e}\n")),
    };
    let mut command = std::process::Command::new("bash");
    command
        .arg("-e")
        .arg(script)
        .current_dir(cwd)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(write_end))
        .stderr(std::process::Stdio::from(stderr_end))
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            return (
                1,
                format!("cannot run `bash -e {}`: {e}\n", script.display()),
            )
        }
    };
    // `command` still holds the pipe's write ends: drop it so EOF can come.
    drop(command);
    let pgid = i32::try_from(child.id()).unwrap_or(0);
    cancel.set_group(Some(pgid));
    let reader = std::thread::spawn(move || {
        use std::io::Read as _;
        let mut file = std::fs::File::from(read_end);
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        bytes
    });
    let status = child.wait();
    cancel.set_group(None);
    kill_group(pgid);
    let bytes = reader.join().unwrap_or_default();
    let code = match status {
        Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
        Err(_) => 1,
    };
    (code, String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(script: &str) -> JobRequest {
        serde_json::from_value(serde_json::json!({
            "jobId": "j1", "requestId": 1, "jobDisplayName": "build",
            "steps": [{"name": "s", "script": script}],
            "variables": {"GITHUB_REPOSITORY": "octo/hello"}
        }))
        .unwrap()
    }

    #[test]
    fn steps_run_in_the_workspace_with_the_job_environment_and_combined_output() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = JobContext {
            runner_name: "r1".into(),
            arch_label: "X64".into(),
            work_dir: dir.path().join("_work"),
        };
        let job = request("pwd; echo out; echo err >&2; echo \"$RUNNER_NAME $RUNNER_OS $GITHUB_ACTIONS $CI\"; exit 3");
        let outcome = run_job(&ctx, &job, "http://h/octo/hello", &CancelHandle::default());
        assert_eq!(outcome.result, "failed");
        assert_eq!(outcome.exit_code, 3);
        let ws = dir.path().join("_work/hello/hello");
        assert_eq!(
            outcome.output,
            format!("{}\nout\nerr\nr1 Linux true true\n", ws.display())
        );
    }

    #[test]
    fn bash_e_stops_at_the_first_failing_command() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = JobContext {
            runner_name: "r1".into(),
            arch_label: "X64".into(),
            work_dir: dir.path().to_path_buf(),
        };
        let outcome = run_job(
            &ctx,
            &request("echo a; false; echo b"),
            "",
            &CancelHandle::default(),
        );
        assert_eq!((outcome.result.as_str(), outcome.exit_code), ("failed", 1));
        assert_eq!(outcome.output, "a\n");
    }

    #[test]
    fn cancelling_kills_the_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = JobContext {
            runner_name: "r1".into(),
            arch_label: "X64".into(),
            work_dir: dir.path().to_path_buf(),
        };
        let cancel = CancelHandle::default();
        let job = request("echo started; sleep 300 & wait");
        let c2 = cancel.clone();
        let t = std::thread::spawn(move || run_job(&ctx, &job, "", &c2));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while cancel.inner.lock().unwrap().pgid.is_none() {
            assert!(std::time::Instant::now() < deadline, "job never started");
            std::thread::yield_now();
        }
        cancel.cancel();
        let outcome = t.join().unwrap();
        assert_eq!(outcome.result, "cancelled");
        assert_eq!(outcome.exit_code, 137);
    }
}
