//! Private CAs and client certificates the way docker and podman find them: a directory per
//! registry, `CERTS_ROOT/HOST[:PORT]/`, holding
//! - `*.crt`: CA certificates (PEM) trusted for that registry, besides the system's roots;
//! - `NAME.cert` + `NAME.key`: a client certificate and its key (PEM), sent when the registry
//!   asks for one (mutual TLS). A `.cert` without its `.key`, or a `.key` without its `.cert`, is
//!   an error, with docker's words.
//!
//! Where: the config file's `certs-dir` when set (only that root); otherwise
//! `/etc/docker/certs.d` for root, and for other users first `$XDG_CONFIG_HOME/docker/certs.d`
//! (`~/.config/docker/certs.d`, rootless docker's) then `/etc/docker/certs.d`. The first root
//! holding a directory for the host is used, alone (podman's rule); the directory's name must be
//! the registry's `host[:port]` exactly as contacted (docker's rule: `registry.example:5000` is
//! not `registry.example`).
//!
//! Promises:
//! - Verification stays on: these certificates add trust for one host, they never turn it off.
//! - A host name that is not a plain directory name (`/`, `..`) never selects a directory.

use std::path::{Path, PathBuf};

/// A certs directory that could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertsDirError {
    /// A client certificate without its key (docker's message).
    #[error(
        "missing key {} for client certificate {}. CA certificates must use the extension .crt",
        .key.display(),
        .cert.display()
    )]
    MissingKey {
        /// The `.cert` file.
        cert: PathBuf,
        /// The `.key` file expected beside it.
        key: PathBuf,
    },
    /// A client key without its certificate (docker's message).
    #[error("missing client certificate {} for key {}", .cert.display(), .key.display())]
    MissingCertificate {
        /// The `.key` file.
        key: PathBuf,
        /// The `.cert` file expected beside it.
        cert: PathBuf,
    },
    /// The directory or a file in it could not be read.
    #[error("reading {}: {source}", .path.display())]
    Read {
        /// What could not be read.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not the PEM it should be.
    #[error("{}: {detail}", .path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
}

/// What a host's certs directory adds to its TLS.
pub(crate) struct HostTls {
    /// CA certificates trusted besides the system's.
    pub roots: Vec<reqwest::Certificate>,
    /// The client certificate and key, if the directory has one.
    pub identity: Option<reqwest::Identity>,
}

/// The roots searched for a host's directory, in order.
pub(crate) fn search_roots(configured: Option<&Path>) -> Vec<PathBuf> {
    if let Some(dir) = configured {
        return vec![dir.to_path_buf()];
    }
    default_roots(
        rustix::process::geteuid().is_root(),
        std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
    )
}

fn default_roots(root: bool, xdg: Option<PathBuf>, home: Option<PathBuf>) -> Vec<PathBuf> {
    let system = PathBuf::from("/etc/docker/certs.d");
    if root {
        return vec![system];
    }
    let user = xdg
        .filter(|p| p.is_absolute())
        .or_else(|| home.map(|h| h.join(".config")))
        .map(|c| c.join("docker").join("certs.d"));
    user.into_iter().chain([system]).collect()
}

/// The directory for `host` (`name[:port]`), if a root has one.
pub(crate) fn host_dir(roots: &[PathBuf], host: &str) -> Option<PathBuf> {
    if host.is_empty() || host.starts_with('.') || host.contains(['/', '\\', '\0']) {
        return None;
    }
    roots.iter().map(|r| r.join(host)).find(|d| d.is_dir())
}

