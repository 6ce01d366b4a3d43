//! Held pushes at the hook (in-process server, real bare repositories,
//! test repositories looked up by `git ls-remote`): a push from a course
//! namespace before its test repository exists is held, a re-send of it
//! is a duplicate of the held job, a push to the test repository releases
//! it, `project_create` releases it only once the test repository has a
//! commit (GitLab creates most projects empty), and a hold past
//! `[spool] hold_for` fails with a reason; a student creating many
//! projects without test repositories is bounded by `[spool]
//! held_per_project` / `held_per_namespace` (answered `ignored` with the
//! reason) and other students' holds are unaffected.

mod common;

use std::time::Duration;

use common::wait::wait_for;
use common::{daemon::*, gitlab::*, world::*};
use labgrader::event::Event;
use labgrader::spool::State;

fn course_config(world: &World) -> labgrader::config::Config {
    let mut cfg = world.config();
    cfg.gitlab.student_namespaces = vec!["course".into()];
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_push_is_deduplicated_then_released_by_a_push_to_its_test_repo() {
    let world = World::new();
    let server = Server::start(course_config(&world)).await;
    let body = push_body("course/ann/lab4", "refs/heads/main", &sha(1), &sha(2));
    let resp = server
        .post(&push_headers("Push Hook", "k1"), body.clone())
        .await;
    assert_eq!(resp.status.as_u16(), 202, "{}", text(&resp));
    assert!(text(&resp).contains("held until the test repository root/lab4-test exists"));
    let job = job_of(&resp);
    assert_eq!(
        server.spool.list(State::Held).unwrap(),
        [format!("{job}.json")]
    );
    assert!(server.incoming().is_empty());
    // GitLab re-sends the same delivery: the held job, not a second one.
    let again = server.post(&push_headers("Push Hook", "k1"), body).await;
    assert_eq!(job_of(&again), job);
    assert_eq!(server.spool.count(State::Held), 1);

    // Staff create and push the test repository; GitLab's hook for that push.
    world.bare_repo("root/lab4-test");
    let body = push_body("root/lab4-test", "refs/heads/main", &sha(3), &sha(4));
    let resp = server.post(&push_headers("Push Hook", "k2"), body).await;
    assert_eq!(resp.status.as_u16(), 200, "{}", text(&resp));
    assert_eq!(server.incoming(), [format!("{job}.json")]);
    assert_eq!(server.spool.count(State::Held), 0);
    server.stop().await;
}

/// GitLab's `project_create` system hook for `root/NAME-test`.
fn project_create(name: &str) -> (Vec<(String, String)>, Vec<u8>) {
    let (_, mut headers) = fixture("system_project_create");
    headers.retain(|(k, _)| k != "Idempotency-Key");
    let body = serde_json::to_vec(&serde_json::json!({
        "event_name": "project_create", "name": format!("{name}-test"),
        "path": format!("{name}-test"),
        "path_with_namespace": format!("root/{name}-test"), "project_id": 1001
    }))
    .unwrap();
    (headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_create_of_an_empty_test_repo_keeps_the_push_held_until_it_has_a_commit() {
    let world = World::new();
    let server = Server::start(course_config(&world)).await;
    let body = push_body("course/eve/lab7", "refs/heads/main", &sha(1), &sha(2));
    let job = job_of(&server.post(&push_headers("Push Hook", "k1"), body).await);
    assert_eq!(server.spool.count(State::Held), 1);

    // Created empty: grading now would run against no tests.
    let bare = world.bare_repo("root/lab7-test");
    let (h, b) = project_create("lab7");
    let resp = server.post(&h, b.clone()).await;
    assert_eq!(resp.status.as_u16(), 200, "{}", text(&resp));
    assert_eq!(server.spool.count(State::Held), 1);
    assert!(server.incoming().is_empty());
    // A push while it is empty is held too (not graded against no tests).
    let body = push_body("course/fay/lab7", "refs/heads/main", &sha(1), &sha(3));
    let resp = server.post(&push_headers("Push Hook", "k2"), body).await;
    assert!(
        text(&resp).contains("held until the test repository root/lab7-test has a commit"),
        "{}",
        text(&resp)
    );
    let second = job_of(&resp);
    assert_eq!(server.spool.count(State::Held), 2);
    // A tag alone makes no default branch: still held.
    let body = push_body("root/lab7-test", "refs/tags/v1", &sha(0), &sha(9));
    let resp = server
        .post(&push_headers("Tag Push Hook", "k3"), body)
        .await;
    assert_eq!(resp.status.as_u16(), 200, "{}", text(&resp));
    assert_eq!(server.spool.count(State::Held), 2);

    // Created with its tests (an import, a fork, a template): released.
    let work = world.dir.path().join("work");
    common::repos::commit_and_push(&work, &bare, |d| {
        std::fs::write(d.join("test_all"), "#!/bin/sh\n").unwrap()
    });
    let resp = server.post(&h, b).await;
    assert_eq!(resp.status.as_u16(), 200, "{}", text(&resp));
    let mut released = server.incoming();
    released.sort();
    let mut want = [format!("{job}.json"), format!("{second}.json")];
    want.sort();
    assert_eq!(released, want);
    assert_eq!(server.spool.count(State::Held), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_past_hold_for_fails_with_a_reason() {
    let world = World::new();
    let mut cfg = course_config(&world);
    cfg.spool.hold_for = labgrader::config::Seconds(Duration::from_secs(3600));
    // Email on (nothing sends it here: the record in the outbox is what counts).
    cfg.email.url = "smtp://127.0.0.1:9".into();
    cfg.email.address_template = "{username}@students.example".into();
    // A push held two hours ago (e.g. before a long outage).
    let spool = labgrader::spool::Spool::open(world.spool_dir()).unwrap();
    let server = Server::start(cfg.clone()).await;
    let body = push_body("course/ben/lab5", "refs/heads/main", &sha(1), &sha(2));
    let job = job_of(&server.post(&push_headers("Push Hook", "k1"), body).await);
    server.stop().await;
    let name = format!("{job}.json");
    let mut ev = Event::from_bytes(&spool.read(State::Held, &name).unwrap()).unwrap();
    ev.received_at -= chrono::Duration::hours(2);
    std::fs::write(spool.path(State::Held, &name), ev.to_bytes()).unwrap();

    // The check at start expires it.
    let server = Server::start(cfg).await;
    let reason = spool.path(State::Failed, &job).join("reason");
    wait_for("the expired hold in failed/", || reason.exists()).await;
    let text = std::fs::read_to_string(&reason).unwrap();
    assert!(
        text.contains("no test repository root/lab5-test with a commit appeared within 1h")
            && text.contains(&format!("labgrader retry {job}")),
        "{text}"
    );
    // failed/ is published first, then the held file removed.
    wait_for("the held file gone", || spool.count(State::Held) == 0).await;
    // The student is told why, by the usual email.
    let email = format!("{job}.email.json");
    wait_for("the student's email", || {
        spool.path(State::Outbox, &email).exists()
    })
    .await;
    let rec = String::from_utf8(spool.read(State::Outbox, &email).unwrap()).unwrap();
    assert!(
        rec.contains("This push was not graded: no test repository root/lab5-test"),
        "{rec}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_cancel_or_retry_a_held_push() {
    let world = World::new();
    let server = Server::start(course_config(&world)).await;
    let mut jobs = Vec::new();
    for (i, path) in ["course/cy/lab6", "course/di/lab6"].iter().enumerate() {
        let body = push_body(path, "refs/heads/main", &sha(1), &sha(2 + i as u32));
        jobs.push(job_of(
            &server
                .post(&push_headers("Push Hook", &format!("k{i}")), body)
                .await,
        ));
    }
    server.stop().await;
    let cfg = world.dir.path().join("labgrader.toml");
    std::fs::write(
        &cfg,
        format!("[spool]\ndir = \"{}\"\n", world.spool_dir().display()),
    )
    .unwrap();
    let staff = |cmd: &str, job: &str| {
        let out = std::process::Command::new(BIN)
            .args([cmd, job, "--config"])
            .arg(&cfg)
            .env_remove("LABGRADER_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    staff("cancel", &jobs[0]);
    staff("retry", &jobs[1]);
    let spool = labgrader::spool::Spool::open(world.spool_dir()).unwrap();
    let reason =
        std::fs::read_to_string(spool.path(State::Failed, &jobs[0]).join("reason")).unwrap();
    assert_eq!(reason.trim(), "cancelled by staff");
    assert_eq!(
        spool.list(State::Incoming).unwrap(),
        [format!("{}.json", jobs[1])]
    );
    assert_eq!(spool.count(State::Held), 0);
}

/// Attack: a student in a course namespace pushes again and again to a
/// project with no test repository, then creates project after project.
/// Over `[spool] held_per_project` / `held_per_namespace` each push is
/// answered `ignored` with the reason (nothing stored), other students'
/// pushes are still held, and a real release still releases them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_pushes_are_bounded_per_project_and_per_namespace() {
    let world = World::new();
    let mut cfg = course_config(&world);
    cfg.spool.held_per_project = 2;
    cfg.spool.held_per_namespace = 3;
    let server = Server::start(cfg).await;
    let mut n = 0u32;
    let mut push = async |path: &str| {
        n += 1;
        let body = push_body(path, "refs/heads/main", &sha(n), &sha(n + 1000));
        server
            .post(&push_headers("Push Hook", &format!("k{n}")), body)
            .await
    };
    for _ in 0..2 {
        let resp = push("course/mal/junk0").await;
        assert!(text(&resp).contains("held until"), "{}", text(&resp));
    }
    let resp = push("course/mal/junk0").await;
    assert_eq!(resp.status.as_u16(), 200, "{}", text(&resp));
    assert!(
        text(&resp).starts_with("ignored:") && text(&resp).contains("held_per_project = 2"),
        "{}",
        text(&resp)
    );
    assert_eq!(server.spool.count(State::Held), 2);
    // A new project: one more fits the namespace, then no more.
    let resp = push("course/mal/junk1").await;
    assert!(text(&resp).contains("held until"), "{}", text(&resp));
    for i in 2..6 {
        let resp = push(&format!("course/mal/junk{i}")).await;
        assert!(
            text(&resp).starts_with("ignored:") && text(&resp).contains("held_per_namespace = 3"),
            "{}",
            text(&resp)
        );
    }
    assert_eq!(server.spool.count(State::Held), 3);
    assert!(server.incoming().is_empty());

    // Another student is held as before, and released by the real tests.
    let resp = push("course/ann/lab4").await;
    assert!(text(&resp).contains("held until"), "{}", text(&resp));
    let job = job_of(&resp);
    assert_eq!(server.spool.count(State::Held), 4);
    world.bare_repo("root/lab4-test");
    let body = push_body("root/lab4-test", "refs/heads/main", &sha(3), &sha(4));
    let resp = server.post(&push_headers("Push Hook", "t1"), body).await;
    assert_eq!(resp.status.as_u16(), 200, "{}", text(&resp));
    assert_eq!(server.incoming(), [format!("{job}.json")]);
    assert_eq!(server.spool.count(State::Held), 3);
    server.stop().await;
}

/// Many held pushes for missing test repositories (stray projects of many
/// namespaces) do not keep the periodic check from releasing a lab whose
/// tests appeared without a hook: one lookup per test repository, the
/// most-held first, a few at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_check_releases_a_real_lab_among_many_stray_holds() {
    let world = World::new();
    let server = Server::start(course_config(&world)).await;
    let mut real = Vec::new();
    for i in 0..12u32 {
        let body = push_body(
            &format!("course/s{i}/junk{i}"),
            "refs/heads/main",
            &sha(i),
            &sha(100 + i),
        );
        let resp = server
            .post(&push_headers("Push Hook", &format!("j{i}")), body)
            .await;
        assert!(text(&resp).contains("held until"), "{}", text(&resp));
    }
    for i in 0..3u32 {
        let body = push_body(
            &format!("course/s{i}/lab4"),
            "refs/heads/main",
            &sha(i),
            &sha(200 + i),
        );
        real.push(job_of(
            &server
                .post(&push_headers("Push Hook", &format!("r{i}")), body)
                .await,
        ));
    }
    assert_eq!(server.spool.count(State::Held), 15);
    server.stop().await;
    // The tests arrive while the daemon is down (no hook for them).
    let bare = world.bare_repo("root/lab4-test");
    let work = world.dir.path().join("work");
    common::repos::commit_and_push(&work, &bare, |d| {
        std::fs::write(d.join("test_all"), "#!/bin/sh\n").unwrap()
    });
    // The check at start releases the lab's pushes, and only those.
    let server = Server::start(course_config(&world)).await;
    wait_for("the lab's held pushes released", || {
        server.incoming().len() == 3
    })
    .await;
    let mut got = server.incoming();
    got.sort();
    let mut want: Vec<String> = real.iter().map(|j| format!("{j}.json")).collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(server.spool.count(State::Held), 12);
    server.stop().await;
}
