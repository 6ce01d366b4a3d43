//! Helpers of the delivery tests (`tests/deliver_*.rs`): a config in a
//! temp dir, events and results shaped like the grader's, a running
//! delivery worker, and the outbox records and receipts it leaves. It
//! builds inputs and reads the spool; it never delivers anything itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use labgrader::config::Config;
use labgrader::deliver::{self, Record};
use labgrader::event::{Event, EventKind, HookSource, Project, Pusher};
use labgrader::result::{JobResult, Status};
use labgrader::sandbox::{Captured, Limits};
use labgrader::spool::{Spool, State};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A config for tests: spool in `dir`, short backoff, `extra` TOML appended.
pub fn config(dir: &Path, extra: &str) -> Config {
    let text = format!(
        "[spool]\ndir = {:?}\n\n[deliver]\nbackoff_min = \"50ms\"\nbackoff_max = \"200ms\"\n{extra}",
        dir.join("spool")
    );
    Config::from_toml(&text, None).expect("test config parses")
}

/// Write `secret` to a file in `dir` and return its path (for `*_file` keys).
pub fn secret_file(dir: &Path, name: &str, secret: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, secret).unwrap();
    p
}

/// An accepted push like the one in GitLab's documentation (user 4, jsmith).
pub fn event(job_id: &str, email: Option<&str>) -> Event {
    let sha = "da1560886d4f094c3e6c9ef40349f7d38b5d27d7";
    Event {
        schema: labgrader::event::EVENT_SCHEMA,
        job_id: job_id.to_string(),
        received_at: Utc::now(),
        kind: EventKind::Push,
        source: HookSource::ProjectHook,
        gitlab_event: "Push Hook".into(),
        delivery_key: Some("f6d1c3b4-6a6e-4f0e-8f0c-6c1c1c1c1c1c".into()),
        project: Project::from_path(Some(15), "course/2026/jsmith/lab1").unwrap(),
        pusher: Pusher {
            id: Some(4),
            username: Some("jsmith".into()),
            name: Some("John Smith".into()),
            email: email.map(str::to_string),
        },
        git_ref: "refs/heads/master".into(),
        before: "95790bf891e76fee5e1747ab589903a6a1f80f22".into(),
        after: sha.into(),
        commit: sha.into(),
        clone_url: "http://127.0.0.1:1/course/2026/jsmith/lab1.git".into(),
        crashes: 0,
        infra_attempts: 0,
        fetch_timeouts: 0,
        not_before: None,
        last_error: None,
        regrade: None,
        raw: serde_json::json!({"object_kind": "push"}),
    }
}

/// A finished job's result for `event`.
pub fn result(
    event: &Event,
    status: Status,
    grade: Option<f64>,
    stdout: &[u8],
    stderr: &[u8],
) -> JobResult {
    let mut summary = BTreeMap::new();
    summary.insert("tests_passed".to_string(), "7".to_string());
    let mut hidden = BTreeMap::new();
    hidden.insert("plagiarism_score".to_string(), "0.93".to_string());
    JobResult {
        schema: labgrader::result::RESULT_SCHEMA,
        job_id: event.job_id.clone(),
        project: event.project.path.clone(),
        git_ref: event.git_ref.clone(),
        student_sha: event.commit.clone(),
        tests_sha: Some("1111111111111111111111111111111111111111".into()),
        runner: "none".into(),
        image: None,
        image_id: None,
        limits: Some(Limits {
            timeout: Duration::from_secs(120),
            memory: 256 << 20,
            pids: 256,
            output: 1 << 20,
            cpus: 1.0,
            file_size: 64 << 20,
            open_files: 256,
            disk: 1 << 30,
        }),
        received_at: event.received_at,
        started_at: Some(Utc::now()),
        ended_at: Utc::now(),
        status,
        reason: (status == Status::Timeout).then(|| "timed out after 120 s".to_string()),
        termination: None,
        grade_total: grade,
        summary,
        hidden,
        stdout: Captured::from_bytes(stdout.to_vec(), 1 << 20),
        stderr: Captured::from_bytes(stderr.to_vec(), 1 << 20),
        results: None,
        extra: BTreeMap::new(),
    }
}

/// A running delivery worker.
pub struct Worker {
    pub stop: CancellationToken,
    pub handle: JoinHandle<Result<(), deliver::DeliverError>>,
}

impl Worker {
    pub fn start(cfg: &Config, spool: &Arc<Spool>) -> Worker {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(deliver::run(
            Arc::new(cfg.clone()),
            spool.clone(),
            stop.clone(),
        ));
        Worker { stop, handle }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.handle
            .await
            .expect("worker task")
            .expect("worker ends cleanly");
    }
}

/// The `X-Labgrader-Signature` a callback carries: `sha256=` and the
/// hex HMAC-SHA256 of `body` under `secret`.
pub fn callback_signature(secret: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The record `name` in `state`, parsed.
pub fn read_record(spool: &Spool, state: State, name: &str) -> Option<Record> {
    let b = spool.read(state, name).ok()?;
    Some(Record::from_bytes(&b).expect("record parses"))
}

pub fn receipt_exists(spool: &Spool, name: &str) -> bool {
    spool.root().join(deliver::SENT_DIR).join(name).exists()
}
