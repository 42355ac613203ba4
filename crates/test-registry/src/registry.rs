//! The real CNCF distribution registry (Debian's `docker-registry` 2.8) on a free loopback port,
//! with a temporary storage root, its access log captured and parsed so tests can count requests.
//! The process is killed when the [`RealRegistry`] is dropped.
//!
//! With [`RegistryOptions::tls`] it serves HTTPS only, with a server certificate signed by a CA
//! generated for that one registry (valid for `127.0.0.1`, `localhost` and `registry.test`);
//! nothing trusts that CA unless told to, so a client verifying against the system roots refuses
//! it. The registry listens on 127.0.0.1 only: reach it as `registry.test` by resolving that name
//! to `127.0.0.1:PORT` in the client. With [`RegistryOptions::client_certs`] as well it requires
//! mutual TLS (`http.tls.clientcas`): a client certificate signed by a second throwaway CA, whose
//! certificate and key [`RealRegistry::client_cert_pem`] and [`RealRegistry::client_key_pem`]
//! hand out.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::error::{Result, TestError};
use crate::push::Pusher;
use crate::util::{free_port, http_client, http_client_with, install_crypto_provider};

/// Where the registry binary is, unless `HAUL_TEST_REGISTRY_BIN` says otherwise.
pub const DEFAULT_REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// The names a TLS registry's certificate is valid for (its subject alternative names).
const TLS_SERVER_NAMES: [&str; 3] = ["127.0.0.1", "localhost", "registry.test"];

/// The `auth.token` section: trust JWTs signed by a key certified in `rootcertbundle`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenAuthConfig {
    /// Token endpoint URL put in the `WWW-Authenticate` challenge.
    pub realm: String,
    /// Service name (the JWT audience).
    pub service: String,
    /// Expected JWT issuer.
    pub issuer: String,
    /// PEM file holding the certificate(s) that sign tokens.
    pub rootcertbundle: PathBuf,
}

/// How to configure the registry. `Default` is anonymous, no deletes, not a proxy.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Users for `auth.htpasswd` (Basic auth); empty means none.
    pub htpasswd: Vec<(String, String)>,
    /// Token auth (Docker Hub's flow); takes the place of htpasswd if both are set.
    pub token: Option<TokenAuthConfig>,
    /// Pull-through cache of this remote registry URL (`proxy.remoteurl`).
    pub proxy_remote: Option<String>,
    /// Credentials the proxy uses towards the remote.
    pub proxy_credentials: Option<(String, String)>,
    /// `storage.delete.enabled`.
    pub delete: bool,
    /// Serve HTTPS only (`http.tls`), with a certificate for `127.0.0.1`, `localhost` and
    /// `registry.test` signed by a fresh throwaway CA ([`RealRegistry::ca_pem_path`]).
    pub tls: bool,
    /// With `tls`: refuse clients without a certificate signed by the registry's client CA
    /// (`http.tls.clientcas`, which distribution turns into `RequireAndVerifyClientCert`).
    pub client_certs: bool,
    /// Regular expressions of layer `urls` the registry accepts in manifests
    /// (`validation.manifests.urls.allow`); without any it refuses manifests naming URLs.
    pub allow_layer_urls: Vec<String>,
}

/// One line of the registry's access log (Apache combined format).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogEntry {
    /// `GET`, `HEAD`, …
    pub method: String,
    /// Request path without the query.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// Response status.
    pub status: u16,
    /// The log's user field; registry 2.8 always writes `-` (so `None`), even with Basic auth.
    pub user: Option<String>,
    /// Response body bytes written, if logged.
    pub bytes: Option<u64>,
}

/// A running `docker-registry serve` process.
pub struct RealRegistry {
    child: tokio::process::Child,
    port: u16,
    log_path: PathBuf,
    tls: Option<TlsFiles>,
    dir: tempfile::TempDir,
}

