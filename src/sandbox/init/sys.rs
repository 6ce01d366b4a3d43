//! The few Linux calls `lg-init` needs that `std` does not offer, declared
//! by hand (the helper is built with `rustc` alone: no crates). Thin
//! wrappers return `io::Result` with the errno; nothing here decides
//! anything. x86_64 and aarch64 (glibc or musl, 64-bit) layouts only.

#![allow(non_camel_case_types, dead_code)]

use std::ffi::{CStr, CString};
use std::io;
use std::os::raw::{c_char, c_int, c_long, c_uint, c_ulong, c_void};

pub type pid_t = i32;
pub type uid_t = u32;
pub type gid_t = u32;

pub const SIGKILL: c_int = 9;
pub const ESRCH: c_int = 3;
pub const SIGCHLD: c_int = 17;
pub const SIGPIPE: c_int = 13;
/// The signals that ask a process to end (`timeout`, a terminal, `kill`).
pub const ENDING_SIGNALS: [c_int; 7] = [1, 2, 3, 10, 12, 14, 15];

pub const WNOHANG: c_int = 1;
pub const WALL: c_int = 0x4000_0000;

pub const O_CLOEXEC: c_int = 0o2_000_000;
pub const O_NONBLOCK: c_int = 0o4000;
#[cfg(target_arch = "aarch64")]
pub const O_NOFOLLOW: c_int = 0o100_000;
#[cfg(not(target_arch = "aarch64"))]
pub const O_NOFOLLOW: c_int = 0o400_000;

pub const F_GETFD: c_int = 1;
pub const F_SETFD: c_int = 2;
pub const FD_CLOEXEC: c_int = 1;

pub const MNT_DETACH: c_int = 2;

pub const PR_SET_PDEATHSIG: c_int = 1;
pub const PR_SET_DUMPABLE: c_int = 4;
pub const PR_CAPBSET_DROP: c_int = 24;
pub const PR_SET_CHILD_SUBREAPER: c_int = 36;
pub const PR_SET_NO_NEW_PRIVS: c_int = 38;
pub const PR_CAP_AMBIENT: c_int = 47;
pub const PR_CAP_AMBIENT_CLEAR_ALL: c_ulong = 4;

pub const POLLIN: i16 = 0x1;
pub const POLLERR: i16 = 0x8;
pub const POLLHUP: i16 = 0x10;
pub const POLLRDHUP: i16 = 0x2000;

pub const SOL_SOCKET: c_int = 1;
pub const SCM_RIGHTS: c_int = 1;
pub const MSG_CMSG_CLOEXEC: c_int = 0x4000_0000;
pub const MSG_NOSIGNAL: c_int = 0x4000;

const SIG_BLOCK: c_int = 0;
const SIG_SETMASK: c_int = 2;
const SFD_CLOEXEC: c_int = O_CLOEXEC;
const SYS_CLOSE_RANGE: c_long = 436;
const CLOSE_RANGE_CLOEXEC: c_uint = 4;

pub const RLIMIT_CPU: c_int = 0;
pub const RLIMIT_FSIZE: c_int = 1;
pub const RLIMIT_DATA: c_int = 2;
pub const RLIMIT_CORE: c_int = 4;
pub const RLIMIT_NPROC: c_int = 6;
pub const RLIMIT_NOFILE: c_int = 7;
pub const RLIMIT_AS: c_int = 9;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct sigset_t {
    bits: [u64; 16],
}

#[repr(C)]
pub struct pollfd {
    pub fd: c_int,
    pub events: i16,
    pub revents: i16,
}

#[repr(C)]
struct rlimit {
    cur: u64,
    max: u64,
}

#[repr(C)]
pub struct iovec {
    pub base: *mut c_void,
    pub len: usize,
}

#[repr(C)]
pub struct msghdr {
    pub name: *mut c_void,
    pub namelen: u32,
    pub iov: *mut iovec,
    pub iovlen: usize,
    pub control: *mut c_void,
    pub controllen: usize,
    pub flags: c_int,
}

