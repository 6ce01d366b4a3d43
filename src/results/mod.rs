//! `results.json` or `junit.xml`: the grade under the trusted contract.
//!
//! Owns reading the files the harness wrote in `$LABGRADER_RESULTS` (the
//! runner leaves them in the job's host `results/` directory) and turning
//! them into a grade and per-test rows. `results.json` wins when both are
//! there (the grade comes from exactly one file); `junit.xml` is read by
//! [`junit`]. It never runs anything, never decides a
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

mod file;
pub mod gradescope;
pub mod junit;
pub mod model;

use std::path::{Path, PathBuf};

use file::{FileProblem, read_capped};
pub use gradescope::parse;
pub use model::{
    JUNIT_FILE, MAX_FILE, MAX_JUNIT_FILE, MAX_NAME, MAX_OUTPUT, MAX_TESTS, RESULTS_FILE,
    ResultsError, TOO_LARGE_SUFFIX, TestResults, TestRow, Visibility,
};

/// The path of `results.json` in the host results directory `dir`.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(RESULTS_FILE)
}

/// Read and check the harness's results in `dir`: `results.json`, else
/// `junit.xml` (each point of a testcase from `points`, see
/// [`junit::parse`]).
pub fn read(dir: &Path) -> Result<TestResults, ResultsError> {
    read_with(dir, &junit::Points::default())
}

/// [`read`] with a points table for `junit.xml` testcases.
pub fn read_with(dir: &Path, points: &junit::Points) -> Result<TestResults, ResultsError> {
    match read_capped(&path_in(dir), MAX_FILE) {
        Ok(bytes) => parse(&bytes),
        Err(FileProblem::Missing) => match read_capped(&dir.join(JUNIT_FILE), MAX_JUNIT_FILE) {
            Ok(bytes) => junit::parse(&bytes, points),
            Err(FileProblem::Missing) => Err(dropped(dir, RESULTS_FILE)
                .map(ResultsError::TooLarge)
                .or_else(|| {
                    dropped(dir, JUNIT_FILE).map(|n| {
                        ResultsError::Junit(FileProblem::TooLarge(n, MAX_JUNIT_FILE).to_string())
                    })
                })
                .unwrap_or(ResultsError::Missing)),
            Err(p) => Err(ResultsError::Junit(p.to_string())),
        },
        Err(FileProblem::NotRegular(what)) => Err(ResultsError::NotRegular(what.into())),
        Err(FileProblem::TooLarge(n, _)) => Err(ResultsError::TooLarge(n)),
        Err(FileProblem::Read(e)) => Err(ResultsError::Read(e)),
    }
}

/// The size of results file `name` when the sandbox could not send it
/// back (too large) and sent `NAME.too-large` in its place.
fn dropped(dir: &Path, name: &str) -> Option<u64> {
    let marker = dir.join(format!("{name}{TOO_LARGE_SUFFIX}"));
    let bytes = read_capped(&marker, 32).ok()?;
    std::str::from_utf8(&bytes).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn junit_is_read_when_there_is_no_results_json_and_never_beside_it() {
        let d = tempfile::tempdir().unwrap();
        let junit = d.path().join(JUNIT_FILE);
        std::fs::write(&junit, r#"<testsuite><testcase name="a"/><testcase name="b"><failure/></testcase></testsuite>"#).unwrap();
        let r = read(d.path()).unwrap();
        assert_eq!((r.grade_total, r.file()), (1.0, JUNIT_FILE));
        let pts: junit::Points = [("b".to_string(), 5.0), ("a".to_string(), 2.0)].into();
        assert_eq!(read_with(d.path(), &pts).unwrap().grade_total, 2.0);
        // Both: the grade comes from results.json alone.
        std::fs::write(path_in(d.path()), br#"{"score": 9}"#).unwrap();
        let r = read(d.path()).unwrap();
        assert_eq!((r.grade_total, r.file()), (9.0, RESULTS_FILE));
        // A bad junit.xml names itself.
        std::fs::remove_file(path_in(d.path())).unwrap();
        std::fs::remove_file(&junit).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &junit).unwrap();
        let e = read(d.path()).unwrap_err().to_string();
        assert_eq!(
            e,
            "junit.xml: is not a regular file (a symbolic link); write a plain file"
        );
        std::fs::remove_file(&junit).unwrap();
        std::fs::write(&junit, vec![b' '; MAX_JUNIT_FILE as usize + 1]).unwrap();
        let e = read(d.path()).unwrap_err().to_string();
        assert!(
            e.starts_with("junit.xml: is 8388609 bytes, more than the 8388608 allowed"),
            "{e}"
        );
    }
}
