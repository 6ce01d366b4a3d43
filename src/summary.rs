//! The `<summary>` block of `test_all`'s stdout: where the grade comes from
//! under the `stdout` contract (under `trusted` it is only feedback; see
//! [`crate::results`]).
//!
//! Owns finding blocks ([`blocks`], the one block finder: the `[hidden]`
//! filter in [`crate::deliver::hidden`] uses it too, so what is graded is
//! exactly what is filtered), splitting a block into INI lines
//! ([`block_lines`], [`Line`]) and reading them. It never runs anything and
//! never decides a job's status beyond "a grade was read or not, and why".
//!
//! stdout is untrusted: student code may print anything, including a
//! forged block, or pad its output so that the real block is cut by
//! `output_limit`. So:
//! - a block runs from `<summary>` to the first `</summary>` or
//!   `<summary>` after it, wherever on a line either stands; only the
//!   **last complete** block counts (a block cut off by a kill is ignored
//!   and the one before it counts, which gives partial credit);
//! - of a stream that overflowed, the kept head and tail are read as one
//!   stream when nothing was dropped between them; when bytes were dropped,
//!   only a complete block inside the tail (the real end of the stream)
//!   counts, and without one there is no grade ([`SummaryError::OutputCut`]):
//!   an earlier block never counts, since the real one may have been cut.
//!
//! Bytes that are not UTF-8 are replaced, never rejected.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::result::Captured;

const OPEN: &[u8] = b"<summary>";
const CLOSE: &[u8] = b"</summary>";
/// Section whose keys are for staff only (compared without case).
pub const HIDDEN_SECTION: &str = "hidden";
/// The required key.
pub const GRADE_KEY: &str = "grade_total";
/// Most keys one job's summary keeps, besides `grade_total`, in each of the
/// shown and the `[hidden]` maps: the first ones printed; the rest are
/// dropped and counted ([`Summary::dropped_keys`]), never failing the
/// grade. Student code chooses the keys, and every key is a column of the
/// class CSV.
pub const MAX_SUMMARY_KEYS: usize = 100;

/// What the summary says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub grade_total: f64,
    /// Top-level keys other than `grade_total`; keys of sections other than
    /// `[hidden]` as `section.key`.
    pub summary: BTreeMap<String, String>,
    /// Keys under `[hidden]`.
    pub hidden: BTreeMap<String, String>,
    /// Distinct keys dropped past [`MAX_SUMMARY_KEYS`] (shown and hidden).
    pub dropped_keys: usize,
}

impl Summary {
    /// The note for the job's reason when keys were dropped, if any.
    pub fn dropped_note(&self) -> Option<String> {
        (self.dropped_keys > 0).then(|| {
            format!(
                "{} summary keys past the first {MAX_SUMMARY_KEYS} were dropped (the summary's key limit)",
                self.dropped_keys
            )
        })
    }
}

/// Insert `key` unless `map` is full and does not have it yet; counts a drop.
fn insert_capped(
    map: &mut BTreeMap<String, String>,
    dropped: &mut usize,
    key: String,
    value: String,
) {
    if map.len() < MAX_SUMMARY_KEYS || map.contains_key(&key) {
        map.insert(key, value);
    } else {
        *dropped += 1;
    }
}

/// Why no grade could be read. The message is shown to the student.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SummaryError {
    #[error("no complete <summary>…</summary> block in stdout")]
    NoBlock,
    #[error("the summary block is not valid INI (line {line}): {message}")]
    Ini { line: usize, message: String },
    #[error("the summary has no grade_total")]
    NoGrade,
    #[error("grade_total `{0}` is not a finite number")]
    BadGrade(String),
    #[error(
        "stdout overflowed output_limit and {dropped} bytes were dropped before its last \
         {kept_tail} bytes; {}, so no earlier block counts (keep test_all's stdout under \
         output_limit: capture the student's output instead of passing it through)",
        cut_phrase(*.straddled)
    )]
    OutputCut {
        dropped: u64,
        kept_tail: usize,
        /// The tail begins inside a block: the cut fell in a summary.
        straddled: bool,
    },
}

fn cut_phrase(straddled: bool) -> &'static str {
    if straddled {
        "the summary block was cut there"
    } else {
        "those last bytes hold no complete summary block"
    }
}

/// A summary marker and where it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Open,
    Close,
}

