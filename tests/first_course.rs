//! "Your first course" (`docs/first-course.md`) works as written: its
//! ```sh blocks, extracted from the page and run in order as one bash
//! script in an empty home directory, take a TA from nothing to a grade in
//! the gradebook with the real `labgrader serve` and Docker. The page and
//! this test cannot drift: the test has no commands of its own.
//!
//! A block right after a `<!-- not run: ... -->` comment is skipped
//! (installing the package, building the course image: the test setup has
//! done both).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const GUIDE: &str = "docs/first-course.md";

/// The page's runnable shell: every ```sh block not marked "not run".
fn script(markdown: &str) -> String {
    let mut out = String::new();
    let mut in_block = false;
    let mut skip_next = false;
    let mut skipping = false;
    for (n, line) in markdown.lines().enumerate() {
        let trimmed = line.trim();
        if !in_block && trimmed.starts_with("<!-- not run") {
            skip_next = true;
            continue;
        }
        if !in_block && trimmed.starts_with("```") {
            in_block = true;
            skipping = trimmed != "```sh" || skip_next;
            skip_next = false;
            if !skipping {
                out.push_str(&format!("# {GUIDE}:{}\n", n + 1));
            }
            continue;
        }
        if in_block && trimmed == "```" {
            in_block = false;
            continue;
        }
        if in_block && !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn blocks_are_extracted_in_order_and_marked_ones_skipped() {
    let page = "intro\n```sh\necho one\n```\n<!-- not run: x -->\n```sh\necho skipped\n```\n\
                ```toml\nkey = 1\n```\n```sh\necho two\n```\n";
    let s = script(page);
    assert!(s.contains("echo one\n"), "{s}");
    assert!(s.contains("echo two\n"), "{s}");
    assert!(!s.contains("skipped") && !s.contains("key = 1"), "{s}");
    assert!(s.find("echo one").unwrap() < s.find("echo two").unwrap());
}

#[test]
fn your_first_course_runs_as_written() {
    if common::services::docker_skipped() {
        return;
    }
    common::services::docker_image_id(common::services::COURSE_IMAGE);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let page = std::fs::read_to_string(root.join(GUIDE)).unwrap();
    let home = tempfile::tempdir().unwrap();
    let script_path = home.path().join("first-course.sh");
    // Whatever the script started in the background dies with it.
    let body = format!(
        "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{}",
        script(&page)
    );
    std::fs::write(&script_path, &body).unwrap();

    let bin_dir = Path::new(env!("CARGO_BIN_EXE_labgrader")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg(&script_path)
        .current_dir(home.path())
        .env_clear()
        .env("PATH", path)
        .env("HOME", home.path())
        .env("LANG", "C.UTF-8")
        .envs(std::env::var("DOCKER_HOST").map(|h| ("DOCKER_HOST", h)))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = std::fs::read_to_string(home.path().join("course/serve.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "the guide failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- serve.log\n{log}",
        out.status
    );
    // The last export: alice's row, graded 10 (of 10) for lab1.
    let row = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("alice,"))
        .unwrap_or_else(|| panic!("no gradebook row for alice:\n{stdout}\n{stderr}\n{log}"));
    let cells: Vec<&str> = row.split(',').collect();
    assert_eq!(cells.get(1), Some(&"lab1"), "{row}");
    assert_eq!(cells.get(3), Some(&"10"), "{row}");
    assert!(stdout.contains("image ok: sha256:"), "{stdout}");
    assert!(stdout.contains("config ok"), "{stdout}");
    assert!(stdout.contains("\"job_id\""), "{stdout}");
}
