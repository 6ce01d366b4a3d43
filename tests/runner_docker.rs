//! The `docker` runner against a real Docker engine: every case of the
//! hostile table (in the busybox test image), each followed by a plain job
//! to show the runner still serves, plus workspace transfer, cancellation,
//! grader-fault cases and a happy-path C lab in the debootstrap course image.
//!
//! Needs a running engine and the test images (`scripts/test` provides both).
//! Without them these tests FAIL, unless `LABGRADER_SKIP_DOCKER=1`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use labgrader::config::DockerConfig;
use labgrader::sandbox::docker::DockerRunner;
use labgrader::sandbox::{Limits, RunOutcome, RunSpec, Runner, SandboxError, Termination};
use tokio_util::sync::CancellationToken;

const BUSYBOX_IMAGE: &str = "labgrader/test-busybox:latest";
const COURSE_IMAGE: &str = "labgrader/grader:latest";

fn skip() -> bool {
    if std::env::var("LABGRADER_SKIP_DOCKER").as_deref() == Ok("1") {
        eprintln!("LABGRADER_SKIP_DOCKER=1: docker test skipped");
        return true;
    }
    false
}

fn config(image: &str) -> DockerConfig {
    DockerConfig {
        image: image.into(),
        ..DockerConfig::default()
    }
}

/// A runner on the test engine, or `None` when the developer opted out.
async fn runner_for(image: &str) -> Option<DockerRunner> {
    if skip() {
        return None;
    }
    match DockerRunner::connect(&config(image)).await {
        Ok(r) => Some(r),
        Err(e) => panic!(
            "docker tests need a running engine and the image {image}: {e}\n\
             run scripts/test (it starts dockerd and builds the images), or set \
             LABGRADER_SKIP_DOCKER=1 to skip them"
        ),
    }
}

async fn busybox() -> Option<DockerRunner> {
    runner_for(BUSYBOX_IMAGE).await
}

/// Write `test_all` (and other files) into a fresh workspace.
fn workspace(files: &[(&str, &[u8], bool)]) -> tempfile::TempDir {
    let ws = tempfile::Builder::new()
        .prefix("lg-docker-")
        .tempdir()
        .unwrap();
    for (name, body, exec) in files {
        let p = ws.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, body).unwrap();
        let mode = if *exec { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    ws
}

fn spec(job_id: &str, ws: &Path, limits: Limits) -> RunSpec {
    RunSpec::new(
        job_id,
        ws.to_path_buf(),
        vec![("LABGRADER_JOB_ID".into(), job_id.into())],
        limits,
    )
}

fn stdout(o: &RunOutcome) -> String {
    String::from_utf8_lossy(&o.stdout.bytes).into_owned()
}

/// After a hostile job: nothing of it is left on the engine, and the same
/// runner still serves an ordinary job.
async fn still_serves(runner: &DockerRunner, case: &str) {
    let job = format!("hostile-{case}-{}", std::process::id());
    let left = runner.job_containers(Some(&job)).await.unwrap();
    assert!(left.is_empty(), "containers of {job} left behind: {left:?}");
    let ws = workspace(&[("test_all", b"#!/bin/sh\necho next job ok\n", true)]);
    let next = format!("next-after-{case}-{}", std::process::id());
    let o = runner
        .run(
            &spec(&next, ws.path(), common::hostile::limits()),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(o.termination, Termination::Exited { code: 0 }, "{o:?}");
    assert_eq!(stdout(&o), "next job ok\n");
}

macro_rules! hostile {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let Some(runner) = busybox().await else { return };
            common::hostile::run_case(&runner, stringify!($name)).await;
            still_serves(&runner, stringify!($name)).await;
        }
    )*};
}

mod hostile {
    use super::*;
    hostile!(
        memory_hog,
        fork_bomb,
        network_closed,
        infinite_loop,
        readonly_root_and_unprivileged,
        daemonized_child_does_not_outlive_job,
        cannot_signal_host_processes,
        write_outside_workspace_stays_inside,
    );

