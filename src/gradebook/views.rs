//! Read-only views of the gradebook for the web pages: light rows (no
//! stdout, no JSON parse) for lists, histograms, estimates and
//! leaderboards. The full record of one job is still the gradebook's
//! `get`; the read-only connection is its `open_readonly`. Nothing here
//! changes a row.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

use crate::result::Status;

/// Light queries on a gradebook connection ([`super::Gradebook::views`]).
pub struct Views<'a> {
    conn: &'a Connection,
}

/// One job as lists show it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub job_id: String,
    pub project: String,
    pub assignment: String,
    pub status: String,
    pub grade_total: Option<f64>,
    pub received_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// What a leaderboard needs of one graded job.
#[derive(Debug, Clone, PartialEq)]
pub struct BoardRow {
    pub project: String,
    pub received_at: Option<DateTime<Utc>>,
    /// The value of the board's key in this job, when it has one.
    pub value: Option<f64>,
    /// `labgrader.json`'s `leaderboard_name` as written (JSON text), if any.
    pub name: Option<String>,
}

fn time(s: Option<String>) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(&s?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

const ROW_COLUMNS: &str = "job_id, project, assignment, status, grade_total, received_at, ended_at";

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        job_id: r.get(0)?,
        project: r.get(1)?,
        assignment: r.get(2)?,
        status: r.get(3)?,
        grade_total: r.get(4)?,
        received_at: time(r.get(5)?),
        ended_at: time(r.get(6)?),
    })
}

impl<'a> Views<'a> {
    pub(super) fn new(conn: &'a Connection) -> Views<'a> {
        Views { conn }
    }

    /// The jobs of `project`, newest first, at most `limit`.
    pub fn rows_of_project(
        &self,
        project: &str,
        limit: usize,
    ) -> Result<Vec<JobRow>, rusqlite::Error> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {ROW_COLUMNS} FROM results WHERE project = ?1
             ORDER BY received_at DESC, job_id DESC LIMIT ?2"
        ))?;
        let rows = st
            .query_map(params![project, limit as i64], job_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The most recent jobs, newest first, of `assignment` and of projects
    /// whose path contains `student`, when given; at most `limit`.
    pub fn recent(
        &self,
        assignment: Option<&str>,
        student: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JobRow>, rusqlite::Error> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {ROW_COLUMNS} FROM results
             WHERE (?1 IS NULL OR assignment = ?1) AND (?2 IS NULL OR instr(project, ?2) > 0)
             ORDER BY received_at DESC, job_id DESC LIMIT ?3"
        ))?;
        let rows = st
            .query_map(params![assignment, student, limit as i64], job_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Assignments with their number of jobs, by name.
    pub fn assignments(&self) -> Result<Vec<(String, u64)>, rusqlite::Error> {
        let mut st = self.conn.prepare_cached(
            "SELECT assignment, count(*) FROM results GROUP BY assignment ORDER BY assignment",
        )?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Per project of `assignment`, the grade of its latest job that is
    /// not an `infra_error` (`None` when that job has no grade).
    pub fn latest_grades(
        &self,
        assignment: &str,
    ) -> Result<Vec<(String, Option<f64>)>, rusqlite::Error> {
        let infra = Status::InfraError.as_str();
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT r.project, r.grade_total FROM results r
             WHERE r.assignment = ?1 AND r.status != '{infra}'
               AND NOT EXISTS (SELECT 1 FROM results o WHERE o.project = r.project
                  AND o.status != '{infra}'
                  AND (o.received_at > r.received_at
                       OR (o.received_at = r.received_at AND o.job_id > r.job_id)))
             ORDER BY r.project"
        ))?;
        let rows = st
            .query_map([assignment], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Mean seconds from start to end of the last `last` jobs that ran,
    /// for estimates; `None` before any.
    pub fn mean_run_seconds(&self, last: usize) -> Result<Option<f64>, rusqlite::Error> {
        let mut st = self.conn.prepare_cached(
            "SELECT avg((julianday(ended_at) - julianday(started_at)) * 86400.0) FROM
               (SELECT started_at, ended_at FROM results WHERE started_at IS NOT NULL
                ORDER BY ended_at DESC LIMIT ?1)",
        )?;
        st.query_row([last as i64], |r| r.get(0))
    }

    /// The graded jobs of `assignment` with the value of `key` in each:
    /// `grade_total`, `score` or `execution_time` of results.json, else
    /// the visible summary key `key` read as a number.
    pub fn board_rows(
        &self,
        assignment: &str,
        key: &str,
    ) -> Result<Vec<BoardRow>, rusqlite::Error> {
        let graded = Status::Graded.as_str();
        let value = match key {
            "grade_total" => "grade_total".to_string(),
            "score" | "execution_time" => format!("json_extract(result, '$.results.{key}')"),
            // The key is bound, never spliced: it is the course's text.
            _ => "json_extract(summary, '$.' || json_quote(?2))".to_string(),
        };
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT project, received_at, {value},
                    json_extract(extra, '$.manifest.leaderboard_name'),
                    json_type(extra, '$.manifest.leaderboard_name'), ?2
             FROM results WHERE assignment = ?1 AND status = '{graded}'
             ORDER BY project, received_at, job_id"
        ))?;
        let rows = st
            .query_map(params![assignment, key], |r| {
                let value = match r.get_ref(2)? {
                    rusqlite::types::ValueRef::Integer(i) => Some(i as f64),
                    rusqlite::types::ValueRef::Real(f) => Some(f),
                    rusqlite::types::ValueRef::Text(t) => std::str::from_utf8(t)
                        .ok()
                        .and_then(|s| s.trim().parse::<f64>().ok()),
                    _ => None,
                };
                let kind: Option<String> = r.get(4)?;
                let name = match kind.as_deref() {
                    Some("text") => {
                        Some(serde_json::to_string(&r.get::<_, String>(3)?).unwrap_or_default())
                    }
                    Some("false") => Some("false".into()),
                    Some("null") => Some("null".into()),
                    _ => None,
                };
                Ok(BoardRow {
                    project: r.get(0)?,
                    received_at: time(r.get(1)?),
                    value: value.filter(|v| v.is_finite()),
                    name,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}
