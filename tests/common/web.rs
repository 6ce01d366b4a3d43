//! The web view's test world: a real `labgrader serve` with `[web]` on
//! (its secret and staff token in files), a recording callback receiver
//! (the result links arrive there), the assignment `lab1` graded under the
//! trusted contract by a harness whose results.json has a visible and a
//! hidden test, and students whose code prints hostile text (`<script>`,
//! invalid UTF-8). A push can be held in `active/` (so the next one waits)
//! until released. Shared by tests/web.rs and tests/web_browser.rs.

use std::path::PathBuf;
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use labgrader::httpc::{HttpClient, Response};

use super::daemon;
use super::files::{write_exec, write_file};
use super::gitlab::{push_body, push_headers};
use super::host::free_port;
use super::http::{Seen, TestServer};
use super::wait::wait_for;
use super::world::Fixture;

pub const STAFF_TOKEN: &str = "staff-token-for-the-tests-7c1e";
pub const WEB_SECRET: &str = "web-secret-for-the-tests-0123456789";
/// The visible test's name, and the hidden one's (never shown to students).
pub const VISIBLE_TEST: &str = "adds-numbers";
pub const HIDDEN_TEST: &str = "SECRET-edge-case-4242";
/// What every student's code prints (escaped on every page).
pub const HOSTILE: &str = "<script>alert('pwned')</script><img src=x onerror=alert(1)>";

/// The harness: waits while `hold` exists, runs the student's
/// `student.sh`, grades `answer.txt` (score = the number in it), writes
/// results.json with a visible and a hidden test.
fn harness(hold: &std::path::Path) -> String {
    format!(
        r#"#!/bin/sh
while [ -e "{hold}" ]; do sleep 0.1; done
n=$(cat "$LABGRADER_WORKSPACE/answer.txt" 2>/dev/null || echo 0)
run-as-student ./student.sh
cat > "$LABGRADER_RESULTS/results.json" <<JSON
{{"score": $n, "output": "Overall: keep going",
 "tests": [
  {{"name": "{VISIBLE_TEST}", "score": $n, "max_score": 10, "output": "expected 10, got $n\nsecond line"}},
  {{"name": "{HIDDEN_TEST}", "score": 0, "max_score": 1, "visibility": "hidden", "output": "secret input 4242"}}
 ]}}
JSON
"#,
        hold = hold.display()
    )
}

/// A running `labgrader serve` with the web view on.
pub struct WebWorld {
    pub f: Fixture,
    pub callback: TestServer,
    /// `http://127.0.0.1:PORT` (also `[web] public_url`).
    pub base: String,
    pub config: PathBuf,
    pub log: PathBuf,
    /// While this file exists, `test_all` waits.
    pub hold: PathBuf,
    child: Option<Child>,
    http: HttpClient,
}

