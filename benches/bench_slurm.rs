//! Benchmark driver for `scripts/bench slurm`: the slurm runner's per-job
//! wall time and throughput, one Slurm job per grading job and through
//! pilots (`[slurm] pilots`), beside `labgrader sandbox --job-dir` run
//! directly on this host (what the compute node runs) in the same run.
//!
//! Reads the cluster from the environment `scripts/setup/slurm.sh` exports.
//! Prints figures; asserts nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use labgrader::config::{Config, Seconds};
use labgrader::sandbox::jobdir::JobDir;
use labgrader::sandbox::slurm::SlurmRunner;
use labgrader::sandbox::{Limits, RunSpec, Runner, Termination};
use tokio_util::sync::CancellationToken;

struct Args {
    rounds: usize,
    jobs: usize,
    parallel: usize,
    poll_ms: Option<u64>,
    pilots: usize,
    slots: usize,
    bin: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        rounds: 10,
        jobs: 100,
        parallel: 8,
        poll_ms: None,
        pilots: 2,
        slots: 8,
        // The labgrader binary cargo built beside this bench.
        bin: PathBuf::from(env!("CARGO_BIN_EXE_labgrader")),
    };
    // `cargo bench` appends `--bench` to a harness-less bench's arguments.
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--rounds" => a.rounds = v().parse().expect("--rounds N"),
            "--jobs" => a.jobs = v().parse().expect("--jobs N"),
            "--parallel" => a.parallel = v().parse().expect("--parallel N"),
            "--poll-ms" => a.poll_ms = Some(v().parse().expect("--poll-ms N")),
            "--bin" => a.bin = PathBuf::from(v()),
            "--pilots" => a.pilots = v().parse().expect("--pilots N"),
            "--slots" => a.slots = v().parse().expect("--slots N"),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set; source scripts/setup/slurm.sh"))
}

fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(30),
        memory: 128 << 20,
        pids: 64,
        output: 64 << 10,
        cpus: 1.0,
        file_size: 16 << 20,
        open_files: 256,
        disk: 1 << 30,
    }
}

fn trivial_workspace(root: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let ws = root.join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::set_permissions(&ws, std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = ws.join("test_all");
    std::fs::write(
        &t,
        "#!/bin/sh\nprintf '<summary>\\ngrade_total = 1\\n</summary>\\n'\n",
    )
    .unwrap();
    std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o755)).unwrap();
    ws
}

fn spec(job_id: String, ws: &Path) -> RunSpec {
    RunSpec::new(job_id, ws.to_path_buf(), vec![], limits())
}

/// The baseline: what the node does, run here — copy the workspace into a
/// job directory and run `labgrader sandbox --job-dir` on it.
async fn direct(bin: &Path, scratch: &Path, spec: &RunSpec) {
    let jd = JobDir::new(scratch.join(&spec.job_id));
    labgrader::sandbox::slurm::copy_tree(&spec.workspace, &jd.workspace()).unwrap();
    let mut s = spec.clone();
    s.workspace = jd.workspace();
    jd.write_job(&s).unwrap();
    let st = tokio::process::Command::new(bin)
        .args(["--log", "warn", "sandbox", "--job-dir"])
        .arg(&jd.root)
        .status()
        .await
        .unwrap();
    assert!(st.success());
    let o = jd.read_outcome().unwrap().expect("outcome");
    assert_eq!(o.termination, Termination::Exited { code: 0 });
    std::fs::remove_dir_all(&jd.root).unwrap();
}

