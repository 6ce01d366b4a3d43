//! The `slurm` runner against a real one-node Slurm cluster (munged,
//! slurmctld, slurmd with cgroup v1, slurmrestd with JWT) started by
//! `scripts/setup/slurm.sh`. Fails loudly when the cluster is absent unless
//! `LABGRADER_SKIP_SLURM=1`.
//!
//! The node runs `labgrader sandbox --job-dir` with the runner `cli.rs`
//! picks for nodes. Cases of the hostile table that need the native
//! sandbox's isolation on the node are marked until it is merged.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::files::write_exec as exe;
use common::hostile::stdout;
use common::services::slurm_config as cluster;
use labgrader::config::Config;
use labgrader::sandbox::slurm::{SLURM_ID_FILE, SlurmRunner};
use labgrader::sandbox::{RunSpec, Runner, SandboxError, Termination};
use tokio_util::sync::CancellationToken;

fn runner() -> Option<SlurmRunner> {
    cluster().map(|cfg| SlurmRunner::new(&cfg).expect("slurm runner"))
}

/// A workspace whose `test_all` is `script`.
fn workspace(script: &str) -> tempfile::TempDir {
    common::hostile::workspace("lg-slurm-", script)
}

fn spec(job_id: &str, ws: &Path) -> RunSpec {
    let mut limits = common::hostile::limits();
    limits.timeout = Duration::from_secs(20);
    common::hostile::spec(job_id, ws, limits)
}

