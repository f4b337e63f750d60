//! `agentctl doctor`: can a job on this host actually use the hardware it was promised?
//!
//! Every check returns a [`Finding`]: an [`Outcome`] (pass, warn, fail, skip), a one-line detail
//! and, unless it passed, a `hint:` with the command or setting that fixes it. Checks are grouped
//! in families, one file each: [`host`], [`user`], [`kvm`], [`qemu`], [`serial`], [`runner`],
//! [`container`], [`github`]. Access checks run as the runner user through [`as_user`], because root opens
//! everything.
//!
//! Every check takes its inputs (device paths, user, `/proc`, lock directories, …) as parameters,
//! so tests point them at real objects made for the test; [`Environment::system`] holds the real
//! ones.
//!
//! # JSON schema (`agentctl doctor --json`)
//!
//! Stable; fields are only ever added. `schema` changes if a field changes meaning.
//!
//! ```json
//! {
//!   "schema": "runner-agent.doctor/1",
//!   "version": "0.1.0",
//!   "status": "fail",
//!   "summary": {"pass": 7, "warn": 2, "fail": 1, "skip": 3},
//!   "findings": [
//!     {"family": "kvm", "id": "kvm.open", "subject": "ra-runner", "outcome": "fail",
//!      "detail": "…", "hint": "…"}
//!   ]
//! }
//! ```
//!
//! - `status`: the worst outcome (`pass` < `skip` < `warn` < `fail`; `skip` alone counts as pass).
//! - `family`: `config`, `host`, `user`, `kvm`, `qemu`, `serial`, `runner`, `container`, `github`.
//! - `id`: the check, `<family>.<name>`; stable, meant for scripts and dashboards.
//! - `subject`: what was checked (a user, a board, a runner, a path), or `null`.
//! - `outcome`: `pass`, `warn`, `fail` or `skip`.
//! - `detail`: one line, for humans.
//! - `hint`: the fix, or `null` (always `null` for `pass`).

pub mod as_user;
pub mod container;
pub mod github;
pub mod host;
pub mod kvm;
pub mod qemu;
pub mod runner;
pub mod serial;
pub mod user;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::exit::Status;

/// The JSON schema identifier (see the module documentation).
pub const JSON_SCHEMA: &str = "runner-agent.doctor/1";

/// Everything that can stop doctor itself from running (as opposed to a check failing).
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("cannot start a probe process")]
    Fork(#[source] nix::Error),
    #[error("cannot create a pipe to a probe process")]
    Pipe(#[source] nix::Error),
    #[error("cannot read the answer of probe process {pid}")]
    ProbeRead {
        pid: i32,
        #[source]
        source: nix::Error,
    },
    #[error("cannot look up user `{user}`")]
    UserLookup {
        user: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot set up the HTTP client")]
    HttpClient(#[source] reqwest::Error),
    #[error("cannot run the checks")]
    Runtime(#[source] std::io::Error),
    #[error("device path `{}` contains a NUL byte", path.display())]
    NulInPath { path: PathBuf },
}

/// A family of checks; `--only FAMILY` selects one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Config,
    Host,
    User,
    Kvm,
    Qemu,
    Serial,
    Runner,
    Container,
    Github,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Config => "config",
            Family::Host => "host",
            Family::User => "user",
            Family::Kvm => "kvm",
            Family::Qemu => "qemu",
            Family::Serial => "serial",
            Family::Runner => "runner",
            Family::Container => "container",
            Family::Github => "github",
        }
    }
}

/// What a check concluded. Ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Skip,
    Warn,
    Fail,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Skip => "skip",
            Outcome::Warn => "warn",
            Outcome::Fail => "fail",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub family: Family,
    /// `<family>.<check>`, stable.
    pub id: String,
    /// What was checked: a user, board, runner or path.
    pub subject: Option<String>,
    pub outcome: Outcome,
    /// One line, for humans.
    pub detail: String,
    /// The command or setting that fixes it.
    pub hint: Option<String>,
}

impl Finding {
    fn new(family: Family, id: &str, outcome: Outcome, detail: impl Into<String>) -> Self {
        Finding {
            family,
            id: id.to_owned(),
            subject: None,
            outcome,
            detail: detail.into(),
            hint: None,
        }
    }

    pub fn pass(family: Family, id: &str, detail: impl Into<String>) -> Self {
        Finding::new(family, id, Outcome::Pass, detail)
    }

    pub fn skip(family: Family, id: &str, detail: impl Into<String>) -> Self {
        Finding::new(family, id, Outcome::Skip, detail)
    }

    pub fn warn(
        family: Family,
        id: &str,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Finding::new(family, id, Outcome::Warn, detail).hint(hint)
    }

