//! The quota ledger: accepted submissions per author per assignment, kept
//! in SQLite at `<spool dir>/quota.sqlite`.
//!
//! Owns the count and nothing else (its database also holds the table of
//! [`super::pushers`], which adds its own methods): it never decides who is staff (the
//! policy filters them out) and never moves spool files. Correct under
//! concurrency across tasks and processes: every take is one
//! `BEGIN IMMEDIATE` transaction (SQLite's write lock, waited for with a
//! busy timeout) that reads the author's slots and inserts only if the
//! quota holds, so two hooks or graders can never both take the last slot.
//! A take is keyed by job id, so a job retried after a crash or an
//! infrastructure error never counts twice; [`QuotaLedger::release`] gives
//! the slots back for jobs that failed by the grader's fault.
//!
//! The window slides: `N/W` means at most N accepted submissions in any
//! period of length W. A submission at time `r` counts for checks at times
//! `t` with `t - W < r <= t`, so its slot opens again at exactly `r + W`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, TransactionBehavior, params};

use crate::config::Quota;

/// File name of the ledger inside the spool directory.
pub const QUOTA_DB: &str = "quota.sqlite";

/// The table of `super::pushers`: one row per (project, user) who pushed.
const PUSHERS_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS project_pushers (
     project    TEXT NOT NULL,
     username   TEXT NOT NULL,
     first_job  TEXT NOT NULL,
     first_ms   INTEGER NOT NULL,
     PRIMARY KEY (project, username)
 );";

/// How long a take waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("cannot open the quota ledger {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("quota ledger {path}: {source}")]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

/// The answer to a take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaDecision {
    /// A slot was taken for every counted author (or had already been
    /// taken by this job id).
    Taken,
    /// No quota applies (none configured, or only staff authors).
    Exempt,
    /// At least one author is over quota; nothing was taken.
    Over {
        /// The earliest time at which every author listed has a slot
        /// again (when the oldest counted submission leaves the window).
        next_slot_at: DateTime<Utc>,
        /// The authors (lower-cased) who are over quota.
        users: Vec<String>,
    },
}

impl QuotaDecision {
    /// One line for the student: what limit and when the next slot opens.
    pub fn over_message(&self, quota: Quota) -> Option<String> {
        match self {
            QuotaDecision::Over {
                next_slot_at,
                users,
            } => Some(format!(
                "quota of {} submission{} per {} reached for {}; the next submission can be graded from {}",
                quota.count,
                if quota.count == 1 { "" } else { "s" },
                humantime::format_duration(quota.window),
                users.join(", "),
                next_slot_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            )),
            _ => None,
        }
    }
}

/// The ledger. One per process; cheap to share behind an `Arc`. Calls
/// block on SQLite (and on other processes' locks): use `spawn_blocking`.
#[derive(Debug)]
pub struct QuotaLedger {
    path: PathBuf,
    pub(super) conn: Mutex<Connection>,
}

impl QuotaLedger {
    /// The ledger of the spool rooted at `spool_dir`.
    pub fn in_spool(spool_dir: &Path) -> Result<QuotaLedger, QuotaError> {
        Self::open(&spool_dir.join(QUOTA_DB))
    }

