//! Polling with generous deadlines, so that a loaded CI machine never fails
//! a correct build: nothing here is a timed assertion.

use std::time::{Duration, Instant};

/// How long a test waits for something that should happen in well under a
/// second: generous, so a loaded CI machine never fails a correct build.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Poll `cond` until it holds or [`DEADLINE`] passes (then panic with `what`).
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        if tokio::time::Instant::now() > end {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Poll `cond` on this thread until it holds or `within` passes (then panic
/// with `what`): for tests that drive child processes without a runtime.
pub fn wait_blocking(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
