//! Tree exports without a git process per job: one long-lived `git
//! cat-file --batch` per mirror (a small pool) reads the commit's objects,
//! which are written as a tar stream into [`workspace::extract_tar`]: the
//! same checks and limits as an export through `git archive`, and the same
//! entries (modes 0664/0775 as `git archive`'s default umask gives them,
//! the commit's time as every entry's mtime). Anything else is left to
//! `git archive` (`None`): a submodule, a name
//! that is not a commit or that the mirror lacks, a `.gitattributes`
//! anywhere (`export-ignore`, `export-subst` change what it writes), a
//! mode it would canonicalize, a name the tar writer refuses, a tree
//! larger than [`MEMORY_CAP`] or than the workspace's byte limit. It never
//! fetches and never writes outside `dest`.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::error::MirrorError;
use crate::git;
use crate::workspace::{self, Usage, WorkspaceLimits};

/// Most tar bytes built in memory before the export is left to `git
/// archive` (which streams).
const MEMORY_CAP: u64 = 64 << 20;
/// Most idle `cat-file` processes kept (one per mirror).
const POOL_MAX: usize = 32;
/// Longest header line `cat-file --batch` writes (`<oid> <type> <size>`).
const HEADER_MAX: u64 = 200;

/// Idle `git cat-file --batch` processes, one per mirror directory. A
/// process is taken out while an export uses it and put back only when
/// that export read every byte it asked for.
#[derive(Clone, Default)]
pub(super) struct BatchPool(Arc<Mutex<HashMap<PathBuf, CatFile>>>);

impl BatchPool {
    fn take(&self, dir: &Path) -> Option<CatFile> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(dir)
    }

    fn put(&self, dir: &Path, cat: CatFile) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() < POOL_MAX || g.contains_key(dir) {
            g.insert(dir.to_path_buf(), cat);
        }
    }
}

struct CatFile {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Drop for CatFile {
    fn drop(&mut self) {
        git::kill_group(self.child.id());
        let _ = self.child.wait();
    }
}

/// Why an in-process export did not happen.
enum Stop {
    /// Left to `git archive`; the process is still in step.
    Fallback,
    /// The process is out of step or gone: dropped, then `git archive`.
    Broken,
}

impl From<io::Error> for Stop {
    fn from(_: io::Error) -> Stop {
        Stop::Broken
    }
}

impl CatFile {
    /// The object `oid`: its type and contents, or `None` when missing.
    /// Contents longer than `max` are not read (`Broken`).
    fn get(&mut self, oid: &str, max: u64) -> Result<Option<(String, Vec<u8>)>, Stop> {
        writeln!(self.stdin, "{oid}")?;
        self.stdin.flush()?;
        let mut line = Vec::new();
        (&mut self.stdout)
            .take(HEADER_MAX)
            .read_until(b'\n', &mut line)?;
        let line = String::from_utf8_lossy(&line).trim_end().to_string();
        let mut f = line.split(' ');
        let (Some(_), Some(kind)) = (f.next(), f.next()) else {
            return Err(Stop::Broken);
        };
        if kind == "missing" {
            return Ok(None);
        }
        let size: u64 = f.next().and_then(|s| s.parse().ok()).ok_or(Stop::Broken)?;
        if size > max {
            return Err(Stop::Broken);
        }
        let mut data = vec![0; size as usize + 1];
        self.stdout.read_exact(&mut data)?;
        if data.pop() != Some(b'\n') {
            return Err(Stop::Broken);
        }
        Ok(Some((kind.to_string(), data)))
    }
}

/// The tar stream of commit `sha`'s tree, as `git archive` writes it.
fn build_tar(cat: &mut CatFile, sha: &str, cap: u64) -> Result<Vec<u8>, Stop> {
    let Some((kind, commit)) = cat.get(sha, 1 << 20)? else {
        return Err(Stop::Fallback);
    };
    if kind != "commit" {
        return Err(Stop::Fallback);
    }
    let text = String::from_utf8_lossy(&commit);
    let tree = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("tree "))
        .filter(|t| git::is_full_sha(t))
        .ok_or(Stop::Fallback)?
        .to_string();
    // The committer's time: `<name> <email> <epoch> <tz>`.
    let mtime: u64 = text
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix("committer "))
        .and_then(|l| l.rsplit(' ').nth(1))
        .and_then(|t| t.parse().ok())
        .ok_or(Stop::Fallback)?;
    let mut tar = tar::Builder::new(Vec::new());
    let mut budget = cap;
    walk(cat, &tree, &PathBuf::new(), mtime, &mut tar, &mut budget)?;
    tar.into_inner().map_err(|_| Stop::Fallback)
}

fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn walk(
    cat: &mut CatFile,
    tree: &str,
    dir: &Path,
    mtime: u64,
    tar: &mut tar::Builder<Vec<u8>>,
    budget: &mut u64,
) -> Result<(), Stop> {
    let Some((kind, data)) = cat.get(tree, *budget)? else {
        return Err(Stop::Fallback);
    };
    if kind != "tree" {
        return Err(Stop::Fallback);
    }
    let mut rest = &data[..];
    while !rest.is_empty() {
        let sp = rest.iter().position(|&b| b == b' ').ok_or(Stop::Fallback)?;
        let nul = rest.iter().position(|&b| b == 0).ok_or(Stop::Fallback)?;
        if nul < sp || rest.len() < nul + 21 {
            return Err(Stop::Fallback);
        }
        let mode = std::str::from_utf8(&rest[..sp]).map_err(|_| Stop::Fallback)?;
        let name = &rest[sp + 1..nul];
        let oid: String = rest[nul + 1..nul + 21]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        rest = &rest[nul + 21..];
        // `.gitattributes` may change what `git archive` writes; odd
        // names are left to its checks (and extract_tar's) too.
        if name == b".gitattributes" || matches!(name, b"" | b"." | b"..") || name.contains(&b'/') {
            return Err(Stop::Fallback);
        }
        let path = dir.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name));
        *budget = budget.checked_sub(1024).ok_or(Stop::Fallback)?;
        let add = |tar: &mut tar::Builder<Vec<u8>>, mut h: tar::Header, data: &[u8]| {
            tar.append_data(&mut h, &path, data)
                .map_err(|_| Stop::Fallback)
        };
        match mode {
            "40000" => {
                add(tar, header(tar::EntryType::Directory, 0o775, 0, mtime), &[])?;
                walk(cat, &oid, &path, mtime, tar, budget)?;
            }
            "100644" | "100755" | "120000" => {
                let Some((kind, blob)) = cat.get(&oid, *budget)? else {
                    return Err(Stop::Fallback);
                };
                if kind != "blob" {
                    return Err(Stop::Fallback);
                }
                *budget -= blob.len() as u64;
                if mode == "120000" {
                    let mut h = header(tar::EntryType::Symlink, 0o777, 0, mtime);
                    let target =
                        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&blob);
                    tar.append_link(&mut h, &path, target)
                        .map_err(|_| Stop::Fallback)?;
                } else {
                    let perm = if mode == "100755" { 0o775 } else { 0o664 };
                    let h = header(tar::EntryType::Regular, perm, blob.len() as u64, mtime);
                    add(tar, h, &blob)?;
                }
            }
            _ => return Err(Stop::Fallback),
        }
    }
    Ok(())
}

/// Export commit `sha` of `mirror` into the empty `dest` through the
/// mirror's `cat-file` process from `pool` (started with `cmd`, `git
/// cat-file --batch` in the mirror, when there is none); `None` leaves it
/// to `git archive` (`dest` untouched).
#[allow(clippy::too_many_arguments)]
pub(super) async fn export(
    pool: &BatchPool,
    cmd: impl FnOnce() -> std::process::Command,
    mirror: &Path,
    sha: &str,
    dest: &Path,
    limits: WorkspaceLimits,
    timeout: std::time::Duration,
    cancel: &CancellationToken,
) -> Option<Result<Usage, MirrorError>> {
    let cat = match pool.take(mirror) {
        Some(c) => c,
        None => {
            let mut cmd = cmd();
            cmd.stdin(Stdio::piped()).stderr(Stdio::null());
            let mut child = cmd.spawn().ok()?;
            let stdin = child.stdin.take()?;
            let stdout = BufReader::new(child.stdout.take()?);
            CatFile {
                child,
                stdin,
                stdout,
            }
        }
    };
    let pid = cat.child.id();
    let (pool, dir, sha, dest) = (
        pool.clone(),
        mirror.to_path_buf(),
        sha.to_string(),
        dest.to_path_buf(),
    );
    let cap = MEMORY_CAP.min(limits.bytes);
    let task = tokio::task::spawn_blocking(move || {
        let mut cat = cat;
        let built = build_tar(&mut cat, &sha, cap);
        if !matches!(built, Err(Stop::Broken)) {
            pool.put(&dir, cat);
        }
        let tar = built.ok()?;
        let mut usage = Usage::default();
        let extracted = workspace::extract_tar(&tar[..], &dest, &limits, &mut usage);
        Some(extracted.map(|()| usage).map_err(MirrorError::from))
    });
    let joined = tokio::select! {
        r = tokio::time::timeout(timeout, task) => r,
        _ = cancel.cancelled() => {
            git::kill_group(pid);
            return Some(Err(MirrorError::Cancelled));
        }
    };
    match joined {
        Ok(Ok(v)) => v,
        Ok(Err(_)) => None,
        Err(_) => {
            git::kill_group(pid);
            Some(Err(MirrorError::Timeout {
                op: "cat-file",
                url: mirror.display().to_string(),
                secs: timeout.as_secs(),
            }))
        }
    }
}
