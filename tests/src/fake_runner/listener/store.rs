//! The runner's state files in the runner root (actions-runner.md §2): `.runner`,
//! `.credentials`, `.credentials_rsaparams`, `.service`, `.env`. JSON is written the way the
//! real runner writes it: UTF-8 with a BOM, camelCase keys, indented, false/empty fields left
//! out; reading strips the BOM and accepts any key case.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::ListenerError;

/// The UTF-8 byte order mark `File.WriteAllText(..., Encoding.UTF8)` writes.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// `.runner`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RunnerSettings {
    pub agent_id: u64,
    pub agent_name: String,
    pub pool_id: u64,
    pub pool_name: String,
    pub server_url: String,
    pub git_hub_url: String,
    pub work_folder: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_update: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor_socket_address: Option<String>,
}

/// `.credentials`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialData {
    pub scheme: String,
    pub data: std::collections::BTreeMap<String, String>,
}

/// `.credentials_rsaparams`: the real key's field names, holding random bytes. The fake's
/// "public key" is the base64 `modulus`: it is what configure registers as `publicKey` and what
/// the listener sends as the OAuth client secret (tests/PROTOCOL.md); JIT configs from the
/// emulator follow the same rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RsaParams {
    pub d: String,
    pub dp: String,
    pub dq: String,
    pub exponent: String,
    pub inverse_q: String,
    pub modulus: String,
    pub p: String,
    pub q: String,
}

impl RsaParams {
    /// A fresh random identity.
    pub fn generate() -> RsaParams {
        use base64::Engine as _;
        let b64 = |n: usize| {
            let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
            base64::engine::general_purpose::STANDARD.encode(bytes)
        };
        RsaParams {
            d: b64(256),
            dp: b64(128),
            dq: b64(128),
            exponent: "AQAB".to_string(),
            inverse_q: b64(128),
            modulus: b64(256),
            p: b64(128),
            q: b64(128),
        }
    }
}

/// The runner root and its well-known files.
#[derive(Debug, Clone)]
pub struct Root {
    pub dir: PathBuf,
}

impl Root {
    /// The runner root of the running binary: the parent of the directory holding it (`bin/`,
    /// or `bin.<ver>/` after a self-update, which sits in the same root).
    pub fn of_current_exe() -> Result<Root, ListenerError> {
        let exe = std::env::current_exe().map_err(|source| ListenerError::Io {
            path: PathBuf::from("/proc/self/exe"),
            source,
        })?;
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        Ok(Root { dir })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn bin(&self) -> PathBuf {
        self.dir.join("bin")
    }

    /// Configured = `.runner` or `.runner_migrated` exists.
    pub fn is_configured(&self) -> bool {
        self.path(".runner").exists() || self.path(".runner_migrated").exists()
    }

    pub fn is_service_configured(&self) -> bool {
        self.path(".service").exists()
    }

    /// `.runner_migrated` first, then `.runner`.
    pub fn load_settings(&self) -> Result<RunnerSettings, ListenerError> {
        let migrated = self.path(".runner_migrated");
        let path = if migrated.exists() {
            migrated
        } else {
            self.path(".runner")
        };
        read_json(&path)
    }

    pub fn load_credentials(&self) -> Result<CredentialData, ListenerError> {
        let migrated = self.path(".credentials_migrated");
        let path = if migrated.exists() {
            migrated
        } else {
            self.path(".credentials")
        };
        read_json(&path)
    }

    pub fn load_rsa(&self) -> Result<RsaParams, ListenerError> {
        read_json(&self.path(".credentials_rsaparams"))
    }

    /// The version baked into this release (`bin/runnerversion`).
    pub fn version(&self) -> String {
        std::fs::read_to_string(self.bin().join("runnerversion"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "0.0.0".to_string())
    }

    /// Deletes the local configuration (what `remove --local` and a deleted registration do).
    pub fn delete_local_config(&self) -> Vec<String> {
        let mut removed = Vec::new();
        for name in [
            ".credentials",
            ".credentials_migrated",
            ".credentials_rsaparams",
            ".runner",
            ".runner_migrated",
        ] {
            if std::fs::remove_file(self.path(name)).is_ok() {
                removed.push(name.to_string());
            }
        }
        removed
    }

    /// `.env`: `KEY=value` per line, split at the first `=`, nothing else interpreted.
    pub fn dot_env(&self) -> Vec<(String, String)> {
        let Ok(text) = std::fs::read_to_string(self.path(".env")) else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|line| {
                let (k, v) = line.split_once('=')?;
                (!k.is_empty()).then(|| (k.to_string(), v.to_string()))
            })
            .collect()
    }
}

/// Serialises like the real runner: camelCase (from the types), indented, BOM first.
pub fn to_bom_json<T: Serialize>(value: &T) -> Result<Vec<u8>, ListenerError> {
    let text = serde_json::to_string_pretty(value).map_err(ListenerError::Json)?;
    let mut bytes = BOM.to_vec();
    bytes.extend_from_slice(text.as_bytes());
    Ok(bytes)
}

/// Writes `value` as BOM JSON with `mode`.
pub fn write_json<T: Serialize>(path: &Path, value: &T, mode: u32) -> Result<(), ListenerError> {
    write_file(path, &to_bom_json(value)?, mode)
}

pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ListenerError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::os::unix::fs::PermissionsExt as _;
    let io = |source| ListenerError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)
}

