//! Regrading a whole assignment through the real `labgrader serve`: real
//! bare repositories pushed over `file://`, events dropped into
//! `incoming/` as the hook writes them, the `labgrader regrade` and
//! `replay` binaries, the gradebook read back. Checks: every student's
//! latest job regraded at the fixed tests' grade with the old rows kept; a
//! live push started before the regrade lane; SIGKILL during a batch loses
//! and duplicates nothing; a gradebook row lost is restored from `done/`;
//! a commit force-pushed away and garbage-collected still replays.
//! No timed assertions: the order checks compare the daemon's own records.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::daemon::{self, BIN};
use common::host::free_port;
use common::repos::{file_url, git};
use common::wait::wait_blocking;
use common::world::Fixture;
use labgrader::gradebook::{Filter, Gradebook, Select};
use labgrader::result::JobResult;

const WAIT: Duration = Duration::from_secs(180);
const STUDENTS: usize = 12;

/// A test_all whose grade is `grade`, after `sleep` seconds.
fn test_all(grade: u32, sleep: &str) -> String {
    format!(
        "#!/bin/sh\nsleep {sleep}\nprintf '<summary>\\ngrade_total = {grade}\\n</summary>\\n'\n"
    )
}

struct World {
    f: Fixture,
    config: PathBuf,
    log: PathBuf,
    listen: String,
}

impl World {
    fn new(workers: u32) -> World {
        let f = Fixture::new();
        let dir = f.tmp.path().to_path_buf();
        let token = dir.join("webhook-token");
        std::fs::write(&token, "regrade-test-token").unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let text = format!(
            "[server]\nlisten = \"{listen}\"\nwebhook_token_file = \"{}\"\n{}",
            token.display(),
            f.config_text(&format!("workers = {workers}\n"))
        );
        let config = dir.join("labgrader.toml");
        std::fs::write(&config, text).unwrap();
        let log = dir.join("serve.log");
        World {
            f,
            config,
            log,
            listen,
        }
    }

    async fn serve(&self) -> Child {
        let mut child = daemon::binary("serve", &self.config, &self.log)
            .spawn()
            .expect("the labgrader binary starts");
        let base = format!("http://{}", self.listen);
        daemon::wait_healthy(&base, &mut child, WAIT, &self.log).await;
        child
    }

    fn project(i: usize) -> String {
        format!("course/s{i:02}/lab1")
    }

    /// Push a commit to `path` and queue its event; returns the job id.
    fn push(&self, path: &str, n: u32) -> String {
        let sha = self.f.push(path, |w| {
            std::fs::write(w.join("answer.txt"), n.to_string()).unwrap()
        });
        let ev = self.f.event(path, &sha);
        self.f.enqueue(&ev);
        ev.job_id
    }

    fn result(&self, job: &str) -> Option<JobResult> {
        let b = std::fs::read(self.f.done_dir(job).join("result.json")).ok()?;
        Some(serde_json::from_slice(&b).unwrap())
    }

    fn wait_done(&self, jobs: &[String]) {
        wait_blocking("jobs in done/", WAIT, || {
            jobs.iter()
                .all(|j| self.f.done_dir(j).join("result.json").exists())
        });
    }

    fn labgrader(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("LABGRADER_LOG", "warn")
            .output()
            .unwrap()
    }

    fn gradebook(&self) -> Gradebook {
        Gradebook::open(&labgrader::gradebook::path_in(&self.f.spool_dir)).unwrap()
    }

    fn rows(&self) -> Vec<JobResult> {
        let filter = Filter {
            project: None,
            assignment: Some("lab1".into()),
        };
        self.gradebook().select(Select::All, &filter).unwrap()
    }

    /// The one batch file, and its new job ids.
    fn batch(&self) -> (String, Vec<String>) {
        let dir = self.f.spool_dir.join("regrades");
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(files.len(), 1, "one batch file");
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(files[0].path()).unwrap()).unwrap();
        let ids = v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect();
        (v["batch"].as_str().unwrap().to_string(), ids)
    }

    /// 12 students, two pushes each, graded by the broken tests (grade 5);
    /// returns each project's latest job.
    fn graded_twice(&self) -> HashMap<String, String> {
        self.f.tests_repo("lab1", &test_all(5, "0"));
        let mut latest = HashMap::new();
        let mut all = Vec::new();
        for round in 0..2 {
            for i in 0..STUDENTS {
                let p = World::project(i);
                let job = self.push(&p, round);
                all.push(job.clone());
                latest.insert(p, job);
            }
        }
        self.wait_done(&all);
        latest
    }
}

