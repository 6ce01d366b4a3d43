//! The text of deliveries: what each destination says about a result.
//!
//! Owns, per destination, the payload stored in an outbox record, built
//! once at enqueue time so every attempt sends the same bytes: the
//! callback's JSON body (field by field in the README, "Delivery"), the
//! email's subject and text, and the commit status's state, description
//! and `target_url`. Also the words they share: the verdict phrase (the
//! grade, or what went wrong) and `{name}` placeholders. The hidden-key
//! filter ([`super::hidden`]) is applied here, before a callback body or an
//! email is made: hidden summary keys and their stdout lines are never
//! emailed, and reach the callback only with `callback.include_hidden`.
//! It never sends, never touches the disk, and never puts the stderr in
//! an email nor a secret in a payload. Stdout is student output: it goes
//! only into bodies, never into a header or the subject.

use lettre::Address;
use lettre::message::Mailbox;
use serde_json::json;

use super::hidden::{self, Audience};
use super::record::{
    CallbackPayload, CommitState, Destination, EmailPayload, JobStage, Payload, Record,
    StatusPayload, idempotency_key,
};
use super::table;
use crate::config::Config;
use crate::event::Event;
use crate::result::{Captured, JobResult};

/// Schema number of the callback body (`"schema"` in it).
pub const BODY_SCHEMA: u32 = 1;
/// GitLab's limit on a status description.
const DESCRIPTION_MAX: usize = 255;

/// One phrase for a result: the grade, or what went wrong (e.g. "timed
/// out after 120 s"), used in email subjects and commit statuses.
pub fn verdict(result: &JobResult) -> String {
    use crate::result::Status;
    let grade = result.grade_total.map(crate::result::format_grade);
    if result.status == Status::Graded {
        return match grade {
            Some(g) => format!("grade {g}"),
            None => "graded".into(),
        };
    }
    let what = result
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| match result.status {
            Status::Timeout => match &result.limits {
                Some(l) => format!("timed out after {} s", l.timeout.as_secs()),
                None => "timed out".into(),
            },
            Status::MemoryLimit => "stopped at the memory limit".into(),
            Status::WorkspaceLimit => "workspace over its limit".into(),
            Status::DiskLimit => "stopped at the disk quota".into(),
            Status::OutputLimit => "output over its limit; no trustworthy summary".into(),
            Status::NoGrade => "no grade_total in the summary".into(),
            Status::InvalidManifest => "invalid labgrader.json".into(),
            Status::Error => "could not be graded".into(),
            Status::InfraError => {
                "grader error, not the student's fault; staff can regrade it".into()
            }
            Status::Graded => unreachable!("handled above"),
        });
    match grade {
        Some(g) => format!("{what} (grade {g})"),
        None => what,
    }
}

/// Whether the deadline (with its grace) of `event`'s assignment has
/// passed now: `after_due_date` tests are shown from then on.
pub fn after_due(cfg: &Config, event: &Event) -> bool {
    crate::policy::ResolvedPolicy::for_project(cfg, &event.project.name)
        .due()
        .is_some_and(|due| chrono::Utc::now() > due)
}

/// A student's audience for `event` now.
fn student(cfg: &Config, event: &Event) -> Audience {
    Audience {
        after_due: after_due(cfg, event),
        ..Audience::STUDENT
    }
}

/// Replace `{name}` placeholders from `vars` in `template`.
pub(super) fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

/// A usable address, or `None` (empty, hidden, not an address).
pub(super) fn usable(addr: Option<&str>) -> Option<Address> {
    let a = addr?.trim();
    if a.is_empty() || a.eq_ignore_ascii_case("[redacted]") {
        return None;
    }
    a.parse().ok()
}

// ---- callback -------------------------------------------------------------

/// Text of a captured stream as JSON can carry it: invalid UTF-8 becomes
/// U+FFFD; the truncation mark is included when output was cut.
fn text(c: &Captured) -> String {
    String::from_utf8_lossy(&c.display_bytes()).into_owned()
}

