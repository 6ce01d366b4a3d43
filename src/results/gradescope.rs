//! `results.json` in Gradescope's shape: checking its text and turning it
//! into [`TestResults`] (see the module map in `results` for the keys).

use serde_json::{Map, Value};

use super::model::{
    MAX_NAME, MAX_TESTS, ResultsError, TestResults, TestRow, Visibility, cap_output, shorten,
};

/// Check the text of a `results.json`.
pub fn parse(bytes: &[u8]) -> Result<TestResults, ResultsError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| ResultsError::Json {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    let Value::Object(top) = v else {
        return Err(invalid("the top level must be an object"));
    };
    let score = number(&top, "score", "the top level")?;
    let default_visibility = visibility(&top, "visibility", "the top level")?.unwrap_or_default();
    let stdout_visibility =
        visibility(&top, "stdout_visibility", "the top level")?.unwrap_or_default();
    let execution_time = number(&top, "execution_time", "the top level")?;
    let output = text(&top, "output", "the top level")?.map(cap_output);
    let tests: &[Value] = match top.get("tests") {
        None | Some(Value::Null) => &[],
        Some(Value::Array(a)) => a,
        Some(_) => return Err(invalid("`tests` must be an array")),
    };
    if tests.len() > MAX_TESTS {
        return Err(invalid(format!(
            "{} tests, more than the {MAX_TESTS} allowed",
            tests.len()
        )));
    }
    if score.is_none() && tests.is_empty() {
        return Err(invalid(
            "no top-level `score` and no `tests`: nothing to grade",
        ));
    }
    let mut rows = Vec::with_capacity(tests.len());
    for (i, t) in tests.iter().enumerate() {
        rows.push(test_row(i, t, default_visibility, score.is_some())?);
    }
    let grade_total = match score {
        Some(s) => s,
        None => rows.iter().filter_map(|r| r.score).sum(),
    };
    if !grade_total.is_finite() {
        return Err(invalid("the sum of the tests' scores is not finite"));
    }
    Ok(TestResults {
        grade_total,
        score,
        output,
        stdout_visibility,
        execution_time,
        tests: rows,
        source: None,
    })
}

fn test_row(
    i: usize,
    v: &Value,
    default_visibility: Visibility,
    has_total: bool,
) -> Result<TestRow, ResultsError> {
    let Value::Object(t) = v else {
        return Err(invalid(format!("tests[{i}] must be an object")));
    };
    let name = match t.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) => return Err(invalid(format!("tests[{i}]: `name` is empty"))),
        Some(_) => return Err(invalid(format!("tests[{i}]: `name` must be a string"))),
        None => return Err(invalid(format!("tests[{i}] has no `name`"))),
    };
    let at = format!("tests[{i}] (`{}`)", shorten(&name));
    if name.len() > MAX_NAME {
        return Err(invalid(format!(
            "{at}: `name` is longer than {MAX_NAME} bytes"
        )));
    }
    let score = number(t, "score", &at)?;
    if score.is_none() && !has_total {
        return Err(invalid(format!(
            "{at} has no `score`, and there is no top-level `score`"
        )));
    }
    let max_score = number(t, "max_score", &at)?;
    if let (Some(s), Some(m)) = (score, max_score)
        && s > m
    {
        return Err(invalid(format!(
            "{at}: `score` {s} is more than its `max_score` {m}"
        )));
    }
    let number_field = match t.get("number") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => {
            return Err(invalid(format!(
                "{at}: `number` must be a string or a number"
            )));
        }
    };
    if number_field.as_ref().is_some_and(|n| n.len() > MAX_NAME) {
        return Err(invalid(format!("{at}: `number` is too long")));
    }
    let status = match t.get("status") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "passed" || s == "failed" => Some(s.clone()),
        Some(_) => {
            return Err(invalid(format!(
                "{at}: `status` must be \"passed\" or \"failed\""
            )));
        }
    };
    let tags = match t.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|tag| match tag {
                Value::String(s) if s.len() <= MAX_NAME => Ok(s.clone()),
                _ => Err(invalid(format!(
                    "{at}: `tags` must hold strings of at most {MAX_NAME} bytes"
                ))),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid(format!("{at}: `tags` must be an array"))),
    };
    Ok(TestRow {
        score,
        max_score,
        visibility: visibility(t, "visibility", &at)?.unwrap_or(default_visibility),
        status,
        output: text(t, "output", &at)?.map(cap_output),
        tags,
        number: number_field,
        name,
    })
}

