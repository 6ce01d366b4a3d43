//! Course policy end to end, short of the hook and the grader: GitLab's
//! own payloads decide what is a submission, and `admit` applies manifest,
//! authors, deadline and quota to real git trees with a real ledger.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use common::gitlab::fixture_json;
use common::repos::exported_commit;
use labgrader::config::Config;
use labgrader::event::{EVENT_SCHEMA, Event, EventKind, HookSource, Project, Pusher};
use labgrader::policy::{
    Decision, IgnoreReason, PushFacts, QuotaLedger, Refusal, ResolvedPolicy, admit,
    decide_submission,
};
use serde_json::Value;

/// The facts the hook takes from a GitLab body.
fn facts_of(body: &Value) -> (EventKind, String, String) {
    let kind = match body["event_name"].as_str().unwrap() {
        "tag_push" => EventKind::TagPush,
        _ => EventKind::Push,
    };
    (
        kind,
        body["ref"].as_str().unwrap().to_string(),
        body["after"].as_str().unwrap().to_string(),
    )
}

fn decide_fixture(policy: &ResolvedPolicy, name: &str) -> Decision {
    let body = fixture_json(name);
    let (kind, git_ref, after) = facts_of(&body);
    decide_submission(
        policy,
        &PushFacts {
            kind,
            git_ref: &git_ref,
            after: &after,
            received_at: Utc::now(),
        },
    )
}

#[test]
fn tag_mode_on_gitlab_payloads() {
    let cfg = Config::from_toml(
        "[assignments.example]\ntrigger = \"tag\"\ntag_pattern = \"v1.*\"\n\
         [assignments.diaspora]\ntrigger = \"tag\"\ntag_pattern = \"submit-*\"\n",
        None,
    )
    .unwrap();
    let p = ResolvedPolicy::for_project(&cfg, "diaspora");
    // A branch push to a tag-mode assignment.
    assert_eq!(
        decide_fixture(&p, "push.json"),
        Decision::Ignore(IgnoreReason::NotSubmissionTag)
    );
    let p = ResolvedPolicy::for_project(&cfg, "example");
    // Lightweight shape (after = checkout_sha) and annotated shape
    // (system hook: after is the tag object, checkout_sha the commit).
    for name in ["tag_push.json", "system_tag_push.json"] {
        assert!(
            matches!(decide_fixture(&p, name), Decision::Accept(_)),
            "{name}"
        );
    }
}

#[test]
fn push_mode_on_gitlab_payloads() {
    let cfg = Config::from_toml("", None).unwrap();
    let p = ResolvedPolicy::for_project(&cfg, "diaspora");
    assert!(matches!(
        decide_fixture(&p, "push.json"),
        Decision::Accept(_)
    ));
    assert!(matches!(
        decide_fixture(&p, "push_test_event_17_1.json"),
        Decision::Accept(_)
    ));
    assert_eq!(
        decide_fixture(&p, "push_branch_delete.json"),
        Decision::Ignore(IgnoreReason::Deletion)
    );
    // Every push, tags included, as gitlab-ag did.
    assert!(matches!(
        decide_fixture(&p, "tag_push.json"),
        Decision::Accept(_)
    ));
}

/// A student repository with one commit holding `manifest` (if any),
/// exported as the grader does; returns the tree and the commit.
fn student_tree(root: &Path, manifest: Option<&str>, date: Option<&str>) -> (PathBuf, String) {
    let mut files = vec![("main.c", "int main(void) { return 0; }\n")];
    if let Some(m) = manifest {
        files.push(("labgrader.json", m));
    }
    exported_commit(root, &files, date)
}

fn event(job: &str, sha: &str, received_at: DateTime<Utc>, pusher: &str) -> Event {
    Event {
        schema: EVENT_SCHEMA,
        job_id: job.into(),
        received_at,
        kind: EventKind::Push,
        source: HookSource::ProjectHook,
        gitlab_event: "Push Hook".into(),
        delivery_key: None,
        project: Project::from_path(Some(7), &format!("course/{pusher}/lab1")).unwrap(),
        pusher: Pusher {
            id: Some(1),
            username: Some(pusher.into()),
            name: None,
            email: Some(format!("{pusher}@push.example")),
        },
        git_ref: "refs/heads/main".into(),
        before: "0".repeat(40),
        after: sha.into(),
        commit: sha.into(),
        clone_url: "file:///nowhere".into(),
        crashes: 0,
        infra_attempts: 0,
        fetch_timeouts: 0,
        not_before: None,
        last_error: None,
        regrade: None,
        raw: Value::Null,
    }
}

