//! The container's stderr, split three ways: setup chatter before the
//! READY marker (kept for the error message), the job's stderr (captured,
//! capped) and `lg-init`'s results stream after its nonce. Byte handling
//! only, for markers split across chunks: it never parses the stream
//! (`results_stream` does) nor talks to the engine.

use std::borrow::Cow;

use crate::sandbox::output::SharedCapture;
use crate::sandbox::results_stream;

/// Setup chatter (tar warnings) kept for the error message.
const SETUP_LOG_LIMIT: usize = 16 * 1024;

/// Splits the container's stderr three ways: setup chatter before the
/// READY marker, the job's stderr (captured, capped), and `lg-init`'s
/// results stream after its nonce.
pub(super) struct StderrSplit {
    pub(super) gate: ReadyGate,
    pub(super) tap: ResultsTap,
}

impl StderrSplit {
    pub(super) fn new(marker: &str, nonce: &str) -> StderrSplit {
        StderrSplit {
            gate: ReadyGate::new(marker),
            tap: ResultsTap::new(nonce),
        }
    }

    pub(super) fn push(&mut self, chunk: &[u8], capture: &SharedCapture, limit: u64) {
        let job = self.gate.push(chunk);
        if !job.is_empty() {
            self.tap.push(&job, capture, limit);
        }
    }

    /// The container's stderr ended: what was held back is the job's.
    pub(super) fn finish(&mut self, capture: &SharedCapture, limit: u64) {
        self.tap.finish(capture, limit);
    }
}

/// Splits the setup chatter and the READY marker off the stderr stream.
pub(super) struct ReadyGate {
    marker: Vec<u8>,
    pending: Vec<u8>,
    pub(super) setup_log: Vec<u8>,
    pub(super) ready: bool,
}

impl ReadyGate {
    fn new(marker: &str) -> ReadyGate {
        ReadyGate {
            marker: format!("{marker}\n").into_bytes(),
            pending: Vec::new(),
            setup_log: Vec::new(),
            ready: false,
        }
    }

    /// Feed a stderr chunk; returns what belongs to the job.
    fn push<'a>(&mut self, chunk: &'a [u8]) -> Cow<'a, [u8]> {
        if self.ready {
            return Cow::Borrowed(chunk);
        }
        self.pending.extend_from_slice(chunk);
        if let Some(pos) = find(&self.pending, &self.marker) {
            self.ready = true;
            let rest = self.pending.split_off(pos + self.marker.len());
            self.pending.truncate(pos);
            self.keep_setup_log();
            return Cow::Owned(rest);
        } else if self.pending.len() > 2 * self.marker.len() {
            // Keep only a tail long enough to hold a split marker.
            let cut = self.pending.len() - self.marker.len();
            let head: Vec<u8> = self.pending.drain(..cut).collect();
            let room = SETUP_LOG_LIMIT.saturating_sub(self.setup_log.len());
            self.setup_log
                .extend_from_slice(&head[..head.len().min(room)]);
        }
        Cow::Borrowed(&[])
    }

    fn keep_setup_log(&mut self) {
        let room = SETUP_LOG_LIMIT.saturating_sub(self.setup_log.len());
        let n = self.pending.len().min(room);
        self.setup_log.extend_from_slice(&self.pending[..n]);
        self.pending.clear();
    }
}

/// Finds `\n<nonce>\n` in the job's stderr: before it is the job's
/// output, after it `lg-init`'s results stream (kept up to
/// [`results_stream::STREAM_MAX`] bytes).
pub(super) struct ResultsTap {
    needle: Vec<u8>,
    /// A tail of the job's stderr that may hold the start of the needle.
    pending: Vec<u8>,
    pub(super) stream: Option<Vec<u8>>,
    pub(super) overflow: bool,
}

impl ResultsTap {
    fn new(nonce: &str) -> ResultsTap {
        ResultsTap {
            needle: format!("\n{nonce}\n").into_bytes(),
            pending: Vec::new(),
            stream: None,
            overflow: false,
        }
    }

    fn push(&mut self, data: &[u8], capture: &SharedCapture, limit: u64) {
        if let Some(stream) = &mut self.stream {
            if stream.len() + data.len() > results_stream::STREAM_MAX {
                self.overflow = true;
            } else {
                stream.extend_from_slice(data);
            }
            return;
        }
        self.pending.extend_from_slice(data);
        if let Some(pos) = find(&self.pending, &self.needle) {
            capture.push(&self.pending[..pos], limit);
            let rest = self.pending.split_off(pos + self.needle.len());
            self.pending = Vec::new();
            self.stream = Some(Vec::new());
            self.push(&rest, capture, limit);
        } else {
            let keep = self.needle.len() - 1;
            if self.pending.len() > keep {
                let cut = self.pending.len() - keep;
                capture.push(&self.pending[..cut], limit);
                self.pending.drain(..cut);
            }
        }
    }

    fn finish(&mut self, capture: &SharedCapture, limit: u64) {
        capture.push(&std::mem::take(&mut self.pending), limit);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(split: &mut StderrSplit, chunks: &[&[u8]]) -> SharedCapture {
        let cap = SharedCapture::default();
        for c in chunks {
            split.push(c, &cap, 1000);
        }
        split.finish(&cap, 1000);
        cap
    }

    #[test]
    fn ready_gate_strips_marker_split_across_chunks() {
        let mut s = StderrSplit::new("labgrader-ready-X", "N");
        let cap = split_all(
            &mut s,
            &[b"tar: warning\nlabgrader-re", b"ady-X\nstudent err\n"],
        );
        assert!(s.gate.ready);
        assert_eq!(cap.snapshot().bytes, b"student err\n");
        assert_eq!(s.gate.setup_log, b"tar: warning\n");
    }

    #[test]
    fn ready_gate_without_marker_keeps_setup_log_bounded() {
        let cap = SharedCapture::default();
        let mut s = StderrSplit::new("m", "N");
        for _ in 0..10_000 {
            s.push(b"tar: something went wrong\n", &cap, 1000);
        }
        assert!(!s.gate.ready);
        assert!(s.gate.setup_log.len() <= SETUP_LOG_LIMIT);
        assert!(cap.snapshot().bytes.is_empty());
    }

    #[test]
    fn results_stream_is_cut_off_stderr_even_when_split_across_chunks() {
        let stream = results_stream::encode(&[("results.json", b"{}")], 1);
        let mut tail = b"\nlabgrader-results-abc\n".to_vec();
        tail.extend_from_slice(&stream);
        for cut in 0..tail.len() {
            let mut s = StderrSplit::new("R", "labgrader-results-abc");
            let mut first = b"R\nno newline at the end".to_vec();
            first.extend_from_slice(&tail[..cut]);
            let cap = split_all(&mut s, &[&first, &tail[cut..]]);
            assert_eq!(cap.snapshot().bytes, b"no newline at the end", "cut {cut}");
            assert_eq!(s.tap.stream.as_deref(), Some(&stream[..]), "cut {cut}");
        }
        // Without the nonce everything is the job's, held-back tail included.
        let mut s = StderrSplit::new("R", "labgrader-results-abc");
        let cap = split_all(&mut s, &[b"R\nerr\nlabgrader-results-ab"]);
        assert_eq!(cap.snapshot().bytes, b"err\nlabgrader-results-ab");
        assert!(s.tap.stream.is_none());
    }
}
