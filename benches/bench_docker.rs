//! Benchmark of the docker runner against the plain Docker CLI, both in the
//! same run on the same engine (called by `scripts/bench.d/docker`).
//!
//! 1. Per-job wall time: a trivial `test_all` through `DockerRunner::run`
//!    under the `stdout` contract (one identity, `test_all` a test file),
//!    under `trusted` (two identities: the harness's copy, the broker) and
//!    `trusted` with one `run-as-student true` call, beside `docker run --rm
//!    --network none --memory M IMAGE ./test_all` (workspace bind-mounted),
//!    alternating, median of each.
//! 2. Throughput: J jobs with P at a time through the runner, beside
//!    `xargs -P P` of the same `docker run`.
//!
//! Prints one `key=value` line per figure; the ratios are what to read.
//! It only measures: no assertion, no exit code from the figures.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use labgrader::config::{Contract, DockerConfig};
use labgrader::sandbox::docker::DockerRunner;
use labgrader::sandbox::{Limits, RunSpec, Runner, Termination};
use tokio_util::sync::CancellationToken;

const TEST_ALL: &str = "#!/bin/sh\necho '<summary>'\necho 'grade_total = 100'\necho '</summary>'\n";

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(60),
        memory: 256 << 20,
        pids: 256,
        output: 1 << 20,
        cpus: 1.0,
        file_size: 64 << 20,
        open_files: 1024,
        disk: 1 << 30,
    }
}

fn bare_cmd(docker: &str, image: &str, ws: &str) -> Command {
    let mut c = Command::new(docker);
    c.args([
        "run",
        "--rm",
        "--network",
        "none",
        "--memory",
        "256m",
        "--memory-swap",
        "256m",
    ])
    .args([
        "-v",
        &format!("{ws}:/workspace"),
        "-w",
        "/workspace",
        image,
        "./test_all",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::inherit());
    c
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

async fn one_job(runner: &DockerRunner, ws: &std::path::Path, i: usize) {
    let spec = RunSpec {
        test_paths: Arc::new(vec!["test_all".into()]),
        ..RunSpec::new(
            format!("bench-{}-{i}", std::process::id()),
            ws.to_path_buf(),
            vec![],
            limits(),
        )
    };
    run_spec(runner, spec).await;
}

/// A trusted job: the harness's tests in `tests` (its `test_all`), an
/// empty workspace beside it.
async fn trusted_job(runner: &DockerRunner, root: &std::path::Path, tests: &str, i: usize) {
    let spec = RunSpec {
        contract: Contract::Trusted,
        tests: Some(root.join(tests)),
        ..RunSpec::new(
            format!("bench-t-{}-{i}", std::process::id()),
            root.join("workspace"),
            vec![],
            limits(),
        )
    };
    run_spec(runner, spec).await;
}

/// A trusted tree under `root`: `workspace/`, and `name/test_all` = `body`.
fn trusted_tree(root: &std::path::Path, name: &str, body: &str) {
    std::fs::create_dir_all(root.join("workspace")).unwrap();
    std::fs::create_dir_all(root.join(name)).unwrap();
    let t = root.join(name).join("test_all");
    std::fs::write(&t, body).unwrap();
    std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o755)).unwrap();
}

async fn run_spec(runner: &DockerRunner, spec: RunSpec) {
    let o = runner
        .run(&spec, &CancellationToken::new())
        .await
        .expect("runner fault");
    assert_eq!(o.termination, Termination::Exited { code: 0 }, "{o:?}");
}

#[tokio::main]
async fn main() {
    let image = arg("--image", "labgrader/test-busybox:latest");
    let docker = arg("--docker", "docker");
    let rounds: usize = arg("--rounds", "20").parse().unwrap();
    let jobs: usize = arg("--jobs", "32").parse().unwrap();
    let par: usize = arg("--parallel", "4").parse().unwrap();

    let ws = tempfile::Builder::new()
        .prefix("lg-bench-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = ws.path().join("test_all");
    std::fs::write(&t, TEST_ALL).unwrap();
    std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ws_s = ws.path().to_str().unwrap().to_string();
    let troot = tempfile::Builder::new()
        .prefix("lg-bench-t-")
        .tempdir()
        .unwrap();
    trusted_tree(troot.path(), "plain", TEST_ALL);
    trusted_tree(
        troot.path(),
        "broker",
        &format!("#!/bin/sh\nrun-as-student true\n{}", &TEST_ALL[10..]),
    );

    let cfg = DockerConfig {
        image: image.clone(),
        ..DockerConfig::default()
    };
    let runner = Arc::new(
        DockerRunner::connect(&cfg)
            .await
            .expect("docker engine and image"),
    );
    println!("image={image} rounds={rounds} jobs={jobs} parallel={par}");

    // Warm up both paths (page cache, image layers, client pool).
    for i in 0..2 {
        one_job(&runner, ws.path(), i).await;
        trusted_job(&runner, troot.path(), "broker", i).await;
        assert!(bare_cmd(&docker, &image, &ws_s).status().unwrap().success());
    }

    // 1. Per-job wall time, alternating so drift hits all alike.
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    let (mut trusted, mut broker) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let t0 = Instant::now();
        one_job(&runner, ws.path(), i).await;
        ours.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        trusted_job(&runner, troot.path(), "plain", i).await;
        trusted.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        trusted_job(&runner, troot.path(), "broker", i).await;
        broker.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        assert!(bare_cmd(&docker, &image, &ws_s).status().unwrap().success());
        bare.push(t0.elapsed().as_secs_f64());
    }
    let (m_ours, m_bare) = (median(&mut ours), median(&mut bare));
    let (m_trusted, m_broker) = (median(&mut trusted), median(&mut broker));
    println!(
        "per_job_runner_median_ms={:.1} (stdout contract)",
        m_ours * 1e3
    );
    println!(
        "per_job_trusted_median_ms={:.1} (two identities)",
        m_trusted * 1e3
    );
    println!(
        "per_job_trusted_run_as_student_median_ms={:.1} (one run-as-student call)",
        m_broker * 1e3
    );
    println!("per_job_docker_run_median_ms={:.1}", m_bare * 1e3);
    println!("per_job_ratio={:.3} (goal <= 1.15)", m_ours / m_bare);
    println!("per_job_trusted_ratio={:.3}", m_trusted / m_bare);
    println!(
        "per_job_trusted_over_stdout_ms={:.1}",
        (m_trusted - m_ours) * 1e3
    );

    // 2. Throughput with `par` at a time.
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(par));
    let mut tasks = Vec::new();
    for i in 0..jobs {
        let (runner, sem, ws) = (runner.clone(), sem.clone(), ws.path().to_path_buf());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.unwrap();
            one_job(&runner, &ws, 1000 + i).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let ours_tp = jobs as f64 / t0.elapsed().as_secs_f64();

    let t0 = Instant::now();
    let script = format!(
        "seq {jobs} | xargs -P {par} -I{{}} {docker} run --rm --network none --memory 256m \
         --memory-swap 256m -v {ws_s}:/workspace -w /workspace {image} ./test_all >/dev/null"
    );
    assert!(
        Command::new("sh")
            .arg("-c")
            .arg(&script)
            .status()
            .unwrap()
            .success()
    );
    let bare_tp = jobs as f64 / t0.elapsed().as_secs_f64();
    println!("throughput_runner_jobs_per_s={ours_tp:.2}");
    println!("throughput_xargs_docker_run_jobs_per_s={bare_tp:.2}");
    println!("throughput_ratio={:.3} (goal >= 1.0)", ours_tp / bare_tp);
}
