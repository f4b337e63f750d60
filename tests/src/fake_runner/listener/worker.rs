//! `bin/Runner.Worker`: the per-job process, as the real listener runs it.
//!
//! The real listener starts `<bin>/Runner.Worker spawnclient <out> <in>` for each job (`<bin>`
//! the directory of its own executable, working directory the same; actions/runner
//! `JobDispatcher.cs`), sends it the job message over a pipe, later a cancellation, and takes
//! the job's result from the worker's exit code, `100 + TaskResult`. The worker writes
//! `_diag/Worker_<yyyyMMdd-HHmmss>-utc.log` and lives exactly as long as the job. The fake does
//! the same with one binary: `bin/Runner.Worker` is a hard link to `bin/Runner.Listener`, which
//! dispatches on its name (or the `spawnclient` command). The pipes are the worker's stdin (the
//! listener's messages, one JSON object a line: `NewJobRequest` then maybe `CancelRequest`) and
//! stdout (the job's outcome as JSON, which the fake listener needs to report the job's output to
//! the emulator); the handles named on the command line are those, `0` and `1`. `SIGINT` or
//! `SIGTERM` (a stopped service signals the whole process group) cancel the job, as in the real
//! worker.

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::job::{self, CancelHandle, JobContext, JobOutcome, JobRequest};
use super::store::Root;
use super::{say_error, utc_now};

/// The executable name of the worker.
pub const NAME: &str = "Runner.Worker";

/// `100 + TaskResult` (`Succeeded` 0, `Failed` 2, `Canceled` 3; actions/runner
/// `TaskResultUtil.cs`).
pub mod code {
    pub const SUCCEEDED: i32 = 100;
    pub const FAILED: i32 = 102;
    pub const CANCELED: i32 = 103;
}

/// One message from the listener to the worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "messageType")]
enum Message {
    NewJobRequest(Box<NewJob>),
    CancelRequest,
}

/// The job and what the worker needs to run it.
#[derive(Debug, Serialize, Deserialize)]
struct NewJob {
    context: JobContext,
    #[serde(rename = "gitHubUrl")]
    github_url: String,
    request: JobRequest,
}

/// Whether this process was started as the worker.
pub fn is_worker(argv0: &str, args: &[String]) -> bool {
    Path::new(argv0).file_name().and_then(|n| n.to_str()) == Some(NAME)
        || args
            .first()
            .is_some_and(|a| a.eq_ignore_ascii_case("spawnclient"))
}

/// Appends a line to the worker's `_diag` log.
fn diag(log: Option<&Path>, level: &str, line: &str) {
    if let Some(path) = log {
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(file, "[{} {level} Worker] {line}", utc_now());
        }
    }
}

fn diag_log(root: &Root) -> Option<PathBuf> {
    let dir = root.path("_diag");
    std::fs::create_dir_all(&dir).ok()?;
    let format = time::macros::format_description!("[year][month][day]-[hour][minute][second]");
    let stamp = time::OffsetDateTime::now_utc().format(&format).ok()?;
    Some(dir.join(format!("Worker_{stamp}-utc.log")))
}

