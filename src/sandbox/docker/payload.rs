//! What the container's stdin carries: one tar, built on the fly, with
//! `lg-init`, its `run-as-student` link, the test-paths file and the
//! results nonce under `/.labgrader/`, the workspace and, under
//! `trusted`, the tests; everything root-owned. It walks the host trees
//! without following a symlink and never sends more of a file than its
//! header says. It never talks to the engine.

use std::io::Write;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use super::container::{INIT_DIR, NONCE_FILE, TEST_PATHS_FILE};
use crate::sandbox::init;
use crate::sandbox::spec::RUN_AS_STUDENT;

/// Chunk size of the streamed workspace tar, and chunks in flight.
pub(super) const TAR_CHUNK: usize = 64 * 1024;
pub(super) const TAR_CHUNKS_IN_FLIGHT: usize = 8;

/// One workspace entry to send.
pub(super) struct Entry {
    rel: PathBuf,
    kind: EntryKind,
}

pub(super) enum EntryKind {
    Dir,
    File { size: u64 },
    Symlink(PathBuf),
}

/// Walk the workspace (no symlink is followed); special files are skipped.
pub(super) fn list_workspace(root: &Path) -> std::io::Result<(Vec<Entry>, u64, u64)> {
    let (mut entries, mut total, mut largest) = (Vec::new(), 0u64, 0u64);
    for item in walkdir::WalkDir::new(root)
        .follow_links(false)
        .min_depth(1)
        .sort_by_file_name()
    {
        let item = item.map_err(std::io::Error::other)?;
        let rel = item
            .path()
            .strip_prefix(root)
            .expect("walkdir yields paths under its root")
            .to_path_buf();
        let ft = item.file_type();
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            EntryKind::Symlink(std::fs::read_link(item.path())?)
        } else if ft.is_file() {
            let size = item.metadata().map_err(std::io::Error::other)?.len();
            total += size;
            largest = largest.max(size);
            EntryKind::File { size }
        } else {
            continue;
        };
        entries.push(Entry { rel, kind });
    }
    Ok((entries, total, largest))
}

/// `Write` into a bounded channel of chunks (the tar builder runs on a
/// blocking thread; the async side forwards chunks to the container).
pub(super) struct ChunkWriter {
    pub(super) tx: mpsc::Sender<Vec<u8>>,
    pub(super) buf: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= TAR_CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(TAR_CHUNK));
            self.tx.blocking_send(chunk).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "receiver gone")
            })?;
        }
        Ok(())
    }
}

/// A tree of the host sent under `prefix` (`workspace/`, `harness/tests/`).
pub(super) struct Tree {
    pub(super) root: PathBuf,
    pub(super) prefix: &'static str,
    pub(super) entries: Vec<Entry>,
}

/// Everything the container's tar carries, all owned by its root (`lg-init`
/// gives the files their owners).
pub(super) struct Payload {
    /// The test-paths file: NUL-separated paths relative to the workspace.
    pub(super) test_paths: Vec<u8>,
    /// The results nonce (a root-only file).
    pub(super) nonce: String,
    pub(super) trees: Vec<Tree>,
}

