//! Watching one run to its end: the output and results pipes, the
//! report records of the init, the deadline, the kill, the verdict
//! ([`Termination`]) and the teardown of the namespace and the job
//! cgroup. This is the [`Runner`] implementation of [`NativeRunner`]. It
//! never builds the plan (`layout`) nor clones (`spawn`).

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode as FileMode;
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use super::cgroup::{JobCgroup, Pool};
use super::layout::Staged;
use super::plan::{RECORD_LEN, Record, Step};
use super::runner::NativeRunner;
use super::spawn::{pipes, start};
use crate::config::Contract;
use crate::result::{Captured, Termination};
use crate::sandbox::init;
use crate::sandbox::output::{SharedCapture, collect, spawn_drain};
use crate::sandbox::results_stream;
use crate::sandbox::spec::{RunOutcome, RunSpec, Runner, SandboxError};

/// After the init exits, how long the pipes may stay open (only other
/// jobs' short-lived clones could hold them) before reading stops.
const PIPE_LINGER: Duration = Duration::from_secs(2);

fn spawn_pipe_drain(
    fd: OwnedFd,
    limit: u64,
    into: &SharedCapture,
) -> Result<tokio::task::JoinHandle<()>, SandboxError> {
    let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    Ok(spawn_drain(rx, limit, into))
}

fn describe_failure(
    step: u32,
    errno: i32,
    op: u32,
    ops: &[String],
    sources: &[String],
) -> SandboxError {
    let errno = nix::errno::Errno::from_raw(errno);
    let Some(step) = Step::from_u32(step) else {
        return SandboxError::setup("sandbox init", format!("unknown step {step}: {errno}"));
    };
    let what = match step {
        Step::Tree => ops
            .get(op as usize)
            .cloned()
            .unwrap_or_else(|| format!("operation {op}")),
        Step::Rlimit => format!("setrlimit(resource {op})"),
        Step::Sources => format!(
            "open {}",
            sources.get(op as usize).map(String::as_str).unwrap_or("?")
        ),
        s => s.syscall().to_string(),
    };
    SandboxError::setup(step.name(), format!("{what}: {}", errno.desc()))
}

#[async_trait::async_trait]
impl Runner for NativeRunner {
    fn name(&self) -> &'static str {
        "native"
    }

    async fn run(
        &self,
        spec: &RunSpec,
        cancel: &CancellationToken,
    ) -> Result<RunOutcome, SandboxError> {
        let started_at = Utc::now();
        let staged = self.stage(spec).await?;
        let cgroup = match &self.cgroups {
            Some(h) => Some(Arc::new(
                self.cgroup_pool
                    .take(h, &spec.job_id, &spec.limits)
                    .map_err(|e| SandboxError::setup("create the job cgroup", e))?,
            )),
            None => None,
        };
        let mut teardown = Teardown {
            init: None,
            cgroup: cgroup.clone(),
            pool: self.cgroup_pool.clone(),
        };
        let result = self
            .run_in(spec, &staged, cgroup, cancel, &mut teardown.init)
            .await;
        // The verdict is known; the namespace's teardown, the reap of its
        // init and the cgroup's removal need not delay it.
        drop(teardown);
        let ended = result?;
        tracing::debug!(job_id = %spec.job_id, termination = ?ended.termination, "native run finished");
        let mut outcome = RunOutcome::without_image(
            self.name(),
            ended.termination,
            ended.stdout,
            ended.stderr,
            started_at,
        );
        outcome.disk_full = ended.disk_full;
        Ok(outcome)
    }
}

/// What a run ended with.
struct Ended {
    termination: Termination,
    stdout: Captured,
    stderr: Captured,
    disk_full: bool,
}