/// Every marker of `bytes`, in order.
fn markers(bytes: &[u8]) -> Vec<(usize, Marker)> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(p) = bytes[i..].iter().position(|&b| b == b'<') {
        let at = i + p;
        let rest = &bytes[at..];
        if rest.starts_with(OPEN) {
            out.push((at, Marker::Open));
            i = at + OPEN.len();
        } else if rest.starts_with(CLOSE) {
            out.push((at, Marker::Close));
            i = at + CLOSE.len();
        } else {
            i = at + 1;
        }
    }
    out
}

/// One `<summary>` block found in a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The block's text: after `<summary>`, up to the next marker (or the
    /// end of the bytes).
    pub content: Range<usize>,
    /// Ended by `</summary>` (not by another `<summary>` or the end).
    pub closed: bool,
}

/// The blocks of `bytes`, in order: each `<summary>` opens one, which ends
/// at the next `</summary>` (closed) or `<summary>` or the end of the bytes
/// (not closed). A `</summary>` without a block is ignored. The grade
/// parser and the `[hidden]` filter both find blocks here and nowhere else.
pub fn blocks(bytes: &[u8]) -> Vec<Block> {
    let m = markers(bytes);
    m.iter()
        .enumerate()
        .filter(|(_, (_, kind))| *kind == Marker::Open)
        .map(|(i, (at, _))| {
            let next = m.get(i + 1);
            Block {
                content: at + OPEN.len()..next.map_or(bytes.len(), |(p, _)| *p),
                closed: matches!(next, Some((_, Marker::Close))),
            }
        })
        .collect()
}

/// When `bytes` begins inside a block (its first marker is `</summary>`),
/// the range of that block's text it holds: a tail kept after a cut may
/// begin so.
pub fn leading_content(bytes: &[u8]) -> Option<Range<usize>> {
    match markers(bytes).first() {
        Some((at, Marker::Close)) => Some(0..*at),
        _ => None,
    }
}

/// The text of the last complete block, if any.
pub fn last_block(stdout: &[u8]) -> Option<&[u8]> {
    blocks(stdout)
        .into_iter()
        .rfind(|b| b.closed)
        .map(|b| &stdout[b.content])
}

/// What one line of a block's text is, as the parser reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// Empty, or a comment (`;` or `#` first).
    Blank,
    /// A line whose first non-blank character is `[`: a section header.
    /// `name` is the text up to the first `]` (or the end), trimmed; the
    /// parser accepts it only when `well_formed` (`[name]` alone).
    Section { name: String, well_formed: bool },
    /// Anything else: `key = value` (or `key: value`) for the parser.
    Other,
}

impl Line {
    pub fn classify(line: &[u8]) -> Line {
        let t = trim(line);
        if t.is_empty() || t[0] == b';' || t[0] == b'#' {
            return Line::Blank;
        }
        if t[0] == b'[' {
            let inner = &t[1..];
            let close = inner.iter().position(|&b| b == b']');
            let name = &inner[..close.unwrap_or(inner.len())];
            return Line::Section {
                name: String::from_utf8_lossy(trim(name)).into_owned(),
                well_formed: close == Some(inner.len() - 1),
            };
        }
        Line::Other
    }

    /// A header of the staff-only section (name compared without case).
    pub fn is_hidden_header(&self) -> bool {
        matches!(self, Line::Section { name, .. } if name.eq_ignore_ascii_case(HIDDEN_SECTION))
    }
}

/// The lines of a block's text as byte ranges of `bytes` (each with its
/// `\n`, if any): the first starts right after `<summary>`, the last ends
/// before `</summary>`. The parser and the `[hidden]` filter split here.
pub fn block_lines(bytes: &[u8], content: Range<usize>) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = content.start;
    while start < content.end {
        let end = bytes[start..content.end]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(content.end, |p| start + p + 1);
        out.push(start..end);
        start = end;
    }
    out
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

/// Read the grade from captured stdout (see the module doc for a stream
/// that overflowed `output_limit`).
pub fn parse_captured(stdout: &Captured) -> Result<Summary, SummaryError> {
    if !stdout.truncated {
        return parse(&stdout.bytes);
    }
    let dropped = dropped(stdout);
    if dropped == 0 {
        let mut all = Vec::with_capacity(stdout.bytes.len() + stdout.tail.len());
        all.extend_from_slice(&stdout.bytes);
        all.extend_from_slice(&stdout.tail);
        return parse(&all);
    }
    if last_block(&stdout.tail).is_some() {
        return parse(&stdout.tail);
    }
    Err(SummaryError::OutputCut {
        dropped,
        kept_tail: stdout.tail.len(),
        straddled: leading_content(&stdout.tail).is_some(),
    })
}

