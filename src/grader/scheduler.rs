//! The scheduler: which waiting job runs next, and the worker pool.
//!
//! Owns `incoming/` as a queue: it watches the directory (inotify through
//! [`crate::watch`], plus a periodic rescan), keeps an index of the waiting
//! jobs (oldest first; an unreadable event goes to `corrupt/`), claims a
//! job when a preparation slot is free (at most `[grader] workers` being
//! prepared, never two jobs of the same student project at once, never
//! before a job's `not_before`, never under `[spool] min_free`) and starts
//! it; a prepared job then waits for one of the `workers` run slots
//! ([`Slot`]). On shutdown
//! it stops claiming, lets running jobs finish within the grace period,
//! then cancels them (they put themselves back). A job task that panicked
//! counts as a crash. It never grades anything itself: what a job goes
//! through is [`super::job`]'s.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::event::Event;
use crate::spool::{Spool, State};

use super::wiring::Grader;

impl Grader {
    /// The scheduling loop. Returns after shutdown once every job has
    /// finished or been put back.
    pub(super) async fn serve(self: Arc<Self>, shutdown: CancellationToken) {
        // Slurm jobs run on the cluster, not here: unset workers follow
        // `[slurm] max_in_flight` rather than this host's CPUs.
        let workers = if self.cfg.grader.workers == 0
            && self.cfg.grader.runner == crate::config::RunnerKind::Slurm
        {
            self.cfg.slurm.max_in_flight
        } else {
            self.cfg.grader.effective_workers()
        }
        .max(1);
        // `workers` jobs run at once; as many more may be prepared
        // (fetched, exported, admitted, laid out) meanwhile, so a run
        // slot never waits for git or the disk (see `Slot`).
        let permits = Arc::new(Semaphore::new(workers));
        let runs = Arc::new(Semaphore::new(workers));
        // `arrived`: something came into incoming/ (then it is listed
        // again); `freed`: a preparation slot came free (the index
        // suffices).
        let (arrived, freed) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let _watcher = {
            let arrived = arrived.clone();
            crate::watch::watch_dir(&self.spool.dir(State::Incoming), "incoming/", move || {
                arrived.notify_one()
            })
        };
        let jobs_cancel = CancellationToken::new();
        let mut tasks: JoinSet<String> = JoinSet::new();
        let mut sched = Scheduler::default();
        let rescan = self
            .cfg
            .grader
            .rescan_interval
            .get()
            .max(Duration::from_millis(50));
        let chosen = self
            .runner(self.cfg.grader.runner)
            .map(|r| r.name())
            .unwrap_or("unavailable");
        info!(workers, runner = %self.cfg.grader.runner, chosen, "grader started");
        let mut low_space = false;
        // Listing incoming/ on every wake made a deep queue quadratic: a
        // job ending does not change incoming/, an arrival or the
        // periodic rescan (a missed inotify event, a rewrite) does.
        let mut scanned_at: Option<Instant> = None;
        loop {
            if scanned_at.is_none_or(|t| t.elapsed() >= rescan) {
                sched.scan(&self.spool);
                scanned_at = Some(Instant::now());
            }
            // Under `[spool] min_free` no new job is claimed: the reserve
            // is for the jobs already running to finish and deliver.
            let next = match self.reserve.check() {
                Err(low) => {
                    if !low_space {
                        error!(
                            free = low.free,
                            min_free = low.min_free,
                            "SPOOL FILE SYSTEM NEARLY FULL: not claiming new jobs until space is freed"
                        );
                    }
                    low_space = true;
                    None
                }
                Ok(()) => {
                    if low_space {
                        info!("free space back above [spool] min_free: claiming jobs again");
                    }
                    low_space = false;
                    sched.dispatch(&self, (&permits, &runs, &freed), &mut tasks, &jobs_cancel)
                }
            };
            let sleep_for = next
                .map(|t| (t - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                .map_or(rescan, |d| d.min(rescan));
            tokio::select! {
                _ = arrived.notified() => scanned_at = None,
                _ = freed.notified() => {}
                Some(done) = tasks.join_next_with_id() => {
                    let id = match &done {
                        Ok((id, _)) => *id,
                        Err(e) => e.id(),
                    };
                    if let Some((name, project)) = sched.spawned.remove(&id) {
                        sched.running.remove(&project);
                        if let Err(e) = done {
                            error!(file = %name, error = %e, "a job task panicked: counted as a crash");
                            self.after_panic(&name).await;
                        }
                    }
                }
                _ = tokio::time::sleep(sleep_for) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        // A prepared job waiting for a run slot does not start now: it
        // goes back to incoming/ (see `Slot::run`).
        runs.close();
        let running = tasks.len();
        if running > 0 {
            info!(running, grace = ?self.cfg.grader.shutdown_grace.get(),
                "shutting down: waiting for running jobs");
        }
        let grace = tokio::time::sleep(self.cfg.grader.shutdown_grace.get());
        tokio::pin!(grace);
        loop {
            tokio::select! {
                r = tasks.join_next_with_id() => match r {
                    None => break,
                    Some(Err(e)) => {
                        if let Some((name, _)) = sched.spawned.remove(&e.id()) {
                            error!(file = %name, error = %e, "a job task panicked: counted as a crash");
                            self.after_panic(&name).await;
                        }
                    }
                    Some(Ok(_)) => {}
                },
                _ = &mut grace, if !jobs_cancel.is_cancelled() => {
                    warn!(running = tasks.len(), "grace period over: stopping and requeueing jobs");
                    jobs_cancel.cancel();
                }
            }
        }
        info!("grader stopped");
    }

    /// A job task panicked: count it as a crash, like start-up recovery
    /// would, so a job that always panics ends in failed/.
    async fn after_panic(&self, name: &str) {
        let Ok(bytes) = self.spool.read(State::Active, name) else {
            return;
        };
        let Ok(mut ev) = Event::from_bytes(&bytes) else {
            let _ = self.spool.quarantine(name, State::Active);
            return;
        };
        ev.crashes += 1;
        let moved = self.spool.requeue(name, Some(&ev.to_bytes()));
        if let Err(e) = &moved {
            error!(file = %name, error = %e, "cannot requeue the job; it stays in active/ until restart");
        }
        if moved.is_ok() && ev.crashes >= self.cfg.grader.max_crashes {
            let reason = format!(
                "the grader failed {} times on this job; it goes to failed/ and is not retried \
                 automatically (`labgrader regrade {}` retries it)",
                ev.crashes, ev.job_id
            );
            if let Err(e) = self.fail(name, &ev, &reason).await {
                error!(file = %name, error = %e, "cannot move the job to failed/");
            }
        }
    }
}

/// What the scheduler knows of each waiting job (never the whole event).
struct Meta {
    project: String,
    /// The low-priority lane (`labgrader regrade`): started only when no
    /// live push may start.
    regrade: bool,
    not_before: Option<DateTime<Utc>>,
    /// The event file's mtime when read: a job waiting for a later try is
    /// read again when staff rewrote it (`labgrader retry`).
    modified: Option<std::time::SystemTime>,
}

#[derive(Default)]
struct Scheduler {
    /// Waiting jobs by file name (= oldest first).
    index: BTreeMap<String, Meta>,
    /// Projects with a job running.
    running: HashSet<String>,
    /// Running tasks: file name and project.
    spawned: HashMap<tokio::task::Id, (String, String)>,
}

impl Scheduler {
    /// Bring the index in line with `incoming/`; quarantine what cannot be read.
    fn scan(&mut self, spool: &Spool) {
        let names = match spool.list(State::Incoming) {
            Ok(n) => n,
            Err(e) => {
                error!(error = %e, "cannot list incoming/");
                return;
            }
        };
        let present: HashSet<&String> = names.iter().collect();
        self.index.retain(|n, _| present.contains(n));
        let now = Utc::now();
        let mtime = |name: &str| {
            std::fs::metadata(spool.path(State::Incoming, name))
                .and_then(|m| m.modified())
                .ok()
        };
        // Only jobs waiting for a later try are checked for a rewrite (a
        // stat each); the others run as soon as a worker is free anyway.
        self.index
            .retain(|n, m| m.not_before.is_none_or(|t| t <= now) || m.modified == mtime(n));
        for name in &names {
            if self.index.contains_key(name) {
                continue;
            }
            // Before the read: a rewrite after it is then noticed.
            let modified = mtime(name);
            match read_event(spool, State::Incoming, name) {
                Ok(ev) => {
                    self.index.insert(
                        name.clone(),
                        Meta {
                            project: ev.project.path,
                            regrade: ev.regrade.is_some(),
                            not_before: ev.not_before,
                            modified,
                        },
                    );
                }
                Err(ReadError::Gone) => {}
                Err(ReadError::Bad(why)) => {
                    error!(file = %name, reason = %why, "unreadable event: moved to corrupt/");
                    if let Err(e) = spool.quarantine(name, State::Incoming) {
                        error!(file = %name, error = %e, "cannot quarantine");
                    }
                }
            }
        }
    }

    /// Claim and start what may run now; returns the earliest future
    /// `not_before` among waiting jobs.
    fn dispatch(
        &mut self,
        grader: &Arc<Grader>,
        (permits, runs, wake): (&Arc<Semaphore>, &Arc<Semaphore>, &Arc<Notify>),
        tasks: &mut JoinSet<String>,
        cancel: &CancellationToken,
    ) -> Option<DateTime<Utc>> {
        let now = Utc::now();
        let mut next: Option<DateTime<Utc>> = None;
        let mut claimed = Vec::new();
        // Two lanes: every live push that may start does, before any
        // regrade; within a lane, oldest first.
        let lanes = [false, true];
        let in_order = lanes
            .iter()
            .flat_map(|lane| self.index.iter().filter(move |(_, m)| m.regrade == *lane));
        for (name, meta) in in_order {
            if self.running.contains(&meta.project) {
                continue;
            }
            if let Some(t) = meta.not_before
                && t > now
            {
                next = Some(next.map_or(t, |n| n.min(t)));
                continue;
            }
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                break;
            };
            let slot = Slot {
                permit: Some(permit),
                runs: runs.clone(),
                wake: wake.clone(),
            };
            claimed.push(name.clone());
            // Not durable on purpose (see `Spool::claim`).
            match grader.spool.claim(name) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    error!(file = %name, error = %e, "cannot claim a job");
                    continue;
                }
            }
            let ev = match read_event(&grader.spool, State::Active, name) {
                Ok(ev) => ev,
                Err(ReadError::Gone) => continue,
                Err(ReadError::Bad(why)) => {
                    error!(file = %name, reason = %why, "unreadable event: moved to corrupt/");
                    let _ = grader.spool.quarantine(name, State::Active);
                    continue;
                }
            };
            self.running.insert(meta.project.clone());
            let handle = tasks.spawn(grader.clone().job(name.clone(), ev, slot, cancel.clone()));
            self.spawned
                .insert(handle.id(), (name.clone(), meta.project.clone()));
        }
        for n in claimed {
            self.index.remove(&n);
        }
        next
    }
}

/// A job's place among the `[grader] workers`, in two stages. Claimed
/// with a preparation permit (at most `workers` jobs are being fetched,
/// exported, admitted and laid out), it waits for one of the `workers`
/// run permits before its sandbox starts ([`Slot::run`]); its preparation
/// permit is then free for the next job, whose preparation overlaps this
/// run. The run permit is freed as soon as the run is over: the record
/// (disk work) overlaps the next run too. Freeing the preparation permit
/// wakes the scheduler. Jobs take run permits in the order they became
/// ready (FIFO), which keeps the lanes' order: the scheduler claims live
/// pushes first.
pub(super) struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    runs: Arc<Semaphore>,
    wake: Arc<Notify>,
}

