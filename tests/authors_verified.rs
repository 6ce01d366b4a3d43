//! Manifest authors are verified (issue 14): through the real grader on
//! real git repositories, against a local server that answers GitLab's
//! members and users APIs as GitLab's docs say, with a real SMTP server.
//! A name in `authors` counts only when it is a member of the student's
//! project who can push to it; the pusher must be listed; the staff
//! exemption is the pusher's; mail goes only to verified authors, one
//! message each, never to a private address. A member other than the
//! pusher counts only once they have pushed to the project themselves (or
//! staff put both in one roster group): a student who adds a classmate as
//! a member cannot spend the classmate's slots.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::deliver::Worker;
use common::host::free_port;
use common::http::TestServer;
use common::smtp::{SmtpSink, raw_messages_in};
use common::wait::wait_for;
use common::world::{Fixture, simple_test_all};
use labgrader::gradebook::{Filter, Gradebook, Select};
use labgrader::result::Status;

const WAIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "glpat-members-test";

/// GitLab for project 7 (`course/alice/lab1`): alice and bob are
/// Developers, carol is an inherited Reporter (the course group), prof
/// is a Maintainer. eve exists on GitLab but is no member. An admin token
/// sees every private `email`; only bob and prof made an address public.
async fn gitlab() -> TestServer {
    TestServer::start(Arc::new(|req, _| {
        if req.header("PRIVATE-TOKEN") != Some(TOKEN) {
            return (401, vec![], r#"{"message":"401 Unauthorized"}"#.into());
        }
        let json = vec![("Content-Type", "application/json".to_string())];
        let user = |id: u32, name: &str, public: &str| {
            format!(
                r#"{{"id":{id},"username":"{name}","name":"{name}","state":"active","email":"{name}@private.example","public_email":"{public}"}}"#
            )
        };
        match req.path.as_str() {
            "/api/v4/projects/7/members/all" => (
                200,
                json,
                r#"[{"id":1,"username":"alice","name":"Alice","state":"active","access_level":30},
                    {"id":2,"username":"bob","name":"Bob","state":"active","access_level":30},
                    {"id":3,"username":"carol","name":"Carol","state":"active","access_level":20},
                    {"id":9,"username":"prof","name":"Prof","state":"active","access_level":40}]"#
                    .into(),
            ),
            "/api/v4/users/1" => (200, json, user(1, "alice", "")),
            "/api/v4/users/2" => (200, json, user(2, "bob", "bob@public.example")),
            "/api/v4/users/3" => (200, json, user(3, "carol", "")),
            "/api/v4/users/4" => (200, json, user(4, "eve", "eve@public.example")),
            "/api/v4/users/9" => (200, json, user(9, "prof", "prof@public.example")),
            // `?username=NAME` (the query is not in `req.path`): every user,
            // which a lookup by name then searches, as GitLab's list would.
            "/api/v4/users" => (
                200,
                json,
                format!(
                    "[{},{},{},{},{}]",
                    user(1, "alice", ""),
                    user(2, "bob", "bob@public.example"),
                    user(3, "carol", ""),
                    user(4, "eve", "eve@public.example"),
                    user(9, "prof", "prof@public.example")
                ),
            ),
            _ => (404, vec![], r#"{"message":"404 Not Found"}"#.into()),
        }
    }))
    .await
}

/// Grader config: the fake GitLab's API with a token (clone URLs stay
/// file://), email to `smtp_port`, `assignment` keys for lab1.
fn config(
    f: &Fixture,
    gitlab: &TestServer,
    smtp_port: u16,
    assignment: &str,
) -> Arc<labgrader::config::Config> {
    let token = f.tmp.path().join("gitlab-token");
    std::fs::write(&token, TOKEN).unwrap();
    let extra = format!(
        "workers = 1\n[assignments.lab1]\n{assignment}\n\
         [email]\nurl = \"smtp://127.0.0.1:{smtp_port}\"\nfrom = \"labgrader <grader@example.edu>\"\n\
         [deliver]\nbackoff_min = \"50ms\"\nbackoff_max = \"200ms\"\n"
    );
    let text = f.config_text(&extra).replacen(
        "[gitlab]\n",
        &format!(
            "[gitlab]\nurl = {:?}\ntoken_file = {:?}\ncommit_status = false\n",
            gitlab.url(""),
            token
        ),
        1,
    );
    Arc::new(labgrader::config::Config::from_toml(&text, None).unwrap())
}

fn manifest(authors: &str) -> String {
    format!("{{\"authors\": {authors}}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_member_is_ignored_and_no_mail_reaches_a_non_member_or_a_private_address() {
    let f = Fixture::new();
    let gl = gitlab().await;
    let sink = SmtpSink::start(free_port(), &f.tmp.path().join("mail"), None).await;
    f.tests_repo("lab1", &simple_test_all("80"));
    let sha = f.push("course/alice/lab1", |w| {
        std::fs::write(
            w.join("labgrader.json"),
            manifest(r#"["alice", "bob", "eve", "carol"]"#),
        )
        .unwrap()
    });
    let cfg = config(&f, &gl, sink.port, "");
    // bob pushed to the project once before (alone): his participation.
    let bob_sha = f.push("course/alice/lab1", |_| {});
    let bob_ev = pushed_by(&f, "bob", &bob_sha, 0);
    f.enqueue(&bob_ev);
    let mut ev = f.event("course/alice/lab1", &sha);
    ev.received_at = chrono::Utc::now() + chrono::Duration::seconds(1);
    ev.pusher.email = Some("alice@commit.example".into());
    let d = f.start(cfg.clone());
    f.wait_done(&bob_ev.job_id, WAIT).await;
    f.enqueue(&ev);
    let r = f.wait_done(&ev.job_id, WAIT).await;
    d.stop().await;
    assert_eq!(r.status, Status::Graded, "{:?}", r.reason);
    let credited: Vec<&str> = r.extra["authors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["username"].as_str().unwrap())
        .collect();
    assert_eq!(credited, ["alice", "bob"]);
    assert_eq!(
        r.extra["unknown_authors"],
        serde_json::json!(["eve", "carol"])
    );
    assert_eq!(r.extra["authors_source"], "gitlab");
    let ignored = r.extra["ignored_authors"].to_string();
    assert!(
        ignored.contains("not a member of course/alice/lab1"),
        "{ignored}"
    );
    assert!(ignored.contains("who can push to it"), "{ignored}");
    // Only verified authors get a gradebook row.
    let gb = Gradebook::open(&f.spool_dir.join("gradebook.sqlite")).unwrap();
    let rows = labgrader::policy::export::rows_from_results(
        &gb.select(Select::All, &Filter::default()).unwrap(),
    );
    let mut who: Vec<&str> = rows
        .iter()
        .filter(|r| r.job == ev.job_id)
        .map(|r| r.username.as_str())
        .collect();
    who.sort();
    assert_eq!(who, ["alice", "bob"]);

    let spool = f.spool();
    let worker = Worker::start(&cfg, &spool);
    let name =
        labgrader::deliver::record_file_name(&ev.job_id, labgrader::deliver::Destination::Email);
    wait_for("the email receipt", || {
        common::deliver::receipt_exists(&spool, &name)
    })
    .await;
    worker.stop().await;
    let mut rcpts: Vec<Vec<String>> = sink
        .messages()
        .iter()
        .map(|m| {
            m["rcpt_tos"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        })
        .collect();
    rcpts.sort();
    // One message per verified author, each to one address: the push's
    // email for the pusher, the public one for bob.
    // (bob's own earlier push mailed him alone, at that push's email.)
    assert_eq!(
        rcpts,
        [
            vec!["alice@commit.example".to_string()],
            vec!["bob@commit.example".to_string()],
            vec!["bob@public.example".to_string()]
        ]
    );
    for raw in raw_messages_in(&sink.dir) {
        let raw = String::from_utf8_lossy(&raw);
        if raw.contains("bob@commit.example") {
            continue;
        }
        assert!(!raw.contains("private.example"), "{raw}");
        assert!(!raw.contains("eve@"), "{raw}");
        assert!(!raw.to_ascii_lowercase().contains("\ncc:"), "{raw}");
        // The pusher's result lists who was not credited.
        assert!(
            raw.contains("not credited from labgrader.json: eve"),
            "{raw}"
        );
    }
    sink.stop().await;
    gl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pusher_not_in_the_list_is_refused_and_only_the_pusher_is_told() {
    let f = Fixture::new();
    let gl = gitlab().await;
    let sink = SmtpSink::start(free_port(), &f.tmp.path().join("mail"), None).await;
    f.tests_repo("lab1", &simple_test_all("80"));
    let sha = f.push("course/alice/lab1", |w| {
        std::fs::write(w.join("labgrader.json"), manifest(r#"["bob", "eve"]"#)).unwrap()
    });
    let cfg = config(&f, &gl, sink.port, "quota = \"5/1h\"\n");
    let mut ev = f.event("course/alice/lab1", &sha);
    ev.pusher.email = Some("alice@commit.example".into());
    f.enqueue(&ev);
    let d = f.start(cfg.clone());
    let r = f.wait_done(&ev.job_id, WAIT).await;
    d.stop().await;
    assert_eq!(r.status, Status::InvalidManifest);
    let reason = r.reason.clone().unwrap();
    assert!(
        reason.contains("does not list you (alice), who pushed this commit"),
        "{reason}"
    );
    // Nobody was charged and nobody listed got a row.
    let ledger = labgrader::policy::QuotaLedger::in_spool(&f.spool_dir).unwrap();
    for who in ["alice", "bob", "eve"] {
        assert_eq!(
            ledger
                .used("lab1", who, "5/1h".parse().unwrap(), chrono::Utc::now())
                .unwrap(),
            0,
            "{who}"
        );
    }
    let spool = f.spool();
    let worker = Worker::start(&cfg, &spool);
    let name =
        labgrader::deliver::record_file_name(&ev.job_id, labgrader::deliver::Destination::Email);
    wait_for("the email receipt", || {
        common::deliver::receipt_exists(&spool, &name)
    })
    .await;
    worker.stop().await;
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(
        msgs[0]["rcpt_tos"],
        serde_json::json!(["alice@commit.example"])
    );
    sink.stop().await;
    gl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_staff_gives_no_quota_exemption() {
    let f = Fixture::new();
    let gl = gitlab().await;
    f.tests_repo("lab1", &simple_test_all("80"));
    // Only staff listed: once the whole trick for an exempt submission.
    let staff_only = f.push("course/alice/lab1", |w| {
        std::fs::write(w.join("labgrader.json"), manifest(r#"["prof"]"#)).unwrap()
    });
    let with_staff = f.push("course/alice/lab1", |w| {
        std::fs::write(w.join("labgrader.json"), manifest(r#"["alice", "prof"]"#)).unwrap()
    });
    let cfg = config(&f, &gl, 9, "quota = \"1/1h\"\nstaff = [\"prof\"]\n");
    let mut evs = Vec::new();
    for (i, sha) in [&staff_only, &staff_only, &with_staff, &with_staff]
        .into_iter()
        .enumerate()
    {
        let mut ev = f.event("course/alice/lab1", sha);
        ev.received_at = chrono::Utc::now() + chrono::Duration::seconds(i as i64);
        f.enqueue(&ev);
        evs.push(ev);
    }
    let d = f.start(cfg);
    let staff_only_results = [
        f.wait_done(&evs[0].job_id, WAIT).await,
        f.wait_done(&evs[1].job_id, WAIT).await,
    ];
    let graded = f.wait_done(&evs[2].job_id, WAIT).await;
    let reason_file = f
        .spool_dir
        .join("failed")
        .join(&evs[3].job_id)
        .join("reason");
    wait_for("the fourth push refused", || reason_file.exists()).await;
    d.stop().await;
    for r in &staff_only_results {
        assert_eq!(r.status, Status::InvalidManifest, "{:?}", r.reason);
        assert!(!r.extra.contains_key("quota"));
    }
    // alice listed with a staff member: charged like any submission.
    assert_eq!(graded.status, Status::Graded, "{:?}", graded.reason);
    assert_eq!(graded.extra["quota"], "1/1h");
    let reason = std::fs::read_to_string(&reason_file).unwrap();
    assert!(reason.starts_with("quota: "), "{reason}");
    assert!(reason.contains("alice"), "{reason}");
    gl.shutdown().await;
}

/// An event for `course/alice/lab1` at `sha` pushed by `who`, received
/// `secs` seconds from now.
fn pushed_by(f: &Fixture, who: &str, sha: &str, secs: i64) -> labgrader::event::Event {
    let mut ev = f.event("course/alice/lab1", sha);
    ev.pusher.username = Some(who.into());
    ev.pusher.name = Some(who.into());
    ev.pusher.email = Some(format!("{who}@commit.example"));
    ev.received_at = chrono::Utc::now() + chrono::Duration::seconds(secs);
    ev
}

/// The attack: alice (Maintainer of her own project) adds bob as a
/// Developer without asking him and lists him in `authors`. bob never
/// pushed to course/alice/lab1, so he is not charged, not mailed and gets
/// no gradebook row; alice is told why. Once bob pushes himself, the next
/// team push credits him.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_without_consent_is_not_credited_until_they_push() {
    let f = Fixture::new();
    let gl = gitlab().await;
    let sink = SmtpSink::start(free_port(), &f.tmp.path().join("mail"), None).await;
    f.tests_repo("lab1", &simple_test_all("20"));
    let team = f.push("course/alice/lab1", |w| {
        std::fs::write(w.join("labgrader.json"), manifest(r#"["alice", "bob"]"#)).unwrap()
    });
    let cfg = config(&f, &gl, sink.port, "quota = \"5/1h\"\n");
    let attack = pushed_by(&f, "alice", &team, 0);
    f.enqueue(&attack);
    let d = f.start(cfg.clone());
    let r = f.wait_done(&attack.job_id, WAIT).await;
    assert_eq!(r.status, Status::Graded, "{:?}", r.reason);
    let credited: Vec<&str> = r.extra["authors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["username"].as_str().unwrap())
        .collect();
    assert_eq!(credited, ["alice"]);
    assert_eq!(r.extra["unknown_authors"], serde_json::json!(["bob"]));
    let ignored = r.extra["ignored_authors"].to_string();
    assert!(
        ignored.contains("has not pushed to course/alice/lab1 yet"),
        "{ignored}"
    );
    let ledger = labgrader::policy::QuotaLedger::in_spool(&f.spool_dir).unwrap();
    let used = |who: &str| {
        ledger
            .used(
                "lab1",
                who,
                "5/1h".parse().unwrap(),
                // The pushes are received up to 2 s from now.
                chrono::Utc::now() + chrono::Duration::seconds(10),
            )
            .unwrap()
    };
    assert_eq!(used("alice"), 1);
    assert_eq!(used("bob"), 0, "bob was charged for alice's push");
    let gb = Gradebook::open(&f.spool_dir.join("gradebook.sqlite")).unwrap();
    let rows_of = |job: &str| -> Vec<String> {
        let mut v: Vec<String> = labgrader::policy::export::rows_from_results(
            &gb.select(Select::All, &Filter::default()).unwrap(),
        )
        .into_iter()
        .filter(|r| r.job == job)
        .map(|r| r.username)
        .collect();
        v.sort();
        v
    };
    assert_eq!(rows_of(&attack.job_id), ["alice"]);

    // bob pushes once himself (a commit without a manifest: bob alone).
    let own = f.push("course/alice/lab1", |w| {
        std::fs::remove_file(w.join("labgrader.json")).unwrap()
    });
    let bobs = pushed_by(&f, "bob", &own, 1);
    f.enqueue(&bobs);
    f.wait_done(&bobs.job_id, WAIT).await;
    // The next team push credits him.
    let again = pushed_by(&f, "alice", &team, 2);
    f.enqueue(&again);
    let r = f.wait_done(&again.job_id, WAIT).await;
    d.stop().await;
    assert_eq!(r.status, Status::Graded, "{:?}", r.reason);
    assert!(!r.extra.contains_key("ignored_authors"), "{:?}", r.extra);
    assert_eq!(rows_of(&again.job_id), ["alice", "bob"]);
    assert_eq!(used("alice"), 2);
    assert_eq!(used("bob"), 2);

    // Mail: the attack's result went to alice only, and told her why.
    let spool = f.spool();
    let worker = Worker::start(&cfg, &spool);
    for job in [&attack.job_id, &bobs.job_id, &again.job_id] {
        let name =
            labgrader::deliver::record_file_name(job, labgrader::deliver::Destination::Email);
        wait_for("the email receipt", || {
            common::deliver::receipt_exists(&spool, &name)
        })
        .await;
    }
    worker.stop().await;
    // One message each: alice for the attack, bob for his own push, both
    // for the team push; never bob for the attack.
    let mut rcpts: Vec<String> = sink
        .messages()
        .iter()
        .flat_map(|m| m["rcpt_tos"].as_array().unwrap().clone())
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        [
            "alice@commit.example",
            "alice@commit.example",
            "bob@commit.example",
            "bob@public.example"
        ]
    );
    // The body (lines may wrap): alice is told why bob was not credited.
    let told: Vec<serde_json::Value> = sink
        .messages()
        .into_iter()
        .filter(|m| {
            let body = m["body"].as_str().unwrap_or("");
            let flat = body.split_whitespace().collect::<Vec<_>>().join(" ");
            flat.contains("bob (has not pushed to course/alice/lab1 yet")
        })
        .collect();
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(
        told[0]["rcpt_tos"],
        serde_json::json!(["alice@commit.example"])
    );
    sink.stop().await;
    gl.shutdown().await;
}
