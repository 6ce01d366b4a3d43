//! The one way labgrader runs `git`: every git process starts in its own
//! process group with stdin closed, the environment's repository overrides
//! removed (`GIT_DIR`, `GIT_WORK_TREE`, ...) and the caller's environment
//! added, runs under a timeout (or a cancellation) that kills the whole
//! group, and has its stderr captured up to [`STDERR_CAP`] bytes (the rest
//! is read and dropped, so git never blocks on a full pipe).
//!
//! It also owns what a full commit id looks like ([`is_full_sha`]).
//!
//! This module knows nothing of mirrors, URLs or tokens and builds no
//! user-facing message: callers turn a [`RunError`] or a failed [`Output`]
//! into their own errors. It never logs the environment it is given (it
//! may hold a token).

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

/// True for a full hex commit id (SHA-1 or SHA-256).
pub fn is_full_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Bytes of git's stderr kept; the rest is drained and dropped.
pub const STDERR_CAP: usize = 64 * 1024;

/// Variables that would point git at another repository or config.
const CLEARED: [&str; 4] = ["GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_CONFIG"];

/// Why a git process did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot run git: {0}")]
    Spawn(std::io::Error),
    #[error("git did not finish in time")]
    TimedOut,
    #[error("cancelled")]
    Cancelled,
}

/// What a finished git process left.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    /// Empty when the caller set stdout to null.
    pub stdout: Vec<u8>,
    /// At most [`STDERR_CAP`] bytes.
    pub stderr: Vec<u8>,
}

/// A git command: `git [-C dir] args...` with `env` added, in its own
/// process group, stdin null, stdout and stderr piped. The caller may
/// change stdout (e.g. to null) before running or spawning it.
pub fn command(
    dir: Option<&Path>,
    args: &[&str],
    env: &[(&'static str, String)],
) -> std::process::Command {
    let mut cmd = std::process::Command::new("git");
    for k in CLEARED {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = dir {
        cmd.arg("-C").arg(dir);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd
}

/// Kill the process group led by `pid` (every git helper it started).
pub fn kill_group(pid: u32) {
    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// Read `r` to its end, keeping the first `cap` bytes.
pub async fn read_capped(mut r: impl AsyncRead + Unpin, cap: usize) -> std::io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(kept);
        }
        let room = cap.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
}

/// Run `cmd` (from [`command`]) to its end, within `timeout` and until
/// `cancel`; on either, the process group is killed.
pub async fn run(
    cmd: std::process::Command,
    timeout: Duration,
    cancel: Option<&CancellationToken>,
) -> Result<Output, RunError> {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn().map_err(RunError::Spawn)?;
    let pid = child.id();
    let kill = || {
        if let Some(p) = pid {
            kill_group(p);
        }
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let finish = async {
        let out = async {
            match stdout {
                Some(s) => read_capped(s, usize::MAX).await,
                None => Ok(Vec::new()),
            }
        };
        let err = async {
            match stderr {
                Some(s) => read_capped(s, STDERR_CAP).await,
                None => Ok(Vec::new()),
            }
        };
        let (out, err) = tokio::join!(out, err);
        let status = child.wait().await?;
        Ok::<_, std::io::Error>(Output {
            status,
            stdout: out?,
            stderr: err?,
        })
    };
    let never = CancellationToken::new();
    let cancel = cancel.unwrap_or(&never);
    let done = tokio::select! {
        r = tokio::time::timeout(timeout, finish) => r,
        _ = cancel.cancelled() => { kill(); return Err(RunError::Cancelled) }
    };
    match done {
        Ok(r) => r.map_err(RunError::Spawn),
        Err(_) => {
            kill();
            Err(RunError::TimedOut)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_and_capped_stderr() {
        let out = run(
            command(None, &["--version"], &[]),
            Duration::from_secs(10),
            None,
        )
        .await
        .unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("git version"));
        let big = vec![b'x'; STDERR_CAP * 3];
        let kept = read_capped(&big[..], STDERR_CAP).await.unwrap();
        assert_eq!(kept.len(), STDERR_CAP);
    }

    #[tokio::test]
    async fn timeout_kills_the_group() {
        // `git -c alias.s='!sleep 30' s` runs a shell child: the group kill
        // must end it too, well before its 30 s.
        let started = std::time::Instant::now();
        let r = run(
            command(None, &["-c", "alias.s=!sleep 30", "s"], &[]),
            Duration::from_millis(200),
            None,
        )
        .await;
        assert!(matches!(r, Err(RunError::TimedOut)), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
