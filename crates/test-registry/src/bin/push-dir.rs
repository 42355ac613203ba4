//! Builds a deterministic linux/amd64 OCI image with one layer per directory and pushes it.
//!
//! `push-dir --registry http://127.0.0.1:PORT --repo bench/big --tag v1 DIR [DIR…]`
//!
//! Each DIR is placed at its own absolute path in the image (`/usr/share` → `usr/share/…`), or with
//! `--at-root` its contents are placed at the layer root (for trees staged in a temp dir).
//! Layers are gzip; `--compression zstd` recompresses them with the `zstd` command (level 3, one
//! thread: the same bytes on every run with the same zstd version).
//! `--variants DIR` pushes one tag per subdirectory S of DIR (sorted), named S, whose layers are
//! the shared DIR layers followed by a layer of S's contents; the shared layers are built once.
//! Prints the manifest digest (one line per tag with `--variants`: `TAG DIGEST`), then the layer
//! count and total compressed / uncompressed bytes.

use std::error::Error;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use test_registry::{
    Blob, Format, ImageBuilder, Layer, Pusher, layer_from_dir, layer_from_dir_at, media_types,
};

type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

const USAGE: &str = "usage: push-dir --registry URL --repo REPO (--tag TAG | --variants DIR) \
                     [--at-root] [--compression gzip|zstd] DIR [DIR...]";

#[derive(Clone, Copy, PartialEq)]
enum Compression {
    Gzip,
    Zstd,
}

struct Args {
    registry: String,
    repo: String,
    tag: Option<String>,
    variants: Option<PathBuf>,
    at_root: bool,
    compression: Compression,
    dirs: Vec<PathBuf>,
}

fn parse_args() -> BoxResult<Args> {
    let (mut registry, mut repo, mut tag, mut variants, mut compression) =
        (None, None, None, None, None);
    let mut at_root = false;
    let mut dirs = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let slot = match arg.to_str() {
            Some("--registry") => &mut registry,
            Some("--repo") => &mut repo,
            Some("--tag") => &mut tag,
            Some("--variants") => &mut variants,
            Some("--compression") => &mut compression,
            Some("--at-root") => {
                at_root = true;
                continue;
            }
            Some("-h" | "--help") => return Err(USAGE.into()),
            Some(s) if s.starts_with('-') => {
                return Err(format!("unknown option {s}\n{USAGE}").into());
            }
            _ => {
                dirs.push(PathBuf::from(arg));
                continue;
            }
        };
        let value = args.next().and_then(|v| v.into_string().ok());
        *slot = Some(value.ok_or_else(|| format!("{} needs a value\n{USAGE}", arg.display()))?);
    }
    let need =
        |v: Option<String>, name: &str| v.ok_or_else(|| format!("{name} is required\n{USAGE}"));
    if dirs.is_empty() && variants.is_none() {
        return Err(format!("no DIR given\n{USAGE}").into());
    }
    if tag.is_none() == variants.is_none() {
        return Err(format!("give exactly one of --tag and --variants\n{USAGE}").into());
    }
    let compression = match compression.as_deref() {
        None | Some("gzip") => Compression::Gzip,
        Some("zstd") => Compression::Zstd,
        Some(other) => return Err(format!("unknown compression {other}\n{USAGE}").into()),
    };
    Ok(Args {
        registry: need(registry, "--registry")?,
        repo: need(repo, "--repo")?,
        tag,
        variants: variants.map(PathBuf::from),
        at_root,
        compression,
        dirs,
    })
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// The same layer recompressed with `zstd -3 -T1` (the diff_id does not change); returns it and
/// the uncompressed (tar) size.
fn to_zstd(layer: Layer) -> io::Result<(Layer, u64)> {
    let mut child = Command::new("zstd")
        .args(["-q", "-3", "-T1", "-c", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("running zstd: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let gz = layer.blob.data.clone();
    let feeder = std::thread::spawn(move || -> io::Result<u64> {
        let mut tar = Counting {
            inner: flate2::read::MultiGzDecoder::new(&gz[..]),
            n: 0,
        };
        io::copy(&mut tar, &mut stdin)?;
        stdin.flush()?;
        Ok(tar.n)
    });
    let mut out = Vec::new();
    stdout.read_to_end(&mut out)?;
    let tar_size = feeder
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("zstd feeder panicked")))?;
    let status = child.wait()?;
    if !status.success() {
        return Err(io::Error::other(format!("zstd failed: {status}")));
    }
    Ok((
        Layer {
            diff_id: layer.diff_id,
            blob: Blob::new(media_types::OCI_LAYER_ZSTD, out),
        },
        tar_size,
    ))
}

/// The layer of `dir` and its uncompressed (tar) size.
fn build_layer(dir: &Path, at_root: bool, compression: Compression) -> io::Result<(Layer, u64)> {
    let abs = std::fs::canonicalize(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    let layer = if at_root {
        layer_from_dir(&abs)?
    } else {
        let prefix = abs.to_string_lossy().trim_start_matches('/').to_string();
        layer_from_dir_at(&abs, &prefix)?
    };
    let (layer, tar_size) = match compression {
        Compression::Zstd => to_zstd(layer)?,
        Compression::Gzip => {
            let mut decoder = flate2::read::MultiGzDecoder::new(&layer.blob.data[..]);
            let tar_size = io::copy(&mut decoder, &mut io::sink())?;
            (layer, tar_size)
        }
    };
    eprintln!(
        "layer {}: {} bytes {}, {tar_size} bytes tar",
        abs.display(),
        layer.blob.size,
        if compression == Compression::Zstd {
            "zstd"
        } else {
            "gzip"
        },
    );
    Ok((layer, tar_size))
}

/// Builds the layers of `dirs` on all cores, keeping their order.
async fn build_layers(
    dirs: Vec<PathBuf>,
    at_root: bool,
    compression: Compression,
) -> BoxResult<Vec<(Layer, u64)>> {
    let built = tokio::task::spawn_blocking(move || {
        // At most as many layer threads as cores: each holds its compressed layer in memory.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut out = Vec::with_capacity(dirs.len());
        for chunk in dirs.chunks(cores.max(1)) {
            let part = std::thread::scope(|s| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|d| s.spawn(move || build_layer(d, at_root, compression)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(io::Error::other("layer thread panicked")))
                    })
                    .collect::<io::Result<Vec<_>>>()
            })?;
            out.extend(part);
        }
        Ok::<_, io::Error>(out)
    })
    .await??;
    Ok(built)
}

