//! Text on its way to a terminal or a log, and the terminal itself.
//!
//! Promises:
//! - **Nothing a registry or an image sent moves the cursor.** Error chains, warnings, progress
//!   lines, log fields and table cells pass through [`escape`], which shows every control
//!   character (C0 including ESC, CR, LF and TAB, DEL, C1 U+0080..U+009F) as a visible escape
//!   (`\x1b`, `\r`, `\n`, `\u009b`, in Go's `%q` style). A registry's message can no longer clear
//!   a line, retitle the window or forge a `Status:` line of haul's own.
//! - **JSON stays JSON.** serde_json escapes C0 but writes DEL and C1 raw; [`write_json`] writes
//!   those as `\u007f`…`\u009f` too: the same document, parsed, with no raw control character.
//! - **A hidden prompt gives the terminal back.** [`read_hidden_line`] turns echo off for the
//!   password and on again after, and [`restore`] does it from the interrupt path, which exits
//!   without unwinding.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{self, BufRead as _, Write};
use std::sync::Mutex;

use rustix::termios::{self, LocalModes, OptionalActions, Termios};

/// `text` with every control character shown as an escape; borrowed when there is none.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Writes `value` as pretty JSON and a newline, with DEL and C1 controls escaped (serde_json
/// leaves them raw; `\u00XX` is the same string to any JSON reader).
pub fn write_json(out: &mut impl Write, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    writeln!(out, "{}", escape_json(&text))?;
    Ok(())
}

/// One JSON document on one line (events), with DEL and C1 controls escaped.
pub fn json_line(value: &impl serde::Serialize) -> serde_json::Result<String> {
    serde_json::to_string(value).map(|s| escape_json(&s).into_owned())
}

/// serde_json's output with the control characters it leaves raw written as `\u00XX`. In
/// serialized JSON a raw DEL or C1 character can only sit inside a string, where the escape means
/// the same character.
fn escape_json(json: &str) -> Cow<'_, str> {
    if !json.chars().any(raw_in_json) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if raw_in_json(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// The controls serde_json writes as they are: DEL and C1.
fn raw_in_json(c: char) -> bool {
    c.is_control() && u32::from(c) >= 0x7f
}

/// The field formatter for haul's logs (`-D`, `RUST_LOG`): each value, `%display` ones included
/// (tracing-subscriber writes those raw and leaves CR and LF in messages), goes through
/// [`escape`], so one event stays one line whatever a registry put in it.
pub fn log_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    use tracing_subscriber::field::MakeExt as _;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let text = format!("{value:?}");
        if field.name() == "message" {
            write!(w, "{}", escape(&text))
        } else {
            write!(w, "{field}={}", escape(&text))
        }
    })
    .delimited(" ")
}

/// The terminal settings to put back if the process is interrupted at a hidden prompt.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// Asks `prompt` on stderr and reads one line from stdin (a terminal) without echoing it, like
/// docker's password prompt. The line ending is dropped.
pub fn read_hidden_line(prompt: &str) -> io::Result<String> {
    let stdin = io::stdin();
    let original = termios::tcgetattr(&stdin)?;
    let mut hidden = original.clone();
    hidden.local_modes.remove(LocalModes::ECHO);
    if let Ok(mut saved) = SAVED.lock() {
        *saved = Some(original.clone());
    }
    // Echo goes off before the prompt shows, so nothing typed after it is ever echoed.
    termios::tcsetattr(&stdin, OptionalActions::Now, &hidden)?;
    let read = prompt_line(prompt);
    let restored = termios::tcsetattr(&stdin, OptionalActions::Now, &original);
    if let Ok(mut saved) = SAVED.lock() {
        *saved = None;
    }
    // The Enter the user typed was not echoed either.
    eprintln!();
    let line = read?;
    restored?;
    Ok(line)
}

/// Asks `prompt` on stderr (stdout carries results) and reads one line from stdin, without its
/// line ending.
pub fn prompt_line(prompt: &str) -> io::Result<String> {
    let mut err = io::stderr().lock();
    write!(err, "{prompt}")?;
    err.flush()?;
    drop(err);
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// Puts back the terminal settings a hidden prompt changed, if one is showing.
pub fn restore() {
    let saved = SAVED.lock().ok().and_then(|mut s| s.take());
    if let Some(original) = saved {
        let _ = termios::tcsetattr(io::stdin(), OptionalActions::Now, &original);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_sent() {
        let cases = [
            ("plain text, ünïcode ✓", "plain text, ünïcode ✓"),
            ("\r\x1b[2KStatus: ok", r"\r\x1b[2KStatus: ok"),
            ("a\nb\tc", r"a\nb\tc"),
            ("\x00\x07\x08\x0c\x7f", r"\x00\x07\x08\x0c\x7f"),
            ("\u{80}\u{9b}31m\u{9f}", r"\u0080\u009b31m\u009f"),
            // Not controls: left for the terminal to draw.
            ("\u{a0}\u{200b}", "\u{a0}\u{200b}"),
            // Backslashes are kept, so escaping twice changes nothing.
            (r"C:\x1b", r"C:\x1b"),
        ];
        for (raw, shown) in cases {
            assert_eq!(escape(raw), shown, "{raw:?}");
            assert_eq!(escape(shown), shown, "{raw:?} escaped twice");
        }
        assert!(matches!(escape("ok"), Cow::Borrowed(_)));
    }

    #[test]
    fn json_keeps_its_meaning_without_raw_controls() {
        let value = serde_json::json!({"k\u{9b}": "\x1b[2J\u{9b}H\x7f\u{85}ü"});
        let mut out = Vec::new();
        write_json(&mut out, &value).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, value);
        let line = json_line(&value).unwrap();
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&line).unwrap(),
            value
        );
    }
}
