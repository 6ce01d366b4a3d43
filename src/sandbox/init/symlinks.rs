//! (trusted contract) Symlinks in the workspace that lead out of it, removed
//! while no student process runs: before `test_all` starts and after each
//! `run-as-student` call (whose student processes are all dead by then).
//!
//! The attack: the harness reads and writes the workspace with its own
//! rights, which the student lacks. A student symlink `answer.txt ->
//! /harness/tests/expected.txt`, committed or made by the student's code,
//! has a naive harness compare its secret answer with itself, or write its
//! output over its own results. A symlink is kept only when it resolves
//! inside the workspace; the resolution is done here, component by
//! component, and anything through `/proc` counts as outside (what
//! `/proc/self` names depends on who follows it, and `/dev/fd` is one of
//! those). What cannot be told counts as outside too: a link whose
//! resolution meets a component that cannot be looked at (a path past
//! PATH_MAX, which the student's code builds one level at a time and the
//! kernel still follows through a chain of links) is removed, and a
//! directory that cannot be listed is locked (root's, mode 000). It never
//! follows a symlink to read or write through it.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, fchown};
use std::path::{Component, Path, PathBuf};

/// Symlinks followed in one resolution before it counts as outside (the
/// kernel's own limit is 40).
const MAX_HOPS: usize = 40;

/// Steps one sweep may take (a directory entry read, a path component
/// looked at): about a second here. Links made to be slow to judge
/// (40 hops of 800 components each) would otherwise hold the harness,
/// which waits for the sweep, until the job's timeout; past the budget,
/// the links of the directory being listed are removed unjudged and the
/// directories not yet listed are locked.
const BUDGET: usize = 1_000_000;

/// Why [`defuse`] removed a symlink.
#[derive(Debug, PartialEq)]
pub(crate) enum Why {
    /// It leads out of the workspace, or where it leads could not be told.
    Outside,
    /// The sweep's [`BUDGET`] was spent before it was judged.
    Unjudged,
}

/// What [`defuse`] did to one entry of the workspace.
#[derive(Debug)]
pub(crate) enum Defused {
    /// A symlink removed (path, target, why).
    Link(PathBuf, OsString, Why),
    /// A directory that could not be listed (a path past PATH_MAX, built
    /// one level at a time, or the budget spent), made root's and mode
    /// 000: nothing in it was checked, so neither the harness nor the
    /// student may enter it.
    Locked(PathBuf, String),
    /// What it should have done and could not (path, what, the error):
    /// said, never silent. Root's unlink, open and chown on the job's own
    /// tmpfs do not fail for anything the student can do.
    Failed(PathBuf, &'static str, String),
}

/// Remove every symlink under `workspace` that does not resolve inside it,
/// and lock every directory that cannot be listed. Returns what it did,
/// for the job's stderr.
pub(crate) fn defuse(workspace: &Path) -> Vec<Defused> {
    let ws = match fs::canonicalize(workspace) {
        Ok(ws) => ws,
        Err(e) => return vec![Defused::Failed(workspace.into(), "find", e.to_string())],
    };
    let spent = || format!("the sweep's budget of {BUDGET} steps was spent before it was listed");
    // Judged all first, then removed: the verdict on one link never
    // depends on whether another was removed before it.
    let mut budget = BUDGET;
    let mut links = Vec::new();
    let mut unlisted = Vec::new();
    let mut dirs = vec![ws.clone()];
    while let Some(dir) = dirs.pop() {
        if budget == 0 {
            unlisted.push((dir, spent()));
            continue;
        }
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                unlisted.push((dir, format!("it cannot be listed ({e})")));
                continue;
            }
        };
        // Listed to its end even past the budget (each entry then costs
        // an unlink or a lock at most): the workspace itself cannot be
        // locked.
        for entry in rd.flatten() {
            budget = budget.saturating_sub(1);
            let path = entry.path();
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                dirs.push(path);
            } else if ft.is_symlink() {
                let to = (budget > 0).then(|| resolve(&path, &mut budget)).flatten();
                let why = match to {
                    Some(p) if p.starts_with(&ws) => continue,
                    _ if budget == 0 => Why::Unjudged,
                    _ => Why::Outside,
                };
                let target = fs::read_link(&path).unwrap_or_default().into_os_string();
                links.push((path, target, why));
            }
        }
    }
    let mut out = Vec::new();
    for (path, target, why) in links {
        match beside(&path, |name| fs::remove_file(name)) {
            Ok(()) => out.push(Defused::Link(path, target, why)),
            Err(e) => out.push(Defused::Failed(path, "remove the symlink", e.to_string())),
        }
    }
    for (dir, why) in unlisted {
        let done = if dir == ws {
            Err(io::Error::other(why.clone()))
        } else {
            beside(&dir, lock)
        };
        match done {
            Ok(()) => out.push(Defused::Locked(dir, why)),
            Err(e) => out.push(Defused::Failed(dir, "check the directory", e.to_string())),
        }
    }
    out
}

