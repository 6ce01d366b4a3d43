//! The email destination against a real SMTP server (Debian's
//! python3-aiosmtpd, started per test by `tests/common/smtp_sink.py`;
//! `scripts/setup/smtp.sh` installs it). Messages are checked as Python's
//! email package parses them on arrival.

mod common;

use std::sync::Arc;

use common::{deliver::*, host::*, http::*, smtp::*, wait::*};
use labgrader::deliver::{self, Destination, record_file_name};
use labgrader::result::Status;
use labgrader::spool::{Spool, State};

const STDERR_TEXT: &str = "STAFF-ONLY-7c1e: grader helper traceback";

fn email_config(dir: &std::path::Path, port: u16, extra: &str) -> labgrader::config::Config {
    config(
        dir,
        &format!(
            "\n[email]\nurl = \"smtp://127.0.0.1:{port}\"\nfrom = \"Lab Grader <grader@example.edu>\"\n{extra}\n"
        ),
    )
}

fn stdout_text() -> String {
    // A line far longer than 78 columns, trailing spaces, a tab, UTF-8,
    // a line starting with "From " and one with a lone dot: all must
    // arrive exactly as printed.
    format!(
        "Running 3 tests for lab1 ✓ passé\n{}\nFrom here on: edge cases   \n.\n\tindented\n<summary>\ngrade_total = 87.5\n</summary>\n",
        "long-line=".repeat(30)
    )
}

#[tokio::test]
async fn email_one_message_per_job_with_recipient_subject_body_and_no_stderr() {
    let t = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(free_port(), &t.path().join("mail"), None).await;
    let cfg = email_config(t.path(), sink.port, "");
    let spool = Arc::new(Spool::open(&cfg.spool.dir).unwrap());

    let graded = event("01JEMAIL000000000000000001", Some("john@example.com"));
    let graded_res = result(
        &graded,
        Status::Graded,
        Some(87.5),
        stdout_text().as_bytes(),
        STDERR_TEXT.as_bytes(),
    );
    let late = event("01JEMAIL000000000000000002", Some("john@example.com"));
    let late_res = result(
        &late,
        Status::Timeout,
        None,
        b"test 1 ok\ntest 2 ...\n",
        STDERR_TEXT.as_bytes(),
    );
    for _ in 0..2 {
        deliver::enqueue_result(&cfg, &spool, &graded, &graded_res).unwrap();
        deliver::enqueue_result(&cfg, &spool, &late, &late_res).unwrap();
    }
    let worker = Worker::start(&cfg, &spool);
    for ev in [&graded, &late] {
        let name = record_file_name(&ev.job_id, Destination::Email);
        wait_for("the email receipt", || receipt_exists(&spool, &name)).await;
    }
    worker.stop().await;

    let msgs = sink.messages();
    assert_eq!(msgs.len(), 2, "one message per job: {msgs:#?}");
    let (m1, m2) = if msgs[0]["headers"]["subject"]
        .as_str()
        .unwrap()
        .contains("grade 87.5")
    {
        (&msgs[0], &msgs[1])
    } else {
        (&msgs[1], &msgs[0])
    };

    assert_eq!(m1["rcpt_tos"], serde_json::json!(["john@example.com"]));
    assert_eq!(m1["mail_from"], "grader@example.edu");
    assert_eq!(
        m1["headers"]["subject"],
        "[labgrader] course/2026/jsmith/lab1 da156088: grade 87.5"
    );
    assert!(
        m1["headers"]["to"]
            .as_str()
            .unwrap()
            .contains("john@example.com")
    );
    assert!(
        m1["headers"]["date"]
            .as_str()
            .is_some_and(|d| !d.is_empty())
    );
    assert_eq!(
        m1["headers"]["message-id"], "<01JEMAIL000000000000000001.email@example.edu>",
        "Message-ID derives from the idempotency key"
    );
    assert_eq!(m1["headers"]["mime-version"], "1.0");
    assert_eq!(m1["content_type"], "text/plain");
    assert_eq!(m1["body_charset"], "utf-8");
    assert_eq!(m1["defects"], serde_json::json!([]), "well-formed MIME");
    let body = m1["body"].as_str().unwrap().replace("\r\n", "\n");
    assert!(
        body.starts_with(&stdout_text()),
        "stdout arrives exactly as printed:\n{body}"
    );
    assert!(body.contains("01JEMAIL000000000000000001"), "{body}");

    assert_eq!(
        m2["headers"]["subject"],
        "[labgrader] course/2026/jsmith/lab1 da156088: timed out after 120 s"
    );
    assert!(m2["body"].as_str().unwrap().contains("test 2 ..."));

    for raw in raw_messages_in(&sink.dir) {
        let raw = String::from_utf8_lossy(&raw);
        assert!(
            !raw.contains("STAFF-ONLY"),
            "stderr leaked into a message:\n{raw}"
        );
    }
    for m in &msgs {
        assert!(!m.to_string().contains("STAFF-ONLY"));
        assert!(!m.to_string().contains("plagiarism"), "hidden keys leaked");
    }
    sink.stop().await;
}

