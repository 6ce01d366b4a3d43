//! Web view benchmark (`scripts/bench web`): result pages per second and
//! their latency with 10,000 jobs in the gradebook at 32 connections, and
//! whether serving them slows intake, all in one run on the real hook
//! server (in-process, as `labgrader serve` runs it):
//!
//! 1. intake alone: durable events/s at `--connections` (the baseline,
//!    measured before and after the runs below, and averaged);
//! 2. result pages alone: pages/s, p50, p99 (`GET /jobs/<job>?t=<token>`
//!    of random jobs, each page with its tests, stdout and history);
//! 3. both at once: intake events/s and page p99 under each other's load.
//!
//! The page clients run on their own niced threads (they stand in for
//! browsers elsewhere). Printed as ratios against the same run's figures
//! (machine and load average noted);
//! nothing is asserted. Goals: page p99 < 20 ms; intake with pages >=
//! 0.8x intake alone.
//!
//! Usage: web_bench [--dir DIR] [--jobs N] [--events N] [--connections C] [--secs S]
//! [--renders N]

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use labgrader::config::{Config, Secret};
use labgrader::gradebook::Gradebook;
use labgrader::result::{Captured, JobResult, Status};
use labgrader::results::{TestResults, TestRow, Visibility};
use tokio_util::sync::CancellationToken;

#[path = "common/mod.rs"]
mod common;
use common::{Figures, TOKEN, post_pushes};

const WEB_SECRET: &str = "bench-web-secret-0123456789abcdef";

struct Args {
    dir: PathBuf,
    jobs: usize,
    events: usize,
    connections: usize,
    secs: f64,
    /// `[web] renders` (0 = every CPU but one).
    renders: usize,
}

fn args() -> Args {
    let mut a = Args {
        dir: PathBuf::from("target/bench-web"),
        jobs: 10_000,
        events: 3000,
        connections: 32,
        secs: 5.0,
        renders: 0,
    };
    // `cargo bench` appends `--bench` to a harness-less bench's arguments.
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => a.dir = PathBuf::from(val()),
            "--jobs" => a.jobs = val().parse().expect("--jobs N"),
            "--events" => a.events = val().parse().expect("--events N"),
            "--connections" => a.connections = val().parse().expect("--connections C"),
            "--secs" => a.secs = val().parse().expect("--secs S"),
            "--renders" => a.renders = val().parse().expect("--renders N"),
            "-h" | "--help" => {
                println!(
                    "web_bench [--dir DIR] [--jobs N] [--events N] [--connections C] [--secs S] [--renders N]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// A graded job of `student` with two tests (one hidden) and some stdout.
fn job(i: usize, student: usize) -> JobResult {
    let at = Utc::now() - chrono::Duration::seconds((100_000 - i as i64).max(0));
    let row = |name: String, vis: Visibility| TestRow {
        name,
        number: None,
        score: Some((i % 10) as f64),
        max_score: Some(10.0),
        visibility: vis,
        status: None,
        output: Some(format!("expected 10, got {}\nsee the slides", i % 10)),
        tags: vec![],
    };
    let stdout = format!(
        "running tests for job {i}\n{}",
        "ok line of output\n".repeat(100)
    );
    JobResult {
        schema: 1,
        job_id: format!("{:026}", i),
        project: format!("course/s{student:04}/lab1"),
        git_ref: "refs/heads/main".into(),
        student_sha: format!("{:040x}", i + 1),
        tests_sha: Some(format!("{:040x}", 7)),
        runner: "docker".into(),
        image: Some("labgrader/grader:latest".into()),
        image_id: None,
        limits: None,
        received_at: at,
        started_at: Some(at + chrono::Duration::seconds(1)),
        ended_at: at + chrono::Duration::seconds(4),
        status: Status::Graded,
        reason: None,
        termination: None,
        grade_total: Some((i % 10) as f64 * 2.0),
        summary: BTreeMap::new(),
        hidden: BTreeMap::new(),
        stdout: Captured::from_bytes(stdout.into_bytes(), 1 << 20),
        stderr: Captured::default(),
        results: Some(TestResults {
            grade_total: (i % 10) as f64 * 2.0,
            score: None,
            output: Some("keep going".into()),
            stdout_visibility: Visibility::Visible,
            execution_time: None,
            tests: (0..8)
                .map(|t| row(format!("test-{t}"), Visibility::Visible))
                .chain([row("hidden-one".into(), Visibility::Hidden)])
                .collect(),
            source: None,
        }),
        extra: BTreeMap::new(),
    }
}

fn push_body(n: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "object_kind": "push", "event_name": "push",
        "before": "95790bf891e76fee5e1747ab589903a6a1f80f22",
        "after": format!("{:040x}", n + 1), "checkout_sha": format!("{:040x}", n + 1),
        "ref": format!("refs/heads/b{n}"),
        "user_id": 4, "user_name": "Ada Student", "user_username": "ada", "user_email": "",
        "project_id": 15,
        "project": {"id": 15, "name": "lab1", "path_with_namespace": "alice/lab1",
                    "git_http_url": "http://gitlab.example.edu/alice/lab1.git"},
        "commits": [], "total_commits_count": 0
    }))
    .unwrap()
}

