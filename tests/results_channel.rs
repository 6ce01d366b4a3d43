//! Where the grade comes from, through `grader::grade_local` and the none
//! runner (the path of `labgrader grade`): under the trusted contract the
//! harness's `results.json` (missing = `no_grade`, malformed = `error`
//! naming the problem, a printed summary never counts, hidden tests kept
//! from students); under the stdout contract the summary, hardened against
//! a student who pads its output so that the real summary is cut by
//! `output_limit` (issue 13), and filtered for students exactly where it is
//! graded.

mod common;

use common::files::write_exec;
use labgrader::config::{ByteSize, Config, Contract, RunnerKind};
use labgrader::deliver::hidden::student_view;
use labgrader::result::{JobResult, Status};
use labgrader::results::Visibility;

/// Grade a student tree holding `student.sh` against a test tree whose
/// `test_all` is `harness`.
async fn grade(cfg: &Config, contract: Contract, student_sh: &str, harness: &str) -> JobResult {
    let t = tempfile::tempdir().unwrap();
    let (student, tests) = (t.path().join("student"), t.path().join("tests"));
    std::fs::create_dir_all(&student).unwrap();
    std::fs::create_dir_all(&tests).unwrap();
    write_exec(&student.join("student.sh"), student_sh);
    write_exec(&tests.join("test_all"), harness);
    labgrader::grader::grade_local(
        cfg,
        &student,
        &tests,
        Some(RunnerKind::None),
        None,
        Some(contract),
    )
    .await
    .unwrap()
}

const FORGER: &str = "#!/bin/sh\nprintf '<summary>\\ngrade_total = 100\\n</summary>\\n'\n";

fn stdout_of(r: &JobResult) -> String {
    String::from_utf8_lossy(&r.stdout.display_bytes()).into_owned()
}

#[tokio::test]
async fn trusted_grade_is_the_harness_results_json_with_its_tests() {
    let harness = r#"#!/bin/sh
run-as-student ./student.sh
cat > "$LABGRADER_RESULTS/results.json" <<'EOF'
{"output": "well done",
 "tests": [
  {"name": "visible one", "score": 2, "max_score": 5, "output": "2 of 5"},
  {"name": "secret one", "score": 1, "max_score": 1, "visibility": "hidden",
   "output": "the secret input was 1234"}
 ]}
EOF
"#;
    let r = grade(&Config::default(), Contract::Trusted, FORGER, harness).await;
    assert_eq!(r.status, Status::Graded, "{:?}", r.reason);
    assert_eq!(r.grade_total, Some(3.0));
    let res = r.results.as_ref().unwrap();
    assert_eq!(res.tests.len(), 2);
    assert_eq!(res.tests[1].visibility, Visibility::Hidden);
    assert_eq!(res.output.as_deref(), Some("well done"));
    // The forged summary is feedback on stdout, nothing more.
    assert!(stdout_of(&r).contains("grade_total = 100"));
    assert!(r.summary.is_empty());
    let v = student_view(&r);
    let json = serde_json::to_string(&v).unwrap();
    assert!(json.contains("visible one"), "{json}");
    assert!(!json.contains("secret") && !json.contains("1234"), "{json}");
}

#[tokio::test]
async fn trusted_without_results_json_is_no_grade_even_with_a_summary() {
    let harness = "#!/bin/sh\nrun-as-student ./student.sh\n\
                   printf '<summary>\\ngrade_total = 50\\n</summary>\\n'\n";
    let r = grade(&Config::default(), Contract::Trusted, FORGER, harness).await;
    assert_eq!(r.status, Status::NoGrade);
    assert_eq!(r.grade_total, None);
    let why = r.reason.unwrap();
    assert!(
        why.contains("test_all wrote no results.json in $LABGRADER_RESULTS"),
        "{why}"
    );
}

