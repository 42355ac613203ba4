//! Registry credentials from docker's `config.json`, so `haul` works wherever `docker login` did.
//!
//! [`DockerConfig`] reads `$DOCKER_CONFIG/config.json` (else `~/.docker/config.json`), finds the
//! credential for a registry the way docker does (`credHelpers`, then `credsStore`, then inline
//! `auths` entries, matching keys by host as docker's `ConvertToHostname` does), and can save or
//! erase one: through the configured `docker-credential-*` helper when there is one, otherwise as
//! base64 in `auths`. Saving rewrites the file atomically with mode 0600 and keeps every key haul
//! does not know about. Helpers are killed if they do not answer within 10 seconds. Secrets never
//! appear in errors, `Debug` output or logs. All I/O is blocking; async callers use
//! `spawn_blocking`.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Map, Value};

/// A credential for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A user name and password (or access token), sent to the registry's token endpoint or, for
    /// a registry that asks for Basic authentication, to the registry itself.
    Basic {
        /// The user name.
        username: String,
        /// The password or access token; never shown by `Debug`.
        password: String,
    },
    /// An OAuth2 refresh token (docker's `identitytoken`), exchanged at the token endpoint.
    IdentityToken(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credential::IdentityToken(_) => {
                f.debug_tuple("IdentityToken").field(&"<redacted>").finish()
            }
        }
    }
}

/// What went wrong reading or changing credentials. Paths and helper names are included so the
/// user can act; file contents and helper output that might hold secrets are not.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// Neither `DOCKER_CONFIG` nor `HOME` says where docker's config directory is.
    #[error("cannot find the docker config directory: neither DOCKER_CONFIG nor HOME is set")]
    NoConfigDir,
    /// `config.json` exists but cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `config.json` cannot be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `config.json` is not JSON.
    #[error("{} is not valid JSON (line {line}, column {column})", path.display())]
    InvalidJson {
        /// The file.
        path: PathBuf,
        /// Where parsing stopped: the line, from 1.
        line: usize,
        /// Where parsing stopped: the column, from 1.
        column: usize,
    },
    /// A key of `config.json` has the wrong type.
    #[error("{}: `{field}` must be {expected}", path.display())]
    InvalidField {
        /// The file.
        path: PathBuf,
        /// The key, as a path (`auths.ghcr.io.auth`).
        field: String,
        /// What it should have been.
        expected: &'static str,
    },
    /// An `auths` entry's `auth` is not base64 of `user:password`.
    #[error("{}: the `auth` value of `auths.{key}` is invalid: {reason}", path.display())]
    InvalidAuth {
        /// The file.
        path: PathBuf,
        /// The `auths` key.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `credsStore` or `credHelpers` names a helper that could not be a program name (a path,
    /// for instance).
    #[error("{}: invalid credential helper name {name:?}", path.display())]
    InvalidHelperName {
        /// The file.
        path: PathBuf,
        /// The name as written.
        name: String,
    },
    /// The configured `docker-credential-*` program is not installed.
    #[error("credential helper `{program}` not found")]
    HelperNotFound {
        /// The program (`docker-credential-NAME`).
        program: String,
    },
    /// The helper could not be started.
    #[error("cannot run credential helper `{program}`")]
    HelperSpawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The helper did not answer in time and was killed.
    #[error("credential helper `{program} {action}` did not finish within {timeout:?}")]
    HelperTimeout {
        /// The program.
        program: String,
        /// What it was asked: `get`, `store` or `erase`.
        action: &'static str,
        /// How long it had.
        timeout: Duration,
    },
    /// The helper failed.
    #[error("credential helper `{program} {action}` failed ({status}): {message}")]
    HelperFailed {
        /// The program.
        program: String,
        /// What it was asked: `get`, `store` or `erase`.
        action: &'static str,
        /// How it exited.
        status: ExitStatus,
        /// The first line of the helper's output: helpers report errors there, never secrets.
        message: String,
    },
    /// The helper's answer is not the JSON helpers answer with.
    #[error("credential helper `{program} {action}` printed an unexpected reply")]
    HelperInvalidReply {
        /// The program.
        program: String,
        /// What it was asked: `get`, `store` or `erase`.
        action: &'static str,
    },
}

/// Docker Hub's key in `config.json`, and the server URL its helpers are asked about.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";
/// Hosts that all mean Docker Hub once a key is reduced to its host.
const DOCKER_HUB_HOSTS: [&str; 3] = ["index.docker.io", "docker.io", "registry-1.docker.io"];
const HELPER_PREFIX: &str = "docker-credential-";
/// What docker-credential-helpers print when they hold nothing for a server.
const HELPER_NOT_FOUND: &str = "credentials not found in native keychain";
/// Username helpers use to mark the secret as an identity token.
const IDENTITY_TOKEN_USERNAME: &str = "<token>";
const HELPER_TIMEOUT: Duration = Duration::from_secs(10);
/// Helpers answer with a few hundred bytes; anything beyond this is not a reply.
const HELPER_OUTPUT_LIMIT: u64 = 1 << 20;

/// `config.json` as read from disk, plus where to write it back.
pub struct DockerConfig {
    path: PathBuf,
    /// The whole document, so keys haul does not understand survive a save.
    raw: Map<String, Value>,
    /// Where to find `docker-credential-*`; `None` searches `PATH`.
    helper_dir: Option<PathBuf>,
    helper_timeout: Duration,
}

impl fmt::Debug for DockerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerConfig")
            .field("path", &self.path)
            .field("creds_store", &self.creds_store())
            .field("helper_dir", &self.helper_dir)
            .finish_non_exhaustive()
    }
}

/// Where a credential came from, for logs.
#[derive(Debug, Clone, Copy)]
enum Source {
    CredHelpers,
    CredsStore,
}

