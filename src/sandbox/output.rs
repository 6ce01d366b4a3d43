//! Bounded capture of a child's stdout or stderr.
//!
//! Keeps the first `limit` bytes and the last [`TAIL_KEEP`] bytes, reads
//! and drops the rest so the writer never blocks on a full pipe, and counts
//! what was dropped. Memory use is bounded whatever the student prints. The
//! tail matters: `test_all` prints its summary last, so a run that printed
//! too much still ends with a readable grade.

use tokio::io::{AsyncRead, AsyncReadExt};

pub use crate::result::captured::{Captured, TAIL_KEEP};

/// Read `reader` to its end, keeping the first `limit` bytes.
pub async fn drain<R: AsyncRead + Unpin>(reader: R, limit: u64) -> std::io::Result<Captured> {
    let shared = SharedCapture::default();
    drain_into(reader, limit, &shared).await?;
    Ok(shared.snapshot())
}

/// A capture readable while it is still being filled, so a caller that
/// stops waiting (a grandchild holds the pipe open) keeps what arrived.
#[derive(Debug, Clone, Default)]
pub struct SharedCapture(std::sync::Arc<std::sync::Mutex<Captured>>);

impl SharedCapture {
    pub fn snapshot(&self) -> Captured {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if c.tail.len() > TAIL_KEEP {
            c.tail.drain(..c.tail.len() - TAIL_KEEP);
        }
        c
    }

    /// Mark the stream as cut short (we stopped reading before its end).
    pub fn mark_truncated(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).truncated = true;
    }

    /// Append a chunk, keeping at most `limit` bytes in total.
    pub fn push(&self, chunk: &[u8], limit: u64) {
        let mut out = self.0.lock().unwrap_or_else(|p| p.into_inner());
        out.total += chunk.len() as u64;
        let room = limit.saturating_sub(out.bytes.len() as u64) as usize;
        let kept = chunk.len().min(room);
        out.bytes.extend_from_slice(&chunk[..kept]);
        if chunk.len() > room {
            out.truncated = true;
            out.tail.extend_from_slice(&chunk[kept..]);
            // Trim in batches: amortized O(1) per byte, at most 2×TAIL_KEEP held.
            if out.tail.len() > 2 * TAIL_KEEP {
                let cut = out.tail.len() - TAIL_KEEP;
                out.tail.drain(..cut);
            }
        }
    }
}

/// Drain `reader` into `into` on a task of its own.
pub fn spawn_drain<R>(reader: R, limit: u64, into: &SharedCapture) -> tokio::task::JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let into = into.clone();
    tokio::spawn(async move {
        let _ = drain_into(reader, limit, &into).await;
    })
}

/// Wait for a drain task once the child is gone, but at most `linger`: a
/// descendant that escaped may still hold the pipe open. What arrived is
/// kept either way; a stream cut short is marked truncated.
pub async fn collect(
    task: tokio::task::JoinHandle<()>,
    capture: &SharedCapture,
    linger: std::time::Duration,
) -> Captured {
    let abort = task.abort_handle();
    if tokio::time::timeout(linger, task).await.is_err() {
        abort.abort();
        capture.mark_truncated();
    }
    capture.snapshot()
}

/// Read `reader` to its end into `into`, keeping the first `limit` bytes.
pub async fn drain_into<R: AsyncRead + Unpin>(
    mut reader: R,
    limit: u64,
    into: &SharedCapture,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        into.push(&buf[..n], limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_limit_and_counts_rest() {
        let data = vec![b'x'; 200_000];
        let c = drain(&data[..], 1000).await.unwrap();
        assert_eq!(c.bytes.len(), 1000);
        assert_eq!(c.total, 200_000);
        assert!(c.truncated);
        assert_eq!(c.tail.len(), TAIL_KEEP);
        let shown = String::from_utf8(c.display_bytes()).unwrap();
        assert!(shown.contains(
            "[labgrader: output truncated: kept the first 1000 and the last 65536 of 200000 bytes]\n"
        ));
    }

    #[tokio::test]
    async fn tail_holds_the_end_of_a_flood() {
        let mut data = vec![b'x'; 1_000_000];
        data.extend_from_slice(b"\n<summary>\ngrade_total = 7\n</summary>\n");
        let c = drain(&data[..], 1000).await.unwrap();
        assert!(c.tail.ends_with(b"</summary>\n"));
        assert!(c.tail.len() <= TAIL_KEEP);
    }

    #[tokio::test]
    async fn exact_limit_is_not_truncated() {
        let c = drain(&b"abc"[..], 3).await.unwrap();
        assert!(!c.truncated);
        assert_eq!(c.display_bytes(), b"abc");
    }
}
