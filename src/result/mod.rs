//! A job's result: the record the grader writes to `done/<job>/result.json`,
//! the gradebook stores, and deliveries send. Shared vocabulary; no I/O.
//! Also the [`Verdict`] of a job stopped without a run and
//! [`result_without_run`], the fields every result has whether it ran or
//! not: the grader builds a run's result over it, and the stages that end
//! a job without grading it (an expired hold) use it too; deciding whose
//! fault a failure is stays in the grader.

pub mod captured;
pub mod run;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::{Event, EventKind, HookSource};

pub use captured::Captured;
pub use run::{Limits, Termination};

pub const RESULT_SCHEMA: u32 = 1;

/// A grade as people and spreadsheets write it: the shortest exact
/// decimal (`87.5`, `100`), never `-0`.
pub fn format_grade(g: f64) -> String {
    if g == 0.0 {
        return "0".into();
    }
    format!("{g}")
}

/// What became of a job. Student-side outcomes are final; `InfraError`
/// is the grader's fault and only appears after the retries ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A grade was read (`results.json` under the trusted contract, the
    /// summary under the stdout contract) and no limit stopped the run.
    Graded,
    /// `test_all` ran but gave no grade: no valid summary / `grade_total`
    /// (stdout contract), no `results.json` (trusted contract).
    NoGrade,
    /// Killed at the wall-clock limit (a partial grade may still count).
    Timeout,
    /// Killed by the memory limit (a partial grade may still count).
    MemoryLimit,
    /// The workspace exceeded its size or file-count limit.
    WorkspaceLimit,
    /// The job filled its disk quota (`[grader] disk`).
    DiskLimit,
    /// stdout was cut at `output_limit` in a way that leaves no grade that
    /// can be trusted (the reason says how).
    OutputLimit,
    /// The submission cannot be graded as delivered (no executable
    /// `test_all`, unreadable tree, a malformed `results.json`, …); the
    /// reason says what.
    Error,
    /// `labgrader.json` was malformed or missing when required.
    InvalidManifest,
    /// The grader could not do its job after all retries.
    InfraError,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Graded => "graded",
            Status::NoGrade => "no_grade",
            Status::Timeout => "timeout",
            Status::MemoryLimit => "memory_limit",
            Status::WorkspaceLimit => "workspace_limit",
            Status::DiskLimit => "disk_limit",
            Status::OutputLimit => "output_limit",
            Status::Error => "error",
            Status::InvalidManifest => "invalid_manifest",
            Status::InfraError => "infra_error",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }

    /// Counted as a grade by exports (`graded`, or a limit with a partial grade).
    pub fn is_success(self) -> bool {
        self == Status::Graded
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything known about a finished job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub schema: u32,
    pub job_id: String,
    pub project: String,
    pub git_ref: String,
    /// The student commit graded (the event's exact SHA).
    pub student_sha: String,
    /// The test repository's commit laid over it.
    pub tests_sha: Option<String>,
    pub runner: String,
    pub image: Option<String>,
    pub image_id: Option<String>,
    pub limits: Option<Limits>,
    pub received_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: DateTime<Utc>,
    pub status: Status,
    /// One line for humans: why this status (e.g. "timed out after 120 s").
    pub reason: Option<String>,
    /// How the process ended, when it ran.
    pub termination: Option<Termination>,
    pub grade_total: Option<f64>,
    /// Summary keys other than `grade_total` (top level of the INI).
    pub summary: BTreeMap<String, String>,
    /// Keys under `[hidden]`: staff only.
    pub hidden: BTreeMap<String, String>,
    pub stdout: Captured,
    pub stderr: Captured,
    /// What `results.json` said (trusted contract): the grade's source and
    /// the per-test rows. Student views drop hidden tests
    /// ([`crate::deliver::hidden`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<crate::results::TestResults>,
    /// Extra facts (manifest, authors, late flag…) kept for staff.
    #[serde(default)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A final outcome without a run: the status recorded and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub status: Status,
    pub reason: String,
}

impl Verdict {
    pub fn new(status: Status, reason: impl Into<String>) -> Verdict {
        Verdict {
            status,
            reason: reason.into(),
        }
    }
}

/// The result of `ev` stopped by `verdict` without a run: the fields every
/// job has, whether it ran or not. `runner` is the runner recorded.
pub fn result_without_run(
    ev: &Event,
    runner: &str,
    tests_sha: Option<String>,
    verdict: Verdict,
) -> JobResult {
    JobResult {
        schema: RESULT_SCHEMA,
        job_id: ev.job_id.clone(),
        project: ev.project.path.clone(),
        git_ref: ev.git_ref.clone(),
        student_sha: ev.commit.clone(),
        tests_sha,
        runner: runner.to_string(),
        image: None,
        image_id: None,
        limits: None,
        received_at: ev.received_at,
        started_at: None,
        ended_at: Utc::now(),
        status: verdict.status,
        reason: Some(verdict.reason),
        termination: None,
        grade_total: None,
        summary: BTreeMap::new(),
        hidden: BTreeMap::new(),
        stdout: Captured::default(),
        stderr: Captured::default(),
        results: None,
        extra: extra_of(ev),
    }
}

/// `extra` key of a regrade's result: the job it grades again.
pub const REGRADE_OF: &str = "regrade_of";
/// `extra` key of a regrade's result: its batch.
pub const REGRADE_BATCH: &str = "regrade_batch";

fn extra_of(ev: &Event) -> BTreeMap<String, serde_json::Value> {
    let mut m = BTreeMap::new();
    if let Some(u) = &ev.pusher.username {
        m.insert("pusher".into(), serde_json::Value::String(u.clone()));
    }
    if ev.infra_attempts > 0 {
        m.insert("infra_attempts".into(), ev.infra_attempts.into());
    }
    if ev.crashes > 0 {
        m.insert("crashes".into(), ev.crashes.into());
    }
    if ev.source == HookSource::Local {
        m.insert("source".into(), "local".into());
    }
    if let Some(rg) = &ev.regrade {
        // The gradebook's regrade columns are read from these two.
        m.insert(REGRADE_OF.into(), rg.of.clone().into());
        m.insert(REGRADE_BATCH.into(), rg.batch.clone().into());
    }
    if ev.kind == EventKind::TagPush && ev.after != ev.commit {
        // An annotated tag: graded at its commit; the tag object it was.
        m.insert("tag_object".into(), ev.after.clone().into());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip() {
        for s in [
            Status::Graded,
            Status::NoGrade,
            Status::Timeout,
            Status::MemoryLimit,
            Status::WorkspaceLimit,
            Status::DiskLimit,
            Status::OutputLimit,
            Status::Error,
            Status::InvalidManifest,
            Status::InfraError,
        ] {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
    }
}
