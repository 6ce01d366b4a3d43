//! The daemon's own failures and fairness: infrastructure retries that are
//! never charged to the student, crash counting at start-up, SIGTERM grace
//! then requeue, and one project's burst not starving another.

mod common;

use std::time::Duration;

use common::world::{Fixture, simple_test_all};
use labgrader::event::Event;
use labgrader::gradebook::{Filter, Gradebook, Select};
use labgrader::result::Status;
use labgrader::spool::State;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_git_is_retried_then_infra_error_and_never_counts_as_the_students() {
    let f = Fixture::new();
    f.tests_repo("lab12", &simple_test_all("50"));
    let p = "course/max/lab12";
    let sha1 = f.push(p, |w| std::fs::write(w.join("a"), "1").unwrap());
    let d = f.start(f.config("infra_retries = 2\ninfra_backoff = \"200ms\""));
    let e1 = f.event(p, &sha1);
    f.enqueue(&e1);
    assert_eq!(f.wait_done(&e1.job_id, WAIT).await.grade_total, Some(50.0));

    // GitLab goes away: the new commit cannot be fetched.
    let sha2 = f.push(p, |w| std::fs::write(w.join("a"), "2").unwrap());
    let bare = f.bare(p);
    let away = f.tmp.path().join("away.git");
    std::fs::rename(&bare, &away).unwrap();
    let e2 = f.event(p, &sha2);
    f.enqueue(&e2);
    let r2 = f.wait_done(&e2.job_id, WAIT).await;
    assert_eq!(r2.status, Status::InfraError, "{r2:?}");
    assert!(
        r2.reason
            .as_deref()
            .unwrap()
            .contains("not the student's fault"),
        "{r2:?}"
    );
    assert_eq!(r2.grade_total, None);
    let recorded: Event =
        serde_json::from_slice(&std::fs::read(f.done_dir(&e2.job_id).join("event.json")).unwrap())
            .unwrap();
    assert_eq!(recorded.infra_attempts, 2, "retried twice before giving up");

    // Retried while GitLab is down, graded once it is back.
    let e3 = f.event(p, &sha2);
    f.enqueue(&e3);
    let queued = f.spool_dir.join("incoming").join(e3.file_name());
    let start = std::time::Instant::now();
    loop {
        if let Ok(b) = std::fs::read(&queued)
            && Event::from_bytes(&b).unwrap().infra_attempts >= 1
        {
            break;
        }
        assert!(start.elapsed() < WAIT, "never retried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::rename(&away, &bare).unwrap();
    let r3 = f.wait_done(&e3.job_id, WAIT).await;
    d.stop().await;
    assert_eq!(
        (r3.status, r3.grade_total),
        (Status::Graded, Some(50.0)),
        "{r3:?}"
    );
    assert_eq!(r3.extra.get("infra_attempts"), Some(&serde_json::json!(1)));

    // The infra_error is not the student's latest outcome.
    let gb = Gradebook::open(&f.spool_dir.join("gradebook.sqlite")).unwrap();
    let filter = Filter {
        project: Some(p.into()),
        assignment: None,
    };
    let latest = gb.select(Select::Latest, &filter).unwrap();
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].job_id, e3.job_id);
    assert!(labgrader::metrics::counter_value("labgrader_grader_infra_retries_total", &[]) >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_projects_burst_does_not_starve_another() {
    let f = Fixture::new();
    let log = f.tmp.path().join("log");
    f.tests_repo(
        "lab13",
        &format!(
            "#!/bin/sh\necho \"start $LABGRADER_PROJECT\" >> {log}\nsleep 0.3\n\
             echo \"end $LABGRADER_PROJECT\" >> {log}\n\
             printf '<summary>\\ngrade_total = 1\\n</summary>\\n'\n",
            log = log.display()
        ),
    );
    let a = "course/busy/lab13";
    let b = "course/calm/lab13";
    let mut a_jobs = Vec::new();
    for i in 0..10 {
        let sha = f.push(a, |w| std::fs::write(w.join("n"), i.to_string()).unwrap());
        let e = f.event(a, &sha);
        f.enqueue(&e);
        a_jobs.push(e);
    }
    let sha_b = f.push(b, |w| std::fs::write(w.join("n"), "b").unwrap());
    let eb = f.event(b, &sha_b);
    f.enqueue(&eb);
    let d = f.start(f.config("workers = 2"));
    for e in a_jobs.iter().chain([&eb]) {
        f.wait_done(&e.job_id, WAIT).await;
    }
    d.stop().await;
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // Never two of A's jobs at once.
    let mut running_a = 0;
    for l in &lines {
        match *l {
            l if l == format!("start {a}") => {
                running_a += 1;
                assert_eq!(running_a, 1, "two jobs of one project ran at once:\n{text}");
            }
            l if l == format!("end {a}") => running_a -= 1,
            _ => {}
        }
    }
    // B, queued after all ten of A's, started before A's second job ended.
    let b_start = lines
        .iter()
        .position(|l| *l == format!("start {b}"))
        .unwrap();
    let a_ends: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| **l == format!("end {a}"))
        .map(|(i, _)| i)
        .collect();
    assert!(b_start < a_ends[1], "B waited behind A's burst:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_active_at_a_crash_are_requeued_and_the_third_crash_fails_them() {
    let f = Fixture::new();
    f.tests_repo("lab14", &simple_test_all("3"));
    let p = "course/ned/lab14";
    let sha = f.push(p, |_| {});
    let spool = f.spool();
    let mut doomed = f.event(p, &sha);
    doomed.crashes = 2;
    let once = f.event(p, &sha);
    for e in [&doomed, &once] {
        spool
            .publish(State::Active, &e.file_name(), &e.to_bytes())
            .unwrap();
    }
    // What a crashed writer leaves: `<name>.<pid>.<ulid>`, its pid now dead
    // (pid_max is at most 2^22, so 4194304 never runs).
    let leftover = format!(
        "half-written.json.4194304.{}",
        labgrader::spool::new_job_id()
    );
    std::fs::write(spool.dir(State::Tmp).join(leftover), b"x").unwrap();
    let d = f.start(f.config(""));
    let r = f.wait_done(&once.job_id, WAIT).await;
    d.stop().await;
    assert_eq!(r.grade_total, Some(3.0));
    assert_eq!(r.extra.get("crashes"), Some(&serde_json::json!(1)));
    let failed = f.spool_dir.join("failed").join(&doomed.job_id);
    let reason = std::fs::read_to_string(failed.join("reason")).unwrap();
    assert!(reason.contains("3 grader crashes"), "{reason}");
    assert!(failed.join("event.json").exists());
    assert!(!f.done_dir(&doomed.job_id).exists());
    assert!(spool.list(State::Tmp).unwrap().is_empty());
    assert!(spool.list(State::Active).unwrap().is_empty());
    assert!(spool.list(State::Incoming).unwrap().is_empty());
    // Staff can retry it by hand.
    let q = labgrader::grader::regrade(&spool, std::slice::from_ref(&doomed.job_id), None).unwrap();
    let d = f.start(f.config(""));
    assert_eq!(f.wait_done(&q[0].1, WAIT).await.grade_total, Some(3.0));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_jobs_finish_within_grace_then_requeues_the_rest() {
    let f = Fixture::new();
    let marker = f.tmp.path().join("started");
    f.tests_repo(
        "lab15",
        &format!(
            "#!/bin/sh\nif [ ! -e {m} ]; then touch {m}; sleep 30; fi\n\
             printf '<summary>\\ngrade_total = 4\\n</summary>\\n'\n",
            m = marker.display()
        ),
    );
    let p = "course/oli/lab15";
    let sha = f.push(p, |_| {});
    let ev = f.event(p, &sha);
    f.enqueue(&ev);
    let d = f.start(f.config("shutdown_grace = \"500ms\""));
    let start = std::time::Instant::now();
    while !marker.exists() {
        assert!(start.elapsed() < WAIT);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = std::time::Instant::now();
    d.stop().await;
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let spool = f.spool();
    assert_eq!(spool.list(State::Incoming).unwrap(), [ev.file_name()]);
    assert!(spool.list(State::Active).unwrap().is_empty());
    let back = Event::from_bytes(&spool.read(State::Incoming, &ev.file_name()).unwrap()).unwrap();
    assert_eq!((back.crashes, back.infra_attempts), (0, 0));
    let d = f.start(f.config(""));
    assert_eq!(f.wait_done(&ev.job_id, WAIT).await.grade_total, Some(4.0));
    d.stop().await;
}

/// A crash after the result was recorded in the gradebook and its
/// deliveries queued, but before `done/` was published: after restart the
/// job is completed from that record, not graded again (a second run could
/// give a different grade than the one already on its way to the student).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_queued_for_delivery_before_a_crash_is_not_graded_again() {
    let f = Fixture::new();
    let runs = f.tmp.path().join("runs");
    let grade = f.tmp.path().join("grade");
    std::fs::write(&grade, "1").unwrap();
    f.tests_repo(
        "lab15",
        &format!(
            "#!/bin/sh\necho run >> {runs}\nprintf '<summary>\\ngrade_total = %s\\n</summary>\\n' \"$(cat {grade})\"\n",
            runs = runs.display(),
            grade = grade.display()
        ),
    );
    let p = "course/olga/lab15";
    let sha = f.push(p, |_| {});
    // A callback nobody answers: its record waits in the outbox.
    let cfg = f.config("[callback]\nurl = \"http://127.0.0.1:9/cb\"\n");
    let ev = f.event(p, &sha);
    f.enqueue(&ev);
    let d = f.start(cfg.clone());
    assert_eq!(f.wait_done(&ev.job_id, WAIT).await.grade_total, Some(1.0));
    d.stop().await;

    // The crash window: done/ not yet published, the claim still in active/.
    std::fs::remove_dir_all(f.done_dir(&ev.job_id)).unwrap();
    let spool = f.spool();
    spool
        .publish(State::Active, &ev.file_name(), &ev.to_bytes())
        .unwrap();
    std::fs::write(&grade, "2").unwrap();
    let d = f.start(cfg);
    let r = f.wait_done(&ev.job_id, WAIT).await;
    d.stop().await;
    assert_eq!(
        r.grade_total,
        Some(1.0),
        "the recorded result, not a new run"
    );
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 1);
    assert!(spool.list(State::Active).unwrap().is_empty());
    assert!(spool.list(State::Incoming).unwrap().is_empty());
}
