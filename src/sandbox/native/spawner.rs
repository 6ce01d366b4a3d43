//! The spawner: a small single-threaded process, forked from the daemon
//! once per runner, that clones each run's sandbox init on the daemon's
//! behalf. It owns that process, the socket to it and the plan's trip
//! over that socket (its data encoded, its descriptors passed with
//! `SCM_RIGHTS`). It never plans a run, never writes id maps, never
//! waits for an init (the daemon does all of that by pid, as before).
//!
//! **Why.** `clone(2)` without `CLONE_VM` copies the caller's address
//! space: the page tables are copied and every writable page is
//! write-protected, to be copied on the next write. Cloned straight from
//! the daemon (multi-threaded, its heap and thread stacks busy), each run
//! made the daemon fault on nearly every page it then wrote, each fault
//! flushing the TLB of the CPUs its other threads ran on, for as long as
//! the init lived: about two thirds of a native run's CPU in `scripts/bench
//! grader`. The spawner is idle and alone in its address space, so its
//! clone is cheap, and the daemon's own pages are write-protected once
//! (when the spawner is forked), not once per run.
//!
//! **How the init stays the daemon's child.** The spawner clones with
//! `CLONE_PARENT`: the init's parent is the daemon, which writes its id
//! maps, puts it in its cgroup, waits for it and kills it by pid exactly
//! as if it had cloned it itself. The init still watches only its report
//! pipe for the daemon's death.
//!
//! **Fork safety.** The spawner is a `fork(2)` of a multi-threaded
//! process, so it touches nothing another thread could have held locked
//! at that moment: no logging, no stdio, no environment; only syscalls
//! and `malloc` (which glibc's `fork` leaves usable in the child). It
//! resets every signal to its default (systemd's SIGTERM ends it), keeps
//! only its socket, and exits when the daemon's end closes.

use std::ffi::CString;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::netpool::NetPool;
use super::plan::{ChildArgs, NS_FLAGS, Op, Plan, Stack};
use super::setup;
use crate::sandbox::init;
use crate::sandbox::spec::SandboxError;

/// Largest encoded plan (argv, environment, mount operations): far above
/// any real one, and under the socket's default buffer.
const MAX_REQUEST: usize = 128 * 1024;
/// Most descriptors one plan passes (7 pipes and files, cgroup v1 tasks).
const MAX_FDS: usize = 32;
/// The spawner's socket, once it has closed everything else.
const SPAWNER_SOCK: RawFd = 3;

/// The process-wide spawner forked by [`prefork`], if any.
static EARLY: Mutex<Option<Arc<Spawner>>> = Mutex::new(None);

/// Fork the spawner every native runner of this process will use, now:
/// `labgrader serve` calls it first thing, before it reads its
/// configuration (so no secret of it is in the spawner's memory, which
/// every sandbox's init is a copy of) and before its runtime starts, while
/// the process is single-threaded and small (so the spawner's address
/// space, which every clone copies and every init's exit tears down, is
/// small too).
pub fn prefork() {
    let mut early = EARLY.lock().unwrap_or_else(|p| p.into_inner());
    if early.is_none() {
        *early = Some(Arc::new(Spawner::started()));
    }
}

/// The configuration needs no native runner after all: end the spawner
/// [`prefork`] started (it exits when its socket closes).
pub fn release_prefork() {
    let early = EARLY.lock().unwrap_or_else(|p| p.into_inner()).take();
    drop(early);
}

/// The spawner for a new runner: the early one, or one of its own.
pub(super) fn for_runner() -> Arc<Spawner> {
    let early = EARLY.lock().unwrap_or_else(|p| p.into_inner()).clone();
    early.unwrap_or_else(|| Arc::new(Spawner::started()))
}

/// The spawner of one runner, started on first use and again if it died.
#[derive(Debug)]
pub struct Spawner {
    process: Mutex<Option<Process>>,
}

#[derive(Debug)]
struct Process {
    /// `None` only while dropped.
    sock: Option<OwnedFd>,
    pid: Pid,
}

impl Spawner {
    /// Start the spawner now, while this process is still small (the
    /// spawner's address space, copied by every clone, is this process's
    /// as it is now). A failure is left for the first run to report.
    pub fn started() -> Spawner {
        Spawner {
            process: Mutex::new(Process::start().ok()),
        }
    }

