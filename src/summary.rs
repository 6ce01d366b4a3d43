//! The `<summary>` block of `test_all`'s stdout: where the grade comes from.
//!
//! Owns finding the block and reading it as INI (rust-ini). It never runs
//! anything and never decides a job's status beyond "a grade was read or
//! not, and why". stdout is untrusted: student code may print anything,
//! including a forged block, so only the **last complete** block counts
//! (test_all prints its summary at the very end; a block cut off by a kill
//! is ignored and the one before it counts, which gives partial credit).
//! Bytes that are not UTF-8 are replaced, never rejected.

use std::collections::BTreeMap;

use ini::{Ini, ParseOption};

const OPEN: &[u8] = b"<summary>";
const CLOSE: &[u8] = b"</summary>";
/// Section whose keys are for staff only.
pub const HIDDEN_SECTION: &str = "hidden";
/// The required key.
pub const GRADE_KEY: &str = "grade_total";

/// What the summary says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub grade_total: f64,
    /// Top-level keys other than `grade_total`; keys of sections other than
    /// `[hidden]` as `section.key`.
    pub summary: BTreeMap<String, String>,
    /// Keys under `[hidden]`.
    pub hidden: BTreeMap<String, String>,
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
}

/// The text of the last complete `<summary>…</summary>` block, if any.
pub fn last_block(stdout: &[u8]) -> Option<&[u8]> {
    let close = rfind(stdout, CLOSE)?;
    let open = rfind(&stdout[..close], OPEN)?;
    Some(&stdout[open + OPEN.len()..close])
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if hay.len() < needle.len() {
        return None;
    }
    (0..=hay.len() - needle.len())
        .rev()
        .find(|&i| &hay[i..i + needle.len()] == needle)
}

/// Read the grade from captured stdout. When output was dropped, the tail
/// (the end of the stream) is read first: a block there came after
/// everything kept at the head.
pub fn parse_captured(stdout: &crate::sandbox::Captured) -> Result<Summary, SummaryError> {
    if last_block(&stdout.tail).is_some() {
        return parse(&stdout.tail);
    }
    parse(&stdout.bytes)
}

/// Read the grade from `stdout`.
pub fn parse(stdout: &[u8]) -> Result<Summary, SummaryError> {
    let block = last_block(stdout).ok_or(SummaryError::NoBlock)?;
    let text = String::from_utf8_lossy(block);
    let opt = ParseOption {
        enabled_quote: false,
        enabled_escape: false,
        enabled_indented_mutiline_value: false,
        enabled_preserve_key_leading_whitespace: false,
    };
    let ini = Ini::load_from_str_opt(&text, opt).map_err(|e| SummaryError::Ini {
        line: e.line,
        message: e.msg.to_string(),
    })?;
    let mut out = Summary::default();
    let mut grade: Option<String> = None;
    for (section, props) in ini.iter() {
        for (k, v) in props.iter() {
            let v = v.trim().to_string();
            match section {
                None if k == GRADE_KEY => grade = Some(v),
                None => {
                    out.summary.insert(k.to_string(), v);
                }
                Some(HIDDEN_SECTION) => {
                    out.hidden.insert(k.to_string(), v);
                }
                Some(s) => {
                    out.summary.insert(format!("{s}.{k}"), v);
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
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
