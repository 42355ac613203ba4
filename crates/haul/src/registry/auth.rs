//! Authentication: turning a registry's challenge into an `Authorization` header.
//!
//! Challenges are remembered per endpoint host, bearer tokens per (host, scope) until shortly before
//! they expire, and credentials per registry name (a `docker-credential-*` helper runs at most once
//! per registry per process). Concurrent requests needing the same token share one token request.
//! The header is only ever attached to requests to the host that issued the challenge: redirects to
//! other hosts go out without it (reqwest strips it when the host changes). Credentials go to a
//! token realm only over HTTPS, unless the registry is itself insecure and the realm is on its
//! host ([`RegistryClient::realm_client`]); a token's lifetime, whatever the server says, is
//! held to [`MAX_TOKEN_LIFETIME`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::header::{AUTHORIZATION, HeaderValue};

use super::challenge::{self, Challenge};
use super::client::RegistryClient;
use super::credentials::{Credential, CredentialError, DockerConfig};
use super::error::RegistryError;

/// Where credentials come from. [`DockerConfig`] is the usual source; tests and embedders may
/// supply their own.
///
/// The client asks at most once per registry per process and remembers the answer (including
/// "none"), from a blocking thread: an implementation may block, on a file or a helper program.
///
/// ```
/// use haul::registry::{Credential, CredentialError, CredentialStore};
///
/// /// One robot account for the company registry, anonymous everywhere else.
/// struct Robot {
///     token: String,
/// }
///
/// impl CredentialStore for Robot {
///     fn get(&self, registry: &str) -> Result<Option<Credential>, CredentialError> {
///         Ok((registry == "registry.example.com").then(|| Credential::Basic {
///             username: "robot".to_owned(),
///             password: self.token.clone(),
///         }))
///     }
/// }
///
/// let robot = Robot { token: "s3cret".to_owned() };
/// assert!(robot.get("docker.io").unwrap().is_none());
/// ```
pub trait CredentialStore: Send + Sync {
    /// The credential for `registry` (`docker.io` for Docker Hub, else `host[:port]`), or `None`
    /// to go anonymous.
    ///
    /// # Errors
    ///
    /// When the credentials cannot be read: the request that needed them fails with
    /// [`RegistryError::Credentials`](super::RegistryError::Credentials).
    fn get(&self, registry: &str) -> Result<Option<Credential>, CredentialError>;
}

impl CredentialStore for DockerConfig {
    fn get(&self, registry: &str) -> Result<Option<Credential>, CredentialError> {
        self.lookup(registry)
    }
}

/// No credentials at all: anonymous pulls only.
pub struct Anonymous;

impl CredentialStore for Anonymous {
    fn get(&self, _registry: &str) -> Result<Option<Credential>, CredentialError> {
        Ok(None)
    }
}

/// Fixed credentials per registry name.
#[derive(Default)]
pub struct StaticCredentials(
    /// Credentials by registry name (`docker.io`, `host[:port]`).
    pub HashMap<String, Credential>,
);

impl CredentialStore for StaticCredentials {
    fn get(&self, registry: &str) -> Result<Option<Credential>, CredentialError> {
        Ok(self.0.get(registry).cloned())
    }
}

/// Tokens are renewed this long before they expire so a request never leaves with a stale one.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// The longest a token is kept, whatever `expires_in` says (2^64-1 and 1e300 included): a day is
/// longer than any pull, and a registry that revokes it earlier answers 401, which renews it.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

struct CachedToken {
    header: HeaderValue,
    expires: Instant,
}

type TokenSlot = Arc<tokio::sync::Mutex<Option<CachedToken>>>;

pub(crate) struct Authenticator {
    store: Arc<dyn CredentialStore>,
    credentials: tokio::sync::Mutex<HashMap<String, Option<Credential>>>,
    challenges: Mutex<HashMap<String, Option<Challenge>>>,
    tokens: Mutex<HashMap<(String, String), TokenSlot>>,
}