#[tokio::test]
async fn email_with_non_utf8_stdout_still_arrives() {
    let t = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(free_port(), &t.path().join("mail"), None).await;
    let cfg = email_config(t.path(), sink.port, "");
    let spool = Arc::new(Spool::open(&cfg.spool.dir).unwrap());
    let ev = event("01JEMAIL000000000000000003", Some("john@example.com"));
    let stdout: &[u8] =
        b"caf\xe9 latin-1 output\n\xff\xfe binary junk \x00 end\ngrade_total = 10\n";
    let res = result(&ev, Status::Graded, Some(10.0), stdout, b"");
    deliver::enqueue_result(&cfg, &spool, &ev, &res).unwrap();
    let worker = Worker::start(&cfg, &spool);
    let name = record_file_name(&ev.job_id, Destination::Email);
    wait_for("the email receipt", || receipt_exists(&spool, &name)).await;
    worker.stop().await;

    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(m["defects"], serde_json::json!([]));
    let body = m["body"].as_str().unwrap();
    assert!(body.contains("caf\u{FFFD} latin-1 output"), "{body}");
    assert!(body.contains("not valid UTF-8"), "{body}");
    let att = &m["attachments"][0];
    assert_eq!(att["filename"], "stdout.txt");
    let data = decode_b64(att["data_b64"].as_str().unwrap());
    assert_eq!(data, stdout, "the exact bytes are attached");
    sink.stop().await;
}

#[tokio::test]
async fn email_delivered_when_the_smtp_server_comes_back() {
    let t = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = email_config(t.path(), port, "");
    let spool = Arc::new(Spool::open(&cfg.spool.dir).unwrap());
    let ev = event("01JEMAIL000000000000000004", Some("john@example.com"));
    let res = result(&ev, Status::Graded, Some(42.0), b"fine\n", b"");
    deliver::enqueue_result(&cfg, &spool, &ev, &res).unwrap();
    let name = record_file_name(&ev.job_id, Destination::Email);

    let worker = Worker::start(&cfg, &spool);
    wait_for("two failed attempts while the server is down", || {
        read_record(&spool, State::Outbox, &name).is_some_and(|r| r.attempts >= 2)
    })
    .await;
    let err = read_record(&spool, State::Outbox, &name)
        .unwrap()
        .last_error
        .unwrap();
    assert!(err.contains("SMTP"), "{err}");

    let sink = SmtpSink::start(port, &t.path().join("mail"), None).await;
    wait_for("the email receipt", || receipt_exists(&spool, &name)).await;
    worker.stop().await;
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1, "delivered once when the server returned");
    assert_eq!(msgs[0]["rcpt_tos"], serde_json::json!(["john@example.com"]));
    assert!(spool.list(State::Dead).unwrap().is_empty());
    sink.stop().await;
}

#[tokio::test]
async fn email_with_required_starttls_is_never_sent_in_clear() {
    // The sink offers no STARTTLS: with `starttls = "required"` nothing may
    // be sent; the delivery waits (retried) with an error that says why.
    let t = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(free_port(), &t.path().join("mail"), None).await;
    let cfg = email_config(t.path(), sink.port, "starttls = \"required\"\n");
    let spool = Arc::new(Spool::open(&cfg.spool.dir).unwrap());
    let ev = event("01JEMAIL000000000000000009", Some("john@example.com"));
    let res = result(&ev, Status::Graded, Some(2.0), b"secret grade\n", b"");
    deliver::enqueue_result(&cfg, &spool, &ev, &res).unwrap();
    let name = record_file_name(&ev.job_id, Destination::Email);
    let worker = Worker::start(&cfg, &spool);
    wait_for("a failed attempt", || {
        read_record(&spool, State::Outbox, &name).is_some_and(|r| r.attempts >= 1)
    })
    .await;
    worker.stop().await;
    let rec = read_record(&spool, State::Outbox, &name).unwrap();
    let err = rec.last_error.unwrap();
    assert!(err.to_lowercase().contains("tls"), "{err}");
    assert!(sink.messages().is_empty(), "a message went out without TLS");
    assert!(raw_messages_in(&sink.dir).is_empty());
    sink.stop().await;
}

