//! The `native` runner: `test_all` in Linux namespaces, cgroups and rlimits,
//! set up with raw syscalls (the nix crate) — the way isolate, nsjail and
//! bubblewrap do it, in a few milliseconds — and laid out inside by
//! `lg-init` ([`crate::sandbox::init`]), the helper the docker runner
//! shares.
//!
//! It owns the whole life of one sandboxed run: the job cgroup
//! ([`cgroup`]), the subordinate id range and the id maps ([`ids`]), the
//! plan of the mount tree, the clone into new user, PID, mount, network,
//! IPC and UTS namespaces, the timeout, the kill, the verdict
//! ([`Termination`]), the results stream and the cleanup. It never reads
//! the summary, never touches the spool or the gradebook, never maps the
//! daemon's own uid or groups into a job, and never changes anything on
//! the host but the job's cgroup directories (removed after the run), the
//! `o+rX` bits of the job's own files (so the sandbox's root, nobody on the
//! host, can copy them) and the files it leaves in `RunSpec::results` and
//! `RunSpec::scratch`.
//!
//! **Why clone from the daemon and not a re-exec'd helper.** The daemon is
//! a multi-threaded tokio process; after a fork only async-signal-safe work
//! is allowed. Instead of re-executing `/proc/self/exe` (which is not
//! labgrader in tests, and costs an exec plus a runtime start), the parent
//! prepares *everything* first — C strings, fds, the ordered list of mount
//! operations, the argv/envp arrays and both child stacks — and the child
//! ([`setup`]) runs only raw syscalls on them: no allocation, no locks, no
//! panics. That is how the `unshare` crate and runc's `nsexec` work. The
//! init outlives no reader: it waits in poll(2) on its SIGCHLD signalfd and
//! on the report pipe, and exits (taking the namespace with it) when the
//! daemon dies or drops the run.
//!
//! **Layout of a run.** The parent clones the child with all namespaces;
//! the child opens its bind sources while it still has the daemon's
//! credentials, then waits for its id maps: the namespace's ids 0-65535
//! are a subordinate range (written directly by a root daemon, by
//! newuidmap/newgidmap otherwise). The parent puts it in the job cgroup
//! and releases it. The child (pid 1 of its PID namespace, the sandbox's
//! root) builds the new root: a tmpfs with read-only, nosuid, nodev binds
//! of the rootfs's system directories, `lg-init` written into
//! `/.labgrader`, the host's job files bound read-only in a root-only
//! `/.labgrader/in`, one tmpfs of `limits.disk` bytes for the student's
//! writable places (`/workspace`, `/tmp`, `/dev/shm`, bound from
//! `/.labgrader/rw`) and one for `/harness`, a minimal `/dev`,
//! a new `/proc` (`hidepid=2`); pivots into it, brings up `lo`, sets
//! `no_new_privs`, forbids nested user namespaces, enters a cgroup
//! namespace rooted at the job cgroup, and starts `lg-init`, which copies
//! the job in, unmounts the staging, gives harness and student their
//! files and runs `test_all` (see its module). The init reaps orphans and,
//! when `lg-init` ends, reports its wait status and exits, so the kernel
//! kills everything left in the namespace. `lg-init`'s results stream
//! comes back over a pipe of its own. On timeout the parent kills the init
//! (the namespace dies with it) and everything in the job cgroup. A setup
//! failure comes back over a close-on-exec pipe (or as `lg-init`'s exit
//! 125 with its reason on stderr) as `SandboxError::Setup` naming the step
//! and syscall: a grader fault, never the student's.

pub mod cgroup;
pub mod ids;
pub mod job;
pub mod setup;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use nix::fcntl::{OFlag, open};
use nix::mount::MsFlags;
use nix::sys::stat::Mode as FileMode;
use nix::sys::statvfs::FsFlags;
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use self::cgroup::{Hierarchy, JobCgroup};
use self::ids::{Ranges, Writer};
use self::setup::{
    ChildArgs, FD_RESULTS, FD_SOURCES, FD_TEST_PATHS, MAX_SOURCES, Op, Plan, RECORD_LEN, Record,
    Step,
};
use super::output::{SharedCapture, collect, spawn_drain};
use super::results_stream;
use super::spec::SAFE_PATH;
use super::{Contract, RunOutcome, RunSpec, Runner, SandboxError};
use crate::config::NativeConfig;
use crate::result::{Captured, Termination};