/// The callback body of a finished job (field by field in the README),
/// from a result already through [`hidden::view`].
fn callback_body(cfg: &Config, event: &Event, result: &JobResult) -> serde_json::Value {
    let mut b = json!({
        "schema": BODY_SCHEMA,
        "job_id": result.job_id,
        "idempotency_key": idempotency_key(&result.job_id, Destination::Callback),
        "project": result.project,
        "project_id": event.project.id,
        "ref": result.git_ref,
        "pusher": event.pusher,
        "student_sha": result.student_sha,
        "tests_sha": result.tests_sha,
        "status": result.status.as_str(),
        "reason": result.reason,
        "grade_total": result.grade_total,
        "summary": result.summary,
        "received_at": result.received_at,
        "started_at": result.started_at,
        "ended_at": result.ended_at,
        "runner": result.runner,
        "stdout": text(&result.stdout),
        "stdout_truncated": result.stdout.truncated,
        "stdout_utf8": std::str::from_utf8(&result.stdout.bytes).is_ok(),
    });
    let m = b.as_object_mut().expect("object");
    if let Some(res) = &result.results {
        m.insert("tests".into(), json!(res.tests));
    }
    if let Some(url) = crate::web::link::result_url(cfg, &result.job_id) {
        m.insert("result_url".into(), json!(url));
    }
    if cfg.callback.include_hidden {
        m.insert("hidden".into(), json!(result.hidden));
    }
    if cfg.callback.include_stderr {
        m.insert("stderr".into(), json!(text(&result.stderr)));
        m.insert("stderr_truncated".into(), json!(result.stderr.truncated));
    }
    b
}

/// The callback of a stage before the result (`queued` at intake,
/// `running` once the run has lasted `[deliver] running_after`): who,
/// which commit, and the state.
pub(super) fn stage_callback_record(cfg: &Config, event: &Event, stage: JobStage) -> Record {
    let dest = stage.callback();
    let mut body = json!({
        "schema": BODY_SCHEMA,
        "job_id": event.job_id,
        "idempotency_key": idempotency_key(&event.job_id, dest),
        "project": event.project.path,
        "project_id": event.project.id,
        "ref": event.git_ref,
        "pusher": event.pusher,
        "student_sha": event.commit,
        "status": stage.as_str(),
        "received_at": event.received_at,
    });
    // The page shows the place in the queue until the result is there.
    if let Some(url) = crate::web::link::result_url(cfg, &event.job_id) {
        body["result_url"] = json!(url);
    }
    Record::new(
        &event.job_id,
        dest,
        &event.project.path,
        &event.commit,
        Payload::Callback(CallbackPayload {
            body: serde_json::to_string(&body).expect("json serializes"),
        }),
    )
}

/// The callback record of a finished job. Hidden keys and tests go only
/// with `callback.include_hidden`, stderr only with `callback.include_stderr`.
pub(super) fn callback_record(cfg: &Config, event: &Event, result: &JobResult) -> Record {
    result_callback(
        cfg,
        event,
        result,
        student(cfg, event),
        Destination::Callback,
    )
}

/// The result's callback for `audience` (widened by the callback's
/// switches), stored under `dest`.
fn result_callback(
    cfg: &Config,
    event: &Event,
    result: &JobResult,
    audience: Audience,
    dest: Destination,
) -> Record {
    let shown = hidden::view(
        result,
        Audience {
            hidden: cfg.callback.include_hidden,
            stderr: true,
            ..audience
        },
    );
    let mut body = callback_body(cfg, event, &shown);
    if dest == Destination::ReleaseCallback {
        let m = body.as_object_mut().expect("object");
        m.insert(
            "idempotency_key".into(),
            json!(idempotency_key(&shown.job_id, dest)),
        );
        m.insert("released".into(), json!(true));
    }
    let body = serde_json::to_string(&body).expect("json serializes");
    Record::new(
        &shown.job_id,
        dest,
        &shown.project,
        &shown.student_sha,
        Payload::Callback(CallbackPayload { body }),
    )
}

