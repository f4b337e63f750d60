//! Self-hosted runners of a scope: list (paginated, conditional), get, delete, labels, groups.

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use url::Url;

use super::transport::{Access, Purpose};
use super::{Client, GithubError};
use crate::config::Scope;

/// One self-hosted runner registration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Runner {
    pub id: u64,
    pub name: String,
    /// `linux`, `macos`, `windows` (or `unknown` before the runner first connects).
    pub os: String,
    /// `online` or `offline`.
    pub status: String,
    pub busy: bool,
    #[serde(default)]
    pub labels: Vec<Label>,
    #[serde(default)]
    pub runner_group_id: Option<u64>,
    #[serde(default)]
    pub ephemeral: Option<bool>,
}

impl Runner {
    pub fn is_online(&self) -> bool {
        self.status == "online"
    }

    /// The names of the custom labels.
    pub fn custom_labels(&self) -> Vec<&str> {
        self.labels
            .iter()
            .filter(|l| l.kind == LabelKind::Custom)
            .map(|l| l.name.as_str())
            .collect()
    }
}

/// A runner label.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Label {
    #[serde(default)]
    pub id: u64,
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: LabelKind,
}

/// `read-only` labels are set at configuration (`self-hosted`, `Linux`, `X64`); `custom` ones can
/// be changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LabelKind {
    ReadOnly,
    #[default]
    Custom,
    #[serde(other)]
    Other,
}

/// A runner group of an organization or enterprise.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RunnerGroup {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub visibility: Option<String>,
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub allows_public_repositories: bool,
}

/// The answer of a conditional request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached<T> {
    /// Changed since the last call (or the first call): the new value.
    Modified(T),
    /// `304 Not Modified`: same as last time, and free of rate limit.
    NotModified,
}

#[derive(Deserialize)]
struct RunnerPage {
    #[serde(default)]
    runners: Vec<Runner>,
}

#[derive(Deserialize)]
struct LabelList {
    #[serde(default)]
    labels: Vec<Label>,
}

#[derive(Deserialize)]
struct GroupList {
    #[serde(default)]
    runner_groups: Vec<RunnerGroup>,
}

/// The `rel="next"` target of a `Link` header.
pub(crate) fn next_link(link: &str) -> Option<Url> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"");
        if !is_next {
            return None;
        }
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        Url::parse(target).ok()
    })
}

/// A `404` on a runner's own endpoint means the runner (or label) is not there.
fn runner_404(id: u64) -> impl FnOnce(GithubError) -> GithubError {
    move |err| match err {
        GithubError::ScopeNotFound {
            url,
            scope,
            message,
            ..
        } => GithubError::RunnerNotFound {
            url,
            scope,
            id,
            message,
        },
        other => other,
    }
}

