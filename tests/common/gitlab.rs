//! GitLab as the tests see it: the fixture payloads under
//! `tests/fixtures/gitlab` with the headers GitLab sent them with, push and
//! system-hook bodies made to measure, the fixture headers made ready to
//! post (our token, a fresh delivery key), and a small project API on
//! loopback that answers as GitLab's REST docs say. It never talks to a
//! real GitLab.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::http::{Answer, Seen, TestServer};

/// The webhook token (`X-Gitlab-Token`) the hook tests configure.
pub const TOKEN: &str = "gitlab-fixture-secret";
/// GitLab's own payloads, each `NAME.json` beside `NAME.headers`.
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gitlab");

/// [`FIXTURES`], or the directory `LABGRADER_FIXTURES` names.
pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("LABGRADER_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(FIXTURES))
}

/// A fixture body and its headers (`Header: value` per line).
pub fn fixture(name: &str) -> (Vec<u8>, Vec<(String, String)>) {
    let body = std::fs::read(fixtures_dir().join(format!("{name}.json"))).unwrap();
    (body, fixture_headers(name))
}

/// The headers GitLab sent fixture `name` with (`name.headers`).
pub fn fixture_headers(name: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(fixtures_dir().join(format!("{name}.headers")))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// A fixture file (name with its extension) parsed as JSON.
pub fn fixture_json(file: &str) -> serde_json::Value {
    let dir = fixtures_dir();
    let text = std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("fixture {file} in {}: {e}", dir.display()));
    serde_json::from_str(&text).unwrap()
}

/// `headers` (a fixture's, say) ready to post: `X-Gitlab-Token` set to
/// `token` and `Idempotency-Key` to `key`, whatever they were. Panics
/// unless they name the GitLab event `event`.
pub fn headers_for_post(
    headers: Vec<(String, String)>,
    event: &str,
    token: &str,
    key: &str,
) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = headers
        .into_iter()
        .filter(|(k, _)| {
            !k.eq_ignore_ascii_case("X-Gitlab-Token") && !k.eq_ignore_ascii_case("Idempotency-Key")
        })
        .collect();
    assert!(
        header(&headers, "X-Gitlab-Event") == Some(event),
        "fixture headers name {event}"
    );
    headers.push(("X-Gitlab-Token".into(), token.into()));
    headers.push(("Idempotency-Key".into(), key.into()));
    headers
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Headers of a project push hook with the fixture token.
pub fn push_headers(event: &str, key: &str) -> Vec<(String, String)> {
    vec![
        ("Content-Type".into(), "application/json".into()),
        ("X-Gitlab-Event".into(), event.into()),
        ("X-Gitlab-Token".into(), TOKEN.into()),
        ("Idempotency-Key".into(), key.into()),
    ]
}

/// A project-hook push body.
pub fn push_body(path: &str, git_ref: &str, before: &str, after: &str) -> Vec<u8> {
    let kind = if git_ref.starts_with("refs/tags/") {
        "tag_push"
    } else {
        "push"
    };
    let name = path.rsplit('/').next().unwrap();
    serde_json::to_vec(&serde_json::json!({
        "object_kind": kind, "event_name": kind,
        "before": before, "after": after, "ref": git_ref, "checkout_sha": after,
        "user_id": 7, "user_name": "Ada Student", "user_username": "ada", "user_email": "",
        "project_id": 99,
        "project": {"id": 99, "name": name, "path_with_namespace": path,
                    "git_http_url": format!("http://gitlab.test/{path}.git")},
        "commits": [], "total_commits_count": 0
    }))
    .unwrap()
}

/// A repository_update system hook body for `changes` (before, after, ref).
pub fn repository_update_body(path: &str, changes: &[(&str, &str, &str)]) -> Vec<u8> {
    let ch: Vec<_> = changes
        .iter()
        .map(|(b, a, r)| serde_json::json!({"before": b, "after": a, "ref": r}))
        .collect();
    let refs: Vec<_> = changes.iter().map(|c| c.2).collect();
    serde_json::to_vec(&serde_json::json!({
        "event_name": "repository_update", "user_id": 7, "user_name": "Ada Student",
        "user_email": "ada@example.edu", "project_id": 99,
        "project": {"name": "x", "path_with_namespace": path},
        "changes": ch, "refs": refs
    }))
    .unwrap()
}

pub fn sha(n: u32) -> String {
    format!("{n:040x}")
}

/// A small local server answering GitLab's `GET /api/v4/projects/:id` as
/// GitLab's REST docs say: `:id` is a number or the URL-encoded
/// `namespace/name`; `PRIVATE-TOKEN` required (401 otherwise); 404
/// `{"message":"404 Project Not Found"}` for unknown projects.
pub struct GitlabApiServer {
    pub url: String,
    pub projects: Arc<Mutex<Vec<String>>>,
    server: TestServer,
}

pub const API_TOKEN: &str = "glpat-test-token";

impl GitlabApiServer {
    pub async fn start(projects: &[&str]) -> GitlabApiServer {
        let projects = Arc::new(Mutex::new(
            projects.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        ));
        let list = projects.clone();
        let server = TestServer::start(Arc::new(move |req: &Seen, _| {
            project_answer(&list.lock().unwrap(), req)
        }))
        .await;
        GitlabApiServer {
            url: server.url(""),
            projects,
            server,
        }
    }

    pub fn add(&self, path: &str) {
        self.projects.lock().unwrap().push(path.to_string());
    }

    /// Every request path seen, in order.
    pub fn seen(&self) -> Vec<String> {
        self.server.requests().into_iter().map(|r| r.path).collect()
    }
}

/// The answer to `GET /api/v4/projects/:id` from `list` (project `i` has
/// the id `1000 + i`).
fn project_answer(list: &[String], req: &Seen) -> Answer {
    let json = |status: u16, v: serde_json::Value| {
        (
            status,
            vec![("content-type", "application/json".to_string())],
            v.to_string(),
        )
    };
    if req.header("private-token") != Some(API_TOKEN) {
        return json(401, serde_json::json!({"message": "401 Unauthorized"}));
    }
    let Some(id) = req.path.strip_prefix("/api/v4/projects/") else {
        return json(404, serde_json::json!({"error": "404 Not Found"}));
    };
    let id = percent_decode(id);
    match list
        .iter()
        .enumerate()
        .position(|(i, p)| *p == id || (1000 + i).to_string() == id)
    {
        Some(i) => json(
            200,
            serde_json::json!({
                "id": 1000 + i, "path_with_namespace": list[i],
                "name": list[i].rsplit('/').next(), "default_branch": "main",
                "http_url_to_repo": format!("http://gitlab.test/{}.git", list[i]),
                "visibility": "private"
            }),
        ),
        None => json(404, serde_json::json!({"message": "404 Project Not Found"})),
    }
}

/// `%XX` escapes decoded (as in a URL path segment or a query value);
/// a malformed escape is kept as it is.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
