//! Where a repository's requests go: its mirrors, in the configured order, then its registry.
//!
//! Promises:
//! - A mirror that fails in any way (unreachable, timeout, 5xx, 404, refused credentials) hands
//!   the request to the next endpoint instead of failing it; only the registry's own error is
//!   returned. A mirror found unreachable is not asked again by the same [`Repository`].
//! - The image's identity never changes: the repository path, tags and digests are the
//!   upstream's; only the host contacted differs.
//! - Each mirror is its own host for authentication: credentials are looked up under the
//!   mirror's `host[:port]`, never the upstream's name, so the upstream's password never reaches
//!   a mirror. A mirror URL is used with the scheme it was given.
//! - Per blob, a mirror gets [`MIRROR_TRIES_PER_BLOB`] attempts in a row, and none after it
//!   served bytes that failed verification ([`Repository::reject_blob_source`]).

use std::collections::HashMap;
use std::sync::Mutex;

use super::error::RegistryError;
use super::repository::Repository;
use crate::digest::Digest;

/// How many attempts in a row one mirror gets at one blob before the next endpoint is asked:
/// the first may be a blip worth resuming on the mirror, a second failure says it is the
/// mirror's problem (a cache that keeps dropping the stream) and the upstream should serve it.
pub(super) const MIRROR_TRIES_PER_BLOB: u32 = 2;

/// One place a repository's content is fetched from: a mirror or the registry itself.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    /// `host[:port]` contacted: the key for challenges, tokens and the plain-HTTP rule.
    pub(super) host: String,
    /// The name credentials are looked up under: the registry's name (`docker.io`) for the
    /// registry, the mirror's own `host[:port]` for a mirror, so the upstream's credentials are
    /// never sent to a mirror.
    pub(super) credentials: String,
    /// A mirror's base URL as configured (scheme included, path ending in `/`); `None` for the
    /// registry, whose scheme is learnt by pinging.
    pub(super) mirror: Option<url::Url>,
}

impl Endpoint {
    pub(super) fn mirror(url: &url::Url) -> Option<Endpoint> {
        let name = url.host_str()?;
        let host = match url.port() {
            Some(port) => format!("{name}:{port}"),
            None => name.to_owned(),
        };
        let mut base = url.clone();
        base.set_query(None);
        base.set_fragment(None);
        // `join("v2/")` replaces the last path segment unless the path ends in a slash.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Some(Endpoint {
            credentials: host.clone(),
            host,
            mirror: Some(base),
        })
    }

    /// How the endpoint is named in logs: a mirror by its URL, the registry by its host.
    pub(super) fn label(&self) -> &str {
        self.mirror.as_ref().map_or(&self.host, |u| u.as_str())
    }
}

/// What the endpoints of one [`Repository`] (and its clones) have shown so far.
pub(super) struct EndpointState {
    /// Per mirror: found unreachable, so not asked again.
    pub(super) unreachable: Mutex<Vec<bool>>,
    /// Per blob: the endpoint (index into mirrors, `mirrors.len()` = the registry) its last
    /// attempt used and how many attempts in a row it had there. The caller asks for a blob
    /// again only after an attempt failed, so a repeat is a failure of the one before.
    pub(super) blob_cursor: Mutex<HashMap<Digest, (usize, u32)>>,
}

impl EndpointState {
    pub(super) fn new(mirrors: usize) -> Self {
        EndpointState {
            unreachable: Mutex::new(vec![false; mirrors]),
            blob_cursor: Mutex::new(HashMap::new()),
        }
    }
}

impl Repository {
    pub(super) fn mirror_reachable(&self, index: usize) -> bool {
        self.state
            .unreachable
            .lock()
            .ok()
            .and_then(|u| u.get(index).copied())
            .is_some_and(|dead| !dead)
    }

    /// Notes a mirror's failure: logged, and remembered when the mirror could not be reached.
    pub(super) fn mirror_failed(&self, index: usize, what: &str, err: &RegistryError) {
        let Some(mirror) = self.mirrors.get(index) else {
            return;
        };
        if err.is_unreachable() {
            tracing::warn!(mirror = mirror.label(), error = %err, "mirror unreachable; not using it for {}", self.name);
            if let Ok(mut u) = self.state.unreachable.lock()
                && let Some(slot) = u.get_mut(index)
            {
                *slot = true;
            }
        } else {
            tracing::debug!(mirror = mirror.label(), error = %err, "{what} not served by the mirror; trying the next endpoint");
        }
    }

