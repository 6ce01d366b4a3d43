//! The workspace: one fresh directory per job where `test_all` runs.
//!
//! Owns laying trees into it: the student tree first (extracted from a
//! `git archive` stream, or copied from a local directory), then the test
//! tree copied over it. Rules, all enforced here: test files win; modes
//! (executable bits) are kept; dotfiles are included; a symlink is never
//! followed — a student symlink (or file) standing where a test directory
//! or file goes is removed and replaced by the real thing; nothing is ever
//! written outside the workspace; the total size and file count are
//! limited (`workspace_limit`, `workspace_files`) and the error names the
//! limit. The student tree is untrusted input: its archive stream is
//! checked entry by entry *before* anything is written. This module never
//! runs the student's code and never talks to git.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The file every test repository must provide, executable, at its top.
pub const TEST_ALL: &str = "test_all";
/// Longest path (bytes) a student tree may hold, relative to its top:
/// well inside `PATH_MAX` (4096) wherever the workspace is mounted.
pub const MAX_PATH: usize = 2048;
/// Longest file or directory name (Linux's `NAME_MAX`).
pub const MAX_NAME: usize = 255;

/// Size limits of one workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkspaceLimits {
    /// Total bytes of regular files (and symlink targets).
    pub bytes: u64,
    /// Entries of any kind (files, directories, symlinks).
    pub files: u64,
}

/// Bytes and entries counted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub files: u64,
}

impl Usage {
    fn add(&mut self, bytes: u64, limits: Option<&WorkspaceLimits>) -> Result<(), WorkspaceError> {
        self.bytes = self.bytes.saturating_add(bytes);
        self.files += 1;
        match limits {
            Some(l) => l.check(self),
            None => Ok(()),
        }
    }
}

impl WorkspaceLimits {
    pub fn check(&self, u: &Usage) -> Result<(), WorkspaceError> {
        if u.bytes > self.bytes {
            return Err(WorkspaceError::SizeLimit { limit: self.bytes });
        }
        if u.files > self.files {
            return Err(WorkspaceError::FileLimit { limit: self.files });
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error(
        "the workspace is larger than workspace_limit ({limit} bytes); remove large files from the repository"
    )]
    SizeLimit { limit: u64 },
    #[error(
        "the workspace has more than workspace_files ({limit}) files; remove files from the repository"
    )]
    FileLimit { limit: u64 },
    #[error(
        "no executable test_all at the top of the test repository; staff must add one (chmod +x)"
    )]
    NoTestAll,
    #[error("refusing archive entry {path:?}: {reason}")]
    BadEntry { path: String, reason: String },
    /// The student tree's archive cannot be read (as git produced it).
    #[error("the repository's files cannot be extracted: {reason}")]
    Unreadable { reason: String },
    #[error("cannot read the tree to copy at {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write the workspace at {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> WorkspaceError + '_ {
    move |source| WorkspaceError::Write {
        path: path.to_path_buf(),
        source,
    }
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> WorkspaceError + '_ {
    move |source| WorkspaceError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// A path from the student's tree as shown in a message: at most 80
/// characters, then `…`.
fn shown_path(path: &Path) -> String {
    let s = path.to_string_lossy();
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s.into_owned()
    }
}

/// An I/O error's text without a path (for messages to the student).
fn bare_io(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_lowercase(),
        None => e.to_string(),
    }
}

/// The OS error number of `e` or of an error it wraps (the tar crate wraps
/// the file system's errors in its own, with the path in the text).
fn os_error(e: &io::Error) -> Option<i32> {
    if let Some(code) = e.raw_os_error() {
        return Some(code);
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|r| r as _);
    while let Some(s) = source {
        if let Some(code) = s
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(code);
        }
        source = s.source();
    }
    None
}

/// Refuse a path the file system could not hold (or that would only fit
/// because the workspace happens to sit high in the tree): longer than
/// [`MAX_PATH`] in all, or with a name over [`MAX_NAME`]. The student's
/// doing, said in the student's terms; no host path in it.
fn check_path_length(path: &Path) -> Result<(), WorkspaceError> {
    use std::os::unix::ffi::OsStrExt;
    let len = path.as_os_str().as_bytes().len();
    if len > MAX_PATH {
        return Err(WorkspaceError::BadEntry {
            path: shown_path(path),
            reason: format!(
                "the path is {len} bytes long; paths in the repository may be at most {MAX_PATH} \
                 bytes: use fewer or shorter directory names"
            ),
        });
    }
    if let Some(c) = path
        .components()
        .find(|c| c.as_os_str().as_bytes().len() > MAX_NAME)
    {
        return Err(WorkspaceError::BadEntry {
            path: shown_path(path),
            reason: format!(
                "a name in it is {} bytes long; names may be at most {MAX_NAME} bytes",
                c.as_os_str().as_bytes().len()
            ),
        });
    }
    Ok(())
}

