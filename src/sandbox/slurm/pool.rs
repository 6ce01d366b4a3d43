//! The grader's side of pilots (`[slurm] pilots` > 0): keeps up to that
//! many pilot allocations (`labgrader sandbox --serve`, [`super::pilot`])
//! while jobs wait, publishes each job as a ticket ([`super::tickets`]),
//! and waits for the job's outcome as the per-job path does. Slurm is
//! asked about the pilots only (one `GET jobs` per `[slurm] poll_interval`
//! for all of them), never about each job: a job whose pilot ended
//! without its outcome is a grader fault, retried.
//!
//! Restart safety: a job directory whose ticket is queued or claimed, or
//! that holds an outcome, is waited for again, never published twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::completion::{OUTCOME_POLL, OutcomeWatch};
use super::jobfiles::{SLURM_ERR_FILE, collect_results, prepare, read_outcome_patiently, tail_of};
use super::rest::{JOB_NAME_PREFIX, RestClient, SlurmError};
use super::states::{Phase, memory_per_node_mib, phase, time_limit_minutes, verdict};
use super::tickets::{Ticket, TicketPlace, Tickets, read_pilot_exit};
use super::timing;
use crate::config::{Config, Contract};
use crate::sandbox::jobdir::JobDir;
use crate::sandbox::spec::{RunOutcome, RunSpec, SAFE_PATH, SandboxError};

/// The job name of every pilot (a job id never starts with a dot, so no
/// job's name is this).
pub const PILOT_NAME: &str = ".pilot";
/// How long Slurm's logs of an ended pilot are kept in `.pilots/`.
const PILOT_LOG_KEEP: Duration = Duration::from_secs(24 * 3600);

/// What the pool needs of `[slurm]`.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub pilots: usize,
    pub slots: usize,
    pub cpus: u64,
    pub memory: u64,
    pub lifetime: Duration,
    pub idle: Duration,
    pub partition: String,
    pub memory_margin: u64,
    pub poll: Duration,
    pub queue_timeout: Duration,
}

impl PoolConfig {
    pub fn from_config(cfg: &Config) -> PoolConfig {
        let s = &cfg.slurm;
        PoolConfig {
            pilots: s.pilots,
            slots: s.pilot_slots,
            cpus: s.pilot_cpus,
            memory: s.pilot_memory.bytes(),
            lifetime: s.pilot_lifetime.get(),
            idle: s.pilot_idle.get(),
            partition: s.partition.clone(),
            memory_margin: s.memory_margin.bytes(),
            poll: s.poll_interval.get(),
            queue_timeout: s.queue_timeout.get(),
        }
    }
}

#[derive(Default)]
struct Known {
    /// Pilot Slurm id → its phase, as of `checked`.
    pilots: BTreeMap<u64, Phase>,
    checked: Option<Instant>,
    /// The last look at Slurm worked (else nothing is judged from it).
    fresh: bool,
}

pub struct PilotPool {
    api: Arc<RestClient>,
    tickets: Tickets,
    cfg: PoolConfig,
    bin: std::path::PathBuf,
    chown_to: Option<(u32, u32)>,
    known: Mutex<Known>,
}

impl PilotPool {
    pub(super) fn new(
        api: Arc<RestClient>,
        cfg: PoolConfig,
        shared: &std::path::Path,
        bin: std::path::PathBuf,
        chown_to: Option<(u32, u32)>,
    ) -> PilotPool {
        PilotPool {
            api,
            tickets: Tickets::new(shared),
            cfg,
            bin,
            chown_to,
            known: Mutex::new(Known::default()),
        }
    }

