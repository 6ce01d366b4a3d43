//! `junit.xml`: the JUnit XML report that pytest (`--junitxml`), JUnit,
//! gotestsum, ctest and most test runners write, read as a grade.
//!
//! Owns turning that report into [`TestResults`]: one row per
//! `<testcase>`, worth its `<property name="points">`, else the course's
//! points table, else 1 point. A testcase passes unless it has a
//! `<failure>`, an `<error>` or a `<skipped>` child: a skipped test earns
//! nothing, because student code can skip a test from inside it (pytest's
//! `skip()` is one call). The grade is the points of the passing testcases.
//!
//! The file is untrusted in the sense that a harness bug or student output
//! captured into it must not crash or mislead the grader: no DOCTYPE is
//! accepted (so no entity can be defined: the "billion laughs" and external
//! entities are refused, not expanded), only XML's five named entities and
//! character references are resolved, the file is at most 8 MiB
//! bytes with at most [`MAX_TESTS`] testcases, and each output is
//! capped at [`MAX_OUTPUT`] bytes.

use std::collections::BTreeMap;

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

use super::model::{
    JUNIT_FILE, MAX_NAME, MAX_OUTPUT, MAX_TESTS, ResultsError, TestResults, TestRow, Visibility,
    cap_output, shorten,
};

/// Deepest element nesting accepted.
const MAX_DEPTH: usize = 64;

/// Points of testcases by name (full `classname.name`, or bare `name`),
/// for reports whose testcases carry no `points` property.
pub type Points = BTreeMap<String, f64>;

/// One testcase being read.
#[derive(Default)]
struct Case {
    name: String,
    points: Option<f64>,
    visibility: Option<Visibility>,
    /// `failed` or `skipped` when a child said so.
    outcome: Option<&'static str>,
    output: String,
}

/// What text is being collected, and into which testcase field.
#[derive(Clone, Copy, PartialEq)]
enum Collect {
    Nothing,
    /// Inside `<failure>`, `<error>`, `<skipped>`, `<system-out>`, `<system-err>`.
    Output,
}

