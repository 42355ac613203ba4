//! `haul pull`: docker's pull, with its output.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use haul::platform::Platform;
use haul::pull::AllTags;
use haul::reference::Reference;

use crate::cli::{GlobalArgs, ProgressMode, PullArgs};
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

    let progress = Arc::new(Progress::new(
        args.progress
            .or(global.progress)
            .unwrap_or(ProgressMode::Auto),
        args.quiet,
    ));
    // Content trust is the library's: every name the front door pulls is checked when the config,
    // the environment or the flag turns it on.
    let haul = context::front_door(global, |b| {
        let b = b.extract_layers(!args.no_unpack);
        let b = match platform {
            Some(p) => b.platform(p),
            None => b,
        };
        match args.disable_content_trust {
            Some(disable) => b.content_trust(!disable),
            None => b,
        }
    })?;
    let result = if args.all_tags {
        match haul
            .puller()
            .pull_all_tags(&reference, progress.clone())
            .await
        {
            Ok(all) => {
                progress.finish();
                all_tags_result(&reference, all)
            }
            Err(e) => {
                progress.finish();
                Err(e.into())
            }
        }
    } else {
        let result = haul
            .puller()
            .pull(&reference, progress.clone())
            .await
            .map(|o| o.reference.to_string())
            .map_err(anyhow::Error::from);
        progress.finish();
        result
    };
    let name = result.with_context(|| format!("pulling {}", reference.familiar_string()))?;
    if !progress.is_json() {
        println!("{name}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Each failed tag's error as it happened; the others were pulled. The command fails at the end
/// when any tag did.
fn all_tags_result(reference: &Reference, all: AllTags) -> anyhow::Result<String> {
    let tried = all.pulled.len() + all.failed.len();
    let failed = all.failed.len();
    for (tag, error) in all.failed {
        crate::report(
            &anyhow::Error::new(error).context(format!("pulling {}", tag.familiar_string())),
        );
    }
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {tried} tags could not be pulled (the others were, and {} were skipped \
             as signatures or other artifacts)",
            all.skipped.len()
        );
    }
    Ok(reference.name())
}
