//! Group commit of the hook's intake: many requests, few fsyncs.
//!
//! Owns one thread that publishes staged event files for every batch of
//! requests queued while it was busy, in the order durability needs:
//! fsync every file (concurrently), link each into `incoming/`, fsync the
//! directories (`incoming/`, `keys/`), and only then answer each request
//! with its own result. Each request is answered only
//! after its file's fsync and a directory fsync that began after its link,
//! exactly what a per-request publish guarantees; but on ext4 each fsync is
//! a journal commit and commits serialize, so 32 requests sharing two
//! commits go far faster than 32 requests queueing for 64. A failed file
//! fsync or link fails that request; a failed directory fsync fails the
//! whole batch and removes its links. It never decides what to store.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::metrics;
use crate::spool::{Spool, SpoolError, Staged, State};

/// Most files in one commit (each gets an fsync thread for its moment).
const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<PathBuf, String>>;

/// Handle to the commit thread; the thread ends when the handle is dropped.
#[derive(Debug)]
pub struct GroupCommit {
    tx: mpsc::Sender<(Staged, Reply)>,
}

impl GroupCommit {
    /// Start the thread publishing into `spool`'s `incoming/` and fsyncing
    /// `extra_dirs` with it; fails if a directory cannot be opened.
    pub fn start(spool: Arc<Spool>, extra_dirs: Vec<PathBuf>) -> io::Result<GroupCommit> {
        let mut dirs = vec![spool.dir(State::Incoming)];
        dirs.extend(extra_dirs);
        let files = dirs
            .iter()
            .map(File::open)
            .collect::<io::Result<Vec<File>>>()?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("hook-commit".into())
            .spawn(move || run(rx, spool, dirs, files))?;
        Ok(GroupCommit { tx })
    }

    /// Publish `staged` into `incoming/`; returns once it is durable.
    pub async fn publish(&self, staged: Staged) -> Result<PathBuf, String> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send((staged, reply))
            .map_err(|_| "intake commit thread is gone".to_string())?;
        wait.await
            .map_err(|_| "intake commit thread is gone".to_string())?
    }
}

fn run(
    rx: mpsc::Receiver<(Staged, Reply)>,
    spool: Arc<Spool>,
    dirs: Vec<PathBuf>,
    dir_files: Vec<File>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH
            && let Ok(more) = rx.try_recv()
        {
            batch.push(more);
        }
        let started = Instant::now();
        let size = batch.len();
        // fsync every file of the batch at once, from threads of their own:
        // the kernel folds concurrent fsyncs into one journal commit,
        // where one thread fsyncing them in turn would pay a commit each.
        let fsynced: Vec<std::io::Result<()>> = if size == 1 {
            vec![batch[0].0.file.sync_all()]
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = batch
                    .iter()
                    .map(|(s, _)| scope.spawn(|| s.file.sync_all()))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(io::Error::other("fsync thread panicked")))
                    })
                    .collect()
            })
        };
        let mut linked: Vec<(PathBuf, Reply)> = Vec::with_capacity(size);
        for ((s, reply), synced) in batch.into_iter().zip(fsynced) {
            let result = synced
                .map_err(|source| SpoolError::Write {
                    path: s.tmp.clone(),
                    source,
                })
                .and_then(|()| spool.link_staged(&s, State::Incoming));
            match result {
                Ok(dest) => linked.push((dest, reply)),
                Err(e) => {
                    spool.discard(s);
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
        let mut synced = Ok(());
        for (dir, f) in dirs.iter().zip(&dir_files) {
            if let Err(e) = f.sync_all() {
                synced = Err(format!("cannot fsync {}: {e}", dir.display()));
                break;
            }
        }
        for (dest, reply) in linked {
            if synced.is_err() {
                let _ = std::fs::remove_file(&dest);
            }
            let _ = reply.send(synced.clone().map(|()| dest));
        }
        metrics::observe(
            "labgrader_hook_commit_seconds",
            "Time of one group commit (file fsyncs, links, directory fsyncs).",
            &[],
            started.elapsed(),
        );
        metrics::inc(
            "labgrader_hook_commits_total",
            "Group commits of the intake.",
            &[],
        );
        for _ in 0..size {
            metrics::inc(
                "labgrader_hook_committed_events_total",
                "Event files through the group commit (with commits_total: batch size).",
                &[],
            );
        }
    }
}