/// Extract a tar stream (from `git archive`) into the empty directory
/// `dest`, checking each entry against `limits` before writing it. Only
/// regular files, directories and symlinks are taken; anything else (pax
/// headers aside) is refused. Symlinks are created as symlinks, never
/// followed: an entry whose path goes through one is refused. A path too
/// long for the file system, or a stream that is not a readable archive,
/// is the tree's fault (the grader's blame gives it `error`), and
/// the message never names the host's paths.
pub fn extract_tar<R: Read>(
    reader: R,
    dest: &Path,
    limits: &WorkspaceLimits,
    usage: &mut Usage,
) -> Result<(), WorkspaceError> {
    use tar::EntryType;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(false);
    let unreadable = |e: io::Error| WorkspaceError::Unreadable {
        reason: bare_io(&e),
    };
    let entries = archive.entries().map_err(unreadable)?;
    for entry in entries {
        let mut entry = entry.map_err(unreadable)?;
        let kind = entry.header().entry_type();
        let path = entry.path().map_err(unreadable)?.into_owned();
        let shown = shown_path(&path);
        match kind {
            EntryType::XGlobalHeader | EntryType::XHeader => continue,
            EntryType::Regular | EntryType::Continuous => usage.add(entry.size(), Some(limits))?,
            EntryType::Directory => usage.add(0, Some(limits))?,
            EntryType::Symlink => {
                let target_len = entry.link_name_bytes().map(|b| b.len() as u64).unwrap_or(0);
                usage.add(target_len, Some(limits))?
            }
            other => {
                return Err(WorkspaceError::BadEntry {
                    path: shown,
                    reason: format!("unsupported entry type {other:?}"),
                });
            }
        }
        if path.is_absolute()
            || path
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(WorkspaceError::BadEntry {
                path: shown,
                reason: "path leaves the workspace".into(),
            });
        }
        // Refuse to write through a symlink planted by an earlier entry.
        if let Some(parent) = path.parent() {
            let mut p = dest.to_path_buf();
            for c in parent.components() {
                p.push(c);
                if let Ok(m) = fs::symlink_metadata(&p)
                    && !m.is_dir()
                {
                    return Err(WorkspaceError::BadEntry {
                        path: shown,
                        reason: "a parent directory is a symlink or file".into(),
                    });
                }
            }
        }
        check_path_length(&path)?;
        let unpacked = match entry.unpack_in(dest) {
            Ok(u) => u,
            // Whatever the checks above let through, a name the file
            // system refuses is still the tree's doing.
            Err(e)
                if matches!(
                    os_error(&e),
                    Some(libc::ENAMETOOLONG | libc::ELOOP | libc::EMLINK)
                ) =>
            {
                let code = os_error(&e).expect("matched");
                return Err(WorkspaceError::BadEntry {
                    path: shown,
                    reason: format!(
                        "the file system refuses it: {}",
                        nix::errno::Errno::from_raw(code).desc().to_lowercase()
                    ),
                });
            }
            Err(e) => return Err(write_err(dest)(e)),
        };
        if !unpacked {
            return Err(WorkspaceError::BadEntry {
                path: shown,
                reason: "path leaves the workspace".into(),
            });
        }
    }
    Ok(())
}

/// Copy the tree at `src` over `dest` (which exists): entries of `src`
/// win. Never follows a symlink on either side: a symlink in `src` is
/// copied as a symlink; anything in `dest` standing where `src` has a
/// directory or file (a symlink, a file, a directory of the wrong kind) is
/// removed first. A top-level `.git` in `src` is skipped. With `limits`, the bytes and entries copied are counted
/// into `usage` and checked as the copy goes.
pub fn overlay(
    src: &Path,
    dest: &Path,
    limits: Option<&WorkspaceLimits>,
    usage: &mut Usage,
) -> Result<(), WorkspaceError> {
    overlay_listing(src, dest, limits, usage, None)
}

