//! Shared by the hook behaviour tests: a real hook server on 127.0.0.1:0
//! over a temp spool, real bare git repositories behind a file:// clone
//! URL template, GitLab's fixture payloads with their own headers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use labgrader::config::{Config, Secret};
use labgrader::event::Event;
use labgrader::httpc::{HttpClient, Response};
use labgrader::spool::{Spool, State};
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "gitlab-fixture-secret";
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gitlab");

pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("LABGRADER_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(FIXTURES))
}

/// A fixture body and its headers (`Header: value` per line).
pub fn fixture(name: &str) -> (Vec<u8>, Vec<(String, String)>) {
    let dir = fixtures_dir();
    let body = std::fs::read(dir.join(format!("{name}.json"))).unwrap();
    let headers = std::fs::read_to_string(dir.join(format!("{name}.headers")))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    (body, headers)
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

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.edu")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.edu")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A temp dir holding `spool/` and `repos/` (bare repositories).
pub struct World {
    pub dir: tempfile::TempDir,
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("repos")).unwrap();
        World { dir }
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    pub fn repos(&self) -> PathBuf {
        self.dir.path().join("repos")
    }

    /// Make a real bare repository `repos/<path>.git`.
    pub fn bare_repo(&self, path: &str) -> PathBuf {
        let p = self.repos().join(format!("{path}.git"));
        std::fs::create_dir_all(&p).unwrap();
        git(&p, &["init", "-q", "--bare"]);
        p
    }

    /// The config the tests use: file:// clone URLs into `repos/`, the
    /// fixture token, no GitLab API token (lookups by git ls-remote).
    pub fn config(&self) -> Config {
        let mut cfg = Config::default();
        cfg.spool.dir = self.spool_dir();
        cfg.gitlab.clone_url = format!("file://{}/{{path}}.git", self.repos().display());
        cfg.secrets.webhook_token = Some(Secret::new(TOKEN));
        cfg
    }
}

pub struct Server {
    pub addr: std::net::SocketAddr,
    pub spool: Arc<Spool>,
    pub stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    http: HttpClient,
}

impl Server {
    pub async fn start(cfg: Config) -> Server {
        let spool = Arc::new(Spool::open(&cfg.spool.dir).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(labgrader::hook::serve(
            Arc::new(cfg),
            spool.clone(),
            listener,
            stop.clone(),
        ));
        let server = Server {
            addr,
            spool,
            stop,
            task,
            http: HttpClient::new(),
        };
        // serve() prepares the spool before it accepts; wait for that.
        let r = server.get("/healthz").await;
        assert_eq!(r.status.as_u16(), 200);
        server
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Response {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.http
            .request(
                method,
                &self.url(path),
                &h,
                Some(body),
                Duration::from_secs(20),
            )
            .await
            .unwrap()
    }

    pub async fn post(&self, headers: &[(String, String)], body: Vec<u8>) -> Response {
        self.request(Method::POST, "/hooks/gitlab", headers, body)
            .await
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path, &[], vec![]).await
    }

    pub fn incoming(&self) -> Vec<String> {
        self.spool.list(State::Incoming).unwrap()
    }

    pub fn event(&self, job: &str) -> Event {
        Event::from_bytes(
            &self
                .spool
                .read(State::Incoming, &format!("{job}.json"))
                .unwrap(),
        )
        .unwrap()
    }
}

pub fn text(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).trim().to_string()
}

/// The job id of a 202 answer.
pub fn job_of(r: &Response) -> String {
    assert_eq!(r.status.as_u16(), 202, "{}", text(r));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["job_id"].as_str().unwrap().to_string()
}

/// A small local server answering GitLab's `GET /api/v4/projects/:id` as
/// GitLab's REST docs say: `:id` is a number or the URL-encoded
/// `namespace/name`; `PRIVATE-TOKEN` required (401 otherwise); 404
/// `{"message":"404 Project Not Found"}` for unknown projects.
pub struct GitlabApiServer {
    pub url: String,
    pub projects: Arc<std::sync::Mutex<Vec<String>>>,
    /// Every request path seen, in order.
    pub seen: Arc<std::sync::Mutex<Vec<String>>>,
    stop: CancellationToken,
}

pub const API_TOKEN: &str = "glpat-test-token";

impl GitlabApiServer {
    pub async fn start(projects: &[&str]) -> GitlabApiServer {
        use http_body_util::Full;
        use hyper::{Request, Response, StatusCode};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let projects = Arc::new(std::sync::Mutex::new(
            projects.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        ));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (p2, s2, st) = (projects.clone(), seen.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = st.cancelled() => return,
                    r = listener.accept() => r.unwrap(),
                };
                let (p3, s3) = (p2.clone(), s2.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: Request<hyper::body::Incoming>| {
                            let (projects, seen) = (p3.clone(), s3.clone());
                            async move {
                                let path = req.uri().path().to_string();
                                seen.lock().unwrap().push(path.clone());
                                let json = |status: StatusCode, v: serde_json::Value| {
                                    let mut r =
                                        Response::new(Full::new(bytes::Bytes::from(v.to_string())));
                                    *r.status_mut() = status;
                                    r.headers_mut().insert(
                                        "content-type",
                                        "application/json".parse().unwrap(),
                                    );
                                    Ok::<_, std::convert::Infallible>(r)
                                };
                                if req.headers().get("private-token").map(|v| v.as_bytes())
                                    != Some(API_TOKEN.as_bytes())
                                {
                                    return json(
                                        StatusCode::UNAUTHORIZED,
                                        serde_json::json!({"message": "401 Unauthorized"}),
                                    );
                                }
                                let Some(id) = path.strip_prefix("/api/v4/projects/") else {
                                    return json(
                                        StatusCode::NOT_FOUND,
                                        serde_json::json!({"error": "404 Not Found"}),
                                    );
                                };
                                let id = percent_decode(id);
                                let list = projects.lock().unwrap();
                                match list.iter().position(|p| {
                                    *p == id
                                        || (1000 + list.iter().position(|q| q == p).unwrap())
                                            .to_string()
                                            == id
                                }) {
                                    Some(i) => json(
                                        StatusCode::OK,
                                        serde_json::json!({
                                            "id": 1000 + i, "path_with_namespace": list[i],
                                            "name": list[i].rsplit('/').next(), "default_branch": "main",
                                            "http_url_to_repo": format!("http://gitlab.test/{}.git", list[i]),
                                            "visibility": "private"
                                        }),
                                    ),
                                    None => json(
                                        StatusCode::NOT_FOUND,
                                        serde_json::json!({"message": "404 Project Not Found"}),
                                    ),
                                }
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        GitlabApiServer {
            url,
            projects,
            seen,
            stop,
        }
    }

    pub fn add(&self, path: &str) {
        self.projects.lock().unwrap().push(path.to_string());
    }

    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for GitlabApiServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn percent_decode(s: &str) -> String {
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
