//! GitLab's own payloads (tests/fixtures/gitlab, copied from GitLab) replayed with their
//! own headers against the real hook server, and payload shapes no fixture
//! has (nested groups, annotated tags, tag deletion).

mod common;

use common::repos::git;
use common::{daemon::*, gitlab::*, world::*};
use labgrader::event::{EventKind, HookSource};

/// What each fixture must get: `Some(test repository to create)` = 202
/// with one event file, `None` = 200 with this `ignored:` text.
fn expectation(name: &str) -> (Option<&'static str>, &'static str) {
    match name {
        "push" | "system_push" => (Some("root/diaspora-test"), ""),
        "push_test_event_17_1" => (Some("root/Flight-test"), ""),
        "tag_push" | "system_tag_push" | "system_repository_update" => {
            (Some("root/example-test"), "")
        }
        "push_branch_delete" => (None, "ignored: branch deletion (refs/heads/feature)"),
        "merge_request" => (None, "ignored: event `Merge Request Hook` is not a push"),
        "system_merge_request" => (
            None,
            "ignored: system hook event `merge_request` is not a push",
        ),
        "system_user_create" => (
            None,
            "ignored: system hook event `user_create` is not a push",
        ),
        "system_project_create" => (
            None,
            "ignored: project_create is not a push (test repository cache updated)",
        ),
        other => panic!("fixture {other} has no expected answer in this test; add one"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_gets_its_answer_and_event_fields() {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
        .collect();
    names.sort();
    assert!(names.len() >= 11, "fixtures missing: {names:?}");
    for name in names {
        let (body, headers) = fixture(&name);
        let (repo, ignored) = expectation(&name);
        // A fresh spool per fixture: push and system_push are the same
        // push (one job), proven in hook_dedup.
        let world = World::new();
        if let Some(r) = repo {
            world.bare_repo(r);
        }
        let server = Server::start(world.config()).await;
        let resp = server.post(&headers, body.clone()).await;
        let Some(_) = repo else {
            assert_eq!(resp.status.as_u16(), 200, "{name}: {}", text(&resp));
            assert_eq!(text(&resp), ignored, "{name}");
            assert!(server.incoming().is_empty(), "{name}");
            server.stop().await;
            continue;
        };
        let job = job_of(&resp);
        assert_eq!(server.incoming(), vec![format!("{job}.json")], "{name}");
        let ev = server.event(&job);
        let raw: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let change = raw
            .get("changes")
            .map(|c| c[0].clone())
            .unwrap_or_else(|| raw.clone());
        // The fields DESIGN.md lists.
        assert_eq!(ev.schema, labgrader::event::EVENT_SCHEMA);
        assert_eq!(ev.job_id, job);
        assert!((chrono::Utc::now() - ev.received_at).num_seconds() < 60);
        assert_eq!(ev.gitlab_event, header(&headers, "X-Gitlab-Event").unwrap());
        assert_eq!(
            ev.delivery_key.as_deref(),
            header(&headers, "Idempotency-Key"),
            "{name}: the delivery key is Idempotency-Key, not X-Gitlab-Event-UUID"
        );
        assert_eq!(
            ev.project.path,
            raw["project"]["path_with_namespace"].as_str().unwrap()
        );
        let (ns, pname) = ev.project.path.rsplit_once('/').unwrap();
        assert_eq!(
            (ev.project.namespace.as_str(), ev.project.name.as_str()),
            (ns, pname)
        );
        assert_eq!(
            ev.project.id,
            raw["project"]["id"].as_u64().or(raw["project_id"].as_u64())
        );
        assert_eq!(ev.pusher.id, raw["user_id"].as_u64());
        assert_eq!(ev.pusher.username.as_deref(), raw["user_username"].as_str());
        assert_eq!(ev.pusher.name.as_deref(), raw["user_name"].as_str());
        let email = raw["user_email"].as_str().filter(|e| !e.is_empty());
        assert_eq!(ev.pusher.email.as_deref(), email, "{name}");
        assert_eq!(ev.git_ref, change["ref"].as_str().unwrap());
        assert_eq!(ev.before, change["before"].as_str().unwrap());
        assert_eq!(ev.after, change["after"].as_str().unwrap());
        let commit = raw["checkout_sha"]
            .as_str()
            .unwrap_or_else(|| change["after"].as_str().unwrap());
        assert_eq!(ev.commit, commit, "{name}");
        assert_eq!(
            ev.clone_url,
            format!("file://{}/{}.git", world.repos().display(), ev.project.path)
        );
        assert_eq!(ev.raw, raw, "{name}: raw payload kept");
        let system = header(&headers, "X-Gitlab-Event") == Some("System Hook");
        assert_eq!(
            ev.source,
            if system {
                HookSource::SystemHook
            } else {
                HookSource::ProjectHook
            }
        );
        let tag = ev.git_ref.starts_with("refs/tags/");
        assert_eq!(
            ev.kind,
            if tag {
                EventKind::TagPush
            } else {
                EventKind::Push
            }
        );
        if name == "system_tag_push" {
            assert_eq!(ev.commit, "5937ac0a7beb003549fc5fd26fc247adbce4a52e");
            assert_eq!(ev.after, "82b3d5ae55f7080f1e6022629cdb57bfae7cccc7");
        }
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_group_project_is_graded_against_root_name_test() {
    let world = World::new();
    world.bare_repo("root/lab1-test");
    let server = Server::start(world.config()).await;
    let body = push_body("a/b/c/lab1", "refs/heads/main", &sha(1), &sha(2));
    let job = job_of(
        &server
            .post(&push_headers("Push Hook", "k-nested"), body)
            .await,
    );
    let ev = server.event(&job);
    assert_eq!(ev.project.path, "a/b/c/lab1");
    assert_eq!(ev.project.namespace, "a/b/c");
    assert_eq!(ev.project.name, "lab1");
    assert!(
        ev.clone_url.ends_with("/repos/a/b/c/lab1.git"),
        "{}",
        ev.clone_url
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotated_tag_grades_the_commit_not_the_tag_object() {
    let world = World::new();
    world.bare_repo("root/lab2-test");
    // A real annotated tag: `after` is the tag object, checkout_sha the commit.
    let work = world.dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    git(&work, &["init", "-q"]);
    std::fs::write(work.join("a.txt"), "x").unwrap();
    git(&work, &["add", "a.txt"]);
    git(&work, &["commit", "-qm", "one"]);
    git(&work, &["tag", "-a", "v1", "-m", "submission"]);
    let tag_obj = git(&work, &["rev-parse", "v1"]);
    let commit = git(&work, &["rev-parse", "v1^{commit}"]);
    assert_ne!(tag_obj, commit);
    let mut body: serde_json::Value = serde_json::from_slice(&push_body(
        "alice/lab2",
        "refs/tags/v1",
        labgrader::event::ZERO_SHA,
        &tag_obj,
    ))
    .unwrap();
    body["checkout_sha"] = commit.clone().into();
    let server = Server::start(world.config()).await;
    let resp = server
        .post(
            &push_headers("Tag Push Hook", "k-tag"),
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
    let ev = server.event(&job_of(&resp));
    assert_eq!(ev.kind, EventKind::TagPush);
    assert_eq!(ev.after, tag_obj);
    assert_eq!(ev.commit, commit);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_deletion_is_ignored() {
    let world = World::new();
    world.bare_repo("root/lab2-test");
    let server = Server::start(world.config()).await;
    let body = push_body(
        "alice/lab2",
        "refs/tags/v1",
        &sha(5),
        labgrader::event::ZERO_SHA,
    );
    let resp = server
        .post(&push_headers("Tag Push Hook", "k-deltag"), body)
        .await;
    assert_eq!(resp.status.as_u16(), 200);
    assert_eq!(text(&resp), "ignored: tag deletion (refs/tags/v1)");
    assert!(server.incoming().is_empty());
    server.stop().await;
}
