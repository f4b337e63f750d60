//! The command line and `ACTIONS_RUNNER_INPUT_*` inputs, parsed by the real runner's rules
//! (actions-runner.md §1.2, §1.3, §1.6).
//!
//! - Words before the first `--x` token are commands; `/?` means `--help`.
//! - `--name value` only: `--name=value` is an unknown flag named `name=value`.
//! - A token starting with `-` (but not a `--x` name) is ignored, so is a second value.
//! - The first occurrence of an arg wins; `--x --y` makes `x` a flag.
//! - Names are case-insensitive.
//! - Inputs from the environment: every variable whose name starts with
//!   `ACTIONS_RUNNER_INPUT_` (any case) is read, trimmed, kept when non-empty, and removed from the
//!   process environment so that jobs never see it. The command line wins over the environment.
//!   Flags from the environment must parse as .NET booleans (`true`/`false`, any case); `1` is not
//!   true.

use std::collections::{BTreeMap, BTreeSet};

/// The environment prefix of runner inputs.
pub const INPUT_PREFIX: &str = "ACTIONS_RUNNER_INPUT_";

/// Args whose values are secrets (masked; never printed).
pub const SECRET_ARGS: &[&str] = &["pat", "token", "windowslogonpassword", "jitconfig"];

const COMMANDS: &[&str] = &["configure", "remove", "run", "warmup"];
const GENERIC_FLAGS: &[&str] = &["help", "version", "commit", "check"];

/// The parsed command line plus the environment inputs.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    commands: Vec<String>,
    /// Lower-cased flag names.
    flags: BTreeSet<String>,
    /// Lower-cased arg names to values (first occurrence).
    args: BTreeMap<String, String>,
    /// Lower-cased names to values from `ACTIONS_RUNNER_INPUT_*`.
    env_args: BTreeMap<String, String>,
    /// Flag names in their original spelling, for the unknown-input message.
    flag_spelling: BTreeMap<String, String>,
    arg_spelling: BTreeMap<String, String>,
}

