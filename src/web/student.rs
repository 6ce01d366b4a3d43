//! A student's result page, `GET /jobs/<job>?t=<token>`: the grade, the
//! tests a student may see (the email's rules: [`hidden::view`] with the
//! assignment's deadline, [`table::unshown`] for what is left out), the
//! stdout as the student may see it, the commits and times; while the job
//! waits or runs, its place in the queue and an estimated start, and the
//! page reloads itself. It lists the student's other jobs of the same
//! assignment, each linked with its own token.
//!
//! Anything that does not open answers [`html::not_found`], the same page
//! whatever the cause, so a guess learns nothing.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use maud::{Markup, html};

use super::data::{Place, Web};
use super::html::{self, Cache, Nav, num, short, status_badge, when};
use super::link;
use crate::deliver::hidden::{self, Audience};
use crate::deliver::table;
use crate::gradebook::JobRow;
use crate::result::JobResult;
use crate::results::TestRow;

/// Other jobs of the same project listed.
const HISTORY: usize = 50;

impl Web {
    pub(super) fn job_page(&self, job_id: &str, given: &str) -> Response<Full<Bytes>> {
        if !crate::spool::is_valid_name(job_id) || !link::token_ok(&self.secret, job_id, given) {
            return html::not_found();
        }
        let result = match self.gradebook(|g| g.get(job_id)) {
            Ok(r) => r.flatten(),
            Err(e) => {
                tracing::error!(job_id, error = %e, "cannot read the gradebook for a result page");
                return self.unavailable();
            }
        };
        if let Some(full) = result {
            let history = self.history(&full.project, job_id);
            let page = self.result_body(&full, &history);
            return html::respond(
                StatusCode::OK,
                html::layout(
                    &format!("Result of {}", full.project),
                    Nav::Student,
                    None,
                    page,
                ),
                Cache::NoStore,
            );
        }
        let refresh = Some(self.cfg.web.refresh.get().as_secs());
        let (title, body) = match self.place(job_id) {
            Place::Waiting {
                event,
                position,
                waiting,
            } => {
                let estimate = self.estimate_start(position);
                let running = self.spool.count(crate::spool::State::Active);
                let workers = self.cfg.grader.effective_workers().max(1);
                let history = self.history(&event.project.path, job_id);
                let body = html! {
                    h1 { (event.project.path) }
                    div.card {
                        p { (status_badge("waiting")) }
                        p.grade { "#" (position) small { " of " (waiting) " waiting" } }
                        p.muted { (running) " running now, on " (workers)
                            (if workers == 1 { " grader slot." } else { " grader slots." }) }
                        p {
                            @match estimate {
                                Some(t) if t <= chrono::Utc::now() + chrono::Duration::seconds(5) =>
                                    { "It should start any moment now." }
                                Some(t) => { "Estimated start: " (when(t)) " (from the time recent jobs took)." }
                                None => { "No estimate yet: no job has finished on this grader." }
                            }
                        }
                    }
                    (facts_of_event(&event))
                    (history_list(self, &history))
                };
                (format!("Waiting: {}", event.project.path), body)
            }
            Place::Ready { event } => {
                let said = "Your code is ready: it starts as soon as a grader slot is free. \
                            This page shows the result when it is done.";
                self.in_progress(job_id, &event, ("Next", "waiting", said))
            }
            Place::Running { event } => {
                let said =
                    "Your code is being graded now. This page shows the result when it is done.";
                self.in_progress(job_id, &event, ("Running", "running", said))
            }
            Place::Elsewhere => {
                let body = html! {
                    h1 { "Job " (job_id) }
                    div.card {
                        p { (status_badge("unknown")) }
                        p { "This job has no result yet and is not waiting in the queue: it may be "
                            "finishing right now. If this lasts, ask the course staff (give them the job id above)." }
                    }
                };
                ("Job".to_string(), body)
            }
        };
        html::respond(
            StatusCode::OK,
            html::layout(&title, Nav::Student, refresh, body),
            Cache::NoStore,
        )
    }

    fn unavailable(&self) -> Response<Full<Bytes>> {
        let body = html! {
            h1 { "Temporarily unavailable" }
            p { "The results cannot be read right now. Try again in a minute." }
        };
        html::respond(
            StatusCode::SERVICE_UNAVAILABLE,
            html::layout("Unavailable", Nav::Student, Some(30), body),
            Cache::NoStore,
        )
    }

    /// The project's other jobs (newest first), without `except`.
    /// The page of a job claimed but not finished: `(title, badge, what
    /// the student reads)`.
    fn in_progress(
        &self,
        job_id: &str,
        event: &crate::event::Event,
        (title, badge, said): (&str, &str, &str),
    ) -> (String, Markup) {
        let history = self.history(&event.project.path, job_id);
        let body = html! {
            h1 { (event.project.path) }
            div.card {
                p { (status_badge(badge)) }
                p { (said) }
            }
            (facts_of_event(event))
            (history_list(self, &history))
        };
        (format!("{title}: {}", event.project.path), body)
    }

    fn history(&self, project: &str, except: &str) -> Vec<JobRow> {
        match self.gradebook(|g| Ok(g.views().rows_of_project(project, HISTORY + 1)?)) {
            Ok(Some(rows)) => rows
                .into_iter()
                .filter(|r| r.job_id != except)
                .take(HISTORY)
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => {
                tracing::warn!(project, error = %e, "cannot list a project's jobs");
                Vec::new()
            }
        }
    }

