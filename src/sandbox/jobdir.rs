//! The job directory: the one home of the protocol by which a prepared
//! job travels to `labgrader sandbox` (on this host or on a Slurm compute
//! node through a shared filesystem) and its outcome comes back. Both
//! sides use it: the grader writes `job.json` and reads the outcome; the
//! node ([`crate::sandbox::native::job`]) reads `job.json` strictly and
//! writes the outcome. It never runs, submits, polls or cleans up a job.
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
//! `job.json`: `{"version": 1, "job_id": "…", "env": {"LABGRADER_JOB_ID":
//! "…", …}, "limits": {"timeout": 60.0, "memory": 536870912, "pids": 256,
//! "output": 1048576, "cpus": 1.0, "file_size": 67108864, "open_files":
//! 256}}` (timeout in seconds, sizes in bytes; unknown keys are refused),
//! plus, optional, `"contract": "stdout"|"trusted"` and `"test_paths":
//! ["test_all", "data", …]` (the workspace entries that came from the
//! tests, relative). On the node it is untrusted input: size-capped,
//! parsed strictly, its values checked as a daemon run's are.
//!
//! Files are written by write-to-temp + rename ([`write_atomic`]), so a
//! reader never sees a half-written `outcome.json`.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::results_stream;
use super::spec::{RESULTS_BYTES, RESULTS_FILES, RunSpec, SandboxError};
use crate::config::Contract;
use crate::result::captured::TAIL_KEEP;
use crate::result::{Captured, Limits, Termination};

pub const JOB_FILE: &str = "job.json";
pub const OUTCOME_FILE: &str = "outcome.json";
pub const WORKSPACE_DIR: &str = "workspace";
pub const TESTS_DIR: &str = "tests";
pub const RESULTS_DIR: &str = "results";
pub const STDOUT_FILE: &str = "stdout";
pub const STDERR_FILE: &str = "stderr";
pub const STDOUT_TAIL_FILE: &str = "stdout.tail";
pub const STDERR_TAIL_FILE: &str = "stderr.tail";

/// Version of both files.
pub const VERSION: u32 = 1;
/// Largest `job.json` accepted.
const MAX_JOB_FILE: u64 = 1 << 20;

/// `DIR/job.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    pub version: u32,
    pub job_id: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub limits: Limits,
    #[serde(default)]
    pub contract: Contract,
    /// Relative paths of the workspace entries that came from the tests.
    #[serde(default)]
    pub test_paths: Vec<PathBuf>,
}

/// `DIR/outcome.json`: how the run ended, with stream sizes (the bytes
/// are in `stdout`/`stderr`, read back into `stdout.bytes`/`stderr.bytes`).
/// The node writes every field but `host` and `setup_error`, which are
/// left out while `None`; a reader takes a file without them (or without
/// `version`, `job_id`, `disk_full`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeFile {
    #[serde(default = "current_version")]
    pub version: u32,
    #[serde(default)]
    pub job_id: String,
    pub runner: String,
    pub termination: Termination,
    /// `total` bytes produced and whether some were dropped.
    pub stdout: Captured,
    pub stderr: Captured,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    /// Host the sandbox ran on (a compute node's name under Slurm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A setup failure of the sandbox itself (a grader fault), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_error: Option<String>,
    /// A writable place of the job was full (`limits.disk`) at its end.
    #[serde(default)]
    pub disk_full: bool,
}

fn current_version() -> u32 {
    VERSION
}

