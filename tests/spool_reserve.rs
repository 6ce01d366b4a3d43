//! The free-space reserve (`[spool] min_free`, issue 14) on a real, small
//! file system: a tmpfs mounted as the spool (needs root; skipped with a
//! message otherwise). Under the mark the hook answers 503 and stores
//! nothing, the grader claims nothing; once space is freed both go on.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::daemon::{Server, job_of, text};
use common::gitlab::{push_body, push_headers, sha};
use common::world::{Fixture, World, simple_test_all};
use labgrader::config::ByteSize;
use labgrader::spool::State;

/// A tmpfs of `size` mounted on `dir`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` (with the reason printed) when this test cannot mount.
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting a tmpfs as the spool needs root");
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!(
                "skipped: cannot mount a tmpfs here: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fill the file system of `dir` until less than `leave` bytes are free.
fn ballast(dir: &Path, leave: u64) -> PathBuf {
    let p = dir.join("ballast");
    let free = labgrader::reserve::free_bytes(dir).unwrap();
    let size = (free.saturating_sub(leave) + (256 << 10)) as usize;
    std::fs::write(&p, vec![0x5a_u8; size]).unwrap();
    assert!(labgrader::reserve::free_bytes(dir).unwrap() < leave);
    p
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_under_min_free_answers_503_and_stores_nothing_then_202_once_space_is_freed() {
    let w = World::new();
    let Some(_fs) = Tmpfs::mount(&w.spool_dir(), "24m") else {
        return;
    };
    w.bare_repo("root/lab1-test");
    let mut cfg = w.config();
    cfg.spool.min_free = ByteSize(8 << 20);
    let s = Server::start(cfg).await;

    let r = s
        .post(
            &push_headers("Push Hook", "key-1"),
            push_body("course/ada/lab1", "refs/heads/main", &sha(0), &sha(1)),
        )
        .await;
    let first = job_of(&r);

    let spool = w.spool_dir();
    let fill = ballast(&spool, 4 << 20);
    let keys_before = entries(&spool.join("keys"));
    let r = s
        .post(
            &push_headers("Push Hook", "key-2"),
            push_body("course/ada/lab1", "refs/heads/main", &sha(1), &sha(2)),
        )
        .await;
    assert_eq!(r.status.as_u16(), 503, "{}", text(&r));
    assert!(text(&r).contains("[spool] min_free"), "{}", text(&r));
    // Nothing half-written: one job waiting, no tmp file, no new marker.
    assert_eq!(s.incoming(), [format!("{first}.json")]);
    assert!(entries(&spool.join("tmp")).is_empty());
    assert_eq!(entries(&spool.join("keys")), keys_before);
    // A re-send of the push already stored is still answered as such, and
    // a push that is no submission still gets its 200.
    let r = s
        .post(
            &push_headers("Push Hook", "key-1"),
            push_body("course/ada/lab1", "refs/heads/main", &sha(0), &sha(1)),
        )
        .await;
    assert_eq!(job_of(&r), first);
    let r = s
        .post(
            &push_headers("Push Hook", "key-3"),
            push_body("course/ada/nolab", "refs/heads/main", &sha(0), &sha(1)),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", text(&r));
    let m = text(&s.get("/metrics").await);
    assert!(m.contains("labgrader_hook_low_space_total 1"), "{m}");
    assert!(m.contains("labgrader_spool_free_bytes "), "{m}");

    // Space freed: GitLab's re-send of the same delivery is stored, as new.
    std::fs::remove_file(&fill).unwrap();
    let r = s
        .post(
            &push_headers("Push Hook", "key-2"),
            push_body("course/ada/lab1", "refs/heads/main", &sha(1), &sha(2)),
        )
        .await;
    let second = job_of(&r);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert!(v.get("duplicate").is_none(), "{v}");
    assert_ne!(first, second);
    assert_eq!(s.incoming().len(), 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grader_claims_nothing_under_min_free_and_resumes_when_space_is_freed() {
    let f = Fixture::new();
    let Some(_fs) = Tmpfs::mount(&f.spool_dir, "32m") else {
        return;
    };
    f.tests_repo("lab1", &simple_test_all("42"));
    let sha = f.push("course/alice/lab1", |w| {
        std::fs::write(w.join("a.txt"), "a").unwrap()
    });
    let mut cfg = (*f.config("")).clone();
    cfg.spool.min_free = ByteSize(8 << 20);
    let cfg = std::sync::Arc::new(cfg);
    let spool = f.spool();
    let fill = ballast(&f.spool_dir, 4 << 20);
    let ev = f.event("course/alice/lab1", &sha);
    f.enqueue(&ev);
    let d = f.start(cfg);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(spool.list(State::Incoming).unwrap(), [ev.file_name()]);
    assert!(spool.list(State::Active).unwrap().is_empty());
    std::fs::remove_file(&fill).unwrap();
    let r = f.wait_done(&ev.job_id, Duration::from_secs(60)).await;
    d.stop().await;
    assert_eq!(r.grade_total, Some(42.0));
}
