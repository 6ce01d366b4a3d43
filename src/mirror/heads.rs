//! Bringing a mirror up to date: to hold one student commit
//! ([`Mirrors::ensure_commit`]) or to know the test repository's
//! default-branch head ([`Mirrors::default_head`]), sharing one fetch
//! between jobs that start together. It never exports a tree.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::error::MirrorError;
use super::repo::{Mirrors, redact_url};
use crate::git::is_full_sha;

/// Ref holding the test repository's default-branch head as last fetched.
const TESTS_HEAD_REF: &str = "refs/labgrader/head";

impl Mirrors {
    /// Make sure the mirror of `path` holds commit `sha` (fetching from
    /// `url` only when it does not) and return its directory.
    pub async fn ensure_commit(
        &self,
        path: &str,
        url: &str,
        sha: &str,
        cancel: &CancellationToken,
    ) -> Result<PathBuf, MirrorError> {
        if !is_full_sha(sha) {
            return Err(MirrorError::BadSha(sha.to_string()));
        }
        let since = Instant::now();
        let dir = self.dir_for(path)?;
        if dir.exists() && self.has_commit(&dir, sha, cancel).await? {
            return Ok(dir);
        }
        self.fetch_since(&dir, url, since, cancel).await?;
        if self.has_commit(&dir, sha, cancel).await? {
            return Ok(dir);
        }
        // Not reachable from a branch or tag any more: ask for it by id.
        let keep = format!("+{sha}:refs/labgrader/commits/{sha}");
        let _ = self.fetch(&dir, url, &[keep.as_str()], cancel).await;
        if self.has_commit(&dir, sha, cancel).await? {
            return Ok(dir);
        }
        Err(MirrorError::NoCommit {
            sha: sha.to_string(),
            url: redact_url(url),
        })
    }

    /// Fetch the mirror of `path` unless a fetch started at or after
    /// `since` already succeeded (jobs that start together share one
    /// fetch), and return the mirror and its default-branch head commit.
    pub async fn default_head(
        &self,
        path: &str,
        url: &str,
        since: Instant,
        cancel: &CancellationToken,
    ) -> Result<(PathBuf, String), MirrorError> {
        let dir = self.dir_for(path)?;
        let lock = self.lock_for(&dir);
        let mut state = lock.lock().await;
        let fresh = state.fetched_at.is_some_and(|t| t >= since);
        if !fresh {
            self.init(&dir).await?;
            let started = Instant::now();
            // The common case, tests unchanged since the last fetch: one
            // ref advertisement (`ls-remote`, about 6 ms on file://) instead
            // of a fetch (about 10 ms). The head is still read at job start.
            if let Some(head) = self.unchanged_head(&dir, url, cancel).await? {
                state.fetched_at = Some(started);
                return Ok((dir, head));
            }
            let head = format!("+HEAD:{TESTS_HEAD_REF}");
            match self.fetch(&dir, url, &[head.as_str()], cancel).await {
                Ok(()) => {}
                Err(MirrorError::Git { stderr, .. })
                    if stderr.contains("couldn't find remote ref HEAD") =>
                {
                    return Err(self.no_tests_head(&dir, url, cancel).await);
                }
                Err(e) => return Err(e),
            }
            state.fetched_at = Some(started);
        }
        drop(state);
        // The ref is a loose file (nothing packs refs: gc is off); reading
        // it saves a process. rev-parse if it is not there.
        if let Ok(text) = std::fs::read_to_string(dir.join(TESTS_HEAD_REF)) {
            let sha = text.trim();
            if is_full_sha(sha) {
                return Ok((dir, sha.to_string()));
            }
        }
        let out = self
            .git(
                &dir,
                "rev-parse",
                url,
                &[
                    "rev-parse",
                    "--verify",
                    "-q",
                    &format!("{TESTS_HEAD_REF}^{{commit}}"),
                ],
                cancel,
            )
            .await;
        match out {
            Ok(sha) if is_full_sha(sha.trim()) => Ok((dir, sha.trim().to_string())),
            _ => Err(self.no_tests_head(&dir, url, cancel).await),
        }
    }

    /// The error for a test repository whose HEAD names no commit, saying
    /// which branch HEAD names (readable for `file://` URLs) and which
    /// branches exist (`ls-remote --heads`, best effort).
    async fn no_tests_head(
        &self,
        dir: &Path,
        url: &str,
        cancel: &CancellationToken,
    ) -> MirrorError {
        let head = url
            .strip_prefix("file://")
            .and_then(|p| std::fs::read_to_string(Path::new(p).join("HEAD")).ok())
            .and_then(|t| {
                t.trim()
                    .strip_prefix("ref: refs/heads/")
                    .map(str::to_string)
            });
        let branches = self
            .git(
                dir,
                "ls-remote",
                url,
                &["ls-remote", "--heads", url],
                cancel,
            )
            .await
            .map(|out| {
                out.lines()
                    .filter_map(|l| l.split('\t').nth(1)?.strip_prefix("refs/heads/"))
                    .take(10)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        MirrorError::NoTestsHead {
            url: redact_url(url),
            head,
            branches,
        }
    }

    /// The mirror's recorded tests head when the remote's `HEAD` still
    /// names it and the mirror holds that commit; `None` when a fetch is
    /// needed (changed, never fetched, or git refused the `ls-remote`: the
    /// fetch then reports why). A timeout or cancellation is returned as is.
    async fn unchanged_head(
        &self,
        dir: &Path,
        url: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<String>, MirrorError> {
        let Ok(ours) = std::fs::read_to_string(dir.join(TESTS_HEAD_REF)) else {
            return Ok(None);
        };
        let ours = ours.trim();
        if !is_full_sha(ours) {
            return Ok(None);
        }
        let out = match self
            .git(
                dir,
                "ls-remote",
                url,
                &["ls-remote", "--", url, "HEAD"],
                cancel,
            )
            .await
        {
            Ok(out) => out,
            // git answered with an error: let the fetch say it properly.
            Err(MirrorError::Git { .. }) => return Ok(None),
            // A hung or cancelled remote: do not wait a second time.
            Err(e) => return Err(e),
        };
        let theirs = out.lines().find_map(|l| {
            let (sha, name) = l.split_once('\t')?;
            (name == "HEAD").then_some(sha)
        });
        // The ref is only ever written by a completed fetch, so its commit
        // is in the mirror.
        Ok(theirs
            .filter(|t| t.eq_ignore_ascii_case(ours))
            .map(|_| ours.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::Duration;

    fn git(dir: &Path, args: &[&str]) {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A TA's bare test repository whose HEAD names `master` while `main`
    /// was pushed: the error names both.
    #[tokio::test]
    async fn a_head_naming_a_missing_branch_is_named_with_the_branches_there() {
        let t = tempfile::tempdir().unwrap();
        let bare = t.path().join("lab1-test.git");
        std::fs::create_dir(&bare).unwrap();
        git(&bare, &["init", "-q", "--bare", "-b", "master"]);
        let work = t.path().join("w");
        std::fs::create_dir(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        git(&work, &["commit", "-q", "--allow-empty", "-m", "tests"]);
        git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
        let m = Mirrors::new(t.path().join("mirrors"), Duration::from_secs(30), None);
        let url = format!("file://{}", bare.display());
        let e = m
            .default_head(
                "root/lab1-test",
                &url,
                Instant::now(),
                &CancellationToken::new(),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("its HEAD names `master`, which does not exist"),
            "{e}"
        );
        assert!(e.contains("its branches are main."), "{e}");
        assert!(e.contains("git symbolic-ref HEAD refs/heads/main"), "{e}");
    }
}
