//! labgrader: grades students' code pushed to GitLab.
//!
//! The map of the pipeline, one line per module, in the order a job's data
//! moves through them (layers and the walk of one job: ARCHITECTURE.md).
//!
//! Shared vocabulary, used by every stage:
//! - [`config`]: the TOML configuration, typed and validated; secrets.
//! - [`event`]: the event file a push becomes in the spool.
//! - [`result`]: a job's result, its status, limits, termination, output.
//! - [`retry`], [`watch`], [`metrics`]: backoff, directory wake-ups, metrics.
//! - [`text`]: untrusted text quoted on one line, of bounded length.
//!
//! A job, from the push to the student:
//! - [`hook`]: GitLab's webhook in, checked, answered, written to the spool.
//! - [`spool`]: the directory states (`incoming/`, `active/`, `done/`, …);
//!   the only code that moves a job between them.
//! - [`grader`]: claims a job and strings the stages below together; the
//!   only place that decides whose fault a failure is.
//! - [`mirror`] and [`git`]: the student's exact commit and the tests' head.
//! - [`policy`], [`manifest`]: course rules (deadline, authors, quota).
//! - [`workspace`]: the student's tree with the tests laid over it.
//! - [`sandbox`]: runs `test_all` (docker, native, slurm, none).
//! - [`results`], [`summary`]: the grade, from `results.json`/`junit.xml`
//!   or from stdout's `<summary>`.
//! - [`gradebook`]: the SQLite record of every job and test, and exports.
//! - [`deliver`]: the outbox, and the callback, email and commit status.
//! - [`web`]: result pages, staff pages and leaderboards, beside the hook.
//! - [`gitlab`], [`httpc`]: GitLab's REST API, and the HTTP client under it.
//!
//! Around them:
//! - [`reserve`]: free space the spool keeps for jobs already accepted.
//! - [`alert`]: staff alerts waiting to be sent, cut into batches.
//! - [`notify`]: readiness and watchdog for systemd.
//! - [`daemon`]: the long-running parts under one shutdown.
//! - [`cli`]: the command line; parses and calls the library.

pub mod alert;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod deliver;
pub mod event;
pub mod git;
pub mod gitlab;
pub mod gradebook;
pub mod grader;
pub mod hook;
pub mod httpc;
pub mod manifest;
pub mod metrics;
pub mod mirror;
pub mod notify;
pub mod policy;
pub mod reserve;
pub mod result;
pub mod results;
pub mod retry;
pub mod sandbox;
pub mod spool;
pub mod summary;
pub mod text;
pub mod watch;
pub mod web;
pub mod workspace;
