//! Where foreign layer `urls` may lead.
//!
//! A manifest's `urls` are chosen by whoever wrote the manifest, so following them lets a registry
//! make haul send requests anywhere haul can reach: a blind SSRF into the local network (a cloud
//! metadata service, an admin interface on loopback). haul follows them only for foreign
//! (non-distributable) layers, only over http(s), and only to public addresses: loopback, private,
//! link-local, unique-local, unspecified, multicast and reserved ranges are refused unless
//! `foreign-layer-allowed-networks` lists them. The check is on the addresses actually connected
//! to: names are resolved by [`GuardedResolver`], which hands the connector only the addresses
//! that passed (no second lookup for DNS rebinding to exploit), literal addresses are checked
//! before the request and on every redirect. Through a proxy, the proxy resolves names itself;
//! haul then checks literal addresses only.
//!
//! The URLs are tried only when the registry itself cannot serve the layer (a non-retryable
//! error), in order, without credentials, through a client of their own.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use super::error::{self, ForeignUrlRefusal, RegistryError};
use super::http::refused_address;
use super::repository::Repository;
use super::settings::RegistrySettings;
use crate::manifest::{Descriptor, media_type};

/// Whether `ip` is an ordinary address on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0 // "this network", 0.0.0.0 included: Linux connects it to loopback
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || (a == 100 && (b & 0xc0) == 64) // shared address space (carrier NAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b & 0xfe) == 18) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated, still routed by some)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0)) // discard
}

/// The IPv4 address inside an IPv6 one that reaches it: mapped (`::ffff:a.b.c.d`), compatible
/// (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) and 6to4 (`2002::/16`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..6].iter().all(|&x| x == 0) && !ip.is_loopback() && !ip.is_unspecified() {
        return Some(low);
    }
    if s[0] == 0x0064 && s[1] == 0xff9b && s[2..6].iter().all(|&x| x == 0) {
        return Some(low);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

/// Whether foreign layer URLs may reach `ip` under `settings`.
pub fn allowed(settings: &RegistrySettings, ip: IpAddr) -> bool {
    is_public(ip) || settings.allows_foreign_network(ip)
}

/// An address a foreign layer URL led to and haul refused; found in a transport error's chain.
#[derive(Debug, thiserror::Error)]
#[error("{0} is not a public address")]
pub(crate) struct RefusedAddress(pub IpAddr);

/// Resolves names like the system does, then keeps only the addresses [`allowed`] lets through.
pub(crate) struct GuardedResolver {
    pub settings: Arc<RegistrySettings>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let settings = self.settings.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // The registries' own lookup, so a name that does not exist fails at once here too.
            let found: Vec<SocketAddr> = super::resolve::lookup(&host).await?;
            let (usable, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
                found.into_iter().partition(|a| allowed(&settings, a.ip()));
            match (usable.is_empty(), refused.first()) {
                (true, Some(first)) => Err(Box::new(RefusedAddress(first.ip())) as _),
                _ => Ok(Box::new(usable.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

/// Why `url` may not be fetched before any lookup: its scheme, or a literal address.
pub(crate) fn check_literal(
    settings: &RegistrySettings,
    url: &url::Url,
) -> Result<(), ForeignUrlRefusal> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ForeignUrlRefusal::Scheme);
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        _ => return Ok(()),
    };
    if allowed(settings, ip) {
        Ok(())
    } else {
        Err(ForeignUrlRefusal::Address(ip))
    }
}

/// Redirects are held to the same rules as the URL itself (names are checked by the resolver).
pub(crate) fn redirect_policy(settings: Arc<RegistrySettings>) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 10 {
            return attempt.error("too many redirects");
        }
        match check_literal(&settings, attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(ForeignUrlRefusal::Address(ip)) => attempt.error(RefusedAddress(ip)),
            Err(reason) => attempt.error(reason.to_string()),
        }
    })
}

impl Repository {
    /// Whether `desc` may be fetched from its `urls` when the registry does not serve it: only a
    /// foreign (non-distributable) layer. Any other layer's `urls` are ignored, or a registry
    /// could make haul request whatever it likes by 404ing a blob.
    pub(super) fn may_use_urls(desc: &Descriptor) -> bool {
        !desc.urls.is_empty() && media_type::is_non_distributable(&desc.media_type)
    }

