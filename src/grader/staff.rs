//! The staff commands: `grade` (one local run), `regrade` and `replay`.
//!
//! Owns what staff can ask of the grader outside the daemon: grade a local
//! student tree against a local test tree once (nothing recorded), read a
//! finished job's record, queue finished jobs again under new ids, and run
//! a finished job again on exactly its recorded inputs (nothing recorded).
//! A job id from the command line is checked before it reaches a path. It
//! never claims, moves or records a daemon's job: `regrade` only publishes
//! new events into `incoming/`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{Config, Contract, RunnerKind};
use crate::event::{EVENT_SCHEMA, Event, HookSource};
use crate::gradebook::{self, Gradebook};
use crate::result::{JobResult, Status};
use crate::sandbox::{self, RunSpec};
use crate::spool::{Spool, State};
use crate::workspace;

use super::blame::{GraderError, GraderFault, Verdict, step};
use super::jobdir::{JobDir, job_env};
use super::limits::{JobPlan, limits_for, workspace_limits};
use super::verdict::{
    contract_of, harness_results, note_contract, result_from_run, result_without_run,
};
use super::wiring::Grader;

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
            return Err(GraderError::NotADirectory {
                what,
                path: p.to_path_buf(),
            });
        }
    }
    let runner = sandbox::build_runner(cfg, runner.unwrap_or(cfg.grader.runner))?;
    let job_id = crate::spool::new_job_id();
    let root = std::env::temp_dir().join(format!("labgrader-grade-{job_id}"));
    let mut limits = limits_for(cfg, "");
    if let Some(t) = timeout {
        limits.timeout = t;
    }
    let ev = local_event(&job_id, student);
    // A tree that cannot be graded: its verdict, with the limits; a local
    // run's result carries none of the event's extras.
    let stopped = |v: Verdict| {
        let mut r = result_without_run(&ev, runner.name(), None, v);
        r.limits = Some(limits.clone());
        r.extra.clear();
        r
    };
    let jd = match step(JobDir::create(&root, "job"))? {
        Ok(jd) => jd,
        Err(v) => return Ok(stopped(v)),
    };
    let _cleanup = RemoveOnDrop(root.clone());
    let wl = workspace_limits(cfg);
    let (s, t) = (student.to_path_buf(), tests.to_path_buf());
    let (built, jd) = tokio::task::spawn_blocking(move || {
        let laid = workspace::overlay(&s, &jd.workspace(), Some(&wl), &mut Default::default())
            .and_then(|()| jd.lay_tests(&t, contract, &wl));
        (laid, jd)
    })
    .await?;
    let laid = match step(built)? {
        Ok(laid) => laid,
        Err(v) => return Ok(stopped(v)),
    };
    let spec = jd.spec(&job_id, job_env(&ev, ""), &limits, contract, laid);
    let out = runner.run(&spec, &CancellationToken::new()).await?;
    let harness = harness_results(&spec, &Default::default());
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
        fetch_timeouts: 0,
        not_before: None,
        last_error: None,
        regrade: None,
        raw: serde_json::Value::Null,
    }
}

/// The job id a staff command was given (`JOB` or `JOB.json`), checked
/// before it becomes part of a spool path.
fn job_id(given: &str) -> Result<&str, GraderError> {
    let id = crate::event::job_id_of(given);
    if crate::spool::is_valid_name(id) {
        Ok(id)
    } else {
        Err(GraderError::BadJobId(id.to_string()))
    }
}

