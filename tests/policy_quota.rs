//! The quota ledger under real concurrency: several processes (this test
//! binary re-run as children) and threads with their own SQLite
//! connections race for the last slots of one student's quota. Exactly
//! `count` must win, and the winners must be the rows in the ledger.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use labgrader::config::Quota;
use labgrader::policy::{QuotaDecision, QuotaLedger};

const CHILD_DB: &str = "LABGRADER_TEST_QUOTA_DB";
const CHILD_GO: &str = "LABGRADER_TEST_QUOTA_GO";
const CHILD_ID: &str = "LABGRADER_TEST_QUOTA_CHILD";
const CHILD_NOW: &str = "LABGRADER_TEST_QUOTA_NOW";
const THREADS_PER_CHILD: usize = 5;

/// Not a test of its own: the body of each child process. Without the
/// environment variables set by the parent it returns at once.
#[test]
fn quota_race_child_process() {
    let (Ok(db), Ok(go), Ok(id), Ok(now)) = (
        std::env::var(CHILD_DB),
        std::env::var(CHILD_GO),
        std::env::var(CHILD_ID),
        std::env::var(CHILD_NOW),
    ) else {
        return;
    };
    let now: DateTime<Utc> = now.parse().unwrap();
    let quota: Quota = "5/24h".parse().unwrap();
    let handles: Vec<_> = (0..THREADS_PER_CHILD)
        .map(|t| {
            let (db, go, id) = (db.clone(), go.clone(), id.clone());
            std::thread::spawn(move || {
                let ledger = QuotaLedger::open(Path::new(&db)).unwrap();
                // Every thread of every process starts together.
                let start = Instant::now();
                while !Path::new(&go).exists() {
                    assert!(start.elapsed() < Duration::from_secs(60), "no go signal");
                    std::thread::sleep(Duration::from_millis(1));
                }
                let job = format!("p{id}-t{t}");
                let d = ledger.try_take("lab1", "alice", &job, quota, now).unwrap();
                (job, d)
            })
        })
        .collect();
    for h in handles {
        let (job, d) = h.join().unwrap();
        match d {
            QuotaDecision::Taken => println!("QUOTA-RESULT {job} taken"),
            QuotaDecision::Over { .. } => println!("QUOTA-RESULT {job} over"),
            QuotaDecision::Exempt => panic!("quota configured: never exempt"),
        }
    }
}

#[test]
fn twenty_concurrent_takes_across_processes_take_exactly_five() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("quota.sqlite");
    let go = dir.path().join("go");
    let now = Utc::now();
    // Create the schema first, as the daemon would at start.
    QuotaLedger::open(&db).unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..4)
        .map(|i| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "quota_race_child_process",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_DB, &db)
                .env(CHILD_GO, &go)
                .env(CHILD_ID, i.to_string())
                .env(CHILD_NOW, now.to_rfc3339())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Let the children open the ledger and wait at the start line.
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&go, b"").unwrap();
    let mut taken = Vec::new();
    let mut over = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in stdout.lines() {
            // The harness may print "test NAME ... " on the same line.
            let Some(rest) = line.split("QUOTA-RESULT ").nth(1) else {
                continue;
            };
            match rest.split_once(' ') {
                Some((job, "taken")) => taken.push(job.to_string()),
                Some((_, "over")) => over += 1,
                _ => panic!("bad child line {line}"),
            }
        }
    }
    assert_eq!(taken.len() + over, 20, "every attempt answered");
    assert_eq!(taken.len(), 5, "winners: {taken:?}");
    let ledger = QuotaLedger::open(&db).unwrap();
    let quota: Quota = "5/24h".parse().unwrap();
    assert_eq!(ledger.used("lab1", "alice", quota, now).unwrap(), 5);
    // The winners hold the slots: releasing them frees exactly five.
    let freed: usize = taken.iter().map(|j| ledger.release(j).unwrap()).sum();
    assert_eq!(freed, 5);
    assert_eq!(ledger.used("lab1", "alice", quota, now).unwrap(), 0);
}

#[test]
fn quota_two_per_hour_third_quick_submission_is_over_until_the_first_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = QuotaLedger::in_spool(dir.path()).unwrap();
    let quota: Quota = "2/1h".parse().unwrap();
    let t0: DateTime<Utc> = "2026-11-22T03:00:00Z".parse().unwrap();
    let s = chrono::Duration::seconds;
    assert_eq!(
        ledger.try_take("lab1", "alice", "j1", quota, t0).unwrap(),
        QuotaDecision::Taken
    );
    assert_eq!(
        ledger
            .try_take("lab1", "alice", "j2", quota, t0 + s(5))
            .unwrap(),
        QuotaDecision::Taken
    );
    let third = ledger
        .try_take("lab1", "alice", "j3", quota, t0 + s(10))
        .unwrap();
    assert_eq!(
        third,
        QuotaDecision::Over {
            next_slot_at: t0 + s(3600),
            users: vec!["alice".into()],
        }
    );
    assert!(
        third
            .over_message(quota)
            .unwrap()
            .contains("from 2026-11-22T04:00:00Z")
    );
}
