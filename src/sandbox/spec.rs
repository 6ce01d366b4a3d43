//! The runners' shared vocabulary: what a run is asked to do ([`RunSpec`]),
//! how it ended ([`RunOutcome`]), the [`Runner`] interface, the grader
//! faults a runner reports ([`SandboxError`]) and the names every sandbox
//! agrees on (`./test_all`, `run-as-student`, the environment, the results
//! caps). Every runner imports it directly. It holds no runner and never
//! builds one (`sandbox::build_runner` does), never runs anything.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::config::Contract;
use crate::result::{Captured, Limits, Termination};

/// The command every runner executes, relative to its working directory
/// (the workspace under `stdout`, the harness's copy of the tests under
/// `trusted`).
pub const TEST_COMMAND: &str = "./test_all";

/// Inside every sandbox: `run-as-student CMD ARGS…` runs CMD as the student
/// identity in the workspace (trusted contract).
pub const RUN_AS_STUDENT: &str = "run-as-student";
/// Variable naming the student's workspace inside the sandbox.
pub const ENV_WORKSPACE: &str = "LABGRADER_WORKSPACE";
/// Variable naming the results directory inside the sandbox (trusted
/// contract only): writable by the harness alone.
pub const ENV_RESULTS: &str = "LABGRADER_RESULTS";
/// At most this many bytes of results files come back from a sandbox.
pub const RESULTS_BYTES: u64 = 8 << 20;
/// At most this many results files come back from a sandbox.
pub const RESULTS_FILES: usize = 16;
/// `PATH` given to test scripts.
pub const SAFE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// One run: what to execute and under which limits.
///
/// The host side of a job directory (`<work>/<job>/`): `workspace/`,
/// `tests/` (trusted only), `results/` and `runner/`. What each runner must
/// guarantee about them, on every runner that isolates (`none` does not):
///
/// - `stdout` contract: `./test_all` runs in the workspace as the student
///   identity. The entries listed in `test_paths` came from the test
///   repository: they are owned by another identity and the student
///   identity cannot write, unlink, rename or replace them (files without
///   write bits, directories sticky and owned by that identity; student
///   files inside stay the student's).
/// - `trusted` contract: `./test_all` (the harness) runs as a harness
///   identity with a private copy of `tests` as its working directory (the
///   test files immutable for everyone, the harness included; the directory
///   writable by the harness; nothing of it readable by the student
///   identity). `run-as-student CMD…` on `PATH` runs CMD as the student
///   identity in the workspace, with the job's limits, a clean environment
///   (`PATH`, `HOME`, `LANG` and `env`), its exit status passed back (a
///   signal death as 128+N), and nothing it started left running when it
///   exits. The student identity cannot write the tests or the results, nor
///   signal, ptrace or read the harness. `$LABGRADER_RESULTS` is a
///   directory only the harness can write; after the run the regular files
///   it holds (at most [`RESULTS_FILES`], [`RESULTS_BYTES`] in all, never
///   through a symlink) are left in the host directory `results`.
/// - Both: `$LABGRADER_WORKSPACE` names the workspace; everything the job
///   writes counts against `limits.disk`, never the spool's filesystem.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub job_id: String,
    /// Host directory holding the workspace: the student's tree with the
    /// test files (`stdout`) or the tests' `public/` (`trusted`) laid over it.
    pub workspace: PathBuf,
    /// The documented environment; nothing else is inherited.
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    /// Image for container runners (`None` = the runner's configured default).
    pub image: Option<String>,
    pub contract: Contract,
    /// Entries of `workspace` that came from the test repository, relative,
    /// in walk order (a directory before its contents).
    pub test_paths: Arc<Vec<PathBuf>>,
    /// `trusted` only: the test tree, the harness's working directory.
    pub tests: Option<PathBuf>,
    /// Host directory, empty at start, that receives the harness's results
    /// files after the run (`trusted` only).
    pub results: PathBuf,
    /// Host directory private to the runner (its own helper files).
    pub scratch: PathBuf,
}