/// Check the text of a `junit.xml` and grade it.
pub fn parse(bytes: &[u8], points: &Points) -> Result<TestResults, ResultsError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        invalid(format!(
            "not UTF-8 (byte {}); write the report as UTF-8",
            e.valid_up_to()
        ))
    })?;
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut depth = 0usize;
    let mut case: Option<Case> = None;
    let mut collect = Collect::Nothing;
    let mut rows: Vec<TestRow> = Vec::new();
    loop {
        let at = reader.buffer_position();
        let ev = reader
            .read_event()
            .map_err(|e| invalid(format!("not well-formed XML at byte {at}: {e}")))?;
        match ev {
            Event::DocType(_) => {
                return Err(invalid(
                    "a DOCTYPE is not accepted (entities could be defined in it); remove it",
                ));
            }
            Event::Start(e) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(invalid(format!("elements nested deeper than {MAX_DEPTH}")));
                }
                collect = open(&e, &mut case, &mut rows, points, false)?;
            }
            Event::Empty(e) => {
                open(&e, &mut case, &mut rows, points, true)?;
            }
            Event::End(e) => {
                depth = depth.saturating_sub(1);
                collect = Collect::Nothing;
                if e.name().as_ref() == b"testcase"
                    && let Some(c) = case.take()
                {
                    push(&mut rows, c, points)?;
                }
            }
            Event::Text(t) if collect == Collect::Output => {
                let s = t
                    .decode()
                    .map_err(|e| invalid(format!("text at byte {at}: {e}")))?;
                append(&mut case, &s);
            }
            Event::CData(t) if collect == Collect::Output => {
                let s = t
                    .decode()
                    .map_err(|e| invalid(format!("CDATA at byte {at}: {e}")))?;
                append(&mut case, &s);
            }
            Event::GeneralRef(r) => {
                let ch = match r.resolve_char_ref() {
                    Ok(Some(c)) => c,
                    Ok(None) => named_entity(&r).ok_or_else(|| {
                        invalid(format!(
                            "undefined entity &{}; at byte {at} (only amp, lt, gt, quot and apos exist)",
                            String::from_utf8_lossy(&r)
                        ))
                    })?,
                    Err(e) => return Err(invalid(format!("character reference at byte {at}: {e}"))),
                };
                if collect == Collect::Output {
                    append(&mut case, ch.encode_utf8(&mut [0; 4]));
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if let Some(c) = case.take() {
        push(&mut rows, c, points)?;
    }
    if rows.is_empty() {
        return Err(invalid("no <testcase>: nothing to grade"));
    }
    let grade_total: f64 = rows.iter().filter_map(|r| r.score).sum();
    if !grade_total.is_finite() {
        return Err(invalid("the sum of the testcases' points is not finite"));
    }
    Ok(TestResults {
        grade_total,
        score: None,
        output: None,
        stdout_visibility: Visibility::Visible,
        execution_time: None,
        tests: rows,
        source: Some(JUNIT_FILE.into()),
    })
}

/// An element opened (`empty`: and closed at once, `<x/>`): start a
/// testcase, mark its outcome, read a property. Returns what text to
/// collect until it closes.
fn open(
    e: &BytesStart,
    case: &mut Option<Case>,
    rows: &mut Vec<TestRow>,
    points: &Points,
    empty: bool,
) -> Result<Collect, ResultsError> {
    match e.name().as_ref() {
        b"testcase" => {
            // A testcase never holds another; an unclosed one ends here.
            if let Some(c) = case.take() {
                push(rows, c, points)?;
            }
            if rows.len() >= MAX_TESTS {
                return Err(invalid(format!(
                    "more than the {MAX_TESTS} testcases allowed"
                )));
            }
            let name = attr(e, "name")?.unwrap_or_default();
            let class = attr(e, "classname")?.unwrap_or_default();
            let name = match (class.trim(), name.trim()) {
                (_, "") => {
                    return Err(invalid(format!("testcase {} has no name", rows.len() + 1)));
                }
                ("", n) => n.to_string(),
                (c, n) => format!("{c}.{n}"),
            };
            if name.len() > MAX_NAME {
                return Err(invalid(format!(
                    "testcase `{}`: its name is longer than {MAX_NAME} bytes",
                    shorten(&name)
                )));
            }
            let c = Case {
                name,
                ..Case::default()
            };
            if empty {
                push(rows, c, points)?;
            } else {
                *case = Some(c);
            }
            Ok(Collect::Nothing)
        }
        tag @ (b"failure" | b"error" | b"skipped") => {
            let Some(c) = case.as_mut() else {
                return Ok(Collect::Nothing);
            };
            if c.outcome != Some("failed") {
                c.outcome = Some(if tag == b"skipped" {
                    "skipped"
                } else {
                    "failed"
                });
            }
            if let Some(m) = attr(e, "message")?.filter(|m| !m.trim().is_empty()) {
                append(case, &m);
                append(case, "\n");
            }
            Ok(Collect::Output)
        }
        b"system-out" | b"system-err" if case.is_some() => Ok(Collect::Output),
        b"property" => {
            let Some(c) = case.as_mut() else {
                return Ok(Collect::Nothing);
            };
            let (key, value) = (attr(e, "name")?, attr(e, "value")?.unwrap_or_default());
            match key.as_deref() {
                Some("points") => {
                    let p: f64 = value.trim().parse().ok().filter(|p: &f64| p.is_finite() && *p >= 0.0).ok_or_else(|| {
                        invalid(format!(
                            "testcase `{}`: points \"{}\" must be a finite number, not negative",
                            shorten(&c.name),
                            shorten(&value)
                        ))
                    })?;
                    c.points = Some(p);
                }
                Some("visibility") => {
                    c.visibility = Some(Visibility::parse(value.trim()).ok_or_else(|| {
                        invalid(format!(
                            "testcase `{}`: visibility \"{}\" is not one of visible, hidden, after_due_date",
                            shorten(&c.name),
                            shorten(&value)
                        ))
                    })?);
                }
                _ => {}
            }
            Ok(Collect::Nothing)
        }
        _ => Ok(Collect::Nothing),
    }
}

/// A finished testcase becomes a row: its points from the property, else
/// `points` by full then bare name, else 1.
fn push(rows: &mut Vec<TestRow>, c: Case, points: &Points) -> Result<(), ResultsError> {
    let bare = c.name.rsplit('.').next().unwrap_or(&c.name);
    let worth = c
        .points
        .or_else(|| points.get(&c.name).copied())
        .or_else(|| points.get(bare).copied())
        .unwrap_or(1.0);
    let passed = c.outcome.is_none();
    let output = (!c.output.is_empty()).then(|| cap_output(c.output));
    rows.push(TestRow {
        name: c.name,
        number: None,
        score: Some(if passed { worth } else { 0.0 }),
        max_score: Some(worth),
        visibility: c.visibility.unwrap_or_default(),
        status: Some(c.outcome.unwrap_or("passed").to_string()),
        output,
        tags: Vec::new(),
    });
    Ok(())
}

/// Add `s` to the current testcase's output, never much past the cap (the
/// row's output is cut to [`MAX_OUTPUT`] with a mark when pushed).
fn append(case: &mut Option<Case>, s: &str) {
    if let Some(c) = case.as_mut()
        && c.output.len() <= MAX_OUTPUT
    {
        let room = MAX_OUTPUT + 1 - c.output.len();
        let mut end = s.len().min(room);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        c.output.push_str(&s[..end]);
    }
}

/// The value of attribute `key`, entities resolved (XML's five only).
fn attr(e: &BytesStart, key: &str) -> Result<Option<String>, ResultsError> {
    for a in e.attributes() {
        let a = a.map_err(|err| invalid(format!("a bad attribute: {err}")))?;
        if a.key.as_ref() == key.as_bytes() {
            let v = a
                .unescape_value()
                .map_err(|err| invalid(format!("attribute `{key}`: {err}")))?;
            return Ok(Some(v.into_owned()));
        }
    }
    Ok(None)
}

fn named_entity(name: &[u8]) -> Option<char> {
    Some(match name {
        b"amp" => '&',
        b"lt" => '<',
        b"gt" => '>',
        b"quot" => '"',
        b"apos" => '\'',
        _ => return None,
    })
}

fn invalid(msg: impl Into<String>) -> ResultsError {
    ResultsError::Junit(msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grade(xml: &str) -> Result<TestResults, ResultsError> {
        parse(xml.as_bytes(), &Points::default())
    }

    /// What pytest 7 (Debian bookworm's python3-pytest) writes with
    /// `--junitxml`, trimmed of timestamps.
    const PYTEST: &str = r#"<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="4" time="0.031" hostname="h"><testcase classname="test_lab" name="test_add" time="0.001" /><testcase classname="test_lab" name="test_sub" time="0.001"><failure message="assert -1 == 1&#10; +  where -1 = sub(1, 2)">def test_sub():
&gt;       assert sub(1, 2) == 1
E       assert -1 == 1

test_lab.py:7: AssertionError</failure></testcase><testcase classname="test_lab" name="test_mul" time="0.000"><skipped type="pytest.skip" message="not yet">test_lab.py:9: not yet</skipped></testcase><testcase classname="test_lab" name="test_div" time="0.001"><properties><property name="points" value="2.5"/><property name="visibility" value="after_due_date"/></properties><system-out>dividing</system-out></testcase></testsuite></testsuites>"#;

    #[test]
    fn pytest_report_grades_passing_cases_and_a_skip_earns_nothing() {
        let r = grade(PYTEST).unwrap();
        assert_eq!(r.file(), JUNIT_FILE);
        let names: Vec<_> = r.tests.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "test_lab.test_add",
                "test_lab.test_sub",
                "test_lab.test_mul",
                "test_lab.test_div"
            ]
        );
        let status: Vec<_> = r
            .tests
            .iter()
            .map(|t| t.status.as_deref().unwrap())
            .collect();
        assert_eq!(status, ["passed", "failed", "skipped", "passed"]);
        assert_eq!(r.grade_total, 3.5);
        assert_eq!(r.tests[3].max_score, Some(2.5));
        assert_eq!(r.tests[3].visibility, Visibility::AfterDueDate);
        assert_eq!(r.tests[3].output.as_deref(), Some("dividing"));
        let fail = r.tests[1].output.as_deref().unwrap();
        assert!(fail.starts_with("assert -1 == 1\n +  where"), "{fail}");
        assert!(fail.contains(">       assert sub(1, 2) == 1"), "{fail}");
    }

    #[test]
    fn points_table_by_full_then_bare_name_and_property_wins() {
        let xml = r#"<testsuite><testcase classname="c" name="a"/><testcase classname="c" name="b"/><testcase name="d"><properties><property name="points" value="7"/></properties></testcase></testsuite>"#;
        let pts: Points = [
            ("c.a".to_string(), 3.0),
            ("b".to_string(), 4.0),
            ("d".to_string(), 100.0),
        ]
        .into_iter()
        .collect();
        let r = parse(xml.as_bytes(), &pts).unwrap();
        assert_eq!(r.grade_total, 14.0);
    }

    #[test]
    fn an_error_child_fails_the_case_and_a_testcase_outside_a_suite_counts() {
        let r = grade(r#"<testcase name="t"><error message="boom"/></testcase>"#).unwrap();
        assert_eq!(r.grade_total, 0.0);
        assert_eq!(r.tests[0].max_score, Some(1.0));
        assert_eq!(r.tests[0].output.as_deref(), Some("boom\n"));
    }

    #[test]
    fn billion_laughs_is_refused_not_expanded() {
        let xml = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><testsuite><testcase name="a"><failure message="&lol2;"/></testcase></testsuite>"#;
        let e = grade(xml).unwrap_err();
        assert!(e.to_string().contains("DOCTYPE is not accepted"), "{e}");
    }

    #[test]
    fn an_undefined_entity_is_an_error() {
        let e = grade(r#"<testcase name="a"><failure>&xxe;</failure></testcase>"#).unwrap_err();
        assert!(e.to_string().contains("undefined entity &xxe;"), "{e}");
        let e = grade(r#"<testcase name="a&xxe;"/>"#).unwrap_err();
        assert!(
            e.to_string().starts_with("junit.xml: attribute `name`"),
            "{e}"
        );
    }

    #[test]
    fn bad_reports_name_the_problem() {
        for (xml, want) in [
            ("", "no <testcase>"),
            ("<testsuite></testsuite>", "no <testcase>"),
            (
                "<testsuite><testcase name='a'></testsuite>",
                "not well-formed",
            ),
            ("<testcase classname='c'/>", "has no name"),
            (
                "<testcase name='a'><properties><property name='points' value='NaN'/></properties></testcase>",
                "points \"NaN\" must be a finite number",
            ),
            (
                "<testcase name='a'><properties><property name='points' value='-1'/></properties></testcase>",
                "not negative",
            ),
            (
                "<testcase name='a'><properties><property name='visibility' value='secret'/></properties></testcase>",
                "visibility \"secret\" is not one of",
            ),
        ] {
            let e = grade(xml).unwrap_err().to_string();
            assert!(e.contains(want), "{xml}: {e}");
        }
        let e = parse(b"<testcase name='\xff'/>", &Points::default()).unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
    }

    #[test]
    fn too_many_testcases_and_deep_nesting_are_refused() {
        let many = format!(
            "<testsuite>{}</testsuite>",
            "<testcase name='t'/>".repeat(MAX_TESTS + 1)
        );
        let e = grade(&many).unwrap_err().to_string();
        assert!(
            e.contains(&format!("more than the {MAX_TESTS} testcases")),
            "{e}"
        );
        let deep = format!(
            "{}{}",
            "<a>".repeat(MAX_DEPTH + 1),
            "</a>".repeat(MAX_DEPTH + 1)
        );
        let e = grade(&deep).unwrap_err().to_string();
        assert!(e.contains("nested deeper"), "{e}");
    }

    #[test]
    fn huge_output_is_capped() {
        let xml = format!(
            "<testcase name='a'><failure>{}</failure></testcase>",
            "x".repeat(MAX_OUTPUT * 4)
        );
        let r = grade(&xml).unwrap();
        let out = r.tests[0].output.as_deref().unwrap();
        assert!(out.len() < MAX_OUTPUT + 200, "{}", out.len());
        assert!(out.contains("[labgrader: output cut"), "{out:.80}");
    }
}
