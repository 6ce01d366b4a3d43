//! Hidden results: what a student (or a callback without
//! `include_hidden = true`) may see of a [`JobResult`].
//!
//! Lives beside the renderer ([`super::render`]), which applies it to a
//! result before the callback body or the email is made from it.
//!
//! Owns one rule: what staff marked hidden stays with staff. That is the
//! keys under the `[hidden]` section of the summary INI (kept in
//! `JobResult::hidden`; the views built here empty that map AND cut the
//! `[hidden]` section out of every `<summary>` block of the stdout that
//! goes with them, since `test_all` printed them there), the tests of
//! `results.json` whose visibility is `hidden`, or `after_due_date` until
//! the assignment's deadline (with its grace) has passed, and stdout itself
//! when `results.json` says `stdout_visibility` is one of those; what
//! was wrong with a malformed `results.json` (it may name a hidden test)
//! is replaced in the reason. stderr is staff-only too. Blocks are found
//! by the grade parser's own finder ([`summary::blocks`],
//! [`summary::block_lines`], [`Line`]), so a block the parser reads is a
//! block filtered here, wherever it starts on a line.
//! Nothing here sends or writes anything; it never decides a grade.

use std::ops::Range;

use crate::result::Captured;
use crate::result::JobResult;
use crate::results::Visibility;
use crate::summary::{self, Line};

/// Key of `JobResult::extra` holding what was wrong with `results.json`
/// (staff only: it may name a hidden test).
pub const RESULTS_ERROR_KEY: &str = "results_error";
/// What students read instead.
pub const RESULTS_ERROR_FOR_STUDENTS: &str =
    "the course's test_all wrote a results.json that cannot be read (staff have the details)";

/// Who reads a view of a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Audience {
    /// Staff-only parts too: hidden keys, tests and lines, the results
    /// problem as it is (a callback with `include_hidden`).
    pub hidden: bool,
    /// stderr (a callback with `include_stderr`).
    pub stderr: bool,
    /// The assignment's deadline (with its grace) has passed: tests (and
    /// stdout) marked `after_due_date` are shown.
    pub after_due: bool,
}

impl Audience {
    /// A student before the deadline: email, commit status text.
    pub const STUDENT: Audience = Audience {
        hidden: false,
        stderr: false,
        after_due: false,
    };

    /// Whether a test (or stdout) of visibility `v` is shown.
    pub fn sees(self, v: Visibility) -> bool {
        self.hidden || v == Visibility::Visible || (self.after_due && v == Visibility::AfterDueDate)
    }
}

/// The result as a student may see it before the deadline (email, commit
/// status text): no hidden keys or tests, hidden summary lines cut from
/// stdout, no stderr.
pub fn student_view(result: &JobResult) -> JobResult {
    view(result, Audience::STUDENT)
}

/// The result as `audience` may see it.
pub fn view(result: &JobResult, audience: Audience) -> JobResult {
    let mut r = result.clone();
    if !audience.hidden {
        r.hidden.clear();
        if let Some(serde_json::Value::String(problem)) = r.extra.remove(RESULTS_ERROR_KEY) {
            r.reason = r
                .reason
                .map(|why| why.replace(&problem, RESULTS_ERROR_FOR_STUDENTS));
        }
        r.stdout = redact_captured(&r.stdout);
        if let Some(res) = r.results.as_mut() {
            res.tests.retain(|t| audience.sees(t.visibility));
            if !audience.sees(res.stdout_visibility) {
                r.stdout = Captured {
                    total: r.stdout.total,
                    truncated: r.stdout.truncated,
                    ..Captured::default()
                };
            }
        }
    }
    if !audience.stderr {
        r.stderr = Captured::default();
    }
    r
}

