//! `labgrader gitlab install-system-hook` / `add-project-hooks` and
//! `gitlab::ensure_project_hook` against a local GitLab-like API server: a
//! small hyper server in this file that answers as GitLab's REST API docs
//! say (system hooks, project hooks, project lists with `page`/`per_page`
//! and `X-Next-Page`, 401/403/404 messages) and records every request. The
//! CLI tests drive the real binary.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::gitlab::percent_decode;
use common::http::{Seen, TestServer};
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use serde_json::{Value, json};

const API_TOKEN: &str = "glpat-test-token";
const WEBHOOK_TOKEN: &str = "webhook-secret-123";
const HOOK_URL: &str = "https://grader.example.edu/hooks/gitlab";

#[derive(Debug, Clone)]
struct Recorded {
    method: Method,
    path: String,
    query: BTreeMap<String, String>,
    private_token: Option<String>,
    body: Value,
}

#[derive(Debug, Clone)]
struct FakeProject {
    id: u64,
    path: String,
    /// Member with maintainer rights (listed by `membership=true`).
    member: bool,
    /// Hook calls on it answer 403.
    forbidden: bool,
}

#[derive(Default)]
struct Fake {
    projects: Vec<FakeProject>,
    project_hooks: BTreeMap<u64, Vec<Value>>,
    system_hooks: Vec<Value>,
    next_hook_id: u64,
    requests: Vec<Recorded>,
    /// Answer PUT /hooks/:id with 404, as GitLab before system-hook updates.
    no_system_hook_put: bool,
    /// Leave out X-Next-Page and friends (GitLab does for huge lists).
    no_pagination_headers: bool,
    /// Top-level namespaces that are users, not groups.
    users: Vec<String>,
    /// A broken proxy: X-Next-Page always names page 1.
    stuck_next_page: bool,
    /// A proxy's HTML error page instead of GitLab's JSON.
    html_answers: bool,
}

type Shared = Arc<Mutex<Fake>>;

fn with_projects(projects: Vec<FakeProject>) -> Fake {
    Fake {
        projects,
        ..Fake::default()
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(v).unwrap())))
        .unwrap()
}

fn message(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "message": msg }))
}

/// What GitLab returns for a hook: everything but the token.
fn public(hook: &Value) -> Value {
    let mut h = hook.clone();
    h.as_object_mut().unwrap().remove("token");
    h
}

fn paginate(
    fake: &Fake,
    items: Vec<Value>,
    query: &BTreeMap<String, String>,
) -> Response<Full<Bytes>> {
    let per_page: usize = query
        .get("per_page")
        .map(|v| v.parse().unwrap())
        .unwrap_or(20)
        .min(100);
    let page: usize = query.get("page").map(|v| v.parse().unwrap()).unwrap_or(1);
    let total = items.len();
    let pages = total.div_ceil(per_page).max(1);
    let slice: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    let mut b = Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/json");
    if !fake.no_pagination_headers {
        let next = if fake.stuck_next_page {
            "1".to_string()
        } else if page < pages {
            (page + 1).to_string()
        } else {
            String::new()
        };
        b = b
            .header("X-Page", page.to_string())
            .header("X-Per-Page", per_page.to_string())
            .header("X-Next-Page", next)
            .header("X-Total", total.to_string())
            .header("X-Total-Pages", pages.to_string());
    }
    b.body(Full::new(Bytes::from(serde_json::to_vec(&slice).unwrap())))
        .unwrap()
}

fn project_json(p: &FakeProject) -> Value {
    json!({
        "id": p.id,
        "name": p.path.rsplit('/').next().unwrap(),
        "path_with_namespace": p.path,
        "archived": false,
    })
}

fn find_project(fake: &Fake, id: &str) -> Option<FakeProject> {
    let id = percent_decode(id);
    fake.projects
        .iter()
        .find(|p| p.id.to_string() == id || p.path == id)
        .cloned()
}

