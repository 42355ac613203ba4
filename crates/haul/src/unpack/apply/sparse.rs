//! GNU sparse files in PAX form, as GNU tar writes them with `--format=posix --sparse`: the map
//! of data runs and the real size, read from `GNU.sparse.*` records (versions 0.0 and 0.1) or
//! from the head of the entry's data (version 1.0). Old-GNU `S` entries are expanded by the tar
//! crate itself.
//!
//! Everything here is checked before a byte is written: runs in order, not overlapping, inside
//! the real size, and adding up to exactly the data the entry carries. The map of version 1.0 is
//! read with a bound on its length, so a header cannot make the applier hold more than a few
//! MiB of map.

use std::io::{self, Read};

use super::SparseProblem;

/// More runs than any real file has (a 4 GiB file of alternating 4 KiB blocks has half a
/// million); 16 bytes each in memory.
const MAX_RUNS: usize = 1 << 20;
/// Digits of the largest u64.
const MAX_DIGITS: usize = 20;
const BLOCK: usize = 512;

/// One run of data: `len` bytes at `offset` of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    pub offset: u64,
    pub len: u64,
}

/// A PAX sparse entry, from its records.
#[derive(Debug)]
pub(super) struct PaxSparse {
    /// `GNU.sparse.name`: the file's real name (the header holds `…/GNUSparseFile.N/name`).
    pub name: Option<Vec<u8>>,
    /// The size the file has, holes included.
    pub real_size: u64,
    /// The runs of version 0.x; `None` for version 1.0, whose map heads the data.
    pub runs: Option<Vec<Run>>,
}

/// Why the records do not describe a sparse file haul can expand.
#[derive(Debug)]
pub(super) enum Refusal {
    /// A version haul does not know.
    Unsupported,
    Bad(SparseProblem),
}

fn number(text: &[u8]) -> Result<u64, Refusal> {
    if text.is_empty() || text.len() > MAX_DIGITS || !text.iter().all(u8::is_ascii_digit) {
        return Err(Refusal::Bad(SparseProblem::BadNumber));
    }
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(Refusal::Bad(SparseProblem::BadNumber))
}

/// The sparse description in `records` (key, value), if any.
pub(super) fn from_pax<'a>(
    records: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<Option<PaxSparse>, Refusal> {
    let (mut major, mut minor, mut name, mut size, mut numblocks, mut map) =
        (None, None, None, None, None, None);
    // Version 0.0 repeats offset and numbytes, one pair per run, in order.
    let mut pairs: Vec<u64> = Vec::new();
    let mut any = false;
    for (key, value) in records {
        let Some(key) = key.strip_prefix(b"GNU.sparse.") else {
            continue;
        };
        any = true;
        match key {
            b"major" => major = Some(value),
            b"minor" => minor = Some(value),
            b"name" => name = Some(value.to_vec()),
            // 0.x says `size`, 1.0 `realsize`.
            b"size" | b"realsize" => size = Some(number(value)?),
            b"numblocks" => numblocks = Some(number(value)?),
            b"map" => map = Some(value),
            b"offset" | b"numbytes" => {
                // Offsets at even places, lengths at odd ones.
                if (key == b"offset") != pairs.len().is_multiple_of(2) {
                    return Err(Refusal::Bad(SparseProblem::BadMap));
                }
                if pairs.len() >= 2 * MAX_RUNS {
                    return Err(Refusal::Bad(SparseProblem::BadMap));
                }
                pairs.push(number(value)?);
            }
            _ => {}
        }
    }
    if !any {
        return Ok(None);
    }
    let version_1 = match (major, minor) {
        (Some(b"1"), Some(b"0")) => true,
        (Some(b"0"), Some(b"0" | b"1")) => false,
        (None, None) if map.is_some() || !pairs.is_empty() => false,
        _ => return Err(Refusal::Unsupported),
    };
    let real_size = size.ok_or(Refusal::Bad(SparseProblem::MissingSize))?;
    let runs = if version_1 {
        None
    } else {
        let numbers = match map {
            Some(_) if !pairs.is_empty() => return Err(Refusal::Bad(SparseProblem::BadMap)),
            Some([]) => Vec::new(),
            Some(text) => {
                let mut out = Vec::new();
                for n in text.split(|&b| b == b',') {
                    if out.len() >= 2 * MAX_RUNS {
                        return Err(Refusal::Bad(SparseProblem::BadMap));
                    }
                    out.push(number(n)?);
                }
                out
            }
            None => pairs,
        };
        if numbers.len() % 2 != 0
            || numblocks.is_some_and(|n| usize::try_from(n).ok() != Some(numbers.len() / 2))
        {
            return Err(Refusal::Bad(SparseProblem::BadMap));
        }
        let runs: Vec<Run> = numbers
            .chunks_exact(2)
            .map(|p| Run {
                offset: p[0],
                len: p[1],
            })
            .collect();
        Some(runs)
    };
    Ok(Some(PaxSparse {
        name,
        real_size,
        runs,
    }))
}

