//! The grader daemon: from an event in `spool/incoming/` to a recorded result.
//!
//! Owns the job life cycle: watch `incoming/` (inotify through `notify`,
//! plus a periodic rescan), claim a job by renaming it into `active/`, run
//! at most `[grader] workers` jobs at once (a semaphore; the backlog stays
//! on disk), oldest first but never two jobs of the same student project at
//! once, then fetch → workspace → run → summary → record (`done/<job>/`,
//! the gradebook) and remove the workspace. Grader faults (git unreachable,
//! sandbox down, disk full) are retried with backoff through the event's
//! `infra_attempts`/`not_before` fields and end as `infra_error` only when
//! the retries are spent; student outcomes are final. At start, jobs left
//! in `active/` go back to `incoming/` with their crash count raised, and a
//! job that was active during `max_crashes` crashes goes to `failed/`; one
//! whose result was recorded and queued for delivery before the crash is
//! completed from the gradebook, never graded a second time. On
//! shutdown it stops claiming, lets running jobs finish within the grace
//! period, then cancels them and puts them back.
//!
//! It never delivers results itself: it queues them in the outbox
//! ([`crate::deliver`]) before a job counts as done, and the delivery
//! worker sends them. It never reads
//! the summary itself ([`crate::summary`]) and never builds a sandbox
//! ([`crate::sandbox::build_runner`]). Event files are untrusted input: an
//! unparseable one goes to `corrupt/`; its SHA and project path are checked
//! before they reach git or a path.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, warn};

use crate::config::{Config, Contract, RunnerKind};
use crate::event::{EVENT_SCHEMA, Event, EventKind, HookSource};
use crate::gitlab::GitlabApi;
use crate::gradebook::{self, Gradebook, GradebookError};
use crate::metrics;
use crate::mirror::{MirrorError, Mirrors};
use crate::policy::{Admitted, QuotaLedger, Refusal};
use crate::result::{Captured, JobResult, Limits, RESULT_SCHEMA, Status, Termination};
use crate::results::{self, RESULTS_FILE, ResultsError, TestResults};
use crate::sandbox::{self, RunOutcome, RunSpec, Runner, SandboxError};
use crate::spool::{Spool, SpoolError, State};
use crate::summary::{self, SummaryError};
use crate::workspace::{self, WorkspaceError, WorkspaceLimits};

