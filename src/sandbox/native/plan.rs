//! What the parent hands the sandbox's child, and what the child says
//! back: the fixed fd layout inside the init, the mount operations
//! ([`Op`]), the whole prepared [`Plan`] with the raw pointers built from
//! it ([`ChildArgs`]), the setup steps ([`Step`]) and the fixed-size
//! records of the report pipe ([`Record`]). Plain data shared by `layout`
//! and `spawn` (the parent) and `setup` (the child); it never runs a
//! syscall.

use std::ffi::{CStr, CString};
use std::os::fd::{OwnedFd, RawFd};

use nix::mount::MsFlags;

/// Fixed fd layout inside the init (after [`Step::Fds`]).
pub(super) const FD_REPORT: RawFd = 3;
pub(super) const FD_GO: RawFd = 4;
/// The results pipe's write end: inherited (not close-on-exec) by
/// `lg-init`, which is told `--results-fd 5`.
pub(super) const FD_RESULTS: RawFd = 5;
/// A memfd holding the test-paths list, inherited by `lg-init`, which is
/// told `--test-paths /proc/self/fd/6` (and marks it close-on-exec).
pub(super) const FD_TEST_PATHS: RawFd = 6;
/// First O_PATH source fd inside the init.
pub(super) const FD_SOURCES: RawFd = 7;
/// The namespaces every sandbox's init is cloned into.
pub(super) const NS_FLAGS: libc::c_int = libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS;
/// Most bind sources a plan may carry (the child keeps a fixed array).
pub(super) const MAX_SOURCES: usize = 48;

/// Setup steps in the order the child performs them. The discriminant is
/// what travels over the report pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    Cgroup = 1,
    Fds,
    WaitParent,
    Sources,
    Session,
    Signals,
    Groups,
    Gid,
    Uid,
    Caps,
    Hostname,
    Propagation,
    Tree,
    RootReadonly,
    PivotRoot,
    DetachOldRoot,
    Chdir,
    Loopback,
    NoNestedUserns,
    NoNewPrivs,
    Dumpable,
    WaitCgroup,
    CgroupNs,
    Rlimit,
}

impl Step {
    const ALL: [Step; 24] = [
        Step::Cgroup,
        Step::Fds,
        Step::WaitParent,
        Step::Sources,
        Step::Session,
        Step::Signals,
        Step::Groups,
        Step::Gid,
        Step::Uid,
        Step::Caps,
        Step::Hostname,
        Step::Propagation,
        Step::Tree,
        Step::RootReadonly,
        Step::PivotRoot,
        Step::DetachOldRoot,
        Step::Chdir,
        Step::Loopback,
        Step::NoNestedUserns,
        Step::NoNewPrivs,
        Step::Dumpable,
        Step::WaitCgroup,
        Step::CgroupNs,
        Step::Rlimit,
    ];

    pub fn from_u32(v: u32) -> Option<Step> {
        Step::ALL.iter().copied().find(|s| *s as u32 == v)
    }

    /// What the step does (used as `SandboxError::Setup::step`).
    pub fn name(self) -> &'static str {
        match self {
            Step::Cgroup => "enter the job cgroup",
            Step::Fds => "arrange file descriptors",
            Step::WaitParent => "wait for the user namespace id maps",
            Step::Sources => "open the bind sources",
            Step::Session => "start a new session",
            Step::Signals => "reset signal handlers",
            Step::Groups => "drop supplementary groups",
            Step::Gid => "switch to the sandbox gid",
            Step::Uid => "switch to the sandbox uid",
            Step::Caps => "keep setup capabilities",
            Step::Hostname => "set the hostname",
            Step::Propagation => "make mounts private",
            Step::Tree => "build the mount tree",
            Step::RootReadonly => "make the new root read-only",
            Step::PivotRoot => "pivot to the new root",
            Step::DetachOldRoot => "detach the host's root",
            Step::Chdir => "enter the new root",
            Step::Loopback => "bring up loopback",
            Step::NoNestedUserns => "forbid nested user namespaces",
            Step::NoNewPrivs => "set no_new_privs",
            Step::Dumpable => "make the init undumpable",
            Step::WaitCgroup => "wait for the job cgroup",
            Step::CgroupNs => "hide the host's cgroup paths",
            Step::Rlimit => "set resource limits",
        }
    }

    /// The syscall behind the step (ops of [`Step::Tree`] name their own).
    pub fn syscall(self) -> &'static str {
        match self {
            Step::Cgroup => "write(tasks)",
            Step::Fds => "dup2/close_range",
            Step::WaitParent => "read",
            Step::Sources => "open(O_PATH)",
            Step::Session => "setsid",
            Step::Signals => "sigaction",
            Step::Groups => "setgroups",
            Step::Gid => "setresgid",
            Step::Uid => "setresuid",
            Step::Caps => "capset",
            Step::Hostname => "sethostname",
            Step::Propagation => "mount(MS_REC|MS_PRIVATE)",
            Step::Tree => "mount",
            Step::RootReadonly => "mount(MS_REMOUNT|MS_RDONLY)",
            Step::PivotRoot => "pivot_root",
            Step::DetachOldRoot => "umount2(MNT_DETACH)",
            Step::Chdir => "chdir",
            Step::Loopback => "ioctl(SIOCSIFFLAGS)",
            Step::NoNestedUserns => "write(/proc/sys/user/max_user_namespaces)",
            Step::NoNewPrivs => "prctl(PR_SET_NO_NEW_PRIVS)",
            Step::Dumpable => "prctl(PR_SET_DUMPABLE)",
            Step::WaitCgroup => "read",
            Step::CgroupNs => "unshare(CLONE_NEWCGROUP)",
            Step::Rlimit => "setrlimit",
        }
    }
}

