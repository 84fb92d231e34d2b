//! Text that came from events (or from records built from them) printed for people: control
//! characters are written as visible escapes, so that an event cannot recolour, retitle or clear
//! a terminal, ring its bell, move the cursor or forge lines of whale's output. `--json` output
//! needs none of this (serde escapes control characters in JSON strings).

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` must not reach a terminal raw: control characters (C0, DEL, C1), the Unicode line
/// and paragraph separators, and the bidirectional controls that can reorder what is shown.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

fn escape(s: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(|c| unsafe_char(c) && !keep(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            c if !unsafe_char(c) || keep(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    Cow::Owned(out)
}

/// `s` for one line of output: every unsafe character escaped, newlines and tabs included.
pub fn line(s: &str) -> Cow<'_, str> {
    escape(s, |_| false)
}

/// `s` for multi-line output (execution logs, reports): as [`line`] but newlines and tabs are
/// kept.
pub fn block(s: &str) -> Cow<'_, str> {
    escape(s, |c| c == '\n' || c == '\t')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(line("plain text ✓"), "plain text ✓");
        assert!(matches!(line("plain"), Cow::Borrowed(_)));
        assert_eq!(line("\u{1b}[31mred\u{7}"), "\\u{1b}[31mred\\u{7}");
        assert_eq!(line("a\nb\tc\rd"), "a\\nb\\tc\\rd");
        assert_eq!(line("\u{9b}2J\u{7f}"), "\\u{9b}2J\\u{7f}");
        assert_eq!(line("x\u{202e}y\u{2028}"), "x\\u{202e}y\\u{2028}");
        assert_eq!(
            block("a\n\u{1b}]0;title\u{7}\tb"),
            "a\n\\u{1b}]0;title\\u{7}\tb"
        );
        for s in [
            line("\u{1b}\u{7}\u{0}\u{9b}"),
            block("\u{1b}\u{7}\u{0}\u{9b}"),
        ] {
            assert!(!s.chars().any(|c| c.is_control()), "{s:?}");
        }
    }
}