#[repr(C)]
struct statvfs_t {
    bsize: c_ulong,
    frsize: c_ulong,
    blocks: u64,
    bfree: u64,
    bavail: u64,
    files: u64,
    ffree: u64,
    favail: u64,
    fsid: c_ulong,
    flag: c_ulong,
    namemax: c_ulong,
    spare: [c_int; 6],
    // Room for libcs whose struct is larger than glibc's.
    pad: [u64; 8],
}

unsafe extern "C" {
    fn mount(
        src: *const c_char,
        target: *const c_char,
        fstype: *const c_char,
        flags: c_ulong,
        data: *const c_void,
    ) -> c_int;
    fn umount2(target: *const c_char, flags: c_int) -> c_int;
    fn fork() -> pid_t;
    fn setsid() -> pid_t;
    fn setgroups(n: usize, list: *const gid_t) -> c_int;
    fn setresuid(r: uid_t, e: uid_t, s: uid_t) -> c_int;
    fn setresgid(r: gid_t, e: gid_t, s: gid_t) -> c_int;
    fn prctl(option: c_int, a2: c_ulong, a3: c_ulong, a4: c_ulong, a5: c_ulong) -> c_int;
    fn setrlimit(res: c_int, rl: *const rlimit) -> c_int;
    fn execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char)
    -> c_int;
    fn waitpid(pid: pid_t, status: *mut c_int, opts: c_int) -> pid_t;
    fn kill(pid: pid_t, sig: c_int) -> c_int;
    fn _exit(code: c_int) -> !;
    fn dup2(a: c_int, b: c_int) -> c_int;
    fn close(fd: c_int) -> c_int;
    fn fcntl(fd: c_int, cmd: c_int, arg: c_int) -> c_int;
    fn pipe2(fds: *mut c_int, flags: c_int) -> c_int;
    fn sigemptyset(set: *mut sigset_t) -> c_int;
    fn sigaddset(set: *mut sigset_t, sig: c_int) -> c_int;
    fn sigprocmask(how: c_int, set: *const sigset_t, old: *mut sigset_t) -> c_int;
    fn signalfd(fd: c_int, mask: *const sigset_t, flags: c_int) -> c_int;
    fn signal(sig: c_int, handler: usize) -> usize;
    fn poll(fds: *mut pollfd, n: c_ulong, timeout: c_int) -> c_int;
    fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> isize;
    fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> isize;
    fn statvfs(path: *const c_char, buf: *mut statvfs_t) -> c_int;
    fn umask(mask: c_uint) -> c_uint;
    fn syscall(num: c_long, ...) -> c_long;
    fn usleep(us: c_uint) -> c_int;
}

fn check(r: c_int) -> io::Result<c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

pub fn do_mount(
    src: &CStr,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    // SAFETY: C strings outlive the call.
    check(unsafe {
        mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.map_or(std::ptr::null(), CStr::as_ptr),
            flags,
            data.map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    })
    .map(drop)
}

pub fn detach(target: &CStr) -> io::Result<()> {
    // SAFETY: a C string.
    check(unsafe { umount2(target.as_ptr(), MNT_DETACH) }).map(drop)
}

pub fn do_fork() -> io::Result<pid_t> {
    // SAFETY: lg-init is single-threaded.
    check(unsafe { fork() })
}

pub fn new_session() -> io::Result<()> {
    // SAFETY: no arguments.
    check(unsafe { setsid() }).map(drop)
}

pub fn clear_groups() -> io::Result<()> {
    // SAFETY: an empty list.
    check(unsafe { setgroups(0, std::ptr::null()) }).map(drop)
}

pub fn set_ids(uid: uid_t, gid: gid_t) -> io::Result<()> {
    // SAFETY: integers.
    check(unsafe { setresgid(gid, gid, gid) })?;
    // SAFETY: integers.
    check(unsafe { setresuid(uid, uid, uid) }).map(drop)
}

