//! The HTTP side of the hook server: routing (`POST /hooks/gitlab`,
//! `GET /healthz`, `GET /metrics`), the webhook token check in constant
//! time, the body limit and timeout, the GitLab headers, and what each
//! parsed delivery leads to. It never writes to the spool: storing the
//! pushes is the intake's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use subtle::ConstantTimeEq;

use super::answer::Answer;
use super::parse::{self, Delivery, Ignored};
use super::server::HOOK_PATH;
use super::state::Hook;
use crate::metrics;
use crate::spool::State;

/// Time allowed to send the body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest `Idempotency-Key` accepted (GitLab sends a UUID).
const MAX_KEY: usize = 256;

impl Hook {
    pub(super) async fn route(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
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
                "invalid or missing X-Gitlab-Token; set the hook's secret token to the one in \
                 server.webhook_token_file (or LABGRADER_WEBHOOK_TOKEN)",
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
                // A test repository created (or renamed, moved into place):
                // the pushes held for it are graded now if it has a commit
                // (GitLab creates most projects empty: then they wait for
                // the push of the tests).
                for p in &paths {
                    self.release_if_ready(p).await;
                }
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

    pub(super) fn ignored(&self, why: &[Ignored]) -> Answer {
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
}
