//! Webhook setup on GitLab: the system hook, project hooks on existing
//! projects, and the project hook added when a `project_create` system
//! hook arrives.
//!
//! Owns the hook and project-listing calls of GitLab's REST API (typed
//! methods in their own `impl GitlabApi` block), pagination, and the
//! "ensure" logic that makes every run idempotent: a hook is matched by its
//! URL; a missing one is created, an existing one is updated in place
//! (PUT), never duplicated. GitLab never returns a hook's token, so an
//! existing hook's token cannot be compared: it is re-sent with every
//! update. This module never deletes a hook it did not find under the same
//! URL, never logs a token, and never retries on its own.

use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::api::{GitlabApi, GitlabError, encode_path};
use crate::config::{Config, Secret};

/// Page size asked of GitLab (its maximum).
pub const PER_PAGE: u32 = 100;
/// Stop following `X-Next-Page` after this many pages (a million projects).
pub const MAX_PAGES: u32 = 10_000;
/// Project hooks set up at once by [`add_project_hooks`].
const CONCURRENCY: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Api(#[from] GitlabError),
    #[error(
        "no webhook token configured; set server.webhook_token_file (or LABGRADER_WEBHOOK_TOKEN): \
         GitLab sends it back in X-Gitlab-Token"
    )]
    NoWebhookToken,
    #[error("no hook URL; pass --url or set gitlab.project_hook_url")]
    NoUrl,
    #[error("hook url `{0}` must start with http:// or https://")]
    BadUrl(String),
    #[error("namespace `{0}` not found on GitLab (neither a group nor a user you can see)")]
    NamespaceNotFound(String),
    #[error(
        "GitLab kept answering pages for {path} (over {MAX_PAGES}); narrow it with --namespace"
    )]
    TooManyPages { path: String },
}

impl SetupError {
    /// Worth trying again later (network trouble, 429, 5xx).
    pub fn is_transient(&self) -> bool {
        matches!(self, SetupError::Api(e) if e.is_transient())
    }
}

/// A hook as GitLab lists it (system and project hooks share these fields).
#[derive(Debug, Clone, Deserialize)]
pub struct Hook {
    pub id: u64,
    pub url: String,
    #[serde(default)]
    pub push_events: bool,
    #[serde(default)]
    pub tag_push_events: bool,
    #[serde(default)]
    pub merge_requests_events: bool,
    #[serde(default)]
    pub repository_update_events: bool,
    #[serde(default = "yes")]
    pub enable_ssl_verification: bool,
}

fn yes() -> bool {
    true
}

/// A project as GitLab lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct Project {
    pub id: u64,
    pub path_with_namespace: String,
    #[serde(default)]
    pub archived: bool,
}

/// What a hook should look like.
#[derive(Debug, Clone)]
pub struct HookSpec {
    pub url: String,
    pub token: Secret,
    pub push_events: bool,
    pub tag_push_events: bool,
    /// System hooks only: a second event per push; off, since push events
    /// already carry the commits.
    pub repository_update_events: bool,
    pub enable_ssl_verification: bool,
}

impl HookSpec {
    /// Push and tag-push events to `url`, with `token`, TLS verified.
    pub fn pushes(url: &str, token: &Secret) -> Result<HookSpec, SetupError> {
        let url = url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(SetupError::BadUrl(url.to_string()));
        }
        Ok(HookSpec {
            url: url.to_string(),
            token: token.clone(),
            push_events: true,
            tag_push_events: true,
            repository_update_events: false,
            enable_ssl_verification: true,
        })
    }

    fn body(&self, system: bool) -> serde_json::Value {
        let mut b = json!({
            "url": self.url,
            "token": self.token.expose(),
            "push_events": self.push_events,
            "tag_push_events": self.tag_push_events,
            "merge_requests_events": false,
            "enable_ssl_verification": self.enable_ssl_verification,
        });
        if system {
            b["repository_update_events"] = json!(self.repository_update_events);
        }
        b
    }
}

/// Two URLs name the same hook when they differ at most by a trailing `/`.
fn same_url(a: &str, b: &str) -> bool {
    a.trim().trim_end_matches('/') == b.trim().trim_end_matches('/')
}

/// What an "ensure" did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// There was no hook with this URL; one was added.
    Created,
    /// A hook with this URL existed; its events and token were (re)applied.
    Updated,
    /// This GitLab cannot update system hooks in place (older versions): the
    /// old one was deleted and a new one added.
    Recreated,
}

#[derive(Debug, Clone)]
pub struct HookOutcome {
    pub hook_id: u64,
    pub change: Change,
    /// Further hooks with the same URL (left alone; each delivers every
    /// event once more, so staff should delete them).
    pub duplicates: Vec<u64>,
}