    /// The spawner's pid, when it runs (for `ps`-style checks and tests).
    pub fn pid(&self) -> Option<u32> {
        let guard = self.process.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map(|p| p.pid.as_raw() as u32)
    }

    /// Clone `plan`'s init (a child of this process) and return its pid.
    /// Blocking: one short round trip to the spawner, one run at a time.
    pub fn clone_init(&self, plan: &Plan) -> Result<Pid, SandboxError> {
        let request = encode(plan);
        if request.len() > MAX_REQUEST {
            return Err(SandboxError::setup(
                "clone the sandbox",
                format!(
                    "the plan is {} bytes, over the spawner's {MAX_REQUEST}",
                    request.len()
                ),
            ));
        }
        let fds = plan_fds(plan);
        let mut guard = self.process.lock().unwrap_or_else(|p| p.into_inner());
        // A spawner that died (killed by hand, by the OOM killer) is
        // started again once.
        for attempt in 0..2 {
            if guard.is_none() {
                *guard = Some(Process::start()?);
            }
            let process = guard.as_ref().expect("started above");
            match process.ask(&request, &fds) {
                Ok(answer) if answer > 0 => return Ok(Pid::from_raw(answer as i32)),
                Ok(answer) => {
                    let errno = Errno::from_raw((-answer) as i32);
                    return Err(SandboxError::setup(
                        "clone the sandbox",
                        format!("clone: {errno}"),
                    ));
                }
                Err(e) if attempt == 0 => {
                    tracing::warn!(error = %e, "the sandbox spawner is gone; starting it again");
                    *guard = None;
                }
                Err(e) => {
                    return Err(SandboxError::setup(
                        "clone the sandbox",
                        format!("the spawner process: {e}"),
                    ));
                }
            }
        }
        unreachable!("the second attempt returns")
    }
}

