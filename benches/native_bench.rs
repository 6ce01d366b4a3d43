//! Job start overhead of the native runner — the `stdout` contract (one
//! identity) and the two-identity `trusted` setup (harness and student,
//! lg-init's broker; with and without one `run-as-student` call) — beside
//! a bare fork/exec of the same trivial `test_all`, the `none` runner,
//! bubblewrap's full sandbox (`bwrap --unshare-all`) and `docker run` when
//! a Docker engine answers; then the throughput of the none and native
//! runners with 1, 4 and 8 runs at once (what a busy grader sees: on a
//! loaded host the kernel's per-run work, not one run's latency, is the
//! limit). Called by `scripts/bench.d/native`; prints one line per method
//! and the ratios. Not a test: figures, not assertions.
//!
//! Usage: native_bench [ITERATIONS] (default 50). Env: LABGRADER_BENCH_IMAGE
//! (docker image with /bin/sh, default `busybox`).

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use labgrader::config::NativeConfig;
use labgrader::sandbox::native::NativeRunner;
use labgrader::sandbox::none::NoneRunner;
use labgrader::sandbox::{Contract, Limits, RunSpec, Runner, Termination};
use tokio_util::sync::CancellationToken;

const TEST_ALL: &str = "#!/bin/sh\necho '<summary>'\necho 'grade_total = 1'\necho '</summary>'\n";

struct Stats {
    name: String,
    samples: Vec<Duration>,
}

