//! The pilots' work queue on the shared filesystem, beside the job
//! directories under `[slurm] shared_dir` (whose names never start with a
//! dot, so these never collide with one):
//!
//! - `.queue/<job>.job`: a ticket the grader published (atomically) once
//!   the job directory was ready: the Slurm limits of the job's step;
//! - `.pilots/<slurm id>/<job>.job`: the same ticket, claimed by one pilot
//!   by `rename(2)` (so exactly one pilot runs a job);
//! - `<job>/pilot_exit`: written by the pilot when the job's step ended
//!   without an outcome (its raw status), so the grader need not wait for
//!   Slurm to learn it.
//!
//! Both sides use this module; it never runs anything nor calls Slurm.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sandbox::jobdir::{JobDir, write_atomic};

pub const QUEUE_DIR: &str = ".queue";
pub const PILOTS_DIR: &str = ".pilots";
pub const PILOT_EXIT_FILE: &str = "pilot_exit";
const TICKET_EXT: &str = "job";
/// A ticket is a few numbers: anything bigger was not written by a grader.
const MAX_TICKET: u64 = 4096;

/// What a pilot needs to start a job's step: its directory's name and the
/// limits Slurm enforces around the step (the sandbox inside enforces the
/// job's own, from `job.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ticket {
    pub job_id: String,
    pub memory_mib: u64,
    pub cpus: u64,
    pub time_limit_minutes: u64,
}

/// Where a job's ticket is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketPlace {
    /// Waiting for a pilot.
    Queued,
    /// Claimed by the pilot with this Slurm job id.
    Claimed(u64),
    /// Nowhere: never published, or the pilot is done with it.
    Nowhere,
}

/// The queue and the pilots' directories under one shared directory.
#[derive(Debug, Clone)]
pub struct Tickets {
    pub shared: PathBuf,
}

impl Tickets {
    pub fn new(shared: impl Into<PathBuf>) -> Tickets {
        Tickets {
            shared: shared.into(),
        }
    }

    pub fn queue_dir(&self) -> PathBuf {
        self.shared.join(QUEUE_DIR)
    }

    pub fn pilot_dir(&self, pilot: u64) -> PathBuf {
        self.shared.join(PILOTS_DIR).join(pilot.to_string())
    }

    fn name(job_id: &str) -> String {
        format!("{job_id}.{TICKET_EXT}")
    }

    /// Make `.queue/` and `.pilots/` (owned by `chown_to`, the user jobs
    /// run as, who must rename out of the one into the other).
    pub fn ensure_dirs(&self, chown_to: Option<(u32, u32)>) -> io::Result<()> {
        for d in [self.queue_dir(), self.shared.join(PILOTS_DIR)] {
            std::fs::create_dir_all(&d)?;
            if let Some((uid, gid)) = chown_to {
                std::os::unix::fs::chown(&d, Some(uid), Some(gid))?;
            }
        }
        Ok(())
    }

    /// The grader's side: publish `t` (the job directory is complete).
    pub fn publish(&self, t: &Ticket) -> io::Result<()> {
        let bytes = serde_json::to_vec(t).map_err(io::Error::other)?;
        // The temporary name has no `.job`: pilots never take it.
        let tmp = self.queue_dir().join(format!("{}.tmp", t.job_id));
        write_atomic(&tmp, &bytes)?;
        std::fs::rename(&tmp, self.queue_dir().join(Self::name(&t.job_id)))
    }

