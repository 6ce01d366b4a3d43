//! Regrade batches: `labgrader regrade --assignment NAME --policy …`.
//!
//! Owns choosing which submissions of an assignment to grade again
//! (`latest`, `best` or `all`, each submission counted once however often
//! it was regraded), queueing them as one batch of regrade events (the low
//! priority lane; no quota; no second email unless `--notify`), the batch
//! file `<spool>/regrades/<batch>.json` that lists them, and a batch's
//! progress read back from the spool (`done/`, `failed/`). It never grades
//! and never moves a job: it only publishes new events into `incoming/`,
//! each written durably after the batch file that names it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::config::Config;
use crate::event::{HookSource, Regrade};
use crate::gradebook::{self, Filter, Gradebook, REGRADE_OF, Select};
use crate::result::{JobResult, Status};
use crate::spool::{Spool, State};

/// The directory of batch files, under the spool.
pub const BATCH_DIR: &str = "regrades";
const BATCH_SCHEMA: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RegradeError {
    #[error(
        "no assignment {0:?}: it is neither an [assignments.NAME] key nor the name of a graded \
         project (the NAME of NAME-test); check the spelling with `labgrader gradebook export`"
    )]
    UnknownAssignment(String),
    #[error("{0:?} is not an assignment name (letters, digits, '.', '_', '-')")]
    BadAssignment(String),
    #[error(transparent)]
    Gradebook(#[from] gradebook::GradebookError),
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
    #[error(transparent)]
    Record(#[from] super::GraderError),
    #[error("cannot write the batch file {path}: {source}")]
    BatchFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Which submissions of each student project a regrade takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegradePolicy {
    /// The most recently received submission.
    Latest,
    /// The submission with the highest grade (ties: the earlier one).
    Best,
    /// Every submission.
    All,
}

impl std::str::FromStr for RegradePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "latest" => Ok(RegradePolicy::Latest),
            "best" => Ok(RegradePolicy::Best),
            "all" => Ok(RegradePolicy::All),
            _ => Err(format!("{s:?}: the policy is latest, best or all")),
        }
    }
}

impl fmt::Display for RegradePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RegradePolicy::Latest => "latest",
            RegradePolicy::Best => "best",
            RegradePolicy::All => "all",
        })
    }
}

/// What staff asked to regrade.
#[derive(Debug, Clone)]
pub struct RegradeRequest {
    pub assignment: String,
    pub policy: RegradePolicy,
    /// Only these students (a project's namespace, its last component, or
    /// the project path); empty: everyone.
    pub students: Vec<String>,
    /// Only submissions received at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Email the students their new results.
    pub notify: bool,
}

/// One submission chosen: its newest grading so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Planned {
    /// The row graded again (the newest grading of the submission).
    pub job_id: String,
    /// The submission's first grading.
    pub of: String,
    pub project: String,
    pub student_sha: String,
    pub tests_sha: Option<String>,
    pub status: Status,
    pub grade: Option<f64>,
    pub received_at: DateTime<Utc>,
}

/// One job of a batch: the new job and what it grades again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchJob {
    pub id: String,
    pub regrades: String,
    pub of: String,
    pub project: String,
}

/// `<spool>/regrades/<batch>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchFile {
    pub schema: u32,
    pub batch: String,
    pub assignment: String,
    pub policy: RegradePolicy,
    pub notify: bool,
    pub created_at: DateTime<Utc>,
    pub jobs: Vec<BatchJob>,
}

/// How far a batch got.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Progress {
    pub batch: String,
    pub assignment: String,
    pub total: usize,
    /// Finished: in `done/` or `failed/`.
    pub done: usize,
    /// Of those finished, not graded (an error, the grader's fault, or
    /// refused).
    pub failed: usize,
}

impl Progress {
    pub fn finished(&self) -> bool {
        self.done >= self.total
    }
}

/// The assignment of a project: its repository's own name.
fn assignment_of(project: &str) -> &str {
    project.rsplit('/').next().unwrap_or(project)
}