/// Bytes of the stream neither in the head nor in the tail.
pub fn dropped(c: &Captured) -> u64 {
    c.total
        .saturating_sub(c.bytes.len() as u64 + c.tail.len() as u64)
}

/// Read the grade from `stdout`, a whole stream.
pub fn parse(stdout: &[u8]) -> Result<Summary, SummaryError> {
    let block = blocks(stdout)
        .into_iter()
        .rfind(|b| b.closed)
        .ok_or(SummaryError::NoBlock)?;
    let mut out = Summary::default();
    let mut grade: Option<String> = None;
    let mut section: Option<String> = None;
    let mut dropped = 0;
    for (n, range) in block_lines(stdout, block.content).into_iter().enumerate() {
        let line = &stdout[range];
        let bad = |message: &str| SummaryError::Ini {
            line: n + 1,
            message: message.to_string(),
        };
        match Line::classify(line) {
            Line::Blank => {}
            Line::Section {
                well_formed: false, ..
            } => {
                return Err(bad("a section header is `[name]` alone on its line"));
            }
            Line::Section { name, .. } => section = Some(name),
            Line::Other => {
                let text = String::from_utf8_lossy(trim(line)).into_owned();
                let Some(sep) = text.find(['=', ':']) else {
                    return Err(bad("expected `key = value`"));
                };
                let key = text[..sep].trim();
                let value = text[sep + 1..].trim().to_string();
                if key.is_empty() {
                    return Err(bad("missing key"));
                }
                match &section {
                    None if key == GRADE_KEY => grade = Some(value),
                    None => {
                        insert_capped(&mut out.summary, &mut dropped, key.to_string(), value);
                    }
                    Some(s) if s.eq_ignore_ascii_case(HIDDEN_SECTION) => {
                        insert_capped(&mut out.hidden, &mut dropped, key.to_string(), value);
                    }
                    Some(s) => {
                        insert_capped(&mut out.summary, &mut dropped, format!("{s}.{key}"), value);
                    }
                }
            }
        }
    }
    let grade = grade.ok_or(SummaryError::NoGrade)?;
    let value: f64 = grade
        .parse()
        .map_err(|_| SummaryError::BadGrade(grade.clone()))?;
    if !value.is_finite() {
        return Err(SummaryError::BadGrade(grade));
    }
    out.grade_total = value;
    out.dropped_keys = dropped;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::captured::TAIL_KEEP;

    #[test]
    fn reads_grade_and_other_keys() {
        let s = parse(
            b"running...\n<summary>\ngrade_total = 87.5\npassed = 7\n[hidden]\nseed = 42\n</summary>\n",
        )
        .unwrap();
        assert_eq!(s.grade_total, 87.5);
        assert_eq!(s.summary.get("passed").map(String::as_str), Some("7"));
        assert_eq!(s.hidden.get("seed").map(String::as_str), Some("42"));
        assert!(!s.summary.contains_key("grade_total"));
    }

    /// Attack: a flood of distinct keys (each a column of the class CSV)
    /// keeps the first [`MAX_SUMMARY_KEYS`] of each map and the grade.
    #[test]
    fn a_key_flood_keeps_the_first_keys_and_the_grade() {
        let mut out = String::from("<summary>\n");
        for i in 0..20_000 {
            out.push_str(&format!("k{i:05} = {i}\n"));
        }
        out.push_str("grade_total = 42\n[hidden]\n");
        for i in 0..150 {
            out.push_str(&format!("h{i} = 1\n"));
        }
        out.push_str("</summary>\n");
        let s = parse(out.as_bytes()).unwrap();
        assert_eq!(s.grade_total, 42.0);
        assert_eq!(s.summary.len(), MAX_SUMMARY_KEYS);
        assert!(s.summary.contains_key("k00000") && s.summary.contains_key("k00099"));
        assert!(!s.summary.contains_key("k00100"));
        assert_eq!(s.hidden.len(), MAX_SUMMARY_KEYS);
        assert_eq!(s.dropped_keys, 19_900 + 50);
        assert!(s.dropped_note().unwrap().contains("19950 summary keys"));
        // A key repeated past the limit still takes its last value.
        let mut out = String::from("<summary>\ngrade_total = 1\n");
        for i in 0..MAX_SUMMARY_KEYS {
            out.push_str(&format!("k{i} = a\n"));
        }
        out.push_str("k0 = b\nextra = 1\n</summary>\n");
        let s = parse(out.as_bytes()).unwrap();
        assert_eq!(s.summary["k0"], "b");
        assert_eq!(s.dropped_keys, 1);
    }

    #[test]
    fn forged_block_before_the_real_one_does_not_count() {
        let out = b"<summary>\ngrade_total = 100\n</summary>\nstudent output\n\
                    <summary>\ngrade_total = 12\n</summary>\n";
        assert_eq!(parse(out).unwrap().grade_total, 12.0);
    }

    #[test]
    fn unterminated_last_block_leaves_the_previous_complete_one() {
        // A kill in the middle of printing the final block: the last
        // complete one (partial credit) counts.
        let out = b"<summary>\ngrade_total = 40\n</summary>\n<summary>\ngrade_tot";
        assert_eq!(parse(out).unwrap().grade_total, 40.0);
    }

    #[test]
    fn missing_or_bad_grade_says_why() {
        assert_eq!(parse(b"nothing here"), Err(SummaryError::NoBlock));
        assert_eq!(parse(b"<summary>\n</summary>"), Err(SummaryError::NoGrade));
        assert_eq!(
            parse(b"<summary>\ngrade_total = NaN\n</summary>"),
            Err(SummaryError::BadGrade("NaN".into()))
        );
        assert_eq!(
            parse(b"<summary>\ngrade_total = inf\n</summary>"),
            Err(SummaryError::BadGrade("inf".into()))
        );
        assert_eq!(
            parse(b"<summary>\ngrade_total = lots\n</summary>"),
            Err(SummaryError::BadGrade("lots".into()))
        );
        assert!(matches!(
            parse(b"<summary>\n[unclosed\n</summary>"),
            Err(SummaryError::Ini { .. })
        ));
    }

    #[test]
    fn close_before_open_is_no_block() {
        assert_eq!(
            parse(b"</summary> <summary>grade_total=1"),
            Err(SummaryError::NoBlock)
        );
    }

    #[test]
    fn other_sections_are_prefixed_and_invalid_utf8_survives() {
        let s = parse(b"<summary>\ngrade_total=3\n[parts]\na=1\nnote=\xff\n</summary>").unwrap();
        assert_eq!(s.summary.get("parts.a").map(String::as_str), Some("1"));
        assert_eq!(
            s.summary.get("parts.note").map(String::as_str),
            Some("\u{fffd}")
        );
    }

    /// Captured stdout of `stream` under `limit`, as the runners keep it.
    fn captured(stream: &[u8], limit: u64) -> Captured {
        let c = crate::sandbox::output::SharedCapture::default();
        for chunk in stream.chunks(4096) {
            c.push(chunk, limit);
        }
        c.snapshot()
    }

    const FORGED: &[u8] = b"<summary>\ngrade_total = 100\n</summary>\n";
    const REAL: &[u8] = b"<summary>\ngrade_total = 12\npassed = 1\n</summary>\n";

    #[test]
    fn a_real_summary_straddling_the_head_limit_is_read_across_the_cut() {
        // Issue 13: the student prints a forged block, then pads so that
        // the real block straddles output_limit: the head keeps the forged
        // block, the tail only the end of the real one. Nothing was dropped
        // between them, so they are one stream and the real block counts.
        let limit = 1000;
        let mut stream = FORGED.to_vec();
        stream.extend(std::iter::repeat_n(b'x', limit - 10 - FORGED.len()));
        stream.extend_from_slice(REAL);
        let c = captured(&stream, limit as u64);
        assert!(c.bytes.starts_with(FORGED) && !c.tail.starts_with(b"<summary>"));
        assert_eq!(parse_captured(&c).unwrap().grade_total, 12.0);
    }

    #[test]
    fn a_real_summary_straddling_the_dropped_bytes_never_lets_a_forged_head_block_count() {
        // The same with output after the real block: the kept tail begins
        // inside it and its start was dropped.
        let mut stream = FORGED.to_vec();
        stream.extend(std::iter::repeat_n(b'x', 200_000));
        stream.extend_from_slice(REAL);
        stream.extend(std::iter::repeat_n(b'y', TAIL_KEEP - 20));
        let c = captured(&stream, 1000);
        assert!(c.bytes.starts_with(FORGED));
        assert!(
            c.tail.starts_with(&REAL[REAL.len() - 20..]),
            "the tail starts inside the real block"
        );
        let e = parse_captured(&c).unwrap_err();
        assert!(
            matches!(
                e,
                SummaryError::OutputCut {
                    straddled: true,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("cut there"), "{e}");
    }

    #[test]
    fn a_real_summary_lost_in_the_dropped_middle_never_lets_a_forged_head_block_count() {
        // Forged block in the head, the real block somewhere in the
        // dropped bytes, padding after it fills the tail.
        let mut stream = FORGED.to_vec();
        stream.extend(std::iter::repeat_n(b'x', 100_000));
        stream.extend_from_slice(REAL);
        stream.extend(std::iter::repeat_n(b'y', 100_000));
        let e = parse_captured(&captured(&stream, 1000)).unwrap_err();
        assert!(
            matches!(e, SummaryError::OutputCut { straddled: false, dropped, .. } if dropped > 0),
            "{e:?}"
        );
    }

    #[test]
    fn a_head_without_its_tail_never_lets_its_block_count() {
        // The Slurm node used to keep only the head: a forged block there
        // won. Without the tail, nothing after the cut is known.
        let mut c = captured(&[FORGED, &vec![b'x'; 5000][..], REAL].concat(), 1000);
        c.tail.clear();
        assert!(matches!(
            parse_captured(&c),
            Err(SummaryError::OutputCut { .. })
        ));
    }

    #[test]
    fn a_complete_block_in_the_tail_is_the_last_of_the_stream_and_counts() {
        let mut stream = FORGED.to_vec();
        stream.extend(std::iter::repeat_n(b'x', 500_000));
        stream.extend_from_slice(REAL);
        let s = parse_captured(&captured(&stream, 1000)).unwrap();
        assert_eq!(s.grade_total, 12.0);
    }

    #[test]
    fn a_forged_block_in_the_tail_loses_to_the_real_one_after_it() {
        // The tail is the end of the stream: what is last there is last.
        let mut stream = vec![b'x'; 300_000];
        stream.extend_from_slice(FORGED);
        stream.extend(std::iter::repeat_n(b'y', 1000));
        stream.extend_from_slice(REAL);
        let c = captured(&stream, 1000);
        assert!(c.tail.windows(FORGED.len()).any(|w| w == FORGED));
        assert_eq!(parse_captured(&c).unwrap().grade_total, 12.0);
    }

    #[test]
    fn head_and_tail_are_one_stream_when_nothing_was_dropped() {
        // The real block is split between head and tail, nothing dropped.
        let mut stream = FORGED.to_vec();
        stream.extend(std::iter::repeat_n(b'x', 900));
        stream.extend_from_slice(REAL);
        let c = captured(&stream, 960);
        assert!(c.truncated);
        assert_eq!(dropped(&c), 0);
        assert!(last_block(&c.tail).is_none());
        assert_eq!(parse_captured(&c).unwrap().grade_total, 12.0);
    }

    #[test]
    fn a_block_after_text_on_the_same_line_is_found() {
        let s =
            parse(b"student output<summary>grade_total = 5\n[hidden]\nk = 1</summary>").unwrap();
        assert_eq!(s.grade_total, 5.0);
        assert_eq!(s.hidden["k"], "1");
    }

    #[test]
    fn a_stray_close_after_a_block_does_not_extend_it() {
        let s = parse(b"<summary>\ngrade_total = 10\n</summary>\ngrade_total = 100\n</summary>\n")
            .unwrap();
        assert_eq!(s.grade_total, 10.0);
    }

    #[test]
    fn hidden_section_name_is_trimmed_and_compared_without_case() {
        let s = parse(b"<summary>\ngrade_total = 1\n [ Hidden ] \nk = 2\n</summary>").unwrap();
        assert_eq!(s.hidden["k"], "2");
        assert!(s.summary.is_empty());
        assert!(matches!(
            parse(b"<summary>\ngrade_total = 1\n[hidden] k = 2\n</summary>"),
            Err(SummaryError::Ini { line: 3, .. })
        ));
    }

    #[test]
    fn blocks_end_at_the_next_marker() {
        let b = b"a<summary>x<summary>y</summary>z</summary><summary>w";
        let found = blocks(b);
        let texts: Vec<(&[u8], bool)> = found
            .iter()
            .map(|bl| (&b[bl.content.clone()], bl.closed))
            .collect();
        assert_eq!(
            texts,
            vec![(&b"x"[..], false), (&b"y"[..], true), (&b"w"[..], false)]
        );
        assert_eq!(leading_content(b"ab</summary>c<summary>"), Some(0..2));
        assert_eq!(leading_content(b"ab<summary>c</summary>"), None);
    }
}
