//! Exports through the mirror's long-lived `cat-file` process write the
//! same tree as `git archive` does (a `.gitattributes` sends an export to
//! `git archive`, so two commits differing only by one compare the paths),
//! see objects fetched after the process started, and leave to `git
//! archive` what it alone decides (`export-ignore`).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use labgrader::mirror::Mirrors;
use labgrader::workspace::WorkspaceLimits;
use tokio_util::sync::CancellationToken;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_COMMITTER_DATE", "1700000000 +0000")
        .env("GIT_AUTHOR_DATE", "1700000000 +0000")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Every entry under `dir`: path, kind, mode, mtime, contents or target.
fn snapshot(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir).min_depth(1).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
        if rel == ".gitattributes" {
            continue;
        }
        let m = e.path().symlink_metadata().unwrap();
        let what = if m.file_type().is_symlink() {
            format!("-> {}", std::fs::read_link(e.path()).unwrap().display())
        } else if m.is_dir() {
            format!("dir {:o}", m.permissions().mode() & 0o7777)
        } else {
            let bytes = std::fs::read(e.path()).unwrap();
            format!(
                "file {:o} mtime {} {} bytes {:?}",
                m.permissions().mode() & 0o7777,
                m.mtime(),
                bytes.len(),
                String::from_utf8_lossy(&bytes[..bytes.len().min(16)])
            )
        };
        out.push(format!("{rel}: {what}"));
    }
    out
}

/// Whether a `git -C <mirror> cat-file --batch` process is running.
fn cat_file_running(mirror: &Path) -> bool {
    let want = format!("git\0-C\0{}\0cat-file\0--batch\0", mirror.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .any(|p| std::fs::read(p.path().join("cmdline")).is_ok_and(|c| c == want.as_bytes()))
}

fn limits() -> WorkspaceLimits {
    WorkspaceLimits {
        bytes: 1 << 30,
        files: 100_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cat_file_exports_match_git_archive_and_see_later_fetches() {
    let t = tempfile::tempdir().unwrap();
    let bare = t.path().join("gitlab/course/s1/lab.git");
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    let w = t.path().join("w");
    std::fs::create_dir_all(w.join("src/deep")).unwrap();
    git(&w, &["init", "-q", "-b", "main"]);
    std::fs::write(w.join("README.md"), "hello\n").unwrap();
    std::fs::write(w.join("src/main.c"), "int main(void){return 0;}\n").unwrap();
    std::fs::write(w.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(w.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let long = "d".repeat(120);
    std::fs::create_dir_all(w.join("src/deep").join(&long)).unwrap();
    std::fs::write(
        w.join("src/deep").join(&long).join("f.txt"),
        "x".repeat(5000),
    )
    .unwrap();
    std::os::unix::fs::symlink("../README.md", w.join("src/link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", w.join("abs")).unwrap();
    git(&w, &["add", "-A"]);
    git(&w, &["commit", "-q", "-m", "one"]);
    let plain = git(&w, &["rev-parse", "HEAD"]);
    std::fs::write(w.join(".gitattributes"), "*.txt text\n").unwrap();
    git(&w, &["add", "-A"]);
    git(&w, &["commit", "-q", "-m", "attrs"]);
    let with_attrs = git(&w, &["rev-parse", "HEAD"]);
    let url = format!("file://{}", bare.display());
    git(&w, &["push", "-q", &url, "HEAD:refs/heads/main"]);

    let m = Mirrors::new(t.path().join("mirrors"), Duration::from_secs(60), None);
    let cancel = CancellationToken::new();
    let export = |sha: String, dest: std::path::PathBuf| {
        let (m, url, cancel) = (&m, url.clone(), cancel.clone());
        async move {
            std::fs::create_dir_all(&dest).unwrap();
            m.export_commit(
                "course/s1/lab",
                &url,
                &sha,
                "refs/heads/main",
                Instant::now(),
                &dest,
                limits(),
                &cancel,
            )
            .await
            .unwrap()
        }
    };
    let (fast_usage, c1) = export(plain.clone(), t.path().join("fast")).await;
    let (archive_usage, _) = export(with_attrs.clone(), t.path().join("archive")).await;
    assert_eq!(c1, plain);
    let fast = snapshot(&t.path().join("fast"));
    assert_eq!(fast, snapshot(&t.path().join("archive")));
    assert!(fast.iter().any(|l| l == "abs: -> /etc/passwd"), "{fast:#?}");
    assert!(
        fast.iter()
            .any(|l| l.starts_with("run.sh: file 775 mtime 1700000000")),
        "{fast:#?}"
    );
    // The same files and bytes counted, less the .gitattributes file.
    assert_eq!(fast_usage.files + 1, archive_usage.files);
    // The fast export went through the mirror's cat-file process.
    let mirror = t.path().join("mirrors/course/s1/lab.git");
    assert!(
        cat_file_running(&mirror),
        "no cat-file --batch for {mirror:?}"
    );

    // A commit pushed after the process started: fetched, then exported
    // by the same process.
    std::fs::write(w.join("README.md"), "two\n").unwrap();
    git(&w, &["commit", "-q", "-a", "-m", "two"]);
    let later = git(&w, &["rev-parse", "HEAD"]);
    git(&w, &["push", "-q", &url, "HEAD:refs/heads/main"]);
    export(plain.clone(), t.path().join("again")).await;
    export(later, t.path().join("later")).await;
    assert_eq!(
        std::fs::read_to_string(t.path().join("later/README.md")).unwrap(),
        "two\n"
    );

    // export-ignore is git archive's to honour.
    std::fs::write(w.join(".gitattributes"), "secret.txt export-ignore\n").unwrap();
    std::fs::write(w.join("secret.txt"), "s\n").unwrap();
    git(&w, &["add", "-A"]);
    git(&w, &["commit", "-q", "-m", "ignore"]);
    let ignoring = git(&w, &["rev-parse", "HEAD"]);
    git(&w, &["push", "-q", &url, "HEAD:refs/heads/main"]);
    export(ignoring, t.path().join("ignoring")).await;
    assert!(!t.path().join("ignoring/secret.txt").exists());
    assert!(t.path().join("ignoring/README.md").exists());

    // A submodule is left to git archive.
    git(
        &w,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            "160000,1111111111111111111111111111111111111111,sub",
        ],
    );
    git(&w, &["commit", "-q", "-m", "sub"]);
    let with_sub = git(&w, &["rev-parse", "HEAD"]);
    git(&w, &["push", "-q", &url, "HEAD:refs/heads/main"]);
    export(with_sub, t.path().join("sub")).await;
    assert!(t.path().join("sub/README.md").exists());

    // Over the workspace's limits: the same refusal as before.
    let small = WorkspaceLimits {
        bytes: 100,
        files: 100_000,
    };
    let dest = t.path().join("small");
    std::fs::create_dir_all(&dest).unwrap();
    let e = m
        .export_commit(
            "course/s1/lab",
            &url,
            &plain,
            "refs/heads/main",
            Instant::now(),
            &dest,
            small,
            &cancel,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("100"), "{e}");
}
