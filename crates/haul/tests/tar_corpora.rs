//! Real tar corpora as layers: Go's `archive/tar` testdata (PAX and global headers, GNU long names
//! and sparse files, v7 and star formats, devices, hardlinks, odd and broken headers) and Python's
//! `testtar.tar`, each pushed as a one-layer image to the real registry, pulled and unpacked by
//! haul, and compared with GNU tar extracting the same tar as root: where GNU tar extracts, haul's
//! tree equals its tree (names, types, modes, owners, sizes, contents, link targets, hardlinks,
//! xattrs, mtimes); where GNU tar refuses, haul refuses with an error, never a panic.
//!
//! Debian packages the corpora (`golang-1.19-src`, `libpython3.11-testsuite`; scripts/test
//! installs them). A missing corpus is reported as SKIPPED.

mod common;

use common::chain;

use std::path::{Path, PathBuf};

use common::harness;
use haul::progress::Silent;
use haul::unpack::{ApplyError, UnpackError, UnpackOptions, unpack};
use test_registry::{
    Compare, Format, ImageBuilder, Layer, Pusher, RealRegistry, RegistryOptions, Tree,
    gnu_tar_extract, gzip, media_types,
};

const GO_TESTDATA: &str = "/usr/share/go-1.19/src/archive/tar/testdata";
const PYTHON_TESTTAR: &str = "/usr/lib/python3.11/test/testtar.tar";

/// Every tar of the corpora, by a short name.
fn corpus() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    match std::fs::read_dir(GO_TESTDATA) {
        Ok(dir) => {
            for e in dir {
                let path = e.unwrap().path();
                if path.extension().is_some_and(|x| x == "tar") {
                    let name = format!("go/{}", path.file_name().unwrap().to_string_lossy());
                    out.push((name, path));
                }
            }
        }
        Err(_) => println!("SKIPPED: {GO_TESTDATA} is missing (package golang-1.19-src)"),
    }
    if Path::new(PYTHON_TESTTAR).is_file() {
        out.push(("python/testtar.tar".to_owned(), PYTHON_TESTTAR.into()));
    } else {
        println!("SKIPPED: {PYTHON_TESTTAR} is missing (package libpython3.11-testsuite)");
    }
    out.sort();
    out
}

/// Corpus tars holding a 60 GB sparse file: haul charges a sparse file its real size, and 60 GB is
/// past what one layer may expand to (at least 16 GiB, 64× its compressed size), so it refuses them
/// before writing anything, where GNU tar (which has no such limit) extracts them. Not run through
/// GNU tar here.
const BEYOND_THE_LAYER_LIMIT: [&str; 2] = ["go/gnu-sparse-big.tar", "go/pax-sparse-big.tar"];

/// Where haul does what docker and containerd (Go's archive/tar) do rather than what GNU tar does.
const AS_DOCKER_NOT_GNU_TAR: [(&str, &str); 3] = [
    (
        "go/pax-global-records.tar",
        "GNU tar applies a global `path` record to the members after it and fails on the empty \
         name one gets; docker and containerd ignore global records, and so does haul",
    ),
    (
        "go/pax-bad-mtime-file.tar",
        "GNU tar takes the digits before the garbage of `mtime=999xxx…`; Go's archive/tar refuses \
         the record, and so does haul",
    ),
    (
        "go/pax-nul-path.tar",
        "GNU tar cuts a PAX path at its NUL (and here extracts nothing); Go's archive/tar refuses \
         a NUL in a PAX name, and so does haul",
    ),
];

/// Where the tar crate's parser refuses what GNU tar and Go's archive/tar read: haul refuses with
/// the parser's reason.
const TAR_CRATE_REFUSES: [&str; 4] = [
    // Two GNU long-name headers for one member: GNU tar and Go take the last.
    "go/gnu-multi-hdrs.tar",
    // Two PAX headers for one member: likewise.
    "go/pax-multi-hdrs.tar",
    // A PAX header with no member after it: GNU tar and Go end the archive there.
    "go/pax-path-hdr.tar",
    // Headers whose checksum was summed over signed bytes (HP-UX, old v7), which GNU tar and Go
    // also accept; PAX sparse files (above); and `misc/regtype-suntar`, whose Solaris `X`
    // extended header GNU tar reads and Go's archive/tar (docker, containerd) and haul refuse as
    // an unknown type. Compared without those below: with `ustar/dirtype-with-size`, a directory
    // header with a size but no content, which haul reads as Go does (see
    // `a_sized_directory_cannot_hide_the_next_entry`), and `gnu/regtype-gnu-uid`, whose uid
    // 4294967295 is chown's "leave unchanged" (-1), as docker and GNU tar pass it to chown.
    "python/testtar.tar",
];

