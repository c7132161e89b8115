//! Minimal Lower Layer Protocol (MLLP), the HL7 v2 transport: a framing codec, a pipelining
//! listener with limits, timeouts and optional (mutual) TLS, and a client.
//!
//! This crate moves bytes only; it never parses HL7. Frame payloads are patient data, so
//! nothing here logs them: logs and metrics carry peer addresses, counts and error kinds.
//!
//! ```no_run
//! use std::sync::Arc;
//! use mllp::{ConnectionInfo, Handler, ListenerConfig, Reply, Server};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     async fn handle(&self, _conn: &ConnectionInfo, frame: bytes::Bytes) -> Reply {
//!         Reply::Send(frame)
//!     }
//! }
//!
//! # async fn run() -> Result<(), mllp::Error> {
//! let server = Server::bind("127.0.0.1:2575", ListenerConfig::default()).await?;
//! server.run(Arc::new(Echo), async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

mod client;
pub mod codec;
mod connection;
mod error;
mod server;
mod telemetry;
mod tls;
mod x509;

pub use client::{Client, ClientConfig, ClientReader, ClientWriter, Connector};
pub use codec::{DecodeStats, FrameError, MllpCodec, decode_all, encode_frame};
pub use error::Error;
pub use server::{ConnectionInfo, FnHandler, Handler, ListenerConfig, Reply, Server, handler_fn};
pub use tls::{TlsClientConfig, TlsServerConfig};
