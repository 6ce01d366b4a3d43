//! The free-space reserve of the spool's file system (`[spool] min_free`).
//!
//! Owns one question, asked by the hook before it stores a push and by the
//! grader before it claims a job: is there at least `min_free` bytes free
//! (for unprivileged users: `f_bavail * f_frsize` of `statvfs(2)`) on the
//! file system that holds the spool? Under the mark the hook answers 503
//! and the grader stops claiming, so jobs already accepted keep the room
//! they need to finish, record and deliver (Postfix's `queue_minfree`).
//! It never writes, deletes or moves anything, and one check is a single
//! `statvfs` call (microseconds), cheap enough for every request.

use std::path::{Path, PathBuf};

/// The spool is on a file system with less than `min_free` bytes free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the spool's file system has {free} bytes free, under the reserve of {min_free} bytes \
     ([spool] min_free); free some space (old done/ and failed/ records, mirrors/) or \
     lower min_free"
)]
pub struct LowSpace {
    pub free: u64,
    pub min_free: u64,
}

/// Why free space could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the free space of {path}: {source}")]
pub struct StatError {
    pub path: PathBuf,
    pub source: nix::Error,
}

/// Bytes available to unprivileged users on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Result<u64, StatError> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|source| StatError {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// The reserve of one spool.
#[derive(Debug, Clone)]
pub struct Reserve {
    dir: PathBuf,
    min_free: u64,
}

impl Reserve {
    pub fn new(dir: &Path, min_free: u64) -> Reserve {
        Reserve {
            dir: dir.to_path_buf(),
            min_free,
        }
    }

    pub fn min_free(&self) -> u64 {
        self.min_free
    }

    /// Free bytes now, if they can be read.
    pub fn free(&self) -> Result<u64, StatError> {
        free_bytes(&self.dir)
    }

    /// `Err` when free space is under the mark. A file system whose free
    /// space cannot be read counts as having room: the writes that follow
    /// report their own errors, and a broken `statvfs` must not stop
    /// intake on its own. `min_free = 0` turns the check off.
    pub fn check(&self) -> Result<(), LowSpace> {
        if self.min_free == 0 {
            return Ok(());
        }
        match self.free() {
            Ok(free) if free < self.min_free => Err(LowSpace {
                free,
                min_free: self.min_free,
            }),
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot check the spool's free space; carrying on");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_free_space_and_compares_with_the_mark() {
        let d = tempfile::tempdir().unwrap();
        let free = free_bytes(d.path()).unwrap();
        assert!(free > 0);
        assert_eq!(Reserve::new(d.path(), 0).check(), Ok(()));
        assert_eq!(Reserve::new(d.path(), 1).check(), Ok(()));
        let e = Reserve::new(d.path(), u64::MAX).check().unwrap_err();
        assert_eq!(e.min_free, u64::MAX);
        assert!(e.to_string().contains("[spool] min_free"), "{e}");
    }

    #[test]
    fn a_missing_directory_does_not_stop_intake() {
        let r = Reserve::new(Path::new("/nonexistent/labgrader-spool"), u64::MAX);
        assert!(r.free().is_err());
        assert_eq!(r.check(), Ok(()));
    }
}
