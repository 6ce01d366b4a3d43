//! The per-test table of an email: one line per test a student may see
//! (mark, name, points / max, the first line of its feedback), then the
//! harness's overall `output`, and the
//! one-line count a commit status shows (`7/10 tests · 70`).
//!
//! Pure text from a result already through [`super::hidden::view`]: it
//! never decides what a student may see, only how it reads. Test names
//! and outputs come from the course's harness and may hold anything, so
//! control characters are replaced and lengths are capped.

use crate::result::{JobResult, format_grade};
use crate::results::TestRow;
use crate::text::one_line;

/// Characters of a name kept before it is cut (with `…`).
const NAME_MAX: usize = 32;
/// Characters of feedback kept after the points before it is cut.
const FEEDBACK_MAX: usize = 72;
/// Lines of the results' overall `output` shown under the table.
const OUTPUT_LINES: usize = 40;

/// What the student's view left out, counted on the full result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unshown {
    /// Tests marked `hidden` (0 when staff asked not to mention them).
    pub hidden: usize,
    /// Tests marked `after_due_date`, not yet shown.
    pub after_due: usize,
}

/// The table for `shown` (a student's view), or `None` when its result
/// has no tests. Ends with a newline.
pub fn tests_table(shown: &JobResult, unshown: Unshown) -> Option<String> {
    let res = shown.results.as_ref()?;
    if res.tests.is_empty() && unshown == Unshown::default() {
        return None;
    }
    let rows = &res.tests;
    let names: Vec<String> = rows.iter().map(|t| one_line(&t.name, NAME_MAX)).collect();
    let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    let points: Vec<String> = rows.iter().map(points).collect();
    let pwidth = points.iter().map(String::len).max().unwrap_or(0);
    let mut out = format!("Tests: {}\n", count_line(rows));
    for ((t, name), pts) in rows.iter().zip(&names).zip(&points) {
        let mark = match t.passed() {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "    ",
        };
        let feedback = t
            .output
            .as_deref()
            .and_then(|o| o.lines().map(str::trim).find(|l| !l.is_empty()))
            .map(|l| one_line(l, FEEDBACK_MAX))
            .unwrap_or_default();
        let line = format!("  {mark}  {name:<width$}  {pts:>pwidth$}  {feedback}");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if unshown.after_due > 0 {
        out.push_str(&format!(
            "  ({} more {} shown after the deadline)\n",
            unshown.after_due,
            plural(unshown.after_due, "test is", "tests are")
        ));
    }
    if unshown.hidden > 0 {
        out.push_str(&format!(
            "  ({} hidden {}: for staff only)\n",
            unshown.hidden,
            plural(unshown.hidden, "test", "tests")
        ));
    }
    // The harness's word on the whole submission (results.json `output`).
    if let Some(text) = res
        .output
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        out.push('\n');
        for line in text.lines().take(OUTPUT_LINES) {
            out.push_str(&one_line(line, 200));
            out.push('\n');
        }
        if text.lines().count() > OUTPUT_LINES {
            out.push_str(&format!("[labgrader: cut at {OUTPUT_LINES} lines]\n"));
        }
    }
    Some(out)
}

/// `7/10 tests · 70`: the passing tests of `shown` and its grade; `None`
/// without tests.
pub fn status_line(shown: &JobResult) -> Option<String> {
    let rows = &shown.results.as_ref()?.tests;
    if rows.is_empty() {
        return None;
    }
    let passed = rows.iter().filter(|t| t.passed() == Some(true)).count();
    let grade = shown.grade_total.map(format_grade).unwrap_or_default();
    Some(format!("{passed}/{} tests · {grade}", rows.len()))
}

/// What was left out of a student's view of `full`.
pub fn unshown(full: &JobResult, shown: &JobResult, mention_hidden: bool) -> Unshown {
    use crate::results::Visibility;
    let count = |r: &JobResult, v: Visibility| {
        r.results.as_ref().map_or(0, |res| {
            res.tests.iter().filter(|t| t.visibility == v).count()
        })
    };
    Unshown {
        hidden: if mention_hidden {
            count(full, Visibility::Hidden) - count(shown, Visibility::Hidden)
        } else {
            0
        },
        after_due: count(full, Visibility::AfterDueDate) - count(shown, Visibility::AfterDueDate),
    }
}

