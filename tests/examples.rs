//! The example labs in examples/ grade as their READMEs say, in the
//! trusted style: each starter earns its partial grade, each reference
//! solution 100, the grade is the `results.json` the harness writes (with
//! a hidden test for staff), and no student file changes it — not a
//! printed summary, a shadowing `GNUmakefile` or `json.py`, a swapped
//! expected-data file or a `test_all` of the student's own.
//!
//! Each lab runs through the real binary, `labgrader grade --runner none
//! --contract trusted`: the harness in its own copy of the tests, student
//! code through the none runner's `run-as-student` shim in the workspace.
//! The none runner has one identity, so what these tests show is that the
//! examples never read, build or import anything of the student's in the
//! harness; that student code cannot write `$LABGRADER_RESULTS` or touch the
//! harness is the sandboxed runners' part (tests/trusted_contract.rs).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

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
            let _ = std::fs::remove_file(&dest);
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

struct Graded {
    stdout: String,
    result: Value,
}

impl Graded {
    fn grade(&self) -> f64 {
        self.result["grade_total"]
            .as_f64()
            .unwrap_or_else(|| panic!("no grade: {:#}\n{}", self.result, self.stdout))
    }

    /// The test row named `name` of results.json.
    fn test(&self, name: &str) -> &Value {
        self.result["results"]["tests"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["name"] == name))
            .unwrap_or_else(|| panic!("no test {name}: {:#}", self.result))
    }
}