    pub fn fail(
        family: Family,
        id: &str,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Finding::new(family, id, Outcome::Fail, detail).hint(hint)
    }

    /// Set the subject (what was checked).
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Set the hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Counts per outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub pass: usize,
    pub warn: usize,
    pub fail: usize,
    pub skip: usize,
}

/// Every finding of one run, in check order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub findings: Vec<Finding>,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    schema: &'static str,
    version: &'static str,
    status: Outcome,
    summary: Summary,
    findings: &'a [Finding],
}

impl Report {
    pub fn summary(&self) -> Summary {
        let mut summary = Summary::default();
        for finding in &self.findings {
            match finding.outcome {
                Outcome::Pass => summary.pass += 1,
                Outcome::Warn => summary.warn += 1,
                Outcome::Fail => summary.fail += 1,
                Outcome::Skip => summary.skip += 1,
            }
        }
        summary
    }

    /// The worst outcome; a report of skips only is a pass.
    pub fn status(&self) -> Outcome {
        match self.findings.iter().map(|f| f.outcome).max() {
            Some(Outcome::Skip) | None => Outcome::Pass,
            Some(worst) => worst,
        }
    }

    /// 0 when nothing failed, 1 when something failed (or warned, with `strict`).
    pub fn exit_status(&self, strict: bool) -> Status {
        match self.status() {
            Outcome::Fail => Status::Failure,
            Outcome::Warn if strict => Status::Failure,
            _ => Status::Success,
        }
    }

    /// The report as the documented JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let report = JsonReport {
            schema: JSON_SCHEMA,
            version: env!("CARGO_PKG_VERSION"),
            status: self.status(),
            summary: self.summary(),
            findings: &self.findings,
        };
        serde_json::to_value(report).unwrap_or(serde_json::Value::Null)
    }

    /// The human table, grouped by family, with ANSI colour when `colour` is set.
    pub fn render_table(&self, colour: bool) -> String {
        let mut families: Vec<Family> = Vec::new();
        for finding in &self.findings {
            if !families.contains(&finding.family) {
                families.push(finding.family);
            }
        }
        let width = self
            .findings
            .iter()
            .map(|f| label_of(f).chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for family in families {
            let _ = writeln!(out, "{}", paint(family.name(), BOLD, colour));
            for finding in self.findings.iter().filter(|f| f.family == family) {
                let outcome = finding.outcome.label();
                let painted = paint(outcome, outcome_colour(finding.outcome), colour);
                let label = label_of(finding);
                let _ = writeln!(out, "  {painted}  {label:<width$}  {}", finding.detail);
                if let Some(hint) = &finding.hint {
                    let pad = " ".repeat(width + 10);
                    let _ = writeln!(out, "{pad}{} {hint}", paint("hint:", DIM, colour));
                }
            }
        }
        let summary = self.summary();
        let _ = writeln!(
            out,
            "\npass {}, warn {}, fail {}, skip {}",
            summary.pass, summary.warn, summary.fail, summary.skip
        );
        out
    }
}

fn label_of(finding: &Finding) -> String {
    match &finding.subject {
        Some(subject) => format!("{} [{subject}]", finding.id),
        None => finding.id.clone(),
    }
}

const BOLD: &str = "1";
const DIM: &str = "2";

fn outcome_colour(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Pass => "32",
        Outcome::Skip => "2",
        Outcome::Warn => "33",
        Outcome::Fail => "1;31",
    }
}

fn paint(text: &str, code: &str, colour: bool) -> String {
    if colour {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// What the user asked for on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Skip every check that needs the network.
    pub offline: bool,
    /// Also run a guest to `HLT` through `KVM_RUN` and start QEMU with `-accel kvm -cpu host`.
    pub deep: bool,
    /// Run only this family.
    pub only: Option<Family>,
    /// Runner users to check instead of the configured ones (`--user`).
    pub users: Vec<String>,
}

impl Options {
    pub fn wants(&self, family: Family) -> bool {
        self.only.is_none_or(|only| only == family)
    }
}

/// The paths of the system objects the checks look at. Tests point them at their own objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    pub kvm_device: PathBuf,
    pub proc_root: PathBuf,
    pub sys_root: PathBuf,
    pub dev_root: PathBuf,
    /// udev's database (`/run/udev/data`).
    pub udev_data: PathBuf,
    /// Where UUCP `LCK..` files live.
    pub lock_dirs: Vec<PathBuf>,
    pub binfmt_dir: PathBuf,
    /// Where `svc.sh` installs units and we put drop-ins.
    pub unit_dir: PathBuf,
    /// `/run/systemd/system`: exists when systemd is the init system.
    pub systemd_marker: PathBuf,
    /// `/etc/os-release`.
    pub os_release: PathBuf,
    /// How long the network checks may take together.
    pub network_budget: Duration,
}

