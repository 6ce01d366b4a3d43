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
//! broker; anything else is the init (see [`args::USAGE`]).
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

mod args;
mod sys;

use std::collections::BTreeSet;
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use args::{Args, Contract, EXIT_CLIENT, EXIT_SETUP};

/// The broker's socket, in the harness's 0700 home.
const BROKER: &str = ".broker";
/// Variable naming the broker's socket in the harness's environment.
const ENV_BROKER: &str = "LABGRADER_BROKER";
const ENV_WORKSPACE: &str = "LABGRADER_WORKSPACE";
const ENV_RESULTS: &str = "LABGRADER_RESULTS";

/// A setup failure: the step, the call and what the kernel said.
struct Fail {
    step: &'static str,
    detail: String,
}

fn fail(step: &'static str, call: &str, e: impl std::fmt::Display) -> Fail {
    Fail {
        step,
        detail: format!("{call}: {e}"),
    }
}

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
    let args: Result<Vec<String>, _> = argv.map(|a| a.into_string()).collect();
    let parsed = args
        .map_err(|_| "arguments must be UTF-8".to_string())
        .and_then(args::parse);
    let a = match parsed {
        Ok(a) => a,
        Err(e) => {
            eprintln!("lg-init: {e}");
            std::process::exit(EXIT_SETUP);
        }
    };
    match init(&a) {
        Ok(code) => std::process::exit(code),
        Err(f) => {
            eprintln!("lg-init: setup failed at {}: {}", f.step, f.detail);
            std::process::exit(EXIT_SETUP);
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
            let n = fs::read(f).map_err(|e| fail("read the nonce", &format!("open {}", f.display()), e))?;
            fs::remove_file(f).map_err(|e| fail("read the nonce", &format!("unlink {}", f.display()), e))?;
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
    sys::pr(sys::PR_SET_CHILD_SUBREAPER, 1, 0)
        .map_err(|e| fail("become the job's reaper", "prctl(PR_SET_CHILD_SUBREAPER)", e))?;
    let sigfd = sys::sigchld_fd().map_err(|e| fail("watch the job", "signalfd(SIGCHLD)", e))?;
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
        if let Some(l) = &listener {
            fds.push(sys::pollfd {
                fd: l.as_raw_fd(),
                events: sys::POLLIN,
                revents: 0,
            });
        }
        if sys::poll_fds(&mut fds, -1).is_err() {
            continue;
        }
        if fds[0].revents != 0 {
            sys::drain_fd(sigfd);
        }
        if let (Some(l), Some(pfd)) = (&listener, fds.get(1))
            && pfd.revents != 0
            && let Ok((conn, _)) = l.accept()
        {
            match sys::do_fork() {
                Ok(0) => {
                    drop(listener);
                    sys::close_fd(sigfd);
                    session(a, conn)
                }
                Ok(pid) => sessions.push(pid),
                Err(e) => eprintln!("lg-init: broker: fork: {e}"),
            }
        }
    };

    // test_all ended: nothing of the harness or the student survives it.
    drop(listener);
    if a.contract == Contract::Trusted {
        kill_identity(a.harness_id);
    }
    kill_identity(a.student);
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
            eprintln!("lg-init: cannot write the results stream: {e}");
            return Ok(EXIT_SETUP);
        }
    }
    Ok(args::exit_code(status))
}

/// Copy `from/workspace` (and, trusted, `from/tests`) in, then unmount the
/// staged trees so nothing of the job can reach them again.
fn copy_in(a: &Args, from: &Path, tests_dir: &Path) -> Result<(), Fail> {
    copy_tree(&from.join("workspace"), &a.workspace)
        .map_err(|e| fail("copy the workspace in", "copy", e))?;
    if a.contract == Contract::Trusted {
        let src = from.join("tests");
        if src.exists() {
            mkdir_p(&a.harness).map_err(|e| fail("copy the tests in", "mkdir", e))?;
            mkdir_p(tests_dir).map_err(|e| fail("copy the tests in", "mkdir", e))?;
            copy_tree(&src, tests_dir).map_err(|e| fail("copy the tests in", "copy", e))?;
        }
    }
    for p in [from.join("workspace"), from.join("tests"), from.join("test-paths")] {
        unmount_if_mounted(&p).map_err(|e| fail("hide the staged trees", "umount2", e))?;
    }
    Ok(())
}

