//! The staff pages under `/staff/`: an overview, the queue (waiting and
//! running jobs, deliveries waiting and given up), recent jobs filtered
//! by assignment and student, one job's full record (hidden keys and
//! tests, stderr, limits, image, commits), and per assignment a grade
//! histogram, the count of students with a grade and the gradebook
//! export as CSV (the gradebook's own writer). Access is checked before
//! any of this runs (see the parent); this module only renders.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use maud::{Markup, html};

use super::data::Web;
use super::html::{self, Cache, Nav, num, short, status_badge, when};
use super::query::{Query, encode};
use crate::event::Event;
use crate::gradebook::{Filter, Format, JobRow, Select};
use crate::result::JobResult;
use crate::spool::State;

/// Waiting jobs and deliveries listed on the queue page.
const QUEUE_LIMIT: usize = 200;
/// Bins of a grade histogram.
const BINS: usize = 10;

/// 401, asking a browser for the staff token (as the password of HTTP
/// Basic; any user name).
pub(super) fn unauthorized(configured: bool) -> Response<Full<Bytes>> {
    let body = html! {
        h1 { "Staff only" }
        @if configured {
            p { "Send the staff token: " code { "Authorization: Bearer <token>" }
                ", or log in with it as the password." }
        } @else {
            p { "No staff token is configured (" code { "[web] staff_token_file" } ")." }
        }
    };
    let mut r = html::respond(
        StatusCode::UNAUTHORIZED,
        html::layout("Staff only", Nav::Student, None, body),
        Cache::NoStore,
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"labgrader staff\", charset=\"UTF-8\""),
    );
    r
}

impl Web {
    pub(super) fn staff_page(&self, rest: &str, q: &Query) -> Response<Full<Bytes>> {
        let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
        let page = match parts.as_slice() {
            [] => self.overview(),
            ["queue"] => Ok(("Queue".into(), self.queue())),
            ["jobs"] => self.jobs(q),
            ["jobs", id] if crate::spool::is_valid_name(id) => self.job(id),
            ["assignments"] => self.assignment_list(),
            ["assignments", a] => self.assignment(a),
            ["assignments", a, "export.csv"] => return self.export(a, q),
            _ => return self.staff_not_found(),
        };
        match page {
            Ok((title, body)) => html::respond(
                StatusCode::OK,
                html::layout(&title, Nav::Staff, None, body),
                Cache::NoStore,
            ),
            Err(Missing) => self.staff_not_found(),
        }
    }

    fn staff_not_found(&self) -> Response<Full<Bytes>> {
        html::respond(
            StatusCode::NOT_FOUND,
            html::layout(
                "Not found",
                Nav::Staff,
                None,
                html! { h1 { "Not found" } p { "No such staff page or job." } },
            ),
            Cache::NoStore,
        )
    }

