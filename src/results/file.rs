//! Reading a results file the harness left: a regular file, never through
//! a symlink, never more than a cap.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Why a results file could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum FileProblem {
    #[error("missing")]
    Missing,
    #[error("is not a regular file ({0}); write a plain file")]
    NotRegular(&'static str),
    #[error("is {0} bytes, more than the {1} allowed; cap the tests' output")]
    TooLarge(u64, u64),
    #[error("cannot be read: {0}")]
    Read(String),
}

/// The bytes of the regular file `path`, at most `max` of them, never
/// through a symlink (and a FIFO does not block the open).
pub(super) fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, FileProblem> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(FileProblem::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(FileProblem::NotRegular("a symbolic link"));
        }
        Err(e) => return Err(FileProblem::Read(e.to_string())),
    };
    let meta = file
        .metadata()
        .map_err(|e| FileProblem::Read(e.to_string()))?;
    if !meta.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        let what = if t.is_dir() {
            "a directory"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_block_device() || t.is_char_device() {
            "a device"
        } else {
            "not a plain file"
        };
        return Err(FileProblem::NotRegular(what));
    }
    if meta.len() > max {
        return Err(FileProblem::TooLarge(meta.len(), max));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| FileProblem::Read(e.to_string()))?;
    if bytes.len() as u64 > max {
        return Err(FileProblem::TooLarge(bytes.len() as u64, max));
    }
    Ok(bytes)
}
