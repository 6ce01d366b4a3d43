//! Bounded capture of a child's stdout or stderr.
//!
//! Keeps at most `limit` bytes, reads and drops the rest so the writer never
//! blocks on a full pipe, and counts what was dropped. Memory use is bounded
//! whatever the student prints.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Captured output of one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Captured {
    /// At most the limit, without the truncation mark.
    #[serde(skip)]
    pub bytes: Vec<u8>,
    /// Everything the stream produced, kept or not.
    pub total: u64,
    pub truncated: bool,
}

impl Captured {
    /// The text shown to a reader: the kept bytes plus, when output was
    /// dropped, a visible mark saying how much.
    pub fn display_bytes(&self) -> Vec<u8> {
        let mut v = self.bytes.clone();
        if self.truncated {
            if !v.ends_with(b"\n") && !v.is_empty() {
                v.push(b'\n');
            }
            v.extend_from_slice(self.truncation_mark().as_bytes());
        }
        v
    }

    pub fn truncation_mark(&self) -> String {
        format!(
            "[labgrader: output truncated: kept {} of {} bytes]\n",
            self.bytes.len(),
            self.total
        )
    }

    /// Build from bytes already in memory (e.g. read back from a file).
    pub fn from_bytes(mut bytes: Vec<u8>, limit: u64) -> Captured {
        let total = bytes.len() as u64;
        let truncated = total > limit;
        bytes.truncate(limit as usize);
        Captured {
            bytes,
            total,
            truncated,
        }
    }
}

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
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
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
        if room > 0 {
            out.bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        if chunk.len() > room {
            out.truncated = true;
        }
    }
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
        let shown = String::from_utf8(c.display_bytes()).unwrap();
        assert!(shown.ends_with("[labgrader: output truncated: kept 1000 of 200000 bytes]\n"));
    }

    #[tokio::test]
    async fn exact_limit_is_not_truncated() {
        let c = drain(&b"abc"[..], 3).await.unwrap();
        assert!(!c.truncated);
        assert_eq!(c.display_bytes(), b"abc");
    }
}
