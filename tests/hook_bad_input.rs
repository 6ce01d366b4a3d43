//! Every bad input gets its status and a one-line reason, nothing is
//! stored for it, and the server keeps serving; an unwritable spool is a
//! 503 that leaves nothing half-written.

mod common;

use std::io::{Read, Write};

use common::{daemon::*, gitlab::*, world::*};
use hyper::Method;
use labgrader::config::ByteSize;
use labgrader::spool::State;

fn good_body() -> Vec<u8> {
    push_body("alice/lab1", "refs/heads/main", &sha(1), &sha(2))
}

async fn started() -> (World, Server) {
    let world = World::new();
    world.bare_repo("root/lab1-test");
    let mut cfg = world.config();
    cfg.server.max_body = ByteSize(4096);
    let server = Server::start(cfg).await;
    (world, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_token_is_401() {
    let (_w, server) = started().await;
    let mut h = push_headers("Push Hook", "k");
    h.retain(|(k, _)| k != "X-Gitlab-Token");
    let r = server.post(&h, good_body()).await;
    assert_eq!(r.status.as_u16(), 401);
    assert!(
        text(&r).starts_with("invalid or missing X-Gitlab-Token"),
        "{}",
        text(&r)
    );
    // It names the keys that exist (there is no `server.webhook_token`).
    assert!(
        text(&r).contains("server.webhook_token_file (or LABGRADER_WEBHOOK_TOKEN)"),
        "{}",
        text(&r)
    );
    h.push(("X-Gitlab-Token".into(), "gitlab-fixture-secreT".into()));
    assert_eq!(server.post(&h, good_body()).await.status.as_u16(), 401);
    assert!(server.incoming().is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_configured_accepts_without_header() {
    let world = World::new();
    world.bare_repo("root/lab1-test");
    let mut cfg = world.config();
    cfg.secrets.webhook_token = None;
    let server = Server::start(cfg).await;
    let mut h = push_headers("Push Hook", "k");
    h.retain(|(k, _)| k != "X-Gitlab-Token");
    job_of(&server.post(&h, good_body()).await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_max_body_is_413_with_or_without_length() {
    let (_w, server) = started().await;
    let mut big: serde_json::Value = serde_json::from_slice(&good_body()).unwrap();
    big["padding"] = "x".repeat(5000).into();
    let big = serde_json::to_vec(&big).unwrap();
    let r = server
        .post(&push_headers("Push Hook", "k"), big.clone())
        .await;
    assert_eq!(r.status.as_u16(), 413);
    assert_eq!(text(&r), "body over 4096 bytes (server.max_body)");
    // Chunked, no Content-Length: the limit applies while reading.
    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    let mut req = format!(
        "POST /hooks/gitlab HTTP/1.1\r\nHost: x\r\nX-Gitlab-Event: Push Hook\r\n\
         X-Gitlab-Token: {TOKEN}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in big.chunks(1000) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    s.write_all(&req).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(server.incoming().is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_deliveries_are_400_with_a_reason() {
    let (_w, server) = started().await;
    let mut no_project: serde_json::Value = serde_json::from_slice(&good_body()).unwrap();
    no_project.as_object_mut().unwrap().remove("project");
    let mut bad_sha: serde_json::Value = serde_json::from_slice(&good_body()).unwrap();
    bad_sha["after"] = "not-a-sha".into();
    let mut bad_ref: serde_json::Value = serde_json::from_slice(&good_body()).unwrap();
    bad_ref["ref"] = "main".into();
    type Case = (Vec<(String, String)>, Vec<u8>, &'static str);
    let cases: Vec<Case> = vec![
        (
            push_headers("Push Hook", "k"),
            b"{not json".to_vec(),
            "body is not JSON: ",
        ),
        (
            push_headers("Push Hook", "k"),
            b"".to_vec(),
            "body is not JSON: ",
        ),
        (
            push_headers("Push Hook", "k"),
            b"[1,2]".to_vec(),
            "body is not a JSON object",
        ),
        (
            push_headers("Push Hook", "k"),
            serde_json::to_vec(&no_project).unwrap(),
            "field `project` is missing or not an object",
        ),
        (
            push_headers("Push Hook", "k"),
            serde_json::to_vec(&bad_sha).unwrap(),
            "`after` is `not-a-sha`, not a 40 or 64 digit hex commit id",
        ),
        (
            push_headers("Push Hook", "k"),
            serde_json::to_vec(&bad_ref).unwrap(),
            "`ref` is `main`, not a git ref (refs/...)",
        ),
        (
            push_headers("Push Hook", "k"),
            push_body("alice/../etc", "refs/heads/main", &sha(1), &sha(2)),
            "project path `alice/../etc` is not a GitLab namespace/name path",
        ),
        (
            push_headers("Tag Push Hook", "k"),
            good_body(),
            "X-Gitlab-Event is `Tag Push Hook` but the body's object_kind is `push`",
        ),
        (
            push_headers("System Hook", "k"),
            b"{}".to_vec(),
            "system hook body has neither event_name nor object_kind",
        ),
        (
            push_headers("Push Hook", &"k".repeat(300)),
            good_body(),
            "Idempotency-Key must be 1 to 256 characters of text",
        ),
        (
            push_headers("System Hook", "k"),
            repository_update_body("alice/lab1", &[]),
            "repository_update has an empty `changes` list",
        ),
    ];
    for (h, body, want) in cases {
        let r = server.post(&h, body).await;
        assert_eq!(r.status.as_u16(), 400, "{want}: {}", text(&r));
        let t = text(&r);
        assert!(t.starts_with(want), "want {want:?}, got {t:?}");
        assert!(!t.contains('\n'), "one line: {t:?}");
    }
    let mut h = push_headers("Push Hook", "k");
    h.retain(|(k, _)| k != "X-Gitlab-Event");
    let r = server.post(&h, good_body()).await;
    assert_eq!(r.status.as_u16(), 400);
    assert_eq!(
        text(&r),
        "missing X-Gitlab-Event header; is this a GitLab webhook?"
    );
    assert!(server.incoming().is_empty());
    // Still serving.
    job_of(
        &server
            .post(&push_headers("Push Hook", "ok"), good_body())
            .await,
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_paths_and_methods_are_404_and_405() {
    let (_w, server) = started().await;
    let r = server.get("/nope").await;
    assert_eq!(r.status.as_u16(), 404);
    let r = server.get("/hooks/gitlab").await;
    assert_eq!(r.status.as_u16(), 405);
    assert_eq!(r.headers["allow"], "POST");
    let r = server.request(Method::POST, "/healthz", &[], vec![]).await;
    assert_eq!(r.status.as_u16(), 405);
    assert_eq!(r.headers["allow"], "GET");
    let r = server.get("/healthz").await;
    assert_eq!((r.status.as_u16(), text(&r).as_str()), (200, "ok"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_answers_and_show_spool_depth() {
    let (_w, server) = started().await;
    job_of(
        &server
            .post(&push_headers("Push Hook", "m1"), good_body())
            .await,
    );
    let (b, h) = fixture("system_user_create");
    server.post(&h, b).await;
    let m = text(&server.get("/metrics").await);
    for want in [
        "labgrader_spool_depth{state=\"incoming\"} 1",
        "labgrader_spool_depth{state=\"active\"} 0",
        "labgrader_hook_accepted_total{kind=\"push\"}",
        "labgrader_hook_ignored_total{reason=\"not_push\"}",
        "labgrader_hook_requests_total{status=\"202\"}",
        "# TYPE labgrader_hook_request_seconds histogram",
    ] {
        assert!(m.contains(want), "{want} missing from\n{m}");
    }
    server.stop().await;
}

/// Replace a spool directory by a plain file so every write into it fails
/// (works as root too, unlike permissions).
fn break_dir(server: &Server, state: State) -> std::path::PathBuf {
    let d = server.spool.dir(state);
    let aside = d.with_extension("aside");
    std::fs::rename(&d, &aside).unwrap();
    std::fs::write(&d, b"not a directory").unwrap();
    aside
}

fn repair_dir(server: &Server, state: State, aside: &std::path::Path) {
    let d = server.spool.dir(state);
    std::fs::remove_file(&d).unwrap();
    std::fs::rename(aside, &d).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_unwritable_is_503_and_leaves_nothing_half_written() {
    let (_w, server) = started().await;
    for state in [State::Incoming, State::Tmp] {
        let aside = break_dir(&server, state);
        let r = server
            .post(&push_headers("Push Hook", "u1"), good_body())
            .await;
        assert_eq!(r.status.as_u16(), 503, "{state:?}: {}", text(&r));
        assert!(
            text(&r).starts_with("spool unavailable, event not stored: "),
            "{}",
            text(&r)
        );
        repair_dir(&server, state, &aside);
        assert!(server.incoming().is_empty(), "{state:?}");
        assert!(
            server.spool.list(State::Tmp).unwrap().is_empty(),
            "{state:?}"
        );
        let keys = std::fs::read_dir(server.spool.root().join("keys"))
            .unwrap()
            .count();
        assert_eq!(
            keys, 0,
            "{state:?}: no dedup marker left for a job never stored"
        );
    }
    // The re-send staff make after the 503 is a new job, not a "duplicate".
    let r = server
        .post(&push_headers("Push Hook", "u1"), good_body())
        .await;
    let job = job_of(&r);
    assert!(!text(&r).contains("duplicate"));
    assert_eq!(server.incoming(), vec![format!("{job}.json")]);
    server.stop().await;
}
