//! The sandbox's inside: what runs between `clone(2)` and the start of
//! `lg-init` (which starts `test_all`), as an ordered list of one-step
//! functions (google/nsjail's `contain.cc`, isolate). Each step names itself
//! and its syscall; a failing step writes a fixed-size [`Record`] to the
//! close-on-exec report pipe and the child exits, so the daemon can say
//! *which* step failed and why.
//!
//! This code runs in a copy of the spawner, itself a fork of the
//! multi-threaded daemon, so it must only do async-signal-safe work: raw
//! syscalls on values the parent prepared in a [`Plan`] (C strings, fds,
//! numbers). It never allocates or frees, never takes a lock, never panics
//! (no indexing that could fail, no `unwrap`), never logs. Anything
//! needing memory is built by the parent before the clone.
//!
//! Process layout inside the new PID namespace: pid 1 is our init, which
//! after setup calls lg-init's own code in this same process
//! ([`crate::sandbox::init::run_here`], not an `execve` of its binary):
//! lg-init reaps every orphan, starts test_all and ends the job; its exit
//! status goes to the report pipe and the init exits, which makes the
//! kernel kill whatever is left in the namespace. lg-init exits at once
//! when the report pipe loses its reader: the daemon died or dropped the
//! run. It allocates, but takes none of std's locks (stderr, environment)
//! that a thread of the daemon could have held when the spawner was
//! forked. The init is the sandbox's root (uid 0 of the job's user
//! namespace, a subordinate id on the host) with `no_new_privs`,
//! undumpable; lg-init gives every job process its identity, drops its
//! capabilities and applies the run's limits.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, RawFd};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::plan::{
    ChildArgs, FD_GO, FD_REPORT, FD_RESULTS, FD_SOURCES, FD_TEST_PATHS, MAX_SOURCES, Op, Plan,
    Record, Step,
};

type Fail = (Step, Errno, u32);

fn at(step: Step) -> impl Fn(Errno) -> Fail {
    move |e| (step, e, 0)
}

fn report(fd: RawFd, r: Record) {
    let buf = r.encode();
    // SAFETY: plain write(2) of a stack buffer.
    unsafe {
        libc::write(fd, buf.as_ptr().cast(), buf.len());
    }
}

/// Entry of the clone: the sandbox's init. `arg` is a `ChildArgs`.
pub extern "C" fn init_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: the parent passes a valid ChildArgs that outlives the clone
    // call; the child owns a private copy of the address space.
    let args = unsafe { &mut *(arg as *mut ChildArgs) };
    // A name of its own in `ps` (a clone keeps the spawner's).
    // SAFETY: prctl(PR_SET_NAME) of this process with a C string.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"lg-init".as_ptr()) };
    if let Err(failed) = setup(args) {
        report_and_exit(failed, 121);
    }
    let code = lg_init(args.plan);
    // As a wait status: the daemon reads test_all's status from it
    // (lg-init's exit code, a signal death as 128+N).
    report(FD_REPORT, Record::Status((code & 0xff) << 8));
    // SAFETY: _exit ends this process without running the daemon's
    // atexit handlers or flushing its buffers (copies, not ours); as the
    // namespace's init, it ends every process left in it.
    unsafe { libc::_exit(0) }
}

/// lg-init's init, in this process: its own code, called rather than
/// started with an `execve` of its binary, which cost a second process,
/// a fresh address space and glibc's start-up (whose CPU feature probe
/// traps to the hypervisor on a VM) on every run. It takes the job's
/// environment from the plan, never this process's, and ends the job at
/// once when the report pipe loses its reader.
fn lg_init(plan: &Plan) -> libc::c_int {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let os = |b: &[u8]| OsStr::from_bytes(b).to_os_string();
    let argv = plan.argv.iter().skip(1).map(|a| os(a.as_bytes())).collect();
    let env = plan
        .envp
        .iter()
        .map(|e| {
            let e = e.as_bytes();
            match e.iter().position(|b| *b == b'=') {
                Some(i) => (os(&e[..i]), os(&e[i + 1..])),
                None => (os(e), Default::default()),
            }
        })
        .collect();
    crate::sandbox::init::run_here(argv, env, Some(FD_REPORT))
}

/// Report the failed step on the report pipe and end this child with
/// `code`.
fn report_and_exit((step, errno, op): Fail, code: libc::c_int) -> ! {
    report(
        FD_REPORT,
        Record::Failed {
            step: step as u32,
            errno: errno as i32,
            op,
        },
    );
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(code) }
}

