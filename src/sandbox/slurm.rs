//! The `slurm` runner: each job runs as `labgrader sandbox --job-dir DIR`
//! on a compute node of a Slurm cluster, submitted through slurmrestd's
//! REST API (OpenAPI plugin `[slurm] api_version`, JWT auth).
//!
//! It owns the job directory under `[slurm] shared_dir` (a filesystem
//! mounted at the same path on every node): it copies the workspace there,
//! writes `job.json`, submits, records the Slurm job id in the directory
//! (`slurm_job_id`) before waiting, polls the job state, reads the outcome
//! the node wrote, and removes the directory. A grader that crashed while a
//! job ran finds the job again through that file (or by the job's name,
//! `labgrader-<job>`) and collects its result instead of submitting twice.
//!
//! Slurm's answers are untrusted input parsed into small typed structs;
//! unknown fields are ignored, missing ones are faults of the cluster, never
//! of the student. It never shells out to `sbatch`/`scancel`, never reads
//! the summary, never touches the spool or the gradebook.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hyper::Method;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::jobdir::{JobDir, OutcomeFile, write_atomic};
use super::spec::SAFE_PATH;
use super::{RunOutcome, RunSpec, Runner, SandboxError};
use crate::config::Config;
use crate::httpc::{HttpClient, HttpError};
use crate::result::{Captured, Termination};

/// File in the job directory holding the Slurm job id (written atomically
/// right after submission).
pub const SLURM_ID_FILE: &str = "slurm_job_id";
/// Slurm's own stdout/stderr of the batch script (the sandbox's logs).
pub const SLURM_OUT_FILE: &str = "slurm.out";
pub const SLURM_ERR_FILE: &str = "slurm.err";
/// Prefix of every job name labgrader submits.
pub const JOB_NAME_PREFIX: &str = "labgrader-";

/// Added to the job's timeout for Slurm's time limit (start-up of the
/// sandbox, copying output back) before rounding up to whole minutes.
const TIME_LIMIT_MARGIN: Duration = Duration::from_secs(30);
/// How long past Slurm's time limit the runner waits before it gives up on
/// the cluster (Slurm's KillWait and the node's report).
const OVERDUE_MARGIN: Duration = Duration::from_secs(90);
/// How long a cancelled job may take to disappear.
const CANCEL_WAIT: Duration = Duration::from_secs(60);
/// How long slurmrestd may stay unreachable while a job runs.
const REST_OUTAGE: Duration = Duration::from_secs(120);
/// A new job is looked at this often for its first [`FAST_POLL_FOR`];
/// later looks double up to `[slurm] poll_interval`.
const FAST_POLL: Duration = Duration::from_millis(100);
const FAST_POLL_FOR: Duration = Duration::from_secs(3);
/// Per-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Slurm's "Invalid job id specified" (ESLURM_INVALID_JOB_ID).
const ESLURM_INVALID_JOB_ID: i64 = 2017;
/// Slurm's "Job/step already completing or completed".
const ESLURM_ALREADY_DONE: i64 = 2021;

#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error(
        "no slurm token: set [slurm] token_file or ${}",
        crate::config::SLURM_TOKEN_ENV
    )]
    NoToken,
    #[error("cannot read the slurm token file {path}: {source}")]
    TokenFile { path: PathBuf, source: io::Error },
    #[error("slurmrestd: {0}")]
    Http(#[from] HttpError),
    #[error("slurmrestd answered {status} to {what}: {message}")]
    Api {
        what: String,
        status: u16,
        message: String,
    },
    #[error("unreadable answer from slurmrestd to {what}: {message}")]
    Decode { what: String, message: String },
    #[error("job id `{0}` cannot name a job directory")]
    JobId(String),
    #[error("cannot find the labgrader binary for the nodes (set [slurm] labgrader_bin): {0}")]
    Binary(io::Error),
    #[error("cannot prepare the job directory {path}: {source}")]
    Prepare { path: PathBuf, source: io::Error },
    #[error("slurm job {slurm_id} {message}")]
    Job { slurm_id: u64, message: String },
}

