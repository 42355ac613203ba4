//! A token server speaking Docker Hub's flow (`GET /token?service=…&scope=…` with optional Basic
//! auth, and the OAuth2 `POST /token` form), issuing ES256 JWTs that the real registry verifies:
//! the signing key's self-signed certificate is both the registry's `rootcertbundle` and the
//! token header's `x5c` chain.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, Response, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::json;

use crate::error::{Result, TestError};
use crate::registry::TokenAuthConfig;
use crate::server::{Server, json_response};
use crate::util::{form_pairs, lock, parse_basic, random_hex, rfc3339, unix_now};

/// Service name the issuer puts in `aud` (and the registry expects).
pub const TOKEN_SERVICE: &str = "haul-test-registry";
/// Issuer name in `iss`.
pub const TOKEN_ISSUER: &str = "haul-test-issuer";

/// How the issuer behaves.
#[derive(Clone, Debug)]
pub struct TokenIssuerOptions {
    /// Known (user, password) pairs; they get every action they ask for.
    pub users: Vec<(String, String)>,
    /// Whether requests without credentials get a token (pull actions only).
    pub anonymous_pull: bool,
    /// Token lifetime in seconds (`exp` and `expires_in`).
    pub expires_in: u64,
    /// Answer with only `access_token` (no `token` field), as some registries do.
    pub only_access_token_field: bool,
    /// Repositories anonymous users get no actions on.
    pub private_repos: Vec<String>,
}

impl Default for TokenIssuerOptions {
    fn default() -> Self {
        TokenIssuerOptions {
            users: Vec::new(),
            anonymous_pull: true,
            expires_in: 300,
            only_access_token_field: false,
            private_repos: Vec::new(),
        }
    }
}

/// One request to `/token`, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// `GET` or `POST`.
    pub method: String,
    /// Each `scope` asked for (GET: repeated parameters; POST: space-separated).
    pub scopes: Vec<String>,
    /// `service` parameter.
    pub service: Option<String>,
    /// User from Basic auth or the `username` form field.
    pub user: Option<String>,
    /// `grant_type` (POST only).
    pub grant_type: Option<String>,
    /// Whether a `refresh_token` was presented.
    pub used_refresh_token: bool,
    /// Status the issuer answered.
    pub status: u16,
}

struct Shared {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    x5c: String,
    opts: TokenIssuerOptions,
    requests: Mutex<Vec<TokenRequest>>,
    refresh_tokens: Mutex<HashMap<String, String>>,
}

/// A running token server.
pub struct TokenIssuer {
    shared: Arc<Shared>,
    server: Server,
    cert_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// Splits `repository:name:pull,push` into (type, name, actions); names may contain `:`.
fn parse_scope(scope: &str) -> Option<(String, String, Vec<String>)> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let actions = actions
        .split(',')
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect();
    Some((kind.to_string(), name.to_string(), actions))
}

impl Shared {
    fn sign(&self, subject: &str, access: &[serde_json::Value], lifetime: i64) -> String {
        let now = unix_now() as i64;
        let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [self.x5c]});
        let claims = json!({
            "iss": TOKEN_ISSUER,
            "sub": subject,
            "aud": TOKEN_SERVICE,
            "exp": now + lifetime,
            "nbf": now - 1,
            "iat": now,
            "jti": random_hex(16),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        // Signing with a valid in-memory key only fails if the RNG does; a garbage signature then
        // makes the registry refuse the token, which a test will report.
        let sig = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map(|s| URL_SAFE_NO_PAD.encode(s.as_ref()))
            .unwrap_or_default();
        format!("{input}.{sig}")
    }

    /// The `access` claim for `scopes`: everything asked for when `user` is known, pull only
    /// (and nothing on private repositories) for anonymous requests.
    fn access(&self, scopes: &[String], user: Option<&str>) -> Vec<serde_json::Value> {
        scopes
            .iter()
            .flat_map(|s| s.split(' '))
            .filter_map(parse_scope)
            .map(|(kind, name, actions)| {
                let granted: Vec<String> = match user {
                    Some(_) => actions,
                    None if self.opts.private_repos.contains(&name) => Vec::new(),
                    None => actions.into_iter().filter(|a| a == "pull").collect(),
                };
                json!({"type": kind, "name": name, "actions": granted})
            })
            .collect()
    }

    fn check_user(&self, user: &str, password: &str) -> bool {
        self.opts
            .users
            .iter()
            .any(|(u, p)| u == user && p == password)
    }

    fn token_response(
        &self,
        token: &str,
        scopes: &[String],
        refresh: Option<String>,
        oauth: bool,
    ) -> Response<Body> {
        let mut body = json!({
            "access_token": token,
            "expires_in": self.opts.expires_in,
            "issued_at": rfc3339(unix_now()),
        });
        if !self.opts.only_access_token_field && !oauth {
            body["token"] = json!(token);
        }
        if oauth {
            body["scope"] = json!(scopes.join(" "));
        }
        if let Some(r) = refresh {
            body["refresh_token"] = json!(r);
        }
        json_response(StatusCode::OK, &body)
    }

    fn new_refresh_token(&self, user: &str) -> String {
        let t = format!("refresh-{}", random_hex(16));
        lock(&self.refresh_tokens).insert(t.clone(), user.to_string());
        t
    }
}