    /// Rows from the gradebook, empty (with a log line) when it cannot be read.
    fn rows(
        &self,
        f: impl FnOnce(
            &crate::gradebook::Gradebook,
        ) -> Result<Vec<JobRow>, crate::gradebook::GradebookError>,
    ) -> Vec<JobRow> {
        match self.gradebook(f) {
            Ok(r) => r.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "staff page: cannot read the gradebook");
                Vec::new()
            }
        }
    }

    fn overview(&self) -> Result<(String, Markup), Missing> {
        let recent = self.rows(|g| Ok(g.views().recent(None, None, 20)?));
        let counts: Vec<(State, usize)> = [
            State::Incoming,
            State::Active,
            State::Outbox,
            State::Dead,
            State::Failed,
        ]
        .iter()
        .map(|s| (*s, self.spool.count(*s)))
        .collect();
        let body = html! {
            h1 { "Overview" }
            div.card { dl.facts {
                @for (s, n) in &counts { dt { (state_words(*s)) } dd { (n) } }
            } }
            h2 { "Latest jobs" }
            (job_table(&recent))
            p { a href="/staff/jobs" { "All recent jobs, with filters" } }
        };
        Ok(("Overview".into(), body))
    }

    fn queue(&self) -> Markup {
        let events = |state: State| -> Vec<(String, Option<Event>)> {
            self.spool
                .list(state)
                .unwrap_or_default()
                .into_iter()
                .take(QUEUE_LIMIT)
                .map(|n| {
                    let ev = self
                        .spool
                        .read(state, &n)
                        .ok()
                        .and_then(|b| Event::from_bytes(&b).ok());
                    (crate::event::job_id_of(&n).to_string(), ev)
                })
                .collect()
        };
        let waiting = events(State::Incoming);
        let (running, ready): (Vec<_>, Vec<_>) = events(State::Active)
            .into_iter()
            .partition(|(job, _)| crate::grader::run_started(self.spool.root(), job));
        let (outbox, dead) = crate::deliver::report(&self.spool, QUEUE_LIMIT).unwrap_or_default();
        html! {
            h1 { "Queue" }
            h2 { "Running (" (running.len()) ")" }
            (event_table(&running, false))
            h2 { "Prepared, waiting for a run slot (" (ready.len()) ")" }
            (event_table(&ready, false))
            h2 { "Waiting (" (self.spool.count(State::Incoming)) ")" }
            (event_table(&waiting, true))
            h2 { "Deliveries waiting (" (self.spool.count(State::Outbox)) ")" }
            (delivery_table(&outbox, false))
            h2 { "Deliveries given up (" (self.spool.count(State::Dead)) ")" }
            (delivery_table(&dead, true))
        }
    }

    fn jobs(&self, q: &Query) -> Result<(String, Markup), Missing> {
        let assignment = q.get("assignment").map(str::trim).filter(|s| !s.is_empty());
        let student = q.get("student").map(str::trim).filter(|s| !s.is_empty());
        let limit = self.cfg.web.recent_jobs;
        let rows = self.rows(|g| Ok(g.views().recent(assignment, student, limit)?));
        let body = html! {
            h1 { "Recent jobs" }
            form.filter method="get" action="/staff/jobs" {
                label { "Assignment" input name="assignment" value=(assignment.unwrap_or("")); }
                label { "Student (part of the project path)" input name="student" value=(student.unwrap_or("")); }
                button type="submit" { "Filter" }
            }
            p.muted { (rows.len()) " jobs shown (newest first, at most " (limit) ")." }
            (job_table(&rows))
        };
        Ok(("Jobs".into(), body))
    }

    fn job(&self, id: &str) -> Result<(String, Markup), Missing> {
        let r: JobResult = match self.gradebook(|g| g.get(id)) {
            Ok(Some(Some(r))) => r,
            _ => return Err(Missing),
        };
        let link = super::link::result_url(&self.cfg, &r.job_id);
        let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
        let body = html! {
            h1 { (r.project) }
            div.card {
                p { (status_badge(r.status.as_str())) }
                @if let Some(g) = r.grade_total { p.label { "Grade" } p.grade #grade { (num(Some(g))) } }
                @if let Some(why) = &r.reason { p { (why) } }
                @if let Some(l) = &link { p { a href=(l) { "The student's page" } } }
            }
            dl.facts {
                dt { "Job" } dd { code { (r.job_id) } }
                dt { "Ref" } dd { (r.git_ref) }
                dt { "Commit" } dd { code { (r.student_sha) } }
                dt { "Tests commit" } dd { code { (r.tests_sha.as_deref().unwrap_or("—")) } }
                dt { "Runner" } dd { (r.runner) }
                dt { "Image" } dd { (r.image.as_deref().unwrap_or("—")) " " span.muted { (r.image_id.as_deref().map(short).unwrap_or("")) } }
                dt { "Received" } dd { (when(r.received_at)) }
                @if let Some(s) = r.started_at { dt { "Started" } dd { (when(s)) } }
                dt { "Ended" } dd { (when(r.ended_at)) }
                @if let Some(t) = &r.termination { dt { "Termination" } dd { code { (serde_json::to_string(t).unwrap_or_default()) } } }
                @if let Some(l) = &r.limits { dt { "Limits" } dd { code { (serde_json::to_string(l).unwrap_or_default()) } } }
            }
            @if !r.summary.is_empty() || !r.hidden.is_empty() {
                h2 { "Summary keys" }
                div.scroll { table {
                    thead { tr { th { "Key" } th { "Value" } th { "" } } }
                    tbody {
                        @for (k, v) in &r.summary { tr { td { (k) } td { (v) } td {} } }
                        @for (k, v) in &r.hidden { tr { td { (k) } td { (v) } td { span.badge.wait { "hidden" } } } }
                    }
                } }
            }
            @if let Some(res) = &r.results {
                h2 { "Tests (all, hidden ones too)" }
                div.scroll { table #tests {
                    thead { tr { th { "Test" } th.num { "Points" } th { "Visibility" } th { "Status" } th { "Output" } } }
                    tbody { @for t in &res.tests { tr {
                        td.name.test-name { (t.name) }
                        td.num { (num(t.score)) @if t.max_score.is_some() { " / " (num(t.max_score)) } }
                        td { (serde_json::to_value(t.visibility).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()) }
                        td { (t.status.as_deref().unwrap_or("")) }
                        td { @if let Some(o) = &t.output { details { summary { "output" } pre { (o) } } } }
                    } } }
                } }
            }
            h2 { "stdout" } pre { (text(r.stdout.display_bytes())) }
            h2 { "stderr" } pre { (text(r.stderr.display_bytes())) }
            @if !r.extra.is_empty() {
                h2 { "Extra" } pre { (serde_json::to_string_pretty(&r.extra).unwrap_or_default()) }
            }
        };
        Ok((format!("Job {id}"), body))
    }

    fn assignment_list(&self) -> Result<(String, Markup), Missing> {
        let list = self
            .gradebook(|g| Ok(g.views().assignments()?))
            .ok()
            .flatten()
            .unwrap_or_default();
        let body = html! {
            h1 { "Assignments" }
            div.scroll { table {
                thead { tr { th { "Assignment" } th.num { "Jobs" } th { "Leaderboard" } } }
                tbody { @for (a, n) in &list { tr {
                    td { a href=(format!("/staff/assignments/{}", encode(a))) { (a) } }
                    td.num { (n) }
                    td { @if self.cfg.assignments.get(a).is_some_and(|c| c.leaderboard.is_some()) {
                        a href=(format!("/leaderboard/{}", encode(a))) { "open" } } }
                } } }
            } }
        };
        Ok(("Assignments".into(), body))
    }

    fn assignment(&self, a: &str) -> Result<(String, Markup), Missing> {
        let grades = self
            .gradebook(|g| Ok(g.views().latest_grades(a)?))
            .ok()
            .flatten()
            .unwrap_or_default();
        if grades.is_empty() {
            return Err(Missing);
        }
        let graded: Vec<f64> = grades.iter().filter_map(|(_, g)| *g).collect();
        let bins = histogram(&graded);
        let most = bins.iter().map(|b| b.2).max().unwrap_or(0).max(1);
        let enc = encode(a);
        let body = html! {
            h1 { "Assignment " (a) }
            div.card { dl.facts {
                dt { "Students with a job" } dd { (grades.len()) }
                dt { "Students with a grade" } dd #graded-count { (graded.len()) }
                @if !graded.is_empty() {
                    dt { "Mean grade" } dd { (format!("{:.2}", graded.iter().sum::<f64>() / graded.len() as f64)) }
                }
            } }
            h2 { "Latest grade of each student" }
            div.scroll { table #histogram {
                thead { tr { th { "Grade" } th.num { "Students" } th { "" } } }
                tbody { @for (lo, hi, n) in &bins { tr {
                    td { (num(Some(*lo))) " – " (num(Some(*hi))) }
                    td.num { (n) }
                    td { meter min="0" max=(most) value=(n) { (n) } }
                } } }
            } }
            h2 { "Export" }
            p {
                a href=(format!("/staff/assignments/{enc}/export.csv?select=latest")) { "Latest job per student (CSV)" }
                " · "
                a href=(format!("/staff/assignments/{enc}/export.csv?select=best")) { "Best job per student (CSV)" }
                " · "
                a href=(format!("/staff/jobs?assignment={enc}")) { "Jobs" }
            }
        };
        Ok((format!("Assignment {a}"), body))
    }

    fn export(&self, a: &str, q: &Query) -> Response<Full<Bytes>> {
        let select = match q.get("select").unwrap_or("latest") {
            "best" => Select::Best,
            "all" => Select::All,
            _ => Select::Latest,
        };
        let filter = Filter {
            project: None,
            assignment: Some(a.to_string()),
        };
        let mut out = Vec::new();
        match self.gradebook(|g| g.export(select, &filter, Format::Csv, &mut out)) {
            Ok(Some(_)) => {
                let mut r = html::respond_bytes(
                    StatusCode::OK,
                    "text/csv; charset=utf-8",
                    out,
                    Cache::NoStore,
                );
                let name: String = a
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
                    .collect();
                if let Ok(v) =
                    HeaderValue::from_str(&format!("attachment; filename=\"{name}.csv\""))
                {
                    r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
                }
                r
            }
            _ => self.staff_not_found(),
        }
    }
}

