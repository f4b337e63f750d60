//! Single-value rules: labels, runner names and templates, users, versions, URLs, digests. Each
//! returns the checked value or `Problem` (message and hint) for the caller to place.

use url::Url;

use super::model::{Ephemeral, Scope, ServiceKind, Version, VersionReq};

/// What is wrong with a value, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub message: String,
    pub hint: String,
}

fn problem(message: impl Into<String>, hint: impl Into<String>) -> Problem {
    Problem {
        message: message.into(),
        hint: hint.into(),
    }
}

/// GitHub's limit on label length.
const MAX_LABEL_LEN: usize = 256;
/// GitHub's limit on runner name length.
const MAX_RUNNER_NAME_LEN: usize = 64;
/// More runners than this from one `[[runner]]` is a typo, not a lab.
pub const MAX_COUNT: i64 = 1000;

/// A runner label: non-empty, at most 256 characters, no commas (ASCII or full-width: the
/// runner splits `--labels` on them) and no whitespace.
pub fn label(text: &str) -> Result<String, Problem> {
    if text.is_empty() {
        return Err(problem(
            "empty label",
            "remove the empty string from `labels`",
        ));
    }
    if text.chars().count() > MAX_LABEL_LEN {
        return Err(problem(
            format!("label is {} characters long", text.chars().count()),
            format!("GitHub allows at most {MAX_LABEL_LEN} characters per label"),
        ));
    }
    if let Some(bad) = text
        .chars()
        .find(|ch| matches!(ch, ',' | '，' | '、' | '﹐') || ch.is_whitespace())
    {
        if bad.is_whitespace() {
            return Err(problem(
                format!("label `{text}` contains whitespace"),
                "GitHub cannot match a label with spaces; use `-` or `_` instead",
            ));
        }
        return Err(problem(
            format!("label `{text}` contains a comma (`{bad}`, U+{:04X})", u32::from(bad)),
            "labels are passed comma-separated to the runner; write each label as its own string: `[\"a\", \"b\"]`",
        ));
    }
    Ok(text.to_owned())
}

/// A runner name after expansion: `[A-Za-z0-9._-]`, 1 to 64 characters.
pub fn runner_name(name: &str, from_template: bool) -> Result<String, Problem> {
    let origin = if from_template {
        " (expanded from `name_template`)"
    } else {
        ""
    };
    if name.is_empty() {
        return Err(problem("empty runner name", "give the runner a `name`"));
    }
    if name.chars().count() > MAX_RUNNER_NAME_LEN {
        return Err(problem(
            format!(
                "runner name `{name}`{origin} is {} characters long",
                name.chars().count()
            ),
            format!("GitHub allows at most {MAX_RUNNER_NAME_LEN} characters; shorten the name"),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|ch| !(ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-')))
    {
        return Err(problem(
            format!("runner name `{name}`{origin} contains `{bad}`"),
            "runner names may only use letters, digits, `.`, `_` and `-`",
        ));
    }
    Ok(name.to_owned())
}

/// One piece of a `name_template`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Hostname,
    Index,
    Board,
}

/// Split a `name_template` into text and `{hostname}`, `{index}`, `{board}`.
pub fn template(text: &str) -> Result<Vec<Piece>, Problem> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err(problem(
                format!("`}}` without `{{` in `{text}`"),
                "placeholders are `{hostname}`, `{index}` and `{board}`",
            ));
        }
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_owned()));
        }
        let Some(close) = rest[open..].find('}') else {
            return Err(problem(
                format!("unclosed `{{` in `{text}`"),
                "placeholders are `{hostname}`, `{index}` and `{board}`",
            ));
        };
        let name = &rest[open + 1..open + close];
        pieces.push(match name {
            "hostname" => Piece::Hostname,
            "index" => Piece::Index,
            "board" => Piece::Board,
            other => {
                return Err(problem(
                    format!("unknown placeholder `{{{other}}}` in `{text}`"),
                    "placeholders are `{hostname}`, `{index}` and `{board}`",
                ))
            }
        });
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_owned()));
    }
    Ok(pieces)
}

