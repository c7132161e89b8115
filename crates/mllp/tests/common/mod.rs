//! Shared test support: start a listener on an ephemeral port, talk raw MLLP over TCP, and
//! generate a throwaway PKI with rcgen.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use mllp::{Error, Handler, ListenerConfig, MllpCodec, Server, encode_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;

/// Upper bound on any single wait in a test, so a bug fails the test instead of hanging it.
pub const GUARD: Duration = Duration::from_secs(10);

pub async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, fut).await.expect("test step timed out")
}

pub struct Running {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub handle: JoinHandle<Result<(), Error>>,
}

impl Running {
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    pub async fn stop(mut self) -> Result<(), Error> {
        self.trigger_shutdown();
        within(self.handle).await.expect("server task panicked")
    }
}

pub async fn start<H: Handler>(config: ListenerConfig, handler: H) -> Running {
    let server = Server::bind("127.0.0.1:0", config).await.expect("bind");
    let addr = server.local_addr().expect("local_addr");
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(server.run(Arc::new(handler), async move {
        let _ = rx.await;
    }));
    Running { addr, stop: Some(tx), handle }
}

pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode_frame(payload, &mut b);
    b.to_vec()
}

/// A plain TCP peer that writes raw bytes and reads MLLP frames.
pub struct Raw {
    pub rd: FramedRead<OwnedReadHalf, MllpCodec>,
    pub wr: OwnedWriteHalf,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let tcp = within(TcpStream::connect(addr)).await.expect("connect");
        let (rd, wr) = tcp.into_split();
        Raw { rd: FramedRead::new(rd, MllpCodec::new(1 << 20)), wr }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.wr.write_all(bytes).await.expect("write");
    }

    pub async fn send(&mut self, payload: &[u8]) {
        self.write(&frame(payload)).await;
    }

    /// The next reply frame; panics on EOF.
    pub async fn reply(&mut self) -> Bytes {
        within(self.rd.next()).await.expect("connection closed before a reply").expect("framing error")
    }

    /// Wait until the server closes the connection (EOF or reset), checking no frame arrives first.
    pub async fn expect_closed(&mut self) {
        match within(self.rd.next()).await {
            None | Some(Err(_)) => {}
            Some(Ok(f)) => panic!("expected close, got a {}-byte frame", f.len()),
        }
    }
}

/// Wait until the server closes a raw stream, reading and ignoring anything it sends.
pub async fn expect_eof(stream: &mut TcpStream) {
    let mut buf = [0u8; 256];
    loop {
        match within(stream.read(&mut buf)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[path = "pki.rs"]
mod pki;
#[allow(unused_imports)] // each test binary uses a different part of the support module
pub use pki::{CLIENT_SUBJECT, Pki};
