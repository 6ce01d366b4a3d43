//! `results.json`: the grade under the trusted contract.
//!
//! Owns reading the file the harness wrote in `$LABGRADER_RESULTS` (the
//! runner leaves it in the job's host `results/` directory) and turning it
//! into a grade and per-test rows. It never runs anything, never decides a
//! job's status (the grader does, from [`ResultsError`]) and never decides
//! what a student may see (`deliver::hidden` cuts hidden tests from student
//! views).
//!
//! The shape is Gradescope's `results.json`. Known keys, all optional
//! unless said:
//! - top level: `score` (the grade; else the sum of the tests' scores),
//!   `output` (feedback text), `visibility` (default of the tests'),
//!   `stdout_visibility` (`hidden` keeps stdout from students),
//!   `execution_time` (seconds), `tests` (array);
//! - each test: `name` (required), `score` (required unless the top level
//!   has one), `max_score`, `number`, `output`, `tags` (strings),
//!   `visibility` (`visible`, `hidden` or `after_due_date`), `status`
//!   (`passed` or `failed`).
//!
//! Other keys (Gradescope's `extra_data`, `leaderboard`, `output_format`,
//! `name_format`, …) are accepted and ignored. The file is untrusted input
//! in the sense that a harness bug must not crash or mislead the grader:
//! it is read without following a symlink, only when it is a regular file
//! of at most [`MAX_FILE`] bytes, with at most [`MAX_TESTS`] tests; every
//! number must be finite and not negative, a test's score at most its
//! `max_score`; each problem is an error naming the test and the field.
//! Outputs are kept up to [`MAX_OUTPUT`] bytes each.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The file's name in `$LABGRADER_RESULTS`.
pub const RESULTS_FILE: &str = "results.json";
/// Largest `results.json` read.
pub const MAX_FILE: u64 = 4 << 20;
/// Most tests one file may report.
pub const MAX_TESTS: usize = 2000;
/// Bytes kept of each `output` (a test's, or the top-level one).
pub const MAX_OUTPUT: usize = 16 << 10;
/// Longest test name, tag or number accepted.
pub const MAX_NAME: usize = 1024;

/// Who may see a test (Gradescope's values; `after_published` has no
/// meaning here and is refused).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    #[default]
    Visible,
    Hidden,
    /// Shown to the student once the assignment's deadline has passed.
    AfterDueDate,
}

impl Visibility {
    fn parse(s: &str) -> Option<Visibility> {
        match s {
            "visible" => Some(Visibility::Visible),
            "hidden" => Some(Visibility::Hidden),
            "after_due_date" => Some(Visibility::AfterDueDate),
            _ => None,
        }
    }
}

/// One test as the harness reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestRow {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    /// `None` when the top-level `score` is the grade and the test gave none.
    pub score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_score: Option<f64>,
    #[serde(default)]
    pub visibility: Visibility,
    /// `passed` or `failed`, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// At most [`MAX_OUTPUT`] bytes, with a mark when cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// What `results.json` said, as kept in the job's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestResults {
    /// The grade: `score` when given, else the sum of the tests' scores.
    pub grade_total: f64,
    /// The file's top-level `score`, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Top-level feedback text (at most [`MAX_OUTPUT`] bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Whether students see `test_all`'s stdout (`hidden`: they do not).
    #[serde(default)]
    pub stdout_visibility: Visibility,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_time: Option<f64>,
    #[serde(default)]
    pub tests: Vec<TestRow>,
}

/// Why `results.json` gives no grade. Messages are for staff and name the
/// problem.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResultsError {
    #[error("test_all wrote no {RESULTS_FILE} in $LABGRADER_RESULTS")]
    Missing,
    #[error("$LABGRADER_RESULTS/{RESULTS_FILE} is not a regular file ({0}); write a plain file")]
    NotRegular(String),
    #[error(
        "$LABGRADER_RESULTS/{RESULTS_FILE} is {0} bytes, more than the {MAX_FILE} allowed; cap the tests' output"
    )]
    TooLarge(u64),
    #[error("cannot read $LABGRADER_RESULTS/{RESULTS_FILE}: {0}")]
    Read(String),
    #[error("{RESULTS_FILE} is not valid JSON (line {line}, column {column}): {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{RESULTS_FILE}: {0}")]
    Invalid(String),
}

