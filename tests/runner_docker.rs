//! The `docker` runner against a real Docker engine: every case of the
//! hostile table (in the busybox test image), each followed by a plain job
//! to show the runner still serves, plus workspace transfer, cancellation,
//! grader-fault cases and a happy-path C lab in the debootstrap course image.
//!
//! Needs a running engine and the test images (`scripts/test` provides both).
//! Without them these tests FAIL, unless `LABGRADER_SKIP_DOCKER=1`.

mod common;

use common::hostile::stdout;
use common::services::{BUSYBOX_IMAGE, COURSE_IMAGE, docker_runner, docker_skipped};

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use labgrader::config::DockerConfig;
use labgrader::sandbox::docker::DockerRunner;
use labgrader::sandbox::{Limits, RunOutcome, RunSpec, Runner, SandboxError, Termination};
use tokio_util::sync::CancellationToken;

fn config(image: &str) -> DockerConfig {
    DockerConfig {
        image: image.into(),
        ..DockerConfig::default()
    }
}

async fn busybox() -> Option<DockerRunner> {
    docker_runner(BUSYBOX_IMAGE).await
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
        if docker_skipped() {
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
        let before = common::host::vm_hwm_kib(std::process::id()).unwrap();
        let o = common::hostile::run_case(&runner, "stdout_flood").await;
        let growth = common::host::vm_hwm_kib(std::process::id())
            .unwrap()
            .saturating_sub(before);
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
    if docker_skipped() {
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
    if !docker_skipped() {
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
    let Some(runner) = docker_runner(COURSE_IMAGE).await else {
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

/// Jobs laid out as the grader lays them: `<root>/workspace` (the student's
/// files and, under `stdout`, the test files over them), `<root>/tests`
/// (the harness's copy, `trusted`), `<root>/results`, `<root>/runner`.
mod contract {
    use super::*;
    use labgrader::config::Contract;
    use std::path::PathBuf;
    use std::sync::Arc;

    type Files<'a> = &'a [(&'a str, &'a [u8], bool)];

    pub struct Job {
        pub root: tempfile::TempDir,
        pub spec: RunSpec,
    }

    fn put(dir: &Path, files: Files) {
        for (name, body, exec) in files {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, body).unwrap();
            let mode = if *exec { 0o755 } else { 0o644 };
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }

    /// Relative paths of `files` with their directories, a directory first.
    fn listed(files: Files) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        for (name, _, _) in files {
            let p = Path::new(name);
            let mut ancestors: Vec<&Path> = p
                .ancestors()
                .skip(1)
                .filter(|a| !a.as_os_str().is_empty())
                .collect();
            ancestors.reverse();
            for a in ancestors.into_iter().chain([p]) {
                if !out.iter().any(|o| o == a) {
                    out.push(a.to_path_buf());
                }
            }
        }
        out
    }

    /// `stdout`: the student's files with the test files laid over them.
    pub fn stdout_job(id: &str, student: Files, tests: Files, limits: Limits) -> Job {
        let root = tempfile::Builder::new()
            .prefix("lg-docker-")
            .tempdir()
            .unwrap();
        let ws = root.path().join("workspace");
        for d in ["workspace", "results", "runner"] {
            std::fs::create_dir(root.path().join(d)).unwrap();
        }
        put(&ws, student);
        put(&ws, tests);
        let spec = RunSpec {
            test_paths: Arc::new(listed(tests)),
            ..RunSpec::new(
                format!("{id}-{}", std::process::id()),
                ws,
                vec![("LABGRADER_JOB_ID".into(), id.into())],
                limits,
            )
        };
        Job { root, spec }
    }

    /// `trusted`: the harness's tests apart, `public/` laid over the student's files.
    pub fn trusted_job(id: &str, student: Files, tests: Files, limits: Limits) -> Job {
        let mut job = stdout_job(id, student, &[], limits);
        let t = job.root.path().join("tests");
        std::fs::create_dir(&t).unwrap();
        put(&t, tests);
        let public: Vec<(&str, &[u8], bool)> = tests
            .iter()
            .filter_map(|(n, b, x)| Some((n.strip_prefix("public/")?, *b, *x)))
            .collect();
        put(&job.spec.workspace, &public);
        job.spec.contract = Contract::Trusted;
        job.spec.tests = Some(t);
        job.spec.test_paths = Arc::new(listed(&public));
        job
    }

    pub async fn run(runner: &DockerRunner, job: &Job) -> RunOutcome {
        let o = runner
            .run(&job.spec, &CancellationToken::new())
            .await
            .unwrap_or_else(|e| panic!("{}: runner fault: {e}", job.spec.job_id));
        let left = runner.job_containers(Some(&job.spec.job_id)).await.unwrap();
        assert!(left.is_empty(), "containers left behind: {left:?}");
        o
    }

    pub use crate::common::hostile::shown;

    pub fn limits() -> Limits {
        Limits {
            timeout: Duration::from_secs(30),
            ..common::hostile::limits()
        }
    }

    /// The images the contract is checked in: busybox (ash, busybox
    /// applets) and the course image (bash, coreutils, gcc).
    pub async fn both_images() -> Vec<(&'static str, DockerRunner)> {
        let mut out = Vec::new();
        for image in [BUSYBOX_IMAGE, COURSE_IMAGE] {
            match docker_runner(image).await {
                Some(r) => out.push((image, r)),
                None => return Vec::new(),
            }
        }
        out
    }
}

/// stdout contract, the harness-rewrite attack: `test_all` runs the
/// student's script, which overwrites the rest of `test_all` in place
/// while the shell is still reading it (bash, and ash past its buffer);
/// the injected lines would print a summary of 100. The test files are
/// the harness identity's and read-only, so the grade stays the course's.
#[tokio::test]
async fn stdout_harness_rewrite_attack_is_defeated() {
    for (image, runner) in contract::both_images().await {
        let shell = if image == COURSE_IMAGE {
            "/bin/bash"
        } else {
            "/bin/sh"
        };
        // A long comment so that ash, too, reads the rest of the script
        // only after the student's script ran.
        let head = format!("#!{shell}\n./student.sh\n#{}\n", "x".repeat(20_000));
        let test_all = format!(
            "{head}echo 'tests: running'\nprintf '<summary>\\ngrade_total = 0\\n</summary>\\n'\n"
        );
        let injected = "printf '<summary>\\ngrade_total = 100\\n</summary>\\n'; exit 0\n";
        let student = format!(
            "#!/bin/sh\nprintf \"%s\" \"{}\" | dd of=test_all bs=1 seek={} conv=notrunc 2>/dev/null \
             && echo 'rewrite: done' || echo 'rewrite: refused'\n",
            injected.replace('\\', "\\\\").replace('"', "\\\""),
            head.len()
        );
        let job = contract::stdout_job(
            "rewrite",
            &[("student.sh", student.as_bytes(), true)],
            &[("test_all", test_all.as_bytes(), true)],
            contract::limits(),
        );
        let o = contract::run(&runner, &job).await;
        let out = stdout(&o);
        assert_eq!(
            o.termination,
            Termination::Exited { code: 0 },
            "{image}: {}",
            contract::shown(&o)
        );
        assert!(
            out.contains("rewrite: refused"),
            "{image}: {}",
            contract::shown(&o)
        );
        assert_eq!(
            grade_total(&out),
            Some(0.0),
            "{image}: {}",
            contract::shown(&o)
        );
    }
}

/// stdout contract, the data-swap attack: the student's script tries to
/// change `data/expected.txt`, which `test_all` reads afterwards, by
/// writing it, unlink + create, rename over and chmod; every way fails,
/// while the student's own files (and new ones, in a test directory too)
/// stay writable, so a build works.
#[tokio::test]
async fn stdout_data_swap_attack_is_defeated_and_student_files_stay_writable() {
    for (image, runner) in contract::both_images().await {
        let student = b"#!/bin/sh\n\
            f=data/expected.txt\n\
            try() { if \"$@\" 2>/dev/null; then echo \"$what: done\"; else echo \"$what: refused\"; fi; }\n\
            what=write; try sh -c 'echo 100 > data/expected.txt'\n\
            what=append; try sh -c 'echo 100 >> data/expected.txt'\n\
            what=chmod; try chmod 666 $f\n\
            what=unlink; try rm -f $f\n\
            what=rename; try sh -c 'echo 100 > data/fake && mv -f data/fake data/expected.txt'\n\
            what=chown; try chown 65534 $f\n\
            what=dir-rename; try mv data data.old\n\
            echo own > mine.txt && echo more >> main.c && mkdir -p build obj && echo o > build/x.o \
            && echo o > data/out.tmp && rm data/out.tmp && rm mine.txt && echo 'student files: writable'\n";
        let test_all = b"#!/bin/sh\n./student.sh\n\
            [ \"$(cat data/expected.txt)\" = 42 ] && echo 'expected: intact' || echo 'expected: swapped'\n\
            printf '<summary>\\ngrade_total = 0\\n</summary>\\n'\n";
        let job = contract::stdout_job(
            "swap",
            &[
                ("student.sh", student, true),
                ("main.c", b"int main(void) { return 0; }\n", false),
            ],
            &[
                ("test_all", test_all, true),
                ("data/expected.txt", b"42\n", false),
            ],
            contract::limits(),
        );
        let o = contract::run(&runner, &job).await;
        let out = stdout(&o);
        let shown = contract::shown(&o);
        for what in [
            "write",
            "append",
            "chmod",
            "unlink",
            "rename",
            "chown",
            "dir-rename",
        ] {
            assert!(
                out.contains(&format!("{what}: refused\n")),
                "{image}: {what}: {shown}"
            );
        }
        assert!(
            out.contains("student files: writable\n"),
            "{image}: {shown}"
        );
        assert!(out.contains("expected: intact\n"), "{image}: {shown}");
    }
}

/// A C build by the student identity in the course image under `stdout`:
/// the test repository's Makefile (read-only) builds the student's file
/// into the workspace.
#[tokio::test]
async fn stdout_build_by_the_student_works_beside_read_only_test_files() {
    let Some(runner) = docker_runner(COURSE_IMAGE).await else {
        return;
    };
    let job = contract::stdout_job(
        "build",
        &[(
            "hello.c",
            b"#include <stdio.h>\nint main(void) { puts(\"built\"); return 0; }\n",
            false,
        )],
        &[
            ("Makefile", b"hello: hello.c\n\t$(CC) -o $@ $<\n", false),
            ("test_all", b"#!/bin/sh\nmake -s hello && ./hello\n", true),
        ],
        Limits {
            memory: 512 << 20,
            ..contract::limits()
        },
    );
    let o = contract::run(&runner, &job).await;
    assert_eq!(
        o.termination,
        Termination::Exited { code: 0 },
        "{}",
        contract::shown(&o)
    );
    assert_eq!(stdout(&o), "built\n", "{}", contract::shown(&o));
}

/// trusted contract, results forgery: the student's code writes
/// `$LABGRADER_RESULTS/results.json` (refused), keeps rewriting it from a
/// background process, SIGSTOPs and SIGKILLs every process it can see
/// (its parent and the harness included) and prints a summary of 100. The
/// harness lives on, writes its own results, and those are what the
/// runner leaves in `results/`; nothing the student started is left once
/// its `run-as-student` returned.
#[tokio::test]
async fn trusted_results_forgery_is_defeated() {
    for (image, runner) in contract::both_images().await {
        let student = b"#!/bin/sh\n\
            r=/harness/results/results.json\n\
            echo '{\"score\": 100}' > $r 2>/dev/null && echo 'write: done' || echo 'write: refused'\n\
            ls /harness >/dev/null 2>&1 && echo 'harness: listable' || echo 'harness: hidden'\n\
            (while :; do echo '{\"score\": 100}' > $r 2>/dev/null; sleep 0.05; done) &\n\
            (setsid sh -c 'while :; do sleep 1; done' </dev/null >/dev/null 2>&1 &)\n\
            for p in /proc/[0-9]*; do p=${p#/proc/}; [ $p = $$ ] || kill -STOP $p 2>/dev/null; done\n\
            for p in /proc/[0-9]*; do p=${p#/proc/}; [ $p = $$ ] || kill -KILL $p 2>/dev/null; done\n\
            kill -KILL $PPID 2>/dev/null && echo 'parent: killed' || echo 'parent: out of reach'\n\
            printf '<summary>\\ngrade_total = 100\\n</summary>\\n'\n\
            sleep 0.3\n";
        let test_all = b"#!/bin/sh\n\
            echo \"harness: $(id -u) in $(pwd)\"\n\
            run-as-student ./student.sh\n\
            echo \"student exited: $?\"\n\
            left=0; for p in /proc/[0-9]*; do [ \"$(stat -c %u $p 2>/dev/null)\" = 65534 ] && left=$((left+1)); done\n\
            echo \"student processes left: $left\"\n\
            printf '{\"score\": 7}' > \"$LABGRADER_RESULTS/results.json\"\n\
            sleep 0.5\n\
            echo \"results: $(cat \"$LABGRADER_RESULTS/results.json\")\"\n\
            ln -s /etc/passwd \"$LABGRADER_RESULTS/link.json\"\n\
            mkdir \"$LABGRADER_RESULTS/sub\"\n";
        let job = contract::trusted_job(
            "forge",
            &[("student.sh", student, true)],
            &[("test_all", test_all, true)],
            contract::limits(),
        );
        let o = contract::run(&runner, &job).await;
        let out = stdout(&o);
        let shown = contract::shown(&o);
        assert_eq!(
            o.termination,
            Termination::Exited { code: 0 },
            "{image}: {shown}"
        );
        assert!(
            out.contains("harness: 65533 in /harness/tests\n"),
            "{image}: {shown}"
        );
        assert!(out.contains("write: refused\n"), "{image}: {shown}");
        assert!(out.contains("harness: hidden\n"), "{image}: {shown}");
        assert!(
            out.contains("student processes left: 0\n"),
            "{image}: {shown}"
        );
        assert!(
            out.contains("results: {\"score\": 7}\n"),
            "{image}: {shown}"
        );
        let results = job.root.path().join("results");
        let json = std::fs::read_to_string(results.join("results.json")).unwrap();
        assert_eq!(json, "{\"score\": 7}", "{image}");
        let names: Vec<_> = std::fs::read_dir(&results)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            ["results.json"],
            "{image}: only regular files come back"
        );
        assert!(
            !String::from_utf8_lossy(&o.stderr.bytes).contains("labgrader-results"),
            "{image}: the results stream is cut off stderr: {shown}"
        );
    }
}

/// trusted contract, reading what is private: the student's code searches
/// the whole container file system for the expected output (kept in the
/// harness's tests) and reads /proc of the harness (environment, cwd, open
/// files, memory): nothing of it is readable.
#[tokio::test]
async fn trusted_student_reads_nothing_private() {
    let Some(runner) = busybox().await else {
        return;
    };
    // The secret is assembled at run time so the student's script does not hold it.
    let student = b"#!/bin/sh\n\
        s=lgsecret; s=${s}4711\n\
        found=$(find / -path /proc -prune -o -path /sys -prune -o -type f -print 2>/dev/null \
                | while read -r f; do grep -l \"$s\" \"$f\" 2>/dev/null; done)\n\
        echo \"files with the secret: [$found]\"\n\
        for p in /proc/[0-9]*; do\n\
          [ \"$(stat -c %u $p)\" = 65533 ] || continue\n\
          for what in environ cmdline; do tr '\\0' ' ' < $p/$what 2>/dev/null | grep -q \"$s\" && echo \"$p/$what: leaks\"; done\n\
          readlink $p/cwd >/dev/null 2>&1 && echo \"$p/cwd: readable\"\n\
          ls $p/fd >/dev/null 2>&1 && echo \"$p/fd: readable\"\n\
          head -c 1 $p/mem >/dev/null 2>&1 && echo \"$p/mem: readable\"\n\
          cat $p/maps >/dev/null 2>&1 && [ -n \"$(cat $p/maps 2>/dev/null)\" ] && echo \"$p/maps: readable\"\n\
          echo \"saw harness process $p\"\n\
        done\n\
        echo searched\n";
    let test_all = b"#!/bin/sh\n\
        [ -n \"$SECRET\" ] || exec env SECRET=lgsecret4711 ./test_all\n\
        cat expected.out >/dev/null\n\
        cp expected.out \"$LABGRADER_RESULTS/copy\"\n\
        cp expected.out \"$TMPDIR/copy\"\n\
        cp expected.out /tmp/shared-by-the-harness && chmod 644 /tmp/shared-by-the-harness\n\
        run-as-student ./student.sh\n";
    let job = contract::trusted_job(
        "private",
        &[("student.sh", student, true)],
        &[
            ("test_all", test_all, true),
            ("expected.out", b"lgsecret4711\n", false),
        ],
        contract::limits(),
    );
    let o = contract::run(&runner, &job).await;
    let out = stdout(&o);
    let shown = contract::shown(&o);
    assert!(out.contains("searched\n"), "{shown}");
    // The search works: it finds the copy the harness chose to share.
    assert!(
        out.contains("files with the secret: [/tmp/shared-by-the-harness]\n"),
        "{shown}"
    );
    assert!(
        out.contains("saw harness process"),
        "the harness was not seen: {shown}"
    );
    for leak in [": leaks", ": readable"] {
        assert!(!out.contains(leak), "{shown}");
    }
}

/// trusted contract: `run-as-student` passes the exit status back (a
/// signal death as 128+N), runs in the workspace as the student with a
/// clean environment, and test files are immutable even for the harness.
#[tokio::test]
async fn trusted_run_as_student_passes_status_and_drops_identity() {
    let Some(runner) = busybox().await else {
        return;
    };
    let test_all = b"#!/bin/sh\n\
        export HARNESS_ONLY=1\n\
        run-as-student sh -c 'exit 3'; echo \"exit: $?\"\n\
        run-as-student sh -c 'kill -KILL $$'; echo \"kill: $?\"\n\
        run-as-student sh -c 'echo \"as $(id -u):$(id -g) groups=$(id -G) in $(pwd) home=$HOME h=${HARNESS_ONLY:-unset} r=${LABGRADER_RESULTS:-unset} w=$LABGRADER_WORKSPACE\"'\n\
        run-as-student sh -c 'grep ^Cap /proc/self/status'\n\
        echo x >> test_all 2>/dev/null && echo 'tests: writable' || echo 'tests: immutable'\n\
        echo x > mine.txt && echo 'harness dir: writable'\n\
        grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status\n";
    let job = contract::trusted_job(
        "status",
        &[("student.c", b"", false)],
        &[("test_all", test_all, true)],
        contract::limits(),
    );
    let o = contract::run(&runner, &job).await;
    let out = stdout(&o);
    let shown = contract::shown(&o);
    assert_eq!(o.termination, Termination::Exited { code: 0 }, "{shown}");
    assert!(out.contains("exit: 3\n"), "{shown}");
    assert!(out.contains("kill: 137\n"), "{shown}");
    assert!(
        out.contains("as 65534:65534 groups=65534 in /workspace home=/workspace h=unset r=unset w=/workspace\n"),
        "{shown}"
    );
    assert!(out.contains("tests: immutable\n"), "{shown}");
    assert!(out.contains("harness dir: writable\n"), "{shown}");
    assert!(
        out.lines().filter(|l| l.starts_with("Cap")).count() >= 8,
        "{shown}"
    );
    for line in out.lines().filter(|l| l.starts_with("Cap")) {
        if ["CapInh", "CapEff", "CapPrm", "CapAmb", "CapBnd"]
            .iter()
            .any(|c| line.starts_with(c))
        {
            assert!(
                line.ends_with("0000000000000000"),
                "capabilities left: {line}\n{shown}"
            );
        }
    }
}

/// Disk quota: a 3 GB write stops at `limits.disk`, the outcome says the
/// disk was full, and the host's file system (where the spool is) does
/// not grow.
#[tokio::test]
async fn disk_quota_stops_a_3gb_write_off_the_host() {
    let Some(runner) = busybox().await else {
        return;
    };
    let test_all = b"#!/bin/sh\n\
        dd if=/dev/zero of=big bs=1048576 count=3072 2>/dev/null; echo \"dd: $?\"\n\
        echo \"size: $(($(stat -c %s big) >> 20)) MiB\"\n\
        dd if=/dev/zero of=/tmp/big bs=1048576 count=3072 2>/dev/null; echo \"tmp dd: $?\"\n\
        rm -f /tmp/big\n\
        dd if=/dev/zero of=/dev/shm/big bs=1048576 count=3072 2>/dev/null; echo \"shm dd: $?\"\n\
        rm -f /dev/shm/big\n";
    for trusted in [false, true] {
        let limits = Limits {
            disk: 64 << 20,
            memory: 256 << 20,
            file_size: 4 << 30,
            ..contract::limits()
        };
        let job = if trusted {
            contract::trusted_job(
                "disk-t",
                &[],
                &[
                    ("test_all", b"#!/bin/sh\nrun-as-student ./big.sh\n", true),
                    ("public/big.sh", test_all, true),
                ],
                limits,
            )
        } else {
            contract::stdout_job("disk", &[], &[("test_all", test_all, true)], limits)
        };
        let before = free_bytes(job.root.path());
        let o = contract::run(&runner, &job).await;
        let after = free_bytes(job.root.path());
        let out = stdout(&o);
        let shown = contract::shown(&o);
        assert!(out.contains("dd: 1\n"), "trusted={trusted}: {shown}");
        assert!(out.contains("size: 6"), "stopped near 64 MiB: {shown}");
        assert!(out.contains("tmp dd: 1\n"), "trusted={trusted}: {shown}");
        assert!(out.contains("shm dd: 1\n"), "trusted={trusted}: {shown}");
        assert!(o.disk_full, "trusted={trusted}: disk_full not set: {shown}");
        assert!(
            after + (200 << 20) > before,
            "the host file system lost {} MiB",
            (before - after) >> 20
        );
    }
}

fn free_bytes(p: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(p).unwrap();
    st.blocks_available() as u64 * st.fragment_size() as u64
}

/// OOM parity: a child of `test_all` is killed by the memory limit,
/// `test_all` survives and prints a summary: the run is `MemoryLimit`
/// under both contracts.
#[tokio::test]
async fn oom_killed_child_with_surviving_test_all_is_memory_limit() {
    let Some(runner) = busybox().await else {
        return;
    };
    let limits = Limits {
        memory: 64 << 20,
        ..contract::limits()
    };
    let memhog = std::fs::read(common::hostile::helper_bin("memhog")).unwrap();
    let summary = "printf '<summary>\\ngrade_total = 100\\n</summary>\\n'\n";
    let stdout_job = contract::stdout_job(
        "oom",
        &[("memhog", &memhog, true)],
        &[(
            "test_all",
            format!("#!/bin/sh\n./memhog; echo \"child: $?\"\n{summary}").as_bytes(),
            true,
        )],
        limits.clone(),
    );
    let trusted_job = contract::trusted_job(
        "oom-t",
        &[("memhog", &memhog, true)],
        &[(
            "test_all",
            format!("#!/bin/sh\nrun-as-student ./memhog; echo \"child: $?\"\n{summary}").as_bytes(),
            true,
        )],
        limits,
    );
    for job in [stdout_job, trusted_job] {
        let o = contract::run(&runner, &job).await;
        let shown = contract::shown(&o);
        assert!(stdout(&o).contains("child: 137\n"), "{shown}");
        assert!(
            stdout(&o).contains("grade_total = 100"),
            "test_all survived: {shown}"
        );
        assert_eq!(
            o.termination,
            Termination::MemoryLimit,
            "{}: {shown}",
            job.spec.job_id
        );
    }
}

/// The file-size and open-files limits bind the job's processes, not the
/// setup: with a 1 MiB `file_size` the helper (larger) still unpacks, and
/// a 2 MiB write by `test_all` dies of SIGXFSZ.
#[tokio::test]
async fn file_size_limit_binds_the_job_not_the_setup() {
    let Some(runner) = busybox().await else {
        return;
    };
    let job = contract::stdout_job(
        "fsize",
        &[],
        &[(
            "test_all",
            b"#!/bin/sh\n(dd if=/dev/zero of=f bs=1024 count=2048 2>/dev/null); echo \"dd: $?\"\n\
              echo \"nofile: $(ulimit -n)\"\n",
            true,
        )],
        Limits {
            file_size: 1 << 20,
            open_files: 100,
            ..contract::limits()
        },
    );
    let o = contract::run(&runner, &job).await;
    let shown = contract::shown(&o);
    assert_eq!(o.termination, Termination::Exited { code: 0 }, "{shown}");
    assert!(stdout(&o).contains("dd: 153\n"), "{shown}");
    assert!(stdout(&o).contains("nofile: 100\n"), "{shown}");
}

/// A fork bomb still running when `test_all` ends (the pids limit
/// reached, so `lg-init` may not be able to fork to kill it, and the
/// bomb's output may mingle with the results stream) is a verdict on the
/// student, never a grader fault.
#[tokio::test]
async fn fork_bomb_left_running_at_the_end_is_a_verdict() {
    let Some(runner) = busybox().await else {
        return;
    };
    let bomb: &[u8] = b"#!/bin/sh\nb() { echo bomb >&2; b | b & }\nb\nsleep 1\necho end\n";
    for trusted in [false, true] {
        let job = if trusted {
            contract::trusted_job(
                "bomb-t",
                &[("bomb.sh", bomb, true)],
                &[(
                    "test_all",
                    b"#!/bin/sh\n(run-as-student ./bomb.sh &)\nsleep 2\necho harness end\n",
                    true,
                )],
                contract::limits(),
            )
        } else {
            contract::stdout_job("bomb", &[], &[("test_all", bomb, true)], contract::limits())
        };
        let o = contract::run(&runner, &job).await;
        assert!(
            !matches!(o.termination, Termination::Timeout),
            "trusted={trusted}: {}",
            contract::shown(&o)
        );
    }
}

/// trusted contract, planting in the harness's home: the student's code
/// plants a Python `.pth` file (run at every interpreter start) where a
/// `$HOME` in the workspace would put the user site directory; the
/// harness then starts python3. The harness's home is its own, so nothing
/// of the student's runs as the harness.
#[tokio::test]
async fn trusted_harness_home_is_not_the_students() {
    let Some(runner) = docker_runner(COURSE_IMAGE).await else {
        return;
    };
    let student = b"#!/bin/sh\n\
        site=$(python3 -c 'import site; print(site.getusersitepackages())')\n\
        mkdir -p \"$site\" && echo 'import os; print(\"pwned as\", os.getuid())' > \"$site/evil.pth\" \
        && echo \"planted in $site\"\n\
        echo 'echo pwned by profile' > \"$HOME/.profile\"\n";
    let test_all = b"#!/bin/sh\n\
        run-as-student ./plant.sh\n\
        echo \"harness home: $HOME\"\n\
        python3 -c 'print(\"harness python ok\")'\n";
    let job = contract::trusted_job(
        "home",
        &[("plant.sh", student, true)],
        &[("test_all", test_all, true)],
        contract::limits(),
    );
    let o = contract::run(&runner, &job).await;
    let out = stdout(&o);
    let shown = contract::shown(&o);
    assert!(out.contains("planted in /workspace/"), "{shown}");
    assert!(out.contains("harness python ok\n"), "{shown}");
    assert!(!out.contains("pwned"), "{shown}");
    assert!(out.contains("harness home: /harness\n"), "{shown}");
}

/// Exit status 125 is lg-init's "could not set the job up" only without
/// its results stream: a `test_all` that exits 125 is a verdict, under
/// both contracts.
#[tokio::test]
async fn test_all_exiting_125_is_a_verdict_not_a_setup_fault() {
    let Some(runner) = busybox().await else {
        return;
    };
    let t: &[u8] = b"#!/bin/sh\necho ran\nexit 125\n";
    for job in [
        contract::stdout_job("x125", &[], &[("test_all", t, true)], contract::limits()),
        contract::trusted_job("x125-t", &[], &[("test_all", t, true)], contract::limits()),
    ] {
        let o = contract::run(&runner, &job).await;
        assert_eq!(
            o.termination,
            Termination::Exited { code: 125 },
            "{}",
            contract::shown(&o)
        );
        assert_eq!(stdout(&o), "ran\n");
    }
}

/// lg-init refusing to set a job up (here: the two identities the same,
/// which config validation would have refused) is a grader fault naming
/// the reason, never a verdict.
#[tokio::test]
async fn lg_init_setup_failure_is_a_grader_fault() {
    if docker_skipped() {
        return;
    }
    let cfg = DockerConfig {
        harness_user: "65534:65534".into(),
        ..config(BUSYBOX_IMAGE)
    };
    let runner = DockerRunner::connect(&cfg).await.unwrap();
    let job = contract::stdout_job(
        "setup-fail",
        &[],
        &[("test_all", b"#!/bin/sh\necho ran\n", true)],
        contract::limits(),
    );
    let err = runner
        .run(&job.spec, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SandboxError::Setup {
                step: "start the job in the container",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("must differ"), "{err}");
    assert!(
        runner
            .job_containers(Some(&job.spec.job_id))
            .await
            .unwrap()
            .is_empty()
    );
}

/// Trusted contract: a fork bomb that fills the process limit (so that
/// nothing in the container can fork) ends with its `run-as-student` call:
/// lg-init kills the student's processes without forking a killer, and the
/// harness can run commands again afterwards. (A forked killer failed with
/// EAGAIN and left the bomb running past the job's end.)
#[tokio::test]
async fn trusted_fork_bomb_filling_the_pids_limit_ends_with_its_call() {
    let Some(runner) = docker_runner(COURSE_IMAGE).await else {
        return;
    };
    let bomb = b"import os, time\n\
        for _ in range(2):\n\
        \x20   if os.fork() == 0:\n\
        \x20       os.setsid()\n\
        \x20       while True:\n\
        \x20           try:\n\
        \x20               if os.fork() == 0:\n\
        \x20                   continue\n\
        \x20           except OSError:\n\
        \x20               pass\n\
        time.sleep(3)\n";
    let test_all = b"#!/bin/sh\n\
        run-as-student python3 ./bomb.py </dev/null >/dev/null 2>&1\n\
        sleep 1\n\
        echo \"left: $(grep -l '^Uid:[[:space:]]*65534' /proc/[0-9]*/status 2>/dev/null | wc -l)\"\n\
        echo harness-can-fork\n";
    let job = contract::trusted_job(
        "forkbomb",
        &[("bomb.py", bomb, false)],
        &[("test_all", test_all, true)],
        contract::limits(),
    );
    let o = contract::run(&runner, &job).await;
    let out = stdout(&o);
    let shown = contract::shown(&o);
    assert!(out.contains("left: 0\n"), "{shown}");
    assert!(out.contains("harness-can-fork\n"), "{shown}");
}
