//! Shared helpers of the delivery tests (`tests/deliver_*.rs`): a config in
//! a temp dir, events and results shaped like the grader's, a small real
//! HTTP server that records requests and answers from a script, a real SMTP
//! server (aiosmtpd, `smtp_sink.py`), and generous polling deadlines (no
//! timed assertions).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use labgrader::config::Config;
use labgrader::deliver::{self, Record};
use labgrader::event::{Event, EventKind, HookSource, Project, Pusher};
use labgrader::result::{JobResult, Status};
use labgrader::sandbox::{Captured, Limits};
use labgrader::spool::{Spool, State};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that should happen in well under a
/// second: generous, so a loaded CI machine never fails a correct build.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Poll `cond` until it holds or [`DEADLINE`] passes (then panic with `what`).
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        if tokio::time::Instant::now() > end {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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
        not_before: None,
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

/// The record `name` in `state`, parsed.
pub fn read_record(spool: &Spool, state: State, name: &str) -> Option<Record> {
    let b = spool.read(state, name).ok()?;
    Some(Record::from_bytes(&b).expect("record parses"))
}

pub fn receipt_exists(spool: &Spool, name: &str) -> bool {
    spool.root().join(deliver::SENT_DIR).join(name).exists()
}

/// One request the test server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The answer to one request: status, headers, body.
pub type Answer = (u16, Vec<(&'static str, String)>, String);
pub type Responder = Arc<dyn Fn(&Seen, usize) -> Answer + Send + Sync>;

/// A real HTTP server on loopback that records every request and answers
/// with `responder(request, index)`.
pub struct TestServer {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Most requests handled at the same time.
    pub max_concurrent: Arc<std::sync::atomic::AtomicUsize>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl TestServer {
    pub async fn start(responder: Responder) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::on(listener, responder)
    }

    /// Like [`TestServer::start`], each answer held back by `delay`.
    pub async fn start_slow(responder: Responder, delay: Duration) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, responder, delay)
    }

    /// Serve on `listener` (e.g. bound again to a port a test chose earlier).
    pub fn on(listener: TcpListener, responder: Responder) -> TestServer {
        Self::serve(listener, responder, Duration::ZERO)
    }

    fn serve(listener: TcpListener, responder: Responder, delay: Duration) -> TestServer {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let max_concurrent = Arc::new(AtomicUsize::new(0));
        let now_concurrent = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (s, st) = (seen.clone(), stop.clone());
        let (maxc, nowc) = (max_concurrent.clone(), now_concurrent.clone());
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = st.cancelled() => return,
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                };
                let (seen, responder) = (s.clone(), responder.clone());
                let (maxc, nowc) = (maxc.clone(), nowc.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (seen, responder) = (seen.clone(), responder.clone());
                        let (maxc, nowc) = (maxc.clone(), nowc.clone());
                        async move {
                            let n = nowc.fetch_add(1, Ordering::SeqCst) + 1;
                            maxc.fetch_max(n, Ordering::SeqCst);
                            tokio::time::sleep(delay).await;
                            nowc.fetch_sub(1, Ordering::SeqCst);
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes().to_vec();
                            let req = Seen {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_string(),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.to_string(), v.to_str().unwrap_or("").to_string())
                                    })
                                    .collect(),
                                body,
                            };
                            let index = {
                                let mut g = seen.lock().unwrap();
                                g.push(req.clone());
                                g.len() - 1
                            };
                            let (status, headers, body) = responder(&req, index);
                            let mut resp = hyper::Response::builder().status(status);
                            for (k, v) in headers {
                                resp = resp.header(k, v);
                            }
                            Ok::<_, hyper::Error>(resp.body(Full::new(Bytes::from(body))).unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        TestServer {
            addr,
            seen,
            max_concurrent,
            stop,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// A loopback port that was free a moment ago (for servers started later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real SMTP server: aiosmtpd running `tests/support/smtp_sink.py`.
pub struct SmtpSink {
    pub port: u16,
    pub dir: PathBuf,
    child: tokio::process::Child,
}

impl SmtpSink {
    /// Start on `port`, writing messages into `dir`; `auth` = `user:password`.
    pub async fn start(port: u16, dir: &Path, auth: Option<&str>) -> SmtpSink {
        use tokio::io::AsyncBufReadExt;
        std::fs::create_dir_all(dir).unwrap();
        let python =
            std::env::var("LABGRADER_TEST_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_sink.py");
        let mut cmd = tokio::process::Command::new(&python);
        cmd.arg(&script).arg(port.to_string()).arg(dir);
        if let Some(a) = auth {
            cmd.arg(a);
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {python} {}: {e}; scripts/setup/smtp.sh installs python3-aiosmtpd",
                    script.display()
                )
            });
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("aiosmtpd did not start in time")
            .unwrap();
        assert_eq!(
            line.as_deref(),
            Some("ready"),
            "aiosmtpd failed to start (is python3-aiosmtpd installed? run scripts/setup/smtp.sh)"
        );
        SmtpSink {
            port,
            dir: dir.to_path_buf(),
            child,
        }
    }

    /// Parsed messages received so far, in order.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        messages_in(&self.dir)
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

pub fn messages_in(dir: &Path) -> Vec<serde_json::Value> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    names.retain(|p| p.extension().is_some_and(|e| e == "json"));
    names.sort();
    names
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

/// Raw bytes of every `.eml` received in `dir`.
pub fn raw_messages_in(dir: &Path) -> Vec<Vec<u8>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    names.retain(|p| p.extension().is_some_and(|e| e == "eml"));
    names.sort();
    names.iter().map(|p| std::fs::read(p).unwrap()).collect()
}
