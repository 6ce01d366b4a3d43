//! A workspace the student's tree cannot fit in is the student's doing
//! (issue 14): through the real grader, a real git commit whose path
//! exceeds PATH_MAX ends at once as `error`, with a reason in the
//! student's terms that names no host path, and is never retried as an
//! infrastructure failure.

mod common;

use std::path::Path;
use std::time::Duration;

use common::repos::{git, git_in};
use common::world::{Fixture, simple_test_all};
use labgrader::result::Status;

/// Commit, straight into the bare repository `bare` on `main`, a tree with
/// `README` and one file under `depth` nested directories named `name`:
/// git stores it happily, whatever PATH_MAX says. Returns the commit.
fn commit_deep_path(bare: &Path, name: &str, depth: usize) -> String {
    let blob = git_in(bare, &["hash-object", "-w", "--stdin"], "deep\n");
    let mut tree = git_in(
        bare,
        &["mktree"],
        &format!("100644 blob {blob}\tleaf.txt\n"),
    );
    for _ in 0..depth {
        tree = git_in(bare, &["mktree"], &format!("040000 tree {tree}\t{name}\n"));
    }
    let readme = git_in(bare, &["hash-object", "-w", "--stdin"], "hello\n");
    let top = git_in(
        bare,
        &["mktree"],
        &format!("100644 blob {readme}\tREADME\n040000 tree {tree}\t{name}\n"),
    );
    let commit = git_in(bare, &["commit-tree", &top, "-m", "deep"], "");
    git(bare, &["update-ref", "refs/heads/main", &commit]);
    commit
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_with_a_path_over_path_max_is_the_students_error_without_host_paths() {
    let f = Fixture::new();
    f.tests_repo("lab1", &simple_test_all("100"));
    let bare = f.repo("course/alice/lab1");
    // 21 levels of 200-byte names: a path of over 4 200 bytes.
    let name = "d".repeat(200);
    let sha = commit_deep_path(&bare, &name, 20);
    let listed = git(&bare, &["ls-tree", "-r", "--name-only", &sha]);
    assert!(
        listed.lines().any(|l| l.len() > 4096),
        "the commit must hold a path over PATH_MAX"
    );
    let ev = f.event("course/alice/lab1", &sha);
    f.enqueue(&ev);
    let d = f.start(f.config("infra_retries = 5\ninfra_backoff = \"1s\""));
    let r = f.wait_done(&ev.job_id, Duration::from_secs(60)).await;
    d.stop().await;
    assert_eq!(r.status, Status::Error, "{:?}", r.reason);
    let reason = r.reason.clone().unwrap();
    assert!(
        reason.contains("paths in the repository may be at most"),
        "{reason}"
    );
    // Nothing the student receives names a host path.
    let student = serde_json::to_string(&labgrader::deliver::hidden::student_view(&r)).unwrap();
    let tmp = f.tmp.path().to_string_lossy().into_owned();
    for text in [&reason, &student] {
        assert!(!text.contains(&tmp), "{text}");
        assert!(!text.contains("/spool"), "{text}");
        assert!(!text.contains("mirrors"), "{text}");
    }
    // Final at once: never retried as the grader's fault, never infra_error.
    assert!(!r.extra.contains_key("infra_attempts"), "{:?}", r.extra);
    let recorded: labgrader::event::Event =
        serde_json::from_slice(&std::fs::read(f.done_dir(&ev.job_id).join("event.json")).unwrap())
            .unwrap();
    assert_eq!(recorded.infra_attempts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_over_name_max_is_the_students_error() {
    let f = Fixture::new();
    f.tests_repo("lab1", &simple_test_all("100"));
    let bare = f.repo("course/alice/lab1");
    let sha = commit_deep_path(&bare, &"n".repeat(300), 1);
    let ev = f.event("course/alice/lab1", &sha);
    f.enqueue(&ev);
    let d = f.start(f.config("infra_retries = 5\ninfra_backoff = \"1s\""));
    let r = f.wait_done(&ev.job_id, Duration::from_secs(60)).await;
    d.stop().await;
    assert_eq!(r.status, Status::Error, "{:?}", r.reason);
    let reason = r.reason.unwrap();
    assert!(
        reason.contains("names may be at most 255 bytes"),
        "{reason}"
    );
    assert!(
        !reason.contains(&*f.tmp.path().to_string_lossy()),
        "{reason}"
    );
}
