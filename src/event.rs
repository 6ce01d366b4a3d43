//! The event file: what the hook writes to `spool/incoming/<job>.json` and
//! the grader reads. This is the contract between the two halves; its
//! `schema` number changes whenever a field changes meaning.
//!
//! The event never holds a credential: `clone_url` is the template's output
//! without a token (git gets the token from the environment at fetch time).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const EVENT_SCHEMA: u32 = 1;

/// All zeros: GitLab's "no commit" (branch/tag creation `before`, deletion `after`).
pub const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Push,
    TagPush,
}

/// Which kind of GitLab hook delivered the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookSource {
    ProjectHook,
    SystemHook,
    /// Queued by `labgrader regrade` or another local command.
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    /// GitLab's numeric id; system-hook bodies may lack it.
    pub id: Option<u64>,
    /// Full path with namespace, e.g. `course/2026/alice/lab1`.
    pub path: String,
    /// Everything before the last `/`.
    pub namespace: String,
    /// The repository's own name (last path component).
    pub name: String,
}

impl Project {
    /// Split a `namespace/name` path; `None` when it has no namespace or an
    /// empty component.
    pub fn from_path(id: Option<u64>, path: &str) -> Option<Project> {
        let (ns, name) = path.rsplit_once('/')?;
        if ns.is_empty() || name.is_empty() || ns.split('/').any(str::is_empty) {
            return None;
        }
        Some(Project {
            id,
            path: path.to_string(),
            namespace: ns.to_string(),
            name: name.to_string(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pusher {
    pub id: Option<u64>,
    pub username: Option<String>,
    pub name: Option<String>,
    /// GitLab sends only the public email, often empty or hidden.
    pub email: Option<String>,
}

/// What makes a job a regrade: its batch, the job it grades again, and
/// whether the student is emailed the new result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Regrade {
    /// The batch (`labgrader queue` shows its progress).
    pub batch: String,
    /// The original job (the first grading of this submission).
    pub of: String,
    /// Email the student the new result (`--notify`).
    #[serde(default)]
    pub notify: bool,
    /// When the batch was queued: its jobs use a tests head fetched since.
    #[serde(default)]
    pub queued_at: Option<DateTime<Utc>>,
}

/// One accepted submission, as stored in the spool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub schema: u32,
    pub job_id: String,
    /// When the hook received it: the submission time for deadlines.
    pub received_at: DateTime<Utc>,
    pub kind: EventKind,
    pub source: HookSource,
    /// The `X-Gitlab-Event` header value.
    pub gitlab_event: String,
    /// GitLab's `Idempotency-Key` (stable across retries and re-sends).
    pub delivery_key: Option<String>,
    pub project: Project,
    pub pusher: Pusher,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub before: String,
    pub after: String,
    /// The commit to grade: `checkout_sha` when present (for an annotated
    /// tag `after` is the tag object), else `after`.
    pub commit: String,
    pub clone_url: String,
    /// Times this job was active when the daemon died (crash counting).
    #[serde(default)]
    pub crashes: u32,
    /// Infrastructure failures so far (git down, sandbox would not start).
    #[serde(default)]
    pub infra_attempts: u32,
    /// Of those, the student repository's fetches that timed out: the
    /// second makes it the submission's fault (`grader::job`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fetch_timeouts: u32,
    /// Do not run before this time (infra backoff); `None` = now.
    #[serde(default)]
    pub not_before: Option<DateTime<Utc>>,
    /// The grader's last infrastructure error (staff only; `labgrader
    /// queue` shows it beside the attempt count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Set on the jobs `labgrader regrade` queues: they run in the low
    /// priority lane, never take quota, and email only with `--notify`.
    /// The hook never writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regrade: Option<Regrade>,
    /// The GitLab body as received.
    pub raw: serde_json::Value,
}

impl Event {
    pub fn file_name(&self) -> String {
        format!("{}.json", self.job_id)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("event serializes");
        v.push(b'\n');
        v
    }

    pub fn from_bytes(b: &[u8]) -> Result<Event, serde_json::Error> {
        serde_json::from_slice(b)
    }

    /// True when `commit` may be an annotated tag object rather than a
    /// commit: a tag event whose body named no `checkout_sha` (a
    /// `repository_update` system hook). Only the grader can tell, by
    /// peeling it; GitLab keeps commit statuses on commits.
    pub fn commit_may_be_tag_object(&self) -> bool {
        self.kind == EventKind::TagPush && self.raw.get("checkout_sha").is_none_or(|v| v.is_null())
    }

    /// The short commit id shown to students.
    pub fn short_sha(&self) -> &str {
        &self.commit[..self.commit.len().min(8)]
    }
}

/// The job id (file stem) of a spool file name.
pub fn job_id_of(file_name: &str) -> &str {
    file_name.strip_suffix(".json").unwrap_or(file_name)
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_paths() {
        let p = Project::from_path(Some(1), "a/b/c/repo").unwrap();
        assert_eq!((p.namespace.as_str(), p.name.as_str()), ("a/b/c", "repo"));
        assert!(Project::from_path(None, "repo").is_none());
        assert!(Project::from_path(None, "a//repo").is_none());
        assert!(Project::from_path(None, "a/").is_none());
    }

    #[test]
    fn only_tag_events_without_checkout_sha_may_name_a_tag_object() {
        let ev = |kind, raw: serde_json::Value| Event {
            schema: EVENT_SCHEMA,
            job_id: "j".into(),
            received_at: Utc::now(),
            kind,
            source: HookSource::SystemHook,
            gitlab_event: "System Hook".into(),
            delivery_key: None,
            project: Project::from_path(None, "a/b").unwrap(),
            pusher: Pusher {
                id: None,
                username: None,
                name: None,
                email: None,
            },
            git_ref: "refs/tags/t".into(),
            before: ZERO_SHA.into(),
            after: "1".repeat(40),
            commit: "1".repeat(40),
            clone_url: String::new(),
            crashes: 0,
            infra_attempts: 0,
            fetch_timeouts: 0,
            not_before: None,
            last_error: None,
            regrade: None,
            raw,
        };
        let update = serde_json::json!({"event_name": "repository_update"});
        assert!(ev(EventKind::TagPush, update.clone()).commit_may_be_tag_object());
        assert!(
            ev(
                EventKind::TagPush,
                serde_json::json!({"checkout_sha": null})
            )
            .commit_may_be_tag_object()
        );
        assert!(
            !ev(
                EventKind::TagPush,
                serde_json::json!({"checkout_sha": "2".repeat(40)})
            )
            .commit_may_be_tag_object()
        );
        assert!(!ev(EventKind::Push, update).commit_may_be_tag_object());
    }
}