fn image_of(layers: &[(Layer, u64)]) -> test_registry::Image {
    ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layers(layers.iter().map(|(l, _)| l.clone()))
        .build()
}

#[tokio::main]
async fn main() -> BoxResult<()> {
    let args = parse_args()?;
    let shared = build_layers(args.dirs.clone(), args.at_root, args.compression).await?;
    let pusher = Pusher::new(&args.registry);
    let mut images = Vec::new();
    if let Some(variants) = &args.variants {
        let mut names: Vec<_> = std::fs::read_dir(variants)
            .map_err(|e| format!("{}: {e}", variants.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        let names: Vec<String> = names
            .into_iter()
            .map(|n| n.into_string().map_err(|n| format!("{n:?}: not UTF-8")))
            .collect::<Result<_, _>>()?;
        let dirs = names.iter().map(|n| variants.join(n)).collect();
        // A variant's contents always go at the layer root.
        let own = build_layers(dirs, true, args.compression).await?;
        for (name, layer) in names.into_iter().zip(own) {
            let mut layers = shared.clone();
            layers.push(layer);
            images.push((name, layers));
        }
    } else {
        images.push((args.tag.clone().expect("checked"), shared));
    }
    let (mut count, mut compressed, mut uncompressed) = (0, 0, 0);
    for (tag, layers) in &images {
        let image = image_of(layers);
        let digest = pusher.push_image(&args.repo, tag, &image).await?;
        if args.variants.is_some() {
            println!("{tag} {digest}");
        } else {
            println!("{digest}");
        }
        count = count.max(image.layers.len());
        compressed = layers
            .iter()
            .map(|(l, _)| l.blob.size)
            .sum::<u64>()
            .max(compressed);
        uncompressed = layers.iter().map(|(_, n)| n).sum::<u64>().max(uncompressed);
    }
    println!("layers {count} compressed {compressed} uncompressed {uncompressed}");
    Ok(())
}