impl Stats {
    fn median(&self) -> Duration {
        let mut s = self.samples.clone();
        s.sort();
        s[s.len() / 2]
    }
    fn p90(&self) -> Duration {
        let mut s = self.samples.clone();
        s.sort();
        s[(s.len() * 9 / 10).min(s.len() - 1)]
    }
    fn mean(&self) -> Duration {
        self.samples.iter().sum::<Duration>() / self.samples.len() as u32
    }
    fn print(&self) {
        println!(
            "{:<28} n={:<4} median {:>8.2} ms  mean {:>8.2} ms  p90 {:>8.2} ms",
            self.name,
            self.samples.len(),
            ms(self.median()),
            ms(self.mean()),
            ms(self.p90())
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The kernel's share: clone a child into the same six namespaces and
/// reap it, doing nothing else (no mounts, no exec). No runner can start a
/// job below this.
fn kernel_floor() -> Duration {
    extern "C" fn noop(_: *mut libc::c_void) -> libc::c_int {
        0
    }
    let mut stack = vec![0u8; 64 * 1024];
    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::SIGCHLD;
    let t0 = Instant::now();
    // SAFETY: the child runs `noop` on its own stack and exits at once.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(stack.len());
        let top = top.sub(top as usize % 16);
        libc::clone(noop, top.cast(), flags, std::ptr::null_mut())
    };
    assert!(pid > 0, "clone failed");
    let mut st = 0;
    // SAFETY: waitpid on our child.
    unsafe { libc::waitpid(pid, &mut st, libc::__WALL) };
    t0.elapsed()
}

/// bubblewrap's full sandbox around the same test_all: every namespace, a
/// read-only /usr, fresh /proc, /dev and /tmp, the workspace bound in.
fn bwrap(ws: &std::path::Path) -> Option<Duration> {
    let t0 = Instant::now();
    let st = Command::new("bwrap")
        .args([
            "--unshare-all",
            "--die-with-parent",
            "--ro-bind",
            "/usr",
            "/usr",
        ])
        .args([
            "--symlink",
            "usr/bin",
            "/bin",
            "--symlink",
            "usr/lib",
            "/lib",
        ])
        .args([
            "--symlink",
            "usr/lib64",
            "/lib64",
            "--symlink",
            "usr/sbin",
            "/sbin",
        ])
        .args([
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--bind",
        ])
        .arg(ws)
        .args(["/workspace", "--chdir", "/workspace", "./test_all"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .ok()?;
    st.success().then(|| t0.elapsed())
}

fn docker_answers() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50);
    let ws = tempfile::Builder::new()
        .prefix("lg-bench-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let t = ws.path().join("test_all");
    std::fs::write(&t, TEST_ALL).unwrap();
    std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = RunSpec::new(
        "bench",
        ws.path().to_path_buf(),
        vec![("LABGRADER_JOB_ID".into(), "bench".into())],
        Limits {
            timeout: Duration::from_secs(30),
            memory: 256 << 20,
            pids: 64,
            output: 1 << 20,
            cpus: 1.0,
            file_size: 64 << 20,
            open_files: 256,
            disk: 1 << 30,
        },
    );
    // The trusted contract: the same test_all as the harness, in a copy of
    // the tests; a second one calls run-as-student once.
    let tests = tempfile::Builder::new()
        .prefix("lg-bench-tests-")
        .tempdir()
        .unwrap();
    let tests2 = tempfile::Builder::new()
        .prefix("lg-bench-tests-")
        .tempdir()
        .unwrap();
    for (dir, body) in [
        (tests.path(), TEST_ALL.to_string()),
        (tests2.path(), format!("{TEST_ALL}run-as-student true\n")),
    ] {
        let t = dir.join("test_all");
        std::fs::write(&t, body).unwrap();
        std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let results = tempfile::tempdir().unwrap();
    let trusted_in = |tests: &std::path::Path| {
        let mut s = spec.clone();
        s.contract = Contract::Trusted;
        s.tests = Some(tests.to_path_buf());
        s.results = results.path().to_path_buf();
        s.scratch = results.path().join("runner");
        s
    };
    let (trusted, trusted_call) = (trusted_in(tests.path()), trusted_in(tests2.path()));
    let native = NativeRunner::new(&NativeConfig::default()).expect("native runner available");
    println!(
        "native runner: uid {}, cgroups: {}",
        nix::unistd::geteuid(),
        native
            .cgroups()
            .unwrap_or_else(|| "none (rlimits only)".into())
    );
    let cancel = CancellationToken::new();
    let mut bare = Stats {
        name: "bare fork/exec".into(),
        samples: vec![],
    };
    let mut none = Stats {
        name: "none runner".into(),
        samples: vec![],
    };
    let mut nat = Stats {
        name: "native, stdout contract".into(),
        samples: vec![],
    };
    let mut nat_t = Stats {
        name: "native, trusted (2 ids)".into(),
        samples: vec![],
    };
    let mut nat_tc = Stats {
        name: "native, trusted + 1 call".into(),
        samples: vec![],
    };
    let mut bw = Stats {
        name: "bwrap --unshare-all".into(),
        samples: vec![],
    };
    let have_bwrap = bwrap(ws.path()).is_some();
    let mut floor = Stats {
        name: "kernel: clone 6 namespaces".into(),
        samples: vec![],
    };
    // Warm-up: page cache, spawner thread, cgroup dirs.
    for _ in 0..3 {
        native.run(&spec, &cancel).await.unwrap();
    }
    // Interleave the methods so load changes on a shared machine hit all.
    for _ in 0..n {
        let t0 = Instant::now();
        let out = Command::new("./test_all")
            .current_dir(ws.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        bare.samples.push(t0.elapsed());
        assert!(out.status.success());

        let t0 = Instant::now();
        let o = NoneRunner.run(&spec, &cancel).await.unwrap();
        none.samples.push(t0.elapsed());
        assert_eq!(o.termination, Termination::Exited { code: 0 });

        let t0 = Instant::now();
        let o = native.run(&spec, &cancel).await.unwrap();
        nat.samples.push(t0.elapsed());
        assert_eq!(o.termination, Termination::Exited { code: 0 });
        assert!(String::from_utf8_lossy(&o.stdout.bytes).contains("grade_total"));

        for (stats, s) in [(&mut nat_t, &trusted), (&mut nat_tc, &trusted_call)] {
            let t0 = Instant::now();
            let o = native.run(s, &cancel).await.unwrap();
            stats.samples.push(t0.elapsed());
            assert_eq!(o.termination, Termination::Exited { code: 0 }, "{o:?}");
        }

        if have_bwrap {
            bw.samples.extend(bwrap(ws.path()));
        }

        floor.samples.push(kernel_floor());
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    bare.print();
    none.print();
    floor.print();
    nat.print();
    nat_t.print();
    nat_tc.print();
    let overhead = nat.median().saturating_sub(bare.median());
    println!(
        "native overhead over bare fork/exec (median): {:.2} ms stdout, {:.2} ms trusted \
         (goal < 20 ms); of which the kernel's namespace clone+teardown alone: {:.2} ms",
        ms(overhead),
        ms(nat_t.median().saturating_sub(bare.median())),
        ms(floor.median())
    );
    if bw.samples.is_empty() {
        println!("bwrap: not installed or not usable here; bubblewrap comparison not measured");
    } else {
        bw.print();
        println!(
            "native / bwrap (median): {:.2}x stdout, {:.2}x trusted (goal < 2x)",
            nat.median().as_secs_f64() / bw.median().as_secs_f64(),
            nat_t.median().as_secs_f64() / bw.median().as_secs_f64()
        );
    }

    if docker_answers() {
        let image = std::env::var("LABGRADER_BENCH_IMAGE").unwrap_or_else(|_| "busybox".into());
        let mut dock = Stats {
            name: format!("docker run ({image})"),
            samples: vec![],
        };
        let m = (n / 5).max(5);
        for _ in 0..m {
            let t0 = Instant::now();
            let st = Command::new("docker")
                .args(["run", "--rm", "--pull", "never", "--network", "none", "-v"])
                .arg(format!("{}:/workspace", ws.path().display()))
                .args(["-w", "/workspace", &image, "./test_all"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            if !st.success() {
                break;
            }
            dock.samples.push(t0.elapsed());
        }
        if dock.samples.is_empty() {
            println!("docker: `docker run {image}` failed (is the image present?); not measured");
        } else {
            dock.print();
            println!(
                "docker / native (median): {:.1}x (goal >= 10x)",
                dock.median().as_secs_f64() / nat.median().as_secs_f64()
            );
        }
    } else {
        println!("docker: no Docker engine answers (to this user); docker comparison not measured");
    }
    concurrent_throughput(std::sync::Arc::new(native), &spec, n).await;
}

/// Runs per second of the none and native runners with 1, 4 and 8 runs
/// going at once, `n` each (same `test_all`).
async fn concurrent_throughput(native: std::sync::Arc<NativeRunner>, spec: &RunSpec, n: usize) {
    for at_once in [1usize, 4, 8] {
        let mut rates = Vec::new();
        for native_runner in [false, true] {
            let t0 = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..at_once {
                let (native, spec) = (native.clone(), spec.clone());
                set.spawn(async move {
                    let cancel = CancellationToken::new();
                    for _ in 0..n {
                        let out = if native_runner {
                            native.run(&spec, &cancel).await
                        } else {
                            NoneRunner.run(&spec, &cancel).await
                        };
                        assert_eq!(out.unwrap().termination, Termination::Exited { code: 0 });
                    }
                });
            }
            while let Some(done) = set.join_next().await {
                done.expect("a run panicked");
            }
            rates.push((at_once * n) as f64 / t0.elapsed().as_secs_f64());
        }
        println!(
            "{at_once} at once: none {:6.0} runs/s, native {:6.0} runs/s (native/none {:.2})",
            rates[0],
            rates[1],
            rates[1] / rates[0]
        );
    }
}
