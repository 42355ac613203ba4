//! A forward HTTP proxy on loopback that records what passes through it: absolute-form requests
//! (`GET http://host/path HTTP/1.1`, forwarded with `Connection: close`) and `CONNECT host:port`
//! tunnels (bytes copied both ways, so TLS or anything else works through it). Each request is
//! logged with the `Proxy-Authorization` it carried, and the proxy can demand Basic credentials
//! (answering 407 without them), so a test can show that a client used the proxy, with which
//! credentials, and that a host excluded by `NO_PROXY` never went through it.
//!
//! Deliberately small: one request per client connection (the response tells the client the
//! connection closes), no chunked request bodies (clients send GET/HEAD through it in tests).

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::error::{Result, TestError};
use crate::util::{lock, parse_basic};

/// Longest request or response head accepted; anything longer is not a test client.
const MAX_HEAD: usize = 64 * 1024;

/// One request the proxy received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxiedRequest {
    /// `GET`, `HEAD`, `CONNECT`, …
    pub method: String,
    /// The request target as sent: an absolute URL, or `host:port` for `CONNECT`.
    pub target: String,
    /// The `Proxy-Authorization` header, if any.
    pub proxy_authorization: Option<String>,
}

impl ProxiedRequest {
    /// The (user, password) of a Basic `Proxy-Authorization`.
    pub fn basic_credentials(&self) -> Option<(String, String)> {
        self.proxy_authorization.as_deref().and_then(parse_basic)
    }

    /// The `host:port` the request was for.
    pub fn authority(&self) -> String {
        if self.method.eq_ignore_ascii_case("CONNECT") {
            return self.target.clone();
        }
        url::Url::parse(&self.target)
            .ok()
            .and_then(|u| {
                let host = u.host_str()?.to_owned();
                Some(match u.port_or_known_default() {
                    Some(p) => format!("{host}:{p}"),
                    None => host,
                })
            })
            .unwrap_or_default()
    }
}

/// Options of [`HttpProxy::start`].
#[derive(Clone, Debug, Default)]
pub struct HttpProxyOptions {
    /// When set, requests without this Basic `Proxy-Authorization` get 407.
    pub credentials: Option<(String, String)>,
    /// Names the proxy resolves itself, as a site proxy's own DNS would: a request for
    /// `registry.test:PORT` goes to the address given here, same port. Other names are looked up.
    pub hosts: Vec<(String, std::net::IpAddr)>,
}

#[derive(Debug, Default)]
struct ProxyInner {
    requests: Mutex<Vec<ProxiedRequest>>,
    credentials: Option<(String, String)>,
    hosts: Vec<(String, std::net::IpAddr)>,
}

