//! `haul pull`: docker's pull, with its output.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use haul::platform::Platform;
use haul::pull::{PullOptions, Puller};
use haul::reference::Reference;
use haul::unpack::image::UnpackOptions;

use crate::cli::{GlobalArgs, PullArgs};
use crate::context;
use crate::render::Progress;

pub async fn run(global: &GlobalArgs, args: &PullArgs) -> anyhow::Result<ExitCode> {
    let platform = args
        .platform
        .as_deref()
        .filter(|p| !p.is_empty())
        .map(str::parse::<Platform>)
        .transpose()?;
    let reference: Reference = if args.all_tags {
        Reference::parse_repository(&args.image).map_err(|e| {
            if args.image.contains('@')
                || args
                    .image
                    .rsplit('/')
                    .next()
                    .is_some_and(|l| l.contains(':'))
            {
                anyhow::anyhow!("tag can't be used with --all-tags/-a")
            } else {
                e.into()
            }
        })?
    } else {
        args.image.parse()?
    };

    // With content trust, every name is checked before the store is even opened, so a refusal
    // leaves nothing behind; what was checked is then pulled by digest.
    let trust_config = haul::config::Config::load(global.config.as_deref())
        .context("cannot load the configuration")?;
    let checked = if content_trust_requested(args.disable_content_trust, trust_config.trust.enabled)
    {
        Some(
            super::trust::check_names(
                trust_config,
                &reference,
                args.all_tags,
                args.quiet || args.progress == crate::cli::ProgressMode::Json,
            )
            .await?,
        )
    } else {
        None
    };

    let ctx = context::load(global)?;
    let progress = Arc::new(Progress::new(args.progress, args.quiet));
    let puller = Puller::new(
        ctx.client,
        ctx.store,
        PullOptions {
            platform,
            max_concurrent_downloads: ctx.config.max_concurrent_downloads,
            unpack: (!args.no_unpack).then(UnpackOptions::for_current_user),
        },
    );
    let result = if let Some(checked) = checked {
        let mut last = None;
        for (name, digest) in &checked {
            let outcome = puller.pull_pinned(name, digest, progress.clone()).await;
            let failed = outcome.is_err();
            last = Some(outcome);
            if failed {
                break;
            }
        }
        match last {
            Some(Ok(o)) if !args.all_tags => Ok(o.reference.to_string()),
            Some(Ok(_)) | None => Ok(reference.name()),
            Some(Err(e)) => Err(e),
        }
    } else if args.all_tags {
        puller
            .pull_all_tags(&reference, progress.clone())
            .await
            .map(|_| reference.name())
    } else {
        puller
            .pull(&reference, progress.clone())
            .await
            .map(|o| o.reference.to_string())
    };
    progress.finish();
    let name = result.with_context(|| format!("pulling {}", reference.familiar_string()))?;
    if !progress.is_json() {
        println!("{name}");
    }
    Ok(ExitCode::SUCCESS)
}

/// docker's rule: trust is on when DOCKER_CONTENT_TRUST is set to a true value, and the flag
/// overrides the environment; the config file's `trust.enabled` applies when neither is set.
fn content_trust_requested(disable_flag: Option<bool>, config_default: Option<bool>) -> bool {
    match disable_flag {
        Some(disable) => !disable,
        None => match std::env::var("DOCKER_CONTENT_TRUST") {
            Ok(v) if !v.is_empty() => {
                matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes")
            }
            // The config file's `trust.enabled` is the default when neither says.
            _ => config_default.unwrap_or(false),
        },
    }
}