impl From<SlurmError> for SandboxError {
    fn from(e: SlurmError) -> SandboxError {
        match e {
            SlurmError::Prepare { .. } | SlurmError::JobId(_) | SlurmError::Binary(_) => {
                SandboxError::Setup {
                    step: "prepare the slurm job directory",
                    message: e.to_string(),
                }
            }
            SlurmError::Job { .. } => SandboxError::Setup {
                step: "slurm job",
                message: e.to_string(),
            },
            other => SandboxError::Unavailable {
                runner: "slurm".into(),
                message: other.to_string(),
            },
        }
    }
}

/// Called with (labgrader job id, Slurm job id) right after submission, so
/// the grader can store the Slurm id in its spool record.
pub type SubmitHook = Arc<dyn Fn(&str, u64) + Send + Sync>;

/// One job as slurmrestd reports it (the fields labgrader reads).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SlurmJob {
    #[serde(default)]
    pub job_id: Option<u64>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub user_name: Option<String>,
    /// `PENDING`, `RUNNING`, `COMPLETING`, `COMPLETED`, `FAILED`, …
    #[serde(default)]
    pub job_state: Option<String>,
    #[serde(default)]
    pub state_reason: Option<String>,
    /// The batch script's raw wait status (v0.0.38).
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub start_time: Option<i64>,
    #[serde(default)]
    pub end_time: Option<i64>,
    #[serde(default)]
    pub batch_host: Option<String>,
}

impl SlurmJob {
    fn state(&self) -> &str {
        self.job_state.as_deref().unwrap_or("UNKNOWN")
    }
}

#[derive(Debug, Default, Deserialize)]
struct ApiError {
    #[serde(default)]
    error_number: Option<i64>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct JobsAnswer {
    #[serde(default)]
    errors: Vec<ApiError>,
    #[serde(default)]
    jobs: Vec<SlurmJob>,
}

#[derive(Debug, Default, Deserialize)]
struct SubmitAnswer {
    #[serde(default)]
    errors: Vec<ApiError>,
    #[serde(default)]
    job_id: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct PingAnswer {
    #[serde(default)]
    errors: Vec<ApiError>,
    #[serde(default)]
    pings: Vec<Ping>,
}

#[derive(Debug, Default, Deserialize)]
struct Ping {
    #[serde(default)]
    ping: Option<String>,
}

/// Where a job stands, from labgrader's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a node (or being requeued).
    Queued,
    /// On a node (or its processes being cleaned up).
    Running,
    /// Ended; its processes are gone.
    Ended,
}

/// Classify a `job_state` string. `COMPLETING` is still running: the
/// node is killing what is left, and only then is the job truly over.
pub fn phase(state: &str) -> Phase {
    match state {
        "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED"
        | "RESV_DEL_HOLD" | "SUSPENDED" | "RESIZING" => Phase::Queued,
        "RUNNING" | "COMPLETING" | "STAGE_OUT" | "SIGNALING" | "STOPPED" => Phase::Running,
        _ => Phase::Ended,
    }
}

/// Decode a raw wait status as Slurm reports it in `exit_code`
/// (`WIFSIGNALED` → the signal, else `WEXITSTATUS`).
pub fn decode_wait_status(raw: i64) -> Termination {
    let signal = (raw & 0x7f) as i32;
    if signal != 0 {
        Termination::Signaled { signal }
    } else {
        Termination::Exited {
            code: ((raw >> 8) & 0xff) as i32,
        }
    }
}

/// Slurm's time limit for a job: the sandbox's timeout plus a margin, in
/// whole minutes rounded up (a backstop; the sandbox's own second-level
/// timeout fires first).
pub fn time_limit_minutes(timeout: Duration) -> u64 {
    let secs = (timeout + TIME_LIMIT_MARGIN).as_secs_f64();
    ((secs / 60.0).ceil() as u64).max(1)
}

/// Slurm's memory limit in MiB: the job's limit plus `margin`, rounded up.
pub fn memory_per_node_mib(memory: u64, margin: u64) -> u64 {
    (memory.saturating_add(margin)).div_ceil(1 << 20).max(1)
}

/// Quote `s` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub struct SlurmRunner {
    http: HttpClient,
    /// `<url>/slurm/<api_version>`.
    base: String,
    user: String,
    token_file: PathBuf,
    token: Option<String>,
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
}

