//! End to end through the real `labgrader serve` binary: real bare git
//! repositories and a real `git push`, GitLab's own push payload rewritten
//! to point at them and posted with its own headers, a small local GitLab
//! API (project lookup, commit statuses) answering as GitLab's docs say, a
//! real SMTP server (aiosmtpd), and a recording callback receiver. Checks
//! what a course sees: the gradebook row (through `labgrader gradebook
//! export`), the `done/` record, one email, one signed callback, and the
//! commit status going pending → running → success on the pushed SHA.
//! Deadlines are generous; nothing is a timed assertion.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::daemon::{self, BIN};
use common::deliver::callback_signature;
use common::gitlab::{fixture_headers, fixture_json, headers_for_post};
use common::host::free_port;
use common::http::{Answer, Seen, TestServer};
use common::repos::git;
use common::services::{BUSYBOX_IMAGE, docker_image_id, docker_skipped};
use common::smtp::SmtpSink;
use common::world::Fixture;
use hyper::Method;
use labgrader::httpc::HttpClient;
use labgrader::result::JobResult;

const WAIT: Duration = Duration::from_secs(120);
const HOOK_TOKEN: &str = "e2e-webhook-secret-31f";
const GITLAB_TOKEN: &str = "glpat-e2e-token";
const CALLBACK_SECRET: &str = "e2e-callback-secret";
const STAFF_ONLY: &str = "STAFF-ONLY-stderr-8d2";
const PROJECT: &str = "course/alice/lab1";

/// A test_all that grades the student's `answer.txt` (grade = 10 × the
/// number in it), prints a line for the student, a line on stderr for
/// staff, and a summary with a `[hidden]` section. `sleep` seconds first.
fn grading_test_all(sleep: u32, runs_log: Option<&Path>) -> String {
    let log = runs_log
        .map(|p| format!("echo \"$LABGRADER_STUDENT_SHA\" >> {}\n", p.display()))
        .unwrap_or_default();
    format!(
        "#!/bin/sh\n{log}sleep {sleep}\nn=$(cat answer.txt 2>/dev/null || echo 0)\n\
         echo \"student answer: $n at $LABGRADER_STUDENT_SHA\"\n\
         echo \"{STAFF_ONLY} pusher=$LABGRADER_PUSHER\" >&2\n\
         printf '<summary>\\ngrade_total = %s\\nanswer = %s\\n[hidden]\\nseed = 4242\\n</summary>\\n' \"$((n * 10))\" \"$n\"\n"
    )
}

/// Everything one test runs against: the repos (in a [`Fixture`]), the
/// fake GitLab API, the SMTP sink, the callback receiver, the config.
struct World {
    f: Fixture,
    gitlab: TestServer,
    callback: TestServer,
    smtp: SmtpSink,
    listen: String,
    config: PathBuf,
    log: PathBuf,
}

impl World {
    async fn new(extra: &str) -> World {
        let f = Fixture::new();
        let repos = f.repos.clone();
        let gitlab = TestServer::start(Arc::new(move |req: &Seen, i: usize| {
            gitlab_answer(&repos, req, i)
        }))
        .await;
        let callback = TestServer::start(Arc::new(|_: &Seen, _| (200, vec![], "ok".into()))).await;
        let smtp = SmtpSink::start(free_port(), &f.tmp.path().join("mail"), None).await;
        let dir = f.tmp.path();
        let secret = |name: &str, v: &str| {
            let p = dir.join(name);
            std::fs::write(&p, v).unwrap();
            p
        };
        let listen = format!("127.0.0.1:{}", free_port());
        let text = format!(
            r#"[server]
listen = "{listen}"
webhook_token_file = "{hook}"
test_repo_lookup_timeout = "10s"

[spool]
dir = "{spool}"

[gitlab]
url = "http://{gitlab}"
token_file = "{gltoken}"
clone_url = "file://{repos}/{{path}}.git"
api_timeout = "10s"

[grader]
runner = "none"
workers = 2
timeout = "60s"
rescan_interval = "1s"
infra_backoff = "1s"
shutdown_grace = "5s"

[email]
url = "smtp://127.0.0.1:{smtp}"
from = "Lab Grader <grader@example.edu>"
timeout = "20s"

[callback]
url = "{cb}"
secret_file = "{cbsecret}"
timeout = "10s"

[deliver]
backoff_min = "50ms"
backoff_max = "500ms"
# Every stage is sent, however quick the job (the default holds `running`
# back for a second: see quick_jobs_send_no_running_stage).
running_after = "0s"
{extra}
"#,
            hook = secret("webhook-token", HOOK_TOKEN).display(),
            spool = f.spool_dir.display(),
            gitlab = gitlab.addr,
            gltoken = secret("gitlab-token", GITLAB_TOKEN).display(),
            repos = f.repos.display(),
            smtp = smtp.port,
            cb = callback.url("/grades"),
            cbsecret = secret("callback-secret", CALLBACK_SECRET).display(),
        );
        let config = dir.join("labgrader.toml");
        std::fs::write(&config, text).unwrap();
        let log = dir.join("serve.log");
        World {
            f,
            gitlab,
            callback,
            smtp,
            listen,
            config,
            log,
        }
    }

    /// Start `labgrader serve` and wait until `/healthz` answers.
    async fn serve(&self) -> Serve {
        let child = daemon::binary("serve", &self.config, &self.log)
            .spawn()
            .expect("the labgrader binary starts");
        let mut s = Serve { child: Some(child) };
        let base = format!("http://{}", self.listen);
        daemon::wait_healthy(&base, s.child.as_mut().unwrap(), WAIT, &self.log).await;
        s
    }

