//! The native runner against the hostile-submission table (one test per
//! case, the same table the docker runner runs), plus what is its own: a
//! setup failure names its step, a happy path with a summary, and the
//! `labgrader sandbox --job-dir` subcommand end to end with the real binary.
//! These tests need root or unprivileged user namespaces (CI runs as root).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::files::{write_exec as exe, write_file as file};
use common::hostile::{shown, stdout as out_of};
use labgrader::config::NativeConfig;
use labgrader::sandbox::native::NativeRunner;
use labgrader::sandbox::{RunSpec, Runner, SandboxError, Termination};
use tokio_util::sync::CancellationToken;

fn runner() -> NativeRunner {
    NativeRunner::new(&NativeConfig::default())
        .unwrap_or_else(|e| panic!("the native runner must be available here: {e}"))
}

#[tokio::test]
async fn native_memory_hog() {
    common::hostile::run_case(&runner(), "memory_hog").await;
}

#[tokio::test]
async fn native_fork_bomb() {
    common::hostile::run_case(&runner(), "fork_bomb").await;
}

#[tokio::test]
async fn native_network_closed() {
    common::hostile::run_case(&runner(), "network_closed").await;
}

#[tokio::test]
async fn native_infinite_loop() {
    common::hostile::run_case(&runner(), "infinite_loop").await;
}

#[tokio::test]
async fn native_stdout_flood() {
    common::hostile::run_case(&runner(), "stdout_flood").await;
}

#[tokio::test]
async fn native_readonly_root_and_unprivileged() {
    common::hostile::run_case(&runner(), "readonly_root_and_unprivileged").await;
}

#[tokio::test]
async fn native_daemonized_child_does_not_outlive_job() {
    common::hostile::run_case(&runner(), "daemonized_child_does_not_outlive_job").await;
}

#[tokio::test]
async fn native_cannot_signal_host_processes() {
    common::hostile::run_case(&runner(), "cannot_signal_host_processes").await;
}

#[tokio::test]
async fn native_write_outside_workspace_stays_inside() {
    common::hostile::run_case(&runner(), "write_outside_workspace_stays_inside").await;
}

/// A workspace holding `test_all` with `body`, writable by the sandbox uid.
fn workspace(body: &str) -> tempfile::TempDir {
    common::hostile::workspace("lg-native-", body)
}

/// [`workspace`] with the hostile helpers named beside `test_all`.
fn workspace_with(body: &str, helpers: &[&str]) -> tempfile::TempDir {
    common::hostile::workspace_with("lg-native-", body, helpers)
}

fn spec(ws: &Path) -> RunSpec {
    RunSpec::new(
        "native-test",
        ws.to_path_buf(),
        vec![("LABGRADER_JOB_ID".into(), "native-test".into())],
        common::hostile::limits(),
    )
}

#[tokio::test]
async fn native_happy_path_reads_summary_and_sees_its_sandbox() {
    let ws = workspace(
        "echo \"job=$LABGRADER_JOB_ID cwd=$(pwd) home=$HOME host=$(hostname)\"\n\
         echo scratch > /tmp/x && cat /tmp/x\n\
         grep -c labgrader- /proc/self/cgroup | sed 's/^/host cgroups: /'\n\
         echo kept > result.txt\n\
         ls /proc | grep -c '^[0-9]' | sed 's/^/pids: /'\n\
         echo '<summary>'\necho 'grade_total = 87.5'\necho '</summary>'\n\
         echo to-staff >&2\nexit 3\n",
    );
    let out = runner()
        .run(&spec(ws.path()), &CancellationToken::new())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout.bytes).into_owned();
    assert_eq!(out.termination, Termination::Exited { code: 3 }, "{stdout}");
    assert!(
        stdout.contains("job=native-test cwd=/workspace home=/workspace host=labgrader"),
        "{stdout}"
    );
    assert!(stdout.contains("scratch\n"), "{stdout}");
    assert!(stdout.contains("host cgroups: 0\n"), "{stdout}");
    assert!(stdout.contains("grade_total = 87.5"), "{stdout}");
    assert_eq!(String::from_utf8_lossy(&out.stderr.bytes), "to-staff\n");
    assert_eq!(out.runner, "native");
    assert!(!out.disk_full);
    // The workspace is a copy in the job's own tmpfs: the host's is left
    // as it was (and the spool's filesystem pays nothing).
    assert!(!ws.path().join("result.txt").exists());
}

#[tokio::test]
async fn native_setup_failure_names_the_step() {
    let cfg = NativeConfig {
        rootfs: PathBuf::from("/nonexistent/rootfs"),
        ..NativeConfig::default()
    };
    let err = NativeRunner::new(&cfg).unwrap_err();
    assert!(
        matches!(&err, SandboxError::Unavailable { message, .. } if message.contains("rootfs")),
        "{err}"
    );

    // A rootfs without a shell: the exec of test_all fails inside the
    // sandbox, and the error names that step (a grader fault).
    let empty = tempfile::tempdir().unwrap();
    std::fs::create_dir(empty.path().join("usr")).unwrap();
    let cfg = NativeConfig {
        rootfs: empty.path().to_path_buf(),
        ..NativeConfig::default()
    };
    let ws = workspace("echo never\n");
    let err = NativeRunner::new(&cfg)
        .unwrap()
        .run(&spec(ws.path()), &CancellationToken::new())
        .await
        .unwrap_err();
    match err {
        SandboxError::Setup { step, message } => {
            assert_eq!(step, "start test_all", "{message}");
            assert!(message.contains("execve"), "{message}");
        }
        other => panic!("expected a setup error, got {other}"),
    }
}

#[tokio::test]
async fn native_uid_zero_is_refused() {
    let cfg = NativeConfig {
        uid: 0,
        ..NativeConfig::default()
    };
    let err = NativeRunner::new(&cfg).unwrap_err().to_string();
    assert!(err.contains("must not be 0"), "{err}");
}

#[tokio::test]
async fn native_cancel_kills_the_job() {
    let ws = workspace("sleep 60\n");
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.cancel();
    });
    let started = std::time::Instant::now();
    let err = runner().run(&spec(ws.path()), &cancel).await.unwrap_err();
    assert!(matches!(err, SandboxError::Cancelled), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn native_concurrent_jobs_do_not_hold_each_others_pipes() {
    let r = runner();
    let a = workspace("echo a\n");
    let b = workspace("sleep 3; echo b\n");
    let (sa, sb) = (spec(a.path()), spec(b.path()));
    let cancel = CancellationToken::new();
    let started = std::time::Instant::now();
    let (ra, rb) = tokio::join!(
        async {
            let o = r.run(&sa, &cancel).await.unwrap();
            (o, started.elapsed())
        },
        r.run(&sb, &cancel)
    );
    let (oa, took_a) = ra;
    assert_eq!(String::from_utf8_lossy(&oa.stdout.bytes), "a\n");
    assert!(
        took_a < Duration::from_secs(2),
        "job a waited for job b: {took_a:?}"
    );
    assert_eq!(String::from_utf8_lossy(&rb.unwrap().stdout.bytes), "b\n");
}

/// The sandbox's init is a bare clone(2) of this multi-threaded process.
/// glibc's set*id wrappers would wait there for the parent's threads
/// (which the copy does not have) whenever one was starting or exiting at
/// clone time: a job then hung until its timeout with no output. Many
/// short jobs while threads come and go must all simply run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn native_jobs_started_while_threads_come_and_go_never_hang() {
    let r = std::sync::Arc::new(runner());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let hs: Vec<_> = (0..4).map(|_| std::thread::spawn(|| ())).collect();
                hs.into_iter().for_each(|h| h.join().unwrap());
            }
        })
    };
    let ws = workspace("echo ok\n");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64 {
        let (r, mut spec) = (r.clone(), spec(ws.path()));
        spec.job_id = format!("native-churn-{}-{i}", std::process::id());
        spec.limits.timeout = Duration::from_secs(15);
        tasks.spawn(async move { r.run(&spec, &CancellationToken::new()).await });
        if tasks.len() >= 8 {
            let o = tasks.join_next().await.unwrap().unwrap().unwrap();
            assert_eq!(o.termination, Termination::Exited { code: 0 }, "{o:?}");
        }
    }
    while let Some(o) = tasks.join_next().await {
        let o = o.unwrap().unwrap();
        assert_eq!(o.termination, Termination::Exited { code: 0 }, "{o:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.join().unwrap();
}

fn write_job(dir: &Path, job_id: &str, body: &str) {
    let ws = workspace(body);
    let dst = dir.join("workspace");
    std::fs::rename(ws.path(), &dst).unwrap_or_else(|_| {
        std::fs::create_dir(&dst).unwrap();
        std::fs::copy(ws.path().join("test_all"), dst.join("test_all")).unwrap();
    });
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o777)).unwrap();
    let job = serde_json::json!({
        "version": 1,
        "job_id": job_id,
        "env": {"LABGRADER_JOB_ID": job_id},
        "limits": {"timeout": 5.0, "memory": 134217728u64, "pids": 64, "output": 16,
                   "cpus": 1.0, "file_size": 1048576, "open_files": 64}
    });
    std::fs::write(dir.join("job.json"), job.to_string()).unwrap();
}