/// Write the tar of `payload` into `out`.
pub(super) fn write_tar(payload: &Payload, out: impl Write) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Deterministic);
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h
    };
    let init = rel(INIT_DIR);
    let blob = |tar: &mut tar::Builder<_>, path: &str, mode: u32, data: &[u8]| {
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        tar.append_data(&mut h, format!("{init}/{path}"), data)
    };
    blob(&mut tar, "lg-init", 0o555, init::BINARY)?;
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    tar.append_data(&mut h, format!("{init}/bin"), std::io::empty())?;
    let mut h = header(tar::EntryType::Link, 0o555, 0);
    tar.append_link(
        &mut h,
        format!("{init}/bin/{RUN_AS_STUDENT}"),
        format!("{init}/lg-init"),
    )?;
    blob(
        &mut tar,
        rel_in_init(TEST_PATHS_FILE),
        0o444,
        &payload.test_paths,
    )?;
    blob(
        &mut tar,
        rel_in_init(NONCE_FILE),
        0o400,
        payload.nonce.as_bytes(),
    )?;
    for tree in &payload.trees {
        for e in &tree.entries {
            let name = Path::new(tree.prefix).join(&e.rel);
            match &e.kind {
                EntryKind::Dir => {
                    let mut h = header(tar::EntryType::Directory, 0o755, 0);
                    tar.append_data(&mut h, &name, std::io::empty())?;
                }
                EntryKind::Symlink(target) => {
                    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                    tar.append_link(&mut h, &name, target)?;
                }
                EntryKind::File { size } => {
                    let f = std::fs::File::open(tree.root.join(&e.rel))?;
                    let meta = f.metadata()?;
                    // The file may have changed since the walk: send what
                    // the header says, no more.
                    let exec = meta.permissions().mode() & 0o111 != 0;
                    let mode = if exec { 0o755 } else { 0o644 };
                    let mut h = header(tar::EntryType::Regular, mode, *size);
                    tar.append_data(
                        &mut h,
                        &name,
                        std::io::Read::take(f, *size).chain_zeros(*size),
                    )?;
                }
            }
        }
    }
    tar.into_inner()?.flush()
}

/// An absolute container path as a tar member name (extracted at `/`).
fn rel(path: &str) -> &str {
    path.trim_start_matches('/')
}

/// A file of [`INIT_DIR`] by its name there.
fn rel_in_init(path: &'static str) -> &'static str {
    path.strip_prefix(INIT_DIR)
        .map(|p| p.trim_start_matches('/'))
        .expect("helper files live in INIT_DIR")
}

/// A reader padded with zeros to exactly `len` bytes (a file that shrank
/// after the walk must not corrupt the tar stream).
trait ChainZeros: std::io::Read + Sized {
    fn chain_zeros(self, len: u64) -> std::io::Take<std::io::Chain<Self, std::io::Repeat>> {
        std::io::Read::take(std::io::Read::chain(self, std::io::repeat(0)), len)
    }
}
impl<R: std::io::Read> ChainZeros for R {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_carries_helper_paths_nonce_and_trees_all_root_owned() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a.txt"), b"hello").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", dir.path().join("leak")).unwrap();
        let (entries, total, largest) = list_workspace(dir.path()).unwrap();
        assert_eq!((total, largest), (5, 5));
        let payload = Payload {
            test_paths: init::test_paths_file(&[PathBuf::from("sub"), PathBuf::from("sub/a.txt")]),
            nonce: "n0nce".into(),
            trees: vec![Tree {
                root: dir.path().to_path_buf(),
                prefix: "workspace",
                entries,
            }],
        };
        let mut out = Vec::new();
        write_tar(&payload, &mut out).unwrap();
        let mut ar = tar::Archive::new(&out[..]);
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
            let link = e.link_name().unwrap().map(|l| l.into_owned());
            let path = e.path().unwrap().into_owned();
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut body).unwrap();
            seen.push((path, h.entry_type(), h.mode().unwrap(), link, body));
        }
        let find = |p: &str| {
            seen.iter()
                .find(|s| s.0 == Path::new(p))
                .unwrap_or_else(|| panic!("{p} not in the tar"))
        };
        assert_eq!(find(".labgrader/nonce").2, 0o400);
        assert_eq!(find(".labgrader/nonce").4, b"n0nce");
        assert_eq!(find(".labgrader/test-paths").4, b"sub\0sub/a.txt\0");
        let ras = find(".labgrader/bin/run-as-student");
        assert_eq!(ras.1, tar::EntryType::Link);
        assert_eq!(ras.3.as_deref(), Some(Path::new(".labgrader/lg-init")));
        let leak = find("workspace/leak");
        assert_eq!(leak.1, tar::EntryType::Symlink);
        assert_eq!(leak.3.as_deref(), Some(Path::new("/etc/shadow")));
        assert_eq!(find("workspace/sub/a.txt").4, b"hello");
    }
}
