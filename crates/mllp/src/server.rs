//! The MLLP listener: an accept loop bounded by a semaphore, one task per connection, and a
//! graceful shutdown that answers frames already received before closing.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::codec::DEFAULT_MAX_FRAME_LEN;
use crate::connection::Connection;
use crate::tls::{TlsServerConfig, peer_subject};
use crate::{Error, telemetry};

/// Listener limits and timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Connections served at once; further ones are accepted and closed at once.
    pub max_connections: usize,
    /// Largest frame payload accepted; a larger frame closes the connection.
    pub max_frame_len: usize,
    /// Longest from a frame's start block to its end block.
    pub read_timeout: Duration,
    /// Longest a connection may sit with no frame in progress and nothing in flight.
    pub idle_timeout: Duration,
    /// Frames of one connection handed to the handler at once; replies still go out in order.
    pub max_in_flight_per_connection: usize,
    /// Longest one write of replies may take (a peer that stops reading is dropped).
    pub write_timeout: Duration,
    /// After shutdown, longest to wait for connections to answer their in-flight frames.
    pub drain_timeout: Duration,
    /// Longest a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// TLS, and with `client_ca_pem` mutual TLS; `None` serves plain TCP.
    pub tls: Option<TlsServerConfig>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            max_in_flight_per_connection: 64,
            write_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

impl ListenerConfig {
    fn validate(&self) -> Result<(), Error> {
        if self.max_connections == 0 {
            return Err(Error::InvalidConfig("max_connections must be at least 1"));
        }
        if self.max_in_flight_per_connection == 0 {
            return Err(Error::InvalidConfig("max_in_flight_per_connection must be at least 1"));
        }
        Ok(())
    }
}

/// What the handler is told about the connection a frame came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// Unique per listener, increasing; for correlating logs.
    pub connection_id: u64,
    /// Under mTLS, the verified client certificate's subject in RFC 4514 form (`CN=ehr-1,O=Clinic`),
    /// or its subjectAltNames (`DNS:ehr.example.org`) when the subject is empty.
    pub tls_client_subject: Option<String>,
}

/// The handler's decision for one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Send this payload back (the listener frames it).
    Send(Bytes),
    /// Send nothing for this frame; later replies still go out in order.
    Nothing,
    /// Close the connection once the replies to earlier frames are written.
    Close,
}

/// Decides the reply to each frame. Calls for frames of one connection run concurrently (up to
/// `max_in_flight_per_connection`), so a handler can batch them, e.g. into one database commit.
pub trait Handler: Send + Sync + 'static {
    /// Handle one frame payload.
    fn handle(&self, conn: &ConnectionInfo, frame: Bytes) -> impl Future<Output = Reply> + Send;
}

/// A [`Handler`] made from a closure; see [`handler_fn`].
#[derive(Debug, Clone)]
pub struct FnHandler<F>(F);