    /// The body of a finished job's page, as its student may see it.
    fn result_body(&self, full: &JobResult, history: &[JobRow]) -> Markup {
        let assignment = full.project.rsplit('/').next().unwrap_or("");
        let after_due = crate::policy::ResolvedPolicy::for_project(&self.cfg, assignment)
            .due()
            .is_some_and(|due| chrono::Utc::now() > due);
        let shown = hidden::view(
            full,
            Audience {
                after_due,
                ..Audience::STUDENT
            },
        );
        let mention_hidden = self
            .cfg
            .assignments
            .get(assignment)
            .and_then(|a| a.mention_hidden_tests)
            .unwrap_or(true);
        let unshown = table::unshown(full, &shown, mention_hidden);
        let stdout = capped(&shown, self.cfg.email.stdout_limit.bytes());
        let good = shown.status.is_success();
        html! {
            h1 { (shown.project) }
            div.card {
                @if let Some(g) = shown.grade_total {
                    p.label { "Grade" }
                    p.grade #grade { (num(Some(g))) }
                }
                p { (status_badge(shown.status.as_str())) }
                @if !good || shown.grade_total.is_none() {
                    p { (crate::deliver::verdict(&shown)) }
                }
            }
            @if let Some(res) = &shown.results {
                @if !res.tests.is_empty() || unshown != table::Unshown::default() {
                    h2 { "Tests" }
                    (tests_table(&res.tests))
                    @if unshown.after_due > 0 {
                        p.muted { (unshown.after_due) " more "
                            (if unshown.after_due == 1 { "test is" } else { "tests are" })
                            " shown after the deadline." }
                    }
                    @if unshown.hidden > 0 {
                        p.muted { (unshown.hidden) " hidden "
                            (if unshown.hidden == 1 { "test" } else { "tests" })
                            ": for staff only." }
                    }
                    @if let Some(out) = res.output.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
                        pre.feedback { (out) }
                    }
                }
            }
            h2 { "Details" }
            dl.facts {
                dt { "Commit" } dd { code title=(shown.student_sha) { (short(&shown.student_sha)) } }
                dt { "Branch or tag" } dd { (short_ref(&shown.git_ref)) }
                dt { "Tests commit" } dd { code title=(shown.tests_sha.as_deref().unwrap_or("")) {
                    (shown.tests_sha.as_deref().map(short).unwrap_or("—")) } }
                dt { "Pushed" } dd { (when(shown.received_at)) }
                @if let Some(s) = shown.started_at { dt { "Started" } dd { (when(s)) } }
                dt { "Finished" } dd { (when(shown.ended_at)) }
                @if let Some(s) = shown.started_at {
                    dt { "Ran for" } dd { (html::span((shown.ended_at - s).num_milliseconds() as f64 / 1000.0)) }
                }
                dt { "Job" } dd { code { (shown.job_id) } }
            }
            @if !stdout.is_empty() {
                h2 { "Output of the tests" }
                pre #stdout { (stdout) }
            }
            (history_list(self, history))
        }
    }
}

/// The facts of a job that has no result yet.
fn facts_of_event(ev: &crate::event::Event) -> Markup {
    html! {
        dl.facts {
            dt { "Commit" } dd { code title=(ev.commit) { (short(&ev.commit)) } }
            dt { "Branch or tag" } dd { (short_ref(&ev.git_ref)) }
            dt { "Pushed" } dd { (when(ev.received_at)) }
            dt { "Job" } dd { code { (ev.job_id) } }
        }
    }
}

/// `main` for `refs/heads/main`, `v1` for `refs/tags/v1`.
fn short_ref(r: &str) -> &str {
    r.strip_prefix("refs/heads/")
        .or_else(|| r.strip_prefix("refs/tags/"))
        .unwrap_or(r)
}

/// One row per test a student may see.
pub(super) fn tests_table(rows: &[TestRow]) -> Markup {
    html! {
        div.scroll {
            table #tests {
                thead { tr { th { "" } th { "Test" } th.num { "Points" } th { "Feedback" } } }
                tbody {
                    @for t in rows {
                        tr {
                            td { @match t.passed() {
                                Some(true) => span.badge.ok { "pass" },
                                Some(false) => span.badge.bad { "fail" },
                                None => "",
                            } }
                            td.name.test-name { (t.name) }
                            td.num { (num(t.score))
                                @if t.max_score.is_some() { " / " (num(t.max_score)) } }
                            td { @if let Some(o) = t.output.as_deref().map(str::trim).filter(|o| !o.is_empty()) {
                                @let first = o.lines().next().unwrap_or("");
                                @if o.lines().count() > 1 {
                                    details { summary { (first) } pre { (o) } }
                                } @else { (first) }
                            } }
                        }
                    }
                }
            }
        }
    }
}

/// The student's other jobs, each with its own link.
fn history_list(web: &Web, rows: &[JobRow]) -> Markup {
    html! {
        @if !rows.is_empty() {
            h2 { "Your other submissions of this assignment" }
            div.scroll { table #history {
                thead { tr { th { "Pushed" } th { "Result" } th.num { "Grade" } } }
                tbody { @for r in rows {
                    tr {
                        td { a href=(format!("/jobs/{}?t={}", r.job_id, link::token(&web.secret, &r.job_id))) {
                            (r.received_at.map(when).unwrap_or_default()) } }
                        td { (status_badge(&r.status)) }
                        td.num { (num(r.grade_total)) }
                    }
                } }
            } }
        }
    }
}

/// stdout as text (invalid UTF-8 as U+FFFD), at most `limit` bytes of it.
fn capped(r: &JobResult, limit: u64) -> String {
    let bytes = r.stdout.display_bytes();
    let keep = bytes.len().min(limit as usize);
    let mut text = String::from_utf8_lossy(&bytes[..keep]).into_owned();
    if keep < bytes.len() {
        text.push_str(&format!("\n[labgrader: cut at {limit} bytes]\n"));
    }
    text
}
