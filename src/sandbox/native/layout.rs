//! The plan of one run's sandbox, made by the parent before the clone:
//! the host job files staged for lg-init (`Staged`), the mount tree of
//! the new root, the environment and `lg-init`'s command line, all as the
//! C strings and fds the child will use ([`Plan`]). It never clones,
//! mounts or runs anything itself.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sys::statvfs::FsFlags;

use super::plan::{FD_RESULTS, FD_SOURCES, FD_TEST_PATHS, MAX_SOURCES, Op, Plan};
use super::runner::{HARNESS_ID, NativeRunner};
use super::spawn::ChildEnds;
use crate::config::Contract;
use crate::sandbox::init;
use crate::sandbox::spec::{RunSpec, SAFE_PATH, SandboxError};

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
/// Where the job's staged files wait inside the sandbox.
const STAGE: &str = "/.labgrader/in";

fn cstr(p: impl AsRef<[u8]>) -> Result<CString, SandboxError> {
    CString::new(p.as_ref())
        .map_err(|_| SandboxError::setup("plan the sandbox", "a path or value contains a NUL byte"))
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
        .map_err(|e| SandboxError::setup("find a bind source", format!("{}: {e}", p.display())))?;
    if meta.file_type().is_symlink() || meta.is_dir() != dir {
        return Err(SandboxError::setup(
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
    /// Build the child's plan: fds, mount operations, argv/envp, and
    /// `lg-init`'s command line (the layout, the identities, the limits).
    pub(super) fn plan(
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
        if let Some(copy) = &self.init_copy {
            // The host's copy, read-only; its second name is a link (it
            // dispatches on argv[0], which a link keeps).
            bind(&mut ops, &copy.file, ".labgrader/lg-init", false, ro)?;
            ops.push(Op::Symlink {
                target: cstr("../lg-init")?,
                path: under(".labgrader/bin/run-as-student")?,
            });
        } else {
            ops.push(Op::WriteFile {
                path: under(".labgrader/lg-init")?,
                data: init::BINARY,
                mode: 0o555,
            });
            ops.push(Op::Link {
                target: under(".labgrader/lg-init")?,
                path: under(".labgrader/bin/run-as-student")?,
            });
        }
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
            return Err(SandboxError::setup(
                "plan the sandbox",
                "too many bind sources",
            ));
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
                return Err(SandboxError::setup(
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
        let argv = init::Invocation {
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
            root_data: cstr(format!("mode=0755,size={}", init::BINARY.len() + (1 << 20)))?,
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
            argv,
            envp,
        };
        Ok((plan, described))
    }
}

/// The host files a run shows to lg-init (read-only, then unmounted).
pub(super) struct Staged {
    workspace: PathBuf,
    tests: Option<PathBuf>,
    /// NUL-separated `RunSpec::test_paths` (no host file: a memfd per run).
    test_paths: Vec<u8>,
}

impl Staged {
    /// A memfd holding the test-paths list, at offset 0.
    fn test_paths(&self) -> Result<OwnedFd, SandboxError> {
        use nix::sys::memfd::{MFdFlags, memfd_create};
        let fail = |e: nix::errno::Errno| {
            SandboxError::setup("stage the job files", format!("memfd: {e}"))
        };
        let fd = memfd_create(c"lg-test-paths", MFdFlags::MFD_CLOEXEC).map_err(fail)?;
        let mut rest: &[u8] = &self.test_paths;
        while !rest.is_empty() {
            let n = nix::unistd::write(&fd, rest).map_err(fail)?;
            rest = &rest[n..];
        }
        Ok(fd)
    }
}

impl NativeRunner {
    /// Check the host's job files and make them readable to lg-init; build
    /// the test-paths list.
    pub(super) async fn stage(&self, spec: &RunSpec) -> Result<Staged, SandboxError> {
        let dir = |p: &Path, what: &'static str| -> Result<PathBuf, SandboxError> {
            let c = p
                .canonicalize()
                .map_err(|e| SandboxError::setup(what, format!("{}: {e}", p.display())))?;
            if !c.is_dir() {
                return Err(SandboxError::setup(
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
                return Err(SandboxError::setup(
                    "find the tests",
                    "a trusted run needs RunSpec::tests",
                ));
            }
            (Contract::Stdout, _) => None,
        };
        let fail = |e: std::io::Error| SandboxError::setup("stage the job files", e);
        let test_paths = init::test_paths_file(&spec.test_paths);
        let roots: Vec<PathBuf> = std::iter::once(workspace.clone())
            .chain(tests.clone())
            .collect();
        tokio::task::spawn_blocking(move || roots.iter().try_for_each(|r| make_readable(r)))
            .await
            .map_err(|e| SandboxError::setup("stage the job files", e))?
            .map_err(fail)?;
        Ok(Staged {
            workspace,
            tests,
            test_paths,
        })
    }
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
