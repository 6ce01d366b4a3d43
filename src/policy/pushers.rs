//! Who has pushed to which project: the evidence that a co-author took part.
//!
//! A member of a student's project may have been added by the student
//! alone (a Maintainer of their own namespace adds anyone, with no consent),
//! so membership does not show that a classmate agreed to share a
//! submission. A push does: GitLab names the user who pushed, and only that
//! user can push as themselves. Admission notes the pusher of every job
//! that reaches it from a hook (graded, refused as late or over quota, or
//! with a bad manifest alike), in the quota ledger's database, before any
//! rule can refuse it; locally queued jobs (`regrade`, `replay`) note
//! nothing. The rows are kept for good: one per (project, user).

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use rusqlite::params;

use super::quota::{QuotaError, QuotaLedger};

// The table `project_pushers` is created by `QuotaLedger::open`.

fn key(s: &str) -> String {
    s.trim().to_lowercase()
}

impl QuotaLedger {
    /// Note that `username` pushed to `project` (its `namespace/name`
    /// path) in job `job_id`, received at `at`. Idempotent: the first push
    /// is kept.
    pub fn note_push(
        &self,
        project: &str,
        username: &str,
        job_id: &str,
        at: DateTime<Utc>,
    ) -> Result<(), QuotaError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute(
            "INSERT OR IGNORE INTO project_pushers (project, username, first_job, first_ms)
             VALUES (?1, ?2, ?3, ?4)",
            params![key(project), key(username), job_id, at.timestamp_millis()],
        )
        .map_err(self.sql())?;
        Ok(())
    }

    /// Which of `names` have pushed to `project` (lower-cased).
    pub fn pushed_to(
        &self,
        project: &str,
        names: &[String],
    ) -> Result<BTreeSet<String>, QuotaError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = conn
            .prepare_cached("SELECT 1 FROM project_pushers WHERE project = ?1 AND username = ?2")
            .map_err(self.sql())?;
        let mut out = BTreeSet::new();
        for n in names {
            let n = key(n);
            if st.exists(params![key(project), n]).map_err(self.sql())? {
                out.insert(n);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_is_noted_per_project_and_case_blind() {
        let dir = tempfile::tempdir().unwrap();
        let l = QuotaLedger::in_spool(dir.path()).unwrap();
        let names = vec!["Bob".to_string(), "carol".to_string()];
        assert!(l.pushed_to("course/alice/lab1", &names).unwrap().is_empty());
        l.note_push("course/alice/lab1", "bob", "j1", Utc::now())
            .unwrap();
        l.note_push("course/alice/lab1", "BOB", "j2", Utc::now())
            .unwrap();
        l.note_push("course/carol/lab1", "carol", "j3", Utc::now())
            .unwrap();
        let got = l.pushed_to("Course/Alice/lab1", &names).unwrap();
        assert_eq!(got.into_iter().collect::<Vec<_>>(), ["bob"]);
        // Survives a reopen (another process, a restart).
        drop(l);
        let l = QuotaLedger::in_spool(dir.path()).unwrap();
        assert_eq!(l.pushed_to("course/alice/lab1", &names).unwrap().len(), 1);
    }
}
