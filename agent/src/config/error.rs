//! Configuration errors and their report: every problem names its file, line and column, shows
//! the offending line with a caret under the span, and says what to do on a `hint:` line.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use unicode_width::UnicodeWidthChar;

/// Everything that can go wrong with the configuration.
///
/// `Display` is the full human report (for [`ConfigError::Invalid`], every problem with its
/// location, caret and hint).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration (or a file it refers to) is invalid: one or more problems.
    #[error("{0}")]
    Invalid(Report),
    /// A secret file could not be opened or read when its value was needed.
    #[error("cannot read secret file `{}`", path.display())]
    SecretUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A secret file grants access to group or others.
    #[error(
        "secret file `{}` is accessible by group or others (mode {mode:04o})\n\nhint: chmod 600 {}",
        path.display(),
        path.display()
    )]
    SecretPermissions { path: PathBuf, mode: u32 },
    /// A secret file holds nothing but whitespace.
    #[error("secret file `{}` is empty", path.display())]
    SecretEmpty { path: PathBuf },
}

impl ConfigError {
    /// The individual problems, for machine-readable output.
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        match self {
            ConfigError::Invalid(report) => report.diagnostics.clone(),
            ConfigError::SecretUnreadable { path, source } => vec![Diagnostic::file_only(
                path,
                format!("cannot read secret file `{}`: {source}", path.display()),
                None,
            )],
            ConfigError::SecretPermissions { path, mode } => vec![Diagnostic::file_only(
                path,
                format!(
                    "secret file `{}` is accessible by group or others (mode {mode:04o})",
                    path.display()
                ),
                Some(format!("chmod 600 {}", path.display())),
            )],
            ConfigError::SecretEmpty { path } => vec![Diagnostic::file_only(
                path,
                format!("secret file `{}` is empty", path.display()),
                None,
            )],
        }
    }
}

/// One or more problems, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, diagnostic) in self.diagnostics.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{diagnostic}")?;
        }
        if self.diagnostics.len() > 1 {
            write!(f, "\n{} problems found", self.diagnostics.len())?;
        }
        Ok(())
    }
}

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in, as the user named it (or as found relative to the config).
    pub file: PathBuf,
    /// Where in the file; `None` when the problem is the file as a whole.
    pub location: Option<Location>,
    /// What is wrong, lowercase, no trailing period.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

/// A position in a file, with the line's text for the snippet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// The whole line (without its newline).
    pub text: String,
    /// Byte range within `text` to underline.
    pub underline: Range<usize>,
}

impl Diagnostic {
    /// A problem with a whole file (it is missing, say).
    pub fn file_only(file: &Path, message: String, hint: Option<String>) -> Self {
        Diagnostic {
            file: file.to_owned(),
            location: None,
            message,
            hint,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.message)?;
        match &self.location {
            None => writeln!(f, " --> {}", self.file.display())?,
            Some(location) => {
                let number = location.line.to_string();
                let gutter = " ".repeat(number.len());
                writeln!(
                    f,
                    "{gutter}--> {}:{}:{}",
                    self.file.display(),
                    location.line,
                    location.column
                )?;
                writeln!(f, "{gutter} |")?;
                let (text, start, width) = display_line(location);
                writeln!(f, "{number} | {}", text.trim_end())?;
                writeln!(f, "{gutter} | {}{}", " ".repeat(start), "^".repeat(width))?;
            }
        }
        if let Some(hint) = &self.hint {
            writeln!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

/// The line with tabs expanded, and the display column and width of the underline.
fn display_line(location: &Location) -> (String, usize, usize) {
    let mut text = String::new();
    let mut column = 0;
    let mut start = None;
    let mut end = None;
    for (offset, ch) in location.text.char_indices() {
        if offset >= location.underline.start && start.is_none() {
            start = Some(column);
        }
        if offset >= location.underline.end && end.is_none() {
            end = Some(column);
        }
        if ch == '\t' {
            text.push_str("    ");
            column += 4;
        } else {
            text.push(ch);
            column += ch.width().unwrap_or(0);
        }
    }
    let start = start.unwrap_or(column);
    let end = end.unwrap_or(column);
    (text, start, end.saturating_sub(start).max(1))
}

/// A file's text, for turning byte spans into diagnostics.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    pub fn new(path: &Path, text: String) -> Self {
        Source {
            path: path.to_owned(),
            text,
        }
    }

    /// A problem at `span` (byte offsets into the file).
    pub fn diag(
        &self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Spot {
        let start = span.start.min(self.text.len());
        let line_start = self.text[..start].rfind('\n').map_or(0, |at| at + 1);
        let line_end = self.text[start..]
            .find('\n')
            .map_or(self.text.len(), |at| start + at);
        let line = self.text[..start].matches('\n').count() + 1;
        let column = self.text[line_start..start].chars().count() + 1;
        let end = span.end.clamp(start, line_end);
        let text = self.text[line_start..line_end]
            .trim_end_matches('\r')
            .to_owned();
        let underline = (start - line_start)..(end - line_start).min(text.len());
        Spot {
            order: start,
            diagnostic: Diagnostic {
                file: self.path.clone(),
                location: Some(Location {
                    line,
                    column,
                    text,
                    underline,
                }),
                message: message.into(),
                hint,
            },
        }
    }

    /// A problem with the file as a whole.
    pub fn whole(&self, message: impl Into<String>, hint: Option<String>) -> Spot {
        Spot {
            order: 0,
            diagnostic: Diagnostic::file_only(&self.path, message.into(), hint),
        }
    }

    /// Translate a TOML or serde error into a problem with a helpful message and hint.
    pub fn toml_error(&self, err: &toml::de::Error) -> Spot {
        let (message, hint) = explain(err.message());
        match err.span() {
            Some(span) => self.diag(span, message, hint),
            None => self.whole(message, hint),
        }
    }
}

/// A diagnostic with its position in its file, so that a report can be put in file order.
#[derive(Debug, Clone)]
pub(crate) struct Spot {
    pub order: usize,
    pub diagnostic: Diagnostic,
}

/// Collects problems across files and puts them in order.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    /// (file index, spot)
    spots: Vec<(usize, Spot)>,
    files: Vec<PathBuf>,
}

impl Problems {
    pub fn push(&mut self, spot: Spot) {
        let file = &spot.diagnostic.file;
        let index = match self.files.iter().position(|known| known == file) {
            Some(index) => index,
            None => {
                self.files.push(file.clone());
                self.files.len() - 1
            }
        };
        self.spots.push((index, spot));
    }