    /// Open (creating if needed) the ledger at `path`.
    pub fn open(path: &Path) -> Result<QuotaLedger, QuotaError> {
        let open_err = |source| QuotaError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // WAL lets readers run beside the writer; FULL syncs each commit so
        // a power cut cannot hand a student back a slot they used.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS quota_takes (
                 assignment TEXT NOT NULL,
                 username   TEXT NOT NULL,
                 job_id     TEXT NOT NULL,
                 at_ms      INTEGER NOT NULL,
                 PRIMARY KEY (assignment, username, job_id)
             );
             CREATE INDEX IF NOT EXISTS quota_by_user ON quota_takes (assignment, username, at_ms);
             CREATE INDEX IF NOT EXISTS quota_by_job ON quota_takes (job_id);",
        )
        .map_err(open_err)?;
        // Who pushed to which project (`pushers`), in the same database.
        conn.execute_batch(PUSHERS_SCHEMA).map_err(open_err)?;
        Ok(QuotaLedger {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn sql(&self) -> impl Fn(rusqlite::Error) -> QuotaError + '_ {
        |source| QuotaError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    /// Take one slot for `user` (see [`QuotaLedger::try_take_all`]).
    pub fn try_take(
        &self,
        assignment: &str,
        user: &str,
        job_id: &str,
        quota: Quota,
        now: DateTime<Utc>,
    ) -> Result<QuotaDecision, QuotaError> {
        self.try_take_all(assignment, &[user], job_id, quota, now)
    }

    /// Take one slot for each of `users` for job `job_id` at time `now`
    /// (the submission's receipt time), all or none, in one transaction.
    /// Idempotent per job id: a job that already holds slots gets `Taken`.
    pub fn try_take_all(
        &self,
        assignment: &str,
        users: &[&str],
        job_id: &str,
        quota: Quota,
        now: DateTime<Utc>,
    ) -> Result<QuotaDecision, QuotaError> {
        let mut users: Vec<String> = users.iter().map(|u| u.trim().to_lowercase()).collect();
        users.sort();
        users.dedup();
        if users.is_empty() {
            return Ok(QuotaDecision::Exempt);
        }
        let t = now.timestamp_millis();
        let w = i64::try_from(quota.window.as_millis()).unwrap_or(i64::MAX / 4);
        let n = quota.count as usize;
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql())?;
        let held: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM quota_takes WHERE assignment = ?1 AND job_id = ?2",
                params![assignment, job_id],
                |r| r.get(0),
            )
            .map_err(self.sql())?;
        if held > 0 {
            tx.commit().map_err(self.sql())?;
            return Ok(QuotaDecision::Taken);
        }
        let mut over = Vec::new();
        let mut next = i64::MIN;
        for u in &users {
            let times = {
                let mut st = tx
                    .prepare_cached(
                        "SELECT at_ms FROM quota_takes
                         WHERE assignment = ?1 AND username = ?2 AND at_ms > ?3
                         ORDER BY at_ms",
                    )
                    .map_err(self.sql())?;
                st.query_map(params![assignment, u, t.saturating_sub(w)], |r| {
                    r.get::<_, i64>(0)
                })
                .map_err(self.sql())?
                .collect::<Result<Vec<i64>, _>>()
                .map_err(self.sql())?
            };
            if !fits(&times, t, n, w) {
                over.push(u.clone());
                next = next.max(next_slot(&times, t, n, w));
            }
        }
        if !over.is_empty() {
            tx.rollback().map_err(self.sql())?;
            return Ok(QuotaDecision::Over {
                next_slot_at: Utc
                    .timestamp_millis_opt(next)
                    .single()
                    .unwrap_or(DateTime::<Utc>::MAX_UTC),
                users: over,
            });
        }
        for u in &users {
            tx.execute(
                "INSERT INTO quota_takes (assignment, username, job_id, at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![assignment, u, job_id, t],
            )
            .map_err(self.sql())?;
        }
        tx.commit().map_err(self.sql())?;
        Ok(QuotaDecision::Taken)
    }

    /// Give back every slot job `job_id` holds (an infrastructure failure
    /// is never charged to the student). Returns how many rows went; 0 is
    /// fine (no quota, or already released).
    pub fn release(&self, job_id: &str) -> Result<usize, QuotaError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute("DELETE FROM quota_takes WHERE job_id = ?1", params![job_id])
            .map_err(self.sql())
    }

    /// Slots `user` has used in the window ending at `now` (for staff tools).
    pub fn used(
        &self,
        assignment: &str,
        user: &str,
        quota: Quota,
        now: DateTime<Utc>,
    ) -> Result<u32, QuotaError> {
        let t = now.timestamp_millis();
        let w = i64::try_from(quota.window.as_millis()).unwrap_or(i64::MAX / 4);
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.query_row(
            "SELECT COUNT(*) FROM quota_takes
             WHERE assignment = ?1 AND username = ?2 AND at_ms > ?3 AND at_ms <= ?4",
            params![
                assignment,
                user.trim().to_lowercase(),
                t.saturating_sub(w),
                t
            ],
            |r| r.get::<_, u32>(0),
        )
        .map_err(self.sql())
    }
}

/// Rows `times` (sorted) counted in the window ending at `s`.
fn in_window(times: &[i64], s: i64, w: i64) -> usize {
    times
        .iter()
        .filter(|&&r| r > s.saturating_sub(w) && r <= s)
        .count()
}