/// Percent-encodes one path segment (label names may hold any character).
fn segment(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

impl Client {
    /// Every runner of `scope` (all pages, 100 per page).
    pub async fn list_runners(&self, scope: &Scope) -> Result<Vec<Runner>, GithubError> {
        match self.list_runners_inner(scope, false).await? {
            Cached::Modified(runners) => Ok(runners),
            Cached::NotModified => Ok(Vec::new()),
        }
    }

    /// [`Client::list_runners`] as a conditional request: the first page is asked with the ETag
    /// of the last answer, and `304 Not Modified` (free of rate limit) gives
    /// [`Cached::NotModified`].
    pub async fn list_runners_cached(
        &self,
        scope: &Scope,
    ) -> Result<Cached<Vec<Runner>>, GithubError> {
        self.list_runners_inner(scope, true).await
    }

    async fn list_runners_inner(
        &self,
        scope: &Scope,
        conditional: bool,
    ) -> Result<Cached<Vec<Runner>>, GithubError> {
        let purpose = Purpose::Scoped {
            scope,
            access: Access::Read,
        };
        let first = self.endpoint(&format!(
            "{}/actions/runners?per_page=100",
            scope.api_prefix()
        ))?;
        let etag = if conditional {
            self.etags.get(&first)
        } else {
            None
        };
        let reply = self
            .call(Method::GET, first.clone(), None, etag, purpose)
            .await?;
        if reply.status == StatusCode::NOT_MODIFIED {
            return Ok(Cached::NotModified);
        }
        let mut runners = reply.json::<RunnerPage>()?.runners;
        let mut next = reply.header("link").and_then(next_link);
        // A 304 on the first page says nothing about the others: only a one-page list is
        // asked conditionally next time.
        match (reply.header("etag"), &next) {
            (Some(etag), None) => self.etags.put(&first, etag.to_owned()),
            _ => self.etags.remove(&first),
        }
        let mut pages = 1;
        while let Some(url) = next {
            pages += 1;
            if pages > 1000 {
                break;
            }
            let reply = self.call(Method::GET, url, None, None, purpose).await?;
            runners.extend(reply.json::<RunnerPage>()?.runners);
            next = reply.header("link").and_then(next_link);
        }
        Ok(Cached::Modified(runners))
    }

    /// The runner of `scope` named `name` (GitHub compares names case-insensitively), if any:
    /// how a host sees that a name it is about to register is taken, by itself or another host.
    pub async fn runner_named(
        &self,
        scope: &Scope,
        name: &str,
    ) -> Result<Option<Runner>, GithubError> {
        let mut url = self.endpoint(&format!("{}/actions/runners", scope.api_prefix()))?;
        url.query_pairs_mut()
            .append_pair("name", name)
            .append_pair("per_page", "100");
        let purpose = Purpose::Scoped {
            scope,
            access: Access::Read,
        };
        let reply = self.call(Method::GET, url, None, None, purpose).await?;
        Ok(reply
            .json::<RunnerPage>()?
            .runners
            .into_iter()
            .find(|r| r.name.eq_ignore_ascii_case(name)))
    }

    /// One runner of `scope`.
    pub async fn get_runner(&self, scope: &Scope, id: u64) -> Result<Runner, GithubError> {
        self.scoped_json(
            Method::GET,
            scope,
            Access::Read,
            &format!("/actions/runners/{id}"),
            None,
        )
        .await
        .map_err(runner_404(id))
    }

    /// Force-removes a runner registration (`DELETE`, 204).
    pub async fn delete_runner(&self, scope: &Scope, id: u64) -> Result<(), GithubError> {
        self.scoped(
            Method::DELETE,
            scope,
            Access::Write,
            &format!("/actions/runners/{id}"),
            None,
        )
        .await
        .map_err(runner_404(id))?;
        Ok(())
    }

    /// All labels of a runner (read-only and custom).
    pub async fn runner_labels(&self, scope: &Scope, id: u64) -> Result<Vec<Label>, GithubError> {
        let list: LabelList = self
            .scoped_json(
                Method::GET,
                scope,
                Access::Read,
                &format!("/actions/runners/{id}/labels"),
                None,
            )
            .await
            .map_err(runner_404(id))?;
        Ok(list.labels)
    }

    /// Replaces a runner's custom labels (`[]` clears them); returns all its labels.
    pub async fn set_labels(
        &self,
        scope: &Scope,
        id: u64,
        labels: &[String],
    ) -> Result<Vec<Label>, GithubError> {
        self.labels_call(Method::PUT, scope, id, Some(labels)).await
    }

    /// Adds custom labels to a runner; returns all its labels.
    pub async fn add_labels(
        &self,
        scope: &Scope,
        id: u64,
        labels: &[String],
    ) -> Result<Vec<Label>, GithubError> {
        self.labels_call(Method::POST, scope, id, Some(labels))
            .await
    }

    /// Removes every custom label of a runner; returns the remaining (read-only) labels.
    pub async fn clear_labels(&self, scope: &Scope, id: u64) -> Result<Vec<Label>, GithubError> {
        self.labels_call(Method::DELETE, scope, id, None).await
    }

    /// Removes one custom label (GitHub answers 404 when the runner does not have it); returns
    /// the remaining labels.
    pub async fn remove_label(
        &self,
        scope: &Scope,
        id: u64,
        label: &str,
    ) -> Result<Vec<Label>, GithubError> {
        let list: LabelList = self
            .scoped_json(
                Method::DELETE,
                scope,
                Access::Write,
                &format!("/actions/runners/{id}/labels/{}", segment(label)),
                None,
            )
            .await
            .map_err(runner_404(id))?;
        Ok(list.labels)
    }

    async fn labels_call(
        &self,
        method: Method,
        scope: &Scope,
        id: u64,
        labels: Option<&[String]>,
    ) -> Result<Vec<Label>, GithubError> {
        let body = labels.map(|labels| serde_json::json!({ "labels": labels }));
        let list: LabelList = self
            .scoped_json(
                method,
                scope,
                Access::Write,
                &format!("/actions/runners/{id}/labels"),
                body,
            )
            .await
            .map_err(runner_404(id))?;
        Ok(list.labels)
    }

    /// The runner groups of an organization or enterprise (a repository has none: empty).
    pub async fn runner_groups(&self, scope: &Scope) -> Result<Vec<RunnerGroup>, GithubError> {
        if let Scope::Repo { .. } = scope {
            return Ok(Vec::new());
        }
        let list: GroupList = self
            .scoped_json(
                Method::GET,
                scope,
                Access::Read,
                "/actions/runner-groups?per_page=100",
                None,
            )
            .await?;
        Ok(list.runner_groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_link_is_found_among_other_relations() {
        let link = r#"<https://api.github.com/repositories/1/actions/runners?per_page=100&page=1>; rel="prev", <https://api.github.com/repositories/1/actions/runners?per_page=100&page=3>; rel="next", <https://api.github.com/repositories/1/actions/runners?per_page=100&page=5>; rel="last""#;
        assert_eq!(
            next_link(link).map(|u| u.to_string()),
            Some(
                "https://api.github.com/repositories/1/actions/runners?per_page=100&page=3".into()
            )
        );
        assert_eq!(next_link(r#"<https://x/a?page=1>; rel="first""#), None);
    }

    #[test]
    fn runner_example_parses() {
        let json = r#"{"total_count":1,"runners":[{"id":23,"name":"MBP","os":"macos","status":"online",
            "busy":true,"ephemeral":false,"labels":[{"id":5,"name":"self-hosted","type":"read-only"},
            {"id":21,"name":"no-gpu","type":"custom"}]}]}"#;
        let page: RunnerPage = serde_json::from_str(json).unwrap();
        assert!(!page.runners.is_empty());
        assert!(page.runners[0]
            .labels
            .iter()
            .any(|l| l.kind == LabelKind::ReadOnly));
    }

    #[test]
    fn label_names_are_escaped_in_paths() {
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }
}
