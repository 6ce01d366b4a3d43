//! The native runner itself: what one [`NativeRunner`] holds (the rootfs,
//! the student identity, the subordinate id ranges, the cgroup hierarchy)
//! and the host checks made once when it is built ([`available`]). It
//! never plans, starts or watches a run (`layout`, `spawn` and
//! `supervise` do).

use std::path::{Path, PathBuf};

use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

use super::cgroup::Hierarchy;
use super::ids::{self, Ranges, Writer};
use crate::config::NativeConfig;
use crate::sandbox::spec::SandboxError;

/// The harness identity inside the sandbox (the student's is `[native]
/// uid`/`gid`, 65534 by default).
pub const HARNESS_ID: (u32, u32) = (65533, 65533);

/// The native runner. Build with [`NativeRunner::new`].
#[derive(Debug)]
pub struct NativeRunner {
    pub(super) rootfs: PathBuf,
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// The subordinate ranges jobs' ids come from.
    pub(super) ranges: Ranges,
    /// Root writes the maps itself; otherwise newuidmap/newgidmap.
    pub(super) writer: Writer,
    pub(super) cgroups: Option<Hierarchy>,
    /// Job cgroups kept between runs with the same limits.
    pub(super) cgroup_pool: std::sync::Arc<super::cgroup::Pool>,
    pub(super) staging: PathBuf,
    /// Memory is enforced by an outer cgroup (a Slurm job's), which
    /// reports an OOM kill; without job cgroups of our own we then leave
    /// RLIMIT_DATA off, so an over-limit job is an OOM kill the outside can
    /// name instead of a failed malloc nobody can tell from a crash.
    pub(super) external_memory_limit: bool,
    /// Clones each run's init from a small process of its own.
    pub(super) spawner: std::sync::Arc<super::spawner::Spawner>,
    /// `lg-init` on the host, bound read-only into every sandbox (`None`:
    /// no exec-capable private place was found; each run writes a copy).
    pub(super) init_copy: Option<InitCopy>,
}

/// A host copy of `lg-init` in a private directory of its own (0700,
/// removed with the runner). Binding it costs a mount; writing the 1.4 MB
/// binary into every sandbox's root, and freeing it again, cost a tenth
/// of a native run's CPU.
#[derive(Debug)]
pub(super) struct InitCopy {
    dir: PathBuf,
    pub(super) file: PathBuf,
}

impl InitCopy {
    /// In the first of `$TMPDIR`, `/var/tmp` and `/run` where a private
    /// directory can be made on a file system that allows exec.
    fn make() -> Option<InitCopy> {
        use std::os::unix::fs::DirBuilderExt;
        let candidates = [std::env::temp_dir(), "/var/tmp".into(), "/run".into()];
        candidates.iter().find_map(|base| {
            let noexec = nix::sys::statvfs::statvfs(base)
                .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_NOEXEC))
                .unwrap_or(true);
            if noexec {
                return None;
            }
            let dir = base.join(format!(
                "labgrader-init-{}-{}",
                std::process::id(),
                crate::spool::new_job_id()
            ));
            // Made here, now, 0700: nobody else can have put anything in it.
            std::fs::DirBuilder::new().mode(0o700).create(&dir).ok()?;
            match crate::sandbox::init::install(&dir) {
                Ok(file) => Some(InitCopy { dir, file }),
                Err(_) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    None
                }
            }
        })
    }
}

impl Drop for InitCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Can this process create the sandbox's namespaces? `Err` says why not
/// and what to change.
pub fn available() -> Result<(), String> {
    if !Path::new("/proc/self/ns/user").exists() {
        return Err("the kernel has no user namespaces (CONFIG_USER_NS)".into());
    }
    let euid = nix::unistd::geteuid();
    let hints = || {
        let mut h = Vec::new();
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_string())
        };
        if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
            h.push("user.max_user_namespaces is 0");
        }
        if !euid.is_root() {
            if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
                h.push("kernel.unprivileged_userns_clone is 0 (run as root or set it to 1)");
            }
            if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref()
                == Some("1")
            {
                h.push(
                    "kernel.apparmor_restrict_unprivileged_userns is 1 (run as root or give \
                     labgrader an AppArmor profile with `userns`)",
                );
            }
        }
        if h.is_empty() {
            String::new()
        } else {
            format!(" ({})", h.join("; "))
        }
    };
    match probe_clone() {
        Ok(()) => Ok(()),
        Err(e) => Err(format!(
            "cannot create user, PID, mount, network, IPC and UTS namespaces as uid {euid}: \
             {e}{}",
            hints()
        )),
    }
}