impl Process {
    fn start() -> Result<Process, SandboxError> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| {
            SandboxError::setup("start the sandbox spawner", format!("socketpair: {e}"))
        })?;
        // SAFETY: the child runs only `spawner_main`, which is fork-safe
        // (see the module's docs) and never returns.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => Err(SandboxError::setup(
                "start the sandbox spawner",
                format!("fork: {}", Errno::last()),
            )),
            0 => spawner_main(theirs.as_raw_fd()),
            pid => Ok(Process {
                sock: Some(ours),
                pid: Pid::from_raw(pid),
            }),
        }
    }

    /// Send one request and read the answer: a pid, or minus an errno.
    fn ask(&self, request: &[u8], fds: &[RawFd]) -> Result<i64, Errno> {
        let sock = self.sock.as_ref().map_or(-1, |s| s.as_raw_fd());
        let cmsg = [ControlMessage::ScmRights(fds)];
        let sent = sendmsg::<()>(
            sock,
            &[IoSlice::new(request)],
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        if sent != request.len() {
            return Err(Errno::EMSGSIZE);
        }
        let mut answer = [0u8; 8];
        loop {
            match nix::sys::socket::recv(sock, &mut answer, MsgFlags::empty()) {
                Ok(8) => return Ok(i64::from_ne_bytes(answer)),
                Ok(_) => return Err(Errno::EPIPE),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Our end closed, the spawner reads EOF and exits; reap it.
        drop(self.sock.take());
        let _ = waitpid(self.pid, None);
    }
}

/// The spawner process: clean up what it inherited, then answer requests
/// until the daemon's end closes.
fn spawner_main(sock: RawFd) -> ! {
    // SAFETY: signal dispositions, the mask, dup3, close_range and prctl
    // of this single-threaded child.
    unsafe {
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        if sock != SPAWNER_SOCK && libc::dup3(sock, SPAWNER_SOCK, libc::O_CLOEXEC) < 0 {
            libc::_exit(1);
        }
        // Nothing else of the daemon's: its listening socket, its
        // database, other runs' pipes (whose ends must close when the
        // daemon closes them).
        libc::syscall(
            libc::SYS_close_range,
            (SPAWNER_SOCK + 1) as libc::c_uint,
            libc::c_uint::MAX,
            0,
        );
        libc::prctl(libc::PR_SET_NAME, c"lg-spawner".as_ptr());
        wipe_arguments_and_environment();
        // Every page of the heap still mapped is copied (its page table
        // entry) by each clone and unmapped when the init exits.
        libc::malloc_trim(0);
    }
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut pool = NetPool::new();
    let mut stack = match Stack::new() {
        Ok(s) => s,
        // No memory for it: every request would fail; the daemon says so.
        Err(_) => unsafe { libc::_exit(1) },
    };
    loop {
        // The socket, and the pidfd of each run holding a pooled network
        // namespace (readable once that run is over).
        let mut fds: Vec<libc::pollfd> = std::iter::once(SPAWNER_SOCK)
            .chain(pool.pidfds())
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: poll(2) on a vector of pollfds we own.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            continue; // EINTR
        }
        for over in fds.iter().skip(1).filter(|p| p.revents != 0) {
            pool.returned(over.fd);
        }
        if fds[0].revents == 0 {
            continue;
        }
        let (len, fds) = match receive(SPAWNER_SOCK, &mut buf) {
            Ok(Some(r)) => r,
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            // EOF or a broken socket: the daemon is gone or dropped us.
            Ok(None) | Err(_) => unsafe { libc::_exit(0) },
        };
        let answer = match decode(&buf[..len], fds) {
            Some(plan) => match clone_here(&plan, &mut pool, &mut stack) {
                Ok(pid) => pid as i64,
                Err(e) => -(e as i64),
            },
            None => -(libc::EINVAL as i64),
        };
        // SAFETY: send(2) of a stack buffer on our socket.
        let sent = unsafe {
            libc::send(
                SPAWNER_SOCK,
                answer.to_ne_bytes().as_ptr().cast(),
                8,
                libc::MSG_NOSIGNAL,
            )
        };
        if sent != 8 {
            unsafe { libc::_exit(0) };
        }
    }
}

unsafe extern "C" {
    static mut environ: *mut *mut libc::c_char;
}

/// Overwrite the daemon's command line and environment in this copy of
/// its memory with zeros: credentials may come from variables, and every
/// sandbox's init is a copy of the spawner's memory for its whole run
/// (unreadable from inside, but nothing of the daemon's should be there
/// to read, nor show as pid 1's `cmdline`).
///
/// # Safety
/// Single-threaded: nothing may read the arguments or the environment
/// meanwhile.
unsafe fn wipe_arguments_and_environment() {
    // The kernel's own bounds of both blocks (on the initial stack):
    // fields 48 to 51 of /proc/self/stat (arg_start, arg_end, env_start,
    // env_end), counted after the command name, which may hold spaces.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<usize> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(45)
                .take(4)
                .filter_map(|f| f.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if let [arg_start, arg_end, env_start, env_end] = fields[..] {
        for (from, to) in [(arg_start, arg_end), (env_start, env_end)] {
            if from < to {
                // SAFETY: the kernel's bounds of this process's argument
                // and environment strings, mapped and writable.
                unsafe { std::ptr::write_bytes(from as *mut u8, 0, to - from) };
            }
        }
    }
    // SAFETY: `environ` is the process's NULL-terminated array of
    // NUL-terminated strings, writable (on the initial stack, zeroed
    // above, or, after a setenv, on the heap); after this it is empty.
    unsafe {
        let list = environ;
        if list.is_null() {
            return;
        }
        let mut p = list;
        while !(*p).is_null() {
            let s = *p;
            std::ptr::write_bytes(s, 0, libc::strlen(s));
            p = p.add(1);
        }
        *list = std::ptr::null_mut();
    }
}

/// One request: its bytes and its descriptors (owned from here on).
fn receive(sock: RawFd, buf: &mut [u8]) -> Result<Option<(usize, Vec<OwnedFd>)>, Errno> {
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(got) = c {
            // SAFETY: the kernel just gave us these descriptors.
            fds.extend(
                got.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let len = msg.bytes;
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    if msg.flags.contains(MsgFlags::MSG_TRUNC) || msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Ok(Some((0, fds))); // decodes to nothing: EINVAL
    }
    Ok(Some((len, fds)))
}

/// Clone the init from this (the spawner's) address space, as the
/// daemon's child, into a pooled network namespace when there is one.
fn clone_here(plan: &Plan, pool: &mut NetPool, stack: &mut Stack) -> Result<i32, Errno> {
    let net = pool.enter();
    let mut args = ChildArgs::new(plan);
    args.net_ready = net.is_some();
    let flags = match net {
        Some(_) => (NS_FLAGS & !libc::CLONE_NEWNET) | libc::CLONE_PIDFD,
        None => NS_FLAGS,
    };
    let mut pidfd: libc::c_int = -1;
    // SAFETY: the child gets a copy of this address space and runs
    // `init_main` on `stack`, touching only `args` (see setup.rs); the
    // kernel writes the pidfd into `pidfd`.
    let pid = unsafe {
        libc::clone(
            setup::init_main,
            stack.top(),
            flags | libc::CLONE_PARENT,
            (&mut args as *mut ChildArgs).cast(),
            &mut pidfd as *mut libc::c_int,
        )
    };
    let pid = Errno::result(pid);
    if let Some(net) = net {
        // SAFETY: on success the kernel gave us this pidfd.
        let lent = pid.is_ok().then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });
        pool.leave(net, lent);
    }
    pid
}

// ---------------------------------------------------------------------------
// The plan on the wire. Descriptors travel beside the bytes, in the order
// of `plan_fds`; everything else is encoded here.

fn plan_fds(plan: &Plan) -> Vec<RawFd> {
    let mut fds = plan.fixed_fds().to_vec();
    fds.extend(plan.cgroup_tasks.iter().map(|f| f.as_raw_fd()));
    fds
}

const OP_MKDIR: u8 = 1;
const OP_TOUCH: u8 = 2;
const OP_SYMLINK: u8 = 3;
const OP_BIND: u8 = 4;
const OP_MOUNT: u8 = 5;
const OP_READONLY: u8 = 6;
const OP_WRITE_INIT: u8 = 7;
const OP_LINK: u8 = 8;
const OP_BIND_LOCAL: u8 = 9;
const OP_CHMOD: u8 = 10;

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_ne_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_ne_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn cstr(&mut self, s: &CString) {
        self.bytes(s.as_bytes());
    }
    // `c_ulong` is u32 on 32-bit targets.
    #[allow(clippy::unnecessary_cast)]
    fn flags(&mut self, f: MsFlags) {
        self.u64(f.bits() as u64);
    }
    fn cstrs(&mut self, v: &[CString]) {
        self.u32(v.len() as u32);
        v.iter().for_each(|s| self.cstr(s));
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_ne_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_ne_bytes(self.take(8)?.try_into().ok()?))
    }
    fn cstr(&mut self) -> Option<CString> {
        let n = self.u32()? as usize;
        CString::new(self.take(n)?).ok()
    }
    fn count(&mut self) -> Option<usize> {
        let n = self.u32()? as usize;
        // Every element takes at least one byte: a count over what is
        // left is a corrupt request, not a huge allocation.
        (n <= self.0.len()).then_some(n)
    }
    fn cstrs(&mut self) -> Option<Vec<CString>> {
        (0..self.count()?).map(|_| self.cstr()).collect()
    }
    fn flags(&mut self) -> Option<MsFlags> {
        Some(MsFlags::from_bits_retain(self.u64()? as _))
    }
}