/// The records that show a result again after its assignment's deadline,
/// `after_due_date` tests included: the email (when `email.url` is set)
/// and the callback (when `callback.url` is set).
pub(super) fn release_records(cfg: &Config, event: &Event, result: &JobResult) -> Vec<Record> {
    let released = Audience {
        after_due: true,
        ..Audience::STUDENT
    };
    let mut out = Vec::new();
    if !cfg.email.url.is_empty() {
        out.push(result_email(
            cfg,
            event,
            result,
            released,
            Destination::ReleaseEmail,
        ));
    }
    if !cfg.callback.url.is_empty() {
        out.push(result_callback(
            cfg,
            event,
            result,
            released,
            Destination::ReleaseCallback,
        ));
    }
    out
}

// ---- email ----------------------------------------------------------------

/// Addresses of the result's authors other than the pusher (from
/// `extra.authors`: the verified authors, with the addresses course policy
/// found: roster or GitLab's `public_email`), else
/// `email.address_template`; authors with neither are skipped.
fn co_author_addresses(cfg: &Config, event: &Event, result: &JobResult) -> Vec<String> {
    let pusher = event.pusher.username.as_deref().unwrap_or("");
    let Some(authors) = result.extra.get("authors").and_then(|a| a.as_array()) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for a in authors {
        let Some(user) = a.get("username").and_then(|u| u.as_str()) else {
            continue;
        };
        if user.eq_ignore_ascii_case(pusher) {
            continue;
        }
        let addr = a
            .get("email")
            .and_then(|e| e.as_str())
            .map(str::to_string)
            .or_else(|| {
                let t = &cfg.email.address_template;
                (!t.is_empty()).then(|| fill(t, &[("username", user)]))
            });
        if let Some(addr) = addr
            && usable(Some(&addr)).is_some()
            && !out.contains(&addr)
        {
            out.push(addr);
        }
    }
    out
}

/// The stdout shown in the message: at most `limit` bytes (cut at a
/// character boundary when it is UTF-8), with the truncation mark when the
/// run or this cap dropped output.
fn capped_stdout(out: &Captured, limit: u64) -> Captured {
    let mut keep = out.bytes.len().min(limit as usize);
    if keep < out.bytes.len()
        && let Err(e) = std::str::from_utf8(&out.bytes[..keep])
        && e.error_len().is_none()
    {
        // Cut inside a character of otherwise valid text: back off.
        keep = e.valid_up_to();
    }
    Captured {
        bytes: out.bytes[..keep].to_vec(),
        tail: out.tail.clone(),
        total: out.total,
        truncated: out.truncated || keep < out.bytes.len(),
    }
}

pub(super) fn message_domain(from: &str) -> String {
    from.parse::<Mailbox>()
        .map(|m| m.email.domain().to_string())
        .unwrap_or_else(|_| "labgrader.invalid".into())
}

/// Subject: project, short SHA and the grade or the failure.
fn subject(event: &Event, result: &JobResult) -> String {
    // Headers must stay on one line whatever a reason contains.
    let verdict: String = verdict(result)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!(
        "[labgrader] {} {}: {}",
        result.project,
        event.short_sha(),
        verdict
    )
}

/// The email record of `result`, from its student view (no hidden keys,
/// tests or lines, no stderr): the table of tests, then stdout.
pub(super) fn email_record(cfg: &Config, event: &Event, result: &JobResult) -> Record {
    result_email(cfg, event, result, student(cfg, event), Destination::Email)
}

