//! The commit-status destination: GitLab's `POST /projects/:id/statuses/:sha`.
//!
//! Owns the mapping of a job's progress to GitLab's states (`pending` when
//! accepted, `running` when started, `success` when graded, `failed`
//! otherwise), the description (the grade or the failure) and the
//! `target_url` template. Each stage is its own outbox record; the worker
//! sends them in order and drops a stage a later one has overtaken, so the
//! status on GitLab never goes backwards. It never sends the token anywhere
//! but GitLab's API, and never reads the student's output.

use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Attempt, CommitState, Ctx, Destination, Payload, Record};
use crate::config::Config;
use crate::event::Event;
use crate::gitlab::encode_path;
use crate::result::JobResult;

/// GitLab's limit on a status description.
const DESCRIPTION_MAX: usize = 255;

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

/// The final state for a result: `success` when graded, else `failed`.
pub fn final_state(result: &JobResult) -> CommitState {
    if result.status.is_success() {
        CommitState::Success
    } else {
        CommitState::Failed
    }
}

fn short_ref(r: &str) -> Option<String> {
    let r = r
        .strip_prefix("refs/heads/")
        .or_else(|| r.strip_prefix("refs/tags/"))
        .unwrap_or(r);
    (!r.is_empty()).then(|| r.to_string())
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max - '…'.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn payload(cfg: &Config, event: &Event, state: CommitState, description: String) -> StatusPayload {
    let target_url = (!cfg.gitlab.target_url.is_empty()).then(|| {
        super::fill(
            &cfg.gitlab.target_url,
            &[
                ("job_id", &event.job_id),
                ("path", &event.project.path),
                ("sha", &event.commit),
            ],
        )
    });
    StatusPayload {
        project_id: event.project.id,
        project_path: event.project.path.clone(),
        sha: event.commit.clone(),
        git_ref: short_ref(&event.git_ref),
        state,
        name: cfg.gitlab.status_name.clone(),
        description: cut(&description, DESCRIPTION_MAX),
        target_url,
    }
}

/// The `pending` or `running` stage (or a final state without a grade).
pub(crate) fn stage_record(cfg: &Config, event: &Event, state: CommitState) -> Record {
    let (dest, description) = match state {
        CommitState::Pending => (Destination::StatusPending, "queued for grading".to_string()),
        CommitState::Running => (Destination::StatusRunning, "grading".to_string()),
        CommitState::Success => (Destination::Status, "graded".to_string()),
        CommitState::Failed => (Destination::Status, "not graded".to_string()),
    };
    Record::new(
        &event.job_id,
        dest,
        &event.project.path,
        &event.commit,
        Payload::Status(payload(cfg, event, state, description)),
    )
}

/// The final status of a finished job, its description the grade or the failure.
pub(crate) fn final_record(cfg: &Config, event: &Event, result: &JobResult) -> Record {
    let p = payload(cfg, event, final_state(result), super::verdict(result));
    Record::new(
        &event.job_id,
        Destination::Status,
        &event.project.path,
        &event.commit,
        Payload::Status(p),
    )
}

/// The API path of the status call.
pub fn api_path(p: &StatusPayload) -> String {
    let project = match p.project_id {
        Some(id) => id.to_string(),
        None => encode_path(&p.project_path),
    };
    format!("/projects/{project}/statuses/{}", p.sha)
}

pub(crate) async fn send(ctx: &Ctx, _rec: &Record, p: &StatusPayload) -> Attempt {
    let Some(api) = &ctx.gitlab else {
        return Attempt::retry(
            "no GitLab API token configured; set gitlab.token_file or LABGRADER_GITLAB_TOKEN",
        );
    };
    let mut body = json!({
        "state": p.state.as_str(),
        "name": p.name,
        "description": p.description,
    });
    let m = body.as_object_mut().expect("object");
    if let Some(r) = &p.git_ref {
        m.insert("ref".into(), json!(r));
    }
    if let Some(u) = &p.target_url {
        m.insert("target_url".into(), json!(u));
    }
    let path = api_path(p);
    match api.send(Method::POST, &path, Some(&body)).await {
        Ok(resp) => {
            // GitLab refuses a transition the status already made (e.g. a
            // retried `running` whose first answer was lost): done.
            if resp.status == StatusCode::BAD_REQUEST
                && resp.body_snippet().contains("Cannot transition status")
            {
                return Attempt::Delivered {
                    detail: format!("GitLab already had it: {}", resp.body_snippet()),
                };
            }
            super::classify_http(&resp, &format!("GitLab (POST {path})"))
        }
        Err(crate::gitlab::GitlabError::Http(
            e @ (crate::httpc::HttpError::Url { .. } | crate::httpc::HttpError::Header { .. }),
        )) => Attempt::fatal(format!("gitlab.url: {e}")),
        Err(e) => Attempt::retry(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_and_paths() {
        assert_eq!(short_ref("refs/heads/main").as_deref(), Some("main"));
        assert_eq!(short_ref("refs/tags/submit-1").as_deref(), Some("submit-1"));
        let mut p = StatusPayload {
            project_id: None,
            project_path: "course/alice/lab1".into(),
            sha: "abc".into(),
            git_ref: None,
            state: CommitState::Pending,
            name: "labgrader".into(),
            description: String::new(),
            target_url: None,
        };
        assert_eq!(api_path(&p), "/projects/course%2Falice%2Flab1/statuses/abc");
        p.project_id = Some(7);
        assert_eq!(api_path(&p), "/projects/7/statuses/abc");
    }

    #[test]
    fn descriptions_are_cut_to_gitlabs_limit() {
        let long = "é".repeat(300);
        let c = cut(&long, DESCRIPTION_MAX);
        assert!(c.len() <= DESCRIPTION_MAX);
        assert!(c.ends_with('…'));
    }
}
