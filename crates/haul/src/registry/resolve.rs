//! Name resolution for registries and token realms: the system's resolver (`getaddrinfo`, so
//! `/etc/hosts`, nsswitch and search domains work as for any program), keeping its error code.
//!
//! Promises:
//! - A name the resolver says does not exist fails as [`LookupError::NoSuchHost`], which the
//!   retry layer never retries (docker: `dial tcp: lookup HOST: no such host`); a temporary
//!   failure (`EAI_AGAIN`, a DNS server not answering) is [`LookupError::Other`] and retried.
//! - The classification is by the resolver's code, never by its message.

use std::net::SocketAddr;

/// Why a name did not resolve. Travels inside reqwest's error chain, where
/// [`super::error::from_reqwest`] finds it by type.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LookupError {
    /// The name does not exist (`EAI_NONAME`, `EAI_NODATA`: NXDOMAIN, or no address records).
    #[error("lookup {name}: no such host")]
    NoSuchHost {
        /// The name looked up.
        name: String,
    },
    /// Any other failure, temporary ones included.
    #[error("lookup {name}: {source}")]
    Other {
        /// The name looked up.
        name: String,
        /// What the resolver said.
        source: std::io::Error,
    },
}

/// The addresses of `name`, port 0 (reqwest puts the port in).
pub(crate) async fn lookup(name: &str) -> Result<Vec<SocketAddr>, LookupError> {
    let owned = name.to_owned();
    let looked_up = tokio::task::spawn_blocking(move || {
        dns_lookup::lookup_host(&owned).map(|ips| ips.collect::<Vec<_>>())
    })
    .await;
    let other = |source: std::io::Error| LookupError::Other {
        name: name.to_owned(),
        source,
    };
    match looked_up {
        Ok(Ok(ips)) => Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect()),
        Ok(Err(e)) => match e.kind() {
            dns_lookup::LookupErrorKind::NoName | dns_lookup::LookupErrorKind::NoData => {
                Err(LookupError::NoSuchHost {
                    name: name.to_owned(),
                })
            }
            _ => Err(other(e.into())),
        },
        Err(join) => Err(other(std::io::Error::other(join))),
    }
}

/// The resolver of the registry clients: [`lookup`], so a missing name keeps its type through
/// reqwest. `ClientOptions::resolve` overrides still answer first (reqwest checks them before
/// asking a resolver).
pub(crate) struct SystemResolver;

impl reqwest::dns::Resolve for SystemResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = lookup(&name).await?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_invalid_name_is_no_such_host_and_localhost_resolves() {
        let found = lookup("localhost").await.unwrap();
        assert!(found.iter().all(|a| a.ip().is_loopback()), "{found:?}");
        // RFC 6761: `.invalid` never resolves; but without a reachable DNS server the resolver
        // can only say "try again", which is rightly not "no such host".
        let answers = matches!(
            dns_lookup::lookup_host("haul-probe.invalid").map_err(|e| e.kind()),
            Err(dns_lookup::LookupErrorKind::NoName | dns_lookup::LookupErrorKind::NoData)
        );
        if !answers {
            println!("SKIPPED: the resolver here cannot say that a name does not exist");
            return;
        }
        let err = lookup("nosuchhost.invalid").await.unwrap_err();
        assert!(
            matches!(err, LookupError::NoSuchHost { ref name } if name == "nosuchhost.invalid")
        );
        assert_eq!(err.to_string(), "lookup nosuchhost.invalid: no such host");
    }
}
