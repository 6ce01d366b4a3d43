//! The verdict of a run, and the one builder of a job's result.
//!
//! Owns how a finished run becomes a status, a reason and a grade
//! ([`verdict`]: a limit that stopped the run, then `results.json` under
//! the trusted contract or stdout's last summary under the stdout
//! contract), and every [`JobResult`] the grader writes: one that ran
//! ([`result_from_run`]) is built over one that did not
//! ([`result_without_run`], from `result`, where the stages that end a
//! job without a run find it too). Pure: it never touches the spool, the
//! gradebook or the sandbox, and never decides whose fault a failure is
//! ([`super::blame`] does).

use std::collections::BTreeMap;

use crate::config::Contract;
use crate::event::Event;
use crate::result::{JobResult, Limits, Status, Termination};
use crate::results::{self, ResultsError, TestResults};
use crate::sandbox::{RunOutcome, RunSpec};
use crate::summary::{self, SummaryError};

use crate::result::Verdict;
pub use crate::result::result_without_run;

/// Key of `JobResult::extra` naming a trusted-contract job (so that
/// `replay` runs it the same way).
const CONTRACT_KEY: &str = "contract";

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
/// checked (else `junit.xml`, its testcases priced by `points`). Call it
/// before the job directory is removed.
pub fn harness_results(
    spec: &RunSpec,
    points: &results::junit::Points,
) -> Option<Result<TestResults, ResultsError>> {
    (spec.contract == Contract::Trusted).then(|| results::read_with(&spec.results, points))
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
                    "{why}; grade {} from the {} written before that",
                    r.grade_total,
                    r.file()
                ),
                Some(Grade::Results(r.clone())),
            ),
            (Some((status, why)), Err(e)) => (status, format!("{why}; {e}"), None),
            (None, Ok(r)) => (
                Status::Graded,
                format!("grade {} from {}", r.grade_total, r.file()),
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
    // Keys dropped past the summary's limit: said, never a failure.
    let dropped = parsed
        .as_ref()
        .ok()
        .and_then(summary::Summary::dropped_note)
        .map(|n| format!("; {n}"))
        .unwrap_or_default();
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
                "{why}; grade {} from the last complete summary printed before that{dropped}",
                s.grade_total
            ),
            Some(Grade::Summary(s)),
        ),
        (Some((status, why)), Err(e)) => (status, format!("{why}; {e}{cut}"), None),
        (None, Ok(s)) => (
            Status::Graded,
            format!("grade {}{dropped}", s.grade_total),
            Some(Grade::Summary(s)),
        ),
        (None, Err(e @ SummaryError::OutputCut { .. })) => {
            (Status::OutputLimit, format!("{e}; {how}"), None)
        }
        (None, Err(e)) => (Status::NoGrade, format!("{e}{cut}; {how}"), None),
    }
}

/// The result of a finished run of `ev` (see [`verdict`]).
pub fn result_from_run(
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
        ..result_without_run(ev, &out.runner, tests_sha, Verdict::new(status, reason))
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
pub fn note_contract(r: &mut JobResult, contract: Contract) {
    if contract == Contract::Trusted {
        r.extra.insert(
            CONTRACT_KEY.into(),
            serde_json::Value::String(contract.to_string()),
        );
    }
}

/// The contract a recorded result was graded under (see [`note_contract`]).
pub fn contract_of(r: &JobResult) -> Contract {
    match r.extra.get(CONTRACT_KEY).and_then(|v| v.as_str()) {
        Some("trusted") => Contract::Trusted,
        _ => Contract::Stdout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::Captured;
    use chrono::Utc;

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
        super::super::limits::limits_for(&crate::config::Config::default(), "lab1")
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

    /// A flood of summary keys: graded, the keys past the limit dropped
    /// and the reason saying so.
    #[test]
    fn a_summary_key_flood_is_graded_with_a_note() {
        let mut text = String::from("<summary>\ngrade_total = 55\n");
        for i in 0..5_000 {
            text.push_str(&format!("k{i} = 1\n"));
        }
        text.push_str("</summary>\n");
        let out = outcome(Termination::Exited { code: 0 }, text.as_bytes());
        let (status, reason, s) = verdict(&out, &limits(), None);
        assert_eq!(status, Status::Graded);
        assert_eq!(s.unwrap().total(), 55.0);
        assert!(
            reason.starts_with("grade 55; 4900 summary keys past the first 100 were dropped"),
            "{reason}"
        );
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