impl Settings {
    /// Parses `args` (without the program name) by the real rules, with no environment inputs.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Settings {
        let mut settings = Settings::default();
        let mut has_args = false;
        let mut scope: Option<String> = None;
        for arg in args {
            let arg = arg.as_ref();
            has_args = has_args || arg.starts_with("--");
            if arg == "/?" {
                settings.add_flag("help");
            } else if !has_args {
                settings.commands.push(arg.trim().to_string());
            } else if arg.starts_with("--") && arg.len() > 2 {
                if let Some(previous) = scope.take() {
                    settings.add_flag(previous.trim());
                }
                scope = Some(arg[2..].to_string());
            } else if !arg.starts_with('-') {
                if let Some(name) = scope.as_mut() {
                    let trimmed = name.trim().to_string();
                    *name = trimmed.clone();
                    let key = trimmed.to_lowercase();
                    if !settings.args.contains_key(&key) {
                        settings.args.insert(key.clone(), arg.to_string());
                        settings.arg_spelling.insert(key, trimmed);
                        scope = None;
                    }
                }
            }
        }
        if let Some(last) = scope {
            settings.add_flag(&last);
        }
        settings
    }

    /// Reads (and removes from this process's environment) every `ACTIONS_RUNNER_INPUT_*`
    /// variable. Must run before any thread is started.
    pub fn take_env_inputs(&mut self) {
        let vars: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().unwrap_or_default())))
            .collect();
        let mut taken = Vec::new();
        for (key, value) in vars {
            if key.len() >= INPUT_PREFIX.len()
                && key.is_char_boundary(INPUT_PREFIX.len())
                && key[..INPUT_PREFIX.len()].eq_ignore_ascii_case(INPUT_PREFIX)
            {
                let name = key[INPUT_PREFIX.len()..].to_lowercase();
                let value = value.trim().to_string();
                if !value.is_empty() {
                    self.env_args.insert(name, value);
                }
                taken.push(key);
            }
        }
        for key in taken {
            // Changing the environment is only sound while no other thread reads it: the
            // listener calls this first thing in `main`, before its runtime exists.
            std::env::remove_var(key);
        }
    }

    /// Adds environment inputs given explicitly (tests).
    pub fn with_env_inputs<I, K, V>(mut self, vars: I) -> Settings
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        for (key, value) in vars {
            let key = key.as_ref();
            if key.len() >= INPUT_PREFIX.len()
                && key.is_char_boundary(INPUT_PREFIX.len())
                && key[..INPUT_PREFIX.len()].eq_ignore_ascii_case(INPUT_PREFIX)
            {
                let value = value.as_ref().trim();
                if !value.is_empty() {
                    self.env_args
                        .insert(key[INPUT_PREFIX.len()..].to_lowercase(), value.to_string());
                }
            }
        }
        self
    }

    fn add_flag(&mut self, name: &str) {
        let key = name.to_lowercase();
        self.flag_spelling
            .entry(key.clone())
            .or_insert_with(|| name.to_string());
        self.flags.insert(key);
    }

    /// The first command, lower-cased, if any.
    pub fn command(&self) -> Option<String> {
        self.commands.first().map(|c| c.to_lowercase())
    }

    /// Whether the first command is `name` (case-insensitive).
    pub fn is_command(&self, name: &str) -> bool {
        self.commands
            .first()
            .is_some_and(|c| c.eq_ignore_ascii_case(name))
    }

    /// A flag: on the command line, or `"true"` (any case) in the environment.
    pub fn flag(&self, name: &str) -> bool {
        let key = name.to_lowercase();
        if self.flags.contains(&key) {
            return true;
        }
        self.env_args
            .get(&key)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// An arg: the command line first, then the environment; empty values count as missing.
    pub fn arg(&self, name: &str) -> Option<&str> {
        let key = name.to_lowercase();
        self.args
            .get(&key)
            .or_else(|| self.env_args.get(&key))
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Inputs not valid for the command, in the order commands, flags, args (original
    /// spelling), as the real `CommandSettings.Validate` lists them.
    pub fn unknown_inputs(&self) -> Vec<String> {
        let command = self.command();
        let (flags, args): (&[&str], &[&str]) = match command.as_deref() {
            Some("configure") => (
                &[
                    "disableupdate",
                    "ephemeral",
                    "generateserviceconfig",
                    "replace",
                    "runasservice",
                    "unattended",
                    "no-default-labels",
                ],
                &[
                    "auth",
                    "labels",
                    "monitorsocketaddress",
                    "name",
                    "pat",
                    "runnergroup",
                    "token",
                    "url",
                    "username",
                    "windowslogonaccount",
                    "windowslogonpassword",
                    "work",
                ],
            ),
            Some("remove") => (&["local"], &["token", "pat"]),
            Some("run") | None => (&["once"], &["jitconfig", "startuptype"]),
            _ => (&[], &[]),
        };
        let mut unknown = Vec::new();
        for c in &self.commands {
            if !COMMANDS.iter().any(|k| k.eq_ignore_ascii_case(c)) {
                unknown.push(c.clone());
            }
        }
        // `check` takes `url` and `pat`.
        let check = self.flags.contains("check");
        for (key, spelled) in &self.flag_spelling {
            if !GENERIC_FLAGS.contains(&key.as_str()) && !flags.contains(&key.as_str()) {
                unknown.push(spelled.clone());
            }
        }
        for (key, spelled) in &self.arg_spelling {
            let check_arg = check && (key == "url" || key == "pat");
            if !args.contains(&key.as_str()) && !check_arg {
                unknown.push(spelled.clone());
            }
        }
        unknown
    }

    /// The warning the real listener prints for unknown inputs (execution continues).
    pub fn unknown_inputs_message(&self) -> Option<String> {
        let unknown = self.unknown_inputs();
        if unknown.is_empty() {
            return None;
        }
        let list = unknown.join(", ");
        let hint = "For usage refer to: .\\config.cmd --help or ./config.sh --help";
        Some(match self.command() {
            Some(command) => format!(
                "Unrecognized command-line input arguments for command {command}: '{list}'. {hint}"
            ),
            None => format!(
                "This command does not recognize the command-line input arguments: '{list}'. {hint}"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_form_only_and_equals_is_an_unknown_flag() {
        let s = Settings::parse(&[
            "configure",
            "--url",
            "http://x/o/r",
            "--name=r1",
            "--unattended",
        ]);
        assert_eq!(s.arg("url"), Some("http://x/o/r"));
        assert_eq!(s.arg("name"), None);
        assert!(s.flag("unattended"));
        assert!(s.flag("name=r1"));
        assert_eq!(
            s.unknown_inputs_message().as_deref(),
            Some(
                "Unrecognized command-line input arguments for command configure: 'name=r1'. \
                 For usage refer to: .\\config.cmd --help or ./config.sh --help"
            )
        );
    }

    #[test]
    fn first_occurrence_wins_and_dash_values_are_ignored() {
        let s = Settings::parse(&["configure", "--NAME", "a", "--name", "b", "--labels", "-x"]);
        assert_eq!(s.arg("name"), Some("a"));
        assert_eq!(s.arg("labels"), None);
        assert!(s.flag("labels"));
    }

    #[test]
    fn a_value_after_a_flag_turns_it_into_an_arg() {
        let s = Settings::parse(&["configure", "--replace", "true", "--unattended"]);
        assert!(!s.flag("replace"));
        assert_eq!(s.arg("replace"), Some("true"));
        assert!(s.flag("UNATTENDED"));
    }

    #[test]
    fn commands_are_case_insensitive_and_only_before_the_first_option() {
        let s = Settings::parse(&["Remove", "--local"]);
        assert!(s.is_command("remove"));
        assert!(s.flag("local"));
        assert!(s.unknown_inputs().is_empty());
        // A word after a flag is its value, so `--local` is no longer a flag.
        let s = Settings::parse(&["remove", "--local", "run"]);
        assert!(!s.flag("local"));
        assert_eq!(s.arg("local"), Some("run"));
        assert_eq!(s.unknown_inputs(), vec!["local".to_string()]);
    }

    #[test]
    fn environment_inputs_lose_to_the_command_line_and_parse_booleans_strictly() {
        let s = Settings::parse(&["configure", "--name", "cli"]).with_env_inputs([
            ("ACTIONS_RUNNER_INPUT_NAME", "env"),
            ("actions_runner_input_url", " http://h/o "),
            ("ACTIONS_RUNNER_INPUT_UNATTENDED", "TRUE"),
            ("ACTIONS_RUNNER_INPUT_REPLACE", "1"),
            ("ACTIONS_RUNNER_INPUT_NO-DEFAULT-LABELS", "true"),
            ("ACTIONS_RUNNER_INPUT_TOKEN", "   "),
        ]);
        assert_eq!(s.arg("name"), Some("cli"));
        assert_eq!(s.arg("url"), Some("http://h/o"));
        assert!(s.flag("unattended"));
        assert!(!s.flag("replace"));
        assert!(s.flag("no-default-labels"));
        assert_eq!(s.arg("token"), None);
    }

    #[test]
    fn unknown_inputs_do_not_stop_parsing() {
        let s = Settings::parse(&["run", "--once", "--bogus", "--startuptype", "service"]);
        assert!(s.flag("once"));
        assert_eq!(s.arg("startuptype"), Some("service"));
        assert_eq!(s.unknown_inputs(), vec!["bogus".to_string()]);
    }
}