impl std::fmt::Display for HookOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = match self.change {
            Change::Created => "created",
            Change::Updated => "updated",
            Change::Recreated => "recreated",
        };
        write!(f, "{verb} hook {}", self.hook_id)?;
        if !self.duplicates.is_empty() {
            write!(
                f,
                " (warning: duplicate hooks with the same URL: {:?}; delete them or every event arrives twice)",
                self.duplicates
            )?;
        }
        Ok(())
    }
}

/// Which projects get project hooks.
#[derive(Debug, Clone)]
pub enum ProjectScope {
    /// Every project the token's user is a maintainer (or owner) of.
    Membership,
    /// A group (with its subgroups) or a user's namespace.
    Namespace(String),
}

/// `:id` for a project: a numeric id as is, a `namespace/name` path encoded.
fn project_ref(project: &str) -> String {
    if !project.is_empty() && project.bytes().all(|b| b.is_ascii_digit()) {
        project.to_string()
    } else {
        encode_path(project)
    }
}

impl GitlabApi {
    /// GET every page of a list, following `X-Next-Page` (or, when GitLab
    /// leaves that header out, asking on while pages come back full).
    /// `Ok(None)` when the first page is a 404.
    async fn get_all<T: DeserializeOwned>(&self, path: &str) -> Result<Option<Vec<T>>, SetupError> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut all = Vec::new();
        let mut page: u32 = 1;
        loop {
            if page > MAX_PAGES {
                return Err(SetupError::TooManyPages {
                    path: path.to_string(),
                });
            }
            let p = format!("{path}{sep}per_page={PER_PAGE}&page={page}");
            let resp = self.send(Method::GET, &p, None).await?;
            if resp.status == StatusCode::NOT_FOUND && page == 1 {
                return Ok(None);
            }
            if !resp.status.is_success() {
                return Err(GitlabError::Status {
                    method: Method::GET,
                    path: p,
                    status: resp.status,
                    body: resp.body_snippet(),
                }
                .into());
            }
            let items: Vec<T> = resp.json().map_err(|source| GitlabError::Decode {
                path: p.clone(),
                source,
            })?;
            let n = items.len();
            all.extend(items);
            let next = match resp.headers.get("x-next-page") {
                Some(v) => v.to_str().ok().and_then(|s| s.trim().parse::<u32>().ok()),
                None if n as u32 >= PER_PAGE => Some(page + 1),
                None => None,
            };
            match next {
                // A next page that does not move forward would loop forever.
                Some(next) if next > page => page = next,
                _ => return Ok(Some(all)),
            }
        }
    }

    /// `GET /hooks` (administrators only).
    pub async fn system_hooks(&self) -> Result<Vec<Hook>, SetupError> {
        Ok(self.get_all("/hooks").await?.unwrap_or_default())
    }

    /// `POST /hooks`.
    pub async fn add_system_hook(&self, spec: &HookSpec) -> Result<Hook, SetupError> {
        let resp = self
            .send_ok(Method::POST, "/hooks", Some(&spec.body(true)))
            .await?;
        decode(&resp, "/hooks")
    }

    /// `PUT /hooks/:id`; `Ok(None)` when this GitLab has no such endpoint
    /// (404 or 405: older GitLab versions cannot edit system hooks).
    pub async fn edit_system_hook(
        &self,
        id: u64,
        spec: &HookSpec,
    ) -> Result<Option<Hook>, SetupError> {
        let path = format!("/hooks/{id}");
        let resp = self
            .send(Method::PUT, &path, Some(&spec.body(true)))
            .await?;
        if resp.status == StatusCode::NOT_FOUND || resp.status == StatusCode::METHOD_NOT_ALLOWED {
            return Ok(None);
        }
        if !resp.status.is_success() {
            return Err(GitlabError::Status {
                method: Method::PUT,
                path,
                status: resp.status,
                body: resp.body_snippet(),
            }
            .into());
        }
        decode(&resp, &path).map(Some)
    }

    /// `DELETE /hooks/:id`.
    pub async fn delete_system_hook(&self, id: u64) -> Result<(), SetupError> {
        self.send_ok(Method::DELETE, &format!("/hooks/{id}"), None)
            .await?;
        Ok(())
    }

    /// `GET /projects/:id/hooks`; `project` is an id or `namespace/name`.
    pub async fn project_hooks(&self, project: &str) -> Result<Vec<Hook>, SetupError> {
        let path = format!("/projects/{}/hooks", project_ref(project));
        match self.get_all(&path).await? {
            Some(h) => Ok(h),
            None => Err(GitlabError::Status {
                method: Method::GET,
                path,
                status: StatusCode::NOT_FOUND,
                body: format!("project {project} not found (or not visible to the token's user)"),
            }
            .into()),
        }
    }

    /// `POST /projects/:id/hooks`.
    pub async fn add_project_hook(
        &self,
        project: &str,
        spec: &HookSpec,
    ) -> Result<Hook, SetupError> {
        let path = format!("/projects/{}/hooks", project_ref(project));
        let resp = self
            .send_ok(Method::POST, &path, Some(&spec.body(false)))
            .await?;
        decode(&resp, &path)
    }

    /// `PUT /projects/:id/hooks/:hook_id`.
    pub async fn edit_project_hook(
        &self,
        project: &str,
        hook_id: u64,
        spec: &HookSpec,
    ) -> Result<Hook, SetupError> {
        let path = format!("/projects/{}/hooks/{hook_id}", project_ref(project));
        let resp = self
            .send_ok(Method::PUT, &path, Some(&spec.body(false)))
            .await?;
        decode(&resp, &path)
    }

    /// The projects in `scope`, archived ones left out.
    pub async fn projects(&self, scope: &ProjectScope) -> Result<Vec<Project>, SetupError> {
        let projects: Vec<Project> = match scope {
            ProjectScope::Membership => self
                .get_all("/projects?membership=true&min_access_level=40&archived=false&simple=true")
                .await?
                .unwrap_or_default(),
            ProjectScope::Namespace(ns) => {
                let id = encode_path(ns.trim_matches('/'));
                let group = format!(
                    "/groups/{id}/projects?include_subgroups=true&archived=false&simple=true"
                );
                match self.get_all(&group).await? {
                    Some(p) => p,
                    None => self
                        .get_all(&format!("/users/{id}/projects?archived=false&simple=true"))
                        .await?
                        .ok_or_else(|| SetupError::NamespaceNotFound(ns.clone()))?,
                }
            }
        };
        Ok(projects.into_iter().filter(|p| !p.archived).collect())
    }
}

