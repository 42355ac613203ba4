//! `haul load`: images from a `docker save` or OCI archive into the store, like `docker load`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::cli::{GlobalArgs, LoadArgs};
use crate::context;

pub async fn run(global: &GlobalArgs, args: &LoadArgs) -> anyhow::Result<ExitCode> {
    context::load_config(global)?;
    let store = context::open_store(global)?;
    let loaded = match args.input.as_deref() {
        Some(path) if path.as_os_str() != "-" => {
            let file =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            haul::archive::load(&store, std::io::BufReader::with_capacity(1 << 20, file)).await?
        }
        _ => haul::archive::load(&store, std::io::stdin()).await?,
    };
    let mut out = std::io::stdout().lock();
    for image in loaded {
        if image.names.is_empty() {
            writeln!(out, "Loaded image ID: {}", image.id)?;
        }
        for name in &image.names {
            writeln!(out, "Loaded image: {}", name.familiar_string())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