type GetSender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect<B>(addr: std::net::SocketAddr) -> hyper::client::conn::http1::SendRequest<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// GET result pages of random jobs until `stop`.
async fn page_client(
    addr: std::net::SocketAddr,
    jobs: usize,
    seed: usize,
    stop: Arc<AtomicBool>,
) -> Vec<Duration> {
    let mut send: GetSender = connect(addr).await;
    let mut lat = Vec::new();
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    while !stop.load(Ordering::Relaxed) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let id = format!("{:026}", x % jobs);
        let path = format!(
            "/jobs/{id}?t={}",
            labgrader::web::token(WEB_SECRET.as_bytes(), &id)
        );
        let req = hyper::Request::get(path)
            .header("host", "bench")
            .body(Empty::new())
            .unwrap();
        let t = Instant::now();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status();
        let b = resp.into_body().collect().await.unwrap().to_bytes();
        lat.push(t.elapsed());
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
        assert!(b.len() > 2000);
    }
    lat
}

async fn intake_run(addr: std::net::SocketAddr, conns: usize, from: usize, n: usize) -> Figures {
    let next = Arc::new(AtomicUsize::new(from));
    let start = Instant::now();
    let tasks: Vec<_> = (0..conns)
        .map(|_| tokio::spawn(post_pushes(addr, next.clone(), from + n, push_body)))
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    Figures {
        n,
        secs: start.elapsed().as_secs_f64(),
        lat,
    }
}

/// The page clients stand in for browsers on other machines: they run on
/// their own runtime, whose threads are niced like the server's render
/// threads, so generating the load takes only CPU the server leaves idle.
fn start_pages(
    clients: &tokio::runtime::Handle,
    addr: std::net::SocketAddr,
    conns: usize,
    jobs: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Duration>>> {
    (0..conns)
        .map(|c| clients.spawn(page_client(addr, jobs, c + 1, stop.clone())))
        .collect()
}

fn nice_this_thread() {
    // SAFETY: setpriority on this thread's own id; no memory is touched.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
    }
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>, start: Instant) -> Figures {
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    Figures {
        n: lat.len(),
        secs: start.elapsed().as_secs_f64(),
        lat,
    }
}

