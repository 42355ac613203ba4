//! `haul unpack` and `haul bundle`: a stored image as a root filesystem directory or an OCI runtime
//! bundle (pulled first when missing).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use haul::Unpacked;
use haul::platform::Platform;
use haul::reference::Reference;
use haul::unpack::UnpackOptions;

use crate::cli::{GlobalArgs, ProgressMode, UnpackArgs};
use crate::context;
use crate::render::{Progress, human_size};

/// What to make of the image.
#[derive(Clone, Copy)]
pub enum Output {
    RootFs,
    Bundle,
}

pub async fn run(
    global: &GlobalArgs,
    args: &UnpackArgs,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let platform = args
        .platform
        .as_deref()
        .filter(|p| !p.is_empty())
        .map(str::parse::<Platform>)
        .transpose()?;
    let progress = Arc::new(
        Progress::new(
            args.progress
                .or(global.progress)
                .unwrap_or(ProgressMode::Auto),
            args.quiet,
        )
        .for_unpack(),
    );
    let haul = context::front_door(global, |b| {
        let b = match platform {
            Some(p) => b.platform(p),
            None => b,
        };
        match args.disable_content_trust {
            Some(disable) => b.content_trust(!disable),
            None => b,
        }
    })?;
    let options = UnpackOptions {
        force: args.force,
        ..UnpackOptions::for_current_user()
    };
    let done = match output {
        Output::RootFs => {
            haul.unpack_with(&args.image, &args.dir, &options, progress.clone())
                .await
        }
        Output::Bundle => {
            haul.bundle(&args.image, &args.dir, &options, progress.clone())
                .await
        }
    };
    let Unpacked { image, stats, .. } = done.map_err(|e| {
        // A failed pull is named as docker names it; anything after, with the directory.
        let familiar = args
            .image
            .parse::<Reference>()
            .map_or_else(|_| args.image.clone(), |r| r.familiar_string());
        let context = match &e {
            haul::Error::Pull(_) | haul::Error::Reference(_) => format!("pulling {familiar}"),
            _ => format!("unpacking {familiar} into {}", args.dir.display()),
        };
        anyhow::Error::new(e).context(context)
    })?;
    // What the store calls it: docker's full name, or the name another tool wrote.
    let shown = match image.name.parse::<Reference>() {
        Ok(r) if r.to_string() == image.name => r.familiar_string(),
        _ => image.name.clone(),
    };
    progress.finish();
    for warning in &stats.warnings {
        eprintln!("WARNING: {}", crate::terminal::escape(warning));
    }
    if !args.quiet {
        eprintln!(
            "Unpacked {} ({}, {}) of {}",
            count(stats.layers as u64, "layer", "layers"),
            human_size(stats.uncompressed_bytes),
            count(stats.entries, "entry", "entries"),
            shown
        );
    }
    println!("{}", absolute(&args.dir).display());
    Ok(ExitCode::SUCCESS)
}

/// `1 layer`, `2 layers`.
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}