fn encode(plan: &Plan) -> Vec<u8> {
    let mut w = Writer::default();
    w.u32(plan.cgroup_tasks.len() as u32);
    w.u32(plan.sources.len() as u32);
    for (path, dir) in &plan.sources {
        w.cstr(path);
        w.u8(u8::from(*dir));
    }
    w.cstrs(&plan.source_paths);
    w.cstr(&plan.staging);
    w.cstr(&plan.root_data);
    w.u32(plan.ops.len() as u32);
    for op in &plan.ops {
        encode_op(&mut w, op);
    }
    w.flags(plan.root_flags);
    w.cstr(&plan.hostname);
    w.u32(plan.uid);
    w.u32(plan.gid);
    w.u8(u8::from(plan.drop_groups));
    w.u32(plan.rlimits.len() as u32);
    for (resource, soft, hard) in &plan.rlimits {
        w.u32(*resource);
        w.u64(*soft);
        w.u64(*hard);
    }
    w.cstr(&plan.workdir);
    w.cstrs(&plan.argv);
    w.cstrs(&plan.envp);
    w.0
}

fn encode_op(w: &mut Writer, op: &Op) {
    match op {
        Op::Mkdir { path, mode } => {
            w.u8(OP_MKDIR);
            w.cstr(path);
            w.u32(*mode);
        }
        Op::Touch { path } => {
            w.u8(OP_TOUCH);
            w.cstr(path);
        }
        Op::Symlink { target, path } => {
            w.u8(OP_SYMLINK);
            w.cstr(target);
            w.cstr(path);
        }
        Op::Bind {
            source,
            path,
            flags,
        } => {
            w.u8(OP_BIND);
            w.u32(*source as u32);
            w.cstr(path);
            w.flags(*flags);
        }
        Op::Mount {
            fstype,
            path,
            flags,
            data,
        } => {
            w.u8(OP_MOUNT);
            w.cstr(fstype);
            w.cstr(path);
            w.flags(*flags);
            w.u8(u8::from(data.is_some()));
            if let Some(d) = data {
                w.cstr(d);
            }
        }
        Op::Readonly { path, flags } => {
            w.u8(OP_READONLY);
            w.cstr(path);
            w.flags(*flags);
        }
        Op::WriteFile { path, data, mode } => {
            // Only the embedded lg-init is ever written (layout.rs); the
            // spawner, a fork of this very executable, has the same bytes.
            assert!(
                std::ptr::eq(*data, init::BINARY),
                "the spawner writes only the embedded lg-init"
            );
            w.u8(OP_WRITE_INIT);
            w.cstr(path);
            w.u32(*mode);
        }
        Op::Link { target, path } => {
            w.u8(OP_LINK);
            w.cstr(target);
            w.cstr(path);
        }
        Op::BindLocal { from, path } => {
            w.u8(OP_BIND_LOCAL);
            w.cstr(from);
            w.cstr(path);
        }
        Op::Chmod { path, mode } => {
            w.u8(OP_CHMOD);
            w.cstr(path);
            w.u32(*mode);
        }
    }
}

