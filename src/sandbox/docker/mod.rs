//! The `docker` runner: each job in a fresh container of the course image,
//! driven through the engine API (bollard). It owns the container's whole
//! life — create, run, kill, remove — and never reads the summary, touches
//! the spool or the gradebook.
//!
//! Design, chosen for the fewest engine round trips per job (create, attach,
//! start, wait, inspect, remove — what `docker run` itself does):
//!
//! - Identities (`SANDBOX-SPEC.md`): the container starts as its root with
//!   every capability dropped but the few `lg-init` needs ([`INIT_CAPS`]),
//!   `no-new-privileges`, network none, read-only root. Only `tar` and
//!   `lg-init` run as that root; `lg-init` lays the files out, then runs
//!   `test_all` as the student (`stdout`) or the harness (`trusted`, with
//!   its `run-as-student` broker), both numeric, unprivileged, without
//!   capabilities or supplementary groups.
//! - Writable places are tmpfs mounts of `limits.disk` bytes each
//!   (`/workspace`, `/tmp`, `/harness` under `trusted`) plus the small
//!   root-only `/.labgrader`: nothing a job writes reaches the host's disk,
//!   and tmpfs pages are also charged to the container's memory cgroup.
//! - A tmpfs exists only once the container runs, so nothing can be
//!   uploaded before start. The container is created with stdin open; its
//!   command is `sh -c 'tar -xof - -C / && printf READY >&2 && exec
//!   lg-init …'` under the engine's init (`docker-init`, which reaps
//!   zombies; `lg-init` is also the job's subreaper). We attach before
//!   start (so no output is missed), start, and stream one tar built on
//!   the fly into stdin: `lg-init` with its `run-as-student` link, the
//!   test-paths file and the results nonce under `/.labgrader/`, the
//!   workspace (symlinks stored as links, never followed) and, under
//!   `trusted`, the tests at `/harness/tests`. No bind mount: a remote
//!   engine works too. The image needs `/bin/sh` and `tar`.
//! - The READY line carries a per-job marker and is stripped from stderr.
//!   Nothing the student wrote has run before it, so a run that ends
//!   without it is a setup failure (grader fault), never a verdict; so is
//!   `lg-init`'s own setup failure (exit 125 without a results stream).
//! - Results (trusted): the container has only stdout and stderr, so
//!   `lg-init`, once nothing of the job is left, writes its results stream
//!   on stderr after `\n<nonce>\n` (the nonce came in a root-only file the
//!   job never sees); it is cut off the captured stderr and parsed by
//!   [`results_stream`] into `RunSpec::results`. Its flags give
//!   `RunOutcome::disk_full`.
//! - Limits: memory = memory+swap (no swap), pids, CPU quota, `fsize` and
//!   `nofile` rlimits on the job's processes (set by `lg-init`), logging
//!   driver `none` (output is streamed, never stored by the engine), label
//!   `labgrader.job=<id>`.
//! - Verdicts: deadline → SIGKILL the container, [`Termination::Timeout`];
//!   `State.OOMKilled` → [`Termination::MemoryLimit`] (only that flag means
//!   memory: an exit code of 137 alone may be a pids-limit casualty or a
//!   plain `kill -9`; on this engine it is set when any process of the
//!   container was OOM-killed, so a `test_all` that survives its child's
//!   kill is still `MemoryLimit`); else the exit code (128+n is reported as
//!   signal n).
//! - Grader faults ([`SandboxError`]): engine unreachable, image missing,
//!   API errors, setup failure. The container is removed on every path:
//!   explicitly at the end, and by a drop guard if the job's future is
//!   dropped (cancel, shutdown).
//!
//! Untrusted input here is the workspace (file names, symlinks, sizes) and
//! everything the container prints; both are streamed with fixed buffers
//! (the results stream is bounded by [`results_stream::STREAM_MAX`]).
//!
//! Files: [`engine`] (the runner, its client, image and container calls),
//! [`container`] (the container's spec and command), [`payload`] (the tar
//! on stdin), [`run`] (attach, start, feed, collect, kill, inspect),
//! [`stderr_split`] (READY marker, job stderr, results stream),
//! [`runner`] (refuse, create, run, remove, judge) and [`orphans`].
//!
//! [`Termination::Timeout`]: crate::result::Termination::Timeout
//! [`Termination::MemoryLimit`]: crate::result::Termination::MemoryLimit
//! [`SandboxError`]: crate::sandbox::SandboxError
//! [`results_stream`]: crate::sandbox::results_stream
//! [`results_stream::STREAM_MAX`]: crate::sandbox::results_stream::STREAM_MAX

pub mod container;
pub mod engine;
pub mod orphans;
pub mod payload;
pub mod run;
pub mod runner;
pub mod stderr_split;

pub use container::{INIT_CAPS, JOB_LABEL, OWNER_LABEL, WORKSPACE_DIR};
pub use engine::{DockerRunner, available};