/// A registry's TLS material, written into its temp dir.
struct TlsFiles {
    /// The CA certificate (DER), for clients that trust it.
    ca_der: Vec<u8>,
    ca_pem: String,
    ca_path: PathBuf,
    cert_path: PathBuf,
    key_path: PathBuf,
    /// With mutual TLS: the client CA's file and a client certificate and key it signed (PEM).
    client: Option<ClientTls>,
}

struct ClientTls {
    ca_path: PathBuf,
    cert_pem: String,
    key_pem: String,
}

fn crypto(what: &str, e: rcgen::Error) -> TestError {
    TestError::Crypto(format!("{what}: {e}"))
}

/// A self-signed P-256 CA named `name`.
fn generate_ca(name: &str) -> Result<rcgen::CertifiedIssuer<'static, rcgen::KeyPair>> {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| crypto("generating the CA key", e))?;
    let mut ca_params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| crypto("CA params", e))?;
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)
        .map_err(|e| crypto("self-signing the CA", e))
}

impl TlsFiles {
    /// A P-256 CA and a server certificate for [`TLS_SERVER_NAMES`] signed by it, as PEM files
    /// in `dir` (`ca.pem`, `server.pem`, `server.key`).
    fn generate(dir: &Path, client_certs: bool) -> Result<TlsFiles> {
        install_crypto_provider();
        let ca = generate_ca("haul-test-registry-ca")?;

        let server_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| crypto("generating the server key", e))?;
        let names: Vec<String> = TLS_SERVER_NAMES.iter().map(|n| n.to_string()).collect();
        let mut params =
            rcgen::CertificateParams::new(names).map_err(|e| crypto("server params", e))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "registry.test");
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&server_key, &ca)
            .map_err(|e| crypto("signing the server certificate", e))?;

        let client = if client_certs {
            let client_ca = generate_ca("haul-test-client-ca")?;
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| crypto("generating the client key", e))?;
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
                .map_err(|e| crypto("client params", e))?;
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "haul-test-client");
            params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            let cert = params
                .signed_by(&key, &client_ca)
                .map_err(|e| crypto("signing the client certificate", e))?;
            let ca_path = dir.join("client-ca.pem");
            write_file(&ca_path, &client_ca.pem())?;
            Some(ClientTls {
                ca_path,
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            })
        } else {
            None
        };
        let files = TlsFiles {
            ca_der: ca.der().to_vec(),
            ca_pem: ca.pem(),
            ca_path: dir.join("ca.pem"),
            cert_path: dir.join("server.pem"),
            key_path: dir.join("server.key"),
            client,
        };
        write_file(&files.ca_path, &files.ca_pem)?;
        write_file(&files.cert_path, &cert.pem())?;
        write_file(&files.key_path, &server_key.serialize_pem())?;
        Ok(files)
    }

    /// The client certificate and key as one PEM, for clients of a mutual-TLS registry.
    fn identity_pem(&self) -> Option<String> {
        self.client
            .as_ref()
            .map(|c| format!("{}\n{}", c.cert_pem, c.key_pem))
    }

    /// An HTTP client trusting only this CA, presenting the client certificate if any.
    fn http_client(&self) -> Result<reqwest::Client> {
        let identity = self.identity_pem();
        Ok(http_client_with(
            self.ca_pem.as_bytes(),
            identity.as_deref().map(str::as_bytes),
        )?)
    }

    /// A blocking rustls session to `127.0.0.1` that trusts only this CA.
    fn connect(
        &self,
        tcp: std::net::TcpStream,
    ) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
        use rustls::pki_types::{CertificateDer, ServerName};
        let other = std::io::Error::other;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.ca_der.clone()))
            .map_err(other)?;
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let config = match &self.client {
            None => builder.with_no_client_auth(),
            Some(c) => {
                use rustls::pki_types::PrivateKeyDer;
                use rustls::pki_types::pem::PemObject;
                let cert = CertificateDer::from_pem_slice(c.cert_pem.as_bytes())
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                builder
                    .with_client_auth_cert(vec![cert], key)
                    .map_err(other)?
            }
        };
        let name = ServerName::from(std::net::IpAddr::from([127, 0, 0, 1]));
        let conn =
            rustls::ClientConnection::new(std::sync::Arc::new(config), name).map_err(other)?;
        Ok(rustls::StreamOwned::new(conn, tcp))
    }
}

