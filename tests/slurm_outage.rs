//! The slurm runner at deadline scale on the real dev cluster, both ways
//! (one Slurm job per job, and pilots): slurmctld killed and restarted
//! while 50 jobs are in flight, a node's sandbox SIGKILLed, and
//! `[slurm] max_in_flight`.
//!
//! These tests stop slurmctld (SIGTERM, then start it again from the dev
//! cluster's config and wait until it answers, a few seconds): run them
//! alone, not while other Slurm tests run
//! (`cargo test --test slurm_outage -- --test-threads=1`). SIGTERM, not
//! SIGKILL: a SIGKILLed slurmctld loses the jobs it had not saved, hands
//! their ids out again, and slurmd then drains the node ("Duplicate
//! jobid") until an admin resumes it; that is Slurm's recovery, not ours
//! (the runner treats a reused id as a forgotten job, retried).

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::hostile::stdout;
use common::services::slurm_config as cluster;
use labgrader::config::{Config, Seconds};
use labgrader::grader::GraderFault;
use labgrader::sandbox::slurm::SlurmRunner;
use labgrader::sandbox::{RunOutcome, RunSpec, Runner, SandboxError, Termination};
use tokio_util::sync::CancellationToken;

fn config(pilots: usize) -> Option<Config> {
    cluster().map(|mut cfg| {
        cfg.slurm.pilots = pilots;
        cfg.slurm.pilot_slots = 16;
        cfg.slurm.pilot_cpus = 1;
        cfg.slurm.pilot_memory = labgrader::config::ByteSize(16 << 30);
        cfg.slurm.pilot_idle = Seconds(Duration::from_secs(20));
        cfg.slurm.max_in_flight = 64;
        cfg
    })
}

fn spec(job_id: &str, ws: &Path) -> RunSpec {
    let mut limits = common::hostile::limits();
    limits.timeout = Duration::from_secs(60);
    limits.memory = 64 << 20;
    common::hostile::spec(job_id, ws, limits)
}

