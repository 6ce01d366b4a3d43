//! The commit-status destination against a GitLab-like server that answers
//! `POST /api/v4/projects/:id/statuses/:sha` as GitLab's API documentation
//! says: `PRIVATE-TOKEN` required (401 without), `state` one of pending,
//! running, success, failed, canceled (400 otherwise), 201 with the status
//! as JSON, and 400 "Cannot transition status via :run from :running" for a
//! transition the status already made.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::{deliver::*, http::*, wait::*};
use labgrader::deliver::{self, CommitState, Destination, record_file_name};
use labgrader::result::Status;
use labgrader::spool::{Spool, State};

const TOKEN: &str = "glpat-status-test";

/// GitLab's commit-status endpoint, with its state machine.
fn gitlab_statuses(fail_first: usize) -> Responder {
    let current: Arc<Mutex<HashMap<(String, String), String>>> = Arc::default();
    Arc::new(move |req, index| {
        if req.header("PRIVATE-TOKEN") != Some(TOKEN) {
            return (401, vec![], r#"{"message":"401 Unauthorized"}"#.into());
        }
        if index < fail_first {
            return (503, vec![], "GitLab is not responding".into());
        }
        let parts: Vec<&str> = req.path.split('/').collect();
        // ["", "api", "v4", "projects", ID, "statuses", SHA]
        if req.method != "POST"
            || parts.len() != 7
            || parts[3] != "projects"
            || parts[5] != "statuses"
        {
            return (404, vec![], r#"{"message":"404 Not Found"}"#.into());
        }
        let body: serde_json::Value = match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(_) => return (400, vec![], r#"{"error":"invalid json"}"#.into()),
        };
        let state = body["state"].as_str().unwrap_or("").to_string();
        if !["pending", "running", "success", "failed", "canceled"].contains(&state.as_str()) {
            return (
                400,
                vec![],
                r#"{"error":"state does not have a valid value"}"#.into(),
            );
        }
        let name = body["name"].as_str().unwrap_or("default").to_string();
        let key = (parts[6].to_string(), name.clone());
        let mut cur = current.lock().unwrap();
        if let Some(prev) = cur.get(&key) {
            let rank = |s: &str| match s {
                "pending" => 0,
                "running" => 1,
                _ => 2,
            };
            if rank(prev) >= rank(&state) && rank(prev) < 2 {
                let event = if state == "running" { "run" } else { "enqueue" };
                return (
                    400,
                    vec![],
                    format!(
                        r#"{{"message":"Cannot transition status via :{event} from :{prev}"}}"#
                    ),
                );
            }
        }
        cur.insert(key, state.clone());
        let answer = serde_json::json!({
            "id": index + 1,
            "sha": parts[6],
            "ref": body["ref"],
            "status": state,
            "name": name,
            "description": body["description"],
            "target_url": body["target_url"],
            "allow_failure": false,
        });
        (
            201,
            vec![("Content-Type", "application/json".into())],
            answer.to_string(),
        )
    })
}

fn status_config(dir: &std::path::Path, gitlab_url: &str) -> labgrader::config::Config {
    let token = secret_file(dir, "gitlab.token", TOKEN);
    config(
        dir,
        &format!(
            "\n[email]\nurl = \"\"\n[gitlab]\nurl = {gitlab_url:?}\ntoken_file = {token:?}\n\
             status_name = \"labgrader-ci\"\n\
             target_url = \"https://grades.example.edu/jobs/{{job_id}}?p={{path}}&c={{sha}}\"\n"
        ),
    )
}

/// `(sha, state, body)` of every status GitLab accepted, in order.
fn accepted(server: &TestServer) -> Vec<(String, String, serde_json::Value)> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .filter_map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
            Some((
                r.path.rsplit('/').next().unwrap().to_string(),
                v["state"].as_str()?.to_string(),
                v,
            ))
        })
        .collect()
}