impl std::fmt::Debug for SlurmRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlurmRunner")
            .field("base", &self.base)
            .field("user", &self.user)
            .field("partition", &self.partition)
            .field("shared_dir", &self.shared_dir)
            .finish_non_exhaustive()
    }
}

impl SlurmRunner {
    pub fn new(cfg: &Config) -> Result<SlurmRunner, SandboxError> {
        let s = &cfg.slurm;
        let token = cfg
            .secrets
            .slurm_token
            .as_ref()
            .map(|t| t.expose().to_string());
        if token.is_none() && s.token_file.as_os_str().is_empty() {
            return Err(SlurmError::NoToken.into());
        }
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
        Ok(SlurmRunner {
            http: HttpClient::new(),
            base: format!(
                "{}/slurm/{}",
                s.url.trim_end_matches('/'),
                s.api_version.trim_matches('/')
            ),
            user: s.user.clone(),
            token_file: s.token_file.clone(),
            token,
            partition: s.partition.clone(),
            shared_dir: s.shared_dir.clone(),
            poll: s.poll_interval.get(),
            queue_timeout: s.queue_timeout.get(),
            memory_margin: s.memory_margin.bytes(),
            bin,
            chown_to,
            on_submitted: None,
        })
    }

    /// Call `hook(job_id, slurm_id)` after each submission (before waiting).
    pub fn on_submitted(mut self, hook: SubmitHook) -> SlurmRunner {
        self.on_submitted = Some(hook);
        self
    }

