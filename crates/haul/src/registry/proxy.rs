//! Which proxy, if any, a request goes through: the config file's `proxies` when it sets one,
//! else the environment's `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY` (upper or
//! lower case; none of them in a CGI context, where `HTTP_PROXY` could come from a request
//! header).
//!
//! Promises:
//! - Loopback destinations are never proxied, whatever the settings say: `localhost`, any
//!   address in 127.0.0.0/8 and `::1` (docker's rule, from Go's `httpproxy`; curl would proxy
//!   them unless `NO_PROXY` names them). A name that merely resolves to loopback is proxied: the
//!   proxy resolves it.
//! - `NO_PROXY` entries are matched as reqwest matches them (hyper-util's matcher): domains with
//!   their subdomains, addresses, CIDRs, `*`.
//! - The one decision, [`ProxyRules::proxy_for`], is what reqwest uses and what an error uses to
//!   name the proxy that failed.

use hyper_util::client::proxy::matcher::Matcher;

use super::settings::{self, RegistrySettings};

/// The proxies of one client.
pub(crate) struct ProxyRules {
    /// The proxy URL for `http://` destinations, as configured (credentials included).
    http: Option<String>,
    /// The proxy URL for `https://` destinations.
    https: Option<String>,
    /// Decides whether a destination is proxied (the `NO_PROXY` part); built from the same
    /// strings.
    matcher: Matcher,
}

impl ProxyRules {
    /// The config file's proxies when it sets any, else the environment's.
    pub(crate) fn new(settings: &RegistrySettings) -> ProxyRules {
        let p = if settings.proxies.is_set() {
            settings.proxies.clone()
        } else {
            crate::config::env_proxies()
        };
        ProxyRules::from_parts(p.http, p.https, p.no_proxy)
    }

    fn from_parts(
        http: Option<String>,
        https: Option<String>,
        no_proxy: Option<String>,
    ) -> ProxyRules {
        let mut b = Matcher::builder();
        if let Some(h) = &http {
            b = b.http(with_scheme(h));
        }
        if let Some(h) = &https {
            b = b.https(with_scheme(h));
        }
        if let Some(n) = &no_proxy {
            b = b.no(n.as_str());
        }
        ProxyRules {
            http,
            https,
            matcher: b.build(),
        }
    }

    /// Whether any destination may be proxied.
    pub(crate) fn is_empty(&self) -> bool {
        self.http.is_none() && self.https.is_none()
    }

    /// The proxy URL (as configured, credentials included) that a request to `url` goes
    /// through, or `None` for a direct connection.
    pub(crate) fn proxy_for(&self, url: &url::Url) -> Option<&str> {
        if is_loopback_destination(url) {
            return None;
        }
        let uri: http::Uri = url.as_str().parse().ok()?;
        self.matcher.intercept(&uri)?;
        match url.scheme() {
            "http" => self.http.as_deref(),
            "https" => self.https.as_deref(),
            _ => None,
        }
    }
}

impl std::fmt::Debug for ProxyRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyRules")
            .field("http", &self.http.as_deref().map(settings::redact_userinfo))
            .field(
                "https",
                &self.https.as_deref().map(settings::redact_userinfo),
            )
            .finish_non_exhaustive()
    }
}

/// A proxy URL without a scheme means `http://`, as reqwest and curl read it.
pub(crate) fn with_scheme(proxy: &str) -> String {
    if proxy.contains("://") {
        proxy.to_owned()
    } else {
        format!("http://{proxy}")
    }
}

/// docker's (Go's) exemption: the name `localhost` or a loopback address literal.
fn is_loopback_destination(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(no_proxy: Option<&str>) -> ProxyRules {
        ProxyRules::from_parts(
            Some("http://u:p@proxy.corp:3128".into()),
            Some("proxy.corp:3129".into()),
            no_proxy.map(str::to_owned),
        )
    }

    fn via(r: &ProxyRules, url: &str) -> Option<String> {
        r.proxy_for(&url::Url::parse(url).unwrap())
            .map(str::to_owned)
    }

    #[test]
    fn loopback_is_never_proxied() {
        let r = rules(None);
        for url in [
            "http://127.0.0.1:5000/v2/",
            "https://127.0.0.1:5000/v2/",
            "https://127.1.2.3/v2/",
            "https://[::1]:5000/v2/",
            "https://localhost:5000/v2/",
            "https://LOCALHOST/v2/",
        ] {
            assert_eq!(via(&r, url), None, "{url}");
        }
    }

    #[test]
    fn other_hosts_go_to_the_proxy_of_their_scheme_unless_no_proxy_names_them() {
        let r = rules(Some("internal.corp, 10.0.0.0/8"));
        assert_eq!(
            via(&r, "http://registry.example:5000/v2/").as_deref(),
            Some("http://u:p@proxy.corp:3128")
        );
        assert_eq!(
            via(&r, "https://registry.example/v2/").as_deref(),
            Some("proxy.corp:3129")
        );
        // A name resolving to loopback is still proxied: the proxy resolves it.
        assert!(via(&r, "https://registry.test:5000/v2/").is_some());
        assert_eq!(via(&r, "https://internal.corp/v2/"), None);
        assert_eq!(via(&r, "https://r.internal.corp/v2/"), None);
        assert_eq!(via(&r, "https://10.1.2.3/v2/"), None);
        assert!(via(&r, "https://11.1.2.3/v2/").is_some());
        assert!(ProxyRules::from_parts(None, None, None).is_empty());
        assert_eq!(
            via(
                &ProxyRules::from_parts(None, None, None),
                "https://r.example/"
            ),
            None
        );
    }

    #[test]
    fn debug_never_shows_credentials() {
        let text = format!("{:?}", rules(None));
        assert!(!text.contains("u:p"), "{text}");
    }
}
