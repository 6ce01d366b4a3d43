//! The outbox on disk: what is waiting, what was given up on, what was sent.
//!
//! Owns `spool/outbox/` (one JSON record per job and destination, written
//! with the spool protocol), `spool/dead/` (records given up on, with the
//! reason) and `spool/sent/` (small receipts of what was delivered, so that
//! enqueuing the same delivery again is a no-op): queuing a finished job's
//! deliveries, the [`has_result_delivery`] query the grader asks after a
//! crash, reading records back (one that does not parse goes to
//! `corrupt/`), writing receipts, pruning old ones and the lines of
//! `labgrader queue`. It never sends anything, never decides when to try
//! again (the worker does), never moves files between spool states itself
//! (a delivered record renamed into `sent/` as its receipt is the outbox's
//! own bookkeeping), and never touches `incoming/`, `active/` or `done/`.

use std::fs;
use std::io;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::error::DeliverError;
use super::record::{CommitState, Destination, JobStage, Receipt, Record, record_file_name};
use super::render;
use crate::config::Config;
use crate::event::Event;
use crate::result::JobResult;
use crate::spool::{Spool, SpoolError, State, fsync_dir};

/// Directory (under the spool root) holding delivery receipts.
pub const SENT_DIR: &str = "sent";

/// Whether a result delivery of `job_id` was queued: waiting in the
/// outbox, sent, or dead. The grader asks this after a crash, instead of
/// reading the outbox's directories itself.
pub fn has_result_delivery(spool: &Spool, job_id: &str) -> bool {
    [
        Destination::Callback,
        Destination::Email,
        Destination::Status,
    ]
    .into_iter()
    .map(|d| record_file_name(job_id, d))
    .any(|name| {
        spool.path(State::Outbox, &name).exists()
            || spool.path(State::Dead, &name).exists()
            || sent_dir(spool).join(&name).exists()
    })
}

pub(super) fn sent_dir(spool: &Spool) -> PathBuf {
    spool.root().join(SENT_DIR)
}

pub(super) fn receipt_path(spool: &Spool, name: &str) -> PathBuf {
    sent_dir(spool).join(name)
}

/// Remove receipts older than `window` (`[spool] dedup_window`), except
/// while any record of their job is still in the outbox (a later status
/// stage must still see an earlier one was sent, so it never goes
/// backwards) or their job still waits or runs (crash recovery reads the
/// receipts of those). Returns how many.
pub fn prune_receipts(spool: &Spool, window: std::time::Duration) -> std::io::Result<usize> {
    let job_of = |name: &str| name.split('.').next().unwrap_or_default().to_string();
    let queued: std::collections::HashSet<String> = spool
        .list(State::Outbox)
        .map_err(std::io::Error::other)?
        .iter()
        .map(|n| job_of(n))
        .collect();
    crate::spool::prune_older_than(&sent_dir(spool), window, |name| {
        let job = job_of(name);
        queued.contains(&job) || crate::spool::job_waiting_or_running(spool.root(), &job)
    })
}

/// True when `name` is already waiting, delivered or dead.
fn already_known(spool: &Spool, name: &str) -> bool {
    spool.path(State::Outbox, name).exists()
        || spool.path(State::Dead, name).exists()
        || receipt_path(spool, name).exists()
}

/// A later stage (commit status, callback) of the same job already queued
/// or sent: the earlier one is never sent after it.
pub(super) fn superseded_by(spool: &Spool, rec: &Record) -> Option<Destination> {
    stages_of_job(rec, std::cmp::Ordering::Greater).find(|d| {
        let name = record_file_name(&rec.job_id, *d);
        spool.path(State::Outbox, &name).exists() || receipt_path(spool, &name).exists()
    })
}

/// Write `rec` to the outbox unless it is already there, delivered or dead,
/// or a later stage of its job is. Returns whether a new record was written.
pub fn enqueue(spool: &Spool, rec: &Record) -> Result<bool, DeliverError> {
    let queued = enqueue_unsynced(spool, rec)?;
    if queued {
        fsync_outbox(spool)?;
    }
    Ok(queued)
}