#[tokio::test]
async fn gitlab_sees_pending_running_then_success_or_failed_for_the_right_sha() {
    let t = tempfile::tempdir().unwrap();
    // The first answer is a 503: the pending status is retried.
    let gitlab = TestServer::start(gitlab_statuses(1)).await;
    let cfg = status_config(t.path(), &gitlab.url(""));
    let spool = Arc::new(Spool::open(&cfg.spool.dir).unwrap());
    let worker = Worker::start(&cfg, &spool);

    let ev = event("01JSTATUS00000000000000001", Some("john@example.com"));
    let step = |d: Destination| record_file_name(&ev.job_id, d);
    deliver::enqueue_commit_status(&cfg, &spool, &ev, CommitState::Pending).unwrap();
    wait_for("pending delivered", || {
        receipt_exists(&spool, &step(Destination::StatusPending))
    })
    .await;
    deliver::enqueue_commit_status(&cfg, &spool, &ev, CommitState::Running).unwrap();
    wait_for("running delivered", || {
        receipt_exists(&spool, &step(Destination::StatusRunning))
    })
    .await;
    let res = result(&ev, Status::Graded, Some(87.5), b"ok\n", b"");
    deliver::enqueue_result(&cfg, &spool, &ev, &res).unwrap();
    wait_for("success delivered", || {
        receipt_exists(&spool, &step(Destination::Status))
    })
    .await;

    // A second job on another commit, without a project id, times out.
    let mut ev2 = event("01JSTATUS00000000000000002", None);
    ev2.project.id = None;
    ev2.commit = "0123456789abcdef0123456789abcdef01234567".into();
    deliver::enqueue_commit_status(&cfg, &spool, &ev2, CommitState::Pending).unwrap();
    wait_for("pending delivered", || {
        receipt_exists(
            &spool,
            &record_file_name(&ev2.job_id, Destination::StatusPending),
        )
    })
    .await;
    deliver::enqueue_commit_status(&cfg, &spool, &ev2, CommitState::Running).unwrap();
    wait_for("running delivered", || {
        receipt_exists(
            &spool,
            &record_file_name(&ev2.job_id, Destination::StatusRunning),
        )
    })
    .await;
    let res2 = result(&ev2, Status::Timeout, None, b"...\n", b"");
    deliver::enqueue_result(&cfg, &spool, &ev2, &res2).unwrap();
    wait_for("failed delivered", || {
        receipt_exists(&spool, &record_file_name(&ev2.job_id, Destination::Status))
    })
    .await;
    worker.stop().await;

    let seen = accepted(&gitlab);
    let for_sha = |sha: &str| -> Vec<String> {
        seen.iter()
            .filter(|(s, _, _)| s == sha)
            .map(|(_, st, _)| st.clone())
            .collect()
    };
    // The 503'd first pending is retried, then running, then the verdict.
    assert_eq!(
        for_sha(&ev.commit),
        ["pending", "pending", "running", "success"]
    );
    assert_eq!(for_sha(&ev2.commit), ["pending", "running", "failed"]);
    let requests = gitlab.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.header("PRIVATE-TOKEN") == Some(TOKEN))
    );
    assert!(
        requests
            .iter()
            .filter(|r| r.path.ends_with(&ev.commit))
            .all(|r| r.path == format!("/api/v4/projects/15/statuses/{}", ev.commit))
    );
    assert!(
        requests
            .iter()
            .filter(|r| r.path.ends_with(&ev2.commit))
            .all(|r| r.path
                == format!(
                    "/api/v4/projects/course%2F2026%2Fjsmith%2Flab1/statuses/{}",
                    ev2.commit
                ))
    );
    let success = &seen.iter().find(|(_, st, _)| st == "success").unwrap().2;
    assert_eq!(success["name"], "labgrader-ci");
    assert_eq!(success["ref"], "master");
    assert_eq!(success["description"], "grade 87.5");
    assert_eq!(
        success["target_url"],
        format!(
            "https://grades.example.edu/jobs/01JSTATUS00000000000000001?p=course/2026/jsmith/lab1&c={}",
            ev.commit
        )
    );
    let failed = &seen.iter().find(|(_, st, _)| st == "failed").unwrap().2;
    assert_eq!(failed["description"], "timed out after 120 s");
    assert!(spool.list(State::Outbox).unwrap().is_empty());
    assert!(spool.list(State::Dead).unwrap().is_empty());
    gitlab.shutdown().await;
}

#[tokio::test]
async fn commit_status_never_goes_backwards_when_stages_queue_up() {
    let t = tempfile::tempdir().unwrap();
    let gitlab = TestServer::start(gitlab_statuses(0)).await;
    let cfg = status_config(t.path(), &gitlab.url(""));
    let spool = Arc::new(Spool::open(&cfg.spool.dir).unwrap());
    // GitLab was unreachable while the job was accepted, started and
    // finished: the earlier stages waited in the outbox until the result
    // was queued, which drops them.
    let ev = event("01JSTATUS00000000000000003", None);
    deliver::enqueue_commit_status(&cfg, &spool, &ev, CommitState::Pending).unwrap();
    deliver::enqueue_commit_status(&cfg, &spool, &ev, CommitState::Running).unwrap();
    assert_eq!(spool.list(State::Outbox).unwrap().len(), 2);
    let res = result(&ev, Status::NoGrade, None, b"no summary\n", b"");
    deliver::enqueue_result(&cfg, &spool, &ev, &res).unwrap();
    // A late duplicate of an earlier stage is not queued behind it.
    deliver::enqueue_commit_status(&cfg, &spool, &ev, CommitState::Pending).unwrap();
    assert_eq!(
        spool.list(State::Outbox).unwrap(),
        [record_file_name(&ev.job_id, Destination::Status)]
    );

    let worker = Worker::start(&cfg, &spool);
    let name = record_file_name(&ev.job_id, Destination::Status);
    wait_for("the final status's receipt", || {
        receipt_exists(&spool, &name)
    })
    .await;
    worker.stop().await;
    let states: Vec<String> = accepted(&gitlab).into_iter().map(|(_, s, _)| s).collect();
    assert_eq!(
        states.last().map(String::as_str),
        Some("failed"),
        "{states:?}"
    );
    let rank = |s: &str| {
        ["pending", "running", "failed"]
            .iter()
            .position(|x| *x == s)
            .unwrap()
    };
    assert!(
        states.windows(2).all(|w| rank(&w[0]) < rank(&w[1])),
        "statuses went backwards: {states:?}"
    );
    gitlab.shutdown().await;
}

#[tokio::test]
async fn commit_status_is_not_queued_without_a_token() {
    let t = tempfile::tempdir().unwrap();
    let cfg = config(t.path(), "\n[email]\nurl = \"\"\n");
    if cfg.secrets.gitlab_token.is_some() {
        return; // LABGRADER_GITLAB_TOKEN is set in this environment
    }
    let spool = Spool::open(&cfg.spool.dir).unwrap();
    let ev = event("01JSTATUS00000000000000004", None);
    deliver::enqueue_commit_status(&cfg, &spool, &ev, CommitState::Pending).unwrap();
    deliver::enqueue_result(
        &cfg,
        &spool,
        &ev,
        &result(&ev, Status::Graded, Some(1.0), b"", b""),
    )
    .unwrap();
    assert!(spool.list(State::Outbox).unwrap().is_empty());
}
