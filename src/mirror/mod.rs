//! Bare git mirrors of student and test repositories, and exports from them.
//!
//! Owns `<spool dir>/mirrors/<namespace>/<name>.git`: one bare repository per
//! GitLab project, created on first use and fetched incrementally. A
//! student tree is exported at an exact commit SHA (never "whatever the
//! branch points to now"; an annotated tag object is peeled to its commit,
//! which the export returns); a test tree at the commit its default branch
//! pointed to when fetched. Exports stream a tar (written from the
//! mirror's long-lived `git cat-file --batch`, or `git archive`'s) into
//! [`crate::workspace::extract_tar`], which enforces the workspace limits.
//!
//! git always runs with no terminal prompt, in its own process group, under
//! a timeout that kills the group. The GitLab token reaches git only
//! through the environment (`GIT_CONFIG_COUNT`/`KEY`/`VALUE` setting an
//! `http.extraHeader`): never in argv, never in a mirror's config, never in
//! a log line or error message. This module never runs student code and
//! never decides a job's status: its errors name what failed, and the
//! grader (`grader::blame`) decides whose fault each one is.
//!
//! The parent only declares and re-exports: `repo` holds the mirror set
//! and its git plumbing, `heads` fetches to a commit or the tests head,
//! `export` writes trees out (`catfile` without a process per export),
//! `tree_cache` shares test trees by SHA,
//! `pin` keeps graded commits reachable.

mod catfile;
mod error;
mod export;
mod heads;
mod pin;
mod repo;
mod tree_cache;

pub use crate::git::is_full_sha;
pub use error::MirrorError;
pub use repo::{Mirrors, redact_url};
