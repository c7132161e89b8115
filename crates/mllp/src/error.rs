//! The crate's error type. Messages carry file names, addresses and error kinds, never frame data.

use std::path::PathBuf;

use crate::codec::FrameError;

/// Errors from binding, configuring, serving or sending.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer broke MLLP framing.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A TLS file could not be used; `path` names it.
    #[error("TLS configuration error in {}: {reason}", path.display())]
    TlsConfig {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// `TlsClientConfig::server_name` is neither a DNS name nor an IP address.
    #[error("invalid TLS server name {0:?}")]
    InvalidServerName(String),
    /// Connecting (TCP and TLS handshake) took longer than `connect_timeout`.
    #[error("connect timed out")]
    ConnectTimeout,
    /// No reply arrived within `reply_timeout`.
    #[error("reply timed out")]
    ReplyTimeout,
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
}
