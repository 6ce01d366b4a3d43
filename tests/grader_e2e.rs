//! The grader daemon end to end on real git repositories: event file in
//! incoming/ → graded row in the gradebook and a done/ record; each push
//! graded at its own SHA; regrade and replay.

mod common;

use std::time::Duration;

use common::files::write_exec;
use common::world::{Fixture, simple_test_all};
use labgrader::gradebook::{Filter, Format, Gradebook, Select};
use labgrader::result::Status;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_commit_is_graded_with_both_shas_and_a_done_record() {
    let f = Fixture::new();
    let tests_sha = f.tests_repo(
        "lab1",
        "#!/bin/sh\necho \"student says: $(cat answer.txt)\"\necho secret-log >&2\n\
         echo \"sha=$LABGRADER_STUDENT_SHA tests=$LABGRADER_TESTS_SHA job=$LABGRADER_JOB_ID\"\n\
         printf '<summary>\\ngrade_total = 87.5\\npassed = 7\\n[hidden]\\nseed = 42\\n</summary>\\n'\n",
    );
    let sha = f.push("course/alice/lab1", |w| {
        std::fs::write(w.join("answer.txt"), "42").unwrap()
    });
    let d = f.start(f.config(""));
    let ev = f.event("course/alice/lab1", &sha);
    f.enqueue(&ev);
    let r = f.wait_done(&ev.job_id, WAIT).await;
    d.stop().await;

    assert_eq!(r.status, Status::Graded, "{r:?}");
    assert_eq!(r.grade_total, Some(87.5));
    assert_eq!(r.student_sha, sha);
    assert_eq!(r.tests_sha.as_deref(), Some(tests_sha.as_str()));
    assert_eq!(r.summary.get("passed").map(String::as_str), Some("7"));
    assert_eq!(r.hidden.get("seed").map(String::as_str), Some("42"));
    assert_eq!(r.runner, "none");

    let done = f.done_dir(&ev.job_id);
    let stdout = std::fs::read_to_string(done.join("stdout")).unwrap();
    assert!(stdout.contains("student says: 42"), "{stdout}");
    assert!(
        stdout.contains(&format!("sha={sha} tests={tests_sha} job={}", ev.job_id)),
        "{stdout}"
    );
    assert!(
        std::fs::read_to_string(done.join("stderr"))
            .unwrap()
            .contains("secret-log")
    );
    assert!(done.join("event.json").exists());
    let spool = f.spool();
    assert!(
        spool
            .list(labgrader::spool::State::Active)
            .unwrap()
            .is_empty()
    );
    assert!(
        spool
            .list(labgrader::spool::State::Incoming)
            .unwrap()
            .is_empty()
    );
    // The workspace is gone.
    assert_eq!(
        std::fs::read_dir(f.spool_dir.join("work")).unwrap().count(),
        0
    );

    let gb = Gradebook::open(&f.spool_dir.join("gradebook.sqlite")).unwrap();
    let row = gb.get(&ev.job_id).unwrap().expect("row");
    assert_eq!(row.grade_total, Some(87.5));
    assert_eq!(row.student_sha, sha);
    assert_eq!(row.tests_sha.as_deref(), Some(tests_sha.as_str()));
    assert!(String::from_utf8_lossy(&row.stdout.bytes).contains("student says: 42"));
    let mut csv = Vec::new();
    gb.export(Select::All, &Filter::default(), Format::Csv, &mut csv)
        .unwrap();
    let csv = String::from_utf8(csv).unwrap();
    assert!(
        csv.contains(&format!("{},course/alice/lab1", ev.job_id)),
        "{csv}"
    );

    let metrics = labgrader::metrics::render(&[]);
    for phase in ["queued", "fetch", "workspace", "run", "record"] {
        assert!(
            metrics.contains(&format!(
                "labgrader_grader_phase_seconds_count{{phase=\"{phase}\"}}"
            )),
            "{phase}: {metrics}"
        );
    }
    assert!(metrics.contains("labgrader_grader_jobs_total{status=\"graded\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_quick_pushes_are_each_graded_at_their_own_sha() {
    let f = Fixture::new();
    f.tests_repo(
        "lab2",
        "#!/bin/sh\nprintf '<summary>\\ngrade_total = %s\\n</summary>\\n' \"$(cat n)\"\n",
    );
    let p = "course/bob/lab2";
    let sha1 = f.push(p, |w| std::fs::write(w.join("n"), "1").unwrap());
    let sha2 = f.push(p, |w| std::fs::write(w.join("n"), "2").unwrap());
    // Both events arrive before the grader has fetched anything: the branch
    // already points at sha2 when the first job runs.
    let (e1, e2) = (f.event(p, &sha1), f.event(p, &sha2));
    f.enqueue(&e1);
    f.enqueue(&e2);
    let d = f.start(f.config(""));
    let r1 = f.wait_done(&e1.job_id, WAIT).await;
    let r2 = f.wait_done(&e2.job_id, WAIT).await;
    d.stop().await;
    assert_eq!(
        (r1.student_sha.as_str(), r1.grade_total),
        (sha1.as_str(), Some(1.0))
    );
    assert_eq!(
        (r2.student_sha.as_str(), r2.grade_total),
        (sha2.as_str(), Some(2.0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_student_repository_is_still_graded() {
    let f = Fixture::new();
    f.tests_repo("lab3", &simple_test_all("5"));
    let sha = f.push("course/carol/lab3", |_| {});
    let d = f.start(f.config(""));
    let ev = f.event("course/carol/lab3", &sha);
    f.enqueue(&ev);
    let r = f.wait_done(&ev.job_id, WAIT).await;
    d.stop().await;
    assert_eq!(
        (r.status, r.grade_total),
        (Status::Graded, Some(5.0)),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regrade_queues_again_and_replay_reproduces_the_grade_on_the_recorded_shas() {
    let f = Fixture::new();
    f.tests_repo("lab4", &simple_test_all("70"));
    let p = "course/dan/lab4";
    let sha = f.push(p, |w| std::fs::write(w.join("x"), "x").unwrap());
    let d = f.start(f.config(""));
    let ev = f.event(p, &sha);
    f.enqueue(&ev);
    let first = f.wait_done(&ev.job_id, WAIT).await;
    assert_eq!(first.grade_total, Some(70.0));

    // The test repository moves on: a regrade takes the new head, a replay
    // keeps the recorded one.
    let new_tests = f.tests_repo("lab4", &simple_test_all("90"));
    let queued =
        labgrader::grader::regrade(&f.spool(), std::slice::from_ref(&ev.job_id), None).unwrap();
    assert_eq!(queued.len(), 1);
    let again = f.wait_done(&queued[0].1, WAIT).await;
    assert_eq!(again.grade_total, Some(90.0));
    assert_eq!(again.student_sha, sha);
    assert_eq!(again.tests_sha.as_deref(), Some(new_tests.as_str()));
    let by_project = labgrader::grader::regrade(&f.spool(), &[], Some(p)).unwrap();
    assert_eq!(by_project.len(), 2);
    for (_, id) in &by_project {
        f.wait_done(id, WAIT).await;
    }
    d.stop().await;

    let replay = labgrader::grader::replay(f.config(""), f.spool(), &ev.job_id)
        .await
        .unwrap();
    assert!(replay.same, "{replay:?}");
    assert_eq!(replay.replay.grade_total, Some(70.0));
    assert_eq!(replay.replay.tests_sha, first.tests_sha);

    // The latest export is the last regrade; the best is the 90.
    let gb = Gradebook::open(&f.spool_dir.join("gradebook.sqlite")).unwrap();
    let filter = Filter {
        project: Some(p.into()),
        assignment: None,
    };
    assert_eq!(gb.select(Select::All, &filter).unwrap().len(), 4);
    assert_eq!(
        gb.select(Select::Best, &filter).unwrap()[0].grade_total,
        Some(90.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grade_local_runs_a_directory_pair_once() {
    let f = Fixture::new();
    let (student, tests) = (f.tmp.path().join("s"), f.tmp.path().join("t"));
    std::fs::create_dir_all(student.join(".git")).unwrap();
    std::fs::write(student.join("n"), "3").unwrap();
    write_exec(
        &tests.join("test_all"),
        "#!/bin/sh\nprintf '<summary>\\ngrade_total = %s\\n</summary>\\n' \"$(cat n)\"\n",
    );
    let cfg = f.config("");
    let r = labgrader::grader::grade_local(&cfg, &student, &tests, None, None, None)
        .await
        .unwrap();
    assert_eq!(r.grade_total, Some(3.0), "{r:?}");
    let r = labgrader::grader::grade_local(&cfg, &tests, &student, None, None, None)
        .await
        .unwrap();
    assert_eq!(r.status, Status::Error);
    assert!(r.reason.unwrap().contains("test_all"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_contract_lays_out_harness_workspace_and_results() {
    let f = Fixture::new();
    let (student, tests) = (f.tmp.path().join("s"), f.tmp.path().join("t"));
    std::fs::create_dir_all(&student).unwrap();
    std::fs::write(student.join("answer"), "42").unwrap();
    std::fs::create_dir_all(tests.join("public")).unwrap();
    std::fs::write(tests.join("public/header.h"), "int f(void);").unwrap();
    std::fs::write(tests.join("expected"), "42").unwrap();
    // The harness runs in its own copy of the tests; student code runs in
    // the workspace, which holds the student's tree and public/ only.
    write_exec(
        &tests.join("test_all"),
        "#!/bin/sh\nset -e\ntest -f expected\n\
         ws=$(run-as-student pwd)\ntest \"$ws\" = \"$LABGRADER_WORKSPACE\"\n\
         run-as-student test -f header.h\n\
         if run-as-student test -e expected; then echo private-leaked; exit 1; fi\n\
         test -d \"$LABGRADER_RESULTS\"\n\
         printf '<summary>\\ngrade_total = %s\\n</summary>\\n' \"$(run-as-student cat answer)\"\n",
    );
    let cfg = f.config("");
    let trusted = Some(labgrader::config::Contract::Trusted);
    let r = labgrader::grader::grade_local(&cfg, &student, &tests, None, None, trusted)
        .await
        .unwrap();
    assert_eq!(
        r.extra.get("contract").and_then(|v| v.as_str()),
        Some("trusted"),
        "{r:?}"
    );
    assert!(r.termination.is_some(), "{r:?}");
    let out = String::from_utf8_lossy(&r.stdout.bytes);
    assert!(!out.contains("private-leaked"), "{out}");
    assert_eq!(
        r.termination,
        Some(labgrader::sandbox::Termination::Exited { code: 0 }),
        "{out}\n{}",
        String::from_utf8_lossy(&r.stderr.bytes)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_token_never_lands_in_mirrors_records_or_the_gradebook() {
    let f = Fixture::new();
    f.tests_repo("lab5", &simple_test_all("1"));
    let sha = f.push("course/tok/lab5", |_| {});
    let mut cfg = (*f.config("")).clone();
    let token = "glpat-SECRET-TOKEN-0123456789";
    cfg.secrets.gitlab_token = Some(labgrader::config::Secret::new(token));
    let d = f.start(std::sync::Arc::new(cfg));
    let ev = f.event("course/tok/lab5", &sha);
    f.enqueue(&ev);
    let r = f.wait_done(&ev.job_id, WAIT).await;
    d.stop().await;
    assert_eq!(r.grade_total, Some(1.0));
    for entry in walkdir::WalkDir::new(&f.spool_dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
    {
        let bytes = std::fs::read(entry.path()).unwrap();
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "token found in {}",
            entry.path().display()
        );
    }
}

/// A tag that arrives only through a `repository_update` system hook names
/// the annotated tag OBJECT (there is no checkout_sha): the grader grades
/// the commit it points to, records that commit as `student_sha` and in
/// `LABGRADER_STUDENT_SHA`, and keeps the tag object in `extra`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotated_tag_object_in_the_event_is_graded_at_the_tagged_commit() {
    let f = Fixture::new();
    f.tests_repo(
        "lab7",
        "#!/bin/sh\necho \"at $LABGRADER_STUDENT_SHA\"\nprintf '<summary>\\ngrade_total = %s\\n</summary>\\n' \"$(cat n)\"\n",
    );
    let p = "course/tess/lab7";
    let sha = f.push(p, |w| std::fs::write(w.join("n"), "3").unwrap());
    let work = f.tmp.path().join("clones").join(p);
    common::repos::git(&work, &["tag", "-a", "submit-1", "-m", "submission"]);
    common::repos::git(&work, &["push", "-q", "origin", "refs/tags/submit-1"]);
    let tag_obj = common::repos::git(&work, &["rev-parse", "refs/tags/submit-1"]);
    assert_ne!(tag_obj, sha);
    // A later commit on main: the tag, not the branch, is what counts.
    f.push(p, |w| std::fs::write(w.join("n"), "9").unwrap());
    let mut ev = f.event(p, &tag_obj);
    ev.kind = labgrader::event::EventKind::TagPush;
    ev.source = labgrader::event::HookSource::SystemHook;
    ev.git_ref = "refs/tags/submit-1".into();
    f.enqueue(&ev);
    let d = f.start(f.config(""));
    let r = f.wait_done(&ev.job_id, WAIT).await;
    d.stop().await;
    assert_eq!(
        (r.status, r.grade_total),
        (Status::Graded, Some(3.0)),
        "{r:?}"
    );
    assert_eq!(r.student_sha, sha);
    assert_eq!(r.extra.get("tag_object"), Some(&serde_json::json!(tag_obj)));
    let out = std::fs::read_to_string(f.done_dir(&ev.job_id).join("stdout")).unwrap();
    assert!(out.contains(&format!("at {sha}")), "{out}");
    let gb = Gradebook::open(&f.spool_dir.join("gradebook.sqlite")).unwrap();
    assert_eq!(gb.get(&ev.job_id).unwrap().unwrap().student_sha, sha);
}

/// A student pushes, then force-pushes over it before the first job runs:
/// the first job still grades its own commit, which no branch names any
/// more (fetched by id). A commit the repository never had is a clear
/// `error` naming it, not a retry loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_pushed_away_commit_is_still_graded_and_an_unknown_one_is_a_clear_error() {
    let f = Fixture::new();
    f.tests_repo(
        "lab16",
        "#!/bin/sh\nprintf '<summary>\\ngrade_total = %s\\n</summary>\\n' \"$(cat v)\"\n",
    );
    let p = "course/rita/lab16";
    let first = f.push(p, |w| std::fs::write(w.join("v"), "1").unwrap());
    // Rewrite history: amend the commit and force-push it over the first.
    let work = f.tmp.path().join("clones").join(p);
    std::fs::write(work.join("v"), "2").unwrap();
    common::repos::git(&work, &["commit", "-q", "-a", "--amend", "-m", "rewritten"]);
    common::repos::git(
        &work,
        &["push", "-q", "-f", "origin", "HEAD:refs/heads/main"],
    );
    let second = common::repos::git(&work, &["rev-parse", "HEAD"]);
    assert_ne!(first, second);

    let d = f.start(f.config(""));
    let ev1 = f.event(p, &first);
    let ev2 = f.event(p, &second);
    let unknown = "0123456789abcdef0123456789abcdef01234567";
    let ev3 = f.event(p, unknown);
    for ev in [&ev1, &ev2, &ev3] {
        f.enqueue(ev);
    }
    let r1 = f.wait_done(&ev1.job_id, WAIT).await;
    let r2 = f.wait_done(&ev2.job_id, WAIT).await;
    let r3 = f.wait_done(&ev3.job_id, WAIT).await;
    d.stop().await;
    assert_eq!(
        (r1.student_sha.as_str(), r1.grade_total),
        (first.as_str(), Some(1.0)),
        "{r1:?}"
    );
    assert_eq!(
        (r2.student_sha.as_str(), r2.grade_total),
        (second.as_str(), Some(2.0)),
        "{r2:?}"
    );
    assert_eq!(r3.status, Status::Error, "{r3:?}");
    let reason = r3.reason.unwrap_or_default();
    assert!(reason.contains(unknown), "{reason}");
}

/// `workers` bounds the runs, not the preparation: with 2 workers and six
/// students, never more than two `test_all`s run at once (and two do),
/// while the next jobs are fetched and laid out beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_bound_the_runs_while_the_next_jobs_are_prepared() {
    let f = Fixture::new();
    let (_logs, log) = tests_with_log(
        &f,
        "echo \"start $(date +%s%N)\" >> {log}\nsleep 0.3\necho \"end $(date +%s%N)\" >> {log}\n",
    );
    let events: Vec<_> = (0..6).map(|i| student_event(&f, i)).collect();
    let d = f.start(f.config("workers = 2\n"));
    for ev in &events {
        f.enqueue(ev);
    }
    for ev in &events {
        let r = f.wait_done(&ev.job_id, WAIT).await;
        assert_eq!(r.status, Status::Graded, "{r:?}");
    }
    d.stop().await;
    let text = std::fs::read_to_string(&log).unwrap();
    let mut edges: Vec<(u128, i32)> = text
        .lines()
        .map(|l| {
            let (what, t) = l.split_once(' ').unwrap();
            (t.parse().unwrap(), if what == "start" { 1 } else { -1 })
        })
        .collect();
    assert_eq!(edges.len(), 12, "{text}");
    // An end before a start at the same instant.
    edges.sort();
    let (mut now, mut most) = (0, 0);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    assert_eq!(most, 2, "runs at once (workers = 2):\n{text}");
}

/// A job prepared while the grader stops, still waiting for a run slot,
/// never starts: it goes back to incoming/ and is graded after the
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_job_waiting_for_a_run_slot_goes_back_at_shutdown() {
    let f = Fixture::new();
    // 3 s: longer than the claim below may take on a loaded machine,
    // shorter than the 5 s shutdown grace.
    let (_logs, log) = tests_with_log(&f, "echo \"$LABGRADER_JOB_ID\" >> {log}\nsleep 3\n");
    let events: Vec<_> = (0..2).map(|i| student_event(&f, i)).collect();
    let d = f.start(f.config("workers = 1\n"));
    f.enqueue(&events[0]);
    // The first runs; the second is claimed and prepared meanwhile.
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains(&events[0].job_id)) {
        assert!(started.elapsed() < WAIT, "the first job never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f.enqueue(&events[1]);
    // Claimed (in active/) and prepared while the first one runs.
    let claimed = std::time::Instant::now();
    loop {
        let listing = f.listing();
        let active = &listing.iter().find(|(d, _)| d == "active").unwrap().1;
        if active.contains(&events[1].file_name()) {
            break;
        }
        assert!(
            claimed.elapsed() < Duration::from_millis(1500),
            "the second job was not prepared beside the first run: {listing:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.stop().await;
    let ran = std::fs::read_to_string(&log).unwrap();
    assert!(
        !ran.contains(&events[1].job_id),
        "started after shutdown:\n{ran}"
    );
    f.wait_done(&events[0].job_id, WAIT).await;
    let listing = f.listing();
    let incoming = &listing.iter().find(|(d, _)| d == "incoming").unwrap().1;
    assert!(
        incoming.contains(&events[1].file_name()),
        "not back in incoming/: {listing:?}"
    );
    // Graded after the restart.
    let d = f.start(f.config("workers = 1\n"));
    let r = f.wait_done(&events[1].job_id, WAIT).await;
    d.stop().await;
    assert_eq!(r.status, Status::Graded, "{r:?}");
}

/// A tests repository whose `test_all` runs `script` (`{log}` in it is a
/// log file on the host), then prints a grade of 1; the log's directory
/// (removed on drop) and path.
fn tests_with_log(f: &Fixture, script: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("runs.log");
    let script = script.replace("{log}", &log.display().to_string());
    let summary = simple_test_all("1").replacen("#!/bin/sh\n", "", 1);
    f.tests_repo("lab1", &format!("#!/bin/sh\n{script}{summary}"));
    (logs, log)
}

/// Student `i`'s `lab1`, pushed once, and the event of that push.
fn student_event(f: &Fixture, i: usize) -> labgrader::event::Event {
    let path = format!("course/s{i}/lab1");
    let sha = f.push(&path, |w| std::fs::write(w.join("a"), "x").unwrap());
    f.event(&path, &sha)
}
