//! How a run was bounded ([`Limits`]) and how it ended ([`Termination`]):
//! vocabulary shared by the runners, the verdict, the result record and
//! its deliveries, so none of those needs the sandbox to name them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Resource limits of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    #[serde(with = "duration_secs")]
    pub timeout: Duration,
    /// Bytes of memory (and memory+swap: no swap).
    pub memory: u64,
    pub pids: u64,
    /// Bytes kept of each of stdout and stderr.
    pub output: u64,
    pub cpus: f64,
    /// Largest file the student may write (RLIMIT_FSIZE).
    pub file_size: u64,
    /// Open files (RLIMIT_NOFILE).
    pub open_files: u64,
    /// Bytes the job may write (workspace, `/tmp`, results) on sandboxed
    /// runners; never charged to the spool's filesystem.
    #[serde(default = "default_disk")]
    pub disk: u64,
}

fn default_disk() -> u64 {
    1 << 30
}

/// How the run ended. Limits are named so the result can say which one
/// stopped the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Termination {
    Exited { code: i32 },
    Signaled { signal: i32 },
    Timeout,
    MemoryLimit,
}

mod duration_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}
