//! Hidden results: what a student (or a callback without
//! `include_hidden = true`) may see of a [`JobResult`].
//!
//! Owns one rule: keys under the `[hidden]` section of the summary INI are
//! for staff. They live in `JobResult::hidden`; the views built here empty
//! that map AND cut the `[hidden]` section out of every `<summary>` block
//! of the stdout that goes with them (the student reads stdout, and
//! `test_all` printed the hidden keys there). stderr is staff-only too.
//! Nothing here sends anything; deliveries call these before they do.

use crate::result::JobResult;
use crate::sandbox::Captured;

/// The result as a student may see it (email, commit status text):
/// no hidden keys, hidden summary lines cut from stdout, no stderr.
pub fn student_view(result: &JobResult) -> JobResult {
    callback_view(result, false, false)
}

/// The result for a callback: hidden keys and stderr only when the
/// callback's config includes them.
pub fn callback_view(result: &JobResult, include_hidden: bool, include_stderr: bool) -> JobResult {
    let mut r = result.clone();
    if !include_hidden {
        r.hidden.clear();
        r.stdout = Captured {
            bytes: redact_hidden_summary(&r.stdout.bytes),
            tail: redact_hidden_tail(&r.stdout.tail),
            total: r.stdout.total,
            truncated: r.stdout.truncated,
        };
    }
    if !include_stderr {
        r.stderr = Captured::default();
    }
    r
}

/// Stdout with the `[hidden]` section of every `<summary>` block removed
/// (from the `[hidden]` line up to the next `[section]` line or
/// `</summary>`; an unclosed block is cut to the end). Everything else is
/// kept byte for byte. Lines are compared trimmed; section names without
/// case.
pub fn redact_hidden_summary(stdout: &[u8]) -> Vec<u8> {
    redact(stdout, false)
}

/// The same for the tail kept after a truncation: it may begin inside a
/// summary block whose `[hidden]` line was dropped, so when a
/// `</summary>` comes before any `<summary>`, its lines up to the next
/// section header or `</summary>` are cut (they may be hidden keys).
pub fn redact_hidden_tail(tail: &[u8]) -> Vec<u8> {
    let mut starts_inside = false;
    for line in tail.split(|&b| b == b'\n') {
        let t = trim(line);
        if t.eq_ignore_ascii_case(b"<summary>") {
            break;
        }
        if t.eq_ignore_ascii_case(b"</summary>") {
            starts_inside = true;
            break;
        }
    }
    redact(tail, starts_inside)
}

fn redact(stdout: &[u8], starts_inside: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(stdout.len());
    let mut in_summary = starts_inside;
    let mut hiding = starts_inside;
    for line in stdout.split_inclusive(|&b| b == b'\n') {
        let t = trim(line);
        if !in_summary {
            if t.eq_ignore_ascii_case(b"<summary>") {
                in_summary = true;
            }
            out.extend_from_slice(line);
            continue;
        }
        if t.eq_ignore_ascii_case(b"</summary>") {
            in_summary = false;
            hiding = false;
            out.extend_from_slice(line);
            continue;
        }
        if t.starts_with(b"[") && t.ends_with(b"]") {
            hiding = trim(&t[1..t.len() - 1]).eq_ignore_ascii_case(b"hidden");
        }
        if !hiding {
            out.extend_from_slice(line);
        }
    }
    out
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(redact_hidden_tail(tail), b"</summary>\nafter\n".to_vec());
        let tail = b"x\n<summary>\ngrade_total = 1\n[hidden]\ns = 2\n</summary>\n";
        assert_eq!(
            redact_hidden_tail(tail),
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
    fn callback_view_follows_its_switches() {
        let r = result();
        let v = callback_view(&r, true, true);
        assert_eq!(v, r);
        let v = callback_view(&r, false, true);
        assert!(v.hidden.is_empty());
        assert_eq!(v.stderr, r.stderr);
    }
}