/// Whether one more submission at `t` keeps every window of length `w`
/// at `n` or fewer. Only windows containing `t` change; their counts grow
/// only where a row enters, so checking at `t` and at each later row
/// inside `(t, t + w)` covers them all. (Later rows exist only when jobs
/// are taken out of receipt order, e.g. by parallel workers.)
fn fits(times: &[i64], t: i64, n: usize, w: i64) -> bool {
    std::iter::once(t)
        .chain(
            times
                .iter()
                .copied()
                .filter(|&r| r > t && r < t.saturating_add(w)),
        )
        .all(|s| in_window(times, s, w) < n)
}

/// The earliest time `>= t` at which a submission would fit. Fitness
/// changes only when a row leaves a window, so the candidates are `t` and
/// each `r + w`; the last one always fits.
fn next_slot(times: &[i64], t: i64, n: usize, w: i64) -> i64 {
    let mut candidates: Vec<i64> = times
        .iter()
        .map(|r| r.saturating_add(w))
        .filter(|&c| c > t)
        .collect();
    candidates.sort_unstable();
    candidates
        .into_iter()
        .find(|&c| fits(times, c, n, w))
        .unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;
    const M: i64 = 60_000;

    fn q(s: &str) -> Quota {
        s.parse().unwrap()
    }

    fn ms(t: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_800_000_000_000 + t).unwrap()
    }

    fn ledger() -> (tempfile::TempDir, QuotaLedger) {
        let d = tempfile::tempdir().unwrap();
        let l = QuotaLedger::in_spool(d.path()).unwrap();
        (d, l)
    }

    #[test]
    fn window_arithmetic() {
        // quota 2/1h, rows at 0 and 10 min.
        let rows = [0, 10 * M];
        assert!(!fits(&rows, 30 * M, 2, H));
        assert_eq!(next_slot(&rows, 30 * M, 2, H), H);
        // The oldest row leaves the window at exactly r + W.
        assert!(!fits(&rows, H - 1, 2, H));
        assert!(fits(&rows, H, 2, H));
        // Out of order: a row in the future still counts for windows
        // that would hold both.
        let rows = [30 * M];
        assert!(!fits(&rows, 0, 1, H));
        assert!(fits(&rows, -30 * M, 1, H));
        assert!(fits(&rows, 90 * M, 1, H));
    }

    #[test]
    fn sliding_window_with_injected_clock() {
        let (_d, l) = ledger();
        let quota = q("2/1h");
        let take = |job: &str, t: i64| l.try_take("lab1", "alice", job, quota, ms(t)).unwrap();
        assert_eq!(take("j1", 0), QuotaDecision::Taken);
        assert_eq!(take("j2", 10 * M), QuotaDecision::Taken);
        assert_eq!(
            take("j3", 20 * M),
            QuotaDecision::Over {
                next_slot_at: ms(H),
                users: vec!["alice".into()]
            }
        );
        // One millisecond before the first slot frees: still over.
        assert!(matches!(take("j3", H - 1), QuotaDecision::Over { .. }));
        assert_eq!(take("j3", H), QuotaDecision::Taken);
        // Now j2 (10 min) and j3 (60 min) are in the window; next frees at 70 min.
        assert_eq!(
            take("j4", H + M),
            QuotaDecision::Over {
                next_slot_at: ms(H + 10 * M),
                users: vec!["alice".into()]
            }
        );
        assert_eq!(l.used("lab1", "Alice", quota, ms(H + M)).unwrap(), 2);
    }

    #[test]
    fn users_and_assignments_are_counted_apart() {
        let (_d, l) = ledger();
        let quota = q("1/24h");
        assert_eq!(
            l.try_take("lab1", "alice", "a1", quota, ms(0)).unwrap(),
            QuotaDecision::Taken
        );
        assert_eq!(
            l.try_take("lab1", "bob", "b1", quota, ms(0)).unwrap(),
            QuotaDecision::Taken
        );
        assert_eq!(
            l.try_take("lab2", "alice", "a2", quota, ms(0)).unwrap(),
            QuotaDecision::Taken
        );
        // Usernames are case-insensitive, as on GitLab.
        assert!(matches!(
            l.try_take("lab1", "ALICE", "a3", quota, ms(1)).unwrap(),
            QuotaDecision::Over { .. }
        ));
    }

    #[test]
    fn retried_job_never_counts_twice() {
        let (_d, l) = ledger();
        let quota = q("1/1h");
        for _ in 0..3 {
            assert_eq!(
                l.try_take("lab1", "alice", "j1", quota, ms(0)).unwrap(),
                QuotaDecision::Taken
            );
        }
        assert_eq!(l.used("lab1", "alice", quota, ms(0)).unwrap(), 1);
    }

    #[test]
    fn release_gives_the_slot_back() {
        let (_d, l) = ledger();
        let quota = q("1/1h");
        assert_eq!(
            l.try_take("lab1", "alice", "j1", quota, ms(0)).unwrap(),
            QuotaDecision::Taken
        );
        assert!(matches!(
            l.try_take("lab1", "alice", "j2", quota, ms(M)).unwrap(),
            QuotaDecision::Over { .. }
        ));
        assert_eq!(l.release("j1").unwrap(), 1);
        assert_eq!(l.release("j1").unwrap(), 0);
        assert_eq!(
            l.try_take("lab1", "alice", "j2", quota, ms(M)).unwrap(),
            QuotaDecision::Taken
        );
    }

    #[test]
    fn team_take_is_all_or_nothing() {
        let (_d, l) = ledger();
        let quota = q("1/1h");
        assert_eq!(
            l.try_take("lab1", "bob", "b1", quota, ms(0)).unwrap(),
            QuotaDecision::Taken
        );
        let d = l
            .try_take_all("lab1", &["alice", "bob"], "t1", quota, ms(10 * M))
            .unwrap();
        assert_eq!(
            d,
            QuotaDecision::Over {
                next_slot_at: ms(H),
                users: vec!["bob".into()]
            }
        );
        // Alice's slot was not taken by the refused team submission.
        assert_eq!(l.used("lab1", "alice", quota, ms(10 * M)).unwrap(), 0);
        assert_eq!(
            l.try_take_all("lab1", &["alice", "bob", "Bob"], "t2", quota, ms(H))
                .unwrap(),
            QuotaDecision::Taken
        );
        assert_eq!(l.release("t2").unwrap(), 2);
    }

    #[test]
    fn over_message_names_limit_and_next_slot() {
        let d = QuotaDecision::Over {
            next_slot_at: DateTime::parse_from_rfc3339("2026-11-22T04:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            users: vec!["alice".into()],
        };
        let m = d.over_message(q("2/1h")).unwrap();
        assert_eq!(
            m,
            "quota of 2 submissions per 1h reached for alice; the next submission can be graded from 2026-11-22T04:00:00Z"
        );
        assert_eq!(QuotaDecision::Taken.over_message(q("2/1h")), None);
    }

    #[test]
    fn ledger_survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        let quota = q("1/1h");
        {
            let l = QuotaLedger::in_spool(d.path()).unwrap();
            l.try_take("lab1", "alice", "j1", quota, ms(0)).unwrap();
        }
        let l = QuotaLedger::in_spool(d.path()).unwrap();
        assert!(matches!(
            l.try_take("lab1", "alice", "j2", quota, ms(1)).unwrap(),
            QuotaDecision::Over { .. }
        ));
    }

    /// How many of the threads' decisions were `Taken`.
    fn taken(handles: Vec<std::thread::JoinHandle<QuotaDecision>>) -> usize {
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|d| *d == QuotaDecision::Taken)
            .count()
    }

    #[test]
    fn twenty_threads_with_own_connections_take_exactly_five() {
        let d = tempfile::tempdir().unwrap();
        let quota = q("5/24h");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(20));
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let dir = d.path().to_path_buf();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let l = QuotaLedger::in_spool(&dir).unwrap();
                    barrier.wait();
                    l.try_take("lab1", "alice", &format!("job{i}"), quota, Utc::now())
                        .unwrap()
                })
            })
            .collect();
        assert_eq!(taken(handles), 5);
    }

    #[test]
    fn twenty_tasks_sharing_one_ledger_take_exactly_five() {
        let (_d, l) = ledger();
        let l = std::sync::Arc::new(l);
        let quota = q("5/24h");
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let l = l.clone();
                std::thread::spawn(move || {
                    l.try_take("lab1", "alice", &format!("job{i}"), quota, Utc::now())
                        .unwrap()
                })
            })
            .collect();
        assert_eq!(taken(handles), 5);
    }
}