fn pgrep(pattern: &str) -> String {
    let out = Command::new("pgrep")
        .args(["-af", pattern])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// --- the hostile table, through Slurm ---------------------------------------

#[tokio::test]
async fn slurm_memory_hog_is_memory_limit() {
    let Some(r) = runner() else { return };
    common::hostile::run_case(&r, "memory_hog").await;
}

#[tokio::test]
async fn slurm_infinite_loop_times_out_in_the_sandboxs_seconds() {
    let Some(r) = runner() else { return };
    let start = Instant::now();
    common::hostile::run_case(&r, "infinite_loop").await;
    // The sandbox's 8 s, not Slurm's whole-minute time limit.
    assert!(
        start.elapsed() < Duration::from_secs(45),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn slurm_stdout_flood_is_capped() {
    let Some(r) = runner() else { return };
    common::hostile::run_case(&r, "stdout_flood").await;
}

#[tokio::test]
async fn slurm_daemonized_child_does_not_outlive_job() {
    let Some(r) = runner() else { return };
    common::hostile::run_case(&r, "daemonized_child_does_not_outlive_job").await;
}

#[tokio::test]
async fn slurm_readonly_root_and_unprivileged() {
    let Some(r) = runner() else { return };
    common::hostile::run_case(&r, "readonly_root_and_unprivileged").await;
}

#[tokio::test]
async fn slurm_cannot_signal_host_processes() {
    let Some(r) = runner() else { return };
    common::hostile::run_case(&r, "cannot_signal_host_processes").await;
}

#[tokio::test]
async fn slurm_network_closed() {
    let Some(r) = runner() else { return };
    common::hostile::run_case(&r, "network_closed").await;
}

#[tokio::test]
async fn slurm_fork_bomb_is_contained() {
    let Some(r) = runner() else { return };
    common::hostile::run_case(&r, "fork_bomb").await;
}

#[tokio::test]
async fn slurm_write_outside_workspace_stays_inside() {
    let Some(r) = runner() else { return };
    common::hostile::run_case(&r, "write_outside_workspace_stays_inside").await;
}

// --- the runner's own behaviour ---------------------------------------------

#[tokio::test]
async fn slurm_happy_path_returns_stdout_exit_code_and_cleans_up() {
    let Some(r) = runner() else { return };
    let ws = workspace(
        "echo \"job $LABGRADER_JOB_ID in $(pwd)\"\n\
         printf '<summary>\\ngrade_total = 87.5\\n</summary>\\n'\n\
         echo to-staff >&2\n\
         exit 3\n",
    );
    let id = common::hostile::unique("happy");
    let o = r
        .run(&spec(&id, ws.path()), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(o.termination, Termination::Exited { code: 3 });
    assert_eq!(o.runner, "slurm");
    let out = stdout(&o);
    assert!(out.contains(&format!("job {id} in ")), "{out}");
    assert!(out.contains("grade_total = 87.5"), "{out}");
    assert_eq!(String::from_utf8_lossy(&o.stderr.bytes).trim(), "to-staff");
    let cfg = cluster().unwrap();
    assert!(
        !cfg.slurm.shared_dir.join(&id).exists(),
        "job directory left behind"
    );
}

#[tokio::test]
async fn slurm_job_is_found_again_after_a_grader_crash_not_resubmitted() {
    let Some(cfg) = cluster() else { return };
    let id = common::hostile::unique("reattach");
    let ws = workspace("sleep 3\necho finished-once\n");
    let spec = spec(&id, ws.path());
    let submitted: Arc<Mutex<Vec<u64>>> = Arc::default();
    let seen = submitted.clone();
    let first = SlurmRunner::new(&cfg)
        .unwrap()
        .on_submitted(Arc::new(move |_, slurm_id| {
            seen.lock().unwrap().push(slurm_id)
        }));
    // The "grader" dies right after submission: its task is aborted.
    let s2 = spec.clone();
    let task = tokio::spawn(async move { first.run(&s2, &CancellationToken::new()).await });
    let id_file = cfg.slurm.shared_dir.join(&id).join(SLURM_ID_FILE);
    let start = Instant::now();
    while !id_file.exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "never submitted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    let _ = task.await;
    let slurm_id = submitted.lock().unwrap()[0];

    // A new grader process: a new runner, the same job.
    let second = SlurmRunner::new(&cfg).unwrap();
    let o = second.run(&spec, &CancellationToken::new()).await.unwrap();
    assert_eq!(o.termination, Termination::Exited { code: 0 });
    assert!(stdout(&o).contains("finished-once"), "{o:?}");
    let jobs = second.jobs_named(&id).await.unwrap();
    assert_eq!(jobs.len(), 1, "submitted twice: {jobs:?}");
    assert_eq!(jobs[0].job_id, Some(slurm_id));
}

#[tokio::test]
async fn slurm_job_whose_id_was_not_recorded_is_found_by_name() {
    let Some(cfg) = cluster() else { return };
    let id = common::hostile::unique("byname");
    let ws = workspace("sleep 2\necho found-by-name\n");
    let spec = spec(&id, ws.path());
    let first = SlurmRunner::new(&cfg).unwrap();
    let s2 = spec.clone();
    let task = tokio::spawn(async move { first.run(&s2, &CancellationToken::new()).await });
    let id_file = cfg.slurm.shared_dir.join(&id).join(SLURM_ID_FILE);
    let start = Instant::now();
    while !id_file.exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "never submitted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    let _ = task.await;
    // As if the grader died between the submission and writing the id.
    std::fs::remove_file(&id_file).unwrap();

    let second = SlurmRunner::new(&cfg).unwrap();
    let o = second.run(&spec, &CancellationToken::new()).await.unwrap();
    assert!(stdout(&o).contains("found-by-name"), "{o:?}");
    assert_eq!(second.jobs_named(&id).await.unwrap().len(), 1);
}

#[tokio::test]
async fn slurm_cancelled_job_leaves_no_process() {
    let Some(cfg) = cluster() else { return };
    let slurm_id = Arc::new(Mutex::new(None));
    let seen = slurm_id.clone();
    let r = SlurmRunner::new(&cfg)
        .unwrap()
        .on_submitted(Arc::new(move |_, id| *seen.lock().unwrap() = Some(id)));
    let id = common::hostile::unique("cancel");
    let token = id.replace('-', "");
    let ws = workspace(&format!(
        "cp /bin/sleep lg-{token}-child\ncp /bin/sleep lg-{token}-main\n\
         setsid ./lg-{token}-child 300 </dev/null >/dev/null 2>&1 &\n\
         exec ./lg-{token}-main 300\n"
    ));
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let t = token.clone();
    tokio::spawn(async move {
        let start = Instant::now();
        while pgrep(&format!("lg-{t}-child")).is_empty()
            && start.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c.cancel();
    });
    let err = r.run(&spec(&id, ws.path()), &cancel).await.unwrap_err();
    assert!(matches!(err, SandboxError::Cancelled), "{err}");
    let left = pgrep(&format!("lg-{token}"));
    assert!(left.is_empty(), "processes left after cancel: {left}");
    // Nor a cgroup of the job (proctrack/cgroup, task/cgroup).
    let job = format!("job_{}", slurm_id.lock().unwrap().expect("submitted"));
    for ctl in ["freezer", "memory"] {
        for e in walkdir::WalkDir::new(Path::new("/sys/fs/cgroup").join(ctl))
            .max_depth(4)
            .into_iter()
            .flatten()
        {
            assert!(
                e.file_name() != job.as_str(),
                "cgroup left: {}",
                e.path().display()
            );
        }
    }
    let jobs = r.jobs_named(&id).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].job_state.as_deref(), Some("CANCELLED"));
    assert!(
        !cfg.slurm.shared_dir.join(&id).exists(),
        "job directory left behind"
    );
}

#[tokio::test]
async fn slurm_time_limit_is_a_backstop_reported_as_timeout() {
    let Some(mut cfg) = cluster() else { return };
    use std::os::unix::fs::PermissionsExt;
    // A node-side program that ignores the sandbox's timeout: only Slurm's
    // whole-minute time limit stops it (takes about a minute).
    let id = common::hostile::unique("backstop");
    let fake_dir = cfg.slurm.shared_dir.join(format!("fake-{id}"));
    std::fs::create_dir_all(&fake_dir).unwrap();
    std::fs::set_permissions(&fake_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let fake = fake_dir.join("labgrader");
    std::fs::write(&fake, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    cfg.slurm.labgrader_bin = fake;
    let r = SlurmRunner::new(&cfg).unwrap();
    let ws = workspace("echo never\n");
    let mut sp = spec(&id, ws.path());
    sp.limits.timeout = Duration::from_secs(1);
    let o = r.run(&sp, &CancellationToken::new()).await;
    std::fs::remove_dir_all(&fake_dir).unwrap();
    let o = o.unwrap();
    assert_eq!(o.termination, Termination::Timeout);
    let jobs = r.jobs_named(&id).await.unwrap();
    assert_eq!(jobs[0].job_state.as_deref(), Some("TIMEOUT"));
}

#[tokio::test]
async fn slurm_missing_binary_on_node_is_a_grader_fault() {
    let Some(mut cfg) = cluster() else { return };
    cfg.slurm.labgrader_bin = PathBuf::from("/nonexistent/labgrader");
    let r = SlurmRunner::new(&cfg).unwrap();
    let ws = workspace("echo never\n");
    let err = r
        .run(
            &spec(&common::hostile::unique("nobin"), ws.path()),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, SandboxError::Setup { .. }), "{err}");
    assert!(err.to_string().contains("without an outcome"), "{err}");
}

#[tokio::test]
async fn slurm_bad_token_is_unavailable_not_a_verdict() {
    let Some(mut cfg) = cluster() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("token");
    std::fs::write(&bad, "not-a-jwt\n").unwrap();
    cfg.slurm.token_file = bad;
    let r = SlurmRunner::new(&cfg).unwrap();
    assert!(!labgrader::sandbox::slurm::available(&cfg).await);
    let ws = workspace("echo never\n");
    let id = common::hostile::unique("badtoken");
    let err = r
        .run(&spec(&id, ws.path()), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, SandboxError::Unavailable { .. }), "{err}");
    // Kept for the retry (slurmrestd faults leave the directory); not here.
    std::fs::remove_dir_all(cfg.slurm.shared_dir.join(&id)).unwrap();
}

#[tokio::test]
async fn slurm_available_when_cluster_is_up() {
    let Some(cfg) = cluster() else { return };
    assert!(labgrader::sandbox::slurm::available(&cfg).await);
}

#[tokio::test]
async fn slurm_unreachable_restd_is_unavailable() {
    // Needs no cluster: a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = Config::default();
    cfg.slurm.url = format!("http://127.0.0.1:{port}");
    cfg.secrets.slurm_token = Some(labgrader::config::Secret::new("t"));
    let dir = tempfile::tempdir().unwrap();
    cfg.slurm.shared_dir = dir.path().to_path_buf();
    assert!(!labgrader::sandbox::slurm::available(&cfg).await);
    let r = SlurmRunner::new(&cfg).unwrap();
    let ws = workspace("echo never\n");
    let err = r
        .run(&spec("unreachable", ws.path()), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, SandboxError::Unavailable { .. }), "{err}");
}

// --- the contract, results, OOM parity and quota through the job dir -------

/// Stdout contract through Slurm: the test files listed in `test_paths`
/// stay immutable to the student on the node (the data-swap attack), and
/// the student's own files stay writable.
#[tokio::test]
async fn slurm_stdout_test_files_are_immutable_to_the_student() {
    let Some(r) = runner() else { return };
    let ws = workspace(
        "E=data/expected.txt\n\
         echo 41 > $E 2>/dev/null && echo swap: write\n\
         echo 41 > /tmp/e; mv -f /tmp/e $E 2>/dev/null && echo swap: rename\n\
         chmod 666 $E 2>/dev/null && echo swap: chmod\n\
         echo built > mine.o && echo build: ok\n\
         cat $E\n",
    );
    std::fs::create_dir(ws.path().join("data")).unwrap();
    std::fs::write(ws.path().join("data/expected.txt"), "7\n").unwrap();
    let mut s = spec(&common::hostile::unique("swap"), ws.path());
    s.test_paths = Arc::new(vec![
        PathBuf::from("test_all"),
        PathBuf::from("data"),
        PathBuf::from("data/expected.txt"),
    ]);
    let o = r.run(&s, &CancellationToken::new()).await.unwrap();
    assert_eq!(stdout(&o), "build: ok\n7\n", "{o:?}");
}

/// Trusted contract through Slurm: the harness's results come back (the
/// student's forgeries do not), with its tests private on the node.
#[tokio::test]
async fn slurm_trusted_results_come_back_and_the_student_cannot_forge_them() {
    let Some(r) = runner() else { return };
    let ws = tempfile::Builder::new()
        .prefix("lg-slurm-")
        .tempdir()
        .unwrap();
    exe(
        &ws.path().join("student.sh"),
        "#!/bin/sh\necho forged > \"$1/results.json\" 2>/dev/null && echo forged\n\
         cat /harness/tests/secret.txt 2>/dev/null || echo secret: hidden\n\
         (while :; do echo forged > \"$1/results.json\" 2>/dev/null; sleep 0.01; done) &\nexit 5\n",
    );
    let tests = tempfile::Builder::new()
        .prefix("lg-slurm-tests-")
        .tempdir()
        .unwrap();
    exe(
        &tests.path().join("test_all"),
        "#!/bin/sh\nrun-as-student ./student.sh \"$LABGRADER_RESULTS\"; echo \"student: $?\"\n\
         echo '{\"score\": 3}' > \"$LABGRADER_RESULTS/results.json\"\nsleep 0.2\n",
    );
    std::fs::write(tests.path().join("secret.txt"), "s3cret\n").unwrap();
    let results = tempfile::tempdir().unwrap();
    let mut s = spec(&common::hostile::unique("trusted"), ws.path());
    s.contract = labgrader::sandbox::Contract::Trusted;
    s.tests = Some(tests.path().to_path_buf());
    s.results = results.path().join("results");
    std::fs::create_dir(&s.results).unwrap();
    let o = r.run(&s, &CancellationToken::new()).await.unwrap();
    assert_eq!(o.termination, Termination::Exited { code: 0 }, "{o:?}");
    assert_eq!(stdout(&o), "secret: hidden\nstudent: 5\n", "{o:?}");
    assert_eq!(
        std::fs::read_to_string(s.results.join("results.json")).unwrap(),
        "{\"score\": 3}\n"
    );
}

/// OOM parity through Slurm: a child is OOM-killed, test_all survives
/// and prints a summary: memory_limit, as on native and docker.
#[tokio::test]
async fn slurm_oom_killed_child_with_surviving_test_all_is_memory_limit() {
    let Some(r) = runner() else { return };
    let ws = workspace(
        "./memhog; echo \"memhog: $?\"\necho '<summary>'\necho 'grade_total = 50'\necho '</summary>'\nexit 0\n",
    );
    std::fs::copy(
        common::hostile::helper_bin("memhog"),
        ws.path().join("memhog"),
    )
    .unwrap();
    let o = r
        .run(
            &spec(&common::hostile::unique("oom"), ws.path()),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        o.termination,
        Termination::MemoryLimit,
        "{o:?} {}",
        stdout(&o)
    );
}

/// The disk quota through Slurm: a large write stops at `limits.disk`
/// on the node, and the outcome says so.
#[tokio::test]
async fn slurm_disk_quota_stops_a_large_write_and_is_reported() {
    let Some(r) = runner() else { return };
    let ws = workspace(
        "dd if=/dev/zero of=big bs=1M count=3072 2>&1 | grep -o 'No space left on device' | head -1\n",
    );
    let mut s = spec(&common::hostile::unique("disk"), ws.path());
    s.limits.disk = 32 << 20;
    s.limits.file_size = 4 << 30;
    let o = r.run(&s, &CancellationToken::new()).await.unwrap();
    assert_eq!(stdout(&o), "No space left on device\n", "{o:?}");
    assert!(o.disk_full, "{o:?}");
}

/// Issue 13: the node kept only the head of a stdout that overflowed, so a
/// block forged there by student code won over the real summary at the
/// end. The tail now comes back from the node like on every other runner.
#[tokio::test]
async fn slurm_keeps_the_tail_so_a_forged_head_block_does_not_count() {
    let Some(r) = runner() else { return };
    let ws = workspace(
        "printf '<summary>\\ngrade_total = 100\\n</summary>\\n'\n\
         head -c 300000 /dev/zero | tr '\\000' x\n\
         printf '\\n<summary>\\ngrade_total = 12\\n</summary>\\n'\n",
    );
    let o = r
        .run(
            &spec(&common::hostile::unique("tail"), ws.path()),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert!(o.stdout.truncated, "{}", stdout(&o));
    assert!(o.stdout.bytes.starts_with(b"<summary>\ngrade_total = 100"));
    assert!(
        o.stdout.tail.ends_with(b"grade_total = 12\n</summary>\n"),
        "{:?}",
        String::from_utf8_lossy(&o.stdout.tail[o.stdout.tail.len().saturating_sub(100)..])
    );
    let s = labgrader::summary::parse_captured(&o.stdout).unwrap();
    assert_eq!(s.grade_total, 12.0);
}
