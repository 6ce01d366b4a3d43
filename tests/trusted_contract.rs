//! The trusted contract against a student who attacks the harness, on the
//! runners that give the harness and the student different identities
//! (docker and native): the student's code writes `results.json`, keeps
//! rewriting it from a background process, sends SIGSTOP then SIGKILL to
//! its parent and to every process it can see, and prints a forged
//! summary. The recorded grade is the one the harness wrote afterwards.
//!
//! Goes through `grader::grade_local`, the path `labgrader grade` takes:
//! workspace and harness copy laid out as the daemon does, the runner, then
//! the verdict that reads `results.json`. The docker case needs a running
//! engine and the busybox test image and FAILS without them unless
//! `LABGRADER_SKIP_DOCKER=1`; the native case needs root or unprivileged
//! user namespaces, like tests/runner_native.rs.

mod common;

use std::time::Duration;

use common::files::write_mode;
use common::services::{BUSYBOX_IMAGE as IMAGE, docker_skipped};

use labgrader::config::{Config, Contract, RunnerKind};
use labgrader::result::{JobResult, Status};

/// The student's attack, run by the harness as `run-as-student sh
/// attack.sh RESULTS_DIR` (the student is told where the results go).
const ATTACK: &str = r#"R=${1:-$LABGRADER_RESULTS}
forge() { printf '{"score": 100}\n' > "$R/results.json" 2>/dev/null; }
forge
( while :; do forge; done ) </dev/null >/dev/null 2>&1 &
bg=$!
for sig in STOP KILL; do
    kill -$sig "$PPID" 2>/dev/null
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        [ "$p" = "$$" ] || [ "$p" = "$bg" ] || kill -$sig "$p" 2>/dev/null
    done
done
printf '<summary>\ngrade_total = 100\n</summary>\n'
exit 0
"#;

/// The harness: runs the attack, waits while the background rewriter
/// would be at work, writes its own grade, and waits again.
const HARNESS: &str = r#"#!/bin/sh
run-as-student sh attack.sh "$LABGRADER_RESULTS"
echo "the student's code exited with status $?"
sleep 1
printf '{"tests": [{"name": "harness", "score": 7, "max_score": 10}]}\n' \
    > "$LABGRADER_RESULTS/results.json"
sleep 2
echo "harness done"
"#;

async fn attack_on(kind: RunnerKind, cfg: Config) -> JobResult {
    let lay = |s: &std::path::Path| write_mode(&s.join("attack.sh"), ATTACK, 0o644);
    common::trusted::grade(kind, &cfg, lay, HARNESS, None, 30).await
}

