//! Admission: the one call the grader makes between exporting the student
//! tree and running `test_all`, applying every course rule in order.
//!
//! Owns the order (note the pusher → late? manifest → verified authors →
//! quota) and the
//! split of outcomes into three kinds: admitted (run it, with these
//! limits, authors and result extras), refused by policy (the student's
//! doing: a final status or `failed/` reason and a message for the
//! pusher), or an infrastructure error (retry; never charged to the
//! student). It never moves spool files, runs anything or sends mail.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::quota::{QuotaDecision, QuotaLedger};
use super::rules::{Acceptance, Decision, ResolvedPolicy, judge_lateness};
use crate::config::Config;
use crate::event::{Event, HookSource};
use crate::gitlab::GitlabApi;
use crate::manifest::{
    Authors, Directory, Manifest, ManifestError, ManifestRules, resolve_authors,
};

/// Run it.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub policy: ResolvedPolicy,
    pub acceptance: Acceptance,
    pub manifest: Option<Manifest>,
    /// Everyone who gets the grade (gradebook rows) and the email.
    pub authors: Authors,
    /// For `JobResult::extra`: `late`, `deadline`, `after_deadline`,
    /// `manifest`, `authors`, `unknown_authors`, `authors_source`, `quota`.
    pub extra: BTreeMap<String, Value>,
}

/// Refused by policy: the submission's own doing. Never retried.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// `labgrader.json` is malformed, missing when required, or its
    /// `authors` leave out the pusher: finish the job with status `invalid_manifest`,
    /// reason = `message`, and email the pusher.
    InvalidManifest { message: String },
    /// `late = "reject"` and past deadline + grace: `failed/`, reason `late`.
    Late { message: String },
    /// Over quota: `failed/`, reason `quota`; `message` says when the next
    /// slot opens (`next_slot_at`).
    Quota {
        message: String,
        next_slot_at: DateTime<Utc>,
    },
}

impl Refusal {
    /// The `failed/` reason code, or `invalid_manifest` (a result status).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::InvalidManifest { .. } => "invalid_manifest",
            Refusal::Late { .. } => "late",
            Refusal::Quota { .. } => "quota",
        }
    }

    /// One line for the pusher.
    pub fn message(&self) -> &str {
        match self {
            Refusal::InvalidManifest { message }
            | Refusal::Late { message }
            | Refusal::Quota { message, .. } => message,
        }
    }
}

impl<'a> From<&'a ResolvedPolicy> for ManifestRules<'a> {
    fn from(p: &'a ResolvedPolicy) -> ManifestRules<'a> {
        ManifestRules {
            assignment: &p.assignment,
            manifest: p.manifest,
            roster: p.roster.as_deref(),
        }
    }
}

/// The grader's own trouble while admitting: retry later.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error(transparent)]
    Directory(ManifestError),
    #[error(transparent)]
    Quota(#[from] super::quota::QuotaError),
    #[error("quota ledger task failed: {0}")]
    Join(String),
}

/// Whose fault a manifest problem is, by an exhaustive match: the
/// submission's is a refusal (`invalid_manifest`, the message goes to the
/// pusher); the grader's or the staff's (I/O, roster, GitLab) is an error,
/// retried and never charged to the student.
pub fn manifest_refusal(e: ManifestError) -> Result<Refusal, AdmitError> {
    match e {
        ManifestError::Missing
        | ManifestError::Symlink
        | ManifestError::NotAFile
        | ManifestError::TooLarge { .. }
        | ManifestError::Syntax { .. }
        | ManifestError::Invalid(_)
        | ManifestError::PusherNotListed { .. } => Ok(Refusal::InvalidManifest {
            message: e.to_string(),
        }),
        ManifestError::Io(_)
        | ManifestError::Roster { .. }
        | ManifestError::Lookup(_)
        | ManifestError::NoMembers { .. } => Err(AdmitError::Directory(e)),
    }
}

