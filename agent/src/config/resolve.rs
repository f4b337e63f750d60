//! From the TOML as written ([`super::raw`]) to the resolved [`Config`]: defaults applied,
//! templates expanded, profiles merged, secret files checked, and every rule that spans fields
//! (one auth, unique names, known boards and profiles) run once, collecting every problem.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use url::Url;

use super::error::{ConfigError, Problems, Source};
use super::model::*;
use super::raw::*;
use super::rules::{self, Piece, Problem};
use super::secret;
use super::LoadOptions;

const AUTH_KEYS: &str = "`pat_file`, `app` or `registration_token_file`";

/// Collects problems while resolving.
struct Checker<'a> {
    options: &'a LoadOptions,
    problems: &'a mut Problems,
}

impl Checker<'_> {
    fn report(&mut self, source: &Source, span: Range<usize>, problem: Problem) {
        self.problems
            .push(source.diag(span, problem.message, Some(problem.hint)));
    }

    fn say(&mut self, source: &Source, span: Range<usize>, message: String, hint: String) {
        self.problems.push(source.diag(span, message, Some(hint)));
    }

    /// The value, or `None` after reporting its problem at its span.
    fn ok<T>(
        &mut self,
        source: &Source,
        span: Range<usize>,
        result: Result<T, Problem>,
    ) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(problem) => {
                self.report(source, span, problem);
                None
            }
        }
    }

    fn version(&mut self, source: &Source, version: Option<&Spanned<i64>>, required: bool) {
        match version {
            Some(version) if *version.get_ref() == 1 => {}
            Some(version) => self.say(
                source,
                version.span(),
                format!("unsupported configuration version `{}`", version.get_ref()),
                "this agent reads `version = 1`".to_owned(),
            ),
            None if required => self.problems.push(source.whole(
                "missing `version`",
                Some("add `version = 1` at the top of the file".to_owned()),
            )),
            None => {}
        }
    }
}

/// Read and parse a TOML file, or report why not.
fn parse<T: serde::de::DeserializeOwned>(
    path: &Path,
    problems: &mut Problems,
    missing_hint: &str,
) -> Option<(Source, T)> {
    problems.see_file(path);
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => {
            let message = if err.kind() == std::io::ErrorKind::NotFound {
                format!("`{}` does not exist", path.display())
            } else {
                format!("cannot read `{}`: {err}", path.display())
            };
            let source = Source::new(path, String::new());
            problems.push(source.whole(message, Some(missing_hint.to_owned())));
            return None;
        }
    };
    let source = Source::new(path, text);
    match toml::from_str::<T>(&source.text) {
        Ok(raw) => Some((source, raw)),
        Err(err) => {
            problems.push(source.toml_error(&err));
            None
        }
    }
}

/// `agent.toml` at `path`, resolved.
pub fn config(path: &Path, options: &LoadOptions) -> Result<Config, ConfigError> {
    let mut problems = Problems::default();
    let mut checker = Checker {
        options,
        problems: &mut problems,
    };
    let Some((source, raw)) = parse::<RawConfig>(
        path,
        checker.problems,
        "pass `--config PATH`, or start from the example in `/usr/share/doc/runner-agent/agent.toml.example`",
    ) else {
        return Err(problems.into_error());
    };
    let config_dir = path.parent().unwrap_or(Path::new("")).to_owned();
    checker.version(&source, raw.version.as_ref(), true);
    let agent = agent(&mut checker, &source, raw.agent, &config_dir);
    let github = github(&mut checker, &source, raw.github, &config_dir);
    let host = raw.host.map_or_else(Host::default, |host| Host {
        kvm: host.kvm,
        nested_virt: host.nested_virt.unwrap_or(false),
        qemu: host.qemu.unwrap_or_default(),
        binfmt: host.binfmt.unwrap_or_default(),
    });
    let container = container(&mut checker, &source, raw.container);
    let daemon = daemon(&mut checker, &source, raw.daemon);
    let boards = boards(
        &mut checker,
        &source,
        raw.boards.unwrap_or_default(),
        raw.board,
        &config_dir,
        &agent.profiles_dir,
    );
    let runners = runners(&mut checker, &source, raw.defaults, raw.runner, &boards);
    match github {
        Some(github) if problems.is_empty() => Ok(Config {
            path: path.to_owned(),
            agent,
            github,
            host,
            container,
            daemon,
            runners,
            boards,
        }),
        _ => Err(problems.into_error()),
    }
}

/// A board profile file, resolved on its own.
pub fn profile(path: &Path) -> Result<Profile, ConfigError> {
    let mut problems = Problems::default();
    let options = LoadOptions::default();
    let mut checker = Checker {
        options: &options,
        problems: &mut problems,
    };
    match load_profile(&mut checker, path) {
        Some(profile) if problems.is_empty() => Ok(profile),
        _ => Err(problems.into_error()),
    }
}

