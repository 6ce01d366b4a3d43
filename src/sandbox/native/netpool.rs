//! Network namespaces the [`spawner`](super::spawner) keeps for reuse: a
//! run's sandbox joins one (loopback already up) instead of creating its
//! own, and when the run is over the namespace goes back to the pool if
//! nothing of the run is left in it. It owns those namespaces (as
//! descriptors), the check that one is empty, and the switch of the
//! spawner's own network namespace around a clone; it never clones, never
//! plans a run and never touches a namespace a run's root could configure.
//!
//! **Why.** Creating a network namespace and tearing it down again (the
//! kernel's `setup_net`/`cleanup_net`, loopback's registration, its IPv6
//! address and sysctl tables) was about a seventh of a native run's CPU,
//! and its locks serialised concurrent runs.
//!
//! **Why reuse is safe.** A pooled namespace is created by the spawner
//! (root) in the host's user namespace, so a sandbox's root, whose
//! capabilities hold only in the run's own user namespace, can change
//! nothing in it: no address, route, interface, firewall or sysctl.
//! Nothing of a run survives it either: the spawner learns that a run is
//! over from the pidfd of its init, which the kernel signals only after
//! every process of the run's PID namespace has exited, and so closed its
//! sockets. What the kernel keeps past a process (a TCP connection in
//! TIME_WAIT, a socket not yet freed) shows in `sockstat`; a namespace
//! with any socket in it is dropped, never lent again. Some state outlives
//! every socket and shows in no `sockstat`, yet anyone in the namespace
//! reads it: IPv6 flow labels (they linger up to 150 s after their socket)
//! and the counters of loopback and of the protocols (`/proc/net/dev`,
//! `snmp`, `netstat`), which only grow: a run could leave a message there
//! for whoever runs next. So a namespace is lent again only if those read
//! exactly as when it was made (a run that used the network at all makes
//! a new one for the next). Two runs at once never share one.
//!
//! **Why the check is cheap.** It runs in the spawner, between clones,
//! once per run. Each namespace's seven tables are opened inside it when
//! it is made and kept open: a `/proc/net` file stays bound to the
//! namespace it was opened in (unlike a descriptor of the
//! `/proc/thread-self/net` directory, whose lookups follow the caller's
//! namespace of the moment), so the check reads them from the host's
//! namespace with no `setns` and no path walk, into one buffer the pool
//! keeps outside what its clones share (writing the spawner's heap after
//! a clone copies each page touched), and compares table by table with
//! what was read at creation, stopping at the first difference. What is
//! left is the kernel printing the tables (4 runs at once on a 2-core VM:
//! the check went from about 3.3% of all CPU to 2.5%, nearly all of it
//! now in that printing).
//!
//! **When creation fails** (out of memory or descriptors, say), runs make
//! their own namespaces for a while and the pool tries again later: after
//! 1 run, then 2, 4, … up to 1024 after repeated failures. The pool
//! holds no more namespaces (eight descriptors each) than fit in half of
//! the spawner's open-file limit: the rest is for what requests bring.

use std::ffi::CStr;
use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;

/// Most idle namespaces kept (each costs some kernel memory and eight
/// descriptors); more than the runs a host does at once.
const MAX_FREE: usize = 32;

/// Descriptors a pooled namespace holds: itself and its seven tables.
const FDS_PER_NET: usize = 8;

/// The socket tables: every socket count in them must be 0.
const SOCKSTAT: &str = "/proc/thread-self/net/sockstat";
const SOCKSTAT6: &str = "/proc/thread-self/net/sockstat6";

/// The state that outlives every socket (see the module's comment): it
/// must read exactly as when the namespace was made. Loopback's counters
/// first: a run that used the network at all changes them.
const STATE: [&str; 5] = [
    "/proc/thread-self/net/dev",
    "/proc/thread-self/net/snmp",
    "/proc/thread-self/net/netstat",
    "/proc/thread-self/net/snmp6",
    "/proc/thread-self/net/ip6_flowlabel",
];

/// Room for one read of a table (all of them are a few KiB; a longer one
/// is read in several).
const SCRATCH: usize = 16 * 1024;