fn count_line(rows: &[TestRow]) -> String {
    let passed = rows.iter().filter(|t| t.passed() == Some(true)).count();
    let score: f64 = rows.iter().filter_map(|t| t.score).sum();
    let max: f64 = rows.iter().filter_map(|t| t.max_score).sum();
    let mut s = format!("{passed} of {} passed", rows.len());
    if max > 0.0 {
        s.push_str(&format!(
            ", {} of {} points",
            format_grade(score),
            format_grade(max)
        ));
    }
    s
}

fn points(t: &TestRow) -> String {
    match (t.score, t.max_score) {
        (Some(s), Some(m)) => format!("{} / {}", format_grade(s), format_grade(m)),
        (Some(s), None) => format_grade(s),
        (None, Some(m)) => format!("- / {}", format_grade(m)),
        (None, None) => String::new(),
    }
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{TestResults, Visibility};

    fn row(name: &str, score: f64, max: f64, output: &str) -> TestRow {
        TestRow {
            name: name.into(),
            number: None,
            score: Some(score),
            max_score: Some(max),
            visibility: Visibility::Visible,
            status: None,
            output: (!output.is_empty()).then(|| output.into()),
            tags: vec![],
        }
    }

    fn result(rows: Vec<TestRow>, grade: f64) -> JobResult {
        let mut r: JobResult = serde_json::from_value(serde_json::json!({
            "schema": 1, "job_id": "J", "project": "a/b", "git_ref": "r", "student_sha": "s",
            "tests_sha": null, "runner": "none", "image": null, "image_id": null,
            "limits": null, "received_at": "2026-12-06T10:00:00Z", "started_at": null,
            "ended_at": "2026-12-06T10:00:01Z", "status": "graded", "reason": null,
            "termination": null, "grade_total": grade, "summary": {}, "hidden": {},
            "stdout": {"total": 0, "truncated": false}, "stderr": {"total": 0, "truncated": false}
        }))
        .unwrap();
        r.results = Some(TestResults {
            grade_total: grade,
            score: None,
            output: None,
            stdout_visibility: Visibility::Visible,
            execution_time: None,
            tests: rows,
            source: None,
        });
        r
    }

    #[test]
    fn the_table_lines_up_and_says_what_is_not_shown() {
        let r = result(
            vec![
                row("add", 25.0, 25.0, "PASS add: calc.sh 2 + 3 = 5\nmore"),
                row("divide", 0.0, 25.0, "\n  FAIL divide: 7 / 2 should print 3"),
            ],
            25.0,
        );
        let t = tests_table(
            &r,
            Unshown {
                hidden: 1,
                after_due: 2,
            },
        )
        .unwrap();
        assert_eq!(
            t,
            "Tests: 1 of 2 passed, 25 of 50 points\n\
             \x20 PASS  add     25 / 25  PASS add: calc.sh 2 + 3 = 5\n\
             \x20 FAIL  divide   0 / 25  FAIL divide: 7 / 2 should print 3\n\
             \x20 (2 more tests are shown after the deadline)\n\
             \x20 (1 hidden test: for staff only)\n"
        );
        assert_eq!(status_line(&r).unwrap(), "1/2 tests · 25");
    }

    #[test]
    fn hostile_names_and_outputs_stay_on_their_line() {
        let long = "x".repeat(500);
        let r = result(
            vec![row(
                "evil\r\nSubject: hi",
                1.0,
                1.0,
                &format!("a\tb\x1b[31m{long}"),
            )],
            1.0,
        );
        let t = tests_table(&r, Unshown::default()).unwrap();
        assert_eq!(t.lines().count(), 2, "{t}");
        assert!(!t.contains('\r') && !t.contains('\x1b'), "{t:?}");
        assert!(t.lines().all(|l| l.chars().count() < 140), "{t}");
    }

    #[test]
    fn no_tests_no_table() {
        let mut r = result(vec![], 5.0);
        assert_eq!(tests_table(&r, Unshown::default()), None);
        assert_eq!(status_line(&r), None);
        r.results = None;
        assert_eq!(tests_table(&r, Unshown::default()), None);
    }
}