fn load_profile(checker: &mut Checker<'_>, path: &Path) -> Option<Profile> {
    let (source, raw) = parse::<RawProfileFile>(
        path,
        checker.problems,
        "board profiles are installed in the profiles directory (`[agent] profiles_dir`)",
    )?;
    checker.version(&source, raw.version.as_ref(), true);
    let raw = raw.profile.into_inner();
    let stem = path
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned());
    if stem.as_deref() != Some(raw.name.get_ref().as_str()) {
        checker.say(
            &source,
            raw.name.span(),
            format!(
                "profile `{}` is in a file named `{}`",
                raw.name.get_ref(),
                path.file_name()
                    .map(|name| name.to_string_lossy())
                    .unwrap_or_default()
            ),
            "a profile's `name` must match its file name (`<name>.toml`)".to_owned(),
        );
    }
    let labels = labels(checker, &source, raw.labels.unwrap_or_default());
    let power = raw.power.and_then(|power| {
        let method = match power.get_ref().as_str() {
            "modbus-rtu" => Ok(PowerMethod::ModbusRtu),
            "command" => Ok(PowerMethod::Command),
            "none" => Ok(PowerMethod::None),
            other => Err(Problem {
                message: format!("unknown power method `{other}`"),
                hint: "use `modbus-rtu`, `command` or `none`".to_owned(),
            }),
        };
        checker.ok(&source, power.span(), method)
    });
    let env = env(checker, &source, raw.env.unwrap_or_default());
    Some(Profile {
        name: raw.name.into_inner(),
        description: raw.description,
        arch: raw.arch.map(Spanned::into_inner),
        labels,
        baud: raw.baud,
        boot_prompt: raw.boot_prompt,
        power,
        env,
    })
}

fn daemon(checker: &mut Checker<'_>, source: &Source, raw: Option<RawDaemon>) -> Daemon {
    let metrics_file = raw.and_then(|raw| raw.metrics_file).map(|value| {
        let path = PathBuf::from(value.get_ref());
        if !path.is_absolute() {
            checker.say(
                source,
                value.span(),
                "`metrics_file` must be an absolute path".to_owned(),
                "for node_exporter's textfile collector, e.g. `/var/lib/node_exporter/textfile/runner_agent.prom`".to_owned(),
            );
        }
        path
    });
    Daemon { metrics_file }
}

fn agent(
    checker: &mut Checker<'_>,
    source: &Source,
    raw: Option<RawAgent>,
    config_dir: &Path,
) -> Agent {
    let raw = raw.unwrap_or(RawAgent {
        cache_dir: None,
        state_dir: None,
        profiles_dir: None,
    });
    let mut absolute = |value: Option<Spanned<String>>, key: &str, default: &str| match value {
        None => PathBuf::from(default),
        Some(value) => {
            let path = PathBuf::from(value.get_ref());
            if !path.is_absolute() {
                checker.say(
                    source,
                    value.span(),
                    format!("`{key}` must be an absolute path"),
                    format!("the default is `{default}`"),
                );
            }
            path
        }
    };
    let cache_dir = absolute(raw.cache_dir, "cache_dir", DEFAULT_CACHE_DIR);
    let state_dir = absolute(raw.state_dir, "state_dir", DEFAULT_STATE_DIR);
    let profiles_dir = raw.profiles_dir.map_or_else(
        || PathBuf::from(DEFAULT_PROFILES_DIR),
        |dir| config_dir.join(dir.get_ref()),
    );
    Agent {
        cache_dir,
        state_dir,
        profiles_dir,
    }
}

fn container(
    checker: &mut Checker<'_>,
    source: &Source,
    raw: Option<RawContainer>,
) -> crate::config::Container {
    let mut settings = crate::config::Container::default();
    let Some(raw) = raw else {
        return settings;
    };
    if let Some(engine) = raw.engine {
        settings.engine = checker.ok(source, engine.span(), rules::engine(engine.get_ref()));
    }
    if let Some(image) = raw.image {
        if let Some(image) = checker.ok(source, image.span(), rules::image(image.get_ref())) {
            settings.image = image;
        }
    }
    if let Some(network) = raw.network {
        if let Some(network) = checker.ok(source, network.span(), rules::network(network.get_ref()))
        {
            settings.network = network;
        }
    }
    if let Some(restart) = raw.restart {
        if let Some(restart) = checker.ok(source, restart.span(), rules::restart(restart.get_ref()))
        {
            settings.restart = restart;
        }
    }
    if let Some(device) = raw.kvm_device {
        let path = PathBuf::from(device.get_ref());
        if path.is_absolute() {
            settings.kvm_device = path;
        } else {
            checker.say(
                source,
                device.span(),
                "`kvm_device` must be an absolute path".to_owned(),
                "the default is `/dev/kvm`".to_owned(),
            );
        }
    }
    settings
}