/// No such page or job.
pub(super) struct Missing;

fn state_words(s: State) -> &'static str {
    match s {
        State::Incoming => "Jobs waiting",
        State::Active => "Jobs running",
        State::Outbox => "Deliveries waiting",
        State::Dead => "Deliveries given up",
        State::Failed => "Jobs failed (staff must look)",
        _ => s.dir_name(),
    }
}

/// Equal bins from 0 (or the lowest grade) to the highest grade, as
/// (low, high, count); empty without grades.
fn histogram(grades: &[f64]) -> Vec<(f64, f64, usize)> {
    if grades.is_empty() {
        return Vec::new();
    }
    let lo = grades
        .iter()
        .cloned()
        .fold(f64::INFINITY, f64::min)
        .min(0.0);
    let hi = grades
        .iter()
        .cloned()
        .fold(f64::NEG_INFINITY, f64::max)
        .max(lo + 1.0);
    let width = (hi - lo) / BINS as f64;
    let mut bins: Vec<(f64, f64, usize)> = (0..BINS)
        .map(|i| (lo + width * i as f64, lo + width * (i + 1) as f64, 0))
        .collect();
    for g in grades {
        let i = (((g - lo) / width) as usize).min(BINS - 1);
        bins[i].2 += 1;
    }
    bins
}