/// Choose what `req` regrades, from the gradebook under `spool`.
pub fn plan(
    cfg: &Config,
    spool: &Spool,
    req: &RegradeRequest,
) -> Result<Vec<Planned>, RegradeError> {
    let name = &req.assignment;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(RegradeError::BadAssignment(name.clone()));
    }
    let gb = Gradebook::open(&gradebook::path_in(spool.root()))?;
    let filter = Filter {
        project: None,
        assignment: Some(name.clone()),
    };
    let rows = gb.select(Select::All, &filter)?;
    if rows.is_empty() && !cfg.assignments.contains_key(name) {
        return Err(RegradeError::UnknownAssignment(name.clone()));
    }
    Ok(choose(&rows, req))
}

/// The pure choice of [`plan`]: each submission once (its newest row),
/// filtered, then per project by policy; oldest submission first.
fn choose(rows: &[JobResult], req: &RegradeRequest) -> Vec<Planned> {
    let mut newest: BTreeMap<String, Planned> = BTreeMap::new();
    for r in rows {
        if assignment_of(&r.project) != req.assignment {
            continue;
        }
        let of = r
            .extra
            .get(REGRADE_OF)
            .and_then(|v| v.as_str())
            .unwrap_or(&r.job_id)
            .to_string();
        let p = Planned {
            job_id: r.job_id.clone(),
            of: of.clone(),
            project: r.project.clone(),
            student_sha: r.student_sha.clone(),
            tests_sha: r.tests_sha.clone(),
            status: r.status,
            grade: r.grade_total,
            received_at: r.received_at,
        };
        match newest.get(&of) {
            Some(old) if old.job_id >= p.job_id => {}
            _ => {
                newest.insert(of, p);
            }
        }
    }
    let wanted = |p: &Planned| {
        let ns = p.project.rsplit_once('/').map_or("", |(ns, _)| ns);
        let last = ns.rsplit('/').next().unwrap_or(ns);
        (req.students.is_empty()
            || req
                .students
                .iter()
                .any(|s| s == ns || s == last || *s == p.project))
            && req.since.is_none_or(|t| p.received_at >= t)
    };
    let candidates: Vec<Planned> = newest.into_values().filter(wanted).collect();
    let mut out: Vec<Planned> = match req.policy {
        RegradePolicy::All => candidates,
        RegradePolicy::Latest | RegradePolicy::Best => {
            let mut per: HashMap<String, Planned> = HashMap::new();
            for p in candidates {
                let better = match per.get(&p.project) {
                    None => true,
                    Some(cur) => better(req.policy, &p, cur),
                };
                if better {
                    per.insert(p.project.clone(), p);
                }
            }
            per.into_values().collect()
        }
    };
    out.sort_by(|a, b| (a.received_at, &a.of).cmp(&(b.received_at, &b.of)));
    out
}

/// Whether `p` beats `cur` for its project under `policy`.
fn better(policy: RegradePolicy, p: &Planned, cur: &Planned) -> bool {
    let later = (p.received_at, &p.of) > (cur.received_at, &cur.of);
    match policy {
        RegradePolicy::Best => match (p.grade, cur.grade) {
            (Some(a), Some(b)) if a != b => a > b,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            // Equal grades: the earlier submission; no grades: the latest.
            (Some(_), Some(_)) => !later,
            (None, None) => later,
        },
        _ => later,
    }
}

/// The current job of every submission of `assignment` (each regraded
/// submission by its newest grading), oldest first: what `replay --all`
/// runs again.
pub fn current_jobs(spool: &Spool, assignment: &str) -> Result<Vec<String>, RegradeError> {
    let gb = Gradebook::open(&gradebook::path_in(spool.root()))?;
    let filter = Filter {
        project: None,
        assignment: Some(assignment.to_string()),
    };
    let mut rows = gb.select_current(Select::All, &filter)?;
    rows.retain(|r| r.status != Status::InfraError);
    rows.sort_by(|a, b| (a.received_at, &a.job_id).cmp(&(b.received_at, &b.job_id)));
    Ok(rows.into_iter().map(|r| r.job_id).collect())
}

