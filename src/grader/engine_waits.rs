//! Jobs waiting for the sandbox engine after a sandbox fault, and whether
//! each saw the engine down since (the state `engine_watch` probes for).
//! Owns only that bookkeeping; it never probes, grades nor moves a job.

use std::collections::HashMap;

/// Jobs waiting for the engine: job id → seen the engine down since.
#[derive(Default)]
pub(super) struct EngineWaits(std::sync::Mutex<HashMap<String, bool>>);

impl EngineWaits {
    /// Job `job_id` was put back after a sandbox fault.
    pub(super) fn note(&self, job_id: &str) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.insert(job_id.to_string(), false);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// After a probe: `Some(jobs to release)` when the engine answered.
    pub(super) fn probed(&self, answers: bool) -> Vec<String> {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !answers {
            g.values_mut().for_each(|seen_down| *seen_down = true);
            return Vec::new();
        }
        let released: Vec<String> = g
            .iter()
            .filter(|(_, d)| **d)
            .map(|(j, _)| j.clone())
            .collect();
        // Those never seen down keep their backoff: forget them.
        g.clear();
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_jobs_that_saw_the_engine_down_are_released_when_it_answers() {
        let w = EngineWaits::default();
        w.note("a");
        assert!(
            w.probed(true).is_empty(),
            "never seen down: keeps its backoff"
        );
        assert!(w.is_empty());
        w.note("b");
        assert!(w.probed(false).is_empty());
        w.note("c");
        assert_eq!(w.probed(true), ["b"]);
        assert!(w.is_empty());
    }
}