fn mkdir_p(p: &Path) -> io::Result<()> {
    match fs::create_dir(p) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        r => r,
    }
}

fn unmount_if_mounted(p: &Path) -> io::Result<()> {
    if !p.exists() {
        return Ok(());
    }
    let c = CString::new(p.as_os_str().as_bytes())?;
    match sys::detach(&c) {
        // EINVAL: not a mount point.
        Err(e) if e.raw_os_error() == Some(22) => Ok(()),
        r => r,
    }
}

/// Copy a tree: directories, regular files (mode kept, set-id bits
/// dropped) and symlinks (as links); anything else is skipped. Never
/// follows a symlink of the source.
fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let at = |e: io::Error, p: &Path| io::Error::new(e.kind(), format!("{}: {e}", p.display()));
    for entry in fs::read_dir(src).map_err(|e| at(e, src))? {
        let entry = entry.map_err(|e| at(e, src))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let meta = fs::symlink_metadata(&from).map_err(|e| at(e, &from))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(&from).map_err(|e| at(e, &from))?;
            std::os::unix::fs::symlink(&target, &to).map_err(|e| at(e, &to))?;
        } else if ft.is_dir() {
            fs::create_dir(&to).map_err(|e| at(e, &to))?;
            copy_tree(&from, &to)?;
            fs::set_permissions(&to, fs::Permissions::from_mode(meta.mode() & 0o777))
                .map_err(|e| at(e, &to))?;
        } else if ft.is_file() {
            let mut input = fs::OpenOptions::new()
                .read(true)
                .custom_flags(sys::O_NOFOLLOW)
                .open(&from)
                .map_err(|e| at(e, &from))?;
            let mut output = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(meta.mode() & 0o777)
                .open(&to)
                .map_err(|e| at(e, &to))?;
            io::copy(&mut input, &mut output).map_err(|e| at(e, &to))?;
            output
                .set_permissions(fs::Permissions::from_mode(meta.mode() & 0o777))
                .map_err(|e| at(e, &to))?;
        }
    }
    Ok(())
}

/// Read-only for everyone, executable bits kept.
fn readonly_mode(mode: u32) -> u32 {
    if mode & 0o111 != 0 { 0o555 } else { 0o444 }
}

/// One entry's owner and mode. Symlinks are chowned as links, never
/// followed; their mode means nothing.
fn own(path: &Path, meta: &fs::Metadata, ids: (u32, u32), mode: Option<u32>) -> io::Result<()> {
    let at = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    std::os::unix::fs::lchown(path, Some(ids.0), Some(ids.1)).map_err(at)?;
    if let (Some(m), false) = (mode, meta.file_type().is_symlink()) {
        fs::set_permissions(path, fs::Permissions::from_mode(m)).map_err(at)?;
    }
    Ok(())
}

/// The workspace: the student's entries are the student's; the entries
/// that came from the tests are the harness's, files without write bits,
/// directories sticky 1777 (the student may add files, never replace one
/// of the harness's); the workspace itself is the harness's, 1777.
fn layout_workspace(a: &Args, tests: &BTreeSet<PathBuf>) -> Result<(), Fail> {
    fn walk(
        dir: &Path,
        rel: &Path,
        tests: &BTreeSet<PathBuf>,
        student: (u32, u32),
        harness: (u32, u32),
    ) -> io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let rel = rel.join(entry.file_name());
            let meta = fs::symlink_metadata(&path)?;
            let is_test = tests.contains(&rel);
            let ft = meta.file_type();
            if ft.is_dir() {
                walk(&path, &rel, tests, student, harness)?;
                if is_test {
                    own(&path, &meta, harness, Some(0o1777))?;
                } else {
                    own(&path, &meta, student, Some(meta.mode() & 0o777 | 0o700))?;
                }
            } else if is_test && ft.is_file() {
                own(&path, &meta, harness, Some(readonly_mode(meta.mode())))?;
            } else if is_test {
                own(&path, &meta, harness, None)?;
            } else if ft.is_file() {
                own(&path, &meta, student, Some(meta.mode() & 0o777))?;
            } else {
                own(&path, &meta, student, None)?;
            }
        }
        Ok(())
    }
    walk(
        &a.workspace,
        Path::new(""),
        tests,
        a.student,
        a.harness_id,
    )
    .map_err(|e| fail("lay out the workspace", "lchown/chmod", e))?;
    let meta = fs::symlink_metadata(&a.workspace)
        .map_err(|e| fail("lay out the workspace", "lstat", e))?;
    own(&a.workspace, &meta, a.harness_id, Some(0o1777))
        .map_err(|e| fail("lay out the workspace", "lchown/chmod", e))
}

