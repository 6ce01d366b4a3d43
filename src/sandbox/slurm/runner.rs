//! The `slurm` runner itself: one job submitted, waited for and collected
//! on a Slurm cluster, re-attaching after a grader crash instead of
//! submitting twice, and the job directory removed at the end. It drives
//! the REST client (`rest`), the job directory (`jobfiles`) and the state
//! mapping (`states`); it never parses Slurm's answers nor judges an
//! outcome itself, never reads the summary, never touches the spool or
//! the gradebook.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::completion::{OUTCOME_POLL, OutcomeWatch};
use super::jobfiles::{
    SLURM_ERR_FILE, SLURM_OUT_FILE, collect_results, prepare, record_slurm_id, recorded_slurm_id,
};
use super::pool::{PilotPool, PoolConfig};
use super::rest::{JOB_NAME_PREFIX, RestClient, SlurmError, SlurmJob};
use super::states::{Phase, memory_per_node_mib, phase, time_limit_minutes, verdict};
use super::timing;
use crate::config::{Config, Contract};
use crate::sandbox::jobdir::JobDir;
use crate::sandbox::spec::{RunOutcome, RunSpec, Runner, SAFE_PATH, SandboxError};

/// How long past Slurm's time limit the runner waits before it gives up on
/// the cluster (Slurm's KillWait and the node's report).
const OVERDUE_MARGIN: Duration = Duration::from_secs(90);
/// How long a cancelled job may take to disappear.
const CANCEL_WAIT: Duration = Duration::from_secs(60);
/// How long slurmrestd may stay unreachable while a job runs.
const REST_OUTAGE: Duration = Duration::from_secs(120);
/// The first backstop question to slurmrestd about a job comes this soon
/// after submission; later ones double up to `[slurm] poll_interval`.
const FIRST_BACKSTOP: Duration = Duration::from_millis(500);

/// Called with (labgrader job id, Slurm job id) right after submission, so
/// the grader can store the Slurm id in its spool record.
pub type SubmitHook = Arc<dyn Fn(&str, u64) + Send + Sync>;

/// Quote `s` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub struct SlurmRunner {
    api: Arc<RestClient>,
    /// `[slurm] pilots` > 0: jobs go to pilot allocations, not one Slurm
    /// job each.
    pool: Option<PilotPool>,
    partition: String,
    shared_dir: PathBuf,
    poll: Duration,
    queue_timeout: Duration,
    memory_margin: u64,
    bin: PathBuf,
    /// Owner given to job directories when the grader runs as root and
    /// jobs run as `[slurm] user`.
    chown_to: Option<(u32, u32)>,
    on_submitted: Option<SubmitHook>,
    /// `[slurm] max_in_flight` permits: a job holds one from before its
    /// submission (or re-attachment) until it is collected.
    in_flight: Arc<Semaphore>,
}

impl std::fmt::Debug for SlurmRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlurmRunner")
            .field("base", &self.api.base)
            .field("user", &self.api.user)
            .field("partition", &self.partition)
            .field("shared_dir", &self.shared_dir)
            .finish_non_exhaustive()
    }
}

impl SlurmRunner {
    pub fn new(cfg: &Config) -> Result<SlurmRunner, SandboxError> {
        let s = &cfg.slurm;
        let api = Arc::new(RestClient::new(cfg)?);
        let bin = if s.labgrader_bin.as_os_str().is_empty() {
            std::env::current_exe().map_err(SlurmError::Binary)?
        } else {
            s.labgrader_bin.clone()
        };
        let chown_to = if nix::unistd::geteuid().is_root() && s.user != "root" {
            nix::unistd::User::from_name(&s.user)
                .ok()
                .flatten()
                .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
        } else {
            None
        };
        let pool = (s.pilots > 0).then(|| {
            PilotPool::new(
                api.clone(),
                PoolConfig::from_config(cfg),
                &s.shared_dir,
                bin.clone(),
                chown_to,
            )
        });
        Ok(SlurmRunner {
            api,
            pool,
            partition: s.partition.clone(),
            shared_dir: s.shared_dir.clone(),
            poll: s.poll_interval.get(),
            queue_timeout: s.queue_timeout.get(),
            memory_margin: s.memory_margin.bytes(),
            bin,
            chown_to,
            on_submitted: None,
            in_flight: Arc::new(Semaphore::new(s.max_in_flight.max(1))),
        })
    }

    /// Call `hook(job_id, slurm_id)` after each submission (before waiting).
    pub fn on_submitted(mut self, hook: SubmitHook) -> SlurmRunner {
        self.on_submitted = Some(hook);
        self
    }

    /// Is slurmrestd reachable, the token accepted and slurmctld up?
    pub async fn ping(&self) -> Result<(), SlurmError> {
        self.api.ping().await
    }