const PHASE_METRIC: &str = "labgrader_grader_phase_seconds";
const PHASE_HELP: &str = "Time spent per job phase (queued, fetch, workspace, run, record).";
const STATUS_METRIC: &str = "labgrader_grader_jobs_total";
const STATUS_HELP: &str = "Finished jobs by status.";
const RETRY_METRIC: &str = "labgrader_grader_infra_retries_total";
const RETRY_HELP: &str = "Jobs put back for a retry after an infrastructure failure.";
/// Longest wait between infrastructure retries.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// `RLIMIT_NOFILE` given to test runs.
const OPEN_FILES: u64 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum GraderError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Gradebook(#[from] GradebookError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error("cannot queue the deliveries: {0}")]
    Deliver(#[from] crate::deliver::DeliverError),
    #[error("{0:?} is not a job id")]
    BadJobId(String),
    #[error("job {0} has no finished record in done/ (or failed/)")]
    NoRecord(String),
    #[error("cannot read {path}: {message}")]
    Record { path: PathBuf, message: String },
    #[error("{0}")]
    Other(String),
}

/// Why a job did not produce a result this time.
#[derive(Debug)]
enum Fault {
    /// The grader's fault: retry later.
    Infra(String),
    /// Shutdown: put the job back untouched.
    Cancelled,
    /// Refused by course policy (late, quota): `failed/`, never retried.
    Refused(Refusal),
}

/// What the pipeline decided before or instead of running.
enum Prepared {
    Ready {
        ws: JobDir,
        /// What the tests laid into `ws`.
        laid: workspace::Laid,
        tests_sha: String,
        /// The commit exported: the event's commit, peeled when it named an
        /// annotated tag object.
        student_sha: String,
        /// The course policy's answer (`None` when no gate: replay).
        admitted: Option<Box<Admitted>>,
    },
    /// Refused by course policy before running.
    Refused(Refusal),
    /// A final outcome without a run (bad SHA, workspace limit, no test_all).
    Final {
        status: Status,
        reason: String,
        tests_sha: Option<String>,
    },
}

/// `<work>/<job>/`: `workspace/` (the student's tree and what the tests
/// lay over it), `tests/` (the harness's copy, trusted contract),
/// `results/` and `runner/` (see [`RunSpec`]); removed on drop.
struct JobDir {
    root: PathBuf,
}

impl JobDir {
    fn create(work: &Path, job_id: &str) -> Result<JobDir, WorkspaceError> {
        let root = work.join(job_id);
        let _ = workspace::remove_tree(&root);
        for sub in ["workspace", "tests", "results", "runner"] {
            let d = root.join(sub);
            std::fs::create_dir_all(&d)
                .map_err(|source| WorkspaceError::Write { path: d, source })?;
        }
        Ok(JobDir { root })
    }
    fn workspace(&self) -> PathBuf {
        self.root.join("workspace")
    }
    fn tests(&self) -> PathBuf {
        self.root.join("tests")
    }
    /// Lay the test tree `tests` into this job directory as `contract` says.
    fn lay_tests(
        &self,
        tests: &Path,
        contract: Contract,
        limits: &WorkspaceLimits,
    ) -> Result<workspace::Laid, WorkspaceError> {
        match contract {
            Contract::Stdout => workspace::finish(tests, &self.workspace(), limits),
            Contract::Trusted => {
                workspace::finish_trusted(tests, &self.workspace(), &self.tests(), limits)
            }
        }
    }
    /// The run of this job directory, laid out by [`JobDir::lay_tests`].
    fn spec(
        &self,
        job_id: &str,
        env: Vec<(String, String)>,
        limits: &Limits,
        contract: Contract,
        laid: workspace::Laid,
    ) -> RunSpec {
        RunSpec {
            contract,
            test_paths: Arc::new(laid.test_paths),
            tests: (contract == Contract::Trusted).then(|| self.tests()),
            results: self.root.join("results"),
            scratch: self.root.join("runner"),
            ..RunSpec::new(job_id, self.workspace(), env, limits.clone())
        }
    }
}

/// The grading contract of `assignment`: its own, else `[grader] contract`.
pub fn contract_for(cfg: &Config, assignment: &str) -> Contract {
    cfg.assignments
        .get(assignment)
        .and_then(|a| a.contract)
        .unwrap_or(cfg.grader.contract)
}

/// Key of `JobResult::extra` naming a trusted-contract job (so that
/// `replay` runs it the same way).
const CONTRACT_KEY: &str = "contract";

impl Drop for JobDir {
    fn drop(&mut self) {
        if let Err(e) = workspace::remove_tree(&self.root) {
            warn!(path = %self.root.display(), error = %e, "cannot remove a workspace");
        }
    }
}

/// Grade jobs from `spool` until `shutdown` fires.
pub async fn run(
    cfg: Arc<Config>,
    spool: Arc<Spool>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let grader = Arc::new(Grader::new(cfg, spool)?);
    grader.remove_orphans().await?;
    grader.recover().await?;
    grader.serve(shutdown).await;
    Ok(())
}

/// One grader: configuration, spool, mirrors, gradebook, runners.
pub struct Grader {
    cfg: Arc<Config>,
    spool: Arc<Spool>,
    mirrors: Mirrors,
    gradebook: Arc<Mutex<Gradebook>>,
    runners: Mutex<HashMap<String, Arc<dyn Runner>>>,
    work: PathBuf,
    /// Course policy (manifest, authors, quota); `None` for replays.
    gate: Option<PolicyGate>,
    /// `[spool] min_free`: no job is claimed under it.
    reserve: crate::reserve::Reserve,
}

/// What admission needs besides the config.
struct PolicyGate {
    ledger: Arc<QuotaLedger>,
    gitlab: Option<GitlabApi>,
}

impl Grader {
    /// Open the gradebook and mirrors under the spool and build the
    /// configured runner (refusing to start when it is unavailable).
    pub fn new(cfg: Arc<Config>, spool: Arc<Spool>) -> Result<Grader, GraderError> {
        let root = spool.root().to_path_buf();
        let gradebook = Gradebook::open(&gradebook::path_in(&root))?;
        let mirrors = Mirrors::new(
            root.join("mirrors"),
            cfg.grader.git_timeout.get(),
            cfg.secrets.gitlab_token.clone(),
        );
        let work = root.join("work");
        std::fs::create_dir_all(&work).map_err(|source| WorkspaceError::Write {
            path: work.clone(),
            source,
        })?;
        let ledger = QuotaLedger::in_spool(&root).map_err(|e| GraderError::Other(e.to_string()))?;
        let gitlab = GitlabApi::from_config(&cfg, crate::httpc::HttpClient::new());
        let reserve = crate::reserve::Reserve::new(&root, cfg.spool.min_free.bytes());
        let g = Grader {
            reserve,
            cfg,
            spool,
            mirrors,
            gradebook: Arc::new(Mutex::new(gradebook)),
            runners: Mutex::new(HashMap::new()),
            work,
            gate: Some(PolicyGate {
                ledger: Arc::new(ledger),
                gitlab,
            }),
        };
        g.runner(g.cfg.grader.runner)?;
        Ok(g)
    }

    fn runner(&self, kind: RunnerKind) -> Result<Arc<dyn Runner>, SandboxError> {
        let mut g = self.runners.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = g.get(&kind.to_string()) {
            return Ok(r.clone());
        }
        let r = sandbox::build_runner(&self.cfg, kind)?;
        g.insert(kind.to_string(), r.clone());
        Ok(r)
    }

    /// Start-up: remove the sandboxes (docker containers) that jobs of a
    /// crashed daemon left behind, before any job runs.
    pub async fn remove_orphans(&self) -> Result<(), SandboxError> {
        let runners: Vec<Arc<dyn Runner>> = {
            let g = self.runners.lock().unwrap_or_else(|p| p.into_inner());
            g.values().cloned().collect()
        };
        for r in runners {
            let n = r.remove_orphans().await?;
            if n > 0 {
                warn!(
                    runner = r.name(),
                    removed = n,
                    "removed sandboxes left by a crash"
                );
            }
        }
        Ok(())
    }

    /// Called when a job's workspace is ready and test_all is about to
    /// run: queue the "running" commit status (on the commit graded). Best effort: a status that cannot be queued never stops a job.
    pub fn on_started(&self, event: &Event) {
        if let Err(e) = crate::deliver::enqueue_commit_status(
            &self.cfg,
            &self.spool,
            event,
            crate::deliver::CommitState::Running,
        ) {
            warn!(error = %e, "cannot queue the running commit status");
        }
    }

    /// Called when course policy refused a job (late, over quota) after it
    /// went to `failed/`: email the pusher why (and, for the quota, when
    /// the next slot opens). Best effort, like the running status.
    pub fn on_refused(&self, event: &Event, refusal: &Refusal) {
        let text = refusal.message().to_string();
        let mut r = self.bare_result(event, None, Status::Error, format!("not graded: {text}"));
        r.stdout = Captured::from_bytes(format!("{text}\n").into_bytes(), 1 << 16);
        if let Err(e) = crate::deliver::enqueue_email(&self.cfg, &self.spool, event, &r) {
            warn!(error = %e, "cannot queue the refusal email");
        }
    }

    /// Give back the quota slots of a job that failed by the grader's
    /// fault (never charged to the student).
    fn release_quota(&self, ev: &Event) {
        if let Some(gate) = &self.gate
            && let Err(e) = gate.ledger.release(&ev.job_id)
        {
            error!(job_id = %ev.job_id, error = %e, "cannot release the job's quota slots");
        }
    }

    /// Move a job refused by course policy from `state` to
    /// `failed/<job>/` (`event.json`, `reason` = `CODE: message`).
    async fn refuse(
        &self,
        name: &str,
        state: State,
        ev: &Event,
        refusal: &Refusal,
    ) -> Result<(), GraderError> {
        let tmp = self.spool.tmp_dir(&ev.job_id)?;
        for (file, bytes) in [
            ("event.json", ev.to_bytes()),
            (
                "reason",
                format!("{}: {}\n", refusal.code(), refusal.message()).into_bytes(),
            ),
        ] {
            let p = tmp.join(file);
            std::fs::write(&p, bytes).map_err(|source| SpoolError::Write { path: p, source })?;
        }
        match self.spool.publish_dir(&tmp, State::Failed, &ev.job_id) {
            Ok(_) | Err(SpoolError::Exists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let _ = std::fs::remove_dir_all(&tmp);
        let _ = std::fs::remove_file(self.spool.path(state, name));
        let _ = crate::spool::fsync_dir(&self.spool.dir(state));
        metrics::inc(STATUS_METRIC, STATUS_HELP, &[("status", refusal.code())]);
        info!(
            reason = refusal.code(),
            message = refusal.message(),
            "refused by course policy: failed/"
        );
        self.on_refused(ev, refusal);
        Ok(())
    }

    /// Start-up recovery: sweep workspaces and `tmp/`, put `active/` jobs
    /// back with their crash count raised, and fail those that crashed the
    /// daemon `max_crashes` times.
    pub async fn recover(&self) -> Result<(), GraderError> {
        if let Ok(rd) = std::fs::read_dir(&self.work) {
            for e in rd.flatten() {
                let _ = workspace::remove_tree(&e.path());
            }
        }
        let rec = self.spool.recover(|_, bytes| {
            let mut ev = Event::from_bytes(bytes).ok()?;
            ev.crashes += 1;
            Some(ev.to_bytes())
        })?;
        if rec.tmp_swept > 0 || !rec.requeued.is_empty() {
            info!(
                tmp_swept = rec.tmp_swept,
                requeued = rec.requeued.len(),
                "recovered the spool"
            );
        }
        for name in rec.requeued {
            let Ok(bytes) = self.spool.read(State::Incoming, &name) else {
                continue;
            };
            let Ok(ev) = Event::from_bytes(&bytes) else {
                continue;
            };
            if self.spool.path(State::Done, &ev.job_id).exists() {
                // Recorded before the crash; only the claim was left behind.
                let _ = std::fs::remove_file(self.spool.path(State::Incoming, &name));
                continue;
            }
            if ev.crashes >= self.cfg.grader.max_crashes {
                let reason = format!(
                    "the job was running during {} grader crashes; it goes to failed/ and is not \
                     retried automatically (`labgrader regrade {}` retries it)",
                    ev.crashes, ev.job_id
                );
                error!(job_id = %ev.job_id, project = %ev.project.path, sha = %ev.commit,
                    crashes = ev.crashes, "job crashed the grader too often: failed");
                self.fail(&name, &ev, &reason).await?;
            } else {
                warn!(job_id = %ev.job_id, project = %ev.project.path, sha = %ev.commit,
                    crashes = ev.crashes, "job was active during a crash: requeued");
            }
        }
        Ok(())
    }

    /// Move a job from `incoming/` to `failed/<job>/` with its reason, and
    /// record it as an `infra_error` in the gradebook.
    async fn fail(&self, name: &str, ev: &Event, reason: &str) -> Result<(), GraderError> {
        let tmp = self.spool.tmp_dir(&ev.job_id)?;
        let write = |file: &str, bytes: &[u8]| {
            std::fs::write(tmp.join(file), bytes).map_err(|e| SpoolError::Write {
                path: tmp.join(file),
                source: e,
            })
        };
        write("event.json", &ev.to_bytes())?;
        write("reason", format!("{reason}\n").as_bytes())?;
        match self.spool.publish_dir(&tmp, State::Failed, &ev.job_id) {
            Ok(_) | Err(SpoolError::Exists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let _ = std::fs::remove_dir_all(&tmp);
        let result = self.bare_result(ev, None, Status::InfraError, reason.to_string());
        self.record_gradebook(result).await?;
        self.release_quota(ev);
        let _ = std::fs::remove_file(self.spool.path(State::Incoming, name));
        let _ = crate::spool::fsync_dir(&self.spool.dir(State::Incoming));
        metrics::inc(STATUS_METRIC, STATUS_HELP, &[("status", "infra_error")]);
        Ok(())
    }

    /// The scheduling loop. Returns after shutdown once every job has
    /// finished or been put back.
    pub async fn serve(self: Arc<Self>, shutdown: CancellationToken) {
        let workers = self.cfg.grader.effective_workers().max(1);
        let permits = Arc::new(Semaphore::new(workers));
        let wake = Arc::new(Notify::new());
        let _watcher = {
            let wake = wake.clone();
            crate::watch::watch_dir(&self.spool.dir(State::Incoming), "incoming/", move || {
                wake.notify_one()
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
        loop {
            sched.scan(&self.spool);
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
                    sched.dispatch(&self, &permits, &mut tasks, &jobs_cancel)
                }
            };
            let sleep_for = next
                .map(|t| (t - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                .map_or(rescan, |d| d.min(rescan));
            tokio::select! {
                _ = wake.notified() => {}
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
        let moved = self
            .spool
            .replace(State::Incoming, name, &ev.to_bytes())
            .map(|_| std::fs::remove_file(self.spool.path(State::Active, name)));
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

    /// Everything one claimed job goes through; returns its project.
    async fn job(
        self: Arc<Self>,
        name: String,
        ev: Event,
        _permit: OwnedSemaphorePermit,
        cancel: CancellationToken,
    ) -> String {
        let project = ev.project.path.clone();
        let span = tracing::info_span!("job", job_id = %ev.job_id, project = %ev.project.path, sha = %ev.commit);
        async {
            if self.spool.path(State::Done, &ev.job_id).exists() {
                info!("already recorded in done/: dropping the leftover claim");
                let _ = std::fs::remove_file(self.spool.path(State::Active, &name));
                return;
            }
            if let Some(result) = self.recorded_before_crash(&ev).await {
                info!("recorded and queued for delivery before a crash: completing that record, not grading again");
                // The event as graded: an annotated tag was peeled to its
                // commit, which the statuses and done/ must name.
                let mut ev = ev;
                ev.commit = result.student_sha.clone();
                if let Err(e) = self.record(&name, &ev, &result).await {
                    error!(error = %e, "cannot complete the record; the job stays in active/ until restart");
                }
                return;
            }
            let mut ev = ev;
            let outcome = self.grade_event(&mut ev, &cancel).await;
            let outcome = match outcome {
                Ok(result) => match self.record(&name, &ev, &result).await {
                    Ok(()) => return,
                    Err(e) => Err(Fault::Infra(format!("cannot record the result: {e}"))),
                },
                Err(f) => Err(f),
            };
            match outcome {
                Err(Fault::Cancelled) => {
                    info!("cancelled by shutdown: back to incoming/");
                    if let Err(e) = self.spool.transition(&name, State::Active, State::Incoming) {
                        error!(error = %e, "cannot requeue a cancelled job; it stays in active/ until restart");
                    }
                }
                Err(Fault::Infra(msg)) => self.infra_failure(&name, ev.clone(), msg).await,
                Err(Fault::Refused(r)) => {
                    if let Err(e) = self.refuse(&name, State::Active, &ev, &r).await {
                        error!(error = %e, "cannot move a refused job to failed/; it stays in active/ until restart");
                    }
                }
                Ok(()) => {}
            }
        }
        .instrument(span)
        .await;
        project
    }

    /// The result of `ev` when a crash came between queuing its result
    /// deliveries and publishing `done/`: the gradebook row (written before
    /// the deliveries), provided a result delivery exists (waiting, sent or
    /// dead). Grading again could tell the student a second, different
    /// grade while the first is already on its way.
    async fn recorded_before_crash(&self, ev: &Event) -> Option<JobResult> {
        let queued = crate::deliver::has_result_delivery(&self.spool, &ev.job_id);
        if !queued {
            return None;
        }
        let (gb, id) = (self.gradebook.clone(), ev.job_id.clone());
        tokio::task::spawn_blocking(move || gb.lock().unwrap_or_else(|p| p.into_inner()).get(&id))
            .await
            .ok()?
            .ok()?
    }

    /// After a grader fault: retry later, or record `infra_error` when
    /// the retries are spent.
    async fn infra_failure(&self, name: &str, mut ev: Event, msg: String) {
        let retries = self.cfg.grader.infra_retries;
        if ev.infra_attempts < retries {
            ev.infra_attempts += 1;
            let delay = crate::retry::backoff(
                ev.infra_attempts,
                self.cfg.grader.infra_backoff.get(),
                MAX_BACKOFF,
                crate::retry::stable_jitter(&ev.job_id, ev.infra_attempts),
            );
            ev.not_before =
                Some(Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default());
            error!(attempt = ev.infra_attempts, of = retries, retry_in = ?delay, error = %msg,
                "infrastructure failure (not the student's fault): will retry");
            metrics::inc(RETRY_METRIC, RETRY_HELP, &[]);
            let requeued = self
                .spool
                .replace(State::Incoming, name, &ev.to_bytes())
                .and_then(|_| {
                    std::fs::remove_file(self.spool.path(State::Active, name)).map_err(|source| {
                        SpoolError::Write {
                            path: self.spool.path(State::Active, name),
                            source,
                        }
                    })
                });
            if let Err(e) = requeued {
                error!(error = %e, "cannot requeue the job; it stays in active/ until restart");
            }
            return;
        }
        error!(attempts = ev.infra_attempts + 1, error = %msg,
            "infrastructure failure and no retries left: recording infra_error; staff must look");
        // The student sees the verdict, never the grader's own error: it
        // names host paths (spool, mirrors) and services. Staff find it in
        // the log, in stderr (staff only) and in failed-attempt counts.
        let reason = "the grader could not grade this commit (not the student's fault; staff were alerted and it can be regraded)".to_string();
        let mut result = self.bare_result(&ev, None, Status::InfraError, reason);
        result.stderr = Captured::from_bytes(format!("labgrader: {msg}\n").into_bytes(), 1 << 16);
        self.release_quota(&ev);
        if let Err(e) = self.record(name, &ev, &result).await {
            error!(error = %e, "cannot record the infra_error result; the job stays in active/");
        }
    }

    /// Fetch, build the workspace, run and read the summary.
    /// When the event names an annotated tag object, `ev.commit` becomes
    /// the commit it points to (the tag object stays in `ev.after`).
    async fn grade_event(
        &self,
        ev: &mut Event,
        cancel: &CancellationToken,
    ) -> Result<JobResult, Fault> {
        let started = Instant::now();
        observe(
            "queued",
            (Utc::now() - ev.received_at).to_std().unwrap_or_default(),
        );
        if ev.schema != EVENT_SCHEMA {
            return Ok(self.bare_result(
                ev,
                None,
                Status::Error,
                format!("event schema {} is not {EVENT_SCHEMA}", ev.schema),
            ));
        }
        let assignment = self.cfg.assignments.get(&ev.project.name);
        let kind = assignment
            .and_then(|a| a.runner)
            .unwrap_or(self.cfg.grader.runner);
        let limits = limits_for(&self.cfg, &ev.project.name);
        let image = assignment.and_then(|a| a.image.clone());
        let runner = self.runner(kind).map_err(|e| Fault::Infra(e.to_string()))?;
        let contract = contract_for(&self.cfg, &ev.project.name);
        let prepared = self.prepare(ev, None, contract, started, cancel).await?;
        let (ws, laid, tests_sha, admitted) = match prepared {
            Prepared::Ready {
                ws,
                laid,
                tests_sha,
                student_sha,
                admitted,
            } => {
                if student_sha != ev.commit {
                    info!(tag_object = %ev.commit, commit = %student_sha,
                        "the event named an annotated tag: grading the commit it points to");
                    ev.commit = student_sha;
                }
                // After the peel: GitLab keeps statuses on commits, not tag objects.
                self.on_started(ev);
                (ws, laid, tests_sha, admitted)
            }
            Prepared::Refused(Refusal::InvalidManifest { message }) => {
                info!(reason = %message, "invalid manifest: not run");
                let mut r = self.bare_result(ev, None, Status::InvalidManifest, message);
                r.runner = runner.name().to_string();
                r.limits = Some(limits);
                return Ok(r);
            }
            Prepared::Refused(other) => return Err(Fault::Refused(other)),
            Prepared::Final {
                status,
                reason,
                tests_sha,
            } => {
                info!(%status, %reason, "not run");
                let mut r = self.bare_result(ev, tests_sha, status, reason);
                r.runner = runner.name().to_string();
                r.limits = Some(limits);
                return Ok(r);
            }
        };
        let spec = RunSpec {
            image,
            ..ws.spec(&ev.job_id, job_env(ev, &tests_sha), &limits, contract, laid)
        };
        let t = Instant::now();
        let outcome = runner.run(&spec, cancel).await;
        observe("run", t.elapsed());
        let harness = harness_results(&spec);
        drop(ws);
        match outcome {
            Ok(out) => {
                let mut r = result_from_run(ev, Some(tests_sha), &limits, out, harness);
                note_contract(&mut r, contract);
                if let Some(a) = admitted {
                    r.extra.extend(a.extra);
                }
                Ok(r)
            }
            Err(SandboxError::Cancelled) => Err(Fault::Cancelled),
            Err(e) => Err(Fault::Infra(e.to_string())),
        }
    }

    /// Fetch both trees and lay them into a fresh workspace. `tests_sha`
    /// pins the test commit (replay); `None` takes the default-branch head.
    async fn prepare(
        &self,
        ev: &Event,
        tests_sha: Option<&str>,
        contract: Contract,
        since: Instant,
        cancel: &CancellationToken,
    ) -> Result<Prepared, Fault> {
        let gl = &self.cfg.gitlab;
        let student_url = gl.clone_url_for(&ev.project.path);
        let tests_path = gl.tests_path_for(&ev.project.name);
        let tests_url = gl.clone_url_for(&tests_path);
        let ws = JobDir::create(&self.work, &ev.job_id).map_err(|e| Fault::Infra(e.to_string()))?;
        let limits = WorkspaceLimits {
            bytes: self.cfg.grader.workspace_limit.bytes(),
            files: self.cfg.grader.workspace_files,
        };
        let t = Instant::now();
        let ws_dir = ws.workspace();
        let student = self.mirrors.export_commit(
            &ev.project.path,
            &student_url,
            &ev.commit,
            &ev.git_ref,
            &ws_dir,
            limits,
            cancel,
        );
        let tests = async {
            let (m, sha) = match tests_sha {
                Some(sha) => (
                    self.mirrors
                        .ensure_commit(&tests_path, &tests_url, sha, cancel)
                        .await?,
                    sha.to_string(),
                ),
                None => {
                    self.mirrors
                        .default_head(&tests_path, &tests_url, since, cancel)
                        .await?
                }
            };
            let tree = self.mirrors.cached_tree(&m, &sha, cancel).await?;
            Ok::<_, MirrorError>((sha, tree))
        };
        let (s, te) = tokio::join!(student, tests);
        observe("fetch", t.elapsed());
        let (tests_sha, tests_tree) = match te {
            Ok(v) => v,
            Err(e) => return mirror_fault(e, None, "test repository"),
        };
        let student_sha = match s {
            Ok((_, commit)) => commit,
            Err(e) => return mirror_fault(e, Some(tests_sha), "student repository"),
        };
        // Course policy reads the student's own tree, before the tests are
        // laid over it (manifest, authors, then the quota slot).
        let admitted = match &self.gate {
            None => None,
            Some(gate) => {
                match crate::policy::admit(
                    &self.cfg,
                    ev,
                    &ws.workspace(),
                    gate.gitlab.clone(),
                    &gate.ledger,
                )
                .await
                {
                    Ok(Ok(a)) => Some(Box::new(a)),
                    Ok(Err(refusal)) => return Ok(Prepared::Refused(refusal)),
                    Err(e) => return Err(Fault::Infra(format!("course policy: {e}"))),
                }
            }
        };
        let t = Instant::now();
        let (finished, ws) =
            tokio::task::spawn_blocking(move || (ws.lay_tests(&tests_tree, contract, &limits), ws))
                .await
                .map_err(|e| Fault::Infra(e.to_string()))?;
        observe("workspace", t.elapsed());
        match finished {
            Ok(laid) => Ok(Prepared::Ready {
                ws,
                laid,
                tests_sha,
                student_sha,
                admitted,
            }),
            Err(e) => match e.status() {
                Some(status) => Ok(Prepared::Final {
                    status,
                    reason: e.to_string(),
                    tests_sha: Some(tests_sha),
                }),
                None => Err(Fault::Infra(e.to_string())),
            },
        }
    }

    /// Write `done/<job>/`, the gradebook row, and drop the claim.
    async fn record(&self, name: &str, ev: &Event, result: &JobResult) -> Result<(), GraderError> {
        let t = Instant::now();
        let tmp = self.spool.tmp_dir(&ev.job_id)?;
        let files: [(&str, Vec<u8>); 4] = [
            ("event.json", ev.to_bytes()),
            ("result.json", {
                let mut v = serde_json::to_vec_pretty(result).expect("result serializes");
                v.push(b'\n');
                v
            }),
            ("stdout", result.stdout.display_bytes()),
            ("stderr", result.stderr.display_bytes()),
        ];
        for (file, bytes) in files {
            let p = tmp.join(file);
            std::fs::write(&p, bytes).map_err(|source| SpoolError::Write { path: p, source })?;
        }
        self.record_gradebook(result.clone()).await?;
        // Deliveries are queued before the job counts as done: a crash in
        // between regrades the job, and queuing again is idempotent, so no
        // result is ever recorded without its deliveries.
        crate::deliver::enqueue_result(&self.cfg, &self.spool, ev, result)?;
        match self.spool.publish_dir(&tmp, State::Done, &ev.job_id) {
            Ok(_) => {}
            Err(SpoolError::Exists { .. }) => {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            Err(e) => return Err(e.into()),
        }
        let active = self.spool.path(State::Active, name);
        if let Err(source) = std::fs::remove_file(&active)
            && source.kind() != std::io::ErrorKind::NotFound
        {
            return Err(SpoolError::Write {
                path: active,
                source,
            }
            .into());
        }
        let _ = crate::spool::fsync_dir(&self.spool.dir(State::Active));
        observe("record", t.elapsed());
        metrics::inc(
            STATUS_METRIC,
            STATUS_HELP,
            &[("status", result.status.as_str())],
        );
        info!(status = %result.status, grade = ?result.grade_total,
            tests_sha = result.tests_sha.as_deref().unwrap_or(""), "recorded");
        Ok(())
    }

    async fn record_gradebook(&self, result: JobResult) -> Result<(), GraderError> {
        let gb = self.gradebook.clone();
        tokio::task::spawn_blocking(move || {
            gb.lock().unwrap_or_else(|p| p.into_inner()).record(&result)
        })
        .await
        .map_err(|e| GraderError::Other(e.to_string()))??;
        Ok(())
    }

    /// A result for a job that did not run.
    fn bare_result(
        &self,
        ev: &Event,
        tests_sha: Option<String>,
        status: Status,
        reason: String,
    ) -> JobResult {
        result_without_run(
            ev,
            self.cfg.grader.runner.to_string(),
            tests_sha,
            status,
            reason,
        )
    }
}

/// The fields of a result every job has, whether it ran or not.
fn result_without_run(
    ev: &Event,
    runner: String,
    tests_sha: Option<String>,
    status: Status,
    reason: String,
) -> JobResult {
    JobResult {
        schema: RESULT_SCHEMA,
        job_id: ev.job_id.clone(),
        project: ev.project.path.clone(),
        git_ref: ev.git_ref.clone(),
        student_sha: ev.commit.clone(),
        tests_sha,
        runner,
        image: None,
        image_id: None,
        limits: None,
        received_at: ev.received_at,
        started_at: None,
        ended_at: Utc::now(),
        status,
        reason: Some(reason),
        termination: None,
        grade_total: None,
        summary: BTreeMap::new(),
        hidden: BTreeMap::new(),
        stdout: Captured::default(),
        stderr: Captured::default(),
        results: None,
        extra: extra_of(ev),
    }
}

fn extra_of(ev: &Event) -> BTreeMap<String, serde_json::Value> {
    let mut m = BTreeMap::new();
    if let Some(u) = &ev.pusher.username {
        m.insert("pusher".into(), serde_json::Value::String(u.clone()));
    }
    if ev.infra_attempts > 0 {
        m.insert("infra_attempts".into(), ev.infra_attempts.into());
    }
    if ev.crashes > 0 {
        m.insert("crashes".into(), ev.crashes.into());
    }
    if ev.source == HookSource::Local {
        m.insert("source".into(), "local".into());
    }
    if ev.kind == EventKind::TagPush && ev.after != ev.commit {
        // An annotated tag: graded at its commit; the tag object it was.
        m.insert("tag_object".into(), ev.after.clone().into());
    }
    m
}

fn mirror_fault(e: MirrorError, tests_sha: Option<String>, which: &str) -> Result<Prepared, Fault> {
    if matches!(e, MirrorError::Cancelled) {
        return Err(Fault::Cancelled);
    }
    if e.is_infra() {
        return Err(Fault::Infra(format!("{which}: {e}")));
    }
    let status = match &e {
        MirrorError::Workspace(w) => w.status().unwrap_or(Status::Error),
        _ => Status::Error,
    };
    Ok(Prepared::Final {
        status,
        reason: e.to_string(),
        tests_sha,
    })
}

fn observe(phase: &'static str, d: Duration) {
    metrics::observe(PHASE_METRIC, PHASE_HELP, &[("phase", phase)], d);
}

/// Limits of a job of `assignment`: `[grader]` with the assignment's overrides.
pub fn limits_for(cfg: &Config, assignment: &str) -> Limits {
    let a = cfg.assignments.get(assignment);
    let g = &cfg.grader;
    Limits {
        timeout: a.and_then(|a| a.timeout).unwrap_or(g.timeout).get(),
        memory: a.and_then(|a| a.memory).unwrap_or(g.memory).bytes(),
        pids: a.and_then(|a| a.pids).unwrap_or(g.pids),
        output: g.output_limit.bytes(),
        cpus: cfg.docker.cpus,
        file_size: g.workspace_limit.bytes(),
        open_files: OPEN_FILES,
        disk: g.disk.bytes(),
    }
}

/// The documented environment of `test_all` (PATH, HOME, LANG come from the runner).
pub fn job_env(ev: &Event, tests_sha: &str) -> Vec<(String, String)> {
    vec![
        ("LABGRADER_JOB_ID".into(), ev.job_id.clone()),
        ("LABGRADER_PROJECT".into(), ev.project.path.clone()),
        ("LABGRADER_REF".into(), ev.git_ref.clone()),
        ("LABGRADER_STUDENT_SHA".into(), ev.commit.clone()),
        ("LABGRADER_TESTS_SHA".into(), tests_sha.to_string()),
        (
            "LABGRADER_PUSHER".into(),
            ev.pusher.username.clone().unwrap_or_default(),
        ),
    ]
}

/// Where a run's grade came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Grade {
    /// The stdout contract: the last complete `<summary>` block.
    Summary(summary::Summary),
    /// The trusted contract: `results.json` in `$LABGRADER_RESULTS`.
    Results(TestResults),
}

impl Grade {
    pub fn total(&self) -> f64 {
        match self {
            Grade::Summary(s) => s.grade_total,
            Grade::Results(r) => r.grade_total,
        }
    }
}

/// What the harness left in the results directory of `spec`: `None` under
/// the stdout contract (there is none), else `results.json` read and
/// checked. Call it before the job directory is removed.
pub fn harness_results(spec: &RunSpec) -> Option<Result<TestResults, ResultsError>> {
    (spec.contract == Contract::Trusted).then(|| results::read(&spec.results))
}

/// Status, reason and grade of a finished run. `harness` is
/// [`harness_results`]: under the trusted contract `results.json` is the
/// only source of a grade (stdout is feedback, a summary there never
/// counts); without it the grade is read from stdout's summary.
///
/// - A limit that stopped the run (timeout, memory, disk) is the status;
///   a grade written before that still counts (partial credit).
/// - trusted: no `results.json` is `no_grade`; a malformed one is `error`,
///   the reason naming the problem (the harness is wrong, not the student).
/// - stdout: a summary cut by `output_limit` is `output_limit` (see
///   [`summary::parse_captured`]); no valid summary is `no_grade`.
pub fn verdict(
    out: &RunOutcome,
    limits: &Limits,
    harness: Option<&Result<TestResults, ResultsError>>,
) -> (Status, String, Option<Grade>) {
    let limit_reason = match &out.termination {
        Termination::Timeout => Some((
            Status::Timeout,
            format!(
                "stopped by the timeout after {} s",
                limits.timeout.as_secs_f64()
            ),
        )),
        Termination::MemoryLimit => Some((
            Status::MemoryLimit,
            format!("stopped by the memory limit of {} bytes", limits.memory),
        )),
        _ if out.disk_full => Some((
            Status::DiskLimit,
            format!("the job filled its disk limit of {} bytes", limits.disk),
        )),
        _ => None,
    };
    let how = match out.termination {
        Termination::Exited { code } => format!("test_all exited with status {code}"),
        Termination::Signaled { signal } => format!("test_all was killed by signal {signal}"),
        _ => String::new(),
    };
    if let Some(harness) = harness {
        return match (limit_reason, harness) {
            (Some((status, why)), Ok(r)) => (
                status,
                format!(
                    "{why}; grade {} from the {RESULTS_FILE} written before that",
                    r.grade_total
                ),
                Some(Grade::Results(r.clone())),
            ),
            (Some((status, why)), Err(e)) => (status, format!("{why}; {e}"), None),
            (None, Ok(r)) => (
                Status::Graded,
                format!("grade {} from {RESULTS_FILE}", r.grade_total),
                Some(Grade::Results(r.clone())),
            ),
            (None, Err(e)) if !e.is_malformed() => (
                Status::NoGrade,
                format!(
                    "{e} (under the trusted contract stdout is feedback: a summary there \
                     does not count); {how}"
                ),
                None,
            ),
            (None, Err(e)) => (Status::Error, format!("{e}; {how}"), None),
        };
    }
    let parsed = summary::parse_captured(&out.stdout);
    let cut = if out.stdout.truncated && !matches!(parsed, Err(SummaryError::OutputCut { .. })) {
        format!(
            " (stdout was cut at output_limit, {} of {} bytes kept)",
            out.stdout.bytes.len() + out.stdout.tail.len(),
            out.stdout.total
        )
    } else {
        String::new()
    };
    match (limit_reason, parsed) {
        (Some((status, why)), Ok(s)) => (
            status,
            format!(
                "{why}; grade {} from the last complete summary printed before that",
                s.grade_total
            ),
            Some(Grade::Summary(s)),
        ),
        (Some((status, why)), Err(e)) => (status, format!("{why}; {e}{cut}"), None),
        (None, Ok(s)) => (
            Status::Graded,
            format!("grade {}", s.grade_total),
            Some(Grade::Summary(s)),
        ),
        (None, Err(e @ SummaryError::OutputCut { .. })) => {
            (Status::OutputLimit, format!("{e}; {how}"), None)
        }
        (None, Err(e)) => (Status::NoGrade, format!("{e}{cut}; {how}"), None),
    }
}

fn result_from_run(
    ev: &Event,
    tests_sha: Option<String>,
    limits: &Limits,
    out: RunOutcome,
    harness: Option<Result<TestResults, ResultsError>>,
) -> JobResult {
    let (status, reason, grade) = verdict(&out, limits, harness.as_ref());
    let (grade_total, summary, hidden, results) = match grade {
        Some(Grade::Summary(s)) => (Some(s.grade_total), s.summary, s.hidden, None),
        Some(Grade::Results(r)) => (
            Some(r.grade_total),
            BTreeMap::new(),
            BTreeMap::new(),
            Some(r),
        ),
        None => (None, BTreeMap::new(), BTreeMap::new(), None),
    };
    let mut r = JobResult {
        image: out.image,
        image_id: out.image_id,
        limits: Some(limits.clone()),
        started_at: Some(out.started_at),
        ended_at: out.ended_at,
        termination: Some(out.termination),
        grade_total,
        summary,
        hidden,
        stdout: out.stdout,
        stderr: out.stderr,
        results,
        ..result_without_run(ev, out.runner, tests_sha, status, reason)
    };
    // The problem may name a hidden test: staff keep it, student views
    // replace it in the reason (deliver::hidden).
    if let Some(Err(e)) = &harness
        && e.is_malformed()
    {
        r.extra.insert(
            crate::deliver::hidden::RESULTS_ERROR_KEY.into(),
            serde_json::Value::String(e.to_string()),
        );
    }
    r
}

/// Record a trusted-contract job as such (stdout jobs carry no mark, as
/// before the contract existed).
fn note_contract(r: &mut JobResult, contract: Contract) {
    if contract == Contract::Trusted {
        r.extra.insert(
            CONTRACT_KEY.into(),
            serde_json::Value::String(contract.to_string()),
        );
    }
}

/// What the scheduler knows of each waiting job (never the whole event).
struct Meta {
    project: String,
    not_before: Option<DateTime<Utc>>,
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
        for name in &names {
            if self.index.contains_key(name) {
                continue;
            }
            match read_event(spool, State::Incoming, name) {
                Ok(ev) => {
                    self.index.insert(
                        name.clone(),
                        Meta {
                            project: ev.project.path,
                            not_before: ev.not_before,
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
        permits: &Arc<Semaphore>,
        tasks: &mut JoinSet<String>,
        cancel: &CancellationToken,
    ) -> Option<DateTime<Utc>> {
        let now = Utc::now();
        let mut next: Option<DateTime<Utc>> = None;
        let mut claimed = Vec::new();
        for (name, meta) in &self.index {
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
            claimed.push(name.clone());
            // A plain rename, no directory fsync: whichever of incoming/ or
            // active/ a crash leaves the job in, start-up puts it back in
            // incoming/, so the claim need not be durable.
            match std::fs::rename(
                grader.spool.path(State::Incoming, name),
                grader.spool.path(State::Active, name),
            ) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
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
            let handle = tasks.spawn(grader.clone().job(name.clone(), ev, permit, cancel.clone()));
            self.spawned
                .insert(handle.id(), (name.clone(), meta.project.clone()));
        }
        for n in claimed {
            self.index.remove(&n);
        }
        next
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

// ---------------------------------------------------------------------------
// Staff commands: grade (local), regrade, replay.

/// One local run for staff: `student` then `tests` laid into a fresh
/// workspace under the system temp directory, run once, nothing recorded.
pub async fn grade_local(
    cfg: &Config,
    student: &Path,
    tests: &Path,
    runner: Option<RunnerKind>,
    timeout: Option<Duration>,
    contract: Option<Contract>,
) -> Result<JobResult, GraderError> {
    let contract = contract.unwrap_or(cfg.grader.contract);
    for (what, p) in [("student", student), ("tests", tests)] {
        if !p.is_dir() {
            return Err(GraderError::Other(format!(
                "--{what} {} is not a directory",
                p.display()
            )));
        }
    }
    let runner = sandbox::build_runner(cfg, runner.unwrap_or(cfg.grader.runner))?;
    let job_id = crate::spool::new_job_id();
    let root = std::env::temp_dir().join(format!("labgrader-grade-{job_id}"));
    let jd = JobDir::create(&root, "job")?;
    let _cleanup = RemoveOnDrop(root.clone());
    let mut limits = limits_for(cfg, "");
    if let Some(t) = timeout {
        limits.timeout = t;
    }
    let wl = WorkspaceLimits {
        bytes: cfg.grader.workspace_limit.bytes(),
        files: cfg.grader.workspace_files,
    };
    let ev = local_event(&job_id, student);
    let (s, t) = (student.to_path_buf(), tests.to_path_buf());
    let (built, jd) = tokio::task::spawn_blocking(move || {
        let laid = workspace::overlay(&s, &jd.workspace(), Some(&wl), &mut Default::default())
            .and_then(|()| jd.lay_tests(&t, contract, &wl));
        (laid, jd)
    })
    .await
    .map_err(|e| GraderError::Other(e.to_string()))?;
    let laid = match built {
        Ok(laid) => laid,
        Err(e) => {
            let Some(status) = e.status() else {
                return Err(e.into());
            };
            let mut r = result_skeleton(&ev, runner.name(), &limits);
            r.status = status;
            r.reason = Some(e.to_string());
            return Ok(r);
        }
    };
    let spec = jd.spec(&job_id, job_env(&ev, ""), &limits, contract, laid);
    let out = runner.run(&spec, &CancellationToken::new()).await?;
    let harness = harness_results(&spec);
    let mut r = result_from_run(&ev, None, &limits, out, harness);
    note_contract(&mut r, contract);
    Ok(r)
}

struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = workspace::remove_tree(&self.0);
    }
}

fn local_event(job_id: &str, student: &Path) -> Event {
    let name = student
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "student".into());
    Event {
        schema: EVENT_SCHEMA,
        job_id: job_id.to_string(),
        received_at: Utc::now(),
        kind: crate::event::EventKind::Push,
        source: HookSource::Local,
        gitlab_event: "local".into(),
        delivery_key: None,
        project: crate::event::Project {
            id: None,
            path: format!("local/{name}"),
            namespace: "local".into(),
            name,
        },
        pusher: crate::event::Pusher {
            id: None,
            username: std::env::var("USER").ok(),
            name: None,
            email: None,
        },
        git_ref: "local".into(),
        before: crate::event::ZERO_SHA.into(),
        after: crate::event::ZERO_SHA.into(),
        commit: "local".into(),
        clone_url: String::new(),
        crashes: 0,
        infra_attempts: 0,
        not_before: None,
        raw: serde_json::Value::Null,
    }
}

fn result_skeleton(ev: &Event, runner: &str, limits: &Limits) -> JobResult {
    JobResult {
        schema: RESULT_SCHEMA,
        job_id: ev.job_id.clone(),
        project: ev.project.path.clone(),
        git_ref: ev.git_ref.clone(),
        student_sha: ev.commit.clone(),
        tests_sha: None,
        runner: runner.to_string(),
        image: None,
        image_id: None,
        limits: Some(limits.clone()),
        received_at: ev.received_at,
        started_at: None,
        ended_at: Utc::now(),
        status: Status::Error,
        reason: None,
        termination: None,
        grade_total: None,
        summary: BTreeMap::new(),
        hidden: BTreeMap::new(),
        stdout: Captured::default(),
        stderr: Captured::default(),
        results: None,
        extra: BTreeMap::new(),
    }
}

/// Read a finished job's record: `done/<job>/` (or `failed/<job>/`).
pub fn read_record(spool: &Spool, job: &str) -> Result<(Event, Option<JobResult>), GraderError> {
    let job = crate::event::job_id_of(job);
    if !crate::spool::is_valid_name(job) {
        return Err(GraderError::BadJobId(job.to_string()));
    }
    for state in [State::Done, State::Failed] {
        let dir = spool.path(state, job);
        if !dir.is_dir() {
            continue;
        }
        let read = |file: &str| {
            let p = dir.join(file);
            std::fs::read(&p).map_err(|e| GraderError::Record {
                path: p.clone(),
                message: e.to_string(),
            })
        };
        let ev = Event::from_bytes(&read("event.json")?).map_err(|e| GraderError::Record {
            path: dir.join("event.json"),
            message: e.to_string(),
        })?;
        let result = match state {
            State::Done => {
                let mut r: JobResult =
                    serde_json::from_slice(&read("result.json")?).map_err(|e| {
                        GraderError::Record {
                            path: dir.join("result.json"),
                            message: e.to_string(),
                        }
                    })?;
                r.stdout.bytes = read("stdout").unwrap_or_default();
                Some(r)
            }
            _ => None,
        };
        return Ok((ev, result));
    }
    Err(GraderError::NoRecord(job.to_string()))
}

/// Queue finished jobs again: each gets a new job id with the original
/// event (same commit, same received time, so deadlines still hold).
/// Returns (old id, new id) pairs.
pub fn regrade(
    spool: &Spool,
    jobs: &[String],
    project: Option<&str>,
) -> Result<Vec<(String, String)>, GraderError> {
    let mut ids: Vec<String> = jobs.to_vec();
    if let Some(p) = project {
        let gb = Gradebook::open(&gradebook::path_in(spool.root()))?;
        let found = gb.jobs_of(p)?;
        if found.is_empty() {
            return Err(GraderError::Other(format!(
                "no finished job of project {p} in the gradebook"
            )));
        }
        ids.extend(found);
    }
    if ids.is_empty() {
        return Err(GraderError::Other(
            "name job ids or --project to regrade".into(),
        ));
    }
    let mut out = Vec::new();
    for id in ids {
        let (mut ev, _) = read_record(spool, &id)?;
        let old = ev.job_id.clone();
        ev.job_id = crate::spool::new_job_id();
        ev.source = HookSource::Local;
        ev.crashes = 0;
        ev.infra_attempts = 0;
        ev.not_before = None;
        spool.publish(State::Incoming, &ev.file_name(), &ev.to_bytes())?;
        info!(job_id = %ev.job_id, regrade_of = %old, project = %ev.project.path, sha = %ev.commit, "queued a regrade");
        out.push((old, ev.job_id));
    }
    Ok(out)
}

/// What `replay` found.
#[derive(Debug, serde::Serialize)]
pub struct Replay {
    pub job_id: String,
    pub original_status: Status,
    pub original_grade: Option<f64>,
    pub replay: JobResult,
    pub same: bool,
}

/// Run a finished job again on exactly its recorded inputs: both SHAs,
/// runner, image, limits. Nothing is recorded.
pub async fn replay(cfg: Arc<Config>, spool: Arc<Spool>, job: &str) -> Result<Replay, GraderError> {
    let (ev, original) = read_record(&spool, job)?;
    let original = original.ok_or_else(|| {
        GraderError::Other(format!(
            "job {job} failed without a result; nothing to replay"
        ))
    })?;
    let tests_sha = original.tests_sha.clone().ok_or_else(|| {
        GraderError::Other(format!(
            "job {job} never got as far as the test repository ({}); nothing to replay",
            original.status
        ))
    })?;
    let kind: RunnerKind = original.runner.parse().map_err(GraderError::Other)?;
    let runner = sandbox::build_runner(&cfg, kind)?;
    let limits = original
        .limits
        .clone()
        .unwrap_or_else(|| limits_for(&cfg, &ev.project.name));
    let g = Grader {
        mirrors: Mirrors::new(
            spool.root().join("mirrors"),
            cfg.grader.git_timeout.get(),
            cfg.secrets.gitlab_token.clone(),
        ),
        gradebook: Arc::new(Mutex::new(Gradebook::open(&gradebook::path_in(
            spool.root(),
        ))?)),
        runners: Mutex::new(HashMap::new()),
        work: spool.root().join("work"),
        gate: None,
        reserve: crate::reserve::Reserve::new(spool.root(), cfg.spool.min_free.bytes()),
        cfg,
        spool,
    };
    let mut replay_ev = ev.clone();
    replay_ev.job_id = format!("replay-{}", crate::spool::new_job_id());
    let cancel = CancellationToken::new();
    let contract = match original.extra.get(CONTRACT_KEY).and_then(|v| v.as_str()) {
        Some("trusted") => Contract::Trusted,
        _ => Contract::Stdout,
    };
    let replayed = match g
        .prepare(
            &replay_ev,
            Some(&tests_sha),
            contract,
            Instant::now(),
            &cancel,
        )
        .await
    {
        Err(Fault::Infra(m)) => return Err(GraderError::Other(m)),
        Err(Fault::Cancelled) => return Err(SandboxError::Cancelled.into()),
        Err(Fault::Refused(r)) | Ok(Prepared::Refused(r)) => {
            return Err(GraderError::Other(format!(
                "refused by course policy: {}",
                r.message()
            )));
        }
        Ok(Prepared::Final {
            status,
            reason,
            tests_sha,
        }) => {
            let mut r = g.bare_result(&ev, tests_sha, status, reason);
            r.limits = Some(limits.clone());
            r
        }
        Ok(Prepared::Ready {
            ws,
            laid,
            tests_sha,
            ..
        }) => {
            let spec = RunSpec {
                image: original.image_id.clone().or(original.image.clone()),
                ..ws.spec(
                    &replay_ev.job_id,
                    job_env(&ev, &tests_sha),
                    &limits,
                    contract,
                    laid,
                )
            };
            let out = runner.run(&spec, &cancel).await?;
            let harness = harness_results(&spec);
            drop(ws);
            let mut r = result_from_run(&ev, Some(tests_sha), &limits, out, harness);
            note_contract(&mut r, contract);
            r
        }
    };
    let same = replayed.status == original.status && replayed.grade_total == original.grade_total;
    Ok(Replay {
        job_id: ev.job_id,
        original_status: original.status,
        original_grade: original.grade_total,
        replay: replayed,
        same,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(termination: Termination, stdout: &[u8]) -> RunOutcome {
        RunOutcome {
            termination,
            stdout: Captured::from_bytes(stdout.to_vec(), 1 << 20),
            stderr: Captured::default(),
            started_at: Utc::now(),
            ended_at: Utc::now(),
            runner: "none".into(),
            image: None,
            image_id: None,
            disk_full: false,
        }
    }

    fn limits() -> Limits {
        limits_for(&Config::default(), "lab1")
    }

    #[test]
    fn timeout_with_a_complete_block_keeps_the_partial_grade_and_names_the_limit() {
        let out = outcome(
            Termination::Timeout,
            b"<summary>\ngrade_total = 30\n</summary>\n<summary>\ngrade_to",
        );
        let (status, reason, s) = verdict(&out, &limits(), None);
        assert_eq!(status, Status::Timeout);
        assert_eq!(s.unwrap().total(), 30.0);
        assert!(reason.contains("timeout"), "{reason}");
    }

    #[test]
    fn exit_without_summary_is_no_grade_with_the_reason() {
        let out = outcome(Termination::Exited { code: 2 }, b"oops");
        let (status, reason, _) = verdict(&out, &limits(), None);
        assert_eq!(status, Status::NoGrade);
        assert!(reason.contains("no complete <summary>"), "{reason}");
        assert!(reason.contains("status 2"), "{reason}");
    }

    #[test]
    fn memory_kill_is_named() {
        let out = outcome(Termination::MemoryLimit, b"");
        let (status, reason, _) = verdict(&out, &limits(), None);
        assert_eq!(status, Status::MemoryLimit);
        assert!(reason.contains("memory limit"), "{reason}");
    }

    fn results(json: &str) -> Option<Result<TestResults, ResultsError>> {
        Some(crate::results::parse(json.as_bytes()))
    }

    #[test]
    fn trusted_grade_is_results_json_and_a_printed_summary_never_counts() {
        let forged = b"<summary>\ngrade_total = 100\n</summary>\n";
        let out = outcome(Termination::Exited { code: 0 }, forged);
        let r = results(r#"{"tests": [{"name": "a", "score": 3, "max_score": 5}]}"#);
        let (status, reason, g) = verdict(&out, &limits(), r.as_ref());
        assert_eq!(status, Status::Graded);
        assert_eq!(g.unwrap().total(), 3.0);
        assert!(reason.contains("results.json"), "{reason}");

        let (status, reason, g) = verdict(&out, &limits(), Some(&Err(ResultsError::Missing)));
        assert_eq!(status, Status::NoGrade);
        assert!(g.is_none());
        assert!(
            reason.contains("wrote no results.json in $LABGRADER_RESULTS"),
            "{reason}"
        );
    }

    #[test]
    fn trusted_malformed_results_is_an_error_naming_the_problem() {
        let out = outcome(Termination::Exited { code: 0 }, b"");
        let r = results(r#"{"tests": [{"name": "parse", "score": 12, "max_score": 10}]}"#);
        let (status, reason, g) = verdict(&out, &limits(), r.as_ref());
        assert_eq!(status, Status::Error);
        assert!(g.is_none());
        assert!(reason.contains("tests[0] (`parse`)"), "{reason}");
    }

    #[test]
    fn trusted_limit_keeps_the_results_written_before_it() {
        let out = outcome(Termination::Timeout, b"");
        let (status, reason, g) = verdict(&out, &limits(), results(r#"{"score": 20}"#).as_ref());
        assert_eq!(status, Status::Timeout);
        assert_eq!(g.unwrap().total(), 20.0);
        assert!(reason.contains("timeout"), "{reason}");
        let mut out = outcome(Termination::Exited { code: 1 }, b"");
        out.disk_full = true;
        let (status, reason, _) = verdict(&out, &limits(), Some(&Err(ResultsError::Missing)));
        assert_eq!(status, Status::DiskLimit);
        assert!(reason.contains("disk limit"), "{reason}");
    }

    #[test]
    fn stdout_cut_before_a_trustworthy_summary_is_output_limit() {
        let mut stream = b"<summary>\ngrade_total = 100\n</summary>\n".to_vec();
        stream.extend(std::iter::repeat_n(b'x', 300_000));
        let cap = crate::sandbox::output::SharedCapture::default();
        cap.push(&stream, 1000);
        let mut out = outcome(Termination::Exited { code: 0 }, b"");
        out.stdout = cap.snapshot();
        let (status, reason, g) = verdict(&out, &limits(), None);
        assert_eq!(status, Status::OutputLimit);
        assert!(g.is_none());
        assert!(reason.contains("no earlier block counts"), "{reason}");
    }
}
