//! The job directory: how a prepared job travels to `labgrader sandbox`
//! (on this host or on a Slurm compute node through a shared filesystem)
//! and how its outcome comes back.
//!
//! ```text
//! DIR/job.json       JobFile, written by the grader before submission
//!                    (limits, environment, contract, test paths)
//! DIR/workspace/     the prepared workspace (test_all at its top)
//! DIR/tests/         the harness's tests (trusted contract)
//! DIR/results/       the harness's results files, written by the node
//! DIR/stdout         captured stdout (at most limits.output bytes)
//! DIR/stderr         captured stderr (at most limits.output bytes)
//! DIR/stdout.tail    the end of a stdout that overflowed (at most 64 KiB)
//! DIR/stderr.tail    the same for stderr
//! DIR/outcome.json   OutcomeFile, written last (its presence = finished)
//! ```
//!
//! Files are written by write-to-temp + rename, so a reader never sees a
//! half-written `outcome.json`. This module is the grader's side: it writes
//! `job.json` and reads the outcome back. The node side, which reads
//! `job.json` strictly and runs the native sandbox, is
//! [`crate::sandbox::native::job`]; both use its [`JobFile`] and the
//! outcome fields of its `OutcomeFile`. It never submits, polls or cleans
//! up (the Slurm runner does).

use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::native::job::{JobFile, VERSION};
use super::{RESULTS_BYTES, RESULTS_FILES, RunSpec};
use crate::result::captured::TAIL_KEEP;
use crate::result::{Captured, Termination};

pub const JOB_FILE: &str = "job.json";
pub const OUTCOME_FILE: &str = "outcome.json";
pub const WORKSPACE_DIR: &str = "workspace";
pub const TESTS_DIR: &str = "tests";
pub const RESULTS_DIR: &str = "results";
pub const STDOUT_FILE: &str = "stdout";
pub const STDERR_FILE: &str = "stderr";
pub const STDOUT_TAIL_FILE: &str = "stdout.tail";
pub const STDERR_TAIL_FILE: &str = "stderr.tail";

/// How it ended, with stream sizes (the bytes are in `stdout`/`stderr`).
/// Reads the node's `outcome.json`; fields it does not write are `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeFile {
    pub termination: Termination,
    pub stdout: Captured,
    pub stderr: Captured,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub runner: String,
    /// Host the sandbox ran on (a compute node's name under Slurm).
    pub host: Option<String>,
    /// A setup failure of the sandbox itself (a grader fault), if any.
    pub setup_error: Option<String>,
    /// A writable place of the job was full (`limits.disk`) at its end.
    #[serde(default)]
    pub disk_full: bool,
}

/// Paths of one job directory.
#[derive(Debug, Clone)]
pub struct JobDir {
    pub root: PathBuf,
}

impl JobDir {
    pub fn new(root: impl Into<PathBuf>) -> JobDir {
        JobDir { root: root.into() }
    }

    pub fn workspace(&self) -> PathBuf {
        self.root.join(WORKSPACE_DIR)
    }

    pub fn tests(&self) -> PathBuf {
        self.root.join(TESTS_DIR)
    }

    pub fn results(&self) -> PathBuf {
        self.root.join(RESULTS_DIR)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Write `job.json` for `spec` (whose workspace must be `self.workspace()`).
    pub fn write_job(&self, spec: &RunSpec) -> io::Result<()> {
        let job = JobFile {
            version: VERSION,
            job_id: spec.job_id.clone(),
            env: spec.env.iter().cloned().collect(),
            limits: spec.limits.clone(),
            contract: spec.contract,
            test_paths: spec.test_paths.to_vec(),
        };
        write_atomic(&self.file(JOB_FILE), &serde_json::to_vec_pretty(&job)?)
    }

    /// `Ok(None)` while the job has not finished. The captured bytes are
    /// read back into `stdout.bytes` / `stderr.bytes`.
    pub fn read_outcome(&self) -> io::Result<Option<OutcomeFile>> {
        let p = self.file(OUTCOME_FILE);
        let b = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut f: OutcomeFile = serde_json::from_slice(&b)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        f.stdout.bytes = std::fs::read(self.file(STDOUT_FILE)).unwrap_or_default();
        f.stderr.bytes = std::fs::read(self.file(STDERR_FILE)).unwrap_or_default();
        // Without its tail a stream that overflowed has no trustworthy
        // summary (the grader then gives none), never the head's.
        f.stdout.tail = read_tail(&self.file(STDOUT_TAIL_FILE));
        f.stderr.tail = read_tail(&self.file(STDERR_TAIL_FILE));
        Ok(Some(f))
    }
}

/// Move the node's results files (`DIR/results/`) into `into`, as the
/// sandbox's results stream would: regular files only, never through a
/// symlink, at most [`RESULTS_FILES`] files and [`RESULTS_BYTES`] bytes,
/// created `O_EXCL`. The job directory is on a shared filesystem the node
/// wrote: its contents are checked like any sandbox output.
pub fn take_results(from: &Path, into: &Path) -> io::Result<()> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut names: Vec<String> = match std::fs::read_dir(from) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    names.sort();
    let mut files = Vec::new();
    let mut total = 0u64;
    for name in names {
        if !super::results_stream::valid_name(&name) {
            continue;
        }
        let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(from.join(&name))
        else {
            continue;
        };
        let meta = f.metadata()?;
        if !meta.is_file() || files.len() >= RESULTS_FILES || total + meta.len() > RESULTS_BYTES {
            continue;
        }
        let mut data = Vec::new();
        f.take(meta.len()).read_to_end(&mut data)?;
        total += data.len() as u64;
        files.push((name, data));
    }
    std::fs::create_dir_all(into)?;
    let results = super::results_stream::Results { files, flags: 0 };
    super::results_stream::write_into(into, &results)
}

