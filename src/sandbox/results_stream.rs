//! The host side of `lg-init`'s results stream (trusted contract): parse
//! the framed stream it writes after `test_all` ended, and leave the files
//! in the run's host `results` directory. It owns nothing else: it never
//! reads a results file's contents, never grades.
//!
//! Untrusted input: the stream comes out of the sandbox. Although only
//! `lg-init` writes it (after a nonce the job never saw), it is parsed as
//! hostile: lengths are checked against [`RESULTS_FILES`] and
//! [`RESULTS_BYTES`] before anything is kept, names must be one plain path
//! component, and files are created `O_NOFOLLOW | O_CREAT | O_EXCL`.
//!
//! Format (`SANDBOX-SPEC.md`): per file `u32 LE name length, name bytes,
//! u64 LE size, bytes`; then `u32 0` and `u32 LE flags`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::spec::{RESULTS_BYTES, RESULTS_FILES};

/// Flag bit: a writable mount of the job was full when it ended.
pub const FLAG_DISK_FULL: u32 = 1;
/// Longest file name accepted.
const NAME_MAX: usize = 255;
/// Most bytes a well-formed stream can take (for callers that buffer it).
pub const STREAM_MAX: usize = RESULTS_BYTES as usize + RESULTS_FILES * (4 + NAME_MAX + 8) + 4 + 4;

/// A parsed results stream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Results {
    pub files: Vec<(String, Vec<u8>)>,
    pub flags: u32,
}

impl Results {
    pub fn disk_full(&self) -> bool {
        self.flags & FLAG_DISK_FULL != 0
    }
}

/// Why a stream was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StreamError {
    #[error("results stream ends early (at byte {0})")]
    Truncated(usize),
    #[error("results stream has a bad file name {0:?}")]
    BadName(String),
    #[error("results stream names {0} twice")]
    Duplicate(String),
    #[error("results stream has more than {RESULTS_FILES} files or {RESULTS_BYTES} bytes")]
    TooLarge,
    #[error("results stream has {0} bytes after its end")]
    Trailing(usize),
}

/// Parse a complete stream (without the nonce line).
pub fn parse(bytes: &[u8]) -> Result<Results, StreamError> {
    let mut at = 0usize;
    let take = |n: usize, at: &mut usize| -> Result<&[u8], StreamError> {
        let end = at.checked_add(n).filter(|&e| e <= bytes.len());
        let end = end.ok_or(StreamError::Truncated(bytes.len()))?;
        let s = &bytes[*at..end];
        *at = end;
        Ok(s)
    };
    let mut out = Results::default();
    let mut total = 0u64;
    loop {
        let len = u32::from_le_bytes(take(4, &mut at)?.try_into().expect("4 bytes")) as usize;
        if len == 0 {
            out.flags = u32::from_le_bytes(take(4, &mut at)?.try_into().expect("4 bytes"));
            break;
        }
        if len > NAME_MAX {
            return Err(StreamError::BadName(format!("<{len} bytes>")));
        }
        let name = take(len, &mut at)?;
        let name = std::str::from_utf8(name)
            .ok()
            .filter(|n| valid_name(n))
            .ok_or_else(|| StreamError::BadName(String::from_utf8_lossy(name).into_owned()))?
            .to_string();
        let size = u64::from_le_bytes(take(8, &mut at)?.try_into().expect("8 bytes"));
        total = total.saturating_add(size);
        if out.files.len() >= RESULTS_FILES || total > RESULTS_BYTES {
            return Err(StreamError::TooLarge);
        }
        if out.files.iter().any(|(n, _)| *n == name) {
            return Err(StreamError::Duplicate(name));
        }
        let data = take(size as usize, &mut at)?.to_vec();
        out.files.push((name, data));
    }
    if at != bytes.len() {
        return Err(StreamError::Trailing(bytes.len() - at));
    }
    Ok(out)
}

/// One plain path component: not empty, no `/` or NUL, not `.` or `..`
/// (a results file's name, whichever way it came out of the sandbox).
pub fn valid_name(n: &str) -> bool {
    !n.is_empty() && n != "." && n != ".." && !n.contains(['/', '\0'])
}

/// Create each file in `dir` (which must exist), never through a symlink
/// and never over an existing file.
pub fn write_into(dir: &Path, results: &Results) -> std::io::Result<()> {
    for (name, data) in &results.files {
        debug_assert!(valid_name(name));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join(name))?;
        f.write_all(data)?;
    }
    Ok(())
}

/// Build a stream (the format `lg-init` writes); for tests.
pub fn encode(files: &[(&str, &[u8])], flags: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        out.extend_from_slice(data);
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_flags() {
        let s = encode(&[("results.json", b"{}"), ("junit.xml", b"<x/>")], 1);
        let r = parse(&s).unwrap();
        assert_eq!(r.files.len(), 2);
        assert_eq!(r.files[0], ("results.json".into(), b"{}".to_vec()));
        assert!(r.disk_full());
        assert!(!parse(&encode(&[], 0)).unwrap().disk_full());
    }

    #[test]
    fn hostile_streams_are_refused() {
        for bad in ["..", ".", "a/b", ""] {
            let mut s = Vec::new();
            s.extend_from_slice(&(bad.len() as u32).to_le_bytes());
            s.extend_from_slice(bad.as_bytes());
            s.extend_from_slice(&0u64.to_le_bytes());
            s.extend_from_slice(&encode(&[], 0));
            // An empty name reads as the end marker followed by junk.
            assert!(parse(&s).is_err(), "{bad:?}");
        }
        let s = encode(&[("a", b"1")], 0);
        assert_eq!(
            parse(&s[..s.len() - 1]),
            Err(StreamError::Truncated(s.len() - 1))
        );
        let mut huge = Vec::new();
        huge.extend_from_slice(&1u32.to_le_bytes());
        huge.push(b'a');
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(parse(&huge), Err(StreamError::TooLarge));
        let many: Vec<(String, Vec<u8>)> = (0..=RESULTS_FILES)
            .map(|i| (format!("f{i}"), vec![]))
            .collect();
        let many: Vec<(&str, &[u8])> = many
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        assert_eq!(parse(&encode(&many, 0)), Err(StreamError::TooLarge));
        assert!(matches!(
            parse(&encode(&[("a", b""), ("a", b"")], 0)),
            Err(StreamError::Duplicate(_))
        ));
    }

    #[test]
    fn files_are_never_written_through_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join("results.json")).unwrap();
        let r = parse(&encode(&[("results.json", b"evil")], 0)).unwrap();
        assert!(write_into(d.path(), &r).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        let r = parse(&encode(&[("junit.xml", b"<x/>")], 0)).unwrap();
        write_into(d.path(), &r).unwrap();
        assert_eq!(std::fs::read(d.path().join("junit.xml")).unwrap(), b"<x/>");
    }
}