/// The pool, inside the spawner.
#[derive(Debug)]
pub(super) struct NetPool {
    /// The spawner's own (the host's) network namespace, to come back to
    /// after each clone. `None`: pooling is off (not root); each run then
    /// creates its own.
    host: Option<OwnedFd>,
    free: Vec<Idle>,
    /// Lent namespaces with the pidfd of the init that joined them.
    lent: Vec<Lent>,
    /// Most namespaces held (lent or idle): their descriptors take at
    /// most half of the open-file limit, leaving the rest for those each
    /// request brings. A run past it makes its own namespace.
    most: usize,
    /// When to try creating a namespace again after a creation failed.
    retry: Retry,
    /// Where the check reads a table: the check allocates nothing.
    scratch: Scratch,
}

/// A pooled namespace, its tables and what its readable state was when
/// it was made; it is lent again only while that is unchanged.
#[derive(Debug)]
pub(super) struct Idle {
    net: OwnedFd,
    tables: Tables,
}

impl Idle {
    fn fd(&self) -> BorrowedFd<'_> {
        self.net.as_fd()
    }
}

/// A namespace's `/proc/net` tables, opened in it when it was made. A
/// `/proc/net` file stays bound to the namespace it was opened in and
/// reads that namespace's table afresh from offset 0, wherever the reader
/// is: the check joins no namespace and walks no path.
#[derive(Debug)]
struct Tables {
    sockstat: File,
    /// `None`: no IPv6 in this kernel (nor then in any namespace).
    sockstat6: Option<File>,
    /// [`STATE`]'s tables, in that order (`None`: no IPv6).
    state: [Option<File>; STATE.len()],
    /// What they read when the namespace was made, one after the other:
    /// table `i` is `made[ends[i - 1]..ends[i]]` (from 0 for the first).
    made: Box<[u8]>,
    ends: [usize; STATE.len()],
}

#[derive(Debug)]
struct Lent {
    pidfd: OwnedFd,
    net: Idle,
}

impl NetPool {
    /// A pool for this process; off unless it may create namespaces in
    /// the host's user namespace (root).
    pub(super) fn new() -> NetPool {
        let host = nix::unistd::geteuid()
            .is_root()
            .then(|| open_ns(c"/proc/self/ns/net").ok())
            .flatten();
        NetPool {
            host,
            free: Vec::new(),
            lent: Vec::new(),
            most: most_held(),
            retry: Retry::default(),
            scratch: Scratch::new(),
        }
    }

    /// A namespace for the next run, joined by this process until
    /// [`NetPool::leave`]: an idle one, or a new one. `None`: the run must
    /// create its own (`CLONE_NEWNET`, loopback brought up by its init).
    pub(super) fn enter(&mut self) -> Option<Idle> {
        let host = self.host.as_ref()?.as_fd();
        let net = match self.free.pop() {
            Some(net) => net,
            // None idle: all those held are lent.
            None if self.lent.len() >= self.most => return None,
            None if !self.retry.may_try() => return None,
            None => match create(host) {
                Ok(net) => {
                    self.retry.worked();
                    net
                }
                Err(_) => {
                    // Maybe only for now (memory, descriptors): the next
                    // runs make their own, and some later one tries again.
                    self.retry.failed();
                    return None;
                }
            },
        };
        if setns(net.fd()).is_err() {
            return None;
        }
        Some(net)
    }

    /// Back to the host's namespace after the clone. `lent`: the init's
    /// pidfd when the clone worked (the namespace is now the run's), else
    /// `None` (the namespace is idle again).
    pub(super) fn leave(&mut self, net: Idle, lent: Option<OwnedFd>) {
        let back = self.host.as_ref().map(|h| setns(h.as_fd()));
        if back != Some(Ok(())) {
            // Still in a pooled namespace: nothing may be cloned from here
            // any more. The spawner exits; the daemon starts a new one.
            // SAFETY: _exit ends this single-threaded process.
            unsafe { libc::_exit(1) };
        }
        match lent {
            Some(pidfd) => self.lent.push(Lent { pidfd, net }),
            None => self.keep(net),
        }
    }

