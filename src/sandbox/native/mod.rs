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
//! ([`Termination`](crate::result::Termination)), the results stream and
//! the cleanup. It never reads the summary, never touches the spool or the
//! gradebook, never maps the daemon's own uid or groups into a job, and
//! never changes anything on the host but the job's cgroup directories
//! (removed after the run), the `o+rX` bits of the job's own files (so the
//! sandbox's root, nobody on the host, can copy them) and the files it
//! leaves in `RunSpec::results` and `RunSpec::scratch`.
//!
//! **Why clone, and from where.** The daemon is a multi-threaded tokio
//! process; after a fork only async-signal-safe work is allowed. Instead
//! of re-executing `/proc/self/exe` (which is not labgrader in tests, and
//! costs an exec plus a runtime start), the parent prepares *everything*
//! first — C strings, fds, the ordered list of mount operations, the
//! argv/envp arrays — and the child ([`setup`]) runs only raw syscalls on
//! them: no allocation, no locks, no panics. That is how the `unshare`
//! crate and runc's `nsexec` work. The clone itself is made by the
//! [`spawner`], a small process forked from the daemon when the runner is
//! built, which receives the plan over a socket: a clone copies its
//! caller's address space, and copying the busy daemon's on every run
//! cost more CPU than the rest of the sandbox. The init is cloned with
//! `CLONE_PARENT`, so it is the daemon's child all the same. The init
//! outlives no reader: it waits in poll(2) on its SIGCHLD signalfd and on
//! the report pipe, and exits (taking the namespace with it) when the
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
//! namespace rooted at the job cgroup, and becomes `lg-init` (its code,
//! called in this process: no exec), which copies the job in, unmounts
//! the staging, gives harness and student their files, runs `test_all`
//! and reaps every orphan (see its module). When `lg-init` is done the
//! init reports its status and exits, so the kernel kills everything left
//! in the namespace. `lg-init`'s results stream
//! comes back over a pipe of its own. On timeout the parent kills the init
//! (the namespace dies with it) and everything in the job cgroup. A setup
//! failure comes back over a close-on-exec pipe (or as `lg-init`'s exit
//! 125 with its reason on stderr) as `SandboxError::Setup` naming the step
//! and syscall: a grader fault, never the student's.
//!
//! Files: [`runner`] (the runner and its host checks), [`layout`] (the
//! plan of one run), [`plan`] (what the parent hands the child), [`spawn`]
//! (clone, id maps, cgroup, release), [`spawner`] (the process that
//! clones), `netpool` (the network namespaces it lends and takes back),
//! [`setup`] (the child, from clone to
//! lg-init), [`supervise`] (the run to its verdict and teardown),
//! [`cgroup`], [`ids`], and [`job`] (`labgrader sandbox --job-dir`).

pub mod cgroup;
pub mod ids;
pub mod job;
pub mod layout;
mod netpool;
pub mod plan;
pub mod runner;
pub mod setup;
pub mod spawn;
pub mod spawner;
pub mod supervise;

pub use layout::{DEVICES, HOSTNAME, SYSTEM_DIRS};
pub use runner::{HARNESS_ID, NativeRunner, available};
