//! Intake benchmark (`scripts/bench intake`): durable events/s and latency
//! of the real hook server at 32 concurrent connections, beside a baseline
//! measured in the same run on the same disk: a plain loop of write +
//! fsync + rename + directory fsync of files of the event files' size.
//!
//! The baseline runs before and after the intake run and the mean is used,
//! so drift on a shared machine hits both sides. Figures are printed as
//! ratios; nothing is asserted.
//!
//! Usage: intake_bench [--dir DIR] [--events N] [--connections C]

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use labgrader::config::{Config, Secret};
use labgrader::spool::{Spool, State};
use tokio_util::sync::CancellationToken;

#[path = "common/mod.rs"]
mod common;
use common::{Figures, TOKEN, post_pushes};

struct Args {
    dir: PathBuf,
    events: usize,
    connections: usize,
}

fn args() -> Args {
    let mut a = Args {
        dir: PathBuf::from("target/bench-intake"),
        events: 4000,
        connections: 32,
    };
    // `cargo bench` appends `--bench` to a harness-less bench's arguments.
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => a.dir = PathBuf::from(val()),
            "--events" => a.events = val().parse().expect("--events N"),
            "--connections" => a.connections = val().parse().expect("--connections C"),
            "-h" | "--help" => {
                println!("intake_bench [--dir DIR] [--events N] [--connections C]");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// Rate and latency percentiles of one run.
fn fsync_dir(d: &Path) {
    File::open(d).unwrap().sync_all().unwrap();
}

/// The baseline: write + fsync + rename + dir fsync, one file at a time.
fn baseline(dir: &Path, n: usize, size: usize) -> Figures {
    let tmp = dir.join("tmp");
    let dest = dir.join("dest");
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(&tmp).unwrap();
    fs::create_dir_all(&dest).unwrap();
    let data = vec![b'x'; size];
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let name = format!("{i:08}.json");
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp.join(&name))
            .unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        fs::rename(tmp.join(&name), dest.join(&name)).unwrap();
        fsync_dir(&dest);
        lat.push(t.elapsed());
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = fs::remove_dir_all(dir);
    Figures { n, secs, lat }
}

fn body(n: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "object_kind": "push", "event_name": "push",
        "before": "95790bf891e76fee5e1747ab589903a6a1f80f22",
        "after": format!("{:040x}", n + 1), "checkout_sha": format!("{:040x}", n + 1),
        "ref": format!("refs/heads/b{n}"),
        "user_id": 4, "user_name": "Ada Student", "user_username": "ada", "user_email": "",
        "project_id": 15,
        "project": {"id": 15, "name": "lab1", "path_with_namespace": "alice/lab1",
                    "git_http_url": "http://gitlab.example.edu/alice/lab1.git"},
        "commits": [{"id": format!("{:040x}", n + 1), "message": "work", "title": "work",
                     "timestamp": "2026-01-01T10:00:00+01:00",
                     "author": {"name": "Ada", "email": "ada@example.edu"},
                     "added": ["a.c"], "modified": [], "removed": []}],
        "total_commits_count": 1
    }))
    .unwrap()
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

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // A short intake run first, only to learn the event file size.
    let (intake, size) = rt.block_on(async {
        let spool = Arc::new(Spool::open(&cfg.spool.dir).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(labgrader::hook::serve(
            Arc::new(cfg.clone()),
            spool.clone(),
            listener,
            stop.clone(),
        ));
        // Warm up: one request fills the test repository cache.
        let warm = Arc::new(AtomicUsize::new(a.events + 1_000_000));
        post_pushes(addr, warm, a.events + 1_000_001, body).await;
        let files = spool.list(State::Incoming).unwrap();
        let size = fs::metadata(spool.path(State::Incoming, &files[0]))
            .unwrap()
            .len() as usize;
        let next = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let tasks: Vec<_> = (0..a.connections)
            .map(|_| tokio::spawn(post_pushes(addr, next.clone(), a.events, body)))
            .collect();
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        let secs = start.elapsed().as_secs_f64();
        stop.cancel();
        server.await.unwrap().unwrap();
        let stored = spool.count(State::Incoming);
        assert_eq!(stored, a.events + 1, "every 202 is an event file");
        (
            Figures {
                n: a.events,
                secs,
                lat,
            },
            size,
        )
    });
    let b1 = baseline(&a.dir.join("baseline"), a.events, size);
    let b2 = baseline(&a.dir.join("baseline"), a.events, size);
    let base = Figures {
        n: b1.n + b2.n,
        secs: b1.secs + b2.secs,
        lat: [b1.lat, b2.lat].concat(),
    };
    let commits = labgrader::metrics::counter_value("labgrader_hook_commits_total", &[]);
    println!(
        "intake benchmark: {} events of {size} bytes, {} connections, dir {}",
        a.events,
        a.connections,
        a.dir.display()
    );
    println!(
        "{}",
        base.line("baseline (write+fsync+rename+dirfsync)", 28)
    );
    println!(
        "{}",
        intake.line(&format!("intake ({} conns)", a.connections), 28)
    );
    println!(
        "ratio intake/baseline: {:.2}x   (goal >= 0.80x)   intake p99 {:.2} ms (goal < 10 ms)",
        intake.rate() / base.rate(),
        intake.pct(0.99)
    );
    println!(
        "group commit: {commits} commits for {} events ({:.1} events per commit)",
        a.events + 1,
        (a.events + 1) as f64 / commits.max(1) as f64
    );
    let _ = fs::remove_dir_all(&a.dir);
}
