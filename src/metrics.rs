//! Process-wide metrics in Prometheus text format.
//!
//! Counters and histograms are registered by name on first use and live
//! for the process. Parts record into them; the hook server renders them at
//! `GET /metrics` (with spool depth gauges it reads at render time). No
//! part may block on this module: every operation is a short mutex hold.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Latency buckets in seconds (1 ms … 5 min).
const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

type Labels = Vec<(&'static str, String)>;

/// A gauge computed by the caller at scrape time: name, help, labels, value.
pub type Gauge<'a> = (&'a str, &'a str, Labels, f64);

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Registry {
    help: BTreeMap<&'static str, &'static str>,
    counters: BTreeMap<(&'static str, Labels), u64>,
    histograms: BTreeMap<(&'static str, Labels), Histogram>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

fn with<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut g = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    f(g.get_or_insert_with(Registry::default))
}

/// Add 1 to counter `name` with `labels`.
pub fn inc(name: &'static str, help: &'static str, labels: &[(&'static str, &str)]) {
    let labels: Labels = labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
    with(|r| {
        r.help.insert(name, help);
        *r.counters.entry((name, labels)).or_insert(0) += 1;
    });
}

/// Record one observation of a duration in histogram `name`.
pub fn observe(
    name: &'static str,
    help: &'static str,
    labels: &[(&'static str, &str)],
    d: Duration,
) {
    let labels: Labels = labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
    let secs = d.as_secs_f64();
    with(|r| {
        r.help.insert(name, help);
        let h = r.histograms.entry((name, labels)).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    });
}

/// Current value of a counter (for tests and `queue`).
pub fn counter_value(name: &'static str, labels: &[(&'static str, &str)]) -> u64 {
    let labels: Labels = labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
    with(|r| r.counters.get(&(name, labels)).copied().unwrap_or(0))
}

fn fmt_labels(labels: &[(&'static str, String)], extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Render every metric, followed by `gauges` (name, help, labels, value)
/// computed by the caller at scrape time.
pub fn render(gauges: &[Gauge<'_>]) -> String {
    let mut out = String::new();
    with(|r| {
        let mut last = "";
        for ((name, labels), v) in &r.counters {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {}", r.help.get(name).unwrap_or(&""));
                let _ = writeln!(out, "# TYPE {name} counter");
                last = name;
            }
            let _ = writeln!(out, "{name}{} {v}", fmt_labels(labels, None));
        }
        last = "";
        for ((name, labels), h) in &r.histograms {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {}", r.help.get(name).unwrap_or(&""));
                let _ = writeln!(out, "# TYPE {name} histogram");
                last = name;
            }
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {}",
                    fmt_labels(labels, Some(("le", b.to_string()))),
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{} {}",
                fmt_labels(labels, Some(("le", "+Inf".into()))),
                h.count
            );
            let _ = writeln!(out, "{name}_sum{} {}", fmt_labels(labels, None), h.sum);
            let _ = writeln!(out, "{name}_count{} {}", fmt_labels(labels, None), h.count);
        }
    });
    let mut last = "";
    for (name, help, labels, v) in gauges {
        if *name != last {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            last = name;
        }
        let _ = writeln!(out, "{name}{} {v}", fmt_labels(labels, None));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        inc("t_accepted_total", "accepted", &[("kind", "push")]);
        inc("t_accepted_total", "accepted", &[("kind", "push")]);
        observe(
            "t_phase_seconds",
            "phase",
            &[("phase", "run")],
            Duration::from_millis(3),
        );
        let text = render(&[("t_depth", "depth", vec![("state", "incoming".into())], 2.0)]);
        assert!(text.contains("t_accepted_total{kind=\"push\"} 2"), "{text}");
        assert!(
            text.contains("t_phase_seconds_bucket{phase=\"run\",le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("t_phase_seconds_count{phase=\"run\"} 1"),
            "{text}"
        );
        assert!(text.contains("t_depth{state=\"incoming\"} 2"), "{text}");
    }
}
