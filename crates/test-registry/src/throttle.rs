//! A reverse proxy that caps each connection's rate, in front of a registry: what a CDN or a
//! long-RTT link does to one TCP connection. Every request is forwarded as it came (`Range`,
//! `Authorization` and all; redirects are passed back to the client, not followed) unless told
//! to drop `Range` (a mirror that ignores it). It counts the connections accepted and logs every
//! request with its `Range`, status, body bytes sent and whether the body was sent whole.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, Response, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

use crate::error::{Result, TestError};
use crate::util::lock;

/// Options of [`ThrottleProxy::start`].
#[derive(Clone, Debug)]
pub struct ThrottleOptions {
    /// The registry behind it (`http://127.0.0.1:PORT`).
    pub upstream: String,
    /// Bytes per second each connection may carry towards the client.
    pub bytes_per_sec: u64,
    /// Forward requests without their `Range`: the upstream answers 200 with the whole blob.
    pub ignore_range: bool,
}

/// One request through the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThrottledRequest {
    /// `GET`, `HEAD`, …
    pub method: String,
    /// The path (and query).
    pub path: String,
    /// The `Range` the client sent.
    pub range: Option<String>,
    /// The upstream's status.
    pub status: u16,
    /// Body bytes handed to the connection so far.
    pub sent: u64,
    /// Whether the whole body was handed to the connection.
    pub complete: bool,
    /// When the request arrived, on the proxy's clock (which orders starts and ends).
    pub started: u64,
    /// When its response ended (the body sent or given up), on the same clock.
    pub ended: Option<u64>,
}

impl ThrottledRequest {
    /// The bytes the request asked for, of a blob of `size`: its `Range`, or all of it.
    pub fn requested(&self, size: u64) -> u64 {
        let Some(spec) = self.range.as_deref().and_then(|r| r.strip_prefix("bytes=")) else {
            return size;
        };
        let Some((first, last)) = spec.split_once('-') else {
            return size;
        };
        let first: u64 = first.parse().unwrap_or(0);
        let end = last.parse::<u64>().map_or(size, |l| (l + 1).min(size));
        end.saturating_sub(first)
    }
}

#[derive(Debug)]
struct Inner {
    upstream: String,
    ignore_range: bool,
    client: reqwest::Client,
    connections: AtomicUsize,
    requests: Mutex<Vec<ThrottledRequest>>,
    /// Orders the starts and ends of requests.
    clock: AtomicU64,
}

/// Marks its request's end when dropped: the body sent, or given up.
struct Ending {
    inner: Arc<Inner>,
    index: usize,
}

impl Drop for Ending {
    fn drop(&mut self) {
        let at = self.inner.clock.fetch_add(1, Ordering::SeqCst);
        if let Some(r) = lock(&self.inner.requests).get_mut(self.index) {
            r.ended = Some(at);
        }
    }
}

