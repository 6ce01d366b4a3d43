//! The daemons speak systemd's notify protocol: `READY=1` once the spool is
//! open and the socket bound, `STOPPING=1` when shutdown begins. Driven
//! through the real binary with a real `NOTIFY_SOCKET` datagram socket, as
//! systemd runs a `Type=notify` unit.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

fn recv_until(sock: &UnixDatagram, want: &str, deadline: Duration) -> Vec<String> {
    recv_matching(sock, |l| l == want, want, deadline)
}

fn recv_matching(
    sock: &UnixDatagram,
    pred: impl Fn(&str) -> bool,
    want: &str,
    deadline: Duration,
) -> Vec<String> {
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < deadline {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                let done = msg.lines().any(&pred);
                seen.push(msg);
                if done {
                    return seen;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("recv on notify socket: {e}"),
        }
    }
    panic!("no {want} within {deadline:?}; got {seen:?}");
}

fn notify_round_trip(subcommand: &str) {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let cfg = dir.path().join("labgrader.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[spool]\ndir = \"{}\"\n",
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let mut child = common::daemon::binary(subcommand, &cfg, &dir.path().join("daemon.log"))
        .env("NOTIFY_SOCKET", &sock_path)
        .env_remove("WATCHDOG_USEC")
        .spawn()
        .unwrap();
    let seen = recv_until(&sock, "READY=1", Duration::from_secs(30));
    assert!(
        !seen.iter().any(|m| m.contains("STOPPING=1")),
        "STOPPING before READY: {seen:?}"
    );
    // A status line for `systemctl status`.
    let status = if subcommand == "grader" {
        "STATUS=spool "
    } else {
        "STATUS=listening on 127.0.0.1:"
    };
    recv_matching(
        &sock,
        |l| l.starts_with(status),
        status,
        Duration::from_secs(30),
    );
    // Ask it to stop as systemd would (harmless if it already ended).
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    recv_until(&sock, "STOPPING=1", Duration::from_secs(30));
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(60), "did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn hook_sends_ready_after_binding_then_stopping_on_sigterm() {
    notify_round_trip("hook");
}

#[test]
fn serve_sends_ready_after_binding_then_stopping_on_sigterm() {
    notify_round_trip("serve");
}

#[test]
fn grader_sends_ready_after_opening_the_spool_then_stopping_on_sigterm() {
    notify_round_trip("grader");
}
