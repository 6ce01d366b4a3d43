//! The hook server: GitLab calls it, it stores each gradable push durably
//! in the spool and answers at once.
//!
//! Owns the HTTP side (`POST /hooks/gitlab`, `GET /healthz`,
//! `GET /metrics`), the webhook token check, the body limit, eligibility
//! (tests namespace, existence of the test repository) and the intake of
//! each ref update as one event file in `incoming/`. It never grades, never
//! moves a job after `incoming/`, and never talks to Docker.
//!
//! Requests are untrusted: the token is compared in constant time, bodies
//! over `server.max_body` are refused before being read whole, headers and
//! bodies have read timeouts, payloads are parsed by [`parse`] into checked
//! values, and at most [`MAX_CONNECTIONS`] connections are served at once.
//! An answer is 2xx exactly when the push is stored (or is not to be
//! graded): GitLab never re-delivers by itself, so a 5xx means staff must
//! re-send, and duplicates of re-sends are absorbed by [`dedup`].

pub mod dedup;
pub mod parse;
pub mod sync;
pub mod testrepos;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Secret};
use crate::event::{EVENT_SCHEMA, Event, HookSource};
use crate::metrics;
use crate::reserve::Reserve;
use crate::spool::{Spool, SpoolError, State, new_job_id};
use dedup::{KeyLocks, Markers, job_exists, update_key};
use parse::{Delivery, Ignored, RefUpdate};
use sync::GroupCommit;
use testrepos::TestRepos;

/// Connections served at once (with `max_body` this bounds the memory held
/// by bodies in flight); more wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 256;
/// Time allowed to send the request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed to send the body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// In-flight connections get this long to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Refs of one delivery stored concurrently.
const REFS_IN_FLIGHT: usize = 64;
/// Longest `Idempotency-Key` accepted (GitLab sends a UUID).
const MAX_KEY: usize = 256;