impl WebWorld {
    /// Write the config (`extra` appended) and the tests repository, start
    /// `serve` and wait until it answers.
    pub async fn start(extra: &str) -> WebWorld {
        let f = Fixture::new();
        let dir = f.tmp.path().to_path_buf();
        let hold = dir.join("hold");
        f.tests_repo("lab1", &harness(&hold));
        let callback = TestServer::start(Arc::new(|_: &Seen, _| (200, vec![], "ok".into()))).await;
        let secret = |name: &str, v: &str| {
            let p = dir.join(name);
            std::fs::write(&p, v).unwrap();
            p
        };
        let listen = format!("127.0.0.1:{}", free_port());
        let base = format!("http://{listen}");
        let text = format!(
            r#"[server]
listen = "{listen}"
webhook_token_file = "{hook}"

[spool]
dir = "{spool}"

[gitlab]
clone_url = "{clone}"
commit_status = false

[grader]
runner = "none"
workers = 1
rescan_interval = "1s"
shutdown_grace = "5s"

[email]
url = ""

[callback]
url = "{cb}"

[deliver]
backoff_min = "50ms"
backoff_max = "500ms"

[web]
public_url = "{base}"
secret_file = "{websecret}"
staff_token_file = "{staff}"

[assignments.lab1]
contract = "trusted"
leaderboard = "grade_total"
leaderboard_order = "asc"
{extra}
"#,
            hook = secret("webhook-token", super::gitlab::TOKEN).display(),
            spool = f.spool_dir.display(),
            clone = super::repos::clone_url_template(&f.repos),
            cb = callback.url("/grades"),
            websecret = secret("web-secret", WEB_SECRET).display(),
            staff = secret("staff-token", STAFF_TOKEN).display(),
        );
        let config = dir.join("labgrader.toml");
        std::fs::write(&config, text).unwrap();
        let log = dir.join("serve.log");
        let mut child = daemon::binary("serve", &config, &log)
            .env_remove("LABGRADER_WEB_SECRET")
            .env_remove("LABGRADER_STAFF_TOKEN")
            .spawn()
            .expect("the labgrader binary starts");
        daemon::wait_healthy(&base, &mut child, Duration::from_secs(120), &log).await;
        WebWorld {
            f,
            callback,
            base,
            config,
            log,
            hold,
            child: Some(child),
            http: HttpClient::new(),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Commit `answer` (and `labgrader.json` when given) to
    /// `course/<student>/lab1`, post the push, return the job id.
    pub async fn push(&self, student: &str, answer: u32, manifest: Option<&str>) -> String {
        let path = format!("course/{student}/lab1");
        let sha = self.f.push(&path, |w| {
            write_file(&w.join("answer.txt"), &format!("{answer}\n"));
            write_exec(
                &w.join("student.sh"),
                &format!(
                    "#!/bin/sh\nprintf '%s\\n' \"{HOSTILE}\"\nprintf 'bad bytes: \\377\\376 end\\n'\n"
                ),
            );
            if let Some(m) = manifest {
                write_file(&w.join("labgrader.json"), m);
            }
        });
        let key = format!("web-{}", labgrader::spool::new_job_id());
        let headers = push_headers("Push Hook", &key);
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let body = push_body(&path, "refs/heads/main", labgrader::event::ZERO_SHA, &sha);
        let r = self
            .http
            .request(
                Method::POST,
                &format!("{}/hooks/gitlab", self.base),
                &h,
                Some(body),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&r.body).into_owned();
        assert_eq!(r.status, 202, "{text}\n{}", self.log_text());
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["job_id"].as_str().unwrap().to_string()
    }

    /// The callback body of `job` whose status is `status` (`queued`,
    /// `running`) or, with `None`, its result; waits for it.
    pub async fn callback_of(&self, job: &str, status: Option<&str>) -> serde_json::Value {
        let find = || {
            self.callback.requests().into_iter().find_map(|c| {
                let v: serde_json::Value = serde_json::from_slice(&c.body).ok()?;
                let st = v["status"].as_str()?.to_string();
                let wanted = match status {
                    Some(s) => st == s,
                    None => !matches!(st.as_str(), "queued" | "running"),
                };
                (v["job_id"] == job && wanted).then_some(v)
            })
        };
        let mut found = None;
        wait_for(&format!("the callback of {job} ({status:?})"), || {
            found = find();
            found.is_some()
        })
        .await;
        found.unwrap()
    }

    /// The result link of `job` from its callback (`status` as above).
    pub async fn result_url(&self, job: &str, status: Option<&str>) -> String {
        let v = self.callback_of(job, status).await;
        v["result_url"]
            .as_str()
            .unwrap_or_else(|| panic!("no result_url in {v}"))
            .to_string()
    }

    /// GET `url` (absolute, or a path on this server) with `headers`.
    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Response {
        let url = if url.starts_with("http") {
            url.to_string()
        } else {
            format!("{}{url}", self.base)
        };
        self.http
            .request(Method::GET, &url, headers, None, Duration::from_secs(30))
            .await
            .unwrap()
    }

    /// GET a staff page with the staff token.
    pub async fn staff(&self, path: &str) -> Response {
        let auth = format!("Bearer {STAFF_TOKEN}");
        self.get(path, &[("Authorization", &auth)]).await
    }

    /// Wait until `job` is in `active/`.
    pub async fn wait_active(&self, job: &str) {
        let p = self.f.spool_dir.join("active").join(format!("{job}.json"));
        wait_for(&format!("{job} running"), || p.exists()).await;
    }

    /// SIGTERM and a clean exit.
    pub fn stop(mut self) {
        let _ = std::fs::remove_file(&self.hold);
        if let Some(c) = self.child.take() {
            daemon::stop(c);
        }
    }
}

impl Drop for WebWorld {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.hold);
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The body as text.
pub fn text(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// A header's value, or "".
pub fn header<'a>(r: &'a Response, name: &str) -> &'a str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}