/// Set this thread's effective uid only (the raw system call: glibc's
/// `seteuid` would change every thread). Real and saved uids stay, so a
/// root caller can switch back.
pub fn set_thread_euid(uid: uid_t) -> io::Result<()> {
    #[cfg(target_arch = "x86_64")]
    const SYS_SETRESUID: c_long = 117;
    #[cfg(target_arch = "aarch64")]
    const SYS_SETRESUID: c_long = 147;
    let keep = uid_t::MAX as c_long; // -1: unchanged
    // SAFETY: integer arguments.
    let r = unsafe { syscall(SYS_SETRESUID, keep, uid as c_long, keep) };
    check(r as c_int).map(drop)
}

pub fn pr(option: c_int, a: c_ulong, b: c_ulong) -> io::Result<()> {
    // SAFETY: integer arguments.
    check(unsafe { prctl(option, a, b, 0, 0) }).map(drop)
}

/// Drop every capability from the bounding set (EINVAL past the last).
pub fn drop_bounding_set() -> io::Result<()> {
    for cap in 0..64 {
        // SAFETY: integer arguments.
        if unsafe { prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(22) {
                break;
            }
            return Err(e);
        }
    }
    Ok(())
}

pub fn set_rlimit(res: c_int, soft: u64, hard: u64) -> io::Result<()> {
    let rl = rlimit {
        cur: soft,
        max: hard,
    };
    // SAFETY: a stack struct.
    check(unsafe { setrlimit(res, &rl) }).map(drop)
}

/// execve; returns only on failure.
pub fn exec(path: &CStr, argv: &[CString], envp: &[CString]) -> io::Error {
    let mut a: Vec<*const c_char> = argv.iter().map(|s| s.as_ptr()).collect();
    a.push(std::ptr::null());
    let mut e: Vec<*const c_char> = envp.iter().map(|s| s.as_ptr()).collect();
    e.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of live C strings.
    unsafe { execve(path.as_ptr(), a.as_ptr(), e.as_ptr()) };
    io::Error::last_os_error()
}

/// waitpid; `Ok(None)` with WNOHANG when nothing changed.
pub fn wait(pid: pid_t, flags: c_int) -> io::Result<Option<(pid_t, c_int)>> {
    let mut status = 0;
    // SAFETY: a stack int.
    let r = check(unsafe { waitpid(pid, &mut status, flags | WALL) })?;
    Ok((r > 0).then_some((r, status)))
}

pub fn signal_pid(pid: pid_t, sig: c_int) -> io::Result<()> {
    // SAFETY: integers.
    check(unsafe { kill(pid, sig) }).map(drop)
}

pub fn exit_now(code: c_int) -> ! {
    // SAFETY: ends the process.
    unsafe { _exit(code) }
}

pub fn dup_to(from: c_int, to: c_int) -> io::Result<()> {
    // SAFETY: integers.
    check(unsafe { dup2(from, to) }).map(drop)
}

pub fn close_fd(fd: c_int) {
    // SAFETY: closing an fd we own.
    unsafe { close(fd) };
}

pub fn set_cloexec(fd: c_int, on: bool) -> io::Result<()> {
    // SAFETY: integers.
    let f = check(unsafe { fcntl(fd, F_GETFD, 0) })?;
    let f = if on { f | FD_CLOEXEC } else { f & !FD_CLOEXEC };
    // SAFETY: integers.
    check(unsafe { fcntl(fd, F_SETFD, f) }).map(drop)
}

