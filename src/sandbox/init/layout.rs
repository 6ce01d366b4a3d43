//! The job's files inside the sandbox: the staged trees copied in (then
//! unmounted), and who owns what with which mode — the student's entries
//! the student's, the tests' entries the harness's and immutable, sticky
//! directories. Walks never follow a symlink. It never starts a process.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::args::{Args, Contract};
use super::fail::{Fail, fail};
use super::sys;

/// Copy `from/workspace` (and, trusted, `from/tests`) in, then unmount the
/// staged trees so nothing of the job can reach them again.
pub(crate) fn copy_in(a: &Args, from: &Path, tests_dir: &Path) -> Result<(), Fail> {
    copy_tree(&from.join("workspace"), &a.workspace)
        .map_err(|e| fail("copy the workspace in", "copy", e))?;
    if a.contract == Contract::Trusted {
        let src = from.join("tests");
        if src.exists() {
            mkdir_p(&a.harness).map_err(|e| fail("copy the tests in", "mkdir", e))?;
            mkdir_p(tests_dir).map_err(|e| fail("copy the tests in", "mkdir", e))?;
            copy_tree(&src, tests_dir).map_err(|e| fail("copy the tests in", "copy", e))?;
        }
    }
    for p in [
        from.join("workspace"),
        from.join("tests"),
        from.join("test-paths"),
    ] {
        unmount_if_mounted(&p).map_err(|e| fail("hide the staged trees", "umount2", e))?;
    }
    Ok(())
}

pub(crate) fn mkdir_p(p: &Path) -> io::Result<()> {
    match fs::create_dir(p) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        r => r,
    }
}

pub(crate) fn unmount_if_mounted(p: &Path) -> io::Result<()> {
    if !p.exists() {
        return Ok(());
    }
    let c = CString::new(p.as_os_str().as_bytes())?;
    match sys::detach(&c) {
        // EINVAL: not a mount point.
        Err(e) if e.raw_os_error() == Some(22) => Ok(()),
        r => r,
    }
}

/// Copy a tree: directories, regular files (mode kept, set-id bits
/// dropped) and symlinks (as links); anything else is skipped. Never
/// follows a symlink of the source.
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let at = |e: io::Error, p: &Path| io::Error::new(e.kind(), format!("{}: {e}", p.display()));
    for entry in fs::read_dir(src).map_err(|e| at(e, src))? {
        let entry = entry.map_err(|e| at(e, src))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let meta = fs::symlink_metadata(&from).map_err(|e| at(e, &from))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(&from).map_err(|e| at(e, &from))?;
            std::os::unix::fs::symlink(&target, &to).map_err(|e| at(e, &to))?;
        } else if ft.is_dir() {
            fs::create_dir(&to).map_err(|e| at(e, &to))?;
            copy_tree(&from, &to)?;
            fs::set_permissions(&to, fs::Permissions::from_mode(meta.mode() & 0o777))
                .map_err(|e| at(e, &to))?;
        } else if ft.is_file() {
            let mut input = fs::OpenOptions::new()
                .read(true)
                .custom_flags(sys::O_NOFOLLOW)
                .open(&from)
                .map_err(|e| at(e, &from))?;
            let mut output = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(meta.mode() & 0o777)
                .open(&to)
                .map_err(|e| at(e, &to))?;
            io::copy(&mut input, &mut output).map_err(|e| at(e, &to))?;
            output
                .set_permissions(fs::Permissions::from_mode(meta.mode() & 0o777))
                .map_err(|e| at(e, &to))?;
        }
    }
    Ok(())
}

/// Read-only for everyone, executable bits kept.
pub(crate) fn readonly_mode(mode: u32) -> u32 {
    if mode & 0o111 != 0 { 0o555 } else { 0o444 }
}

/// One entry's owner and mode. Symlinks are chowned as links, never
/// followed; their mode means nothing.
pub(crate) fn own(
    path: &Path,
    meta: &fs::Metadata,
    ids: (u32, u32),
    mode: Option<u32>,
) -> io::Result<()> {
    let at = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    std::os::unix::fs::lchown(path, Some(ids.0), Some(ids.1)).map_err(at)?;
    if let (Some(m), false) = (mode, meta.file_type().is_symlink()) {
        fs::set_permissions(path, fs::Permissions::from_mode(m)).map_err(at)?;
    }
    Ok(())
}