    /// Replace `from` by `to` in the config file.
    fn set_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains(from), "{from}");
        std::fs::write(&self.config, text.replace(from, to)).unwrap();
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GitLab's push fixture rewritten for a push of `before..after` to
    /// `refs/heads/main` of `path` by alice, posted with the fixture's own
    /// headers (our token, a fresh delivery key). Returns the job id.
    async fn post_push(&self, path: &str, before: &str, after: &str) -> String {
        let mut body = fixture_json("push.json");
        let (ns, name) = path.rsplit_once('/').unwrap();
        body["before"] = before.into();
        body["after"] = after.into();
        body["checkout_sha"] = after.into();
        body["ref"] = "refs/heads/main".into();
        body["user_username"] = "alice".into();
        body["user_name"] = "Alice Student".into();
        body["user_email"] = "alice@students.example.edu".into();
        let p = &mut body["project"];
        p["path_with_namespace"] = path.into();
        p["namespace"] = ns.into();
        p["name"] = name.into();
        p["default_branch"] = "main".into();
        body["repository"]["name"] = name.into();
        body["commits"] = serde_json::json!([{"id": after, "message": "work", "title": "work"}]);
        body["total_commits_count"] = 1.into();
        let key = format!("e2e-{}", labgrader::spool::new_job_id());
        self.post("Push Hook", fixture_headers("push"), &key, &body)
            .await
    }

    /// POST `body` to the hook with the headers of a fixture
    /// (`X-Gitlab-Token` replaced by ours, `Idempotency-Key` by `key`);
    /// expects 202 and returns the job id.
    async fn post(
        &self,
        event: &str,
        headers: Vec<(String, String)>,
        key: &str,
        body: &serde_json::Value,
    ) -> String {
        let (status, text) = post_hook(&self.listen, event, headers, key, body).await;
        assert_eq!(status, 202, "{text}\n{}", self.log_text());
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let job = v["job_id"].as_str().expect("a job id").to_string();
        assert!(labgrader::spool::is_valid_name(&job), "{job}");
        job
    }

    /// Wait for `done/<job>/result.json`.
    async fn done(&self, job: &str) -> JobResult {
        let p = self.f.done_dir(job).join("result.json");
        wait("the job's done/ record", || p.exists(), self).await;
        serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
    }

    /// The gradebook through `labgrader gradebook export --format json`.
    fn export(&self) -> Vec<serde_json::Value> {
        let out = Command::new(BIN)
            .args(["gradebook", "export", "--format", "json", "--config"])
            .arg(&self.config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "export: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn sent(&self, name: &str) -> bool {
        self.f.spool_dir.join("sent").join(name).exists()
    }

    /// The callbacks the receiver got for `job`, in order, with their bodies.
    fn callbacks(&self, job: &str) -> Vec<(Seen, serde_json::Value)> {
        self.callback
            .requests()
            .into_iter()
            .filter_map(|c| {
                let v: serde_json::Value = serde_json::from_slice(&c.body).ok()?;
                (v["job_id"] == job).then_some((c, v))
            })
            .collect()
    }

    /// How many result callbacks (not `queued` or `running`) arrived.
    fn final_callbacks(&self) -> usize {
        self.callback
            .requests()
            .iter()
            .filter(|c| {
                serde_json::from_slice::<serde_json::Value>(&c.body)
                    .is_ok_and(|v| !matches!(v["status"].as_str(), Some("queued" | "running")))
            })
            .count()
    }

    /// Commit statuses GitLab received for `sha`, as (state, ref).
    fn statuses(&self, sha: &str) -> Vec<String> {
        self.gitlab
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with(&format!("/statuses/{sha}")))
            .map(|r| {
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                v["state"].as_str().unwrap().to_string()
            })
            .collect()
    }

    /// Push events for each (project, sha) to the running `serve`, then
    /// wait for each job's result and its deliveries.
    async fn grade<const N: usize>(
        &self,
        pushes: [(&str, &String); N],
    ) -> [(String, JobResult); N] {
        let mut jobs = Vec::new();
        for (project, sha) in pushes {
            jobs.push(
                self.post_push(project, labgrader::event::ZERO_SHA, sha)
                    .await,
            );
        }
        let mut out = Vec::new();
        for job in jobs {
            let r = self.done(&job).await;
            self.deliveries_settled(&job).await;
            out.push((job, r));
        }
        out.try_into()
            .unwrap_or_else(|_| unreachable!("one result per push"))
    }

    /// Every outbox record of `job` delivered (or none left waiting).
    async fn deliveries_settled(&self, job: &str) {
        let outbox = self.f.spool_dir.join("outbox");
        wait(
            "the job's deliveries",
            || {
                std::fs::read_dir(&outbox)
                    .map(|rd| {
                        !rd.flatten()
                            .any(|e| e.file_name().to_string_lossy().starts_with(job))
                    })
                    .unwrap_or(true)
            },
            self,
        )
        .await;
        let dead = self.f.spool_dir.join("dead");
        let dead: Vec<_> = std::fs::read_dir(&dead)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert!(dead.is_empty(), "dead deliveries: {dead:?}");
    }
}

impl Drop for World {
    /// `LABGRADER_E2E_LOG=1` prints the daemon's log after each test.
    fn drop(&mut self) {
        if std::env::var("LABGRADER_E2E_LOG").as_deref() == Ok("1") {
            eprintln!("----- labgrader serve log -----\n{}", self.log_text());
        }
    }
}

struct Serve {
    child: Option<Child>,
}

impl Serve {
    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    /// SIGKILL: no shutdown path runs.
    fn kill(mut self) {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
        self.child.take().unwrap().wait().unwrap();
    }

