//! The set of bare mirrors under one directory and the git plumbing every
//! mirror operation shares: the mirror path of a project, the per-mirror
//! lock, `init`, `fetch`, the environment git gets (the token only there)
//! and the mapping of git's failures to [`MirrorError`]. Every git process
//! goes through [`crate::git`]. It never exports trees nor decides which
//! commit a job grades.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use tokio_util::sync::CancellationToken;

use super::catfile::BatchPool;
use super::error::MirrorError;
use crate::config::Secret;
use crate::git::{self, RunError, is_full_sha};

/// Bytes of git's stderr kept for an error message.
const STDERR_KEEP: usize = 2000;
/// Transports git may use: no `ext::` or other command-running helpers.
const ALLOWED_PROTOCOLS: &str = "file:git:http:https:ssh";

/// The set of mirrors under one directory.
pub struct Mirrors {
    pub(super) root: PathBuf,
    pub(super) timeout: Duration,
    token: Option<Secret>,
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<MirrorState>>>>,
    /// Long-lived `git cat-file --batch` processes for exports.
    pub(super) batch: BatchPool,
}

#[derive(Default)]
pub(super) struct MirrorState {
    /// When the last successful fetch started.
    pub(super) fetched_at: Option<Instant>,
}

/// `url` without any `user:password@` part, for messages. Kept by hand:
/// it must pass any string through (scp-like `git@host:path`, `file://`),
/// which a URI parser would refuse.
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
            batch: BatchPool::default(),
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

    pub(super) fn lock_for(&self, dir: &Path) -> Arc<tokio::sync::Mutex<MirrorState>> {
        let mut g = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        g.entry(dir.to_path_buf()).or_default().clone()
    }

    /// Create the mirror if needed and fetch every branch and tag, unless
    /// a fetch that started at or after `since` already succeeded.
    pub(super) async fn fetch_since(
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

    /// Does the mirror `dir` hold commit `sha`? (`git cat-file -e`, under
    /// the timeout like every other git call.)
    pub(super) async fn has_commit(
        &self,
        dir: &Path,
        sha: &str,
        cancel: &CancellationToken,
    ) -> Result<bool, MirrorError> {
        let probe = format!("{sha}^{{commit}}");
        let mut cmd = self.command(dir, &["cat-file", "-e", &probe]);
        cmd.stdout(Stdio::null());
        let out = git::run(cmd, self.timeout, Some(cancel))
            .await
            .map_err(|e| self.run_error(e, "cat-file", dir.display().to_string()))?;
        Ok(out.status.success())
    }

    pub(super) async fn init(&self, dir: &Path) -> Result<(), MirrorError> {
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
            // No template: a mirror needs no sample hooks, description or
            // info/exclude (a dozen files per student project, never read).
            &["init", "--bare", "-q", "--template=", &tmp_s],
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

    pub(super) async fn fetch(
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
    pub(super) fn env_pairs(&self) -> Vec<(&'static str, String)> {
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
            let basic = base64::engine::general_purpose::STANDARD
                .encode(format!("oauth2:{}", t.expose()).as_bytes());
            env.push(("GIT_CONFIG_COUNT", "1".to_string()));
            env.push(("GIT_CONFIG_KEY_0", "http.extraHeader".to_string()));
            env.push((
                "GIT_CONFIG_VALUE_0",
                format!("Authorization: Basic {basic}"),
            ));
        }
        env
    }

    /// `git -C dir args...` with this set's environment (see [`git::command`]).
    pub(super) fn command(&self, dir: &Path, args: &[&str]) -> std::process::Command {
        git::command(Some(dir), args, &self.env_pairs())
    }

    /// The [`MirrorError`] for a git process of `op` on `url` that did not
    /// run to its end.
    pub(super) fn run_error(&self, e: RunError, op: &'static str, url: String) -> MirrorError {
        match e {
            RunError::Spawn(e) => MirrorError::Spawn(e),
            RunError::TimedOut => MirrorError::Timeout {
                op,
                url,
                secs: self.timeout.as_secs(),
            },
            RunError::Cancelled => MirrorError::Cancelled,
        }
    }

    /// Run git in `dir` with the timeout; stdout on success.
    pub(super) async fn git(
        &self,
        dir: &Path,
        op: &'static str,
        url: &str,
        args: &[&str],
        cancel: &CancellationToken,
    ) -> Result<String, MirrorError> {
        let out = git::run(self.command(dir, args), self.timeout, Some(cancel))
            .await
            .map_err(|e| self.run_error(e, op, redact_url(url)))?;
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
pub(super) fn loose_object_exists(dir: &Path, sha: &str) -> bool {
    is_full_sha(sha)
        && dir
            .join("objects")
            .join(sha[..2].to_ascii_lowercase())
            .join(sha[2..].to_ascii_lowercase())
            .is_file()
}

/// git's stderr as one line for a message: at most `STDERR_KEEP` chars.
pub(super) fn tidy_stderr(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let s = s.trim();
    let mut s: String = s.chars().take(STDERR_KEEP).collect();
    if s.is_empty() {
        s = "(no message)".into();
    }
    s.replace('\n', " | ")
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let header = |token: &str| {
            let m = Mirrors::new("/m", Duration::from_secs(1), Some(Secret::new(token)));
            let env = m.env_pairs();
            let (_, value) = env
                .iter()
                .find(|(k, _)| *k == "GIT_CONFIG_VALUE_0")
                .unwrap();
            value.clone()
        };
        let value = header("s3cret");
        assert!(value.starts_with("Authorization: Basic "));
        assert!(!value.contains("s3cret"));
        // Standard base64 with padding (RFC 4648), as HTTP basic auth wants.
        assert_eq!(header("tok"), "Authorization: Basic b2F1dGgyOnRvaw==");
    }
}