fn unauthorized(details: &str) -> Response<Body> {
    let mut resp = json_response(StatusCode::UNAUTHORIZED, &json!({"details": details}));
    if let Ok(v) = "Basic realm=\"haul-test-issuer\"".parse() {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response<Body> {
    if req.uri().path() != "/token" {
        return json_response(StatusCode::NOT_FOUND, &json!({"details": "not found"}));
    }
    let method = req.method().clone();
    let basic = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_basic);
    let query = form_pairs(req.uri().query().unwrap_or(""));
    let mut record = TokenRequest {
        method: method.to_string(),
        scopes: Vec::new(),
        service: None,
        user: None,
        grant_type: None,
        used_refresh_token: false,
        status: 0,
    };
    let resp = if method == Method::GET {
        record.scopes = query
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.clone())
            .collect();
        record.service = query
            .iter()
            .find(|(k, _)| k == "service")
            .map(|(_, v)| v.clone());
        let offline = query
            .iter()
            .any(|(k, v)| k == "offline_token" && v == "true");
        match basic {
            Some((user, pass)) => {
                record.user = Some(user.clone());
                if shared.check_user(&user, &pass) {
                    let token = shared.sign(
                        &user,
                        &shared.access(&record.scopes, Some(&user)),
                        shared.opts.expires_in as i64,
                    );
                    let refresh = offline.then(|| shared.new_refresh_token(&user));
                    shared.token_response(&token, &record.scopes, refresh, false)
                } else {
                    unauthorized("incorrect username or password")
                }
            }
            None if shared.opts.anonymous_pull => {
                let token = shared.sign(
                    "",
                    &shared.access(&record.scopes, None),
                    shared.opts.expires_in as i64,
                );
                shared.token_response(&token, &record.scopes, None, false)
            }
            None => unauthorized("authentication required"),
        }
    } else if method == Method::POST {
        let body = axum::body::to_bytes(req.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        let form = form_pairs(&String::from_utf8_lossy(&body));
        let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        record.scopes = field("scope")
            .map(|s| {
                s.split(' ')
                    .filter(|x| !x.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        record.service = field("service");
        record.grant_type = field("grant_type");
        match record.grant_type.as_deref() {
            Some("password") => {
                let user = field("username").unwrap_or_default();
                let pass = field("password").unwrap_or_default();
                record.user = Some(user.clone());
                if shared.check_user(&user, &pass) {
                    let token = shared.sign(
                        &user,
                        &shared.access(&record.scopes, Some(&user)),
                        shared.opts.expires_in as i64,
                    );
                    let offline = field("access_type").as_deref() == Some("offline");
                    let refresh = offline.then(|| shared.new_refresh_token(&user));
                    shared.token_response(&token, &record.scopes, refresh, true)
                } else {
                    unauthorized("incorrect username or password")
                }
            }
            Some("refresh_token") => {
                record.used_refresh_token = true;
                let presented = field("refresh_token").unwrap_or_default();
                let user = lock(&shared.refresh_tokens).get(&presented).cloned();
                match user {
                    Some(user) => {
                        record.user = Some(user.clone());
                        let token = shared.sign(
                            &user,
                            &shared.access(&record.scopes, Some(&user)),
                            shared.opts.expires_in as i64,
                        );
                        shared.token_response(&token, &record.scopes, None, true)
                    }
                    None => unauthorized("invalid refresh token"),
                }
            }
            _ => json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "unsupported_grant_type"}),
            ),
        }
    } else {
        json_response(StatusCode::METHOD_NOT_ALLOWED, &json!({}))
    };
    record.status = resp.status().as_u16();
    lock(&shared.requests).push(record);
    resp
}

impl TokenIssuer {
    /// Generates a P-256 key and self-signed certificate, writes the certificate as the root
    /// bundle, and serves `/token` on a free loopback port.
    pub async fn start(opts: TokenIssuerOptions) -> Result<TokenIssuer> {
        crate::util::install_crypto_provider();
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| TestError::Crypto(format!("generating the key: {e}")))?;
        let mut params = rcgen::CertificateParams::new(vec!["haul-test-token-issuer".to_string()])
            .map_err(|e| TestError::Crypto(format!("certificate params: {e}")))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "haul-test-token-issuer");
        let cert = params
            .self_signed(&key_pair)
            .map_err(|e| TestError::Crypto(format!("self-signing: {e}")))?;
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key_pair.serialize_der())
                .map_err(|e| TestError::Crypto(format!("loading the key into aws-lc-rs: {e}")))?;
        let dir = tempfile::Builder::new()
            .prefix("haul-token-issuer-")
            .tempdir()
            .map_err(|e| TestError::io("creating the issuer temp dir", e))?;
        let cert_path = dir.path().join("root.pem");
        std::fs::write(&cert_path, cert.pem())
            .map_err(|e| TestError::io(format!("writing {}", cert_path.display()), e))?;
        let shared = Arc::new(Shared {
            key,
            rng: SystemRandom::new(),
            x5c: STANDARD.encode(cert.der()),
            opts,
            requests: Mutex::new(Vec::new()),
            refresh_tokens: Mutex::new(HashMap::new()),
        });
        let router = Router::new().fallback(handle).with_state(shared.clone());
        let server = Server::start("127.0.0.1", router).await?;
        Ok(TokenIssuer {
            shared,
            server,
            cert_path,
            _dir: dir,
        })
    }

    /// `http://127.0.0.1:PORT/token`.
    pub fn realm(&self) -> String {
        format!("{}/token", self.server.url())
    }

    /// The service name (`aud`).
    pub fn service(&self) -> &str {
        TOKEN_SERVICE
    }

    /// The issuer name (`iss`).
    pub fn issuer(&self) -> &str {
        TOKEN_ISSUER
    }

    /// PEM file with the signing certificate.
    pub fn root_cert_bundle(&self) -> PathBuf {
        self.cert_path.clone()
    }

    /// The registry's `auth.token` section for this issuer.
    pub fn registry_config(&self) -> TokenAuthConfig {
        TokenAuthConfig {
            realm: self.realm(),
            service: TOKEN_SERVICE.to_string(),
            issuer: TOKEN_ISSUER.to_string(),
            rootcertbundle: self.cert_path.clone(),
        }
    }

    /// Mints a token granting every action in `scope` (space-separated scopes allowed), without
    /// an HTTP round trip (for the pusher).
    pub fn token_for(&self, subject: &str, scope: &str) -> String {
        self.token_expiring_in(subject, scope, self.shared.opts.expires_in as i64)
    }

    /// Like [`TokenIssuer::token_for`] with `exp` = now + `seconds` (negative: already expired;
    /// the registry allows 60 s of leeway).
    pub fn token_expiring_in(&self, subject: &str, scope: &str, seconds: i64) -> String {
        let access = self.shared.access(&[scope.to_string()], Some(subject));
        self.shared.sign(subject, &access, seconds)
    }

    /// Every `/token` request so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        lock(&self.shared.requests).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::parse_scope;

    #[test]
    fn scopes() {
        assert_eq!(
            parse_scope("repository:library/nginx:pull,push"),
            Some((
                "repository".into(),
                "library/nginx".into(),
                vec!["pull".into(), "push".into()]
            ))
        );
        assert_eq!(
            parse_scope("repository:localhost:5000/a:pull").map(|s| s.1),
            Some("localhost:5000/a".into())
        );
        assert_eq!(parse_scope("nonsense"), None);
    }
}
