//! Group commit of directory fsyncs for the hook's intake.
//!
//! Owns one thread that fsyncs a fixed set of directories (`incoming/`,
//! `keys/`) for every batch of waiters. A request calls [`GroupSync::sync`]
//! after its file is fsynced and linked into place; the thread takes every
//! request queued so far, then fsyncs, then answers them all. Each waiter
//! is therefore answered only after an fsync that *began after* its link,
//! which is exactly what a per-request fsync would guarantee, while 32
//! concurrent requests share one fsync instead of queueing for 32 (on ext4
//! each directory fsync is a journal commit, and those serialize). An fsync
//! error fails the whole batch. It never touches file contents.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::metrics;

type Reply = oneshot::Sender<Result<(), String>>;

/// Handle to the fsync thread; the thread ends when the handle is dropped.
#[derive(Debug)]
pub struct GroupSync {
    tx: mpsc::Sender<Reply>,
}

impl GroupSync {
    /// Start the thread for `dirs`; fails if one cannot be opened.
    pub fn start(dirs: Vec<PathBuf>) -> io::Result<GroupSync> {
        let files = dirs
            .iter()
            .map(File::open)
            .collect::<io::Result<Vec<File>>>()?;
        let (tx, rx) = mpsc::channel::<Reply>();
        std::thread::Builder::new()
            .name("hook-dirsync".into())
            .spawn(move || run(rx, dirs, files))?;
        Ok(GroupSync { tx })
    }

    /// Wait for an fsync of every directory that starts after this call.
    pub async fn sync(&self) -> Result<(), String> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send(reply)
            .map_err(|_| "directory sync thread is gone".to_string())?;
        wait.await
            .map_err(|_| "directory sync thread is gone".to_string())?
    }
}

fn run(rx: mpsc::Receiver<Reply>, dirs: Vec<PathBuf>, files: Vec<File>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let started = Instant::now();
        let mut result = Ok(());
        for (dir, f) in dirs.iter().zip(&files) {
            if let Err(e) = f.sync_all() {
                result = Err(format!("cannot fsync {}: {e}", dir.display()));
                break;
            }
        }
        metrics::observe(
            "labgrader_hook_dir_sync_seconds",
            "Time of one group fsync of the intake directories.",
            &[],
            started.elapsed(),
        );
        metrics::inc(
            "labgrader_hook_dir_syncs_total",
            "Group fsyncs of the intake directories.",
            &[],
        );
        for w in batch {
            let _ = w.send(result.clone());
        }
    }
}
