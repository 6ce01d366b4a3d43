//! A trusted-contract job graded locally (`grader::grade_local`, the path
//! `labgrader grade` takes: workspace and harness laid out as the daemon
//! does, the runner, then the verdict from `results.json`), for the tests
//! where a student attacks the harness.

use std::path::Path;
use std::time::Duration;

use labgrader::config::{Config, Contract, RunnerKind};
use labgrader::result::JobResult;

use super::files::write_mode;

/// Grade the student tree laid by `lay` with the harness `test_all`, and,
/// when `secret` is given, a hidden `expected.txt` holding it beside the
/// harness. Panics naming the runner if the job cannot be graded.
pub async fn grade(
    kind: RunnerKind,
    cfg: &Config,
    lay: impl FnOnce(&Path),
    test_all: &str,
    secret: Option<&str>,
    timeout: u64,
) -> JobResult {
    let student = tempfile::tempdir().unwrap();
    let tests = tempfile::tempdir().unwrap();
    lay(student.path());
    write_mode(&tests.path().join("test_all"), test_all, 0o755);
    if let Some(secret) = secret {
        write_mode(&tests.path().join("expected.txt"), secret, 0o644);
    }
    labgrader::grader::grade_local(
        cfg,
        student.path(),
        tests.path(),
        Some(kind),
        Some(Duration::from_secs(timeout)),
        Some(Contract::Trusted),
    )
    .await
    .unwrap_or_else(|e| panic!("{kind} runner: {e}"))
}