fn hook_from_body(id: u64, body: &Value, system: bool) -> Value {
    let mut h = json!({
        "id": id,
        "url": body["url"],
        "token": body.get("token").cloned().unwrap_or(Value::Null),
        "created_at": "2026-11-22T03:00:00.000Z",
        "push_events": body.get("push_events").cloned().unwrap_or(json!(!system)),
        "tag_push_events": body.get("tag_push_events").cloned().unwrap_or(json!(false)),
        "merge_requests_events": body.get("merge_requests_events").cloned().unwrap_or(json!(false)),
        "enable_ssl_verification": body.get("enable_ssl_verification").cloned().unwrap_or(json!(true)),
    });
    if system {
        h["repository_update_events"] = body
            .get("repository_update_events")
            .cloned()
            .unwrap_or(json!(true));
    }
    h
}

fn update_hook(h: &mut Value, body: &Value) {
    for (k, v) in body.as_object().unwrap() {
        h[k] = v.clone();
    }
}

fn handle(fake: &Shared, rec: Recorded) -> Response<Full<Bytes>> {
    let mut f = fake.lock().unwrap();
    f.requests.push(rec.clone());
    if rec.private_token.as_deref() != Some(API_TOKEN) {
        return message(StatusCode::UNAUTHORIZED, "401 Unauthorized");
    }
    if f.html_answers {
        return Response::builder()
            .status(StatusCode::OK)
            .header("Content-Type", "text/html")
            .body(Full::new(Bytes::from_static(b"<html>Sign in</html>")))
            .unwrap();
    }
    let Some(rest) = rec.path.strip_prefix("/api/v4/") else {
        return message(StatusCode::NOT_FOUND, "404 Not Found");
    };
    let seg: Vec<&str> = rest.split('/').collect();
    let m = &rec.method;
    match (m.as_str(), seg.as_slice()) {
        ("GET", ["hooks"]) => {
            let items = f.system_hooks.iter().map(public).collect();
            paginate(&f, items, &rec.query)
        }
        ("POST", ["hooks"]) => {
            if rec.body.get("url").and_then(Value::as_str).is_none() {
                return message(StatusCode::BAD_REQUEST, "400 Bad request - url is missing");
            }
            f.next_hook_id += 1;
            let h = hook_from_body(f.next_hook_id, &rec.body, true);
            f.system_hooks.push(h.clone());
            json_response(StatusCode::CREATED, &public(&h))
        }
        ("PUT", ["hooks", id]) => {
            if f.no_system_hook_put {
                return message(StatusCode::NOT_FOUND, "404 Not Found");
            }
            let id: u64 = id.parse().unwrap();
            match f.system_hooks.iter_mut().find(|h| h["id"] == id) {
                Some(h) => {
                    update_hook(h, &rec.body);
                    let p = public(h);
                    json_response(StatusCode::OK, &p)
                }
                None => message(StatusCode::NOT_FOUND, "404 Not found"),
            }
        }
        ("DELETE", ["hooks", id]) => {
            let id: u64 = id.parse().unwrap();
            f.system_hooks.retain(|h| h["id"] != id);
            Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(Full::new(Bytes::new()))
                .unwrap()
        }
        ("GET", ["projects"]) => {
            let membership = rec.query.get("membership").map(String::as_str) == Some("true");
            let items = f
                .projects
                .iter()
                .filter(|p| !membership || p.member)
                .map(project_json)
                .collect();
            paginate(&f, items, &rec.query)
        }
        ("GET", ["groups", id, "projects"]) => {
            let group = percent_decode(id);
            let subgroups = rec.query.get("include_subgroups").map(String::as_str) == Some("true");
            let in_group = |p: &FakeProject| {
                let ns = p.path.rsplit_once('/').unwrap().0;
                ns == group || (subgroups && ns.starts_with(&format!("{group}/")))
            };
            let top = group.split('/').next().unwrap().to_string();
            if f.users.contains(&top)
                || !f
                    .projects
                    .iter()
                    .any(|p| p.path.starts_with(&format!("{group}/")))
            {
                return message(StatusCode::NOT_FOUND, "404 Group Not Found");
            }
            let items = f
                .projects
                .iter()
                .filter(|p| in_group(p))
                .map(project_json)
                .collect();
            paginate(&f, items, &rec.query)
        }
        ("GET", ["users", id, "projects"]) => {
            let user = percent_decode(id);
            let items: Vec<Value> = f
                .projects
                .iter()
                .filter(|p| p.path.rsplit_once('/').unwrap().0 == user)
                .map(project_json)
                .collect();
            if !f.users.contains(&user) {
                return message(StatusCode::NOT_FOUND, "404 User Not Found");
            }
            paginate(&f, items, &rec.query)
        }
        (_, ["projects", id, "hooks", rest @ ..]) => {
            let Some(p) = find_project(&f, id) else {
                return message(StatusCode::NOT_FOUND, "404 Project Not Found");
            };
            if p.forbidden {
                return message(StatusCode::FORBIDDEN, "403 Forbidden");
            }
            match (m.as_str(), rest) {
                ("GET", []) => {
                    let items = f
                        .project_hooks
                        .get(&p.id)
                        .map(|v| v.iter().map(public).collect())
                        .unwrap_or_default();
                    paginate(&f, items, &rec.query)
                }
                ("POST", []) => {
                    f.next_hook_id += 1;
                    let mut h = hook_from_body(f.next_hook_id, &rec.body, false);
                    h["project_id"] = json!(p.id);
                    f.project_hooks.entry(p.id).or_default().push(h.clone());
                    json_response(StatusCode::CREATED, &public(&h))
                }
                ("PUT", [hid]) => {
                    let hid: u64 = hid.parse().unwrap();
                    let hooks = f.project_hooks.entry(p.id).or_default();
                    match hooks.iter_mut().find(|h| h["id"] == hid) {
                        Some(h) => {
                            update_hook(h, &rec.body);
                            let p = public(h);
                            json_response(StatusCode::OK, &p)
                        }
                        None => message(StatusCode::NOT_FOUND, "404 Not found"),
                    }
                }
                _ => message(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed"),
            }
        }
        _ => message(StatusCode::NOT_FOUND, "404 Not Found"),
    }
}

/// Serve `fake` on loopback for as long as the test's runtime runs.
async fn start(fake: Shared) -> SocketAddr {
    let server = TestServer::start_with(Arc::new(move |req: &Seen, _| {
        let query = req
            .query
            .split('&')
            .filter(|s| !s.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_string(), percent_decode(v))
            })
            .collect();
        let body = if req.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&req.body).expect("request body is JSON")
        };
        let rec = Recorded {
            method: Method::from_bytes(req.method.as_bytes()).unwrap(),
            path: req.path.clone(),
            query,
            private_token: req.header("private-token").map(str::to_string),
            body,
        };
        handle(&fake, rec)
    }))
    .await;
    server.addr
}

struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    fake: Shared,
    addr: SocketAddr,
}

async fn setup(fake: Fake, project_hook_url: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("webhook-token"),
        format!("{WEBHOOK_TOKEN}\n"),
    )
    .unwrap();
    std::fs::write(dir.path().join("gitlab-token"), API_TOKEN).unwrap();
    let fake = Arc::new(Mutex::new(fake));
    let addr = start(fake.clone()).await;
    let config = dir.path().join("labgrader.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nwebhook_token_file = \"{}\"\n[spool]\ndir = \"{}\"\n\
             [gitlab]\nurl = \"http://{addr}\"\ntoken_file = \"{}\"\nproject_hook_url = \"{project_hook_url}\"\n",
            dir.path().join("webhook-token").display(),
            dir.path().join("spool").display(),
            dir.path().join("gitlab-token").display(),
        ),
    )
    .unwrap();
    Setup {
        _dir: dir,
        config,
        fake,
        addr,
    }
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn labgrader(s: &Setup, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_labgrader"))
        .arg("--config")
        .arg(&s.config)
        .args(args)
        .env_remove("LABGRADER_GITLAB_TOKEN")
        .env_remove("LABGRADER_WEBHOOK_TOKEN")
        .output()
        .await
        .unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

fn projects(n: u64, ns: &str) -> Vec<FakeProject> {
    (1..=n)
        .map(|i| FakeProject {
            id: 1000 + i,
            path: format!("{ns}/student{i:03}"),
            member: true,
            forbidden: false,
        })
        .collect()
}

fn requests(s: &Setup) -> Vec<Recorded> {
    s.fake.lock().unwrap().requests.clone()
}

fn clear_requests(s: &Setup) {
    s.fake.lock().unwrap().requests.clear();
}

fn count(reqs: &[Recorded], method: &str, path_prefix: &str) -> usize {
    reqs.iter()
        .filter(|r| r.method == method && r.path.starts_with(path_prefix))
        .count()
}

#[tokio::test]
async fn install_system_hook_registers_token_and_push_events_once() {
    let s = setup(Fake::default(), "").await;
    let r = labgrader(&s, &["gitlab", "install-system-hook", "--url", HOOK_URL]).await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("created hook"), "{}", r.stdout);

    let reqs = requests(&s);
    assert!(
        reqs.iter()
            .all(|r| r.private_token.as_deref() == Some(API_TOKEN))
    );
    let posts: Vec<&Recorded> = reqs.iter().filter(|r| r.method == Method::POST).collect();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].path, "/api/v4/hooks");
    let b = &posts[0].body;
    assert_eq!(b["url"], HOOK_URL);
    assert_eq!(b["token"], WEBHOOK_TOKEN, "the webhook secret, trimmed");
    assert_eq!(b["push_events"], true);
    assert_eq!(b["tag_push_events"], true);
    assert_eq!(b["repository_update_events"], false);
    assert_eq!(b["merge_requests_events"], false);
    assert_eq!(b["enable_ssl_verification"], true);

    // Second run: no new hook; the existing one is updated in place.
    clear_requests(&s);
    let r = labgrader(&s, &["gitlab", "install-system-hook", "--url", HOOK_URL]).await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("updated hook"), "{}", r.stdout);
    let reqs = requests(&s);
    assert_eq!(count(&reqs, "POST", "/"), 0);
    assert_eq!(count(&reqs, "PUT", "/api/v4/hooks/1"), 1);
    assert_eq!(s.fake.lock().unwrap().system_hooks.len(), 1);
}

