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
use haul::unpack::apply::ApplyError;
use haul::unpack::image::{UnpackError, UnpackOptions, unpack};
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
    // also accept; PAX sparse files (above); and `gnu/regtype-gnu-uid`, whose uid 4294967295 is
    // chown's "leave unchanged" (-1), which GNU tar and docker pass to chown and haul refuses;
    // `misc/regtype-suntar`, whose Solaris `X` extended header GNU tar reads and Go's archive/tar
    // (docker, containerd) and haul refuse as an unknown type; and `ustar/dirtype-with-size`, a
    // directory header with a size but no content: GNU tar, Go and Python read the next header
    // right after it, the tar crate skips 512 bytes as its content and so loses the next member
    // (`ustar/lnktype`) without a word. Compared without those below.
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
    or n in ("gnu/regtype-gnu-uid", "misc/regtype-suntar", "ustar/dirtype-with-size"))
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
