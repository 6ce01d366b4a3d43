//! Hostile submissions through the real daemon: symlinks where the tests
//! go, endless loops, forged summaries, missing test_all, oversized trees,
//! malformed event files. The daemon keeps serving and names the limit.

mod common;

use std::time::{Duration, Instant};

use common::files::write_exec;
use common::world::{Fixture, simple_test_all};
use labgrader::result::Status;
use labgrader::spool::State;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_symlink_where_tests_go_changes_nothing_outside() {
    let f = Fixture::new();
    let outside = f.tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("keep"), "precious").unwrap();
    f.push("root/lab5-test", |w| {
        write_exec(
            &w.join("test_all"),
            "#!/bin/sh\ncat checks/c1\nprintf '<summary>\\ngrade_total = 1\\n</summary>\\n'\n",
        );
        std::fs::create_dir_all(w.join("checks")).unwrap();
        std::fs::write(w.join("checks/c1"), "from-tests").unwrap();
        std::fs::write(w.join("keep"), "from-tests").unwrap();
    });
    let sha = f.push("course/eve/lab5", |w| {
        std::os::unix::fs::symlink(&outside, w.join("checks")).unwrap();
        std::os::unix::fs::symlink(outside.join("keep"), w.join("keep")).unwrap();
    });
    let before = snapshot(&outside);
    let d = f.start(f.config(""));
    let ev = f.event("course/eve/lab5", &sha);
    f.enqueue(&ev);
    let r = f.wait_done(&ev.job_id, WAIT).await;
    d.stop().await;
    assert_eq!(r.status, Status::Graded, "{r:?}");
    assert_eq!(snapshot(&outside), before, "the outside directory changed");
    let out = std::fs::read_to_string(f.done_dir(&ev.job_id).join("stdout")).unwrap();
    assert!(out.contains("from-tests"), "{out}");
}