/// Mark every fd from `first` up close-on-exec.
pub fn cloexec_from(first: c_int) -> io::Result<()> {
    // SAFETY: close_range with integer arguments.
    let r = unsafe {
        syscall(
            SYS_CLOSE_RANGE,
            first as c_uint,
            c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    // Kernels before 5.11: one by one over what /proc/self/fd lists.
    for e in std::fs::read_dir("/proc/self/fd")?.flatten() {
        if let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<c_int>().ok())
            && fd >= first
        {
            let _ = set_cloexec(fd, true);
        }
    }
    Ok(())
}

pub fn pipe_cloexec() -> io::Result<(c_int, c_int)> {
    let mut fds = [0; 2];
    // SAFETY: a two-int array.
    check(unsafe { pipe2(fds.as_mut_ptr(), O_CLOEXEC) })?;
    Ok((fds[0], fds[1]))
}

fn sigset_of(sigs: &[c_int]) -> sigset_t {
    let mut set = sigset_t { bits: [0; 16] };
    // SAFETY: a stack set.
    unsafe {
        sigemptyset(&mut set);
        for s in sigs {
            sigaddset(&mut set, *s);
        }
    }
    set
}

/// Block SIGCHLD and return a close-on-exec signalfd for it.
pub fn sigchld_fd() -> io::Result<c_int> {
    signals_fd(&[SIGCHLD])
}

/// Block `sigs` and return a close-on-exec signalfd for them.
pub fn signals_fd(sigs: &[c_int]) -> io::Result<c_int> {
    let set = sigset_of(sigs);
    // SAFETY: stack sets.
    check(unsafe { sigprocmask(SIG_BLOCK, &set, std::ptr::null_mut()) })?;
    // SAFETY: a stack set.
    check(unsafe { signalfd(-1, &set, SFD_CLOEXEC) })
}

/// A close-on-exec anonymous file (`memfd_create`): shared by the forked
/// children that inherit it, reachable by no other identity.
pub fn memfd(name: &CStr) -> io::Result<c_int> {
    #[cfg(target_arch = "x86_64")]
    const SYS_MEMFD_CREATE: c_long = 319;
    #[cfg(target_arch = "aarch64")]
    const SYS_MEMFD_CREATE: c_long = 279;
    const MFD_CLOEXEC: c_long = 1;
    // SAFETY: a NUL-terminated name and an integer.
    let r = unsafe { syscall(SYS_MEMFD_CREATE, name.as_ptr(), MFD_CLOEXEC) };
    check(r as c_int)
}

pub const LOCK_SH: c_int = 1;
pub const LOCK_EX: c_int = 2;
pub const LOCK_NB: c_int = 4;
pub const LOCK_UN: c_int = 8;

/// flock(2) on `fd` (retried on EINTR).
pub fn flock_fd(fd: c_int, op: c_int) -> io::Result<()> {
    unsafe extern "C" {
        fn flock(fd: c_int, op: c_int) -> c_int;
    }
    loop {
        // SAFETY: integers.
        match check(unsafe { flock(fd, op) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r.map(drop),
        }
    }
}

/// The number of the next signal queued on signalfd `fd` (blocking).
pub fn read_signal(fd: c_int) -> Option<c_int> {
    // struct signalfd_siginfo: 128 bytes, ssi_signo first.
    let mut buf = [0u8; 128];
    let n = read_some(fd, &mut buf);
    (n == 128).then(|| u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as c_int)
}

/// End this process by `sig` with its default action, as if it had not
/// been caught.
pub fn die_of(sig: c_int) -> ! {
    // SAFETY: SIG_DFL is 0; a signal to ourselves.
    unsafe {
        signal(sig, 0);
    }
    reset_signals();
    let _ = signal_pid(std::process::id() as pid_t, sig);
    exit_now(128 + sig)
}

/// Unblock every signal and restore default SIGPIPE (for a child about to exec).
pub fn reset_signals() {
    let set = sigset_of(&[]);
    // SAFETY: a stack set; SIG_DFL is 0.
    unsafe {
        sigprocmask(SIG_SETMASK, &set, std::ptr::null_mut());
        signal(SIGPIPE, 0);
    }
}

pub fn ignore_sigpipe() {
    // SAFETY: SIG_IGN is 1.
    unsafe { signal(SIGPIPE, 1) };
}

/// Drain a signalfd (its siginfo records are not needed).
pub fn drain_fd(fd: c_int) {
    let mut buf = [0u8; 1024];
    read_some(fd, &mut buf);
}

/// read(2) into `buf`; a negative result is an error (see errno).
pub fn read_some(fd: c_int, buf: &mut [u8]) -> isize {
    unsafe extern "C" {
        fn read(fd: c_int, buf: *mut c_void, n: usize) -> isize;
    }
    // SAFETY: a buffer we own.
    unsafe { read(fd, buf.as_mut_ptr().cast(), buf.len()) }
}

/// poll(2) with a timeout in ms (-1: forever); EINTR counts as nothing ready.
pub fn poll_fds(fds: &mut [pollfd], timeout: c_int) -> io::Result<usize> {
    // SAFETY: a slice of pollfds.
    let r = unsafe { poll(fds.as_mut_ptr(), fds.len() as c_ulong, timeout) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(r as usize)
}

/// Send `data` with `fds` attached (SCM_RIGHTS).
pub fn send_with_fds(sock: c_int, data: &[u8], fds: &[c_int]) -> io::Result<usize> {
    let mut iov = iovec {
        base: data.as_ptr() as *mut c_void,
        len: data.len(),
    };
    // cmsghdr (16 bytes on 64-bit) + the fds, 8-aligned.
    let mut control = [0u64; 8];
    let data_len = std::mem::size_of_val(fds);
    let cmsg_len = 16 + data_len;
    let space = (cmsg_len + 7) & !7;
    assert!(space <= std::mem::size_of_val(&control), "too many fds");
    {
        // SAFETY: control is 64 bytes, 8-aligned; we write inside it.
        let p = control.as_mut_ptr() as *mut u8;
        unsafe {
            (p as *mut usize).write(cmsg_len);
            (p.add(8) as *mut c_int).write(SOL_SOCKET);
            (p.add(12) as *mut c_int).write(SCM_RIGHTS);
            for (i, fd) in fds.iter().enumerate() {
                (p.add(16 + 4 * i) as *mut c_int).write(*fd);
            }
        }
    }
    let msg = msghdr {
        name: std::ptr::null_mut(),
        namelen: 0,
        iov: &mut iov,
        iovlen: 1,
        control: control.as_mut_ptr().cast(),
        controllen: if fds.is_empty() { 0 } else { space },
        flags: 0,
    };
    // SAFETY: msg points at live buffers.
    let r = unsafe { sendmsg(sock, &msg, MSG_NOSIGNAL) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Receive into `buf`; fds that came along (close-on-exec) are appended to `fds`.
pub fn recv_with_fds(sock: c_int, buf: &mut [u8], fds: &mut Vec<c_int>) -> io::Result<usize> {
    let mut iov = iovec {
        base: buf.as_mut_ptr().cast(),
        len: buf.len(),
    };
    let mut control = [0u64; 16];
    let mut msg = msghdr {
        name: std::ptr::null_mut(),
        namelen: 0,
        iov: &mut iov,
        iovlen: 1,
        control: control.as_mut_ptr().cast(),
        controllen: std::mem::size_of_val(&control),
        flags: 0,
    };
    // SAFETY: msg points at live buffers.
    let r = unsafe { recvmsg(sock, &mut msg, MSG_CMSG_CLOEXEC) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // Walk the control messages.
    let base = control.as_ptr() as *const u8;
    let mut off = 0usize;
    while off + 16 <= msg.controllen {
        // SAFETY: inside the control buffer the kernel filled.
        let (len, level, kind) = unsafe {
            (
                (base.add(off) as *const usize).read(),
                (base.add(off + 8) as *const c_int).read(),
                (base.add(off + 12) as *const c_int).read(),
            )
        };
        if len < 16 || off + len > msg.controllen {
            break;
        }
        if level == SOL_SOCKET && kind == SCM_RIGHTS {
            for i in 0..(len - 16) / 4 {
                // SAFETY: inside this cmsg's data.
                fds.push(unsafe { (base.add(off + 16 + 4 * i) as *const c_int).read() });
            }
        }
        off += (len + 7) & !7;
    }
    Ok(r as usize)
}

/// Bytes still free on the filesystem holding `path` (for the unprivileged).
pub fn free_bytes(path: &CStr) -> io::Result<u64> {
    // SAFETY: zeroed plain-old-data struct filled by the kernel.
    let mut s: statvfs_t = unsafe { std::mem::zeroed() };
    // SAFETY: a C string and a stack struct.
    check(unsafe { statvfs(path.as_ptr(), &mut s) })?;
    Ok(s.bavail.saturating_mul(s.frsize.max(1) as u64))
}

pub fn set_umask(mask: u32) {
    // SAFETY: integer.
    unsafe { umask(mask) };
}

pub fn sleep_us(us: u32) {
    // SAFETY: integer.
    unsafe { usleep(us) };
}
