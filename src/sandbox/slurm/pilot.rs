//! `labgrader sandbox --serve SHARED_DIR`: a pilot, the batch script of a
//! long-running Slurm allocation that takes jobs from the shared queue
//! ([`super::tickets`]) instead of one Slurm job per grading job. Each job
//! still runs alone: as its own Slurm step (`srun --exact`, with the
//! ticket's memory, CPUs and time limit, so Slurm's cgroup bounds it as it
//! would a job of its own) running `labgrader sandbox --job-dir DIR`, the
//! same sandbox, limits and `outcome.json` as without pilots.
//!
//! A pilot takes at most `slots` jobs at once, takes none that could
//! outlive its allocation, exits when idle for `idle`, and on SIGTERM
//! (Slurm's end, scancel) stops taking jobs. A step that ends without an
//! outcome is recorded in the job directory (`pilot_exit`) so the grader
//! learns it at once; a pilot that dies leaves its claimed tickets behind,
//! which the grader's backstop sees through the pilot's Slurm state.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::Command;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::jobfiles::{SLURM_ERR_FILE, SLURM_OUT_FILE};
use super::rest::JOB_NAME_PREFIX;
use super::tickets::{Ticket, Tickets, write_pilot_exit};
use crate::sandbox::jobdir::JobDir;

/// How often the queue is looked at without an inotify wake-up (NFS).
const QUEUE_POLL: Duration = Duration::from_millis(100);
/// Kept free at the end of the allocation: a job is only taken when its
/// step's time limit ends this long before the pilot's.
const END_MARGIN: Duration = Duration::from_secs(30);

/// How a pilot runs.
#[derive(Debug, Clone)]
pub struct PilotArgs {
    pub shared_dir: PathBuf,
    /// This pilot's Slurm job id (`$SLURM_JOB_ID`).
    pub pilot_id: u64,
    pub slots: usize,
    pub idle: Duration,
    /// When the allocation ends (its time limit from the start).
    pub lifetime: Duration,
    /// The `labgrader` binary each step runs.
    pub bin: PathBuf,
}

/// Serve jobs until idle, out of time or `shutdown`. Returns how many
/// jobs were run.
pub async fn serve(a: PilotArgs, shutdown: CancellationToken) -> std::io::Result<usize> {
    let q = Tickets::new(&a.shared_dir);
    let mine = q.pilot_dir(a.pilot_id);
    std::fs::create_dir_all(&mine)?;
    let ends = Instant::now() + a.lifetime;
    let wake = Arc::new(Notify::new());
    let _watcher = {
        let wake = wake.clone();
        crate::watch::watch_dir(&q.queue_dir(), "the pilots' queue", move || {
            wake.notify_one()
        })
    };
    let mut steps: JoinSet<(String, i64)> = JoinSet::new();
    let mut idle_since = Instant::now();
    let mut served = 0usize;
    // Set once a job no longer fits in the time left: the pilot takes no
    // more and ends with its last step, so the grader starts a fresh one.
    let mut closing = false;
    tracing::info!(pilot = a.pilot_id, slots = a.slots, "pilot serving");
    loop {
        // Take what fits.
        if !shutdown.is_cancelled() && !closing {
            for job in q.queued() {
                if steps.len() >= a.slots {
                    break;
                }
                let t = match q.claim(&job, a.pilot_id) {
                    Ok(Some(t)) => t,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(pilot = a.pilot_id, job_id = %job, error = %e, "bad ticket");
                        let _ = q.release(&job, a.pilot_id);
                        continue;
                    }
                };
                let limit = Duration::from_secs(t.time_limit_minutes * 60);
                if Instant::now() + limit + END_MARGIN > ends {
                    // Too late for this allocation: back for another pilot.
                    let _ = std::fs::rename(
                        mine.join(format!("{job}.job")),
                        q.queue_dir().join(format!("{job}.job")),
                    );
                    closing = true;
                    break;
                }
                served += 1;
                let (bin, shared, pilot) = (a.bin.clone(), a.shared_dir.clone(), a.pilot_id);
                steps.spawn(async move {
                    let status = run_step(&bin, &shared, &t).await;
                    // `labgrader sandbox` exits 0 only once the outcome is
                    // written (the grader may already be removing the
                    // directory then: never write into it after a 0).
                    if status != 0 {
                        let jd = JobDir::new(shared.join(&t.job_id));
                        let _ = write_pilot_exit(&jd, pilot, status);
                    }
                    (t.job_id, status)
                });
            }
        }
        if steps.is_empty() {
            let out_of_time = Instant::now() + END_MARGIN * 2 > ends;
            if shutdown.is_cancelled() || closing || out_of_time || idle_since.elapsed() > a.idle {
                break;
            }
        } else {
            idle_since = Instant::now();
        }
        tokio::select! {
            Some(done) = steps.join_next(), if !steps.is_empty() => {
                if let Ok((job, status)) = done {
                    tracing::info!(pilot = a.pilot_id, job_id = %job, status, "step ended");
                    let _ = q.release(&job, a.pilot_id);
                }
            }
            _ = wake.notified() => {}
            _ = tokio::time::sleep(QUEUE_POLL) => {}
            _ = shutdown.cancelled(), if !shutdown.is_cancelled() => {}
        }
    }
    let _ = std::fs::remove_dir(&mine);
    tracing::info!(pilot = a.pilot_id, served, "pilot done");
    Ok(served)
}

/// The job's own Slurm step: `srun --exact` with the ticket's limits,
/// running `labgrader sandbox --job-dir`. Its raw status (-1: no srun).
async fn run_step(bin: &Path, shared: &Path, t: &Ticket) -> i64 {
    let jd = JobDir::new(shared.join(&t.job_id));
    let r = Command::new("srun")
        .args([
            "--exact",
            "--overcommit",
            "--quiet",
            "--nodes=1",
            "--ntasks=1",
        ])
        .arg(format!("--cpus-per-task={}", t.cpus.max(1)))
        .arg(format!("--mem={}M", t.memory_mib.max(1)))
        .arg(format!("--time={}", t.time_limit_minutes.max(1)))
        .arg(format!("--job-name={JOB_NAME_PREFIX}{}", t.job_id))
        .arg(format!("--chdir={}", jd.root.display()))
        .arg(format!("--output={}", jd.file(SLURM_OUT_FILE).display()))
        .arg(format!("--error={}", jd.file(SLURM_ERR_FILE).display()))
        .arg("--input=none")
        .arg(bin)
        .args(["sandbox", "--job-dir"])
        .arg(&jd.root)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .status()
        .await;
    match r {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            i64::from(s.into_raw())
        }
        Err(e) => {
            tracing::warn!(job_id = %t.job_id, error = %e, "cannot run srun");
            -1
        }
    }
}
