//! The `regrade` and `replay` subcommands: their arguments, the progress
//! bar of a regrade batch, and the table of `replay --all`. The choice of
//! jobs, the batch and the replay itself are the grader's
//! ([`crate::grader::batch`], [`crate::grader::replay`]); this file only
//! parses, calls and prints.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::daemon::existing_spool;
use crate::grader::batch::{self, RegradePolicy, RegradeRequest, Tracker};

#[derive(Debug, clap::Args)]
pub struct RegradeArgs {
    /// Job ids.
    pub jobs: Vec<String>,
    /// Every finished job of this project (namespace/name).
    #[arg(long, conflicts_with = "assignment")]
    pub project: Option<String>,
    /// Every student's submissions of this assignment (the
    /// `[assignments.NAME]` key, or the NAME of `NAME-test`), as
    /// `--policy` chooses, in the low-priority lane.
    #[arg(long, conflicts_with = "jobs")]
    pub assignment: Option<String>,
    /// Which submissions of each student: latest, best or all.
    #[arg(long, requires = "assignment", value_parser = str::parse::<RegradePolicy>)]
    pub policy: Option<RegradePolicy>,
    /// Only this student (namespace, or project path); repeatable.
    #[arg(long = "student", requires = "assignment")]
    pub students: Vec<String>,
    /// Only submissions received since T (RFC 3339, or a duration ago: `2h`).
    #[arg(long, requires = "assignment")]
    pub since: Option<String>,
    /// List what would be queued; queue nothing.
    #[arg(long, requires = "assignment")]
    pub dry_run: bool,
    /// Return once queued, without the progress bar.
    #[arg(long, requires = "assignment")]
    pub detach: bool,
    /// Email the students their new results (default: the callback and
    /// commit status only; the student was emailed once already).
    #[arg(long, requires = "assignment")]
    pub notify: bool,
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The job to run again.
    #[arg(required_unless_present = "all")]
    pub job: Option<String>,
    /// Every current job of `--assignment`: print those whose grade differs.
    #[arg(long, requires = "assignment", conflicts_with = "job")]
    pub all: bool,
    #[arg(long, requires = "all")]
    pub assignment: Option<String>,
}

fn parse_since(s: &str) -> Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let ago = crate::config::parse_duration(s).map_err(|e| {
        anyhow::anyhow!(
            "--since {s:?}: neither RFC 3339 (2026-12-01T18:00:00Z) nor a duration ({e})"
        )
    })?;
    Ok(Utc::now() - chrono::Duration::from_std(ago).context("--since: too long ago")?)
}

pub fn regrade(cfg: &Config, args: RegradeArgs) -> Result<ExitCode> {
    let spool = existing_spool(cfg)?;
    let Some(assignment) = args.assignment else {
        for (old, new) in crate::grader::regrade(&spool, &args.jobs, args.project.as_deref())? {
            println!("{old} -> {new}");
        }
        return Ok(ExitCode::SUCCESS);
    };
    let Some(policy) = args.policy else {
        bail!("--assignment needs --policy latest, best or all");
    };
    let req = RegradeRequest {
        assignment,
        policy,
        students: args.students,
        since: args.since.as_deref().map(parse_since).transpose()?,
        notify: args.notify,
    };
    let planned = batch::plan(cfg, &spool, &req)?;
    if args.dry_run {
        println!(
            "would regrade {} submissions of {} (policy {}):",
            planned.len(),
            req.assignment,
            req.policy
        );
        for p in &planned {
            println!(
                "  {}  {}  {}  {}  {}",
                p.job_id,
                p.project,
                &p.student_sha[..p.student_sha.len().min(8)],
                grade(p.status, p.grade),
                p.received_at.to_rfc3339()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if planned.is_empty() {
        println!("nothing to regrade in {}", req.assignment);
        return Ok(ExitCode::SUCCESS);
    }
    let file = batch::queue(&spool, &req, &planned)?;
    println!(
        "batch {}: {} jobs of {} queued (policy {}); `labgrader queue` shows its progress",
        file.batch,
        file.jobs.len(),
        file.assignment,
        file.policy
    );
    if args.detach {
        return Ok(ExitCode::SUCCESS);
    }
    let bar = indicatif::ProgressBar::new(file.jobs.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} done, {msg}, ETA {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(file.assignment.clone());
    let mut tracker = Tracker::default();
    let p = loop {
        let p = tracker.progress(&spool, &file);
        bar.set_position(p.done as u64);
        bar.set_message(format!("{} failed", p.failed));
        if p.finished() {
            break p;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    bar.finish();
    println!(
        "batch {}: {} regraded, {} not graded",
        p.batch,
        p.done - p.failed,
        p.failed
    );
    Ok(if p.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn grade(s: crate::result::Status, g: Option<f64>) -> String {
    match g {
        Some(g) => format!("{s}, grade {g}"),
        None => format!("{s}, no grade"),
    }
}

pub fn replay(cfg: Arc<Config>, args: ReplayArgs) -> Result<ExitCode> {
    let spool = Arc::new(existing_spool(&cfg)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    if args.all {
        let assignment = args.assignment.expect("clap requires --assignment");
        let rows = crate::grader::batch::current_jobs(&spool, &assignment)?;
        let mut differ = Vec::new();
        for job in &rows {
            let r = rt.block_on(crate::grader::replay(cfg.clone(), spool.clone(), job));
            match r {
                Ok(r) if r.same => {}
                Ok(r) => differ.push((
                    r.job_id,
                    grade(r.original_status, r.original_grade),
                    grade(r.replay.status, r.replay.grade_total),
                )),
                Err(e) => differ.push((job.clone(), "-".into(), format!("cannot replay: {e}"))),
            }
        }
        println!(
            "{}: {} jobs replayed, {} differ",
            assignment,
            rows.len(),
            differ.len()
        );
        if !differ.is_empty() {
            println!("{:<26}  {:<24}  replayed", "job", "recorded");
            for (job, was, now) in &differ {
                println!("{job:<26}  {was:<24}  {now}");
            }
            return Ok(ExitCode::from(2));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let job = args.job.expect("clap requires a job");
    let r = rt.block_on(crate::grader::replay(cfg, spool, &job))?;
    println!("job {}", r.job_id);
    println!("  recorded: {}", grade(r.original_status, r.original_grade));
    println!(
        "  replayed: {} (student {}, tests {}, runner {})",
        grade(r.replay.status, r.replay.grade_total),
        r.replay.student_sha,
        r.replay.tests_sha.as_deref().unwrap_or("-"),
        r.replay.runner
    );
    if let Some(reason) = &r.replay.reason {
        println!("  reason:   {reason}");
    }
    if r.same {
        println!("same grade");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("DIFFERENT grade");
        Ok(ExitCode::from(2))
    }
}
