//! The trusted contract's workspace sweep (`lg-init` removes symlinks that
//! lead out of the workspace) against a student who tries to get a link
//! past it: made while the harness has already moved on, hidden where the
//! sweep does not look, or made by a process that outlives the end of a
//! `run-as-student` call. Each harness here is naive on purpose (it reads
//! the workspace as the harness, which docs/writing-test_all.md advises
//! against); the sweep is what must hold. Docker and native runners, like
//! tests/trusted_contract.rs (docker FAILS without an engine unless
//! `LABGRADER_SKIP_DOCKER=1`).

mod common;

use std::path::Path;

use common::files::write_mode;
use common::services::{BUSYBOX_IMAGE as IMAGE, docker_skipped};

use labgrader::config::{Config, RunnerKind};
use labgrader::result::{JobResult, Status};

/// Grade `student` (files written by `lay`) with the harness `test_all`
/// and a secret `expected.txt` beside it.
async fn job(kind: RunnerKind, lay: impl FnOnce(&Path), test_all: &str, timeout: u64) -> JobResult {
    let mut cfg = Config::default();
    cfg.docker.image = IMAGE.into();
    let secret = Some("the secret answer\n");
    common::trusted::grade(kind, &cfg, lay, test_all, secret, timeout).await
}

/// The docker and the native test of one attack, `$case(kind)` (docker's
/// is skipped only by the developer's explicit opt-out).
macro_rules! on_both_runners {
    ($docker:ident, $native:ident, $case:ident) => {
        #[tokio::test(flavor = "multi_thread")]
        async fn $docker() {
            if docker_skipped() {
                return;
            }
            $case(RunnerKind::Docker).await;
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn $native() {
            $case(RunnerKind::Native).await;
        }
    };
}

fn text(b: &labgrader::result::Captured) -> String {
    String::from_utf8_lossy(&b.display_bytes()).into_owned()
}

/// The harness's count of reads that reached the secret, from its
/// results.json (`score`).
fn secret_reads(r: &JobResult) -> f64 {
    assert_eq!(
        r.status,
        Status::Graded,
        "{:?}\nstdout:\n{}\nstderr:\n{}",
        r.reason,
        text(&r.stdout),
        text(&r.stderr)
    );
    r.grade_total.unwrap()
}

/// The student's program makes the link, then runs until the harness's
/// time limit stops it. `timeout N run-as-student …` is what
/// docs/writing-test_all.md recommends: `timeout` kills the client, and
/// the harness must not get to read on before the student's processes are
/// ended and the workspace swept.
const LINK_THEN_HANG: &str = "ln -s /harness/tests/expected.txt out.txt\nexec sleep 60\n";

const TIMEOUT_HARNESS: &str = r#"#!/bin/sh
W=$LABGRADER_WORKSPACE
hits=0
for i in 1 2 3 4 5 6 7 8 9 10; do
    timeout 1 run-as-student sh slow.sh </dev/null
    echo "run $i: status $?"
    cmp -s "$W/out.txt" expected.txt && hits=$((hits + 1))
done
echo "hits: $hits"
printf '{"score": %s}\n' "$hits" > "$LABGRADER_RESULTS/results.json"
"#;

async fn timeout_race(kind: RunnerKind) {
    let r = job(
        kind,
        |s| write_mode(&s.join("slow.sh"), LINK_THEN_HANG, 0o644),
        TIMEOUT_HARNESS,
        60,
    )
    .await;
    let stdout = text(&r.stdout);
    assert_eq!(secret_reads(&r), 0.0, "stdout:\n{stdout}");
    // The call still ends as timed out (GNU: 124, busybox: 128 + SIGTERM).
    assert!(
        stdout.contains("run 10: status 124") || stdout.contains("run 10: status 143"),
        "{stdout}"
    );
}

on_both_runners!(
    docker_a_timed_out_call_returns_only_once_the_workspace_is_swept,
    native_a_timed_out_call_returns_only_once_the_workspace_is_swept,
    timeout_race
);

/// A student process whose main thread has ended while another thread
/// runs: `/proc/PID/status` says `Z (zombie)` for it, and the end of a
/// `run-as-student` call must still end it before the sweep, or its
/// thread makes the link again right after.
const GHOST_HARNESS: &str = r#"#!/bin/sh
W=$LABGRADER_WORKSPACE
hits=0
for i in 1 2 3 4 5 6 7 8 9 10; do
    run-as-student ./ghostleader /harness/tests/expected.txt out.txt </dev/null
    sleep 0.1
    cmp -s "$W/out.txt" expected.txt && hits=$((hits + 1))
done
echo "hits: $hits"
printf '{"score": %s}\n' "$hits" > "$LABGRADER_RESULTS/results.json"
"#;

async fn ghost_leader(kind: RunnerKind) {
    let bin = common::hostile::helper_bin("ghostleader");
    let r = job(
        kind,
        |s| {
            std::fs::copy(&bin, s.join("ghostleader")).unwrap();
        },
        GHOST_HARNESS,
        60,
    )
    .await;
    assert_eq!(secret_reads(&r), 0.0, "stdout:\n{}", text(&r.stdout));
}

on_both_runners!(
    docker_a_process_whose_main_thread_ended_is_ended_before_the_sweep,
    native_a_process_whose_main_thread_ended_is_ended_before_the_sweep,
    ghost_leader
);

/// Paths longer than PATH_MAX (4096 bytes) cannot be opened whole, but the
/// kernel follows a chain of links through them: `x -> P1/y`, `P1/y ->
/// P2/s`, `P1/P2/s -> /harness/tests/expected.txt`, where P1 is 2412 bytes
/// and P1/P2 over 5000. The student's code makes them with relative paths
/// (`cd` one level at a time). A sweep that cannot list the deep directory
/// or look at a component past 4096 bytes must not keep `x`.
const DEEP: &str = r#"n=nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn
n=$n$n$n$n$n
p1=; p2=; i=0
while [ $i -lt 12 ]; do p1=$p1$n/; i=$((i + 1)); done
i=0
while [ $i -lt 13 ]; do p2=$p2$n/; i=$((i + 1)); done
# Each call names less than 4096 bytes: the deep end is built aside, then
# moved under P1.
mkdir -p "b/$p2" && ln -s /harness/tests/expected.txt "b/${p2}s" \
    && mkdir -p "$p1" && mv "b/$n" "$p1" && ln -s "${p2}s" "${p1}y" && ln -s "${p1}y" x
echo "made: $?"
"#;

const DEEP_HARNESS: &str = r#"#!/bin/sh
W=$LABGRADER_WORKSPACE
run-as-student sh deep.sh </dev/null
hits=0
cmp -s "$W/x" expected.txt && hits=1
echo "hits: $hits"
printf '{"score": %s}\n' "$hits" > "$LABGRADER_RESULTS/results.json"
"#;

async fn deep_links_are_not_followed(kind: RunnerKind) {
    let r = deep_links(kind).await;
    assert_eq!(
        secret_reads(&r),
        0.0,
        "stdout:\n{}\nstderr:\n{}",
        text(&r.stdout),
        text(&r.stderr)
    );
}

async fn deep_links(kind: RunnerKind) -> JobResult {
    let r = job(
        kind,
        |s| write_mode(&s.join("deep.sh"), DEEP, 0o644),
        DEEP_HARNESS,
        60,
    )
    .await;
    let (stdout, stderr) = (text(&r.stdout), text(&r.stderr));
    assert!(stdout.contains("made: 0"), "{stdout}\n{stderr}");
    // x and y cannot be resolved past PATH_MAX; the deep directory holding
    // s cannot be listed.
    assert_eq!(
        stderr.matches("lg-init: removed the symlink").count(),
        2,
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("lg-init: locked the directory").count(),
        1,
        "{stderr}"
    );
    r
}

on_both_runners!(
    docker_links_through_paths_longer_than_path_max_are_not_kept,
    native_links_through_paths_longer_than_path_max_are_not_kept,
    deep_links_are_not_followed
);

/// A fork bomb that remakes its link from every process: the end of the
/// call must end all of it (the job's process limit caps it) before the
/// sweep, or a survivor makes the link again after it. At its limit the
/// bomb's processes fork and then exit on their own (their next fork
/// fails) all the time, so a look at `/proc` that lists a process, and
/// reads it only once it has forked and exited, misses its child: before
/// the kill proved it saw every process, 2 of ~15 runs of 5 calls read the
/// secret on docker, and about half of the runs of 20 calls left
/// survivors. Ten calls keep the test well under 30 s.
const BOMB: &str = r#"b() {
    while :; do
        ln -s /harness/tests/expected.txt out.txt 2>/dev/null
        b &
    done
}
b 2>/dev/null
"#;

