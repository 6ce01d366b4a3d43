//! The slurm runner with pilots (`[slurm] pilots` > 0) on the real dev
//! cluster: jobs published as tickets, run by `labgrader sandbox --serve`
//! allocations each as its own step; the hostile table through them, and
//! re-attachment after a grader restart without running a job twice.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::hostile::stdout;
use common::services::slurm_config as cluster;
use labgrader::config::{Config, Seconds};
use labgrader::sandbox::slurm::SlurmRunner;
use labgrader::sandbox::slurm::tickets::{TicketPlace, Tickets};
use labgrader::sandbox::{RunSpec, Runner, Termination};
use tokio_util::sync::CancellationToken;

fn pilot_config() -> Option<Config> {
    cluster().map(|mut cfg| {
        cfg.slurm.pilots = 2;
        cfg.slurm.pilot_slots = 8;
        cfg.slurm.pilot_idle = Seconds(Duration::from_secs(20));
        cfg
    })
}

fn runner() -> Option<SlurmRunner> {
    pilot_config().map(|cfg| SlurmRunner::new(&cfg).expect("slurm runner"))
}

fn spec(job_id: &str, ws: &Path) -> RunSpec {
    let mut limits = common::hostile::limits();
    limits.timeout = Duration::from_secs(20);
    common::hostile::spec(job_id, ws, limits)
}

#[tokio::test]
async fn pilot_happy_path_returns_stdout_and_exit_code() {
    let Some(r) = runner() else { return };
    let ws = common::hostile::workspace("lg-pilot-", "echo \"job $LABGRADER_JOB_ID\"\nexit 3\n");
    let id = common::hostile::unique("pilot-happy");
    let o = r
        .run(&spec(&id, ws.path()), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(o.termination, Termination::Exited { code: 3 });
    assert!(stdout(&o).contains(&format!("job {id}")), "{o:?}");
    let cfg = pilot_config().unwrap();
    assert!(
        !cfg.slurm.shared_dir.join(&id).exists(),
        "job directory left behind"
    );
}

// --- the hostile table, through pilots ---------------------------------------

#[tokio::test]
async fn pilot_memory_hog_is_memory_limit() {
    let Some(r) = runner() else { return };
    common::hostile::run_case(&r, "memory_hog").await;
}

#[tokio::test]
async fn pilot_infinite_loop_times_out() {
    let Some(r) = runner() else { return };
    common::hostile::run_case(&r, "infinite_loop").await;
}

#[tokio::test]
async fn pilot_stdout_flood_is_capped() {
    let Some(r) = runner() else { return };
    common::hostile::run_case(&r, "stdout_flood").await;
}

#[tokio::test]
async fn pilot_daemonized_child_does_not_outlive_job() {
    let Some(r) = runner() else { return };
    common::hostile::run_case(&r, "daemonized_child_does_not_outlive_job").await;
}

#[tokio::test]
async fn pilot_readonly_root_and_unprivileged() {
    let Some(r) = runner() else { return };
    common::hostile::run_case(&r, "readonly_root_and_unprivileged").await;
}

#[tokio::test]
async fn pilot_cannot_signal_host_processes() {
    let Some(r) = runner() else { return };
    common::hostile::run_case(&r, "cannot_signal_host_processes").await;
}

#[tokio::test]
async fn pilot_network_closed() {
    let Some(r) = runner() else { return };
    common::hostile::run_case(&r, "network_closed").await;
}

#[tokio::test]
async fn pilot_fork_bomb_is_contained() {
    let Some(r) = runner() else { return };
    common::hostile::run_case(&r, "fork_bomb").await;
}

#[tokio::test]
async fn pilot_write_outside_workspace_stays_inside() {
    let Some(r) = runner() else { return };
    common::hostile::run_case(&r, "write_outside_workspace_stays_inside").await;
}

// --- restart safety -----------------------------------------------------------

#[tokio::test]
async fn pilot_job_is_collected_after_a_grader_restart_and_run_once() {
    let Some(cfg) = pilot_config() else { return };
    let id = common::hostile::unique("pilot-reattach");
    let ws = common::hostile::workspace("lg-pilot-", "sleep 3\necho once\n");
    let spec = spec(&id, ws.path());
    let first = SlurmRunner::new(&cfg).unwrap();
    let s2 = spec.clone();
    let task = tokio::spawn(async move { first.run(&s2, &CancellationToken::new()).await });
    let q = Tickets::new(&cfg.slurm.shared_dir);
    let start = Instant::now();
    while !matches!(q.place(&id), TicketPlace::Claimed(_)) {
        assert!(start.elapsed() < Duration::from_secs(60), "never claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What `labgrader queue` shows of it meanwhile.
    let line = labgrader::sandbox::slurm::tickets::describe(&cfg.slurm.shared_dir, &id).unwrap();
    assert!(line.starts_with("slurm: running in pilot "), "{line}");
    // The grader dies while a pilot runs the job.
    task.abort();
    let _ = task.await;
    let second = SlurmRunner::new(&cfg).unwrap();
    let o = second.run(&spec, &CancellationToken::new()).await.unwrap();
    assert_eq!(o.termination, Termination::Exited { code: 0 });
    assert_eq!(stdout(&o).matches("once").count(), 1, "{o:?}");
    // Ran once: exactly one pilot logs the end of its step (the log line
    // follows the outcome, so it is waited for).
    let pilots = cfg.slurm.shared_dir.join(".pilots");
    let count = || {
        let mut runs = 0;
        for e in std::fs::read_dir(&pilots).unwrap().flatten() {
            if e.file_name().to_string_lossy().ends_with(".err") {
                let log = std::fs::read_to_string(e.path()).unwrap_or_default();
                runs += log
                    .lines()
                    .filter(|l| l.contains("step ended") && l.contains(&id))
                    .count();
            }
        }
        runs
    };
    let start = Instant::now();
    while count() == 0 && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(), 1, "not run exactly once");
}