fn decode(bytes: &[u8], fds: Vec<OwnedFd>) -> Option<Plan> {
    let mut r = Reader(bytes);
    let cgroup_tasks = r.u32()? as usize;
    if fds.len() != 7 + cgroup_tasks {
        return None;
    }
    let mut fds = fds.into_iter();
    let (stdin, stdout, stderr, report) = (fds.next()?, fds.next()?, fds.next()?, fds.next()?);
    let (go, results, test_paths) = (fds.next()?, fds.next()?, fds.next()?);
    let cgroup_tasks: Vec<OwnedFd> = fds.collect();
    let sources = (0..r.count()?)
        .map(|_| Some((r.cstr()?, r.u8()? != 0)))
        .collect::<Option<Vec<_>>>()?;
    let source_paths = r.cstrs()?;
    let staging = r.cstr()?;
    let root_data = r.cstr()?;
    let ops = (0..r.count()?)
        .map(|_| decode_op(&mut r))
        .collect::<Option<Vec<_>>>()?;
    let root_flags = r.flags()?;
    let hostname = r.cstr()?;
    let (uid, gid) = (r.u32()?, r.u32()?);
    let drop_groups = r.u8()? != 0;
    let rlimits = (0..r.count()?)
        .map(|_| Some((r.u32()?, r.u64()?, r.u64()?)))
        .collect::<Option<Vec<_>>>()?;
    let workdir = r.cstr()?;
    let argv = r.cstrs()?;
    let envp = r.cstrs()?;
    if !r.0.is_empty() {
        return None;
    }
    Some(Plan {
        stdin,
        stdout,
        stderr,
        report,
        go,
        results,
        test_paths,
        cgroup_tasks,
        sources,
        source_paths,
        staging,
        root_data,
        ops,
        root_flags,
        hostname,
        uid,
        gid,
        drop_groups,
        rlimits,
        workdir,
        argv,
        envp,
    })
}