const BOMB_HARNESS: &str = r#"#!/bin/sh
W=$LABGRADER_WORKSPACE
hits=0
for i in 1 2 3 4 5 6 7 8 9 10; do
    timeout 1 run-as-student sh bomb.sh </dev/null
    sleep 0.2
    cmp -s "$W/out.txt" expected.txt && hits=$((hits + 1))
done
echo "hits: $hits"
printf '{"score": %s}\n' "$hits" > "$LABGRADER_RESULTS/results.json"
"#;

async fn fork_bomb(kind: RunnerKind) {
    let r = job(
        kind,
        |s| write_mode(&s.join("bomb.sh"), BOMB, 0o644),
        BOMB_HARNESS,
        // Ten calls, each ending a bomb at the pids limit: about 10 s on a
        // quiet machine, close to a minute on a loaded one. A limit, not
        // a timed assertion: only a job that never ends hits it.
        240,
    )
    .await;
    let stderr = text(&r.stderr);
    assert_eq!(
        secret_reads(&r),
        0.0,
        "stdout:\n{}\n{stderr}",
        text(&r.stdout)
    );
    assert!(!stderr.contains("survived"), "{stderr}");
    // The bomb did make its link each time: the sweep removed it.
    assert_eq!(
        stderr.matches("lg-init: removed the symlink").count(),
        10,
        "{stderr}"
    );
}