    /// The pidfds to watch (readable once that run is over).
    pub(super) fn pidfds(&self) -> Vec<RawFd> {
        self.lent.iter().map(|l| l.pidfd.as_raw_fd()).collect()
    }

    /// The run behind `pidfd` is over: check its namespace and keep it or
    /// drop it.
    pub(super) fn returned(&mut self, pidfd: RawFd) {
        let Some(i) = self.lent.iter().position(|l| l.pidfd.as_raw_fd() == pidfd) else {
            return;
        };
        let Lent { net, .. } = self.lent.swap_remove(i);
        if self.is_empty(&net) {
            self.keep(net);
        }
    }

    fn keep(&mut self, net: Idle) {
        if self.free.len() < MAX_FREE {
            self.free.push(net);
        }
    }

    /// Nothing of the last run in `net`: no socket at all, and its
    /// readable state (flow labels, counters) as when it was made. Stops
    /// at the first table that says no.
    fn is_empty(&mut self, net: &Idle) -> bool {
        let t = &net.tables;
        let buf = self.scratch.bytes();
        let no_sockets_in = |file: &File, buf: &mut [u8]| {
            read_whole(file, buf)
                .is_some_and(|n| std::str::from_utf8(&buf[..n]).is_ok_and(no_sockets))
        };
        if !no_sockets_in(&t.sockstat, buf) {
            return false;
        }
        if let Some(v6) = &t.sockstat6 {
            if !no_sockets_in(v6, buf) {
                return false;
            }
        }
        let mut from = 0;
        for (file, &end) in t.state.iter().zip(&t.ends) {
            let made = &t.made[from..end];
            from = end;
            if let Some(file) = file {
                if !reads_as(file, made, buf) {
                    return false;
                }
            }
        }
        true
    }
}

/// The check's buffer: pages no clone of the spawner shares
/// (`MADV_DONTFORK`), so writing them after a clone copies nothing, as
/// writing the spawner's heap would (its pages are shared with every
/// sandbox cloned from it until that one execs). A heap buffer if the
/// mapping cannot be made.
#[derive(Debug)]
enum Scratch {
    Mapped(std::ptr::NonNull<u8>),
    Heap(Box<[u8]>),
}

impl Scratch {
    fn new() -> Scratch {
        use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags};
        let len = std::num::NonZeroUsize::new(SCRATCH).unwrap();
        // SAFETY: a new private anonymous mapping, which only this value
        // uses and unmaps.
        let mapped = unsafe {
            nix::sys::mman::mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE,
            )
        };
        match mapped {
            Ok(at) => {
                // SAFETY: advice on the mapping just made. Without it the
                // buffer still works, only dearer.
                let _ = unsafe { nix::sys::mman::madvise(at, SCRATCH, MmapAdvise::MADV_DONTFORK) };
                Scratch::Mapped(at.cast())
            }
            Err(_) => Scratch::Heap(vec![0; SCRATCH].into_boxed_slice()),
        }
    }

    fn bytes(&mut self) -> &mut [u8] {
        match self {
            // SAFETY: SCRATCH bytes mapped read-write for as long as self
            // lives, borrowed through &mut self only.
            Scratch::Mapped(at) => unsafe { std::slice::from_raw_parts_mut(at.as_ptr(), SCRATCH) },
            Scratch::Heap(b) => b,
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Scratch::Mapped(at) = self {
            // SAFETY: our own mapping, no longer borrowed.
            let _ = unsafe { nix::sys::mman::munmap(at.cast(), SCRATCH) };
        }
    }
}

/// See [`NetPool::most`].
fn most_held() -> usize {
    let files = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    let files = usize::try_from(files).unwrap_or(usize::MAX);
    files / 2 / FDS_PER_NET
}

/// After a namespace could not be made, how many runs make their own
/// before the pool tries again: 1, then twice as many after each further
/// failure, up to [`Retry::MOST`]; a creation that works starts over.
/// Counted in runs, not seconds: a busy host retries sooner, an idle one
/// has nothing to gain from it.
#[derive(Debug, Default, PartialEq)]
struct Retry {
    /// Runs still to skip.
    skip: u32,
    /// What the last failure set `skip` to (0: none since the last
    /// success).
    last: u32,
}

