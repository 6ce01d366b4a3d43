//! The job's processes: `./test_all` started as its identity with
//! nothing else (no groups, no capabilities, `no_new_privs`, the job's
//! limits), and, at the end, every process of an identity killed and
//! every child reaped. It never lays out files nor serves the broker.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::path::Path;

use crate::args::{Args, Contract, EXIT_SETUP};
use crate::env::{BROKER, ENV_BROKER, ENV_RESULTS, ENV_WORKSPACE, cstr, job_env};
use crate::fail::{Fail, fail};
use crate::sys;

/// In a forked child: become `ids` with nothing else (no groups, no
/// capabilities, `no_new_privs`, the job's limits). Returns the failed
/// step's description.
pub(crate) fn become_job(a: &Args, ids: (u32, u32)) -> Result<(), String> {
    sys::reset_signals();
    sys::new_session().map_err(|e| format!("setsid: {e}"))?;
    sys::drop_bounding_set().map_err(|e| format!("prctl(PR_CAPBSET_DROP): {e}"))?;
    sys::clear_groups().map_err(|e| format!("setgroups: {e}"))?;
    sys::set_ids(ids.0, ids.1).map_err(|e| format!("setresgid/setresuid: {e}"))?;
    sys::pr(sys::PR_CAP_AMBIENT, sys::PR_CAP_AMBIENT_CLEAR_ALL, 0)
        .map_err(|e| format!("prctl(PR_CAP_AMBIENT): {e}"))?;
    sys::pr(sys::PR_SET_NO_NEW_PRIVS, 1, 0).map_err(|e| format!("prctl(PR_SET_NO_NEW_PRIVS): {e}"))?;
    for r in &a.rlimits {
        sys::set_rlimit(r.resource, r.soft, r.hard)
            .map_err(|e| format!("setrlimit({}): {e}", r.resource))?;
    }
    Ok(())
}

/// Fork `./test_all`: as the student in the workspace (stdout) or as the
/// harness in its tests (trusted). A failure before its exec comes back
/// over a close-on-exec pipe and is a setup failure.
pub(crate) fn start_test_all(a: &Args, tests_dir: &Path) -> Result<i32, Fail> {
    let step = "start test_all";
    let ws = a.workspace.as_os_str().to_os_string();
    let (ids, dir, env, umask) = match a.contract {
        Contract::Stdout => (
            a.student,
            a.workspace.clone(),
            job_env(&[(ENV_WORKSPACE, ws)]),
            0o022,
        ),
        Contract::Trusted => {
            let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
            let mut p = a.bin_dir.as_os_str().to_os_string();
            p.push(":");
            p.push(path);
            (
                a.harness_id,
                tests_dir.to_path_buf(),
                // HOME is the harness's own: a HOME in the workspace would
                // let the student plant dotfiles the harness's tools read
                // (a Python user-site .pth, ~/.gitconfig, …).
                job_env(&[
                    (ENV_WORKSPACE, ws),
                    ("HOME", a.harness.clone().into_os_string()),
                    (ENV_RESULTS, a.harness.join("results").into_os_string()),
                    (ENV_BROKER, a.harness.join(BROKER).into_os_string()),
                    ("TMPDIR", a.harness.join("tmp").into_os_string()),
                    ("PATH", p),
                ]),
                0o077,
            )
        }
    };
    let (rd, wr) = sys::pipe_cloexec().map_err(|e| fail(step, "pipe2", e))?;
    let pid = sys::do_fork().map_err(|e| fail(step, "fork", e))?;
    if pid == 0 {
        sys::close_fd(rd);
        let why: Result<(), String> = become_job(a, ids).and_then(|_| {
            sys::set_umask(umask);
            std::env::set_current_dir(&dir).map_err(|e| format!("chdir {}: {e}", dir.display()))?;
            let argv = [cstr("./test_all")];
            let e = sys::exec(&argv[0], &argv, &env);
            Err(format!("execve ./test_all in {}: {e}", dir.display()))
        });
        let msg = why.err().unwrap_or_default();
        // SAFETY: our end of the pipe.
        let mut w = unsafe { fs::File::from_raw_fd(wr) };
        let _ = w.write_all(msg.as_bytes());
        sys::exit_now(EXIT_SETUP);
    }
    sys::close_fd(wr);
    // SAFETY: our end of the pipe.
    let mut r = unsafe { fs::File::from_raw_fd(rd) };
    let mut msg = String::new();
    let _ = r.read_to_string(&mut msg);
    if !msg.is_empty() {
        let _ = sys::wait(pid, 0);
        return Err(Fail { step, detail: msg });
    }
    Ok(pid)
}