/// The harness's home (0700, the harness's): `tests` owned by the
/// sandbox's root, files without write bits, directories 1777; `results`
/// and `tmp` the harness's, 0700.
fn layout_harness(a: &Args, tests_dir: &Path) -> Result<(), Fail> {
    let step = "lay out the harness";
    mkdir_p(&a.harness).map_err(|e| fail(step, "mkdir", e))?;
    mkdir_p(tests_dir).map_err(|e| fail(step, "mkdir", e))?;
    fn walk(dir: &Path) -> io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let meta = fs::symlink_metadata(&path)?;
            let ft = meta.file_type();
            if ft.is_dir() {
                walk(&path)?;
                own(&path, &meta, (0, 0), Some(0o1777))?;
            } else if ft.is_file() {
                own(&path, &meta, (0, 0), Some(readonly_mode(meta.mode())))?;
            } else {
                own(&path, &meta, (0, 0), None)?;
            }
        }
        Ok(())
    }
    walk(tests_dir).map_err(|e| fail(step, "lchown/chmod", e))?;
    let meta = fs::symlink_metadata(tests_dir).map_err(|e| fail(step, "lstat", e))?;
    own(tests_dir, &meta, (0, 0), Some(0o1777)).map_err(|e| fail(step, "lchown/chmod", e))?;
    for sub in ["results", "tmp"] {
        let p = a.harness.join(sub);
        mkdir_p(&p).map_err(|e| fail(step, "mkdir", e))?;
        let meta = fs::symlink_metadata(&p).map_err(|e| fail(step, "lstat", e))?;
        if !meta.is_dir() {
            return Err(fail(step, "mkdir", format!("{} is not a directory", p.display())));
        }
        own(&p, &meta, a.harness_id, Some(0o700)).map_err(|e| fail(step, "lchown/chmod", e))?;
    }
    let meta = fs::symlink_metadata(&a.harness).map_err(|e| fail(step, "lstat", e))?;
    own(&a.harness, &meta, a.harness_id, Some(0o700)).map_err(|e| fail(step, "lchown/chmod", e))
}

/// The broker's socket, reachable by the harness alone (it sits in the
/// harness's 0700 home and is the harness's, 0600).
fn open_broker(a: &Args) -> Result<UnixListener, Fail> {
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

fn cstr(b: impl Into<Vec<u8>>) -> CString {
    // Callers pass bytes that hold no NUL (checked paths, env entries).
    CString::new(b).unwrap_or_default()
}

fn env_entry(k: &OsStr, v: &OsStr) -> CString {
    let mut e = k.as_bytes().to_vec();
    e.push(b'=');
    e.extend_from_slice(v.as_bytes());
    cstr(e)
}

/// The job environment lg-init was given, with `extra` set over it.
fn job_env(extra: &[(&str, OsString)]) -> Vec<CString> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !extra.iter().any(|(x, _)| OsStr::new(x) == k))
        .collect();
    env.extend(extra.iter().map(|(k, v)| (OsString::from(k), v.clone())));
    env.sort();
    env.iter().map(|(k, v)| env_entry(k, v)).collect()
}