    /// SIGTERM and wait for a clean exit.
    async fn stop(mut self) {
        let c = self.child.take().unwrap();
        tokio::task::spawn_blocking(move || daemon::stop(c))
            .await
            .unwrap();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn wait(what: &str, mut cond: impl FnMut() -> bool, w: &World) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting for {what}; spool: {:?}\nlog:\n{}",
            w.f.listing(),
            w.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GitLab's REST API as its docs describe the two calls labgrader makes:
/// `GET /api/v4/projects/:id` (`:id` the URL-encoded path) and
/// `POST /api/v4/projects/:id/statuses/:sha` (201 with the status object).
fn gitlab_answer(repos: &Path, req: &Seen, i: usize) -> Answer {
    let json = vec![("Content-Type", "application/json".to_string())];
    if req.header("PRIVATE-TOKEN") != Some(GITLAB_TOKEN) {
        return (401, json, r#"{"message":"401 Unauthorized"}"#.into());
    }
    if req.method == "GET"
        && let Some(id) = req.path.strip_prefix("/api/v4/users/")
    {
        // `GET /users/:id`: a non-admin token sees only the public email.
        let body = serde_json::json!({
            "id": id.parse::<u64>().unwrap_or(0), "username": "alice",
            "name": "Alice Student", "state": "active",
            "public_email": "alice@students.example.edu",
        });
        return (200, json, body.to_string());
    }
    let Some(rest) = req.path.strip_prefix("/api/v4/projects/") else {
        return (404, json, r#"{"error":"404 Not Found"}"#.into());
    };
    let (id, tail) = match rest.split_once('/') {
        Some((id, tail)) => (id, Some(tail)),
        None => (rest, None),
    };
    let path = id.replace("%2F", "/").replace("%2f", "/");
    match (req.method.as_str(), tail) {
        ("GET", None) => {
            let bare = repos.join(format!("{path}.git"));
            if bare.is_dir() {
                // As GitLab (14.1 and later) answers: `empty_repo` says
                // whether the repository has a commit; `default_branch`
                // names the branch it would be even when it is empty.
                let body = serde_json::json!({
                    "id": 100 + i, "path_with_namespace": path, "default_branch": "main",
                    "empty_repo": git(&bare, &["for-each-ref", "--count=1"]).trim().is_empty(),
                    "http_url_to_repo": format!("http://gitlab.test/{path}.git"),
                });
                (200, json, body.to_string())
            } else {
                (404, json, r#"{"message":"404 Project Not Found"}"#.into())
            }
        }
        ("POST", Some(t)) if t.starts_with("statuses/") => {
            let sha = &t["statuses/".len()..];
            let b: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let body = serde_json::json!({
                "id": i, "sha": sha, "ref": b["ref"], "status": b["state"], "name": b["name"],
                "description": b["description"], "target_url": b["target_url"],
                "created_at": "2026-01-01T00:00:00.000Z", "allow_failure": false,
            });
            (201, json, body.to_string())
        }
        _ => (404, json, r#"{"error":"404 Not Found"}"#.into()),
    }
}

/// The row of `job` in an export.
fn row<'a>(rows: &'a [serde_json::Value], job: &str) -> Option<&'a serde_json::Value> {
    rows.iter().find(|r| r["job_id"] == job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_jobs_send_no_running_stage() {
    let w = World::new("").await;
    // `running` goes out once test_all has run for running_after: bob's
    // job (a second) gets it, alice's (instant) sends her result alone.
    w.set_config("running_after = \"0s\"", "running_after = \"300ms\"");
    w.f.tests_repo("lab0", &grading_test_all(1, None));
    let bob_sha = w.f.push("course/bob/lab0", |_| {});
    w.f.tests_repo("lab1", &grading_test_all(0, None));
    let sha = w.f.push(PROJECT, |d| {
        std::fs::write(d.join("answer.txt"), "7").unwrap()
    });
    let serve = w.serve().await;
    let [(bob, _), (alice, _)] = w
        .grade([("course/bob/lab0", &bob_sha), (PROJECT, &sha)])
        .await;
    serve.stop().await;
    let states = |job: &str| -> Vec<String> {
        w.callbacks(job)
            .iter()
            .map(|(_, v)| v["status"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(
        !states(&alice).contains(&"running".to_string()),
        "{:?}",
        states(&alice)
    );
    assert!(
        !w.statuses(&sha).contains(&"running".to_string()),
        "{:?}",
        w.statuses(&sha)
    );
    assert_eq!(states(&alice).last().map(String::as_str), Some("graded"));
    assert_eq!(w.statuses(&sha).last().map(String::as_str), Some("success"));
    assert!(
        states(&bob).contains(&"running".to_string()),
        "{:?}",
        states(&bob)
    );
    assert!(
        w.statuses(&bob_sha).contains(&"running".to_string()),
        "{:?}",
        w.statuses(&bob_sha)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_through_serve_is_graded_recorded_mailed_called_back_and_statused() {
    let w = World::new("").await;
    // One worker, held by another student's job until GitLab has seen
    // alice's `pending`: the stage is only sent while a job waits (a stage
    // overtaken before it was sent is dropped by design).
    w.set_config("workers = 2", "workers = 1");
    let gate = w.f.tmp.path().join("gate");
    w.f.tests_repo(
        "lab0",
        &format!(
            "#!/bin/sh\nwhile [ ! -e {} ]; do sleep 0.05; done\nprintf '<summary>\\ngrade_total = 1\\n</summary>\\n'\n",
            gate.display()
        ),
    );
    let bob_sha = w.f.push("course/bob/lab0", |_| {});
    let tests_sha = w.f.tests_repo("lab1", &grading_test_all(0, None));
    let sha = w.f.push(PROJECT, |d| {
        std::fs::write(d.join("answer.txt"), "7").unwrap()
    });
    let serve = w.serve().await;
    let bob = w
        .post_push("course/bob/lab0", labgrader::event::ZERO_SHA, &bob_sha)
        .await;
    wait(
        "bob's job to start",
        || w.statuses(&bob_sha).iter().any(|s| s == "running"),
        &w,
    )
    .await;
    let job = w.post_push(PROJECT, labgrader::event::ZERO_SHA, &sha).await;
    wait(
        "alice's pending status",
        || w.statuses(&sha).iter().any(|s| s == "pending"),
        &w,
    )
    .await;
    std::fs::write(&gate, "").unwrap();
    w.done(&bob).await;

    let r = w.done(&job).await;
    assert_eq!(r.status, labgrader::result::Status::Graded, "{r:?}");
    assert_eq!(r.grade_total, Some(70.0));
    assert_eq!(r.student_sha, sha);
    assert_eq!(r.tests_sha.as_deref(), Some(tests_sha.as_str()));
    let done = w.f.done_dir(&job);
    for f in ["event.json", "result.json", "stdout", "stderr"] {
        assert!(done.join(f).is_file(), "done/{job}/{f}");
    }
    let stdout = std::fs::read_to_string(done.join("stdout")).unwrap();
    assert!(
        stdout.contains(&format!("student answer: 7 at {sha}")),
        "{stdout}"
    );
    assert!(
        std::fs::read_to_string(done.join("stderr"))
            .unwrap()
            .contains(STAFF_ONLY)
    );

    wait("the gradebook row", || row(&w.export(), &job).is_some(), &w).await;
    let rows = w.export();
    let rw = row(&rows, &job).unwrap();
    assert_eq!(rw["grade_total"], 70.0, "{rw}");
    assert_eq!(rw["student_sha"], sha.as_str());
    assert_eq!(rw["tests_sha"], tests_sha.as_str());
    assert_eq!(rw["project"], PROJECT);

    w.deliveries_settled(&job).await;
    wait(
        "the final commit status",
        || w.statuses(&sha).iter().any(|s| s == "success"),
        &w,
    )
    .await;
    serve.stop().await;

    // Exactly one email for alice's job, to the pusher, with stdout and
    // nothing for staff.
    let msgs: Vec<_> = w
        .smtp
        .messages()
        .into_iter()
        .filter(|m| m["body"].as_str().unwrap_or("").contains(&job))
        .collect();
    assert_eq!(msgs.len(), 1, "{msgs:#?}");
    let m = &msgs[0];
    assert_eq!(
        m["rcpt_tos"],
        serde_json::json!(["alice@students.example.edu"])
    );
    assert_eq!(
        m["headers"]["subject"],
        format!("[labgrader] {PROJECT} {}: grade 70", &sha[..8])
    );
    let body = m["body"].as_str().unwrap().replace("\r\n", "\n");
    assert!(
        body.contains(&format!("student answer: 7 at {sha}")),
        "{body}"
    );
    assert!(body.contains("grade_total = 70"), "{body}");
    assert!(!body.contains(STAFF_ONLY), "stderr leaked: {body}");
    // The `[hidden]` section is cut from what students get (main's
    // deliver::hidden, merged after this branch was cut).
    assert!(
        !body.contains("[hidden]") && !body.contains("4242"),
        "hidden summary keys reached the student: {body}"
    );

    // A callback per state of the job, in order, each signed and with
    // its own idempotency key; the last one is the result.
    let calls = w.callbacks(&job);
    let states: Vec<String> = calls
        .iter()
        .map(|(_, v)| v["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, ["queued", "running", "graded"], "{calls:#?}");
    for ((c, _), key) in calls
        .iter()
        .zip(["callback-queued", "callback-running", "callback"])
    {
        assert_eq!(
            c.header("X-Labgrader-Signature"),
            Some(callback_signature(CALLBACK_SECRET, &c.body).as_str())
        );
        assert_eq!(
            c.header("Idempotency-Key"),
            Some(format!("{job}:{key}").as_str())
        );
    }
    let c = &calls[2].0;
    let cb: serde_json::Value = serde_json::from_slice(&c.body).unwrap();
    assert_eq!(cb["job_id"], job.as_str());
    assert_eq!(cb["student_sha"], sha.as_str());
    assert_eq!(cb["grade_total"], 70.0);
    let cb_text = String::from_utf8_lossy(&c.body);
    assert!(
        !cb_text.contains(STAFF_ONLY) && !cb_text.contains("4242"),
        "{cb_text}"
    );

    // GitLab saw the status move forward on the pushed SHA, and only there.
    assert_eq!(w.statuses(&sha), ["pending", "running", "success"]);
    let status_posts: Vec<_> = w
        .gitlab
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with(&format!("/statuses/{sha}")))
        .collect();
    assert_eq!(status_posts.len(), 3, "{status_posts:#?}");
    let last: serde_json::Value = serde_json::from_slice(&status_posts[2].body).unwrap();
    assert_eq!(last["ref"], "main");
    assert_eq!(last["name"], "labgrader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_quick_pushes_through_serve_are_each_graded_at_their_own_sha() {
    let w = World::new("").await;
    w.f.tests_repo("lab1", &grading_test_all(0, None));
    let sha1 = w.f.push(PROJECT, |d| {
        std::fs::write(d.join("answer.txt"), "1").unwrap()
    });
    let sha2 = w.f.push(PROJECT, |d| {
        std::fs::write(d.join("answer.txt"), "2").unwrap()
    });
    let serve = w.serve().await;
    // Both arrive before anything is fetched: main already points at sha2.
    let j1 = w
        .post_push(PROJECT, labgrader::event::ZERO_SHA, &sha1)
        .await;
    let j2 = w.post_push(PROJECT, &sha1, &sha2).await;
    assert_ne!(j1, j2);
    let r1 = w.done(&j1).await;
    let r2 = w.done(&j2).await;
    assert_eq!(
        (r1.student_sha.as_str(), r1.grade_total),
        (sha1.as_str(), Some(10.0))
    );
    assert_eq!(
        (r2.student_sha.as_str(), r2.grade_total),
        (sha2.as_str(), Some(20.0))
    );
    let rows = w.export();
    assert_eq!(row(&rows, &j1).unwrap()["student_sha"], sha1.as_str());
    assert_eq!(row(&rows, &j2).unwrap()["student_sha"], sha2.as_str());
    for (j, s) in [(&j1, &sha1), (&j2, &sha2)] {
        w.deliveries_settled(j).await;
        wait(
            "the final status",
            || w.statuses(s).last().map(String::as_str) == Some("success"),
            &w,
        )
        .await;
    }
    serve.stop().await;
    assert_eq!(w.smtp.messages().len(), 2);
    assert_eq!(w.final_callbacks(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_serve_mid_job_then_restart_grades_once_and_mails_once() {
    let w = World::new("").await;
    let runs = w.f.tmp.path().join("runs");
    w.f.tests_repo("lab1", &grading_test_all(3, Some(&runs)));
    let sha = w.f.push(PROJECT, |d| {
        std::fs::write(d.join("answer.txt"), "5").unwrap()
    });
    let first = w.serve().await;
    let job = w.post_push(PROJECT, labgrader::event::ZERO_SHA, &sha).await;
    wait("test_all to start", || runs.exists(), &w).await;
    first.kill();
    assert!(!w.f.done_dir(&job).exists(), "killed before the end");

    let second = w.serve().await;
    let r = w.done(&job).await;
    assert_eq!(
        (r.status, r.grade_total),
        (labgrader::result::Status::Graded, Some(50.0))
    );
    assert_eq!(r.extra.get("crashes"), Some(&serde_json::json!(1)), "{r:?}");
    w.deliveries_settled(&job).await;
    wait(
        "the email receipt",
        || w.sent(&format!("{job}.email.json")) || !w.smtp.messages().is_empty(),
        &w,
    )
    .await;
    second.stop().await;
    let rows = w.export();
    assert_eq!(
        rows.iter().filter(|r| r["job_id"] == job.as_str()).count(),
        1
    );
    assert_eq!(w.smtp.messages().len(), 1, "{:#?}", w.smtp.messages());
    assert_eq!(w.final_callbacks(), 1);
    // Across the kill, the receiver never saw the job's state go back.
    let rank = |s: &str| {
        ["queued", "running"]
            .iter()
            .position(|x| *x == s)
            .unwrap_or(2)
    };
    let states: Vec<usize> = w
        .callbacks(&job)
        .iter()
        .map(|(_, v)| rank(v["status"].as_str().unwrap()))
        .collect();
    assert!(states.windows(2).all(|p| p[0] <= p[1]), "{states:?}");
    assert_eq!(states.last(), Some(&2));
    // Graded twice (once killed), recorded once.
    let runs_text = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(runs_text.lines().count(), 2, "{runs_text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_runner_auto_grades_in_the_docker_image_when_docker_answers() {
    if docker_skipped() {
        return;
    }
    let image = BUSYBOX_IMAGE;
    let image_id = docker_image_id(image);
    let w = World::new(&format!("[docker]\nimage = \"{image}\"\n")).await;
    w.set_config("runner = \"none\"", "runner = \"auto\"");
    w.f.tests_repo("lab1", &grading_test_all(0, None));
    let sha = w.f.push(PROJECT, |d| {
        std::fs::write(d.join("answer.txt"), "9").unwrap()
    });
    let serve = w.serve().await;
    let job = w.post_push(PROJECT, labgrader::event::ZERO_SHA, &sha).await;
    let r = w.done(&job).await;
    serve.stop().await;
    assert_eq!(r.status, labgrader::result::Status::Graded, "{r:?}");
    assert_eq!(r.grade_total, Some(90.0));
    assert_eq!(r.runner, "docker");
    assert_eq!(r.image.as_deref(), Some(image));
    assert_eq!(r.image_id.as_deref(), Some(image_id.as_str()));
}

/// A tag pushed only through a `repository_update` system hook: the hook
/// body carries the annotated tag OBJECT's sha (no checkout_sha). The
/// grader grades the commit it points to, records that commit as
/// `student_sha`, and keeps the tag object's sha in `extra`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotated_tag_from_repository_update_is_graded_at_its_commit() {
    let w = World::new("").await;
    w.f.tests_repo("lab1", &grading_test_all(0, None));
    let sha = w.f.push(PROJECT, |d| {
        std::fs::write(d.join("answer.txt"), "8").unwrap()
    });
    // An annotated tag on that commit, pushed for real.
    let clone = w.f.tmp.path().join("clones").join(PROJECT);
    git(&clone, &["tag", "-a", "submit-1", "-m", "my submission"]);
    git(&clone, &["push", "-q", "origin", "refs/tags/submit-1"]);
    let tag_obj = git(&clone, &["rev-parse", "refs/tags/submit-1"]);
    assert_ne!(tag_obj, sha, "an annotated tag is its own object");

    let mut body = fixture_json("system_repository_update.json");
    body["project"]["path_with_namespace"] = PROJECT.into();
    body["project"]["name"] = "lab1".into();
    body["project"]["namespace"] = "alice".into();
    body["user_email"] = "alice@students.example.edu".into();
    body["changes"] = serde_json::json!([{
        "before": labgrader::event::ZERO_SHA, "after": tag_obj, "ref": "refs/tags/submit-1"
    }]);
    body["refs"] = serde_json::json!(["refs/tags/submit-1"]);
    let headers = fixture_headers("system_repository_update");
    let serve = w.serve().await;
    let job = w.post("System Hook", headers, "e2e-tag-1", &body).await;
    let r = w.done(&job).await;
    assert_eq!(r.status, labgrader::result::Status::Graded, "{r:?}");
    assert_eq!(r.grade_total, Some(80.0));
    assert_eq!(
        r.student_sha, sha,
        "graded and recorded at the tagged commit"
    );
    assert_eq!(
        r.extra.get("tag_object"),
        Some(&serde_json::json!(tag_obj)),
        "{r:?}"
    );
    let stdout = std::fs::read_to_string(w.f.done_dir(&job).join("stdout")).unwrap();
    assert!(
        stdout.contains(&format!("at {sha}")),
        "LABGRADER_STUDENT_SHA: {stdout}"
    );
    w.deliveries_settled(&job).await;
    serve.stop().await;
    // Every status goes to the commit (GitLab keeps statuses on commits):
    // the hook cannot tell a tag object from a commit, so it sends no
    // `pending` here; the grader's `running` follows the peel.
    assert_eq!(w.statuses(&sha), ["running", "success"]);
    assert!(
        w.statuses(&tag_obj).is_empty(),
        "{:?}",
        w.statuses(&tag_obj)
    );
    let m = &w.smtp.messages()[0];
    assert!(
        m["headers"]["subject"]
            .as_str()
            .unwrap()
            .contains(&sha[..8]),
        "{m}"
    );
}

/// A `Tag Push Hook` for an annotated tag: `after` is the tag object,
/// `checkout_sha` the commit. GitLab's tag push carries no `user_email`, so
/// the email goes to the address GitLab's user API gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotated_tag_push_hook_is_graded_at_checkout_sha_and_mailed_via_the_user_api() {
    let w = World::new("").await;
    w.f.tests_repo("lab1", &grading_test_all(0, None));
    let sha = w.f.push(PROJECT, |d| {
        std::fs::write(d.join("answer.txt"), "4").unwrap()
    });
    let clone = w.f.tmp.path().join("clones").join(PROJECT);
    git(&clone, &["tag", "-a", "v1.0.0", "-m", "release"]);
    git(&clone, &["push", "-q", "origin", "refs/tags/v1.0.0"]);
    let tag_obj = git(&clone, &["rev-parse", "refs/tags/v1.0.0"]);

    let mut body = fixture_json("tag_push.json");
    assert!(
        body.get("user_email").is_none(),
        "GitLab's tag push has no email"
    );
    body["after"] = tag_obj.as_str().into();
    body["checkout_sha"] = sha.as_str().into();
    body["project"]["path_with_namespace"] = PROJECT.into();
    body["project"]["name"] = "lab1".into();
    body["project"]["namespace"] = "alice".into();
    body["user_username"] = "alice".into();
    let headers = fixture_headers("tag_push");
    let serve = w.serve().await;
    let job = w
        .post("Tag Push Hook", headers, "e2e-tag-push-1", &body)
        .await;
    let r = w.done(&job).await;
    assert_eq!(
        (r.status, r.grade_total),
        (labgrader::result::Status::Graded, Some(40.0))
    );
    assert_eq!(r.student_sha, sha);
    assert_eq!(r.git_ref, "refs/tags/v1.0.0");
    assert_eq!(r.extra.get("tag_object"), Some(&serde_json::json!(tag_obj)));
    w.deliveries_settled(&job).await;
    serve.stop().await;
    let msgs = w.smtp.messages();
    assert_eq!(msgs.len(), 1, "{msgs:#?}");
    assert_eq!(
        msgs[0]["rcpt_tos"],
        serde_json::json!(["alice@students.example.edu"])
    );
    assert_eq!(w.statuses(&sha).last().map(String::as_str), Some("success"));
}

/// The trusted contract end to end, through `labgrader serve` and the
/// docker runner: the harness runs the student's program with
/// `run-as-student` and writes `results.json`. A student with no working
/// code tries everything at once — prints a forged summary, hunts the
/// whole container for the expected answer, writes and keeps rewriting
/// `results.json` from the background, and kills its parent — and gets the
/// harness's grade: 0. An honest student gets 10. Both grades reach the
/// gradebook, the email and the commit status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_contract_through_serve_grades_only_what_the_harness_wrote() {
    if docker_skipped() {
        return;
    }
    let image = "labgrader/test-busybox:latest";
    let w = World::new(&format!(
        "[docker]\nimage = \"{image}\"\n[assignments.lab7]\ncontract = \"trusted\"\n"
    ))
    .await;
    w.set_config("runner = \"none\"", "runner = \"docker\"");
    // The harness: the expected answer stays in its private copy.
    w.f.push("root/lab7-test", |d| {
        std::fs::write(d.join("expected.txt"), "4242\n").unwrap();
        common::files::write_exec(
            &d.join("test_all"),
            "#!/bin/sh\n\
             got=$(run-as-student sh ./solve.sh </dev/null 2>/dev/null | tail -n 1)\n\
             if [ \"$got\" = \"$(cat expected.txt)\" ]; then s=10; else s=0; fi\n\
             echo \"your answer: $got\"\n\
             printf '{\"tests\": [{\"name\": \"answer\", \"score\": %s, \"max_score\": 10}]}' \"$s\" \
               > \"$LABGRADER_RESULTS/results.json.tmp\"\n\
             mv \"$LABGRADER_RESULTS/results.json.tmp\" \"$LABGRADER_RESULTS/results.json\"\n",
        );
    });
    let cheat = "course/mallory/lab7";
    let honest = "course/alice/lab7";
    let cheat_sha = w.f.push(cheat, |d| {
        std::fs::write(
            d.join("solve.sh"),
            "forged='{\"score\": 100, \"tests\": []}'\n\
             for r in \"$LABGRADER_RESULTS\" /harness/results /results; do\n\
               echo \"$forged\" > \"$r/results.json\" 2>/dev/null && echo WROTE-RESULTS\n\
             done\n\
             ( while :; do for r in /harness/results /results; do\n\
                 echo \"$forged\" > \"$r/results.json\" 2>/dev/null; done; done ) &\n\
             found=$( (cat /harness/tests/expected.txt /proc/*/cwd/expected.txt;\n\
               grep -rs 4242 /harness /results /workspace /tmp /.labgrader /etc /root /home) \
               2>/dev/null | head -n 1)\n\
             [ -n \"$found\" ] && echo \"FOUND: $found\"\n\
             printf '<summary>\\ngrade_total = 100\\n</summary>\\n'\n\
             kill -STOP $PPID 2>/dev/null; kill -KILL $PPID 2>/dev/null\n\
             echo 0\n",
        )
        .unwrap();
    });
    let honest_sha = w.f.push(honest, |d| {
        std::fs::write(d.join("solve.sh"), "echo 4242\n").unwrap();
    });
    let serve = w.serve().await;
    let [(cheat_job, c), (honest_job, h)] =
        w.grade([(cheat, &cheat_sha), (honest, &honest_sha)]).await;
    serve.stop().await;

    let out = String::from_utf8_lossy(&c.stdout.bytes).into_owned();
    assert_eq!(c.runner, "docker", "{c:?}");
    assert_eq!(
        (c.status, c.grade_total),
        (labgrader::result::Status::Graded, Some(0.0)),
        "{out}\n{c:?}"
    );
    assert!(!out.contains("WROTE-RESULTS"), "{out}");
    assert!(!out.contains("FOUND"), "the expected answer leaked: {out}");
    assert_eq!(
        (h.status, h.grade_total),
        (labgrader::result::Status::Graded, Some(10.0)),
        "{h:?}"
    );
    let rows = w.export();
    assert_eq!(row(&rows, &cheat_job).unwrap()["grade_total"], 0.0);
    assert_eq!(row(&rows, &honest_job).unwrap()["grade_total"], 10.0);
    let subjects: Vec<String> = w
        .smtp
        .messages()
        .iter()
        .map(|m| m["headers"]["subject"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        subjects
            .iter()
            .any(|s| s.contains(&cheat_sha[..8]) && s.ends_with("grade 0")),
        "{subjects:?}"
    );
    assert!(
        subjects
            .iter()
            .any(|s| s.contains(&honest_sha[..8]) && s.ends_with("grade 10")),
        "{subjects:?}"
    );
}

/// Issue 15 end to end: a harness running Debian's pytest writes
/// `junit.xml`; the grade, the gradebook's per-test rows, the email's
/// table, the callback's `tests` and the commit status come from it; the
/// hidden test is never shown; the `after_due_date` test is shown only in
/// the one release the daemon sends once the deadline passes, which a
/// SIGKILL and restart do not send again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pytest_junit_results_are_shown_per_test_and_released_once_after_the_deadline() {
    let python = common::services::python();
    let deadline = (chrono::Utc::now() + chrono::Duration::seconds(20)).to_rfc3339();
    let w = World::new(&format!(
        "[assignments.lab9]\ncontract = \"trusted\"\ndeadline = \"{deadline}\"\n\
         junit_points = {{ \"test_lab.test_add\" = 3 }}\n"
    ))
    .await;
    w.f.push("root/lab9-test", |d| {
        std::fs::write(
            d.join("test_lab.py"),
            "import lab\n\
             def test_add(): assert lab.add(2, 3) == 5\n\
             def test_sub(): assert lab.sub(5, 3) == 2\n\
             def test_secret(record_property):\n\
             \x20   record_property('visibility', 'hidden')\n\
             \x20   assert lab.add(-1, 1) == 0\n\
             def test_later(record_property):\n\
             \x20   record_property('visibility', 'after_due_date')\n\
             \x20   record_property('points', 4)\n\
             \x20   assert lab.sub(0, 0) == 0\n",
        )
        .unwrap();
        common::files::write_exec(
            &d.join("test_all"),
            &format!(
                "#!/bin/sh\n\
                 PYTHONPATH=\"$LABGRADER_WORKSPACE\" PYTHONDONTWRITEBYTECODE=1 {python} -m pytest -q \
                 -p no:cacheprovider --junitxml=\"$LABGRADER_RESULTS/junit.xml\" test_lab.py >&2\n\
                 exit 0\n"
            ),
        );
    });
    let project = "course/alice/lab9";
    let sha = w.f.push(project, |d| {
        std::fs::write(
            d.join("lab.py"),
            "def add(a, b): return a + b\ndef sub(a, b): return b - a\n",
        )
        .unwrap();
    });
    let serve = w.serve().await;
    let job = w.post_push(project, labgrader::event::ZERO_SHA, &sha).await;
    let r = w.done(&job).await;
    assert_eq!(
        (r.status, r.grade_total),
        (labgrader::result::Status::Graded, Some(8.0)),
        "add 3 + secret 1 + later 4; sub fails: {r:?}"
    );
    w.deliveries_settled(&job).await;
    wait("the first email", || w.smtp.messages().len() == 1, &w).await;
    let first = w.smtp.messages()[0]["body"]
        .as_str()
        .unwrap()
        .replace("\r\n", "\n");
    assert!(
        first.starts_with("Tests: 1 of 2 passed, 3 of 4 points\n"),
        "{first}"
    );
    assert!(first.contains("PASS  test_lab.test_add"), "{first}");
    assert!(first.contains("FAIL  test_lab.test_sub"), "{first}");
    assert!(
        first.contains("(1 more test is shown after the deadline)"),
        "{first}"
    );
    assert!(first.contains("(1 hidden test: for staff only)"), "{first}");
    assert!(
        !first.contains("test_secret") && !first.contains("test_later"),
        "{first}"
    );
    assert_eq!(w.statuses(&sha).last().map(String::as_str), Some("success"));
    let status_text: Vec<String> = w
        .gitlab
        .requests()
        .iter()
        .filter(|q| q.path.ends_with(&format!("/statuses/{sha}")))
        .map(|q| {
            serde_json::from_slice::<serde_json::Value>(&q.body).unwrap()["description"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(
        status_text.last().map(String::as_str),
        Some("1/2 tests · 8")
    );
    let calls = w.callbacks(&job);
    let last = &calls.last().unwrap().1;
    let names: Vec<&str> = last["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["test_lab.test_add", "test_lab.test_sub"]);
    // Staff see every test in the gradebook.
    let out = Command::new(BIN)
        .args([
            "gradebook",
            "export",
            "--tests",
            "--format",
            "csv",
            "--config",
        ])
        .arg(&w.config)
        .output()
        .unwrap();
    let csv = String::from_utf8(out.stdout).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(
        csv.contains(",test_lab.test_secret,,1,1,passed,hidden"),
        "{csv}"
    );

    // The deadline passes: one release, with the later test, not the hidden one.
    wait("the release email", || w.smtp.messages().len() == 2, &w).await;
    let second = &w.smtp.messages()[1];
    let subject = second["headers"]["subject"].as_str().unwrap().to_string();
    assert!(
        subject.ends_with("(all results, after the deadline)"),
        "{subject}"
    );
    let body = second["body"].as_str().unwrap().replace("\r\n", "\n");
    assert!(body.contains("PASS  test_lab.test_later"), "{body}");
    assert!(!body.contains("test_secret"), "{body}");
    wait(
        "the release callback",
        || w.callbacks(&job).iter().any(|(_, v)| v["released"] == true),
        &w,
    )
    .await;
    // Killed once the release was delivered (an email sent but not yet
    // receipted when the daemon dies is sent again, with the same
    // Message-ID: delivery is at least once; the release itself is queued
    // once).
    w.deliveries_settled(&job).await;
    serve.kill();
    let again = w.serve().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    again.stop().await;
    assert_eq!(
        w.smtp.messages().len(),
        2,
        "released at most once, across a SIGKILL"
    );
    assert_eq!(
        w.callbacks(&job)
            .iter()
            .filter(|(_, v)| v["released"] == true)
            .count(),
        1
    );
}

/// Issue 15 with two more real sources: a C harness that writes JUnit
/// XML itself, and Gradescope's documented `results.json` example (its
/// `stdout_visibility: hidden`, a hidden test, an `after_due_date` one and
/// keys labgrader ignores), each graded through `serve` into the
/// gradebook, the email and the callback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_junit_harness_and_gradescope_results_json_through_serve() {
    let w = World::new(
        "[assignments.lab10]\ncontract = \"trusted\"\n[assignments.lab11]\ncontract = \"trusted\"\n",
    )
    .await;
    w.f.push("root/lab10-test", |d| {
        std::fs::write(
            d.join("harness.c"),
            r#"#include <stdio.h>
int add(int, int);
int main(int argc, char **argv) {
    FILE *f = fopen(argv[1], "w");
    int ok1 = add(2, 3) == 5, ok2 = add(-2, 2) == 0;
    fprintf(f, "<?xml version=\"1.0\"?>\n<testsuite name=\"c\" tests=\"2\">\n");
    fprintf(f, "<testcase classname=\"add\" name=\"positive\">%s</testcase>\n",
            ok1 ? "" : "<failure message=\"add(2, 3) != 5\"/>");
    fprintf(f, "<testcase classname=\"add\" name=\"negative\"><properties>"
               "<property name=\"points\" value=\"2\"/></properties>%s</testcase>\n",
            ok2 ? "" : "<failure message=\"add(-2, 2) != 0 &amp; that is wrong\"/>");
    fprintf(f, "</testsuite>\n");
    return fclose(f) != 0;
}
"#,
        )
        .unwrap();
        common::files::write_exec(
            &d.join("test_all"),
            "#!/bin/sh\n\
             gcc -o ./h harness.c \"$LABGRADER_WORKSPACE/add.c\" >&2 || exit 1\n\
             ./h \"$LABGRADER_RESULTS/junit.xml.tmp\" && mv \"$LABGRADER_RESULTS/junit.xml.tmp\" \"$LABGRADER_RESULTS/junit.xml\"\n\
             echo compiled and ran the C tests\n",
        );
    });
    w.f.push("root/lab11-test", |d| {
        std::fs::write(
            d.join("results.json"),
            r#"{
  "execution_time": 136,
  "output": "Text relevant to the entire submission",
  "stdout_visibility": "hidden",
  "extra_data": {},
  "tests": [
    {"score": 2.0, "max_score": 2.0, "name": "Your name", "number": "1.1",
     "output": "Giant multiline string\nsecond line", "tags": ["tag1", "tag2"],
     "visibility": "visible", "extra_data": {}},
    {"score": 0, "max_score": 3, "name": "secret", "number": 2,
     "visibility": "hidden", "status": "failed", "output": "the secret input was 42"},
    {"score": 1, "name": "later", "visibility": "after_due_date"}
  ],
  "leaderboard": [{"name": "Accuracy", "value": 0.8}]
}
"#,
        )
        .unwrap();
        common::files::write_exec(
            &d.join("test_all"),
            "#!/bin/sh\necho stdout the student must not see\n\
             cp results.json \"$LABGRADER_RESULTS/results.json\"\n",
        );
    });
    let c_project = "course/bob/lab10";
    let c_sha = w.f.push(c_project, |d| {
        // Right for positive numbers only.
        std::fs::write(
            d.join("add.c"),
            "int add(int a, int b) { return a > 0 ? a + b : 1; }\n",
        )
        .unwrap();
    });
    let g_project = "course/carol/lab11";
    let g_sha = w.f.push(g_project, |d| {
        std::fs::write(d.join("README"), "hi\n").unwrap()
    });
    let serve = w.serve().await;
    let [(c_job, c), (g_job, g)] = w.grade([(c_project, &c_sha), (g_project, &g_sha)]).await;
    wait("two emails", || w.smtp.messages().len() == 2, &w).await;
    serve.stop().await;

    assert_eq!(
        (c.status, c.grade_total),
        (labgrader::result::Status::Graded, Some(1.0)),
        "{c:?}"
    );
    assert_eq!(
        (g.status, g.grade_total),
        (labgrader::result::Status::Graded, Some(3.0))
    );
    let mail = |sha: &str| -> String {
        w.smtp
            .messages()
            .iter()
            .find(|m| {
                m["headers"]["subject"]
                    .as_str()
                    .unwrap_or("")
                    .contains(&sha[..8])
            })
            .map(|m| m["body"].as_str().unwrap().replace("\r\n", "\n"))
            .unwrap()
    };
    let cm = mail(&c_sha);
    assert!(
        cm.starts_with("Tests: 1 of 2 passed, 1 of 3 points\n"),
        "{cm}"
    );
    assert!(
        cm.contains("FAIL  add.negative  0 / 2  add(-2, 2) != 0 & that is wrong"),
        "{cm}"
    );
    let gm = mail(&g_sha);
    assert!(
        gm.contains("PASS  Your name  2 / 2  Giant multiline string"),
        "{gm}"
    );
    assert!(
        gm.contains("(1 more test is shown after the deadline)"),
        "{gm}"
    );
    assert!(
        gm.contains("Text relevant to the entire submission"),
        "{gm}"
    );
    // Neither the hidden test's name nor its output (a commit SHA may
    // hold "42", so the whole output is looked for).
    assert!(
        !gm.contains("secret") && !gm.contains("the secret input was 42"),
        "{gm}"
    );
    assert!(
        !gm.contains("must not see"),
        "stdout_visibility hidden: {gm}"
    );
    let calls = w.callbacks(&g_job);
    let cb = &calls.last().unwrap().1;
    assert_eq!(cb["tests"].as_array().unwrap().len(), 1, "{cb}");
    assert!(!cb.to_string().contains("must not see"), "{cb}");
    let rows = w.export();
    assert_eq!(row(&rows, &c_job).unwrap()["grade_total"], 1.0);
    assert_eq!(row(&rows, &g_job).unwrap()["grade_total"], 3.0);
    let out = Command::new(BIN)
        .args([
            "gradebook",
            "export",
            "--tests",
            "--format",
            "json",
            "--config",
        ])
        .arg(&w.config)
        .output()
        .unwrap();
    let tests: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tests.len(), 5, "{tests:#?}");
    assert!(
        tests
            .iter()
            .any(|t| t["name"] == "secret" && t["output"] == "the secret input was 42")
    );
}

/// POST `body` to the running hook as `event` with a fixture's headers;
/// the status and the answer's text, whatever they are.
async fn post_any(
    w: &World,
    event: &str,
    fixture: &str,
    body: &serde_json::Value,
) -> (u16, String) {
    let key = format!("e2e-{}", labgrader::spool::new_job_id());
    post_hook(&w.listen, event, fixture_headers(fixture), &key, body).await
}

/// POST `body` to the hook at `listen` with `headers` (`X-Gitlab-Token`
/// replaced by ours, `Idempotency-Key` by `key`): the status and the
/// answer's text.
async fn post_hook(
    listen: &impl std::fmt::Display,
    event: &str,
    headers: Vec<(String, String)>,
    key: &str,
    body: &serde_json::Value,
) -> (u16, String) {
    let headers = headers_for_post(headers, event, HOOK_TOKEN, key);
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let url = format!("http://{listen}/hooks/gitlab");
    let resp = HttpClient::new()
        .request(
            Method::POST,
            &url,
            &h,
            Some(serde_json::to_vec(body).unwrap()),
            Duration::from_secs(30),
        )
        .await
        .expect("the hook answers");
    (
        resp.status.as_u16(),
        String::from_utf8_lossy(&resp.body).into_owned(),
    )
}

/// A `serve` whose course owns the `course` namespace, and a push to
/// `project` (its `answer.txt` holding `answer`) sent before the project's
/// test repository exists: the push is held. Returns the world, the
/// daemon, the commit, the job and its `held/` file.
async fn held_push(
    project: &str,
    answer: &str,
) -> (World, Serve, String, String, std::path::PathBuf) {
    let w = World::new("").await;
    w.set_config(
        "api_timeout = \"10s\"",
        "api_timeout = \"10s\"\nstudent_namespaces = [\"course\"]",
    );
    let sha = w.f.push(project, |d| {
        std::fs::write(d.join("answer.txt"), answer).unwrap()
    });
    let serve = w.serve().await;
    let job = w.post_push(project, labgrader::event::ZERO_SHA, &sha).await;
    let held = w.f.spool_dir.join("held").join(format!("{job}.json"));
    assert!(held.exists(), "{:?}", w.f.listing());
    (w, serve, sha, job, held)
}

/// A push from a course namespace before its test repository exists is
/// held (it survives a SIGKILL of `serve`), shown by `labgrader queue`,
/// and graded as soon as GitLab's `project_create` system hook says the
/// test repository exists, created with its tests (an import, a fork, a
/// template: its cached "missing" answer dropped, GitLab asked again); a push
/// from a namespace the course does not own is still ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_before_its_test_repo_is_held_then_graded_on_project_create() {
    let (w, serve, sha, job, held) = held_push("course/alice/lab9", "4").await;

    // Not the course's: answered "ignored", nothing stored.
    let other = "elsewhere/bob/lab9";
    let other_sha =
        w.f.push(other, |d| std::fs::write(d.join("x"), "1").unwrap());
    let mut body = fixture_json("push.json");
    body["after"] = other_sha.clone().into();
    body["checkout_sha"] = other_sha.into();
    body["ref"] = "refs/heads/main".into();
    body["project"]["path_with_namespace"] = other.into();
    body["project"]["namespace"] = "elsewhere/bob".into();
    body["project"]["name"] = "lab9".into();
    let (status, text) = post_any(&w, "Push Hook", "push", &body).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.starts_with("ignored:") && text.contains("no test repository root/lab9-test"),
        "{text}"
    );

    // Held survives SIGKILL; `queue` shows it.
    serve.kill();
    assert!(held.exists());
    let out = Command::new(BIN)
        .args(["queue", "--config"])
        .arg(&w.config)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&job) && text.contains("waits for root/lab9-test"),
        "{text}"
    );
    let serve = w.serve().await;

    // The test repository is created; GitLab's system hook says so.
    w.f.tests_repo("lab9", &grading_test_all(0, None));
    let mut created = fixture_json("system_project_create.json");
    created["path_with_namespace"] = "root/lab9-test".into();
    created["path"] = "lab9-test".into();
    created["name"] = "lab9-test".into();
    let (status, text) = post_any(&w, "System Hook", "system_project_create", &created).await;
    assert_eq!(status, 200, "{text}");
    let r = w.done(&job).await;
    assert_eq!(r.status, labgrader::result::Status::Graded, "{r:?}");
    assert_eq!(r.grade_total, Some(40.0));
    assert_eq!(r.student_sha, sha);
    assert!(!held.exists());
    serve.stop().await;
}

/// GitLab sends `project_create` when a test repository is created, most
/// often empty (`test_all` is pushed a minute later). The held push stays
/// held then, instead of being graded against no tests (a course or
/// grader fault); the push of the tests (GitLab's push hook for the test
/// repository) releases it, and it is graded with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_push_stays_held_for_an_empty_test_repo_then_is_graded_on_its_push() {
    let (w, serve, sha, job, held) = held_push("course/carol/lab11", "3").await;

    // Staff create the test repository, empty; GitLab's system hook says so.
    w.f.repo("root/lab11-test");
    let mut created = fixture_json("system_project_create.json");
    created["path_with_namespace"] = "root/lab11-test".into();
    created["path"] = "lab11-test".into();
    created["name"] = "lab11-test".into();
    let (status, text) = post_any(&w, "System Hook", "system_project_create", &created).await;
    assert_eq!(status, 200, "{text}");
    // Released or not is decided before the answer: still held.
    assert!(held.exists(), "{:?}\n{}", w.f.listing(), w.log_text());
    assert!(!w.f.done_dir(&job).exists());

    // The TA pushes test_all; GitLab's push hook for the test repository.
    let tests_sha = w.f.tests_repo("lab11", &grading_test_all(0, None));
    let mut body = fixture_json("push.json");
    body["before"] = labgrader::event::ZERO_SHA.into();
    body["after"] = tests_sha.clone().into();
    body["checkout_sha"] = tests_sha.clone().into();
    body["ref"] = "refs/heads/main".into();
    body["project"]["path_with_namespace"] = "root/lab11-test".into();
    body["project"]["namespace"] = "root".into();
    body["project"]["name"] = "lab11-test".into();
    let (status, text) = post_any(&w, "Push Hook", "push", &body).await;
    assert_eq!(status, 200, "{text}");
    let r = w.done(&job).await;
    assert_eq!(r.status, labgrader::result::Status::Graded, "{r:?}");
    assert_eq!(r.grade_total, Some(30.0));
    assert_eq!(r.student_sha, sha);
    assert_eq!(r.tests_sha.as_deref(), Some(tests_sha.as_str()));
    assert!(!held.exists());
    serve.stop().await;
}