fn stop(child: Child) {
    daemon::stop(child);
}

fn kill9(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

fn stdout(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regrade_latest_regrades_every_student_keeps_old_rows_and_lets_live_pushes_first() {
    let w = World::new(2);
    let child = w.serve().await;
    let latest = w.graded_twice();

    // The tests fixed; each run takes a moment so the batch is not over
    // before the live push arrives.
    let fixed = w.f.tests_repo("lab1", &test_all(10, "0.4"));
    let dry = w.labgrader(&[
        "regrade",
        "--assignment",
        "lab1",
        "--policy",
        "latest",
        "--dry-run",
    ]);
    assert!(dry.status.success(), "{}", stdout(&dry));
    for job in latest.values() {
        assert!(stdout(&dry).contains(job.as_str()), "{}", stdout(&dry));
    }
    assert!(
        !w.f.spool_dir.join("regrades").exists(),
        "a dry run queues nothing"
    );

    let out = w.labgrader(&[
        "regrade",
        "--assignment",
        "lab1",
        "--policy",
        "latest",
        "--detach",
    ]);
    assert!(out.status.success(), "{}", stdout(&out));
    // A live push just after the regrade starts.
    let live = w.push("course/late/lab1", 3);
    let (batch, ids) = w.batch();
    assert_eq!(ids.len(), STUDENTS);
    let mut all = ids.clone();
    all.push(live.clone());
    w.wait_done(&all);

    let q = w.labgrader(&["queue"]);
    assert!(
        stdout(&q).contains(&format!("regrade {batch} (lab1): 12/12 done, 0 failed")),
        "{}",
        stdout(&q)
    );

    // Every latest job regraded at the new grade, the old rows kept.
    let rows = w.rows();
    let by_id: HashMap<&str, &JobResult> = rows.iter().map(|r| (r.job_id.as_str(), r)).collect();
    assert_eq!(rows.len(), 2 * STUDENTS + STUDENTS + 1, "old rows kept");
    let mut regraded = HashSet::new();
    for id in &ids {
        let r = by_id[id.as_str()];
        assert_eq!(r.grade_total, Some(10.0), "{id}");
        assert_eq!(r.tests_sha.as_deref(), Some(fixed.as_str()));
        let of = r.extra["regrade_of"].as_str().unwrap();
        assert_eq!(r.extra["regrade_batch"], batch.as_str());
        assert_eq!(latest[&r.project], of, "the latest job of {}", r.project);
        assert_eq!(by_id[of].grade_total, Some(5.0), "old row kept as it was");
        assert_eq!(by_id[of].student_sha, r.student_sha);
        assert_eq!(by_id[of].received_at, r.received_at, "deadlines hold");
        regraded.insert(r.project.clone());
    }
    assert_eq!(regraded.len(), STUDENTS);

    // The live push ran before half of the batch had finished.
    let live_end = by_id[live.as_str()].ended_at;
    let before = ids
        .iter()
        .filter(|id| by_id[id.as_str()].ended_at < live_end)
        .count();
    assert!(
        before < STUDENTS / 2,
        "{before} regrade jobs finished before the live push"
    );

    // Exports may prefer the regraded rows.
    let current = w
        .gradebook()
        .select_current(
            Select::Best,
            &Filter {
                project: None,
                assignment: Some("lab1".into()),
            },
        )
        .unwrap();
    assert!(
        current
            .iter()
            .filter(|r| r.project != "course/late/lab1")
            .all(|r| r.grade_total == Some(10.0)),
        "{current:?}"
    );
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_regrade_loses_no_job_and_duplicates_none() {
    let w = World::new(2);
    let child = w.serve().await;
    w.graded_twice();
    w.f.tests_repo("lab1", &test_all(10, "0.3"));
    let out = w.labgrader(&[
        "regrade",
        "--assignment",
        "lab1",
        "--policy",
        "all",
        "--detach",
    ]);
    assert!(out.status.success(), "{}", stdout(&out));
    let (_, ids) = w.batch();
    assert_eq!(ids.len(), 2 * STUDENTS);
    wait_blocking("a few regrades done", WAIT, || {
        ids.iter().filter(|j| w.f.done_dir(j).exists()).count() >= 3
    });
    kill9(child);
    let child = w.serve().await;
    w.wait_done(&ids);
    let rows = w.rows();
    let regrades: Vec<&JobResult> = rows
        .iter()
        .filter(|r| r.extra.contains_key("regrade_of"))
        .collect();
    assert_eq!(
        regrades.len(),
        ids.len(),
        "one row per regrade job, none twice"
    );
    let of: HashSet<&str> = regrades
        .iter()
        .map(|r| r.extra["regrade_of"].as_str().unwrap())
        .collect();
    assert_eq!(of.len(), ids.len(), "each submission regraded once");
    assert!(regrades.iter().all(|r| r.grade_total == Some(10.0)));
    let spool = w.f.spool_dir.clone();
    for s in ["incoming", "active", "failed"] {
        let n = std::fs::read_dir(spool.join(s)).map_or(0, |d| d.count());
        assert_eq!(n, 0, "{s}/ is empty");
    }
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_gradebook_row_comes_back_from_done_at_start() {
    let w = World::new(2);
    w.f.tests_repo("lab1", &test_all(7, "0"));
    let child = w.serve().await;
    let job = w.push(&World::project(0), 1);
    w.wait_done(std::slice::from_ref(&job));
    stop(child);
    // A power loss drops the row (WAL, synchronous=NORMAL).
    let conn = rusqlite::Connection::open(labgrader::gradebook::path_in(&w.f.spool_dir)).unwrap();
    assert_eq!(
        conn.execute("DELETE FROM results WHERE job_id = ?1", [&job])
            .unwrap(),
        1
    );
    drop(conn);
    assert!(w.gradebook().get(&job).unwrap().is_none());
    let child = w.serve().await;
    // The reconciliation runs as the grader starts, beside the hook
    // server that `serve` waited for.
    common::wait::wait_for("the row back from done/", || {
        w.gradebook().get(&job).unwrap().is_some()
    })
    .await;
    let row = w.gradebook().get(&job).unwrap().expect("the row is back");
    assert_eq!(row.grade_total, Some(7.0));
    assert_eq!(
        row.ended_at,
        w.result(&job).unwrap().ended_at,
        "the grade done/ holds"
    );
    stop(child);
}

fn gc(repo: &Path) {
    git(repo, &["reflog", "expire", "--expire=now", "--all"]);
    git(repo, &["gc", "-q", "--prune=now"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_and_regrade_work_after_a_force_push_and_gc() {
    let w = World::new(2);
    let tests_sha = w.f.tests_repo("lab1", &test_all(4, "0"));
    let child = w.serve().await;
    let p = World::project(1);
    let job = w.push(&p, 1);
    w.wait_done(std::slice::from_ref(&job));
    let graded = w.result(&job).unwrap().student_sha;
    // The student rewrites history; GitLab and the mirror collect garbage;
    // the tests are force-pushed too.
    let work = w.f.tmp.path().join("clones").join(&p);
    std::fs::write(work.join("answer.txt"), "2").unwrap();
    git(&work, &["commit", "-q", "-a", "--amend", "-m", "rewritten"]);
    git(
        &work,
        &["push", "-q", "-f", "origin", "HEAD:refs/heads/main"],
    );
    let twork = w.f.tmp.path().join("clones").join("root/lab1-test");
    git(
        &twork,
        &["commit", "-q", "--amend", "-m", "rewritten tests"],
    );
    git(
        &twork,
        &["push", "-q", "-f", "origin", "HEAD:refs/heads/main"],
    );
    let origin = w.f.bare(&p);
    gc(&origin);
    gc(&w.f.bare("root/lab1-test"));
    let mirror = w.f.spool_dir.join("mirrors").join(format!("{p}.git"));
    // The mirrors fetch the rewrite (their branches move), then collect.
    let tmirror = w.f.spool_dir.join("mirrors/root/lab1-test.git");
    for (m, o) in [(&mirror, &origin), (&tmirror, &w.f.bare("root/lab1-test"))] {
        git(
            m,
            &["fetch", "-q", &file_url(o), "+refs/heads/*:refs/heads/*"],
        );
        gc(m);
    }
    let gone = Command::new("git")
        .args(["cat-file", "-e", &format!("{graded}^{{commit}}")])
        .current_dir(&origin)
        .status()
        .unwrap();
    assert!(!gone.success(), "the commit is gone from GitLab");

    let out = w.labgrader(&["replay", &job]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("same grade"), "{}", stdout(&out));
    assert!(stdout(&out).contains(&tests_sha), "{}", stdout(&out));

    let all = w.labgrader(&["replay", "--all", "--assignment", "lab1"]);
    assert!(all.status.success(), "{}", stdout(&all));
    assert!(
        stdout(&all).contains("1 jobs replayed, 0 differ"),
        "{}",
        stdout(&all)
    );

    let out = w.labgrader(&["regrade", "--assignment", "lab1", "--policy", "latest"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let (_, ids) = w.batch();
    let r = w.result(&ids[0]).unwrap();
    assert_eq!(r.student_sha, graded, "the exact commit graded before");
    assert_eq!(r.grade_total, Some(4.0));
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_queued_for_delivery_is_kept_even_when_its_row_and_done_were_lost() {
    let f = Fixture::new();
    let grade = f.tmp.path().join("grade");
    let runs = f.tmp.path().join("runs");
    std::fs::write(&grade, "1").unwrap();
    f.tests_repo(
        "lab1",
        &format!(
            "#!/bin/sh\necho run >> {runs}\nprintf '<summary>\\ngrade_total = %s\\n</summary>\\n' \"$(cat {grade})\"\n",
            runs = runs.display(),
            grade = grade.display()
        ),
    );
    let p = World::project(3);
    let sha = f.push(&p, |_| {});
    // A callback nobody answers: its record waits in the outbox.
    let cfg = f.config("[callback]\nurl = \"http://127.0.0.1:9/cb\"\n");
    let ev = f.event(&p, &sha);
    f.enqueue(&ev);
    let d = f.start(cfg.clone());
    let first = f.wait_done(&ev.job_id, WAIT).await;
    d.stop().await;

    // A power loss between queuing the deliveries and publishing done/:
    // the record is still the durable draft in tmp/ (of a dead process),
    // the claim in active/, and the gradebook row is gone.
    let spool = f.spool();
    let draft = f.spool_dir.join("tmp").join(format!(
        "{}.999999.{}",
        ev.job_id,
        labgrader::spool::new_job_id()
    ));
    std::fs::rename(f.done_dir(&ev.job_id), &draft).unwrap();
    spool
        .publish(
            labgrader::spool::State::Active,
            &ev.file_name(),
            &ev.to_bytes(),
        )
        .unwrap();
    let conn = rusqlite::Connection::open(labgrader::gradebook::path_in(&f.spool_dir)).unwrap();
    conn.execute("DELETE FROM results WHERE job_id = ?1", [&ev.job_id])
        .unwrap();
    drop(conn);
    std::fs::write(&grade, "2").unwrap();

    let d = f.start(cfg);
    let r = f.wait_done(&ev.job_id, WAIT).await;
    d.stop().await;
    assert_eq!(
        r.grade_total,
        Some(1.0),
        "the result promised, not a new run"
    );
    assert_eq!(r.ended_at, first.ended_at);
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 1);
    let gb = Gradebook::open(&labgrader::gradebook::path_in(&f.spool_dir)).unwrap();
    assert_eq!(gb.get(&ev.job_id).unwrap().unwrap().grade_total, Some(1.0));
    assert!(!draft.exists());
}

#[test]
fn a_regrade_emails_the_student_only_with_notify_and_always_calls_back() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::deliver::config(
        dir.path(),
        "[email]\nurl = \"smtp://127.0.0.1:9\"\nfrom = \"g@example.edu\"\n\
         [callback]\nurl = \"http://127.0.0.1:9/cb\"\n",
    );
    let spool = labgrader::spool::Spool::open(&cfg.spool.dir).unwrap();
    let outbox = |job: &str| -> Vec<String> {
        let mut v: Vec<String> = spool
            .list(labgrader::spool::State::Outbox)
            .unwrap()
            .into_iter()
            .filter(|n| n.starts_with(job))
            .collect();
        v.sort();
        v
    };
    for (job, notify) in [("01REGRADEQUIET", false), ("01REGRADENOTIFY", true)] {
        let mut ev = common::deliver::event(job, Some("jsmith@example.edu"));
        ev.regrade = Some(labgrader::event::Regrade {
            batch: "rg-1".into(),
            of: "01FIRST".into(),
            notify,
            queued_at: None,
        });
        let r =
            common::deliver::result(&ev, labgrader::result::Status::Graded, Some(3.0), b"", b"");
        labgrader::deliver::enqueue_result(&cfg, &spool, &ev, &r).unwrap();
        let names = outbox(job);
        assert!(
            names.iter().any(|n| n.ends_with(".callback.json")),
            "{names:?}"
        );
        assert_eq!(
            names.iter().any(|n| n.ends_with(".email.json")),
            notify,
            "{names:?}"
        );
    }
}