#[tokio::test]
async fn trusted_malformed_results_json_is_an_error_naming_the_problem_for_staff() {
    let harness = r#"#!/bin/sh
printf '{"tests": [{"name": "secret_case", "score": 12, "max_score": 10, "visibility": "hidden"}]}' \
    > "$LABGRADER_RESULTS/results.json"
"#;
    let r = grade(&Config::default(), Contract::Trusted, FORGER, harness).await;
    assert_eq!(r.status, Status::Error);
    assert_eq!(r.grade_total, None);
    let why = r.reason.clone().unwrap();
    assert!(
        why.contains("tests[0] (`secret_case`): `score` 12 is more than its `max_score` 10"),
        "{why}"
    );
    let v = student_view(&r);
    assert!(!v.reason.unwrap().contains("secret_case"));

    let harness = "#!/bin/sh\nprintf '{\"score\": ' > \"$LABGRADER_RESULTS/results.json\"\n";
    let r = grade(&Config::default(), Contract::Trusted, FORGER, harness).await;
    assert_eq!(r.status, Status::Error);
    assert!(r.reason.unwrap().contains("not valid JSON"));
}

fn small_output() -> Config {
    let mut cfg = Config::default();
    cfg.grader.output_limit = ByteSize(4096);
    cfg
}

/// Issue 13: forged block, padding, and the real summary straddling
/// `output_limit`: head and tail are one stream, the real block counts.
#[tokio::test]
async fn stdout_summary_straddling_the_output_limit_is_read_across_the_cut() {
    let student = "#!/bin/sh\nprintf '<summary>\\ngrade_total = 100\\n</summary>\\n'\n\
                   head -c 4030 /dev/zero | tr '\\000' x\n";
    let harness =
        "#!/bin/sh\n./student.sh\nprintf '\\n<summary>\\ngrade_total = 12\\n</summary>\\n'\n";
    let r = grade(&small_output(), Contract::Stdout, student, harness).await;
    assert!(r.stdout.truncated);
    assert_eq!(r.status, Status::Graded, "{:?}", r.reason);
    assert_eq!(r.grade_total, Some(12.0));
}

/// The same with output after the real summary (a background process of
/// the student's): the kept tail begins inside the real block, whose start
/// was dropped. No grade, never the forged head block.
#[tokio::test]
async fn stdout_summary_cut_in_the_dropped_bytes_is_output_limit_not_the_forged_grade() {
    let student = "#!/bin/sh\nprintf '<summary>\\ngrade_total = 100\\n</summary>\\n'\n\
                   head -c 100000 /dev/zero | tr '\\000' x\n";
    let harness = "#!/bin/sh\n./student.sh\n\
                   printf '\\n<summary>\\ngrade_total = 12\\n</summary>\\n'\n\
                   head -c 65516 /dev/zero | tr '\\000' y\n";
    let r = grade(&small_output(), Contract::Stdout, student, harness).await;
    assert_eq!(r.status, Status::OutputLimit, "{:?}", r.reason);
    assert_eq!(r.grade_total, None);
    let why = r.reason.unwrap();
    assert!(why.contains("the summary block was cut there"), "{why}");
}

/// A `<summary>` after student output on the same line is graded; its
/// `[hidden]` keys must be cut from what students see.
#[tokio::test]
async fn hidden_keys_of_a_block_after_text_on_its_line_never_reach_students() {
    let harness = "#!/bin/sh\nprintf 'student said hi<summary>\\ngrade_total = 5\\n[hidden]\\nsecret_seed = 987654\\n</summary>\\n'\n";
    let r = grade(&Config::default(), Contract::Stdout, "#!/bin/sh\n", harness).await;
    assert_eq!(r.grade_total, Some(5.0));
    assert_eq!(r.hidden["secret_seed"], "987654");
    let shown = stdout_of(&student_view(&r));
    assert!(!shown.contains("987654"), "{shown}");
    assert!(shown.contains("grade_total = 5"), "{shown}");
}