/// The workspace: the student's entries are the student's; the entries
/// that came from the tests are the harness's, files without write bits,
/// directories sticky 1777 (the student may add files, never replace one
/// of the harness's); the workspace itself is the harness's, 1777.
pub(crate) fn layout_workspace(a: &Args, tests: &BTreeSet<PathBuf>) -> Result<(), Fail> {
    fn walk(
        dir: &Path,
        rel: &Path,
        tests: &BTreeSet<PathBuf>,
        student: (u32, u32),
        harness: (u32, u32),
    ) -> io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let rel = rel.join(entry.file_name());
            let meta = fs::symlink_metadata(&path)?;
            let is_test = tests.contains(&rel);
            let ft = meta.file_type();
            if ft.is_dir() {
                walk(&path, &rel, tests, student, harness)?;
                if is_test {
                    own(&path, &meta, harness, Some(0o1777))?;
                } else {
                    own(&path, &meta, student, Some(meta.mode() & 0o777 | 0o700))?;
                }
            } else if is_test && ft.is_file() {
                own(&path, &meta, harness, Some(readonly_mode(meta.mode())))?;
            } else if is_test {
                own(&path, &meta, harness, None)?;
            } else if ft.is_file() {
                own(&path, &meta, student, Some(meta.mode() & 0o777))?;
            } else {
                own(&path, &meta, student, None)?;
            }
        }
        Ok(())
    }
    walk(&a.workspace, Path::new(""), tests, a.student, a.harness_id)
        .map_err(|e| fail("lay out the workspace", "lchown/chmod", e))?;
    let meta = fs::symlink_metadata(&a.workspace)
        .map_err(|e| fail("lay out the workspace", "lstat", e))?;
    own(&a.workspace, &meta, a.harness_id, Some(0o1777))
        .map_err(|e| fail("lay out the workspace", "lchown/chmod", e))
}

/// The harness's home (0700, the harness's): `tests` owned by the
/// sandbox's root, files without write bits, directories 1777; `results`
/// and `tmp` the harness's, 0700.
pub(crate) fn layout_harness(a: &Args, tests_dir: &Path) -> Result<(), Fail> {
    let step = "lay out the harness";
    mkdir_p(&a.harness).map_err(|e| fail(step, "mkdir", e))?;
    mkdir_p(tests_dir).map_err(|e| fail(step, "mkdir", e))?;
    fn walk(dir: &Path) -> io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let meta = fs::symlink_metadata(&path)?;
            let ft = meta.file_type();
            if ft.is_dir() {
                walk(&path)?;
                own(&path, &meta, (0, 0), Some(0o1777))?;
            } else if ft.is_file() {
                own(&path, &meta, (0, 0), Some(readonly_mode(meta.mode())))?;
            } else {
                own(&path, &meta, (0, 0), None)?;
            }
        }
        Ok(())
    }
    walk(tests_dir).map_err(|e| fail(step, "lchown/chmod", e))?;
    let meta = fs::symlink_metadata(tests_dir).map_err(|e| fail(step, "lstat", e))?;
    own(tests_dir, &meta, (0, 0), Some(0o1777)).map_err(|e| fail(step, "lchown/chmod", e))?;
    for sub in ["results", "tmp"] {
        let p = a.harness.join(sub);
        mkdir_p(&p).map_err(|e| fail(step, "mkdir", e))?;
        let meta = fs::symlink_metadata(&p).map_err(|e| fail(step, "lstat", e))?;
        if !meta.is_dir() {
            return Err(fail(
                step,
                "mkdir",
                format!("{} is not a directory", p.display()),
            ));
        }
        own(&p, &meta, a.harness_id, Some(0o700)).map_err(|e| fail(step, "lchown/chmod", e))?;
    }
    let meta = fs::symlink_metadata(&a.harness).map_err(|e| fail(step, "lstat", e))?;
    own(&a.harness, &meta, a.harness_id, Some(0o700)).map_err(|e| fail(step, "lchown/chmod", e))
}
