//! Course policy through the real grader daemon on real git repositories:
//! quota refusals land in failed/ and are never retried, manifests decide
//! who is credited, lateness is judged on receipt time, hidden keys stay
//! out of the student's view but reach the staff export.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::world::{Fixture, simple_test_all};
use labgrader::deliver::hidden::student_view;
use labgrader::gradebook::{Filter, Gradebook, Select};
use labgrader::policy::export::{ExportPolicy, rows_from_results, select_rows, write_csv};
use labgrader::result::Status;
use labgrader::spool::State;

const WAIT: Duration = Duration::from_secs(60);
/// Email on, to a port where nothing listens: records stay in outbox/
/// (or dead/) where the tests read them.
const EMAIL: &str = "\n[email]\nurl = \"smtp://127.0.0.1:9\"\n";

/// The queued email record of `job` (outbox/ or dead/).
fn email_record(f: &Fixture, job: &str) -> serde_json::Value {
    for dir in ["outbox", "dead"] {
        let p = f.spool_dir.join(dir).join(format!("{job}.email.json"));
        if let Ok(b) = std::fs::read(&p) {
            return serde_json::from_slice(&b).unwrap();
        }
    }
    panic!("no email queued for {job}: {:?}", f.listing());
}

async fn wait_failed(f: &Fixture, job: &str) -> String {
    let p = f.spool_dir.join("failed").join(job).join("reason");
    let start = std::time::Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(&p) {
            return s;
        }
        assert!(
            start.elapsed() < WAIT,
            "job {job} not in failed/: {:?}",
            f.listing()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_two_per_hour_third_submission_fails_as_quota_and_is_never_retried() {
    let f = Fixture::new();
    f.tests_repo("lab1", &simple_test_all("50"));
    let sha = f.push("course/alice/lab1", |w| {
        std::fs::write(w.join("a.txt"), "1").unwrap()
    });
    let cfg = f.config(&format!(
        "workers = 1\n[assignments.lab1]\nquota = \"2/1h\"\n{EMAIL}"
    ));
    let t0 = Utc::now();
    let mut evs = Vec::new();
    for i in 0..3 {
        let mut ev = f.event("course/alice/lab1", &sha);
        ev.received_at = t0 + chrono::Duration::seconds(i);
        f.enqueue(&ev);
        evs.push(ev);
    }
    let d = f.start(cfg);
    let mut graded = 0;
    let mut refused = Vec::new();
    let mut refused_jobs = Vec::new();
    for ev in &evs {
        // Each ends either in done/ (graded) or in failed/ (quota).
        let start = std::time::Instant::now();
        loop {
            if f.done_dir(&ev.job_id).join("result.json").exists() {
                let r = f.wait_done(&ev.job_id, WAIT).await;
                assert_eq!(r.status, Status::Graded);
                assert_eq!(r.extra["quota"], "2/1h");
                graded += 1;
                break;
            }
            if let Ok(reason) =
                std::fs::read_to_string(f.spool_dir.join("failed").join(&ev.job_id).join("reason"))
            {
                refused.push(reason);
                refused_jobs.push(ev.job_id.clone());
                break;
            }
            assert!(start.elapsed() < WAIT, "{:?}", f.listing());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Wait a rescan or two: nothing comes back from failed/.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    d.stop().await;
    assert_eq!(graded, 2);
    assert_eq!(refused.len(), 1);
    let next = (t0 + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert!(
        refused[0].starts_with("quota: quota of 2 submissions per 1h reached for alice"),
        "{}",
        refused[0]
    );
    assert!(refused[0].contains(&next), "{} / {next}", refused[0]);
    let s = f.spool();
    assert!(s.list(State::Incoming).unwrap().is_empty());
    assert!(s.list(State::Active).unwrap().is_empty());
    // The pusher is emailed when the next slot opens.
    let mail = email_record(&f, &refused_jobs[0]);
    let text = mail["payload"]["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("the next submission can be graded from {next}")),
        "{text}"
    );
    assert!(
        mail["payload"]["subject"]
            .as_str()
            .unwrap()
            .contains("not graded: quota"),
        "{mail}"
    );
    // Refusals are not grades.
    let gb = Gradebook::open(&f.spool_dir.join("gradebook.sqlite")).unwrap();
    assert_eq!(gb.select(Select::All, &Filter::default()).unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_submissions_with_quota_five_grade_exactly_five() {
    let f = Fixture::new();
    f.tests_repo("lab1", &simple_test_all("1"));
    let sha = f.push("course/alice/lab1", |_| {});
    // Twenty events of twenty projects (so the scheduler runs them side by
    // side), one author each time: alice.
    let mut jobs = Vec::new();
    for i in 0..20 {
        let path = format!("course/team{i}/lab1");
        let s = f.push(&path, |w| {
            std::fs::write(w.join("n"), i.to_string()).unwrap()
        });
        let mut ev = f.event(&path, &s);
        ev.received_at = Utc::now();
        f.enqueue(&ev);
        jobs.push(ev.job_id);
    }
    let _ = sha;
    let d = f.start(f.config("workers = 4\n[assignments.lab1]\nquota = \"5/24h\"\n"));
    let (mut done, mut failed) = (0, 0);
    for job in &jobs {
        let start = std::time::Instant::now();
        loop {
            if f.done_dir(job).join("result.json").exists() {
                done += 1;
                break;
            }
            if f.spool_dir.join("failed").join(job).join("reason").exists() {
                failed += 1;
                break;
            }
            assert!(start.elapsed() < WAIT * 2, "{:?}", f.listing());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    d.stop().await;
    assert_eq!((done, failed), (5, 15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_authors_and_malformed_manifest_through_the_grader() {
    let f = Fixture::new();
    f.tests_repo("lab1", &simple_test_all("75"));
    let roster = f.tmp.path().join("roster.csv");
    std::fs::write(
        &roster,
        "username,email,group\nalice,alice@uni.example,t1\nbob,bob@uni.example,t1\n",
    )
    .unwrap();
    let cfg = f.config(&format!(
        "[assignments.lab1]\nroster = \"{}\"\n{EMAIL}",
        roster.display()
    ));
    let good = f.push("course/alice/lab1", |w| {
        std::fs::write(
            w.join("labgrader.json"),
            r#"{"authors": ["alice", "bob", "ghost"], "description": "team A"}"#,
        )
        .unwrap()
    });
    let ev1 = f.event("course/alice/lab1", &good);
    f.enqueue(&ev1);
    let bad = f.push("course/bob/lab1", |w| {
        std::fs::write(w.join("labgrader.json"), "{\n  \"authors\": [\"bob\"\n}\n").unwrap()
    });
    let mut ev2 = f.event("course/bob/lab1", &bad);
    ev2.pusher.username = Some("bob".into());
    f.enqueue(&ev2);
    let d = f.start(cfg);
    let r1 = f.wait_done(&ev1.job_id, WAIT).await;
    let r2 = f.wait_done(&ev2.job_id, WAIT).await;
    d.stop().await;
    assert_eq!(r1.status, Status::Graded);
    assert_eq!(r1.extra["unknown_authors"], serde_json::json!(["ghost"]));
    assert_eq!(r1.extra["manifest"]["description"], "team A");
    // Every verified author gets the email: bob a message of his own
    // (alice pushed; same roster group).
    let mail = email_record(&f, &ev1.job_id);
    assert_eq!(
        mail["payload"]["co_authors"],
        serde_json::json!(["bob@uni.example"])
    );
    // The malformed manifest's position is emailed to the pusher.
    let mail = email_record(&f, &ev2.job_id);
    assert!(
        mail["payload"]["subject"]
            .as_str()
            .unwrap()
            .contains("labgrader.json line 3, column 1"),
        "{mail}"
    );
    assert_eq!(r2.status, Status::InvalidManifest);
    assert_eq!(
        r2.reason.as_deref(),
        Some("labgrader.json line 3, column 1: expected `,` or `]`")
    );
    // Both known authors get the grade in the export; the unknown one does not.
    let gb = Gradebook::open(&f.spool_dir.join("gradebook.sqlite")).unwrap();
    let results = gb.select(Select::All, &Filter::default()).unwrap();
    let rows = select_rows(&rows_from_results(&results), ExportPolicy::Best);
    let who: Vec<(&str, Option<f64>)> = rows
        .iter()
        .map(|r| (r.username.as_str(), r.grade))
        .collect();
    assert_eq!(who, [("alice", Some(75.0)), ("bob", Some(75.0))]);
    assert_eq!(rows[1].email.as_deref(), Some("bob@uni.example"));
    // The same through the command line.
    let conf = f.write_config(&format!(
        "[assignments.lab1]\nroster = \"{}\"\n",
        roster.display()
    ));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_labgrader"))
        .arg("--config")
        .arg(&conf)
        .args([
            "gradebook",
            "export",
            "--policy",
            "best",
            "--assignment",
            "lab1",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "username,assignment,email,grade,job,commit,submitted_at,late"
    );
    assert!(
        lines[1].starts_with(&format!("alice,lab1,alice@uni.example,75,{},", ev1.job_id)),
        "{text}"
    );
    assert!(
        lines[2].starts_with("bob,lab1,bob@uni.example,75,"),
        "{text}"
    );
    assert_eq!(lines.len(), 3, "{text}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_labgrader"))
        .arg("--config")
        .arg(&conf)
        .args(["gradebook", "export", "--policy", "first"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("best, latest or latest-on-time"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_flag_from_receipt_time_and_hidden_keys_only_for_staff() {
    let f = Fixture::new();
    f.tests_repo(
        "lab1",
        "#!/bin/sh\nprintf '<summary>\\ngrade_total = 90\\nshown = 1\\n[hidden]\\nsecret = 7\\n</summary>\\n'\n",
    );
    // The commit is dated long before the deadline; the hook got it after.
    let sha = f.push("course/alice/lab1", |w| {
        std::fs::write(w.join("x"), "x").unwrap()
    });
    let cfg = f.config(&format!(
        "[assignments.lab1]\ndeadline = \"2020-01-01T00:00:00+00:00\"\ngrace = \"5m\"\nlate = \"flag\"\n{EMAIL}\
         [callback]\nurl = \"http://127.0.0.1:9/cb\"\n",
    ));
    let ev = f.event("course/alice/lab1", &sha);
    f.enqueue(&ev);
    let d = f.start(cfg);
    let r = f.wait_done(&ev.job_id, WAIT).await;
    d.stop().await;
    assert_eq!(r.status, Status::Graded);
    assert_eq!(r.extra["late"], true);
    assert_eq!(r.hidden["secret"], "7");
    let stdout = std::fs::read(f.done_dir(&ev.job_id).join("stdout")).unwrap();
    let mut full = r.clone();
    full.stdout.bytes = stdout;
    let student = student_view(&full);
    let text = String::from_utf8(student.stdout.display_bytes()).unwrap();
    assert!(
        text.contains("shown = 1") && !text.contains("secret"),
        "{text}"
    );
    assert!(!serde_json::to_string(&student).unwrap().contains("secret"));
    // The email actually queued has the public keys, not the hidden ones.
    let mail = email_record(&f, &ev.job_id);
    let body = mail["payload"]["text"].as_str().unwrap();
    assert!(body.contains("shown = 1"), "{body}");
    assert!(!body.contains("secret"), "{body}");
    // So has the default callback body (no include_hidden).
    let mut cb = None;
    for dir in ["outbox", "dead"] {
        let p = f
            .spool_dir
            .join(dir)
            .join(format!("{}.callback.json", ev.job_id));
        if let Ok(b) = std::fs::read(&p) {
            cb = Some(serde_json::from_slice::<serde_json::Value>(&b).unwrap());
        }
    }
    let cb = cb.expect("callback queued");
    let cb_body = cb["payload"]["body"].as_str().unwrap();
    assert!(cb_body.contains("shown = 1"), "{cb_body}");
    assert!(!cb_body.contains("secret"), "{cb_body}");
    // The staff export has the hidden column and the late flag.
    let gb = Gradebook::open(&f.spool_dir.join("gradebook.sqlite")).unwrap();
    let rows = rows_from_results(&gb.select(Select::All, &Filter::default()).unwrap());
    let mut csv = Vec::new();
    write_csv(&mut csv, &select_rows(&rows, ExportPolicy::Latest), true).unwrap();
    let csv = String::from_utf8(csv).unwrap();
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .ends_with("summary.shown,hidden.secret"),
        "{csv}"
    );
    assert!(csv.contains(",true,1,7\r\n"), "{csv}");
    // latest-on-time leaves alice out: her only submission is late.
    assert!(select_rows(&rows, ExportPolicy::LatestOnTime).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_reject_goes_to_failed_with_reason_late() {
    let f = Fixture::new();
    f.tests_repo("lab1", &simple_test_all("90"));
    let sha = f.push("course/alice/lab1", |_| {});
    let cfg = f.config(
        "[assignments.lab1]\ndeadline = \"2020-01-01T00:00:00+00:00\"\nlate = \"reject\"\n",
    );
    let ev = f.event("course/alice/lab1", &sha);
    f.enqueue(&ev);
    let d = f.start(cfg);
    let reason = wait_failed(&f, &ev.job_id).await;
    d.stop().await;
    assert!(reason.starts_with("late: received at "), "{reason}");
    assert!(!f.done_dir(&ev.job_id).exists());
}
