//! Talking to systemd: `READY=1`, `STOPPING=1` and watchdog pings.
//!
//! Owns the service-manager protocol (through the `sd-notify` crate) and
//! nothing else. Every call is a no-op outside systemd (no `NOTIFY_SOCKET`,
//! no `WATCHDOG_USEC`), and a failure to notify is logged, never fatal: a
//! daemon must not stop serving because the manager's socket went away.
//! It never decides *when* the daemon is ready; the caller does.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

fn send(state: &[NotifyState], what: &str) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot tell systemd {what}");
    }
}

/// `READY=1`: the daemon is listening / watching. Call once.
pub fn ready() {
    send(&[NotifyState::Ready], "READY=1");
}

/// `STOPPING=1`: shutdown has begun (systemd then shows "deactivating").
pub fn stopping() {
    send(&[NotifyState::Stopping], "STOPPING=1");
}

/// `STATUS=…`: one line shown by `systemctl status`.
pub fn status(line: &str) {
    send(&[NotifyState::Status(line)], "STATUS");
}

/// The ping period for a watchdog of `timeout`: half of it, as
/// sd_watchdog_enabled(3) recommends, never zero.
pub fn ping_period(timeout: Duration) -> Duration {
    (timeout / 2).max(Duration::from_millis(1))
}

/// Ping the watchdog (`WATCHDOG=1`) at half of `WATCHDOG_USEC` until
/// `shutdown` fires. Returns at once when no watchdog is configured (or it
/// is meant for another process, `WATCHDOG_PID`). Spawn it on the daemon's
/// runtime: a stuck runtime stops the pings and systemd restarts the unit.
pub async fn watchdog_task(shutdown: CancellationToken) {
    let Some(timeout) = sd_notify::watchdog_enabled() else {
        return;
    };
    tracing::debug!(
        timeout_ms = timeout.as_millis() as u64,
        "systemd watchdog on"
    );
    ping_loop(ping_period(timeout), shutdown, || {
        send(&[NotifyState::Watchdog], "WATCHDOG=1")
    })
    .await;
}

/// Call `ping` now and then every `period` until `shutdown` fires.
async fn ping_loop(period: Duration, shutdown: CancellationToken, mut ping: impl FnMut()) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => ping(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_at_half_the_watchdog_timeout() {
        assert_eq!(
            ping_period(Duration::from_secs(30)),
            Duration::from_secs(15)
        );
        assert_eq!(ping_period(Duration::ZERO), Duration::from_millis(1));
    }

    #[tokio::test]
    async fn watchdog_pings_every_period_and_stops_on_shutdown() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let shutdown = CancellationToken::new();
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let task = tokio::spawn(ping_loop(
            Duration::from_millis(10),
            shutdown.clone(),
            move || {
                c.fetch_add(1, Ordering::SeqCst);
            },
        ));
        // Pings at 0, 10, 20 ms, ...: at least three within 200 ms of sleep.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(count.load(Ordering::SeqCst) >= 3);
        shutdown.cancel();
        task.await.unwrap();
        let after = count.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(count.load(Ordering::SeqCst), after, "pinged after shutdown");
    }
}
