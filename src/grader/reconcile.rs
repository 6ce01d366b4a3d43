//! Start-up reconciliation: `done/` is the source of truth.
//!
//! Owns bringing the gradebook in line with `done/` (and `done/` with
//! the results promised to students) before
//! any job runs. A job is recorded: its `done/` draft made durable in
//! `tmp/`, its gradebook row, its deliveries, then the draft published as
//! `done/<job>/`. A crash after the deliveries were queued leaves a draft:
//! start-up publishes it, before `tmp/` is swept. The gradebook runs WAL
//! with `synchronous=NORMAL`, so a power loss can drop a row (or keep an
//! older one) while `done/` survives. At start,
//! every `done/` record without a row gets it back, and every recent one
//! (within `[spool] dedup_window`, the time receipts are kept, and a day)
//! whose row says something else is recorded again. A job in
//! `done/` is never graded again, so the gradebook never disagrees with
//! what was sent. It never grades and never moves a job.

use std::time::SystemTime;

use tracing::{info, warn};

use crate::spool::State;

use super::wiring::Grader;

/// At most this far back is a `done/` record compared with its row (a
/// lost write is of the last moments before a crash; the start-up cost
/// stays bounded on a spool of a whole term).
const RECENT_MAX: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl Grader {
    /// Publish the `done/` drafts in `tmp/` whose job has a result
    /// delivery queued, sent or dead (a crash came between queuing the
    /// deliveries and publishing `done/`): the student was promised that
    /// result, so it is the job's record, never graded again.
    pub(super) fn publish_promised_drafts(&self) {
        let Ok(names) = self.spool.list(State::Tmp) else {
            return;
        };
        for name in names {
            // Drafts are `<job>.<pid>.<ulid>` directories (`Spool::tmp_dir`).
            let Some(job) = name
                .split('.')
                .next()
                .filter(|j| crate::spool::is_valid_name(j))
            else {
                continue;
            };
            let dir = self.spool.path(State::Tmp, &name);
            if !dir.join("result.json").is_file()
                || !dir.join("event.json").is_file()
                || self.spool.path(State::Done, job).exists()
                || !crate::deliver::has_result_delivery(&self.spool, job)
            {
                continue;
            }
            match self.spool.publish_dir(&dir, State::Done, job) {
                Ok(_) => {
                    warn!(job_id = %job, "published a record whose deliveries were queued before a crash")
                }
                Err(e) => warn!(job_id = %job, error = %e, "cannot publish a promised record"),
            }
        }
    }

    /// Reconcile the gradebook with `done/` (see the module).
    pub(super) async fn reconcile(&self) -> Result<(), super::GraderFault> {
        let names = self.spool.list(State::Done)?;
        let gb = self.gradebook.clone();
        let known = tokio::task::spawn_blocking(move || {
            gb.lock().unwrap_or_else(|p| p.into_inner()).job_ids()
        })
        .await??;
        let window = self.cfg.spool.dedup_window.get().min(RECENT_MAX);
        let recent_since = SystemTime::now()
            .checked_sub(window)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut rows = 0usize;
        for name in names {
            let dir = self.spool.path(State::Done, &name);
            let recent = std::fs::metadata(&dir)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= recent_since);
            if known.contains(&name) && !recent {
                continue;
            }
            let Ok((_, Some(result))) = super::read_record(&self.spool, &name) else {
                warn!(job_id = %name, "done/ record unreadable: not reconciled");
                continue;
            };
            let row = if known.contains(&name) {
                self.gradebook_row(&name).await
            } else {
                None
            };
            let same = row.is_some_and(|r| {
                r.ended_at == result.ended_at
                    && r.status == result.status
                    && r.grade_total == result.grade_total
            });
            if !same {
                self.record_gradebook(result.clone()).await?;
                rows += 1;
            }
        }
        if rows > 0 {
            warn!(rows, "reconciled with done/: gradebook rows restored");
        } else {
            info!("gradebook agrees with done/");
        }
        Ok(())
    }
}
