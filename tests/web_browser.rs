//! The web view in a real browser: Debian's headless Chromium (installed
//! by scripts/setup/chromium.sh) renders a student's result page at phone
//! width, a staff page and a waiting job's page, to PNG, and dumps the DOM
//! it built; the DOM must hold the grade and the visible test's name and
//! never the hidden test's, the student's `<script>` must not have become
//! an element, and a waiting job shows its place in the queue.
//! Chromium missing FAILS the test, unless `LABGRADER_SKIP_BROWSER=1`.
//! `LABGRADER_SCREENSHOT_DIR=docs/img` writes the screenshots the user
//! guide shows (docs/web.md) there.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::web::{HIDDEN_TEST, STAFF_TOKEN, VISIBLE_TEST, WebWorld};

/// The browser, or `None` when the developer opted out.
fn chromium() -> Option<PathBuf> {
    if std::env::var("LABGRADER_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("LABGRADER_SKIP_BROWSER=1: browser test skipped");
        return None;
    }
    let bin = std::env::var_os("LABGRADER_TEST_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        bin.exists(),
        "{} not found: install Debian's chromium (scripts/setup/chromium.sh, run by \
         scripts/test, does) or set LABGRADER_SKIP_BROWSER=1 to skip this test",
        bin.display()
    );
    Some(bin)
}

/// Run headless Chromium on `url` with `args`; returns stdout.
fn browse(bin: &Path, profile: &Path, args: &[&str], url: &str) -> String {
    let out = Command::new(bin)
        .args([
            "--headless",
            // Root in a container: Chromium's own sandbox cannot start.
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--force-device-scale-factor=1",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium {args:?} {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A screenshot of `url` at `width`×`height`, checked to be a PNG, and
/// copied to `$LABGRADER_SCREENSHOT_DIR/name` when that is set.
fn screenshot(bin: &Path, profile: &Path, url: &str, name: &str, size: (u32, u32)) {
    let png = profile.join(name);
    browse(
        bin,
        profile,
        &[
            &format!("--window-size={},{}", size.0, size.1),
            &format!("--screenshot={}", png.display()),
        ],
        url,
    );
    let bytes = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert!(bytes.starts_with(b"\x89PNG"), "{name} is a PNG");
    if let Some(dir) = std::env::var_os("LABGRADER_SCREENSHOT_DIR") {
        let dir = common::files::repo_root().join(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&png, dir.join(name)).unwrap();
    }
}

#[tokio::test]
async fn chromium_renders_the_result_page_with_the_grade_and_no_hidden_test() {
    let Some(bin) = chromium() else { return };
    let w = WebWorld::start("").await;
    let first = w.push("alice", 6, None).await;
    w.callback_of(&first, None).await;
    let job = w.push("alice", 8, None).await;
    let url = w.result_url(&job, None).await;
    let profile = tempfile::tempdir().unwrap();

    let dom = browse(&bin, profile.path(), &["--dump-dom"], &url);
    assert!(
        dom.contains(r#"id="grade">8"#),
        "the grade in the DOM: {dom}"
    );
    assert!(dom.contains(VISIBLE_TEST), "{dom}");
    assert!(!dom.contains(HIDDEN_TEST), "no hidden test in the DOM");
    // The student's markup stayed text: no element was made of it.
    assert!(!dom.contains("<script"), "{dom}");
    assert!(!dom.contains("<img"), "{dom}");
    assert!(dom.contains("&lt;script&gt;alert("), "{dom}");
    screenshot(&bin, profile.path(), &url, "web-result.png", (412, 1120));

    // A staff page, logged in with the staff token (HTTP Basic in the URL).
    let staff = format!(
        "http://ta:{STAFF_TOKEN}@{}/staff/jobs/{job}",
        w.base.trim_start_matches("http://")
    );
    let dom = browse(&bin, profile.path(), &["--dump-dom"], &staff);
    assert!(dom.contains(HIDDEN_TEST), "staff see hidden tests: {dom}");
    assert!(dom.contains(r#"id="grade">8"#), "{dom}");
    let list = format!(
        "http://ta:{STAFF_TOKEN}@{}/staff/",
        w.base.trim_start_matches("http://")
    );
    screenshot(&bin, profile.path(), &list, "web-staff.png", (1100, 800));

    // A waiting job: its place in the queue, and a page that reloads.
    std::fs::write(&w.hold, "").unwrap();
    let running = w.push("bob", 1, None).await;
    w.wait_active(&running).await;
    let waiting = w.push("carol", 2, None).await;
    let url = w.result_url(&waiting, Some("queued")).await;
    let dom = browse(&bin, profile.path(), &["--dump-dom"], &url);
    assert!(dom.contains("#1"), "the place in the queue: {dom}");
    assert!(dom.contains("http-equiv=\"refresh\""), "{dom}");
    screenshot(&bin, profile.path(), &url, "web-waiting.png", (412, 700));
    w.stop();
}
