//! `bin/Runner.Listener` of the fake runner release: the real listener's interface (commands,
//! flags, `ACTIONS_RUNNER_INPUT_*`, state files, messages, exit codes) over the emulator's
//! runner-side protocol (tests/PROTOCOL.md). See [`crate::fake_runner`] for the knobs.

pub mod args;
pub mod client;
pub mod configure;
pub mod job;
pub mod run;
pub mod store;
pub mod update;
pub mod worker;

use std::path::PathBuf;

use args::Settings;
use store::Root;

/// Runner.Listener return codes (actions-runner.md §4.1).
pub mod code {
    pub const SUCCESS: i32 = 0;
    pub const TERMINATED_ERROR: i32 = 1;
    pub const RETRYABLE_ERROR: i32 = 2;
    pub const RUNNER_UPDATING: i32 = 3;
    pub const RUN_ONCE_RUNNER_UPDATING: i32 = 4;
    pub const SESSION_CONFLICT: i32 = 5;
    pub const RUNNER_VERSION_DEPRECATED: i32 = 7;
}

/// Errors of the fake listener. Their `Display` is what the real listener prints.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("{message}")]
    Config { message: String },
    #[error("{message}")]
    Service { message: String },
    #[error("cannot access `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read `{}`: {source}", path.display())]
    StateFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot serialise json: {0}")]
    Json(#[source] serde_json::Error),
}

impl ListenerError {
    pub fn config(message: impl Into<String>) -> ListenerError {
        ListenerError::Config {
            message: message.into(),
        }
    }
}

/// `DateTime.UtcNow:u`: `2026-11-23 05:59:01Z`.
pub fn utc_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    now.format(&format).unwrap_or_default()
}

/// A short, unique id (GUID-shaped).
pub fn guid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The machine name the real runner defaults `--name` to (`myrunner` when unknown).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "myrunner".to_string())
}

/// Prints a line to stdout and flushes (output may be a pipe read line by line).
pub fn say(line: impl AsRef<str>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line.as_ref());
    let _ = out.flush();
}

/// Prints an error line to stderr.
pub fn say_error(line: impl AsRef<str>) {
    use std::io::Write as _;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{}", line.as_ref());
    let _ = err.flush();
}

/// The usage text of `--help`.
pub fn usage(root: &Root) -> String {
    let name = hostname();
    let arch = configure::arch_label(root);
    format!(
        "\
Commands:
 ./config.sh         Configures the runner
 ./config.sh remove  Unconfigures the runner
 ./run.sh            Runs the runner interactively. Does not require any options.

Options:
 --help     Prints the help for each command
 --version  Prints the runner version
 --commit   Prints the runner commit
 --check    Check the runner's network connectivity with GitHub server

Config Options:
 --unattended           Disable interactive prompts for missing arguments. Defaults will be used for missing options
 --url string           Repository to add the runner to. Required if unattended
 --token string         Registration token. Required if unattended
 --name string          Name of the runner to configure (default {name})
 --runnergroup string   Name of the runner group to add this runner to (defaults to the default runner group)
 --labels string        Custom labels that will be added to the runner. This option is mandatory if --no-default-labels is used.
 --no-default-labels    Disables adding the default labels: 'self-hosted,Linux,{arch}'
 --local                Removes the runner config files from your local machine. Used as an option to the remove command
 --work string          Relative runner work directory (default _work)
 --replace              Replace any existing runner with the same name (default false)
 --pat                  GitHub personal access token with repo scope. Used for checking network connectivity when executing `./run.sh --check`
 --disableupdate        Disable self-hosted runner automatic update to the latest released version`
 --ephemeral            Configure the runner to only take one job and then let the service un-configure the runner after the job finishes (default false)

Examples:
 Check GitHub server network connectivity:
  ./run.sh --check --url <url> --pat <pat>
 Configure a runner non-interactively:
  ./config.sh --unattended --url <url> --token <token>
 Configure a runner non-interactively, replacing any existing runner with the same name:
  ./config.sh --unattended --url <url> --token <token> --replace [--name <name>]
 Configure a runner non-interactively with three extra labels:
  ./config.sh --unattended --url <url> --token <token> --labels L1,L2,L3
"
    )
}

/// Entry point of `bin/Runner.Listener`: parses the command line and the environment inputs,
/// loads `.env`, runs the command and returns the process exit code.
pub fn main() -> i32 {
    let argv0 = std::env::args().next().unwrap_or_default();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // `bin/Runner.Worker` is this same program (a hard link), started once per job.
    if worker::is_worker(&argv0, &argv) {
        return worker::main(&argv);
    }
    let mut settings = Settings::parse(&argv);
    // Before any thread exists: read and wipe ACTIONS_RUNNER_INPUT_*.
    settings.take_env_inputs();
    let root = match Root::of_current_exe() {
        Ok(root) => root,
        Err(e) => {
            say_error(e.to_string());
            return code::TERMINATED_ERROR;
        }
    };
    // The real listener loads `.env` into its own environment at start-up.
    for (key, value) in root.dot_env() {
        std::env::set_var(key, value);
    }
    if let Some(message) = settings.unknown_inputs_message() {
        say_error(message);
    }
    if settings.flag("help") {
        say(usage(&root));
        return code::SUCCESS;
    }
    if settings.flag("version") {
        say(root.version());
        return code::SUCCESS;
    }
    if settings.flag("commit") {
        use sha2::Digest as _;
        say(hex::encode(
            &sha2::Sha256::digest(root.version().as_bytes())[..20],
        ));
        return code::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say_error(format!("cannot start the runtime: {e}"));
            return code::TERMINATED_ERROR;
        }
    };
    if settings.flag("check") {
        if let Err(e) = runtime.block_on(configure::check(&root, &settings)) {
            say_error(e.to_string());
        }
        return code::SUCCESS;
    }
    if settings.is_command("configure") {
        return match runtime.block_on(configure::configure(&root, &settings)) {
            Ok(()) => code::SUCCESS,
            Err(e) => {
                say_error(e.to_string());
                code::TERMINATED_ERROR
            }
        };
    }
    if settings.is_command("remove") {
        if settings.flag("local") {
            root.delete_local_config();
            return code::SUCCESS;
        }
        return match runtime.block_on(configure::remove(&root, &settings)) {
            Ok(()) => code::SUCCESS,
            Err(e) => {
                say_error(e.to_string());
                code::TERMINATED_ERROR
            }
        };
    }
    if settings.is_command("warmup") {
        return code::SUCCESS;
    }
    if !settings.is_command("run") {
        // No or an unknown command: the real listener prints usage and exits with success.
        say(usage(&root));
        return code::SUCCESS;
    }
    runtime.block_on(run::run(&root, &settings))
}
