//! The outbox's file format: what one delivery record and one receipt hold.
//!
//! Owns the record and receipt shapes (`spool/outbox/<job>.<destination>.json`
//! and `spool/sent/<job>.<destination>.json`), the destinations, the
//! per-destination payloads stored in a record, the idempotency key and the
//! file names. These are the bytes on disk and on the wire: a change here is
//! a change of format. It never touches the disk and never sends anything;
//! it never holds a secret (callback secret, SMTP password, GitLab token).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Schema of outbox records and receipts.
pub const RECORD_SCHEMA: u32 = 1;

/// Where a delivery goes. The commit status and the callback have one
/// destination per stage of the job (queued, running, final), so a late
/// `pending` can never overwrite a `success` (see `Destination::stage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Destination {
    /// The final callback: the result.
    Callback,
    Email,
    StatusPending,
    StatusRunning,
    Status,
    /// The callback saying the job was accepted and waits.
    CallbackQueued,
    /// The callback saying `test_all` started.
    CallbackRunning,
    /// The result again once the deadline has passed, its
    /// `after_due_date` tests shown (at most once per job).
    ReleaseEmail,
    ReleaseCallback,
    /// A batch of staff alerts (`[alerts] email`); the job id is the batch's.
    AlertEmail,
    /// A batch of staff alerts to `[alerts] callback_url`.
    AlertCallback,
}

/// The destinations whose deliveries of one job are sent in order, each
/// superseding the earlier ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stages {
    CommitStatus,
    Callback,
}

/// What a job is doing, as a callback before its result says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStage {
    /// Accepted by the hook, waiting in `incoming/`.
    Queued,
    /// `test_all` is starting.
    Running,
}

impl JobStage {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStage::Queued => "queued",
            JobStage::Running => "running",
        }
    }

    /// The callback destination of this stage.
    pub fn callback(self) -> Destination {
        match self {
            JobStage::Queued => Destination::CallbackQueued,
            JobStage::Running => Destination::CallbackRunning,
        }
    }
}

impl Destination {
    pub const ALL: [Destination; 11] = [
        Destination::Callback,
        Destination::Email,
        Destination::StatusPending,
        Destination::StatusRunning,
        Destination::Status,
        Destination::CallbackQueued,
        Destination::CallbackRunning,
        Destination::ReleaseEmail,
        Destination::ReleaseCallback,
        Destination::AlertEmail,
        Destination::AlertCallback,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Destination::Callback => "callback",
            Destination::Email => "email",
            Destination::StatusPending => "status-pending",
            Destination::StatusRunning => "status-running",
            Destination::Status => "status",
            Destination::CallbackQueued => "callback-queued",
            Destination::CallbackRunning => "callback-running",
            Destination::ReleaseEmail => "release-email",
            Destination::ReleaseCallback => "release-callback",
            Destination::AlertEmail => "alert-email",
            Destination::AlertCallback => "alert-callback",
        }
    }

    pub fn parse(s: &str) -> Option<Destination> {
        Destination::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// The stages this destination belongs to and its order among them;
    /// `None` for the email.
    pub(super) fn stage(self) -> Option<(Stages, u8)> {
        match self {
            Destination::StatusPending => Some((Stages::CommitStatus, 0)),
            Destination::StatusRunning => Some((Stages::CommitStatus, 1)),
            Destination::Status => Some((Stages::CommitStatus, 2)),
            Destination::CallbackQueued => Some((Stages::Callback, 0)),
            Destination::CallbackRunning => Some((Stages::Callback, 1)),
            Destination::Callback => Some((Stages::Callback, 2)),
            Destination::Email
            | Destination::ReleaseEmail
            | Destination::ReleaseCallback
            | Destination::AlertEmail
            | Destination::AlertCallback => None,
        }
    }
}

impl Destination {
    /// True for the staff alerts' own deliveries (one given up on is
    /// logged, never alerted about: that would loop).
    pub fn is_alert(self) -> bool {
        matches!(self, Destination::AlertEmail | Destination::AlertCallback)
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// GitLab's commit status states that labgrader posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommitState {
    Pending,
    Running,
    Success,
    Failed,
}

impl CommitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CommitState::Pending => "pending",
            CommitState::Running => "running",
            CommitState::Success => "success",
            CommitState::Failed => "failed",
        }
    }
}

/// What is sent, per destination. Computed once at enqueue time so every
/// attempt sends the same bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Payload {
    Callback(CallbackPayload),
    Email(EmailPayload),
    Status(StatusPayload),
}

/// The callback's stored body (built by [`super::render`], sent by
/// [`super::callback`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallbackPayload {
    /// The JSON body, exactly as sent and signed.
    pub body: String,
}