impl Retry {
    const MOST: u32 = 1024;

    /// Whether this run may try to create a namespace (counts the run).
    fn may_try(&mut self) -> bool {
        if self.skip == 0 {
            return true;
        }
        self.skip -= 1;
        false
    }

    fn failed(&mut self) {
        self.last = (self.last * 2).clamp(1, Self::MOST);
        self.skip = self.last;
    }

    fn worked(&mut self) {
        *self = Retry::default();
    }
}

/// A `sockstat`/`sockstat6` table with no socket of this namespace in it:
/// every `used`, `inuse` and `tw` count is 0. (`alloc`, `orphan` and the
/// memory counts are the whole host's.) Anything unreadable is not empty.
pub(super) fn no_sockets(table: &str) -> bool {
    let mut seen = false;
    for line in table.lines() {
        let Some((_, fields)) = line.split_once(':') else {
            continue;
        };
        let mut words = fields.split_whitespace();
        while let Some(name) = words.next() {
            let Some(count) = words.next() else {
                return false;
            };
            if matches!(name, "used" | "inuse" | "tw") {
                seen = true;
                if count != "0" {
                    return false;
                }
            }
        }
    }
    seen
}

/// A new network namespace with loopback up, made in this process's user
/// namespace, its tables opened and read; this process is back in `host`
/// when it returns.
fn create(host: BorrowedFd<'_>) -> Result<Idle, Errno> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
    let made = super::setup::loopback_up()
        .and_then(|_| open_ns(c"/proc/thread-self/ns/net"))
        .and_then(|net| {
            Ok(Idle {
                net,
                tables: Tables::open()?,
            })
        });
    if setns(host).is_err() {
        // SAFETY: as in `NetPool::leave`.
        unsafe { libc::_exit(1) };
    }
    made
}

impl Tables {
    /// The calling thread's namespace's tables, and its state as it reads
    /// now.
    fn open() -> Result<Tables, Errno> {
        let sockstat = open_table(SOCKSTAT)?.ok_or(Errno::ENOENT)?;
        let sockstat6 = open_table(SOCKSTAT6)?;
        let mut state: [Option<File>; STATE.len()] = Default::default();
        let mut ends = [0; STATE.len()];
        let mut made = Vec::new();
        for ((path, file), end) in STATE.iter().zip(&mut state).zip(&mut ends) {
            *file = open_table(path)?;
            // Just opened: read from its start.
            if let Some(file) = file {
                std::io::Read::read_to_end(&mut &*file, &mut made).map_err(errno)?;
            }
            *end = made.len();
        }
        Ok(Tables {
            sockstat,
            sockstat6,
            state,
            made: made.into_boxed_slice(),
            ends,
        })
    }
}

/// A table of the calling thread's namespace; `None`: not in this kernel
/// (no IPv6).
fn open_table(path: &str) -> Result<Option<File>, Errno> {
    match File::open(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(errno(e)),
    }
}