/// In a forked child: become `ids` with nothing else (no groups, no
/// capabilities, `no_new_privs`, the job's limits). Returns the failed
/// step's description.
fn become_job(a: &Args, ids: (u32, u32)) -> Result<(), String> {
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
fn start_test_all(a: &Args, tests_dir: &Path) -> Result<i32, Fail> {
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

/// Kill every process running as `ids.0`, from a child that becomes it:
/// `kill(-1, SIGKILL)` then reaches every process of that uid but the
/// caller (the kernel makes a fork racing with it fail), and nothing else.
/// The child then waits until none is left alive (zombies aside), so a
/// caller that returns next finds nothing of that identity running.
fn kill_identity(ids: (u32, u32)) {
    // Most jobs leave nothing behind.
    if !any_alive(ids.0) {
        return;
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
            return;
        }
        if let Err(e) = sys::set_thread_euid(ids.0) {
            eprintln!("lg-init: cannot act as uid {} to end its processes: {e}", ids.0);
            return;
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
}

/// Is a process of real uid `uid`, other than this one, alive (not a zombie)?
fn any_alive(uid: u32) -> bool {
    procs_of(uid).next().is_some()
}

/// The live (not zombie) processes of real uid `uid`, other than this one,
/// as `/proc` shows them now.
fn procs_of(uid: u32) -> impl Iterator<Item = i32> {
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
            let field = |k: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .map(str::trim)
                    .unwrap_or("")
                    .to_string()
            };
            let state = field("State:");
            let real = field("Uid:");
            let real = real.split_whitespace().next().unwrap_or("");
            let live = !state.starts_with('Z') && !state.starts_with('X');
            (real == uid && live).then(|| n.parse().ok()).flatten()
        })
}

/// Reap every child left (all were killed), for at most about a second.
fn reap_all() {
    for _ in 0..1000 {
        match sys::wait(-1, sys::WNOHANG) {
            Ok(Some(_)) => continue,
            Ok(None) => sys::sleep_us(1000),
            Err(_) => return, // ECHILD
        }
    }
}

/// The results stream: the regular files directly in the results dir
/// (trusted), then the flags.
fn results_stream(a: &Args) -> Vec<u8> {
    let mut out = Vec::new();
    if a.contract == Contract::Trusted {
        let dir = a.harness.join("results");
        // The harness owns its home: a results "directory" that is a
        // symlink is not followed (nothing of the job runs any more).
        let real_dir = fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir());
        let mut names: Vec<OsString> = fs::read_dir(&dir)
            .ok()
            .filter(|_| real_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        let (mut files, mut bytes) = (0usize, 0u64);
        for name in names {
            let nb = name.as_bytes();
            if !args::sendable_name(nb) {
                eprintln!("lg-init: results: skipped a file with an unusable name");
                continue;
            }
            let f = fs::OpenOptions::new()
                .read(true)
                .custom_flags(sys::O_NOFOLLOW | sys::O_NONBLOCK)
                .open(dir.join(&name));
            let Ok(mut f) = f else { continue };
            let Ok(meta) = f.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            if files >= args::RESULTS_FILES || bytes + meta.len() > args::RESULTS_BYTES {
                eprintln!(
                    "lg-init: results: dropped {} (more than {} files or {} bytes)",
                    name.to_string_lossy(),
                    args::RESULTS_FILES,
                    args::RESULTS_BYTES
                );
                continue;
            }
            let mut data = Vec::with_capacity(meta.len() as usize);
            if (&mut f).take(meta.len()).read_to_end(&mut data).is_err() {
                continue;
            }
            files += 1;
            bytes += data.len() as u64;
            args::frame_file(&mut out, nb, &data);
        }
    }
    let mut writable = vec![a.workspace.clone(), PathBuf::from("/tmp")];
    if a.contract == Contract::Trusted {
        writable.push(a.harness.clone());
    }
    let full = writable.iter().any(|p| {
        let c = cstr(p.as_os_str().as_bytes());
        sys::free_bytes(&c).is_ok_and(|free| free < args::FULL_BELOW)
    });
    args::frame_end(&mut out, if full { args::FLAG_DISK_FULL } else { 0 });
    out
}

