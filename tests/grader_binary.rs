//! The real `labgrader grader` binary: SIGKILL in the middle of a job and
//! restart (graded exactly once), a flood of stdout (capped; the daemon's
//! peak memory stays small), and the staff commands on its spool.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::daemon::{self, BIN};
use common::host::vm_hwm_kib;
use common::wait::wait_blocking;
use common::world::Fixture;
use labgrader::gradebook::{Filter, Gradebook, Select};
use labgrader::result::Status;
use labgrader::spool::State;

const WAIT: Duration = Duration::from_secs(90);

/// `ev` is back in `incoming/` after one grader fault, waiting to retry.
fn waits_for_retry(spool: &labgrader::spool::Spool, ev: &labgrader::event::Event) -> bool {
    spool
        .read(State::Incoming, &ev.file_name())
        .ok()
        .and_then(|b| labgrader::event::Event::from_bytes(&b).ok())
        .is_some_and(|e| e.infra_attempts == 1)
}

#[test]
fn sigkill_mid_job_then_restart_grades_exactly_once() {
    let f = Fixture::new();
    let runs = f.tmp.path().join("runs");
    f.tests_repo(
        "lab20",
        &format!(
            "#!/bin/sh\necho run >> {runs}\nsleep 2\nprintf '<summary>\\ngrade_total = 77\\n</summary>\\n'\n",
            runs = runs.display()
        ),
    );
    let p = "course/pam/lab20";
    let sha = f.push(p, |w| std::fs::write(w.join("x"), "1").unwrap());
    let cfg = f.write_config("");
    let log = f.tmp.path().join("daemon.log");
    // Queued before the daemon starts: its start-up sweep of tmp/ must not
    // race the test's own write in tmp/ (see the report on Spool::recover).
    let ev = f.event(p, &sha);
    f.enqueue(&ev);
    let mut first = daemon::start(&cfg, &log);
    wait_blocking("test_all to start", WAIT, || runs.exists());
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let spool = f.spool();
    assert_eq!(spool.list(State::Active).unwrap(), [ev.file_name()]);
    assert!(!f.done_dir(&ev.job_id).exists());

    let second = daemon::start(&cfg, &log);
    wait_blocking("the job to be recorded", WAIT, || {
        f.done_dir(&ev.job_id).join("result.json").exists()
    });
    daemon::stop(second);
    let r: labgrader::result::JobResult =
        serde_json::from_slice(&std::fs::read(f.done_dir(&ev.job_id).join("result.json")).unwrap())
            .unwrap();
    assert_eq!((r.status, r.grade_total), (Status::Graded, Some(77.0)));
    assert_eq!(r.extra.get("crashes"), Some(&serde_json::json!(1)));
    let gb = Gradebook::open(&f.spool_dir.join("gradebook.sqlite")).unwrap();
    assert_eq!(gb.select(Select::All, &Filter::default()).unwrap().len(), 1);
    assert_eq!(spool.list(State::Done).unwrap(), vec![ev.job_id.clone()]);
    for s in [State::Incoming, State::Active, State::Failed, State::Tmp] {
        assert!(spool.list(s).unwrap().is_empty(), "{s:?} not empty");
    }

    // Staff commands on the same spool: export through the binary.
    let out = Command::new(BIN)
        .args([
            "gradebook",
            "export",
            "--format",
            "json",
            "--policy",
            "latest",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["commit"], sha.as_str());
}

#[test]
fn two_hundred_megabytes_of_stdout_are_capped_and_daemon_memory_stays_small() {
    let f = Fixture::new();
    f.tests_repo(
        "lab21",
        "#!/bin/sh\nhead -c 200000000 /dev/zero | tr '\\0' 'x'\n\
         printf '\\n<summary>\\ngrade_total = 1\\n</summary>\\n'\n",
    );
    let p = "course/quin/lab21";
    let sha = f.push(p, |_| {});
    let cfg = f.write_config("output_limit = \"1MiB\"");
    let log = f.tmp.path().join("daemon.log");
    let ev = f.event(p, &sha);
    f.enqueue(&ev);
    let daemon = daemon::start(&cfg, &log);
    let pid = daemon.id();
    wait_blocking("the job to be recorded", WAIT, || {
        f.done_dir(&ev.job_id).join("result.json").exists()
    });
    let hwm = vm_hwm_kib(pid).expect("VmHWM readable");
    daemon::stop(daemon);
    let r: labgrader::result::JobResult =
        serde_json::from_slice(&std::fs::read(f.done_dir(&ev.job_id).join("result.json")).unwrap())
            .unwrap();
    assert!(r.stdout.truncated, "{r:?}");
    assert!(r.stdout.total >= 200_000_000, "{r:?}");
    // The summary came after the cap: the kept tail still holds it.
    assert_eq!(r.status, Status::Graded, "{r:?}");
    assert_eq!(r.grade_total, Some(1.0), "{r:?}");
    let kept = std::fs::read(f.done_dir(&ev.job_id).join("stdout")).unwrap();
    let cap = (1 << 20) + labgrader::sandbox::output::TAIL_KEEP + 200;
    assert!(kept.len() < cap, "{}", kept.len());
    assert!(String::from_utf8_lossy(&kept).ends_with("</summary>\n"));
    assert!(String::from_utf8_lossy(&kept).contains("[labgrader: output truncated"));
    eprintln!("daemon VmHWM after 200 MB of stdout: {hwm} KiB");
    assert!(hwm < 64 * 1024, "daemon peak RSS {hwm} KiB");
}

#[test]
fn grade_command_prints_stdout_then_json_and_exits_zero_only_with_a_grade() {
    let f = Fixture::new();
    let (student, tests) = (f.tmp.path().join("s"), f.tmp.path().join("t"));
    std::fs::create_dir_all(&student).unwrap();
    std::fs::write(student.join("n"), "8").unwrap();
    common::files::write_exec(
        &tests.join("test_all"),
        "#!/bin/sh\necho hello\nprintf '<summary>\\ngrade_total = %s\\n</summary>\\n' \"$(cat n)\"\n",
    );
    let cfg = f.write_config("");
    let run = |tests: &Path| {
        Command::new(BIN)
            .args(["grade", "--runner", "none", "--timeout", "10s", "--config"])
            .arg(&cfg)
            .arg("--student")
            .arg(&student)
            .arg("--tests")
            .arg(tests)
            .output()
            .unwrap()
    };
    let out = run(&tests);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("hello\n<summary>"), "{text}");
    assert!(text.contains("\"grade_total\": 8.0"), "{text}");
    let out = run(&student);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no executable test_all"));
    // --json: the result alone on stdout, for jq; test_all's output on stderr.
    let out = Command::new(BIN)
        .args(["grade", "--json", "--runner", "none", "--config"])
        .arg(&cfg)
        .arg("--student")
        .arg(&student)
        .arg("--tests")
        .arg(&tests)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON alone");
    assert_eq!(v["grade_total"], 8.0);
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("hello\n"));
}

