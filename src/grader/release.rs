//! Releasing results after a deadline: when an assignment's deadline (with
//! its grace) passes, each student's latest job recorded before it is
//! delivered once more with its `after_due_date` tests shown.
//!
//! Owns choosing what to release and when: the daemon's loop (sleeping
//! until the next deadline not yet released) and `labgrader release` by
//! hand. Restart-safe and at most once per job: every release delivery
//! has its own outbox name, which is never queued twice (waiting, sent or
//! dead), and the gradebook notes each assignment and deadline released,
//! so an old deadline is not scanned again. It never renders text (the
//! deliveries do) and never grades.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::Config;
use crate::gradebook::{self, Filter, Gradebook, Select};
use crate::policy::ResolvedPolicy;
use crate::results::Visibility;
use crate::spool::Spool;

use super::blame::GraderError;
use super::staff::read_record;

/// Longest sleep of the release loop (a deadline moved by staff is seen
/// within this).
const RECHECK: Duration = Duration::from_secs(60);

/// What one release did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// Jobs with `after_due_date` tests, each the latest of its student.
    pub jobs: usize,
    /// Deliveries queued now (fewer when some were released before).
    pub queued: usize,
}

/// Release the results of `assignment`: each project's latest job recorded
/// before `due` (all latest jobs when `due` is `None`: a release by hand)
/// whose result holds `after_due_date` tests gets its release deliveries.
pub fn release(
    cfg: &Config,
    spool: &Spool,
    gb: &Gradebook,
    assignment: &str,
    due: Option<DateTime<Utc>>,
) -> Result<Released, GraderError> {
    let filter = Filter {
        project: None,
        assignment: Some(assignment.to_string()),
    };
    let mut out = Released::default();
    for r in gb.select(Select::Latest, &filter)? {
        // A result recorded after the deadline was delivered with every
        // test already.
        if due.is_some_and(|d| r.ended_at > d) {
            continue;
        }
        let later = r.results.as_ref().is_some_and(|res| {
            res.tests
                .iter()
                .any(|t| t.visibility == Visibility::AfterDueDate)
        });
        if !later {
            continue;
        }
        let (ev, _) = read_record(spool, &r.job_id)?;
        out.jobs += 1;
        out.queued += crate::deliver::enqueue_release(cfg, spool, &ev, &r)
            .map_err(super::blame::GraderFault::from)?;
    }
    Ok(out)
}

/// Deadlines as the release loop sees them.
#[derive(Debug, Default)]
struct Deadlines {
    /// Passed and not released yet: assignment and due time.
    passed: Vec<(String, DateTime<Utc>)>,
    /// The next one still to come.
    next: Option<DateTime<Utc>>,
}

/// The deadlines (with grace) that have passed and are not released yet,
/// and the next one still to come.
fn due_now(cfg: &Config, gb: &Gradebook, now: DateTime<Utc>) -> Result<Deadlines, GraderError> {
    let mut passed = Vec::new();
    let mut next: Option<DateTime<Utc>> = None;
    for name in cfg.assignments.keys() {
        let Some(due) = ResolvedPolicy::for_project(cfg, name).due() else {
            continue;
        };
        if due > now {
            next = Some(next.map_or(due, |n| n.min(due)));
        } else if !gb.released(name, due)? {
            passed.push((name.clone(), due));
        }
    }
    Ok(Deadlines { passed, next })
}

/// The daemon's release loop: until `shutdown`, release each assignment
/// whose deadline has passed, once.
pub async fn run(cfg: Arc<Config>, spool: Arc<Spool>, shutdown: CancellationToken) {
    loop {
        let (c, s) = (cfg.clone(), spool.clone());
        let next = tokio::task::spawn_blocking(move || release_due(&c, &s)).await;
        let sleep = match next {
            Ok(Ok(Some(t))) => (t - Utc::now()).to_std().unwrap_or_default().min(RECHECK),
            Ok(Ok(None)) => RECHECK,
            Ok(Err(e)) => {
                error!(error = %e, "cannot release results after a deadline; trying again");
                RECHECK
            }
            Err(e) => {
                error!(error = %e, "the release task failed; trying again");
                RECHECK
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep.max(Duration::from_millis(200))) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One pass: release what is due; returns the next deadline to come.
fn release_due(cfg: &Config, spool: &Spool) -> Result<Option<DateTime<Utc>>, GraderError> {
    let gb = Gradebook::open(&gradebook::path_in(spool.root()))?;
    let Deadlines { passed, next } = due_now(cfg, &gb, Utc::now())?;
    for (assignment, due) in passed {
        let r = release(cfg, spool, &gb, &assignment, Some(due))?;
        gb.mark_released(&assignment, due, r.jobs)?;
        info!(assignment, %due, jobs = r.jobs, queued = r.queued,
            "deadline passed: results released with their after_due_date tests");
    }
    Ok(next)
}