/// Reaps the init and gives the job cgroup back to the pool (which keeps
/// it for a next job or removes it) when a run ends — also when the run's
/// future is dropped (the init then sees its report pipe lose its reader
/// and exits, and the namespace with it). On the runtime's blocking pool
/// (whose shutdown waits for it) or, outside a runtime, on a thread of its
/// own.
struct Teardown {
    init: Option<Pid>,
    cgroup: Option<Arc<JobCgroup>>,
    pool: Arc<Pool>,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        let (init, cgroup) = (self.init.take(), self.cgroup.take());
        if init.is_none() && cgroup.is_none() {
            return;
        }
        let pool = self.pool.clone();
        let work = move || {
            if let Some(pid) = init {
                let _ = waitpid(pid, Some(WaitPidFlag::__WALL));
            }
            match cgroup.map(Arc::try_unwrap) {
                Some(Ok(cg)) => pool.give_back(cg),
                // Still shared (never, once the run is over): not reused.
                Some(Err(cg)) => {
                    cg.kill_all();
                    cg.remove();
                }
                None => {}
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => drop(h.spawn_blocking(work)),
            Err(_) => drop(std::thread::spawn(work)),
        }
    }
}

impl NativeRunner {
    async fn run_in(
        &self,
        spec: &RunSpec,
        staged: &Staged,
        cgroup: Option<Arc<JobCgroup>>,
        cancel: &CancellationToken,
        init: &mut Option<Pid>,
    ) -> Result<Ended, SandboxError> {
        let (child_ends, parent) = pipes()?;
        let (mut plan, ops) = self.plan(spec, staged, child_ends, cgroup.is_some())?;
        if let Some(files) = cgroup.as_ref().and_then(|c| c.self_attach_files()) {
            for f in files {
                plan.cgroup_tasks.push(
                    open(&f, OFlag::O_WRONLY | OFlag::O_CLOEXEC, FileMode::empty()).map_err(
                        |e| {
                            SandboxError::setup(
                                "attach the job cgroup",
                                format!("open {}: {e}", f.display()),
                            )
                        },
                    )?,
                );
            }
        }
        let sources: Vec<String> = plan
            .sources
            .iter()
            .map(|(p, _)| p.to_string_lossy().into_owned())
            .collect();
        let limit = spec.limits.output;
        let (out, err) = (SharedCapture::default(), SharedCapture::default());
        let out_task = spawn_pipe_drain(parent.stdout, limit, &out)?;
        let err_task = spawn_pipe_drain(parent.stderr, limit, &err)?;
        let results_task = {
            let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(parent.results)?;
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let cap = results_stream::STREAM_MAX as u64 + 1;
                let _ = (&mut rx).take(cap).read_to_end(&mut buf).await;
                buf
            })
        };
        let mut report = tokio::net::unix::pipe::Receiver::from_owned_fd(parent.report)?;
        let pid = start(
            plan,
            &self.spawner,
            &self.ranges,
            &self.writer,
            cgroup.clone(),
            parent.go,
        )
        .await?;
        *init = Some(pid);

        let mut records = Vec::new();
        // Records up to lg-init's status (the init's last word; its own
        // exit, which tears down a copy of the daemon's address space, need
        // not be waited for), or to the end of the pipe.
        let reading = async {
            let mut recs = Vec::new();
            let mut buf = [0u8; RECORD_LEN];
            while recs.len() < 64 && report.read_exact(&mut buf).await.is_ok() {
                let r = Record::decode(&buf);
                recs.push(r);
                if matches!(r, Some(Record::Status(_))) {
                    break;
                }
            }
            recs
        };
        tokio::pin!(reading);
        let deadline = tokio::time::sleep(spec.limits.timeout);
        tokio::pin!(deadline);
        let mut timed_out = false;
        let mut cancelled = false;
        tokio::select! {
            buf = &mut reading => records = buf,
            _ = &mut deadline => timed_out = true,
            _ = cancel.cancelled() => cancelled = true,
        }
        if timed_out || cancelled {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            if let Some(cg) = &cgroup {
                let cg = cg.clone();
                let _ = tokio::task::spawn_blocking(move || cg.kill_all()).await;
            }
        }
        if timed_out || cancelled {
            // The init is dead: the pipe reaches its end at once.
            records = tokio::time::timeout(PIPE_LINGER, reading)
                .await
                .unwrap_or_default();
        }
        let stdout = collect(out_task, &out, PIPE_LINGER).await;
        let stderr = collect(err_task, &err, PIPE_LINGER).await;
        let stream = match tokio::time::timeout(PIPE_LINGER, results_task).await {
            Ok(Ok(b)) => b,
            _ => Vec::new(),
        };
        if cancelled {
            return Err(SandboxError::Cancelled);
        }

        let mut status = None;
        for record in records {
            match record {
                Some(Record::Failed { step, errno, op }) => {
                    return Err(describe_failure(step, errno, op, &ops, &sources));
                }
                Some(Record::Status(s)) => status = Some(s),
                None => {}
            }
        }
        // lg-init wrote the stream after test_all ended: without it, the
        // job never ran (or lg-init itself was killed).
        let oom = cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0);
        let results = match (!stream.is_empty())
            .then(|| results_stream::parse(&stream))
            .transpose()
        {
            Ok(r) => r,
            // Cut short by the memory limit (the OOM killer took lg-init
            // mid-write, or the job's files filled its memory): the limit
            // is the verdict, not a grader fault.
            Err(_) if oom => None,
            Err(e) => return Err(SandboxError::setup("read the results", e)),
        };
        let termination = if timed_out {
            Termination::Timeout
        } else {
            match status {
                Some(s) if libc::WIFEXITED(s) => {
                    let code = libc::WEXITSTATUS(s);
                    if code == init::EXIT_SETUP && results.is_none() {
                        return Err(lg_init_failure(&stderr));
                    }
                    match code {
                        129..=192 => Termination::Signaled { signal: code - 128 },
                        code => Termination::Exited { code },
                    }
                }
                Some(s) if libc::WIFSIGNALED(s) => Termination::Signaled {
                    signal: libc::WTERMSIG(s),
                },
                _ if oom => Termination::MemoryLimit,
                _ => {
                    return Err(SandboxError::setup(
                        "sandbox init",
                        "the init ended without reporting lg-init's status",
                    ));
                }
            }
        };
        // An OOM kill anywhere in the job names the limit, even when
        // test_all survived it (docker and Slurm say the same).
        let termination = match termination {
            Termination::Exited { .. } | Termination::Signaled { .. } if oom => {
                Termination::MemoryLimit
            }
            t => t,
        };
        let mut disk_full = false;
        if let Some(r) = results {
            disk_full = r.disk_full();
            if spec.contract == Contract::Trusted {
                std::fs::create_dir_all(&spec.results)
                    .and_then(|_| results_stream::write_into(&spec.results, &r))
                    .map_err(|e| {
                        SandboxError::setup(
                            "leave the results",
                            format!("{}: {e}", spec.results.display()),
                        )
                    })?;
            }
        }
        Ok(Ended {
            termination,
            stdout,
            stderr,
            disk_full,
        })
    }
}

/// lg-init could not set the job up: its last `lg-init:` line on stderr
/// says where (`setup failed at STEP: CALL: ERROR`).
fn lg_init_failure(stderr: &Captured) -> SandboxError {
    let text = String::from_utf8_lossy(&stderr.bytes);
    let line = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("lg-init: "))
        .unwrap_or("exited 125 without a reason");
    match line
        .strip_prefix("setup failed at ")
        .and_then(|r| r.split_once(": "))
    {
        Some((step, rest)) => {
            let step = LG_INIT_STEPS
                .iter()
                .find(|s| **s == step)
                .copied()
                .unwrap_or("lg-init");
            SandboxError::setup(step, rest)
        }
        None => SandboxError::setup("lg-init", line),
    }
}

/// lg-init's step names (its errors name them; `SandboxError::Setup`
/// wants a static one).
const LG_INIT_STEPS: &[&str] = &[
    "arrange descriptors",
    "read the nonce",
    "read the test paths",
    "copy the workspace in",
    "copy the tests in",
    "hide the staged trees",
    "lay out the workspace",
    "lay out the harness",
    "open the broker",
    "become the job's reaper",
    "watch the job",
    "start test_all",
];
