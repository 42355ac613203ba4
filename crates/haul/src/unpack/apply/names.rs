//! The pure part of the applier: lexical cleaning of tar names, whiteout naming rules and PAX
//! time parsing. Nothing here touches the file system.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::{Path, PathBuf};

pub(crate) const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
pub(crate) const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Left by the cache mode in a directory the layer did not list (see `apply_layer_for_cache`).
/// In the aufs namespace, so no layer can create it and any applier skips it.
pub(crate) const IMPLICIT_MARKER: &[u8] = b".wh..wh.haul.implicit";

/// A tar name made relative to the root: leading `/` and `./` dropped, `.` and `..` resolved
/// lexically. `None` when the name climbs above the root. The empty path is the root itself.
///
/// The result holds only plain components, so the kernel never sees a `..` from the tar.
pub(super) fn clean(raw: &[u8]) -> Option<PathBuf> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    Some(PathBuf::from(OsString::from_vec(parts.join(&b'/'))))
}

/// A raw tar name as a path, for errors about names that could not be cleaned.
pub(super) fn raw_path(raw: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(raw))
}

/// What a cleaned entry path means for the layer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Role<'a> {
    /// An ordinary entry to create.
    Plain,
    /// `DIR/.wh.NAME`: remove `DIR/NAME` from lower layers.
    Whiteout(&'a OsStr),
    /// `DIR/.wh..wh..opq`: hide everything lower layers put in `DIR`.
    Opaque,
    /// aufs bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`, …): meaningless outside aufs.
    AufsMeta,
    /// `.wh.`, `.wh..`, `.wh...`: would name the directory itself or its parent.
    BadWhiteout,
}

pub(crate) fn role(path: &Path) -> Role<'_> {
    let mut comps = path.iter().map(OsStr::as_bytes).peekable();
    while let Some(comp) = comps.next() {
        let last = comps.peek().is_none();
        if last && comp == OPAQUE_MARKER {
            return Role::Opaque;
        }
        if comp.starts_with(WHITEOUT_META_PREFIX) {
            return Role::AufsMeta;
        }
        if last && let Some(name) = comp.strip_prefix(WHITEOUT_PREFIX) {
            return match name {
                b"" | b"." | b".." => Role::BadWhiteout,
                _ => Role::Whiteout(OsStr::from_bytes(name)),
            };
        }
    }
    Role::Plain
}

