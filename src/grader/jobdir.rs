//! A job's own directory under `<spool>/work/` while it is graded.
//!
//! Owns `<work>/<job>/` from its creation to its removal on drop:
//! `workspace/` (the student's tree and what the tests lay over it),
//! `tests/` (the harness's copy, trusted contract), `results/` and
//! `runner/` (see [`RunSpec`]), and how the test tree is laid into it for
//! each contract, and the environment `test_all` gets. It never fetches, never runs anything and never writes
//! outside its root.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::warn;

use crate::config::Contract;
use crate::event::Event;
use crate::result::Limits;
use crate::sandbox::RunSpec;
use crate::workspace::{self, WorkspaceError, WorkspaceLimits};

/// `<spool>/work/`, where the job directories are.
pub fn work_dir(spool_root: &Path) -> PathBuf {
    spool_root.join("work")
}

/// Made in a job's directory when its run starts (it has a run slot): a
/// job in `active/` without it is prepared and waiting for one.
const RUNNING: &str = ".running";

/// Has the run of `job_id` (a job in `active/`) started? For the web view:
/// a prepared job is still waiting for a run slot.
pub fn run_started(spool_root: &Path, job_id: &str) -> bool {
    crate::spool::is_valid_name(job_id) && work_dir(spool_root).join(job_id).join(RUNNING).exists()
}

/// `<work>/<job>/`: `workspace/` (the student's tree and what the tests
/// lay over it) and, under the trusted contract only, `tests/` (the
/// harness's copy), `results/` and `runner/` (see [`RunSpec`]); removed
/// on drop.
pub struct JobDir {
    root: PathBuf,
}

impl JobDir {
    pub fn create(work: &Path, job_id: &str) -> Result<JobDir, WorkspaceError> {
        let root = work.join(job_id);
        let _ = workspace::remove_tree(&root);
        let dir = JobDir { root };
        dir.make(&["workspace"])?;
        Ok(dir)
    }

    /// The run starts now (see [`run_started`]); best effort: without
    /// the mark the web view says "prepared" a little longer.
    pub fn mark_running(&self) {
        if let Err(e) = std::fs::File::create(self.root.join(RUNNING)) {
            warn!(error = %e, "cannot mark the run as started");
        }
    }

    /// Make these subdirectories (and the root). Only the trusted contract
    /// needs `tests/`, `results/` and `runner/`: on a busy grader every
    /// directory made and removed per job is inode churn.
    fn make(&self, subs: &[&str]) -> Result<(), WorkspaceError> {
        for sub in subs {
            let d = self.root.join(sub);
            std::fs::create_dir_all(&d)
                .map_err(|source| WorkspaceError::Write { path: d, source })?;
        }
        Ok(())
    }

    pub fn workspace(&self) -> PathBuf {
        self.root.join("workspace")
    }

    fn tests(&self) -> PathBuf {
        self.root.join("tests")
    }

    /// Lay the test tree `tests` into this job directory as `contract` says.
    pub fn lay_tests(
        &self,
        tests: &Path,
        contract: Contract,
        limits: &WorkspaceLimits,
    ) -> Result<workspace::Laid, WorkspaceError> {
        match contract {
            Contract::Stdout => workspace::finish(tests, &self.workspace(), limits),
            Contract::Trusted => {
                self.make(&["tests", "results", "runner"])?;
                workspace::finish_trusted(tests, &self.workspace(), &self.tests(), limits)
            }
        }
    }

    /// The run of this job directory, laid out by [`JobDir::lay_tests`].
    pub fn spec(
        &self,
        job_id: &str,
        env: Vec<(String, String)>,
        limits: &Limits,
        contract: Contract,
        laid: workspace::Laid,
    ) -> RunSpec {
        RunSpec {
            contract,
            test_paths: Arc::new(laid.test_paths),
            tests: (contract == Contract::Trusted).then(|| self.tests()),
            results: self.root.join("results"),
            scratch: self.root.join("runner"),
            ..RunSpec::new(job_id, self.workspace(), env, limits.clone())
        }
    }
}

impl Drop for JobDir {
    fn drop(&mut self) {
        if let Err(e) = workspace::remove_tree(&self.root) {
            warn!(path = %self.root.display(), error = %e, "cannot remove a workspace");
        }
    }
}

/// The documented environment of `test_all` (PATH, HOME, LANG come from the runner).
pub fn job_env(ev: &Event, tests_sha: &str) -> Vec<(String, String)> {
    vec![
        ("LABGRADER_JOB_ID".into(), ev.job_id.clone()),
        ("LABGRADER_PROJECT".into(), ev.project.path.clone()),
        ("LABGRADER_REF".into(), ev.git_ref.clone()),
        ("LABGRADER_STUDENT_SHA".into(), ev.commit.clone()),
        ("LABGRADER_TESTS_SHA".into(), tests_sha.to_string()),
        (
            "LABGRADER_PUSHER".into(),
            ev.pusher.username.clone().unwrap_or_default(),
        ),
    ]
}