/// The result's email as `audience` may see it, stored under `dest`.
fn result_email(
    cfg: &Config,
    event: &Event,
    result: &JobResult,
    audience: Audience,
    dest: Destination,
) -> Record {
    let full = result;
    let result = &hidden::view(full, audience);
    let shown = capped_stdout(&result.stdout, cfg.email.stdout_limit.bytes());
    let display = shown.display_bytes();
    let utf8 = std::str::from_utf8(&result.stdout.bytes).is_ok();
    let mention_hidden = cfg
        .assignments
        .get(&event.project.name)
        .and_then(|a| a.mention_hidden_tests)
        .unwrap_or(true);
    let unshown = table::unshown(full, result, mention_hidden);
    let mut text = match table::tests_table(result, unshown) {
        Some(t) if display.is_empty() => t,
        Some(t) => format!(
            "{t}
"
        ),
        None => String::new(),
    };
    text.push_str(&String::from_utf8_lossy(&display));
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    if !utf8 {
        text.push_str(
            "\n[labgrader: the output was not valid UTF-8; the text above shows \
             undecodable bytes as \u{FFFD}, the exact bytes are attached as stdout.txt]\n",
        );
    }
    if let Some(note) = ignored_authors_note(result) {
        text.push_str(&format!("\n[labgrader: {note}]\n"));
    }
    if let Some(url) = crate::web::link::result_url(cfg, &result.job_id) {
        text = format!("Your result page: {url}\n\n{text}");
    }
    text.push_str(&format!(
        "\n-- \nlabgrader job {}\nproject {} commit {}\n",
        result.job_id, result.project, result.student_sha
    ));
    let key = idempotency_key(&result.job_id, dest);
    let payload = EmailPayload {
        event_email: event.pusher.email.clone(),
        pusher_id: event.pusher.id,
        username: event.pusher.username.clone(),
        display_name: event.pusher.name.clone(),
        subject: if dest == Destination::ReleaseEmail {
            format!(
                "{} (all results, after the deadline)",
                subject(event, result)
            )
        } else {
            subject(event, result)
        },
        text,
        raw_stdout_hex: (!utf8).then(|| hex::encode(&shown.bytes)),
        message_id: format!(
            "<{}@{}>",
            key.replace(':', "."),
            message_domain(&cfg.email.from)
        ),
        date: if dest == Destination::ReleaseEmail {
            chrono::Utc::now()
        } else {
            result.ended_at
        },
        co_authors: co_author_addresses(cfg, event, result),
        delivered_to: Vec::new(),
    };
    Record::new(
        &result.job_id,
        dest,
        &result.project,
        &result.student_sha,
        Payload::Email(payload),
    )
}

/// The names in `labgrader.json` that were not credited, with the reasons
/// (`extra.ignored_authors`), as one line; `None` when there are none.
fn ignored_authors_note(result: &JobResult) -> Option<String> {
    let list = result.extra.get("ignored_authors")?.as_array()?;
    let items: Vec<String> = list
        .iter()
        .filter_map(|i| {
            let user = i.get("username")?.as_str()?;
            let why = i.get("reason")?.as_str()?;
            Some(format!("{user} ({why})"))
        })
        .collect();
    (!items.is_empty()).then(|| format!("not credited from labgrader.json: {}", items.join("; ")))
}

// ---- commit status --------------------------------------------------------

/// The final state for a result: `success` when graded, else `failed`.
fn final_state(result: &JobResult) -> CommitState {
    if result.status.is_success() {
        CommitState::Success
    } else {
        CommitState::Failed
    }
}