/// Top-level directories of the rootfs shown (read-only) in the sandbox.
/// Everything else (home, root, run, var, mnt, srv, …) is an empty
/// directory: the host's data and sockets stay out of sight.
pub const SYSTEM_DIRS: &[&str] = &[
    "bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "opt", "nix", "gnu",
];
/// Empty directories created in the new root.
const EMPTY_DIRS: &[&str] = &["home", "root", "run", "mnt", "media", "srv", "sys", "var"];
/// Host devices bound into the sandbox's `/dev`.
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];
/// Hostname inside the UTS namespace.
pub const HOSTNAME: &str = "labgrader";
/// After the init exits, how long the pipes may stay open (only other
/// jobs' short-lived clones could hold them) before reading stops.
const PIPE_LINGER: Duration = Duration::from_secs(2);

/// The harness identity inside the sandbox (the student's is `[native]
/// uid`/`gid`, 65534 by default).
pub const HARNESS_ID: (u32, u32) = (65533, 65533);
/// Where the helper sits in the sandbox, and what the staging holds.
const LG_INIT: &str = super::init::SANDBOX_PATH;
const STAGE: &str = "/.labgrader/in";

/// The native runner. Build with [`NativeRunner::new`].
#[derive(Debug)]
pub struct NativeRunner {
    rootfs: PathBuf,
    uid: u32,
    gid: u32,
    /// The subordinate ranges jobs' ids come from.
    ranges: Ranges,
    /// Root writes the maps itself; otherwise newuidmap/newgidmap.
    writer: Writer,
    cgroups: Option<Hierarchy>,
    staging: PathBuf,
    /// Memory is enforced by an outer cgroup (a Slurm job's), which
    /// reports an OOM kill; without job cgroups of our own we then leave
    /// RLIMIT_DATA off, so an over-limit job is an OOM kill the outside can
    /// name instead of a failed malloc nobody can tell from a crash.
    external_memory_limit: bool,
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

fn ns_flags() -> libc::c_int {
    libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
}

/// Clone a child with every namespace; it exits at once.
fn probe_clone() -> Result<(), nix::errno::Errno> {
    extern "C" fn noop(_: *mut libc::c_void) -> libc::c_int {
        0
    }
    let mut stack = vec![0u8; 64 * 1024];
    // SAFETY: the child runs `noop` on its own stack and exits.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(stack.len());
        let top = top.sub(top as usize % 16);
        libc::clone(
            noop,
            top.cast(),
            ns_flags() | libc::SIGCHLD,
            std::ptr::null_mut(),
        )
    };
    nix::errno::Errno::result(pid).map(|pid| {
        let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::__WALL));
    })
}

fn setup_err(step: &'static str, message: impl std::fmt::Display) -> SandboxError {
    SandboxError::Setup {
        step,
        message: message.to_string(),
    }
}

fn cstr(p: impl AsRef<[u8]>) -> Result<CString, SandboxError> {
    CString::new(p.as_ref())
        .map_err(|_| setup_err("plan the sandbox", "a path or value contains a NUL byte"))
}

fn cpath(p: &Path) -> Result<CString, SandboxError> {
    cstr(p.as_os_str().as_bytes())
}

