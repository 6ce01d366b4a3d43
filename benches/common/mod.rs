//! What the HTTP benchmarks (`intake_bench`, `web_bench`) share: the
//! figures of one run (requests, wall time, latencies) and the one line
//! they print for it. Included with `#[path]`; not a bench target itself.

use std::time::Duration;

/// `n` requests answered in `secs`, each with its latency.
pub struct Figures {
    pub n: usize,
    pub secs: f64,
    pub lat: Vec<Duration>,
}

impl Figures {
    pub fn rate(&self) -> f64 {
        self.n as f64 / self.secs
    }

    /// The `p` quantile of the latencies (0.99 = p99), in milliseconds.
    pub fn pct(&self, p: f64) -> f64 {
        let mut l = self.lat.clone();
        l.sort();
        let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
        l[i].as_secs_f64() * 1000.0
    }

    /// `what`, the rate, p50 and p99, in columns `width` wide for `what`.
    pub fn line(&self, what: &str, width: usize) -> String {
        format!(
            "{what:<width$} {:>8.0} /s   p50 {:>6.2} ms   p99 {:>6.2} ms   ({} in {:.2} s)",
            self.rate(),
            self.pct(0.50),
            self.pct(0.99),
            self.n,
            self.secs
        )
    }
}
