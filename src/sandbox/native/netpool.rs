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

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;

/// Most idle namespaces kept (each costs some kernel memory); more than
/// the runs a host does at once.
const MAX_FREE: usize = 32;

/// The pool, inside the spawner.
#[derive(Debug)]
pub(super) struct NetPool {
    /// The spawner's own (the host's) network namespace, to come back to
    /// after each clone. `None`: pooling is off (not root, or the first
    /// creation failed); each run then creates its own.
    host: Option<OwnedFd>,
    free: Vec<Idle>,
    /// Lent namespaces with the pidfd of the init that joined them.
    lent: Vec<Lent>,
}

/// A pooled namespace and what its readable state was when it was made
/// (see [`state`]); it is lent again only while that is unchanged.
#[derive(Debug)]
pub(super) struct Idle {
    net: OwnedFd,
    made: String,
}

impl Idle {
    fn fd(&self) -> BorrowedFd<'_> {
        self.net.as_fd()
    }
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
        }
    }

    /// A namespace for the next run, joined by this process until
    /// [`NetPool::leave`]: an idle one, or a new one. `None`: the run must
    /// create its own (`CLONE_NEWNET`, loopback brought up by its init).
    pub(super) fn enter(&mut self) -> Option<Idle> {
        let host = self.host.as_ref()?.as_fd();
        let net = match self.free.pop() {
            Some(net) => net,
            None => match create(host) {
                Ok(net) => net,
                Err(_) => {
                    // Not allowed here after all: every run makes its own.
                    self.host = None;
                    self.free.clear();
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
    /// readable state (flow labels, counters) as when it was made.
    fn is_empty(&self, net: &Idle) -> bool {
        let Some(host) = &self.host else {
            return false;
        };
        if setns(net.fd()).is_err() {
            return false;
        }
        // `thread-self/net` shows the namespace of the calling thread.
        let v4 = std::fs::read_to_string("/proc/thread-self/net/sockstat");
        let v6 = std::fs::read_to_string("/proc/thread-self/net/sockstat6");
        let now = state();
        if setns(host.as_fd()).is_err() {
            // SAFETY: as in `leave`.
            unsafe { libc::_exit(1) };
        }
        if now.as_deref() != Some(net.made.as_str()) {
            return false;
        }
        match (v4, v6) {
            (Ok(v4), Ok(v6)) => no_sockets(&v4) && no_sockets(&v6),
            // No IPv6 in this kernel: its table does not exist.
            (Ok(v4), Err(e)) if e.kind() == std::io::ErrorKind::NotFound => no_sockets(&v4),
            _ => false,
        }
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
        let words: Vec<&str> = fields.split_whitespace().collect();
        if words.len() % 2 != 0 {
            return false;
        }
        for pair in words.chunks(2) {
            if matches!(pair[0], "used" | "inuse" | "tw") {
                seen = true;
                if pair[1] != "0" {
                    return false;
                }
            }
        }
    }
    seen
}

/// A new network namespace with loopback up, made in this process's user
/// namespace; this process is back in `host` when it returns.
fn create(host: BorrowedFd<'_>) -> Result<Idle, Errno> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
    let made = super::setup::loopback_up()
        .and_then(|_| open_ns(c"/proc/thread-self/ns/net"))
        .and_then(|net| {
            let made = state().ok_or(Errno::EIO)?;
            Ok(Idle { net, made })
        });
    if setns(host).is_err() {
        // SAFETY: as in `NetPool::leave`.
        unsafe { libc::_exit(1) };
    }
    made
}

/// What anyone in the calling thread's network namespace can read of it
/// that is no socket and outlives the run: flow labels, loopback's and
/// the protocols' counters. `None`: unreadable.
fn state() -> Option<String> {
    let mut all = String::new();
    for table in ["dev", "snmp", "snmp6", "netstat", "ip6_flowlabel"] {
        match std::fs::read_to_string(format!("/proc/thread-self/net/{table}")) {
            Ok(t) => all.push_str(&t),
            // No IPv6 in this kernel.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => all.push('-'),
            Err(_) => return None,
        }
        all.push('\0');
    }
    Some(all)
}

fn open_ns(path: &std::ffi::CStr) -> Result<OwnedFd, Errno> {
    nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
}

fn setns(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    nix::sched::setns(fd, CloneFlags::CLONE_NEWNET)
}

#[cfg(test)]
mod tests {
    use super::no_sockets;

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
}
