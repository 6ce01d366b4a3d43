//! `labgrader sandbox --job-dir DIR`: one prepared job run in the native
//! sandbox, from files to files — what a Slurm compute node executes.
//!
//! Input, written by the grader:
//! - `DIR/job.json`: [`JobFile`] — `{"version": 1, "job_id": "…",
//!   "env": {"LABGRADER_JOB_ID": "…", …}, "limits": {"timeout": 60.0,
//!   "memory": 536870912, "pids": 256, "output": 1048576, "cpus": 1.0,
//!   "file_size": 67108864, "open_files": 256}}` (timeout in seconds, sizes
//!   in bytes; unknown keys are refused), plus, optional, `"contract":
//!   "stdout"|"trusted"` and `"test_paths": ["test_all", "data", …]` (the
//!   workspace entries that came from the tests, relative).
//! - `DIR/workspace/`: the workspace, `test_all` at its top (`stdout`), or
//!   the student's tree with the tests' `public/` (`trusted`).
//! - `DIR/tests/`: the test tree, the harness's (`trusted` only).
//!
//! Output, written only when the run itself worked (whatever the student's
//! code did; exit status 0): `DIR/stdout` and `DIR/stderr` (the kept bytes,
//! at most `limits.output` each, without a truncation mark),
//! `DIR/stdout.tail` and `DIR/stderr.tail` (the last bytes of a stream
//! that overflowed, at most 64 KiB; empty otherwise), the harness's
//! results files in `DIR/results/` (`trusted`), and, last, so that its
//! presence means "complete", `DIR/outcome.json`: [`OutcomeFile`].
//! A grader fault (setup failed, bad job file) writes nothing, prints the
//! error and exits non-zero. This module reads only those files and never
//! writes outside `DIR`. `job.json` is untrusted input: it is size-capped,
//! parsed strictly, and its values go through the same validation as a
//! daemon run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::NativeRunner;
use crate::config::NativeConfig;
use crate::result::{Captured, Limits, Termination};
use crate::sandbox::{Contract, RunSpec, Runner, SandboxError};

/// Version of both files.
pub const VERSION: u32 = 1;
/// Largest `job.json` accepted.
const MAX_JOB_FILE: u64 = 1 << 20;

/// `DIR/job.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    pub version: u32,
    pub job_id: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub limits: Limits,
    #[serde(default)]
    pub contract: Contract,
    /// Relative paths of the workspace entries that came from the tests.
    #[serde(default)]
    pub test_paths: Vec<PathBuf>,
}

