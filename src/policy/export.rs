//! Grade exports: which of a student's jobs counts (`best`, `latest`,
//! `latest-on-time`) and how rows are written for a spreadsheet or an LMS.
//!
//! Owns the pure selection over [`GradeRow`]s, the JSON writer and the one
//! CSV writer of every grade export ([`csv_cell`], [`write_csv_record`]:
//! this module's `--policy` exports and the gradebook's own). It never
//! opens the gradebook (the caller turns gradebook rows into `GradeRow`s:
//! one per job and author). Cells hold text students chose (names in
//! manifests, summary values printed by code they control), so the CSV
//! writer quotes every cell that needs it and defuses spreadsheet formulas:
//! a cell starting with `=`, `+`, `-`, `@`, tab or carriage return gets a
//! leading apostrophe unless it is a number.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::result::Status;

/// Which job counts for a student.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportPolicy {
    /// The highest grade (ties: the later job). A student with no grade at
    /// all gets their latest job with an empty grade.
    Best,
    /// The latest submission, whatever its grade (empty when it has none).
    Latest,
    /// The latest submission not flagged late; students with none are left out.
    LatestOnTime,
}

impl FromStr for ExportPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "best" => Ok(ExportPolicy::Best),
            "latest" => Ok(ExportPolicy::Latest),
            "latest-on-time" => Ok(ExportPolicy::LatestOnTime),
            other => Err(format!(
                "unknown export policy `{other}`; expected best, latest or latest-on-time"
            )),
        }
    }
}

/// One job as seen by one author (a team's job gives one row per author).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradeRow {
    pub username: String,
    /// The assignment (the student repository's name): a student's rows
    /// of different assignments are never merged.
    #[serde(default)]
    pub assignment: String,
    pub email: Option<String>,
    pub grade: Option<f64>,
    pub job: String,
    pub commit: String,
    /// The hook's receipt time.
    pub submitted_at: DateTime<Utc>,
    pub late: bool,
    pub status: Status,
    /// Summary keys other than `grade_total`.
    #[serde(default)]
    pub summary: BTreeMap<String, String>,
    /// `[hidden]` summary keys (staff exports only).
    #[serde(default)]
    pub hidden: BTreeMap<String, String>,
}

fn newer(a: &GradeRow, b: &GradeRow) -> bool {
    (a.submitted_at, &a.job) > (b.submitted_at, &b.job)
}

/// One row per student and assignment (usernames compared without case),
/// sorted by assignment then username. Jobs that ended in `infra_error`
/// never count.
pub fn select_rows(rows: &[GradeRow], policy: ExportPolicy) -> Vec<GradeRow> {
    let mut by_user: BTreeMap<(String, String), Vec<&GradeRow>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.status != Status::InfraError) {
        by_user
            .entry((r.assignment.clone(), r.username.to_lowercase()))
            .or_default()
            .push(r);
    }
    let mut out = Vec::with_capacity(by_user.len());
    for jobs in by_user.values() {
        let latest_of = |it: &mut dyn Iterator<Item = &&GradeRow>| -> Option<GradeRow> {
            let mut best: Option<&GradeRow> = None;
            for r in it {
                if best.is_none_or(|b| newer(r, b)) {
                    best = Some(r);
                }
            }
            best.cloned()
        };
        let chosen = match policy {
            ExportPolicy::Latest => latest_of(&mut jobs.iter()),
            ExportPolicy::LatestOnTime => latest_of(&mut jobs.iter().filter(|r| !r.late)),
            ExportPolicy::Best => {
                let mut best: Option<&GradeRow> = None;
                for r in jobs.iter().filter(|r| r.grade.is_some_and(f64::is_finite)) {
                    let better = match best {
                        None => true,
                        Some(b) => {
                            let (g, bg) = (r.grade.unwrap(), b.grade.unwrap());
                            g > bg || (g == bg && newer(r, b))
                        }
                    };
                    if better {
                        best = Some(r);
                    }
                }
                best.cloned().or_else(|| latest_of(&mut jobs.iter()))
            }
        };
        out.extend(chosen);
    }
    out
}

/// The key of a result's `extra` set when the pushed commit was not in
/// the student's repository (never pushed, or force-pushed away).
pub const COMMIT_MISSING: &str = "commit_missing";

