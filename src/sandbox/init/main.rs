//! `lg-init`: the one helper every sandboxing runner starts inside the
//! sandbox, as the sandbox's root, before anything of the job runs. It owns
//! the job's identities and layout (the harness and student identities, who
//! owns which file, which directory is sticky), the broker behind
//! `run-as-student`, the end of the job (nothing of it survives) and the
//! results stream. It never decides a grade, never reads a results file's
//! meaning, never talks to the network, and never runs job code with a
//! capability, a supplementary group or without `no_new_privs`.
//!
//! Built by labgrader's `build.rs` with `rustc` alone (std, no crates) as a
//! static executable, embedded in labgrader as `sandbox::init::BINARY`. It
//! dispatches on `argv[0]`: `run-as-student` is the client half of the
//! broker; anything else is the init (see [`args::USAGE`]). The same code
//! is compiled into labgrader too: the native runner's sandbox init calls
//! [`run`] itself (as pid 1, in a copy of the spawner's memory) instead of
//! an `execve`. Hence the init reads the job's environment from its
//! arguments, never the process's, writes stderr with [`say!`] (never
//! std's locked stderr), and never calls `std::process::exit`.
//!
//! Order of the init, each step named in its error (exit 125, the message
//! on stderr, nothing of the job started): arguments → descriptors → nonce
//! → copy in → lay out the workspace → lay out the harness → open the
//! broker → start test_all → serve the broker and reap until test_all ends
//! → kill what is left of harness and student → results → exit with
//! test_all's status.
//!
//! Untrusted input: the job's files (walked without following a symlink,
//! as `lchown`/`lstat` do) and the broker's requests (length-checked).
//!
//! Files: [`args`] (the command line and the pure parts), [`sys`] (the
//! Linux calls), [`layout`] (files in, owners and modes), [`processes`]
//! (`test_all` as its identity, the end kill), [`broker`]
//! (`run-as-student`), [`results`] (the results stream), [`env`] (the
//! job's environment) and [`fail`] (a setup failure).

/// A line on stderr in one `write(2)`, without std's stderr lock: the
/// native runner calls [`run`] in a copy of a process whose other threads
/// may have held that lock at the fork (see `sandbox::init::run_here`).
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        use std::os::fd::FromRawFd as _;
        let mut line = format!($($t)*);
        line.push('\n');
        // SAFETY: fd 2 stays open; ManuallyDrop never closes it.
        let mut err = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(2) });
        let _ = err.write_all(line.as_bytes());
    }};
}

pub(crate) mod args;
mod broker;
mod env;
mod fail;
mod layout;
mod processes;
mod results;
mod symlinks;
pub(crate) mod sys;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;

use args::{Args, Contract, EXIT_SETUP};
use broker::{client, open_broker, session};
use fail::{Fail, fail};
use layout::{copy_in, layout_harness, layout_workspace};
use processes::{kill_identity, reap_all, start_test_all};
use results::results_stream;

fn main() {
    let mut argv = std::env::args_os();
    let argv0 = argv.next().unwrap_or_default();
    let name = Path::new(&argv0)
        .file_name()
        .unwrap_or_default()
        .to_os_string();
    if name == "run-as-student" {
        client(argv.collect());
    }
    std::process::exit(run(argv.collect(), std::env::vars_os().collect(), None));
}

/// The init: `argv` after argv[0], the job's environment `env` and the
/// descriptor to watch ([`Args::watch`]) in, the exit status out
/// (test_all's, or [`EXIT_SETUP`] with the reason on stderr). It reads
/// nothing of its own process's environment, so the native runner can call
/// it in the sandbox's init instead of an `execve` of this binary.
pub(crate) fn run(argv: Vec<OsString>, env: Vec<(OsString, OsString)>, watch: Option<i32>) -> i32 {
    let args: Result<Vec<String>, _> = argv.into_iter().map(|a| a.into_string()).collect();
    let parsed = args
        .map_err(|_| "arguments must be UTF-8".to_string())
        .and_then(args::parse);
    let mut a = match parsed {
        Ok(a) => a,
        Err(e) => {
            say!("lg-init: {e}");
            return EXIT_SETUP;
        }
    };
    a.env = env;
    a.watch = watch;
    match init(&a) {
        Ok(code) => code,
        Err(f) => {
            say!("lg-init: setup failed at {}: {}", f.step, f.detail);
            EXIT_SETUP
        }
    }
}

