//! Duplicate detection for deliveries, durable across restarts and
//! race-free under concurrent identical deliveries.
//!
//! Owns `spool/keys/`: one marker per ref update, a symlink named by the
//! SHA-256 of (project, ref, before, after) whose target is the job id it
//! produced. That key is the same for a re-send of a delivery (GitLab keeps
//! the `Idempotency-Key` and the body) and for the push hook, the system
//! push hook and the repository_update of one push, so one marker per
//! event covers them all (each extra marker would cost a metadata write on
//! the intake path); the `Idempotency-Key` itself is kept in the event
//! file. `symlink(2)` refuses to replace an
//! existing name, so of two racing creators exactly one wins; inside the
//! process a per-key lock ([`KeyLocks`]) serializes identical deliveries so
//! the loser waits for the winner's answer instead of guessing.
//!
//! A marker only counts while its job still exists in the spool
//! ([`job_exists`]): a marker left by a crash between marker and event, or
//! by a failed write, is stale and replaced. This module never writes or
//! moves a job file.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::spool::{State, is_valid_name};

/// Subdirectory of the spool root holding the markers.
pub const KEYS_DIR: &str = "keys";

/// Marker store in `<spool>/keys/`.
#[derive(Debug, Clone)]
pub struct Markers {
    dir: PathBuf,
}

/// The dedup key of one ref update, independent of which hook delivered it.
pub fn update_key(project_path: &str, git_ref: &str, before: &str, after: &str) -> String {
    hashed("u", &[project_path, git_ref, before, after])
}

fn hashed(prefix: &str, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        // Length-prefixed so ("ab","c") and ("a","bc") differ.
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    format!("{prefix}-{}", hex::encode(h.finalize()))
}

impl Markers {
    pub fn open(spool_root: &Path) -> io::Result<Markers> {
        let dir = spool_root.join(KEYS_DIR);
        fs::create_dir_all(&dir)?;
        Ok(Markers { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Remove markers older than `window` (see `[spool] dedup_window`),
    /// except those of jobs still waiting or running. Returns how many.
    pub fn prune(&self, spool_root: &Path, window: std::time::Duration) -> io::Result<usize> {
        crate::spool::prune_older_than(&self.dir, window, |key| {
            self.get(key)
                .is_some_and(|job| crate::spool::job_waiting_or_running(spool_root, &job))
        })
    }

    /// The job id a marker points at, if the marker exists and is sane.
    pub fn get(&self, key: &str) -> Option<String> {
        let target = fs::read_link(self.dir.join(key)).ok()?;
        let job = target.to_str()?;
        is_valid_name(job).then(|| job.to_string())
    }

    /// Create `key → job`; `Ok(false)` when the marker already exists.
    /// Not durable until the keys directory is fsynced.
    pub fn create(&self, key: &str, job: &str) -> io::Result<bool> {
        match std::os::unix::fs::symlink(job, self.dir.join(key)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Point `key` at `job`, replacing a stale marker.
    pub fn set(&self, key: &str, job: &str) -> io::Result<()> {
        if self.create(key, job)? {
            return Ok(());
        }
        match fs::remove_file(self.dir.join(key)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if self.create(key, job)? {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("marker {key} was recreated concurrently"),
            ))
        }
    }

    /// Remove `key` if it still points at `job` (undo after a failed write).
    pub fn remove_if(&self, key: &str, job: &str) {
        if self.get(key).as_deref() == Some(job) {
            let _ = fs::remove_file(self.dir.join(key));
        }
    }
}

/// Does job `job` exist in any spool state a job can be in? Checked in the
/// order jobs move (held → incoming → active → done/failed), so a job being
/// moved concurrently is found in its next state.
pub fn job_exists(spool_root: &Path, job: &str) -> bool {
    let file = format!("{job}.json");
    [
        State::Held,
        State::Incoming,
        State::Active,
        State::Done,
        State::Failed,
        State::Corrupt,
    ]
    .iter()
    .any(|s| {
        let d = spool_root.join(s.dir_name());
        d.join(&file).exists() || d.join(job).exists()
    })
}

/// Exact-key async locks: holders of different keys never wait on each
/// other; entries are removed when their last holder leaves.
#[derive(Debug, Default)]
pub struct KeyLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while one key is being processed.
pub struct KeyGuard<'a> {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    key: String,
    locks: &'a KeyLocks,
}

impl KeyLocks {
    pub async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.to_string()).or_default().clone()
        };
        KeyGuard {
            guard: Some(m.lock_owned().await),
            key: key.to_string(),
            locks: self,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.locks.map.lock().unwrap_or_else(|p| p.into_inner());
        drop(self.guard.take());
        if let Some(m) = map.get(&self.key)
            && Arc::strong_count(m) == 1
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_recent_markers_and_those_of_waiting_jobs() {
        let t = tempfile::tempdir().unwrap();
        let m = Markers::open(t.path()).unwrap();
        fs::create_dir_all(t.path().join(State::Incoming.dir_name())).unwrap();
        fs::write(t.path().join("incoming/waiting.json"), b"{}").unwrap();
        for (key, job) in [("old", "gone"), ("queued", "waiting"), ("new", "gone")] {
            assert!(m.create(key, job).unwrap());
        }
        crate::spool::backdate(&m.dir().join("old"), 7200);
        crate::spool::backdate(&m.dir().join("queued"), 7200);
        let n = m
            .prune(t.path(), std::time::Duration::from_secs(3600))
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(m.get("old"), None);
        assert_eq!(m.get("queued").as_deref(), Some("waiting"));
        assert_eq!(m.get("new").as_deref(), Some("gone"));
    }

    #[test]
    fn keys_separate_their_parts() {
        assert_ne!(
            update_key("a/b", "c", "d", "e"),
            update_key("a/bc", "", "d", "e")
        );
        assert!(is_valid_name(&update_key("a/b", "r", "x", "y")));
    }

    #[test]
    fn markers_refuse_to_overwrite_and_replace_stale() {
        let t = tempfile::tempdir().unwrap();
        let m = Markers::open(t.path()).unwrap();
        assert!(m.create("k", "JOB1").unwrap());
        assert!(!m.create("k", "JOB2").unwrap());
        assert_eq!(m.get("k").as_deref(), Some("JOB1"));
        m.set("k", "JOB3").unwrap();
        assert_eq!(m.get("k").as_deref(), Some("JOB3"));
        m.remove_if("k", "JOB1");
        assert_eq!(m.get("k").as_deref(), Some("JOB3"));
        m.remove_if("k", "JOB3");
        assert_eq!(m.get("k"), None);
    }

    #[tokio::test]
    async fn key_locks_serialize_one_key_and_clean_up() {
        let locks = Arc::new(KeyLocks::default());
        let g = locks.lock("a").await;
        let _other = locks.lock("b").await; // a different key does not wait
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move {
            let _g = l2.lock("a").await;
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(g);
        waiter.await.unwrap();
        drop(_other);
        assert_eq!(locks.len(), 0);
    }
}
