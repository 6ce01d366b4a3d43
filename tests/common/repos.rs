//! Real git repositories made with the git CLI: the one `git` runner of the
//! tests (hermetic config, a fixed student identity), bare repositories
//! served by `file://` URLs, commits pushed into them, and commits exported
//! as the grader exports a student tree. It never talks to a network
//! remote and never reads the developer's git configuration.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `git -C dir ARGS` with no global or system config and the student's
/// identity; panics with git's stderr on failure; returns stdout, trimmed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    run(dir, args, None, None)
}

/// [`git`] with `input` on stdin (`hash-object --stdin`, `mktree`, ...).
pub fn git_in(dir: &Path, args: &[&str], input: &str) -> String {
    run(dir, args, Some(input), None)
}

/// [`git`] with author and committer dates set to `date` when given.
pub fn git_dated(dir: &Path, args: &[&str], date: Option<&str>) -> String {
    run(dir, args, None, date)
}

fn run(dir: &Path, args: &[&str], input: Option<&str>, date: Option<&str>) -> String {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Student")
        .env("GIT_AUTHOR_EMAIL", "student@example.edu")
        .env("GIT_COMMITTER_NAME", "Student")
        .env("GIT_COMMITTER_EMAIL", "student@example.edu")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(d) = date {
        cmd.env("GIT_COMMITTER_DATE", d).env("GIT_AUTHOR_DATE", d);
    }
    let mut child = cmd.spawn().expect("git runs");
    if let Some(text) = input {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `git init --bare` at `path` (directories created), HEAD on `main`.
pub fn init_bare(path: &Path) -> PathBuf {
    std::fs::create_dir_all(path).unwrap();
    git(path, &["init", "--bare", "-q", "-b", "main"]);
    path.to_path_buf()
}

/// The `file://` URL of a local repository.
pub fn file_url(repo: &Path) -> String {
    format!("file://{}", repo.display())
}

/// The `clone_url` template (`{path}` = namespace/name) of the bare
/// repositories under `root`, laid out `<root>/<namespace>/<name>.git`.
pub fn clone_url_template(root: &Path) -> String {
    format!("file://{}/{{path}}.git", root.display())
}

/// Let `edit` change the work tree `work` (cloned from nothing on first use,
/// with `bare` as origin), commit everything, push to `main` and return the
/// new commit's SHA.
pub fn commit_and_push(work: &Path, bare: &Path, edit: impl FnOnce(&Path)) -> String {
    if !work.exists() {
        std::fs::create_dir_all(work).unwrap();
        git(work, &["init", "-q", "-b", "main"]);
        git(work, &["remote", "add", "origin", &file_url(bare)]);
    }
    edit(work);
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "--allow-empty", "-m", "work"]);
    git(work, &["push", "-q", "origin", "HEAD:refs/heads/main"]);
    git(work, &["rev-parse", "HEAD"])
}

/// Commit `files` (name, contents; contents `->TARGET` = a symlink) in a
/// new repository `root/repo`, dated `date` when given, and export the
/// commit with `git archive` into `root/tree`, as the grader exports a
/// student tree. Returns the tree and the commit.
pub fn exported_commit(
    root: &Path,
    files: &[(&str, &str)],
    date: Option<&str>,
) -> (PathBuf, String) {
    let repo = root.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    for (name, contents) in files {
        match contents.strip_prefix("->") {
            Some(target) => std::os::unix::fs::symlink(target, repo.join(name)).unwrap(),
            None => std::fs::write(repo.join(name), contents).unwrap(),
        }
    }
    git(&repo, &["add", "-A"]);
    git_dated(&repo, &["commit", "-q", "-m", "submission"], date);
    let sha = git(&repo, &["rev-parse", "HEAD"]);
    let tree = root.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let archive = root.join("tree.tar");
    git(&repo, &["archive", "-o", archive.to_str().unwrap(), &sha]);
    let st = Command::new("tar")
        .args([
            "-xf",
            archive.to_str().unwrap(),
            "-C",
            tree.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    (tree, sha)
}

/// [`exported_commit`] without a date, the tree only.
pub fn exported_tree(root: &Path, files: &[(&str, &str)]) -> PathBuf {
    exported_commit(root, files, None).0
}