/// The last [`TAIL_KEEP`] bytes of `path` (empty when it is missing).
fn read_tail(path: &Path) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let keep = len.min(TAIL_KEEP as u64);
    let mut out = Vec::with_capacity(keep as usize);
    if f.seek(SeekFrom::Start(len - keep)).is_err() || f.take(keep).read_to_end(&mut out).is_err() {
        return Vec::new();
    }
    out
}

/// Write `bytes` to `path` through a temporary file, fsync, rename: a
/// reader (the grader, over a shared filesystem) never sees half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::Limits;
    use std::time::Duration;

    #[test]
    fn job_written_here_is_read_by_the_node_and_its_outcome_read_back() {
        let t = tempfile::tempdir().unwrap();
        let d = JobDir::new(t.path());
        let spec = RunSpec::new(
            "j1",
            d.workspace(),
            vec![("A".into(), "b".into())],
            Limits {
                timeout: Duration::from_secs(3),
                memory: 1 << 26,
                pids: 10,
                output: 1024,
                cpus: 1.0,
                file_size: 1 << 20,
                open_files: 64,
                disk: 1 << 30,
            },
        );
        d.write_job(&spec).unwrap();
        let back = crate::sandbox::native::job::read_job_file(t.path()).unwrap();
        assert_eq!(back.limits, spec.limits);
        assert_eq!(back.env.get("A").map(String::as_str), Some("b"));
        assert!(d.read_outcome().unwrap().is_none());

        let now = Utc::now();
        let node = crate::sandbox::native::job::OutcomeFile {
            version: VERSION,
            job_id: "j1".into(),
            runner: "native".into(),
            termination: Termination::Timeout,
            stdout: Captured::from_bytes(b"hello".to_vec(), 1024),
            stderr: Captured::default(),
            started_at: now,
            ended_at: now,
            disk_full: true,
        };
        std::fs::write(d.file(STDOUT_FILE), b"hello").unwrap();
        std::fs::write(d.file(STDOUT_TAIL_FILE), b"the end").unwrap();
        write_atomic(&d.file(OUTCOME_FILE), &serde_json::to_vec(&node).unwrap()).unwrap();
        let f = d.read_outcome().unwrap().unwrap();
        assert_eq!(f.termination, Termination::Timeout);
        assert_eq!(f.stdout.bytes, b"hello");
        assert_eq!(f.stdout.tail, b"the end");
        assert!(f.stderr.tail.is_empty());
        assert_eq!(f.host, None);
        assert!(f.disk_full);
    }

    #[test]
    fn results_the_node_left_are_taken_as_plain_files_only() {
        let t = tempfile::tempdir().unwrap();
        let (from, into) = (t.path().join("results"), t.path().join("into"));
        std::fs::create_dir(&from).unwrap();
        std::fs::write(from.join("results.json"), b"{}").unwrap();
        std::fs::write(t.path().join("secret"), b"host").unwrap();
        std::os::unix::fs::symlink(t.path().join("secret"), from.join("link")).unwrap();
        std::fs::create_dir(from.join("dir")).unwrap();
        take_results(&from, &into).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(&into)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["results.json"]);
        // Nothing there (a stdout run, a node that wrote none): nothing taken.
        take_results(&t.path().join("none"), &into).unwrap();
    }
}