/// [`overlay`], also pushing onto `laid` the relative path of every entry
/// it laid (a directory before its contents).
fn overlay_listing(
    src: &Path,
    dest: &Path,
    limits: Option<&WorkspaceLimits>,
    usage: &mut Usage,
    mut laid: Option<&mut Vec<PathBuf>>,
) -> Result<(), WorkspaceError> {
    let walk = walkdir::WalkDir::new(src)
        .follow_links(false)
        .min_depth(1)
        .into_iter()
        // A local checkout's `.git` is not part of the tree (git archive has none).
        .filter_entry(|e| !(e.depth() == 1 && e.file_name() == ".git"));
    for entry in walk {
        let entry = entry.map_err(|e| WorkspaceError::Read {
            path: e.path().unwrap_or(src).to_path_buf(),
            source: e
                .into_io_error()
                .unwrap_or_else(|| io::Error::other("walk error")),
        })?;
        let rel = entry
            .path()
            .strip_prefix(src)
            .expect("walkdir yields paths under its root");
        let target = dest.join(rel);
        let ft = entry.file_type();
        if let Some(l) = laid.as_deref_mut() {
            l.push(rel.to_path_buf());
        }
        let meta = entry.metadata().map_err(|e| WorkspaceError::Read {
            path: entry.path().to_path_buf(),
            source: e
                .into_io_error()
                .unwrap_or_else(|| io::Error::other("metadata")),
        })?;
        let existing = fs::symlink_metadata(&target).ok();
        if ft.is_dir() {
            match existing {
                Some(m) if m.is_dir() => {}
                Some(_) => {
                    fs::remove_file(&target).map_err(write_err(&target))?;
                    fs::create_dir(&target).map_err(write_err(&target))?;
                }
                None => fs::create_dir(&target).map_err(write_err(&target))?,
            }
            let mode = (meta.permissions().mode() & 0o777) | 0o700;
            fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                .map_err(write_err(&target))?;
            usage.add(0, limits)?;
            continue;
        }
        match existing {
            Some(m) if m.is_dir() => remove_tree(&target).map_err(write_err(&target))?,
            Some(_) => fs::remove_file(&target).map_err(write_err(&target))?,
            None => {}
        }
        if ft.is_symlink() {
            let link = fs::read_link(entry.path()).map_err(read_err(entry.path()))?;
            usage.add(link.as_os_str().len() as u64, limits)?;
            std::os::unix::fs::symlink(&link, &target).map_err(write_err(&target))?;
        } else if ft.is_file() {
            usage.add(meta.len(), limits)?;
            copy_file(entry.path(), &target, meta.permissions().mode() & 0o777)?;
        }
        // Sockets, fifos and devices are not copied.
    }
    Ok(())
}

/// Create `to` (which must not exist; never through a symlink) with the
/// contents of `from` and `mode`.
fn copy_file(from: &Path, to: &Path, mode: u32) -> Result<(), WorkspaceError> {
    let mut src = File::open(from).map_err(read_err(from))?;
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(to)
        .map_err(write_err(to))?;
    io::copy(&mut src, &mut dst).map_err(write_err(to))?;
    // The umask may have removed bits (e.g. group/other execute).
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).map_err(write_err(to))?;
    Ok(())
}

/// Count the entries and bytes under `dir` without following symlinks.
pub fn measure(dir: &Path) -> Result<Usage, WorkspaceError> {
    let mut u = Usage::default();
    for entry in walkdir::WalkDir::new(dir).follow_links(false).min_depth(1) {
        let entry = entry.map_err(|e| WorkspaceError::Read {
            path: dir.to_path_buf(),
            source: e
                .into_io_error()
                .unwrap_or_else(|| io::Error::other("walk error")),
        })?;
        let len = if entry.file_type().is_dir() {
            0
        } else {
            entry.metadata().map(|m| m.len()).unwrap_or(0)
        };
        u.add(len, None)?;
    }
    Ok(u)
}

