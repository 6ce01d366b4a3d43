//! The hostile-submission table: one list of cases, run against every
//! sandboxing runner (docker, native, slurm). Each case is a `test_all`
//! script (POSIX sh, busybox-compatible) plus static helper binaries built
//! from `tests/common/hostile/*.c` with the host's gcc, and a check on the
//! runner's outcome. A runner's test file calls [`run_case`] once per case
//! (one `#[tokio::test]` each, so a failure names the case). It judges
//! outcomes only; it never picks or configures a runner.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use labgrader::sandbox::{Limits, RunOutcome, RunSpec, Runner, Termination};
use tokio_util::sync::CancellationToken;

/// Limits every hostile case runs under (small, so tests are quick).
pub fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(8),
        memory: 128 << 20,
        pids: 64,
        output: 64 << 10,
        cpus: 1.0,
        file_size: 64 << 20,
        open_files: 256,
        disk: 1 << 30,
    }
}

/// Static helper binaries, compiled once per test process.
pub fn helper_bin(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile-bin");
        std::fs::create_dir_all(&dir).unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/hostile");
        for entry in std::fs::read_dir(&src).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "c") {
                let out = dir.join(p.file_stem().unwrap());
                let st = Command::new("gcc")
                    .args(["-O1", "-static", "-o"])
                    .arg(&out)
                    .arg(&p)
                    .status()
                    .expect("gcc is needed to build the hostile helpers");
                assert!(st.success(), "gcc failed on {}", p.display());
            }
        }
        dir
    });
    dir.join(name)
}

/// One hostile submission.
pub struct Case {
    pub name: &'static str,
    /// Body of `test_all` (a `#!/bin/sh` line is added).
    pub script: String,
    /// Helper binaries copied into the workspace.
    pub helpers: &'static [&'static str],
    /// Checks the outcome; panics with a message on failure.
    pub check: fn(&RunOutcome, &Probe),
}

/// Host-side facts a case may check after the run.
pub struct Probe {
    /// A TCP port listening on the host's 127.0.0.1 during the run.
    pub host_port: u16,
    /// A unique token the case may use in file and process names.
    pub token: String,
}

/// The run's stdout as text.
pub fn stdout(o: &RunOutcome) -> String {
    String::from_utf8_lossy(&o.stdout.bytes).into_owned()
}

/// Everything a failed check should show: how the run ended, when, and both streams.
pub fn shown(o: &RunOutcome) -> String {
    format!(
        "{:?} after {} ms on {}\n--- stdout\n{}\n--- stderr\n{}",
        o.termination,
        (o.ended_at - o.started_at).num_milliseconds(),
        o.runner,
        stdout(o),
        String::from_utf8_lossy(&o.stderr.bytes)
    )
}