/// Mount flags the kernel will not let a user namespace drop from a bind.
fn locked_flags(p: &Path) -> MsFlags {
    let mut f = MsFlags::empty();
    if let Ok(s) = nix::sys::statvfs::statvfs(p) {
        let fl = s.flags();
        for (st, ms) in [
            (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        ] {
            if fl.contains(st) {
                f |= ms;
            }
        }
    }
    f
}

/// A bind source must exist with the expected type (the child opens it).
fn check_source(p: &Path, dir: bool) -> Result<(), SandboxError> {
    let meta = std::fs::symlink_metadata(p)
        .map_err(|e| setup_err("find a bind source", format!("{}: {e}", p.display())))?;
    if meta.file_type().is_symlink() || meta.is_dir() != dir {
        return Err(setup_err(
            "find a bind source",
            format!(
                "{} is not a {}",
                p.display(),
                if dir { "directory" } else { "file" }
            ),
        ));
    }
    Ok(())
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
            staging,
            external_memory_limit: false,
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

    /// Memory is enforced outside the sandbox (see the field's doc).
    pub fn with_external_memory_limit(mut self) -> NativeRunner {
        self.external_memory_limit = true;
        self
    }

    /// The cgroup hierarchy in use, if any (for logs and benchmarks).
    pub fn cgroups(&self) -> Option<String> {
        self.cgroups.as_ref().map(Hierarchy::describe)
    }

    /// Build the child's plan: fds, mount operations, argv/envp, and
    /// `lg-init`'s command line (the layout, the identities, the limits).
    fn plan(
        &self,
        spec: &RunSpec,
        staged: &Staged,
        pipes: ChildEnds,
        with_cgroup: bool,
    ) -> Result<(Plan, Vec<String>), SandboxError> {
        let root = &self.staging;
        let under = |name: &str| cpath(&root.join(name));
        let mut ops = Vec::new();
        let mut sources = Vec::new();
        let mut bind = |ops: &mut Vec<Op>, src: &Path, dst: &str, dir: bool, flags: MsFlags| {
            check_source(src, dir)?;
            sources.push((cpath(src)?, dir));
            ops.push(if dir {
                Op::Mkdir {
                    path: under(dst)?,
                    mode: 0o755,
                }
            } else {
                Op::Touch { path: under(dst)? }
            });
            ops.push(Op::Bind {
                source: sources.len() - 1,
                path: under(dst)?,
                flags: flags | locked_flags(src),
            });
            Ok::<(), SandboxError>(())
        };
        let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        let mut made = Vec::new();
        for name in SYSTEM_DIRS {
            let src = self.rootfs.join(name);
            let Ok(meta) = std::fs::symlink_metadata(&src) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&src)?;
                ops.push(Op::Symlink {
                    target: cpath(&target)?,
                    path: under(name)?,
                });
            } else if meta.is_dir() {
                bind(&mut ops, &src, name, true, ro)?;
            } else {
                continue;
            }
            made.push(*name);
        }
        for name in EMPTY_DIRS {
            if !made.contains(name) {
                ops.push(Op::Mkdir {
                    path: under(name)?,
                    mode: 0o755,
                });
            }
        }
        ops.push(Op::Symlink {
            target: cstr("/tmp")?,
            path: under("var/tmp")?,
        });
        // The helper, root-owned in the read-only root, and its second name.
        for (dir, mode) in [
            (".labgrader", 0o755),
            (".labgrader/bin", 0o755),
            (".labgrader/in", 0o700),
        ] {
            ops.push(Op::Mkdir {
                path: under(dir)?,
                mode,
            });
        }
        ops.push(Op::WriteFile {
            path: under(".labgrader/lg-init")?,
            data: super::init::BINARY,
            mode: 0o555,
        });
        ops.push(Op::Link {
            target: under(".labgrader/lg-init")?,
            path: under(".labgrader/bin/run-as-student")?,
        });
        // The host's job files, read-only, in a root-only directory that
        // lg-init unmounts once it has copied them.
        let stage_flags = ro | MsFlags::MS_NOEXEC;
        bind(
            &mut ops,
            &staged.workspace,
            ".labgrader/in/workspace",
            true,
            stage_flags,
        )?;
        if let Some(t) = &staged.tests {
            bind(&mut ops, t, ".labgrader/in/tests", true, stage_flags)?;
        }
        // Every writable place is a tmpfs of `limits.disk` bytes (its pages
        // are charged to the job's memory cgroup as well).
        let tmpfs = cstr("tmpfs")?;
        let disk = spec.limits.disk.max(1 << 20);
        let scratch = |ops: &mut Vec<Op>, dst: &str, mode: u32| -> Result<(), SandboxError> {
            ops.push(Op::Mkdir {
                path: under(dst)?,
                mode,
            });
            ops.push(Op::Mount {
                fstype: tmpfs.clone(),
                path: under(dst)?,
                flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                data: Some(cstr(format!("mode={mode:o},size={disk}"))?),
            });
            Ok(())
        };
        // One tmpfs for every place the student can write (the quota is
        // the job's total, and without cgroups no more than `disk` of
        // memory goes to files); the harness's home has its own, so the
        // student cannot fill it.
        scratch(&mut ops, ".labgrader/rw", 0o755)?;
        let shared = |ops: &mut Vec<Op>, sub: &str, at: &str, mode: u32| {
            let from = format!(".labgrader/rw/{sub}");
            ops.push(Op::Mkdir {
                path: under(&from)?,
                mode,
            });
            ops.push(Op::Chmod {
                path: under(&from)?,
                mode,
            });
            ops.push(Op::Mkdir {
                path: under(at)?,
                mode: 0o755,
            });
            ops.push(Op::BindLocal {
                from: under(&from)?,
                path: under(at)?,
            });
            Ok::<(), SandboxError>(())
        };
        shared(&mut ops, "workspace", "workspace", 0o755)?;
        shared(&mut ops, "tmp", "tmp", 0o1777)?;
        if spec.contract == Contract::Trusted {
            scratch(&mut ops, "harness", 0o700)?;
        }
        ops.push(Op::Mkdir {
            path: under("dev")?,
            mode: 0o755,
        });
        let dev_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        ops.push(Op::Mount {
            fstype: tmpfs.clone(),
            path: under("dev")?,
            flags: dev_flags,
            data: Some(cstr("mode=0755,size=64k")?),
        });
        for d in DEVICES {
            let host = Path::new("/dev").join(d);
            bind(
                &mut ops,
                &host,
                &format!("dev/{d}"),
                false,
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            )?;
        }
        for (link, target) in [
            ("dev/fd", "/proc/self/fd"),
            ("dev/stdin", "/proc/self/fd/0"),
            ("dev/stdout", "/proc/self/fd/1"),
            ("dev/stderr", "/proc/self/fd/2"),
        ] {
            ops.push(Op::Symlink {
                target: cstr(target)?,
                path: under(link)?,
            });
        }
        shared(&mut ops, "shm", "dev/shm", 0o1777)?;
        ops.push(Op::Readonly {
            path: under("dev")?,
            flags: dev_flags,
        });
        ops.push(Op::Mkdir {
            path: under("proc")?,
            mode: 0o555,
        });
        // hidepid: a job process sees only its own identity's processes
        // (the student never sees the harness's command line or status).
        ops.push(Op::Mount {
            fstype: cstr("proc")?,
            path: under("proc")?,
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            data: Some(cstr("hidepid=2")?),
        });
        if sources.len() > MAX_SOURCES {
            return Err(setup_err("plan the sandbox", "too many bind sources"));
        }
        let source_paths = (0..sources.len())
            .map(|i| cstr(format!("/proc/self/fd/{}", FD_SOURCES as usize + i)))
            .collect::<Result<Vec<_>, _>>()?;
        // Op descriptions for error messages, 1-based (0 = the root tmpfs).
        let mut described = vec![format!("mount tmpfs on {}", root.display())];
        described.extend(ops.iter().map(|op| {
            let p = Path::new(std::ffi::OsStr::from_bytes(op.path().to_bytes()));
            let inside = p.strip_prefix(root).map(|r| Path::new("/").join(r));
            format!(
                "{} {}",
                op.syscall(),
                inside.as_deref().unwrap_or(p).display()
            )
        }));

        // Environment: the documented variables, the spec's override;
        // lg-init adds the contract's own.
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("PATH".into(), SAFE_PATH.into());
        env.insert("HOME".into(), "/workspace".into());
        env.insert("LANG".into(), "C.UTF-8".into());
        for (k, v) in &spec.env {
            if k.is_empty() || k.contains('=') {
                return Err(setup_err(
                    "plan the sandbox",
                    format!("invalid environment variable name {k:?}"),
                ));
            }
            env.insert(k.clone(), v.clone());
        }
        let envp = env
            .iter()
            .map(|(k, v)| cstr(format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()?;

        let l = &spec.limits;
        let cpu = l.timeout.as_secs() + 2;
        let test_paths = format!("/proc/self/fd/{FD_TEST_PATHS}");
        let mut rlimits = vec![
            ("cpu", cpu, cpu + 1),
            ("fsize", l.file_size, l.file_size),
            ("nofile", l.open_files, l.open_files),
            ("core", 0, 0),
            // Per identity: the harness and the student each get `pids`.
            ("nproc", l.pids, l.pids),
        ];
        if !with_cgroup && !self.external_memory_limit {
            rlimits.push(("data", l.memory, l.memory));
        }
        let argv = super::init::Invocation {
            contract: spec.contract,
            copy_from: Some(STAGE),
            test_paths: &test_paths,
            student: (self.uid, self.gid),
            harness: HARNESS_ID,
            rlimits,
            results_fd: FD_RESULTS,
            nonce_file: None,
        }
        .argv();
        let argv = argv.iter().map(cstr).collect::<Result<Vec<_>, _>>()?;
        let plan = Plan {
            stdin: pipes.stdin,
            stdout: pipes.stdout,
            stderr: pipes.stderr,
            report: pipes.report,
            go: pipes.go,
            results: pipes.results,
            test_paths: staged.test_paths()?,
            cgroup_tasks: Vec::new(),
            sources,
            source_paths,
            staging: cpath(root)?,
            // The helper (static, ~1.5 MB) lives in the root tmpfs.
            root_data: cstr(format!(
                "mode=0755,size={}",
                super::init::BINARY.len() + (1 << 20)
            ))?,
            ops,
            root_flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            hostname: cstr(HOSTNAME)?,
            // The init and lg-init are the sandbox's root; lg-init gives
            // the job its identities.
            uid: 0,
            gid: 0,
            drop_groups: true,
            rlimits: Vec::new(),
            workdir: cstr("/")?,
            exec_path: cstr(LG_INIT)?,
            argv,
            envp,
        };
        Ok((plan, described))
    }
}

/// The host files a run shows to lg-init (read-only, then unmounted).
struct Staged {
    workspace: PathBuf,
    tests: Option<PathBuf>,
    /// NUL-separated `RunSpec::test_paths` (no host file: a memfd per run).
    test_paths: Vec<u8>,
}

impl Staged {
    /// A memfd holding the test-paths list, at offset 0.
    fn test_paths(&self) -> Result<OwnedFd, SandboxError> {
        use nix::sys::memfd::{MFdFlags, memfd_create};
        let fail = |e: nix::errno::Errno| setup_err("stage the job files", format!("memfd: {e}"));
        let fd = memfd_create(c"lg-test-paths", MFdFlags::MFD_CLOEXEC).map_err(fail)?;
        let mut rest: &[u8] = &self.test_paths;
        while !rest.is_empty() {
            let n = nix::unistd::write(&fd, rest).map_err(fail)?;
            rest = &rest[n..];
        }
        Ok(fd)
    }
}

/// The child's ends of the pipes (moved into the plan).
struct ChildEnds {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
    report: OwnedFd,
    go: OwnedFd,
    results: OwnedFd,
}

/// The parent's ends.
struct ParentEnds {
    stdout: OwnedFd,
    stderr: OwnedFd,
    report: OwnedFd,
    go: OwnedFd,
    results: OwnedFd,
}

fn pipes() -> Result<(ChildEnds, ParentEnds), SandboxError> {
    let p = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| setup_err("create pipes", e));
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
    .map_err(|e| setup_err("open /dev/null", e))?;
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
async fn start(
    plan: Plan,
    ranges: &Ranges,
    writer: &Writer,
    cgroup: Option<Arc<JobCgroup>>,
    go: OwnedFd,
) -> Result<Pid, SandboxError> {
    let pid = clone_init(&plan)?;
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
        return Err(setup_err("write the user namespace id maps", e));
    }
    let release = |what| match nix::unistd::write(&go, b"g") {
        // The child already failed and exited: its report says why.
        Ok(_) | Err(nix::errno::Errno::EPIPE) => Ok(()),
        Err(e) => Err(setup_err("release the sandbox", format!("{what}: {e}"))),
    };
    let attach = async {
        release("after the id maps")?;
        // cgroup v2: the parent moves the init (an RCU grace period: off
        // this thread, while the child builds its root). v1: it moved itself.
        if let Some(cg) = cgroup.filter(|_| plan.cgroup_tasks.is_empty()) {
            tokio::task::spawn_blocking(move || cg.add(pid.as_raw()))
                .await
                .map_err(|e| setup_err("attach the job cgroup", e))?
                .map_err(|e| setup_err("attach the job cgroup", e))?;
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

/// Clone the init with every namespace. It opens its bind sources, then
/// waits for the go pipe (its id maps) before doing anything else.
fn clone_init(plan: &Plan) -> Result<Pid, SandboxError> {
    let mut args = ChildArgs::new(plan);
    let mut stack = vec![0u8; setup::STACK_SIZE];
    // SAFETY: the child gets a copy of this address space and runs
    // `init_main` on `stack`, touching only `args` (see setup.rs).
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(stack.len());
        let top = top.sub(top as usize % 16);
        libc::clone(
            setup::init_main,
            top.cast(),
            ns_flags() | libc::SIGCHLD,
            (&mut args as *mut ChildArgs).cast(),
        )
    };
    nix::errno::Errno::result(pid)
        .map(Pid::from_raw)
        .map_err(|e| setup_err("clone the sandbox", format!("clone: {e}")))
}

/// Make the host's job files readable by the sandbox's root, which is
/// nobody on the host (`o+r`, directories `o+rx`; symlinks untouched). The
/// directories above them keep the daemon's own modes.
fn make_readable(root: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry = entry.map_err(std::io::Error::other)?;
        let meta = entry.metadata().map_err(std::io::Error::other)?;
        let ft = meta.file_type();
        let want = if ft.is_dir() {
            0o005
        } else if ft.is_file() {
            0o004
        } else {
            continue;
        };
        let mode = meta.permissions().mode();
        if mode & want != want {
            std::fs::set_permissions(
                entry.path(),
                std::fs::Permissions::from_mode((mode | want) & 0o7777),
            )?;
        }
    }
    Ok(())
}

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
        return setup_err("sandbox init", format!("unknown step {step}: {errno}"));
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
        Step::Exec => format!("execve {LG_INIT}"),
        s => s.syscall().to_string(),
    };
    setup_err(step.name(), format!("{what}: {}", errno.desc()))
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
                JobCgroup::create(h, &spec.job_id, Some(&spec.limits))
                    .map_err(|e| setup_err("create the job cgroup", e))?,
            )),
            None => None,
        };
        let mut teardown = Teardown {
            init: None,
            cgroup: cgroup.clone(),
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

impl NativeRunner {
    /// Check the host's job files and make them readable to lg-init; build
    /// the test-paths list.
    async fn stage(&self, spec: &RunSpec) -> Result<Staged, SandboxError> {
        let dir = |p: &Path, what: &'static str| -> Result<PathBuf, SandboxError> {
            let c = p
                .canonicalize()
                .map_err(|e| setup_err(what, format!("{}: {e}", p.display())))?;
            if !c.is_dir() {
                return Err(setup_err(
                    what,
                    format!("{} is not a directory", c.display()),
                ));
            }
            Ok(c)
        };
        let workspace = dir(&spec.workspace, "find the workspace")?;
        let tests = match (spec.contract, &spec.tests) {
            (Contract::Trusted, Some(t)) => Some(dir(t, "find the tests")?),
            (Contract::Trusted, None) => {
                return Err(setup_err(
                    "find the tests",
                    "a trusted run needs RunSpec::tests",
                ));
            }
            (Contract::Stdout, _) => None,
        };
        let fail = |e: std::io::Error| setup_err("stage the job files", e);
        let mut test_paths = Vec::new();
        for p in spec.test_paths.iter() {
            test_paths.extend_from_slice(p.as_os_str().as_bytes());
            test_paths.push(0);
        }
        let roots: Vec<PathBuf> = std::iter::once(workspace.clone())
            .chain(tests.clone())
            .collect();
        tokio::task::spawn_blocking(move || roots.iter().try_for_each(|r| make_readable(r)))
            .await
            .map_err(|e| setup_err("stage the job files", e))?
            .map_err(fail)?;
        Ok(Staged {
            workspace,
            tests,
            test_paths,
        })
    }
}