impl Authenticator {
    pub(crate) fn new(store: Arc<dyn CredentialStore>) -> Self {
        Authenticator {
            store,
            credentials: tokio::sync::Mutex::new(HashMap::new()),
            challenges: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Records the challenge of a 401 response (or that `/v2/` needed none).
    pub(crate) fn learn(&self, host: &str, response: Option<&reqwest::Response>) {
        let challenge = response.and_then(|r| challenge::preferred(r.headers()));
        if let Ok(mut c) = self.challenges.lock() {
            c.insert(host.to_owned(), challenge);
        }
    }

    /// Forgets a token that the registry refused, so the next request fetches a fresh one.
    pub(crate) fn invalidate(&self, host: &str, scope: &str) {
        if let Ok(mut t) = self.tokens.lock() {
            t.remove(&(host.to_owned(), scope.to_owned()));
        }
    }

    /// Whether credentials are filed for `registry` (what a 401 means depends on it).
    pub(crate) async fn has_credential(&self, registry: &str) -> Result<bool, RegistryError> {
        Ok(self.credential(registry).await?.is_some())
    }

    async fn credential(&self, registry: &str) -> Result<Option<Credential>, RegistryError> {
        let mut cache = self.credentials.lock().await;
        if let Some(c) = cache.get(registry) {
            return Ok(c.clone());
        }
        let store = self.store.clone();
        let name = registry.to_owned();
        let found = tokio::task::spawn_blocking(move || store.get(&name))
            .await
            .map_err(|e| RegistryError::Transport {
                host: registry.to_owned(),
                detail: format!("credential lookup failed: {e}"),
            })??;
        cache.insert(registry.to_owned(), found.clone());
        Ok(found)
    }

    /// The `Authorization` header for a request to `host` needing `scope`, if the host asked for one.
    /// `registry` is the name credentials are filed under (`docker.io` for Docker Hub).
    pub(crate) async fn header(
        &self,
        client: &RegistryClient,
        host: &str,
        registry: &str,
        scope: &str,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        let challenge = self
            .challenges
            .lock()
            .ok()
            .and_then(|c| c.get(host).cloned().flatten());
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic { .. }) => match self.credential(registry).await? {
                Some(Credential::Basic { username, password }) => {
                    Ok(Some(basic_header(&username, &password)))
                }
                // An identity token only works with a token server; without one there is nothing
                // to send, and the registry's 401 will say so.
                Some(Credential::IdentityToken(_)) | None => Ok(None),
            },
            Some(Challenge::Bearer { realm, service, .. }) => {
                let slot = {
                    let mut tokens = self.tokens.lock().map_err(|_| poisoned(host))?;
                    tokens
                        .entry((host.to_owned(), scope.to_owned()))
                        .or_default()
                        .clone()
                };
                let mut cached = slot.lock().await;
                if let Some(t) = cached.as_ref()
                    && t.expires > Instant::now()
                {
                    return Ok(Some(t.header.clone()));
                }
                let credential = self.credential(registry).await?;
                let (header, lifetime) = fetch_token(
                    client,
                    host,
                    &realm,
                    service.as_deref(),
                    scope,
                    credential.as_ref(),
                )
                .await?;
                *cached = Some(CachedToken {
                    header: header.clone(),
                    expires: expiry(Instant::now(), lifetime),
                });
                Ok(Some(header))
            }
        }
    }
}

/// When a token received at `now` and good for `lifetime` is renewed: a little early, never past
/// [`MAX_TOKEN_LIFETIME`], and without overflowing `Instant` however large `lifetime` is.
fn expiry(now: Instant, lifetime: Duration) -> Instant {
    let keep = lifetime
        .min(MAX_TOKEN_LIFETIME)
        .saturating_sub(EXPIRY_MARGIN);
    now.checked_add(keep).unwrap_or(now)
}

fn poisoned(host: &str) -> RegistryError {
    RegistryError::Transport {
        host: host.to_owned(),
        detail: "internal token cache poisoned".to_owned(),
    }
}