#[tokio::test]
async fn install_system_hook_fixes_events_of_an_existing_hook_and_leaves_others_alone() {
    let fake = Fake {
        next_hook_id: 2,
        system_hooks: vec![
            json!({"id": 1, "url": "https://other.example/hook", "token": "x",
               "push_events": true, "tag_push_events": false,
               "repository_update_events": true, "enable_ssl_verification": true}),
            json!({"id": 2, "url": format!("{HOOK_URL}/"), "token": "old",
               "push_events": false, "tag_push_events": false,
               "repository_update_events": true, "enable_ssl_verification": false}),
        ],
        ..Fake::default()
    };
    let s = setup(fake, "").await;
    let r = labgrader(&s, &["gitlab", "install-system-hook", "--url", HOOK_URL]).await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    let f = s.fake.lock().unwrap();
    assert_eq!(f.system_hooks.len(), 2);
    assert_eq!(f.system_hooks[0]["token"], "x", "another hook was touched");
    let ours = &f.system_hooks[1];
    assert_eq!(ours["token"], WEBHOOK_TOKEN);
    assert_eq!(ours["push_events"], true);
    assert_eq!(ours["tag_push_events"], true);
    assert_eq!(ours["repository_update_events"], false);
    assert_eq!(ours["enable_ssl_verification"], true);
}

#[tokio::test]
async fn old_gitlab_without_system_hook_update_gets_the_hook_recreated() {
    let fake = Fake {
        no_system_hook_put: true,
        ..Fake::default()
    };
    let s = setup(fake, "").await;
    assert!(
        labgrader(&s, &["gitlab", "install-system-hook", "--url", HOOK_URL])
            .await
            .ok
    );
    let r = labgrader(&s, &["gitlab", "install-system-hook", "--url", HOOK_URL]).await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("recreated hook 2"), "{}", r.stdout);
    let f = s.fake.lock().unwrap();
    assert_eq!(f.system_hooks.len(), 1);
    assert_eq!(f.system_hooks[0]["id"], 2);
}

#[tokio::test]
async fn system_hook_without_push_events_for_the_project_hook_layout() {
    let s = setup(Fake::default(), "").await;
    let r = labgrader(
        &s,
        &[
            "gitlab",
            "install-system-hook",
            "--url",
            HOOK_URL,
            "--no-push-events",
        ],
    )
    .await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    let f = s.fake.lock().unwrap();
    assert_eq!(f.system_hooks[0]["push_events"], false);
    assert_eq!(f.system_hooks[0]["tag_push_events"], false);
}

