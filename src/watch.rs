//! Waking a loop when a spool directory changes (inotify through
//! `notify`). The grader watches `incoming/`, the delivery worker the
//! outbox; both rescan periodically too, so a missing watcher only slows
//! them down.

use std::path::Path;

use notify::event::{ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};

/// Call `wake` when an entry is created in or renamed into `dir` (or
/// modified); not when one is renamed out of it (a job claimed, a record
/// sent), which brings no new work and, on a busy grader, would wake its
/// loop once per job for nothing. `None`, with a warning naming `what`, when inotify is
/// unavailable: the caller's periodic rescan still finds the work.
pub fn watch_dir(
    dir: &Path,
    what: &str,
    wake: impl Fn() + Send + 'static,
) -> Option<notify::RecommendedWatcher> {
    let handler = move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && matches!(ev.kind, EventKind::Create(_) | EventKind::Modify(_))
            && ev.kind != EventKind::Modify(ModifyKind::Name(RenameMode::From))
        {
            wake();
        }
    };
    let mut w = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "no file watcher for {what}; relying on the periodic rescan");
            return None;
        }
    };
    if let Err(e) = w.watch(dir, RecursiveMode::NonRecursive) {
        tracing::warn!(error = %e, "cannot watch {what}; relying on the periodic rescan");
        return None;
    }
    Some(w)
}