fn errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Reads `file` from its start to its end into `buf`: its length, `None`
/// when unreadable or longer than `buf`.
fn read_whole(file: &File, buf: &mut [u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        if at == buf.len() {
            return None;
        }
        match file.read_at(&mut buf[at..], at as u64) {
            Ok(0) => return Some(at),
            Ok(n) => at += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// Whether `file`, read from its start to its end (through `buf`, in as
/// many reads as it takes), gives exactly `want`. Stops at the first
/// difference; anything unreadable differs.
fn reads_as(file: &File, want: &[u8], buf: &mut [u8]) -> bool {
    let mut at = 0;
    loop {
        match file.read_at(buf, at as u64) {
            Ok(0) => return at == want.len(),
            Ok(n) => {
                if want.get(at..at + n) != Some(&buf[..n]) {
                    return false;
                }
                at += n;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

fn open_ns(path: &CStr) -> Result<OwnedFd, Errno> {
    nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
}

fn setns(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    nix::sched::setns(fd, CloneFlags::CLONE_NEWNET)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::{NetPool, Retry, no_sockets};

    const FRESH: &str = "sockets: used 0\nTCP: inuse 0 orphan 3 tw 0 alloc 12 mem 7\n\
        UDP: inuse 0 mem 2\nUDPLITE: inuse 0\nRAW: inuse 0\nFRAG: inuse 0 memory 0\n";

    #[test]
    fn a_fresh_namespace_is_empty_whatever_the_hosts_counts() {
        assert!(no_sockets(FRESH));
        assert!(no_sockets(
            "TCP6: inuse 0\nUDP6: inuse 0\nUDPLITE6: inuse 0\nRAW6: inuse 0\nFRAG6: inuse 0 memory 0\n"
        ));
    }

    #[test]
    fn any_socket_left_means_not_empty() {
        for (from, to) in [
            ("used 0", "used 1"),
            ("TCP: inuse 0", "TCP: inuse 2"),
            ("tw 0", "tw 1"),
            ("UDP: inuse 0", "UDP: inuse 1"),
            ("RAW: inuse 0", "RAW: inuse 1"),
            ("FRAG: inuse 0", "FRAG: inuse 1"),
        ] {
            let t = FRESH.replace(from, to);
            assert_ne!(t, FRESH);
            assert!(!no_sockets(&t), "{to}");
        }
    }

    #[test]
    fn an_unreadable_table_is_not_empty() {
        assert!(!no_sockets(""));
        assert!(!no_sockets("garbage"));
        assert!(!no_sockets("TCP: inuse"));
        assert!(!no_sockets("TCP: inuse 0 tw"));
    }

    #[test]
    fn after_a_failed_creation_the_pool_tries_again_later_and_later() {
        let mut r = Retry::default();
        assert!(r.may_try());
        // Runs skipped before each next try: 1, 2, 4, …
        let mut skipped = Vec::new();
        for _ in 0..4 {
            r.failed();
            let mut n = 0;
            while !r.may_try() {
                n += 1;
            }
            skipped.push(n);
        }
        assert_eq!(skipped, [1, 2, 4, 8]);
        // Never more than MOST runs without a try.
        for _ in 0..40 {
            r.failed();
        }
        let mut n = 0;
        while !r.may_try() {
            n += 1;
        }
        assert_eq!(n, Retry::MOST);
        // A creation that works forgets the failures.
        r.failed();
        r.worked();
        assert_eq!(r, Retry::default());
        assert!(r.may_try());
        r.failed();
        assert!(!r.may_try());
        assert!(r.may_try());
    }

    /// The check reads a namespace's tables through files opened in it
    /// when it was made, from the host's namespace: they must show that
    /// namespace, not the reader's (nor follow `/proc/thread-self`).
    #[test]
    fn the_check_reads_the_pooled_namespace_wherever_the_spawner_is() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (creates network namespaces)");
            return;
        }
        let mut pool = NetPool::new();
        let net = pool.enter().expect("a pooled namespace");
        let host_fd = pool.host.as_ref().unwrap().try_clone().unwrap();
        // Traffic in the host's namespace: not the pooled one's.
        pool.leave(net, None);
        let net = pool.free.pop().unwrap();
        let host_before = std::fs::read("/proc/thread-self/net/snmp").unwrap();
        let ping = || {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            for _ in 0..3 {
                s.send_to(b"x", "127.0.0.1:9").unwrap();
            }
        };
        ping();
        assert_ne!(
            std::fs::read("/proc/thread-self/net/snmp").unwrap(),
            host_before
        );
        assert!(pool.is_empty(&net), "the host's traffic counted");
        // A socket left in the pooled namespace, then traffic and no socket.
        super::setns(net.fd()).unwrap();
        let left = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        super::setns(host_fd.as_fd()).unwrap();
        assert!(!pool.is_empty(&net), "a socket left");
        drop(left);
        assert!(pool.is_empty(&net), "nothing sent, no socket");
        super::setns(net.fd()).unwrap();
        ping();
        super::setns(host_fd.as_fd()).unwrap();
        assert!(
            !pool.is_empty(&net),
            "the pooled namespace's traffic unseen"
        );
    }
}