    /// 200 MB on stdout: capped (the table's check) and the memory of the
    /// process running the runner stays bounded. Measured in a child test
    /// process so that other tests running in parallel do not blur it.
    #[tokio::test]
    async fn stdout_flood() {
        if skip() {
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "hostile::stdout_flood_in_child",
                "--ignored",
                "--nocapture",
            ])
            .args(["--test-threads", "1"])
            .env("LG_FLOOD_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "child test failed:\n{text}");
        assert!(
            text.contains("rss-growth-kib="),
            "child did not run the case:\n{text}"
        );
    }

    #[tokio::test]
    #[ignore = "run by hostile::stdout_flood in a child process"]
    async fn stdout_flood_in_child() {
        assert_eq!(std::env::var("LG_FLOOD_CHILD").as_deref(), Ok("1"));
        let Some(runner) = busybox().await else {
            return;
        };
        // Warm up (connection pool, helper binaries, buffers) first.
        still_serves(&runner, "warmup").await;
        let before = vm_hwm_kib();
        let o = common::hostile::run_case(&runner, "stdout_flood").await;
        let growth = vm_hwm_kib().saturating_sub(before);
        println!("rss-growth-kib={growth} total={}", o.stdout.total);
        assert!(
            o.stdout.total > 100 << 20,
            "the flood did not arrive: {}",
            o.stdout.total
        );
        assert!(
            growth < 32 << 10,
            "peak RSS grew by {growth} KiB for a 200 MB flood"
        );
        still_serves(&runner, "stdout_flood").await;
    }