fn main() {
    let a = args();
    let _ = fs::remove_dir_all(&a.dir);
    fs::create_dir_all(&a.dir).unwrap();
    let repo = a.dir.join("repos/root/lab1-test.git");
    fs::create_dir_all(&repo).unwrap();
    let ok = std::process::Command::new("git")
        .args(["init", "-q", "--bare"])
        .arg(&repo)
        .status()
        .expect("git runs");
    assert!(ok.success());
    let mut cfg = Config::default();
    cfg.spool.dir = a.dir.join("spool");
    cfg.gitlab.clone_url = format!(
        "file://{}/{{path}}.git",
        fs::canonicalize(a.dir.join("repos")).unwrap().display()
    );
    cfg.secrets.webhook_token = Some(Secret::new(TOKEN));
    cfg.web.public_url = "http://bench.invalid".into();
    cfg.secrets.web_secret = Some(Secret::new(WEB_SECRET));
    cfg.web.renders = a.renders;

    fs::create_dir_all(&cfg.spool.dir).unwrap();
    let fill = Instant::now();
    {
        let gb = Gradebook::open(&labgrader::gradebook::path_in(&cfg.spool.dir)).unwrap();
        let students = (a.jobs / 20).max(1);
        for i in 0..a.jobs {
            gb.record(&job(i, i % students)).unwrap();
        }
    }
    let fill_secs = fill.elapsed().as_secs_f64();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(nice_this_thread)
        .enable_all()
        .build()
        .unwrap();
    let ch = clients.handle().clone();
    let (alone, pages, both_intake, both_pages) = rt.block_on(async {
        let spool = Arc::new(labgrader::spool::Spool::open(&cfg.spool.dir).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(labgrader::hook::serve(
            Arc::new(cfg.clone()),
            spool,
            listener,
            stop.clone(),
        ));
        // Warm up: the test repository cache, and the gradebook pool.
        intake_run(addr, 1, 10_000_000, 1).await;
        let warm = Arc::new(AtomicBool::new(false));
        let w = start_pages(&ch, addr, a.connections, a.jobs, &warm);
        tokio::time::sleep(Duration::from_millis(500)).await;
        warm.store(true, Ordering::Relaxed);
        collect(w, Instant::now()).await;

        let alone = intake_run(addr, a.connections, 0, a.events).await;

        let halt = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let p = start_pages(&ch, addr, a.connections, a.jobs, &halt);
        tokio::time::sleep(Duration::from_secs_f64(a.secs)).await;
        halt.store(true, Ordering::Relaxed);
        let pages = collect(p, start).await;

        let halt = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let p = start_pages(&ch, addr, a.connections, a.jobs, &halt);
        let both_intake = intake_run(addr, a.connections, a.events, a.events).await;
        halt.store(true, Ordering::Relaxed);
        let both_pages = collect(p, start).await;
        // Intake alone again: the baseline is the mean of before and after,
        // so drift on a shared machine hits both sides.
        let after = intake_run(addr, a.connections, 2 * a.events, a.events).await;
        let alone = Figures {
            n: alone.n + after.n,
            secs: alone.secs + after.secs,
            lat: [alone.lat, after.lat].concat(),
        };

        stop.cancel();
        server.await.unwrap().unwrap();
        (alone, pages, both_intake, both_pages)
    });
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let profile = std::env::var("BENCH_PROFILE").unwrap_or_else(|_| "release".into());
    println!(
        "web benchmark: {} jobs in the gradebook (filled in {fill_secs:.1} s), {} connections, \
         {} events per intake run, renders {} (0 = one per CPU), page clients at nice 10, {cpus} CPUs, profile {profile}, \
         load average {}, dir {}",
        a.jobs,
        a.connections,
        a.events,
        a.renders,
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim(),
        a.dir.display()
    );
    println!("{}", alone.line("intake alone (before + after)", 34));
    println!("{}", pages.line("result pages alone", 34));
    println!("{}", both_intake.line("intake while pages load", 34));
    println!("{}", both_pages.line("result pages while intake runs", 34));
    println!(
        "ratio intake with pages / intake alone: {:.2}x (goal >= 0.80x)",
        both_intake.rate() / alone.rate()
    );
    println!(
        "result page p99: {:.2} ms alone, {:.2} ms with intake (goal < 20 ms)",
        pages.pct(0.99),
        both_pages.pct(0.99)
    );
    let _ = fs::remove_dir_all(&a.dir);
}