/// A staff command run without the daemon's `--config` (so with another
/// spool directory) says so and creates nothing, instead of reporting an
/// empty `./spool` it made.
#[test]
fn queue_and_regrade_refuse_a_spool_that_does_not_exist() {
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("not-a-spool");
    let config = t.path().join("labgrader.toml");
    std::fs::write(&config, format!("[spool]\ndir = {:?}\n", missing)).unwrap();
    for args in [
        &["queue"][..],
        &["queue", "--json"],
        &["regrade", "01J"],
        &["release", "lab1"],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            err.contains(&format!("no spool at {}", missing.display())),
            "{args:?}: {err}"
        );
        assert!(err.contains("--config"), "{err}");
        assert!(!missing.exists(), "{args:?} created the spool");
    }
}

/// A job that keeps failing by the grader's fault (its test repository is
/// not there) shows in `queue --json` with its attempt, next try and last
/// error, and in the text form on one line.
#[test]
fn queue_shows_a_retrying_jobs_attempt_next_try_and_last_error() {
    let f = Fixture::new();
    let p = "course/quinn/lab21";
    let sha = f.push(p, |w| std::fs::write(w.join("x"), "1").unwrap());
    let cfg = f.write_config("infra_backoff = \"10m\"\ninfra_retries = 3\n");
    let log = f.tmp.path().join("daemon.log");
    let ev = f.event(p, &sha);
    f.enqueue(&ev);
    let grader = daemon::start(&cfg, &log);
    let spool = f.spool();
    wait_blocking("the first retry to be scheduled", WAIT, || {
        waits_for_retry(&spool, &ev)
    });
    daemon::stop(grader);
    let out = Command::new(BIN)
        .args(["queue", "--json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let q: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let j = &q["waiting"][0];
    assert_eq!(j["job_id"], ev.job_id.as_str());
    assert_eq!(
        (j["attempt"].as_u64(), j["attempts_max"].as_u64()),
        (Some(2), Some(4))
    );
    let next: chrono::DateTime<chrono::Utc> = j["next_try"].as_str().unwrap().parse().unwrap();
    assert!(
        next > chrono::Utc::now() + chrono::Duration::minutes(3),
        "{next}"
    );
    let err = j["last_error"].as_str().unwrap();
    assert!(err.contains("test repository"), "{err}");
    let text = Command::new(BIN)
        .args(["queue", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("{}  {p}  attempt 2/4  next try ", ev.job_id))
            && text.contains("last error: test repository"),
        "{text}"
    );
}

/// `cancel` and `retry` on a running daemon: a job retrying by the
/// grader's fault is cancelled (to failed/, never deleted), brought back
/// and graded; another is made due now instead of in ten minutes; a
/// finished job is neither, with a pointer to `regrade`.
#[test]
fn cancel_and_retry_move_jobs_without_touching_spool_files_by_hand() {
    let f = Fixture::new();
    let cfg = f.write_config("infra_backoff = \"10m\"\ninfra_retries = 3\n");
    let log = f.tmp.path().join("daemon.log");
    let spool = f.spool();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let a_sha = f.push("course/rae/lab22", |w| {
        std::fs::write(w.join("x"), "1").unwrap()
    });
    let b_sha = f.push("course/sam/lab23", |w| {
        std::fs::write(w.join("x"), "1").unwrap()
    });
    let a = f.event("course/rae/lab22", &a_sha);
    let b = f.event("course/sam/lab23", &b_sha);
    f.enqueue(&a);
    f.enqueue(&b);
    let daemon_proc = daemon::start(&cfg, &log);
    wait_blocking("both jobs to wait for a retry", WAIT, || {
        waits_for_retry(&spool, &a) && waits_for_retry(&spool, &b)
    });

    let (ok, text) = run(&["cancel", &a.job_id]);
    assert!(ok, "{text}");
    let reason =
        std::fs::read_to_string(f.spool_dir.join("failed").join(&a.job_id).join("reason")).unwrap();
    assert_eq!(reason, "cancelled by staff\n");
    assert!(!spool.path(State::Incoming, &a.file_name()).exists());

    // The tests appear; both come back at once, not in ten minutes.
    f.tests_repo("lab22", &common::world::simple_test_all("22"));
    f.tests_repo("lab23", &common::world::simple_test_all("23"));
    let (ok, text) = run(&["retry", &a.job_id, &b.job_id]);
    assert!(ok, "{text}");
    let graded = |ev: &labgrader::event::Event| f.done_dir(&ev.job_id).join("result.json").exists();
    let start = std::time::Instant::now();
    while !(graded(&a) && graded(&b)) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not graded within a minute of retry; spool: {:?}\nlog:\n{}",
            f.listing(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon::stop(daemon_proc);
    assert!(!f.spool_dir.join("failed").join(&a.job_id).exists());
    let (ok, text) = run(&["cancel", &a.job_id]);
    assert!(
        !ok && text.contains("has finished: use `labgrader regrade`"),
        "{text}"
    );
    let (ok, text) = run(&["retry", "01JNOSUCHJOB0000000000000"]);
    assert!(!ok && text.contains("no finished record"), "{text}");
}

/// With no `[email] url`, email goes to the host's own MTA when it has
/// one (`/usr/sbin/sendmail`), else it is off: one line at start says so
/// and no email is queued, instead of a day of retries to
/// `localhost:25`.
#[test]
fn default_email_is_the_local_mta_or_off_with_one_line_at_start() {
    let has_mta = Path::new(labgrader::config::SENDMAIL).exists();
    let f = Fixture::new();
    f.tests_repo("lab24", &common::world::simple_test_all("24"));
    let p = "course/tia/lab24";
    let sha = f.push(p, |w| std::fs::write(w.join("x"), "1").unwrap());
    let cfg = f.write_config("");
    assert_eq!(
        labgrader::config::Config::load(Some(&cfg))
            .unwrap()
            .email
            .url,
        if has_mta { "sendmail" } else { "" }
    );
    if has_mta {
        return;
    }
    let log = f.tmp.path().join("daemon.log");
    let ev = f.event(p, &sha);
    f.enqueue(&ev);
    let grader = daemon::start(&cfg, &log);
    wait_blocking("the job to be recorded", WAIT, || {
        f.done_dir(&ev.job_id).join("result.json").exists()
    });
    daemon::stop(grader);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("email is off").count(), 1, "{text}");
    let outbox: Vec<String> = f.spool().list(State::Outbox).unwrap();
    assert!(outbox.iter().all(|n| !n.contains("email")), "{outbox:?}");
    assert!(
        !f.spool_dir
            .join("sent")
            .join(format!("{}.email.json", ev.job_id))
            .exists()
    );
}

/// A grader whose git serves `slow`'s pack slower than `git_timeout`:
/// git's own hook around pack-objects (honoured from the global config
/// only) sleeps for it. Returns (config, log, gitconfig).
fn slow_pack_of(
    f: &Fixture,
    slow: &str,
    extra: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let hook = f.tmp.path().join("slow-pack");
    std::fs::write(
        &hook,
        format!("#!/bin/sh\ncase \"$(pwd -P)\" in *{slow}*) sleep 60 ;; esac\nexec \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let gitconfig = f.tmp.path().join("gitconfig");
    std::fs::write(
        &gitconfig,
        format!("[uploadpack]\n\tpackObjectsHook = {}\n", hook.display()),
    )
    .unwrap();
    let cfg = f.write_config(&format!(
        "git_timeout = \"2s\"\ninfra_backoff = \"1s\"\n{extra}"
    ));
    (cfg, f.tmp.path().join("daemon.log"), gitconfig)
}

/// Student `who`'s push to `lab` queued, and a grader started whose git
/// serves that student's pack too slowly (see `slow_pack_of`). Returns
/// (event, log, grader).
fn slow_student(
    f: &Fixture,
    who: &str,
    lab: &str,
    extra: &str,
) -> (
    labgrader::event::Event,
    std::path::PathBuf,
    std::process::Child,
) {
    f.tests_repo(
        lab,
        "#!/bin/sh\nprintf '<summary>\\ngrade_total = 1\\n</summary>\\n'\n",
    );
    let p = format!("course/{who}/{lab}");
    let sha = f.push(&p, |w| std::fs::write(w.join("x"), "1").unwrap());
    let (cfg, log, gitconfig) = slow_pack_of(f, who, extra);
    let ev = f.event(&p, &sha);
    f.enqueue(&ev);
    let grader = daemon::binary("grader", &cfg, &log)
        .env("GIT_CONFIG_GLOBAL", &gitconfig)
        .spawn()
        .expect("the labgrader binary starts");
    (ev, log, grader)
}

fn recorded(f: &Fixture, job: &str) -> labgrader::result::JobResult {
    serde_json::from_slice(&std::fs::read(f.done_dir(job).join("result.json")).unwrap()).unwrap()
}

/// The attack: a repository too slow to fetch (a huge pack, a git bomb's
/// history), pushed to hold a worker for `infra_retries` × `git_timeout`
/// and alert staff, never charged. Its first timeout is retried as the
/// grader's (the server may have been slow); timing out again while the
/// test repository answers, asked afresh, is the submission's: a final
/// `error` naming the cause, after two attempts, not six.
#[test]
fn a_repository_too_slow_to_fetch_is_the_submissions_fault_on_the_retry() {
    let f = Fixture::new();
    let (ev, log, grader) = slow_student(&f, "rita", "lab22", "infra_retries = 5\n");
    wait_blocking("the job to be recorded", WAIT, || {
        f.done_dir(&ev.job_id).join("result.json").exists()
    });
    daemon::stop(grader);
    let r = recorded(&f, &ev.job_id);
    assert_eq!(r.status, Status::Error, "{r:?}");
    let reason = r.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("could not be fetched within 2 s on 2 attempts")
            && reason.contains("too large"),
        "{reason}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("not the student's fault): will retry").count(),
        1,
        "one retry, not five: {text}"
    );
}

/// The other side: when the server stops answering for the test
/// repository too (an outage after the first attempt), the student's
/// timeouts stay the grader's fault, retried and ending `infra_error`,
/// even though the tests' mirror is warm from the first attempt.
#[test]
fn a_slow_fetch_during_an_outage_stays_the_graders_fault() {
    let f = Fixture::new();
    let (ev, log, grader) = slow_student(&f, "sam", "lab23", "infra_retries = 2\n");
    let spool = f.spool();
    wait_blocking("the first retry to be scheduled", WAIT, || {
        waits_for_retry(&spool, &ev)
    });
    // The outage: the test repository no longer answers.
    let tests = f.repos.join("root/lab23-test.git");
    std::fs::rename(&tests, tests.with_extension("gone")).unwrap();
    wait_blocking("the job to be recorded", WAIT, || {
        f.done_dir(&ev.job_id).join("result.json").exists()
            || f.spool_dir.join("failed").join(&ev.job_id).exists()
    });
    daemon::stop(grader);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("the submission's fault"),
        "blamed the student during an outage: {text}"
    );
    assert_eq!(
        text.matches("not the student's fault): will retry").count(),
        2,
        "{text}"
    );
}