/// Reads version 1.0's map from the head of the entry's data (`data_size` bytes in all): decimal
/// numbers, one per line (the count, then offset and length of each run), padded with NULs to
/// a 512-byte block. Returns the runs and the bytes of data that follow the map.
pub(super) fn read_map_v1(entry: &mut dyn Read, data_size: u64) -> io::Result<(Vec<Run>, u64)> {
    let bad = |problem| io::Error::new(io::ErrorKind::InvalidData, BadMap(problem));
    let mut block = [0u8; BLOCK];
    let mut consumed = 0u64;
    let mut pos = BLOCK;
    let mut numbers: Vec<u64> = Vec::new();
    let mut wanted: Option<u64> = None;
    let mut digits: Vec<u8> = Vec::with_capacity(MAX_DIGITS);
    loop {
        if let Some(count) = wanted
            && numbers.len() as u64 == 2 * count
        {
            break;
        }
        if pos == BLOCK {
            if consumed + BLOCK as u64 > data_size {
                return Err(bad(SparseProblem::DataMismatch));
            }
            entry.read_exact(&mut block)?;
            consumed += BLOCK as u64;
            pos = 0;
        }
        let byte = block[pos];
        pos += 1;
        if byte != b'\n' {
            if !byte.is_ascii_digit() || digits.len() == MAX_DIGITS {
                return Err(bad(SparseProblem::BadNumber));
            }
            digits.push(byte);
            continue;
        }
        let n = number(&digits).map_err(|_| bad(SparseProblem::BadNumber))?;
        digits.clear();
        match wanted {
            None => {
                // Every run takes at least four bytes of map ("0\n0\n"): a count the data
                // cannot hold is a lie, and is refused before anything is reserved for it.
                if n > MAX_RUNS as u64 || n.saturating_mul(4) > data_size {
                    return Err(bad(SparseProblem::BadMap));
                }
                wanted = Some(n);
            }
            Some(_) => numbers.push(n),
        }
    }
    let runs = numbers
        .chunks_exact(2)
        .map(|p| Run {
            offset: p[0],
            len: p[1],
        })
        .collect();
    Ok((runs, data_size - consumed))
}

/// The error inside an `io::Error` from [`read_map_v1`].
#[derive(Debug, thiserror::Error)]
#[error("bad sparse map")]
pub(super) struct BadMap(pub SparseProblem);

