//! Which pushes become jobs: not the tests namespace, only projects with a
//! `TESTS_NS/NAME-test` repository, decided through a cache filled from the
//! GitLab API (a local server answering as GitLab's docs say) or, with no
//! API token, from `git ls-remote` on the clone URL (real bare repos).

mod common;

use common::{daemon::*, gitlab::*, world::*};
use labgrader::config::Secret;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_to_the_tests_namespace_are_ignored() {
    let world = World::new();
    world.bare_repo("root/lab1-test");
    let server = Server::start(world.config()).await;
    for (i, path) in ["root/lab1-test", "root/sub/lab1"].iter().enumerate() {
        let body = push_body(path, "refs/heads/main", &sha(1), &sha(2));
        let resp = server
            .post(&push_headers("Push Hook", &format!("k{i}")), body)
            .await;
        assert_eq!(resp.status.as_u16(), 200);
        assert_eq!(
            text(&resp),
            format!("ignored: {path} is in the tests namespace `root`")
        );
    }
    assert!(server.incoming().is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_without_test_repository_is_ignored_via_ls_remote() {
    let world = World::new();
    world.bare_repo("root/lab1-test");
    let server = Server::start(world.config()).await;
    let body = push_body("alice/lab9", "refs/heads/main", &sha(1), &sha(2));
    let resp = server.post(&push_headers("Push Hook", "k1"), body).await;
    assert_eq!(resp.status.as_u16(), 200);
    assert_eq!(
        text(&resp),
        "ignored: no test repository root/lab9-test for alice/lab9"
    );
    let body = push_body("alice/lab1", "refs/heads/main", &sha(1), &sha(2));
    job_of(&server.post(&push_headers("Push Hook", "k2"), body).await);
    assert_eq!(server.incoming().len(), 1);
    server.stop().await;
}

fn api_config(world: &World, api: &str) -> labgrader::config::Config {
    let mut cfg = world.config();
    cfg.gitlab.url = api.to_string();
    cfg.secrets.gitlab_token = Some(Secret::new(API_TOKEN));
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_repositories_come_from_the_gitlab_api_and_are_cached() {
    let world = World::new();
    let api = GitlabApiServer::start(&["root/lab1-test"]).await;
    let server = Server::start(api_config(&world, &api.url)).await;
    for i in 0..3 {
        let body = push_body("alice/lab1", "refs/heads/main", &sha(i), &sha(i + 1));
        job_of(
            &server
                .post(&push_headers("Push Hook", &format!("a{i}")), body)
                .await,
        );
    }
    let body = push_body("alice/lab2", "refs/heads/main", &sha(1), &sha(2));
    let resp = server.post(&push_headers("Push Hook", "b1"), body).await;
    assert_eq!(
        text(&resp),
        "ignored: no test repository root/lab2-test for alice/lab2"
    );
    // One lookup per path (cache), by URL-encoded path as GitLab wants it.
    assert_eq!(
        api.seen(),
        vec![
            "/api/v4/projects/root%2Flab1-test".to_string(),
            "/api/v4/projects/root%2Flab2-test".to_string()
        ]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_create_system_hook_refreshes_the_cache() {
    let world = World::new();
    let api = GitlabApiServer::start(&[]).await;
    let server = Server::start(api_config(&world, &api.url)).await;
    let push = |k: &str, n: u32| {
        (
            push_headers("Push Hook", k),
            push_body("alice/lab3", "refs/heads/main", &sha(n), &sha(n + 1)),
        )
    };
    let (h, b) = push("c1", 1);
    assert_eq!(server.post(&h, b).await.status.as_u16(), 200);
    // Staff create the test repository; GitLab tells us by system hook.
    api.add("root/lab3-test");
    let (_, mut sh) = fixture("system_project_create");
    sh.retain(|(k, _)| k != "Idempotency-Key");
    let created = serde_json::to_vec(&serde_json::json!({
        "event_name": "project_create", "name": "lab3-test", "path": "lab3-test",
        "path_with_namespace": "root/lab3-test", "project_id": 1001
    }))
    .unwrap();
    let resp = server.post(&sh, created).await;
    assert_eq!(resp.status.as_u16(), 200, "{}", text(&resp));
    let (h, b) = push("c2", 2);
    job_of(&server.post(&h, b).await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_gitlab_api_still_accepts_the_push() {
    let world = World::new();
    // Nothing listens there: the lookup fails; the push must not be lost.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let server = Server::start(api_config(&world, &url)).await;
    let body = push_body("alice/lab4", "refs/heads/main", &sha(1), &sha(2));
    job_of(&server.post(&push_headers("Push Hook", "d1"), body).await);
    let metrics = text(&server.get("/metrics").await);
    assert!(
        metrics.contains("labgrader_hook_test_repo_lookup_errors_total 1"),
        "{metrics}"
    );
    server.stop().await;
}
