//! The results vocabulary: per-test rows, what a harness's results say,
//! who may see a test, and why a results file gives no grade. Shared by
//! the readers of each format; no I/O.

use serde::{Deserialize, Serialize};

/// The file's name in `$LABGRADER_RESULTS`.
pub const RESULTS_FILE: &str = "results.json";
/// The JUnit report's name in `$LABGRADER_RESULTS`.
pub const JUNIT_FILE: &str = "junit.xml";
/// Largest `junit.xml` read (everything a sandbox sends back is capped at
/// the same size).
pub const MAX_JUNIT_FILE: u64 = 8 << 20;
/// Suffix of the entry a sandbox sends back in place of a results file
/// too large for it (`NAME.too-large`, holding the size in decimal).
pub const TOO_LARGE_SUFFIX: &str = ".too-large";
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
    pub(crate) fn parse(s: &str) -> Option<Visibility> {
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

impl TestRow {
    /// Whether the test passed: its `status` when given, else a full
    /// score (`score` at least `max_score`, with a `max_score` above 0);
    /// `None` when neither says.
    pub fn passed(&self) -> Option<bool> {
        match self.status.as_deref() {
            Some("passed") => Some(true),
            Some(_) => Some(false),
            None => match (self.score, self.max_score) {
                (Some(s), Some(m)) if m > 0.0 => Some(s >= m),
                _ => None,
            },
        }
    }
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
    /// The file the grade came from, when not [`RESULTS_FILE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl TestResults {
    /// The file the grade came from: [`RESULTS_FILE`] or [`JUNIT_FILE`].
    pub fn file(&self) -> &str {
        self.source.as_deref().unwrap_or(RESULTS_FILE)
    }
}

/// Why `results.json` gives no grade. Messages are for staff and name the
/// problem.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResultsError {
    #[error("test_all wrote no {RESULTS_FILE} in $LABGRADER_RESULTS (nor {JUNIT_FILE})")]
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
    /// Any problem with `junit.xml` (read, size, XML, content).
    #[error("{JUNIT_FILE}: {0}")]
    Junit(String),
}

impl ResultsError {
    /// The file exists but says nothing usable (staff's harness is wrong),
    /// as opposed to [`ResultsError::Missing`].
    pub fn is_malformed(&self) -> bool {
        !matches!(self, ResultsError::Missing)
    }
}

/// At most [`MAX_OUTPUT`] bytes (cut at a character boundary), with a mark.
pub(crate) fn cap_output(s: String) -> String {
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
pub(crate) fn shorten(s: &str) -> String {
    if s.chars().count() <= 60 {
        return s.to_string();
    }
    let mut out: String = s.chars().take(57).collect();
    out.push('…');
    out
}
