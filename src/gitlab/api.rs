//! The GitLab API client: base URL, `PRIVATE-TOKEN` header, the mapping
//! of GitLab's answers to [`GitlabError`], and the typed calls (users,
//! project members, projects). It never logs the token and never retries
//! by itself; hook setup is [`super::hooks`]'s.

use std::time::Duration;

use hyper::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::config::{Config, Secret};
use crate::httpc::{HttpClient, HttpError, Response};

#[derive(Debug, thiserror::Error)]
pub enum GitlabError {
    #[error("no GitLab API token configured; set gitlab.token_file or LABGRADER_GITLAB_TOKEN")]
    NoToken,
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("GitLab answered {status} to {method} {path}: {body}")]
    Status {
        method: Method,
        path: String,
        status: StatusCode,
        body: String,
    },
    #[error("GitLab's answer to {path} is not the expected JSON: {source}")]
    Decode {
        path: String,
        source: serde_json::Error,
    },
}

impl GitlabError {
    /// Worth trying again later (network trouble, 429, 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            GitlabError::Http(_) => true,
            GitlabError::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
            }
            _ => false,
        }
    }
}

/// Client for one GitLab instance.
#[derive(Debug, Clone)]
pub struct GitlabApi {
    base: String,
    token: Secret,
    timeout: Duration,
    http: HttpClient,
}

/// `namespace/name` as one path segment, as GitLab's `:id` accepts it.
/// Kept by hand: no percent-encoding crate is in Cargo.toml, and this is
/// the RFC 3986 unreserved set in six lines.
pub fn encode_path(path: &str) -> String {
    let mut s = String::with_capacity(path.len() + 8);
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

impl GitlabApi {
    /// `None` when no token is configured (the API is then not used).
    pub fn from_config(cfg: &Config, http: HttpClient) -> Option<GitlabApi> {
        let token = cfg.secrets.gitlab_token.clone()?;
        Some(GitlabApi {
            base: format!("{}/api/v4", cfg.gitlab.url.trim_end_matches('/')),
            token,
            timeout: cfg.gitlab.api_timeout.get(),
            http,
        })
    }

    pub fn with_timeout(mut self, timeout: Duration) -> GitlabApi {
        self.timeout = timeout;
        self
    }

    /// Send a request to `path` (below `/api/v4`, starting with `/`).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response, GitlabError> {
        let url = format!("{}{}", self.base, path);
        let body = body.map(|b| serde_json::to_vec(b).expect("json value serializes"));
        let mut headers = vec![("PRIVATE-TOKEN", self.token.expose())];
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        Ok(self
            .http
            .request(method, &url, &headers, body, self.timeout)
            .await?)
    }

    /// Send and require a 2xx answer.
    pub async fn send_ok(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response, GitlabError> {
        let resp = self.send(method.clone(), path, body).await?;
        if !resp.status.is_success() {
            return Err(GitlabError::Status {
                method,
                path: path.to_string(),
                status: resp.status,
                body: resp.body_snippet(),
            });
        }
        Ok(resp)
    }

    /// GET and decode; `Ok(None)` on 404.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, GitlabError> {
        let resp = self.send(Method::GET, path, None).await?;
        if resp.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status.is_success() {
            return Err(GitlabError::Status {
                method: Method::GET,
                path: path.to_string(),
                status: resp.status,
                body: resp.body_snippet(),
            });
        }
        resp.json().map(Some).map_err(|source| GitlabError::Decode {
            path: path.to_string(),
            source,
        })
    }
}

// --- Users by username (issue #7: manifest authors). Self-contained block. ---

/// One user as `GET /users?username=NAME` lists it. `email` is only
/// present for admin tokens; `public_email` when the user made it public.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct DirectoryUser {
    pub id: u64,
    pub username: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub public_email: Option<String>,
}

impl GitlabApi {
    /// The user whose username is `username` (GitLab compares without
    /// case), or `None`. The name is URL-encoded; callers should still
    /// only pass well-formed usernames.
    pub async fn find_user_by_username(
        &self,
        username: &str,
    ) -> Result<Option<DirectoryUser>, GitlabError> {
        let path = format!("/users?username={}", encode_path(username));
        let users: Vec<DirectoryUser> = self.get_json(&path).await?.unwrap_or_default();
        Ok(users
            .into_iter()
            .find(|u| u.username.eq_ignore_ascii_case(username)))
    }
}