/// True when `r` is a push whose commit was never found: not a
/// submission, so never a row of an export policy. Results recorded
/// before [`COMMIT_MISSING`] existed are known by the mirror's message,
/// which must open the reason and name the job's own commit: other
/// reasons may quote text a student chose, and a student must not be
/// able to drop a row of theirs from an export by printing that phrase.
pub fn commit_never_found(r: &crate::result::JobResult) -> bool {
    let marked = r
        .extra
        .get(COMMIT_MISSING)
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let legacy = r.status == Status::Error
        && !r.student_sha.is_empty()
        && r.reason.as_deref().is_some_and(|t| {
            t.starts_with(&format!("commit {} is not in ", r.student_sha))
                && t.ends_with(": it was never pushed there or was force-pushed away")
        });
    marked || legacy
}

/// One row per author of each job: the authors recorded by admission
/// (`extra.authors`), else the pusher (`extra.pusher`). Jobs with neither
/// give no row (nobody to credit); `late` comes from `extra.late`. Jobs
/// whose commit was never found give no row either ([`commit_never_found`]).
pub fn rows_from_results(results: &[crate::result::JobResult]) -> Vec<GradeRow> {
    let mut out = Vec::new();
    for r in results.iter().filter(|r| !commit_never_found(r)) {
        let late = r
            .extra
            .get("late")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        let mut people: Vec<(String, Option<String>)> = r
            .extra
            .get("authors")
            .and_then(serde_json::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| {
                        let u = v.get("username")?.as_str()?.to_string();
                        let e = v.get("email").and_then(|e| e.as_str()).map(str::to_string);
                        Some((u, e))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if people.is_empty()
            && !r.extra.contains_key("authors")
            && let Some(p) = r.extra.get("pusher").and_then(serde_json::Value::as_str)
        {
            people.push((p.to_string(), None));
        }
        for (username, email) in people {
            out.push(GradeRow {
                username,
                assignment: r.project.rsplit('/').next().unwrap_or("").to_string(),
                email,
                grade: r.grade_total,
                job: r.job_id.clone(),
                commit: r.student_sha.clone(),
                submitted_at: r.received_at,
                late,
                status: r.status,
                summary: r.summary.clone(),
                hidden: r.hidden.clone(),
            });
        }
    }
    out
}

/// The fixed columns, in order.
pub const COLUMNS: [&str; 8] = [
    "username",
    "assignment",
    "email",
    "grade",
    "job",
    "commit",
    "submitted_at",
    "late",
];

/// A cell made safe for spreadsheets: formulas defused (a leading `=`,
/// `+`, `-`, `@`, tab or carriage return gets an apostrophe unless the cell
/// is a number: a finite `f64` as written, without surrounding spaces),
/// then quoted when it holds a separator, quote or line break, or begins
/// or ends with a space (which spreadsheets would trim).
pub fn csv_cell(text: &str) -> String {
    let number = text.parse::<f64>().is_ok_and(f64::is_finite);
    let defused = match text.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') if !number => format!("'{text}"),
        _ => text.to_string(),
    };
    if defused.contains([',', '"', '\n', '\r'])
        || defused.starts_with(' ')
        || defused.ends_with(' ')
    {
        format!("\"{}\"", defused.replace('"', "\"\""))
    } else {
        defused
    }
}

/// Write one CSV record: every cell through [`csv_cell`], separated by
/// commas and ended by `eol` (`\r\n` for RFC 4180, `\n` for the
/// gradebook's plain export, as each always was).
// Not the `csv` crate: it never quotes edge spaces, and its `QuoteStyle::Always` would change every cell.
pub fn write_csv_record<W, I>(w: &mut W, cells: I, eol: &str) -> io::Result<()>
where
    W: Write + ?Sized,
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let line: Vec<String> = cells.into_iter().map(|c| csv_cell(c.as_ref())).collect();
    write!(w, "{}{eol}", line.join(","))
}

/// Most `summary.KEY` columns (and, apart, `hidden.KEY` columns) of one
/// CSV export. Student code chooses the keys, so the union over a class
/// is unbounded without it (a spreadsheet stops at 16,384 columns); the
/// JSON export keeps every key.
pub const MAX_CSV_KEY_COLUMNS: usize = 100;

