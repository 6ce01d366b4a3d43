//! Whose fault a failure is: the submission's, the course's or the grader's.
//!
//! Owns the one decision every stage error goes through ([`Blame`]) and the
//! grader's error types. The submission's doing (a commit that was never
//! pushed, a tree over the workspace limits, an archive that cannot be
//! extracted) and the course's (a test repository without `test_all`) end
//! the job with a [`Verdict`]: final, recorded and delivered like a grade.
//! The grader's own trouble (git or the server unreachable, the disk, the
//! sandbox, the spool) is a [`GraderFault`]: the job is retried and never
//! charged to the student. Each stage error is classified by an exhaustive
//! `match` here, so a new variant must be classified before it compiles;
//! the errors that can only be the grader's convert `#[from]`. This module
//! never decides what a fault does to a job (retry, requeue, `failed/`):
//! that is the job's business.

use std::path::PathBuf;

use crate::deliver::DeliverError;
use crate::gradebook::GradebookError;
use crate::mirror::MirrorError;
use crate::policy::{AdmitError, QuotaError};
use crate::result::Status;
use crate::sandbox::SandboxError;
use crate::spool::SpoolError;
use crate::workspace::WorkspaceError;

pub use crate::result::Verdict;

/// Whose fault a failure is.
#[derive(Debug)]
pub enum Blame {
    /// The submission's doing: final, recorded with this verdict.
    Submission(Verdict),
    /// The course's doing (its test repository): final, recorded with
    /// this verdict; staff must fix the tests.
    Course(Verdict),
    /// The grader's own trouble: retried, never charged to the student.
    Grader(GraderFault),
}

/// A stage's answer: go on with `T`, stop with a final [`Verdict`], or the
/// grader's fault.
pub type Step<T> = Result<Result<T, Verdict>, GraderFault>;

/// Classify a stage's result (see [`Blame`]).
pub fn step<T, E>(r: Result<T, E>) -> Step<T>
where
    Blame: From<E>,
{
    match r.map_err(Blame::from) {
        Ok(t) => Ok(Ok(t)),
        Err(Blame::Submission(v) | Blame::Course(v)) => Ok(Err(v)),
        Err(Blame::Grader(f)) => Err(f),
    }
}

/// Which repository a fetch was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repo {
    Student,
    Tests,
}

impl std::fmt::Display for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Repo::Student => "student repository",
            Repo::Tests => "test repository",
        })
    }
}

/// A fetch or export of one repository that failed.
#[derive(Debug, thiserror::Error)]
#[error("{repo}: {source}")]
pub struct FetchError {
    pub repo: Repo,
    #[source]
    pub source: MirrorError,
}

