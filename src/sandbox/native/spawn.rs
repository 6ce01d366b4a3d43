//! Starting one run's sandbox: the pipes between the daemon and the
//! child, the clone of the init into its new namespaces, its id maps, its
//! cgroup and its release. It never plans the sandbox (`layout` does) and
//! never waits for or judges the run (`supervise` does).

use std::os::fd::OwnedFd;
use std::sync::Arc;

use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode as FileMode;
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

use super::cgroup::JobCgroup;
use super::ids::{self, Ranges, Writer};
use super::plan::Plan;
use super::spawner::Spawner;
use crate::sandbox::spec::SandboxError;

/// The child's ends of the pipes (moved into the plan).
pub(super) struct ChildEnds {
    pub(super) stdin: OwnedFd,
    pub(super) stdout: OwnedFd,
    pub(super) stderr: OwnedFd,
    pub(super) report: OwnedFd,
    pub(super) go: OwnedFd,
    pub(super) results: OwnedFd,
}

/// The parent's ends.
pub(super) struct ParentEnds {
    pub(super) stdout: OwnedFd,
    pub(super) stderr: OwnedFd,
    pub(super) report: OwnedFd,
    pub(super) go: OwnedFd,
    pub(super) results: OwnedFd,
}

pub(super) fn pipes() -> Result<(ChildEnds, ParentEnds), SandboxError> {
    let p =
        || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| SandboxError::setup("create pipes", e));
    let (out_r, out_w) = p()?;
    let (err_r, err_w) = p()?;
    let (rep_r, rep_w) = p()?;
    let (go_r, go_w) = p()?;
    let (res_r, res_w) = p()?;
    let null = open(
        "/dev/null",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        FileMode::empty(),
    )
    .map_err(|e| SandboxError::setup("open /dev/null", e))?;
    Ok((
        ChildEnds {
            stdin: null,
            stdout: out_w,
            stderr: err_w,
            report: rep_w,
            go: go_r,
            results: res_w,
        },
        ParentEnds {
            stdout: out_r,
            stderr: err_r,
            report: rep_r,
            go: go_w,
            results: res_r,
        },
    ))
}

/// Clone the init, write its id maps, put it in the cgroup and release
/// it. Returns its host pid.
pub(super) async fn start(
    plan: Plan,
    spawner: &Arc<Spawner>,
    ranges: &Ranges,
    writer: &Writer,
    cgroup: Option<Arc<JobCgroup>>,
    go: OwnedFd,
) -> Result<Pid, SandboxError> {
    let spawner = spawner.clone();
    let (plan, pid) = tokio::task::spawn_blocking(move || {
        let pid = spawner.clone_init(&plan);
        (plan, pid)
    })
    .await
    .map_err(|e| SandboxError::setup("clone the sandbox", e))?;
    let pid = pid?;
    let kill = |pid: Pid| async move {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = tokio::task::spawn_blocking(move || waitpid(pid, Some(WaitPidFlag::__WALL))).await;
    };
    // The child waits for its maps (newuidmap, when unprivileged, is a
    // process of its own: off this thread).
    let maps = match writer {
        Writer::Direct => ids::write_maps(pid.as_raw(), ranges, writer),
        Writer::Helpers { .. } => {
            let (r, w) = (ranges.clone(), writer.clone());
            tokio::task::spawn_blocking(move || ids::write_maps(pid.as_raw(), &r, &w))
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
        }
    };
    if let Err(e) = maps {
        kill(pid).await;
        return Err(SandboxError::setup("write the user namespace id maps", e));
    }
    let release = |what| match nix::unistd::write(&go, b"g") {
        // The child already failed and exited: its report says why.
        Ok(_) | Err(nix::errno::Errno::EPIPE) => Ok(()),
        Err(e) => Err(SandboxError::setup(
            "release the sandbox",
            format!("{what}: {e}"),
        )),
    };
    let attach = async {
        release("after the id maps")?;
        // cgroup v2: the parent moves the init (an RCU grace period: off
        // this thread, while the child builds its root). v1: it moved itself.
        if let Some(cg) = cgroup.filter(|_| plan.cgroup_tasks.is_empty()) {
            tokio::task::spawn_blocking(move || cg.add(pid.as_raw()))
                .await
                .map_err(|e| SandboxError::setup("attach the job cgroup", e))?
                .map_err(|e| SandboxError::setup("attach the job cgroup", e))?;
        }
        release("after the cgroup")
    };
    if let Err(e) = attach.await {
        kill(pid).await;
        return Err(e);
    }
    drop(plan); // closes the child's ends in this process
    Ok(pid)
}