/// Move the fds the child needs to its fixed layout and close the rest
/// (other jobs' pipes must not stay open in this process).
fn arrange_fds(plan: &Plan) -> Result<(), Fail> {
    let mut fixed = plan.fixed_fds();
    let mut high: RawFd = FD_SOURCES;
    for fd in fixed.iter() {
        high = high.max(*fd + 1);
    }
    // First copy everything above every fd involved, so the final dup3s
    // cannot clobber one not moved yet.
    for fd in fixed.iter_mut() {
        // SAFETY: fcntl on an fd we hold.
        let r = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, high) };
        *fd = Errno::result(r).map_err(at(Step::Fds))?;
    }
    for (i, fd) in fixed.iter().enumerate() {
        let (to, flags) = match i {
            0..=2 => (i as RawFd, 0),
            3 => (FD_REPORT, libc::O_CLOEXEC),
            4 => (FD_GO, libc::O_CLOEXEC),
            5 => (FD_RESULTS, 0),
            _ => (FD_TEST_PATHS, 0),
        };
        // SAFETY: dup3 on fds we hold.
        let r = unsafe { libc::dup3(*fd, to, flags) };
        Errno::result(r).map_err(at(Step::Fds))?;
    }
    close_from(FD_SOURCES).map_err(at(Step::Fds))
}

/// Block until the parent writes one byte on the go pipe.
fn wait_go(step: Step) -> Result<(), Fail> {
    let mut go = [0u8; 1];
    loop {
        // SAFETY: read one byte from the go pipe.
        let n = unsafe { libc::read(FD_GO, go.as_mut_ptr().cast(), 1) };
        match n {
            1 => return Ok(()),
            // EOF: the daemon is gone or gave up.
            0 => return Err((step, Errno::EPIPE, 0)),
            _ if Errno::last() == Errno::EINTR => continue,
            _ => return Err((step, Errno::last(), 0)),
        }
    }
}