/// True when `dir/test_all` is a regular file (not a symlink) with an
/// execute bit.
pub fn has_test_all(dir: &Path) -> bool {
    fs::symlink_metadata(dir.join(TEST_ALL))
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The directory of a test repository whose contents the trusted contract
/// lays over the student's workspace (headers, a Makefile, public inputs);
/// nothing else of the tests is visible to student code.
pub const PUBLIC_DIR: &str = "public";

/// What [`finish`] or [`finish_trusted`] laid.
#[derive(Debug, Clone, Default)]
pub struct Laid {
    /// Size of the workspace (and of the harness's copy, when trusted).
    pub usage: Usage,
    /// Entries of the workspace that came from the test repository
    /// (relative, a directory before its contents): runners make them
    /// unwritable by student code.
    pub test_paths: Vec<PathBuf>,
}

/// `stdout` contract: lay `tests` over the student tree already in `ws`,
/// then check the result: the test tree must hold an executable
/// `test_all`, and the whole workspace must fit `limits`.
pub fn finish(tests: &Path, ws: &Path, limits: &WorkspaceLimits) -> Result<Laid, WorkspaceError> {
    if !has_test_all(tests) {
        return Err(WorkspaceError::NoTestAll);
    }
    let mut test_paths = Vec::new();
    overlay_listing(
        tests,
        ws,
        None,
        &mut Usage::default(),
        Some(&mut test_paths),
    )?;
    if !has_test_all(ws) {
        return Err(WorkspaceError::NoTestAll);
    }
    let usage = measure(ws)?;
    limits.check(&usage)?;
    Ok(Laid { usage, test_paths })
}

/// `trusted` contract: copy the whole test tree into the empty directory
/// `harness` (the harness's working directory), and lay only the tests'
/// [`PUBLIC_DIR`] over the student tree already in `ws`. Both must fit
/// `limits` together.
pub fn finish_trusted(
    tests: &Path,
    ws: &Path,
    harness: &Path,
    limits: &WorkspaceLimits,
) -> Result<Laid, WorkspaceError> {
    if !has_test_all(tests) {
        return Err(WorkspaceError::NoTestAll);
    }
    overlay(tests, harness, None, &mut Usage::default())?;
    let mut test_paths = Vec::new();
    let public = tests.join(PUBLIC_DIR);
    // A symlinked `public` is not followed (it could point anywhere).
    if fs::symlink_metadata(&public).is_ok_and(|m| m.is_dir()) {
        overlay_listing(
            &public,
            ws,
            None,
            &mut Usage::default(),
            Some(&mut test_paths),
        )?;
    }
    let mut usage = measure(ws)?;
    let h = measure(harness)?;
    usage.bytes = usage.bytes.saturating_add(h.bytes);
    usage.files = usage.files.saturating_add(h.files);
    limits.check(&usage)?;
    Ok(Laid { usage, test_paths })
}

/// Remove a directory tree even when student code made parts of it
/// unwritable; never follows symlinks.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(first) => {
            for entry in walkdir::WalkDir::new(path)
                .follow_links(false)
                .into_iter()
                .flatten()
            {
                if entry.file_type().is_dir() {
                    let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o700));
                }
            }
            fs::remove_dir_all(path).map_err(|_| first)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn big() -> WorkspaceLimits {
        WorkspaceLimits {
            bytes: 1 << 30,
            files: 100_000,
        }
    }

    fn write_exec(p: &Path, text: &str) {
        fs::write(p, text).unwrap();
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn tests_win_and_keep_exec_bits_and_dotfiles() {
        let t = tempfile::tempdir().unwrap();
        let (tests, ws) = (t.path().join("tests"), t.path().join("ws"));
        fs::create_dir_all(tests.join("sub")).unwrap();
        fs::create_dir_all(&ws).unwrap();
        write_exec(&tests.join("test_all"), "#!/bin/sh\n");
        fs::write(tests.join(".hidden"), "t").unwrap();
        fs::write(tests.join("sub/a"), "tests").unwrap();
        fs::write(ws.join("test_all"), "student").unwrap();
        fs::create_dir(ws.join("sub")).unwrap();
        fs::write(ws.join("sub/a"), "student").unwrap();
        fs::write(ws.join("sub/b"), "student-only").unwrap();
        finish(&tests, &ws, &big()).unwrap();
        assert_eq!(fs::read_to_string(ws.join("sub/a")).unwrap(), "tests");
        assert_eq!(
            fs::read_to_string(ws.join("sub/b")).unwrap(),
            "student-only"
        );
        assert_eq!(fs::read_to_string(ws.join(".hidden")).unwrap(), "t");
        assert!(has_test_all(&ws));
    }

    #[test]
    fn student_symlink_where_a_test_dir_goes_is_replaced_and_outside_untouched() {
        let t = tempfile::tempdir().unwrap();
        let (tests, ws, outside) = (
            t.path().join("tests"),
            t.path().join("ws"),
            t.path().join("outside"),
        );
        fs::create_dir_all(tests.join("checks")).unwrap();
        fs::create_dir_all(&ws).unwrap();
        fs::create_dir_all(&outside).unwrap();
        write_exec(&tests.join("test_all"), "#!/bin/sh\n");
        fs::write(tests.join("checks/c1"), "test").unwrap();
        fs::write(tests.join("file"), "test").unwrap();
        symlink(&outside, ws.join("checks")).unwrap();
        symlink(outside.join("victim"), ws.join("file")).unwrap();
        fs::write(outside.join("victim"), "original").unwrap();
        finish(&tests, &ws, &big()).unwrap();
        assert!(fs::symlink_metadata(ws.join("checks")).unwrap().is_dir());
        assert_eq!(fs::read_to_string(ws.join("checks/c1")).unwrap(), "test");
        assert!(!outside.join("c1").exists());
        assert_eq!(
            fs::read_to_string(outside.join("victim")).unwrap(),
            "original"
        );
        assert!(fs::symlink_metadata(ws.join("file")).unwrap().is_file());
    }

    #[test]
    fn student_symlink_named_test_all_does_not_count() {
        let t = tempfile::tempdir().unwrap();
        let (tests, ws) = (t.path().join("tests"), t.path().join("ws"));
        fs::create_dir_all(&tests).unwrap();
        fs::create_dir_all(&ws).unwrap();
        write_exec(&t.path().join("evil"), "#!/bin/sh\n");
        symlink(t.path().join("evil"), ws.join("test_all")).unwrap();
        assert!(!has_test_all(&ws));
        assert!(matches!(
            finish(&tests, &ws, &big()),
            Err(WorkspaceError::NoTestAll)
        ));
    }

    #[test]
    fn student_directory_where_a_test_file_goes_is_replaced() {
        let t = tempfile::tempdir().unwrap();
        let (tests, ws) = (t.path().join("tests"), t.path().join("ws"));
        fs::create_dir_all(&tests).unwrap();
        fs::create_dir_all(ws.join("test_all/deep")).unwrap();
        write_exec(&tests.join("test_all"), "#!/bin/sh\n");
        finish(&tests, &ws, &big()).unwrap();
        assert!(has_test_all(&ws));
    }

    #[test]
    fn an_unreadable_archive_is_the_trees_error_without_a_path() {
        let d = tempfile::tempdir().unwrap();
        let garbage = vec![0xffu8; 1024];
        let e = extract_tar(&garbage[..], d.path(), &big(), &mut Usage::default()).unwrap_err();
        assert!(matches!(e, WorkspaceError::Unreadable { .. }), "{e}");
        assert!(!e.to_string().contains(&*d.path().to_string_lossy()), "{e}");
    }

    #[test]
    fn long_paths_and_names_are_refused_in_the_students_terms() {
        let ok = "a/".repeat(MAX_PATH / 2 - 1) + "b";
        assert!(check_path_length(Path::new(&ok)).is_ok());
        let long = "a/".repeat(MAX_PATH / 2) + "b";
        let e = check_path_length(Path::new(&long)).unwrap_err();
        assert!(matches!(e, WorkspaceError::BadEntry { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("at most 2048 bytes") && msg.len() < 300,
            "{msg}"
        );
        let e = check_path_length(Path::new(&"n".repeat(256))).unwrap_err();
        assert!(e.to_string().contains("at most 255 bytes"), "{e}");
    }

    #[test]
    fn limits_name_what_was_exceeded() {
        let t = tempfile::tempdir().unwrap();
        let (src, ws) = (t.path().join("src"), t.path().join("ws"));
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&ws).unwrap();
        for i in 0..5 {
            fs::write(src.join(format!("f{i}")), vec![b'x'; 100]).unwrap();
        }
        let few = WorkspaceLimits {
            bytes: 1 << 20,
            files: 3,
        };
        let e = overlay(&src, &ws, Some(&few), &mut Usage::default()).unwrap_err();
        assert!(matches!(e, WorkspaceError::FileLimit { limit: 3 }), "{e}");
        let small = WorkspaceLimits {
            bytes: 250,
            files: 100,
        };
        let ws2 = t.path().join("ws2");
        fs::create_dir_all(&ws2).unwrap();
        let e = overlay(&src, &ws2, Some(&small), &mut Usage::default()).unwrap_err();
        assert!(e.to_string().contains("workspace_limit"), "{e}");
    }

    #[test]
    fn tar_entries_are_checked_before_writing() {
        let t = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1000);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "big", &vec![0u8; 1000][..]).unwrap();
        let bytes = b.into_inner().unwrap();
        let lim = WorkspaceLimits {
            bytes: 999,
            files: 10,
        };
        let e = extract_tar(&bytes[..], t.path(), &lim, &mut Usage::default()).unwrap_err();
        assert!(matches!(e, WorkspaceError::SizeLimit { .. }));
        assert!(!t.path().join("big").exists());
    }

    #[test]
    fn tar_entry_through_a_symlink_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let (ws, outside) = (t.path().join("ws"), t.path().join("outside"));
        fs::create_dir_all(&ws).unwrap();
        fs::create_dir_all(&outside).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "link", &outside).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "link/pwned", &b"x"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        let e = extract_tar(&bytes[..], &ws, &big(), &mut Usage::default()).unwrap_err();
        assert!(matches!(e, WorkspaceError::BadEntry { .. }), "{e}");
        assert!(!outside.join("pwned").exists());
    }
}