/// Queue `planned` as one batch: the batch file first, then one regrade
/// event per submission (the original event: same commit, same received
/// time, so deadlines hold).
pub fn queue(
    spool: &Spool,
    req: &RegradeRequest,
    planned: &[Planned],
) -> Result<BatchFile, RegradeError> {
    let batch = format!("rg-{}", crate::spool::new_job_id());
    let mut events = Vec::new();
    let mut jobs = Vec::new();
    for p in planned {
        let (mut ev, _) = super::read_record(spool, &p.job_id)?;
        ev.job_id = crate::spool::new_job_id();
        ev.source = HookSource::Local;
        ev.crashes = 0;
        ev.infra_attempts = 0;
        ev.fetch_timeouts = 0;
        ev.not_before = None;
        ev.last_error = None;
        ev.regrade = Some(Regrade {
            batch: batch.clone(),
            of: p.of.clone(),
            notify: req.notify,
            queued_at: Some(Utc::now()),
        });
        jobs.push(BatchJob {
            id: ev.job_id.clone(),
            regrades: p.job_id.clone(),
            of: p.of.clone(),
            project: p.project.clone(),
        });
        events.push(ev);
    }
    let file = BatchFile {
        schema: BATCH_SCHEMA,
        batch: batch.clone(),
        assignment: req.assignment.clone(),
        policy: req.policy,
        notify: req.notify,
        created_at: Utc::now(),
        jobs,
    };
    write_batch(spool.root(), &file)?;
    for ev in &events {
        spool.publish(State::Incoming, &ev.file_name(), &ev.to_bytes())?;
    }
    info!(batch = %batch, assignment = %req.assignment, policy = %req.policy,
        jobs = events.len(), notify = req.notify, "queued a regrade batch");
    Ok(file)
}

fn batch_dir(root: &Path) -> PathBuf {
    root.join(BATCH_DIR)
}