/// Everything [`Tree`] records. `security.selinux` is the host's label, not the layer's: haul's
/// layer cache does not carry it (unpack/dirtar.rs), GNU tar restores it from the tar. Parents
/// the tar does not list get "now" from either.
fn all_since(start: i64) -> Compare {
    Compare {
        owners: true,
        mtimes: true,
        xattrs: true,
        hardlinks: true,
        ignored_xattrs: &["security.selinux"],
        made_now_since: Some(start),
    }
}

/// Python's `testtar.tar` without the members the tar crate cannot read or haul refuses,
/// cut out byte for byte (headers and content) by Python's own tarfile, which knows the corpus: the
/// rest is compared with GNU tar now.
fn python_testtar_trimmed(from: &Path, to: &Path) {
    let script = r#"
import sys, tarfile
src, dst = sys.argv[1], sys.argv[2]
drop = lambda n: (n.startswith("gnu/sparse-") or "signed-chksum" in n
    or n == "misc/regtype-suntar")
data = open(src, "rb").read()
out = bytearray()
with tarfile.open(src) as t:
    members = t.getmembers()
# A member runs from its first header to the next member's (a sparse one stores less than its
# size); the last one holds no data.
for m, after in zip(members, members[1:] + [None]):
    end = after.offset if after else m.offset_data
    if not drop(m.name):
        out += data[m.offset:end]
out += bytes(1024)
open(dst, "wb").write(out)
"#;
    let status = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// What happened to one corpus tar.
enum Outcome {
    Same,
    Fail(String),
    Note(String),
}

#[tokio::test(flavor = "multi_thread")]
async fn every_corpus_tar_unpacks_as_gnu_tar_extracts_it_or_is_refused() {
    if !rustix::process::geteuid().is_root() {
        println!("SKIPPED: GNU tar keeps owners and creates devices only as root");
        return;
    }
    let mut corpus = corpus();
    if corpus.is_empty() {
        return;
    }
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let work = tempfile::tempdir().unwrap();
    if let Some((_, path)) = corpus.iter().find(|(n, _)| n == "python/testtar.tar") {
        let trimmed = work.path().join("testtar-trimmed.tar");
        python_testtar_trimmed(path, &trimmed);
        corpus.push((
            "python/testtar.tar without PAX sparse and signed-checksum members".to_owned(),
            trimmed,
        ));
    }
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let pusher = Pusher::new(&registry.url());
    let h = harness();
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for (i, (name, path)) in corpus.iter().enumerate() {
        let tar = std::fs::read(path).unwrap();
        let layer = Layer {
            blob: test_registry::Blob::new(media_types::OCI_LAYER_GZIP, gzip(&tar)),
            diff_id: test_registry::sha256_digest(&tar),
        };
        let image = ImageBuilder::new(Format::Oci)
            .platform("linux", "amd64", None)
            .layer(layer)
            .build();
        let tag = format!("c{i}");
        pusher.push_image("corpus/tar", &tag, &image).await.unwrap();
        let reference = format!("{}/corpus/tar:{tag}", registry.host());
        h.pull(&reference).await.unwrap();
        let entry = h.store.find_ref(&reference).unwrap().unwrap();

        let ours = work.path().join(format!("haul-{i}"));
        let haul = unpack(
            &h.store,
            &entry,
            &ours,
            &UnpackOptions::for_current_user(),
            &Silent,
        );
        if BEYOND_THE_LAYER_LIMIT.contains(&name.as_str()) {
            match haul {
                Err(UnpackError::Apply {
                    source: ApplyError::TooLarge { .. },
                    ..
                }) => report.push(format!(
                    "{name}: refused before writing: a 60 GB sparse file is past the layer limit"
                )),
                other => failures.push(format!(
                    "{name}: expected the expansion limit to refuse it: {:?}",
                    other.map(drop)
                )),
            }
            continue;
        }
        let oracle = work.path().join(format!("gnu-{i}"));
        let gnu = gnu_tar_extract(path, &oracle);
        let docker_reason = AS_DOCKER_NOT_GNU_TAR
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, why)| *why);
        let outcome = match (&gnu, haul) {
            (_, Ok(_)) if *name == "go/pax-global-records.tar" => {
                // What Go's archive/tar reads: four empty files, global records ignored.
                let names: Vec<String> = Tree::of(&ours)
                    .unwrap()
                    .nodes
                    .keys()
                    .map(|p| p.display().to_string())
                    .collect();
                if names == ["file1", "file2", "file3", "file4"] {
                    Outcome::Note(format!("as docker: {}", docker_reason.unwrap_or_default()))
                } else {
                    Outcome::Fail(format!("not the four files Go reads: {names:?}"))
                }
            }
            (_, Err(e))
                if docker_reason.is_some() || TAR_CRATE_REFUSES.contains(&name.as_str()) =>
            {
                Outcome::Note(format!(
                    "haul refuses ({}){}",
                    chain(&e),
                    docker_reason
                        .map(|r| format!(", as docker: {r}"))
                        .unwrap_or_default()
                ))
            }
            (Ok(()), Ok(_)) => {
                let diff = Tree::of(&ours)
                    .unwrap()
                    .differences(&Tree::of(&oracle).unwrap(), &all_since(start));
                if diff.is_empty() {
                    Outcome::Same
                } else {
                    Outcome::Fail(format!("trees differ:\n    {}", diff.join("\n    ")))
                }
            }
            (Err(_), Err(e)) => Outcome::Note(format!("both refuse; haul: {}", chain(&e))),
            (Ok(()), Err(e)) => {
                Outcome::Fail(format!("GNU tar extracts it, haul refuses: {}", chain(&e)))
            }
            (Err(g), Ok(_)) => Outcome::Fail(format!(
                "GNU tar refuses it ({}), haul unpacks it",
                g.lines().next().unwrap_or_default()
            )),
        };
        match outcome {
            Outcome::Same => report.push(format!("{name}: same tree as GNU tar")),
            Outcome::Note(note) => report.push(format!("{name}: {note}")),
            Outcome::Fail(why) => {
                report.push(format!("{name}: FAILED"));
                failures.push(format!("{name}: {why}"));
            }
        }
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Crafted layers where the tar crate alone would read another tree than docker (Go's
// archive/tar), GNU tar and Python: each is pulled from the real registry, unpacked by haul and
// compared with GNU tar extracting the same tar.

/// One 512-byte ustar header (`magic`: `None` for a v7 header), checksummed.
fn header(name: &str, typeflag: u8, size: u64, link: &str, v7: bool) -> Vec<u8> {
    let mut h = if v7 {
        tar::Header::new_old()
    } else {
        tar::Header::new_ustar()
    };
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    // Byte for byte: the tar crate writes typeflag NUL as `0`.
    h.as_old_mut().linkflag = [typeflag];
    h.set_mode(if typeflag == b'5' { 0o750 } else { 0o640 });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    if matches!(typeflag, b'3' | b'4') {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    }
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// `data` padded to whole blocks.
fn padded(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    out.resize(data.len().div_ceil(512) * 512, 0);
    out
}

/// A regular file entry: header and content.
fn file_entry(name: &str, data: &[u8]) -> Vec<u8> {
    let mut out = header(name, b'0', data.len() as u64, "", false);
    out.extend(padded(data));
    out
}

/// A PAX extended header entry holding `records` (key, value), for the entry after it.
fn pax_entry(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut data = Vec::new();
    for (key, value) in records {
        let body = 1 + key.len() + 1 + value.len() + 1;
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        data.extend(format!("{len} {key}=").as_bytes());
        data.extend_from_slice(value);
        data.push(b'\n');
    }
    let mut out = header("././@PaxHeader", b'x', data.len() as u64, "", false);
    out.extend(padded(&data));
    out
}

/// The end-of-archive blocks.
fn end() -> Vec<u8> {
    vec![0; 1024]
}

/// One registry and store for a test's crafted layers, and GNU tar beside them.
struct Crafted {
    registry: RealRegistry,
    h: common::Harness,
    work: tempfile::TempDir,
    start: i64,
    pushed: usize,
}

impl Crafted {
    async fn new() -> Crafted {
        Crafted {
            registry: RealRegistry::start(RegistryOptions::default())
                .await
                .unwrap(),
            h: harness(),
            work: tempfile::tempdir().unwrap(),
            start: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64,
            pushed: 0,
        }
    }

    /// `tar` as a one-layer image pulled and unpacked by haul (its tree, or its error), and
    /// GNU tar's extraction of the same tar.
    async fn unpack(&mut self, tar: &[u8]) -> (Result<Tree, UnpackError>, Result<Tree, String>) {
        self.pushed += 1;
        let i = self.pushed;
        let layer = Layer {
            blob: test_registry::Blob::new(media_types::OCI_LAYER_GZIP, gzip(tar)),
            diff_id: test_registry::sha256_digest(tar),
        };
        let image = ImageBuilder::new(Format::Oci)
            .platform("linux", "amd64", None)
            .layer(layer)
            .build();
        let tag = format!("t{i}");
        Pusher::new(&self.registry.url())
            .push_image("crafted/tar", &tag, &image)
            .await
            .unwrap();
        let reference = format!("{}/crafted/tar:{tag}", self.registry.host());
        self.h.pull(&reference).await.unwrap();
        let entry = self.h.store.find_ref(&reference).unwrap().unwrap();
        let ours = self.work.path().join(format!("haul-{i}"));
        let haul = unpack(
            &self.h.store,
            &entry,
            &ours,
            &UnpackOptions::for_current_user(),
            &Silent,
        )
        .map(|_| Tree::of(&ours).unwrap());
        let archive = self.work.path().join(format!("{i}.tar"));
        std::fs::write(&archive, tar).unwrap();
        let oracle = self.work.path().join(format!("gnu-{i}"));
        let gnu = gnu_tar_extract(&archive, &oracle).map(|()| Tree::of(&oracle).unwrap());
        (haul, gnu)
    }

    /// Whether haul unpacked `tar` to GNU tar's tree, which has `expected` in it; else why not.
    async fn as_gnu_tar(
        &mut self,
        what: &str,
        tar: &[u8],
        expected: &[&str],
    ) -> Result<(), String> {
        let (ours, gnu) = self.unpack(tar).await;
        let gnu = gnu.unwrap_or_else(|e| panic!("{what}: GNU tar refuses: {e}"));
        for path in expected {
            assert!(
                gnu.get(path).is_some(),
                "{what}: the oracle lacks {path}: {gnu}"
            );
        }
        let ours = ours.map_err(|e| format!("{what}: haul refuses: {}", chain(&e)))?;
        let diff = ours.differences(&gnu, &all_since(self.start));
        if diff.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{what}: haul's tree differs from GNU tar's:\n    {}",
                diff.join("\n    ")
            ))
        }
    }
}

