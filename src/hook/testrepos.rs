//! Which course test repositories (`TESTS_NS/NAME-test`) exist, and
//! whether they hold their tests yet ([`TestRepo`]: missing, empty, ready).
//!
//! Owns a cache of answers so GitLab (which gives a receiver 10 s) never
//! waits on a slow lookup twice. A miss asks the GitLab API
//! (`GET /projects/:id`) when a token is configured, else runs
//! `git ls-remote` on the clone URL (GitLab's `empty_repo`, or no `HEAD`
//! listed, says the repository has no commit yet); both are bounded by
//! `server.test_repo_lookup_timeout`, and concurrent misses for one path
//! share one lookup. "Ready" is trusted for `server.test_repo_cache_ttl`,
//! "missing" and "empty" for at most [`NEGATIVE_TTL`] (a course may
//! create the test repository, and push its tests, after the first push); project_create / destroy / rename /
//! transfer system hooks drop the entries they name. A failed lookup is an
//! error for the caller to decide on, never a cached "missing". This module
//! never writes to the spool.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{Config, GitlabConfig};
use crate::git::{self, RunError};
use crate::gitlab::{GitlabApi, GitlabError, ProjectInfo};
use crate::hook::dedup::KeyLocks;
use crate::httpc::HttpClient;

/// Longest a "does not exist" answer is trusted.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("asking GitLab about {path}: {source}")]
    Api { path: String, source: GitlabError },
    #[error("git ls-remote {url} did not answer within {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error("cannot run git ls-remote: {0}; is git installed?")]
    Spawn(std::io::Error),
    #[error("git ls-remote {url} failed: {stderr}")]
    Git { url: String, stderr: String },
}

/// What a lookup found at a test repository's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestRepo {
    /// No such repository (or none labgrader may see).
    Missing,
    /// The repository exists without a commit on its default branch:
    /// GitLab creates projects empty, and staff push `test_all` after.
    /// Grading against it would only fail.
    Empty,
    /// It has a commit on its default branch: jobs can be graded.
    Ready,
}

impl TestRepo {
    pub fn exists(self) -> bool {
        self != TestRepo::Missing
    }

    /// GitLab's answer to `GET /projects/:id`: `empty_repo` when it is
    /// given; else (older GitLab) a `default_branch` of null.
    fn of_project(p: &ProjectInfo) -> TestRepo {
        let empty = p.empty_repo.unwrap_or(p.default_branch.is_none());
        if empty {
            TestRepo::Empty
        } else {
            TestRepo::Ready
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    state: TestRepo,
    at: Instant,
}

/// How lookups are made.
#[derive(Debug)]
enum Source {
    Api(Box<GitlabApi>),
    LsRemote,
}

#[derive(Debug)]
pub struct TestRepos {
    gitlab: GitlabConfig,
    source: Source,
    ttl: Duration,
    timeout: Duration,
    cache: Mutex<HashMap<String, Entry>>,
    inflight: KeyLocks,
}

impl TestRepos {
    pub fn new(cfg: &Config) -> TestRepos {
        let timeout = cfg.server.test_repo_lookup_timeout.get();
        let source = match GitlabApi::from_config(cfg, HttpClient::new()) {
            Some(api) => Source::Api(Box::new(api.with_timeout(timeout))),
            None => Source::LsRemote,
        };
        TestRepos {
            gitlab: cfg.gitlab.clone(),
            source,
            ttl: cfg.server.test_repo_cache_ttl.get(),
            timeout,
            cache: Mutex::new(HashMap::new()),
            inflight: KeyLocks::default(),
        }
    }

    /// "GitLab API" or "git ls-remote", for the start-up log.
    pub fn method(&self) -> &'static str {
        match self.source {
            Source::Api(_) => "GitLab API",
            Source::LsRemote => "git ls-remote",
        }
    }

    fn cached(&self, path: &str, now: Instant) -> Option<TestRepo> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let e = cache.get(path)?;
        let ttl = match e.state {
            TestRepo::Ready => self.ttl,
            TestRepo::Missing | TestRepo::Empty => self.ttl.min(NEGATIVE_TTL),
        };
        (now.duration_since(e.at) < ttl).then_some(e.state)
    }

    /// Does the test repository at `path` (`TESTS_NS/NAME-test`) exist?
    pub async fn exists(&self, path: &str) -> Result<bool, LookupError> {
        self.state(path).await.map(TestRepo::exists)
    }

    /// Is the test repository at `path` missing, empty, or ready?
    pub async fn state(&self, path: &str) -> Result<TestRepo, LookupError> {
        if let Some(hit) = self.cached(path, Instant::now()) {
            return Ok(hit);
        }
        let _one = self.inflight.lock(path).await;
        // Someone else may have looked it up while we waited.
        if let Some(hit) = self.cached(path, Instant::now()) {
            return Ok(hit);
        }
        match self.lookup(path).await {
            Ok(state) => {
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                cache.insert(
                    path.to_string(),
                    Entry {
                        state,
                        at: Instant::now(),
                    },
                );
                Ok(state)
            }
            Err(e) => {
                // An old answer beats no answer.
                let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                match cache.get(path) {
                    Some(old) => {
                        tracing::warn!(path, error = %e, "test repository lookup failed; using the cached answer");
                        Ok(old.state)
                    }
                    None => Err(e),
                }
            }
        }
    }