#[tokio::test]
async fn add_project_hooks_follows_pagination_and_adds_no_duplicates() {
    let mut fake = with_projects(projects(230, "course"));
    fake.projects.push(FakeProject {
        id: 9,
        path: "someone/not-mine".into(),
        member: false,
        forbidden: false,
    });
    let s = setup(fake, HOOK_URL).await;
    let r = labgrader(&s, &["gitlab", "add-project-hooks"]).await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("230 projects: 230 hooks created, 0 updated, 0 failed"),
        "{}",
        r.stdout
    );
    let reqs = requests(&s);
    let pages: Vec<&str> = reqs
        .iter()
        .filter(|r| r.path == "/api/v4/projects")
        .map(|r| {
            assert_eq!(r.query["membership"], "true");
            assert_eq!(r.query["per_page"], "100");
            r.query["page"].as_str()
        })
        .collect();
    assert_eq!(pages, ["1", "2", "3"]);
    assert!(
        reqs.iter()
            .all(|r| r.private_token.as_deref() == Some(API_TOKEN))
    );
    let post = reqs
        .iter()
        .find(|r| r.method == Method::POST)
        .expect("a POST");
    assert!(
        post.path.starts_with("/api/v4/projects/10"),
        "{}",
        post.path
    );
    assert!(post.path.ends_with("/hooks"));
    assert_eq!(post.body["url"], HOOK_URL);
    assert_eq!(post.body["token"], WEBHOOK_TOKEN);
    assert_eq!(post.body["push_events"], true);
    assert_eq!(post.body["tag_push_events"], true);
    assert_eq!(post.body["enable_ssl_verification"], true);
    {
        let f = s.fake.lock().unwrap();
        assert!(
            !f.project_hooks.contains_key(&9),
            "a non-member project got a hook"
        );
        assert_eq!(f.project_hooks.len(), 230);
    }

    // Second run: every project checked, not one hook added.
    clear_requests(&s);
    let r = labgrader(&s, &["gitlab", "add-project-hooks"]).await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("230 projects: 0 hooks created, 230 updated, 0 failed"),
        "{}",
        r.stdout
    );
    let reqs = requests(&s);
    assert_eq!(count(&reqs, "POST", "/"), 0);
    let f = s.fake.lock().unwrap();
    assert!(f.project_hooks.values().all(|h| h.len() == 1));
}

#[tokio::test]
async fn add_project_hooks_in_a_namespace_includes_subgroups_only() {
    let mut fake = with_projects(projects(3, "course/2026"));
    fake.projects
        .extend(projects(2, "course").into_iter().map(|mut p| {
            p.id += 100;
            p
        }));
    fake.projects
        .extend(projects(2, "other").into_iter().map(|mut p| {
            p.id += 200;
            p
        }));
    let s = setup(fake, "").await;
    let r = labgrader(
        &s,
        &[
            "gitlab",
            "add-project-hooks",
            "--namespace",
            "course",
            "--url",
            HOOK_URL,
        ],
    )
    .await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    let reqs = requests(&s);
    let list = reqs
        .iter()
        .find(|r| r.path.starts_with("/api/v4/groups/"))
        .unwrap();
    assert_eq!(list.path, "/api/v4/groups/course/projects");
    assert_eq!(list.query["include_subgroups"], "true");
    let f = s.fake.lock().unwrap();
    let hooked: Vec<&str> = f
        .projects
        .iter()
        .filter(|p| f.project_hooks.contains_key(&p.id))
        .map(|p| p.path.as_str())
        .collect();
    assert_eq!(hooked.len(), 5, "{hooked:?}");
    assert!(hooked.iter().all(|p| p.starts_with("course/")));
}

