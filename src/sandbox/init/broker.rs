//! The broker behind `run-as-student` (trusted contract): its socket in
//! the harness's home, one forked session per call that runs the command
//! as the student with the caller's fds 0-2 and ends everything of the
//! student afterwards, and the client half that `run-as-student` is. It
//! never runs anything as the harness or with a capability.

use std::ffi::{CString, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use super::args::{self, Args, EXIT_CLIENT};
use super::env::{BROKER, ENV_BROKER, cstr, student_env};
use super::fail::{Fail, fail};
use super::processes::{become_job, kill_identity};
use super::sys;

/// The broker's socket, reachable by the harness alone (it sits in the
/// harness's 0700 home and is the harness's, 0600).
pub(crate) fn open_broker(a: &Args) -> Result<UnixListener, Fail> {
    let step = "open the broker";
    let path = a.harness.join(BROKER);
    let _ = fs::remove_file(&path);
    let l = UnixListener::bind(&path).map_err(|e| fail(step, "bind", e))?;
    std::os::unix::fs::chown(&path, Some(a.harness_id.0), Some(a.harness_id.1))
        .map_err(|e| fail(step, "chown", e))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .map_err(|e| fail(step, "chmod", e))?;
    Ok(l)
}

/// One `run-as-student` call, in a forked child of the init (still the
/// sandbox's root): read the request and the caller's fds 0-2, run the
/// command as the student, kill everything of the student when it ends or
/// when the caller hangs up, send the status back.
pub(crate) fn session(a: &Args, conn: UnixStream, calls: Option<i32>) -> ! {
    let sock = conn.as_raw_fd();
    let mut fds = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut got = Vec::new();
    let mut want = None;
    loop {
        let n = match sys::recv_with_fds(sock, &mut buf, &mut fds) {
            Ok(0) | Err(_) => sys::exit_now(1),
            Ok(n) => n,
        };
        got.extend_from_slice(&buf[..n]);
        if want.is_none() && got.len() >= 4 {
            let len = u32::from_le_bytes([got[0], got[1], got[2], got[3]]) as usize;
            if len > args::REQUEST_MAX {
                sys::exit_now(1);
            }
            want = Some(len + 4);
        }
        if want.is_some_and(|w| got.len() >= w) {
            break;
        }
    }
    let argv = match args::decode_request(&got[4..]) {
        Ok(v) if fds.len() == 3 => v,
        _ => sys::exit_now(1),
    };
    let sigfd = match sys::sigchld_fd() {
        Ok(fd) => fd,
        Err(_) => sys::exit_now(1),
    };
    let env = student_env(a);
    let call = Call::start(a, calls);
    let pid = match sys::do_fork() {
        Ok(0) => {
            let code = run_student(a, &argv, &fds, &env);
            sys::exit_now(code)
        }
        Ok(p) => p,
        Err(_) => {
            call.end(a);
            sys::exit_now(1)
        }
    };
    for fd in &fds {
        sys::close_fd(*fd);
    }
    let status = loop {
        if let Ok(Some((_, st))) = sys::wait(pid, sys::WNOHANG) {
            break Some(st);
        }
        let mut p = [
            sys::pollfd {
                fd: sigfd,
                events: sys::POLLIN,
                revents: 0,
            },
            sys::pollfd {
                fd: sock,
                events: sys::POLLRDHUP,
                revents: 0,
            },
        ];
        let _ = sys::poll_fds(&mut p, -1);
        if p[0].revents != 0 {
            sys::drain_fd(sigfd);
        }
        if p[1].revents & (sys::POLLRDHUP | sys::POLLHUP | sys::POLLERR) != 0 {
            break None;
        }
    };
    let ended = kill_identity(a.student);
    // Nothing of the student runs now: what it left is judged before the
    // harness reads on.
    let swept = super::symlinks::report(super::symlinks::defuse(&a.workspace));
    if ended && swept {
        call.end(a);
    } else {
        // Fail closed: the harness gets "Permission denied", never what a
        // live student process or an unchecked link gives it.
        let why = if ended {
            "the sweep could not do all its work"
        } else {
            "student processes survived the end of the call"
        };
        say!("lg-init: the workspace stays closed to the harness: {why}");
    }
    // Answered after a hang-up too: a client that was asked to end (by
    // `timeout`) waits for this before it ends, so the harness never reads
    // on while the student's processes live or before the sweep.
    let code = status.map_or(128 + sys::SIGKILL as u32, |st| args::exit_code(st) as u32);
    let _ = (&conn).write_all(&code.to_le_bytes());
    sys::exit_now(0)
}

/// One call in progress, for the workspace's root: closed to the harness,
/// its owner (1070, the student's group: owner bits come first), from the
/// start of a call until the student's processes are ended and the
/// workspace swept, and opened again (1777) only by the last call to end.
/// A harness whose `run-as-student` was killed (Python's
/// `subprocess.run(timeout=…)` sends SIGKILL, which cannot be caught)
/// reads on at once, and must not reach what the student's code made
/// meanwhile. Calls hold a shared flock on the init's anonymous file
/// `calls` (an open of their own); the one that gets it exclusively at its
/// end is the last.
struct Call(Option<fs::File>);

impl Call {
    fn start(a: &Args, calls: Option<i32>) -> Call {
        let lock = calls.and_then(|fd| fs::File::open(format!("/proc/self/fd/{fd}")).ok());
        if let Some(f) = &lock {
            let _ = sys::flock_fd(f.as_raw_fd(), sys::LOCK_SH);
        }
        workspace_open_to_harness(a, false);
        Call(lock)
    }

    fn end(self, a: &Args) {
        let last = match &self.0 {
            Some(f) => {
                let fd = f.as_raw_fd();
                let _ = sys::flock_fd(fd, sys::LOCK_UN);
                sys::flock_fd(fd, sys::LOCK_EX | sys::LOCK_NB).is_ok()
            }
            None => true,
        };
        if last {
            workspace_open_to_harness(a, true);
        }
    }
}

fn workspace_open_to_harness(a: &Args, open: bool) {
    let ws = &a.workspace;
    let done = std::os::unix::fs::chown(ws, None, Some(a.student.1)).and_then(|()| {
        fs::set_permissions(
            ws,
            fs::Permissions::from_mode(if open { 0o1777 } else { 0o1070 }),
        )
    });
    if let Err(e) = done {
        let what = if open { "open" } else { "close" };
        say!(
            "lg-init: cannot {what} the workspace {} to the harness: {e}",
            ws.display()
        );
    }
}

/// The student's side of a session (forked): its fds, its identity, exec.
pub(crate) fn run_student(a: &Args, argv: &[Vec<u8>], fds: &[i32], env: &[CString]) -> i32 {
    let mut err = std::mem::ManuallyDrop::new(
        // SAFETY: the caller's stderr, received over the socket.
        unsafe { fs::File::from_raw_fd(fds[2]) },
    );
    let say = |err: &mut fs::File, m: String| {
        let _ = writeln!(err, "run-as-student: {m}");
    };
    for (i, fd) in fds.iter().enumerate() {
        if let Err(e) = sys::dup_to(*fd, i as i32) {
            say(&mut err, format!("dup2: {e}"));
            return EXIT_CLIENT;
        }
    }
    if let Err(m) = become_job(a, a.student) {
        say!("run-as-student: {m}");
        return EXIT_CLIENT;
    }
    sys::set_umask(0o022);
    if let Err(e) = std::env::set_current_dir(&a.workspace) {
        say!("run-as-student: chdir {}: {e}", a.workspace.display());
        return EXIT_CLIENT;
    }
    let cargv: Vec<CString> = argv.iter().map(|s| cstr(s.clone())).collect();
    let cmd = &argv[0];
    let mut last = io::Error::from_raw_os_error(2);
    if cmd.contains(&b'/') {
        last = sys::exec(&cargv[0], &cargv, env);
    } else {
        let path = env
            .iter()
            .find_map(|e| e.as_bytes().strip_prefix(b"PATH=").map(|p| p.to_vec()))
            .unwrap_or_default();
        for dir in path.split(|b| *b == b':') {
            let mut full = if dir.is_empty() {
                b".".to_vec()
            } else {
                dir.to_vec()
            };
            full.push(b'/');
            full.extend_from_slice(cmd);
            let e = sys::exec(&cstr(full), &cargv, env);
            // Keep the most telling error (EACCES over ENOENT).
            if e.raw_os_error() != Some(2) {
                last = e;
            }
        }
    }
    say!("run-as-student: {}: {last}", String::from_utf8_lossy(cmd));
    if last.raw_os_error() == Some(2) {
        127
    } else {
        126
    }
}

/// `run-as-student CMD ARGS…` (running as the harness): hand CMD and our
/// fds 0-2 to the broker, wait for the status, exit with it.
pub(crate) fn client(argv: Vec<OsString>) -> ! {
    if argv.is_empty() {
        say!("usage: run-as-student CMD [ARG...]");
        std::process::exit(2);
    }
    let path = std::env::var_os(ENV_BROKER).unwrap_or_else(|| "/harness/.broker".into());
    let conn = match UnixStream::connect(&path) {
        Ok(c) => c,
        Err(e) => {
            say!(
                "run-as-student: cannot reach the broker at {}: {e} (it works only inside a \
                 labgrader sandbox, from the harness under the trusted contract)",
                Path::new(&path).display()
            );
            std::process::exit(EXIT_CLIENT);
        }
    };
    // A signal that asks us to end (timeout's SIGTERM) is taken as a
    // cancel: the broker ends the student's processes and sweeps the
    // workspace, and only then do we end, by that signal. Ending at once
    // would let the harness read on while the student's code still runs.
    let signals = sys::signals_fd(&sys::ENDING_SIGNALS).ok();
    let req = args::encode_request(&argv.into_iter().map(|a| a.into_vec()).collect::<Vec<_>>());
    let sock = conn.as_raw_fd();
    let sent = match sys::send_with_fds(sock, &req, &[0, 1, 2]) {
        Ok(n) => n,
        Err(e) => {
            say!("run-as-student: send to the broker: {e}");
            std::process::exit(EXIT_CLIENT);
        }
    };
    if (&conn).write_all(&req[sent..]).is_err() {
        say!("run-as-student: the broker hung up");
        std::process::exit(EXIT_CLIENT);
    }
    let caught = signals.and_then(|fd| wait_for_answer_or_signal(sock, fd));
    if let Some(sig) = caught {
        let _ = conn.shutdown(std::net::Shutdown::Write);
        let mut done = [0u8; 4];
        let _ = (&conn).read_exact(&mut done);
        sys::die_of(sig);
    }
    let mut code = [0u8; 4];
    match (&conn).read_exact(&mut code) {
        Ok(()) => {
            let _ = conn.into_raw_fd();
            std::process::exit(u32::from_le_bytes(code).min(255) as i32)
        }
        Err(_) => {
            say!("run-as-student: the broker ended without a status");
            std::process::exit(EXIT_CLIENT)
        }
    }
}

/// Wait until the broker's answer is readable on `sock` (`None`) or an
/// ending signal arrives on `sigfd` (its number).
fn wait_for_answer_or_signal(sock: i32, sigfd: i32) -> Option<i32> {
    loop {
        let mut p = [
            sys::pollfd {
                fd: sock,
                events: sys::POLLIN,
                revents: 0,
            },
            sys::pollfd {
                fd: sigfd,
                events: sys::POLLIN,
                revents: 0,
            },
        ];
        if sys::poll_fds(&mut p, -1).is_err() {
            return None;
        }
        if p[1].revents != 0 {
            return sys::read_signal(sigfd);
        }
        if p[0].revents != 0 {
            return None;
        }
    }
}