async fn via_slurm(r: &SlurmRunner, spec: &RunSpec) {
    let o = r
        .run(spec, &CancellationToken::new())
        .await
        .expect("slurm run");
    assert_eq!(o.termination, Termination::Exited { code: 0 }, "{o:?}");
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let a = args();
    let mut cfg = Config::default();
    cfg.slurm.url = env("LABGRADER_SLURM_URL");
    cfg.slurm.token_file = PathBuf::from(env("LABGRADER_SLURM_TOKEN_FILE"));
    cfg.slurm.shared_dir = PathBuf::from(env("LABGRADER_SLURM_SHARED_DIR"));
    cfg.slurm.user = std::env::var("LABGRADER_SLURM_USER").unwrap_or_else(|_| "labgrader".into());
    cfg.slurm.labgrader_bin = a.bin.clone();
    if let Some(p) = a.poll_ms {
        cfg.slurm.poll_interval = Seconds(Duration::from_millis(p));
    }
    let per_job = Arc::new(SlurmRunner::new(&cfg).expect("slurm runner"));
    let mut pcfg = cfg.clone();
    pcfg.slurm.pilots = a.pilots;
    pcfg.slurm.pilot_slots = a.slots;
    pcfg.slurm.pilot_cpus = 1;
    pcfg.slurm.pilot_memory = labgrader::config::ByteSize((a.slots as u64) * (200 << 20));
    let pilots = Arc::new(SlurmRunner::new(&pcfg).expect("slurm pilot runner"));
    let tmp = tempfile::tempdir().unwrap();
    let ws = trivial_workspace(tmp.path());
    let scratch = tmp.path().join("direct");
    std::fs::create_dir_all(&scratch).unwrap();
    let tag = format!("bench-{}", std::process::id());
    println!(
        "bench slurm: {} CPUs, poll_interval {:?}, {} pilots of {} slots, trivial test_all \
         (prints a summary)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cfg.slurm.poll_interval.get(),
        a.pilots,
        a.slots
    );

    // Warm up every path once (page cache, slurmd's first launch, pilots).
    direct(&a.bin, &scratch, &spec(format!("{tag}-warm-d"), &ws)).await;
    via_slurm(&per_job, &spec(format!("{tag}-warm-s"), &ws)).await;
    via_slurm(&pilots, &spec(format!("{tag}-warm-p"), &ws)).await;

    // Per-job wall time, one job at a time, alternating.
    let (mut d, mut s, mut p) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..a.rounds {
        let t = Instant::now();
        direct(&a.bin, &scratch, &spec(format!("{tag}-d{i}"), &ws)).await;
        d.push(t.elapsed());
        let t = Instant::now();
        via_slurm(&per_job, &spec(format!("{tag}-s{i}"), &ws)).await;
        s.push(t.elapsed());
        let t = Instant::now();
        via_slurm(&pilots, &spec(format!("{tag}-p{i}"), &ws)).await;
        p.push(t.elapsed());
    }
    let md = median(&mut d);
    println!(
        "per job (median of {}): sandbox on this host {:.0} ms",
        a.rounds,
        ms(md)
    );
    for (name, v) in [
        ("one slurm job per job", &mut s),
        ("through pilots", &mut p),
    ] {
        let m = median(v);
        println!(
            "  {name:<22} {:.0} ms; overhead {:.0} ms, ratio {:.1}x",
            ms(m),
            ms(m.saturating_sub(md)),
            m.as_secs_f64() / md.as_secs_f64()
        );
    }

    // Throughput: N jobs, P at a time.
    let sem = Arc::new(tokio::sync::Semaphore::new(a.parallel));
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..a.jobs {
        let (sem, bin, scratch, sp) = (
            sem.clone(),
            a.bin.clone(),
            scratch.clone(),
            spec(format!("{tag}-td{i}"), &ws),
        );
        set.spawn(async move {
            let _p = sem.acquire().await.unwrap();
            direct(&bin, &scratch, &sp).await;
        });
    }
    while set.join_next().await.is_some() {}
    let jd = a.jobs as f64 / t.elapsed().as_secs_f64();
    println!(
        "throughput ({} jobs, {} at a time): sandbox on this host {:.1} jobs/s",
        a.jobs, a.parallel, jd
    );
    for (name, r, key) in [
        ("one slurm job per job", per_job.clone(), "ts"),
        ("through pilots", pilots.clone(), "tp"),
    ] {
        let before = phase_stats();
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..a.jobs {
            let (sem, r, sp) = (sem.clone(), r.clone(), spec(format!("{tag}-{key}{i}"), &ws));
            set.spawn(async move {
                let _p = sem.acquire().await.unwrap();
                via_slurm(&r, &sp).await;
            });
        }
        while let Some(r) = set.join_next().await {
            r.expect("slurm job task");
        }
        let js = a.jobs as f64 / t.elapsed().as_secs_f64();
        println!(
            "  {name:<22} {js:.1} jobs/s ({:.1} s); ratio {:.2}\n    mean per phase: {}",
            a.jobs as f64 / js,
            js / jd,
            phase_means(&before, &phase_stats())
        );
    }
}

const PHASES: [&str; 5] = ["slot", "submit", "queued", "run", "collect"];

/// The slurm runner's per-phase (sum, count), from its histograms.
fn phase_stats() -> Vec<(f64, f64)> {
    let text = labgrader::metrics::render(&[]);
    PHASES
        .iter()
        .map(|phase| {
            let get = |what: &str| {
                let key = format!("labgrader_slurm_phase_seconds_{what}{{phase=\"{phase}\"}} ");
                text.lines()
                    .find_map(|l| l.strip_prefix(&key)?.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            (get("sum"), get("count"))
        })
        .collect()
}

/// Mean time per phase between two [`phase_stats`].
fn phase_means(before: &[(f64, f64)], after: &[(f64, f64)]) -> String {
    PHASES
        .iter()
        .zip(before.iter().zip(after))
        .filter(|(_, (b, a))| a.1 > b.1)
        .map(|(p, (b, a))| format!("{p} {:.1} ms", (a.0 - b.0) / (a.1 - b.1) * 1000.0))
        .collect::<Vec<_>>()
        .join(", ")
}
