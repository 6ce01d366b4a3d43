//! Exports of a commit's tree out of a mirror: `git archive` streamed into
//! [`workspace::extract_tar`] (which enforces the workspace limits), the
//! annotated-tag peel, and the fetch-then-retry order of a student export.
//! It never runs student code nor reads what it extracts.

use std::path::Path;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::catfile;
use super::error::MirrorError;
use super::repo::{Mirrors, loose_object_exists, redact_url, tidy_stderr};
use crate::git::{self, is_full_sha};
use crate::workspace::{self, Usage, WorkspaceError, WorkspaceLimits};

impl Mirrors {
    /// Export commit `sha` of `path` into the empty directory `dest`,
    /// fetching from `url` first only when the mirror lacks the commit
    /// (the common case, a mirror that has it, costs one `git archive`).
    /// Returns the usage and the commit exported: `sha` itself, or the
    /// commit it points to when `sha` is an annotated tag object (a
    /// `repository_update` hook names tags by their object). `git_ref` is
    /// the ref the event updated: a branch always points to a commit (git
    /// refuses anything else there), so only other refs pay for a
    /// `git rev-parse` beside the export. A fetch that started at or after
    /// `since` (the push's receipt) is not repeated: it holds the commit.
    #[allow(clippy::too_many_arguments)]
    pub async fn export_commit(
        &self,
        path: &str,
        url: &str,
        sha: &str,
        git_ref: &str,
        since: Instant,
        dest: &Path,
        limits: WorkspaceLimits,
        cancel: &CancellationToken,
    ) -> Result<(Usage, String), MirrorError> {
        if !is_full_sha(sha) {
            return Err(MirrorError::BadSha(sha.to_string()));
        }
        let dir = self.dir_for(path)?;
        // Each git process costs milliseconds of dispatch latency, so no
        // `has_commit` probes: a commit stored loose (what a fetch of a
        // push leaves) is exported straight away; otherwise (a fresh push,
        // the usual case, or a commit in a pack) fetch first, then export.
        if loose_object_exists(&dir, sha)
            && let Some(done) = self
                .try_export(&dir, url, sha, git_ref, dest, limits, cancel)
                .await?
        {
            return Ok(done);
        }
        if let Err(e) = self.fetch_since(&dir, url, since, cancel).await {
            // The commit may be in the mirror already (packed): grade it
            // rather than fail on the remote.
            if dir.join("HEAD").exists()
                && let Some(done) = self
                    .try_export(&dir, url, sha, git_ref, dest, limits, cancel)
                    .await?
            {
                return Ok(done);
            }
            return Err(e);
        }
        if let Some(done) = self
            .try_export(&dir, url, sha, git_ref, dest, limits, cancel)
            .await?
        {
            return Ok(done);
        }
        // Not reachable from a branch or tag any more: ask for it by id.
        let keep = format!("+{sha}:refs/labgrader/commits/{sha}");
        let _ = self.fetch(&dir, url, &[keep.as_str()], cancel).await;
        match self
            .try_export(&dir, url, sha, git_ref, dest, limits, cancel)
            .await?
        {
            Some(done) => Ok(done),
            None => Err(MirrorError::NoCommit {
                sha: sha.to_string(),
                url: redact_url(url),
            }),
        }
    }

    /// One export attempt (with the peel beside it, see `export_commit`).
    /// `None` when git cannot export `sha` (most likely an unknown commit);
    /// `dest` is then empty again, ready for the next attempt.
    #[allow(clippy::too_many_arguments)]
    async fn try_export(
        &self,
        dir: &Path,
        url: &str,
        sha: &str,
        git_ref: &str,
        dest: &Path,
        limits: WorkspaceLimits,
        cancel: &CancellationToken,
    ) -> Result<Option<(Usage, String)>, MirrorError> {
        let peel = async {
            if git_ref.starts_with("refs/heads/") {
                Ok(sha.to_ascii_lowercase())
            } else {
                self.peel_commit(dir, url, sha, cancel).await
            }
        };
        let (exported, commit) = tokio::join!(self.export(dir, sha, dest, limits, cancel), peel);
        match exported {
            Err(MirrorError::Git { .. }) => {
                let _ = workspace::remove_tree(dest);
                std::fs::create_dir_all(dest).map_err(|source| MirrorError::Io {
                    path: dest.to_path_buf(),
                    source,
                })?;
                Ok(None)
            }
            other => Ok(Some((other?, commit?))),
        }
    }