/// Wrap `f(conn, frame) -> impl Future<Output = Reply>` as a [`Handler`].
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(ConnectionInfo, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send,
{
    FnHandler(f)
}

impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(ConnectionInfo, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send,
{
    fn handle(&self, conn: &ConnectionInfo, frame: Bytes) -> impl Future<Output = Reply> + Send {
        (self.0)(conn.clone(), frame)
    }
}

/// A bound MLLP listener.
pub struct Server {
    listener: TcpListener,
    config: Arc<ListenerConfig>,
    tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.listener.local_addr().ok())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Bind `addr` and load TLS files if configured.
    pub async fn bind(addr: impl ToSocketAddrs, config: ListenerConfig) -> Result<Server, Error> {
        config.validate()?;
        // Load TLS before binding so a bad file fails without holding the port.
        let tls = config.tls.as_ref().map(TlsServerConfig::load).transpose()?.map(TlsAcceptor::from);
        let listener = TcpListener::bind(addr).await?;
        Ok(Server { listener, config: Arc::new(config), tls })
    }

    /// The bound address (useful after binding port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        Ok(self.listener.local_addr()?)
    }

    /// Serve until `shutdown` completes, then stop accepting, let every connection answer the
    /// frames it already received (bounded by `drain_timeout`), and return.
    pub async fn run<H: Handler>(self, handler: Arc<H>, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let Server { listener, config, tls } = self;
        let limit = Arc::new(Semaphore::new(config.max_connections));
        let token = CancellationToken::new();
        let mut connections = JoinSet::new();
        let mut next_id: u64 = 0;
        info!(addr = ?listener.local_addr().ok(), tls = tls.is_some(), "MLLP listener started");
        tokio::pin!(shutdown);

        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(joined) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(e) = joined
                        && e.is_panic()
                    {
                        warn!("MLLP connection task panicked");
                    }
                }
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        next_id += 1;
                        let Ok(permit) = limit.clone().try_acquire_owned() else {
                            telemetry::connection_refused();
                            debug!(%peer, connection_id = next_id, "MLLP connection refused: limit reached");
                            // Dropping closes at once, so the peer sees EOF instead of a silent hang.
                            drop(tcp);
                            continue;
                        };
                        let task = ConnectionTask {
                            peer,
                            id: next_id,
                            config: config.clone(),
                            tls: tls.clone(),
                            token: token.child_token(),
                            _permit: permit,
                        };
                        connections.spawn(task.run(tcp, handler.clone()));
                    }
                    Err(e) => {
                        // Usually fd exhaustion; pausing lets connections close instead of spinning.
                        warn!(error = %e, "MLLP accept failed");
                        tokio::select! {
                            () = &mut shutdown => break,
                            () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                    }
                },
            }
        }

        drop(listener);
        token.cancel();
        info!(connections = connections.len(), "MLLP listener stopping; draining connections");
        let drained =
            tokio::time::timeout(config.drain_timeout, async { while connections.join_next().await.is_some() {} })
                .await;
        if drained.is_err() {
            warn!(connections = connections.len(), "MLLP drain timeout; aborting remaining connections");
            connections.shutdown().await;
        }
        info!("MLLP listener stopped");
        Ok(())
    }
}

struct ConnectionTask {
    peer: SocketAddr,
    id: u64,
    config: Arc<ListenerConfig>,
    tls: Option<TlsAcceptor>,
    token: CancellationToken,
    _permit: OwnedSemaphorePermit,
}

/// Keeps `mllp_connections_open` right even if the task is aborted during drain.
struct OpenGauge;

impl Drop for OpenGauge {
    fn drop(&mut self) {
        telemetry::connection_closed();
    }
}

impl ConnectionTask {
    async fn run<H: Handler>(self, tcp: TcpStream, handler: Arc<H>) {
        telemetry::connection_opened();
        let _gauge = OpenGauge;
        let (peer, id) = (self.peer, self.id);
        debug!(%peer, connection_id = id, "MLLP connection accepted");
        // Replies are small ACKs whose latency the sender waits on.
        let _ = tcp.set_nodelay(true);

        let Some(acceptor) = self.tls.clone() else {
            let info = ConnectionInfo { peer, connection_id: id, tls_client_subject: None };
            Connection::new(info, &self.config, self.token.clone()).run(tcp, handler).await;
            return;
        };

        let handshake = tokio::time::timeout(self.config.handshake_timeout, acceptor.accept(tcp));
        let stream = tokio::select! {
            () = self.token.cancelled() => return,
            result = handshake => match result {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    telemetry::tls_handshake_failure();
                    debug!(%peer, connection_id = id, error = %e, "MLLP TLS handshake failed");
                    return;
                }
                Err(_) => {
                    telemetry::tls_handshake_failure();
                    telemetry::timeout("handshake");
                    debug!(%peer, connection_id = id, "MLLP TLS handshake timed out");
                    return;
                }
            },
        };
        let subject = peer_subject(stream.get_ref().1);
        let info = ConnectionInfo { peer, connection_id: id, tls_client_subject: subject };
        Connection::new(info, &self.config, self.token.clone()).run(stream, handler).await;
    }
}
