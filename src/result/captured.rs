//! Captured output of one stream (stdout or stderr of a run): what was
//! kept, the tail after what was dropped, and how much there was.

use serde::{Deserialize, Serialize};

/// Bytes kept from the end of a stream that overflowed its limit.
pub const TAIL_KEEP: usize = 64 << 10;

/// Captured output of one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Captured {
    /// At most the limit, without the truncation mark.
    #[serde(skip)]
    pub bytes: Vec<u8>,
    /// When output was dropped: the last bytes of the stream (at most
    /// [`TAIL_KEEP`]), which came after everything dropped.
    #[serde(skip)]
    pub tail: Vec<u8>,
    /// Everything the stream produced, kept or not.
    pub total: u64,
    pub truncated: bool,
}

impl Captured {
    /// The text shown to a reader: the kept bytes plus, when output was
    /// dropped, a visible mark saying how much, then the tail.
    pub fn display_bytes(&self) -> Vec<u8> {
        let mut v = self.bytes.clone();
        if self.truncated {
            if !v.ends_with(b"\n") && !v.is_empty() {
                v.push(b'\n');
            }
            v.extend_from_slice(self.truncation_mark().as_bytes());
            v.extend_from_slice(&self.tail);
        }
        v
    }

    pub fn truncation_mark(&self) -> String {
        if self.tail.is_empty() {
            format!(
                "[labgrader: output truncated: kept {} of {} bytes]\n",
                self.bytes.len(),
                self.total
            )
        } else {
            format!(
                "[labgrader: output truncated: kept the first {} and the last {} of {} bytes]\n",
                self.bytes.len(),
                self.tail.len(),
                self.total
            )
        }
    }

    /// Build from bytes already in memory (e.g. read back from a file).
    pub fn from_bytes(mut bytes: Vec<u8>, limit: u64) -> Captured {
        let total = bytes.len() as u64;
        let truncated = total > limit;
        bytes.truncate(limit as usize);
        Captured {
            bytes,
            tail: Vec::new(),
            total,
            truncated,
        }
    }
}
