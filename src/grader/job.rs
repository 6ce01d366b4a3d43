//! One claimed job, read top to bottom: prepare → admit → run → verdict →
//! record; then what a fault does to it, and recovery after a crash.
//!
//! Owns the job's way through the pipeline: a fresh job directory gets the
//! student's tree at the event's commit and the test tree at its default
//! branch's head (prepare), course policy reads the student's own tree
//! (admit), the tests are laid over it, the "running" commit status is
//! queued, `test_all` runs in the sandbox (run), the run becomes a result
//! (verdict) and the result is recorded: gradebook row, deliveries queued,
//! then `done/<job>/` (record), so no result is ever recorded without its
//! deliveries. A stage that stops the job gives a final [`Verdict`] or a
//! refusal by course policy (`failed/`); the grader's faults are retried
//! with backoff through the event's `infra_attempts`/`not_before` and end
//! as `infra_error` when the retries are spent; a cancelled job goes back
//! to `incoming/` untouched. It never claims jobs (the scheduler does),
//! never builds a sandbox, never tells the student the grader's own error
//! text, and never moves a spool file except through the spool's typed
//! operations.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, warn};

use crate::config::{Config, Contract};
use crate::event::{EVENT_SCHEMA, Event};
use crate::metrics;
use crate::mirror::MirrorError;
use crate::policy::export::COMMIT_MISSING;
use crate::policy::{Admitted, Refusal};
use crate::result::{Captured, JobResult, Status};
use crate::sandbox::{RunSpec, Runner};
use crate::spool::{Spool, SpoolError, State};
use crate::workspace::{self, Laid};

use super::blame::{FetchError, GraderFault, Repo, Verdict, step};
use super::jobdir::{JobDir, job_env};
use super::limits::{JobPlan, workspace_limits};
use super::scheduler::Slot;
use super::verdict::{harness_results, note_contract, result_from_run};
use super::wiring::Grader;

const PHASE_METRIC: &str = "labgrader_grader_phase_seconds";
const PHASE_HELP: &str = "Time spent per job phase (queued, fetch, workspace, ready: prepared and waiting for a run slot, run, record).";
const STATUS_METRIC: &str = "labgrader_grader_jobs_total";
const STATUS_HELP: &str = "Finished jobs by status.";
const RETRY_METRIC: &str = "labgrader_grader_infra_retries_total";
const RETRY_HELP: &str = "Jobs put back for a retry after an infrastructure failure.";
/// Longest wait between infrastructure retries.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// How grading one job ended, short of a grader fault.
enum Graded {
    /// Record this result: a run's, or a verdict without a run.
    Result(Box<JobResult>),
    /// Refused by course policy (late, quota): `failed/`, never retried.
    Refused(Refusal),
}

/// Both trees in a fresh job directory.
pub(super) struct Fetched {
    pub(super) ws: JobDir,
    pub(super) tests_sha: String,
    /// The test tree (a shared cache: read only).
    tests_tree: PathBuf,
    /// The commit exported: the event's commit, peeled when it named an
    /// annotated tag object.
    student_sha: String,
}

/// A job stopped before its run: the verdict, and the test commit when
/// it was fetched.
pub(super) struct Stopped {
    pub(super) verdict: Verdict,
    pub(super) tests_sha: Option<String>,
    /// The pushed commit is not in the student's repository (never
    /// pushed, or force-pushed away): noted in the result, so exports
    /// never count the job as a submission.
    pub(super) commit_missing: bool,
}