    /// The token, re-read from the file each time (tokens expire and are
    /// replaced in place), else the one resolved at config load.
    fn token(&self) -> Result<String, SlurmError> {
        if !self.token_file.as_os_str().is_empty() {
            let t = std::fs::read_to_string(&self.token_file).map_err(|source| {
                SlurmError::TokenFile {
                    path: self.token_file.clone(),
                    source,
                }
            })?;
            let t = t.trim();
            if !t.is_empty() {
                return Ok(t.to_string());
            }
        }
        self.token.clone().ok_or(SlurmError::NoToken)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<crate::httpc::Response, SlurmError> {
        let token = self.token()?;
        let url = format!("{}{}", self.base, path);
        let headers = [
            ("X-SLURM-USER-NAME", self.user.as_str()),
            ("X-SLURM-USER-TOKEN", token.as_str()),
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
        ];
        Ok(self
            .http
            .request(method, &url, &headers, body, REQUEST_TIMEOUT)
            .await?)
    }

    /// Is slurmrestd reachable, the token accepted and slurmctld up?
    pub async fn ping(&self) -> Result<(), SlurmError> {
        let what = "ping";
        let r = self.call(Method::GET, "/ping", None).await?;
        let a: PingAnswer = decode(what, &r)?;
        api_ok(what, &r, &a.errors)?;
        if a.pings.iter().any(|p| p.ping.as_deref() == Some("UP")) {
            Ok(())
        } else {
            Err(SlurmError::Api {
                what: what.into(),
                status: r.status.as_u16(),
                message: "slurmctld is not UP".into(),
            })
        }
    }

    /// One job by id; `None` when Slurm no longer knows it.
    pub async fn job(&self, slurm_id: u64) -> Result<Option<SlurmJob>, SlurmError> {
        let what = format!("GET job/{slurm_id}");
        let r = self
            .call(Method::GET, &format!("/job/{slurm_id}"), None)
            .await?;
        let a: JobsAnswer = decode(&what, &r)?;
        if a.errors
            .iter()
            .any(|e| e.error_number == Some(ESLURM_INVALID_JOB_ID))
        {
            return Ok(None);
        }
        api_ok(&what, &r, &a.errors)?;
        Ok(a.jobs.into_iter().find(|j| j.job_id == Some(slurm_id)))
    }

    /// Every job Slurm knows under labgrader's name for `job_id`, in
    /// submission order.
    pub async fn jobs_named(&self, job_id: &str) -> Result<Vec<SlurmJob>, SlurmError> {
        let what = "GET jobs";
        let r = self.call(Method::GET, "/jobs", None).await?;
        let a: JobsAnswer = decode(what, &r)?;
        api_ok(what, &r, &a.errors)?;
        let name = format!("{JOB_NAME_PREFIX}{job_id}");
        let mut v: Vec<SlurmJob> = a
            .jobs
            .into_iter()
            .filter(|j| j.name.as_deref() == Some(name.as_str()))
            .filter(|j| j.user_name.as_deref().is_none_or(|u| u == self.user))
            .collect();
        v.sort_by_key(|j| j.job_id);
        Ok(v)
    }

    /// `DELETE job/{id}` (SIGKILL to every process of the job).
    pub async fn cancel(&self, slurm_id: u64) -> Result<(), SlurmError> {
        let what = format!("DELETE job/{slurm_id}");
        let r = self
            .call(
                Method::DELETE,
                &format!("/job/{slurm_id}?signal=KILL"),
                None,
            )
            .await?;
        let a: JobsAnswer = decode(&what, &r).unwrap_or_default();
        // Already finished or gone: nothing to cancel.
        if a.errors.iter().any(|e| {
            e.error_number == Some(ESLURM_INVALID_JOB_ID)
                || e.error_number == Some(ESLURM_ALREADY_DONE)
        }) {
            return Ok(());
        }
        api_ok(&what, &r, &a.errors)
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
        let recorded = std::fs::read_to_string(jd.file(SLURM_ID_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
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

    /// Copy the workspace (and, trusted, the tests) into a fresh job
    /// directory and write `job.json`.
    async fn prepare(&self, jd: &JobDir, spec: &RunSpec) -> Result<(), SlurmError> {
        let jd = jd.clone();
        let src = spec.workspace.clone();
        let tests = match spec.contract {
            super::Contract::Trusted => spec.tests.clone(),
            super::Contract::Stdout => None,
        };
        let mut spec = spec.clone();
        let chown_to = self.chown_to;
        tokio::task::spawn_blocking(move || {
            let root = jd.root.clone();
            let r = (|| -> io::Result<()> {
                if root.exists() {
                    std::fs::remove_dir_all(&root)?;
                }
                std::fs::create_dir_all(&root)?;
                copy_tree(&src, &jd.workspace())?;
                spec.workspace = jd.workspace();
                if let Some(t) = &tests {
                    copy_tree(t, &jd.tests())?;
                    spec.tests = Some(jd.tests());
                }
                jd.write_job(&spec)?;
                if let Some((uid, gid)) = chown_to {
                    chown_tree(&root, uid, gid)?;
                }
                Ok(())
            })();
            r.map_err(|source| SlurmError::Prepare { path: root, source })
        })
        .await
        .map_err(|e| SlurmError::Prepare {
            path: PathBuf::new(),
            source: io::Error::other(e.to_string()),
        })?
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
        let what = "POST job/submit";
        let body = serde_json::to_vec(&self.submit_body(jd, spec)).expect("json value");
        let r = self.call(Method::POST, "/job/submit", Some(body)).await?;
        let a: SubmitAnswer = decode(what, &r)?;
        api_ok(what, &r, &a.errors)?;
        let id = a.job_id.ok_or_else(|| SlurmError::Decode {
            what: what.into(),
            message: "no job_id in the answer".into(),
        })?;
        // Recorded before waiting: a grader that crashes from here on finds it.
        write_atomic(&jd.file(SLURM_ID_FILE), format!("{id}\n").as_bytes()).map_err(|source| {
            SlurmError::Prepare {
                path: jd.root.clone(),
                source,
            }
        })?;
        Ok(id)
    }

    /// Poll until the job has ended (its processes gone), honouring the
    /// queue timeout, the overdue limit and `cancel`.
    async fn wait(
        &self,
        spec: &RunSpec,
        slurm_id: u64,
        cancel: &CancellationToken,
    ) -> Result<Option<SlurmJob>, SandboxError> {
        let queued_at = Instant::now();
        let overdue =
            Duration::from_secs(time_limit_minutes(spec.limits.timeout) * 60) + OVERDUE_MARGIN;
        let mut running_since: Option<Instant> = None;
        let mut last_ok = Instant::now();
        // Short jobs end within a second or two: look every 100 ms for the
        // first seconds, then back off (doubling) to the configured interval.
        let mut delay = self.poll.min(FAST_POLL);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    tracing::info!(job_id = %spec.job_id, slurm_id, "cancelling slurm job (shutdown)");
                    self.cancel_and_wait(slurm_id).await?;
                    return Err(SandboxError::Cancelled);
                }
                _ = tokio::time::sleep(delay) => {}
            }
            if queued_at.elapsed() > FAST_POLL_FOR {
                delay = (delay * 2).min(self.poll);
            }
            let job = match self.job(slurm_id).await {
                Ok(j) => {
                    last_ok = Instant::now();
                    j
                }
                Err(e) if last_ok.elapsed() < REST_OUTAGE => {
                    tracing::warn!(job_id = %spec.job_id, slurm_id, error = %e, "cannot poll slurm job; retrying");
                    continue;
                }
                Err(e) => {
                    let _ = self.cancel(slurm_id).await;
                    return Err(e.into());
                }
            };
            let Some(job) = job else { return Ok(None) };
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

    /// Turn the ended job and what the node wrote into a verdict.
    async fn collect(
        &self,
        jd: &JobDir,
        slurm_id: Option<u64>,
        job: Option<SlurmJob>,
    ) -> Result<RunOutcome, SandboxError> {
        let outcome = read_outcome_patiently(jd).await;
        let id = slurm_id.unwrap_or_default();
        let state = job.as_ref().map(|j| j.state().to_string());
        let slurm_err = || tail_of(&jd.file(SLURM_ERR_FILE));
        let limit_hit = match state.as_deref() {
            Some("OUT_OF_MEMORY") => Some(Termination::MemoryLimit),
            Some("TIMEOUT") => Some(Termination::Timeout),
            // Ended normally (or Slurm forgot it): the node's outcome decides.
            Some("COMPLETED") | Some("FAILED") | None => None,
            Some("CANCELLED") => {
                return Err(SlurmError::Job {
                    slurm_id: id,
                    message: "was cancelled outside labgrader".into(),
                }
                .into());
            }
            Some(other) => {
                let reason = job
                    .as_ref()
                    .and_then(|j| j.state_reason.clone())
                    .unwrap_or_default();
                return Err(SlurmError::Job {
                    slurm_id: id,
                    message: format!("ended {other} (reason: {reason}){}", slurm_err()),
                }
                .into());
            }
        };
        match (outcome, limit_hit) {
            // Slurm's verdict wins: the sandbox may have been killed
            // mid-write (its SIGTERM shows as a setup error).
            (Some(mut o), Some(t)) if o.setup_error.is_none() => {
                o.termination = t;
                Ok(from_node(o))
            }
            (_, Some(t)) => {
                let (started_at, ended_at) = job_times(job.as_ref());
                Ok(RunOutcome {
                    termination: t,
                    stdout: Captured::default(),
                    stderr: Captured::default(),
                    started_at,
                    ended_at,
                    runner: "slurm".into(),
                    image: None,
                    image_id: None,
                    disk_full: false,
                })
            }
            (Some(o), None) if o.setup_error.is_some() => Err(SandboxError::Setup {
                step: "sandbox on the node",
                message: format!(
                    "{} (host {})",
                    o.setup_error.unwrap_or_default(),
                    o.host.unwrap_or_default()
                ),
            }),
            (Some(o), None) => Ok(from_node(o)),
            (None, None) => {
                let status = match job.as_ref().and_then(|j| j.exit_code) {
                    Some(raw) => format!(" ({:?})", decode_wait_status(raw)),
                    None => String::new(),
                };
                Err(SlurmError::Job {
                    slurm_id: id,
                    message: format!(
                        "ended {} without an outcome from the sandbox{status}{}",
                        state.as_deref().unwrap_or("and was forgotten by Slurm"),
                        slurm_err()
                    ),
                }
                .into())
            }
        }
    }

    /// [`Self::collect`], then (trusted) the harness's results files the
    /// node left in the job directory, into `spec.results`.
    async fn collect_with_results(
        &self,
        jd: &JobDir,
        spec: &RunSpec,
        slurm_id: Option<u64>,
        job: Option<SlurmJob>,
    ) -> Result<RunOutcome, SandboxError> {
        let outcome = self.collect(jd, slurm_id, job).await?;
        if spec.contract == super::Contract::Trusted {
            let (from, into) = (jd.results(), spec.results.clone());
            tokio::task::spawn_blocking(move || super::jobdir::take_results(&from, &into))
                .await
                .map_err(|e| SandboxError::Io(io::Error::other(e.to_string())))?
                .map_err(|e| SandboxError::Setup {
                    step: "collect the results",
                    message: format!("{}: {e}", jd.results().display()),
                })?;
        }
        Ok(outcome)
    }

    async fn run_inner(
        &self,
        jd: &JobDir,
        spec: &RunSpec,
        cancel: &CancellationToken,
    ) -> Result<RunOutcome, SandboxError> {
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
                self.prepare(jd, spec).await?;
                let id = self.submit(jd, spec).await?;
                tracing::info!(job_id = %spec.job_id, slurm_id = id, "submitted slurm job");
                id
            }
        };
        if let Some(hook) = &self.on_submitted {
            hook(&spec.job_id, slurm_id);
        }
        let job = self.wait(spec, slurm_id, cancel).await?;
        self.collect_with_results(jd, spec, Some(slurm_id), job)
            .await
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
        let r = self.run_inner(&jd, spec, cancel).await;
        // Kept when slurmrestd could not be reached: the job may still run,
        // and the retry re-attaches to it. A dropped future (a crashed
        // grader) keeps it too.
        if matches!(r, Err(SandboxError::Unavailable { .. })) {
            return r;
        }
        let root = jd.root.clone();
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&root)).await;
        if let Ok(Err(e)) = removed {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(job_id = %spec.job_id, dir = %jd.root.display(), error = %e, "cannot remove slurm job directory");
            }
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

fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    r: &crate::httpc::Response,
) -> Result<T, SlurmError> {
    r.json().map_err(|e| {
        if r.status.is_success() {
            SlurmError::Decode {
                what: what.into(),
                message: e.to_string(),
            }
        } else {
            SlurmError::Api {
                what: what.into(),
                status: r.status.as_u16(),
                message: r.body_snippet(),
            }
        }
    })
}

