//! The two test worlds, each a temp dir the test owns: [`Fixture`], the
//! grader's (a "GitLab" of bare repositories pushed to over `file://`, a
//! spool, a config, events dropped into `incoming/` as the hook writes
//! them, and the wait for `done/`), and [`World`], the hook's (bare test
//! repositories to look up, a spool, a `Config`). They write only inside
//! their temp dir and never run a daemon themselves (see `daemon`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use labgrader::config::{Config, Secret};
use labgrader::event::{Event, EventKind, HookSource, Project, Pusher};
use labgrader::result::JobResult;
use labgrader::spool::{Spool, State, new_job_id};

use super::daemon::Daemon;
use super::files::write_exec;
use super::gitlab::TOKEN;
use super::repos;

/// The grader's world.
pub struct Fixture {
    pub tmp: tempfile::TempDir,
    /// Root of the "GitLab": `<repos>/<namespace>/<name>.git`.
    pub repos: PathBuf,
    pub spool_dir: PathBuf,
    clones: PathBuf,
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
            repos::init_bare(&bare);
        }
        bare
    }

    /// Let `edit` change the work tree of `path`, commit everything, push
    /// to main, and return the new commit's SHA.
    pub fn push(&self, path: &str, edit: impl FnOnce(&Path)) -> String {
        let bare = self.repo(path);
        repos::commit_and_push(&self.clones.join(path), &bare, edit)
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
            "[spool]\ndir = \"{}\"\n[gitlab]\nclone_url = \"{}\"\n\
             [grader]\n{grader}{extra_grader}\n",
            self.spool_dir.display(),
            repos::clone_url_template(&self.repos)
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
            clone_url: repos::file_url(&self.bare(path)),
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
            fetch_timeouts: 0,
            not_before: None,
            last_error: None,
            regrade: None,
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

    /// Run the grader daemon in-process until it is stopped.
    pub fn start(&self, cfg: Arc<Config>) -> Daemon {
        Daemon::grader(cfg, self.spool())
    }
}

/// A temp dir holding `spool/` and `repos/` (bare repositories).
pub struct World {
    pub dir: tempfile::TempDir,
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("repos")).unwrap();
        World { dir }
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    pub fn repos(&self) -> PathBuf {
        self.dir.path().join("repos")
    }

    /// Make a real bare repository `repos/<path>.git`.
    pub fn bare_repo(&self, path: &str) -> PathBuf {
        repos::init_bare(&self.repos().join(format!("{path}.git")))
    }

    /// The config the tests use: file:// clone URLs into `repos/`, the
    /// fixture token, no GitLab API token (lookups by git ls-remote).
    pub fn config(&self) -> Config {
        let mut cfg = Config::default();
        cfg.spool.dir = self.spool_dir();
        cfg.gitlab.clone_url = repos::clone_url_template(&self.repos());
        cfg.secrets.webhook_token = Some(Secret::new(TOKEN));
        cfg
    }
}