    /// The grader's side: take a queued ticket back (queue timeout,
    /// shutdown). `false` when a pilot claimed it first.
    pub fn withdraw(&self, job_id: &str) -> io::Result<bool> {
        match std::fs::remove_file(self.queue_dir().join(Self::name(job_id))) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Where `job_id`'s ticket is (one `stat` per pilot directory).
    pub fn place(&self, job_id: &str) -> TicketPlace {
        let name = Self::name(job_id);
        if self.queue_dir().join(&name).exists() {
            return TicketPlace::Queued;
        }
        for pilot in self.pilot_ids() {
            if self.pilot_dir(pilot).join(&name).exists() {
                return TicketPlace::Claimed(pilot);
            }
        }
        // Claimed between the two looks.
        if self.queue_dir().join(&name).exists() {
            return TicketPlace::Queued;
        }
        TicketPlace::Nowhere
    }

    /// Slurm ids of the pilots that have a directory.
    pub fn pilot_ids(&self) -> Vec<u64> {
        let Ok(rd) = std::fs::read_dir(self.shared.join(PILOTS_DIR)) else {
            return Vec::new();
        };
        let mut v: Vec<u64> = rd
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        v.sort_unstable();
        v
    }

    /// Ticket names waiting in the queue, oldest first.
    pub fn queued(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.queue_dir()) else {
            return Vec::new();
        };
        let mut v: Vec<(std::time::SystemTime, String)> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let job = name.strip_suffix(&format!(".{TICKET_EXT}"))?;
                if !crate::spool::is_valid_name(job) {
                    return None;
                }
                let t = e.metadata().ok()?.modified().ok()?;
                Some((t, job.to_string()))
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, j)| j).collect()
    }

    /// The pilot's side: claim `job_id` into pilot `pilot`'s directory and
    /// read it. `Ok(None)` when another pilot was quicker.
    pub fn claim(&self, job_id: &str, pilot: u64) -> io::Result<Option<Ticket>> {
        let to = self.pilot_dir(pilot).join(Self::name(job_id));
        match std::fs::rename(self.queue_dir().join(Self::name(job_id)), &to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
        let t = read_ticket(&to)?;
        if t.job_id != job_id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: names another job", to.display()),
            ));
        }
        Ok(Some(t))
    }

    /// The pilot's side: done with `job_id` (its outcome, or `pilot_exit`,
    /// is written).
    pub fn release(&self, job_id: &str, pilot: u64) -> io::Result<()> {
        match std::fs::remove_file(self.pilot_dir(pilot).join(Self::name(job_id))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The jobs pilot `pilot` has claimed and not released.
    pub fn claimed_by(&self, pilot: u64) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.pilot_dir(pilot)) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                Some(n.strip_suffix(&format!(".{TICKET_EXT}"))?.to_string())
            })
            .collect()
    }
}

fn read_ticket(path: &Path) -> io::Result<Ticket> {
    use std::io::Read;
    let mut b = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_TICKET)
        .read_to_end(&mut b)?;
    let t: Ticket = serde_json::from_slice(&b).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })?;
    if !crate::spool::is_valid_name(&t.job_id) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: bad job id", path.display()),
        ));
    }
    Ok(t)
}

/// The pilot's side: the job's step ended with raw wait status `status`
/// and no outcome.
pub fn write_pilot_exit(jd: &JobDir, pilot: u64, status: i64) -> io::Result<()> {
    write_atomic(
        &jd.file(PILOT_EXIT_FILE),
        format!("pilot {pilot} status {status}\n").as_bytes(),
    )
}

/// The grader's side: what the pilot wrote, if it did.
pub fn read_pilot_exit(jd: &JobDir) -> Option<String> {
    let s = std::fs::read_to_string(jd.file(PILOT_EXIT_FILE)).ok()?;
    Some(crate::text::one_line(s.trim(), 200))
}