// open(2) flags (lg-init links no libc crate).
#[cfg(target_arch = "aarch64")]
const O_NOFOLLOW: i32 = 0o100_000;
#[cfg(not(target_arch = "aarch64"))]
const O_NOFOLLOW: i32 = 0o400_000;
#[cfg(target_arch = "aarch64")]
const O_DIRECTORY: i32 = 0o40_000;
#[cfg(not(target_arch = "aarch64"))]
const O_DIRECTORY: i32 = 0o200_000;

/// `op` on the last component of `path`, named from its parent directory
/// (`/proc/self/fd/N/NAME`): a whole path past PATH_MAX cannot be named,
/// its parent (listed) can. Refused when the parent opened is not the one
/// listed: a student process still running (a call in progress) could
/// have swapped a directory of the path for a link, to have this root
/// process remove or lock a file of `/harness`.
fn beside(path: &Path, op: impl FnOnce(&Path) -> io::Result<()>) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::ErrorKind::InvalidInput.into());
    };
    let dir = fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_DIRECTORY | O_NOFOLLOW)
        .open(parent)?;
    let at = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    if fs::read_link(&at)? != parent {
        return Err(io::Error::other("a directory of its path was replaced"));
    }
    op(&at.join(name))
}

/// Make directory `p` (not a link) root's with mode 000.
fn lock(p: &Path) -> io::Result<()> {
    let d = fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_DIRECTORY | O_NOFOLLOW)
        .open(p)?;
    fchown(&d, Some(0), Some(0))?;
    d.set_permissions(fs::Permissions::from_mode(0o000))
}

/// Tell the job's stderr (staff's) what was removed or locked.
/// True when the sweep did all its work (nothing [`Defused::Failed`]).
pub(crate) fn report(done: Vec<Defused>) -> bool {
    let complete = !done.iter().any(|d| matches!(d, Defused::Failed(..)));
    for d in done {
        match d {
            Defused::Link(path, target, Why::Outside) => say!(
                "lg-init: removed the symlink {} -> {}: it leads out of the workspace, where the \
                 harness would follow it with rights the student lacks",
                path.display(),
                Path::new(&target).display()
            ),
            Defused::Link(path, target, Why::Unjudged) => say!(
                "lg-init: removed the symlink {} -> {} unjudged: the sweep's budget of {BUDGET} \
                 steps was spent (too many links, or links too long to resolve)",
                path.display(),
                Path::new(&target).display()
            ),
            Defused::Failed(path, what, e) => say!(
                "lg-init: could not {what} {}: {e}; a harness that reads there may follow a \
                 student's symlink",
                path.display()
            ),
            Defused::Locked(path, why) => say!(
                "lg-init: locked the directory {} (now root's, mode 000): {why}, so the symlinks \
                 in it cannot be checked",
                path.display()
            ),
        }
    }
    complete
}

/// Where `path` leads, resolved here one component at a time (missing
/// components taken as written); `None` when it passes through `/proc`,
/// takes more than [`MAX_HOPS`] symlinks, meets a component that cannot be
/// looked at (a path past PATH_MAX) or spends `budget`: what cannot be
/// told is outside.
fn resolve(path: &Path, budget: &mut usize) -> Option<PathBuf> {
    let mut todo: Vec<OsString> = components_of(path);
    todo.reverse();
    let mut at = PathBuf::from("/");
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        *budget = budget.checked_sub(1)?;
        if c == ".." {
            at.pop();
            continue;
        }
        let next = at.join(&c);
        if next.starts_with("/proc") {
            return None;
        }
        match fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_HOPS {
                    return None;
                }
                let target = fs::read_link(&next).ok()?;
                if target.is_absolute() {
                    at = PathBuf::from("/");
                }
                let mut more = components_of(&target);
                more.reverse();
                todo.extend(more);
            }
            Ok(_) => at = next,
            // The kernel stops there too (ENOENT, ENOTDIR).
            Err(e) if missing(&e) => at = next,
            Err(_) => return None,
        }
    }
    Some(at)
}