/// Checks the runs against the real size and the data the entry carries after its map.
pub(super) fn check_runs(runs: &[Run], real_size: u64, data: u64) -> Result<(), SparseProblem> {
    let mut end = 0u64;
    let mut total = 0u64;
    for run in runs {
        let run_end = run
            .offset
            .checked_add(run.len)
            .ok_or(SparseProblem::BadRuns)?;
        if run.offset < end || run_end > real_size {
            return Err(SparseProblem::BadRuns);
        }
        end = run_end;
        total = total.checked_add(run.len).ok_or(SparseProblem::BadRuns)?;
    }
    if total != data {
        return Err(SparseProblem::DataMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(records: &[(&str, &str)]) -> Result<Option<PaxSparse>, Refusal> {
        from_pax(records.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())))
    }

    fn runs(pairs: &[(u64, u64)]) -> Vec<Run> {
        pairs
            .iter()
            .map(|&(offset, len)| Run { offset, len })
            .collect()
    }

    #[test]
    fn versions_and_their_maps() {
        assert!(parse(&[("path", "x")]).unwrap().is_none());
        let v00 = parse(&[
            ("GNU.sparse.size", "100"),
            ("GNU.sparse.numblocks", "2"),
            ("GNU.sparse.offset", "0"),
            ("GNU.sparse.numbytes", "10"),
            ("GNU.sparse.offset", "50"),
            ("GNU.sparse.numbytes", "5"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(v00.real_size, 100);
        assert_eq!(v00.runs, Some(runs(&[(0, 10), (50, 5)])));
        let v01 = parse(&[
            ("GNU.sparse.major", "0"),
            ("GNU.sparse.minor", "1"),
            ("GNU.sparse.name", "dir/file"),
            ("GNU.sparse.size", "100"),
            ("GNU.sparse.numblocks", "1"),
            ("GNU.sparse.map", "4,6"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(v01.name.as_deref(), Some(&b"dir/file"[..]));
        assert_eq!(v01.runs, Some(runs(&[(4, 6)])));
        let v10 = parse(&[
            ("GNU.sparse.major", "1"),
            ("GNU.sparse.minor", "0"),
            ("GNU.sparse.realsize", "7"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((v10.real_size, v10.runs), (7, None));
    }

    #[test]
    fn malformed_records_are_refused() {
        let unsupported = [
            vec![("GNU.sparse.major", "1")],
            vec![("GNU.sparse.major", "2"), ("GNU.sparse.minor", "0")],
            vec![("GNU.sparse.name", "x")],
        ];
        for records in unsupported {
            assert!(
                matches!(parse(&records), Err(Refusal::Unsupported)),
                "{records:?}"
            );
        }
        let bad = [
            vec![("GNU.sparse.map", "1,2")],
            vec![("GNU.sparse.size", "-1"), ("GNU.sparse.map", "")],
            vec![("GNU.sparse.size", "1"), ("GNU.sparse.map", "1,2,3")],
            vec![("GNU.sparse.size", "1"), ("GNU.sparse.map", "1,+2")],
            vec![
                ("GNU.sparse.size", "1"),
                ("GNU.sparse.numblocks", "2"),
                ("GNU.sparse.map", "1,2"),
            ],
            vec![
                ("GNU.sparse.size", "1"),
                ("GNU.sparse.numbytes", "1"),
                ("GNU.sparse.offset", "1"),
            ],
            vec![
                ("GNU.sparse.size", "99999999999999999999999"),
                ("GNU.sparse.map", ""),
            ],
        ];
        for records in bad {
            assert!(
                matches!(parse(&records), Err(Refusal::Bad(_))),
                "{records:?}"
            );
        }
    }

    fn v1(map: &str, data: &[u8]) -> Vec<u8> {
        let mut out = map.as_bytes().to_vec();
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn version_1_maps_head_the_data() {
        let bytes = v1("2\n0\n3\n10\n2\n", b"abcde");
        let (got, rest) = read_map_v1(&mut &bytes[..], bytes.len() as u64).unwrap();
        assert_eq!(got, runs(&[(0, 3), (10, 2)]));
        assert_eq!(rest, 5);
        // A map spanning blocks.
        let long: String = std::iter::once("100\n".to_owned())
            .chain((0..100).map(|i| format!("{}\n1\n", i * 1000)))
            .collect();
        let bytes = v1(&long, &[1; 100]);
        let (got, rest) = read_map_v1(&mut &bytes[..], bytes.len() as u64).unwrap();
        assert_eq!((got.len(), rest), (100, 100));
    }

    #[test]
    fn version_1_maps_that_lie_are_refused_before_reading_on() {
        let cases = [
            // A count the data cannot hold: nothing is reserved for it.
            v1("18446744073709551615\n", b""),
            v1("1000\n0\n1\n", b"x"),
            v1("1\nx\n1\n", b"x"),
            v1("1\n123456789012345678901\n1\n", b"x"),
            // The map runs past the data.
            b"2\n0\n1\n".to_vec(),
        ];
        for bytes in cases {
            let err = read_map_v1(&mut &bytes[..], bytes.len() as u64).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        }
    }

    #[test]
    fn runs_must_be_ordered_inside_the_file_and_match_the_data() {
        assert_eq!(check_runs(&runs(&[(0, 3), (10, 2)]), 12, 5), Ok(()));
        assert_eq!(check_runs(&runs(&[(12, 0)]), 12, 0), Ok(()));
        assert_eq!(check_runs(&[], 1 << 60, 0), Ok(()));
        let bad = [
            (runs(&[(0, 3), (2, 2)]), 12, 5, SparseProblem::BadRuns),
            (runs(&[(10, 2), (0, 3)]), 12, 5, SparseProblem::BadRuns),
            (runs(&[(10, 3)]), 12, 3, SparseProblem::BadRuns),
            (runs(&[(u64::MAX, 2)]), u64::MAX, 2, SparseProblem::BadRuns),
            (runs(&[(0, 3)]), 12, 4, SparseProblem::DataMismatch),
        ];
        for (r, size, data, want) in bad {
            assert_eq!(check_runs(&r, size, data), Err(want), "{r:?}");
        }
    }
}
