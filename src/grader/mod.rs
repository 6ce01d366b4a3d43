//! The grader daemon: from an event in `spool/incoming/` to a recorded result.
//!
//! Owns the job life cycle, one file per stage, in the order a job meets
//! them:
//! - `scheduler`: watch `incoming/`, claim a job by moving it into
//!   `active/`, run at most `[grader] workers` jobs at once (oldest first,
//!   never two of the same student project at once), shut down gracefully;
//! - `job`: one job top to bottom: prepare (fetch both trees into its
//!   `jobdir`) → admit (course policy) → run → verdict → record
//!   (`done/<job>/`, the gradebook, the deliveries queued), what a fault
//!   does to it (retry with backoff, `infra_error` when the retries are
//!   spent, `failed/` when refused by course policy or when it crashed the
//!   daemon `max_crashes` times), and recovery after a crash (a job whose
//!   result was recorded and queued before the crash is completed from the
//!   gradebook, never graded a second time);
//! - `reconcile`: at start, the gradebook and outbox brought in line with
//!   `done/`, the source of truth;
//! - `engine_watch`: periodic sweeps of leftover sandboxes, and retries
//!   released as soon as the sandbox engine answers again;
//! - `limits`: a job's limits, runner, image and contract;
//! - `blame`: whose fault a failure is (submission, course, grader);
//! - `verdict`: a run's status, reason and grade, and the one builder of
//!   a result;
//! - `staff`: the staff commands `grade`, `regrade` and `replay`;
//! - `batch`: `regrade --assignment`: which submissions, the batch file,
//!   its progress;
//! - `wiring`: the [`Grader`] itself, its parts built once.
//!
//! It never delivers results itself: it queues them in the outbox
//! ([`crate::deliver`]) before a job counts as done, and the delivery
//! worker sends them. It never reads the summary itself ([`crate::summary`]),
//! never builds a sandbox ([`crate::sandbox::build_runner`]) and never
//! moves a spool file except through the spool's typed job moves
//! ([`crate::spool::Spool::claim`], `requeue`, `fail`, `finish`). Event
//! files are untrusted input: an unparseable one goes to `corrupt/`; its
//! SHA and project path are checked before they reach git or a path.
//! This module only declares, re-exports and starts the daemon.

pub mod batch;
pub mod blame;
mod engine_waits;
mod engine_watch;
mod job;
mod jobdir;
pub mod limits;
mod reconcile;
pub mod release;
mod scheduler;
mod staff;
pub mod verdict;
mod wiring;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::spool::Spool;

pub use blame::{Blame, GraderError, GraderFault, Verdict};
pub use jobdir::{job_env, run_started};
pub use limits::{JobPlan, contract_for, limits_for};
pub use staff::{Moved, Replay, cancel, grade_local, read_record, regrade, replay, retry};
pub use verdict::{Grade, harness_results, verdict};
pub use wiring::Grader;

/// Grade jobs from `spool` until `shutdown` fires.
pub async fn run(
    cfg: Arc<Config>,
    spool: Arc<Spool>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let grader = Arc::new(Grader::new(cfg.clone(), spool.clone())?);
    grader.remove_orphans().await?;
    grader.recover().await?;
    grader.reconcile().await?;
    let releases = tokio::spawn(release::run(cfg, spool, shutdown.clone()));
    let watch = tokio::spawn(grader.clone().watch_engine(shutdown.clone()));
    grader.serve(shutdown).await;
    let _ = releases.await;
    let _ = watch.await;
    Ok(())
}
