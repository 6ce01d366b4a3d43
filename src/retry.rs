//! When to try again: the one backoff schedule of the grader's
//! infrastructure retries and the delivery worker's.

use std::time::Duration;

/// Delay before attempt `attempts + 1`: `min · 2^(attempts-1)`, capped at
/// `max`, with "equal jitter" (a pick in the upper half, `jitter` ∈ [0, 1])
/// so that a burst of failures does not retry in lockstep.
pub fn backoff(attempts: u32, min: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let base = min.saturating_mul(1u32 << exp).min(max.max(min));
    let jitter = jitter.clamp(0.0, 1.0);
    base / 2 + base.mul_f64(jitter / 2.0)
}

/// A jitter in [0, 1) derived from `key` and `attempts`: the same after a
/// restart, different between jobs.
pub fn stable_jitter(key: &str, attempts: u32) -> f64 {
    let h = key.bytes().fold(attempts as u64, |a, b| {
        a.wrapping_mul(31).wrapping_add(b as u64)
    });
    (h % 1000) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_jitters() {
        let (min, max) = (Duration::from_secs(2), Duration::from_secs(600));
        assert_eq!(backoff(1, min, max, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(1, min, max, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(4, min, max, 1.0), Duration::from_secs(16));
        assert_eq!(backoff(40, min, max, 1.0), max);
        assert_eq!(backoff(40, min, max, 0.0), max / 2);
        // A cap below the minimum never shortens the first wait.
        assert_eq!(backoff(1, min, Duration::from_secs(1), 1.0), min);
    }

    #[test]
    fn stable_jitter_is_stable_and_in_range() {
        assert_eq!(stable_jitter("J", 3), stable_jitter("J", 3));
        assert_ne!(stable_jitter("J", 3), stable_jitter("K", 3));
        for a in 0..50 {
            let j = stable_jitter("01JOB", a);
            assert!((0.0..1.0).contains(&j));
        }
    }
}
