//! What Slurm's answers mean for a job: where it stands ([`Phase`]), its
//! raw wait status, the limits asked of Slurm, and the verdict of an ended
//! job from Slurm's end state and the outcome the node wrote
//! (`verdict`): the student's (a termination) or the grader's (a fault).
//! It never calls slurmrestd and never writes the job directory.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::jobfiles::{SLURM_ERR_FILE, read_outcome_patiently, tail_of};
use super::rest::{SlurmError, SlurmJob};
use crate::result::{Captured, Termination};
use crate::sandbox::jobdir::{JobDir, OutcomeFile};
use crate::sandbox::spec::{RunOutcome, SandboxError};

/// Added to the job's timeout for Slurm's time limit (start-up of the
/// sandbox, copying output back) before rounding up to whole minutes.
const TIME_LIMIT_MARGIN: Duration = Duration::from_secs(30);

/// Where a job stands, from labgrader's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a node (or being requeued).
    Queued,
    /// On a node (or its processes being cleaned up).
    Running,
    /// Ended; its processes are gone.
    Ended,
}

/// Classify a `job_state` string. `COMPLETING` is still running: the
/// node is killing what is left, and only then is the job truly over.
pub fn phase(state: &str) -> Phase {
    match state {
        "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED"
        | "RESV_DEL_HOLD" | "SUSPENDED" | "RESIZING" => Phase::Queued,
        "RUNNING" | "COMPLETING" | "STAGE_OUT" | "SIGNALING" | "STOPPED" => Phase::Running,
        _ => Phase::Ended,
    }
}

/// Decode a raw wait status as Slurm reports it in `exit_code`
/// (`WIFSIGNALED` → the signal, else `WEXITSTATUS`).
pub fn decode_wait_status(raw: i64) -> Termination {
    let signal = (raw & 0x7f) as i32;
    if signal != 0 {
        Termination::Signaled { signal }
    } else {
        Termination::Exited {
            code: ((raw >> 8) & 0xff) as i32,
        }
    }
}

/// Slurm's time limit for a job: the sandbox's timeout plus a margin, in
/// whole minutes rounded up (a backstop; the sandbox's own second-level
/// timeout fires first).
pub fn time_limit_minutes(timeout: Duration) -> u64 {
    let secs = (timeout + TIME_LIMIT_MARGIN).as_secs_f64();
    ((secs / 60.0).ceil() as u64).max(1)
}

/// Slurm's memory limit in MiB: the job's limit plus `margin`, rounded up.
pub fn memory_per_node_mib(memory: u64, margin: u64) -> u64 {
    (memory.saturating_add(margin)).div_ceil(1 << 20).max(1)
}

/// Turn the ended job and what the node wrote into a verdict.
pub(super) async fn verdict(
    jd: &JobDir,
    slurm_id: Option<u64>,
    job: Option<SlurmJob>,
) -> Result<RunOutcome, SandboxError> {
    let outcome = read_outcome_patiently(jd).await;
    let id = slurm_id.unwrap_or_default();
    let state = job.as_ref().map(|j| j.state().to_string());
    let slurm_err = || tail_of(&jd.file(SLURM_ERR_FILE));
    let limit_hit = match state.as_deref() {
        Some("OUT_OF_MEMORY") => Some(Termination::MemoryLimit),
        Some("TIMEOUT") => Some(Termination::Timeout),
        // Ended normally (or Slurm forgot it): the node's outcome decides.
        Some("COMPLETED") | Some("FAILED") | None => None,
        Some("CANCELLED") => {
            return Err(SlurmError::Job {
                slurm_id: id,
                message: "was cancelled outside labgrader".into(),
            }
            .into());
        }
        Some(other) => {
            let reason = job
                .as_ref()
                .and_then(|j| j.state_reason.clone())
                .unwrap_or_default();
            return Err(SlurmError::Job {
                slurm_id: id,
                message: format!("ended {other} (reason: {reason}){}", slurm_err()),
            }
            .into());
        }
    };
    match (outcome, limit_hit) {
        // Slurm's verdict wins: the sandbox may have been killed
        // mid-write (its SIGTERM shows as a setup error).
        (Some(mut o), Some(t)) if o.setup_error.is_none() => {
            o.termination = t;
            Ok(from_node(o))
        }
        (_, Some(t)) => {
            let (started_at, ended_at) = job_times(job.as_ref());
            Ok(RunOutcome {
                termination: t,
                stdout: Captured::default(),
                stderr: Captured::default(),
                started_at,
                ended_at,
                runner: "slurm".into(),
                image: None,
                image_id: None,
                disk_full: false,
            })
        }
        (Some(o), None) if o.setup_error.is_some() => Err(SandboxError::Setup {
            step: "sandbox on the node",
            message: format!(
                "{} (host {})",
                o.setup_error.unwrap_or_default(),
                o.host.unwrap_or_default()
            ),
        }),
        (Some(o), None) => Ok(from_node(o)),
        (None, None) => {
            let status = match job.as_ref().and_then(|j| j.exit_code) {
                Some(raw) => format!(" ({:?})", decode_wait_status(raw)),
                None => String::new(),
            };
            Err(SlurmError::Job {
                slurm_id: id,
                message: format!(
                    "ended {} without an outcome from the sandbox{status}{}",
                    state.as_deref().unwrap_or("and was forgotten by Slurm"),
                    slurm_err()
                ),
            }
            .into())
        }
    }
}