fn github(
    checker: &mut Checker<'_>,
    source: &Source,
    raw: Option<Spanned<RawGitHub>>,
    config_dir: &Path,
) -> Option<GitHub> {
    let Some(raw) = raw else {
        checker.problems.push(source.whole(
            "missing `[github]` table",
            Some(format!("add `[github]` with `url` and one of {AUTH_KEYS}")),
        ));
        return None;
    };
    let table_span = raw.span();
    let raw = raw.into_inner();
    let parsed = checker.ok(source, raw.url.span(), rules::github_url(raw.url.get_ref()));
    let api_url = match &raw.api_url {
        Some(api) => checker.ok(source, api.span(), rules::web_url(api.get_ref())),
        None => parsed
            .as_ref()
            .and_then(|(url, _)| checker.ok(source, raw.url.span(), rules::default_api_url(url))),
    };

    let mut secret_file = |value: &Spanned<String>| -> Option<SecretFile> {
        if value.get_ref().is_empty() {
            checker.say(
                source,
                value.span(),
                "empty secret file name".to_owned(),
                "name the file that holds the secret".to_owned(),
            );
            return None;
        }
        let configured = PathBuf::from(value.get_ref());
        let credentials = checker.options.credentials_dir.as_deref();
        let resolved = secret::resolve(&configured, config_dir, credentials);
        let file = SecretFile {
            configured,
            resolved,
        };
        if checker.options.skip_secret_checks {
            return Some(file);
        }
        let checked = secret::check(&file, credentials);
        checker.ok(source, value.span(), checked).map(|()| file)
    };
    let mut auths: Vec<(&str, Range<usize>, Option<Auth>)> = Vec::new();
    if let Some(pat) = &raw.pat_file {
        let auth = secret_file(pat).map(|file| Auth::Pat { file });
        auths.push(("pat_file", pat.span(), auth));
    }
    if let Some(app) = &raw.app {
        let inner = app.get_ref();
        let auth = secret_file(&inner.private_key_file).map(|file| Auth::App {
            app_id: inner.app_id,
            installation_id: inner.installation_id,
            private_key_file: file,
        });
        auths.push(("app", app.span(), auth));
    }
    if let Some(token) = &raw.registration_token_file {
        let auth = secret_file(token).map(|file| Auth::RegistrationToken { file });
        auths.push(("registration_token_file", token.span(), auth));
    }
    if auths.is_empty() {
        checker.say(
            source,
            table_span,
            "`[github]` has no credentials".to_owned(),
            format!("set exactly one of {AUTH_KEYS}"),
        );
        return None;
    }
    if auths.len() > 1 {
        let first = auths[0].0;
        for (key, span, _) in &auths[1..] {
            checker.say(
                source,
                span.clone(),
                format!("`[github]` sets both `{first}` and `{key}`"),
                format!("keep exactly one of {AUTH_KEYS}"),
            );
        }
        return None;
    }
    let auth = auths.pop().and_then(|(_, _, auth)| auth)?;
    let (url, scope) = parsed?;
    Some(GitHub {
        url,
        scope,
        api_url: api_url?,
        auth,
    })
}

fn labels(checker: &mut Checker<'_>, source: &Source, raw: Vec<Spanned<String>>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for label in raw {
        if let Some(label) = checker.ok(source, label.span(), rules::label(label.get_ref())) {
            if !out.iter().any(|known| known.eq_ignore_ascii_case(&label)) {
                out.push(label);
            }
        }
    }
    out
}

fn env(
    checker: &mut Checker<'_>,
    source: &Source,
    raw: BTreeMap<Spanned<String>, String>,
) -> BTreeMap<String, String> {
    raw.into_iter()
        .filter_map(|(key, value)| {
            checker
                .ok(source, key.span(), rules::env_name(key.get_ref()))
                .map(|key| (key, value))
        })
        .collect()
}

/// Where a name was first defined, for "defined twice" hints.
fn place(source: &Source, span: Range<usize>) -> String {
    match source.diag(span, "", None).diagnostic.location {
        Some(location) => format!(
            "{}:{}:{}",
            source.path.display(),
            location.line,
            location.column
        ),
        None => source.path.display().to_string(),
    }
}