fn job_table(rows: &[JobRow]) -> Markup {
    html! {
        div.scroll { table #jobs {
            thead { tr { th { "Received" } th { "Project" } th { "Status" } th.num { "Grade" } th { "Job" } } }
            tbody { @for r in rows { tr {
                td { (r.received_at.map(when).unwrap_or_default()) }
                td.name { (r.project) }
                td { (status_badge(&r.status)) }
                td.num { (num(r.grade_total)) }
                td { a href=(format!("/staff/jobs/{}", r.job_id)) { code { (r.job_id) } } }
            } } }
        } }
    }
}

fn event_table(rows: &[(String, Option<Event>)], waiting: bool) -> Markup {
    html! {
        @if rows.is_empty() { p.muted { "None." } } @else {
            div.scroll { table {
                thead { tr { @if waiting { th.num { "#" } } th { "Job" } th { "Project" } th { "Commit" } th { "Received" } th { "Attempts" } th { "Last error" } } }
                tbody { @for (i, (id, ev)) in rows.iter().enumerate() { tr {
                    @if waiting { td.num { (i + 1) } }
                    td { code { (id) } }
                    @if let Some(e) = ev {
                        td.name { (e.project.path) }
                        td { code { (short(&e.commit)) } }
                        td { (when(e.received_at)) }
                        td.num { (e.infra_attempts + 1) @if e.crashes > 0 { " (" (e.crashes) " crashes)" } }
                        td { (e.last_error.as_deref().unwrap_or("")) }
                    } @else {
                        td colspan="5" { span.badge.bad { "unreadable event" } }
                    }
                } } }
            } }
        }
    }
}

fn delivery_table(rows: &[crate::deliver::DeliveryLine], dead: bool) -> Markup {
    html! {
        @if rows.is_empty() { p.muted { "None." } } @else {
            div.scroll { table {
                thead { tr { th { "Delivery" } th.num { "Attempts" } @if !dead { th { "Next try" } } th { (if dead { "Why given up" } else { "Last error" }) } } }
                tbody { @for d in rows { tr {
                    td { code { (d.key) } }
                    td.num { (d.attempts) }
                    @if !dead { td { (d.next_try_at.map(when).unwrap_or_default()) } }
                    td { (d.reason.as_deref().unwrap_or("")) }
                } } }
            } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_bins_cover_every_grade() {
        let b = histogram(&[0.0, 55.0, 100.0, 100.0]);
        assert_eq!(b.len(), BINS);
        assert_eq!(b.iter().map(|x| x.2).sum::<usize>(), 4);
        assert_eq!(b[BINS - 1].2, 2);
        assert_eq!(b[0].2, 1);
        assert!(histogram(&[]).is_empty());
        assert_eq!(histogram(&[-5.0]).iter().map(|x| x.2).sum::<usize>(), 1);
    }
}
