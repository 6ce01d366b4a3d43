//! The results stream `lg-init` writes once nothing of the job runs: the
//! regular files directly in the harness's results directory (trusted;
//! capped, never through a symlink) framed as the host parses them, then
//! the flags (a writable mount full). It never reads a file's meaning.

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use super::args::{self, Args, Contract};
use super::env::cstr;
use super::sys;

/// The results stream: the regular files directly in the results dir
/// (trusted), then the flags.
pub(crate) fn results_stream(a: &Args) -> Vec<u8> {
    let mut out = Vec::new();
    if a.contract == Contract::Trusted {
        let dir = a.harness.join("results");
        // The harness owns its home: a results "directory" that is a
        // symlink is not followed (nothing of the job runs any more).
        let real_dir = fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir());
        let mut names: Vec<OsString> = fs::read_dir(&dir)
            .ok()
            .filter(|_| real_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        let (mut files, mut bytes) = (0usize, 0u64);
        for name in names {
            let nb = name.as_bytes();
            if !args::sendable_name(nb) {
                say!("lg-init: results: skipped a file with an unusable name");
                continue;
            }
            let f = fs::OpenOptions::new()
                .read(true)
                .custom_flags(sys::O_NOFOLLOW | sys::O_NONBLOCK)
                .open(dir.join(&name));
            let Ok(mut f) = f else { continue };
            let Ok(meta) = f.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            if files >= args::RESULTS_FILES || bytes + meta.len() > args::RESULTS_BYTES {
                say!(
                    "lg-init: results: dropped {} (more than {} files or {} bytes)",
                    name.to_string_lossy(),
                    args::RESULTS_FILES,
                    args::RESULTS_BYTES
                );
                // Say so, so that the grade's reason can name the size
                // instead of a missing file: `NAME.too-large` holds it.
                let mut marker = nb.to_vec();
                marker.extend_from_slice(args::TOO_LARGE_SUFFIX.as_bytes());
                if files < args::RESULTS_FILES && args::sendable_name(&marker) {
                    files += 1;
                    args::frame_file(&mut out, &marker, meta.len().to_string().as_bytes());
                }
                continue;
            }
            let mut data = Vec::with_capacity(meta.len() as usize);
            if (&mut f).take(meta.len()).read_to_end(&mut data).is_err() {
                continue;
            }
            files += 1;
            bytes += data.len() as u64;
            args::frame_file(&mut out, nb, &data);
        }
    }
    let mut writable = vec![a.workspace.clone(), PathBuf::from("/tmp")];
    if a.contract == Contract::Trusted {
        writable.push(a.harness.clone());
    }
    let full = writable.iter().any(|p| {
        let c = cstr(p.as_os_str().as_bytes());
        sys::free_bytes(&c).is_ok_and(|free| free < args::FULL_BELOW)
    });
    args::frame_end(&mut out, if full { args::FLAG_DISK_FULL } else { 0 });
    out
}