/// Entry point of `bin/Runner.Worker spawnclient <in> <out>`; returns the exit code.
pub fn main(args: &[String]) -> i32 {
    if !args
        .first()
        .is_some_and(|a| a.eq_ignore_ascii_case("spawnclient"))
        || args.len() != 3
    {
        say_error("Runner.Worker: expected `spawnclient <in> <out>`");
        return 1;
    }
    let log = Root::of_current_exe().ok().and_then(|root| diag_log(&root));
    diag(
        log.as_deref(),
        "INFO",
        &format!("Worker started, pid {}", std::process::id()),
    );
    let cancel = CancelHandle::default();
    // The listener's messages: the job first, then maybe a cancellation.
    let (first_tx, first_rx) = std::sync::mpsc::channel::<Message>();
    let reader_cancel = cancel.clone();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut first = Some(first_tx);
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Message>(&line) {
                Ok(Message::CancelRequest) => reader_cancel.cancel(),
                Ok(message) => {
                    if let Some(tx) = first.take() {
                        let _ = tx.send(message);
                    }
                }
                Err(_) => {}
            }
        }
    });
    // The real worker gives up after 30 s without a job message.
    let Ok(Message::NewJobRequest(job)) = first_rx.recv_timeout(std::time::Duration::from_secs(30))
    else {
        diag(log.as_deref(), "ERR ", "no job message received");
        return 1;
    };
    let NewJob {
        context,
        github_url,
        request,
    } = *job;
    diag(
        log.as_deref(),
        "INFO",
        &format!("Job message received: {}", request.job_display_name),
    );
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say_error(format!("cannot start the runtime: {e}"));
            return 1;
        }
    };
    let job_cancel = cancel.clone();
    let job_request = request.clone();
    let outcome = runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigint = signal(SignalKind::interrupt()).ok();
        let mut sigterm = signal(SignalKind::terminate()).ok();
        let job = tokio::task::spawn_blocking(move || {
            job::run_job(&context, &job_request, &github_url, &job_cancel)
        });
        tokio::pin!(job);
        async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        loop {
            tokio::select! {
                outcome = &mut job => break outcome,
                () = recv(&mut sigint) => cancel.cancel(),
                () = recv(&mut sigterm) => cancel.cancel(),
            }
        }
    });
    let outcome = outcome.unwrap_or_else(|e| JobOutcome {
        result: "failed".into(),
        exit_code: 1,
        output: format!("the job panicked: {e}"),
    });
    diag(
        log.as_deref(),
        "INFO",
        &format!(
            "Job {} completed with result: {}",
            request.job_display_name, outcome.result
        ),
    );
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, &outcome);
    let _ = out.flush();
    match outcome.result.as_str() {
        "succeeded" => code::SUCCEEDED,
        "cancelled" => code::CANCELED,
        _ => code::FAILED,
    }
}

/// The listener's side of a running worker: cancels its job.
#[derive(Debug, Clone, Default)]
pub struct WorkerCancel {
    inner: Arc<Mutex<CancelState>>,
}

#[derive(Debug, Default)]
struct CancelState {
    cancelled: bool,
    stdin: Option<ChildStdin>,
}

fn send(stdin: &mut ChildStdin, message: &Message) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stdin.write_all(&line)?;
    stdin.flush()
}

impl WorkerCancel {
    /// Sends the worker a `CancelRequest` (now, or as soon as it has its job).
    pub fn cancel(&self) {
        if let Ok(mut state) = self.inner.lock() {
            state.cancelled = true;
            if let Some(stdin) = state.stdin.as_mut() {
                let _ = send(stdin, &Message::CancelRequest);
            }
        }
    }

    fn attach(&self, mut stdin: ChildStdin) {
        if let Ok(mut state) = self.inner.lock() {
            if state.cancelled {
                let _ = send(&mut stdin, &Message::CancelRequest);
            }
            state.stdin = Some(stdin);
        }
    }

    fn detach(&self) {
        if let Ok(mut state) = self.inner.lock() {
            state.stdin = None;
        }
    }
}

fn failed(output: String) -> JobOutcome {
    JobOutcome {
        result: "failed".into(),
        exit_code: 1,
        output,
    }
}

/// Starts `<bin>/Runner.Worker spawnclient 0 1` with the job (`bin` beside the running
/// listener) and waits for its outcome (blocking; call from `spawn_blocking`).
pub fn run(
    bin: &Path,
    context: JobContext,
    request: JobRequest,
    github_url: String,
    cancel: &WorkerCancel,
) -> JobOutcome {
    let program = bin.join(NAME);
    let child: std::io::Result<Child> = Command::new(&program)
        .args(["spawnclient", "0", "1"])
        .current_dir(bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => return failed(format!("cannot start `{}`: {e}\n", program.display())),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let message = Message::NewJobRequest(Box::new(NewJob {
            context,
            github_url,
            request,
        }));
        if let Err(e) = send(&mut stdin, &message) {
            let _ = child.kill();
            let _ = child.wait();
            return failed(format!("cannot send the job to the worker: {e}\n"));
        }
        cancel.attach(stdin);
    }
    let mut bytes = Vec::new();
    if let Some(mut stdout) = child.stdout.take() {
        use std::io::Read as _;
        let _ = stdout.read_to_end(&mut bytes);
    }
    let status = child.wait();
    cancel.detach();
    match serde_json::from_slice::<JobOutcome>(&bytes) {
        Ok(outcome) => outcome,
        Err(_) => failed(format!("the worker ended without a result ({status:?})\n")),
    }
}