    /// One job by id; `None` when Slurm no longer knows it.
    pub async fn job(&self, slurm_id: u64) -> Result<Option<SlurmJob>, SlurmError> {
        self.api.job(slurm_id).await
    }

    /// Every job Slurm knows under labgrader's name for `job_id`, in
    /// submission order.
    pub async fn jobs_named(&self, job_id: &str) -> Result<Vec<SlurmJob>, SlurmError> {
        self.api.jobs_named(job_id).await
    }

    /// `DELETE job/{id}` (SIGKILL to every process of the job).
    pub async fn cancel(&self, slurm_id: u64) -> Result<(), SlurmError> {
        self.api.cancel(slurm_id).await
    }

    /// Cancel and wait until the job's processes are gone.
    async fn cancel_and_wait(&self, slurm_id: u64) -> Result<(), SlurmError> {
        self.cancel(slurm_id).await?;
        let start = Instant::now();
        loop {
            match self.job(slurm_id).await? {
                None => return Ok(()),
                Some(j) if phase(j.state()) == Phase::Ended => return Ok(()),
                Some(_) if start.elapsed() > CANCEL_WAIT => {
                    return Err(SlurmError::Job {
                        slurm_id,
                        message: format!("still running {CANCEL_WAIT:?} after it was cancelled"),
                    });
                }
                Some(_) => tokio::time::sleep(self.poll.min(Duration::from_millis(250))).await,
            }
        }
    }

    fn job_dir(&self, job_id: &str) -> Result<JobDir, SlurmError> {
        if !crate::spool::is_valid_name(job_id) {
            return Err(SlurmError::JobId(job_id.to_string()));
        }
        Ok(JobDir::new(self.shared_dir.join(job_id)))
    }

    /// The Slurm job to re-attach to for `job_id`, if one was submitted by
    /// an earlier (crashed) grader and Slurm or the directory still has it.
    async fn find_previous(&self, jd: &JobDir, job_id: &str) -> Result<Attach, SlurmError> {
        if !jd.root.exists() {
            return Ok(Attach::None);
        }
        let name = format!("{JOB_NAME_PREFIX}{job_id}");
        let recorded = recorded_slurm_id(jd);
        let found = match recorded {
            Some(id) => self
                .job(id)
                .await?
                .filter(|j| j.name.as_deref() == Some(name.as_str())),
            // Crashed between submission and writing the id: look by name.
            None => self.jobs_named(job_id).await?.pop(),
        };
        // A job cancelled by us (queue timeout) or by staff is not resumed.
        if let Some(j) = found.filter(|j| j.state() != "CANCELLED") {
            let id = j.job_id.unwrap_or_default();
            return Ok(Attach::Job(id));
        }
        if jd.read_outcome().ok().flatten().is_some() {
            // Slurm forgot the job (MinJobAge) but the node finished it.
            return Ok(Attach::OutcomeOnly);
        }
        Ok(Attach::None)
    }

    fn submit_body(&self, jd: &JobDir, spec: &RunSpec) -> serde_json::Value {
        let root = jd.root.to_string_lossy().into_owned();
        let script = format!(
            "#!/bin/sh\nexec {} sandbox --job-dir {}\n",
            shell_quote(&self.bin.to_string_lossy()),
            shell_quote(&root)
        );
        let cpus = (spec.limits.cpus.ceil() as u64).max(1);
        serde_json::json!({
            "script": script,
            "job": {
                "name": format!("{JOB_NAME_PREFIX}{}", spec.job_id),
                "partition": self.partition,
                "memory_per_node": memory_per_node_mib(spec.limits.memory, self.memory_margin),
                "time_limit": time_limit_minutes(spec.limits.timeout),
                "cpus_per_task": cpus,
                "tasks": 1,
                "nodes": 1,
                "requeue": false,
                "current_working_directory": root,
                "environment": { "PATH": SAFE_PATH, "LANG": "C.UTF-8" },
                "standard_input": "/dev/null",
                "standard_output": jd.file(SLURM_OUT_FILE).to_string_lossy(),
                "standard_error": jd.file(SLURM_ERR_FILE).to_string_lossy(),
            }
        })
    }

    async fn submit(&self, jd: &JobDir, spec: &RunSpec) -> Result<u64, SlurmError> {
        let id = self.api.submit(&self.submit_body(jd, spec)).await?;
        // Recorded before waiting: a grader that crashes from here on finds it.
        record_slurm_id(jd, id)?;
        Ok(id)
    }

