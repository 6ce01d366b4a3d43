//! What can go wrong reading a manifest, a roster or the authors, the
//! manifest's size limit, and how student text is quoted in a message.
//! It decides nothing: the caller (admission) says whose fault each
//! variant is.

use std::path::PathBuf;

use crate::gitlab::GitlabError;

pub const MANIFEST_FILE: &str = "labgrader.json";
/// Larger manifests are refused (a manifest is a few lines).
pub const MAX_MANIFEST: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{MANIFEST_FILE} is required for this assignment: add it at the top of the repository")]
    Missing,
    #[error("{MANIFEST_FILE} is a symbolic link; commit it as a regular file")]
    Symlink,
    #[error("{MANIFEST_FILE} is not a regular file")]
    NotAFile,
    #[error("{MANIFEST_FILE} is {size} bytes; it may be at most {MAX_MANIFEST} bytes")]
    TooLarge { size: u64 },
    /// JSON syntax or encoding error, with serde_json's position.
    #[error("{MANIFEST_FILE} line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// Well-formed JSON that breaks a rule (wrong type, wrong assignment…).
    #[error("{MANIFEST_FILE}: {0}")]
    Invalid(String),
    #[error(
        "`authors` in {MANIFEST_FILE} does not list you ({pusher}), who pushed this commit; \
         add your GitLab username to `authors`, or remove `authors` to submit alone"
    )]
    PusherNotListed { pusher: String },
    /// The grader could not read the exported tree (its own fault).
    #[error("cannot read {MANIFEST_FILE}: {0}")]
    Io(std::io::Error),
    /// The course's roster is broken (staff must fix it).
    #[error("roster {path}: {message}")]
    Roster { path: PathBuf, message: String },
    /// The user lookup failed (retry later).
    #[error("cannot look up authors on GitLab: {0}")]
    Lookup(#[from] GitlabError),
    /// The token cannot see the project's members (staff must fix it).
    #[error(
        "GitLab answered 404 to the members of {project}: give the GitLab token (credential \
         gitlab-token, or gitlab.token_file) read access to the student projects"
    )]
    NoMembers { project: String },
}

/// Student text quoted in a message: one line, at most 80 characters.
pub(super) fn shorten(s: &str) -> String {
    crate::text::one_line(s, 80)
}
