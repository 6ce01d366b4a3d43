//! The integration tests' one helpers module: every `tests/*.rs` binary
//! declares `mod common;` and uses the parts it needs (hence
//! `dead_code` allowed here). One submodule per responsibility:
//!
//! - `daemon`: the `labgrader` binary (hook, grader, serve) as a child
//!   process, and the grader loop and hook server in-process;
//! - `world`: the grader's [`world::Fixture`] and the hook's
//!   [`world::World`], temp dirs with repositories, a spool and a config;
//! - `repos`: the git CLI, bare repositories, commits, `file://` URLs;
//! - `gitlab`: GitLab's fixture payloads and headers, bodies made to
//!   measure, and a project API on loopback;
//! - `http`: a recording HTTP server on loopback;
//! - `smtp`: a real SMTP server (aiosmtpd) and the mail it received;
//! - `deliver`: configs, events, results and workers of the delivery tests;
//! - `hostile`: the hostile-submission table every sandboxing runner runs;
//! - `services`: docker, Slurm and python availability, and the rule that
//!   a missing service fails loudly unless the developer opted out;
//! - `trusted`: a trusted-contract job graded locally, for attacks on the
//!   harness;
//! - `files`, `host`, `wait`: files laid out by hand, host facts, polling;
//! - `web`: a `labgrader serve` with the web view on, and pushes to it.
//!
//! Helpers only: no `#[test]` lives here.

#![allow(dead_code)]

pub mod daemon;
pub mod deliver;
pub mod files;
pub mod gitlab;
pub mod host;
pub mod hostile;
pub mod http;
pub mod repos;
pub mod services;
pub mod smtp;
pub mod trusted;
pub mod wait;
pub mod web;
pub mod world;
