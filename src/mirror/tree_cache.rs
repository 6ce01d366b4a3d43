//! The cache of extracted test trees, keyed by commit SHA and shared by
//! every job that grades against that commit; pruned past a size. Trees
//! in it are only ever read by jobs, never changed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::error::MirrorError;
use super::repo::Mirrors;
use crate::git::is_full_sha;
use crate::workspace::{self, WorkspaceLimits};

/// Directory (under the mirrors root) caching extracted test trees by SHA.
const TREE_CACHE: &str = ".trees";
/// Cached trees kept before old ones are pruned.
const TREE_CACHE_KEEP: usize = 64;

impl Mirrors {
    /// The tree of commit `sha` of `mirror`, extracted once into a cache
    /// shared by every job that uses it (test trees: many jobs, one
    /// commit). The returned directory must only be read.
    pub async fn cached_tree(
        &self,
        mirror: &Path,
        sha: &str,
        cancel: &CancellationToken,
    ) -> Result<PathBuf, MirrorError> {
        if !is_full_sha(sha) {
            return Err(MirrorError::BadSha(sha.to_string()));
        }
        let cache = self.root.join(TREE_CACHE);
        let dest = cache.join(sha);
        if dest.is_dir() {
            // Mark it used, so pruning leaves it alone.
            if let Ok(f) = std::fs::File::open(&dest) {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
            return Ok(dest);
        }
        let tmp = cache.join(format!(".tmp-{}", crate::spool::new_job_id()));
        std::fs::create_dir_all(&tmp).map_err(|source| MirrorError::Io {
            path: tmp.clone(),
            source,
        })?;
        let unlimited = WorkspaceLimits {
            bytes: u64::MAX,
            files: u64::MAX,
        };
        if let Err(e) = self.export(mirror, sha, &tmp, unlimited, cancel).await {
            let _ = workspace::remove_tree(&tmp);
            return Err(e);
        }
        if std::fs::rename(&tmp, &dest).is_err() {
            // Another job extracted it first.
            let _ = workspace::remove_tree(&tmp);
        }
        self.prune_tree_cache(&cache);
        Ok(dest)
    }

    /// Keep the tree cache small: past `TREE_CACHE_KEEP` entries, remove
    /// those unused for an hour (no job runs that long).
    fn prune_tree_cache(&self, cache: &Path) {
        let Ok(rd) = std::fs::read_dir(cache) else {
            return;
        };
        let entries: Vec<_> = rd.flatten().collect();
        if entries.len() <= TREE_CACHE_KEEP {
            return;
        }
        let hour = Duration::from_secs(3600);
        for e in entries {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > hour);
            if old {
                let _ = workspace::remove_tree(&e.path());
            }
        }
    }
}