/// Panics with every failure, one per line.
fn assert_all(results: Vec<Result<(), String>>) {
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn skip_unless_root() -> bool {
    if rustix::process::geteuid().is_root() {
        return false;
    }
    println!("SKIPPED: GNU tar keeps owners and creates devices only as root");
    true
}

/// A header-only entry (directory, link, device, FIFO: Go's `isHeaderOnlyType`, and a v7
/// directory) whose size field is not 0, with the next entry where its content would be: docker,
/// GNU tar and Python read that entry; a reader that skips the size as content never sees it.
#[tokio::test(flavor = "multi_thread")]
async fn a_sized_directory_cannot_hide_the_next_entry() {
    if skip_unless_root() {
        return;
    }
    let mut crafted = Crafted::new().await;
    let mut results = Vec::new();
    let hidden = file_entry("hidden", b"only docker would see this\n");
    let cases = [
        ("directory", "d/", b'5', "", false),
        ("symlink", "s", b'2', "target", false),
        ("hardlink", "h", b'1', "target", false),
        ("fifo", "p", b'6', "", false),
        ("character device", "c", b'3', "", false),
        ("block device", "b", b'4', "", false),
        ("v7 directory", "v/", 0, "", true),
    ];
    for (what, name, typeflag, link, v7) in cases {
        // The size covers exactly the hidden entry, so a reader skipping it stays in step.
        let sized = header(name, typeflag, hidden.len() as u64, link, v7);
        let mut tar = file_entry("target", b"t");
        tar.extend(sized);
        tar.extend(&hidden);
        tar.extend(file_entry("after", b"a"));
        tar.extend(end());
        results.push(
            crafted
                .as_gnu_tar(&format!("a sized {what}"), &tar, &["hidden", "after"])
                .await,
        );
    }
    assert_all(results);
}

/// The same with the size in a PAX `size` record: Go's archive/tar ignores it for a header-only
/// entry as it ignores the header's.
#[tokio::test(flavor = "multi_thread")]
async fn a_pax_size_on_a_directory_cannot_hide_the_next_entry() {
    if skip_unless_root() {
        return;
    }
    let mut crafted = Crafted::new().await;
    let mut results = Vec::new();
    let hidden = file_entry("hidden", b"only docker would see this\n");
    let size = hidden.len().to_string();
    for (what, entry) in [
        ("directory", header("d/", b'5', 0, "", false)),
        ("symlink", header("s", b'2', 0, "target", false)),
    ] {
        let mut tar = pax_entry(&[("size", size.as_bytes())]);
        tar.extend(entry);
        tar.extend(&hidden);
        tar.extend(end());
        results.push(
            crafted
                .as_gnu_tar(&format!("a {what} with a PAX size"), &tar, &["hidden"])
                .await,
        );
    }
    assert_all(results);
}

/// A PAX header naming a key twice: Go's archive/tar, GNU tar and Python take the last record;
/// a reader taking the first shows another name, link target, size or owner.
#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_pax_record_cannot_show_another_entry_than_docker_sees() {
    if skip_unless_root() {
        return;
    }
    let mut crafted = Crafted::new().await;
    let mut results = Vec::new();
    let hidden = file_entry("hidden", b"x");
    let size = hidden.len().to_string();
    let cases: [(&str, Vec<u8>, &[&str]); 4] = [
        (
            "path",
            {
                let mut t = pax_entry(&[("path", b"decoy"), ("path", b"real")]);
                t.extend(file_entry("header-name", b"content"));
                t
            },
            &["real"],
        ),
        (
            "linkpath",
            {
                let mut t = pax_entry(&[("linkpath", b"decoy"), ("linkpath", b"real")]);
                t.extend(header("link", b'2', 0, "header-target", false));
                t
            },
            &["link"],
        ),
        (
            "size",
            {
                // First 0, then the hidden entry's length: docker reads it as this file's content.
                let mut t = pax_entry(&[("size", b"0"), ("size", size.as_bytes())]);
                t.extend(header("f", b'0', 0, "", false));
                t.extend(&hidden);
                t
            },
            &["f"],
        ),
        (
            "uid",
            {
                let mut t = pax_entry(&[("uid", b"0"), ("uid", b"4242")]);
                t.extend(file_entry("owned", b"o"));
                t
            },
            &["owned"],
        ),
    ];
    for (key, mut tar, expected) in cases {
        tar.extend(end());
        results.push(
            crafted
                .as_gnu_tar(&format!("a repeated PAX {key}"), &tar, expected)
                .await,
        );
    }
    assert_all(results);
}