impl Grader {
    /// Everything one claimed job (`active/<name>`) goes through; returns
    /// its project.
    pub(super) async fn job(
        self: Arc<Self>,
        name: String,
        ev: Event,
        mut slot: Slot,
        cancel: CancellationToken,
    ) -> String {
        let project = ev.project.path.clone();
        let span = tracing::info_span!("job", job_id = %ev.job_id, project = %ev.project.path, sha = %ev.commit);
        async {
            if self.spool.drop_if_done(State::Active, &name, &ev.job_id) {
                info!("already recorded in done/: dropping the leftover claim");
                return;
            }
            if let Some(result) = self.recorded_before_crash(&ev).await {
                info!("recorded and queued for delivery before a crash: completing that record, not grading again");
                // The event as graded: an annotated tag was peeled to its
                // commit, which the statuses and done/ must name.
                let mut ev = ev;
                ev.commit = result.student_sha.clone();
                if let Err(e) = self.record(&name, &ev, result).await {
                    error!(error = %e, "cannot complete the record; the job stays in active/ until restart");
                }
                return;
            }
            let mut ev = ev;
            let graded = self.grade(&mut ev, &mut slot, &cancel).await;
            drop(slot);
            let fault = match graded {
                Ok(Graded::Result(result)) => match self.record(&name, &ev, *result).await {
                    Ok(()) => return,
                    Err(e) => GraderFault::Record(Box::new(e)),
                },
                Ok(Graded::Refused(r)) => {
                    if let Err(e) = self.refuse(&name, &ev, &r) {
                        error!(error = %e, "cannot move a refused job to failed/; it stays in active/ until restart");
                    }
                    return;
                }
                Err(fault) => fault,
            };
            self.after_fault(&name, ev, fault).await;
        }
        .instrument(span)
        .await;
        project
    }

    /// Prepare, admit, run and judge `ev`. When the event names an
    /// annotated tag object, `ev.commit` becomes the commit it points to
    /// (the tag object stays in `ev.after`).
    async fn grade(
        &self,
        ev: &mut Event,
        slot: &mut Slot,
        cancel: &CancellationToken,
    ) -> Result<Graded, GraderFault> {
        observe(
            "queued",
            (Utc::now() - ev.received_at).to_std().unwrap_or_default(),
        );
        if ev.schema != EVENT_SCHEMA {
            let why = format!("event schema {} is not {EVENT_SCHEMA}", ev.schema);
            let r = self.bare_result(ev, None, Verdict::new(Status::Error, why));
            return Ok(Graded::Result(Box::new(r)));
        }
        let plan = JobPlan::of(&self.cfg, &ev.project.name);
        let runner = self.runner(plan.runner)?;

        // Prepare: both trees in a fresh job directory.
        let fetched = match self.fetch(ev, None, fresh_since(ev), cancel).await? {
            Ok(f) => f,
            Err(s) => return Ok(stopped(self, ev, &*runner, &plan, s)),
        };
        self.pin(ev, &fetched);

        // Admit: course policy reads the student's own tree, before the
        // tests are laid over it (manifest, authors, then the quota slot).
        let admitted = match self.admit(ev, &fetched).await? {
            Ok(a) => a,
            Err(Refusal::InvalidManifest { message }) => {
                let verdict = Verdict::new(Status::InvalidManifest, message);
                let s = Stopped {
                    verdict,
                    tests_sha: None,
                    commit_missing: false,
                };
                return Ok(stopped(self, ev, &*runner, &plan, s));
            }
            Err(refusal) => return Ok(Graded::Refused(refusal)),
        };
        // Prepare, continued: the tests laid into the admitted tree.
        let (fetched, laid) = match self.lay_tests(fetched, plan.contract).await? {
            Ok(ready) => ready,
            Err(s) => return Ok(stopped(self, ev, &*runner, &plan, s)),
        };

        // Run, on the commit graded: GitLab keeps statuses on commits, not
        // on tag objects, so the "running" status goes out after the peel.
        if fetched.student_sha != ev.commit {
            info!(tag_object = %ev.commit, commit = %fetched.student_sha,
                "the event named an annotated tag: grading the commit it points to");
            ev.commit = fetched.student_sha.clone();
        }
        let Fetched { ws, tests_sha, .. } = fetched;
        let spec = RunSpec {
            image: plan.image.clone(),
            ..ws.spec(
                &ev.job_id,
                job_env(ev, &tests_sha),
                &plan.limits,
                plan.contract,
                laid,
            )
        };
        if ev.infra_attempts > 0 || ev.crashes > 0 {
            // An interrupted attempt may have left its sandbox behind.
            if let Err(e) = runner.remove_job(&ev.job_id).await {
                warn!(error = %e, "cannot remove an earlier attempt's sandbox");
            }
        }
        // One of the `workers` run slots (the preparation above overlapped
        // the runs of others); freed as soon as the run is over.
        let t = Instant::now();
        let run_slot = tokio::select! {
            slot = slot.run() => slot,
            () = cancel.cancelled() => None,
        };
        let Some(run_slot) = run_slot else {
            return Err(GraderFault::Cancelled);
        };
        observe("ready", t.elapsed());
        ws.mark_running();
        let t = Instant::now();
        let outcome = self.run_reporting(ev, &*runner, &spec, cancel).await;
        drop(run_slot);
        observe("run", t.elapsed());
        let harness = harness_results(&spec, &plan.junit_points);
        drop(ws);
        let out = outcome?;

        // Verdict: status, reason and grade of the run.
        let mut r = result_from_run(ev, Some(tests_sha), &plan.limits, out, harness);
        note_contract(&mut r, plan.contract);
        if let Some(a) = admitted {
            r.extra.extend(a.extra);
        }
        Ok(Graded::Result(Box::new(r)))
    }