    /// Wait until the node's outcome shows up in the job directory (the
    /// usual end, noticed through [`OutcomeWatch`]) or, as the backstop
    /// asked of slurmrestd every `[slurm] poll_interval`, the job has ended
    /// without one (node failure, preemption, time limit); honour the queue
    /// timeout, the overdue limit and `cancel`. `Ok(None)` when the outcome
    /// decides alone (Slurm was not asked, or forgot the job).
    async fn wait(
        &self,
        jd: &JobDir,
        spec: &RunSpec,
        slurm_id: u64,
        cancel: &CancellationToken,
    ) -> Result<Option<SlurmJob>, SandboxError> {
        let watch = OutcomeWatch::new(jd, OUTCOME_POLL);
        let queued_at = Instant::now();
        let overdue =
            Duration::from_secs(time_limit_minutes(spec.limits.timeout) * 60) + OVERDUE_MARGIN;
        let mut running_since: Option<Instant> = None;
        let mut last_ok = Instant::now();
        // The first backstop look comes soon (a job that cannot start at
        // all ends at once), later ones double up to the configured interval.
        let mut delay = self.poll.min(FIRST_BACKSTOP);
        let mut next_backstop = Instant::now() + delay;
        loop {
            if watch.ready() {
                return Ok(None);
            }
            tokio::select! {
                _ = cancel.cancelled() => {
                    tracing::info!(job_id = %spec.job_id, slurm_id, "cancelling slurm job (shutdown)");
                    self.cancel_and_wait(slurm_id).await?;
                    return Err(SandboxError::Cancelled);
                }
                _ = watch.changed() => {}
            }
            if Instant::now() < next_backstop || watch.ready() {
                continue;
            }
            delay = (delay * 2).min(self.poll);
            next_backstop = Instant::now() + delay;
            let job = match self.job(slurm_id).await {
                Ok(j) => {
                    last_ok = Instant::now();
                    j
                }
                Err(e) if last_ok.elapsed() < REST_OUTAGE => {
                    tracing::warn!(job_id = %spec.job_id, slurm_id, error = %e, "cannot ask slurm about the job; still watching for its outcome");
                    continue;
                }
                Err(e) => {
                    let _ = self.cancel(slurm_id).await;
                    return Err(e.into());
                }
            };
            // A job id Slurm reused after losing its state (slurmctld
            // killed) names another job: ours is forgotten.
            let name = format!("{JOB_NAME_PREFIX}{}", spec.job_id);
            let Some(job) = job.filter(|j| j.name.as_deref().is_none_or(|n| n == name)) else {
                return Ok(None);
            };
            match phase(job.state()) {
                Phase::Ended => return Ok(Some(job)),
                Phase::Queued => {
                    if running_since.is_none() && queued_at.elapsed() > self.queue_timeout {
                        let reason = job.state_reason.clone().unwrap_or_default();
                        self.cancel_and_wait(slurm_id).await?;
                        return Err(SandboxError::Unavailable {
                            runner: "slurm".into(),
                            message: format!(
                                "slurm job {slurm_id} still pending after {:?} (reason: {reason}); \
                                 is partition `{}` up?",
                                self.queue_timeout, self.partition
                            ),
                        });
                    }
                }
                Phase::Running => {
                    let since = *running_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > overdue {
                        self.cancel_and_wait(slurm_id).await?;
                        return Err(SlurmError::Job {
                            slurm_id,
                            message: format!(
                                "ran past Slurm's own time limit by {OVERDUE_MARGIN:?}; cancelled"
                            ),
                        }
                        .into());
                    }
                }
            }
        }
    }

    /// [`verdict`], then (trusted) the harness's results files the node
    /// left in the job directory, into `spec.results`.
    async fn collect_with_results(
        &self,
        jd: &JobDir,
        spec: &RunSpec,
        slurm_id: Option<u64>,
        job: Option<SlurmJob>,
    ) -> Result<RunOutcome, SandboxError> {
        let outcome = verdict(jd, slurm_id, job).await?;
        if spec.contract == Contract::Trusted {
            collect_results(jd, spec).await?;
        }
        Ok(outcome)
    }

    async fn run_inner(
        &self,
        jd: &JobDir,
        spec: &RunSpec,
        cancel: &CancellationToken,
    ) -> Result<RunOutcome, SandboxError> {
        // Only a job submitted by this process has a queue time to report.
        let mut submitted_at = None;
        let slurm_id = match self.find_previous(jd, &spec.job_id).await? {
            Attach::Job(id) => {
                tracing::info!(job_id = %spec.job_id, slurm_id = id, "re-attaching to a slurm job submitted before a restart");
                id
            }
            Attach::OutcomeOnly => {
                tracing::info!(job_id = %spec.job_id, "collecting a slurm job finished before a restart");
                return self.collect_with_results(jd, spec, None, None).await;
            }
            Attach::None => {
                let t = Instant::now();
                prepare(jd, spec, self.chown_to).await?;
                let id = self.submit(jd, spec).await?;
                timing::observe("submit", t.elapsed());
                submitted_at = Some(chrono::Utc::now());
                tracing::info!(job_id = %spec.job_id, slurm_id = id, "submitted slurm job");
                id
            }
        };
        if let Some(hook) = &self.on_submitted {
            hook(&spec.job_id, slurm_id);
        }
        let job = self.wait(jd, spec, slurm_id, cancel).await?;
        let o = self
            .collect_with_results(jd, spec, Some(slurm_id), job)
            .await?;
        if let Some(at) = submitted_at {
            timing::observe_between("queued", at, o.started_at);
        }
        timing::observe_between("run", o.started_at, o.ended_at);
        Ok(o)
    }
}