#[test]
fn sandbox_subcommand_runs_a_job_dir_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    write_job(
        dir.path(),
        "job-42",
        "echo \"id=$LABGRADER_JOB_ID and more than sixteen bytes\"\necho oops >&2\nexit 4\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_labgrader"))
        .args(["sandbox", "--job-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(dir.path().join("stdout")).unwrap(),
        b"id=job-42 and mo"
    );
    assert_eq!(std::fs::read(dir.path().join("stderr")).unwrap(), b"oops\n");
    let outcome: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("outcome.json")).unwrap()).unwrap();
    assert_eq!(
        outcome["termination"],
        serde_json::json!({"kind": "exited", "code": 4})
    );
    assert_eq!(outcome["stdout"]["truncated"], true);
    assert_eq!(outcome["stdout"]["total"], 38);
    assert_eq!(outcome["job_id"], "job-42");
    assert_eq!(outcome["runner"], "native");
}

#[test]
fn sandbox_subcommand_refuses_a_bad_job_file_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("workspace")).unwrap();
    std::fs::write(
        dir.path().join("job.json"),
        r#"{"version": 1, "job_id": "x"}"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_labgrader"))
        .args(["sandbox", "--job-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("job.json is not a valid job file"), "{err}");
    assert!(!dir.path().join("outcome.json").exists());
}

/// The daemon's unprivileged user (`labgrader`, the grader unit's): its
/// uid and gid, when this host has it.
fn daemon_user() -> Option<nix::unistd::User> {
    nix::unistd::User::from_name("labgrader").ok().flatten()
}

/// `labgrader sandbox --job-dir DIR` run as `user` (its groups too) via
/// setpriv, after handing DIR to it.
fn sandbox_as(user: &str, uid: u32, gid: u32, dir: &Path) -> std::process::Output {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for e in walkdir::WalkDir::new(dir) {
        std::os::unix::fs::lchown(e.unwrap().path(), Some(uid), Some(gid)).unwrap();
    }
    let mut cmd = std::process::Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"));
    if user.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        cmd.arg("--init-groups");
    }
    cmd.arg("--")
        .arg(env!("CARGO_BIN_EXE_labgrader"))
        .args(["sandbox", "--job-dir"])
        .arg(dir)
        .output()
        .expect("setpriv (util-linux) is needed")
}

/// The same subcommand as the daemon's unprivileged user: no root, a user
/// namespace mapped through newuidmap from its subordinate range, no
/// cgroup (rlimits instead).
#[test]
fn sandbox_subcommand_works_unprivileged() {
    let Some(u) = daemon_user().filter(|_| nix::unistd::geteuid().is_root()) else {
        eprintln!("skipped: needs root and a `labgrader` user (scripts/setup/native.sh)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write_job(
        dir.path(),
        "job-user",
        "id -u\ngrep CapEff /proc/self/status\n",
    );
    let out = sandbox_as("labgrader", u.uid.as_raw(), u.gid.as_raw(), dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = std::fs::read_to_string(dir.path().join("stdout")).unwrap();
    // (output is capped at 16 bytes by write_job)
    assert_eq!(stdout, "65534\nCapEff:\t00", "{stdout}");
}

/// Issue 14: no job runs as the daemon's uid or with its groups. Run as the
/// daemon's user (unprivileged mode), a job cannot read a 0600 file of the
/// daemon's uid (its webhook token, say) nor a 0640 file of its group.
#[test]
fn native_unprivileged_job_cannot_read_the_daemons_files() {
    let Some(u) = daemon_user().filter(|_| nix::unistd::geteuid().is_root()) else {
        eprintln!("skipped: needs root and a `labgrader` user (scripts/setup/native.sh)");
        return;
    };
    // In /etc, which every job sees (read-only), as the daemon's secrets do.
    let secrets = tempfile::Builder::new()
        .prefix("lg-test-secrets-")
        .tempdir_in("/etc")
        .unwrap();
    std::fs::set_permissions(secrets.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (own, group) = (secrets.path().join("own"), secrets.path().join("group"));
    std::fs::write(&own, "own-secret\n").unwrap();
    std::fs::write(&group, "group-secret\n").unwrap();
    std::os::unix::fs::chown(&own, Some(u.uid.as_raw()), Some(u.gid.as_raw())).unwrap();
    std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&group, Some(0), Some(u.gid.as_raw())).unwrap();
    std::fs::set_permissions(&group, std::fs::Permissions::from_mode(0o640)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_job(
        dir.path(),
        "job-secrets",
        &format!(
            "cat {} {} 2>/dev/null | tr -d '\\n' | head -c 16\n",
            own.display(),
            group.display()
        ),
    );
    let out = sandbox_as("labgrader", u.uid.as_raw(), u.gid.as_raw(), dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = std::fs::read_to_string(dir.path().join("stdout")).unwrap();
    assert_eq!(stdout, "", "the job read the daemon's files");
}

/// Without a subordinate range (uid 65534 has none) the unprivileged
/// runner refuses to start, and says what to do.
#[test]
fn native_without_a_subordinate_range_refuses_with_what_to_do() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (to become a user without a range)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_job(dir.path(), "job-norange", "echo never\n");
    let out = sandbox_as("", 65534, 65534, dir.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/etc/subuid"), "{err}");
    assert!(err.contains("scripts/install --native"), "{err}");
    assert!(!dir.path().join("outcome.json").exists());
}

/// A student cannot create a user namespace (and with it capabilities)
/// inside the job's: the sandbox sets its max_user_namespaces to 0.
#[tokio::test]
async fn native_nested_user_namespace_refused() {
    let ws = workspace(
        "unshare -U -r true 2>/dev/null && echo nested: allowed || echo nested: refused\n\
         cat /proc/sys/user/max_user_namespaces\n",
    );
    let out = runner()
        .run(&spec(ws.path()), &CancellationToken::new())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout.bytes).into_owned();
    assert_eq!(stdout, "nested: refused\n0\n");
}

/// When the daemon dies (SIGKILL, no cleanup), its jobs die too: the
/// sandbox's init exits when its report pipe loses its reader.
#[test]
fn sandbox_dies_with_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let token = format!("lg-orphan-{}", std::process::id());
    write_job(
        dir.path(),
        "job-orphan",
        &format!("printf 'sleep 30\\n' > ./{token}\nsh ./{token}\n"),
    );
    let mut daemon = std::process::Command::new(env!("CARGO_BIN_EXE_labgrader"))
        .args(["sandbox", "--job-dir"])
        .arg(dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let alive = || {
        let out = std::process::Command::new("pgrep")
            .args(["-f", &token])
            .output()
            .unwrap();
        !out.stdout.is_empty()
    };
    let started = std::time::Instant::now();
    while !alive() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the job never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let killed = std::time::Instant::now();
    while alive() {
        assert!(
            killed.elapsed() < Duration::from_secs(3),
            "the job outlived the daemon"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    remove_job_cgroups("labgrader-job-orphan-");
}

/// The attack: every sandbox's init runs lg-init in a copy of the
/// spawner's memory, for the whole run, as the sandbox's root. Were a job
/// ever to read that memory, it must find none of the daemon's secrets:
/// neither a key the configuration read from a file nor one from the
/// environment. Reads the spawner of a real `labgrader grader` (root reads
/// any process's memory) once the daemon has loaded its configuration.
#[test]
fn the_daemons_spawner_holds_none_of_its_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, from_file) =
        config_with_secret(dir.path(), "[grader]\nrunner = \"native\"\nworkers = 1\n");
    let from_env = format!("lg-env-secret-{}", std::process::id());
    let log = dir.path().join("log");
    let mut daemon = common::daemon::binary("grader", &cfg, &log)
        .env("LABGRADER_GITLAB_TOKEN", &from_env)
        .spawn()
        .unwrap();
    let daemon_pid = daemon.id();
    let started = std::time::Instant::now();
    let pid = loop {
        // Up once the grader has read its configuration and made its spool.
        if dir.path().join("spool/incoming").is_dir()
            && let Some(pid) = spawner_of(daemon_pid)
        {
            break pid;
        }
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "the daemon exited:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no lg-spawner beside the grader:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let memory = read_memory(pid);
    common::daemon::stop(daemon);
    assert!(memory.len() > 1 << 20, "read only {} bytes", memory.len());
    for secret in [&from_file, &from_env] {
        assert!(
            !holds(&memory, secret),
            "the spawner's memory holds {secret}"
        );
    }
}

/// The same attack on the other commands that run native jobs:
/// `labgrader sandbox --job-dir` (what a Slurm node runs) reads the
/// configuration too, and its spawner must hold none of it either.
#[test]
fn the_sandbox_command_s_spawner_holds_none_of_the_configuration_s_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, secret) = config_with_secret(dir.path(), "");
    let job = dir.path().join("job");
    std::fs::create_dir(&job).unwrap();
    write_job(&job, "job-secrets", "sleep 4\n");
    let log = dir.path().join("log");
    let mut cmd = common::daemon::binary("sandbox", &cfg, &log);
    let mut run = cmd.arg("--job-dir").arg(&job).spawn().unwrap();
    let pid = run.id();
    let t = std::time::Instant::now();
    let spawner = loop {
        // The job runs: the configuration was read, the runner built.
        if let Some(p) = spawner_of(pid) {
            break p;
        }
        assert!(
            run.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(30),
            "no lg-spawner beside `labgrader sandbox`:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let memory = read_memory(spawner);
    let _ = run.wait();
    remove_job_cgroups("labgrader-job-secrets-");
    assert!(memory.len() > 1 << 20, "read only {} bytes", memory.len());
    assert!(
        !holds(&memory, &secret),
        "the spawner's memory holds {secret}"
    );
}

/// A configuration whose webhook token, read from its file, is the
/// returned secret; `extra` is appended.
fn config_with_secret(dir: &Path, extra: &str) -> (PathBuf, String) {
    let secret = format!("lg-file-secret-{}", std::process::id());
    let token = dir.join("webhook-token");
    std::fs::write(&token, &secret).unwrap();
    let cfg = dir.join("labgrader.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nwebhook_token_file = \"{}\"\n[spool]\ndir = \"{}\"\n[email]\nurl = \"\"\n{extra}",
            token.display(),
            dir.join("spool").display()
        ),
    )
    .unwrap();
    (cfg, secret)
}

/// The `lg-spawner` child of process `parent`, once it runs.
fn spawner_of(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (comm, rest) = stat.split_once(") ")?;
        let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (comm.ends_with("(lg-spawner") && ppid == parent).then_some(pid)
    })
}

fn holds(memory: &[u8], secret: &str) -> bool {
    memory.windows(secret.len()).any(|w| w == secret.as_bytes())
}

/// Every readable mapping of `pid`'s memory, concatenated.
fn read_memory(pid: u32) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        if !perms.starts_with('r') || line.ends_with("[vvar]") || b - a > 1 << 30 {
            continue;
        }
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_ok() && mem.read_exact(&mut buf).is_ok() {
            out.extend_from_slice(&buf);
        }
    }
    out
}

