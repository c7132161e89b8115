//! Shared test support: start a listener on an ephemeral port, talk raw MLLP over TCP, and
//! generate a throwaway PKI with rcgen.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use mllp::{Error, Handler, ListenerConfig, MllpCodec, Server, encode_frame};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
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

/// Files of a throwaway PKI: a CA, a server cert for `localhost`, a client cert signed by the
/// CA, and a client cert signed by an unrelated CA.
pub struct Pki {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
}

pub const CLIENT_SUBJECT: &str = "CN=ehr-client-1,O=Example Clinic";

fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    (params.self_signed(&key).unwrap(), key)
}

fn leaf(
    sans: Vec<String>,
    dn: &[(DnType, &str)],
    eku: ExtendedKeyUsagePurpose,
    issuer: &rcgen::Certificate,
    issuer_key: &KeyPair,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(sans).unwrap();
    // rcgen pre-fills a CN; start empty so the DN order is exactly `dn`.
    params.distinguished_name = DistinguishedName::new();
    for (t, v) in dn {
        params.distinguished_name.push(t.clone(), *v);
    }
    params.extended_key_usages = vec![eku];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, issuer, issuer_key).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    pub fn generate() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let (ca_cert, ca_key) = ca("Test MLLP CA");
        let (rogue_ca, rogue_ca_key) = ca("Rogue CA");
        let (server_cert, server_key) = leaf(
            vec!["localhost".into()],
            &[(DnType::CommonName, "localhost")],
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca_cert,
            &ca_key,
        );
        let (client_cert, client_key) = leaf(
            vec![],
            &[(DnType::OrganizationName, "Example Clinic"), (DnType::CommonName, "ehr-client-1")],
            ExtendedKeyUsagePurpose::ClientAuth,
            &ca_cert,
            &ca_key,
        );
        let (rogue_cert, rogue_key) = leaf(
            vec![],
            &[(DnType::CommonName, "intruder")],
            ExtendedKeyUsagePurpose::ClientAuth,
            &rogue_ca,
            &rogue_ca_key,
        );
        let write = |name: &str, content: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, content).unwrap();
            p
        };
        Pki {
            ca: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
            rogue_cert: write("rogue.pem", &rogue_cert),
            rogue_key: write("rogue.key", &rogue_key),
            _dir: dir,
        }
    }
}