/// Grade the lab's `tree` (with `extra` files laid over it, executable)
/// against its tests, through `labgrader grade`.
fn grade(lab: &str, tree: &str, extra: &[(&str, &str)]) -> Graded {
    let student = tempfile::tempdir().unwrap();
    copy_tree(&examples().join(lab).join(tree), student.path());
    for (name, text) in extra {
        let p = student.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_labgrader"))
        .args([
            "grade",
            "--runner",
            "none",
            "--contract",
            "trusted",
            "--student",
        ])
        .arg(student.path())
        .arg("--tests")
        .arg(examples().join(lab).join("tests"))
        .env_remove("LABGRADER_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json_start = stdout.rfind("\n{\n").map(|i| i + 1).unwrap_or(0);
    let result: Value = serde_json::from_str(&stdout[json_start..]).unwrap_or_else(|e| {
        panic!(
            "{lab}/{tree}: no result JSON ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(result["runner"], "none");
    assert_eq!(
        result["status"],
        "graded",
        "{lab}/{tree}: {result:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{lab}/{tree}: {:?}", out.status);
    Graded {
        stdout: stdout[..json_start].to_string(),
        result,
    }
}

const HIDDEN: [(&str, &str); 3] = [
    ("bash", "division_by_zero"),
    ("python", "mode_large"),
    ("c", "long_string"),
];

#[test]
fn starters_earn_their_partial_grades_from_results_json() {
    for ((lab, hidden), want) in HIDDEN.into_iter().zip([50.0, 40.0, 60.0]) {
        let g = grade(lab, "student", &[]);
        assert_eq!(g.grade(), want, "{lab}:\n{}", g.stdout);
        assert_eq!(g.result["results"]["grade_total"].as_f64(), Some(want));
        assert_eq!(g.test(hidden)["visibility"], "hidden", "{lab}");
        assert!(
            g.stdout.contains("PASS") && g.stdout.contains("FAIL"),
            "{lab}:\n{}",
            g.stdout
        );
        // Hidden cases are for staff: not in the feedback on stdout.
        assert!(!g.stdout.contains(hidden), "{lab}:\n{}", g.stdout);
    }
}

#[test]
fn reference_solutions_earn_full_marks() {
    for (lab, hidden) in HIDDEN {
        let g = grade(lab, "solution", &[]);
        assert_eq!(g.grade(), 100.0, "{lab}:\n{}", g.stdout);
        assert_eq!(g.test(hidden)["status"], "passed", "{lab}");
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
    assert_eq!(g.grade(), 0.0, "{}", g.stdout);
    let g = grade(
        "python",
        "student",
        &[(
            "stats.py",
            &format!("print('''{forged}''')\nimport sys\nsys.exit(0)\n"),
        )],
    );
    assert_eq!(g.grade(), 0.0, "{}", g.stdout);
}

/// Issue 13: `make` without `-f` reads a `GNUmakefile` before the tests'
/// `Makefile`, so a student's could build a "driver" that prints every
/// expected line (60 -> 100).
#[test]
fn a_student_gnumakefile_does_not_replace_the_tests_makefile() {
    let fake_driver = "#!/bin/sh\ncase $1 in\nlength) echo 5 0;; reverse) echo redargbal;; \
                       count_char) echo 3;; palindrome) echo 1 0;; count_words) echo 2;; \
                       long_string) echo 1048575;; esac\n";
    let rule = "test_strutil:\n\tcp fake_driver test_strutil && chmod +x test_strutil\n";
    for name in ["GNUmakefile", "makefile"] {
        let g = grade(
            "c",
            "student",
            &[(name, rule), ("fake_driver", fake_driver)],
        );
        assert_eq!(g.grade(), 60.0, "{name}:\n{}", g.stdout);
    }
}

/// Issue 13: the old harness ran `python3` in the workspace, so a
/// student's `json.py` was imported by test_all itself (40 -> 100).
#[test]
fn a_student_json_module_is_not_imported_by_the_harness() {
    let json_py = "import os, sys\n\
        d = os.environ.get('LABGRADER_RESULTS')\n\
        if d:\n    open(os.path.join(d, 'results.json'), 'w').write('{\"score\": 100}')\n\
        print('<summary>\\ngrade_total = 100\\n</summary>')\n\
        sys.exit(0)\n";
    let g = grade("python", "student", &[("json.py", json_py)]);
    assert_eq!(g.grade(), 40.0, "{}", g.stdout);
}

/// A student cannot replace the harness or its expected data: its own
/// `test_all` and data files of the same names stay in the workspace.
#[test]
fn a_students_test_all_and_expected_data_are_never_read() {
    let forged_harness =
        "#!/bin/sh\nprintf '{\"score\": 100}' > \"$LABGRADER_RESULTS/results.json\"\n";
    for (lab, data, swapped, want) in [
        ("bash", "cases.tsv", "add\t\t2\t+\t3\n", 50.0),
        ("python", "cases.json", "{\"cases\": []}", 40.0),
        ("c", "expected.tsv", "length\t100\tvisible\tx\t5 0\n", 60.0),
    ] {
        let g = grade(
            lab,
            "student",
            &[("test_all", forged_harness), (data, swapped)],
        );
        assert_eq!(g.grade(), want, "{lab}:\n{}", g.stdout);
    }
}

#[test]
fn c_lab_grades_zero_with_the_compiler_messages_when_the_build_fails() {
    let g = grade("c", "student", &[("strutil.c", "this is not C\n")]);
    assert_eq!(g.grade(), 0.0);
    assert!(
        g.stdout.contains("error"),
        "compiler messages go to the student:\n{}",
        g.stdout
    );
    assert!(g.stdout.contains("build failed"), "{}", g.stdout);
}

#[test]
fn c_lab_rebuilds_instead_of_running_a_committed_binary() {
    // A student commits a "test driver" that prints every expected line,
    // and sources that do not build.
    let g = grade(
        "c",
        "student",
        &[
            ("test_strutil", "#!/bin/sh\necho 5 0\n"),
            ("strutil.c", "oops\n"),
        ],
    );
    assert_eq!(g.grade(), 0.0, "{}", g.stdout);
    let g = grade("c", "student", &[("test_strutil", "#!/bin/sh\nexit 0\n")]);
    assert_eq!(g.grade(), 60.0, "{}", g.stdout);
}

#[test]
fn every_test_all_is_executable_and_documented() {
    for lab in ["bash", "python", "c"] {
        let t = examples().join(lab).join("tests/test_all");
        let mode = std::fs::metadata(&t).unwrap().permissions().mode();
        assert_ne!(mode & 0o111, 0, "{} is not executable", t.display());
        assert!(examples().join(lab).join("README.md").is_file());
        let text = std::fs::read_to_string(&t).unwrap();
        assert!(text.contains("run-as-student"), "{lab}");
        assert!(text.contains("LABGRADER_RESULTS"), "{lab}");
    }
    assert!(examples().join("c/tests/public/Makefile").is_file());
}
