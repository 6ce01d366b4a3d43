//! Pins: graded commits stay reachable in the mirrors.
//!
//! Owns the refs that keep what was graded: `refs/labgrader/jobs/<job>` in
//! a student mirror names the commit job `<job>` graded, and
//! `refs/labgrader/tests/<sha>` in a test mirror the tests commit laid
//! over it (one per commit: every job of a batch shares it). A student's
//! force-push then a `git gc --prune=now` (in GitLab or in the mirror)
//! cannot take them away, so `replay` and `regrade` still find them. A pin
//! is a loose ref written by rename, with no git process (a job's dispatch
//! latency counts milliseconds); it is best effort: a job is never failed
//! for a pin it could not write.

use std::path::Path;

use super::error::MirrorError;
use super::repo::Mirrors;
use crate::git::is_full_sha;

impl Mirrors {
    /// Pin `sha` in the mirror of `path` as `refs/labgrader/<kind>/<name>`
    /// (`kind`: `jobs` or `tests`). `name` is a checked job id or SHA.
    pub fn pin(&self, path: &str, kind: &str, name: &str, sha: &str) -> Result<(), MirrorError> {
        if !is_full_sha(sha) || !crate::spool::is_valid_name(name) || name.contains('.') {
            return Err(MirrorError::BadSha(format!("{kind}/{name} -> {sha}")));
        }
        let dir = self.dir_for(path)?;
        write_ref(&dir, &format!("refs/labgrader/{kind}/{name}"), sha)
    }
}

/// Write a loose ref `name` = `sha` in the bare repository `dir` (by
/// rename: a reader sees the old ref or the new one).
fn write_ref(dir: &Path, name: &str, sha: &str) -> Result<(), MirrorError> {
    let path = dir.join(name);
    let io = |source| MirrorError::Io {
        path: path.clone(),
        source,
    };
    if std::fs::read(&path).is_ok_and(|b| b.trim_ascii() == sha.as_bytes()) {
        return Ok(());
    }
    let parent = path.parent().expect("a ref has a parent");
    std::fs::create_dir_all(parent).map_err(io)?;
    let tmp = parent.join(format!(".{}.lock", crate::spool::new_job_id()));
    std::fs::write(&tmp, format!("{}\n", sha.to_ascii_lowercase())).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}
