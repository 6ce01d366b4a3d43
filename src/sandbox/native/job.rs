//! `labgrader sandbox --job-dir DIR`: one prepared job run in the native
//! sandbox, from files to files — what a Slurm compute node executes. The
//! files and their shapes are the job directory's
//! ([`crate::sandbox::jobdir`]); this module only runs what `job.json`
//! says and hands the outcome back to it.
//!
//! Output, written only when the run itself worked (whatever the student's
//! code did; exit status 0): the captured streams, the harness's results
//! files in `DIR/results/` (`trusted`) and, last, `DIR/outcome.json`. A
//! grader fault (setup failed, bad job file) writes nothing, prints the
//! error and exits non-zero. It never writes outside `DIR`.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::runner::NativeRunner;
use crate::config::{Contract, NativeConfig};
use crate::result::Termination;
use crate::sandbox::jobdir::{JobDir, VERSION};
pub use crate::sandbox::jobdir::{JobDirError, OutcomeFile};
use crate::sandbox::spec::{RunSpec, Runner};

/// Run `DIR/workspace` as `DIR/job.json` says; write the outcome files.
pub async fn run_job_dir(
    cfg: &NativeConfig,
    dir: &Path,
    cancel: &CancellationToken,
) -> Result<OutcomeFile, JobDirError> {
    let jd = JobDir::new(dir);
    let job = jd.read_job()?;
    let mut runner = NativeRunner::new(cfg)?;
    // Inside a Slurm job, the job's cgroup (memory_per_node) enforces memory
    // and Slurm reports the OOM kill as OUT_OF_MEMORY.
    if std::env::var_os("SLURM_JOB_ID").is_some() {
        runner = runner.with_external_memory_limit();
    }
    let mut spec = RunSpec::new(
        job.job_id.clone(),
        jd.workspace(),
        job.env.clone().into_iter().collect(),
        job.limits.clone(),
    );
    spec.contract = job.contract;
    spec.test_paths = std::sync::Arc::new(job.test_paths.clone());
    if job.contract == Contract::Trusted {
        spec.tests = Some(jd.tests());
        // Only what this run leaves there comes back.
        let results = &spec.results;
        if results.exists() {
            std::fs::remove_dir_all(results).map_err(|source| JobDirError::Write {
                path: results.clone(),
                source,
            })?;
        }
        std::fs::create_dir(results).map_err(|source| JobDirError::Write {
            path: results.clone(),
            source,
        })?;
    }
    tracing::info!(job_id = %job.job_id, dir = %dir.display(), "sandbox job starting");
    // Under Slurm the job's memory cgroup is Slurm's: an OOM kill in it
    // during the run names the limit, as the native runner's own does.
    let oom_before = crate::sandbox::native::cgroup::own_oom_kills();
    let mut outcome = runner.run(&spec, cancel).await?;
    if crate::sandbox::native::cgroup::own_oom_kills() > oom_before
        && matches!(
            outcome.termination,
            Termination::Exited { .. } | Termination::Signaled { .. }
        )
    {
        outcome.termination = Termination::MemoryLimit;
    }
    let file = OutcomeFile {
        version: VERSION,
        job_id: job.job_id,
        runner: outcome.runner,
        termination: outcome.termination,
        stdout: outcome.stdout,
        stderr: outcome.stderr,
        started_at: outcome.started_at,
        ended_at: outcome.ended_at,
        host: None,
        setup_error: None,
        disk_full: outcome.disk_full,
    };
    jd.write_outcome(&file)?;
    tracing::info!(job_id = %file.job_id, termination = ?file.termination, "sandbox job done");
    Ok(file)
}