fn boards(
    checker: &mut Checker<'_>,
    source: &Source,
    patterns: Vec<Spanned<String>>,
    inline: Vec<Spanned<RawBoard>>,
    config_dir: &Path,
    profiles_dir: &Path,
) -> Vec<Board> {
    let mut files: Vec<(Source, Vec<Spanned<RawBoard>>)> = Vec::new();
    for pattern in patterns {
        let full = config_dir.join(pattern.get_ref());
        let text = full.to_string_lossy().into_owned();
        let paths = match glob::glob(&text) {
            Ok(paths) => paths,
            Err(err) => {
                checker.say(
                    source,
                    pattern.span(),
                    format!(
                        "`{}` is not a valid file pattern: {}",
                        pattern.get_ref(),
                        err.msg
                    ),
                    "use a path such as `/etc/runner-agent/boards/*.toml`".to_owned(),
                );
                continue;
            }
        };
        let mut matched: Vec<PathBuf> = paths.filter_map(Result::ok).collect();
        matched.sort();
        let has_wildcard = pattern.get_ref().contains(['*', '?', '[']);
        if matched.is_empty() && !has_wildcard {
            checker.say(
                source,
                pattern.span(),
                format!("board file `{}` does not exist", full.display()),
                "create it, or remove it from `boards`".to_owned(),
            );
        }
        for path in matched {
            if let Some((file_source, raw)) = parse::<RawBoardFile>(
                &path,
                checker.problems,
                "board files hold `[[board]]` tables",
            ) {
                checker.version(&file_source, raw.version.as_ref(), false);
                files.push((file_source, raw.board));
            }
        }
    }

    let mut profiles: HashMap<String, Option<Profile>> = HashMap::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    let (sources, lists): (Vec<Source>, Vec<Vec<Spanned<RawBoard>>>) = files.into_iter().unzip();
    let all = std::iter::once((source, inline)).chain(sources.iter().zip(lists));
    for (board_source, raws) in all {
        for raw in raws {
            let raw = raw.into_inner();
            let name_span = raw.name.span();
            let name = raw.name.get_ref().clone();
            if let Some(label) = checker.ok(board_source, name_span.clone(), rules::label(&name)) {
                match seen.get(&label) {
                    Some(first) => checker.say(
                        board_source,
                        name_span.clone(),
                        format!("board `{label}` is defined twice"),
                        format!(
                            "the first definition is at {first}; give each board a unique `name`"
                        ),
                    ),
                    None => {
                        seen.insert(label, place(board_source, name_span.clone()));
                    }
                }
            }
            let profile = raw.profile.as_ref().and_then(|wanted| {
                let wanted_name = wanted.get_ref();
                if rules::runner_name(wanted_name, false).is_err() {
                    checker.say(
                        board_source,
                        wanted.span(),
                        format!("`{wanted_name}` is not a profile name"),
                        "a profile is named by its file name without `.toml`".to_owned(),
                    );
                    return None;
                }
                if !profiles.contains_key(wanted_name) {
                    let path = profiles_dir.join(format!("{wanted_name}.toml"));
                    let loaded = if path.exists() {
                        load_profile(checker, &path)
                    } else {
                        checker.say(
                            board_source,
                            wanted.span(),
                            format!("unknown board profile `{wanted_name}`"),
                            known_profiles(profiles_dir),
                        );
                        None
                    };
                    profiles.insert(wanted_name.clone(), loaded);
                }
                profiles.get(wanted_name).cloned().flatten()
            });
            out.push(board(checker, board_source, raw, profile));
        }
    }
    out
}