/// PAX headers and GNU long names are metadata that Go's archive/tar (docker, containerd) reads
/// only up to 1 MiB, refusing the layer beyond: haul refuses the same, so no such header makes
/// it hold more than that in memory.
#[tokio::test(flavor = "multi_thread")]
async fn a_pax_header_or_long_name_over_a_mebibyte_is_refused_as_docker_refuses_it() {
    let mut crafted = Crafted::new().await;
    let big = vec![b'a'; (1 << 20) + 1];
    let mut pax = pax_entry(&[("comment", &big)]);
    pax.extend(file_entry("f", b"x"));
    let mut long_name = header("././@LongLink", b'L', big.len() as u64, "", false);
    // GNU long names come in GNU headers.
    long_name[257..265].copy_from_slice(b"ustar  \0");
    long_name[148..156].fill(b' ');
    let sum: u32 = long_name.iter().map(|&b| u32::from(b)).sum();
    long_name[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    long_name.extend(padded(&big));
    long_name.extend(file_entry("f", b"x"));
    for (what, mut tar) in [("PAX header", pax), ("GNU long name", long_name)] {
        tar.extend(end());
        let (ours, _) = crafted.unpack(&tar).await;
        match ours {
            Err(UnpackError::Apply {
                source: ApplyError::ExtensionTooLarge { size, .. },
                ..
            }) => assert!(size > 1 << 20, "{what}: {size}"),
            other => panic!(
                "{what}: expected ExtensionTooLarge, got {:?}",
                other.map(drop)
            ),
        }
    }
}