    /// Make sure `path`'s problems are listed before those of files seen later.
    pub fn see_file(&mut self, path: &Path) {
        if !self.files.iter().any(|known| known == path) {
            self.files.push(path.to_owned());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.spots.is_empty()
    }

    pub fn into_error(mut self) -> ConfigError {
        self.spots
            .sort_by_key(|(file, spot)| (*file, spot.order, spot.diagnostic.message.clone()));
        self.spots
            .dedup_by(|a, b| a.0 == b.0 && a.1.diagnostic == b.1.diagnostic);
        ConfigError::Invalid(Report {
            diagnostics: self
                .spots
                .into_iter()
                .map(|(_, spot)| spot.diagnostic)
                .collect(),
        })
    }
}

/// Turn serde's and toml's wording into ours: `(message, hint)`.
fn explain(message: &str) -> (String, Option<String>) {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (key, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let allowed: Vec<&str> = expected
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|word| !word.is_empty())
            .collect();
        let message = format!("unknown key `{key}`");
        let listed = allowed
            .iter()
            .map(|word| format!("`{word}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let hint = match closest(key, &allowed) {
            Some(near) => format!("did you mean `{near}`? the keys allowed here are {listed}"),
            None if allowed.is_empty() => "remove this key".to_owned(),
            None => format!("the keys allowed here are {listed}"),
        };
        return (message, Some(hint));
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let key = rest.split('`').next().unwrap_or(rest);
        return (
            format!("missing key `{key}`"),
            Some(format!("add `{key} = …` to this table")),
        );
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        let (found, expected) = rest.rsplit_once(", expected ").unwrap_or((rest, "?"));
        let expected = type_name(expected);
        let found_kind = found.split_whitespace().next().unwrap_or(found);
        let hint = match (found_kind, expected.as_str()) {
            ("string", "an integer") => "write the number without quotes".to_owned(),
            ("string", "a boolean") => "write `true` or `false` without quotes".to_owned(),
            ("integer" | "boolean" | "floating", "a string") => {
                "put the value in double quotes".to_owned()
            }
            (_, "an array") => "write a list in brackets: `[\"a\", \"b\"]`".to_owned(),
            _ => format!("the value here must be {expected}"),
        };
        return (
            format!("wrong type: expected {expected}, found {found}"),
            Some(hint),
        );
    }
    if let Some(rest) = message.strip_prefix("invalid value: ") {
        let (found, expected) = rest.rsplit_once(", expected ").unwrap_or((rest, "?"));
        let expected = type_name(expected);
        return (
            format!("{found} is out of range: expected {expected}"),
            Some(format!("the value here must be {expected}")),
        );
    }
    if message == "duplicate key" {
        return (
            "this key is set twice".to_owned(),
            Some("keep one of the two".to_owned()),
        );
    }
    (
        format!("invalid TOML: {message}"),
        Some("see https://toml.io for the syntax".to_owned()),
    )
}

/// serde's type names in words.
fn type_name(expected: &str) -> String {
    match expected {
        "u8" => "an integer from 0 to 255".to_owned(),
        "u16" => "an integer from 0 to 65535".to_owned(),
        "u32" => "an integer from 0 to 4294967295".to_owned(),
        "u64" => "a non-negative integer".to_owned(),
        "i64" | "i32" => "an integer".to_owned(),
        "a boolean" => "a boolean".to_owned(),
        "a string" => "a string".to_owned(),
        "a sequence" => "an array".to_owned(),
        "a map" => "a table".to_owned(),
        other if other.starts_with("struct ") => "a table".to_owned(),
        other => other.to_owned(),
    }
}

/// The allowed word nearest to `typo`, if it is near enough to be a likely misspelling.
fn closest<'a>(typo: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|word| (edit_distance(typo, word), *word))
        .filter(|(distance, word)| *distance <= (word.len() / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, word)| word)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caret_sits_under_the_span_even_after_wide_characters() {
        let source = Source::new(
            Path::new("a.toml"),
            "x = 1\nlabels = [\"，a\", \"b c\"]\n".to_owned(),
        );
        let at = source.text.find("\"b c\"").unwrap_or(0);
        let spot = source.diag(at..at + 5, "bad label", Some("fix it".to_owned()));
        assert_eq!(
            spot.diagnostic.to_string(),
            "error: bad label\n --> a.toml:2:17\n  |\n2 | labels = [\"，a\", \"b c\"]\n  |                  ^^^^^\n\nhint: fix it\n"
        );
    }

    #[test]
    fn misspelled_keys_get_a_suggestion() {
        let (message, hint) =
            explain("unknown field `pat_flie`, expected one of `url`, `api_url`, `pat_file`");
        assert_eq!(message, "unknown key `pat_flie`");
        assert_eq!(
            hint.as_deref(),
            Some("did you mean `pat_file`? the keys allowed here are `url`, `api_url`, `pat_file`")
        );
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("colour", "color"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