/// The killed daemon could not remove its job cgroups: do it here.
fn remove_job_cgroups(prefix: &str) {
    let mut bases = vec![PathBuf::from("/sys/fs/cgroup/labgrader")];
    for line in std::fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
    {
        let mut parts = line.splitn(3, ':');
        if let (Some(_), Some(ctls), Some(path)) = (parts.next(), parts.next(), parts.next()) {
            for ctl in ctls.split(',').filter(|c| !c.is_empty()) {
                bases.push(
                    Path::new("/sys/fs/cgroup")
                        .join(ctl)
                        .join(path.trim_start_matches('/')),
                );
            }
        }
    }
    for base in bases {
        for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(prefix) {
                for _ in 0..100 {
                    if std::fs::remove_dir(e.path()).is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

/// The host's workspace is never handed to a job id nor written: a large
/// tree (and a symlink planted in it) is copied in and laid out inside the
/// sandbox, where the student owns its files.
#[tokio::test]
async fn native_copies_a_large_workspace_in_and_leaves_the_hosts_alone() {
    use std::os::unix::fs::MetadataExt;
    let ws = workspace(
        "touch sub/new && echo wrote\nstat -c '%u %a' sub/f399 .\nls sub | wc -l\n\
         cat planted 2>/dev/null || echo planted: unreadable\n",
    );
    std::fs::create_dir(ws.path().join("sub")).unwrap();
    for i in 0..400 {
        std::fs::write(ws.path().join("sub").join(format!("f{i}")), "x").unwrap();
    }
    let victim = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(victim.path(), "host secret\n").unwrap();
    std::os::unix::fs::symlink(victim.path(), ws.path().join("planted")).unwrap();
    let me = nix::unistd::geteuid().as_raw();
    let out = runner()
        .run(&spec(ws.path()), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout.bytes),
        "wrote\n65534 644\n65533 1777\n401\nplanted: unreadable\n",
        "{}",
        String::from_utf8_lossy(&out.stderr.bytes)
    );
    assert!(!ws.path().join("sub/new").exists());
    for e in walkdir::WalkDir::new(ws.path()) {
        let m = std::fs::symlink_metadata(e.unwrap().path()).unwrap();
        assert_eq!(m.uid(), me);
    }
}

/// A caller that stops waiting (its future dropped, e.g. a task aborted)
/// takes the job down with it, and its cgroup is still removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_dropped_run_kills_the_job() {
    let token = format!("lg-dropped-{}", std::process::id());
    let ws = workspace(&format!("printf 'sleep 30\\n' > ./{token}\nsh ./{token}\n"));
    let mut s = spec(ws.path());
    s.job_id = "dropped-run".into();
    let r = runner();
    let alive = || {
        let out = std::process::Command::new("pgrep")
            .args(["-f", &token])
            .output()
            .unwrap();
        !out.stdout.is_empty()
    };
    let cancel = CancellationToken::new();
    let run = r.run(&s, &cancel);
    let waited = tokio::time::timeout(Duration::from_millis(1500), run).await;
    assert!(waited.is_err(), "the job should still be running");
    let dropped = std::time::Instant::now();
    while alive() {
        assert!(
            dropped.elapsed() < Duration::from_secs(3),
            "the job outlived its dropped run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The teardown removes the cgroup shortly after.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let left: Vec<_> = std::fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut p = l.splitn(3, ':').skip(1);
            let (ctls, path) = (p.next()?, p.next()?);
            ctls.split(',')
                .find(|c| *c == "pids" || *c == "memory")
                .map(|c| {
                    Path::new("/sys/fs/cgroup")
                        .join(c)
                        .join(path.trim_start_matches('/'))
                })
        })
        .flat_map(|base| std::fs::read_dir(base).into_iter().flatten().flatten())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("labgrader-dropped-run-")
        })
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "job cgroups left behind: {left:?}");
}

// ---------------------------------------------------------------------
// The two identities (issue 13): attacks first, each failing when the
// student owns the whole workspace.

/// A job directory laid out as the grader does: `workspace/` (student
/// files plus the listed test files), `tests/` (trusted), `results/`,
/// `runner/`.
struct Job {
    dir: tempfile::TempDir,
    spec: RunSpec,
}

/// A fresh runner's run of `j`.
async fn run_job(j: &Job) -> labgrader::sandbox::RunOutcome {
    runner()
        .run(&j.spec, &CancellationToken::new())
        .await
        .unwrap()
}

/// `student` and `tests` are (relative path, contents, executable).
fn job(
    contract: labgrader::sandbox::Contract,
    student: &[(&str, &str, bool)],
    tests: &[(&str, &str, bool)],
) -> Job {
    use labgrader::sandbox::Contract;
    let dir = tempfile::Builder::new()
        .prefix("lg-job-")
        .tempdir()
        .unwrap();
    let ws = dir.path().join("workspace");
    std::fs::create_dir(&ws).unwrap();
    let put = |root: &Path, entries: &[(&str, &str, bool)]| {
        for (p, body, x) in entries {
            if *x {
                exe(&root.join(p), body)
            } else {
                file(&root.join(p), body)
            }
        }
    };
    put(&ws, student);
    let mut spec = RunSpec::new(
        format!("native-ids-{}", std::process::id()),
        ws.clone(),
        vec![("LABGRADER_JOB_ID".into(), "native-ids".into())],
        common::hostile::limits(),
    );
    spec.contract = contract;
    match contract {
        Contract::Stdout => {
            put(&ws, tests);
            let mut paths = Vec::new();
            for (p, _, _) in tests {
                let mut acc = PathBuf::new();
                for c in Path::new(p).components() {
                    acc.push(c);
                    if !paths.contains(&acc) {
                        paths.push(acc.clone());
                    }
                }
            }
            spec.test_paths = std::sync::Arc::new(paths);
        }
        Contract::Trusted => {
            let t = dir.path().join("tests");
            std::fs::create_dir(&t).unwrap();
            put(&t, tests);
            spec.tests = Some(t);
        }
    }
    std::fs::create_dir(&spec.results).unwrap();
    std::fs::create_dir(&spec.scratch).unwrap();
    Job { dir, spec }
}

/// The bash harness-rewrite attack: `test_all` (bash, which reads its
/// script as it runs) calls the student's script, which rewrites the rest
/// of `test_all` (in place, appended, replaced by rename or unlink) so
/// that the injected lines print a perfect summary.
#[tokio::test]
async fn native_stdout_harness_rewrite_attack_is_defeated() {
    use labgrader::sandbox::Contract;
    let injected = "echo '<summary>'; echo 'grade_total = 100'; echo '</summary>'; exit 0\n";
    let student = format!(
        "#!/bin/sh\n\
         INJ=\"{injected}\"\n\
         printf '%s' \"$INJ\" >> test_all 2>/dev/null && echo appended\n\
         printf '%s' \"$INJ$INJ$INJ\" | dd of=test_all bs=1 seek=40 conv=notrunc 2>/dev/null && echo overwrote\n\
         {{ head -c 40 test_all; printf '%s' \"$INJ\"; }} > /tmp/t && mv -f /tmp/t test_all 2>/dev/null && echo renamed\n\
         {{ head -c 40 test_all; printf '%s' \"$INJ\"; }} > /tmp/t; rm -f test_all 2>/dev/null; cp /tmp/t test_all 2>/dev/null && echo replaced\n\
         chmod u+w test_all 2>/dev/null && echo chmodded\n\
         exit 0\n"
    );
    let j = job(
        Contract::Stdout,
        &[("student.sh", &student, true)],
        &[(
            "test_all",
            "#!/bin/bash\n./student.sh\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\
             echo '<summary>'\necho 'grade_total = 10'\necho '</summary>'\n",
            true,
        )],
    );
    let o = run_job(&j).await;
    let out = out_of(&o);
    assert!(!out.contains("grade_total = 100"), "{}", shown(&o));
    assert!(out.contains("grade_total = 10\n"), "{}", shown(&o));
    for verb in ["appended", "overwrote", "renamed", "replaced", "chmodded"] {
        assert!(!out.contains(verb), "{verb}: {}", shown(&o));
    }
    drop(j.dir);
}

