//! Staff alerts (`[alerts]`) through the real `labgrader grader` binary
//! and a real SMTP server (aiosmtpd): an outage that ends three jobs in
//! `infra_error` sends staff one message listing all three, not three;
//! the students' verdict then says staff were alerted; and a restart does
//! not send the batch again.

mod common;

use std::time::Duration;

use common::daemon;
use common::host::free_port;
use common::smtp::SmtpSink;
use common::wait::wait_blocking;
use common::world::Fixture;
use labgrader::result::{JobResult, Status};

const WAIT: Duration = Duration::from_secs(120);
const STAFF: &str = "staff@uni.example";

fn to_staff(sink: &SmtpSink) -> Vec<serde_json::Value> {
    sink.messages()
        .into_iter()
        .filter(|m| {
            m["rcpt_tos"]
                .as_array()
                .is_some_and(|r| r.iter().any(|a| a == STAFF))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_infra_errors_in_a_row_send_staff_one_alert_listing_all_three() {
    let f = Fixture::new();
    let sink = SmtpSink::start(free_port(), &f.tmp.path().join("mail"), None).await;
    f.tests_repo("lab31", &common::world::simple_test_all("5"));
    // The student repositories do not exist: every fetch fails, the
    // grader's fault, and with no retries each job ends infra_error.
    let events: Vec<_> = ["ann", "ben", "cid"]
        .iter()
        .map(|u| f.event(&format!("course/{u}/lab31"), &"ab".repeat(20)))
        .collect();
    for ev in &events {
        f.enqueue(ev);
    }
    let cfg = f.write_config(&format!(
        "infra_retries = 0\n\
         [email]\nurl = \"smtp://127.0.0.1:{port}\"\nfrom = \"grader@uni.example\"\n\
         address_template = \"{{username}}@students.example\"\n\
         [alerts]\nemail = [\"{STAFF}\"]\ngather = \"20s\"\nwindow = \"1h\"\n",
        port = sink.port
    ));
    let log = f.tmp.path().join("daemon.log");
    let grader = daemon::start(&cfg, &log);
    wait_blocking("the alert email", WAIT, || !to_staff(&sink).is_empty());
    let results: Vec<JobResult> = events
        .iter()
        .map(|ev| {
            let b = std::fs::read(f.done_dir(&ev.job_id).join("result.json")).unwrap();
            serde_json::from_slice(&b).unwrap()
        })
        .collect();
    for r in &results {
        assert_eq!(r.status, Status::InfraError, "{r:?}");
        assert!(
            r.reason.as_deref().unwrap().contains("staff were alerted"),
            "{r:?}"
        );
    }
    let alerts = f.spool_dir.join("alerts");
    wait_blocking("the batch to be closed", WAIT, || {
        !alerts.join("batch.json").exists()
    });
    daemon::stop(grader);

    let mail = to_staff(&sink);
    assert_eq!(mail.len(), 1, "{mail:#?}");
    let subject = mail[0]["headers"]["subject"].as_str().unwrap();
    assert_eq!(subject, "[labgrader] 3 jobs ended infra_error", "{subject}");
    let body = mail[0]["body"].as_str().unwrap();
    for ev in &events {
        assert!(body.contains(&ev.job_id), "{body}");
        assert!(body.contains(&ev.project.path), "{body}");
    }
    // Nothing left to send, and a restart sends nothing again.
    let left: Vec<_> = std::fs::read_dir(&alerts)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|n| n != "state.json")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let again = daemon::start(&cfg, &log);
    // The worker's first pass (outbox rescan, alerts) is done once it
    // logs that it started and the next poll has come and gone.
    wait_blocking("the restarted worker", WAIT, || {
        std::fs::read_to_string(&log)
            .unwrap()
            .matches("delivery worker started")
            .count()
            == 2
    });
    std::thread::sleep(Duration::from_secs(3));
    daemon::stop(again);
    assert_eq!(to_staff(&sink).len(), 1);
    sink.stop().await;
}

/// A result callback the receiver refuses for good (410) goes to `dead/`;
/// staff get one signed alert callback at `[alerts] callback_url` naming
/// the job and the destination, and the alert's own delivery is never
/// alerted about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_given_up_is_one_signed_alert_callback() {
    use common::deliver::callback_signature;
    use common::http::TestServer;
    use std::sync::Arc;
    const SECRET: &str = "alert-callback-secret";
    let f = Fixture::new();
    let receiver = TestServer::start(Arc::new(|req: &common::http::Seen, _| {
        if req.path == "/grades" {
            (410, vec![], "gone".into())
        } else {
            (200, vec![], "ok".into())
        }
    }))
    .await;
    f.tests_repo("lab32", &common::world::simple_test_all("5"));
    let p = "course/dee/lab32";
    let sha = f.push(p, |w| std::fs::write(w.join("x"), "1").unwrap());
    let ev = f.event(p, &sha);
    f.enqueue(&ev);
    let secret = f.tmp.path().join("callback-secret");
    std::fs::write(&secret, SECRET).unwrap();
    let cfg = f.write_config(&format!(
        "[email]\nurl = \"\"\n\
         [callback]\nurl = \"{grades}\"\nsecret_file = \"{secret}\"\n\
         [alerts]\ncallback_url = \"{alerts}\"\ngather = \"0s\"\n",
        grades = receiver.url("/grades"),
        secret = secret.display(),
        alerts = receiver.url("/alerts"),
    ));
    let log = f.tmp.path().join("daemon.log");
    let grader = daemon::start(&cfg, &log);
    let alerts = || -> Vec<common::http::Seen> {
        receiver
            .requests()
            .into_iter()
            .filter(|r| r.path == "/alerts")
            .collect()
    };
    wait_blocking("the alert callback", WAIT, || !alerts().is_empty());
    daemon::stop(grader);
    let got = alerts();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].header("X-Labgrader-Signature"),
        Some(callback_signature(SECRET, &got[0].body).as_str())
    );
    let body: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["kind"], "alerts");
    assert_eq!(body["summary"], "[labgrader] 1 delivery given up");
    let a = &body["alerts"][0];
    assert_eq!(a["kind"], "delivery_dead");
    assert_eq!(a["job_id"], ev.job_id.as_str());
    // The first of the job's callbacks given up (its `running` stage, or
    // the result): with gather = 0 the first is sent at once; the next
    // waits for the window.
    let detail = a["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("callback") && detail.contains("answered 410"),
        "{a}"
    );
}

