//! The callback destination against a real HTTP receiver on loopback:
//! retries on 503 until one 2xx, signatures that verify, dead at once on
//! 400, and a delivery that survives a worker restart while the receiver
//! was down.

mod common;

use std::sync::Arc;

use common::{deliver::*, host::*, http::*, wait::*};
use labgrader::deliver::{self, Destination, record_file_name};
use labgrader::result::Status;
use labgrader::spool::{Spool, State};

const SECRET: &str = "callback-shared-secret";
const STDERR_TEXT: &str = "STAFF-ONLY: traceback in grader helper";

fn callback_config(dir: &std::path::Path, url: &str, extra: &str) -> labgrader::config::Config {
    let secret = secret_file(dir, "callback.secret", SECRET);
    config(
        dir,
        &format!(
            "\n[callback]\nurl = {url:?}\nsecret_file = {secret:?}\n{extra}\n[email]\nurl = \"\"\n"
        ),
    )
}

#[tokio::test]
async fn callback_retried_on_503_then_delivered_once_with_valid_signature() {
    let t = tempfile::tempdir().unwrap();
    let server = TestServer::start(Arc::new(|_, i| {
        if i < 3 {
            (503, vec![("Retry-After", "0".into())], "busy".into())
        } else {
            (200, vec![], "ok".into())
        }
    }))
    .await;
    let cfg = callback_config(t.path(), &server.url("/grades"), "");
    let spool = Arc::new(Spool::open(&cfg.spool.dir).unwrap());
    let ev = event("01JCALLBACK0000000000000001", Some("john@example.com"));
    let res = result(
        &ev,
        Status::Graded,
        Some(87.5),
        b"test 1 ok\n<summary>\ngrade_total = 87.5\n</summary>\n",
        STDERR_TEXT.as_bytes(),
    );
    deliver::enqueue_result(&cfg, &spool, &ev, &res).unwrap();
    // Enqueuing the same job again adds nothing.
    deliver::enqueue_result(&cfg, &spool, &ev, &res).unwrap();
    assert_eq!(spool.list(State::Outbox).unwrap().len(), 1);

    let worker = Worker::start(&cfg, &spool);
    let name = record_file_name(&ev.job_id, Destination::Callback);
    wait_for("the callback receipt", || receipt_exists(&spool, &name)).await;
    worker.stop().await;

    let seen = server.requests();
    assert_eq!(seen.len(), 4, "three 503s then one 200: {seen:?}");
    let body = &seen[0].body;
    for (i, r) in seen.iter().enumerate() {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/grades");
        assert_eq!(&r.body, body, "every attempt sends the same bytes");
        assert_eq!(
            r.header("Idempotency-Key"),
            Some("01JCALLBACK0000000000000001:callback")
        );
        assert_eq!(
            r.header("X-Labgrader-Attempt"),
            Some((i + 1).to_string().as_str())
        );
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert_eq!(
            r.header("X-Labgrader-Signature"),
            Some(callback_signature(SECRET, &r.body).as_str()),
            "signature verifies with the shared secret"
        );
    }
    assert!(deliver::callback::verify(
        SECRET.as_bytes(),
        body,
        seen[3].header("X-Labgrader-Signature").unwrap()
    ));
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["job_id"], "01JCALLBACK0000000000000001");
    assert_eq!(v["project"], "course/2026/jsmith/lab1");
    assert_eq!(v["project_id"], 15);
    assert_eq!(v["pusher"]["username"], "jsmith");
    assert_eq!(v["student_sha"], ev.commit);
    assert_eq!(v["tests_sha"], "1111111111111111111111111111111111111111");
    assert_eq!(v["status"], "graded");
    assert_eq!(v["grade_total"], 87.5);
    assert_eq!(v["summary"]["tests_passed"], "7");
    assert!(v["stdout"].as_str().unwrap().starts_with("test 1 ok\n"));
    assert!(v.get("stderr").is_none(), "no stderr unless include_stderr");
    assert!(
        v.get("hidden").is_none(),
        "no hidden keys unless include_hidden"
    );
    assert!(!String::from_utf8_lossy(body).contains(STDERR_TEXT));

    // Attempts are recorded in the receipt; nothing left waiting or dead.
    let receipt: deliver::Receipt = serde_json::from_slice(
        &std::fs::read(spool.root().join(deliver::SENT_DIR).join(&name)).unwrap(),
    )
    .unwrap();
    assert_eq!(receipt.attempts, 4);
    assert_eq!(receipt.detail, "HTTP 200");
    assert!(spool.list(State::Outbox).unwrap().is_empty());
    assert!(spool.list(State::Dead).unwrap().is_empty());
    // Delivered: enqueuing it again is still a no-op.
    deliver::enqueue_result(&cfg, &spool, &ev, &res).unwrap();
    assert!(spool.list(State::Outbox).unwrap().is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn callback_answered_400_is_dead_at_once_with_the_reason() {
    let t = tempfile::tempdir().unwrap();
    let server = TestServer::start(Arc::new(|_, _| (400, vec![], "unknown course".into()))).await;
    let cfg = callback_config(t.path(), &server.url("/grades"), "");
    let spool = Arc::new(Spool::open(&cfg.spool.dir).unwrap());
    let ev = event("01JCALLBACK0000000000000002", None);
    let res = result(&ev, Status::NoGrade, None, b"no summary\n", b"");
    deliver::enqueue_result(&cfg, &spool, &ev, &res).unwrap();

    let worker = Worker::start(&cfg, &spool);
    let name = record_file_name(&ev.job_id, Destination::Callback);
    wait_for("the dead record", || {
        spool.path(State::Dead, &name).exists()
    })
    .await;
    worker.stop().await;

    assert_eq!(server.requests().len(), 1, "a 400 is never retried");
    let dead = read_record(&spool, State::Dead, &name).unwrap();
    assert_eq!(dead.attempts, 1);
    let reason = dead.dead_reason.unwrap();
    assert!(reason.contains("400"), "{reason}");
    assert!(reason.contains("unknown course"), "{reason}");
    let (_, dead_lines) = deliver::report(&spool, 10).unwrap();
    assert_eq!(dead_lines.len(), 1);
    assert_eq!(dead_lines[0].key, "01JCALLBACK0000000000000002:callback");
    assert!(dead_lines[0].reason.as_deref().unwrap().contains("400"));

    // `labgrader queue` shows the dead delivery and why.
    let conf = t.path().join("labgrader.toml");
    std::fs::write(&conf, format!("[spool]\ndir = {:?}\n", cfg.spool.dir)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_labgrader"))
        .arg("--config")
        .arg(&conf)
        .arg("queue")
        .env_remove("LABGRADER_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("dead      1"), "{text}");
    assert!(
        text.contains("01JCALLBACK0000000000000002:callback"),
        "{text}"
    );
    assert!(text.contains("unknown course"), "{text}");
    server.shutdown().await;
}

#[tokio::test]
async fn callback_gives_up_after_max_attempts() {
    let t = tempfile::tempdir().unwrap();
    let server = TestServer::start(Arc::new(|_, _| (503, vec![], "down".into()))).await;
    let cfg = callback_config(t.path(), &server.url("/grades"), "");
    let mut cfg = cfg;
    cfg.deliver.max_attempts = 3;
    let spool = Arc::new(Spool::open(&cfg.spool.dir).unwrap());
    let ev = event("01JCALLBACK0000000000000003", None);
    let res = result(&ev, Status::Graded, Some(1.0), b"x\n", b"");
    deliver::enqueue_result(&cfg, &spool, &ev, &res).unwrap();

    let worker = Worker::start(&cfg, &spool);
    let name = record_file_name(&ev.job_id, Destination::Callback);
    wait_for("the dead record", || {
        spool.path(State::Dead, &name).exists()
    })
    .await;
    worker.stop().await;

    assert_eq!(server.requests().len(), 3);
    let dead = read_record(&spool, State::Dead, &name).unwrap();
    assert_eq!(dead.attempts, 3);
    let reason = dead.dead_reason.unwrap();
    assert!(reason.contains("gave up after 3 attempts"), "{reason}");
    assert!(reason.contains("503"), "{reason}");
    server.shutdown().await;
}

#[tokio::test]
async fn callback_gives_up_when_retry_for_has_passed() {
    let t = tempfile::tempdir().unwrap();
    let server = TestServer::start(Arc::new(|_, _| {
        // Asks for far longer than retry_for: labgrader still makes a last
        // attempt when retry_for runs out, then gives up.
        (
            429,
            vec![("Retry-After", "3600".into())],
            "slow down".into(),
        )
    }))
    .await;
    let mut cfg = callback_config(t.path(), &server.url("/grades"), "");
    cfg.deliver.retry_for = labgrader::config::Seconds(std::time::Duration::from_millis(300));
    let spool = Arc::new(Spool::open(&cfg.spool.dir).unwrap());
    let ev = event("01JCALLBACK0000000000000008", None);
    let res = result(&ev, Status::Graded, Some(1.0), b"x\n", b"");
    deliver::enqueue_result(&cfg, &spool, &ev, &res).unwrap();
    let worker = Worker::start(&cfg, &spool);
    let name = record_file_name(&ev.job_id, Destination::Callback);
    wait_for("the dead record", || {
        spool.path(State::Dead, &name).exists()
    })
    .await;
    worker.stop().await;
    let dead = read_record(&spool, State::Dead, &name).unwrap();
    assert_eq!(
        dead.attempts, 2,
        "the first try and a last one at the deadline"
    );
    let reason = dead.dead_reason.unwrap();
    assert!(reason.contains("deliver.retry_for"), "{reason}");
    assert!(reason.contains("429"), "{reason}");
    server.shutdown().await;
}

#[tokio::test]
async fn callback_sends_stderr_and_hidden_keys_only_when_configured() {
    let t = tempfile::tempdir().unwrap();
    let server = TestServer::start(Arc::new(|_, _| (204, vec![], String::new()))).await;
    let cfg = callback_config(
        t.path(),
        &server.url("/staff"),
        "include_stderr = true\ninclude_hidden = true\n",
    );
    let spool = Arc::new(Spool::open(&cfg.spool.dir).unwrap());
    let ev = event("01JCALLBACK0000000000000004", None);
    let res = result(
        &ev,
        Status::Graded,
        Some(50.0),
        b"out\n",
        STDERR_TEXT.as_bytes(),
    );
    deliver::enqueue_result(&cfg, &spool, &ev, &res).unwrap();
    let worker = Worker::start(&cfg, &spool);
    let name = record_file_name(&ev.job_id, Destination::Callback);
    wait_for("the callback receipt", || receipt_exists(&spool, &name)).await;
    worker.stop().await;

    let seen = server.requests();
    assert_eq!(seen.len(), 1);
    let v: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(v["stderr"], STDERR_TEXT);
    assert_eq!(v["hidden"]["plagiarism_score"], "0.93");
    server.shutdown().await;
}

#[tokio::test]
async fn callback_pending_while_receiver_down_arrives_once_after_restart() {
    let t = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/grades");
    let cfg = callback_config(t.path(), &url, "");
    let spool = Arc::new(Spool::open(&cfg.spool.dir).unwrap());
    let ev = event("01JCALLBACK0000000000000005", None);
    let res = result(&ev, Status::Graded, Some(99.0), b"all good\n", b"");
    deliver::enqueue_result(&cfg, &spool, &ev, &res).unwrap();
    let name = record_file_name(&ev.job_id, Destination::Callback);

    // Receiver down: attempts fail and are recorded on disk.
    let worker = Worker::start(&cfg, &spool);
    wait_for("two failed attempts on disk", || {
        read_record(&spool, State::Outbox, &name).is_some_and(|r| r.attempts >= 2)
    })
    .await;
    worker.stop().await;
    let before = read_record(&spool, State::Outbox, &name).unwrap();
    assert!(before.last_error.is_some());
    assert!(before.first_try_at.is_some());

    // The daemon is down; the receiver comes back; a new worker starts.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the receiver's port is free again");
    let server = TestServer::on(listener, Arc::new(|_, _| (200, vec![], "ok".into())));
    let worker = Worker::start(&cfg, &spool);
    wait_for("the callback receipt", || receipt_exists(&spool, &name)).await;
    worker.stop().await;

    let seen = server.requests();
    assert_eq!(seen.len(), 1, "delivered exactly once after the restart");
    assert_eq!(
        seen[0].header("Idempotency-Key"),
        Some("01JCALLBACK0000000000000005:callback")
    );
    assert_eq!(
        seen[0]
            .header("X-Labgrader-Attempt")
            .unwrap()
            .parse::<u32>()
            .unwrap(),
        before.attempts + 1,
        "the attempt count carried over the restart"
    );
    assert!(spool.list(State::Outbox).unwrap().is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn unreadable_outbox_record_is_quarantined_not_retried_forever() {
    let t = tempfile::tempdir().unwrap();
    let server = TestServer::start(Arc::new(|_, _| (200, vec![], "ok".into()))).await;
    let cfg = callback_config(t.path(), &server.url("/grades"), "");
    let spool = Arc::new(Spool::open(&cfg.spool.dir).unwrap());
    spool
        .publish(State::Outbox, "01JBROKEN.callback.json", b"{not json")
        .unwrap();
    let ev = event("01JCALLBACK0000000000000006", None);
    let res = result(&ev, Status::Graded, Some(3.0), b"x\n", b"");
    deliver::enqueue_result(&cfg, &spool, &ev, &res).unwrap();
    let worker = Worker::start(&cfg, &spool);
    let name = record_file_name(&ev.job_id, Destination::Callback);
    wait_for("the good record's receipt", || {
        receipt_exists(&spool, &name)
    })
    .await;
    wait_for("the broken record in corrupt/", || {
        spool
            .path(State::Corrupt, "01JBROKEN.callback.json")
            .exists()
    })
    .await;
    worker.stop().await;
    assert_eq!(server.requests().len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn record_already_receipted_is_not_sent_again() {
    // Guards the crash window between writing the receipt and removing the
    // outbox record: on restart the record is dropped, not re-sent.
    let t = tempfile::tempdir().unwrap();
    let server = TestServer::start(Arc::new(|_, _| (200, vec![], "ok".into()))).await;
    let cfg = callback_config(t.path(), &server.url("/grades"), "");
    let spool = Arc::new(Spool::open(&cfg.spool.dir).unwrap());
    let ev = event("01JCALLBACK0000000000000007", None);
    let res = result(&ev, Status::Graded, Some(3.0), b"x\n", b"");
    deliver::enqueue_result(&cfg, &spool, &ev, &res).unwrap();
    let name = record_file_name(&ev.job_id, Destination::Callback);
    let sent = spool.root().join(deliver::SENT_DIR);
    std::fs::create_dir_all(&sent).unwrap();
    std::fs::write(sent.join(&name), b"{}").unwrap();
    let worker = Worker::start(&cfg, &spool);
    wait_for("the record to leave the outbox", || {
        !spool.path(State::Outbox, &name).exists()
    })
    .await;
    worker.stop().await;
    assert!(server.requests().is_empty());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deliveries_in_flight_never_exceed_the_concurrency_limit() {
    let t = tempfile::tempdir().unwrap();
    let server = TestServer::start_slow(
        Arc::new(|_, _| (200, vec![], "ok".into())),
        std::time::Duration::from_millis(100),
    )
    .await;
    let cfg = callback_config(t.path(), &server.url("/grades"), "");
    let mut cfg = cfg;
    cfg.deliver.concurrency = 3;
    let spool = Arc::new(Spool::open(&cfg.spool.dir).unwrap());
    let jobs: Vec<String> = (0..20).map(|_| labgrader::spool::new_job_id()).collect();
    for j in &jobs {
        let ev = event(j, None);
        let res = result(&ev, Status::Graded, Some(1.0), b"x\n", b"");
        deliver::enqueue_result(&cfg, &spool, &ev, &res).unwrap();
    }
    let worker = Worker::start(&cfg, &spool);
    wait_for("all 20 receipts", || {
        jobs.iter()
            .all(|j| receipt_exists(&spool, &record_file_name(j, Destination::Callback)))
    })
    .await;
    worker.stop().await;
    assert_eq!(server.requests().len(), 20);
    let most = server
        .max_concurrent
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=3).contains(&most), "{most} requests at once");
    server.shutdown().await;
}

/// Figures, not a test: `cargo test --release --test deliver_callback -- --ignored --nocapture`.
/// Delivers N callbacks to a loopback receiver that holds each answer 5 ms,
/// with concurrency 1 (the baseline) and 8, and prints both rates and their ratio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn figures_callback_throughput_by_concurrency() {
    const N: usize = 300;
    let mut rates = Vec::new();
    for concurrency in [1usize, 8] {
        let t = tempfile::tempdir().unwrap();
        let server = TestServer::start_slow(
            Arc::new(|_, _| (200, vec![], "ok".into())),
            std::time::Duration::from_millis(5),
        )
        .await;
        let mut cfg = callback_config(t.path(), &server.url("/grades"), "");
        cfg.deliver.concurrency = concurrency;
        let spool = Arc::new(Spool::open(&cfg.spool.dir).unwrap());
        let jobs: Vec<String> = (0..N).map(|_| labgrader::spool::new_job_id()).collect();
        let size: usize = std::env::var("FIGURES_STDOUT_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64 << 10);
        let stdout = "x".repeat(size);
        for j in &jobs {
            let ev = event(j, None);
            let res = result(&ev, Status::Graded, Some(1.0), stdout.as_bytes(), b"");
            deliver::enqueue_result(&cfg, &spool, &ev, &res).unwrap();
        }
        let started = std::time::Instant::now();
        let worker = Worker::start(&cfg, &spool);
        wait_for("all receipts", || {
            spool.list(State::Outbox).unwrap().is_empty()
        })
        .await;
        let secs = started.elapsed().as_secs_f64();
        worker.stop().await;
        assert_eq!(server.requests().len(), N);
        let rate = N as f64 / secs;
        println!(
            "concurrency {concurrency}: {N} callbacks ({size} B stdout each) in {secs:.2} s = {rate:.0}/s"
        );
        rates.push(rate);
        server.shutdown().await;
    }
    println!(
        "ratio concurrency 8 / concurrency 1: {:.2}",
        rates[1] / rates[0]
    );
}

#[tokio::test]
async fn a_later_state_supersedes_unsent_earlier_ones_so_none_goes_backwards() {
    let t = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/grades");
    let cfg = callback_config(t.path(), &url, "");
    let spool = Arc::new(Spool::open(&cfg.spool.dir).unwrap());
    let ev = event("01JCALLBACK0000000000000009", None);
    // Queued is tried while the receiver is down...
    deliver::enqueue_callback_stage(&cfg, &spool, &ev, deliver::JobStage::Queued).unwrap();
    let worker = Worker::start(&cfg, &spool);
    let queued = record_file_name(&ev.job_id, Destination::CallbackQueued);
    wait_for("a failed attempt of the queued callback", || {
        read_record(&spool, State::Outbox, &queued).is_some_and(|r| r.attempts >= 1)
    })
    .await;
    worker.stop().await;
    // ...running and the result come; then the receiver and a new worker.
    deliver::enqueue_callback_stage(&cfg, &spool, &ev, deliver::JobStage::Running).unwrap();
    let res = result(&ev, Status::Graded, Some(80.0), b"ok\n", b"");
    deliver::enqueue_result(&cfg, &spool, &ev, &res).unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let server = TestServer::on(listener, Arc::new(|_, _| (200, vec![], "ok".into())));
    let worker = Worker::start(&cfg, &spool);
    let last = record_file_name(&ev.job_id, Destination::Callback);
    wait_for("the result's receipt", || receipt_exists(&spool, &last)).await;
    wait_for("the outbox to empty", || {
        spool.list(State::Outbox).unwrap().is_empty()
    })
    .await;
    worker.stop().await;
    let states: Vec<String> = server
        .requests()
        .iter()
        .map(|c| {
            let v: serde_json::Value = serde_json::from_slice(&c.body).unwrap();
            v["status"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        states,
        ["graded"],
        "queued/running are never sent after the result"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn stage_callbacks_go_out_in_order_each_with_its_own_key() {
    let t = tempfile::tempdir().unwrap();
    let server = TestServer::start(Arc::new(|_, _| (200, vec![], "ok".into()))).await;
    let cfg = callback_config(t.path(), &server.url("/grades"), "");
    let spool = Arc::new(Spool::open(&cfg.spool.dir).unwrap());
    let ev = event("01JCALLBACK0000000000000010", None);
    let worker = Worker::start(&cfg, &spool);
    for stage in [deliver::JobStage::Queued, deliver::JobStage::Running] {
        deliver::enqueue_callback_stage(&cfg, &spool, &ev, stage).unwrap();
        let name = record_file_name(&ev.job_id, stage.callback());
        wait_for("the stage's receipt", || receipt_exists(&spool, &name)).await;
    }
    worker.stop().await;
    let seen = server.requests();
    let keys: Vec<_> = seen
        .iter()
        .map(|c| c.header("Idempotency-Key").unwrap().to_string())
        .collect();
    assert_eq!(
        keys,
        [
            "01JCALLBACK0000000000000010:callback-queued",
            "01JCALLBACK0000000000000010:callback-running"
        ]
    );
    for c in &seen {
        assert_eq!(
            c.header("X-Labgrader-Signature"),
            Some(callback_signature(SECRET, &c.body).as_str())
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["job_id"].as_str()),
        (Some("queued"), Some(ev.job_id.as_str()))
    );
    server.shutdown().await;
}