/// Why the node could not read `job.json` or write the outcome (a grader
/// fault: the node then writes nothing and exits non-zero).
#[derive(Debug, thiserror::Error)]
pub enum JobDirError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_JOB_FILE} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path} is not a valid job file: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: version {found} is not supported (expected {VERSION})")]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: job_id must be 1-200 characters of [A-Za-z0-9._-] not starting with a dot")]
    JobId { path: PathBuf },
    #[error("{path}: {message}")]
    Limits { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
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

    /// The grader's side: write `job.json` for `spec` (whose workspace
    /// must be `self.workspace()`).
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

    /// The node's side: read and check `job.json`.
    pub fn read_job(&self) -> Result<JobFile, JobDirError> {
        let path = self.file(JOB_FILE);
        let read = |source| JobDirError::Read {
            path: path.clone(),
            source,
        };
        let meta = std::fs::metadata(&path).map_err(read)?;
        if meta.len() > MAX_JOB_FILE {
            return Err(JobDirError::TooLarge { path });
        }
        let text = std::fs::read(&path).map_err(read)?;
        let job: JobFile = serde_json::from_slice(&text).map_err(|source| JobDirError::Parse {
            path: path.clone(),
            source,
        })?;
        if job.version != VERSION {
            return Err(JobDirError::Version {
                path,
                found: job.version,
            });
        }
        if !crate::spool::is_valid_name(&job.job_id) {
            return Err(JobDirError::JobId { path });
        }
        let l = &job.limits;
        let bad = |message: &str| JobDirError::Limits {
            path: path.clone(),
            message: message.into(),
        };
        if l.timeout.is_zero() {
            return Err(bad("limits.timeout must be positive"));
        }
        if l.memory < (4 << 20) {
            return Err(bad("limits.memory must be at least 4 MiB"));
        }
        if l.pids < 2 || l.open_files < 8 {
            return Err(bad(
                "limits.pids must be at least 2 and limits.open_files at least 8",
            ));
        }
        if !l.cpus.is_finite() || l.cpus < 0.0 {
            return Err(bad("limits.cpus must be a non-negative number"));
        }
        if job.test_paths.iter().any(|p| {
            p.components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        }) {
            return Err(bad("test_paths must be plain relative paths"));
        }
        Ok(job)
    }

    /// The node's side, once the run itself worked: the kept bytes of
    /// each stream (without a truncation mark), the end of a stream that
    /// overflowed (the grader reads the summary from it, as on every
    /// other runner), and, last, `outcome.json`.
    pub fn write_outcome(&self, outcome: &OutcomeFile) -> Result<(), JobDirError> {
        let write = |name: &str, bytes: &[u8]| {
            let path = self.file(name);
            write_atomic(&path, bytes).map_err(|source| JobDirError::Write { path, source })
        };
        write(STDOUT_FILE, &outcome.stdout.bytes)?;
        write(STDERR_FILE, &outcome.stderr.bytes)?;
        write(STDOUT_TAIL_FILE, &outcome.stdout.tail)?;
        write(STDERR_TAIL_FILE, &outcome.stderr.tail)?;
        let json = serde_json::to_vec_pretty(outcome).expect("outcome serializes");
        write(OUTCOME_FILE, &json)
    }

    /// The grader's side: `Ok(None)` while the job has not finished. The
    /// captured bytes are read back into `stdout.bytes` / `stderr.bytes`.
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
        if !results_stream::valid_name(&name) {
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
    let results = results_stream::Results { files, flags: 0 };
    results_stream::write_into(into, &results)
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
        let back = d.read_job().unwrap();
        assert_eq!(back.limits, spec.limits);
        assert_eq!(back.env.get("A").map(String::as_str), Some("b"));
        assert!(d.read_outcome().unwrap().is_none());

        let now = Utc::now();
        let mut stdout = Captured::from_bytes(b"hello".to_vec(), 1024);
        stdout.tail = b"the end".to_vec();
        let node = OutcomeFile {
            version: VERSION,
            job_id: "j1".into(),
            runner: "native".into(),
            termination: Termination::Timeout,
            stdout,
            stderr: Captured::default(),
            started_at: now,
            ended_at: now,
            host: None,
            setup_error: None,
            disk_full: true,
        };
        d.write_outcome(&node).unwrap();
        let written = std::fs::read_to_string(d.file(OUTCOME_FILE)).unwrap();
        assert!(!written.contains("host") && !written.contains("setup_error"));
        let f = d.read_outcome().unwrap().unwrap();
        assert_eq!(f.termination, Termination::Timeout);
        assert_eq!(f.stdout.bytes, b"hello");
        assert_eq!(f.stdout.tail, b"the end");
        assert!(f.stderr.tail.is_empty());
        assert_eq!(f.host, None);
        assert!(f.disk_full);
    }

    #[test]
    fn an_outcome_without_the_nodes_own_fields_is_read() {
        // The fields a reader of an older node (or a hand-made file) sees.
        let t = tempfile::tempdir().unwrap();
        let d = JobDir::new(t.path());
        let json = r#"{"termination": {"kind": "timeout"}, "stdout": {"total": 0,
            "truncated": false}, "stderr": {"total": 0, "truncated": false},
            "started_at": "2026-01-01T00:00:00Z", "ended_at": "2026-01-01T00:00:01Z",
            "runner": "native", "host": "n1", "setup_error": null}"#;
        std::fs::write(d.file(OUTCOME_FILE), json).unwrap();
        let f = d.read_outcome().unwrap().unwrap();
        assert_eq!((f.version, f.job_id.as_str()), (VERSION, ""));
        assert_eq!(f.host.as_deref(), Some("n1"));
        assert!(!f.disk_full);
    }

    fn dir_with(json: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(JOB_FILE), json).unwrap();
        d
    }

    const LIMITS: &str = r#"{"timeout": 5, "memory": 67108864, "pids": 32, "output": 1024,
        "cpus": 1.0, "file_size": 1048576, "open_files": 64}"#;

    #[test]
    fn job_file_parses() {
        let d = dir_with(&format!(
            r#"{{"version": 1, "job_id": "01J-abc", "env": {{"A": "b"}}, "limits": {LIMITS}}}"#
        ));
        let j = JobDir::new(d.path()).read_job().unwrap();
        assert_eq!(j.job_id, "01J-abc");
        assert_eq!(j.limits.pids, 32);
    }

    #[test]
    fn job_file_rejects_unknown_keys_versions_and_ids() {
        for (json, want) in [
            (
                format!(r#"{{"version": 1, "job_id": "a", "limits": {LIMITS}, "x": 1}}"#),
                "not a valid job file",
            ),
            (
                format!(r#"{{"version": 2, "job_id": "a", "limits": {LIMITS}}}"#),
                "version 2",
            ),
            (
                format!(r#"{{"version": 1, "job_id": "../x", "limits": {LIMITS}}}"#),
                "job_id",
            ),
            ("{".to_string(), "not a valid job file"),
        ] {
            let d = dir_with(&json);
            let e = JobDir::new(d.path()).read_job().unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn job_file_rejects_zero_timeout() {
        let limits = LIMITS.replace("\"timeout\": 5", "\"timeout\": 0");
        let d = dir_with(&format!(
            r#"{{"version": 1, "job_id": "a", "limits": {limits}}}"#
        ));
        let e = JobDir::new(d.path()).read_job().unwrap_err().to_string();
        assert!(e.contains("timeout"), "{e}");
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