/// The data-swap attack: the student replaces the expected output that
/// `test_all` reads after running the student's code (write, unlink and
/// create, rename over, chmod, rename of the directory); the student's own
/// files stay the student's (a build works, new files in a test
/// directory can be created).
#[tokio::test]
async fn native_stdout_data_swap_attack_is_defeated_and_a_build_works() {
    use labgrader::sandbox::Contract;
    let student = "#!/bin/sh\n\
        E=data/expected.txt\n\
        echo 41 > $E 2>/dev/null && echo swap: write\n\
        rm -f $E 2>/dev/null; [ -e $E ] || { echo 41 > $E && echo swap: unlink; }\n\
        echo 41 > /tmp/e; mv -f /tmp/e $E 2>/dev/null && echo swap: rename\n\
        chmod 666 $E 2>/dev/null && echo swap: chmod\n\
        mv data data.old 2>/dev/null && mkdir data && echo 41 > $E && echo swap: dir\n\
        ln -sf /tmp/e $E 2>/dev/null && echo swap: link\n\
        echo 'int main(void){return 0;}' > src/main.c && cc -o src/prog src/main.c && ./src/prog && echo build: ok\n\
        echo mine > data/mine.txt && echo mine: ok\n\
        echo 41\n";
    let j = job(
        Contract::Stdout,
        &[
            ("student.sh", student, true),
            ("src/main.c", "int main(void){return 1;}\n", false),
        ],
        &[
            (
                "test_all",
                "#!/bin/sh\ngot=$(./student.sh)\necho \"$got\" | grep -v '^41$'\n\
                 [ \"$(echo \"$got\" | tail -n1)\" = \"$(cat data/expected.txt)\" ] && g=100 || g=0\n\
                 echo '<summary>'\necho \"grade_total = $g\"\necho '</summary>'\n",
                true,
            ),
            ("data/expected.txt", "7\n", false),
        ],
    );
    let o = run_job(&j).await;
    let out = out_of(&o);
    assert!(out.contains("grade_total = 0\n"), "{}", shown(&o));
    assert!(!out.contains("swap:"), "{}", shown(&o));
    assert!(out.contains("build: ok\n"), "{}", shown(&o));
    assert!(out.contains("mine: ok\n"), "{}", shown(&o));
}

/// Trusted contract: the student's code tries to forge the results (write
/// them, keep rewriting them from a background process, stop or kill its
/// parent and the harness, print a perfect summary); the results the
/// runner returns are the harness's.
#[tokio::test]
async fn native_trusted_results_are_the_harness_s_whatever_the_student_does() {
    use labgrader::sandbox::Contract;
    let student = "#!/bin/sh\nR=$1\n\
        echo forged > $R/results.json 2>/dev/null && echo 'wrote results'\n\
        (while :; do echo forged > $R/results.json 2>/dev/null; sleep 0.01; done) &\n\
        setsid sh -c \"while :; do echo forged > $R/results.json 2>/dev/null; sleep 0.01; done\" &\n\
        kill -STOP $PPID 2>/dev/null && echo 'stopped parent'\n\
        for i in $(seq 1 400); do [ $i = $$ ] || kill -STOP $i 2>/dev/null; done\n\
        echo '<summary>'; echo 'grade_total = 100'; echo '</summary>'\n\
        for i in $(seq 1 400); do [ $i = $$ ] || kill -KILL $i 2>/dev/null; done\n\
        exit 0\n";
    let j = job(
        Contract::Trusted,
        &[("student.sh", student, true)],
        &[(
            "test_all",
            "#!/bin/sh\nrun-as-student ./student.sh \"$LABGRADER_RESULTS\"\necho \"student: $?\"\n\
             sleep 0.3\necho '{\"score\": 7}' > \"$LABGRADER_RESULTS/results.json\"\n\
             sleep 0.3\necho harness done\n",
            true,
        )],
    );
    let o = run_job(&j).await;
    let out = out_of(&o);
    assert_eq!(
        o.termination,
        Termination::Exited { code: 0 },
        "{}",
        shown(&o)
    );
    assert!(
        out.contains("student: 0\n") && out.contains("harness done\n"),
        "{}",
        shown(&o)
    );
    assert!(
        !out.contains("wrote results") && !out.contains("stopped parent"),
        "{}",
        shown(&o)
    );
    assert_eq!(
        std::fs::read_to_string(j.spec.results.join("results.json")).unwrap(),
        "{\"score\": 7}\n"
    );
}

/// Trusted contract: the student's code searches the whole sandbox for
/// the expected output (file contents, names) and reads the harness's
/// /proc (environ, cmdline, cwd, fd, mem): nothing private is readable.
#[tokio::test]
async fn native_trusted_student_finds_nothing_private() {
    use labgrader::sandbox::Contract;
    // The secret is split so that no script holds it whole.
    let search = "#!/bin/sh\nP=\"lgsec\"\"ret42\"\n\
        find / -path /proc -prune -o -path /usr -prune -o -path /sys -prune -o -type f -print0 2>/dev/null \
          | xargs -0 grep -l -D skip \"$P\" 2>/dev/null | sed 's/^/found: /'\n\
        grep -rl -D skip \"$P\" /tmp /harness /workspace /.labgrader /dev/shm /run /var 2>/dev/null | sed 's/^/found: /'\n\
        find / -path /proc -prune -o -name 'lgexp-*' -print 2>/dev/null | sed 's/^/name: /'\n\
        for p in /proc/[0-9]*; do\n\
          for f in environ cmdline; do tr '\\0' '\\n' < $p/$f 2>/dev/null | grep \"$P\" | sed 's/^/proc: /'; done\n\
          ls $p/cwd/ $p/fd/ 2>/dev/null | grep -q lgexp && echo \"proc: $p cwd or fd\"\n\
          head -c 64 $p/mem >/dev/null 2>&1 && echo \"proc: $p mem\"\n\
        done\n\
        echo searched\n";
    let j = job(
        Contract::Trusted,
        &[("search.sh", search, true)],
        &[
            (
                "test_all",
                "#!/bin/sh\nexport HARNESS_SECRET=\"$(cat lgexp-secret.txt)\"\n\
                 cp lgexp-secret.txt \"$TMPDIR/lgexp-secret.copy\"\n\
                 exec 7< lgexp-secret.txt\n\
                 run-as-student ./search.sh\necho \"status: $?\"\n",
                true,
            ),
            ("lgexp-secret.txt", "lgsecret42\n", false),
        ],
    );
    let mut j = j;
    j.spec.limits.timeout = Duration::from_secs(60);
    let o = run_job(&j).await;
    let out = out_of(&o);
    assert!(out.contains("searched\nstatus: 0\n"), "{}", shown(&o));
    for leak in ["found:", "name:", "proc:"] {
        assert!(!out.contains(leak), "{leak} {}", shown(&o));
    }
}

/// Trusted contract: run-as-student passes the status back (exit 3 -> 3,
/// SIGKILL -> 137), and nothing the student started survives its call.
#[tokio::test]
async fn native_run_as_student_passes_status_and_leaves_nothing_running() {
    use labgrader::sandbox::Contract;
    let j = job(
        Contract::Trusted,
        &[],
        &[(
            "test_all",
            "#!/bin/sh\nrun-as-student sh -c 'exit 3'; echo \"exit: $?\"\n\
             run-as-student sh -c 'kill -9 $$'; echo \"kill: $?\"\n\
             run-as-student sh -c 'setsid sleep 100 </dev/null >/dev/null 2>&1 & (sleep 101 </dev/null >/dev/null 2>&1 &); echo started'\n\
             run-as-student sh -c 'cat /proc/[0-9]*/cmdline 2>/dev/null | tr \"\\0\" \" \" | grep -c \"sleep 10[01]\"'\n\
             run-as-student nonexistent-command 2>/dev/null; echo \"missing: $?\"\n",
            true,
        )],
    );
    let o = run_job(&j).await;
    assert_eq!(
        out_of(&o),
        "exit: 3\nkill: 137\nstarted\n0\nmissing: 127\n",
        "{}",
        shown(&o)
    );
}