pub(crate) fn basic_header(username: &str, password: &str) -> HeaderValue {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let mut v = HeaderValue::from_str(&format!("Basic {encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    v.set_sensitive(true);
    v
}

fn bearer_header(token: &str, realm: &str) -> Result<HeaderValue, RegistryError> {
    let mut v =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| RegistryError::Token {
            realm: realm.to_owned(),
            detail: "the token contains characters not allowed in a header".to_owned(),
        })?;
    v.set_sensitive(true);
    Ok(v)
}

/// Docker's token flow: GET with Basic credentials (or none), or the OAuth2 POST when all we have
/// is an identity (refresh) token from `docker login`. An empty `scope` asks for no access at all,
/// as `login` does to check credentials. `registry_host` is the registry that named `realm`: it
/// decides whether the realm may be reached without verified TLS (see
/// [`RegistryClient::realm_client`]); a realm refused there gets no request at all.
pub(crate) async fn fetch_token(
    client: &RegistryClient,
    registry_host: &str,
    realm: &str,
    service: Option<&str>,
    scope: &str,
    credential: Option<&Credential>,
) -> Result<(HeaderValue, Duration), RegistryError> {
    let mut url = url::Url::parse(realm).map_err(|e| RegistryError::BadUrl {
        url: realm.to_owned(),
        detail: e.to_string(),
    })?;
    let http = client.realm_client(registry_host, &url)?;
    let realm_host = url.host_str().unwrap_or_default().to_owned();
    let request = match credential {
        Some(Credential::IdentityToken(refresh)) => {
            let mut form = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.as_str()),
                ("client_id", "haul"),
            ];
            if !scope.is_empty() {
                form.push(("scope", scope));
            }
            if let Some(s) = service {
                form.push(("service", s));
            }
            http.post(url.clone()).form(&form)
        }
        other => {
            {
                let mut q = url.query_pairs_mut();
                if let Some(s) = service {
                    q.append_pair("service", s);
                }
                if !scope.is_empty() {
                    q.append_pair("scope", scope);
                }
            }
            let mut req = http.get(url.clone());
            if let Some(Credential::Basic { username, password }) = other {
                req = req.header(AUTHORIZATION, basic_header(username, password));
            }
            req
        }
    };
    let response = client.send(request, &realm_host).await?;
    let status = response.status();
    let body = client
        .read_capped(response, 1 << 20, realm)
        .await
        .map_err(|e| match e {
            RegistryError::TooLarge { .. } => RegistryError::Token {
                realm: realm.to_owned(),
                detail: "token response too large".to_owned(),
            },
            other => other,
        })?;
    if !status.is_success() {
        return Err(match status.as_u16() {
            401 | 403 => RegistryError::Unauthorized {
                host: realm_host,
                message: if credential.is_some() {
                    "incorrect username or password".to_owned()
                } else {
                    "authentication required".to_owned()
                },
                anonymous: credential.is_none(),
            },
            s => super::error::from_response(realm, &realm_host, s, &body, None),
        });
    }
    let token = challenge::parse_token_response(&body)?;
    let header = bearer_header(&token.token, realm)?;
    Ok((header, token.lifetime()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_lifetime_never_overflows_and_is_held_to_a_day() {
        let now = Instant::now();
        for secs in [u64::MAX, u64::MAX / 2, 1 << 40] {
            let at = expiry(now, Duration::from_secs(secs));
            assert_eq!(at - now, MAX_TOKEN_LIFETIME - EXPIRY_MARGIN, "{secs}");
        }
        assert_eq!(
            expiry(now, Duration::MAX) - now,
            MAX_TOKEN_LIFETIME - EXPIRY_MARGIN
        );
        assert_eq!(
            expiry(now, Duration::from_secs(300)) - now,
            Duration::from_secs(290)
        );
        assert_eq!(expiry(now, Duration::from_secs(5)), now);
    }
}
