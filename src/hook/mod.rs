//! The hook server: GitLab calls it, it stores each gradable push durably
//! in the spool and answers at once.
//!
//! Owns the HTTP side (`POST /hooks/gitlab`, `GET /healthz`,
//! `GET /metrics`), the webhook token check, the body limit, eligibility
//! (tests namespace, existence of the test repository) and the intake of
//! each ref update as one event file in `incoming/` (or in `held/` until
//! its test repository exists: [`held`]). It never grades, never moves a
//! job after `incoming/`, and never talks to Docker.
//!
//! Requests are untrusted: the token is compared in constant time, bodies
//! over `server.max_body` are refused before being read whole, headers and
//! bodies have read timeouts, payloads are parsed by [`parse`] into checked
//! values, and at most [`MAX_CONNECTIONS`] connections are served at once.
//! An answer is 2xx exactly when the push is stored (or is not to be
//! graded): GitLab never re-delivers by itself, so a 5xx means staff must
//! re-send, and duplicates of re-sends are absorbed by [`dedup`].
//!
//! The parent only declares and re-exports: `server` (the accept loop),
//! `state` (the server's shared state and its start-up), `http`
//! (routing, the token and body checks), `intake` (eligibility, dedup
//! and the durable event file), `held` (pushes waiting for their test
//! repository), `answer` (what is sent back).

mod answer;
pub mod dedup;
mod error;
mod held;
mod http;
mod intake;
pub mod parse;
mod server;
mod state;
pub mod sync;
pub mod testrepos;

pub use error::HookError;
pub use server::{HOOK_PATH, MAX_CONNECTIONS, serve};