/// One `run-as-student` call, in a forked child of the init (still the
/// sandbox's root): read the request and the caller's fds 0-2, run the
/// command as the student, kill everything of the student when it ends or
/// when the caller hangs up, send the status back.
fn session(a: &Args, conn: UnixStream) -> ! {
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
    let pid = match sys::do_fork() {
        Ok(0) => {
            let code = run_student(a, &argv, &fds, &env);
            sys::exit_now(code)
        }
        Ok(p) => p,
        Err(_) => sys::exit_now(1),
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
    kill_identity(a.student);
    if let Some(st) = status {
        let code = args::exit_code(st) as u32;
        let _ = (&conn).write_all(&code.to_le_bytes());
    }
    sys::exit_now(0)
}

/// The student's environment: clean, only the documented variables.
fn student_env(a: &Args) -> Vec<CString> {
    let mut env: Vec<(OsString, OsString)> = Vec::new();
    let bin = a.bin_dir.as_os_str().as_bytes().to_vec();
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    // Only the system's PATH, never the harness's helpers.
    let path: Vec<&[u8]> = path
        .as_bytes()
        .split(|b| *b == b':')
        .filter(|p| *p != bin.as_slice())
        .collect();
    env.push(("PATH".into(), OsString::from_vec(path.join(&b':'))));
    env.push(("HOME".into(), a.workspace.clone().into_os_string()));
    env.push((
        "LANG".into(),
        std::env::var_os("LANG").unwrap_or_else(|| "C.UTF-8".into()),
    ));
    env.push((ENV_WORKSPACE.into(), a.workspace.clone().into_os_string()));
    for (k, v) in std::env::vars_os() {
        let kb = k.as_bytes();
        if kb.starts_with(b"LABGRADER_")
            && k != ENV_WORKSPACE
            && k != ENV_RESULTS
            && k != ENV_BROKER
        {
            env.push((k, v));
        }
    }
    env.iter().map(|(k, v)| env_entry(k, v)).collect()
}

/// The student's side of a session (forked): its fds, its identity, exec.
fn run_student(a: &Args, argv: &[Vec<u8>], fds: &[i32], env: &[CString]) -> i32 {
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
        let _ = writeln!(io::stderr(), "run-as-student: {m}");
        return EXIT_CLIENT;
    }
    sys::set_umask(0o022);
    if let Err(e) = std::env::set_current_dir(&a.workspace) {
        let _ = writeln!(io::stderr(), "run-as-student: chdir {}: {e}", a.workspace.display());
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
            let mut full = if dir.is_empty() { b".".to_vec() } else { dir.to_vec() };
            full.push(b'/');
            full.extend_from_slice(cmd);
            let e = sys::exec(&cstr(full), &cargv, env);
            // Keep the most telling error (EACCES over ENOENT).
            if e.raw_os_error() != Some(2) {
                last = e;
            }
        }
    }
    let _ = writeln!(
        io::stderr(),
        "run-as-student: {}: {last}",
        String::from_utf8_lossy(cmd)
    );
    if last.raw_os_error() == Some(2) { 127 } else { 126 }
}

/// `run-as-student CMD ARGS…` (running as the harness): hand CMD and our
/// fds 0-2 to the broker, wait for the status, exit with it.
fn client(argv: Vec<OsString>) -> ! {
    if argv.is_empty() {
        eprintln!("usage: run-as-student CMD [ARG...]");
        std::process::exit(2);
    }
    let path = std::env::var_os(ENV_BROKER).unwrap_or_else(|| "/harness/.broker".into());
    let conn = match UnixStream::connect(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "run-as-student: cannot reach the broker at {}: {e} (it works only inside a \
                 labgrader sandbox, from the harness under the trusted contract)",
                Path::new(&path).display()
            );
            std::process::exit(EXIT_CLIENT);
        }
    };
    let req = args::encode_request(&argv.into_iter().map(|a| a.into_vec()).collect::<Vec<_>>());
    let sock = conn.as_raw_fd();
    let sent = match sys::send_with_fds(sock, &req, &[0, 1, 2]) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("run-as-student: send to the broker: {e}");
            std::process::exit(EXIT_CLIENT);
        }
    };
    if (&conn).write_all(&req[sent..]).is_err() {
        eprintln!("run-as-student: the broker hung up");
        std::process::exit(EXIT_CLIENT);
    }
    let mut code = [0u8; 4];
    match (&conn).read_exact(&mut code) {
        Ok(()) => {
            let _ = conn.into_raw_fd();
            std::process::exit(u32::from_le_bytes(code).min(255) as i32)
        }
        Err(_) => {
            eprintln!("run-as-student: the broker ended without a status");
            std::process::exit(EXIT_CLIENT)
        }
    }
}