on_both_runners!(
    docker_a_fork_bomb_is_ended_before_the_sweep,
    native_a_fork_bomb_is_ended_before_the_sweep,
    fork_bomb
);

/// A link hidden in a directory its owner (the student) made mode 000, in
/// case the sweep cannot list it; the next call opens the directory again
/// for the harness to read through.
const HIDE: &str =
    "mkdir d && ln -s /harness/tests/expected.txt d/x && chmod 000 d\necho \"hid: $?\"\n";

const HIDE_HARNESS: &str = r#"#!/bin/sh
W=$LABGRADER_WORKSPACE
run-as-student sh hide.sh </dev/null
run-as-student chmod 755 d </dev/null
hits=0
cmp -s "$W/d/x" expected.txt && hits=1
echo "hits: $hits"
printf '{"score": %s}\n' "$hits" > "$LABGRADER_RESULTS/results.json"
"#;

async fn hidden_in_a_closed_dir(kind: RunnerKind) {
    let r = job(
        kind,
        |s| write_mode(&s.join("hide.sh"), HIDE, 0o644),
        HIDE_HARNESS,
        60,
    )
    .await;
    let (stdout, stderr) = (text(&r.stdout), text(&r.stderr));
    assert!(stdout.contains("hid: 0"), "{stdout}\n{stderr}");
    assert_eq!(secret_reads(&r), 0.0, "{stdout}\n{stderr}");
    // Listed in spite of its mode (the sweep is root with DAC_OVERRIDE).
    assert!(
        stderr.contains("/d/x -> /harness/tests/expected.txt"),
        "{stderr}"
    );
}

on_both_runners!(
    docker_a_link_in_a_mode_000_directory_is_still_removed,
    native_a_link_in_a_mode_000_directory_is_still_removed,
    hidden_in_a_closed_dir
);

/// Links that are slow to judge: a chain of 40 links, each target 800
/// `a/..` pairs long, and 3000 links to its start. Each costs the sweep
/// some 33,000 lookups (about 25 ms here), so one sweep would take over a
/// minute and hold the harness (which waits for it, even past its own
/// `timeout`) until the job's timeout. The sweep has a budget; past it,
/// links are removed unjudged and directories locked, and stderr says so.
const SLOW_LINKS: &str = r#"mkdir a
p=; i=0
while [ $i -lt 800 ]; do p=${p}a/../; i=$((i + 1)); done
i=0
while [ $i -lt 40 ]; do ln -s "${p}l$((i + 1))" l$i; i=$((i + 1)); done
ln -s real l40
echo data > real
i=0
while [ $i -lt 3000 ]; do ln -s l0 m$i; i=$((i + 1)); done
echo "made: $?"
"#;

const SLOW_HARNESS: &str = r#"#!/bin/sh
run-as-student sh slow_links.sh </dev/null
run-as-student true
echo '{"score": 0}' > "$LABGRADER_RESULTS/results.json"
"#;

async fn slow_links(kind: RunnerKind) {
    let r = job(
        kind,
        |s| write_mode(&s.join("slow_links.sh"), SLOW_LINKS, 0o644),
        SLOW_HARNESS,
        60,
    )
    .await;
    let (stdout, stderr) = (text(&r.stdout), text(&r.stderr));
    assert!(stdout.contains("made: 0"), "{stdout}\n{stderr}");
    assert_eq!(secret_reads(&r), 0.0, "{stdout}\n{stderr}");
    assert!(stderr.contains("the sweep's budget"), "{stderr}");
}

on_both_runners!(
    docker_links_slow_to_judge_cannot_hold_the_sweep,
    native_links_slow_to_judge_cannot_hold_the_sweep,
    slow_links
);

