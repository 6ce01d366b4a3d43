//! What can go wrong with a mirror or an export. Says whose fault a
//! failure is only through its variants; it never decides a job's status.

use std::path::PathBuf;

use crate::workspace::WorkspaceError;

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error(
        "repository path {0:?} is not a valid GitLab namespace/name (letters, digits, `.`, `-`, `_`)"
    )]
    BadPath(String),
    #[error("{0:?} is not a full commit SHA")]
    BadSha(String),
    #[error("cannot run git (is it installed?): {0}")]
    Spawn(std::io::Error),
    #[error("git {op} of {url} did not finish within {secs} s (raise [grader] git_timeout?)")]
    Timeout {
        op: &'static str,
        url: String,
        secs: u64,
    },
    #[error("git {op} of {url} failed: {stderr}")]
    Git {
        op: &'static str,
        url: String,
        stderr: String,
    },
    #[error("commit {sha} is not in {url}: it was never pushed there or was force-pushed away")]
    NoCommit { sha: String, url: String },
    #[error(
        "the test repository {url} has no default branch with a commit: {}",
        head_advice(head.as_deref(), branches)
    )]
    NoTestsHead {
        url: String,
        /// The branch its HEAD names, when it could be read (`file://`).
        head: Option<String>,
        /// The branches it has (at most a few).
        branches: Vec<String>,
    },
    #[error("cannot prepare the mirror at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error("cancelled by shutdown")]
    Cancelled,
}

/// What to tell staff whose test repository's HEAD names no commit.
fn head_advice(head: Option<&str>, branches: &[String]) -> String {
    let names = match head {
        Some(h) => format!("its HEAD names `{h}`, which does not exist"),
        None => "its HEAD names no branch that exists".to_string(),
    };
    match branches.first() {
        None => format!("{names}, and it has no branches yet: push the tests first"),
        Some(b) => format!(
            "{names}; its branches are {}. Make one the default (GitLab: Settings > Repository > \
             Default branch; a bare repository: `git symbolic-ref HEAD refs/heads/{b}`)",
            branches.join(", ")
        ),
    }
}
