//! One module per subcommand, each a thin layer over the library.

mod completion;
mod history;
mod images;
mod info;
mod inspect;
mod load;
mod login;
mod manifest;
mod prune;
mod pull;
mod rmi;
mod save;
mod tag;
pub mod trust;
mod unpack;
mod verify;
mod version;

use std::process::ExitCode;

use haul::pull::PullError;
use haul::registry::RegistryError;

use crate::cli::{Cli, Command, ImageCommand};

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let global = &cli.global;
    match &cli.command {
        Command::Pull(args) => pull::run(&cli.global, args).await,
        Command::Unpack(args) => unpack::run(&cli.global, args, unpack::Output::RootFs).await,
        Command::Bundle(args) => unpack::run(&cli.global, args, unpack::Output::Bundle).await,
        Command::Images(args) => images::run(&cli.global, args),
        Command::Inspect(args) => inspect::run(&cli.global, args),
        Command::History(args) => history::run(&cli.global, args),
        Command::Tag(args) => tag::run(&cli.global, args).await,
        Command::Rmi(args) => rmi::run(&cli.global, args).await,
        Command::Manifest(command) => manifest::run(&cli.global, command).await,
        Command::Image(command) => match command {
            ImageCommand::Ls(args) => images::run(global, args),
            ImageCommand::Rm(args) => rmi::run(global, args).await,
            ImageCommand::Inspect(args) => inspect::run(global, args),
            ImageCommand::Pull(args) => pull::run(global, args).await,
            ImageCommand::Save(args) => save::run(global, args).await,
            ImageCommand::Load(args) => load::run(global, args).await,
            ImageCommand::Tag(args) => tag::run(global, args).await,
            ImageCommand::History(args) => history::run(global, args),
            ImageCommand::Prune(args) => prune::run(global, args).await,
        },
        Command::Verify(args) => verify::run(&cli.global, args).await,
        Command::Info(args) => info::run(&cli.global, args),
        Command::Login(args) => login::login(&cli.global, args).await,
        Command::Logout(args) => login::logout(&cli.global, args).await,
        Command::Save(args) => save::run(&cli.global, args).await,
        Command::Load(args) => load::run(&cli.global, args).await,
        Command::Trust(command) => trust::run(&cli.global, command).await,
        Command::Version(args) => version::run(args),
        Command::Completion(args) => completion::completion(args),
        Command::Man(args) => completion::man(args),
    }
}

/// A line telling the user what to do about `err`, where there is something to do.
pub fn hint_for(err: &anyhow::Error) -> Option<String> {
    for cause in err.chain() {
        if let Some(hint) = crate::context::store_hint(cause) {
            return Some(hint);
        }
        let trust_error = cause.downcast_ref::<haul::trust::TrustError>().or_else(|| {
            match cause.downcast_ref() {
                Some(haul::pull::PullError::Trust(e)) => Some(e),
                _ => None,
            }
        });
        if let Some(e) = trust_error
            && let Some(hint) = trust::hint(e)
        {
            return Some(hint);
        }
        if let Some(haul::login::LoginError::Registry {
            source: RegistryError::Unauthorized { .. } | RegistryError::Denied { .. },
            ..
        }) = cause.downcast_ref()
        {
            return Some(
                "check the username and password (for Docker Hub with two-factor \
                 authentication, use an access token as the password); nothing was saved"
                    .to_owned(),
            );
        }
        let no_such_image = matches!(
            cause.downcast_ref(),
            Some(haul::inspect::InspectError::NoSuchImage(_))
        ) || matches!(
            cause.downcast_ref(),
            Some(haul::tag::TagError::NotFound(
                haul::inspect::InspectError::NoSuchImage(_)
            ))
        );
        if no_such_image {
            return Some(
                "`haul images` lists what the store holds; `haul pull NAME` fetches an image"
                    .to_owned(),
            );
        }
        let mut registry_error = cause.downcast_ref::<RegistryError>();
        if let Some(e) = cause.downcast_ref::<PullError>() {
            if let PullError::Registry(inner) = e {
                registry_error = Some(inner);
            }
            let hint = match e {
                PullError::ManifestUnknown { .. } => Some(
                    "check that the tag exists (`haul manifest inspect NAME`); for a private \
                     image, run `haul login REGISTRY` first"
                        .to_owned(),
                ),
                PullError::AccessDenied { .. } | PullError::NameUnknown { .. } => Some(
                    "check the repository name; if it is private, run `haul login REGISTRY` first"
                        .to_owned(),
                ),
                PullError::NoSpace { more_than, .. } => Some(format!(
                    "free space there (`haul image prune` removes unused content), or pull into \
                     a larger filesystem with --root{}",
                    if *more_than {
                        "; the layers already verified were kept, so the next pull continues \
                         from them"
                    } else {
                        "; nothing was downloaded"
                    }
                )),
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
                    "log in with `haul login {host}` (credentials are kept in docker's config.json)"
                )),
                RegistryError::TooManyRequests { .. } => Some(
                    "the registry is rate-limiting you: wait, log in for a higher limit, or \
                     configure a mirror in registry-mirrors"
                        .to_owned(),
                ),
                RegistryError::Tls { host, .. } => Some(format!(
                    "if {host} uses a private CA, put it in /etc/docker/certs.d/{host}/ca.crt \
                     (or the \"certs-dir\" of the config file; client.cert and client.key there \
                     for mutual TLS); for a registry without TLS, add it to \
                     \"insecure-registries\" in the config file"
                )),
                RegistryError::Certificates { host, .. } => Some(format!(
                    "fix or remove the files of the certs directory of {host}"
                )),
                RegistryError::NoSuchHost { name, .. } => Some(format!(
                    "check the registry name {name} (a typo?) and your DNS settings"
                )),
                RegistryError::ConnectionRefused { host } => Some(format!(
                    "nothing listens at {host}: check the port, and that the registry is running"
                )),
                RegistryError::Proxy { proxy, .. } => Some(format!(
                    "the proxy {proxy} failed: check HTTP_PROXY/HTTPS_PROXY (or \"proxies\" in \
                     the config file), or exempt the registry with NO_PROXY"
                )),
                RegistryError::Connect { host, .. } => Some(format!(
                    "check that {host} is reachable from here (DNS, proxy settings, firewall)"
                )),
                RegistryError::RetryAfterTooLong { .. } | RegistryError::WaitedTooLong { .. } => {
                    Some(
                        "the registry is overloaded or throttling: pull again later, or raise \
                         \"max-retry-after\" in the config file to wait longer"
                            .to_owned(),
                    )
                }
                RegistryError::TooSlow { .. } | RegistryError::NoResponseHeaders { .. } => Some(
                    "the registry stopped sending; what arrived was kept, so pulling again \
                     resumes; on a very slow link raise \"download-stall-timeout\""
                        .to_owned(),
                ),
                RegistryError::InsecureRealm { registry, .. } => Some(format!(
                    "if {registry} is yours and plain HTTP is intended, list it in \
                     \"insecure-registries\"; otherwise its token service should use HTTPS"
                )),
                RegistryError::ForeignUrlRefused { .. } => Some(
                    "foreign layers are fetched only from public addresses; an air-gapped mirror \
                     of them can be allowed with \"foreign-layer-allowed-networks\""
                        .to_owned(),
                ),
                RegistryError::TagList { .. } => Some(
                    "the registry's tag list is broken or hostile; pull the tags you need by name"
                        .to_owned(),
                ),
                _ => continue,
            };
        }
    }
    None
}