pub const HOOK_PATH: &str = "/hooks/gitlab";

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot prepare the spool at {path}: {source}")]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("cannot write dedup marker in {path}: {source}")]
    Marker {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Sync(String),
    #[error("intake task failed: {0}")]
    Task(String),
    /// Under `[spool] min_free`: no new job is stored.
    #[error(transparent)]
    LowSpace(#[from] crate::reserve::LowSpace),
}

/// Serve GitLab webhooks on `listener` until `shutdown` fires.
pub async fn serve(
    cfg: Arc<Config>,
    spool: Arc<Spool>,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let hook = Arc::new(Hook::start(cfg, spool)?);
    let addr = listener.local_addr()?;
    tracing::info!(%addr, path = HOOK_PATH, test_repos = hook.repos.method(), "hook server listening");
    tokio::spawn(prune_markers(hook.clone(), shutdown.clone()));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let hook = hook.clone();
        let stop = shutdown.clone();
        conns.spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req| {
                let hook = hook.clone();
                async move { Ok::<_, Infallible>(hook.route(req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
        while conns.try_join_next().is_some() {}
    }
    tracing::info!("hook server stopping; finishing requests in flight");
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::warn!("connections still open after the shutdown grace; closing them");
    }
    Ok(())
}

/// Shared state of the server.
#[derive(Debug)]
struct Hook {
    cfg: Arc<Config>,
    spool: Arc<Spool>,
    token: Option<Secret>,
    markers: Markers,
    locks: KeyLocks,
    commit: GroupCommit,
    repos: TestRepos,
    /// `[spool] min_free`: no new job under it.
    reserve: Reserve,
}

/// One answer: status and body.
struct Answer {
    status: StatusCode,
    body: Bytes,
    json: bool,
}

impl Answer {
    fn text(status: StatusCode, msg: impl Into<String>) -> Answer {
        let mut s: String = msg.into();
        s.push('\n');
        Answer {
            status,
            body: Bytes::from(s),
            json: false,
        }
    }
}

/// What happened to one ref update.
enum Outcome {
    Stored { job: String, duplicate: bool },
    Ignored(Ignored),
}

/// At start and then hourly, drop dedup markers past `[spool] dedup_window`.
async fn prune_markers(hook: Arc<Hook>, shutdown: CancellationToken) {
    let window = hook.cfg.spool.dedup_window.get();
    loop {
        let h = hook.clone();
        let pruned =
            tokio::task::spawn_blocking(move || h.markers.prune(h.spool.root(), window)).await;
        match pruned {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                tracing::info!(removed = n, ?window, "pruned dedup markers past the window")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot prune spool/keys/"),
            Err(e) => tracing::warn!(error = %e, "marker pruning task failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(crate::spool::HOUSEKEEPING_EVERY) => {}
        }
    }
}

impl Hook {
    /// Prepare the spool for intake: sweep tmp files of dead writers,
    /// make sure every waiting event has its dedup markers, and make what
    /// is on disk durable.
    fn start(cfg: Arc<Config>, spool: Arc<Spool>) -> Result<Hook, HookError> {
        let prep = |source| HookError::Prepare {
            path: spool.root().to_path_buf(),
            source,
        };
        let swept = spool.sweep_dead_tmp()?;
        if swept > 0 {
            tracing::info!(swept, "removed tmp/ files of writers that died");
        }
        let markers = Markers::open(spool.root()).map_err(prep)?;
        let rebuilt = rebuild_markers(&spool, &markers).map_err(prep)?;
        if rebuilt > 0 {
            tracing::info!(rebuilt, "restored dedup markers of waiting events");
        }
        // What a previous life left visible but maybe not durable (it was
        // killed before its fsyncs) is made durable before anyone is told
        // "duplicate" about it.
        for d in [spool.dir(State::Incoming), markers.dir().to_path_buf()] {
            crate::spool::fsync_dir(&d).map_err(prep)?;
        }
        let commit =
            GroupCommit::start(spool.clone(), vec![markers.dir().to_path_buf()]).map_err(prep)?;
        let token = cfg.secrets.webhook_token.clone();
        if token.is_none() {
            tracing::warn!(
                "NO WEBHOOK TOKEN CONFIGURED: anyone who can reach this server can queue \
                 grading jobs. Set server.webhook_token_file or LABGRADER_WEBHOOK_TOKEN and \
                 the same secret token in GitLab's hook settings."
            );
        }
        let repos = TestRepos::new(&cfg);
        let reserve = Reserve::new(spool.root(), cfg.spool.min_free.bytes());
        Ok(Hook {
            cfg,
            reserve,
            spool,
            token,
            markers,
            locks: KeyLocks::default(),
            commit,
            repos,
        })
    }

    async fn route(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let (answer, allow) = match (path.as_str(), &method) {
            (HOOK_PATH, &Method::POST) => (self.gitlab(req).await, None),
            (HOOK_PATH, _) => (
                Answer::text(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
                Some("POST"),
            ),
            ("/healthz", &Method::GET | &Method::HEAD) => {
                (Answer::text(StatusCode::OK, "ok"), None)
            }
            ("/metrics", &Method::GET) => (
                Answer {
                    status: StatusCode::OK,
                    body: Bytes::from(self.render_metrics()),
                    json: false,
                },
                None,
            ),
            ("/healthz" | "/metrics", _) => (
                Answer::text(StatusCode::METHOD_NOT_ALLOWED, "use GET"),
                Some("GET"),
            ),
            _ => (
                Answer::text(
                    StatusCode::NOT_FOUND,
                    format!("not found; GitLab hooks go to {HOOK_PATH}"),
                ),
                None,
            ),
        };
        metrics::inc(
            "labgrader_hook_requests_total",
            "HTTP requests answered by the hook server, by status.",
            &[("status", answer.status.as_str())],
        );
        if path == HOOK_PATH {
            metrics::observe(
                "labgrader_hook_request_seconds",
                "Time to answer a GitLab delivery.",
                &[],
                started.elapsed(),
            );
        }
        let mut resp = Response::new(Full::new(answer.body));
        *resp.status_mut() = answer.status;
        let ctype = if answer.json {
            "application/json"
        } else if path == "/metrics" && answer.status == StatusCode::OK {
            "text/plain; version=0.0.4; charset=utf-8"
        } else {
            "text/plain; charset=utf-8"
        };
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
        if let Some(allow) = allow {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        resp
    }

    fn render_metrics(&self) -> String {
        let gauges: Vec<metrics::Gauge<'_>> = State::ALL
            .iter()
            .filter(|s| **s != State::Tmp)
            .map(|s| {
                (
                    "labgrader_spool_depth",
                    "Entries in each spool state.",
                    vec![("state", s.dir_name().to_string())],
                    self.spool.count(*s) as f64,
                )
            })
            .collect();
        let mut gauges = gauges;
        if let Ok(free) = self.reserve.free() {
            gauges.push((
                "labgrader_spool_free_bytes",
                "Bytes free on the spool's file system (new jobs are refused under [spool] min_free).",
                Vec::new(),
                free as f64,
            ));
        }
        metrics::render(&gauges)
    }

    fn token_ok(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.token else {
            return true;
        };
        let given = headers
            .get("x-gitlab-token")
            .map(|v| v.as_bytes())
            .unwrap_or(b"");
        given.ct_eq(expected.expose().as_bytes()).into()
    }

    async fn gitlab(self: &Arc<Self>, req: Request<Incoming>) -> Answer {
        if !self.token_ok(req.headers()) {
            return Answer::text(
                StatusCode::UNAUTHORIZED,
                "invalid or missing X-Gitlab-Token; set the hook's secret token to server.webhook_token",
            );
        }
        let max = self.cfg.server.max_body.bytes();
        let too_big = || {
            Answer::text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body over {max} bytes (server.max_body)"),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return too_big();
        }
        let event_header = match req.headers().get("x-gitlab-event").map(|v| v.to_str()) {
            None => {
                return Answer::text(
                    StatusCode::BAD_REQUEST,
                    parse::ParseError::MissingEvent.to_string(),
                );
            }
            Some(Err(_)) => {
                return Answer::text(StatusCode::BAD_REQUEST, "X-Gitlab-Event header is not text");
            }
            Some(Ok(v)) => v.trim().to_string(),
        };
        let delivery = match req.headers().get("idempotency-key").map(|v| v.to_str()) {
            None => None,
            Some(Ok(v)) if !v.trim().is_empty() && v.len() <= MAX_KEY => Some(v.trim().to_string()),
            Some(_) => {
                return Answer::text(
                    StatusCode::BAD_REQUEST,
                    format!("Idempotency-Key must be 1 to {MAX_KEY} characters of text"),
                );
            }
        };
        let limit = usize::try_from(max).unwrap_or(usize::MAX);
        let body = match tokio::time::timeout(
            BODY_TIMEOUT,
            Limited::new(req.into_body(), limit).collect(),
        )
        .await
        {
            Err(_) => {
                return Answer::text(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("body not received within {} s", BODY_TIMEOUT.as_secs()),
                );
            }
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_big(),
            Ok(Err(e)) => {
                return Answer::text(StatusCode::BAD_REQUEST, format!("cannot read body: {e}"));
            }
            Ok(Ok(b)) => b.to_bytes(),
        };
        let parsed = match parse::parse(&event_header, &body) {
            Ok(p) => p,
            Err(e) => {
                tracing::info!(event = %event_header, error = %e, "bad delivery refused");
                return Answer::text(StatusCode::BAD_REQUEST, e.to_string());
            }
        };
        match parsed {
            Delivery::Ignored(i) => self.ignored(&[i]),
            Delivery::ProjectChange { event_name, paths } => {
                self.repos.invalidate(&paths);
                tracing::info!(event = %event_name, ?paths, "test repository cache updated");
                if event_name == "project_create" {
                    self.add_project_hooks(&paths);
                }
                self.ignored(&[Ignored::new(
                    "project_event",
                    format!("{event_name} is not a push (test repository cache updated)"),
                )])
            }
            Delivery::Updates {
                source,
                updates,
                skipped,
            } => {
                // Store in a task of its own: a client hanging up must not
                // cancel a write half-way.
                let hook = self.clone();
                let work = tokio::spawn(async move {
                    hook.intake(source, event_header, delivery, body, updates, skipped)
                        .await
                });
                match work.await {
                    Ok(answer) => answer,
                    Err(e) => {
                        tracing::error!(error = %e, "intake task failed");
                        Answer::text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "intake failed; re-send the hook",
                        )
                    }
                }
            }
        }
    }

    /// Queue the "pending" commit status of an accepted job, off the
    /// answer's path: it is informational (the final status follows from
    /// the result), so GitLab does not wait for its fsyncs.
    fn queue_pending_status(&self, event: Event) {
        if !crate::deliver::commit_status_enabled(&self.cfg) {
            return;
        }
        if event.commit_may_be_tag_object() {
            // A status on a tag object would be refused by GitLab (or
            // land nowhere a student looks); the grader sends `running`
            // on the commit once it has peeled the tag.
            tracing::debug!(job_id = %event.job_id, "no pending status: the commit may be a tag object");
            return;
        }
        let (cfg, spool) = (self.cfg.clone(), self.spool.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = crate::deliver::enqueue_commit_status(
                &cfg,
                &spool,
                &event,
                crate::deliver::CommitState::Pending,
            ) {
                tracing::warn!(job_id = %event.job_id, error = %e, "cannot queue the pending commit status");
            }
        });
    }

    /// On `project_create`, add the project hook (as gitlab-ag does) when
    /// `gitlab.project_hook_url` is set; in the background, logged.
    fn add_project_hooks(&self, paths: &[String]) {
        if self.cfg.gitlab.project_hook_url.is_empty() {
            return;
        }
        for path in paths {
            let (cfg, path) = (self.cfg.clone(), path.clone());
            tokio::spawn(async move {
                let http = crate::httpc::HttpClient::new();
                match crate::gitlab::hooks::on_project_create(&cfg, http, &path).await {
                    Ok(outcome) => {
                        tracing::info!(project = %path, ?outcome, "project hook ensured")
                    }
                    Err(e) => {
                        tracing::warn!(project = %path, error = %e, "cannot add the project hook")
                    }
                }
            });
        }
    }

    fn ignored(&self, why: &[Ignored]) -> Answer {
        for i in why {
            metrics::inc(
                "labgrader_hook_ignored_total",
                "GitLab deliveries (or refs) not graded, by reason.",
                &[("reason", i.code)],
            );
        }
        let reason = why
            .iter()
            .map(|i| i.reason.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        Answer::text(StatusCode::OK, format!("ignored: {reason}"))
    }

    /// Decide and store every update of one delivery.
    async fn intake(
        self: Arc<Self>,
        source: HookSource,
        gitlab_event: String,
        delivery: Option<String>,
        body: Bytes,
        updates: Vec<RefUpdate>,
        skipped: Vec<Ignored>,
    ) -> Answer {
        // The body parsed once more as a generic value for `raw`: parse()
        // only checked it.
        let raw: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        let mut jobs: Vec<String> = Vec::new();
        let mut all_duplicates = true;
        let mut ignored = skipped;
        // The refs of a big push go through the same group commits rather
        // than one after another (GitLab waits at most 10 s).
        let outcomes: Vec<_> = futures_util::stream::iter(updates)
            .map(|u| {
                let raw = raw_for(&raw, &u);
                self.intake_one(source, &gitlab_event, delivery.as_deref(), raw, u)
            })
            .buffered(REFS_IN_FLIGHT)
            .collect()
            .await;
        for outcome in outcomes {
            match outcome {
                Ok(Outcome::Stored { job, duplicate }) => {
                    all_duplicates &= duplicate;
                    if !jobs.contains(&job) {
                        jobs.push(job);
                    }
                }
                Ok(Outcome::Ignored(i)) => ignored.push(i),
                Err(HookError::LowSpace(low)) => {
                    metrics::inc(
                        "labgrader_hook_low_space_total",
                        "Deliveries refused because the spool's free space was under [spool] min_free.",
                        &[],
                    );
                    tracing::error!(
                        free = low.free,
                        min_free = low.min_free,
                        "SPOOL FILE SYSTEM NEARLY FULL: refusing new jobs (503) until space is freed; \
                         re-send refused hooks from GitLab afterwards"
                    );
                    return Answer::text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("event not stored: {low}; re-send the hook once space is freed"),
                    );
                }
                Err(e) => {
                    metrics::inc(
                        "labgrader_hook_spool_errors_total",
                        "Deliveries refused because the spool could not be written.",
                        &[],
                    );
                    tracing::error!(error = %e, "cannot store the event; answering 503");
                    return Answer::text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("spool unavailable, event not stored: {e}"),
                    );
                }
            }
        }
        if jobs.is_empty() {
            return self.ignored(&ignored);
        }
        for i in &ignored {
            metrics::inc(
                "labgrader_hook_ignored_total",
                "GitLab deliveries (or refs) not graded, by reason.",
                &[("reason", i.code)],
            );
        }
        let mut v = serde_json::json!({ "job_id": jobs[0] });
        if jobs.len() > 1 {
            v["job_ids"] = serde_json::json!(jobs);
        }
        if all_duplicates {
            v["duplicate"] = serde_json::json!(true);
        }
        let mut body = serde_json::to_vec(&v).expect("json serializes");
        body.push(b'\n');
        Answer {
            status: StatusCode::ACCEPTED,
            body: Bytes::from(body),
            json: true,
        }
    }

    /// Eligibility, then dedup, then a durable event file.
    async fn intake_one(
        &self,
        source: HookSource,
        gitlab_event: &str,
        delivery: Option<&str>,
        raw: serde_json::Value,
        u: RefUpdate,
    ) -> Result<Outcome, HookError> {
        let gl = &self.cfg.gitlab;
        let ns = &u.project.namespace;
        if *ns == gl.tests_namespace || ns.starts_with(&format!("{}/", gl.tests_namespace)) {
            return Ok(Outcome::Ignored(Ignored::new(
                "tests_namespace",
                format!(
                    "{} is in the tests namespace `{}`",
                    u.project.path, gl.tests_namespace
                ),
            )));
        }
        // Course policy (issue #7): in tag mode only a tag matching
        // `tag_pattern` is a submission. Lateness, manifest and quota are
        // the grader's business.
        let facts = crate::policy::PushFacts {
            kind: u.kind,
            git_ref: &u.git_ref,
            after: &u.after,
            received_at: Utc::now(),
        };
        if let Some(why) = crate::policy::hook_ignores(&self.cfg, &u.project.name, &facts) {
            return Ok(Outcome::Ignored(Ignored::new(why.code(), why.to_string())));
        }
        let tests = gl.tests_path_for(&u.project.name);
        match self.repos.exists(&tests).await {
            Ok(true) => {}
            Ok(false) => {
                return Ok(Outcome::Ignored(Ignored::new(
                    "no_test_repository",
                    format!("no test repository {tests} for {}", u.project.path),
                )));
            }
            Err(e) => {
                // Unsure: store it. A job too many costs a grader minute; a
                // push ignored is lost (GitLab will not re-send it).
                metrics::inc(
                    "labgrader_hook_test_repo_lookup_errors_total",
                    "Test repository lookups that failed (the push was accepted).",
                    &[],
                );
                tracing::warn!(project = %u.project.path, error = %e, "cannot tell whether the test repository exists; accepting the push");
            }
        }

        // One key per ref update: a re-send of a delivery (same
        // Idempotency-Key, same body) and the same push arriving through
        // another hook all map to it.
        let ukey = update_key(&u.project.path, &u.git_ref, &u.before, &u.after);
        let _one_at_a_time = self.locks.lock(&ukey).await;
        let root = self.spool.root();
        if let Some(job) = self.markers.get(&ukey).filter(|j| job_exists(root, j)) {
            metrics::inc(
                "labgrader_hook_duplicates_total",
                "Deliveries of a push already stored (re-sends, several hooks).",
                &[],
            );
            tracing::info!(job_id = %job, project = %u.project.path, git_ref = %u.git_ref, "duplicate delivery; answering with the stored job");
            return Ok(Outcome::Stored {
                job,
                duplicate: true,
            });
        }

        // The reserve: under `[spool] min_free` no new job is stored, so
        // the jobs already accepted keep room to finish and deliver.
        // Checked before anything is written (no marker, no tmp file);
        // duplicates and ignored refs above are still answered.
        self.reserve.check()?;

        let job = new_job_id();
        let event = Event {
            schema: EVENT_SCHEMA,
            job_id: job.clone(),
            received_at: Utc::now(),
            kind: u.kind,
            source,
            gitlab_event: gitlab_event.to_string(),
            delivery_key: delivery.map(str::to_string),
            clone_url: gl.clone_url_for(&u.project.path),
            project: u.project,
            pusher: u.pusher,
            git_ref: u.git_ref,
            before: u.before,
            after: u.after,
            commit: u.commit,
            crashes: 0,
            infra_attempts: 0,
            not_before: None,
            raw,
        };
        let bytes = event.to_bytes();
        let spool = self.spool.clone();
        let keys: Vec<String> = vec![ukey];
        let markers = self.markers.clone();
        let job2 = job.clone();
        let keys2 = keys.clone();
        // Marker first (a marker without its job is stale and ignored; a
        // job without its marker could be stored twice), then the event,
        // written but not yet fsynced: the group commit does that.
        let staged = tokio::task::spawn_blocking(move || {
            for k in &keys2 {
                if let Err(source) = markers.set(k, &job2) {
                    undo_markers(&markers, &keys2, &job2);
                    return Err(HookError::Marker {
                        path: markers.dir().to_path_buf(),
                        source,
                    });
                }
            }
            spool
                .stage(&format!("{job2}.json"), &bytes)
                .inspect_err(|_| undo_markers(&markers, &keys2, &job2))
                .map_err(HookError::from)
        })
        .await
        .map_err(|e| HookError::Task(e.to_string()))??;
        if let Err(e) = self.commit.publish(staged).await {
            undo_markers(&self.markers, &keys, &job);
            return Err(HookError::Sync(e));
        }
        metrics::inc(
            "labgrader_hook_accepted_total",
            "Pushes stored as new jobs, by kind.",
            &[(
                "kind",
                match event.kind {
                    crate::event::EventKind::Push => "push",
                    crate::event::EventKind::TagPush => "tag_push",
                },
            )],
        );
        tracing::info!(job_id = %job, project = %event.project.path, git_ref = %event.git_ref, sha = %event.commit, "push accepted");
        self.queue_pending_status(event);
        Ok(Outcome::Stored {
            job,
            duplicate: false,
        })
    }
}

/// The `raw` payload of one event: the body as received, except that a
/// repository_update's `changes` and `refs` are narrowed to this event's
/// ref, so a push of many refs does not copy the whole body into each of
/// its event files.
fn raw_for(raw: &serde_json::Value, u: &RefUpdate) -> serde_json::Value {
    let Some(obj) = raw.as_object() else {
        return raw.clone();
    };
    if !obj.contains_key("changes") {
        return raw.clone();
    }
    let mut narrowed: serde_json::Map<String, serde_json::Value> = obj
        .iter()
        .filter(|(k, _)| *k != "changes" && *k != "refs")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    narrowed.insert(
        "changes".into(),
        serde_json::json!([{"before": u.before, "after": u.after, "ref": u.git_ref}]),
    );
    narrowed.insert("refs".into(), serde_json::json!([u.git_ref]));
    serde_json::Value::Object(narrowed)
}

fn undo_markers(markers: &Markers, keys: &[String], job: &str) {
    for k in keys {
        markers.remove_if(k, job);
    }
}

/// Recreate missing markers of events waiting in `incoming/` and `active/`
/// (a crash may have made an event durable before its marker).
fn rebuild_markers(spool: &Spool, markers: &Markers) -> std::io::Result<usize> {
    let mut made = 0;
    for state in [State::Incoming, State::Active] {
        let names = spool
            .list(state)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        for name in names {
            let Ok(bytes) = spool.read(state, &name) else {
                continue;
            };
            // Unparseable files are the grader's to quarantine.
            let Ok(ev) = Event::from_bytes(&bytes) else {
                continue;
            };
            let keys = [update_key(
                &ev.project.path,
                &ev.git_ref,
                &ev.before,
                &ev.after,
            )];
            for k in keys {
                let ok = markers
                    .get(&k)
                    .is_some_and(|j| job_exists(spool.root(), &j));
                if !ok {
                    markers.set(&k, &ev.job_id)?;
                    made += 1;
                }
            }
        }
    }
    Ok(made)
}