    fn vm_hwm_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

#[tokio::test]
async fn infinite_loop_container_is_gone_after_timeout() {
    let Some(runner) = busybox().await else {
        return;
    };
    let ws = workspace(&[(
        "test_all",
        b"#!/bin/sh\necho looping\nwhile :; do :; done\n",
        true,
    )]);
    let job = format!("loop-gone-{}", std::process::id());
    let mut limits = common::hostile::limits();
    limits.timeout = Duration::from_secs(2);
    let o = runner
        .run(&spec(&job, ws.path(), limits), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(o.termination, Termination::Timeout);
    assert_eq!(stdout(&o), "looping\n");
    assert!(runner.job_containers(Some(&job)).await.unwrap().is_empty());
}

/// Binary files arrive byte for byte, modes survive, the job runs as the
/// configured user in /workspace with the documented environment, and the
/// readiness marker never shows in stderr.
#[tokio::test]
async fn workspace_arrives_byte_exact_with_modes_and_env() {
    let Some(runner) = busybox().await else {
        return;
    };
    let blob: Vec<u8> = (0..(3 << 20))
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let expect = format!("{:x}", md5_of(&blob));
    let ws = workspace(&[
        (
            "test_all",
            b"#!/bin/sh\nmd5sum data/blob.bin\n[ -x tool.sh ] && echo tool: exec\n\
              [ -x data/blob.bin ] || echo blob: plain\n\
              echo \"pwd=$(pwd) home=$HOME lang=$LANG job=$LABGRADER_JOB_ID\"\n\
              echo \"owner=$(stat -c %u data/blob.bin) me=$(id -u)\"\n\
              readlink link\necho to staff >&2\n",
            true,
        ),
        ("tool.sh", b"#!/bin/sh\n", true),
        ("data/blob.bin", &blob, false),
    ]);
    std::os::unix::fs::symlink("/etc/passwd", ws.path().join("link")).unwrap();
    let o = runner
        .run(
            &spec("ws-exact", ws.path(), common::hostile::limits()),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    let out = stdout(&o);
    assert_eq!(o.termination, Termination::Exited { code: 0 }, "{o:?}");
    assert!(
        out.starts_with(&format!("{expect}  data/blob.bin\n")),
        "{out}"
    );
    assert!(out.contains("tool: exec\n"), "{out}");
    assert!(out.contains("blob: plain\n"), "{out}");
    assert!(
        out.contains("pwd=/workspace home=/workspace lang=C.UTF-8 job=ws-exact\n"),
        "{out}"
    );
    assert!(out.contains("owner=65534 me=65534\n"), "{out}");
    assert!(
        out.contains("/etc/passwd\n"),
        "symlink kept as a link: {out}"
    );
    assert_eq!(String::from_utf8_lossy(&o.stderr.bytes), "to staff\n");
    assert!(
        o.image_id
            .as_deref()
            .is_some_and(|i| i.starts_with("sha256:")),
        "{:?}",
        o.image_id
    );
    assert_eq!(o.image.as_deref(), Some(BUSYBOX_IMAGE));
    assert_eq!(o.runner, "docker");
}

fn md5_of(data: &[u8]) -> u128 {
    // md5 is what busybox offers; computed here with the host's md5sum.
    use std::io::Write;
    let mut child = std::process::Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    u128::from_str_radix(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap(),
        16,
    )
    .unwrap()
}

#[tokio::test]
async fn exit_code_and_signal_are_reported() {
    let Some(runner) = busybox().await else {
        return;
    };
    let ws = workspace(&[("test_all", b"#!/bin/sh\necho partial\nexit 3\n", true)]);
    let o = runner
        .run(
            &spec("exit-3", ws.path(), common::hostile::limits()),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(o.termination, Termination::Exited { code: 3 });
    assert_eq!(stdout(&o), "partial\n");

    let ws = workspace(&[("test_all", b"#!/bin/sh\nkill -SEGV $$\n", true)]);
    let o = runner
        .run(
            &spec("segv", ws.path(), common::hostile::limits()),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(o.termination, Termination::Signaled { signal: 11 }, "{o:?}");
}

/// Cancelling (daemon shutdown) kills the job, reports `Cancelled` (not a
/// verdict) and removes the container.
#[tokio::test]
async fn cancel_kills_and_removes_the_container() {
    let Some(runner) = busybox().await else {
        return;
    };
    let ws = workspace(&[("test_all", b"#!/bin/sh\nsleep 60\n", true)]);
    let job = format!("cancel-{}", std::process::id());
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c2.cancel();
    });
    let err = runner
        .run(&spec(&job, ws.path(), common::hostile::limits()), &cancel)
        .await
        .unwrap_err();
    assert!(matches!(err, SandboxError::Cancelled), "{err}");
    assert!(runner.job_containers(Some(&job)).await.unwrap().is_empty());
}

/// A job future dropped mid-run (the grader task aborted) still leaves no
/// container behind.
#[tokio::test]
async fn dropped_job_leaves_no_container() {
    let Some(runner) = busybox().await else {
        return;
    };
    let ws = workspace(&[("test_all", b"#!/bin/sh\nsleep 60\n", true)]);
    let job = format!("dropped-{}", std::process::id());
    let s = spec(&job, ws.path(), common::hostile::limits());
    let r = tokio::time::timeout(
        Duration::from_millis(1500),
        runner.run(&s, &CancellationToken::new()),
    )
    .await;
    assert!(r.is_err(), "the job should still have been running");
    for _ in 0..50 {
        if runner.job_containers(Some(&job)).await.unwrap().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("container of dropped job {job} still exists");
}

/// A missing image is the grader's fault, with a message saying what to do.
#[tokio::test]
async fn missing_image_is_a_grader_fault() {
    if skip() {
        return;
    }
    let err = DockerRunner::connect(&config("labgrader/no-such-image:never"))
        .await
        .unwrap_err();
    assert!(matches!(err, SandboxError::Setup { .. }), "{err}");
    assert!(
        err.to_string().contains("not on the Docker engine"),
        "{err}"
    );

    let runner = busybox().await.unwrap();
    let ws = workspace(&[("test_all", b"#!/bin/sh\necho hi\n", true)]);
    let mut s = spec("no-image", ws.path(), common::hostile::limits());
    s.image = Some("labgrader/no-such-image:never".into());
    let err = runner.run(&s, &CancellationToken::new()).await.unwrap_err();
    assert!(
        err.to_string().contains("not on the Docker engine"),
        "{err}"
    );
}

/// An engine that does not answer is `Unavailable`, and `available()` says no.
#[tokio::test]
async fn unreachable_engine_is_unavailable() {
    let cfg = DockerConfig {
        host: "unix:///nonexistent/docker.sock".into(),
        ..DockerConfig::default()
    };
    assert!(!labgrader::sandbox::docker::available(&cfg).await);
    let err = DockerRunner::connect(&cfg).await.unwrap_err();
    assert!(matches!(err, SandboxError::Unavailable { .. }), "{err}");
    if !skip() {
        assert!(labgrader::sandbox::docker::available(&config(BUSYBOX_IMAGE)).await);
    }
}

/// A workspace that cannot fit in the job's memory is refused with the
/// limit named, without starting a container.
#[tokio::test]
async fn workspace_larger_than_memory_names_the_memory_limit() {
    let Some(runner) = busybox().await else {
        return;
    };
    let ws = workspace(&[("test_all", b"#!/bin/sh\necho hi\n", true)]);
    let f = std::fs::File::create(ws.path().join("big.bin")).unwrap();
    f.set_len(40 << 20).unwrap();
    let mut limits = common::hostile::limits();
    limits.memory = 32 << 20;
    let o = runner
        .run(
            &spec("ws-too-big", ws.path(), limits),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(o.termination, Termination::MemoryLimit);
    assert!(String::from_utf8_lossy(&o.stderr.bytes).contains("memory limit"));
}

/// An image whose shell cannot unpack the workspace (here `/bin/sh` is
/// `false`): a setup fault, not a verdict on the student.
#[tokio::test]
async fn image_that_cannot_unpack_is_a_setup_fault() {
    let Some(runner) = busybox().await else {
        return;
    };
    let image = "labgrader/test-broken-sh:latest";
    build_image(
        image,
        &format!(
            "FROM {BUSYBOX_IMAGE}\nUSER root\n\
             RUN rm /bin/sh && printf '#!/bin/false\\n' > /bin/sh && chmod 755 /bin/sh\n"
        ),
    );
    let ws = workspace(&[("test_all", b"#!/bin/sh\necho hi\n", true)]);
    let mut s = spec("broken-sh", ws.path(), common::hostile::limits());
    s.image = Some(image.into());
    let err = runner.run(&s, &CancellationToken::new()).await.unwrap_err();
    assert!(
        matches!(
            err,
            SandboxError::Setup {
                step: "unpack workspace in container",
                ..
            }
        ),
        "{err}"
    );
}

/// Build `image` from `dockerfile` once (kept between runs).
fn build_image(image: &str, dockerfile: &str) {
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker image inspect {image} >/dev/null 2>&1 || \
             printf '%s' \"$DOCKERFILE\" | DOCKER_BUILDKIT=0 docker build -q -t {image} - >/dev/null"
        ))
        .env("DOCKERFILE", dockerfile)
        .status()
        .unwrap();
    assert!(st.success(), "could not build {image}");
}

/// Course images built from a Dockerfile often have an ENTRYPOINT and a
/// USER; neither may change how `test_all` is run.
#[tokio::test]
async fn image_entrypoint_and_user_are_overridden() {
    let Some(runner) = busybox().await else {
        return;
    };
    let image = "labgrader/test-entrypoint:latest";
    build_image(
        image,
        &format!("FROM {BUSYBOX_IMAGE}\nUSER root\nENTRYPOINT [\"/bin/false\"]\nCMD [\"x\"]\n"),
    );
    let ws = workspace(&[("test_all", b"#!/bin/sh\necho uid=$(id -u)\n", true)]);
    let mut s = spec("entrypoint", ws.path(), common::hostile::limits());
    s.image = Some(image.into());
    let o = runner.run(&s, &CancellationToken::new()).await.unwrap();
    assert_eq!(o.termination, Termination::Exited { code: 0 }, "{o:?}");
    assert_eq!(stdout(&o), "uid=65534\n");
}

/// The happy path of a real course: a C lab in the debootstrap image. The
/// student's `sum.c` uses `int` and overflows on one case of four; the test
/// repository's `test_all` builds it with make, runs the cases and prints
/// the summary → grade 75.
#[tokio::test]
async fn c_lab_in_course_image_gets_the_right_grade() {
    let Some(runner) = runner_for(COURSE_IMAGE).await else {
        return;
    };
    let student_c = b"#include <stdio.h>\n\
int main(void) {\n    int a, b;\n    while (scanf(\"%d %d\", &a, &b) == 2)\n        printf(\"%d\\n\", a + b);\n    return 0;\n}\n";
    let test_all = b"#!/bin/sh\n\
# Course test script: build, run every case, print the summary.\n\
if ! make -s sum 2>build.log; then\n\
    echo 'build failed:'; cat build.log\n\
    printf '<summary>\\ngrade_total = 0\\n</summary>\\n'; exit 0\n\
fi\n\
pass=0; total=0\n\
for t in cases/*.in; do\n\
    total=$((total + 1))\n\
    if ./sum < \"$t\" | cmp -s - \"${t%.in}.out\"; then pass=$((pass + 1)); echo \"PASS $t\"; else echo \"FAIL $t\"; fi\n\
done\n\
python3 -c \"print('python3: ok')\"\n\
printf '<summary>\\ngrade_total = %s\\npassed = %s\\n</summary>\\n' $((pass * 100 / total)) $pass\n";
    let ws = workspace(&[
        ("sum.c", student_c, false),
        (
            "Makefile",
            b"CFLAGS = -O2 -Wall\nsum: sum.c\n\t$(CC) $(CFLAGS) -o $@ $<\n",
            false,
        ),
        ("test_all", test_all, true),
        ("cases/1.in", b"1 2\n", false),
        ("cases/1.out", b"3\n", false),
        ("cases/2.in", b"-5 5\n", false),
        ("cases/2.out", b"0\n", false),
        ("cases/3.in", b"100 23\n", false),
        ("cases/3.out", b"123\n", false),
        ("cases/4.in", b"2000000000 2000000000\n", false),
        ("cases/4.out", b"4000000000\n", false),
    ]);
    let limits = Limits {
        timeout: Duration::from_secs(60),
        memory: 512 << 20,
        pids: 128,
        output: 64 << 10,
        cpus: 1.0,
        file_size: 64 << 20,
        open_files: 256,
        disk: 1 << 30,
    };
    let o = runner
        .run(&spec("c-lab", ws.path(), limits), &CancellationToken::new())
        .await
        .unwrap();
    let out = stdout(&o);
    assert_eq!(
        o.termination,
        Termination::Exited { code: 0 },
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr.bytes)
    );
    assert!(out.contains("FAIL cases/4.in"), "{out}");
    assert!(out.contains("python3: ok"), "{out}");
    assert_eq!(grade_total(&out), Some(75.0), "{out}");
    assert!(
        o.image_id
            .as_deref()
            .is_some_and(|i| i.starts_with("sha256:"))
    );
}

/// `grade_total` from the `<summary>` block (the real parser lives with the
/// grader; this keeps the test independent of it).
fn grade_total(stdout: &str) -> Option<f64> {
    let start = stdout.rfind("<summary>")?;
    let body = &stdout[start + "<summary>".len()..];
    let body = &body[..body.find("</summary>")?];
    body.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "grade_total").then(|| v.trim().parse().ok())?
    })
}