/// OOM parity: a child of test_all is OOM-killed, test_all survives it
/// and prints a summary: the run is memory_limit (as on docker and Slurm).
#[tokio::test]
async fn native_oom_killed_child_with_surviving_test_all_is_memory_limit() {
    let ws = workspace(
        "./memhog; echo \"memhog: $?\"\necho '<summary>'\necho 'grade_total = 50'\necho '</summary>'\nexit 0\n",
    );
    std::fs::copy(
        common::hostile::helper_bin("memhog"),
        ws.path().join("memhog"),
    )
    .unwrap();
    let r = runner();
    if r.cgroups().is_none() {
        eprintln!("skipped: no job cgroups here (an OOM kill cannot be told from a crash)");
        return;
    }
    let o = r
        .run(&spec(ws.path()), &CancellationToken::new())
        .await
        .unwrap();
    let out = out_of(&o);
    assert!(out.contains("grade_total = 50"), "{}", shown(&o));
    assert_eq!(o.termination, Termination::MemoryLimit, "{}", shown(&o));
}

/// Disk quota: a 3 GB write (workspace and /tmp) stops at `limits.disk`,
/// the outcome says the disk was full, and the filesystem holding the
/// host's job files (the spool's) grows by less than the quota.
#[tokio::test]
async fn native_disk_quota_stops_a_3gb_write_and_the_spool_pays_nothing() {
    let ws = workspace(
        "dd if=/dev/zero of=big bs=1M count=3072 2>&1 | grep -o 'No space left on device' | head -1\n\
         dd if=/dev/zero of=/tmp/big bs=1M count=3072 2>&1 | grep -o 'No space left on device' | head -1\n\
         du -sm big | cut -f1\necho done\n",
    );
    let mut s = spec(ws.path());
    s.limits.disk = 64 << 20;
    s.limits.memory = 512 << 20;
    s.limits.file_size = 4 << 30;
    s.limits.timeout = Duration::from_secs(30);
    let free = || {
        let v = nix::sys::statvfs::statvfs(ws.path()).unwrap();
        v.blocks_available() as u64 * v.fragment_size() as u64
    };
    let before = free();
    let o = runner().run(&s, &CancellationToken::new()).await.unwrap();
    let after = free();
    assert_eq!(
        out_of(&o),
        "No space left on device\nNo space left on device\n64\ndone\n",
        "{}",
        shown(&o)
    );
    assert!(o.disk_full, "{}", shown(&o));
    assert!(
        before.saturating_sub(after) < s.limits.disk,
        "the spool's filesystem lost {} bytes",
        before.saturating_sub(after)
    );
}