enum Attach {
    None,
    Job(u64),
    OutcomeOnly,
}

#[async_trait::async_trait]
impl Runner for SlurmRunner {
    fn name(&self) -> &'static str {
        "slurm"
    }

    async fn run(
        &self,
        spec: &RunSpec,
        cancel: &CancellationToken,
    ) -> Result<RunOutcome, SandboxError> {
        let jd = self.job_dir(&spec.job_id)?;
        // Jobs past `[slurm] max_in_flight` wait here, unsubmitted: Slurm's
        // queue never holds more than that, even when the cluster is full or
        // slurmctld comes back from an outage to a backlog.
        let waited = Instant::now();
        let _permit = tokio::select! {
            p = self.in_flight.acquire() => p.expect("the semaphore is never closed"),
            _ = cancel.cancelled() => return Err(SandboxError::Cancelled),
        };
        timing::observe("slot", waited.elapsed());
        let r = match &self.pool {
            Some(pool) => pool.run(&jd, spec, cancel).await,
            None => self.run_inner(&jd, spec, cancel).await,
        };
        // Kept when slurmrestd could not be reached: the job may still run,
        // and the retry re-attaches to it. A dropped future (a crashed
        // grader) keeps it too, and so does a shutdown while a pilot runs
        // the job (collected after the restart).
        if matches!(r, Err(SandboxError::Unavailable { .. }))
            || (self.pool.is_some() && matches!(r, Err(SandboxError::Cancelled)))
        {
            return r;
        }
        let root = jd.root.clone();
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&root)).await;
        if let Ok(Err(e)) = removed {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(job_id = %spec.job_id, dir = %jd.root.display(), error = %e, "cannot remove slurm job directory");
            }
        }
        if let Ok(o) = &r {
            timing::observe_between("collect", o.ended_at, chrono::Utc::now());
        }
        r
    }
}

/// Can the slurm runner be used with this config right now?
pub async fn available(cfg: &Config) -> bool {
    match SlurmRunner::new(cfg) {
        Ok(r) => r.ping().await.is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_survives_quotes() {
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn the_guides_slurm_section_parses() {
        let readme = include_str!("../../../docs/runners.md");
        let start = readme
            .find("```toml\n[slurm]")
            .expect("[slurm] block in docs/runners.md")
            + 8;
        let end = start + readme[start..].find("```").unwrap();
        let cfg = Config::from_toml(&readme[start..end], None).unwrap();
        assert_eq!(cfg.slurm.queue_timeout.get(), Duration::from_secs(600));
        assert_eq!(cfg.slurm.memory_margin.bytes(), 64 << 20);
        assert!(Config::from_toml("[slurm]\nshared_dir = \"rel/dir\"\n", None).is_err());
    }

    #[test]
    fn scale_keys_are_validated_with_what_to_do() {
        let cfg = Config::from_toml("[slurm]\n", None).unwrap();
        assert_eq!((cfg.slurm.max_in_flight, cfg.slurm.pilots), (32, 0));
        for (toml, want) in [
            ("max_in_flight = 0", "slurm.max_in_flight"),
            ("max_in_flight = 20000", "between 1 and 10000"),
            ("pilots = 2\npilot_memory = \"1MiB\"", "slurm.pilot_memory"),
            ("pilots = 2\npilot_slots = 0", "slurm.pilot_slots"),
            ("pilots = 2\npilot_lifetime = \"1m\"", "at least 5m"),
        ] {
            let e = Config::from_toml(&format!("[slurm]\n{toml}\n"), None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{toml}: {e}");
        }
        // Without pilots their keys are not judged.
        assert!(Config::from_toml("[slurm]\npilot_slots = 0\n", None).is_ok());
    }

    #[test]
    fn a_job_id_with_a_slash_is_refused() {
        let mut cfg = Config::default();
        cfg.secrets.slurm_token = Some(crate::config::Secret::new("t"));
        let r = SlurmRunner::new(&cfg).unwrap();
        assert!(matches!(r.job_dir("../etc"), Err(SlurmError::JobId(_))));
        assert!(r.job_dir("01J0ABC").is_ok());
    }
}
