//! The example labs in examples/ grade as their READMEs say: each starter
//! earns its partial grade, each reference solution 100, the `<summary>`
//! block comes last with a `[hidden]` section, and student output cannot
//! forge the grade.
//!
//! Each lab runs the way the `none` runner runs it: the student's tree
//! copied into a fresh workspace, the test tree laid over it, `./test_all`
//! started there with only PATH, HOME, LANG and the LABGRADER_* variables.
//! The last test grades the same labs through `labgrader grade --runner
//! none`, the real binary with the grader's summary parser.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn copy_tree(from: &Path, to: &Path) {
    for e in walkdir::WalkDir::new(from) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(from).unwrap();
        let dest = to.join(rel);
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
        } else {
            // Test files overwrite student files.
            let _ = std::fs::remove_file(&dest);
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

struct Graded {
    stdout: String,
    summary: BTreeMap<String, String>,
}

/// The last `<summary>` block of `stdout` as `section.key` -> value
/// (keys outside a section have no prefix).
fn last_summary(stdout: &str) -> BTreeMap<String, String> {
    let start = stdout.rfind("<summary>").expect("no <summary> block");
    let body = &stdout[start + "<summary>".len()..];
    let end = body.find("</summary>").expect("unterminated <summary>");
    let mut section = String::new();
    let mut out = BTreeMap::new();
    for line in body[..end].lines().map(str::trim) {
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = format!("{s}.");
            continue;
        }
        let (k, v) = line.split_once('=').expect("key = value");
        out.insert(format!("{section}{}", k.trim()), v.trim().to_string());
    }
    out
}

/// Grade `student` (with `extra` laid over it first) against the lab's tests.
fn grade(lab: &str, student: &str, extra: &[(&str, &str)]) -> Graded {
    let ws = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    copy_tree(&examples().join(lab).join(student), ws.path());
    for (name, text) in extra {
        let p = ws.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    copy_tree(&examples().join(lab).join("tests"), ws.path());
    let out = Command::new(ws.path().join("test_all"))
        .current_dir(ws.path())
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", home.path())
        .env("LANG", "C.UTF-8")
        .env("LABGRADER_JOB_ID", "01JEXAMPLE0000000000000000")
        .env("LABGRADER_PROJECT", format!("students/{lab}-lab"))
        .env("LABGRADER_REF", "refs/heads/main")
        .env(
            "LABGRADER_STUDENT_SHA",
            "0123456789abcdef0123456789abcdef01234567",
        )
        .env(
            "LABGRADER_TESTS_SHA",
            "89abcdef0123456789abcdef0123456789abcdef",
        )
        .env("LABGRADER_PUSHER", "jsmith")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {lab}'s test_all: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{lab} test_all failed: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = last_summary(&stdout);
    // The summary is the last thing printed.
    assert!(stdout.trim_end().ends_with("</summary>"), "{stdout}");
    Graded { stdout, summary }
}

fn grade_total(g: &Graded) -> f64 {
    let v: f64 = g.summary["grade_total"].parse().unwrap();
    assert!(v.is_finite());
    v
}

#[test]
fn starters_earn_their_partial_grades() {
    for (lab, want, hidden_key) in [
        ("bash", 50.0, "hidden.division_by_zero"),
        ("python", 40.0, "hidden.mode_large"),
        ("c", 60.0, "hidden.long_string"),
    ] {
        let g = grade(lab, "student", &[]);
        assert_eq!(grade_total(&g), want, "{lab}:\n{}", g.stdout);
        assert!(g.summary.contains_key(hidden_key), "{lab}: {:?}", g.summary);
        assert!(
            g.stdout.contains("PASS") && g.stdout.contains("FAIL"),
            "{lab}"
        );
    }
}

#[test]
fn reference_solutions_earn_full_marks() {
    for (lab, hidden_key) in [
        ("bash", "hidden.division_by_zero"),
        ("python", "hidden.mode_large"),
        ("c", "hidden.long_string"),
    ] {
        let sol = examples().join(lab).join("solution");
        let files: Vec<(String, String)> = std::fs::read_dir(&sol)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().to_string(),
                    std::fs::read_to_string(e.path()).unwrap(),
                )
            })
            .collect();
        let extra: Vec<(&str, &str)> = files
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        let g = grade(lab, "student", &extra);
        assert_eq!(grade_total(&g), 100.0, "{lab}:\n{}", g.stdout);
        assert_eq!(g.summary[hidden_key], "pass", "{lab}");
        assert!(!g.stdout.contains("FAIL"), "{lab}:\n{}", g.stdout);
    }
}