fn decode<T: DeserializeOwned>(resp: &crate::httpc::Response, path: &str) -> Result<T, SetupError> {
    resp.json().map_err(|source| {
        GitlabError::Decode {
            path: path.to_string(),
            source,
        }
        .into()
    })
}

/// Split the hooks with `url` into the one to keep and the duplicates.
fn matching(hooks: &[Hook], url: &str) -> (Option<u64>, Vec<u64>) {
    let mut ids = hooks.iter().filter(|h| same_url(&h.url, url)).map(|h| h.id);
    let first = ids.next();
    (first, ids.collect())
}

/// Make sure the system hook `spec` exists, once.
pub async fn ensure_system_hook(
    api: &GitlabApi,
    spec: &HookSpec,
) -> Result<HookOutcome, SetupError> {
    let hooks = api.system_hooks().await?;
    let (found, duplicates) = matching(&hooks, &spec.url);
    let Some(id) = found else {
        let h = api.add_system_hook(spec).await?;
        return Ok(HookOutcome {
            hook_id: h.id,
            change: Change::Created,
            duplicates,
        });
    };
    if let Some(h) = api.edit_system_hook(id, spec).await? {
        return Ok(HookOutcome {
            hook_id: h.id,
            change: Change::Updated,
            duplicates,
        });
    }
    api.delete_system_hook(id).await?;
    let h = api.add_system_hook(spec).await?;
    Ok(HookOutcome {
        hook_id: h.id,
        change: Change::Recreated,
        duplicates,
    })
}

/// Make sure `project` (an id or `namespace/name`) has a hook to `url`
/// with `token`, for push and tag-push events; never a second one. What
/// the hook server calls on a `project_create` system hook.
pub async fn ensure_project_hook(
    api: &GitlabApi,
    project: &str,
    url: &str,
    token: &Secret,
) -> Result<HookOutcome, SetupError> {
    let spec = HookSpec::pushes(url, token)?;
    ensure_project_hook_spec(api, project, &spec).await
}

async fn ensure_project_hook_spec(
    api: &GitlabApi,
    project: &str,
    spec: &HookSpec,
) -> Result<HookOutcome, SetupError> {
    let hooks = api.project_hooks(project).await?;
    let (found, duplicates) = matching(&hooks, &spec.url);
    let (hook, change) = match found {
        None => (api.add_project_hook(project, spec).await?, Change::Created),
        Some(id) => (
            api.edit_project_hook(project, id, spec).await?,
            Change::Updated,
        ),
    };
    Ok(HookOutcome {
        hook_id: hook.id,
        change,
        duplicates,
    })
}