/// Make the names of records queued by [`enqueue_unsynced`] durable (one
/// directory fsync covers every rename before it).
fn fsync_outbox(spool: &Spool) -> Result<(), DeliverError> {
    let dir = spool.dir(State::Outbox);
    fsync_dir(&dir).map_err(|source| SpoolError::Write { path: dir, source }.into())
}

/// [`enqueue`] without the outbox's directory fsync: the record's contents
/// are durable, its name only after the caller's [`fsync_outbox`].
fn enqueue_unsynced(spool: &Spool, rec: &Record) -> Result<bool, DeliverError> {
    let name = rec.file_name();
    if already_known(spool, &name) {
        tracing::debug!(job_id = %rec.job_id, destination = %rec.destination, "delivery already queued");
        return Ok(false);
    }
    if let Some(later) = superseded_by(spool, rec) {
        tracing::debug!(job_id = %rec.job_id, destination = %rec.destination, %later,
            "not queued: a later stage is queued or sent");
        return Ok(false);
    }
    match spool.publish_unsynced(State::Outbox, &name, &rec.to_bytes()) {
        Ok(_) => {
            tracing::info!(job_id = %rec.job_id, project = %rec.project, sha = %rec.sha,
                destination = %rec.destination, "delivery queued");
            Ok(true)
        }
        Err(SpoolError::Exists { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// True when commit statuses are configured and can be sent.
pub fn commit_status_enabled(cfg: &Config) -> bool {
    cfg.gitlab.commit_status && cfg.secrets.gitlab_token.is_some()
}

/// Queue every configured delivery of a finished job: callback (when
/// `callback.url` is set), email (when `email.url` is set) and the final
/// commit status (when `gitlab.commit_status` and a token are set), each
/// written durably before this returns. Safe to call again for the same
/// job: nothing is queued twice.
///
/// `result.stdout.bytes` (and `stderr.bytes`) must hold the captured
/// output: they are not part of `result.json`.
pub fn enqueue_result(
    cfg: &Config,
    spool: &Spool,
    event: &Event,
    result: &JobResult,
) -> Result<(), DeliverError> {
    let mut records = Vec::new();
    // The renderer applies the hidden-key filter: hidden summary keys (and
    // their lines in stdout) are never emailed, and reach the callback only
    // with include_hidden.
    if !cfg.callback.url.is_empty() {
        records.push(render::callback_record(cfg, event, result));
    }
    // A regrade emails the student again only when staff asked (`--notify`).
    let email = event.regrade.as_ref().is_none_or(|r| r.notify);
    if !cfg.email.url.is_empty() && email {
        records.push(render::email_record(cfg, event, result));
    }
    if commit_status_enabled(cfg) {
        records.push(render::final_status_record(cfg, event, result));
    }
    // One directory fsync for the job's records, not one each.
    let mut queued = false;
    for rec in &records {
        queued |= enqueue_unsynced(spool, rec)?;
    }
    if queued {
        fsync_outbox(spool)?;
    }
    for rec in &records {
        drop_earlier_stages(spool, rec);
    }
    Ok(())
}

/// Remove the unsent earlier stages of `rec`'s job (its `queued`/`running`
/// callback, its `pending`/`running` status) once `rec`, a later stage, is
/// durably queued: they would only be found superseded when tried. No
/// fsync: a removal a crash loses is found superseded then. A stage being
/// sent at this moment still gets its receipt (the worker tolerates the
/// record's absence).
fn drop_earlier_stages(spool: &Spool, rec: &Record) {
    for d in stages_of_job(rec, std::cmp::Ordering::Less) {
        remove_record(spool, &record_file_name(&rec.job_id, d));
    }
}

/// The stages of `rec`'s kind (commit status, callback) that come after
/// it (`Greater`) or before it (`Less`); none for a record that is not a
/// stage.
fn stages_of_job(rec: &Record, side: std::cmp::Ordering) -> impl Iterator<Item = Destination> {
    let stage = rec.destination.stage();
    Destination::ALL.into_iter().filter(move |d| {
        matches!((stage, d.stage()), (Some((kind, order)), Some((k, o))) if k == kind && o.cmp(&order) == side)
    })
}

/// Queue only the email of `result` (e.g. a job refused by course policy,
/// whose `stdout` holds the explanation). A no-op when email is off.
pub fn enqueue_email(
    cfg: &Config,
    spool: &Spool,
    event: &Event,
    result: &JobResult,
) -> Result<(), DeliverError> {
    if cfg.email.url.is_empty() {
        return Ok(());
    }
    enqueue(spool, &render::email_record(cfg, event, result))?;
    Ok(())
}

/// Queue a `pending` (job accepted) or `running` (job started) commit
/// status. A no-op when commit statuses are off or no GitLab token is set.
/// `success`/`failed` come from [`enqueue_result`]; passed here they are
/// queued as the final status without a grade.
pub fn enqueue_commit_status(
    cfg: &Config,
    spool: &Spool,
    event: &Event,
    state: CommitState,
) -> Result<(), DeliverError> {
    if !commit_status_enabled(cfg) {
        return Ok(());
    }
    enqueue(spool, &render::stage_status_record(cfg, event, state))?;
    Ok(())
}

/// Queue the callback of a stage before the result (`queued` at intake,
/// `running` once the run has lasted `[deliver] running_after`). A no-op
/// when `callback.url` is empty.
pub fn enqueue_callback_stage(
    cfg: &Config,
    spool: &Spool,
    event: &Event,
    stage: JobStage,
) -> Result<(), DeliverError> {
    if cfg.callback.url.is_empty() {
        return Ok(());
    }
    let rec = render::stage_callback_record(cfg, event, stage);
    if matches!(stage, JobStage::Running) {
        // Progress of a job being graded: its name is made durable by the
        // next fsync of the outbox (the job's result records at the
        // latest). A crash before that runs the job again, which queues
        // this stage again.
        enqueue_unsynced(spool, &rec)?;
    } else {
        enqueue(spool, &rec)?;
    }
    Ok(())
}

/// Queue the release of `result` after its assignment's deadline: the
/// email and callback again, `after_due_date` tests shown. At most once
/// per job (a record already queued, sent or dead is not queued again).
/// Returns how many records were queued now.
pub fn enqueue_release(
    cfg: &Config,
    spool: &Spool,
    event: &Event,
    result: &JobResult,
) -> Result<usize, DeliverError> {
    let mut queued = 0;
    for rec in render::release_records(cfg, event, result) {
        if enqueue(spool, &rec)? {
            queued += 1;
        }
    }
    Ok(queued)
}

/// One line of `labgrader queue` about a delivery.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryLine {
    pub key: String,
    pub attempts: u32,
    pub next_try_at: Option<DateTime<Utc>>,
    /// Last error (waiting) or the reason it was given up (dead).
    pub reason: Option<String>,
}

/// Up to `limit` waiting and dead deliveries (oldest first), for `labgrader queue`.
pub fn report(
    spool: &Spool,
    limit: usize,
) -> Result<(Vec<DeliveryLine>, Vec<DeliveryLine>), DeliverError> {
    let lines = |state: State| -> Result<Vec<DeliveryLine>, DeliverError> {
        let mut out = Vec::new();
        for name in spool.list(state)?.into_iter().take(limit) {
            let bytes = match spool.read(state, &name) {
                // Delivered (renamed into sent/) since the listing.
                Err(e) if e.io_kind() == Some(io::ErrorKind::NotFound) => continue,
                r => r.ok(),
            };
            let line = match bytes.and_then(|b| Record::from_bytes(&b).ok()) {
                Some(r) => DeliveryLine {
                    key: r.key,
                    attempts: r.attempts,
                    next_try_at: (state == State::Outbox).then_some(r.next_try_at),
                    reason: if state == State::Dead {
                        r.dead_reason.or(r.last_error)
                    } else {
                        r.last_error
                    },
                },
                None => DeliveryLine {
                    key: name,
                    attempts: 0,
                    next_try_at: None,
                    reason: Some("unreadable record".into()),
                },
            };
            out.push(line);
        }
        Ok(out)
    };
    Ok((lines(State::Outbox)?, lines(State::Dead)?))
}

/// Read and parse an outbox record; an unparseable one is quarantined
/// (`Ok(None)`), as is one whose name does not match its contents.
pub(super) fn read_record(spool: &Spool, name: &str) -> Result<Option<Record>, SpoolError> {
    let bytes = match spool.read(State::Outbox, name) {
        Ok(b) => b,
        Err(e) if e.io_kind() == Some(io::ErrorKind::NotFound) => return Ok(None),
        Err(e) => return Err(e),
    };
    match Record::from_bytes(&bytes) {
        Ok(rec) if rec.file_name() == name => Ok(Some(rec)),
        Ok(_) | Err(_) => {
            let why = match Record::from_bytes(&bytes) {
                Err(e) => e.to_string(),
                Ok(_) => "file name does not match its job and destination".into(),
            };
            match spool.quarantine(name, State::Outbox) {
                Ok(to) => tracing::error!(name, error = %why, to = %to.display(),
                    "outbox record unreadable; moved to corrupt/"),
                Err(e) => tracing::error!(name, error = %e, "cannot quarantine outbox record"),
            }
            Ok(None)
        }
    }
}

/// Turn the outbox record `name` into its receipt `sent/<name>`;
/// `durable`: the receipt's name is fsynced.
///
/// The record itself is renamed into `sent/` and overwritten with the
/// receipt: the record leaves the outbox and its receipt appears in one
/// step, and no inode is made or freed per delivery (on a busy grader
/// that churn costs more than the write). Only the receipt's name is ever
/// relied on (it keeps the delivery from being sent again); its contents
/// are for people, and a crash between the rename and the write leaves the
/// record's own bytes there until the receipt is pruned (the spool is the
/// grader's alone). A record already gone (an earlier stage dropped when
/// its result was queued) gets a receipt written fresh.
pub(super) fn write_receipt(
    spool: &Spool,
    name: &str,
    receipt: &Receipt,
    durable: bool,
) -> io::Result<()> {
    let dir = sent_dir(spool);
    let to = dir.join(name);
    let mut bytes = serde_json::to_vec_pretty(receipt).map_err(io::Error::other)?;
    bytes.push(b'\n');
    match fs::rename(spool.path(State::Outbox, name), &to) {
        Ok(()) => fs::write(&to, &bytes)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => write_fresh(spool, &to, &bytes)?,
        Err(e) => return Err(e),
    }
    if durable { fsync_dir(&dir) } else { Ok(()) }
}

/// Write a receipt whose record is gone: through `tmp/`, so it never
/// appears half written.
fn write_fresh(spool: &Spool, to: &std::path::Path, bytes: &[u8]) -> io::Result<()> {
    let name = to.file_name().unwrap_or_default().to_string_lossy();
    let tmp = spool
        .dir(State::Tmp)
        .join(format!("{name}.receipt.{}", crate::spool::new_job_id()));
    let res = fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, to));
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Remove a record whose receipt is written. No directory fsync: should
/// the removal be lost in a crash, the receipt keeps it from being re-sent.
pub(super) fn remove_record(spool: &Spool, name: &str) {
    let p = spool.path(State::Outbox, name);
    match fs::remove_file(&p) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::error!(path = %p.display(), error = %e, "cannot remove delivered record")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn receipts_past_the_window_go_unless_their_record_or_job_is_live() {
        let t = tempfile::tempdir().unwrap();
        let spool = Spool::open(t.path()).unwrap();
        let sent = sent_dir(&spool);
        fs::create_dir_all(&sent).unwrap();
        let names = [
            "A.email.json",
            "B.status.json",
            "C.callback.json",
            "D.status.json",
        ];
        for n in names {
            fs::write(sent.join(n), b"{}").unwrap();
        }
        for n in &names[..3] {
            crate::spool::backdate(&sent.join(n), 7200);
        }
        // Another record of B's job still waits (a status stage must not
        // overtake the one sent); C's job is running again.
        fs::write(spool.path(State::Outbox, "B.email.json"), b"{}").unwrap();
        fs::write(spool.path(State::Active, "C.json"), b"{}").unwrap();
        assert_eq!(
            prune_receipts(&spool, Duration::from_secs(3600)).unwrap(),
            1
        );
        assert!(!sent.join("A.email.json").exists());
        for n in &names[1..] {
            assert!(sent.join(n).exists(), "{n}");
        }
    }
}
