//! The one error type of this crate: test support fails loudly and descriptively, nothing branches on it.

/// Anything that went wrong while starting a server, building an image or pushing it.
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    /// A file-system or process operation failed.
    #[error("{context}")]
    Io {
        /// What was being done, with the path involved.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An HTTP request could not be sent or its body not read.
    #[error("HTTP request failed")]
    Http(#[from] reqwest::Error),
    /// A server answered with a status the caller did not expect.
    #[error("{method} {url} answered {status}: {body}")]
    UnexpectedStatus {
        /// Request method.
        method: String,
        /// Request URL.
        url: String,
        /// Response status code.
        status: u16,
        /// Response body (truncated).
        body: String,
    },
    /// The registry process did not become ready.
    #[error("registry did not start: {0}")]
    Startup(String),
    /// Certificate or signing-key generation failed.
    #[error("crypto setup failed: {0}")]
    Crypto(String),
    /// A producer or oracle (podman, skopeo, umoci, …) exited with a failure.
    #[error("{command} failed ({status}): {stderr}")]
    Tool {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// What it said.
        stderr: String,
    },
    /// A malformed input (URL, header, JSON) was given or received.
    #[error("invalid input: {0}")]
    Invalid(String),
}

impl TestError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> TestError {
        TestError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result alias used throughout this crate.
pub type Result<T, E = TestError> = std::result::Result<T, E>;
