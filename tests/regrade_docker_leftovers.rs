//! What an engine restart leaves, without restarting the shared engine:
//! containers of this grader's jobs made with `docker create` and stopped
//! as an interrupted attempt's are (exit 143), then `remove_job` (before a
//! retry) and `sweep` (periodic) remove them, leaving running jobs',
//! created-but-not-started ones and other graders' alone; `answers` is the
//! engine probe. Needs a running engine and the busybox test image; FAILS
//! without them unless `LABGRADER_SKIP_DOCKER=1`.

mod common;

use std::collections::HashSet;
use std::process::Command;

use common::services::{BUSYBOX_IMAGE, docker_runner};
use labgrader::sandbox::Runner;

/// `docker create` a container labelled as job `job` of `owner`; with
/// `stopped`, start it and let it end with code 143 like a SIGTERMed job.
fn container(owner: &str, job: &str, stopped: bool) -> String {
    let out = Command::new("docker")
        .args(["create", "--label", &format!("labgrader.job={job}")])
        .args(["--label", &format!("labgrader.owner={owner}")])
        .args([BUSYBOX_IMAGE, "sh", "-c", "exit 143"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if stopped {
        let st = Command::new("docker")
            .args(["start", "-a", &id])
            .output()
            .unwrap();
        assert_eq!(st.status.code(), Some(143));
    }
    id
}

fn exists(id: &str) -> bool {
    Command::new("docker")
        .args(["inspect", id])
        .output()
        .unwrap()
        .status
        .success()
}

#[tokio::test]
async fn interrupted_attempts_are_removed_before_retry_and_swept_others_kept() {
    let pid = std::process::id();
    let (ours, theirs) = (format!("/srv/rg-a-{pid}"), format!("/srv/rg-b-{pid}"));
    let Some(r) = docker_runner(BUSYBOX_IMAGE).await else {
        return;
    };
    let r = r.with_owner(&ours);
    assert!(Runner::answers(&r).await, "the engine answers the probe");

    let retried = container(&ours, &format!("rg-retry-{pid}"), true);
    assert_eq!(
        Runner::remove_job(&r, &format!("rg-retry-{pid}"))
            .await
            .unwrap(),
        1
    );
    assert!(!exists(&retried), "removed before the retry");

    let left = container(&ours, &format!("rg-left-{pid}"), true);
    let running_job = format!("rg-running-{pid}");
    let of_running = container(&ours, &running_job, true);
    let starting = container(&ours, &format!("rg-starting-{pid}"), false);
    let other = container(&theirs, &format!("rg-other-{pid}"), true);
    let running: HashSet<String> = [running_job].into_iter().collect();
    let removed = Runner::sweep(&r, &running).await.unwrap();
    assert!(removed >= 1, "{removed}");
    assert!(!exists(&left), "a stopped leftover is swept");
    assert!(exists(&of_running), "a running job's container is kept");
    assert!(exists(&starting), "a container not started yet is kept");
    assert!(exists(&other), "another grader's is kept");
    for id in [of_running, starting, other] {
        let _ = Command::new("docker").args(["rm", "-f", &id]).output();
    }
}