impl RunSpec {
    /// A `stdout`-contract run of the workspace at `workspace`, whose
    /// siblings `results/` and `runner/` are the results and scratch
    /// directories (created by the caller when needed).
    pub fn new(
        job_id: impl Into<String>,
        workspace: PathBuf,
        env: Vec<(String, String)>,
        limits: Limits,
    ) -> RunSpec {
        let results = workspace.with_file_name("results");
        let scratch = workspace.with_file_name("runner");
        RunSpec {
            job_id: job_id.into(),
            workspace,
            env,
            limits,
            image: None,
            contract: Contract::Stdout,
            test_paths: Arc::new(Vec::new()),
            tests: None,
            results,
            scratch,
        }
    }

    /// The directory `./test_all` runs in on the host side: the tests
    /// (`trusted`) or the workspace (`stdout`).
    pub fn harness_dir(&self) -> &std::path::Path {
        match (&self.contract, &self.tests) {
            (Contract::Trusted, Some(t)) => t,
            _ => &self.workspace,
        }
    }
}

/// A finished run (whatever the student's code did).
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub termination: Termination,
    pub stdout: Captured,
    pub stderr: Captured,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    /// Runner name as recorded in results (`none`, `docker`, …).
    pub runner: String,
    /// Image name used, when the runner has images.
    pub image: Option<String>,
    /// Immutable image id/digest, so the grade can be reproduced.
    pub image_id: Option<String>,
    /// The job's writable space was full (`limits.disk`) when it ended.
    pub disk_full: bool,
}

impl RunOutcome {
    /// A run that ended now, by a runner without images (`none`, `native`).
    pub fn without_image(
        runner: &str,
        termination: Termination,
        stdout: Captured,
        stderr: Captured,
        started_at: DateTime<Utc>,
    ) -> RunOutcome {
        RunOutcome {
            termination,
            stdout,
            stderr,
            started_at,
            ended_at: Utc::now(),
            runner: runner.to_string(),
            image: None,
            image_id: None,
            disk_full: false,
        }
    }
}

/// The grader's own faults: retried, never charged to the student.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox setup failed at {step}: {message}")]
    Setup { step: &'static str, message: String },
    #[error("runner `{runner}` is unavailable: {message}")]
    Unavailable { runner: String, message: String },
    #[error("cancelled by shutdown")]
    Cancelled,
    #[error("i/o error in runner: {0}")]
    Io(#[from] std::io::Error),
}

impl SandboxError {
    /// A setup failure at `step` (what was being done), saying why.
    pub fn setup(step: &'static str, message: impl std::fmt::Display) -> SandboxError {
        SandboxError::Setup {
            step,
            message: message.to_string(),
        }
    }
}

/// A place `test_all` can run. Implementations must: kill everything the
/// run started when it ends, times out or is cancelled; keep at most
/// `limits.output` bytes of each stream in memory; leave nothing behind
/// (containers, cgroups, processes).
#[async_trait::async_trait]
pub trait Runner: Send + Sync {
    /// Name recorded in results.
    fn name(&self) -> &'static str;

    async fn run(
        &self,
        spec: &RunSpec,
        cancel: &CancellationToken,
    ) -> Result<RunOutcome, SandboxError>;

    /// Remove what jobs of a crashed daemon left behind (the docker
    /// runner's labelled containers). Called once by the daemon at start,
    /// before any job runs; returns how many were removed.
    async fn remove_orphans(&self) -> Result<usize, SandboxError> {
        Ok(0)
    }

    /// Remove what jobs `running` does not name left behind (an attempt
    /// interrupted by an engine restart); called periodically while jobs
    /// run. Returns how many were removed.
    async fn sweep(
        &self,
        _running: &std::collections::HashSet<String>,
    ) -> Result<usize, SandboxError> {
        Ok(0)
    }

    /// Remove what an earlier attempt of `job_id` left, before its retry.
    async fn remove_job(&self, _job_id: &str) -> Result<usize, SandboxError> {
        Ok(0)
    }

    /// Does the runner's engine answer now? (Retries waiting for it go
    /// out as soon as it does.)
    async fn answers(&self) -> bool {
        true
    }
}