impl DockerConfig {
    /// `$DOCKER_CONFIG`, else `$HOME/.docker`; `None` when neither is set.
    #[must_use]
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir));
        }
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|home| PathBuf::from(home).join(".docker"))
    }

    /// Reads `dir/config.json`. A missing or empty file is an empty config, as for docker.
    ///
    /// # Errors
    ///
    /// A file that cannot be read, is not JSON, or whose `auths`, `credsStore` or `credHelpers`
    /// have the wrong shape. Errors name the file and the key, never a secret.
    pub fn load(dir: &Path) -> Result<DockerConfig, CredentialError> {
        let path = dir.join("config.json");
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(CredentialError::Read { path, source }),
        };
        let raw = if bytes.iter().all(u8::is_ascii_whitespace) {
            Map::new()
        } else {
            // serde's own messages can quote the offending value, which may be a secret: only the
            // position is kept.
            let value: Value =
                serde_json::from_slice(&bytes).map_err(|e| CredentialError::InvalidJson {
                    path: path.clone(),
                    line: e.line(),
                    column: e.column(),
                })?;
            match value {
                Value::Object(map) => map,
                _ => {
                    return Err(CredentialError::InvalidField {
                        path,
                        field: "(top level)".to_owned(),
                        expected: "an object",
                    });
                }
            }
        };
        validate(&path, &raw)?;
        Ok(DockerConfig {
            path,
            raw,
            helper_dir: None,
            helper_timeout: HELPER_TIMEOUT,
        })
    }

    /// [`load`](Self::load) from [`default_dir`](Self::default_dir).
    ///
    /// # Errors
    ///
    /// [`CredentialError::NoConfigDir`] when there is no default directory, else as
    /// [`load`](Self::load).
    pub fn load_default() -> Result<DockerConfig, CredentialError> {
        let dir = Self::default_dir().ok_or(CredentialError::NoConfigDir)?;
        Self::load(&dir)
    }

    /// Runs `docker-credential-*` helpers from `dir` instead of searching `PATH`, so tests need not
    /// change the process-wide environment.
    pub fn with_helper_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.helper_dir = Some(dir.into());
        self
    }

    /// How long a helper may take before it is killed (10 s unless changed).
    #[must_use]
    pub fn with_helper_timeout(mut self, timeout: Duration) -> Self {
        self.helper_timeout = timeout;
        self
    }

    /// The `config.json` this was read from and will be written to.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The credential for `registry` (`docker.io` or `host[:port]`), or `None` for anonymous.
    ///
    /// Order: the `credHelpers` entry, else `credsStore`, then an inline `auths` entry. docker
    /// stops at the helper: with a helper configured, the `auths` entries it writes are empty
    /// markers. Falling back to inline credentials when the helper has nothing costs nothing for
    /// those markers and keeps working logins written by tools that ignore helpers.
    ///
    /// # Errors
    ///
    /// A credential helper that is missing, fails, times out or answers nonsense, or an `auths`
    /// entry that cannot be decoded. A helper that has nothing for `registry` is not an error.
    pub fn lookup(&self, registry: &str) -> Result<Option<Credential>, CredentialError> {
        if let Some((name, source)) = self.helper_for(registry)? {
            if let Some(cred) = self.helper_get(&name, registry)? {
                tracing::debug!(registry, helper = %name, ?source, "using credentials from helper");
                return Ok(Some(cred));
            }
            tracing::debug!(registry, helper = %name, "credential helper has no credentials");
        }
        let Some((key, entry)) = self.auths_entry(registry) else {
            tracing::debug!(registry, path = %self.path.display(), "no credentials configured");
            return Ok(None);
        };
        let cred = self.inline_credential(key, entry)?;
        if cred.is_some() {
            tracing::debug!(registry, key, path = %self.path.display(), "using credentials from auths");
        }
        Ok(cred)
    }

    /// Stores `cred` for `registry`: in its helper if one is configured (leaving an empty `auths`
    /// marker, as docker does), else base64-encoded in `auths`. Writes `config.json`.
    ///
    /// # Errors
    ///
    /// The helper failing, or `config.json` (or its directory) not writable.
    pub fn save(&mut self, registry: &str, cred: &Credential) -> Result<(), CredentialError> {
        let key = config_key(registry).to_owned();
        let mut entry = match self.auths().and_then(|a| a.get(&key)) {
            Some(Value::Object(existing)) => existing.clone(),
            _ => Map::new(),
        };
        for field in ["auth", "username", "password", "identitytoken"] {
            entry.remove(field);
        }
        if let Some((name, _)) = self.helper_for(registry)? {
            self.helper_store(&name, registry, cred)?;
        } else {
            match cred {
                Credential::Basic { username, password } => {
                    let encoded = base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{password}"));
                    entry.insert("auth".to_owned(), Value::String(encoded));
                }
                Credential::IdentityToken(token) => {
                    entry.insert("identitytoken".to_owned(), Value::String(token.clone()));
                }
            }
        }
        self.update_auths(|auths| auths.insert(key, Value::Object(entry)));
        self.write()
    }

    /// Removes the credential for `registry` from its helper and every matching `auths` key.
    /// Returns whether anything was removed.
    ///
    /// # Errors
    ///
    /// The helper failing, or `config.json` not writable.
    pub fn erase(&mut self, registry: &str) -> Result<bool, CredentialError> {
        let mut removed = false;
        if let Some((name, _)) = self.helper_for(registry)? {
            removed |= self.helper_erase(&name, registry)?;
        }
        let matching = self
            .auths()
            .is_some_and(|auths| auths.keys().any(|k| key_matches(k, registry)));
        if matching {
            // `retain` keeps the order of the other keys, whichever map serde_json was built with.
            self.update_auths(|auths| auths.retain(|k, _| !key_matches(k, registry)));
            self.write()?;
            removed = true;
        }
        Ok(removed)
    }

    fn auths(&self) -> Option<&Map<String, Value>> {
        self.raw.get("auths").and_then(Value::as_object)
    }

    /// Edits `auths` in place, creating it if absent. The map is taken out and put back so its
    /// position among the top-level keys is kept.
    fn update_auths<R>(&mut self, edit: impl FnOnce(&mut Map<String, Value>) -> R) -> R {
        let slot = self.raw.entry("auths").or_insert(Value::Null);
        // Only `null` or an object can be here: `validate` refused everything else.
        let mut auths = match std::mem::take(slot) {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        let result = edit(&mut auths);
        *slot = Value::Object(auths);
        result
    }

    fn creds_store(&self) -> Option<&str> {
        self.raw
            .get("credsStore")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    /// The helper responsible for `registry`, if any, with its name checked.
    fn helper_for(&self, registry: &str) -> Result<Option<(String, Source)>, CredentialError> {
        let from_helpers = self
            .raw
            .get("credHelpers")
            .and_then(Value::as_object)
            .and_then(|helpers| {
                // docker looks up its own key exactly; keys by other spellings of the same host are
                // accepted too, since users write `credHelpers` by hand.
                helpers.get(config_key(registry)).or_else(|| {
                    helpers
                        .iter()
                        .find(|(k, _)| key_matches(k, registry))
                        .map(|(_, v)| v)
                })
            })
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let found = match from_helpers {
            Some(name) => Some((name, Source::CredHelpers)),
            None => self.creds_store().map(|name| (name, Source::CredsStore)),
        };
        let Some((name, source)) = found else {
            return Ok(None);
        };
        // The name becomes part of a program path: a separator would let config.json point
        // anywhere on disk.
        if name.contains(['/', '\\']) || name == "." || name == ".." {
            return Err(CredentialError::InvalidHelperName {
                path: self.path.clone(),
                name: name.to_owned(),
            });
        }
        Ok(Some((name.to_owned(), source)))
    }

    /// The `auths` entry for `registry`: its own key if present, else the first key naming the
    /// same host.
    fn auths_entry(&self, registry: &str) -> Option<(&str, &Map<String, Value>)> {
        let auths = self.auths()?;
        let key = config_key(registry);
        let (key, value) = auths
            .get_key_value(key)
            .or_else(|| auths.iter().find(|(k, _)| key_matches(k, registry)))?;
        Some((key.as_str(), value.as_object()?))
    }

    fn inline_credential(
        &self,
        key: &str,
        entry: &Map<String, Value>,
    ) -> Result<Option<Credential>, CredentialError> {
        let field = |name: &str| {
            entry
                .get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        // An identity token supersedes the username/password docker stores beside it: docker's
        // registry client then uses the OAuth2 refresh flow.
        if let Some(token) = field("identitytoken") {
            return Ok(Some(Credential::IdentityToken(token.to_owned())));
        }
        if let Some(auth) = field("auth") {
            let invalid = |reason| CredentialError::InvalidAuth {
                path: self.path.clone(),
                key: key.to_owned(),
                reason,
            };
            let decoded = AUTH_BASE64
                .decode(auth.trim())
                .map_err(|_| invalid("not base64"))?;
            let decoded = String::from_utf8(decoded).map_err(|_| invalid("not UTF-8"))?;
            // The username cannot contain ':', the password can.
            let (username, password) = decoded
                .split_once(':')
                .ok_or_else(|| invalid("expected base64 of \"username:password\""))?;
            return Ok(Some(Credential::Basic {
                username: username.to_owned(),
                password: password.to_owned(),
            }));
        }
        if let (Some(username), Some(password)) = (field("username"), field("password")) {
            return Ok(Some(Credential::Basic {
                username: username.to_owned(),
                password: password.to_owned(),
            }));
        }
        Ok(None)
    }

    fn helper_get(
        &self,
        name: &str,
        registry: &str,
    ) -> Result<Option<Credential>, CredentialError> {
        let program = helper_program(name);
        let reply = self.run_helper(name, "get", server_url(registry).as_bytes())?;
        if !reply.status.success() {
            if reply.is_not_found() {
                return Ok(None);
            }
            return Err(reply.failure(program, "get"));
        }
        let invalid = || CredentialError::HelperInvalidReply {
            program: program.clone(),
            action: "get",
        };
        let value: Value = serde_json::from_slice(&reply.stdout).map_err(|_| invalid())?;
        let field = |name: &str| match value.get(name) {
            None | Some(Value::Null) => Ok(""),
            Some(Value::String(s)) => Ok(s.as_str()),
            Some(_) => Err(invalid()),
        };
        let username = field("Username")?;
        let secret = field("Secret")?;
        if secret.is_empty() {
            // Some helpers (ecr-login among them) answer "nothing" with success and empty fields.
            return Ok(None);
        }
        if username == IDENTITY_TOKEN_USERNAME {
            return Ok(Some(Credential::IdentityToken(secret.to_owned())));
        }
        Ok(Some(Credential::Basic {
            username: username.to_owned(),
            password: secret.to_owned(),
        }))
    }

    fn helper_store(
        &self,
        name: &str,
        registry: &str,
        cred: &Credential,
    ) -> Result<(), CredentialError> {
        let (username, secret) = match cred {
            Credential::Basic { username, password } => (username.as_str(), password.as_str()),
            Credential::IdentityToken(token) => (IDENTITY_TOKEN_USERNAME, token.as_str()),
        };
        let input = serde_json::json!({
            "ServerURL": server_url(registry),
            "Username": username,
            "Secret": secret,
        });
        let reply = self.run_helper(name, "store", input.to_string().as_bytes())?;
        if !reply.status.success() {
            return Err(reply.failure(helper_program(name), "store"));
        }
        Ok(())
    }

    fn helper_erase(&self, name: &str, registry: &str) -> Result<bool, CredentialError> {
        let reply = self.run_helper(name, "erase", server_url(registry).as_bytes())?;
        if reply.status.success() {
            return Ok(true);
        }
        if reply.is_not_found() {
            return Ok(false);
        }
        Err(reply.failure(helper_program(name), "erase"))
    }

    /// Runs `docker-credential-<name> <action>` with `input` on stdin, killing it after the
    /// timeout. Output is read on threads so a chatty helper cannot block on a full pipe.
    fn run_helper(
        &self,
        name: &str,
        action: &'static str,
        input: &[u8],
    ) -> Result<HelperReply, CredentialError> {
        let program = helper_program(name);
        let executable = match &self.helper_dir {
            Some(dir) => dir.join(&program),
            None => PathBuf::from(&program),
        };
        let mut child = Command::new(&executable)
            .arg(action)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => CredentialError::HelperNotFound {
                    program: program.clone(),
                },
                _ => CredentialError::HelperSpawn {
                    program: program.clone(),
                    source,
                },
            })?;
        let deadline = Instant::now() + self.helper_timeout;
        let timeout = || CredentialError::HelperTimeout {
            program: program.clone(),
            action,
            timeout: self.helper_timeout,
        };

        // A helper that never reads stdin must not stall us on a full pipe, so writing has its
        // own thread too. Write errors are ignored: a helper may exit without reading, and its
        // exit status says what happened.
        if let Some(mut stdin) = child.stdin.take() {
            let input = input.to_vec();
            thread::spawn(move || {
                let _ = stdin.write_all(&input);
            });
        }
        let stdout = child.stdout.take().map(spawn_reader);
        let stderr = child.stderr.take().map(spawn_reader);

        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    // Kill may race with a normal exit; either way `wait` reaps it.
                    let _ = child.kill();
                    let _ = child.wait();
                    tracing::warn!(helper = %program, action, "credential helper timed out; killed");
                    return Err(timeout());
                }
                Ok(None) => thread::sleep(Duration::from_millis(10)),
                Err(source) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(CredentialError::HelperSpawn { program, source });
                }
            }
        };
        // A grandchild that inherited the pipes can keep them open after the helper exits; the
        // deadline still bounds how long we wait for them.
        let collect = |rx: Option<mpsc::Receiver<Vec<u8>>>| -> Result<Vec<u8>, CredentialError> {
            let Some(rx) = rx else {
                return Ok(Vec::new());
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(remaining) {
                Ok(bytes) => Ok(bytes),
                Err(mpsc::RecvTimeoutError::Timeout) => Err(timeout()),
                Err(mpsc::RecvTimeoutError::Disconnected) => Ok(Vec::new()),
            }
        };
        let stdout = collect(stdout)?;
        let stderr = collect(stderr)?;
        Ok(HelperReply {
            status,
            stdout,
            stderr,
        })
    }

    /// Writes `raw` to `path` atomically: a 0600 temporary file in the same directory, fsynced,
    /// renamed over the old one, then the directory fsynced. A symlinked `config.json` (dotfile
    /// managers) is written through, as docker does.
    fn write(&self) -> Result<(), CredentialError> {
        let target = match fs::canonicalize(&self.path) {
            Ok(resolved) => resolved,
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.path.clone(),
            Err(source) => {
                return Err(CredentialError::Write {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let dir = target
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        create_private_dir(&dir).map_err(|source| CredentialError::Write {
            path: dir.clone(),
            source,
        })?;

        let mut contents = Vec::new();
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
        let mut serializer = serde_json::Serializer::with_formatter(&mut contents, formatter);
        serde::Serialize::serialize(&self.raw, &mut serializer).map_err(|e| {
            CredentialError::Write {
                path: target.clone(),
                source: io::Error::other(e),
            }
        })?;
        contents.push(b'\n');

        let file_name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "config.json".to_owned());
        // Unique per process and per call, so concurrent saves never share a temporary file.
        static SAVES: AtomicU64 = AtomicU64::new(0);
        let temp = dir.join(format!(
            ".{file_name}.tmp-{}-{}",
            std::process::id(),
            SAVES.fetch_add(1, Ordering::Relaxed)
        ));
        let result = write_private_file(&temp, &contents)
            .map_err(|source| CredentialError::Write {
                path: temp.clone(),
                source,
            })
            .and_then(|()| {
                fs::rename(&temp, &target).map_err(|source| CredentialError::Write {
                    path: target.clone(),
                    source,
                })
            });
        if result.is_err() {
            let _ = fs::remove_file(&temp);
            return result;
        }
        // Makes the rename itself durable; not every filesystem supports it, and the data is
        // already safe, so a failure here is only logged.
        if let Err(e) = fs::File::open(&dir).and_then(|d| d.sync_all()) {
            tracing::debug!(dir = %dir.display(), error = %e, "cannot fsync config directory");
        }
        Ok(())
    }
}

/// The key docker uses for `registry` in `auths` and `credHelpers`.
fn config_key(registry: &str) -> &str {
    if is_docker_hub(registry) {
        DOCKER_HUB_KEY
    } else {
        registry
    }
}

/// What helpers are asked about: the same as the config key.
fn server_url(registry: &str) -> &str {
    config_key(registry)
}

fn is_docker_hub(host: &str) -> bool {
    DOCKER_HUB_HOSTS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(host))
}

/// docker's `ConvertToHostname`: drop an `http://` or `https://` prefix and any path.
fn convert_to_hostname(key: &str) -> &str {
    let lower_prefix = |p: &str| {
        key.get(..p.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(p))
    };
    let stripped = if lower_prefix("http://") {
        &key["http://".len()..]
    } else if lower_prefix("https://") {
        &key["https://".len()..]
    } else {
        key
    };
    stripped.split('/').next().unwrap_or(stripped)
}

/// Whether a `config.json` key refers to `registry`. Host names are case-insensitive.
fn key_matches(key: &str, registry: &str) -> bool {
    let host = convert_to_hostname(key);
    if is_docker_hub(registry) {
        is_docker_hub(host)
    } else {
        host.eq_ignore_ascii_case(registry)
    }
}

fn helper_program(name: &str) -> String {
    format!("{HELPER_PREFIX}{name}")
}

/// docker writes padded base64 but hand-edited files drop the padding; both are accepted.
const AUTH_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Refuses documents whose known keys have the wrong shape, so lookups can read them without
/// second-guessing. Names fields by path, never by value.
fn validate(path: &Path, raw: &Map<String, Value>) -> Result<(), CredentialError> {
    let invalid = |field: String, expected| CredentialError::InvalidField {
        path: path.to_path_buf(),
        field,
        expected,
    };
    match raw.get("auths") {
        None | Some(Value::Null) => {}
        Some(Value::Object(auths)) => {
            for (key, entry) in auths {
                match entry {
                    Value::Null => {}
                    Value::Object(fields) => {
                        for name in ["auth", "username", "password", "identitytoken"] {
                            if !matches!(
                                fields.get(name),
                                None | Some(Value::Null | Value::String(_))
                            ) {
                                return Err(invalid(format!("auths.{key}.{name}"), "a string"));
                            }
                        }
                    }
                    _ => return Err(invalid(format!("auths.{key}"), "an object")),
                }
            }
        }
        Some(_) => return Err(invalid("auths".to_owned(), "an object")),
    }
    match raw.get("credHelpers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(helpers)) => {
            if let Some((key, _)) = helpers.iter().find(|(_, v)| !v.is_string()) {
                return Err(invalid(format!("credHelpers.{key}"), "a string"));
            }
        }
        Some(_) => return Err(invalid("credHelpers".to_owned(), "an object")),
    }
    if !matches!(
        raw.get("credsStore"),
        None | Some(Value::Null | Value::String(_))
    ) {
        return Err(invalid("credsStore".to_owned(), "a string"));
    }
    Ok(())
}