/// Kill every process running as `ids.0`: each one `/proc` lists is sent
/// SIGKILL, round after round, until none is left alive (zombies aside;
/// a fork made before its parent's SIGKILL is caught by the next round),
/// so a caller that returns next finds nothing of that identity running.
/// False (and said on stderr) when some survived.
pub(crate) fn kill_identity(ids: (u32, u32)) -> bool {
    // Most jobs leave nothing behind.
    if !any_alive(ids.0) {
        return true;
    }
    // Signal as the identity for a moment, in this thread, rather than
    // from a forked killer: with the job's process limit full (a fork
    // bomb) a fork fails and the bomb would outlive the job. /proc is read
    // as root (the identity may not see its own processes there under
    // hidepid); real and saved uids stay root's, so the switch back is
    // allowed.
    for _ in 0..10_000 {
        let pids: Vec<i32> = procs_of(ids.0).collect();
        if pids.is_empty() {
            return true;
        }
        if let Err(e) = sys::set_thread_euid(ids.0) {
            eprintln!("lg-init: cannot act as uid {} to end its processes: {e}", ids.0);
            return false;
        }
        for pid in pids {
            let _ = sys::signal_pid(pid, sys::SIGKILL);
        }
        if sys::set_thread_euid(0).is_err() {
            eprintln!("lg-init: cannot become root again after ending the job's processes");
            sys::exit_now(EXIT_SETUP);
        }
        sys::sleep_us(200);
    }
    eprintln!("lg-init: processes of uid {} survived the end of the job", ids.0);
    false
}

/// Is a process of real uid `uid`, other than this one, alive (not a zombie)?
pub(crate) fn any_alive(uid: u32) -> bool {
    procs_of(uid).next().is_some()
}

/// The live (not zombie) processes of real uid `uid`, other than this one,
/// as `/proc` shows them now.
pub(crate) fn procs_of(uid: u32) -> impl Iterator<Item = i32> {
    let me = std::process::id().to_string();
    let uid = uid.to_string();
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(move |e| {
            let name = e.file_name();
            let n = name.to_str()?;
            if !n.bytes().all(|b| b.is_ascii_digit()) || n == me {
                return None;
            }
            let status = fs::read_to_string(e.path().join("status")).ok()?;
            let real = field(&status, "Uid:");
            let real = real.split_whitespace().next().unwrap_or("");
            // The state shown is the main thread's: a process whose main
            // thread ended shows a zombie while its other threads run.
            let live = || {
                !dead(&status)
                    || fs::read_dir(e.path().join("task"))
                        .into_iter()
                        .flatten()
                        .flatten()
                        .any(|t| fs::read_to_string(t.path().join("status")).is_ok_and(|s| !dead(&s)))
            };
            (real == uid && live()).then(|| n.parse().ok()).flatten()
        })
}

/// A `/proc` status's field `k`, trimmed.
fn field<'a>(status: &'a str, k: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(k))
        .map(str::trim)
        .unwrap_or("")
}

/// Is the task of this `/proc` status a zombie or dead?
fn dead(status: &str) -> bool {
    let state = field(status, "State:");
    state.starts_with('Z') || state.starts_with('X')
}

/// Reap every child left (all were killed), for at most about a second.
pub(crate) fn reap_all() {
    for _ in 0..1000 {
        match sys::wait(-1, sys::WNOHANG) {
            Ok(Some(_)) => continue,
            Ok(None) => sys::sleep_us(1000),
            Err(_) => return, // ECHILD
        }
    }
}
