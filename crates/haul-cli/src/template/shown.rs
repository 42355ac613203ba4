//! Keeping an image's control characters out of a template's output without touching the
//! template's own.
//!
//! A template's text may hold tabs and newlines on purpose (`table {{.ID}}\t{{.Tag}}`,
//! `{{join .RepoTags "\n"}}`, `println`), while a label or a `created_by` may hold an escape
//! sequence meant for the user's terminal. So every string taken from the data is *marked*
//! before rendering: each control character becomes [`MARK`] followed by a stand-in character
//! (and a `MARK` in the data is doubled). Functions treat a marked string as any other. After
//! rendering, [`show`] turns each marked control into the visible escape `terminal::escape`
//! prints (`\x1b`, `\n`); the template's own characters pass as written. `json` [`unmark`]s its
//! argument first, so it encodes the data's real strings.

use std::borrow::Cow;

use crate::terminal;

/// A private-use character: it starts a marked control (or, doubled, stands for itself).
const MARK: char = '\u{10FFFD}';
/// The stand-in for control `c` is `BASE + c` (every control is below U+00A0).
const BASE: u32 = 0x10_FF00;

/// `text` with every control character (and `MARK`) marked.
pub fn mark(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() || c == MARK) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c == MARK {
            out.push(MARK);
            out.push(MARK);
        } else if let Some(stand_in) = stand_in(c) {
            out.push(MARK);
            out.push(stand_in);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn stand_in(c: char) -> Option<char> {
    if c.is_control() {
        char::from_u32(BASE + u32::from(c))
    } else {
        None
    }
}

/// Which control a stand-in character stands for.
fn control(stand_in: char) -> Option<char> {
    let code = u32::from(stand_in).checked_sub(BASE)?;
    char::from_u32(code).filter(|c| c.is_control())
}

/// Walks `text`, handing each character and, for a marked control, the control itself to `emit`.
/// A `MARK` cut from its partner (by `slice` or `truncate`) is dropped.
fn decode(text: &str, mut emit: impl FnMut(Piece)) {
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != MARK {
            emit(Piece::Plain(c));
            continue;
        }
        match chars.peek().copied() {
            Some(MARK) => {
                chars.next();
                emit(Piece::Plain(MARK));
            }
            Some(next) => {
                if let Some(control) = control(next) {
                    chars.next();
                    emit(Piece::Control(control));
                }
            }
            None => {}
        }
    }
}

enum Piece {
    Plain(char),
    Control(char),
}

/// The data's real string, marks undone.
pub fn unmark(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    decode(text, |piece| match piece {
        Piece::Plain(c) | Piece::Control(c) => out.push(c),
    });
    out
}

/// A rendered template as it may reach a terminal: the data's controls shown as escapes, the
/// template's own characters as written.
pub fn show(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut buf = [0u8; 4];
    decode(text, |piece| match piece {
        Piece::Plain(c) => out.push(c),
        Piece::Control(c) => out.push_str(&terminal::escape(c.encode_utf8(&mut buf))),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marked_data_is_shown_escaped_and_unmarked_exactly() {
        let cases = [
            "plain ✓",
            "\x1b]0;owned\x07",
            "a\tb\nc\r",
            "\u{85}\u{9b}2J\x7f",
            "mark \u{10FFFD} alone, \u{10FFFD}\u{10FF1B} a fake pair",
            "stand-ins \u{10FF1B}\u{10FF0A} raw",
        ];
        for raw in cases {
            let marked = mark(raw);
            assert_eq!(unmark(&marked), raw, "{raw:?}");
            let shown = show(&marked);
            assert!(!shown.chars().any(char::is_control), "{shown:?}");
            assert_eq!(shown, terminal::escape(raw), "{raw:?}");
        }
    }

    #[test]
    fn the_templates_own_controls_pass() {
        let rendered = format!("{}\t{}\n", mark("a\tb"), mark("x"));
        assert_eq!(show(&rendered), "a\\tb\tx\n");
    }

    #[test]
    fn a_mark_cut_from_its_partner_is_dropped() {
        let marked = mark("ab\x1b");
        let cut: String = marked.chars().take(3).collect();
        assert_eq!(show(&cut), "ab");
    }
}
