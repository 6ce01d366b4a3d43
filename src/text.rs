//! Untrusted text quoted in a message, a table or an answer: on one line
//! and of bounded length. Pure; shared by the hook's answers, the
//! manifest's errors and the email's table of tests.

/// `s` on one line (control characters as spaces); when it has more than
/// `max` characters, its first `max` followed by `…`.
pub fn one_line(s: &str, max: usize) -> String {
    let line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.chars().count() <= max {
        return line;
    }
    let mut cut: String = line.chars().take(max).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_replaces_controls_and_cuts_with_a_mark() {
        assert_eq!(one_line("a\r\nb\tc", 10), "a  b c");
        assert_eq!(one_line("abcdef", 6), "abcdef");
        assert_eq!(one_line("abcdefg", 6), "abcdef…");
        assert_eq!(one_line("ééééé", 3), "ééé…");
    }
}
