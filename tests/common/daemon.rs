//! Starting and stopping the daemons the tests drive: the real
//! `labgrader` binary as a child process (`hook`, `grader`, `serve`: its
//! log appended to a file, health polled on `/healthz`, SIGTERM and a
//! clean exit), and in-process the grader loop ([`Daemon`]) and the hook
//! server on 127.0.0.1:0 ([`Server`], with the HTTP client that posts to
//! it). It never builds configs or repositories (see `world`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;
use labgrader::config::Config;
use labgrader::event::Event;
use labgrader::httpc::{HttpClient, Response};
use labgrader::spool::{Spool, State};
use tokio_util::sync::CancellationToken;

pub const BIN: &str = env!("CARGO_BIN_EXE_labgrader");
const STOP_WAIT: Duration = Duration::from_secs(90);

/// `labgrader SUBCOMMAND --config CFG`, ready to spawn: `LABGRADER_LOG=info`,
/// the secrets' environment variables removed (the config's files count),
/// no stdin, stdout and stderr appended to `log`.
pub fn binary(subcommand: &str, cfg: &Path, log: &Path) -> Command {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args([subcommand, "--config"])
        .arg(cfg)
        .env("LABGRADER_LOG", "info")
        .env_remove("LABGRADER_WEBHOOK_TOKEN")
        .env_remove("LABGRADER_GITLAB_TOKEN")
        .env_remove("LABGRADER_CALLBACK_SECRET")
        .env_remove("LABGRADER_CONFIG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    cmd
}

/// `labgrader grader --config CFG`, stdout and stderr appended to `log`.
pub fn start(cfg: &Path, log: &Path) -> Child {
    binary("grader", cfg, log)
        .spawn()
        .expect("the labgrader binary starts")
}

/// SIGTERM, then wait for a clean exit (status 0).
pub fn stop(mut child: Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "daemon exited with {status}");
            return;
        }
        assert!(
            start.elapsed() < STOP_WAIT,
            "daemon did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Poll `BASE/healthz` (`BASE` = `http://host:port`) until it answers 200;
/// panics, with the log, if `child` exits first or `within` passes.
pub async fn wait_healthy(base: &str, child: &mut Child, within: Duration, log: &Path) {
    let url = format!("{base}/healthz");
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    let http = HttpClient::new();
    let start = Instant::now();
    loop {
        let r = http
            .request(Method::GET, &url, &[], None, Duration::from_secs(5))
            .await;
        if r.is_ok_and(|r| r.status == 200) {
            return;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("labgrader exited with {st}: {}", log_text());
        }
        assert!(
            start.elapsed() < within,
            "labgrader never answered /healthz: {}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The grader loop running in-process until [`Daemon::stop`].
pub struct Daemon {
    pub token: CancellationToken,
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Daemon {
    /// Run the grader on `spool` with `cfg`.
    pub fn grader(cfg: Arc<Config>, spool: Arc<Spool>) -> Daemon {
        let token = CancellationToken::new();
        let handle = tokio::spawn(labgrader::grader::run(cfg, spool, token.clone()));
        Daemon { token, handle }
    }

    pub async fn stop(self) {
        self.token.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

/// The hook server running in-process on 127.0.0.1:0.
pub struct Server {
    pub addr: std::net::SocketAddr,
    pub spool: Arc<Spool>,
    pub stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    http: HttpClient,
}

impl Server {
    pub async fn start(cfg: Config) -> Server {
        let spool = Arc::new(Spool::open(&cfg.spool.dir).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(labgrader::hook::serve(
            Arc::new(cfg),
            spool.clone(),
            listener,
            stop.clone(),
        ));
        let server = Server {
            addr,
            spool,
            stop,
            task,
            http: HttpClient::new(),
        };
        // serve() prepares the spool before it accepts; wait for that.
        let r = server.get("/healthz").await;
        assert_eq!(r.status.as_u16(), 200);
        server
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Response {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.http
            .request(
                method,
                &self.url(path),
                &h,
                Some(body),
                Duration::from_secs(20),
            )
            .await
            .unwrap()
    }

    pub async fn post(&self, headers: &[(String, String)], body: Vec<u8>) -> Response {
        self.request(Method::POST, "/hooks/gitlab", headers, body)
            .await
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path, &[], vec![]).await
    }

    pub fn incoming(&self) -> Vec<String> {
        self.spool.list(State::Incoming).unwrap()
    }

    pub fn event(&self, job: &str) -> Event {
        Event::from_bytes(
            &self
                .spool
                .read(State::Incoming, &format!("{job}.json"))
                .unwrap(),
        )
        .unwrap()
    }
}

pub fn text(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).trim().to_string()
}

/// The job id of a 202 answer.
pub fn job_of(r: &Response) -> String {
    assert_eq!(r.status.as_u16(), 202, "{}", text(r));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["job_id"].as_str().unwrap().to_string()
}
