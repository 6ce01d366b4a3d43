//! labgrader: grades students' code pushed to GitLab.
//!
//! A hook server ([`hook`]) writes each accepted push durably into a
//! [`spool`]; a grader daemon ([`grader`]) claims it, builds a
//! [`workspace`], runs `test_all` in a [`sandbox`], reads the [`summary`],
//! records the result in the [`gradebook`] and queues its [`deliver`]ies.
//! See DESIGN.md in the repository for the contract between the parts.

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
pub mod watch;
pub mod workspace;