/// Captured stdout with the `[hidden]` sections cut from its head and its
/// tail. When nothing was dropped between them they are one stream (a block
/// may run from one into the other); otherwise the tail may begin inside a
/// block whose section is unknown, and its lines up to the next section
/// header or `</summary>` are cut.
pub fn redact_captured(c: &Captured) -> Captured {
    let (bytes, tail) = if c.tail.is_empty() {
        (redact_hidden_summary(&c.bytes), Vec::new())
    } else if summary::dropped(c) == 0 {
        let mut all = c.bytes.clone();
        all.extend_from_slice(&c.tail);
        let cuts = hidden_ranges(&all, false);
        let split = c.bytes.len();
        (
            keep_outside(&all[..split], &cuts, 0),
            keep_outside(&all[split..], &cuts, split),
        )
    } else {
        let head_open = summary::blocks(&c.bytes).last().is_some_and(|b| !b.closed);
        (
            redact_hidden_summary(&c.bytes),
            redact_tail(&c.tail, head_open),
        )
    };
    Captured {
        bytes,
        tail,
        total: c.total,
        truncated: c.truncated,
    }
}

/// Stdout with the `[hidden]` section of every `<summary>` block removed
/// (from the `[hidden]` line up to the next section header or the block's
/// end; an unclosed block is cut to the end). Everything else is kept byte
/// for byte.
pub fn redact_hidden_summary(stdout: &[u8]) -> Vec<u8> {
    keep_outside(stdout, &hidden_ranges(stdout, false), 0)
}

/// The same for a tail kept after bytes were dropped: it may begin inside
/// a summary block whose `[hidden]` line was dropped, so when its first
/// marker is `</summary>` (or it has none and the head ended inside a
/// block: `head_open`), its lines up to the next section header or
/// `</summary>` are cut (they may be hidden keys).
pub fn redact_tail(tail: &[u8], head_open: bool) -> Vec<u8> {
    keep_outside(tail, &hidden_ranges(tail, head_open), 0)
}

/// Byte ranges of `bytes` in `[hidden]` sections of summary blocks. When
/// `bytes` begins inside a block (its first marker is `</summary>`, or it
/// has no marker and `open_at_start`), that block's section is unknown and
/// its lines count as hidden until a section header.
fn hidden_ranges(bytes: &[u8], open_at_start: bool) -> Vec<Range<usize>> {
    let blocks = summary::blocks(bytes);
    let mut regions: Vec<(Range<usize>, bool)> = Vec::new();
    if let Some(lead) = summary::leading_content(bytes) {
        regions.push((lead, true));
    } else if open_at_start && blocks.is_empty() {
        regions.push((0..bytes.len(), true));
    }
    regions.extend(blocks.into_iter().map(|b| (b.content, false)));
    let mut cuts = Vec::new();
    for (content, mut hiding) in regions {
        for line in summary::block_lines(bytes, content) {
            let kind = Line::classify(&bytes[line.clone()]);
            if matches!(kind, Line::Section { .. }) {
                hiding = kind.is_hidden_header();
            }
            if hiding {
                cuts.push(line);
            }
        }
    }
    cuts
}

