//! GitLab's REST API (v4), as far as labgrader uses it.
//!
//! Owns the base URL, the `PRIVATE-TOKEN` header and the mapping of GitLab's
//! answers to typed errors. Typed calls (project lookup, commit status,
//! users, project members, hooks) are methods on [`GitlabApi`]. It never logs the token and
//! never retries by itself.
//!
//! The parent only declares and re-exports: `api` holds the client and
//! the typed calls, [`hooks`] the hook setup built on it.

mod api;
pub mod hooks;

pub use api::{
    DirectoryUser, GitlabApi, GitlabError, GitlabUser, ProjectInfo, ProjectMember, encode_path,
};
pub use hooks::ensure_project_hook;
