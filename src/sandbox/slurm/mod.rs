//! The `slurm` runner: each job runs as `labgrader sandbox --job-dir DIR`
//! on a compute node of a Slurm cluster, submitted through slurmrestd's
//! REST API (OpenAPI plugin `[slurm] api_version`, JWT auth).
//!
//! It owns the job directory under `[slurm] shared_dir` (a filesystem
//! mounted at the same path on every node): it copies the workspace there,
//! writes `job.json`, submits, records the Slurm job id in the directory
//! (`slurm_job_id`) before waiting, waits for the outcome the node writes
//! there (inotify plus a cheap look, [`completion`]; Slurm's state is only
//! asked as the backstop for a job that dies without one), and removes the
//! directory. At most `[slurm] max_in_flight` jobs are in Slurm at once. A grader that crashed while a
//! job ran finds the job again through that file (or by the job's name,
//! `labgrader-<job>`) and collects its result instead of submitting twice.
//!
//! Slurm's answers are untrusted input parsed into small typed structs;
//! unknown fields are ignored, missing ones are faults of the cluster, never
//! of the student. It never shells out to `sbatch`/`scancel`, never reads
//! the summary, never touches the spool or the gradebook.
//!
//! Files: [`runner`] (submit, wait, re-attach, collect, clean up),
//! [`rest`] (the slurmrestd client and its answers), [`jobfiles`] (the
//! job directory on the shared filesystem), [`completion`] (noticing the
//! node's outcome), [`states`] (what Slurm's states and the node's outcome
//! mean) and [`timing`] (per-phase histograms).

pub mod completion;
pub mod jobfiles;
pub mod pilot;
pub mod pool;
pub mod rest;
pub mod runner;
pub mod states;
pub mod tickets;
pub mod timing;

pub use jobfiles::{SLURM_ERR_FILE, SLURM_ID_FILE, SLURM_OUT_FILE, copy_tree};
pub use rest::{JOB_NAME_PREFIX, RestClient, SlurmError, SlurmJob};
pub use runner::{SlurmRunner, SubmitHook, available};
pub use states::{Phase, decode_wait_status, memory_per_node_mib, phase, time_limit_minutes};
