//! Grade exports through the `labgrader` binary on a gradebook the real
//! grader wrote: without `--assignment`, two labs of one student are two
//! rows (an `assignment` column, never merged); a push whose commit was
//! never found is recorded but is not the student's "latest" row; and
//! the deprecated `--latest` is `--policy latest`, with a note saying so.

mod common;

use std::process::Command;
use std::time::Duration;

use common::daemon::BIN;
use common::world::{Fixture, simple_test_all};
use labgrader::result::Status;

const WAIT: Duration = Duration::from_secs(90);

fn export(f: &Fixture, cfg: &std::path::Path, args: &[&str]) -> (Vec<serde_json::Value>, String) {
    let out = Command::new(BIN)
        .args(["gradebook", "export", "--format", "json"])
        .args(args)
        .arg("--config")
        .arg(cfg)
        .env_remove("LABGRADER_CONFIG")
        .current_dir(f.tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (serde_json::from_slice(&out.stdout).unwrap(), stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_labs_are_two_rows_and_a_missing_commit_is_never_the_latest() {
    let f = Fixture::new();
    f.tests_repo("lab1", &simple_test_all("60"));
    f.tests_repo("lab2", &simple_test_all("90"));
    let sha1 = f.push("course/alice/lab1", |w| {
        std::fs::write(w.join("a"), "1").unwrap()
    });
    let sha2 = f.push("course/alice/lab2", |w| {
        std::fs::write(w.join("b"), "2").unwrap()
    });
    let graded1 = f.event("course/alice/lab1", &sha1);
    let graded2 = f.event("course/alice/lab2", &sha2);
    // Later than the graded lab1 job: a push of a commit that never existed.
    let ghost = f.event("course/alice/lab1", &"cd".repeat(20));
    for ev in [&graded1, &graded2, &ghost] {
        f.enqueue(ev);
    }
    let cfg_path = f.write_config("");
    let d = f.start(f.config(""));
    for ev in [&graded1, &graded2] {
        let r = f.wait_done(&ev.job_id, WAIT).await;
        assert_eq!(r.status, Status::Graded, "{r:?}");
    }
    let r = f.wait_done(&ghost.job_id, WAIT).await;
    d.stop().await;
    assert_eq!(r.status, Status::Error, "{r:?}");
    assert_eq!(
        r.extra.get("commit_missing"),
        Some(&serde_json::json!(true))
    );

    // Every job is in the plain export, the ghost included.
    let (all, _) = export(&f, &cfg_path, &[]);
    assert_eq!(all.len(), 3, "{all:#?}");

    for policy in ["latest", "best", "latest-on-time"] {
        let (rows, _) = export(&f, &cfg_path, &["--policy", policy]);
        let got: Vec<(&str, &str, f64)> = rows
            .iter()
            .map(|r| {
                (
                    r["assignment"].as_str().unwrap(),
                    r["job"].as_str().unwrap(),
                    r["grade"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("lab1", graded1.job_id.as_str(), 60.0),
                ("lab2", graded2.job_id.as_str(), 90.0)
            ],
            "{policy}: {rows:#?}"
        );
    }
    let (policy, _) = export(&f, &cfg_path, &["--policy", "latest"]);
    let (alias, note) = export(&f, &cfg_path, &["--latest"]);
    assert_eq!(alias, policy);
    assert_eq!(
        note.trim(),
        "note: --latest is deprecated and means --policy latest (one row per student and assignment)"
    );
}