/// Reads `dir` as moby's `ReadCertsDirectory` does. With several client certificates the first
/// by name is used (reqwest takes one identity).
pub(crate) fn read_dir(dir: &Path) -> Result<HostTls, CertsDirError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CertsDirError::Read { path, source }
    };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(read_err(dir))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .map_err(read_err(dir))?;
    names.sort();
    let has = |name: &str| names.iter().any(|n| n == name);
    let mut tls = HostTls {
        roots: Vec::new(),
        identity: None,
    };
    for name in &names {
        let path = dir.join(name);
        if name.ends_with(".crt") {
            let pem = std::fs::read(&path).map_err(read_err(&path))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                CertsDirError::Invalid {
                    path: path.clone(),
                    detail: format!("not a PEM certificate: {e}"),
                }
            })?;
            if certs.is_empty() {
                return Err(CertsDirError::Invalid {
                    path,
                    detail: "holds no PEM certificate".to_owned(),
                });
            }
            tls.roots.extend(certs);
        } else if let Some(stem) = name.strip_suffix(".cert") {
            let key = format!("{stem}.key");
            if !has(&key) {
                return Err(CertsDirError::MissingKey {
                    cert: path,
                    key: dir.join(key),
                });
            }
            if tls.identity.is_none() {
                let key_path = dir.join(&key);
                let mut pem = std::fs::read(&path).map_err(read_err(&path))?;
                pem.push(b'\n');
                pem.extend(std::fs::read(&key_path).map_err(read_err(&key_path))?);
                let identity =
                    reqwest::Identity::from_pem(&pem).map_err(|e| CertsDirError::Invalid {
                        path: path.clone(),
                        detail: format!("not a PEM client certificate and key: {e}"),
                    })?;
                tls.identity = Some(identity);
            }
        } else if let Some(stem) = name.strip_suffix(".key") {
            let cert = format!("{stem}.cert");
            if !has(&cert) {
                return Err(CertsDirError::MissingCertificate {
                    key: path,
                    cert: dir.join(cert),
                });
            }
        }
    }
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_reads_the_system_directory_and_users_their_own_first() {
        assert_eq!(
            default_roots(true, None, Some("/root".into())),
            vec![PathBuf::from("/etc/docker/certs.d")]
        );
        assert_eq!(
            default_roots(false, None, Some("/home/u".into())),
            vec![
                PathBuf::from("/home/u/.config/docker/certs.d"),
                PathBuf::from("/etc/docker/certs.d")
            ]
        );
        assert_eq!(
            default_roots(false, Some("/x".into()), Some("/home/u".into()))[0],
            PathBuf::from("/x/docker/certs.d")
        );
        // A relative XDG_CONFIG_HOME is ignored, as the XDG spec says.
        assert_eq!(
            default_roots(false, Some("rel".into()), Some("/home/u".into()))[0],
            PathBuf::from("/home/u/.config/docker/certs.d")
        );
        assert_eq!(
            search_roots(Some(Path::new("/srv/certs"))),
            vec![PathBuf::from("/srv/certs")]
        );
    }

    #[test]
    fn host_directories_match_host_and_port_exactly_and_never_escape() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("r.example:5000")).unwrap();
        std::fs::create_dir(root.path().join("other")).unwrap();
        let roots = vec![root.path().to_path_buf()];
        assert!(host_dir(&roots, "r.example:5000").is_some());
        assert!(host_dir(&roots, "r.example").is_none());
        assert!(host_dir(&roots, "r.example:5001").is_none());
        for hostile in ["..", ".", "../other", "x/../other", ""] {
            assert!(host_dir(&roots, hostile).is_none(), "{hostile}");
        }
    }

    #[test]
    fn a_client_certificate_without_its_key_is_refused_with_dockers_words() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("client.cert"), "x").unwrap();
        let err = read_dir(dir.path()).err().unwrap();
        assert!(matches!(err, CertsDirError::MissingKey { .. }));
        assert!(
            err.to_string().starts_with("missing key ")
                && err
                    .to_string()
                    .ends_with("client.cert. CA certificates must use the extension .crt"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("client.key"), "x").unwrap();
        let err = read_dir(dir.path()).err().unwrap();
        assert!(
            matches!(err, CertsDirError::MissingCertificate { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_crt_that_is_not_pem_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), "not pem").unwrap();
        let err = read_dir(dir.path()).err().unwrap();
        assert!(matches!(err, CertsDirError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("ca.crt"), "{err}");
    }
}