/// Not a link: a FIFO the student's code leaves where a naive harness
/// reads blocks it until the job's timeout. The sweep leaves it (student
/// code may use one between calls); the limit is named, and a timed-out
/// trusted job has no grade, so skipping the harness's later penalty step
/// this way does not pay: the student's own loss.
const FIFO_HARNESS: &str = r#"#!/bin/sh
W=$LABGRADER_WORKSPACE
run-as-student mkfifo notes.txt </dev/null
printf '{"score": 10}\n' > "$LABGRADER_RESULTS/results.json"
if grep -q TODO "$W/notes.txt"; then
    printf '{"score": 5}\n' > "$LABGRADER_RESULTS/results.json"
fi
"#;

async fn fifo(kind: RunnerKind) {
    let r = job(kind, |_| {}, FIFO_HARNESS, 5).await;
    assert_eq!(
        r.status,
        Status::Timeout,
        "{:?}\n{}",
        r.reason,
        text(&r.stderr)
    );
    assert_eq!(r.grade_total, None);
    let reason = r.reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("stopped by the timeout after 5 s; test_all wrote no results.json"),
        "{reason}"
    );
}

on_both_runners!(
    docker_a_fifo_blocks_a_naive_harness_until_the_named_timeout,
    native_a_fifo_blocks_a_naive_harness_until_the_named_timeout,
    fifo
);

/// Python's `subprocess.run(..., capture_output=True, timeout=10)`, as in
/// examples/python, kills `run-as-student` with SIGKILL on timeout (which
/// no process can catch), then reads the pipes to their end. The end of
/// those pipes must come only once the student's processes are ended and
/// the workspace is swept. The docker image has no Python: there the same
/// pattern in sh (`$(timeout -s KILL …)`).
const PY_KILL_HARNESS: &str = r#"#!/usr/bin/python3 -I
import filecmp, json, os, subprocess
w = os.environ["LABGRADER_WORKSPACE"]
hits = 0
for i in range(10):
    try:
        subprocess.run(["run-as-student", "sh", "slow.sh"], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=1)
    except subprocess.TimeoutExpired:
        print("run", i, "timed out")
    try:
        hits += filecmp.cmp(os.path.join(w, "out.txt"), "expected.txt", shallow=False)
    except OSError:
        pass
print("hits:", hits)
with open(os.path.join(os.environ["LABGRADER_RESULTS"], "results.json"), "w") as f:
    json.dump({"score": hits}, f)
"#;

const SH_KILL_HARNESS: &str = r#"#!/bin/sh
W=$LABGRADER_WORKSPACE
hits=0
for i in 1 2 3 4 5 6 7 8 9 10; do
    out=$(timeout -s KILL 1 run-as-student sh slow.sh </dev/null)
    echo "run $i: status $?"
    cmp -s "$W/out.txt" expected.txt && hits=$((hits + 1))
done
echo "hits: $hits"
printf '{"score": %s}\n' "$hits" > "$LABGRADER_RESULTS/results.json"
"#;

async fn killed_call(kind: RunnerKind, harness: &str) {
    let r = job(
        kind,
        |s| write_mode(&s.join("slow.sh"), LINK_THEN_HANG, 0o644),
        harness,
        60,
    )
    .await;
    let stdout = text(&r.stdout);
    assert_eq!(secret_reads(&r), 0.0, "stdout:\n{stdout}");
    // The kill did happen (a call may also end early: the end of the
    // call before it, still under way, ends every student process).
    assert!(
        stdout.contains("timed out") || stdout.contains("status 137"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_output_of_a_killed_call_ends_only_once_the_workspace_is_swept() {
    if docker_skipped() {
        return;
    }
    killed_call(RunnerKind::Docker, SH_KILL_HARNESS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn native_output_of_a_killed_call_ends_only_once_the_workspace_is_swept() {
    killed_call(RunnerKind::Native, PY_KILL_HARNESS).await;
}

/// A student process in a user and pid namespace of its own could hide
/// from a sandbox that looked for it by pid namespace. Not possible: the
/// native runner allows no nested user namespace (docker's seccomp
/// refuses them too), so `unshare` fails and nothing is left to hide.
const NS_HARNESS: &str = r#"#!/bin/sh
run-as-student unshare -U -r -p -f true </dev/null
echo "unshare: $?"
printf '{"score": 0}\n' > "$LABGRADER_RESULTS/results.json"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn native_student_code_cannot_make_namespaces_of_its_own() {
    let r = job(RunnerKind::Native, |_| {}, NS_HARNESS, 60).await;
    let (stdout, stderr) = (text(&r.stdout), text(&r.stderr));
    assert_eq!(secret_reads(&r), 0.0);
    assert!(stdout.contains("unshare: 1"), "{stdout}\n{stderr}");
    assert!(stderr.contains("unshare failed"), "{stderr}");
}
