//! The commit-status sender: GitLab's `POST /projects/:id/statuses/:sha`.
//!
//! Owns the API call and how GitLab's answer is read (a transition the
//! status already made counts as delivered). The state, description and
//! `target_url` are made at enqueue time by [`super::render`]; each stage
//! is its own outbox record, and the worker sends them in order and drops a
//! stage a later one has overtaken, so the status on GitLab never goes
//! backwards. It never sends the token anywhere but GitLab's API, and never
//! reads the student's output.

use hyper::{Method, StatusCode};
use serde_json::json;

use super::attempt::{Attempt, classify_http};
use super::record::StatusPayload;
use crate::gitlab::{GitlabApi, encode_path};

/// The API path of the status call.
pub fn api_path(p: &StatusPayload) -> String {
    let project = match p.project_id {
        Some(id) => id.to_string(),
        None => encode_path(&p.project_path),
    };
    format!("/projects/{project}/statuses/{}", p.sha)
}

pub(super) async fn send(gitlab: Option<&GitlabApi>, p: &StatusPayload) -> Attempt {
    let Some(api) = gitlab else {
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
            classify_http(&resp, &format!("GitLab (POST {path})"))
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
    use crate::deliver::record::CommitState;

    #[test]
    fn api_paths_use_the_id_else_the_encoded_path() {
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
}