/// A PAX time (`"1704067200.5"`, `"-1.25"`) as (seconds, nanoseconds) with nanoseconds in
/// `0..1e9`, as `struct timespec` wants it: -1.25 s is (-2, 750_000_000).
pub(super) fn parse_pax_time(text: &[u8]) -> Option<(i64, i64)> {
    let (negative, text) = match text.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = match text.iter().position(|&b| b == b'.') {
        Some(dot) => (&text[..dot], &text[dot + 1..]),
        None => (text, &b""[..]),
    };
    if int.is_empty() || !int.iter().chain(frac).all(u8::is_ascii_digit) {
        return None;
    }
    let secs: i64 = std::str::from_utf8(int).ok()?.parse().ok()?;
    // Digits past the ninth are below a nanosecond: truncate like GNU tar does.
    let mut nanos: i64 = 0;
    for i in 0..9 {
        nanos = nanos * 10 + frac.get(i).map_or(0, |d| i64::from(d - b'0'));
    }
    if !negative {
        return Some((secs, nanos));
    }
    if nanos == 0 {
        Some((secs.checked_neg()?, 0))
    } else {
        Some((secs.checked_neg()?.checked_sub(1)?, 1_000_000_000 - nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_table() {
        let good: &[(&str, &str)] = &[
            ("a", "a"),
            ("./a/b", "a/b"),
            ("/etc/passwd", "etc/passwd"),
            ("//a//b/", "a/b"),
            ("a/./b/.", "a/b"),
            ("a/b/../c", "a/c"),
            ("a/..", ""),
            ("./", ""),
            (".", ""),
            ("", ""),
            ("/", ""),
            ("a/.wh..", "a/.wh.."),
            ("...", "..."),
        ];
        for (raw, want) in good {
            assert_eq!(
                clean(raw.as_bytes()).as_deref(),
                Some(Path::new(want)),
                "{raw}"
            );
        }
        let bad = ["..", "../x", "a/../../x", "/../x", "./../x", "a/b/../../.."];
        for raw in bad {
            assert_eq!(clean(raw.as_bytes()), None, "{raw}");
        }
    }

    #[test]
    fn role_table() {
        let cases: &[(&str, Role<'_>)] = &[
            ("a/b", Role::Plain),
            (".wh", Role::Plain),
            ("a/.wh.b", Role::Whiteout(OsStr::new("b"))),
            (".wh.top", Role::Whiteout(OsStr::new("top"))),
            ("a/.wh..hidden", Role::Whiteout(OsStr::new(".hidden"))),
            ("a/.wh..wh..opq", Role::Opaque),
            (".wh..wh..opq", Role::Opaque),
            (".wh..wh.plnk", Role::AufsMeta),
            (".wh..wh.plnk/123.456", Role::AufsMeta),
            ("a/.wh..wh.aufs", Role::AufsMeta),
            (".wh..wh.haul.implicit", Role::AufsMeta),
            ("a/.wh.", Role::BadWhiteout),
            ("a/.wh..", Role::BadWhiteout),
            ("a/.wh...", Role::BadWhiteout),
            // Only the last component is a whiteout; a directory named so is just a name.
            (".wh.d/f", Role::Plain),
        ];
        for (path, want) in cases {
            assert_eq!(&role(Path::new(path)), want, "{path}");
        }
    }

    #[test]
    fn pax_time_table() {
        let cases: &[(&str, Option<(i64, i64)>)] = &[
            ("1704067200", Some((1_704_067_200, 0))),
            ("1704067200.5", Some((1_704_067_200, 500_000_000))),
            ("1.123456789999", Some((1, 123_456_789))),
            ("0.000000001", Some((0, 1))),
            ("-1", Some((-1, 0))),
            ("-1.25", Some((-2, 750_000_000))),
            ("1.", Some((1, 0))),
            ("", None),
            (".5", None),
            ("1.2.3", None),
            ("1e9", None),
            ("+1", None),
            ("99999999999999999999", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_pax_time(text.as_bytes()), *want, "{text}");
        }
    }

    /// Properties over arbitrary names and times, a fixed number of cases each (see
    /// `tests/parsers_prop.rs` for the whole-layer ones).
    mod properties {
        use std::path::Component;

        use proptest::prelude::*;

        use super::super::*;

        /// Bytes a tar name is made of, with the separators and dots the cleaning is about.
        fn raw_name() -> impl Strategy<Value = Vec<u8>> {
            prop::collection::vec(
                prop_oneof![
                    4 => prop::sample::select(&b"/./.a"[..]),
                    1 => any::<u8>(),
                ],
                0..40,
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

            #[test]
            fn a_cleaned_name_is_plain_components_below_the_root(raw in raw_name()) {
                let climbs = raw.split(|&b| b == b'/').any(|c| c == b"..");
                match clean(&raw) {
                    Some(path) => {
                        prop_assert!(
                            path.components().all(|c| matches!(c, Component::Normal(_))),
                            "{:?}", path
                        );
                        prop_assert_eq!(clean(path.as_os_str().as_bytes()), Some(path.clone()));
                        let _ = role(&path);
                    }
                    None => prop_assert!(climbs, "{:?} refused without a `..`", raw),
                }
            }

            #[test]
            fn pax_times_are_the_decimal_value_as_a_timespec(
                negative in any::<bool>(),
                int in "[0-9]{1,19}",
                frac in prop::option::of("[0-9]{0,14}"),
            ) {
                let text = format!(
                    "{}{int}{}",
                    if negative { "-" } else { "" },
                    frac.as_deref().map(|f| format!(".{f}")).unwrap_or_default()
                );
                let Some((secs, nanos)) = parse_pax_time(text.as_bytes()) else {
                    // Only a number of seconds beyond i64 is refused.
                    prop_assert!(int.parse::<i64>().is_err(), "{} refused", text);
                    return Ok(());
                };
                prop_assert!((0..1_000_000_000).contains(&nanos), "{}", text);
                // Digits past the ninth are dropped (toward zero), as GNU tar does.
                let digits = format!("{:0<9}", frac.unwrap_or_default());
                let magnitude = i128::from(int.parse::<i64>().unwrap_or(i64::MAX)) * 1_000_000_000
                    + digits[..9].parse::<i128>().unwrap_or(0);
                let want = if negative { -magnitude } else { magnitude };
                prop_assert_eq!(i128::from(secs) * 1_000_000_000 + i128::from(nanos), want, "{}", text);
            }

            #[test]
            fn any_pax_time_text_is_a_timespec_or_nothing(text in prop::collection::vec(any::<u8>(), 0..24)) {
                if let Some((_, nanos)) = parse_pax_time(&text) {
                    prop_assert!((0..1_000_000_000).contains(&nanos));
                }
            }
        }
    }
}
