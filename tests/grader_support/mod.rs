//! Shared by the tests/grader_*.rs suites: real bare git repositories made
//! with the git CLI and served by file:// URLs, a spool, event files as the
//! hook writes them, and the grader daemon run in-process or as the binary.
#![allow(dead_code)]

pub mod daemon;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use labgrader::config::Config;
use labgrader::event::{Event, EventKind, HookSource, Project, Pusher};
use labgrader::result::JobResult;
use labgrader::spool::{Spool, State, new_job_id};
use tokio_util::sync::CancellationToken;

pub struct Fixture {
    pub tmp: tempfile::TempDir,
    /// Root of the "GitLab": `<repos>/<namespace>/<name>.git`.
    pub repos: PathBuf,
    pub spool_dir: PathBuf,
    clones: PathBuf,
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Student")
        .env("GIT_AUTHOR_EMAIL", "student@example.edu")
        .env("GIT_COMMITTER_NAME", "Student")
        .env("GIT_COMMITTER_EMAIL", "student@example.edu")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn write_exec(p: &Path, text: &str) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A test_all that prints `grade` in a summary block.
pub fn simple_test_all(grade: &str) -> String {
    format!("#!/bin/sh\necho running\nprintf '<summary>\\ngrade_total = {grade}\\n</summary>\\n'\n")
}

impl Fixture {
    pub fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let repos = tmp.path().join("gitlab");
        let spool_dir = tmp.path().join("spool");
        let clones = tmp.path().join("clones");
        std::fs::create_dir_all(&repos).unwrap();
        std::fs::create_dir_all(&clones).unwrap();
        Fixture {
            tmp,
            repos,
            spool_dir,
            clones,
        }
    }

    pub fn bare(&self, path: &str) -> PathBuf {
        self.repos.join(format!("{path}.git"))
    }

    /// Create the bare repository `path` (namespace/name) if needed.
    pub fn repo(&self, path: &str) -> PathBuf {
        let bare = self.bare(path);
        if !bare.exists() {
            std::fs::create_dir_all(&bare).unwrap();
            git(&bare, &["init", "--bare", "-q", "-b", "main"]);
        }
        bare
    }

    /// Let `edit` change the work tree of `path`, commit everything, push
    /// to main, and return the new commit's SHA.
    pub fn push(&self, path: &str, edit: impl FnOnce(&Path)) -> String {
        let bare = self.repo(path);
        let work = self.clones.join(path);
        if !work.exists() {
            std::fs::create_dir_all(&work).unwrap();
            git(&work, &["init", "-q", "-b", "main"]);
            git(
                &work,
                &[
                    "remote",
                    "add",
                    "origin",
                    &format!("file://{}", bare.display()),
                ],
            );
        }
        edit(&work);
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "--allow-empty", "-m", "work"]);
        git(&work, &["push", "-q", "origin", "HEAD:refs/heads/main"]);
        git(&work, &["rev-parse", "HEAD"])
    }

    /// The test repository of assignment `name` with `test_all` as given.
    pub fn tests_repo(&self, name: &str, test_all: &str) -> String {
        self.push(&format!("root/{name}-test"), |w| {
            write_exec(&w.join("test_all"), test_all)
        })
    }

    /// Config for the tests; keys in `extra_grader` override the defaults here.
    pub fn config_text(&self, extra_grader: &str) -> String {
        let mut grader = String::new();
        for (k, v) in [
            ("runner", "\"none\""),
            ("workers", "2"),
            ("rescan_interval", "\"1s\""),
            ("infra_backoff", "\"1s\""),
            ("shutdown_grace", "\"5s\""),
        ] {
            if !extra_grader.contains(&format!("{k} =")) {
                grader.push_str(&format!("{k} = {v}\n"));
            }
        }
        format!(
            "[spool]\ndir = \"{}\"\n[gitlab]\nclone_url = \"file://{}/{{path}}.git\"\n\
             [grader]\n{grader}{extra_grader}\n",
            self.spool_dir.display(),
            self.repos.display()
        )
    }

    pub fn config(&self, extra_grader: &str) -> Arc<Config> {
        Arc::new(Config::from_toml(&self.config_text(extra_grader), None).unwrap())
    }

    pub fn write_config(&self, extra_grader: &str) -> PathBuf {
        let p = self.tmp.path().join("labgrader.toml");
        std::fs::write(&p, self.config_text(extra_grader)).unwrap();
        p
    }

    pub fn spool(&self) -> Arc<Spool> {
        Arc::new(Spool::open(&self.spool_dir).unwrap())
    }

    /// An event as the hook would write it for a push of `sha` to `path`.
    pub fn event(&self, path: &str, sha: &str) -> Event {
        let project = Project::from_path(Some(7), path).unwrap();
        Event {
            schema: 1,
            job_id: new_job_id(),
            received_at: Utc::now(),
            kind: EventKind::Push,
            source: HookSource::ProjectHook,
            gitlab_event: "Push Hook".into(),
            delivery_key: None,
            clone_url: format!("file://{}", self.bare(path).display()),
            project,
            pusher: Pusher {
                id: Some(1),
                username: Some("alice".into()),
                name: None,
                email: None,
            },
            git_ref: "refs/heads/main".into(),
            before: labgrader::event::ZERO_SHA.into(),
            after: sha.into(),
            commit: sha.into(),
            crashes: 0,
            infra_attempts: 0,
            not_before: None,
            raw: serde_json::json!({}),
        }
    }

    /// Drop `ev` into incoming/ the way the hook does (tmp, fsync, rename).
    /// Retried like GitLab retries a failed delivery: a daemon starting at
    /// the same moment sweeps tmp/ and may remove the half-written file.
    pub fn enqueue(&self, ev: &Event) {
        let spool = self.spool();
        let mut tries = 0;
        while let Err(e) = spool.publish(State::Incoming, &ev.file_name(), &ev.to_bytes()) {
            tries += 1;
            assert!(tries < 5, "cannot enqueue {}: {e}", ev.job_id);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn done_dir(&self, job: &str) -> PathBuf {
        self.spool_dir.join("done").join(job)
    }

    /// Wait until done/<job>/result.json exists and return it.
    pub async fn wait_done(&self, job: &str, within: Duration) -> JobResult {
        let p = self.done_dir(job).join("result.json");
        let start = Instant::now();
        loop {
            if let Ok(b) = std::fs::read(&p) {
                return serde_json::from_slice(&b).unwrap();
            }
            assert!(
                start.elapsed() < within,
                "job {job} not done within {within:?}; spool: {:?}",
                self.listing()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn listing(&self) -> Vec<(String, Vec<String>)> {
        let s = self.spool();
        State::ALL
            .iter()
            .map(|st| (st.dir_name().to_string(), s.list(*st).unwrap_or_default()))
            .collect()
    }

    /// Run the grader daemon in-process until the returned token is cancelled.
    pub fn start(&self, cfg: Arc<Config>) -> Daemon {
        let token = CancellationToken::new();
        let handle = tokio::spawn(labgrader::grader::run(cfg, self.spool(), token.clone()));
        Daemon { token, handle }
    }
}

pub struct Daemon {
    pub token: CancellationToken,
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Daemon {
    pub async fn stop(self) {
        self.token.cancel();
        self.handle.await.unwrap().unwrap();
    }
}