fn short_ref(r: &str) -> Option<String> {
    let r = r
        .strip_prefix("refs/heads/")
        .or_else(|| r.strip_prefix("refs/tags/"))
        .unwrap_or(r);
    (!r.is_empty()).then(|| r.to_string())
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max - '…'.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn status_payload(
    cfg: &Config,
    event: &Event,
    state: CommitState,
    description: String,
) -> StatusPayload {
    // An explicit `gitlab.target_url` wins; else the result page, when
    // the web view is on.
    let target_url = (!cfg.gitlab.target_url.is_empty())
        .then(|| {
            fill(
                &cfg.gitlab.target_url,
                &[
                    ("job_id", &event.job_id),
                    ("path", &event.project.path),
                    ("sha", &event.commit),
                ],
            )
        })
        .or_else(|| crate::web::link::result_url(cfg, &event.job_id));
    StatusPayload {
        project_id: event.project.id,
        project_path: event.project.path.clone(),
        sha: event.commit.clone(),
        git_ref: short_ref(&event.git_ref),
        state,
        name: cfg.gitlab.status_name.clone(),
        description: cut(&description, DESCRIPTION_MAX),
        target_url,
    }
}

/// The `pending` or `running` stage (or a final state without a grade).
pub(super) fn stage_status_record(cfg: &Config, event: &Event, state: CommitState) -> Record {
    let (dest, description) = match state {
        CommitState::Pending => (Destination::StatusPending, "queued for grading".to_string()),
        CommitState::Running => (Destination::StatusRunning, "grading".to_string()),
        CommitState::Success => (Destination::Status, "graded".to_string()),
        CommitState::Failed => (Destination::Status, "not graded".to_string()),
    };
    Record::new(
        &event.job_id,
        dest,
        &event.project.path,
        &event.commit,
        Payload::Status(status_payload(cfg, event, state, description)),
    )
}

/// The final status of a finished job, its description the grade or the failure.
pub(super) fn final_status_record(cfg: &Config, event: &Event, result: &JobResult) -> Record {
    // Students read commit statuses on GitLab: the text is the student
    // view's (a malformed results.json's problem may name a hidden test).
    let shown = hidden::view(result, student(cfg, event));
    let description = match table::status_line(&shown) {
        Some(line) if shown.status == crate::result::Status::Graded => line,
        _ => verdict(&shown),
    };
    let p = status_payload(cfg, event, final_state(result), description);
    Record::new(
        &event.job_id,
        Destination::Status,
        &event.project.path,
        &event.commit,
        Payload::Status(p),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn result(
        status: crate::result::Status,
        grade: Option<f64>,
        reason: Option<&str>,
    ) -> JobResult {
        JobResult {
            schema: crate::result::RESULT_SCHEMA,
            job_id: "01J".into(),
            project: "a/b".into(),
            git_ref: "refs/heads/main".into(),
            student_sha: "abc".into(),
            tests_sha: None,
            runner: "none".into(),
            image: None,
            image_id: None,
            limits: Some(crate::result::Limits {
                timeout: Duration::from_secs(90),
                memory: 1 << 20,
                pids: 1,
                output: 1 << 10,
                cpus: 1.0,
                file_size: 1 << 10,
                open_files: 8,
                disk: 1 << 30,
            }),
            received_at: chrono::Utc::now(),
            started_at: None,
            ended_at: chrono::Utc::now(),
            status,
            reason: reason.map(str::to_string),
            termination: None,
            grade_total: grade,
            summary: Default::default(),
            hidden: Default::default(),
            stdout: Default::default(),
            stderr: Default::default(),
            results: None,
            extra: Default::default(),
        }
    }

    #[test]
    fn verdicts_name_the_grade_or_the_failure() {
        use crate::result::Status;
        assert_eq!(
            verdict(&result(Status::Graded, Some(100.0), None)),
            "grade 100"
        );
        assert_eq!(
            verdict(&result(Status::Timeout, None, None)),
            "timed out after 90 s"
        );
        assert_eq!(
            verdict(&result(
                Status::Timeout,
                Some(40.0),
                Some("timed out after 120 s")
            )),
            "timed out after 120 s (grade 40)"
        );
        assert_eq!(
            verdict(&result(Status::NoGrade, None, None)),
            "no grade_total in the summary"
        );
    }

    /// A push event of `namespace/name` (job `01J`, commit `abc`).
    fn push_event(namespace: &str, name: &str) -> Event {
        serde_json::from_value(serde_json::json!({
            "schema": crate::event::EVENT_SCHEMA, "job_id": "01J",
            "received_at": "2026-12-06T10:00:00Z", "kind": "push", "source": "project_hook",
            "gitlab_event": "Push Hook",
            "project": {"path": format!("{namespace}/{name}"), "namespace": namespace, "name": name},
            "pusher": {}, "ref": "refs/heads/main", "before": "0", "after": "abc",
            "commit": "abc", "clone_url": "", "raw": null
        }))
        .unwrap()
    }

    #[test]
    fn a_commit_status_never_names_a_hidden_test() {
        use crate::result::Status;
        let problem =
            "results.json: tests[1] (`secret_case`): `score` 3 is more than its `max_score` 1";
        let mut r = result(Status::Error, None, Some(problem));
        r.extra.insert(
            hidden::RESULTS_ERROR_KEY.into(),
            serde_json::Value::String(problem.into()),
        );
        let ev = push_event("a", "b");
        let rec = final_status_record(&Config::default(), &ev, &r);
        let Payload::Status(p) = rec.payload else {
            panic!("not a status")
        };
        assert!(!p.description.contains("secret_case"), "{}", p.description);
    }

    #[test]
    fn with_the_web_view_on_every_delivery_links_the_result_page() {
        let (ev, r) = tests_result();
        let mut cfg = Config::default();
        let links = |cfg: &Config| {
            let Payload::Email(mail) = email_record(cfg, &ev, &r).payload else {
                panic!("not an email")
            };
            let Payload::Callback(cb) = callback_record(cfg, &ev, &r).payload else {
                panic!("not a callback")
            };
            let Payload::Callback(stage) =
                stage_callback_record(cfg, &ev, JobStage::Queued).payload
            else {
                panic!("not a callback")
            };
            let Payload::Status(st) = final_status_record(cfg, &ev, &r).payload else {
                panic!("not a status")
            };
            let body: serde_json::Value = serde_json::from_str(&cb.body).unwrap();
            let stage: serde_json::Value = serde_json::from_str(&stage.body).unwrap();
            (
                mail.text,
                body["result_url"].as_str().map(str::to_string),
                stage["result_url"].as_str().map(str::to_string),
                st.target_url,
            )
        };
        let (text, cb, stage, target) = links(&cfg);
        assert!(!text.contains("/jobs/"), "{text}");
        assert_eq!((cb, stage, target), (None, None, None));
        cfg.web.public_url = "https://grader.example.edu".into();
        cfg.secrets.web_secret = Some(crate::config::Secret::new("0123456789abcdef0123"));
        let url = crate::web::link::result_url(&cfg, &r.job_id).unwrap();
        let (text, cb, stage, target) = links(&cfg);
        assert!(
            text.starts_with(&format!("Your result page: {url}\n")),
            "{text}"
        );
        assert_eq!(cb.as_deref(), Some(url.as_str()));
        assert_eq!(stage.as_deref(), Some(url.as_str()));
        assert_eq!(target.as_deref(), Some(url.as_str()));
        // An explicit target_url still wins on the commit status.
        cfg.gitlab.target_url = "https://lms.example.edu/{job_id}".into();
        let (_, _, _, target) = links(&cfg);
        assert_eq!(
            target,
            Some(format!("https://lms.example.edu/{}", r.job_id))
        );
    }

    /// A graded result with one visible, one hidden and one
    /// `after_due_date` test, for an event of assignment `lab1`.
    fn tests_result() -> (Event, JobResult) {
        use crate::results::{TestResults, TestRow, Visibility};
        let row = |name: &str, score: f64, vis: Visibility| TestRow {
            name: name.into(),
            number: None,
            score: Some(score),
            max_score: Some(5.0),
            visibility: vis,
            status: None,
            output: Some(format!("{name} says hi")),
            tags: vec![],
        };
        let mut r = result(crate::result::Status::Graded, Some(10.0), None);
        r.results = Some(TestResults {
            grade_total: 10.0,
            score: None,
            output: None,
            stdout_visibility: Visibility::Visible,
            execution_time: None,
            tests: vec![
                row("shown", 5.0, Visibility::Visible),
                row("secret_case", 0.0, Visibility::Hidden),
                row("later_case", 5.0, Visibility::AfterDueDate),
            ],
            source: None,
        });
        let ev = push_event("alice", "lab1");
        (ev, r)
    }

    fn with_deadline(when: &str) -> Config {
        Config::from_toml(
            &format!("[assignments.lab1]\ndeadline = \"{when}\"\n"),
            None,
        )
        .unwrap()
    }

    #[test]
    fn students_see_visible_tests_and_after_due_ones_only_after_the_deadline() {
        let (ev, r) = tests_result();
        for (cfg, later_shown) in [
            (Config::default(), false),
            (with_deadline("2999-01-01T00:00:00Z"), false),
            (with_deadline("2000-01-01T00:00:00Z"), true),
        ] {
            let Payload::Email(mail) = email_record(&cfg, &ev, &r).payload else {
                panic!("not an email")
            };
            assert!(mail.text.starts_with("Tests: "), "{}", mail.text);
            assert!(mail.text.contains("PASS  shown"), "{}", mail.text);
            assert!(!mail.text.contains("secret_case"), "{}", mail.text);
            assert!(
                mail.text.contains("(1 hidden test: for staff only)"),
                "{}",
                mail.text
            );
            assert_eq!(
                mail.text.contains("later_case"),
                later_shown,
                "{}",
                mail.text
            );
            assert_eq!(
                mail.text
                    .contains("(1 more test is shown after the deadline)"),
                !later_shown,
                "{}",
                mail.text
            );
            let Payload::Status(st) = final_status_record(&cfg, &ev, &r).payload else {
                panic!("not a status")
            };
            let want = if later_shown {
                "2/2 tests · 10"
            } else {
                "1/1 tests · 10"
            };
            assert_eq!(st.description, want);
            let Payload::Callback(cb) = callback_record(&cfg, &ev, &r).payload else {
                panic!("not a callback")
            };
            let body: serde_json::Value = serde_json::from_str(&cb.body).unwrap();
            let names: Vec<&str> = body["tests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["name"].as_str().unwrap())
                .collect();
            let want: &[&str] = if later_shown {
                &["shown", "later_case"]
            } else {
                &["shown"]
            };
            assert_eq!(names, want);
        }
        // Staff may ask that hidden tests are not even counted.
        let quiet =
            Config::from_toml("[assignments.lab1]\nmention_hidden_tests = false\n", None).unwrap();
        let Payload::Email(mail) = email_record(&quiet, &ev, &r).payload else {
            panic!("not an email")
        };
        assert!(!mail.text.contains("hidden"), "{}", mail.text);
        // A callback that includes hidden results gets every test.
        let mut cfg = Config::default();
        cfg.callback.include_hidden = true;
        let Payload::Callback(cb) = callback_record(&cfg, &ev, &r).payload else {
            panic!("not a callback")
        };
        assert!(cb.body.contains("secret_case") && cb.body.contains("later_case"));
    }

    #[test]
    fn hidden_addresses_are_not_used() {
        assert!(usable(Some("[REDACTED]")).is_none());
        assert!(usable(Some("")).is_none());
        assert!(usable(Some("not an address")).is_none());
        assert!(usable(Some("alice@example.edu")).is_some());
    }

    #[test]
    fn cap_backs_off_to_a_character_boundary() {
        let c = Captured {
            bytes: "aé".as_bytes().to_vec(),
            total: 3,
            ..Captured::default()
        };
        let shown = capped_stdout(&c, 2);
        assert_eq!(shown.bytes, b"a");
        assert!(shown.truncated);
        assert_eq!(shown.total, 3);
    }

    #[test]
    fn refs_are_shortened() {
        assert_eq!(short_ref("refs/heads/main").as_deref(), Some("main"));
        assert_eq!(short_ref("refs/tags/submit-1").as_deref(), Some("submit-1"));
    }

    #[test]
    fn descriptions_are_cut_to_gitlabs_limit() {
        let long = "é".repeat(300);
        let c = cut(&long, DESCRIPTION_MAX);
        assert!(c.len() <= DESCRIPTION_MAX);
        assert!(c.ends_with('…'));
    }
}