fn invalid(msg: impl Into<String>) -> ResultsError {
    ResultsError::Invalid(msg.into())
}

/// A finite, non-negative number, when the key is there.
fn number(obj: &Map<String, Value>, key: &str, at: &str) -> Result<Option<f64>, ResultsError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f)),
            _ => Err(invalid(format!(
                "{at}: `{key}` {n} must be a finite number, not negative"
            ))),
        },
        // JSON has no NaN or infinity; a harness printing them as strings
        // (Python's json.dumps of float('nan') writes a bare NaN, refused
        // above as invalid JSON) gets the same answer.
        Some(other) => Err(invalid(format!(
            "{at}: `{key}` must be a number, found {}",
            kind(other)
        ))),
    }
}

fn text(obj: &Map<String, Value>, key: &str, at: &str) -> Result<Option<String>, ResultsError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(format!(
            "{at}: `{key}` must be a string, found {}",
            kind(other)
        ))),
    }
}

fn visibility(
    obj: &Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<Option<Visibility>, ResultsError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Visibility::parse(s).map(Some).ok_or_else(|| {
            invalid(format!(
                "{at}: `{key}` \"{}\" is not one of visible, hidden, after_due_date",
                shorten(s)
            ))
        }),
        Some(other) => Err(invalid(format!(
            "{at}: `{key}` must be a string, found {}",
            kind(other)
        ))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::MAX_OUTPUT;

    fn err(json: &str) -> String {
        parse(json.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn gradescope_example_reads_with_its_rows() {
        let r = parse(
            br#"{
              "execution_time": 136,
              "output": "Text relevant to the entire submission",
              "stdout_visibility": "hidden",
              "extra_data": {},
              "tests": [
                {"score": 2.0, "max_score": 2.0, "name": "Your name",
                 "number": "1.1", "output": "Giant multiline string",
                 "tags": ["tag1", "tag2"], "visibility": "visible",
                 "extra_data": {}},
                {"score": 0, "max_score": 3, "name": "secret", "number": 2,
                 "visibility": "hidden", "status": "failed"},
                {"score": 1, "name": "later", "visibility": "after_due_date"}
              ],
              "leaderboard": [{"name": "Accuracy", "value": 0.8}]
            }"#,
        )
        .unwrap();
        assert_eq!(r.grade_total, 3.0);
        assert_eq!(r.score, None);
        assert_eq!(r.stdout_visibility, Visibility::Hidden);
        assert_eq!(r.execution_time, Some(136.0));
        assert_eq!(r.tests.len(), 3);
        assert_eq!(r.tests[0].tags, vec!["tag1", "tag2"]);
        assert_eq!(r.tests[1].number.as_deref(), Some("2"));
        assert_eq!(r.tests[1].visibility, Visibility::Hidden);
        assert_eq!(r.tests[1].status.as_deref(), Some("failed"));
        assert_eq!(r.tests[2].visibility, Visibility::AfterDueDate);
    }

    #[test]
    fn top_level_score_is_the_grade_and_sets_the_tests_default_visibility() {
        let r =
            parse(br#"{"score": 42.5, "visibility": "hidden", "tests": [{"name": "a"}]}"#).unwrap();
        assert_eq!(r.grade_total, 42.5);
        assert_eq!(r.tests[0].score, None);
        assert_eq!(r.tests[0].visibility, Visibility::Hidden);
        assert_eq!(parse(br#"{"score": 0}"#).unwrap().grade_total, 0.0);
    }

    #[test]
    fn bad_numbers_are_refused_naming_the_test_and_field() {
        let e = err(
            r#"{"tests": [{"name": "ok", "score": 1}, {"name": "parse", "score": 12, "max_score": 10}]}"#,
        );
        assert!(
            e.contains("tests[1] (`parse`)")
                && e.contains("`score` 12")
                && e.contains("`max_score` 10"),
            "{e}"
        );
        let e = err(r#"{"tests": [{"name": "neg", "score": -1}]}"#);
        assert!(e.contains("tests[0] (`neg`): `score` -1"), "{e}");
        let e = err(r#"{"tests": [{"name": "s", "score": "10"}]}"#);
        assert!(
            e.contains("`score` must be a number, found a string"),
            "{e}"
        );
        let e = err(r#"{"tests": [{"name": "m", "score": 1, "max_score": 1e999}]}"#);
        assert!(
            e.contains("not valid JSON") || e.contains("`max_score`"),
            "{e}"
        );
        // Python's json.dumps(float("nan")) writes a bare NaN: not JSON.
        let e = err(r#"{"score": NaN}"#);
        assert!(e.contains("not valid JSON (line 1"), "{e}");
        let e = err(r#"{"score": -0.5}"#);
        assert!(e.contains("the top level: `score` -0.5"), "{e}");
    }

    #[test]
    fn shape_problems_are_named() {
        assert!(err("[]").contains("top level must be an object"));
        assert!(err("{}").contains("nothing to grade"));
        assert!(err(r#"{"tests": {}}"#).contains("`tests` must be an array"));
        assert!(err(r#"{"tests": [3]}"#).contains("tests[0] must be an object"));
        assert!(err(r#"{"tests": [{"score": 1}]}"#).contains("tests[0] has no `name`"));
        assert!(err(r#"{"tests": [{"name": "a"}]}"#).contains("tests[0] (`a`) has no `score`"));
        let e = err(r#"{"tests": [{"name": "a", "score": 1, "visibility": "after_published"}]}"#);
        assert!(
            e.contains("`visibility` \"after_published\" is not one of"),
            "{e}"
        );
        assert!(err(r#"{"score": 1, "output": 3}"#).contains("`output` must be a string"));
        let e = err(r#"{"tests": [{"name": "a", "score": 1, "status": "ok"}]}"#);
        assert!(e.contains("`status`"), "{e}");
        let e = err("{\"score\": 1,");
        assert!(e.contains("not valid JSON"), "{e}");
    }

    #[test]
    fn test_count_and_outputs_are_bounded() {
        let many: Vec<String> = (0..=MAX_TESTS)
            .map(|i| format!(r#"{{"name": "t{i}", "score": 0}}"#))
            .collect();
        let e = err(&format!(r#"{{"tests": [{}]}}"#, many.join(",")));
        assert!(e.contains("more than the 2000 allowed"), "{e}");
        let long = "é".repeat(MAX_OUTPUT);
        let r = parse(
            serde_json::json!({"tests": [{"name": "a", "score": 1, "output": long}], "output": long})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        let out = r.tests[0].output.as_deref().unwrap();
        assert!(out.len() < MAX_OUTPUT + 100, "{}", out.len());
        assert!(out.ends_with(&format!("of {} bytes]\n", long.len())));
        assert!(r.output.unwrap().len() < MAX_OUTPUT + 100);
    }

    #[test]
    fn the_guides_example_reads() {
        let readme = include_str!("../../docs/writing-test_all.md");
        let at = readme
            .find("`results.json` has the shape of Gradescope's")
            .expect("section of docs/writing-test_all.md");
        let start = at + readme[at..].find("```json\n").unwrap() + "```json\n".len();
        let end = start + readme[start..].find("```").unwrap();
        let r = parse(&readme.as_bytes()[start..end]).unwrap();
        assert_eq!(r.grade_total, 25.0);
        assert_eq!(r.tests.len(), 3);
        assert_eq!(r.tests[2].visibility, Visibility::Hidden);
    }
}