/// Read a finished job's record: `done/<job>/` (or `failed/<job>/`).
pub fn read_record(spool: &Spool, job: &str) -> Result<(Event, Option<JobResult>), GraderError> {
    let job = job_id(job)?;
    for state in [State::Done, State::Failed] {
        let dir = spool.path(state, job);
        if !dir.is_dir() {
            continue;
        }
        let read = |file: &str| {
            let path = dir.join(file);
            std::fs::read(&path).map_err(|source| GraderError::RecordFile { path, source })
        };
        let json = |file: &str| {
            let path = dir.join(file);
            move |source| GraderError::RecordJson { path, source }
        };
        let ev = Event::from_bytes(&read("event.json")?).map_err(json("event.json"))?;
        let result = match state {
            State::Done => {
                let mut r: JobResult =
                    serde_json::from_slice(&read("result.json")?).map_err(json("result.json"))?;
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
            return Err(GraderError::NoJobsOfProject(p.to_string()));
        }
        ids.extend(found);
    }
    if ids.is_empty() {
        return Err(GraderError::NothingToRegrade);
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
        ev.last_error = None;
        spool.publish(State::Incoming, &ev.file_name(), &ev.to_bytes())?;
        info!(job_id = %ev.job_id, regrade_of = %old, project = %ev.project.path, sha = %ev.commit, "queued a regrade");
        out.push((old, ev.job_id));
    }
    Ok(out)
}

/// What `cancel` and `retry` did to one job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Moved {
    /// Cancelled: `failed/<job>/`, reason "cancelled by staff".
    Cancelled,
    /// Due now (it waited for a later try, or came back from `failed/`).
    DueNow,
}

/// Where job `id` is, for `cancel` and `retry`.
fn locate(spool: &Spool, id: &str) -> Result<(String, State), GraderError> {
    let id = job_id(id)?;
    let name = format!("{id}.json");
    for state in [State::Held, State::Incoming, State::Active] {
        if spool.path(state, &name).exists() {
            return Ok((id.to_string(), state));
        }
    }
    for state in [State::Failed, State::Done] {
        if spool.path(state, id).exists() {
            return Ok((id.to_string(), state));
        }
    }
    Err(GraderError::NoRecord(id.to_string()))
}

/// Cancel waiting (or held) jobs: each goes to `failed/` with the reason
/// "cancelled by staff"; with `notify`, the pusher is emailed why. A job the grader
/// already claimed is refused, never pulled from under it.
pub fn cancel(
    cfg: &Config,
    spool: &Spool,
    jobs: &[String],
    notify: bool,
) -> Result<Vec<(String, Moved)>, GraderError> {
    const REASON: &str = "cancelled by staff";
    let mut out = Vec::new();
    for id in jobs {
        let (id, state) = locate(spool, id)?;
        let name = format!("{id}.json");
        match state {
            State::Incoming => {}
            // Held: released first, then claimed and failed like a waiting job.
            State::Held => {
                spool.release(&name).map_err(GraderFault::from)?;
            }
            State::Active => return Err(GraderError::Running(id)),
            _ => {
                return Err(GraderError::NotWaiting {
                    job: id,
                    finished: true,
                });
            }
        }
        // Claimed first, so the grader cannot start it meanwhile.
        if !spool.claim(&name).map_err(GraderFault::from)? {
            return Err(GraderError::Running(id));
        }
        let bytes = spool
            .read(State::Active, &name)
            .map_err(GraderFault::from)?;
        spool
            .fail(State::Active, &name, &id, &bytes, REASON)
            .map_err(GraderFault::from)?;
        info!(job_id = %id, "cancelled by staff");
        if notify && let Ok(ev) = Event::from_bytes(&bytes) {
            let mut r = result_without_run(
                &ev,
                &cfg.grader.runner.to_string(),
                None,
                Verdict::new(Status::Error, format!("not graded: {REASON}")),
            );
            r.stdout = crate::result::Captured::from_bytes(
                format!("This push was not graded: {REASON}.\n").into_bytes(),
                1 << 16,
            );
            crate::deliver::enqueue_email(cfg, spool, &ev, &r).map_err(GraderFault::from)?;
        }
        out.push((id, Moved::Cancelled));
    }
    Ok(out)
}

