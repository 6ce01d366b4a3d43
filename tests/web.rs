//! The web view through the real `labgrader serve` (tests/common/web.rs):
//! a student's result page opened from the link in the callback, every way
//! a student might open someone else's page (tampered, missing, borrowed
//! tokens: all the same 404), hostile output rendered as text, the staff
//! pages behind their token, the place of a waiting job in the queue, and
//! the leaderboard's order. Nothing here is a timed assertion.

mod common;

use common::web::{HIDDEN_TEST, HOSTILE, STAFF_TOKEN, VISIBLE_TEST, WebWorld, header, text};

/// The security headers every page sends.
fn assert_headers(r: &labgrader::httpc::Response, what: &str) {
    let csp = header(r, "content-security-policy");
    assert!(csp.contains("default-src 'none'"), "{what}: {csp}");
    assert!(
        !csp.contains("script-src"),
        "{what}: no script at all: {csp}"
    );
    assert_eq!(header(r, "x-content-type-options"), "nosniff", "{what}");
    assert_eq!(header(r, "referrer-policy"), "no-referrer", "{what}");
}

/// `url` with one character of its token changed.
fn tampered(url: &str) -> String {
    let mut b = url.as_bytes().to_vec();
    let i = b.len() - 3;
    b[i] = if b[i] == b'a' { b'b' } else { b'a' };
    String::from_utf8(b).unwrap()
}