/// One operation of the mount tree, on paths under the staging root.
#[derive(Debug)]
pub enum Op {
    Mkdir {
        path: CString,
        mode: u32,
    },
    /// An empty regular file, as the mount point of a file bind.
    Touch {
        path: CString,
    },
    Symlink {
        target: CString,
        path: CString,
    },
    /// Bind `sources[source]` on `path`, then remount with `flags`
    /// (read-only and the source's locked flags, as the plan decided).
    Bind {
        source: usize,
        path: CString,
        flags: MsFlags,
    },
    /// A fresh filesystem (tmpfs, proc).
    Mount {
        fstype: CString,
        path: CString,
        flags: MsFlags,
        data: Option<CString>,
    },
    /// Remount an existing mount read-only (bind remount: flags only).
    Readonly {
        path: CString,
        flags: MsFlags,
    },
    /// A new file holding `data` (the embedded `lg-init`, written into the
    /// root tmpfs before it is made read-only: owned by the sandbox's root,
    /// no host file involved).
    WriteFile {
        path: CString,
        data: &'static [u8],
        mode: u32,
    },
    /// A hard link (`run-as-student` is `lg-init` under another name).
    Link {
        target: CString,
        path: CString,
    },
    /// Bind a directory of the new tree on `path` (flags of its mount).
    BindLocal {
        from: CString,
        path: CString,
    },
    /// Set a mode (mkdir's is reduced by the umask).
    Chmod {
        path: CString,
        mode: u32,
    },
}

impl Op {
    pub fn syscall(&self) -> &'static str {
        match self {
            Op::Mkdir { .. } => "mkdir",
            Op::Touch { .. } => "open(O_CREAT)",
            Op::Symlink { .. } => "symlink",
            Op::Bind { .. } => "mount(MS_BIND)",
            Op::Mount { .. } => "mount",
            Op::Readonly { .. } => "mount(MS_REMOUNT|MS_BIND|MS_RDONLY)",
            Op::WriteFile { .. } => "open(O_CREAT|O_EXCL)/write",
            Op::Link { .. } => "link",
            Op::BindLocal { .. } => "mount(MS_BIND)",
            Op::Chmod { .. } => "chmod",
        }
    }

    pub fn path(&self) -> &CStr {
        match self {
            Op::Mkdir { path, .. }
            | Op::Touch { path }
            | Op::Symlink { path, .. }
            | Op::Bind { path, .. }
            | Op::Mount { path, .. }
            | Op::Readonly { path, .. }
            | Op::WriteFile { path, .. }
            | Op::Link { path, .. }
            | Op::BindLocal { path, .. }
            | Op::Chmod { path, .. } => path,
        }
    }
}

/// Everything the child needs, prepared by the parent (no allocation after
/// the clone).
#[derive(Debug)]
pub struct Plan {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub report: OwnedFd,
    pub go: OwnedFd,
    /// Write end of the results pipe (`FD_RESULTS` in the sandbox).
    pub results: OwnedFd,
    /// The test-paths list (`FD_TEST_PATHS` in the sandbox).
    pub test_paths: OwnedFd,
    /// cgroup v1 `tasks` files (opened by the parent) the init writes `0`
    /// to, moving itself into the job cgroup before anything else.
    pub cgroup_tasks: Vec<OwnedFd>,
    /// Host paths of bind sources (and whether each is a directory). The
    /// child opens them (O_PATH) inside its new mount namespace before its
    /// id maps exist, so the lookup is still made with the daemon's own
    /// credentials (the sandbox's ids, from a subordinate range, could not
    /// traverse the daemon's directories); a bind needs a source in the
    /// caller's own namespace.
    pub sources: Vec<(CString, bool)>,
    /// `/proc/self/fd/N` for each source, N = FD_SOURCES + index.
    pub source_paths: Vec<CString>,
    /// Host directory the new root's tmpfs is mounted on (inside the
    /// child's private mount namespace only).
    pub staging: CString,
    pub root_data: CString,
    pub ops: Vec<Op>,
    pub root_flags: MsFlags,
    pub hostname: CString,
    pub uid: u32,
    pub gid: u32,
    /// Root daemon: clear the inherited supplementary groups.
    pub drop_groups: bool,
    /// (RLIMIT_* resource, soft, hard), set in lg-init's process before it
    /// starts.
    pub rlimits: Vec<(u32, u64, u64)>,
    pub workdir: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
}