fn assert_the_harness_graded(r: &JobResult) {
    let stdout = String::from_utf8_lossy(&r.stdout.display_bytes()).into_owned();
    assert_eq!(
        r.status,
        Status::Graded,
        "{:?}\nstdout:\n{stdout}\nstderr:\n{}",
        r.reason,
        String::from_utf8_lossy(&r.stderr.display_bytes())
    );
    assert_eq!(r.grade_total, Some(7.0), "{:?}\n{stdout}", r.reason);
    let results = r.results.as_ref().expect("results.json recorded");
    assert_eq!(results.tests.len(), 1);
    assert_eq!(results.tests[0].name, "harness");
    assert!(stdout.contains("harness done"), "{stdout}");
    assert!(r.summary.is_empty() && r.hidden.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_student_cannot_forge_rewrite_or_stop_the_harness_grade() {
    if docker_skipped() {
        return;
    }
    let mut cfg = Config::default();
    cfg.docker.image = IMAGE.into();
    let r = attack_on(RunnerKind::Docker, cfg).await;
    assert_the_harness_graded(&r);
}

#[tokio::test(flavor = "multi_thread")]
async fn native_student_cannot_forge_rewrite_or_stop_the_harness_grade() {
    let r = attack_on(RunnerKind::Native, Config::default()).await;
    assert_the_harness_graded(&r);
}

/// A `junit.xml` larger than a sandbox sends back (50 MB here) is an
/// `error` whose reason names its size: never `no_grade` "wrote no
/// results", never a silent 0.
#[tokio::test(flavor = "multi_thread")]
async fn docker_junit_too_large_to_send_back_is_an_error_naming_its_size() {
    if docker_skipped() {
        return;
    }
    let mut cfg = Config::default();
    cfg.docker.image = IMAGE.into();
    let student = tempfile::tempdir().unwrap();
    let tests = tempfile::tempdir().unwrap();
    write_mode(
        &tests.path().join("test_all"),
        "#!/bin/sh\n\
         { echo '<testsuite><testcase name=\"a\"><system-out>'; \
           head -c 52428800 /dev/zero | tr '\\0' x; \
           echo '</system-out></testcase></testsuite>'; } > \"$LABGRADER_RESULTS/junit.xml\"\n",
        0o755,
    );
    let r = labgrader::grader::grade_local(
        &cfg,
        student.path(),
        tests.path(),
        Some(RunnerKind::Docker),
        Some(Duration::from_secs(60)),
        Some(Contract::Trusted),
    )
    .await
    .unwrap();
    assert_eq!(r.status, Status::Error, "{:?}", r.reason);
    let reason = r.reason.unwrap_or_default();
    assert!(
        reason.contains("junit.xml: is 52428880 bytes, more than the 8388608 allowed"),
        "{reason}"
    );
}

/// The attack: symlinks from the workspace into the harness's home, one
/// committed, two made by the student's code. A naive harness that
/// compares the student's files with its secret answer would follow them
/// with its own rights and compare the answer with itself: 10/10 with no
/// work. `lg-init` removes every symlink that leads out of the workspace
/// before `test_all` starts and after each `run-as-student` call.
const LINKS_OUT: &str = r#"ln -s /harness/tests/expected.txt "$LABGRADER_WORKSPACE/out.txt"
ln -s ../harness/tests/expected.txt "$LABGRADER_WORKSPACE/rel.txt"
"#;

const NAIVE_HARNESS: &str = r#"#!/bin/sh
W=$LABGRADER_WORKSPACE
s=0
cmp -s "$W/answer.txt" expected.txt && s=$((s + 4))
run-as-student sh "$W/links.sh"
cmp -s "$W/out.txt" expected.txt && s=$((s + 3))
cmp -s "$W/rel.txt" expected.txt && s=$((s + 3))
printf '{"tests": [{"name": "answers", "score": %s, "max_score": 10}]}\n' "$s" \
    > "$LABGRADER_RESULTS/results.json"
"#;

async fn symlinks_on(kind: RunnerKind, cfg: Config) -> JobResult {
    let lay = |s: &std::path::Path| {
        write_mode(&s.join("links.sh"), LINKS_OUT, 0o644);
        std::os::unix::fs::symlink("/harness/tests/expected.txt", s.join("answer.txt")).unwrap();
    };
    let secret = Some("the secret answer\n");
    common::trusted::grade(kind, &cfg, lay, NAIVE_HARNESS, secret, 30).await
}

fn assert_no_symlink_was_followed(r: &JobResult) {
    let stderr = String::from_utf8_lossy(&r.stderr.display_bytes()).into_owned();
    assert_eq!(r.status, Status::Graded, "{:?}\n{stderr}", r.reason);
    assert_eq!(r.grade_total, Some(0.0), "{stderr}");
    assert_eq!(
        stderr.matches("lg-init: removed the symlink").count(),
        3,
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_harness_never_follows_a_student_symlink_into_its_home() {
    if docker_skipped() {
        return;
    }
    let mut cfg = Config::default();
    cfg.docker.image = IMAGE.into();
    assert_no_symlink_was_followed(&symlinks_on(RunnerKind::Docker, cfg).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn native_harness_never_follows_a_student_symlink_into_its_home() {
    assert_no_symlink_was_followed(&symlinks_on(RunnerKind::Native, Config::default()).await);
}
