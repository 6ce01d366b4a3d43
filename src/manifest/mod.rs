//! The submission manifest: `labgrader.json` at the top of the student's
//! tree, and the authors it names.
//!
//! Owns reading and checking the manifest, reading the course roster CSV,
//! and verifying the authors it names. The manifest is the student's claim,
//! never proof: the pusher must be among the authors, and any other name
//! counts only when it is a member of the student's project (GitLab's
//! members API when a token is configured, else the roster's `group`
//! column). Names that are not are ignored and listed with the reason; an
//! author's address is only ever one the course or the user made known
//! (roster, GitLab's `public_email`, the push's own email), never a
//! private one.
//! The manifest is hostile input: it is opened with `O_NOFOLLOW` from the
//! exported tree (a symlink to /etc/shadow is refused, never followed),
//! must be a regular file of at most [`MAX_MANIFEST`] bytes, and every
//! error message names the file, and for JSON errors the line and column,
//! because it is emailed to the pusher. It never runs anything, never
//! touches the spool, and never decides a grade.
//!
//! The parent only declares and re-exports: `error` (the error and the
//! manifest's limits), `file` (reading and checking `labgrader.json`),
//! `roster` (the course roster CSV) and `authors` (verifying names).
//! Nothing here imports the course policy: the policy hands in what it
//! needs as [`ManifestRules`].

mod authors;
mod error;
mod file;
mod roster;

pub use authors::{Authors, Directory, IgnoredAuthor, resolve_authors};
pub use error::{MANIFEST_FILE, MAX_MANIFEST, ManifestError};
pub use file::{MAX_AUTHORS, Manifest, ManifestRules};
pub use roster::{Author, MAX_ROSTER, Roster, is_username};