fn init(a: &Args) -> Result<i32, Fail> {
    // Nothing the runner left open reaches the job.
    sys::cloexec_from(3).map_err(|e| fail("arrange descriptors", "close_range", e))?;
    if let Some(fd) = a.results_fd {
        sys::set_cloexec(fd, true).map_err(|e| {
            fail(
                "arrange descriptors",
                &format!("fcntl(--results-fd {fd})"),
                e,
            )
        })?;
    }
    sys::ignore_sigpipe();
    let nonce = match &a.nonce_file {
        Some(f) => {
            let n = fs::read(f)
                .map_err(|e| fail("read the nonce", &format!("open {}", f.display()), e))?;
            fs::remove_file(f)
                .map_err(|e| fail("read the nonce", &format!("unlink {}", f.display()), e))?;
            Some(n)
        }
        None => None,
    };
    sys::set_umask(0o022);
    let tests_dir = a.harness.join("tests");
    // Read before the copy: the list may sit among the staged trees.
    let test_paths = match &a.test_paths {
        Some(f) => {
            let b = fs::read(f)
                .map_err(|e| fail("read the test paths", &format!("open {}", f.display()), e))?;
            args::parse_test_paths(&b).map_err(|e| fail("read the test paths", "parse", e))?
        }
        None => BTreeSet::new(),
    };
    if let Some(from) = &a.copy_from {
        copy_in(a, from, &tests_dir)?;
    }
    layout_workspace(a, &test_paths)?;
    let listener = match a.contract {
        Contract::Trusted => {
            layout_harness(a, &tests_dir)?;
            Some(open_broker(a)?)
        }
        Contract::Stdout => None,
    };
    sys::pr(sys::PR_SET_CHILD_SUBREAPER, 1, 0).map_err(|e| {
        fail(
            "become the job's reaper",
            "prctl(PR_SET_CHILD_SUBREAPER)",
            e,
        )
    })?;
    let sigfd = sys::sigchld_fd().map_err(|e| fail("watch the job", "signalfd(SIGCHLD)", e))?;
    if a.contract == Contract::Trusted && !symlinks::report(symlinks::defuse(&a.workspace)) {
        let why = "could not do all its work (see above)";
        return Err(fail("sweep the workspace", "defuse", why));
    }
    // Calls in progress (see broker::Call); never inherited by test_all.
    let calls = match a.contract {
        Contract::Trusted => Some(
            sys::memfd(c"lg-init-calls").map_err(|e| fail("open the broker", "memfd_create", e))?,
        ),
        Contract::Stdout => None,
    };
    let test_all = start_test_all(a, &tests_dir)?;

    // Serve the broker and reap until test_all ends.
    let mut sessions: Vec<i32> = Vec::new();
    let status = loop {
        let mut ended = None;
        while let Ok(Some((pid, st))) = sys::wait(-1, sys::WNOHANG) {
            sessions.retain(|p| *p != pid);
            if pid == test_all {
                ended = Some(st);
            }
        }
        if let Some(st) = ended {
            break st;
        }
        let mut fds = vec![sys::pollfd {
            fd: sigfd,
            events: sys::POLLIN,
            revents: 0,
        }];
        let mut at = |fd: i32, events: i16| {
            fds.push(sys::pollfd {
                fd,
                events,
                revents: 0,
            });
            fds.len() - 1
        };
        let listener_at = listener.as_ref().map(|l| at(l.as_raw_fd(), sys::POLLIN));
        let watch_at = a.watch.map(|w| at(w, 0));
        if sys::poll_fds(&mut fds, -1).is_err() {
            continue;
        }
        if watch_at.is_some_and(|i| fds[i].revents & (sys::POLLERR | sys::POLLHUP) != 0) {
            // Nobody waits for this job any more: end it (as the
            // namespace's init, our exit ends every process in it).
            sys::exit_now(args::EXIT_ABANDONED);
        }
        if fds[0].revents != 0 {
            sys::drain_fd(sigfd);
        }
        if let (Some(l), Some(i)) = (&listener, listener_at)
            && fds[i].revents != 0
            && let Ok((conn, _)) = l.accept()
        {
            match sys::do_fork() {
                Ok(0) => {
                    drop(listener);
                    sys::close_fd(sigfd);
                    session(a, conn, calls)
                }
                Ok(pid) => sessions.push(pid),
                Err(e) => say!("lg-init: broker: fork: {e}"),
            }
        }
    };

    // test_all ended: nothing of the harness or the student survives it.
    drop(listener);
    if a.contract == Contract::Trusted {
        let _ = kill_identity(a.harness_id);
    }
    let _ = kill_identity(a.student);
    for pid in &sessions {
        let _ = sys::signal_pid(*pid, sys::SIGKILL);
    }
    reap_all();

    if let Some(fd) = a.results_fd {
        let stream = results_stream(a);
        // SAFETY: the runner handed us this fd; ManuallyDrop keeps it open
        // (exit closes it).
        let mut out = std::mem::ManuallyDrop::new(unsafe { fs::File::from_raw_fd(fd) });
        let mut all = Vec::new();
        if let Some(n) = &nonce {
            all.push(b'\n');
            all.extend_from_slice(n);
            all.push(b'\n');
        }
        all.extend_from_slice(&stream);
        if let Err(e) = out.write_all(&all).and_then(|_| out.flush()) {
            say!("lg-init: cannot write the results stream: {e}");
            return Ok(EXIT_SETUP);
        }
    }
    Ok(args::exit_code(status))
}