/// `DIR/outcome.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutcomeFile {
    pub version: u32,
    pub job_id: String,
    pub runner: String,
    pub termination: Termination,
    /// `total` bytes produced and whether some were dropped.
    pub stdout: Captured,
    pub stderr: Captured,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    /// A writable place of the job was full (`limits.disk`) at its end.
    #[serde(default)]
    pub disk_full: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum JobDirError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_JOB_FILE} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path} is not a valid job file: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: version {found} is not supported (expected {VERSION})")]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: job_id must be 1-200 characters of [A-Za-z0-9._-] not starting with a dot")]
    JobId { path: PathBuf },
    #[error("{path}: {message}")]
    Limits { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

/// Read and check `DIR/job.json`.
pub fn read_job_file(dir: &Path) -> Result<JobFile, JobDirError> {
    let path = dir.join("job.json");
    let read = |source| JobDirError::Read {
        path: path.clone(),
        source,
    };
    let meta = std::fs::metadata(&path).map_err(read)?;
    if meta.len() > MAX_JOB_FILE {
        return Err(JobDirError::TooLarge { path });
    }
    let text = std::fs::read(&path).map_err(read)?;
    let job: JobFile = serde_json::from_slice(&text).map_err(|source| JobDirError::Parse {
        path: path.clone(),
        source,
    })?;
    if job.version != VERSION {
        return Err(JobDirError::Version {
            path,
            found: job.version,
        });
    }
    if !crate::spool::is_valid_name(&job.job_id) {
        return Err(JobDirError::JobId { path });
    }
    let l = &job.limits;
    let bad = |message: &str| JobDirError::Limits {
        path: path.clone(),
        message: message.into(),
    };
    if l.timeout.is_zero() {
        return Err(bad("limits.timeout must be positive"));
    }
    if l.memory < (4 << 20) {
        return Err(bad("limits.memory must be at least 4 MiB"));
    }
    if l.pids < 2 || l.open_files < 8 {
        return Err(bad(
            "limits.pids must be at least 2 and limits.open_files at least 8",
        ));
    }
    if !l.cpus.is_finite() || l.cpus < 0.0 {
        return Err(bad("limits.cpus must be a non-negative number"));
    }
    if job.test_paths.iter().any(|p| {
        p.components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    }) {
        return Err(bad("test_paths must be plain relative paths"));
    }
    Ok(job)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), JobDirError> {
    let err = |source| JobDirError::Write {
        path: path.to_path_buf(),
        source,
    };
    crate::sandbox::jobdir::write_atomic(path, bytes).map_err(err)
}

/// Run `DIR/workspace` as `DIR/job.json` says; write the outcome files.
pub async fn run_job_dir(
    cfg: &NativeConfig,
    dir: &Path,
    cancel: &CancellationToken,
) -> Result<OutcomeFile, JobDirError> {
    let job = read_job_file(dir)?;
    let mut runner = NativeRunner::new(cfg)?;
    // Inside a Slurm job, the job's cgroup (memory_per_node) enforces memory
    // and Slurm reports the OOM kill as OUT_OF_MEMORY.
    if std::env::var_os("SLURM_JOB_ID").is_some() {
        runner = runner.with_external_memory_limit();
    }
    let mut spec = RunSpec::new(
        job.job_id.clone(),
        dir.join("workspace"),
        job.env.clone().into_iter().collect(),
        job.limits.clone(),
    );
    spec.contract = job.contract;
    spec.test_paths = std::sync::Arc::new(job.test_paths.clone());
    if job.contract == Contract::Trusted {
        spec.tests = Some(dir.join("tests"));
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
    let oom_before = super::cgroup::own_oom_kills();
    let mut outcome = runner.run(&spec, cancel).await?;
    if super::cgroup::own_oom_kills() > oom_before
        && matches!(
            outcome.termination,
            Termination::Exited { .. } | Termination::Signaled { .. }
        )
    {
        outcome.termination = Termination::MemoryLimit;
    }
    write_atomic(&dir.join("stdout"), &outcome.stdout.bytes)?;
    write_atomic(&dir.join("stderr"), &outcome.stderr.bytes)?;
    // The end of a stream that overflowed: the grader reads the summary
    // from it, as on every other runner.
    write_atomic(&dir.join("stdout.tail"), &outcome.stdout.tail)?;
    write_atomic(&dir.join("stderr.tail"), &outcome.stderr.tail)?;
    let file = OutcomeFile {
        version: VERSION,
        job_id: job.job_id,
        runner: outcome.runner,
        termination: outcome.termination,
        stdout: outcome.stdout,
        stderr: outcome.stderr,
        started_at: outcome.started_at,
        ended_at: outcome.ended_at,
        disk_full: outcome.disk_full,
    };
    let json = serde_json::to_vec_pretty(&file).expect("outcome serializes");
    write_atomic(&dir.join("outcome.json"), &json)?;
    tracing::info!(job_id = %file.job_id, termination = ?file.termination, "sandbox job done");
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(json: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("job.json"), json).unwrap();
        d
    }

    const LIMITS: &str = r#"{"timeout": 5, "memory": 67108864, "pids": 32, "output": 1024,
        "cpus": 1.0, "file_size": 1048576, "open_files": 64}"#;

    #[test]
    fn job_file_parses() {
        let d = dir_with(&format!(
            r#"{{"version": 1, "job_id": "01J-abc", "env": {{"A": "b"}}, "limits": {LIMITS}}}"#
        ));
        let j = read_job_file(d.path()).unwrap();
        assert_eq!(j.job_id, "01J-abc");
        assert_eq!(j.limits.pids, 32);
    }

    #[test]
    fn job_file_rejects_unknown_keys_versions_and_ids() {
        for (json, want) in [
            (
                format!(r#"{{"version": 1, "job_id": "a", "limits": {LIMITS}, "x": 1}}"#),
                "not a valid job file",
            ),
            (
                format!(r#"{{"version": 2, "job_id": "a", "limits": {LIMITS}}}"#),
                "version 2",
            ),
            (
                format!(r#"{{"version": 1, "job_id": "../x", "limits": {LIMITS}}}"#),
                "job_id",
            ),
            ("{".to_string(), "not a valid job file"),
        ] {
            let d = dir_with(&json);
            let e = read_job_file(d.path()).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn job_file_rejects_zero_timeout() {
        let limits = LIMITS.replace("\"timeout\": 5", "\"timeout\": 0");
        let d = dir_with(&format!(
            r#"{{"version": 1, "job_id": "a", "limits": {limits}}}"#
        ));
        let e = read_job_file(d.path()).unwrap_err().to_string();
        assert!(e.contains("timeout"), "{e}");
    }
}
