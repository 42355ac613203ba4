//! A tiny wrapper around `axum::serve` on a loopback listener that stops when dropped.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode, header};

use crate::error::{Result, TestError};

/// A running axum server; aborted on drop.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds `ip:0` and serves `router` on a spawned task.
    pub(crate) async fn start(ip: &str, router: Router) -> Result<Server> {
        Server::serve(Server::bind(ip).await?, router)
    }

    /// Binds `ip:0`; serve on it with [`Server::serve`].
    pub(crate) async fn bind(ip: &str) -> Result<tokio::net::TcpListener> {
        tokio::net::TcpListener::bind((ip, 0))
            .await
            .map_err(|e| TestError::io(format!("binding {ip}:0"), e))
    }

    /// Serves `router` on `listener` on a spawned task.
    pub(crate) fn serve(listener: tokio::net::TcpListener, router: Router) -> Result<Server> {
        let addr = listener
            .local_addr()
            .map_err(|e| TestError::io("reading the local address", e))?;
        let task = tokio::spawn(async move {
            // An accept error ends this test server; nothing useful to do with it.
            let _ = axum::serve(listener, router).await;
        });
        Ok(Server { addr, task })
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response with a JSON body.
pub(crate) fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

/// A registry-shaped error: `{"errors":[{"code","message","detail"}]}`.
pub(crate) fn registry_error(
    status: StatusCode,
    code: &str,
    message: &str,
    detail: serde_json::Value,
) -> Response<Body> {
    json_response(
        status,
        &serde_json::json!({"errors": [{"code": code, "message": message, "detail": detail}]}),
    )
}