impl ResultsError {
    /// The file exists but says nothing usable (staff's harness is wrong),
    /// as opposed to [`ResultsError::Missing`].
    pub fn is_malformed(&self) -> bool {
        !matches!(self, ResultsError::Missing)
    }
}

/// The path of `results.json` in the host results directory `dir`.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(RESULTS_FILE)
}

/// Read and check `dir/results.json`.
pub fn read(dir: &Path) -> Result<TestResults, ResultsError> {
    let path = path_in(dir);
    let file = std::fs::OpenOptions::new()
        .read(true)
        // No symlink followed; a FIFO does not block the open.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ResultsError::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(ResultsError::NotRegular("a symbolic link".into()));
        }
        Err(e) => return Err(ResultsError::Read(e.to_string())),
    };
    let meta = file
        .metadata()
        .map_err(|e| ResultsError::Read(e.to_string()))?;
    if !meta.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        let what = if t.is_dir() {
            "a directory"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_block_device() || t.is_char_device() {
            "a device"
        } else {
            "not a plain file"
        };
        return Err(ResultsError::NotRegular(what.into()));
    }
    if meta.len() > MAX_FILE {
        return Err(ResultsError::TooLarge(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ResultsError::Read(e.to_string()))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(ResultsError::TooLarge(bytes.len() as u64));
    }
    parse(&bytes)
}

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

/// At most [`MAX_OUTPUT`] bytes (cut at a character boundary), with a mark.
fn cap_output(s: String) -> String {
    if s.len() <= MAX_OUTPUT {
        return s;
    }
    let mut end = MAX_OUTPUT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = s[..end].to_string();
    out.push_str(&format!(
        "\n[labgrader: output cut at {MAX_OUTPUT} of {} bytes]\n",
        s.len()
    ));
    out
}

/// A name for a message: at most 60 characters.
fn shorten(s: &str) -> String {
    if s.chars().count() <= 60 {
        return s.to_string();
    }
    let mut out: String = s.chars().take(57).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_file_is_read_only_when_regular_and_small() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read(d.path()), Err(ResultsError::Missing));
        assert!(!ResultsError::Missing.is_malformed());
        std::os::unix::fs::symlink("/etc/passwd", path_in(d.path())).unwrap();
        let e = read(d.path()).unwrap_err();
        assert!(matches!(e, ResultsError::NotRegular(_)), "{e}");
        assert!(e.is_malformed());
        std::fs::remove_file(path_in(d.path())).unwrap();
        nix::unistd::mkfifo(&path_in(d.path()), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(
            read(d.path()),
            Err(ResultsError::NotRegular("a FIFO".into()))
        );
        std::fs::remove_file(path_in(d.path())).unwrap();
        std::fs::write(path_in(d.path()), vec![b' '; MAX_FILE as usize + 1]).unwrap();
        assert!(matches!(read(d.path()), Err(ResultsError::TooLarge(_))));
        std::fs::write(path_in(d.path()), br#"{"score": 7}"#).unwrap();
        assert_eq!(read(d.path()).unwrap().grade_total, 7.0);
    }

    #[test]
    fn the_readme_example_reads() {
        let readme = include_str!("../README.md");
        let at = readme
            .find("`results.json` has the shape of Gradescope's")
            .expect("README section");
        let start = at + readme[at..].find("```json\n").unwrap() + "```json\n".len();
        let end = start + readme[start..].find("```").unwrap();
        let r = parse(&readme.as_bytes()[start..end]).unwrap();
        assert_eq!(r.grade_total, 25.0);
        assert_eq!(r.tests.len(), 3);
        assert_eq!(r.tests[2].visibility, Visibility::Hidden);
    }
}
