//! Manifests from real git trees and authors checked against a local
//! server that answers `GET /api/v4/projects/:id/members/all` and
//! `GET /api/v4/users/:id` as GitLab's docs say (an admin token sees the
//! private `email`, which labgrader must never use).

mod common;

use std::sync::{Arc, Mutex};

use common::http::TestServer;
use common::repos::exported_tree;
use labgrader::config::{Config, Secret};
use labgrader::event::{Project, Pusher};
use labgrader::gitlab::GitlabApi;
use labgrader::httpc::HttpClient;
use labgrader::manifest::{Directory, Manifest, ManifestError, resolve_authors};
use labgrader::policy::admit::manifest_refusal;
use labgrader::policy::{Refusal, ResolvedPolicy};

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
    assert!(matches!(
        manifest_refusal(e),
        Ok(Refusal::InvalidManifest { .. })
    ));
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

/// A server answering the members and users APIs (or 500 to everything
/// when `fail`); it serves as long as the test's runtime runs.
async fn fake_gitlab(fail: bool) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let server = TestServer::start(Arc::new(move |req, _| {
        let target = req.target();
        let token = req.header("private-token").unwrap_or("").to_string();
        log.lock().unwrap().push((target.clone(), token));
        let json = vec![("Content-Type", "application/json".to_string())];
        if fail {
            return (500, json, "{\"message\":\"boom\"}".to_string());
        }
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
        (200, json, answer.to_string())
    }))
    .await;
    (server.url(""), seen)
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

/// alice and bob pushed to the project before: members who took part.
fn pushed() -> std::collections::BTreeSet<String> {
    ["alice", "bob"].map(String::from).into()
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
    let a = resolve_authors(
        Some(&m),
        &pusher(),
        &project(),
        &gitlab_dir(&url),
        &pushed(),
    )
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
    let e = resolve_authors(
        Some(&m),
        &pusher(),
        &project(),
        &gitlab_dir(&url),
        &pushed(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ManifestError::Lookup(_)), "{e}");
    assert!(manifest_refusal(e).is_err());
}

#[tokio::test]
async fn the_pusher_is_never_looked_up_so_gitlab_down_cannot_stop_the_simple_case() {
    let (url, seen) = fake_gitlab(true).await;
    let a = resolve_authors(None, &pusher(), &project(), &gitlab_dir(&url), &pushed())
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
    let a = resolve_authors(Some(&m), &pusher(), &project(), &dir, &pushed())
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

/// With a token, a member who never pushed to the project is not credited
/// (the pusher may have added them without asking); a classmate staff put
/// in the pusher's roster group is, member or not, with no lookup at all.
#[tokio::test]
async fn with_a_token_a_member_counts_once_they_pushed_and_a_roster_group_always() {
    let d = tempfile::tempdir().unwrap();
    let roster = d.path().join("lab1.csv");
    std::fs::write(
        &roster,
        "username,email,name,group\ncarol,carol@roster.example,Carol,t1\n\
         dave,dave@roster.example,Dave,T1\nalice,alice@roster.example,Alice,t2\n",
    )
    .unwrap();
    let mut cfg = Config::from_toml("[assignments.lab1]\nroster = \"lab1.csv\"\n", None).unwrap();
    cfg.source = Some(d.path().join("config.toml"));
    let p = ResolvedPolicy::for_project(&cfg, "lab1");
    let (url, seen) = fake_gitlab(false).await;
    let dir = Directory::for_policy(&p, Some(api(&url))).unwrap();
    let m = Manifest::parse(br#"{"authors": ["carol", "dave", "alice"]}"#).unwrap();
    let a = resolve_authors(Some(&m), &pusher(), &project(), &dir, &Default::default())
        .await
        .unwrap();
    let known: Vec<&str> = a.known.iter().map(|k| k.username.as_str()).collect();
    assert_eq!(known, ["carol", "dave"]);
    assert_eq!(a.unknown, ["alice"]);
    assert_eq!(
        a.ignored[0].reason,
        "has not pushed to course/carol/lab1 yet: a teammate is credited once they have \
         pushed to the project themselves (or staff put you in one roster group)"
    );
    // dave needed no lookup; alice's membership was read once.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    // Once alice has pushed, she counts.
    let a = resolve_authors(Some(&m), &pusher(), &project(), &dir, &pushed())
        .await
        .unwrap();
    assert_eq!(a.known.len(), 3);
    assert!(a.ignored.is_empty());
}