/// What the grader does with a job: run it, and on a grader fault try
/// again (its `[grader] infra_retries`), at most `tries` times.
async fn grade(
    r: &SlurmRunner,
    spec: &RunSpec,
    tries: u32,
) -> (Result<RunOutcome, SandboxError>, u32) {
    let mut n = 0;
    loop {
        n += 1;
        match r.run(spec, &CancellationToken::new()).await {
            Err(e) if n < tries => {
                eprintln!("{}: attempt {n}: {e}", spec.job_id);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            other => return (other, n),
        }
    }
}

fn slurm_conf() -> String {
    std::env::var("SLURM_CONF").expect("SLURM_CONF (source /work/wt/services.env)")
}

fn slurmctld_pid() -> Option<i32> {
    let conf = slurm_conf();
    let dir = Path::new(&conf).parent()?.parent()?.to_path_buf();
    std::fs::read_to_string(dir.join("run/slurmctld.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The tests of this binary take the one dev cluster in turn: a
/// slurmctld restart (3 s down, its pid file removed and rewritten) must
/// not land in another test's run.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Stop slurmctld, leave it down for `down`, start it again and wait
/// until it answers and has written its pid file; leave the node usable.
async fn kill_and_restart_slurmctld(down: Duration) {
    let pid = slurmctld_pid().expect("slurmctld pid file");
    eprintln!("stopping slurmctld {pid}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM).unwrap();
    let gone = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            gone.elapsed() < Duration::from_secs(30),
            "slurmctld ignores SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(down).await;
    let conf = slurm_conf();
    let dir = Path::new(&conf).parent().unwrap().parent().unwrap();
    let _ = std::fs::remove_file(dir.join("run/slurmctld.pid"));
    let st = Command::new("slurmctld")
        .args(["-f", &conf])
        .status()
        .unwrap();
    assert!(st.success(), "slurmctld did not start again");
    let start = Instant::now();
    loop {
        let ping = Command::new("scontrol").arg("ping").output().unwrap();
        if String::from_utf8_lossy(&ping.stdout).contains("UP") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "slurmctld stays down"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    while slurmctld_pid().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "slurmctld answers but wrote no pid file"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Never leave the shared dev cluster drained.
    let node = Command::new("scontrol")
        .args(["show", "node"])
        .output()
        .unwrap();
    if String::from_utf8_lossy(&node.stdout).contains("DRAIN") {
        let _ = Command::new("scontrol")
            .args(["update", "nodename=ALL", "state=resume"])
            .status();
    }
    eprintln!("slurmctld is back");
}

async fn fifty_jobs_through_a_slurmctld_restart(pilots: usize) {
    let Some(cfg) = config(pilots) else { return };
    let r = Arc::new(SlurmRunner::new(&cfg).unwrap());
    let tag = common::hostile::unique(if pilots > 0 { "outage-p" } else { "outage-j" });
    let ws =
        common::hostile::workspace("lg-outage-", "sleep 2\necho \"graded $LABGRADER_JOB_ID\"\n");
    let mut set = tokio::task::JoinSet::new();
    for i in 0..50 {
        let (r, sp) = (r.clone(), spec(&format!("{tag}-{i}"), ws.path()));
        set.spawn(async move {
            let (res, tries) = grade(&r, &sp, 10).await;
            (sp.job_id.clone(), res, tries)
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    kill_and_restart_slurmctld(Duration::from_secs(3)).await;
    let mut retried = 0;
    let mut graded = std::collections::BTreeSet::new();
    while let Some(done) = set.join_next().await {
        let (id, res, tries) = done.unwrap();
        let o = res.unwrap_or_else(|e| panic!("{id}: not graded after {tries} attempts: {e}"));
        assert_eq!(
            o.termination,
            Termination::Exited { code: 0 },
            "{id}: {o:?}"
        );
        let out = stdout(&o);
        assert_eq!(out.matches("graded ").count(), 1, "{id}: {out}");
        assert!(out.contains(&format!("graded {id}")), "{id}: {out}");
        assert!(graded.insert(id), "graded twice");
        retried += tries - 1;
    }
    assert_eq!(graded.len(), 50);
    eprintln!("50 jobs graded once each; {retried} grader-fault retries");
}

#[tokio::test]
async fn slurmctld_restart_with_50_jobs_in_flight_grades_each_once() {
    let _cluster = CLUSTER.lock().await;
    fifty_jobs_through_a_slurmctld_restart(0).await;
}

#[tokio::test]
async fn slurmctld_restart_with_50_jobs_in_flight_through_pilots_grades_each_once() {
    let _cluster = CLUSTER.lock().await;
    fifty_jobs_through_a_slurmctld_restart(2).await;
}

fn pids_of(dir_part: &str) -> Vec<i32> {
    let out = Command::new("pgrep")
        .args(["-f", &format!("sandbox --job-dir .*{dir_part}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

async fn sigkilled_node_job_is_a_grader_fault(pilots: usize) {
    let Some(cfg) = config(pilots) else { return };
    let r = Arc::new(SlurmRunner::new(&cfg).unwrap());
    let id = common::hostile::unique("sigkill");
    let ws = common::hostile::workspace("lg-sigkill-", "sleep 30\necho never\n");
    let sp = spec(&id, ws.path());
    let task = {
        let r = r.clone();
        tokio::spawn(async move { grade(&r, &sp, 2).await })
    };
    // Kill the node's sandbox of each attempt as soon as it runs.
    let mut killed = 0;
    while !task.is_finished() {
        for pid in pids_of(&id) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
            killed += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (res, tries) = task.await.unwrap();
    assert!(killed > 0, "the sandbox never ran");
    let e = res.expect_err("a SIGKILLed sandbox is no verdict");
    assert_eq!(tries, 2, "retried as a grader fault");
    assert!(matches!(e, SandboxError::Setup { .. }), "{e}");
    // Every SandboxError is the grader's: infra_error after the retries.
    assert!(matches!(GraderFault::from(e), GraderFault::Sandbox(_)));
}

#[tokio::test]
async fn sigkilled_node_job_is_a_grader_fault_never_the_students() {
    let _cluster = CLUSTER.lock().await;
    sigkilled_node_job_is_a_grader_fault(0).await;
}

#[tokio::test]
async fn sigkilled_pilot_step_is_a_grader_fault_never_the_students() {
    let _cluster = CLUSTER.lock().await;
    sigkilled_node_job_is_a_grader_fault(1).await;
}

async fn max_in_flight_is_honoured(pilots: usize) {
    let Some(mut cfg) = config(pilots) else {
        return;
    };
    cfg.slurm.max_in_flight = 3;
    let r = Arc::new(SlurmRunner::new(&cfg).unwrap());
    let tag = common::hostile::unique(if pilots > 0 { "mif-p" } else { "mif-j" });
    let ws = common::hostile::workspace("lg-mif-", "sleep 1\necho ok\n");
    let mut set = tokio::task::JoinSet::new();
    for i in 0..10 {
        let (r, sp) = (r.clone(), spec(&format!("{tag}-{i}"), ws.path()));
        set.spawn(async move { r.run(&sp, &CancellationToken::new()).await });
    }
    // Count this test's job directories (each made just before its
    // submission or ticket) while the jobs run.
    let shared = cfg.slurm.shared_dir.clone();
    let mut most = 0;
    while !set.is_empty() {
        let n = std::fs::read_dir(&shared)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&tag))
            .count();
        most = most.max(n);
        assert!(n <= 3, "{n} jobs in Slurm at once, over max_in_flight 3");
        while let Some(done) = set.try_join_next() {
            assert!(done.unwrap().is_ok());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        most >= 2,
        "never more than {most} at once: the bound was not exercised"
    );
}

#[tokio::test]
async fn max_in_flight_is_honoured_one_job_each() {
    let _cluster = CLUSTER.lock().await;
    max_in_flight_is_honoured(0).await;
}

#[tokio::test]
async fn max_in_flight_is_honoured_through_pilots() {
    let _cluster = CLUSTER.lock().await;
    max_in_flight_is_honoured(1).await;
}

/// The process of pilot `id` (`labgrader sandbox --serve` with
/// `SLURM_JOB_ID=id`).
fn pilot_pid(id: u64) -> Option<i32> {
    let out = Command::new("pgrep")
        .args(["-f", "sandbox --serve"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| {
                    env.split(|b| *b == 0)
                        .any(|kv| kv == format!("SLURM_JOB_ID={id}").as_bytes())
                })
                .unwrap_or(false)
        })
}

#[tokio::test]
async fn a_pilot_killed_under_a_job_is_a_grader_fault_and_the_retry_runs_it() {
    let _cluster = CLUSTER.lock().await;
    let Some(cfg) = config(1) else { return };
    let r = Arc::new(SlurmRunner::new(&cfg).unwrap());
    let id = common::hostile::unique("pilot-killed");
    let ws =
        common::hostile::workspace("lg-pkill-", "sleep 3\necho \"graded $LABGRADER_JOB_ID\"\n");
    let sp = spec(&id, ws.path());
    let first = {
        let (r, sp) = (r.clone(), sp.clone());
        tokio::spawn(async move { r.run(&sp, &CancellationToken::new()).await })
    };
    let q = labgrader::sandbox::slurm::tickets::Tickets::new(&cfg.slurm.shared_dir);
    let start = Instant::now();
    let pilot = loop {
        if let labgrader::sandbox::slurm::tickets::TicketPlace::Claimed(p) = q.place(&id) {
            break p;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "never claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The pilot dies at once (SIGKILL: it writes nothing, its claim stays).
    let pid = pilot_pid(pilot).expect("the pilot's process");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    let e = first
        .await
        .unwrap()
        .expect_err("a dead pilot is no verdict");
    assert!(matches!(e, SandboxError::Setup { .. }), "{e}");
    // Either the pilot saw its step killed, or the backstop saw it gone.
    assert!(e.to_string().contains(&format!("pilot {pilot}")), "{e}");
    // The grader's retry: a new pilot runs it, once.
    let (res, _) = grade(&r, &sp, 3).await;
    let o = res.unwrap();
    assert_eq!(stdout(&o).matches("graded ").count(), 1, "{o:?}");
}