/// Reads BOM (or not) JSON with keys in any case.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ListenerError> {
    let bytes = std::fs::read(path).map_err(|source| ListenerError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_json(&bytes).map_err(|source| ListenerError::StateFile {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses BOM-prefixed JSON whose object keys may use any case (JIT files may be PascalCase).
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    let bytes = bytes.strip_prefix(BOM).unwrap_or(bytes);
    let value: Value = serde_json::from_slice(bytes)?;
    serde_json::from_value(camel_keys(value))
}

fn camel_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let known = [
                "agentId",
                "agentName",
                "poolId",
                "poolName",
                "serverUrl",
                "gitHubUrl",
                "workFolder",
                "ephemeral",
                "disableUpdate",
                "monitorSocketAddress",
                "scheme",
                "data",
                "d",
                "dp",
                "dq",
                "exponent",
                "inverseQ",
                "modulus",
                "p",
                "q",
            ];
            let mut out = Map::new();
            for (k, v) in map {
                let key = known
                    .iter()
                    .find(|n| n.eq_ignore_ascii_case(&k))
                    .map_or(k, |n| n.to_string());
                // `data` of `.credentials` is a dictionary: its keys keep their case.
                out.insert(key, v);
            }
            Value::Object(out)
        }
        other => other,
    }
}

/// The systemd unit name `config.sh` writes into `svc.sh` (actions-runner.md §3.1):
/// `actions.runner.<repo-or-org>.<runner>.service`, at most 150 characters.
pub fn service_name(settings: &RunnerSettings) -> String {
    let repo_or_org = repo_or_org_name(settings);
    let sanitized: String = repo_or_org
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = &settings.agent_name;
    let full = format!("actions.runner.{sanitized}.{name}.service");
    const MAX: usize = 150;
    const MAX_REPO: usize = 70;
    let len = full.chars().count();
    if len <= MAX {
        return full;
    }
    let mut exceeded = len as i64 - MAX as i64 + 5;
    let repo_prefix: String = sanitized.chars().take(MAX_REPO).collect();
    exceeded -= (sanitized.chars().count() - repo_prefix.chars().count()) as i64;
    let mut runner_part: String = name.clone();
    if exceeded > 0 {
        let keep = (name.chars().count() as i64 - exceeded).max(0) as usize;
        runner_part = name.chars().take(keep).collect();
    }
    let suffix: u32 = rand::random_range(1000..9999);
    format!("actions.runner.{repo_prefix}.{runner_part}-{suffix}.service")
}

