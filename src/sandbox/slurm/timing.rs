//! The slurm runner's per-phase histograms, in [`crate::metrics`]'s
//! registry (`labgrader_slurm_phase_seconds{phase=…}` at `/metrics`):
//! `slot` (waiting for a `[slurm] max_in_flight` permit, unsubmitted),
//! `submit` (copying the job directory and the REST submission),
//! `queued` (submitted until the node's sandbox started: Slurm's
//! scheduling and launch), `run` (the sandbox, as the node timed it) and
//! `collect` (the sandbox's end until the grader has the outcome and the
//! directory is gone: the shared filesystem's and the watch's latency).

use std::time::Duration;

use chrono::{DateTime, Utc};

const NAME: &str = "labgrader_slurm_phase_seconds";
const HELP: &str = "Time a Slurm job spent in each phase (slot, submit, queued, run, collect)";

/// Record `d` for `phase`.
pub fn observe(phase: &str, d: Duration) {
    crate::metrics::observe(NAME, HELP, &[("phase", phase)], d);
}

/// Record the time from `from` to `to` (wall clocks of the grader and the
/// node: a negative span, from clock skew, counts as zero).
pub fn observe_between(phase: &str, from: DateTime<Utc>, to: DateTime<Utc>) {
    observe(phase, (to - from).to_std().unwrap_or_default());
}