/// The keys that get a column: at most [`MAX_CSV_KEY_COLUMNS`], those in
/// the most rows (ties: the name first in order), written in name order.
/// A key every student prints beats one student's flood.
fn key_columns<'a>(keys: impl Iterator<Item = &'a String>) -> Vec<&'a str> {
    let mut rows_with: BTreeMap<&str, usize> = BTreeMap::new();
    for k in keys {
        *rows_with.entry(k.as_str()).or_default() += 1;
    }
    let mut by_count: Vec<(&str, usize)> = rows_with.into_iter().collect();
    // Stable: equal counts keep name order.
    by_count.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let mut kept: Vec<&str> = by_count
        .into_iter()
        .take(MAX_CSV_KEY_COLUMNS)
        .map(|(k, _)| k)
        .collect();
    kept.sort_unstable();
    kept
}

/// Write `rows` as CSV (RFC 4180, CRLF line ends): the fixed columns, then
/// one `summary.KEY` column per summary key and, when `include_hidden`,
/// one `hidden.KEY` column per hidden key, each at most
/// [`MAX_CSV_KEY_COLUMNS`] chosen by [`key_columns`].
pub fn write_csv<W: Write>(mut w: W, rows: &[GradeRow], include_hidden: bool) -> io::Result<()> {
    let summary_keys = key_columns(rows.iter().flat_map(|r| r.summary.keys()));
    let hidden_keys = if include_hidden {
        key_columns(rows.iter().flat_map(|r| r.hidden.keys()))
    } else {
        Vec::new()
    };
    let mut header: Vec<String> = COLUMNS.iter().map(|c| c.to_string()).collect();
    header.extend(summary_keys.iter().map(|k| format!("summary.{k}")));
    header.extend(hidden_keys.iter().map(|k| format!("hidden.{k}")));
    write_csv_record(&mut w, &header, "\r\n")?;
    for r in rows {
        let mut cells = vec![
            r.username.clone(),
            r.assignment.clone(),
            r.email.clone().unwrap_or_default(),
            r.grade
                .filter(|g| g.is_finite())
                .map(crate::result::format_grade)
                .unwrap_or_default(),
            r.job.clone(),
            r.commit.clone(),
            r.submitted_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            r.late.to_string(),
        ];
        for k in &summary_keys {
            cells.push(r.summary.get(*k).cloned().unwrap_or_default());
        }
        for k in &hidden_keys {
            cells.push(r.hidden.get(*k).cloned().unwrap_or_default());
        }
        write_csv_record(&mut w, &cells, "\r\n")?;
    }
    w.flush()
}