/// `GitHub Actions Runner (<repo-or-org>.<runner>)`.
pub fn service_description(settings: &RunnerSettings) -> String {
    let repo_or_org = repo_or_org_name(settings);
    let sanitized: String = repo_or_org
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!(
        "GitHub Actions Runner ({sanitized}.{})",
        settings.agent_name
    )
}

/// `RepoOrOrgName`: the `--url` path when the service is on `*.githubusercontent.com`, else the
/// first path segment of `serverUrl` (on GHES that is `_services`).
pub fn repo_or_org_name(settings: &RunnerSettings) -> String {
    let server = url::Url::parse(&settings.server_url).ok();
    let hosted = server
        .as_ref()
        .and_then(|u| u.host_str().map(|h| h.to_ascii_lowercase()))
        .is_some_and(|h| h.ends_with(".githubusercontent.com"));
    if hosted && !settings.git_hub_url.is_empty() {
        if let Ok(gh) = url::Url::parse(&settings.git_hub_url) {
            return gh.path().trim_matches('/').to_string();
        }
    }
    server
        .and_then(|u| {
            u.path_segments()
                .and_then(|mut s| s.next().map(str::to_string))
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(server: &str, github: &str, name: &str) -> RunnerSettings {
        RunnerSettings {
            agent_name: name.to_string(),
            server_url: server.to_string(),
            git_hub_url: github.to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn ghes_units_are_named_after_services() {
        let s = settings(
            "http://127.0.0.1:8080/_services/pipelines/",
            "http://127.0.0.1:8080/octo/repo",
            "r1",
        );
        assert_eq!(service_name(&s), "actions.runner._services.r1.service");
    }

    #[test]
    fn dotcom_units_use_the_url_path_sanitized() {
        let s = settings(
            "https://pipelinesghubeus2.actions.githubusercontent.com/abcdef/",
            "https://github.com/octo-org/octo.repo_1/",
            "my runner",
        );
        assert_eq!(
            service_name(&s),
            "actions.runner.octo-org-octo.repo_1.my runner.service"
        );
        assert_eq!(
            service_description(&s),
            "GitHub Actions Runner (octo-org-octo.repo_1.my runner)"
        );
    }

    #[test]
    fn long_names_are_cut_to_150_with_a_random_suffix() {
        let org = "o".repeat(100);
        let name = "n".repeat(100);
        let s = settings(
            "https://x.actions.githubusercontent.com/t/",
            &format!("https://github.com/{org}"),
            &name,
        );
        let unit = service_name(&s);
        assert!(unit.chars().count() <= 150, "{unit}");
        let re_prefix = format!("actions.runner.{}.", "o".repeat(70));
        assert!(unit.starts_with(&re_prefix), "{unit}");
        let tail = unit
            .strip_prefix(&re_prefix)
            .and_then(|t| t.strip_suffix(".service"))
            .unwrap();
        let (runner, num) = tail.rsplit_once('-').unwrap();
        assert!(runner.chars().all(|c| c == 'n'));
        let num: u32 = num.parse().unwrap();
        assert!((1000..9999).contains(&num));
    }

    #[test]
    fn json_has_a_bom_camel_case_and_no_false_fields() {
        let s = RunnerSettings {
            agent_id: 3,
            agent_name: "r1".into(),
            ..Default::default()
        };
        let bytes = to_bom_json(&s).unwrap();
        assert!(bytes.starts_with(BOM));
        let text = std::str::from_utf8(&bytes[3..]).unwrap();
        assert!(text.contains("\n  \"agentId\": 3,"), "{text}");
        assert!(!text.contains("ephemeral"));
        let back: RunnerSettings = parse_json(&bytes).unwrap();
        assert_eq!(back, s);
        let pascal: RunnerSettings =
            parse_json(br#"{"AgentId": 9, "AgentName": "x", "PoolId": 1, "PoolName": "Default", "ServerUrl": "s", "GitHubUrl": "g", "WorkFolder": "_work", "Ephemeral": true}"#)
                .unwrap();
        assert_eq!(pascal.agent_id, 9);
        assert!(pascal.ephemeral);
    }
}
