//! `login`: checking credentials against a registry before they are saved, as `docker login` does.
//!
//! [`check`] pings `/v2/` without credentials and answers the challenge it gets: for `Basic`, a
//! `GET /v2/` with the credentials must succeed; for `Bearer`, the token endpoint must issue a
//! token for them (no scope, as docker asks) and `GET /v2/` with that token must succeed. A
//! registry that asks for nothing accepts any credentials, as with docker. Refused credentials are
//! [`RegistryError::Unauthorized`] with docker's "incorrect username or password". Saving is
//! [`DockerConfig::save`]'s job (credential helpers, `auths`, mode 0600); [`login`] does both, in
//! that order, so refused credentials are never written.

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderValue};

use crate::registry::auth::{basic_header, fetch_token};
use crate::registry::challenge::{self, Challenge};
use crate::registry::client::read_capped;
use crate::registry::credentials::CredentialError;
use crate::registry::error;
use crate::registry::{Credential, DockerConfig, RegistryClient, RegistryError};

/// How docker names Docker Hub in `config.json` and in `logout`'s messages.
const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// Names users give Docker Hub, reduced to a host.
const DOCKER_HUB_HOSTS: [&str; 4] = [
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

/// Why a login failed. Nothing was saved, unless saving itself failed midway.
///
/// `server` fields name the registry as docker does in messages ([`Server::display_name`]).
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The address given is not `host[:port]` (with an optional scheme and path).
    #[error("invalid registry address {input:?}: {reason}")]
    InvalidServer {
        /// The address as given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The registry could not be reached or refused the credentials:
    /// [`RegistryError::Unauthorized`] for refused ones.
    #[error("login to {server} failed")]
    Registry {
        /// The registry.
        server: String,
        /// What the registry or the connection said.
        #[source]
        source: RegistryError,
    },
    /// The registry asked for no scheme haul speaks (neither `Basic` nor `Bearer`), or for
    /// `Basic` when the credential is an identity token.
    #[error("{server} asked for an authentication scheme haul does not support")]
    UnsupportedChallenge {
        /// The registry.
        server: String,
    },
    /// The registry accepted the credentials but they could not be saved.
    #[error("saving the credentials for {server}")]
    Save {
        /// The registry.
        server: String,
        /// What the credential helper or the config file said.
        #[source]
        source: CredentialError,
    },
    /// The blocking task saving the credentials stopped (panicked or was cancelled).
    #[error("saving the credentials failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// A registry as `login` and `logout` take it: Docker Hub or `host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// `docker.io` or `host[:port]`: the name credentials are filed under.
    name: String,
}

impl Server {
    /// Docker Hub, the default of `login` and `logout`.
    #[must_use]
    pub fn docker_hub() -> Server {
        Server {
            name: DOCKER_HUB.to_owned(),
        }
    }

    /// Accepts `host[:port]`, with or without `http(s)://` and a path (docker's
    /// `https://index.docker.io/v1/` included), and reduces it to the host. Docker Hub's names
    /// (`docker.io`, `index.docker.io`, `registry-1.docker.io`, `registry.hub.docker.com`) are
    /// all [`Server::docker_hub`]; other hosts are lowercased.
    ///
    /// # Errors
    ///
    /// [`LoginError::InvalidServer`] for an empty host, one with credentials (`user@host`), or
    /// anything that is not a host with an optional port.
    pub fn parse(input: &str) -> Result<Server, LoginError> {
        let invalid = |reason| LoginError::InvalidServer {
            input: input.to_owned(),
            reason,
        };
        let rest = input
            .strip_prefix("https://")
            .or_else(|| input.strip_prefix("http://"))
            .unwrap_or(input);
        let host = rest
            .split('/')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        if host.contains('@') {
            return Err(invalid("credentials do not belong in the address"));
        }
        let parsed = url::Url::parse(&format!("https://{host}/"))
            .map_err(|_| invalid("not a host or host:port"))?;
        if parsed.host_str().is_none() || !parsed.path().eq("/") {
            return Err(invalid("not a host or host:port"));
        }
        if DOCKER_HUB_HOSTS.contains(&host.as_str()) {
            return Ok(Server::docker_hub());
        }
        Ok(Server { name: host })
    }

    /// The name credentials are filed under: `docker.io` or `host[:port]`.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this is Docker Hub.
    #[must_use]
    pub fn is_docker_hub(&self) -> bool {
        self.name == DOCKER_HUB
    }

    /// The host serving the registry API: `registry-1.docker.io` for Docker Hub, else the name.
    #[must_use]
    pub fn api_host(&self) -> &str {
        if self.is_docker_hub() {
            DOCKER_HUB_API_HOST
        } else {
            &self.name
        }
    }

    /// How docker names the server in messages: `https://index.docker.io/v1/` or `host[:port]`.
    #[must_use]
    pub fn display_name(&self) -> &str {
        if self.is_docker_hub() {
            DOCKER_HUB_SERVER
        } else {
            &self.name
        }
    }
}

/// Checks `credential` against `server` without saving anything. `client` gives the transport
/// (TLS, insecure registries, proxies, retries of the ping); its own credential store is not used.
///
/// # Errors
///
/// [`LoginError::Registry`] when the registry cannot be reached, answers the ping with an error,
/// or refuses the credentials ([`RegistryError::Unauthorized`], docker's "incorrect username or
/// password"); [`LoginError::UnsupportedChallenge`] when it asks for a scheme haul cannot answer
/// with `credential`.
pub async fn check(
    client: &RegistryClient,
    server: &Server,
    credential: &Credential,
) -> Result<(), LoginError> {
    let failed = |source| LoginError::Registry {
        server: server.display_name().to_owned(),
        source,
    };
    let host = server.api_host();
    let (v2, ping) = client.ping(host).await.map_err(failed)?;
    match ping.status() {
        s if s.is_success() => return Ok(()),
        StatusCode::UNAUTHORIZED => {}
        s => {
            let status = s.as_u16();
            let body = read_capped(ping, 64 * 1024, v2.as_str())
                .await
                .unwrap_or_default();
            return Err(failed(error::from_response(
                v2.as_str(),
                host,
                status,
                &body,
                None,
            )));
        }
    }
    // Bearer first, as for pulls: the password then goes to the token service only.
    let chosen = challenge::preferred(ping.headers());
    let http = client.http_client(host).map_err(failed)?;
    let header = match chosen {
        Some(Challenge::Basic { .. }) => match credential {
            Credential::Basic { username, password } => basic_header(username, password),
            Credential::IdentityToken(_) => {
                return Err(LoginError::UnsupportedChallenge {
                    server: server.display_name().to_owned(),
                });
            }
        },
        Some(Challenge::Bearer { realm, service, .. }) => {
            fetch_token(
                client,
                host,
                &realm,
                service.as_deref(),
                "",
                Some(credential),
            )
            .await
            .map_err(failed)?
            .0
        }
        None => {
            return Err(LoginError::UnsupportedChallenge {
                server: server.display_name().to_owned(),
            });
        }
    };
    verify(&http, &v2, host, header).await.map_err(failed)
}

/// `GET /v2/` with `header` must succeed.
async fn verify(
    http: &reqwest::Client,
    v2: &url::Url,
    host: &str,
    header: HeaderValue,
) -> Result<(), RegistryError> {
    let resp = http
        .get(v2.clone())
        .header(AUTHORIZATION, header)
        .send()
        .await
        .map_err(|e| error::from_reqwest(host, &e))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    if status == StatusCode::UNAUTHORIZED {
        return Err(RegistryError::Unauthorized {
            host: host.to_owned(),
            message: "incorrect username or password".to_owned(),
            anonymous: false,
        });
    }
    let body = read_capped(resp, 64 * 1024, v2.as_str())
        .await
        .unwrap_or_default();
    Err(error::from_response(
        v2.as_str(),
        host,
        status.as_u16(),
        &body,
        None,
    ))
}

/// Checks `credential` and, only if the registry accepts it, saves it in `docker_config` (through
/// its credential helper when one is configured).
///
/// # Errors
///
/// What [`check`] returns, before anything is saved; then [`LoginError::Save`] when the
/// credential helper or `config.json` refuses the credentials, or [`LoginError::Task`].
pub async fn login(
    client: &RegistryClient,
    docker_config: DockerConfig,
    server: &Server,
    credential: Credential,
) -> Result<(), LoginError> {
    check(client, server, &credential).await?;
    let name = server.name().to_owned();
    // Helpers are programs and the file is fsynced: keep both off the async threads.
    let saved = tokio::task::spawn_blocking(move || {
        let mut docker_config = docker_config;
        docker_config.save(&name, &credential)
    })
    .await
    .map_err(LoginError::Task)?;
    saved.map_err(|source| LoginError::Save {
        server: server.display_name().to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses() {
        for (input, name, api) in [
            ("docker.io", "docker.io", "registry-1.docker.io"),
            (
                "https://index.docker.io/v1/",
                "docker.io",
                "registry-1.docker.io",
            ),
            ("registry-1.docker.io", "docker.io", "registry-1.docker.io"),
            ("127.0.0.1:5000", "127.0.0.1:5000", "127.0.0.1:5000"),
            (
                "http://Registry.LAN:5000/v2/",
                "registry.lan:5000",
                "registry.lan:5000",
            ),
            ("ghcr.io", "ghcr.io", "ghcr.io"),
        ] {
            let s = Server::parse(input).unwrap();
            assert_eq!((s.name(), s.api_host()), (name, api), "{input}");
        }
        assert_eq!(
            Server::parse("docker.io").unwrap().display_name(),
            "https://index.docker.io/v1/"
        );
        for bad in ["", "https://", "user:pw@host", "a b", "host:port:x"] {
            assert!(Server::parse(bad).is_err(), "{bad:?}");
        }
    }
}
