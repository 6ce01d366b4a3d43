//! Tag-mode submissions through the real hook server: a branch push and a
//! non-matching tag are answered `ignored: not a submission tag` and
//! stored nowhere; a `submit-*` tag push becomes a job; a late push is
//! still stored (the grader refuses it and emails the pusher).

mod common;

use common::{daemon::*, gitlab::*, world::*};
use labgrader::config::{AssignmentConfig, Trigger};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_mode_ignores_branch_pushes_and_stores_submission_tags() {
    let world = World::new();
    world.bare_repo("root/lab1-test");
    let mut cfg = world.config();
    cfg.assignments.insert(
        "lab1".into(),
        AssignmentConfig {
            trigger: Trigger::Tag,
            tag_pattern: Some("submit-*".into()),
            deadline: Some("2000-01-01T00:00:00+00:00".parse().unwrap()),
            late: labgrader::config::LatePolicy::Reject,
            ..Default::default()
        },
    );
    let server = Server::start(cfg).await;
    for (i, git_ref) in ["refs/heads/main", "refs/tags/v1", "refs/heads/submit-1"]
        .iter()
        .enumerate()
    {
        let body = push_body("alice/lab1", git_ref, &sha(1), &sha(2));
        let event = if git_ref.starts_with("refs/tags/") {
            "Tag Push Hook"
        } else {
            "Push Hook"
        };
        let resp = server
            .post(&push_headers(event, &format!("k{i}")), body)
            .await;
        assert_eq!(resp.status.as_u16(), 200, "{git_ref}");
        assert_eq!(text(&resp), "ignored: not a submission tag", "{git_ref}");
    }
    assert!(server.incoming().is_empty());
    let body = push_body("alice/lab1", "refs/tags/submit-1", &sha(0), &sha(3));
    let job = job_of(
        &server
            .post(&push_headers("Tag Push Hook", "t1"), body)
            .await,
    );
    let ev = server.event(&job);
    assert_eq!(ev.git_ref, "refs/tags/submit-1");
    assert_eq!(ev.commit, sha(3));
    // Another assignment keeps the default: every push is graded.
    world.bare_repo("root/lab2-test");
    let body = push_body("alice/lab2", "refs/heads/main", &sha(1), &sha(2));
    job_of(&server.post(&push_headers("Push Hook", "b1"), body).await);
    assert_eq!(server.incoming().len(), 2);
    server.stop().await;
}