    /// Learn the pilots' states and submit pilots while fewer than
    /// `[slurm] pilots` are alive and tickets wait: at most once per
    /// second (sooner when `eager` and no pilot is known alive), and never
    /// while another job's task is already at it (one REST question for
    /// all the jobs, not one each).
    async fn tend(&self, eager: bool) -> Result<(), SlurmError> {
        let Ok(mut k) = self.known.try_lock() else {
            return Ok(());
        };
        let every = self.cfg.poll.min(Duration::from_secs(1));
        let none_alive = !k.pilots.values().any(|p| *p != Phase::Ended);
        if k.checked.is_some_and(|t| t.elapsed() < every) && !(eager && none_alive) {
            return Ok(());
        }
        k.checked = Some(Instant::now());
        let listed = match self.api.jobs_named(PILOT_NAME).await {
            Ok(v) => v,
            Err(e) => {
                k.fresh = false;
                return Err(e);
            }
        };
        k.fresh = true;
        k.pilots = listed
            .iter()
            .filter_map(|j| Some((j.job_id?, phase(j.state()))))
            .collect();
        // The directories of pilots that ended, once no claim is left in
        // them (`remove_dir` refuses a directory that is not empty).
        for id in self.tickets.pilot_ids() {
            if k.pilots.get(&id).is_none_or(|p| *p == Phase::Ended) {
                let _ = std::fs::remove_dir(self.tickets.pilot_dir(id));
            }
        }
        self.remove_old_logs(&k.pilots);
        let alive = k.pilots.values().filter(|p| **p != Phase::Ended).count();
        let waiting = self.tickets.queued().len();
        let want = self
            .cfg
            .pilots
            .saturating_sub(alive)
            .min(waiting.div_ceil(self.cfg.slots.max(1)));
        for _ in 0..want {
            let id = self.api.submit(&self.pilot_body()).await?;
            tracing::info!(pilot = id, "submitted slurm pilot");
            k.pilots.insert(id, Phase::Queued);
        }
        Ok(())
    }

    /// Slurm's logs of pilots no longer alive, once older than
    /// [`PILOT_LOG_KEEP`] (kept that long for staff to read).
    fn remove_old_logs(&self, pilots: &BTreeMap<u64, Phase>) {
        let dir = self.tickets.shared.join(super::tickets::PILOTS_DIR);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name
                .strip_prefix("pilot-")
                .and_then(|n| n.split('.').next())
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > PILOT_LOG_KEEP);
            if old && pilots.get(&id).is_none_or(|p| *p == Phase::Ended) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// `Some(true)` when pilot `id` is known to have ended (or Slurm forgot
    /// it), `None` when Slurm could not be asked.
    async fn pilot_gone(&self, id: u64) -> Option<bool> {
        let k = self.known.lock().await;
        if !k.fresh {
            return None;
        }
        Some(k.pilots.get(&id).is_none_or(|p| *p == Phase::Ended))
    }

    fn pilot_body(&self) -> serde_json::Value {
        let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let shared = self.tickets.shared.to_string_lossy().into_owned();
        let script = format!(
            "#!/bin/sh\nexec {} sandbox --serve {} --slots {} --idle {} --lifetime {}\n",
            q(&self.bin.to_string_lossy()),
            q(&shared),
            self.cfg.slots,
            self.cfg.idle.as_secs().max(1),
            self.cfg.lifetime.as_secs()
        );
        let mut env = serde_json::json!({ "PATH": SAFE_PATH, "LANG": "C.UTF-8" });
        // The nodes' srun must find the cluster's config as the grader's does.
        if let Some(c) = std::env::var_os("SLURM_CONF") {
            env["SLURM_CONF"] = c.to_string_lossy().into_owned().into();
        }
        let log = self.tickets.shared.join(super::tickets::PILOTS_DIR);
        serde_json::json!({
            "script": script,
            "job": {
                "name": format!("{JOB_NAME_PREFIX}{PILOT_NAME}"),
                "partition": self.cfg.partition,
                "memory_per_node": self.cfg.memory.div_ceil(1 << 20),
                "time_limit": self.cfg.lifetime.as_secs().div_ceil(60).max(1),
                "cpus_per_task": self.cfg.cpus.max(1),
                "tasks": 1,
                "nodes": 1,
                "requeue": false,
                "current_working_directory": shared,
                "environment": env,
                "standard_input": "/dev/null",
                "standard_output": log.join("pilot-%j.out").to_string_lossy(),
                "standard_error": log.join("pilot-%j.err").to_string_lossy(),
            }
        })
    }

    /// Was this job published by an earlier grader (and not finished with)?
    fn attachable(&self, jd: &JobDir, job_id: &str) -> bool {
        jd.root.exists()
            && (jd.read_outcome().ok().flatten().is_some()
                || read_pilot_exit(jd).is_some()
                || self.tickets.place(job_id) != TicketPlace::Nowhere)
    }