/// The grader's own trouble: the job is retried (or put back, when
/// cancelled), never charged to the student. Its text goes to the log and
/// to staff, never to the student.
#[derive(Debug, thiserror::Error)]
pub enum GraderFault {
    /// Shutdown: put the job back untouched.
    #[error("cancelled by shutdown")]
    Cancelled,
    /// Only through [`Blame`]: git or the server unreachable, disk trouble.
    #[error(transparent)]
    Fetch(FetchError),
    /// Only through [`Blame`]: the workspace cannot be read or written.
    #[error(transparent)]
    Workspace(WorkspaceError),
    /// The sandbox failed (see `From<SandboxError>`).
    #[error(transparent)]
    Sandbox(SandboxError),
    #[error("course policy: {0}")]
    Admit(#[from] AdmitError),
    #[error(transparent)]
    Quota(#[from] QuotaError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Gradebook(#[from] GradebookError),
    #[error("cannot queue the deliveries: {0}")]
    Deliver(#[from] DeliverError),
    /// A blocking task of the job died.
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
    /// The result was built but could not be recorded.
    #[error("cannot record the result: {0}")]
    Record(Box<GraderFault>),
}

impl From<SandboxError> for GraderFault {
    fn from(e: SandboxError) -> GraderFault {
        match e {
            SandboxError::Cancelled => GraderFault::Cancelled,
            e @ (SandboxError::Setup { .. }
            | SandboxError::Unavailable { .. }
            | SandboxError::Io(_)) => GraderFault::Sandbox(e),
        }
    }
}

/// Who a workspace error that is not the grader's blames, and its status.
enum Whose {
    Submission,
    Course,
}

/// `None`: the grader is at fault (disk full, permissions).
fn workspace_blame(e: &WorkspaceError) -> Option<(Whose, Status)> {
    match e {
        WorkspaceError::SizeLimit { .. } | WorkspaceError::FileLimit { .. } => {
            Some((Whose::Submission, Status::WorkspaceLimit))
        }
        WorkspaceError::NoTestAll => Some((Whose::Course, Status::Error)),
        WorkspaceError::BadEntry { .. } | WorkspaceError::Unreadable { .. } => {
            Some((Whose::Submission, Status::Error))
        }
        WorkspaceError::Read { .. } | WorkspaceError::Write { .. } => None,
    }
}

impl Blame {
    fn final_verdict(whose: Whose, verdict: Verdict) -> Blame {
        match whose {
            Whose::Submission => Blame::Submission(verdict),
            Whose::Course => Blame::Course(verdict),
        }
    }
}

impl From<WorkspaceError> for Blame {
    fn from(e: WorkspaceError) -> Blame {
        match workspace_blame(&e) {
            Some((whose, status)) => {
                Blame::final_verdict(whose, Verdict::new(status, e.to_string()))
            }
            None => Blame::Grader(GraderFault::Workspace(e)),
        }
    }
}

impl From<FetchError> for Blame {
    fn from(e: FetchError) -> Blame {
        // What a repository holds (or lacks) is its owner's doing.
        let whose = match e.repo {
            Repo::Student => Whose::Submission,
            Repo::Tests => Whose::Course,
        };
        let status = match &e.source {
            MirrorError::Cancelled => return Blame::Grader(GraderFault::Cancelled),
            MirrorError::BadPath(_) | MirrorError::BadSha(_) | MirrorError::NoCommit { .. } => {
                Status::Error
            }
            MirrorError::Workspace(w) => match workspace_blame(w) {
                Some((_, status)) => status,
                None => return Blame::Grader(GraderFault::Fetch(e)),
            },
            MirrorError::Spawn(_)
            | MirrorError::Timeout { .. }
            | MirrorError::Git { .. }
            | MirrorError::NoTestsHead { .. }
            | MirrorError::Io { .. } => return Blame::Grader(GraderFault::Fetch(e)),
        };
        Blame::final_verdict(whose, Verdict::new(status, e.source.to_string()))
    }
}

/// Errors of the grader's entry points: start-up and the staff commands.
#[derive(Debug, thiserror::Error)]
pub enum GraderError {
    #[error(transparent)]
    Fault(#[from] GraderFault),
    #[error("{0:?} is not a job id")]
    BadJobId(String),
    #[error("job {0} has no finished record in done/ (or failed/)")]
    NoRecord(String),
    #[error("cannot read {path}: {source}")]
    RecordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    RecordJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// `grade --student` or `--tests` names no directory.
    #[error("--{what} {} is not a directory", path.display())]
    NotADirectory { what: &'static str, path: PathBuf },
    #[error("no finished job of project {0} in the gradebook")]
    NoJobsOfProject(String),
    #[error(
        "name job ids, --project PATH, or --assignment NAME --policy latest|best|all to regrade"
    )]
    NothingToRegrade,
    /// An assignment's image is not usable at start.
    #[error("[assignments.{assignment}] image: {source}")]
    AssignmentImage {
        assignment: String,
        source: SandboxError,
    },
    /// `cancel` or `retry` of a job the grader is running now.
    #[error("job {0} is running now; wait for it to end (cancel and retry act on waiting jobs)")]
    Running(String),
    /// `cancel` or `retry` of a job that is not waiting (or, for `retry`, failed).
    #[error("job {job} is not waiting{}; see `labgrader queue`", if *finished { " (it has finished: use `labgrader regrade` to grade it again)" } else { "" })]
    NotWaiting { job: String, finished: bool },
    #[error("job {0} failed without a result; nothing to replay")]
    NoResult(String),
    #[error("job {job} never got as far as the test repository ({status}); nothing to replay")]
    NoTestsSha { job: String, status: Status },
    /// The runner a recorded result names is not one this labgrader knows
    /// (the text is the runner parser's).
    #[error("{0}")]
    UnknownRunner(String),
}

macro_rules! through_fault {
    ($($t:ty),*) => {$(
        impl From<$t> for GraderError {
            fn from(e: $t) -> GraderError {
                GraderError::Fault(e.into())
            }
        }
    )*};
}
through_fault!(
    SpoolError,
    GradebookError,
    SandboxError,
    QuotaError,
    tokio::task::JoinError
);

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict_of(b: Blame) -> (&'static str, Option<Verdict>) {
        match b {
            Blame::Submission(v) => ("submission", Some(v)),
            Blame::Course(v) => ("course", Some(v)),
            Blame::Grader(_) => ("grader", None),
        }
    }

    #[test]
    fn workspace_errors_keep_their_statuses() {
        let (who, v) = verdict_of(WorkspaceError::SizeLimit { limit: 1 }.into());
        assert_eq!(
            (who, v.unwrap().status),
            ("submission", Status::WorkspaceLimit)
        );
        let (who, v) = verdict_of(WorkspaceError::NoTestAll.into());
        assert_eq!((who, v.unwrap().status), ("course", Status::Error));
        let write = WorkspaceError::Write {
            path: "/x".into(),
            source: std::io::Error::other("full"),
        };
        assert_eq!(verdict_of(write.into()).0, "grader");
    }

    #[test]
    fn fetch_errors_split_as_the_mirror_said() {
        let fetch = |repo, source| Blame::from(FetchError { repo, source });
        let no_commit = MirrorError::NoCommit {
            sha: "a".repeat(40),
            url: "u".into(),
        };
        let (who, v) = verdict_of(fetch(Repo::Student, no_commit));
        assert_eq!(who, "submission");
        assert!(v.unwrap().reason.starts_with("commit "));
        let head = MirrorError::NoTestsHead {
            url: "u".into(),
            head: None,
            branches: vec![],
        };
        match fetch(Repo::Tests, head) {
            Blame::Grader(f) => assert!(f.to_string().starts_with("test repository: ")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            fetch(Repo::Tests, MirrorError::Cancelled),
            Blame::Grader(GraderFault::Cancelled)
        ));
        let unreadable = MirrorError::Workspace(WorkspaceError::Unreadable { reason: "x".into() });
        assert_eq!(verdict_of(fetch(Repo::Student, unreadable)).0, "submission");
    }
}