    /// Forget what is known about `paths` (project created, destroyed,
    /// renamed or moved).
    pub fn invalidate(&self, paths: &[String]) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        for p in paths {
            cache.remove(p);
        }
    }

    async fn lookup(&self, path: &str) -> Result<TestRepo, LookupError> {
        match &self.source {
            Source::Api(api) => api
                .project(path)
                .await
                .map(|p| p.as_ref().map_or(TestRepo::Missing, TestRepo::of_project))
                .map_err(|source| LookupError::Api {
                    path: path.to_string(),
                    source,
                }),
            Source::LsRemote => self.ls_remote(&self.gitlab.clone_url_for(path)).await,
        }
    }

    /// `git ls-remote URL HEAD`: HEAD listed when it names a branch with a
    /// commit; nothing listed for an empty repository.
    async fn ls_remote(&self, url: &str) -> Result<TestRepo, LookupError> {
        let env = [
            ("GIT_TERMINAL_PROMPT", "0".to_string()),
            ("GIT_ASKPASS", "true".to_string()),
            ("SSH_ASKPASS", "true".to_string()),
            ("GIT_SSH_COMMAND", "ssh -o BatchMode=yes".to_string()),
        ];
        let cmd = git::command(None, &["ls-remote", "--", url, "HEAD"], &env);
        let out = git::run(cmd, self.timeout, None)
            .await
            .map_err(|e| match e {
                RunError::TimedOut => LookupError::Timeout {
                    url: url.to_string(),
                    secs: self.timeout.as_secs(),
                },
                RunError::Spawn(e) => LookupError::Spawn(e),
                // No cancellation token is given.
                RunError::Cancelled => unreachable!("ls-remote runs without a cancellation token"),
            })?;
        if out.status.success() {
            return Ok(if out.stdout.trim_ascii().is_empty() {
                TestRepo::Empty
            } else {
                TestRepo::Ready
            });
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim();
        if is_transient(stderr) {
            return Err(LookupError::Git {
                url: url.to_string(),
                stderr: stderr.lines().last().unwrap_or("").to_string(),
            });
        }
        Ok(TestRepo::Missing)
    }
}

/// git's messages for "could not reach the server" (as opposed to "the
/// server says there is no such repository").
fn is_transient(stderr: &str) -> bool {
    const MARKERS: [&str; 9] = [
        "Could not resolve host",
        "Connection refused",
        "Connection timed out",
        "Connection reset",
        "Failed to connect",
        "Temporary failure",
        "Network is unreachable",
        "timed out",
        "The requested URL returned error: 5",
    ];
    MARKERS.iter().any(|m| stderr.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_git_errors_are_told_apart() {
        assert!(is_transient(
            "fatal: unable to access 'https://x/': Could not resolve host: x"
        ));
        assert!(!is_transient(
            "fatal: '/srv/x.git' does not appear to be a git repository"
        ));
        assert!(!is_transient(
            "remote: The project you were looking for could not be found"
        ));
    }

    #[test]
    fn gitlab_says_empty_by_empty_repo_or_else_a_null_default_branch() {
        let p = |v: serde_json::Value| -> ProjectInfo { serde_json::from_value(v).unwrap() };
        let base = serde_json::json!({"id": 1, "path_with_namespace": "root/lab1-test"});
        let with = |k: &str, v: serde_json::Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        // GitLab 14.1+ names the default branch even of an empty project.
        let mut empty = with("empty_repo", true.into());
        empty["default_branch"] = "main".into();
        assert_eq!(TestRepo::of_project(&p(empty)), TestRepo::Empty);
        let mut ready = with("empty_repo", false.into());
        ready["default_branch"] = "main".into();
        assert_eq!(TestRepo::of_project(&p(ready)), TestRepo::Ready);
        // Older GitLab: no `empty_repo`, a null default branch.
        let old = with("default_branch", serde_json::Value::Null);
        assert_eq!(TestRepo::of_project(&p(old)), TestRepo::Empty);
        let old = with("default_branch", "main".into());
        assert_eq!(TestRepo::of_project(&p(old)), TestRepo::Ready);
    }

    #[tokio::test]
    async fn ls_remote_tells_missing_from_empty_from_ready() {
        let t = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("git")
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(t.path().join("root/lab1-test.git"))
            .status()
            .unwrap();
        assert!(ok.success());
        let mut cfg = Config::default();
        cfg.gitlab.clone_url = format!("file://{}/{{path}}.git", t.path().display());
        let repos = TestRepos::new(&cfg);
        assert_eq!(repos.method(), "git ls-remote");
        // Created, nothing pushed yet: it exists, without its tests.
        assert_eq!(
            repos.state("root/lab1-test").await.unwrap(),
            TestRepo::Empty
        );
        repos.invalidate(&["root/lab1-test".into()]);
        let work = t.path().join("work");
        let git = |args: &[&str]| {
            let ok = std::process::Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@x"])
                .args(args)
                .current_dir(&work)
                .status()
                .unwrap();
            assert!(ok.success(), "{args:?}");
        };
        std::fs::create_dir_all(&work).unwrap();
        git(&["init", "-q", "-b", "main"]);
        git(&["commit", "-q", "--allow-empty", "-m", "tests"]);
        let bare = t.path().join("root/lab1-test.git");
        git(&["push", "-q", bare.to_str().unwrap(), "HEAD:refs/heads/main"]);
        assert_eq!(
            repos.state("root/lab1-test").await.unwrap(),
            TestRepo::Ready
        );
        assert!(repos.exists("root/lab1-test").await.unwrap());
        assert!(!repos.exists("root/lab2-test").await.unwrap());
        // Cached: removing the repository does not change the answer...
        std::fs::remove_dir_all(t.path().join("root/lab1-test.git")).unwrap();
        assert!(repos.exists("root/lab1-test").await.unwrap());
        // ...until a project hook says it changed.
        repos.invalidate(&["root/lab1-test".into()]);
        assert!(!repos.exists("root/lab1-test").await.unwrap());
    }
}
