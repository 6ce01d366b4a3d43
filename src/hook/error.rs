//! Why the hook server could not start or store an event. A stored-or-not
//! answer is built from it by the intake; nothing here talks HTTP.

use std::path::PathBuf;

use crate::spool::SpoolError;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot prepare the spool at {path}: {source}")]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("cannot write dedup marker in {path}: {source}")]
    Marker {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Sync(String),
    #[error("intake task failed: {0}")]
    Task(String),
    /// Under `[spool] min_free`: no new job is stored.
    #[error(transparent)]
    LowSpace(#[from] crate::reserve::LowSpace),
}
