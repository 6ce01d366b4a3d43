//! The grader daemon with the docker runner, against a real engine: the
//! `labgrader grader` binary SIGKILLed mid-job leaves a container, which
//! the restarted daemon removes before it grades the job (exactly once);
//! `runner = "auto"` picks docker and says so at start; after a hostile job
//! the daemon still serves the next one.
//!
//! Needs a running engine and the busybox test image; FAILS without them
//! unless `LABGRADER_SKIP_DOCKER=1`.

mod common;

use std::time::{Duration, Instant};

use common::daemon;
use common::services::{BUSYBOX_IMAGE as IMAGE, docker_connect, docker_skipped};
use common::world::Fixture;
use labgrader::gradebook::{Filter, Gradebook, Select};
use labgrader::result::{JobResult, Status};
use labgrader::sandbox::docker::DockerRunner;

const WAIT: Duration = Duration::from_secs(90);

/// Each daemon removes every job container on the engine at start, so the
/// daemons of these tests must not overlap.
static ONE_DAEMON_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn engine() -> DockerRunner {
    docker_connect(IMAGE).await
}

fn docker_section(extra: &str) -> String {
    format!("{extra}\n[docker]\nimage = \"{IMAGE}\"\n")
}

async fn wait_result(f: &Fixture, job: &str) -> JobResult {
    f.wait_done(job, WAIT).await
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_sigkilled_mid_docker_job_leaves_no_container_and_grades_once() {
    if docker_skipped() {
        return;
    }
    let _serial = ONE_DAEMON_AT_A_TIME.lock().await;
    let runner = engine().await;
    let f = Fixture::new();
    f.tests_repo(
        "lab30",
        "#!/bin/sh\nsleep 3\nprintf '<summary>\\ngrade_total = 77\\n</summary>\\n'\n",
    );
    let p = "course/pam/lab30";
    let sha = f.push(p, |w| std::fs::write(w.join("x"), "1").unwrap());
    let cfg = f.write_config(&docker_section("runner = \"docker\""));
    let log = f.tmp.path().join("daemon.log");
    let mut first = daemon::start(&cfg, &log);
    let ev = f.event(p, &sha);
    f.enqueue(&ev);

    let start = Instant::now();
    while runner
        .job_containers(Some(&ev.job_id))
        .await
        .unwrap()
        .is_empty()
    {
        assert!(start.elapsed() < WAIT, "the job's container never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill().unwrap(); // SIGKILL: nothing of the daemon cleans up
    first.wait().unwrap();
    assert_eq!(
        runner.job_containers(Some(&ev.job_id)).await.unwrap().len(),
        1,
        "a SIGKILLed daemon leaves its container"
    );

    let second = daemon::start(&cfg, &log);
    let r = wait_result(&f, &ev.job_id).await;
    daemon::stop(second);
    assert_eq!(
        (r.status, r.grade_total),
        (Status::Graded, Some(77.0)),
        "{r:?}"
    );
    assert_eq!(r.runner, "docker");
    assert!(
        r.image_id
            .as_deref()
            .is_some_and(|i| i.starts_with("sha256:"))
    );
    assert!(
        runner
            .job_containers(Some(&ev.job_id))
            .await
            .unwrap()
            .is_empty()
    );
    let gb = Gradebook::open(&f.spool_dir.join("gradebook.sqlite")).unwrap();
    assert_eq!(gb.select(Select::All, &Filter::default()).unwrap().len(), 1);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("removed sandboxes left by a crash"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_picks_docker_and_daemon_serves_the_next_job_after_a_hostile_one() {
    if docker_skipped() {
        return;
    }
    let _serial = ONE_DAEMON_AT_A_TIME.lock().await;
    let runner = engine().await;
    let f = Fixture::new();
    f.tests_repo("loop", "#!/bin/sh\necho spinning\nwhile :; do :; done\n");
    // The table's memory hog (static binary) in the test repository.
    f.push("root/hog-test", |w| {
        std::fs::copy(common::hostile::helper_bin("memhog"), w.join("memhog")).unwrap();
        common::files::write_exec(&w.join("test_all"), "#!/bin/sh\n./memhog\necho survived\n");
    });
    f.tests_repo(
        "ok",
        "#!/bin/sh\nprintf '<summary>\\ngrade_total = 100\\n</summary>\\n'\n",
    );
    let shas: Vec<(String, String)> = ["loop", "hog", "ok"]
        .iter()
        .map(|n| {
            let p = format!("course/pam/{n}");
            let sha = f.push(&p, |w| std::fs::write(w.join("x"), n).unwrap());
            (p, sha)
        })
        .collect();
    let cfg = f.write_config(&docker_section(
        "runner = \"auto\"\ntimeout = \"8s\"\nmemory = \"128MiB\"\nworkers = 1",
    ));
    let log = f.tmp.path().join("daemon.log");
    let daemon = daemon::start(&cfg, &log);
    let mut results = Vec::new();
    for (p, sha) in &shas {
        let ev = f.event(p, sha);
        f.enqueue(&ev);
        results.push((ev.job_id.clone(), wait_result(&f, &ev.job_id).await));
    }
    daemon::stop(daemon);
    assert_eq!(results[0].1.status, Status::Timeout, "{:?}", results[0].1);
    assert_eq!(
        results[1].1.status,
        Status::MemoryLimit,
        "{:?}",
        results[1].1
    );
    assert_eq!(
        (results[2].1.status, results[2].1.grade_total),
        (Status::Graded, Some(100.0))
    );
    for (job, r) in &results {
        assert_eq!(r.runner, "docker");
        assert!(runner.job_containers(Some(job)).await.unwrap().is_empty());
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let started = text
        .lines()
        .find(|l| l.contains("grader started"))
        .unwrap_or_else(|| panic!("no start line in {text}"));
    assert!(
        started.contains("auto") && started.contains("docker"),
        "{started}"
    );
}

/// A mistyped image under `[assignments.NAME]` is refused when the grader
/// starts, naming the assignment, as a wrong `[docker] image` is; it used
/// to pass and fail the first student's job for a quarter of an hour.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_assignment_image_is_refused_at_start() {
    if docker_skipped() {
        return;
    }
    let f = Fixture::new();
    let cfg = f.config(&docker_section(
        "runner = \"docker\"\n[assignments.lab31]\nimage = \"labgrader/no-such-image:typo\"\n",
    ));
    let e = labgrader::grader::Grader::new(cfg, f.spool())
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("[assignments.lab31] image") && e.contains("labgrader/no-such-image:typo"),
        "{e}"
    );
    // The same image under an assignment that runs elsewhere is not checked.
    let cfg = f.config(&docker_section(
        "runner = \"docker\"\n[assignments.lab32]\nrunner = \"none\"\nimage = \"labgrader/no-such-image:typo\"\n",
    ));
    assert!(labgrader::grader::Grader::new(cfg, f.spool()).is_ok());
}