struct HelperReply {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl HelperReply {
    fn is_not_found(&self) -> bool {
        String::from_utf8_lossy(&self.stdout).trim() == HELPER_NOT_FOUND
    }

    fn failure(&self, program: String, action: &'static str) -> CredentialError {
        let text = if self.stdout.iter().any(|b| !b.is_ascii_whitespace()) {
            &self.stdout
        } else {
            &self.stderr
        };
        let text = String::from_utf8_lossy(text);
        let mut message: String = text
            .trim()
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect();
        if message.is_empty() {
            message = "no output".to_owned();
        }
        CredentialError::HelperFailed {
            program,
            action,
            status: self.status,
            message,
        }
    }
}

fn spawn_reader(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe
            .by_ref()
            .take(HELPER_OUTPUT_LIMIT)
            .read_to_end(&mut buf);
        // Keep draining past the limit so the helper can finish writing and exit.
        let _ = io::copy(&mut pipe, &mut io::sink());
        let _ = tx.send(buf);
    });
    rx
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

fn write_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    // A leftover temp file from a crashed run keeps its old mode; `mode` above only applies to
    // files it creates.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, pass: &str) -> Credential {
        Credential::Basic {
            username: user.to_owned(),
            password: pass.to_owned(),
        }
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn config_with(json: &str) -> (tempfile::TempDir, DockerConfig) {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("config.json"), json).unwrap();
        let config = DockerConfig::load(dir.path()).unwrap();
        (dir, config)
    }

    /// While a script is open for writing, a process forked by a parallel test inherits that
    /// descriptor until it execs, and exec'ing the script meanwhile fails with ETXTBSY. Writing
    /// scripts takes this lock exclusively; running helpers shares it.
    static EXEC_LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());

    fn running_helpers() -> std::sync::RwLockReadGuard<'static, ()> {
        EXEC_LOCK.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A fake `docker-credential-<name>` that logs its action and stdin to `log` and runs `body`.
    fn fake_helper(dir: &Path, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(helper_program(name));
        let log = dir.join(format!("{name}.log"));
        let script = format!(
            "#!/bin/sh\ninput=$(cat)\nprintf '%s %s\\n' \"$1\" \"$input\" >> '{}'\n{body}\n",
            log.display()
        );
        let _exclusive = EXEC_LOCK.write().unwrap_or_else(|e| e.into_inner());
        fs::write(&path, script).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn helper_log(dir: &Path, name: &str) -> String {
        fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    #[test]
    fn looks_up_inline_auths() {
        let hub_auth = b64("hubuser:hub:pass");
        let cases: Vec<(String, &str, Option<Credential>)> = vec![
            (
                format!(r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{hub_auth}"}}}}}}"#),
                "docker.io",
                Some(basic("hubuser", "hub:pass")),
            ),
            (
                format!(r#"{{"auths":{{"index.docker.io":{{"auth":"{hub_auth}"}}}}}}"#),
                "docker.io",
                Some(basic("hubuser", "hub:pass")),
            ),
            (
                format!(r#"{{"auths":{{"docker.io":{{"auth":"{hub_auth}"}}}}}}"#),
                "docker.io",
                Some(basic("hubuser", "hub:pass")),
            ),
            (
                format!(
                    r#"{{"auths":{{"https://registry-1.docker.io/v2/":{{"auth":"{hub_auth}"}}}}}}"#
                ),
                "docker.io",
                Some(basic("hubuser", "hub:pass")),
            ),
            (
                r#"{"auths":{"reg.example:5000":{"username":"u","password":"p"}}}"#.to_owned(),
                "reg.example:5000",
                Some(basic("u", "p")),
            ),
            (
                r#"{"auths":{"reg.example":{"identitytoken":"idtok","auth":"dTpw"}}}"#.to_owned(),
                "reg.example",
                Some(Credential::IdentityToken("idtok".to_owned())),
            ),
            (
                r#"{"auths":{"http://reg.example:5000":{"auth":"dTpw"}}}"#.to_owned(),
                "reg.example:5000",
                Some(basic("u", "p")),
            ),
            (
                r#"{"auths":{"https://Reg.Example/v1/some/path":{"auth":"dTpw"}}}"#.to_owned(),
                "reg.example",
                Some(basic("u", "p")),
            ),
            // Unpadded base64 and surrounding whitespace, as hand-edited files have.
            (
                format!(
                    r#"{{"auths":{{"r.example":{{"auth":" {} "}}}}}}"#,
                    b64("ab:c").trim_end_matches('=')
                ),
                "r.example",
                Some(basic("ab", "c")),
            ),
            // The exact key wins over another spelling of the same host.
            (
                format!(
                    r#"{{"auths":{{"https://r.example":{{"auth":"{}"}},"r.example":{{"auth":"{}"}}}}}}"#,
                    b64("old:x"),
                    b64("new:y")
                ),
                "r.example",
                Some(basic("new", "y")),
            ),
            // Docker Hub keys do not leak to other registries, nor ports to port-less hosts.
            (
                format!(r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{hub_auth}"}}}}}}"#),
                "ghcr.io",
                None,
            ),
            (
                r#"{"auths":{"r.example:5000":{"auth":"dTpw"}}}"#.to_owned(),
                "r.example",
                None,
            ),
            (
                r#"{"auths":{"r.example.evil":{"auth":"dTpw"}}}"#.to_owned(),
                "r.example",
                None,
            ),
            // Markers and empty entries mean anonymous.
            (
                r#"{"auths":{"r.example":{}}}"#.to_owned(),
                "r.example",
                None,
            ),
            (
                r#"{"auths":{"r.example":{"auth":""}}}"#.to_owned(),
                "r.example",
                None,
            ),
            (
                r#"{"auths":{"r.example":null}}"#.to_owned(),
                "r.example",
                None,
            ),
            (
                r#"{"auths":{"r.example":{"username":"u"}}}"#.to_owned(),
                "r.example",
                None,
            ),
            ("{}".to_owned(), "r.example", None),
            ("".to_owned(), "r.example", None),
        ];
        for (json, registry, want) in cases {
            let (_dir, config) = config_with(&json);
            let got = config
                .lookup(registry)
                .unwrap_or_else(|e| panic!("{json} / {registry}: {e}"));
            assert_eq!(got, want, "{json} / {registry}");
        }
    }

    #[test]
    fn refuses_invalid_auth_values_without_revealing_them() {
        let cases = [
            r#"{"auths":{"r.example":{"auth":"!!!secret-value!!!"}}}"#.to_owned(),
            format!(
                r#"{{"auths":{{"r.example":{{"auth":"{}"}}}}}}"#,
                b64("secret-value")
            ),
        ];
        for json in cases {
            let (_dir, config) = config_with(&json);
            let err = config.lookup("r.example").unwrap_err();
            assert!(
                matches!(err, CredentialError::InvalidAuth { .. }),
                "{err:?}"
            );
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("secret-value"), "{shown}");
            assert!(!shown.contains(&b64("secret-value")), "{shown}");
        }
    }

    #[test]
    fn missing_file_is_empty_config() {
        let dir = tempfile::tempdir().unwrap();
        let config = DockerConfig::load(&dir.path().join("nope")).unwrap();
        assert_eq!(config.path(), dir.path().join("nope/config.json"));
        assert_eq!(config.lookup("docker.io").unwrap(), None);
    }

    #[test]
    fn malformed_files_are_errors_naming_the_file() {
        let cases = [
            r#"{"auths":{"r":{"auth":"secret-value"}"#,
            r#"["secret-value"]"#,
            r#"{"auths":["secret-value"]}"#,
            r#"{"auths":{"r":"secret-value"}}"#,
            r#"{"auths":{"r":{"auth":["secret-value"]}}}"#,
            r#"{"credHelpers":{"r":["secret-value"]}}"#,
            r#"{"credsStore":["secret-value"]}"#,
        ];
        for json in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("config.json");
            fs::write(&path, json).unwrap();
            let err = DockerConfig::load(dir.path()).unwrap_err();
            let shown = err.to_string();
            assert!(
                shown.contains(&path.display().to_string()),
                "{json}: {shown}"
            );
            assert!(
                !format!("{shown} {err:?}").contains("secret-value"),
                "{json}: {shown}"
            );
        }
    }

    #[test]
    fn cred_helpers_win_over_auths() {
        let dir = tempfile::tempdir().unwrap();
        fake_helper(
            dir.path(),
            "test",
            r#"echo '{"ServerURL":"r.example","Username":"helper-user","Secret":"helper-pass"}'"#,
        );
        fs::write(
            dir.path().join("config.json"),
            r#"{"credHelpers":{"r.example":"test"},"auths":{"r.example":{"auth":"dTpw"}}}"#,
        )
        .unwrap();
        let _shared = running_helpers();
        let config = DockerConfig::load(dir.path())
            .unwrap()
            .with_helper_dir(dir.path());
        assert_eq!(
            config.lookup("r.example").unwrap(),
            Some(basic("helper-user", "helper-pass"))
        );
        assert_eq!(helper_log(dir.path(), "test"), "get r.example\n");
        // Other registries do not consult that helper.
        assert_eq!(config.lookup("other.example").unwrap(), None);
        assert_eq!(helper_log(dir.path(), "test"), "get r.example\n");
    }

    #[test]
    fn cred_helpers_key_for_docker_hub() {
        for key in [
            "https://index.docker.io/v1/",
            "docker.io",
            "index.docker.io",
        ] {
            let dir = tempfile::tempdir().unwrap();
            fake_helper(
                dir.path(),
                "test",
                r#"echo '{"Username":"<token>","Secret":"idtok"}'"#,
            );
            fs::write(
                dir.path().join("config.json"),
                format!(r#"{{"credHelpers":{{"{key}":"test"}}}}"#),
            )
            .unwrap();
            let _shared = running_helpers();
            let config = DockerConfig::load(dir.path())
                .unwrap()
                .with_helper_dir(dir.path());
            assert_eq!(
                config.lookup("docker.io").unwrap(),
                Some(Credential::IdentityToken("idtok".to_owned())),
                "{key}"
            );
            assert_eq!(
                helper_log(dir.path(), "test"),
                "get https://index.docker.io/v1/\n"
            );
        }
    }

    #[test]
    fn creds_store_then_inline_auths() {
        let dir = tempfile::tempdir().unwrap();
        fake_helper(
            dir.path(),
            "test",
            r#"if [ "$input" = "store.example" ]; then
  echo '{"ServerURL":"store.example","Username":"s","Secret":"p"}'
else
  echo 'credentials not found in native keychain'; exit 1
fi"#,
        );
        fs::write(
            dir.path().join("config.json"),
            r#"{"credsStore":"test","auths":{"store.example":{"auth":"dTpw"},"inline.example":{"auth":"dTpw"},"marker.example":{}}}"#,
        )
        .unwrap();
        let _shared = running_helpers();
        let config = DockerConfig::load(dir.path())
            .unwrap()
            .with_helper_dir(dir.path());
        assert_eq!(
            config.lookup("store.example").unwrap(),
            Some(basic("s", "p"))
        );
        assert_eq!(
            config.lookup("inline.example").unwrap(),
            Some(basic("u", "p"))
        );
        assert_eq!(config.lookup("marker.example").unwrap(), None);
        assert_eq!(config.lookup("none.example").unwrap(), None);
    }

    #[test]
    fn helper_failures() {
        let dir = tempfile::tempdir().unwrap();
        fake_helper(
            dir.path(),
            "broken",
            "echo 'no usable keychain' >&2; exit 3",
        );
        fake_helper(dir.path(), "garbage", "echo 'secret-value not json'");
        fake_helper(dir.path(), "empty", r#"echo '{"Username":"","Secret":""}'"#);
        let load = |helper: &str| {
            fs::write(
                dir.path().join("config.json"),
                format!(r#"{{"credsStore":"{helper}"}}"#),
            )
            .unwrap();
            DockerConfig::load(dir.path())
                .unwrap()
                .with_helper_dir(dir.path())
        };

        let _shared = running_helpers();
        let err = load("missing").lookup("r.example").unwrap_err();
        assert!(
            matches!(&err, CredentialError::HelperNotFound { program } if program == "docker-credential-missing"),
            "{err:?}"
        );
        assert!(err.to_string().contains("docker-credential-missing"));

        let err = load("broken").lookup("r.example").unwrap_err();
        assert!(
            matches!(&err, CredentialError::HelperFailed { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("no usable keychain"), "{err}");

        let err = load("garbage").lookup("r.example").unwrap_err();
        assert!(
            matches!(&err, CredentialError::HelperInvalidReply { .. }),
            "{err:?}"
        );
        assert!(!format!("{err} {err:?}").contains("secret-value"));

        assert_eq!(load("empty").lookup("r.example").unwrap(), None);

        let err = load("../evil").lookup("r.example").unwrap_err();
        assert!(
            matches!(&err, CredentialError::InvalidHelperName { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn helper_missing_from_path() {
        let (_dir, config) = config_with(r#"{"credsStore":"haul-test-surely-absent"}"#);
        let _shared = running_helpers();
        let err = config.lookup("r.example").unwrap_err();
        assert!(
            matches!(&err, CredentialError::HelperNotFound { program } if program == "docker-credential-haul-test-surely-absent"),
            "{err:?}"
        );
    }

    #[test]
    fn slow_helper_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        fake_helper(dir.path(), "slow", "exec sleep 30");
        fs::write(dir.path().join("config.json"), r#"{"credsStore":"slow"}"#).unwrap();
        let _shared = running_helpers();
        let config = DockerConfig::load(dir.path())
            .unwrap()
            .with_helper_dir(dir.path())
            .with_helper_timeout(Duration::from_millis(300));
        let started = Instant::now();
        let err = config.lookup("r.example").unwrap_err();
        assert!(
            matches!(&err, CredentialError::HelperTimeout { .. }),
            "{err:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn helper_whose_child_keeps_the_pipe_open_times_out() {
        let dir = tempfile::tempdir().unwrap();
        // The background sleep inherits stdout, so EOF never comes after the helper exits.
        fake_helper(
            dir.path(),
            "leaky",
            "sleep 10 &\necho '{\"Username\":\"u\",\"Secret\":\"p\"}'",
        );
        fs::write(dir.path().join("config.json"), r#"{"credsStore":"leaky"}"#).unwrap();
        let _shared = running_helpers();
        let config = DockerConfig::load(dir.path())
            .unwrap()
            .with_helper_dir(dir.path())
            .with_helper_timeout(Duration::from_millis(500));
        let started = Instant::now();
        let err = config.lookup("r.example").unwrap_err();
        assert!(
            matches!(&err, CredentialError::HelperTimeout { .. }),
            "{err:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn save_and_load_round_trip() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("new/.docker");
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("config.json"),
            r#"{"psFormat":"table {{.ID}}","auths":{"r.example":{"email":"a@b","auth":"old"}},"proxies":{"default":{"httpProxy":"http://p"}}}"#,
        )
        .unwrap();
        let mut config = DockerConfig::load(&dir).unwrap();
        config.save("r.example", &basic("u", "p:w")).unwrap();
        config
            .save("docker.io", &Credential::IdentityToken("idtok".to_owned()))
            .unwrap();

        let path = dir.join("config.json");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let reloaded = DockerConfig::load(&dir).unwrap();
        assert_eq!(
            reloaded.lookup("r.example").unwrap(),
            Some(basic("u", "p:w"))
        );
        assert_eq!(
            reloaded.lookup("docker.io").unwrap(),
            Some(Credential::IdentityToken("idtok".to_owned()))
        );
        let json: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(json["psFormat"], "table {{.ID}}");
        assert_eq!(json["proxies"]["default"]["httpProxy"], "http://p");
        assert_eq!(json["auths"]["r.example"]["email"], "a@b");
        assert_eq!(json["auths"]["r.example"]["auth"], b64("u:p:w"));
        assert!(json["auths"]["https://index.docker.io/v1/"].is_object());
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "config.json")
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn save_creates_private_directory() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("fresh");
        let mut config = DockerConfig::load(&dir).unwrap();
        config.save("r.example", &basic("u", "p")).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let mode = fs::metadata(dir.join("config.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            DockerConfig::load(&dir)
                .unwrap()
                .lookup("r.example")
                .unwrap(),
            Some(basic("u", "p"))
        );
    }

    #[test]
    fn save_and_erase_through_helper() {
        let dir = tempfile::tempdir().unwrap();
        fake_helper(
            dir.path(),
            "test",
            r#"case "$1" in
  store|erase) exit 0 ;;
  *) echo 'credentials not found in native keychain'; exit 1 ;;
esac"#,
        );
        fs::write(
            dir.path().join("config.json"),
            r#"{"credsStore":"test","auths":{"r.example":{"auth":"dTpw"}}}"#,
        )
        .unwrap();
        let _shared = running_helpers();
        let mut config = DockerConfig::load(dir.path())
            .unwrap()
            .with_helper_dir(dir.path());
        config.save("r.example", &basic("u", "s3cret")).unwrap();
        config
            .save("docker.io", &Credential::IdentityToken("idtok".to_owned()))
            .unwrap();
        let log = helper_log(dir.path(), "test");
        let mut lines = log.lines();
        let store: Value =
            serde_json::from_str(lines.next().unwrap().strip_prefix("store ").unwrap()).unwrap();
        assert_eq!(
            store,
            serde_json::json!({"ServerURL":"r.example","Username":"u","Secret":"s3cret"})
        );
        let store: Value =
            serde_json::from_str(lines.next().unwrap().strip_prefix("store ").unwrap()).unwrap();
        assert_eq!(
            store,
            serde_json::json!({"ServerURL":"https://index.docker.io/v1/","Username":"<token>","Secret":"idtok"})
        );
        // The inline secret is replaced by docker's empty marker.
        let json: Value =
            serde_json::from_slice(&fs::read(dir.path().join("config.json")).unwrap()).unwrap();
        assert_eq!(json["auths"]["r.example"], serde_json::json!({}));
        assert!(!json.to_string().contains("s3cret"));

        assert!(config.erase("r.example").unwrap());
        assert!(helper_log(dir.path(), "test").ends_with("erase r.example\n"));
        let json: Value =
            serde_json::from_slice(&fs::read(dir.path().join("config.json")).unwrap()).unwrap();
        assert!(json["auths"].get("r.example").is_none());
    }

    #[test]
    fn erase_inline_entries() {
        let (dir, mut config) = config_with(
            r#"{"auths":{"r.example":{"auth":"dTpw"},"https://r.example/v1/":{"auth":"dTpw"},"other.example":{"auth":"dTpw"}},"x":1}"#,
        );
        assert!(config.erase("r.example").unwrap());
        assert!(!config.erase("r.example").unwrap());
        assert!(!config.erase("absent.example").unwrap());
        let reloaded = DockerConfig::load(dir.path()).unwrap();
        assert_eq!(reloaded.lookup("r.example").unwrap(), None);
        assert_eq!(
            reloaded.lookup("other.example").unwrap(),
            Some(basic("u", "p"))
        );
        let json: Value =
            serde_json::from_slice(&fs::read(dir.path().join("config.json")).unwrap()).unwrap();
        assert_eq!(json["x"], 1);
    }

    #[test]
    fn erase_not_found_in_helper() {
        let dir = tempfile::tempdir().unwrap();
        fake_helper(
            dir.path(),
            "test",
            "echo 'credentials not found in native keychain'; exit 1",
        );
        fs::write(dir.path().join("config.json"), r#"{"credsStore":"test"}"#).unwrap();
        let _shared = running_helpers();
        let mut config = DockerConfig::load(dir.path())
            .unwrap()
            .with_helper_dir(dir.path());
        assert!(!config.erase("r.example").unwrap());
    }

    #[test]
    fn debug_output_has_no_secrets() {
        let shown = format!(
            "{:?} {:?}",
            basic("alice", "pass-secret"),
            Credential::IdentityToken("token-secret".to_owned())
        );
        assert!(shown.contains("alice"), "{shown}");
        assert!(!shown.contains("pass-secret"), "{shown}");
        assert!(!shown.contains("token-secret"), "{shown}");

        let (_dir, config) = config_with(&format!(
            r#"{{"auths":{{"r.example":{{"auth":"{}"}}}}}}"#,
            b64("u:pass-secret")
        ));
        let shown = format!("{config:?}");
        assert!(!shown.contains(&b64("u:pass-secret")), "{shown}");
    }

    #[test]
    fn hostname_conversion() {
        let cases = [
            ("https://index.docker.io/v1/", "index.docker.io"),
            ("http://r.example:5000/v2/", "r.example:5000"),
            ("HTTPS://r.example", "r.example"),
            ("r.example/path", "r.example"),
            ("r.example", "r.example"),
            ("", ""),
        ];
        for (key, want) in cases {
            assert_eq!(convert_to_hostname(key), want, "{key}");
        }
    }
}