#[tokio::test]
async fn add_project_hooks_in_a_user_namespace() {
    let mut fake = with_projects(projects(2, "jsmith"));
    fake.users = vec!["jsmith".into()];
    let s = setup(fake, HOOK_URL).await;
    let r = labgrader(
        &s,
        &["gitlab", "add-project-hooks", "--namespace", "jsmith"],
    )
    .await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("2 projects: 2 hooks created"),
        "{}",
        r.stdout
    );
    let reqs = requests(&s);
    assert!(
        reqs.iter()
            .any(|r| r.path == "/api/v4/users/jsmith/projects")
    );

    let r = labgrader(
        &s,
        &["gitlab", "add-project-hooks", "--namespace", "nobody"],
    )
    .await;
    assert!(!r.ok);
    assert!(
        r.stderr.contains("namespace `nobody` not found"),
        "{}",
        r.stderr
    );
}

#[tokio::test]
async fn add_project_hooks_reports_a_forbidden_project_and_does_the_rest() {
    let mut fake = with_projects(projects(3, "course"));
    fake.projects[1].forbidden = true;
    let s = setup(fake, HOOK_URL).await;
    let r = labgrader(&s, &["gitlab", "add-project-hooks"]).await;
    assert!(!r.ok, "a failed project must fail the command");
    assert!(r.stderr.contains("course/student002"), "{}", r.stderr);
    assert!(r.stderr.contains("403"), "{}", r.stderr);
    assert!(
        r.stdout
            .contains("3 projects: 2 hooks created, 0 updated, 1 failed")
    );
    let f = s.fake.lock().unwrap();
    assert_eq!(f.project_hooks.len(), 2);
}

#[tokio::test]
async fn pagination_without_next_page_header_stops_on_a_short_page() {
    let mut fake = with_projects(projects(150, "course"));
    fake.no_pagination_headers = true;
    let s = setup(fake, HOOK_URL).await;
    let r = labgrader(&s, &["gitlab", "add-project-hooks"]).await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("150 projects: 150 hooks created"),
        "{}",
        r.stdout
    );
    let pages = requests(&s)
        .iter()
        .filter(|r| r.path == "/api/v4/projects")
        .count();
    assert_eq!(pages, 2);
}

#[tokio::test]
async fn wrong_api_token_is_a_clear_error() {
    let s = setup(Fake::default(), HOOK_URL).await;
    std::fs::write(s.config.parent().unwrap().join("gitlab-token"), "wrong").unwrap();
    let r = labgrader(&s, &["gitlab", "install-system-hook", "--url", HOOK_URL]).await;
    assert!(!r.ok);
    assert!(r.stderr.contains("401"), "{}", r.stderr);
    assert!(
        !r.stderr.contains("wrong"),
        "the token leaked into a message"
    );
}

#[tokio::test]
async fn missing_tokens_and_urls_are_named() {
    let s = setup(Fake::default(), "").await;
    let r = labgrader(&s, &["gitlab", "add-project-hooks"]).await;
    assert!(!r.ok);
    assert!(
        r.stderr
            .contains("pass --url or set gitlab.project_hook_url"),
        "{}",
        r.stderr
    );
    let r = labgrader(
        &s,
        &[
            "gitlab",
            "install-system-hook",
            "--url",
            "grader.example.edu",
        ],
    )
    .await;
    assert!(!r.ok);
    assert!(
        r.stderr.contains("must start with http:// or https://"),
        "{}",
        r.stderr
    );
    std::fs::write(s.config.parent().unwrap().join("webhook-token"), "").unwrap();
    let r = labgrader(&s, &["gitlab", "install-system-hook", "--url", HOOK_URL]).await;
    assert!(!r.ok);
    assert!(
        r.stderr.contains("no webhook token configured"),
        "{}",
        r.stderr
    );
    assert!(
        requests(&s).is_empty(),
        "asked GitLab despite a local error"
    );
}