    /// Prepare: a fresh job directory holding the student's tree at the
    /// event's commit, and the test tree at `tests_sha` (replay pins it)
    /// or, with `None`, at its default branch's head fetched since `since`
    /// (a mirror fetched since then is not fetched again).
    pub(super) async fn fetch(
        &self,
        ev: &Event,
        tests_sha: Option<&str>,
        since: Instant,
        cancel: &CancellationToken,
    ) -> Result<Result<Fetched, Stopped>, GraderFault> {
        let gl = &self.cfg.gitlab;
        let student_url = gl.clone_url_for(&ev.project.path);
        let tests_path = gl.tests_path_for(&ev.project.name);
        let tests_url = gl.clone_url_for(&tests_path);
        let stop = |verdict, tests_sha| {
            Ok(Err(Stopped {
                verdict,
                tests_sha,
                commit_missing: false,
            }))
        };
        let ws = match step(JobDir::create(&self.work, &ev.job_id))? {
            Ok(ws) => ws,
            Err(v) => return stop(v, None),
        };
        let t = Instant::now();
        let ws_dir = ws.workspace();
        let student = self.mirrors.export_commit(
            &ev.project.path,
            &student_url,
            &ev.commit,
            &ev.git_ref,
            since,
            &ws_dir,
            workspace_limits(&self.cfg),
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
        let te = te.map_err(|source| FetchError {
            repo: Repo::Tests,
            source,
        });
        let (tests_sha, tests_tree) = match step(te)? {
            Ok(v) => v,
            Err(v) => return stop(v, None),
        };
        let s = s.map_err(|source| FetchError {
            repo: Repo::Student,
            source,
        });
        if let Err(e) = &s
            && student_fetch_timed_out(e)
            && ev.fetch_timeouts >= 1
            // The test repository answers now, fresh from the server (on a
            // retry its mirror is warm and proves nothing by itself).
            && self
                .mirrors
                .default_head(&tests_path, &tests_url, Instant::now(), cancel)
                .await
                .is_ok()
        {
            warn!(
                attempts = ev.fetch_timeouts + 1,
                "the student's repository timed out again while the test repository answered: the submission's fault"
            );
            return Ok(Err(Stopped {
                verdict: too_slow_to_fetch(ev, &e.source),
                tests_sha: Some(tests_sha),
                commit_missing: false,
            }));
        }
        let commit_missing = matches!(
            &s,
            Err(FetchError {
                source: MirrorError::NoCommit { .. },
                ..
            })
        );
        let student_sha = match step(s)? {
            Ok((_, commit)) => commit,
            Err(verdict) => {
                return Ok(Err(Stopped {
                    verdict,
                    tests_sha: Some(tests_sha),
                    commit_missing,
                }));
            }
        };
        Ok(Ok(Fetched {
            ws,
            tests_sha,
            tests_tree,
            student_sha,
        }))
    }

    /// Keep both commits reachable in the mirrors (`mirror::pin`), so
    /// `replay` and `regrade` outlive a force-push and a `git gc`.
    fn pin(&self, ev: &Event, f: &Fetched) {
        let tests_path = self.cfg.gitlab.tests_path_for(&ev.project.name);
        let pinned = self
            .mirrors
            .pin(&ev.project.path, "jobs", &ev.job_id, &f.student_sha)
            .and_then(|()| {
                self.mirrors
                    .pin(&tests_path, "tests", &f.tests_sha, &f.tests_sha)
            });
        if let Err(e) = pinned {
            warn!(error = %e, "cannot pin the graded commits in the mirrors");
        }
    }

    /// Admit: the course policy's answer on the student's own tree
    /// (`None` when there is no gate: replay).
    async fn admit(
        &self,
        ev: &Event,
        fetched: &Fetched,
    ) -> Result<Result<Option<Admitted>, Refusal>, GraderFault> {
        let Some(gate) = &self.gate else {
            return Ok(Ok(None));
        };
        let workspace = fetched.ws.workspace();
        let answer =
            crate::policy::admit(&self.cfg, ev, &workspace, gate.gitlab.clone(), &gate.ledger)
                .await?;
        Ok(answer.map(Some))
    }

    /// Lay the test tree into the job directory as `contract` says and
    /// check the workspace against its limits.
    pub(super) async fn lay_tests(
        &self,
        fetched: Fetched,
        contract: Contract,
    ) -> Result<Result<(Fetched, Laid), Stopped>, GraderFault> {
        let limits = workspace_limits(&self.cfg);
        let t = Instant::now();
        let (laid, fetched) = tokio::task::spawn_blocking(move || {
            let laid = fetched.ws.lay_tests(&fetched.tests_tree, contract, &limits);
            (laid, fetched)
        })
        .await?;
        observe("workspace", t.elapsed());
        Ok(match step(laid)? {
            Ok(laid) => Ok((fetched, laid)),
            Err(verdict) => Err(Stopped {
                verdict,
                tests_sha: Some(fetched.tests_sha),
                commit_missing: false,
            }),
        })
    }

    /// Run `test_all`; once the run has lasted `[deliver] running_after`,
    /// queue the "running" commit status and callback. A job that ends
    /// sooner sends its result alone: no request, record or receipt for a
    /// stage nobody would have seen.
    async fn run_reporting(
        &self,
        ev: &Event,
        runner: &dyn Runner,
        spec: &RunSpec,
        cancel: &CancellationToken,
    ) -> Result<crate::sandbox::RunOutcome, crate::sandbox::SandboxError> {
        let run = runner.run(spec, cancel);
        tokio::pin!(run);
        tokio::select! {
            biased;
            outcome = &mut run => outcome,
            () = tokio::time::sleep(self.cfg.deliver.running_after.get()) => {
                // Awaited (the disk work off this thread), so the stage is
                // queued before the result can be.
                let (cfg, spool, ev) = (self.cfg.clone(), self.spool.clone(), ev.clone());
                let span = tracing::Span::current();
                let queued = tokio::task::spawn_blocking(move || {
                    span.in_scope(|| queue_running(&cfg, &spool, &ev))
                });
                let _ = queued.await;
                run.await
            }
        }
    }

    /// Record: the `done/` draft made durable, the gradebook row, the
    /// deliveries, then `done/<job>/` published (the claim dropped). The
    /// disk work (five fsyncs and a transaction) runs off the async
    /// threads, which the hook server and the other jobs share.
    async fn record(&self, name: &str, ev: &Event, result: JobResult) -> Result<(), GraderFault> {
        let t = Instant::now();
        let (cfg, spool, gradebook) =
            (self.cfg.clone(), self.spool.clone(), self.gradebook.clone());
        let (name, ev) = (name.to_string(), ev.clone());
        let span = tracing::Span::current();
        // The result moves to the blocking thread and back: its captured
        // output is not copied.
        let result = tokio::task::spawn_blocking(move || {
            span.in_scope(|| record_durably(&cfg, &spool, &gradebook, &name, &ev, &result))?;
            Ok::<_, GraderFault>(result)
        })
        .await??;
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

    // -----------------------------------------------------------------------
    // When the job does not end in a result: refused, cancelled, a fault.

    /// Move a job refused by course policy from `active/` to
    /// `failed/<job>/` (`event.json`, `reason` = `CODE: message`) and email
    /// the pusher why.
    fn refuse(&self, name: &str, ev: &Event, refusal: &Refusal) -> Result<(), SpoolError> {
        let reason = format!("{}: {}", refusal.code(), refusal.message());
        self.spool
            .fail(State::Active, name, &ev.job_id, &ev.to_bytes(), &reason)?;
        metrics::inc(STATUS_METRIC, STATUS_HELP, &[("status", refusal.code())]);
        info!(
            reason = refusal.code(),
            message = refusal.message(),
            "refused by course policy: failed/"
        );
        self.email_refusal(ev, refusal);
        Ok(())
    }

    /// Email the pusher why course policy refused a job (late, over quota;
    /// for the quota, when the next slot opens). Best effort, like the
    /// running status.
    fn email_refusal(&self, event: &Event, refusal: &Refusal) {
        let text = refusal.message().to_string();
        let why = Verdict::new(Status::Error, format!("not graded: {text}"));
        let mut r = self.bare_result(event, None, why);
        r.stdout = Captured::from_bytes(format!("{text}\n").into_bytes(), 1 << 16);
        if let Err(e) = crate::deliver::enqueue_email(&self.cfg, &self.spool, event, &r) {
            warn!(error = %e, "cannot queue the refusal email");
        }
    }

    /// A job that ended in a fault: a cancelled one goes back to
    /// `incoming/` untouched; any other is the grader's fault.
    async fn after_fault(&self, name: &str, ev: Event, fault: GraderFault) {
        if let GraderFault::Cancelled = fault {
            info!("cancelled by shutdown: back to incoming/");
            if let Err(e) = self.spool.requeue(name, None) {
                error!(error = %e, "cannot requeue a cancelled job; it stays in active/ until restart");
            }
            return;
        }
        self.infra_failure(name, ev, fault).await
    }

    /// After a grader fault: retry later, or record `infra_error` when
    /// the retries are spent.
    async fn infra_failure(&self, name: &str, mut ev: Event, fault: GraderFault) {
        let retries = self.cfg.grader.infra_retries;
        if ev.infra_attempts < retries {
            ev.infra_attempts += 1;
            if let GraderFault::Fetch(e) = &fault
                && student_fetch_timed_out(e)
            {
                ev.fetch_timeouts += 1;
            }
            let delay = crate::retry::backoff(
                ev.infra_attempts,
                self.cfg.grader.infra_backoff.get(),
                MAX_BACKOFF,
                crate::retry::stable_jitter(&ev.job_id, ev.infra_attempts),
            );
            ev.not_before =
                Some(Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default());
            ev.last_error = Some(fault.to_string());
            error!(attempt = ev.infra_attempts, of = retries, retry_in = ?delay, error = %fault,
                "infrastructure failure (not the student's fault): will retry");
            metrics::inc(RETRY_METRIC, RETRY_HELP, &[]);
            if let Err(e) = self.spool.requeue(name, Some(&ev.to_bytes())) {
                error!(error = %e, "cannot requeue the job; it stays in active/ until restart");
            } else if let GraderFault::Sandbox(_) = fault {
                self.engine_waits.note(&ev.job_id);
            }
            return;
        }
        error!(attempts = ev.infra_attempts + 1, error = %fault,
            "infrastructure failure and no retries left: recording infra_error; staff must look");
        // The student sees the verdict, never the grader's own error: it
        // names host paths (spool, mirrors) and services. Staff find it in
        // the log, in stderr (staff only) and in failed-attempt counts.
        // Staff are said to be alerted only when an alert goes somewhere.
        let reason = if self.cfg.alerts.enabled() {
            "the grader could not grade this commit (not the student's fault; staff were alerted and can regrade it)"
        } else {
            "the grader could not grade this commit (not the student's fault; staff see why in the job's record and the log, and can regrade it)"
        };
        let mut result = self.bare_result(&ev, None, Verdict::new(Status::InfraError, reason));
        result.stderr = Captured::from_bytes(format!("labgrader: {fault}\n").into_bytes(), 1 << 16);
        self.release_quota(&ev);
        if let Err(e) = self.record(name, &ev, result).await {
            error!(error = %e, "cannot record the infra_error result; the job stays in active/");
        }
        self.alert_infra_error(&ev, &fault.to_string());
    }

    /// Tell staff (`[alerts]`) that `ev` ended `infra_error` and why.
    fn alert_infra_error(&self, ev: &Event, why: &str) {
        crate::alert::raise(
            &self.cfg.alerts,
            self.spool.root(),
            crate::alert::Alert::new(
                crate::alert::AlertKind::InfraError,
                Some(&ev.job_id),
                Some(&ev.project.path),
                why,
            ),
        );
    }

    /// Give up on a job waiting in `incoming/<name>`: record it as an
    /// `infra_error` in the gradebook, then move it to `failed/<job>/`
    /// with its reason.
    pub(super) async fn fail(
        &self,
        name: &str,
        ev: &Event,
        reason: &str,
    ) -> Result<(), GraderFault> {
        let result = self.bare_result(ev, None, Verdict::new(Status::InfraError, reason));
        self.record_gradebook(result).await?;
        self.release_quota(ev);
        self.spool
            .fail(State::Incoming, name, &ev.job_id, &ev.to_bytes(), reason)?;
        metrics::inc(STATUS_METRIC, STATUS_HELP, &[("status", "infra_error")]);
        self.alert_infra_error(ev, reason);
        Ok(())
    }

    // -----------------------------------------------------------------------
    // Recovery after a crash.

    /// The result of `ev` when a crash came between queuing its result
    /// deliveries and publishing `done/`: the gradebook row (written before
    /// the deliveries), provided a result delivery exists (waiting, sent or
    /// dead). Grading again could tell the student a second, different
    /// grade while the first is already on its way.
    async fn recorded_before_crash(&self, ev: &Event) -> Option<JobResult> {
        if !crate::deliver::has_result_delivery(&self.spool, &ev.job_id) {
            return None;
        }
        self.gradebook_row(&ev.job_id).await
    }

    /// Start-up recovery: sweep workspaces and `tmp/`, put `active/` jobs
    /// back with their crash count raised, and fail those that crashed the
    /// daemon `max_crashes` times.
    pub(super) async fn recover(&self) -> Result<(), GraderFault> {
        if let Ok(rd) = std::fs::read_dir(&self.work) {
            for e in rd.flatten() {
                let _ = workspace::remove_tree(&e.path());
            }
        }
        // Before `tmp/` is swept: results already promised to students.
        self.publish_promised_drafts();
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
            // Recorded before the crash; only the claim was left behind.
            if self.spool.drop_if_done(State::Incoming, &name, &ev.job_id) {
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
}

/// The result of a job stopped before its run: it names the runner chosen
/// and the limits the run would have had.
fn stopped(g: &Grader, ev: &Event, runner: &dyn Runner, plan: &JobPlan, s: Stopped) -> Graded {
    match s.verdict.status {
        Status::InvalidManifest => info!(reason = %s.verdict.reason, "invalid manifest: not run"),
        status => info!(%status, reason = %s.verdict.reason, "not run"),
    }
    let mut r = g.bare_result(ev, s.tests_sha, s.verdict);
    if s.commit_missing {
        r.extra.insert(COMMIT_MISSING.into(), true.into());
    }
    r.runner = runner.name().to_string();
    r.limits = Some(plan.limits.clone());
    Graded::Result(Box::new(r))
}

/// The run has lasted `running_after`: queue the "running" commit status
/// (on the commit graded) and callback. Best effort: a status that cannot
/// be queued never stops a job.
fn queue_running(cfg: &crate::config::Config, spool: &crate::spool::Spool, event: &Event) {
    if let Err(e) = crate::deliver::enqueue_commit_status(
        cfg,
        spool,
        event,
        crate::deliver::CommitState::Running,
    ) {
        warn!(error = %e, "cannot queue the running commit status");
    }
    if let Err(e) =
        crate::deliver::enqueue_callback_stage(cfg, spool, event, crate::deliver::JobStage::Running)
    {
        warn!(error = %e, "cannot queue the running callback");
    }
}

/// True for a fetch of the student's repository that outlasted
/// `git_timeout` (not a local `cat-file` or `archive`: those are the
/// grader's disk or CPU).
fn student_fetch_timed_out(e: &FetchError) -> bool {
    matches!(e.repo, Repo::Student) && matches!(e.source, MirrorError::Timeout { op: "fetch", .. })
}

/// The verdict on a student repository whose fetch timed out on a second
/// attempt while the test repository, on the same server, answered: the
/// repository's doing (a huge pack, a long history). Counted as the
/// grader's fault every time, such a push would hold a worker for
/// `infra_retries` × `git_timeout`, alert staff, and never be charged.
fn too_slow_to_fetch(ev: &Event, e: &MirrorError) -> Verdict {
    let secs = match e {
        MirrorError::Timeout { secs, .. } => *secs,
        _ => 0,
    };
    Verdict::new(
        Status::Error,
        format!(
            "your repository could not be fetched within {secs} s on {} attempts, while the \
             test repository could: it is too large to grade (a big file or a long history); \
             remove what the tests do not need and push again",
            ev.fetch_timeouts + 1
        ),
    )
}

/// The oldest fetch a job may reuse (see [`Grader::fetch`]): one started
/// after the push was received (GitLab sends the hook once the commit is
/// stored, so such a fetch holds it, and the tests as they were then), or,
/// for a regrade, after its batch was queued (so a test fix pushed before
/// `labgrader regrade` is always seen; other staff-queued jobs share none). Jobs queued together then share
/// one fetch and one tests-head check instead of one each.
fn fresh_since(ev: &Event) -> Instant {
    let at = match &ev.regrade {
        Some(r) => r.queued_at.unwrap_or_else(Utc::now),
        // Queued by staff by other means (`regrade JOB`): no sharing.
        None if ev.source == crate::event::HookSource::Local => Utc::now(),
        None => ev.received_at,
    };
    let age = (Utc::now() - at).to_std().unwrap_or_default();
    Instant::now().checked_sub(age).unwrap_or_else(Instant::now)
}

fn observe(phase: &'static str, d: Duration) {
    metrics::observe(PHASE_METRIC, PHASE_HELP, &[("phase", phase)], d);
}

/// [`Grader::record`]'s disk work, in its order. The record is the source
/// of truth, durable before anything is promised from it: a crash after
/// the deliveries are queued leaves a draft that start-up publishes
/// (`publish_promised_drafts`) and the gradebook is reconciled from
/// (`reconcile`); a job whose result was queued for delivery is never
/// graded again. Deliveries are queued before `done/` appears, so `done/`
/// means "queued".
fn record_durably(
    cfg: &Config,
    spool: &Spool,
    gradebook: &std::sync::Mutex<crate::gradebook::Gradebook>,
    name: &str,
    ev: &Event,
    result: &JobResult,
) -> Result<(), GraderFault> {
    let mut json = serde_json::to_vec_pretty(result).expect("result serializes");
    json.push(b'\n');
    let draft = spool.draft_done(
        &ev.job_id,
        &[
            ("event.json", &ev.to_bytes()),
            ("result.json", &json),
            ("stdout", &result.stdout.display_bytes()),
            ("stderr", &result.stderr.display_bytes()),
        ],
    )?;
    spool.sync_draft(&draft)?;
    gradebook
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .record(result)?;
    crate::deliver::enqueue_result(cfg, spool, ev, result)?;
    spool.finish(draft, name)?;
    Ok(())
}
