//! The Slurm runner's side of the job directory under `[slurm]
//! shared_dir` (a filesystem mounted at the same path on every node):
//! the fresh copy of the workspace and tests with `job.json`
//! ([`crate::sandbox::jobdir`] owns the files' shapes), the recorded Slurm
//! job id, Slurm's own logs, the outcome the node wrote and the results
//! it left. It never talks to slurmrestd and never judges an outcome.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::rest::SlurmError;
use crate::config::Contract;
use crate::sandbox::jobdir::{JobDir, OutcomeFile, take_results, write_atomic};
use crate::sandbox::spec::{RunSpec, SandboxError};

/// File in the job directory holding the Slurm job id (written atomically
/// right after submission).
pub const SLURM_ID_FILE: &str = "slurm_job_id";
/// Slurm's own stdout/stderr of the batch script (the sandbox's logs).
pub const SLURM_OUT_FILE: &str = "slurm.out";
pub const SLURM_ERR_FILE: &str = "slurm.err";

/// Copy the workspace (and, trusted, the tests) into a fresh job
/// directory and write `job.json`; hand the tree to `chown_to`, if any.
pub(super) async fn prepare(
    jd: &JobDir,
    spec: &RunSpec,
    chown_to: Option<(u32, u32)>,
) -> Result<(), SlurmError> {
    let jd = jd.clone();
    let src = spec.workspace.clone();
    let tests = match spec.contract {
        Contract::Trusted => spec.tests.clone(),
        Contract::Stdout => None,
    };
    let mut spec = spec.clone();
    tokio::task::spawn_blocking(move || {
        let root = jd.root.clone();
        let r = (|| -> io::Result<()> {
            if root.exists() {
                std::fs::remove_dir_all(&root)?;
            }
            std::fs::create_dir_all(&root)?;
            copy_tree(&src, &jd.workspace())?;
            spec.workspace = jd.workspace();
            if let Some(t) = &tests {
                copy_tree(t, &jd.tests())?;
                spec.tests = Some(jd.tests());
            }
            jd.write_job(&spec)?;
            if let Some((uid, gid)) = chown_to {
                chown_tree(&root, uid, gid)?;
            }
            Ok(())
        })();
        r.map_err(|source| SlurmError::Prepare { path: root, source })
    })
    .await
    .map_err(|e| SlurmError::Prepare {
        path: PathBuf::new(),
        source: io::Error::other(e.to_string()),
    })?
}

/// Record the Slurm job id in the directory (a grader that crashes from
/// here on finds the job through it).
pub(super) fn record_slurm_id(jd: &JobDir, id: u64) -> Result<(), SlurmError> {
    write_atomic(&jd.file(SLURM_ID_FILE), format!("{id}\n").as_bytes()).map_err(|source| {
        SlurmError::Prepare {
            path: jd.root.clone(),
            source,
        }
    })
}

/// The Slurm job id recorded in the directory, if any.
pub(super) fn recorded_slurm_id(jd: &JobDir) -> Option<u64> {
    std::fs::read_to_string(jd.file(SLURM_ID_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
}

/// (trusted) The harness's results files the node left in the job
/// directory, into `spec.results`.
pub(super) async fn collect_results(jd: &JobDir, spec: &RunSpec) -> Result<(), SandboxError> {
    let (from, into) = (jd.results(), spec.results.clone());
    tokio::task::spawn_blocking(move || take_results(&from, &into))
        .await
        .map_err(|e| SandboxError::Io(io::Error::other(e.to_string())))?
        .map_err(|e| SandboxError::Setup {
            step: "collect the results",
            message: format!("{}: {e}", jd.results().display()),
        })
}

/// The node writes `outcome.json` just before the job ends; on a shared
/// filesystem it may show up here a moment later.
pub(super) async fn read_outcome_patiently(jd: &JobDir) -> Option<OutcomeFile> {
    for _ in 0..20 {
        if let Ok(Some(o)) = jd.read_outcome() {
            return Some(o);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The last lines of a Slurm log file, for error messages.
pub(super) fn tail_of(path: &Path) -> String {
    let Ok(b) = std::fs::read(path) else {
        return String::new();
    };
    let s = String::from_utf8_lossy(&b);
    let t = s.trim();
    if t.is_empty() {
        return String::new();
    }
    let start = t.len().saturating_sub(500);
    let start = (start..t.len())
        .find(|i| t.is_char_boundary(*i))
        .unwrap_or(t.len());
    format!("; {}: {}", path.display(), &t[start..])
}

/// Copy a workspace without following symlinks (a planted link stays a
/// link; its target is never read). Modes are kept; sockets, fifos and
/// devices are skipped.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in walkdir::WalkDir::new(src).follow_links(false) {
        let entry = entry.map_err(io::Error::other)?;
        let rel = entry.path().strip_prefix(src).map_err(io::Error::other)?;
        let to = dst.join(rel);
        let ft = entry.file_type();
        if ft.is_dir() {
            std::fs::create_dir_all(&to)?;
            let mode = entry
                .metadata()
                .map_err(io::Error::other)?
                .permissions()
                .mode();
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode | 0o700))?;
        } else if ft.is_file() {
            std::fs::copy(entry.path(), &to)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &to)?;
        }
    }
    Ok(())
}

fn chown_tree(root: &Path, uid: u32, gid: u32) -> io::Result<()> {
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry = entry.map_err(io::Error::other)?;
        std::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_tree_keeps_symlinks_as_links() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("d/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", src.join("evil")).unwrap();
        let dst = t.path().join("dst");
        copy_tree(&src, &dst).unwrap();
        assert_eq!(std::fs::read(dst.join("d/f")).unwrap(), b"x");
        let meta = std::fs::symlink_metadata(dst.join("evil")).unwrap();
        assert!(meta.file_type().is_symlink());
        assert_eq!(
            std::fs::read_link(dst.join("evil")).unwrap(),
            Path::new("/etc/shadow")
        );
    }
}
