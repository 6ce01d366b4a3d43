//! The gradebook: one SQLite row per finished job, and exports.
//!
//! Owns `<spool dir>/gradebook.sqlite` (rusqlite, bundled SQLite): the
//! schema, its versioned migrations (`PRAGMA user_version`), the
//! idempotent insert (by job id: recording the same job again replaces its
//! row, never adds one) and `labgrader gradebook export`. Every field of a
//! [`JobResult`] has a column, and the whole result is kept as JSON so an
//! export loses nothing. It never grades and never delivers. Exports never
//! count `infra_error` rows as a student's outcome. CSV cells are written
//! by the one CSV writer of grade exports
//! ([`crate::policy::export::write_csv_record`]), never by hand here.

use std::io::Write;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::policy::export::write_csv_record;
use crate::result::{JobResult, Status};

pub mod views;
pub use views::{BoardRow, JobRow, Views};

/// File name of the gradebook inside the spool directory.
pub const FILE_NAME: &str = "gradebook.sqlite";

#[derive(Debug, thiserror::Error)]
pub enum GradebookError {
    #[error("cannot open the gradebook {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "the gradebook {path} has schema version {found}, newer than this labgrader knows ({known}); upgrade labgrader"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("gradebook query failed: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("a stored result is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot write the export: {0}")]
    Write(#[from] std::io::Error),
}

/// Migrations, in order; migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: one row per job.
    "CREATE TABLE results (
        job_id           TEXT PRIMARY KEY,
        project          TEXT NOT NULL,
        assignment       TEXT NOT NULL,
        git_ref          TEXT NOT NULL,
        student_sha      TEXT NOT NULL,
        tests_sha        TEXT,
        runner           TEXT NOT NULL,
        image            TEXT,
        image_id         TEXT,
        limits           TEXT,
        received_at      TEXT NOT NULL,
        started_at       TEXT,
        ended_at         TEXT NOT NULL,
        status           TEXT NOT NULL,
        reason           TEXT,
        termination      TEXT,
        grade_total      REAL,
        summary          TEXT NOT NULL,
        hidden           TEXT NOT NULL,
        stdout_total     INTEGER NOT NULL,
        stdout_truncated INTEGER NOT NULL,
        stderr_total     INTEGER NOT NULL,
        stderr_truncated INTEGER NOT NULL,
        extra            TEXT NOT NULL,
        stdout           BLOB NOT NULL,
        stderr           BLOB NOT NULL,
        result           TEXT NOT NULL,
        recorded_at      TEXT NOT NULL
     );
     CREATE INDEX results_project ON results(project, received_at);
     CREATE INDEX results_status ON results(status);",
    // 2: one row per test per job (results.json / junit.xml), filled from
    // the results already recorded.
    "CREATE TABLE tests (
        job_id     TEXT NOT NULL REFERENCES results(job_id) ON DELETE CASCADE,
        seq        INTEGER NOT NULL,
        name       TEXT NOT NULL,
        number     TEXT,
        score      REAL,
        max_score  REAL,
        visibility TEXT NOT NULL,
        status     TEXT,
        output     TEXT,
        PRIMARY KEY (job_id, seq)
     );
     INSERT INTO tests (job_id, seq, name, number, score, max_score, visibility, status, output)
        SELECT r.job_id, CAST(t.key AS INTEGER), json_extract(t.value, '$.name'),
               json_extract(t.value, '$.number'), json_extract(t.value, '$.score'),
               json_extract(t.value, '$.max_score'),
               coalesce(json_extract(t.value, '$.visibility'), 'visible'),
               json_extract(t.value, '$.status'), json_extract(t.value, '$.output')
        FROM results r, json_each(r.result, '$.results.tests') t
        WHERE json_extract(t.value, '$.name') IS NOT NULL;",
    // 3: assignments whose results were released after a deadline.
    "CREATE TABLE releases (
        assignment  TEXT NOT NULL,
        due         TEXT NOT NULL,
        released_at TEXT NOT NULL,
        jobs        INTEGER NOT NULL,
        PRIMARY KEY (assignment, due)
     );",
    // 4: regrades (`labgrader regrade`): the job a row grades again (the
    // first grading of the submission) and its batch; NULL on live jobs.
    // The tests commit of every row is `tests_sha`.
    "ALTER TABLE results ADD COLUMN regrade_of TEXT;
     ALTER TABLE results ADD COLUMN regrade_batch TEXT;
     UPDATE results SET regrade_of = json_extract(result, '$.extra.regrade_of'),
        regrade_batch = json_extract(result, '$.extra.regrade_batch');
     CREATE INDEX results_regrade_of ON results(regrade_of);
     CREATE INDEX results_assignment ON results(assignment, received_at);",
];