/// The name a template gives runner number `index` (from 1).
pub fn expand(pieces: &[Piece], hostname: &str, index: u32, board: Option<&str>) -> String {
    pieces
        .iter()
        .map(|piece| match piece {
            Piece::Text(text) => text.clone(),
            Piece::Hostname => hostname.to_owned(),
            Piece::Index => index.to_string(),
            Piece::Board => board.unwrap_or_default().to_owned(),
        })
        .collect()
}

/// The system user a runner runs as: a plain user name, never root.
pub fn user(name: &str) -> Result<String, Problem> {
    if name == "root" {
        return Err(problem(
            "runners must not run as `root`",
            "the runner's jobs run arbitrary code from the repository; use an unprivileged user such as `runner`",
        ));
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|ch| ch.is_ascii_lowercase() || ch == '_');
    if !first_ok
        || name.len() > 32
        || !chars.all(|ch| {
            ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '_' | '-' | '.')
        })
    {
        return Err(problem(
            format!("`{name}` is not a valid user name"),
            "use a lowercase system user name like `runner`",
        ));
    }
    Ok(name.to_owned())
}

/// `"latest"` or `"2.336.0"`.
pub fn version(text: &str) -> Result<VersionReq, Problem> {
    if text == "latest" {
        return Ok(VersionReq::Latest);
    }
    text.parse::<Version>()
        .map(VersionReq::Pinned)
        .map_err(|message| {
            problem(
                message,
                "use \"latest\" or a release number like \"2.336.0\"",
            )
        })
}

/// `false`, `true` or `"jit"`.
pub fn ephemeral(value: &toml::Value) -> Result<Ephemeral, Problem> {
    match value {
        toml::Value::Boolean(false) => Ok(Ephemeral::No),
        toml::Value::Boolean(true) => Ok(Ephemeral::Yes),
        toml::Value::String(text) if text == "jit" => Ok(Ephemeral::Jit),
        other => Err(problem(
            format!("`ephemeral = {other}` is not one of `false`, `true`, `\"jit\"`"),
            "`true` registers for one job, `\"jit\"` uses a just-in-time config per job",
        )),
    }
}

/// `systemd`, `process` or `container`.
pub fn service(text: &str) -> Result<ServiceKind, Problem> {
    match text {
        "systemd" => Ok(ServiceKind::Systemd),
        "process" => Ok(ServiceKind::Process),
        "container" => Ok(ServiceKind::Container),
        other => Err(problem(
            format!("unknown service kind `{other}`"),
            "use `systemd`, `process` or `container`",
        )),
    }
}

/// `[container] engine`: `docker`, `podman`, or an absolute path to one of them.
pub fn engine(text: &str) -> Result<String, Problem> {
    let base = text.rsplit('/').next().unwrap_or(text);
    let known = base.starts_with("docker") || base.starts_with("podman");
    if known && (!text.contains('/') || text.starts_with('/')) {
        Ok(text.to_owned())
    } else {
        Err(problem(
            format!("unknown container engine `{text}`"),
            "use `docker`, `podman`, or an absolute path to one of them; leave it out to use whichever is installed",
        ))
    }
}

/// `[container] image`: a reference without blanks; `{version}` is the only placeholder.
pub fn image(text: &str) -> Result<String, Problem> {
    let rest = text.replace("{version}", "");
    if text.is_empty()
        || text.starts_with('-')
        || rest
            .chars()
            .any(|c| c.is_whitespace() || c == '{' || c == '}')
    {
        return Err(problem(
            format!("`{text}` is not an image reference"),
            "write it as `docker pull` takes it, e.g. `ghcr.io/actions/actions-runner:{version}` (`{version}` is the runner's release version)",
        ));
    }
    Ok(text.to_owned())
}

/// `[container] network`: `host` or a network name.
pub fn network(text: &str) -> Result<String, Problem> {
    let ok = !text.is_empty()
        && !text.starts_with('-')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':'));
    if ok {
        Ok(text.to_owned())
    } else {
        Err(problem(
            format!("`{text}` is not a container network"),
            "use `host` (the default), `bridge`, or the name of a network made with `docker network create`",
        ))
    }
}

