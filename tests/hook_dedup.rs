//! The same push delivered twice (re-send, retry, project hook + system
//! hook + repository_update) is one job, answered with the same job id,
//! across restarts and under concurrent identical deliveries; pushes too
//! big for push hooks (repository_update only) are graded.

mod common;

use common::{daemon::*, gitlab::*, world::*};
use futures_util::future::join_all;
use labgrader::spool::State;

fn json(r: &labgrader::httpc::Response) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_delivery_gets_the_same_job_and_no_second_file() {
    let world = World::new();
    world.bare_repo("root/diaspora-test");
    let server = Server::start(world.config()).await;
    let (body, headers) = fixture("push");
    let first = server.post(&headers, body.clone()).await;
    let job = job_of(&first);
    assert_eq!(json(&first).get("duplicate"), None);
    // GitLab's manual re-send keeps Idempotency-Key but changes
    // X-Gitlab-Event-UUID.
    let mut again = headers.clone();
    for (k, v) in again.iter_mut() {
        if k == "X-Gitlab-Event-UUID" {
            *v = "00000000-0000-4000-8000-000000000000".into();
        }
    }
    let second = server.post(&again, body).await;
    assert_eq!(job_of(&second), job);
    assert_eq!(json(&second)["duplicate"], true);
    assert_eq!(server.incoming(), vec![format!("{job}.json")]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_deliveries_make_one_job() {
    let world = World::new();
    world.bare_repo("root/diaspora-test");
    let server = Server::start(world.config()).await;
    let (body, headers) = fixture("push");
    let answers = join_all((0..24).map(|_| server.post(&headers, body.clone()))).await;
    let jobs: std::collections::BTreeSet<String> = answers.iter().map(job_of).collect();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(server.incoming().len(), 1);
    let new = answers
        .iter()
        .filter(|r| json(r).get("duplicate").is_none())
        .count();
    assert_eq!(new, 1, "exactly one answer created the job");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_hook_and_system_hook_of_one_push_make_one_job() {
    let world = World::new();
    world.bare_repo("root/diaspora-test");
    let server = Server::start(world.config()).await;
    let (b1, h1) = fixture("push");
    let (b2, h2) = fixture("system_push");
    let j1 = job_of(&server.post(&h1, b1).await);
    let j2 = job_of(&server.post(&h2, b2).await);
    assert_eq!(j1, j2);
    assert_eq!(server.incoming().len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_hook_and_repository_update_for_same_ref_and_commit_make_one_job() {
    let world = World::new();
    world.bare_repo("root/lab1-test");
    let server = Server::start(world.config()).await;
    // Push hook first, then the repository_update of the same push.
    let push = push_body("alice/lab1", "refs/heads/main", &sha(1), &sha(2));
    let j1 = job_of(&server.post(&push_headers("Push Hook", "p1"), push).await);
    let ru = repository_update_body("alice/lab1", &[(&sha(1), &sha(2), "refs/heads/main")]);
    let r = server.post(&push_headers("System Hook", "r1"), ru).await;
    assert_eq!(job_of(&r), j1);
    assert_eq!(json(&r)["duplicate"], true);
    // The other order.
    let ru = repository_update_body("alice/lab1", &[(&sha(2), &sha(3), "refs/heads/main")]);
    let j2 = job_of(&server.post(&push_headers("System Hook", "r2"), ru).await);
    let push = push_body("alice/lab1", "refs/heads/main", &sha(2), &sha(3));
    assert_eq!(
        job_of(&server.post(&push_headers("Push Hook", "p2"), push).await),
        j2
    );
    assert_ne!(j1, j2);
    assert_eq!(server.incoming().len(), 2);
    // A new push of the same ref is a new job.
    let push = push_body("alice/lab1", "refs/heads/main", &sha(3), &sha(4));
    let j3 = job_of(&server.post(&push_headers("Push Hook", "p3"), push).await);
    assert!(j3 != j1 && j3 != j2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refs_pushed_only_through_repository_update_are_graded() {
    let world = World::new();
    world.bare_repo("root/lab1-test");
    let server = Server::start(world.config()).await;
    // Five refs in one push: more than push_event_hooks_limit (3), so GitLab
    // fires no push hook, only this.
    let (z, a, b) = (labgrader::event::ZERO_SHA.to_string(), sha(10), sha(11));
    let changes: Vec<(String, String, String)> = vec![
        (a.clone(), b.clone(), "refs/heads/main".into()),
        (z.clone(), b.clone(), "refs/heads/f1".into()),
        (z.clone(), b.clone(), "refs/heads/f2".into()),
        (z.clone(), a.clone(), "refs/tags/v1".into()),
        (a.clone(), z.clone(), "refs/heads/old".into()),
    ];
    let ch: Vec<(&str, &str, &str)> = changes
        .iter()
        .map(|(x, y, r)| (x.as_str(), y.as_str(), r.as_str()))
        .collect();
    let r = server
        .post(
            &push_headers("System Hook", "big"),
            repository_update_body("alice/lab1", &ch),
        )
        .await;
    job_of(&r);
    let ids: Vec<String> = json(&r)["job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 4, "the deletion of refs/heads/old is not graded");
    let mut refs: Vec<String> = ids.iter().map(|j| server.event(j).git_ref).collect();
    refs.sort();
    assert_eq!(
        refs,
        [
            "refs/heads/f1",
            "refs/heads/f2",
            "refs/heads/main",
            "refs/tags/v1"
        ]
    );
    for j in &ids {
        let ev = server.event(j);
        assert_eq!(ev.source, labgrader::event::HookSource::SystemHook);
        assert_eq!(ev.delivery_key.as_deref(), Some("big"));
        assert_eq!(ev.pusher.email.as_deref(), Some("ada@example.edu"));
        // raw keeps the body but only this event's change, not all of them.
        assert_eq!(ev.raw["changes"].as_array().unwrap().len(), 1);
        assert_eq!(ev.raw["changes"][0]["ref"], ev.git_ref.as_str());
        assert_eq!(ev.raw["refs"], serde_json::json!([ev.git_ref]));
        assert_eq!(ev.raw["project"]["path_with_namespace"], "alice/lab1");
    }
    // Replayed: same ids, nothing new.
    let again = server
        .post(
            &push_headers("System Hook", "big"),
            repository_update_body("alice/lab1", &ch),
        )
        .await;
    assert_eq!(json(&again)["job_ids"], json(&r)["job_ids"]);
    assert_eq!(server.incoming().len(), 4);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_survives_restart_and_follows_the_job_through_states() {
    let world = World::new();
    world.bare_repo("root/diaspora-test");
    let (body, headers) = fixture("push");
    let server = Server::start(world.config()).await;
    let job = job_of(&server.post(&headers, body.clone()).await);
    server.stop().await;

    let server = Server::start(world.config()).await;
    assert_eq!(job_of(&server.post(&headers, body.clone()).await), job);
    // A grader claims it, then finishes it into done/<job>/.
    let file = format!("{job}.json");
    server
        .spool
        .transition(&file, State::Incoming, State::Active)
        .unwrap();
    assert_eq!(job_of(&server.post(&headers, body.clone()).await), job);
    let done = server.spool.tmp_dir(&job).unwrap();
    std::fs::rename(
        server.spool.path(State::Active, &file),
        done.join("event.json"),
    )
    .unwrap();
    server.spool.publish_dir(&done, State::Done, &job).unwrap();
    assert_eq!(job_of(&server.post(&headers, body).await), job);
    assert!(server.incoming().is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marker_whose_job_never_became_durable_is_not_a_duplicate() {
    let world = World::new();
    world.bare_repo("root/diaspora-test");
    let (body, headers) = fixture("push");
    let server = Server::start(world.config()).await;
    let job = job_of(&server.post(&headers, body.clone()).await);
    server.stop().await;
    // As after a crash between marker and event: markers, no event.
    std::fs::remove_file(
        world
            .spool_dir()
            .join("incoming")
            .join(format!("{job}.json")),
    )
    .unwrap();
    let server = Server::start(world.config()).await;
    let r = server.post(&headers, body).await;
    let again = job_of(&r);
    assert_ne!(again, job);
    assert_eq!(json(&r).get("duplicate"), None);
    assert_eq!(server.incoming(), vec![format!("{again}.json")]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markers_are_rebuilt_at_start_from_waiting_events() {
    let world = World::new();
    world.bare_repo("root/diaspora-test");
    let (body, headers) = fixture("push");
    let server = Server::start(world.config()).await;
    let job = job_of(&server.post(&headers, body.clone()).await);
    server.stop().await;
    // As after a crash where the event reached the disk but the markers
    // did not.
    std::fs::remove_dir_all(world.spool_dir().join("keys")).unwrap();
    let server = Server::start(world.config()).await;
    assert_eq!(job_of(&server.post(&headers, body).await), job);
    assert_eq!(server.incoming().len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_update_with_many_refs_stores_each_ref_once() {
    let world = World::new();
    world.bare_repo("root/lab1-test");
    let server = Server::start(world.config()).await;
    let refs: Vec<String> = (0..150).map(|i| format!("refs/heads/r{i}")).collect();
    let (z, a) = (labgrader::event::ZERO_SHA.to_string(), sha(42));
    let mut ch: Vec<(&str, &str, &str)> = refs
        .iter()
        .map(|r| (z.as_str(), a.as_str(), r.as_str()))
        .collect();
    ch.push((z.as_str(), a.as_str(), refs[0].as_str())); // listed twice: still one job
    let body = repository_update_body("alice/lab1", &ch);
    let t = std::time::Instant::now();
    let r = server
        .post(&push_headers("System Hook", "many"), body)
        .await;
    eprintln!(
        "150 refs stored in {:?} with {} group commits",
        t.elapsed(),
        labgrader::metrics::counter_value("labgrader_hook_commits_total", &[])
    );
    let ids = json(&r)["job_ids"].as_array().unwrap().len();
    assert_eq!(ids, 150);
    assert_eq!(server.incoming().len(), 150);
    server.stop().await;
}