/// The bytes of `part` (which starts at `offset` of the stream `cuts`
/// refer to) outside every cut.
fn keep_outside(part: &[u8], cuts: &[Range<usize>], offset: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(part.len());
    let end = offset + part.len();
    let mut at = offset;
    for c in cuts {
        let (s, e) = (c.start.clamp(offset, end), c.end.clamp(offset, end));
        if s >= e {
            continue;
        }
        out.extend_from_slice(&part[at - offset..s - offset]);
        at = e;
    }
    out.extend_from_slice(&part[at - offset..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Staff without stderr (a callback with `include_hidden` only).
    const STAFF: Audience = Audience {
        hidden: true,
        stderr: false,
        after_due: false,
    };
    use crate::result::{RESULT_SCHEMA, Status};
    use chrono::Utc;
    use std::collections::BTreeMap;

    const OUT: &str = "running tests\n\
        <summary>\n\
        grade_total = 87.5\n\
        passed = 7\n\
        [hidden]\n\
        secret_case = failed\n\
        hidden_grade = 3\n\
        [public]\n\
        note = ok\n\
        </summary>\n\
        bye\n";

    #[test]
    fn hidden_section_is_cut_from_stdout() {
        let got = String::from_utf8(redact_hidden_summary(OUT.as_bytes())).unwrap();
        assert_eq!(
            got,
            "running tests\n<summary>\ngrade_total = 87.5\npassed = 7\n[public]\nnote = ok\n</summary>\nbye\n"
        );
    }

    #[test]
    fn tail_starting_inside_a_summary_is_cut_to_the_end_of_it() {
        let tail = b"et = 3\nhidden_grade = 9\n</summary>\nafter\n";
        assert_eq!(redact_tail(tail, false), b"</summary>\nafter\n".to_vec());
        let tail = b"x\n<summary>\ngrade_total = 1\n[hidden]\ns = 2\n</summary>\n";
        assert_eq!(
            redact_tail(tail, false),
            b"x\n<summary>\ngrade_total = 1\n</summary>\n".to_vec()
        );
    }

    #[test]
    fn hidden_section_cut_until_summary_end_and_unclosed() {
        let s = "<summary>\r\n grade_total=1\r\n [ Hidden ] \r\nx=1\r\n</summary>\r\n[hidden]\r\nnot in summary\r\n<summary>\n[hidden]\ny=2";
        let got = String::from_utf8(redact_hidden_summary(s.as_bytes())).unwrap();
        assert_eq!(
            got,
            "<summary>\r\n grade_total=1\r\n</summary>\r\n[hidden]\r\nnot in summary\r\n<summary>\n"
        );
    }

    fn result() -> JobResult {
        let now = Utc::now();
        JobResult {
            schema: RESULT_SCHEMA,
            job_id: "j1".into(),
            project: "alice/lab1".into(),
            git_ref: "refs/heads/main".into(),
            student_sha: "a".repeat(40),
            tests_sha: None,
            runner: "none".into(),
            image: None,
            image_id: None,
            limits: None,
            received_at: now,
            started_at: Some(now),
            ended_at: now,
            status: Status::Graded,
            reason: None,
            termination: None,
            grade_total: Some(87.5),
            summary: BTreeMap::from([("passed".into(), "7".into())]),
            hidden: BTreeMap::from([("hidden_grade".into(), "3".into())]),
            stdout: Captured::from_bytes(OUT.as_bytes().to_vec(), 1 << 20),
            stderr: Captured::from_bytes(b"staff only\n".to_vec(), 1 << 20),
            results: None,
            extra: BTreeMap::new(),
        }
    }

    #[test]
    fn student_view_has_no_hidden_keys_and_no_stderr() {
        let v = student_view(&result());
        assert!(v.hidden.is_empty());
        assert_eq!(v.summary["passed"], "7");
        let out = String::from_utf8(v.stdout.display_bytes()).unwrap();
        assert!(!out.contains("hidden_grade"), "{out}");
        assert!(!out.contains("secret_case"), "{out}");
        assert!(out.contains("passed = 7"));
        assert!(v.stderr.bytes.is_empty());
        let json = serde_json::to_string(&v).unwrap();
        assert!(!json.contains("hidden_grade"), "{json}");
    }

    #[test]
    fn views_follow_their_switches() {
        let r = result();
        let v = view(
            &r,
            Audience {
                hidden: true,
                stderr: true,
                after_due: false,
            },
        );
        assert_eq!(v, r);
        let v = view(
            &r,
            Audience {
                hidden: false,
                stderr: true,
                after_due: false,
            },
        );
        assert!(v.hidden.is_empty());
        assert_eq!(v.stderr, r.stderr);
    }

    #[test]
    fn a_block_after_student_text_on_the_same_line_is_filtered_as_it_is_graded() {
        // The parser grades this block; the filter used to look for
        // `<summary>` alone on a line and let the hidden keys through.
        let out = b"student says hi<summary>\ngrade_total = 3\n[hidden]\nsecret = 42\n</summary>\n";
        let s = crate::summary::parse(out).unwrap();
        assert_eq!(s.hidden["secret"], "42");
        let shown = redact_hidden_summary(out);
        assert_eq!(
            shown,
            b"student says hi<summary>\ngrade_total = 3\n</summary>\n".to_vec()
        );
        // Even with the header on the marker's line, and the close on a key's.
        let out = b"x<summary>[hidden]\nsecret = 42</summary>y";
        assert_eq!(
            crate::summary::parse(b"x<summary>grade_total=1\n[hidden]\nsecret = 42</summary>y")
                .unwrap()
                .hidden["secret"],
            "42"
        );
        assert_eq!(
            redact_hidden_summary(out),
            b"x<summary></summary>y".to_vec()
        );
    }

    #[test]
    fn a_block_running_from_the_head_into_the_tail_is_filtered_as_one() {
        let stream = b"<summary>\ngrade_total = 3\n[hidden]\nsecret = 42\nother = 1\n</summary>\n";
        let split = stream.len() - 20; // inside `other = 1`
        let c = Captured {
            bytes: stream[..split].to_vec(),
            tail: stream[split..].to_vec(),
            total: stream.len() as u64,
            truncated: true,
        };
        let v = redact_captured(&c);
        let shown = [v.bytes.clone(), v.tail.clone()].concat();
        assert_eq!(shown, b"<summary>\ngrade_total = 3\n</summary>\n".to_vec());
        // With bytes dropped in between and no marker in the tail, a head
        // ending inside a block hides the tail up to a section header.
        let c = Captured {
            bytes: b"<summary>\n[hidden]\na = 1\n".to_vec(),
            tail: b"b = 2\n[public]\nc = 3\n".to_vec(),
            total: 1000,
            truncated: true,
        };
        let v = redact_captured(&c);
        assert_eq!(v.bytes, b"<summary>\n".to_vec());
        assert_eq!(v.tail, b"[public]\nc = 3\n".to_vec());
    }

    #[test]
    fn hidden_and_later_tests_and_hidden_stdout_stay_with_staff() {
        use crate::results::{TestResults, TestRow, Visibility};
        let row = |name: &str, visibility| TestRow {
            name: name.into(),
            number: None,
            score: Some(1.0),
            max_score: Some(1.0),
            visibility,
            status: None,
            output: Some(format!("{name} output")),
            tags: vec![],
        };
        let mut r = result();
        r.results = Some(TestResults {
            grade_total: 3.0,
            score: None,
            output: None,
            stdout_visibility: Visibility::Visible,
            execution_time: None,
            source: None,
            tests: vec![
                row("shown", Visibility::Visible),
                row("secret", Visibility::Hidden),
                row("later", Visibility::AfterDueDate),
            ],
        });
        let v = student_view(&r);
        let json = serde_json::to_string(&v).unwrap();
        assert!(json.contains("shown output"), "{json}");
        assert!(
            !json.contains("secret") && !json.contains("later"),
            "{json}"
        );
        assert_eq!(view(&r, STAFF).results, r.results);
        r.results.as_mut().unwrap().stdout_visibility = Visibility::Hidden;
        let v = student_view(&r);
        assert!(v.stdout.display_bytes().is_empty());
        assert_eq!(v.stdout.total, r.stdout.total);
    }

    #[test]
    fn a_malformed_results_problem_stays_with_staff() {
        let problem =
            "results.json: tests[1] (`secret_case`): `score` 12 is more than its `max_score` 10";
        let mut r = result();
        r.status = Status::Error;
        r.reason = Some(format!("{problem}; test_all exited with status 0"));
        r.extra.insert(
            RESULTS_ERROR_KEY.into(),
            serde_json::Value::String(problem.into()),
        );
        let v = student_view(&r);
        let json = serde_json::to_string(&v).unwrap();
        assert!(!json.contains("secret_case"), "{json}");
        assert_eq!(
            v.reason.as_deref(),
            Some(format!("{RESULTS_ERROR_FOR_STUDENTS}; test_all exited with status 0").as_str())
        );
        assert_eq!(view(&r, STAFF).reason, r.reason);
    }
}