/// `[container] restart`: a restart policy the engines share.
pub fn restart(text: &str) -> Result<String, Problem> {
    let ok = matches!(text, "no" | "always" | "unless-stopped" | "on-failure")
        || text
            .strip_prefix("on-failure:")
            .is_some_and(|n| n.parse::<u32>().is_ok());
    if ok {
        Ok(text.to_owned())
    } else {
        Err(problem(
            format!("unknown restart policy `{text}`"),
            "use `unless-stopped` (the default), `always`, `on-failure`, `on-failure:N` or `no`",
        ))
    }
}

/// A SHA-256 digest: 64 hex digits, returned lowercase.
pub fn sha256(text: &str) -> Result<String, Problem> {
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(problem(
            format!("`{text}` is not a SHA-256 digest"),
            "write the 64 hexadecimal digits `sha256sum` prints for the file",
        ))
    }
}

/// An environment variable name.
pub fn env_name(text: &str) -> Result<String, Problem> {
    let mut chars = text.chars();
    let ok = chars
        .next()
        .is_some_and(|ch| ch.is_ascii_alphabetic() || ch == '_')
        && chars.all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
    if ok {
        Ok(text.to_owned())
    } else {
        Err(problem(
            format!("`{text}` is not a valid environment variable name"),
            "use letters, digits and `_`, not starting with a digit",
        ))
    }
}