#[tokio::test]
async fn email_authenticates_with_username_and_password_secret() {
    let t = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(
        free_port(),
        &t.path().join("mail"),
        Some("grader:s3cret pass"),
    )
    .await;
    let pw = secret_file(t.path(), "smtp.password", "s3cret pass\n");
    let cfg = email_config(
        t.path(),
        sink.port,
        &format!("username = \"grader\"\npassword_file = {pw:?}\n"),
    );
    let spool = Arc::new(Spool::open(&cfg.spool.dir).unwrap());
    let ev = event("01JEMAIL000000000000000005", Some("john@example.com"));
    let res = result(&ev, Status::Graded, Some(1.0), b"ok\n", b"");
    deliver::enqueue_result(&cfg, &spool, &ev, &res).unwrap();
    let worker = Worker::start(&cfg, &spool);
    let name = record_file_name(&ev.job_id, Destination::Email);
    wait_for("the email receipt", || receipt_exists(&spool, &name)).await;
    worker.stop().await;
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["auth"], "grader");
    // The password never reaches the spool.
    for entry in walkdir::WalkDir::new(&cfg.spool.dir) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            assert!(!text.contains("s3cret"), "{}", entry.path().display());
        }
    }
    sink.stop().await;
}

#[tokio::test]
async fn email_recipient_from_gitlab_then_template_else_dead_with_reason() {
    let t = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(free_port(), &t.path().join("mail"), None).await;
    // GitLab knows user 4 (an admin token sees the private `email` too:
    // never used); user 5 is unknown.
    let gitlab = TestServer::start(Arc::new(|req, _| {
        if req.header("PRIVATE-TOKEN") != Some("glpat-test") {
            return (401, vec![], r#"{"message":"401 Unauthorized"}"#.into());
        }
        match req.path.as_str() {
            "/api/v4/users/4" => (
                200,
                vec![("Content-Type", "application/json".into())],
                r#"{"id":4,"username":"jsmith","name":"John Smith","state":"active","email":"jsmith@private.example.edu","public_email":"john@public.example.edu"}"#.into(),
            ),
            _ => (404, vec![], r#"{"message":"404 User Not Found"}"#.into()),
        }
    }))
    .await;
    let token = secret_file(t.path(), "gitlab.token", "glpat-test");
    let base = |template: &str| {
        email_config(
            t.path(),
            sink.port,
            &format!(
                "address_template = {template:?}\n[gitlab]\nurl = {:?}\ntoken_file = {token:?}\ncommit_status = false\n",
                gitlab.url("")
            ),
        )
    };
    let cfg = base("{username}@students.example.edu");
    let spool = Arc::new(Spool::open(&cfg.spool.dir).unwrap());

    // 1. Hidden email in the event: GitLab's user record gives the public one.
    let ev1 = event("01JEMAIL000000000000000006", Some("[REDACTED]"));
    deliver::enqueue_result(
        &cfg,
        &spool,
        &ev1,
        &result(&ev1, Status::Graded, Some(5.0), b"a\n", b""),
    )
    .unwrap();
    // 2. No email and GitLab knows no such user: the template.
    let mut ev2 = event("01JEMAIL000000000000000007", None);
    ev2.pusher.id = Some(5);
    ev2.pusher.username = Some("asmith".into());
    deliver::enqueue_result(
        &cfg,
        &spool,
        &ev2,
        &result(&ev2, Status::Graded, Some(6.0), b"b\n", b""),
    )
    .unwrap();
    let worker = Worker::start(&cfg, &spool);
    for ev in [&ev1, &ev2] {
        let name = record_file_name(&ev.job_id, Destination::Email);
        wait_for("the email receipt", || receipt_exists(&spool, &name)).await;
    }
    worker.stop().await;
    let mut rcpts: Vec<String> = sink
        .messages()
        .iter()
        .map(|m| m["rcpt_tos"][0].as_str().unwrap().to_string())
        .collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        ["asmith@students.example.edu", "john@public.example.edu"]
    );

    // 3. No email, unknown user, no template: dead, saying why.
    let cfg = base("");
    let mut ev3 = event("01JEMAIL000000000000000008", None);
    ev3.pusher.id = Some(5);
    deliver::enqueue_result(
        &cfg,
        &spool,
        &ev3,
        &result(&ev3, Status::Graded, Some(7.0), b"c\n", b""),
    )
    .unwrap();
    let worker = Worker::start(&cfg, &spool);
    let name = record_file_name(&ev3.job_id, Destination::Email);
    wait_for("the dead record", || {
        spool.path(State::Dead, &name).exists()
    })
    .await;
    worker.stop().await;
    let reason = read_record(&spool, State::Dead, &name)
        .unwrap()
        .dead_reason
        .unwrap();
    assert!(reason.contains("no email address"), "{reason}");
    assert!(reason.contains("address_template"), "{reason}");
    assert_eq!(sink.messages().len(), 2);
    sink.stop().await;
    gitlab.shutdown().await;
}

fn decode_b64(s: &str) -> Vec<u8> {
    use base64::Engine;
    let s: String = s.split_ascii_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[tokio::test]
async fn each_author_gets_a_message_of_their_own_and_a_retry_sends_only_the_missing_one() {
    let t = tempfile::tempdir().unwrap();
    let mail = t.path().join("mail");
    let sink = SmtpSink::start(free_port(), &mail, None).await;
    // carol's server says "try later" the first time.
    std::fs::write(mail.join("defer-rcpt"), "carol@uni.example\n").unwrap();
    let cfg = email_config(t.path(), sink.port, "");
    let spool = Arc::new(Spool::open(&cfg.spool.dir).unwrap());
    let ev = event("01JEMAIL000000000000000021", Some("john@example.com"));
    let mut res = result(&ev, Status::Graded, Some(90.0), b"all good\n", b"");
    // The verified authors, as course policy records them.
    res.extra.insert(
        "authors".into(),
        serde_json::json!([
            {"username": "jsmith", "email": "john@example.com", "name": "John Smith"},
            {"username": "bob", "email": "bob@uni.example", "name": null},
            {"username": "carol", "email": "carol@uni.example", "name": null}
        ]),
    );
    res.extra.insert(
        "ignored_authors".into(),
        serde_json::json!([{"username": "eve", "reason": "not a member of course/2026/jsmith/lab1"}]),
    );
    deliver::enqueue_result(&cfg, &spool, &ev, &res).unwrap();
    let name = record_file_name(&ev.job_id, Destination::Email);
    let worker = Worker::start(&cfg, &spool);
    wait_for("the first attempt", || {
        read_record(&spool, State::Outbox, &name).is_some_and(|r| r.attempts >= 1)
    })
    .await;
    let rec = read_record(&spool, State::Outbox, &name).unwrap();
    let labgrader::deliver::Payload::Email(p) = &rec.payload else {
        panic!("not an email record")
    };
    assert_eq!(p.delivered_to, ["john@example.com", "bob@uni.example"]);
    assert_eq!(sink.messages().len(), 2);
    std::fs::remove_file(mail.join("defer-rcpt")).unwrap();
    wait_for("the email receipt", || receipt_exists(&spool, &name)).await;
    worker.stop().await;
    let msgs = sink.messages();
    let mut rcpts: Vec<String> = msgs
        .iter()
        .map(|m| {
            assert_eq!(m["rcpt_tos"].as_array().unwrap().len(), 1, "{m}");
            m["rcpt_tos"][0].as_str().unwrap().to_string()
        })
        .collect();
    rcpts.sort();
    // Each once: the retry did not send john's and bob's again.
    assert_eq!(
        rcpts,
        ["bob@uni.example", "carol@uni.example", "john@example.com"]
    );
    let mut ids = Vec::new();
    for m in &msgs {
        let h = &m["headers"];
        assert!(h.get("cc").is_none(), "{m}");
        let to = h["to"].as_str().unwrap();
        assert!(to.contains(m["rcpt_tos"][0].as_str().unwrap()), "{m}");
        assert!(
            m["body"]
                .as_str()
                .unwrap()
                .contains("not credited from labgrader.json: eve (not a member"),
            "{m}"
        );
        ids.push(h["message-id"].as_str().unwrap().to_string());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "one Message-ID per copy: {ids:?}");
    sink.stop().await;
}