    /// Runs `op` against each reachable mirror once, then against the registry with the
    /// configured number of attempts; the first success wins. A mirror's error is never
    /// returned: the registry's is.
    ///
    /// `op` takes endpoints of one fixed lifetime (not an async closure over any borrow): a
    /// higher-ranked future would not be provably `Send`, and pulls run on spawned tasks.
    pub(super) async fn first_success<'a, T, F, Fut>(
        &'a self,
        what: &str,
        mut op: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut(&'a Endpoint, u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        for (i, mirror) in self.mirrors.iter().enumerate() {
            if !self.mirror_reachable(i) {
                continue;
            }
            tracing::debug!(
                mirror = mirror.label(),
                "{what}: trying the mirror for {}",
                self.name
            );
            match op(mirror, 1).await {
                Ok(v) => return Ok(v),
                Err(e) => self.mirror_failed(i, what, &e),
            }
        }
        op(&self.upstream, self.attempts()).await
    }

    /// The endpoint the next attempt at `digest` starts from, and what the attempts so far were
    /// (endpoint, attempts in a row there).
    pub(super) fn blob_start(&self, digest: &Digest) -> (usize, Option<(usize, u32)>) {
        let upstream = self.mirrors.len();
        let previous = self
            .state
            .blob_cursor
            .lock()
            .ok()
            .and_then(|c| c.get(digest).copied());
        let first = match previous {
            Some((i, tries)) if i < upstream && tries >= MIRROR_TRIES_PER_BLOB => i + 1,
            Some((i, _)) => i,
            None => 0,
        };
        (first, previous)
    }

    /// Tells the repository that the bytes the last attempt at `digest` received were wrong
    /// (they failed verification), so that endpoint is not asked for this blob again. Returns
    /// whether another endpoint is left to ask: true when the bad bytes came from a mirror, so
    /// the caller can discard them and retry instead of failing the pull; false when they came
    /// from the registry itself (nothing is behind it).
    pub(super) fn reject_blob_source(&self, digest: &Digest) -> bool {
        let upstream = self.mirrors.len();
        let Ok(mut cursor) = self.state.blob_cursor.lock() else {
            return false;
        };
        match cursor.get(digest).copied() {
            Some((i, _)) if i < upstream => {
                cursor.insert(digest.clone(), (i + 1, 0));
                true
            }
            _ => false,
        }
    }

    pub(super) fn note_blob_attempt(
        &self,
        digest: &Digest,
        endpoint: usize,
        previous: Option<(usize, u32)>,
    ) {
        let tries = match previous {
            Some((i, n)) if i == endpoint => n.saturating_add(1),
            _ => 1,
        };
        if let Ok(mut c) = self.state.blob_cursor.lock() {
            c.insert(digest.clone(), (endpoint, tries));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::registry::{Anonymous, ClientOptions, RegistryClient, RegistrySettings};

    #[test]
    fn mirror_endpoints_keep_scheme_and_path_and_use_their_own_credentials() {
        let cases = [
            (
                "https://mirror.local",
                "mirror.local",
                "https://mirror.local/",
            ),
            (
                "http://127.0.0.1:5001",
                "127.0.0.1:5001",
                "http://127.0.0.1:5001/",
            ),
            (
                "https://cache.lan:443/hub?x=1",
                "cache.lan",
                "https://cache.lan/hub/",
            ),
            ("http://[::1]:5000/", "[::1]:5000", "http://[::1]:5000/"),
        ];
        for (url, host, base) in cases {
            let e = Endpoint::mirror(&url.parse().unwrap()).unwrap();
            assert_eq!(e.host, host, "{url}");
            assert_eq!(
                e.credentials, host,
                "{url}: credentials are the mirror's own"
            );
            let b = e.mirror.unwrap();
            assert_eq!(b.as_str(), base, "{url}");
            assert_eq!(
                b.join("v2/").unwrap().path(),
                format!("{}v2/", b.path()),
                "{url}"
            );
        }
    }

    #[test]
    fn a_mirror_rejected_for_a_blob_is_skipped_for_it_and_the_registry_cannot_be() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut mirrors = std::collections::BTreeMap::new();
        mirrors.insert(
            "127.0.0.1:1".to_owned(),
            vec!["http://127.0.0.1:2".parse().unwrap()],
        );
        let config = RegistrySettings {
            registry_mirrors: mirrors,
            max_download_attempts: 1,
            ..RegistrySettings::default()
        };
        let client =
            RegistryClient::new(config, Arc::new(Anonymous), ClientOptions::default()).unwrap();
        let repo = client.repository(&"127.0.0.1:1/a/b:1".parse().unwrap());
        let digest = Digest::sha256_of(b"x");
        // Nothing fetched yet: nothing to reject.
        assert!(!repo.reject_blob_source(&digest));
        // The last attempt was on the mirror: reject it, the registry is left.
        repo.note_blob_attempt(&digest, 0, None);
        assert!(repo.reject_blob_source(&digest));
        assert_eq!(
            repo.state.blob_cursor.lock().unwrap().get(&digest).copied(),
            Some((1, 0))
        );
        // The registry served it: nothing behind it.
        assert!(!repo.reject_blob_source(&digest));
    }
}
