//! Durable delivery of results: the outbox and its worker.
//!
//! A finished job's deliveries are rendered once, written to the outbox,
//! and sent from there by a worker that retries from disk, never from
//! memory. Read the files in the order a delivery moves through them:
//!
//! - [`record`]: the format on disk: destinations, payloads, the outbox
//!   record and the receipt, the idempotency key and the file names.
//! - [`hidden`]: what staff marked hidden, cut from a result before any
//!   student or callback text is made from it.
//! - [`render`]: the text per destination (callback body, email subject
//!   and text, commit status description), the verdict phrase, `{name}`
//!   placeholders; built at enqueue time so every attempt sends the same
//!   bytes.
//! - [`outbox`]: `spool/outbox/`, `dead/` and `sent/`: `enqueue_*` (called
//!   by the grader and the hook), [`has_result_delivery`], receipts,
//!   pruning, and the lines of `labgrader queue`.
//! - [`worker`]: the run loop, one attempt of one record, backoff
//!   ([`crate::retry::backoff`]), finish (receipt) or bury (`dead/`).
//! - [`attempt`]: what a send comes to (delivered, retry, give up) and how
//!   HTTP answers are read.
//! - the senders, one per destination: [`callback`] (signed `POST`),
//!   [`email`] (SMTP or sendmail, one message per recipient) and
//!   [`status`] (GitLab commit status).
//! - [`alerts`]: staff alerts (`spool/alerts/`) batched into outbox records.
//! - [`error`]: the one error type of enqueueing and starting the worker.
//!
//! Nothing here grades or touches `incoming/`, `active/` or `done/`, and no
//! secret (callback secret, SMTP password, GitLab token) is ever written to
//! disk: those are read from the config at send time. Records are read back
//! from disk and are treated as untrusted: one that does not parse goes to
//! `corrupt/`. This file only declares and re-exports.

pub mod alerts;
pub mod attempt;
pub mod callback;
pub mod email;
pub mod error;
pub mod hidden;
pub mod outbox;
pub mod record;
pub mod render;
pub mod status;
pub mod table;
pub mod worker;

pub use attempt::{Attempt, classify_http, parse_retry_after};
pub use error::DeliverError;
pub use outbox::{
    DeliveryLine, SENT_DIR, commit_status_enabled, enqueue, enqueue_callback_stage,
    enqueue_commit_status, enqueue_email, enqueue_release, enqueue_result, has_result_delivery,
    prune_receipts, report,
};
pub use record::{
    CallbackPayload, CommitState, Destination, EmailPayload, JobStage, Payload, RECORD_SCHEMA,
    Receipt, Record, StatusPayload, idempotency_key, parse_file_name, record_file_name,
};
pub use render::verdict;
pub use worker::run;