    /// The commit `sha` names in `mirror`: itself for a commit, the commit
    /// an annotated tag object points to (through nested tags) for a tag.
    pub async fn peel_commit(
        &self,
        mirror: &Path,
        url: &str,
        sha: &str,
        cancel: &CancellationToken,
    ) -> Result<String, MirrorError> {
        if !is_full_sha(sha) {
            return Err(MirrorError::BadSha(sha.to_string()));
        }
        let peel = format!("{sha}^{{commit}}");
        let out = self
            .git(
                mirror,
                "rev-parse",
                url,
                &["rev-parse", "--verify", "-q", &peel],
                cancel,
            )
            .await;
        match out {
            Ok(s) if is_full_sha(s.trim()) => Ok(s.trim().to_ascii_lowercase()),
            Ok(_) | Err(MirrorError::Git { .. }) => Err(MirrorError::NoCommit {
                sha: sha.to_string(),
                url: redact_url(url),
            }),
            Err(e) => Err(e),
        }
    }

    /// Export the tree of commit `sha` from `mirror` into the empty
    /// directory `dest`, within `limits`.
    pub async fn export(
        &self,
        mirror: &Path,
        sha: &str,
        dest: &Path,
        limits: WorkspaceLimits,
        cancel: &CancellationToken,
    ) -> Result<Usage, MirrorError> {
        if !is_full_sha(sha) {
            return Err(MirrorError::BadSha(sha.to_string()));
        }
        // The common case without a process: the mirror's cat-file.
        let cat_file = || self.command(mirror, &["cat-file", "--batch"]);
        if let Some(done) = catfile::export(
            &self.batch,
            cat_file,
            mirror,
            sha,
            dest,
            limits,
            self.timeout,
            cancel,
        )
        .await
        {
            return done;
        }
        let cmd = self.command(mirror, &["archive", "--format=tar", sha]);
        let mut child = { cmd }.spawn().map_err(MirrorError::Spawn)?;
        let pid = child.id();
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let dest = dest.to_path_buf();
        let task = tokio::task::spawn_blocking(move || {
            let mut usage = Usage::default();
            let extracted = workspace::extract_tar(stdout, &dest, &limits, &mut usage);
            if extracted.is_err() {
                git::kill_group(pid);
            }
            let mut err = Vec::new();
            let _ = std::io::Read::read_to_end(
                &mut std::io::Read::take(&mut stderr, git::STDERR_CAP as u64),
                &mut err,
            );
            // Drain the rest, so git never blocks on a full stderr pipe.
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
            let status = child.wait();
            (extracted.map(|()| usage), status, err)
        });
        let abort = || git::kill_group(pid);
        let joined = tokio::select! {
            r = tokio::time::timeout(self.timeout, task) => r,
            _ = cancel.cancelled() => { abort(); return Err(MirrorError::Cancelled) }
        };
        let (extracted, status, err) = match joined {
            Ok(Ok(v)) => v,
            Ok(Err(join)) => {
                return Err(MirrorError::Io {
                    path: mirror.to_path_buf(),
                    source: std::io::Error::other(join.to_string()),
                });
            }
            Err(_) => {
                abort();
                return Err(MirrorError::Timeout {
                    op: "archive",
                    url: mirror.display().to_string(),
                    secs: self.timeout.as_secs(),
                });
            }
        };
        // An archive that cannot be read is the tree's fault, unless git
        // itself said why it stopped writing it.
        if matches!(extracted, Err(WorkspaceError::Unreadable { .. }))
            && !String::from_utf8_lossy(&err).trim().is_empty()
        {
            return Err(MirrorError::Git {
                op: "archive",
                url: mirror.display().to_string(),
                stderr: tidy_stderr(&err),
            });
        }
        let usage = extracted?;
        let status = status.map_err(MirrorError::Spawn)?;
        if !status.success() {
            return Err(MirrorError::Git {
                op: "archive",
                url: mirror.display().to_string(),
                stderr: tidy_stderr(&err),
            });
        }
        Ok(usage)
    }
}