fn known_profiles(dir: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| {
                    let path = entry.path();
                    (path.extension()? == "toml")
                        .then(|| {
                            path.file_stem()
                                .map(|stem| stem.to_string_lossy().into_owned())
                        })
                        .flatten()
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    if names.is_empty() {
        format!("no profiles are installed in `{}`", dir.display())
    } else {
        format!(
            "profiles in `{}`: {}",
            dir.display(),
            names
                .iter()
                .map(|name| format!("`{name}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

fn board(
    checker: &mut Checker<'_>,
    source: &Source,
    raw: RawBoard,
    profile: Option<Profile>,
) -> Board {
    let profile = profile.unwrap_or(Profile {
        name: String::new(),
        description: None,
        arch: None,
        labels: Vec::new(),
        baud: None,
        boot_prompt: None,
        power: None,
        env: BTreeMap::new(),
    });
    let mut labels_out = profile.labels.clone();
    for label in labels(checker, source, raw.labels.unwrap_or_default()) {
        if !labels_out
            .iter()
            .any(|known| known.eq_ignore_ascii_case(&label))
        {
            labels_out.push(label);
        }
    }
    let mut env_out = profile.env.clone();
    env_out.extend(env(checker, source, raw.env.unwrap_or_default()));
    let has_console = raw.console.is_some();
    let console = raw.console.and_then(|console| {
        let span = console.span();
        let console = console.into_inner();
        let identity = serial_identity(
            checker,
            source,
            span.clone(),
            console.path,
            console.udev,
            ("path", "udev"),
        );
        let baud = console.baud.map(Spanned::into_inner).or(profile.baud);
        if baud.is_none() {
            checker.say(
                source,
                span,
                format!(
                    "the console of board `{}` has no `baud`",
                    raw.name.get_ref()
                ),
                "set `baud` under `[board.console]`, or use a `profile` that sets it".to_owned(),
            );
        }
        Some(Console {
            identity: identity?,
            baud: baud?,
        })
    });
    let has_power = raw.power.is_some();
    let power = raw.power.and_then(|power| {
        let span = power.span();
        power_of(checker, source, span, power.into_inner())
    });
    let boot_prompt = raw.boot_prompt.or(profile.boot_prompt);
    let jobs = board_jobs(
        checker,
        source,
        raw.name.get_ref(),
        BoardJobsRaw {
            reset_before_job: raw.reset_before_job,
            probe_after_reset: raw.probe_after_reset,
            probe_timeout_secs: raw.probe_timeout_secs,
            power_off_after_job: raw.power_off_after_job,
        },
        has_power,
        has_console,
        boot_prompt.is_some(),
    );
    Board {
        name: raw.name.into_inner(),
        profile: raw.profile.map(Spanned::into_inner),
        arch: raw.arch.map(Spanned::into_inner).or(profile.arch),
        labels: labels_out,
        console,
        power,
        boot_prompt,
        tftp_dir: raw.tftp_dir.map(PathBuf::from),
        net_iface: raw.net_iface,
        dtb: raw.dtb.map(PathBuf::from),
        env: env_out,
        jobs,
    }
}

/// The per-job keys of a `[[board]]`, as written.
struct BoardJobsRaw {
    reset_before_job: Option<Spanned<bool>>,
    probe_after_reset: Option<Spanned<bool>>,
    probe_timeout_secs: Option<Spanned<i64>>,
    power_off_after_job: Option<Spanned<bool>>,
}

/// `reset_before_job`, `probe_after_reset`, `probe_timeout_secs`, `power_off_after_job`: each
/// needs what it drives (power, a console and a prompt to probe, a reset to probe after).
fn board_jobs(
    checker: &mut Checker<'_>,
    source: &Source,
    board: &str,
    raw: BoardJobsRaw,
    has_power: bool,
    has_console: bool,
    has_prompt: bool,
) -> BoardJobs {
    let on = |value: &Option<Spanned<bool>>| value.as_ref().is_some_and(|v| *v.get_ref());
    let mut jobs = BoardJobs {
        reset_before_job: on(&raw.reset_before_job),
        probe_after_reset: on(&raw.probe_after_reset),
        power_off_after_job: on(&raw.power_off_after_job),
        ..BoardJobs::default()
    };
    for (key, value) in [
        ("reset_before_job", &raw.reset_before_job),
        ("power_off_after_job", &raw.power_off_after_job),
    ] {
        if let Some(value) = value.as_ref().filter(|v| *v.get_ref()) {
            if !has_power {
                checker.say(
                    source,
                    value.span(),
                    format!("board `{board}` has `{key} = true` but no power control"),
                    "add a `[board.power]` table (`kind = \"modbus-rtu\"` or `\"command\"`), or remove it".to_owned(),
                );
            }
        }
    }
    if let Some(probe) = raw.probe_after_reset.as_ref().filter(|v| *v.get_ref()) {
        if !jobs.reset_before_job {
            checker.say(
                source,
                probe.span(),
                format!("board `{board}` has `probe_after_reset = true` without `reset_before_job = true`"),
                "the probe watches the boot that the reset starts: set `reset_before_job = true` as well".to_owned(),
            );
        }
        if !has_console || !has_prompt {
            let (missing, add) = match (has_console, has_prompt) {
                (false, false) => (
                    "console and no `boot_prompt`",
                    "a `[board.console]` table and `boot_prompt = \"…\"`",
                ),
                (false, true) => ("console", "a `[board.console]` table"),
                _ => (
                    "`boot_prompt`",
                    "`boot_prompt = \"…\"` (or use a `profile` that sets it)",
                ),
            };
            checker.say(
                source,
                probe.span(),
                format!("board `{board}` has `probe_after_reset = true` but no {missing}"),
                format!("the probe waits for the boot prompt on the console: add {add}"),
            );
        }
    }
    if let Some(timeout) = &raw.probe_timeout_secs {
        match u32::try_from(*timeout.get_ref()) {
            Ok(secs @ 1..=3600) => jobs.probe_timeout_secs = secs,
            _ => checker.say(
                source,
                timeout.span(),
                format!(
                    "`probe_timeout_secs = {}` is out of range",
                    timeout.get_ref()
                ),
                format!(
                    "`probe_timeout_secs` is from 1 to 3600 (default {DEFAULT_PROBE_TIMEOUT_SECS})"
                ),
            ),
        }
        if !jobs.probe_after_reset {
            checker.say(
                source,
                timeout.span(),
                format!("board `{board}` sets `probe_timeout_secs` but does not probe"),
                "set `probe_after_reset = true` (with `reset_before_job = true`), or remove `probe_timeout_secs`".to_owned(),
            );
        }
    }
    // A board whose routine was refused keeps none of it.
    if jobs.probe_after_reset && !jobs.reset_before_job {
        jobs.probe_after_reset = false;
    }
    jobs
}

fn serial_identity(
    checker: &mut Checker<'_>,
    source: &Source,
    table: Range<usize>,
    path: Option<Spanned<String>>,
    udev: Option<Spanned<RawUdev>>,
    (path_key, udev_key): (&str, &str),
) -> Option<SerialIdentity> {
    match (path, udev) {
        (Some(_), Some(udev)) => {
            checker.say(
                source,
                udev.span(),
                format!("both `{path_key}` and `{udev_key}` are set"),
                format!("keep exactly one of `{path_key}` and `{udev_key}`"),
            );
            None
        }
        (None, None) => {
            checker.say(
                source,
                table,
                format!("no serial device: neither `{path_key}` nor `{udev_key}` is set"),
                format!(
                    "set `{path_key} = \"/dev/serial/by-id/…\"` or `{udev_key} = {{ ID_SERIAL_SHORT = \"…\" }}`"
                ),
            );
            None
        }
        (Some(path), None) => {
            let text = path.get_ref();
            let unstable = ["/dev/ttyUSB", "/dev/ttyACM"].iter().any(|prefix| {
                text.strip_prefix(prefix)
                    .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit()))
            });
            if unstable {
                checker.say(
                    source,
                    path.span(),
                    format!("`{text}` is renumbered when devices are plugged in another order"),
                    "use the stable link under `/dev/serial/by-id/` (`ls -l /dev/serial/by-id/`) or udev properties".to_owned(),
                );
                return None;
            }
            if !text.starts_with('/') {
                checker.say(
                    source,
                    path.span(),
                    format!("`{text}` is not an absolute device path"),
                    "use the stable link under `/dev/serial/by-id/`".to_owned(),
                );
                return None;
            }
            Some(SerialIdentity::Path(PathBuf::from(text)))
        }
        (None, Some(udev)) => {
            let span = udev.span();
            let udev = udev.into_inner();
            if udev.ID_SERIAL_SHORT.is_none()
                && udev.ID_PATH.is_none()
                && udev.ID_USB_INTERFACE_NUM.is_none()
            {
                checker.say(
                    source,
                    span,
                    format!("`{udev_key}` names no property"),
                    "set `ID_SERIAL_SHORT`, `ID_PATH` or `ID_USB_INTERFACE_NUM` (see `udevadm info /dev/ttyUSB0`)".to_owned(),
                );
                return None;
            }
            Some(SerialIdentity::Udev {
                id_serial_short: udev.ID_SERIAL_SHORT,
                id_path: udev.ID_PATH,
                usb_interface_num: udev.ID_USB_INTERFACE_NUM,
            })
        }
    }
}

fn power_of(
    checker: &mut Checker<'_>,
    source: &Source,
    table: Range<usize>,
    raw: RawPower,
) -> Option<Power> {
    let modbus_keys: [(&str, Option<Range<usize>>); 8] = [
        ("device", raw.device.as_ref().map(Spanned::span)),
        ("device_udev", raw.device_udev.as_ref().map(Spanned::span)),
        ("baud", raw.baud.as_ref().map(Spanned::span)),
        ("parity", raw.parity.as_ref().map(Spanned::span)),
        ("slave", raw.slave.as_ref().map(Spanned::span)),
        ("coil", raw.coil.as_ref().map(Spanned::span)),
        ("coil_base", raw.coil_base.as_ref().map(Spanned::span)),
        (
            "cycle_off_secs",
            raw.cycle_off_secs.as_ref().map(Spanned::span),
        ),
    ];
    let command_keys: [(&str, Option<Range<usize>>); 3] = [
        ("on", raw.on.as_ref().map(Spanned::span)),
        ("off", raw.off.as_ref().map(Spanned::span)),
        ("cycle", raw.cycle.as_ref().map(Spanned::span)),
    ];
    let kind = raw.kind.get_ref().clone();
    let mut foreign = |keys: &[(&str, Option<Range<usize>>)]| {
        let mut any = false;
        for (key, span) in keys {
            if let Some(span) = span {
                checker.say(
                    source,
                    span.clone(),
                    format!("`{key}` does not apply to power `kind = \"{kind}\"`"),
                    "remove it, or change `kind`".to_owned(),
                );
                any = true;
            }
        }
        any
    };
    match kind.as_str() {
        "modbus-rtu" => {
            let foreign = foreign(&command_keys);
            let device = serial_identity(
                checker,
                source,
                table.clone(),
                raw.device,
                raw.device_udev,
                ("device", "device_udev"),
            );
            let mut require = |key: &str, present: bool| {
                if !present {
                    checker.say(
                        source,
                        table.clone(),
                        format!("power `kind = \"modbus-rtu\"` needs `{key}`"),
                        format!("add `{key} = …` under `[board.power]`"),
                    );
                }
                present
            };
            let complete = require("baud", raw.baud.is_some())
                & require("slave", raw.slave.is_some())
                & require("coil", raw.coil.is_some())
                & require("coil_base", raw.coil_base.is_some());
            let parity = match raw.parity {
                None => Some("none".to_owned()),
                Some(parity) if matches!(parity.get_ref().as_str(), "none" | "even" | "odd") => {
                    Some(parity.into_inner())
                }
                Some(parity) => {
                    checker.say(
                        source,
                        parity.span(),
                        format!("unknown parity `{}`", parity.get_ref()),
                        "use `none`, `even` or `odd`".to_owned(),
                    );
                    None
                }
            };
            let mut ranged =
                |value: &Option<Spanned<i64>>, key: &str, range: std::ops::RangeInclusive<i64>| {
                    let value = value.as_ref()?;
                    if range.contains(value.get_ref()) {
                        Some(*value.get_ref())
                    } else {
                        checker.say(
                            source,
                            value.span(),
                            format!("`{key} = {}` is out of range", value.get_ref()),
                            format!("`{key}` is from {} to {}", range.start(), range.end()),
                        );
                        None
                    }
                };
            let slave = ranged(&raw.slave, "slave", 1..=247);
            let coil = ranged(&raw.coil, "coil", 0..=65535);
            let coil_base = ranged(&raw.coil_base, "coil_base", 0..=1);
            if let (Some(coil), Some(base)) = (coil, coil_base) {
                if coil < base {
                    checker.say(
                        source,
                        raw.coil.as_ref().map_or(table.clone(), Spanned::span),
                        format!("`coil = {coil}` is below `coil_base = {base}`"),
                        "with `coil_base = 1` the first coil is 1".to_owned(),
                    );
                    return None;
                }
            }
            if foreign || !complete {
                return None;
            }
            Some(Power::ModbusRtu {
                device: device?,
                baud: raw.baud?.into_inner(),
                parity: parity?,
                slave: u8::try_from(slave?).ok()?,
                coil: u16::try_from(coil?).ok()?,
                coil_base: u8::try_from(coil_base?).ok()?,
                cycle_off_secs: raw.cycle_off_secs.map_or(2, Spanned::into_inner),
            })
        }
        "command" => {
            let foreign = foreign(&modbus_keys);
            let mut missing = false;
            for (key, present) in [("on", raw.on.is_some()), ("off", raw.off.is_some())] {
                if !present {
                    checker.say(
                        source,
                        table.clone(),
                        format!("power `kind = \"command\"` needs `{key}`"),
                        format!("add `{key} = \"…\"`, a shell command, under `[board.power]`"),
                    );
                    missing = true;
                }
            }
            if foreign || missing {
                return None;
            }
            Some(Power::Command {
                on: raw.on?.into_inner(),
                off: raw.off?.into_inner(),
                cycle: raw.cycle.map(Spanned::into_inner),
            })
        }
        other => {
            checker.say(
                source,
                raw.kind.span(),
                format!("unknown power kind `{other}`"),
                "use `modbus-rtu` or `command`".to_owned(),
            );
            None
        }
    }
}

/// `[defaults]` or a runner's overrides, each value checked.
#[derive(Debug, Default, Clone)]
struct Settings {
    user: Option<String>,
    root: Option<PathBuf>,
    work_dir: Option<PathBuf>,
    labels: Vec<String>,
    group: Option<String>,
    ephemeral: Option<Ephemeral>,
    disable_update: Option<bool>,
    version: Option<VersionReq>,
    download_mirror: Option<Url>,
    service: Option<ServiceKind>,
    sha256: BTreeMap<String, String>,
}

fn settings(checker: &mut Checker<'_>, source: &Source, raw: RawSettings) -> Settings {
    let mut text = |value: Option<Spanned<String>>, key: &str| -> Option<String> {
        let value = value?;
        if value.get_ref().is_empty() {
            checker.say(
                source,
                value.span(),
                format!("`{key}` is empty"),
                format!("remove `{key}` to use the default"),
            );
            return None;
        }
        Some(value.into_inner())
    };
    let work_dir = text(raw.work_dir, "work_dir").map(PathBuf::from);
    let group = text(raw.group, "group");
    let user = raw
        .user
        .and_then(|user| checker.ok(source, user.span(), rules::user(user.get_ref())));
    let root = raw.root.and_then(|root| {
        let path = PathBuf::from(root.get_ref());
        if path.is_absolute() {
            Some(path)
        } else {
            checker.say(
                source,
                root.span(),
                "`root` must be an absolute path".to_owned(),
                format!("the default is `{DEFAULT_RUNNER_ROOT}`"),
            );
            None
        }
    });
    let labels = labels(checker, source, raw.labels.unwrap_or_default());
    let ephemeral = raw
        .ephemeral
        .and_then(|value| checker.ok(source, value.span(), rules::ephemeral(value.get_ref())));
    let version = raw
        .version
        .and_then(|value| checker.ok(source, value.span(), rules::version(value.get_ref())));
    let download_mirror = raw
        .download_mirror
        .and_then(|value| checker.ok(source, value.span(), rules::web_url(value.get_ref())));
    let service = raw
        .service
        .and_then(|value| checker.ok(source, value.span(), rules::service(value.get_ref())));
    let sha256 = raw
        .sha256
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(asset, digest)| {
            checker
                .ok(source, digest.span(), rules::sha256(digest.get_ref()))
                .map(|digest| (asset, digest))
        })
        .collect();
    Settings {
        user,
        root,
        work_dir,
        labels,
        group,
        ephemeral,
        disable_update: raw.disable_update,
        version,
        download_mirror,
        service,
        sha256,
    }
}

fn runners(
    checker: &mut Checker<'_>,
    source: &Source,
    defaults: Option<Spanned<RawSettings>>,
    raws: Vec<Spanned<RawRunner>>,
    boards: &[Board],
) -> Vec<Runner> {
    let defaults = settings(
        checker,
        source,
        defaults.map(Spanned::into_inner).unwrap_or_default(),
    );
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    for raw in raws {
        let header = raw.span();
        let mut raw = raw.into_inner();
        let own = settings(checker, source, raw.settings());
        let board = raw.board.as_ref().and_then(|board| {
            let name = board.get_ref();
            if boards.iter().any(|known| &known.name == name) {
                Some(name.clone())
            } else {
                let hint = if boards.is_empty() {
                    "no boards are defined: add a `[[board]]` table or a file to `boards`"
                        .to_owned()
                } else {
                    format!(
                        "the boards defined are {}",
                        boards
                            .iter()
                            .map(|board| format!("`{}`", board.name))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                checker.say(
                    source,
                    board.span(),
                    format!("unknown board `{name}`"),
                    hint,
                );
                None
            }
        });
        let Some((names, name_span)) = runner_names(checker, source, header, &raw) else {
            continue;
        };
        for name in names {
            match seen.get(&name) {
                Some(first) => {
                    checker.say(
                        source,
                        name_span.clone(),
                        format!("runner name `{name}` is used twice"),
                        format!("the first runner named `{name}` is at {first}; runner names must be unique on a host"),
                    );
                    break;
                }
                None => {
                    seen.insert(name.clone(), place(source, name_span.clone()));
                }
            }
            let root = own
                .root
                .clone()
                .or_else(|| defaults.root.clone())
                .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNNER_ROOT));
            let mut labels = defaults.labels.clone();
            for label in &own.labels {
                if !labels.iter().any(|known| known.eq_ignore_ascii_case(label)) {
                    labels.push(label.clone());
                }
            }
            let mut sha256 = defaults.sha256.clone();
            sha256.extend(own.sha256.clone());
            out.push(Runner {
                dir: root.join(&name),
                name,
                user: own
                    .user
                    .clone()
                    .or_else(|| defaults.user.clone())
                    .unwrap_or_else(|| DEFAULT_RUNNER_USER.to_owned()),
                work_dir: own
                    .work_dir
                    .clone()
                    .or_else(|| defaults.work_dir.clone())
                    .unwrap_or_else(|| PathBuf::from("_work")),
                labels,
                group: own.group.clone().or_else(|| defaults.group.clone()),
                ephemeral: own.ephemeral.or(defaults.ephemeral).unwrap_or_default(),
                disable_update: own
                    .disable_update
                    .or(defaults.disable_update)
                    .unwrap_or(false),
                version: own
                    .version
                    .clone()
                    .or_else(|| defaults.version.clone())
                    .unwrap_or(VersionReq::Latest),
                download_mirror: own
                    .download_mirror
                    .clone()
                    .or_else(|| defaults.download_mirror.clone()),
                sha256,
                board: board.clone(),
                service: own.service.or(defaults.service).unwrap_or_default(),
            });
        }
    }
    out
}

/// The names a `[[runner]]` gives, and the span to blame for them.
fn runner_names(
    checker: &mut Checker<'_>,
    source: &Source,
    header: Range<usize>,
    raw: &RawRunner,
) -> Option<(Vec<String>, Range<usize>)> {
    let count = match &raw.count {
        None => 1,
        Some(count) if (1..=rules::MAX_COUNT).contains(count.get_ref()) => {
            u32::try_from(*count.get_ref()).unwrap_or(1)
        }
        Some(count) => {
            checker.say(
                source,
                count.span(),
                format!("`count = {}` is out of range", count.get_ref()),
                format!(
                    "`count` is how many runners this template makes, from 1 to {}; remove the `[[runner]]` to have none",
                    rules::MAX_COUNT
                ),
            );
            return None;
        }
    };
    match (&raw.name, &raw.name_template) {
        (None, None) => {
            checker.say(
                source,
                header,
                "runner has neither `name` nor `name_template`".to_owned(),
                "add `name = \"…\"`, or `name_template = \"{hostname}-{index}\"` with `count`"
                    .to_owned(),
            );
            None
        }
        (Some(_), Some(template)) => {
            checker.say(
                source,
                template.span(),
                "runner has both `name` and `name_template`".to_owned(),
                "keep `name` for one runner, or `name_template` with `count` for several"
                    .to_owned(),
            );
            None
        }
        (Some(name), None) => {
            if let Some(count) = &raw.count {
                checker.say(
                    source,
                    count.span(),
                    "`count` needs `name_template`".to_owned(),
                    "replace `name` with a `name_template` containing `{index}`".to_owned(),
                );
                return None;
            }
            let name_ok = checker.ok(
                source,
                name.span(),
                rules::runner_name(name.get_ref(), false),
            )?;
            Some((vec![name_ok], name.span()))
        }
        (None, Some(template)) => {
            let span = template.span();
            let pieces = checker.ok(source, span.clone(), rules::template(template.get_ref()))?;
            let board = raw.board.as_ref().map(|board| board.get_ref().as_str());
            if pieces.contains(&Piece::Board) && board.is_none() {
                checker.say(
                    source,
                    span,
                    "`{board}` in `name_template`, but the runner has no `board`".to_owned(),
                    "set `board = \"…\"` on this runner, or drop `{board}`".to_owned(),
                );
                return None;
            }
            if count > 1 && !pieces.contains(&Piece::Index) {
                checker.say(
                    source,
                    span,
                    format!("`count = {count}` but `name_template` has no `{{index}}`"),
                    "add `{index}` so that every runner gets its own name".to_owned(),
                );
                return None;
            }
            let hostname = match (&checker.options.hostname, pieces.contains(&Piece::Hostname)) {
                (Some(hostname), _) => hostname.clone(),
                (None, false) => String::new(),
                (None, true) => {
                    checker.say(
                        source,
                        span,
                        "cannot tell this host's name for `{hostname}`".to_owned(),
                        "set `RUNNER_AGENT_HOSTNAME`, or write the name out".to_owned(),
                    );
                    return None;
                }
            };
            let mut names = Vec::new();
            for index in 1..=count {
                let name = rules::expand(&pieces, &hostname, index, board);
                names.push(checker.ok(source, span.clone(), rules::runner_name(&name, true))?);
            }
            Some((names, span))
        }
    }
}
