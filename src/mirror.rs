//! Bare git mirrors of student and test repositories, and exports from them.
//!
//! Owns `<spool dir>/mirrors/<namespace>/<name>.git`: one bare repository per
//! GitLab project, created on first use and fetched incrementally. A
//! student tree is exported at an exact commit SHA (never "whatever the
//! branch points to now"; an annotated tag object is peeled to its commit,
//! which the export returns); a test tree at the commit its default branch
//! pointed to when fetched. Exports stream `git archive` into
//! [`workspace::extract_tar`], which enforces the workspace limits.
//!
//! git always runs with no terminal prompt, in its own process group, under
//! a timeout that kills the group. The GitLab token reaches git only
//! through the environment (`GIT_CONFIG_COUNT`/`KEY`/`VALUE` setting an
//! `http.extraHeader`): never in argv, never in a mirror's config, never in
//! a log line or error message. This module never runs student code and
//! never decides a job's status: it says whether a failure is the
//! submission's (a commit that does not exist) or the grader's (git could
//! not reach the server) via [`MirrorError::is_infra`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::config::Secret;
use crate::workspace::{self, Usage, WorkspaceError, WorkspaceLimits};

/// Ref holding the test repository's default-branch head as last fetched.
const TESTS_HEAD_REF: &str = "refs/labgrader/head";
/// Directory (under the mirrors root) caching extracted test trees by SHA.
const TREE_CACHE: &str = ".trees";
/// Cached trees kept before old ones are pruned.
const TREE_CACHE_KEEP: usize = 64;
/// Bytes of git's stderr kept for an error message.
const STDERR_KEEP: usize = 2000;
/// Transports git may use: no `ext::` or other command-running helpers.
const ALLOWED_PROTOCOLS: &str = "file:git:http:https:ssh";

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error(
        "repository path {0:?} is not a valid GitLab namespace/name (letters, digits, `.`, `-`, `_`)"
    )]
    BadPath(String),
    #[error("{0:?} is not a full commit SHA")]
    BadSha(String),
    #[error("cannot run git (is it installed?): {0}")]
    Spawn(std::io::Error),
    #[error("git {op} of {url} did not finish within {secs} s (raise [grader] git_timeout?)")]
    Timeout {
        op: &'static str,
        url: String,
        secs: u64,
    },
    #[error("git {op} of {url} failed: {stderr}")]
    Git {
        op: &'static str,
        url: String,
        stderr: String,
    },
    #[error("commit {sha} is not in {url}: it was never pushed there or was force-pushed away")]
    NoCommit { sha: String, url: String },
    #[error("the test repository {url} has no default branch with a commit")]
    NoTestsHead { url: String },
    #[error("cannot prepare the mirror at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error("cancelled by shutdown")]
    Cancelled,
}

impl MirrorError {
    /// True when the grader is at fault (git or the server unreachable,
    /// disk trouble): the job is retried, never charged to the student.
    pub fn is_infra(&self) -> bool {
        match self {
            MirrorError::BadPath(_)
            | MirrorError::BadSha(_)
            | MirrorError::NoCommit { .. }
            | MirrorError::Cancelled => false,
            MirrorError::Workspace(w) => matches!(
                w,
                WorkspaceError::Read { .. } | WorkspaceError::Write { .. }
            ),
            _ => true,
        }
    }
}

/// The set of mirrors under one directory.
pub struct Mirrors {
    root: PathBuf,
    timeout: Duration,
    token: Option<Secret>,
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<MirrorState>>>>,
}

#[derive(Default)]
struct MirrorState {
    /// When the last successful fetch started.
    fetched_at: Option<Instant>,
}

/// True for a full hex commit id (SHA-1 or SHA-256).
pub fn is_full_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `url` without any `user:password@` part, for messages.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((_, host)) = rest.split_once('@')
        && !rest.split('/').next().unwrap_or("").is_empty()
        && rest.find('@') < rest.find('/')
    {
        return format!("{scheme}://***@{host}");
    }
    url.to_string()
}