    /// Tries a foreign layer's URLs in order, without registry credentials. When none serves
    /// it, a URL refused for where it leads is the error (the user can allow that network);
    /// otherwise the registry's own.
    pub(super) async fn foreign(
        &self,
        desc: &Descriptor,
        registry_error: RegistryError,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut refused = None;
        for url in &desc.urls {
            match self.foreign_blob(url).await {
                Ok(r) => return Ok(r),
                Err(e @ RegistryError::ForeignUrlRefused { .. }) => {
                    tracing::warn!(%url, error = %e, "foreign layer URL refused");
                    refused.get_or_insert(e);
                }
                Err(e) => tracing::debug!(%url, error = %e, "foreign layer URL failed"),
            }
        }
        Err(refused.unwrap_or(registry_error))
    }

    /// Downloads a foreign layer from `url`: no credentials, no registry auth, and only from
    /// addresses [`allowed`] lets through (checked on the literal address, on every address a name
    /// resolves to, and on every redirect).
    async fn foreign_blob(&self, url: &str) -> Result<reqwest::Response, RegistryError> {
        let parsed = url::Url::parse(url).map_err(|e| RegistryError::BadUrl {
            url: url.to_owned(),
            detail: e.to_string(),
        })?;
        let refused = |reason| RegistryError::ForeignUrlRefused {
            url: url.to_owned(),
            reason,
        };
        check_literal(self.client.settings(), &parsed).map_err(refused)?;
        let host = parsed.host_str().unwrap_or_default().to_owned();
        let within = self.client.stall_timeout();
        let req = self.client.foreign_http()?.get(parsed);
        let resp = match tokio::time::timeout(within, req.send()).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                if let Some(ip) = refused_address(&e) {
                    return Err(refused(ForeignUrlRefusal::Address(ip)));
                }
                return Err(if e.is_timeout() && !e.is_connect() && !e.is_body() {
                    RegistryError::NoResponseHeaders {
                        host,
                        after: within,
                    }
                } else {
                    error::from_reqwest(&host, &e)
                });
            }
            Err(_) => {
                return Err(RegistryError::NoResponseHeaders {
                    host,
                    after: within,
                });
            }
        };
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            return Err(error::from_response(url, &host, status, b"", None));
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        let refused = [
            "127.0.0.1",
            "127.255.0.9",
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "192.0.0.170",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2001:db8::1",
        ];
        for ip in refused {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "13.107.42.14",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn configured_networks_are_allowed_and_nothing_else() {
        let config = RegistrySettings {
            foreign_layer_allowed_networks: vec!["10.1.0.0/16".into(), "127.0.0.2".into()],
            ..RegistrySettings::default()
        };
        assert!(allowed(&config, "10.1.200.3".parse().unwrap()));
        assert!(allowed(&config, "127.0.0.2".parse().unwrap()));
        assert!(!allowed(&config, "10.2.0.1".parse().unwrap()));
        assert!(!allowed(&config, "127.0.0.1".parse().unwrap()));
        let url = |s: &str| url::Url::parse(s).unwrap();
        assert!(check_literal(&config, &url("http://127.0.0.1:5000/x")).is_err());
        assert!(check_literal(&config, &url("http://[::1]/x")).is_err());
        assert!(check_literal(&config, &url("http://0.0.0.0:80/x")).is_err());
        assert!(check_literal(&config, &url("file:///etc/passwd")).is_err());
        assert!(check_literal(&config, &url("https://127.0.0.2/x")).is_ok());
        // Names pass here; the resolver checks what they resolve to.
        assert!(check_literal(&config, &url("https://localhost/x")).is_ok());
    }

    #[tokio::test]
    async fn names_resolving_to_loopback_are_refused_by_the_resolver() {
        use reqwest::dns::Resolve;
        let resolver = GuardedResolver {
            settings: Arc::new(RegistrySettings::default()),
        };
        let err = match resolver.resolve("localhost".parse().unwrap()).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e,
        };
        assert!(err.downcast_ref::<RefusedAddress>().is_some(), "{err}");
    }
}