/// The hook server calls `ensure_project_hook` when a `project_create`
/// system hook arrives: GitLab's own payload names the new project.
#[tokio::test]
async fn project_create_system_hook_gets_a_project_hook_once() {
    // GitLab's documented payload, copied from the shared fixtures.
    let payload: Value = serde_json::from_slice(
        &std::fs::read(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/gitlab/system_project_create.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(payload["event_name"], "project_create");
    let path = payload["path_with_namespace"].as_str().unwrap().to_string();
    let id = payload["project_id"].as_u64().unwrap();

    let fake = Fake {
        users: vec![path.split('/').next().unwrap().to_string()],
        projects: vec![FakeProject {
            id,
            path: path.clone(),
            member: true,
            forbidden: false,
        }],
        ..Fake::default()
    };
    let s = setup(fake, HOOK_URL).await;
    let cfg = labgrader::config::Config::from_file(&s.config).unwrap();
    let api = labgrader::gitlab::GitlabApi::from_config(&cfg, labgrader::httpc::HttpClient::new())
        .unwrap();
    let token = cfg.secrets.webhook_token.clone().unwrap();

    let first = labgrader::gitlab::ensure_project_hook(&api, &path, HOOK_URL, &token)
        .await
        .unwrap();
    assert_eq!(first.change, labgrader::gitlab::hooks::Change::Created);
    // By id, as a second delivery of the same system hook might do.
    let again = labgrader::gitlab::ensure_project_hook(&api, &id.to_string(), HOOK_URL, &token)
        .await
        .unwrap();
    assert_eq!(again.change, labgrader::gitlab::hooks::Change::Updated);
    assert_eq!(again.hook_id, first.hook_id);

    let reqs = requests(&s);
    assert_eq!(reqs[0].path, "/api/v4/projects/jsmith%2Fstorecloud/hooks");
    let f = s.fake.lock().unwrap();
    assert_eq!(f.project_hooks[&id].len(), 1);
    assert_eq!(f.project_hooks[&id][0]["token"], WEBHOOK_TOKEN);
    let _ = s.addr;
}

#[tokio::test]
async fn on_project_create_adds_the_configured_hook_or_does_nothing() {
    let fake = Fake {
        projects: vec![FakeProject {
            id: 74,
            path: "jsmith/storecloud".into(),
            member: true,
            forbidden: false,
        }],
        users: vec!["jsmith".into()],
        ..Fake::default()
    };
    // Not configured: no request at all.
    let s = setup(fake, "").await;
    let cfg = labgrader::config::Config::from_file(&s.config).unwrap();
    let none = labgrader::gitlab::hooks::on_project_create(
        &cfg,
        labgrader::httpc::HttpClient::new(),
        "74",
    )
    .await
    .unwrap();
    assert!(none.is_none());
    assert!(requests(&s).is_empty());

    // Configured: the hook is added once, with the configured URL.
    let text = std::fs::read_to_string(&s.config).unwrap().replace(
        "project_hook_url = \"\"",
        &format!("project_hook_url = \"{HOOK_URL}\""),
    );
    std::fs::write(&s.config, text).unwrap();
    let cfg = labgrader::config::Config::from_file(&s.config).unwrap();
    for _ in 0..2 {
        labgrader::gitlab::hooks::on_project_create(
            &cfg,
            labgrader::httpc::HttpClient::new(),
            "74",
        )
        .await
        .unwrap()
        .expect("configured");
    }
    let f = s.fake.lock().unwrap();
    assert_eq!(f.project_hooks[&74].len(), 1);
    assert_eq!(f.project_hooks[&74][0]["url"], HOOK_URL);
}

#[tokio::test]
async fn a_next_page_header_that_does_not_advance_ends_the_listing() {
    let mut fake = with_projects(projects(120, "course"));
    fake.stuck_next_page = true;
    let s = setup(fake, HOOK_URL).await;
    let r = labgrader(&s, &["gitlab", "add-project-hooks"]).await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    let pages = requests(&s)
        .iter()
        .filter(|r| r.path == "/api/v4/projects")
        .count();
    assert_eq!(pages, 1, "followed a next page that goes backwards");
    assert!(
        r.stdout.contains("100 projects: 100 hooks created"),
        "{}",
        r.stdout
    );
}

#[tokio::test]
async fn an_answer_that_is_not_gitlab_json_is_a_clear_error() {
    let fake = Fake {
        html_answers: true,
        ..Fake::default()
    };
    let s = setup(fake, HOOK_URL).await;
    let r = labgrader(&s, &["gitlab", "install-system-hook", "--url", HOOK_URL]).await;
    assert!(!r.ok);
    assert!(
        r.stderr.contains("is not the expected JSON"),
        "{}",
        r.stderr
    );
    assert_eq!(
        count(&requests(&s), "POST", "/"),
        0,
        "acted on an unreadable answer"
    );
}