/// Apply the course policy to `event`, whose student tree (the pushed
/// commit, before the tests are laid over it) is at `student_tree`.
/// Quota slots are taken at the event's `received_at`, keyed by its job
/// id (a retried job keeps its slots); jobs queued locally (`regrade`,
/// `replay`: source `local`) never take quota.
pub async fn admit(
    cfg: &Config,
    event: &Event,
    student_tree: &Path,
    gitlab: Option<GitlabApi>,
    ledger: &Arc<QuotaLedger>,
) -> Result<Result<Admitted, Refusal>, AdmitError> {
    let policy = ResolvedPolicy::for_project(cfg, &event.project.name);
    // Every push that reaches admission shows its pusher took part in the
    // project, whatever the rules below make of it (late, over quota, bad
    // manifest): the consent a co-author gives (`pushers`).
    if let (Some(who), false) = (&event.pusher.username, event.source == HookSource::Local) {
        let (l, project, who, job, at) = (
            ledger.clone(),
            event.project.path.clone(),
            who.clone(),
            event.job_id.clone(),
            event.received_at,
        );
        tokio::task::spawn_blocking(move || l.note_push(&project, &who, &job, at))
            .await
            .map_err(|e| AdmitError::Join(e.to_string()))??;
    }
    // Whether the push is a submission at all was the hook's call; the
    // deadline is judged again here with the current config.
    let acceptance = match judge_lateness(&policy, event.received_at) {
        Decision::Accept(a) => a,
        Decision::Reject { message, .. } => return Ok(Err(Refusal::Late { message })),
        Decision::Ignore(_) => unreachable!("lateness never ignores"),
    };
    let invalid = |e: ManifestError| manifest_refusal(e).map(Err);
    let manifest = match Manifest::load(student_tree, &policy) {
        Ok(m) => m,
        Err(e) => return invalid(e),
    };
    let dir = match Directory::for_policy(&policy, gitlab) {
        Ok(d) => d,
        Err(e) => return invalid(e),
    };
    let listed = manifest
        .as_ref()
        .and_then(|m| m.authors.clone())
        .unwrap_or_default();
    let pushed = if listed.is_empty() {
        Default::default()
    } else {
        let (l, project) = (ledger.clone(), event.project.path.clone());
        tokio::task::spawn_blocking(move || l.pushed_to(&project, &listed))
            .await
            .map_err(|e| AdmitError::Join(e.to_string()))??
    };
    let authors = match resolve_authors(
        manifest.as_ref(),
        &event.pusher,
        &event.project,
        &dir,
        &pushed,
    )
    .await
    {
        Ok(a) => a,
        Err(e) => return invalid(e),
    };
    let mut extra = acceptance.extras();
    if let Some(m) = &manifest {
        extra.insert("manifest".into(), m.to_extra());
    }
    extra.extend(authors.to_extra());
    if let (Some(quota), false) = (policy.quota, event.source == HookSource::Local) {
        let names: Vec<String> = authors.known.iter().map(|a| a.username.clone()).collect();
        let (p, l, job, at, pusher) = (
            policy.clone(),
            ledger.clone(),
            event.job_id.clone(),
            event.received_at,
            event.pusher.username.clone(),
        );
        let decision = tokio::task::spawn_blocking(move || {
            p.take_quota(&l, pusher.as_deref(), &names, &job, at)
        })
        .await
        .map_err(|e| AdmitError::Join(e.to_string()))??;
        if let QuotaDecision::Over { next_slot_at, .. } = &decision {
            return Ok(Err(Refusal::Quota {
                message: decision.over_message(quota).unwrap_or_default(),
                next_slot_at: *next_slot_at,
            }));
        }
        extra.insert("quota".into(), Value::String(quota.to_string()));
    }
    Ok(Ok(Admitted {
        policy,
        acceptance,
        manifest,
        authors,
        extra,
    }))
}