/// The email's stored message parts (built by [`super::render`], sent by
/// [`super::email`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailPayload {
    /// The pusher's email as the event carried it (GitLab may hide it).
    pub event_email: Option<String>,
    pub pusher_id: Option<u64>,
    pub username: Option<String>,
    /// Display name for the To: header.
    pub display_name: Option<String>,
    pub subject: String,
    /// The text body: stdout (capped, with the truncation mark) and the job id.
    pub text: String,
    /// The exact stdout bytes, hex-encoded, when they are not UTF-8 (sent
    /// as an attachment beside the lossy text).
    pub raw_stdout_hex: Option<String>,
    pub message_id: String,
    pub date: chrono::DateTime<chrono::Utc>,
    /// The addresses of the other verified authors (course policy). Each
    /// gets a message of their own, never a copy listing the others.
    #[serde(default, alias = "cc")]
    pub co_authors: Vec<String>,
    /// Addresses whose message was accepted already (a retry skips them).
    #[serde(default)]
    pub delivered_to: Vec<String>,
}

/// The commit status's stored fields (built by [`super::render`], sent by
/// [`super::status`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusPayload {
    /// GitLab's numeric project id, when the event had it.
    pub project_id: Option<u64>,
    /// `namespace/name`, used (URL-encoded) when the id is unknown.
    pub project_path: String,
    pub sha: String,
    /// Branch or tag name (without `refs/heads/`), when known.
    pub git_ref: Option<String>,
    pub state: CommitState,
    pub name: String,
    pub description: String,
    pub target_url: Option<String>,
}

/// One outbox record: `spool/outbox/<job>.<destination>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub schema: u32,
    /// `<job_id>:<destination>`, sent to the receiver as `Idempotency-Key`.
    pub key: String,
    pub job_id: String,
    pub destination: Destination,
    pub project: String,
    pub sha: String,
    pub created_at: DateTime<Utc>,
    /// When the first attempt was made; `retry_for` counts from here.
    pub first_try_at: Option<DateTime<Utc>>,
    pub last_try_at: Option<DateTime<Utc>>,
    pub next_try_at: DateTime<Utc>,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Set when the record is moved to `dead/`.
    #[serde(default)]
    pub dead_reason: Option<String>,
    #[serde(default)]
    pub dead_at: Option<DateTime<Utc>>,
    pub payload: Payload,
}

impl Record {
    pub fn new(
        job_id: &str,
        destination: Destination,
        project: &str,
        sha: &str,
        payload: Payload,
    ) -> Record {
        let now = Utc::now();
        Record {
            schema: RECORD_SCHEMA,
            key: idempotency_key(job_id, destination),
            job_id: job_id.to_string(),
            destination,
            project: project.to_string(),
            sha: sha.to_string(),
            created_at: now,
            first_try_at: None,
            last_try_at: None,
            next_try_at: now,
            attempts: 0,
            last_error: None,
            dead_reason: None,
            dead_at: None,
            payload,
        }
    }

    pub fn file_name(&self) -> String {
        record_file_name(&self.job_id, self.destination)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("record serializes");
        v.push(b'\n');
        v
    }

    pub fn from_bytes(b: &[u8]) -> Result<Record, serde_json::Error> {
        serde_json::from_slice(b)
    }
}

/// A delivered record's receipt: `spool/sent/<job>.<destination>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub schema: u32,
    pub key: String,
    pub delivered_at: DateTime<Utc>,
    pub attempts: u32,
    /// What the receiver answered (e.g. `HTTP 200`), or why it was skipped.
    pub detail: String,
}

pub fn idempotency_key(job_id: &str, d: Destination) -> String {
    format!("{job_id}:{}", d.as_str())
}

pub fn record_file_name(job_id: &str, d: Destination) -> String {
    format!("{job_id}.{}.json", d.as_str())
}

/// `(job_id, destination)` of an outbox file name.
pub fn parse_file_name(name: &str) -> Option<(&str, Destination)> {
    let stem = name.strip_suffix(".json")?;
    let (job, dest) = stem.rsplit_once('.')?;
    Some((job, Destination::parse(dest)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        for d in Destination::ALL {
            let n = record_file_name("01JOB", d);
            assert!(crate::spool::is_valid_name(&n), "{n}");
            assert_eq!(parse_file_name(&n), Some(("01JOB", d)));
        }
        assert_eq!(parse_file_name("01JOB.nope.json"), None);
        assert_eq!(idempotency_key("01JOB", Destination::Email), "01JOB:email");
    }
}
