//! `haul manifest inspect`: a manifest or index as the registry serves it, like
//! `docker manifest inspect`. Reads nothing from the store and writes nothing to it.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use haul::reference::Reference;
use haul::registry::{Anonymous, CredentialStore, DockerConfig, RegistryClient};

use crate::cli::{GlobalArgs, ManifestCommand, ManifestInspectArgs};
use crate::context;
use crate::terminal;

pub async fn run(global: &GlobalArgs, command: &ManifestCommand) -> anyhow::Result<ExitCode> {
    match command {
        ManifestCommand::Inspect(args) => inspect(global, args).await,
    }
}

async fn inspect(global: &GlobalArgs, args: &ManifestInspectArgs) -> anyhow::Result<ExitCode> {
    let reference: Reference = args.image.parse()?;
    let client = client(global)?;
    let fetched = haul::inspect::remote_manifest(&client, &reference).await?;
    let value = if !args.verbose {
        fetched.document()?
    } else if fetched.is_index() {
        let entries = haul::inspect::remote_entries(&client, &fetched).await?;
        let verbose = entries
            .iter()
            .map(|m| m.verbose())
            .collect::<Result<Vec<_>, _>>()?;
        serde_json::to_value(verbose)?
    } else {
        serde_json::to_value(fetched.verbose()?)?
    };
    let mut out = std::io::stdout().lock();
    terminal::write_json(&mut out, &value)?;
    Ok(ExitCode::SUCCESS)
}

/// A registry client with docker's credentials, built without opening the store (this command
/// must not create or change one).
fn client(global: &GlobalArgs) -> anyhow::Result<RegistryClient> {
    let config = context::load_config(global)?;
    let credentials: Arc<dyn CredentialStore> = match DockerConfig::load_default() {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!(
                "WARNING: Error loading docker config file: {}",
                terminal::escape(&e.to_string())
            );
            Arc::new(Anonymous)
        }
    };
    RegistryClient::new(config.registry_settings(), credentials, Default::default())
        .context("cannot set up the HTTP client")
}
