//! `haul tag`: another name for an image in the store, like `docker tag`.

use std::process::ExitCode;

use haul::reference::Reference;

use crate::cli::{GlobalArgs, TagArgs};
use crate::context;

pub async fn run(global: &GlobalArgs, args: &TagArgs) -> anyhow::Result<ExitCode> {
    let target: Reference = args.target.parse()?;
    context::load_config(global)?;
    let store = context::open_store(global)?;
    haul::tag::tag(&store, &args.source, &target).await?;
    Ok(ExitCode::SUCCESS)
}