/// The spool under `[spool] min_free`: one low-space alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn going_under_min_free_is_one_low_space_alert() {
    let f = Fixture::new();
    let sink = SmtpSink::start(free_port(), &f.tmp.path().join("mail"), None).await;
    let text = f
        .config_text(&format!(
            "[email]\nurl = \"smtp://127.0.0.1:{port}\"\nfrom = \"grader@uni.example\"\n\
             [alerts]\nemail = [\"{STAFF}\"]\ngather = \"0s\"\n",
            port = sink.port
        ))
        .replace("[spool]\n", "[spool]\nmin_free = \"1000000TiB\"\n");
    let cfg = f.tmp.path().join("labgrader.toml");
    std::fs::write(&cfg, text).unwrap();
    let log = f.tmp.path().join("daemon.log");
    let grader = daemon::start(&cfg, &log);
    wait_blocking("the low-space alert", WAIT, || !to_staff(&sink).is_empty());
    daemon::stop(grader);
    let mail = to_staff(&sink);
    assert_eq!(mail.len(), 1);
    assert_eq!(
        mail[0]["headers"]["subject"].as_str().unwrap(),
        "[labgrader] 1 low-space warning"
    );
    assert!(
        mail[0]["body"]
            .as_str()
            .unwrap()
            .contains("[spool] min_free")
    );
    sink.stop().await;
}
