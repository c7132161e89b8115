//! MLLP client for outbound messages and load generation: one-shot `send`, or pipelining via
//! `send_nowait`/`recv` or split writer and reader halves.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_rustls::TlsConnector;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::Error;
use crate::codec::{DEFAULT_MAX_FRAME_LEN, MllpCodec};
use crate::tls::TlsClientConfig;

/// Client settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// TLS (and client certificate) settings; `None` connects over plain TCP.
    pub tls: Option<TlsClientConfig>,
    /// Longest for the TCP connect plus the TLS handshake.
    pub connect_timeout: Duration,
    /// Longest `send`/`recv` waits for a reply frame.
    pub reply_timeout: Duration,
    /// Largest reply payload accepted.
    pub max_frame_len: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            tls: None,
            connect_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(30),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}
type BoxIo = Box<dyn Io>;

/// A prepared client configuration: TLS files are read once, then any number of connections
/// (e.g. a load generator's) reuse them.
#[derive(Clone)]
pub struct Connector {
    config: ClientConfig,
    tls: Option<(TlsConnector, rustls::pki_types::ServerName<'static>)>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Connector {
    /// Load TLS files (if any) and validate the server name.
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        let tls = match &config.tls {
            Some(t) => Some((TlsConnector::from(t.load()?), t.server_name()?)),
            None => None,
        };
        Ok(Self { config, tls })
    }

    /// Open a connection to `addr`.
    pub async fn connect(&self, addr: impl ToSocketAddrs) -> Result<Client, Error> {
        let connect = async {
            let tcp = TcpStream::connect(addr).await?;
            // Frames are usually small and a reply is awaited, so do not let Nagle hold them.
            tcp.set_nodelay(true)?;
            let io: BoxIo = match &self.tls {
                Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await?),
                None => Box::new(tcp),
            };
            Ok::<_, Error>(io)
        };
        let io =
            tokio::time::timeout(self.config.connect_timeout, connect).await.map_err(|_| Error::ConnectTimeout)??;
        let (rd, wr) = tokio::io::split(io);
        let codec = MllpCodec::new(self.config.max_frame_len);
        Ok(Client {
            writer: ClientWriter { inner: FramedWrite::new(wr, codec.clone()) },
            reader: ClientReader { inner: FramedRead::new(rd, codec), reply_timeout: self.config.reply_timeout },
        })
    }
}

/// An MLLP connection. Replies arrive in the order requests were sent (the listener guarantees
/// it), so pipelining is `send_nowait` N times, then `recv` N times.
#[derive(Debug)]
pub struct Client {
    writer: ClientWriter,
    reader: ClientReader,
}

/// The sending half of a [`Client`].
pub struct ClientWriter {
    inner: FramedWrite<WriteHalf<BoxIo>, MllpCodec>,
}

/// The receiving half of a [`Client`].
pub struct ClientReader {
    inner: FramedRead<ReadHalf<BoxIo>, MllpCodec>,
    reply_timeout: Duration,
}

impl std::fmt::Debug for ClientWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientWriter").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ClientReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientReader").field("reply_timeout", &self.reply_timeout).finish_non_exhaustive()
    }
}

impl Client {
    /// Connect with `config` (reads TLS files each time; use [`Connector`] for many connections).
    pub async fn connect(addr: impl ToSocketAddrs, config: ClientConfig) -> Result<Client, Error> {
        Connector::new(config)?.connect(addr).await
    }

    /// Send one frame and wait for its reply. Replies to earlier `send_nowait` calls come first,
    /// so do not mix the two without receiving those.
    pub async fn send(&mut self, payload: impl AsRef<[u8]>) -> Result<Bytes, Error> {
        self.send_nowait(payload).await?;
        self.recv().await
    }

    /// Send one frame (flushed) without waiting for its reply.
    pub async fn send_nowait(&mut self, payload: impl AsRef<[u8]>) -> Result<(), Error> {
        self.writer.send(payload).await
    }

    /// Wait for the next reply frame.
    pub async fn recv(&mut self) -> Result<Bytes, Error> {
        self.reader.recv().await
    }

    /// Split into halves that can live in different tasks.
    pub fn split(self) -> (ClientWriter, ClientReader) {
        (self.writer, self.reader)
    }

    /// Close the sending side (TLS close_notify, TCP FIN); the server then finishes and closes.
    pub async fn close(mut self) -> Result<(), Error> {
        self.writer.close().await
    }
}

impl ClientWriter {
    /// Send one frame and flush it.
    pub async fn send(&mut self, payload: impl AsRef<[u8]>) -> Result<(), Error> {
        self.inner.send(payload.as_ref()).await?;
        Ok(())
    }

    /// Queue one frame without flushing; call [`flush`](Self::flush) to put a batch on the wire.
    pub async fn feed(&mut self, payload: impl AsRef<[u8]>) -> Result<(), Error> {
        self.inner.feed(payload.as_ref()).await?;
        Ok(())
    }

    /// Flush queued frames.
    pub async fn flush(&mut self) -> Result<(), Error> {
        SinkExt::<&[u8]>::flush(&mut self.inner).await?;
        Ok(())
    }

    /// Flush and shut down the sending side.
    pub async fn close(&mut self) -> Result<(), Error> {
        SinkExt::<&[u8]>::close(&mut self.inner).await?;
        Ok(())
    }
}

impl ClientReader {
    /// Wait up to `reply_timeout` for the next reply frame.
    pub async fn recv(&mut self) -> Result<Bytes, Error> {
        match tokio::time::timeout(self.reply_timeout, self.inner.next()).await {
            Err(_) => Err(Error::ReplyTimeout),
            Ok(None) => Err(Error::Closed),
            Ok(Some(frame)) => Ok(frame?),
        }
    }

    /// Bytes outside any frame that the server sent and that were dropped.
    pub fn discarded_bytes(&self) -> u64 {
        self.inner.decoder().discarded_bytes()
    }
}
