//! Runners: where `test_all` executes, behind one interface.
//!
//! A runner gets a prepared workspace and limits, runs `./test_all` in it,
//! and reports how it ended ([`Termination`]) with its capped output. It
//! never reads the summary, never touches the spool or the gradebook. The
//! split that matters: `Ok(RunOutcome)` is a verdict on the student's code
//! (including timeouts and memory kills); `Err(SandboxError)` is the
//! grader's own fault (engine down, setup failed) and is never charged to
//! the student.
//!
//! Files: [`spec`] (the vocabulary every runner imports: `RunSpec`,
//! `RunOutcome`, `Runner`, `SandboxError`, the shared names), the runners
//! [`none`], [`docker`], [`native`] and [`slurm`], [`init`] (the host side
//! of `lg-init`, the helper inside every isolating sandbox),
//! [`results_stream`] (the results `lg-init` sends back), [`output`]
//! (bounded capture of a stream) and [`jobdir`] (the files by which a job
//! travels to `labgrader sandbox --job-dir` and its outcome comes back).
//! This file only declares, re-exports and builds runners
//! ([`build_runner`]).

pub mod docker;
pub mod init;
pub mod jobdir;
pub mod native;
pub mod none;
pub mod output;
pub mod results_stream;
pub mod slurm;
pub mod spec;

use std::sync::Arc;

pub use crate::config::Contract;
pub use crate::result::{Captured, Limits, Termination};
pub use spec::{
    ENV_RESULTS, ENV_WORKSPACE, RESULTS_BYTES, RESULTS_FILES, RUN_AS_STUDENT, RunOutcome, RunSpec,
    Runner, SAFE_PATH, SandboxError, TEST_COMMAND,
};

/// Who a runner's leftovers belong to: the spool directory, one grader
/// per spool (absolute when it exists, so two spellings of it agree).
fn owner_of(cfg: &crate::config::Config) -> String {
    let dir = &cfg.spool.dir;
    dir.canonicalize()
        .unwrap_or_else(|_| dir.clone())
        .display()
        .to_string()
}

/// Build the runner of `kind` from `cfg`: the one place runners are
/// constructed (the grader daemon, `grade` and `replay` all call it).
///
/// `auto` picks docker when its engine answers, else native when the host
/// supports it, else refuses: it never falls back to `none`, which has no
/// isolation.
pub fn build_runner(
    cfg: &crate::config::Config,
    kind: crate::config::RunnerKind,
) -> Result<Arc<dyn Runner>, SandboxError> {
    use crate::config::RunnerKind;
    match kind {
        RunnerKind::None => Ok(Arc::new(none::NoneRunner)),
        RunnerKind::Docker => Ok(Arc::new(
            docker::DockerRunner::connect_blocking(&cfg.docker)?.with_owner(owner_of(cfg)),
        )),
        RunnerKind::Native => Ok(Arc::new(native::NativeRunner::new(&cfg.native)?)),
        RunnerKind::Slurm => Ok(Arc::new(slurm::SlurmRunner::new(cfg)?)),
        RunnerKind::Auto => {
            let mut why = Vec::new();
            // RUNNER-ARM(auto): docker first (when its engine answers), then native.
            for k in [RunnerKind::Docker, RunnerKind::Native] {
                match build_runner(cfg, k) {
                    Ok(r) => return Ok(r),
                    Err(e) => why.push(e.to_string()),
                }
            }
            Err(SandboxError::Unavailable {
                runner: "auto".into(),
                message: format!(
                    "no sandboxed runner works on this host ({}); set [grader] runner \
                     explicitly (`none` only for trusted local trials)",
                    why.join("; ")
                ),
            })
        }
    }
}