/// The fields of GitLab's user record (`GET /users/:id`) that labgrader uses.
/// `email` is only shown to admins; `public_email` to everyone.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct GitlabUser {
    pub id: u64,
    pub username: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub public_email: Option<String>,
}

impl GitlabUser {
    /// The address the user made public on GitLab (`public_email`), if any.
    /// The private `email` (shown to admin tokens) is never used: mail
    /// sent there, or copied to others, would reveal an address the user
    /// chose to hide.
    pub fn public_address(&self) -> Option<&str> {
        self.public_email
            .as_deref()
            .map(str::trim)
            .filter(|e| e.contains('@'))
    }
}

impl GitlabApi {
    /// `GET /users/:id`; `Ok(None)` when GitLab knows no such user.
    pub async fn user(&self, id: u64) -> Result<Option<GitlabUser>, GitlabError> {
        self.get_json(&format!("/users/{id}")).await
    }
}
// --- Project members (issue #14: manifest authors are verified). ---

/// GitLab's access level of a Developer: a member at this level or above
/// can push to the project.
pub const DEVELOPER_ACCESS: u32 = 30;
/// Members read per page, and the most pages followed (5 000 members).
const MEMBERS_PER_PAGE: u32 = 100;
const MEMBERS_MAX_PAGES: u32 = 50;

/// One member as `GET /projects/:id/members/all` lists it (direct and
/// inherited members; no email addresses).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ProjectMember {
    pub id: u64,
    pub username: String,
    #[serde(default)]
    pub name: Option<String>,
    /// `active`, `blocked`, ...
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub access_level: u32,
}

impl ProjectMember {
    /// An active member who can push to the project (Developer or above).
    /// Inherited Guests and Reporters (a course group that lets every
    /// student see every project) do not make a classmate a co-author.
    pub fn can_push(&self) -> bool {
        self.access_level >= DEVELOPER_ACCESS && self.state.as_deref().is_none_or(|s| s == "active")
    }
}

impl GitlabApi {
    /// Every member of the project (`id` or `namespace/name`), direct and
    /// inherited, following `X-Next-Page`. `Ok(None)` when GitLab says 404.
    pub async fn project_members(
        &self,
        project: &str,
    ) -> Result<Option<Vec<ProjectMember>>, GitlabError> {
        let base = format!("/projects/{}/members/all", encode_path(project));
        let mut all = Vec::new();
        let mut page: u32 = 1;
        while page <= MEMBERS_MAX_PAGES {
            let path = format!("{base}?per_page={MEMBERS_PER_PAGE}&page={page}");
            let resp = self.send(Method::GET, &path, None).await?;
            if resp.status == StatusCode::NOT_FOUND && page == 1 {
                return Ok(None);
            }
            if !resp.status.is_success() {
                return Err(GitlabError::Status {
                    method: Method::GET,
                    path,
                    status: resp.status,
                    body: resp.body_snippet(),
                });
            }
            let items: Vec<ProjectMember> = resp
                .json()
                .map_err(|source| GitlabError::Decode { path, source })?;
            let n = items.len() as u32;
            all.extend(items);
            let next = match resp.headers.get("x-next-page") {
                Some(v) => v.to_str().ok().and_then(|s| s.trim().parse::<u32>().ok()),
                None if n >= MEMBERS_PER_PAGE => Some(page + 1),
                None => None,
            };
            match next {
                Some(next) if next > page => page = next,
                _ => break,
            }
        }
        Ok(Some(all))
    }
}

/// The fields of GitLab's project object labgrader reads
/// (`GET /projects/:id`; unknown fields are ignored).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ProjectInfo {
    pub id: u64,
    pub path_with_namespace: String,
    #[serde(default)]
    pub default_branch: Option<String>,
    #[serde(default)]
    pub http_url_to_repo: Option<String>,
    /// `true` while the repository has no commit (GitLab 14.1+ still names
    /// a `default_branch` then); absent from older answers.
    #[serde(default)]
    pub empty_repo: Option<bool>,
}

impl GitlabApi {
    /// `GET /projects/:id` by `namespace/name` path; `Ok(None)` when GitLab
    /// says 404 (no such project, or the token may not see it).
    pub async fn project(&self, path: &str) -> Result<Option<ProjectInfo>, GitlabError> {
        self.get_json(&format!("/projects/{}", encode_path(path)))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_encoded_as_one_segment() {
        assert_eq!(encode_path("root/lab1-test"), "root%2Flab1-test");
        assert_eq!(encode_path("a b/c"), "a%20b%2Fc");
    }
}