/// A component that is not there: the kernel's walk ends at it as well.
fn missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// The normal components of `p` (`.` dropped, `..` kept), root excluded.
fn components_of(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A sweep that cannot do its work says so.
    #[test]
    fn a_sweep_that_cannot_look_says_so() {
        let d = defuse(Path::new("/nonexistent/lg-init-workspace"));
        assert!(
            matches!(d.as_slice(), [Defused::Failed(_, "find", _)]),
            "{d:?}"
        );
    }

    /// The parent of a link to remove was swapped for a link (by a student
    /// process of a call still running): nothing is removed through it.
    #[test]
    fn nothing_is_removed_through_a_swapped_directory() {
        let t = std::env::temp_dir().join(format!("lg-init-swapped-{}", std::process::id()));
        let harness = t.join("harness/results");
        fs::create_dir_all(&harness).unwrap();
        fs::create_dir_all(t.join("ws")).unwrap();
        fs::write(harness.join("results.json"), "{}").unwrap();
        let t = fs::canonicalize(&t).unwrap();
        symlink(t.join("harness/results"), t.join("ws/sub")).unwrap();
        symlink(t.join("harness"), t.join("ws/up")).unwrap();
        // The last directory a link, or one above it.
        for swapped in ["ws/sub/results.json", "ws/up/results/results.json"] {
            let e = beside(&t.join(swapped), |p| fs::remove_file(p)).unwrap_err();
            assert!(
                t.join("harness/results/results.json").exists(),
                "{swapped}: {e}"
            );
        }
        // Through its real parent it is removed.
        beside(&t.join("harness/results/results.json"), |p| {
            fs::remove_file(p)
        })
        .unwrap();
        assert!(!t.join("harness/results/results.json").exists());
        fs::remove_dir_all(&t).unwrap();
    }

    /// `..` after a symlink is taken from where the link led, as the
    /// kernel does, never lexically: `c -> sub/out/../../expected` with
    /// `sub/out -> <outside>/x/y` leads to `<outside>/expected`, not to
    /// the workspace's `expected`. Every case agrees with the kernel's own
    /// resolution (`canonicalize`).
    #[test]
    fn dot_dot_after_a_symlink_is_resolved_as_the_kernel_does() {
        let t = std::env::temp_dir().join(format!("lg-init-dotdot-{}", std::process::id()));
        let ws = t.join("ws");
        fs::create_dir_all(ws.join("sub/deeper")).unwrap();
        fs::create_dir_all(t.join("harness/x/y")).unwrap();
        for f in [ws.join("secret"), ws.join("expected"), t.join("secret")] {
            fs::write(f, "x").unwrap();
        }
        fs::write(t.join("harness/expected"), "42").unwrap();
        symlink("sub/deeper", ws.join("a")).unwrap();
        symlink(t.join("harness/x/y"), ws.join("sub/out")).unwrap();
        let cases = [
            ("in1", "a/../../secret", true),
            ("out1", "a/../../../secret", false),
            ("out2", "sub/out/../../expected", false),
            ("in2", "sub/out/../../../ws/expected", true),
        ];
        for (name, target, _) in cases {
            symlink(target, ws.join(name)).unwrap();
        }
        let ws = fs::canonicalize(&ws).unwrap();
        for (name, target, inside) in cases {
            let link = ws.join(name);
            let ours = resolve(&link, &mut BUDGET.clone()).unwrap();
            assert_eq!(ours, fs::canonicalize(&link).unwrap(), "{name} -> {target}");
            assert_eq!(
                ours.starts_with(&ws),
                inside,
                "{name} -> {target}: {ours:?}"
            );
        }
        fs::remove_dir_all(&t).unwrap();
    }

    #[test]
    fn links_out_of_the_workspace_go_links_inside_stay() {
        let t = std::env::temp_dir().join(format!("lg-init-symlinks-{}", std::process::id()));
        let ws = t.join("ws");
        let secret = t.join("harness");
        fs::create_dir_all(ws.join("sub")).unwrap();
        fs::create_dir_all(&secret).unwrap();
        fs::write(secret.join("expected"), "42").unwrap();
        fs::write(ws.join("real"), "x").unwrap();
        // Out: absolute, relative, through another link, through /proc,
        // through /dev/fd, a loop.
        symlink(secret.join("expected"), ws.join("abs")).unwrap();
        symlink("../../harness/expected", ws.join("sub/rel")).unwrap();
        symlink(&secret, ws.join("dir")).unwrap();
        symlink("dir/expected", ws.join("via")).unwrap();
        symlink("/proc/self/cwd/expected", ws.join("proc")).unwrap();
        symlink("/dev/fd/3", ws.join("fd")).unwrap();
        symlink("loop2", ws.join("loop1")).unwrap();
        symlink("loop1", ws.join("loop2")).unwrap();
        // Inside: relative, absolute, dangling but inside.
        symlink("real", ws.join("ok")).unwrap();
        symlink(ws.join("sub"), ws.join("ok_dir")).unwrap();
        symlink("not-yet", ws.join("later")).unwrap();
        let mut gone: Vec<String> = defuse(&ws)
            .into_iter()
            .map(|d| {
                let Defused::Link(p, _, Why::Outside) = d else {
                    panic!("{d:?}")
                };
                p.strip_prefix(fs::canonicalize(&ws).unwrap())
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect();
        gone.sort();
        assert_eq!(
            gone,
            [
                "abs", "dir", "fd", "loop1", "loop2", "proc", "sub/rel", "via"
            ]
        );
        for kept in ["ok", "ok_dir", "later", "real"] {
            assert!(fs::symlink_metadata(ws.join(kept)).is_ok(), "{kept}");
        }
        fs::remove_dir_all(&t).unwrap();
    }
}