impl Mirrors {
    pub fn new(root: impl Into<PathBuf>, timeout: Duration, token: Option<Secret>) -> Mirrors {
        let root = root.into();
        Mirrors {
            root,
            timeout,
            token,
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The mirror directory of `path` (`namespace/name`).
    pub fn dir_for(&self, path: &str) -> Result<PathBuf, MirrorError> {
        let ok = !path.is_empty()
            && path.split('/').all(|c| {
                !c.is_empty()
                    && !c.starts_with('.')
                    && !c.ends_with(".git")
                    && c.len() <= 255
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            });
        if !ok {
            return Err(MirrorError::BadPath(path.to_string()));
        }
        Ok(self.root.join(format!("{path}.git")))
    }

    fn lock_for(&self, dir: &Path) -> Arc<tokio::sync::Mutex<MirrorState>> {
        let mut g = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        g.entry(dir.to_path_buf()).or_default().clone()
    }

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
        if dir.exists() && self.has_commit(&dir, sha).await? {
            return Ok(dir);
        }
        self.fetch_since(&dir, url, since, cancel).await?;
        if self.has_commit(&dir, sha).await? {
            return Ok(dir);
        }
        // Not reachable from a branch or tag any more: ask for it by id.
        let keep = format!("+{sha}:refs/labgrader/commits/{sha}");
        let _ = self.fetch(&dir, url, &[keep.as_str()], cancel).await;
        if self.has_commit(&dir, sha).await? {
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
                    return Err(MirrorError::NoTestsHead {
                        url: redact_url(url),
                    });
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
            _ => Err(MirrorError::NoTestsHead {
                url: redact_url(url),
            }),
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

    /// Export commit `sha` of `path` into the empty directory `dest`,
    /// fetching from `url` first only when the mirror lacks the commit
    /// (the common case, a mirror that has it, costs one `git archive`).
    /// Returns the usage and the commit exported: `sha` itself, or the
    /// commit it points to when `sha` is an annotated tag object (a
    /// `repository_update` hook names tags by their object). `git_ref` is
    /// the ref the event updated: a branch always points to a commit (git
    /// refuses anything else there), so only other refs pay for a
    /// `git rev-parse` beside the export.
    #[allow(clippy::too_many_arguments)]
    pub async fn export_commit(
        &self,
        path: &str,
        url: &str,
        sha: &str,
        git_ref: &str,
        dest: &Path,
        limits: WorkspaceLimits,
        cancel: &CancellationToken,
    ) -> Result<(Usage, String), MirrorError> {
        if !is_full_sha(sha) {
            return Err(MirrorError::BadSha(sha.to_string()));
        }
        let since = Instant::now();
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

    /// Create the mirror if needed and fetch every branch and tag, unless
    /// a fetch that started at or after `since` already succeeded.
    async fn fetch_since(
        &self,
        dir: &Path,
        url: &str,
        since: Instant,
        cancel: &CancellationToken,
    ) -> Result<(), MirrorError> {
        let lock = self.lock_for(dir);
        let mut state = lock.lock().await;
        if state.fetched_at.is_some_and(|t| t >= since) {
            return Ok(());
        }
        self.init(dir).await?;
        let started = Instant::now();
        self.fetch(dir, url, &[], cancel).await?;
        state.fetched_at = Some(started);
        Ok(())
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

    /// The tree of commit `sha` of `mirror`, extracted once into a cache
    /// shared by every job that uses it (test trees: many jobs, one
    /// commit). The returned directory must only be read.
    pub async fn cached_tree(
        &self,
        mirror: &Path,
        sha: &str,
        cancel: &CancellationToken,
    ) -> Result<PathBuf, MirrorError> {
        if !is_full_sha(sha) {
            return Err(MirrorError::BadSha(sha.to_string()));
        }
        let cache = self.root.join(TREE_CACHE);
        let dest = cache.join(sha);
        if dest.is_dir() {
            // Mark it used, so pruning leaves it alone.
            if let Ok(f) = std::fs::File::open(&dest) {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
            return Ok(dest);
        }
        let tmp = cache.join(format!(".tmp-{}", crate::spool::new_job_id()));
        std::fs::create_dir_all(&tmp).map_err(|source| MirrorError::Io {
            path: tmp.clone(),
            source,
        })?;
        let unlimited = WorkspaceLimits {
            bytes: u64::MAX,
            files: u64::MAX,
        };
        if let Err(e) = self.export(mirror, sha, &tmp, unlimited, cancel).await {
            let _ = workspace::remove_tree(&tmp);
            return Err(e);
        }
        if std::fs::rename(&tmp, &dest).is_err() {
            // Another job extracted it first.
            let _ = workspace::remove_tree(&tmp);
        }
        self.prune_tree_cache(&cache);
        Ok(dest)
    }

    /// Keep the tree cache small: past `TREE_CACHE_KEEP` entries, remove
    /// those unused for an hour (no job runs that long).
    fn prune_tree_cache(&self, cache: &Path) {
        let Ok(rd) = std::fs::read_dir(cache) else {
            return;
        };
        let entries: Vec<_> = rd.flatten().collect();
        if entries.len() <= TREE_CACHE_KEEP {
            return;
        }
        let hour = Duration::from_secs(3600);
        for e in entries {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > hour);
            if old {
                let _ = workspace::remove_tree(&e.path());
            }
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
        let mut cmd = std::process::Command::new("git");
        self.prepare_std(&mut cmd);
        cmd.arg("-C")
            .arg(mirror)
            .args(["archive", "--format=tar", sha])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().map_err(MirrorError::Spawn)?;
        let pid = Pid::from_raw(child.id() as i32);
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let dest = dest.to_path_buf();
        let task = tokio::task::spawn_blocking(move || {
            let mut usage = Usage::default();
            let extracted = workspace::extract_tar(stdout, &dest, &limits, &mut usage);
            if extracted.is_err() {
                let _ = killpg(pid, Signal::SIGKILL);
            }
            let mut err = Vec::new();
            let _ = std::io::Read::read_to_end(
                &mut std::io::Read::take(&mut stderr, 64 * 1024),
                &mut err,
            );
            let status = child.wait();
            (extracted.map(|()| usage), status, err)
        });
        let abort = || {
            let _ = killpg(pid, Signal::SIGKILL);
        };
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

    async fn has_commit(&self, dir: &Path, sha: &str) -> Result<bool, MirrorError> {
        let mut cmd = Command::new("git");
        self.prepare(&mut cmd);
        let status = cmd
            .arg("-C")
            .arg(dir)
            .args(["cat-file", "-e", &format!("{sha}^{{commit}}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .map_err(MirrorError::Spawn)?;
        Ok(status.success())
    }

    async fn init(&self, dir: &Path) -> Result<(), MirrorError> {
        if dir.join("HEAD").exists() {
            return Ok(());
        }
        let parent = dir.parent().expect("mirror dirs have a parent");
        std::fs::create_dir_all(parent).map_err(|source| MirrorError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
        let tmp = parent.join(format!(
            ".{}.init-{}",
            dir.file_name().unwrap_or_default().to_string_lossy(),
            crate::spool::new_job_id()
        ));
        let never = CancellationToken::new();
        let tmp_s = tmp.to_string_lossy().into_owned();
        self.git(
            parent,
            "init",
            "",
            &["init", "--bare", "-q", &tmp_s],
            &never,
        )
        .await?;
        std::fs::rename(&tmp, dir).map_err(|source| {
            let _ = std::fs::remove_dir_all(&tmp);
            MirrorError::Io {
                path: dir.to_path_buf(),
                source,
            }
        })
    }

    async fn fetch(
        &self,
        dir: &Path,
        url: &str,
        extra: &[&str],
        cancel: &CancellationToken,
    ) -> Result<(), MirrorError> {
        let mut args = vec![
            "-c",
            "gc.auto=0",
            "-c",
            "maintenance.auto=false",
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--no-recurse-submodules",
            "--",
            url,
        ];
        if extra.iter().all(|r| r.starts_with("+HEAD:")) {
            args.push("+refs/heads/*:refs/heads/*");
            args.push("+refs/tags/*:refs/tags/*");
        }
        args.extend_from_slice(extra);
        self.git(dir, "fetch", url, &args, cancel).await.map(|_| ())
    }

    /// Environment every git command gets (token included for http(s)).
    fn env_pairs(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("GIT_TERMINAL_PROMPT", "0".to_string()),
            ("GIT_ASKPASS", "/bin/false".to_string()),
            ("SSH_ASKPASS", "/bin/false".to_string()),
            ("GIT_ALLOW_PROTOCOL", ALLOWED_PROTOCOLS.to_string()),
            ("GIT_CONFIG_NOSYSTEM", "1".to_string()),
        ];
        if std::env::var_os("GIT_SSH_COMMAND").is_none() {
            env.push(("GIT_SSH_COMMAND", "ssh -o BatchMode=yes".to_string()));
        }
        if let Some(t) = &self.token {
            // GitLab takes a token as the password of HTTP basic auth.
            let basic = base64(format!("oauth2:{}", t.expose()).as_bytes());
            env.push(("GIT_CONFIG_COUNT", "1".to_string()));
            env.push(("GIT_CONFIG_KEY_0", "http.extraHeader".to_string()));
            env.push((
                "GIT_CONFIG_VALUE_0",
                format!("Authorization: Basic {basic}"),
            ));
        }
        env
    }

    fn prepare(&self, cmd: &mut Command) {
        for k in ["GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_CONFIG"] {
            cmd.env_remove(k);
        }
        cmd.envs(self.env_pairs());
    }

    fn prepare_std(&self, cmd: &mut std::process::Command) {
        for k in ["GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_CONFIG"] {
            cmd.env_remove(k);
        }
        cmd.envs(self.env_pairs());
    }

    /// Run git in `dir` with the timeout; stdout on success.
    async fn git(
        &self,
        dir: &Path,
        op: &'static str,
        url: &str,
        args: &[&str],
        cancel: &CancellationToken,
    ) -> Result<String, MirrorError> {
        let mut cmd = Command::new("git");
        self.prepare(&mut cmd);
        cmd.arg("-C")
            .arg(dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(MirrorError::Spawn)?;
        let pid = child.id().map(|p| Pid::from_raw(p as i32));
        let kill = || {
            if let Some(p) = pid {
                let _ = killpg(p, Signal::SIGKILL);
            }
        };
        let out = tokio::select! {
            r = tokio::time::timeout(self.timeout, child.wait_with_output()) => r,
            _ = cancel.cancelled() => { kill(); return Err(MirrorError::Cancelled) }
        };
        let out = match out {
            Ok(r) => r.map_err(MirrorError::Spawn)?,
            Err(_) => {
                kill();
                return Err(MirrorError::Timeout {
                    op,
                    url: redact_url(url),
                    secs: self.timeout.as_secs(),
                });
            }
        };
        if !out.status.success() {
            return Err(MirrorError::Git {
                op,
                url: redact_url(url),
                stderr: tidy_stderr(&out.stderr),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// True when `sha` is stored as a loose object in the bare repository
/// `dir` (one `stat`, no git process). False says nothing: the object may
/// be packed, or absent.
fn loose_object_exists(dir: &Path, sha: &str) -> bool {
    is_full_sha(sha)
        && dir
            .join("objects")
            .join(sha[..2].to_ascii_lowercase())
            .join(sha[2..].to_ascii_lowercase())
            .is_file()
}

fn tidy_stderr(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let s = s.trim();
    let mut s: String = s.chars().take(STDERR_KEEP).collect();
    if s.is_empty() {
        s = "(no message)".into();
    }
    s.replace('\n', " | ")
}

/// Standard base64 (RFC 4648) with padding.
fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("oauth2:tok", "b2F1dGgyOnRvaw=="),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn mirror_paths_refuse_traversal() {
        let m = Mirrors::new("/m", Duration::from_secs(1), None);
        assert_eq!(
            m.dir_for("course/alice/lab1").unwrap(),
            PathBuf::from("/m/course/alice/lab1.git")
        );
        for bad in [
            "",
            "../x",
            "a/../b",
            "a/.git",
            "a//b",
            "a/b.git/c",
            "a/b c",
            "/abs",
        ] {
            assert!(m.dir_for(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shas_and_urls() {
        assert!(is_full_sha(&"a".repeat(40)));
        assert!(!is_full_sha("--upload-pack=evil"));
        assert!(!is_full_sha("abc"));
        assert_eq!(
            redact_url("https://user:tok@gitlab.example/x.git"),
            "https://***@gitlab.example/x.git"
        );
        assert_eq!(redact_url("file:///tmp/x.git"), "file:///tmp/x.git");
    }

    #[test]
    fn token_travels_only_in_the_environment() {
        let m = Mirrors::new("/m", Duration::from_secs(1), Some(Secret::new("s3cret")));
        let env = m.env_pairs();
        let value = &env
            .iter()
            .find(|(k, _)| *k == "GIT_CONFIG_VALUE_0")
            .unwrap()
            .1;
        assert!(value.starts_with("Authorization: Basic "));
        assert!(!value.contains("s3cret"));
    }
}
