//! Noticing that a node finished a job without asking Slurm: the node's
//! `labgrader sandbox` writes `outcome.json` last and atomically
//! ([`crate::sandbox::jobdir::OutcomeFile`]) into the job directory on the
//! shared filesystem. This waits for that file through inotify
//! ([`crate::watch::watch_dir`]) and, because inotify sees nothing another
//! NFS client writes, a cheap look at the file every [`OUTCOME_POLL`].
//! It never calls slurmrestd: Slurm's state is only the backstop for jobs
//! that die without an outcome (the runner's business).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::sandbox::jobdir::{JobDir, OUTCOME_FILE};

/// How often the outcome file is looked for when no inotify event came
/// (the NFS fallback): one `stat` of one path, so cheap even by the hundred.
pub const OUTCOME_POLL: Duration = Duration::from_millis(100);

/// A watch on one job directory's outcome file.
pub struct OutcomeWatch {
    path: PathBuf,
    wake: Arc<Notify>,
    poll: Duration,
    // Dropped with the watch: inotify stops watching the directory.
    _watcher: Option<notify::RecommendedWatcher>,
}

impl OutcomeWatch {
    /// Watch `jd` (which must exist) for its outcome file.
    pub fn new(jd: &JobDir, poll: Duration) -> OutcomeWatch {
        let wake = Arc::new(Notify::new());
        let watcher = {
            let wake = wake.clone();
            crate::watch::watch_dir(&jd.root, "the slurm job directory", move || {
                wake.notify_one()
            })
        };
        OutcomeWatch {
            path: jd.file(OUTCOME_FILE),
            wake,
            poll,
            _watcher: watcher,
        }
    }

    /// Has the node written its outcome? (`symlink_metadata`: a link
    /// planted there is not followed; reading it later refuses it anyway.)
    pub fn ready(&self) -> bool {
        std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.is_file())
    }

    /// Return when something changed in the directory or the poll
    /// interval passed, whichever comes first.
    pub async fn changed(&self) {
        tokio::select! {
            _ = self.wake.notified() => {}
            _ = tokio::time::sleep(self.poll) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_outcome_written_by_rename_is_seen() {
        let t = tempfile::tempdir().unwrap();
        let jd = JobDir::new(t.path());
        // A long poll: only the inotify wake-up can make this quick.
        let w = OutcomeWatch::new(&jd, Duration::from_secs(3600));
        assert!(!w.ready());
        let p = jd.file(OUTCOME_FILE);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            crate::sandbox::jobdir::write_atomic(&p, b"{}").unwrap();
        });
        while !w.ready() {
            w.changed().await;
        }
    }

    #[tokio::test]
    async fn without_inotify_the_poll_still_finds_it() {
        let t = tempfile::tempdir().unwrap();
        let jd = JobDir::new(t.path());
        let w = OutcomeWatch {
            path: jd.file(OUTCOME_FILE),
            wake: Arc::new(Notify::new()),
            poll: Duration::from_millis(10),
            _watcher: None,
        };
        std::fs::write(jd.file(OUTCOME_FILE), b"{}").unwrap();
        w.changed().await;
        assert!(w.ready());
    }
}
