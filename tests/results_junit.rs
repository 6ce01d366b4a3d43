//! `junit.xml` as real test runners write it: Debian's pytest
//! (`python3-pytest`, installed by `scripts/test`) runs a small lab with a
//! pass, two failures, a skip and a test worth 2.5 points, and labgrader
//! grades its report. The attack first: a student's code that skips the
//! test calling it (pytest's `skip()` from inside the function) earns
//! nothing for it.

mod common;

use std::path::Path;
use std::process::Command;

use common::services::python;
use labgrader::results::{self, JUNIT_FILE, Visibility};

/// Run pytest in `dir` writing `dir/results/junit.xml`; panics (loudly,
/// naming the fix) when pytest is missing.
fn pytest(dir: &Path) {
    let have = Command::new(python())
        .args(["-c", "import pytest"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        have,
        "pytest is missing: run scripts/test (it installs python3-pytest) or apt install python3-pytest"
    );
    std::fs::create_dir_all(dir.join("results")).unwrap();
    let out = Command::new(python())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml"])
        .arg(dir.join("results").join(JUNIT_FILE))
        .current_dir(dir)
        .output()
        .unwrap();
    // Exit 1: some tests failed, which is the point.
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_pytest_report_is_graded_per_test_and_a_self_skipping_student_earns_nothing() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("lab.py"),
        "import pytest\n\
         def add(a, b): return a + b\n\
         def sub(a, b): return b - a\n\
         def div(a, b): return a / b\n\
         def mul(a, b): pytest.skip('the student skips the test that would fail')\n",
    )
    .unwrap();
    std::fs::write(
        d.path().join("test_lab.py"),
        "import lab\n\
         def test_add(): assert lab.add(1, 2) == 3\n\
         def test_sub(): assert lab.sub(3, 1) == 2\n\
         def test_div(): assert lab.div(1, 0) == 0\n\
         def test_mul(): assert lab.mul(2, 3) == 6\n\
         def test_worth_more(record_property):\n\
         \x20   record_property('points', 2.5)\n\
         \x20   record_property('visibility', 'after_due_date')\n\
         \x20   assert lab.add(2, 2) == 4\n",
    )
    .unwrap();
    pytest(d.path());
    let r = results::read(&d.path().join("results")).unwrap();
    assert_eq!(r.file(), JUNIT_FILE);
    let rows: Vec<(&str, &str, f64, f64)> = r
        .tests
        .iter()
        .map(|t| {
            (
                t.name.as_str(),
                t.status.as_deref().unwrap(),
                t.score.unwrap(),
                t.max_score.unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("test_lab.test_add", "passed", 1.0, 1.0),
            ("test_lab.test_sub", "failed", 0.0, 1.0),
            ("test_lab.test_div", "failed", 0.0, 1.0),
            ("test_lab.test_mul", "skipped", 0.0, 1.0),
            ("test_lab.test_worth_more", "passed", 2.5, 2.5),
        ]
    );
    assert_eq!(r.grade_total, 3.5);
    assert_eq!(r.tests[4].visibility, Visibility::AfterDueDate);
    let div = r.tests[2].output.as_deref().unwrap();
    assert!(div.contains("ZeroDivisionError"), "{div}");
}

#[test]
fn a_points_table_prices_testcases_without_a_property() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("test_t.py"),
        "def test_a(): pass\ndef test_b(): assert False\n",
    )
    .unwrap();
    pytest(d.path());
    let points: results::junit::Points = [
        ("test_t.test_a".to_string(), 4.0),
        ("test_b".to_string(), 6.0),
    ]
    .into();
    let r = results::read_with(&d.path().join("results"), &points).unwrap();
    assert_eq!(r.grade_total, 4.0);
    assert_eq!(
        r.tests.iter().map(|t| t.max_score.unwrap()).sum::<f64>(),
        10.0
    );
}
