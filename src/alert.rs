//! Staff alerts waiting to be sent: `spool/alerts/`.
//!
//! Owns what one alert says ([`Alert`]: an `infra_error`, a delivery given
//! up on, the spool under `[spool] min_free`), writing it durably the
//! moment it happens ([`raise`]: a file per alert, written and fsynced
//! under a hidden name, then renamed, the directory fsynced), and cutting
//! what waits into batches ([`next_batch`], [`close_batch`]) that the
//! delivery worker turns into one message each (`deliver::alerts`). A
//! batch's member list is written before anything is sent, so a restart
//! in the middle finishes that same batch (its outbox records are
//! idempotent) instead of sending it again or dropping it; the time of
//! the last batch is on disk too, so the rate limit survives restarts.
//! It writes nothing when `[alerts]` is off, never sends anything and
//! never touches a job's files.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::AlertsConfig;
use crate::spool::{fsync_dir, new_job_id};

/// Directory (under the spool root) of waiting alerts.
pub const ALERTS_DIR: &str = "alerts";
/// The batch being sent: its id and members (absent between batches).
const BATCH_FILE: &str = "batch.json";
/// When the last batch was closed, and whether the spool was low on space.
const STATE_FILE: &str = "state.json";
/// Alerts listed one by one in a message; the rest are only counted.
pub const LISTED: usize = 50;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A job ended `infra_error` (the grader's retries were spent).
    InfraError,
    /// A delivery was given up on (`dead/`).
    DeliveryDead,
    /// The spool's free space went under `[spool] min_free`.
    LowSpace,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::InfraError => "infra_error",
            AlertKind::DeliveryDead => "delivery_dead",
            AlertKind::LowSpace => "low_space",
        }
    }

    /// How a count of these reads in a subject line.
    pub fn counted(self, n: usize) -> String {
        let s = if n == 1 { "" } else { "s" };
        match self {
            AlertKind::InfraError => format!("{n} job{s} ended infra_error"),
            AlertKind::DeliveryDead => {
                format!("{n} deliver{} given up", if n == 1 { "y" } else { "ies" })
            }
            AlertKind::LowSpace => format!("{n} low-space warning{s}"),
        }
    }
}

/// One alert, as written in `spool/alerts/<id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub kind: AlertKind,
    pub at: DateTime<Utc>,
    #[serde(default)]
    pub job_id: Option<String>,
    #[serde(default)]
    pub project: Option<String>,
    /// What staff need to know (the grader's error, the delivery's reason).
    pub detail: String,
}

impl Alert {
    pub fn new(
        kind: AlertKind,
        job_id: Option<&str>,
        project: Option<&str>,
        detail: impl Into<String>,
    ) -> Alert {
        Alert {
            kind,
            at: Utc::now(),
            job_id: job_id.map(str::to_string),
            project: project.map(str::to_string),
            detail: detail.into(),
        }
    }
}

/// A batch: the alerts one message reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// `alerts-<first member's id>`: the outbox records' job id.
    pub id: String,
    /// Member file names, oldest first.
    pub names: Vec<String>,
    /// The members read (a member that vanished or did not parse is left out).
    #[serde(skip)]
    pub alerts: Vec<Alert>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AlertState {
    last_batch_at: Option<DateTime<Utc>>,
    #[serde(default)]
    low_space: bool,
}

pub fn dir(spool_root: &Path) -> PathBuf {
    spool_root.join(ALERTS_DIR)
}

/// Write `alert` durably under `spool_root` when `[alerts]` is on; a
/// failure is logged (an alert must never stop a job's own work).
pub fn raise(cfg: &AlertsConfig, spool_root: &Path, alert: Alert) {
    if !cfg.enabled() {
        return;
    }
    let name = format!("{}.json", new_job_id());
    let bytes = serde_json::to_vec_pretty(&alert).expect("alert serializes");
    match write_durably(&dir(spool_root), &name, &bytes) {
        Ok(()) => tracing::info!(
            kind = alert.kind.as_str(),
            job_id = alert.job_id.as_deref().unwrap_or(""),
            "staff alert queued"
        ),
        Err(e) => {
            tracing::error!(kind = alert.kind.as_str(), error = %e, detail = %alert.detail, "cannot write a staff alert")
        }
    }
}

/// Write `name` in `dir` as the spool does: a hidden file written and
/// fsynced, renamed, the directory fsynced.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(name))?;
        fsync_dir(dir)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn read_state(dir: &Path) -> AlertState {
    fs::read(dir.join(STATE_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn write_state(dir: &Path, s: &AlertState) -> io::Result<()> {
    write_durably(
        dir,
        STATE_FILE,
        &serde_json::to_vec_pretty(s).expect("state serializes"),
    )
}

/// Waiting alert files, oldest first.
fn pending(dir: &Path) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| {
                !n.starts_with('.') && n.ends_with(".json") && n != BATCH_FILE && n != STATE_FILE
            })
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    names.sort();
    Ok(names)
}

/// How many alerts wait to be sent (for `labgrader queue`).
pub fn waiting(spool_root: &Path) -> usize {
    pending(&dir(spool_root)).map_or(0, |n| n.len())
}

fn read_alert(dir: &Path, name: &str) -> Option<Alert> {
    let bytes = fs::read(dir.join(name)).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::warn!(name, error = %e, "unreadable staff alert; left out of the batch");
            None
        }
    }
}

