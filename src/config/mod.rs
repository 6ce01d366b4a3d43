//! Configuration: one TOML file, every key with a default.
//!
//! Owns parsing, validation and the typed values (sizes, durations, secrets)
//! every other part receives. Nothing here starts a server or touches the
//! spool. The file is untrusted text: unknown keys and bad values are errors
//! that name the file, line, column and key (serde's `deny_unknown_fields`
//! plus typed deserializers, so toml attaches the span of the bad value).
//!
//! The parent only declares and re-exports, so `crate::config::{Config,
//! Contract, RunnerKind, ...}` stay where every part looks for them:
//! `sections` (the file's sections and their defaults), `assignment`
//! (`[assignments.NAME]`), `values` (sizes, durations, quotas, ids),
//! `secrets` (secrets and where they are read from), `keys` (every
//! section's key names, for the reference docs), `load` (reading
//! a file into a checked [`Config`]) and `validate` (the checks that
//! span more than one value).

mod alerts;
mod assignment;
mod error;
pub mod keys;
mod load;
mod secrets;
mod sections;
mod validate;
mod values;
mod web;

pub use alerts::AlertsConfig;
pub use assignment::{AssignmentConfig, LatePolicy, LeaderboardOrder, ManifestPolicy, Trigger};
pub use error::ConfigError;
pub use load::CONFIG_ENV;
pub use secrets::{
    CALLBACK_SECRET_CREDENTIAL, CALLBACK_SECRET_ENV, CREDENTIALS_ENV, GITLAB_TOKEN_CREDENTIAL,
    GITLAB_TOKEN_ENV, SLURM_TOKEN_CREDENTIAL, SLURM_TOKEN_ENV, SMTP_PASSWORD_CREDENTIAL,
    SMTP_PASSWORD_ENV, STAFF_TOKEN_CREDENTIAL, STAFF_TOKEN_ENV, Secret, Secrets,
    WEB_SECRET_CREDENTIAL, WEB_SECRET_ENV, WEBHOOK_TOKEN_CREDENTIAL, WEBHOOK_TOKEN_ENV,
};
pub use sections::{
    CallbackConfig, Config, DeliverConfig, DockerConfig, EmailConfig, GitlabConfig, GraderConfig,
    NativeConfig, SENDMAIL, ServerConfig, SlurmConfig, SpoolConfig, StartTls,
};
pub use values::{ByteSize, Contract, Quota, RunnerKind, Seconds, parse_duration, parse_ids};
pub use web::{NO_SECRET as WEB_NO_SECRET, WEB_SECRET_MIN, WebConfig};