impl Slot {
    /// Wait for a run permit; `None` once the grader is shutting down
    /// (the job then goes back to `incoming/` without running).
    pub(super) async fn run(&mut self) -> Option<OwnedSemaphorePermit> {
        let run = self.runs.clone().acquire_owned().await.ok()?;
        self.free();
        Some(run)
    }

    fn free(&mut self) {
        if self.permit.take().is_some() {
            // The permit first, so the woken scheduler finds it free.
            self.wake.notify_one();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.free();
    }
}

enum ReadError {
    Gone,
    Bad(String),
}

fn read_event(spool: &Spool, state: State, name: &str) -> Result<Event, ReadError> {
    let bytes = match spool.read(state, name) {
        Ok(b) => b,
        Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => return Err(ReadError::Gone),
        Err(e) => return Err(ReadError::Bad(e.to_string())),
    };
    let ev = Event::from_bytes(&bytes).map_err(|e| ReadError::Bad(format!("not an event: {e}")))?;
    let stem = crate::event::job_id_of(name);
    if !name.ends_with(".json") || ev.job_id != stem || !crate::spool::is_valid_name(stem) {
        return Err(ReadError::Bad(format!(
            "file name does not match job id {:?}",
            ev.job_id
        )));
    }
    Ok(ev)
}