/// Clone a child with every namespace; it exits at once.
fn probe_clone() -> Result<(), nix::errno::Errno> {
    extern "C" fn noop(_: *mut libc::c_void) -> libc::c_int {
        0
    }
    let mut stack = super::plan::Stack::new()?;
    // SAFETY: the child runs `noop` on its own stack and exits.
    let pid = unsafe {
        libc::clone(
            noop,
            stack.top(),
            super::plan::NS_FLAGS | libc::SIGCHLD,
            std::ptr::null_mut(),
        )
    };
    nix::errno::Errno::result(pid).map(|pid| {
        let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::__WALL));
    })
}

impl NativeRunner {
    /// Check the host and the config; refuse with the reason when the
    /// sandbox cannot be built here.
    pub fn new(cfg: &NativeConfig) -> Result<NativeRunner, SandboxError> {
        let unavailable = |message: String| SandboxError::Unavailable {
            runner: "native".into(),
            message,
        };
        available().map_err(unavailable)?;
        if cfg.uid == 0 || cfg.gid == 0 {
            return Err(unavailable(
                "[native] uid and gid must not be 0: the student would own root's files".into(),
            ));
        }
        let rootfs = cfg
            .rootfs
            .canonicalize()
            .map_err(|e| unavailable(format!("[native] rootfs {}: {e}", cfg.rootfs.display())))?;
        if !rootfs.is_dir() {
            return Err(unavailable(format!(
                "[native] rootfs {} is not a directory",
                rootfs.display()
            )));
        }
        if cfg.uid >= ids::NEEDED || cfg.gid >= ids::NEEDED || (cfg.uid, cfg.gid) == HARNESS_ID {
            return Err(unavailable(format!(
                "[native] uid and gid must be below {} and not the harness's {}:{}",
                ids::NEEDED,
                HARNESS_ID.0,
                HARNESS_ID.1
            )));
        }
        let (ranges, writer) = Self::id_ranges(cfg).map_err(unavailable)?;
        let cgroups = match Hierarchy::detect() {
            Ok(h) => {
                tracing::info!(cgroups = %h.describe(), "native runner: job cgroups");
                Some(h)
            }
            Err(reason) => {
                tracing::warn!(
                    %reason,
                    "native runner: no job cgroups; memory limited by RLIMIT_DATA, processes by \
                     RLIMIT_NPROC, and an OOM cannot be told from a crash"
                );
                None
            }
        };
        // The new root's tmpfs is mounted over this directory inside each
        // job's private mount namespace (the host never sees it).
        let staging = ["/mnt", "/tmp"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_dir())
            .ok_or_else(|| unavailable("neither /mnt nor /tmp exists to stage the root".into()))?;
        Ok(NativeRunner {
            rootfs,
            uid: cfg.uid,
            gid: cfg.gid,
            ranges,
            writer,
            cgroups,
            cgroup_pool: Default::default(),
            staging,
            external_memory_limit: false,
            spawner: super::spawner::for_runner(),
            init_copy: InitCopy::make(),
        })
    }

    /// The subordinate ranges: of `[native] subid_user` when root, of the
    /// daemon's own user otherwise (newuidmap checks the caller's).
    fn id_ranges(cfg: &NativeConfig) -> Result<(Ranges, Writer), String> {
        let euid = nix::unistd::geteuid();
        let user = if euid.is_root() {
            cfg.subid_user.clone()
        } else {
            nix::unistd::User::from_uid(euid)
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| euid.to_string())
        };
        let uid = if euid.is_root() {
            nix::unistd::User::from_name(&user)
                .ok()
                .flatten()
                .map_or(u32::MAX, |u| u.uid.as_raw())
        } else {
            euid.as_raw()
        };
        let mut own = vec![euid.as_raw(), nix::unistd::getegid().as_raw()];
        own.extend(
            nix::unistd::getgroups()
                .unwrap_or_default()
                .iter()
                .map(|g| g.as_raw()),
        );
        let ranges = ids::lookup(Path::new("/etc"), &user, uid, &own)?;
        Ok((ranges, ids::writer()?))
    }

    /// The pid of this runner's `lg-spawner`, when it runs.
    pub fn spawner_pid(&self) -> Option<u32> {
        self.spawner.pid()
    }

    /// Memory is enforced outside the sandbox (see the field's doc).
    pub fn with_external_memory_limit(mut self) -> NativeRunner {
        self.external_memory_limit = true;
        self
    }

    /// The cgroup hierarchy in use, if any (for logs and benchmarks).
    pub fn cgroups(&self) -> Option<String> {
        self.cgroups.as_ref().map(Hierarchy::describe)
    }

    /// Job cgroups given back so far by ended runs, and how many of them
    /// wait idle for the next run with the same limits (for tests).
    pub fn cgroup_pool(&self) -> (u64, usize) {
        self.cgroup_pool.counts()
    }
}
