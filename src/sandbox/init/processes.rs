//! The job's processes: `./test_all` started as its identity with
//! nothing else (no groups, no capabilities, `no_new_privs`, the job's
//! limits), and, at the end, every process of an identity killed and
//! every child reaped. It never lays out files nor serves the broker.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::path::Path;

use super::args::{Args, Contract, EXIT_SETUP};
use super::env::{BROKER, ENV_BROKER, ENV_RESULTS, ENV_WORKSPACE, cstr, job_env};
use super::fail::{Fail, fail};
use super::sys;

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
    sys::pr(sys::PR_SET_NO_NEW_PRIVS, 1, 0)
        .map_err(|e| format!("prctl(PR_SET_NO_NEW_PRIVS): {e}"))?;
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
            job_env(a, &[(ENV_WORKSPACE, ws)]),
            0o022,
        ),
        Contract::Trusted => {
            let path = a.system_path();
            let mut p = a.bin_dir.as_os_str().to_os_string();
            p.push(":");
            p.push(path);
            (
                a.harness_id,
                tests_dir.to_path_buf(),
                // HOME is the harness's own: a HOME in the workspace would
                // let the student plant dotfiles the harness's tools read
                // (a Python user-site .pth, ~/.gitconfig, …).
                job_env(
                    a,
                    &[
                        (ENV_WORKSPACE, ws),
                        ("HOME", a.harness.clone().into_os_string()),
                        (ENV_RESULTS, a.harness.join("results").into_os_string()),
                        (ENV_BROKER, a.harness.join(BROKER).into_os_string()),
                        ("TMPDIR", a.harness.join("tmp").into_os_string()),
                        ("PATH", p),
                    ],
                ),
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
/// SIGKILL, round after round, until a round sees none alive (zombies
/// aside) and proves it saw them all, so a caller that returns next finds
/// nothing of that identity running. False (and said on stderr) when some
/// survived or could not be proven dead.
///
/// A round lists `/proc` at once and reads each status after: a process
/// listed may fork and then exit on its own (a fork bomb at its process
/// limit does, all the time) before its status is read, and its child was
/// in no list. So a round counts only if no pid was allocated in the pid
/// namespace from before its listing to after its last read (the
/// namespace's last pid unchanged: no process or thread was made meanwhile)
/// and it could judge every pid it listed.
pub(crate) fn kill_identity(ids: (u32, u32)) -> bool {
    // Signal as the identity for a moment, in this thread, rather than
    // from a forked killer: with the job's process limit full (a fork
    // bomb) a fork fails and the bomb would outlive the job. /proc is read
    // as root (the identity may not see its own processes there under
    // hidepid); real and saved uids stay root's, so the switch back is
    // allowed.
    for _ in 0..10_000 {
        let before = last_pid();
        let scan = scan(ids.0);
        let proven = scan.complete && before.is_some() && last_pid() == before;
        if scan.live.is_empty() {
            // Most jobs leave nothing behind: no signal, no euid switch.
            if proven {
                return true;
            }
            sys::sleep_us(200);
            continue;
        }
        if let Err(e) = sys::set_thread_euid(ids.0) {
            say!(
                "lg-init: cannot act as uid {} to end its processes: {e}",
                ids.0
            );
            return false;
        }
        for pid in scan.live {
            let _ = sys::signal_pid(pid, sys::SIGKILL);
        }
        if sys::set_thread_euid(0).is_err() {
            say!("lg-init: cannot become root again after ending the job's processes");
            sys::exit_now(EXIT_SETUP);
        }
        sys::sleep_us(200);
    }
    say!(
        "lg-init: processes of uid {} survived the end of the job, or could not be proven \
         ended (/proc unreadable, or never still: {LAST_PID} or /proc/loadavg)",
        ids.0
    );
    false
}

/// The pid namespace's last allocated pid (its cursor), as the kernel
/// keeps it: it moves with every process or thread made, failed forks
/// included. `ns_last_pid` needs CONFIG_CHECKPOINT_RESTORE; the last field
/// of `/proc/loadavg` is the same cursor on every kernel.
const LAST_PID: &str = "/proc/sys/kernel/ns_last_pid";

fn last_pid() -> Option<u64> {
    let parse = |s: &str| s.trim().parse().ok();
    match fs::read_to_string(LAST_PID) {
        Ok(s) => parse(&s),
        Err(_) => parse(
            fs::read_to_string("/proc/loadavg")
                .ok()?
                .split_whitespace()
                .last()?,
        ),
    }
}

/// One look at `/proc` for the live processes of a real uid.
struct Scan {
    /// Live (not zombie) processes of the uid, other than this one.
    live: Vec<i32>,
    /// Every pid listed was judged: read, or gone (ESRCH) since listed.
    complete: bool,
}

/// The live (not zombie) processes of real uid `uid`, other than this
/// one, as `/proc` shows them now.
fn scan(uid: u32) -> Scan {
    let me = std::process::id().to_string();
    let uid = uid.to_string();
    let mut s = Scan {
        live: Vec::new(),
        complete: true,
    };
    let dir = match fs::read_dir("/proc") {
        Ok(d) => d,
        Err(_) => {
            s.complete = false;
            return s;
        }
    };
    for e in dir {
        let Ok(e) = e else {
            s.complete = false;
            break;
        };
        let name = e.file_name();
        let Some(n) = name.to_str() else { continue };
        if !n.bytes().all(|b| b.is_ascii_digit()) || n == me {
            continue;
        }
        let Ok(pid) = n.parse::<i32>() else { continue };
        let Ok(status) = fs::read_to_string(e.path().join("status")) else {
            // Gone since listed, or not judged.
            s.complete &= gone(pid);
            continue;
        };
        let real = field(&status, "Uid:");
        if real.split_whitespace().next() != Some(uid.as_str()) {
            continue;
        }
        // The state shown is the main thread's: a process whose main
        // thread ended shows a zombie while its other threads run.
        let live = !dead(&status) || {
            match fs::read_dir(e.path().join("task")) {
                Ok(tasks) => tasks.into_iter().any(|t| match t {
                    Ok(t) => fs::read_to_string(t.path().join("status")).map_or_else(
                        |_| {
                            s.complete &= gone(pid);
                            false
                        },
                        |st| !dead(&st),
                    ),
                    Err(_) => {
                        s.complete = false;
                        false
                    }
                }),
                Err(_) => {
                    s.complete &= gone(pid);
                    false
                }
            }
        };
        if live {
            s.live.push(pid);
        }
    }
    s
}

/// Has `pid` left the process table (reaped)? A zombie still answers.
fn gone(pid: i32) -> bool {
    sys::signal_pid(pid, 0).is_err_and(|e| e.raw_os_error() == Some(sys::ESRCH))
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
