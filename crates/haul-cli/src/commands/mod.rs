//! One module per subcommand, each a thin layer over the library.

mod images;
mod pull;

use std::process::ExitCode;

use haul::pull::PullError;
use haul::registry::RegistryError;

use crate::cli::{Cli, Command};

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Pull(args) => pull::run(&cli.global, args).await,
        Command::Images(args) => images::run(&cli.global, args),
    }
}

/// A line telling the user what to do about `err`, where there is something to do.
pub fn hint_for(err: &anyhow::Error) -> Option<String> {
    for cause in err.chain() {
        let mut registry_error = cause.downcast_ref::<RegistryError>();
        if let Some(e) = cause.downcast_ref::<PullError>() {
            if let PullError::Registry(inner) = e {
                registry_error = Some(inner);
            }
            let hint = match e {
                PullError::ManifestUnknown { .. } => Some(
                    "check that the tag exists in the registry; for a private image, log in \
                     first (credentials are read from docker's config.json)"
                        .to_owned(),
                ),
                PullError::AccessDenied { .. } | PullError::NameUnknown { .. } => Some(
                    "check the repository name; if it is private, log in first (credentials are \
                     read from docker's config.json)"
                        .to_owned(),
                ),
                PullError::LayerVerification { .. } => Some(
                    "the registry (or something between it and you) served corrupt data; nothing \
                     was stored for this image, pull again"
                        .to_owned(),
                ),
                _ => None,
            };
            if hint.is_some() {
                return hint;
            }
        }
        if let Some(e) = registry_error {
            return match e {
                RegistryError::Unauthorized { host, .. } => Some(format!(
                    "check the credentials for {host} in docker's config.json (`docker login {host}`)"
                )),
                RegistryError::TooManyRequests { .. } => Some(
                    "the registry is rate-limiting you: wait, log in for a higher limit, or \
                     configure a mirror in registry-mirrors"
                        .to_owned(),
                ),
                RegistryError::Tls { host, .. } => Some(format!(
                    "if {host} uses a private CA, install it in the system trust store; for a \
                     registry without TLS, add it to \"insecure-registries\" in the config file"
                )),
                RegistryError::Connect { host, .. } => Some(format!(
                    "check that {host} is reachable from here (DNS, proxy settings, firewall)"
                )),
                _ => continue,
            };
        }
    }
    None
}