fn write_batch(root: &Path, file: &BatchFile) -> Result<(), RegradeError> {
    let dir = batch_dir(root);
    let path = dir.join(format!("{}.json", file.batch));
    let err = |source| RegradeError::BatchFile {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(err)?;
    let tmp = dir.join(format!(".{}.tmp", file.batch));
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    let mut bytes = serde_json::to_vec_pretty(file).expect("batch serializes");
    bytes.push(b'\n');
    f.write_all(&bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(())
}

/// Every batch under `spool`, oldest first (unreadable files skipped).
pub fn batches(spool: &Spool) -> Vec<BatchFile> {
    let Ok(rd) = std::fs::read_dir(batch_dir(spool.root())) else {
        return Vec::new();
    };
    let mut out: Vec<BatchFile> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    out.sort_by(|a: &BatchFile, b| a.batch.cmp(&b.batch));
    out
}

/// The progress of the batches still running or created within a day
/// (`labgrader queue`).
pub fn report(spool: &Spool) -> Vec<Progress> {
    let day_ago = Utc::now() - chrono::Duration::days(1);
    batches(spool)
        .iter()
        .map(|b| (b.created_at, Tracker::default().progress(spool, b)))
        .filter(|(at, p)| !p.finished() || *at >= day_ago)
        .map(|(_, p)| p)
        .collect()
}

/// Tracks a batch's progress, reading each finished job's status once.
#[derive(Default)]
pub struct Tracker {
    finished: HashMap<String, bool>,
}

impl Tracker {
    /// The batch's progress now.
    pub fn progress(&mut self, spool: &Spool, batch: &BatchFile) -> Progress {
        let mut p = Progress {
            batch: batch.batch.clone(),
            assignment: batch.assignment.clone(),
            total: batch.jobs.len(),
            ..Default::default()
        };
        for j in &batch.jobs {
            let ok = match self.finished.get(&j.id) {
                Some(ok) => Some(*ok),
                None => {
                    let ok = finished_ok(spool, &j.id);
                    if let Some(ok) = ok {
                        self.finished.insert(j.id.clone(), ok);
                    }
                    ok
                }
            };
            match ok {
                Some(true) => p.done += 1,
                Some(false) => {
                    p.done += 1;
                    p.failed += 1;
                }
                None => {}
            }
        }
        p
    }
}

/// `Some(graded?)` once job `id` finished (`done/` or `failed/`).
fn finished_ok(spool: &Spool, id: &str) -> Option<bool> {
    let done = spool.path(State::Done, id).join("result.json");
    if let Ok(bytes) = std::fs::read(&done) {
        let graded = serde_json::from_slice::<JobResult>(&bytes)
            .map(|r| !matches!(r.status, Status::InfraError | Status::Error))
            .unwrap_or(false);
        return Some(graded);
    }
    spool.path(State::Failed, id).is_dir().then_some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        job: &str,
        project: &str,
        minute: u32,
        grade: Option<f64>,
        of: Option<&str>,
    ) -> JobResult {
        let ev = crate::event::Event {
            schema: 1,
            job_id: job.into(),
            received_at: chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 1, 1, 10, minute, 0)
                .unwrap(),
            kind: crate::event::EventKind::Push,
            source: HookSource::ProjectHook,
            gitlab_event: "Push Hook".into(),
            delivery_key: None,
            project: crate::event::Project::from_path(None, project).unwrap(),
            pusher: crate::event::Pusher {
                id: None,
                username: None,
                name: None,
                email: None,
            },
            git_ref: "refs/heads/main".into(),
            before: crate::event::ZERO_SHA.into(),
            after: "a".repeat(40),
            commit: "a".repeat(40),
            clone_url: String::new(),
            crashes: 0,
            infra_attempts: 0,
            fetch_timeouts: 0,
            not_before: None,
            last_error: None,
            regrade: of.map(|of| Regrade {
                batch: "b".into(),
                of: of.into(),
                notify: false,
                queued_at: None,
            }),
            raw: serde_json::Value::Null,
        };
        let v = super::super::Verdict::new(Status::Graded, "ok");
        let mut r = super::super::verdict::result_without_run(&ev, "none", None, v);
        r.grade_total = grade;
        r
    }

    fn req(policy: RegradePolicy) -> RegradeRequest {
        RegradeRequest {
            assignment: "lab1".into(),
            policy,
            students: vec![],
            since: None,
            notify: false,
        }
    }

    #[test]
    fn each_submission_counts_once_by_its_newest_grading() {
        let rows = vec![
            row("01A", "c/alice/lab1", 1, Some(5.0), None),
            row("01B", "c/alice/lab1", 2, Some(3.0), None),
            // 01B regraded: its newest grading is 02B.
            row("02B", "c/alice/lab1", 2, Some(9.0), Some("01B")),
            row("01C", "c/bob/lab1", 1, None, None),
            row("01D", "c/bob/lab2", 5, Some(1.0), None),
        ];
        let ids = |p: Vec<Planned>| p.into_iter().map(|p| p.job_id).collect::<Vec<_>>();
        assert_eq!(
            ids(choose(&rows, &req(RegradePolicy::Latest))),
            ["01C", "02B"]
        );
        assert_eq!(
            ids(choose(&rows, &req(RegradePolicy::Best))),
            ["01C", "02B"]
        );
        assert_eq!(
            ids(choose(&rows, &req(RegradePolicy::All))),
            ["01A", "01C", "02B"]
        );
        let mut r = req(RegradePolicy::All);
        r.students = vec!["bob".into()];
        assert_eq!(ids(choose(&rows, &r)), ["01C"]);
        r.students = vec![];
        r.since = Some(rows[1].received_at);
        assert_eq!(ids(choose(&rows, &r)), ["02B"]);
        let p = choose(&rows, &req(RegradePolicy::Latest));
        assert_eq!(p[1].of, "01B");
    }

    #[test]
    fn best_prefers_the_higher_grade_then_the_earlier() {
        let rows = vec![
            row("01A", "c/alice/lab1", 1, Some(7.0), None),
            row("01B", "c/alice/lab1", 2, Some(7.0), None),
            row("01C", "c/alice/lab1", 3, Some(2.0), None),
        ];
        let p = choose(&rows, &req(RegradePolicy::Best));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].job_id, "01A");
    }
}