/// A running forward proxy; stops accepting when dropped.
#[derive(Debug)]
pub struct HttpProxy {
    inner: Arc<ProxyInner>,
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl HttpProxy {
    /// Listens on a free port of 127.0.0.1.
    pub async fn start(opts: HttpProxyOptions) -> Result<HttpProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| TestError::io("binding the proxy", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| TestError::io("reading the proxy's address", e))?
            .port();
        let inner = Arc::new(ProxyInner {
            requests: Mutex::new(Vec::new()),
            credentials: opts.credentials,
            hosts: opts.hosts,
        });
        let shared = inner.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let inner = shared.clone();
                tokio::spawn(async move {
                    // A failed connection only affects the test that made it; it sees the error.
                    let _ = serve(inner, client).await;
                });
            }
        });
        Ok(HttpProxy { inner, port, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://user:password@127.0.0.1:PORT`.
    pub fn url_with_credentials(&self, user: &str, password: &str) -> String {
        format!("http://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<ProxiedRequest> {
        lock(&self.inner.requests).clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.inner.requests).clear();
    }
}

impl Drop for HttpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A request or response head: the first line, the header lines, and bytes read past the head.
struct Head {
    first_line: String,
    headers: Vec<(String, String)>,
    rest: Vec<u8>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads up to the blank line ending an HTTP/1 head. `None` at a clean EOF before any byte.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Head>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::Error::other("head too long"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(std::io::Error::other("connection closed inside a head"))
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let first_line = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Some(Head {
        first_line,
        headers,
        rest: buf[end + 4..].to_vec(),
    }))
}

async fn serve(inner: Arc<ProxyInner>, mut client: TcpStream) -> std::io::Result<()> {
    let Some(head) = read_head(&mut client).await? else {
        return Ok(());
    };
    let mut parts = head.first_line.split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let proxy_authorization = head.header("proxy-authorization").map(str::to_owned);
    let request = ProxiedRequest {
        method: method.clone(),
        target: target.clone(),
        proxy_authorization,
    };
    let authorized = match &inner.credentials {
        None => true,
        Some((user, password)) => {
            request.basic_credentials() == Some((user.clone(), password.clone()))
        }
    };
    let authority = request.authority();
    lock(&inner.requests).push(request);
    if !authorized {
        client
            .write_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                  Proxy-Authenticate: Basic realm=\"haul-test-proxy\"\r\n\
                  Content-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await?;
        return client.shutdown().await;
    }
    let connect_to = match authority.rsplit_once(':') {
        Some((name, port)) => match inner.hosts.iter().find(|(h, _)| h == name) {
            Some((_, ip)) => std::net::SocketAddr::new(*ip, port.parse().unwrap_or(80)).to_string(),
            None => authority.clone(),
        },
        None => authority.clone(),
    };
    let mut upstream = match TcpStream::connect(&connect_to).await {
        Ok(s) => s,
        Err(_) => {
            client
                .write_all(
                    b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await?;
            return client.shutdown().await;
        }
    };
    if method.eq_ignore_ascii_case("CONNECT") {
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        upstream.write_all(&head.rest).await?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        return Ok(());
    }
    forward(&head, &target, &mut client, &mut upstream).await
}

/// Sends an absolute-form request on in origin form, then the response back, closing after it.
async fn forward(
    head: &Head,
    target: &str,
    client: &mut TcpStream,
    upstream: &mut TcpStream,
) -> std::io::Result<()> {
    let url = url::Url::parse(target).map_err(std::io::Error::other)?;
    let mut origin_form = url.path().to_owned();
    if let Some(q) = url.query() {
        origin_form.push('?');
        origin_form.push_str(q);
    }
    let method = head.first_line.split(' ').next().unwrap_or("GET");
    let mut out = format!("{method} {origin_form} HTTP/1.1\r\n");
    for (k, v) in &head.headers {
        let hop_by_hop = [
            "proxy-authorization",
            "proxy-connection",
            "connection",
            "keep-alive",
        ];
        if !hop_by_hop.iter().any(|h| k.eq_ignore_ascii_case(h)) {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    upstream.write_all(out.as_bytes()).await?;
    let body_len: usize = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    upstream.write_all(&head.rest).await?;
    if body_len > head.rest.len() {
        let mut remaining = (&mut *client).take((body_len - head.rest.len()) as u64);
        tokio::io::copy(&mut remaining, upstream).await?;
    }
    // The response head gets `Connection: close` so the client does not reuse this connection.
    let Some(response) = read_head(upstream).await? else {
        return client.shutdown().await;
    };
    let mut back = format!("{}\r\n", response.first_line);
    for (k, v) in &response.headers {
        if !k.eq_ignore_ascii_case("connection") && !k.eq_ignore_ascii_case("keep-alive") {
            back.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    back.push_str("Connection: close\r\n\r\n");
    client.write_all(back.as_bytes()).await?;
    client.write_all(&response.rest).await?;
    tokio::io::copy(upstream, client).await?;
    client.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_of_requests() {
        let r = ProxiedRequest {
            method: "GET".into(),
            target: "http://127.0.0.1:5000/v2/".into(),
            proxy_authorization: None,
        };
        assert_eq!(r.authority(), "127.0.0.1:5000");
        let r = ProxiedRequest {
            method: "CONNECT".into(),
            target: "registry.example:443".into(),
            proxy_authorization: Some("Basic YWxpY2U6czNjcjp0".into()),
        };
        assert_eq!(r.authority(), "registry.example:443");
        assert_eq!(
            r.basic_credentials(),
            Some(("alice".into(), "s3cr:t".into()))
        );
    }
}
