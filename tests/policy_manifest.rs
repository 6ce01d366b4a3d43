//! Manifests from real git trees and authors checked against a local
//! server that answers `GET /api/v4/projects/:id/members/all` and
//! `GET /api/v4/users/:id` as GitLab's docs say (an admin token sees the
//! private `email`, which labgrader must never use).

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use labgrader::config::{Config, Secret};
use labgrader::event::{Project, Pusher};
use labgrader::gitlab::GitlabApi;
use labgrader::httpc::HttpClient;
use labgrader::manifest::{Directory, Manifest, ManifestError, resolve_authors};
use labgrader::policy::ResolvedPolicy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.edu"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Commit `files` (name, contents; contents `->TARGET` = a symlink) and
/// export the commit with `git archive` into a fresh directory, as the
/// grader exports a student tree.
fn exported_tree(root: &Path, files: &[(&str, &str)]) -> std::path::PathBuf {
    let repo = root.join("repo");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    for (name, contents) in files {
        match contents.strip_prefix("->") {
            Some(target) => std::os::unix::fs::symlink(target, repo.join(name)).unwrap(),
            None => std::fs::write(repo.join(name), contents).unwrap(),
        }
    }
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "submission"]);
    let tree = root.join("tree");
    std::fs::create_dir(&tree).unwrap();
    let archive = root.join("tree.tar");
    git(&repo, &["archive", "-o", archive.to_str().unwrap(), "HEAD"]);
    let st = Command::new("tar")
        .args([
            "-xf",
            archive.to_str().unwrap(),
            "-C",
            tree.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    tree
}

fn policy(section: &str) -> ResolvedPolicy {
    let c = Config::from_toml(&format!("[assignments.lab1]\n{section}\n"), None).unwrap();
    ResolvedPolicy::for_project(&c, "lab1")
}

#[test]
fn manifest_committed_as_symlink_to_shadow_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let tree = exported_tree(
        d.path(),
        &[
            ("test.c", "int main(){}"),
            ("labgrader.json", "->/etc/shadow"),
        ],
    );
    assert!(
        std::fs::symlink_metadata(tree.join("labgrader.json"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let e = Manifest::load(&tree, &policy("")).unwrap_err();
    assert!(matches!(e, ManifestError::Symlink), "{e}");
    assert!(e.is_student_fault());
}

#[test]
fn malformed_manifest_from_git_names_line_and_column() {
    let d = tempfile::tempdir().unwrap();
    let tree = exported_tree(
        d.path(),
        &[(
            "labgrader.json",
            "{\n  \"assignment\": \"lab1\",\n  \"authors\": [\"alice\" \"bob\"]\n}\n",
        )],
    );
    let e = Manifest::load(&tree, &policy("manifest = \"required\"")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "labgrader.json line 3, column 23: expected `,` or `]`"
    );
}

#[test]
fn required_manifest_missing_from_git_tree() {
    let d = tempfile::tempdir().unwrap();
    let tree = exported_tree(d.path(), &[("README", "hi")]);
    let e = Manifest::load(&tree, &policy("manifest = \"required\"")).unwrap_err();
    assert!(matches!(e, ManifestError::Missing));
    assert!(Manifest::load(&tree, &policy("")).unwrap().is_none());
}

/// What the fake GitLab saw: (path and query, PRIVATE-TOKEN header).
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// A one-request-per-connection HTTP server answering the users API.
async fn fake_gitlab(fail: bool) -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = sock.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let target = head.split(' ').nth(1).unwrap_or("").to_string();
                let token = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .starts_with("private-token:")
                            .then(|| l[14..].trim().to_string())
                    })
                    .unwrap_or_default();
                seen.lock().unwrap().push((target.clone(), token));
                let (status, body) = if fail {
                    (
                        "500 Internal Server Error",
                        "{\"message\":\"boom\"}".to_string(),
                    )
                } else {
                    let answer = match target.as_str() {
                        "/api/v4/projects/7/members/all?per_page=100&page=1" => {
                            r#"[{"id": 4, "username": "carol", "name": "Carol", "state": "active", "access_level": 40},
                                {"id": 2, "username": "alice", "name": "Alice L", "state": "active", "access_level": 30},
                                {"id": 3, "username": "Bob", "name": "Bob B", "state": "active", "access_level": 30}]"#
                        }
                        "/api/v4/users/2" => {
                            r#"{"id": 2, "username": "alice", "name": "Alice L", "state": "active", "email": "alice@private.example"}"#
                        }
                        "/api/v4/users/3" => {
                            r#"{"id": 3, "username": "Bob", "name": "Bob B", "state": "active", "email": "bob@private.example", "public_email": "bob@public.example"}"#
                        }
                        _ => "[]",
                    };
                    ("200 OK", answer.to_string())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

fn api(url: &str) -> GitlabApi {
    let mut cfg = Config::from_toml(&format!("[gitlab]\nurl = \"{url}\"\n"), None).unwrap();
    cfg.secrets.gitlab_token = Some(Secret::new("glpat-test"));
    GitlabApi::from_config(&cfg, HttpClient::new()).unwrap()
}

fn project() -> Project {
    Project::from_path(Some(7), "course/carol/lab1").unwrap()
}

fn gitlab_dir(url: &str) -> Directory {
    Directory::Gitlab {
        api: Box::new(api(url)),
        roster: None,
    }
}

fn pusher() -> Pusher {
    Pusher {
        id: Some(4),
        username: Some("carol".into()),
        name: Some("Carol".into()),
        email: Some("carol@push.example".into()),
    }
}

#[tokio::test]
async fn members_count_and_only_public_addresses_are_used() {
    let (url, seen) = fake_gitlab(false).await;
    let m = Manifest::parse(br#"{"authors": ["carol", "alice", "bob", "nobody", "../admin"]}"#)
        .unwrap();
    let a = resolve_authors(Some(&m), &pusher(), &project(), &gitlab_dir(&url))
        .await
        .unwrap();
    let known: Vec<(&str, Option<&str>)> = a
        .known
        .iter()
        .map(|k| (k.username.as_str(), k.email.as_deref()))
        .collect();
    // Alice made no address public: her private one is never taken.
    assert_eq!(
        known,
        [
            ("carol", Some("carol@push.example")),
            ("alice", None),
            ("Bob", Some("bob@public.example"))
        ]
    );
    assert_eq!(a.unknown, ["nobody", "../admin"]);
    assert_eq!(a.source, "gitlab");
    let seen = seen.lock().unwrap().clone();
    // One members list per job; a name that is not a username is never sent.
    assert_eq!(
        seen.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
        [
            "/api/v4/projects/7/members/all?per_page=100&page=1",
            "/api/v4/users/2",
            "/api/v4/users/3"
        ]
    );
    assert!(seen.iter().all(|(_, t)| t == "glpat-test"));
}

#[tokio::test]
async fn gitlab_down_is_not_the_students_fault() {
    let (url, _) = fake_gitlab(true).await;
    let m = Manifest::parse(br#"{"authors": ["carol", "bob"]}"#).unwrap();
    let e = resolve_authors(Some(&m), &pusher(), &project(), &gitlab_dir(&url))
        .await
        .unwrap_err();
    assert!(matches!(e, ManifestError::Lookup(_)), "{e}");
    assert!(!e.is_student_fault());
}

#[tokio::test]
async fn the_pusher_is_never_looked_up_so_gitlab_down_cannot_stop_the_simple_case() {
    let (url, seen) = fake_gitlab(true).await;
    let a = resolve_authors(None, &pusher(), &project(), &gitlab_dir(&url))
        .await
        .unwrap();
    assert_eq!(a.known[0].username, "carol");
    assert_eq!(a.known[0].email.as_deref(), Some("carol@push.example"));
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn with_a_roster_and_a_token_members_are_checked_on_gitlab_and_addresses_come_from_the_roster()
 {
    let d = tempfile::tempdir().unwrap();
    let roster = d.path().join("lab1.csv");
    std::fs::write(
        &roster,
        "username,email,name\nalice,alice@roster.example,Alice\ncarol,carol@roster.example,Carol\n",
    )
    .unwrap();
    let mut cfg = Config::from_toml("[assignments.lab1]\nroster = \"lab1.csv\"\n", None).unwrap();
    cfg.source = Some(d.path().join("config.toml"));
    let p = ResolvedPolicy::for_project(&cfg, "lab1");
    let (url, seen) = fake_gitlab(false).await;
    let dir = Directory::for_policy(&p, Some(api(&url))).unwrap();
    let m = Manifest::parse(br#"{"authors": ["carol", "alice", "bob"]}"#).unwrap();
    let a = resolve_authors(Some(&m), &pusher(), &project(), &dir)
        .await
        .unwrap();
    let known: Vec<(&str, Option<&str>)> = a
        .known
        .iter()
        .map(|k| (k.username.as_str(), k.email.as_deref()))
        .collect();
    assert_eq!(
        known,
        [
            ("carol", Some("carol@roster.example")),
            ("alice", Some("alice@roster.example"))
        ]
    );
    // Bob is a member but not in the course.
    assert_eq!(a.unknown, ["bob"]);
    assert_eq!(a.ignored[0].reason, "not in the course roster");
    assert_eq!(
        seen.lock()
            .unwrap()
            .iter()
            .map(|(p, _)| p.as_str())
            .collect::<Vec<_>>(),
        ["/api/v4/projects/7/members/all?per_page=100&page=1"]
    );
}