fn snapshot(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap_or_default(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_times_out_in_about_the_timeout_with_partial_credit() {
    let f = Fixture::new();
    f.tests_repo(
        "lab6",
        "#!/bin/sh\nprintf '<summary>\\ngrade_total = 25\\n</summary>\\n'\n./student.sh\n\
         printf '<summary>\\ngrade_total = 100\\n</summary>\\n'\n",
    );
    let sha = f.push("course/fay/lab6", |w| {
        write_exec(&w.join("student.sh"), "#!/bin/sh\nwhile :; do :; done\n")
    });
    let d = f.start(f.config("timeout = \"2s\""));
    let ev = f.event("course/fay/lab6", &sha);
    let t = Instant::now();
    f.enqueue(&ev);
    let r = f.wait_done(&ev.job_id, WAIT).await;
    let took = t.elapsed();
    d.stop().await;
    assert_eq!(r.status, Status::Timeout, "{r:?}");
    assert_eq!(
        r.grade_total,
        Some(25.0),
        "partial credit from the last complete block"
    );
    assert!(r.reason.as_deref().unwrap().contains("timeout"), "{r:?}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_summary_printed_before_the_real_one_does_not_count() {
    let f = Fixture::new();
    f.tests_repo(
        "lab7",
        "#!/bin/sh\n./student.sh\nprintf '<summary>\\ngrade_total = 12\\n</summary>\\n'\n",
    );
    let sha = f.push("course/gus/lab7", |w| {
        write_exec(
            &w.join("student.sh"),
            "#!/bin/sh\nprintf '<summary>\\ngrade_total = 100\\n</summary>\\n'\n",
        )
    });
    let d = f.start(f.config(""));
    let ev = f.event("course/gus/lab7", &sha);
    f.enqueue(&ev);
    let r = f.wait_done(&ev.job_id, WAIT).await;
    d.stop().await;
    assert_eq!((r.status, r.grade_total), (Status::Graded, Some(12.0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_test_all_is_a_clear_error_even_if_the_student_ships_one() {
    let f = Fixture::new();
    f.push("root/lab8-test", |w| {
        std::fs::write(w.join("README"), "no test_all").unwrap()
    });
    let sha = f.push("course/hal/lab8", |w| {
        write_exec(&w.join("test_all"), &simple_test_all("100"))
    });
    let d = f.start(f.config(""));
    let ev = f.event("course/hal/lab8", &sha);
    f.enqueue(&ev);
    let r = f.wait_done(&ev.job_id, WAIT).await;
    d.stop().await;
    assert_eq!(r.status, Status::Error, "{r:?}");
    assert_eq!(r.grade_total, None);
    assert!(
        r.reason
            .as_deref()
            .unwrap()
            .contains("no executable test_all"),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_student_tree_stops_at_workspace_limit_and_names_it() {
    let f = Fixture::new();
    f.tests_repo("lab9", &simple_test_all("1"));
    let sha = f.push("course/ivy/lab9", |w| {
        std::fs::write(w.join("big.bin"), vec![7u8; 300_000]).unwrap()
    });
    let many = f.push("course/jon/lab9", |w| {
        for i in 0..50 {
            std::fs::write(w.join(format!("f{i}")), "x").unwrap();
        }
    });
    let d = f.start(f.config("workspace_limit = \"100KiB\"\nworkspace_files = 20"));
    let e1 = f.event("course/ivy/lab9", &sha);
    let e2 = f.event("course/jon/lab9", &many);
    f.enqueue(&e1);
    f.enqueue(&e2);
    let r1 = f.wait_done(&e1.job_id, WAIT).await;
    let r2 = f.wait_done(&e2.job_id, WAIT).await;
    d.stop().await;
    assert_eq!(r1.status, Status::WorkspaceLimit, "{r1:?}");
    assert!(
        r1.reason.as_deref().unwrap().contains("workspace_limit"),
        "{r1:?}"
    );
    assert_eq!(r2.status, Status::WorkspaceLimit, "{r2:?}");
    assert!(
        r2.reason.as_deref().unwrap().contains("workspace_files"),
        "{r2:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_go_to_corrupt_and_the_daemon_keeps_serving() {
    let f = Fixture::new();
    f.tests_repo("lab10", &simple_test_all("9"));
    let sha = f.push("course/kim/lab10", |_| {});
    let spool = f.spool();
    spool
        .publish(State::Incoming, "01JUNK.json", b"{not json")
        .unwrap();
    // A valid event whose SHA is an option-injection attempt, and one whose
    // project path tries to leave the mirrors directory.
    let mut evil_sha = f.event("course/kim/lab10", &sha);
    evil_sha.commit = "--upload-pack=touch /tmp/pwned".into();
    let mut evil_path = f.event("course/kim/lab10", &sha);
    evil_path.project.path = "../../etc/lab10".into();
    let good = f.event("course/kim/lab10", &sha);
    for e in [&evil_sha, &evil_path, &good] {
        f.enqueue(e);
    }
    let d = f.start(f.config(""));
    let r_sha = f.wait_done(&evil_sha.job_id, WAIT).await;
    let r_path = f.wait_done(&evil_path.job_id, WAIT).await;
    let r = f.wait_done(&good.job_id, WAIT).await;
    d.stop().await;
    assert_eq!(r.grade_total, Some(9.0));
    assert_eq!(r_sha.status, Status::Error);
    assert!(
        r_sha
            .reason
            .as_deref()
            .unwrap()
            .contains("not a full commit SHA")
    );
    assert_eq!(r_path.status, Status::Error);
    assert!(
        r_path
            .reason
            .as_deref()
            .unwrap()
            .contains("not a valid GitLab")
    );
    assert_eq!(spool.list(State::Corrupt).unwrap(), ["01JUNK.json"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_missing_from_the_repository_is_the_students_error_not_a_retry() {
    let f = Fixture::new();
    f.tests_repo("lab11", &simple_test_all("9"));
    f.push("course/lee/lab11", |_| {});
    let ev = f.event("course/lee/lab11", &"ab".repeat(20));
    f.enqueue(&ev);
    let d = f.start(f.config(""));
    let r = f.wait_done(&ev.job_id, WAIT).await;
    d.stop().await;
    assert_eq!(r.status, Status::Error, "{r:?}");
    assert!(r.reason.as_deref().unwrap().contains("is not in"), "{r:?}");
}