fn decode_op(r: &mut Reader<'_>) -> Option<Op> {
    Some(match r.u8()? {
        OP_MKDIR => Op::Mkdir {
            path: r.cstr()?,
            mode: r.u32()?,
        },
        OP_TOUCH => Op::Touch { path: r.cstr()? },
        OP_SYMLINK => Op::Symlink {
            target: r.cstr()?,
            path: r.cstr()?,
        },
        OP_BIND => Op::Bind {
            source: r.u32()? as usize,
            path: r.cstr()?,
            flags: r.flags()?,
        },
        OP_MOUNT => Op::Mount {
            fstype: r.cstr()?,
            path: r.cstr()?,
            flags: r.flags()?,
            data: match r.u8()? {
                0 => None,
                _ => Some(r.cstr()?),
            },
        },
        OP_READONLY => Op::Readonly {
            path: r.cstr()?,
            flags: r.flags()?,
        },
        OP_WRITE_INIT => Op::WriteFile {
            path: r.cstr()?,
            data: init::BINARY,
            mode: r.u32()?,
        },
        OP_LINK => Op::Link {
            target: r.cstr()?,
            path: r.cstr()?,
        },
        OP_BIND_LOCAL => Op::BindLocal {
            from: r.cstr()?,
            path: r.cstr()?,
        },
        OP_CHMOD => Op::Chmod {
            path: r.cstr()?,
            mode: r.u32()?,
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn null() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    fn plan() -> Plan {
        let c = |s: &str| CString::new(s).unwrap();
        Plan {
            stdin: null(),
            stdout: null(),
            stderr: null(),
            report: null(),
            go: null(),
            results: null(),
            test_paths: null(),
            cgroup_tasks: vec![null(), null()],
            sources: vec![(c("/srv/rootfs/usr"), true), (c("/spool/work/j/x"), false)],
            source_paths: vec![c("/proc/self/fd/7"), c("/proc/self/fd/8")],
            staging: c("/mnt"),
            root_data: c("size=1m,mode=755"),
            ops: vec![
                Op::Mkdir {
                    path: c("/mnt/usr"),
                    mode: 0o755,
                },
                Op::Touch { path: c("/mnt/f") },
                Op::Symlink {
                    target: c("usr/bin"),
                    path: c("/mnt/bin"),
                },
                Op::Bind {
                    source: 1,
                    path: c("/mnt/usr"),
                    flags: MsFlags::MS_RDONLY | MsFlags::MS_NOSUID,
                },
                Op::Mount {
                    fstype: c("tmpfs"),
                    path: c("/mnt/tmp"),
                    flags: MsFlags::MS_NODEV,
                    data: Some(c("size=1g")),
                },
                Op::Mount {
                    fstype: c("proc"),
                    path: c("/mnt/proc"),
                    flags: MsFlags::empty(),
                    data: None,
                },
                Op::Readonly {
                    path: c("/mnt"),
                    flags: MsFlags::MS_RDONLY,
                },
                Op::WriteFile {
                    path: c("/mnt/.labgrader/lg-init"),
                    data: init::BINARY,
                    mode: 0o555,
                },
                Op::Link {
                    target: c("a"),
                    path: c("b"),
                },
                Op::BindLocal {
                    from: c("/mnt/rw/ws"),
                    path: c("/mnt/workspace"),
                },
                Op::Chmod {
                    path: c("/mnt/tmp"),
                    mode: 0o1777,
                },
            ],
            root_flags: MsFlags::MS_NOSUID,
            hostname: c("labgrader"),
            uid: 65534,
            gid: 65534,
            drop_groups: true,
            rlimits: vec![(7, 1024, 1024), (4, 0, u64::MAX)],
            workdir: c("/workspace"),
            argv: vec![c("lg-init"), c("--results-fd"), c("5")],
            envp: vec![c("PATH=/usr/bin:/bin"), c("LANG=C.UTF-8")],
        }
    }

    #[test]
    fn a_plan_survives_the_trip() {
        let p = plan();
        let bytes = encode(&p);
        let fds: Vec<OwnedFd> = (0..9).map(|_| null()).collect();
        let back = decode(&bytes, fds).expect("decodes");
        assert_eq!(encode(&back), bytes);
        assert_eq!(back.cgroup_tasks.len(), 2);
        assert_eq!(format!("{:?}", back.ops), format!("{:?}", p.ops));
    }

    #[test]
    fn a_corrupt_request_decodes_to_nothing() {
        let bytes = encode(&plan());
        let fds = || (0..9).map(|_| null()).collect::<Vec<_>>();
        // Every truncation, a byte too many, and the wrong fd count.
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n], fds()).is_none(), "truncated at {n}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode(&long, fds()).is_none());
        assert!(decode(&bytes, (0..8).map(|_| null()).collect()).is_none());
        // A huge count is refused before anything is allocated for it.
        let mut huge = bytes.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(decode(&huge, fds()).is_none());
    }
}