/// Reaps the init and removes the job cgroup when a run ends — also when
/// the run's future is dropped (the init then sees its report pipe lose
/// its reader and exits, and the namespace with it). On the runtime's
/// blocking pool (whose shutdown waits for it) or, outside a runtime, on a
/// thread of its own.
struct Teardown {
    init: Option<Pid>,
    cgroup: Option<Arc<JobCgroup>>,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        let (init, cgroup) = (self.init.take(), self.cgroup.take());
        if init.is_none() && cgroup.is_none() {
            return;
        }
        let work = move || {
            if let Some(pid) = init {
                let _ = waitpid(pid, Some(WaitPidFlag::__WALL));
            }
            if let Some(cg) = cgroup {
                cg.kill_all();
                cg.remove();
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
                            setup_err(
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
        let pid = start(plan, &self.ranges, &self.writer, cgroup.clone(), parent.go).await?;
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
        let results = (!stream.is_empty())
            .then(|| results_stream::parse(&stream))
            .transpose()
            .map_err(|e| setup_err("read the results", e))?;
        let oom = cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0);
        let termination = if timed_out {
            Termination::Timeout
        } else {
            match status {
                Some(s) if libc::WIFEXITED(s) => {
                    let code = libc::WEXITSTATUS(s);
                    if code == super::init::EXIT_SETUP && results.is_none() {
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
                    return Err(setup_err(
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
                        setup_err(
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
            setup_err(step, rest)
        }
        None => setup_err("lg-init", line),
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