/// The node's outcome as the slurm runner's.
fn from_node(o: OutcomeFile) -> RunOutcome {
    RunOutcome {
        termination: o.termination,
        stdout: o.stdout,
        stderr: o.stderr,
        started_at: o.started_at,
        ended_at: o.ended_at,
        runner: "slurm".into(),
        image: None,
        image_id: None,
        disk_full: o.disk_full,
    }
}

fn job_times(job: Option<&SlurmJob>) -> (DateTime<Utc>, DateTime<Utc>) {
    let now = Utc::now();
    let t = |s: Option<i64>| {
        s.filter(|s| *s > 0)
            .and_then(|s| DateTime::from_timestamp(s, 0))
            .unwrap_or(now)
    };
    (
        t(job.and_then(|j| j.start_time)),
        t(job.and_then(|j| j.end_time)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::jobdir::{OUTCOME_FILE, STDOUT_FILE};

    #[test]
    fn wait_status_is_decoded_like_waitpid() {
        assert_eq!(decode_wait_status(0), Termination::Exited { code: 0 });
        // What 22.05 reported for `exit 3`, `kill -SEGV $$` (core) and scancel.
        assert_eq!(decode_wait_status(768), Termination::Exited { code: 3 });
        assert_eq!(
            decode_wait_status(139),
            Termination::Signaled { signal: 11 }
        );
        assert_eq!(decode_wait_status(15), Termination::Signaled { signal: 15 });
        assert_eq!(decode_wait_status(9), Termination::Signaled { signal: 9 });
    }

    #[test]
    fn time_limit_is_whole_minutes_rounded_up_over_the_timeout() {
        assert_eq!(time_limit_minutes(Duration::from_secs(8)), 1);
        assert_eq!(time_limit_minutes(Duration::from_secs(30)), 1);
        assert_eq!(time_limit_minutes(Duration::from_secs(31)), 2);
        assert_eq!(time_limit_minutes(Duration::from_secs(120)), 3);
    }

    #[test]
    fn memory_limit_is_mib_with_margin_rounded_up() {
        assert_eq!(memory_per_node_mib(128 << 20, 64 << 20), 192);
        assert_eq!(memory_per_node_mib((128 << 20) + 1, 0), 129);
        assert_eq!(memory_per_node_mib(0, 0), 1);
    }

    #[test]
    fn completing_is_not_ended() {
        assert_eq!(phase("PENDING"), Phase::Queued);
        assert_eq!(phase("RUNNING"), Phase::Running);
        assert_eq!(phase("COMPLETING"), Phase::Running);
        for s in [
            "COMPLETED",
            "FAILED",
            "TIMEOUT",
            "OUT_OF_MEMORY",
            "CANCELLED",
            "NODE_FAIL",
            "BOOT_FAIL",
        ] {
            assert_eq!(phase(s), Phase::Ended, "{s}");
        }
    }

    fn ended(state: &str, exit_code: i64) -> Option<SlurmJob> {
        Some(SlurmJob {
            job_id: Some(7),
            job_state: Some(state.into()),
            exit_code: Some(exit_code),
            ..SlurmJob::default()
        })
    }

    fn node_wrote(jd: &JobDir, t: Termination, setup_error: Option<&str>) {
        std::fs::create_dir_all(&jd.root).unwrap();
        let now = Utc::now();
        let o = OutcomeFile {
            version: crate::sandbox::jobdir::VERSION,
            job_id: "j".into(),
            termination: t,
            stdout: Captured::from_bytes(b"partial".to_vec(), 1024),
            stderr: Captured::default(),
            started_at: now,
            ended_at: now,
            runner: "native".into(),
            host: Some("n1".into()),
            setup_error: setup_error.map(str::to_string),
            disk_full: false,
        };
        std::fs::write(jd.file(STDOUT_FILE), &o.stdout.bytes).unwrap();
        std::fs::write(jd.file(OUTCOME_FILE), serde_json::to_vec(&o).unwrap()).unwrap();
    }

    #[tokio::test]
    async fn slurm_states_map_to_verdicts_or_grader_faults() {
        let t = tempfile::tempdir().unwrap();
        let jd = JobDir::new(t.path().join("j"));

        // The node's own verdict when the job completed.
        node_wrote(&jd, Termination::Exited { code: 2 }, None);
        let o = verdict(&jd, Some(7), ended("COMPLETED", 0)).await.unwrap();
        assert_eq!(o.termination, Termination::Exited { code: 2 });
        assert_eq!(o.runner, "slurm");

        // Slurm's OOM kill overrides the SIGKILL the sandbox saw; output kept.
        node_wrote(&jd, Termination::Signaled { signal: 9 }, None);
        let o = verdict(&jd, Some(7), ended("OUT_OF_MEMORY", 0))
            .await
            .unwrap();
        assert_eq!(o.termination, Termination::MemoryLimit);
        assert_eq!(o.stdout.bytes, b"partial");

        // Slurm's time limit: the sandbox was killed mid-run (SIGTERM shows
        // as its setup error) — still the student's timeout.
        node_wrote(
            &jd,
            Termination::Exited { code: -1 },
            Some("cancelled by shutdown"),
        );
        let o = verdict(&jd, Some(7), ended("TIMEOUT", 15)).await.unwrap();
        assert_eq!(o.termination, Termination::Timeout);

        // A sandbox that could not set up is the grader's fault.
        let e = verdict(&jd, Some(7), ended("COMPLETED", 0))
            .await
            .unwrap_err();
        assert!(matches!(e, SandboxError::Setup { .. }), "{e}");

        for state in ["NODE_FAIL", "BOOT_FAIL", "CANCELLED", "PREEMPTED"] {
            node_wrote(&jd, Termination::Exited { code: 0 }, None);
            let e = verdict(&jd, Some(7), ended(state, 0)).await.unwrap_err();
            assert!(matches!(e, SandboxError::Setup { .. }), "{state}: {e}");
            assert!(e.to_string().contains("slurm job 7"), "{e}");
        }
    }

    #[tokio::test]
    async fn a_job_that_ended_without_an_outcome_is_a_grader_fault_with_its_status() {
        let t = tempfile::tempdir().unwrap();
        let jd = JobDir::new(t.path().join("j"));
        std::fs::create_dir_all(&jd.root).unwrap();
        std::fs::write(jd.file(SLURM_ERR_FILE), "exec: labgrader: not found\n").unwrap();
        let e = verdict(&jd, Some(7), ended("FAILED", 127 << 8))
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, SandboxError::Setup { .. }), "{msg}");
        assert!(msg.contains("code: 127"), "{msg}");
        assert!(msg.contains("not found"), "{msg}");
    }
}