/// The result's `extra` keys naming the job a regrade grades again and its
/// batch (the gradebook's regrade columns).
pub use crate::result::{REGRADE_BATCH, REGRADE_OF};

/// One test of one job, as the gradebook keeps it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TestRecord {
    pub job_id: String,
    /// Who the row is for: the project's namespace, or the author an
    /// export policy chose.
    pub student: String,
    pub project: String,
    pub name: String,
    pub number: Option<String>,
    pub score: Option<f64>,
    pub max_score: Option<f64>,
    pub visibility: String,
    pub status: Option<String>,
    /// The test's output as recorded (capped when the results were read).
    pub output: Option<String>,
}

/// Which rows an export keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    /// Every job.
    All,
    /// Per project, the most recently received job that is not an `infra_error`.
    Latest,
    /// Per project, the job with the highest grade (ties: the earlier one).
    Best,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
}

/// Filters of an export.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub project: Option<String>,
    pub assignment: Option<String>,
}

pub struct Gradebook {
    conn: Connection,
}

/// The gradebook path of a spool directory.
pub fn path_in(spool_dir: &Path) -> PathBuf {
    spool_dir.join(FILE_NAME)
}

impl Gradebook {
    /// Open (creating and migrating as needed) the gradebook at `path`.
    pub fn open(path: &Path) -> Result<Gradebook, GradebookError> {
        let open_err = |source| GradebookError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(open_err)?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(GradebookError::TooNew {
                path: path.to_path_buf(),
                found: version,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(Gradebook { conn })
    }

    /// Open the gradebook at `path` for reading only (never created, never
    /// migrated: the web view's); `None` while it does not exist yet.
    pub fn open_readonly(path: &Path) -> Result<Option<Gradebook>, GradebookError> {
        if !path.exists() {
            return Ok(None);
        }
        let open_err = |source| GradebookError::Open {
            path: path.to_path_buf(),
            source,
        };
        let flags =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(open_err)?;
        let known = MIGRATIONS.len() as i64;
        if found > known {
            let path = path.to_path_buf();
            return Err(GradebookError::TooNew { path, found, known });
        }
        Ok(Some(Gradebook { conn }))
    }

    /// The light read-only queries of the web pages.
    pub fn views(&self) -> Views<'_> {
        Views::new(&self.conn)
    }

    /// Record `r` and its tests. Idempotent by job id: the rows are
    /// replaced, never doubled.
    pub fn record(&self, r: &JobResult) -> Result<(), GradebookError> {
        let json = |v: &dyn erased::Ser| v.to_json();
        let assignment = r.project.rsplit('/').next().unwrap_or("").to_string();
        let tx = self.conn.unchecked_transaction()?;
        tx.prepare_cached(
            "INSERT INTO results (job_id, project, assignment, git_ref, student_sha, tests_sha,
                runner, image, image_id, limits, received_at, started_at, ended_at, status,
                reason, termination, grade_total, summary, hidden, stdout_total,
                stdout_truncated, stderr_total, stderr_truncated, extra, stdout, stderr, result,
                recorded_at)
             VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,
                ?21,?22,?23,?24,?25,?26,?27,?28)
             ON CONFLICT(job_id) DO UPDATE SET
                project=excluded.project, assignment=excluded.assignment,
                git_ref=excluded.git_ref, student_sha=excluded.student_sha,
                tests_sha=excluded.tests_sha, runner=excluded.runner, image=excluded.image,
                image_id=excluded.image_id, limits=excluded.limits,
                received_at=excluded.received_at, started_at=excluded.started_at,
                ended_at=excluded.ended_at, status=excluded.status, reason=excluded.reason,
                termination=excluded.termination, grade_total=excluded.grade_total,
                summary=excluded.summary, hidden=excluded.hidden,
                stdout_total=excluded.stdout_total, stdout_truncated=excluded.stdout_truncated,
                stderr_total=excluded.stderr_total, stderr_truncated=excluded.stderr_truncated,
                extra=excluded.extra, stdout=excluded.stdout, stderr=excluded.stderr,
                result=excluded.result, recorded_at=excluded.recorded_at",
        )?
        .execute(params![
            r.job_id,
            r.project,
            assignment,
            r.git_ref,
            r.student_sha,
            r.tests_sha,
            r.runner,
            r.image,
            r.image_id,
            r.limits.as_ref().map(|l| json(l)),
            ts(r.received_at),
            r.started_at.map(ts),
            ts(r.ended_at),
            r.status.as_str(),
            r.reason,
            r.termination.as_ref().map(|t| json(t)),
            r.grade_total,
            json(&r.summary),
            json(&r.hidden),
            r.stdout.total as i64,
            r.stdout.truncated,
            r.stderr.total as i64,
            r.stderr.truncated,
            json(&r.extra),
            r.stdout.bytes,
            r.stderr.bytes,
            json(r),
            ts(chrono::Utc::now()),
        ])?;
        let extra = |k: &str| r.extra.get(k).and_then(|v| v.as_str());
        tx.prepare_cached(
            "UPDATE results SET regrade_of = ?2, regrade_batch = ?3 WHERE job_id = ?1",
        )?
        .execute(params![r.job_id, extra(REGRADE_OF), extra(REGRADE_BATCH)])?;
        tx.prepare_cached("DELETE FROM tests WHERE job_id = ?1")?
            .execute([&r.job_id])?;
        if let Some(res) = &r.results {
            let mut st = tx.prepare_cached(
                "INSERT INTO tests (job_id, seq, name, number, score, max_score, visibility,
                    status, output) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)",
            )?;
            for (i, t) in res.tests.iter().enumerate() {
                let visibility = serde_json::to_value(t.visibility)?;
                st.execute(params![
                    r.job_id,
                    i as i64,
                    t.name,
                    t.number,
                    t.score,
                    t.max_score,
                    visibility.as_str().unwrap_or("visible"),
                    t.status,
                    t.output,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Whether the results of `assignment` were released for the deadline `due`.
    pub fn released(
        &self,
        assignment: &str,
        due: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, GradebookError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM releases WHERE assignment = ?1 AND due = ?2",
                params![assignment, ts(due)],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Note that the results of `assignment` were released for `due`
    /// (`jobs` of them); releasing again is then skipped.
    pub fn mark_released(
        &self,
        assignment: &str,
        due: chrono::DateTime<chrono::Utc>,
        jobs: usize,
    ) -> Result<(), GradebookError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO releases (assignment, due, released_at, jobs)
             VALUES (?1, ?2, ?3, ?4)",
            params![assignment, ts(due), ts(chrono::Utc::now()), jobs as i64],
        )?;
        Ok(())
    }

    /// The tests of each job of `jobs`, in the jobs' order, each job's in
    /// the order its harness reported them.
    pub fn tests_of(&self, jobs: &[JobResult]) -> Result<Vec<TestRecord>, GradebookError> {
        let mut st = self.conn.prepare(
            "SELECT name, number, score, max_score, visibility, status, output
             FROM tests WHERE job_id = ?1 ORDER BY seq",
        )?;
        let mut out = Vec::new();
        for j in jobs {
            let rows = st.query_map([&j.job_id], |row| {
                Ok(TestRecord {
                    job_id: j.job_id.clone(),
                    student: j
                        .project
                        .rsplit_once('/')
                        .map_or(j.project.as_str(), |(ns, _)| ns)
                        .to_string(),
                    project: j.project.clone(),
                    name: row.get(0)?,
                    number: row.get(1)?,
                    score: row.get(2)?,
                    max_score: row.get(3)?,
                    visibility: row.get(4)?,
                    status: row.get(5)?,
                    output: row.get(6)?,
                })
            })?;
            for r in rows {
                out.push(r?);
            }
        }
        Ok(out)
    }

    /// Write the tests of the selected jobs to `out`, one row per job ×
    /// test (CSV without outputs; JSON with them).
    pub fn export_tests(
        &self,
        select: Select,
        filter: &Filter,
        format: Format,
        out: &mut dyn Write,
    ) -> Result<usize, GradebookError> {
        let rows = self.tests_of(&self.select(select, filter)?)?;
        write_tests(&rows, format, out)?;
        Ok(rows.len())
    }

    /// The result of one job.
    pub fn get(&self, job_id: &str) -> Result<Option<JobResult>, GradebookError> {
        let text: Option<Parts> = self
            .conn
            .query_row(
                "SELECT result, stdout, stderr FROM results WHERE job_id = ?1",
                [job_id],
                row_parts,
            )
            .optional()?;
        text.map(from_parts).transpose()
    }

    /// Every job id recorded (start-up reconciliation with `done/`).
    pub fn job_ids(&self) -> Result<std::collections::HashSet<String>, GradebookError> {
        let mut st = self.conn.prepare("SELECT job_id FROM results")?;
        let ids = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(ids)
    }

    /// Job ids of `project`, oldest first.
    pub fn jobs_of(&self, project: &str) -> Result<Vec<String>, GradebookError> {
        let mut st = self.conn.prepare(
            "SELECT job_id FROM results WHERE project = ?1 ORDER BY received_at, job_id",
        )?;
        let ids = st
            .query_map([project], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(ids)
    }

    /// Rows selected by `select` and `filter`, ordered by project then time.
    pub fn select(
        &self,
        select: Select,
        filter: &Filter,
    ) -> Result<Vec<JobResult>, GradebookError> {
        self.select_rows(select, filter, false)
    }

    /// Like [`Gradebook::select`], with each regraded submission counted
    /// only by its newest grading (a regrade row supersedes the rows it
    /// grades again, unless it ended in `infra_error`).
    pub fn select_current(
        &self,
        select: Select,
        filter: &Filter,
    ) -> Result<Vec<JobResult>, GradebookError> {
        self.select_rows(select, filter, true)
    }

    fn select_rows(
        &self,
        select: Select,
        filter: &Filter,
        current: bool,
    ) -> Result<Vec<JobResult>, GradebookError> {
        let infra = Status::InfraError.as_str();
        // `?3`: drop rows a later regrade of the same submission supersedes.
        let current_of = |a: &str| {
            format!(
                "(?3 = 0 OR NOT EXISTS (SELECT 1 FROM results s
                    WHERE s.regrade_of = coalesce({a}.regrade_of, {a}.job_id)
                    AND s.job_id > {a}.job_id AND s.status != '{infra}'))"
            )
        };
        let base = format!(
            "SELECT result, stdout, stderr, project, job_id, received_at, grade_total, status
                    FROM results
                    WHERE (?1 IS NULL OR project = ?1) AND (?2 IS NULL OR assignment = ?2)
                    AND {}",
            current_of("results")
        );
        let cur_o = current_of("o");
        let sql = match select {
            Select::All => format!("{base} ORDER BY project, received_at, job_id"),
            Select::Latest => format!(
                "SELECT result, stdout, stderr FROM ({base} AND status != '{infra}') AS r
                 WHERE NOT EXISTS (SELECT 1 FROM results o WHERE o.project = r.project
                    AND o.status != '{infra}' AND {cur_o}
                    AND (o.received_at > r.received_at
                         OR (o.received_at = r.received_at AND o.job_id > r.job_id)))
                 ORDER BY project"
            ),
            Select::Best => format!(
                "SELECT result, stdout, stderr FROM ({base} AND status != '{infra}' AND grade_total IS NOT NULL) AS r
                 WHERE NOT EXISTS (SELECT 1 FROM results o WHERE o.project = r.project
                    AND o.status != '{infra}' AND o.grade_total IS NOT NULL AND {cur_o}
                    AND (o.grade_total > r.grade_total
                         OR (o.grade_total = r.grade_total AND o.received_at < r.received_at)
                         OR (o.grade_total = r.grade_total AND o.received_at = r.received_at
                             AND o.job_id < r.job_id)))
                 ORDER BY project"
            ),
        };
        let mut st = self.conn.prepare(&sql)?;
        let rows = st
            .query_map(
                params![filter.project, filter.assignment, current],
                row_parts,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(from_parts).collect()
    }

    /// Write the selected rows to `out` as CSV or JSON.
    pub fn export(
        &self,
        select: Select,
        filter: &Filter,
        format: Format,
        out: &mut dyn Write,
    ) -> Result<usize, GradebookError> {
        let rows = self.select(select, filter)?;
        match format {
            Format::Json => {
                serde_json::to_writer_pretty(&mut *out, &rows)?;
                writeln!(out)?;
            }
            Format::Csv => {
                // The one CSV writer of grade exports (formula defusing,
                // quoting); this export has always ended lines with `\n`.
                write_csv_record(out, CSV_HEADER, "\n")?;
                for r in &rows {
                    write_csv_record(out, csv_fields(r), "\n")?;
                }
            }
        }
        Ok(rows.len())
    }
}

/// Write per-test rows as CSV (without outputs) or JSON (with them).
pub fn write_tests(
    rows: &[TestRecord],
    format: Format,
    out: &mut dyn Write,
) -> Result<(), GradebookError> {
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, rows)?;
            writeln!(out)?;
        }
        Format::Csv => {
            write_csv_record(out, TESTS_CSV_HEADER, "\n")?;
            let num = |v: Option<f64>| v.map(crate::result::format_grade).unwrap_or_default();
            for t in rows {
                write_csv_record(
                    out,
                    [
                        t.job_id.clone(),
                        t.student.clone(),
                        t.project.clone(),
                        t.name.clone(),
                        t.number.clone().unwrap_or_default(),
                        num(t.score),
                        num(t.max_score),
                        t.status.clone().unwrap_or_default(),
                        t.visibility.clone(),
                    ],
                    "\n",
                )?;
            }
        }
    }
    Ok(())
}