/// What the hook server does with a `project_create` system hook: add the
/// project hook to the new project (`project`: its id or path) when
/// `gitlab.project_hook_url` is set and an API token is configured.
/// `Ok(None)` when either is missing (nothing to do). Errors say whether
/// they are worth retrying ([`SetupError::is_transient`]).
pub async fn on_project_create(
    cfg: &Config,
    http: crate::httpc::HttpClient,
    project: &str,
) -> Result<Option<HookOutcome>, SetupError> {
    if cfg.gitlab.project_hook_url.is_empty() {
        return Ok(None);
    }
    let Some(api) = GitlabApi::from_config(cfg, http) else {
        return Ok(None);
    };
    let token = cfg
        .secrets
        .webhook_token
        .as_ref()
        .ok_or(SetupError::NoWebhookToken)?;
    ensure_project_hook(&api, project, &cfg.gitlab.project_hook_url, token)
        .await
        .map(Some)
}

/// One project's result in [`add_project_hooks`].
#[derive(Debug)]
pub struct ProjectResult {
    pub project: String,
    pub outcome: Result<HookOutcome, SetupError>,
}

/// Ensure the project hook on every project in `scope`. One project's
/// failure (no permission, say) does not stop the others.
pub async fn add_project_hooks(
    api: &GitlabApi,
    scope: &ProjectScope,
    spec: &HookSpec,
) -> Result<Vec<ProjectResult>, SetupError> {
    use futures_util::StreamExt;
    let projects = api.projects(scope).await?;
    let results = futures_util::stream::iter(projects)
        .map(|p| async move {
            let outcome = ensure_project_hook_spec(api, &p.id.to_string(), spec).await;
            ProjectResult {
                project: p.path_with_namespace,
                outcome,
            }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    Ok(results)
}

/// The API client and the webhook token, as the setup commands need them.
pub fn setup_context(
    cfg: &Config,
    http: crate::httpc::HttpClient,
) -> Result<(GitlabApi, Secret), SetupError> {
    let api = GitlabApi::from_config(cfg, http).ok_or(GitlabError::NoToken)?;
    let token = cfg
        .secrets
        .webhook_token
        .clone()
        .ok_or(SetupError::NoWebhookToken)?;
    Ok((api, token))
}

/// The project hook URL: `--url`, else `gitlab.project_hook_url`.
pub fn project_hook_url(cfg: &Config, given: Option<&str>) -> Result<String, SetupError> {
    match given.map(str::trim).filter(|u| !u.is_empty()) {
        Some(u) => Ok(u.to_string()),
        None if !cfg.gitlab.project_hook_url.is_empty() => Ok(cfg.gitlab.project_hook_url.clone()),
        None => Err(SetupError::NoUrl),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_ids_stay_numbers_and_paths_are_encoded() {
        assert_eq!(project_ref("74"), "74");
        assert_eq!(project_ref("jsmith/storecloud"), "jsmith%2Fstorecloud");
        assert_eq!(project_ref("a/1"), "a%2F1");
    }

    #[test]
    fn urls_match_up_to_a_trailing_slash() {
        assert!(same_url(
            "https://g.example/hooks/gitlab/",
            "https://g.example/hooks/gitlab"
        ));
        assert!(!same_url(
            "https://g.example/hooks/gitlab",
            "http://g.example/hooks/gitlab"
        ));
    }

    #[test]
    fn first_matching_hook_is_kept_and_the_rest_are_duplicates() {
        let h = |id, url: &str| Hook {
            id,
            url: url.into(),
            push_events: true,
            tag_push_events: true,
            merge_requests_events: false,
            repository_update_events: false,
            enable_ssl_verification: true,
        };
        let hooks = [
            h(1, "https://other"),
            h(2, "https://me"),
            h(3, "https://me/"),
        ];
        assert_eq!(matching(&hooks, "https://me"), (Some(2), vec![3]));
        assert_eq!(matching(&hooks, "https://none"), (None, vec![]));
    }

    #[test]
    fn hook_spec_rejects_a_url_without_scheme() {
        let t = Secret::new("t");
        assert!(matches!(
            HookSpec::pushes("grader.example.edu/hooks", &t),
            Err(SetupError::BadUrl(_))
        ));
        let s = HookSpec::pushes("https://g/hooks/gitlab", &t).unwrap();
        let b = s.body(false);
        assert_eq!(b["push_events"], true);
        assert_eq!(b["tag_push_events"], true);
        assert!(b.get("repository_update_events").is_none());
        assert_eq!(s.body(true)["repository_update_events"], false);
    }
}
