//! The one error type of delivery, shared by the outbox (enqueueing) and
//! the worker (starting up).
//!
//! A failed *send* is not an error: it is an [`super::Attempt`], kept in
//! the record. This type only says that the outbox could not be written or
//! read, or that the worker cannot start. It never carries a secret.

use std::io;
use std::path::PathBuf;

use crate::spool::SpoolError;

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("cannot create the receipts directory {path}: {source}")]
    SentDir { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Email(#[from] super::email::EmailError),
    #[error("staff alerts (spool/alerts/): {0}")]
    Alerts(#[from] io::Error),
}
