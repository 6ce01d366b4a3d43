//! The threads pages are rendered on: `[web] renders` of them (0 = one per
//! CPU), each at a lower scheduling priority (nice 10) than the rest of
//! the daemon, so a crowd of students reloading pages may use every idle
//! CPU but never takes one from the hook's intake or the grader. A page
//! that panics costs its request an error, not the thread.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// How much lower the render threads' priority is (nice increment).
const NICE: libc::c_int = 10;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed pool of low-priority render threads.
pub(super) struct RenderPool {
    tx: mpsc::Sender<Job>,
}

impl RenderPool {
    /// Start `threads` threads (0 = one per CPU).
    pub(super) fn start(threads: usize) -> RenderPool {
        let n = if threads > 0 {
            threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        };
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..n {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("web-render-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a web render thread");
            }
        }
        RenderPool { tx }
    }

    /// Run `f` on a render thread; `None` when it panicked (or no thread runs).
    pub(super) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (done, wait) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(std::panic::catch_unwind(AssertUnwindSafe(f)));
        });
        self.tx.send(job).ok()?;
        wait.await.ok()?.ok()
    }
}

/// Nice this thread (Linux schedules threads on their own).
fn lower_priority() {
    // SAFETY: setpriority on this thread's own id; no memory is touched.
    let tid = unsafe { libc::gettid() };
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE) } != 0 {
        tracing::debug!("cannot lower a web render thread's priority");
    }
}