type Parts = (String, Vec<u8>, Vec<u8>);

fn row_parts(r: &rusqlite::Row<'_>) -> rusqlite::Result<Parts> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

fn from_parts((json, stdout, stderr): Parts) -> Result<JobResult, GradebookError> {
    let mut r: JobResult = serde_json::from_str(&json)?;
    r.stdout.bytes = stdout;
    r.stderr.bytes = stderr;
    Ok(r)
}

const TESTS_CSV_HEADER: &[&str] = &[
    "job_id",
    "student",
    "project",
    "test",
    "number",
    "score",
    "max_score",
    "status",
    "visibility",
];

const CSV_HEADER: &[&str] = &[
    "job_id",
    "project",
    "assignment",
    "git_ref",
    "student_sha",
    "tests_sha",
    "status",
    "grade_total",
    "reason",
    "received_at",
    "started_at",
    "ended_at",
    "runner",
    "image",
    "summary",
];

fn csv_fields(r: &JobResult) -> Vec<String> {
    vec![
        r.job_id.clone(),
        r.project.clone(),
        r.project.rsplit('/').next().unwrap_or("").to_string(),
        r.git_ref.clone(),
        r.student_sha.clone(),
        r.tests_sha.clone().unwrap_or_default(),
        r.status.as_str().to_string(),
        r.grade_total.map(|g| g.to_string()).unwrap_or_default(),
        r.reason.clone().unwrap_or_default(),
        r.received_at.to_rfc3339(),
        r.started_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
        r.ended_at.to_rfc3339(),
        r.runner.clone(),
        r.image.clone().unwrap_or_default(),
        serde_json::to_string(&r.summary).unwrap_or_default(),
    ]
}

/// Timestamps as fixed-width UTC text, so text order is time order.
fn ts(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

mod erased {
    /// JSON text of anything serializable (object-safe helper).
    pub trait Ser {
        fn to_json(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_json(&self) -> String {
            serde_json::to_string(self).unwrap_or_else(|_| "null".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::Captured;
    use chrono::{TimeZone, Utc};

    fn result(
        job: &str,
        project: &str,
        minute: u32,
        status: Status,
        grade: Option<f64>,
    ) -> JobResult {
        JobResult {
            schema: 1,
            job_id: job.into(),
            project: project.into(),
            git_ref: "refs/heads/main".into(),
            student_sha: "a".repeat(40),
            tests_sha: Some("b".repeat(40)),
            runner: "none".into(),
            image: None,
            image_id: None,
            limits: None,
            received_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, minute, 0).unwrap(),
            started_at: None,
            ended_at: Utc.with_ymd_and_hms(2026, 1, 1, 1, 0, 0).unwrap(),
            status,
            reason: Some("=cmd, \"quoted\"".into()),
            termination: None,
            grade_total: grade,
            summary: Default::default(),
            hidden: Default::default(),
            stdout: Captured::default(),
            stderr: Captured::default(),
            results: None,
            extra: Default::default(),
        }
    }

    fn with_tests(job: &str, minute: u32, scores: &[f64]) -> JobResult {
        use crate::results::{TestResults, TestRow, Visibility};
        let mut r = result(
            job,
            "s/a/lab1",
            minute,
            Status::Graded,
            Some(scores.iter().sum()),
        );
        r.results = Some(TestResults {
            grade_total: scores.iter().sum(),
            score: None,
            output: None,
            stdout_visibility: Visibility::Visible,
            execution_time: None,
            tests: scores
                .iter()
                .enumerate()
                .map(|(i, s)| TestRow {
                    name: format!("t{i}"),
                    number: None,
                    score: Some(*s),
                    max_score: Some(1.0),
                    visibility: if i == 1 {
                        Visibility::Hidden
                    } else {
                        Visibility::Visible
                    },
                    status: None,
                    output: Some(format!("=out{i}")),
                    tags: vec![],
                })
                .collect(),
            source: None,
        });
        r
    }

    #[test]
    fn tests_get_a_row_each_replaced_on_rerecord_and_exported_per_test() {
        let t = tempfile::tempdir().unwrap();
        let gb = Gradebook::open(&t.path().join("g.sqlite")).unwrap();
        gb.record(&with_tests("j1", 1, &[1.0, 0.0, 1.0])).unwrap();
        gb.record(&with_tests("j1", 1, &[1.0, 1.0])).unwrap();
        gb.record(&with_tests("j2", 2, &[0.0])).unwrap();
        let all = gb.select(Select::All, &Filter::default()).unwrap();
        let tests = gb.tests_of(&all).unwrap();
        let names: Vec<_> = tests
            .iter()
            .map(|t| (t.job_id.as_str(), t.name.as_str()))
            .collect();
        assert_eq!(names, [("j1", "t0"), ("j1", "t1"), ("j2", "t0")]);
        assert_eq!(tests[1].visibility, "hidden");
        let mut csv = Vec::new();
        let n = gb
            .export_tests(Select::Latest, &Filter::default(), Format::Csv, &mut csv)
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(
            String::from_utf8(csv).unwrap(),
            "job_id,student,project,test,number,score,max_score,status,visibility\n\
             j2,s/a,s/a/lab1,t0,,0,1,,visible\n"
        );
        let mut json = Vec::new();
        gb.export_tests(Select::All, &Filter::default(), Format::Json, &mut json)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v[0]["output"], "=out0");
    }

    #[test]
    fn migration_fills_the_tests_of_results_recorded_before_it() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("g.sqlite");
        {
            let gb = Gradebook::open(&path).unwrap();
            gb.record(&with_tests("old", 1, &[1.0, 0.0])).unwrap();
            gb.record(&result("plain", "s/b/lab1", 1, Status::Graded, Some(3.0)))
                .unwrap();
            // Back to the schema of version 1, as an older labgrader left it.
            gb.conn
                .execute_batch(
                    "DROP TABLE tests; DROP TABLE releases; DROP INDEX results_regrade_of;
                     DROP INDEX results_assignment; ALTER TABLE results DROP COLUMN regrade_of;
                     ALTER TABLE results DROP COLUMN regrade_batch; PRAGMA user_version = 1;",
                )
                .unwrap();
        }
        let gb = Gradebook::open(&path).unwrap();
        let all = gb.select(Select::All, &Filter::default()).unwrap();
        let tests = gb.tests_of(&all).unwrap();
        assert_eq!(tests.len(), 2);
        assert_eq!(
            (tests[0].score, tests[1].visibility.as_str()),
            (Some(1.0), "hidden")
        );
    }

    #[test]
    fn regrade_rows_are_marked_and_supersede_what_they_regrade_when_asked() {
        let t = tempfile::tempdir().unwrap();
        let gb = Gradebook::open(&t.path().join("g.sqlite")).unwrap();
        gb.record(&result("01A", "s/a/lab1", 1, Status::Graded, Some(9.0)))
            .unwrap();
        gb.record(&result("01B", "s/a/lab1", 2, Status::Graded, Some(8.0)))
            .unwrap();
        // 01A regraded lower (a test fixed), then a regrade that failed.
        let mut rg = result("02A", "s/a/lab1", 1, Status::Graded, Some(4.0));
        rg.extra.insert(REGRADE_OF.into(), "01A".into());
        rg.extra.insert(REGRADE_BATCH.into(), "rg-1".into());
        gb.record(&rg).unwrap();
        let mut bad = result("03A", "s/a/lab1", 1, Status::InfraError, None);
        bad.extra.insert(REGRADE_OF.into(), "01A".into());
        gb.record(&bad).unwrap();
        let marked: (String, String) = gb
            .conn
            .query_row(
                "SELECT regrade_of, regrade_batch FROM results WHERE job_id = '02A'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(marked, ("01A".into(), "rg-1".into()));
        let f = Filter::default();
        let ids = |v: Vec<JobResult>| v.into_iter().map(|r| r.job_id).collect::<Vec<_>>();
        assert_eq!(ids(gb.select(Select::Best, &f).unwrap()), ["01A"]);
        assert_eq!(ids(gb.select_current(Select::Best, &f).unwrap()), ["01B"]);
        assert_eq!(
            ids(gb.select_current(Select::All, &f).unwrap()),
            ["02A", "03A", "01B"]
        );
    }

    #[test]
    fn insert_is_idempotent_and_latest_best_skip_infra_errors() {
        let t = tempfile::tempdir().unwrap();
        let gb = Gradebook::open(&t.path().join("g.sqlite")).unwrap();
        gb.record(&result("j1", "s/a/lab1", 1, Status::Graded, Some(80.0)))
            .unwrap();
        gb.record(&result("j1", "s/a/lab1", 1, Status::Graded, Some(80.0)))
            .unwrap();
        gb.record(&result("j2", "s/a/lab1", 2, Status::Graded, Some(60.0)))
            .unwrap();
        gb.record(&result("j3", "s/a/lab1", 3, Status::InfraError, None))
            .unwrap();
        gb.record(&result("j4", "s/b/lab1", 1, Status::Timeout, Some(10.0)))
            .unwrap();
        let all = gb.select(Select::All, &Filter::default()).unwrap();
        assert_eq!(all.len(), 4);
        let latest = gb.select(Select::Latest, &Filter::default()).unwrap();
        let ids: Vec<_> = latest.iter().map(|r| r.job_id.as_str()).collect();
        assert_eq!(ids, ["j2", "j4"]);
        let best = gb.select(Select::Best, &Filter::default()).unwrap();
        let ids: Vec<_> = best.iter().map(|r| r.job_id.as_str()).collect();
        assert_eq!(ids, ["j1", "j4"]);
        let only_b = Filter {
            project: Some("s/b/lab1".into()),
            assignment: None,
        };
        assert_eq!(gb.select(Select::All, &only_b).unwrap().len(), 1);
        assert_eq!(gb.jobs_of("s/a/lab1").unwrap(), ["j1", "j2", "j3"]);
    }

    #[test]
    fn reopening_keeps_rows_and_refuses_newer_schema() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("g.sqlite");
        Gradebook::open(&p)
            .unwrap()
            .record(&result("j1", "s/a/lab1", 1, Status::Graded, Some(1.0)))
            .unwrap();
        let gb = Gradebook::open(&p).unwrap();
        assert_eq!(gb.get("j1").unwrap().unwrap().grade_total, Some(1.0));
        assert!(gb.get("nope").unwrap().is_none());
        gb.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(gb);
        assert!(matches!(
            Gradebook::open(&p),
            Err(GradebookError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn csv_is_quoted_and_formula_safe() {
        let t = tempfile::tempdir().unwrap();
        let gb = Gradebook::open(&t.path().join("g.sqlite")).unwrap();
        gb.record(&result("j1", "s/a/lab1", 1, Status::Graded, Some(-5.0)))
            .unwrap();
        let mut out = Vec::new();
        gb.export(Select::All, &Filter::default(), Format::Csv, &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("job_id,project,"), "{text}");
        assert!(text.contains(",-5,"), "{text}");
        assert!(text.contains("\"'=cmd, \"\"quoted\"\"\""), "{text}");
    }

    #[test]
    fn cells_starting_with_tab_or_cr_are_defused_in_every_export() {
        let t = tempfile::tempdir().unwrap();
        let gb = Gradebook::open(&t.path().join("g.sqlite")).unwrap();
        let mut r = result("j1", "s/a/lab1", 1, Status::Graded, Some(5.0));
        r.reason = Some("\t=1+1".into());
        r.runner = "\r=2+2".into();
        r.summary.insert("note".into(), "\t=3+3".into());
        r.extra.insert(
            "authors".into(),
            serde_json::json!([{"username": "\r=4+4", "email": "\t=5+5"}]),
        );
        gb.record(&r).unwrap();
        // The gradebook's own export.
        let mut out = Vec::new();
        gb.export(Select::All, &Filter::default(), Format::Csv, &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(",'\t=1+1,"), "{text}");
        assert!(text.contains(",\"'\r=2+2\","), "{text}");
        // The per-student export (`--policy`).
        use crate::policy::export::{ExportPolicy, rows_from_results, select_rows, write_csv};
        let rows = select_rows(
            &rows_from_results(&gb.select(Select::All, &Filter::default()).unwrap()),
            ExportPolicy::Best,
        );
        let mut out = Vec::new();
        write_csv(&mut out, &rows, true).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\r\n\"'\r=4+4\",lab1,'\t=5+5,5,"), "{text}");
        assert!(text.ends_with(",'\t=3+3\r\n"), "{text}");
    }
}