fn api_ok(what: &str, r: &crate::httpc::Response, errors: &[ApiError]) -> Result<(), SlurmError> {
    if errors.is_empty() && r.status.is_success() {
        return Ok(());
    }
    let message = if errors.is_empty() {
        r.body_snippet()
    } else {
        errors
            .iter()
            .map(|e| {
                format!(
                    "{} ({}; error {})",
                    e.description.as_deref().unwrap_or(""),
                    e.error.as_deref().unwrap_or(""),
                    e.error_number.unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    Err(SlurmError::Api {
        what: what.into(),
        status: r.status.as_u16(),
        message,
    })
}

/// The node writes `outcome.json` just before the job ends; on a shared
/// filesystem it may show up here a moment later.
async fn read_outcome_patiently(jd: &JobDir) -> Option<OutcomeFile> {
    for _ in 0..20 {
        if let Ok(Some(o)) = jd.read_outcome() {
            return Some(o);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The node's outcome as the slurm runner's.
fn from_node(o: OutcomeFile) -> RunOutcome {
    RunOutcome {
        termination: o.termination,
        stdout: o.stdout,
        stderr: o.stderr,
        started_at: o.started_at,
        ended_at: o.ended_at,
        runner: "slurm".into(),
        image: None,
        image_id: None,
        disk_full: o.disk_full,
    }
}

fn job_times(job: Option<&SlurmJob>) -> (DateTime<Utc>, DateTime<Utc>) {
    let now = Utc::now();
    let t = |s: Option<i64>| {
        s.filter(|s| *s > 0)
            .and_then(|s| DateTime::from_timestamp(s, 0))
            .unwrap_or(now)
    };
    (
        t(job.and_then(|j| j.start_time)),
        t(job.and_then(|j| j.end_time)),
    )
}

/// The last lines of a Slurm log file, for error messages.
fn tail_of(path: &Path) -> String {
    let Ok(b) = std::fs::read(path) else {
        return String::new();
    };
    let s = String::from_utf8_lossy(&b);
    let t = s.trim();
    if t.is_empty() {
        return String::new();
    }
    let start = t.len().saturating_sub(500);
    let start = (start..t.len())
        .find(|i| t.is_char_boundary(*i))
        .unwrap_or(t.len());
    format!("; {}: {}", path.display(), &t[start..])
}

/// Copy a workspace without following symlinks (a planted link stays a
/// link; its target is never read). Modes are kept; sockets, fifos and
/// devices are skipped.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in walkdir::WalkDir::new(src).follow_links(false) {
        let entry = entry.map_err(io::Error::other)?;
        let rel = entry.path().strip_prefix(src).map_err(io::Error::other)?;
        let to = dst.join(rel);
        let ft = entry.file_type();
        if ft.is_dir() {
            std::fs::create_dir_all(&to)?;
            let mode = entry
                .metadata()
                .map_err(io::Error::other)?
                .permissions()
                .mode();
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode | 0o700))?;
        } else if ft.is_file() {
            std::fs::copy(entry.path(), &to)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &to)?;
        }
    }
    Ok(())
}

fn chown_tree(root: &Path, uid: u32, gid: u32) -> io::Result<()> {
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry = entry.map_err(io::Error::other)?;
        std::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_status_is_decoded_like_waitpid() {
        assert_eq!(decode_wait_status(0), Termination::Exited { code: 0 });
        // What 22.05 reported for `exit 3`, `kill -SEGV $$` (core) and scancel.
        assert_eq!(decode_wait_status(768), Termination::Exited { code: 3 });
        assert_eq!(
            decode_wait_status(139),
            Termination::Signaled { signal: 11 }
        );
        assert_eq!(decode_wait_status(15), Termination::Signaled { signal: 15 });
        assert_eq!(decode_wait_status(9), Termination::Signaled { signal: 9 });
    }

    #[test]
    fn time_limit_is_whole_minutes_rounded_up_over_the_timeout() {
        assert_eq!(time_limit_minutes(Duration::from_secs(8)), 1);
        assert_eq!(time_limit_minutes(Duration::from_secs(30)), 1);
        assert_eq!(time_limit_minutes(Duration::from_secs(31)), 2);
        assert_eq!(time_limit_minutes(Duration::from_secs(120)), 3);
    }

    #[test]
    fn memory_limit_is_mib_with_margin_rounded_up() {
        assert_eq!(memory_per_node_mib(128 << 20, 64 << 20), 192);
        assert_eq!(memory_per_node_mib((128 << 20) + 1, 0), 129);
        assert_eq!(memory_per_node_mib(0, 0), 1);
    }

    #[test]
    fn completing_is_not_ended() {
        assert_eq!(phase("PENDING"), Phase::Queued);
        assert_eq!(phase("RUNNING"), Phase::Running);
        assert_eq!(phase("COMPLETING"), Phase::Running);
        for s in [
            "COMPLETED",
            "FAILED",
            "TIMEOUT",
            "OUT_OF_MEMORY",
            "CANCELLED",
            "NODE_FAIL",
            "BOOT_FAIL",
        ] {
            assert_eq!(phase(s), Phase::Ended, "{s}");
        }
    }

    #[test]
    fn shell_quote_survives_quotes() {
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn copy_tree_keeps_symlinks_as_links() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("d/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", src.join("evil")).unwrap();
        let dst = t.path().join("dst");
        copy_tree(&src, &dst).unwrap();
        assert_eq!(std::fs::read(dst.join("d/f")).unwrap(), b"x");
        let meta = std::fs::symlink_metadata(dst.join("evil")).unwrap();
        assert!(meta.file_type().is_symlink());
        assert_eq!(
            std::fs::read_link(dst.join("evil")).unwrap(),
            Path::new("/etc/shadow")
        );
    }

    fn runner_for(dir: &Path) -> SlurmRunner {
        let mut cfg = Config::default();
        cfg.secrets.slurm_token = Some(crate::config::Secret::new("t"));
        cfg.slurm.shared_dir = dir.to_path_buf();
        SlurmRunner::new(&cfg).unwrap()
    }

    fn ended(state: &str, exit_code: i64) -> Option<SlurmJob> {
        Some(SlurmJob {
            job_id: Some(7),
            job_state: Some(state.into()),
            exit_code: Some(exit_code),
            ..SlurmJob::default()
        })
    }

    fn node_wrote(jd: &JobDir, t: Termination, setup_error: Option<&str>) {
        std::fs::create_dir_all(&jd.root).unwrap();
        let now = Utc::now();
        let o = OutcomeFile {
            version: super::super::jobdir::VERSION,
            job_id: "j".into(),
            termination: t,
            stdout: Captured::from_bytes(b"partial".to_vec(), 1024),
            stderr: Captured::default(),
            started_at: now,
            ended_at: now,
            runner: "native".into(),
            host: Some("n1".into()),
            setup_error: setup_error.map(str::to_string),
            disk_full: false,
        };
        std::fs::write(jd.file(super::super::jobdir::STDOUT_FILE), &o.stdout.bytes).unwrap();
        std::fs::write(
            jd.file(super::super::jobdir::OUTCOME_FILE),
            serde_json::to_vec(&o).unwrap(),
        )
        .unwrap();
    }

    #[tokio::test]
    async fn slurm_states_map_to_verdicts_or_grader_faults() {
        let t = tempfile::tempdir().unwrap();
        let r = runner_for(t.path());
        let jd = JobDir::new(t.path().join("j"));

        // The node's own verdict when the job completed.
        node_wrote(&jd, Termination::Exited { code: 2 }, None);
        let o = r
            .collect(&jd, Some(7), ended("COMPLETED", 0))
            .await
            .unwrap();
        assert_eq!(o.termination, Termination::Exited { code: 2 });
        assert_eq!(o.runner, "slurm");

        // Slurm's OOM kill overrides the SIGKILL the sandbox saw; output kept.
        node_wrote(&jd, Termination::Signaled { signal: 9 }, None);
        let o = r
            .collect(&jd, Some(7), ended("OUT_OF_MEMORY", 0))
            .await
            .unwrap();
        assert_eq!(o.termination, Termination::MemoryLimit);
        assert_eq!(o.stdout.bytes, b"partial");

        // Slurm's time limit: the sandbox was killed mid-run (SIGTERM shows
        // as its setup error) — still the student's timeout.
        node_wrote(
            &jd,
            Termination::Exited { code: -1 },
            Some("cancelled by shutdown"),
        );
        let o = r.collect(&jd, Some(7), ended("TIMEOUT", 15)).await.unwrap();
        assert_eq!(o.termination, Termination::Timeout);

        // A sandbox that could not set up is the grader's fault.
        let e = r
            .collect(&jd, Some(7), ended("COMPLETED", 0))
            .await
            .unwrap_err();
        assert!(matches!(e, SandboxError::Setup { .. }), "{e}");

        for state in ["NODE_FAIL", "BOOT_FAIL", "CANCELLED", "PREEMPTED"] {
            node_wrote(&jd, Termination::Exited { code: 0 }, None);
            let e = r.collect(&jd, Some(7), ended(state, 0)).await.unwrap_err();
            assert!(matches!(e, SandboxError::Setup { .. }), "{state}: {e}");
            assert!(e.to_string().contains("slurm job 7"), "{e}");
        }
    }

    #[tokio::test]
    async fn a_job_that_ended_without_an_outcome_is_a_grader_fault_with_its_status() {
        let t = tempfile::tempdir().unwrap();
        let r = runner_for(t.path());
        let jd = JobDir::new(t.path().join("j"));
        std::fs::create_dir_all(&jd.root).unwrap();
        std::fs::write(jd.file(SLURM_ERR_FILE), "exec: labgrader: not found\n").unwrap();
        let e = r
            .collect(&jd, Some(7), ended("FAILED", 127 << 8))
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, SandboxError::Setup { .. }), "{msg}");
        assert!(msg.contains("code: 127"), "{msg}");
        assert!(msg.contains("not found"), "{msg}");
    }

    #[test]
    fn the_readme_slurm_section_parses() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("```toml\n[slurm]")
            .expect("[slurm] block in README")
            + 8;
        let end = start + readme[start..].find("```").unwrap();
        let cfg = Config::from_toml(&readme[start..end], None).unwrap();
        assert_eq!(cfg.slurm.queue_timeout.get(), Duration::from_secs(600));
        assert_eq!(cfg.slurm.memory_margin.bytes(), 64 << 20);
        assert!(Config::from_toml("[slurm]\nshared_dir = \"rel/dir\"\n", None).is_err());
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