struct Course {
    dir: tempfile::TempDir,
    cfg: Config,
    ledger: Arc<QuotaLedger>,
}

fn course(section: &str) -> Course {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("roster.csv"),
        "username,email,name,group\nalice,alice@uni.example,Alice,t1\nbob,bob@uni.example,Bob,t1\nprof,prof@uni.example,Prof,\n",
    )
    .unwrap();
    let mut cfg = Config::from_toml(
        &format!("[assignments.lab1]\nroster = \"roster.csv\"\n{section}\n"),
        None,
    )
    .unwrap();
    cfg.source = Some(dir.path().join("config.toml"));
    let ledger = Arc::new(QuotaLedger::in_spool(dir.path()).unwrap());
    Course { dir, cfg, ledger }
}

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

#[tokio::test]
async fn two_authors_one_unknown_both_known_graded_unknown_listed() {
    let c = course("");
    let (tree, sha) = student_tree(
        c.dir.path(),
        Some(r#"{"authors": ["alice", "bob", "zed"], "description": "team", "lang": "c"}"#),
        None,
    );
    let a = admit(
        &c.cfg,
        &event("j1", &sha, Utc::now(), "alice"),
        &tree,
        None,
        &c.ledger,
    )
    .await
    .unwrap()
    .unwrap();
    let names: Vec<&str> = a
        .authors
        .known
        .iter()
        .map(|k| k.username.as_str())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(a.authors.unknown, ["zed"]);
    assert_eq!(a.extra["unknown_authors"], serde_json::json!(["zed"]));
    assert_eq!(a.extra["manifest"]["lang"], "c");
    assert_eq!(a.extra["authors"][1]["email"], "bob@uni.example");
    assert_eq!(a.extra["late"], false);
}

#[tokio::test]
async fn malformed_manifest_is_invalid_manifest_with_position() {
    let c = course("");
    let (tree, sha) = student_tree(c.dir.path(), Some("{\"authors\": [\"alice\",]}"), None);
    let r = admit(
        &c.cfg,
        &event("j1", &sha, Utc::now(), "alice"),
        &tree,
        None,
        &c.ledger,
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(r.code(), "invalid_manifest");
    assert_eq!(
        r.message(),
        "labgrader.json line 1, column 22: trailing comma"
    );
}

#[tokio::test]
async fn quota_two_per_hour_third_quick_submission_refused_with_next_slot() {
    let c = course("quota = \"2/1h\"");
    let (tree, sha) = student_tree(c.dir.path(), None, None);
    let t0 = t("2026-11-22T03:00:00Z");
    let mut outcomes = Vec::new();
    for (i, secs) in [0, 20, 40].into_iter().enumerate() {
        let e = event(
            &format!("j{i}"),
            &sha,
            t0 + chrono::Duration::seconds(secs),
            "alice",
        );
        outcomes.push(admit(&c.cfg, &e, &tree, None, &c.ledger).await.unwrap());
    }
    assert!(outcomes[0].is_ok() && outcomes[1].is_ok());
    match &outcomes[2] {
        Err(r @ Refusal::Quota { next_slot_at, .. }) => {
            assert_eq!(r.code(), "quota");
            assert_eq!(*next_slot_at, t("2026-11-22T04:00:00Z"));
            assert!(
                r.message().contains("2026-11-22T04:00:00Z"),
                "{}",
                r.message()
            );
        }
        other => panic!("{other:?}"),
    }
    // The same job admitted again (crash, infra retry) keeps its slot.
    let again = admit(
        &c.cfg,
        &event("j1", &sha, t0, "alice"),
        &tree,
        None,
        &c.ledger,
    )
    .await
    .unwrap();
    assert!(again.is_ok());
    // An infrastructure failure gives the slot back.
    assert_eq!(c.ledger.release("j1").unwrap(), 1);
    let e = event("j2", &sha, t0 + chrono::Duration::seconds(40), "alice");
    assert!(
        admit(&c.cfg, &e, &tree, None, &c.ledger)
            .await
            .unwrap()
            .is_ok()
    );
}

#[tokio::test]
async fn staff_and_local_regrades_take_no_quota() {
    let c = course("quota = \"1/1h\"\nstaff = [\"prof\"]");
    let (tree, sha) = student_tree(c.dir.path(), None, None);
    let now = Utc::now();
    for i in 0..3 {
        let e = event(&format!("s{i}"), &sha, now, "prof");
        assert!(
            admit(&c.cfg, &e, &tree, None, &c.ledger)
                .await
                .unwrap()
                .is_ok()
        );
    }
    for i in 0..3 {
        let mut e = event(&format!("r{i}"), &sha, now, "alice");
        e.source = HookSource::Local;
        assert!(
            admit(&c.cfg, &e, &tree, None, &c.ledger)
                .await
                .unwrap()
                .is_ok()
        );
    }
    let e = event("a1", &sha, now, "alice");
    assert!(
        admit(&c.cfg, &e, &tree, None, &c.ledger)
            .await
            .unwrap()
            .is_ok()
    );
}

#[tokio::test]
async fn deadline_flag_marks_late_even_with_an_old_commit_date() {
    let c = course("deadline = \"2026-12-01T23:59:00+01:00\"\ngrace = \"5m\"\nlate = \"flag\"");
    // Committed a week before the deadline, received after deadline + grace.
    let (tree, sha) = student_tree(c.dir.path(), None, Some("2026-11-24T12:00:00+01:00"));
    let e = event("j1", &sha, t("2026-12-01T23:04:01Z"), "alice");
    let a = admit(&c.cfg, &e, &tree, None, &c.ledger)
        .await
        .unwrap()
        .unwrap();
    assert!(a.acceptance.late);
    assert_eq!(a.extra["late"], true);
    assert_eq!(a.extra["deadline"], "2026-12-01T23:59:00+01:00");
    let e = event("j2", &sha, t("2026-12-01T23:04:00Z"), "alice");
    let a = admit(&c.cfg, &e, &tree, None, &c.ledger)
        .await
        .unwrap()
        .unwrap();
    assert!(!a.acceptance.late);
}

#[tokio::test]
async fn deadline_reject_refuses_with_reason_late() {
    let c = course("deadline = \"2026-12-01T23:59:00+01:00\"\nlate = \"reject\"\nquota = \"1/1h\"");
    let (tree, sha) = student_tree(c.dir.path(), None, None);
    let e = event("j1", &sha, t("2026-12-02T00:00:00Z"), "alice");
    let r = admit(&c.cfg, &e, &tree, None, &c.ledger)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(r.code(), "late");
    // A refused submission takes no quota.
    assert_eq!(
        c.ledger
            .used(
                "lab1",
                "alice",
                "1/1h".parse().unwrap(),
                t("2026-12-02T00:00:00Z")
            )
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn unreadable_roster_is_an_infra_error_not_the_students() {
    let c = course("");
    std::fs::remove_file(c.dir.path().join("roster.csv")).unwrap();
    let (tree, sha) = student_tree(c.dir.path(), None, None);
    let e = event("j1", &sha, Utc::now(), "alice");
    let err = admit(&c.cfg, &e, &tree, None, &c.ledger).await.unwrap_err();
    assert!(err.to_string().contains("roster.csv"), "{err}");
}

#[tokio::test]
async fn pusher_not_on_roster_without_manifest_is_admitted_with_no_known_author() {
    // Nobody to credit: the grader still grades (staff see it), the
    // result lists the pusher as unknown.
    let c = course("");
    let (tree, sha) = student_tree(c.dir.path(), None, None);
    let e = event("j1", &sha, Utc::now(), "mallory");
    let a = admit(&c.cfg, &e, &tree, None, &c.ledger)
        .await
        .unwrap()
        .unwrap();
    assert!(a.authors.known.is_empty());
    assert_eq!(a.authors.unknown, ["mallory"]);
}
