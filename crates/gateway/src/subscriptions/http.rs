//! The HTTP client of rest-hook delivery: hyper's pooled client over plain TCP or rustls, one POST per notification.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::http::{HeaderName, HeaderValue, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

/// Most of a receiver's answer that is read (and discarded) so the connection can be reused.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Why a POST did not succeed. `Display` names kinds and status codes only, never bodies.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("the endpoint answered HTTP {0}")]
    Status(u16),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection or exchange failed: {0}")]
    Transport(String),
    #[error("https endpoint but no trusted certificate authorities are configured (subscriptions.ca_file)")]
    NoTls,
    #[error("the endpoint URL or a channel header is unusable")]
    BadRequest,
}

/// A plain or TLS client stream.
pub enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for MaybeTls {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for MaybeTls {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

type Connector = tower::util::BoxCloneSyncService<Uri, TokioIo<MaybeTls>, io::Error>;

/// A cloneable client that keeps idle connections to endpoints between notifications.
#[derive(Clone)]
pub struct Notifier {
    client: Client<Connector, Full<Bytes>>,
}

impl Notifier {
    /// `tls` verifies https endpoints (`None`: https endpoints fail with [`PostError::NoTls`]).
    pub fn new(tls: Option<Arc<ClientConfig>>, connect_timeout: Duration) -> Notifier {
        let connector = tower::service_fn(move |uri: Uri| {
            let tls = tls.clone();
            async move { connect(uri, tls, connect_timeout).await }
        });
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build(tower::util::BoxCloneSyncService::new(connector));
        Notifier { client }
    }

    /// POSTs `body` as FHIR JSON with the channel's headers; 2xx within `timeout` is success.
    pub async fn post(
        &self,
        endpoint: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Duration, PostError> {
        let uri: Uri = endpoint.parse().map_err(|_| PostError::BadRequest)?;
        let mut request = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/fhir+json")
            .header(header::ACCEPT, "application/fhir+json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| PostError::BadRequest)?;
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| PostError::BadRequest)?;
            let value = HeaderValue::from_str(value).map_err(|_| PostError::BadRequest)?;
            request.headers_mut().append(name, value);
        }
        let started = Instant::now();
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| classify(&e))?;
            let status = response.status();
            // Read what the receiver sent so the connection goes back to the pool.
            let _ = Limited::new(response.into_body(), MAX_RESPONSE_BYTES).collect().await;
            if status.is_success() { Ok(()) } else { Err(PostError::Status(status.as_u16())) }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(())) => Ok(started.elapsed()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(PostError::Timeout(timeout)),
        }
    }
}

fn classify(e: &hyper_util::client::legacy::Error) -> PostError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::Unsupported {
                return PostError::NoTls;
            }
            return PostError::Transport(io.kind().to_string());
        }
        source = s.source();
    }
    PostError::Transport(if e.is_connect() { "connect failed".into() } else { "exchange failed".into() })
}

async fn connect(uri: Uri, tls: Option<Arc<ClientConfig>>, timeout: Duration) -> Result<TokioIo<MaybeTls>, io::Error> {
    let https = uri.scheme_str() == Some("https");
    let host = uri.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = tcp.set_nodelay(true);
    if !https {
        return Ok(TokioIo::new(MaybeTls::Plain(tcp)));
    }
    let Some(tls) = tls else {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "no TLS roots"));
    };
    let name = ServerName::try_from(host).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad host name"))?;
    let stream = tokio::time::timeout(timeout, TlsConnector::from(tls).connect(name, tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    Ok(TokioIo::new(MaybeTls::Tls(Box::new(stream))))
}
