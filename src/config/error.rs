//! Why a config could not be loaded. Every message names the file (and,
//! from toml, the line, column and key); none ever holds a secret.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// toml's message already carries line, column, the offending line and
    /// the key; we add the file name.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("cannot read secret for `{key}` from {path}: {source}")]
    Secret {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
}