fn yaml_str(s: &str) -> String {
    // A JSON string is a valid YAML double-quoted scalar.
    serde_json::to_string(s).unwrap_or_else(|_| format!("'{s}'"))
}

fn write_file(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents)
        .map_err(|e| TestError::io(format!("writing {}", path.display()), e))
}

fn config_yaml(
    opts: &RegistryOptions,
    root: &Path,
    port: u16,
    htpasswd: Option<&Path>,
    tls: Option<&TlsFiles>,
) -> String {
    let mut y = String::new();
    y.push_str("version: 0.1\n");
    y.push_str("log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n");
    y.push_str("storage:\n");
    y.push_str(&format!(
        "  filesystem:\n    rootdirectory: {}\n",
        yaml_str(&root.display().to_string())
    ));
    y.push_str(&format!("  delete:\n    enabled: {}\n", opts.delete));
    y.push_str("  maintenance:\n    uploadpurging:\n      enabled: false\n");
    y.push_str(&format!(
        "http:\n  addr: 127.0.0.1:{port}\n  secret: haul-test-secret\n"
    ));
    if let Some(tls) = tls {
        y.push_str(&format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            yaml_str(&tls.cert_path.display().to_string()),
            yaml_str(&tls.key_path.display().to_string())
        ));
        if let Some(client) = &tls.client {
            y.push_str(&format!(
                "    clientcas:\n      - {}\n",
                yaml_str(&client.ca_path.display().to_string())
            ));
        }
    }
    if let Some(token) = &opts.token {
        y.push_str("auth:\n  token:\n");
        y.push_str(&format!("    realm: {}\n", yaml_str(&token.realm)));
        y.push_str(&format!("    service: {}\n", yaml_str(&token.service)));
        y.push_str(&format!("    issuer: {}\n", yaml_str(&token.issuer)));
        y.push_str(&format!(
            "    rootcertbundle: {}\n",
            yaml_str(&token.rootcertbundle.display().to_string())
        ));
    } else if let Some(path) = htpasswd {
        y.push_str("auth:\n  htpasswd:\n    realm: haul-test\n");
        y.push_str(&format!(
            "    path: {}\n",
            yaml_str(&path.display().to_string())
        ));
    }
    if !opts.allow_layer_urls.is_empty() {
        y.push_str("validation:\n  manifests:\n    urls:\n      allow:\n");
        for re in &opts.allow_layer_urls {
            y.push_str(&format!("        - {}\n", yaml_str(re)));
        }
    }
    if let Some(remote) = &opts.proxy_remote {
        y.push_str(&format!("proxy:\n  remoteurl: {}\n", yaml_str(remote)));
        if let Some((u, p)) = &opts.proxy_credentials {
            y.push_str(&format!(
                "  username: {}\n  password: {}\n",
                yaml_str(u),
                yaml_str(p)
            ));
        }
    }
    y
}

/// Parses one Apache combined-format line; `None` for application log lines.
pub fn parse_access_line(line: &str) -> Option<AccessLogEntry> {
    // 127.0.0.1 - alice [27/Nov/2026:21:30:29 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"
    if line.starts_with("time=") {
        return None;
    }
    let mut head = line.splitn(3, ' ');
    let _host = head.next()?;
    let _ident = head.next()?;
    let rest = head.next()?;
    let (user, rest) = rest.split_once(" [")?;
    let (_date, rest) = rest.split_once("] \"")?;
    let (request, rest) = rest.split_once("\" ")?;
    let mut req = request.split(' ');
    let method = req.next()?.to_string();
    let uri = req.next()?;
    let mut tail = rest.split(' ');
    let status = tail.next()?.parse().ok()?;
    let bytes = tail.next().and_then(|b| b.parse().ok());
    let (path, query) = match uri.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (uri.to_string(), None),
    };
    Some(AccessLogEntry {
        method,
        path,
        query,
        status,
        user: (user != "-").then(|| user.to_string()),
        bytes,
    })
}