/// Open every bind source at FD_SOURCES + index.
fn open_sources(plan: &Plan) -> Result<(), Fail> {
    if plan.sources.len() > MAX_SOURCES {
        return Err((Step::Sources, Errno::E2BIG, 0));
    }
    for (i, (path, dir)) in plan.sources.iter().enumerate() {
        let mut flags = libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW;
        if *dir {
            flags |= libc::O_DIRECTORY;
        }
        let fail = |e| (Step::Sources, e, i as u32);
        // SAFETY: open on a C string.
        let fd = Errno::result(unsafe { libc::open(path.as_ptr(), flags) }).map_err(fail)?;
        let want = FD_SOURCES + i as RawFd;
        if fd != want {
            // SAFETY: dup3/close on fds we hold.
            Errno::result(unsafe { libc::dup3(fd, want, libc::O_CLOEXEC) }).map_err(fail)?;
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

fn close_from(first: RawFd) -> Result<(), Errno> {
    // SAFETY: close_range(2) closes only fds of this process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            0,
        )
    };
    if r == 0 {
        return Ok(());
    }
    // Kernels before 5.9: close one by one up to the soft limit.
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit into a stack struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    let top = rl.rlim_cur.min(1 << 20) as RawFd;
    for fd in first..top {
        // SAFETY: closing fds we may or may not hold; EBADF is fine.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;

fn capget() -> Result<[CapData; 2], Errno> {
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget with a v3 header and two data structs.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    Errno::result(r).map(|_| data)
}

fn capset(data: &[CapData; 2]) -> Result<(), Errno> {
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    // SAFETY: capset with a v3 header and two data structs.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    Errno::result(r).map(drop)
}

fn run_op(plan: &Plan, op: &Op) -> Result<(), Errno> {
    match op {
        Op::Mkdir { path, mode } => {
            // SAFETY: mkdir on a C string.
            Errno::result(unsafe { libc::mkdir(path.as_ptr(), *mode) }).map(drop)
        }
        Op::Touch { path } => {
            // SAFETY: open/close on a C string.
            let fd = Errno::result(unsafe {
                libc::open(
                    path.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                    0o644 as libc::c_uint,
                )
            })?;
            // SAFETY: closing the fd just opened.
            unsafe { libc::close(fd) };
            Ok(())
        }
        Op::Symlink { target, path } => {
            // SAFETY: symlink on C strings.
            Errno::result(unsafe { libc::symlink(target.as_ptr(), path.as_ptr()) }).map(drop)
        }
        Op::Bind {
            source,
            path,
            flags,
        } => {
            let src = plan.source_paths.get(*source).ok_or(Errno::EINVAL)?;
            mount(
                Some(src.as_c_str()),
                path.as_c_str(),
                None::<&CStr>,
                MsFlags::MS_BIND,
                None::<&CStr>,
            )?;
            mount(
                None::<&CStr>,
                path.as_c_str(),
                None::<&CStr>,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | *flags,
                None::<&CStr>,
            )
        }
        Op::Mount {
            fstype,
            path,
            flags,
            data,
        } => mount(
            Some(fstype.as_c_str()),
            path.as_c_str(),
            Some(fstype.as_c_str()),
            *flags,
            data.as_deref(),
        ),
        Op::Readonly { path, flags } => mount(
            None::<&CStr>,
            path.as_c_str(),
            None::<&CStr>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | *flags,
            None::<&CStr>,
        ),
        Op::WriteFile { path, data, mode } => {
            // SAFETY: open/write/close on a C string and a static slice.
            unsafe {
                let fd = Errno::result(libc::open(
                    path.as_ptr(),
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                    *mode as libc::c_uint,
                ))?;
                let mut rest: &[u8] = data;
                while !rest.is_empty() {
                    let n = libc::write(fd, rest.as_ptr().cast(), rest.len());
                    if n <= 0 {
                        let e = if n < 0 { Errno::last() } else { Errno::EIO };
                        if e == Errno::EINTR {
                            continue;
                        }
                        libc::close(fd);
                        return Err(e);
                    }
                    rest = rest.get(n as usize..).unwrap_or(&[]);
                }
                let r = libc::fchmod(fd, *mode as libc::mode_t);
                let e = Errno::last();
                libc::close(fd);
                if r != 0 {
                    return Err(e);
                }
            }
            Ok(())
        }
        Op::Link { target, path } => {
            // SAFETY: link on C strings.
            Errno::result(unsafe { libc::link(target.as_ptr(), path.as_ptr()) }).map(drop)
        }
        Op::BindLocal { from, path } => mount(
            Some(from.as_c_str()),
            path.as_c_str(),
            None::<&CStr>,
            MsFlags::MS_BIND,
            None::<&CStr>,
        ),
        Op::Chmod { path, mode } => {
            // SAFETY: chmod on a C string.
            Errno::result(unsafe { libc::chmod(path.as_ptr(), *mode as libc::mode_t) }).map(drop)
        }
    }
}

pub(super) fn loopback_up() -> Result<(), Errno> {
    // SAFETY: a datagram socket, two ioctls on a stack ifreq, close.
    unsafe {
        let s = Errno::result(libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
        ))?;
        let mut ifr: libc::ifreq = std::mem::zeroed();
        ifr.ifr_name[0] = b'l' as libc::c_char;
        ifr.ifr_name[1] = b'o' as libc::c_char;
        let r = libc::ioctl(s, libc::SIOCGIFFLAGS as _, &mut ifr);
        if r < 0 {
            let e = Errno::last();
            libc::close(s);
            return Err(e);
        }
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        let r = libc::ioctl(s, libc::SIOCSIFFLAGS as _, &ifr);
        let e = Errno::last();
        libc::close(s);
        if r < 0 {
            return Err(e);
        }
    }
    Ok(())
}

fn no_nested_userns() -> Result<(), Errno> {
    // SAFETY: open/write/close on a static path and buffer.
    unsafe {
        let fd = Errno::result(libc::open(
            c"/proc/sys/user/max_user_namespaces".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        ))?;
        let r = libc::write(fd, b"0\n".as_ptr().cast(), 2);
        let e = Errno::last();
        libc::close(fd);
        if r != 2 {
            return Err(if r < 0 { e } else { Errno::EIO });
        }
    }
    Ok(())
}

/// Steps up to lg-init.
fn setup(args: &mut ChildArgs) -> Result<(), Fail> {
    let plan = args.plan;
    for fd in &plan.cgroup_tasks {
        // SAFETY: write(2) of a static buffer to an fd the parent opened.
        let r = unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) };
        Errno::result(r).map_err(at(Step::Cgroup))?;
    }
    arrange_fds(plan)?;
    // Before the id maps exist: path lookups still use the daemon's
    // credentials (see `Plan::sources`).
    open_sources(plan)?;

    // First byte: the id maps are written. (The second comes once the
    // init is in the job cgroup: with cgroup v2 the parent attaches it
    // while this setup runs.)
    wait_go(Step::WaitParent)?;

    nix::unistd::setsid().map_err(at(Step::Session))?;
    // Handlers inherited from the daemon (tokio's SIGCHLD/SIGTERM) would
    // make this pid 1 signalable from inside; default everything.
    // SAFETY: sigaction/sigprocmask with stack structs.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = libc::SIG_DFL;
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        Errno::result(libc::sigprocmask(
            libc::SIG_SETMASK,
            &set,
            std::ptr::null_mut(),
        ))
        .map_err(at(Step::Signals))?;
    }

    // Raw system calls, not glibc's (or nix's) wrappers: glibc applies
    // set*id to every thread it knows of (`__nptl_setxid`), and after a bare
    // clone(2) of the multi-threaded daemon its thread list still names the
    // parent's threads, which do not exist here; it then waits on a futex
    // forever (seen: a job hung until its timeout when another thread was
    // mid-exit at clone time). The kernel calls act on this thread alone,
    // the only one there is.
    if plan.drop_groups {
        // SAFETY: setgroups(0, NULL) reads no memory.
        Errno::result(unsafe {
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>())
        })
        .map_err(at(Step::Groups))?;
    }
    let (uid, gid) = (plan.uid, plan.gid);
    // SAFETY: plain integer arguments.
    Errno::result(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) })
        .map_err(at(Step::Gid))?;
    // SAFETY: plain integer arguments.
    Errno::result(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) })
        .map_err(at(Step::Uid))?;
    // Setup continues as the sandbox uid (so files it creates in the new
    // root are owned by a mapped id) with the namespace's capabilities.
    let mut caps = capget().map_err(at(Step::Caps))?;
    for c in caps.iter_mut() {
        c.effective = c.permitted;
    }
    capset(&caps).map_err(at(Step::Caps))?;
    nix::unistd::sethostname(plan.hostname.as_c_str().to_str().unwrap_or("labgrader"))
        .map_err(at(Step::Hostname))?;
    mount(
        None::<&CStr>,
        c"/",
        None::<&CStr>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&CStr>,
    )
    .map_err(at(Step::Propagation))?;
    mount(
        Some(c"tmpfs"),
        plan.staging.as_c_str(),
        Some(c"tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(plan.root_data.as_c_str()),
    )
    .map_err(at(Step::Tree))?;
    for (i, op) in plan.ops.iter().enumerate() {
        run_op(plan, op).map_err(|e| (Step::Tree, e, i as u32 + 1))?;
    }
    mount(
        None::<&CStr>,
        plan.staging.as_c_str(),
        None::<&CStr>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | plan.root_flags,
        None::<&CStr>,
    )
    .map_err(at(Step::RootReadonly))?;
    nix::unistd::chdir(plan.staging.as_c_str()).map_err(at(Step::PivotRoot))?;
    nix::unistd::pivot_root(c".", c".").map_err(at(Step::PivotRoot))?;
    umount2(c".", MntFlags::MNT_DETACH).map_err(at(Step::DetachOldRoot))?;
    nix::unistd::chdir(plan.workdir.as_c_str()).map_err(at(Step::Chdir))?;
    // The O_PATH sources are mounted; test_all must not inherit them.
    close_from(FD_SOURCES).map_err(at(Step::Fds))?;
    if !args.net_ready {
        loopback_up().map_err(at(Step::Loopback))?;
    }
    // The job's user namespace may hold no further one: without a nested
    // namespace the student never gains a capability anywhere (the attack
    // surface Docker closes with seccomp).
    no_nested_userns().map_err(at(Step::NoNestedUserns))?;
    // The capabilities of the sandbox's root stay for lg-init (it lays the
    // job out and runs the broker); it drops them, and the bounding set,
    // in every job process it starts.
    nix::sys::prctl::set_no_new_privs().map_err(at(Step::NoNewPrivs))?;
    nix::sys::prctl::set_dumpable(false).map_err(at(Step::Dumpable))?;
    wait_go(Step::WaitCgroup)?;
    // SAFETY: closing our go fd.
    unsafe { libc::close(FD_GO) };
    // Now in the job cgroup: make it the root of what the job can see.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP).map_err(at(Step::CgroupNs))?;

    for (res, soft, hard) in plan.rlimits.iter() {
        let rl = libc::rlimit {
            rlim_cur: *soft,
            rlim_max: *hard,
        };
        // SAFETY: setrlimit with a stack struct.
        if unsafe { libc::setrlimit(*res as _, &rl) } != 0 {
            return Err((Step::Rlimit, Errno::last(), *res));
        }
    }
    // SAFETY: prctl with constant arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    Ok(())
}