#[tokio::test]
async fn forged_borrowed_and_missing_tokens_all_get_the_same_404() {
    let w = WebWorld::start("").await;
    let alice = w.push("alice", 4, None).await;
    let bob = w.push("bob", 6, None).await;
    let alice_url = w.result_url(&alice, None).await;
    let bob_url = w.result_url(&bob, None).await;
    let token = |u: &str| u.split("?t=").nth(1).unwrap().to_string();
    let not_found = w.get("/jobs/NO-SUCH-JOB?t=0", &[]).await;
    assert_eq!(not_found.status, 404);
    for (what, url) in [
        ("tampered token", tampered(&alice_url)),
        ("no token", format!("/jobs/{alice}")),
        ("empty token", format!("/jobs/{alice}?t=")),
        (
            "bob's token on alice's job",
            format!("/jobs/{alice}?t={}", token(&bob_url)),
        ),
        (
            "token cut short",
            alice_url[..alice_url.len() - 1].to_string(),
        ),
        (
            "token upper-cased",
            format!("/jobs/{alice}?t={}", token(&alice_url).to_uppercase()),
        ),
        (
            "token of the job id in another case",
            format!("/jobs/{}?t={}", alice.to_lowercase(), token(&alice_url)),
        ),
        (
            "path traversal",
            format!("/jobs/..%2F..%2Fgradebook.sqlite?t={}", token(&alice_url)),
        ),
        (
            "a job id that is not a name",
            format!("/jobs/{alice}%00?t={}", token(&alice_url)),
        ),
    ] {
        let r = w.get(&url, &[]).await;
        assert_eq!(r.status, 404, "{what}: {url}");
        // Nothing tells a wrong token from a missing job.
        assert_eq!(r.body, not_found.body, "{what}");
        assert!(!text(&r).contains("alice"), "{what}");
        assert_headers(&r, what);
    }
    // Only GET: a POST to a result page is refused without reading it.
    let post = labgrader::httpc::HttpClient::new()
        .request(
            hyper::Method::POST,
            &alice_url,
            &[],
            Some(b"x".to_vec()),
            std::time::Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(post.status, 405);
    // The real links open their own pages.
    assert_eq!(w.get(&alice_url, &[]).await.status, 200);
    assert_eq!(w.get(&bob_url, &[]).await.status, 200);
    w.stop();
}

#[tokio::test]
async fn the_result_link_from_the_callback_shows_the_grade_and_hostile_output_as_text() {
    let w = WebWorld::start("").await;
    let first = w.push("alice", 3, None).await;
    w.callback_of(&first, None).await;
    let job = w.push("alice", 7, None).await;
    let url = w.result_url(&job, None).await;
    assert!(
        url.starts_with(&format!("{}/jobs/{job}?t=", w.base)),
        "{url}"
    );
    let r = w.get(&url, &[]).await;
    assert_eq!(r.status, 200, "{}", w.log_text());
    assert_headers(&r, "result page");
    assert_eq!(header(&r, "cache-control"), "no-store");
    let page = text(&r);
    assert!(page.contains(r#"id="grade">7"#), "the grade: {page}");
    assert!(page.contains(VISIBLE_TEST), "{page}");
    assert!(
        !page.contains(HIDDEN_TEST),
        "a hidden test is for staff only"
    );
    assert!(!page.contains("secret input 4242"));
    assert!(page.contains("1 hidden test"), "{page}");
    // The student's output, as text: never markup.
    assert!(!page.contains(HOSTILE), "raw student markup: {page}");
    assert!(!page.contains("<script>alert"));
    assert!(!page.contains("<img src=x"));
    assert!(page.contains("&lt;script&gt;alert("), "{page}");
    assert!(
        page.contains("bad bytes: \u{FFFD}\u{FFFD} end"),
        "invalid UTF-8 shown lossily"
    );
    // No script anywhere in the page itself.
    assert!(!page.to_lowercase().contains("<script"));
    // A finished job's page does not reload itself.
    assert!(!page.contains("http-equiv=\"refresh\""));
    // The earlier job, linked with its own token, which opens it.
    let first_link = page
        .split(&format!("href=\"/jobs/{first}?t="))
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no link to the earlier job: {page}"));
    let earlier = w.get(&format!("/jobs/{first}?t={first_link}"), &[]).await;
    assert_eq!(earlier.status, 200);
    assert!(text(&earlier).contains(r#"id="grade">3"#));
    w.stop();
}

#[tokio::test]
async fn staff_pages_need_the_staff_token_and_show_everything() {
    let w = WebWorld::start("").await;
    let job = w.push("alice", 5, None).await;
    w.callback_of(&job, None).await;
    for (what, auth) in [
        ("no header", None),
        ("wrong bearer", Some("Bearer not-the-token".to_string())),
        (
            "token with a byte more",
            Some(format!("Bearer {STAFF_TOKEN}x")),
        ),
        (
            "token prefix",
            Some(format!("Bearer {}", &STAFF_TOKEN[..10])),
        ),
        (
            "the web secret",
            Some(format!("Bearer {}", common::web::WEB_SECRET)),
        ),
        (
            "basic, wrong password",
            Some(format!("Basic {}", b64("staff:nope"))),
        ),
        ("another scheme", Some(format!("Token {STAFF_TOKEN}"))),
    ] {
        for path in [
            "/staff/",
            "/staff",
            "/staff/jobs",
            &format!("/staff/jobs/{job}"),
            "/staff/assignments/lab1/export.csv",
        ] {
            let h: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
            let r = w.get(path, &h).await;
            assert_eq!(r.status, 401, "{what} {path}");
            assert!(!text(&r).contains(&job), "{what} {path}");
            assert_headers(&r, what);
        }
    }
    let r = w.staff("/staff/").await;
    assert_eq!(r.status, 200);
    assert_headers(&r, "staff overview");
    assert!(text(&r).contains(&job), "the job is listed: {}", text(&r));
    // HTTP Basic with the token as password (what a browser sends).
    let basic = format!("Basic {}", b64(&format!("ta:{STAFF_TOKEN}")));
    assert_eq!(
        w.get("/staff/", &[("Authorization", &basic)]).await.status,
        200
    );
    // The full record: the hidden test and the hidden output too.
    let full = text(&w.staff(&format!("/staff/jobs/{job}")).await);
    assert!(full.contains(HIDDEN_TEST), "{full}");
    assert!(full.contains("secret input 4242"));
    assert!(!full.contains(HOSTILE), "escaped for staff too");
    // Filters.
    let by_student = text(&w.staff("/staff/jobs?student=alice&assignment=lab1").await);
    assert!(by_student.contains(&job));
    let other = text(&w.staff("/staff/jobs?student=nobody").await);
    assert!(!other.contains(&job));
    // Histogram, count, CSV.
    let a = text(&w.staff("/staff/assignments/lab1").await);
    assert!(a.contains(r#"id="graded-count">1"#), "{a}");
    let csv = w
        .staff("/staff/assignments/lab1/export.csv?select=best")
        .await;
    assert_eq!(csv.status, 200);
    assert!(header(&csv, "content-type").starts_with("text/csv"));
    let csv = text(&csv);
    assert!(csv.starts_with("job_id,project,assignment"), "{csv}");
    assert!(
        csv.contains(&job) && csv.contains("course/alice/lab1"),
        "{csv}"
    );
    // The queue page answers (nothing waiting now).
    assert_eq!(w.staff("/staff/queue").await.status, 200);
    // The hook's own routes are untouched.
    assert_eq!(w.get("/healthz", &[]).await.status, 200);
    w.stop();
}

#[tokio::test]
async fn a_waiting_job_shows_its_place_in_the_queue_until_it_is_graded() {
    let w = WebWorld::start("").await;
    std::fs::write(&w.hold, "").unwrap();
    let running = w.push("alice", 2, None).await;
    w.wait_active(&running).await;
    // With one worker, the next job is prepared beside the run and waits
    // for its slot; the one after it waits in the queue.
    let ready = w.push("bob", 5, None).await;
    w.wait_active(&ready).await;
    let waiting = w.push("carol", 8, None).await;
    // The link comes with the `queued` callback, before any result.
    let url = w.result_url(&waiting, Some("queued")).await;
    let page = text(&w.get(&url, &[]).await);
    assert!(page.contains("waiting in the queue"), "{page}");
    assert!(page.contains("#1"), "position 1: {page}");
    assert!(page.contains("http-equiv=\"refresh\""), "reloads itself");
    let ready_url = w.result_url(&ready, Some("queued")).await;
    let ready_page = text(&w.get(&ready_url, &[]).await);
    assert!(
        ready_page.contains("starts as soon as a grader slot is free")
            && !ready_page.contains("being graded now"),
        "{ready_page}"
    );
    let run_url = w.result_url(&running, Some("queued")).await;
    let run_page = text(&w.get(&run_url, &[]).await);
    assert!(run_page.contains("being graded now"), "{run_page}");
    // Staff see all three in the queue, the prepared one apart.
    let q = text(&w.staff("/staff/queue").await);
    assert!(
        q.contains(&running) && q.contains(&ready) && q.contains(&waiting),
        "{q}"
    );
    assert!(q.contains("Prepared, waiting for a run slot (1)"), "{q}");
    std::fs::remove_file(&w.hold).unwrap();
    w.callback_of(&waiting, None).await;
    let done = text(&w.get(&url, &[]).await);
    assert!(done.contains(r#"id="grade">8"#), "{done}");
    assert!(!done.contains("http-equiv=\"refresh\""));
    w.stop();
}

#[tokio::test]
async fn the_leaderboard_orders_best_values_as_configured_and_hides_names_on_request() {
    let w = WebWorld::start("[assignments.lab2]\n").await;
    let mut jobs = Vec::new();
    jobs.push(w.push("alice", 9, None).await);
    jobs.push(w.push("alice", 4, None).await);
    jobs.push(w.push("bob", 6, None).await);
    jobs.push(
        w.push("carol", 5, Some(r#"{"leaderboard_name": false}"#))
            .await,
    );
    jobs.push(
        w.push(
            "dave",
            7,
            Some(r#"{"leaderboard_name": "<b>Dave</b> the bold"}"#),
        )
        .await,
    );
    for j in &jobs {
        w.callback_of(j, None).await;
    }
    let r = w.get("/leaderboard/lab1", &[]).await;
    assert_eq!(r.status, 200, "{}", w.log_text());
    assert_headers(&r, "leaderboard");
    let page = text(&r);
    // lab1 is ascending: the lowest best value first, one line per student.
    let order: Vec<&str> = [
        "alice",
        "anonymous",
        "bob",
        "“&lt;b&gt;Dave&lt;/b&gt; the bold”",
    ]
    .into_iter()
    .collect();
    let at: Vec<usize> = order
        .iter()
        .map(|n| {
            page.find(&format!(">{n}<"))
                .unwrap_or_else(|| panic!("{n} missing: {page}"))
        })
        .collect();
    assert!(
        at.windows(2).all(|p| p[0] < p[1]),
        "order {order:?}: {page}"
    );
    assert!(!page.contains("carol"), "carol hid her name");
    assert!(!page.contains("<b>Dave"));
    assert_eq!(page.matches(">alice<").count(), 1, "alice's best only");
    // No leaderboard where none is configured, nor for unknown assignments.
    assert_eq!(w.get("/leaderboard/lab2", &[]).await.status, 404);
    assert_eq!(w.get("/leaderboard/nope", &[]).await.status, 404);
    w.stop();
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A student may choose the name the leaderboard shows, but never pass for
/// a classmate: alice chooses "bob" (and takes the top place with it), the
/// real bob pushes too. Only the real bob's line shows the bare name `bob`;
/// a chosen name is always shown as chosen.
#[tokio::test]
async fn a_chosen_leaderboard_name_cannot_pass_for_a_classmate() {
    let w = WebWorld::start("").await;
    let jobs = [
        w.push("alice", 1, Some(r#"{"leaderboard_name": "bob"}"#))
            .await,
        w.push("bob", 8, None).await,
        w.push("carol", 3, Some(r#"{"leaderboard_name": " Bob "}"#))
            .await,
    ];
    for j in &jobs {
        w.callback_of(j, None).await;
    }
    let page = text(&w.get("/leaderboard/lab1", &[]).await);
    assert_eq!(
        page.matches(">bob<").count(),
        1,
        "only the real bob shows as bob: {page}"
    );
    assert!(!page.contains(">Bob<"), "{page}");
    assert!(
        page.contains(">“bob”<"),
        "alice's choice, as chosen: {page}"
    );
    assert!(
        page.contains(">“Bob”<"),
        "carol's choice, as chosen: {page}"
    );
    assert!(
        page.contains("in quotes"),
        "the page says what quotes mean: {page}"
    );
    w.stop();
}

/// The leaderboard is public and reads every graded job of the assignment
/// (~25–50 ms at 10,000 jobs): anyone could keep the render threads busy
/// with it, and every student's result page would wait behind. It is read
/// from the gradebook at most once per 30 s (what `Cache-Control` already
/// promised), however many ask.
#[tokio::test]
async fn a_flood_of_leaderboard_requests_reads_the_gradebook_once() {
    let w = WebWorld::start("").await;
    let job = w.push("alice", 3, None).await;
    w.callback_of(&job, None).await;
    for _ in 0..40 {
        let r = w.get("/leaderboard/lab1", &[]).await;
        assert_eq!(r.status, 200);
        assert!(text(&r).contains(">alice<"));
    }
    let metrics = text(&w.get("/metrics", &[]).await);
    let reads: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("labgrader_web_leaderboard_reads_total"))
        .collect();
    assert_eq!(
        reads,
        ["labgrader_web_leaderboard_reads_total{assignment=\"lab1\"} 1"],
        "{metrics}"
    );
    w.stop();
}