/// Write `rows` as a JSON array (hidden keys dropped unless `include_hidden`).
pub fn write_json<W: Write>(mut w: W, rows: &[GradeRow], include_hidden: bool) -> io::Result<()> {
    let shown: Vec<GradeRow> = rows
        .iter()
        .cloned()
        .map(|mut r| {
            if !include_hidden {
                r.hidden.clear();
            }
            r
        })
        .collect();
    serde_json::to_writer_pretty(&mut w, &shown)?;
    w.write_all(b"\n")?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(user: &str, grade: Option<f64>, job: &str, minute: u32, late: bool) -> GradeRow {
        GradeRow {
            username: user.into(),
            assignment: "lab1".into(),
            email: Some(format!("{user}@example.edu")),
            grade,
            job: job.into(),
            commit: format!("c-{job}"),
            submitted_at: DateTime::parse_from_rfc3339(&format!("2026-12-01T10:{minute:02}:00Z"))
                .unwrap()
                .with_timezone(&Utc),
            late,
            status: if grade.is_some() {
                Status::Graded
            } else {
                Status::NoGrade
            },
            summary: BTreeMap::new(),
            hidden: BTreeMap::new(),
        }
    }

    fn jobs(rows: &[GradeRow]) -> Vec<&str> {
        rows.iter().map(|r| r.job.as_str()).collect()
    }

    fn sample() -> Vec<GradeRow> {
        vec![
            row("alice", Some(50.0), "a1", 1, false),
            row("alice", Some(90.0), "a2", 2, false),
            row("alice", Some(70.0), "a3", 3, false),
            row("alice", Some(100.0), "a4", 4, true),
            row("bob", Some(40.0), "b1", 1, false),
            row("bob", None, "b2", 5, false),
            row("carol", Some(80.0), "c1", 9, true),
            row("Dave", None, "d1", 1, false),
        ]
    }

    #[test]
    fn best_takes_highest_grade_even_late() {
        assert_eq!(
            jobs(&select_rows(&sample(), ExportPolicy::Best)),
            ["a4", "b1", "c1", "d1"]
        );
    }

    #[test]
    fn latest_takes_last_submission_even_without_grade() {
        assert_eq!(
            jobs(&select_rows(&sample(), ExportPolicy::Latest)),
            ["a4", "b2", "c1", "d1"]
        );
    }

    #[test]
    fn latest_on_time_skips_late_and_drops_students_without_any() {
        assert_eq!(
            jobs(&select_rows(&sample(), ExportPolicy::LatestOnTime)),
            ["a3", "b2", "d1"]
        );
    }

    #[test]
    fn infra_errors_never_count_and_ties_go_to_the_later_job() {
        let mut rows = vec![
            row("alice", Some(90.0), "a1", 1, false),
            row("alice", Some(90.0), "a2", 2, false),
            row("alice", None, "a3", 3, false),
        ];
        rows[2].status = Status::InfraError;
        assert_eq!(jobs(&select_rows(&rows, ExportPolicy::Best)), ["a2"]);
        assert_eq!(jobs(&select_rows(&rows, ExportPolicy::Latest)), ["a2"]);
    }

    #[test]
    fn usernames_group_without_case() {
        let rows = vec![
            row("Alice", Some(1.0), "a1", 1, false),
            row("alice", Some(2.0), "a2", 2, false),
        ];
        assert_eq!(jobs(&select_rows(&rows, ExportPolicy::Best)), ["a2"]);
    }

    #[test]
    fn policy_names() {
        assert_eq!("best".parse(), Ok(ExportPolicy::Best));
        assert_eq!("latest".parse(), Ok(ExportPolicy::Latest));
        assert_eq!("latest-on-time".parse(), Ok(ExportPolicy::LatestOnTime));
        assert!(
            "first"
                .parse::<ExportPolicy>()
                .unwrap_err()
                .contains("best")
        );
    }

    #[test]
    fn csv_cells_defuse_formulas_and_quote() {
        assert_eq!(csv_cell("alice"), "alice");
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_cell("+1+2"), "'+1+2");
        assert_eq!(csv_cell("-2+3"), "'-2+3");
        assert_eq!(csv_cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_cell("\tcmd"), "'\tcmd");
        assert_eq!(csv_cell("\r=1+1"), "\"'\r=1+1\"");
        assert_eq!(csv_cell("\t5"), "'\t5");
        assert_eq!(csv_cell("-inf"), "'-inf");
        assert_eq!(csv_cell("-12.5"), "-12.5");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_cell(" pad"), "\" pad\"");
        assert_eq!(csv_cell(""), "");
    }

    /// Attack: one student floods distinct summary keys over several
    /// pushes (each job already capped at `summary::MAX_SUMMARY_KEYS`): the
    /// class CSV keeps at most [`MAX_CSV_KEY_COLUMNS`] key columns, the
    /// class's own keys among them, and every other row intact.
    #[test]
    fn a_key_flood_over_several_pushes_keeps_the_csv_bounded() {
        let mut rows = Vec::new();
        for push in 0..5 {
            let mut r = row("mallory", Some(1.0), &format!("m{push}"), push, false);
            for i in 0..crate::summary::MAX_SUMMARY_KEYS {
                r.summary.insert(format!("flood{push}_{i:03}"), "x".into());
                r.hidden.insert(format!("hflood{push}_{i:03}"), "x".into());
            }
            rows.push(r);
        }
        for n in 0..30 {
            let mut r = row(
                &format!("s{n:02}"),
                Some(50.0),
                &format!("j{n}"),
                10 + n,
                false,
            );
            r.summary.insert("tests_passed".into(), format!("{n}"));
            r.summary.insert("style".into(), "ok".into());
            r.hidden.insert("seed".into(), format!("{n}"));
            rows.push(r);
        }
        for hidden in [false, true] {
            let mut out = Vec::new();
            write_csv(&mut out, &rows, hidden).unwrap();
            let text = String::from_utf8(out).unwrap();
            let lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
            let header: Vec<&str> = lines[0].split(',').collect();
            let keys = if hidden {
                2 * MAX_CSV_KEY_COLUMNS
            } else {
                MAX_CSV_KEY_COLUMNS
            };
            assert_eq!(header.len(), COLUMNS.len() + keys, "{hidden}");
            let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
            let (passed, style) = (col("summary.tests_passed"), col("summary.style"));
            for n in 0..30 {
                let cells: Vec<&str> = lines[1 + 5 + n].split(',').collect();
                assert_eq!(cells.len(), header.len());
                assert_eq!(cells[0], format!("s{n:02}"));
                assert_eq!(cells[passed], n.to_string());
                assert_eq!(cells[style], "ok");
                if hidden {
                    assert_eq!(cells[col("hidden.seed")], n.to_string());
                }
            }
        }
        // The JSON export keeps every key.
        let mut out = Vec::new();
        write_json(&mut out, &rows, true).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v[4]["summary"].as_object().unwrap().len(), 100);
    }

    #[test]
    fn csv_has_fixed_columns_then_summary_and_hidden() {
        let mut r = row("alice", Some(87.5), "j1", 1, true);
        r.summary.insert("tests_passed".into(), "7".into());
        r.hidden.insert("secret_tests".into(), "3".into());
        let mut r2 = row("=bob", None, "j2", 2, false);
        r2.email = None;
        let mut out = Vec::new();
        write_csv(&mut out, &[r.clone(), r2.clone()], true).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "username,assignment,email,grade,job,commit,submitted_at,late,summary.tests_passed,hidden.secret_tests\r\n\
             alice,lab1,alice@example.edu,87.5,j1,c-j1,2026-12-01T10:01:00Z,true,7,3\r\n\
             '=bob,lab1,,,j2,c-j2,2026-12-01T10:02:00Z,false,,\r\n"
        );
        let mut out = Vec::new();
        write_csv(&mut out, &[r.clone()], false).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("secret_tests"), "{text}");
        let mut out = Vec::new();
        write_json(&mut out, &[r], false).unwrap();
        let v: Vec<GradeRow> = serde_json::from_slice(&out).unwrap();
        assert!(v[0].hidden.is_empty());
        assert_eq!(v[0].grade, Some(87.5));
    }

    #[test]
    fn two_assignments_of_one_student_are_two_rows() {
        let a = row("alice", Some(50.0), "j1", 1, false);
        let mut b = row("alice", Some(90.0), "j2", 2, false);
        b.assignment = "lab2".into();
        let rows = select_rows(&[a, b], ExportPolicy::Best);
        let got: Vec<_> = rows
            .iter()
            .map(|r| (r.assignment.as_str(), r.grade))
            .collect();
        assert_eq!(got, [("lab1", Some(50.0)), ("lab2", Some(90.0))]);
    }

    #[test]
    fn only_the_mirrors_own_message_marks_an_old_result_commit_missing() {
        let mut r: crate::result::JobResult = serde_json::from_value(serde_json::json!({
            "schema": 1, "job_id": "J", "project": "ns/lab", "git_ref": "refs/heads/main",
            "student_sha": "ab".repeat(20), "runner": "none",
            "received_at": "2026-01-01T00:00:00Z", "ended_at": "2026-01-01T00:00:01Z",
            "status": "error", "summary": {}, "hidden": {}, "extra": {},
            "stdout": {"total": 0, "truncated": false}, "stderr": {"total": 0, "truncated": false},
        }))
        .unwrap();
        let sha = r.student_sha.clone();
        let msg = |s: &str| {
            format!(
                "commit {s} is not in file:///x.git: it was never pushed there or was force-pushed away"
            )
        };
        r.reason = Some(msg(&sha));
        assert!(commit_never_found(&r));
        // A student's own text quoting the phrase, or another commit's.
        r.reason = Some(format!("results.json: bad value `{}`", msg(&sha)));
        assert!(!commit_never_found(&r));
        r.reason = Some(msg(&"cd".repeat(20)));
        assert!(!commit_never_found(&r));
        r.reason = Some("anything".into());
        r.extra.insert(COMMIT_MISSING.into(), true.into());
        assert!(commit_never_found(&r));
    }

    #[test]
    fn grades_format_like_numbers() {
        use crate::result::format_grade;
        assert_eq!(format_grade(100.0), "100");
        assert_eq!(format_grade(87.5), "87.5");
        assert_eq!(format_grade(-0.0), "0");
        assert_eq!(format_grade(-0.25), "-0.25");
    }
}