impl Environment {
    /// The real system.
    pub fn system() -> Self {
        Environment {
            kvm_device: PathBuf::from("/dev/kvm"),
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
            dev_root: PathBuf::from("/dev"),
            udev_data: PathBuf::from("/run/udev/data"),
            lock_dirs: vec![PathBuf::from("/run/lock"), PathBuf::from("/var/lock")],
            binfmt_dir: PathBuf::from("/proc/sys/fs/binfmt_misc"),
            unit_dir: PathBuf::from("/etc/systemd/system"),
            systemd_marker: PathBuf::from("/run/systemd/system"),
            os_release: PathBuf::from("/etc/os-release"),
            network_budget: Duration::from_millis(2000),
        }
    }

    pub fn has_systemd(&self) -> bool {
        self.systemd_marker.is_dir()
    }
}

/// The configuration as doctor got it: loaded, missing or broken.
#[derive(Debug, Clone)]
pub enum ConfigState {
    Loaded(Box<Config>),
    /// Not there (or not readable); doctor still runs the host families with defaults.
    Missing {
        path: PathBuf,
        reason: String,
    },
    /// There, but wrong; the loader's message.
    Invalid {
        path: PathBuf,
        message: String,
    },
}

impl ConfigState {
    pub fn config(&self) -> Option<&Config> {
        match self {
            ConfigState::Loaded(config) => Some(config),
            _ => None,
        }
    }
}

/// Run every wanted family and collect the findings.
pub async fn run(
    config: &ConfigState,
    options: &Options,
    env: &Environment,
) -> Result<Report, DoctorError> {
    let mut findings = Vec::new();
    let cfg = config.config();
    if options.only.is_none() || options.only == Some(Family::Config) {
        findings.push(config_finding(config));
    }
    let users = runner_users(cfg, options);
    let identities = user::resolve_all(&users)?;

    // The network family starts first so its bounded wait overlaps the local checks.
    let github_task = if options.wants(Family::Github) || options.wants(Family::Runner) {
        let config = cfg.cloned();
        let offline = options.offline;
        let budget = env.network_budget;
        let github = options.wants(Family::Github);
        let update_windows = options.wants(Family::Runner);
        Some(tokio::spawn(async move {
            github::check(github::Inputs {
                cfg: config.as_ref(),
                offline,
                budget,
                github,
                update_windows,
            })
            .await
        }))
    } else {
        None
    };

    let local = {
        let options = options.clone();
        let env = env.clone();
        let cfg = cfg.cloned();
        let identities = identities.clone();
        tokio::task::spawn_blocking(move || {
            local_families(cfg.as_ref(), &options, &env, &identities)
        })
    };
    let local = match local.await {
        Ok(result) => result?,
        Err(join) => {
            return Err(DoctorError::Runtime(std::io::Error::other(
                join.to_string(),
            )));
        }
    };
    findings.extend(local);

    if let Some(task) = github_task {
        match task.await {
            Ok(result) => findings.extend(
                result?
                    .into_iter()
                    .filter(|finding| options.wants(finding.family)),
            ),
            Err(join) => {
                return Err(DoctorError::Runtime(std::io::Error::other(
                    join.to_string(),
                )));
            }
        }
    }
    Ok(Report { findings })
}

fn local_families(
    cfg: Option<&Config>,
    options: &Options,
    env: &Environment,
    identities: &[user::Resolved],
) -> Result<Vec<Finding>, DoctorError> {
    let mut findings = Vec::new();
    if options.wants(Family::Host) {
        findings.extend(host::check(cfg, env));
    }
    if options.wants(Family::User) {
        findings.extend(user::check(cfg, env, identities));
    }
    if options.wants(Family::Kvm) {
        findings.extend(kvm::check(cfg, env, identities, options.deep)?);
    }
    if options.wants(Family::Qemu) {
        findings.extend(qemu::check(cfg, env, identities, options.deep)?);
    }
    if options.wants(Family::Serial) {
        findings.extend(serial::check(cfg, env, identities)?);
    }
    if options.wants(Family::Runner) {
        findings.extend(runner::check(cfg, env));
    }
    if options.wants(Family::Container) {
        findings.extend(container::check(
            cfg,
            options.only == Some(Family::Container),
        ));
    }
    Ok(findings)
}