    /// Run one job through the pilots.
    pub(super) async fn run(
        &self,
        jd: &JobDir,
        spec: &RunSpec,
        cancel: &CancellationToken,
    ) -> Result<RunOutcome, SandboxError> {
        let mut submitted_at = None;
        if self.attachable(jd, &spec.job_id) {
            tracing::info!(job_id = %spec.job_id, "re-attaching to a pilot job published before a restart");
        } else {
            let t = Instant::now();
            let ticket = Ticket {
                job_id: spec.job_id.clone(),
                memory_mib: memory_per_node_mib(spec.limits.memory, self.cfg.memory_margin),
                cpus: (spec.limits.cpus.ceil() as u64).max(1),
                time_limit_minutes: time_limit_minutes(spec.limits.timeout),
            };
            if ticket.memory_mib << 20 > self.cfg.memory {
                return Err(SandboxError::Setup {
                    step: "slurm pilot",
                    message: format!(
                        "the job's memory limit plus [slurm] memory_margin ({} MiB) exceeds \
                         [slurm] pilot_memory; raise pilot_memory",
                        ticket.memory_mib
                    ),
                });
            }
            prepare(jd, spec, self.chown_to).await?;
            let io = |source| SlurmError::Prepare {
                path: self.tickets.queue_dir(),
                source,
            };
            self.tickets.ensure_dirs(self.chown_to).map_err(io)?;
            self.tickets.publish(&ticket).map_err(io)?;
            timing::observe("submit", t.elapsed());
            submitted_at = Some(chrono::Utc::now());
            tracing::info!(job_id = %spec.job_id, "published slurm pilot ticket");
        }
        if let Err(e) = self.tend(true).await {
            tracing::warn!(job_id = %spec.job_id, error = %e, "cannot ask slurm about pilots; the job waits in the queue");
        }
        self.wait(jd, spec, cancel).await?;
        let o = verdict(jd, None, None).await?;
        if spec.contract == Contract::Trusted {
            collect_results(jd, spec).await?;
        }
        if let Some(at) = submitted_at {
            timing::observe_between("queued", at, o.started_at);
        }
        timing::observe_between("run", o.started_at, o.ended_at);
        Ok(o)
    }

    async fn wait(
        &self,
        jd: &JobDir,
        spec: &RunSpec,
        cancel: &CancellationToken,
    ) -> Result<(), SandboxError> {
        let job_id = &spec.job_id;
        let watch = OutcomeWatch::new(jd, OUTCOME_POLL);
        let queued_at = Instant::now();
        let mut next_backstop = Instant::now() + self.cfg.poll.min(Duration::from_secs(1));
        loop {
            if watch.ready() {
                return Ok(());
            }
            if let Some(exit) = read_pilot_exit(jd) {
                return self
                    .ended_without_outcome(jd, format!("its step ended ({exit})"))
                    .await;
            }
            tokio::select! {
                _ = cancel.cancelled() => {
                    // A queued ticket is taken back; a claimed one runs on
                    // and is collected after the restart.
                    let _ = self.tickets.withdraw(job_id);
                    return Err(SandboxError::Cancelled);
                }
                _ = watch.changed() => {}
            }
            if Instant::now() < next_backstop {
                continue;
            }
            next_backstop = Instant::now() + self.cfg.poll.min(Duration::from_secs(1));
            if let Err(e) = self.tend(false).await {
                tracing::warn!(job_id = %job_id, error = %e, "cannot ask slurm about pilots; still watching for the outcome");
            }
            match self.tickets.place(job_id) {
                TicketPlace::Queued => {
                    if queued_at.elapsed() > self.cfg.queue_timeout
                        && self.tickets.withdraw(job_id).unwrap_or(false)
                    {
                        return Err(SandboxError::Unavailable {
                            runner: "slurm".into(),
                            message: format!(
                                "no slurm pilot took the job within {:?}; is partition `{}` up?",
                                self.cfg.queue_timeout, self.cfg.partition
                            ),
                        });
                    }
                }
                TicketPlace::Claimed(pilot) => {
                    if self.pilot_gone(pilot).await == Some(true) && !watch.ready() {
                        let r = self
                            .ended_without_outcome(jd, format!("its pilot {pilot} ended"))
                            .await;
                        // The dead pilot's claim must not capture the retry.
                        if r.is_err() {
                            let _ = self.tickets.release(job_id, pilot);
                        }
                        return r;
                    }
                }
                TicketPlace::Nowhere => {
                    if !watch.ready() && read_pilot_exit(jd).is_none() {
                        return self
                            .ended_without_outcome(jd, "its ticket was lost".into())
                            .await;
                    }
                }
            }
        }
    }

    /// The backstop's end: the outcome may still be on its way over the
    /// shared filesystem; else a grader fault naming what happened.
    async fn ended_without_outcome(&self, jd: &JobDir, what: String) -> Result<(), SandboxError> {
        if read_outcome_patiently(jd).await.is_some() {
            return Ok(());
        }
        Err(SandboxError::Setup {
            step: "slurm pilot",
            message: format!(
                "{what} without an outcome from the sandbox{}",
                tail_of(&jd.file(SLURM_ERR_FILE))
            ),
        })
    }
}
