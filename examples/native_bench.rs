//! Job start overhead of the native runner, beside a bare fork/exec of the
//! same trivial `test_all`, the `none` runner, and `docker run` when a
//! Docker engine answers. Called by `scripts/bench.d/native`; prints one
//! line per method and the ratios. Not a test: figures, not assertions.
//!
//! Usage: native_bench [ITERATIONS] (default 50). Env: LABGRADER_BENCH_IMAGE
//! (docker image with /bin/sh, default `busybox`).

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use labgrader::config::NativeConfig;
use labgrader::sandbox::native::NativeRunner;
use labgrader::sandbox::none::NoneRunner;
use labgrader::sandbox::{Limits, RunSpec, Runner, Termination};
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
        name: "native runner".into(),
        samples: vec![],
    };
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
    let overhead = nat.median().saturating_sub(bare.median());
    println!(
        "native overhead over bare fork/exec (median): {:.2} ms (goal < 20 ms); \
         of which the kernel's namespace clone+teardown alone: {:.2} ms",
        ms(overhead),
        ms(floor.median())
    );

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
                .args(["run", "--rm", "--network", "none", "-v"])
                .arg(format!("{}:/workspace", ws.path().display()))
                .args(["-w", "/workspace", &image, "./test_all"])
                .stdout(Stdio::null())
                .status()
                .unwrap();
            dock.samples.push(t0.elapsed());
            assert!(
                st.success(),
                "docker run failed (is the image {image} present?)"
            );
        }
        dock.print();
        println!(
            "docker / native (median): {:.1}x (goal >= 10x)",
            dock.median().as_secs_f64() / nat.median().as_secs_f64()
        );
    } else {
        println!("docker: no Docker engine answers (to this user); docker comparison not measured");
    }
}