impl RealRegistry {
    /// Starts the registry and waits until `GET /v2/` answers (200 or 401) and the registry has
    /// logged that it listens on its port. Retries with another port if that one was taken.
    pub async fn start(opts: RegistryOptions) -> Result<RealRegistry> {
        let bin = std::env::var("HAUL_TEST_REGISTRY_BIN")
            .unwrap_or_else(|_| DEFAULT_REGISTRY_BIN.to_string());
        let dir = tempfile::Builder::new()
            .prefix("haul-registry-")
            .tempdir()
            .map_err(|e| TestError::io("creating the registry temp dir", e))?;
        let root = dir.path().join("storage");
        let htpasswd = if opts.htpasswd.is_empty() {
            None
        } else {
            let mut text = String::new();
            for (user, pass) in &opts.htpasswd {
                // Cost 4 (the minimum) keeps each authenticated request fast.
                let hash =
                    bcrypt::hash(pass, 4).map_err(|e| TestError::Crypto(format!("bcrypt: {e}")))?;
                text.push_str(&format!("{user}:{hash}\n"));
            }
            let path = dir.path().join("htpasswd");
            write_file(&path, &text)?;
            Some(path)
        };
        let tls = if opts.tls {
            Some(TlsFiles::generate(dir.path(), opts.client_certs)?)
        } else {
            None
        };
        let client = match &tls {
            Some(tls) => tls.http_client()?,
            None => http_client()?,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut last_error = String::new();
        for attempt in 0..5 {
            let port = free_port().map_err(|e| TestError::io("finding a free port", e))?;
            let config_path = dir.path().join("config.yml");
            write_file(
                &config_path,
                &config_yaml(&opts, &root, port, htpasswd.as_deref(), tls.as_ref()),
            )?;
            let log_path = dir.path().join(format!("registry-{attempt}.log"));
            let log = std::fs::File::create(&log_path)
                .map_err(|e| TestError::io(format!("creating {}", log_path.display()), e))?;
            let log2 = log
                .try_clone()
                .map_err(|e| TestError::io("cloning the log file handle", e))?;
            let child = tokio::process::Command::new(&bin)
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(log2))
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| TestError::io(format!("spawning {bin}"), e))?;
            let mut child = child;
            match wait_ready(&client, scheme, &mut child, port, &log_path).await {
                Ok(()) => {
                    return Ok(RealRegistry {
                        child,
                        port,
                        log_path,
                        tls,
                        dir,
                    });
                }
                Err(Retry::PortTaken(msg)) => {
                    last_error = msg;
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
                Err(Retry::Fatal(msg)) => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    return Err(TestError::Startup(msg));
                }
            }
        }
        Err(TestError::Startup(format!(
            "the port was taken on every attempt: {last_error}"
        )))
    }

    /// `host:port` (`127.0.0.1:PORT`), as used in image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`, or `https://127.0.0.1:PORT` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The PEM file of the CA that signed the registry's certificate, if it serves TLS.
    pub fn ca_pem_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca_path.as_path())
    }

    /// The PEM of the CA that signed the registry's certificate, if it serves TLS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.ca_pem.as_str())
    }

    /// With [`RegistryOptions::client_certs`]: a client certificate the registry accepts (PEM).
    pub fn client_cert_pem(&self) -> Option<&str> {
        let client = self.tls.as_ref()?.client.as_ref()?;
        Some(client.cert_pem.as_str())
    }

    /// With [`RegistryOptions::client_certs`]: the key of [`RealRegistry::client_cert_pem`] (PEM).
    pub fn client_key_pem(&self) -> Option<&str> {
        let client = self.tls.as_ref()?.client.as_ref()?;
        Some(client.key_pem.as_str())
    }

    /// An HTTP client for [`RealRegistry::url`]: with TLS it trusts this registry's CA (and
    /// nothing else), and presents the client certificate a mutual-TLS registry wants.
    ///
    /// # Panics
    /// If no HTTP client can be built (no TLS provider at all).
    pub fn client(&self) -> reqwest::Client {
        match &self.tls {
            Some(tls) => tls.http_client(),
            None => http_client().map_err(TestError::from),
        }
        .expect("building an HTTP client")
    }

    /// An anonymous [`Pusher`] for this registry, trusting its CA if it serves TLS.
    pub fn pusher(&self) -> Pusher {
        Pusher::new(&self.url()).with_client(self.client())
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The storage root (`storage.filesystem.rootdirectory`), e.g. to corrupt stored blobs.
    pub fn storage_root(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Everything the process wrote (application log and access log), for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Every request in the access log so far, in order (without this crate's sync markers).
    ///
    /// The registry writes a log line only after its handler returns, which can be after the
    /// client has read the whole body. So this first sends a marker request (`GET
    /// /v2/?haul-log-sync=N`, blocking, on its own connection) and waits until the marker is in
    /// the log: every request whose response was complete before the call is then logged too.
    pub fn requests(&self) -> Vec<AccessLogEntry> {
        self.sync_log();
        self.log_text()
            .lines()
            .filter_map(parse_access_line)
            .filter(|e| !is_marker(e))
            .collect()
    }

    /// Sends the marker request and polls the log for it (bounded: 20 s, for a machine busy
    /// with parallel test binaries; it normally appears within milliseconds).
    fn sync_log(&self) {
        use std::io::{Read as _, Write as _};
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let marker = format!("haul-log-sync={n}");
        let request = format!(
            "GET /v2/?{marker} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        );
        let sent = std::net::TcpStream::connect(("127.0.0.1", self.port)).and_then(|tcp| {
            tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
            let mut sink = Vec::new();
            match &self.tls {
                None => {
                    let mut s = tcp;
                    s.write_all(request.as_bytes())?;
                    s.read_to_end(&mut sink).map(drop)
                }
                Some(tls) => {
                    let mut s = tls.connect(tcp)?;
                    s.write_all(request.as_bytes())?;
                    s.flush()?;
                    // The response was read even if the server closes without close_notify.
                    let _ = s.read_to_end(&mut sink);
                    Ok(())
                }
            }
        });
        if sent.is_err() {
            return;
        }
        for _ in 0..4000 {
            if self.log_text().contains(&marker) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Number of requests so far: pass it to [`RealRegistry::requests_since`] later.
    pub fn mark(&self) -> usize {
        self.requests().len()
    }

    /// Requests logged after `mark`.
    pub fn requests_since(&self, mark: usize) -> Vec<AccessLogEntry> {
        self.requests().into_iter().skip(mark).collect()
    }

    /// Requests with this method whose path contains `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && r.path.contains(path_contains))
            .count()
    }

    /// [`RealRegistry::count`] once it reaches `at_least`, or after 20 s. For a registry acting
    /// as a pull-through cache, whose blob handler goes on storing what it fetched from the
    /// upstream after the client has the whole body, so its log line can come after the marker
    /// [`RealRegistry::requests`] waits for.
    pub fn count_settled(&self, method: &str, path_contains: &str, at_least: usize) -> usize {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let n = self.count(method, path_contains);
            if n >= at_least || std::time::Instant::now() >= deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RealRegistry {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn is_marker(e: &AccessLogEntry) -> bool {
    e.path == "/v2/"
        && e.query
            .as_deref()
            .is_some_and(|q| q.starts_with("haul-log-sync="))
}

enum Retry {
    PortTaken(String),
    Fatal(String),
}

fn log_tail(log_path: &Path) -> String {
    let text = std::fs::read_to_string(log_path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Readiness: the registry logged `listening on 127.0.0.1:PORT` (so the port is ours, not a
/// neighbour's) and `GET /v2/` answers 200 or 401 (over `scheme`: with TLS, the client trusts
/// the registry's CA). Bounded: 400 polls, 25 ms apart.
async fn wait_ready(
    client: &reqwest::Client,
    scheme: &str,
    child: &mut tokio::process::Child,
    port: u16,
    log_path: &Path,
) -> Result<(), Retry> {
    // With TLS the registry logs `listening on 127.0.0.1:PORT, tls`.
    let listening = format!("listening on 127.0.0.1:{port}");
    let url = format!("{scheme}://127.0.0.1:{port}/v2/");
    for _ in 0..400 {
        if let Ok(Some(status)) = child.try_wait() {
            let tail = log_tail(log_path);
            return Err(if tail.contains("address already in use") {
                Retry::PortTaken(tail)
            } else {
                Retry::Fatal(format!("exited with {status}: {tail}"))
            });
        }
        let logged = std::fs::read_to_string(log_path)
            .map(|t| t.contains(&listening))
            .unwrap_or(false);
        if logged
            && let Ok(resp) = client
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            && matches!(resp.status().as_u16(), 200 | 401)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(Retry::Fatal(format!(
        "not ready after 10 s: {}",
        log_tail(log_path)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS registry: ready, pushable and its log readable with its CA; refused without it.
    #[tokio::test]
    async fn tls_registry_serves_https_with_its_own_ca() {
        let registry = RealRegistry::start(RegistryOptions {
            tls: true,
            ..RegistryOptions::default()
        })
        .await
        .unwrap();
        assert_eq!(registry.url(), format!("https://{}", registry.host()));
        let ca = std::fs::read_to_string(registry.ca_pem_path().unwrap()).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");

        let blob = crate::image::random_layer(3, 1000).blob;
        registry.pusher().push_blob("t/app", &blob).await.unwrap();
        assert_eq!(registry.count("PUT", "/blobs/uploads/"), 1);

        // The system roots do not know the CA.
        let err = http_client()
            .unwrap()
            .get(format!("{}/v2/", registry.url()))
            .send()
            .await
            .unwrap_err();
        let mut text = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            text.push_str(&format!(": {s}"));
            source = s.source();
        }
        assert!(text.contains("certificate"), "{text}");
        // Nor does a plain-HTTP client get in.
        let resp = http_client()
            .unwrap()
            .get(format!("http://{}/v2/", registry.host()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400);
    }

    #[test]
    fn access_lines() {
        let e = parse_access_line(
            r#"127.0.0.1 - - [27/Nov/2026:21:30:29 +0000] "GET /v2/foo/manifests/x?a=b HTTP/1.1" 404 91 "" "curl/7.88.1""#,
        )
        .unwrap();
        assert_eq!(e.method, "GET");
        assert_eq!(e.path, "/v2/foo/manifests/x");
        assert_eq!(e.query.as_deref(), Some("a=b"));
        assert_eq!(e.status, 404);
        assert_eq!(e.bytes, Some(91));
        assert_eq!(e.user, None);
        let e = parse_access_line(
            r#"127.0.0.1 - alice [27/Nov/2026:21:30:29 +0000] "HEAD /v2/ HTTP/1.1" 200 0 "" "x""#,
        )
        .unwrap();
        assert_eq!(e.user.as_deref(), Some("alice"));
        assert!(
            parse_access_line(r#"time="2026" level=info msg="listening on 127.0.0.1:1""#).is_none()
        );
    }
}
