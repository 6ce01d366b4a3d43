//! The sandbox engine watch: periodic sweeps, and retries released as
//! soon as the engine is back.
//!
//! Owns two duties the Docker engine's restarts call for while jobs run:
//! every [`SWEEP_EVERY`], remove what no running job owns (the container
//! of an attempt the restart interrupted, which its own removal could not
//! reach); and while jobs wait for a retry after a sandbox fault, probe
//! the engine every [`PROBE_EVERY`]: once it was seen down and answers
//! again, those jobs are made due now instead of waiting out their infra
//! backoff. A job seen failing while the engine answered keeps its
//! backoff (the fault was not the engine's absence). It never grades and
//! never moves a job except through `retry`'s claim-rewrite-requeue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::spool::State;

use super::wiring::Grader;

/// How often containers no running job owns are swept.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How often the engine is probed while jobs wait for it.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);

impl Grader {
    /// Sweep and probe until `shutdown` fires.
    pub(super) async fn watch_engine(self: Arc<Self>, shutdown: CancellationToken) {
        let mut last_sweep = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(PROBE_EVERY) => {}
            }
            let Ok(runner) = self.runner(self.cfg.grader.runner) else {
                continue;
            };
            if !self.engine_waits.is_empty() {
                let released = self.engine_waits.probed(runner.answers().await);
                for job in released {
                    match super::staff::retry(&self.spool, std::slice::from_ref(&job)) {
                        Ok(_) => {
                            info!(job_id = %job, "the sandbox engine answers again: retrying now")
                        }
                        Err(e) => warn!(job_id = %job, error = %e, "cannot make the retry due now"),
                    }
                }
            }
            if last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = Instant::now();
                // Only stopped containers are swept (see the runner's
                // `sweep`), so a job claimed after this read is safe.
                let running: std::collections::HashSet<String> = self
                    .spool
                    .list(State::Active)
                    .unwrap_or_default()
                    .iter()
                    .map(|n| crate::event::job_id_of(n).to_string())
                    .collect();
                match runner.sweep(&running).await {
                    Ok(0) => {}
                    Ok(n) => warn!(removed = n, "swept job containers no running job owns"),
                    Err(e) => warn!(error = %e, "cannot sweep job containers"),
                }
            }
        }
    }
}