/// Make jobs due now: a waiting job's next try becomes now; a held job
/// goes to `incoming/`; a job in `failed/` goes back to `incoming/` (its
/// crash and attempt counts reset).
pub fn retry(spool: &Spool, jobs: &[String]) -> Result<Vec<(String, Moved)>, GraderError> {
    let mut out = Vec::new();
    for id in jobs {
        let (id, state) = locate(spool, id)?;
        let name = format!("{id}.json");
        match state {
            State::Incoming => {
                if !spool.claim(&name).map_err(GraderFault::from)? {
                    return Err(GraderError::Running(id));
                }
                let bytes = spool
                    .read(State::Active, &name)
                    .map_err(GraderFault::from)?;
                let mut ev = Event::from_bytes(&bytes).map_err(|e| GraderError::RecordJson {
                    path: spool.path(State::Active, &name),
                    source: e,
                })?;
                ev.not_before = None;
                spool
                    .requeue(&name, Some(&ev.to_bytes()))
                    .map_err(GraderFault::from)?;
            }
            // Held for a test repository staff know is there (or want
            // tried anyway): graded now.
            State::Held => {
                spool.release(&name).map_err(GraderFault::from)?;
            }
            State::Failed => {
                let (mut ev, _) = read_record(spool, &id)?;
                ev.crashes = 0;
                ev.infra_attempts = 0;
                ev.not_before = None;
                ev.last_error = None;
                spool
                    .revive(&id, &ev.to_bytes())
                    .map_err(GraderFault::from)?;
            }
            State::Active => return Err(GraderError::Running(id)),
            _ => {
                return Err(GraderError::NotWaiting {
                    job: id,
                    finished: true,
                });
            }
        }
        info!(job_id = %id, "made due now by staff");
        out.push((id, Moved::DueNow));
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
/// runner, image, limits. Nothing is recorded, and course policy is not
/// asked again.
pub async fn replay(cfg: Arc<Config>, spool: Arc<Spool>, job: &str) -> Result<Replay, GraderError> {
    let (ev, original) = read_record(&spool, job)?;
    let original = original.ok_or_else(|| GraderError::NoResult(job.to_string()))?;
    let tests_sha = original
        .tests_sha
        .clone()
        .ok_or_else(|| GraderError::NoTestsSha {
            job: job.to_string(),
            status: original.status,
        })?;
    let kind: RunnerKind = original
        .runner
        .parse()
        .map_err(GraderError::UnknownRunner)?;
    let runner = sandbox::build_runner(&cfg, kind)?;
    let limits = original
        .limits
        .clone()
        .unwrap_or_else(|| limits_for(&cfg, &ev.project.name));
    let points = JobPlan::of(&cfg, &ev.project.name).junit_points;
    let g = Grader::for_replay(cfg, spool)?;
    let mut replay_ev = ev.clone();
    replay_ev.job_id = format!("replay-{}", crate::spool::new_job_id());
    let cancel = CancellationToken::new();
    let contract = contract_of(&original);
    let fetched = g
        .fetch(&replay_ev, Some(&tests_sha), Instant::now(), &cancel)
        .await?;
    let ready = match fetched {
        Ok(f) => g.lay_tests(f, contract).await?,
        Err(s) => Err(s),
    };
    let replayed = match ready {
        Err(s) => {
            let mut r = g.bare_result(&ev, s.tests_sha, s.verdict);
            r.limits = Some(limits.clone());
            r
        }
        Ok((f, laid)) => {
            let spec = RunSpec {
                image: original.image_id.clone().or(original.image.clone()),
                ..f.ws.spec(
                    &replay_ev.job_id,
                    job_env(&ev, &f.tests_sha),
                    &limits,
                    contract,
                    laid,
                )
            };
            let out = runner.run(&spec, &cancel).await?;
            let harness = harness_results(&spec, &points);
            drop(f.ws);
            let mut r = result_from_run(&ev, Some(f.tests_sha), &limits, out, harness);
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
