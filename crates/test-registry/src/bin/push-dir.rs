//! Builds a deterministic linux/amd64 OCI image with one gzip layer per directory and pushes it.
//!
//! `push-dir --registry http://127.0.0.1:PORT --repo bench/big --tag v1 DIR [DIR…]`
//!
//! Each DIR is placed at its own absolute path in the image (`/usr/share` → `usr/share/…`).
//! Prints the manifest digest, then the layer count and total compressed / uncompressed bytes.

use std::error::Error;
use std::io;
use std::path::{Path, PathBuf};

use test_registry::{Format, ImageBuilder, Layer, Pusher, layer_from_dir_at};

type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

const USAGE: &str = "usage: push-dir --registry URL --repo REPO --tag TAG DIR [DIR...]";

struct Args {
    registry: String,
    repo: String,
    tag: String,
    dirs: Vec<PathBuf>,
}

fn parse_args() -> BoxResult<Args> {
    let (mut registry, mut repo, mut tag, mut dirs) = (None, None, None, Vec::new());
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let slot = match arg.to_str() {
            Some("--registry") => &mut registry,
            Some("--repo") => &mut repo,
            Some("--tag") => &mut tag,
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
    if dirs.is_empty() {
        return Err(format!("no DIR given\n{USAGE}").into());
    }
    Ok(Args {
        registry: need(registry, "--registry")?,
        repo: need(repo, "--repo")?,
        tag: need(tag, "--tag")?,
        dirs,
    })
}

/// The layer of `dir` and its uncompressed (tar) size.
fn build_layer(dir: &Path) -> io::Result<(Layer, u64)> {
    let abs = std::fs::canonicalize(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    let prefix = abs.to_string_lossy().trim_start_matches('/').to_string();
    let layer = layer_from_dir_at(&abs, &prefix)?;
    let mut decoder = flate2::read::GzDecoder::new(&layer.blob.data[..]);
    let tar_size = io::copy(&mut decoder, &mut io::sink())?;
    eprintln!(
        "layer {}: {} bytes gzip, {tar_size} bytes tar",
        abs.display(),
        layer.blob.size
    );
    Ok((layer, tar_size))
}

#[tokio::main]
async fn main() -> BoxResult<()> {
    let args = parse_args()?;
    // Layers are CPU-bound and independent: build them on all cores, keeping their order.
    let dirs = args.dirs.clone();
    let built = tokio::task::spawn_blocking(move || {
        std::thread::scope(|s| {
            let handles: Vec<_> = dirs
                .iter()
                .map(|d| s.spawn(move || build_layer(d)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(io::Error::other("layer thread panicked")))
                })
                .collect::<io::Result<Vec<_>>>()
        })
    })
    .await??;
    let compressed: u64 = built.iter().map(|(l, _)| l.blob.size).sum();
    let uncompressed: u64 = built.iter().map(|(_, n)| n).sum();
    let image = ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layers(built.into_iter().map(|(l, _)| l))
        .build();
    let digest = Pusher::new(&args.registry)
        .push_image(&args.repo, &args.tag, &image)
        .await?;
    println!("{digest}");
    println!(
        "layers {} compressed {compressed} uncompressed {uncompressed}",
        image.layers.len()
    );
    Ok(())
}