/// The batch to send now, if one is due: the batch left open by a
/// previous process (always due: it was decided already), else every
/// waiting alert once the oldest has waited `gather` and the last batch
/// is at least `window` old. The batch's members are written down before
/// this returns.
pub fn next_batch(
    cfg: &AlertsConfig,
    spool_root: &Path,
    now: DateTime<Utc>,
) -> io::Result<Option<Batch>> {
    let dir = dir(spool_root);
    if let Ok(bytes) = fs::read(dir.join(BATCH_FILE))
        && let Ok(mut b) = serde_json::from_slice::<Batch>(&bytes)
    {
        b.alerts = b.names.iter().filter_map(|n| read_alert(&dir, n)).collect();
        return Ok(Some(b));
    }
    let names = pending(&dir)?;
    let Some(first) = names.first() else {
        return Ok(None);
    };
    let Some(oldest) = read_alert(&dir, first) else {
        // Unreadable: out of the way, kept for staff.
        let _ = fs::rename(dir.join(first), dir.join(format!(".corrupt-{first}")));
        return Ok(None);
    };
    let gathered =
        now - oldest.at >= chrono::Duration::from_std(cfg.gather.get()).unwrap_or_default();
    let window = chrono::Duration::from_std(cfg.window.get()).unwrap_or_default();
    let rested = read_state(&dir)
        .last_batch_at
        .is_none_or(|t| now - t >= window);
    if !gathered || !rested {
        return Ok(None);
    }
    let alerts: Vec<Alert> = names.iter().filter_map(|n| read_alert(&dir, n)).collect();
    let batch = Batch {
        id: format!("alerts-{}", first.trim_end_matches(".json")),
        names,
        alerts,
    };
    write_durably(
        &dir,
        BATCH_FILE,
        &serde_json::to_vec_pretty(&batch).expect("batch serializes"),
    )?;
    Ok(Some(batch))
}

/// After the batch's messages are queued: note the time (the rate
/// limit), remove its members, then the batch itself.
pub fn close_batch(spool_root: &Path, batch: &Batch, now: DateTime<Utc>) -> io::Result<()> {
    let dir = dir(spool_root);
    let mut state = read_state(&dir);
    state.last_batch_at = Some(now);
    write_state(&dir, &state)?;
    for n in &batch.names {
        match fs::remove_file(dir.join(n)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    match fs::remove_file(dir.join(BATCH_FILE)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fsync_dir(&dir)
}

/// Record whether the spool is under `min_free` now; true when it just
/// went under (then a [`AlertKind::LowSpace`] alert is due). Remembered on
/// disk, so a restart while still low does not alert again.
pub fn low_space_crossed(spool_root: &Path, low_now: bool) -> bool {
    let dir = dir(spool_root);
    let mut state = read_state(&dir);
    if state.low_space == low_now {
        return false;
    }
    state.low_space = low_now;
    if let Err(e) = write_state(&dir, &state) {
        tracing::warn!(error = %e, "cannot note the spool's free-space state for alerts");
    }
    low_now
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(gather: u64, window: u64) -> AlertsConfig {
        AlertsConfig {
            email: vec!["staff@uni.example".into()],
            gather: crate::config::Seconds(Duration::from_secs(gather)),
            window: crate::config::Seconds(Duration::from_secs(window)),
            ..AlertsConfig::default()
        }
    }

    #[test]
    fn off_writes_nothing() {
        let t = tempfile::tempdir().unwrap();
        raise(
            &AlertsConfig::default(),
            t.path(),
            Alert::new(AlertKind::InfraError, Some("J"), None, "x"),
        );
        assert!(!dir(t.path()).exists());
    }

    #[test]
    fn a_burst_is_one_batch_then_the_window_holds_the_next() {
        let t = tempfile::tempdir().unwrap();
        let c = cfg(0, 3600);
        for j in ["A", "B", "C"] {
            raise(
                &c,
                t.path(),
                Alert::new(AlertKind::InfraError, Some(j), Some("ns/lab"), "git down"),
            );
        }
        assert_eq!(waiting(t.path()), 3);
        let now = Utc::now() + chrono::Duration::seconds(1);
        let b = next_batch(&c, t.path(), now).unwrap().unwrap();
        assert_eq!(b.alerts.len(), 3);
        // A crash before close: the same batch comes back, nothing new in it.
        raise(
            &c,
            t.path(),
            Alert::new(AlertKind::DeliveryDead, Some("D"), None, "smtp"),
        );
        let again = next_batch(&c, t.path(), now).unwrap().unwrap();
        assert_eq!(again.id, b.id);
        assert_eq!(again.names, b.names);
        close_batch(t.path(), &b, now).unwrap();
        assert_eq!(waiting(t.path()), 1);
        // The fourth waits for the window.
        assert!(next_batch(&c, t.path(), now).unwrap().is_none());
        let later = now + chrono::Duration::seconds(3600);
        let next = next_batch(&c, t.path(), later).unwrap().unwrap();
        assert_eq!(next.alerts.len(), 1);
        assert_ne!(next.id, b.id);
    }

    #[test]
    fn gather_waits_for_the_rest_of_a_burst() {
        let t = tempfile::tempdir().unwrap();
        let c = cfg(30, 3600);
        raise(
            &c,
            t.path(),
            Alert::new(AlertKind::InfraError, Some("A"), None, "x"),
        );
        assert!(next_batch(&c, t.path(), Utc::now()).unwrap().is_none());
        let b = next_batch(&c, t.path(), Utc::now() + chrono::Duration::seconds(31)).unwrap();
        assert_eq!(b.unwrap().alerts.len(), 1);
    }

    #[test]
    fn low_space_alerts_once_per_crossing() {
        let t = tempfile::tempdir().unwrap();
        assert!(!low_space_crossed(t.path(), false));
        assert!(low_space_crossed(t.path(), true));
        assert!(!low_space_crossed(t.path(), true));
        assert!(!low_space_crossed(t.path(), false));
        assert!(low_space_crossed(t.path(), true));
    }
}
