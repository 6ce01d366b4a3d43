//! The `none` runner: `test_all` as a plain child process. No isolation —
//! for staff trying their tests locally and for benchmarks; never chosen by
//! `auto`.
//!
//! It still does what every child needs: its own process group, stdin
//! null, a clean environment, stdout/stderr drained while waiting and
//! capped, and on timeout TERM → grace → KILL of the whole group.
//!
//! Under the trusted contract it runs `test_all` in the tests' copy, sets
//! `$LABGRADER_RESULTS` to the host results directory and puts a
//! `run-as-student` on `PATH` that only changes into the workspace: there
//! is one identity here, so nothing of the contract's protection holds;
//! it lets staff try a trusted `test_all` without a sandbox.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use chrono::Utc;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::output::{SharedCapture, collect, spawn_drain};
use super::spec::{
    ENV_RESULTS, ENV_WORKSPACE, RUN_AS_STUDENT, RunOutcome, RunSpec, Runner, SAFE_PATH,
    SandboxError, TEST_COMMAND,
};
use crate::config::Contract;
use crate::result::Termination;

/// Time between TERM and KILL of the process group.
const KILL_GRACE: Duration = Duration::from_millis(500);
/// After the child exits, how long descendants may keep the pipes open
/// before we stop reading (a daemonized grandchild must not hang the job).
const PIPE_LINGER: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub struct NoneRunner;

#[async_trait::async_trait]
impl Runner for NoneRunner {
    fn name(&self) -> &'static str {
        "none"
    }

    async fn run(
        &self,
        spec: &RunSpec,
        cancel: &CancellationToken,
    ) -> Result<RunOutcome, SandboxError> {
        let path = match spec.contract {
            Contract::Stdout => SAFE_PATH.to_string(),
            Contract::Trusted => {
                let bin = write_shim(&spec.scratch).map_err(|e| SandboxError::Setup {
                    step: "write the run-as-student shim",
                    message: e.to_string(),
                })?;
                format!("{}:{SAFE_PATH}", bin.display())
            }
        };
        let mut cmd = Command::new(TEST_COMMAND);
        cmd.current_dir(spec.harness_dir())
            .env_clear()
            .env("PATH", path)
            .env("HOME", &spec.workspace)
            .env("LANG", "C.UTF-8")
            .env(ENV_WORKSPACE, &spec.workspace)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if spec.contract == Contract::Trusted {
            cmd.env(ENV_RESULTS, &spec.results);
        }
        let started_at = Utc::now();
        let mut child = spawn_retrying(&mut cmd)
            .await
            .map_err(|e| SandboxError::Setup {
                step: "spawn test_all",
                message: e.to_string(),
            })?;
        let pgid = child.id().map(|id| Pid::from_raw(id as i32));
        let limit = spec.limits.output;
        let (out, err) = (SharedCapture::default(), SharedCapture::default());
        let out_task = spawn_drain(child.stdout.take().expect("piped"), limit, &out);
        let err_task = spawn_drain(child.stderr.take().expect("piped"), limit, &err);

        let deadline = tokio::time::sleep(spec.limits.timeout);
        tokio::pin!(deadline);
        let (status, timed_out) = tokio::select! {
            s = child.wait() => (s?, false),
            _ = &mut deadline => {
                kill_group(pgid, &mut child).await;
                (child.wait().await?, true)
            }
            _ = cancel.cancelled() => {
                kill_group(pgid, &mut child).await;
                let _ = child.wait().await;
                return Err(SandboxError::Cancelled);
            }
        };
        // Whatever is left of the group (background children) goes too.
        if let Some(pg) = pgid {
            let _ = killpg(pg, Signal::SIGKILL);
        }
        let stdout = collect(out_task, &out, PIPE_LINGER).await;
        let stderr = collect(err_task, &err, PIPE_LINGER).await;
        let termination = if timed_out {
            Termination::Timeout
        } else if let Some(code) = status.code() {
            Termination::Exited { code }
        } else {
            Termination::Signaled {
                signal: status.signal().unwrap_or(0),
            }
        };
        Ok(RunOutcome::without_image(
            self.name(),
            termination,
            stdout,
            stderr,
            started_at,
        ))
    }
}

/// Spawn, retrying briefly on ETXTBSY: the workspace's `test_all` was just
/// written by this process, and a child forked by another thread at that
/// moment (git for another job) holds the write descriptor until it execs.
async fn spawn_retrying(cmd: &mut Command) -> std::io::Result<tokio::process::Child> {
    let mut attempt = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < 50 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

/// TERM the group, give it a moment, then KILL it.
async fn kill_group(pgid: Option<Pid>, child: &mut tokio::process::Child) {
    if let Some(pg) = pgid {
        let _ = killpg(pg, Signal::SIGTERM);
        if tokio::time::timeout(KILL_GRACE, child.wait()).await.is_ok() {
            let _ = killpg(pg, Signal::SIGKILL);
            return;
        }
        let _ = killpg(pg, Signal::SIGKILL);
    }
    let _ = child.start_kill();
}

/// Write `<scratch>/bin/run-as-student`, which runs its arguments in the
/// workspace as the same user (no identity change without a sandbox).
fn write_shim(scratch: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let bin = scratch.join("bin");
    std::fs::create_dir_all(&bin)?;
    let shim = bin.join(RUN_AS_STUDENT);
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\n# labgrader's none runner: no isolation, same user.\n\
             [ $# -gt 0 ] || {{ echo 'usage: {RUN_AS_STUDENT} CMD [ARG...]' >&2; exit 2; }}\n\
             cd \"${ENV_WORKSPACE}\" || exit 125\nexec \"$@\"\n"
        ),
    )?;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755))?;
    Ok(bin)
}