/// Where a job stands in Slurm, read from the shared directory alone (for
/// `labgrader queue`, which runs apart from the grader): `None` when it
/// has no job directory there.
pub fn describe(shared: &Path, job_id: &str) -> Option<String> {
    if !crate::spool::is_valid_name(job_id) {
        return None;
    }
    let jd = JobDir::new(shared.join(job_id));
    if !jd.root.is_dir() {
        return None;
    }
    let age = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| m.modified().ok()?.elapsed().ok())
            .map_or(String::new(), |d| format!(" for {}s", d.as_secs()))
    };
    if jd.file(crate::sandbox::jobdir::OUTCOME_FILE).exists() {
        return Some("slurm: outcome written, being collected".into());
    }
    if let Some(e) = read_pilot_exit(&jd) {
        return Some(format!("slurm: ended without an outcome ({})", e.trim()));
    }
    let q = Tickets::new(shared);
    let name = Tickets::name(job_id);
    Some(match q.place(job_id) {
        TicketPlace::Queued => format!(
            "slurm: waiting for a pilot{}",
            age(&q.queue_dir().join(&name))
        ),
        TicketPlace::Claimed(p) => format!(
            "slurm: running in pilot {p}{}",
            age(&q.pilot_dir(p).join(&name))
        ),
        TicketPlace::Nowhere => {
            let id_file = jd.file(super::jobfiles::SLURM_ID_FILE);
            match std::fs::read_to_string(&id_file) {
                Ok(id) => format!("slurm: job {} submitted{}", id.trim(), age(&id_file)),
                Err(_) => "slurm: job directory being prepared".into(),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(job: &str) -> Ticket {
        Ticket {
            job_id: job.into(),
            memory_mib: 192,
            cpus: 1,
            time_limit_minutes: 1,
        }
    }

    #[test]
    fn a_ticket_is_claimed_by_exactly_one_pilot() {
        let t = tempfile::tempdir().unwrap();
        let q = Tickets::new(t.path());
        q.ensure_dirs(None).unwrap();
        for p in [7, 8] {
            std::fs::create_dir_all(q.pilot_dir(p)).unwrap();
        }
        assert_eq!(q.place("j1"), TicketPlace::Nowhere);
        q.publish(&ticket("j1")).unwrap();
        assert_eq!(q.queued(), ["j1"]);
        assert_eq!(q.place("j1"), TicketPlace::Queued);
        assert_eq!(q.claim("j1", 7).unwrap(), Some(ticket("j1")));
        assert_eq!(q.claim("j1", 8).unwrap(), None);
        assert_eq!(q.place("j1"), TicketPlace::Claimed(7));
        assert_eq!(q.claimed_by(7), ["j1"]);
        assert!(!q.withdraw("j1").unwrap());
        q.release("j1", 7).unwrap();
        assert_eq!(q.place("j1"), TicketPlace::Nowhere);
    }

    #[test]
    fn describe_says_where_a_job_stands() {
        let t = tempfile::tempdir().unwrap();
        let q = Tickets::new(t.path());
        q.ensure_dirs(None).unwrap();
        std::fs::create_dir_all(q.pilot_dir(9)).unwrap();
        assert_eq!(describe(t.path(), "j2"), None);
        assert_eq!(describe(t.path(), "../x"), None);
        std::fs::create_dir_all(t.path().join("j2")).unwrap();
        q.publish(&ticket("j2")).unwrap();
        assert!(
            describe(t.path(), "j2")
                .unwrap()
                .starts_with("slurm: waiting for a pilot")
        );
        q.claim("j2", 9).unwrap();
        assert!(
            describe(t.path(), "j2")
                .unwrap()
                .starts_with("slurm: running in pilot 9")
        );
        write_pilot_exit(&JobDir::new(t.path().join("j2")), 9, 9).unwrap();
        let d = describe(t.path(), "j2").unwrap();
        assert_eq!(d, "slurm: ended without an outcome (pilot 9 status 9)");
    }

    #[test]
    fn a_forged_ticket_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let q = Tickets::new(t.path());
        q.ensure_dirs(None).unwrap();
        std::fs::create_dir_all(q.pilot_dir(1)).unwrap();
        std::fs::write(
            q.queue_dir().join("a.job"),
            br#"{"job_id": "../etc", "memory_mib": 1, "cpus": 1, "time_limit_minutes": 1}"#,
        )
        .unwrap();
        assert!(q.claim("a", 1).is_err());
        std::fs::write(q.queue_dir().join("b.job"), vec![b' '; 10_000]).unwrap();
        assert!(q.claim("b", 1).is_err());
        // Not a ticket name: never listed.
        std::fs::write(q.queue_dir().join("c.tmp"), b"{}").unwrap();
        assert!(q.queued().is_empty() || !q.queued().contains(&"c".to_string()));
    }
}
