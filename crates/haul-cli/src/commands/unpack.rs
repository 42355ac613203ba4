//! `haul unpack` and `haul bundle`: a stored image as a root filesystem directory or an OCI runtime
//! bundle (pulled first when missing).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use haul::platform::Platform;
use haul::pull::{PullOptions, Puller};
use haul::reference::Reference;
use haul::store::RefEntry;
use haul::unpack::image::{UnpackOptions, UnpackStats, unpack};

use crate::cli::{GlobalArgs, UnpackArgs};
use crate::context::{self, Context};
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
    let ctx = context::load(global)?;
    let progress = Arc::new(Progress::new(args.progress, args.quiet));
    let content_trust = args.disable_content_trust.map(|disable| !disable);
    let entry =
        stored_or_pulled(&ctx, &args.image, platform, content_trust, progress.clone()).await?;
    // What the store calls it: docker's full name, or the name another tool wrote.
    let shown = match entry.name.parse::<Reference>() {
        Ok(r) if r.to_string() == entry.name => r.familiar_string(),
        _ => entry.name.clone(),
    };

    let store = ctx.store.clone();
    let target = args.dir.clone();
    let options = UnpackOptions {
        force: args.force,
        ..UnpackOptions::for_current_user()
    };
    let reporter = progress.clone();
    let stats: UnpackStats = tokio::task::spawn_blocking(move || -> anyhow::Result<UnpackStats> {
        Ok(match output {
            Output::RootFs => unpack(&store, &entry, &target, &options, reporter.as_ref())?,
            Output::Bundle => {
                haul::bundle::write_bundle(&store, &entry, &target, &options, reporter.as_ref())?
            }
        })
    })
    .await
    .context("the unpack task failed")?
    .with_context(|| format!("unpacking {} into {}", shown, args.dir.display()))?;
    progress.finish();
    for warning in &stats.warnings {
        eprintln!("WARNING: {}", crate::terminal::escape(warning));
    }
    if !args.quiet {
        eprintln!(
            "Unpacked {} layers ({}, {} entries) of {}",
            stats.layers,
            human_size(stats.uncompressed_bytes),
            stats.entries,
            shown
        );
    }
    println!("{}", absolute(&args.dir).display());
    Ok(ExitCode::SUCCESS)
}

/// The stored image when it fits (and, with content trust on, is the checked digest), else pulled.
async fn stored_or_pulled(
    ctx: &Context,
    image: &str,
    platform: Option<Platform>,
    content_trust: Option<bool>,
    progress: Arc<Progress>,
) -> anyhow::Result<RefEntry> {
    let puller = Puller::new(
        ctx.client.clone(),
        ctx.store.clone(),
        PullOptions {
            platform,
            max_concurrent_downloads: ctx.config.max_concurrent_downloads,
            unpack: Some(UnpackOptions::for_current_user()),
            content_trust,
            trust: ctx.config.trust.clone(),
        },
    );
    puller
        .stored_or_pull(image, progress)
        .await
        .with_context(|| format!("pulling {image}"))
}

fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}