impl Plan {
    /// The seven descriptors every sandbox gets at fixed numbers, in the
    /// order the child places them (stdio, report, go, results, test
    /// paths).
    pub fn fixed_fds(&self) -> [RawFd; 7] {
        use std::os::fd::AsRawFd;
        [
            self.stdin.as_raw_fd(),
            self.stdout.as_raw_fd(),
            self.stderr.as_raw_fd(),
            self.report.as_raw_fd(),
            self.go.as_raw_fd(),
            self.results.as_raw_fd(),
            self.test_paths.as_raw_fd(),
        ]
    }
}

/// What the child writes to the report pipe: 16 bytes, native endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// Setup failed at `step` (op index for [`Step::Tree`]) with `errno`.
    Failed { step: u32, errno: i32, op: u32 },
    /// `lg-init` (so `test_all`) ended with this raw wait status.
    Status(i32),
}

const TAG_FAILED: u32 = 1;
const TAG_STATUS: u32 = 2;
pub const RECORD_LEN: usize = 16;

impl Record {
    pub(super) fn encode(self) -> [u8; RECORD_LEN] {
        let (tag, a, b, c) = match self {
            Record::Failed { step, errno, op } => (TAG_FAILED, step, errno, op),
            Record::Status(s) => (TAG_STATUS, 0, s, 0),
        };
        let mut out = [0u8; RECORD_LEN];
        out[0..4].copy_from_slice(&tag.to_ne_bytes());
        out[4..8].copy_from_slice(&a.to_ne_bytes());
        out[8..12].copy_from_slice(&b.to_ne_bytes());
        out[12..16].copy_from_slice(&c.to_ne_bytes());
        out
    }

    pub fn decode(b: &[u8; RECORD_LEN]) -> Option<Record> {
        let word = |i: usize| [b[i], b[i + 1], b[i + 2], b[i + 3]];
        let tag = u32::from_ne_bytes(word(0));
        let step = u32::from_ne_bytes(word(4));
        let val = i32::from_ne_bytes(word(8));
        let op = u32::from_ne_bytes(word(12));
        match tag {
            TAG_FAILED => Some(Record::Failed {
                step,
                errno: val,
                op,
            }),
            TAG_STATUS => Some(Record::Status(val)),
            _ => None,
        }
    }
}

/// What the child uses, built by the parent right before clone.
pub struct ChildArgs<'a> {
    pub plan: &'a Plan,
    /// Cloned into a pooled network namespace, loopback already up (see
    /// `netpool`): the init leaves the network alone.
    pub net_ready: bool,
}

impl<'a> ChildArgs<'a> {
    pub fn new(plan: &'a Plan) -> Self {
        ChildArgs {
            plan,
            net_ready: false,
        }
    }
}

/// Size of the sandbox init's stack: a main thread's default, since the
/// init runs lg-init's code (`setup::init_main`).
pub const STACK_SIZE: usize = 8 << 20;
const GUARD: usize = 4096;

/// The stack a sandbox's init is cloned onto: [`STACK_SIZE`] bytes mapped
/// once, with a guard page below so a deep recursion faults instead of
/// writing over the heap. The spawner maps it once and clones every init
/// onto it: without `CLONE_VM` each child runs on its own copy, and the
/// spawner never writes to it, so its pages exist only in the children,
/// fresh zero pages on first touch (zeroing a stack in the spawner, whose
/// heap pages each clone shares with the children still running, once
/// cost more than the rest of its work).
pub struct Stack {
    base: *mut libc::c_void,
}

impl Stack {
    pub fn new() -> Result<Stack, nix::errno::Errno> {
        use nix::errno::Errno;
        // SAFETY: a new private anonymous mapping, then its lowest page
        // made inaccessible; no existing memory is touched.
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                STACK_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return Err(Errno::last());
            }
            let stack = Stack { base };
            Errno::result(libc::mprotect(base, GUARD, libc::PROT_NONE))?;
            Ok(stack)
        }
    }

    /// The initial stack pointer: the top, 16-byte aligned.
    pub fn top(&mut self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping (page-aligned).
        unsafe { self.base.cast::<u8>().add(STACK_SIZE).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unused once dropped.
        unsafe { libc::munmap(self.base, STACK_SIZE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_roundtrip() {
        for r in [
            Record::Failed {
                step: Step::PivotRoot as u32,
                errno: 13,
                op: 7,
            },
            Record::Status(0x8b00),
        ] {
            assert_eq!(Record::decode(&r.encode()), Some(r));
        }
        assert_eq!(Record::decode(&[9u8; RECORD_LEN]), None);
    }

    #[test]
    fn every_step_decodes_and_has_words() {
        for s in Step::ALL {
            assert_eq!(Step::from_u32(s as u32), Some(s));
            assert!(!s.name().is_empty() && !s.syscall().is_empty());
        }
        assert_eq!(Step::from_u32(0), None);
    }
}