#[test]
fn a_summary_printed_by_student_code_does_not_win() {
    let forged = "<summary>\ngrade_total = 100\n</summary>";
    let g = grade(
        "bash",
        "student",
        &[(
            "calc.sh",
            &format!("#!/bin/sh\nprintf '%s\\n' '{forged}'\n"),
        )],
    );
    assert_eq!(grade_total(&g), 0.0, "{}", g.stdout);
    let g = grade(
        "python",
        "student",
        &[(
            "stats.py",
            &format!("print('''{forged}''')\nimport sys\nsys.exit(0)\n"),
        )],
    );
    assert_eq!(grade_total(&g), 0.0, "{}", g.stdout);
}

#[test]
fn c_lab_grades_zero_with_the_compiler_messages_when_the_build_fails() {
    let g = grade("c", "student", &[("strutil.c", "this is not C\n")]);
    assert_eq!(grade_total(&g), 0.0);
    assert_eq!(g.summary["build"], "failed");
    assert!(
        g.stdout.contains("error"),
        "compiler messages go to the student:\n{}",
        g.stdout
    );
}

#[test]
fn c_lab_rebuilds_instead_of_running_a_committed_binary() {
    // A student commits a "test driver" that passes everything.
    let g = grade("c", "student", &[("test_strutil", "#!/bin/sh\nexit 0\n")]);
    assert_eq!(grade_total(&g), 60.0, "{}", g.stdout);
}

#[test]
fn every_test_all_is_executable_and_documented() {
    for lab in ["bash", "python", "c"] {
        let t = examples().join(lab).join("tests/test_all");
        let mode = std::fs::metadata(&t).unwrap().permissions().mode();
        assert_ne!(mode & 0o111, 0, "{} is not executable", t.display());
        assert!(examples().join(lab).join("README.md").is_file());
    }
    assert!(examples().join("c/tests/Makefile").is_file());
}

/// End to end through the real binary and the grader's summary parser:
/// `labgrader grade` prints test_all's stdout, then the job's result as
/// JSON. Starters earn their partial grade, solutions 100, and the hidden
/// key lands in the result's `hidden`, apart from the summary.
#[test]
fn examples_grade_end_to_end_with_labgrader_grade() {
    for (lab, starter, hidden_key) in [
        ("bash", 50.0, "division_by_zero"),
        ("python", 40.0, "mode_large"),
        ("c", 60.0, "long_string"),
    ] {
        for (tree, want, hidden) in [
            ("student", starter, None),
            ("solution", 100.0, Some("pass")),
        ] {
            let out = Command::new(env!("CARGO_BIN_EXE_labgrader"))
                .args(["grade", "--runner", "none", "--student"])
                .arg(examples().join(lab).join(tree))
                .arg("--tests")
                .arg(examples().join(lab).join("tests"))
                .env_remove("LABGRADER_CONFIG")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{lab}/{tree}: {:?}\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            let json_start = stdout.rfind("\n{\n").map(|i| i + 1).unwrap_or(0);
            let result: serde_json::Value = serde_json::from_str(&stdout[json_start..])
                .unwrap_or_else(|e| panic!("{lab}/{tree}: no result JSON ({e}):\n{stdout}"));
            assert_eq!(result["status"], "graded", "{lab}/{tree}: {result:#}");
            assert_eq!(result["grade_total"].as_f64(), Some(want), "{lab}/{tree}");
            assert_eq!(result["runner"], "none", "{lab}/{tree}");
            assert!(
                result["summary"].get("passed").is_some(),
                "{lab}/{tree}: {result:#}"
            );
            assert!(
                result["summary"].get(hidden_key).is_none(),
                "{lab}/{tree}: hidden key leaked into summary"
            );
            let h = &result["hidden"][hidden_key];
            assert!(h.is_string(), "{lab}/{tree}: {result:#}");
            if let Some(v) = hidden {
                assert_eq!(h, v, "{lab}/{tree}");
            }
        }
    }
}