/// A running throttling proxy; stops when dropped.
#[derive(Debug)]
pub struct ThrottleProxy {
    inner: Arc<Inner>,
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl ThrottleProxy {
    /// Listens on a free port of 127.0.0.1.
    pub async fn start(opts: ThrottleOptions) -> Result<ThrottleProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| TestError::io("binding the throttling proxy", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| TestError::io("reading the proxy's address", e))?
            .port();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()?;
        let inner = Arc::new(Inner {
            upstream: opts.upstream.trim_end_matches('/').to_owned(),
            ignore_range: opts.ignore_range,
            client,
            connections: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            clock: AtomicU64::new(0),
        });
        let listener = Throttled {
            listener,
            bytes_per_sec: opts.bytes_per_sec.max(1),
            inner: inner.clone(),
        };
        let router = Router::new().fallback(forward).with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(ThrottleProxy { inner, port, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`, as a registry host in a reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::SeqCst)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<ThrottledRequest> {
        lock(&self.inner.requests).clone()
    }

    /// The most of `requests` that were being answered at once (each holds a connection).
    pub fn most_at_once(requests: &[ThrottledRequest]) -> usize {
        let mut events: Vec<(u64, i64)> = requests
            .iter()
            .flat_map(|r| [(r.started, 1), (r.ended.unwrap_or(u64::MAX), -1)])
            .collect();
        events.sort_unstable();
        let mut now = 0i64;
        let mut most = 0i64;
        for (_, delta) in events {
            now += delta;
            most = most.max(now);
        }
        usize::try_from(most).unwrap_or(0)
    }

    /// Requests whose path contains `path_contains`.
    pub fn requests_for(&self, path_contains: &str) -> Vec<ThrottledRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.contains(path_contains))
            .collect()
    }

    /// Forgets the requests and connections so far.
    pub fn clear(&self) {
        lock(&self.inner.requests).clear();
        self.inner.connections.store(0, Ordering::SeqCst);
    }
}

impl Drop for ThrottleProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "host",
    "proxy-connection",
];

async fn forward(State(inner): State<Arc<Inner>>, req: Request) -> Response<Body> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let method = req.method().clone();
    let range = req
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut upstream = inner
        .client
        .request(method.clone(), format!("{}{path}", inner.upstream));
    for (name, value) in req.headers() {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || (inner.ignore_range && n == "range") {
            continue;
        }
        upstream = upstream.header(name.clone(), value.clone());
    }
    let index = {
        let started = inner.clock.fetch_add(1, Ordering::SeqCst);
        let mut requests = lock(&inner.requests);
        requests.push(ThrottledRequest {
            method: method.to_string(),
            path: path.clone(),
            range,
            status: 0,
            sent: 0,
            complete: false,
            started,
            ended: None,
        });
        requests.len() - 1
    };
    let ending = Ending {
        inner: inner.clone(),
        index,
    };
    let resp = match upstream.send().await {
        Ok(r) => r,
        Err(e) => {
            let mut r = Response::new(Body::from(format!("upstream failed: {e}")));
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            return r;
        }
    };
    let status = resp.status();
    if let Some(r) = lock(&inner.requests).get_mut(index) {
        r.status = status.as_u16();
    }
    let mut out = Response::builder().status(status.as_u16());
    for (name, value) in resp.headers() {
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        if let Ok(n) = HeaderName::from_bytes(name.as_str().as_bytes()) {
            out = out.header(n, value.as_bytes());
        }
    }
    let log = inner.clone();
    let mut stream = resp.bytes_stream();
    let body = async_stream(move |tx| async move {
        let _ending = ending;
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else {
                return;
            };
            let n = chunk.len() as u64;
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
            if let Some(r) = lock(&log.requests).get_mut(index) {
                r.sent += n;
            }
        }
        if let Some(r) = lock(&log.requests).get_mut(index) {
            r.complete = true;
        }
    });
    out.body(body)
        .unwrap_or_else(|_| Response::new(Body::from("bad upstream headers")))
}

/// A body fed by `produce` through a channel of one chunk.
fn async_stream<F, Fut>(produce: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<std::io::Result<Bytes>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(produce(tx));
    Body::from_stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// The listener handing out rate-capped connections.
struct Throttled {
    listener: TcpListener,
    bytes_per_sec: u64,
    inner: Arc<Inner>,
}

impl axum::serve::Listener for Throttled {
    type Io = ThrottledStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let Ok((stream, addr)) = self.listener.accept().await {
                self.inner.connections.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_nodelay(true);
                return (
                    ThrottledStream {
                        stream,
                        rate: self.bytes_per_sec,
                        tokens: 0,
                        refilled: Instant::now(),
                        sleep: None,
                    },
                    addr,
                );
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// A connection whose writes (towards the client) are held to a rate: a token bucket with a
/// burst of a tenth of a second.
struct ThrottledStream {
    stream: TcpStream,
    rate: u64,
    tokens: u64,
    refilled: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl ThrottledStream {
    fn refill(&mut self) {
        let now = Instant::now();
        let earned = (now - self.refilled).as_secs_f64() * self.rate as f64;
        if earned >= 1.0 {
            let burst = (self.rate / 10).max(16 * 1024);
            self.tokens = (self.tokens + earned as u64).min(burst);
            self.refilled = now;
        }
    }
}

impl AsyncRead for ThrottledStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ThrottledStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            if let Some(sleep) = self.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.sleep = None;
            }
            self.refill();
            if self.tokens > 0 {
                break;
            }
            // Wait for 16 KiB worth of tokens, at least a millisecond.
            let wait = Duration::from_secs_f64((16.0 * 1024.0) / self.rate as f64)
                .max(Duration::from_millis(1));
            self.sleep = Some(Box::pin(tokio::time::sleep(wait)));
        }
        let n = buf
            .len()
            .min(usize::try_from(self.tokens).unwrap_or(usize::MAX));
        match Pin::new(&mut self.stream).poll_write(cx, &buf[..n]) {
            Poll::Ready(Ok(written)) => {
                self.tokens -= written as u64;
                Poll::Ready(Ok(written))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_bytes_follow_the_range() {
        let r = |range: Option<&str>| ThrottledRequest {
            method: "GET".into(),
            path: "/v2/a/blobs/x".into(),
            range: range.map(str::to_owned),
            status: 206,
            sent: 0,
            complete: false,
            started: 0,
            ended: None,
        };
        assert_eq!(r(None).requested(1000), 1000);
        assert_eq!(r(Some("bytes=100-199")).requested(1000), 100);
        assert_eq!(r(Some("bytes=900-")).requested(1000), 100);
        assert_eq!(r(Some("bytes=900-5000")).requested(1000), 100);
    }
}