/// Every case. Runners may skip none of them.
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "memory_hog",
            script: "./memhog\n".into(),
            helpers: &["memhog"],
            check: |o, _| {
                assert_eq!(o.termination, Termination::MemoryLimit, "{}", shown(o));
                assert!(!stdout(o).contains("without being stopped"));
            },
        },
        Case {
            name: "fork_bomb",
            script: "echo start\nb() { b | b & }\nb\nsleep 2\necho end\n".into(),
            helpers: &[],
            check: |o, _| {
                // Contained: the run ended by itself or at the timeout, and
                // the host can still start processes.
                assert!(
                    matches!(
                        o.termination,
                        Termination::Timeout | Termination::Exited { .. } | Termination::Signaled { .. }
                    ),
                    "{:?}",
                    o.termination
                );
                assert!(Command::new("true").status().unwrap().success());
            },
        },
        Case {
            name: "network_closed",
            script: "./netprobe \"$HOST_PORT\"\n".into(),
            helpers: &["netprobe"],
            check: |o, _| {
                let out = stdout(o);
                assert!(out.contains("tcp: blocked"), "{out}");
                assert!(out.contains("dns: blocked"), "{out}");
            },
        },
        Case {
            name: "infinite_loop",
            script: "while :; do :; done\n".into(),
            helpers: &[],
            check: |o, _| {
                assert_eq!(o.termination, Termination::Timeout);
                let took = (o.ended_at - o.started_at).to_std().unwrap();
                assert!(took < limits().timeout + Duration::from_secs(20), "{took:?}");
            },
        },
        Case {
            name: "stdout_flood",
            script: "dd if=/dev/zero bs=1048576 count=200 2>/dev/null\necho '<summary>'\n".into(),
            helpers: &[],
            check: |o, _| {
                assert!(o.stdout.truncated);
                assert_eq!(o.stdout.bytes.len() as u64, limits().output);
            },
        },
        Case {
            name: "readonly_root_and_unprivileged",
            script: "touch /usr/pwned 2>/dev/null && echo usr: writable || echo usr: readonly\n\
                     echo uid: $(id -u)\n"
                .into(),
            helpers: &[],
            check: |o, _| {
                let out = stdout(o);
                assert!(out.contains("usr: readonly"), "{out}");
                assert!(!out.contains("uid: 0\n"), "{out}");
                assert!(!Path::new("/usr/pwned").exists());
            },
        },
        Case {
            name: "daemonized_child_does_not_outlive_job",
            // A script named after the token (not `exec -a`: busybox
            // applets dispatch on argv[0]), so a /proc scan inside and the
            // host's `pgrep -f` find it (busybox-static has no pgrep).
            script: "printf '#!/bin/sh\\nsleep 60\\n' > lg-$TOKEN && chmod +x lg-$TOKEN\n\
                     (setsid ./lg-$TOKEN </dev/null >/dev/null 2>&1 &)\n\
                     (./lg-$TOKEN </dev/null >/dev/null 2>&1 &)\n\
                     sleep 0.5\n\
                     for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done 2>/dev/null | \
                     grep -q \"[l]g-$TOKEN\" && echo running\n\
                     echo spawned\n"
                .into(),
            helpers: &[],
            check: |o, p| {
                assert!(stdout(o).contains("running"), "the tracked child never ran: {}", stdout(o));
                assert!(stdout(o).contains("spawned"));
                std::thread::sleep(Duration::from_millis(500));
                let ps = Command::new("pgrep").args(["-f", &format!("lg-{}", p.token)]).output().unwrap();
                assert!(ps.stdout.is_empty(), "leftover processes: {}", String::from_utf8_lossy(&ps.stdout));
            },
        },
        Case {
            name: "cannot_signal_host_processes",
            script: "kill -0 \"$HOST_PID\" 2>/dev/null && echo host: visible || echo host: hidden\n".into(),
            helpers: &[],
            check: |o, _| {
                let out = stdout(o);
                assert!(out.contains("host: hidden"), "{out}");
            },
        },
        Case {
            name: "write_outside_workspace_stays_inside",
            script: "for d in /var/tmp /dev/shm /root /etc; do echo x > $d/lg-$TOKEN 2>/dev/null && echo wrote $d; done\n\
                     echo done\n"
                .into(),
            helpers: &[],
            check: |o, p| {
                assert!(stdout(o).contains("done"));
                for d in ["/var/tmp", "/dev/shm", "/root", "/etc"] {
                    let f = Path::new(d).join(format!("lg-{}", p.token));
                    assert!(!f.exists(), "{} appeared on the host", f.display());
                }
            },
        },
    ]
}

/// A fresh workspace (a temp dir named `prefix...`) whose `test_all` is a
/// `#!/bin/sh` script with `body`; open (0777), because runners that drop
/// privileges must be able to enter it.
pub fn workspace(prefix: &str, body: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let ws = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    super::files::write_sh(&ws.path().join("test_all"), body);
    ws
}

/// [`workspace`] with the static helpers named beside `test_all` (see
/// [`helper_bin`]).
pub fn workspace_with(prefix: &str, body: &str, helpers: &[&str]) -> tempfile::TempDir {
    let ws = workspace(prefix, body);
    for h in helpers {
        std::fs::copy(helper_bin(h), ws.path().join(h)).unwrap();
    }
    ws
}

/// The run of job `job_id` in `ws` under `limits`, with `LABGRADER_JOB_ID`
/// set as the grader sets it.
pub fn spec(job_id: &str, ws: &Path, limits: Limits) -> RunSpec {
    RunSpec::new(
        job_id,
        ws.to_path_buf(),
        vec![("LABGRADER_JOB_ID".into(), job_id.into())],
        limits,
    )
}

/// A job id `name-…` no other test run on the shared cluster uses.
pub fn unique(name: &str) -> String {
    format!("{name}-{}-{}", std::process::id(), ulid::Ulid::generate())
}

/// Build a workspace for `case`, run it with `runner`, check the outcome.
/// Returns the outcome for runner-specific extra checks.
pub async fn run_case(runner: &dyn Runner, case_name: &str) -> RunOutcome {
    let case = cases()
        .into_iter()
        .find(|c| c.name == case_name)
        .unwrap_or_else(|| panic!("no hostile case named {case_name}"));
    let ws = workspace_with("lg-hostile-", &case.script, case.helpers);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let probe = Probe {
        host_port: listener.local_addr().unwrap().port(),
        token: format!("{}-{}", case.name, std::process::id()),
    };
    let spec = RunSpec::new(
        format!("hostile-{}", probe.token),
        ws.path().to_path_buf(),
        vec![
            ("HOST_PORT".into(), probe.host_port.to_string()),
            ("HOST_PID".into(), std::process::id().to_string()),
            ("TOKEN".into(), probe.token.clone()),
        ],
        limits(),
    );
    let outcome = runner
        .run(&spec, &CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("case {}: runner fault: {e}", case.name));
    (case.check)(&outcome, &probe);
    drop(listener);
    outcome
}