/// A URL the agent talks to: https, or http only to this host (the test emulator).
pub fn web_url(text: &str) -> Result<Url, Problem> {
    let url = Url::parse(text).map_err(|err| {
        problem(
            format!("`{text}` is not a URL: {err}"),
            "write a full URL like `https://github.com/OWNER/REPO`",
        )
    })?;
    let local = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    match url.scheme() {
        "https" => {}
        "http" if local => {}
        "http" => {
            return Err(problem(
                format!("`{text}` uses plain http"),
                "use https; plain http is only accepted for 127.0.0.1 and localhost",
            ))
        }
        other => {
            return Err(problem(
                format!("`{text}` has scheme `{other}`"),
                "use an https URL",
            ))
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(problem(format!("`{text}` has no host"), "use an https URL"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(problem(
            format!("`{text}` has a query, fragment or user name"),
            "use the plain URL, without `?…`, `#…` or `user@`",
        ));
    }
    Ok(url)
}

/// The registration URL and what it registers to: `https://HOST/OWNER/REPO`, `https://HOST/ORG`
/// or `https://HOST/enterprises/SLUG`.
pub fn github_url(text: &str) -> Result<(Url, Scope), Problem> {
    let mut url = web_url(text)?;
    let hint = "use `https://github.com/OWNER/REPO`, `https://github.com/ORG` or `https://github.com/enterprises/SLUG` (or the same paths on your GitHub Enterprise Server)";
    let segments: Vec<String> = url
        .path_segments()
        .map(|parts| {
            parts
                .filter(|part| !part.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let name_ok = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'))
    };
    if let Some(bad) = segments.iter().find(|part| !name_ok(part)) {
        return Err(problem(
            format!(
                "`{text}` has `{bad}` where a GitHub owner, repository or enterprise name belongs"
            ),
            hint,
        ));
    }
    let scope = match segments.as_slice() {
        [enterprises, slug] if enterprises == "enterprises" => {
            Scope::Enterprise { slug: slug.clone() }
        }
        [_, repo] if repo.ends_with(".git") => {
            return Err(problem(
                format!("`{text}` is a clone URL"),
                format!(
                    "drop the `.git`: `{}`",
                    text.trim_end_matches('/').trim_end_matches(".git")
                ),
            ))
        }
        [owner, repo] => Scope::Repo {
            owner: owner.clone(),
            repo: repo.clone(),
        },
        [org] if org != "enterprises" => Scope::Org { org: org.clone() },
        [] => {
            return Err(problem(
                format!("`{text}` names no repository, organisation or enterprise"),
                hint,
            ))
        }
        _ => {
            return Err(problem(
                format!("`{text}` is not a repository, organisation or enterprise URL"),
                hint,
            ))
        }
    };
    url.set_path(&segments.join("/"));
    Ok((url, scope))
}

/// The REST base for a registration URL: `https://api.github.com` for github.com,
/// `SCHEME://HOST[:PORT]/api/v3` for any other host (GHES, the emulator).
pub fn default_api_url(url: &Url) -> Result<Url, Problem> {
    let api = match url.host_str() {
        Some("github.com" | "www.github.com") => "https://api.github.com".to_owned(),
        _ => format!("{}/api/v3", url.origin().ascii_serialization()),
    };
    Url::parse(&api)
        .map_err(|err| problem(format!("cannot derive the API URL: {err}"), "set `api_url`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_reject_commas_of_every_width_and_whitespace() {
        assert_eq!(label("rk3568").as_deref(), Ok("rk3568"));
        for bad in ["", "a,b", "arceos，x86", "a b", "tab\t", &"x".repeat(257)] {
            assert!(label(bad).is_err(), "{bad:?} was accepted");
        }
        let full_width = label("arceos，x86").err().map(|p| p.message);
        assert_eq!(
            full_width.as_deref(),
            Some("label `arceos，x86` contains a comma (`，`, U+FF0C)")
        );
    }

    #[test]
    fn runner_names_follow_github_rules() {
        assert!(runner_name("lab-kvm_1.a", false).is_ok());
        assert!(runner_name(&"a".repeat(64), false).is_ok());
        assert!(runner_name(&"a".repeat(65), true).is_err());
        assert!(runner_name("a/b", false).is_err());
        assert!(runner_name("a b", false).is_err());
    }

    #[test]
    fn templates_expand_every_placeholder() {
        let pieces = template("{hostname}-{board}-{index}").unwrap_or_default();
        assert_eq!(expand(&pieces, "host", 2, Some("rk")), "host-rk-2");
        assert!(template("{host}").is_err());
        assert!(template("a{index").is_err());
        assert!(template("a}").is_err());
        assert_eq!(template("plain"), Ok(vec![Piece::Text("plain".to_owned())]));
    }

    #[test]
    fn github_urls_map_to_scopes() {
        let scope = |text: &str| github_url(text).map(|(_, scope)| scope);
        assert_eq!(
            scope("https://github.com/octo/repo/"),
            Ok(Scope::Repo {
                owner: "octo".to_owned(),
                repo: "repo".to_owned()
            })
        );
        assert_eq!(
            scope("https://github.com/octo"),
            Ok(Scope::Org {
                org: "octo".to_owned()
            })
        );
        assert_eq!(
            scope("https://ghes.example/enterprises/big"),
            Ok(Scope::Enterprise {
                slug: "big".to_owned()
            })
        );
        assert!(scope("http://127.0.0.1:8080/o/r").is_ok());
        for bad in [
            "http://github.com/o/r",
            "https://github.com/o/r/issues",
            "https://github.com/",
            "https://github.com/o/r.git",
            "https://github.com/o/r?x=1",
            "github.com/o/r",
            "https://github.com/enterprises",
        ] {
            assert!(scope(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn api_url_defaults_follow_the_host() {
        let api = |text: &str| {
            github_url(text)
                .and_then(|(url, _)| default_api_url(&url))
                .map(|url| url.to_string())
        };
        assert_eq!(
            api("https://github.com/o/r").as_deref(),
            Ok("https://api.github.com/")
        );
        assert_eq!(
            api("https://ghes.example:8443/o").as_deref(),
            Ok("https://ghes.example:8443/api/v3")
        );
        assert_eq!(
            api("http://127.0.0.1:3000/o/r").as_deref(),
            Ok("http://127.0.0.1:3000/api/v3")
        );
    }

    #[test]
    fn versions_and_digests() {
        assert_eq!(version("latest"), Ok(VersionReq::Latest));
        assert!(matches!(version("2.336.0"), Ok(VersionReq::Pinned(_))));
        assert!(version("2.336").is_err());
        assert!(version("newest").is_err());
        assert_eq!(sha256(&"AB".repeat(32)), Ok("ab".repeat(32)));
        assert!(sha256("abc").is_err());
    }

    #[test]
    fn root_is_not_a_runner_user() {
        assert!(user("root").is_err());
        assert!(user("Runner").is_err());
        assert_eq!(user("runner").as_deref(), Ok("runner"));
    }
}