fn config_finding(config: &ConfigState) -> Finding {
    match config {
        ConfigState::Loaded(cfg) => Finding::pass(
            Family::Config,
            "config.load",
            format!(
                "`{}`: {} runner(s), {} board(s)",
                cfg.path.display(),
                cfg.runners.len(),
                cfg.boards.len()
            ),
        ),
        ConfigState::Missing { path, reason } => Finding::fail(
            Family::Config,
            "config.load",
            format!(
                "no configuration at `{}` ({reason}); checking host, user and kvm with defaults",
                path.display()
            ),
            format!(
                "write `{}` (start from the shipped `agent.toml.example`) or pass `--config PATH`",
                path.display()
            ),
        ),
        ConfigState::Invalid { path, message } => Finding::fail(
            Family::Config,
            "config.load",
            format!("`{}` is invalid: {}", path.display(), first_line(message)),
            format!(
                "run `agentctl config check --config {}` for the full report",
                path.display()
            ),
        ),
    }
}

/// The users whose access is checked: `--user`, else every configured runner's user, else the
/// default runner user (or, when doctor does not run as root, its own user).
fn runner_users(cfg: Option<&Config>, options: &Options) -> Vec<String> {
    if !options.users.is_empty() {
        return dedup(options.users.clone());
    }
    match cfg {
        Some(cfg) if !cfg.runners.is_empty() => {
            dedup(cfg.runners.iter().map(|r| r.user.clone()).collect())
        }
        // Without runners: as root, the default runner user; as anyone else, that user itself
        // (a runner user checking its own access).
        _ => {
            let euid = nix::unistd::geteuid();
            match nix::unistd::User::from_uid(euid) {
                Ok(Some(me)) if !euid.is_root() => vec![me.name],
                _ => vec![crate::config::DEFAULT_RUNNER_USER.to_owned()],
            }
        }
    }
}

fn dedup(mut names: Vec<String>) -> Vec<String> {
    let mut seen = Vec::new();
    names.retain(|name| {
        if seen.contains(name) {
            false
        } else {
            seen.push(name.clone());
            true
        }
    });
    names
}

fn first_line(text: &str) -> &str {
    let line = text.lines().next().unwrap_or("");
    line.strip_prefix("error: ").unwrap_or(line)
}

/// `path` in backticks for messages.
pub(crate) fn ticked(path: &Path) -> String {
    format!("`{}`", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mixed() -> Report {
        Report {
            findings: vec![
                Finding::pass(
                    Family::Host,
                    "host.os",
                    "debian 12 on x86_64 (runner asset `linux-x64`)",
                ),
                Finding::warn(
                    Family::Host,
                    "host.clock",
                    "the kernel clock is not synchronised (adjtimex: STA_UNSYNC)",
                    "systemctl enable --now systemd-timesyncd",
                ),
                Finding::pass(
                    Family::Kvm,
                    "kvm.node",
                    "`/dev/kvm` is a char device 10:232, root:kvm 0660",
                ),
                Finding::fail(
                    Family::Kvm,
                    "kvm.open",
                    "`ra-runner` cannot open `/dev/kvm` read-write: permission denied",
                    "usermod -aG kvm ra-runner, then restart the runner services",
                )
                .subject("ra-runner"),
                Finding::skip(
                    Family::Github,
                    "github.api",
                    "offline: network checks skipped",
                ),
            ],
        }
    }

    #[test]
    fn table_groups_by_family_and_puts_hints_under_their_finding() {
        insta::assert_snapshot!(mixed().render_table(false));
    }

    #[test]
    fn json_follows_the_documented_schema() {
        let mut json = mixed().to_json();
        json["version"] = serde_json::Value::from("VERSION");
        insta::assert_json_snapshot!(json);
    }

    #[test]
    fn colour_only_when_asked() {
        let report = mixed();
        assert!(!report.render_table(false).contains('\x1b'));
        assert!(report.render_table(true).contains("\x1b[1;31mfail\x1b[0m"));
    }

    #[test]
    fn exit_mapping() {
        let report = mixed();
        assert_eq!(report.exit_status(false), Status::Failure);
        let warn_only = Report {
            findings: report
                .findings
                .iter()
                .filter(|f| f.outcome != Outcome::Fail)
                .cloned()
                .collect(),
        };
        assert_eq!(warn_only.exit_status(false), Status::Success);
        assert_eq!(warn_only.exit_status(true), Status::Failure);
        let skips = Report {
            findings: vec![Finding::skip(
                Family::Qemu,
                "qemu.binary",
                "no qemu configured",
            )],
        };
        assert_eq!(skips.status(), Outcome::Pass);
        assert_eq!(skips.exit_status(true), Status::Success);
    }
}