/// Unprivileged under `no_new_privs` (systemd's NoNewPrivileges=yes, the
/// grader unit without the native drop-in): the setuid newuidmap cannot
/// work, and the runner refuses at start saying what to do.
#[test]
fn native_unprivileged_under_no_new_privs_refuses_with_what_to_do() {
    let Some(u) = daemon_user().filter(|_| nix::unistd::geteuid().is_root()) else {
        eprintln!("skipped: needs root and a `labgrader` user (scripts/setup/native.sh)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write_job(dir.path(), "job-nnp", "echo never\n");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for e in walkdir::WalkDir::new(dir.path()) {
        std::os::unix::fs::lchown(
            e.unwrap().path(),
            Some(u.uid.as_raw()),
            Some(u.gid.as_raw()),
        )
        .unwrap();
    }
    let out = std::process::Command::new("setpriv")
        .arg(format!("--reuid={}", u.uid))
        .arg(format!("--regid={}", u.gid))
        .args(["--init-groups", "--no-new-privs", "--"])
        .arg(env!("CARGO_BIN_EXE_labgrader"))
        .args(["sandbox", "--job-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("NoNewPrivileges") && err.contains("scripts/install --native"),
        "{err}"
    );
}

/// Trusted contract: the harness's HOME is its own, not the workspace: a
/// student who plants a Python user-site `.pth` (or any dotfile) where the
/// harness's tools would read it gets nothing run as the harness.
#[tokio::test]
async fn native_trusted_harness_home_is_not_the_students() {
    use labgrader::sandbox::Contract;
    if !Path::new("/usr/bin/python3").exists() {
        eprintln!("skipped: needs python3");
        return;
    }
    let plant = "#!/bin/sh\n\
        d=$(python3 -c 'import site; print(site.getusersitepackages())')\n\
        mkdir -p \"$d\" && echo 'import os; print(\"PWNED as\", os.getuid())' > \"$d/evil.pth\"\n\
        echo planted in $d\n";
    let j = job(
        Contract::Trusted,
        &[("plant.sh", plant, true)],
        &[(
            "test_all",
            "#!/bin/sh\nrun-as-student ./plant.sh\necho \"harness HOME=$HOME\"\n\
             python3 -c 'print(\"harness python ran\")'\n",
            true,
        )],
    );
    let o = run_job(&j).await;
    let out = out_of(&o);
    assert!(out.contains("planted in /workspace/"), "{}", shown(&o));
    assert!(out.contains("harness HOME=/harness\n"), "{}", shown(&o));
    assert!(out.contains("harness python ran\n"), "{}", shown(&o));
    assert!(!out.contains("PWNED"), "{}", shown(&o));
}

/// Stdout contract: a test file in a directory that also came from the
/// student (and is not itself listed) still cannot be unlinked or renamed
/// away by the student: its directories are the harness's, sticky.
#[tokio::test]
async fn native_stdout_test_file_in_a_student_directory_stays() {
    use labgrader::sandbox::Contract;
    let mut j = job(
        Contract::Stdout,
        &[
            ("lib/mine.py", "x = 1\n", false),
            (
                "student.sh",
                "#!/bin/sh\nrm -f lib/check.py 2>/dev/null; mv lib/check.py lib/x 2>/dev/null\n\
                 [ -e lib/check.py ] || echo removed\necho 'print(100)' > lib/check.py 2>/dev/null\n\
                 echo 'x = 2' > lib/mine.py && echo mine: ok\n",
                true,
            ),
        ],
        &[
            (
                "test_all",
                "#!/bin/sh\n./student.sh\ncat lib/check.py\n",
                true,
            ),
            ("lib/check.py", "print(7)\n", false),
        ],
    );
    // As a layer that lists only files would: `lib` itself not listed.
    j.spec.test_paths = std::sync::Arc::new(vec![
        PathBuf::from("test_all"),
        PathBuf::from("lib/check.py"),
    ]);
    let o = run_job(&j).await;
    assert_eq!(out_of(&o), "mine: ok\nprint(7)\n", "{}", shown(&o));
}

/// Trusted contract: the tests are immutable for the harness too (it can
/// add files beside them, never change one), and the student cannot even
/// list the harness's home.
#[tokio::test]
async fn native_trusted_tests_are_immutable_and_the_harness_home_private() {
    use labgrader::sandbox::Contract;
    let j = job(
        Contract::Trusted,
        &[(
            "peek.sh",
            "#!/bin/sh\nls /harness >/dev/null 2>&1 && echo student: listed || echo student: denied\n\
             cat /harness/tests/data.txt 2>/dev/null || echo student: unreadable\n",
            true,
        )],
        &[
            (
                "test_all",
                "#!/bin/sh\necho x >> data.txt 2>/dev/null && echo harness: changed\n\
                 rm -f data.txt 2>/dev/null; [ -e data.txt ] || echo harness: removed\n\
                 chmod u+w data.txt 2>/dev/null && echo harness: chmodded\n\
                 echo mine > scratch.txt && echo harness: added\n\
                 run-as-student ./peek.sh\ncat data.txt\n",
                true,
            ),
            ("data.txt", "original\n", false),
        ],
    );
    let o = run_job(&j).await;
    assert_eq!(
        out_of(&o),
        "harness: added\nstudent: denied\nstudent: unreadable\noriginal\n",
        "{}",
        shown(&o)
    );
}

/// `lg-spawner` (the process that clones each sandbox) from the host's side.
mod spawner {
    use super::*;

    fn proc_file(pid: u32, file: &str) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default()
    }

    fn status_field(pid: u32, key: &str) -> String {
        proc_file(pid, "status")
            .lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    }

    async fn ok_run(r: &NativeRunner, body: &str) -> String {
        let ws = workspace(body);
        let out = r
            .run(&spec(ws.path()), &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(out.termination, Termination::Exited { code: 0 });
        String::from_utf8_lossy(&out.stdout.bytes).into_owned()
    }

    /// The attack: the spawner clones with the daemon's full privileges
    /// whatever plan reaches its socket. A job must not find that socket:
    /// not among its own descriptors, not as a process it can see.
    #[tokio::test]
    async fn a_job_finds_no_way_to_the_spawner() {
        let r = runner();
        let out = ok_run(
            &r,
            "for f in /proc/self/fd/*; do echo \"fd $(basename $f) -> $(readlink $f)\"; done\n\
             echo \"procs: $(ls /proc | grep '^[0-9]' | tr '\\n' ' ')\"\n\
             grep -l lg-spawner /proc/[0-9]*/comm 2>/dev/null | sed 's/^/seen: /'\n",
        )
        .await;
        assert!(!out.contains("socket:"), "a socket reached the job:\n{out}");
        assert!(!out.contains("seen: "), "the job sees the spawner:\n{out}");
    }

    #[tokio::test]
    async fn keeps_nothing_of_the_daemon_but_its_socket() {
        let r = runner();
        let pid = r.spawner_pid().expect("started with the runner");
        // Descriptors this test process holds open: none may leak.
        let _held = std::fs::File::open("/dev/null").unwrap();
        ok_run(&r, "true\n").await;
        let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut fds: Vec<u32> = fds.iter().map(|f| f.parse().unwrap()).collect();
        fds.sort();
        // Above the socket, only what it made itself: network namespaces
        // it keeps for reuse, their `/proc/net` tables (opened by its own
        // thread inside each) and the pidfds of the runs holding them.
        // (One may close between the listing and its reading: the
        // spawner takes namespaces back as runs end.)
        let link = |fd: u32| {
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .map(|l| l.to_string_lossy().into_owned())
                .ok()
        };
        let tables = format!("/proc/{pid}/task/{pid}/net/");
        for fd in fds.iter().filter(|fd| **fd > 3) {
            let Some(l) = link(*fd) else { continue };
            assert!(
                l.starts_with("net:[") || l == "anon_inode:[pidfd]" || l.starts_with(&tables),
                "fd {fd} is {l}"
            );
        }
        assert!(
            std::fs::read_link(format!("/proc/{pid}/fd/3"))
                .unwrap()
                .to_string_lossy()
                .starts_with("socket:")
        );
        assert_eq!(status_field(pid, "Threads:"), "1");
        // No handler of the daemon's for a standard signal (glibc keeps
        // its own for its internal real-time ones): systemd's SIGTERM ends
        // it.
        let caught = u64::from_str_radix(&status_field(pid, "SigCgt:"), 16).unwrap();
        assert_eq!(caught & 0xffff_ffff, 0, "SigCgt {caught:016x}");
        assert_eq!(proc_file(pid, "comm").trim(), "lg-spawner");
        // Nothing of the daemon's environment (credentials may come from
        // variables): every sandbox's init runs in a copy of this memory.
        for what in ["environ", "cmdline"] {
            let bytes = std::fs::read(format!("/proc/{pid}/{what}")).unwrap();
            assert!(
                bytes.iter().all(|b| *b == 0),
                "the spawner still holds the daemon's {what}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    /// The attack: the sandbox's init (pid 1 of the job's namespaces) is
    /// lg-init itself, the sandbox's root, running in a copy of the
    /// spawner's memory for the whole run. The student signals it (every
    /// signal that would end or stop a process), tries to read its
    /// memory, environment, command line and descriptors, and looks for
    /// it in /proc; then checks it is still graded.
    #[tokio::test]
    async fn the_student_can_neither_end_nor_read_the_sandboxs_init() {
        let r = runner();
        let out = ok_run(
            &r,
            "for s in KILL TERM STOP INT HUP QUIT USR1 SEGV; do
             kill -$s 1 2>/dev/null && echo \"sent $s\"
             done
             for f in environ cmdline maps mem auxv status stack; do
             head -c 64 /proc/1/$f >/dev/null 2>&1 && echo \"read $f\"
             done
             ls /proc/1/fd >/dev/null 2>&1 && echo 'listed fd'
             ls /proc | grep -qx 1 && echo 'pid 1 listed'
             echo alive
",
        )
        .await;
        assert_eq!(out, "alive\n", "the student reached the init");
    }

    #[tokio::test]
    async fn a_killed_spawner_is_started_again() {
        let r = runner();
        let first = r.spawner_pid().expect("started with the runner");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(first as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert!(ok_run(&r, "echo after\n").await.contains("after"));
        let second = r.spawner_pid().expect("started again");
        assert_ne!(first, second);
        // The dead one was reaped, not left a zombie.
        assert!(!std::path::Path::new(&format!("/proc/{first}")).exists());
    }

    #[tokio::test]
    async fn the_spawner_ends_with_its_runner() {
        let r = runner();
        let pid = r.spawner_pid().expect("started with the runner");
        ok_run(&r, "true\n").await;
        drop(r);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}

/// The attack on the bound helper: `lg-init` is now a host file bound
/// into every sandbox, and the trusted harness's `run-as-student` is a
/// link to it. A student who could replace, truncate or relink either
/// would run their own code as the broker. Every attempt must fail.
#[tokio::test]
async fn native_student_cannot_replace_the_bound_helper() {
    let ws = workspace(
        "h=/.labgrader/lg-init; r=/.labgrader/bin/run-as-student\n\
         before=$(cksum < $h)\n\
         cp /bin/sh $h 2>/dev/null && echo replaced\n\
         ( : > $h ) 2>/dev/null && echo truncated\n\
         chmod 777 $h 2>/dev/null && echo chmodded\n\
         rm -f $r 2>/dev/null; ln -s /bin/sh $r 2>/dev/null && echo relinked\n\
         mv $h /tmp/x 2>/dev/null && echo moved\n\
         [ \"$(cksum < $h)\" = \"$before\" ] && echo intact\n\
         [ \"$(readlink $r)\" = ../lg-init ] && echo linked\n",
    );
    let out = runner()
        .run(&spec(ws.path()), &CancellationToken::new())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout.bytes).into_owned();
    for bad in ["replaced", "truncated", "chmodded", "relinked", "moved"] {
        assert!(!stdout.contains(bad), "{bad}:\n{stdout}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr.bytes);
    assert!(
        stdout.contains("intact") && stdout.contains("linked"),
        "{stdout}\n{stderr}\n{:?}",
        out.termination
    );
}

/// Runs reuse network namespaces (kept by the spawner, see
/// `sandbox::native::netpool`). The attacks: a run leaves sockets behind
/// for the next student's run to find, or reaches a run going on beside
/// it. A namespace is lent again only when nothing of the last run is in
/// it; two runs at once never share one.
mod netns {
    use super::*;

    // The namespace's cookie (SO_NETNS_COOKIE), unique for the host's
    // uptime: its inode number is reused once a namespace is freed.
    const PY: &str = "import os, socket, sys, time\n\
        k = socket.socket().getsockopt(socket.SOL_SOCKET, 71, 8)\n\
        print('ns', int.from_bytes(k, 'little'), flush=True)\n";

    async fn run_py(r: &NativeRunner, body: &str) -> String {
        let ws = workspace(&format!("exec python3 - <<'PY'\n{PY}{body}PY\n"));
        let out = r
            .run(&spec(ws.path()), &CancellationToken::new())
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout.bytes).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr.bytes);
        assert_eq!(
            out.termination,
            Termination::Exited { code: 0 },
            "{stdout}\n{stderr}"
        );
        stdout
    }

    /// One run of `first` (it prints `said`), time for the spawner to see
    /// it over and take its namespace back, then a run of `probe` (it
    /// prints `looked`), which must print none of `bad`. Both outputs.
    async fn one_then_next(
        r: &NativeRunner,
        (first, said): (&str, &str),
        probe: &str,
        bad: &[&str],
    ) -> (String, String) {
        let a = run_py(r, first).await;
        assert!(a.contains(said), "{a}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let b = run_py(r, probe).await;
        assert!(b.contains("looked"), "{b}");
        for bad in bad {
            assert!(!b.contains(bad), "{bad}:\n{b}");
        }
        (a, b)
    }

    fn ns_of(stdout: &str) -> String {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("ns "))
            .unwrap_or_else(|| panic!("no namespace printed:\n{stdout}"))
            .to_string()
    }

    /// Tries every way back into what the last run left: its ports, its
    /// abstract socket, its sockets in the tables.
    const FINDER: &str = "def reach(fam, typ, addr):\n\
        \x20   s = socket.socket(fam, typ)\n\
        \x20   try:\n\
        \x20       s.connect(addr); return True\n\
        \x20   except OSError:\n\
        \x20       return False\n\
        def take(fam, typ, addr):\n\
        \x20   s = socket.socket(fam, typ)\n\
        \x20   try:\n\
        \x20       s.bind(addr); return True\n\
        \x20   except OSError:\n\
        \x20       return False\n\
        if reach(socket.AF_INET, socket.SOCK_STREAM, ('127.0.0.1', 40111)): print('reached tcp')\n\
        if reach(socket.AF_UNIX, socket.SOCK_STREAM, b'\\0lg-leak'): print('reached unix')\n\
        if not take(socket.AF_INET, socket.SOCK_STREAM, ('127.0.0.1', 40111)): print('tcp port taken')\n\
        if not take(socket.AF_INET, socket.SOCK_DGRAM, ('127.0.0.1', 40112)): print('udp port taken')\n\
        if not take(socket.AF_UNIX, socket.SOCK_STREAM, b'\\0lg-leak'): print('unix name taken')\n\
        if not take(socket.AF_INET, socket.SOCK_STREAM, ('127.0.0.1', 40113)): print('time-wait port taken')\n\
        for t in ('tcp', 'tcp6', 'udp', 'udp6', 'unix'):\n\
        \x20   rows = open('/proc/net/' + t).read().splitlines()[1:]\n\
        \x20   rows = [r for r in rows if 'lg-leak' in r or ':9CAF' in r or ':9CB0' in r]\n\
        \x20   if rows: print('left in', t, rows)\n\
        print('looked')\n";

    #[tokio::test]
    async fn a_run_finds_nothing_the_last_run_left_in_its_network() {
        let r = runner();
        // The leaver: listening TCP and UDP ports and an abstract socket,
        // held by a daemonized child past test_all.
        let leaver = "l = socket.socket(); l.bind(('127.0.0.1', 40111)); l.listen()\n\
            u = socket.socket(socket.AF_UNIX); u.bind(b'\\0lg-leak'); u.listen()\n\
            d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); d.bind(('127.0.0.1', 40112))\n\
            if os.fork() == 0:\n\
            \x20   os.setsid(); time.sleep(60); os._exit(0)\n\
            print('left')\n";
        let mut reused = 0;
        for _ in 0..6 {
            let bad = ["reached", "taken", "left in"];
            let (a, b) = one_then_next(&r, (leaver, "left"), FINDER, &bad).await;
            if ns_of(&a) == ns_of(&b) {
                reused += 1;
            }
        }
        // The attack met a reused namespace, not only fresh ones.
        assert!(reused > 0, "no run reused the last one's namespace");
    }

    #[tokio::test]
    async fn a_namespace_with_a_socket_left_in_it_is_never_lent_again() {
        let r = runner();
        // A connection closed by the server first: its port stays in
        // TIME_WAIT for a minute after every process is gone.
        let lingerer = "l = socket.socket(); l.bind(('127.0.0.1', 40113)); l.listen()\n\
            c = socket.create_connection(('127.0.0.1', 40113)); a, _ = l.accept()\n\
            a.close(); time.sleep(0.1); c.close(); l.close()\n\
            print('lingering')\n";
        for _ in 0..3 {
            let (a, b) = one_then_next(&r, (lingerer, "lingering"), FINDER, &["taken"]).await;
            assert_ne!(ns_of(&a), ns_of(&b), "lent again with a socket in it");
        }
    }

    #[tokio::test]
    async fn runs_at_the_same_time_cannot_reach_each_other() {
        let r = runner();
        let server = "l = socket.socket(); l.bind(('127.0.0.1', 40111)); l.listen()\n\
            u = socket.socket(socket.AF_UNIX); u.bind(b'\\0lg-leak'); u.listen()\n\
            time.sleep(2); print('served')\n";
        let prober = format!("time.sleep(0.7)\n{FINDER}");
        let (a, b) = tokio::join!(run_py(&r, server), run_py(&r, &prober));
        assert!(a.contains("served"), "{a}");
        assert!(b.contains("looked"), "{b}");
        for bad in ["reached", "taken", "left in"] {
            assert!(!b.contains(bad), "{bad}:\n{b}");
        }
        assert_ne!(ns_of(&a), ns_of(&b));
    }

    /// What the next run can read of the network's own state (no socket
    /// needed): IPv6 flow labels, loopback's counters, the protocol
    /// counters. A fresh namespace shows none of it.
    const SEER: &str = "rows = open('/proc/net/ip6_flowlabel').read().splitlines()[1:]\n\
        if rows: print('flowlabels', rows)\n\
        lo = [l for l in open('/proc/net/dev') if l.strip().startswith('lo:')][0].split()[1:]\n\
        if any(int(x) for x in lo): print('lo counters', lo)\n\
        for f in ('snmp', 'netstat'):\n\
        \x20   t = open('/proc/net/' + f).read().splitlines()\n\
        \x20   for h, v in zip(t[::2], t[1::2]):\n\
        \x20       for a, b in zip(h.split()[1:], v.split()[1:]):\n\
        \x20           if b != '0' and a not in ('Forwarding', 'DefaultTTL', 'RtoAlgorithm', 'RtoMin', 'RtoMax', 'MaxConn'):\n\
        \x20               print('counter', h.split()[0], a, b)\n\
        print('looked')\n";

    #[tokio::test]
    async fn a_run_leaves_no_flow_label_for_the_next() {
        let r = runner();
        // IPv6 flow labels outlive the socket that made them (linger up
        // to 150 s for anyone) and are no socket: sockstat stays at 0.
        // 20 bits each, 32 a socket: a channel to whoever runs next.
        let planter = "import struct\n\
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n\
            for i in range(4):\n\
            \x20   req = socket.inet_pton(socket.AF_INET6, '::1') + struct.pack('!I', 0xabc00 + i) + struct.pack('=BBHHHI', 0, 255, 1, 0, 120, 0)\n\
            \x20   s.setsockopt(socket.IPPROTO_IPV6, 32, req)\n\
            s.close()\n\
            print('planted')\n";
        for _ in 0..3 {
            one_then_next(&r, (planter, "planted"), SEER, &["flowlabels"]).await;
        }
    }

    #[tokio::test]
    async fn a_run_cannot_signal_the_next_through_the_networks_counters() {
        let r = runner();
        // No socket survives, but loopback's and the protocols' counters
        // do: 777 datagrams to a closed port are a number the next run
        // reads back (Udp NoPorts), say a hidden test's answer.
        let sender = "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
            for _ in range(777): s.sendto(b'x', ('127.0.0.1', 40114))\n\
            s.close()\n\
            print('sent')\n";
        for _ in 0..3 {
            one_then_next(&r, (sender, "sent"), SEER, &["lo counters", "counter"]).await;
        }
    }

    #[tokio::test]
    async fn a_socket_kept_in_flight_or_a_privileged_one_gives_the_next_run_nothing() {
        let r = runner();
        // A listening port whose only reference is in flight in a unix
        // socket cycle (freed by the garbage collector, later), and the
        // sockets a root would get: raw, packet, ICMP.
        let hider = "l = socket.socket(); l.bind(('127.0.0.1', 40115)); l.listen()\n\
            a, b = socket.socketpair()\n\
            socket.send_fds(a, [b'x'], [l.fileno(), a.fileno(), b.fileno()])\n\
            l.close(); a.close(); b.close()\n\
            for fam, typ, proto in ((socket.AF_PACKET, socket.SOCK_RAW, 0), (socket.AF_INET, socket.SOCK_RAW, 1), (socket.AF_INET, socket.SOCK_DGRAM, 1), (socket.AF_INET6, socket.SOCK_RAW, 58)):\n\
            \x20   try:\n\
            \x20       socket.socket(fam, typ, proto); print('privileged socket', fam, typ, proto)\n\
            \x20   except OSError:\n\
            \x20       pass\n\
            print('hidden')\n";
        let finder = "s = socket.socket()\n\
            try:\n\
            \x20   s.connect(('127.0.0.1', 40115)); print('reached hidden')\n\
            except OSError:\n\
            \x20   pass\n\
            t = socket.socket()\n\
            try:\n\
            \x20   t.bind(('127.0.0.1', 40115))\n\
            except OSError:\n\
            \x20   print('hidden port taken')\n\
            print('looked')\n";
        for _ in 0..3 {
            let (a, _) = one_then_next(&r, (hider, "hidden"), finder, &["reached", "taken"]).await;
            assert!(!a.contains("privileged"), "{a}");
        }
    }

    #[tokio::test]
    async fn a_run_can_change_no_setting_of_a_pooled_namespace() {
        let r = runner();
        // Every per-namespace sysctl, opened for writing (the permission
        // is checked at open), and the interface's settings.
        let writer = "n = 0\n\
            for d, _, fs in os.walk('/proc/sys/net'):\n\
            \x20   for f in fs:\n\
            \x20       p = os.path.join(d, f); n += 1\n\
            \x20       try:\n\
            \x20           fd = os.open(p, os.O_WRONLY); os.close(fd); print('writable', p)\n\
            \x20       except OSError:\n\
            \x20           pass\n\
            import fcntl, struct\n\
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
            try:\n\
            \x20   fcntl.ioctl(s, 0x8922, struct.pack('16sH14s', b'lo', 1500, b'')); print('mtu set')\n\
            except OSError:\n\
            \x20   pass\n\
            print('tried', n)\n";
        let a = run_py(&r, writer).await;
        let n: usize = a
            .lines()
            .find_map(|l| l.strip_prefix("tried "))
            .unwrap_or_else(|| panic!("{a}"))
            .parse()
            .unwrap();
        // The sysctls are there to try (not hidden from the sandbox).
        assert!(n > 50, "{a}");
        assert!(!a.contains("writable") && !a.contains("mtu set"), "{a}");
    }
}

/// Job cgroups kept between runs (`cgroup::Pool`), seen from the verdicts.
mod cgroups {
    use super::*;
    use labgrader::sandbox::RunOutcome;

    /// A run of `body` (with the memory hog helper beside it) limited to
    /// `memory` bytes; returns once its cgroup is given back.
    async fn run_with(r: &NativeRunner, body: &str, memory: u64) -> RunOutcome {
        let ws = workspace_with(body, &["memhog"]);
        let mut limits = common::hostile::limits();
        limits.memory = memory;
        let before = r.cgroup_pool().0;
        let o = r
            .run(
                &common::hostile::spec("cg-pool", ws.path(), limits),
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        let started = std::time::Instant::now();
        while r.cgroup_pool().0 == before {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the run's cgroup was never given back"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        o
    }

    /// The largest "touched N MiB" the memory hog printed.
    fn touched(o: &RunOutcome) -> u64 {
        out_of(o)
            .lines()
            .filter_map(|l| {
                l.strip_prefix("touched ")?
                    .strip_suffix(" MiB")?
                    .parse()
                    .ok()
            })
            .max()
            .unwrap_or(0)
    }

    /// The attack: a clean job runs right after a classmate's job was
    /// OOM-killed under the same limits. The kernel's OOM-kill count of a
    /// cgroup cannot be reset and the verdict reads it: had the OOM-killed
    /// job's cgroup been lent again, the clean job would be marked
    /// `memory_limit`. Clean runs in between show that cgroups are lent
    /// again at all.
    #[tokio::test]
    async fn a_cgroup_that_saw_an_oom_kill_is_never_lent_again() {
        let r = runner();
        let mem = 96 << 20;
        let clean = run_with(&r, "echo fine\n", mem).await;
        assert_eq!(clean.termination, Termination::Exited { code: 0 });
        assert_eq!(r.cgroup_pool().1, 1, "a clean run's cgroup is kept");
        let hog = run_with(&r, "./memhog\n", mem).await;
        assert_eq!(hog.termination, Termination::MemoryLimit, "{}", shown(&hog));
        for _ in 0..3 {
            let o = run_with(&r, "echo fine\n", mem).await;
            assert_eq!(
                o.termination,
                Termination::Exited { code: 0 },
                "{}",
                shown(&o)
            );
            assert!(out_of(&o).contains("fine"));
        }
        assert_eq!(r.cgroup_pool().1, 1, "one cgroup served every clean run");
    }

    /// The attack: a job with a small memory limit runs right after one
    /// with a large limit ended cleanly. A kept cgroup enforces the limits
    /// it was made with: lent to a job with other limits, the hog would
    /// get the large one.
    #[tokio::test]
    async fn a_job_never_runs_under_another_jobs_limits() {
        let r = runner();
        let big = run_with(&r, "echo big\n", 512 << 20).await;
        assert_eq!(big.termination, Termination::Exited { code: 0 });
        assert_eq!(r.cgroup_pool().1, 1);
        let small = run_with(&r, "./memhog\n", 64 << 20).await;
        assert_eq!(
            small.termination,
            Termination::MemoryLimit,
            "{}",
            shown(&small)
        );
        assert!(touched(&small) < 64, "{}", shown(&small));
    }
}

/// lg-init as the sandbox's pid 1, attacked from inside the job.
mod init {
    use super::*;

    /// The attack: test_all leaves workers behind that make orphans as
    /// fast as they can (each one a zombie for pid 1 to reap), then ends
    /// (after 2 s, in an 8 s timeout).
    /// The init reaps until no zombie is left before it looks at
    /// test_all's status: were the orphans never to run out, the run
    /// would end at its timeout instead of with test_all's status (and
    /// the init, never back in poll(2), would neither serve the broker
    /// nor see the daemon go).
    #[tokio::test]
    async fn an_orphan_flood_does_not_hold_the_end_of_the_job() {
        let ws = workspace_with(
            "./orphans 32 </dev/null >/dev/null 2>&1 &\nsleep 2\necho done\nexit 7\n",
            &["orphans"],
        );
        let o = runner()
            .run(&spec(ws.path()), &CancellationToken::new())
            .await
            .unwrap();
        // The churn's kernel memory may reach the job's memory limit
        // first (the OOM killer then takes pid 1, the largest process):
        // that limit is named. Never the timeout.
        match o.termination {
            Termination::Exited { code: 7 } => assert_eq!(out_of(&o), "done\n"),
            Termination::MemoryLimit => {}
            _ => panic!("{}", shown(&o)),
        }
    }

    /// What a job process may try on pid 1 (and on the descriptors it
    /// was handed): signals that would end or stop it, its /proc files,
    /// /proc/*/exe; then its own descriptors past stdio. Prints a line
    /// for each success, then `alive`.
    const PROBE: &str = "for s in KILL TERM STOP INT HUP QUIT USR1 SEGV CHLD CONT; do
        kill -$s 1 2>/dev/null && echo \"sent $s\"
        done
        for f in environ cmdline maps mem auxv status stack syscall exe cwd root; do
        head -c 64 /proc/1/$f >/dev/null 2>&1 && echo \"read $f\"
        done
        ls /proc/1/fd /proc/1/map_files >/dev/null 2>&1 && echo 'listed pid 1'
        ls -l /proc/*/exe 2>/dev/null | grep -v -e '/proc/self/' -e '/proc/thread-self/' | grep -q -e lg-init -e labgrader -e runner_native && echo 'saw an exe'
        ls -l /proc/$$/fd/ | sed -n 's/.* \\([0-9][0-9]*\\) -> \\(.*\\)/\\1 \\2/p' | while read n l; do
        [ $n -gt 2 ] && [ \"${l##*/}\" != probe.sh ] && echo \"fd $n -> $l\"
        done
        echo alive
";

    /// The attack, under the trusted contract: the harness (test_all)
    /// and the student (through run-as-student) each signal pid 1, read
    /// its /proc files and look for descriptors they should not hold (the
    /// broker's socket and call file, the report pipe, the spawner's
    /// network namespaces).
    #[tokio::test]
    async fn neither_the_harness_nor_the_student_reaches_pid_1() {
        use labgrader::sandbox::Contract;
        let j = job(
            Contract::Trusted,
            &[("probe.sh", &format!("#!/bin/sh\n{PROBE}"), true)],
            &[
                (
                    "test_all",
                    "#!/bin/sh\necho harness:\n./probe.sh 9>&-\necho student:\nrun-as-student ./probe.sh\n",
                    true,
                ),
                ("probe.sh", &format!("#!/bin/sh\n{PROBE}"), true),
            ],
        );
        let o = run_job(&j).await;
        assert_eq!(
            out_of(&o),
            "harness:\nalive\nstudent:\nalive\n",
            "{}",
            shown(&o)
        );
    }

    /// A tree `depth` directories deep under `root`, each named `a`,
    /// with a file `leaf` at the bottom.
    fn deep_tree(root: &Path, depth: usize) {
        let bottom = root.join("a/".repeat(depth));
        std::fs::create_dir_all(&bottom).unwrap();
        std::fs::write(bottom.join("leaf"), "x").unwrap();
    }

    /// The attack: a workspace as deep as a checkout can be (each path
    /// under PATH_MAX: about 2000 levels of one-letter directories). The
    /// init copies it in and lays it out with recursive walks, on the
    /// stack it runs on (8 MiB, a guard page below): the job must run,
    /// or fail as a setup error naming its step; never die unexplained.
    #[tokio::test]
    async fn a_workspace_as_deep_as_a_checkout_can_be_is_laid_out() {
        let ws = workspace("find . -name leaf | wc -c\n");
        deep_tree(ws.path(), 2000);
        let o = runner()
            .run(&spec(ws.path()), &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(
            o.termination,
            Termination::Exited { code: 0 },
            "{}",
            shown(&o)
        );
        assert_eq!(out_of(&o), "4007\n");
    }

    /// The attack: many processes, each smaller than pid 1, fill the
    /// job's memory limit, so the OOM killer's choice (the largest) is
    /// pid 1 itself, which is in the job's memory cgroup; test_all has
    /// already printed a perfect summary. The job dies with its init
    /// before any status is reported: the verdict must still name the
    /// memory limit, never a grade nor a grader fault.
    #[tokio::test]
    async fn a_memory_limit_that_takes_pid_1_is_still_memory_limit() {
        let ws = workspace_with(
            "echo '<summary>'; echo 'grade_total = 100'; echo '</summary>'\n\
             for i in $(seq 1 56); do ./smallhog 2600 & done\nwait\n",
            &["smallhog"],
        );
        let r = runner();
        if r.cgroups().is_none() {
            eprintln!("skipped: no job cgroups here (an OOM kill cannot be told from a crash)");
            return;
        }
        let mut s = spec(ws.path());
        s.limits.timeout = Duration::from_secs(20);
        let o = r.run(&s, &CancellationToken::new()).await.unwrap();
        assert_eq!(o.termination, Termination::MemoryLimit, "{}", shown(&o));
    }

    /// test_all's end passes through pid 1 unchanged: an exit status as
    /// itself, a death by a signal as that signal (lg-init says 128+N),
    /// under both contracts.
    #[tokio::test]
    async fn test_all_s_status_passes_through_pid_1() {
        use labgrader::sandbox::Contract;
        let r = runner();
        for (body, want) in [
            ("exit 42\n", Termination::Exited { code: 42 }),
            ("kill -SEGV $$\n", Termination::Signaled { signal: 11 }),
            ("kill -KILL $$\n", Termination::Signaled { signal: 9 }),
            ("kill -TERM $$\n", Termination::Signaled { signal: 15 }),
        ] {
            for contract in [Contract::Stdout, Contract::Trusted] {
                let j = job(
                    contract,
                    &[],
                    &[("test_all", &format!("#!/bin/sh\n{body}"), true)],
                );
                let o = r.run(&j.spec, &CancellationToken::new()).await.unwrap();
                assert_eq!(o.termination, want, "{contract:?} {body}{}", shown(&o));
            }
        }
    }
}
